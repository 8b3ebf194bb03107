//! The pages, rendered on the server with maud. Every page has a classification
//! banner at the top and the bottom carrying the highest label of what it shows,
//! a "New notice" link, and labelled controls only.

use std::collections::HashSet;

use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use super::labels::{choices, highest, level_class};
use super::view::{AddCheck, AuditView, MembersView, NoticeView, Problem, Snapshot};
use crate::notice::Category;

/// The banner text when nothing labelled is on the page.
pub const UNMARKED: &str = "NO LABELLED CONTENT";

/// Inbox filters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    /// Text in the title or body.
    #[serde(default)]
    pub q: String,
    /// A category (`cyber`, ...), empty for all.
    #[serde(default)]
    pub category: String,
    /// A label's canonical text, empty for all.
    #[serde(default)]
    pub label: String,
}

impl Filter {
    fn admits(&self, n: &NoticeView) -> bool {
        let q = self.q.trim().to_lowercase();
        (q.is_empty()
            || n.notice.title.to_lowercase().contains(&q)
            || n.notice.body.to_lowercase().contains(&q))
            && (self.category.is_empty() || n.notice.category.as_str() == self.category)
            && (self.label.is_empty() || n.notice.label.eq_ignore_ascii_case(self.label.trim()))
    }
}

fn banner(id: &str, label: Option<&str>) -> Markup {
    let text = label.unwrap_or(UNMARKED);
    html! {
        div id=(id) class={"banner " (level_class(text))} data-live="" role="note"
            aria-label="Classification of this page" { (text) }
    }
}

/// The frame of every page: banners, navigation, the content.
pub fn layout(title: &str, snap: &Snapshot, label: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kring" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/live.js" defer {}
            }
            body {
                (banner("banner-top", label))
                header {
                    nav aria-label="Main" {
                        a href="/" { "Inbox" }
                        a href="/new" class="primary" { "New notice" }
                        a href="/communities" { "Communities" }
                        @if snap.org_admin { a href="/admin" { "Organisation" } }
                    }
                    p class="who" { (snap.user) @if let Some(c) = &snap.clearance { " · cleared " (c) } }
                }
                @if let Some(p) = &snap.offline {
                    div id="offline" class="problem" data-live="" role="status" {
                        strong { "Your home relay cannot be reached. " } (p.what) " " (p.todo)
                    }
                } @else {
                    div id="offline" data-live="" {}
                }
                main id="main" { (content) }
                (banner("banner-bottom", label))
            }
        }
    }
}

fn notice_rows(notices: &[&NoticeView], read: &HashSet<Uuid>) -> Markup {
    html! {
        @if notices.is_empty() {
            p { "No notices." }
        } @else {
            ul class="notices" {
                @for n in notices {
                    @let unread = !n.own && !read.contains(&n.notice.id);
                    li class=(if unread { "unread" } else { "" }) {
                        span class={"chip " (level_class(&n.notice.label))} { (n.notice.label) }
                        " "
                        a href={"/notice/" (n.notice.id)} { (n.notice.title) }
                        @if unread { " " span class="tag" { "unread" } }
                        div class="meta" {
                            (n.notice.community) " · " (n.notice.category.as_str()) " · "
                            (n.notice.sender) " · " (crate::cli::output::human_time(&n.notice.filed_at))
                        }
                    }
                }
            }
        }
    }
}

fn page_label<'a>(notices: impl IntoIterator<Item = &'a NoticeView>) -> Option<String> {
    highest(notices.into_iter().map(|n| n.notice.label.as_str()))
}

/// The inbox across all communities, newest first, with search.
pub fn inbox(snap: &Snapshot, filter: &Filter, read: &HashSet<Uuid>) -> Markup {
    let shown: Vec<&NoticeView> = snap.notices.iter().filter(|n| filter.admits(n)).collect();
    let label = page_label(shown.iter().copied());
    layout(
        "Inbox",
        snap,
        label.as_deref(),
        html! {
            h1 { "Inbox" }
            form method="get" action="/" class="search" role="search" {
                label for="q" { "Text" }
                input id="q" name="q" type="search" value=(filter.q);
                label for="category" { "Category" }
                select id="category" name="category" {
                    option value="" { "any" }
                    @for c in Category::ALL {
                        option value=(c.as_str()) selected[filter.category == c.as_str()] { (c.as_str()) }
                    }
                }
                label for="label-filter" { "Label" }
                input id="label-filter" name="label" value=(filter.label);
                button type="submit" { "Search" }
            }
            div id="list" data-live="" { (notice_rows(&shown, read)) }
        },
    )
}

/// The communities, with links to their notices and members.
pub fn communities(snap: &Snapshot) -> Markup {
    layout(
        "Communities",
        snap,
        None,
        html! {
            h1 { "Communities" }
            ul id="communities" data-live="" {
                @for c in &snap.communities {
                    li {
                        a href={"/community/" (c.id)} { (c.id) }
                        " · maximum " span class={"chip " (level_class(&c.max_label))} { (c.max_label) }
                        " · " a href={"/members/" (c.id)} { "members" }
                    }
                }
            }
            h2 { "Create a community" }
            form method="post" action="/communities" {
                label for="name" { "Name" }
                input id="name" name="name" required;
                label for="max_label" { "Maximum label" }
                input id="max_label" name="max_label" required placeholder="NL:DEP-VERTROUWELIJK";
                button type="submit" { "Create community" }
            }
        },
    )
}

/// One community's notices.
pub fn community(snap: &Snapshot, id: &str, read: &HashSet<Uuid>) -> Markup {
    let shown: Vec<&NoticeView> = snap
        .notices
        .iter()
        .filter(|n| n.notice.community == id)
        .collect();
    let label = page_label(shown.iter().copied());
    layout(
        id,
        snap,
        label.as_deref(),
        html! {
            h1 { (id) }
            p { a href={"/new?community=" (id)} { "New notice in " (id) } " · " a href={"/members/" (id)} { "Members" } }
            div id="list" data-live="" { (notice_rows(&shown, read)) }
        },
    )
}

/// Where a notice stands, in words.
pub fn status(n: &NoticeView) -> String {
    match (&n.refused, n.seq) {
        (Some(reason), _) => format!("Refused at a hop: {reason}"),
        (None, Some(seq)) => format!("Ordered by the hub as #{seq}."),
        (None, None) => "Queued at your home relay; waiting for the hub to order it.".into(),
    }
}

/// A notice with its replies and a reply form.
pub fn notice(snap: &Snapshot, n: &NoticeView, flash: Option<&str>) -> Markup {
    let replies: Vec<&NoticeView> = snap
        .notices
        .iter()
        .filter(|r| r.notice.in_reply_to == Some(n.notice.id))
        .collect();
    let label = page_label(std::iter::once(n).chain(replies.iter().copied()));
    let max = snap
        .communities
        .iter()
        .find(|c| c.id == n.notice.community)
        .map(|c| c.max_label.clone())
        .unwrap_or_default();
    let labels = choices(&max, snap.clearance.as_deref());
    layout(
        &n.notice.title,
        snap,
        label.as_deref(),
        html! {
            @if let Some(f) = flash { p class="done" role="status" { (f) } }
            article {
                h1 { (n.notice.title) }
                p class="meta" {
                    span class={"chip " (level_class(&n.notice.label))} { (n.notice.label) }
                    " " a href={"/community/" (n.notice.community)} { (n.notice.community) }
                    " · " (n.notice.category.as_str()) " · " (n.notice.sender) " · "
                    (crate::cli::output::human_time(&n.notice.filed_at))
                }
                @if n.own { p id="status" data-live="" role="status" { "Status: " (status(n)) } }
                @if let Some(f) = &n.notice.forwarded_from {
                    p id="provenance" class="meta" {
                        "Forwarded from " (f.community) ": " a href={"/notice/" (f.id)} { "notice " (f.id) } " filed by " (f.sender)
                        " on " (crate::cli::output::human_time(&f.filed_at)) "."
                    }
                }
                div class="body" { (n.notice.body) }
                @if !n.notice.attachments.is_empty() {
                    section id="attachments" aria-labelledby="attachments-title" {
                        h2 id="attachments-title" { "Attachments" }
                        ul {
                            @for (i, a) in n.notice.attachments.iter().enumerate() {
                                li {
                                    a href={"/notice/" (n.notice.id) "/attachment/" (i)} download=(a.name) { (a.name) }
                                    " · " (a.size) " bytes · SHA-256 " code { (a.sha256.get(..16).unwrap_or_default()) "…" }
                                }
                            }
                        }
                        p class="meta" {
                            "Each file is fetched from your relay, opened on this device and checked against the SHA-256 the notice gives before it is handed to the browser."
                        }
                    }
                }
            }
            @if !replies.is_empty() {
                h2 { "Replies" }
                div id="replies" data-live="" { (notice_rows(&replies, &HashSet::new())) }
            } @else {
                div id="replies" data-live="" {}
            }
            h2 { "Reply" }
            form method="post" action={"/notice/" (n.notice.id) "/reply"} {
                label for="label" { "Label" }
                (label_input(&labels, &n.notice.label))
                label for="body" { "Body" }
                textarea id="body" name="body" required rows="4" {}
                button type="submit" { "Send reply" }
            }
            (forward_form(snap, n))
        },
    )
}

/// Forwarding into another community; the rules are checked on this device and
/// again at the target's hub, and a refusal names the rule.
fn forward_form(snap: &Snapshot, n: &NoticeView) -> Markup {
    let targets: Vec<_> = snap
        .communities
        .iter()
        .filter(|c| c.id != n.notice.community)
        .collect();
    html! {
        h2 { "Forward" }
        @if targets.is_empty() {
            p { "You are a member of no other community to forward this notice into." }
        } @else {
            p {
                "The forward carries the original with where it came from. Its label is the original's "
                "unless you choose a higher one; TLP:RED is never forwarded, AMBER only within your "
                "organisation and the organisations it serves."
            }
            form method="post" action={"/notice/" (n.notice.id) "/forward"} {
                label for="forward-to" { "Forward to" }
                select id="forward-to" name="to" required {
                    @for c in &targets {
                        option value=(c.id) { (c.id) " (maximum " (c.max_label) ")" }
                    }
                }
                label for="forward-label" { "Label (optional, never lower than the original's)" }
                input id="forward-label" name="label" autocomplete="off" placeholder=(n.notice.label);
                label for="forward-comment" { "Comment (optional)" }
                textarea id="forward-comment" name="comment" rows="2" {}
                button type="submit" { "Forward notice" }
            }
        }
    }
}

fn label_input(labels: &[String], value: &str) -> Markup {
    html! {
        input id="label" name="label" list="labels-0" required value=(value) autocomplete="off";
        datalist id="labels-0" { @for l in labels { option value=(l) {} } }
    }
}

/// What the "New notice" form was given (to show it again with a refusal).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Draft {
    /// `NAME@HUB`.
    #[serde(default)]
    pub community: String,
    /// Label text.
    #[serde(default)]
    pub label: String,
    /// Category.
    #[serde(default)]
    pub category: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Body.
    #[serde(default)]
    pub body: String,
}

/// The "New notice" form; `refusal` explains why the label was not accepted.
pub fn new_notice(snap: &Snapshot, draft: &Draft, refusal: Option<&[String]>) -> Markup {
    let refusal = refusal.map(|reasons| Refusal {
        headline: "This label may not be used here; nothing was sent.",
        reasons,
        advice: "Choose one of the labels offered for the community.",
    });
    new_notice_with(snap, draft, refusal.as_ref())
}

/// Why a filing from the form was not sent, for the person.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// What happened.
    pub headline: &'a str,
    /// The reasons.
    pub reasons: &'a [String],
    /// What to do.
    pub advice: &'a str,
}

/// The "New notice" form, with why the last filing was not sent.
pub fn new_notice_with(snap: &Snapshot, draft: &Draft, refusal: Option<&Refusal<'_>>) -> Markup {
    layout(
        "New notice",
        snap,
        None,
        html! {
            h1 { "New notice" }
            @if let Some(r) = refusal {
                div id="refusal" class="problem" role="alert" {
                    p { strong { (r.headline) } }
                    ul { @for reason in r.reasons { li { (reason) } } }
                    p { (r.advice) }
                }
            }
            @if snap.communities.is_empty() {
                p class="problem" { "You are not a member of any community yet. Ask a community admin to add you, or create one under Communities." }
            }
            form method="post" action="/new" enctype="multipart/form-data" {
                label for="community" { "Community" }
                select id="community" name="community" required {
                    @for c in &snap.communities {
                        option value=(c.id) selected[draft.community == c.id] { (c.id) " (maximum " (c.max_label) ")" }
                    }
                }
                label for="label" { "Label" }
                input id="label" name="label" list="labels-0" required value=(draft.label) autocomplete="off"
                    aria-describedby="label-help";
                p id="label-help" class="help" { "Offered: the labels your clearance and the community's maximum allow." }
                @for (i, c) in snap.communities.iter().enumerate() {
                    datalist id={"labels-" (i)} {
                        @for l in choices(&c.max_label, snap.clearance.as_deref()) { option value=(l) {} }
                    }
                }
                label for="category-field" { "Category" }
                select id="category-field" name="category" {
                    @for c in Category::ALL {
                        option value=(c.as_str()) selected[draft.category == c.as_str()] { (c.as_str()) }
                    }
                }
                label for="title" { "Title" }
                input id="title" name="title" required value=(draft.title);
                label for="body" { "Body" }
                textarea id="body" name="body" required rows="8" { (draft.body) }
                label for="attach" { "Attachments" }
                input id="attach" name="attach" type="file" multiple aria-describedby="attach-help";
                p id="attach-help" class="help" { "Up to 16 files, 50 MiB in all. Each is sealed on this device with a key of its own before it goes to your relay." }
                button type="submit" { "File notice" }
            }
        },
    )
}

/// A community's members, with the admin actions.
pub fn members(
    snap: &Snapshot,
    m: &MembersView,
    flash: Option<&Result<String, Problem>>,
    check: Option<&AddCheck>,
) -> Markup {
    let me_admin = m.admins.contains(&snap.user);
    let profile = |user: &str| m.profiles.iter().find(|p| p.id == user);
    layout(
        &format!("Members of {}", m.id),
        snap,
        None,
        html! {
            h1 { "Members of " (m.id) }
            p { "Maximum label: " span class={"chip " (level_class(&m.max_label))} { (m.max_label) } }
            @match flash {
                Some(Ok(done)) => p class="done" role="status" { (done) },
                Some(Err(p)) => (problem_block(p)),
                None => {}
            }
            table id="members" {
                thead { tr { th { "Member" } th { "Organisation" } th { "Home relay" } th { "Clearance" } th { "Role" } @if me_admin { th { "Actions" } } } }
                tbody {
                    @for user in &m.members {
                        @let admin = m.admins.contains(user);
                        @let p = profile(user);
                        tr {
                            td { (user) }
                            td { @if let Some(p) = p { (p.organisation) } @else { "not yet known" } }
                            td { (user.rsplit_once('@').map(|(_, r)| r).unwrap_or("")) }
                            td {
                                @match p.and_then(|p| p.clearance.as_deref()) {
                                    Some(c) => span class={"chip " (level_class(c))} { (c) },
                                    None => @if p.is_some() { "none" } @else { "not yet known" },
                                }
                            }
                            td { @if admin { "admin" } @else { "member" } }
                            @if me_admin {
                                td {
                                    (action_button("/members/remove", &m.id, user, None, &format!("Remove {user}")))
                                    @if admin {
                                        (action_button("/members/admin", &m.id, user, Some("remove"), &format!("Remove {user} as admin")))
                                    } @else {
                                        (action_button("/members/admin", &m.id, user, Some("add"), &format!("Make {user} admin")))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if me_admin {
                h2 { "Add a member" }
                @if let Some(c) = check { (add_check(c)) }
                p { "The user's clearance (from their certificate) is checked against the maximum label before anything is committed: you see whether they may join, then confirm." }
                form method="post" action="/members/check" {
                    input type="hidden" name="community" value=(m.id);
                    label for="user" { "User (name@relay)" }
                    input id="user" name="user" required value=[check.map(|c| c.user.as_str())];
                    button type="submit" { "Check" }
                }
            } @else {
                p { "Only the community's admins add and remove members." }
            }
        },
    )
}

/// The policy decision on an add, with the confirmation when the user may join.
fn add_check(c: &AddCheck) -> Markup {
    let clearance = c.clearance.as_deref().unwrap_or("no clearance");
    html! {
        @match &c.refusal {
            None => section id="add-check" class="done" role="status" {
                p {
                    strong { (c.user) " may join" } " " (c.community) ": their clearance "
                    span class={"chip " (level_class(clearance))} { (clearance) }
                    " (" (c.organisation) ") admits the maximum label "
                    span class={"chip " (level_class(&c.max_label))} { (c.max_label) } "."
                }
                (action_button("/members/add", &c.community, &c.user, None, &format!("Add {}", c.user)))
            },
            Some(why) => section id="add-check" class="problem" role="alert" {
                p {
                    strong { (c.user) " may not join" } " " (c.community) ", because " (why)
                    " (maximum label " (c.max_label) ", their clearance " (clearance) ")."
                }
                p { "Nothing was committed. Choose another community, or ask your security officer about the user's clearance." }
            },
        }
    }
}

fn action_button(
    action: &str,
    community: &str,
    user: &str,
    change: Option<&str>,
    text: &str,
) -> Markup {
    html! {
        form method="post" action=(action) class="inline" {
            input type="hidden" name="community" value=(community);
            input type="hidden" name="user" value=(user);
            @if let Some(c) = change { input type="hidden" name="change" value=(c); }
            button type="submit" { (text) }
        }
    }
}

/// The organisation page: revoke a user, the audit log.
pub fn admin(
    snap: &Snapshot,
    audit: &Result<AuditView, Problem>,
    flash: Option<&Result<String, Problem>>,
) -> Markup {
    layout(
        "Organisation",
        snap,
        None,
        html! {
            h1 { "Organisation" }
            @match flash {
                Some(Ok(done)) => p class="done" role="status" id="revoked" { (done) },
                Some(Err(p)) => (problem_block(p)),
                None => {}
            }
            h2 { "Revoke a user" }
            p { "Revocation cuts off every device of the user at once, removes them from every community and cannot be undone: they need a new certificate from the organisation's CA to return." }
            form method="post" action="/admin/confirm" {
                label for="user" { "User (name@relay)" }
                input id="user" name="user" required;
                label for="reason" { "Reason" }
                input id="reason" name="reason" required;
                button type="submit" { "Revoke…" }
            }
            h2 { "Audit log" }
            @match audit {
                Ok(a) => {
                    p id="verdict" class=(if a.intact { "done" } else { "problem" }) {
                        (a.relay) ": " (a.verdict)
                    }
                    table {
                        thead { tr { th { "#" } th { "Time" } th { "Kind" } th { "Actor" } th { "Subject" } th { "Action" } th { "Detail" } } }
                        tbody {
                            @for r in &a.records {
                                tr {
                                    td { (r.seq) } td { (crate::cli::audit::rfc3339(r.at)) } td { (r.kind) }
                                    td { (r.actor) } td { (r.subject) } td { (r.action) } td { (r.detail) }
                                }
                            }
                        }
                    }
                }
                Err(p) => (problem_block(p)),
            }
        },
    )
}

/// The confirmation before a revocation.
pub fn confirm_revoke(snap: &Snapshot, user: &str, reason: &str) -> Markup {
    layout(
        "Confirm revocation",
        snap,
        None,
        html! {
            h1 { "Revoke " (user) "?" }
            div class="problem" role="alert" {
                p { "Revoking " strong { (user) } " is final. Their devices are disconnected now and at every relay of the federation, they are removed from every community, and they cannot read anything filed from now on. Only a new certificate from your organisation's CA lets them back in." }
                p { "Reason recorded in the audit log: " (reason) }
            }
            form method="post" action="/admin/revoke" {
                input type="hidden" name="user" value=(user);
                input type="hidden" name="reason" value=(reason);
                button type="submit" class="danger" { "Revoke " (user) " now" }
            }
            p { a href="/admin" { "Cancel" } }
        },
    )
}

fn problem_block(p: &Problem) -> Markup {
    html! {
        div class="problem" role="alert" { p { strong { (p.what) } } p { (p.todo) } }
    }
}

/// A problem as a page of its own.
pub fn problem(snap: &Snapshot, p: &Problem) -> Markup {
    layout(
        "Problem",
        snap,
        None,
        html! { h1 { "Something went wrong" } (problem_block(p)) },
    )
}

/// A problem before the snapshot could be read.
pub fn bare_problem(p: &Problem) -> Markup {
    problem(&Snapshot::default(), p)
}

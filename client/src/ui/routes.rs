//! The routes of the local interface.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use super::State;
use super::labels;
use super::pages::{self, Draft, Filter};
use super::view::{Action, AddCheck, Call, Problem, Snapshot};

/// Largest form accepted, in bytes.
const MAX_FORM: usize = 256 * 1024;
/// Largest "New notice" form with its files, in bytes.
const MAX_UPLOAD: usize = kring_protocol::attachment::MAX_ATTACHMENT_BYTES as usize + 2 * MAX_FORM;

const STYLE: &str = include_str!("static/style.css");
const SCRIPT: &str = include_str!("static/live.js");

type S = AxumState<Arc<State>>;

/// The interface's routes behind the security checks.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(inbox))
        .route(
            "/new",
            get(new_form)
                .post(file)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/communities", get(communities).post(create))
        .route("/community/{id}", get(community))
        .route("/notice/{id}", get(notice))
        .route("/notice/{id}/reply", post(reply))
        .route("/notice/{id}/forward", post(forward))
        .route("/notice/{id}/attachment/{n}", get(attachment))
        .route("/members/{id}", get(members))
        .route("/members/check", post(check_add))
        .route("/members/add", post(add))
        .route("/members/remove", post(remove))
        .route("/members/admin", post(admin_change))
        .route("/admin", get(admin))
        .route("/admin/confirm", post(confirm_revoke))
        .route("/admin/revoke", post(revoke))
        .route("/events", get(events))
        .route("/static/style.css", get(style))
        .route("/static/live.js", get(script))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::security::guard,
        ))
        .with_state(state)
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn not_found() -> Response {
    let p = Problem::new(
        "There is no such page.",
        "Go back to the inbox with the Inbox link.",
    );
    (StatusCode::NOT_FOUND, pages::bare_problem(&p)).into_response()
}

/// The snapshot, or the page explaining why there is none.
async fn snapshot(state: &State) -> Result<Snapshot, Response> {
    state
        .ask(Call::Snapshot)
        .await
        .map_err(|p| (StatusCode::SERVICE_UNAVAILABLE, pages::bare_problem(&p)).into_response())
}

fn read_set(state: &State) -> std::collections::HashSet<Uuid> {
    state.read.lock().map(|r| r.clone()).unwrap_or_default()
}

async fn inbox(AxumState(state): S, Query(filter): Query<Filter>) -> Result<Markup, Response> {
    let snap = snapshot(&state).await?;
    Ok(pages::inbox(&snap, &filter, &read_set(&state)))
}

async fn communities(AxumState(state): S) -> Result<Markup, Response> {
    Ok(pages::communities(&snapshot(&state).await?))
}

async fn community(AxumState(state): S, Path(id): Path<String>) -> Result<Markup, Response> {
    let snap = snapshot(&state).await?;
    Ok(pages::community(&snap, &id, &read_set(&state)))
}

#[derive(Debug, Deserialize)]
struct Flash {
    #[serde(default)]
    done: Option<String>,
}

async fn notice(
    AxumState(state): S,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let found = Uuid::parse_str(&id)
        .ok()
        .and_then(|id| snap.notices.iter().find(|n| n.notice.id == id));
    let Some(n) = found else {
        let p = Problem::new(
            "This notice is not on this device.",
            "It may have expired under the community's retention period, or it was filed in a \
             community you are not a member of. Go back to the inbox.",
        );
        return Ok((StatusCode::NOT_FOUND, pages::problem(&snap, &p)).into_response());
    };
    if let Ok(mut read) = state.read.lock() {
        read.insert(n.notice.id);
    }
    Ok(pages::notice(&snap, n, flash.done.as_deref()).into_response())
}

#[derive(Debug, Deserialize)]
struct Preset {
    #[serde(default)]
    community: String,
}

async fn new_form(AxumState(state): S, Query(preset): Query<Preset>) -> Result<Markup, Response> {
    let snap = snapshot(&state).await?;
    let draft = Draft {
        community: preset.community,
        ..Draft::default()
    };
    Ok(pages::new_notice(&snap, &draft, None))
}

/// After an action on a notice: its page, with what happened.
fn to_notice(id: Uuid, message: &str) -> Response {
    let query = form_urlencoded(message);
    Redirect::to(&format!("/notice/{id}?done={query}")).into_response()
}

fn form_urlencoded(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A directory removed when this goes out of scope.
struct UploadDir(std::path::PathBuf);

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why the "New notice" form cannot be used (said to the person).
#[derive(Debug, thiserror::Error)]
enum FormProblem {
    /// The request broke off or is not a form.
    #[error("the form did not arrive whole: {0}")]
    Broken(#[from] axum::extract::multipart::MultipartError),
    /// A file name that is not a plain file name.
    #[error("{0}")]
    Name(#[from] crate::notice::NoticeError),
    /// More files than a notice carries.
    #[error(
        "at most {} files go with one notice",
        kring_protocol::attachment::MAX_ATTACHMENTS
    )]
    TooMany,
    /// The same name twice.
    #[error("{0:?} is attached twice")]
    Twice(String),
    /// More bytes than a notice carries.
    #[error("the files are over 50 MiB in all; attach less")]
    TooLarge,
    /// A text field over the form's bound.
    #[error("the {0} field is too long")]
    FieldTooLong(String),
    /// The scratch space cannot take the files.
    #[error("no room for uploads: {0}")]
    NoRoom(#[from] std::io::Error),
}

/// Reads the "New notice" form: its fields into a draft, its files into `dir`.
async fn read_new_form(
    form: &mut axum::extract::Multipart,
    dir: &std::path::Path,
) -> Result<(Draft, Vec<std::path::PathBuf>), FormProblem> {
    use tokio::io::AsyncWriteExt as _;
    let mut draft = Draft::default();
    let mut files = Vec::new();
    let mut total = 0u64;
    while let Some(mut field) = form.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "attach" {
            let file_name = field.file_name().unwrap_or_default().to_string();
            if file_name.is_empty() {
                continue; // no file chosen
            }
            crate::notice::check_attachment_name(&file_name)?;
            if files.len() >= kring_protocol::attachment::MAX_ATTACHMENTS {
                return Err(FormProblem::TooMany);
            }
            let path = dir.join(&file_name);
            if files.contains(&path) {
                return Err(FormProblem::Twice(file_name));
            }
            std::fs::create_dir_all(dir)?;
            let mut out = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = field.chunk().await? {
                total += chunk.len() as u64;
                if total > kring_protocol::attachment::MAX_ATTACHMENT_BYTES {
                    return Err(FormProblem::TooLarge);
                }
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            files.push(path);
            continue;
        }
        let text = field.text().await?;
        if text.len() > MAX_FORM {
            return Err(FormProblem::FieldTooLong(name));
        }
        match name.as_str() {
            "community" => draft.community = text,
            "label" => draft.label = text,
            "category" => draft.category = text,
            "title" => draft.title = text,
            "body" => draft.body = text,
            _ => {}
        }
    }
    Ok((draft, files))
}

async fn file(
    AxumState(state): S,
    mut form: axum::extract::Multipart,
) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let uploads = UploadDir(state.uploads.join(Uuid::new_v4().to_string()));
    let (draft, attachments) = match read_new_form(&mut form, &uploads.0).await {
        Ok(read) => read,
        Err(problem) => {
            let reasons = vec![problem.to_string()];
            let refusal = pages::Refusal {
                headline: "The files could not be taken; nothing was sent.",
                reasons: &reasons,
                advice: "Choose the files again (at most 16, 50 MiB in all, plain file names) and file the notice once more.",
            };
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::new_notice_with(&snap, &Draft::default(), Some(&refusal)),
            )
                .into_response());
        }
    };
    let Some(community) = snap.communities.iter().find(|c| c.id == draft.community) else {
        let reasons = vec![format!(
            "you are not a member of {:?}; choose one of your communities",
            draft.community
        )];
        return Ok(pages::new_notice(&snap, &draft, Some(&reasons)).into_response());
    };
    let clearance = snap
        .clearance
        .as_deref()
        .and_then(|c| c.parse::<kring_policy::Clearance>().ok());
    let label = match labels::check(&draft.label, &community.max_label, clearance.as_ref()) {
        Ok(label) => label,
        Err(reasons) => {
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::new_notice(&snap, &draft, Some(&reasons)),
            )
                .into_response());
        }
    };
    let Ok(category) = draft.category.parse() else {
        let reasons = vec![format!("{:?} is not a category", draft.category)];
        return Ok(pages::new_notice(&snap, &draft, Some(&reasons)).into_response());
    };
    let action = Action::File {
        community: community.id.clone(),
        label,
        category,
        title: draft.title.clone(),
        body: draft.body.clone(),
        attachments,
    };
    // The files stay until the device has sealed and sent them (`uploads` goes
    // when this returns).
    match state.ask(|r| Call::Act(action, r)).await {
        Ok(done) => match done.notice {
            Some(id) => Ok(to_notice(id, &done.message)),
            None => Ok(Redirect::to("/").into_response()),
        },
        Err(p) => Ok(pages::problem(&snap, &p).into_response()),
    }
}

#[derive(Debug, Deserialize)]
struct ReplyForm {
    label: String,
    body: String,
}

async fn reply(
    AxumState(state): S,
    Path(id): Path<Uuid>,
    Form(form): Form<ReplyForm>,
) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let action = Action::Reply {
        to: id,
        label: form.label,
        body: form.body,
    };
    match state.ask(|r| Call::Act(action, r)).await {
        Ok(done) => Ok(to_notice(done.notice.unwrap_or(id), &done.message)),
        Err(p) => Ok(pages::problem(&snap, &p).into_response()),
    }
}

#[derive(Debug, Deserialize)]
struct ForwardForm {
    to: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    comment: String,
}

/// Text of an optional field; empty is absent.
fn given(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

async fn forward(
    AxumState(state): S,
    Path(id): Path<Uuid>,
    Form(form): Form<ForwardForm>,
) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let action = Action::Forward {
        id,
        to: form.to,
        label: given(form.label),
        comment: given(form.comment),
    };
    match state.ask(|r| Call::Act(action, r)).await {
        Ok(done) => Ok(to_notice(done.notice.unwrap_or(id), &done.message)),
        Err(p) => Ok(pages::problem(&snap, &p).into_response()),
    }
}

/// An attachment, fetched from the home relay, opened and checked on the device,
/// handed to the browser as a download (never shown inline) and removed from disk.
async fn attachment(
    AxumState(state): S,
    Path((id, n)): Path<(Uuid, usize)>,
) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let saved = match state.ask(|r| Call::Attachment(id, n, r)).await {
        Ok(saved) => saved,
        Err(p) => return Ok(pages::problem(&snap, &p).into_response()),
    };
    let file = tokio::fs::File::open(&saved.path).await;
    // The open file is all the response needs: the scratch copy goes now.
    let _ = tokio::fs::remove_dir_all(&saved.dir).await;
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let p = Problem::new(
                format!("The attachment could not be read back: {e}."),
                "Try again, or save it with `kring notice attachments`.",
            );
            return Ok(pages::problem(&snap, &p).into_response());
        }
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, saved.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(&saved.name),
            ),
        ],
        body,
    )
        .into_response())
}

/// `attachment; filename="..."` with a plain ASCII fallback and the UTF-8 name
/// percent-encoded (RFC 6266).
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

async fn members(AxumState(state): S, Path(id): Path<String>) -> Result<Response, Response> {
    members_page(&state, &id, None).await
}

async fn members_page(
    state: &State,
    id: &str,
    flash: Option<Result<String, Problem>>,
) -> Result<Response, Response> {
    members_with(state, id, flash, None).await
}

async fn members_with(
    state: &State,
    id: &str,
    flash: Option<Result<String, Problem>>,
    check: Option<&AddCheck>,
) -> Result<Response, Response> {
    let snap = snapshot(state).await?;
    let id = id.to_string();
    match state.ask(|r| Call::Members(id, r)).await {
        Ok(m) => Ok(pages::members(&snap, &m, flash.as_ref(), check).into_response()),
        Err(p) => Ok(pages::problem(&snap, &p).into_response()),
    }
}

/// Shows the policy decision on adding a user before anything is committed.
async fn check_add(AxumState(state): S, Form(f): Form<MemberForm>) -> Result<Response, Response> {
    let user = f.user.trim().to_string();
    let community = f.community.clone();
    match state.ask(|r| Call::PreviewAdd(community, user, r)).await {
        Ok(check) => members_with(&state, &f.community, None, Some(&check)).await,
        Err(p) => members_page(&state, &f.community, Some(Err(p))).await,
    }
}

#[derive(Debug, Deserialize)]
struct MemberForm {
    community: String,
    user: String,
    #[serde(default)]
    change: String,
}

async fn member_action(
    state: &State,
    community: String,
    action: Action,
) -> Result<Response, Response> {
    let result = state.ask(|r| Call::Act(action, r)).await.map(|d| d.message);
    members_page(state, &community, Some(result)).await
}

async fn add(AxumState(state): S, Form(f): Form<MemberForm>) -> Result<Response, Response> {
    let action = Action::Add {
        community: f.community.clone(),
        user: f.user.trim().to_string(),
    };
    member_action(&state, f.community, action).await
}

async fn remove(AxumState(state): S, Form(f): Form<MemberForm>) -> Result<Response, Response> {
    let action = Action::Remove {
        community: f.community.clone(),
        user: f.user.trim().to_string(),
    };
    member_action(&state, f.community, action).await
}

async fn admin_change(
    AxumState(state): S,
    Form(f): Form<MemberForm>,
) -> Result<Response, Response> {
    let action = Action::Admin {
        community: f.community.clone(),
        user: f.user.trim().to_string(),
        add: f.change == "add",
    };
    member_action(&state, f.community, action).await
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    name: String,
    max_label: String,
}

async fn create(AxumState(state): S, Form(f): Form<CreateForm>) -> Result<Response, Response> {
    let snap = snapshot(&state).await?;
    let name = f.name.trim().to_string();
    let action = Action::Create {
        name: name.clone(),
        max_label: f.max_label.trim().to_string(),
    };
    match state.ask(|r| Call::Act(action, r)).await {
        // A community is hubbed at the creator's home relay: on to its members.
        Ok(done) => {
            let id = format!("{name}@{}", snap.relay);
            members_page(&state, &id, Some(Ok(done.message))).await
        }
        Err(p) => Ok(pages::problem(&snap, &p).into_response()),
    }
}

async fn admin(AxumState(state): S) -> Result<Response, Response> {
    admin_page(&state, None).await
}

async fn admin_page(
    state: &State,
    flash: Option<Result<String, Problem>>,
) -> Result<Response, Response> {
    let snap = snapshot(state).await?;
    if !snap.org_admin {
        let p = Problem::new(
            "This page is for your organisation's administrators.",
            "Your certificate does not carry the org-admin role; ask your organisation's administrator.",
        );
        return Ok((StatusCode::FORBIDDEN, pages::problem(&snap, &p)).into_response());
    }
    let audit = state.ask(Call::Audit).await;
    Ok(pages::admin(&snap, &audit, flash.as_ref()).into_response())
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    user: String,
    reason: String,
}

async fn confirm_revoke(
    AxumState(state): S,
    Form(f): Form<RevokeForm>,
) -> Result<Markup, Response> {
    let snap = snapshot(&state).await?;
    Ok(pages::confirm_revoke(&snap, f.user.trim(), f.reason.trim()))
}

async fn revoke(AxumState(state): S, Form(f): Form<RevokeForm>) -> Result<Response, Response> {
    let action = Action::Revoke {
        user: f.user.trim().to_string(),
        reason: f.reason.trim().to_string(),
    };
    let result = state.ask(|r| Call::Act(action, r)).await.map(|d| d.message);
    admin_page(&state, Some(result)).await
}

/// Server-sent events: `change` whenever what the pages show may have changed.
async fn events(
    AxumState(state): S,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = state.changes.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let version = *rx.borrow_and_update();
        Some((
            Ok(Event::default().event("change").data(version.to_string())),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

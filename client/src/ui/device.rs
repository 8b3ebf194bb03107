//! The device side of `kring ui`: one task owning the [`Client`], syncing every
//! second and answering the routes' calls one at a time. The local archive is
//! released after every operation, so `kring` commands on the same profile run
//! meanwhile (they wait at most a moment for it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::State;
use super::view::{
    Action, AddCheck, AuditView, Call, CommunityView, Done, MembersView, NoticeView, Problem,
    SavedFile, Snapshot,
};
use crate::client::Client;
use crate::community::{AddPreview, AdminChange};
use crate::error::{
    ClientError, EXIT_AUTH, EXIT_OK, EXIT_POLICY, EXIT_UNREACHABLE, EXIT_USAGE, Result,
};
use crate::notice::{NoticeDraft, NoticeKind};
use crate::ordering::Ordering;
use crate::sync::SyncEvent;

/// How often the device syncs while the interface runs.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Newest audit records shown.
const AUDIT_SHOWN: u64 = 200;
/// How long an add's preview (and the key package it fetched) is kept for the
/// admin's confirmation.
const PREVIEW_KEPT: Duration = Duration::from_secs(600);
/// Previews kept at most (the oldest goes first).
const PREVIEWS_KEPT: usize = 16;

/// Runs the device until the routes are gone, Ctrl-C or SIGTERM; a revoked device stops it.
pub(super) async fn run(
    client: &mut Client,
    mut calls: mpsc::Receiver<Call>,
    state: Arc<State>,
) -> Result<i32> {
    let mut device = Device::default();
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            call = calls.recv() => match call {
                Some(call) => device.answer(client, call, &state).await,
                None => break Ok(EXIT_OK),
            },
            _ = tick.tick() => device.sync(client, &state).await,
            _ = tokio::signal::ctrl_c() => break Ok(EXIT_OK),
            _ = terminated() => break Ok(EXIT_OK),
        };
        // Between operations the archive is free for other kring processes.
        if let Err(e) = client.store().release() {
            tracing::warn!(error = %e, "could not release the local archive");
        }
        if let Err(e) = step {
            break Err(e);
        }
    }
}

#[cfg(unix)]
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminated() {
    std::future::pending().await
}

#[derive(Debug, Default)]
struct Device {
    /// Why the last sync failed.
    offline: Option<Problem>,
    /// Own notices refused at a hop, with the reason.
    refused: BTreeMap<Uuid, String>,
    /// Own notices not yet ordered by the hub.
    pending: Vec<Uuid>,
    /// Adds previewed and awaiting the admin's confirmation, by (community, user).
    previews: BTreeMap<(String, String), (std::time::Instant, AddPreview)>,
}

impl Device {
    async fn sync(&mut self, client: &mut Client, state: &State) -> Result<()> {
        match client.sync().await {
            Ok(report) => {
                let mut changed = self.offline.take().is_some() || !report.events.is_empty();
                for event in &report.events {
                    if let SyncEvent::Refused {
                        notice_id, reason, ..
                    } = event
                    {
                        self.refused.insert(*notice_id, reason.clone());
                    }
                }
                let before = self.pending.len();
                self.pending.retain(|id| {
                    client
                        .store()
                        .notice(*id)
                        .ok()
                        .flatten()
                        .is_some_and(|n| n.seq.is_none())
                        && !self.refused.contains_key(id)
                });
                changed |= self.pending.len() != before;
                if changed {
                    state.changed();
                }
            }
            Err(e) if Client::is_revocation(&e) => return Err(e),
            Err(e) => {
                let problem = problem(&e);
                if self.offline.as_ref() != Some(&problem) {
                    tracing::warn!(error = %e, "sync failed; showing what this device has");
                    self.offline = Some(problem);
                    state.changed();
                }
            }
        }
        Ok(())
    }

    async fn answer(&mut self, client: &mut Client, call: Call, state: &State) -> Result<()> {
        match call {
            Call::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(client));
            }
            Call::Members(community, reply) => {
                let result = members(client, &community).await;
                let _ = reply.send(self.outcome(result)?);
            }
            Call::PreviewAdd(community, user, reply) => {
                let result = self.preview_add(client, &community, &user).await;
                let _ = reply.send(self.outcome(result)?);
            }
            Call::Audit(reply) => {
                let result = audit(client).await;
                let _ = reply.send(self.outcome(result)?);
            }
            Call::Attachment(id, index, reply) => {
                let result = attachment(client, id, index).await;
                let _ = reply.send(self.outcome(result)?);
            }
            Call::Act(action, reply) => {
                let result = self.act(client, action).await;
                let _ = reply.send(self.outcome(result)?);
                state.changed();
            }
        }
        Ok(())
    }

    /// A result for the routes; a revoked device ends the interface.
    fn outcome<T>(&self, result: Result<T>) -> Result<std::result::Result<T, Problem>> {
        match result {
            Ok(v) => Ok(Ok(v)),
            Err(e) if Client::is_revocation(&e) => Err(e),
            Err(e) => Ok(Err(problem(&e))),
        }
    }

    async fn preview_add(
        &mut self,
        client: &mut Client,
        community: &str,
        user: &str,
    ) -> Result<AddCheck> {
        let preview = client.preview_add(community, user).await?;
        let check = preview.decision.clone();
        let now = std::time::Instant::now();
        self.previews
            .retain(|_, (at, _)| now.duration_since(*at) < PREVIEW_KEPT);
        while self.previews.len() >= PREVIEWS_KEPT {
            let oldest = self
                .previews
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.previews.remove(&k),
                None => break,
            };
        }
        // Keyed by the names as entered and as resolved, so that the confirmation
        // finds it either way.
        self.previews.insert(
            (community.to_string(), user.to_string()),
            (now, preview.clone()),
        );
        let resolved = (check.community.clone(), check.user.clone());
        self.previews.insert(resolved, (now, preview));
        Ok(check)
    }

    /// The kept preview of adding `user` to `community`, if it is recent.
    fn take_preview(&mut self, community: &str, user: &str) -> Option<AddPreview> {
        let (at, preview) = self
            .previews
            .remove(&(community.to_string(), user.to_string()))?;
        let d = &preview.decision;
        self.previews.remove(&(d.community.clone(), d.user.clone()));
        (at.elapsed() < PREVIEW_KEPT).then_some(preview)
    }

    fn snapshot(&self, client: &Client) -> std::result::Result<Snapshot, Problem> {
        let store_problem = |e: &dyn std::fmt::Display| {
            Problem::new(
                format!("The local archive could not be read: {e}."),
                "Close other kring programs using this profile and reload the page.",
            )
        };
        let communities = client
            .store()
            .communities()
            .map_err(|e| store_problem(&e))?
            .into_iter()
            .filter(|c| c.active)
            .map(|c| CommunityView {
                id: c.id,
                max_label: c.max_label,
            })
            .collect();
        let mut notices: Vec<NoticeView> = client
            .stored_notices(None)
            .map_err(|e| store_problem(&e))?
            .into_iter()
            .map(|s| NoticeView {
                refused: self.refused.get(&s.notice.id).cloned(),
                notice: s.notice,
                seq: s.seq,
                own: s.own,
            })
            .collect();
        notices.sort_by_key(|n| std::cmp::Reverse(n.notice.filed_at));
        Ok(Snapshot {
            user: client.user(),
            relay: client.relay_id().to_string(),
            clearance: client.clearance().map(|c| c.to_string()),
            org_admin: client.me.roles.iter().any(|r| r == "org-admin"),
            communities,
            notices,
            offline: self.offline.clone(),
        })
    }

    async fn act(&mut self, client: &mut Client, action: Action) -> Result<Done> {
        let done = |message: String| Done {
            message,
            notice: None,
        };
        match action {
            Action::File {
                community,
                label,
                category,
                title,
                body,
                attachments,
            } => {
                let filed = client
                    .file_notice(NoticeDraft {
                        community,
                        label,
                        kind: NoticeKind::Notice,
                        category,
                        title,
                        body,
                        in_reply_to: None,
                        stix: None,
                        attachments,
                    })
                    .await?;
                Ok(self.filed(&filed))
            }
            Action::Reply { to, label, body } => {
                let filed = client.reply(&to.to_string(), &label, body, None).await?;
                Ok(self.filed(&filed))
            }
            Action::Forward {
                id,
                to,
                label,
                comment,
            } => {
                let filed = client
                    .forward(&id.to_string(), &to, label.as_deref(), comment.as_deref())
                    .await?;
                Ok(self.filed(&filed))
            }
            Action::Add { community, user } => {
                let r = match self.take_preview(&community, &user) {
                    Some(preview) => client.add_previewed(preview).await?,
                    None => client.add_members(&community, &[user]).await?,
                };
                Ok(done(format!(
                    "{} may join {} and was added (epoch {}).",
                    r.added.join(", "),
                    r.community,
                    r.epoch
                )))
            }
            Action::Remove { community, user } => {
                let r = client.remove_members(&community, &[user]).await?;
                Ok(done(format!(
                    "{} was removed from {} (epoch {}).",
                    r.removed.join(", "),
                    r.community,
                    r.epoch
                )))
            }
            Action::Admin {
                community,
                user,
                add,
            } => {
                let change = if add {
                    AdminChange::Add
                } else {
                    AdminChange::Remove
                };
                let r = client.set_admin(&community, change, &user).await?;
                Ok(done(format!(
                    "The admins of {} are now: {}.",
                    r.community,
                    r.admins.unwrap_or_default().join(", ")
                )))
            }
            Action::Create { name, max_label } => {
                let r = client.create_community(&name, &max_label).await?;
                Ok(done(format!(
                    "Community {} was created with maximum label {max_label}.",
                    r.community
                )))
            }
            Action::Revoke { user, reason } => {
                let r = client.revoke(&user, &reason).await?;
                let mut message = format!(
                    "{} is revoked at {}: their devices are cut off and removed from every community.",
                    r.user, r.relay
                );
                if !r.peers.is_empty() {
                    message.push_str(&format!(
                        " The revocation is on its way to {}.",
                        r.peers.join(", ")
                    ));
                }
                Ok(done(message))
            }
        }
    }

    fn filed(&mut self, filed: &crate::filing::FiledNotice) -> Done {
        let id = filed.notice.id;
        let message = match &filed.ordering {
            Ordering::Ordered { seq } => {
                format!("Filed: ordered by the hub {} as #{seq}.", filed.hub)
            }
            Ordering::Queued { .. } => {
                self.pending.push(id);
                format!(
                    "Filed: queued at your home relay {}; the hub {} has not ordered it yet.",
                    filed.home, filed.hub
                )
            }
            Ordering::Refused { hop, reason } => {
                self.refused.insert(id, format!("{hop}: {reason}"));
                format!("Refused by {hop}: {reason}")
            }
        };
        Done {
            message,
            notice: Some(id),
        }
    }
}

async fn members(client: &mut Client, community: &str) -> Result<MembersView> {
    // A sync first commits removals the hub proposed (revocations).
    client.sync().await?;
    let info = client.community_info(community).await?;
    let profiles = client.member_profiles(&info.id)?;
    Ok(MembersView {
        id: info.id,
        max_label: info.max_label,
        members: info.members,
        admins: info.admins,
        profiles,
    })
}

async fn audit(client: &mut Client) -> Result<AuditView> {
    let head = client.audit_log(1, 1, true).await?;
    let from = head.total.saturating_sub(AUDIT_SHOWN - 1).max(1);
    let page = client.audit_log(from, AUDIT_SHOWN as u32, false).await?;
    let (verdict, intact) = match &head.verify {
        Some(v) => (crate::cli::audit::verdict_line(v), v.first_bad.is_none()),
        None => ("the relay did not verify its log".to_string(), false),
    };
    let mut records = page.records;
    records.reverse();
    Ok(AuditView {
        relay: page.relay,
        total: page.total,
        records,
        verdict,
        intact,
    })
}

/// A client error in words, with what to do.
/// Opens attachment `index` of notice `id` into a fresh scratch directory.
async fn attachment(client: &mut Client, id: Uuid, index: usize) -> Result<SavedFile> {
    let dir = client.scratch_space()?;
    let saved = client
        .save_attachment(&id.to_string(), index, &dir, &mut |_| {})
        .await;
    match saved {
        Ok(s) => Ok(SavedFile {
            name: s
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: s.path,
            dir,
            size: s.size,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

pub(super) fn problem(e: &ClientError) -> Problem {
    let todo = match e.exit_code() {
        EXIT_USAGE => "Check what you entered and try again.",
        EXIT_POLICY => {
            "Choose a label your clearance and the community allow, or another community; \
             your security officer can tell you more."
        }
        EXIT_AUTH => {
            "You are not allowed to do this (not a member or admin, or your certificate is \
             revoked). Ask your community admin or organisation administrator."
        }
        EXIT_UNREACHABLE => {
            "Check the network connection to your home relay, then try again; notices already \
             filed are sent when the relay is back."
        }
        _ => {
            "Try again. If it happens again, run the same action with the kring command line to see details."
        }
    };
    Problem::new(e.to_string(), todo)
}

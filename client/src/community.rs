//! Community administration: create, add and remove members, change admins.
//!
//! Every change is an MLS commit the hub must accept. The flow is the same for all:
//! sync (to be at the group's current epoch), build the commit, send it with
//! [`Request::Handshake`]; on acceptance merge it, on
//! [`ErrorCode::WrongEpoch`] (another commit won the epoch) discard it, sync and
//! retry — at most [`COMMIT_ATTEMPTS`] times. For a community hubbed at another
//! relay the home relay forwards the commit and waits for the hub; if the hub cannot
//! be reached the commit is discarded and [`ClientError::HubUnreachable`] (exit 5)
//! returned, so that the command can be run again.
//!
//! A commit whose answer is lost (the hub's answer did not reach the home relay in
//! time, [`ErrorCode::OutcomeUnknown`], or the connection dropped) may still be
//! ordered by the hub, so it is kept pending, with its bytes ([`SentCommit`]):
//! [`ClientError::CommitOutcomeUnknown`] (exit 5). A sync settles it from the log
//! (this device's commit at that epoch is merged; another member's discards it);
//! the next change first sends the very same commit again if no sync has settled
//! it, so that a commit the hub never got is not lost and one it has is never
//! replaced by a second commit of the same epoch (a fork of this device).

use kring_policy::{Label, decide_opt};
use kring_protocol::identity::{Identity, IdentityKind, verify_chain_trusted};
use kring_protocol::mls::{
    ClientGroup, CommitOutput, CommunityMeta, DEFAULT_UPDATE_DAYS, MAX_RETENTION_DAYS,
    MAX_UPDATE_DAYS, MlsError, leaf_public_key,
};
use kring_protocol::wire::{ErrorCode, Request, Response};

use crate::client::{Client, not_member, unexpected};
use crate::error::{ClientError, EXIT_UNREACHABLE, Result};
use crate::ids;
use crate::labels::parse_label;
use crate::store::{Batch, CommunityRecord, SentCommit};
use crate::validator::now_unix;

/// The policy decision on adding a user, as an admin sees it before anything is
/// committed: the clearance their certificate carries and whether it admits the
/// community's maximum label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddDecision {
    /// `NAME@HUB`.
    pub community: String,
    /// `NAME@RELAY`.
    pub user: String,
    /// The user's organisation, from their certificate.
    pub organisation: String,
    /// Canonical text of the user's clearance; `None` if the certificate has none.
    pub clearance: Option<String>,
    /// Canonical text of the community's maximum label.
    pub max_label: String,
    /// `None` if the user may join; otherwise why not, in words.
    pub refusal: Option<String>,
}

/// An [`AddDecision`] with the key package it was read from, so that
/// [`Client::add_previewed`] commits exactly the user that was shown, without
/// fetching (and using up) a second key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddPreview {
    /// What adding the user means.
    pub decision: AddDecision,
    key_package: Vec<u8>,
}

/// A member as an admin sees them: who, from which organisation and relay, with
/// which clearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberProfile {
    /// `NAME@RELAY`.
    pub id: String,
    /// The member's organisation, from their certificate.
    pub organisation: String,
    /// Canonical text of the member's clearance; `None` if the certificate has none.
    pub clearance: Option<String>,
}

/// How often a commit is rebuilt after losing its epoch to another commit.
pub const COMMIT_ATTEMPTS: usize = 3;

/// A commit the hub accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Community id.
    pub community: String,
    /// Sequence number of the commit in the community log.
    pub seq: u64,
    /// The group's epoch after the commit.
    pub epoch: u64,
    /// Members added.
    pub added: Vec<String>,
    /// Members removed.
    pub removed: Vec<String>,
    /// The admin list after the commit, if it changed.
    pub admins: Option<Vec<String>>,
}

/// What [`Client::set_admin`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    /// Appoint a member as community admin.
    Add,
    /// Take a member's admin role away.
    Remove,
}

/// The change a commit makes, rebuilt on each attempt.
enum Change<'a> {
    Add(&'a [Vec<u8>]),
    Remove(&'a [String]),
    Admins(Vec<String>),
}

impl Client {
    /// Creates the community `NAME@<home relay>` with maximum label `max_label`; this
    /// user becomes its first member and admin, and the home relay (the hub) its
    /// external sender. Refused (exit 3) if the user's own clearance does not admit
    /// the maximum label.
    pub async fn create_community(&mut self, name: &str, max_label: &str) -> Result<CommitReceipt> {
        self.create_community_with(name, max_label, DEFAULT_UPDATE_DAYS)
            .await
    }

    /// [`create_community`](Self::create_community) with an update period: every
    /// member rotates its leaf key at least every `update_days` days
    /// (1..=[`MAX_UPDATE_DAYS`]; exit 2 otherwise).
    pub async fn create_community_with(
        &mut self,
        name: &str,
        max_label: &str,
        update_days: u16,
    ) -> Result<CommitReceipt> {
        self.create_community_retaining(name, max_label, update_days, None)
            .await
    }

    /// [`create_community_with`](Self::create_community_with) with a retention
    /// period: every member's device deletes notices older than `retention_days`
    /// days (1..=[`MAX_RETENTION_DAYS`]; exit 2 otherwise), and relays drop log
    /// entries older than that once every member device has acknowledged them.
    /// `None`: notices are kept without limit.
    pub async fn create_community_retaining(
        &mut self,
        name: &str,
        max_label: &str,
        update_days: u16,
        retention_days: Option<u16>,
    ) -> Result<CommitReceipt> {
        if update_days == 0 || update_days > MAX_UPDATE_DAYS {
            return Err(ClientError::Usage(format!(
                "the update period must be 1 to {MAX_UPDATE_DAYS} days"
            )));
        }
        if retention_days.is_some_and(|d| d == 0 || d > MAX_RETENTION_DAYS) {
            return Err(ClientError::Usage(format!(
                "the retention period must be 1 to {MAX_RETENTION_DAYS} days"
            )));
        }
        self.reset_transaction()?;
        let name = ids::check_community_name(name)?;
        let community = format!("{name}@{}", self.profile.relay_id);
        let max = parse_label(max_label).map_err(|e| match e {
            ClientError::InvalidLabel { reason, .. } => ClientError::InvalidLabel {
                what: "maximum label",
                reason,
            },
            other => other,
        })?;
        let decision = self.check_clearance(&max);
        if !decision.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "your clearance does not admit the maximum label {max}: {}",
                decision.reason()
            )));
        }
        let me = self.user();
        let meta = CommunityMeta::new(community.clone(), max.to_bytes(), vec![me.clone()])?
            .with_update_days(update_days)?
            .with_retention_days(retention_days)?;
        let hub_chain = self.connect().await?.peer_chain();
        let hub = verify_chain_trusted(
            &hub_chain,
            &self.creds.anchors_der(),
            now_unix(),
            IdentityKind::Relay,
            self.validator.trust(),
        )
        .map_err(|e| ClientError::Auth(format!("the relay's certificate: {e}")))?;
        if hub.id() != self.profile.relay_id {
            return Err(ClientError::Auth(format!(
                "connected to relay {}, but the profile's relay is {}",
                hub.id(),
                self.profile.relay_id
            )));
        }
        let hub_key = leaf_public_key(hub_chain.first().map_or(&[][..], Vec::as_slice))?;

        // Nothing is kept locally unless the hub registers the community.
        self.store.begin()?;
        let created = ClientGroup::create(
            &self.provider,
            &self.signer,
            &self.validator,
            &meta,
            &hub_chain,
            &hub_key,
        );
        let (group, upload) = match created {
            Ok(v) => v,
            Err(e) => {
                self.store.rollback()?;
                return Err(match e {
                    MlsError::Forbidden(_) => ClientError::Usage(format!(
                        "community {community} already exists on this device"
                    )),
                    other => other.into(),
                });
            }
        };
        let request = Request::CreateCommunity {
            community: community.clone(),
            group_info: upload.group_info,
            ratchet_tree: upload.ratchet_tree,
        };
        let answer = self.call(&request).await;
        let seq = match answer {
            Ok(Response::Accepted { seq, .. }) => seq,
            Ok(Response::Ok) => 0,
            Ok(other) => {
                self.store.rollback()?;
                return Err(unexpected("CreateCommunity", &other));
            }
            Err(e) => {
                self.store.rollback()?;
                return Err(e);
            }
        };
        let mut batch = Batch::new();
        batch.put_community(&CommunityRecord {
            id: community.clone(),
            max_label: max.to_string(),
            joined_epoch: group.epoch(),
            active: true,
            retention_days: meta.retention_days,
        })?;
        batch.put_cursor(&community, seq);
        batch.put_leaf_time(&community, &me, self.now());
        self.store.commit(batch)?;
        tracing::info!(%community, "community created");
        Ok(CommitReceipt {
            community,
            seq,
            epoch: group.epoch(),
            added: vec![self.user()],
            removed: Vec::new(),
            admins: Some(vec![self.user()]),
        })
    }

    /// As a community admin, adds `users` (`NAME@RELAY`, or bare names of the home
    /// relay): fetches one key package of each, checks locally that each user's
    /// clearance admits the community's maximum label (exit 3 otherwise), and
    /// commits the add.
    pub async fn add_members<S: AsRef<str>>(
        &mut self,
        community: &str,
        users: &[S],
    ) -> Result<CommitReceipt> {
        self.reset_transaction()?;
        let community = self.resolve_community(community)?;
        let users = self.resolve_users(users)?;
        let group = self.synced_admin_group(&community).await?;
        let max = community_max_label(&group)?;
        let mut key_packages = Vec::with_capacity(users.len());
        for user in &users {
            key_packages.push(self.fetch_key_package(user).await?);
        }
        let receipt = self
            .commit_change(&community, Change::Add(&key_packages), |out| {
                check_added(out, &users, &max)
            })
            .await?;
        Ok(receipt)
    }

    /// As a community admin, fetches one key package of `user` and shows what adding
    /// them would mean: their clearance and the policy decision against the
    /// community's maximum label. Nothing is committed; [`Self::add_previewed`] adds
    /// the user shown.
    pub async fn preview_add(&mut self, community: &str, user: &str) -> Result<AddPreview> {
        self.reset_transaction()?;
        let community = self.resolve_community(community)?;
        let user = self.resolve_user(user)?;
        let group = self.synced_admin_group(&community).await?;
        if group.members(&self.validator)?.iter().any(|m| m.id == user) {
            return Err(ClientError::Usage(format!(
                "{user} is already a member of {community}"
            )));
        }
        let max = community_max_label(&group)?;
        let key_package = self.fetch_key_package(&user).await?;
        let info = kring_protocol::mls::verify_key_package(
            openmls_traits::OpenMlsProvider::crypto(&self.provider),
            &self.validator,
            &key_package,
        )?;
        if info.id != user {
            return Err(ClientError::Protocol(format!(
                "the relay handed out a key package of {} instead of {user}",
                info.id
            )));
        }
        let identity = Identity::from_der(&info.certificate)
            .map_err(|e| ClientError::Protocol(format!("certificate of {user}: {e}")))?;
        let decision = decide_opt(Some(&max), identity.clearance.as_ref());
        Ok(AddPreview {
            decision: AddDecision {
                community,
                refusal: (!decision.allowed).then(|| decision.reason()),
                organisation: identity.organisation,
                clearance: identity.clearance.as_ref().map(ToString::to_string),
                max_label: max.to_string(),
                user,
            },
            key_package,
        })
    }

    /// Adds the user of a [`Self::preview_add`] with the key package it fetched.
    /// Refused (exit 3) if the preview said the user may not join: the policy is
    /// checked again on the commit itself, as for [`Self::add_members`].
    pub async fn add_previewed(&mut self, preview: AddPreview) -> Result<CommitReceipt> {
        let AddPreview {
            decision: d,
            key_package,
        } = preview;
        if let Some(why) = &d.refusal {
            return Err(ClientError::PolicyDenied(format!(
                "{} may not join: the community's maximum label is {}, and {why}",
                d.user, d.max_label
            )));
        }
        self.reset_transaction()?;
        let group = self.synced_admin_group(&d.community).await?;
        let max = community_max_label(&group)?;
        let users = [d.user];
        let key_packages = [key_package];
        self.commit_change(&d.community, Change::Add(&key_packages), |out| {
            check_added(out, &users, &max)
        })
        .await
    }

    /// The members of `community` in this device's group, with the organisation and
    /// clearance their certificates carry.
    pub fn member_profiles(&self, community: &str) -> Result<Vec<MemberProfile>> {
        let community = self.resolve_community(community)?;
        let group = self.load_group(&community)?;
        if !group.is_active() {
            return Err(not_member(&community));
        }
        group
            .member_certificates(&self.validator)?
            .into_iter()
            .map(|(id, leaf)| {
                let identity = Identity::from_der(&leaf)
                    .map_err(|e| ClientError::Protocol(format!("certificate of {id}: {e}")))?;
                Ok(MemberProfile {
                    id,
                    organisation: identity.organisation,
                    clearance: identity.clearance.as_ref().map(ToString::to_string),
                })
            })
            .collect()
    }

    /// Syncs (to be at the group's current epoch) and loads `community`'s group,
    /// refusing a caller who is not one of its admins.
    async fn synced_admin_group(&mut self, community: &str) -> Result<ClientGroup> {
        self.sync().await?;
        let group = self.load_group(community)?;
        self.check_admin(&group)?;
        Ok(group)
    }

    async fn fetch_key_package(&mut self, user: &str) -> Result<Vec<u8>> {
        match self
            .call(&Request::FetchKeyPackage {
                user: user.to_string(),
            })
            .await?
        {
            Response::KeyPackage { key_package } => Ok(key_package),
            other => Err(unexpected("FetchKeyPackage", &other)),
        }
    }

    /// As a community admin, removes `users` from the community.
    pub async fn remove_members<S: AsRef<str>>(
        &mut self,
        community: &str,
        users: &[S],
    ) -> Result<CommitReceipt> {
        self.reset_transaction()?;
        let community = self.resolve_community(community)?;
        let users = self.resolve_users(users)?;
        self.synced_admin_group(&community).await?;
        self.commit_change(&community, Change::Remove(&users), |_| Ok(()))
            .await
    }

    /// As a community admin, appoints `user` as admin or takes the role away (a
    /// commit updating the community metadata). The last admin cannot be removed.
    pub async fn set_admin(
        &mut self,
        community: &str,
        change: AdminChange,
        user: &str,
    ) -> Result<CommitReceipt> {
        self.reset_transaction()?;
        let community = self.resolve_community(community)?;
        let user = self.resolve_user(user)?;
        let group = self.synced_admin_group(&community).await?;
        let mut admins = group.meta()?.admins;
        match change {
            AdminChange::Add if admins.contains(&user) => {
                return Err(ClientError::Usage(format!(
                    "{user} is already an admin of {community}"
                )));
            }
            AdminChange::Add => admins.push(user),
            AdminChange::Remove if !admins.contains(&user) => {
                return Err(ClientError::Usage(format!(
                    "{user} is not an admin of {community}"
                )));
            }
            AdminChange::Remove => {
                admins.retain(|a| a != &user);
                if admins.is_empty() {
                    return Err(ClientError::Usage(format!(
                        "{user} is the last admin of {community}; appoint another admin first"
                    )));
                }
            }
        }
        self.commit_change(&community, Change::Admins(admins), |_| Ok(()))
            .await
    }

    fn resolve_users<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<String>> {
        if users.is_empty() {
            return Err(ClientError::Usage("name at least one user".into()));
        }
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            let id = self.resolve_user(u.as_ref())?;
            if out.contains(&id) {
                return Err(ClientError::Usage(format!("{id} is named twice")));
            }
            out.push(id);
        }
        Ok(out)
    }

    fn check_admin(&self, group: &ClientGroup) -> Result<()> {
        if !group.is_active() {
            return Err(not_member(&group.community_id()));
        }
        let me = self.user();
        let meta = group.meta()?;
        if !meta.is_admin(&me) {
            return Err(ClientError::Auth(format!(
                "only admins of {} may do this; its admins are {}",
                meta.community_id,
                meta.admins.join(", ")
            )));
        }
        Ok(())
    }

    /// Builds, sends and settles a commit, retrying on lost epochs.
    async fn commit_change(
        &mut self,
        community: &str,
        change: Change<'_>,
        check: impl Fn(&CommitOutput) -> Result<()>,
    ) -> Result<CommitReceipt> {
        self.settle_sent_commit(community).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut group = self.load_group(community)?;
            if group.has_pending_commit() {
                // Left over from a run interrupted before it sent it.
                group.commit_refused(&self.provider)?;
            }
            if group.has_pending_proposals() {
                // Hub removals ride along with an admin's add or remove; a metadata
                // commit cannot carry them, so commit them first.
                if let Change::Admins(_) = change {
                    self.commit_pending_proposals(community, &mut |_| {})
                        .await?;
                    group = self.load_group(community)?;
                }
            }
            let built = match &change {
                Change::Add(kps) => {
                    group.add_members(&self.provider, &self.signer, &self.validator, kps)
                }
                Change::Remove(users) => {
                    group.remove_members(&self.provider, &self.signer, &self.validator, users)
                }
                Change::Admins(admins) => group.set_admins(
                    &self.provider,
                    &self.signer,
                    &self.validator,
                    admins.clone(),
                ),
            };
            let out = built?;
            if let Err(e) = check(&out) {
                group.commit_refused(&self.provider)?;
                return Err(e);
            }
            let sent = self
                .send_commit(
                    community,
                    &mut group,
                    out.commit.clone(),
                    out.welcome.clone(),
                )
                .await?;
            match sent {
                CommitSent::Accepted { seq, epoch } => {
                    self.record_commit_leaves(community, &out.summary)?;
                    let s = out.summary;
                    return Ok(CommitReceipt {
                        community: community.to_string(),
                        seq,
                        epoch: epoch.max(group.epoch()),
                        added: s.added.into_iter().map(|a| a.id).collect(),
                        removed: s.removed.into_iter().map(|r| r.id).collect(),
                        admins: s.new_meta.map(|m| m.admins),
                    });
                }
                CommitSent::LostEpoch { current } if attempt < COMMIT_ATTEMPTS => {
                    tracing::info!(
                        community,
                        current,
                        attempt,
                        "commit lost its epoch; retrying"
                    );
                    self.sync().await?;
                }
                CommitSent::LostEpoch { current } => {
                    return Err(ClientError::handshake_refused(
                        community,
                        ErrorCode::WrongEpoch { current },
                    ));
                }
            }
        }
    }

    /// Sends `message` (with `welcome`), the pending commit of `group`, to the hub of
    /// `community` and settles it as far as the answer allows: merged when accepted,
    /// discarded when refused (a lost epoch is [`CommitSent::LostEpoch`], anything
    /// else an error). Remembered ([`SentCommit`]) from before it is sent until its
    /// outcome is known: without an answer it stays pending
    /// ([`ClientError::CommitOutcomeUnknown`]) until the community log settles it
    /// or [`settle_sent_commit`](Self::settle_sent_commit) sends it again.
    pub(crate) async fn send_commit(
        &mut self,
        community: &str,
        group: &mut ClientGroup,
        message: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) -> Result<CommitSent> {
        let sent = SentCommit {
            epoch: group.epoch(),
            message,
            welcome,
        };
        let mut batch = Batch::new();
        batch.put_sent_commit(community, &sent);
        // The pending commit and this record are on disk before anything is sent.
        self.store.commit_plain(batch)?;
        self.store.flush()?;
        let answer = self.call_handshake(community, sent).await;
        self.settle_answer(community, group, answer)
    }

    /// Sends the commit `sent` of `community` to its hub and waits for the answer
    /// within the handshake timeout.
    async fn call_handshake(&mut self, community: &str, sent: SentCommit) -> Result<Response> {
        let request = Request::Handshake {
            community: community.to_string(),
            message: sent.message,
            welcome: sent.welcome,
        };
        let limit = self.timeouts.handshake;
        self.call_within(&request, limit).await
    }

    /// Settles this device's pending commit of `group` by the hub's `answer` to it.
    fn settle_answer(
        &mut self,
        community: &str,
        group: &mut ClientGroup,
        answer: Result<Response>,
    ) -> Result<CommitSent> {
        let forget = |client: &mut Self, group: &mut ClientGroup, accepted: bool| {
            let mut batch = Batch::new();
            if accepted {
                let leaf_before = group.own_leaf_key();
                group.commit_accepted(&client.provider)?;
                if group.own_leaf_key() != leaf_before {
                    // The commit carried an update path: this device's leaf is new.
                    batch.put_leaf_time(community, &client.user(), client.now());
                }
            } else {
                group.commit_refused(&client.provider)?;
            }
            batch.remove_sent_commit(community);
            client.store.commit_plain(batch)?;
            client.store.flush()?;
            Ok::<(), ClientError>(())
        };
        match answer {
            Ok(Response::Accepted { seq, epoch }) => {
                forget(self, group, true)?;
                Ok(CommitSent::Accepted { seq, epoch })
            }
            Ok(other) => {
                forget(self, group, false)?;
                Err(unexpected("Handshake", &other))
            }
            Err(ClientError::Relay(ErrorCode::WrongEpoch { current })) => {
                forget(self, group, false)?;
                Ok(CommitSent::LostEpoch { current })
            }
            Err(ClientError::Relay(code @ ErrorCode::OutcomeUnknown { .. })) => {
                tracing::info!(
                    community,
                    "commit outcome unknown; kept until the log settles it"
                );
                Err(ClientError::handshake_refused(community, code))
            }
            Err(ClientError::Relay(code)) => {
                // Refused (or, for a remote hub, not delivered to it): discard the
                // commit so that running the command again works.
                forget(self, group, false)?;
                Err(ClientError::handshake_refused(community, code))
            }
            // Sent, but the answer was lost with the connection: keep the pending
            // commit; the log or sending it again settles it.
            Err(e) if e.exit_code() == EXIT_UNREACHABLE => Err(ClientError::CommitOutcomeUnknown {
                community: community.to_string(),
                reason: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Settles a commit this device sent to the hub of `community` in an earlier
    /// run without learning its outcome, and that a sync has not settled since
    /// (its entry, or another commit of its epoch, is not in the log yet): sends the
    /// very same commit again. A hub that never got it orders it now; a hub that has
    /// it (or another commit of that epoch) answers that it has moved on, and the
    /// commit stays pending until the log reaches this device
    /// ([`ClientError::CommitOutcomeUnknown`]). A pending commit that was never sent
    /// is discarded; the caller should have synced first.
    pub(crate) async fn settle_sent_commit(&mut self, community: &str) -> Result<()> {
        let mut group = self.load_group(community)?;
        let sent = self
            .store
            .sent_commit(community)?
            .filter(|s| group.has_pending_commit() && s.epoch == group.epoch());
        let Some(sent) = sent else {
            if self.store.sent_commit(community)?.is_some() {
                // Settled by the log (merged, or another commit won its epoch).
                let mut batch = Batch::new();
                batch.remove_sent_commit(community);
                self.store.commit_plain(batch)?;
            }
            return Ok(());
        };
        tracing::info!(
            community,
            epoch = sent.epoch,
            "sending a commit of unknown outcome again"
        );
        let answer = self.call_handshake(community, sent).await;
        let unknown = |reason: String| ClientError::CommitOutcomeUnknown {
            community: community.to_string(),
            reason,
        };
        match answer {
            // The hub is past the epoch: the log will show which commit won it.
            Err(ClientError::Relay(ErrorCode::WrongEpoch { current })) => Err(unknown(format!(
                "the hub has moved on to epoch {current}, and this device has not received \
                 the commit of epoch {} yet",
                group.epoch()
            ))),
            // Not delivered this time, or again no answer: as unknown as before.
            Err(ClientError::Relay(
                code @ (ErrorCode::Unavailable { .. }
                | ErrorCode::OutcomeUnknown { .. }
                | ErrorCode::RateLimited { .. }
                | ErrorCode::Internal),
            )) => Err(unknown(code.to_string())),
            answer => {
                self.settle_answer(community, &mut group, answer)
                    .and_then(|sent| match sent {
                        CommitSent::Accepted { seq, epoch } => {
                            tracing::info!(community, seq, epoch, "an earlier commit was accepted");
                            Ok(())
                        }
                        CommitSent::LostEpoch { current } => {
                            Err(unknown(format!("the hub has moved on to epoch {current}")))
                        }
                    })
            }
        }
    }
}

/// What became of a commit sent to the hub ([`Client::send_commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitSent {
    /// Accepted and merged here.
    Accepted {
        /// Its sequence number in the community log.
        seq: u64,
        /// The epoch after it.
        epoch: u64,
    },
    /// Another commit won the epoch; this one was discarded.
    LostEpoch {
        /// The hub's current epoch.
        current: u64,
    },
}

/// The community's maximum label from the group context.
fn community_max_label(group: &ClientGroup) -> Result<Label> {
    let meta = group.meta()?;
    Label::from_bytes(&meta.max_label).map_err(|e| {
        ClientError::Protocol(format!(
            "the maximum label of {} does not decode: {e}",
            meta.community_id
        ))
    })
}

/// Checks the members an add commit would add: exactly the users asked for, each
/// cleared for the community's maximum label.
fn check_added(out: &CommitOutput, users: &[String], max: &Label) -> Result<()> {
    for added in &out.summary.added {
        if !users.contains(&added.id) {
            return Err(ClientError::Protocol(format!(
                "the relay handed out a key package of {} instead of the users asked for",
                added.id
            )));
        }
        let leaf = added.chain.first().map_or(&[][..], Vec::as_slice);
        let clearance = Identity::from_der(leaf).ok().and_then(|i| i.clearance);
        let decision = decide_opt(Some(max), clearance.as_ref());
        if !decision.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "{} may not join: the community's maximum label is {max}, and {}",
                added.id,
                decision.reason()
            )));
        }
    }
    if out.summary.added.len() != users.len() {
        return Err(ClientError::Protocol(
            "the commit does not add every user asked for".into(),
        ));
    }
    Ok(())
}

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

use kring_policy::{Label, decide_opt};
use kring_protocol::identity::{Identity, IdentityKind, verify_chain_trusted};
use kring_protocol::mls::{ClientGroup, CommitOutput, CommunityMeta, MlsError, leaf_public_key};
use kring_protocol::wire::{ErrorCode, Request, Response};

use crate::client::{Client, not_member, unexpected};
use crate::error::{ClientError, Result};
use crate::ids;
use crate::labels::parse_label;
use crate::store::{Batch, CommunityRecord};
use crate::validator::now_unix;

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
        let meta = CommunityMeta::new(community.clone(), max.to_bytes(), vec![me])?;
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
        })?;
        batch.put_cursor(&community, seq);
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
        self.sync().await?;
        let group = self.load_group(&community)?;
        self.check_admin(&group)?;
        let max = community_max_label(&group)?;
        let mut key_packages = Vec::with_capacity(users.len());
        for user in &users {
            let kp = match self
                .call(&Request::FetchKeyPackage { user: user.clone() })
                .await?
            {
                Response::KeyPackage { key_package } => key_package,
                other => return Err(unexpected("FetchKeyPackage", &other)),
            };
            key_packages.push(kp);
        }
        let receipt = self
            .commit_change(&community, Change::Add(&key_packages), |out| {
                check_added(out, &users, &max)
            })
            .await?;
        Ok(receipt)
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
        self.sync().await?;
        let group = self.load_group(&community)?;
        self.check_admin(&group)?;
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
        self.sync().await?;
        let group = self.load_group(&community)?;
        self.check_admin(&group)?;
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut group = self.load_group(community)?;
            if group.has_pending_commit() {
                // Left over from an interrupted run, not accepted since (we synced).
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
            self.store.flush()?;
            let request = Request::Handshake {
                community: community.to_string(),
                message: out.commit.clone(),
                welcome: out.welcome.clone(),
            };
            let limit = self.timeouts.handshake;
            match self.call_within(&request, limit).await {
                Ok(Response::Accepted { seq, epoch }) => {
                    group.commit_accepted(&self.provider)?;
                    self.store.flush()?;
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
                Ok(other) => {
                    group.commit_refused(&self.provider)?;
                    return Err(unexpected("Handshake", &other));
                }
                Err(ClientError::Relay(ErrorCode::WrongEpoch { current }))
                    if attempt < COMMIT_ATTEMPTS =>
                {
                    tracing::info!(
                        community,
                        current,
                        attempt,
                        "commit lost its epoch; retrying"
                    );
                    group.commit_refused(&self.provider)?;
                    self.store.flush()?;
                    self.sync().await?;
                }
                Err(ClientError::Relay(code)) => {
                    // Refused (or, for a remote hub, not delivered to it in time):
                    // discard the commit so that running the command again works.
                    group.commit_refused(&self.provider)?;
                    self.store.flush()?;
                    return Err(ClientError::handshake_refused(community, code));
                }
                // Fate unknown (connection lost): keep the pending commit; the next
                // sync merges it if the hub accepted it.
                Err(e) => return Err(e),
            }
        }
    }
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

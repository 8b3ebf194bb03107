//! MLS public-group tracking for the relay (openmls `PublicGroup` through
//! [`kring_protocol::mls::RelayGroup`]).
//!
//! The group state lives in the relay's store under [`keys::MLS`]. Writes made while a
//! request is processed go to an [`Overlay`] first; the request handler puts them into
//! the same atomic batch as the log entry and the community record, so a crash never
//! leaves the MLS state and the log disagreeing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kring_policy::Clearance;
use kring_protocol::identity::{Identity, TrustMap};
use kring_protocol::mls::{
    CredentialError, CredentialValidator, GroupMember, Handshake, MlsError, RelayGroup,
    VerifiedHandshake, verify_key_package,
};
use kring_protocol::mls_storage::{KvBackend, KvBatch, KvStorage};
use kring_protocol::revocation::Revocations;
use kring_protocol::validator::FederationValidator;
use kring_protocol::wire::ErrorCode;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{MlsMessageIn, ProtocolMessage};
use openmls_rust_crypto::RustCrypto;

use crate::error::{RelayError, StoreError};
use crate::store::{Batch, Engine, keys};

type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Reads through to the store, keeps writes in memory until [`Overlay::into_batch`].
#[derive(Debug, Clone)]
pub struct Overlay {
    engine: Arc<dyn Engine>,
    writes: Arc<Mutex<Writes>>,
}

/// Errors of the overlay backend.
#[derive(Debug, thiserror::Error)]
#[error("relay store: {0}")]
pub struct OverlayError(String);

impl Overlay {
    /// An empty overlay over `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            writes: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The writes made so far, as a batch of store operations.
    pub fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        if let Ok(writes) = self.writes.lock() {
            for (k, v) in writes.iter() {
                batch.set([keys::MLS, k].concat(), v.clone());
            }
        }
        batch
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Writes>, OverlayError> {
        self.writes
            .lock()
            .map_err(|_| OverlayError("overlay lock poisoned".into()))
    }
}

impl KvBackend for Overlay {
    type Error = OverlayError;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        if let Some(v) = self.lock()?.get(key) {
            return Ok(v.clone());
        }
        self.engine
            .get(&[keys::MLS, key].concat())
            .map_err(|e| OverlayError(e.to_string()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error> {
        self.lock()?.insert(key.to_vec(), Some(value));
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.lock()?.insert(key.to_vec(), None);
        Ok(())
    }

    fn apply(&self, batch: KvBatch) -> Result<(), Self::Error> {
        let mut w = self.lock()?;
        for (k, v) in batch {
            w.insert(k, v);
        }
        Ok(())
    }
}

/// A community as tracked, after creation or a merged commit.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// Current epoch.
    pub epoch: u64,
    /// Member ids.
    pub members: Vec<String>,
    /// Community admins.
    pub admins: Vec<String>,
    /// Binary maximum label.
    pub max_label: Vec<u8>,
    /// Hub relay id named by the metadata.
    pub hub: String,
    /// The community's retention period in seconds, if it has one.
    pub retention_secs: Option<u64>,
    /// Ratchet tree (TLS-encoded), for Welcomes; empty after a merged commit that
    /// added nobody (exporting a 1,000-member tree is not free and nobody needs it).
    pub ratchet_tree: Vec<u8>,
}

fn view(
    group: &RelayGroup,
    members: &[GroupMember],
    with_tree: bool,
) -> Result<GroupView, MlsError> {
    let meta = group.meta()?;
    Ok(GroupView {
        epoch: group.epoch(),
        members: members.iter().map(|m| m.id.clone()).collect(),
        admins: meta.admins.clone(),
        hub: meta.hub().to_string(),
        retention_secs: meta.retention_secs(),
        max_label: meta.max_label.clone(),
        ratchet_tree: if with_tree {
            group.export_ratchet_tree()?
        } else {
            Vec::new()
        },
    })
}

/// A community's members as last named, for the tree they were named from.
struct NamedMembers {
    tree_hash: Vec<u8>,
    members: Arc<Vec<GroupMember>>,
}

/// Member lists by community id. Naming the 1,000 members of a large community
/// from their credentials after every commit was a fifth of the relay's cost per
/// commit; a commit changes a few leaves, so the list after it is derived from the
/// list before it (see [`members_after`]). Keyed by the tree hash, which covers
/// every leaf's credential: a list is only used for exactly the tree it was named
/// from, so a merge whose batch was never written cannot leak into another state.
/// Bounded: cleared when full.
static NAMED_MEMBERS: Mutex<BTreeMap<String, NamedMembers>> = Mutex::new(BTreeMap::new());
/// Most communities kept in [`NAMED_MEMBERS`].
const MAX_NAMED_COMMUNITIES: usize = 1024;

fn named_members(community: &str, tree_hash: &[u8]) -> Option<Arc<Vec<GroupMember>>> {
    let lists = NAMED_MEMBERS.lock().ok()?;
    lists
        .get(community)
        .filter(|named| named.tree_hash == tree_hash)
        .map(|named| named.members.clone())
}

fn remember_members(community: &str, tree_hash: &[u8], members: Arc<Vec<GroupMember>>) {
    if let Ok(mut lists) = NAMED_MEMBERS.lock() {
        if lists.len() >= MAX_NAMED_COMMUNITIES && !lists.contains_key(community) {
            lists.clear();
        }
        lists.insert(
            community.to_owned(),
            NamedMembers {
                tree_hash: tree_hash.to_vec(),
                members,
            },
        );
    }
}

/// The members of `group` right after a verified commit that removed the leaves
/// `removed` and added `added` members to the tree whose members were `before`.
///
/// A Kring commit changes no other leaf than those and the committer's own (its
/// update path, whose identity the verification checked is unchanged), so a leaf
/// that was a member before, is not removed and still has the same signature key
/// keeps its id; every other occupied leaf is named from its credential. `None`
/// if the result does not add up (then name everyone).
fn members_after(
    group: &RelayGroup,
    validator: &impl CredentialValidator,
    before: &[GroupMember],
    removed: &[u32],
    added: usize,
) -> Result<Option<Vec<GroupMember>>, MlsError> {
    let kept: BTreeMap<u32, &GroupMember> = before
        .iter()
        .filter(|m| !removed.contains(&m.leaf_index))
        .map(|m| (m.leaf_index, m))
        .collect();
    // New members fill blank leaves from the left, then extend the tree.
    let Some(end) = before
        .iter()
        .map(|m| m.leaf_index)
        .max()
        .and_then(|last| last.checked_add(1))
        .and_then(|len| u32::try_from(added).ok().and_then(|a| len.checked_add(a)))
    else {
        return Ok(None);
    };
    let mut members = Vec::with_capacity(kept.len() + added);
    for leaf_index in 0..end {
        let Some(key) = group.leaf_signature_key(leaf_index) else {
            continue;
        };
        match kept.get(&leaf_index) {
            Some(m) if m.signature_key == key => members.push((*m).clone()),
            _ => {
                if let Some(m) = group.member_at(validator, leaf_index)? {
                    members.push(m);
                }
            }
        }
    }
    Ok((members.len() == kept.len() + added).then_some(members))
}

/// Maps an MLS error to what the peer is told.
pub fn mls_refusal(e: MlsError) -> RelayError {
    let code = match e {
        MlsError::WrongEpoch { current, .. } => ErrorCode::WrongEpoch { current },
        MlsError::NotAdmin(_) => ErrorCode::NotAdmin,
        MlsError::NotMember(_) => ErrorCode::NotMember,
        e @ (MlsError::Storage(_) | MlsError::Internal(_)) => return RelayError::Mls(e),
        other => ErrorCode::BadRequest {
            reason: other.to_string(),
        },
    };
    RelayError::Refused(code)
}

/// Checks a key package a user publishes: valid MLS key package of our ciphersuite and
/// capabilities, credential = the caller's own certificate chain, signature key = the
/// certificate key, certificate valid now.
pub fn validate_key_package(
    bytes: &[u8],
    caller_chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
) -> Result<(), MlsError> {
    let validator = SameChain {
        inner: FederationValidator::new(anchors, trust, now),
        expected_leaf: caller_chain
            .first()
            .map(|c| c.as_slice())
            .unwrap_or_default(),
    };
    verify_key_package(&RustCrypto::default(), &validator, bytes).map(|_| ())
}

struct SameChain<'a> {
    inner: FederationValidator<'a>,
    expected_leaf: &'a [u8],
}

impl CredentialValidator for SameChain<'_> {
    fn validate(&self, chain: &[Vec<u8>], key: &[u8]) -> Result<String, CredentialError> {
        if chain.first().map(|c| c.as_slice()) != Some(self.expected_leaf) {
            return Err(CredentialError::NotExpected(
                "the key package's credential is not the caller's own certificate",
            ));
        }
        self.inner.validate(chain, key)
    }
}

/// Starts tracking a new community from its creator's upload.
pub fn create(
    overlay: &Overlay,
    community: &str,
    group_info: &[u8],
    ratchet_tree: &[u8],
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
) -> Result<GroupView, MlsError> {
    let storage = KvStorage::new(overlay.clone());
    let validator = FederationValidator::new(anchors, trust, now);
    let group = RelayGroup::from_group_info(
        &RustCrypto::default(),
        &storage,
        &validator,
        group_info,
        ratchet_tree,
    )?;
    if group.community_id() != community {
        return Err(MlsError::WrongGroup {
            got: group.community_id().to_string(),
            expected: community.to_string(),
        });
    }
    let members = group.members(&validator)?;
    let view = view(&group, &members, true)?;
    remember_members(community, group.tree_hash(), Arc::new(members));
    Ok(view)
}

/// A verified handshake with what it does, in relay terms.
#[derive(Debug)]
pub struct Staged {
    /// The verified message, to merge if policy allows.
    pub verified: VerifiedHandshake,
    /// Who signed it.
    pub sender: String,
    /// Epoch it was made in.
    pub epoch: u64,
    /// Added members with their certificate clearance.
    pub added: Vec<(String, Option<Clearance>)>,
    /// Removed members.
    pub removed: Vec<String>,
    /// Removals the hub proposed.
    pub removed_by_hub: Vec<String>,
    /// New admin list, if changed.
    pub new_admins: Option<Vec<String>>,
    /// True if the commit only updates the committer's own leaf (verified: no
    /// proposals, an update path, the same identity, the context unchanged).
    pub self_update: bool,
    /// The group the message was verified against, merged into by [`merge`] (so
    /// the ~1 MB state of a large community is read from the store once).
    group: RelayGroup,
    /// The community it belongs to.
    community: String,
}

/// Loads the group and verifies a handshake message against it, without merging.
pub fn process_handshake(
    overlay: &Overlay,
    community: &str,
    message: &[u8],
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
    revoked: &Revocations,
) -> Result<Staged, RelayError> {
    let storage = KvStorage::new(overlay.clone());
    let validator = FederationValidator::with_revocations(anchors, trust, now, revoked);
    let group = RelayGroup::load(&storage, community)
        .map_err(mls_refusal)?
        .ok_or_else(|| StoreError::NoGroupState(community.to_string()))?;
    let verified = group
        .process_handshake(&RustCrypto::default(), &validator, message)
        .map_err(mls_refusal)?;
    let epoch = verified.epoch();
    let Handshake::Commit(summary) = verified.summary().clone() else {
        return Err(ErrorCode::BadRequest {
            reason: "only the hub relay may send proposals".into(),
        }
        .into());
    };
    let mut added = Vec::new();
    for a in &summary.added {
        let clearance = a
            .chain
            .first()
            .and_then(|leaf| Identity::from_der(leaf).ok())
            .and_then(|id| id.clearance);
        added.push((a.id.clone(), clearance));
    }
    Ok(Staged {
        verified,
        sender: summary.committer.clone(),
        epoch,
        added,
        removed: summary.removed.iter().map(|r| r.id.clone()).collect(),
        removed_by_hub: summary
            .removed
            .iter()
            .filter(|r| r.proposed_by_hub)
            .map(|r| r.id.clone())
            .collect(),
        self_update: summary.is_self_update(),
        new_admins: summary.new_meta.map(|m| m.admins),
        group,
        community: community.to_owned(),
    })
}

/// Merges a verified commit into the group it was verified against and returns
/// the new state. `overlay` must be the one `staged` was verified over, with no
/// MLS writes since (the relay's writer does both in one critical section).
pub fn merge(
    overlay: &Overlay,
    community: &str,
    staged: Staged,
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
) -> Result<GroupView, RelayError> {
    if staged.community != community {
        return Err(StoreError::WrongCommunity {
            verified: staged.community.clone(),
            into: community.to_string(),
        }
        .into());
    }
    let storage = KvStorage::new(overlay.clone());
    // Exactly one commit per epoch: the stored group must still be at the epoch
    // the commit was verified in (reading the small group context suffices).
    let stored = RelayGroup::stored_epoch(&storage, community)
        .map_err(mls_refusal)?
        .ok_or_else(|| StoreError::NoGroupState(community.to_string()))?;
    if stored != staged.epoch {
        return Err(mls_refusal(MlsError::WrongEpoch {
            current: stored,
            message_epoch: staged.epoch,
        }));
    }
    let validator = FederationValidator::new(anchors, trust, now);
    let added = staged.added.len();
    let removed: Vec<u32> = match staged.verified.summary() {
        Handshake::Commit(summary) => summary.removed.iter().map(|r| r.leaf_index).collect(),
        Handshake::RemovalProposal(_) => Vec::new(),
    };
    let before = named_members(community, staged.group.tree_hash());
    let mut group = staged.group;
    group
        .merge(&storage, staged.verified)
        .map_err(mls_refusal)?;
    let derived = match before {
        Some(before) => {
            members_after(&group, &validator, &before, &removed, added).map_err(mls_refusal)?
        }
        None => None,
    };
    let members = match derived {
        Some(members) => members,
        None => group.members(&validator).map_err(mls_refusal)?,
    };
    let view = view(&group, &members, added > 0).map_err(mls_refusal)?;
    remember_members(community, group.tree_hash(), Arc::new(members));
    Ok(view)
}

/// What the relay reads of an application message without decrypting it.
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// Group id bytes.
    pub group_id: Vec<u8>,
    /// Epoch it was encrypted in.
    pub epoch: u64,
    /// Authenticated data (the binary label).
    pub aad: Vec<u8>,
}

/// Parses an application message (PrivateMessage) without loading the group.
pub fn read_application(message: &[u8]) -> Result<AppInfo, MlsError> {
    let max = kring_protocol::mls::MAX_MESSAGE_BYTES;
    if message.len() > max {
        return Err(MlsError::TooLarge {
            what: "notice",
            len: message.len(),
            max,
        });
    }
    let malformed = |reason: String| MlsError::Malformed {
        what: "notice",
        reason,
    };
    let msg = MlsMessageIn::tls_deserialize_exact(message).map_err(|e| malformed(e.to_string()))?;
    let proto = msg
        .try_into_protocol_message()
        .map_err(|e| malformed(e.to_string()))?;
    let ProtocolMessage::PrivateMessage(private) = proto else {
        return Err(malformed("not an MLS PrivateMessage".into()));
    };
    if private.content_type() != openmls::prelude::ContentType::Application {
        return Err(malformed("not an application message".into()));
    }
    Ok(AppInfo {
        group_id: private.group_id().as_slice().to_vec(),
        epoch: private.epoch().as_u64(),
        aad: private.aad().to_vec(),
    })
}

/// A removal the hub proposed as the community's external sender.
#[derive(Debug, Clone)]
pub struct ProposedRemoval {
    /// The member to remove.
    pub member: String,
    /// Why (the credential check that failed: revoked, expired).
    pub reason: String,
    /// The proposal (PublicMessage bytes) to append to the log.
    pub message: Vec<u8>,
    /// The epoch it was proposed in.
    pub epoch: u64,
}

/// Members of `community` (as tracked here) whose credential no longer passes
/// the federation validator with `revoked` (revoked identity or certificate,
/// expired certificate), with the reason. Reads the stored group and writes
/// nothing: run it outside the writer, which need then only look at these.
pub fn invalid_members(
    engine: Arc<dyn Engine>,
    community: &str,
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
    revoked: &Revocations,
) -> Result<Vec<(String, String)>, RelayError> {
    let storage = KvStorage::new(Overlay::new(engine));
    let validator = FederationValidator::with_revocations(anchors, trust, now, revoked);
    let Some(group) = RelayGroup::load(&storage, community).map_err(mls_refusal)? else {
        return Ok(Vec::new());
    };
    let invalid = group.invalid_members(&validator);
    if invalid.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(invalid.len());
    for (leaf, reason) in invalid {
        if let Some(member) = group.member_at(&validator, leaf).map_err(mls_refusal)? {
            out.push((member.id, reason));
        }
    }
    Ok(out)
}

/// As the hub: proposes the removal of each member of `due` (member id, reason;
/// found by [`invalid_members`]) still in the group, unless already proposed in
/// this epoch. The proposals are queued in the group state in `overlay`.
#[allow(clippy::too_many_arguments)]
pub fn propose_removals(
    overlay: &Overlay,
    community: &str,
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
    revoked: &Revocations,
    hub: &kring_protocol::mls::CertSigner,
    due: &[(String, String)],
) -> Result<Vec<ProposedRemoval>, RelayError> {
    let storage = KvStorage::new(overlay.clone());
    let validator = FederationValidator::with_revocations(anchors, trust, now, revoked);
    let Some(mut group) = RelayGroup::load(&storage, community).map_err(mls_refusal)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (member, reason) in due {
        let epoch = group.epoch();
        match group.propose_remove(&RustCrypto::default(), &storage, &validator, hub, member) {
            Ok(message) => out.push(ProposedRemoval {
                member: member.clone(),
                reason: reason.clone(),
                message,
                epoch,
            }),
            // Already proposed in this epoch, or gone since: nothing to do.
            Err(MlsError::Forbidden(_) | MlsError::NotMember(_)) => {}
            Err(e) => return Err(mls_refusal(e)),
        }
    }
    Ok(out)
}

/// Checks a stored key package before handing it out: still a valid key package
/// whose credential is neither revoked nor expired.
pub fn check_key_package_credential(
    bytes: &[u8],
    anchors: &[Vec<u8>],
    trust: &TrustMap,
    now: u64,
    revoked: &Revocations,
) -> Result<(), MlsError> {
    let validator = FederationValidator::with_revocations(anchors, trust, now, revoked);
    verify_key_package(&RustCrypto::default(), &validator, bytes).map(|_| ())
}

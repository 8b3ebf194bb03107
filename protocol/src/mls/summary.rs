//! What a verified commit or proposal does, in Kring terms, and the Kring rules every
//! commit must follow (checked identically by relays and clients).

use std::collections::BTreeSet;

use openmls::prelude::{
    Credential, LeafNodeIndex, Proposal, PublicGroup, QueuedProposal, Sender, StagedCommit,
};

use super::context::{check_context, check_context_transition, community_meta};
use super::credential::{credential_chain, identify_credential, validate_credential};
use super::{CommunityMeta, CredentialValidator, MemberId, MlsError};

/// A member added by a commit, as verified from its key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedMember {
    /// The validated identity (`NAME@RELAY`).
    pub id: MemberId,
    /// The member's certificate chain (leaf first, DER), for label policy checks.
    pub chain: Vec<Vec<u8>>,
    /// The member's MLS signature key (= certificate key).
    pub signature_key: Vec<u8>,
}

/// A member removed by a commit or named by a removal proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedMember {
    /// The identity of the removed leaf (read with
    /// [`CredentialValidator::identify`], so revoked members can be named).
    pub id: MemberId,
    /// The removed leaf's index in the ratchet tree.
    pub leaf_index: u32,
    /// True if the hub relay (external sender) proposed this removal; any member may
    /// commit such a removal.
    pub proposed_by_hub: bool,
}

/// What a verified commit changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// The epoch the commit was made in.
    pub epoch_before: u64,
    /// The epoch the commit moves the group to (`epoch_before + 1`).
    pub epoch_after: u64,
    /// The member who made the commit.
    pub committer: MemberId,
    /// Members added (each passed [`CredentialValidator::validate`]).
    pub added: Vec<AddedMember>,
    /// Members removed.
    pub removed: Vec<RemovedMember>,
    /// The new community metadata, if the commit changed it (only the admin list can
    /// change).
    pub new_meta: Option<CommunityMeta>,
    /// True if the commit carries an update path: the committer's leaf (its HPKE
    /// encryption key) and the keys on its path to the root were replaced.
    pub leaf_updated: bool,
}

impl CommitSummary {
    /// True if only a community admin may make this commit: it adds members,
    /// changes the metadata, or removes members the hub did not propose to remove.
    /// Already enforced by this module; exposed for logging and audit.
    pub fn requires_admin(&self) -> bool {
        !self.added.is_empty()
            || self.new_meta.is_some()
            || self.removed.iter().any(|r| !r.proposed_by_hub)
    }

    /// True if the commit does nothing but update the committer's own leaf: no
    /// members added or removed, no metadata change, an update path. Any member
    /// may make one.
    pub fn is_self_update(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.new_meta.is_none()
            && self.leaf_updated
    }
}

/// A verified removal proposal from the hub relay (the group's external sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovalProposal {
    /// The epoch the proposal belongs to; it is void once the group moves on.
    pub epoch: u64,
    /// The hub relay's id.
    pub hub: MemberId,
    /// The member to remove (`proposed_by_hub` is true).
    pub removed: RemovedMember,
}

/// Verifies a staged commit against the Kring rules and summarises it.
///
/// `old` is the group state the commit applies to; `sender`/`sender_credential`
/// come from the processed message (already signature-checked by openmls).
/// Rules: only members commit (no external commits); only Add, Remove and
/// GroupContextExtensions proposals (no Update, PreSharedKey, ReInit or
/// ExternalInit: a member's leaf changes only through its own commit's update
/// path); every added or updated credential validates; nobody changes identity
/// or certificate (an update path keeps the leaf's credential and signature key);
/// added members are not members yet (one leaf per member id); only the admin list
/// of the metadata may change; only admins may add, remove (except
/// hub-proposed removals) or change the metadata; and a commit without proposals
/// must carry an update path (a self-update, which any member may make).
pub(crate) fn summarize_commit(
    old: &PublicGroup,
    validator: &impl CredentialValidator,
    sender: &Sender,
    sender_credential: &Credential,
    staged: &StagedCommit,
) -> Result<CommitSummary, MlsError> {
    let Sender::Member(committer_index) = sender else {
        return Err(MlsError::Forbidden(
            "only members may commit (no external commits)".into(),
        ));
    };
    let committer_leaf = old
        .leaf(*committer_index)
        .ok_or_else(|| MlsError::NotMember(format!("leaf {}", committer_index.u32())))?;
    let committer = validate_credential(
        validator,
        sender_credential,
        committer_leaf.signature_key().as_slice(),
    )?;
    let old_meta = community_meta(old.group_context())?;

    // The current members' ids, only needed to refuse adding a member twice
    // (naming every leaf of a large community is not free).
    let adds = staged
        .queued_proposals()
        .any(|queued| matches!(queued.proposal(), Proposal::Add(_)));
    let mut existing = BTreeSet::new();
    if adds {
        for member in old.members() {
            existing.insert(identify_credential(
                validator,
                &member.credential,
                &member.signature_key,
            )?);
        }
    }

    let mut added = Vec::new();
    let mut removed = Vec::new();
    for queued in staged.queued_proposals() {
        match queued.proposal() {
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                let signature_key = leaf.signature_key().as_slice().to_vec();
                let id = validate_credential(validator, leaf.credential(), &signature_key)?;
                if existing.contains(&id) || added.iter().any(|a: &AddedMember| a.id == id) {
                    return Err(MlsError::AlreadyMember(id));
                }
                added.push(AddedMember {
                    id,
                    chain: credential_chain(leaf.credential())?,
                    signature_key,
                });
            }
            Proposal::Remove(remove) => {
                removed.push(removed_member(old, validator, remove.removed(), queued)?);
            }
            Proposal::GroupContextExtensions(_) => {}
            Proposal::Update(_) => {
                return Err(MlsError::Forbidden(
                    "a commit may not change another member's leaf (Update proposals are \
                     not used; a member updates its own leaf with its own commit)"
                        .into(),
                ));
            }
            other => {
                return Err(MlsError::Forbidden(format!(
                    "{:?} proposals are not used in Kring communities",
                    other.proposal_type()
                )));
            }
        }
    }

    if let Some(leaf) = staged.update_path_leaf_node() {
        let id = validate_credential(
            validator,
            leaf.credential(),
            leaf.signature_key().as_slice(),
        )?;
        if id != committer {
            return Err(MlsError::Forbidden(format!(
                "{committer} tried to change its identity to {id}"
            )));
        }
        // The certificate is admitted once, when the member is added (clearance,
        // home relay accreditation): an update path keeps it. A renewed
        // certificate enters the community by removal and re-adding.
        if leaf.credential() != committer_leaf.credential()
            || leaf.signature_key() != committer_leaf.signature_key()
        {
            return Err(MlsError::Forbidden(format!(
                "{committer} tried to replace its certificate in an update path; a new \
                 certificate needs removal and re-adding by an admin"
            )));
        }
    }
    let leaf_updated = staged.update_path_leaf_node().is_some();
    if staged.queued_proposals().next().is_none() && !leaf_updated {
        return Err(MlsError::Forbidden(
            "a commit without proposals must update the committer's leaf".into(),
        ));
    }

    let new_meta =
        check_context_transition(old.group_context(), staged.group_context(), validator)?;
    let summary = CommitSummary {
        epoch_before: old.group_context().epoch().as_u64(),
        epoch_after: staged.epoch().as_u64(),
        committer,
        added,
        removed,
        new_meta,
        leaf_updated,
    };
    if summary.requires_admin() && !old_meta.is_admin(&summary.committer) {
        return Err(MlsError::NotAdmin(summary.committer));
    }
    Ok(summary)
}

fn removed_member(
    old: &PublicGroup,
    validator: &impl CredentialValidator,
    index: LeafNodeIndex,
    queued: &QueuedProposal,
) -> Result<RemovedMember, MlsError> {
    let leaf = old
        .leaf(index)
        .ok_or_else(|| MlsError::NotMember(format!("leaf {}", index.u32())))?;
    let id = identify_credential(
        validator,
        leaf.credential(),
        leaf.signature_key().as_slice(),
    )?;
    Ok(RemovedMember {
        id,
        leaf_index: index.u32(),
        proposed_by_hub: matches!(queued.sender(), Sender::External(_)),
    })
}

/// Verifies a standalone proposal: Kring only uses Remove proposals from the hub
/// relay (the single external sender), whose credential must still be valid.
pub(crate) fn summarize_proposal(
    old: &PublicGroup,
    validator: &impl CredentialValidator,
    proposal: &QueuedProposal,
) -> Result<RemovalProposal, MlsError> {
    if !matches!(proposal.sender(), Sender::External(_)) {
        return Err(MlsError::Forbidden(
            "only the hub relay may send standalone proposals".into(),
        ));
    }
    let Proposal::Remove(remove) = proposal.proposal() else {
        return Err(MlsError::Forbidden(format!(
            "the hub may only propose removals, not {:?}",
            proposal.proposal().proposal_type()
        )));
    };
    // Re-validates the hub's credential (it may have been revoked).
    let checked = check_context(old.group_context(), validator)?;
    Ok(RemovalProposal {
        epoch: old.group_context().epoch().as_u64(),
        hub: checked.hub,
        removed: removed_member(old, validator, remove.removed(), proposal)?,
    })
}

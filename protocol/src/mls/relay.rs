//! Relay side: tracks a community's MLS group from its public messages only
//! ([`PublicGroup`]), without any group secrets.

use std::collections::BTreeSet;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ContentType, ExternalProposal, GroupContext, GroupId, LeafNodeIndex, MlsMessageBodyIn,
    MlsMessageIn, OpenMlsCrypto, ProcessedMessageContent, Proposal, ProposalStore, ProtocolMessage,
    PublicGroup, QueuedProposal, RatchetTreeIn, SenderExtensionIndex, StagedCommit,
};
use openmls::storage::PublicStorageProvider;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::context::{check_context, community_meta, external_sender_parts, group_name};
use super::credential::{identify_credential, validate_credential};
use super::summary::{CommitSummary, RemovalProposal, summarize_commit, summarize_proposal};
use super::{
    CertSigner, CommunityMeta, CredentialValidator, MAX_GROUP_STATE_BYTES, MAX_MESSAGE_BYTES,
    MemberId, MlsError, PAST_EPOCHS,
};

/// A member of a community as seen by a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's leaf index in the ratchet tree.
    pub leaf_index: u32,
    /// The member's identity (`NAME@RELAY`).
    pub id: MemberId,
    /// The member's MLS signature key (= certificate key).
    pub signature_key: Vec<u8>,
}

/// What a verified handshake message does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// A commit; merging it moves the group to the next epoch.
    Commit(CommitSummary),
    /// A removal proposal by the hub; merging it queues it for the next commit.
    RemovalProposal(RemovalProposal),
}

/// A handshake message that passed all MLS and Kring checks but is not applied yet.
///
/// Inspect [`summary`](Self::summary), apply policy (e.g. the label policy for each
/// added member), then [`RelayGroup::merge`] it or drop it to refuse.
#[derive(Debug)]
pub struct VerifiedHandshake {
    group_id: GroupId,
    epoch: u64,
    summary: Handshake,
    pending: Pending,
}

#[derive(Debug)]
enum Pending {
    Commit(Box<StagedCommit>),
    Proposal(Box<QueuedProposal>),
}

impl VerifiedHandshake {
    /// What the message does.
    pub fn summary(&self) -> &Handshake {
        &self.summary
    }

    /// The epoch the message was made for (the group's epoch when verified).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// What a relay can read of an application message without decrypting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationInfo {
    /// The epoch the message was encrypted in.
    pub epoch: u64,
    /// The authenticated data: Kring puts the notice's label bytes here.
    pub aad: Vec<u8>,
}

/// A relay's view of one community group: public state only, persisted through a
/// [`PublicStorageProvider`] after every change.
#[derive(Debug)]
pub struct RelayGroup {
    group: PublicGroup,
    /// Leaves the hub proposed to remove in the current epoch (mirrors the
    /// group's stored proposal queue); every commit must remove them.
    hub_removals: Vec<u32>,
}

impl RelayGroup {
    /// Starts tracking a group from a GroupInfo (an `MLSMessage`) and the ratchet
    /// tree (TLS-encoded), as uploaded by its creator
    /// ([`GroupUpload`](super::GroupUpload)) or exported by another relay.
    ///
    /// Verifies the GroupInfo signature and tree, the Kring group context (metadata,
    /// the hub as the single external sender) and every member's credential, then
    /// stores the state.
    ///
    /// # Errors
    /// [`MlsError::Forbidden`] if the group is already tracked in `storage`;
    /// [`MlsError::Malformed`], [`MlsError::Verification`],
    /// [`MlsError::InvalidMeta`], [`MlsError::InvalidCredential`],
    /// [`MlsError::Storage`].
    pub fn from_group_info<S: PublicStorageProvider>(
        crypto: &impl OpenMlsCrypto,
        storage: &S,
        validator: &impl CredentialValidator,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Self, MlsError> {
        MlsError::check_len("group info", group_info.len(), MAX_GROUP_STATE_BYTES)?;
        MlsError::check_len("ratchet tree", ratchet_tree.len(), MAX_GROUP_STATE_BYTES)?;
        let message = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| MlsError::malformed("group info", e))?;
        let MlsMessageBodyIn::GroupInfo(group_info) = message.extract() else {
            return Err(MlsError::malformed("group info", "not a GroupInfo message"));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
            .map_err(|e| MlsError::malformed("ratchet tree", e))?;
        // Cheap checks on the (not yet verified) context before touching storage.
        check_context(group_info.group_context(), validator)?;
        let group_id = group_info.group_id().clone();
        if PublicGroup::load(storage, &group_id)
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .is_some()
        {
            return Err(MlsError::Forbidden(format!(
                "group {} is already tracked",
                group_name(group_id.as_slice())
            )));
        }
        let (group, _) =
            PublicGroup::from_external(crypto, storage, tree, group_info, ProposalStore::new())
                .map_err(|e| MlsError::Verification(format!("group info: {e}")))?;
        let relay_group = Self {
            group,
            hub_removals: Vec::new(),
        };
        if let Err(e) = relay_group.check_state(validator) {
            PublicGroup::delete(storage, &group_id)
                .map_err(|e| MlsError::Storage(e.to_string()))?;
            return Err(e);
        }
        Ok(relay_group)
    }

    fn check_state(&self, validator: &impl CredentialValidator) -> Result<(), MlsError> {
        check_context(self.group.group_context(), validator)?;
        let mut ids = BTreeSet::new();
        for member in self.group.members() {
            let id = validate_credential(validator, &member.credential, &member.signature_key)?;
            if !ids.insert(id.clone()) {
                return Err(MlsError::AlreadyMember(id));
            }
        }
        Ok(())
    }

    /// Loads a tracked group from storage; `None` if it is not tracked.
    ///
    /// # Errors
    /// [`MlsError::Storage`].
    pub fn load<S: PublicStorageProvider>(
        storage: &S,
        community_id: &str,
    ) -> Result<Option<Self>, MlsError> {
        let group_id = GroupId::from_slice(community_id.as_bytes());
        let Some(group) =
            PublicGroup::load(storage, &group_id).map_err(|e| MlsError::Storage(e.to_string()))?
        else {
            return Ok(None);
        };
        let hub_removals = hub_removals(storage, &group)?;
        Ok(Some(Self {
            group,
            hub_removals,
        }))
    }

    /// The epoch of a tracked group as stored, without loading its ratchet tree;
    /// `None` if it is not tracked. Lets a caller that verified a handshake against
    /// a loaded group check cheaply that the stored group has not moved on since.
    ///
    /// # Errors
    /// [`MlsError::Storage`].
    pub fn stored_epoch<S: PublicStorageProvider>(
        storage: &S,
        community_id: &str,
    ) -> Result<Option<u64>, MlsError> {
        let group_id = GroupId::from_slice(community_id.as_bytes());
        let context: Option<GroupContext> = storage
            .group_context(&group_id)
            .map_err(|e| MlsError::Storage(e.to_string()))?;
        Ok(context.map(|c| c.epoch().as_u64()))
    }

    /// Forgets a tracked group.
    ///
    /// # Errors
    /// [`MlsError::Storage`].
    pub fn delete<S: PublicStorageProvider>(
        storage: &S,
        community_id: &str,
    ) -> Result<(), MlsError> {
        PublicGroup::delete(storage, &GroupId::from_slice(community_id.as_bytes()))
            .map_err(|e| MlsError::Storage(e.to_string()))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The community id (= group id).
    pub fn community_id(&self) -> String {
        group_name(self.group.group_id().as_slice())
    }

    /// The community metadata of the current epoch.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] (cannot happen for a state this type verified).
    pub fn meta(&self) -> Result<CommunityMeta, MlsError> {
        community_meta(self.group.group_context())
    }

    /// The members of the current epoch, named with
    /// [`CredentialValidator::identify`] (so revoked members are still listed; use
    /// [`invalid_members`](Self::invalid_members) to find them).
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if a credential cannot be read at all.
    pub fn members(
        &self,
        validator: &impl CredentialValidator,
    ) -> Result<Vec<GroupMember>, MlsError> {
        self.group
            .members()
            .map(|m| {
                Ok(GroupMember {
                    leaf_index: m.index.u32(),
                    id: identify_credential(validator, &m.credential, &m.signature_key)?,
                    signature_key: m.signature_key,
                })
            })
            .collect()
    }

    /// The tree hash of the current epoch. Equal tree hashes mean equal ratchet
    /// trees (same leaves with the same credentials), so a caller can key what it
    /// derived from the members (e.g. their ids) on it.
    pub fn tree_hash(&self) -> &[u8] {
        self.group.group_context().tree_hash()
    }

    /// The signature key of the member at `leaf_index`; `None` if that leaf is
    /// blank or outside the tree. Cheap: names nobody.
    pub fn leaf_signature_key(&self, leaf_index: u32) -> Option<&[u8]> {
        self.group
            .leaf(LeafNodeIndex::new(leaf_index))
            .map(|leaf| leaf.signature_key().as_slice())
    }

    /// The member at `leaf_index`, named as by [`members`](Self::members); `None` if
    /// that leaf is blank or outside the tree.
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if the credential cannot be read at all.
    pub fn member_at(
        &self,
        validator: &impl CredentialValidator,
        leaf_index: u32,
    ) -> Result<Option<GroupMember>, MlsError> {
        let Some(leaf) = self.group.leaf(LeafNodeIndex::new(leaf_index)) else {
            return Ok(None);
        };
        let signature_key = leaf.signature_key().as_slice();
        Ok(Some(GroupMember {
            leaf_index,
            id: identify_credential(validator, leaf.credential(), signature_key)?,
            signature_key: signature_key.to_vec(),
        }))
    }

    /// Members whose credential no longer passes [`CredentialValidator::validate`]
    /// (revoked, expired), with the reason; candidates for
    /// [`propose_remove`](Self::propose_remove).
    pub fn invalid_members(&self, validator: &impl CredentialValidator) -> Vec<(u32, String)> {
        self.group
            .members()
            .filter_map(|m| {
                validate_credential(validator, &m.credential, &m.signature_key)
                    .err()
                    .map(|e| (m.index.u32(), e.to_string()))
            })
            .collect()
    }

    /// The ratchet tree of the current epoch (TLS-encoded), for
    /// [`from_group_info`](Self::from_group_info) elsewhere or for joiners.
    ///
    /// # Errors
    /// [`MlsError::Internal`] if encoding fails.
    pub fn export_ratchet_tree(&self) -> Result<Vec<u8>, MlsError> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| MlsError::Internal(format!("ratchet tree encoding: {e}")))
    }

    /// Verifies a handshake message (a PublicMessage commit, or a removal proposal
    /// by the hub) against the current epoch, WITHOUT applying it.
    ///
    /// On success, apply policy to [`VerifiedHandshake::summary`] and call
    /// [`merge`](Self::merge). Exactly one commit can be merged per epoch: a commit
    /// made for another epoch fails with [`MlsError::WrongEpoch`] carrying the
    /// current epoch, and so does [`merge`](Self::merge) of a second commit verified
    /// in the same epoch.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::WrongGroup`],
    /// [`MlsError::WrongEpoch`], [`MlsError::Verification`],
    /// [`MlsError::Forbidden`] (PrivateMessage handshakes, external commits, member
    /// proposals, unsupported proposal types), [`MlsError::NotAdmin`],
    /// [`MlsError::InvalidCredential`], [`MlsError::AlreadyMember`],
    /// [`MlsError::NotMember`], [`MlsError::InvalidMeta`].
    pub fn process_handshake(
        &self,
        crypto: &impl OpenMlsCrypto,
        validator: &impl CredentialValidator,
        message: &[u8],
    ) -> Result<VerifiedHandshake, MlsError> {
        let message = parse_protocol_message(message)?;
        self.check_group(&message)?;
        let ProtocolMessage::PublicMessage(_) = &message else {
            return Err(MlsError::Forbidden(
                "handshake messages must be MLS PublicMessages".into(),
            ));
        };
        if message.content_type() == ContentType::Application {
            return Err(MlsError::Forbidden(
                "application messages must be MLS PrivateMessages".into(),
            ));
        }
        let current = self.epoch();
        let message_epoch = message.epoch().as_u64();
        if message_epoch != current {
            return Err(MlsError::WrongEpoch {
                current,
                message_epoch,
            });
        }
        let processed = self
            .group
            .process_message(crypto, message)
            .map_err(|e| MlsError::Verification(e.to_string()))?;
        let sender = processed.sender().clone();
        let credential = processed.credential().clone();
        let (summary, pending) = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let summary =
                    summarize_commit(&self.group, validator, &sender, &credential, &staged)?;
                self.check_hub_removals(validator, &summary)?;
                (Handshake::Commit(summary), Pending::Commit(staged))
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let summary = summarize_proposal(&self.group, validator, &proposal)?;
                (
                    Handshake::RemovalProposal(summary),
                    Pending::Proposal(proposal),
                )
            }
            _ => {
                return Err(MlsError::Forbidden(
                    "only commits and hub removal proposals are accepted".into(),
                ));
            }
        };
        Ok(VerifiedHandshake {
            group_id: self.group.group_id().clone(),
            epoch: current,
            summary,
            pending,
        })
    }

    /// Applies a verified handshake message and persists the new state: a commit
    /// moves to the next epoch; a removal proposal is queued for the next commit.
    ///
    /// # Errors
    /// [`MlsError::WrongEpoch`] if the group moved on since verification (another
    /// commit won the epoch); [`MlsError::WrongGroup`]; [`MlsError::Storage`].
    pub fn merge<S: PublicStorageProvider>(
        &mut self,
        storage: &S,
        verified: VerifiedHandshake,
    ) -> Result<(), MlsError> {
        if &verified.group_id != self.group.group_id() {
            return Err(MlsError::WrongGroup {
                expected: self.community_id(),
                got: group_name(verified.group_id.as_slice()),
            });
        }
        let current = self.epoch();
        if verified.epoch != current {
            return Err(MlsError::WrongEpoch {
                current,
                message_epoch: verified.epoch,
            });
        }
        match verified.pending {
            Pending::Commit(staged) => {
                self.group
                    .merge_commit(storage, *staged)
                    .map_err(|e| MlsError::Storage(e.to_string()))?;
                self.hub_removals.clear();
            }
            Pending::Proposal(proposal) => {
                let removed = match proposal.proposal() {
                    Proposal::Remove(remove) => Some(remove.removed().u32()),
                    _ => None,
                };
                self.group
                    .add_proposal(storage, *proposal)
                    .map_err(|e| MlsError::Storage(e.to_string()))?;
                self.hub_removals.extend(removed);
            }
        }
        Ok(())
    }

    /// The hub's removals pending in the current epoch, as leaf indices. Every
    /// commit of this epoch must include them.
    pub fn pending_hub_removals(&self) -> &[u32] {
        &self.hub_removals
    }

    /// Refuses a commit that does not remove every leaf the hub proposed to
    /// remove in this epoch: otherwise any member (the one to be removed first of
    /// all) could keep the epoch moving with self-updates and void the removals.
    fn check_hub_removals(
        &self,
        validator: &impl CredentialValidator,
        summary: &CommitSummary,
    ) -> Result<(), MlsError> {
        let missing: Vec<String> = self
            .hub_removals
            .iter()
            .filter(|leaf| !summary.removed.iter().any(|r| r.leaf_index == **leaf))
            .map(|leaf| match self.member_at(validator, *leaf) {
                Ok(Some(member)) => member.id,
                _ => format!("leaf {leaf}"),
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MlsError::UncommittedRemovals(missing.join(", ")))
        }
    }

    /// Reads the epoch and authenticated data (the label) of an application message
    /// without decrypting it.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::WrongGroup`],
    /// [`MlsError::Forbidden`] (not a PrivateMessage application message),
    /// [`MlsError::WrongEpoch`] (epoch in the future, or older than the
    /// [`PAST_EPOCHS`] members keep).
    pub fn read_application(&self, message: &[u8]) -> Result<ApplicationInfo, MlsError> {
        let message = parse_protocol_message(message)?;
        self.check_group(&message)?;
        let ProtocolMessage::PrivateMessage(private) = &message else {
            return Err(MlsError::Forbidden(
                "application messages must be MLS PrivateMessages".into(),
            ));
        };
        if private.content_type() != ContentType::Application {
            return Err(MlsError::Forbidden(
                "handshake messages must be MLS PublicMessages".into(),
            ));
        }
        let current = self.epoch();
        let message_epoch = private.epoch().as_u64();
        if message_epoch > current || current - message_epoch > PAST_EPOCHS as u64 {
            return Err(MlsError::WrongEpoch {
                current,
                message_epoch,
            });
        }
        Ok(ApplicationInfo {
            epoch: message_epoch,
            aad: private.aad().to_vec(),
        })
    }

    /// As the hub relay, proposes to remove `member` (e.g. after revocation or a
    /// policy change). The proposal is verified and queued in this group like any
    /// received one, and the returned PublicMessage must be delivered to the members;
    /// any member then commits it (`ClientGroup::commit_pending_proposals`).
    ///
    /// A proposal only lives for the current epoch: if another commit wins the
    /// epoch without covering it, propose again.
    ///
    /// # Errors
    /// [`MlsError::Forbidden`] if `hub` is not this group's external sender or the
    /// removal is already queued; [`MlsError::NotMember`]; [`MlsError::Crypto`];
    /// plus the errors of [`process_handshake`](Self::process_handshake) and
    /// [`merge`](Self::merge).
    pub fn propose_remove<S: PublicStorageProvider>(
        &mut self,
        crypto: &impl OpenMlsCrypto,
        storage: &S,
        validator: &impl CredentialValidator,
        hub: &CertSigner,
        member: &str,
    ) -> Result<Vec<u8>, MlsError> {
        let is_hub = self
            .group
            .group_context()
            .extensions()
            .external_senders()
            .and_then(|senders| senders.first())
            .map(external_sender_parts)
            .transpose()?
            .is_some_and(|(_, key)| key == hub.public_key());
        if !is_hub {
            return Err(MlsError::Forbidden(
                "only the community's hub relay may propose removals".into(),
            ));
        }
        let leaf = self
            .members(validator)?
            .into_iter()
            .find(|m| m.id == member)
            .ok_or_else(|| MlsError::NotMember(member.to_owned()))?;
        let queued = self
            .group
            .queued_proposals(storage)
            .map_err(|e| MlsError::Storage(e.to_string()))?;
        if queued.iter().any(|(_, q)| {
            matches!(q.proposal(), Proposal::Remove(r)
                if r.removed().u32() == leaf.leaf_index)
        }) {
            return Err(MlsError::Forbidden(format!(
                "removal of {member} is already proposed in this epoch"
            )));
        }
        let message = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf.leaf_index),
            self.group.group_id().clone(),
            self.group.group_context().epoch(),
            hub,
            SenderExtensionIndex::new(0),
        )
        .map_err(|e| MlsError::Crypto(e.to_string()))?
        .to_bytes()
        .map_err(|e| MlsError::Internal(e.to_string()))?;
        let verified = self.process_handshake(crypto, validator, &message)?;
        self.merge(storage, verified)?;
        Ok(message)
    }

    fn check_group(&self, message: &ProtocolMessage) -> Result<(), MlsError> {
        if message.group_id() != self.group.group_id() {
            return Err(MlsError::WrongGroup {
                expected: self.community_id(),
                got: group_name(message.group_id().as_slice()),
            });
        }
        Ok(())
    }
}

/// What anyone can read of an MLS PublicMessage or PrivateMessage without keys:
/// the group, the epoch and what kind of message it is. A relay compares it with
/// the envelope the message travels in ([`check_entry`]) before it trusts the
/// envelope's community, epoch or label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// The group id (Kring: the community id's UTF-8 bytes).
    pub group_id: Vec<u8>,
    /// The epoch the message was sent in.
    pub epoch: u64,
    /// What it is.
    pub kind: MessageKind,
}

/// The kind of message a [`MessageHeader`] describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    /// A commit (PublicMessage).
    Commit,
    /// A proposal (PublicMessage), in Kring only the hub's removals.
    Proposal,
    /// An application message (PrivateMessage) with its authenticated data, which
    /// in Kring is the notice's binary label.
    Application {
        /// The authenticated data.
        aad: Vec<u8>,
    },
    /// Anything Kring never sends: a handshake as a PrivateMessage or an
    /// application message as a PublicMessage.
    Other,
}

impl MessageHeader {
    /// Whether the message belongs to community `community`.
    pub fn is_for(&self, community: &str) -> bool {
        self.group_id == community.as_bytes()
    }

    /// The group id as text (lossy, shortened), for messages.
    pub fn group_name(&self) -> String {
        group_name(&self.group_id)
    }
}

/// Reads the [`MessageHeader`] of an `MLSMessage` without decrypting or verifying
/// anything.
///
/// # Errors
/// [`MlsError::TooLarge`], [`MlsError::Malformed`] (not a PublicMessage or
/// PrivateMessage).
pub fn read_header(message: &[u8]) -> Result<MessageHeader, MlsError> {
    let message = parse_protocol_message(message)?;
    let kind = match (&message, message.content_type()) {
        (ProtocolMessage::PublicMessage(_), ContentType::Commit) => MessageKind::Commit,
        (ProtocolMessage::PublicMessage(_), ContentType::Proposal) => MessageKind::Proposal,
        (ProtocolMessage::PrivateMessage(private), ContentType::Application) => {
            MessageKind::Application {
                aad: private.aad().to_vec(),
            }
        }
        _ => MessageKind::Other,
    };
    Ok(MessageHeader {
        group_id: message.group_id().as_slice().to_vec(),
        epoch: message.epoch().as_u64(),
        kind,
    })
}

/// Checks that a log entry's envelope says what its MLS message says: the
/// community is the message's group, a handshake is a PublicMessage commit or
/// proposal of the epoch the envelope names, a notice is a PrivateMessage
/// application message of the epoch the envelope names whose authenticated data
/// is the envelope's label. Returns the message's header.
///
/// # Errors
/// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::WrongGroup`],
/// [`MlsError::EnvelopeMismatch`].
pub fn check_entry(entry: &crate::wire::LogEntry) -> Result<MessageHeader, MlsError> {
    use crate::wire::EntryKind;
    let header = read_header(&entry.message)?;
    if !header.is_for(&entry.community) {
        return Err(MlsError::WrongGroup {
            expected: group_name(entry.community.as_bytes()),
            got: header.group_name(),
        });
    }
    let mismatch = |what: &str| MlsError::EnvelopeMismatch(what.to_owned());
    let epoch = match (&entry.kind, &header.kind) {
        (EntryKind::Handshake { epoch }, MessageKind::Commit | MessageKind::Proposal) => *epoch,
        (EntryKind::Notice { label, epoch, .. }, MessageKind::Application { aad }) => {
            if aad != label {
                return Err(mismatch(
                    "the label of the entry is not the authenticated data of its message",
                ));
            }
            *epoch
        }
        (EntryKind::Handshake { .. }, _) => {
            return Err(mismatch(
                "a handshake entry whose message is not a PublicMessage commit or proposal",
            ));
        }
        (EntryKind::Notice { .. }, _) => {
            return Err(mismatch(
                "a notice entry whose message is not a PrivateMessage application message",
            ));
        }
    };
    if epoch != header.epoch {
        return Err(MlsError::EnvelopeMismatch(format!(
            "the entry names epoch {epoch}, its message was sent in epoch {}",
            header.epoch
        )));
    }
    Ok(header)
}

/// The leaves the hub proposed to remove, from a group's stored proposal queue.
fn hub_removals<S: PublicStorageProvider>(
    storage: &S,
    group: &PublicGroup,
) -> Result<Vec<u32>, MlsError> {
    Ok(group
        .queued_proposals(storage)
        .map_err(|e| MlsError::Storage(e.to_string()))?
        .into_iter()
        .filter_map(|(_, q)| match q.proposal() {
            Proposal::Remove(remove) => Some(remove.removed().u32()),
            _ => None,
        })
        .collect())
}

/// Parses a bounded `MLSMessage` that must be a PublicMessage or PrivateMessage.
pub(crate) fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, MlsError> {
    MlsError::check_len("MLS message", bytes.len(), MAX_MESSAGE_BYTES)?;
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::malformed("MLS message", e))?
        .try_into_protocol_message()
        .map_err(|e| MlsError::malformed("MLS message", e))
}

//! Client side: a member's view of a community group ([`MlsGroup`]), with all group
//! secrets, persisted by openmls in the provider's storage.

use std::collections::BTreeSet;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    GroupId, MlsGroup, MlsMessageBodyIn, MlsMessageIn, ProcessMessageError,
    ProcessedMessageContent, Proposal, ProtocolMessage, RatchetTreeIn, Sender, StagedWelcome,
};
use openmls::storage::OpenMlsProvider;

use super::context::{
    check_context, community_meta, create_config, extensions_with_meta, group_name,
    initial_extensions, join_config,
};
use super::credential::{
    credential_chain, identify_credential, leaf_public_key, validate_credential, x509_credential,
};
use super::key_package::parse_key_package;
use super::padding;
use super::relay::{GroupMember, parse_protocol_message};
use super::summary::{CommitSummary, RemovalProposal, summarize_commit, summarize_proposal};
use super::{
    CertSigner, CommunityMeta, CredentialValidator, MAX_AAD_BYTES, MAX_BATCH_MEMBERS,
    MAX_GROUP_STATE_BYTES, MAX_MESSAGE_BYTES, MAX_PLAINTEXT_BYTES, MemberId, MlsError,
};

mod commits;

/// What the creator of a community uploads to the hub so it can track the group
/// ([`RelayGroup::from_group_info`](super::RelayGroup::from_group_info)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUpload {
    /// The signed GroupInfo, an `MLSMessage`.
    pub group_info: Vec<u8>,
    /// The ratchet tree, TLS-encoded.
    pub ratchet_tree: Vec<u8>,
}

/// A commit made by this client, pending until the hub accepts or refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutput {
    /// The commit (a PublicMessage `MLSMessage`) to send to the hub.
    pub commit: Vec<u8>,
    /// The Welcome (`MLSMessage`) for added members, if any; it carries the ratchet
    /// tree, so joiners need nothing else.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo (`MLSMessage`) of the new epoch, if one was made.
    pub group_info: Option<Vec<u8>>,
    /// What the commit does (already checked against the Kring rules locally).
    pub summary: CommitSummary,
}

/// The result of processing a message from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A decrypted application message (a notice).
    Application {
        /// The plaintext.
        plaintext: Vec<u8>,
        /// The authenticated data (the label bytes); re-check policy on it.
        aad: Vec<u8>,
        /// The validated sender.
        sender: MemberId,
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// One of this device's own application messages, echoed back; it cannot be
    /// decrypted by its sender (MLS deletes the keys), so skip it.
    OwnApplication {
        /// The epoch it was sent in.
        epoch: u64,
        /// Its authenticated data.
        aad: Vec<u8>,
    },
    /// A commit was verified and applied (also for this device's own commit echoed
    /// back while pending). If `summary.removed` names this device, the group is now
    /// inactive. Applying another member's commit discards this device's pending
    /// commit, if any (it lost the epoch).
    Commit(CommitSummary),
    /// A removal proposal by the hub, stored as pending. Call
    /// [`ClientGroup::commit_pending_proposals`] (any member may commit it).
    RemovalProposal(RemovalProposal),
    /// A handshake message for an epoch this group already left (e.g. its own
    /// commit echoed after `commit_accepted`); nothing was changed.
    Stale {
        /// The message's epoch.
        epoch: u64,
    },
}

/// A member's community group.
#[derive(Debug)]
pub struct ClientGroup {
    group: MlsGroup,
}

impl ClientGroup {
    /// Creates a community group with `signer` as its only member, `meta` in the
    /// group context and the hub relay (`hub_chain`, `hub_signature_key`) as external
    /// sender. The group id is the community id.
    ///
    /// Returns the group and what to upload to the hub.
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] (own or hub credential), [`MlsError::NotAdmin`]
    /// if the creator is not in `meta.admins`, [`MlsError::InvalidMeta`] if the hub
    /// credential does not name the community's hub, [`MlsError::Forbidden`] if the
    /// group already exists in storage, [`MlsError::Storage`], [`MlsError::Crypto`].
    pub fn create<P: OpenMlsProvider>(
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
        meta: &CommunityMeta,
        hub_chain: &[Vec<u8>],
        hub_signature_key: &[u8],
    ) -> Result<(Self, GroupUpload), MlsError> {
        let own = signer.credential_with_key()?;
        let own_id = validate_credential(validator, &own.credential, signer.public_key())?;
        if !meta.is_admin(&own_id) {
            return Err(MlsError::NotAdmin(own_id));
        }
        let hub_id =
            validate_credential(validator, &x509_credential(hub_chain)?, hub_signature_key)?;
        if hub_id != meta.hub() {
            return Err(MlsError::InvalidMeta(format!(
                "the hub of {} is {}, but the given hub credential is {hub_id}",
                meta.community_id,
                meta.hub()
            )));
        }
        let extensions = initial_extensions(meta, hub_chain, hub_signature_key)?;
        let group_id = GroupId::from_slice(meta.community_id.as_bytes());
        if MlsGroup::load(provider.storage(), &group_id)
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .is_some()
        {
            return Err(MlsError::Forbidden(format!(
                "community {} already exists on this device",
                meta.community_id
            )));
        }
        let group = MlsGroup::new_with_group_id(
            provider,
            signer,
            &create_config(extensions),
            group_id.clone(),
            own,
        )
        .map_err(|e| MlsError::Crypto(format!("group creation: {e}")))?;
        let mut group = group;
        if let Err(e) = check_context(group.public_group().group_context(), validator) {
            // Do not leave a group with a bad context behind.
            group
                .delete(provider.storage())
                .map_err(|e| MlsError::Storage(e.to_string()))?;
            return Err(e);
        }
        let client = Self { group };
        let upload = client.group_upload(provider, signer)?;
        Ok((client, upload))
    }

    /// Joins a community from a Welcome (`MLSMessage`). The ratchet tree is taken
    /// from the Welcome (Kring groups include it) unless given (TLS-encoded).
    ///
    /// Checks the group context (metadata, hub), that the adder is a community
    /// admin, and every member's credential before anything is stored.
    ///
    /// Note: openmls consumes the matching (non-last-resort) key package as soon as
    /// the Welcome is decrypted, even if a check fails afterwards.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::Verification`]
    /// (including "no matching key package"), [`MlsError::InvalidMeta`],
    /// [`MlsError::InvalidCredential`], [`MlsError::NotAdmin`] (added by a
    /// non-admin), [`MlsError::AlreadyMember`] (two leaves with one identity),
    /// [`MlsError::Storage`].
    pub fn join<P: OpenMlsProvider>(
        provider: &P,
        validator: &impl CredentialValidator,
        welcome: &[u8],
        ratchet_tree: Option<&[u8]>,
    ) -> Result<Self, MlsError> {
        MlsError::check_len("welcome", welcome.len(), MAX_GROUP_STATE_BYTES)?;
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| MlsError::malformed("welcome", e))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(MlsError::malformed("welcome", "not a Welcome message"));
        };
        let tree = ratchet_tree
            .map(|bytes| {
                MlsError::check_len("ratchet tree", bytes.len(), MAX_GROUP_STATE_BYTES)?;
                RatchetTreeIn::tls_deserialize_exact(bytes)
                    .map_err(|e| MlsError::malformed("ratchet tree", e))
            })
            .transpose()?;
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, tree)
            .map_err(|e| MlsError::Verification(format!("welcome: {e}")))?;
        let checked = check_context(staged.group_context(), validator)?;
        let adder = staged
            .welcome_sender()
            .map_err(|e| MlsError::Internal(e.to_string()))?;
        let adder = validate_credential(
            validator,
            adder.credential(),
            adder.signature_key().as_slice(),
        )?;
        if !checked.meta.is_admin(&adder) {
            return Err(MlsError::NotAdmin(adder));
        }
        let mut ids = BTreeSet::new();
        for member in staged.members() {
            let id = validate_credential(validator, &member.credential, &member.signature_key)?;
            if !ids.insert(id.clone()) {
                return Err(MlsError::AlreadyMember(id));
            }
        }
        let group = staged
            .into_group(provider)
            .map_err(|e| MlsError::Verification(format!("welcome: {e}")))?;
        Ok(Self { group })
    }

    /// Loads a community group from the provider's storage; `None` if this device
    /// has none.
    ///
    /// # Errors
    /// [`MlsError::Storage`].
    pub fn load<P: OpenMlsProvider>(
        provider: &P,
        community_id: &str,
    ) -> Result<Option<Self>, MlsError> {
        let group_id = GroupId::from_slice(community_id.as_bytes());
        Ok(MlsGroup::load(provider.storage(), &group_id)
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .map(|group| Self { group }))
    }

    /// The underlying openmls group (read-only), for anything not covered here.
    pub fn mls_group(&self) -> &MlsGroup {
        &self.group
    }

    /// The community id (= group id).
    pub fn community_id(&self) -> String {
        group_name(self.group.group_id().as_slice())
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// False once this device has been removed from the community.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// True while a commit of this device awaits the hub's verdict.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// True if removal proposals are pending (sending is blocked until committed).
    pub fn has_pending_proposals(&self) -> bool {
        self.group.has_pending_proposals()
    }

    /// The community metadata of the current epoch.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] (cannot happen for a verified group).
    pub fn meta(&self) -> Result<CommunityMeta, MlsError> {
        community_meta(self.group.public_group().group_context())
    }

    /// The members of the current epoch (named with
    /// [`CredentialValidator::identify`]).
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

    /// Each member's current leaf encryption key (the HPKE public key others encrypt
    /// path secrets to), by member id; it changes whenever the member's leaf is
    /// updated.
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if a credential cannot be read at all.
    pub fn leaf_keys(
        &self,
        validator: &impl CredentialValidator,
    ) -> Result<Vec<(MemberId, Vec<u8>)>, MlsError> {
        self.group
            .members()
            .map(|m| {
                Ok((
                    identify_credential(validator, &m.credential, &m.signature_key)?,
                    m.encryption_key,
                ))
            })
            .collect()
    }

    /// Each member's leaf certificate (DER), by member id, for showing members'
    /// organisations and clearances.
    ///
    /// # Errors
    /// [`MlsError::InvalidCredential`] if a credential cannot be read at all.
    pub fn member_certificates(
        &self,
        validator: &impl CredentialValidator,
    ) -> Result<Vec<(MemberId, Vec<u8>)>, MlsError> {
        self.group
            .members()
            .map(|m| {
                let id = identify_credential(validator, &m.credential, &m.signature_key)?;
                let leaf = credential_chain(&m.credential)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| MlsError::InvalidCredential("empty certificate chain".into()))?;
                Ok((id, leaf))
            })
            .collect()
    }

    /// This device's own current leaf encryption key; `None` once removed.
    pub fn own_leaf_key(&self) -> Option<Vec<u8>> {
        if !self.group.is_active() {
            return None;
        }
        let own = self.group.own_leaf_index();
        self.group
            .members()
            .find(|m| m.index == own)
            .map(|m| m.encryption_key)
    }

    /// The underlying openmls group, mutable (tests that forge messages).
    #[cfg(test)]
    pub(crate) fn mls_group_mut(&mut self) -> &mut MlsGroup {
        &mut self.group
    }

    /// A GroupInfo and ratchet tree of the current epoch, for a relay that starts
    /// tracking the group.
    ///
    /// # Errors
    /// [`MlsError::Crypto`], [`MlsError::Internal`].
    pub fn group_upload<P: OpenMlsProvider>(
        &self,
        provider: &P,
        signer: &CertSigner,
    ) -> Result<GroupUpload, MlsError> {
        let group_info = self
            .group
            .export_group_info(provider.crypto(), signer, false)
            .map_err(|e| MlsError::Crypto(format!("group info: {e}")))?
            .to_bytes()
            .map_err(|e| MlsError::Internal(e.to_string()))?;
        let ratchet_tree = self
            .group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| MlsError::Internal(e.to_string()))?;
        Ok(GroupUpload {
            group_info,
            ratchet_tree,
        })
    }

    /// Encrypts an application message (PrivateMessage) with `aad` — the notice's
    /// label bytes — as authenticated data: relays read it in the clear, and any
    /// change makes decryption fail at every recipient. The plaintext is padded so
    /// that the ciphertext is exactly the size of its bucket
    /// ([`padding_bucket`](super::padding_bucket)): relays and links learn the size
    /// class, not the length.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::PendingProposals`] (commit them first),
    /// [`MlsError::Evicted`], [`MlsError::Crypto`].
    pub fn encrypt<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        MlsError::check_len("authenticated data", aad.len(), MAX_AAD_BYTES)?;
        MlsError::check_len("plaintext", plaintext.len(), MAX_PLAINTEXT_BYTES)?;
        if !self.group.is_active() {
            return Err(MlsError::Evicted);
        }
        if self.group.has_pending_proposals() {
            return Err(MlsError::PendingProposals);
        }
        let padded = padding::pad(plaintext)?;
        self.group.set_aad(aad.to_vec());
        let result = self.group.create_message(provider, signer, &padded);
        self.group.set_aad(Vec::new());
        let message = result.map_err(|e| MlsError::Crypto(format!("encryption: {e}")))?;
        let bytes = message
            .to_bytes()
            .map_err(|e| MlsError::Internal(e.to_string()))?;
        MlsError::check_len("MLS message", bytes.len(), MAX_MESSAGE_BYTES)?;
        Ok(bytes)
    }

    /// Processes a message from the hub, in hub order: decrypts application
    /// messages, applies commits (after checking the Kring rules), stores hub
    /// removal proposals.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`], [`MlsError::Malformed`], [`MlsError::WrongGroup`],
    /// [`MlsError::WrongEpoch`] (a future epoch: commits were missed),
    /// [`MlsError::Evicted`], [`MlsError::Verification`] (bad signature, altered
    /// aad, keys of that epoch gone), [`MlsError::Forbidden`],
    /// [`MlsError::NotAdmin`], [`MlsError::InvalidCredential`], …
    pub fn process<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        validator: &impl CredentialValidator,
        message: &[u8],
    ) -> Result<Received, MlsError> {
        let message = parse_protocol_message(message)?;
        if message.group_id() != self.group.group_id() {
            return Err(MlsError::WrongGroup {
                expected: self.community_id(),
                got: group_name(message.group_id().as_slice()),
            });
        }
        if !self.group.is_active() {
            return Err(MlsError::Evicted);
        }
        let current = self.epoch();
        let message_epoch = message.epoch().as_u64();
        let is_public = matches!(message, ProtocolMessage::PublicMessage(_));
        if message.is_handshake_message() {
            if !is_public {
                return Err(MlsError::Forbidden(
                    "handshake messages must be MLS PublicMessages".into(),
                ));
            }
            if message_epoch < current {
                return Ok(Received::Stale {
                    epoch: message_epoch,
                });
            }
        } else if is_public {
            return Err(MlsError::Forbidden(
                "application messages must be MLS PrivateMessages".into(),
            ));
        }
        if message_epoch > current {
            return Err(MlsError::WrongEpoch {
                current,
                message_epoch,
            });
        }
        let processed = self
            .group
            .process_message(provider, message)
            .map_err(process_error)?;
        let sender = processed.sender().clone();
        let credential = processed.credential().clone();
        let aad = processed.aad().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(application) => {
                let Sender::Member(index) = sender else {
                    return Err(MlsError::Forbidden("external application message".into()));
                };
                // The leaf may be gone (message from a past epoch); the credential
                // was validated (leaf key == certificate key) when it entered.
                let key = match self.group.member_at(index) {
                    Some(m) if m.credential == credential => m.signature_key,
                    _ => {
                        let chain = credential_chain(&credential)?;
                        leaf_public_key(chain.first().map_or(&[][..], Vec::as_slice))?
                    }
                };
                let sender = validate_credential(validator, &credential, &key)?;
                let plaintext = application.into_bytes();
                Ok(Received::Application {
                    plaintext: padding::unpad(&plaintext)?.to_vec(),
                    aad,
                    sender,
                    epoch: message_epoch,
                })
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Received::OwnApplication {
                epoch: message_epoch,
                aad,
            }),
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let summary = summarize_proposal(self.group.public_group(), validator, &proposal)?;
                self.group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(|e| MlsError::Storage(e.to_string()))?;
                Ok(Received::RemovalProposal(summary))
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let summary = summarize_commit(
                    self.group.public_group(),
                    validator,
                    &sender,
                    &credential,
                    &staged,
                )?;
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| MlsError::Storage(e.to_string()))?;
                Ok(Received::Commit(summary))
            }
            ProcessedMessageContent::OwnPendingCommit => {
                let summary = self.pending_summary(validator)?;
                self.commit_accepted(provider)?;
                Ok(Received::Commit(summary))
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(MlsError::Forbidden(
                "external join proposals are not used in Kring communities".into(),
            )),
            #[allow(unreachable_patterns)]
            _ => Err(MlsError::Forbidden(
                "unsupported MLS message content".into(),
            )),
        }
    }
}

fn process_error<E: std::fmt::Display>(error: ProcessMessageError<E>) -> MlsError {
    match error {
        ProcessMessageError::GroupStateError(
            openmls::prelude::MlsGroupStateError::UseAfterEviction,
        ) => MlsError::Evicted,
        ProcessMessageError::StorageError(e) => MlsError::Storage(e.to_string()),
        ProcessMessageError::LibraryError(e) => MlsError::Internal(e.to_string()),
        other => MlsError::Verification(other.to_string()),
    }
}

//! A member's commits: adding and removing members, changing admins, committing
//! pending proposals, updating its own leaf, and settling a commit the hub took or
//! refused.

use openmls::prelude::{CommitMessageBundle, LeafNodeIndex, MlsMessageOut, Sender};
use openmls::storage::OpenMlsProvider;

use super::*;

impl ClientGroup {
    /// As a community admin, adds the owners of `key_packages` (`MLSMessage`s).
    /// Pending hub removals are committed along.
    ///
    /// # Errors
    /// [`MlsError::NotAdmin`], [`MlsError::AlreadyMember`], [`MlsError::TooLarge`]
    /// (more than [`MAX_BATCH_MEMBERS`]), key package errors (see
    /// [`verify_key_package`](crate::mls::verify_key_package)), [`MlsError::PendingCommit`], [`MlsError::Evicted`],
    /// [`MlsError::Verification`].
    pub fn add_members<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
        key_packages: &[Vec<u8>],
    ) -> Result<CommitOutput, MlsError> {
        self.check_can_commit()?;
        MlsError::check_len("key package list", key_packages.len(), MAX_BATCH_MEMBERS)?;
        if key_packages.is_empty() {
            return Err(MlsError::malformed("key package list", "empty"));
        }
        let parsed = key_packages
            .iter()
            .map(|kp| parse_key_package(provider.crypto(), validator, kp).map(|(kp, _)| kp))
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = self
            .group
            .commit_builder()
            .propose_adds(parsed)
            .load_psks(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .stage_commit(provider)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?;
        self.finish_commit(provider, validator, bundle)
    }

    /// As a community admin, removes `members` (member ids). Pending hub removals
    /// are committed along.
    ///
    /// # Errors
    /// [`MlsError::NotMember`], [`MlsError::Forbidden`] (removing oneself),
    /// [`MlsError::NotAdmin`], [`MlsError::PendingCommit`], [`MlsError::Evicted`],
    /// [`MlsError::Verification`].
    pub fn remove_members<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
        members: &[MemberId],
    ) -> Result<CommitOutput, MlsError> {
        self.check_can_commit()?;
        MlsError::check_len("member list", members.len(), MAX_BATCH_MEMBERS)?;
        if members.is_empty() {
            return Err(MlsError::malformed("member list", "empty"));
        }
        let current = self.members(validator)?;
        let own = self.group.own_leaf_index().u32();
        let mut leaves = Vec::new();
        for member in members {
            let leaf = current
                .iter()
                .find(|m| &m.id == member)
                .ok_or_else(|| MlsError::NotMember(member.clone()))?;
            if leaf.leaf_index == own {
                return Err(MlsError::Forbidden(
                    "a member cannot remove itself with a commit".into(),
                ));
            }
            leaves.push(LeafNodeIndex::new(leaf.leaf_index));
        }
        let bundle = self
            .group
            .commit_builder()
            .propose_removals(leaves)
            .load_psks(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .stage_commit(provider)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?;
        self.finish_commit(provider, validator, bundle)
    }

    /// As a community admin, replaces the admin list (each must be a member) with a
    /// GroupContextExtensions commit.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`], [`MlsError::NotMember`], [`MlsError::NotAdmin`],
    /// [`MlsError::PendingCommit`], [`MlsError::Evicted`], [`MlsError::Verification`].
    pub fn set_admins<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
        admins: Vec<MemberId>,
    ) -> Result<CommitOutput, MlsError> {
        self.check_can_commit()?;
        let meta = self.meta()?.with_admins(admins)?;
        let members = self.members(validator)?;
        if let Some(missing) = meta
            .admins
            .iter()
            .find(|a| !members.iter().any(|m| &m.id == *a))
        {
            return Err(MlsError::NotMember(missing.clone()));
        }
        let extensions = extensions_with_meta(self.group.extensions(), &meta)?;
        let bundle = self
            .group
            .commit_builder()
            .propose_group_context_extensions(extensions)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .load_psks(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .stage_commit(provider)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?;
        self.finish_commit(provider, validator, bundle)
    }

    /// Commits the pending removal proposals of the hub (any member may). Returns
    /// `None` if there is nothing this device can commit (no proposals, or only its
    /// own removal, which another member must commit).
    ///
    /// # Errors
    /// [`MlsError::PendingCommit`], [`MlsError::Evicted`], [`MlsError::Verification`].
    pub fn commit_pending_proposals<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
    ) -> Result<Option<CommitOutput>, MlsError> {
        self.check_can_commit()?;
        let own = self.group.own_leaf_index();
        let removes_self = |p: &Proposal| matches!(p, Proposal::Remove(r) if r.removed() == own);
        if !self
            .group
            .pending_proposals()
            .any(|q| !removes_self(q.proposal()))
        {
            return Ok(None);
        }
        let bundle = self
            .group
            .commit_builder()
            .consume_proposal_store(true)
            .load_psks(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .build(provider.rand(), provider.crypto(), signer, |q| {
                !removes_self(q.proposal())
            })
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .stage_commit(provider)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?;
        self.finish_commit(provider, validator, bundle).map(Some)
    }

    /// Updates this device's own leaf: a commit with an update path and no
    /// proposals, which any member may make. It replaces the leaf's HPKE key and
    /// every key on the leaf's path to the root, so that whoever copied this
    /// device's keys before cannot read what is sent after it (post-compromise
    /// security). Pending hub removals are not included: commit them with
    /// [`commit_pending_proposals`](Self::commit_pending_proposals), which updates
    /// the leaf as well.
    ///
    /// # Errors
    /// [`MlsError::PendingProposals`], [`MlsError::PendingCommit`],
    /// [`MlsError::Evicted`], [`MlsError::InvalidCredential`] (this device's own
    /// certificate no longer valid), [`MlsError::Verification`].
    pub fn self_update<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        signer: &CertSigner,
        validator: &impl CredentialValidator,
    ) -> Result<CommitOutput, MlsError> {
        self.check_can_commit()?;
        if self.group.has_pending_proposals() {
            return Err(MlsError::PendingProposals);
        }
        let bundle = self
            .group
            .commit_builder()
            .consume_proposal_store(false)
            .force_self_update(true)
            .load_psks(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))?
            .build(provider.rand(), provider.crypto(), signer, |_| false)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?
            .stage_commit(provider)
            .map_err(|e| MlsError::Verification(format!("commit: {e}")))?;
        self.finish_commit(provider, validator, bundle)
    }

    /// The hub accepted this device's pending commit: apply it.
    ///
    /// # Errors
    /// [`MlsError::NoPendingCommit`], [`MlsError::Storage`].
    pub fn commit_accepted<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), MlsError> {
        if self.group.pending_commit().is_none() {
            return Err(MlsError::NoPendingCommit);
        }
        self.group
            .merge_pending_commit(provider)
            .map_err(|e| MlsError::Storage(e.to_string()))
    }

    /// The hub refused this device's pending commit (e.g. another commit won the
    /// epoch): discard it. Process the winning commit, then rebuild and resend.
    ///
    /// # Errors
    /// [`MlsError::NoPendingCommit`], [`MlsError::Storage`].
    pub fn commit_refused<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), MlsError> {
        if self.group.pending_commit().is_none() {
            return Err(MlsError::NoPendingCommit);
        }
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(|e| MlsError::Storage(e.to_string()))
    }

    pub(super) fn check_can_commit(&self) -> Result<(), MlsError> {
        if !self.group.is_active() {
            return Err(MlsError::Evicted);
        }
        if self.group.pending_commit().is_some() {
            return Err(MlsError::PendingCommit);
        }
        Ok(())
    }

    pub(super) fn pending_summary(
        &self,
        validator: &impl CredentialValidator,
    ) -> Result<CommitSummary, MlsError> {
        let staged = self
            .group
            .pending_commit()
            .ok_or(MlsError::NoPendingCommit)?;
        let credential = self.group.credential().map_err(|_| MlsError::Evicted)?;
        summarize_commit(
            self.group.public_group(),
            validator,
            &Sender::Member(self.group.own_leaf_index()),
            credential,
            staged,
        )
    }

    /// Checks the freshly staged own commit against the Kring rules (so that a
    /// commit the hub would refuse is never sent) and serialises it.
    pub(super) fn finish_commit<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        validator: &impl CredentialValidator,
        bundle: CommitMessageBundle,
    ) -> Result<CommitOutput, MlsError> {
        let summary = match self.pending_summary(validator) {
            Ok(summary) => summary,
            Err(e) => {
                self.commit_refused(provider)?;
                return Err(e);
            }
        };
        let (commit, welcome, group_info) = bundle.into_messages();
        let encode = |m: MlsMessageOut| m.to_bytes().map_err(|e| MlsError::Internal(e.to_string()));
        Ok(CommitOutput {
            commit: encode(commit)?,
            welcome: welcome.map(encode).transpose()?,
            group_info: group_info.map(encode).transpose()?,
            summary,
        })
    }
}

//! MLS glue for Kring communities (RFC 9420 via openmls 0.9).
//!
//! One MLS group per community; the group id is the community id (`NAME@HUB`, its
//! UTF-8 bytes). Ciphersuite [`CIPHERSUITE`] (X25519, AES-128-GCM, Ed25519).
//!
//! * **Credentials** are `x509` credentials holding the member's certificate chain
//!   ([`x509_credential`], [`credential_chain`]); the MLS signature key *is* the
//!   certificate's Ed25519 key ([`CertSigner`]). Every credential this module accepts
//!   goes through a [`CredentialValidator`] supplied by the caller.
//! * **Community metadata** ([`CommunityMeta`]: id, maximum label, admins, update
//!   period) lives in a custom group-context extension ([`KRING_EXTENSION_TYPE`],
//!   required of every member). Only the admin list can change, by a commit of an
//!   admin.
//! * **The hub relay** is the group's single external sender, so it can propose
//!   removals ([`RelayGroup::propose_remove`]); any member commits them
//!   ([`ClientGroup::commit_pending_proposals`]).
//! * **Handshakes** (commits, proposals) are PublicMessages so every relay can verify
//!   them with a [`RelayGroup`] (openmls `PublicGroup`, no secrets); **application
//!   messages** are PrivateMessages whose authenticated data carries the notice's
//!   label bytes, readable by relays ([`RelayGroup::read_application`]) and bound
//!   to the ciphertext.
//! * **Kring rules**, checked by relays and clients alike: only members commit (no
//!   external commits); commits carry only Add, Remove and GroupContextExtensions
//!   proposals (a leaf changes only by its owner's update path); only community
//!   admins add, remove (except hub-proposed removals) or change the metadata; any
//!   member may update its own leaf ([`ClientGroup::self_update`]); nobody changes
//!   identity; one leaf per member id; the only standalone proposals are hub
//!   removals.
//! * **Sizes**: application plaintexts are padded so that ciphertexts fall in size
//!   buckets ([`padding_bucket`]).
//!
//! Everything is generic over the openmls provider / storage, so the same code runs
//! on the in-memory provider in tests and on the KV-backed storage of
//! [`mls_storage`](crate::mls_storage).
//!
//! # Usage sketch
//!
//! ```ignore
//! use kring_protocol::mls::*;
//!
//! // Client (creator, a community admin).
//! let me = CertSigner::from_pkcs8(my_chain, &my_pkcs8_key)?;
//! let meta = CommunityMeta::new("desinformatie@bz", max_label_bytes, vec!["admin@bz".into()])?;
//! let (mut group, upload) =
//!     ClientGroup::create(&provider, &me, &validator, &meta, &hub_chain, &hub_key)?;
//! // -> send `upload.group_info` + `upload.ratchet_tree` to the hub.
//!
//! // Hub relay: start tracking.
//! let mut relay = RelayGroup::from_group_info(
//!     relay_provider.crypto(), relay_provider.storage(), &validator,
//!     &upload.group_info, &upload.ratchet_tree)?;
//!
//! // Members publish key packages; relays check them when published.
//! let kp = key_package(&their_provider, &them, /* last_resort */ false)?;
//! let info = verify_key_package(relay_provider.crypto(), &validator, &kp)?;
//!
//! // Admin adds members; the hub verifies, applies policy, then merges or refuses.
//! let out = group.add_members(&provider, &me, &validator, &[kp])?;
//! match relay.process_handshake(relay_provider.crypto(), &validator, &out.commit) {
//!     Ok(verified) => {
//!         // policy: label check for each `Handshake::Commit(s) => s.added`
//!         relay.merge(relay_provider.storage(), verified)?;       // accept
//!         group.commit_accepted(&provider)?;                      // at the client
//!         // deliver `out.welcome` to the added members, `out.commit` to the rest
//!     }
//!     Err(MlsError::WrongEpoch { current, .. }) => {
//!         group.commit_refused(&provider)?;  // process the newer commits, retry
//!     }
//!     Err(refused) => { group.commit_refused(&provider)?; /* report `refused` */ }
//! }
//!
//! // New member joins (the Welcome carries the ratchet tree).
//! let mut theirs = ClientGroup::join(&their_provider, &validator, &welcome, None)?;
//!
//! // Notices: the label bytes are the authenticated data.
//! let ct = theirs.encrypt(&their_provider, &them, &label_bytes, &notice_bytes)?;
//! let ApplicationInfo { epoch, aad } = relay.read_application(&ct)?; // no decryption
//! match group.process(&provider, &validator, &ct)? {
//!     Received::Application { plaintext, aad, sender, epoch } => { /* re-check policy */ }
//!     Received::RemovalProposal(_) => group.commit_pending_proposals(&provider, &me, &validator)?.map(|out| /* send */ out),
//!     Received::Commit(summary) => { /* membership/admins changed */ }
//!     Received::OwnApplication { .. } | Received::Stale { .. } => {}
//! }
//!
//! // Hub removes a member (e.g. after revocation): deliver the proposal to members.
//! let proposal = relay.propose_remove(relay_provider.crypto(), relay_provider.storage(),
//!                                     &validator, &hub_signer, "analist@post-a")?;
//! ```

mod client;
mod context;
mod credential;
mod error;
mod key_package;
mod meta;
mod padding;
mod relay;
mod summary;
#[cfg(test)]
mod tests;

pub use client::{ClientGroup, CommitOutput, GroupUpload, Received};
pub use context::community_meta;
pub use credential::{
    CertSigner, CredentialError, CredentialValidator, DeviceSigner, credential_chain,
    leaf_key_matches, leaf_public_key, x509_credential,
};
pub use error::MlsError;
pub use key_package::{KeyPackageInfo, key_package, verify_key_package};
pub use meta::{
    CommunityMeta, DAY_SECS, DEFAULT_UPDATE_DAYS, KRING_EXTENSION_TYPE, MAX_RETENTION_DAYS,
    MAX_UPDATE_DAYS,
};
pub use padding::bucket as padding_bucket;
pub use relay::{
    ApplicationInfo, GroupMember, Handshake, MessageHeader, MessageKind, RelayGroup,
    VerifiedHandshake, check_entry, read_header,
};
pub use summary::{AddedMember, CommitSummary, RemovalProposal, RemovedMember};

use openmls::prelude::Ciphersuite;

/// A member identity: `NAME@RELAY` for users (e.g. `analist@post-a`), the relay id
/// for relays (e.g. `bz`).
pub type MemberId = String;

/// The one ciphersuite Kring uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Past epochs whose keys members keep, so notices in flight during a membership
/// change stay readable; relays refuse application messages older than this.
pub const PAST_EPOCHS: usize = 5;

/// Largest MLS message (commit, proposal, application message) accepted.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Largest application plaintext accepted for encryption.
pub const MAX_PLAINTEXT_BYTES: usize = 3 << 20;
/// Largest authenticated data (label bytes) accepted.
pub const MAX_AAD_BYTES: usize = MAX_LABEL_BYTES;
/// Largest Welcome, GroupInfo or ratchet tree accepted.
pub const MAX_GROUP_STATE_BYTES: usize = 8 << 20;
/// Largest key package accepted.
pub const MAX_KEY_PACKAGE_BYTES: usize = 64 << 10;
/// Most members added or removed by one commit.
pub const MAX_BATCH_MEMBERS: usize = 100;
/// Most certificates in a credential's chain.
pub const MAX_CHAIN_CERTS: usize = 8;
/// Largest certificate accepted in a chain.
pub const MAX_CERT_BYTES: usize = 16 << 10;
/// Longest community or member id.
pub const MAX_ID_BYTES: usize = 255;
/// Longest (binary) maximum label in the community metadata.
pub const MAX_LABEL_BYTES: usize = 4096;
/// Most admins of a community.
pub const MAX_ADMINS: usize = 256;

/// A short fingerprint of a leaf encryption key for people to compare: the first 8
/// bytes of its SHA-256, in lower-case hex (16 characters). It changes whenever the
/// member's leaf is updated.
pub fn leaf_key_fingerprint(key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

//! Persistent storage for openmls group state, without I/O.
//!
//! openmls keeps every piece of group state (ratchet tree, epoch secrets, key
//! packages, queued proposals, …) in a storage provider implementing
//! [`openmls_traits::storage::StorageProvider`]. This module provides that provider
//! on top of any byte-oriented key-value store:
//!
//! * [`KvBackend`] — the small, sans-IO trait a store must implement (`get`,
//!   `insert`, `remove` and an atomic batch `apply`). Clients and relays implement
//!   it on a `sled::Tree` in their own crates; [`MemoryKv`] is an in-memory
//!   implementation for tests.
//! * [`KvStorage`] — the openmls storage provider over a [`KvBackend`]. It mirrors
//!   the semantics of `openmls_memory_storage` (including list-valued entries such
//!   as the proposal queue and the own leaf nodes) and, through the blanket impl in
//!   `openmls_traits`, also implements
//!   [`PublicStorageProvider`](openmls_traits::public_storage::PublicStorageProvider)
//!   for relays that only track a `PublicGroup`.
//! * [`KringProvider`] — an [`OpenMlsProvider`](openmls_traits::OpenMlsProvider)
//!   combining [`KvStorage`] with the `RustCrypto` crypto and randomness provider.
//!
//! # Storage layout
//!
//! Every entry is stored under the key
//!
//! ```text
//! LABEL || 0x00 || VERSION (u16, big endian) || JSON(openmls key)
//! ```
//!
//! where `LABEL` is an ASCII name of the kind of entry (for example `Tree` or
//! `QueuedProposal`), so that entries of different kinds or storage versions can
//! never collide. Keys are small, so their JSON costs nothing worth saving.
//!
//! Every value is stored as
//!
//! ```text
//! 0xC1 || MessagePack(openmls value)
//! ```
//!
//! MessagePack is self-describing, as openmls requires so that its stored types
//! can evolve; structs are written as maps keyed by field name, list-valued
//! entries as arrays, and every sequence of `u8` (keys, signatures, credentials:
//! openmls's `Vec<u8>`s) as one MessagePack byte string (`bin`), so a ratchet
//! tree takes little more than its raw bytes (JSON spent about 3.6 characters per
//! byte, written and parsed one number at a time). Sequences of numbers
//! are still read too. `0xC1` is a byte MessagePack never uses and no JSON text
//! starts with: values without it are the JSON that earlier versions wrote, still
//! read and rewritten in MessagePack when next stored.
//!
//! The stored values include private keys and epoch secrets in the clear:
//! protecting the store at rest (file permissions, disk encryption) is the
//! backend owner's responsibility.

mod backend;
mod compact;
mod error;
mod provider;
mod storage;

pub use backend::{KvBackend, KvBatch, MemoryKv, MemoryKvError};
pub use error::MlsStorageError;
pub use provider::KringProvider;
pub use storage::{KvStorage, MAX_KEY_LEN, MAX_LIST_LEN, MAX_VALUE_LEN};

#[cfg(test)]
mod mls_tests;

//! The client ↔ relay wire protocol (ALPN [`ALPN_CLIENT`]).
//!
//! # Transport
//! A client opens one QUIC connection (mutual TLS 1.3) to its home relay. Every request
//! travels on its own bidirectional stream: the client writes one [`Request`] frame and
//! finishes the stream; the relay answers with one [`Response`] frame. A
//! [`Request::Subscribe`] stream stays open instead: the relay writes a [`Push`] frame
//! for every log entry and welcome the device has not acknowledged yet, catch-up first,
//! then live.
//!
//! # Frames
//! A frame is a big-endian `u32` length followed by that many payload bytes; the payload
//! is a [`postcard`] encoding of a [`Versioned`] message. Decoding is strict: a length
//! above the configured maximum ([`DEFAULT_MAX_FRAME`] unless configured) is refused
//! before any allocation, trailing bytes after a message are refused, and every string
//! and list is checked against the bounds in [`limits`] by [`Validate`].
//!
//! This module does no I/O; [`FrameDecoder`] is a push-based decoder the async layers
//! (and the fuzz targets) feed with bytes.

/// ALPN protocol id for client ↔ relay connections.
pub const ALPN_CLIENT: &[u8] = b"kring/1";
/// ALPN protocol id for relay ↔ relay (federation) connections.
pub const ALPN_FEDERATION: &[u8] = b"kring-fed/1";
/// Version carried in every message; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Default maximum frame payload: 8 MiB. A Welcome into a community of N members
/// carries its ratchet tree (about 1 KiB per member), and an MLS message may be up
/// to `mls::MAX_MESSAGE_BYTES`; relays read a frame as it arrives, never allocating
/// what a header merely claims.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;

/// Bounds on individual fields, checked by [`Validate`] after decoding.
pub mod limits {
    /// Longest identity string (`NAME@RELAY`) or community id (`NAME@HUB`).
    pub const MAX_ID: usize = 128;
    /// Most key packages in one publish request.
    pub const MAX_KEY_PACKAGES_PER_PUBLISH: usize = 100;
    /// Longest free-text reason (refusals, revocation reasons).
    pub const MAX_REASON: usize = 1024;
    /// Most entries returned in one page.
    pub const MAX_PAGE: u32 = 1000;
    /// Most items in any listing.
    pub const MAX_LIST: usize = 10_000;
    /// Entries in one [`FedResponse::Log`](super::FedResponse::Log) page.
    pub const MAX_LOG_PAGE: usize = 256;
    /// Most notices in one [`Request::FileNotices`](super::Request::FileNotices).
    pub const MAX_NOTICES_PER_FILING: usize = 256;
    /// Most revocation statements in one [`TrustState`](super::TrustState).
    pub const MAX_STATEMENTS: usize = 4096;
    /// Most organisations a relay's organisation declares as its clients.
    pub const MAX_CLIENTS: usize = 256;
}

mod client;
mod error;
mod federation;
mod frame;
mod validate;

pub use client::*;
pub use error::*;
pub use federation::*;
pub use frame::*;
pub use validate::{
    MAX_HOP, Validate, bounded_reason, check_clients, check_name, check_qualified_id,
};

/// Opaque bytes (MLS messages, key packages, certificates).
pub type Bytes = Vec<u8>;

#[cfg(test)]
mod tests;

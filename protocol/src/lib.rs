//! Kring's shared, I/O-free core: the wire protocol between clients and relays
//! ([`wire`]), identities read from X.509 certificates ([`identity`]), and the MLS
//! glue both clients and relays use ([`mls`], [`mls_storage`]).
//!
//! Nothing in this crate touches sockets, files or clocks: callers pass the current
//! time and bytes in, and get decisions and bytes out.
#![forbid(unsafe_code)]

pub mod attachment;
pub mod audit;
pub mod close;
pub mod identity;
pub mod keyfile;
pub mod mls;
pub mod mls_storage;
pub mod notice_aad;
pub mod revocation;
pub mod validator;
pub mod wire;

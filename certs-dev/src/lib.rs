//! `kring-certs-dev`: the development PKI of Kring (SPEC §2, §8).
//!
//! * [`Pki`] mints a federation root CA, organisation CAs, and relay and user
//!   certificates (Ed25519) following the Kring certificate profile of
//!   [`kring_protocol::identity`], plus deliberately unusual certificates
//!   ([`Quirk`]) for tests, and CRLs ([`Authority::crl`]).
//! * [`init_demo`] writes the demo federation (`kring-certs-dev init`);
//!   [`issue_user_into`] adds a user (`kring-certs-dev issue-user`).
//!
//! This is a development tool: every CA key of the federation lies in one
//! directory. Do not use it for production PKI.
#![forbid(unsafe_code)]

mod error;
mod federation;
mod pki;

pub use error::CertsError;
pub use federation::{
    DEFAULT_BASE_PORT, DEMO_RELAYS, DEMO_USERS, InitSummary, IssueUserRequest, LISTEN_HOST,
    RelayEntry, UserEntry, init_demo, issue_user_into, org_dir, relay_dir, root_cert_path,
    user_dir,
};
pub use pki::{
    Authority, DAY, HOUR, IssuedCert, ORG_CA_DAYS, Pki, Quirk, RELAY_DAYS, ROOT_DAYS,
    ROOT_ORGANISATION, RelaySpec, USER_DAYS, UserSpec, Validity,
};

#[cfg(test)]
mod tests;

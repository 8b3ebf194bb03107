//! `kring-certs-dev`: the development PKI of Kring (SPEC §2, §8).
//!
//! * [`Pki`] mints a federation root CA, organisation CAs, and relay and user
//!   certificates (Ed25519) following the Kring certificate profile of
//!   [`kring_protocol::identity`], plus deliberately unusual certificates
//!   ([`Quirk`]) for tests, and CRLs ([`Authority::crl`]).
//! * [`init_demo`] writes the demo federation (`kring-certs-dev init`);
//!   [`issue_user_into`] adds a user (`kring-certs-dev issue-user`);
//!   [`revoke_user_certificate`] adds a user's certificate to its organisation's
//!   CRL (`kring-certs-dev revoke-cert`).
//!
//! This is a development tool: every CA key of the federation lies in one
//! directory. Do not use it for production PKI.
#![forbid(unsafe_code)]

mod error;
mod federation;
mod pki;
mod revoke;

pub use error::CertsError;
pub use federation::{
    CRL_DAYS, CRL_FILE, DEFAULT_BASE_PORT, DEMO_RELAYS, DEMO_USERS, InitSummary, IssueUserRequest,
    LISTEN_HOST, RelayEntry, UserEntry, crl_path, init_demo, issue_user_into, org_dir, relay_dir,
    root_cert_path, user_dir,
};
pub use pki::{
    Authority, CrlEntry, DAY, HOUR, IssuedCert, ORG_CA_DAYS, Pki, Quirk, RELAY_DAYS, ROOT_DAYS,
    ROOT_ORGANISATION, RelaySpec, SignedCrl, USER_DAYS, UserSpec, Validity,
};
pub use revoke::{
    CRL_LOG_FILE, RevokedEntry, revoke_user_certificate, revoke_user_certificate_with_reason,
};

#[cfg(test)]
mod tests;

//! `kring-certs-dev`: the development PKI of Kring.
//!
//! * [`Pki`] mints a federation root CA, organisation CAs, and relay and user
//!   certificates (Ed25519) following the Kring certificate profile of
//!   [`kring_protocol::identity`], plus deliberately unusual certificates
//!   ([`Quirk`]) for tests, and CRLs ([`Authority::crl`]).
//! * [`init_demo`] writes the demo federation (`kring-certs-dev init`);
//!   [`issue_user_into`] adds a user (`kring-certs-dev issue-user`);
//!   [`sign_csr_into`] certifies a key a user generated on their device
//!   (`kring-certs-dev sign-csr`, for `kring enroll`), [`clearance_der`] encodes
//!   the clearance extension for an OpenSSL CA (`kring-certs-dev clearance-der`);
//!   [`revoke_user_certificate`] adds a user's certificate to its organisation's
//!   CRL (`kring-certs-dev revoke-cert`).
//!
//! Every private key it writes is PKCS#8 v1 (RFC 5208), which OpenSSL reads.
//!
//! This is a development tool: every CA key of the federation lies in one
//! directory. Do not use it for production PKI.
#![forbid(unsafe_code)]

mod csr;
mod error;
mod federation;
mod pki;
mod revoke;
pub mod token;

pub use csr::{
    CertifiedUser, CsrRequest, MAX_CSR_BYTES, SignCsrRequest, clearance_der, read_csr,
    read_csr_file, sign_csr_into,
};
pub use error::CertsError;
pub use federation::{
    CRL_DAYS, CRL_FILE, DEFAULT_BASE_PORT, DEMO_RELAYS, DEMO_USERS, InitSummary, IssueUserRequest,
    LISTEN_HOST, PASSPHRASE_FILE, RelayEntry, UserEntry, crl_path, init_demo, issue_user_into,
    org_dir, relay_dir, root_cert_path, user_dir,
};
pub use pki::{
    Authority, CrlEntry, DAY, ED25519_PKCS8_V1_PREFIX, HOUR, IssuedCert, ORG_CA_DAYS, Pki, Quirk,
    RELAY_DAYS, ROOT_DAYS, ROOT_ORGANISATION, RelaySpec, SignedCrl, USER_DAYS, UserSpec, Validity,
    ed25519_pkcs8_v1,
};
pub use revoke::{
    CRL_LOG_FILE, RevokedEntry, revoke_user_certificate, revoke_user_certificate_with_reason,
};

#[cfg(test)]
mod tests;

//! MLS messages a relay parses from clients and peers: published key packages
//! (verified before storing) and application messages (notices) whose group, epoch
//! and authenticated data (the binary label) the relay reads without decrypting.
//!
//! The credential validator accepts any credential so that the fuzzer reaches the
//! code behind it; certificate parsing is covered by `identity_der`.
#![no_main]

use kring_policy::Label;
use kring_protocol::mls::{CredentialValidator, MemberId, verify_key_package};
use kring_relay::groups::read_application;
use libfuzzer_sys::fuzz_target;
use openmls_rust_crypto::RustCrypto;

/// Accepts every credential (as `fuzz@fuzz`).
struct AcceptAll;

impl CredentialValidator for AcceptAll {
    fn validate(&self, _chain: &[Vec<u8>], _signature_key: &[u8]) -> Result<MemberId, String> {
        Ok("fuzz@fuzz".to_owned())
    }
}

fuzz_target!(|data: &[u8]| {
    let crypto = RustCrypto::default();
    let _ = verify_key_package(&crypto, &AcceptAll, data);
    if let Ok(app) = read_application(data) {
        // Relays decode the label from the authenticated data of every notice.
        let _ = Label::from_bytes(&app.aad);
    }
});

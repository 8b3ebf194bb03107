//! The bodies of the Kring fuzz targets, one function per target. Each takes the
//! fuzzer's input and panics if a decoder misbehaves (a panic of its own, or a broken
//! round-trip property); decoders refusing the input is the normal outcome.
//!
//! `../fuzz_targets/*.rs` (cargo-fuzz, libFuzzer + sanitizers) and `fuzz-smoke` (a
//! plain seeded mutation driver for CI) both call these functions.
#![forbid(unsafe_code)]

use std::str::FromStr;

use kring_policy::{Clearance, Label};
use kring_protocol::identity::{
    Identity, decode_subject_directory_attributes, encode_subject_directory_attributes,
};
use kring_protocol::mls::{
    CredentialError, CredentialValidator, MemberId, RelayGroup, read_header, verify_key_package,
};
use kring_protocol::wire::{
    DEFAULT_MAX_FRAME, FRAME_HEADER, FedRequest, FedResponse, FrameDecoder, Push, Request,
    Response, Validate, WireError, check_name, decode_payload, encode_frame,
};
use kring_relay::config::RelayToml;
use kring_relay::groups::read_application;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use openmls_traits::OpenMlsProvider;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fuzz target: its name (the directory under `seeds/`, `corpus/`, `artifacts/`)
/// and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 7] = [
    ("wire_frames", wire_frames),
    ("label_text", label_text),
    ("label_binary", label_binary),
    ("identity_der", identity_der),
    ("relay_config", relay_config),
    ("mls_message", mls_message),
    ("commit_verify", commit_verify),
];

// ---------------------------------------------------------------- wire_frames

/// The frame cap of this harness (smaller than the relay default to keep runs fast).
const MAX_FRAME: usize = 64 * 1024;

/// Decodes `payload` as `T`; on success re-encodes it and checks that it decodes to
/// the same value.
fn round_trip<T>(payload: &[u8])
where
    T: DeserializeOwned + Serialize + Validate + PartialEq + std::fmt::Debug,
{
    let Ok(msg) = decode_payload::<T>(payload) else {
        return;
    };
    let frame = match encode_frame(&msg, DEFAULT_MAX_FRAME) {
        Ok(frame) => frame,
        // Canonicalisation (e.g. `TLP:GREEN` → `NL:ONGERUBRICEERD;TLP=GREEN`) may grow
        // a message; only a size refusal is acceptable here.
        Err(WireError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded message failed to re-encode: {e}; message {msg:?}"),
    };
    let again = decode_payload::<T>(&frame[FRAME_HEADER..])
        .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}; message {msg:?}"));
    assert_eq!(again, msg, "message changed in an encode/decode round trip");
}

fn round_trip_all(payload: &[u8]) {
    round_trip::<Request>(payload);
    round_trip::<Response>(payload);
    round_trip::<Push>(payload);
    round_trip::<FedRequest>(payload);
    round_trip::<FedResponse>(payload);
}

/// Protocol frames: the bytes a relay or client reads from a QUIC stream.
///
/// The input is split into chunks (size from the first byte) and fed to a
/// [`FrameDecoder`] capped at 64 KiB, as the network layer does; every complete
/// payload is decoded as each message type. The whole input is also decoded
/// directly as a payload. Any message that decodes must survive an encode/decode
/// round trip unchanged (and still pass validation).
pub fn wire_frames(data: &[u8]) {
    round_trip_all(data);

    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    for piece in stream.chunks(chunk) {
        if decoder.feed(piece).is_err() {
            return;
        }
        loop {
            match decoder.next_payload() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX_FRAME, "payload above the frame cap");
                    round_trip_all(&payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

// ---------------------------------------------------------------- labels

/// Label and clearance text (`POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`), as typed
/// by users and carried in configs and JSON.
///
/// Whatever parses must display canonically and round-trip exactly: parsing the
/// display gives the same value and the same text, and the binary encoding of the
/// value decodes back to it.
pub fn label_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    if let Ok(label) = Label::from_str(&text) {
        let shown = label.to_string();
        let again = Label::from_str(&shown)
            .unwrap_or_else(|e| panic!("canonical label {shown:?} does not parse: {e}"));
        assert_eq!(again, label, "label changed in a display/parse round trip");
        assert_eq!(again.to_string(), shown, "label display is not canonical");
        let bytes = label.to_bytes();
        let decoded = Label::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("label {shown:?} encoding does not decode: {e}"));
        assert_eq!(decoded, label, "label changed in a binary round trip");
    }

    if let Ok(clearance) = Clearance::from_str(&text) {
        let shown = clearance.to_string();
        let again = Clearance::from_str(&shown)
            .unwrap_or_else(|e| panic!("canonical clearance {shown:?} does not parse: {e}"));
        assert_eq!(
            again, clearance,
            "clearance changed in a display/parse round trip"
        );
        assert_eq!(
            again.to_string(),
            shown,
            "clearance display is not canonical"
        );
        let bytes = clearance.to_bytes();
        let decoded = Clearance::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("clearance {shown:?} encoding does not decode: {e}"));
        assert_eq!(
            decoded, clearance,
            "clearance changed in a binary round trip"
        );
    }
}

/// The binary label/clearance encoding: bound to ciphertext as MLS authenticated
/// data, so relays decode it from every notice they route.
///
/// The encoding is canonical: whatever decodes must re-encode to exactly the input,
/// and its text form must parse back to the same value.
pub fn label_binary(data: &[u8]) {
    if let Ok(label) = Label::from_bytes(data) {
        assert_eq!(label.to_bytes(), data, "label encoding is not canonical");
        let shown = label.to_string();
        let parsed = Label::from_str(&shown)
            .unwrap_or_else(|e| panic!("decoded label {shown:?} does not parse as text: {e}"));
        assert_eq!(parsed, label, "label changed in a text round trip");
    }
    if let Ok(clearance) = Clearance::from_bytes(data) {
        assert_eq!(
            clearance.to_bytes(),
            data,
            "clearance encoding is not canonical"
        );
        let shown = clearance.to_string();
        let parsed = Clearance::from_str(&shown)
            .unwrap_or_else(|e| panic!("decoded clearance {shown:?} does not parse as text: {e}"));
        assert_eq!(parsed, clearance, "clearance changed in a text round trip");
    }
    // A notice's authenticated data: a label, or a forward's two labels.
    if let Ok(aad) = kring_protocol::notice_aad::NoticeAad::from_bytes(data) {
        assert_eq!(
            aad.to_bytes(),
            data,
            "notice authenticated data is not canonical"
        );
    }
}

// ---------------------------------------------------------------- identities

/// Certificates and their RFC 5755 attributes: every peer presents a certificate
/// chain (TLS and MLS credentials), read before anything else is trusted.
///
/// The input is read both as a whole certificate and as the value of a
/// subjectDirectoryAttributes extension. Attributes that decode must re-encode and
/// decode to the same value.
pub fn identity_der(data: &[u8]) {
    if let Ok(identity) = Identity::from_der(data) {
        let id = identity.id();
        assert!(
            !id.is_empty(),
            "an accepted certificate has an empty identity"
        );
    }

    if let Ok(attrs) = decode_subject_directory_attributes(data) {
        let encoded = encode_subject_directory_attributes(attrs.clearance.as_ref(), &attrs.roles)
            .unwrap_or_else(|e| panic!("decoded attributes do not re-encode: {e}; {attrs:?}"));
        match encoded {
            // Only unknown attributes: nothing Kring carries.
            None => assert!(attrs.clearance.is_none() && attrs.roles.is_empty()),
            Some(bytes) => {
                let again = decode_subject_directory_attributes(&bytes).unwrap_or_else(|e| {
                    panic!("re-encoded attributes do not decode: {e}; {attrs:?}")
                });
                assert_eq!(again, attrs, "attributes changed in a round trip");
            }
        }
    }
}

// ---------------------------------------------------------------- relay config

/// The relay configuration file (`relay.toml`): the TOML → `RelayToml` step of
/// `RelayConfig::load` and its file-independent checks (ids, accreditation text).
/// `load` itself reads certificate and key files, which are fuzzed elsewhere.
pub fn relay_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(raw) = toml::from_str::<RelayToml>(&text) else {
        return;
    };
    let _ = check_name("id", &raw.id);
    if let Some(a) = &raw.accreditation {
        let _ = a.parse::<Clearance>();
    }
    for peer in &raw.peers {
        let _ = check_name("peers.id", &peer.id);
        if let Some(a) = &peer.accreditation {
            let _ = a.parse::<Clearance>();
        }
    }
}

// ---------------------------------------------------------------- MLS

/// Accepts every credential (as `fuzz@fuzz`), so that the fuzzer reaches the code
/// behind credential validation; certificate parsing is `identity_der`'s.
struct AcceptAll;

impl CredentialValidator for AcceptAll {
    fn validate(
        &self,
        _chain: &[Vec<u8>],
        _signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        Ok("fuzz@fuzz".to_owned())
    }
}

/// MLS messages a relay parses from clients and peers: published key packages
/// (verified before storing) and application messages (notices) whose group, epoch
/// and authenticated data (the binary label) the relay reads without decrypting.
pub fn mls_message(data: &[u8]) {
    let crypto = RustCrypto::default();
    let _ = verify_key_package(&crypto, &AcceptAll, data);
    if let Ok(app) = read_application(data) {
        // Relays decode the label from the authenticated data of every notice.
        let _ = kring_protocol::notice_aad::NoticeAad::from_bytes(&app.aad);
    }
}

// ---------------------------------------------------------------- commit_verify

/// The community a hub tracks while it verifies the fuzzed commits: created by
/// `admin@bz` with hub `bz` (written by `kring-fuzz-seedgen` next to the seeds, which
/// are commits and proposals made in it).
const HUB_GROUP_INFO: &[u8] = include_bytes!("../fixtures/commit_verify/group-info");
const HUB_RATCHET_TREE: &[u8] = include_bytes!("../fixtures/commit_verify/ratchet-tree");

/// Names a credential by its leaf certificate, as relays do (chain and revocation
/// checks are not what this target exercises).
struct ByCertificate;

impl CredentialValidator for ByCertificate {
    fn validate(
        &self,
        chain: &[Vec<u8>],
        _signature_key: &[u8],
    ) -> Result<MemberId, CredentialError> {
        let leaf = chain.first().ok_or(CredentialError::EmptyChain)?;
        Identity::from_der(leaf)
            .map(|i| i.id())
            .map_err(CredentialError::Unreadable)
    }
}

thread_local! {
    static HUB: RelayGroup = {
        let provider = OpenMlsRustCrypto::default();
        RelayGroup::from_group_info(
            provider.crypto(),
            provider.storage(),
            &ByCertificate,
            HUB_GROUP_INFO,
            HUB_RATCHET_TREE,
        )
        .unwrap_or_else(|e| panic!("the commit_verify fixture does not load: {e}"))
    };
}

/// Handshake messages (commits and proposals) a hub verifies before ordering them:
/// the header a relay reads without keys, then the full verification against the
/// community's public group (signatures, membership and admin rules, credentials).
/// Whatever verifies must name the group's next epoch.
pub fn commit_verify(data: &[u8]) {
    let _ = read_header(data);
    let crypto = RustCrypto::default();
    HUB.with(|hub| {
        if let Ok(verified) = hub.process_handshake(&crypto, &ByCertificate, data) {
            assert_eq!(
                verified.epoch(),
                hub.epoch(),
                "a verified handshake is not for the current epoch"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seed verifies against the fixture: the target reaches the
    /// whole verification, not only the parser.
    #[test]
    fn the_add_commit_seed_verifies() {
        let seed = include_bytes!("../../seeds/commit_verify/add-commit");
        let crypto = RustCrypto::default();
        HUB.with(|hub| {
            let verified = hub
                .process_handshake(&crypto, &ByCertificate, seed)
                .unwrap_or_else(|e| panic!("seed does not verify: {e}"));
            assert_eq!(verified.epoch(), 0);
        });
    }
}

//! Certificates and their RFC 5755 attributes: every peer presents a certificate
//! chain (TLS and MLS credentials), read before anything else is trusted.
//!
//! The input is read both as a whole certificate and as the value of a
//! subjectDirectoryAttributes extension. Attributes that decode must re-encode and
//! decode to the same value.
#![no_main]

use kring_protocol::identity::{
    Identity, decode_subject_directory_attributes, encode_subject_directory_attributes,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = Identity::from_der(data) {
        let id = identity.id();
        assert!(!id.is_empty(), "an accepted certificate has an empty identity");
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
});

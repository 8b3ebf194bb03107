//! Certificates and their RFC 5755 attributes: every peer presents a certificate
//! chain (TLS and MLS credentials), read before anything else is trusted.
//!
//! The input is read both as a whole certificate and as the value of a
//! subjectDirectoryAttributes extension. Attributes that decode must re-encode and
//! decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::identity_der(data));

//! Handshake messages (commits and proposals) a hub verifies before ordering them,
//! against a fixed community's public group: header, signatures, membership and
//! admin rules, credentials.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::commit_verify(data));

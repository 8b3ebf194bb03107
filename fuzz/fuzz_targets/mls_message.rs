//! MLS messages a relay parses from clients and peers: published key packages
//! (verified before storing) and application messages (notices) whose group, epoch
//! and authenticated data (the binary label) the relay reads without decrypting.
//!
//! The credential validator accepts any credential so that the fuzzer reaches the
//! code behind it; certificate parsing is covered by `identity_der`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::mls_message(data));

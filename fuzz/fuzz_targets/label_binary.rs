//! The binary label/clearance encoding: bound to ciphertext as MLS authenticated
//! data, so relays decode it from every notice they route.
//!
//! The encoding is canonical: whatever decodes must re-encode to exactly the input,
//! and its text form must parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::label_binary(data));

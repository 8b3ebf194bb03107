//! The binary label/clearance encoding: bound to ciphertext as MLS authenticated
//! data, so relays decode it from every notice they route.
//!
//! The encoding is canonical: whatever decodes must re-encode to exactly the input,
//! and its text form must parse back to the same value.
#![no_main]

use std::str::FromStr;

use kring_policy::{Clearance, Label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(label) = Label::from_bytes(data) {
        assert_eq!(label.to_bytes(), data, "label encoding is not canonical");
        let shown = label.to_string();
        let parsed = Label::from_str(&shown)
            .unwrap_or_else(|e| panic!("decoded label {shown:?} does not parse as text: {e}"));
        assert_eq!(parsed, label, "label changed in a text round trip");
    }
    if let Ok(clearance) = Clearance::from_bytes(data) {
        assert_eq!(clearance.to_bytes(), data, "clearance encoding is not canonical");
        let shown = clearance.to_string();
        let parsed = Clearance::from_str(&shown).unwrap_or_else(|e| {
            panic!("decoded clearance {shown:?} does not parse as text: {e}")
        });
        assert_eq!(parsed, clearance, "clearance changed in a text round trip");
    }
});

//! Label and clearance text (`POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`), as typed
//! by users and carried in configs and JSON.
//!
//! Whatever parses must display canonically and round-trip exactly: parsing the
//! display gives the same value and the same text, and the binary encoding of the
//! value decodes back to it.
#![no_main]

use std::str::FromStr;

use kring_policy::{Clearance, Label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
        assert_eq!(again, clearance, "clearance changed in a display/parse round trip");
        assert_eq!(again.to_string(), shown, "clearance display is not canonical");
        let bytes = clearance.to_bytes();
        let decoded = Clearance::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("clearance {shown:?} encoding does not decode: {e}"));
        assert_eq!(decoded, clearance, "clearance changed in a binary round trip");
    }
});

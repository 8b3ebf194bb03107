//! Label and clearance text (`POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`), as typed
//! by users and carried in configs and JSON.
//!
//! Whatever parses must display canonically and round-trip exactly: parsing the
//! display gives the same value and the same text, and the binary encoding of the
//! value decodes back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::label_text(data));

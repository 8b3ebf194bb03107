//! The relay configuration file (`relay.toml`): the TOML → `RelayToml` step of
//! `RelayConfig::load` and its file-independent checks (ids, accreditation text).
//! `load` itself reads certificate and key files, which are fuzzed elsewhere.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::relay_config(data));

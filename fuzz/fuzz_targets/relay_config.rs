//! The relay configuration file (`relay.toml`): the TOML → `RelayToml` step of
//! `RelayConfig::load` and its file-independent checks (ids, accreditation text).
//! `load` itself reads certificate and key files, which are fuzzed elsewhere.
#![no_main]

use kring_policy::Clearance;
use kring_protocol::wire::check_name;
use kring_relay::config::RelayToml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});

//! `kring-demo`: the whole Kring story on a local federation.
//!
//! `kring-demo relay --config FILE` runs a relay (the demo and the tests start relays
//! as separate processes of this binary).
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "relay") {
        let relay_args = std::iter::once("kring-relay".into()).chain(args.into_iter().skip(2));
        return kring_relay::cli::main_from(relay_args);
    }
    kring_tests::demo::main()
}

//! `kring`: the Kring command line (see `kring --help` and SPEC §7).
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(kring_client::cli::main());
}

//! `kring`: the Kring command line (see `kring --help` and README.md).
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(kring_client::cli::main());
}

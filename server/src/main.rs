//! `kring-relay`: see [`kring_relay::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    kring_relay::cli::main()
}

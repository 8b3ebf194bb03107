//! The `kring-relay` command line (also embedded in `kring-demo`, which starts relays
//! as separate processes of itself).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::RelayConfig;
use clap::{Parser, Subcommand};

/// A Kring relay: store-and-forward of end-to-end encrypted, labelled notices.
#[derive(Debug, Parser)]
#[command(name = "kring-relay", version)]
struct Cli {
    /// The relay's configuration file (relay.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration (files, certificate, key, accreditation) and exit.
    CheckConfig,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain offline (the relay must be stopped).
    Verify {
        /// The relay's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

/// Runs the command line with the process arguments.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs the command line with `args` (the first is the program name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRING_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Some(Command::Audit {
            command: AuditCommand::Verify { data },
        }) => audit_verify(&data),
        Some(Command::CheckConfig) => {
            let Some(path) = cli.config else {
                eprintln!("kring-relay: check-config needs --config FILE");
                return ExitCode::from(2);
            };
            match RelayConfig::load(&path) {
                Ok(c) => {
                    println!(
                        "configuration OK: relay {} ({}), accreditation {}, listening on {}, {} peer(s)",
                        c.identity.name,
                        c.identity.organisation,
                        c.accreditation,
                        c.listen,
                        c.peers.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kring-relay: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => {
            let Some(path) = cli.config else {
                eprintln!("kring-relay: give --config FILE (see kring-relay --help)");
                return ExitCode::from(2);
            };
            run(&path)
        }
    }
}

fn audit_verify(data: &std::path::Path) -> ExitCode {
    let engine = match crate::store::SledEngine::open(data) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(1);
        }
    };
    match crate::audit::verify_signed(&engine) {
        Ok(Ok(s)) => {
            println!(
                "audit log intact: {} records, {} signed checkpoint(s) verified, {} record(s) after the last one",
                s.records, s.checkpoints, s.unsigned_tail
            );
            ExitCode::SUCCESS
        }
        Ok(Err(b)) => {
            println!("audit log BROKEN at {b}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("kring-relay: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match RelayConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kring-relay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let running = match crate::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("kring-relay: {e}");
                return ExitCode::from(1);
            }
        };
        // Tests and the demo read this line to learn the bound address.
        println!("kring-relay listening on {}", running.local_addr);
        wait_for_signal().await;
        tracing::info!("signal received; stopping");
        match running.stop().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kring-relay: {e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

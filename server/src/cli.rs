//! The `kring-relay` command line (also embedded in `kring-demo`, which starts relays
//! as separate processes of itself).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::RelayConfig;
use clap::{Parser, Subcommand, ValueEnum};

/// A Kring relay: store-and-forward of end-to-end encrypted, labelled notices.
#[derive(Debug, Parser)]
#[command(name = "kring-relay", version)]
struct Cli {
    /// The relay's configuration file (relay.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// How log lines on stderr look: `text` for people (colours only on a
    /// terminal), `json` for log shippers (one JSON object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "KRING_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The format of the relay's log on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; ANSI colours only when stderr is a terminal and
    /// `NO_COLOR` is not set.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with
    /// `message`), and `span`/`spans` when inside spans.
    Json,
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
pub fn ansi_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process's log subscriber: stderr, level from `KRING_LOG` (default
/// `info`), in `format`.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KRING_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(ansi_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
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
    /// Check the audit log offline (the relay must be stopped): the hash chain, every
    /// checkpoint signature, and every certificate the relay signed with (chained to
    /// the trust anchors of `--config`, the relay's own). Exit 3 if broken.
    Verify {
        /// The relay's data directory (default: `data_dir` of `--config`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Also check the log against a signed head exported earlier with
        /// `kring admin audit --head` (a cut or rewritten tail is then detected).
        #[arg(long, value_name = "HEAD_FILE")]
        against: Option<PathBuf>,
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
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Audit {
            command: AuditCommand::Verify { data, against },
        }) => {
            let Some(path) = cli.config else {
                eprintln!(
                    "kring-relay: audit verify needs --config FILE (the relay's id and trust anchors)"
                );
                return ExitCode::from(2);
            };
            audit_verify(&path, data.as_deref(), against.as_deref())
        }
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

fn audit_verify(
    config: &std::path::Path,
    data: Option<&std::path::Path>,
    against: Option<&std::path::Path>,
) -> ExitCode {
    let config = match RelayConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let head = match against.map(read_head).transpose() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match crate::store::SledEngine::open(data.unwrap_or(&config.data_dir)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(1);
        }
    };
    let anchors: Vec<Vec<u8>> = config.anchors.iter().map(|a| a.to_vec()).collect();
    let expected = crate::audit::Expected {
        relay: &config.identity.name,
        organisation: Some(&config.identity.organisation),
        anchors: &anchors,
    };
    let mut broken = false;
    match crate::audit::verify_signed(&engine, &expected) {
        Ok(Ok(s)) => println!(
            "audit log intact: {} records, {} signed checkpoint(s) verified, {} record(s) after the last one",
            s.records, s.checkpoints, s.unsigned_tail
        ),
        Ok(Err(b)) => {
            println!("audit log BROKEN at {b}");
            broken = true;
        }
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(1);
        }
    }
    if let Some(head) = head {
        match crate::audit::verify_against(&engine, &head, &expected) {
            Ok(Ok(())) => println!(
                "matches the signed head of {}: record {} has the hash relay {} signed",
                time::OffsetDateTime::from_unix_timestamp(head.at)
                    .ok()
                    .and_then(|t| t
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok())
                    .unwrap_or_else(|| head.at.to_string()),
                head.records,
                head.relay
            ),
            Ok(Err(e)) => {
                println!("{e}");
                broken = true;
            }
            Err(e) => {
                eprintln!("kring-relay: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if broken {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads a head file written by `kring admin audit --head`.
fn read_head(path: &std::path::Path) -> Result<kring_protocol::audit::SignedAuditHead, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(kring_protocol::audit::MAX_HEAD_FILE as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    kring_protocol::audit::SignedAuditHead::from_json(text.trim())
        .map_err(|e| format!("{}: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kring-relay").chain(args.iter().copied()))
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(ansi_wanted(true, None));
        assert!(ansi_wanted(true, Some(OsStr::new(""))));
        assert!(!ansi_wanted(true, Some(OsStr::new("1"))));
        assert!(!ansi_wanted(false, None));
        assert!(!ansi_wanted(false, Some(OsStr::new(""))));
    }

    #[test]
    fn the_log_format_is_text_or_json_anywhere_on_the_line() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        assert_eq!(
            parse(&["--config", "r.toml"]).unwrap().log_format,
            LogFormat::Text
        );
        let cli = parse(&["--log-format", "json", "--config", "r.toml"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = parse(&["--config", "r.toml", "check-config", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(parse(&["--log-format", "xml"]).is_err());
    }
}

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
    /// Write a consistent backup of the store to FILE: asked of the running relay
    /// over its control socket (it keeps serving), or read from the data directory
    /// when no relay runs there.
    Backup {
        /// Where to write the backup (written whole, then renamed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into the relay's data directory, which must be empty or
    /// absent. The restored relay learns from its peers and devices where they are
    /// before it numbers anything new.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Ask the running relay to re-read its certificate, key, CRLs, peers and
    /// accreditation (like SIGHUP).
    Reload,
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
        Some(Command::Backup { out }) => with_config(cli.config, "backup", |c| backup(c, &out)),
        Some(Command::Restore { from }) => {
            with_config(cli.config, "restore", |c| restore(c, &from))
        }
        Some(Command::Reload) => {
            let Some(path) = cli.config else {
                eprintln!("kring-relay: reload needs --config FILE");
                return ExitCode::from(2);
            };
            match reload_data_dir(&path) {
                Ok(dir) => reload_command(&dir),
                Err(e) => {
                    eprintln!("kring-relay: reload refused: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::CheckConfig) => {
            let Some(path) = cli.config else {
                eprintln!("kring-relay: check-config needs --config FILE");
                return ExitCode::from(2);
            };
            match RelayConfig::load(&path) {
                Ok(c) => {
                    println!(
                        "configuration OK: relay {} ({}), accreditation {}, listening on {}, {} peer(s), {}",
                        c.identity.name,
                        c.identity.organisation,
                        c.accreditation,
                        c.listen,
                        c.peers.len(),
                        c.metrics_listen.map_or_else(
                            || "no metrics".to_string(),
                            |a| format!("metrics on http://{a}/metrics")
                        )
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

fn with_config(
    path: Option<PathBuf>,
    what: &str,
    f: impl FnOnce(RelayConfig) -> ExitCode,
) -> ExitCode {
    let Some(path) = path else {
        eprintln!("kring-relay: {what} needs --config FILE");
        return ExitCode::from(2);
    };
    match RelayConfig::load(&path) {
        Ok(c) => f(c),
        Err(e) => {
            eprintln!("kring-relay: {e}");
            ExitCode::from(2)
        }
    }
}

/// `kring-relay backup`.
fn backup(config: RelayConfig, out: &std::path::Path) -> ExitCode {
    use crate::backup::{AtomicFile, BackupError};
    let result = (|| -> Result<String, BackupError> {
        let mut file = AtomicFile::create(out)?;
        let io = |e: std::io::Error| BackupError::Io {
            path: out.display().to_string(),
            source: e,
        };
        let header = match crate::control::connect(&config.data_dir).map_err(io)? {
            Some(mut stream) => {
                let (answer, mut rest) = crate::control::request(&mut stream, "backup")
                    .map_err(|e| BackupError::Invalid(format!("control socket: {e}")))?;
                if !answer.ok {
                    return Err(BackupError::Invalid(answer.message));
                }
                let copied = std::io::copy(
                    &mut std::io::Read::take(&mut rest, answer.bytes),
                    &mut file.file,
                )
                .map_err(io)?;
                if copied != answer.bytes {
                    return Err(BackupError::Invalid(format!(
                        "the relay sent {copied} of {} bytes",
                        answer.bytes
                    )));
                }
                // Read back whole: what is on disk is a good backup.
                std::io::Seek::seek(&mut file.file, std::io::SeekFrom::Start(0)).map_err(io)?;
                crate::backup::read(&mut std::io::BufReader::new(&mut file.file), |_, _| Ok(()))?
            }
            None => {
                let engine = crate::store::SledEngine::open(&config.data_dir).map_err(|e| {
                    BackupError::Invalid(format!(
                        "no relay answers on {} and the store cannot be opened: {e}",
                        crate::control::socket_path(&config.data_dir).display()
                    ))
                })?;
                let signer = crate::audit::CheckpointSigner::new(
                    &config.identity.name,
                    &config.key_pkcs8,
                    config.cert_chain.iter().map(|c| c.to_vec()).collect(),
                )
                .map_err(|e| BackupError::Invalid(e.to_string()))?;
                crate::backup::write_store(&engine, &signer, crate::now(), &mut file.file, out)?
            }
        };
        if header.relay != config.identity.name {
            return Err(BackupError::Invalid(format!(
                "the relay on {} is {}, not {}",
                config.data_dir.display(),
                header.relay,
                config.identity.name
            )));
        }
        file.commit()?;
        Ok(format!(
            "backup of relay {} written to {}: {} records, sha256 {}",
            header.relay,
            out.display(),
            header.pairs,
            header.sha256
        ))
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kring-relay: backup failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `kring-relay restore`.
fn restore(config: RelayConfig, from: &std::path::Path) -> ExitCode {
    let dir = &config.data_dir;
    let anchors: Vec<Vec<u8>> = config.anchors.iter().map(|a| a.to_vec()).collect();
    let expected = crate::backup::Expected {
        relay: &config.identity.name,
        organisation: &config.identity.organisation,
        anchors: &anchors,
    };
    // The backup first: whole, undamaged, signed by this relay.
    if let Err(e) = crate::backup::check_file(from, &expected) {
        eprintln!("kring-relay: restore refused: {e}");
        return ExitCode::from(1);
    }
    match crate::backup::is_empty_dir(dir) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "kring-relay: restore needs an empty data directory, and {} is not empty \
                 (move it aside first; a relay must not be running on it)",
                dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = crate::config::prepare_data_dir(dir) {
        eprintln!("kring-relay: {e}");
        return ExitCode::from(1);
    }
    let engine = match crate::store::SledEngine::open(dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kring-relay: {e}");
            return ExitCode::from(1);
        }
    };
    match crate::backup::restore_into(&engine, &expected, from, crate::now()) {
        Ok(header) => {
            println!(
                "restored relay {} from {} ({} records, made at {}); on its next start it asks \
                 its peers where they are before it numbers anything new",
                header.relay,
                from.display(),
                header.pairs,
                header.created_at
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            drop(engine);
            // Leave no half-restored store behind.
            let _ = std::fs::remove_dir_all(dir.join("store"));
            eprintln!("kring-relay: restore failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// The data directory of the relay to reload: from the configuration, or, when it
/// is not valid, from its `data_dir` alone (the running relay then reads the file,
/// refuses it and audits the refusal).
fn reload_data_dir(path: &std::path::Path) -> Result<PathBuf, crate::error::ReloadError> {
    match RelayConfig::load(path) {
        Ok(c) => Ok(c.data_dir),
        Err(e) => {
            let dir = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| {
                    t.get("data_dir")
                        .and_then(|d| d.as_str())
                        .map(PathBuf::from)
                });
            match dir {
                Some(d) if d.is_absolute() => Ok(d),
                Some(d) => Ok(path.parent().unwrap_or(std::path::Path::new(".")).join(d)),
                None => Err(crate::error::ReloadError::Invalid(e)),
            }
        }
    }
}

/// `kring-relay reload`.
fn reload_command(data_dir: &std::path::Path) -> ExitCode {
    let stream = match crate::control::connect(data_dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("kring-relay: no relay is running on {}", data_dir.display());
            return ExitCode::from(5);
        }
        Err(e) => {
            eprintln!("kring-relay: control socket: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stream = stream;
    match crate::control::request(&mut stream, "reload") {
        Ok((answer, _)) if answer.ok => {
            println!("{}", answer.message);
            ExitCode::SUCCESS
        }
        Ok((answer, _)) => {
            eprintln!("kring-relay: reload refused: {}", answer.message);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("kring-relay: control socket: {e}");
            ExitCode::from(1)
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
fn read_head(
    path: &std::path::Path,
) -> Result<kring_protocol::audit::SignedAuditHead, crate::error::FileError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(kring_protocol::audit::MAX_HEAD_FILE as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|source| crate::error::FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    kring_protocol::audit::SignedAuditHead::from_json(text.trim()).map_err(|e| {
        crate::error::FileError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
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
    let config_path = path.to_path_buf();
    rt.block_on(async move {
        let running = match crate::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("kring-relay: {e}");
                return ExitCode::from(1);
            }
        };
        // Signals are registered before the address is announced: whoever reads the
        // line below may signal at once.
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stop = stop_signal();
        tokio::pin!(stop);
        // Tests and the demo read this line to learn the bound address.
        println!("kring-relay listening on {}", running.local_addr);
        let mut running = running;
        let mut reloads = running.reloads.take();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(answer) = async {
                    match reloads.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = answer.send(reload(&running, &config_path));
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match reload(&running, &config_path) {
                        Ok(m) => tracing::info!("SIGHUP: {m}"),
                        Err(m) => tracing::warn!("SIGHUP: {m}"),
                    }
                }
            }
        }
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

/// What a reload (SIGHUP, `kring-relay reload`) does: the configuration is read
/// and checked again and what changed is applied ([`crate::reload`]). An invalid
/// configuration, or one changing what needs a restart, is refused: the relay keeps
/// running as it was, and the answer says why (as a failure, so that `systemctl
/// reload` shows it).
fn reload(
    running: &crate::Running,
    path: &std::path::Path,
) -> Result<String, crate::error::ReloadError> {
    match RelayConfig::load(path) {
        Ok(config) => running
            .reload(&config)
            .map(|summary| format!("{} reloaded: {summary}", path.display())),
        Err(e) => {
            let error = crate::error::ReloadError::Invalid(e);
            running.refused(&error.to_string());
            Err(error)
        }
    }
}

/// Registers for SIGTERM and SIGINT now (a signal that arrives before the returned
/// future is first polled is not lost) and resolves at the first of them.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
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

//! The `kring` command line: parses arguments, drives a [`Client`], prints
//! results on stdout (JSON Lines with `--json`), and one `kring: ` line per problem on
//! stderr. [`main`] returns the process exit code.

pub mod args;
pub mod audit;
pub mod output;
pub mod whoami;

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use clap::Parser;

use crate::client::Client;
use crate::community::AdminChange;
use crate::error::{ClientError, EXIT_OK, EXIT_USAGE, Result};
use crate::labels::LabelCheck;
use crate::notice::{MAX_BODY, MAX_STIX_BYTES, NoticeDraft, parse_stix};
use crate::profile::read_text;
use crate::sync::SyncEvent;
use crate::unlock::{Passphrase, Unlocker};
use args::{
    AdminAction, AdminCommand, BodySource, Cli, Command, CommunityCommand, KeysCommand,
    LabelCommand, NoticeCommand, PassphraseCommand, TaxiiCommand,
};

/// Runs the command line with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    init_tracing(cli.verbose);
    // `label check` needs neither a profile nor the network.
    if let Command::Label(LabelCommand::Check { label, clearance }) = &cli.command {
        return finish(label_check(label, clearance.as_deref(), &mut Out::stdout()));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kring: cannot start the async runtime: {e}");
            return crate::error::EXIT_OTHER;
        }
    };
    finish(runtime.block_on(run(cli, &mut Out::stdout())))
}

/// Prints a failure and maps results to exit codes.
fn finish(result: Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kring: {e}");
            e.exit_code()
        }
    }
}

/// Prints a clap error: help and version on stdout with exit 0, anything else as
/// one `kring: ` line with exit 2.
fn clap_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                EXIT_USAGE
            } else {
                EXIT_OK
            }
        }
        _ => {
            eprintln!("kring: {}; see `kring --help`", clap_message(e));
            EXIT_USAGE
        }
    }
}

/// The first line of a clap error without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid usage");
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_string()
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KRING_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn ansi_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Standard output that stops quietly when the reader goes away (`| head`).
pub struct Out {
    sink: Box<dyn Write + Send>,
    closed: bool,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out").field("closed", &self.closed).finish()
    }
}

impl Out {
    /// The process's stdout.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    /// Any writer (for tests).
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            sink,
            closed: false,
        }
    }

    /// Writes `text` (adding a newline if it has none) and flushes.
    pub fn line(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let nl = if text.ends_with('\n') { "" } else { "\n" };
        if write!(self.sink, "{text}{nl}")
            .and_then(|()| self.sink.flush())
            .is_err()
        {
            self.closed = true;
        }
    }
}

/// `kring label check`.
pub fn label_check(label: &str, clearance: Option<&str>, out: &mut Out) -> Result<i32> {
    let check = LabelCheck::run(label, clearance)?;
    out.line(&check.render());
    Ok(check.exit_code())
}

fn open_client(profile: Option<&Path>) -> Result<Client> {
    let dir = profile.ok_or(ClientError::NoProfile)?;
    let mut client = Client::open(dir)?;
    for note in client.open_notes() {
        eprintln!("kring: {note}");
    }
    // Client::open has read the same certificate; a warning only, never a failure.
    if let Ok((_, me)) = client.profile().certificate() {
        let now = i64::try_from(crate::validator::now_unix()).unwrap_or(i64::MAX);
        if let Some(warning) = crate::profile::expiry_warning(&me, now) {
            eprintln!("kring: warning: {warning}");
        }
    }
    client.set_event_sink(Box::new(|e: &SyncEvent| {
        if let Some(line) = output::event_line(e) {
            eprintln!("kring: {line}");
        }
    }));
    Ok(client)
}

/// Parses `args` (the first is the program name) and runs the command, writing
/// its output to `out` (for programs and tests that embed the command line).
pub async fn run_args<I, T>(args: I, out: &mut Out) -> Result<i32>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| ClientError::Usage(clap_message(&e)))?;
    run(cli, out).await
}

/// Runs one parsed command; returns the exit code of a successful run.
pub async fn run(cli: Cli, out: &mut Out) -> Result<i32> {
    match cli.command {
        Command::Label(LabelCommand::Check { label, clearance }) => {
            label_check(&label, clearance.as_deref(), out)
        }
        Command::Whoami { json } => whoami::run(cli.profile.as_deref(), json, out),
        Command::Taxii(TaxiiCommand::Passwd { file, name }) => crate::taxii::passwd(&file, &name),
        Command::Enroll {
            user,
            out: dir,
            organisation,
            passphrase_file,
        } => {
            crate::enroll::check(&user, organisation.as_deref(), &dir)?;
            let passphrase = match &passphrase_file {
                Some(path) => Passphrase::read_file(path)?,
                None => Passphrase::ask_new(&format!("the key of {user}"))?,
            };
            let enrolment = crate::enroll::enroll(&crate::enroll::EnrollRequest {
                user,
                organisation,
                dir,
                passphrase,
            })?;
            out.line(&crate::enroll::next_steps(&enrolment));
            Ok(EXIT_OK)
        }
        Command::Passphrase(PassphraseCommand::Change {
            new_passphrase_file,
        }) => {
            let dir = cli.profile.as_deref().ok_or(ClientError::NoProfile)?;
            let profile = crate::profile::Profile::load(dir)?;
            let mut unlocker = Unlocker::new(&profile);
            // The current passphrase first (a wrong one stops here).
            unlocker.passphrase()?;
            let new = match &new_passphrase_file {
                Some(path) => Passphrase::read_file(path)?,
                None => Passphrase::ask_new(&profile.user)?,
            };
            let change = crate::unlock::change_passphrase(&profile, &mut unlocker, &new)?;
            out.line(&format!(
                "passphrase of {} changed: private key {} re-encrypted{}",
                profile.user,
                change.key.display(),
                if change.archive {
                    ", archive key re-wrapped (the archive itself is unchanged)"
                } else {
                    ""
                }
            ));
            if let Some(p) = &change.passphrase_file {
                out.line(&format!("{} holds the new passphrase", p.display()));
            }
            Ok(EXIT_OK)
        }
        command => {
            // Read the user's input before taking the state database, so a slow
            // typist does not keep other kring processes of this user waiting.
            let input = read_input(&command)?;
            if let Command::Ui {
                listen: Some(listen),
                ..
            } = &command
            {
                crate::ui::check_listen(listen)?;
            }
            let mut client = open_client(cli.profile.as_deref())?;
            let result = run_with_client(&mut client, command, input, out).await;
            client.disconnect().await;
            match result {
                Err(e) if Client::is_revocation(&e) => {
                    let e = client.with_wipe_order(e).await;
                    Err(client.wipe_after_revocation(e))
                }
                other => other,
            }
        }
    }
}

/// Input read from files or stdin before the command runs.
#[derive(Debug, Default)]
struct Input {
    body: String,
    stix: Option<Vec<serde_json::Value>>,
}

fn read_input(command: &Command) -> Result<Input> {
    match command {
        Command::Notice(NoticeCommand::File {
            body, stix_file, ..
        }) => {
            let stix = stix_file
                .as_ref()
                .map(|p| {
                    let text =
                        read_text(p, MAX_STIX_BYTES as u64).map_err(|r| ClientError::io(p, r))?;
                    crate::export::validate::check_document(&text)
                        .map_err(|e| ClientError::Usage(e.to_string()))?;
                    parse_stix(&text).map_err(|e| ClientError::Usage(e.to_string()))
                })
                .transpose()?;
            Ok(Input {
                body: read_body(body)?,
                stix,
            })
        }
        Command::Notice(NoticeCommand::Reply { body, .. }) => Ok(Input {
            body: read_body(body)?,
            stix: None,
        }),
        _ => Ok(Input::default()),
    }
}

async fn run_with_client(
    client: &mut Client,
    command: Command,
    input: Input,
    out: &mut Out,
) -> Result<i32> {
    match command {
        Command::Keys(KeysCommand::Publish { count }) => {
            let held = client.publish_key_packages(usize::from(count)).await?;
            out.line(&format!(
                "published {count} key package(s) and a last-resort one; {} holds {held} for you",
                client.relay_id()
            ));
        }
        Command::Keys(KeysCommand::Update { community }) => {
            let updates = client.update_keys(community.as_deref()).await?;
            if updates.is_empty() {
                out.line("you are not in any community; nothing to update");
            }
            for u in &updates {
                out.line(&format!(
                    "{}: new leaf key {} (epoch {}, #{})",
                    u.community, u.leaf_key, u.epoch, u.seq
                ));
            }
        }
        Command::Community(cmd) => community(client, cmd, out).await?,
        Command::Notice(cmd) => notice(client, cmd, input, out).await?,
        Command::Admin(AdminCommand::Audit {
            verify,
            against,
            head,
            json,
        }) => {
            if head {
                return audit::head(client, out).await;
            }
            return audit::run(client, verify, against.as_deref(), json, out).await;
        }
        Command::Admin(AdminCommand::Revoke { user, reason, wipe }) => {
            let r = if wipe {
                client.revoke_and_wipe(&user, &reason).await?
            } else {
                client.revoke(&user, &reason).await?
            };
            out.line(&format!(
                "revoked {}: relay {} has cut them off and refuses them from now on",
                r.user, r.relay
            ));
            if r.wipe {
                out.line(&format!(
                    "wipe ordered: when {}'s device next reaches relay {}, it deletes its \
                     archive, MLS state, private key and passphrase file",
                    r.user, r.relay
                ));
            }
            if r.peers.is_empty() {
                out.line("no federation peers to tell");
            } else {
                out.line(&format!(
                    "the revocation is on its way to relay(s) {}",
                    r.peers.join(", ")
                ));
            }
            if !r.removals.is_empty() {
                out.line(&format!(
                    "removal proposed in {} (committed by the first member online)",
                    r.removals.join(", ")
                ));
            }
        }
        Command::Taxii(TaxiiCommand::Serve {
            listen,
            max_label,
            users,
            tls_cert,
            tls_key,
        }) => {
            let opts = crate::taxii::ServeOptions {
                listen,
                max_label,
                users,
                tls: tls_cert.zip(tls_key),
            };
            return crate::taxii::serve(client, opts, out).await;
        }
        Command::Ui { listen, no_browser } => {
            let opts = crate::ui::UiOptions { listen, no_browser };
            return crate::ui::serve(client, opts, out).await;
        }
        Command::Label(_)
        | Command::Taxii(TaxiiCommand::Passwd { .. })
        | Command::Whoami { .. }
        | Command::Enroll { .. }
        | Command::Passphrase(_) => {
            return Err(ClientError::Usage("unexpected command".into()));
        }
    }
    Ok(EXIT_OK)
}

async fn community(client: &mut Client, cmd: CommunityCommand, out: &mut Out) -> Result<()> {
    match cmd {
        CommunityCommand::Create {
            name,
            max_label,
            update_days,
            retention,
        } => {
            let r = client
                .create_community_retaining(&name, &max_label, update_days, retention)
                .await?;
            let kept = match retention {
                Some(days) => format!(
                    "; notices are kept {days} day(s), then deleted from every member's \
                     device and (once every member device has them) from the relays"
                ),
                None => String::new(),
            };
            out.line(&format!(
                "created community {} with maximum label {}; you are its admin; members \
                 update their keys at least every {update_days} day(s){kept}",
                r.community,
                client
                    .store()
                    .community(&r.community)?
                    .map(|c| c.max_label)
                    .unwrap_or(max_label)
            ));
        }
        CommunityCommand::Add { id, users } => {
            let r = client.add_members(&id, &users).await?;
            out.line(&format!(
                "added {} to {} (epoch {}, #{})",
                r.added.join(", "),
                r.community,
                r.epoch,
                r.seq
            ));
        }
        CommunityCommand::Remove { id, users } => {
            let r = client.remove_members(&id, &users).await?;
            out.line(&format!(
                "removed {} from {} (epoch {}, #{})",
                r.removed.join(", "),
                r.community,
                r.epoch,
                r.seq
            ));
        }
        CommunityCommand::List { json } => {
            client.sync().await?;
            for c in client.list_communities().await? {
                out.line(&if json {
                    output::json_line(&c)
                } else {
                    output::community_line(&c)
                });
            }
        }
        CommunityCommand::Members { id, json } => {
            // Sync first: it also commits removals the hub proposed (revocations), so
            // the list is current.
            client.sync().await?;
            let info = client.community_info(&id).await?;
            let leaves = client.member_leaves(&info.id)?;
            for m in &info.members {
                let admin = info.admins.contains(m);
                let leaf = leaves.iter().find(|l| &l.id == m);
                out.line(&if json {
                    output::json_line(&output::MemberLine {
                        id: m,
                        admin,
                        leaf_updated_at: leaf.and_then(|l| l.updated_at).and_then(output::rfc3339),
                        leaf_key: leaf.map(|l| l.leaf_key.as_str()),
                    })
                } else {
                    output::member_line(m, admin, leaf)
                });
            }
        }
        CommunityCommand::Admins { id, action, user } => {
            let change = match action {
                AdminAction::Add => AdminChange::Add,
                AdminAction::Remove => AdminChange::Remove,
            };
            let r = client.set_admin(&id, change, &user).await?;
            out.line(&format!(
                "admins of {} are now: {} (epoch {}, #{})",
                r.community,
                r.admins.unwrap_or_default().join(", "),
                r.epoch,
                r.seq
            ));
        }
    }
    Ok(())
}

async fn notice(
    client: &mut Client,
    cmd: NoticeCommand,
    input: Input,
    out: &mut Out,
) -> Result<()> {
    match cmd {
        NoticeCommand::File {
            community,
            label,
            category,
            title,
            kind,
            wait,
            attach,
            ..
        } => {
            set_ordering_wait(client, wait.duration());
            show_progress(client);
            let filed = client
                .file_notice(NoticeDraft {
                    community,
                    label,
                    kind,
                    category,
                    title,
                    body: input.body,
                    in_reply_to: None,
                    stix: input.stix,
                    attachments: attach,
                })
                .await?;
            report_filed(&filed, out)?;
        }
        NoticeCommand::Reply {
            notice_id,
            label,
            title,
            wait,
            attach,
            ..
        } => {
            best_effort_sync(client).await?;
            set_ordering_wait(client, wait.duration());
            show_progress(client);
            let filed = client
                .reply_with(&notice_id, &label, input.body, title, attach)
                .await?;
            report_filed(&filed, out)?;
        }
        NoticeCommand::List { community, json } => {
            let community = community
                .map(|c| client.resolve_community(&c))
                .transpose()?;
            best_effort_sync(client).await?;
            for stored in client.stored_notices(community.as_deref())? {
                out.line(&if json {
                    stored.notice.to_json_line()
                } else {
                    let expires = client.notice_expiry(&stored)?;
                    output::notice_line_expiring(&stored, expires)
                });
            }
        }
        NoticeCommand::Show { notice_id, json } => {
            best_effort_sync(client).await?;
            let stored = client.find_notice(&notice_id)?;
            if json {
                out.line(&stored.notice.to_json_line());
            } else {
                out.line(&output::notice_full(&stored.notice, stored.seq));
                if let Some(at) = client
                    .notice_expiry(&stored)?
                    .and_then(crate::retention::expiry_time)
                {
                    out.line(&format!(
                        "  expires {} (the community's retention period)",
                        output::human_time(&at)
                    ));
                }
            }
            if stored.own {
                match client.notice_status(stored.notice.id).await {
                    Ok(status) if json => {
                        if status.seq.is_none() && status.refusals.is_empty() {
                            let line = output::status_summary(&status, client.relay_id());
                            eprintln!("kring: {line}");
                        }
                        for r in &status.refusals {
                            eprintln!("kring: refused at {}: {}", r.hop, r.reason);
                        }
                    }
                    Ok(status) => out.line(&output::notice_status(&status, client.relay_id())),
                    Err(e) => eprintln!("kring: warning: no status from the relay: {e}"),
                }
            }
        }
        NoticeCommand::Watch { community, json } => {
            let community = community
                .map(|c| client.resolve_community(&c))
                .transpose()?;
            let watch = client.watch(|event| match event {
                SyncEvent::Notice(n) => {
                    if community.as_ref().is_none_or(|c| &n.community == c) {
                        out.line(&if json {
                            n.to_json_line()
                        } else {
                            output::notice_full(n, None)
                        });
                    }
                }
                other => {
                    if let Some(line) = output::event_line(other) {
                        eprintln!("kring: {line}");
                    }
                }
            });
            tokio::select! {
                result = watch => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        NoticeCommand::Forward {
            notice_id,
            to,
            label,
            comment,
            wait,
            attach,
        } => {
            best_effort_sync(client).await?;
            set_ordering_wait(client, wait.duration());
            show_progress(client);
            let filed = client
                .forward_with(
                    &notice_id,
                    &to,
                    label.as_deref(),
                    comment.as_deref(),
                    attach,
                )
                .await?;
            report_filed(&filed, out)?;
        }
        NoticeCommand::Attachments {
            notice_id,
            out: dir,
        } => {
            best_effort_sync(client).await?;
            let mut progress = Progress::new();
            let saved = client
                .save_attachments(&notice_id, &dir, &mut |p| progress.show(&p))
                .await?;
            progress.done();
            if saved.is_empty() {
                eprintln!("kring: the notice has no attachments");
            }
            for a in saved {
                out.line(&format!(
                    "{}\t{} bytes\tsha256 {}",
                    a.path.display(),
                    a.size,
                    a.sha256
                ));
            }
        }
        NoticeCommand::Export {
            community,
            since,
            max_label,
            format,
            out: path,
        } => {
            let args = crate::export::ExportArgs {
                community,
                since,
                max_label,
                format,
                out: path,
            };
            crate::export::run(client, args, out).await?;
        }
    }
    Ok(())
}

/// Transfer progress of attachments on stderr: one line per file and a
/// percentage every tenth, the relay's word while it fetches a file itself.
struct Progress {
    last: Option<(String, u64)>,
}

impl Progress {
    fn new() -> Self {
        Self { last: None }
    }

    fn show(&mut self, p: &crate::attachments::Progress) {
        match p {
            crate::attachments::Progress::Transfer { name, done, total } => {
                let tenth = done.saturating_mul(10) / (*total).max(1);
                if self.last.as_ref() != Some(&(name.clone(), tenth)) {
                    eprintln!("kring: {name}: {}% of {total} bytes", tenth * 10);
                    self.last = Some((name.clone(), tenth));
                }
            }
            crate::attachments::Progress::Waiting { name, reason } => {
                eprintln!("kring: {name}: waiting: {reason}");
            }
        }
    }

    fn done(&mut self) {
        self.last = None;
    }
}

/// Reports upload progress of attachments on stderr.
fn show_progress(client: &mut Client) {
    let mut progress = Progress::new();
    client.set_progress(Box::new(move |p| progress.show(&p)));
}

/// Sets how long filing waits for a remote hub's ordering.
fn set_ordering_wait(client: &mut Client, wait: std::time::Duration) {
    let mut timeouts = client.timeouts();
    timeouts.ordering = wait;
    client.set_timeouts(timeouts);
}

/// Prints the id of a filed notice and what became of it; a refusal at a hop is
/// the command's error (exit 3), other refusals are warnings on stderr.
fn report_filed(filed: &crate::FiledNotice, out: &mut Out) -> Result<()> {
    out.line(&filed.notice.id.to_string());
    for warning in output::filed_warnings(filed) {
        eprintln!("kring: {warning}");
    }
    out.line(&output::filed_line(filed)?);
    Ok(())
}

/// Syncs, but carries on with local data (with a warning) if the relay cannot be
/// reached; other failures (authentication, revocation) stop the command.
async fn best_effort_sync(client: &mut Client) -> Result<()> {
    match client.sync().await {
        Ok(_) => Ok(()),
        Err(e) if e.exit_code() == crate::error::EXIT_UNREACHABLE => {
            eprintln!("kring: warning: {e}; showing what this device has");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The notice body from `--body`, `--body-file` (`-` = stdin) or stdin; trailing
/// line breaks are dropped.
fn read_body(src: &BodySource) -> Result<String> {
    let text = match (&src.body, &src.body_file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => read_stdin()?,
        (None, Some(path)) => {
            read_text(path, MAX_BODY as u64 + 1).map_err(|r| ClientError::io(path, r))?
        }
        (None, None) => {
            if std::io::stdin().is_terminal() {
                eprintln!("kring: type the body, end with Ctrl-D");
            }
            read_stdin()?
        }
    };
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn read_stdin() -> Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_BODY as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::io("stdin", e))?;
    String::from_utf8(buf).map_err(|_| ClientError::io("stdin", "the body is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run_cli(args: &[&str]) -> (Result<i32>, String) {
        let cli =
            Cli::try_parse_from(std::iter::once("kring").chain(args.iter().copied())).unwrap();
        let shared = Shared::default();
        let mut out = Out::new(Box::new(shared.clone()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(run(cli, &mut out));
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        (result, text)
    }

    #[test]
    fn label_check_prints_the_canonical_label_and_decides() {
        let (code, text) = run_cli(&["label", "check", "tlp:red"]);
        assert_eq!(code.unwrap(), 0);
        assert!(
            text.starts_with("label      NL:ONGERUBRICEERD;TLP=RED\n"),
            "{text}"
        );

        let (code, text) = run_cli(&[
            "label",
            "check",
            "NL:STG-GEHEIM;CMP=CYBER",
            "--clearance",
            "NL:STG-GEHEIM",
        ]);
        assert_eq!(code.unwrap(), 3);
        assert!(text.contains("DENIED"), "{text}");

        let (code, _) = run_cli(&["label", "check", "NL:NOPE"]);
        assert_eq!(code.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(ansi_wanted(true, None));
        assert!(ansi_wanted(true, Some(OsStr::new(""))));
        assert!(!ansi_wanted(true, Some(OsStr::new("1"))));
        assert!(!ansi_wanted(false, None));
    }

    #[test]
    fn whoami_prints_the_profiles_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let fed = crate::testpki::Fed::new("bz");
        let leaf = fed.admin("bz", "consul", "bz");
        let dir = fed.profile(tmp.path(), "consul@bz", "bz", &leaf);
        let dir = dir.to_str().unwrap();
        let (code, text) = run_cli(&["--profile", dir, "whoami"]);
        assert_eq!(code.unwrap(), 0);
        assert!(text.starts_with("user          consul@bz\n"), "{text}");
        let (code, text) = run_cli(&["--profile", dir, "whoami", "--json"]);
        assert_eq!(code.unwrap(), 0);
        assert_eq!(text.lines().count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["organisation"], "bz");
        assert_eq!(json["chain_verified"], true);
    }

    #[test]
    fn enroll_says_what_to_do_next() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        let pass = tmp.path().join("pass");
        std::fs::write(&pass, "new device\n").unwrap();
        let (code, text) = run_cli(&[
            "enroll",
            "--user",
            "consul@bz",
            "--out",
            dir.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ]);
        assert_eq!(code.unwrap(), 0);
        assert!(
            text.starts_with("enrolled consul@bz on this device\n"),
            "{text}"
        );
        assert!(text.contains("next:"), "{text}");
        let key = std::fs::read_to_string(dir.join("user.key")).unwrap();
        assert!(
            kring_protocol::keyfile::decrypt_pem(&key, b"new device").is_ok(),
            "encrypted under the passphrase in the file"
        );
        let (code, _) = run_cli(&["enroll", "--user", "consul", "--out", "x"]);
        assert_eq!(code.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn commands_needing_a_profile_say_so() {
        for args in [
            &["whoami"][..],
            &["notice", "list"][..],
            &["admin", "audit", "--verify", "--json"][..],
        ] {
            let (code, _) = run_cli(args);
            let err = code.unwrap_err();
            assert!(matches!(err, ClientError::NoProfile), "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn forward_needs_a_profile_and_a_destination() {
        let (code, _) = run_cli(&["notice", "forward", "x", "--to", "c@bz"]);
        assert!(matches!(code.unwrap_err(), ClientError::NoProfile));
        let err = Cli::try_parse_from(["kring", "notice", "forward", "x"]).unwrap_err();
        assert!(err.to_string().contains("--to"), "{err}");
        assert_eq!(clap_error(&err), 2);
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = Cli::try_parse_from(["kring", "notice", "frobnicate"]).unwrap_err();
        let msg = clap_message(&err);
        assert!(!msg.contains('\n'));
        assert!(msg.contains("frobnicate"), "{msg}");
        assert_eq!(clap_error(&err), 2);
    }

    #[test]
    fn out_stops_quietly_on_a_closed_reader() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Out::new(Box::new(Broken));
        out.line("a");
        out.line("b");
        assert!(out.closed);
    }

    #[test]
    fn body_comes_from_the_flag_or_a_file() {
        let src = BodySource {
            body: Some("tekst\n".into()),
            body_file: None,
        };
        assert_eq!(read_body(&src).unwrap(), "tekst");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.txt");
        std::fs::write(&path, "uit bestand\nregel 2\n").unwrap();
        let src = BodySource {
            body: None,
            body_file: Some(path),
        };
        assert_eq!(read_body(&src).unwrap(), "uit bestand\nregel 2");
        let src = BodySource {
            body: None,
            body_file: Some(dir.path().join("missing")),
        };
        assert!(read_body(&src).unwrap_err().to_string().contains("missing"));
    }
}

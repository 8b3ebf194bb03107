//! The command line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::notice::{Category, NoticeKind};
use crate::ordering::MAX_ORDERING_WAIT_SECS;

/// Kring: labelled notices for closed communities, end-to-end encrypted (MLS).
#[derive(Debug, Parser)]
#[command(name = "kring", version, propagate_version = true)]
pub struct Cli {
    /// The profile directory (DIR/users/NAME@RELAY); or set KRING_PROFILE.
    #[arg(long, env = "KRING_PROFILE", global = true, value_name = "DIR")]
    pub profile: Option<PathBuf>,

    /// Log more to stderr (-v info, -vv debug). Notice content is never logged.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Key packages (so that admins can add you to communities).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Communities: create, membership, admins.
    #[command(subcommand)]
    Community(CommunityCommand),
    /// Notices: file, watch, list, show, reply.
    #[command(subcommand)]
    Notice(NoticeCommand),
    /// Labels: parse, explain, decide.
    #[command(subcommand)]
    Label(LabelCommand),
    /// Organisation administration: revoke a user, read the relay's audit log.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Who this profile's certificate says you are: user, home relay, organisation,
    /// clearance, roles, serial and validity (offline: the certificate and trust
    /// anchors only, not the key, local state or network).
    Whoami {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Start a new device: generate its key here (it never leaves the device) and a
    /// certificate signing request for your organisation's CA, plus a profile to
    /// complete, in DIR.
    Enroll {
        /// Your identity, NAME@RELAY (RELAY: your home relay).
        #[arg(long, value_name = "NAME@RELAY")]
        user: String,
        /// The directory to write user.key, user.csr and profile.toml to (created
        /// if missing; nothing in it is ever replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Your organisation (the certificate's O); default: RELAY.
        #[arg(long, value_name = "ORG")]
        organisation: Option<String>,
        /// A file whose first line is the passphrase to encrypt the key with
        /// (default: asked twice on the terminal).
        #[arg(long, env = "KRING_PASSPHRASE_FILE", value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// The passphrase that protects this device's private key and local archive.
    #[command(subcommand)]
    Passphrase(PassphraseCommand),
    /// TAXII 2.1: serve your communities to your organisation's threat-intelligence
    /// platform; manage the service's users.
    #[command(subcommand)]
    Taxii(TaxiiCommand),
    /// Open your notices and communities in the browser: a local web interface on
    /// this device (loopback only) until Ctrl-C; the CLI keeps working meanwhile.
    Ui {
        /// Address to listen on: 127.0.0.1:PORT (port 0 or none picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Only print the address; do not open the browser.
        #[arg(long)]
        no_browser: bool,
    },
}

/// `kring passphrase ...`
#[derive(Debug, Subcommand)]
pub enum PassphraseCommand {
    /// Change it: the private key is re-encrypted and the archive's key re-wrapped
    /// (the archive itself is not re-encrypted). The current passphrase is read as
    /// for every command; if it came from the profile's passphrase_file, that file
    /// gets the new one.
    Change {
        /// A file whose first line is the new passphrase (default: asked twice on
        /// the terminal).
        #[arg(long, env = "KRING_NEW_PASSPHRASE_FILE", value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
}

/// `kring keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Publish fresh key packages (plus a last-resort one) at your home relay.
    Publish {
        /// How many one-time key packages to publish.
        #[arg(long, default_value_t = 10,
              value_parser = clap::value_parser!(u16).range(1..=100))]
        count: u16,
    },
    /// Rotate your keys now (after a suspected compromise of this device): a new
    /// leaf key in every community you are in, or in one. Devices also do this on
    /// schedule, at least as often as each community's update period.
    Update {
        /// Only this community (NAME@HUB; a bare NAME means your home relay).
        #[arg(long, value_name = "ID")]
        community: Option<String>,
    },
}

/// `kring community ...`
#[derive(Debug, Subcommand)]
pub enum CommunityCommand {
    /// Create NAME@HOME (HOME: your home relay); you become its first admin.
    Create {
        /// The community name (lower case letters, digits, '-', '_', '.').
        name: String,
        /// The highest label notices in the community may carry.
        #[arg(long, value_name = "LABEL")]
        max_label: String,
        /// Every member rotates its leaf key at least this often (days, 1 to 365;
        /// fixed at creation).
        #[arg(long, value_name = "N", default_value_t = kring_protocol::mls::DEFAULT_UPDATE_DAYS,
              value_parser = clap::value_parser!(u16).range(1..=365))]
        update_days: u16,
        /// Keep notices this many days (1 to 3650; fixed at creation): every
        /// member's device deletes older ones, and relays drop them once every
        /// member device has them. Default: no limit.
        #[arg(long, value_name = "DAYS",
              value_parser = clap::value_parser!(u16).range(1..=3650))]
        retention: Option<u16>,
    },
    /// Add users (NAME@RELAY) to a community you administer.
    Add {
        /// Community id NAME@HUB (a bare NAME means your home relay).
        id: String,
        /// Users to add.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Remove users from a community you administer.
    Remove {
        /// Community id NAME@HUB (a bare NAME means your home relay).
        id: String,
        /// Users to remove.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// The communities you are a member of.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The members of a community.
    Members {
        /// Community id NAME@HUB (a bare NAME means your home relay).
        id: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Appoint or remove a community admin.
    Admins {
        /// Community id NAME@HUB (a bare NAME means your home relay).
        id: String,
        /// add or remove.
        action: AdminAction,
        /// The member.
        user: String,
    },
}

/// `community admins ID add|remove USER`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminAction {
    /// Appoint.
    Add,
    /// Remove.
    Remove,
}

/// Where a notice body comes from.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct BodySource {
    /// The body text (default: read from stdin).
    #[arg(long, value_name = "TEXT")]
    pub body: Option<String>,
    /// Read the body from a file ('-' for stdin).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
}

/// How long filing waits for the hub's ordering.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitTimeout {
    /// For a community hubbed at another relay: how long to wait for the hub to
    /// order the notice once your home relay has queued it (0: do not wait). The
    /// notice is durable either way.
    #[arg(long = "wait-timeout", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=MAX_ORDERING_WAIT_SECS))]
    pub seconds: u64,
}

impl WaitTimeout {
    /// The wait as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

/// `kring notice ...`
#[derive(Debug, Subcommand)]
pub enum NoticeCommand {
    /// File a notice in a community.
    File {
        /// Community id NAME@HUB (a bare NAME means your home relay).
        #[arg(long, value_name = "ID")]
        community: String,
        /// The notice's label, e.g. NL:STG-CONFIDENTIEEL;TLP=AMBER.
        #[arg(long)]
        label: String,
        /// espionage, cyber, disinformation, interference, economic or other.
        #[arg(long, value_parser = parse_category)]
        category: Category,
        /// One-line title.
        #[arg(long)]
        title: String,
        /// The body.
        #[command(flatten)]
        body: BodySource,
        /// signal or notice.
        #[arg(long, default_value = "signal", value_parser = parse_kind)]
        kind: NoticeKind,
        /// A STIX 2.1 bundle, array of objects or object to attach.
        #[arg(long, value_name = "FILE")]
        stix_file: Option<PathBuf>,
        /// A file to attach (repeatable; at most 50 MiB in all).
        #[arg(long = "attach", value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// The hub's ordering.
        #[command(flatten)]
        wait: WaitTimeout,
    },
    /// Show new notices as they arrive (until Ctrl-C).
    Watch {
        /// Only this community.
        #[arg(long, value_name = "ID")]
        community: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List the notices on this device.
    List {
        /// Only this community.
        #[arg(long, value_name = "ID")]
        community: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one notice (and, for your own, what the relays did with it).
    Show {
        /// The notice id (or a unique prefix of at least 6 hex digits).
        notice_id: String,
        /// The notice as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Save the attachments of a notice, each checked against the SHA-256 the
    /// notice gives (an existing file is never overwritten).
    Attachments {
        /// The notice id (or a unique prefix of at least 6 hex digits).
        notice_id: String,
        /// The directory to save into (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Reply to a notice (same community).
    Reply {
        /// The notice id (or a unique prefix of at least 6 hex digits).
        notice_id: String,
        /// The reply's label.
        #[arg(long)]
        label: String,
        /// The reply's title (default: "Re: " and the original title).
        #[arg(long)]
        title: Option<String>,
        /// A file to attach (repeatable; at most 50 MiB in all).
        #[arg(long = "attach", value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// The body.
        #[command(flatten)]
        body: BodySource,
        /// The hub's ordering.
        #[command(flatten)]
        wait: WaitTimeout,
    },
    /// Forward a notice into another community, as TLP allows: RED never,
    /// AMBER+STRICT only within your organisation, AMBER only to it and the
    /// organisations it declares as clients, GREEN and CLEAR anywhere.
    Forward {
        /// The notice id (or a unique prefix of at least 6 hex digits).
        notice_id: String,
        /// The destination community.
        #[arg(long, value_name = "COMMUNITY_ID")]
        to: String,
        /// The forward's label: the original's unless a higher one is given (never
        /// lower).
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// Your comment, shown before the original's body.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// A file to attach besides the original's (repeatable; at most 50 MiB in all).
        #[arg(long = "attach", value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// The hub's ordering.
        #[command(flatten)]
        wait: WaitTimeout,
    },
    /// Export notices as STIX 2.1 or a MISP feed: only those whose label --max-label
    /// admits and whose TLP allows an export (TLP:CLEAR; never RED).
    Export {
        /// Only this community.
        #[arg(long, value_name = "ID")]
        community: Option<String>,
        /// Only notices filed at or after this time (2025-03-01T12:00:00Z or 2025-03-01).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// The destination's accreditation: the highest label it may hold.
        #[arg(long, value_name = "LABEL")]
        max_label: String,
        /// stix (one bundle) or misp (a feed directory).
        #[arg(long, value_enum)]
        format: crate::export::Format,
        /// Where to write: a file for stix (default stdout), a directory for misp.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

/// `kring taxii ...`
#[derive(Debug, Subcommand)]
pub enum TaxiiCommand {
    /// Serve your communities as TAXII 2.1 collections (until Ctrl-C): the notices
    /// `kring notice export` would export; a POSTed envelope is filed as a notice.
    Serve {
        /// Address to listen on; plain HTTP only on loopback (127.0.0.1:PORT).
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The platform's accreditation: the highest label it may hold.
        #[arg(long, value_name = "LABEL")]
        max_label: String,
        /// The users file (NAME:HASH lines, see `kring taxii passwd`).
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
        /// PEM certificate chain for HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Set a user's password in a users file (the password is read from stdin).
    Passwd {
        /// The users file (created if missing).
        file: PathBuf,
        /// The user name.
        name: String,
    },
}

/// `kring label ...`
#[derive(Debug, Subcommand)]
pub enum LabelCommand {
    /// Parse and explain a label; with --clearance, decide whether it may be read.
    Check {
        /// The label, e.g. NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER.
        label: String,
        /// A clearance, e.g. NL:STG-GEHEIM;REL=NLD;CMP=CYBER.
        #[arg(long)]
        clearance: Option<String>,
    },
}

/// `kring admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Revoke a user of your organisation everywhere in the federation (org-admin
    /// only): their connections are closed, they cannot reconnect, and they are
    /// removed from every community they were in.
    Revoke {
        /// The user, NAME@RELAY.
        user: String,
        /// Why (written to every relay's audit log).
        #[arg(long)]
        reason: String,
        /// Also order the user's device wiped: when it next reaches its home relay
        /// (which must be yours) it deletes its private key and passphrase file as
        /// well as its archive and MLS state (which every revoked device deletes).
        #[arg(long)]
        wipe: bool,
    },
    /// Your home relay's audit log, one line per record (org-admins of the relay's
    /// organisation only).
    Audit {
        /// Check the whole chain, on this device and by the relay: hashes, links,
        /// every checkpoint signature, every certificate the relay signed with
        /// (chained to your trust anchors). Exit 1 if broken.
        #[arg(long)]
        verify: bool,
        /// With --verify: also check the log against a head saved earlier with
        /// --head; a cut or rewritten tail is detected (exit 1).
        #[arg(long, value_name = "HEAD_FILE", requires = "verify")]
        against: Option<PathBuf>,
        /// Instead of the records, print a head of the log signed by the relay now
        /// (one JSON line: relay, record count, hash of the last record, time,
        /// signature, certificate chain). Save it where the relay cannot change it,
        /// e.g. `kring admin audit --head > head.json`.
        #[arg(long, conflicts_with_all = ["verify", "against"])]
        head: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_category(s: &str) -> Result<Category, String> {
    s.parse()
        .map_err(|e: crate::notice::NoticeError| e.to_string())
}

fn parse_kind(s: &str) -> Result<NoticeKind, String> {
    match s.parse::<NoticeKind>() {
        Ok(NoticeKind::Reply) => Err("use `kring notice reply` to file a reply".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kring").chain(args.iter().copied()))
    }

    #[test]
    fn the_grammar_parses_the_documented_commands() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = parse(&[
            "--profile",
            "p",
            "notice",
            "file",
            "--community",
            "desinformatie@bz",
            "--label",
            "NL:STG-CONFIDENTIEEL",
            "--category",
            "disinformation",
            "--title",
            "T",
            "--body",
            "B",
        ])
        .unwrap();
        match cli.command {
            Command::Notice(NoticeCommand::File {
                category,
                kind,
                body,
                ..
            }) => {
                assert_eq!(category, Category::Disinformation);
                assert_eq!(kind, NoticeKind::Signal);
                assert_eq!(body.body.as_deref(), Some("B"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["community", "admins", "x", "add", "liaison@bz"]).is_ok());
        assert!(parse(&["keys", "publish", "--count", "5"]).is_ok());
        assert!(parse(&["label", "check", "TLP:RED", "--clearance", "NL:STG-GEHEIM"]).is_ok());
    }

    #[test]
    fn key_updates_and_update_periods_parse() {
        assert!(matches!(
            parse(&["keys", "update"]).unwrap().command,
            Command::Keys(KeysCommand::Update { community: None })
        ));
        match parse(&["keys", "update", "--community", "c@bz"])
            .unwrap()
            .command
        {
            Command::Keys(KeysCommand::Update { community }) => {
                assert_eq!(community.as_deref(), Some("c@bz"));
            }
            other => panic!("{other:?}"),
        }
        let create = |extra: &[&str]| {
            let mut args = vec!["community", "create", "c", "--max-label", "TLP:GREEN"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Community(CommunityCommand::Create { update_days, .. }) => update_days,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(create(&[]).unwrap(), 7);
        assert_eq!(create(&["--update-days", "30"]).unwrap(), 30);
        assert!(create(&["--update-days", "0"]).is_err());
        assert!(create(&["--update-days", "366"]).is_err());
        let retention = |extra: &[&str]| {
            let mut args = vec!["community", "create", "c", "--max-label", "TLP:GREEN"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Community(CommunityCommand::Create { retention, .. }) => retention,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(retention(&[]).unwrap(), None);
        assert_eq!(retention(&["--retention", "90"]).unwrap(), Some(90));
        assert!(retention(&["--retention", "0"]).is_err());
        assert!(retention(&["--retention", "3651"]).is_err());
        match parse(&["admin", "revoke", "a@bz", "--reason", "lost", "--wipe"])
            .unwrap()
            .command
        {
            Command::Admin(AdminCommand::Revoke { wipe, .. }) => assert!(wipe),
            other => panic!("{other:?}"),
        }
        match parse(&["admin", "revoke", "a@bz", "--reason", "lost"])
            .unwrap()
            .command
        {
            Command::Admin(AdminCommand::Revoke { wipe, .. }) => assert!(!wipe),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn whoami_and_enroll_parse() {
        assert!(matches!(
            parse(&["whoami", "--json"]).unwrap().command,
            Command::Whoami { json: true }
        ));
        match parse(&["enroll", "--user", "consul@bz", "--out", "d"])
            .unwrap()
            .command
        {
            Command::Enroll {
                user,
                out,
                organisation: None,
                ..
            } => assert_eq!((user.as_str(), out), ("consul@bz", PathBuf::from("d"))),
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["enroll", "--user", "consul@bz"]).is_err(),
            "no --out"
        );
        assert!(parse(&["enroll", "--out", "d"]).is_err(), "no --user");
        assert!(
            parse(&[
                "enroll",
                "--user",
                "c@bz",
                "--out",
                "d",
                "--organisation",
                "ministerie"
            ])
            .is_ok()
        );
    }

    #[test]
    fn audit_heads_are_printed_alone_and_checked_with_verify() {
        match parse(&["admin", "audit", "--verify", "--against", "h.json"])
            .unwrap()
            .command
        {
            Command::Admin(AdminCommand::Audit {
                verify: true,
                against: Some(path),
                head: false,
                json: false,
            }) => assert_eq!(path, PathBuf::from("h.json")),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["admin", "audit", "--head"]).is_ok());
        assert!(parse(&["admin", "audit", "--against", "h.json"]).is_err());
        assert!(parse(&["admin", "audit", "--head", "--verify"]).is_err());
    }

    #[test]
    fn the_wait_timeout_defaults_to_10_s_and_is_bounded() {
        let file = |extra: &[&str]| {
            let mut args = vec![
                "notice",
                "file",
                "--community",
                "c@bz",
                "--label",
                "TLP:GREEN",
                "--category",
                "cyber",
                "--title",
                "t",
            ];
            args.extend_from_slice(extra);
            parse(&args)
        };
        match file(&[]).unwrap().command {
            Command::Notice(NoticeCommand::File { wait, .. }) => {
                assert_eq!(wait.seconds, 10);
                assert_eq!(wait.duration(), std::time::Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        match file(&["--wait-timeout", "0"]).unwrap().command {
            Command::Notice(NoticeCommand::File { wait, .. }) => assert_eq!(wait.seconds, 0),
            other => panic!("{other:?}"),
        }
        assert!(file(&["--wait-timeout", "601"]).is_err());
        assert!(file(&["--wait-timeout", "-1"]).is_err());
        assert!(file(&["--wait-timeout", "soon"]).is_err());
        match parse(&[
            "notice",
            "reply",
            "abcdef12",
            "--label",
            "TLP:GREEN",
            "--wait-timeout",
            "3",
        ])
        .unwrap()
        .command
        {
            Command::Notice(NoticeCommand::Reply { wait, .. }) => assert_eq!(wait.seconds, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_usage_is_refused() {
        assert!(parse(&["notice", "file", "--community", "c"]).is_err());
        assert!(parse(&["keys", "publish", "--count", "0"]).is_err());
        assert!(parse(&["community", "add", "c"]).is_err(), "no users");
        let both = parse(&[
            "notice",
            "file",
            "--community",
            "c",
            "--label",
            "TLP:RED",
            "--category",
            "cyber",
            "--title",
            "t",
            "--body",
            "b",
            "--body-file",
            "f",
        ]);
        assert!(both.is_err(), "--body and --body-file together");
        let bad_cat = parse(&[
            "notice",
            "file",
            "--community",
            "c",
            "--label",
            "TLP:RED",
            "--category",
            "gossip",
            "--title",
            "t",
        ])
        .unwrap_err();
        assert!(bad_cat.to_string().contains("espionage"), "{bad_cat}");
        assert!(
            parse(&[
                "notice",
                "file",
                "--community",
                "c",
                "--label",
                "TLP:RED",
                "--category",
                "cyber",
                "--title",
                "t",
                "--kind",
                "reply",
            ])
            .is_err()
        );
    }
}

//! Notices out of Kring, for the tools organisations already run: a STIX 2.1 bundle
//! ([`stix`]), a MISP feed ([`misp`]), and the TAXII 2.1 service
//! ([`crate::taxii`]) built on the same objects. STIX content coming in is checked
//! by [`validate`].
//!
//! What may leave is decided here, on the device, and only with the policy
//! crate's rules: a notice is exported when its label is within the destination's
//! accreditation (`--max-label`, [`kring_policy::within`]) and its TLP allows an
//! export to the organisation's own platform ([`kring_policy::may_forward`] to
//! [`ForwardTarget::export`]: every colour but RED, whose TLP marking travels along).

pub mod ids;
pub mod misp;
pub mod stix;
pub mod validate;

use std::path::{Path, PathBuf};

use kring_policy::{ForwardTarget, Label, may_forward, within};
use time::OffsetDateTime;

use crate::cli::Out;
use crate::client::Client;
use crate::error::{ClientError, EXIT_OK, EXIT_UNREACHABLE, Result};
use crate::labels::parse_label;
use crate::notice::Notice;
use stix::Exported;

/// `--format` of `kring notice export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One STIX 2.1 bundle.
    Stix,
    /// A MISP feed directory.
    Misp,
}

/// Why a notice may not leave Kring for a destination (see [`admits`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportRefusal {
    /// The notice's label does not parse (a notice of a newer version of Kring, or
    /// a damaged one): it is withheld.
    #[error("label {label:?}: {reason}")]
    InvalidLabel {
        /// The label's text.
        label: String,
        /// The parser's explanation.
        reason: kring_policy::PolicyError,
    },
    /// The label is above the destination's accreditation (`--max-label`); a
    /// destination accredited higher may receive it.
    #[error("{0}")]
    AboveMaximum(kring_policy::Decision),
    /// The label's TLP does not allow an export to the organisation's own platform
    /// (TLP:RED).
    #[error("{0}")]
    Tlp(kring_policy::Decision),
}

/// Whether a notice labelled `label` may leave Kring for a destination accredited up
/// to `max`: within `max`, and its TLP allows an export. The refusal says which
/// rule refused it.
pub fn admits(
    label: &str,
    max: &Label,
    exporter_org: &str,
) -> std::result::Result<Label, ExportRefusal> {
    let parsed: Label = label
        .parse()
        .map_err(|reason| ExportRefusal::InvalidLabel {
            label: label.to_owned(),
            reason,
        })?;
    let fits = within(&parsed, max);
    if !fits.allowed {
        return Err(ExportRefusal::AboveMaximum(fits));
    }
    let tlp = may_forward(&parsed, exporter_org, &ForwardTarget::export());
    if !tlp.allowed {
        return Err(ExportRefusal::Tlp(tlp));
    }
    Ok(parsed)
}

/// Which notices to export.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Only this community (resolved `NAME@HUB`).
    pub community: Option<String>,
    /// Only notices filed at or after this time.
    pub since: Option<OffsetDateTime>,
    /// The destination's accreditation.
    pub max_label: Label,
    /// The exporting user's organisation.
    pub organisation: String,
}

/// The notices a filter admits, and how many it withheld by label or TLP.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    /// Admitted, in the order given.
    pub admitted: Vec<&'a Notice>,
    /// Withheld by the label or TLP rule (not counting other communities or older notices).
    pub withheld: usize,
}

/// Applies `filter` to `notices`.
pub fn select<'a>(notices: &'a [Notice], filter: &Filter) -> Selection<'a> {
    let mut out = Selection::default();
    for n in notices {
        if filter.community.as_ref().is_some_and(|c| &n.community != c)
            || filter.since.is_some_and(|t| n.filed_at < t)
        {
            continue;
        }
        match admits(&n.label, &filter.max_label, &filter.organisation) {
            Ok(_) => out.admitted.push(n),
            Err(reason) => {
                tracing::debug!(notice = %n.id, %reason, "withheld from export");
                out.withheld += 1;
            }
        }
    }
    out
}

/// Parses `--since`: an RFC 3339 time (`2025-03-01T12:00:00Z`) or a date (`2025-03-01`, midnight UTC).
pub fn parse_since(text: &str) -> Result<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.to_offset(time::UtcOffset::UTC));
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date_format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            ClientError::Usage(format!(
                "--since {text:?}: expected a time like 2025-03-01T12:00:00Z or a date like 2025-03-01"
            ))
        })
}

/// The organisation of a sender `NAME@RELAY`: its relay's, as the federation's trust
/// map names it (the relay id when the device has not learnt it).
pub(crate) fn organisation_of(client: &Client, sender: &str) -> String {
    let relay = sender.rsplit_once('@').map_or(sender, |(_, r)| r);
    client
        .validator
        .trust()
        .organisation_of(relay)
        .unwrap_or(relay)
        .to_owned()
}

/// Syncs, carrying on with what the device has when the relay cannot be reached.
pub(crate) async fn sync_if_reachable(client: &mut Client) -> Result<()> {
    match client.sync().await {
        Ok(_) => Ok(()),
        Err(e) if e.exit_code() == EXIT_UNREACHABLE => {
            eprintln!("kring: warning: {e}; exporting what this device has");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `kring notice export`.
#[derive(Debug, Clone)]
pub struct ExportArgs {
    /// `--community`.
    pub community: Option<String>,
    /// `--since`.
    pub since: Option<String>,
    /// `--max-label`.
    pub max_label: String,
    /// `--format`.
    pub format: Format,
    /// `--out`.
    pub out: Option<PathBuf>,
}

/// Runs `kring notice export`.
pub async fn run(client: &mut Client, args: ExportArgs, out: &mut Out) -> Result<i32> {
    let max_label = parse_label(&args.max_label)?;
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let community = args
        .community
        .as_deref()
        .map(|c| client.resolve_community(c))
        .transpose()?;
    if args.format == Format::Misp && args.out.is_none() {
        return Err(ClientError::Usage(
            "--format misp writes a feed directory: give --out DIR".into(),
        ));
    }
    sync_if_reachable(client).await?;
    let notices = client.notices(community.as_deref())?;
    let filter = Filter {
        community,
        since,
        max_label,
        organisation: client.me.organisation.clone(),
    };
    let selection = select(&notices, &filter);
    let orgs: Vec<String> = selection
        .admitted
        .iter()
        .map(|n| organisation_of(client, &n.sender))
        .collect();
    let items: Vec<Exported<'_>> = selection
        .admitted
        .iter()
        .zip(&orgs)
        .map(|(notice, organisation)| Exported {
            notice,
            organisation,
        })
        .collect();
    match (args.format, &args.out) {
        (Format::Stix, None) => {
            let text = serde_json::to_string_pretty(&stix::bundle(&items))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            out.line(&text);
        }
        (Format::Stix, Some(path)) => {
            let mut text = serde_json::to_vec_pretty(&stix::bundle(&items))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            text.push(b'\n');
            write_file(path, &text)?;
        }
        (Format::Misp, Some(dir)) => {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
            for file in misp::feed(&items) {
                write_file(&dir.join(&file.name), &file.content)?;
            }
        }
        (Format::Misp, None) => {}
    }
    eprintln!(
        "kring: exported {} notice(s); {} withheld (label not within {}, or TLP:RED, which is \
         never exported)",
        items.len(),
        selection.withheld,
        filter.max_label
    );
    Ok(EXIT_OK)
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then a rename; owner-only
/// permissions (the export holds notice content).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| ClientError::Usage(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ClientError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stix::tests::notice;

    fn filter(max: &str) -> Filter {
        Filter {
            community: None,
            since: None,
            max_label: max.parse().unwrap(),
            organisation: "bz".into(),
        }
    }

    #[test]
    fn notices_within_the_maximum_leave_except_red() {
        let notices = vec![
            notice(1, "NL:STG-CONFIDENTIEEL;TLP=CLEAR", None),
            notice(2, "NL:STG-GEHEIM;TLP=CLEAR", None),
            notice(3, "NL:ONGERUBRICEERD;TLP=RED", None),
            notice(4, "NL:ONGERUBRICEERD;TLP=GREEN", None),
            notice(5, "NL:ONGERUBRICEERD;TLP=AMBER", None),
            notice(6, "NL:ONGERUBRICEERD;TLP=AMBER+STRICT", None),
            notice(7, "NL:ONGERUBRICEERD", None),
            notice(8, "TLP:CLEAR", None),
            notice(9, "NATO:NATO-CONFIDENTIAL;TLP=CLEAR", None),
        ];
        let s = select(&notices, &filter("NL:STG-CONFIDENTIEEL"));
        let ids: Vec<_> = s.admitted.iter().map(|n| n.id).collect();
        let want: Vec<_> = [0, 3, 4, 5, 6, 7, 8]
            .iter()
            .map(|&i| notices[i].id)
            .collect();
        assert_eq!(ids, want, "all but the STG-GEHEIM notice and the RED one");
        assert_eq!(s.withheld, 2);
        // A higher maximum admits the STG-GEHEIM notice too; RED never leaves.
        let s = select(&notices, &filter("NL:STG-ZEER-GEHEIM"));
        assert_eq!(s.admitted.len(), 8);
        assert!(
            s.admitted.iter().all(|n| {
                n.label.parse::<Label>().unwrap().tlp() != Some(kring_policy::Tlp::Red)
            })
        );
    }

    #[test]
    fn red_is_refused_with_the_policy_reason() {
        let max: Label = "NL:STG-ZEER-GEHEIM".parse().unwrap();
        let err = admits("NL:ONGERUBRICEERD;TLP=RED", &max, "bz").unwrap_err();
        assert!(matches!(err, ExportRefusal::Tlp(_)), "{err}");
        assert!(
            err.to_string().contains("TLP:RED may not be forwarded"),
            "{err}"
        );
        let err = admits(
            "NL:STG-ZEER-GEHEIM;TLP=CLEAR",
            &"NL:STG-GEHEIM".parse().unwrap(),
            "bz",
        )
        .unwrap_err();
        assert!(matches!(err, ExportRefusal::AboveMaximum(_)), "{err}");
        assert!(err.to_string().contains("above maximum label"), "{err}");
        let err = admits("NL:NOPE", &max, "bz").unwrap_err();
        assert!(matches!(err, ExportRefusal::InvalidLabel { .. }), "{err}");
        assert!(err.to_string().starts_with("label \"NL:NOPE\": "), "{err}");
    }

    #[test]
    fn the_command_line_needs_a_maximum_and_a_format() {
        use clap::Parser;

        use crate::cli::args::{Cli, Command, NoticeCommand};
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["kring", "notice", "export"].iter().chain(args.iter()))
        };
        match parse(&[
            "--max-label",
            "NL:STG-GEHEIM",
            "--format",
            "misp",
            "--out",
            "d",
        ])
        .unwrap()
        .command
        {
            Command::Notice(NoticeCommand::Export { format, out, .. }) => {
                assert_eq!(format, Format::Misp);
                assert_eq!(out.as_deref(), Some(Path::new("d")));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["--format", "stix"]).is_err(), "no --max-label");
        assert!(parse(&["--max-label", "TLP:CLEAR"]).is_err(), "no --format");
        assert!(parse(&["--max-label", "TLP:CLEAR", "--format", "csv"]).is_err());
    }

    #[test]
    fn community_and_since_narrow_the_selection() {
        let mut a = notice(1, "TLP:CLEAR", None);
        a.community = "other@bz".into();
        let mut b = notice(2, "TLP:CLEAR", None);
        b.filed_at = time::macros::datetime!(2025-04-01 00:00:00 UTC);
        let notices = vec![a, b];
        let mut f = filter("NL:STG-GEHEIM");
        f.community = Some("intel@bz".into());
        assert_eq!(select(&notices, &f).admitted.len(), 1);
        f.community = None;
        f.since = Some(parse_since("2025-03-15").unwrap());
        let s = select(&notices, &f);
        assert_eq!(s.admitted.len(), 1);
        assert_eq!(s.admitted[0].id, notices[1].id);
        assert_eq!(s.withheld, 0);
        assert!(parse_since("2025-03-01T12:00:00Z").is_ok());
        assert!(parse_since("yesterday").is_err());
    }
}

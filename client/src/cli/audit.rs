//! `kring admin audit [--verify [--against HEAD_FILE]] [--head] [--json]`: the home
//! relay's audit log, one line (or JSON object) per record, then with `--verify` the
//! relay's chain check and the device's own; `--head` prints a signed head to keep
//! and check the log against later.

use std::path::Path;

use kring_protocol::audit::{MAX_HEAD_FILE, SignedAuditHead};
use kring_protocol::wire::{AuditRecordView, AuditVerdict};
use serde::Serialize;

use super::Out;
use super::output::json_line;
use crate::audit::LocalCheck;
use crate::client::Client;
use crate::error::{ClientError, EXIT_OK, EXIT_OTHER, Result};

/// Runs `kring admin audit`; exit 1 when a chain check (the relay's, the device's,
/// or against a saved head) finds the log broken.
pub async fn run(
    client: &mut Client,
    verify: bool,
    against: Option<&Path>,
    json: bool,
    out: &mut Out,
) -> Result<i32> {
    let against = against.map(read_head).transpose()?;
    let summary = client
        .audit_each_against(verify, against.as_ref(), |record| {
            out.line(&if json {
                json_line(&RecordLine::from(&record))
            } else {
                record_line(&record)
            });
        })
        .await?;
    let Some(verdict) = summary.verify else {
        return Ok(EXIT_OK);
    };
    out.line(&if json {
        json_line(&VerdictLine { verify: &verdict })
    } else {
        verdict_line(&verdict)
    });
    let mut intact = verdict.first_bad.is_none();
    if let Some(local) = &summary.local {
        out.line(&if json {
            json_line(&LocalLine::from(local))
        } else {
            local_line(local)
        });
        if let (Some(result), Some(head)) = (&local.against, &against) {
            out.line(&if json {
                json_line(&AgainstLine::new(result, head))
            } else {
                against_line(result, head)
            });
        }
        intact &= local.intact();
    }
    Ok(if intact { EXIT_OK } else { EXIT_OTHER })
}

/// Runs `kring admin audit --head`: one JSON line with the signed head.
pub async fn head(client: &mut Client, out: &mut Out) -> Result<i32> {
    let page = client.audit_head().await?;
    out.line(&page.head.to_json());
    Ok(EXIT_OK)
}

/// Reads a head saved with `--head`.
fn read_head(path: &Path) -> Result<SignedAuditHead> {
    let io = |reason: String| ClientError::Io {
        path: path.display().to_string(),
        reason,
    };
    let text =
        crate::profile::read_text(path, MAX_HEAD_FILE as u64).map_err(|e| io(e.to_string()))?;
    SignedAuditHead::from_json(text.trim()).map_err(|e| io(e.to_string()))
}

/// The line of `--verify` with the device's own check.
pub fn local_line(local: &LocalCheck) -> String {
    match &local.chain {
        Ok(s) => format!(
            "checked on this device: {} records, {} signed checkpoint(s) verified, {} certificate(s) of the relay chained to the trust anchors",
            s.records, s.checkpoints, local.certificates
        ),
        Err(b) => format!(
            "audit chain BROKEN at record {} (checked on this device): {}",
            b.seq,
            printable(&b.reason)
        ),
    }
}

/// The line of `--verify --against`.
pub fn against_line(
    result: &std::result::Result<u64, crate::audit::AuditHeadError>,
    head: &SignedAuditHead,
) -> String {
    match result {
        Ok(n) => format!(
            "matches the head relay {} signed at {}: record {n} is unchanged",
            printable(&head.relay),
            rfc3339(head.at)
        ),
        Err(e) => printable(&e.to_string()),
    }
}

/// The JSON line of the device's check:
/// `{"local":{"records","checkpoints","certificates","first_bad","reason"}}`.
#[derive(Debug, Serialize)]
pub struct LocalLine {
    /// The check.
    pub local: LocalVerdict,
}

/// The device's check as JSON.
#[derive(Debug, Serialize)]
pub struct LocalVerdict {
    /// Records checked.
    pub records: u64,
    /// Checkpoint signatures verified.
    pub checkpoints: u64,
    /// Certificates of the relay, chained to the trust anchors.
    pub certificates: usize,
    /// The first bad record, if any.
    pub first_bad: Option<u64>,
    /// What is wrong with it.
    pub reason: Option<String>,
}

impl From<&LocalCheck> for LocalLine {
    fn from(l: &LocalCheck) -> Self {
        let local = match &l.chain {
            Ok(s) => LocalVerdict {
                records: s.records,
                checkpoints: s.checkpoints,
                certificates: l.certificates,
                first_bad: None,
                reason: None,
            },
            Err(b) => LocalVerdict {
                records: b.seq.saturating_sub(1),
                checkpoints: 0,
                certificates: l.certificates,
                first_bad: Some(b.seq),
                reason: Some(b.reason.clone()),
            },
        };
        LocalLine { local }
    }
}

/// The JSON line of `--against`: `{"against":{"relay","records","at","matches","reason"}}`.
#[derive(Debug, Serialize)]
pub struct AgainstLine<'a> {
    /// The comparison.
    pub against: AgainstVerdict<'a>,
}

/// The comparison with a saved head as JSON.
#[derive(Debug, Serialize)]
pub struct AgainstVerdict<'a> {
    /// The head's relay.
    pub relay: &'a str,
    /// Records the head covers.
    pub records: u64,
    /// When it was signed (RFC 3339 UTC).
    pub at: String,
    /// Whether the log still holds the head's last record unchanged.
    pub matches: bool,
    /// What is wrong, if anything.
    pub reason: Option<String>,
}

impl<'a> AgainstLine<'a> {
    fn new(
        result: &std::result::Result<u64, crate::audit::AuditHeadError>,
        head: &'a SignedAuditHead,
    ) -> Self {
        AgainstLine {
            against: AgainstVerdict {
                relay: &head.relay,
                records: head.records,
                at: rfc3339(head.at),
                matches: result.is_ok(),
                reason: result.as_ref().err().map(|e| e.to_string()),
            },
        }
    }
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2025-03-01T12:30:00Z`); a time
/// outside the calendar's range is shown as the raw number of seconds.
pub fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string())
}

/// `#SEQ TIME KIND ACTOR SUBJECT ACTION: DETAIL`, control characters escaped so a
/// record cannot forge further lines or terminal output.
pub fn record_line(r: &AuditRecordView) -> String {
    format!(
        "#{} {} {} {} {} {}: {}",
        r.seq,
        rfc3339(r.at),
        printable(&r.kind),
        printable(&r.actor),
        printable(&r.subject),
        printable(&r.action),
        printable(&r.detail)
    )
}

/// The last line of `--verify`.
pub fn verdict_line(v: &AuditVerdict) -> String {
    match v.first_bad {
        None => format!(
            "audit chain intact: {} records, {} signed checkpoint(s) verified, {} record(s) after the last one",
            v.records, v.checkpoints, v.unsigned_tail
        ),
        Some(bad) => format!(
            "audit chain BROKEN at record {bad}: {}",
            printable(v.reason.as_deref().unwrap_or("no reason given"))
        ),
    }
}

/// A record as a JSON line: `{"seq","at","kind","actor","subject","action","detail","hash"}`.
#[derive(Debug, Serialize)]
pub struct RecordLine<'a> {
    /// 1-based position in the log.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub at: String,
    /// Category.
    pub kind: &'a str,
    /// Who acted.
    pub actor: &'a str,
    /// What it concerned.
    pub subject: &'a str,
    /// Action name.
    pub action: &'a str,
    /// Reason or detail.
    pub detail: &'a str,
    /// Chain hash (hex).
    pub hash: &'a str,
}

impl<'a> From<&'a AuditRecordView> for RecordLine<'a> {
    fn from(r: &'a AuditRecordView) -> Self {
        RecordLine {
            seq: r.seq,
            at: rfc3339(r.at),
            kind: &r.kind,
            actor: &r.actor,
            subject: &r.subject,
            action: &r.action,
            detail: &r.detail,
            hash: &r.hash,
        }
    }
}

/// The last JSON line of `--verify --json`: `{"verify":{"records","first_bad","reason"}}`.
#[derive(Debug, Serialize)]
pub struct VerdictLine<'a> {
    /// The relay's chain check.
    pub verify: &'a AuditVerdict,
}

/// `text` with control characters (line breaks, escapes) written as `\u{..}`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecordView {
        AuditRecordView {
            seq: 7,
            at: 1_740_832_200,
            kind: "refusal".into(),
            actor: "liaison@bz".into(),
            subject: "hoog@bz".into(),
            action: "handshake".into(),
            detail: "refused by policy: too low\n#8 forged".into(),
            hash: "ab12".into(),
        }
    }

    #[test]
    fn a_record_is_one_line_with_rfc3339_utc_time() {
        assert_eq!(
            record_line(&record()),
            "#7 2025-03-01T12:30:00Z refusal liaison@bz hoog@bz handshake: \
             refused by policy: too low\\u{a}#8 forged"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn json_lines_have_exactly_the_documented_fields_in_order() {
        let line = json_line(&RecordLine::from(&record()));
        assert!(line.starts_with(r#"{"seq":7,"at":"2025-03-01T12:30:00Z","kind":"refusal""#));
        assert!(!line.contains('\n'));
        let fields = [
            "seq", "at", "kind", "actor", "subject", "action", "detail", "hash",
        ];
        let positions: Vec<usize> = fields
            .iter()
            .map(|f| line.find(&format!("\"{f}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        let parsed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).unwrap();
        assert_eq!(parsed.len(), fields.len());

        let intact = AuditVerdict {
            records: 12,
            first_bad: None,
            reason: None,
            checkpoints: 2,
            unsigned_tail: 3,
        };
        assert_eq!(
            json_line(&VerdictLine { verify: &intact }),
            r#"{"verify":{"records":12,"first_bad":null,"reason":null,"checkpoints":2,"unsigned_tail":3}}"#
        );
    }

    #[test]
    fn the_device_and_head_lines_say_intact_or_what_is_wrong() {
        use crate::audit::{AuditBreak, AuditHeadError, ChainSummary};
        let mut local = LocalCheck {
            chain: Ok(ChainSummary {
                records: 12,
                checkpoints: 2,
                unsigned_tail: 3,
            }),
            certificates: 2,
            against: Some(Ok(10)),
        };
        assert!(local.intact());
        assert_eq!(
            local_line(&local),
            "checked on this device: 12 records, 2 signed checkpoint(s) verified, \
             2 certificate(s) of the relay chained to the trust anchors"
        );
        let head = SignedAuditHead {
            relay: "bz".into(),
            records: 10,
            hash: [0; 32],
            at: 1_740_832_200,
            signature: vec![0; 64],
            chain: vec![vec![0]],
        };
        assert_eq!(
            against_line(&Ok(10), &head),
            "matches the head relay bz signed at 2025-03-01T12:30:00Z: record 10 is unchanged"
        );
        let cut = Err(AuditHeadError::Truncated { have: 4, want: 10 });
        assert!(against_line(&cut, &head).contains("TRUNCATED"));
        assert_eq!(
            json_line(&AgainstLine::new(&cut, &head)),
            r#"{"against":{"relay":"bz","records":10,"at":"2025-03-01T12:30:00Z","matches":false,"reason":"audit log TRUNCATED: the signed head covers 10 records, the log holds only 4"}}"#
        );
        local.against = Some(cut);
        assert!(!local.intact());
        local.chain = Err(AuditBreak {
            seq: 5,
            reason: "edited\n".into(),
        });
        assert_eq!(
            local_line(&local),
            "audit chain BROKEN at record 5 (checked on this device): edited\\u{a}"
        );
        assert_eq!(
            json_line(&LocalLine::from(&local)),
            r#"{"local":{"records":4,"checkpoints":0,"certificates":2,"first_bad":5,"reason":"edited\n"}}"#
        );
    }

    #[test]
    fn the_verdict_line_says_intact_or_where_it_broke() {
        let intact = AuditVerdict {
            records: 12,
            first_bad: None,
            reason: None,
            checkpoints: 2,
            unsigned_tail: 3,
        };
        assert_eq!(
            verdict_line(&intact),
            "audit chain intact: 12 records, 2 signed checkpoint(s) verified, 3 record(s) after the last one"
        );
        let broken = AuditVerdict {
            records: 4,
            first_bad: Some(5),
            reason: Some("hash mismatch".into()),
            checkpoints: 0,
            unsigned_tail: 0,
        };
        assert_eq!(
            verdict_line(&broken),
            "audit chain BROKEN at record 5: hash mismatch"
        );
    }
}

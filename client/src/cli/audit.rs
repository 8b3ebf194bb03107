//! `kring admin audit [--verify] [--json]`: the home relay's audit log, one line
//! (or JSON object) per record, then with `--verify` the relay's chain check.

use kring_protocol::wire::{AuditRecordView, AuditVerdict};
use serde::Serialize;

use super::Out;
use super::output::json_line;
use crate::client::Client;
use crate::error::{EXIT_OK, EXIT_OTHER, Result};

/// Runs `kring admin audit`; exit 1 when the chain check finds the log broken.
pub async fn run(client: &mut Client, verify: bool, json: bool, out: &mut Out) -> Result<i32> {
    let summary = client
        .audit_each(verify, |record| {
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
    Ok(if verdict.first_bad.is_some() {
        EXIT_OTHER
    } else {
        EXIT_OK
    })
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
    fn json_lines_have_exactly_the_spec_fields_in_order() {
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

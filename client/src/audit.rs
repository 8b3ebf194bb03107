//! Reading the home relay's audit log (`kring admin audit`): one page at a time
//! ([`Client::audit_log`]) or the whole log ([`Client::audit_each`],
//! [`Client::audit_all`]), with the relay's check of its hash chain.
//!
//! Only org-admins of the relay's own organisation may read it; anyone else gets
//! [`ErrorCode::Unauthenticated`](kring_protocol::wire::ErrorCode::Unauthenticated)
//! (exit 4).

use kring_protocol::wire::{AuditPage, AuditRecordView, AuditVerdict, Request, Response, limits};

use crate::client::{Client, unexpected};
use crate::error::{ClientError, Result};

/// Records asked for per page when reading the whole log (the relay's maximum).
pub const AUDIT_PAGE: u32 = limits::MAX_PAGE;

/// Most records [`Client::audit_each`] reads in one run; a longer log is an error
/// rather than an endless read.
pub const MAX_AUDIT_RECORDS: u64 = 10_000_000;

/// What reading the whole log found besides the records themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// The relay whose log it is.
    pub relay: String,
    /// Records read (all records the log held when the last page was read).
    pub read: u64,
    /// The relay's check of the whole chain, taken after the last page, if asked for.
    pub verify: Option<AuditVerdict>,
}

impl Client {
    /// One page of the home relay's audit log: up to `limit` records (at most
    /// [`AUDIT_PAGE`]) from record `from` on (records count from 1), and with
    /// `verify` the relay's check of the whole hash chain.
    ///
    /// Not an org-admin of the relay's organisation: [`ClientError::Relay`] with
    /// `Unauthenticated` (exit 4).
    pub async fn audit_log(&mut self, from: u64, limit: u32, verify: bool) -> Result<AuditPage> {
        let limit = limit.min(AUDIT_PAGE);
        let request = Request::AuditLog {
            from,
            limit,
            verify,
        };
        let page = match self.call(&request).await? {
            Response::AuditLog(page) => page,
            other => return Err(unexpected("AuditLog", &other)),
        };
        check_page(&page, from.max(1), limit, verify, self.relay_id())?;
        Ok(page)
    }

    /// Reads the whole audit log page by page ([`AUDIT_PAGE`] records each), handing
    /// every record to `on_record` in order; with `verify`, asks the relay to check
    /// the chain once all pages are read, so the verdict covers every record shown.
    pub async fn audit_each(
        &mut self,
        verify: bool,
        mut on_record: impl FnMut(AuditRecordView) + Send,
    ) -> Result<AuditSummary> {
        let mut next = 1u64;
        let relay = loop {
            let page = self.audit_log(next, AUDIT_PAGE, false).await?;
            let last_page = page.records.is_empty()
                || page.records.len() < AUDIT_PAGE as usize
                || page.records.last().is_some_and(|r| r.seq >= page.total);
            for record in page.records {
                next = record.seq.saturating_add(1);
                on_record(record);
            }
            if next - 1 > MAX_AUDIT_RECORDS {
                return Err(ClientError::Protocol(format!(
                    "the audit log of relay {} holds more than {MAX_AUDIT_RECORDS} records; \
                     read it in pages with `Client::audit_log`",
                    page.relay
                )));
            }
            if last_page {
                break page.relay;
            }
        };
        let verify = if verify {
            let page = self.audit_log(next, 0, true).await?;
            page.verify
        } else {
            None
        };
        Ok(AuditSummary {
            relay,
            read: next - 1,
            verify,
        })
    }

    /// The whole audit log in one [`AuditPage`] (see [`audit_each`](Self::audit_each));
    /// `total` is the number of records read.
    pub async fn audit_all(&mut self, verify: bool) -> Result<AuditPage> {
        let mut records = Vec::new();
        let summary = self.audit_each(verify, |r| records.push(r)).await?;
        Ok(AuditPage {
            relay: summary.relay,
            total: summary.read,
            records,
            verify: summary.verify,
        })
    }
}

/// Checks that a page is the one asked for: the home relay's, consecutive records
/// from `from` on, no more than `limit`, and a verdict exactly when asked for.
fn check_page(page: &AuditPage, from: u64, limit: u32, verify: bool, relay: &str) -> Result<()> {
    let bad = |what: String| Err(ClientError::Protocol(format!("audit log page: {what}")));
    if page.relay != relay {
        return bad(format!("it is relay {}'s log, not {relay}'s", page.relay));
    }
    if page.records.len() > limit as usize {
        return bad(format!(
            "{} records where at most {limit} were asked for",
            page.records.len()
        ));
    }
    for (i, record) in page.records.iter().enumerate() {
        let want = from.saturating_add(i as u64);
        if record.seq != want {
            return bad(format!(
                "record {} where record {want} should be",
                record.seq
            ));
        }
    }
    if page.verify.is_some() != verify {
        return bad("the chain check is missing or was not asked for".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> AuditRecordView {
        AuditRecordView {
            seq,
            at: 1_700_000_000,
            kind: "refusal".into(),
            actor: "liaison@bz".into(),
            subject: "-".into(),
            action: "audit-log".into(),
            detail: "no".into(),
            hash: "00".into(),
        }
    }

    fn page(seqs: &[u64], verify: bool) -> AuditPage {
        AuditPage {
            relay: "bz".into(),
            total: 10,
            records: seqs.iter().copied().map(record).collect(),
            verify: verify.then_some(AuditVerdict {
                records: 10,
                first_bad: None,
                reason: None,
                checkpoints: 1,
                unsigned_tail: 0,
            }),
        }
    }

    #[test]
    fn a_consecutive_page_of_the_home_relay_is_accepted() {
        assert!(check_page(&page(&[3, 4, 5], false), 3, 3, false, "bz").is_ok());
        assert!(check_page(&page(&[], true), 11, 0, true, "bz").is_ok());
    }

    #[test]
    fn pages_that_do_not_fit_the_request_are_protocol_errors() {
        let cases = [
            (
                check_page(&page(&[1], false), 1, 1, false, "nctv"),
                "relay bz",
            ),
            (
                check_page(&page(&[1, 2], false), 1, 1, false, "bz"),
                "at most 1",
            ),
            (
                check_page(&page(&[1, 3], false), 1, 5, false, "bz"),
                "record 3",
            ),
            (
                check_page(&page(&[2], false), 1, 5, false, "bz"),
                "record 2",
            ),
            (
                check_page(&page(&[1], false), 1, 5, true, "bz"),
                "chain check",
            ),
            (
                check_page(&page(&[1], true), 1, 5, false, "bz"),
                "chain check",
            ),
        ];
        for (result, want) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.exit_code(), 1, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }
}

//! Reading the home relay's audit log (`kring admin audit`): one page at a time
//! ([`Client::audit_log`]) or the whole log ([`Client::audit_each`],
//! [`Client::audit_all`]), with the relay's check of its hash chain and, with
//! `verify`, the device's own check of every record it was shown
//! ([`LocalCheck`]): hashes and links recomputed, every checkpoint signature
//! verified with the certificate it names, every certificate the relay signed with
//! chained to the profile's trust anchors. [`Client::audit_head`] gets a head of the
//! log signed by the relay, to keep; [`Client::audit_each_against`] checks the log
//! against such a head later, which detects a cut tail.
//!
//! Only org-admins of the relay's own organisation may read it; anyone else gets
//! [`ErrorCode::Unauthenticated`](kring_protocol::wire::ErrorCode::Unauthenticated)
//! (exit 4).

pub use kring_protocol::audit::{
    AuditBreak, AuditHeadError, AuditHeadPage, ChainSummary, SignedAuditHead,
};
use kring_protocol::audit::{ChainCheck, RecordFields, from_hex, kind_number};
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
    /// The device's own check of the records read, if asked for.
    pub local: Option<LocalCheck>,
}

/// The device's own check of the records it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCheck {
    /// The chain as checked here, or its first bad record.
    pub chain: std::result::Result<ChainSummary, AuditBreak>,
    /// Certificates the relay has signed checkpoints with (each chained to the
    /// trust anchors).
    pub certificates: usize,
    /// The comparison with a head exported earlier, if one was given: the number
    /// of records it covers, or what is wrong.
    pub against: Option<std::result::Result<u64, AuditHeadError>>,
}

impl LocalCheck {
    /// Whether everything checked out.
    pub fn intact(&self) -> bool {
        self.chain.is_ok() && !matches!(self.against, Some(Err(_)))
    }
}

/// Feeds the records read to a [`ChainCheck`], remembering the hashes of the
/// records whose heads are compared.
struct Checker {
    check: std::result::Result<ChainCheck, AuditBreak>,
    want: Vec<u64>,
    found: Vec<(u64, [u8; 32])>,
}

impl Checker {
    fn record(&mut self, r: &AuditRecordView) {
        if self.want.contains(&r.seq)
            && let Some(hash) = parse_hash(&r.hash)
        {
            self.found.push((r.seq, hash));
        }
        let Ok(check) = &mut self.check else {
            return;
        };
        let seq = check.next_seq();
        let result = match (kind_number(&r.kind), parse_hash(&r.hash)) {
            (Some(kind), Some(hash)) => {
                let fields = RecordFields {
                    seq: r.seq,
                    at: r.at,
                    kind,
                    actor: &r.actor,
                    subject: &r.subject,
                    action: &r.action,
                    detail: &r.detail,
                };
                check.record(&fields, &hash)
            }
            (None, _) => Err(AuditBreak {
                seq,
                reason: format!("unknown kind {:?}", r.kind),
            }),
            (_, None) => Err(AuditBreak {
                seq,
                reason: "hash is not 64 hex digits".into(),
            }),
        };
        if let Err(b) = result {
            self.check = Err(b);
        }
    }

    fn found(&self, seq: u64) -> Option<&[u8; 32]> {
        self.found.iter().find(|(s, _)| *s == seq).map(|(_, h)| h)
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    from_hex(text)?.try_into().ok()
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

    /// A head of the home relay's audit log, signed by the relay now (durable
    /// there), with every certificate the relay has signed checkpoints with. The
    /// head is checked before it is returned: its certificate chains to the
    /// profile's trust anchors, is the home relay's and of the user's organisation,
    /// and its signature verifies. Keep [`SignedAuditHead::to_json`] somewhere the
    /// relay cannot change, and check the log against it later with
    /// [`audit_each_against`](Self::audit_each_against).
    pub async fn audit_head(&mut self) -> Result<AuditHeadPage> {
        let page = match self.call(&Request::AuditHead).await? {
            Response::AuditHead(page) => page,
            other => return Err(unexpected("AuditHead", &other)),
        };
        page.head
            .verify(
                &self.creds.anchors_der(),
                self.relay_id(),
                Some(&self.me.organisation),
            )
            .map_err(|e| ClientError::Protocol(format!("the relay's audit head: {e}")))?;
        Ok(page)
    }

    /// Reads the whole audit log page by page ([`AUDIT_PAGE`] records each), handing
    /// every record to `on_record` in order; with `verify`, checks every record here
    /// ([`LocalCheck`]) and asks the relay to check the chain once all pages are
    /// read, so both verdicts cover every record shown.
    pub async fn audit_each(
        &mut self,
        verify: bool,
        on_record: impl FnMut(AuditRecordView) + Send,
    ) -> Result<AuditSummary> {
        self.audit_each_against(verify, None, on_record).await
    }

    /// As [`audit_each`](Self::audit_each); with `against`, a head exported
    /// earlier ([`audit_head`](Self::audit_head)), the log must also still hold
    /// that head's last record with the same hash ([`LocalCheck::against`]): a cut
    /// or rewritten tail is detected. `against` implies `verify`.
    pub async fn audit_each_against(
        &mut self,
        verify: bool,
        against: Option<&SignedAuditHead>,
        mut on_record: impl FnMut(AuditRecordView) + Send,
    ) -> Result<AuditSummary> {
        let verify = verify || against.is_some();
        let anchors = self.creds.anchors_der();
        let organisation = self.me.organisation.clone();
        let relay_id = self.relay_id().to_string();
        let mut checker = None;
        let mut current = None;
        if verify {
            let page = self.audit_head().await?;
            let mut want = vec![page.head.records];
            want.extend(against.map(|h| h.records));
            checker = Some(Checker {
                check: ChainCheck::new(
                    &relay_id,
                    Some(&organisation),
                    &anchors,
                    &page.certificates,
                ),
                want,
                found: Vec::new(),
            });
            current = Some(page);
        }
        let mut next = 1u64;
        let relay = loop {
            let page = self.audit_log(next, AUDIT_PAGE, false).await?;
            let last_page = page.records.is_empty()
                || page.records.len() < AUDIT_PAGE as usize
                || page.records.last().is_some_and(|r| r.seq >= page.total);
            for record in page.records {
                next = record.seq.saturating_add(1);
                if let Some(c) = &mut checker {
                    c.record(&record);
                }
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
        let read = next - 1;
        let verdict = if verify {
            let page = self.audit_log(next, 0, true).await?;
            page.verify
        } else {
            None
        };
        let local = match (checker, current) {
            (Some(c), Some(page)) => Some(LocalCheck {
                chain: c.check.clone().and_then(|check| {
                    // The head the relay signed at the start must be in the log it served.
                    page.head
                        .compare(read, c.found(page.head.records))
                        .map_err(|e| AuditBreak {
                            seq: page.head.records,
                            reason: format!("not the record the relay signed as its head: {e}"),
                        })?;
                    Ok(check.summary())
                }),
                certificates: page.certificates.len(),
                against: against.map(|head| {
                    head.verify(&anchors, &relay_id, Some(&organisation))?;
                    head.compare(read, c.found(head.records))?;
                    Ok(head.records)
                }),
            }),
            _ => None,
        };
        Ok(AuditSummary {
            relay,
            read,
            verify: verdict,
            local,
        })
    }

    /// The whole audit log in one [`AuditPage`] (see [`audit_each`](Self::audit_each));
    /// `total` is the number of records read. With `verify`, a failed check on the
    /// device is a [`ClientError::Protocol`] (the relay's verdict is in the page).
    pub async fn audit_all(&mut self, verify: bool) -> Result<AuditPage> {
        let mut records = Vec::new();
        let summary = self.audit_each(verify, |r| records.push(r)).await?;
        if let Some(LocalCheck { chain: Err(b), .. }) = &summary.local {
            return Err(ClientError::Protocol(format!(
                "audit log of relay {} checked on this device: {b}",
                summary.relay
            )));
        }
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

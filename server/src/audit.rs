//! The relay's append-only audit log: every refusal, membership change, admin action
//! and link event, chained with SHA-256 so that editing, deleting or reordering a record
//! is detected by [`verify`].
//!
//! `hash(n) = SHA-256("kring-audit-v1" ‖ hash(n-1) ‖ postcard(record n without hash))`,
//! with `hash(0)` all zeroes. Records never contain notice content: only ids, labels,
//! identities and reasons.

use serde::{Deserialize, Serialize};

use crate::error::RelayError;
use crate::store::{Batch, Engine, decode, keys};

const DOMAIN: &[u8] = b"kring-audit-v1";

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    /// A request or message refused (policy, auth, bad input).
    Refusal,
    /// A member added or removed; a community created.
    Membership,
    /// A delivery withheld from a device.
    Withheld,
    /// An administrative action.
    Admin,
    /// A federation link event.
    Link,
    /// A certificate revoked.
    Revocation,
    /// A connection refused at the TLS/identity layer.
    Connection,
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditKind::Refusal => "refusal",
            AuditKind::Membership => "membership",
            AuditKind::Withheld => "withheld",
            AuditKind::Admin => "admin",
            AuditKind::Link => "link",
            AuditKind::Revocation => "revocation",
            AuditKind::Connection => "connection",
        })
    }
}

/// A new audit event, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Category.
    pub kind: AuditKind,
    /// Who acted (identity id, relay id, or `-`).
    pub actor: String,
    /// What it concerned (community, notice id, user…).
    pub subject: String,
    /// Short action name (`file-notice`, `add-member`, …).
    pub action: String,
    /// Reason or detail a person can read.
    pub detail: String,
}

impl AuditEvent {
    /// Convenience constructor.
    pub fn new(
        kind: AuditKind,
        actor: impl Into<String>,
        subject: impl Into<String>,
        action: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            actor: actor.into(),
            subject: subject.into(),
            action: action.into(),
            detail: detail.into(),
        }
    }
}

/// A chained record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous record.
    pub prev: [u8; 32],
    /// Hash of this record.
    pub hash: [u8; 32],
}

fn record_hash(seq: u64, at: i64, event: &AuditEvent, prev: &[u8; 32]) -> [u8; 32] {
    let body = postcard::to_stdvec(&(seq, at, event)).unwrap_or_default();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(prev);
    ctx.update(&body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The head of the chain, kept in memory by the writer.
#[derive(Debug, Clone, Default)]
pub struct AuditHead {
    seq: u64,
    hash: [u8; 32],
}

impl AuditHead {
    /// Reads the head from the store.
    pub fn load(engine: &dyn Engine) -> Result<Self, RelayError> {
        match engine.last(keys::AUDIT)? {
            None => Ok(Self::default()),
            Some((k, v)) => {
                let r: AuditRecord = decode(&k, &v)?;
                Ok(Self {
                    seq: r.seq,
                    hash: r.hash,
                })
            }
        }
    }

    /// Number of records in the chain.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Chains `event` and adds it to `batch`. The head advances; if the batch is then
    /// not applied, the caller must reload the head.
    pub fn append(
        &mut self,
        batch: &mut Batch,
        at: i64,
        event: AuditEvent,
    ) -> Result<(), RelayError> {
        let seq = self.seq + 1;
        let hash = record_hash(seq, at, &event, &self.hash);
        tracing::info!(target: "kring::audit", seq, kind = %event.kind, actor = %event.actor,
            subject = %event.subject, action = %event.action, detail = %event.detail, "audit");
        let rec = AuditRecord {
            seq,
            at,
            event,
            prev: self.hash,
            hash,
        };
        batch.put_obj(keys::audit(seq), &rec)?;
        self.seq = seq;
        self.hash = hash;
        Ok(())
    }
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {reason}")]
pub struct AuditBreak {
    /// Position of the first bad record (as expected by the chain).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks the whole chain; returns the number of records, or the first bad one.
pub fn verify(engine: &dyn Engine) -> Result<Result<u64, AuditBreak>, RelayError> {
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(keys::AUDIT, after.as_deref(), 1000)?;
        if page.is_empty() {
            return Ok(Ok(expected - 1));
        }
        for (k, v) in &page {
            let rec: AuditRecord = match postcard::from_bytes(v) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err(AuditBreak {
                        seq: expected,
                        reason: format!("undecodable record: {e}"),
                    }));
                }
            };
            if *k != keys::audit(rec.seq) || rec.seq != expected {
                return Ok(Err(AuditBreak {
                    seq: expected,
                    reason: format!(
                        "found record {} where record {expected} should be (deleted or reordered)",
                        rec.seq
                    ),
                }));
            }
            if rec.prev != prev {
                return Ok(Err(AuditBreak {
                    seq: expected,
                    reason: "does not link to the previous record (deleted or reordered)".into(),
                }));
            }
            if record_hash(rec.seq, rec.at, &rec.event, &rec.prev) != rec.hash {
                return Ok(Err(AuditBreak {
                    seq: expected,
                    reason: "content does not match its hash (edited)".into(),
                }));
            }
            prev = rec.hash;
            expected += 1;
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

/// Reads records `from..` (at most `limit`).
pub fn read(engine: &dyn Engine, from: u64, limit: usize) -> Result<Vec<AuditRecord>, RelayError> {
    let after = if from <= 1 {
        None
    } else {
        Some(keys::audit(from - 1))
    };
    engine
        .scan(keys::AUDIT, after.as_deref(), limit)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledEngine;

    fn log_with(n: u64) -> (tempfile::TempDir, SledEngine) {
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        let mut head = AuditHead::load(&e).unwrap();
        for i in 0..n {
            let mut b = Batch::default();
            head.append(
                &mut b,
                1000 + i as i64,
                AuditEvent::new(
                    AuditKind::Refusal,
                    "a@bz",
                    "c@bz",
                    "file-notice",
                    format!("r{i}"),
                ),
            )
            .unwrap();
            e.apply(b).unwrap();
        }
        (dir, e)
    }

    #[test]
    fn intact_chain_verifies_and_head_reloads() {
        let (_d, e) = log_with(5);
        assert_eq!(verify(&e).unwrap(), Ok(5));
        let mut head = AuditHead::load(&e).unwrap();
        let mut b = Batch::default();
        head.append(
            &mut b,
            1,
            AuditEvent::new(AuditKind::Admin, "x", "y", "z", "w"),
        )
        .unwrap();
        e.apply(b).unwrap();
        assert_eq!(verify(&e).unwrap(), Ok(6));
        assert_eq!(read(&e, 5, 10).unwrap().len(), 2);
    }

    #[test]
    fn edit_is_detected_and_named() {
        let (_d, e) = log_with(5);
        let k = keys::audit(3);
        let mut rec: AuditRecord = postcard::from_bytes(&e.get(&k).unwrap().unwrap()).unwrap();
        rec.event.detail = "innocent".into();
        let mut b = Batch::default();
        b.put_obj(k, &rec).unwrap();
        e.apply(b).unwrap();
        let err = verify(&e).unwrap().unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(err.reason.contains("edited"), "{err}");
    }

    #[test]
    fn deletion_is_detected() {
        let (_d, e) = log_with(5);
        let mut b = Batch::default();
        b.delete(keys::audit(2));
        e.apply(b).unwrap();
        assert_eq!(verify(&e).unwrap().unwrap_err().seq, 2);
    }

    #[test]
    fn reordering_is_detected() {
        let (_d, e) = log_with(5);
        let r2 = e.get(&keys::audit(2)).unwrap().unwrap();
        let r4 = e.get(&keys::audit(4)).unwrap().unwrap();
        let mut b = Batch::default();
        b.put(keys::audit(2), r4);
        b.put(keys::audit(4), r2);
        e.apply(b).unwrap();
        assert_eq!(verify(&e).unwrap().unwrap_err().seq, 2);
    }
}

//! The relay's append-only audit log: every refusal, membership change, admin action
//! and link event, chained with SHA-256 so that editing, deleting or reordering a record
//! is detected by [`verify`].
//!
//! `hash(n) = SHA-256("kring-audit-v1" ‖ hash(n-1) ‖ postcard(record n without hash))`,
//! with `hash(0)` all zeroes. Records never contain notice content: only ids, labels,
//! identities and reasons.
//!
//! **Signed checkpoints**: every [`CHECKPOINT_EVERY`] records, every
//! [`CHECKPOINT_INTERVAL`] of activity and at shutdown, the relay appends a
//! `checkpoint` record whose detail carries an Ed25519 signature with the relay's
//! certificate key over `"kring-audit-checkpoint-v1" ‖ relay id ‖ n ‖ hash(n)`: whoever
//! rewrites the chain before a checkpoint must also hold the relay's key. The relay's
//! certificate is kept in the store (`A/cert`) so that [`verify_signed`] can check
//! the signatures offline.

use serde::{Deserialize, Serialize};

use crate::error::RelayError;
use crate::store::{Batch, Engine, decode, keys};

const DOMAIN: &[u8] = b"kring-audit-v1";
const CHECKPOINT_DOMAIN: &[u8] = b"kring-audit-checkpoint-v1";
/// A signed checkpoint at least every this many records.
pub const CHECKPOINT_EVERY: u64 = 64;
/// ... and at least this often while records are written.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Store key of the relay's certificate chain (leaf first), for offline checks.
pub const CERT_KEY: &[u8] = b"A/cert";

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
    /// A signed checkpoint of the chain.
    Checkpoint,
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
            AuditKind::Checkpoint => "checkpoint",
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

/// Signs checkpoints with the relay's key.
pub struct CheckpointSigner {
    relay: String,
    key: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// From the relay id and its certificate's PKCS#8 key.
    pub fn new(relay: &str, pkcs8: &[u8]) -> Result<Self, RelayError> {
        let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| RelayError::Store(format!("checkpoint key: {e}")))?;
        Ok(Self {
            relay: relay.to_string(),
            key,
        })
    }
}

fn checkpoint_message(relay: &str, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    [
        CHECKPOINT_DOMAIN,
        &(relay.len() as u32).to_be_bytes(),
        relay.as_bytes(),
        &seq.to_be_bytes(),
        hash,
    ]
    .concat()
}

/// The head of the chain, kept in memory by the writer.
#[derive(Debug, Clone, Default)]
pub struct AuditHead {
    seq: u64,
    hash: [u8; 32],
    last_checkpoint: u64,
    signer: Option<std::sync::Arc<CheckpointSigner>>,
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
                    last_checkpoint: if r.event.kind == AuditKind::Checkpoint {
                        r.seq
                    } else {
                        0
                    },
                    signer: None,
                })
            }
        }
    }

    /// Signs checkpoints from now on.
    pub fn with_signer(mut self, signer: std::sync::Arc<CheckpointSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Re-reads the head from the store (after a batch was not applied), keeping
    /// the signer.
    pub fn reload(&mut self, engine: &dyn Engine) -> Result<(), RelayError> {
        let signer = self.signer.take();
        *self = Self::load(engine)?;
        self.signer = signer;
        Ok(())
    }

    /// Whether records were written since the last checkpoint.
    pub fn unsigned(&self) -> bool {
        self.seq > self.last_checkpoint
    }

    /// Appends a signed checkpoint over everything so far (if there is a signer
    /// and anything new).
    pub fn checkpoint(&mut self, batch: &mut Batch, at: i64) -> Result<(), RelayError> {
        let Some(signer) = self.signer.clone() else {
            return Ok(());
        };
        if !self.unsigned() {
            return Ok(());
        }
        let n = self.seq;
        let sig = signer
            .key
            .sign(&checkpoint_message(&signer.relay, n, &self.hash));
        let event = AuditEvent::new(
            AuditKind::Checkpoint,
            signer.relay.clone(),
            "-",
            "checkpoint",
            format!(
                "signed by relay {} over records 1..={n}: {}",
                signer.relay,
                hex::encode(sig.as_ref())
            ),
        );
        self.push(batch, at, event)?;
        self.last_checkpoint = self.seq;
        Ok(())
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
        self.push(batch, at, event)?;
        if self.seq - self.last_checkpoint >= CHECKPOINT_EVERY {
            self.checkpoint(batch, at)?;
        }
        Ok(())
    }

    fn push(&mut self, batch: &mut Batch, at: i64, event: AuditEvent) -> Result<(), RelayError> {
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

/// What [`verify_signed`] found in an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records in the chain.
    pub records: u64,
    /// Signed checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Records after the last checkpoint (protected by the hash chain only).
    pub unsigned_tail: u64,
}

/// Checks the whole chain; returns the number of records, or the first bad one.
pub fn verify(engine: &dyn Engine) -> Result<Result<u64, AuditBreak>, RelayError> {
    Ok(verify_signed(engine)?.map(|s| s.records))
}

/// Checks the whole chain and every checkpoint's signature against the relay
/// certificate kept in the store; names the first bad record.
pub fn verify_signed(engine: &dyn Engine) -> Result<Result<ChainSummary, AuditBreak>, RelayError> {
    let key: Option<(String, Vec<u8>)> = engine
        .get(CERT_KEY)?
        .and_then(|v| postcard::from_bytes::<Vec<Vec<u8>>>(&v).ok())
        .and_then(|chain| chain.first().cloned())
        .and_then(|leaf| kring_protocol::identity::Identity::from_der(&leaf).ok())
        .map(|id| (id.name, id.public_key));
    let mut checkpoints = 0u64;
    let mut last_checkpoint = 0u64;
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(keys::AUDIT, after.as_deref(), 1000)?;
        if page.is_empty() {
            return Ok(Ok(ChainSummary {
                records: expected - 1,
                checkpoints,
                unsigned_tail: expected - 1 - last_checkpoint,
            }));
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
            if rec.event.kind == AuditKind::Checkpoint {
                if let Err(reason) = check_checkpoint(&rec, key.as_ref()) {
                    return Ok(Err(AuditBreak {
                        seq: expected,
                        reason,
                    }));
                }
                checkpoints += 1;
                last_checkpoint = rec.seq;
            }
            prev = rec.hash;
            expected += 1;
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

fn check_checkpoint(rec: &AuditRecord, key: Option<&(String, Vec<u8>)>) -> Result<(), String> {
    let Some((relay, public_key)) = key else {
        return Err(
            "signed checkpoint, but the store holds no relay certificate to check it".into(),
        );
    };
    let sig = rec
        .event
        .detail
        .rsplit(' ')
        .next()
        .and_then(|h| hex::decode(h).ok())
        .ok_or("checkpoint without a readable signature")?;
    let n = rec.seq - 1;
    let msg = checkpoint_message(relay, n, &rec.prev);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&msg, &sig)
        .map_err(|_| format!("checkpoint signature over records 1..={n} does not verify with relay {relay}'s key (forged or re-signed)"))
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

    /// A log written by a relay with a real certificate and key (dev PKI), with
    /// signed checkpoints.
    fn signed_log(n: u64) -> (tempfile::TempDir, SledEngine, Vec<u8>) {
        let now = 1_800_000_000;
        let mut pki = kring_certs_dev::Pki::new(now).unwrap();
        pki.add_organisation("bz").unwrap();
        let cert = pki
            .issue_relay(&kring_certs_dev::RelaySpec::new("bz", "bz"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = SledEngine::open(dir.path()).unwrap();
        use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
        let pkcs8 = match PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap() {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("not PKCS#8"),
        };
        let signer = std::sync::Arc::new(CheckpointSigner::new("bz", &pkcs8).unwrap());
        let mut b = Batch::default();
        b.put_obj(CERT_KEY.to_vec(), &vec![cert.cert_der.clone()])
            .unwrap();
        e.apply(b).unwrap();
        let mut head = AuditHead::load(&e).unwrap().with_signer(signer);
        for i in 0..n {
            let mut b = Batch::default();
            head.append(
                &mut b,
                1000 + i as i64,
                AuditEvent::new(AuditKind::Admin, "a@bz", "c@bz", "x", format!("r{i}")),
            )
            .unwrap();
            e.apply(b).unwrap();
        }
        (dir, e, pkcs8)
    }

    #[test]
    fn checkpoints_are_signed_and_verified() {
        let (_d, e, _) = signed_log(CHECKPOINT_EVERY * 2 + 5);
        let s = verify_signed(&e).unwrap().unwrap();
        assert_eq!(s.checkpoints, 2);
        assert_eq!(s.records, CHECKPOINT_EVERY * 2 + 5 + 2);
        assert_eq!(s.unsigned_tail, 5);
        // A final checkpoint (as at shutdown) covers the tail.
        let mut head = AuditHead::load(&e).unwrap();
        assert!(head.unsigned());
        let mut b = Batch::default();
        head.checkpoint(&mut b, 1).unwrap();
        assert!(b.is_empty(), "no signer: no checkpoint");
    }

    #[test]
    fn a_rewritten_chain_fails_at_its_checkpoint() {
        // Someone without the relay key edits record 3 and recomputes every hash
        // after it: the chain links again, but the checkpoint signature breaks.
        let (_d, e, _) = signed_log(CHECKPOINT_EVERY + 3);
        let mut prev = [0u8; 32];
        let mut b = Batch::default();
        for rec in read(&e, 1, 10_000).unwrap() {
            let mut rec = rec;
            if rec.seq == 3 {
                rec.event.detail = "rewritten".into();
            }
            rec.prev = prev;
            rec.hash = record_hash(rec.seq, rec.at, &rec.event, &rec.prev);
            prev = rec.hash;
            b.put_obj(keys::audit(rec.seq), &rec).unwrap();
        }
        e.apply(b).unwrap();
        let err = verify_signed(&e).unwrap().unwrap_err();
        assert_eq!(err.seq, CHECKPOINT_EVERY + 1, "{err}");
        assert!(err.reason.contains("does not verify"), "{err}");
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

//! The relay's append-only audit log: every refusal, membership change, admin action
//! and link event, chained with SHA-256 so that editing, deleting or reordering a record
//! is detected by [`verify_signed`].
//!
//! `hash(n) = SHA-256("kring-audit-v1" ‖ hash(n-1) ‖ postcard(record n without hash))`,
//! with `hash(0)` all zeroes ([`kring_protocol::audit::record_hash`], which the client
//! uses to check the records it is shown). Records never contain notice content: only
//! ids, labels, identities and reasons.
//!
//! **Signed checkpoints**: every [`CHECKPOINT_EVERY`] records, every
//! [`CHECKPOINT_INTERVAL`] of activity and at shutdown, the relay appends a
//! `checkpoint` record whose detail names the certificate it signs with (SHA-256
//! fingerprint) and carries an Ed25519 signature with that certificate's key over
//! `"kring-audit-checkpoint-v1" ‖ relay id ‖ n ‖ hash(n)`: whoever rewrites the chain
//! before a checkpoint must also hold the relay's key.
//!
//! **Certificate history** (`A/cert/N`): every certificate the relay has signed
//! checkpoints with, with when and from which record on. A relay that starts with a
//! certificate it has not signed with before checks that it chains to the trust
//! anchors, adds it and announces it with an `audit-certificate` record. Verification
//! chains every certificate of the history to the anchors and checks that it is this
//! relay's, so a renewed key leaves older checkpoints verifiable and a swapped
//! certificate is detected; a checkpoint must be made with the certificate the chain
//! announced last. A [`SignedAuditHead`] exported earlier detects a cut tail
//! ([`verify_against`]).

use serde::{Deserialize, Serialize};

pub use kring_protocol::audit::{AuditBreak, ChainSummary, MAX_CERT_HISTORY};
use kring_protocol::audit::{
    AuditHeadError, CERTIFICATE_ACTION, CertificateUse, ChainCheck, RecordFields, SignedAuditHead,
    certificate_detail, checkpoint_detail, checkpoint_message, fingerprint, head_message,
    record_hash as chain_hash, relay_certificate,
};

use crate::error::{RelayError, StoreError};
use crate::store::{Batch, Engine, decode, keys};

/// A signed checkpoint at least every this many records.
pub const CHECKPOINT_EVERY: u64 = 64;
/// ... and at least this often while records are written.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Store key of the relay's certificate chain as older versions kept it (one chain,
/// rewritten at every start); moved into the history at the next start.
pub const CERT_KEY: &[u8] = crate::keyspace::audit::LEGACY_CERT;
/// Prefix of the certificate history: `A/cert/` + 8-byte big-endian index.
pub const CERT_HISTORY: &[u8] = crate::keyspace::audit::CERT_HISTORY;

/// Store key of entry `index` of the certificate history.
pub fn cert_key(index: u64) -> Vec<u8> {
    crate::keyspace::audit::cert_history(index)
}

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

impl AuditKind {
    /// Its number in the record hash (its position in
    /// [`kring_protocol::audit::KINDS`]; never renumber).
    pub fn number(self) -> u32 {
        match self {
            AuditKind::Refusal => 0,
            AuditKind::Membership => 1,
            AuditKind::Withheld => 2,
            AuditKind::Admin => 3,
            AuditKind::Link => 4,
            AuditKind::Revocation => 5,
            AuditKind::Connection => 6,
            AuditKind::Checkpoint => 7,
        }
    }
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

fn fields<'a>(seq: u64, at: i64, event: &'a AuditEvent) -> RecordFields<'a> {
    RecordFields {
        seq,
        at,
        kind: event.kind.number(),
        actor: &event.actor,
        subject: &event.subject,
        action: &event.action,
        detail: &event.detail,
    }
}

fn record_hash(seq: u64, at: i64, event: &AuditEvent, prev: &[u8; 32]) -> [u8; 32] {
    chain_hash(&fields(seq, at, event), prev)
}

/// Signs checkpoints and heads with the relay's certificate key.
pub struct CheckpointSigner {
    relay: String,
    key: ring::signature::Ed25519KeyPair,
    chain: Vec<Vec<u8>>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("relay", &self.relay)
            .field("certificate", &hex::encode(self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// From the relay id, its certificate's PKCS#8 key and its certificate chain
    /// (leaf first), whose key it must be.
    pub fn new(relay: &str, pkcs8: &[u8], chain: Vec<Vec<u8>>) -> Result<Self, RelayError> {
        use ring::signature::KeyPair;
        let key =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| {
                RelayError::OwnIdentity {
                    what: "checkpoint key",
                    reason: e.to_string(),
                }
            })?;
        let leaf = chain.first().ok_or(RelayError::OwnIdentity {
            what: "checkpoint key",
            reason: "no certificate".into(),
        })?;
        let identity = kring_protocol::identity::Identity::from_der(leaf).map_err(|e| {
            RelayError::OwnIdentity {
                what: "checkpoint certificate",
                reason: e.to_string(),
            }
        })?;
        if identity.public_key != key.public_key().as_ref() {
            return Err(RelayError::OwnIdentity {
                what: "checkpoint key",
                reason: "not the key of the relay's certificate".into(),
            });
        }
        Ok(Self {
            relay: relay.to_string(),
            key,
            fingerprint: fingerprint(leaf),
            chain,
        })
    }

    /// SHA-256 of the certificate it signs with.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The relay it signs for.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// Its certificate chain, leaf first (DER).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// Signs `message` with the relay's certificate key (Ed25519).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }
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

    /// Signs checkpoints with `signer` from now on (a renewed certificate; the
    /// caller adopts it with [`adopt_certificate_into`]).
    pub fn set_signer(&mut self, signer: std::sync::Arc<CheckpointSigner>) {
        self.signer = Some(signer);
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
            checkpoint_detail(&signer.relay, &signer.fingerprint, n, sig.as_ref()),
        );
        self.push(batch, at, event)?;
        self.last_checkpoint = self.seq;
        Ok(())
    }

    /// The key that signs checkpoints now (and backups), if any.
    pub fn signer(&self) -> Option<std::sync::Arc<CheckpointSigner>> {
        self.signer.clone()
    }

    /// The head signed now (as far as applied; the caller makes it durable before
    /// handing it out), if there is a signer.
    pub fn signed_head(&self, at: i64) -> Option<SignedAuditHead> {
        let signer = self.signer.as_ref()?;
        let sig = signer
            .key
            .sign(&head_message(&signer.relay, self.seq, &self.hash, at));
        Some(SignedAuditHead {
            relay: signer.relay.clone(),
            records: self.seq,
            hash: self.hash,
            at,
            signature: sig.as_ref().to_vec(),
            chain: signer.chain.clone(),
        })
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

/// The certificate history, oldest first (at most [`MAX_CERT_HISTORY`] + 1 entries
/// are read, so an overlong history is noticed).
pub fn cert_history(engine: &dyn Engine) -> Result<Vec<CertificateUse>, RelayError> {
    engine
        .scan(CERT_HISTORY, None, MAX_CERT_HISTORY + 1)?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

/// At start: makes sure the certificate `head` signs with is in the history. A new
/// one must chain to `anchors` and be a relay certificate of the signer's relay and
/// `organisation`; it is added and announced with an `audit-certificate` record, in
/// one batch. A chain kept by older versions under [`CERT_KEY`] becomes the first
/// entry of the history.
pub fn adopt_certificate(
    engine: &dyn Engine,
    head: &mut AuditHead,
    anchors: &[Vec<u8>],
    organisation: &str,
    now: i64,
) -> Result<(), RelayError> {
    let mut batch = Batch::default();
    if let Err(e) = adopt_certificate_into(engine, head, anchors, organisation, now, &mut batch) {
        head.reload(engine)?;
        return Err(e);
    }
    if !batch.is_empty()
        && let Err(e) = engine.apply(batch)
    {
        head.reload(engine)?;
        return Err(e);
    }
    Ok(())
}

/// [`adopt_certificate`] into `batch` (applied by the caller, who reloads the head
/// if it is not): used at start and when a reload brings a new certificate.
pub fn adopt_certificate_into(
    engine: &dyn Engine,
    head: &mut AuditHead,
    anchors: &[Vec<u8>],
    organisation: &str,
    now: i64,
    batch: &mut Batch,
) -> Result<(), RelayError> {
    let Some(signer) = head.signer.clone() else {
        return Ok(());
    };
    let mut history = cert_history(engine)?;
    if let Some(legacy) = engine.get(CERT_KEY)? {
        if history.is_empty()
            && let Ok(chain) = postcard::from_bytes::<Vec<Vec<u8>>>(&legacy)
            && !chain.is_empty()
        {
            let entry = CertificateUse {
                chain,
                first_used: 0,
                first_seq: 1,
            };
            batch.put_obj(cert_key(0), &entry)?;
            history.push(entry);
        }
        batch.delete(CERT_KEY.to_vec());
    }
    let latest = history
        .last()
        .and_then(|e| e.chain.first())
        .map(|leaf| fingerprint(leaf));
    if latest != Some(signer.fingerprint) {
        if history.len() >= MAX_CERT_HISTORY {
            return Err(StoreError::CertHistoryFull(MAX_CERT_HISTORY).into());
        }
        let identity = relay_certificate(
            &signer.chain,
            anchors,
            now,
            &signer.relay,
            Some(organisation),
        )
        .map_err(|e| RelayError::OwnIdentity {
            what: "audit checkpoint certificate",
            reason: e.to_string(),
        })?;
        let from = head.seq() + 1;
        head.append(
            batch,
            now,
            AuditEvent::new(
                AuditKind::Admin,
                signer.relay.clone(),
                "-",
                CERTIFICATE_ACTION,
                certificate_detail(&signer.fingerprint, from, &identity),
            ),
        )?;
        batch.put_obj(
            cert_key(history.len() as u64),
            &CertificateUse {
                chain: signer.chain.clone(),
                first_used: now,
                first_seq: from,
            },
        )?;
    }
    Ok(())
}

/// Whose certificates may sign a log: the relay, its organisation (when known) and
/// the federation's trust anchors.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The relay id.
    pub relay: &'a str,
    /// Its organisation, if known.
    pub organisation: Option<&'a str>,
    /// Trust anchors (DER).
    pub anchors: &'a [Vec<u8>],
}

/// Checks the whole chain, every certificate of the history (chains to the anchors,
/// the relay's own) and every checkpoint's signature with the certificate it names;
/// names the first bad record.
pub fn verify_signed(
    engine: &dyn Engine,
    expected: &Expected<'_>,
) -> Result<Result<ChainSummary, AuditBreak>, RelayError> {
    let history = cert_history(engine)?;
    let mut check = match ChainCheck::new(
        expected.relay,
        expected.organisation,
        expected.anchors,
        &history,
    ) {
        Ok(c) => c,
        Err(b) => return Ok(Err(b)),
    };
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan(keys::AUDIT, after.as_deref(), 1000)?;
        if page.is_empty() {
            return Ok(Ok(check.summary()));
        }
        for (k, v) in &page {
            let expected_seq = check.next_seq();
            let broken = |reason: String| {
                Ok(Err(AuditBreak {
                    seq: expected_seq,
                    reason,
                }))
            };
            let rec: AuditRecord = match postcard::from_bytes(v) {
                Ok(r) => r,
                Err(e) => return broken(format!("undecodable record: {e}")),
            };
            if *k != keys::audit(rec.seq) || rec.seq != expected_seq {
                return broken(format!(
                    "found record {} where record {expected_seq} should be (deleted or reordered)",
                    rec.seq
                ));
            }
            if rec.prev != check.last_hash() {
                return broken(
                    "does not link to the previous record (deleted or reordered)".into(),
                );
            }
            if let Err(b) = check.record(&fields(rec.seq, rec.at, &rec.event), &rec.hash) {
                return Ok(Err(b));
            }
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

/// Checks the log against a head exported earlier: the head verifies (signature,
/// certificate chained to the anchors, the relay's own at the time it was signed)
/// and the log still holds its last record with the same hash. Check the chain
/// itself with [`verify_signed`].
pub fn verify_against(
    engine: &dyn Engine,
    head: &SignedAuditHead,
    expected: &Expected<'_>,
) -> Result<Result<(), AuditHeadError>, RelayError> {
    if let Err(e) = head.verify(expected.anchors, expected.relay, expected.organisation) {
        return Ok(Err(e));
    }
    let total = AuditHead::load(engine)?.seq();
    let found = match engine.get(&keys::audit(head.records))? {
        Some(v) => Some(decode::<AuditRecord>(&keys::audit(head.records), &v)?.hash),
        None => None,
    };
    Ok(head.compare(total, found.as_ref()))
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
pub(crate) mod tests {
    use super::*;
    use crate::store::SledEngine;

    const NOW: i64 = 1_800_000_000;

    /// The hash chain alone (no certificates: a log without checkpoints).
    fn verify(e: &SledEngine) -> Result<u64, AuditBreak> {
        let expected = Expected {
            relay: "bz",
            organisation: None,
            anchors: &[],
        };
        verify_signed(e, &expected).unwrap().map(|s| s.records)
    }

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
        assert_eq!(verify(&e), Ok(5));
        let mut head = AuditHead::load(&e).unwrap();
        let mut b = Batch::default();
        head.append(
            &mut b,
            1,
            AuditEvent::new(AuditKind::Admin, "x", "y", "z", "w"),
        )
        .unwrap();
        e.apply(b).unwrap();
        assert_eq!(verify(&e), Ok(6));
        assert_eq!(read(&e, 5, 10).unwrap().len(), 2);
    }

    /// The hash is the one older versions wrote (postcard of the stored event),
    /// so existing logs still verify; kind numbers match the protocol's names.
    #[test]
    fn record_hashes_are_unchanged_and_kinds_are_numbered_by_name() {
        let kinds = [
            AuditKind::Refusal,
            AuditKind::Membership,
            AuditKind::Withheld,
            AuditKind::Admin,
            AuditKind::Link,
            AuditKind::Revocation,
            AuditKind::Connection,
            AuditKind::Checkpoint,
        ];
        for kind in kinds {
            assert_eq!(
                kring_protocol::audit::KINDS[kind.number() as usize],
                kind.to_string()
            );
            let event = AuditEvent::new(kind, "a@bz", "c@bz", "act", "détail");
            let body = postcard::to_stdvec(&(7u64, -3i64, &event)).unwrap();
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"kring-audit-v1");
            ctx.update(&[5; 32]);
            ctx.update(&body);
            assert_eq!(
                record_hash(7, -3, &event, &[5; 32]).as_slice(),
                ctx.finish().as_ref()
            );
        }
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
        let err = verify(&e).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(err.reason.contains("edited"), "{err}");
    }

    #[test]
    fn deletion_is_detected() {
        let (_d, e) = log_with(5);
        let mut b = Batch::default();
        b.delete(keys::audit(2));
        e.apply(b).unwrap();
        assert_eq!(verify(&e).unwrap_err().seq, 2);
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
        assert_eq!(verify(&e).unwrap_err().seq, 2);
    }

    /// A federation PKI (organisations bz and nctv) and a store.
    struct Fixture {
        pki: kring_certs_dev::Pki,
        anchors: Vec<Vec<u8>>,
        _dir: tempfile::TempDir,
        e: SledEngine,
    }

    /// A relay certificate chain and its PKCS#8 key.
    pub(crate) fn relay_cert(pki: &kring_certs_dev::Pki, id: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
        let cert = pki
            .issue_relay(&kring_certs_dev::RelaySpec::new(id, id))
            .unwrap();
        use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
        let pkcs8 = match PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap() {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => panic!("not PKCS#8"),
        };
        (cert.chain_der, pkcs8)
    }

    impl Fixture {
        fn new() -> Self {
            let mut pki = kring_certs_dev::Pki::new(NOW).unwrap();
            pki.add_organisation("bz").unwrap();
            pki.add_organisation("nctv").unwrap();
            let anchors = pki.anchors();
            let dir = tempfile::tempdir().unwrap();
            let e = SledEngine::open(dir.path()).unwrap();
            Self {
                pki,
                anchors,
                _dir: dir,
                e,
            }
        }

        fn expected(&self) -> Expected<'_> {
            Expected {
                relay: "bz",
                organisation: Some("bz"),
                anchors: &self.anchors,
            }
        }

        fn verify(&self) -> Result<ChainSummary, AuditBreak> {
            verify_signed(&self.e, &self.expected()).unwrap()
        }

        /// A relay start with this certificate: the head with its signer, the
        /// certificate adopted.
        fn start(&self, (chain, pkcs8): &(Vec<Vec<u8>>, Vec<u8>), at: i64) -> AuditHead {
            let signer =
                std::sync::Arc::new(CheckpointSigner::new("bz", pkcs8, chain.clone()).unwrap());
            let mut head = AuditHead::load(&self.e).unwrap().with_signer(signer);
            adopt_certificate(&self.e, &mut head, &self.anchors, "bz", at).unwrap();
            head
        }

        fn append(&self, head: &mut AuditHead, n: u64) {
            for i in 0..n {
                let mut b = Batch::default();
                head.append(
                    &mut b,
                    NOW + i as i64,
                    AuditEvent::new(AuditKind::Admin, "a@bz", "c@bz", "x", format!("r{i}")),
                )
                .unwrap();
                self.e.apply(b).unwrap();
            }
        }

        /// A shutdown: a final checkpoint.
        fn stop(&self, head: &mut AuditHead) {
            let mut b = Batch::default();
            head.checkpoint(&mut b, NOW).unwrap();
            self.e.apply(b).unwrap();
        }

        fn put<T: Serialize>(&self, key: Vec<u8>, value: &T) {
            let mut b = Batch::default();
            b.put_obj(key, value).unwrap();
            self.e.apply(b).unwrap();
        }
    }

    #[test]
    fn checkpoints_are_signed_and_verified() {
        let f = Fixture::new();
        let cert = relay_cert(&f.pki, "bz");
        let mut head = f.start(&cert, NOW);
        // Record 1 announces the certificate.
        let first = read(&f.e, 1, 1).unwrap().remove(0);
        assert_eq!(first.event.action, CERTIFICATE_ACTION);
        assert_eq!(cert_history(&f.e).unwrap().len(), 1);
        f.append(&mut head, CHECKPOINT_EVERY * 2 + 5);
        let s = f.verify().unwrap();
        assert_eq!(s.checkpoints, 2);
        assert_eq!(s.records, 1 + CHECKPOINT_EVERY * 2 + 5 + 2);
        assert_eq!(s.unsigned_tail, 6);
        // A final checkpoint (as at shutdown) covers the tail.
        let mut unsigned = AuditHead::load(&f.e).unwrap();
        assert!(unsigned.unsigned());
        let mut b = Batch::default();
        unsigned.checkpoint(&mut b, 1).unwrap();
        assert!(b.is_empty(), "no signer: no checkpoint");
        f.stop(&mut head);
        assert_eq!(f.verify().unwrap().unsigned_tail, 0);
        // Restarting with the same certificate announces nothing new.
        let again = f.start(&cert, NOW + 10);
        assert_eq!(again.seq(), head.seq());
        assert_eq!(cert_history(&f.e).unwrap().len(), 1);
    }

    #[test]
    fn a_rewritten_chain_fails_at_its_checkpoint() {
        // Someone without the relay key edits record 3 and recomputes every hash
        // after it: the chain links again, but the checkpoint signature breaks.
        let f = Fixture::new();
        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW);
        f.append(&mut head, CHECKPOINT_EVERY + 3);
        let mut prev = [0u8; 32];
        let mut b = Batch::default();
        for rec in read(&f.e, 1, 10_000).unwrap() {
            let mut rec = rec;
            if rec.seq == 3 {
                rec.event.detail = "rewritten".into();
            }
            rec.prev = prev;
            rec.hash = record_hash(rec.seq, rec.at, &rec.event, &rec.prev);
            prev = rec.hash;
            b.put_obj(keys::audit(rec.seq), &rec).unwrap();
        }
        f.e.apply(b).unwrap();
        let err = f.verify().unwrap_err();
        assert_eq!(err.seq, CHECKPOINT_EVERY + 1, "{err}");
        assert!(err.reason.contains("does not verify"), "{err}");
    }

    /// A renewed certificate with a new key: checkpoints made with the old one
    /// still verify (the history keeps it), new ones verify with the new one.
    #[test]
    fn a_renewed_key_keeps_old_checkpoints_valid() {
        let f = Fixture::new();
        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW);
        f.append(&mut head, CHECKPOINT_EVERY + 3);
        f.stop(&mut head);
        let before = f.verify().unwrap();
        assert_eq!(before.checkpoints, 2);

        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW + 100);
        let history = cert_history(&f.e).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].first_seq, before.records + 1);
        assert_eq!(history[1].first_used, NOW + 100);
        f.append(&mut head, CHECKPOINT_EVERY);
        f.stop(&mut head);
        let after = f.verify().unwrap();
        assert_eq!(after.checkpoints, 4, "{after:?}");
        assert_eq!(after.unsigned_tail, 0);
    }

    /// A chain kept by older versions under `A/cert` joins the history; its
    /// checkpoints (which named no certificate) still verify.
    #[test]
    fn a_certificate_kept_the_old_way_joins_the_history() {
        let f = Fixture::new();
        let cert = relay_cert(&f.pki, "bz");
        // As older versions wrote it: `A/cert`, checkpoints without a fingerprint.
        f.put(CERT_KEY.to_vec(), &cert.0);
        let signer =
            std::sync::Arc::new(CheckpointSigner::new("bz", &cert.1, cert.0.clone()).unwrap());
        let mut head = AuditHead::load(&f.e).unwrap().with_signer(signer);
        f.append(&mut head, CHECKPOINT_EVERY);
        let mut b = Batch::default();
        let mut rec: AuditRecord = read(&f.e, CHECKPOINT_EVERY + 1, 1).unwrap().remove(0);
        assert_eq!(rec.event.kind, AuditKind::Checkpoint);
        let sig = rec.event.detail.rsplit(' ').next().unwrap().to_string();
        rec.event.detail = format!("signed by relay bz over records 1..={CHECKPOINT_EVERY}: {sig}");
        rec.hash = record_hash(rec.seq, rec.at, &rec.event, &rec.prev);
        b.put_obj(keys::audit(rec.seq), &rec).unwrap();
        f.e.apply(b).unwrap();
        // The last record was rewritten in the old form; the chain is re-linked.
        let mut head = f.start(&cert, NOW);
        assert!(f.e.get(CERT_KEY).unwrap().is_none());
        assert_eq!(cert_history(&f.e).unwrap().len(), 1);
        f.append(&mut head, 2);
        f.stop(&mut head);
        let s = f.verify().unwrap();
        assert_eq!(s.checkpoints, 2, "{s:?}");
    }

    /// The stored certificate swapped for another relay's genuine certificate, for a
    /// certificate of a foreign PKI naming this relay, or removed: detected, and the
    /// record that announced it named. A chain re-signed with the swapped-in key
    /// fails too.
    #[test]
    fn a_swapped_certificate_is_detected() {
        let f = Fixture::new();
        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW);
        f.append(&mut head, CHECKPOINT_EVERY + 3);
        f.stop(&mut head);
        assert!(f.verify().is_ok());
        let original: CertificateUse =
            postcard::from_bytes(&f.e.get(&cert_key(0)).unwrap().unwrap()).unwrap();

        let nctv = relay_cert(&f.pki, "nctv");
        let mut foreign_pki = kring_certs_dev::Pki::new(NOW).unwrap();
        foreign_pki.add_organisation("bz").unwrap();
        let foreign = relay_cert(&foreign_pki, "bz");
        let renewed_bz = relay_cert(&f.pki, "bz");
        for (chain, want) in [
            (nctv.0.clone(), "relay nctv's, not relay bz's"),
            (
                foreign.0.clone(),
                "not a relay certificate of the federation",
            ),
            (renewed_bz.0.clone(), "does not hold"),
        ] {
            f.put(
                cert_key(0),
                &CertificateUse {
                    chain,
                    ..original.clone()
                },
            );
            let err = f.verify().unwrap_err();
            assert_eq!(err.seq, 1, "{err}");
            assert!(err.reason.contains(want), "{err} lacks {want}");
        }
        let mut b = Batch::default();
        b.delete(cert_key(0));
        f.e.apply(b).unwrap();
        let err = f.verify().unwrap_err();
        assert!(err.reason.contains("does not hold"), "{err}");
        f.put(cert_key(0), &original);
        assert!(f.verify().is_ok());

        // Whoever holds another relay's key rewrites the chain, swaps in that
        // relay's certificate and re-signs every checkpoint and announcement:
        // still not bz's certificate.
        let signer = CheckpointSigner::new("bz", &nctv.1, nctv.0.clone()).unwrap();
        let mut prev = [0u8; 32];
        let mut b = Batch::default();
        for mut rec in read(&f.e, 1, 10_000).unwrap() {
            if rec.event.kind == AuditKind::Checkpoint {
                let n = rec.seq - 1;
                let sig = signer.key.sign(&checkpoint_message("bz", n, &prev));
                rec.event.detail = checkpoint_detail("bz", &signer.fingerprint, n, sig.as_ref());
            }
            if rec.event.action == CERTIFICATE_ACTION {
                rec.event.detail = rec.event.detail.replace(
                    &hex::encode(fingerprint(&original.chain[0])),
                    &hex::encode(signer.fingerprint),
                );
            }
            rec.prev = prev;
            rec.hash = record_hash(rec.seq, rec.at, &rec.event, &rec.prev);
            prev = rec.hash;
            b.put_obj(keys::audit(rec.seq), &rec).unwrap();
        }
        b.put_obj(
            cert_key(0),
            &CertificateUse {
                chain: nctv.0.clone(),
                ..original.clone()
            },
        )
        .unwrap();
        f.e.apply(b).unwrap();
        let err = f.verify().unwrap_err();
        assert!(err.reason.contains("relay nctv's"), "{err}");
    }

    /// A checkpoint made with an older certificate after a newer one was
    /// announced (an old key re-signing the chain) is refused.
    #[test]
    fn a_checkpoint_must_use_the_announced_certificate() {
        let f = Fixture::new();
        let old = relay_cert(&f.pki, "bz");
        let mut head = f.start(&old, NOW);
        f.append(&mut head, 3);
        f.stop(&mut head);
        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW + 100);
        f.append(&mut head, 3);
        // The old key signs the next checkpoint.
        let signer = std::sync::Arc::new(CheckpointSigner::new("bz", &old.1, old.0).unwrap());
        let mut stale = AuditHead::load(&f.e).unwrap().with_signer(signer);
        f.stop(&mut stale);
        let err = f.verify().unwrap_err();
        assert_eq!(err.seq, stale.seq());
        assert!(err.reason.contains("announced"), "{err}");
    }

    /// A head exported earlier detects a cut tail and a rewritten one; the log as
    /// it was passes.
    #[test]
    fn a_signed_head_detects_truncation() {
        let f = Fixture::new();
        let mut head = f.start(&relay_cert(&f.pki, "bz"), NOW);
        f.append(&mut head, 10);
        let exported = head.signed_head(NOW + 5).unwrap();
        assert_eq!(exported.records, 11);
        let expected = f.expected();
        assert_eq!(verify_against(&f.e, &exported, &expected).unwrap(), Ok(()));
        f.append(&mut head, 5);
        assert_eq!(verify_against(&f.e, &exported, &expected).unwrap(), Ok(()));
        // Another relay's head, or an altered one, does not verify.
        let mut altered = exported.clone();
        altered.records = 12;
        assert!(matches!(
            verify_against(&f.e, &altered, &expected).unwrap(),
            Err(AuditHeadError::Signature { .. })
        ));
        let nctv = relay_cert(&f.pki, "nctv");
        let nctv_signer =
            std::sync::Arc::new(CheckpointSigner::new("nctv", &nctv.1, nctv.0).unwrap());
        let nctv_head = AuditHead::default()
            .with_signer(nctv_signer)
            .signed_head(NOW)
            .unwrap();
        assert!(
            verify_against(&f.e, &nctv_head, &expected)
                .unwrap()
                .is_err()
        );

        // The tail cut after record 8: the chain alone still verifies, the head
        // does not.
        let mut b = Batch::default();
        for seq in 9..=16 {
            b.delete(keys::audit(seq));
        }
        f.e.apply(b).unwrap();
        assert!(f.verify().is_ok());
        assert_eq!(
            verify_against(&f.e, &exported, &expected).unwrap(),
            Err(AuditHeadError::Truncated { have: 8, want: 11 })
        );
    }

    #[test]
    fn a_signer_needs_its_certificates_key() {
        let f = Fixture::new();
        let (chain, _) = relay_cert(&f.pki, "bz");
        let (_, other_key) = relay_cert(&f.pki, "bz");
        assert!(CheckpointSigner::new("bz", &other_key, chain).is_err());
    }
}

//! What a relay signs over its audit chain, and the checks anyone holding the
//! federation's trust anchors can make of it.
//!
//! A relay's audit chain (`server/src/audit.rs`) carries **checkpoints**: Ed25519
//! signatures with the relay's certificate key over [`checkpoint_message`]
//! (`relay ‖ n ‖ hash(n)`), each naming the certificate it was made with by its
//! [`fingerprint`]. An org-admin can also ask for a [`SignedAuditHead`] (`kring admin
//! audit --head`): the same statement for the record that is last right now, with the
//! time and the certificate chain, to keep outside the relay. Verifying the log later
//! against that head detects a cut tail (record `n` is gone) as well as a rewritten
//! one (record `n` has another hash), which the chain alone cannot show.
//!
//! Certificates are checked with [`relay_certificate`]: it must chain to the trust
//! anchors, be a relay certificate, name the expected relay and (when given) its
//! organisation.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityKind, MAX_CHAIN_LEN, verify_chain};

/// Domain of a checkpoint signature.
pub const CHECKPOINT_DOMAIN: &[u8] = b"kring-audit-checkpoint-v1";
/// Domain of a signed head.
pub const HEAD_DOMAIN: &[u8] = b"kring-audit-head-v1";
/// The `format` of an exported head file.
pub const HEAD_FORMAT: &str = "kring-audit-head-v1";
/// Largest exported head file read (bytes).
pub const MAX_HEAD_FILE: usize = 64 * 1024;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Problems with a signed head or a relay certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditHeadError {
    /// The certificate does not chain to the anchors, or is not the relay's.
    #[error("certificate: {reason}")]
    Certificate {
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the certificate's key.
    #[error(
        "the signature over relay {relay}'s audit head at record {records} does not verify with its certificate (forged or altered)"
    )]
    Signature {
        /// The relay.
        relay: String,
        /// The head's record count.
        records: u64,
    },
    /// The head is not the one asked for (another relay's), or its fields are bad.
    #[error("signed audit head: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The log no longer holds the head's last record.
    #[error(
        "audit log TRUNCATED: the signed head covers {want} records, the log holds only {have}"
    )]
    Truncated {
        /// Records in the log.
        have: u64,
        /// Records the head covers.
        want: u64,
    },
    /// The log's record `seq` has another hash than the head says.
    #[error("audit record {seq} differs from the signed head (the chain up to it was rewritten)")]
    Rewritten {
        /// The head's last record.
        seq: u64,
    },
}

/// What a checkpoint over records `1..=n` signs.
pub fn checkpoint_message(relay: &str, n: u64, hash: &[u8; 32]) -> Vec<u8> {
    [
        CHECKPOINT_DOMAIN,
        &(relay.len() as u32).to_be_bytes(),
        relay.as_bytes(),
        &n.to_be_bytes(),
        hash,
    ]
    .concat()
}

/// What a [`SignedAuditHead`] signs.
pub fn head_message(relay: &str, n: u64, hash: &[u8; 32], at: i64) -> Vec<u8> {
    [
        HEAD_DOMAIN,
        &(relay.len() as u32).to_be_bytes(),
        relay.as_bytes(),
        &n.to_be_bytes(),
        hash,
        &at.to_be_bytes(),
    ]
    .concat()
}

/// SHA-256 of a certificate (DER): how checkpoints name the certificate they were
/// made with.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Reads hex (either case); `None` for an odd length or a non-hex digit.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Checks that `chain` (leaf first) is a relay certificate for `relay` (and of
/// `organisation`, when given) that chains to `anchors` at `at` (unix seconds).
///
/// # Errors
/// [`AuditHeadError::Certificate`] naming what is wrong.
pub fn relay_certificate(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    at: i64,
    relay: &str,
    organisation: Option<&str>,
) -> Result<Identity, AuditHeadError> {
    let bad = |reason: String| AuditHeadError::Certificate { reason };
    let at = u64::try_from(at).map_err(|_| bad(format!("time {at} is before 1970")))?;
    let identity = verify_chain(chain, anchors, at, IdentityKind::Relay)
        .map_err(|e| bad(format!("not a relay certificate of the federation: {e}")))?;
    if identity.name != relay {
        return Err(bad(format!(
            "the certificate is relay {}'s, not relay {relay}'s",
            identity.name
        )));
    }
    if let Some(org) = organisation
        && identity.organisation != org
    {
        return Err(bad(format!(
            "the certificate is of organisation {}, relay {relay} is of {org}",
            identity.organisation
        )));
    }
    Ok(identity)
}

/// Checks an Ed25519 signature with a raw public key.
pub fn signature_verifies(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// A relay's signature over the head of its audit log at one moment: record
/// `records` has hash `hash`. Kept outside the relay, it lets a later check find a
/// cut or rewritten tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAuditHead {
    /// The relay.
    pub relay: String,
    /// Records in the log (`n`).
    pub records: u64,
    /// Hash of record `n` (all zeroes for an empty log).
    pub hash: [u8; 32],
    /// When it was signed (unix seconds).
    pub at: i64,
    /// Ed25519 signature over [`head_message`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The relay's certificate chain (leaf first, DER) whose key signed it.
    pub chain: Vec<Vec<u8>>,
}

/// The JSON form of a [`SignedAuditHead`] (hex strings).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFile {
    format: String,
    relay: String,
    records: u64,
    hash: String,
    at: i64,
    signature: String,
    chain: Vec<String>,
}

impl SignedAuditHead {
    /// Bounds on the fields (the wire decoder's check).
    ///
    /// # Errors
    /// [`AuditHeadError::Malformed`].
    pub fn check_sizes(&self) -> Result<(), AuditHeadError> {
        if self.signature.len() != SIGNATURE_LEN {
            return Err(AuditHeadError::Malformed {
                reason: format!("a signature of {} bytes", self.signature.len()),
            });
        }
        if self.chain.is_empty() || self.chain.len() > MAX_CHAIN_LEN {
            return Err(AuditHeadError::Malformed {
                reason: format!(
                    "a certificate chain of {} (1 to {MAX_CHAIN_LEN})",
                    self.chain.len()
                ),
            });
        }
        Ok(())
    }

    /// Checks the head: it is `relay`'s, its certificate chains to `anchors` at the
    /// time it was signed and is `relay`'s (of `organisation`, when given), and the
    /// signature verifies. Returns the certificate's identity.
    ///
    /// # Errors
    /// [`AuditHeadError::Malformed`], [`AuditHeadError::Certificate`],
    /// [`AuditHeadError::Signature`].
    pub fn verify(
        &self,
        anchors: &[Vec<u8>],
        relay: &str,
        organisation: Option<&str>,
    ) -> Result<Identity, AuditHeadError> {
        if self.relay != relay {
            return Err(AuditHeadError::Malformed {
                reason: format!("it is relay {}'s, not relay {relay}'s", self.relay),
            });
        }
        self.check_sizes()?;
        let identity = relay_certificate(&self.chain, anchors, self.at, relay, organisation)?;
        let message = head_message(&self.relay, self.records, &self.hash, self.at);
        if !signature_verifies(&identity.public_key, &message, &self.signature) {
            return Err(AuditHeadError::Signature {
                relay: self.relay.clone(),
                records: self.records,
            });
        }
        Ok(identity)
    }

    /// Compares the head with a log of `total` records whose record `n` (the head's
    /// last) has hash `found` (`None` if the log has no record `n`).
    ///
    /// # Errors
    /// [`AuditHeadError::Truncated`], [`AuditHeadError::Rewritten`].
    pub fn compare(&self, total: u64, found: Option<&[u8; 32]>) -> Result<(), AuditHeadError> {
        if self.records == 0 {
            return Ok(());
        }
        match found {
            None => Err(AuditHeadError::Truncated {
                have: total.min(self.records.saturating_sub(1)),
                want: self.records,
            }),
            Some(h) if *h != self.hash => Err(AuditHeadError::Rewritten { seq: self.records }),
            Some(_) => Ok(()),
        }
    }

    /// The head as one line of JSON (what `kring admin audit --head` prints).
    pub fn to_json(&self) -> String {
        let file = HeadFile {
            format: HEAD_FORMAT.to_string(),
            relay: self.relay.clone(),
            records: self.records,
            hash: to_hex(&self.hash),
            at: self.at,
            signature: to_hex(&self.signature),
            chain: self.chain.iter().map(|c| to_hex(c)).collect(),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// Reads a head written by [`to_json`](Self::to_json). The signature is not
    /// checked here: see [`verify`](Self::verify).
    ///
    /// # Errors
    /// [`AuditHeadError::Malformed`].
    pub fn from_json(text: &str) -> Result<Self, AuditHeadError> {
        let bad = |reason: String| AuditHeadError::Malformed { reason };
        if text.len() > MAX_HEAD_FILE {
            return Err(bad(format!(
                "{} bytes; at most {MAX_HEAD_FILE}",
                text.len()
            )));
        }
        let file: HeadFile =
            serde_json::from_str(text).map_err(|e| bad(format!("not a signed head: {e}")))?;
        if file.format != HEAD_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {HEAD_FORMAT:?}",
                file.format
            )));
        }
        let hash: [u8; 32] = from_hex(&file.hash)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("hash is not 64 hex digits".into()))?;
        let signature =
            from_hex(&file.signature).ok_or_else(|| bad("signature is not hex".into()))?;
        let chain = file
            .chain
            .iter()
            .map(|c| from_hex(c).ok_or_else(|| bad("a certificate is not hex".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let head = Self {
            relay: file.relay,
            records: file.records,
            hash,
            at: file.at,
            signature,
            chain,
        };
        head.check_sizes()?;
        Ok(head)
    }
}

// ----- the chain ------------------------------------------------------------------

/// Domain of a record hash.
pub const RECORD_DOMAIN: &[u8] = b"kring-audit-v1";
/// Record kinds, in the order of their number in the record hash.
pub const KINDS: [&str; 8] = [
    "refusal",
    "membership",
    "withheld",
    "admin",
    "link",
    "revocation",
    "connection",
    "checkpoint",
];
/// Number of the checkpoint kind in [`KINDS`].
pub const CHECKPOINT_KIND: u32 = 7;
/// Number of the admin kind in [`KINDS`].
pub const ADMIN_KIND: u32 = 3;
/// Action of the admin record a relay writes when it starts signing checkpoints
/// with a certificate it has not signed with before.
pub const CERTIFICATE_ACTION: &str = "audit-certificate";
/// Most certificates in a relay's certificate history.
pub const MAX_CERT_HISTORY: usize = 1024;

/// The number of a kind name in [`KINDS`].
pub fn kind_number(kind: &str) -> Option<u32> {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .and_then(|i| u32::try_from(i).ok())
}

/// The fields of one audit record that its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// 1-based position.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// Number of the kind in [`KINDS`].
    pub kind: u32,
    /// Who acted.
    pub actor: &'a str,
    /// What it concerned.
    pub subject: &'a str,
    /// Action name.
    pub action: &'a str,
    /// Reason or detail.
    pub detail: &'a str,
}

/// `hash(n) = SHA-256("kring-audit-v1" ‖ hash(n-1) ‖ postcard(seq, at, kind, actor,
/// subject, action, detail))`.
pub fn record_hash(r: &RecordFields<'_>, prev: &[u8; 32]) -> [u8; 32] {
    let body = postcard::to_stdvec(&(r.seq, r.at, r.kind, r.actor, r.subject, r.action, r.detail))
        .unwrap_or_default();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(RECORD_DOMAIN);
    ctx.update(prev);
    ctx.update(&body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The detail of a checkpoint over records `1..=n`.
pub fn checkpoint_detail(relay: &str, certificate: &[u8; 32], n: u64, signature: &[u8]) -> String {
    format!(
        "signed by relay {relay} with certificate {} over records 1..={n}: {}",
        to_hex(certificate),
        to_hex(signature)
    )
}

/// The detail of the record announcing that checkpoints are signed with
/// `certificate` from record `from` on.
pub fn certificate_detail(certificate: &[u8; 32], from: u64, identity: &Identity) -> String {
    format!(
        "checkpoints are signed with certificate {} from record {from} on (serial {}, valid until {})",
        to_hex(certificate),
        identity.serial,
        identity.not_after
    )
}

/// The certificate fingerprint a checkpoint or announcement detail names.
pub fn named_certificate(detail: &str) -> Option<[u8; 32]> {
    let (_, rest) = detail.split_once("certificate ")?;
    from_hex(rest.get(..64)?)?.try_into().ok()
}

/// One certificate a relay has signed checkpoints with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateUse {
    /// The certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// When the relay first signed with it (unix seconds; 0 when unknown, for a
    /// certificate kept from before the history).
    pub first_used: i64,
    /// The record announcing it (1 when unknown).
    pub first_seq: u64,
}

/// Answer to an audit head request: the signed head and every certificate the relay
/// has signed checkpoints with, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHeadPage {
    /// The head, signed now.
    pub head: SignedAuditHead,
    /// The certificate history (at most [`MAX_CERT_HISTORY`]).
    pub certificates: Vec<CertificateUse>,
}

impl AuditHeadPage {
    /// Bounds on the fields (the wire decoder's check).
    ///
    /// # Errors
    /// [`AuditHeadError::Malformed`].
    pub fn check_sizes(&self) -> Result<(), AuditHeadError> {
        self.head.check_sizes()?;
        if self.certificates.len() > MAX_CERT_HISTORY
            || self
                .certificates
                .iter()
                .any(|c| c.chain.is_empty() || c.chain.len() > MAX_CHAIN_LEN)
        {
            return Err(AuditHeadError::Malformed {
                reason: "certificate history too long or with an empty or overlong chain".into(),
            });
        }
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

/// What a check found in an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records in the chain.
    pub records: u64,
    /// Signed checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Records after the last checkpoint (protected by the hash chain only).
    pub unsigned_tail: u64,
}

/// A certificate of the history, checked.
#[derive(Debug, Clone)]
struct Checked {
    fingerprint: [u8; 32],
    public_key: Vec<u8>,
}

/// Checks a chain record by record, in order: hashes, links, and every checkpoint's
/// signature with the certificate it names, each certificate chained to the trust
/// anchors and the relay's own. The relay checks its store with it and the client
/// the records it was shown.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    relay: String,
    certificates: Vec<Checked>,
    announced: Option<[u8; 32]>,
    prev: [u8; 32],
    next: u64,
    checkpoints: u64,
    last_checkpoint: u64,
}

impl ChainCheck {
    /// Checks every certificate of `history` (it chains to `anchors` at the time it
    /// was first used, is a relay certificate of `relay`, of `organisation` when
    /// given) and starts a check at record 1.
    ///
    /// # Errors
    /// An [`AuditBreak`] at the record from which a bad certificate was used.
    pub fn new(
        relay: &str,
        organisation: Option<&str>,
        anchors: &[Vec<u8>],
        history: &[CertificateUse],
    ) -> Result<Self, AuditBreak> {
        if history.len() > MAX_CERT_HISTORY {
            return Err(AuditBreak {
                seq: 1,
                reason: format!(
                    "certificate history of {} entries; at most {MAX_CERT_HISTORY}",
                    history.len()
                ),
            });
        }
        let mut certificates = Vec::new();
        for (i, entry) in history.iter().enumerate() {
            let leaf = entry
                .chain
                .first()
                .map(|d| fingerprint(d))
                .unwrap_or_default();
            let broken = |reason: String| AuditBreak {
                seq: entry.first_seq.max(1),
                reason: format!(
                    "certificate {} (history entry {}, used from record {} on): {reason}",
                    to_hex(&leaf),
                    i + 1,
                    entry.first_seq.max(1)
                ),
            };
            let at = match entry.chain.first().map(|d| Identity::from_der(d)) {
                Some(Ok(id)) => entry.first_used.clamp(id.not_before, id.not_after),
                Some(Err(e)) => return Err(broken(e.to_string())),
                None => return Err(broken("empty chain".into())),
            };
            let identity = relay_certificate(&entry.chain, anchors, at, relay, organisation)
                .map_err(|e| broken(e.to_string()))?;
            certificates.push(Checked {
                fingerprint: leaf,
                public_key: identity.public_key,
            });
        }
        Ok(Self {
            relay: relay.to_string(),
            certificates,
            announced: None,
            prev: [0; 32],
            next: 1,
            checkpoints: 0,
            last_checkpoint: 0,
        })
    }

    /// The position the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Checks the next record, whose stored hash is `hash`.
    ///
    /// # Errors
    /// An [`AuditBreak`] naming the record and what is wrong.
    pub fn record(&mut self, r: &RecordFields<'_>, hash: &[u8; 32]) -> Result<(), AuditBreak> {
        let seq = self.next;
        let broken = |reason: String| AuditBreak { seq, reason };
        if r.seq != seq {
            return Err(broken(format!(
                "found record {} where record {seq} should be (deleted or reordered)",
                r.seq
            )));
        }
        if record_hash(r, &self.prev) != *hash {
            return Err(broken(
                "content or link does not match its hash (edited, deleted or reordered)".into(),
            ));
        }
        if r.kind == ADMIN_KIND && r.action == CERTIFICATE_ACTION && r.actor == self.relay {
            let named = named_certificate(r.detail)
                .ok_or_else(|| broken("announces no readable certificate".into()))?;
            if !self.certificates.iter().any(|c| c.fingerprint == named) {
                return Err(broken(format!(
                    "announces certificate {}, which the relay's certificate history does not hold (removed or swapped)",
                    to_hex(&named)
                )));
            }
            self.announced = Some(named);
        }
        if r.kind == CHECKPOINT_KIND {
            self.checkpoint(r).map_err(broken)?;
            self.checkpoints += 1;
            self.last_checkpoint = seq;
        }
        self.prev = *hash;
        self.next += 1;
        Ok(())
    }

    fn checkpoint(&self, r: &RecordFields<'_>) -> Result<(), String> {
        if self.certificates.is_empty() {
            return Err(
                "signed checkpoint, but the relay keeps no certificate history to check it".into(),
            );
        }
        let signature = r
            .detail
            .rsplit(' ')
            .next()
            .and_then(from_hex)
            .ok_or("checkpoint without a readable signature")?;
        let n = r.seq - 1;
        let message = checkpoint_message(&self.relay, n, &self.prev);
        let relay = &self.relay;
        match named_certificate(r.detail) {
            Some(named) => {
                let cert = self
                    .certificates
                    .iter()
                    .find(|c| c.fingerprint == named)
                    .ok_or_else(|| format!(
                        "checkpoint made with certificate {}, which the relay's certificate history does not hold (removed or swapped)",
                        to_hex(&named)
                    ))?;
                if let Some(announced) = self.announced
                    && announced != named
                {
                    return Err(format!(
                        "checkpoint made with certificate {}, but the chain announced certificate {} (re-signed with another key)",
                        to_hex(&named),
                        to_hex(&announced)
                    ));
                }
                if signature_verifies(&cert.public_key, &message, &signature) {
                    Ok(())
                } else {
                    Err(format!(
                        "checkpoint signature over records 1..={n} does not verify with relay {relay}'s certificate {} (forged or re-signed)",
                        to_hex(&named)
                    ))
                }
            }
            // Written before checkpoints named their certificate: any of the history.
            None if self
                .certificates
                .iter()
                .any(|c| signature_verifies(&c.public_key, &message, &signature)) =>
            {
                Ok(())
            }
            None => Err(format!(
                "checkpoint signature over records 1..={n} does not verify with any of relay {relay}'s certificates (forged or re-signed)"
            )),
        }
    }

    /// The hash of the last record checked (zeroes before the first).
    pub fn last_hash(&self) -> [u8; 32] {
        self.prev
    }

    /// What was checked so far.
    pub fn summary(&self) -> ChainSummary {
        let records = self.next - 1;
        ChainSummary {
            records,
            checkpoints: self.checkpoints,
            unsigned_tail: records - self.last_checkpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(to_hex(&[0, 0xab, 0x7f]), "00ab7f");
        assert_eq!(from_hex("00AB7f"), Some(vec![0, 0xab, 0x7f]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(""), Some(vec![]));
    }

    fn head() -> SignedAuditHead {
        SignedAuditHead {
            relay: "bz".into(),
            records: 7,
            hash: [3; 32],
            at: 1_800_000_000,
            signature: vec![1; SIGNATURE_LEN],
            chain: vec![vec![9, 8, 7]],
        }
    }

    #[test]
    fn a_head_file_round_trips_and_bad_files_are_refused() {
        let h = head();
        let text = h.to_json();
        assert!(!text.contains('\n'));
        assert_eq!(SignedAuditHead::from_json(&text).unwrap(), h);
        for bad in [
            text.replace(HEAD_FORMAT, "other"),
            text.replace("\"hash\":\"03", "\"hash\":\"zz"),
            text.replace("\"relay\"", "\"extra\":1,\"relay\""),
            "{}".to_string(),
            "x".repeat(MAX_HEAD_FILE + 1),
        ] {
            assert!(SignedAuditHead::from_json(&bad).is_err(), "{bad:.80}");
        }
        let mut short = h.clone();
        short.signature.pop();
        assert!(SignedAuditHead::from_json(&short.to_json()).is_err());
    }

    #[test]
    fn compare_finds_a_cut_and_a_rewritten_tail() {
        let h = head();
        assert_eq!(h.compare(9, Some(&[3; 32])), Ok(()));
        assert_eq!(
            h.compare(5, None),
            Err(AuditHeadError::Truncated { have: 5, want: 7 })
        );
        assert_eq!(
            h.compare(9, Some(&[4; 32])),
            Err(AuditHeadError::Rewritten { seq: 7 })
        );
        let empty = SignedAuditHead { records: 0, ..h };
        assert_eq!(empty.compare(0, None), Ok(()));
    }

    #[test]
    fn a_head_of_another_relay_or_with_a_bad_chain_is_refused() {
        let h = head();
        assert!(matches!(
            h.verify(&[], "nctv", None),
            Err(AuditHeadError::Malformed { .. })
        ));
        assert!(matches!(
            h.verify(&[], "bz", None),
            Err(AuditHeadError::Certificate { .. })
        ));
    }
}

//! The authenticated data of a notice: what relays read of it without decrypting.
//!
//! A notice's MLS PrivateMessage carries, as authenticated data, either
//!
//! * its binary label (`kring_policy` codec, whose first byte is the encoding
//!   version [`kring_policy::ENCODING_VERSION`]), or
//! * for a **forwarded** notice, a marked form that also carries the label of the
//!   original notice, so that the hub of the target community can apply the TLP
//!   forwarding rules of the original without reading the content:
//!
//! ```text
//! mark      u8 = 0xF0 (never the first byte of a label)
//! version   u8 = 1
//! orig_len  u16 big-endian (1..=MAX_ENCODED_LEN)
//! original  orig_len bytes: the original notice's binary label
//! label     the rest: this notice's binary label
//! ```
//!
//! A notice with **attachments** puts in front of either form the blobs it refers
//! to, so that every relay on its path knows which blobs it may hand to whom
//! ([`crate::attachment`]):
//!
//! ```text
//! mark      u8 = 0xF1
//! version   u8 = 1
//! count     u8 (1..=MAX_ATTACHMENTS)
//! blobs     count × (id: 32 bytes, sealed size: u64 big-endian)
//! rest      a plain label or the forwarded form above
//! ```
//!
//! Both labels decode strictly; anything else is refused. Being the MLS
//! authenticated data, the whole form is bound to the ciphertext: a relay cannot
//! add, drop or change the forward marking without every recipient refusing the
//! notice, and a recipient refuses a notice whose content claims to be a forward
//! (or not) unlike its authenticated data.

use std::collections::BTreeSet;

use kring_policy::{ForwardTarget, Label, MAX_ENCODED_LEN, PolicyError};

use crate::attachment::{BlobId, BlobRef, MAX_ATTACHMENTS, MAX_SEALED_BYTES};

/// First byte of the authenticated data of a forwarded notice.
pub const FORWARD_MARK: u8 = 0xF0;
/// Version of the forwarded form.
pub const FORWARD_VERSION: u8 = 1;
/// First byte of the authenticated data of a notice with attachments.
pub const ATTACHMENTS_MARK: u8 = 0xF1;
/// Version of the attachments form.
pub const ATTACHMENTS_VERSION: u8 = 1;
/// Bytes of one blob in the attachments form.
const BLOB_LEN: usize = 32 + 8;
/// Largest authenticated data of a notice (a forwarded one with two largest
/// labels and the most attachments).
pub const MAX_NOTICE_AAD: usize = 3 + MAX_ATTACHMENTS * BLOB_LEN + 4 + 2 * MAX_ENCODED_LEN;

// Every form fits the MLS layer's bound on authenticated data.
const _: () = assert!(MAX_NOTICE_AAD <= crate::mls::MAX_AAD_BYTES);

/// Why the authenticated data of a notice is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AadError {
    /// A label in it does not decode.
    #[error("{0}")]
    Label(#[from] PolicyError),
    /// The forwarded form is malformed.
    #[error("malformed forward marking: {0}")]
    Malformed(&'static str),
}

/// The authenticated data of a notice, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeAad {
    /// The notice's label.
    pub label: Label,
    /// For a forwarded notice, the label of the original.
    pub original: Option<Label>,
    /// The blobs of its attachments, in the notice's order.
    pub blobs: Vec<BlobRef>,
}

impl NoticeAad {
    /// An ordinary notice labelled `label`.
    pub fn plain(label: Label) -> Self {
        Self {
            label,
            original: None,
            blobs: Vec::new(),
        }
    }

    /// A forwarded notice labelled `label`, of an original labelled `original`.
    pub fn forward(label: Label, original: Label) -> Self {
        Self {
            label,
            original: Some(original),
            blobs: Vec::new(),
        }
    }

    /// The same, referring to `blobs` (at most [`MAX_ATTACHMENTS`]).
    pub fn with_blobs(mut self, blobs: Vec<BlobRef>) -> Self {
        self.blobs = blobs;
        self
    }

    /// Whether the notice is a forward.
    pub fn is_forward(&self) -> bool {
        self.original.is_some()
    }

    /// The bytes to bind to the ciphertext.
    pub fn to_bytes(&self) -> Vec<u8> {
        let rest = self.labels_to_bytes();
        if self.blobs.is_empty() {
            return rest;
        }
        let mut out = Vec::with_capacity(3 + self.blobs.len() * BLOB_LEN + rest.len());
        out.push(ATTACHMENTS_MARK);
        out.push(ATTACHMENTS_VERSION);
        // Invariant: at most MAX_ATTACHMENTS (< 256) blobs; `from_bytes` refuses more.
        out.push(u8::try_from(self.blobs.len()).unwrap_or(u8::MAX));
        for b in &self.blobs {
            out.extend_from_slice(&b.id.0);
            out.extend_from_slice(&b.size.to_be_bytes());
        }
        out.extend_from_slice(&rest);
        out
    }

    fn labels_to_bytes(&self) -> Vec<u8> {
        let label = self.label.to_bytes();
        let Some(original) = &self.original else {
            return label;
        };
        let original = original.to_bytes();
        let mut out = Vec::with_capacity(4 + original.len() + label.len());
        out.push(FORWARD_MARK);
        out.push(FORWARD_VERSION);
        // Invariant: an encoded label is at most MAX_ENCODED_LEN (< 65 536) bytes.
        out.extend_from_slice(
            &u16::try_from(original.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&original);
        out.extend_from_slice(&label);
        out
    }

    /// Decodes the authenticated data of a notice, strictly.
    ///
    /// # Errors
    /// [`AadError::Label`] when a label does not decode, [`AadError::Malformed`] for a
    /// bad forward marking.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AadError> {
        if bytes.len() > MAX_NOTICE_AAD {
            return Err(AadError::Malformed("too long"));
        }
        if bytes.first() != Some(&ATTACHMENTS_MARK) {
            return Self::labels_from_bytes(bytes);
        }
        let rest = &bytes[1..];
        let (&version, rest) = rest.split_first().ok_or(AadError::Malformed("truncated"))?;
        if version != ATTACHMENTS_VERSION {
            return Err(AadError::Malformed(
                "unknown version of the attachments form",
            ));
        }
        let (&count, mut rest) = rest.split_first().ok_or(AadError::Malformed("truncated"))?;
        let count = usize::from(count);
        if count == 0 || count > MAX_ATTACHMENTS {
            return Err(AadError::Malformed("bad number of attachments"));
        }
        let mut blobs = Vec::with_capacity(count);
        let mut total = 0u64;
        for _ in 0..count {
            let (blob, after) = rest
                .split_first_chunk::<BLOB_LEN>()
                .ok_or(AadError::Malformed("truncated"))?;
            let (id, size) = blob.split_at(32);
            let size = u64::from_be_bytes(
                size.try_into()
                    .map_err(|_| AadError::Malformed("truncated"))?,
            );
            let id = BlobId(
                id.try_into()
                    .map_err(|_| AadError::Malformed("truncated"))?,
            );
            if crate::attachment::plain_len(size).is_none() {
                return Err(AadError::Malformed("a blob size no sealed blob has"));
            }
            if blobs.iter().any(|b: &BlobRef| b.id == id) {
                return Err(AadError::Malformed("a blob named twice"));
            }
            total = total.saturating_add(size);
            blobs.push(BlobRef { id, size });
            rest = after;
        }
        if total > MAX_SEALED_BYTES {
            return Err(AadError::Malformed(
                "attachments larger than a notice may carry",
            ));
        }
        if rest.first() == Some(&ATTACHMENTS_MARK) {
            return Err(AadError::Malformed("attachments marked twice"));
        }
        Ok(Self::labels_from_bytes(rest)?.with_blobs(blobs))
    }

    fn labels_from_bytes(bytes: &[u8]) -> Result<Self, AadError> {
        if bytes.first() != Some(&FORWARD_MARK) {
            return Ok(Self::plain(Label::from_bytes(bytes)?));
        }
        if bytes.len() > MAX_NOTICE_AAD {
            return Err(AadError::Malformed("too long"));
        }
        let rest = &bytes[1..];
        let (&version, rest) = rest.split_first().ok_or(AadError::Malformed("truncated"))?;
        if version != FORWARD_VERSION {
            return Err(AadError::Malformed("unknown version"));
        }
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or(AadError::Malformed("truncated"))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || len > MAX_ENCODED_LEN || len >= rest.len() {
            return Err(AadError::Malformed("bad length of the original's label"));
        }
        let (original, label) = rest.split_at(len);
        Ok(Self::forward(
            Label::from_bytes(label)?,
            Label::from_bytes(original)?,
        ))
    }
}

/// The label in the authenticated data of a notice (either form).
///
/// # Errors
/// As [`NoticeAad::from_bytes`].
pub fn label_of(bytes: &[u8]) -> Result<Label, AadError> {
    NoticeAad::from_bytes(bytes).map(|a| a.label)
}

/// A rule a forwarded notice must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardRule {
    /// The forward carries the original's label or a higher one, never a lower
    /// ([`kring_policy::keeps_or_raises`]).
    NeverLower,
    /// The original's TLP colour allows the target community
    /// ([`kring_policy::may_forward`]): RED never, AMBER+STRICT only among the
    /// forwarder's organisation, AMBER among it and its declared clients, GREEN and
    /// CLEAR anywhere.
    Tlp,
    /// The forward's label is within the target community's maximum label.
    CommunityMaximum,
    /// The forward's label is within the forwarder's clearance.
    Clearance,
}

impl ForwardRule {
    /// The rule's name, as a refusal states it.
    pub fn name(self) -> &'static str {
        match self {
            ForwardRule::NeverLower => "never-lower label",
            ForwardRule::Tlp => "TLP",
            ForwardRule::CommunityMaximum => "community maximum",
            ForwardRule::Clearance => "clearance",
        }
    }
}

/// Why a forward is refused: the rule and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forward refused by the {} rule: {reason}", rule.name())]
pub struct ForwardRefusal {
    /// The rule broken.
    pub rule: ForwardRule,
    /// Why, for a person.
    pub reason: String,
}

/// The rules of a forward that need no clearance: [`ForwardRule::Tlp`] for the
/// original's colour, then [`ForwardRule::NeverLower`], for a notice forwarded by
/// organisation `forwarder_org` (with its declared `clients`) into `community`, whose
/// members belong to `member_orgs`. The device checks these with the community maximum and
/// the user's clearance; the community's hub checks them again.
///
/// # Errors
/// The first rule broken.
pub fn check_forward(
    original: &Label,
    label: &Label,
    community: &str,
    forwarder_org: &str,
    member_orgs: &BTreeSet<String>,
    clients: &BTreeSet<String>,
) -> Result<(), ForwardRefusal> {
    let target = ForwardTarget::community(community, member_orgs.iter().cloned())
        .with_clients(clients.iter().cloned());
    let d = kring_policy::may_forward(original, forwarder_org, &target);
    if !d.allowed {
        return Err(ForwardRefusal {
            rule: ForwardRule::Tlp,
            reason: d.reason(),
        });
    }
    let d = kring_policy::keeps_or_raises(original, label);
    if !d.allowed {
        return Err(ForwardRefusal {
            rule: ForwardRule::NeverLower,
            reason: d.reason(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Label {
        s.parse().unwrap()
    }

    #[test]
    fn a_plain_notice_is_its_label_bytes() {
        let label = l("NL:STG-CONFIDENTIEEL;TLP=GREEN");
        let aad = NoticeAad::plain(label.clone());
        assert_eq!(aad.to_bytes(), label.to_bytes());
        assert_eq!(NoticeAad::from_bytes(&label.to_bytes()).unwrap(), aad);
        assert!(!aad.is_forward());
    }

    #[test]
    fn a_forward_round_trips_and_carries_both_labels() {
        let aad = NoticeAad::forward(l("NL:STG-GEHEIM;TLP=AMBER"), l("TLP:GREEN"));
        let bytes = aad.to_bytes();
        assert_eq!(bytes[0], FORWARD_MARK);
        assert_eq!(NoticeAad::from_bytes(&bytes).unwrap(), aad);
        assert_eq!(label_of(&bytes).unwrap(), l("NL:STG-GEHEIM;TLP=AMBER"));
        assert!(bytes.len() <= MAX_NOTICE_AAD);
    }

    #[test]
    fn malformed_forwards_are_refused() {
        let good = NoticeAad::forward(l("TLP:AMBER"), l("TLP:GREEN")).to_bytes();
        // Truncated anywhere, or with a byte more.
        for n in 0..good.len() {
            assert!(NoticeAad::from_bytes(&good[..n]).is_err(), "{n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(NoticeAad::from_bytes(&longer).is_err());
        let mut version = good.clone();
        version[1] = 2;
        assert_eq!(
            NoticeAad::from_bytes(&version),
            Err(AadError::Malformed("unknown version"))
        );
        // The original's length covering everything leaves no label.
        let mut len = good.clone();
        let all = u16::try_from(good.len() - 4).unwrap().to_be_bytes();
        len[2..4].copy_from_slice(&all);
        assert!(NoticeAad::from_bytes(&len).is_err());
        assert!(NoticeAad::from_bytes(&[FORWARD_MARK]).is_err());
        assert!(NoticeAad::from_bytes(&[]).is_err());
    }

    fn blobs(n: usize) -> Vec<BlobRef> {
        (0..n)
            .map(|i| BlobRef {
                id: BlobId([i as u8 + 1; 32]),
                size: crate::attachment::sealed_len(1000 * i as u64),
            })
            .collect()
    }

    #[test]
    fn attachments_round_trip_in_front_of_either_form() {
        let plain = NoticeAad::plain(l("TLP:GREEN")).with_blobs(blobs(2));
        let forward =
            NoticeAad::forward(l("TLP:AMBER"), l("TLP:GREEN")).with_blobs(blobs(MAX_ATTACHMENTS));
        for aad in [plain, forward] {
            let bytes = aad.to_bytes();
            assert_eq!(bytes[0], ATTACHMENTS_MARK);
            assert!(bytes.len() <= MAX_NOTICE_AAD);
            assert_eq!(NoticeAad::from_bytes(&bytes).unwrap(), aad);
            assert_eq!(label_of(&bytes).unwrap(), aad.label);
        }
    }

    #[test]
    fn malformed_attachment_lists_are_refused() {
        let good = NoticeAad::forward(l("TLP:AMBER"), l("TLP:GREEN"))
            .with_blobs(blobs(2))
            .to_bytes();
        for n in 0..good.len() {
            assert!(NoticeAad::from_bytes(&good[..n]).is_err(), "{n}");
        }
        let mut count = good.clone();
        count[2] = 0;
        assert!(NoticeAad::from_bytes(&count).is_err());
        let mut twice = NoticeAad::plain(l("TLP:GREEN"))
            .with_blobs(blobs(2))
            .to_bytes();
        twice[3 + 40..3 + 40 + 32].copy_from_slice(&[1; 32]);
        assert_eq!(
            NoticeAad::from_bytes(&twice),
            Err(AadError::Malformed("a blob named twice"))
        );
        let mut size = NoticeAad::plain(l("TLP:GREEN"))
            .with_blobs(blobs(1))
            .to_bytes();
        size[3 + 32..3 + 40].copy_from_slice(&5u64.to_be_bytes());
        assert!(NoticeAad::from_bytes(&size).is_err());
        let mut huge = blobs(2);
        huge[0].size = crate::attachment::sealed_len(crate::attachment::MAX_ATTACHMENT_BYTES);
        huge[1].size = crate::attachment::sealed_len(1 << 20);
        let huge = NoticeAad::plain(l("TLP:GREEN")).with_blobs(huge).to_bytes();
        assert!(NoticeAad::from_bytes(&huge).is_err());
        let mut nested = vec![ATTACHMENTS_MARK, ATTACHMENTS_VERSION, 1];
        nested.extend_from_slice(&[1; 32]);
        nested.extend_from_slice(&crate::attachment::sealed_len(0).to_be_bytes());
        nested.extend_from_slice(
            &NoticeAad::plain(l("TLP:GREEN"))
                .with_blobs(blobs(1))
                .to_bytes(),
        );
        assert!(NoticeAad::from_bytes(&nested).is_err());
    }
}

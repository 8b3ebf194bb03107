//! The deterministic, versioned binary encoding of labels and clearances.
//!
//! This is what gets bound to ciphertext (MLS authenticated data), so there is exactly one
//! encoding of every value and decoding is strict: unknown versions, wrong kinds, truncation,
//! trailing bytes, non-canonical order, duplicates, unknown policies/levels/tags/values and
//! over-bound counts are all rejected, and the input size is bounded by [`MAX_ENCODED_LEN`].
//!
//! Format, version 1 (all counts and lengths are single bytes):
//!
//! ```text
//! version   u8 = 1
//! kind      u8 = b'L' (label) | b'C' (clearance)
//! policy    str
//! level     str
//! tlp       u8: 0 = none, 1 CLEAR, 2 GREEN, 3 AMBER, 4 AMBER+STRICT, 5 RED   (labels only)
//! ntags     u8 (0..=16), then per tag in strictly increasing byte order of name:
//!   name    str
//!   nvalues u8 (1..=64), then nvalues × value: str, strictly increasing byte order
//! str       = len u8 (1..=32), then len bytes from A-Z 0-9 - + _
//! ```

use crate::error::PolicyError;
use crate::label::{Clearance, Label, Marking};
use crate::registry::Registry;
use crate::tlp::Tlp;
use crate::{MAX_TAGS, MAX_VALUE_LEN, MAX_VALUES, is_token};

/// The version byte written by this build and the only one it reads.
pub const ENCODING_VERSION: u8 = 1;
/// Largest encoded label or clearance accepted by the decoders. Every value whose text form fits
/// in [`MAX_TEXT_LEN`](crate::MAX_TEXT_LEN) encodes within this.
pub const MAX_ENCODED_LEN: usize = crate::MAX_TEXT_LEN + 64;

const KIND_LABEL: u8 = b'L';
const KIND_CLEARANCE: u8 = b'C';

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Invariant: every stored name and value is a token of at most MAX_VALUE_LEN (32) bytes.
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn encode(kind: u8, marking: &Marking, tlp: Option<Option<Tlp>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENCODING_VERSION);
    out.push(kind);
    push_str(&mut out, &marking.policy);
    push_str(&mut out, &marking.level);
    if let Some(tlp) = tlp {
        out.push(tlp.map_or(0, Tlp::code));
    }
    // Invariant: at most MAX_TAGS (16) tags and MAX_VALUES (64) values per tag.
    out.push(u8::try_from(marking.tags.len()).unwrap_or(u8::MAX));
    for (name, values) in &marking.tags {
        push_str(&mut out, name);
        out.push(u8::try_from(values.len()).unwrap_or(u8::MAX));
        for v in values {
            push_str(&mut out, v);
        }
    }
    out
}

/// A bounded cursor over the input.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn u8(&mut self, field: &'static str) -> Result<u8, PolicyError> {
        let (&b, rest) = self.bytes.split_first().ok_or(PolicyError::Truncated {
            what: self.what,
            field,
        })?;
        self.bytes = rest;
        Ok(b)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, PolicyError> {
        let len = usize::from(self.u8(field)?);
        if len == 0 || len > MAX_VALUE_LEN {
            return Err(self.non_canonical(format!(
                "{field} has length {len}; lengths are 1 to {MAX_VALUE_LEN}"
            )));
        }
        if self.bytes.len() < len {
            return Err(PolicyError::Truncated {
                what: self.what,
                field,
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        let s = std::str::from_utf8(head)
            .ok()
            .filter(|s| is_token(s, MAX_VALUE_LEN));
        s.ok_or_else(|| {
            self.non_canonical(format!(
                "{field} contains bytes other than A-Z, 0-9, '-', '+', '_'"
            ))
        })
    }

    fn non_canonical(&self, detail: String) -> PolicyError {
        PolicyError::NonCanonical {
            what: self.what,
            detail,
        }
    }
}

/// The fields of an encoded label or clearance, read but not yet checked against a registry.
struct Decoded<'a> {
    policy: &'a str,
    level: &'a str,
    tlp: Option<Tlp>,
    tags: Vec<(String, Vec<String>)>,
}

/// Decodes the fields common to labels and clearances.
fn decode_parts<'a>(
    bytes: &'a [u8],
    kind: u8,
    what: &'static str,
) -> Result<Decoded<'a>, PolicyError> {
    if bytes.is_empty() {
        return Err(PolicyError::EncodingEmpty { what });
    }
    if bytes.len() > MAX_ENCODED_LEN {
        return Err(PolicyError::EncodingTooLong {
            what,
            len: bytes.len(),
            max: MAX_ENCODED_LEN,
        });
    }
    let mut r = Reader { bytes, what };
    let version = r.u8("version")?;
    if version != ENCODING_VERSION {
        return Err(PolicyError::UnsupportedVersion {
            what,
            found: version,
            supported: ENCODING_VERSION,
        });
    }
    let found = r.u8("kind")?;
    if found != kind {
        return Err(PolicyError::WrongKind {
            expected: what,
            found,
        });
    }
    let policy = r.str("policy")?;
    let level = r.str("level")?;
    let tlp = if kind == KIND_LABEL {
        match r.u8("tlp")? {
            0 => None,
            code => Some(Tlp::from_code(code).ok_or_else(|| {
                r.non_canonical(format!("TLP code {code}; codes are 0 (none) to 5 (RED)"))
            })?),
        }
    } else {
        None
    };
    let ntags = usize::from(r.u8("tag count")?);
    if ntags > MAX_TAGS {
        return Err(PolicyError::TooManyTags {
            count: ntags,
            max: MAX_TAGS,
        });
    }
    let mut tags: Vec<(String, Vec<String>)> = Vec::with_capacity(ntags);
    let mut last_name: Option<&str> = None;
    for _ in 0..ntags {
        let name = r.str("tag name")?;
        if last_name.is_some_and(|last| last >= name) {
            return Err(r.non_canonical(format!(
                "tag {name} is out of order or repeated; tags must be strictly sorted"
            )));
        }
        last_name = Some(name);
        let nvalues = usize::from(r.u8("value count")?);
        if nvalues == 0 {
            return Err(PolicyError::EmptyValue {
                tag: name.to_owned(),
            });
        }
        if nvalues > MAX_VALUES {
            return Err(PolicyError::TooManyValues {
                tag: name.to_owned(),
                count: nvalues,
                max: MAX_VALUES,
            });
        }
        let mut values: Vec<String> = Vec::with_capacity(nvalues);
        for _ in 0..nvalues {
            let v = r.str("value")?;
            if values.last().is_some_and(|last| last.as_str() >= v) {
                return Err(r.non_canonical(format!(
                    "{name} value {v} is out of order or repeated; values must be strictly sorted"
                )));
            }
            values.push(v.to_owned());
        }
        tags.push((name.to_owned(), values));
    }
    if !r.bytes.is_empty() {
        return Err(PolicyError::TrailingBytes {
            what,
            count: r.bytes.len(),
        });
    }
    Ok(Decoded {
        policy,
        level,
        tlp,
        tags,
    })
}

impl Registry {
    /// Decodes a label encoded by [`Label::to_bytes`], checked against this registry.
    pub fn label_from_bytes(&self, bytes: &[u8]) -> Result<Label, PolicyError> {
        let what = "label";
        let Decoded {
            policy,
            level,
            tlp,
            tags,
        } = decode_parts(bytes, KIND_LABEL, what)?;
        let label = self.label_from_parts(policy, level, tags, tlp)?;
        if label.to_bytes() != bytes {
            return Err(PolicyError::NonCanonical {
                what,
                detail: "re-encoding differs from the input".to_owned(),
            });
        }
        Ok(label)
    }

    /// Decodes a clearance encoded by [`Clearance::to_bytes`], checked against this registry.
    pub fn clearance_from_bytes(&self, bytes: &[u8]) -> Result<Clearance, PolicyError> {
        let what = "clearance";
        let Decoded {
            policy,
            level,
            tags,
            ..
        } = decode_parts(bytes, KIND_CLEARANCE, what)?;
        let clearance = self.clearance_from_parts(policy, level, tags)?;
        if clearance.to_bytes() != bytes {
            return Err(PolicyError::NonCanonical {
                what,
                detail: "re-encoding differs from the input".to_owned(),
            });
        }
        Ok(clearance)
    }
}

impl Label {
    /// The canonical binary encoding (format in the [`codec`](crate::codec) module docs).
    /// Deterministic: equal labels give equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(KIND_LABEL, &self.marking, Some(self.tlp))
    }

    /// Decodes [`Label::to_bytes`] output strictly, against the built-in registry.
    pub fn from_bytes(bytes: &[u8]) -> Result<Label, PolicyError> {
        Registry::builtin().label_from_bytes(bytes)
    }
}

impl Clearance {
    /// The canonical binary encoding (format in the [`codec`](crate::codec) module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(KIND_CLEARANCE, &self.marking, None)
    }

    /// Decodes [`Clearance::to_bytes`] output strictly, against the built-in registry.
    pub fn from_bytes(bytes: &[u8]) -> Result<Clearance, PolicyError> {
        Registry::builtin().clearance_from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testgen::{self, Pools};

    fn label(s: &str) -> Label {
        s.parse().unwrap()
    }

    /// Builds an encoding by hand: (policy, level, tlp code, tags).
    fn raw(
        kind: u8,
        policy: &str,
        level: &str,
        tlp: Option<u8>,
        tags: &[(&str, &[&str])],
    ) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION, kind];
        for s in [policy, level] {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        if let Some(t) = tlp {
            out.push(t);
        }
        out.push(tags.len() as u8);
        for (name, values) in tags {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(values.len() as u8);
            for v in *values {
                out.push(v.len() as u8);
                out.extend_from_slice(v.as_bytes());
            }
        }
        out
    }

    #[test]
    fn golden_vector_pins_the_format() {
        let l = label("NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER");
        let mut expected = vec![1, b'L', 2, b'N', b'L', 10];
        expected.extend_from_slice(b"STG-GEHEIM");
        expected.extend_from_slice(&[3, 2, 3]);
        expected.extend_from_slice(b"CMP");
        expected.extend_from_slice(&[1, 5]);
        expected.extend_from_slice(b"CYBER");
        expected.extend_from_slice(&[3]);
        expected.extend_from_slice(b"REL");
        expected.extend_from_slice(&[2, 3]);
        expected.extend_from_slice(b"DEU");
        expected.push(3);
        expected.extend_from_slice(b"NLD");
        assert_eq!(l.to_bytes(), expected);
        assert_eq!(Label::from_bytes(&expected).unwrap(), l);

        let c: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let mut expected = vec![1, b'C', 2, b'N', b'L', 10];
        expected.extend_from_slice(b"STG-GEHEIM");
        expected.push(0);
        assert_eq!(c.to_bytes(), expected);
        assert_eq!(Clearance::from_bytes(&expected).unwrap(), c);
    }

    #[test]
    fn decoding_is_strict() {
        use PolicyError as E;
        let good = label("NL:STG-GEHEIM;CMP=CYBER;TLP=RED").to_bytes();
        assert!(Label::from_bytes(&good).is_ok());

        assert!(matches!(
            Label::from_bytes(&[]),
            Err(E::EncodingEmpty { .. })
        ));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(matches!(
            Label::from_bytes(&v2),
            Err(E::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));
        assert!(matches!(
            Clearance::from_bytes(&good),
            Err(E::WrongKind { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            Label::from_bytes(&trailing),
            Err(E::TrailingBytes { count: 1, .. })
        ));
        for cut in 1..good.len() {
            assert!(
                matches!(Label::from_bytes(&good[..cut]), Err(E::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let too_long = vec![1u8; MAX_ENCODED_LEN + 1];
        assert!(matches!(
            Label::from_bytes(&too_long),
            Err(E::EncodingTooLong { .. })
        ));

        let unsorted_tags = raw(
            b'L',
            "NL",
            "STG-GEHEIM",
            Some(0),
            &[("REL", &["NLD"]), ("CMP", &["A"])],
        );
        assert!(matches!(
            Label::from_bytes(&unsorted_tags),
            Err(E::NonCanonical { .. })
        ));
        let dup_tags = raw(
            b'L',
            "NL",
            "STG-GEHEIM",
            Some(0),
            &[("CMP", &["A"]), ("CMP", &["B"])],
        );
        assert!(matches!(
            Label::from_bytes(&dup_tags),
            Err(E::NonCanonical { .. })
        ));
        let unsorted_values = raw(
            b'L',
            "NL",
            "STG-GEHEIM",
            Some(0),
            &[("REL", &["NLD", "DEU"])],
        );
        assert!(matches!(
            Label::from_bytes(&unsorted_values),
            Err(E::NonCanonical { .. })
        ));
        let dup_values = raw(
            b'L',
            "NL",
            "STG-GEHEIM",
            Some(0),
            &[("REL", &["NLD", "NLD"])],
        );
        assert!(matches!(
            Label::from_bytes(&dup_values),
            Err(E::NonCanonical { .. })
        ));
        let lower = raw(b'L', "nl", "STG-GEHEIM", Some(0), &[]);
        assert!(matches!(
            Label::from_bytes(&lower),
            Err(E::NonCanonical { .. })
        ));
        let bad_tlp = raw(b'L', "NL", "STG-GEHEIM", Some(6), &[]);
        assert!(matches!(
            Label::from_bytes(&bad_tlp),
            Err(E::NonCanonical { .. })
        ));
        let empty_str = raw(b'L', "", "STG-GEHEIM", Some(0), &[]);
        assert!(matches!(
            Label::from_bytes(&empty_str),
            Err(E::NonCanonical { .. })
        ));

        let unknown_policy = raw(b'L', "XX", "STG-GEHEIM", Some(0), &[]);
        assert!(matches!(
            Label::from_bytes(&unknown_policy),
            Err(E::UnknownPolicy { .. })
        ));
        let unknown_level = raw(b'L', "NL", "GEHEIM", Some(0), &[]);
        assert!(matches!(
            Label::from_bytes(&unknown_level),
            Err(E::UnknownLevel { .. })
        ));
        let unknown_tag = raw(b'L', "NL", "GEHEIM", Some(0), &[("XTAG", &["A"])]);
        assert!(Label::from_bytes(&unknown_tag).is_err());
        let unknown_tag = raw(b'L', "NL", "STG-GEHEIM", Some(0), &[("XTAG", &["A"])]);
        assert!(matches!(
            Label::from_bytes(&unknown_tag),
            Err(E::UnknownTag { .. })
        ));
        let bad_country = raw(b'L', "NL", "STG-GEHEIM", Some(0), &[("REL", &["XYZ"])]);
        assert!(matches!(
            Label::from_bytes(&bad_country),
            Err(E::UnknownValue { .. })
        ));

        let no_values = raw(b'L', "NL", "STG-GEHEIM", Some(0), &[("CMP", &[])]);
        assert!(matches!(
            Label::from_bytes(&no_values),
            Err(E::EmptyValue { .. })
        ));
        let values: Vec<String> = (0..65).map(|i| format!("V{i:02}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let many_values = raw(b'L', "NL", "STG-GEHEIM", Some(0), &[("CMP", &refs)]);
        assert!(matches!(
            Label::from_bytes(&many_values),
            Err(E::TooManyValues { .. })
        ));
        let mut many_tags = raw(b'L', "NL", "STG-GEHEIM", Some(0), &[]);
        *many_tags.last_mut().unwrap() = 17;
        assert!(matches!(
            Label::from_bytes(&many_tags),
            Err(E::TooManyTags { count: 17, .. })
        ));

        // Clearances: informative tags are not allowed, and there is no TLP byte.
        let c_info = raw(b'C', "NL", "STG-GEHEIM", None, &[("INFO", &["X"])]);
        assert!(matches!(
            Clearance::from_bytes(&c_info),
            Err(E::InformativeInClearance { .. })
        ));
        let c_with_tlp_byte = raw(b'C', "NL", "STG-GEHEIM", Some(0), &[]);
        assert!(matches!(
            Clearance::from_bytes(&c_with_tlp_byte),
            Err(E::TrailingBytes { .. })
        ));
    }

    proptest! {
        #[test]
        fn label_encoding_round_trips(l in testgen::label(Pools { wide: true })) {
            let bytes = l.to_bytes();
            prop_assert!(bytes.len() <= MAX_ENCODED_LEN);
            prop_assert_eq!(bytes[0], ENCODING_VERSION);
            let back = Label::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &l);
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn clearance_encoding_round_trips(c in testgen::clearance(Pools { wide: true })) {
            let bytes = c.to_bytes();
            let back = Clearance::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &c);
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(l) = Label::from_bytes(&bytes) {
                prop_assert_eq!(l.to_bytes(), bytes.clone());
            }
            if let Ok(c) = Clearance::from_bytes(&bytes) {
                prop_assert_eq!(c.to_bytes(), bytes);
            }
        }

        #[test]
        fn mutated_encodings_never_panic_and_stay_canonical(
            l in testgen::label(Pools { wide: false }),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = l.to_bytes();
            for (pos, b) in edits {
                let i = pos % bytes.len();
                bytes[i] = b;
            }
            bytes.truncate(bytes.len() - cut % 3);
            if let Ok(back) = Label::from_bytes(&bytes) {
                prop_assert_eq!(back.to_bytes(), bytes);
            }
        }
    }
}

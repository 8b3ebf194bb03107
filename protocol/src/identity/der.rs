//! A minimal, strict DER reader and writer for the few ASN.1 types Kring places
//! inside certificates (subjectDirectoryAttributes: `Clearance` and `Role`).
//!
//! Only what Kring needs is supported, and only in its DER form: low-tag-number
//! identifiers, definite minimal lengths, no trailing bytes. Everything is bounded
//! by the size of the input, which callers bound in turn.

use std::fmt;

/// ASN.1 identifier octets used by Kring.
pub(crate) mod tag {
    /// UNIVERSAL 3, BIT STRING (primitive).
    pub(crate) const BIT_STRING: u8 = 0x03;
    /// UNIVERSAL 6, OBJECT IDENTIFIER.
    pub(crate) const OID: u8 = 0x06;
    /// UNIVERSAL 12, UTF8String (primitive).
    pub(crate) const UTF8_STRING: u8 = 0x0C;
    /// UNIVERSAL 16, SEQUENCE / SEQUENCE OF (constructed).
    pub(crate) const SEQUENCE: u8 = 0x30;
    /// UNIVERSAL 17, SET / SET OF (constructed).
    pub(crate) const SET: u8 = 0x31;
    /// `[0]` IMPLICIT, primitive (e.g. `[0] IMPLICIT OBJECT IDENTIFIER`).
    pub(crate) const CONTEXT_0_PRIMITIVE: u8 = 0x80;
    /// `[0]`, constructed.
    pub(crate) const CONTEXT_0_CONSTRUCTED: u8 = 0xA0;
    /// `[1]`, constructed (EXPLICIT tagging, or a tagged CHOICE).
    pub(crate) const CONTEXT_1_CONSTRUCTED: u8 = 0xA1;
    /// `[6]` IMPLICIT IA5String: GeneralName `uniformResourceIdentifier`.
    pub(crate) const CONTEXT_6_PRIMITIVE: u8 = 0x86;
}

/// Longest OBJECT IDENTIFIER content accepted (bytes). Kring's longest is 23.
pub(crate) const MAX_OID_LEN: usize = 64;

/// Why some DER could not be read. The text names the offending construct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerError(pub(crate) String);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> DerError {
    DerError(msg.into())
}

/// One decoded TLV: its contents and its complete encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) content: &'a [u8],
    pub(crate) raw: &'a [u8],
}

/// Reads consecutive TLVs from a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The identifier octet of the next TLV, if any.
    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next TLV, whatever its tag.
    pub(crate) fn read_any(&mut self, what: &str) -> Result<Tlv<'a>, DerError> {
        let input = self.rest;
        let (&tag, after_tag) = input
            .split_first()
            .ok_or_else(|| err(format!("{what}: missing (input ends early)")))?;
        if tag & 0x1F == 0x1F {
            return Err(err(format!(
                "{what}: high-tag-number identifiers are not supported"
            )));
        }
        let (&first, after_len0) = after_tag
            .split_first()
            .ok_or_else(|| err(format!("{what}: length missing (input ends early)")))?;
        let (len, after_len) = if first < 0x80 {
            (usize::from(first), after_len0)
        } else if first == 0x80 {
            return Err(err(format!(
                "{what}: indefinite length is not allowed in DER"
            )));
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 {
                return Err(err(format!(
                    "{what}: length field of {n} bytes is too long"
                )));
            }
            if after_len0.len() < n {
                return Err(err(format!("{what}: length field truncated")));
            }
            let (len_bytes, after) = after_len0.split_at(n);
            if len_bytes.first() == Some(&0) {
                return Err(err(format!(
                    "{what}: length has a leading zero byte (not minimal DER)"
                )));
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if len < 0x80 {
                return Err(err(format!(
                    "{what}: long-form length {len} should use the short form in DER"
                )));
            }
            (len, after)
        };
        if after_len.len() < len {
            return Err(err(format!(
                "{what}: declares {len} content bytes but only {} remain",
                after_len.len()
            )));
        }
        let (content, rest) = after_len.split_at(len);
        let header_len = input.len() - after_len.len();
        let raw = &input[..header_len + len];
        self.rest = rest;
        Ok(Tlv { content, raw })
    }

    /// Reads the next TLV, which must carry `expected` as its identifier.
    pub(crate) fn read(&mut self, expected: u8, what: &str) -> Result<Tlv<'a>, DerError> {
        match self.peek_tag() {
            Some(t) if t == expected => self.read_any(what),
            Some(t) => Err(err(format!(
                "{what}: expected tag 0x{expected:02X}, found 0x{t:02X}"
            ))),
            None => Err(err(format!("{what}: missing (input ends early)"))),
        }
    }

    /// Reads the next TLV if it carries `expected` as its identifier.
    pub(crate) fn read_optional(
        &mut self,
        expected: u8,
        what: &str,
    ) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(expected) {
            self.read_any(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(&self, what: &str) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(err(format!(
                "{what}: {} unexpected trailing bytes",
                self.rest.len()
            )))
        }
    }
}

/// Reads exactly one TLV with identifier `expected` spanning all of `input`.
pub(crate) fn read_single<'a>(
    input: &'a [u8],
    expected: u8,
    what: &str,
) -> Result<Tlv<'a>, DerError> {
    let mut r = Reader::new(input);
    let tlv = r.read(expected, what)?;
    r.finish(what)?;
    Ok(tlv)
}

/// Checks that the elements of a DER `SET OF` (given as their complete encodings)
/// are in strictly ascending order, as DER requires (X.690 §11.6); this also rules
/// out duplicates.
pub(crate) fn check_set_order(raws: &[&[u8]], what: &str) -> Result<(), DerError> {
    if raws.windows(2).all(|w| w[0] < w[1]) {
        Ok(())
    } else {
        Err(err(format!(
            "{what}: SET OF elements are duplicated or not in DER (sorted) order"
        )))
    }
}

/// Validates the contents of an OBJECT IDENTIFIER (minimal base-128 arcs).
pub(crate) fn check_oid(content: &[u8], what: &str) -> Result<(), DerError> {
    if content.is_empty() || content.len() > MAX_OID_LEN {
        return Err(err(format!(
            "{what}: object identifier must be 1..={MAX_OID_LEN} bytes, got {}",
            content.len()
        )));
    }
    if content.last().is_some_and(|b| b & 0x80 != 0) {
        return Err(err(format!("{what}: object identifier ends mid-arc")));
    }
    let mut at_arc_start = true;
    for &b in content {
        if at_arc_start && b == 0x80 {
            return Err(err(format!(
                "{what}: object identifier arc has a non-minimal encoding"
            )));
        }
        at_arc_start = b & 0x80 == 0;
    }
    Ok(())
}

/// Decodes a UTF8String's contents.
pub(crate) fn utf8<'a>(content: &'a [u8], what: &str) -> Result<&'a str, DerError> {
    std::str::from_utf8(content).map_err(|_| err(format!("{what}: not valid UTF-8")))
}

/// Appends a DER length.
fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Fits in 7 bits: short form.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    write_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Encodes a constructed TLV from already-encoded parts.
pub(crate) fn constructed(tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

/// Encodes a `SET OF` from already-encoded elements, sorting them as DER requires.
pub(crate) fn set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    constructed(tag::SET, &elements)
}

/// Appends one base-128 OID arc.
fn push_arc(out: &mut Vec<u8>, arc: u128) {
    let mut groups = [0u8; 19];
    let mut n = 0;
    let mut v = arc;
    loop {
        groups[n] = (v & 0x7F) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        let cont = if i == 0 { 0 } else { 0x80 };
        out.push(groups[i] | cont);
    }
}

/// The contents octets of the OBJECT IDENTIFIER `first.second.rest...`, where
/// `first` is 0, 1 or 2 (callers pass constants).
pub(crate) fn oid_content(first: u8, second: u128, rest: &[u128]) -> Vec<u8> {
    let mut out = Vec::new();
    push_arc(&mut out, u128::from(first) * 40 + second);
    for &arc in rest {
        push_arc(&mut out, arc);
    }
    out
}

/// Renders OBJECT IDENTIFIER contents in dotted-decimal form for messages;
/// malformed contents are shown in hex.
pub(crate) fn oid_to_string(content: &[u8]) -> String {
    if check_oid(content, "oid").is_err() {
        return format!("(malformed OID {})", hex(content));
    }
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for &b in content {
        if acc > (u128::MAX >> 7) {
            return format!("(OID with an oversized arc {})", hex(content));
        }
        acc = (acc << 7) | u128::from(b & 0x7F);
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
    }
    let mut parts: Vec<String> = Vec::with_capacity(arcs.len() + 1);
    if let Some((&first, rest)) = arcs.split_first() {
        let (a, b) = match first {
            0..=39 => (0, first),
            40..=79 => (1, first - 40),
            _ => (2, first - 80),
        };
        parts.push(a.to_string());
        parts.push(b.to_string());
        parts.extend(rest.iter().map(u128::to_string));
    }
    parts.join(".")
}

/// Lower-case hexadecimal, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_and_are_minimal() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 65_536] {
            let content = vec![0x41u8; len];
            let enc = tlv(tag::UTF8_STRING, &content);
            let t = read_single(&enc, tag::UTF8_STRING, "x").unwrap();
            assert_eq!(t.content.len(), len);
            assert_eq!(t.raw, &enc[..]);
        }
    }

    #[test]
    fn rejects_non_der_lengths() {
        // Indefinite length.
        assert!(Reader::new(&[0x30, 0x80, 0, 0]).read_any("x").is_err());
        // Long form for a short length.
        assert!(
            Reader::new(&[0x04, 0x81, 0x01, 0xAA])
                .read_any("x")
                .is_err()
        );
        // Leading zero in long form.
        let mut v = vec![0x04, 0x82, 0x00, 0x80];
        v.extend(vec![0u8; 0x80]);
        assert!(Reader::new(&v).read_any("x").is_err());
        // Truncated content.
        assert!(Reader::new(&[0x04, 0x05, 1, 2]).read_any("x").is_err());
        // High tag number.
        assert!(
            Reader::new(&[0x1F, 0x81, 0x00, 0x00])
                .read_any("x")
                .is_err()
        );
        // Trailing data.
        assert!(read_single(&[0x05, 0x00, 0x00], 0x05, "x").is_err());
        // Length field too long.
        assert!(
            Reader::new(&[0x04, 0x85, 1, 1, 1, 1, 1])
                .read_any("x")
                .is_err()
        );
    }

    #[test]
    fn oids_encode_and_render() {
        // 2.5.4.55
        assert_eq!(oid_content(2, 5, &[4, 55]), vec![0x55, 0x04, 0x37]);
        // 1.3.101.112 (Ed25519)
        assert_eq!(oid_content(1, 3, &[101, 112]), vec![0x2B, 0x65, 0x70]);
        // 2.25.<uuid> uses the combined first arc 105 and a 19-byte arc.
        let big = u128::MAX;
        let c = oid_content(2, 25, &[big, 7]);
        assert_eq!(c[0], 0x69);
        assert_eq!(oid_to_string(&c), format!("2.25.{big}.7"));
        assert_eq!(oid_to_string(&[0x55, 0x1D, 0x09]), "2.5.29.9");
        assert!(check_oid(&[0x55, 0x80, 0x01], "x").is_err());
        assert!(check_oid(&[0x55, 0x81], "x").is_err());
        assert!(check_oid(&[], "x").is_err());
    }

    #[test]
    fn set_order_is_enforced() {
        assert!(check_set_order(&[&[1], &[2]], "x").is_ok());
        assert!(check_set_order(&[&[2], &[1]], "x").is_err());
        assert!(check_set_order(&[&[1], &[1]], "x").is_err());
        let s = set_of(vec![vec![0x0C, 0x01, b'b'], vec![0x0C, 0x01, b'a']]);
        assert_eq!(s, vec![0x31, 0x06, 0x0C, 0x01, b'a', 0x0C, 0x01, b'b']);
    }
}

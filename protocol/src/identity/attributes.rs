//! DER encoding and decoding of the subjectDirectoryAttributes extension
//! (OID 2.5.29.9) carrying a Kring clearance and roles, per RFC 5755.
//!
//! ```text
//! SubjectDirectoryAttributes ::= SEQUENCE SIZE (1..MAX) OF Attribute
//! Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE (1..MAX) OF ANY }
//!
//! Clearance ::= SEQUENCE {                                  -- attribute 2.5.4.55
//!     policyId            OBJECT IDENTIFIER,
//!     classList           ClassList DEFAULT {unclassified},
//!     securityCategories  SET OF SecurityCategory OPTIONAL }
//! ClassList ::= BIT STRING { unmarked(0), unclassified(1), restricted(2),
//!                            confidential(3), secret(4), topSecret(5) }
//! SecurityCategory ::= SEQUENCE { type [0] IMPLICIT OBJECT IDENTIFIER,
//!                                 value [1] EXPLICIT ANY }  -- Kring: SEQUENCE OF UTF8String
//!
//! RoleSyntax ::= SEQUENCE {                                 -- attribute 2.5.4.72
//!     roleAuthority  [0] GeneralNames OPTIONAL,             -- Kring: never present
//!     roleName       [1] GeneralName }                      -- Kring: URI kring:role:NAME
//! ```
//!
//! # Mapping
//!
//! * The Kring policy maps to `policyId` (table below).
//! * A clearance "up to and including" the level of rank `r` (0 = lowest of the five)
//!   sets the classList bits `1..=r+1`. Rank 0 is therefore `{unclassified}`, the
//!   DEFAULT, which DER omits. Decoding takes the highest bit set and rejects lists
//!   that are empty, have gaps, or use `unmarked` or unknown bits.
//! * Each tag (`REL`, `CMP`, `INFO`) becomes one SecurityCategory whose `type` is
//!   the tag's OID and whose `value` is a `SEQUENCE OF UTF8String` of the values held,
//!   in ascending order.
//!
//! # Kring object identifiers
//!
//! Kring's private arc is `2.25.<UUID>` (ITU-T X.667) for the fixed random UUID
//! `b161b1b2-6555-48cc-8a59-945068369396` ([`KRING_OID_UUID`]):
//!
//! | OID | meaning |
//! |---|---|
//! | `2.25.235780612169681850138773253523340956566` | Kring arc ([`KRING_OID_ARC`]) |
//! | `2.25.235780612169681850138773253523340956566.1.1` | policy `NL` |
//! | `2.25.235780612169681850138773253523340956566.1.2` | policy `EU` |
//! | `2.25.235780612169681850138773253523340956566.1.3` | policy `NATO` |
//! | `2.25.235780612169681850138773253523340956566.2.1` | security category `REL` (permissive) |
//! | `2.25.235780612169681850138773253523340956566.2.2` | security category `CMP` (restrictive) |
//! | `2.25.235780612169681850138773253523340956566.2.3` | security category `INFO` (informative) |
//! | `2.5.4.55` | RFC 5755 `Clearance` attribute (standard) |
//! | `2.5.4.72` | RFC 5755 `Role` attribute (standard) |
//! | `2.5.29.9` | RFC 5280 subjectDirectoryAttributes extension (standard) |

use std::collections::BTreeSet;
use std::str::FromStr;

use kring_policy::Clearance;

use super::IdentityError;
use super::der::{self, DerError, Reader, tag};

/// The UUID whose decimal value forms Kring's private OID arc `2.25.<UUID>`.
pub const KRING_OID_UUID: u128 = 0xb161_b1b2_6555_48cc_8a59_9450_6836_9396;

/// Kring's private OID arc in dotted form.
pub const KRING_OID_ARC: &str = "2.25.235780612169681850138773253523340956566";

/// Kring policies and the sub-arcs (under [`KRING_OID_ARC`]) of their `policyId`.
pub const POLICY_OID_ARCS: [(&str, [u8; 2]); 3] =
    [("NL", [1, 1]), ("EU", [1, 2]), ("NATO", [1, 3])];

/// Kring clearance tags and the sub-arcs (under [`KRING_OID_ARC`]) of their
/// SecurityCategory `type`.
pub const TAG_OID_ARCS: [(&str, [u8; 2]); 3] = [("REL", [2, 1]), ("CMP", [2, 2]), ("INFO", [2, 3])];

/// The subjectDirectoryAttributes extension OID (2.5.29.9) as arcs, e.g. for
/// `rcgen::CustomExtension::from_oid_content`.
pub const OID_SUBJECT_DIRECTORY_ATTRIBUTES: [u64; 4] = [2, 5, 29, 9];
/// The RFC 5755 `Clearance` attribute type (2.5.4.55) as arcs.
pub const OID_CLEARANCE_ATTRIBUTE: [u64; 4] = [2, 5, 4, 55];
/// The RFC 5755 `Role` attribute type (2.5.4.72) as arcs.
pub const OID_ROLE_ATTRIBUTE: [u64; 4] = [2, 5, 4, 72];

/// Prefix of a role's `uniformResourceIdentifier` roleName.
pub const ROLE_URI_PREFIX: &str = "kring:role:";

/// Most security categories accepted in one clearance.
pub const MAX_CATEGORIES: usize = 32;
/// Most values accepted in one security category.
pub const MAX_CATEGORY_VALUES: usize = 64;
/// Longest tag value accepted (bytes).
pub const MAX_VALUE_LEN: usize = 64;
/// Most roles accepted in one certificate.
pub const MAX_ROLES: usize = 16;
/// Longest role name accepted (bytes, without the `kring:role:` prefix).
pub const MAX_ROLE_LEN: usize = 64;
/// Most values accepted in one attribute.
pub const MAX_ATTRIBUTE_VALUES: usize = MAX_ROLES;
/// Most attributes accepted in one subjectDirectoryAttributes extension.
pub const MAX_ATTRIBUTES: usize = 16;
/// Largest subjectDirectoryAttributes extension value accepted (bytes).
pub const MAX_ATTRIBUTES_LEN: usize = 8 * 1024;

/// Highest classList bit Kring uses (`topSecret(5)`).
const TOP_CLASS_BIT: u8 = 5;

/// What a subjectDirectoryAttributes extension carries for Kring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectoryAttributes {
    /// The clearance (users) or accreditation (relays), if the certificate has one.
    pub clearance: Option<Clearance>,
    /// Role names (e.g. `org-admin`), sorted, without duplicates.
    pub roles: Vec<String>,
}

fn clearance_oid() -> Vec<u8> {
    der::oid_content(2, 5, &[4, 55])
}

fn role_oid() -> Vec<u8> {
    der::oid_content(2, 5, &[4, 72])
}

fn kring_oid(sub: [u8; 2]) -> Vec<u8> {
    der::oid_content(
        2,
        25,
        &[KRING_OID_UUID, u128::from(sub[0]), u128::from(sub[1])],
    )
}

fn policy_oid(policy: &str) -> Option<Vec<u8>> {
    POLICY_OID_ARCS
        .iter()
        .find(|(p, _)| *p == policy)
        .map(|(_, sub)| kring_oid(*sub))
}

fn policy_for_oid(content: &[u8]) -> Option<&'static str> {
    POLICY_OID_ARCS
        .iter()
        .find(|(_, sub)| kring_oid(*sub) == content)
        .map(|(p, _)| *p)
}

fn tag_oid(name: &str) -> Option<Vec<u8>> {
    TAG_OID_ARCS
        .iter()
        .find(|(t, _)| *t == name)
        .map(|(_, sub)| kring_oid(*sub))
}

fn tag_for_oid(content: &[u8]) -> Option<&'static str> {
    TAG_OID_ARCS
        .iter()
        .find(|(_, sub)| kring_oid(*sub) == content)
        .map(|(t, _)| *t)
}

fn bad_clearance(reason: impl Into<String>) -> IdentityError {
    IdentityError::BadClearance {
        reason: reason.into(),
    }
}

fn bad_role(reason: impl Into<String>) -> IdentityError {
    IdentityError::BadRole {
        reason: reason.into(),
    }
}

fn bad_attributes(reason: impl Into<String>) -> IdentityError {
    IdentityError::BadAttributes {
        reason: reason.into(),
    }
}

/// Whether `value` may appear as a tag value: printable ASCII without the label
/// syntax's separators (`:` `;` `,` `=`) or spaces, at most [`MAX_VALUE_LEN`] bytes.
fn valid_tag_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b';' | b',' | b'='))
}

/// Checks a role name: 1..=[`MAX_ROLE_LEN`] bytes of `a-z`, `0-9` and `-`,
/// starting with a letter (e.g. `org-admin`).
pub fn validate_role_name(role: &str) -> Result<(), IdentityError> {
    let ok = !role.is_empty()
        && role.len() <= MAX_ROLE_LEN
        && role.starts_with(|c: char| c.is_ascii_lowercase())
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad_role(format!(
            "role name {role:?} is invalid: use 1 to {MAX_ROLE_LEN} characters a-z, 0-9 or '-', \
             starting with a letter"
        )))
    }
}

/// The DER `ClassList` BIT STRING contents for a clearance of level rank `rank`,
/// or `None` for rank 0 (the DEFAULT `{unclassified}`, omitted in DER).
fn encode_class_list(rank: u8) -> Result<Option<Vec<u8>>, IdentityError> {
    if rank > TOP_CLASS_BIT - 1 {
        return Err(bad_clearance(format!(
            "level rank {rank} is outside the five levels Kring knows"
        )));
    }
    if rank == 0 {
        return Ok(None);
    }
    let highest = rank + 1;
    let byte = (1..=highest).fold(0u8, |acc, bit| acc | (0x80 >> bit));
    Ok(Some(vec![7 - highest, byte]))
}

/// The level rank a DER `ClassList` BIT STRING's contents stand for.
fn decode_class_list(content: &[u8]) -> Result<u8, IdentityError> {
    let (&unused, bits) = content
        .split_first()
        .ok_or_else(|| bad_clearance("classList BIT STRING has no contents"))?;
    let &[byte] = bits else {
        return Err(bad_clearance(if bits.is_empty() {
            "classList is empty: a clearance must grant at least one level".to_string()
        } else {
            format!(
                "classList is {} bytes long; only bits 0..=5 are defined",
                bits.len()
            )
        }));
    };
    if unused > 7 {
        return Err(bad_clearance(format!(
            "classList declares {unused} unused bits (at most 7 allowed)"
        )));
    }
    if byte & ((1u8 << unused) - 1) != 0 {
        return Err(bad_clearance(
            "classList has non-zero unused bits (not DER)",
        ));
    }
    if byte == 0 {
        return Err(bad_clearance(
            "classList is empty: a clearance must grant at least one level",
        ));
    }
    if byte & (1u8 << unused) == 0 {
        return Err(bad_clearance(
            "classList has trailing zero bits (not DER for a named bit list)",
        ));
    }
    let is_set = |bit: u8| byte & (0x80 >> bit) != 0;
    if is_set(0) {
        return Err(bad_clearance(
            "classList sets 'unmarked', which Kring does not use",
        ));
    }
    if let Some(bit) = (TOP_CLASS_BIT + 1..8).find(|&b| is_set(b)) {
        return Err(bad_clearance(format!(
            "classList sets undefined bit {bit} (only 1..=5 are levels)"
        )));
    }
    let highest = (1..=TOP_CLASS_BIT)
        .rev()
        .find(|&b| is_set(b))
        .ok_or_else(|| bad_clearance("classList grants no level"))?;
    if let Some(gap) = (1..highest).find(|&b| !is_set(b)) {
        return Err(bad_clearance(format!(
            "classList is inconsistent: it grants bit {highest} but not the lower bit {gap}; \
             a clearance covers every level up to its highest"
        )));
    }
    Ok(highest - 1)
}

/// DER-encodes a clearance as an RFC 5755 `Clearance` value.
pub(crate) fn encode_clearance(clearance: &Clearance) -> Result<Vec<u8>, IdentityError> {
    let policy = clearance.policy();
    let oid = policy_oid(policy).ok_or_else(|| {
        bad_clearance(format!(
            "policy {policy:?} has no Kring object identifier (known: NL, EU, NATO)"
        ))
    })?;
    let mut parts = vec![der::tlv(tag::OID, &oid)];
    if let Some(bits) = encode_class_list(clearance.level_rank())? {
        parts.push(der::tlv(tag::BIT_STRING, &bits));
    }
    let mut categories = Vec::new();
    for (name, values) in clearance.tags() {
        let type_oid = tag_oid(name).ok_or_else(|| {
            bad_clearance(format!(
                "tag {name:?} has no Kring object identifier (known: REL, CMP, INFO)"
            ))
        })?;
        if values.is_empty() || values.len() > MAX_CATEGORY_VALUES {
            return Err(bad_clearance(format!(
                "tag {name} must hold 1..={MAX_CATEGORY_VALUES} values, holds {}",
                values.len()
            )));
        }
        let mut encoded_values = Vec::with_capacity(values.len());
        for value in values {
            if !valid_tag_value(value) {
                return Err(bad_clearance(format!(
                    "tag {name} value {value:?} cannot be carried in a certificate"
                )));
            }
            encoded_values.push(der::tlv(tag::UTF8_STRING, value.as_bytes()));
        }
        let value_seq = der::constructed(tag::SEQUENCE, &encoded_values);
        categories.push(der::constructed(
            tag::SEQUENCE,
            &[
                der::tlv(tag::CONTEXT_0_PRIMITIVE, &type_oid),
                der::tlv(tag::CONTEXT_1_CONSTRUCTED, &value_seq),
            ],
        ));
    }
    if categories.len() > MAX_CATEGORIES {
        return Err(bad_clearance(format!(
            "{} security categories exceed the limit of {MAX_CATEGORIES}",
            categories.len()
        )));
    }
    if !categories.is_empty() {
        parts.push(der::set_of(categories));
    }
    Ok(der::constructed(tag::SEQUENCE, &parts))
}

fn der_clearance(e: DerError) -> IdentityError {
    bad_clearance(e.0)
}

/// Decodes one security category into its tag name and values.
fn decode_category(raw: &[u8]) -> Result<(&'static str, Vec<String>), IdentityError> {
    let seq = der::read_single(raw, tag::SEQUENCE, "SecurityCategory").map_err(der_clearance)?;
    let mut r = Reader::new(seq.content);
    let type_oid = r
        .read(tag::CONTEXT_0_PRIMITIVE, "SecurityCategory type")
        .map_err(der_clearance)?;
    der::check_oid(type_oid.content, "SecurityCategory type").map_err(der_clearance)?;
    let name = tag_for_oid(type_oid.content).ok_or_else(|| {
        bad_clearance(format!(
            "unknown security category {}; Kring knows REL, CMP and INFO",
            der::oid_to_string(type_oid.content)
        ))
    })?;
    let explicit = r
        .read(tag::CONTEXT_1_CONSTRUCTED, "SecurityCategory value")
        .map_err(der_clearance)?;
    r.finish("SecurityCategory").map_err(der_clearance)?;
    let values_seq = der::read_single(
        explicit.content,
        tag::SEQUENCE,
        "SecurityCategory value (SEQUENCE OF UTF8String)",
    )
    .map_err(der_clearance)?;
    let mut vr = Reader::new(values_seq.content);
    let mut values: Vec<String> = Vec::new();
    while !vr.is_empty() {
        if values.len() >= MAX_CATEGORY_VALUES {
            return Err(bad_clearance(format!(
                "category {name} has more than {MAX_CATEGORY_VALUES} values"
            )));
        }
        let v = vr
            .read(tag::UTF8_STRING, "security category value")
            .map_err(der_clearance)?;
        let s = der::utf8(v.content, "security category value").map_err(der_clearance)?;
        if !valid_tag_value(s) {
            return Err(bad_clearance(format!(
                "category {name} value {s:?} is not a valid tag value \
                 (1..={MAX_VALUE_LEN} printable ASCII characters without ':;,=')"
            )));
        }
        if let Some(prev) = values.last()
            && prev.as_str() >= s
        {
            return Err(bad_clearance(format!(
                "category {name} values are duplicated or not in ascending order"
            )));
        }
        values.push(s.to_string());
    }
    if values.is_empty() {
        return Err(bad_clearance(format!("category {name} holds no values")));
    }
    Ok((name, values))
}

/// Decodes an RFC 5755 `Clearance` value (its complete DER encoding).
pub(crate) fn decode_clearance(raw: &[u8]) -> Result<Clearance, IdentityError> {
    let seq = der::read_single(raw, tag::SEQUENCE, "Clearance").map_err(der_clearance)?;
    let mut r = Reader::new(seq.content);
    let policy_id = r
        .read(tag::OID, "Clearance policyId")
        .map_err(der_clearance)?;
    der::check_oid(policy_id.content, "Clearance policyId").map_err(der_clearance)?;
    let policy = policy_for_oid(policy_id.content).ok_or_else(|| {
        bad_clearance(format!(
            "unknown clearance policy {}; Kring knows NL, EU and NATO",
            der::oid_to_string(policy_id.content)
        ))
    })?;
    let rank = match r
        .read_optional(tag::BIT_STRING, "Clearance classList")
        .map_err(der_clearance)?
    {
        Some(bits) => {
            let rank = decode_class_list(bits.content)?;
            if rank == 0 {
                return Err(bad_clearance(
                    "classList explicitly encodes its DEFAULT {unclassified}; DER requires \
                     omitting it",
                ));
            }
            rank
        }
        None => 0,
    };
    let mut categories: Vec<(&'static str, Vec<String>)> = Vec::new();
    if let Some(set) = r
        .read_optional(tag::SET, "Clearance securityCategories")
        .map_err(der_clearance)?
    {
        let mut sr = Reader::new(set.content);
        let mut raws: Vec<&[u8]> = Vec::new();
        while !sr.is_empty() {
            if raws.len() >= MAX_CATEGORIES {
                return Err(bad_clearance(format!(
                    "more than {MAX_CATEGORIES} security categories"
                )));
            }
            raws.push(
                sr.read(tag::SEQUENCE, "SecurityCategory")
                    .map_err(der_clearance)?
                    .raw,
            );
        }
        if raws.is_empty() {
            return Err(bad_clearance(
                "securityCategories is present but empty (omit it instead)",
            ));
        }
        der::check_set_order(&raws, "securityCategories").map_err(der_clearance)?;
        for raw_cat in raws {
            let (name, values) = decode_category(raw_cat)?;
            if categories.iter().any(|(n, _)| *n == name) {
                return Err(bad_clearance(format!(
                    "security category {name} appears more than once"
                )));
            }
            categories.push((name, values));
        }
    }
    r.finish("Clearance").map_err(der_clearance)?;

    let level = kring_policy::level_name(policy, rank)
        .ok_or_else(|| bad_clearance(format!("policy {policy} has no level of rank {rank}")))?;
    let mut text = format!("{policy}:{level}");
    for (name, values) in &categories {
        text.push(';');
        text.push_str(name);
        text.push('=');
        text.push_str(&values.join(","));
    }
    let clearance = Clearance::from_str(&text)
        .map_err(|e| bad_clearance(format!("decoded clearance {text:?} is not valid: {e}")))?;
    // The decoded clearance must say exactly what the certificate says: re-encode
    // and compare, which also rejects any remaining non-canonical DER.
    let reencoded = encode_clearance(&clearance)?;
    if reencoded != raw {
        return Err(bad_clearance(format!(
            "clearance {text:?} is not in Kring's canonical encoding (e.g. lower-case or \
             non-canonical tag values)"
        )));
    }
    Ok(clearance)
}

/// DER-encodes one `RoleSyntax` for `role`.
fn encode_role(role: &str) -> Result<Vec<u8>, IdentityError> {
    validate_role_name(role)?;
    let uri = format!("{ROLE_URI_PREFIX}{role}");
    let name = der::tlv(tag::CONTEXT_6_PRIMITIVE, uri.as_bytes());
    Ok(der::constructed(
        tag::SEQUENCE,
        &[der::tlv(tag::CONTEXT_1_CONSTRUCTED, &name)],
    ))
}

/// Decodes one `RoleSyntax` (its complete DER encoding) into a role name.
fn decode_role(raw: &[u8]) -> Result<String, IdentityError> {
    let der_role = |e: DerError| bad_role(e.0);
    let seq = der::read_single(raw, tag::SEQUENCE, "RoleSyntax").map_err(der_role)?;
    let mut r = Reader::new(seq.content);
    if r.peek_tag() == Some(tag::CONTEXT_0_CONSTRUCTED) {
        return Err(bad_role(
            "RoleSyntax carries a roleAuthority, which Kring does not support; roles are \
             granted by the issuing organisation CA",
        ));
    }
    let name = r
        .read(tag::CONTEXT_1_CONSTRUCTED, "RoleSyntax roleName")
        .map_err(der_role)?;
    r.finish("RoleSyntax").map_err(der_role)?;
    let uri = der::read_single(
        name.content,
        tag::CONTEXT_6_PRIMITIVE,
        "roleName (must be a uniformResourceIdentifier)",
    )
    .map_err(der_role)?;
    if !uri.content.is_ascii() {
        return Err(bad_role("roleName URI is not IA5 (ASCII)"));
    }
    let uri = der::utf8(uri.content, "roleName").map_err(der_role)?;
    let role = uri.strip_prefix(ROLE_URI_PREFIX).ok_or_else(|| {
        bad_role(format!(
            "roleName {uri:?} does not start with {ROLE_URI_PREFIX:?}"
        ))
    })?;
    validate_role_name(role)?;
    Ok(role.to_string())
}

fn attribute(oid: &[u8], values: Vec<Vec<u8>>) -> Vec<u8> {
    der::constructed(
        tag::SEQUENCE,
        &[der::tlv(tag::OID, oid), der::set_of(values)],
    )
}

/// DER-encodes the value of a subjectDirectoryAttributes extension (OID 2.5.29.9)
/// carrying `clearance` as an RFC 5755 `Clearance` attribute (2.5.4.55) and
/// `roles` as one `Role` attribute (2.5.4.72) with a `RoleSyntax` value per role
/// (roleName `kring:role:NAME`).
///
/// Returns `Ok(None)` when there is nothing to carry (no clearance and no roles):
/// the extension must then be left out, as it may not be empty.
///
/// # Errors
/// [`IdentityError::BadClearance`] if the clearance uses a policy or tag without a
/// Kring OID or a value that cannot be carried; [`IdentityError::BadRole`] for an
/// invalid, duplicated or excessive list of role names.
pub fn encode_subject_directory_attributes(
    clearance: Option<&Clearance>,
    roles: &[String],
) -> Result<Option<Vec<u8>>, IdentityError> {
    if roles.len() > MAX_ROLES {
        return Err(bad_role(format!(
            "{} roles exceed the limit of {MAX_ROLES}",
            roles.len()
        )));
    }
    let unique: BTreeSet<&String> = roles.iter().collect();
    if unique.len() != roles.len() {
        return Err(bad_role("a role is listed more than once"));
    }
    let mut attributes = Vec::new();
    if let Some(c) = clearance {
        attributes.push(attribute(&clearance_oid(), vec![encode_clearance(c)?]));
    }
    if !roles.is_empty() {
        let values = roles
            .iter()
            .map(|r| encode_role(r))
            .collect::<Result<Vec<_>, _>>()?;
        attributes.push(attribute(&role_oid(), values));
    }
    if attributes.is_empty() {
        return Ok(None);
    }
    Ok(Some(der::constructed(tag::SEQUENCE, &attributes)))
}

/// Decodes the value of a subjectDirectoryAttributes extension (OID 2.5.29.9):
/// at most one `Clearance` attribute with exactly one value, and at most one
/// `Role` attribute with 1..=[`MAX_ROLES`] `RoleSyntax` values. Attributes of other
/// types are skipped (they grant nothing in Kring), within [`MAX_ATTRIBUTES`].
///
/// # Errors
/// [`IdentityError::BadAttributes`] for a malformed or oversized extension or a
/// repeated attribute; [`IdentityError::BadClearance`] / [`IdentityError::BadRole`]
/// for a malformed, inconsistent or unknown clearance or role.
pub fn decode_subject_directory_attributes(
    ext_value: &[u8],
) -> Result<DirectoryAttributes, IdentityError> {
    if ext_value.len() > MAX_ATTRIBUTES_LEN {
        return Err(bad_attributes(format!(
            "extension is {} bytes, more than the {MAX_ATTRIBUTES_LEN} allowed",
            ext_value.len()
        )));
    }
    let der_attr = |e: DerError| bad_attributes(e.0);
    let seq = der::read_single(ext_value, tag::SEQUENCE, "SubjectDirectoryAttributes")
        .map_err(der_attr)?;
    let mut r = Reader::new(seq.content);
    let mut out = DirectoryAttributes::default();
    let mut seen_clearance = false;
    let mut seen_roles = false;
    let mut count = 0usize;
    while !r.is_empty() {
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(bad_attributes(format!(
                "more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        let attr = r.read(tag::SEQUENCE, "Attribute").map_err(der_attr)?;
        let mut ar = Reader::new(attr.content);
        let oid = ar.read(tag::OID, "Attribute type").map_err(der_attr)?;
        der::check_oid(oid.content, "Attribute type").map_err(der_attr)?;
        // Errors inside a known attribute are reported as that attribute's errors.
        let in_attr: fn(DerError) -> IdentityError = if oid.content == clearance_oid().as_slice() {
            der_clearance
        } else if oid.content == role_oid().as_slice() {
            |e| bad_role(e.0)
        } else {
            |e| bad_attributes(e.0)
        };
        let set = ar.read(tag::SET, "Attribute values").map_err(in_attr)?;
        ar.finish("Attribute").map_err(in_attr)?;
        let mut vr = Reader::new(set.content);
        let mut values: Vec<&[u8]> = Vec::new();
        while !vr.is_empty() {
            if values.len() >= MAX_ATTRIBUTE_VALUES {
                return Err(in_attr(DerError(format!(
                    "attribute {} has more than {MAX_ATTRIBUTE_VALUES} values",
                    der::oid_to_string(oid.content)
                ))));
            }
            values.push(vr.read_any("Attribute value").map_err(in_attr)?.raw);
        }
        if values.is_empty() {
            return Err(in_attr(DerError(format!(
                "attribute {} has no values (SET SIZE (1..MAX))",
                der::oid_to_string(oid.content)
            ))));
        }
        if oid.content == clearance_oid().as_slice() {
            if seen_clearance {
                return Err(bad_clearance("the Clearance attribute appears twice"));
            }
            seen_clearance = true;
            let [value] = values.as_slice() else {
                return Err(bad_clearance(format!(
                    "the Clearance attribute has {} values; Kring certificates carry exactly one",
                    values.len()
                )));
            };
            out.clearance = Some(decode_clearance(value)?);
        } else if oid.content == role_oid().as_slice() {
            if seen_roles {
                return Err(bad_role("the Role attribute appears twice"));
            }
            seen_roles = true;
            der::check_set_order(&values, "Role values").map_err(|e| bad_role(e.0))?;
            let mut roles = values
                .iter()
                .map(|v| decode_role(v))
                .collect::<Result<Vec<_>, _>>()?;
            roles.sort();
            if roles.windows(2).any(|w| w[0] == w[1]) {
                return Err(bad_role("a role is listed more than once"));
            }
            out.roles = roles;
        }
    }
    if count == 0 {
        return Err(bad_attributes(
            "the extension holds no attributes (SIZE (1..MAX) requires one)",
        ));
    }
    Ok(out)
}

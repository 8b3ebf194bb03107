//! The error type of this crate: what went wrong with a label, clearance or encoding, and what
//! is allowed instead.

use crate::scheme::SchemeError;

/// Everything that can go wrong when reading, building or encoding a [`Label`](crate::Label) or
/// [`Clearance`](crate::Clearance).
///
/// Every message says what is wrong and what is allowed, so it can be shown to a person as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text form is longer than [`MAX_TEXT_LEN`](crate::MAX_TEXT_LEN).
    #[error("label text is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is empty or only white space.
    #[error(
        "empty label; expected POLICY:LEVEL[;TAG=V1,V2...][;TLP=COLOUR], e.g. NL:STG-CONFIDENTIEEL"
    )]
    Empty,
    /// A character outside the label alphabet.
    #[error(
        "invalid character {ch:?} at position {position}; labels use only letters A-Z, digits, \
         '-', '+', '_', the separators ':' ';' '=' ',' and spaces around separators"
    )]
    InvalidCharacter {
        /// The offending character.
        ch: char,
        /// Its position (0-based, in characters).
        position: usize,
    },
    /// The first part has no `:` separating policy and level.
    #[error(
        "'{text}' has no level; expected POLICY:LEVEL (e.g. NL:STG-CONFIDENTIEEL) or TLP:COLOUR"
    )]
    MissingLevel {
        /// The first part of the label as given.
        text: String,
    },
    /// A policy, level, tag or value that is not a well-formed token.
    #[error(
        "{what} '{text}' is not valid: it must be 1 to {max} characters from A-Z, 0-9, '-', '+', \
         '_' (spaces are only allowed around separators)"
    )]
    InvalidToken {
        /// Which part: "policy", "level", "tag" or "REL value" etc.
        what: String,
        /// The text as given (upper-cased).
        text: String,
        /// Maximum length of such a token.
        max: usize,
    },
    /// The policy is not one of the built-in (or registry's) policies.
    #[error("unknown policy '{policy}'; valid policies: {valid} (or TLP:COLOUR)")]
    UnknownPolicy {
        /// The policy as given.
        policy: String,
        /// The valid policies, comma separated.
        valid: String,
    },
    /// The level does not exist in the policy.
    #[error("unknown level '{level}' for policy {policy}; valid levels (lowest first): {valid}")]
    UnknownLevel {
        /// The level as given.
        level: String,
        /// The policy.
        policy: String,
        /// The policy's levels, lowest first, comma separated.
        valid: String,
    },
    /// Two `;` in a row, or a trailing `;`.
    #[error(
        "empty tag at position {index} (counting from 1 after POLICY:LEVEL); remove the stray ';'"
    )]
    EmptySegment {
        /// 1-based index of the empty tag segment.
        index: usize,
    },
    /// A tag segment without `=`.
    #[error("tag '{segment}' has no '='; expected TAG=V1,V2 (e.g. REL=NLD,DEU or CMP=CYBER)")]
    MissingEquals {
        /// The segment as given.
        segment: String,
    },
    /// The tag is not defined by the policy.
    #[error("unknown tag '{tag}' for policy {policy}; valid tags: {valid}, TLP")]
    UnknownTag {
        /// The tag as given.
        tag: String,
        /// The policy.
        policy: String,
        /// Valid tag names, comma separated.
        valid: String,
    },
    /// The same tag appears twice.
    #[error("tag {tag} appears more than once; list all its values in one {tag}=V1,V2 entry")]
    DuplicateTag {
        /// The repeated tag.
        tag: String,
    },
    /// A tag without values, or an empty value between commas.
    #[error(
        "tag {tag} has an empty value; give at least one value and no empty entries between commas"
    )]
    EmptyValue {
        /// The tag.
        tag: String,
    },
    /// A value that is not in the tag's value set (e.g. not a country code).
    #[error("{tag} value '{value}' is not valid: expected {expected}")]
    UnknownValue {
        /// The tag.
        tag: String,
        /// The value as given.
        value: String,
        /// What the tag accepts.
        expected: String,
    },
    /// More tags than [`MAX_TAGS`](crate::MAX_TAGS).
    #[error("{count} tags given; at most {max} are allowed")]
    TooManyTags {
        /// Number of tags given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More values in one tag than [`MAX_VALUES`](crate::MAX_VALUES).
    #[error("tag {tag} has {count} values; at most {max} are allowed")]
    TooManyValues {
        /// The tag.
        tag: String,
        /// Number of distinct values.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not a TLP 2.0 colour.
    #[error("unknown TLP colour '{colour}'; valid colours: CLEAR, GREEN, AMBER, AMBER+STRICT, RED")]
    UnknownTlp {
        /// The colour as given.
        colour: String,
    },
    /// `TLP=` with several colours.
    #[error(
        "TLP takes exactly one colour, got '{given}'; valid colours: CLEAR, GREEN, AMBER, AMBER+STRICT, RED"
    )]
    TlpNotSingle {
        /// The values as given.
        given: String,
    },
    /// `TLP:COLOUR` followed by tags.
    #[error(
        "the TLP:{colour} shorthand stands alone; to add tags write the long form, e.g. {long}"
    )]
    ShorthandWithTags {
        /// The colour.
        colour: String,
        /// The long form to use instead.
        long: String,
    },
    /// `TLP` given as an ordinary tag where the TLP colour is a separate part (parts, bytes).
    #[error(
        "TLP is a marking, not a tag: give it as the label's TLP colour (text form ';TLP=COLOUR')"
    )]
    TlpAsTag,
    /// A clearance with a TLP marking.
    #[error(
        "a clearance cannot carry a TLP marking (TLP governs sharing, not access); remove the TLP part"
    )]
    TlpInClearance,
    /// A clearance holding an informative tag.
    #[error(
        "a clearance cannot hold informative tag {tag} (informative tags never decide access); remove it"
    )]
    InformativeInClearance {
        /// The tag.
        tag: String,
    },
    /// Binary encoding: no bytes at all.
    #[error("encoded {what} is empty")]
    EncodingEmpty {
        /// "label" or "clearance".
        what: &'static str,
    },
    /// Binary encoding: unknown format version.
    #[error("unsupported {what} encoding version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// "label" or "clearance".
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Binary encoding: a clearance where a label was expected or vice versa.
    #[error("encoded data is not a {expected} (kind byte {found:#04x})")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// The kind byte found.
        found: u8,
    },
    /// Binary encoding: input ended early.
    #[error("encoded {what} is truncated (input ended while reading {field})")]
    Truncated {
        /// "label" or "clearance".
        what: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// Binary encoding: bytes after the end.
    #[error("{count} unexpected bytes after the end of the encoded {what}")]
    TrailingBytes {
        /// "label" or "clearance".
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// Binary encoding: input longer than [`MAX_ENCODED_LEN`](crate::MAX_ENCODED_LEN).
    #[error("encoded {what} is {len} bytes; at most {max} bytes are allowed")]
    EncodingTooLong {
        /// "label" or "clearance".
        what: &'static str,
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Binary encoding: well-formed but not the one canonical encoding.
    #[error("encoded {what} is not canonical: {detail}")]
    NonCanonical {
        /// "label" or "clearance".
        what: &'static str,
        /// What is not canonical.
        detail: String,
    },
    /// Two policies with no declared equivalence.
    #[error("policy {from} has no equivalence to {to}")]
    NoEquivalence {
        /// Source policy.
        from: String,
        /// Target policy.
        to: String,
    },
    /// Two equivalent policies, but this level has no counterpart.
    #[error("level {level} of policy {from} has no declared equivalent in policy {to}")]
    NoEquivalentLevel {
        /// Source policy.
        from: String,
        /// The level without a counterpart.
        level: String,
        /// Target policy.
        to: String,
    },
    /// A policy definition file is invalid (only from [`Registry::from_sources`](crate::Registry::from_sources)).
    #[error(transparent)]
    Scheme(#[from] SchemeError),
}

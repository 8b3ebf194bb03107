//! Notices: the JSON document members exchange inside MLS application messages, and
//! what a user fills in to file one.
//!
//! The JSON form is fixed — exactly these fields, in this order:
//! `{"id","community","label","kind","category","title","body","sender","filed_at",
//! "in_reply_to","stix","forwarded_from","attachments"}` (`forwarded_from`: `null`, or
//! for a forwarded notice `{"community","id","sender","filed_at"}` of the notice
//! forwarded; `attachments`: `[{"name","size","sha256"}]`).
//! The same document is the MLS plaintext, so a receiver checks it strictly
//! ([`Notice::from_plaintext`]): unknown fields, oversized fields and malformed values
//! are refused. The plaintext leaves `forwarded_from` out when it is `null` and
//! `attachments` when there are none, so that such a notice reads the same as before
//! the fields existed. In the plaintext an attachment also carries what opens it: the
//! name and sealed size of its blob and its key ([`kring_protocol::attachment`]); the
//! `--json` form shows only name, size and SHA-256.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use kring_protocol::wire::check_qualified_id;

/// Longest title, in bytes.
pub const MAX_TITLE: usize = 256;
/// Longest body, in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest label text, in bytes.
pub const MAX_LABEL_TEXT: usize = 1024;
/// Most STIX objects attached to one notice.
pub const MAX_STIX_OBJECTS: usize = 1000;
/// Largest STIX attachment (serialised JSON), in bytes.
pub const MAX_STIX_BYTES: usize = 256 * 1024;
/// Largest notice plaintext, in bytes (well under the 8 MiB wire frame).
pub const MAX_PLAINTEXT: usize = 640 * 1024;

/// Why a notice or one of its parts is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// A field is missing, empty, too long or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The document is not a notice.
    #[error("not a valid notice document: {0}")]
    Malformed(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> NoticeError {
    NoticeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// What a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// A short report of something seen (filed by embassy staff).
    Signal,
    /// A longer notice.
    Notice,
    /// An answer to another notice (`in_reply_to` is set).
    Reply,
}

/// The subject area of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Espionage.
    Espionage,
    /// Cyber incidents.
    Cyber,
    /// Disinformation and influence operations.
    Disinformation,
    /// Interference (e.g. with a diaspora).
    Interference,
    /// Economic security.
    Economic,
    /// Anything else.
    Other,
}

macro_rules! text_enum {
    ($t:ty, $what:literal, [$($v:ident => $s:literal),+ $(,)?]) => {
        impl $t {
            /// The lower-case name used on the command line and in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            /// Every value, in declaration order.
            pub const ALL: &'static [$t] = &[$(Self::$v),+];
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = NoticeError;
            fn from_str(s: &str) -> Result<Self, NoticeError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($s => Ok(Self::$v),)+
                    _ => Err(invalid($what, format!(
                        "{s:?} is not one of: {}",
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

text_enum!(NoticeKind, "kind", [Signal => "signal", Notice => "notice", Reply => "reply"]);
text_enum!(Category, "category", [
    Espionage => "espionage",
    Cyber => "cyber",
    Disinformation => "disinformation",
    Interference => "interference",
    Economic => "economic",
    Other => "other",
]);

/// A notice as exchanged between members and shown with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// Random (v4) UUID chosen by the filer.
    pub id: Uuid,
    /// Community id `NAME@HUB`.
    pub community: String,
    /// Canonical text of the label (also bound to the ciphertext as authenticated data).
    pub label: String,
    /// Signal, notice or reply.
    pub kind: NoticeKind,
    /// Subject area.
    pub category: Category,
    /// One-line title.
    pub title: String,
    /// Free text.
    pub body: String,
    /// The filer, `NAME@RELAY`.
    pub sender: String,
    /// When it was filed, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub filed_at: OffsetDateTime,
    /// The notice this one answers.
    pub in_reply_to: Option<Uuid>,
    /// Attached STIX 2.1 objects.
    pub stix: Option<Vec<serde_json::Value>>,
    /// For a forwarded notice: the notice it forwards (a notice without it decodes
    /// as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_from: Option<ForwardedFrom>,
    /// Attached files (none decodes as empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// An attached file: what a recipient sees of it, and what fetches and opens it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// File name (no directory).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// The sealed blob's name (SHA-256 of the sealed bytes), hex.
    pub blob: String,
    /// The key that opens the blob, hex (32 bytes).
    pub key: String,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// The blob as relays know it (name and sealed size).
    pub fn blob_ref(&self) -> Result<kring_protocol::attachment::BlobRef, NoticeError> {
        let id = kring_protocol::attachment::BlobId::from_hex(&self.blob)
            .ok_or_else(|| invalid("attachments", "a blob name is 64 hex digits"))?;
        Ok(kring_protocol::attachment::BlobRef {
            id,
            size: kring_protocol::attachment::sealed_len(self.size),
        })
    }

    /// The key, as bytes.
    pub fn key_bytes(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, NoticeError> {
        let bytes = kring_protocol::attachment::unhex(&self.key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| invalid("attachments", "a key is 64 hex digits"))?;
        Ok(zeroize::Zeroizing::new(bytes))
    }

    /// The plaintext SHA-256, as bytes.
    pub fn sha256_bytes(&self) -> Result<[u8; 32], NoticeError> {
        kring_protocol::attachment::unhex(&self.sha256)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| invalid("attachments", "a SHA-256 is 64 hex digits"))
    }
}

/// Checks an attachment's file name: 1 to
/// [`MAX_NAME`](kring_protocol::attachment::MAX_NAME) bytes, no directory, no
/// control characters, not `.` or `..`, not hidden.
pub fn check_attachment_name(name: &str) -> Result<(), NoticeError> {
    let bad = |why: &str| invalid("attachments", format!("file name {name:?}: {why}"));
    if name.is_empty() || name.len() > kring_protocol::attachment::MAX_NAME {
        return Err(bad("must be 1 to 255 bytes"));
    }
    // Portable on every file system, and shown as it is: no separators or
    // characters Windows refuses, no control, direction or invisible formatting
    // characters (which could disguise an extension).
    const INVISIBLE: &[char] = &[
        '\u{061c}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}',
        '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2060}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{feff}',
    ];
    if name.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|'])
        || name
            .chars()
            .any(|c| c.is_control() || INVISIBLE.contains(&c))
    {
        return Err(bad(
            "no directories, control or invisible characters, or any of : * ? \" < > |",
        ));
    }
    if name.ends_with(['.', ' ']) {
        return Err(bad("must not end with a dot or a space"));
    }
    if name.starts_with('.') {
        return Err(bad("must not start with a dot"));
    }
    Ok(())
}

/// What `--json` shows of an attachment.
#[derive(Serialize)]
struct AttachmentJson<'a> {
    name: &'a str,
    size: u64,
    sha256: &'a str,
}

/// Where a forwarded notice comes from: the notice forwarded, as its recipients in
/// its own community saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedFrom {
    /// Its community, `NAME@HUB`.
    pub community: String,
    /// Its id.
    pub id: Uuid,
    /// Its filer, `NAME@RELAY`.
    pub sender: String,
    /// When it was filed, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub filed_at: OffsetDateTime,
}

/// The `--json` form of a notice: every field, `forwarded_from` included when `null`.
#[derive(Serialize)]
struct NoticeJson<'a> {
    id: &'a Uuid,
    community: &'a str,
    label: &'a str,
    kind: NoticeKind,
    category: Category,
    title: &'a str,
    body: &'a str,
    sender: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    filed_at: OffsetDateTime,
    in_reply_to: &'a Option<Uuid>,
    stix: &'a Option<Vec<serde_json::Value>>,
    forwarded_from: &'a Option<ForwardedFrom>,
    attachments: Vec<AttachmentJson<'a>>,
}

impl Notice {
    /// Checks every field's form and bounds (not the label's meaning: that is policy's).
    pub fn validate(&self) -> Result<(), NoticeError> {
        check_qualified_id("community", &self.community)
            .map_err(|e| invalid("community", e.to_string()))?;
        check_qualified_id("sender", &self.sender).map_err(|e| invalid("sender", e.to_string()))?;
        if self.label.trim().is_empty() || self.label.len() > MAX_LABEL_TEXT {
            return Err(invalid(
                "label",
                format!("must be 1 to {MAX_LABEL_TEXT} bytes"),
            ));
        }
        check_title(&self.title)?;
        check_body(&self.body)?;
        if self.filed_at.offset() != time::UtcOffset::UTC {
            return Err(invalid("filed_at", "must be in UTC"));
        }
        match (self.kind, self.in_reply_to) {
            (NoticeKind::Reply, None) => {
                return Err(invalid(
                    "in_reply_to",
                    "a reply must name the notice it answers",
                ));
            }
            (NoticeKind::Signal | NoticeKind::Notice, Some(_)) => {
                return Err(invalid(
                    "in_reply_to",
                    "only a reply answers another notice",
                ));
            }
            _ => {}
        }
        if let Some(stix) = &self.stix {
            check_stix_objects(stix)?;
        }
        check_attachments(&self.attachments)?;
        if let Some(from) = &self.forwarded_from {
            check_qualified_id("forwarded_from", &from.community)
                .map_err(|e| invalid("forwarded_from", e.to_string()))?;
            check_qualified_id("forwarded_from", &from.sender)
                .map_err(|e| invalid("forwarded_from", e.to_string()))?;
            if from.filed_at.offset() != time::UtcOffset::UTC {
                return Err(invalid("forwarded_from", "filed_at must be in UTC"));
            }
            if from.community == self.community {
                return Err(invalid(
                    "forwarded_from",
                    "a notice is forwarded into another community",
                ));
            }
        }
        Ok(())
    }

    /// The MLS plaintext: this notice's JSON.
    pub fn to_plaintext(&self) -> Result<Vec<u8>, NoticeError> {
        let bytes = serde_json::to_vec(self).map_err(|e| NoticeError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_PLAINTEXT {
            return Err(invalid(
                "notice",
                format!("{} bytes; at most {MAX_PLAINTEXT} are allowed", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Parses and validates a decrypted plaintext.
    pub fn from_plaintext(bytes: &[u8]) -> Result<Notice, NoticeError> {
        if bytes.len() > MAX_PLAINTEXT {
            return Err(invalid(
                "notice",
                format!("{} bytes; at most {MAX_PLAINTEXT} are allowed", bytes.len()),
            ));
        }
        let notice: Notice =
            serde_json::from_slice(bytes).map_err(|e| NoticeError::Malformed(e.to_string()))?;
        notice.validate()?;
        Ok(notice)
    }

    /// The notice as one line of JSON (the `--json` form).
    pub fn to_json_line(&self) -> String {
        let json = NoticeJson {
            id: &self.id,
            community: &self.community,
            label: &self.label,
            kind: self.kind,
            category: self.category,
            title: &self.title,
            body: &self.body,
            sender: &self.sender,
            filed_at: self.filed_at,
            in_reply_to: &self.in_reply_to,
            stix: &self.stix,
            forwarded_from: &self.forwarded_from,
            attachments: self
                .attachments
                .iter()
                .map(|a| AttachmentJson {
                    name: &a.name,
                    size: a.size,
                    sha256: &a.sha256,
                })
                .collect(),
        };
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(&json).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Checks a notice's attachments: at most
/// [`MAX_ATTACHMENTS`](kring_protocol::attachment::MAX_ATTACHMENTS), at most
/// [`MAX_ATTACHMENT_BYTES`](kring_protocol::attachment::MAX_ATTACHMENT_BYTES) in all,
/// names valid and distinct, hashes, blob names and keys well-formed, no blob twice.
pub fn check_attachments(attachments: &[Attachment]) -> Result<(), NoticeError> {
    use kring_protocol::attachment::{MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS};
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(invalid(
            "attachments",
            format!("{} files; at most {MAX_ATTACHMENTS}", attachments.len()),
        ));
    }
    let mut total = 0u64;
    for (i, a) in attachments.iter().enumerate() {
        check_attachment_name(&a.name)?;
        a.blob_ref()?;
        a.key_bytes()?;
        a.sha256_bytes()?;
        total = total.saturating_add(a.size);
        if attachments[..i]
            .iter()
            .any(|b| b.name == a.name || b.blob == a.blob)
        {
            return Err(invalid(
                "attachments",
                format!("{:?} is attached twice", a.name),
            ));
        }
    }
    if total > MAX_ATTACHMENT_BYTES {
        return Err(invalid(
            "attachments",
            format!("{total} bytes; at most {MAX_ATTACHMENT_BYTES} per notice"),
        ));
    }
    Ok(())
}

/// Checks a title: 1 to [`MAX_TITLE`] bytes, one line, no control characters.
pub fn check_title(title: &str) -> Result<(), NoticeError> {
    if title.trim().is_empty() {
        return Err(invalid("title", "must not be empty"));
    }
    if title.len() > MAX_TITLE {
        return Err(invalid(
            "title",
            format!("{} bytes; at most {MAX_TITLE} are allowed", title.len()),
        ));
    }
    if title.chars().any(char::is_control) {
        return Err(invalid(
            "title",
            "must be one line without control characters",
        ));
    }
    Ok(())
}

/// Checks a body: at most [`MAX_BODY`] bytes; line breaks and tabs but no other
/// control characters.
pub fn check_body(body: &str) -> Result<(), NoticeError> {
    if body.len() > MAX_BODY {
        return Err(invalid(
            "body",
            format!("{} bytes; at most {MAX_BODY} are allowed", body.len()),
        ));
    }
    if body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(
            "body",
            "contains control characters other than line breaks and tabs",
        ));
    }
    Ok(())
}

/// Parses a STIX 2.1 attachment: a bundle (`{"type":"bundle","objects":[...]}`), an
/// array of objects, or a single object. Returns the objects, each checked to have a
/// `type` and an `id` of the form `TYPE--UUID`.
pub fn parse_stix(text: &str) -> Result<Vec<serde_json::Value>, NoticeError> {
    use serde_json::Value;
    if text.len() > MAX_STIX_BYTES {
        return Err(invalid(
            "stix",
            format!("{} bytes; at most {MAX_STIX_BYTES} are allowed", text.len()),
        ));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid("stix", format!("not JSON: {e}")))?;
    let objects = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if map.get("type").and_then(Value::as_str) == Some("bundle") => {
            match map.remove("objects") {
                Some(Value::Array(items)) => items,
                None => Vec::new(),
                Some(_) => return Err(invalid("stix", "a bundle's \"objects\" must be an array")),
            }
        }
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(invalid(
                "stix",
                "expected a STIX bundle, an array of STIX objects or one object",
            ));
        }
    };
    check_stix_objects(&objects)?;
    Ok(objects)
}

fn check_stix_objects(objects: &[serde_json::Value]) -> Result<(), NoticeError> {
    if objects.len() > MAX_STIX_OBJECTS {
        return Err(invalid(
            "stix",
            format!(
                "{} objects; at most {MAX_STIX_OBJECTS} are allowed",
                objects.len()
            ),
        ));
    }
    for (i, obj) in objects.iter().enumerate() {
        let ty = obj.get("type").and_then(|v| v.as_str()).unwrap_or_default();
        let ok_type = (3..=250).contains(&ty.len())
            && ty
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_type || ty == "bundle" {
            return Err(invalid(
                "stix",
                format!("object {i} has no valid STIX \"type\""),
            ));
        }
        let id = obj.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let ok_id = id
            .strip_prefix(ty)
            .and_then(|rest| rest.strip_prefix("--"))
            .is_some_and(|u| Uuid::parse_str(u).is_ok());
        if !ok_id {
            return Err(invalid(
                "stix",
                format!("object {i} ({ty}) has no valid \"id\" of the form {ty}--UUID"),
            ));
        }
    }
    let size = serde_json::to_vec(objects)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_STIX_BYTES {
        return Err(invalid(
            "stix",
            format!("{size} bytes; at most {MAX_STIX_BYTES} are allowed"),
        ));
    }
    Ok(())
}

/// What a user fills in to file a notice. The client adds the id, sender and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeDraft {
    /// Community id (`NAME@HUB`, or a bare `NAME` for the user's own relay).
    pub community: String,
    /// Label text (any accepted spelling; stored canonical).
    pub label: String,
    /// Signal, notice or reply.
    pub kind: NoticeKind,
    /// Subject area.
    pub category: Category,
    /// One-line title.
    pub title: String,
    /// Free text.
    pub body: String,
    /// The notice this one answers (for replies).
    pub in_reply_to: Option<Uuid>,
    /// STIX 2.1 objects to attach.
    pub stix: Option<Vec<serde_json::Value>>,
    /// Files to attach (sealed and uploaded when the notice is filed).
    pub attachments: Vec<std::path::PathBuf>,
}

/// The current time in UTC, to the second (the `filed_at` of new notices).
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Notice {
        Notice {
            id: Uuid::from_u128(0x1234),
            community: "desinformatie@bz".into(),
            label: "NL:STG-CONFIDENTIEEL".into(),
            kind: NoticeKind::Signal,
            category: Category::Disinformation,
            title: "Nepnieuws over verkiezingen".into(),
            body: "Zie bijlage.\nTweede regel.".into(),
            sender: "analist@post-a".into(),
            filed_at: time::macros::datetime!(2025-03-01 12:30:00 UTC),
            in_reply_to: None,
            stix: None,
            forwarded_from: None,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn json_has_exactly_the_documented_fields_in_order() {
        let json = sample().to_json_line();
        assert_eq!(
            json,
            "{\"id\":\"00000000-0000-0000-0000-000000001234\",\"community\":\"desinformatie@bz\",\
             \"label\":\"NL:STG-CONFIDENTIEEL\",\"kind\":\"signal\",\"category\":\"disinformation\",\
             \"title\":\"Nepnieuws over verkiezingen\",\"body\":\"Zie bijlage.\\nTweede regel.\",\
             \"sender\":\"analist@post-a\",\"filed_at\":\"2025-03-01T12:30:00Z\",\
             \"in_reply_to\":null,\"stix\":null,\"forwarded_from\":null,\"attachments\":[]}"
        );
        assert!(!json.contains('\n'));
    }

    #[test]
    fn a_forward_shows_where_it_comes_from() {
        let mut n = sample();
        n.community = "liaisons@nctv".into();
        n.forwarded_from = Some(ForwardedFrom {
            community: "desinformatie@bz".into(),
            id: Uuid::from_u128(0x99),
            sender: "analist@post-a".into(),
            filed_at: time::macros::datetime!(2025-03-01 12:00:00 UTC),
        });
        let json = n.to_json_line();
        assert!(
            json.ends_with(
                "\"forwarded_from\":{\"community\":\"desinformatie@bz\",\
                 \"id\":\"00000000-0000-0000-0000-000000000099\",\"sender\":\"analist@post-a\",\
                 \"filed_at\":\"2025-03-01T12:00:00Z\"},\"attachments\":[]}"
            ),
            "{json}"
        );
        let bytes = n.to_plaintext().unwrap();
        assert_eq!(Notice::from_plaintext(&bytes).unwrap(), n);
        // Into the community it came from: refused.
        let mut same = n.clone();
        same.community = "desinformatie@bz".into();
        assert!(same.validate().is_err());
    }

    #[test]
    fn attachment_names_are_plain_file_names() {
        for good in [
            "kaart.pdf",
            "Verslag 12 mei.docx",
            "foto's (1).jpg",
            "é.txt",
        ] {
            assert!(check_attachment_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".verborgen",
            "..",
            "a/b",
            "a\\b",
            "C:x",
            "a*b",
            "a?b",
            "a|b",
            "a\"b",
            "a<b",
            "x.",
            "x ",
            "tab\tbed",
            "fdp.\u{202e}exe.pdf",
            "a\u{200b}b",
        ] {
            assert!(check_attachment_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_attachment_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn a_notice_that_is_no_forward_reads_as_before() {
        // No `forwarded_from` in the plaintext (what devices without forwarding
        // send and expect), and none is taken as `null`.
        let bytes = sample().to_plaintext().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("forwarded_from"));
        let old = br#"{"id":"00000000-0000-0000-0000-000000001234","community":"desinformatie@bz",
            "label":"NL:STG-CONFIDENTIEEL","kind":"signal","category":"disinformation",
            "title":"t","body":"","sender":"analist@post-a","filed_at":"2025-03-01T12:30:00Z",
            "in_reply_to":null,"stix":null}"#;
        assert_eq!(Notice::from_plaintext(old).unwrap().forwarded_from, None);
    }

    #[test]
    fn plaintext_round_trips_and_is_checked_strictly() {
        let n = sample();
        let bytes = n.to_plaintext().unwrap();
        assert_eq!(Notice::from_plaintext(&bytes).unwrap(), n);

        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["extra"] = serde_json::json!(1);
        let err = Notice::from_plaintext(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, NoticeError::Malformed(_)), "{err}");

        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["kind"] = serde_json::json!("rumour");
        assert!(Notice::from_plaintext(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn field_rules_are_enforced() {
        let mut n = sample();
        n.title = String::new();
        assert!(n.validate().is_err());
        n.title = "a\nb".into();
        assert!(n.validate().is_err());
        n.title = "x".repeat(MAX_TITLE + 1);
        assert!(n.validate().is_err());

        let mut n = sample();
        n.kind = NoticeKind::Reply;
        assert!(n.validate().is_err(), "reply without in_reply_to");
        n.in_reply_to = Some(Uuid::from_u128(1));
        n.validate().unwrap();
        n.kind = NoticeKind::Signal;
        assert!(n.validate().is_err(), "signal with in_reply_to");

        let mut n = sample();
        n.body = "bell\u{7}".into();
        assert!(n.validate().is_err());
        n.filed_at = n.filed_at.to_offset(time::macros::offset!(+1));
        n.body = String::new();
        assert!(n.validate().is_err(), "non-UTC time");
    }

    #[test]
    fn kinds_and_categories_parse_case_insensitively() {
        assert_eq!("Signal".parse::<NoticeKind>().unwrap(), NoticeKind::Signal);
        assert_eq!("CYBER".parse::<Category>().unwrap(), Category::Cyber);
        let err = "gossip".parse::<Category>().unwrap_err();
        assert!(err.to_string().contains("espionage, cyber"), "{err}");
        assert_eq!(Category::ALL.len(), 6);
    }

    #[test]
    fn stix_bundles_arrays_and_objects_are_accepted() {
        let ind = r#"{"type":"indicator","spec_version":"2.1",
            "id":"indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f","pattern":"[x]"}"#;
        assert_eq!(parse_stix(ind).unwrap().len(), 1);
        assert_eq!(parse_stix(&format!("[{ind},{ind}]")).unwrap().len(), 2);
        let bundle = format!(
            r#"{{"type":"bundle","id":"bundle--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f","objects":[{ind}]}}"#
        );
        assert_eq!(parse_stix(&bundle).unwrap().len(), 1);
        assert!(parse_stix(r#"{"type":"indicator","id":"malware--x"}"#).is_err());
        assert!(parse_stix("42").is_err());
        assert!(parse_stix("not json").is_err());
    }
}

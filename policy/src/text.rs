//! Splitting the text form `POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]` into its parts.
//!
//! This step only checks the shape (length, alphabet, separators, TLP); whether the policy,
//! level, tags and values exist is checked against a [`Registry`](crate::Registry) afterwards.
//! Input is case-insensitive and may have spaces or tabs around every separator.

use crate::error::PolicyError;
use crate::tlp::{Tlp, TlpRules};
use crate::{MAX_TAGS, MAX_TEXT_LEN};

/// A label or clearance split into upper-case parts, not yet checked against a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawText {
    pub policy: String,
    pub level: String,
    /// Tags in input order, values as given (not yet deduplicated).
    pub tags: Vec<(String, Vec<String>)>,
    pub tlp: Option<Tlp>,
}

fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '_' | ':' | ';' | '=' | ',' | ' ' | '\t')
}

fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Splits `text` into its parts, expanding the `TLP:COLOUR` shorthand with `rules`.
pub(crate) fn split(text: &str, rules: &TlpRules) -> Result<RawText, PolicyError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(PolicyError::TooLong {
            len: text.len(),
            max: MAX_TEXT_LEN,
        });
    }
    if let Some((position, ch)) = text.chars().enumerate().find(|(_, c)| !allowed_char(*c)) {
        return Err(PolicyError::InvalidCharacter { ch, position });
    }
    let upper = text.to_ascii_uppercase();
    if trim(&upper).is_empty() {
        return Err(PolicyError::Empty);
    }
    let mut segments = upper.split(';');
    let head = trim(segments.next().unwrap_or_default());
    let (policy, level) = head
        .split_once(':')
        .ok_or_else(|| PolicyError::MissingLevel {
            text: head.to_owned(),
        })?;
    let (policy, level) = (trim(policy), trim(level));

    let mut tags: Vec<(String, Vec<String>)> = Vec::new();
    let mut tlp: Option<Tlp> = None;
    let mut tlp_seen = false;
    for (i, segment) in segments.enumerate() {
        let segment = trim(segment);
        if segment.is_empty() {
            return Err(PolicyError::EmptySegment { index: i + 1 });
        }
        let (name, values) = segment
            .split_once('=')
            .ok_or_else(|| PolicyError::MissingEquals {
                segment: segment.to_owned(),
            })?;
        let name = trim(name);
        let values: Vec<String> = values.split(',').map(|v| trim(v).to_owned()).collect();
        if name == "TLP" {
            if tlp_seen {
                return Err(PolicyError::DuplicateTag {
                    tag: "TLP".to_owned(),
                });
            }
            tlp_seen = true;
            match values.as_slice() {
                [one] if one.is_empty() => {
                    return Err(PolicyError::EmptyValue {
                        tag: "TLP".to_owned(),
                    });
                }
                [one] => tlp = Some(one.parse()?),
                _ if values.iter().any(String::is_empty) => {
                    return Err(PolicyError::EmptyValue {
                        tag: "TLP".to_owned(),
                    });
                }
                _ => {
                    return Err(PolicyError::TlpNotSingle {
                        given: values.join(","),
                    });
                }
            }
        } else {
            if tags.len() == MAX_TAGS {
                // Count them all for the message; the input is bounded, so this is cheap.
                let count = upper
                    .split(';')
                    .skip(1)
                    .filter(|s| trim(s.split('=').next().unwrap_or_default()) != "TLP")
                    .count();
                return Err(PolicyError::TooManyTags {
                    count,
                    max: MAX_TAGS,
                });
            }
            tags.push((name.to_owned(), values));
        }
    }

    if policy == "TLP" {
        let colour: Tlp = level.parse()?;
        if !tags.is_empty() || tlp_seen {
            return Err(PolicyError::ShorthandWithTags {
                colour: colour.as_str().to_owned(),
                long: format!(
                    "{}:{};CMP=...;TLP={colour}",
                    rules.shorthand_policy, rules.shorthand_level
                ),
            });
        }
        return Ok(RawText {
            policy: rules.shorthand_policy.clone(),
            level: rules.shorthand_level.clone(),
            tags,
            tlp: Some(colour),
        });
    }
    Ok(RawText {
        policy: policy.to_owned(),
        level: level.to_owned(),
        tags,
        tlp,
    })
}

//! Policy definitions kept as data: the TOML files under `policy/schemes/`, parsed and checked.
//!
//! A policy file declares the policy's name, its levels (lowest first), its tags with their
//! kind ([`TagKind`]) and valid values, and its level-by-level equivalences with other
//! policies. See `schemes/nl.toml` for the commented format. Loading checks every name against
//! the label alphabet and the size limits, so that everything a definition declares can be
//! written in a label and encoded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;

use crate::{MAX_VALUE_LEN, is_token};

/// Largest number of levels a policy may declare (ranks must fit in a `u8` with room to spare).
pub const MAX_LEVELS: usize = 32;

/// A policy definition file (or the TLP or country list file) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// The TOML does not parse or does not have the expected fields.
    #[error("policy definition {file} does not parse: {message}")]
    Syntax {
        /// Which definition (policy name or file role).
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The definition parses but breaks a rule (bad name, duplicate, unknown reference...).
    #[error("policy definition {file} is invalid: {message}")]
    Invalid {
        /// Which definition (policy name or file role).
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl SchemeError {
    pub(crate) fn invalid(file: &str, message: impl Into<String>) -> Self {
        SchemeError::Invalid {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

/// How a tag takes part in the access decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagKind {
    /// The clearance must hold at least one of the label's values (e.g. `REL`).
    Permissive,
    /// The clearance must hold every one of the label's values (e.g. `CMP`).
    Restrictive,
    /// Shown to people, never part of the decision (e.g. `INFO`).
    Informative,
}

impl TagKind {
    /// Lower-case name as written in definition files.
    pub fn as_str(self) -> &'static str {
        match self {
            TagKind::Permissive => "permissive",
            TagKind::Restrictive => "restrictive",
            TagKind::Informative => "informative",
        }
    }
}

/// The values a tag accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSet {
    /// Any well-formed token (A-Z, 0-9, `-`, `+`, `_`; 1 to [`MAX_VALUE_LEN`] characters).
    Token,
    /// Only the listed values.
    Listed {
        /// What the values are, for error messages (e.g. "an ISO 3166-1 alpha-3 country code").
        what: String,
        /// The valid values.
        values: Arc<BTreeSet<String>>,
    },
}

impl ValueSet {
    /// Whether `value` (already upper case and well-formed) is accepted.
    pub fn accepts(&self, value: &str) -> bool {
        match self {
            ValueSet::Token => true,
            ValueSet::Listed { values, .. } => values.contains(value),
        }
    }

    /// A description of what is accepted, for error messages.
    pub fn expected(&self) -> String {
        match self {
            ValueSet::Token => "an upper-case token".to_owned(),
            ValueSet::Listed { what, values } => {
                if values.len() <= 12 {
                    let list: Vec<&str> = values.iter().map(String::as_str).collect();
                    format!("{what}: one of {}", list.join(", "))
                } else {
                    what.clone()
                }
            }
        }
    }
}

/// One tag of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDef {
    /// Upper-case tag name, e.g. `REL`.
    pub name: String,
    /// Its role in the decision.
    pub kind: TagKind,
    /// Valid values.
    pub values: ValueSet,
    /// Singular noun for one value in reasons, e.g. "compartment".
    pub noun: String,
    /// Plural noun, e.g. "compartments".
    pub nouns: String,
    /// Phrase introducing the values in reasons, e.g. "releasable to".
    pub phrase: String,
}

/// One policy (classification scheme), e.g. NL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    /// Upper-case policy name, e.g. `NL`.
    pub name: String,
    /// Human-readable title.
    pub title: String,
    /// Levels, lowest first; the index is the rank.
    pub levels: Vec<String>,
    /// Tags, sorted by name.
    pub tags: Vec<TagDef>,
    /// Declared equivalences: other policy -> (own level -> other level), as written in the file.
    pub(crate) declared_equivalences: BTreeMap<String, BTreeMap<String, String>>,
}

impl Scheme {
    /// The rank of `level` (exact upper-case name), if it exists.
    pub fn rank_of(&self, level: &str) -> Option<u8> {
        self.levels
            .iter()
            .position(|l| l == level)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The level at `rank`.
    pub fn level_at(&self, rank: u8) -> Option<&str> {
        self.levels.get(usize::from(rank)).map(String::as_str)
    }

    /// The tag called `name` (exact upper-case name).
    pub fn tag(&self, name: &str) -> Option<&TagDef> {
        self.tags
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.tags.get(i))
    }

    /// Levels joined with ", " (for messages).
    pub(crate) fn level_list(&self) -> String {
        self.levels.join(", ")
    }

    /// Tag names joined with ", " (for messages).
    pub(crate) fn tag_list(&self) -> String {
        let names: Vec<&str> = self.tags.iter().map(|t| t.name.as_str()).collect();
        names.join(", ")
    }
}

/// The value set of a tag as written in a definition file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ValuesFile {
    Named(String),
    Listed(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagFile {
    name: String,
    kind: TagKind,
    values: ValuesFile,
    noun: String,
    nouns: String,
    phrase: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemeFile {
    name: String,
    title: String,
    levels: Vec<String>,
    #[serde(default)]
    tags: Vec<TagFile>,
    #[serde(default)]
    equivalence: BTreeMap<String, BTreeMap<String, String>>,
}

/// Name of the built-in value set of ISO 3166-1 alpha-3 country codes.
pub const COUNTRY_SET: &str = "iso3166-1-alpha3";
/// Name of the value set of free-form tokens.
pub const TOKEN_SET: &str = "token";

/// Parses the country list: one code per line (first token), `#` comments, blank lines ignored.
pub(crate) fn parse_countries(text: &str) -> Result<Arc<BTreeSet<String>>, SchemeError> {
    let file = COUNTRY_SET;
    let mut set = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let code = line.split_whitespace().next().unwrap_or_default();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(SchemeError::invalid(
                file,
                format!(
                    "line {}: '{code}' is not a three-letter upper-case code",
                    n + 1
                ),
            ));
        }
        if !set.insert(code.to_owned()) {
            return Err(SchemeError::invalid(
                file,
                format!("line {}: duplicate code {code}", n + 1),
            ));
        }
    }
    if set.is_empty() {
        return Err(SchemeError::invalid(file, "no country codes"));
    }
    Ok(Arc::new(set))
}

fn check_name(file: &str, what: &str, name: &str) -> Result<(), SchemeError> {
    if is_token(name, MAX_VALUE_LEN) {
        Ok(())
    } else {
        Err(SchemeError::invalid(
            file,
            format!(
                "{what} '{name}' must be 1 to {MAX_VALUE_LEN} characters from A-Z, 0-9, '-', '+', '_'"
            ),
        ))
    }
}

/// Parses and checks one policy definition file. Equivalences are only checked for
/// well-formedness here; the [`Registry`](crate::Registry) resolves them across files.
pub(crate) fn parse_scheme(
    text: &str,
    countries: &Arc<BTreeSet<String>>,
) -> Result<Scheme, SchemeError> {
    let file: SchemeFile = toml::from_str(text).map_err(|e| SchemeError::Syntax {
        file: "policy file".to_owned(),
        message: e.message().to_owned(),
    })?;
    let f = file.name.as_str();
    check_name(f, "policy name", f)?;
    if f == "TLP" {
        return Err(SchemeError::invalid(
            f,
            "TLP is reserved for the TLP:COLOUR shorthand",
        ));
    }
    if file.levels.is_empty() || file.levels.len() > MAX_LEVELS {
        return Err(SchemeError::invalid(
            f,
            format!("a policy needs 1 to {MAX_LEVELS} levels"),
        ));
    }
    let mut seen = BTreeSet::new();
    for level in &file.levels {
        check_name(f, "level", level)?;
        if !seen.insert(level) {
            return Err(SchemeError::invalid(
                f,
                format!("level {level} listed twice"),
            ));
        }
    }
    let mut tags: Vec<TagDef> = Vec::with_capacity(file.tags.len());
    for t in file.tags {
        check_name(f, "tag", &t.name)?;
        if t.name == "TLP" {
            return Err(SchemeError::invalid(
                f,
                "tag name TLP is reserved for the TLP marking",
            ));
        }
        if tags.iter().any(|d| d.name == t.name) {
            return Err(SchemeError::invalid(
                f,
                format!("tag {} declared twice", t.name),
            ));
        }
        let values = match t.values {
            ValuesFile::Named(n) if n == TOKEN_SET => ValueSet::Token,
            ValuesFile::Named(n) if n == COUNTRY_SET => ValueSet::Listed {
                what: "an ISO 3166-1 alpha-3 country code (e.g. NLD, DEU, BEL)".to_owned(),
                values: Arc::clone(countries),
            },
            ValuesFile::Named(n) => {
                return Err(SchemeError::invalid(
                    f,
                    format!(
                        "tag {}: unknown value set '{n}'; use \"{TOKEN_SET}\", \"{COUNTRY_SET}\" or a list",
                        t.name
                    ),
                ));
            }
            ValuesFile::Listed(list) => {
                let mut set = BTreeSet::new();
                for v in list {
                    check_name(f, "value", &v)?;
                    set.insert(v);
                }
                if set.is_empty() {
                    return Err(SchemeError::invalid(
                        f,
                        format!("tag {} lists no values", t.name),
                    ));
                }
                ValueSet::Listed {
                    what: format!("a {} value", t.name),
                    values: Arc::new(set),
                }
            }
        };
        tags.push(TagDef {
            name: t.name,
            kind: t.kind,
            values,
            noun: t.noun,
            nouns: t.nouns,
            phrase: t.phrase,
        });
    }
    if tags.len() > crate::MAX_TAGS {
        return Err(SchemeError::invalid(
            f,
            format!("at most {} tags may be declared", crate::MAX_TAGS),
        ));
    }
    tags.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Scheme {
        name: file.name,
        title: file.title,
        levels: file.levels,
        tags,
        declared_equivalences: file.equivalence,
    })
}

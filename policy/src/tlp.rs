//! The Traffic Light Protocol (FIRST TLP 2.0) marking and its forwarding scopes.
//!
//! TLP decides where a notice may be *forwarded*, never who may read it. The colours are fixed
//! by the TLP 2.0 standard and so are a Rust enum; the forwarding scope of each colour, the
//! colour assumed for unmarked labels and the meaning of the `TLP:COLOUR` shorthand are data
//! (`schemes/tlp.toml`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::scheme::SchemeError;

/// A TLP 2.0 colour, ordered from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tlp {
    /// `TLP:CLEAR`: disclosure is not limited.
    Clear,
    /// `TLP:GREEN`: limited to the community.
    Green,
    /// `TLP:AMBER`: limited to participants' organisations and their clients.
    Amber,
    /// `TLP:AMBER+STRICT`: limited to participants' organisation only.
    AmberStrict,
    /// `TLP:RED`: individual recipients only.
    Red,
}

impl Tlp {
    /// All colours, least restrictive first.
    pub const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// Canonical upper-case name, e.g. `AMBER+STRICT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tlp::Clear => "CLEAR",
            Tlp::Green => "GREEN",
            Tlp::Amber => "AMBER",
            Tlp::AmberStrict => "AMBER+STRICT",
            Tlp::Red => "RED",
        }
    }

    /// Code used in the binary encoding (1..=5; 0 means "no TLP").
    pub(crate) fn code(self) -> u8 {
        match self {
            Tlp::Clear => 1,
            Tlp::Green => 2,
            Tlp::Amber => 3,
            Tlp::AmberStrict => 4,
            Tlp::Red => 5,
        }
    }

    /// Inverse of [`Tlp::code`].
    pub(crate) fn from_code(code: u8) -> Option<Tlp> {
        Tlp::ALL.into_iter().find(|t| t.code() == code)
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tlp {
    type Err = PolicyError;

    /// Parses a colour, case-insensitively and ignoring surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim_matches([' ', '\t']);
        Tlp::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| PolicyError::UnknownTlp {
                colour: t.to_ascii_uppercase(),
            })
    }
}

impl Serialize for Tlp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tlp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a notice of a given colour may be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardScope {
    /// Any community and exports.
    Anywhere,
    /// Any community, never exported.
    AnyCommunity,
    /// Communities whose member organisations are all the forwarder's own or its declared clients.
    OrgAndClients,
    /// Communities whose member organisations are all the forwarder's own.
    OrgOnly,
    /// Never forwarded.
    Nowhere,
}

/// The TLP rules loaded from `tlp.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlpRules {
    /// TLP version, e.g. "2.0".
    pub version: String,
    /// Policy that `TLP:COLOUR` alone stands for.
    pub shorthand_policy: String,
    /// Level that `TLP:COLOUR` alone stands for.
    pub shorthand_level: String,
    /// Colour assumed, for forwarding, when a label carries none.
    pub unmarked: Tlp,
    /// Scope of each colour, indexed like [`Tlp::ALL`].
    scopes: [ForwardScope; 5],
}

impl TlpRules {
    /// The forwarding scope of `colour`.
    pub fn scope(&self, colour: Tlp) -> ForwardScope {
        self.scopes[usize::from(colour.code() - 1)]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColourFile {
    name: String,
    forward: ForwardScope,
    #[allow(dead_code, reason = "documentation for people reading the file")]
    meaning: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlpFile {
    name: String,
    version: String,
    shorthand: String,
    unmarked: String,
    colours: Vec<ColourFile>,
}

/// Parses `tlp.toml`. The colours must be exactly the TLP 2.0 colours, least restrictive first,
/// and scopes must never widen as colours get more restrictive.
pub(crate) fn parse_tlp(text: &str) -> Result<TlpRules, SchemeError> {
    let file = "TLP";
    let f: TlpFile = toml::from_str(text).map_err(|e| SchemeError::Syntax {
        file: file.to_owned(),
        message: e.message().to_owned(),
    })?;
    if f.name != "TLP" {
        return Err(SchemeError::invalid(file, "name must be TLP"));
    }
    let names: Vec<&str> = f.colours.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<&str> = Tlp::ALL.iter().map(|c| c.as_str()).collect();
    if names != expected {
        return Err(SchemeError::invalid(
            file,
            format!(
                "colours must be exactly {} in this order",
                expected.join(", ")
            ),
        ));
    }
    let mut scopes = [ForwardScope::Nowhere; 5];
    for (slot, c) in scopes.iter_mut().zip(&f.colours) {
        *slot = c.forward;
    }
    if scopes.windows(2).any(|w| matches!(w, [a, b] if a > b)) {
        return Err(SchemeError::invalid(
            file,
            "a more restrictive colour may not have a wider forwarding scope",
        ));
    }
    let unmarked: Tlp = f
        .unmarked
        .parse()
        .map_err(|e: PolicyError| SchemeError::invalid(file, format!("unmarked: {e}")))?;
    let (policy, level) = f
        .shorthand
        .split_once(':')
        .ok_or_else(|| SchemeError::invalid(file, "shorthand must be written POLICY:LEVEL"))?;
    Ok(TlpRules {
        version: f.version,
        shorthand_policy: policy.to_owned(),
        shorthand_level: level.to_owned(),
        unmarked,
        scopes,
    })
}

//! Kring classification labels, clearances and the access decision. No I/O.
//!
//! * [`Label`] — the marking on a notice, text form `POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`
//!   (e.g. `NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER`; `TLP:GREEN` alone is shorthand for
//!   `NL:ONGERUBRICEERD;TLP=GREEN`), with a strict binary encoding ([`codec`]).
//! * [`Clearance`] — what a person or relay may see: "up to and including LEVEL" plus the tag
//!   values held.
//! * [`decide()`] / [`decide_opt`] — the access rule, explained in [`mod@decide`]:
//!   same or equivalent policy; level within the clearance; every restrictive value held; at
//!   least one value of each permissive tag held; informative tags and TLP ignored; a missing
//!   label or clearance denies.
//! * [`within`] — is a notice label within a community's maximum label (same rule, the maximum
//!   label read as a clearance); [`meet`] / [`Clearance::lowered_by`] — lower, never raise, a
//!   clearance.
//! * [`may_forward`] — the TLP 2.0 forwarding rule ([`forward`]).
//!
//! The policies NL, EU and NATO and TLP 2.0 are **data**: TOML definition files under
//! `policy/schemes/` embedded in the crate and loaded into the built-in [`Registry`] (levels
//! lowest first, tags with kinds and valid values — `REL` takes the official ISO 3166-1
//! alpha-3 codes — and level-by-level equivalences).
//!
//! All input is bounded: [`MAX_TEXT_LEN`], [`MAX_TAGS`], [`MAX_VALUES`], [`MAX_VALUE_LEN`],
//! [`MAX_ENCODED_LEN`].

#![forbid(unsafe_code)]

pub mod codec;
pub mod decide;
mod error;
pub mod forward;
mod label;
mod registry;
pub mod scheme;
mod text;
mod tlp;

pub use codec::{ENCODING_VERSION, MAX_ENCODED_LEN};
pub use decide::{Decision, decide, decide_opt, meet, within};
pub use error::PolicyError;
pub use forward::{Destination, ForwardTarget, keeps_or_raises, may_forward};
pub use label::{Clearance, Label};
pub use registry::Registry;
pub use scheme::{Scheme, SchemeError, TagDef, TagKind, ValueSet};
pub use tlp::{ForwardScope, Tlp, TlpRules};

/// Longest accepted text form of a label or clearance, in bytes (also bounds the canonical
/// text of every constructed value).
pub const MAX_TEXT_LEN: usize = 1024;
/// Most tags on one label or clearance (TLP is not counted).
pub const MAX_TAGS: usize = 16;
/// Most distinct values in one tag.
pub const MAX_VALUES: usize = 64;
/// Longest value (and longest policy, level or tag name), in characters.
pub const MAX_VALUE_LEN: usize = 32;

/// Whether `s` is 1 to `max` characters from `A-Z 0-9 - + _`.
pub(crate) fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'_')
        })
}

/// The name of level `rank` (0 = lowest) of built-in policy `policy` (case-insensitive), e.g.
/// `level_name("NL", 3) == Some("STG-GEHEIM")`.
pub fn level_name(policy: &str, rank: u8) -> Option<&'static str> {
    Registry::builtin().scheme(policy)?.level_at(rank)
}

/// The built-in policy names, in definition order: `NL`, `EU`, `NATO`.
pub fn policies() -> impl Iterator<Item = &'static str> {
    Registry::builtin().schemes().map(|s| s.name.as_str())
}

#[cfg(test)]
mod testgen;

#[cfg(test)]
mod cases;

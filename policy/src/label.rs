//! [`Label`] (the marking on a notice) and [`Clearance`] (what a person or relay may see).
//!
//! Both use the text form `POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`. Input is
//! case-insensitive and may have spaces around separators; output is canonical: upper case,
//! tags sorted by name, values sorted and deduplicated, TLP last. `TLP:COLOUR` alone stands for
//! `NL:ONGERUBRICEERD;TLP=COLOUR` and is displayed in that long form. Parsing then displaying
//! a canonical text gives the same text back.
//!
//! A clearance means "up to and including LEVEL" plus the tag values held; it cannot carry a
//! TLP marking or informative tags (neither takes part in an access decision).
//!
//! Values are constructed only through a [`Registry`] check, so every `Label` and `Clearance`
//! names a known policy, level and tags with valid values within the size limits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::registry::Registry;
use crate::scheme::TagKind;
use crate::text::{RawText, split};
use crate::tlp::Tlp;
use crate::{MAX_TAGS, MAX_TEXT_LEN, MAX_VALUE_LEN, MAX_VALUES, is_token};

/// Tag values by tag name, both canonical.
pub(crate) type Tags = BTreeMap<String, BTreeSet<String>>;

/// The part shared by labels and clearances: a checked policy, level and tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Marking {
    pub policy: String,
    pub level: String,
    pub rank: u8,
    pub tags: Tags,
}

impl Marking {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.policy, self.level)?;
        for (name, values) in &self.tags {
            write!(f, ";{name}=")?;
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(v)?;
            }
        }
        Ok(())
    }

    fn tags(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.tags.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Whether a marking is being built for a label or for a clearance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Label,
    Clearance,
}

impl Registry {
    /// Checks policy, level and tags and builds the canonical marking. Names and values are
    /// upper-cased first; values are sorted and deduplicated.
    pub(crate) fn build_marking(
        &self,
        policy: &str,
        level: &str,
        tags: Vec<(String, Vec<String>)>,
        role: Role,
    ) -> Result<Marking, PolicyError> {
        let policy = policy.to_ascii_uppercase();
        let level = level.to_ascii_uppercase();
        let scheme = self.schemes().find(|s| s.name == policy).ok_or_else(|| {
            PolicyError::UnknownPolicy {
                policy: policy.clone(),
                valid: self.policy_list(),
            }
        })?;
        let rank = scheme
            .rank_of(&level)
            .ok_or_else(|| PolicyError::UnknownLevel {
                level: level.clone(),
                policy: policy.clone(),
                valid: scheme.level_list(),
            })?;
        if tags.len() > MAX_TAGS {
            return Err(PolicyError::TooManyTags {
                count: tags.len(),
                max: MAX_TAGS,
            });
        }
        let mut out = Tags::new();
        for (name, values) in tags {
            let name = name.to_ascii_uppercase();
            if name == "TLP" {
                return Err(match role {
                    Role::Clearance => PolicyError::TlpInClearance,
                    Role::Label => PolicyError::TlpAsTag,
                });
            }
            let def = scheme.tag(&name).ok_or_else(|| PolicyError::UnknownTag {
                tag: name.clone(),
                policy: policy.clone(),
                valid: scheme.tag_list(),
            })?;
            if out.contains_key(&name) {
                return Err(PolicyError::DuplicateTag { tag: name });
            }
            if role == Role::Clearance && def.kind == TagKind::Informative {
                return Err(PolicyError::InformativeInClearance { tag: name });
            }
            if values.is_empty() {
                return Err(PolicyError::EmptyValue { tag: name });
            }
            let mut set = BTreeSet::new();
            for value in values {
                let value = value.to_ascii_uppercase();
                if value.is_empty() {
                    return Err(PolicyError::EmptyValue { tag: name });
                }
                if !is_token(&value, MAX_VALUE_LEN) {
                    return Err(PolicyError::InvalidToken {
                        what: format!("{name} value"),
                        text: value,
                        max: MAX_VALUE_LEN,
                    });
                }
                if !def.values.accepts(&value) {
                    return Err(PolicyError::UnknownValue {
                        tag: name,
                        value,
                        expected: def.values.expected(),
                    });
                }
                set.insert(value);
            }
            if set.len() > MAX_VALUES {
                return Err(PolicyError::TooManyValues {
                    tag: name,
                    count: set.len(),
                    max: MAX_VALUES,
                });
            }
            out.insert(name, set);
        }
        Ok(Marking {
            policy,
            level,
            rank,
            tags: out,
        })
    }

    /// Parses a label against this registry (see [`Label`] for the text form).
    pub fn parse_label(&self, text: &str) -> Result<Label, PolicyError> {
        let RawText {
            policy,
            level,
            tags,
            tlp,
        } = split(text, self.tlp_rules())?;
        let marking = self.build_marking(&policy, &level, tags, Role::Label)?;
        Label::checked(marking, tlp)
    }

    /// Parses a clearance against this registry (see [`Clearance`] for the text form).
    pub fn parse_clearance(&self, text: &str) -> Result<Clearance, PolicyError> {
        let RawText {
            policy,
            level,
            tags,
            tlp,
        } = split(text, self.tlp_rules())?;
        if tlp.is_some() {
            return Err(PolicyError::TlpInClearance);
        }
        let marking = self.build_marking(&policy, &level, tags, Role::Clearance)?;
        Clearance::checked(marking)
    }

    /// Builds a label from parts, checked against this registry (see [`Label::from_parts`]).
    pub fn label_from_parts<N, V, I>(
        &self,
        policy: &str,
        level: &str,
        tags: impl IntoIterator<Item = (N, I)>,
        tlp: Option<Tlp>,
    ) -> Result<Label, PolicyError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = V>,
    {
        let tags = collect_tags(tags)?;
        let marking = self.build_marking(policy, level, tags, Role::Label)?;
        Label::checked(marking, tlp)
    }

    /// Builds a clearance from parts, checked against this registry (see
    /// [`Clearance::from_parts`]).
    pub fn clearance_from_parts<N, V, I>(
        &self,
        policy: &str,
        level: &str,
        tags: impl IntoIterator<Item = (N, I)>,
    ) -> Result<Clearance, PolicyError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = V>,
    {
        let tags = collect_tags(tags)?;
        let marking = self.build_marking(policy, level, tags, Role::Clearance)?;
        Clearance::checked(marking)
    }

    /// The clearance that a community's maximum label stands for: same policy, level and
    /// permissive/restrictive tags; informative tags and TLP dropped.
    pub fn max_label_as_clearance(&self, max: &Label) -> Clearance {
        let scheme = self.scheme(&max.marking.policy);
        let mut marking = max.marking.clone();
        marking.tags.retain(|name, _| {
            scheme
                .and_then(|s| s.tag(name))
                .is_some_and(|d| d.kind != TagKind::Informative)
        });
        Clearance { marking }
    }
}

/// Collects generic tag parts into owned strings, bounding the counts before copying much.
fn collect_tags<N, V, I>(
    tags: impl IntoIterator<Item = (N, I)>,
) -> Result<Vec<(String, Vec<String>)>, PolicyError>
where
    N: AsRef<str>,
    V: AsRef<str>,
    I: IntoIterator<Item = V>,
{
    let mut out = Vec::new();
    for (name, values) in tags {
        if out.len() == MAX_TAGS {
            return Err(PolicyError::TooManyTags {
                count: MAX_TAGS + 1,
                max: MAX_TAGS,
            });
        }
        let name = name.as_ref().to_owned();
        let mut vs = Vec::new();
        for v in values {
            // Duplicates are allowed (they are merged), but bound the work.
            if vs.len() == MAX_VALUES * 4 {
                return Err(PolicyError::TooManyValues {
                    tag: name.to_ascii_uppercase(),
                    count: vs.len() + 1,
                    max: MAX_VALUES,
                });
            }
            vs.push(v.as_ref().to_owned());
        }
        out.push((name, vs));
    }
    Ok(out)
}

/// Checks the canonical text length of a marking (plus TLP) against [`MAX_TEXT_LEN`].
fn check_text_len(text: String) -> Result<(), PolicyError> {
    if text.len() > MAX_TEXT_LEN {
        Err(PolicyError::TooLong {
            len: text.len(),
            max: MAX_TEXT_LEN,
        })
    } else {
        Ok(())
    }
}

/// A classification label on a notice: policy, level, tags and an optional TLP marking.
///
/// Text form `POLICY:LEVEL[;TAG=V1,V2...]...[;TLP=COLOUR]`, e.g.
/// `NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER` (displayed canonically as
/// `NL:STG-GEHEIM;CMP=CYBER;REL=DEU,NLD;TLP=AMBER`). Serialized with serde as that string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    pub(crate) marking: Marking,
    pub(crate) tlp: Option<Tlp>,
}

impl Label {
    fn checked(marking: Marking, tlp: Option<Tlp>) -> Result<Label, PolicyError> {
        let label = Label { marking, tlp };
        check_text_len(label.to_string())?;
        Ok(label)
    }

    /// Builds a label from parts, checked against the built-in registry. Names and values are
    /// case-insensitive; values are sorted and deduplicated; the same rules as the text form
    /// apply.
    ///
    /// ```
    /// use kring_policy::{Label, Tlp};
    /// let l = Label::from_parts("NL", "STG-GEHEIM", [("REL", ["NLD", "DEU"])], Some(Tlp::Amber))?;
    /// assert_eq!(l.to_string(), "NL:STG-GEHEIM;REL=DEU,NLD;TLP=AMBER");
    /// # Ok::<(), kring_policy::PolicyError>(())
    /// ```
    pub fn from_parts<N, V, I>(
        policy: &str,
        level: &str,
        tags: impl IntoIterator<Item = (N, I)>,
        tlp: Option<Tlp>,
    ) -> Result<Label, PolicyError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = V>,
    {
        Registry::builtin().label_from_parts(policy, level, tags, tlp)
    }

    /// The policy name, e.g. `NL`.
    pub fn policy(&self) -> &str {
        &self.marking.policy
    }

    /// The level name, e.g. `STG-GEHEIM`.
    pub fn level(&self) -> &str {
        &self.marking.level
    }

    /// The level's rank within its policy (0 = lowest).
    pub fn level_rank(&self) -> u8 {
        self.marking.rank
    }

    /// The tags (upper-case names, sorted) with their values (sorted, distinct). TLP is not a
    /// tag: see [`Label::tlp`].
    pub fn tags(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.marking.tags()
    }

    /// The values of tag `name` (upper case), if the label carries it.
    pub fn tag(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.marking.tags.get(name)
    }

    /// The TLP marking, if any.
    pub fn tlp(&self) -> Option<Tlp> {
        self.tlp
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.marking.write(f)?;
        if let Some(tlp) = self.tlp {
            write!(f, ";TLP={tlp}")?;
        }
        Ok(())
    }
}

impl FromStr for Label {
    type Err = PolicyError;

    /// Parses the text form against the built-in registry.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Registry::builtin().parse_label(s)
    }
}

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a person (or relay) may see: "up to and including LEVEL" of a policy, plus the tag
/// values held, e.g. `NL:STG-GEHEIM;REL=NLD;CMP=CYBER`.
///
/// Same text form as [`Label`], without TLP and without informative tags. Serialized with serde
/// as that string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Clearance {
    pub(crate) marking: Marking,
}

impl Clearance {
    fn checked(marking: Marking) -> Result<Clearance, PolicyError> {
        let c = Clearance { marking };
        check_text_len(c.to_string())?;
        Ok(c)
    }

    /// Builds a clearance from parts, checked against the built-in registry (see
    /// [`Label::from_parts`]).
    pub fn from_parts<N, V, I>(
        policy: &str,
        level: &str,
        tags: impl IntoIterator<Item = (N, I)>,
    ) -> Result<Clearance, PolicyError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
        I: IntoIterator<Item = V>,
    {
        Registry::builtin().clearance_from_parts(policy, level, tags)
    }

    /// The clearance a community's maximum label stands for (built-in registry): see
    /// [`Registry::max_label_as_clearance`].
    pub fn from_max_label(max: &Label) -> Clearance {
        Registry::builtin().max_label_as_clearance(max)
    }

    /// The policy name, e.g. `NL`.
    pub fn policy(&self) -> &str {
        &self.marking.policy
    }

    /// The level name, e.g. `STG-GEHEIM`.
    pub fn level(&self) -> &str {
        &self.marking.level
    }

    /// The level's rank within its policy (0 = lowest).
    pub fn level_rank(&self) -> u8 {
        self.marking.rank
    }

    /// The tags held (upper-case names, sorted) with their values (sorted, distinct).
    pub fn tags(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.marking.tags()
    }

    /// The values held for tag `name` (upper case), if any.
    pub fn tag(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.marking.tags.get(name)
    }
}

impl fmt::Display for Clearance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.marking.write(f)
    }
}

impl FromStr for Clearance {
    type Err = PolicyError;

    /// Parses the text form against the built-in registry.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Registry::builtin().parse_clearance(s)
    }
}

impl Serialize for Clearance {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Clearance {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
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

    fn label_err(s: &str) -> PolicyError {
        s.parse::<Label>().unwrap_err()
    }

    fn clearance_err(s: &str) -> PolicyError {
        s.parse::<Clearance>().unwrap_err()
    }

    #[test]
    fn spec_examples_parse_and_display_canonically() {
        for (input, canonical) in [
            ("NL:STG-CONFIDENTIEEL", "NL:STG-CONFIDENTIEEL"),
            (
                "NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER",
                "NL:STG-GEHEIM;CMP=CYBER;REL=DEU,NLD;TLP=AMBER",
            ),
            (
                "NATO:NATO-SECRET;REL=NLD,BEL",
                "NATO:NATO-SECRET;REL=BEL,NLD",
            ),
            ("TLP:RED", "NL:ONGERUBRICEERD;TLP=RED"),
            ("TLP:GREEN", "NL:ONGERUBRICEERD;TLP=GREEN"),
            ("tlp : amber+strict", "NL:ONGERUBRICEERD;TLP=AMBER+STRICT"),
            (
                " nl : stg-geheim ; tlp = clear ; rel = nld , deu , nld ",
                "NL:STG-GEHEIM;REL=DEU,NLD;TLP=CLEAR",
            ),
            (
                "EU:RESTREINT-UE;INFO=EXERCISE",
                "EU:RESTREINT-UE;INFO=EXERCISE",
            ),
            ("\tNL:ONGERUBRICEERD\t", "NL:ONGERUBRICEERD"),
        ] {
            let l = label(input);
            assert_eq!(l.to_string(), canonical, "input {input:?}");
            assert_eq!(label(canonical), l);
            assert_eq!(label(canonical).to_string(), canonical);
        }
    }

    #[test]
    fn accessors() {
        let l = label("NL:STG-GEHEIM;REL=NLD,DEU;CMP=CYBER;TLP=AMBER");
        assert_eq!(l.policy(), "NL");
        assert_eq!(l.level(), "STG-GEHEIM");
        assert_eq!(l.level_rank(), 3);
        assert_eq!(l.tlp(), Some(Tlp::Amber));
        let tags: Vec<(&str, Vec<&str>)> = l
            .tags()
            .map(|(k, v)| (k, v.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            tags,
            vec![("CMP", vec!["CYBER"]), ("REL", vec!["DEU", "NLD"])]
        );
        assert!(l.tag("REL").unwrap().contains("NLD"));
        assert!(l.tag("INFO").is_none());

        let c: Clearance = "nato:cosmic-top-secret;cmp=cyber".parse().unwrap();
        assert_eq!(c.policy(), "NATO");
        assert_eq!(c.level(), "COSMIC-TOP-SECRET");
        assert_eq!(c.level_rank(), 4);
        assert_eq!(c.tags().count(), 1);
        assert_eq!(c.to_string(), "NATO:COSMIC-TOP-SECRET;CMP=CYBER");
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let l = label("NL:STG-GEHEIM;REL=NLD,DEU;TLP=AMBER");
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, "\"NL:STG-GEHEIM;REL=DEU,NLD;TLP=AMBER\"");
        assert_eq!(serde_json::from_str::<Label>(&json).unwrap(), l);
        let c: Clearance = "NL:STG-GEHEIM;REL=NLD".parse().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"NL:STG-GEHEIM;REL=NLD\"");
        assert_eq!(serde_json::from_str::<Clearance>(&json).unwrap(), c);
        let err = serde_json::from_str::<Label>("\"NL:GEHEIM\"").unwrap_err();
        assert!(err.to_string().contains("unknown level 'GEHEIM'"), "{err}");
        assert_eq!(
            serde_json::to_string(&Tlp::AmberStrict).unwrap(),
            "\"AMBER+STRICT\""
        );
    }

    #[test]
    fn unknown_level_message_lists_valid_levels() {
        assert_eq!(
            label_err("NL:GEHEIM").to_string(),
            "unknown level 'GEHEIM' for policy NL; valid levels (lowest first): ONGERUBRICEERD, \
             DEP-VERTROUWELIJK, STG-CONFIDENTIEEL, STG-GEHEIM, STG-ZEER-GEHEIM"
        );
    }

    /// One case per error kind the text form can produce.
    #[test]
    fn every_text_error_kind() {
        use PolicyError as E;
        let long = format!("NL:STG-GEHEIM;CMP={}", "A".repeat(1020));
        assert!(matches!(label_err(&long), E::TooLong { max: 1024, .. }));
        assert!(matches!(label_err(""), E::Empty));
        assert!(matches!(label_err("  \t "), E::Empty));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;CMP=CYBÉR"),
            E::InvalidCharacter {
                ch: 'É',
                position: 21
            }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM\n"),
            E::InvalidCharacter { ch: '\n', .. }
        ));
        assert!(matches!(label_err("NL"), E::MissingLevel { text } if text == "NL"));
        assert!(matches!(
            label_err("STG-GEHEIM;REL=NLD"),
            E::MissingLevel { .. }
        ));
        let e = label_err("XX:SECRET");
        assert!(matches!(e, E::UnknownPolicy { .. }));
        assert!(
            e.to_string().contains("valid policies: NL, EU, NATO"),
            "{e}"
        );
        assert!(matches!(label_err("NL:STG GEHEIM"), E::UnknownLevel { .. }));
        assert!(matches!(label_err("NL:"), E::UnknownLevel { .. }));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;;REL=NLD"),
            E::EmptySegment { index: 1 }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL=NLD;"),
            E::EmptySegment { index: 2 }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL"),
            E::MissingEquals { .. }
        ));
        let e = label_err("NL:STG-GEHEIM;NOFORN=YES");
        assert!(matches!(e, E::UnknownTag { .. }));
        assert!(
            e.to_string().contains("valid tags: CMP, INFO, REL, TLP"),
            "{e}"
        );
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL=NLD;rel=DEU"),
            E::DuplicateTag { tag } if tag == "REL"
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;TLP=RED;TLP=RED"),
            E::DuplicateTag { tag } if tag == "TLP"
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL="),
            E::EmptyValue { .. }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL=NLD,,DEU"),
            E::EmptyValue { .. }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;CMP=A, "),
            E::EmptyValue { .. }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;TLP="),
            E::EmptyValue { .. }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;TLP=RED,"),
            E::EmptyValue { .. }
        ));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;CMP=CY BER"),
            E::InvalidToken { .. }
        ));
        let e = label_err(&format!("NL:STG-GEHEIM;CMP={}", "X".repeat(33)));
        assert!(matches!(e, E::InvalidToken { max: 32, .. }));
        assert!(e.to_string().contains("1 to 32 characters"), "{e}");
        let e = label_err("NL:STG-GEHEIM;REL=NLD,XYZ");
        assert!(matches!(e, E::UnknownValue { .. }));
        assert!(e.to_string().contains("ISO 3166-1 alpha-3"), "{e}");
        assert!(matches!(
            label_err("NL:STG-GEHEIM;REL=NL"),
            E::UnknownValue { .. }
        ));
        let many_tags = format!("NL:STG-GEHEIM{}", ";CMP=A".repeat(17));
        assert!(matches!(
            label_err(&many_tags),
            E::TooManyTags { count: 17, max: 16 }
        ));
        let values: Vec<String> = (0..65).map(|i| format!("C{i}")).collect();
        let e = label_err(&format!("NL:STG-GEHEIM;CMP={}", values.join(",")));
        assert!(matches!(
            e,
            E::TooManyValues {
                count: 65,
                max: 64,
                ..
            }
        ));
        // 64 distinct values (and duplicates beyond) are fine.
        let mut sixty_four: Vec<String> = (0..64).map(|i| format!("C{i}")).collect();
        sixty_four.push("C1".to_owned());
        assert!(
            format!("NL:STG-GEHEIM;CMP={}", sixty_four.join(","))
                .parse::<Label>()
                .is_ok()
        );
        assert!(matches!(
            label_err("NL:STG-GEHEIM;TLP=PURPLE"),
            E::UnknownTlp { .. }
        ));
        assert!(matches!(label_err("TLP:WHITE"), E::UnknownTlp { .. }));
        assert!(matches!(
            label_err("NL:STG-GEHEIM;TLP=RED,AMBER"),
            E::TlpNotSingle { .. }
        ));
        let e = label_err("TLP:GREEN;REL=NLD");
        assert!(matches!(e, E::ShorthandWithTags { .. }));
        assert!(e.to_string().contains("NL:ONGERUBRICEERD;"), "{e}");
        assert!(matches!(
            label_err("TLP:GREEN;TLP=RED"),
            E::ShorthandWithTags { .. }
        ));
        assert!(matches!(
            clearance_err("NL:STG-GEHEIM;TLP=RED"),
            E::TlpInClearance
        ));
        assert!(matches!(clearance_err("TLP:GREEN"), E::TlpInClearance));
        assert!(matches!(
            clearance_err("NL:STG-GEHEIM;INFO=X"),
            E::InformativeInClearance { .. }
        ));
    }

    #[test]
    fn from_parts_checks_like_the_text_form() {
        let l =
            Label::from_parts("nl", "stg-geheim", [("rel", ["nld", "deu", "nld"])], None).unwrap();
        assert_eq!(l.to_string(), "NL:STG-GEHEIM;REL=DEU,NLD");
        let no_tags: [(&str, [&str; 0]); 0] = [];
        assert!(Label::from_parts("NL", "GEHEIM", no_tags, None).is_err());
        assert!(matches!(
            Label::from_parts("NL", "STG-GEHEIM", [("CMP", Vec::<&str>::new())], None),
            Err(PolicyError::EmptyValue { .. })
        ));
        assert!(matches!(
            Clearance::from_parts("NL", "STG-GEHEIM", [("INFO", ["X"])]),
            Err(PolicyError::InformativeInClearance { .. })
        ));
        assert!(matches!(
            Label::from_parts("NL", "STG-GEHEIM", [("tlp", ["RED"])], None),
            Err(PolicyError::TlpAsTag)
        ));
        assert!(matches!(
            Clearance::from_parts("NL", "STG-GEHEIM", [("TLP", ["RED"])]),
            Err(PolicyError::TlpInClearance)
        ));
        let c = Clearance::from_parts("EU", "SECRET-UE", [("CMP", ["B", "A"])]).unwrap();
        assert_eq!(c.to_string(), "EU:SECRET-UE;CMP=A,B");
        // The canonical text must fit MAX_TEXT_LEN even when built from parts.
        let big: Vec<String> = (0..64).map(|i| format!("{i:0>30}")).collect();
        assert!(matches!(
            Label::from_parts("NL", "STG-GEHEIM", [("CMP", big)], None),
            Err(PolicyError::TooLong { .. })
        ));
    }

    #[test]
    fn max_label_as_clearance_drops_informative_and_tlp() {
        let max = label("NL:STG-GEHEIM;CMP=CYBER;INFO=X;REL=NLD;TLP=RED");
        assert_eq!(
            Clearance::from_max_label(&max).to_string(),
            "NL:STG-GEHEIM;CMP=CYBER;REL=NLD"
        );
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(l in testgen::label(Pools { wide: true })) {
            let text = l.to_string();
            let back: Label = text.parse().unwrap();
            prop_assert_eq!(&back, &l);
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn parse_tolerates_case_and_spaces(
            l in testgen::label(Pools { wide: true }),
            noise in testgen::any_noise(),
        ) {
            let messy = testgen::scramble(&l.to_string(), &noise);
            let back: Label = messy.parse().unwrap();
            prop_assert_eq!(back, l);
        }

        #[test]
        fn clearance_display_then_parse_is_identity(c in testgen::clearance(Pools { wide: true })) {
            let text = c.to_string();
            let back: Clearance = text.parse().unwrap();
            prop_assert_eq!(&back, &c);
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "[ -~]{0,200}") {
            if let Ok(l) = s.parse::<Label>() {
                prop_assert_eq!(l.to_string().parse::<Label>().unwrap(), l);
            }
            let _ = s.parse::<Clearance>();
        }

        #[test]
        fn parsing_label_like_text_never_panics(s in "[a-zA-Z0-9:;=, +_-]{0,120}") {
            if let Ok(l) = s.parse::<Label>() {
                let text = l.to_string();
                prop_assert_eq!(text.parse::<Label>().unwrap().to_string(), text);
            }
        }
    }
}

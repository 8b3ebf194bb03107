//! The access decision (ADatP-4774 / ESS style).
//!
//! A clearance admits a label when **all** of these hold:
//!
//! 1. **Policy**: the label's policy is the clearance's, or the two policies have a declared
//!    level-by-level equivalence (e.g. NL STG-CONFIDENTIEEL ≈ CONFIDENTIEL-UE ≈
//!    NATO-CONFIDENTIAL) and the label's level has an equivalent in the clearance's policy.
//! 2. **Level**: the label's level (translated into the clearance's policy) is at or below the
//!    clearance's level.
//! 3. **Restrictive tags** (e.g. `CMP`): the clearance holds *every* value of the label.
//! 4. **Permissive tags** (e.g. `REL`): for each such tag, the clearance holds *at least one* of
//!    the label's values.
//! 5. **Informative tags** (e.g. `INFO`) and the **TLP** marking are ignored: TLP governs
//!    forwarding ([`may_forward`](crate::may_forward)), not access.
//!
//! A tag's kind is taken from the *label's* policy; values held are looked up by tag name in
//! the clearance. A missing label or clearance denies ([`decide_opt`]).
//!
//! Every [`Decision`] carries reasons a person can read: on a denial, every check that failed
//! (all are evaluated, so a person sees everything that must change); on an allow, every check
//! that passed.
//!
//! [`within`] applies the same rule to a notice label and a community's maximum label, with the
//! maximum label read as a clearance. [`meet`] combines two clearances into the greatest one
//! both grant, so that local policy can lower, never raise, what a certificate grants.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::error::PolicyError;
use crate::label::{Clearance, Label, Marking, Tags};
use crate::registry::Registry;
use crate::scheme::TagKind;

/// The outcome of a policy check, with reasons a person can read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[must_use]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// Why: the failed checks on a denial, the passed checks on an allow. Never empty.
    pub reasons: Vec<String>,
}

impl Decision {
    /// An allow with these reasons.
    pub fn allow(reasons: Vec<String>) -> Decision {
        Decision {
            allowed: true,
            reasons,
        }
    }

    /// A denial with these reasons.
    pub fn deny(reasons: Vec<String>) -> Decision {
        Decision {
            allowed: false,
            reasons,
        }
    }

    /// Whether the action is allowed.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The reasons joined with "; ".
    pub fn reason(&self) -> String {
        self.reasons.join("; ")
    }
}

impl fmt::Display for Decision {
    /// `allowed: reason; reason` or `denied: reason; reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        write!(f, "{verdict}: {}", self.reason())
    }
}

/// What a label is being compared with; only changes the wording of reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Against {
    Clearance,
    MaxLabel,
}

impl Against {
    fn noun(self) -> &'static str {
        match self {
            Against::Clearance => "clearance",
            Against::MaxLabel => "maximum label",
        }
    }

    fn held(self) -> &'static str {
        match self {
            Against::Clearance => "held",
            Against::MaxLabel => "allowed by the maximum label",
        }
    }

    fn holds(self) -> &'static str {
        match self {
            Against::Clearance => "clearance holds",
            Against::MaxLabel => "maximum label allows",
        }
    }
}

fn list<'a>(values: impl IntoIterator<Item = &'a String>) -> String {
    values
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Registry {
    /// Whether `clearance` admits `label` under this registry (see the [module docs](self)).
    pub fn decide(&self, label: &Label, clearance: &Clearance) -> Decision {
        self.decide_against(label, &clearance.marking, Against::Clearance)
    }

    /// Whether notice `label` is within a community's maximum label `max` (see [`within`]).
    pub fn within(&self, label: &Label, max: &Label) -> Decision {
        let max = self.max_label_as_clearance(max);
        self.decide_against(label, &max.marking, Against::MaxLabel)
    }

    fn decide_against(&self, label: &Label, c: &Marking, against: Against) -> Decision {
        let mut ok: Vec<String> = Vec::new();
        let mut fail: Vec<String> = Vec::new();
        let l = &label.marking;
        let noun = against.noun();

        // 1. Policy (and translation of the level into the clearance's policy).
        let label_scheme = self.scheme(&l.policy).filter(|s| s.name == l.policy);
        let target_scheme = self.scheme(&c.policy).filter(|s| s.name == c.policy);
        let mut translated: Option<u8> = None;
        match (label_scheme, target_scheme) {
            (None, _) => fail.push(format!("label policy {} is not defined", l.policy)),
            (_, None) => fail.push(format!("{noun} policy {} is not defined", c.policy)),
            (Some(_), Some(_)) if l.policy == c.policy => {
                ok.push(format!("policy {} matches the {noun}", l.policy));
                translated = Some(l.rank);
            }
            (Some(_), Some(ts)) => match self.translate(&l.policy, l.rank, &c.policy) {
                Ok(rank) => {
                    let eq = ts.level_at(rank).unwrap_or("?");
                    ok.push(format!(
                        "{} is equivalent to {} {eq} (declared {}/{} equivalence)",
                        l.level, c.policy, l.policy, c.policy
                    ));
                    translated = Some(rank);
                }
                Err(e) => fail.push(e.to_string()),
            },
        }

        // 2. Level.
        if let Some(rank) = translated {
            let shown = if l.policy == c.policy {
                format!("level {}", l.level)
            } else {
                let eq = target_scheme.and_then(|s| s.level_at(rank)).unwrap_or("?");
                format!("level {} (≈ {} {eq})", l.level, c.policy)
            };
            if rank <= c.rank {
                ok.push(format!("{shown} is within {noun} {}", c.level));
            } else {
                fail.push(format!("{shown} is above {noun} {}", c.level));
            }
        }

        // 3.-5. Tags, with kinds from the label's policy.
        let empty = BTreeSet::new();
        for (name, values) in &l.tags {
            let Some(def) = label_scheme.and_then(|s| s.tag(name)) else {
                fail.push(format!("tag {name} is not defined by policy {}", l.policy));
                continue;
            };
            let held = c.tags.get(name).unwrap_or(&empty);
            match def.kind {
                TagKind::Restrictive => {
                    let missing: Vec<&String> = values.difference(held).collect();
                    if missing.is_empty() {
                        let n = if values.len() == 1 {
                            &def.noun
                        } else {
                            &def.nouns
                        };
                        ok.push(format!("{n} {} {}", list(values), against.held()));
                    } else {
                        let n = if missing.len() == 1 {
                            &def.noun
                        } else {
                            &def.nouns
                        };
                        fail.push(format!("{n} {} not {}", list(missing), against.held()));
                    }
                }
                TagKind::Permissive => {
                    let common: Vec<&String> = values.intersection(held).collect();
                    if common.is_empty() {
                        fail.push(format!(
                            "{} {}; {} none of them",
                            def.phrase,
                            list(values),
                            against.holds()
                        ));
                    } else {
                        ok.push(format!(
                            "{} {}; {} {}",
                            def.phrase,
                            list(values),
                            against.holds(),
                            list(common)
                        ));
                    }
                }
                TagKind::Informative => ok.push(format!(
                    "{name}={} is informative only and does not decide access",
                    list(values)
                )),
            }
        }
        if let Some(tlp) = label.tlp {
            ok.push(format!(
                "TLP:{tlp} governs forwarding only and does not decide access"
            ));
        }

        if fail.is_empty() {
            Decision::allow(ok)
        } else {
            Decision::deny(fail)
        }
    }

    /// The greatest clearance that both `a` and `b` grant, in `a`'s policy: the lower of the
    /// two levels (`b`'s translated through a declared equivalence), and for each tag the values
    /// held in both (a tag held by only one of them is dropped).
    ///
    /// It never admits a label that `a` or `b` refuses. Errors if `b`'s policy has no
    /// equivalence to `a`'s or `b`'s level has no equivalent in `a`'s policy.
    pub fn meet(&self, a: &Clearance, b: &Clearance) -> Result<Clearance, PolicyError> {
        let (am, bm) = (&a.marking, &b.marking);
        let scheme = self
            .scheme(&am.policy)
            .ok_or_else(|| PolicyError::UnknownPolicy {
                policy: am.policy.clone(),
                valid: self.policy_list(),
            })?;
        let b_rank = self.translate(&bm.policy, bm.rank, &am.policy)?;
        let rank = am.rank.min(b_rank);
        let level = scheme
            .level_at(rank)
            .ok_or_else(|| PolicyError::UnknownLevel {
                level: format!("rank {rank}"),
                policy: am.policy.clone(),
                valid: scheme.level_list(),
            })?
            .to_owned();
        let mut tags = Tags::new();
        for (name, values) in &am.tags {
            if let Some(other) = bm.tags.get(name) {
                let common: BTreeSet<String> = values.intersection(other).cloned().collect();
                if !common.is_empty() {
                    tags.insert(name.clone(), common);
                }
            }
        }
        Ok(Clearance {
            marking: Marking {
                policy: am.policy.clone(),
                level,
                rank,
                tags,
            },
        })
    }
}

/// Whether `clearance` admits `label`, under the built-in policies (see the [module docs](self)).
///
/// ```
/// let label: kring_policy::Label = "NL:STG-GEHEIM;CMP=CYBER".parse()?;
/// let clearance: kring_policy::Clearance = "NL:STG-CONFIDENTIEEL".parse()?;
/// let d = kring_policy::decide(&label, &clearance);
/// assert!(!d.allowed);
/// assert_eq!(d.to_string(),
///     "denied: level STG-GEHEIM is above clearance STG-CONFIDENTIEEL; compartment CYBER not held");
/// # Ok::<(), kring_policy::PolicyError>(())
/// ```
pub fn decide(label: &Label, clearance: &Clearance) -> Decision {
    Registry::builtin().decide(label, clearance)
}

/// Like [`decide`], but a missing label or a missing clearance denies.
pub fn decide_opt(label: Option<&Label>, clearance: Option<&Clearance>) -> Decision {
    match (label, clearance) {
        (Some(l), Some(c)) => decide(l, c),
        (l, c) => {
            let mut reasons = Vec::new();
            if l.is_none() {
                reasons.push("no label: an unlabelled notice is always refused".to_owned());
            }
            if c.is_none() {
                reasons
                    .push("no clearance: access without a clearance is always refused".to_owned());
            }
            Decision::deny(reasons)
        }
    }
}

/// Whether notice `label` is within a community's maximum label `max`: `max` is read as a
/// clearance (its informative tags and TLP are dropped) and the same rule as [`decide`]
/// applies. Built-in policies.
pub fn within(label: &Label, max: &Label) -> Decision {
    Registry::builtin().within(label, max)
}

/// The greatest clearance both `a` and `b` grant, in `a`'s policy (see [`Registry::meet`]).
/// Built-in policies.
pub fn meet(a: &Clearance, b: &Clearance) -> Result<Clearance, PolicyError> {
    Registry::builtin().meet(a, b)
}

impl Clearance {
    /// This clearance lowered by `cap` (e.g. a relay's configured maximum): `meet(self, cap)`.
    /// The result is never higher than `self` or `cap`, on level or on any tag; tags that
    /// `cap` does not hold are dropped. Built-in policies.
    pub fn lowered_by(&self, cap: &Clearance) -> Result<Clearance, PolicyError> {
        meet(self, cap)
    }

    /// Whether this clearance admits `label`: [`decide`]`(label, self)`.
    pub fn admits(&self, label: &Label) -> Decision {
        decide(label, self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::testgen::{self, Pools};

    const SMALL: Pools = Pools { wide: false };

    fn tags_of(c: &Clearance) -> BTreeMap<String, BTreeSet<String>> {
        c.tags().map(|(k, v)| (k.to_owned(), v.clone())).collect()
    }

    /// `c` with its level raised by `by` ranks (capped) and `extra` values added.
    fn raised(c: &Clearance, by: u8, extra: &[(&str, &str)]) -> Clearance {
        let mut tags = tags_of(c);
        for (tag, value) in extra {
            tags.entry((*tag).to_owned())
                .or_default()
                .insert((*value).to_owned());
        }
        let rank = c.level_rank().saturating_add(by).min(4);
        let level = crate::level_name(c.policy(), rank).unwrap();
        Clearance::from_parts(c.policy(), level, tags).unwrap()
    }

    fn extra_values() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
        proptest::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["NLD", "DEU", "BEL", "FRA", "USA"])
                    .prop_map(|v| ("REL", v)),
                prop::sample::select(vec!["CYBER", "HUMINT", "SIGINT"]).prop_map(|v| ("CMP", v)),
            ],
            0..4,
        )
    }

    #[test]
    fn decision_display() {
        let d = Decision::deny(vec!["a".into(), "b".into()]);
        assert_eq!(d.to_string(), "denied: a; b");
        assert!(!d.is_allowed());
        let d = Decision::allow(vec!["ok".into()]);
        assert_eq!(d.to_string(), "allowed: ok");
        assert_eq!(d.reason(), "ok");
    }

    #[test]
    fn meet_lowers_level_and_intersects_tags() {
        let cert: Clearance = "NL:STG-ZEER-GEHEIM;CMP=CYBER,HUMINT;REL=NLD"
            .parse()
            .unwrap();
        let cap: Clearance = "NL:STG-GEHEIM;CMP=CYBER".parse().unwrap();
        assert_eq!(
            cert.lowered_by(&cap).unwrap().to_string(),
            "NL:STG-GEHEIM;CMP=CYBER"
        );
        assert_eq!(
            meet(&cap, &cert).unwrap().to_string(),
            "NL:STG-GEHEIM;CMP=CYBER"
        );
        // A cap can never raise: a higher cap leaves the certificate's grant.
        let high: Clearance = "NL:STG-ZEER-GEHEIM;CMP=CYBER,HUMINT,SIGINT;REL=NLD,DEU"
            .parse()
            .unwrap();
        assert_eq!(cert.lowered_by(&high).unwrap(), cert);
        // Across policies, the result is in the first clearance's policy.
        let nato_cap: Clearance = "NATO:NATO-CONFIDENTIAL;REL=NLD".parse().unwrap();
        assert_eq!(
            cert.lowered_by(&nato_cap).unwrap().to_string(),
            "NL:STG-CONFIDENTIEEL;REL=NLD"
        );
    }

    #[test]
    fn admits_is_decide() {
        let c: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let l: Label = "NL:STG-CONFIDENTIEEL".parse().unwrap();
        assert_eq!(c.admits(&l), decide(&l, &c));
    }

    proptest! {
        #[test]
        fn raising_a_clearance_never_turns_allow_into_deny(
            l in testgen::label(SMALL),
            c in testgen::clearance(SMALL),
            by in 0..5u8,
            extra in extra_values(),
        ) {
            let higher = raised(&c, by, &extra);
            if decide(&l, &c).allowed {
                prop_assert!(decide(&l, &higher).allowed, "{} -> {}", c, higher);
            }
            // Contrapositive: lowering never turns deny into allow.
            if !decide(&l, &higher).allowed {
                prop_assert!(!decide(&l, &c).allowed);
            }
        }

        #[test]
        fn adding_a_restrictive_value_never_turns_deny_into_allow(
            l in testgen::label(SMALL),
            c in testgen::clearance(SMALL),
            value in prop::sample::select(vec!["CYBER", "HUMINT", "SIGINT", "NEW"]),
        ) {
            let mut tags: BTreeMap<String, BTreeSet<String>> =
                l.tags().map(|(k, v)| (k.to_owned(), v.clone())).collect();
            tags.entry("CMP".to_owned()).or_default().insert(value.to_owned());
            let stricter = Label::from_parts(l.policy(), l.level(), tags, l.tlp()).unwrap();
            if !decide(&l, &c).allowed {
                prop_assert!(!decide(&stricter, &c).allowed);
            }
        }

        #[test]
        fn meet_never_admits_what_either_side_refuses(
            l in testgen::label(SMALL),
            a in testgen::clearance(SMALL),
            b in testgen::clearance(SMALL),
        ) {
            let m = meet(&a, &b).unwrap();
            prop_assert_eq!(m.policy(), a.policy());
            prop_assert!(m.level_rank() <= a.level_rank());
            for (tag, values) in m.tags() {
                prop_assert!(values.is_subset(a.tag(tag).unwrap()));
                prop_assert!(values.is_subset(b.tag(tag).unwrap()));
            }
            if decide(&l, &m).allowed {
                prop_assert!(decide(&l, &a).allowed);
                prop_assert!(decide(&l, &b).allowed);
            }
            // Meeting with itself changes nothing.
            prop_assert_eq!(meet(&a, &a).unwrap(), a);
        }

        #[test]
        fn within_is_decide_against_the_max_label_as_clearance(
            l in testgen::label(SMALL),
            max in testgen::label(SMALL),
        ) {
            let w = within(&l, &max);
            let d = decide(&l, &Clearance::from_max_label(&max));
            prop_assert_eq!(w.allowed, d.allowed);
            prop_assert!(!w.reasons.is_empty());
        }

        #[test]
        fn decision_is_independent_of_informative_tags_and_tlp(
            l in testgen::label(SMALL),
            c in testgen::clearance(SMALL),
        ) {
            let tags: Vec<(String, BTreeSet<String>)> = l
                .tags()
                .filter(|(k, _)| *k != "INFO")
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect();
            let bare = Label::from_parts(l.policy(), l.level(), tags, None).unwrap();
            prop_assert_eq!(decide(&l, &c).allowed, decide(&bare, &c).allowed);
            prop_assert_eq!(decide_opt(Some(&l), Some(&c)), decide(&l, &c));
        }

        #[test]
        fn equivalent_policies_decide_alike(
            l in testgen::label(SMALL),
            c in testgen::clearance(SMALL),
            target in 0..3usize,
        ) {
            // The same label expressed in another (equivalent) policy gets the same verdict.
            let policy = testgen::policy_name(target);
            let level = crate::level_name(policy, l.level_rank()).unwrap();
            let tags: Vec<(String, BTreeSet<String>)> =
                l.tags().map(|(k, v)| (k.to_owned(), v.clone())).collect();
            let moved = Label::from_parts(policy, level, tags, l.tlp()).unwrap();
            prop_assert_eq!(decide(&l, &c).allowed, decide(&moved, &c).allowed);
        }
    }
}

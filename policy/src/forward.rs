//! TLP forwarding rules (FIRST TLP 2.0): may a notice be forwarded to a target?
//!
//! | colour        | may be forwarded into                                                    |
//! |---------------|--------------------------------------------------------------------------|
//! | CLEAR         | any community, and exported                                              |
//! | GREEN         | any community, and exported                                              |
//! | AMBER         | communities whose member organisations are all the forwarder's own       |
//! |               | organisation or its declared clients, and exported                       |
//! | AMBER+STRICT  | communities whose member organisations are all the forwarder's own,      |
//! |               | and exported                                                             |
//! | RED           | nowhere, never exported                                                  |
//!
//! An **export** ([`Destination::Export`]) goes to the exporting member's own
//! organisation: its threat-intelligence platform reads it (`kring notice export`, `kring
//! taxii serve`), under the organisation's accreditation, with the TLP marking travelling
//! along. That keeps every colour but RED (for its named recipients only) within its scope.
//!
//! A label **without TLP** is treated as the `unmarked` colour of `schemes/tlp.toml`, which
//! is **AMBER**: conservative, since nobody said the notice may leave the organisation and its
//! clients. A community listing no member organisations cannot be checked and is refused for
//! AMBER and AMBER+STRICT. Organisation names are compared exactly (case-sensitive).
//!
//! This is only the TLP rule: whether the label fits the target community's maximum label is a
//! separate check ([`within`](crate::within)).

use std::collections::BTreeSet;

use crate::decide::Decision;
use crate::label::Label;
use crate::registry::Registry;
use crate::tlp::{ForwardScope, Tlp};

/// Where a notice is to be forwarded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Into a Kring community.
    Community {
        /// The community id (`NAME@HUB`), used in reasons.
        id: String,
        /// The organisations of all its members.
        member_orgs: BTreeSet<String>,
    },
    /// Out of Kring into the exporting member's own organisation's tools (its
    /// threat-intelligence platform), with the TLP marking carried along.
    Export,
}

/// A forwarding target together with the forwarding organisation's declared clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ForwardTarget {
    /// Where the notice goes.
    pub destination: Destination,
    /// The organisations declared as clients of the forwarder's organisation (for TLP:AMBER).
    pub forwarder_clients: BTreeSet<String>,
}

impl ForwardTarget {
    /// A community `id` whose members belong to `member_orgs`; no declared clients.
    pub fn community<S: Into<String>>(
        id: impl Into<String>,
        member_orgs: impl IntoIterator<Item = S>,
    ) -> ForwardTarget {
        ForwardTarget {
            destination: Destination::Community {
                id: id.into(),
                member_orgs: member_orgs.into_iter().map(Into::into).collect(),
            },
            forwarder_clients: BTreeSet::new(),
        }
    }

    /// An export out of Kring; no declared clients.
    pub fn export() -> ForwardTarget {
        ForwardTarget {
            destination: Destination::Export,
            forwarder_clients: BTreeSet::new(),
        }
    }

    /// The same target with the forwarder organisation's declared clients.
    pub fn with_clients<S: Into<String>>(mut self, clients: impl IntoIterator<Item = S>) -> Self {
        self.forwarder_clients = clients.into_iter().map(Into::into).collect();
        self
    }
}

fn join(set: &BTreeSet<&String>) -> String {
    set.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Registry {
    /// Whether organisation `from_org` may forward a notice labelled `label` to `target`,
    /// under this registry's TLP rules (see the [module docs](self)).
    pub fn may_forward(&self, label: &Label, from_org: &str, target: &ForwardTarget) -> Decision {
        let rules = self.tlp_rules();
        let mut notes: Vec<String> = Vec::new();
        let colour: Tlp = match label.tlp() {
            Some(c) => c,
            None => {
                notes.push(format!(
                    "label carries no TLP marking; treated as TLP:{}",
                    rules.unmarked
                ));
                rules.unmarked
            }
        };
        let scope = rules.scope(colour);
        let verdict = check_scope(colour, scope, from_org, target);
        let (allowed, reason) = match verdict {
            Ok(r) => (true, r),
            Err(r) => (false, r),
        };
        notes.push(reason);
        Decision {
            allowed,
            reasons: notes,
        }
    }
}

fn check_scope(
    colour: Tlp,
    scope: ForwardScope,
    from_org: &str,
    target: &ForwardTarget,
) -> Result<String, String> {
    if scope == ForwardScope::Anywhere {
        return Ok(format!(
            "TLP:{colour} may be shared anywhere, including exports"
        ));
    }
    if scope == ForwardScope::Nowhere {
        return Err(format!("TLP:{colour} may not be forwarded"));
    }
    let (id, members) = match &target.destination {
        Destination::Export => {
            return Ok(format!(
                "TLP:{colour} may be exported to the organisation's own platform, marked \
                 TLP:{colour}"
            ));
        }
        Destination::Community { id, member_orgs } => (id, member_orgs),
    };
    if scope == ForwardScope::AnyCommunity {
        return Ok(format!(
            "TLP:{colour} may be forwarded into any community, including {id}"
        ));
    }
    if from_org.is_empty() {
        return Err(format!(
            "the forwarding organisation is unknown, so the TLP:{colour} sharing scope cannot be checked"
        ));
    }
    if members.is_empty() {
        return Err(format!(
            "community {id} lists no member organisations, so the TLP:{colour} sharing scope cannot be checked"
        ));
    }
    let (allowed_orgs, who): (BTreeSet<&String>, String) = if scope == ForwardScope::OrgOnly {
        (
            members.iter().filter(|m| m.as_str() == from_org).collect(),
            format!("organisation {from_org}"),
        )
    } else {
        let clients: Vec<&str> = target
            .forwarder_clients
            .iter()
            .map(String::as_str)
            .collect();
        let clients = if clients.is_empty() {
            "none declared".to_owned()
        } else {
            clients.join(", ")
        };
        (
            members
                .iter()
                .filter(|m| m.as_str() == from_org || target.forwarder_clients.contains(*m))
                .collect(),
            format!("organisation {from_org} and its declared clients ({clients})"),
        )
    };
    let outsiders: BTreeSet<&String> = members
        .iter()
        .filter(|m| !allowed_orgs.contains(m))
        .collect();
    let all: BTreeSet<&String> = members.iter().collect();
    if outsiders.is_empty() {
        Ok(format!(
            "TLP:{colour}: every member organisation of community {id} ({}) is within {who}",
            join(&all)
        ))
    } else {
        Err(format!(
            "TLP:{colour} may only be forwarded into communities of {who}; community {id} also has members from {}",
            join(&outsiders)
        ))
    }
}

impl Registry {
    /// Whether a forwarded copy of a notice labelled `original` may carry `label`: never
    /// lower. `original` must be within `label` read as a maximum ([`within`](crate::within):
    /// level, restrictive and permissive tags), and `label`'s TLP colour must be at least as
    /// restrictive as `original`'s (a label without TLP counts as the `unmarked` colour).
    pub fn keeps_or_raises(&self, original: &Label, label: &Label) -> Decision {
        let unmarked = self.tlp_rules().unmarked;
        let colour = |l: &Label| l.tlp().unwrap_or(unmarked);
        let (mut ok, mut fail) = (Vec::new(), Vec::new());
        let level = self.within(original, label);
        if level.allowed {
            ok.push(format!(
                "{label} is at least as high as the original {original}"
            ));
        } else {
            fail.push(format!(
                "{label} is lower than the original {original}: {}",
                level.reason()
            ));
        }
        let (was, now) = (colour(original), colour(label));
        if now >= was {
            ok.push(format!("TLP:{now} is at least as restrictive as TLP:{was}"));
        } else {
            fail.push(format!(
                "TLP:{now} is less restrictive than the original's TLP:{was}"
            ));
        }
        if fail.is_empty() {
            Decision::allow(ok)
        } else {
            Decision::deny(fail)
        }
    }
}

/// Whether a forwarded copy of a notice labelled `original` may carry `label` (never lower),
/// under the built-in policies (see [`Registry::keeps_or_raises`]).
///
/// ```
/// use kring_policy::{Label, keeps_or_raises};
/// let original: Label = "NL:STG-CONFIDENTIEEL;TLP=GREEN".parse()?;
/// assert!(keeps_or_raises(&original, &"NL:STG-GEHEIM;TLP=AMBER".parse()?).allowed);
/// assert!(!keeps_or_raises(&original, &"NL:DEP-VERTROUWELIJK;TLP=GREEN".parse()?).allowed);
/// assert!(!keeps_or_raises(&original, &"NL:STG-CONFIDENTIEEL;TLP=CLEAR".parse()?).allowed);
/// # Ok::<(), kring_policy::PolicyError>(())
/// ```
pub fn keeps_or_raises(original: &Label, label: &Label) -> Decision {
    Registry::builtin().keeps_or_raises(original, label)
}

/// Whether organisation `from_org` may forward a notice labelled `label` to `target`, under the
/// built-in TLP 2.0 rules (see the [module docs](self)).
///
/// ```
/// use kring_policy::{ForwardTarget, Label, may_forward};
/// let label: Label = "TLP:AMBER+STRICT".parse()?;
/// let inside = ForwardTarget::community("intern@bz", ["bz"]);
/// assert!(may_forward(&label, "bz", &inside).allowed);
/// let mixed = ForwardTarget::community("cyber@nctv", ["bz", "nctv"]);
/// assert!(!may_forward(&label, "bz", &mixed).allowed);
/// # Ok::<(), kring_policy::PolicyError>(())
/// ```
pub fn may_forward(label: &Label, from_org: &str, target: &ForwardTarget) -> Decision {
    Registry::builtin().may_forward(label, from_org, target)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn with_tlp(colour: Tlp) -> Label {
        Label::from_parts("NL", "STG-GEHEIM", [("REL", ["NLD"])], Some(colour)).unwrap()
    }

    fn target() -> impl Strategy<Value = ForwardTarget> {
        let org = prop::sample::select(vec!["bz", "nctv", "aivd", "post-a"]);
        prop_oneof![
            Just(ForwardTarget::export()),
            (
                proptest::collection::btree_set(org.clone(), 0..4),
                proptest::collection::btree_set(org, 0..3)
            )
                .prop_map(|(members, clients)| {
                    ForwardTarget::community("x@bz", members).with_clients(clients)
                }),
        ]
    }

    #[test]
    fn unmarked_is_treated_as_amber() {
        let unmarked: Label = "NL:STG-GEHEIM".parse().unwrap();
        let t = ForwardTarget::community("x@bz", ["bz", "post-a"]).with_clients(["post-a"]);
        let a = may_forward(&unmarked, "bz", &t);
        let b = may_forward(&with_tlp(Tlp::Amber), "bz", &t);
        assert_eq!(a.allowed, b.allowed);
        assert_eq!(a.reasons[1..], b.reasons[..]);
        assert_eq!(
            a.reasons[0],
            "label carries no TLP marking; treated as TLP:AMBER"
        );
    }

    #[test]
    fn a_forwarded_copy_keeps_or_raises_the_label() {
        let l = |s: &str| -> Label { s.parse().unwrap() };
        let original = l("NL:STG-CONFIDENTIEEL;CMP=CYBER;TLP=GREEN");
        assert!(keeps_or_raises(&original, &original).allowed);
        assert!(keeps_or_raises(&original, &l("NL:STG-GEHEIM;CMP=CYBER;TLP=GREEN")).allowed);
        assert!(keeps_or_raises(&original, &l("NL:STG-CONFIDENTIEEL;CMP=CYBER;TLP=RED")).allowed);
        // Unmarked counts as AMBER: more restrictive than GREEN.
        assert!(keeps_or_raises(&original, &l("NL:STG-CONFIDENTIEEL;CMP=CYBER")).allowed);
        let lower_level =
            keeps_or_raises(&original, &l("NL:DEP-VERTROUWELIJK;CMP=CYBER;TLP=GREEN"));
        assert!(!lower_level.allowed);
        assert!(
            lower_level.reasons[0].contains("lower than the original"),
            "{lower_level}"
        );
        let dropped_compartment = keeps_or_raises(&original, &l("NL:STG-GEHEIM;TLP=GREEN"));
        assert!(!dropped_compartment.allowed, "{dropped_compartment}");
        let lighter = keeps_or_raises(&original, &l("NL:STG-CONFIDENTIEEL;CMP=CYBER;TLP=CLEAR"));
        assert!(!lighter.allowed);
        assert!(lighter.reasons[0].contains("less restrictive"), "{lighter}");
        let unmarked = l("NL:STG-CONFIDENTIEEL");
        assert!(!keeps_or_raises(&unmarked, &l("NL:STG-CONFIDENTIEEL;TLP=GREEN")).allowed);
        assert!(keeps_or_raises(&unmarked, &l("NL:STG-CONFIDENTIEEL;TLP=AMBER")).allowed);
    }

    proptest! {
        /// A more restrictive colour is never forwarded where a less restrictive one is refused.
        #[test]
        fn stricter_colours_never_reach_further(
            t in target(),
            from in prop::sample::select(vec!["bz", "nctv"]),
            i in 0..5usize,
            j in 0..5usize,
        ) {
            let (lo, hi) = (Tlp::ALL[i.min(j)], Tlp::ALL[i.max(j)]);
            if may_forward(&with_tlp(hi), from, &t).allowed {
                prop_assert!(may_forward(&with_tlp(lo), from, &t).allowed);
            }
            prop_assert!(!may_forward(&with_tlp(Tlp::Red), from, &t).allowed);
            prop_assert!(may_forward(&with_tlp(Tlp::Clear), from, &t).allowed);
        }
    }
}

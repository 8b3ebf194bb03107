//! The set of known policies, their equivalences and the TLP rules.
//!
//! [`Registry::builtin`] holds the built-in NL, EU, NATO and TLP 2.0 definitions embedded from
//! `policy/schemes/`. The free functions of this crate ([`decide`](crate::decide),
//! [`Label::from_str`](std::str::FromStr) and so on) use it. Other registries can be built from
//! definition text with [`Registry::from_sources`] (no I/O happens here: the caller supplies
//! the text).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::PolicyError;
use crate::scheme::{Scheme, SchemeError, parse_countries, parse_scheme};
use crate::tlp::{TlpRules, parse_tlp};

/// The built-in policy definition files, in the order [`policies`](crate::policies) lists them.
const BUILTIN_SCHEMES: [&str; 3] = [
    include_str!("../schemes/nl.toml"),
    include_str!("../schemes/eu.toml"),
    include_str!("../schemes/nato.toml"),
];
/// The built-in TLP 2.0 definition.
const BUILTIN_TLP: &str = include_str!("../schemes/tlp.toml");
/// The official list of ISO 3166-1 alpha-3 country codes.
const BUILTIN_COUNTRIES: &str = include_str!("../schemes/iso3166-1-alpha3.txt");

/// (from policy, to policy) -> for each rank of `from`, the equivalent rank of `to`, if declared.
type EquivalenceTables = BTreeMap<(String, String), Vec<Option<u8>>>;

/// Known policies, the level-by-level equivalences between them, and the TLP rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    schemes: Vec<Scheme>,
    equivalences: EquivalenceTables,
    tlp: TlpRules,
}

static BUILTIN: OnceLock<Registry> = OnceLock::new();

impl Registry {
    /// The built-in registry (NL, EU, NATO, TLP 2.0), loaded once from the embedded files.
    ///
    /// # Panics
    /// Only if the definition files compiled into this crate are invalid, which the crate's own
    /// tests rule out (`builtin_definitions_load`); it never depends on input.
    pub fn builtin() -> &'static Registry {
        BUILTIN.get_or_init(|| {
            #[expect(
                clippy::expect_used,
                reason = "embedded, test-checked data; not input from network, disk or user"
            )]
            Registry::from_sources(&BUILTIN_SCHEMES, BUILTIN_TLP, BUILTIN_COUNTRIES)
                .expect("the built-in policy definitions are valid")
        })
    }

    /// Builds a registry from policy definition texts (TOML, format as in `schemes/nl.toml`),
    /// the TLP definition text and the ISO 3166-1 alpha-3 country list text.
    ///
    /// Checks every definition, resolves equivalences (symmetric; both directions must agree;
    /// order-preserving) and the TLP shorthand.
    pub fn from_sources(
        schemes: &[&str],
        tlp: &str,
        countries: &str,
    ) -> Result<Registry, SchemeError> {
        let countries = parse_countries(countries)?;
        let mut parsed: Vec<Scheme> = Vec::with_capacity(schemes.len());
        for text in schemes {
            let s = parse_scheme(text, &countries)?;
            if parsed.iter().any(|p| p.name == s.name) {
                return Err(SchemeError::invalid(&s.name, "policy defined twice"));
            }
            parsed.push(s);
        }
        if parsed.is_empty() {
            return Err(SchemeError::invalid("registry", "no policies defined"));
        }
        let equivalences = resolve_equivalences(&parsed)?;
        let tlp = parse_tlp(tlp)?;
        let shorthand_ok = parsed
            .iter()
            .find(|s| s.name == tlp.shorthand_policy)
            .is_some_and(|s| s.rank_of(&tlp.shorthand_level).is_some());
        if !shorthand_ok {
            return Err(SchemeError::invalid(
                "TLP",
                format!(
                    "shorthand {}:{} is not a defined policy and level",
                    tlp.shorthand_policy, tlp.shorthand_level
                ),
            ));
        }
        Ok(Registry {
            schemes: parsed,
            equivalences,
            tlp,
        })
    }

    /// The policies, in definition order.
    pub fn schemes(&self) -> impl Iterator<Item = &Scheme> {
        self.schemes.iter()
    }

    /// The policy called `name` (case-insensitive).
    pub fn scheme(&self, name: &str) -> Option<&Scheme> {
        self.schemes
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The TLP rules.
    pub fn tlp_rules(&self) -> &TlpRules {
        &self.tlp
    }

    /// Policy names joined with ", " (for messages).
    pub(crate) fn policy_list(&self) -> String {
        let names: Vec<&str> = self.schemes.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }

    /// Whether policies `a` and `b` are the same or have a declared equivalence.
    pub fn are_equivalent(&self, a: &str, b: &str) -> bool {
        a == b
            || self
                .equivalences
                .contains_key(&(a.to_owned(), b.to_owned()))
    }

    /// The rank in policy `to` equivalent to rank `rank` of policy `from`.
    ///
    /// The same policy maps every rank to itself. Otherwise the equivalence must be declared:
    /// [`PolicyError::NoEquivalence`] if the policies have none, and
    /// [`PolicyError::NoEquivalentLevel`] if this level has no counterpart.
    pub fn translate(&self, from: &str, rank: u8, to: &str) -> Result<u8, PolicyError> {
        if from == to {
            return Ok(rank);
        }
        let table = self
            .equivalences
            .get(&(from.to_owned(), to.to_owned()))
            .ok_or_else(|| PolicyError::NoEquivalence {
                from: from.to_owned(),
                to: to.to_owned(),
            })?;
        table
            .get(usize::from(rank))
            .copied()
            .flatten()
            .ok_or_else(|| PolicyError::NoEquivalentLevel {
                from: from.to_owned(),
                level: self
                    .scheme(from)
                    .and_then(|s| s.level_at(rank))
                    .map_or_else(|| format!("rank {rank}"), str::to_owned),
                to: to.to_owned(),
            })
    }
}

/// Resolves the `[equivalence.OTHER]` tables of all schemes into symmetric rank tables.
fn resolve_equivalences(schemes: &[Scheme]) -> Result<EquivalenceTables, SchemeError> {
    let mut out: EquivalenceTables = BTreeMap::new();
    let find = |name: &str| schemes.iter().find(|s| s.name == name);
    for s in schemes {
        for (other_name, map) in &s.declared_equivalences {
            let other = find(other_name).ok_or_else(|| {
                SchemeError::invalid(
                    &s.name,
                    format!("equivalence with unknown policy {other_name}"),
                )
            })?;
            if other.name == s.name {
                return Err(SchemeError::invalid(
                    &s.name,
                    "a policy cannot declare an equivalence with itself",
                ));
            }
            for (own_level, other_level) in map {
                let a = s.rank_of(own_level).ok_or_else(|| {
                    SchemeError::invalid(
                        &s.name,
                        format!("equivalence.{other_name}: unknown own level {own_level}"),
                    )
                })?;
                let b = other.rank_of(other_level).ok_or_else(|| {
                    SchemeError::invalid(
                        &s.name,
                        format!(
                            "equivalence.{other_name}: {other_name} has no level {other_level}"
                        ),
                    )
                })?;
                set_equivalent(&mut out, s, a, other, b)?;
                set_equivalent(&mut out, other, b, s, a)?;
            }
        }
    }
    for ((from, to), table) in &out {
        let defined: Vec<u8> = table.iter().flatten().copied().collect();
        if defined.windows(2).any(|w| matches!(w, [x, y] if x >= y)) {
            return Err(SchemeError::invalid(
                from,
                format!("equivalence with {to} does not preserve the order of levels"),
            ));
        }
    }
    Ok(out)
}

fn set_equivalent(
    out: &mut EquivalenceTables,
    from: &Scheme,
    rank: u8,
    to: &Scheme,
    to_rank: u8,
) -> Result<(), SchemeError> {
    let table = out
        .entry((from.name.clone(), to.name.clone()))
        .or_insert_with(|| vec![None; from.levels.len()]);
    let slot = table
        .get_mut(usize::from(rank))
        .ok_or_else(|| SchemeError::invalid(&from.name, format!("rank {rank} out of range")))?;
    match *slot {
        Some(existing) if existing != to_rank => Err(SchemeError::invalid(
            &from.name,
            format!(
                "conflicting equivalences for {} {}: {} {} and {} {}",
                from.name,
                from.level_at(rank).unwrap_or("?"),
                to.name,
                to.level_at(existing).unwrap_or("?"),
                to.name,
                to.level_at(to_rank).unwrap_or("?"),
            ),
        )),
        _ => {
            *slot = Some(to_rank);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scheme::{TagKind, ValueSet};
    use crate::tlp::{ForwardScope, Tlp};
    use crate::{Clearance, Label};

    #[test]
    fn builtin_definitions_load() {
        let reg = Registry::from_sources(&BUILTIN_SCHEMES, BUILTIN_TLP, BUILTIN_COUNTRIES);
        assert_eq!(reg.as_ref().err(), None);
        assert_eq!(reg.unwrap(), *Registry::builtin());
    }

    #[test]
    fn builtin_policies_levels_and_tags() {
        assert_eq!(crate::policies().collect::<Vec<_>>(), ["NL", "EU", "NATO"]);
        let expect = [
            (
                "NL",
                [
                    "ONGERUBRICEERD",
                    "DEP-VERTROUWELIJK",
                    "STG-CONFIDENTIEEL",
                    "STG-GEHEIM",
                    "STG-ZEER-GEHEIM",
                ],
            ),
            (
                "EU",
                [
                    "EU-UNCLASSIFIED",
                    "RESTREINT-UE",
                    "CONFIDENTIEL-UE",
                    "SECRET-UE",
                    "TRES-SECRET-UE",
                ],
            ),
            (
                "NATO",
                [
                    "NATO-UNCLASSIFIED",
                    "NATO-RESTRICTED",
                    "NATO-CONFIDENTIAL",
                    "NATO-SECRET",
                    "COSMIC-TOP-SECRET",
                ],
            ),
        ];
        for (policy, levels) in expect {
            for (rank, level) in levels.iter().enumerate() {
                assert_eq!(crate::level_name(policy, rank as u8), Some(*level));
            }
            assert_eq!(crate::level_name(policy, 5), None);
            let s = Registry::builtin().scheme(policy).unwrap();
            assert_eq!(s.tag("REL").unwrap().kind, TagKind::Permissive);
            assert_eq!(s.tag("CMP").unwrap().kind, TagKind::Restrictive);
            assert_eq!(s.tag("INFO").unwrap().kind, TagKind::Informative);
            assert_eq!(s.tag("CMP").unwrap().values, ValueSet::Token);
        }
        assert_eq!(crate::level_name("nl", 3), Some("STG-GEHEIM"));
        assert_eq!(crate::level_name("XX", 0), None);
    }

    #[test]
    fn country_list_is_the_full_iso_list() {
        let reg = Registry::builtin();
        let ValueSet::Listed { values, .. } = &reg.scheme("NL").unwrap().tag("REL").unwrap().values
        else {
            panic!("REL must be a listed value set");
        };
        assert_eq!(values.len(), 249);
        for code in [
            "NLD", "DEU", "BEL", "FRA", "USA", "GBR", "UKR", "ZWE", "ABW", "ATA",
        ] {
            assert!(values.contains(code), "{code}");
        }
        for not_a_code in ["NL", "EUR", "XXX", "UK"] {
            assert!(!values.contains(not_a_code), "{not_a_code}");
        }
    }

    #[test]
    fn builtin_tlp_rules() {
        let rules = Registry::builtin().tlp_rules();
        assert_eq!(rules.version, "2.0");
        assert_eq!(
            (
                rules.shorthand_policy.as_str(),
                rules.shorthand_level.as_str()
            ),
            ("NL", "ONGERUBRICEERD")
        );
        assert_eq!(rules.unmarked, Tlp::Amber);
        let scopes: Vec<ForwardScope> = Tlp::ALL.iter().map(|c| rules.scope(*c)).collect();
        assert_eq!(
            scopes,
            [
                ForwardScope::Anywhere,
                ForwardScope::AnyCommunity,
                ForwardScope::OrgAndClients,
                ForwardScope::OrgOnly,
                ForwardScope::Nowhere
            ]
        );
    }

    #[test]
    fn builtin_equivalence_is_level_by_level_between_all_policies() {
        let reg = Registry::builtin();
        for a in crate::policies() {
            for b in crate::policies() {
                assert!(reg.are_equivalent(a, b));
                for r in 0..5u8 {
                    assert_eq!(reg.translate(a, r, b), Ok(r), "{a} {r} -> {b}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn equivalence_is_symmetric(a in 0..3usize, b in 0..3usize, r in 0..5u8) {
            let reg = Registry::builtin();
            let (a, b) = (crate::testgen::policy_name(a), crate::testgen::policy_name(b));
            prop_assert_eq!(reg.are_equivalent(a, b), reg.are_equivalent(b, a));
            if let Ok(s) = reg.translate(a, r, b) {
                prop_assert_eq!(reg.translate(b, s, a), Ok(r));
            }
        }
    }

    // ---- custom registries -------------------------------------------------------------

    const TAGS: &str = r#"
[[tags]]
name = "CMP"
kind = "restrictive"
values = "token"
noun = "compartment"
nouns = "compartments"
phrase = "compartments"
"#;

    fn scheme(name: &str, levels: &[&str], extra: &str) -> String {
        let levels: Vec<String> = levels.iter().map(|l| format!("\"{l}\"")).collect();
        format!(
            "name = \"{name}\"\ntitle = \"test\"\nlevels = [{}]\n{TAGS}\n{extra}\n",
            levels.join(", ")
        )
    }

    fn nl() -> String {
        scheme("NL", &["ONGERUBRICEERD", "STG-GEHEIM"], "")
    }

    fn build(schemes: &[String]) -> Result<Registry, SchemeError> {
        let refs: Vec<&str> = schemes.iter().map(String::as_str).collect();
        Registry::from_sources(&refs, BUILTIN_TLP, BUILTIN_COUNTRIES)
    }

    fn invalid(schemes: &[String], needle: &str) {
        let err = build(schemes).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "expected '{needle}' in: {err}"
        );
    }

    #[test]
    fn policies_without_equivalence_deny_with_a_reason() {
        let reg = build(&[
            nl(),
            scheme("XX", &["LOW", "HIGH"], ""),
            scheme(
                "YY",
                &["LOW", "MID", "HIGH"],
                "[equivalence.NL]\nLOW = \"ONGERUBRICEERD\"\nHIGH = \"STG-GEHEIM\"",
            ),
        ])
        .unwrap();
        assert!(!reg.are_equivalent("XX", "NL"));
        assert!(reg.are_equivalent("NL", "YY"), "equivalences are symmetric");

        let label: Label = reg.parse_label("XX:LOW").unwrap();
        let clearance: Clearance = reg.parse_clearance("NL:STG-GEHEIM").unwrap();
        let d = reg.decide(&label, &clearance);
        assert!(!d.allowed);
        assert_eq!(d.reasons, ["policy XX has no equivalence to NL"]);

        let label = reg.parse_label("YY:MID").unwrap();
        let d = reg.decide(&label, &clearance);
        assert!(!d.allowed);
        assert_eq!(
            d.reasons,
            ["level MID of policy YY has no declared equivalent in policy NL"]
        );

        let label = reg.parse_label("YY:HIGH;CMP=A").unwrap();
        let d = reg.decide(&label, &reg.parse_clearance("NL:STG-GEHEIM;CMP=A").unwrap());
        assert!(d.allowed, "{d}");
        assert!(
            d.reason().contains("HIGH is equivalent to NL STG-GEHEIM"),
            "{d}"
        );

        let c_xx = reg.parse_clearance("XX:HIGH").unwrap();
        assert!(matches!(
            reg.meet(&clearance, &c_xx),
            Err(PolicyError::NoEquivalence { .. })
        ));
        let c_yy = reg.parse_clearance("YY:MID").unwrap();
        assert!(matches!(
            reg.meet(&clearance, &c_yy),
            Err(PolicyError::NoEquivalentLevel { .. })
        ));
        // The built-in registry knows nothing of XX.
        assert!(matches!(
            "XX:LOW".parse::<Label>(),
            Err(PolicyError::UnknownPolicy { .. })
        ));
    }

    #[test]
    fn listed_value_sets() {
        let extra = "[[tags]]\nname = \"SAP\"\nkind = \"restrictive\"\nvalues = [\"ALPHA\", \"BRAVO\"]\nnoun = \"programme\"\nnouns = \"programmes\"\nphrase = \"programmes\"\n";
        let reg = build(&[scheme("NL", &["ONGERUBRICEERD"], extra)]).unwrap();
        assert!(reg.parse_label("NL:ONGERUBRICEERD;SAP=ALPHA").is_ok());
        let err = reg
            .parse_label("NL:ONGERUBRICEERD;SAP=CHARLIE")
            .unwrap_err();
        assert!(err.to_string().contains("one of ALPHA, BRAVO"), "{err}");
    }

    #[test]
    fn invalid_definitions_are_rejected_with_a_reason() {
        invalid(&[], "no policies defined");
        invalid(&[nl(), nl()], "defined twice");
        invalid(&["name = \"NL\"".to_owned()], "does not parse");
        invalid(&[format!("{}\nsurprise = 1\n", nl())], "does not parse");
        invalid(&[scheme("nl", &["A"], "")], "policy name 'nl'");
        invalid(&[scheme("TLP", &["A"], "")], "reserved");
        invalid(&[scheme("NL", &[], "")], "1 to 32 levels");
        invalid(&[scheme("NL", &["A", "A"], "")], "listed twice");
        invalid(&[scheme("NL", &["A B"], "")], "level 'A B'");
        invalid(
            &[scheme("NL", &["A"], &TAGS.replace("CMP", "TLP"))],
            "reserved for the TLP",
        );
        invalid(&[scheme("NL", &["A"], TAGS)], "declared twice");
        invalid(
            &[scheme(
                "NL",
                &["A"],
                &TAGS.replace("CMP", "X").replace("\"token\"", "\"colours\""),
            )],
            "unknown value set",
        );
        invalid(
            &[scheme("NL", &["A"], "[equivalence.EU]\nA = \"B\"")],
            "unknown policy EU",
        );
        invalid(
            &[scheme("NL", &["A"], "[equivalence.NL]\nA = \"A\"")],
            "itself",
        );
        invalid(
            &[
                nl(),
                scheme(
                    "EU",
                    &["A", "B"],
                    "[equivalence.NL]\nC = \"ONGERUBRICEERD\"",
                ),
            ],
            "unknown own level C",
        );
        invalid(
            &[
                nl(),
                scheme("EU", &["A", "B"], "[equivalence.NL]\nA = \"GEHEIM\""),
            ],
            "NL has no level GEHEIM",
        );
        invalid(
            &[
                nl(),
                scheme(
                    "EU",
                    &["A", "B"],
                    "[equivalence.NL]\nA = \"STG-GEHEIM\"\nB = \"ONGERUBRICEERD\"",
                ),
            ],
            "does not preserve the order",
        );
        invalid(
            &[
                nl(),
                scheme(
                    "EU",
                    &["A", "B"],
                    "[equivalence.NL]\nA = \"STG-GEHEIM\"\nB = \"STG-GEHEIM\"",
                ),
            ],
            "conflicting equivalences",
        );
        invalid(
            &[
                scheme(
                    "NL",
                    &["ONGERUBRICEERD", "STG-GEHEIM"],
                    "[equivalence.EU]\nONGERUBRICEERD = \"A\"",
                ),
                scheme(
                    "EU",
                    &["A", "B"],
                    "[equivalence.NL]\nB = \"ONGERUBRICEERD\"",
                ),
            ],
            "conflicting equivalences",
        );
        // The TLP shorthand must name a defined policy and level.
        invalid(&[scheme("EU", &["A"], "")], "shorthand NL:ONGERUBRICEERD");
    }

    #[test]
    fn invalid_tlp_and_country_files_are_rejected() {
        let schemes = [nl()];
        let refs: Vec<&str> = schemes.iter().map(String::as_str).collect();
        let tlp_err = |tlp: &str| {
            Registry::from_sources(&refs, tlp, BUILTIN_COUNTRIES)
                .unwrap_err()
                .to_string()
        };
        assert!(
            tlp_err(&BUILTIN_TLP.replace("\"AMBER+STRICT\"", "\"PURPLE\""))
                .contains("colours must be exactly")
        );
        assert!(
            tlp_err(&BUILTIN_TLP.replace("forward = \"nowhere\"", "forward = \"anywhere\""))
                .contains("wider forwarding scope")
        );
        assert!(
            tlp_err(&BUILTIN_TLP.replace("unmarked = \"AMBER\"", "unmarked = \"BLUE\""))
                .contains("unmarked")
        );
        assert!(
            tlp_err(&BUILTIN_TLP.replace("\"NL:ONGERUBRICEERD\"", "\"NL\""))
                .contains("POLICY:LEVEL")
        );
        assert!(
            tlp_err(&BUILTIN_TLP.replace("name = \"TLP\"", "name = \"TLX\""))
                .contains("name must be TLP")
        );
        assert!(tlp_err("").contains("does not parse"));

        let countries_err = |c: &str| {
            Registry::from_sources(&refs, BUILTIN_TLP, c)
                .unwrap_err()
                .to_string()
        };
        assert!(countries_err("# nothing\n").contains("no country codes"));
        assert!(countries_err("NLD\nNLD\n").contains("duplicate code NLD"));
        assert!(countries_err("NL Netherlands\n").contains("three-letter"));
    }
}

//! The hand-written decision table: `decide`, `decide_opt`, `within` and `may_forward`, one row
//! per branch, each with the expected verdict and a substring of the expected reason.

use crate::{Clearance, Decision, ForwardTarget, Label, decide, decide_opt, may_forward, within};

/// What a row checks.
enum Check {
    /// decide(label, clearance)
    Decide(&'static str, &'static str),
    /// decide_opt(label?, clearance?)
    DecideOpt(Option<&'static str>, Option<&'static str>),
    /// within(label, max)
    Within(&'static str, &'static str),
    /// may_forward(label, from_org, community members, declared clients)
    ToCommunity(
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    ),
    /// may_forward(label, from_org, export)
    Export(&'static str, &'static str),
}

use Check::*;

const ALLOW: bool = true;
const DENY: bool = false;

/// (check, expected verdict, expected reason substring)
const CASES: &[(Check, bool, &str)] = &[
    // --- decide: policy and level ---------------------------------------------------------
    (
        Decide("NL:STG-CONFIDENTIEEL", "NL:STG-GEHEIM"),
        ALLOW,
        "level STG-CONFIDENTIEEL is within clearance STG-GEHEIM",
    ),
    (
        Decide("NL:STG-GEHEIM", "NL:STG-GEHEIM"),
        ALLOW,
        "level STG-GEHEIM is within clearance STG-GEHEIM",
    ),
    (
        Decide("NL:ONGERUBRICEERD", "NL:ONGERUBRICEERD"),
        ALLOW,
        "policy NL matches the clearance",
    ),
    (
        Decide("NL:STG-GEHEIM", "NL:STG-CONFIDENTIEEL"),
        DENY,
        "level STG-GEHEIM is above clearance STG-CONFIDENTIEEL",
    ),
    (
        Decide("NL:STG-ZEER-GEHEIM", "NL:ONGERUBRICEERD"),
        DENY,
        "level STG-ZEER-GEHEIM is above clearance ONGERUBRICEERD",
    ),
    (
        Decide("NL:DEP-VERTROUWELIJK", "NL:ONGERUBRICEERD"),
        DENY,
        "is above clearance ONGERUBRICEERD",
    ),
    (
        Decide("NATO:NATO-CONFIDENTIAL", "NL:STG-CONFIDENTIEEL"),
        ALLOW,
        "NATO-CONFIDENTIAL is equivalent to NL STG-CONFIDENTIEEL",
    ),
    (
        Decide("NATO:NATO-SECRET", "NL:STG-CONFIDENTIEEL"),
        DENY,
        "level NATO-SECRET (≈ NL STG-GEHEIM) is above clearance STG-CONFIDENTIEEL",
    ),
    (
        Decide("EU:SECRET-UE", "NATO:NATO-SECRET"),
        ALLOW,
        "SECRET-UE is equivalent to NATO NATO-SECRET",
    ),
    (
        Decide("EU:TRES-SECRET-UE", "NATO:NATO-SECRET"),
        DENY,
        "level TRES-SECRET-UE (≈ NATO COSMIC-TOP-SECRET) is above clearance NATO-SECRET",
    ),
    (
        Decide("NL:DEP-VERTROUWELIJK", "EU:RESTREINT-UE"),
        ALLOW,
        "DEP-VERTROUWELIJK is equivalent to EU RESTREINT-UE",
    ),
    (
        Decide("NATO:COSMIC-TOP-SECRET", "EU:TRES-SECRET-UE"),
        ALLOW,
        "within clearance TRES-SECRET-UE",
    ),
    (
        Decide("EU:EU-UNCLASSIFIED", "NL:ONGERUBRICEERD"),
        ALLOW,
        "EU-UNCLASSIFIED is equivalent to NL ONGERUBRICEERD",
    ),
    // --- decide: restrictive tags ---------------------------------------------------------
    (
        Decide("NL:STG-GEHEIM;CMP=CYBER", "NL:STG-GEHEIM"),
        DENY,
        "compartment CYBER not held",
    ),
    (
        Decide("NL:STG-GEHEIM;CMP=CYBER", "NL:STG-GEHEIM;CMP=CYBER"),
        ALLOW,
        "compartment CYBER held",
    ),
    (
        Decide("NL:STG-GEHEIM;CMP=CYBER,HUMINT", "NL:STG-GEHEIM;CMP=CYBER"),
        DENY,
        "compartment HUMINT not held",
    ),
    (
        Decide(
            "NL:STG-GEHEIM;CMP=CYBER,HUMINT",
            "NL:STG-ZEER-GEHEIM;REL=NLD",
        ),
        DENY,
        "compartments CYBER, HUMINT not held",
    ),
    (
        Decide(
            "NL:STG-GEHEIM;CMP=CYBER,HUMINT",
            "NL:STG-GEHEIM;CMP=CYBER,HUMINT,SIGINT",
        ),
        ALLOW,
        "compartments CYBER, HUMINT held",
    ),
    (
        Decide("NATO:NATO-SECRET;CMP=CYBER", "NL:STG-GEHEIM;CMP=CYBER"),
        ALLOW,
        "compartment CYBER held",
    ),
    // --- decide: permissive tags ----------------------------------------------------------
    (
        Decide("NL:STG-GEHEIM;REL=DEU,FRA", "NL:STG-GEHEIM;REL=NLD"),
        DENY,
        "releasable to DEU, FRA; clearance holds none of them",
    ),
    (
        Decide("NL:STG-GEHEIM;REL=NLD,DEU", "NL:STG-GEHEIM;REL=NLD"),
        ALLOW,
        "releasable to DEU, NLD; clearance holds NLD",
    ),
    (
        Decide("NL:STG-GEHEIM;REL=NLD", "NL:STG-GEHEIM"),
        DENY,
        "releasable to NLD; clearance holds none of them",
    ),
    (
        Decide("NATO:NATO-SECRET;REL=NLD,BEL", "NL:STG-GEHEIM;REL=BEL,NLD"),
        ALLOW,
        "clearance holds BEL, NLD",
    ),
    // --- decide: ignored parts and combinations ------------------------------------------
    (
        Decide("NL:STG-GEHEIM;INFO=EXERCISE", "NL:STG-GEHEIM"),
        ALLOW,
        "INFO=EXERCISE is informative only and does not decide access",
    ),
    (
        Decide("NL:STG-GEHEIM;TLP=RED", "NL:STG-GEHEIM"),
        ALLOW,
        "TLP:RED governs forwarding only and does not decide access",
    ),
    (
        Decide("TLP:GREEN", "NL:ONGERUBRICEERD"),
        ALLOW,
        "level ONGERUBRICEERD is within clearance ONGERUBRICEERD",
    ),
    (
        Decide("TLP:CLEAR", "EU:EU-UNCLASSIFIED"),
        ALLOW,
        "ONGERUBRICEERD is equivalent to EU EU-UNCLASSIFIED",
    ),
    (
        Decide(
            "NL:STG-GEHEIM;CMP=CYBER;REL=DEU",
            "NL:DEP-VERTROUWELIJK;REL=NLD",
        ),
        DENY,
        "level STG-GEHEIM is above clearance DEP-VERTROUWELIJK; compartment CYBER not held; releasable to DEU; clearance holds none of them",
    ),
    (
        Decide(
            "NL:STG-GEHEIM;CMP=CYBER;REL=NLD,DEU;INFO=X;TLP=AMBER",
            "NL:STG-ZEER-GEHEIM;CMP=CYBER;REL=NLD",
        ),
        ALLOW,
        "compartment CYBER held; INFO=X is informative only and does not decide access; releasable to DEU, NLD; clearance holds NLD",
    ),
    // --- decide_opt ------------------------------------------------------------------------
    (
        DecideOpt(None, Some("NL:STG-GEHEIM")),
        DENY,
        "no label: an unlabelled notice is always refused",
    ),
    (
        DecideOpt(Some("NL:ONGERUBRICEERD"), None),
        DENY,
        "no clearance: access without a clearance is always refused",
    ),
    (
        DecideOpt(None, None),
        DENY,
        "no label: an unlabelled notice is always refused; no clearance",
    ),
    (
        DecideOpt(Some("NL:ONGERUBRICEERD"), Some("NL:STG-GEHEIM")),
        ALLOW,
        "is within clearance STG-GEHEIM",
    ),
    (
        DecideOpt(Some("NL:STG-ZEER-GEHEIM"), Some("NL:STG-GEHEIM")),
        DENY,
        "is above clearance STG-GEHEIM",
    ),
    // --- within ----------------------------------------------------------------------------
    (
        Within("NL:STG-CONFIDENTIEEL", "NL:STG-GEHEIM"),
        ALLOW,
        "level STG-CONFIDENTIEEL is within maximum label STG-GEHEIM",
    ),
    (
        Within("NL:STG-GEHEIM", "NL:STG-CONFIDENTIEEL"),
        DENY,
        "level STG-GEHEIM is above maximum label STG-CONFIDENTIEEL",
    ),
    (
        Within("NL:STG-GEHEIM;CMP=CYBER", "NL:STG-GEHEIM"),
        DENY,
        "compartment CYBER not allowed by the maximum label",
    ),
    (
        Within("NL:STG-GEHEIM;CMP=CYBER", "NL:STG-GEHEIM;CMP=CYBER,HUMINT"),
        ALLOW,
        "compartment CYBER allowed by the maximum label",
    ),
    (
        Within("NL:STG-GEHEIM;REL=FRA", "NL:STG-GEHEIM;REL=NLD,DEU"),
        DENY,
        "releasable to FRA; maximum label allows none of them",
    ),
    (
        Within("NL:STG-GEHEIM;REL=FRA,NLD", "NL:STG-GEHEIM;REL=NLD,DEU"),
        ALLOW,
        "maximum label allows NLD",
    ),
    (
        Within("NL:STG-GEHEIM", "NL:STG-GEHEIM;INFO=X;TLP=RED"),
        ALLOW,
        "policy NL matches the maximum label",
    ),
    (
        Within("NATO:NATO-RESTRICTED", "NL:STG-CONFIDENTIEEL"),
        ALLOW,
        "NATO-RESTRICTED is equivalent to NL DEP-VERTROUWELIJK",
    ),
    (
        Within("EU:CONFIDENTIEL-UE;TLP=AMBER", "NL:DEP-VERTROUWELIJK"),
        DENY,
        "level CONFIDENTIEL-UE (≈ NL STG-CONFIDENTIEEL) is above maximum label DEP-VERTROUWELIJK",
    ),
    // --- may_forward -----------------------------------------------------------------------
    (
        ToCommunity("TLP:RED", "bz", &["bz"], &[]),
        DENY,
        "TLP:RED may not be forwarded",
    ),
    (
        Export("NL:STG-GEHEIM;TLP=RED", "bz"),
        DENY,
        "TLP:RED may not be forwarded",
    ),
    (
        ToCommunity("TLP:AMBER+STRICT", "bz", &["bz"], &[]),
        ALLOW,
        "TLP:AMBER+STRICT: every member organisation of community c@bz (bz) is within organisation bz",
    ),
    (
        ToCommunity("TLP:AMBER+STRICT", "bz", &["bz", "nctv"], &[]),
        DENY,
        "TLP:AMBER+STRICT may only be forwarded into communities of organisation bz; community c@bz also has members from nctv",
    ),
    (
        ToCommunity("TLP:AMBER+STRICT", "bz", &["bz", "post-a"], &["post-a"]),
        DENY,
        "also has members from post-a",
    ),
    (
        ToCommunity("TLP:AMBER+STRICT", "bz", &["BZ"], &[]),
        DENY,
        "also has members from BZ",
    ),
    (
        Export("TLP:AMBER+STRICT", "bz"),
        ALLOW,
        "TLP:AMBER+STRICT may be exported to the organisation's own platform, marked TLP:AMBER+STRICT",
    ),
    (
        ToCommunity("TLP:AMBER", "bz", &["bz", "post-a"], &["post-a"]),
        ALLOW,
        "every member organisation of community c@bz (bz, post-a) is within organisation bz and its declared clients (post-a)",
    ),
    (
        ToCommunity("TLP:AMBER", "bz", &["bz"], &[]),
        ALLOW,
        "is within organisation bz and its declared clients (none declared)",
    ),
    (
        ToCommunity("TLP:AMBER", "bz", &["aivd", "bz", "post-a"], &["post-a"]),
        DENY,
        "TLP:AMBER may only be forwarded into communities of organisation bz and its declared clients (post-a); community c@bz also has members from aivd",
    ),
    (
        ToCommunity("TLP:AMBER", "bz", &["post-a"], &["post-a"]),
        ALLOW,
        "(post-a) is within organisation bz",
    ),
    (
        ToCommunity("TLP:AMBER", "bz", &[], &[]),
        DENY,
        "community c@bz lists no member organisations, so the TLP:AMBER sharing scope cannot be checked",
    ),
    (
        ToCommunity("TLP:AMBER+STRICT", "", &["bz"], &[]),
        DENY,
        "the forwarding organisation is unknown",
    ),
    (
        Export("TLP:AMBER", "bz"),
        ALLOW,
        "TLP:AMBER may be exported to the organisation's own platform",
    ),
    (
        ToCommunity("TLP:GREEN", "bz", &["aivd", "nctv"], &[]),
        ALLOW,
        "TLP:GREEN may be forwarded into any community, including c@bz",
    ),
    (
        ToCommunity("TLP:GREEN", "bz", &[], &[]),
        ALLOW,
        "any community",
    ),
    (
        Export("TLP:GREEN", "bz"),
        ALLOW,
        "TLP:GREEN may be exported",
    ),
    (
        Export("TLP:CLEAR", "bz"),
        ALLOW,
        "TLP:CLEAR may be shared anywhere, including exports",
    ),
    (
        ToCommunity("NL:STG-GEHEIM;TLP=CLEAR", "bz", &["nctv"], &[]),
        ALLOW,
        "TLP:CLEAR may be shared anywhere",
    ),
    (
        ToCommunity("NL:STG-GEHEIM", "bz", &["bz"], &[]),
        ALLOW,
        "label carries no TLP marking; treated as TLP:AMBER; TLP:AMBER: every member",
    ),
    (
        ToCommunity("NL:STG-GEHEIM", "bz", &["bz", "nctv"], &[]),
        DENY,
        "label carries no TLP marking; treated as TLP:AMBER; TLP:AMBER may only be forwarded",
    ),
    (
        Export("NL:ONGERUBRICEERD", "bz"),
        ALLOW,
        "treated as TLP:AMBER; TLP:AMBER may be exported to the organisation's own platform",
    ),
];

fn label(s: &str) -> Label {
    s.parse()
        .unwrap_or_else(|e| panic!("bad label {s:?} in table: {e}"))
}

fn clearance(s: &str) -> Clearance {
    s.parse()
        .unwrap_or_else(|e| panic!("bad clearance {s:?} in table: {e}"))
}

fn run(check: &Check) -> Decision {
    match check {
        Decide(l, c) => decide(&label(l), &clearance(c)),
        DecideOpt(l, c) => {
            let l = l.map(label);
            let c = c.map(clearance);
            decide_opt(l.as_ref(), c.as_ref())
        }
        Within(l, max) => within(&label(l), &label(max)),
        ToCommunity(l, org, members, clients) => may_forward(
            &label(l),
            org,
            &ForwardTarget::community("c@bz", members.iter().copied())
                .with_clients(clients.iter().copied()),
        ),
        Export(l, org) => may_forward(&label(l), org, &ForwardTarget::export()),
    }
}

#[test]
fn decision_table() {
    assert!(CASES.len() >= 40);
    let mut failures = Vec::new();
    for (i, (check, allowed, reason)) in CASES.iter().enumerate() {
        let d = run(check);
        let text = d.to_string();
        if d.allowed != *allowed || !text.contains(reason) || d.reasons.is_empty() {
            failures.push(format!(
                "row {i}: expected {allowed} with {reason:?}, got {text:?}"
            ));
        }
        let prefix = if *allowed { "allowed: " } else { "denied: " };
        assert!(text.starts_with(prefix), "row {i}: {text}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_denial_lists_only_failed_checks() {
    let d = decide(
        &label("NL:STG-GEHEIM;CMP=CYBER;REL=NLD;INFO=X;TLP=RED"),
        &clearance("NL:STG-GEHEIM;REL=NLD"),
    );
    assert_eq!(d.reasons, ["compartment CYBER not held"]);
    let d = decide(
        &label("NL:STG-GEHEIM;CMP=CYBER;REL=NLD;INFO=X;TLP=RED"),
        &clearance("NL:STG-GEHEIM;CMP=CYBER;REL=NLD"),
    );
    assert_eq!(
        d.reasons,
        [
            "policy NL matches the clearance",
            "level STG-GEHEIM is within clearance STG-GEHEIM",
            "compartment CYBER held",
            "INFO=X is informative only and does not decide access",
            "releasable to NLD; clearance holds NLD",
            "TLP:RED governs forwarding only and does not decide access",
        ]
    );
    assert_eq!(
        serde_json::to_value(&d).unwrap()["allowed"],
        serde_json::Value::Bool(true)
    );
}

/// The proptest strategies with small value pools must produce both verdicts often, or the
/// monotonicity properties would be vacuous.
#[test]
fn small_pools_produce_both_verdicts() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    use crate::testgen::{self, Pools};

    let mut runner = TestRunner::deterministic();
    let pools = Pools { wide: false };
    let (mut allowed, mut denied) = (0, 0);
    for _ in 0..1000 {
        let l = testgen::label(pools)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let c = testgen::clearance(pools)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        if decide(&l, &c).allowed {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    assert!(
        allowed >= 50 && denied >= 50,
        "allowed {allowed}, denied {denied}"
    );
}

//! Proptest strategies shared by the tests: labels and clearances built structurally from the
//! built-in registry.

use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;

use crate::scheme::ValueSet;
use crate::{Clearance, Label, Registry, Tlp};

/// All country codes of the built-in REL tag.
pub fn countries() -> Vec<String> {
    let reg = Registry::builtin();
    let nl = reg.scheme("NL").unwrap();
    match &nl.tag("REL").unwrap().values {
        ValueSet::Listed { values, .. } => values.iter().cloned().collect(),
        ValueSet::Token => unreachable!("REL is a listed value set"),
    }
}

/// Value pools: `wide` draws from all countries and arbitrary tokens, otherwise small pools so
/// that labels and clearances overlap often.
#[derive(Clone, Copy, Debug)]
pub struct Pools {
    pub wide: bool,
}

fn country(p: Pools) -> BoxedStrategy<String> {
    if p.wide {
        let all = countries();
        (0..all.len()).prop_map(move |i| all[i].clone()).boxed()
    } else {
        prop::sample::select(vec!["NLD", "DEU", "BEL", "FRA", "USA"])
            .prop_map(str::to_owned)
            .boxed()
    }
}

fn token(p: Pools) -> BoxedStrategy<String> {
    if p.wide {
        "[A-Z0-9+_-]{1,12}".boxed()
    } else {
        prop::sample::select(vec!["CYBER", "HUMINT", "SIGINT"])
            .prop_map(str::to_owned)
            .boxed()
    }
}

/// Policy index (0..3) and rank (0..5).
pub fn policy_rank() -> impl Strategy<Value = (usize, u8)> {
    (0..3usize, 0..5u8)
}

pub fn policy_name(i: usize) -> &'static str {
    crate::policies().nth(i).unwrap()
}

pub fn level(i: usize, rank: u8) -> &'static str {
    crate::level_name(policy_name(i), rank).unwrap()
}

/// Tags: optional REL, CMP and (for labels) INFO.
pub fn tags(p: Pools, info: bool) -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    let max_info = if info { 4 } else { 2 };
    (
        option::of(btree_set(country(p), 1..6)),
        option::of(btree_set(token(p), 1..6)),
        option::of(btree_set(token(p), 1..max_info)),
    )
        .prop_map(move |(rel, cmp, inf)| {
            let mut out = Vec::new();
            if let Some(v) = rel {
                out.push(("REL".to_owned(), v.into_iter().collect()));
            }
            if let Some(v) = cmp {
                out.push(("CMP".to_owned(), v.into_iter().collect()));
            }
            if let (true, Some(v)) = (info, inf) {
                out.push(("INFO".to_owned(), v.into_iter().collect()));
            }
            out
        })
}

pub fn label(p: Pools) -> impl Strategy<Value = Label> {
    (policy_rank(), tags(p, true), option::of(0..5usize)).prop_map(|((pi, r), tags, tlp)| {
        Label::from_parts(
            policy_name(pi),
            level(pi, r),
            tags,
            tlp.map(|i| Tlp::ALL[i]),
        )
        .unwrap()
    })
}

pub fn clearance(p: Pools) -> impl Strategy<Value = Clearance> {
    (policy_rank(), tags(p, false)).prop_map(|((pi, r), tags)| {
        Clearance::from_parts(policy_name(pi), level(pi, r), tags).unwrap()
    })
}

/// Re-writes a canonical text with random case and spaces around separators.
pub fn scramble(text: &str, noise: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let n = noise.get(i % noise.len().max(1)).copied().unwrap_or(0);
        if matches!(c, ':' | ';' | '=' | ',') {
            if n & 1 == 1 {
                out.push(' ');
            }
            out.push(c);
            if n & 2 == 2 {
                out.push_str(" \t");
            }
        } else if n & 4 == 4 {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    if noise.first().is_some_and(|n| n & 8 == 8) {
        out = format!("  {out} ");
    }
    out
}

pub fn any_noise() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..64)
}

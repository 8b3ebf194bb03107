//! Labels as the pages offer and mark them: the choices a user has in a community
//! (clearance ∩ the community's maximum), a refusal in words before anything is
//! sent, and the colour of a classification banner.

use kring_policy::{Clearance, Label, Registry, decide, within};

/// The labels `clearance` may file in a community whose maximum is `max`, lowest
/// first: each level of the maximum's policy up to it, and the maximum itself.
pub fn choices(max: &str, clearance: Option<&str>) -> Vec<String> {
    let Ok(max_label) = max.parse::<Label>() else {
        return Vec::new();
    };
    let clearance = clearance.and_then(|c| c.parse::<Clearance>().ok());
    let mut out: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Registry::builtin()
        .scheme(max_label.policy())
        .map(|s| {
            s.levels
                .iter()
                .map(|level| format!("{}:{level}", s.name))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(max.to_string());
    for text in candidates {
        if out.contains(&text) {
            continue;
        }
        if check(&text, max, clearance.as_ref()).is_ok() {
            out.push(text);
        }
    }
    out
}

/// Whether `label` may be filed by `clearance` in a community whose maximum is
/// `max`: the label's canonical text, or every reason it may not, in words.
pub fn check(label: &str, max: &str, clearance: Option<&Clearance>) -> Result<String, Vec<String>> {
    let label: Label = label
        .trim()
        .parse()
        .map_err(|e| vec![format!("{:?} is not a label: {e}", label.trim())])?;
    let Ok(max_label) = max.parse::<Label>() else {
        return Err(vec![format!(
            "the community's maximum label {max:?} is not understood by this device"
        )]);
    };
    let Some(clearance) = clearance else {
        return Err(vec![
            "your certificate carries no clearance, so you may not file labelled notices".into(),
        ]);
    };
    let mut reasons = Vec::new();
    let mine = decide(&label, clearance);
    if !mine.allowed {
        reasons.extend(
            mine.reasons
                .into_iter()
                .map(|r| format!("your clearance: {r}")),
        );
    }
    let community = within(&label, &max_label);
    if !community.allowed {
        reasons.extend(
            community
                .reasons
                .into_iter()
                .map(|r| format!("the community's maximum label {max}: {r}")),
        );
    }
    if reasons.is_empty() {
        Ok(label.to_string())
    } else {
        Err(reasons)
    }
}

/// The highest of `labels` by level (the first of equals); `None` if none parses.
pub fn highest<'a>(labels: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<Label> = None;
    for text in labels {
        if let Ok(label) = text.parse::<Label>()
            && best
                .as_ref()
                .is_none_or(|b| label.level_rank() > b.level_rank())
        {
            best = Some(label);
        }
    }
    best.map(|l| l.to_string())
}

/// The banner's colour class for a label's level: `lvl-0` (lowest) to `lvl-4`.
pub fn level_class(label: &str) -> &'static str {
    match label.parse::<Label>().map(|l| l.level_rank()) {
        Ok(0) => "lvl-0",
        Ok(1) => "lvl-1",
        Ok(2) => "lvl-2",
        Ok(3) => "lvl-3",
        Ok(_) => "lvl-4",
        Err(_) => "lvl-none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_clearance_meet_maximum() {
        let c = choices("NL:DEP-VERTROUWELIJK", Some("NL:STG-GEHEIM"));
        assert!(c.contains(&"NL:DEP-VERTROUWELIJK".to_string()), "{c:?}");
        assert!(!c.iter().any(|l| l.contains("GEHEIM")), "{c:?}");
        let low = choices("NL:STG-GEHEIM", Some("NL:DEP-VERTROUWELIJK"));
        assert!(!low.iter().any(|l| l.contains("GEHEIM")), "{low:?}");
        assert!(choices("NL:DEP-VERTROUWELIJK", None).is_empty());
    }

    #[test]
    fn a_refusal_says_why() {
        let clearance: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let reasons = check("NL:STG-GEHEIM", "NL:DEP-VERTROUWELIJK", Some(&clearance)).unwrap_err();
        assert!(
            reasons.iter().any(|r| r.contains("maximum label")),
            "{reasons:?}"
        );
        assert_eq!(
            check(
                "NL:DEP-VERTROUWELIJK",
                "NL:DEP-VERTROUWELIJK",
                Some(&clearance)
            )
            .unwrap(),
            "NL:DEP-VERTROUWELIJK"
        );
        assert!(check("nonsense", "NL:DEP-VERTROUWELIJK", Some(&clearance)).is_err());
    }

    #[test]
    fn highest_and_colours() {
        assert_eq!(
            highest(["NL:DEP-VERTROUWELIJK", "NL:STG-GEHEIM", "x"]).as_deref(),
            Some("NL:STG-GEHEIM")
        );
        assert_eq!(highest(["x"]), None);
        assert_ne!(
            level_class("NL:DEP-VERTROUWELIJK"),
            level_class("NL:STG-GEHEIM")
        );
    }
}

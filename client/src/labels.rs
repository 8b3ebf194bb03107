//! Label and clearance parsing for the client, and the explanation `kring label check`
//! prints.

use kring_policy::{Clearance, Decision, Label, Registry, TagKind, Tlp, decide};

use crate::error::{ClientError, Result};

/// Parses a label typed by the user (case-insensitive); a usage error says why not.
pub fn parse_label(text: &str) -> Result<Label> {
    text.parse::<Label>()
        .map_err(|e| ClientError::InvalidLabel {
            what: "label",
            reason: e.to_string(),
        })
}

/// Parses a clearance typed by the user.
pub fn parse_clearance(text: &str) -> Result<Clearance> {
    text.parse::<Clearance>()
        .map_err(|e| ClientError::InvalidLabel {
            what: "clearance",
            reason: e.to_string(),
        })
}

/// What `kring label check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCheck {
    /// The label's canonical text.
    pub canonical: String,
    /// A person-readable explanation, one line per part of the label.
    pub meaning: Vec<String>,
    /// The clearance's canonical text and the decision, when a clearance was given.
    pub decision: Option<(String, Decision)>,
}

impl LabelCheck {
    /// Parses `label` (and `clearance`, if given) and decides.
    pub fn run(label: &str, clearance: Option<&str>) -> Result<LabelCheck> {
        let parsed = parse_label(label)?;
        let decision = clearance
            .map(|c| {
                let c = parse_clearance(c)?;
                Ok::<_, ClientError>((c.to_string(), decide(&parsed, &c)))
            })
            .transpose()?;
        Ok(LabelCheck {
            canonical: parsed.to_string(),
            meaning: explain(&parsed),
            decision,
        })
    }

    /// The exit code of the check: 0 valid/allowed, 3 denied.
    pub fn exit_code(&self) -> i32 {
        match &self.decision {
            Some((_, d)) if !d.allowed => crate::error::EXIT_POLICY,
            _ => crate::error::EXIT_OK,
        }
    }

    /// The text printed by `kring label check`.
    pub fn render(&self) -> String {
        let mut out = format!("label      {}\n", self.canonical);
        for line in &self.meaning {
            out.push_str("           ");
            out.push_str(line);
            out.push('\n');
        }
        if let Some((clearance, decision)) = &self.decision {
            out.push_str(&format!("clearance  {clearance}\n"));
            out.push_str(&format!(
                "decision   {}\n",
                if decision.allowed {
                    "ALLOWED"
                } else {
                    "DENIED"
                }
            ));
            for reason in &decision.reasons {
                out.push_str(&format!("           - {reason}\n"));
            }
        }
        out
    }
}

/// Explains a label: its policy and level, each tag's role in decisions, and TLP.
pub fn explain(label: &Label) -> Vec<String> {
    let registry = Registry::builtin();
    let mut lines = Vec::new();
    match registry.scheme(label.policy()) {
        Some(scheme) => {
            let rank = usize::from(label.level_rank());
            lines.push(format!(
                "policy {} ({}), level {} — {} of {}, lowest {}, highest {}",
                scheme.name,
                scheme.title,
                label.level(),
                rank + 1,
                scheme.levels.len(),
                scheme.levels.first().map_or("?", String::as_str),
                scheme.levels.last().map_or("?", String::as_str),
            ));
            for (name, values) in label.tags() {
                let values = values.iter().cloned().collect::<Vec<_>>().join(", ");
                let line = match scheme.tag(name) {
                    Some(def) => {
                        let rule = match def.kind {
                            TagKind::Permissive => "a reader must hold at least one",
                            TagKind::Restrictive => "a reader must hold every one",
                            TagKind::Informative => "informative only, never decides access",
                        };
                        format!(
                            "{name}: {} {values} ({}: {rule})",
                            def.phrase,
                            def.kind.as_str()
                        )
                    }
                    None => format!("{name}: {values}"),
                };
                lines.push(line);
            }
        }
        None => lines.push(format!(
            "policy {}, level {}",
            label.policy(),
            label.level()
        )),
    }
    match label.tlp() {
        Some(tlp) => lines.push(format!("TLP:{} — {}", tlp.as_str(), tlp_meaning(tlp))),
        None => lines.push("no TLP marking".to_string()),
    }
    lines
}

/// What a TLP 2.0 colour means for sharing, and how `kring notice forward` treats it.
pub fn tlp_meaning(tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Clear => "disclosure is not limited; may be forwarded anywhere, including exports",
        Tlp::Green => {
            "limited to the community; may be forwarded into any community and exported to \
             your organisation's platform"
        }
        Tlp::Amber => {
            "limited to participants' organisations and their clients; forwarded only into \
             communities of the forwarder's organisation and its declared clients; exported \
             to your organisation's platform marked AMBER"
        }
        Tlp::AmberStrict => {
            "limited to participants' organisation only; forwarded only into communities \
             whose members are all of the forwarder's organisation; exported to your \
             organisation's platform marked AMBER+STRICT"
        }
        Tlp::Red => "for the named recipients only; never forwarded or exported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_label_is_canonicalised_and_explained() {
        let check = LabelCheck::run("nl:stg-geheim;rel=nld,deu;cmp=cyber;tlp=amber", None).unwrap();
        assert_eq!(
            check.canonical,
            "NL:STG-GEHEIM;CMP=CYBER;REL=DEU,NLD;TLP=AMBER"
        );
        assert_eq!(check.exit_code(), 0);
        let text = check.render();
        assert!(text.starts_with("label      NL:STG-GEHEIM;CMP=CYBER;REL=DEU,NLD;TLP=AMBER\n"));
        assert!(text.contains("level STG-GEHEIM — 4 of 5"), "{text}");
        assert!(text.contains("REL: releasable to DEU, NLD"), "{text}");
        assert!(text.contains("restrictive"), "{text}");
        assert!(text.contains("TLP:AMBER"), "{text}");
        assert!(!text.contains("decision"), "{text}");
    }

    #[test]
    fn a_clearance_yields_a_decision_with_reasons_and_exit_code() {
        let denied = LabelCheck::run("NL:STG-GEHEIM", Some("NL:STG-CONFIDENTIEEL")).unwrap();
        assert_eq!(denied.exit_code(), 3);
        let text = denied.render();
        assert!(text.contains("decision   DENIED"), "{text}");
        assert!(text.contains("clearance  NL:STG-CONFIDENTIEEL"), "{text}");
        assert!(text.contains("STG-CONFIDENTIEEL"), "{text}");

        let allowed = LabelCheck::run("TLP:GREEN", Some("NL:STG-GEHEIM")).unwrap();
        assert_eq!(allowed.exit_code(), 0);
        assert!(allowed.render().contains("decision   ALLOWED"));
        assert_eq!(allowed.canonical, "NL:ONGERUBRICEERD;TLP=GREEN");
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let err = LabelCheck::run("NL:TOPGEHEIM", None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("invalid label"), "{err}");
        let err = LabelCheck::run("NL:STG-GEHEIM", Some("XX:Y")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("invalid clearance"), "{err}");
    }
}

//! Notices as a MISP feed (pure: the files are returned, the caller writes them).
//!
//! A MISP feed directory holds `manifest.json` (every event's summary by UUID),
//! `hashes.csv` (the MD5 of every attribute value with its event's UUID) and one
//! `UUID.json` per event. Each notice is an event: its UUID the notice id, `info`
//! the title, the body and the label as text attributes, the indicators of its
//! STIX objects as attributes of their MISP types (a pattern Kring does not map
//! becomes a `stix2-pattern` attribute). Tags come from MISP taxonomies: `tlp`
//! always, `nato` and `euci` for labels of those policies, and the Kring taxonomy
//! (`docs/misp/kring-taxonomy/machinetag.json`) for the NL levels.

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use kring_policy::{Label, Tlp};

use super::ids::derived;
use super::stix::Exported;

/// The namespace of the Kring MISP taxonomy.
pub const KRING_NAMESPACE: &str = "kring";

/// One file of a feed: its name in the feed directory and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedFile {
    /// File name (no directories).
    pub name: String,
    /// Content.
    pub content: Vec<u8>,
}

/// The MISP tag of a TLP colour (taxonomy `tlp`).
pub fn tlp_tag(colour: Tlp) -> String {
    format!("tlp:{}", colour.as_str().to_ascii_lowercase())
}

fn tlp_colour(colour: Tlp) -> &'static str {
    match colour {
        Tlp::Clear => "#ffffff",
        Tlp::Green => "#33ff00",
        Tlp::Amber | Tlp::AmberStrict => "#ffc000",
        Tlp::Red => "#ff2b2b",
    }
}

/// The classification tag of `label` from the MISP taxonomies: `nato` for NATO
/// labels, `euci` for EU labels, the Kring taxonomy for NL labels. `None` where
/// the taxonomy has no value for the level (EU-UNCLASSIFIED).
pub fn classification_tag(label: &Label) -> Option<String> {
    let level = label.level();
    match label.policy() {
        "NATO" => {
            let v = match level {
                "NATO-UNCLASSIFIED" => "NU",
                "NATO-RESTRICTED" => "NR",
                "NATO-CONFIDENTIAL" => "NC",
                "NATO-SECRET" => "NS",
                "COSMIC-TOP-SECRET" => "CTS",
                _ => return None,
            };
            Some(format!("nato:classification=\"{v}\""))
        }
        "EU" => {
            let v = match level {
                "RESTREINT-UE" => "EU-RESTRICTED",
                "CONFIDENTIEL-UE" => "EU-CONFIDENTIAL",
                "SECRET-UE" => "EU-SECRET",
                "TRES-SECRET-UE" => "EU-TOP-SECRET",
                _ => return None,
            };
            Some(format!("euci:{v}"))
        }
        "NL" => Some(format!("{KRING_NAMESPACE}:classification=\"{level}\"")),
        _ => None,
    }
}

fn tag(name: String, colour: &str) -> Value {
    json!({"name": name, "colour": colour, "exportable": true})
}

fn tags(item: &Exported<'_>) -> Vec<Value> {
    let mut out = vec![tag(tlp_tag(item.tlp()), tlp_colour(item.tlp()))];
    if let Some(t) = item
        .notice
        .label
        .parse::<Label>()
        .ok()
        .as_ref()
        .and_then(classification_tag)
    {
        out.push(tag(t, "#0b3d91"));
    }
    out
}

/// The MISP type and category of a simple STIX pattern `[OBJECT:PATH = 'VALUE']`.
fn indicator_attribute(pattern: &str) -> Option<(&'static str, &'static str, String)> {
    let inner = pattern.trim().strip_prefix('[')?.strip_suffix(']')?;
    let (path, value) = inner.split_once(" = ")?;
    let value = value.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    if value.contains('\'') || value.is_empty() {
        return None;
    }
    let (ty, category) = match path.trim() {
        "ipv4-addr:value" | "ipv6-addr:value" => ("ip-dst", "Network activity"),
        "domain-name:value" => ("domain", "Network activity"),
        "url:value" => ("url", "Network activity"),
        "email-addr:value" => ("email-src", "Payload delivery"),
        "file:name" => ("filename", "Payload delivery"),
        "file:hashes.'SHA-256'" | "file:hashes.SHA256" => ("sha256", "Payload delivery"),
        "file:hashes.'SHA-1'" | "file:hashes.SHA1" => ("sha1", "Payload delivery"),
        "file:hashes.MD5" | "file:hashes.'MD5'" => ("md5", "Payload delivery"),
        _ => return None,
    };
    Some((ty, category, value.to_owned()))
}

/// The attributes of one notice.
fn attributes(item: &Exported<'_>, timestamp: &str) -> Vec<Value> {
    let n = item.notice;
    let mut out = Vec::new();
    let mut push = |ty: &str, category: &str, value: String, to_ids: bool, comment: String| {
        let uuid = derived("misp-attribute", &format!("{}:{}", n.id, out.len()));
        out.push(json!({
            "uuid": uuid,
            "type": ty,
            "category": category,
            "value": value,
            "to_ids": to_ids,
            "timestamp": timestamp,
            "comment": comment,
            "disable_correlation": false,
        }));
    };
    if !n.body.is_empty() {
        push(
            "text",
            "Other",
            n.body.clone(),
            false,
            "Kring notice body".into(),
        );
    }
    push(
        "text",
        "Other",
        n.label.clone(),
        false,
        "Kring classification label".into(),
    );
    for obj in n.stix.iter().flatten() {
        if obj.get("type").and_then(Value::as_str) != Some("indicator") {
            continue;
        }
        let Some(pattern) = obj.get("pattern").and_then(Value::as_str) else {
            continue;
        };
        let id = obj.get("id").and_then(Value::as_str).unwrap_or_default();
        let comment = match obj.get("name").and_then(Value::as_str) {
            Some(name) => format!("{name} ({id})"),
            None => id.to_owned(),
        };
        match indicator_attribute(pattern) {
            Some((ty, category, value)) => push(ty, category, value, true, comment),
            None => push(
                "stix2-pattern",
                "Payload installation",
                pattern.to_owned(),
                true,
                comment,
            ),
        }
    }
    out
}

fn organisation(org: &str) -> Value {
    json!({"name": org, "uuid": derived("misp-organisation", org)})
}

/// The event of one notice (`{"Event": {...}}`).
pub fn event(item: &Exported<'_>) -> Value {
    let n = item.notice;
    let ts = n.filed_at.unix_timestamp().to_string();
    let date = format!(
        "{:04}-{:02}-{:02}",
        n.filed_at.year(),
        u8::from(n.filed_at.month()),
        n.filed_at.day()
    );
    json!({
        "Event": {
            "uuid": n.id,
            "info": n.title,
            "date": date,
            "timestamp": ts,
            "publish_timestamp": ts,
            "published": true,
            "analysis": "2",
            "threat_level_id": "4",
            "Orgc": organisation(item.organisation),
            "Tag": tags(item),
            "Attribute": attributes(item, &ts),
            "Object": [],
        }
    })
}

/// The feed of `items`: `manifest.json`, `hashes.csv`, then one `UUID.json` per
/// notice. The same notices give the same bytes.
pub fn feed(items: &[Exported<'_>]) -> Vec<FeedFile> {
    let mut manifest = Map::new();
    let mut hashes = String::new();
    let mut events = Vec::new();
    for item in items {
        let ev = event(item);
        let e = &ev["Event"];
        let uuid = item.notice.id.to_string();
        let mut summary = Map::new();
        for key in [
            "info",
            "date",
            "timestamp",
            "publish_timestamp",
            "analysis",
            "threat_level_id",
            "Orgc",
            "Tag",
        ] {
            summary.insert(key.into(), e[key].clone());
        }
        manifest.insert(uuid.clone(), Value::Object(summary));
        for attr in e["Attribute"].as_array().into_iter().flatten() {
            let value = attr["value"].as_str().unwrap_or_default();
            let digest = Md5::digest(value.as_bytes());
            hashes.push_str(&format!("{},{uuid}\n", hex::encode(digest)));
        }
        events.push(FeedFile {
            name: format!("{uuid}.json"),
            content: pretty(&ev),
        });
    }
    let mut out = vec![
        FeedFile {
            name: "manifest.json".into(),
            content: pretty(&Value::Object(manifest)),
        },
        FeedFile {
            name: "hashes.csv".into(),
            content: hashes.into_bytes(),
        },
    ];
    out.extend(events);
    out
}

fn pretty(v: &Value) -> Vec<u8> {
    // Serialising a Value with string keys cannot fail.
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::stix::tests::{indicator, notice};

    fn label(s: &str) -> Label {
        s.parse().unwrap()
    }

    #[test]
    fn classification_tags_follow_the_misp_taxonomies() {
        assert_eq!(
            classification_tag(&label("NATO:NATO-SECRET")).as_deref(),
            Some("nato:classification=\"NS\"")
        );
        assert_eq!(
            classification_tag(&label("EU:RESTREINT-UE")).as_deref(),
            Some("euci:EU-RESTRICTED")
        );
        assert_eq!(classification_tag(&label("EU:EU-UNCLASSIFIED")), None);
        assert_eq!(
            classification_tag(&label("NL:STG-GEHEIM;REL=NLD")).as_deref(),
            Some("kring:classification=\"STG-GEHEIM\"")
        );
        assert_eq!(tlp_tag(Tlp::AmberStrict), "tlp:amber+strict");
    }

    /// The Kring taxonomy shipped for MISP lists exactly the NL levels of the policy.
    #[test]
    fn the_shipped_taxonomy_lists_the_nl_levels() {
        let text = include_str!("../../../docs/misp/kring-taxonomy/machinetag.json");
        let t: Value = serde_json::from_str(text).unwrap();
        assert_eq!(t["namespace"], KRING_NAMESPACE);
        let values: Vec<&str> = t["values"][0]["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_str().unwrap())
            .collect();
        let levels: Vec<&str> = (0..)
            .map_while(|i| kring_policy::level_name("NL", i))
            .collect();
        assert_eq!(values, levels);
        assert_eq!(t["values"][0]["predicate"], "classification");
    }

    #[test]
    fn a_notice_becomes_an_event_with_tags_and_attributes() {
        let n = notice(1, "NATO:NATO-CONFIDENTIAL;TLP=CLEAR", Some(indicator()));
        let item = Exported {
            notice: &n,
            organisation: "nctv",
        };
        let ev = event(&item);
        let e = &ev["Event"];
        assert_eq!(e["info"], n.title);
        assert_eq!(e["uuid"], n.id.to_string());
        let tags: Vec<&str> = e["Tag"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(tags, ["tlp:clear", "nato:classification=\"NC\""]);
        let domain = e["Attribute"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "domain")
            .unwrap();
        assert_eq!(domain["value"], "evil.example");
        assert_eq!(domain["to_ids"], true);
    }

    #[test]
    fn the_feed_has_a_manifest_hashes_and_one_event_per_notice() {
        let a = notice(1, "TLP:CLEAR", Some(indicator()));
        let b = notice(2, "NL:STG-GEHEIM;TLP=CLEAR", None);
        let items = [
            Exported {
                notice: &a,
                organisation: "nctv",
            },
            Exported {
                notice: &b,
                organisation: "bz",
            },
        ];
        let files = feed(&items);
        assert_eq!(files, feed(&items), "deterministic");
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names[..2], ["manifest.json", "hashes.csv"]);
        assert!(names.contains(&format!("{}.json", a.id).as_str()));
        let manifest: Value = serde_json::from_slice(&files[0].content).unwrap();
        assert_eq!(manifest[a.id.to_string()]["info"], a.title);
        let hashes = String::from_utf8(files[1].content.clone()).unwrap();
        let md5_domain = hex::encode(Md5::digest(b"evil.example"));
        assert!(
            hashes.contains(&format!("{md5_domain},{}", a.id)),
            "{hashes}"
        );
    }

    #[test]
    fn unmapped_patterns_stay_stix_patterns() {
        assert_eq!(
            indicator_attribute("[ipv4-addr:value = '192.0.2.1']"),
            Some(("ip-dst", "Network activity", "192.0.2.1".into()))
        );
        assert_eq!(
            indicator_attribute("[file:hashes.'SHA-256' = 'ab']").map(|a| a.0),
            Some("sha256")
        );
        assert_eq!(indicator_attribute("[x:y = 'a'] AND [x:z = 'b']"), None);
    }
}

//! Notices as a STIX 2.1 bundle (pure: no I/O, no clock).
//!
//! Each notice becomes a `report` (id `report--NOTICE_ID`; `name` the title,
//! `description` the body, `published` the filing time) referring to the notice's
//! own STIX objects and to an `identity` for its sender and one for the sender's
//! organisation. Markings:
//! * TLP: the OASIS TLP 2.0 marking definitions, with their fixed ids;
//! * the classification label: a marking definition of its own, defined through
//!   the Kring classification extension ([`CLASSIFICATION_EXTENSION`]), whose
//!   properties are the label's canonical text, policy, level and tags.
//!
//! Both markings go on the report and on every object the notice carried. The
//! notice's Kring fields (community, kind, category, label, sender, and the
//! provenance fields a notice may carry) travel in the report's Kring notice
//! extension ([`NOTICE_EXTENSION`]). Every id is derived from what it names
//! ([`super::ids`]), so the same notices always give the same bundle.

use std::collections::BTreeSet;

use kring_policy::{Label, Registry, Tlp};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::ids::stix_id;
use crate::notice::Notice;

/// The OASIS TLP 2.0 extension definition the TLP marking definitions use.
pub const TLP_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";
/// The Kring classification extension: a marking definition carrying a label.
pub const CLASSIFICATION_EXTENSION: &str =
    "extension-definition--818c3a17-78f9-4429-967c-79384e68c335";
/// The Kring notice extension: a report's Kring fields.
pub const NOTICE_EXTENSION: &str = "extension-definition--3538577a-529c-4e93-a619-9320b01b6038";
/// The identity that defines both Kring extensions and the classification markings.
pub const KRING_IDENTITY: &str = "identity--6d74a693-3caa-4022-aee2-ad866e6e6a48";
/// `created`/`modified` of the fixed objects Kring defines.
const DEFINED_AT: &str = "2025-01-01T00:00:00.000Z";
/// `created` of the OASIS TLP 2.0 marking definitions.
const TLP_DEFINED_AT: &str = "2022-10-01T00:00:00.000Z";

/// The OASIS id of the TLP 2.0 marking definition of `colour`.
pub fn tlp_marking_id(colour: Tlp) -> &'static str {
    match colour {
        Tlp::Clear => "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        Tlp::Green => "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        Tlp::Amber => "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        Tlp::AmberStrict => "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        Tlp::Red => "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    }
}

/// The colour whose OASIS TLP 2.0 marking definition has `id`.
pub fn tlp_of_marking_id(id: &str) -> Option<Tlp> {
    Tlp::ALL.into_iter().find(|c| tlp_marking_id(*c) == id)
}

/// The OASIS TLP 2.0 marking definition of `colour`, exactly as published.
pub fn tlp_marking(colour: Tlp) -> Value {
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": tlp_marking_id(colour),
        "created": TLP_DEFINED_AT,
        "name": format!("TLP:{colour}"),
        "extensions": {
            TLP_EXTENSION: {
                "extension_type": "property-extension",
                "tlp_2_0": colour.as_str().to_ascii_lowercase(),
            }
        }
    })
}

/// The identity that defines the Kring extensions.
pub fn kring_identity() -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": KRING_IDENTITY,
        "created": DEFINED_AT,
        "modified": DEFINED_AT,
        "name": "Kring",
        "description": "Kring secure information sharing for trusted communities",
        "identity_class": "system",
    })
}

/// The Kring classification extension definition.
pub fn classification_extension() -> Value {
    json!({
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": CLASSIFICATION_EXTENSION,
        "created_by_ref": KRING_IDENTITY,
        "created": DEFINED_AT,
        "modified": DEFINED_AT,
        "name": "Kring classification label",
        "description": "A marking definition carrying a Kring classification label (NL, EU or NATO \
                        policy, level, tags).",
        "schema": "Properties: label (the canonical label text, e.g. NL:STG-GEHEIM;REL=NLD;TLP=CLEAR), \
                   policy (NL, EU or NATO), level (the policy's level name), tags (a list of \
                   {name, values}). An object carrying this marking may be seen only by those the \
                   label admits.",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    })
}

/// The Kring notice extension definition.
pub fn notice_extension() -> Value {
    json!({
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": NOTICE_EXTENSION,
        "created_by_ref": KRING_IDENTITY,
        "created": DEFINED_AT,
        "modified": DEFINED_AT,
        "name": "Kring notice",
        "description": "The Kring fields of a report exported from a Kring notice.",
        "schema": "Properties: community (NAME@HUB), kind (signal, notice, reply), category, label \
                   (canonical label text), sender (NAME@RELAY), in_reply_to (the report id of the \
                   notice answered, if any), forwarded_from and attachments as the notice carries \
                   them.",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    })
}

/// The id of the classification marking definition of the label with canonical text `label`.
pub fn classification_marking_id(label: &str) -> String {
    stix_id("marking-definition", &format!("label:{label}"))
}

/// The classification marking definition of `label`.
pub fn classification_marking(label: &Label) -> Value {
    let text = label.to_string();
    let tags: Vec<Value> = label
        .tags()
        .map(|(name, values)| json!({"name": name, "values": values}))
        .collect();
    let mut props = Map::new();
    props.insert("extension_type".into(), "property-extension".into());
    props.insert("label".into(), text.clone().into());
    props.insert("policy".into(), label.policy().into());
    props.insert("level".into(), label.level().into());
    if !tags.is_empty() {
        props.insert("tags".into(), tags.into());
    }
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": classification_marking_id(&text),
        "created_by_ref": KRING_IDENTITY,
        "created": DEFINED_AT,
        "name": text,
        "extensions": { CLASSIFICATION_EXTENSION: props },
    })
}

/// The label text a classification marking definition carries, if `obj` is one.
pub fn label_of_marking(obj: &Value) -> Option<&str> {
    if obj.get("type").and_then(Value::as_str) != Some("marking-definition") {
        return None;
    }
    obj.get("extensions")?
        .get(CLASSIFICATION_EXTENSION)?
        .get("label")?
        .as_str()
}

/// The id of the identity of organisation `org`.
pub fn organisation_id(org: &str) -> String {
    stix_id("identity", &format!("org:{org}"))
}

/// The id of the identity of user `sender` (`NAME@RELAY`).
pub fn sender_id(sender: &str) -> String {
    stix_id("identity", &format!("user:{sender}"))
}

fn organisation_identity(org: &str) -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": organisation_id(org),
        "created": DEFINED_AT,
        "modified": DEFINED_AT,
        "name": org,
        "identity_class": "organization",
    })
}

fn sender_identity(sender: &str, org: &str) -> Value {
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": sender_id(sender),
        "created": DEFINED_AT,
        "modified": DEFINED_AT,
        "name": sender,
        "description": format!("Kring user {sender} of organisation {org}"),
        "identity_class": "individual",
    })
}

/// A STIX timestamp with millisecond precision, e.g. `2025-03-01T12:30:00.000Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// One notice to export, with the organisation of its sender.
#[derive(Debug, Clone, Copy)]
pub struct Exported<'a> {
    /// The notice.
    pub notice: &'a Notice,
    /// The sender's organisation (as the federation's trust map names it).
    pub organisation: &'a str,
}

impl Exported<'_> {
    /// The notice's label, parsed.
    fn label(&self) -> Option<Label> {
        self.notice.label.parse().ok()
    }

    /// The notice's TLP colour: its label's, or the colour assumed for unmarked labels.
    pub fn tlp(&self) -> Tlp {
        self.label()
            .and_then(|l| l.tlp())
            .unwrap_or_else(|| Registry::builtin().tlp_rules().unmarked)
    }
}

/// Properties of a notice that travel in the notice extension when set.
const PROVENANCE_FIELDS: [&str; 2] = ["forwarded_from", "attachments"];

/// Every STIX object of one notice, the shared definitions first and the report
/// last: what a bundle or a TAXII collection holds for it.
pub fn objects_for(item: &Exported<'_>) -> Vec<Value> {
    let n = item.notice;
    let label = item.label();
    let colour = item.tlp();
    let label_text = label
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| n.label.clone());
    let mut markings = vec![Value::from(tlp_marking_id(colour))];
    let mut out = vec![
        kring_identity(),
        classification_extension(),
        notice_extension(),
        tlp_marking(colour),
    ];
    if let Some(label) = &label {
        out.push(classification_marking(label));
        markings.push(classification_marking_id(&label_text).into());
    }
    let org_id = organisation_id(item.organisation);
    let sender = sender_id(&n.sender);
    out.push(organisation_identity(item.organisation));
    out.push(sender_identity(&n.sender, item.organisation));

    let mut refs: Vec<Value> = vec![sender.clone().into(), org_id.into()];
    for obj in n.stix.iter().flatten() {
        let Some(map) = obj.as_object() else { continue };
        let ty = map.get("type").and_then(Value::as_str).unwrap_or_default();
        if matches!(ty, "marking-definition" | "extension-definition") {
            // Definitions travel as they are, unmarked and unreferenced.
            out.push(obj.clone());
            continue;
        }
        let mut map = map.clone();
        let mut existing: Vec<Value> = match map.remove("object_marking_refs") {
            Some(Value::Array(v)) => v,
            _ => Vec::new(),
        };
        for m in &markings {
            if !existing.contains(m) {
                existing.push(m.clone());
            }
        }
        map.insert("object_marking_refs".into(), existing.into());
        if let Some(id) = map.get("id").cloned() {
            refs.push(id);
        }
        out.push(Value::Object(map));
    }

    let filed = timestamp(n.filed_at);
    let mut ext = Map::new();
    ext.insert("extension_type".into(), "property-extension".into());
    ext.insert("community".into(), n.community.clone().into());
    ext.insert("kind".into(), n.kind.as_str().into());
    ext.insert("category".into(), n.category.as_str().into());
    ext.insert("label".into(), label_text.into());
    ext.insert("sender".into(), n.sender.clone().into());
    if let Some(to) = n.in_reply_to {
        ext.insert("in_reply_to".into(), format!("report--{to}").into());
    }
    if let Ok(Value::Object(fields)) = serde_json::to_value(n) {
        for field in PROVENANCE_FIELDS {
            match fields.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    ext.insert(field.into(), v.clone());
                }
            }
        }
    }
    let mut report = json!({
        "type": "report",
        "spec_version": "2.1",
        "id": format!("report--{}", n.id),
        "created_by_ref": sender,
        "created": filed,
        "modified": filed,
        "name": n.title,
        "published": filed,
        "report_types": ["threat-report"],
        "labels": [n.category.as_str(), n.kind.as_str()],
        "object_refs": refs,
        "object_marking_refs": markings,
        "extensions": { NOTICE_EXTENSION: ext },
    });
    if !n.body.is_empty() {
        report["description"] = n.body.clone().into();
    }
    out.push(report);
    out
}

/// The objects of `items`, each id once (its first occurrence), in order.
pub fn collect_objects(items: &[Exported<'_>]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for item in items {
        for obj in objects_for(item) {
            let id = obj
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if seen.insert(id) {
                out.push(obj);
            }
        }
    }
    out
}

/// One STIX 2.1 bundle of `items`. Its id is derived from the notices' ids, so the
/// same notices give the same bundle.
pub fn bundle(items: &[Exported<'_>]) -> Value {
    let mut ids: Vec<String> = items.iter().map(|i| i.notice.id.to_string()).collect();
    ids.sort();
    let mut bundle = json!({
        "type": "bundle",
        "id": stix_id("bundle", &ids.join(",")),
    });
    let objects = collect_objects(items);
    if !objects.is_empty() {
        bundle["objects"] = objects.into();
    }
    bundle
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notice::Notice;

    /// A notice from its JSON (so that fields added to notices later keep their defaults).
    pub(crate) fn notice(id: u128, label: &str, stix: Option<Value>) -> Notice {
        let mut v = json!({
            "id": uuid::Uuid::from_u128(id),
            "community": "intel@bz",
            "label": label,
            "kind": "notice",
            "category": "cyber",
            "title": format!("Notice {id}"),
            "body": "Phishing wave against ministries.\nSee indicators.",
            "sender": "liaison@nctv",
            "filed_at": "2025-03-01T12:30:00Z",
            "in_reply_to": null,
            "stix": stix,
        });
        // A v4 UUID, like the ones the client makes.
        v["id"] = uuid::Builder::from_random_bytes(id.to_be_bytes())
            .into_uuid()
            .to_string()
            .into();
        serde_json::from_value(v).unwrap()
    }

    pub(crate) fn indicator() -> Value {
        json!([{
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
            "created": "2025-03-01T12:00:00.000Z",
            "modified": "2025-03-01T12:00:00.000Z",
            "name": "Phishing domain",
            "description": "Domain of a phishing wave against ministries.",
            "pattern": "[domain-name:value = 'evil.example']",
            "pattern_type": "stix",
            "valid_from": "2025-03-01T12:00:00Z",
        }])
    }

    fn by_id<'a>(objects: &'a [Value], id: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"))
    }

    #[test]
    fn a_notice_becomes_a_marked_report_with_identities() {
        let n = notice(1, "NL:STG-CONFIDENTIEEL;TLP=CLEAR", Some(indicator()));
        let b = bundle(&[Exported {
            notice: &n,
            organisation: "nctv",
        }]);
        let objects = b["objects"].as_array().unwrap();
        let report = by_id(objects, &format!("report--{}", n.id));
        assert_eq!(report["name"], n.title);
        assert_eq!(report["description"], n.body);
        assert_eq!(report["published"], "2025-03-01T12:30:00.000Z");
        let tlp = tlp_marking_id(Tlp::Clear);
        let class = classification_marking_id("NL:STG-CONFIDENTIEEL;TLP=CLEAR");
        assert_eq!(report["object_marking_refs"], json!([tlp, class]));
        let refs = report["object_refs"].as_array().unwrap();
        assert!(refs.contains(&json!(sender_id("liaison@nctv"))));
        assert!(refs.contains(&json!(organisation_id("nctv"))));
        assert!(refs.contains(&json!("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f")));
        let ind = by_id(objects, "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f");
        assert_eq!(ind["object_marking_refs"], json!([tlp, class]));
        let marking = by_id(objects, &class);
        assert_eq!(
            label_of_marking(marking),
            Some("NL:STG-CONFIDENTIEEL;TLP=CLEAR")
        );
        assert_eq!(by_id(objects, tlp)["name"], "TLP:CLEAR");
        assert_eq!(
            report["extensions"][NOTICE_EXTENSION]["community"],
            "intel@bz"
        );
        for id in [KRING_IDENTITY, CLASSIFICATION_EXTENSION, NOTICE_EXTENSION] {
            by_id(objects, id);
        }
    }

    #[test]
    fn exporting_twice_gives_the_same_ids_and_bytes() {
        let a = notice(1, "TLP:CLEAR", Some(indicator()));
        let b = notice(2, "NL:STG-GEHEIM;REL=NLD;TLP=CLEAR", None);
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
        let one = serde_json::to_string(&bundle(&items)).unwrap();
        let two = serde_json::to_string(&bundle(&items)).unwrap();
        assert_eq!(one, two);
        // The bundle id does not depend on the order of the notices.
        let reversed = [items[1], items[0]];
        assert_eq!(bundle(&reversed)["id"], bundle(&items)["id"]);
        // Shared objects appear once.
        let v: Value = serde_json::from_str(&one).unwrap();
        let objects = v["objects"].as_array().unwrap();
        let ids: BTreeSet<&str> = objects.iter().filter_map(|o| o["id"].as_str()).collect();
        assert_eq!(ids.len(), objects.len());
    }

    #[test]
    fn every_tlp_colour_maps_to_its_oasis_marking() {
        for colour in Tlp::ALL {
            let m = tlp_marking(colour);
            assert_eq!(tlp_of_marking_id(m["id"].as_str().unwrap()), Some(colour));
            assert_eq!(m["name"], format!("TLP:{colour}"));
        }
        assert_eq!(
            tlp_marking(Tlp::AmberStrict)["extensions"][TLP_EXTENSION]["tlp_2_0"],
            "amber+strict"
        );
    }

    /// A bundle for every policy's levels with every TLP colour, each checked by the
    /// structural validator. With `KRING_STIX_SAMPLES=DIR` they are also written to
    /// DIR, where the interop suite (`tests/interop/run.sh`) checks them with
    /// `stix2-validator --strict`: the colours exports never carry included.
    #[test]
    fn bundles_for_every_label_and_tlp() {
        let out = std::env::var_os("KRING_STIX_SAMPLES").map(std::path::PathBuf::from);
        let mut n = 0u128;
        for policy in kring_policy::policies() {
            for level in (0..).map_while(|i| kring_policy::level_name(policy, i)) {
                for colour in Tlp::ALL {
                    n += 1;
                    let label = format!("{policy}:{level};INFO=EXERCISE;TLP={colour}");
                    let notice = notice(n, &label, Some(indicator()));
                    let b = bundle(&[Exported {
                        notice: &notice,
                        organisation: "nctv",
                    }]);
                    let text = serde_json::to_string_pretty(&b).unwrap();
                    crate::export::validate::check_document(&text).unwrap();
                    assert!(text.contains(tlp_marking_id(colour)));
                    if let Some(dir) = &out {
                        std::fs::create_dir_all(dir).unwrap();
                        let name = format!("{policy}_{level}_{colour}.json").replace('+', "_");
                        std::fs::write(dir.join(name), text).unwrap();
                    }
                }
            }
        }
        assert_eq!(n, 3 * 5 * 5);
    }

    #[test]
    fn provenance_fields_travel_in_the_notice_extension() {
        let n = notice(3, "TLP:CLEAR", None);
        let objects = objects_for(&Exported {
            notice: &n,
            organisation: "nctv",
        });
        let report = objects.last().unwrap();
        let ext = &report["extensions"][NOTICE_EXTENSION];
        assert!(ext.get("forwarded_from").is_none());
        assert_eq!(ext["label"], "NL:ONGERUBRICEERD;TLP=CLEAR");

        let from = json!({
            "community": "desinformatie@bz",
            "id": "5d0092c5-5f74-4287-9642-33f4c354e56d",
            "sender": "analist@post-a",
            "filed_at": "2025-02-28T08:00:00Z",
        });
        let mut v = serde_json::to_value(&n).unwrap();
        v["forwarded_from"] = from.clone();
        let forwarded: Notice = serde_json::from_value(v).unwrap();
        let objects = objects_for(&Exported {
            notice: &forwarded,
            organisation: "nctv",
        });
        let ext = &objects.last().unwrap()["extensions"][NOTICE_EXTENSION];
        assert_eq!(ext["forwarded_from"], from);
    }
}

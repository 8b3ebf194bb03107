//! Structural checks of STIX 2.1 content given to Kring (`kring notice file
//! --stix-file`, objects posted to `kring taxii serve`): the rules of the STIX 2.1
//! specification a document can be checked against without knowing its meaning.
//!
//! * a bundle has `type` `bundle`, an id `bundle--UUID` and an `objects` array;
//! * every object has a valid `type` and an id `TYPE--UUID`; every object but a
//!   cyber observable has `spec_version` `2.1` and a `created` timestamp, domain
//!   and relationship objects also `modified` (not before `created`);
//! * the required properties of each type the specification defines;
//! * timestamps are RFC 3339 in UTC (`Z`); `*_ref` and `*_refs` properties hold ids,
//!   `created_by_ref` an identity's, `object_marking_refs` marking definitions';
//! * property names are 3 to 250 characters of `a-z 0-9 _` (`id` excepted);
//! * `confidence` is 0 to 100, `extensions` is an object.
//!
//! The first problem is reported with the object's position and id.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::notice::{MAX_STIX_BYTES, MAX_STIX_OBJECTS};

/// Why STIX content is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid STIX 2.1: {0}")]
pub struct StixError(pub String);

fn err(msg: impl Into<String>) -> StixError {
    StixError(msg.into())
}

/// Cyber-observable types (no `created`/`modified`, `spec_version` optional).
const OBSERVABLES: &[&str] = &[
    "artifact",
    "autonomous-system",
    "directory",
    "domain-name",
    "email-addr",
    "email-message",
    "file",
    "ipv4-addr",
    "ipv6-addr",
    "mac-addr",
    "mutex",
    "network-traffic",
    "process",
    "software",
    "url",
    "user-account",
    "windows-registry-key",
    "x509-certificate",
];

/// Required properties per type, besides the common ones.
const REQUIRED: &[(&str, &[&str])] = &[
    ("attack-pattern", &["name"]),
    ("campaign", &["name"]),
    ("course-of-action", &["name"]),
    ("grouping", &["context", "object_refs"]),
    ("identity", &["name"]),
    ("incident", &["name"]),
    ("indicator", &["pattern", "pattern_type", "valid_from"]),
    ("infrastructure", &["name"]),
    ("intrusion-set", &["name"]),
    ("malware", &["is_family"]),
    ("malware-analysis", &["product"]),
    ("note", &["content", "object_refs"]),
    (
        "observed-data",
        &["first_observed", "last_observed", "number_observed"],
    ),
    ("opinion", &["opinion", "object_refs"]),
    ("report", &["name", "published", "object_refs"]),
    ("threat-actor", &["name"]),
    ("tool", &["name"]),
    ("vulnerability", &["name"]),
    (
        "relationship",
        &["relationship_type", "source_ref", "target_ref"],
    ),
    ("sighting", &["sighting_of_ref"]),
    (
        "extension-definition",
        &[
            "name",
            "schema",
            "version",
            "extension_types",
            "created_by_ref",
        ],
    ),
    ("language-content", &["object_ref", "contents"]),
    ("domain-name", &["value"]),
    ("email-addr", &["value"]),
    ("ipv4-addr", &["value"]),
    ("ipv6-addr", &["value"]),
    ("mac-addr", &["value"]),
    ("url", &["value"]),
    ("mutex", &["name"]),
    ("autonomous-system", &["number"]),
    ("software", &["name"]),
    ("directory", &["path"]),
    ("windows-registry-key", &[]),
];

/// Properties holding timestamps.
const TIMESTAMPS: &[&str] = &[
    "created",
    "modified",
    "published",
    "valid_from",
    "valid_until",
    "first_seen",
    "last_seen",
    "first_observed",
    "last_observed",
];

/// Checks a document as `--stix-file` takes it (a bundle, an array of objects or
/// one object) and returns its objects.
pub fn check_document(text: &str) -> Result<Vec<Value>, StixError> {
    if text.len() > MAX_STIX_BYTES {
        return Err(err(format!(
            "{} bytes; at most {MAX_STIX_BYTES} are allowed",
            text.len()
        )));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
    match value {
        Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("bundle") => {
            check_bundle(&map)
        }
        Value::Array(objects) => {
            check_objects(&objects)?;
            Ok(objects)
        }
        obj @ Value::Object(_) => {
            let objects = vec![obj];
            check_objects(&objects)?;
            Ok(objects)
        }
        _ => Err(err(
            "expected a STIX bundle, an array of STIX objects or one object",
        )),
    }
}

/// Checks a bundle and returns its objects.
pub fn check_bundle(bundle: &Map<String, Value>) -> Result<Vec<Value>, StixError> {
    let id = bundle.get("id").and_then(Value::as_str).unwrap_or_default();
    if !is_id_of(id, "bundle") {
        return Err(err(
            "the bundle has no valid \"id\" of the form bundle--UUID",
        ));
    }
    if bundle.contains_key("spec_version") {
        return Err(err(
            "a STIX 2.1 bundle has no \"spec_version\" (that is STIX 2.0)",
        ));
    }
    let objects = match bundle.get("objects") {
        None => Vec::new(),
        Some(Value::Array(objects)) if !objects.is_empty() => objects.clone(),
        Some(Value::Array(_)) => {
            return Err(err("the bundle's \"objects\" must not be empty"));
        }
        Some(_) => return Err(err("the bundle's \"objects\" must be an array")),
    };
    check_objects(&objects)?;
    Ok(objects)
}

/// Checks objects: their number, and each as [`check_object`].
pub fn check_objects(objects: &[Value]) -> Result<(), StixError> {
    if objects.len() > MAX_STIX_OBJECTS {
        return Err(err(format!(
            "{} objects; at most {MAX_STIX_OBJECTS} are allowed",
            objects.len()
        )));
    }
    for (i, obj) in objects.iter().enumerate() {
        check_object(obj).map_err(|reason| {
            let id = obj.get("id").and_then(Value::as_str).unwrap_or("no id");
            err(format!("object {i} ({id}): {reason}"))
        })?;
    }
    Ok(())
}

/// Checks one object; the reason names the property at fault.
pub fn check_object(obj: &Value) -> Result<(), String> {
    let map = obj.as_object().ok_or("not a JSON object")?;
    let ty = map.get("type").and_then(Value::as_str).unwrap_or_default();
    if !is_type_name(ty) {
        return Err("no valid \"type\" (3 to 250 characters of a-z, 0-9 and -)".into());
    }
    if ty == "bundle" {
        return Err("a bundle inside a bundle".into());
    }
    let id = map.get("id").and_then(Value::as_str).unwrap_or_default();
    if !is_id_of(id, ty) {
        return Err(format!("no valid \"id\" of the form {ty}--UUID"));
    }
    let observable = OBSERVABLES.contains(&ty);
    match map.get("spec_version") {
        Some(Value::String(v)) if v == "2.1" => {}
        None if observable => {}
        None => return Err("missing required property \"spec_version\" (2.1)".into()),
        Some(other) => return Err(format!("\"spec_version\" is {other}, expected \"2.1\"")),
    }
    if !observable {
        require(map, "created")?;
        if ty != "marking-definition" {
            require(map, "modified")?;
        }
    }
    if let Some((_, props)) = REQUIRED.iter().find(|(t, _)| *t == ty) {
        for p in *props {
            require(map, p)?;
        }
    }
    if ty == "malware" && map.get("is_family") == Some(&Value::Bool(true)) {
        require(map, "name")?;
    }
    if ty == "marking-definition"
        && !map.contains_key("extensions")
        && (!map.contains_key("definition_type") || !map.contains_key("definition"))
    {
        return Err(
            "a marking definition needs \"definition_type\" and \"definition\", or \"extensions\""
                .into(),
        );
    }
    for (name, value) in map {
        check_property(name, value)?;
    }
    if let (Some(c), Some(m)) = (
        map.get("created").and_then(Value::as_str),
        map.get("modified").and_then(Value::as_str),
    ) && let (Some(c), Some(m)) = (parse_timestamp(c), parse_timestamp(m))
        && m < c
    {
        return Err("\"modified\" is before \"created\"".into());
    }
    Ok(())
}

fn require(map: &Map<String, Value>, name: &str) -> Result<(), String> {
    match map.get(name) {
        None | Some(Value::Null) => Err(format!("missing required property \"{name}\"")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("\"{name}\" is empty")),
        Some(Value::Array(a)) if a.is_empty() => Err(format!("\"{name}\" is empty")),
        Some(_) => Ok(()),
    }
}

fn check_property(name: &str, value: &Value) -> Result<(), String> {
    let ok_name = name == "id"
        || ((3..=250).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    if !ok_name {
        return Err(format!(
            "property name {name:?} is not 3 to 250 characters of a-z, 0-9 and _"
        ));
    }
    if TIMESTAMPS.contains(&name) {
        let ok = value.as_str().and_then(parse_timestamp).is_some();
        if !ok {
            return Err(format!(
                "\"{name}\" is not a timestamp like 2025-03-01T12:30:00.000Z"
            ));
        }
    }
    if name.ends_with("_ref") {
        let id = value.as_str().unwrap_or_default();
        if !is_id(id) {
            return Err(format!("\"{name}\" is not an id TYPE--UUID"));
        }
        if name == "created_by_ref" && !is_id_of(id, "identity") {
            return Err("\"created_by_ref\" must name an identity".into());
        }
    }
    if name.ends_with("_refs") {
        let items = value
            .as_array()
            .ok_or_else(|| format!("\"{name}\" is not a list"))?;
        for item in items {
            let id = item.as_str().unwrap_or_default();
            if !is_id(id) {
                return Err(format!("\"{name}\" holds {item}, not an id TYPE--UUID"));
            }
            if name == "object_marking_refs" && !is_id_of(id, "marking-definition") {
                return Err(format!(
                    "\"object_marking_refs\" holds {id}, not a marking definition"
                ));
            }
        }
    }
    if name == "confidence" && value.as_u64().is_none_or(|c| c > 100) {
        return Err("\"confidence\" must be an integer from 0 to 100".into());
    }
    if name == "extensions" && !value.is_object() {
        return Err("\"extensions\" must be an object".into());
    }
    Ok(())
}

fn is_type_name(ty: &str) -> bool {
    (3..=250).contains(&ty.len())
        && ty
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ty.starts_with('-')
        && !ty.ends_with('-')
}

/// Whether `id` is `TYPE--UUID` for some valid type.
pub fn is_id(id: &str) -> bool {
    id.split_once("--")
        .is_some_and(|(ty, _)| is_type_name(ty) && is_id_of(id, ty))
}

/// Whether `id` is `TY--UUID` (a UUID in its hyphenated lower-case form).
pub fn is_id_of(id: &str, ty: &str) -> bool {
    id.strip_prefix(ty)
        .and_then(|rest| rest.strip_prefix("--"))
        .is_some_and(|u| {
            u.len() == 36
                && Uuid::parse_str(u).is_ok()
                && !u.bytes().any(|b| b.is_ascii_uppercase())
        })
}

/// Parses a STIX timestamp: RFC 3339 in UTC with `Z`, e.g. `2025-03-01T12:30:00Z`
/// or `2025-03-01T12:30:00.123Z`.
pub fn parse_timestamp(text: &str) -> Option<time::OffsetDateTime> {
    if !text.ends_with('Z') || text.len() < 20 || text.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::export::stix::{Exported, bundle, tests as fixtures};

    #[test]
    fn kring_bundles_pass() {
        let n = fixtures::notice(
            1,
            "NL:STG-GEHEIM;REL=NLD;TLP=AMBER",
            Some(fixtures::indicator()),
        );
        let b = bundle(&[Exported {
            notice: &n,
            organisation: "nctv",
        }]);
        let text = serde_json::to_string(&b).unwrap();
        let objects = check_document(&text).unwrap();
        assert!(objects.len() > 5);
    }

    fn indicator() -> Value {
        fixtures::indicator()[0].clone()
    }

    fn refused(obj: Value) -> String {
        check_objects(&[obj]).unwrap_err().to_string()
    }

    #[test]
    fn missing_and_malformed_properties_are_refused_with_the_reason() {
        let mut o = indicator();
        o.as_object_mut().unwrap().remove("pattern");
        assert!(refused(o).contains("missing required property \"pattern\""));

        let mut o = indicator();
        o["id"] = json!("indicator--not-a-uuid");
        assert!(refused(o).contains("indicator--UUID"));

        let mut o = indicator();
        o["id"] = json!("malware--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f");
        assert!(refused(o).contains("indicator--UUID"));

        let mut o = indicator();
        o["spec_version"] = json!("2.0");
        assert!(refused(o).contains("spec_version"));

        let mut o = indicator();
        o.as_object_mut().unwrap().remove("spec_version");
        assert!(refused(o).contains("spec_version"));

        let mut o = indicator();
        o["created"] = json!("2025-03-01 12:00:00");
        assert!(refused(o).contains("\"created\" is not a timestamp"));

        let mut o = indicator();
        o["valid_from"] = json!("2025-03-01T12:00:00+01:00");
        assert!(refused(o).contains("valid_from"));

        let mut o = indicator();
        o["modified"] = json!("2025-02-01T12:00:00.000Z");
        assert!(refused(o).contains("before"));

        let mut o = indicator();
        o["created_by_ref"] = json!("report--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f");
        assert!(refused(o).contains("identity"));

        let mut o = indicator();
        o["object_marking_refs"] = json!(["tlp:red"]);
        assert!(refused(o).contains("object_marking_refs"));

        let mut o = indicator();
        o["X-Custom"] = json!(1);
        assert!(refused(o).contains("property name"));

        let mut o = indicator();
        o["confidence"] = json!(101);
        assert!(refused(o).contains("confidence"));
    }

    #[test]
    fn observables_need_no_timestamps() {
        let o = json!({"type": "domain-name", "id": "domain-name--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "value": "evil.example"});
        check_objects(&[o]).unwrap();
        let o = json!({"type": "domain-name", "id": "domain-name--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"});
        assert!(refused(o).contains("value"));
    }

    #[test]
    fn bundles_are_checked_too() {
        let ind = indicator();
        let ok = json!({"type": "bundle", "id": "bundle--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "objects": [ind]});
        assert_eq!(check_document(&ok.to_string()).unwrap().len(), 1);
        let mut b = ok.clone();
        b["id"] = json!("bundle--1");
        assert!(check_document(&b.to_string()).is_err());
        let mut b = ok.clone();
        b["spec_version"] = json!("2.0");
        assert!(
            check_document(&b.to_string())
                .unwrap_err()
                .to_string()
                .contains("2.0")
        );
        let mut b = ok;
        b["objects"] = json!({});
        assert!(check_document(&b.to_string()).is_err());
        assert!(check_document("[1]").is_err());
        assert!(check_document("nope").is_err());
    }
}

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

/// Why STIX content is refused: the first problem found. Every message starts with
/// `invalid STIX 2.1:`; the content must be fixed before it is given again.
#[derive(Debug, thiserror::Error)]
pub enum StixError {
    /// The document is larger than [`MAX_STIX_BYTES`].
    #[error("invalid STIX 2.1: {bytes} bytes; at most {max} are allowed", max = MAX_STIX_BYTES)]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The document is not JSON.
    #[error("invalid STIX 2.1: not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The document is JSON, but not a bundle, an array of objects or one object.
    #[error("invalid STIX 2.1: expected a STIX bundle, an array of STIX objects or one object")]
    NotStix,
    /// The bundle's `id` is not `bundle--UUID`.
    #[error("invalid STIX 2.1: the bundle has no valid \"id\" of the form bundle--UUID")]
    BundleId,
    /// The bundle has a `spec_version`: a STIX 2.0 bundle.
    #[error("invalid STIX 2.1: a STIX 2.1 bundle has no \"spec_version\" (that is STIX 2.0)")]
    BundleSpecVersion,
    /// The bundle's `objects` is an empty array.
    #[error("invalid STIX 2.1: the bundle's \"objects\" must not be empty")]
    EmptyBundle,
    /// The bundle's `objects` is not an array.
    #[error("invalid STIX 2.1: the bundle's \"objects\" must be an array")]
    ObjectsNotArray,
    /// More than [`MAX_STIX_OBJECTS`] objects.
    #[error("invalid STIX 2.1: {count} objects; at most {max} are allowed", max = MAX_STIX_OBJECTS)]
    TooManyObjects {
        /// How many there are.
        count: usize,
    },
    /// An object is refused ([`check_object`]).
    #[error("invalid STIX 2.1: object {index} ({id}): {problem}")]
    Object {
        /// Its position, from 0.
        index: usize,
        /// Its id, or `no id`.
        id: String,
        /// What is wrong with it.
        #[source]
        problem: StixObjectError,
    },
}

/// What is wrong with one STIX object; each names the property at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StixObjectError {
    /// The object is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `type` is missing or not a STIX type name.
    #[error("no valid \"type\" (3 to 250 characters of a-z, 0-9 and -)")]
    InvalidType,
    /// A bundle is given as an object of a bundle.
    #[error("a bundle inside a bundle")]
    NestedBundle,
    /// `id` is missing or not `TYPE--UUID` of the object's type.
    #[error("no valid \"id\" of the form {ty}--UUID")]
    InvalidId {
        /// The object's type.
        ty: String,
    },
    /// `spec_version` is missing (required of all but cyber observables).
    #[error("missing required property \"spec_version\" (2.1)")]
    MissingSpecVersion,
    /// `spec_version` is not `2.1`.
    #[error("\"spec_version\" is {found}, expected \"2.1\"")]
    WrongSpecVersion {
        /// The value given.
        found: Value,
    },
    /// A required property is missing or null.
    #[error("missing required property \"{name}\"")]
    Missing {
        /// The property.
        name: String,
    },
    /// A required property is an empty string or list.
    #[error("\"{name}\" is empty")]
    Empty {
        /// The property.
        name: String,
    },
    /// A marking definition without its definition or extensions.
    #[error("a marking definition needs \"definition_type\" and \"definition\", or \"extensions\"")]
    IncompleteMarking,
    /// A property name is not 3 to 250 characters of `a-z 0-9 _`.
    #[error("property name {name:?} is not 3 to 250 characters of a-z, 0-9 and _")]
    PropertyName {
        /// The property.
        name: String,
    },
    /// A timestamp property is not RFC 3339 in UTC.
    #[error("\"{name}\" is not a timestamp like 2025-03-01T12:30:00.000Z")]
    NotTimestamp {
        /// The property.
        name: String,
    },
    /// A `*_ref` property does not hold an id.
    #[error("\"{name}\" is not an id TYPE--UUID")]
    NotAnId {
        /// The property.
        name: String,
    },
    /// `created_by_ref` names something other than an identity.
    #[error("\"created_by_ref\" must name an identity")]
    CreatorNotIdentity,
    /// A `*_refs` property is not a list.
    #[error("\"{name}\" is not a list")]
    NotAList {
        /// The property.
        name: String,
    },
    /// A `*_refs` property holds something other than an id.
    #[error("\"{name}\" holds {item}, not an id TYPE--UUID")]
    ListItemNotAnId {
        /// The property.
        name: String,
        /// The item at fault.
        item: Value,
    },
    /// `object_marking_refs` holds an id of something other than a marking definition.
    #[error("\"object_marking_refs\" holds {id}, not a marking definition")]
    NotAMarking {
        /// The id at fault.
        id: String,
    },
    /// `confidence` is not an integer from 0 to 100.
    #[error("\"confidence\" must be an integer from 0 to 100")]
    Confidence,
    /// `extensions` is not an object.
    #[error("\"extensions\" must be an object")]
    ExtensionsNotObject,
    /// `modified` is before `created`.
    #[error("\"modified\" is before \"created\"")]
    ModifiedBeforeCreated,
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
        return Err(StixError::TooLarge { bytes: text.len() });
    }
    let value: Value = serde_json::from_str(text).map_err(StixError::NotJson)?;
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
        _ => Err(StixError::NotStix),
    }
}

/// Checks a bundle and returns its objects.
pub fn check_bundle(bundle: &Map<String, Value>) -> Result<Vec<Value>, StixError> {
    let id = bundle.get("id").and_then(Value::as_str).unwrap_or_default();
    if !is_id_of(id, "bundle") {
        return Err(StixError::BundleId);
    }
    if bundle.contains_key("spec_version") {
        return Err(StixError::BundleSpecVersion);
    }
    let objects = match bundle.get("objects") {
        None => Vec::new(),
        Some(Value::Array(objects)) if !objects.is_empty() => objects.clone(),
        Some(Value::Array(_)) => {
            return Err(StixError::EmptyBundle);
        }
        Some(_) => return Err(StixError::ObjectsNotArray),
    };
    check_objects(&objects)?;
    Ok(objects)
}

/// Checks objects: their number, and each as [`check_object`].
pub fn check_objects(objects: &[Value]) -> Result<(), StixError> {
    if objects.len() > MAX_STIX_OBJECTS {
        return Err(StixError::TooManyObjects {
            count: objects.len(),
        });
    }
    for (i, obj) in objects.iter().enumerate() {
        check_object(obj).map_err(|problem| StixError::Object {
            index: i,
            id: obj
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("no id")
                .to_owned(),
            problem,
        })?;
    }
    Ok(())
}

/// Checks one object; the error names the property at fault.
pub fn check_object(obj: &Value) -> Result<(), StixObjectError> {
    let map = obj.as_object().ok_or(StixObjectError::NotAnObject)?;
    let ty = map.get("type").and_then(Value::as_str).unwrap_or_default();
    if !is_type_name(ty) {
        return Err(StixObjectError::InvalidType);
    }
    if ty == "bundle" {
        return Err(StixObjectError::NestedBundle);
    }
    let id = map.get("id").and_then(Value::as_str).unwrap_or_default();
    if !is_id_of(id, ty) {
        return Err(StixObjectError::InvalidId { ty: ty.to_owned() });
    }
    let observable = OBSERVABLES.contains(&ty);
    match map.get("spec_version") {
        Some(Value::String(v)) if v == "2.1" => {}
        None if observable => {}
        None => return Err(StixObjectError::MissingSpecVersion),
        Some(other) => {
            return Err(StixObjectError::WrongSpecVersion {
                found: other.clone(),
            });
        }
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
        return Err(StixObjectError::IncompleteMarking);
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
        return Err(StixObjectError::ModifiedBeforeCreated);
    }
    Ok(())
}

fn require(map: &Map<String, Value>, name: &str) -> Result<(), StixObjectError> {
    let empty = match map.get(name) {
        None | Some(Value::Null) => {
            return Err(StixObjectError::Missing {
                name: name.to_owned(),
            });
        }
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if empty {
        return Err(StixObjectError::Empty {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn check_property(name: &str, value: &Value) -> Result<(), StixObjectError> {
    let ok_name = name == "id"
        || ((3..=250).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    if !ok_name {
        return Err(StixObjectError::PropertyName {
            name: name.to_owned(),
        });
    }
    if TIMESTAMPS.contains(&name) {
        let ok = value.as_str().and_then(parse_timestamp).is_some();
        if !ok {
            return Err(StixObjectError::NotTimestamp {
                name: name.to_owned(),
            });
        }
    }
    if name.ends_with("_ref") {
        let id = value.as_str().unwrap_or_default();
        if !is_id(id) {
            return Err(StixObjectError::NotAnId {
                name: name.to_owned(),
            });
        }
        if name == "created_by_ref" && !is_id_of(id, "identity") {
            return Err(StixObjectError::CreatorNotIdentity);
        }
    }
    if name.ends_with("_refs") {
        let items = value.as_array().ok_or_else(|| StixObjectError::NotAList {
            name: name.to_owned(),
        })?;
        for item in items {
            let id = item.as_str().unwrap_or_default();
            if !is_id(id) {
                return Err(StixObjectError::ListItemNotAnId {
                    name: name.to_owned(),
                    item: item.clone(),
                });
            }
            if name == "object_marking_refs" && !is_id_of(id, "marking-definition") {
                return Err(StixObjectError::NotAMarking { id: id.to_owned() });
            }
        }
    }
    if name == "confidence" && value.as_u64().is_none_or(|c| c > 100) {
        return Err(StixObjectError::Confidence);
    }
    if name == "extensions" && !value.is_object() {
        return Err(StixObjectError::ExtensionsNotObject);
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
    fn messages_keep_their_documented_text() {
        let mut o = indicator();
        o.as_object_mut().unwrap().remove("pattern");
        let id = o["id"].as_str().unwrap().to_owned();
        let err = check_objects(&[o]).unwrap_err();
        assert!(
            matches!(&err, StixError::Object { index: 0, problem: StixObjectError::Missing { name }, .. } if name == "pattern"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("invalid STIX 2.1: object 0 ({id}): missing required property \"pattern\"")
        );
        let mut o = indicator();
        o["spec_version"] = json!("2.0");
        assert_eq!(
            check_object(&o).unwrap_err().to_string(),
            "\"spec_version\" is \"2.0\", expected \"2.1\""
        );
        let mut o = indicator();
        o["object_refs"] = json!([1]);
        assert_eq!(
            check_object(&o).unwrap_err().to_string(),
            "\"object_refs\" holds 1, not an id TYPE--UUID"
        );
        assert_eq!(
            check_objects(&[json!(1)]).unwrap_err().to_string(),
            "invalid STIX 2.1: object 0 (no id): not a JSON object"
        );
        assert_eq!(
            check_document("[]x").unwrap_err().to_string(),
            format!(
                "invalid STIX 2.1: not JSON: {}",
                serde_json::from_str::<Value>("[]x").unwrap_err()
            )
        );
        let big = " ".repeat(MAX_STIX_BYTES + 1);
        assert_eq!(
            check_document(&big).unwrap_err().to_string(),
            format!(
                "invalid STIX 2.1: {} bytes; at most {MAX_STIX_BYTES} are allowed",
                MAX_STIX_BYTES + 1
            )
        );
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

//! A community as a TAXII collection (pure): its id, its objects with the time
//! each was added, the filters (`added_after`, `match[id]`, `match[type]`) and
//! pages (`limit`, `next`).

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::export::ids::derived;
use crate::export::stix::{Exported, objects_for, timestamp};
use crate::export::validate::parse_timestamp;
use crate::notice::Notice;

/// Objects per page when the client gives no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// Most objects per page.
pub const MAX_PAGE: usize = 1000;

/// The stable collection id of a community.
pub fn collection_id(community: &str) -> Uuid {
    derived("taxii-collection", community)
}

/// A notice the service may show, with its sender's organisation.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The notice.
    pub notice: Notice,
    /// The sender's organisation.
    pub organisation: String,
}

/// A community as the service sees it.
#[derive(Debug, Clone)]
pub struct Community {
    /// `NAME@HUB`.
    pub id: String,
    /// The community's maximum label.
    pub max_label: String,
    /// Its notices the service may show, in log order.
    pub notices: Vec<Shown>,
}

impl Community {
    /// Its collection id.
    pub fn collection_id(&self) -> Uuid {
        collection_id(&self.id)
    }

    /// The TAXII collection resource.
    pub fn resource(&self) -> Value {
        json!({
            "id": self.collection_id(),
            "title": self.id,
            "description": format!("Kring community {} (maximum label {})", self.id, self.max_label),
            "can_read": true,
            "can_write": true,
            "media_types": [super::STIX_MEDIA_TYPE],
        })
    }

    /// Every object of the collection with the time it was added (its notice's
    /// filing time), oldest first and by id among objects added at once (the order
    /// of the OASIS reference server); an object several notices carry counts once,
    /// at its first notice.
    pub fn objects(&self) -> Vec<Stored> {
        let mut notices: Vec<&Shown> = self.notices.iter().collect();
        notices.sort_by_key(|s| (s.notice.filed_at, s.notice.id));
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for s in notices {
            let item = Exported {
                notice: &s.notice,
                organisation: &s.organisation,
            };
            for object in objects_for(&item) {
                let id = object
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if seen.insert(id.clone()) {
                    out.push(Stored {
                        id,
                        added: s.notice.filed_at,
                        object,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.added, &a.id).cmp(&(b.added, &b.id)));
        out
    }
}

/// An object of a collection.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its STIX id.
    pub id: String,
    /// When it was added to the collection.
    pub added: OffsetDateTime,
    /// The object.
    pub object: Value,
}

impl Stored {
    /// Its type (the part of the id before `--`).
    pub fn ty(&self) -> &str {
        self.id.split_once("--").map_or("", |(t, _)| t)
    }

    /// Its version: `modified`, else `created`, else the time it was added.
    pub fn version(&self) -> String {
        ["modified", "created"]
            .iter()
            .find_map(|k| self.object.get(*k).and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| timestamp(self.added))
    }

    /// Its manifest record.
    pub fn manifest(&self) -> Value {
        json!({
            "id": self.id,
            "date_added": timestamp(self.added),
            "version": self.version(),
            "media_type": super::STIX_MEDIA_TYPE,
        })
    }
}

/// The query of an objects or manifest request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `added_after`.
    pub added_after: Option<OffsetDateTime>,
    /// `match[id]` (empty: any).
    pub ids: Vec<String>,
    /// `match[type]` (empty: any).
    pub types: Vec<String>,
    /// `limit`.
    pub limit: usize,
    /// `next`: where the previous page ended.
    pub next: usize,
}

/// What is wrong with the query of an objects or manifest request (answered with
/// HTTP 400); each names the parameter at fault and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `added_after` is not a STIX timestamp.
    #[error("added_after is not a timestamp like 2025-03-01T12:00:00.000Z")]
    AddedAfter,
    /// `limit` is not a positive integer.
    #[error("limit must be a positive integer")]
    Limit,
    /// `next` is not a page token of this server.
    #[error("next is not a token this server gave")]
    Next,
    /// A parameter TAXII 2.1 does not define for this request.
    #[error("unknown query parameter {name:?}")]
    UnknownParameter {
        /// The parameter's name.
        name: String,
    },
}

impl Query {
    /// Parses the query string pairs; the error names the parameter at fault.
    pub fn parse(pairs: &[(String, String)]) -> Result<Query, QueryError> {
        let mut q = Query {
            limit: DEFAULT_PAGE,
            ..Query::default()
        };
        for (key, value) in pairs {
            match key.as_str() {
                "added_after" => {
                    q.added_after = Some(parse_timestamp(value).ok_or(QueryError::AddedAfter)?);
                }
                "match[id]" => q.ids.extend(split(value)),
                "match[type]" => q.types.extend(split(value)),
                "limit" => {
                    let n: usize = value.parse().map_err(|_| QueryError::Limit)?;
                    if n == 0 {
                        return Err(QueryError::Limit);
                    }
                    q.limit = n.min(MAX_PAGE);
                }
                "next" => {
                    q.next = value.parse().map_err(|_| QueryError::Next)?;
                }
                // One version per object, in STIX 2.1.
                "match[version]" | "match[spec_version]" => {}
                other => {
                    return Err(QueryError::UnknownParameter {
                        name: other.to_owned(),
                    });
                }
            }
        }
        Ok(q)
    }
}

fn split(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// One page of a filtered collection.
#[derive(Debug, Clone)]
pub struct Page<'a> {
    /// The objects on it.
    pub items: Vec<&'a Stored>,
    /// Whether more follow.
    pub more: bool,
    /// The `next` token for the following page, if `more`.
    pub next: Option<String>,
}

/// The page `query` asks for.
pub fn page<'a>(objects: &'a [Stored], query: &Query) -> Page<'a> {
    let matching: Vec<&Stored> = objects
        .iter()
        .filter(|o| query.added_after.is_none_or(|t| o.added > t))
        .filter(|o| query.ids.is_empty() || query.ids.iter().any(|i| i == &o.id))
        .filter(|o| query.types.is_empty() || query.types.iter().any(|t| t == o.ty()))
        .collect();
    let start = query.next.min(matching.len());
    let end = start.saturating_add(query.limit).min(matching.len());
    let more = end < matching.len();
    Page {
        items: matching[start..end].to_vec(),
        more,
        next: more.then(|| end.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::stix::tests::{indicator, notice};

    fn community() -> Community {
        let mut a = notice(1, "TLP:CLEAR", Some(indicator()));
        a.filed_at = time::macros::datetime!(2025-03-01 10:00:00 UTC);
        let mut b = notice(2, "NL:STG-CONFIDENTIEEL;TLP=CLEAR", None);
        b.filed_at = time::macros::datetime!(2025-03-02 10:00:00 UTC);
        Community {
            id: "intel@bz".into(),
            max_label: "NL:STG-GEHEIM".into(),
            notices: vec![
                Shown {
                    notice: b,
                    organisation: "nctv".into(),
                },
                Shown {
                    notice: a,
                    organisation: "nctv".into(),
                },
            ],
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Query {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Query::parse(&pairs).unwrap()
    }

    #[test]
    fn pages_cover_every_object_once_in_order() {
        let objects = community().objects();
        assert!(
            objects
                .windows(2)
                .all(|w| (w[0].added, &w[0].id) < (w[1].added, &w[1].id))
        );
        let mut seen = Vec::new();
        let mut query = q(&[("limit", "3")]);
        loop {
            let p = page(&objects, &query);
            assert!(p.items.len() <= 3);
            seen.extend(p.items.iter().map(|o| o.id.clone()));
            match p.next {
                Some(next) => {
                    assert!(p.more);
                    query.next = next.parse().unwrap();
                }
                None => break,
            }
        }
        let all: Vec<String> = objects.iter().map(|o| o.id.clone()).collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn filters_select_by_time_id_and_type() {
        let objects = community().objects();
        let reports = page(&objects, &q(&[("match[type]", "report")]));
        assert_eq!(reports.items.len(), 2);
        let later = page(&objects, &q(&[("added_after", "2025-03-01T10:00:00.000Z")]));
        assert!(
            later
                .items
                .iter()
                .all(|o| o.added > time::macros::datetime!(2025-03-01 10:00:00 UTC))
        );
        assert!(!later.items.is_empty());
        let one = page(
            &objects,
            &q(&[(
                "match[id]",
                "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
            )]),
        );
        assert_eq!(one.items.len(), 1);
        assert_eq!(
            one.items[0].manifest()["version"],
            "2025-03-01T12:00:00.000Z"
        );
        assert_eq!(
            Query::parse(&[("limit".into(), "0".into())]),
            Err(QueryError::Limit)
        );
        let bogus = Query::parse(&[("bogus".into(), "1".into())]).unwrap_err();
        assert_eq!(bogus.to_string(), "unknown query parameter \"bogus\"");
        assert_eq!(q(&[("limit", "99999")]).limit, MAX_PAGE);
    }

    #[test]
    fn collection_ids_are_stable() {
        assert_eq!(collection_id("intel@bz"), community().collection_id());
        assert_ne!(collection_id("intel@bz"), collection_id("intel@nctv"));
    }
}

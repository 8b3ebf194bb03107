//! The TAXII 2.1 endpoints: discovery, the API root, collections, objects (GET and
//! POST), one object, the manifest and statuses. Every request passes [`guard`]
//! first: HTTP Basic authentication (401), an `Accept` of the TAXII media type
//! (406) and, for a POST, a `Content-Type` of it (415). Errors are TAXII error
//! messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as St};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use uuid::Uuid;

use super::collection::{self, Community, Query as TaxiiQuery, Stored};
use super::{API_ROOT, Filing, MAX_REQUEST, MAX_STATUSES, Refusal, State, TAXII_MEDIA_TYPE};
use crate::export::stix::{
    CLASSIFICATION_EXTENSION, KRING_IDENTITY, NOTICE_EXTENSION, label_of_marking, timestamp,
    tlp_of_marking_id,
};
use crate::export::validate::check_objects;
use crate::notice::{Category, MAX_TITLE};

type Shared = Arc<State>;

/// The service's routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/taxii2/", get(discovery))
        .route(API_ROOT, get(api_root))
        .route("/kring/collections/", get(collections))
        .route("/kring/collections/{id}/", get(collection))
        .route(
            "/kring/collections/{id}/objects/",
            get(objects).post(add_objects),
        )
        .route("/kring/collections/{id}/objects/{object}/", get(object))
        .route(
            "/kring/collections/{id}/objects/{object}/versions/",
            get(versions),
        )
        .route("/kring/collections/{id}/manifest/", get(manifest))
        .route("/kring/status/{id}/", get(status))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A TAXII response.
fn taxii(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, TAXII_MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A TAXII error message.
pub fn error(status: StatusCode, title: &str, description: impl Into<String>) -> Response {
    taxii(
        status,
        &json!({
            "title": title,
            "description": description.into(),
            "http_status": status.as_u16().to_string(),
        }),
    )
}

/// Whether a media type (with parameters) is TAXII 2.1; `any_version` also accepts
/// it without a version (the newest, which is 2.1).
fn is_taxii(media: &str, any_version: bool) -> bool {
    let mut parts = media.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("application/taxii+json"))
    {
        return false;
    }
    let mut version = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("version")
        {
            version = Some(v.trim().trim_matches('"').to_owned());
        }
    }
    match version {
        Some(v) => v == "2.1",
        None => any_version,
    }
}

fn accepts_taxii(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| is_taxii(m, true))
}

/// Decodes standard base64 (with padding).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

/// The user name and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let text = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

fn credential_digest(name: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&[0]);
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether the credentials are valid: verified before, or now with Argon2 off the
/// async threads (at most [`super::MAX_VERIFYING`] at once).
async fn authenticate(state: &Shared, name: String, password: String) -> bool {
    let digest = credential_digest(&name, &password);
    if let Ok(cache) = state.verified.lock()
        && cache.contains(&digest)
    {
        return true;
    }
    let Ok(_permit) = state.verifying.acquire().await else {
        return false;
    };
    let s = state.clone();
    let ok = tokio::task::spawn_blocking(move || s.users.verify(&name, &password))
        .await
        .unwrap_or(false);
    if ok && let Ok(mut cache) = state.verified.lock() {
        if cache.len() >= 64 {
            cache.pop_front();
        }
        cache.push_back(digest);
    }
    ok
}

/// Authentication and content negotiation, before any endpoint.
async fn guard(St(state): St<Shared>, request: Request, next: Next) -> Response {
    let authorised = match basic_credentials(request.headers()) {
        Some((name, password)) => authenticate(&state, name, password).await,
        None => false,
    };
    if !authorised {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "Authentication required",
            "give a user name and password of the service's users file (HTTP Basic)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kring\""),
        );
        return r;
    }
    if !accepts_taxii(request.headers()) {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            "Not acceptable",
            format!("this server answers only in {TAXII_MEDIA_TYPE}"),
        );
    }
    if request.method() == Method::POST {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_taxii(content_type, false) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                format!("send the envelope as {TAXII_MEDIA_TYPE}"),
            );
        }
    }
    next.run(request).await
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found", "no such TAXII resource")
}

/// `scheme://host` of the request (the Host header when it is a plain host name).
fn base(state: &State, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{}://{host}", state.scheme)
}

async fn discovery(St(state): St<Shared>, headers: HeaderMap) -> Response {
    let root = format!("{}{API_ROOT}", base(&state, &headers));
    taxii(
        StatusCode::OK,
        &json!({
            "title": "Kring",
            "description": "Notices of this user's Kring communities that may leave Kring",
            "default": root,
            "api_roots": [root],
        }),
    )
}

async fn api_root() -> Response {
    taxii(
        StatusCode::OK,
        &json!({
            "title": "Kring communities",
            "description": "One collection per community",
            "versions": [TAXII_MEDIA_TYPE],
            "max_content_length": MAX_REQUEST,
        }),
    )
}

/// The communities, or the error response.
async fn communities(state: &State) -> Result<Vec<Community>, Response> {
    state.snapshot().await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            e.to_string(),
        )
    })
}

/// The community of collection `id`, or 404.
async fn find(state: &State, id: &str) -> Result<Community, Response> {
    let wanted = Uuid::parse_str(id).ok();
    communities(state)
        .await?
        .into_iter()
        .find(|c| Some(c.collection_id()) == wanted)
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "Collection not found",
                format!("no collection {id}"),
            )
        })
}

async fn collections(St(state): St<Shared>) -> Response {
    match communities(&state).await {
        Ok(cs) => {
            let list: Vec<Value> = cs.iter().map(Community::resource).collect();
            if list.is_empty() {
                taxii(StatusCode::OK, &json!({}))
            } else {
                taxii(StatusCode::OK, &json!({ "collections": list }))
            }
        }
        Err(r) => r,
    }
}

async fn collection(St(state): St<Shared>, Path(id): Path<String>) -> Response {
    match find(&state, &id).await {
        Ok(c) => taxii(StatusCode::OK, &c.resource()),
        Err(r) => r,
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
fn parse_query(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<TaxiiQuery, Response> {
    let Query(pairs) = query.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!("query: {e}"),
        )
    })?;
    TaxiiQuery::parse(&pairs)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "Bad request", e.to_string()))
}

/// An envelope or manifest page with the date-added headers.
fn paged(
    items: &[&Stored],
    more: bool,
    next: Option<String>,
    key: &str,
    body: Vec<Value>,
) -> Response {
    let mut page = json!({ "more": more });
    if let Some(next) = next {
        page["next"] = next.into();
    }
    if !body.is_empty() {
        page[key] = body.into();
    }
    let mut r = taxii(StatusCode::OK, &page);
    if let (Some(first), Some(last)) = (items.first(), items.last()) {
        for (name, t) in [
            ("x-taxii-date-added-first", first.added),
            ("x-taxii-date-added-last", last.added),
        ] {
            if let Ok(v) = HeaderValue::from_str(&timestamp(t)) {
                r.headers_mut().insert(name, v);
            }
        }
    }
    r
}

async fn objects(
    St(state): St<Shared>,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let community = match find(&state, &id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let all = community.objects();
    let page = collection::page(&all, &query);
    let body = page.items.iter().map(|o| o.object.clone()).collect();
    paged(&page.items, page.more, page.next, "objects", body)
}

async fn object(
    St(state): St<Shared>,
    Path((id, object)): Path<(String, String)>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let mut query = match parse_query(query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let community = match find(&state, &id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    query.ids = vec![object.clone()];
    let all = community.objects();
    let page = collection::page(&all, &query);
    if page.items.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "Object not found",
            format!("no object {object} in collection {id}"),
        );
    }
    let body = page.items.iter().map(|o| o.object.clone()).collect();
    paged(&page.items, page.more, page.next, "objects", body)
}

/// The versions of one object: one, in STIX 2.1 as Kring keeps it.
async fn versions(
    St(state): St<Shared>,
    Path((id, object)): Path<(String, String)>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let mut query = match parse_query(query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let community = match find(&state, &id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    query.ids = vec![object.clone()];
    let all = community.objects();
    let page = collection::page(&all, &query);
    if page.items.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "Object not found",
            format!("no object {object} in collection {id}"),
        );
    }
    let body = page
        .items
        .iter()
        .map(|o| Value::from(o.version()))
        .collect();
    paged(&page.items, page.more, page.next, "versions", body)
}

async fn manifest(
    St(state): St<Shared>,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let community = match find(&state, &id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let all = community.objects();
    let page = collection::page(&all, &query);
    let body = page.items.iter().map(|o| o.manifest()).collect();
    paged(&page.items, page.more, page.next, "objects", body)
}

async fn status(St(state): St<Shared>, Path(id): Path<String>) -> Response {
    let wanted = Uuid::parse_str(&id).ok();
    let found = state.statuses.lock().ok().and_then(|s| {
        s.iter()
            .find(|(sid, _)| Some(*sid) == wanted)
            .map(|(_, v)| v.clone())
    });
    match found {
        Some(v) => taxii(StatusCode::OK, &v),
        None => error(
            StatusCode::NOT_FOUND,
            "Status not found",
            format!("no status {id}"),
        ),
    }
}

/// What a posted envelope files: the label, and the notice's parts.
pub fn filing_from(community: &str, objects: &[Value]) -> Result<Filing, Refusal> {
    check_objects(objects).map_err(|e| Refusal::Invalid(e.to_string()))?;
    // The classification markings defined in the envelope, by id.
    let labels: BTreeMap<&str, &str> = objects
        .iter()
        .filter_map(|o| Some((o.get("id")?.as_str()?, label_of_marking(o)?)))
        .collect();
    let mut used = BTreeSet::new();
    let mut colours = BTreeSet::new();
    for o in objects {
        for r in o
            .get("object_marking_refs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(label) = labels.get(r) {
                used.insert(*label);
            }
            if let Some(colour) = tlp_of_marking_id(r) {
                colours.insert(colour);
            }
        }
    }
    let label = match used.len() {
        0 => {
            return Err(Refusal::Invalid(format!(
                "no object carries a Kring classification marking (a marking definition with \
                 extension {CLASSIFICATION_EXTENSION}, included in the envelope); the notice's \
                 label is taken from it"
            )));
        }
        1 => used.iter().next().copied().unwrap_or_default().to_owned(),
        _ => {
            return Err(Refusal::Invalid(format!(
                "the objects carry different classification labels ({}); post the objects of \
                 one notice at a time",
                used.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let parsed: kring_policy::Label = label
        .parse()
        .map_err(|e| Refusal::Invalid(format!("classification label {label:?}: {e}")))?;
    // The TLP of the label, else the strictest TLP marking on the objects.
    let label = match (parsed.tlp(), colours.last()) {
        (None, Some(colour)) => format!("{parsed};TLP={colour}"),
        _ => parsed.to_string(),
    };
    let dropped = |o: &Value| {
        let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
        label_of_marking(o).is_some()
            || tlp_of_marking_id(id).is_some()
            || [CLASSIFICATION_EXTENSION, NOTICE_EXTENSION, KRING_IDENTITY].contains(&id)
            || id.starts_with("extension-definition--60a3c5c5-")
    };
    let dropped_ids: BTreeSet<&str> = objects
        .iter()
        .filter(|o| dropped(o))
        .filter_map(|o| o.get("id")?.as_str())
        .collect();
    let mut stix = Vec::new();
    for o in objects.iter().filter(|o| !dropped(o)) {
        let mut o = o.clone();
        if let Some(refs) = o
            .get_mut("object_marking_refs")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| r.as_str().is_none_or(|r| !dropped_ids.contains(r)));
            if refs.is_empty()
                && let Some(map) = o.as_object_mut()
            {
                map.remove("object_marking_refs");
            }
        }
        stix.push(o);
    }
    let report = stix
        .iter()
        .find(|o| o.get("type").and_then(Value::as_str) == Some("report"));
    let text = |k: &str| {
        report
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut title = text("name").unwrap_or_else(|| "STIX objects received over TAXII".into());
    if title.len() > MAX_TITLE {
        let mut cut = MAX_TITLE;
        while !title.is_char_boundary(cut) {
            cut -= 1;
        }
        title.truncate(cut);
    }
    let category = report
        .and_then(|r| r.pointer(&format!("/extensions/{NOTICE_EXTENSION}/category")))
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .unwrap_or(Category::Cyber);
    Ok(Filing {
        community: community.to_owned(),
        label,
        title,
        body: text("description").unwrap_or_default(),
        category,
        stix,
    })
}

async fn add_objects(
    St(state): St<Shared>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                format!("at most {MAX_REQUEST} bytes per request"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "Bad request", e.body_text()),
    };
    let community = match find(&state, &id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let envelope: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Bad request",
                format!("not a JSON envelope: {e}"),
            );
        }
    };
    let Some(objects) = envelope.get("objects").and_then(Value::as_array) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "No objects",
            "the envelope has no \"objects\" list",
        );
    };
    if objects.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "No objects",
            "the envelope's \"objects\" list is empty",
        );
    }
    let result = match filing_from(&community.id, objects) {
        Ok(filing) => match filing.label.parse::<kring_policy::Label>() {
            Ok(label) => {
                let fits = kring_policy::within(&label, &state.max_label);
                if fits.allowed {
                    state.file(filing).await
                } else {
                    Err(Refusal::Policy(format!(
                        "the label is not within this service's --max-label: {fits}"
                    )))
                }
            }
            Err(e) => Err(Refusal::Invalid(format!("label {:?}: {e}", filing.label))),
        },
        Err(r) => Err(r),
    };
    match result {
        Ok(_notice) => {
            let status_id = Uuid::new_v4();
            let now = timestamp(time::OffsetDateTime::now_utc());
            let successes: Vec<Value> = objects
                .iter()
                .map(|o| {
                    let version = ["modified", "created"]
                        .iter()
                        .find_map(|k| o.get(*k).and_then(Value::as_str))
                        .unwrap_or(&now)
                        .to_owned();
                    json!({"id": o.get("id"), "version": version})
                })
                .collect();
            let status = json!({
                "id": status_id,
                "status": "complete",
                "request_timestamp": now,
                "total_count": objects.len(),
                "success_count": objects.len(),
                "successes": successes,
                "failure_count": 0,
                "pending_count": 0,
            });
            if let Ok(mut s) = state.statuses.lock() {
                if s.len() >= MAX_STATUSES {
                    s.pop_front();
                }
                s.push_back((status_id, status.clone()));
            }
            taxii(StatusCode::ACCEPTED, &status)
        }
        Err(Refusal::Policy(reason)) => error(StatusCode::FORBIDDEN, "Refused by policy", reason),
        Err(Refusal::Invalid(reason)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "Objects refused", reason)
        }
        Err(Refusal::Unavailable(reason)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "Not filed", reason)
        }
    }
}

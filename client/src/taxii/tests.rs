//! The TAXII endpoints over a stand-in device (tower `oneshot`, no sockets).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::collection::{Community, Shown};
use super::users::Users;
use super::{Call, Filing, MAX_REQUEST, State, TAXII_MEDIA_TYPE, router};
use crate::export::stix::tests::{indicator, notice};
use crate::export::stix::{Exported, bundle, classification_marking, tlp_marking_id};

const AUTH: &str = "Basic bWlzcDpzM2NyZXQ="; // misp:s3cret

fn users() -> Users {
    let mut u = Users::default();
    u.set("misp", "s3cret").unwrap();
    u
}

fn community() -> Community {
    let notices = (1..=3u128)
        .map(|i| {
            let mut n = notice(i, "NL:STG-CONFIDENTIEEL;TLP=CLEAR", Some(indicator()));
            n.filed_at += time::Duration::hours(i as i64);
            Shown {
                notice: n,
                organisation: "nctv".into(),
            }
        })
        .collect();
    Community {
        id: "intel@bz".into(),
        max_label: "NL:STG-GEHEIM".into(),
        notices,
    }
}

/// The service over a device that has `community()` and records what is filed.
fn service() -> (Router, Arc<Mutex<Vec<Filing>>>) {
    service_with(false)
}

fn service_with(tls: bool) -> (Router, Arc<Mutex<Vec<Filing>>>) {
    let (tx, mut rx) = mpsc::channel(4);
    let filed = Arc::new(Mutex::new(Vec::new()));
    let record = filed.clone();
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            match call {
                Call::Snapshot(reply) => {
                    let _ = reply.send(Ok(vec![community()]));
                }
                Call::File(filing, reply) => {
                    record.lock().unwrap().push(filing);
                    let _ = reply.send(Ok(uuid::Uuid::new_v4()));
                }
            }
        }
    });
    let max = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    (router(Arc::new(State::new(users(), max, tx, tls))), filed)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, AUTH)
        .header(header::ACCEPT, TAXII_MEDIA_TYPE)
        .header(header::HOST, "127.0.0.1:9999")
        .body(Body::empty())
        .unwrap()
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::AUTHORIZATION, AUTH)
        .header(header::ACCEPT, TAXII_MEDIA_TYPE)
        .header(header::CONTENT_TYPE, TAXII_MEDIA_TYPE)
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn objects_uri(extra: &str) -> String {
    format!(
        "/kring/collections/{}/objects/{extra}",
        community().collection_id()
    )
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let (app, _) = service();
    let mut r = get("/taxii2/");
    r.headers_mut().remove(header::AUTHORIZATION);
    let (status, headers, body) = call(&app, r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(headers[header::CONTENT_TYPE], TAXII_MEDIA_TYPE);
    assert_eq!(body["http_status"], "401");

    let mut r = get("/taxii2/");
    r.headers_mut().insert(
        header::AUTHORIZATION,
        "Basic bWlzcDp3cm9uZw==".parse().unwrap(), // misp:wrong
    );
    assert_eq!(call(&app, r).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call(&app, get("/taxii2/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["api_roots"], json!(["http://127.0.0.1:9999/kring/"]));
}

#[tokio::test]
async fn other_media_types_get_406_and_415() {
    let (app, filed) = service();
    for accept in [
        "application/json",
        "*/*",
        "application/taxii+json;version=2.0",
    ] {
        let mut r = get("/taxii2/");
        r.headers_mut()
            .insert(header::ACCEPT, accept.parse().unwrap());
        let (status, _, body) = call(&app, r).await;
        assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{accept}");
        assert_eq!(body["http_status"], "406");
    }
    let mut r = get("/taxii2/");
    r.headers_mut().remove(header::ACCEPT);
    assert_eq!(call(&app, r).await.0, StatusCode::NOT_ACCEPTABLE);
    let mut r = get("/taxii2/");
    r.headers_mut()
        .insert(header::ACCEPT, "application/taxii+json".parse().unwrap());
    assert_eq!(call(&app, r).await.0, StatusCode::OK);

    let mut r = post(&objects_uri(""), &json!({"objects": []}));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let (status, _, body) = call(&app, r).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["http_status"], "415");
    assert!(filed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn collections_and_pages_of_objects() {
    let (app, _) = service();
    let (status, _, body) = call(&app, get("/kring/collections/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["collections"][0]["id"],
        community().collection_id().to_string()
    );
    assert_eq!(body["collections"][0]["title"], "intel@bz");

    let all: Vec<String> = community().objects().into_iter().map(|o| o.id).collect();
    let mut seen = Vec::new();
    let mut uri = objects_uri("?limit=4");
    loop {
        let (status, headers, body) = call(&app, get(&uri)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], TAXII_MEDIA_TYPE);
        assert!(headers.contains_key("x-taxii-date-added-first"));
        let page = body["objects"].as_array().unwrap();
        assert!(page.len() <= 4);
        seen.extend(page.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        if body["more"] == true {
            uri = objects_uri(&format!("?limit=4&next={}", body["next"].as_str().unwrap()));
        } else {
            assert!(body.get("next").is_none());
            break;
        }
    }
    assert_eq!(seen, all);

    let (_, _, body) = call(&app, get(&objects_uri("?match[type]=report"))).await;
    assert_eq!(body["objects"].as_array().unwrap().len(), 3);
    let (_, _, body) = call(&app, get(&objects_uri("?match[type]=indicator,report"))).await;
    assert_eq!(body["objects"].as_array().unwrap().len(), 4);
    let later = "2025-03-01T14:30:00.000Z";
    let (_, _, body) = call(&app, get(&objects_uri(&format!("?added_after={later}")))).await;
    let reports: Vec<&Value> = body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "report")
        .collect();
    assert_eq!(reports.len(), 1, "only the third notice is later");

    let manifest = format!(
        "/kring/collections/{}/manifest/?match[type]=indicator",
        community().collection_id()
    );
    let (status, _, body) = call(&app, get(&manifest)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["objects"][0]["id"],
        "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    );
    assert_eq!(
        body["objects"][0]["media_type"],
        "application/stix+json;version=2.1"
    );

    let (status, _, _) = call(&app, get(&objects_uri("?limit=0"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = call(
        &app,
        get("/kring/collections/00000000-0000-4000-8000-000000000000/objects/"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["http_status"], "404");
    let (status, _, _) = call(
        &app,
        get(&objects_uri(
            "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f/",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(
        &app,
        get(&objects_uri(
            "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f/versions/",
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"], json!(["2025-03-01T12:00:00.000Z"]));
}

/// An envelope as a platform would post it back: a report and an indicator marked
/// with a Kring classification marking (and TLP).
fn envelope(label: &str) -> Value {
    let n = notice(9, label, Some(indicator()));
    let b = bundle(&[Exported {
        notice: &n,
        organisation: "bz",
    }]);
    json!({ "objects": b["objects"] })
}

#[tokio::test]
async fn a_posted_envelope_is_filed_with_its_classification_label() {
    let (app, filed) = service();
    let (status, _, body) = call(
        &app,
        post(
            &objects_uri(""),
            &envelope("NL:DEP-VERTROUWELIJK;TLP=GREEN"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "complete");
    let status_uri = format!("/kring/status/{}/", body["id"].as_str().unwrap());
    let (status, _, again) = call(&app, get(&status_uri)).await;
    assert_eq!((status, &again), (StatusCode::OK, &body));
    {
        let filed = filed.lock().unwrap();
        assert_eq!(filed.len(), 1);
        let f = &filed[0];
        assert_eq!(f.community, "intel@bz");
        assert_eq!(f.label, "NL:DEP-VERTROUWELIJK;TLP=GREEN");
        assert_eq!(f.title, "Notice 9");
        // The markings are the notice's label now; the content travels.
        assert!(f.stix.iter().all(|o| o["type"] != "marking-definition"));
        assert!(f.stix.iter().any(|o| o["type"] == "indicator"));
        assert!(
            f.stix
                .iter()
                .all(|o| o.get("object_marking_refs").is_none())
        );
    }

    // A label above the service's --max-label.
    let (status, _, body) = call(&app, post(&objects_uri(""), &envelope("NL:STG-GEHEIM"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("--max-label")
    );

    // No classification marking: only TLP.
    let mut ind = indicator()[0].clone();
    ind["object_marking_refs"] = json!([tlp_marking_id(kring_policy::Tlp::Green)]);
    let (status, _, body) = call(&app, post(&objects_uri(""), &json!({"objects": [ind]}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("classification marking")
    );

    // Two different labels.
    let a: kring_policy::Label = "TLP:GREEN".parse().unwrap();
    let b: kring_policy::Label = "NL:DEP-VERTROUWELIJK".parse().unwrap();
    let (ma, mb) = (classification_marking(&a), classification_marking(&b));
    let mut i1 = indicator()[0].clone();
    i1["object_marking_refs"] = json!([ma["id"]]);
    let mut i2 = indicator()[0].clone();
    i2["id"] = json!("indicator--0c7b5b88-8ff7-4a4d-aa9d-feb398cd0061");
    i2["object_marking_refs"] = json!([mb["id"]]);
    let (status, _, body) = call(
        &app,
        post(&objects_uri(""), &json!({"objects": [ma, mb, i1, i2]})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // An invalid object.
    let mut bad = indicator()[0].clone();
    bad.as_object_mut().unwrap().remove("pattern");
    let (status, _, body) = call(&app, post(&objects_uri(""), &json!({"objects": [bad]}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["description"].as_str().unwrap().contains("pattern"));
    assert_eq!(filed.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_label_without_tlp_takes_the_tlp_marking_of_the_objects() {
    let label: kring_policy::Label = "NL:DEP-VERTROUWELIJK".parse().unwrap();
    let marking = classification_marking(&label);
    let mut ind = indicator()[0].clone();
    ind["object_marking_refs"] = json!([marking["id"], tlp_marking_id(kring_policy::Tlp::Amber)]);
    let filing = super::routes::filing_from("intel@bz", &[marking, ind]).unwrap();
    assert_eq!(filing.label, "NL:DEP-VERTROUWELIJK;TLP=AMBER");
    assert_eq!(filing.title, "STIX objects received over TAXII");
}

#[tokio::test]
async fn oversized_requests_get_413() {
    let (app, filed) = service();
    let big = json!({"objects": [{"type": "note", "content": "x".repeat(MAX_REQUEST)}]});
    let (status, _, body) = call(&app, post(&objects_uri(""), &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["http_status"], "413");
    assert!(filed.lock().unwrap().is_empty());
}

#[test]
fn plain_http_only_on_loopback() {
    use std::net::SocketAddr;
    let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let lo6: SocketAddr = "[::1]:9000".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
    assert!(super::check_listen(&lo, false).is_ok());
    assert!(super::check_listen(&lo6, false).is_ok());
    let err = super::check_listen(&any, false).unwrap_err();
    assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
    assert!(err.to_string().contains("--tls-cert"));
    assert!(super::check_listen(&any, true).is_ok());
}

/// Away from loopback the service speaks HTTPS: the listener hands axum only
/// connections whose TLS handshake completed, and plain HTTP gets no answer.
#[tokio::test]
async fn the_tls_listener_serves_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let config = super::tls::config(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, _) = service_with(true);
    tokio::spawn(axum::serve(super::tls::TlsListener::new(listener, config), app).into_future());

    // Plain HTTP: the handshake fails, nothing is served.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET /taxii2/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\n\
         Accept: {TAXII_MEDIA_TYPE}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("https://localhost/kring/"), "{text}");
}

#[test]
fn the_command_line_takes_tls_as_a_pair() {
    use clap::Parser;

    use crate::cli::args::{Cli, Command, TaxiiCommand};
    let parse = |extra: &[&str]| {
        let mut args = vec![
            "kring",
            "taxii",
            "serve",
            "--listen",
            "127.0.0.1:9443",
            "--max-label",
            "NL:STG-CONFIDENTIEEL",
            "--users",
            "u",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    };
    match parse(&[]).unwrap().command {
        Command::Taxii(TaxiiCommand::Serve {
            listen, tls_cert, ..
        }) => {
            assert_eq!(listen.port(), 9443);
            assert!(tls_cert.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(parse(&["--tls-cert", "c.pem"]).is_err());
    assert!(parse(&["--tls-key", "k.pem"]).is_err());
    assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_ok());
    assert!(Cli::try_parse_from(["kring", "taxii", "passwd", "f"]).is_err());
    assert!(Cli::try_parse_from(["kring", "taxii", "passwd", "f", "misp"]).is_ok());
}

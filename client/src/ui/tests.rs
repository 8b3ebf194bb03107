//! Handler-level tests of the local interface: the security checks and the pages,
//! with a device answering from fixed data.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tokio::sync::mpsc;
use tower::ServiceExt;
use uuid::Uuid;

use super::view::{
    Action, AddCheck, AuditView, Call, CommunityView, Done, MemberProfile, MembersView, NoticeView,
    Problem, SavedFile, Snapshot,
};
use super::{State, check_listen, router};
use crate::notice::{Category, Notice, NoticeKind};

const ADDR: &str = "127.0.0.1:4711";
const HOST: &str = "127.0.0.1:4711";
const ORIGIN: &str = "http://127.0.0.1:4711";

fn notice(n: u128, label: &str, title: &str) -> NoticeView {
    NoticeView {
        notice: Notice {
            id: Uuid::from_u128(n),
            community: "liaison@bz".into(),
            label: label.into(),
            kind: NoticeKind::Notice,
            category: Category::Cyber,
            title: title.into(),
            body: format!("body of {title}"),
            sender: "anna@bz".into(),
            filed_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + n as i64).unwrap(),
            in_reply_to: None,
            stix: None,
            forwarded_from: None,
            attachments: Vec::new(),
        },
        seq: Some(n as u64),
        own: false,
        refused: None,
    }
}

fn with_attachment(mut n: NoticeView) -> NoticeView {
    n.notice.attachments = vec![crate::notice::Attachment {
        name: "kaart \"oost\".pdf".into(),
        size: 14,
        sha256: "ab".repeat(32),
        blob: "cd".repeat(32),
        key: "ef".repeat(32),
    }];
    n
}

fn snapshot(org_admin: bool) -> Snapshot {
    Snapshot {
        user: "anna@bz".into(),
        relay: "bz".into(),
        clearance: Some("NL:STG-GEHEIM".into()),
        org_admin,
        communities: vec![CommunityView {
            id: "liaison@bz".into(),
            max_label: "NL:DEP-VERTROUWELIJK".into(),
        }],
        notices: vec![
            with_attachment(notice(2, "NL:DEP-VERTROUWELIJK", "Phishing wave")),
            notice(1, "NL:ONGERUBRICEERD", "Open report"),
        ],
        offline: None,
    }
}

/// A file the fake device was given with a filing: its name and content.
type Upload = (String, Vec<u8>);

/// A served interface with a fake device; the actions it was asked to take.
struct Ui {
    app: Router,
    state: Arc<State>,
    actions: Arc<Mutex<Vec<Action>>>,
    /// The files the device saw with a filing (name, content).
    uploads: Arc<Mutex<Vec<Upload>>>,
}

fn ui_with(snap: Snapshot) -> Ui {
    let addr: SocketAddr = ADDR.parse().unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let state = Arc::new(State::new(addr, tx));
    let actions = Arc::new(Mutex::new(Vec::new()));
    let seen = actions.clone();
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let uploaded = uploads.clone();
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            match call {
                Call::Snapshot(r) => {
                    let _ = r.send(Ok(snap.clone()));
                }
                Call::Members(id, r) => {
                    let _ = r.send(if id == "liaison@bz" {
                        Ok(MembersView {
                            id,
                            max_label: "NL:DEP-VERTROUWELIJK".into(),
                            members: vec!["anna@bz".into(), "bert@nctv".into()],
                            admins: vec!["anna@bz".into()],
                            profiles: vec![MemberProfile {
                                id: "bert@nctv".into(),
                                organisation: "nctv".into(),
                                clearance: Some("NL:STG-GEHEIM".into()),
                            }],
                        })
                    } else {
                        Err(Problem::new(
                            "You are not a member of that community.",
                            "Ask one of its admins to add you.",
                        ))
                    });
                }
                Call::PreviewAdd(community, user, r) => {
                    // cees may not join; everyone else may.
                    let refusal = (user == "cees@bz")
                        .then(|| "clearance level DEP-VERTROUWELIJK is below STG-GEHEIM".into());
                    let _ = r.send(Ok(AddCheck {
                        community,
                        clearance: Some("NL:DEP-VERTROUWELIJK".into()),
                        organisation: "bz".into(),
                        max_label: "NL:STG-GEHEIM".into(),
                        refusal,
                        user,
                    }));
                }
                Call::Audit(r) => {
                    let _ = r.send(Ok(AuditView {
                        relay: "bz".into(),
                        total: 0,
                        records: Vec::new(),
                        verdict: "audit chain intact: 0 records".into(),
                        intact: true,
                    }));
                }
                Call::Attachment(id, n, r) => {
                    // The device opens the file into a scratch directory of its own.
                    let _ = r.send(if n == 0 && id == Uuid::from_u128(2) {
                        let dir = tempfile::tempdir().unwrap().keep();
                        let path = dir.join("kaart \"oost\".pdf");
                        std::fs::write(&path, b"%PDF-1.7 kaart").unwrap();
                        Ok(SavedFile {
                            path,
                            dir,
                            name: "kaart \"oost\".pdf".into(),
                            size: 14,
                        })
                    } else {
                        Err(Problem::new(
                            "The notice has no such attachment.",
                            "Go back to the notice.",
                        ))
                    });
                }
                Call::Act(action, r) => {
                    if let Action::File { attachments, .. } = &action {
                        for path in attachments {
                            let name = path.file_name().unwrap().to_string_lossy().into_owned();
                            uploaded
                                .lock()
                                .unwrap()
                                .push((name, std::fs::read(path).unwrap()));
                        }
                    }
                    seen.lock().unwrap().push(action);
                    let _ = r.send(Ok(Done {
                        message: "Filed: ordered by the hub bz as #3.".into(),
                        notice: Some(Uuid::from_u128(2)),
                    }));
                }
            }
        }
    });
    Ui {
        app: router(state.clone()),
        state,
        actions,
        uploads,
    }
}

impl Ui {
    async fn send(&self, request: Request<Body>) -> axum::response::Response {
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn login(&self) -> String {
        let token = self.state.security.issue_token();
        let r = self
            .send(
                get(&format!("/login?token={token}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        cookie.split(';').next().unwrap().to_string()
    }

    async fn page(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let r = self
            .send(
                get(path)
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let status = r.status();
        (status, text(r).await)
    }

    /// Posts the "New notice" form with `fields` and `files`.
    async fn post_new(
        &self,
        cookie: &str,
        fields: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> (StatusCode, String) {
        let (content_type, body) = multipart(fields, files);
        let r = self
            .send(
                Request::post("/new")
                    .header(header::HOST, HOST)
                    .header(header::ORIGIN, ORIGIN)
                    .header(header::COOKIE, cookie)
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        let body = text(r).await;
        (status, location.unwrap_or(body))
    }

    async fn post(&self, cookie: &str, path: &str, form: &str) -> (StatusCode, String) {
        let r = self
            .send(
                Request::post(path)
                    .header(header::HOST, HOST)
                    .header(header::ORIGIN, ORIGIN)
                    .header(header::COOKIE, cookie)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(form.to_string()))
                    .unwrap(),
            )
            .await;
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        let body = text(r).await;
        (status, location.unwrap_or(body))
    }
}

/// A `multipart/form-data` body of `fields` and `files` (name, content), and its
/// content type.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kring-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    for (file_name, content) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"attach\"; filename=\"{file_name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header(header::HOST, HOST)
}

async fn text(r: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 4 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn without_a_session_every_request_is_401_with_no_content() {
    let ui = ui_with(snapshot(false));
    for path in ["/", "/new", "/admin", "/events", "/static/live.js", "/nope"] {
        let r = ui.send(get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(text(r).await.is_empty(), "{path}");
    }
    // A forged cookie is no session.
    let r = ui
        .send(
            get("/")
                .header(header::COOKIE, "kring_session=00")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_token_is_swapped_once_for_a_strict_http_only_cookie() {
    let ui = ui_with(snapshot(false));
    let token = ui.state.security.issue_token();
    let r = ui
        .send(
            get(&format!("/login?token={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let again = ui
        .send(
            get(&format!("/login?token={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "single use");
    let wrong = ui
        .send(get("/login?token=guess").body(Body::empty()).unwrap())
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_foreign_host_is_refused_even_with_a_session() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    for host in ["evil.example:4711", "127.0.0.1:4712", "localhost"] {
        let r = ui
            .send(
                Request::get("/")
                    .header(header::HOST, host)
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    let r = ui
        .send(
            Request::get("/")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "no Host");
    let (status, _) = ui.page(&cookie, "/").await;
    assert_eq!(status, StatusCode::OK);
    let r = ui
        .send(
            Request::get("/")
                .header(header::HOST, "localhost:4711")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_state_change_needs_the_servers_own_origin() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let form = "community=liaison%40bz&label=NL%3ADEP-VERTROUWELIJK&category=cyber&title=t&body=b";
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let mut request = Request::post("/new")
            .header(header::HOST, HOST)
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            request = request.header(header::ORIGIN, o);
        }
        let r = ui.send(request.body(Body::from(form)).unwrap()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?}");
    }
    assert!(ui.actions.lock().unwrap().is_empty(), "nothing was filed");
    let fields = [
        ("community", "liaison@bz"),
        ("label", "NL:DEP-VERTROUWELIJK"),
        ("category", "cyber"),
        ("title", "t"),
        ("body", "b"),
    ];
    let (status, location) = ui.post_new(&cookie, &fields, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with(&format!("/notice/{}", Uuid::from_u128(2))),
        "{location}"
    );
    assert_eq!(
        ui.actions.lock().unwrap().as_slice(),
        &[Action::File {
            community: "liaison@bz".into(),
            label: "NL:DEP-VERTROUWELIJK".into(),
            category: Category::Cyber,
            title: "t".into(),
            body: "b".into(),
            attachments: Vec::new(),
        }]
    );
}

#[tokio::test]
async fn files_chosen_in_the_form_go_with_the_notice_and_are_removed_after() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let (_, form) = ui.page(&cookie, "/new").await;
    assert!(form.contains(r#"enctype="multipart/form-data""#));
    assert!(form.contains(r#"type="file""#) && form.contains(">Attachments</label>"));
    let fields = [
        ("community", "liaison@bz"),
        ("label", "NL:DEP-VERTROUWELIJK"),
        ("category", "cyber"),
        ("title", "met kaart"),
        ("body", "zie bijlage"),
    ];
    let files: [(&str, &[u8]); 2] = [("kaart.pdf", b"%PDF-1.7 kaart"), ("lijst.csv", b"a,b\n")];
    let (status, _) = ui.post_new(&cookie, &fields, &files).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The device saw both files, by name and content, while the filing ran.
    assert_eq!(
        ui.uploads.lock().unwrap().as_slice(),
        &[
            ("kaart.pdf".to_string(), b"%PDF-1.7 kaart".to_vec()),
            ("lijst.csv".to_string(), b"a,b\n".to_vec())
        ]
    );
    let attachments = match ui.actions.lock().unwrap().first() {
        Some(Action::File { attachments, .. }) => attachments.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        attachments.iter().all(|p| !p.exists()),
        "removed after filing"
    );
    // A file name that is no plain file name is refused before anything is sent.
    let (status, page) = ui.post_new(&cookie, &fields, &[(".verborgen", b"x")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("must not start with a dot"), "{page}");
    assert_eq!(
        ui.actions.lock().unwrap().len(),
        1,
        "nothing more was filed"
    );
}

#[tokio::test]
async fn every_response_has_a_strict_csp_and_no_cors() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    for r in [
        ui.send(get("/").body(Body::empty()).unwrap()).await,
        ui.send(
            get("/")
                .header(header::COOKIE, &cookie)
                .header(header::ORIGIN, "http://evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
    ] {
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(
            r.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
    }
    let (_, page) = ui.page(&cookie, "/").await;
    assert!(!page.contains("<script>"), "no inline script");
    assert!(page.contains(r#"<script src="/static/live.js""#));
}

#[tokio::test]
async fn the_inbox_is_newest_first_marked_with_the_highest_label() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let (status, page) = ui.page(&cookie, "/").await;
    assert_eq!(status, StatusCode::OK);
    let first = page.find("Phishing wave").unwrap();
    let second = page.find("Open report").unwrap();
    assert!(first < second, "newest first");
    assert_eq!(
        page.matches(">NL:DEP-VERTROUWELIJK</div>").count(),
        2,
        "top and bottom banner"
    );
    assert!(page.contains("unread"));
    assert!(page.contains("New notice"));
    // Search by label leaves only the unclassified notice and lowers the banner.
    let (_, found) = ui
        .page(&cookie, "/?q=&category=&label=NL%3AONGERUBRICEERD")
        .await;
    assert!(!found.contains("Phishing wave"));
    assert!(found.contains("Open report"));
    assert_eq!(found.matches(">NL:ONGERUBRICEERD</div>").count(), 2);
    let (_, by_text) = ui.page(&cookie, "/?q=phishing").await;
    assert!(by_text.contains("Phishing wave") && !by_text.contains("Open report"));
    let (_, by_category) = ui.page(&cookie, "/?category=espionage").await;
    assert!(!by_category.contains("Phishing wave") && by_category.contains("No notices."));
}

#[tokio::test]
async fn a_notice_is_forwarded_from_its_page_with_optional_fields_left_out() {
    let mut snap = snapshot(false);
    let ui = ui_with(snap.clone());
    let cookie = ui.login().await;
    let path = format!("/notice/{}", Uuid::from_u128(2));
    let (_, page) = ui.page(&cookie, &path).await;
    assert!(
        page.contains("no other community to forward"),
        "one community only: nowhere to forward to"
    );
    snap.communities.push(CommunityView {
        id: "cert@nctv".into(),
        max_label: "NL:STG-GEHEIM".into(),
    });
    let ui = ui_with(snap);
    let cookie = ui.login().await;
    let (_, page) = ui.page(&cookie, &path).await;
    assert!(page.contains(r#"<option value="cert@nctv">"#), "{page}");
    assert!(
        !page.contains(r#"<option value="liaison@bz">"#),
        "not into its own community"
    );
    let (status, _) = ui
        .post(
            &cookie,
            &format!("{path}/forward"),
            "to=cert%40nctv&label=&comment=++",
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        ui.actions.lock().unwrap().last(),
        Some(&Action::Forward {
            id: Uuid::from_u128(2),
            to: "cert@nctv".into(),
            label: None,
            comment: None,
        })
    );
    ui.post(
        &cookie,
        &format!("{path}/forward"),
        "to=cert%40nctv&label=NL%3ASTG-GEHEIM&comment=for+the+CERT",
    )
    .await;
    assert_eq!(
        ui.actions.lock().unwrap().last(),
        Some(&Action::Forward {
            id: Uuid::from_u128(2),
            to: "cert@nctv".into(),
            label: Some("NL:STG-GEHEIM".into()),
            comment: Some("for the CERT".into()),
        })
    );
}

#[tokio::test]
async fn a_notice_page_carries_its_label_top_and_bottom_and_is_then_read() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let (status, page) = ui
        .page(&cookie, &format!("/notice/{}", Uuid::from_u128(2)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches(">NL:DEP-VERTROUWELIJK</div>").count(), 2);
    assert!(page.contains("body of Phishing wave"));
    assert!(page.contains("Send reply"));
    let (_, inbox) = ui.page(&cookie, "/").await;
    assert_eq!(
        inbox.matches(r#"class="tag""#).count(),
        1,
        "one left unread"
    );
    let (status, missing) = ui
        .page(&cookie, &format!("/notice/{}", Uuid::from_u128(9)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing.contains("not on this device"));
}

#[tokio::test]
async fn attachments_are_listed_and_handed_over_as_downloads_only() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let id = Uuid::from_u128(2);
    let (_, page) = ui.page(&cookie, &format!("/notice/{id}")).await;
    assert!(page.contains(r#"id="attachments""#), "{page}");
    assert!(page.contains(&format!(r#"href="/notice/{id}/attachment/0""#)));
    assert!(page.contains("kaart &quot;oost&quot;.pdf"), "{page}");
    assert!(!page.contains(&"ef".repeat(32)), "the key is never shown");
    let r = ui
        .send(
            get(&format!("/notice/{id}/attachment/0"))
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(
        h[header::CONTENT_DISPOSITION],
        "attachment; filename=\"kaart _oost_.pdf\"; filename*=UTF-8''kaart%20%22oost%22.pdf"
    );
    assert!(h.contains_key("content-security-policy"));
    assert_eq!(text(r).await, "%PDF-1.7 kaart");
    let (_, missing) = ui
        .page(&cookie, &format!("/notice/{id}/attachment/3"))
        .await;
    assert!(missing.contains("no such attachment"), "{missing}");
}

#[tokio::test]
async fn the_new_notice_form_offers_only_allowed_labels_and_explains_a_refusal() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let (_, form) = ui.page(&cookie, "/new").await;
    for label in ["Community", "Label", "Category", "Title", "Body"] {
        assert!(form.contains(&format!(">{label}</label>")), "{label}");
    }
    assert!(form.contains(">File notice</button>"));
    assert!(form.contains(r#"<option value="NL:DEP-VERTROUWELIJK">"#));
    assert!(
        !form.contains(r#"<option value="NL:STG-GEHEIM">"#),
        "above the maximum"
    );
    let fields = [
        ("community", "liaison@bz"),
        ("label", "NL:STG-GEHEIM"),
        ("category", "cyber"),
        ("title", "t"),
        ("body", "b"),
    ];
    let (status, refused) = ui.post_new(&cookie, &fields, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.contains("nothing was sent"), "{refused}");
    assert!(
        refused.contains("maximum label NL:DEP-VERTROUWELIJK"),
        "{refused}"
    );
    assert!(
        ui.actions.lock().unwrap().is_empty(),
        "refused before sending"
    );
}

#[tokio::test]
async fn members_and_admin_pages() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let (_, members) = ui.page(&cookie, "/members/liaison@bz").await;
    assert!(members.contains("bert@nctv") && members.contains("<td>nctv</td>"));
    assert!(
        members.contains(">NL:STG-GEHEIM</span>"),
        "a member's clearance is shown"
    );
    assert!(
        members.contains("not yet known"),
        "a member not yet in this device's group"
    );
    assert!(members.contains(">Check</button>"));

    // Adding shows the decision first and commits nothing until confirmed.
    let (status, may) = ui
        .post(
            &cookie,
            "/members/check",
            "community=liaison%40bz&user=dirk%40bz",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(may.contains("dirk@bz may join"), "{may}");
    assert!(may.contains(">Add dirk@bz</button>"));
    assert!(
        ui.actions.lock().unwrap().is_empty(),
        "nothing committed yet"
    );
    let (_, may_not) = ui
        .post(
            &cookie,
            "/members/check",
            "community=liaison%40bz&user=cees%40bz",
        )
        .await;
    assert!(may_not.contains("cees@bz may not join"), "{may_not}");
    assert!(may_not.contains("because clearance level DEP-VERTROUWELIJK is below"));
    assert!(
        !may_not.contains(">Add cees@bz</button>"),
        "no way to confirm"
    );
    assert!(ui.actions.lock().unwrap().is_empty());
    let (status, _) = ui
        .post(
            &cookie,
            "/members/add",
            "community=liaison%40bz&user=dirk%40bz",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ui.actions.lock().unwrap().last(),
        Some(&Action::Add {
            community: "liaison@bz".into(),
            user: "dirk@bz".into()
        })
    );
    let (_, problem) = ui.page(&cookie, "/members/other@bz").await;
    assert!(problem.contains("You are not a member of that community."));
    assert!(problem.contains("Ask one of its admins"));
    let (status, _) = ui
        .post(
            &cookie,
            "/members/remove",
            "community=liaison%40bz&user=bert%40nctv",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ui.actions.lock().unwrap().last(),
        Some(&Action::Remove {
            community: "liaison@bz".into(),
            user: "bert@nctv".into()
        })
    );
    let (status, page) = ui.page(&cookie, "/admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not an org-admin");
    assert!(page.contains("org-admin"));

    let admin = ui_with(snapshot(true));
    let cookie = admin.login().await;
    let (status, page) = admin.page(&cookie, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("audit chain intact"));
    let (_, confirm) = admin
        .post(
            &cookie,
            "/admin/confirm",
            "user=bert%40bz&reason=lost+laptop",
        )
        .await;
    assert!(confirm.contains("is final"), "{confirm}");
    assert!(
        admin.actions.lock().unwrap().is_empty(),
        "only confirmed so far"
    );
    admin
        .post(
            &cookie,
            "/admin/revoke",
            "user=bert%40bz&reason=lost+laptop",
        )
        .await;
    assert_eq!(
        admin.actions.lock().unwrap().as_slice(),
        &[Action::Revoke {
            user: "bert@bz".into(),
            reason: "lost laptop".into()
        }]
    );
}

#[tokio::test]
async fn changes_reach_open_pages_as_server_sent_events() {
    let ui = ui_with(snapshot(false));
    let cookie = ui.login().await;
    let r = ui
        .send(
            get("/events")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    ui.state.changed();
    let mut body = r.into_body().into_data_stream();
    use futures_util::StreamExt;
    let chunk = body.next().await.unwrap().unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(text.contains("event: change"), "{text}");
}

#[test]
fn only_loopback_is_served() {
    assert!(check_listen(&"127.0.0.1:0".parse().unwrap()).is_ok());
    assert!(check_listen(&"[::1]:0".parse().unwrap()).is_ok());
    let e = check_listen(&"0.0.0.0:8080".parse().unwrap()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let e = check_listen(&"192.168.1.5:8080".parse().unwrap()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}

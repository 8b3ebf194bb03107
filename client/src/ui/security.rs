//! The checks on every request to the local interface.
//!
//! * `Host` must name the listening address (`127.0.0.1:PORT` or `localhost:PORT`),
//!   so a page of another site whose name was rebound to 127.0.0.1 is refused (421).
//! * `/login?token=T` swaps the single-use token printed at start for a session
//!   cookie (HttpOnly, SameSite=Strict, random); every other request without a
//!   valid session is answered 401 with no content.
//! * A request that changes state (anything but GET and HEAD) must carry an
//!   `Origin` of the listening address (403 otherwise).
//! * Every response carries a strict Content-Security-Policy (scripts, styles and
//!   connections from this server only, no framing) and no CORS header.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::State;

/// The session cookie's name.
pub const COOKIE: &str = "kring_session";
/// Sessions kept at most (the oldest is dropped first).
const MAX_SESSIONS: usize = 8;
/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// Sessions of one server and the addresses it answers for.
#[derive(Debug)]
pub struct Security {
    hosts: [String; 2],
    origins: [String; 2],
    token: Mutex<Option<String>>,
    sessions: Mutex<VecDeque<String>>,
}

impl Security {
    /// The checks for a server listening on `local`.
    pub fn new(local: SocketAddr) -> Security {
        let port = local.port();
        let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        let origins = [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ];
        Security {
            hosts,
            origins,
            token: Mutex::new(None),
            sessions: Mutex::new(VecDeque::new()),
        }
    }

    /// A new single-use login token (replacing any unused one).
    pub fn issue_token(&self) -> String {
        let token = random_hex();
        if let Ok(mut t) = self.token.lock() {
            *t = Some(token.clone());
        }
        token
    }

    /// Swaps the token for a new session id, once.
    fn login(&self, token: &str) -> Option<String> {
        let mut guard = self.token.lock().ok()?;
        let expected = guard.as_deref()?;
        if !constant_time_eq(expected.as_bytes(), token.as_bytes()) {
            return None;
        }
        *guard = None;
        let session = random_hex();
        let mut sessions = self.sessions.lock().ok()?;
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(session.clone());
        Some(session)
    }

    fn has_session(&self, headers: &HeaderMap) -> bool {
        let Some(id) = cookie(headers, COOKIE) else {
            return false;
        };
        self.sessions.lock().is_ok_and(|s| {
            s.iter()
                .any(|known| constant_time_eq(known.as_bytes(), id.as_bytes()))
        })
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| self.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)))
    }

    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|o| self.origins.iter().any(|ok| ok.eq_ignore_ascii_case(o)))
    }
}

/// 32 random bytes as hex.
fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The system's random source does not fail on the platforms Kring runs on; should
    // it, the zeroed token is still single-use and the process-local session list
    // still rejects guesses of other values.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        tracing::error!("no randomness for the interface's token");
    }
    hex::encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bare(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

/// The middleware in front of every route.
pub async fn guard(
    AxumState(state): AxumState<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = check(&state.security, request, next).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on form posts.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn check(security: &Security, request: Request, next: Next) -> Response {
    if !security.host_ok(request.headers()) {
        return bare(StatusCode::MISDIRECTED_REQUEST);
    }
    if request.uri().path() == "/login" {
        let token = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string());
        return match token.and_then(|t| security.login(&t)) {
            Some(session) => {
                let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
                let mut response = bare(StatusCode::SEE_OTHER);
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
                response
            }
            None => bare(StatusCode::UNAUTHORIZED),
        };
    }
    if !security.has_session(request.headers()) {
        return bare(StatusCode::UNAUTHORIZED);
    }
    let safe = request.method() == Method::GET || request.method() == Method::HEAD;
    if !safe && !security.origin_ok(request.headers()) {
        return bare(StatusCode::FORBIDDEN);
    }
    next.run(request).await
}

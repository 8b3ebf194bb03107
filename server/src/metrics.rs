//! What an operator watches: Prometheus metrics (`/metrics`) and health (`/healthz`)
//! on the address of `[metrics] listen` in `relay.toml` (off unless configured).
//!
//! [`Metrics`] is held by the relay and counted where things happen (connections in
//! [`crate::relay`], requests and refusals in [`crate::net`], [`crate::relay`] and
//! [`crate::federation`], fsync in [`crate::store`]); gauges read from the store and
//! the links (outbox depth and age, link state, store size, revocations) are set when
//! a scrape comes. Label values come from small fixed sets (request kinds, refusal
//! reasons) or are configured peer relay ids: never a community, user or notice.
//!
//! The HTTP side ([`serve`]) is a minimal HTTP/1.1 responder: `GET` or `HEAD` of two
//! paths, one request per connection, a bounded request head read within a deadline,
//! a bounded number of connections at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kring_protocol::identity::IdentityKind;
use kring_protocol::wire::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
pub const PREFIX: &str = "kring_relay";

/// Refusals of a request (or connection, or federation item) by what was refused
/// and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToLabel {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// `kind` label of a refusal before the request's frame was read whole (rate limit,
/// budget, frame deadline, undecodable frame): what it would have been is unknown.
pub const KIND_UNREAD: &str = "unread";
/// `kind` label of a refused connection (TLS handshake, certificate, connection cap).
pub const KIND_CONNECTION: &str = "connection";
/// `kind` label of a federation item refused by the receiving relay.
pub const KIND_FEDERATION_ITEM: &str = "federation-item";
/// `reason` label of a federation item a relay does not take from that peer (not the
/// hub of the community, not the home relay of the filer, not accredited).
pub const REASON_NOT_ACCEPTED: &str = "not-accepted";
/// `reason` label of a TLS handshake that failed (certificate refused by TLS, or the
/// handshake broke off).
pub const REASON_HANDSHAKE: &str = "handshake";

/// The `reason` label of a refusal: the error code's name (a fixed set; no detail).
pub fn reason_label(code: &ErrorCode) -> &'static str {
    code.name()
}

/// The `kind` label of a connection: `device` or `peer`.
pub fn connection_kind(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::User => "device",
        IdentityKind::Relay => "peer",
    }
}

/// Most enqueue times kept per peer for the outbox age; when full, every other one
/// is dropped (the age then has a coarser resolution, never a smaller value).
const AGE_MARKS: usize = 512;
/// Least time between two enqueue times kept for one peer.
const AGE_MARK_EVERY: Duration = Duration::from_secs(1);

/// When items of one peer's outbox were enqueued, sparsely: `(seq, at)` means item
/// `seq` was enqueued at `at` and every later item no earlier.
#[derive(Debug, Default)]
struct EnqueueMarks {
    marks: VecDeque<(u64, Instant)>,
}

impl EnqueueMarks {
    fn enqueued(&mut self, seq: u64, now: Instant) {
        if let Some((last_seq, last_at)) = self.marks.back() {
            // A seq can come again after a rolled-back batch: keep the earlier time.
            if seq <= *last_seq || now.duration_since(*last_at) < AGE_MARK_EVERY {
                return;
            }
        }
        if self.marks.len() >= AGE_MARKS {
            let mut i = 0;
            self.marks.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.marks.push_back((seq, now));
    }

    /// When the item `head` (the oldest in the outbox) was enqueued, at the latest;
    /// `None` if it was enqueued before anything was marked (before the relay
    /// started). Forgets marks older than needed for `head`.
    fn enqueued_at(&mut self, head: u64) -> Option<Instant> {
        while self.marks.len() >= 2 && self.marks[1].0 <= head {
            self.marks.pop_front();
        }
        match self.marks.front() {
            Some((seq, at)) if *seq <= head => Some(*at),
            _ => None,
        }
    }
}

/// The relay's metrics. Cheap to count into (atomics, and a map lookup of a fixed
/// label set); gauges that need the store are set by [`Metrics::refresh`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<KindLabel, Gauge>,
    requests: Family<KindLabel, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    notices_ordered: Counter,
    commits_ordered: Counter,
    deliveries: Family<ToLabel, Counter>,
    outbox_items: Family<PeerLabel, Gauge>,
    outbox_age: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    link_up: Family<PeerLabel, Gauge>,
    fsync: Histogram,
    fsync_failures: Counter,
    store_bytes: Gauge,
    revocations: Family<KindLabel, Gauge>,
    certificate_expiry: Gauge,
    marks: Mutex<HashMap<String, EnqueueMarks>>,
    /// One scrape at a time sets and reads the gauges [`Metrics::refresh`] sets.
    scraping: Mutex<()>,
    started: Instant,
    serving: AtomicBool,
    flush_failing: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let connections = Family::<KindLabel, Gauge>::default();
        registry.register(
            "connections",
            "Open connections by kind (device, peer)",
            connections.clone(),
        );
        let requests = Family::<KindLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests received by kind (device request kinds; federation-* from peer relays)",
            requests.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests, connections and federation items refused, by kind and reason",
            refusals.clone(),
        );
        let notices_ordered = Counter::default();
        registry.register(
            "notices_ordered",
            "Notices ordered into community logs hubbed here",
            notices_ordered.clone(),
        );
        let commits_ordered = Counter::default();
        registry.register(
            "commits_ordered",
            "Commits (membership changes) ordered into community logs hubbed here",
            commits_ordered.clone(),
        );
        let deliveries = Family::<ToLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Log entries pushed to devices (to=device) and outbox items peers acknowledged (to=peer)",
            deliveries.clone(),
        );
        let outbox_items = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "outbox_items",
            "Items waiting in the outbox to each peer relay",
            outbox_items.clone(),
        );
        let outbox_age = Family::<PeerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest item waiting for each peer relay (0 when none; counted from \
             the relay's start for items older than that)",
            Unit::Seconds,
            outbox_age.clone(),
        );
        let link_up = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "link_up",
            "Whether the federation link to each peer relay is up (1) or down (0)",
            link_up.clone(),
        );
        let fsync = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "fsync_duration",
            "Time each store flush (fsync) took",
            Unit::Seconds,
            fsync.clone(),
        );
        let fsync_failures = Counter::default();
        registry.register(
            "fsync_failures",
            "Store flushes that failed",
            fsync_failures.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register_with_unit(
            "store_size",
            "Size of the store's files on disk",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let revocations = Family::<KindLabel, Gauge>::default();
        registry.register(
            "revocations",
            "Revocations known: users revoked by statements (kind=user), certificates \
             revoked by CRLs (kind=certificate)",
            revocations.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the relay's certificate chain (its certificate or its organisation CA's, \
             whichever ends first) expires, in seconds since the Unix epoch",
            certificate_expiry.clone(),
        );
        // Families that should show from the first scrape, not only after the
        // first event.
        for kind in ["device", "peer"] {
            let _ = connections.get_or_create(&KindLabel { kind });
        }
        for to in ["device", "peer"] {
            let _ = deliveries.get_or_create(&ToLabel { to });
        }
        for kind in ["user", "certificate"] {
            let _ = revocations.get_or_create(&KindLabel { kind });
        }
        Self {
            registry,
            connections,
            requests,
            refusals,
            notices_ordered,
            commits_ordered,
            deliveries,
            outbox_items,
            outbox_age,
            link_up,
            fsync,
            fsync_failures,
            store_bytes,
            revocations,
            certificate_expiry,
            marks: Mutex::new(HashMap::new()),
            scraping: Mutex::new(()),
            started: Instant::now(),
            serving: AtomicBool::new(true),
            flush_failing: AtomicBool::new(false),
        }
    }

    /// A connection of `kind` was registered.
    pub fn connection_opened(&self, kind: IdentityKind) {
        self.connections
            .get_or_create(&KindLabel {
                kind: connection_kind(kind),
            })
            .inc();
    }

    /// A registered connection of `kind` ended.
    pub fn connection_closed(&self, kind: IdentityKind) {
        self.connections
            .get_or_create(&KindLabel {
                kind: connection_kind(kind),
            })
            .dec();
    }

    /// A request of `kind` was read.
    pub fn request(&self, kind: &'static str) {
        self.requests.get_or_create(&KindLabel { kind }).inc();
    }

    /// Something of `kind` was refused with `code`.
    pub fn refused(&self, kind: &'static str, code: &ErrorCode) {
        self.refused_for(kind, reason_label(code));
    }

    /// Something of `kind` was refused for `reason` (one of the fixed reasons).
    pub fn refused_for(&self, kind: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { kind, reason })
            .inc();
    }

    /// What a batch did, once it was applied.
    pub fn counted(&self, counts: BatchCounts) {
        if counts.notices_ordered > 0 {
            self.notices_ordered.inc_by(counts.notices_ordered);
        }
        if counts.commits_ordered > 0 {
            self.commits_ordered.inc_by(counts.commits_ordered);
        }
        if counts.items_not_accepted > 0 {
            self.refusals
                .get_or_create(&RefusalLabels {
                    kind: KIND_FEDERATION_ITEM,
                    reason: REASON_NOT_ACCEPTED,
                })
                .inc_by(counts.items_not_accepted);
        }
    }

    /// `n` log entries were pushed to a device.
    pub fn delivered_to_device(&self, n: u64) {
        self.deliveries
            .get_or_create(&ToLabel { to: "device" })
            .inc_by(n);
    }

    /// A peer acknowledged `n` outbox items.
    pub fn delivered_to_peer(&self, n: u64) {
        self.deliveries
            .get_or_create(&ToLabel { to: "peer" })
            .inc_by(n);
    }

    /// Item `seq` was put in the outbox to `peer` (for the oldest item's age).
    pub fn outbox_enqueued(&self, peer: &str, seq: u64, at: Instant) {
        let mut marks = self
            .marks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match marks.get_mut(peer) {
            Some(m) => m.enqueued(seq, at),
            None => {
                let mut m = EnqueueMarks::default();
                m.enqueued(seq, at);
                marks.insert(peer.to_string(), m);
            }
        }
    }

    /// A store flush took `took`; `ok` false if it failed.
    pub fn flushed(&self, took: Duration, ok: bool) {
        self.fsync.observe(took.as_secs_f64());
        if !ok {
            self.fsync_failures.inc();
        }
        self.flush_failing.store(!ok, Ordering::Relaxed);
    }

    /// The relay stopped serving (shutdown began): `/healthz` answers 503.
    pub fn stopping(&self) {
        self.serving.store(false, Ordering::Relaxed);
    }

    /// Why the relay is not healthy, if it is not.
    pub fn unhealthy(&self) -> Option<&'static str> {
        if !self.serving.load(Ordering::Relaxed) {
            Some("stopping")
        } else if self.flush_failing.load(Ordering::Relaxed) {
            Some("the last store flush failed")
        } else {
            None
        }
    }

    /// Sets the gauges from what the relay reports and the store's size.
    pub fn refresh(&self, gauges: &Gauges, data_dir: &std::path::Path) {
        self.outbox_items.clear();
        self.outbox_age.clear();
        self.link_up.clear();
        let now = Instant::now();
        for peer in &gauges.peers {
            let id = &peer.id;
            let label = PeerLabel { peer: id.clone() };
            self.link_up
                .get_or_create(&label)
                .set(i64::from(peer.link_up));
            let Some((depth, head)) = peer.outbox else {
                continue;
            };
            self.outbox_items
                .get_or_create(&label)
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
            let age = match head {
                None => 0.0,
                Some(head) => {
                    let since = self
                        .marks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_mut(id.as_str())
                        .and_then(|m| m.enqueued_at(head))
                        .unwrap_or(self.started);
                    now.duration_since(since).as_secs_f64()
                }
            };
            self.outbox_age.get_or_create(&label).set(age);
        }
        for (kind, n) in [
            ("user", gauges.revoked_users),
            ("certificate", gauges.revoked_certificates),
        ] {
            self.revocations
                .get_or_create(&KindLabel { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.store_bytes
            .set(i64::try_from(dir_size(data_dir)).unwrap_or(i64::MAX));
        if let Some(t) = gauges.certificate_not_after {
            self.certificate_expiry.set(t);
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// What a batch not yet applied did that is counted (held by the writer; what a
/// rolled-back batch did is dropped with it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Notices ordered.
    pub notices_ordered: u64,
    /// Commits ordered.
    pub commits_ordered: u64,
    /// Federation items not accepted from the peer that sent them.
    pub items_not_accepted: u64,
}

/// Most directory entries [`dir_size`] looks at.
const MAX_DIR_ENTRIES: usize = 100_000;

/// Bytes of the files under `dir` (the store), not following symbolic links; stops
/// after 100 000 entries.
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
                _ => {}
            }
        }
    }
    total
}

// ----- HTTP ---------------------------------------------------------------------------

/// One peer's gauges.
#[derive(Debug, Clone)]
pub struct PeerGauges {
    /// Peer relay id.
    pub id: String,
    /// Whether its link is up.
    pub link_up: bool,
    /// Items waiting in its outbox and the seq of the oldest (`None` if the outbox
    /// could not be read).
    pub outbox: Option<(u64, Option<u64>)>,
}

/// What a relay reports for its gauges when scraped.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Every configured peer.
    pub peers: Vec<PeerGauges>,
    /// Users revoked.
    pub revoked_users: usize,
    /// Certificates revoked.
    pub revoked_certificates: usize,
    /// When the relay's certificate chain expires (unix seconds).
    pub certificate_not_after: Option<i64>,
}

/// Something that reports [`Gauges`] (the running relay).
pub trait GaugeSource: Send + Sync + std::fmt::Debug {
    /// The gauges now.
    fn gauges(&self) -> Gauges;
}

mod http;

pub use http::{
    Asked, Refused, Route, Source, bind, head_end, parse_head, serve, to_prometheus_text,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_strictly() {
        let get = |t: &str| parse_head(format!("{t}\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(
            get("GET /metrics HTTP/1.1"),
            Ok(Asked {
                route: Route::Metrics,
                head_only: false,
                openmetrics: false,
            })
        );
        assert_eq!(
            get("HEAD /healthz?x=1 HTTP/1.0"),
            Ok(Asked {
                route: Route::Health,
                head_only: true,
                openmetrics: false,
            })
        );
        let prometheus = "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;\
                          version=1.0.0,text/plain;q=0.5\r\n\r\n";
        assert!(parse_head(prometheus.as_bytes()).unwrap().openmetrics);
        assert_eq!(
            get("POST /metrics HTTP/1.1"),
            Err(Refused::MethodNotAllowed)
        );
        assert_eq!(get("GET /other HTTP/1.1"), Err(Refused::NotFound));
        assert_eq!(get("GET /metrics"), Err(Refused::BadRequest));
        assert_eq!(get("GET /metrics SPDY/3"), Err(Refused::BadRequest));
        assert_eq!(get("GET  /metrics HTTP/1.1"), Err(Refused::BadRequest));
        assert_eq!(parse_head(b"\xff\xfe\r\n\r\n"), Err(Refused::BadRequest));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    #[test]
    fn every_family_shows_from_the_start_without_identifiers() {
        let m = Metrics::new();
        m.request("file-notice");
        m.refused("file-notice", &ErrorCode::NotMember);
        m.refused(
            KIND_UNREAD,
            &ErrorCode::BadRequest {
                reason: "secret detail".into(),
            },
        );
        m.counted(BatchCounts {
            notices_ordered: 3,
            commits_ordered: 1,
            items_not_accepted: 2,
        });
        m.flushed(Duration::from_millis(2), true);
        m.connection_opened(IdentityKind::User);
        let text = m.encode();
        for needle in [
            "kring_relay_connections{kind=\"device\"} 1",
            "kring_relay_connections{kind=\"peer\"} 0",
            "kring_relay_requests_total{kind=\"file-notice\"} 1",
            "kring_relay_refusals_total{kind=\"file-notice\",reason=\"not-member\"} 1",
            "kring_relay_refusals_total{kind=\"unread\",reason=\"bad-request\"} 1",
            "kring_relay_notices_ordered_total 3",
            "kring_relay_commits_ordered_total 1",
            "kring_relay_refusals_total{kind=\"federation-item\",reason=\"not-accepted\"} 2",
            "kring_relay_deliveries_total{to=\"device\"} 0",
            "kring_relay_fsync_duration_seconds_count 1",
            "kring_relay_revocations{kind=\"user\"} 0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(!text.contains("secret"), "{text}");
        m.connection_closed(IdentityKind::User);
        assert!(
            m.encode()
                .contains("kring_relay_connections{kind=\"device\"} 0")
        );
    }

    #[test]
    fn the_classic_text_format_names_counters_with_total() {
        let m = Metrics::new();
        m.request("ping");
        m.flushed(Duration::from_millis(1), true);
        let text = to_prometheus_text(&m.encode());
        for needle in [
            "# HELP kring_relay_requests_total Requests",
            "# TYPE kring_relay_requests_total counter\nkring_relay_requests_total{kind=\"ping\"} 1\n",
            "# TYPE kring_relay_fsync_duration_seconds histogram\n",
            "# TYPE kring_relay_connections gauge\n",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            !text.contains("# TYPE kring_relay_requests counter"),
            "{text}"
        );
    }

    #[test]
    fn health_follows_flushes_and_shutdown() {
        let m = Metrics::new();
        assert_eq!(m.unhealthy(), None);
        m.flushed(Duration::from_millis(1), false);
        assert!(m.unhealthy().is_some());
        assert!(m.encode().contains("kring_relay_fsync_failures_total 1"));
        m.flushed(Duration::from_millis(1), true);
        assert_eq!(m.unhealthy(), None);
        m.stopping();
        assert_eq!(m.unhealthy(), Some("stopping"));
    }

    #[test]
    fn the_oldest_item_is_dated_by_the_mark_at_or_before_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = EnqueueMarks::default();
        m.enqueued(5, at(0));
        m.enqueued(6, at(0)); // within a second of the last mark: not kept
        m.enqueued(9, at(10));
        m.enqueued(12, at(20));
        // Items before the first mark were enqueued before the relay started.
        assert_eq!(m.enqueued_at(4), None);
        assert_eq!(m.enqueued_at(5), Some(at(0)));
        assert_eq!(m.enqueued_at(8), Some(at(0)));
        assert_eq!(m.enqueued_at(9), Some(at(10)));
        // Marks behind the head are forgotten.
        assert_eq!(m.enqueued_at(13), Some(at(20)));
        assert_eq!(m.marks.len(), 1);
        // A seq that comes again (a rolled-back batch) keeps the earlier time.
        m.enqueued(12, at(40));
        assert_eq!(m.enqueued_at(12), Some(at(20)));
    }

    #[test]
    fn enqueue_marks_stay_bounded_and_never_make_an_item_younger() {
        let t0 = Instant::now();
        let mut m = EnqueueMarks::default();
        for i in 0..(AGE_MARKS as u64 * 4) {
            m.enqueued(i + 1, t0 + Duration::from_secs(i * 2));
        }
        assert!(m.marks.len() <= AGE_MARKS);
        for head in [1, 100, 1000, AGE_MARKS as u64 * 4] {
            let at = m.enqueued_at(head).unwrap();
            assert!(at <= t0 + Duration::from_secs((head - 1) * 2), "{head}");
        }
    }

    #[test]
    fn dir_size_adds_up_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}

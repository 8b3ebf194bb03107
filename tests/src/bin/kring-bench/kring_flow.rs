//! Kring filing -> delivery across two federated relays.
//!
//! The community `bench@bz` is hubbed at `bz`. Its filers are users of `nctv`
//! (`filer0@nctv`, ...), each an in-process [`Client`] filing `window` notices per
//! request (`Client::file_notices`: one sync, one round trip, one fsync per filing;
//! the client API files sequentially per device: it takes `&mut self`).
//! Ten devices are split across both relays (`dev0..4@bz`, `dev5..9@nctv`); each is
//! a raw QUIC connection with the user's certificate that subscribes, receives
//! every pushed entry and acknowledges runs of them (`Request::Ack`, what a real
//! device sends once it has stored them) without decrypting: decryption runs on each
//! member's own hardware and is measured separately (`client-cost`).
//!
//! Path of every notice: filer -> nctv (durable, `Queued` = the filer's ack) ->
//! outbox -> bz (ordered, durable) -> bz's devices and nctv's copy of the log
//! (durable) -> nctv's devices.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_client::conn::{Credentials, RelayConnection, Timeouts};
use kring_client::profile::Profile;
use kring_client::{Client, SyncEvent};
use kring_protocol::wire::limits::MAX_NOTICES_PER_FILING;
use kring_protocol::wire::{EntryKind, Push, Request, Response};
use kring_tests::{Federation, RelayLauncher};
use uuid::Uuid;

use crate::common::{CLEARANCE, LABEL, body, demo_binary};

/// Subscribed devices.
pub const DEVICES: usize = 10;
/// The hub.
pub const HUB: &str = "bz";
/// The filers' home relay.
pub const FILER_RELAY: &str = "nctv";
const COMMUNITY: &str = "bench";

/// Deliveries seen by one device: notice id -> arrival instant.
#[derive(Debug, Default)]
struct DeviceLog {
    received: Vec<(Uuid, Instant)>,
    live: bool,
    error: Option<String>,
}

type Logs = Arc<Mutex<Vec<DeviceLog>>>;

/// A running two-relay federation with a community, filers and live devices.
pub struct KringSetup {
    pub fed: Federation,
    pub community: String,
    filers: Vec<Client>,
    logs: Logs,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub device_ids: Vec<String>,
    pub setup: Duration,
}

impl std::fmt::Debug for KringSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KringSetup")
            .field("community", &self.community)
            .finish_non_exhaustive()
    }
}

impl Drop for KringSetup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(logs: &Logs) -> Result<std::sync::MutexGuard<'_, Vec<DeviceLog>>, String> {
    logs.lock()
        .map_err(|_| "a device task panicked".to_string())
}

async fn ready_client(fed: &Federation, user: &str) -> Result<Client, String> {
    let mut c = fed.client(user).map_err(|e| format!("{user}: {e}"))?;
    c.publish_key_packages(3)
        .await
        .map_err(|e| format!("{user}: publishing key packages: {e}"))?;
    Ok(c)
}

/// Opens an authenticated connection for the user of profile `dir`.
pub async fn raw_connect(dir: &std::path::Path) -> Result<RelayConnection, String> {
    let profile = Profile::load(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let creds = Credentials::load(&profile).map_err(|e| format!("{}: {e}", profile.user))?;
    RelayConnection::connect(
        &creds,
        &profile.relay_addr,
        &profile.relay_id,
        Timeouts::default(),
    )
    .await
    .map_err(|e| format!("{}: connect: {e}", profile.user))
}

/// A device that receives and acknowledges every entry and welcome, recording
/// when each notice arrived. Like the real client (`kring_client` sync), it
/// acknowledges a run of entries once: when the push stream pauses for
/// [`ACK_DELAY`] or after [`ACK_EVERY`] entries, one `Ack` of the highest sequence
/// number acknowledges every entry up to it.
async fn raw_device(dir: std::path::PathBuf, d: usize, logs: Logs) {
    let result: Result<(), String> = async {
        let conn = raw_connect(&dir).await?;
        let mut sub = conn.subscribe().await.map_err(|e| e.to_string())?;
        // (community, highest unacknowledged seq, entries since the last ack)
        let mut owed: Option<(String, u64, usize)> = None;
        loop {
            let push = match &owed {
                Some((_, _, n)) if *n < ACK_EVERY => {
                    match tokio::time::timeout(ACK_DELAY, sub.next()).await {
                        Ok(p) => Some(p.map_err(|e| e.to_string())?),
                        Err(_) => None,
                    }
                }
                Some(_) => None,
                None => Some(sub.next().await.map_err(|e| e.to_string())?),
            };
            let Some(push) = push else {
                if let Some((community, seq, _)) = owed.take() {
                    match conn
                        .call(&Request::Ack { community, seq })
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        Response::Ok => {}
                        other => return Err(format!("Ack answered {other:?}")),
                    }
                }
                continue;
            };
            match push {
                None => return Err("the relay closed the push channel".to_string()),
                Some(Push::Entry(entry)) => {
                    if let EntryKind::Notice { notice_id, .. } = entry.kind {
                        let now = Instant::now();
                        if let Ok(mut l) = logs.lock()
                            && let Some(log) = l.get_mut(d)
                        {
                            log.received.push((notice_id, now));
                        }
                    }
                    let n = match &owed {
                        Some((c, _, n)) if *c == entry.community => n + 1,
                        _ => 1,
                    };
                    owed = Some((entry.community, entry.seq, n));
                }
                Some(Push::Welcome { id, .. }) => {
                    conn.call(&Request::AckWelcome { id })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(Push::CaughtUp) => {
                    if let Ok(mut l) = logs.lock()
                        && let Some(log) = l.get_mut(d)
                    {
                        log.live = true;
                    }
                }
                Some(Push::Closed(code)) => return Err(format!("closed: {code:?}")),
            }
        }
    }
    .await;
    if let Err(e) = result
        && let Ok(mut l) = logs.lock()
        && let Some(log) = l.get_mut(d)
    {
        log.error = Some(e);
    }
}

/// A raw device acknowledges when its push stream pauses this long (the real
/// client's delay).
const ACK_DELAY: Duration = Duration::from_millis(2);
/// ... or after this many entries.
const ACK_EVERY: usize = 256;

impl KringSetup {
    /// Mints the federation, starts `bz` and `nctv`, creates `bench@bz` with
    /// `filers` filers at nctv and [`DEVICES`] devices, and waits until every device
    /// is live.
    pub async fn create(filers: usize) -> Result<KringSetup, String> {
        let start = Instant::now();
        let demo = demo_binary()?;
        let mut fed =
            Federation::create(RelayLauncher::demo_binary(demo)).map_err(|e| e.to_string())?;
        let owner = format!("owner@{HUB}");
        let filer_ids: Vec<String> = (0..filers)
            .map(|i| format!("filer{i}@{FILER_RELAY}"))
            .collect();
        let device_ids: Vec<String> = (0..DEVICES)
            .map(|i| {
                let relay = if i < DEVICES / 2 { HUB } else { FILER_RELAY };
                format!("dev{i}@{relay}")
            })
            .collect();
        for u in std::iter::once(&owner).chain(&filer_ids).chain(&device_ids) {
            fed.issue_user(u, CLEARANCE, &[])
                .map_err(|e| format!("issuing {u}: {e}"))?;
        }
        fed.start(HUB).map_err(|e| e.to_string())?;
        fed.start(FILER_RELAY).map_err(|e| e.to_string())?;

        let mut owner_client = ready_client(&fed, &owner).await?;
        let mut filer_clients = Vec::with_capacity(filers);
        for u in &filer_ids {
            let mut c = ready_client(&fed, u).await?;
            // The filer's ack is the home relay's durable `Queued`; do not wait for
            // the hub's ordering (delivery is measured at the devices).
            c.set_timeouts(Timeouts {
                ordering: Duration::ZERO,
                ..c.timeouts()
            });
            filer_clients.push(c);
        }
        for u in &device_ids {
            ready_client(&fed, u).await?;
        }
        let created = owner_client
            .create_community(COMMUNITY, CLEARANCE)
            .await
            .map_err(|e| format!("creating the community: {e}"))?;
        let members: Vec<String> = filer_ids.iter().chain(&device_ids).cloned().collect();
        for chunk in members.chunks(50) {
            owner_client
                .add_members(&created.community, chunk)
                .await
                .map_err(|e| format!("adding members: {e}"))?;
        }
        for (c, u) in filer_clients.iter_mut().zip(&filer_ids) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let report = c.sync().await.map_err(|e| format!("{u}: sync: {e}"))?;
                let joined = report.events.iter().any(|e| {
                    matches!(e, SyncEvent::Joined { community, .. } if *community == created.community)
                });
                if joined {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{u} did not join {}", created.community));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let logs: Logs = Arc::new(Mutex::new(
            (0..DEVICES).map(|_| DeviceLog::default()).collect(),
        ));
        let mut tasks = Vec::new();
        for (d, u) in device_ids.iter().enumerate() {
            tasks.push(tokio::spawn(raw_device(
                fed.user_dir(u),
                d,
                Arc::clone(&logs),
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let l = lock(&logs)?;
                if let Some(e) = l.iter().find_map(|d| d.error.clone()) {
                    return Err(format!("a device failed: {e}"));
                }
                if l.iter().all(|d| d.live) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err("the devices did not catch up within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(KringSetup {
            fed,
            community: created.community,
            filers: filer_clients,
            logs,
            tasks,
            device_ids,
            setup: start.elapsed(),
        })
    }

    pub fn filers(&self) -> usize {
        self.filers.len()
    }

    /// Files `total` notices, at most `window` per filing (one request, one fsync).
    /// With `rate` (notices/s) the notices are scheduled open-loop at fixed
    /// intervals: a free filer takes every notice that is due (at least the next
    /// one, at most `window`) and files them together; latency counts from each
    /// notice's scheduled instant, so a backlog shows; scheduling stops `max_wall`
    /// after the start. Without `rate`, every filer files `window` notices at a
    /// time back to back (closed loop). Then waits for every device to receive every
    /// filed notice.
    pub async fn run(
        &mut self,
        total: usize,
        rate: Option<f64>,
        window: usize,
        max_wall: Duration,
    ) -> Result<FlowResult, String> {
        for l in lock(&self.logs)?.iter_mut() {
            l.received.clear();
        }
        let body = body();
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now() + Duration::from_millis(50);
        let window = window.clamp(1, MAX_NOTICES_PER_FILING);
        let mut handles = Vec::new();
        for mut filer in std::mem::take(&mut self.filers) {
            let next = Arc::clone(&next);
            let body = body.clone();
            let community = self.community.clone();
            handles.push(tokio::spawn(async move {
                // (notice id, scheduled instant, filing start, ack instant)
                let mut filed: Vec<(Uuid, Instant, Instant, Instant)> = Vec::new();
                let mut error = None;
                loop {
                    if Instant::now().saturating_duration_since(t0) > max_wall {
                        break;
                    }
                    let Some((from, to)) = claim(&next, total, window, rate, t0).await else {
                        break;
                    };
                    let now = Instant::now();
                    let scheduled: Vec<Instant> = (from..to)
                        .map(|i| match rate {
                            Some(r) => t0 + Duration::from_secs_f64(i as f64 / r),
                            None => now,
                        })
                        .collect();
                    let drafts = (from..to)
                        .map(|i| {
                            kring_tests::signal(&community, LABEL, &format!("bench {i}"), &body)
                        })
                        .collect();
                    let start = Instant::now();
                    match filer.file_notices(drafts).await {
                        Ok(f) => {
                            let acked = Instant::now();
                            for (f, s) in f.into_iter().zip(scheduled) {
                                filed.push((f.notice.id, s, start, acked));
                            }
                        }
                        Err(e) => {
                            error = Some(format!("{}: filing: {e}", filer.user()));
                            break;
                        }
                    }
                }
                (filer, filed, error)
            }));
        }
        let mut filed = Vec::new();
        let mut errors = Vec::new();
        for h in handles {
            let (filer, f, e) = h.await.map_err(|e| format!("filer task: {e}"))?;
            self.filers.push(filer);
            filed.extend(f);
            errors.extend(e);
        }
        let filing_done = Instant::now();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let n = filed.len();
        // Wait for every device to have every filed notice.
        let wanted: HashMap<Uuid, (Instant, Instant)> =
            filed.iter().map(|&(id, s, st, _)| (id, (s, st))).collect();
        let deadline =
            Instant::now() + Duration::from_secs(60) + Duration::from_millis(n as u64 * 20);
        let mut timed_out = false;
        loop {
            {
                let l = lock(&self.logs)?;
                if let Some(e) = l.iter().find_map(|d| d.error.clone()) {
                    return Err(format!("a device failed: {e}"));
                }
                if l.iter().all(|d| {
                    d.received
                        .iter()
                        .filter(|(id, _)| wanted.contains_key(id))
                        .count()
                        >= n
                }) {
                    break;
                }
            }
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let logs = lock(&self.logs)?;
        let mut latency = Vec::with_capacity(n * DEVICES);
        let mut service = Vec::with_capacity(n * DEVICES);
        let mut last = t0;
        let mut problems = Vec::new();
        for (d, log) in logs.iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            let mut duplicates = 0;
            for (id, at) in &log.received {
                let Some(&(sched, start)) = wanted.get(id) else {
                    continue;
                };
                if !seen.insert(*id) {
                    duplicates += 1;
                    continue;
                }
                latency.push(at.saturating_duration_since(sched));
                service.push(at.saturating_duration_since(start));
                last = last.max(*at);
            }
            if seen.len() < n {
                problems.push(format!(
                    "{}: {} of {n} notices missing",
                    self.device_ids[d],
                    n - seen.len()
                ));
            }
            if duplicates > 0 {
                problems.push(format!("{}: {duplicates} duplicates", self.device_ids[d]));
            }
        }
        if timed_out {
            problems.push("not every delivery arrived in time".into());
        }
        latency.sort();
        service.sort();
        let mut filing: Vec<Duration> = filed.iter().map(|&(_, _, s, a)| a - s).collect();
        filing.sort();
        let first_start = filed.iter().map(|f| f.2).min().unwrap_or(t0);
        Ok(FlowResult {
            notices: n,
            offered: total,
            deliveries: latency.len(),
            window: last.saturating_duration_since(first_start),
            filing_window: filing_done.saturating_duration_since(first_start),
            latency,
            service,
            filing,
            problems,
        })
    }
}

/// Claims the next notices to file, `[from, to)`: closed loop, the next `window`;
/// open loop, waits until the next notice is due and takes every notice due by then
/// (at most `window`). `None` when all are taken.
async fn claim(
    next: &AtomicUsize,
    total: usize,
    window: usize,
    rate: Option<f64>,
    t0: Instant,
) -> Option<(usize, usize)> {
    loop {
        let from = next.load(AtomicOrdering::SeqCst);
        if from >= total {
            return None;
        }
        let to = match rate {
            None => (from + window).min(total),
            Some(r) => {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(from as f64 / r)).into())
                    .await;
                let due =
                    (Instant::now().saturating_duration_since(t0).as_secs_f64() * r) as usize + 1;
                due.clamp(from + 1, from + window).min(total)
            }
        };
        if next
            .compare_exchange(from, to, AtomicOrdering::SeqCst, AtomicOrdering::SeqCst)
            .is_ok()
        {
            return Some((from, to));
        }
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct FlowResult {
    /// Notices filed (and acknowledged to their filer).
    pub notices: usize,
    /// Notices scheduled.
    pub offered: usize,
    /// Distinct deliveries recorded.
    pub deliveries: usize,
    /// First filing start -> last delivery.
    pub window: Duration,
    /// First filing start -> last filing acknowledged.
    pub filing_window: Duration,
    /// Delivery latency from the scheduled instant (sorted).
    pub latency: Vec<Duration>,
    /// Delivery latency from the actual filing start (sorted).
    pub service: Vec<Duration>,
    /// Filing call durations (sorted).
    pub filing: Vec<Duration>,
    pub problems: Vec<String>,
}

impl FlowResult {
    /// Notices per second delivered to all devices.
    pub fn notices_per_s(&self) -> f64 {
        (self.deliveries as f64 / DEVICES as f64) / self.window.as_secs_f64().max(1e-9)
    }

    pub fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Filings acknowledged per second.
    pub fn filed_per_s(&self) -> f64 {
        self.notices as f64 / self.filing_window.as_secs_f64().max(1e-9)
    }
}

//! Kring filing -> delivery: filers, a community (or several) hubbed at `bz`, and
//! raw devices, on one or two relays ([`Shape`]).
//!
//! The throughput scenario's shape ([`Shape::federated`]): the community
//! `bench@bz` is hubbed at `bz`. Its filers are users of `nctv`
//! (`filer0@nctv`, ...), each an in-process [`Client`] filing `window` notices per
//! request (one round trip and one fsync per filing). In the closed loop a filer
//! seals its next filing (`Client::seal_notices`: encrypt, ratchet on disk) while
//! the previous one is on its way, and sends it once that one is answered: one
//! filing in flight per filer, as one window of messages for mosquitto. With
//! [`KringSetup::filings_in_flight`] D, the window is split into D filings, each
//! sent as soon as it is sealed and finished in the order sent.
//! Ten devices are split across both relays (`dev0..4@bz`, `dev5..9@nctv`); each is
//! a raw QUIC connection with the user's certificate that subscribes, receives
//! every pushed entry and acknowledges runs of them (`Request::Ack`, what a real
//! device sends once it has stored them) without decrypting: decryption runs on each
//! member's own hardware and is measured separately (`client-cost`).
//!
//! Path of every notice: filer -> nctv (durable, `Queued` = the filer's ack) ->
//! outbox -> bz (ordered, durable) -> bz's devices and nctv's copy of the log
//! (durable) -> nctv's devices.
//!
//! [`Shape::single_relay`] puts the filers and every device at `bz` (one relay, no
//! federation), with any number of devices and communities (every filer and device
//! a member of each; filings go to the communities in turn).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_client::conn::{Credentials, RelayConnection, Timeouts};
use kring_client::profile::Profile;
use kring_client::{Client, PendingFiling, SyncEvent};
use kring_protocol::wire::limits::MAX_NOTICES_PER_FILING;
use kring_protocol::wire::{EntryKind, LogMark, Push, Request, Response};
use kring_tests::{Federation, RelayLauncher};
use uuid::Uuid;

use crate::common::{CLEARANCE, LABEL, Tally, body, cpu_seconds, demo_binary};
use crate::relay_scale::{bounded, publish_raw};

/// Subscribed devices of the throughput scenario.
pub const DEVICES: usize = 10;
/// The hub.
pub const HUB: &str = "bz";
/// The filers' home relay in the throughput scenario.
pub const FILER_RELAY: &str = "nctv";
const COMMUNITY: &str = "bench";
/// Communities one owner creates: one requester may fetch one user's key packages
/// at most 30 times an hour (`kring_relay::key_fetch`), once per community here.
const COMMUNITIES_PER_OWNER: usize = 25;
/// Owners creating their communities at the same time.
const OWNERS_AT_ONCE: usize = 8;
/// Devices that connect and catch up at the same time during the setup.
const CONNECT_WAVE: usize = 50;

/// Where the bench's users are and how many communities they share. The hub of
/// every community is [`HUB`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Home relay of the filers (`filer0@...`).
    pub filer_relay: &'static str,
    pub filers: usize,
    /// Devices `dev0..`: the first half at the hub, the rest at `filer_relay`.
    pub devices: usize,
    /// Communities hubbed at the hub, each with every filer and device as a member.
    pub communities: usize,
    /// The relays' per-identity request limit (`requests_per_second`), when not
    /// the relay's default.
    pub requests_per_second: Option<u32>,
}

impl Shape {
    /// The throughput scenario: `filers` at [`FILER_RELAY`], [`DEVICES`] devices
    /// split across both relays, one community.
    pub fn federated(filers: usize) -> Shape {
        Shape {
            filer_relay: FILER_RELAY,
            filers,
            devices: DEVICES,
            communities: 1,
            requests_per_second: None,
        }
    }

    /// Everything at the hub: one relay process.
    pub fn single_relay(filers: usize, devices: usize, communities: usize) -> Shape {
        Shape {
            filer_relay: HUB,
            filers,
            devices,
            communities,
            requests_per_second: None,
        }
    }

    /// The same with the relays' per-identity request limit set to `limit`
    /// (`None`: the relay's default).
    pub fn with_request_limit(self, limit: Option<u32>) -> Shape {
        Shape {
            requests_per_second: limit,
            ..self
        }
    }

    /// The relays this shape runs.
    pub fn relays(&self) -> Vec<&'static str> {
        let mut r = vec![HUB];
        if self.filer_relay != HUB {
            r.push(self.filer_relay);
        }
        r
    }

    fn device_relay(&self, i: usize) -> &'static str {
        if i < self.devices / 2 {
            HUB
        } else {
            self.filer_relay
        }
    }

    /// E.g. `hub bz, 1 filer(s) at nctv, 10 devices (dev0-4@bz, dev5-9@nctv)`.
    pub fn describe(&self) -> String {
        let devices = if self.filer_relay == HUB {
            format!("{} devices at {HUB}", self.devices)
        } else {
            let half = self.devices / 2;
            format!(
                "{} devices (dev0-{}@{HUB}, dev{half}-{}@{})",
                self.devices,
                half.saturating_sub(1),
                self.devices.saturating_sub(1),
                self.filer_relay
            )
        };
        let communities = if self.communities == 1 {
            String::new()
        } else {
            format!(", {} communities", self.communities)
        };
        let limit = match self.requests_per_second {
            Some(l) => format!(", requests_per_second {l}"),
            None => String::new(),
        };
        format!(
            "hub {HUB}, {} filer(s) at {}, {devices}{communities}{limit}",
            self.filers, self.filer_relay
        )
    }
}

/// Deliveries seen by one device: notice id -> arrival instant.
#[derive(Debug, Default)]
struct DeviceLog {
    received: Vec<(Uuid, Instant)>,
    /// Acknowledgement requests sent (`Ack` or `AckMany`).
    acks: usize,
    live: bool,
    error: Option<String>,
}

/// One log per device, each behind its own lock (a thousand devices record at once).
type Logs = Arc<Vec<Mutex<DeviceLog>>>;

/// A running federation of one or two relays with communities, filers and live
/// devices.
pub struct KringSetup {
    pub fed: Federation,
    pub shape: Shape,
    communities: Vec<String>,
    filers: Vec<Client>,
    pub filer_ids: Vec<String>,
    logs: Logs,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub device_ids: Vec<String>,
    pub setup: Duration,
    /// Filings each filer keeps in flight (1: the next is sealed while one travels).
    pub filings_in_flight: usize,
}

impl std::fmt::Debug for KringSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KringSetup")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl Drop for KringSetup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // The filers' stores close (and flush) before the federation's directory,
        // which holds them, is deleted with `fed`.
        self.filers.clear();
    }
}

fn lock(log: &Mutex<DeviceLog>) -> Result<std::sync::MutexGuard<'_, DeviceLog>, String> {
    log.lock().map_err(|_| "a device task panicked".to_string())
}

/// Runs `f` on device `d`'s log (nothing if its lock is poisoned).
fn record(logs: &Logs, d: usize, f: impl FnOnce(&mut DeviceLog)) {
    if let Some(log) = logs.get(d)
        && let Ok(mut l) = log.lock()
    {
        f(&mut l);
    }
}

/// The first device error, if any.
fn device_error(logs: &Logs) -> Result<Option<String>, String> {
    for log in logs.iter() {
        if let Some(e) = lock(log)?.error.clone() {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

async fn ready_client(fed: &Federation, user: &str) -> Result<Client, String> {
    let mut c = fed.client(user).map_err(|e| format!("{user}: {e}"))?;
    c.publish_key_packages(3)
        .await
        .map_err(|e| format!("{user}: publishing key packages: {e}"))?;
    Ok(c)
}

/// Issues `users`. The first user of each relay gets its key encrypted, as
/// `kring-certs-dev` writes it; the others are minted by the same organisation
/// CA with their keys in the clear (`issue_quirky_user` with no quirk, the profile
/// copied from the first): a thousand users would otherwise spend about a minute
/// in scrypt to issue and again to load. A key's encryption at rest changes
/// nothing at the relay.
pub fn issue_users(fed: &Federation, users: &[String]) -> Result<(), String> {
    let relay_of = |u: &str| u.rsplit_once('@').map(|(_, r)| r.to_string());
    let mut relays: HashSet<String> = fed
        .users()
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|u| relay_of(u))
        .collect();
    for u in users {
        let issued = match relay_of(u) {
            Some(r) if relays.contains(&r) => {
                kring_tests::issue_quirky_user(fed, u, kring_certs_dev::Quirk::None).map(|_| ())
            }
            _ => fed.issue_user(u, CLEARANCE, &[]).map(|_| ()),
        };
        issued.map_err(|e| format!("issuing {u}: {e}"))?;
        relays.extend(relay_of(u));
    }
    Ok(())
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
/// [`ACK_DELAY`] (and [`ACK_INTERVAL`] has passed since its last acknowledgement)
/// or after [`ACK_EVERY`] entries, one request (`Ack`, or `AckMany` for several
/// communities) carries each community's highest sequence number.
async fn raw_device(dir: std::path::PathBuf, d: usize, logs: Logs) {
    let result: Result<(), String> = async {
        let conn = raw_connect(&dir).await?;
        let mut sub = conn.subscribe().await.map_err(|e| e.to_string())?;
        // Highest unacknowledged seq per community, and entries since the last ack.
        let mut owed: BTreeMap<String, u64> = BTreeMap::new();
        let mut unacked = 0usize;
        let mut acked_at: Option<Instant> = None;
        loop {
            let push = if owed.is_empty() {
                Some(sub.next().await.map_err(|e| e.to_string())?)
            } else if unacked < ACK_EVERY {
                let due = acked_at.map_or(ACK_DELAY, |at: Instant| {
                    (at + ACK_INTERVAL)
                        .saturating_duration_since(Instant::now())
                        .max(ACK_DELAY)
                });
                match tokio::time::timeout(due, sub.next()).await {
                    Ok(p) => Some(p.map_err(|e| e.to_string())?),
                    Err(_) => None,
                }
            } else {
                None
            };
            let Some(push) = push else {
                let marks: Vec<LogMark> = std::mem::take(&mut owed)
                    .into_iter()
                    .map(|(community, seq)| LogMark { community, seq })
                    .collect();
                for request in Request::acknowledging(marks) {
                    match conn.call(&request).await.map_err(|e| e.to_string())? {
                        Response::Ok => record(&logs, d, |l| l.acks += 1),
                        other => return Err(format!("Ack answered {other:?}")),
                    }
                }
                acked_at = Some(Instant::now());
                unacked = 0;
                continue;
            };
            match push {
                None => return Err("the relay closed the push channel".to_string()),
                Some(Push::Entry(entry)) => {
                    if let EntryKind::Notice { notice_id, .. } = entry.kind {
                        let now = Instant::now();
                        record(&logs, d, |l| l.received.push((notice_id, now)));
                    }
                    owed.insert(entry.community, entry.seq);
                    unacked += 1;
                }
                Some(Push::Welcome { id, .. }) => {
                    conn.call(&Request::AckWelcome { id })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(Push::CaughtUp) => record(&logs, d, |l| l.live = true),
                Some(Push::Closed(code)) => return Err(format!("closed: {code:?}")),
            }
        }
    }
    .await;
    if let Err(e) = result {
        record(&logs, d, |l| l.error = Some(e));
    }
}

/// A raw device acknowledges when its push stream pauses this long (the real
/// client's delay).
const ACK_DELAY: Duration = Duration::from_millis(2);
/// ... but not sooner than this after its last acknowledgement (the real client's
/// interval) ...
const ACK_INTERVAL: Duration = Duration::from_millis(25);
/// ... or after this many entries.
const ACK_EVERY: usize = 256;

/// Creates communities `range` of `total` (`bench@bz` when `total` is 1, else
/// `benchI@bz`) as `owner`, each with `members`; returns (index, community id).
async fn create_communities(
    mut owner: Client,
    range: std::ops::Range<usize>,
    total: usize,
    members: Arc<Vec<String>>,
) -> Result<Vec<(usize, String)>, String> {
    let mut out = Vec::with_capacity(range.len());
    for i in range {
        let name = if total == 1 {
            COMMUNITY.to_string()
        } else {
            format!("{COMMUNITY}{i}")
        };
        let created = owner
            .create_community(&name, CLEARANCE)
            .await
            .map_err(|e| format!("creating {name}: {e}"))?;
        for chunk in members.chunks(kring_protocol::mls::MAX_BATCH_MEMBERS) {
            owner
                .add_members(&created.community, chunk)
                .await
                .map_err(|e| format!("adding members to {}: {e}", created.community))?;
        }
        out.push((i, created.community));
    }
    Ok(out)
}

impl KringSetup {
    /// Mints the federation, starts the shape's relays, creates its communities
    /// (`bench@bz`, or `bench0@bz`, ...) with every filer and device as a member,
    /// and waits until every filer has joined each and every device is live.
    pub async fn create(shape: Shape) -> Result<KringSetup, String> {
        let start = Instant::now();
        let demo = demo_binary()?;
        let mut fed =
            Federation::create(RelayLauncher::demo_binary(demo)).map_err(|e| e.to_string())?;
        let owners: Vec<String> = (0..shape.communities.div_ceil(COMMUNITIES_PER_OWNER).max(1))
            .map(|i| format!("owner{i}@{HUB}"))
            .collect();
        let filer_ids: Vec<String> = (0..shape.filers)
            .map(|i| format!("filer{i}@{}", shape.filer_relay))
            .collect();
        let device_ids: Vec<String> = (0..shape.devices)
            .map(|i| format!("dev{i}@{}", shape.device_relay(i)))
            .collect();
        let users: Vec<String> = owners
            .iter()
            .chain(&filer_ids)
            .chain(&device_ids)
            .cloned()
            .collect();
        issue_users(&fed, &users)?;
        for r in shape.relays() {
            if let Some(limit) = shape.requests_per_second {
                fed.set_relay_option(r, "requests_per_second", toml::Value::from(limit))
                    .map_err(|e| e.to_string())?;
            }
            fed.start(r).map_err(|e| e.to_string())?;
        }

        let mut filer_clients = Vec::with_capacity(shape.filers);
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
        // Devices never decrypt: key packages over a raw connection suffice.
        let dirs = device_ids.iter().map(|u| fed.user_dir(u)).collect();
        bounded(dirs, 32, |d| async move { publish_raw(&d).await }).await?;
        let members: Arc<Vec<String>> =
            Arc::new(filer_ids.iter().chain(&device_ids).cloned().collect());
        // Each owner creates its share of the communities, several at a time.
        let mut creating = tokio::task::JoinSet::new();
        let mut communities = Vec::with_capacity(shape.communities);
        for (o, owner) in owners.iter().enumerate() {
            if creating.len() >= OWNERS_AT_ONCE
                && let Some(r) = creating.join_next().await
            {
                communities.extend(r.map_err(|e| format!("owner task: {e}"))??);
            }
            let client = ready_client(&fed, owner).await?;
            let first = o * COMMUNITIES_PER_OWNER;
            let last = (first + COMMUNITIES_PER_OWNER).min(shape.communities);
            creating.spawn(create_communities(
                client,
                first..last,
                shape.communities,
                Arc::clone(&members),
            ));
        }
        while let Some(r) = creating.join_next().await {
            communities.extend(r.map_err(|e| format!("owner task: {e}"))??);
        }
        communities.sort();
        let communities: Vec<String> = communities.into_iter().map(|(_, c)| c).collect();
        for (c, u) in filer_clients.iter_mut().zip(&filer_ids) {
            let mut missing: HashSet<&String> = communities.iter().collect();
            let deadline = Instant::now() + Duration::from_secs(30 + communities.len() as u64);
            while !missing.is_empty() {
                let report = c.sync().await.map_err(|e| format!("{u}: sync: {e}"))?;
                for e in &report.events {
                    if let SyncEvent::Joined { community, .. } = e {
                        missing.remove(community);
                    }
                }
                if missing.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{u} did not join {} of the communities",
                        missing.len()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let logs: Logs = Arc::new(
            (0..shape.devices)
                .map(|_| Mutex::new(DeviceLog::default()))
                .collect(),
        );
        let mut tasks = Vec::new();
        // Devices connect in waves: each catches up (welcomes, the log) before the
        // next wave starts.
        for wave in (0..shape.devices).collect::<Vec<_>>().chunks(CONNECT_WAVE) {
            for &d in wave {
                tasks.push(tokio::spawn(raw_device(
                    fed.user_dir(&device_ids[d]),
                    d,
                    Arc::clone(&logs),
                )));
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(e) = device_error(&logs)? {
                    for t in &tasks {
                        t.abort();
                    }
                    return Err(format!("a device failed: {e}"));
                }
                let mut live = true;
                for &d in wave {
                    live &= lock(&logs[d])?.live;
                }
                if live {
                    break;
                }
                if Instant::now() > deadline {
                    for t in &tasks {
                        t.abort();
                    }
                    return Err("the devices did not catch up within 60 s".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(KringSetup {
            fed,
            shape,
            communities,
            filers: filer_clients,
            filer_ids,
            logs,
            tasks,
            device_ids,
            setup: start.elapsed(),
            filings_in_flight: 1,
        })
    }

    /// CPU time (user + system) the shape's relay processes have used, in seconds.
    pub fn relay_cpu(&self) -> Result<f64, String> {
        self.shape
            .relays()
            .iter()
            .map(|r| {
                let pid = self.fed.pid(r).ok_or(format!("relay {r} is not running"))?;
                cpu_seconds(pid)
            })
            .sum()
    }

    /// Disconnects every device (their connections close; the relays keep running).
    pub fn disconnect_devices(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
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
    /// time back to back (closed loop). Filings go to the communities in turn (one
    /// community per filing). Then waits for every device to receive every filed
    /// notice. The relays' CPU time is measured from before the first filing to
    /// the last delivery.
    pub async fn run(
        &mut self,
        total: usize,
        rate: Option<f64>,
        window: usize,
        max_wall: Duration,
    ) -> Result<FlowResult, String> {
        for l in self.logs.iter() {
            let mut l = lock(l)?;
            l.received.clear();
            l.acks = 0;
        }
        let cpu_before = self.relay_cpu()?;
        let body = body();
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now() + Duration::from_millis(50);
        let window = window.clamp(1, MAX_NOTICES_PER_FILING);
        let mut handles = Vec::new();
        let depth = self.filings_in_flight.max(1);
        // Closed loop: `window` in flight as `depth` filings of (up to) window/depth.
        let per_filing = match rate {
            None => window.div_ceil(depth),
            Some(_) => window,
        };
        for mut filer in std::mem::take(&mut self.filers) {
            let next = Arc::clone(&next);
            let body = body.clone();
            let communities = self.communities.clone();
            handles.push(tokio::spawn(async move {
                // (notice id, scheduled instant, filing start, ack instant)
                let mut filed: Vec<(Uuid, Instant, Instant, Instant)> = Vec::new();
                let mut error = None;
                // Each filing is sealed (Client::seal_notices) and sent at once; at
                // most `depth` are in flight, finished in the order sent. With one,
                // the next is sealed while the previous travels and sent once it is
                // answered.
                let mut pending: VecDeque<InFlight> = VecDeque::new();
                loop {
                    if depth == 1 && rate.is_some() {
                        // Open loop, one at a time: claim what is due only when free.
                        if let Some(p) = pending.pop_front()
                            && let Err(e) = finish(&mut filer, p, &mut filed).await
                        {
                            error = Some(e);
                            break;
                        }
                    }
                    // Take the answers already in.
                    while pending.front().is_some_and(|p| p.0.is_answered()) {
                        if let Some(p) = pending.pop_front()
                            && let Err(e) = finish(&mut filer, p, &mut filed).await
                        {
                            error = Some(e);
                            break;
                        }
                    }
                    if error.is_some() {
                        break;
                    }
                    let claimed = if Instant::now().saturating_duration_since(t0) > max_wall {
                        None
                    } else {
                        claim(&next, total, per_filing, rate, t0).await
                    };
                    let sealed = match claimed {
                        None => None,
                        Some((from, to)) => {
                            let community = &communities[(from / per_filing) % communities.len()];
                            let now = Instant::now();
                            let scheduled: Vec<Instant> = (from..to)
                                .map(|i| match rate {
                                    Some(r) => t0 + Duration::from_secs_f64(i as f64 / r),
                                    None => now,
                                })
                                .collect();
                            let drafts = (from..to)
                                .map(|i| {
                                    kring_tests::signal(
                                        community,
                                        LABEL,
                                        &format!("bench {i}"),
                                        &body,
                                    )
                                })
                                .collect();
                            Some((filer.seal_notices(drafts).await, scheduled, now))
                        }
                    };
                    // Room for the one just sealed (with one in flight: the previous
                    // one is finished only now, after the next was sealed).
                    while pending.len() >= depth {
                        if let Some(p) = pending.pop_front()
                            && let Err(e) = finish(&mut filer, p, &mut filed).await
                        {
                            error = Some(e);
                            break;
                        }
                    }
                    if error.is_some() {
                        break;
                    }
                    let Some((sealed, scheduled, start)) = sealed else {
                        break;
                    };
                    match sealed {
                        Ok(s) => match filer.send_sealed(s).await {
                            Ok(p) => pending.push_back(InFlight(p, scheduled, start)),
                            Err(e) => {
                                error = Some(format!("{}: filing: {e}", filer.user()));
                                break;
                            }
                        },
                        Err(e) => {
                            error = Some(format!("{}: filing: {e}", filer.user()));
                            break;
                        }
                    }
                }
                // Every filing sent is finished, also after an error.
                while let Some(p) = pending.pop_front() {
                    if let Err(e) = finish(&mut filer, p, &mut filed).await {
                        error.get_or_insert(e);
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
        let mut tally = Tally::default();
        loop {
            if let Some(e) = device_error(&self.logs)? {
                return Err(format!("a device failed: {e}"));
            }
            let mut all = true;
            for (d, log) in self.logs.iter().enumerate() {
                let l = lock(log)?;
                all &= tally.update(d, &l.received, |(id, _)| wanted.contains_key(id)) >= n;
            }
            if all {
                break;
            }
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let relay_cpu = self.relay_cpu()? - cpu_before;
        let devices = self.logs.len();
        let mut acks = 0;
        let mut latency = Vec::with_capacity(n * devices);
        let mut service = Vec::with_capacity(n * devices);
        let mut last = t0;
        let mut problems = Vec::new();
        let mut latency_at: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for (d, log) in self.logs.iter().enumerate() {
            let log = lock(log)?;
            let relay = self.device_ids[d]
                .rsplit_once('@')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
            let at_relay = latency_at.entry(relay).or_default();
            acks += log.acks;
            let mut seen = HashSet::new();
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
                at_relay.push(at.saturating_duration_since(sched));
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
        for l in latency_at.values_mut() {
            l.sort();
        }
        let mut filing: Vec<Duration> = filed.iter().map(|&(_, _, s, a)| a - s).collect();
        filing.sort();
        let mut acked: Vec<Duration> = filed
            .iter()
            .map(|&(_, s, _, a)| a.saturating_duration_since(s))
            .collect();
        acked.sort();
        let first_start = filed.iter().map(|f| f.2).min().unwrap_or(t0);
        Ok(FlowResult {
            notices: n,
            offered: total,
            devices,
            deliveries: latency.len(),
            window: last.saturating_duration_since(first_start),
            filing_window: filing_done.saturating_duration_since(first_start),
            latency,
            service,
            filing,
            problems,
            server_cpu: Some(relay_cpu),
            device_acks: Some(acks),
            latency_at,
            acked,
        })
    }
}

/// A filing in flight: its notices' scheduled instants and when it was sealed.
struct InFlight(PendingFiling, Vec<Instant>, Instant);

/// Takes the answer to a filing in flight and records each notice's scheduled
/// instant, filing start and acknowledgement.
async fn finish(
    filer: &mut Client,
    InFlight(pending, scheduled, start): InFlight,
    filed: &mut Vec<(Uuid, Instant, Instant, Instant)>,
) -> Result<(), String> {
    let notices = filer
        .finish_filing(pending)
        .await
        .map_err(|e| format!("{}: filing: {e}", filer.user()))?;
    let acked = Instant::now();
    for (f, s) in notices.into_iter().zip(scheduled) {
        filed.push((f.notice.id, s, start, acked));
    }
    Ok(())
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
                // Sleep only for an instant still ahead, as the MQTT publisher does:
                // tokio rounds every deadline up to its next 1 ms tick, so even
                // `sleep_until` of an instant already past waits up to a millisecond.
                let due = t0 + Duration::from_secs_f64(from as f64 / r);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
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
    /// Receiving devices / subscribers.
    pub devices: usize,
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
    /// CPU seconds (user + system) of the relay processes over the run (Kring only).
    pub server_cpu: Option<f64>,
    /// `Ack` requests the devices sent during the run (Kring only; sent after the
    /// last delivery may be missed).
    pub device_acks: Option<usize>,
    /// Delivery latency from the scheduled instant by the devices' relay (sorted;
    /// Kring only).
    pub latency_at: BTreeMap<String, Vec<Duration>>,
    /// Scheduled instant -> the filer's acknowledgement (sorted; Kring only).
    pub acked: Vec<Duration>,
}

impl FlowResult {
    /// Notices per second delivered to all devices.
    pub fn notices_per_s(&self) -> f64 {
        (self.deliveries as f64 / self.devices.max(1) as f64) / self.window.as_secs_f64().max(1e-9)
    }

    pub fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Filings acknowledged per second.
    pub fn filed_per_s(&self) -> f64 {
        self.notices as f64 / self.filing_window.as_secs_f64().max(1e-9)
    }

    /// The relays' CPU time per delivery, in microseconds (Kring runs only).
    pub fn cpu_per_delivery_us(&self) -> Option<f64> {
        self.server_cpu
            .map(|s| s * 1e6 / self.deliveries.max(1) as f64)
    }

    /// The relays' CPU time per notice filed, in microseconds (Kring runs only).
    pub fn cpu_per_notice_us(&self) -> Option<f64> {
        self.server_cpu
            .map(|s| s * 1e6 / self.notices.max(1) as f64)
    }
}

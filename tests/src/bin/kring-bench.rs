//! `kring-bench`: filing → delivery throughput and latency on one relay.
//!
//! Mints a development federation, starts relay `bz` as a separate process of the
//! sibling `kring-demo` binary, creates a community with one filer and
//! [`DEVICES`] subscribed devices (each its own in-process [`Client`] running
//! [`Client::watch`] in its own task), files N notices with a 1 KiB body one after
//! the other (each waits for the relay's durable acknowledgement) and measures when
//! every device has decrypted and stored each notice.
//!
//! Latency of one delivery = the instant the device's watch reports the notice minus
//! the instant the filer started filing it. Throughput = deliveries (and notices)
//! divided by the time from the first filing to the last delivery.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_client::{Category, Client, NoticeDraft, NoticeKind, SyncEvent};
use kring_tests::{Federation, RelayLauncher};

/// Subscribed devices (each a separate user on relay `bz`).
const DEVICES: usize = 10;
/// Body size of every notice, in bytes.
const BODY_BYTES: usize = 1024;
/// Notices filed by default.
const DEFAULT_NOTICES: usize = 500;
/// Notices filed with `--quick`.
const QUICK_NOTICES: usize = 100;
/// Most notices one run may file.
const MAX_NOTICES: usize = 100_000;
/// How long to wait for all deliveries after the last filing.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);
/// How long the watchers may take to catch up before filing starts.
const WATCH_READY_DEADLINE: Duration = Duration::from_secs(60);
/// Community name (on relay `bz`).
const COMMUNITY: &str = "bench";
/// Clearance of every bench user and the community's maximum label.
const CLEARANCE: &str = "NL:STG-GEHEIM";
/// Label of every filed notice.
const LABEL: &str = "NL:DEP-VERTROUWELIJK";
/// Title prefix; the rest of the title is the notice's sequence number in the run.
const TITLE_PREFIX: &str = "bench ";

const USAGE: &str = "kring-bench [--quick | --notices N]\n\n\
    Measures filing -> delivery throughput and latency on one relay (bz) with 10\n\
    subscribed devices and 1 KiB bodies. Relays run as separate processes of the\n\
    kring-demo binary next to this one; build both with\n\
    \x20   cargo build --release --bin kring-demo --bin kring-bench\n\
    --notices N  file N notices (default 500, at most 100000)\n\
    --quick      file 100 notices\n\
    Exit status: 0 when every device received every notice, 1 otherwise, 2 on usage errors.";

#[derive(Debug)]
struct Options {
    notices: usize,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut o = Options {
        notices: DEFAULT_NOTICES,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.notices = QUICK_NOTICES,
            "--notices" => {
                let v = args.next().ok_or("--notices needs a number")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--notices {v:?} is not a number"))?;
                if n == 0 || n > MAX_NOTICES {
                    return Err(format!("--notices must be 1..={MAX_NOTICES}, not {n}"));
                }
                o.notices = n;
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kring-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kring-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kring-bench: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

/// The `kring-demo` executable next to this one.
fn demo_binary() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this executable's path: {e}"))?;
    let demo = exe.with_file_name(format!("kring-demo{}", std::env::consts::EXE_SUFFIX));
    if demo.is_file() {
        Ok(demo)
    } else {
        Err(format!(
            "{} not found: relays run as processes of kring-demo; build it next to \
             kring-bench with `cargo build --release --bin kring-demo --bin kring-bench`",
            demo.display()
        ))
    }
}

/// What the watchers saw, per device.
#[derive(Debug, Default)]
struct DeviceLog {
    /// (notice number, instant the watch reported it).
    received: Vec<(usize, Instant)>,
    /// The watch has caught up and is live.
    live: bool,
    /// Notices not from this run, refusals, unreadable entries, warnings,
    /// reconnects.
    anomalies: Vec<String>,
}

type Shared = Arc<Mutex<Vec<DeviceLog>>>;

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Vec<DeviceLog>>, String> {
    shared
        .lock()
        .map_err(|_| "a watcher panicked while recording".to_string())
}

/// Records one event of device `d`.
fn record(shared: &Shared, d: usize, event: &SyncEvent) {
    let now = Instant::now();
    let Ok(mut logs) = shared.lock() else { return };
    let Some(log) = logs.get_mut(d) else { return };
    match event {
        SyncEvent::Notice(n) => match n
            .title
            .strip_prefix(TITLE_PREFIX)
            .and_then(|s| s.parse::<usize>().ok())
        {
            Some(i) => log.received.push((i, now)),
            None => log
                .anomalies
                .push(format!("unexpected notice {:?}", n.title)),
        },
        SyncEvent::CaughtUp => log.live = true,
        SyncEvent::Refused { reason, .. } => log.anomalies.push(format!("refused: {reason}")),
        SyncEvent::Unreadable { reason, .. } => log.anomalies.push(format!("unreadable: {reason}")),
        SyncEvent::Warning(w) => log.anomalies.push(format!("warning: {w}")),
        SyncEvent::Reconnecting { reason, .. } => {
            log.anomalies.push(format!("reconnecting: {reason}"))
        }
        _ => {}
    }
}

async fn ready_client(fed: &Federation, user: &str) -> Result<Client, String> {
    let mut c = fed.client(user).map_err(|e| format!("{user}: {e}"))?;
    c.publish_key_packages(3)
        .await
        .map_err(|e| format!("{user}: publishing key packages: {e}"))?;
    Ok(c)
}

fn body() -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..BODY_BYTES)
        .map(|i| char::from(alphabet[i % alphabet.len()]))
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(options: &Options) -> Result<bool, String> {
    let n = options.notices;
    let demo = demo_binary()?;
    let setup_start = Instant::now();

    let mut fed =
        Federation::create(RelayLauncher::demo_binary(demo)).map_err(|e| e.to_string())?;
    let filer_id = "filer@bz".to_string();
    let device_ids: Vec<String> = (0..DEVICES).map(|i| format!("dev{i}@bz")).collect();
    for u in std::iter::once(&filer_id).chain(&device_ids) {
        fed.issue_user(u, CLEARANCE, &[])
            .map_err(|e| format!("issuing {u}: {e}"))?;
    }
    fed.start("bz").map_err(|e| e.to_string())?;

    let mut filer = ready_client(&fed, &filer_id).await?;
    let mut devices = Vec::with_capacity(DEVICES);
    for u in &device_ids {
        devices.push(ready_client(&fed, u).await?);
    }
    let created = filer
        .create_community(COMMUNITY, CLEARANCE)
        .await
        .map_err(|e| format!("creating the community: {e}"))?;
    filer
        .add_members(&created.community, &device_ids)
        .await
        .map_err(|e| format!("adding the devices: {e}"))?;
    for (dev, u) in devices.iter_mut().zip(&device_ids) {
        let report = dev.sync().await.map_err(|e| format!("{u}: sync: {e}"))?;
        let joined = report.events.iter().any(
            |e| matches!(e, SyncEvent::Joined { community, .. } if *community == created.community),
        );
        if !joined {
            return Err(format!("{u} did not join {}", created.community));
        }
    }

    // One watcher task per device.
    let shared: Shared = Arc::new(Mutex::new(
        (0..DEVICES).map(|_| DeviceLog::default()).collect(),
    ));
    let mut watchers = Vec::with_capacity(DEVICES);
    for (d, mut dev) in devices.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        watchers.push(tokio::spawn(async move {
            let result = dev.watch(|e| record(&shared, d, e)).await;
            result.map_err(|e| format!("{}: watch stopped: {e}", dev.user()))
        }));
    }
    let ready_deadline = Instant::now() + WATCH_READY_DEADLINE;
    loop {
        if lock(&shared)?.iter().all(|l| l.live) {
            break;
        }
        if watchers.iter().any(|w| w.is_finished()) {
            return Err("a watcher stopped before catching up".into());
        }
        if Instant::now() > ready_deadline {
            return Err(format!(
                "the watchers did not catch up within {} s",
                WATCH_READY_DEADLINE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let setup = setup_start.elapsed();

    // File.
    let body = body();
    let mut sent: Vec<Instant> = Vec::with_capacity(n);
    let mut filing: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        let draft = NoticeDraft {
            community: created.community.clone(),
            label: LABEL.into(),
            kind: NoticeKind::Signal,
            category: Category::Disinformation,
            title: format!("{TITLE_PREFIX}{i}"),
            body: body.clone(),
            in_reply_to: None,
            stix: None,
        };
        let start = Instant::now();
        sent.push(start);
        filer
            .file_notice(draft)
            .await
            .map_err(|e| format!("filing notice {i}: {e}"))?;
        filing.push(start.elapsed());
    }
    let first = sent.first().copied().ok_or("nothing was filed")?;
    let filing_done = first.elapsed();

    // Wait for every delivery.
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let mut timed_out = false;
    loop {
        if lock(&shared)?.iter().all(|l| l.received.len() >= n) {
            break;
        }
        if watchers.iter().all(|w| w.is_finished()) || Instant::now() > deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut watch_errors = Vec::new();
    for w in watchers {
        if w.is_finished() {
            match w.await {
                Ok(Err(e)) => watch_errors.push(e),
                Ok(Ok(())) => {}
                Err(e) => watch_errors.push(format!("watcher task: {e}")),
            }
        } else {
            w.abort();
        }
    }

    // Evaluate.
    let logs = std::mem::take(&mut *lock(&shared)?);
    let mut latencies = Vec::with_capacity(n * DEVICES);
    let mut last_delivery = first;
    let mut problems = Vec::new();
    for (d, log) in logs.iter().enumerate() {
        let mut seen = vec![false; n];
        let mut duplicates = 0usize;
        for &(i, at) in &log.received {
            match seen.get_mut(i) {
                Some(s) if *s => duplicates += 1,
                Some(s) => {
                    *s = true;
                    latencies.push(at.saturating_duration_since(sent[i]));
                    last_delivery = last_delivery.max(at);
                }
                None => problems.push(format!("{}: notice number {i} out of range", device_ids[d])),
            }
        }
        let missing = seen.iter().filter(|s| !**s).count();
        if missing > 0 {
            problems.push(format!(
                "{}: {missing} of {n} notices missing",
                device_ids[d]
            ));
        }
        if duplicates > 0 {
            problems.push(format!(
                "{}: {duplicates} duplicate deliveries",
                device_ids[d]
            ));
        }
        for a in &log.anomalies {
            problems.push(format!("{}: {a}", device_ids[d]));
        }
    }
    problems.extend(watch_errors);
    if timed_out {
        problems.push(format!(
            "not everything arrived within {} s of the last filing",
            DELIVERY_DEADLINE.as_secs()
        ));
    }
    latencies.sort();
    filing.sort();
    let window = last_delivery.saturating_duration_since(first);
    let secs = window.as_secs_f64().max(f64::MIN_POSITIVE);
    let deliveries = latencies.len();
    let notices_per_s = (deliveries as f64 / DEVICES as f64) / secs;
    let cpus = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(0);

    println!("kring-bench: one relay (bz, separate process), in-process clients");
    println!("  {:<34} {cpus}", "cpus (nproc)");
    println!("  {:<34} {n}", "notices filed");
    println!("  {:<34} {DEVICES}", "subscribed devices");
    println!("  {:<34} {BODY_BYTES} bytes", "body size");
    println!("  {:<34} {LABEL}", "label");
    println!(
        "  {:<34} {:.2} s",
        "setup (PKI, relay, community)",
        setup.as_secs_f64()
    );
    println!(
        "  {:<34} {:.3} s",
        "filing wall time",
        filing_done.as_secs_f64()
    );
    println!(
        "  {:<34} {:.1} acks/s",
        "filing rate (sequential)",
        n as f64 / filing_done.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    println!(
        "  {:<34} p50 {}  p99 {}  max {}",
        "filing call (file_notice -> ack)",
        ms(percentile(&filing, 50.0)),
        ms(percentile(&filing, 99.0)),
        ms(filing.last().copied().unwrap_or_default())
    );
    println!(
        "  {:<34} {:.3} s",
        "first filing -> last delivery",
        window.as_secs_f64()
    );
    println!("  {:<34} {deliveries} of {}", "deliveries", n * DEVICES);
    println!(
        "  {:<34} {:.1} deliveries/s",
        "delivery throughput",
        deliveries as f64 / secs
    );
    println!(
        "  {:<34} {notices_per_s:.1} notices/s",
        "notice throughput (all devices)"
    );
    println!(
        "  {:<34} p50 {}  p90 {}  p99 {}  max {}",
        "delivery latency",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!("  (latency: filing start -> device decrypted and stored it; over all deliveries)");
    for p in &problems {
        println!("  PROBLEM: {p}");
    }
    println!("notices_per_s: {notices_per_s:.1}");
    drop(fed);
    Ok(problems.is_empty())
}

//! `kring-bench`: the performance figures, Kring against mosquitto on one machine.
//!
//! Scenarios (all by default; `--only a,b` selects):
//!
//! - `throughput`: filing -> delivery across two federated relays (filers at
//!   `nctv`, hub `bz`, 10 devices split across both, 1 KiB bodies), closed loop,
//!   against mosquitto (TLS 1.3 with client certificates, QoS 1, persistence) with
//!   the same message count, size, publisher and subscriber count; with the relays'
//!   CPU per delivery (user and system time of both relay processes);
//! - `latency`: the same paths at an offered load of 1,000 notices/s (open loop);
//! - `client-cost`: encrypt-and-sign and decrypt-and-verify per second on one core;
//! - `membership`: adding / removing one member of a 1,000-member community,
//!   committer vs relay verification;
//! - `storage`: relay bytes per notice at community sizes 10 and 1,000;
//! - `memory`: relay RSS with 1,000 connected idle devices;
//! - `revocation`: revocation acknowledged -> the device cut off at its relay, and
//!   -> the member removed at the hub of its community (another relay).
//!
//! Relays run as separate processes of the sibling `kring-demo` binary; mosquitto
//! is Debian's package (`scripts/mosquitto.sh install`). The last line printed is
//! `ratio_vs_mosquitto: X.XX` (Kring notices/s / mosquitto messages/s).
#![forbid(unsafe_code)]

mod common;
mod kring_flow;
mod mls_cost;
mod mqtt;
mod relay_scale;
mod revocation;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Table, Verdict, mib, ms, percentile, verdict};
use kring_flow::{DEVICES, FILER_RELAY, FlowResult, HUB, KringSetup};
use kring_protocol::wire::limits::MAX_NOTICES_PER_FILING;

const SCENARIOS: [&str; 7] = [
    "throughput",
    "latency",
    "client-cost",
    "membership",
    "storage",
    "memory",
    "revocation",
];

const USAGE: &str = "kring-bench [--quick] [--only SCENARIO,...] [options]\n\n\
    Scenarios: throughput, latency, client-cost, membership, storage, memory,\n\
    revocation\n\
    (default: all). Throughput and latency need mosquitto (install it with\n\
    scripts/mosquitto.sh install) and kring-demo next to this binary:\n\
    \x20   cargo build --release --bin kring-demo --bin kring-bench\n\n\
    --quick            smaller counts, finishes in under 2 minutes on 2 cores\n\
    --only LIST        comma-separated scenarios\n\
    --notices N        throughput: notices (default 5000, quick 500)\n\
    --filers N         filers at nctv / MQTT publishers (default 1)\n\
    --latency-secs S   latency: seconds of offered load (default 5, quick 2)\n\
    --rate R           latency: offered notices/s (default 1000)\n\
    --members N        membership and the large storage community (default 1000, quick 100)\n\
    --devices N        memory: idle devices (default 1000)\n\
    --window W         throughput: notices in flight per filer / publisher in the\n\
    \x20                  pipelined run (default 100 = rumqttc's and mosquitto's\n\
    \x20                  inflight limit; a run with 1 in flight is always made too)\n\
    Exit status: 0 when every scenario ran and every delivery arrived (goals not\n\
    met do not fail the run; they are marked in the table), 1 otherwise, 2 on usage.";

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    only: Vec<String>,
    notices: usize,
    filers: usize,
    latency_secs: f64,
    rate: f64,
    members: usize,
    devices: usize,
    window: usize,
}

fn parse_args() -> Result<Option<Options>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        only: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        notices: if quick { 500 } else { 5000 },
        filers: 1,
        latency_secs: if quick { 2.0 } else { 5.0 },
        rate: 1000.0,
        members: if quick { 100 } else { 1000 },
        devices: 1000,
        window: 100,
    };
    let mut it = args.into_iter();
    let num = |v: Option<String>, name: &str, max: usize| -> Result<usize, String> {
        let v = v.ok_or(format!("{name} needs a number"))?;
        let n: usize = v
            .parse()
            .map_err(|_| format!("{name} {v:?} is not a number"))?;
        if n == 0 || n > max {
            return Err(format!("{name} must be 1..={max}, not {n}"));
        }
        Ok(n)
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--only" => {
                let v = it.next().ok_or("--only needs a list")?;
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for s in &list {
                    if !SCENARIOS.contains(&s.as_str()) {
                        return Err(format!("unknown scenario {s:?} (see --help)"));
                    }
                }
                o.only = list;
            }
            "--notices" => o.notices = num(it.next(), "--notices", 1_000_000)?,
            "--filers" => o.filers = num(it.next(), "--filers", 64)?,
            "--latency-secs" => o.latency_secs = num(it.next(), "--latency-secs", 600)? as f64,
            "--rate" => o.rate = num(it.next(), "--rate", 100_000)? as f64,
            "--members" => o.members = num(it.next(), "--members", 5000)?.max(2),
            "--devices" => o.devices = num(it.next(), "--devices", 10_000)?,
            "--window" => o.window = num(it.next(), "--window", MAX_NOTICES_PER_FILING)?,
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
    let (table, ratio, ok) = runtime.block_on(run(&options));
    table.print();
    match ratio {
        Some(r) => println!("ratio_vs_mosquitto: {r:.2}"),
        None => println!("ratio_vs_mosquitto: n/a (throughput not measured)"),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn wants(o: &Options, s: &str) -> bool {
    o.only.iter().any(|x| x == s)
}

fn progress(msg: &str) {
    eprintln!("kring-bench: {msg}");
}

async fn run(o: &Options) -> (Table, Option<f64>, bool) {
    let started = Instant::now();
    let mut t = Table::default();
    let mut ok = true;
    let cpus = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(0);
    t.info(
        "machine",
        "cpus (nproc), mode",
        format!("{cpus}, {}", if o.quick { "--quick" } else { "full" }),
    );
    let mut ratio = None;

    if wants(o, "throughput") || wants(o, "latency") {
        match flows(o, &mut t).await {
            Ok((r, delivered)) => {
                ratio = r;
                ok &= delivered;
            }
            Err(e) => {
                ok = false;
                t.info("throughput", "FAILED", e);
            }
        }
    }
    if wants(o, "client-cost") {
        progress("client cost");
        let secs = if o.quick { 1.0 } else { 3.0 };
        match tokio::task::spawn_blocking(move || mls_cost::client_cost(secs)).await {
            Ok(Ok(c)) => {
                t.info(
                    "client-cost",
                    "encrypt-and-sign, 1 core",
                    format!("{:.0} notices/s", c.encrypt_per_s),
                );
                t.info(
                    "client-cost",
                    "decrypt-and-verify, 1 core",
                    format!("{:.0} notices/s", c.decrypt_per_s),
                );
                t.info(
                    "client-cost",
                    "notice JSON / MLS message",
                    format!(
                        "{} / {} bytes ({} samples)",
                        c.plaintext_bytes, c.message_bytes, c.samples
                    ),
                );
            }
            Ok(Err(e)) => {
                ok = false;
                t.info("client-cost", "FAILED", e);
            }
            Err(e) => {
                ok = false;
                t.info("client-cost", "FAILED", e.to_string());
            }
        }
    }
    if wants(o, "membership") {
        progress(&format!("membership at {} members", o.members));
        let members = o.members;
        match tokio::task::spawn_blocking(move || mls_cost::membership(members, 3)).await {
            Ok(Ok(m)) => {
                let scenario = "membership";
                t.info(
                    scenario,
                    "community size (build time)",
                    format!("{} members ({:.1} s)", m.members, m.build.as_secs_f64()),
                );
                let add_share = m.add_relay.as_secs_f64() / m.add_commit.as_secs_f64().max(1e-9);
                let rem_share =
                    m.remove_relay.as_secs_f64() / m.remove_commit.as_secs_f64().max(1e-9);
                let full = m.members >= 1000;
                let v = |share: f64| {
                    if full {
                        verdict(share <= 0.2)
                    } else {
                        Verdict::Info
                    }
                };
                t.info(
                    scenario,
                    "add 1: committer",
                    format!("{} (openmls published: 734 ms at 1,000)", ms(m.add_commit)),
                );
                t.goal(
                    scenario,
                    "add 1: relay verify+merge",
                    format!(
                        "{} = {:.0}% of committer",
                        ms(m.add_relay),
                        add_share * 100.0
                    ),
                    "relay <= 20% of committer",
                    v(add_share),
                );
                t.info(scenario, "remove 1: committer", ms(m.remove_commit));
                t.goal(
                    scenario,
                    "remove 1: relay verify+merge",
                    format!(
                        "{} = {:.0}% of committer",
                        ms(m.remove_relay),
                        rem_share * 100.0
                    ),
                    "relay <= 20% of committer",
                    v(rem_share),
                );
                t.info(
                    scenario,
                    "add commit / welcome size",
                    format!(
                        "{} / {} bytes (median of {} runs)",
                        m.add_commit_bytes, m.welcome_bytes, m.repetitions
                    ),
                );
                if !full {
                    t.note(format!(
                        "membership ran at {} members (--quick or --members); the goal is stated at 1,000",
                        m.members
                    ));
                }
            }
            Ok(Err(e)) => {
                ok = false;
                t.info("membership", "FAILED", e);
            }
            Err(e) => {
                ok = false;
                t.info("membership", "FAILED", e.to_string());
            }
        }
    }
    if wants(o, "storage") {
        let notices = if o.quick { 50 } else { 200 };
        let mut results = Vec::new();
        for size in [10, o.members] {
            progress(&format!("storage at {size} members, {notices} notices"));
            match relay_scale::storage(size, notices).await {
                Ok(s) => results.push(s),
                Err(e) => {
                    ok = false;
                    t.info("storage", format!("{size} members: FAILED"), e);
                }
            }
        }
        for s in &results {
            if let Some(f) = &s.add_failure {
                ok = false;
                t.info(
                    "storage",
                    format!("{} members: FAILED to build", s.wanted),
                    format!("reached {} members", s.members),
                );
                t.note(format!("storage: {f}"));
            }
            let classes: Vec<String> = s
                .after
                .by_class
                .keys()
                .map(|c| (c, s.class_per_notice(*c)))
                .filter(|(_, b)| b.abs() >= 1.0)
                .map(|(c, b)| format!("{c}/ {b:.0}"))
                .collect();
            t.info(
                "storage",
                format!("{} members: bytes per notice", s.members),
                format!("{:.0} B ({})", s.per_notice(), classes.join(", ")),
            );
            t.info(
                "storage",
                format!("{} members: store before filing", s.members),
                format!(
                    "{} in records, {} on disk (welcomes W/ v/ V/ w/: {})",
                    mib(s.before.total()),
                    mib(s.before.disk),
                    mib(['W', 'v', 'V', 'w']
                        .iter()
                        .filter_map(|c| s.before.by_class.get(c))
                        .map(|x| x.1)
                        .sum())
                ),
            );
        }
        if let [small, large] = &results[..] {
            let (a, b) = (small.per_notice(), large.per_notice());
            let diff = (b - a).abs() / a.max(1.0);
            let v = if large.members >= 1000 && large.add_failure.is_none() {
                verdict(diff <= 0.10)
            } else {
                Verdict::Info
            };
            t.goal(
                "storage",
                format!("{} vs {} members", small.members, large.members),
                format!("{:+.1}%", (b - a) / a.max(1.0) * 100.0),
                "within 10%",
                v,
            );
        }
        t.note(
            "storage: relay stopped before and after filing; every key+value of its sled tree summed by \
             key class (l/ log, n/ notice records, a/ audit, u/ cursors, W/ welcomes, ...); per notice = \
             delta / notices",
        );
    }
    if wants(o, "memory") {
        progress(&format!("memory with {} idle devices", o.devices));
        match relay_scale::memory(o.devices).await {
            Ok(m) => {
                let v = if m.devices >= 1000 {
                    verdict(m.connected_rss < 100 * 1000 * 1000)
                } else {
                    Verdict::Info
                };
                t.info("memory", "relay RSS, no devices", mib(m.idle_rss));
                t.goal(
                    "memory",
                    format!("relay RSS, {} idle devices", m.devices),
                    format!(
                        "{} ({:.1} KiB per device; connected in {:.1} s)",
                        mib(m.connected_rss),
                        (m.connected_rss.saturating_sub(m.idle_rss)) as f64
                            / 1024.0
                            / m.devices as f64,
                        m.connect_time.as_secs_f64()
                    ),
                    "< 100 MB at 1,000",
                    v,
                );
            }
            Err(e) => {
                ok = false;
                t.info("memory", "FAILED", e);
            }
        }
    }
    if wants(o, "revocation") {
        let rounds = if o.quick { 3 } else { 10 };
        progress(&format!("revocation, {rounds} rounds"));
        match revocation::run(rounds).await {
            Ok(r) => {
                let mut cut = r.cut_off.clone();
                cut.sort();
                let mut removed = r.removed_at_hub.clone();
                removed.sort();
                let worst = cut.last().copied().unwrap_or_default();
                t.goal(
                    "revocation",
                    format!("revoke sent -> cut off, {rounds} rounds"),
                    format!("p50 {}, max {}", ms(percentile(&cut, 50.0)), ms(worst)),
                    "within 1 s",
                    verdict(worst < Duration::from_secs(1)),
                );
                let worst = removed.last().copied().unwrap_or_default();
                t.goal(
                    "revocation",
                    "revoke sent -> removed at the hub",
                    format!("p50 {}, max {}", ms(percentile(&removed, 50.0)), ms(worst)),
                    "within 1 s, admin online",
                    verdict(worst < Duration::from_secs(1)),
                );
            }
            Err(e) => {
                ok = false;
                t.info("revocation", "FAILED", e);
            }
        }
    }
    t.info(
        "machine",
        "bench wall time",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    (t, ratio, ok)
}

fn flow_rows(t: &mut Table, scenario: &'static str, who: &str, r: &FlowResult) {
    t.info(
        scenario,
        format!("{who}: delivered"),
        format!(
            "{:.1} msg/s to all {DEVICES} ({:.0} deliveries/s; {} of {} in {:.2} s)",
            r.notices_per_s(),
            r.deliveries_per_s(),
            r.deliveries,
            r.notices * DEVICES,
            r.window.as_secs_f64()
        ),
    );
    t.info(
        scenario,
        format!("{who}: acknowledged to sender"),
        format!(
            "{:.1}/s; ack p50 {} p99 {}",
            r.filed_per_s(),
            ms(percentile(&r.filing, 50.0)),
            ms(percentile(&r.filing, 99.0))
        ),
    );
    t.info(
        scenario,
        format!("{who}: latency send->delivery"),
        format!(
            "p50 {}  p99 {}  max {}",
            ms(percentile(&r.service, 50.0)),
            ms(percentile(&r.service, 99.0)),
            ms(r.service.last().copied().unwrap_or_default())
        ),
    );
}

async fn flows(o: &Options, t: &mut Table) -> Result<(Option<f64>, bool), String> {
    let broker_bin = mqtt::mosquitto_binary();
    if let Err(e) = &broker_bin {
        return Err(e.clone());
    }
    progress("setting up two relays (bz hub, nctv), filers and devices");
    let mut k = KringSetup::create(o.filers).await?;
    t.info(
        "setup",
        "Kring",
        format!(
            "hub {HUB}, {} filer(s) at {FILER_RELAY}, {DEVICES} devices ({:.1} s)",
            k.filers(),
            k.setup.as_secs_f64()
        ),
    );
    let fed_dir = k.fed.dir().to_path_buf();
    let tmp = tempfile::Builder::new()
        .prefix("kring-bench-mosquitto-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let filer_users: Vec<String> = (0..k.filers())
        .map(|i| format!("filer{i}@{FILER_RELAY}"))
        .collect();
    let broker = mqtt::Broker::start(&fed_dir, &tmp.path().join("a"), mqtt::Autosave::EverySecond)?;
    let mut m =
        mqtt::MqttSetup::connect(&fed_dir, broker.port, &filer_users, &k.device_ids).await?;
    t.info(
        "setup",
        "mosquitto",
        format!(
            "{} publisher(s), {DEVICES} subscribers, QoS 1, TLS 1.3 + client certs, persistence ({})",
            filer_users.len(),
            mqtt::Autosave::EverySecond.describe()
        ),
    );
    let mut problems = Vec::new();
    let mut ratio = None;
    if wants(o, "throughput") {
        let mut windows = vec![1];
        if o.window > 1 {
            windows.push(o.window);
        }
        for &w in &windows {
            progress(&format!(
                "throughput: Kring, {} notices, {w} in flight",
                o.notices
            ));
            let pids: Vec<u32> = [HUB, FILER_RELAY]
                .iter()
                .filter_map(|r| k.fed.pid(r))
                .collect();
            let cpu =
                || -> Result<f64, String> { pids.iter().map(|p| common::cpu_seconds(*p)).sum() };
            let cpu_before = cpu()?;
            let kr = k.run(o.notices, None, w, Duration::from_secs(3600)).await?;
            let relay_cpu = cpu()? - cpu_before;
            progress(&format!(
                "throughput: mosquitto, {} messages, {w} in flight",
                o.notices
            ));
            let mr = m.run(o.notices, None, w, Duration::from_secs(3600)).await?;
            let scenario = if w == 1 {
                "throughput/1"
            } else {
                "throughput/W"
            };
            t.info(scenario, "in flight per sender", w.to_string());
            flow_rows(t, scenario, "Kring", &kr);
            t.info(
                scenario,
                "Kring: relay CPU per delivery",
                format!(
                    "{:.0} µs (both relays: {:.2} s of CPU for {} deliveries)",
                    relay_cpu * 1e6 / kr.deliveries.max(1) as f64,
                    relay_cpu,
                    kr.deliveries
                ),
            );
            flow_rows(t, scenario, "mosquitto", &mr);
            problems.extend(kr.problems.iter().map(|p| format!("Kring: {p}")));
            problems.extend(mr.problems.iter().map(|p| format!("mosquitto: {p}")));
            let r = kr.notices_per_s() / mr.notices_per_s().max(1e-9);
            // The headline ratio is the last (largest) window's.
            ratio = Some(r);
            t.goal(
                scenario,
                "Kring / mosquitto",
                format!("{r:.2}"),
                ">= 2.00",
                verdict(r >= 2.0),
            );
        }
        // The strictest persistence mosquitto offers, for reference.
        drop(m);
        let strict =
            mqtt::Broker::start(&fed_dir, &tmp.path().join("b"), mqtt::Autosave::EveryChange)?;
        let mut ms_ =
            mqtt::MqttSetup::connect(&fed_dir, strict.port, &filer_users, &k.device_ids).await?;
        let w = o.window;
        let sr = ms_
            .run(o.notices, None, w, Duration::from_secs(3600))
            .await?;
        t.info(
            "throughput/W",
            "mosquitto, autosave every change",
            format!(
                "{:.1} msg/s to all {DEVICES}; p50 {} p99 {}",
                sr.notices_per_s(),
                ms(percentile(&sr.service, 50.0)),
                ms(percentile(&sr.service, 99.0))
            ),
        );
        problems.extend(
            sr.problems
                .iter()
                .map(|p| format!("mosquitto (strict): {p}")),
        );
        drop(ms_);
        drop(strict);
        m = mqtt::MqttSetup::connect(&fed_dir, broker.port, &filer_users, &k.device_ids).await?;
    }
    if wants(o, "latency") {
        let total = (o.rate * o.latency_secs) as usize;
        let max_wall = Duration::from_secs_f64(o.latency_secs + 2.0);
        progress(&format!("latency: Kring at {} notices/s offered", o.rate));
        let kr = k
            .run(total, Some(o.rate), MAX_NOTICES_PER_FILING, max_wall)
            .await?;
        progress(&format!(
            "latency: mosquitto at {} messages/s offered",
            o.rate
        ));
        let mr = m.run(total, Some(o.rate), 1, max_wall).await?;
        for (who, r) in [("Kring", &kr), ("mosquitto", &mr)] {
            t.info(
                "latency",
                format!("{who}: sent of offered"),
                format!(
                    "{} of {} ({:.0}/s achieved of {:.0}/s offered)",
                    r.notices,
                    r.offered,
                    r.filed_per_s(),
                    o.rate
                ),
            );
            t.info(
                "latency",
                format!("{who}: scheduled->delivery"),
                format!(
                    "p50 {}  p99 {}",
                    ms(percentile(&r.latency, 50.0)),
                    ms(percentile(&r.latency, 99.0))
                ),
            );
        }
        let kp99 = percentile(&kr.latency, 99.0).as_secs_f64();
        let mp99 = percentile(&mr.latency, 99.0).as_secs_f64();
        let sustained = kr.notices == kr.offered;
        let lr = kp99 / mp99.max(1e-9);
        t.goal(
            "latency",
            "p99 Kring / mosquitto",
            if sustained {
                format!("{lr:.2}")
            } else {
                format!("{lr:.2} (Kring did NOT sustain the offered rate)")
            },
            "<= 1.00",
            verdict(sustained && lr <= 1.0),
        );
        problems.extend(kr.problems.iter().map(|p| format!("Kring: {p}")));
        problems.extend(mr.problems.iter().map(|p| format!("mosquitto: {p}")));
    }
    t.note(format!(
        "throughput/latency: {} filer(s) at {FILER_RELAY} file into a community hubbed at {HUB}. Throughput is \
         closed loop with the same number in flight on both sides: a filer files W notices in one filing \
         (Client::file_notices: one group load, one request, one fsync at the relay; it takes &mut self) and waits \
         for the answer; a publisher publishes W messages and waits for their W PUBACKs. A filing is \
         acknowledged when durable (fsync'd) at {FILER_RELAY} (Queued); mosquitto acknowledges from memory. \
         Devices dev0-4@{HUB}, dev5-9@{FILER_RELAY} are raw QUIC connections (user certificates) that receive \
         every entry and acknowledge each run of entries (one Request::Ack up to the highest seq when the stream \
         pauses 2 ms, as the real client does) without decrypting (see client-cost); 10 QoS 1 MQTT subscribers \
         with clean_session false (rumqttc acknowledges every PUBLISH), the same users' certificates. Latency \
         runs are open loop from the scheduled instant (a filer files every notice due when it is free); \
         scheduling stops {:.0} s after the start if a side falls behind.",
        k.filers(),
        o.latency_secs + 2.0
    ));
    for p in &problems {
        t.info("PROBLEM", "delivery", p.clone());
    }
    drop(m);
    drop(broker);
    drop(k);
    Ok((ratio, problems.is_empty()))
}

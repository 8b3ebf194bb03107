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
//! - `single-relay`: the throughput flow with the filers and all 10 devices at one
//!   relay, the community's hub `bz` (no federation), against mosquitto;
//! - `fan-out`: one community at one relay with 10, 100 and 1,000 connected devices
//!   (`--fanout`), closed loop with W in flight: deliveries/s, p99 and relay CPU per
//!   delivery, against mosquitto with as many subscribers;
//! - `communities`: one relay hubbing 1,000 communities of 10 members
//!   (`--communities`), a notice filed to each in turn, against the same number of
//!   notices in one community: relay CPU per notice at 1 and at N communities;
//! - `client-cost`: encrypt-and-sign and decrypt-and-verify per second on one core;
//! - `membership`: adding / removing one member of a 1,000-member community,
//!   committer vs relay verification;
//! - `storage`: relay bytes per notice at community sizes 10 and 1,000;
//! - `journal`: one group commit of the relay's store (a 3 KiB write, its journal
//!   record and `fdatasync`) in a new journal file and in a reused one;
//! - `memory`: relay RSS with 1,000 connected idle devices;
//! - `revocation`: revocation acknowledged -> the device cut off at its relay, and
//!   -> the member removed at the hub of its community (another relay).
//!
//! Relays run as separate processes of the sibling `kring-demo` binary, with a
//! per-identity request limit of 100,000/s (`--relay-rps` sets another; the
//! relay's default, 200, is meant for people); mosquitto is Debian's package
//! (`scripts/mosquitto.sh install`). The last line printed is
//! `ratio_vs_mosquitto: X.XX` (Kring notices/s / mosquitto messages/s).
#![forbid(unsafe_code)]

mod common;
mod journal;
mod kring_flow;
mod mls_cost;
mod mqtt;
mod relay_scale;
mod revocation;
mod scaling;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Table, Verdict, mib, ms, percentile, verdict, verdict_if};
use kring_flow::{DEVICES, FILER_RELAY, FlowResult, HUB, KringSetup, Shape};
use kring_protocol::wire::limits::MAX_NOTICES_PER_FILING;
use mqtt::{Autosave, MqttSetup, Session};

const SCENARIOS: [&str; 11] = [
    "throughput",
    "latency",
    "single-relay",
    "fan-out",
    "communities",
    "client-cost",
    "membership",
    "storage",
    "journal",
    "memory",
    "revocation",
];

const USAGE: &str = "kring-bench [--quick] [--only SCENARIO,...] [options]\n\n\
    Scenarios: throughput, latency, single-relay, fan-out, communities,\n\
    client-cost, membership, storage, journal, memory, revocation\n\
    (default: all). Throughput, latency, single-relay and fan-out need mosquitto\n\
    (install it with scripts/mosquitto.sh install); every scenario but\n\
    client-cost, membership and journal needs kring-demo next to this binary:\n\
    \x20   cargo build --release --bin kring-demo --bin kring-bench\n\n\
    --quick            smaller counts, finishes in under 2 minutes on 2 cores\n\
    --only LIST        comma-separated scenarios\n\
    --notices N        throughput and single-relay: notices (default 5000, quick 500)\n\
    --filers N         filers (at nctv; at bz in single-relay and fan-out) /\n\
    \x20                  MQTT publishers (default 1)\n\
    --latency-secs S   latency: seconds of offered load (default 5, quick 2)\n\
    --rate R           latency: offered notices/s (default 1000)\n\
    --members N        membership and the large storage community (default 1000, quick 100)\n\
    --devices N        memory: idle devices (default 1000)\n\
    --window W         throughput, single-relay, fan-out: notices in flight per\n\
    \x20                  filer / publisher in the pipelined run (default 100 =\n\
    \x20                  rumqttc's and mosquitto's inflight limit; throughput and\n\
    \x20                  single-relay always make a run with 1 in flight too)\n\
    --filings-in-flight D\n\
    \x20                  throughput, latency, single-relay: filings each filer\n\
    \x20                  keeps in flight (default 1); closed loop, the W in\n\
    \x20                  flight are split into D filings of W/D\n\
    --fanout LIST      fan-out: comma-separated device counts (default\n\
    \x20                  10,100,1000; quick 10,100)\n\
    --communities N    communities: communities at the hub (default 1000, quick 100)\n\
    --relay-rps R      requests_per_second (per identity) of the relays of\n\
    \x20                  throughput, latency, single-relay, fan-out and\n\
    \x20                  communities (default 100000; the relay's own\n\
    \x20                  default is 200)\n\
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
    filings_in_flight: usize,
    fanout: Vec<usize>,
    communities: usize,
    relay_rps: Option<u32>,
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
        filings_in_flight: 1,
        fanout: if quick {
            vec![10, 100]
        } else {
            vec![10, 100, 1000]
        },
        communities: if quick { 100 } else { 1000 },
        relay_rps: None,
    };
    let mut it = args.into_iter();
    let one = |v: &str, name: &str, max: usize| -> Result<usize, String> {
        let n: usize = v
            .trim()
            .parse()
            .map_err(|_| format!("{name} {v:?} is not a number"))?;
        if n == 0 || n > max {
            return Err(format!("{name} must be 1..={max}, not {n}"));
        }
        Ok(n)
    };
    let num = |v: Option<String>, name: &str, max: usize| -> Result<usize, String> {
        one(&v.ok_or(format!("{name} needs a number"))?, name, max)
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
            "--filings-in-flight" => {
                o.filings_in_flight = num(it.next(), "--filings-in-flight", 64)?;
            }
            "--fanout" => {
                let v = it.next().ok_or("--fanout needs a list")?;
                let mut list = v
                    .split(',')
                    .map(|n| one(n, "--fanout", 5000))
                    .collect::<Result<Vec<_>, _>>()?;
                list.sort_unstable();
                list.dedup();
                o.fanout = list;
            }
            "--communities" => o.communities = num(it.next(), "--communities", 10_000)?,
            "--relay-rps" => {
                o.relay_rps = Some(num(it.next(), "--relay-rps", 1_000_000)? as u32);
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
    let mut federated = None;

    if wants(o, "throughput") || wants(o, "latency") {
        match flows(o, &mut t).await {
            Ok((r, last, delivered)) => {
                ratio = r;
                federated = last;
                ok &= delivered;
            }
            Err(e) => {
                ok = false;
                t.info("throughput", "FAILED", e);
            }
        }
    }
    if wants(o, "single-relay") {
        let r = scaling::single_relay(o, &mut t, federated.as_ref()).await;
        ok &= outcome(&mut t, "single-relay", r);
    }
    if wants(o, "fan-out") {
        let r = scaling::fan_out(o, &mut t).await;
        ok &= outcome(&mut t, "fan-out", r);
    }
    if wants(o, "communities") {
        let r = scaling::communities(o, &mut t).await;
        ok &= outcome(&mut t, "communities", r);
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
            "storage: relay stopped before and after filing; every key+value of its store (sled, and \
             what its journal holds beyond sled) summed by key class (l/ log, n/ notice records, a/ audit, u/ cursors, W/ welcomes, ...); per notice = \
             delta / notices",
        );
    }
    if wants(o, "journal") {
        let n = if o.quick { 500 } else { 2_000 };
        progress(&format!(
            "journal, {n} commits in a new file and in a reused one"
        ));
        match tokio::task::spawn_blocking(move || journal::run(n)).await {
            Ok(Ok(j)) => {
                let us = |d: std::time::Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
                let line = |d: &[std::time::Duration]| {
                    format!(
                        "p50 {}  p90 {}  p99 {}",
                        us(percentile(d, 50.0)),
                        us(percentile(d, 90.0)),
                        us(percentile(d, 99.0))
                    )
                };
                t.info("journal", "commit, new file (appending)", line(&j.fresh));
                t.info("journal", "commit, reused file", line(&j.reused));
            }
            Ok(Err(e)) => {
                ok = false;
                t.info("journal", "FAILED", e);
            }
            Err(e) => {
                ok = false;
                t.info("journal", "FAILED", e.to_string());
            }
        }
        t.note(
            "journal: the relay's store in a temporary directory; each commit applies one \
             3 KiB write and flushes (journal write + fdatasync), one at a time; the reused \
             file is measured after the journal filled two 64 MiB files",
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

/// Whether a scenario ran and every delivery arrived; a failure becomes a row.
fn outcome(t: &mut Table, scenario: &'static str, r: Result<bool, String>) -> bool {
    match r {
        Ok(delivered) => delivered,
        Err(e) => {
            t.info(scenario, "FAILED", e);
            false
        }
    }
}

/// Adds the delivery problems of a run, each prefixed with `who`.
fn collect(problems: &mut Vec<String>, who: &str, r: &FlowResult) {
    problems.extend(r.problems.iter().map(|p| format!("{who}: {p}")));
}

/// One row per delivery problem; true when there were none.
fn problem_rows(t: &mut Table, problems: &[String]) -> bool {
    for p in problems {
        t.info("PROBLEM", "delivery", p.clone());
    }
    problems.is_empty()
}

/// A closed-loop run: `notices` with `window` in flight.
async fn closed_loop(
    k: &mut KringSetup,
    notices: usize,
    window: usize,
) -> Result<FlowResult, String> {
    k.run(notices, None, window, Duration::from_secs(3600))
        .await
}

/// `X µs (RELAYS: S s of CPU for N deliveries)`.
fn cpu_per_delivery(k: &KringSetup, r: &FlowResult) -> String {
    format!(
        "{:.0} µs ({}: {:.2} s of CPU for {} deliveries)",
        r.cpu_per_delivery_us().unwrap_or_default(),
        k.shape.relays().join(" + "),
        r.server_cpu.unwrap_or_default(),
        r.deliveries
    )
}

fn flow_rows(t: &mut Table, scenario: &'static str, who: &str, r: &FlowResult) {
    t.info(
        scenario,
        format!("{who}: delivered"),
        format!(
            "{:.1} msg/s to all {} ({:.0} deliveries/s; {} of {} in {:.2} s)",
            r.notices_per_s(),
            r.devices,
            r.deliveries_per_s(),
            r.deliveries,
            r.notices * r.devices,
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

/// Kring, then mosquitto, closed loop with `w` in flight and `notices` each; rows
/// under `scenario`, the last one the ratio (judged against the throughput goal
/// when `goal`). Returns Kring's run and Kring / mosquitto notices/s.
async fn compare(
    t: &mut Table,
    (scenario, goal): (&'static str, bool),
    k: &mut KringSetup,
    m: &mut MqttSetup,
    (notices, w): (usize, usize),
    problems: &mut Vec<String>,
) -> Result<(FlowResult, f64), String> {
    let name = scenario.split('/').next().unwrap_or(scenario);
    progress(&format!("{name}: Kring, {notices} notices, {w} in flight"));
    let kr = closed_loop(k, notices, w).await?;
    progress(&format!(
        "{name}: mosquitto, {notices} messages, {w} in flight"
    ));
    let mr = m.run(notices, None, w, Duration::from_secs(3600)).await?;
    t.info(scenario, "in flight per sender", w.to_string());
    flow_rows(t, scenario, "Kring", &kr);
    t.info(
        scenario,
        "Kring: relay CPU per delivery",
        cpu_per_delivery(k, &kr),
    );
    flow_rows(t, scenario, "mosquitto", &mr);
    collect(problems, "Kring", &kr);
    collect(problems, "mosquitto", &mr);
    let r = kr.notices_per_s() / mr.notices_per_s().max(1e-9);
    if goal {
        t.goal(
            scenario,
            "Kring / mosquitto",
            format!("{r:.2}"),
            ">= 2.00",
            verdict(r >= 2.0),
        );
    } else {
        t.info(scenario, "Kring / mosquitto", format!("{r:.2}"));
    }
    Ok((kr, r))
}

/// One comparison of [`compare`].
struct Compared {
    /// In flight per sender.
    window: usize,
    /// `names[0]` for 1 in flight, `names[1]` for `--window`.
    scenario: &'static str,
    kring: FlowResult,
    /// Kring / mosquitto notices/s.
    ratio: f64,
}

/// [`compare`] with 1 in flight, then with `--window` (if more), `--notices` each.
async fn compare_windows(
    o: &Options,
    t: &mut Table,
    (names, goal): ([&'static str; 2], bool),
    k: &mut KringSetup,
    m: &mut MqttSetup,
    problems: &mut Vec<String>,
) -> Result<Vec<Compared>, String> {
    let mut out = Vec::new();
    for (window, scenario) in [(1, names[0]), (o.window, names[1])] {
        if window == 1 && !out.is_empty() {
            break;
        }
        let (kring, ratio) =
            compare(t, (scenario, goal), k, m, (o.notices, window), problems).await?;
        out.push(Compared {
            window,
            scenario,
            kring,
            ratio,
        });
    }
    Ok(out)
}

/// The mosquitto side for the users of `k`, persistence as in the ratio.
async fn mosquitto_for(k: &KringSetup, autosave: Autosave) -> Result<Session, String> {
    Session::start(k.fed.dir(), autosave, &k.filer_ids, &k.device_ids).await
}

/// throughput and latency on the federated shape. Returns the headline ratio, the
/// Kring run with `--window` in flight, and whether every delivery arrived.
async fn flows(
    o: &Options,
    t: &mut Table,
) -> Result<(Option<f64>, Option<FlowResult>, bool), String> {
    mqtt::mosquitto_binary()?;
    progress("setting up two relays (bz hub, nctv), filers and devices");
    let mut k = KringSetup::create(
        Shape::federated(o.filers).with_request_limit(Some(o.relay_rps.unwrap_or(BENCH_RPS))),
    )
    .await?;
    k.filings_in_flight = o.filings_in_flight;
    t.info(
        "setup",
        "Kring",
        format!("{} ({:.1} s)", k.shape.describe(), k.setup.as_secs_f64()),
    );
    let mut m = mosquitto_for(&k, Autosave::EverySecond).await?;
    t.info(
        "setup",
        "mosquitto",
        format!(
            "{} publisher(s), {DEVICES} subscribers, QoS 1, TLS 1.3 + client certs, persistence ({})",
            k.filer_ids.len(),
            Autosave::EverySecond.describe()
        ),
    );
    let mut problems = Vec::new();
    let mut ratio = None;
    let mut last = None;
    if wants(o, "throughput") {
        let names = (["throughput/1", "throughput/W"], true);
        for c in compare_windows(o, t, names, &mut k, &mut m.clients, &mut problems).await? {
            // The headline ratio is the last (largest) window's.
            ratio = Some(c.ratio);
            last = Some(c.kring);
        }
        // The strictest persistence mosquitto offers, for reference.
        let mut strict = mosquitto_for(&k, Autosave::EveryChange).await?;
        let sr = strict
            .clients
            .run(o.notices, None, o.window, Duration::from_secs(3600))
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
        collect(&mut problems, "mosquitto (strict)", &sr);
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
        let mr = m.clients.run(total, Some(o.rate), 1, max_wall).await?;
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
        let p50_p99 = |v: &[Duration]| {
            format!(
                "p50 {}  p99 {}",
                ms(percentile(v, 50.0)),
                ms(percentile(v, 99.0))
            )
        };
        t.info(
            "latency",
            "Kring: scheduled->filer's ack",
            p50_p99(&kr.acked),
        );
        for (relay, l) in &kr.latency_at {
            t.info(
                "latency",
                format!("Kring: scheduled->delivery at {relay}"),
                p50_p99(l),
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
        collect(&mut problems, "Kring", &kr);
        collect(&mut problems, "mosquitto", &mr);
    }
    t.note(format!(
        "throughput/latency: {} filer(s) at {FILER_RELAY} file into a community hubbed at {HUB}. Throughput is \
         closed loop with the same number in flight on both sides: a filer files W notices in one filing \
         (one request, one fsync at the relay) and waits for the answer, sealing the next filing meanwhile \
         (Client::seal_notices: encrypted, ratchet on disk; sent once the answer is in; with \
         --filings-in-flight D, D filings of W/D in flight, each sent as soon as it is sealed); a publisher publishes W messages and waits for their W PUBACKs. A filing is \
         acknowledged when durable (fsync'd) at {FILER_RELAY} (Queued); mosquitto acknowledges from memory. \
         Devices dev0-4@{HUB}, dev5-9@{FILER_RELAY} are raw QUIC connections (user certificates) that receive \
         every entry and acknowledge runs of entries as the real client does (when the stream pauses 2 ms and \
         25 ms have passed since the last acknowledgement: one Ack, or AckMany for several communities, up to \
         each community's highest seq) without decrypting (see client-cost); 10 QoS 1 MQTT subscribers \
         with clean_session false (rumqttc acknowledges every PUBLISH), the same users' certificates. Relay CPU \
         is user + system time of the relay processes (/proc) from the first filing to the last delivery. \
         Latency runs are open loop from the scheduled instant (a filer files every notice due when it is free); \
         scheduling stops {:.0} s after the start if a side falls behind.",
        k.filers(),
        o.latency_secs + 2.0
    ));
    let delivered = problem_rows(t, &problems);
    Ok((ratio, last, delivered))
}

/// `requests_per_second` of the bench's relays unless `--relay-rps`: a filer with
/// one notice in flight, or one notice per filing and an Ack per community and
/// device, would otherwise meet the relay's default per-identity limit (200/s,
/// burst 400, meant for people), and the run would measure the limit and the audit
/// record of each refusal. An operator gives an automated filer such a limit.
const BENCH_RPS: u32 = 100_000;

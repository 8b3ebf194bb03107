//! Crash torture: three relays of a federation are killed with SIGKILL and
//! restarted at random while users at the hub and at two spokes file a stream of
//! notices. Afterwards every notice acknowledged to its filer has reached every
//! entitled device exactly once, in hub order; every relay's log copy agrees with the
//! hub's; every store reopens.
//!
//! The relays' journals close their files at 64 KiB instead of 64 MiB
//! (`KRING_JOURNAL_FILE_BYTES`), so the kills also land in checkpoints and in files
//! written over the records of older ones.
//!
//! `KRING_TORTURE_KILLS` sets the number of kills (default 10), `KRING_TORTURE_SEED`
//! repeats a run (the seed is printed at the start).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure should panic loudly

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_client::Client;
use kring_client::conn::Timeouts;
use kring_protocol::wire::EntryKind;
use kring_tests::chaos::{XorShift, env_count, stored_log};
use kring_tests::steps::join;
use kring_tests::{Federation, RelayLauncher};
use uuid::Uuid;

const HUB: &str = "bz";
const RELAYS: [&str; 3] = ["bz", "nctv", "post-a"];
const COMMUNITY: &str = "torture@bz";
const FILERS: [&str; 3] = ["liaison@bz", "liaison@nctv", "analist@post-a"];
const READERS: [&str; 1] = ["admin@bz"];
/// Every relay's environment: small journal files (see the module's doc).
const SMALL_JOURNAL: [(&str, &str); 1] = [("KRING_JOURNAL_FILE_BYTES", "65536")];

async fn ready(fed: &Federation, user: &str) -> Client {
    let mut c = fed.client(user).unwrap();
    c.set_timeouts(Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(10),
        handshake: Duration::from_secs(25),
        // A spoke's acknowledgement (queued durable at the home relay) is what counts.
        ordering: Duration::ZERO,
    });
    c.publish_key_packages(3).await.unwrap();
    c
}

/// A notice acknowledged to its filer.
#[derive(Debug, Clone)]
struct Acked {
    id: Uuid,
    title: String,
    /// When the acknowledgement arrived.
    at: Instant,
}

/// Files numbered notices until `stop`; returns the acknowledged ones in order and
/// the number of failed attempts.
async fn filer(mut c: Client, stop: Arc<AtomicBool>) -> (Client, Vec<Acked>, u32) {
    let user = c.user();
    let mut acked = Vec::new();
    let mut failed = 0u32;
    let mut i = 0u32;
    while !stop.load(AtomicOrdering::SeqCst) {
        i += 1;
        let title = format!("{user} #{i}");
        let draft = kring_tests::signal(
            COMMUNITY,
            "NL:DEP-VERTROUWELIJK",
            &title,
            &format!("body of {title}"),
        );
        match c.file_notice(draft).await {
            Ok(filed) => acked.push(Acked {
                id: filed.notice.id,
                title,
                at: Instant::now(),
            }),
            Err(_) => {
                failed += 1;
                c.disconnect().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    (c, acked, failed)
}

/// Syncs now and then until `stop` (reading while relays die).
async fn reader(mut c: Client, stop: Arc<AtomicBool>) -> Client {
    while !stop.load(AtomicOrdering::SeqCst) {
        if c.sync().await.is_err() {
            c.disconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c
}

/// Kills random relays (sometimes two at once) and restarts them. Returns each
/// kill: the relay and when it died.
fn chaos(
    fed: Arc<Mutex<Federation>>,
    kills: u64,
    mut rng: XorShift,
) -> Vec<(&'static str, Instant)> {
    let mut done = Vec::new();
    let mut down: Vec<&str> = Vec::new();
    while (done.len() as u64) < kills {
        std::thread::sleep(rng.millis(200, 1500));
        let victim = *rng.pick(&RELAYS);
        if !down.contains(&victim) {
            fed.lock().unwrap().kill(victim);
            done.push((victim, Instant::now()));
            down.push(victim);
        }
        // One time in four a second relay dies before the first comes back.
        if rng.below(4) == 0 && down.len() < 2 {
            continue;
        }
        std::thread::sleep(rng.millis(50, 1500));
        for id in down.drain(..) {
            let mut f = fed.lock().unwrap();
            if let Err(e) = f.start_with_env(id, &SMALL_JOURNAL) {
                let log = std::fs::read_to_string(f.log_file(id)).unwrap_or_default();
                let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
                panic!(
                    "relay {id} did not restart after a SIGKILL: {e}\n(last log lines, newest first)\n{tail}"
                );
            }
        }
    }
    for id in down {
        fed.lock()
            .unwrap()
            .start_with_env(id, &SMALL_JOURNAL)
            .unwrap();
    }
    done
}

/// `(seq, notice id, sender)` of every notice in a relay's copy of the log.
fn notice_log(fed: &Federation, relay: &str) -> Vec<(u64, Uuid, String)> {
    let engine = fed
        .open_store(relay)
        .unwrap_or_else(|e| panic!("{relay}: {e}"));
    let entries = stored_log(&engine, COMMUNITY).unwrap_or_else(|e| panic!("{relay}: {e}"));
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "{relay}: log keys out of order or repeated");
    entries
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Notice { notice_id, .. } => Some((e.seq, notice_id, e.sender)),
            EntryKind::Handshake { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_notices_survive_random_sigkills() {
    let kills = env_count("KRING_TORTURE_KILLS", 10);
    let rng = XorShift::from_env("KRING_TORTURE_SEED");
    let started = Instant::now();
    let mut fed =
        Federation::create(RelayLauncher::demo_binary(env!("CARGO_BIN_EXE_kring-demo"))).unwrap();
    for id in RELAYS {
        fed.start_with_env(id, &SMALL_JOURNAL).unwrap();
    }
    let mut clients = Vec::new();
    for u in FILERS.iter().chain(READERS.iter()) {
        clients.push(ready(&fed, u).await);
    }
    let mut readers = clients.split_off(FILERS.len());
    let mut filers = clients;
    filers[0]
        .create_community("torture", "NL:STG-CONFIDENTIEEL")
        .await
        .unwrap();
    let others: Vec<&str> = FILERS[1..].iter().chain(READERS.iter()).copied().collect();
    filers[0].add_members(COMMUNITY, &others).await.unwrap();
    for c in filers.iter_mut().skip(1).chain(readers.iter_mut()) {
        join(c, COMMUNITY).await;
    }

    let fed = Arc::new(Mutex::new(fed));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos_task = {
        let (fed, stop) = (fed.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let log = chaos(fed, kills, rng);
            stop.store(true, AtomicOrdering::SeqCst);
            log
        })
    };
    let mut filer_futs = Vec::new();
    for c in filers {
        filer_futs.push(filer(c, stop.clone()));
    }
    let reader_c = readers.pop().unwrap();
    let (filed, reader_c, kill_log) = tokio::join!(
        futures_join_all(filer_futs),
        reader(reader_c, stop.clone()),
        chaos_task
    );
    let kill_log = kill_log.unwrap();
    let chaos_time = started.elapsed();

    let mut devices: Vec<Client> = Vec::new();
    let mut acked: Vec<(String, Vec<Acked>)> = Vec::new();
    let mut failures = 0;
    for (c, a, f) in filed {
        acked.push((c.user(), a));
        failures += f;
        devices.push(c);
    }
    devices.push(reader_c);
    let all_acked: BTreeMap<Uuid, String> = acked
        .iter()
        .flat_map(|(_, a)| a.iter().map(|n| (n.id, n.title.clone())))
        .collect();
    eprintln!(
        "{} kills in {chaos_time:?}: {} notices acknowledged, {failures} attempts failed",
        kills,
        all_acked.len()
    );
    assert!(
        all_acked.len() as u64 >= kills,
        "too few notices filed to mean anything: {}",
        all_acked.len()
    );
    // The kills hit a federation under load: filings were being acknowledged in the
    // run-up to most kills (since the one before), and again after the last.
    let ack_times: Vec<Instant> = acked
        .iter()
        .flat_map(|(_, a)| a.iter().map(|n| n.at))
        .collect();
    let mut since = started;
    let mut under_load = 0;
    for (victim, at) in &kill_log {
        let acks = ack_times.iter().filter(|t| **t > since && *t < at).count();
        eprintln!(
            "kill {victim} at {:?}: {acks} acknowledgements since the kill before",
            at.duration_since(started)
        );
        under_load += usize::from(acks > 0);
        since = *at;
    }
    assert!(
        under_load * 2 >= kill_log.len(),
        "only {under_load} of {} kills came while notices were being acknowledged",
        kill_log.len()
    );
    assert!(
        ack_times.iter().any(|t| *t > since),
        "no notice was acknowledged after the last kill"
    );

    // Every device catches up on every acknowledged notice, with its sequence number.
    for c in devices.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ok = c.sync().await.is_ok();
            let stored = c.stored_notices(Some(COMMUNITY)).unwrap();
            let have: BTreeSet<Uuid> = stored
                .iter()
                .filter(|s| s.seq.is_some())
                .map(|s| s.notice.id)
                .collect();
            let missing: Vec<&String> = all_acked
                .iter()
                .filter(|(id, _)| !have.contains(id))
                .map(|(_, t)| t)
                .collect();
            if ok && missing.is_empty() && stored.iter().all(|s| s.seq.is_some()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: acknowledged notices never arrived (or never got a sequence number): {missing:?}",
                c.user()
            );
            if !ok {
                c.disconnect().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The relays stop; every store opens offline; the hub's log holds each notice once.
    let mut fed = Arc::try_unwrap(fed).unwrap().into_inner().unwrap();
    for c in devices.iter_mut() {
        c.disconnect().await;
    }
    for id in RELAYS {
        fed.stop(id).unwrap();
    }
    // Every start begins a journal file, as does every file that fills: the hub's
    // files filled (and were checkpointed and reused) while it was being killed.
    let journal = fed.data_dir(HUB).join("journal");
    let newest = std::fs::read_dir(&journal)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name();
            name.to_str()?.strip_suffix(".log")?.parse::<usize>().ok()
        })
        .max()
        .unwrap();
    let starts = 1 + kill_log.iter().filter(|(v, _)| *v == HUB).count();
    assert!(
        newest >= starts + 2,
        "the hub's journal filled {} files in the run",
        newest.saturating_sub(starts)
    );
    let hub_log = notice_log(&fed, HUB);
    let hub_ids: BTreeSet<Uuid> = hub_log.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(
        hub_ids.len(),
        hub_log.len(),
        "the hub ordered a notice twice"
    );
    for id in all_acked.keys() {
        assert!(
            hub_ids.contains(id),
            "acknowledged {id} not in the hub's log"
        );
    }
    // Member relays keep the hub's sequence numbers.
    for relay in &RELAYS[1..] {
        assert_eq!(notice_log(&fed, relay), hub_log, "{relay}'s log copy");
    }
    let by_id: BTreeMap<Uuid, u64> = hub_log.iter().map(|(s, id, _)| (*id, *s)).collect();

    // Each device: every notice of the hub's log exactly once, at the hub's seq, in
    // seq order.
    // A notice whose acknowledgement was lost (its relay died after making it
    // durable, before answering) is ordered and reaches everybody else; the filer's
    // own device skips its own entries and only knows what it was told it filed.
    let unacked_own: Vec<&(u64, Uuid, String)> = hub_log
        .iter()
        .filter(|(_, id, _)| !all_acked.contains_key(id))
        .collect();
    eprintln!(
        "{} notices ordered whose filing failed at the filer (acknowledgement lost): {:?}",
        unacked_own.len(),
        unacked_own
    );
    for c in &devices {
        let user = c.user();
        let stored = c.stored_notices(Some(COMMUNITY)).unwrap();
        let got: Vec<(u64, Uuid)> = stored
            .iter()
            .map(|s| (s.seq.unwrap(), s.notice.id))
            .collect();
        let want: Vec<(u64, Uuid)> = hub_log
            .iter()
            .filter(|(_, id, sender)| *sender != user || all_acked.contains_key(id))
            .map(|(s, id, _)| (*s, *id))
            .collect();
        assert_eq!(got, want, "{user}: notices, seqs or order differ");
        for s in &stored {
            if let Some(t) = all_acked.get(&s.notice.id) {
                assert_eq!(&s.notice.title, t, "{}", c.user());
            }
        }
    }
    // Each filer's acknowledged notices were ordered in the order they were filed.
    for (user, a) in &acked {
        let seqs: Vec<u64> = a.iter().map(|n| by_id[&n.id]).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{user}'s notices out of filing order: {seqs:?}"
        );
    }

    // Every store reopens in a real relay too, and serves.
    for id in RELAYS {
        fed.start_with_env(id, &SMALL_JOURNAL).unwrap();
    }
    for c in devices.iter_mut() {
        c.ping().await.unwrap();
        let again = c.sync().await.unwrap();
        assert_eq!(
            again.notices().count(),
            0,
            "{}: a notice came twice",
            c.user()
        );
    }
    eprintln!(
        "torture done in {:?}: {kills} kills, hub log {} notices",
        started.elapsed(),
        hub_log.len()
    );
}

/// Runs futures concurrently on this task (no `Send` needed), in order of results.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

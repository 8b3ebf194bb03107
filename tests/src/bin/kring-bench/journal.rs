//! The `journal` scenario: what one group commit of the relay's store costs (apply a
//! batch, write its journal record and `fdatasync` it, as `Engine::flush` does), in a
//! journal file written for the first time and in one reused after a checkpoint.
//!
//! The store is the relay's own (`kring_relay::store::SledEngine`) in a temporary
//! directory on the same file system as the relays' stores. Between the two
//! measurements it is filled with batches of the same writes (new keys, as a relay's
//! log grows) until two journal files have filled, so the file then written is a
//! checkpointed one reused.

use std::path::Path;
use std::time::{Duration, Instant};

use kring_relay::store::{Batch, Engine, SledEngine};

/// One measured commit: a single write of this many bytes (about a notice's record).
const RECORD_BYTES: usize = 3 * 1024;
/// Writes of [`RECORD_BYTES`] per batch that fills the journal between the
/// measurements (new keys, as a relay's log grows).
const FILL_WRITES: usize = 16;
/// The longest wait for the journal to fill and be checkpointed.
const FILL_DEADLINE: Duration = Duration::from_secs(120);

/// Commit durations in a new and in a reused journal file, sorted.
pub struct Journal {
    pub fresh: Vec<Duration>,
    pub reused: Vec<Duration>,
}

/// The value of one write.
fn record() -> Vec<u8> {
    (0..RECORD_BYTES).map(|i| (i * 131 % 251) as u8).collect()
}

/// Applies and flushes `commits` batches of one [`RECORD_BYTES`] write; returns each
/// one's duration, sorted.
fn commits(engine: &SledEngine, from: usize, commits: usize) -> Result<Vec<Duration>, String> {
    let value = record();
    let mut took = Vec::with_capacity(commits);
    for i in from..from + commits {
        let started = Instant::now();
        let mut b = Batch::default();
        b.put(format!("z/bench/{i:08}").into_bytes(), value.clone());
        engine.apply(b).map_err(|e| e.to_string())?;
        engine.flush().map_err(|e| e.to_string())?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok(took)
}

/// The journal files in `dir`: (newest `.log` number, number of spares).
fn files(dir: &Path) -> Result<(u64, usize), String> {
    let mut newest = 0;
    let mut spares = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            newest = newest.max(n);
        } else if name.ends_with(".spare") {
            spares += 1;
        }
    }
    Ok((newest, spares))
}

/// Runs the scenario with `n` measured commits each.
pub fn run(n: usize) -> Result<Journal, String> {
    let dir = tempfile::Builder::new()
        .prefix("kring-journal-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let engine = SledEngine::open(dir.path()).map_err(|e| e.to_string())?;
    let journal = dir.path().join("journal");
    let fresh = commits(&engine, 0, n)?;
    // Fill until file 3 is the current one, a spare (file 1) reused, and the
    // checkpoint of file 2 is done (its spare is back).
    let deadline = Instant::now() + FILL_DEADLINE;
    let value = record();
    let mut i = 0usize;
    loop {
        let (newest, spares) = files(&journal)?;
        if newest >= 3 && spares >= 1 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the journal did not fill two files within {FILL_DEADLINE:?} (newest file {newest}, {spares} spares)"
            ));
        }
        if newest < 3 {
            let mut b = Batch::default();
            for k in 0..FILL_WRITES {
                b.put(format!("z/fill/{i:08}/{k:02}").into_bytes(), value.clone());
            }
            engine.apply(b).map_err(|e| e.to_string())?;
            engine.flush().map_err(|e| e.to_string())?;
            i += 1;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let reused = commits(&engine, n, n)?;
    Ok(Journal { fresh, reused })
}

//! `fuzz-smoke`: runs every fuzz target body on its committed seeds (`fuzz/seeds/T/`),
//! any local corpus (`fuzz/corpus/T/`, as left by `fuzz/run.sh`) and then on seeded
//! random mutations of them (bit flips, interesting values, inserted, deleted,
//! duplicated and spliced ranges), for a fixed time per target. No libFuzzer, no
//! sanitizers, no coverage feedback: a fast smoke test for CI that runs exactly the
//! code `fuzz/run.sh` fuzzes. A panicking input is written to
//! `fuzz/artifacts/T/smoke-crash-HASH` and the run fails.
//!
//! ```text
//! fuzz-smoke [SECONDS_PER_TARGET] [TARGET...]     # default 10 s, every target
//! KRING_FUZZ_SEED=N fuzz-smoke ...                # another mutation seed (printed; fixed by default)
//! ```
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kring_fuzz_bodies::TARGETS;

/// Largest input the driver makes.
const MAX_INPUT: usize = 64 * 1024;
/// The mutation seed unless `KRING_FUZZ_SEED` sets another: a fixed default makes
/// two runs of the same tree do the same work (CI's result does not depend on the
/// clock); other seeds explore further.
const DEFAULT_SEED: u64 = 0x4b52_494e_4721;

/// Most corpus files read per target (the committed seeds are always read).
const MAX_CORPUS: usize = 4000;

/// The message of the last panic (the hook stores it instead of printing).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_dir_files(dir: &Path, limit: usize) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.truncate(limit);
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() <= MAX_INPUT)
        .collect()
}

const INTERESTING_8: [u8; 9] = [0, 1, 0x7e, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'='];
const INTERESTING_32: [u32; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x0010_0000,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One random edit of `data`, using `pool` for splicing.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_8[rng.below(INTERESTING_8.len())];
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        5 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        6 if !pool.is_empty() => {
            // Splice: our prefix, another input's suffix.
            let other = &pool[rng.below(pool.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 if !pool.is_empty() => {
            // Insert a slice of another input (cross-over of tokens, fields).
            let other = &pool[rng.below(pool.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(32));
                let at = rng.below(len + 1);
                data.splice(at..at, other[from..from + n].iter().copied());
            }
        }
        8 if len > 0 => {
            data.truncate(rng.below(len));
        }
        9 if len >= 4 => {
            // A 32-bit field (frame lengths, DER/TLS lengths) set to an edge value,
            // big- or little-endian.
            let at = rng.below(len - 3);
            let mut v = INTERESTING_32[rng.below(INTERESTING_32.len())];
            if rng.below(2) == 0 {
                v = v.wrapping_add(rng.below(3) as u32).wrapping_sub(1);
            }
            let bytes = if rng.below(2) == 0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            data[at..at + 4].copy_from_slice(&bytes);
        }
        _ if len > 1 => {
            // Swap two bytes.
            let (i, j) = (rng.below(len), rng.below(len));
            data.swap(i, j);
        }
        _ => data.push(rng.next() as u8),
    }
    data.truncate(MAX_INPUT);
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `body` on `input`; the panic message if it panicked.
fn run_one(body: fn(&[u8]), input: &[u8]) -> Option<String> {
    match std::panic::catch_unwind(|| body(input)) {
        Ok(()) => None,
        Err(_) => Some(
            LAST_PANIC
                .lock()
                .ok()
                .and_then(|mut m| m.take())
                .unwrap_or_else(|| "panic".to_string()),
        ),
    }
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = fuzz_dir().join("artifacts").join(target);
    let path = dir.join(format!("smoke-crash-{:016x}", fnv(input)));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    path
}

struct Outcome {
    executions: u64,
    inputs: usize,
    crash: Option<(PathBuf, String)>,
}

fn fuzz_target(name: &str, body: fn(&[u8]), secs: f64, rng: &mut Rng) -> Outcome {
    let dir = fuzz_dir();
    let mut pool = read_dir_files(&dir.join("seeds").join(name), usize::MAX);
    pool.extend(read_dir_files(&dir.join("corpus").join(name), MAX_CORPUS));
    pool.push(Vec::new());
    let mut out = Outcome {
        executions: 0,
        inputs: pool.len(),
        crash: None,
    };
    // Every seed as it is first.
    for input in &pool {
        out.executions += 1;
        if let Some(msg) = run_one(body, input) {
            out.crash = Some((save_crash(name, input), msg));
            return out;
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut input = Vec::new();
    while Instant::now() < deadline {
        for _ in 0..64 {
            if rng.below(16) == 0 {
                let n = rng.below(256);
                input = (0..n).map(|_| rng.next() as u8).collect();
            } else {
                input.clone_from(&pool[rng.below(pool.len())]);
                for _ in 0..1 + rng.below(4) {
                    mutate_once(rng, &mut input, &pool);
                }
            }
            out.executions += 1;
            if let Some(msg) = run_one(body, &input) {
                out.crash = Some((save_crash(name, &input), msg));
                return out;
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (secs, names) = match args.split_first() {
        Some((first, rest)) => match first.parse::<f64>() {
            Ok(s) if s > 0.0 => (s, rest.to_vec()),
            _ => {
                eprintln!("usage: fuzz-smoke [SECONDS_PER_TARGET] [TARGET...]");
                return ExitCode::from(2);
            }
        },
        None => (10.0, Vec::new()),
    };
    for n in &names {
        if !TARGETS.iter().any(|(t, _)| t == n) {
            eprintln!("unknown target {n}; targets: {:?}", TARGETS.map(|(t, _)| t));
            return ExitCode::from(2);
        }
    }
    let seed = std::env::var("KRING_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEED)
        .max(1);
    println!("fuzz-smoke: {secs} s per target, seed {seed} (repeat with KRING_FUZZ_SEED={seed})");
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = Some(info.to_string());
        }
    }));
    let mut rng = Rng(seed);
    let mut failed = false;
    for (name, body) in TARGETS {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let started = Instant::now();
        let o = fuzz_target(name, body, secs, &mut rng);
        let took = started.elapsed().as_secs_f64();
        match o.crash {
            None => println!(
                "{name:<14} ok, executions {} in {took:.1} s ({} starting inputs)",
                o.executions, o.inputs
            ),
            Some((path, msg)) => {
                failed = true;
                println!(
                    "{name:<14} CRASHED after {} executions; input {}\n    {msg}",
                    o.executions,
                    path.display()
                );
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

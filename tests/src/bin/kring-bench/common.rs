//! Shared pieces of the bench: the result table, percentiles, bodies, process
//! memory, the sibling `kring-demo` binary.

use std::path::PathBuf;
use std::time::Duration;

/// Body size of every notice / MQTT payload, in bytes.
pub const BODY_BYTES: usize = 1024;
/// Clearance of every bench user and the communities' maximum label.
pub const CLEARANCE: &str = "NL:STG-GEHEIM";
/// Label of every filed notice.
pub const LABEL: &str = "NL:DEP-VERTROUWELIJK";

/// Whether a performance goal was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// Not a goal, or not decidable from this run (e.g. a reduced size in `--quick`).
    Info,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub metric: String,
    pub value: String,
    pub goal: String,
    pub verdict: Verdict,
}

/// The result table.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn info(&mut self, scenario: &'static str, metric: impl Into<String>, value: String) {
        self.rows.push(Row {
            scenario,
            metric: metric.into(),
            value,
            goal: String::new(),
            verdict: Verdict::Info,
        });
    }

    pub fn goal(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        value: String,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            scenario,
            metric: metric.into(),
            value,
            goal: goal.into(),
            verdict,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        let w_s = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(8);
        let w_m = self.rows.iter().map(|r| r.metric.len()).max().unwrap_or(6);
        let w_v = self.rows.iter().map(|r| r.value.len()).max().unwrap_or(5);
        println!();
        println!(
            "{:<w_s$}  {:<w_m$}  {:<w_v$}  goal",
            "scenario", "metric", "value"
        );
        println!("{}", "-".repeat(w_s + w_m + w_v + 30));
        let mut last = "";
        for r in &self.rows {
            let scenario = if r.scenario == last { "" } else { r.scenario };
            last = r.scenario;
            let verdict = match r.verdict {
                Verdict::Met => "  [met]",
                Verdict::NotMet => "  [NOT met]",
                Verdict::Info => "",
            };
            println!(
                "{scenario:<w_s$}  {:<w_m$}  {:<w_v$}  {}{verdict}",
                r.metric, r.value, r.goal
            );
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                let mut line = String::from("note:");
                for word in n.split_whitespace() {
                    if line.len() + word.len() + 1 > 100 {
                        println!("{line}");
                        line = String::from("     ");
                    }
                    line.push(' ');
                    line.push_str(word);
                }
                println!("{line}");
            }
        }
    }
}

pub fn verdict(met: bool) -> Verdict {
    if met { Verdict::Met } else { Verdict::NotMet }
}

/// [`verdict`] when the run is at the size the goal is stated for, else no verdict.
pub fn verdict_if(judged: bool, met: bool) -> Verdict {
    if judged { verdict(met) } else { Verdict::Info }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.2} ms")
    } else {
        format!("{m:.1} ms")
    }
}

/// Median of a list of durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 50.0)
}

/// A 1 KiB body of printable text.
pub fn body() -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..BODY_BYTES)
        .map(|i| char::from(alphabet[i % alphabet.len()]))
        .collect()
}

/// The `kring-demo` executable next to this one.
pub fn demo_binary() -> Result<PathBuf, String> {
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

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| format!("{path}: no VmRSS line"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path}: unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system) process `pid` has used, in seconds (`utime` and
/// `stime` of `/proc/PID/stat`, in Linux's fixed 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unreadable"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|t| t as f64 / 100.0)
            .ok_or_else(|| format!("{path}: no field {i}"))
    };
    Ok(tick(14)? + tick(15)?)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    kring_tests::now()
}

/// Counts, per receiver, the arrivals that belong to the current run, scanning
/// only what arrived since the last look: waiting for 100,000 deliveries must not
/// rescan them every few milliseconds on the cores the relays need.
#[derive(Debug, Default)]
pub struct Tally {
    /// Per receiver: (arrivals scanned, of which matching).
    seen: Vec<(usize, usize)>,
}

impl Tally {
    /// Adds receiver `r`'s arrivals after those already seen; returns how many of
    /// all its arrivals so far match (duplicates included).
    pub fn update<T>(&mut self, r: usize, arrivals: &[T], matches: impl Fn(&T) -> bool) -> usize {
        if self.seen.len() <= r {
            self.seen.resize(r + 1, (0, 0));
        }
        let (scanned, matched) = &mut self.seen[r];
        if let Some(new) = arrivals.get(*scanned..) {
            *matched += new.iter().filter(|a| matches(a)).count();
        }
        *scanned = arrivals.len();
        *matched
    }
}

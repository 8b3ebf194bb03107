//! Crash injection for the multi-process tests, compiled only with the cargo feature
//! `failpoints` (off by default; only the `kring-tests` dev-dependency turns it on, so
//! a relay built on its own, for release or with `cargo build -p kring-relay`, has no
//! such code and never reads the variable).
//!
//! `KRING_FAILPOINT=abort-before-log-flush[:FILE]`: the first flush that would make
//! a new log entry durable does not happen. The relay logs `failpoint
//! abort-before-log-flush: holding` (a warning) and keeps running without flushing
//! until `FILE` exists (at most 120 s; not at all without `:FILE`); then it puts the
//! store back as it was at the last flush, as a power cut would leave it (an exiting
//! process alone would not lose what the engine already wrote to the page cache),
//! and exits at once with code [`EXIT_CODE`], running no destructor.
//!
//! `KRING_JOURNAL_FILE_BYTES=N` ([`JOURNAL_FILE_BYTES`]): the store's journal closes
//! and checkpoints its files once they pass `N` bytes instead of 64 MiB, so a crash
//! test rotates, checkpoints and reuses journal files many times.
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{Batch, Engine, Watermark};
use crate::error::RelayError;

/// The environment variable that arms the failpoint.
pub const VAR: &str = "KRING_FAILPOINT";
/// The environment variable that sets the journal's file size.
pub const JOURNAL_FILE_BYTES: &str = "KRING_JOURNAL_FILE_BYTES";
/// The exit code of a relay the failpoint stopped.
pub const EXIT_CODE: i32 = 86;
const ABORT_BEFORE_LOG_FLUSH: &str = "abort-before-log-flush";
const LONGEST_HOLD: Duration = Duration::from_secs(120);

/// What a write overwrote: its write number, the key, the value before.
type Undo = (u64, Vec<u8>, Option<Vec<u8>>);

/// An armed failpoint.
#[derive(Debug)]
pub struct Failpoint {
    release: Option<PathBuf>,
    /// Every key the writes since the last flush changed, with its old value.
    undo: Mutex<Vec<Undo>>,
}

impl Failpoint {
    /// The failpoint `KRING_FAILPOINT` arms, if any.
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var(VAR).ok()?;
        let (name, release) = match spec.split_once(':') {
            Some((name, file)) => (name, Some(PathBuf::from(file))),
            None => (spec.as_str(), None),
        };
        if name != ABORT_BEFORE_LOG_FLUSH {
            tracing::error!(failpoint = %name, "unknown failpoint ignored");
            return None;
        }
        tracing::warn!(failpoint = %name, "failpoint armed");
        Some(Self {
            release,
            undo: Mutex::new(Vec::new()),
        })
    }

    /// Before write `n` applies `batch`: remembers what it overwrites.
    pub(super) fn before_apply(
        &self,
        engine: &dyn Engine,
        n: u64,
        batch: &Batch,
    ) -> Result<(), RelayError> {
        let mut undo = self.undo.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _) in &batch.ops {
            undo.push((n, key.clone(), engine.get(key)?));
        }
        Ok(())
    }

    /// Drops what writes `which` overwrote (flushed, or never applied).
    pub(super) fn forget(&self, which: impl Fn(u64) -> bool) {
        let mut undo = self.undo.lock().unwrap_or_else(PoisonError::into_inner);
        undo.retain(|(w, _, _)| !which(*w));
    }

    /// Called by the flusher before it flushes everything up to write `upto`.
    /// Runs on the flusher thread: blocking it holds every flush.
    pub(super) fn before_flush(&self, engine: &dyn Engine, watermark: &Watermark, upto: u64) {
        if !watermark.appends_unflushed(super::keys::LOGS, upto) {
            return;
        }
        tracing::warn!("failpoint {ABORT_BEFORE_LOG_FLUSH}: holding");
        if let Some(file) = &self.release {
            let deadline = std::time::Instant::now() + LONGEST_HOLD;
            while !file.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // No batch applies from here on.
        let _serial = watermark
            .applying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let restored = self.restore(engine);
        tracing::warn!(
            restored = restored.is_ok(),
            "failpoint {ABORT_BEFORE_LOG_FLUSH}: exiting without the flush"
        );
        std::process::exit(EXIT_CODE);
    }

    /// Undoes every write since the last flush, durably.
    fn restore(&self, engine: &dyn Engine) -> Result<(), RelayError> {
        let undo = std::mem::take(&mut *self.undo.lock().unwrap_or_else(PoisonError::into_inner));
        let mut back = Batch::default();
        for (_, key, old) in undo.into_iter().rev() {
            back.set(key, old);
        }
        engine.apply(back)?;
        engine.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_takes_back_exactly_the_writes_after_the_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        let e = crate::store::SledEngine::open(dir.path()).unwrap();
        let fp = Failpoint {
            release: None,
            undo: Mutex::new(Vec::new()),
        };
        let write = |n: u64, ops: &[(&[u8], Option<&[u8]>)]| {
            let mut b = Batch::default();
            for (k, v) in ops {
                b.set(k.to_vec(), v.map(<[u8]>::to_vec));
            }
            fp.before_apply(&e, n, &b).unwrap();
            e.apply(b).unwrap();
        };
        write(1, &[(b"k/a", Some(b"1")), (b"k/b", Some(b"1"))]);
        write(2, &[(b"k/a", Some(b"2")), (b"k/c", Some(b"2"))]);
        write(
            3,
            &[(b"k/a", Some(b"3")), (b"k/b", None), (b"k/a", Some(b"4"))],
        );
        fp.forget(|w| w <= 1); // write 1 was flushed
        fp.restore(&e).unwrap();
        assert_eq!(e.get(b"k/a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"k/b").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"k/c").unwrap(), None);
    }
}

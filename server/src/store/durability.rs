//! Group commit: one flush for every waiter queued while the previous one ran.

use std::sync::{Arc, PoisonError};

use tokio::sync::{mpsc, oneshot};

#[cfg(feature = "failpoints")]
use super::failpoint;
use super::{Batch, Engine, Watermark};
use crate::error::{RelayError, StoreError};

enum FlushMsg {
    Wait(oneshot::Sender<Result<(), Arc<RelayError>>>),
    Stop(oneshot::Sender<Result<(), Arc<RelayError>>>),
}

/// Applies batches to the store, numbered in the order they reach it, and records
/// in the [`Watermark`] what readers may not see before a flush. Synchronous and
/// without tasks: the relay core writes through it; [`Durability`] flushes.
#[derive(Debug, Clone)]
pub struct Applier {
    engine: Arc<dyn Engine>,
    watermark: Arc<Watermark>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<Arc<failpoint::Failpoint>>,
}

/// Group commit: one flush for every waiter queued while the previous flush ran.
#[derive(Debug, Clone)]
pub struct Durability {
    tx: mpsc::UnboundedSender<FlushMsg>,
    /// The flusher thread, taken by [`Durability::stop`] to wait for its end.
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    applier: Applier,
}

impl std::fmt::Debug for FlushMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushMsg::Wait(_) => "Wait",
            FlushMsg::Stop(_) => "Stop",
        })
    }
}

/// Told how long each store flush took and whether it succeeded (the relay's metrics).
pub type FlushObserver = Arc<dyn Fn(std::time::Duration, bool) + Send + Sync>;

impl Applier {
    /// Applies to `engine`, with a new watermark.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            watermark: Arc::new(Watermark::default()),
            #[cfg(feature = "failpoints")]
            failpoint: failpoint::Failpoint::from_env().map(Arc::new),
        }
    }

    /// The store written to.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Applies `batch` atomically (visible in the engine at once, durable after the
    /// next flush) and returns its write number (0 for an empty batch, which writes
    /// nothing). The [`Watermark`] keeps the log entries, outbox items and welcomes it
    /// adds from readers until a flush covers it.
    pub fn apply(&self, batch: Batch) -> Result<u64, RelayError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Write numbers follow the order in which batches reach the engine.
        let _serial = self
            .watermark
            .applying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = self.watermark.applied() + 1;
        #[cfg(feature = "failpoints")]
        if let Some(failpoint) = &self.failpoint {
            failpoint.before_apply(self.engine.as_ref(), n, &batch)?;
        }
        self.watermark.record(n, &batch);
        let members = batch
            .ops
            .iter()
            .any(|(k, _)| k.starts_with(crate::keyspace::MEMBER));
        let mut welcomes: Vec<u16> = batch
            .ops
            .iter()
            .filter(|(_, v)| v.is_some())
            .filter_map(|(k, _)| self.watermark.welcome_bucket_of(k))
            .collect();
        welcomes.sort_unstable();
        welcomes.dedup();
        match self.engine.apply(batch) {
            Ok(()) => {
                // After the apply, and together with the write number: memberships
                // (welcomes) read once a count moved are the new ones, and no flush
                // covers the batch before its counts moved.
                self.watermark.note_applied(n, members, &welcomes);
                Ok(n)
            }
            Err(e) => {
                self.watermark.forget(n);
                #[cfg(feature = "failpoints")]
                if let Some(failpoint) = &self.failpoint {
                    failpoint.forget(|w| w == n);
                }
                Err(e)
            }
        }
    }

    /// Runs `f` with no batch applied meanwhile (a consistent view of the whole
    /// store, for a backup). Writers wait until it returns.
    pub fn exclusive<T>(&self, f: impl FnOnce(&dyn Engine) -> T) -> T {
        let _serial = self
            .watermark
            .applying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(self.engine.as_ref())
    }

    /// What readers may see of the store.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }
}

impl Durability {
    /// Starts the flusher thread for `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self, RelayError> {
        Self::start_observed(Applier::new(engine), None)
    }

    /// Starts the flusher thread for what `applier` applies, telling `observer`
    /// about every flush. Fails only if the thread cannot be started.
    ///
    /// The flusher is a thread of its own rather than a task that hands each flush
    /// to tokio's blocking pool: a commit wakes it and is woken by it, with no
    /// hand-off to the pool in between.
    pub fn start_observed(
        applier: Applier,
        observer: Option<FlushObserver>,
    ) -> Result<Self, RelayError> {
        let (tx, rx) = mpsc::unbounded_channel::<FlushMsg>();
        let flusher = Flusher {
            engine: applier.engine.clone(),
            watermark: applier.watermark.clone(),
            observer,
            #[cfg(feature = "failpoints")]
            failpoint: applier.failpoint.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("kring-flusher".into())
            .spawn(move || flusher.run(rx))?;
        Ok(Self {
            tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            applier,
        })
    }

    /// What applies batches to the store this flushes.
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    /// [`Applier::apply`].
    pub fn apply(&self, batch: Batch) -> Result<u64, RelayError> {
        self.applier.apply(batch)
    }

    /// [`Applier::exclusive`].
    pub fn exclusive<T>(&self, f: impl FnOnce(&dyn Engine) -> T) -> T {
        self.applier.exclusive(f)
    }

    /// What readers may see of the store.
    pub fn watermark(&self) -> &Watermark {
        &self.applier.watermark
    }

    /// Returns once everything applied before this call is on disk.
    pub async fn wait(&self) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        self.send(FlushMsg::Wait(tx), rx).await
    }

    /// Flushes a last time and stops the flusher (graceful shutdown); later waits fail.
    pub async fn stop(&self) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        let result = self.send(FlushMsg::Stop(tx), rx).await;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            // It has answered the stop (or ended before): it returns at once.
            let _ = thread.join();
        }
        result
    }

    async fn send(
        &self,
        msg: FlushMsg,
        rx: oneshot::Receiver<Result<(), Arc<RelayError>>>,
    ) -> Result<(), RelayError> {
        self.tx.send(msg).map_err(|_| StoreError::ShutDown)?;
        rx.await
            .map_err(|_| StoreError::ShutDown)?
            .map_err(|e| StoreError::Flush(e).into())
    }
}

/// The flusher thread's state: what it flushes and whom it tells.
struct Flusher {
    engine: Arc<dyn Engine>,
    watermark: Arc<Watermark>,
    observer: Option<FlushObserver>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<Arc<failpoint::Failpoint>>,
}

impl Flusher {
    /// Flushes once for every waiter queued so far, until stopped or until every
    /// [`Durability`] handle is gone.
    fn run(self, mut rx: mpsc::UnboundedReceiver<FlushMsg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut waiters = Vec::new();
            let mut stop = None;
            let mut push = |m: FlushMsg| match m {
                FlushMsg::Wait(w) => waiters.push(w),
                FlushMsg::Stop(w) => stop = Some(w),
            };
            push(first);
            while let Ok(m) = rx.try_recv() {
                push(m);
            }
            let result = self.flush();
            for w in waiters {
                let _ = w.send(result.clone());
            }
            if let Some(w) = stop {
                let _ = w.send(result);
                return;
            }
        }
    }

    /// One flush of everything applied so far.
    fn flush(&self) -> Result<(), Arc<RelayError>> {
        // Every batch up to `upto` was applied before the flush starts, so the
        // flush covers it (later ones perhaps too: the next flush says so).
        let upto = self.watermark.applied();
        #[cfg(feature = "failpoints")]
        if let Some(failpoint) = &self.failpoint {
            failpoint.before_flush(self.engine.as_ref(), &self.watermark, upto);
        }
        let started = std::time::Instant::now();
        // A panic fails this flush like an error (its waiters are answered, the
        // observer hears of it) and leaves the thread to take the next one.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.engine.flush()))
            .unwrap_or_else(|_| Err(StoreError::FlushPanicked.into()))
            .map_err(Arc::new);
        if let Some(observe) = &self.observer {
            observe(started.elapsed(), result.is_ok());
        }
        match &result {
            // Before any waiter wakes: what it wakes others for must be readable.
            Ok(()) => {
                self.watermark.flushed(upto);
                #[cfg(feature = "failpoints")]
                if let Some(failpoint) = &self.failpoint {
                    failpoint.forget(|w| w <= upto);
                }
            }
            Err(e) => tracing::error!(error = %e, "store flush failed"),
        }
        result
    }
}

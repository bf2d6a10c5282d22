//! Group commit (one flush serves every change committed before it) and the watches that
//! wake `wait` when a request changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};

use super::engine::Engine;
use crate::error::{Error, Result};

/// A committed change's place in the flush order; durable once the flusher has passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Group commit. Committed changes take a ticket; one flusher thread flushes whatever has
/// committed since its last flush, so one flush serves every change that came before it.
pub(super) struct GroupFlush {
    shared: Arc<FlushShared>,
    /// The flusher; None when the engine's commits are durable as they return (etcd): then a
    /// change is flushed when it registers, with no thread to wake.
    thread: Option<std::thread::JoinHandle<()>>,
    log_len: Arc<dyn Fn() -> u64 + Send + Sync>,
}

struct FlushShared {
    state: Mutex<FlushState>,
    /// Wakes the flusher: work to do.
    work: Condvar,
    /// Wakes blocking waiters: a flush finished.
    done: Condvar,
    /// The newest outbox entry that is durable: what the delivery worker may send. A change
    /// that is lost in a crash must never have been announced.
    notices_tx: tokio::sync::watch::Sender<u64>,
    /// The number of audit entries a flush has covered: the most a checkpoint may sign, since
    /// a checkpoint of entries a crash could lose would make the log look forked.
    durable_log: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct FlushState {
    registered: u64,
    /// The newest outbox entry committed, and the newest one a flush has covered.
    notice_high: u64,
    notice_durable: u64,
    flushed: u64,
    failed: Option<String>,
    stop: bool,
    /// The flusher waits for a first change: the next one must wake it. (While it gathers,
    /// it looks again every QUIET without being woken, until GATHER_MAX are waiting.)
    idle: bool,
    /// Async waiters by the ticket they wait for: a flush wakes only those it covers.
    waiters: BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl FlushState {
    /// The waiters whose tickets are flushed now (all of them after a failure).
    fn ready(&mut self) -> BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<()>>> {
        if self.failed.is_some() {
            return std::mem::take(&mut self.waiters);
        }
        let later = self.waiters.split_off(&(self.flushed + 1));
        std::mem::replace(&mut self.waiters, later)
    }

    /// Whether waiting for `t` is over, and how it ended.
    fn outcome(&self, t: Ticket) -> Option<Result<()>> {
        if self.flushed >= t.0 {
            return Some(Ok(()));
        }
        let e = self.failed.as_ref()?;
        Some(Err(Error::Storage(format!("flush failed: {e}"))))
    }
}

/// Tells each waiter that its flush is done (or failed).
fn wake(ready: BTreeMap<u64, Vec<tokio::sync::oneshot::Sender<()>>>) {
    for tx in ready.into_values().flatten() {
        let _ = tx.send(());
    }
}

impl GroupFlush {
    /// Starts the flusher (unless the engine's commits are durable as they return);
    /// `notices_on_disk` is the newest outbox entry already stored, and `log_len` reads the
    /// number of audit entries committed.
    pub(super) fn start(
        engine: Arc<dyn Engine>,
        notices_on_disk: u64,
        log_len: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<GroupFlush> {
        let log_len: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(log_len);
        let shared = Arc::new(FlushShared {
            state: Mutex::new(FlushState {
                notice_high: notices_on_disk,
                notice_durable: notices_on_disk,
                ..FlushState::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            notices_tx: tokio::sync::watch::channel(notices_on_disk).0,
            durable_log: log_len().into(),
        });
        let thread = if engine.shared() {
            None
        } else {
            let (s, len) = (shared.clone(), log_len.clone());
            let thread = std::thread::Builder::new()
                .name("sshjit-flush".into())
                .spawn(move || flusher(&s, engine.as_ref(), len.as_ref()))
                .map_err(Error::io("cannot start the flush thread"))?;
            Some(thread)
        };
        Ok(GroupFlush {
            shared,
            thread,
            log_len,
        })
    }

    /// Follows the newest durable outbox entry.
    pub(super) fn durable_notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.notices_tx.subscribe()
    }

    /// Records outbox entries that another broker committed (durable on commit): the
    /// delivery worker may send up to `seq`.
    pub(super) fn noticer(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |seq| {
            let mut st = shared.lock();
            st.notice_high = st.notice_high.max(seq);
            st.notice_durable = st.notice_durable.max(seq);
            let n = st.notice_durable;
            drop(st);
            shared
                .notices_tx
                .send_if_modified(|v| std::mem::replace(v, n) != n);
        }
    }

    /// The number of audit entries a flush has made durable.
    pub(super) fn durable_log(&self) -> u64 {
        if self.thread.is_none() {
            return (self.log_len)();
        }
        self.shared
            .durable_log
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn latest(&self) -> Ticket {
        Ticket(self.shared.lock().registered)
    }

    /// A ticket for a change that just committed, which wrote outbox entries up to `notice`.
    pub(super) fn register(&self, notice: Option<u64>) -> Ticket {
        let mut st = self.shared.lock();
        st.registered += 1;
        if let Some(n) = notice {
            st.notice_high = st.notice_high.max(n);
        }
        let ticket = Ticket(st.registered);
        if self.thread.is_some() {
            let wake = st.idle || st.registered - st.flushed == GATHER_MAX;
            drop(st);
            if wake {
                self.shared.work.notify_one();
            }
            return ticket;
        }
        // Durable already: flushed as it registers.
        st.flushed = st.registered;
        st.notice_durable = st.notice_high;
        let notices = st.notice_durable;
        let ready = st.ready();
        drop(st);
        wake(ready);
        // Concurrent commits send after the lock: only ever forward.
        self.shared
            .notices_tx
            .send_if_modified(|v| raise(v, notices));
        ticket
    }

    pub(super) fn wait_blocking(&self, t: Ticket) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            if let Some(done) = st.outcome(t) {
                return done;
            }
            st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) async fn wait(&self, t: Ticket) -> Result<()> {
        let told = {
            let mut st = self.shared.lock();
            if let Some(done) = st.outcome(t) {
                return done;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.waiters.entry(t.0).or_default().push(tx);
            rx
        };
        // Told, or the flusher went away without telling.
        let _ = told.await;
        self.shared
            .lock()
            .outcome(t)
            .unwrap_or_else(|| Err(Error::Storage("the flush thread stopped".into())))
    }
}

/// Moves `v` up to `to`; whether it moved.
fn raise(v: &mut u64, to: u64) -> bool {
    let moved = to > *v;
    *v = (*v).max(to);
    moved
}

impl FlushShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the flusher lets commits gather before it flushes, unless enough are waiting.
/// A flush costs about a millisecond of I/O here; sharing it is what makes durable writes cheap.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// A gap this long with no new commit ends the gathering.
const QUIET: std::time::Duration = std::time::Duration::from_micros(300);
/// Flush at once when this many commits are waiting.
const GATHER_MAX: u64 = 16;

fn flusher(s: &FlushShared, engine: &dyn Engine, log_len: &dyn Fn() -> u64) {
    loop {
        let covers = {
            let mut st = s.lock();
            while st.registered == st.flushed && !st.stop {
                st.idle = true;
                st = s.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.idle = false;
            if st.registered == st.flushed {
                return;
            }
            // Keep gathering while commits keep coming (up to GATHER); a lone commit waits
            // at most one short quiet period.
            let deadline = std::time::Instant::now() + GATHER;
            loop {
                let seen = st.registered;
                if seen - st.flushed >= GATHER_MAX || st.stop {
                    break;
                }
                let left = deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .min(QUIET);
                if left.is_zero() {
                    break;
                }
                st = s
                    .work
                    .wait_timeout(st, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                if st.registered == seen {
                    break;
                }
            }
            (st.registered, st.notice_high)
        };
        let (covers, notices) = covers;
        // Read after every change this flush covers committed, so the flush covers them all.
        let log = log_len();
        let result = engine.flush();
        let mut st = s.lock();
        match result {
            Ok(_) => {
                st.flushed = covers;
                st.notice_durable = notices;
                s.durable_log
                    .fetch_max(log, std::sync::atomic::Ordering::AcqRel);
            }
            Err(e) => {
                tracing::error!(error = %e, "flush failed; changes are not acknowledged");
                st.failed = Some(e.to_string());
            }
        }
        let notices = st.notice_durable;
        let ready = st.ready();
        drop(st);
        s.done.notify_all();
        wake(ready);
        s.notices_tx
            .send_if_modified(|n| std::mem::replace(n, notices) != notices);
    }
}

impl Drop for GroupFlush {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who waits for which request to change (`wait`), woken when a change to it commits.
#[derive(Default)]
pub(super) struct RequestWatch {
    waiters: Mutex<HashMap<u64, Arc<tokio::sync::Notify>>>,
}

impl RequestWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<tokio::sync::Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn subscribe(&self, id: u64) -> Arc<tokio::sync::Notify> {
        self.lock().entry(id).or_default().clone()
    }

    pub(super) fn forget(&self, id: u64) {
        let mut map = self.lock();
        if map.get(&id).is_some_and(|n| Arc::strong_count(n) == 1) {
            map.remove(&id);
        }
    }

    pub(super) fn wake(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let map = self.lock();
        for id in ids {
            if let Some(n) = map.get(id) {
                n.notify_waiters();
            }
        }
    }
}

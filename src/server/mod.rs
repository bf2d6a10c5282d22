//! The SSH server (russh): key-only authentication, one command per exec, admission budgets,
//! login and idle deadlines, graceful shutdown.
//!
//! Architecture invariants:
//! - identity is the authenticated key alone; the SSH user name is ignored;
//! - every handler method not implemented here rejects (russh's default), and every channel
//!   request the broker does not serve is answered with a failure at once, so the server
//!   fails closed and never leaves a client waiting (the one reply held back, to an exec
//!   whose command reads stdin, goes with its answer, or by itself if the stdin has not
//!   ended within a few milliseconds; see [`answer`]);
//! - a connection holds a place in the unauthenticated budget until it authenticates, then a
//!   seat (see [`admission`]); a flood of silent sockets cannot take the seats members use;
//! - commands run on the connection's task (whole-log ones on the blocking pool), and nothing
//!   is sent until the change it reports is flushed; shutdown stops new commands, lets running
//!   ones finish and answer, then flushes the database.

mod admission;
mod answer;
mod channels;
mod handler;
mod run;

pub use admission::{Admission, Refusal};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;
use russh::server::Handle;
use russh::{Disconnect, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::broker::Broker;
use crate::datadir::Limits;
use admission::Startup;
use handler::Conn;

/// How long shutdown waits for running commands before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most one log line per this period about connections refused at accept.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// State shared by every connection.
struct Shared {
    broker: Arc<Broker>,
    limits: Limits,
    admission: Arc<Admission>,
    closing: AtomicBool,
    /// Turns true at shutdown, so long-running commands (`wait`) answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Runs the server on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    host_key: PrivateKey,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> crate::Result<()> {
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-sshjit_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        // Idle is judged by commands, not traffic (keepalives would reset russh's timer):
        // the connection loop enforces `idle_timeout_secs` itself.
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        admission: Admission::new(limits.clone()),
        closing: AtomicBool::new(false),
        stopping: tokio::sync::watch::channel(false).0,
        limits,
    });
    let (stop_tx, _) = broadcast::channel::<()>(1);
    // Every connection and every running command holds a clone; `recv` returns None when all are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut refusals = RefusalLog::default();
    // What falls due, and the notifications, run beside the server and stop with it.
    crate::notify::schedule::start(broker.clone(), shared.stopping.subscribe())?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match shared.admission.startup(peer.ip()) {
                    Ok(startup) => {
                        tokio::spawn(connection(
                            socket, peer, shared.clone(), config.clone(), stop_tx.subscribe(), done_tx.clone(), startup,
                        ));
                    }
                    // Closed at once: a refused connection holds nothing.
                    Err(refusal) => refusals.note(&refusal),
                }
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no new connections; letting running commands finish");
    drop(listener);
    shared.closing.store(true, Ordering::SeqCst);
    shared.stopping.send_replace(true);
    let _ = stop_tx.send(());
    drop(done_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("some commands did not finish within the shutdown grace period");
    }
    broker.store().flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs connections refused at accept without letting a flood flood the log.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, refusal: &Refusal) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(refused = self.since, latest = %refusal, "refused connections at accept");
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// What a connection's handler tells the loop that drives it.
/// Commands one connection may run; after the last one answers, the broker hangs up with a
/// reason, and the client reconnects. russh keeps a few kilobytes for every channel the server
/// closes until its connection ends, so without this a member looping commands on one
/// connection would grow the broker's memory without bound.
pub(crate) const COMMANDS_PER_CONNECTION: u64 = 100;

/// How long a connection that ran its commands stays after its last answer.
const RETIRE_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct Signals {
    started: Instant,
    authed: AtomicBool,
    /// Session channels accepted on this connection, and those not yet answered.
    opened: AtomicU64,
    unanswered: AtomicU64,
    /// Commands running now (a command waiting for its stdin is not running).
    inflight: AtomicUsize,
    /// When a command last started, finished or received input, in ms since `started`.
    last_active_ms: AtomicU64,
    /// A disconnect the handler asked for.
    disconnect: Mutex<Option<(Disconnect, String)>>,
    wake: Notify,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            started: Instant::now(),
            authed: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            disconnect: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// Takes a seat for a new session channel; false once the connection has run its commands.
    fn open_channel(&self) -> bool {
        if self.opened.fetch_add(1, Ordering::SeqCst) >= COMMANDS_PER_CONNECTION {
            return false;
        }
        self.unanswered.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Whether the connection has run all the commands it may.
    fn ran_all(&self) -> bool {
        self.opened.load(Ordering::SeqCst) >= COMMANDS_PER_CONNECTION
    }

    /// A channel's answer went out: after the connection's last command, hang up.
    fn answered(&self) {
        let before = self
            .unanswered
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or_else(|n| n);
        if before <= 1 && self.ran_all() {
            self.request_disconnect(
                Disconnect::ByApplication,
                format!(
                    "this connection ran {COMMANDS_PER_CONNECTION} commands; reconnect to run more"
                ),
            );
        }
    }

    /// Marks activity now.
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::SeqCst);
    }

    /// How long the connection has had no command running, if none is running now.
    fn idle_for(&self) -> Option<Duration> {
        if self.inflight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::SeqCst));
        Some(self.started.elapsed().saturating_sub(last))
    }

    /// Asks the connection loop to disconnect with `reason` and `text`.
    fn request_disconnect(&self, reason: Disconnect, text: String) {
        *self.disconnect.lock().unwrap_or_else(|p| p.into_inner()) = Some((reason, text));
        self.wake.notify_one();
    }

    fn take_disconnect(&self) -> Option<(Disconnect, String)> {
        self.disconnect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Bytes read from a connection's socket at a time: a command's few packets arrive together.
const READ_BUFFER: usize = 8 * 1024;

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    mut stop: broadcast::Receiver<()>,
    done: mpsc::Sender<()>,
    startup: Startup,
) {
    let _ = socket.set_nodelay(true);
    // A second handle on the socket lets us cut a connection that russh is still negotiating.
    let (socket, killer) = match split_killer(socket) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot set up a connection");
            return;
        }
    };
    let grace = Duration::from_secs(shared.limits.login_grace_secs.max(1));
    let idle = Duration::from_secs(shared.limits.idle_timeout_secs.max(1));
    let signals = Arc::new(Signals::new());
    let handler = Conn::new(shared.clone(), peer, startup, signals.clone(), done);
    // russh reads each packet in two exact reads (its first block, then the rest), which on a
    // bare socket is two system calls per packet; a buffer takes what has arrived in one.
    let socket = tokio::io::BufReader::with_capacity(READ_BUFFER, socket);
    let session =
        match tokio::time::timeout(grace, russh::server::run_stream(config, socket, handler)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = ?e, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "closed a connection that sent no SSH greeting");
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    let login_deadline = tokio::time::sleep(grace);
    tokio::pin!(login_deadline);
    let mut deadline_passed = false;
    loop {
        // Until login, the login deadline applies; after it, the idle one.
        let idle_check = match signals.idle_for() {
            Some(quiet) if signals.authed.load(Ordering::SeqCst) => idle.saturating_sub(quiet),
            _ => idle,
        };
        tokio::select! {
            result = &mut session => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = ?e, "connection ended with an error");
                }
                return;
            }
            () = &mut login_deadline, if !deadline_passed => {
                deadline_passed = true;
                if !signals.authed.load(Ordering::SeqCst) {
                    tracing::info!(%peer, "closing a connection that did not authenticate in time");
                    let _ = killer.shutdown(std::net::Shutdown::Both);
                }
            }
            () = signals.wake.notified() => {
                if let Some((reason, text)) = signals.take_disconnect() {
                    // A connection that ran its commands first lets the client take its last
                    // answer (a multiplexing ssh master relays it after it arrives), until
                    // the client leaves, asks for one more (refused), or the grace ends.
                    if signals.ran_all() {
                        tokio::select! {
                            _ = &mut session => return,
                            () = signals.wake.notified() => {}
                            () = tokio::time::sleep(RETIRE_GRACE) => {}
                        }
                    }
                    hang_up(&handle, &mut session, &killer, reason, text).await;
                    return;
                }
            }
            () = tokio::time::sleep(idle_check) => {
                let idle_now = signals.authed.load(Ordering::SeqCst)
                    && signals.idle_for().is_some_and(|quiet| quiet >= idle);
                if idle_now {
                    tracing::info!(%peer, "closing a connection with no command for {}s", idle.as_secs());
                    let text = format!(
                        "no command ran for {}s (idle_timeout_secs); reconnect to run more",
                        idle.as_secs()
                    );
                    hang_up(&handle, &mut session, &killer, Disconnect::ByApplication, text).await;
                    return;
                }
            }
            _ = stop.recv() => {
                // Let commands already running on this connection answer (the session keeps
                // being driven, so their output goes out), then hang up.
                let start = tokio::time::Instant::now();
                let was_busy = signals.idle_for().is_none_or(|quiet| quiet < Duration::from_secs(1));
                while signals.inflight.load(Ordering::SeqCst) > 0 && start.elapsed() < SHUTDOWN_GRACE {
                    tokio::select! {
                        _ = &mut session => return,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                // A client whose command just answered is closing its channel: give it a moment
                // to leave on its own, so it sees its exit status rather than a disconnect.
                if was_busy
                    && tokio::time::timeout(Duration::from_millis(500), &mut session)
                        .await
                        .is_ok()
                {
                    return;
                }
                let text = "the broker is shutting down".to_string();
                hang_up(&handle, &mut session, &killer, Disconnect::ByApplication, text).await;
                return;
            }
        }
    }
}

/// Disconnects with a reason the client can show, and cuts the socket if that does not end it.
async fn hang_up(
    handle: &Handle,
    session: &mut (impl Future + Unpin),
    killer: &std::net::TcpStream,
    reason: Disconnect,
    text: String,
) {
    let _ = handle.disconnect(reason, text, String::new()).await;
    if tokio::time::timeout(Duration::from_secs(1), session)
        .await
        .is_err()
    {
        let _ = killer.shutdown(std::net::Shutdown::Both);
    }
}

/// Splits a socket into the stream russh drives and a clone that can shut it down.
fn split_killer(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std_socket = socket.into_std()?;
    let killer = std_socket.try_clone()?;
    Ok((TcpStream::from_std(std_socket)?, killer))
}

//! The SSH server (russh): key-only authentication, one command per exec, limits, graceful shutdown.
//!
//! Architecture invariants:
//! - identity is the authenticated key alone; the SSH user name is ignored;
//! - every handler method not implemented here rejects (russh's default), so the server fails closed;
//! - commands run on the connection's task (whole-log ones on the blocking pool), and nothing
//!   is sent until the change it reports is flushed; shutdown stops new commands, lets running
//!   ones finish and answer, then flushes the database.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Auth, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use crate::broker::{Broker, Output, wants_json};
use crate::ca;
use crate::commands::{Invocation, Parsed, parse_line};
use crate::datadir::Limits;
use crate::error::Error;
use crate::model::Timestamp;

/// How long shutdown waits for running commands before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// State shared by every connection.
struct Shared {
    broker: Arc<Broker>,
    limits: Limits,
    per_member: Mutex<HashMap<String, usize>>,
    closing: AtomicBool,
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
        inactivity_timeout: Some(Duration::from_secs(limits.idle_timeout_secs.max(1))),
        nodelay: true,
        ..Default::default()
    });
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        per_member: Mutex::new(HashMap::new()),
        closing: AtomicBool::new(false),
        limits: limits.clone(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, _) = broadcast::channel::<()>(1);
    // Every connection and every running command holds a clone; `recv` returns None when all are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
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
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; refusing");
                    continue;
                };
                tokio::spawn(connection(
                    socket, peer, shared.clone(), config.clone(), stop_tx.subscribe(), done_tx.clone(), permit,
                ));
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no new connections; letting running commands finish");
    drop(listener);
    shared.closing.store(true, Ordering::SeqCst);
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

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    mut stop: broadcast::Receiver<()>,
    done: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
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
    let authed = Arc::new(AtomicBool::new(false));
    let inflight = Arc::new(AtomicUsize::new(0));
    let handler = Conn {
        shared: shared.clone(),
        peer,
        fingerprint: None,
        member: None,
        over_limit: false,
        authed: authed.clone(),
        inflight: inflight.clone(),
        waiting: HashMap::new(),
        done: done.clone(),
    };
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
        tokio::select! {
            result = &mut session => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = ?e, "connection ended with an error");
                }
                return;
            }
            () = &mut login_deadline, if !deadline_passed => {
                deadline_passed = true;
                if !authed.load(Ordering::SeqCst) {
                    tracing::info!(%peer, "closing a connection that did not authenticate in time");
                    let _ = killer.shutdown(std::net::Shutdown::Both);
                }
            }
            _ = stop.recv() => {
                // Let commands already running on this connection answer, then hang up.
                let start = tokio::time::Instant::now();
                while inflight.load(Ordering::SeqCst) > 0 && start.elapsed() < SHUTDOWN_GRACE {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "the broker is shutting down".into(), String::new())
                    .await;
                if tokio::time::timeout(Duration::from_secs(1), &mut session).await.is_err() {
                    let _ = killer.shutdown(std::net::Shutdown::Both);
                }
                return;
            }
        }
    }
}

/// Splits a socket into the stream russh drives and a clone that can shut it down.
fn split_killer(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std_socket = socket.into_std()?;
    let killer = std_socket.try_clone()?;
    Ok((TcpStream::from_std(std_socket)?, killer))
}

/// One connection's handler.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Fingerprint of the authenticated identity key.
    fingerprint: Option<String>,
    /// The member counted against the per-member limit (released on drop).
    member: Option<String>,
    over_limit: bool,
    authed: Arc<AtomicBool>,
    inflight: Arc<AtomicUsize>,
    /// Commands waiting for their stdin (a public key) to end.
    waiting: HashMap<ChannelId, (Invocation, Vec<u8>)>,
    done: mpsc::Sender<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(name) = self.member.take() {
            let mut map = self
                .shared
                .per_member
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&name);
                }
            }
        }
    }
}

impl Conn {
    fn is_member(&self, key: &russh::keys::PublicKey) -> bool {
        let fp = ca::fingerprint(key.key_data());
        matches!(self.shared.broker.member_for_key(&fp), Ok(Some(_)))
    }

    /// Answers on `channel` in the background: stdout, stderr, exit status, EOF, close.
    fn reply(&self, handle: Handle, channel: ChannelId, out: Output) {
        let done = self.done.clone();
        tokio::spawn(async move {
            send_output(&handle, channel, out).await;
            drop(done);
        });
    }

    /// Runs a parsed command on the blocking pool and answers when it is done.
    fn spawn_command(&self, handle: Handle, channel: ChannelId, inv: Invocation, stdin: Vec<u8>) {
        let Some(fp) = self.fingerprint.clone() else {
            return self.reply(
                handle,
                channel,
                Output::error(&not_authenticated(), inv.json),
            );
        };
        let broker = self.shared.broker.clone();
        let inflight = self.inflight.clone();
        let done = self.done.clone();
        let peer = self.peer;
        inflight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let json = inv.json;
            let failed = |e: &dyn std::fmt::Display| {
                tracing::error!(%peer, error = %e, "command failed");
                Output::error(
                    &Error::Internal("the command failed; see the broker log".into()),
                    json,
                )
            };
            let out = if inv.command.is_heavy() {
                // Whole-log reads take long enough to belong on the blocking pool.
                tokio::task::spawn_blocking(move || {
                    broker.execute(&fp, &inv, &stdin, Timestamp::now())
                })
                .await
                .unwrap_or_else(|e| failed(&e))
            } else {
                // Everything else is microseconds of work: run it here, then wait for the
                // group flush without holding a thread. Nothing is sent before it is durable.
                let (out, ticket) = broker.execute_deferred(&fp, &inv, &stdin, Timestamp::now());
                match ticket {
                    Some(t) => match broker.store().wait_durable(t).await {
                        Ok(()) => out,
                        Err(e) => failed(&e),
                    },
                    None => out,
                }
            };
            send_output(&handle, channel, out).await;
            inflight.fetch_sub(1, Ordering::SeqCst);
            drop(done);
        });
    }

    /// Refusals that apply before a command is even parsed.
    fn admission(&self, json: bool) -> Option<Output> {
        let limits = &self.shared.limits;
        let refuse = |msg: String| Some(Output::error(&Error::Busy(msg), json));
        if self.shared.closing.load(Ordering::SeqCst) {
            return refuse("the broker is shutting down; try again in a moment".into());
        }
        if self.over_limit {
            return refuse(format!(
                "you have too many connections open to the broker (limit {}); close some and retry",
                limits.max_connections_per_member
            ));
        }
        if self.inflight.load(Ordering::SeqCst) + self.waiting.len()
            >= limits.max_channels_per_connection
        {
            return refuse(format!(
                "too many commands running on this connection (limit {}); wait for some to finish",
                limits.max_channels_per_connection
            ));
        }
        None
    }
}

fn not_authenticated() -> Error {
    Error::PermissionDenied("not authenticated".into())
}

async fn send_output(handle: &Handle, channel: ChannelId, out: Output) {
    if !out.stdout.is_empty() {
        let _ = handle.data(channel, out.stdout.into_bytes()).await;
    }
    if !out.stderr.is_empty() {
        let _ = handle
            .extended_data(channel, 1, out.stderr.into_bytes())
            .await;
    }
    let _ = handle.exit_status_request(channel, out.status).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.is_member(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = ca::fingerprint(key.public_key.key_data());
        let member = match self.shared.broker.member_for_key(&fp) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(peer = %self.peer, fingerprint = %fp, "refused a key that belongs to no member");
                return Ok(Auth::reject());
            }
            Err(e) => {
                tracing::error!(error = %e, "member lookup failed");
                return Ok(Auth::reject());
            }
        };
        let name = member.name.to_string();
        {
            let mut map = self
                .shared
                .per_member
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = map.entry(name.clone()).or_insert(0);
            if *n >= self.shared.limits.max_connections_per_member {
                self.over_limit = true;
                tracing::warn!(member = %name, "per-member connection limit reached");
            } else {
                *n += 1;
                self.member = Some(name.clone());
            }
        }
        tracing::info!(peer = %self.peer, member = %name, fingerprint = %fp, "authenticated");
        self.fingerprint = Some(fp);
        self.authed.store(true, Ordering::SeqCst);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.fingerprint.is_some() {
            reply.accept().await;
        } else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let handle = session.handle();
        let json = wants_json(data);
        if let Some(out) = self.admission(json) {
            self.reply(handle, channel, out);
            return Ok(());
        }
        match parse_line(data) {
            Ok(Parsed::Help(text)) => self.reply(handle, channel, Output::text(text)),
            Ok(Parsed::Run(inv)) if inv.reads_stdin() => {
                self.waiting.insert(channel, (inv, Vec::new()));
            }
            Ok(Parsed::Run(inv)) => self.spawn_command(handle, channel, inv, Vec::new()),
            Err(e) => {
                tracing::info!(peer = %self.peer, code = e.code(), "refused a command line");
                self.reply(handle, channel, Output::error(&e, json));
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let text = format!(
            "sshjit broker: give a command, for example: ssh -p PORT BROKER help\n\n{}",
            crate::commands::help_text()
        );
        let out = Output {
            stdout: String::new(),
            stderr: text,
            status: 2,
        };
        self.reply(session.handle(), channel, out);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let max = self.shared.limits.max_stdin_bytes;
        let Some((_, buf)) = self.waiting.get_mut(&channel) else {
            return Ok(());
        };
        if buf.len() + data.len() > max {
            let Some((inv, _)) = self.waiting.remove(&channel) else {
                return Ok(());
            };
            let e = Error::InvalidKey(format!(
                "stdin is over {max} bytes; send one public key line"
            ));
            self.reply(session.handle(), channel, Output::error(&e, inv.json));
            return Ok(());
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some((inv, stdin)) = self.waiting.remove(&channel) {
            self.spawn_command(session.handle(), channel, inv, stdin);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.waiting.remove(&channel);
        Ok(())
    }
}

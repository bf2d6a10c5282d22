//! A load generator for the broker (and for any SSH endpoint that signs a key sent on stdin):
//! N concurrent russh clients for T seconds, reporting throughput and p50/p95/p99 latency.
//!
//! Modes:
//! - `noop`: connect, authenticate, run `whoami`, disconnect (the transport's own ceiling);
//! - `fetch`: connect, authenticate, `cert ID` with a public key on stdin, disconnect;
//! - `fetch-reuse`: `cert ID` over and over on one connection per client, a channel each;
//! - `cycle`: request, approve as a second member, cert, on reused connections;
//! - `command`: any command line, on reused connections (for latency of reads at scale);
//! - `decision-wait`: request, then `wait` for it while a second member approves; the latency
//!   is from sending `approve` to the waiting client hearing of it;
//! - `decision-poll`: the same, but the client polls `status` every `--poll-ms` (the helper's
//!   old way), as the baseline.
//!
//! It only talks to loopback addresses, and every loop ends when the time is up.
//!
//! ```text
//! cargo run --release --example loadgen -- --addr 127.0.0.1:2222 --identity KEY \
//!     --mode fetch --request 1 --clients 32 --seconds 10
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Noop,
    Fetch,
    FetchReuse,
    Cycle,
    Command,
    DecisionWait,
    DecisionPoll,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for sshjit-broker (loopback only)")]
struct Args {
    /// Broker (or baseline sshd) address; must be a loopback address.
    #[arg(long)]
    addr: SocketAddr,
    /// Private key of the member who requests and fetches.
    #[arg(long)]
    identity: PathBuf,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The approved request to fetch certificates for (fetch modes).
    #[arg(long, default_value_t = 1)]
    request: u64,
    /// Private key of a second member who approves (cycle mode).
    #[arg(long)]
    approver_identity: Option<PathBuf>,
    /// Host to request in cycle mode.
    #[arg(long, default_value = "web-01")]
    host: String,
    /// Command line for `command` mode.
    #[arg(long, default_value = "whoami")]
    command: String,
    /// SSH user name (the broker ignores it; a baseline sshd needs a real account).
    #[arg(long, default_value = "sshjit")]
    user: String,
    /// How often `decision-poll` asks, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Ask for `cert` answers as JSON, as the helper does (they then carry the audit proof).
    #[arg(long)]
    json: bool,
    /// Label printed with the result.
    #[arg(long, default_value = "")]
    label: String,
}

/// Accepts the server's key: this tool only talks to loopback servers it was pointed at.
struct AnyKey;

impl client::Handler for AnyKey {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A connection that is opened again when the server has hung up on it (the broker does, after
/// a number of commands), as any client that reuses connections must.
struct Conn {
    addr: SocketAddr,
    user: String,
    key: Arc<russh::keys::PrivateKey>,
    handle: tokio::sync::Mutex<Handle<AnyKey>>,
}

async fn connect(
    addr: SocketAddr,
    user: &str,
    key: &Arc<russh::keys::PrivateKey>,
) -> anyhow::Result<Conn> {
    Ok(Conn {
        addr,
        user: user.to_string(),
        key: key.clone(),
        handle: tokio::sync::Mutex::new(open(addr, user, key).await?),
    })
}

async fn open(
    addr: SocketAddr,
    user: &str,
    key: &Arc<russh::keys::PrivateKey>,
) -> anyhow::Result<Handle<AnyKey>> {
    let config = Arc::new(client::Config {
        nodelay: true,
        ..Default::default()
    });
    let mut h = client::connect(config, addr, AnyKey).await?;
    let ok = h
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await?;
    anyhow::ensure!(ok.success(), "authentication refused");
    Ok(h)
}

/// Runs one command on a new channel; returns (exit status, stdout).
async fn run(conn: &Conn, line: &str, stdin: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    let mut ch = {
        let mut h = conn.handle.lock().await;
        match h.channel_open_session().await {
            Ok(ch) => ch,
            Err(e) => {
                // A refused channel just before the server hangs up: wait for the hang-up.
                for _ in 0..200 {
                    if h.is_closed() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                anyhow::ensure!(h.is_closed(), e);
                *h = open(conn.addr, &conn.user, &conn.key).await?;
                h.channel_open_session().await?
            }
        }
    };
    ch.exec(true, line.as_bytes().to_vec()).await?;
    if !stdin.is_empty() {
        ch.data_bytes(stdin.to_vec()).await?;
    }
    ch.eof().await?;
    let (mut status, mut out) = (255, Vec::new());
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = exit_status,
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok((status, out))
}

async fn close(conn: Conn) {
    let _ = conn
        .handle
        .into_inner()
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record_latency(&mut self, result: anyhow::Result<Duration>) {
        match result {
            Ok(d) => self.latencies_us.push(d.as_micros() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn record(&mut self, started: Instant, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.latencies_us.push(started.elapsed().as_micros() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn ok_status((status, out): (u32, Vec<u8>)) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        status == 0,
        "exit {status}: {}",
        String::from_utf8_lossy(&out)
    );
    Ok(out)
}

async fn client_loop(
    args: Arc<Args>,
    key: Arc<russh::keys::PrivateKey>,
    approver: Option<Arc<russh::keys::PrivateKey>>,
    deadline: Instant,
) -> Tally {
    let mut t = Tally::default();
    let subject = sshjit::ca::generate_key("loadgen-subject")
        .and_then(|k| {
            k.public_key()
                .to_openssh()
                .map_err(|e| sshjit::Error::Internal(e.to_string()))
        })
        .map(|s| format!("{s}\n").into_bytes())
        .unwrap_or_default();
    let json = if args.json { " --json" } else { "" };
    let cert_line = format!("cert {}{json}", args.request);
    match args.mode {
        Mode::Noop | Mode::Fetch => {
            let (line, stdin): (&str, &[u8]) = if args.mode == Mode::Noop {
                ("whoami", b"")
            } else {
                (&cert_line, &subject)
            };
            while Instant::now() < deadline {
                let started = Instant::now();
                let r = async {
                    let conn = connect(args.addr, &args.user, &key).await?;
                    let out = run(&conn, line, stdin).await;
                    close(conn).await;
                    ok_status(out?).map(|_| ())
                }
                .await;
                t.record(started, r);
            }
        }
        Mode::FetchReuse | Mode::Command => {
            let conn = match connect(args.addr, &args.user, &key).await {
                Ok(c) => c,
                Err(e) => {
                    t.record(Instant::now(), Err(e));
                    return t;
                }
            };
            let (line, stdin): (&str, &[u8]) = if args.mode == Mode::Command {
                (&args.command, b"")
            } else {
                (&cert_line, &subject)
            };
            while Instant::now() < deadline {
                let started = Instant::now();
                let r = run(&conn, line, stdin)
                    .await
                    .and_then(ok_status)
                    .map(|_| ());
                t.record(started, r);
            }
            close(conn).await;
        }
        Mode::DecisionWait | Mode::DecisionPoll => {
            let (me, boss) = match requester_and_approver(&args, &key, approver).await {
                Ok(c) => c,
                Err(e) => {
                    t.record(Instant::now(), Err(e));
                    return t;
                }
            };
            let me = Arc::new(me);
            let request = format!(
                "request {} --role viewer --for 10m --reason 'LOAD-2 decision latency' --json",
                args.host
            );
            while Instant::now() < deadline {
                let r = async {
                    let out = ok_status(run(&me, &request, b"").await?)?;
                    let v: serde_json::Value = serde_json::from_slice(&out)?;
                    let id = v["id"]
                        .as_u64()
                        .ok_or_else(|| anyhow::anyhow!("no id in {v}"))?;
                    let watcher = tokio::spawn(hear_decision(
                        me.clone(),
                        id,
                        args.mode,
                        Duration::from_millis(args.poll_ms),
                    ));
                    // Let the wait (or the first poll) start before the decision.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let approved_at = Instant::now();
                    ok_status(run(&boss, &format!("approve {id}"), b"").await?)?;
                    let heard_at = watcher.await??;
                    anyhow::Ok(heard_at.saturating_duration_since(approved_at))
                }
                .await;
                t.record_latency(r);
            }
            close(boss).await;
            if let Ok(me) = Arc::try_unwrap(me) {
                close(me).await;
            }
        }
        Mode::Cycle => {
            let (me, boss) = match requester_and_approver(&args, &key, approver).await {
                Ok(c) => c,
                Err(e) => {
                    t.record(Instant::now(), Err(e));
                    return t;
                }
            };
            let request = format!(
                "request {} --role viewer --for 10m --reason 'LOAD-1 load test' --json",
                args.host
            );
            while Instant::now() < deadline {
                let started = Instant::now();
                let r = async {
                    let out = ok_status(run(&me, &request, b"").await?)?;
                    let v: serde_json::Value = serde_json::from_slice(&out)?;
                    let id = v["id"]
                        .as_u64()
                        .ok_or_else(|| anyhow::anyhow!("no id in {v}"))?;
                    ok_status(run(&boss, &format!("approve {id}"), b"").await?)?;
                    ok_status(run(&me, &format!("cert {id}{json}"), &subject).await?)?;
                    anyhow::Ok(())
                }
                .await;
                t.record(started, r);
            }
            close(me).await;
            close(boss).await;
        }
    }
    t
}

/// Connections as the requester and as the approver (cycle and decision modes).
async fn requester_and_approver(
    args: &Args,
    key: &Arc<russh::keys::PrivateKey>,
    approver: Option<Arc<russh::keys::PrivateKey>>,
) -> anyhow::Result<(Conn, Conn)> {
    let approver = approver
        .ok_or_else(|| anyhow::anyhow!("{:?} mode needs --approver-identity", args.mode))?;
    Ok((
        connect(args.addr, &args.user, key).await?,
        connect(args.addr, &args.user, &approver).await?,
    ))
}

/// Waits until request `id` is approved, by `wait` or by polling `status`; returns when.
async fn hear_decision(
    conn: Arc<Conn>,
    id: u64,
    mode: Mode,
    poll: Duration,
) -> anyhow::Result<Instant> {
    loop {
        let line = if mode == Mode::DecisionWait {
            format!("wait {id} --timeout 30s --json")
        } else {
            format!("status {id} --json")
        };
        let out = ok_status(run(&conn, &line, b"").await?)?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        let state = if v.is_array() {
            &v[0]["state"]
        } else {
            &v["state"]
        };
        if state == "approved" {
            return Ok(Instant::now());
        }
        anyhow::ensure!(state == "pending", "request {id} became {state}");
        if mode == Mode::DecisionPoll {
            tokio::time::sleep(poll).await;
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    anyhow::ensure!(
        args.addr.ip().is_loopback(),
        "loadgen only targets loopback addresses, not {}",
        args.addr
    );
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    anyhow::ensure!(
        (1..=1024).contains(&args.clients),
        "--clients must be 1 to 1024"
    );
    let load = |p: &PathBuf| -> anyhow::Result<Arc<russh::keys::PrivateKey>> {
        Ok(Arc::new(russh::keys::load_secret_key(p, None)?))
    };
    let key = load(&args.identity)?;
    let approver = args.approver_identity.as_ref().map(load).transpose()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(client_loop(
                args.clone(),
                key.clone(),
                approver.clone(),
                deadline,
            ))
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let ops = all.latencies_us.len();
    let report = serde_json::json!({
        "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "clients": args.clients,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "ops": ops,
        "errors": all.errors,
        "first_error": all.first_error,
        "ops_per_sec": (ops as f64 / elapsed * 10.0).round() / 10.0,
        "p50_ms": percentile(&all.latencies_us, 0.50),
        "p95_ms": percentile(&all.latencies_us, 0.95),
        "p99_ms": percentile(&all.latencies_us, 0.99),
    });
    println!("{report}");
    anyhow::ensure!(ops > 0, "no operation succeeded: {:?}", all.first_error);
    Ok(())
}

//! `sshjit-guard`, the host-side session guard: run from sshd's PAM session stack, it ends an
//! sshjit certificate login's whole connection (shells, commands, sftp, forwarding, every
//! multiplexed session) when the certificate's window ends. It never talks to the broker.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use sshjit::guard::{self, Login, Verdict};

#[derive(Parser)]
#[command(
    name = "sshjit-guard",
    version,
    about = "Ends every sshjit certificate login's connection when its grant window ends (run from sshd's PAM session stack; see host-config --session-guard)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks the login pam_exec describes; for an sshjit certificate, starts its watcher.
    /// Exits non-zero (the session does not start) when the certificate cannot be read.
    Pam {
        /// The sshjit CA public key (host-config writes it as sshjit_ca.pub).
        #[arg(long)]
        ca: PathBuf,
        /// This host's name at the broker, for the warnings.
        #[arg(long)]
        host: String,
        /// Also append each record to this file (besides syslog).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Warn on the session's terminals this many seconds before the end (repeatable).
        #[arg(long = "warn", value_name = "SECONDS", default_values_t = guard::WARN_BEFORE)]
        warn: Vec<u64>,
    },
    /// Watches one connection until its window ends (started by `pam`).
    #[command(hide = true)]
    Watch {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        started: u64,
        #[arg(long)]
        until: u64,
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        serial: u64,
        #[arg(long)]
        host: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        log: Option<PathBuf>,
        #[arg(long = "warn")]
        warn: Vec<u64>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Pam {
            ca,
            host,
            log,
            warn,
        } => pam(&ca, &host, log.as_deref(), &warn),
        Cmd::Watch {
            pid,
            started,
            until,
            key_id,
            serial,
            host,
            user,
            log,
            warn,
        } => {
            let login = Login {
                key_id,
                serial,
                valid_before: until,
            };
            watch(pid, started, &login, &host, &user, log.as_deref(), &warn);
            ExitCode::SUCCESS
        }
    }
}

fn pam(ca: &Path, host: &str, log: Option<&Path>, warn: &[u64]) -> ExitCode {
    if std::env::var("PAM_TYPE").as_deref() != Ok("open_session") {
        return ExitCode::SUCCESS;
    }
    let user = std::env::var("PAM_USER").unwrap_or_default();
    let refuse = |why: &str| {
        record(
            log,
            &format!("refused a session of {}: {why}", user.escape_debug()),
        );
        eprintln!("sshjit-guard: {why}");
        ExitCode::FAILURE
    };
    let cas = match std::fs::read_to_string(ca) {
        Ok(text) => match guard::ca_keys(&text) {
            Some(k) => k,
            None => {
                return refuse(&format!(
                    "cannot read the CA key {}: every line must be a public key or a # comment",
                    ca.display()
                ));
            }
        },
        Err(e) => return refuse(&format!("cannot read the CA key {}: {e}", ca.display())),
    };
    let info = std::env::var("SSH_AUTH_INFO_0").ok();
    let login = match guard::judge(info.as_deref(), &cas, unix_now()) {
        Verdict::NotOurs => return ExitCode::SUCCESS,
        Verdict::Refuse(why) => return refuse(&why),
        Verdict::Guard(login) => login,
    };
    // pam_exec's parent is the connection's sshd process: ending it and what it started ends
    // every channel of the connection.
    // SAFETY: getppid has no preconditions and cannot fail.
    let pid = unsafe { libc::getppid() };
    let Some(started) = start_time(pid) else {
        return refuse("cannot read the connection's sshd process");
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return refuse(&format!("cannot find its own program: {e}")),
    };
    let mut watcher = Command::new(exe);
    watcher
        .arg("watch")
        // `--name=VALUE`: a value that starts with '-' stays a value.
        .arg(format!("--pid={pid}"))
        .arg(format!("--started={started}"))
        .arg(format!("--until={}", login.valid_before))
        .arg(format!("--key-id={}", login.key_id))
        .arg(format!("--serial={}", login.serial))
        .arg(format!("--host={host}"))
        .arg(format!("--user={user}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: nothing sent to the session's group reaches it.
        .process_group(0);
    if let Some(l) = log {
        let mut arg = std::ffi::OsString::from("--log=");
        arg.push(l);
        watcher.arg(arg);
    }
    for w in warn {
        watcher.arg(format!("--warn={w}"));
    }
    match watcher.spawn() {
        Ok(_) => {
            record(
                log,
                &format!(
                    "guarding connection {pid} of {}: key id {}, serial {}, until {}",
                    user.escape_debug(),
                    login.key_id.escape_debug(),
                    login.serial,
                    login.valid_before
                ),
            );
            ExitCode::SUCCESS
        }
        Err(e) => refuse(&format!("cannot start the watcher: {e}")),
    }
}

/// Sleeps until each warning and the end; at the end, ends the connection. Returns early if
/// the connection ends by itself.
fn watch(
    pid: i32,
    started: u64,
    login: &Login,
    host: &str,
    user: &str,
    log: Option<&Path>,
    warn: &[u64],
) {
    let end = login.valid_before;
    let mut warnings = guard::warnings(end, unix_now(), warn);
    loop {
        if start_time(pid) != Some(started) {
            return;
        }
        let now = now_secs_f64();
        // The last line goes out a moment before the end, so it reaches the client before
        // the connection is cut.
        if now >= end as f64 - CLOSING_LEAD {
            break;
        }
        if let Some(&at) = warnings.first()
            && now >= at as f64
        {
            warnings.remove(0);
            tell(pid, &guard::warning(host, end, unix_now()));
            continue;
        }
        let next = warnings
            .first()
            .map_or(end as f64 - CLOSING_LEAD, |w| *w as f64);
        // Wake at least each second to notice a connection that ended by itself.
        std::thread::sleep(Duration::from_secs_f64((next - now).clamp(0.01, 1.0)));
    }
    tell(pid, &guard::closing(host, end));
    let left = end as f64 - now_secs_f64();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
    record(log, &guard::log_line(host, login, user));
    end_tree(pid, started);
}

/// How long before the end the closing line is written (seconds).
const CLOSING_LEAD: f64 = 0.5;

/// Ends the process `root` (if it is still the one that started at `started`) and everything
/// of its connection: first every process is frozen (SIGSTOP, which nothing can catch, so
/// nothing frozen can fork away), round after round until a scan of /proc finds nothing new,
/// then all are killed (SIGKILL). A process belongs to the connection if its parent does, or
/// if it is in a session that one of the connection's processes leads (so an orphan that a
/// double fork left behind is still found). Processes are named by pid and start time, so a
/// reused pid is never hit.
fn end_tree(root: i32, started: u64) {
    let mut targets: HashMap<i32, u64> = HashMap::from([(root, started)]);
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let procs = scan();
        let sessions: BTreeSet<i32> = procs
            .iter()
            .filter(|(pid, p)| {
                p.session == **pid && targets.get(pid) == Some(&p.start) && **pid != root
            })
            .map(|(pid, _)| *pid)
            .collect();
        let mut grew = false;
        loop {
            let joining: Vec<(i32, u64)> = procs
                .iter()
                .filter(|(pid, p)| {
                    !targets.contains_key(pid)
                        && p.start >= started
                        && (procs
                            .get(&p.parent)
                            .is_some_and(|pp| targets.get(&p.parent) == Some(&pp.start))
                            || sessions.contains(&p.session))
                })
                .map(|(pid, p)| (*pid, p.start))
                .collect();
            if joining.is_empty() {
                break;
            }
            grew = true;
            targets.extend(joining);
        }
        let live: Vec<i32> = targets
            .iter()
            .filter(|(pid, start)| {
                procs
                    .get(pid)
                    .is_some_and(|p| p.start == **start && p.state != 'Z')
            })
            .map(|(pid, _)| *pid)
            .collect();
        let all_frozen = live
            .iter()
            .all(|pid| procs.get(pid).is_some_and(|p| matches!(p.state, 'T' | 't')));
        if live.is_empty() {
            return;
        }
        if (!grew && all_frozen) || std::time::Instant::now() >= deadline {
            for pid in &live {
                // SAFETY: kill has no memory effects; a pid that ended since is an error we ignore.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if std::time::Instant::now() >= deadline + Duration::from_millis(500) {
                return;
            }
        } else {
            for pid in &live {
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGSTOP) };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the guard needs to know of a process.
struct Proc {
    parent: i32,
    session: i32,
    state: char,
    start: u64,
}

/// Every process, from one pass over /proc.
fn scan() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        if let (Some(state), Some(parent), Some(session), Some(start)) = (
            f.first().and_then(|s| s.chars().next()),
            num(1),
            num(3),
            num(19),
        ) {
            out.insert(
                pid,
                Proc {
                    parent: parent as i32,
                    session: session as i32,
                    state,
                    start: start as u64,
                },
            );
        }
    }
    out
}

/// Writes a line to every terminal the connection's processes use. It opens each terminal
/// through the process's own descriptor (/proc/PID/fd/N), never by a path the process could
/// have made point elsewhere, and writes without blocking.
fn tell(root: i32, line: &str) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut seen = BTreeSet::new();
    for p in descendants(root).into_iter().chain([root]) {
        for fd in 0..3 {
            let link = format!("/proc/{p}/fd/{fd}");
            if !std::fs::read_link(&link).is_ok_and(|t| t.starts_with("/dev/pts/")) {
                continue;
            }
            let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(&link)
            else {
                continue;
            };
            let is_tty = f
                .metadata()
                .is_ok_and(|m| m.file_type().is_char_device() && seen.insert(m.rdev()));
            if is_tty {
                let _ = write!(f, "\r\n{line}\r\n");
            }
        }
    }
}

/// Every process below `root`.
fn descendants(root: i32) -> Vec<i32> {
    let procs = scan();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, p) in &procs {
        children.entry(p.parent).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for c in children.get(&p).into_iter().flatten() {
            out.push(*c);
            todo.push(*c);
        }
    }
    out
}

/// A process's start time (clock ticks since boot): with the pid, it names the process even
/// after the pid is reused.
fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 19)?.parse().ok()
}

/// Field `n` (0-based) after the command name in /proc/PID/stat: 1 is the parent, 19 the
/// start time.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n).map(str::to_string)
}

/// Logs to syslog (authpriv) and, if given, appends to `file`.
fn record(file: Option<&Path>, msg: &str) {
    if let Ok(c) = CString::new(msg) {
        // SAFETY: the identity and format are static C strings, and `c` is a NUL-terminated
        // string that outlives the call; "%s" makes the message data, never a format.
        unsafe {
            libc::openlog(c"sshjit-guard".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
            libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), c.as_ptr());
        }
    }
    if let Some(f) = file
        && let Ok(mut out) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(f)
    {
        let _ = writeln!(
            out,
            "{} sshjit-guard[{}]: {msg}",
            unix_now(),
            std::process::id()
        );
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

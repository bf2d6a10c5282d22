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
use russh::keys::ssh_key::PublicKey;
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
    let ca_key = match std::fs::read_to_string(ca)
        .map_err(|e| e.to_string())
        .and_then(|t| PublicKey::from_openssh(t.trim()).map_err(|e| e.to_string()))
    {
        Ok(k) => k,
        Err(e) => return refuse(&format!("cannot read the CA key {}: {e}", ca.display())),
    };
    let info = std::env::var("SSH_AUTH_INFO_0").ok();
    let login = match guard::judge(info.as_deref(), &ca_key, unix_now()) {
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
        .args(["--pid", &pid.to_string(), "--started", &started.to_string()])
        .args(["--until", &login.valid_before.to_string()])
        .args([
            "--key-id",
            &login.key_id,
            "--serial",
            &login.serial.to_string(),
        ])
        .args(["--host", host, "--user", &user])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: nothing sent to the session's group reaches it.
        .process_group(0);
    if let Some(l) = log {
        watcher.arg("--log").arg(l);
    }
    for w in warn {
        watcher.args(["--warn", &w.to_string()]);
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
/// under it: SIGTERM, then SIGKILL after a second for whatever is left. Processes are named
/// by pid and start time, so a reused pid is never hit.
fn end_tree(root: i32, started: u64) {
    let mut targets: Vec<(i32, u64)> = vec![(root, started)];
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        // Whatever the tree started meanwhile joins (orphans keep their place in the list).
        let alive: Vec<(i32, u64)> = targets
            .iter()
            .copied()
            .filter(|(p, t)| running(*p, *t))
            .collect();
        for (p, _) in &alive {
            for c in descendants(*p) {
                if let Some(t) = start_time(c)
                    && !targets.contains(&(c, t))
                {
                    targets.push((c, t));
                }
            }
        }
        let alive: Vec<i32> = targets
            .iter()
            .filter(|(p, t)| running(*p, *t))
            .map(|(p, _)| *p)
            .collect();
        if alive.is_empty() || std::time::Instant::now() >= deadline + Duration::from_secs(2) {
            return;
        }
        let late = std::time::Instant::now() >= deadline;
        for p in alive {
            let sig = if late { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: kill has no memory effects; a pid that ended since is an error we ignore.
            unsafe { libc::kill(p, sig) };
        }
        std::thread::sleep(Duration::from_millis(if late { 20 } else { 100 }));
    }
}

/// Whether the process `pid` that started at `started` is still running (not a zombie).
fn running(pid: i32, started: u64) -> bool {
    start_time(pid) == Some(started) && stat_field(pid, 0).as_deref() != Some("Z")
}

/// Writes a line to every terminal the connection's processes use.
fn tell(root: i32, line: &str) {
    let mut ttys = BTreeSet::new();
    for p in descendants(root).into_iter().chain([root]) {
        for fd in 0..3 {
            if let Ok(target) = std::fs::read_link(format!("/proc/{p}/fd/{fd}"))
                && target.starts_with("/dev/pts/")
            {
                ttys.insert(target);
            }
        }
    }
    for tty in ttys {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&tty)
        {
            let _ = write!(f, "\r\n{line}\r\n");
        }
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_field(pid, 1).and_then(|v| v.parse().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
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

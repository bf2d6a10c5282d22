//! The session guard against a real sshd with PAM: every kind of session of an sshjit
//! certificate login (shell, command, sftp, forwarding, multiplexed) ends within 2 s of the
//! certificate's `valid_before`, other logins are untouched, and a login whose certificate
//! cannot be read does not start. Certificates come from a test CA with `ssh-keygen -s` and
//! windows of a few seconds; one test uses the real broker's certificate and host-config.
//!
//! sshd picks its PAM service by its program name, so each test runs sshd through a symlink
//! with a name of its own and writes that service's file in /etc/pam.d (removed afterwards):
//! these tests run as root, like sshd itself.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use util::{free_port, keygen, require, ssh_opts};

/// How late after `valid_before` a session may still be alive.
const SLACK: Duration = Duration::from_secs(2);

fn guard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sshjit-guard")
}

fn pam_module(name: &str) -> PathBuf {
    let found = [
        "/usr/lib/x86_64-linux-gnu/security",
        "/lib/x86_64-linux-gnu/security",
        "/usr/lib/aarch64-linux-gnu/security",
        "/usr/lib/security",
        "/lib/security",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} is not installed; install it with 'apt-get install -y libpam-modules' (scripts/test does)"))
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the session guard tests run sshd with PAM, which needs root: run them as root (CI and scripts/test do)"
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A real sshd whose PAM session stack runs the guard.
struct Guarded {
    tmp: tempfile::TempDir,
    _sshd: Running,
    port: u16,
    pam_file: PathBuf,
    ca: PathBuf,
    log: PathBuf,
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

impl Guarded {
    /// Starts sshd with PAM service lines `pam` (before the guard's line) and the guard.
    fn start(pam_before: &str) -> Guarded {
        require_root();
        require("/usr/sbin/sshd");
        let pam_exec = pam_module("pam_exec.so");
        let tmp = tempfile::tempdir().unwrap();
        let service = format!(
            "sshjit-guard-test-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::SeqCst)
        );
        let ca = keygen(tmp.path(), "ca").key;
        let log = tmp.path().join("guard.log");
        let pam_file = PathBuf::from(format!("/etc/pam.d/{service}"));
        std::fs::write(
            &pam_file,
            format!(
                "@include common-account\n{pam_before}session required {} quiet {} pam --ca {}.pub --host web-01 --log {} --warn 3\n",
                pam_exec.display(),
                guard_bin(),
                ca.display(),
                log.display()
            ),
        )
        .unwrap();
        let plain = keygen(tmp.path(), "plain");
        std::fs::write(
            tmp.path().join("authorized_keys"),
            format!("{}\n", plain.public),
        )
        .unwrap();
        let extra = format!(
            "AuthorizedKeysFile {}/authorized_keys\nTrustedUserCAKeys {}.pub\n",
            tmp.path().display(),
            ca.display()
        );
        let (child, port) = sshd_with_pam(tmp.path(), &service, &extra);
        Guarded {
            tmp,
            _sshd: child,
            port,
            pam_file,
            ca,
            log,
        }
    }

    /// A fresh key with a certificate from the test CA valid until `secs` from now; returns
    /// the key and its `valid_before`.
    fn cert(&self, name: &str, secs: u64) -> (PathBuf, u64) {
        let key = keygen(self.tmp.path(), name).key;
        let before = unix_now() + secs;
        let until = chrono::DateTime::from_timestamp(before as i64, 0)
            .unwrap()
            .format("%Y%m%d%H%M%SZ");
        let st = Command::new(require("ssh-keygen"))
            .args(["-q", "-s"])
            .arg(&self.ca)
            .args([
                "-I",
                &format!("sshjit:9:{name}"),
                "-n",
                "root",
                "-z",
                "77",
                "-V",
                &format!("-1m:{until}"),
            ])
            .arg(format!("{}.pub", key.display()))
            .status()
            .unwrap();
        assert!(st.success());
        (key, before)
    }

    fn ssh(&self, key: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(require("ssh"));
        c.args(ssh_opts(self.tmp.path()))
            .arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .args(args);
        c
    }

    fn log(&self) -> String {
        format!(
            "guard log:\n{}\nsshd log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.tmp.path().join("sshd.log")).unwrap_or_default()
        )
    }
}

/// An sshd that is stopped when dropped, also when a test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts sshd as the PAM service `service` (a symlink of that name) with `UsePAM yes` and
/// `extra` config lines; returns it and its port.
fn sshd_with_pam(dir: &Path, service: &str, extra: &str) -> (Running, u16) {
    let sshd = dir.join(service);
    std::os::unix::fs::symlink("/usr/sbin/sshd", &sshd).unwrap();
    let port = free_port();
    let host_key = keygen(dir, "host_key").key;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}/sshd.pid\nUsePAM yes\nPermitRootLogin yes\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding yes\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\nLogLevel VERBOSE\n{extra}",
            host_key.display(),
            dir.display(),
        ),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(&sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Running(child), port)
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // sshd (`_sshd`) stops right after, when the fields drop.
        let _ = std::fs::remove_file(&self.pam_file);
    }
}

/// Waits for `child` to end; it must end between `valid_before` and `valid_before + SLACK`.
fn ends_at_window_end(g: &Guarded, child: &mut Child, before: u64, what: &str) -> String {
    let limit = Duration::from_secs(before.saturating_sub(unix_now()) + 15);
    let st = util::wait_timeout(child, limit);
    let ended = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    assert!(st.is_some(), "{what} outlived its window: {}", g.log());
    assert!(
        ended >= before as f64 - 0.05,
        "{what} ended early, at {ended} before {before}: {out}\n{}",
        g.log()
    );
    assert!(
        ended <= before as f64 + SLACK.as_secs_f64(),
        "{what} ended {:.2}s late: {}",
        ended - before as f64,
        g.log()
    );
    out
}

#[test]
fn an_interactive_shell_is_warned_then_ended_with_a_reason() {
    let g = Guarded::start("");
    let (key, before) = g.cert("alice", 7);
    let mut ssh = g
        .ssh(&key, &["-tt", "root@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Keep stdin open (a person at the terminal) without typing.
    let _stdin = ssh.stdin.take();
    let out = ends_at_window_end(&g, &mut ssh, before, "a shell");
    let warn = out
        .find("sshjit: access to web-01 ends at")
        .unwrap_or_else(|| panic!("no warning: {out}"));
    let close = out
        .find("(the grant window is over); closing this connection")
        .unwrap_or_else(|| panic!("no closing line: {out}"));
    assert!(warn < close, "{out}");
    let log = std::fs::read_to_string(&g.log).unwrap();
    assert!(log.contains("ended connection of root to web-01 at the end of its window: key id sshjit:9:alice, serial 77"), "{log}");
}

#[test]
fn a_long_command_and_an_sftp_session_are_ended() {
    let g = Guarded::start("");
    let (key, before) = g.cert("bob", 6);
    let mut cmd = g
        .ssh(&key, &["root@127.0.0.1", "sleep 600; echo survived"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sftp = g
        .ssh(&key, &["-s", "root@127.0.0.1", "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _keep = sftp.stdin.take();
    let out = ends_at_window_end(&g, &mut cmd, before, "sleep 600");
    assert!(!out.contains("survived"));
    ends_at_window_end(&g, &mut sftp, before, "an sftp session");
    // Nothing of it lives on on the host.
    std::thread::sleep(Duration::from_millis(300));
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.trim() == "sleep 600"),
        "sleep 600 lives on"
    );
}

#[test]
fn a_forwarding_connection_and_its_live_stream_are_ended() {
    let g = Guarded::start("");
    let (key, before) = g.cert("carol", 6);
    // A TCP echo server behind the forward.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let local = free_port();
    let forward = format!("{local}:127.0.0.1:{echo_port}");
    let mut ssh = g
        .ssh(&key, &["-N", "-L", &forward, "root@127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut stream = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", local)) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the forward did not open: {}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    ends_at_window_end(&g, &mut ssh, before, "an ssh -N -L connection");
    // The forwarded stream is closed too: EOF or a reset, not silence, and no echo.
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = stream.write_all(b"more");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the forwarded stream is still open after the end")
        }
        _ => assert!(
            !rest.ends_with(b"more"),
            "the stream still echoes after the end"
        ),
    }
}

#[test]
fn a_session_multiplexed_on_a_master_connection_is_ended_too() {
    let g = Guarded::start("");
    let (key, before) = g.cert("dave", 7);
    let sock = g.tmp.path().join("master.sock");
    let control = format!("ControlPath={}", sock.display());
    let mut master = g
        .ssh(&key, &["-M", "-o", &control, "-N", "root@127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no master: {}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second session on the master, opened just before the end.
    std::thread::sleep(Duration::from_secs(
        before.saturating_sub(unix_now()).saturating_sub(2),
    ));
    let mut second = g
        .ssh(
            &key,
            &["-o", &control, "root@127.0.0.1", "sleep 600; echo survived"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = ends_at_window_end(&g, &mut second, before, "a multiplexed session");
    assert!(!out.contains("survived"));
    ends_at_window_end(&g, &mut master, before, "the master connection");
}

#[test]
fn logins_with_time_left_and_plain_key_logins_are_untouched() {
    let g = Guarded::start("");
    let (key, _) = g.cert("erin", 3600);
    let out = g
        .ssh(&key, &["root@127.0.0.1", "sleep 2; echo still-here"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-here"),
        "{out:?}\n{}",
        g.log()
    );
    let plain = g.tmp.path().join("plain");
    let out = g
        .ssh(&plain, &["root@127.0.0.1", "echo plain-ok"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("plain-ok"),
        "{out:?}\n{}",
        g.log()
    );
    let log = std::fs::read_to_string(&g.log).unwrap_or_default();
    assert!(
        log.contains("guarding connection") && log.contains("key id sshjit:9:erin"),
        "{log}"
    );
    assert!(!log.contains("ended connection"), "{log}");
}

#[test]
fn a_login_whose_certificate_cannot_be_read_does_not_start() {
    // pam_env replaces what sshd tells PAM about the login with a corrupted certificate.
    let tmp = tempfile::tempdir().unwrap();
    let env = tmp.path().join("env.conf");
    std::fs::write(
        &env,
        "SSH_AUTH_INFO_0 OVERRIDE=\"publickey ssh-ed25519-cert-v01@openssh.com AAAAbroken\"\n",
    )
    .unwrap();
    let g = Guarded::start(&format!(
        "session required {} conffile={} readenv=0\n",
        pam_module("pam_env.so").display(),
        env.display()
    ));
    let (key, _) = g.cert("frank", 3600);
    let out = g
        .ssh(&key, &["root@127.0.0.1", "echo should-not-run"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("should-not-run"),
        "{out:?}\n{}",
        g.log()
    );
    assert_ne!(out.status.code(), Some(0));
    let log = std::fs::read_to_string(&g.log).unwrap_or_default();
    assert!(
        log.contains("refused a session of root: the login's certificate cannot be read"),
        "{log}"
    );

    // The guard alone, as pam_exec runs it: no login facts, or unreadable ones, refuse; a
    // plain key is untouched; other PAM phases do nothing.
    let run = |ty: &str, info: Option<&str>| {
        let mut c = Command::new(guard_bin());
        c.args(["pam", "--ca"])
            .arg(format!("{}.pub", g.ca.display()))
            .args(["--host", "web-01"])
            .env("PAM_TYPE", ty)
            .env("PAM_USER", "root")
            .env_remove("SSH_AUTH_INFO_0");
        if let Some(i) = info {
            c.env("SSH_AUTH_INFO_0", i);
        }
        c.output().unwrap()
    };
    assert!(!run("open_session", None).status.success());
    assert!(!run("open_session", Some("gibberish")).status.success());
    let plain = std::fs::read_to_string(g.tmp.path().join("plain.pub")).unwrap();
    assert!(
        run("open_session", Some(&format!("publickey {plain}")))
            .status
            .success()
    );
    assert!(run("close_session", None).status.success());
    // A missing CA key file refuses too (fail closed).
    let out = Command::new(guard_bin())
        .args(["pam", "--ca", "/nonexistent/ca.pub", "--host", "web-01"])
        .env("PAM_TYPE", "open_session")
        .env("SSH_AUTH_INFO_0", format!("publickey {plain}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read the CA key"),
        "{out:?}"
    );
}

/// The real broker's certificate, on a host set up by `host-config --session-guard`: the
/// script installs the guard's PAM line (once, however often it runs), and the guard reads
/// the broker's own profile (key id, serial, window) and leaves a login with time left alone.
#[test]
fn the_brokers_certificate_on_a_host_set_up_by_host_config() {
    require_root();
    pam_module("pam_exec.so");
    let b = util::Broker::start_new();
    let me = util::current_user();
    let alice = b.add_member("alice", "editor");
    b.ssh(
        &b.owner,
        &format!("host add web-01 --address 127.0.0.1 --port 22 --login editor={me}"),
    )
    .ok();
    let service = format!(
        "sshjit-guard-test-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::SeqCst)
    );
    let pam_file = PathBuf::from(format!("/etc/pam.d/{service}"));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(pam_file.clone());
    // As Debian's: pam_env reads the user's ~/.pam_environment in the session stack, so the
    // guard's line must come before it.
    std::fs::write(
        &pam_file,
        "@include common-account\nsession required pam_env.so user_readenv=1\n",
    )
    .unwrap();
    let dir = b.tmp.path().join("host-web-01");
    let line = format!(
        "host-config web-01 --dir {} --script --session-guard --guard-path {} --pam-service {service}",
        dir.display(),
        guard_bin()
    );
    let script = b.ssh(&b.owner, &line).ok().stdout;
    for _ in 0..2 {
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let pam = std::fs::read_to_string(&pam_file).unwrap();
    let want = format!(
        "session required pam_exec.so quiet {} pam --ca {}/sshjit_ca.pub --host web-01 # sshjit-guard",
        guard_bin(),
        dir.display()
    );
    assert_eq!(
        pam.lines()
            .filter(|l| l.contains("sshjit-guard"))
            .collect::<Vec<_>>(),
        vec![want.as_str()],
        "{pam}"
    );
    assert_eq!(
        pam,
        format!("@include common-account\n{want}\nsession required pam_env.so user_readenv=1\n"),
        "the guard's line comes first in the session stack"
    );
    // Without the guard installed, the script refuses before it writes anything.
    let missing = script.replace(guard_bin(), "/nonexistent/sshjit-guard");
    let out = Command::new("sh").arg("-c").arg(&missing).output().unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("install sshjit-guard"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&pam_file).unwrap(), pam);

    let tmp = tempfile::tempdir().unwrap();
    let (_sshd, port) = sshd_with_pam(
        tmp.path(),
        &service,
        &format!("Include {}/sshd_config.d/sshjit.conf\n", dir.display()),
    );
    let (id, key, cert) = b.granted_cert(
        &alice,
        &b.owner,
        "request web-01 --role editor --for 30m --reason 'INC-1 look at the queue' --json",
        "alice-key",
    );
    let until = sshjit::model::Timestamp::parse_rfc3339(cert["valid_before"].as_str().unwrap())
        .unwrap()
        .unix();
    let mut ssh = Command::new(require("ssh"));
    ssh.args(ssh_opts(tmp.path()))
        .arg("-i")
        .arg(&key.key)
        .args(["-p", &port.to_string()])
        .arg(format!("{me}@127.0.0.1"))
        .arg("sleep 3; echo still-here");
    let mut child = ssh.stdout(Stdio::piped()).spawn().unwrap();
    // While it runs, the guard watches this connection until the certificate's end.
    let want = format!("--key-id=sshjit:{id}:alice");
    let start = Instant::now();
    let watcher = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("sshjit-guard watch") && cmd.contains(&want)).then_some(cmd)
        });
        if let Some(c) = found {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no watcher for {want}: {}",
            std::fs::read_to_string(tmp.path().join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(watcher.contains(&format!("--until={until}")), "{watcher}");
    assert!(
        watcher.contains(&format!("--serial={}", cert["serial"])),
        "{watcher}"
    );
    assert!(watcher.contains("--host=web-01"), "{watcher}");
    let st =
        util::wait_timeout(&mut child, Duration::from_secs(15)).expect("the login did not finish");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(st.success() && out.contains("still-here"), "{out}");
}

/// Hundreds of processes that ignore SIGTERM, and a loop that keeps forking, end with the
/// connection: nothing of it is left 2 s after the end.
#[test]
fn processes_that_fork_or_ignore_signals_are_ended_too() {
    let g = Guarded::start("");
    let (key, before) = g.cert("gina", 6);
    let many = "trap '' TERM HUP; for i in $(seq 1 300); do sleep 611 & done; wait";
    let forks = "trap '' TERM HUP; while :; do (sleep 612 &); sleep 0.01; done";
    let mut a = g
        .ssh(&key, &["root@127.0.0.1", many])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = g
        .ssh(&key, &["root@127.0.0.1", forks])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ends_at_window_end(&g, &mut a, before, "300 sleepers");
    ends_at_window_end(&g, &mut b, before, "a fork loop");
    let left_at = before as f64 + SLACK.as_secs_f64();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    if now < left_at {
        std::thread::sleep(Duration::from_secs_f64(left_at - now));
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let left = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.trim() == "sleep 611" || l.trim() == "sleep 612")
        .count();
    assert_eq!(
        left,
        0,
        "{left} processes of the connection outlived it: {}",
        g.log()
    );
}

//! The SSH transport: help, connection limits, stalled clients, and a graceful stop under load.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::{Broker, Identity, require, ssh_opts};

#[test]
fn help_and_a_bare_login_explain_the_commands() {
    let b = Broker::start_new();
    let help = b.ssh(&b.owner, "help").ok();
    for cmd in ["request", "approve", "cert", "host-config", "audit"] {
        assert!(help.stdout.contains(cmd), "{help:?}");
    }
    let sub = b.ssh(&b.owner, "request --help").ok();
    assert!(sub.stdout.contains("--reason"), "{sub:?}");
    // No command at all: the user is told how to give one, with a usage exit status.
    let mut c = b.ssh_cmd(&b.owner);
    c.arg("-T");
    let bare = util::run_with_stdin(c, b"");
    assert_eq!(bare.code, 2, "{bare:?}");
    assert!(bare.stderr.contains("give a command"), "{bare:?}");
    // Text errors go to stderr with a non-zero status.
    let err = b.ssh(&b.owner, "approve 42");
    assert_eq!(err.code, 1);
    assert!(
        err.stderr.starts_with("error: there is no request 42"),
        "{err:?}"
    );
}

/// Holds an authenticated connection open without running anything (`ssh -N`).
fn hold(b: &Broker, who: &Identity) -> Child {
    let mut c = Command::new(require("ssh"));
    c.args(ssh_opts(b.tmp.path()))
        .arg("-i")
        .arg(&who.key)
        .args(["-N", "-p", &b.addr.port().to_string(), "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn per_member_connections_are_capped() {
    let b = Broker::start_with_config(&[("max_connections_per_member", "2")]);
    let alice = b.add_member("alice", "viewer");
    let mut held: Vec<Child> = (0..2).map(|_| hold(&b, &alice)).collect();
    wait_for("two held connections", || {
        b.log()
            .lines()
            .filter(|l| l.contains("authenticated") && l.contains("member=alice"))
            .count()
            >= 2
    });
    // One more is closed at authentication, with a reason stock ssh shows.
    let refused = b.ssh(&alice, "whoami --json");
    assert_eq!(refused.code, 255, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("too many connections for alice (limit 2); close some and retry"),
        "{refused:?}"
    );
    assert!(b.log().contains("connection refused at authentication"));
    // Others are not affected.
    b.ssh(&b.owner, "whoami").ok();
    // Closing one frees a slot.
    held[0].kill().unwrap();
    held[0].wait().unwrap();
    wait_for("a freed slot", || b.ssh(&alice, "whoami").code == 0);
    for mut h in held {
        let _ = h.kill();
        let _ = h.wait();
    }
}

/// Reads until EOF; returns how long that took.
fn time_to_eof(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn stalled_clients_do_not_hold_slots() {
    let b =
        Broker::start_with_config(&[("login_grace_secs", "1"), ("max_startups_per_source", "2")]);
    // Silent after connecting, and silent after the SSH greeting: both closed after the grace.
    let silent = TcpStream::connect(b.addr).unwrap();
    let mut greeted = TcpStream::connect(b.addr).unwrap();
    greeted.write_all(b"SSH-2.0-stalled\r\n").unwrap();
    // This address has no place left to log in from: a third connection is closed at once.
    std::thread::sleep(Duration::from_millis(200));
    let third = b.ssh(&b.owner, "whoami");
    assert_eq!(
        third.code, 255,
        "a connection over the per-source cap was served: {third:?}"
    );
    // Another address still gets in.
    from(&b, "127.0.0.2", "whoami").ok();
    let (t1, t2) = (time_to_eof(silent), time_to_eof(greeted));
    assert!(
        t1 < Duration::from_secs(5) && t2 < Duration::from_secs(5),
        "{t1:?} {t2:?}"
    );
    // Places are free again.
    wait_for("a free place", || b.ssh(&b.owner, "whoami").code == 0);
}

/// Runs `line` as the owner with stock ssh from the loopback address `source`.
fn from(b: &Broker, source: &str, line: &str) -> util::Out {
    let mut c = b.ssh_cmd(&b.owner);
    c.args(["-b", source, line]);
    util::run_with_stdin(c, b"")
}

#[test]
fn a_flood_of_silent_sockets_cannot_lock_the_owner_out() {
    let b = Broker::start_new();
    // 300 sockets from one address that never say a word.
    let flood: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(b.addr).unwrap())
        .collect();
    // Beyond the per-source budget (8) they are closed at once.
    let started = Instant::now();
    let closed = flood[100..]
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            matches!((&**s).read(&mut [0u8; 64]), Ok(0) | Err(_))
                && started.elapsed() < Duration::from_secs(5)
        })
        .count();
    assert_eq!(closed, 200, "sockets over the budget were kept open");
    // Meanwhile the owner, from another address, gets in every time, promptly.
    for _ in 0..3 {
        let t = Instant::now();
        let out = from(&b, "127.0.0.2", "whoami").ok();
        assert_eq!(out.stdout.trim(), "olga (owner)");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    drop(flood);
}

#[test]
fn keepalives_do_not_keep_an_idle_connection() {
    let b = Broker::start_with_config(&[("idle_timeout_secs", "2")]);
    let mut c = Command::new(require("ssh"));
    c.args(ssh_opts(b.tmp.path()))
        .arg("-i")
        .arg(&b.owner.key)
        .args(["-o", "ServerAliveInterval=1", "-N", "-p"])
        .arg(b.addr.port().to_string())
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let status = util::wait_timeout(&mut child, Duration::from_secs(10));
    let took = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
        panic!("an idle connection with keepalives was kept for 10 s");
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(err.contains("no command ran for 2s"), "{err}");

    // Nor does a `cert` whose key comes a byte at a time and never ends: a command waiting
    // for its stdin is not running.
    let took = runtime().block_on(async {
        let h = login(&b, &b.owner.key).await;
        let ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "cert 1").await.unwrap();
        let started = Instant::now();
        for _ in 0..40 {
            if ch.data(&b"s"[..]).await.is_err() || h.is_closed() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("a trickle of stdin kept the connection for 10 s");
    });
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

#[test]
fn channel_requests_the_broker_does_not_serve_fail_at_once() {
    let b = Broker::start_new();
    // A subsystem (sftp) is refused and the client ends promptly.
    let mut c = b.ssh_cmd(&b.owner);
    c.args(["-s", "sftp"]);
    let t = Instant::now();
    let out = util::run_with_stdin(c, b"");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("subsystem request failed"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A refused environment does not stop the command itself.
    let mut c = b.ssh_cmd(&b.owner);
    c.args(["-o", "SetEnv=FOO=bar", "whoami"]);
    let out = util::run_with_stdin(c, b"");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("olga (owner)"), "{out:?}");
    // A pty asked for from a real terminal (`script` gives ssh one) is granted as a no-op.
    let c = b.ssh_cmd(&b.owner);
    let mut line: Vec<String> = vec![format!("{:?}", c.get_program())];
    line.extend(c.get_args().map(|a| format!("{a:?}")));
    line.extend(["-t".into(), "whoami".into()]);
    let mut script = Command::new(require("script"));
    script.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
    let out = util::run_with_stdin(script, b"");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains("PTY allocation request failed"),
        "{out:?}"
    );
    assert!(out.stdout.contains("olga (owner)"), "{out:?}");
}

#[test]
fn sigterm_under_load_stops_cleanly_and_loses_nothing_acknowledged() {
    let mut b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    let idle = hold(&b, &alice);
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (alice, tx) = (alice.clone(), tx.clone());
            let (port, tmp) = (b.addr.port(), b.tmp.path().to_path_buf());
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let mut c = Command::new(require("ssh"));
                    c.args(ssh_opts(&tmp)).arg("-i").arg(&alice.key).args([
                        "-p",
                        &port.to_string(),
                        "127.0.0.1",
                    ]);
                    c.arg("request web-01 --role viewer --for 10m --reason 'INC-2 load' --json");
                    let out = util::run_with_stdin(c, b"");
                    if out.code == 0 {
                        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                        tx.send(v["id"].as_u64().unwrap()).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    // Stop mid-stream.
    wait_for("some requests", || {
        b.log().matches("request created").count() >= 5
    });
    let st = b.stop();
    assert!(st.success(), "exit {st:?}; log:\n{}", b.log());
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged: Vec<u64> = rx.iter().collect();
    assert!(!acknowledged.is_empty());
    let mut idle = idle;
    let _ = idle.kill();
    let _ = idle.wait();
    b.spawn();
    for id in &acknowledged {
        let r = b.ssh(&b.owner, &format!("show {id} --json")).ok().json();
        assert_eq!(r["requester"], "alice");
    }
    let v = b.json("audit verify");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn serve_refuses_a_data_dir_others_can_change() {
    use std::os::unix::fs::PermissionsExt;
    let mut b = Broker::start_new();
    b.stop();
    let set =
        |mode| std::fs::set_permissions(&b.data, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o777);
    let out = Command::new(util::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data)
        .output()
        .unwrap();
    set(0o700);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "has mode 777, so others can change it; fix it with: chmod 700 {}",
            b.data.display()
        )),
        "{err}"
    );
    // Fixed as it says, the broker starts.
    b.spawn();
    b.ssh(&b.owner, "whoami").ok();
}

#[test]
fn a_connection_that_ran_its_commands_is_hung_up_with_the_reason() {
    // COMMANDS_PER_CONNECTION in src/server/mod.rs.
    const COMMANDS: usize = 100;
    let b = Broker::start_new();
    let control = b.tmp.path().join("mux");
    let port = b.addr.port().to_string();
    let ssh = |extra: &[&str]| {
        let mut c = Command::new(require("ssh"));
        c.args(ssh_opts(b.tmp.path()))
            .arg("-i")
            .arg(&b.owner.key)
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .args(extra)
            .args(["-p", &port, "127.0.0.1"]);
        c
    };
    // One connection that every command below shares (OpenSSH multiplexing).
    let mut master = ssh(&["-o", "ControlMaster=yes", "-N"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !control.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no master connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..COMMANDS {
        let mut c = ssh(&["-o", "ControlMaster=no"]);
        c.arg("whoami");
        let out = util::run_with_stdin(c, b"");
        assert_eq!(out.code, 0, "command {i}: {out:?}");
        assert_eq!(out.stdout.trim(), "olga (owner)");
    }
    // After the last one answered (and a moment for the master to relay it), the broker
    // hangs up and says why.
    let status = util::wait_timeout(&mut master, Duration::from_secs(10));
    if status.is_none() {
        let _ = master.kill();
        panic!("the connection was kept after {COMMANDS} commands");
    }
    let mut err = String::new();
    master
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!(
            "this connection ran {COMMANDS} commands; reconnect to run more"
        )),
        "{err}"
    );
    // A new connection runs commands at once.
    assert_eq!(b.ssh(&b.owner, "whoami").ok().stdout.trim(), "olga (owner)");
}

/// Accepts the broker's host key: the test started the broker it talks to.
struct AnyKey;

impl russh::client::Handler for AnyKey {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A channel closed without an answer, by the broker (a subsystem refused while a command
/// on a pty waits for its key) or by the client (before its stdin ended), gives its place
/// back: the connection can still run commands, and is still hung up after its 100th.
#[test]
fn a_channel_closed_without_an_answer_gives_its_place_back() {
    // COMMANDS_PER_CONNECTION in src/server/mod.rs; more than max_channels_per_connection
    // (16) are closed each way.
    const COMMANDS: usize = 100;
    let b = Broker::start_new();
    runtime().block_on(async {
        let h = login(&b, &b.owner.key).await;
        for i in 0..20 {
            let mut ch = h.channel_open_session().await.unwrap();
            ch.request_pty(false, "xterm", 80, 24, 0, 0, &[])
                .await
                .unwrap();
            ch.exec(false, "cert 1").await.unwrap();
            ch.request_subsystem(true, "sftp").await.unwrap();
            let (kinds, _) = summary(&messages(&mut ch).await);
            assert_eq!(kinds, ["failure", "close"], "channel {i}");
        }
        for i in 20..COMMANDS - 1 {
            let ch = h.channel_open_session().await.unwrap();
            ch.exec(false, "cert 1").await.unwrap();
            ch.close().await.unwrap();
            assert!(!h.is_closed(), "hung up after channel {i}");
        }
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "whoami").await.unwrap();
        let (kinds, out) = summary(&messages(&mut ch).await);
        assert_eq!(
            kinds,
            ["success", "data", "exit 0", "eof", "close"],
            "{out}"
        );
        let started = Instant::now();
        while !h.is_closed() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no hang-up after the last command"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A russh client logged in to `b` with the key at `key`.
async fn login(b: &Broker, key: &std::path::Path) -> russh::client::Handle<AnyKey> {
    let key = Arc::new(russh::keys::load_secret_key(key, None).unwrap());
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, b.addr, AnyKey)
        .await
        .unwrap();
    let auth = russh::keys::PrivateKeyWithHashAlg::new(key, None);
    assert!(h.authenticate_publickey("x", auth).await.unwrap().success());
    h
}

/// Waits for `ch`'s next message, which must be a success reply (to `what`).
async fn success_next(ch: &mut russh::Channel<russh::client::Msg>, what: &str) {
    let m = tokio::time::timeout(Duration::from_secs(5), ch.wait()).await;
    assert!(
        matches!(m, Ok(Some(russh::ChannelMsg::Success))),
        "{what}: {m:?}"
    );
}

/// A current-thread runtime for a test's russh client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every message on `ch` until it closes (in 10 s, or the test fails).
async fn messages(ch: &mut russh::Channel<russh::client::Msg>) -> Vec<russh::ChannelMsg> {
    let mut all = vec![];
    let until_close = async {
        while let Some(m) = ch.wait().await {
            let close = matches!(m, russh::ChannelMsg::Close);
            all.push(m);
            if close {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), until_close)
        .await
        .is_err()
    {
        panic!("the channel did not close in 10 s: {all:?}");
    }
    all
}

/// What a channel's messages say: their kinds in order, and the text of its stdout.
fn summary(all: &[russh::ChannelMsg]) -> (Vec<&'static str>, String) {
    let mut out = String::new();
    let kinds = all
        .iter()
        .map(|m| match m {
            russh::ChannelMsg::Success => "success",
            russh::ChannelMsg::Failure => "failure",
            russh::ChannelMsg::Data { data } => {
                out.push_str(&String::from_utf8_lossy(data));
                "data"
            }
            russh::ChannelMsg::ExtendedData { .. } => "stderr",
            russh::ChannelMsg::ExitStatus { exit_status: 0 } => "exit 0",
            russh::ChannelMsg::ExitStatus { .. } => "exit !0",
            russh::ChannelMsg::Eof => "eof",
            russh::ChannelMsg::Close => "close",
            _ => "other",
        })
        .collect();
    (kinds, out)
}

/// A `cert`'s exec reply, held so that it can leave with the answer, is never withheld: a
/// client that waits for it before it sends the key, as some SSH libraries do, still gets
/// it, and whenever the key comes, the reply comes once and first. (That it does leave with
/// the answer shows in the `sendto`s per certificate, docs/PERFORMANCE.md.) A second exec,
/// or any other request, on the channel meanwhile ends the command; on a channel with a
/// terminal the reply is not held.
#[test]
fn a_cert_gets_its_exec_reply_whether_or_not_the_client_waits_for_it() {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    let line = "request web-01 --role viewer --for 10m --reason 'INC-3 exec reply' --json";
    let id = b.ssh(&alice, line).ok().json()["id"].as_u64().unwrap();
    b.ssh(&b.owner, &format!("approve {id}")).ok();
    let subject = util::keygen(b.tmp.path(), "subject").public;
    runtime().block_on(async {
        let h = login(&b, &alice.key).await;
        let cert_line = format!("cert {id}").into_bytes();

        // Waits for the reply before it sends anything: the reply comes by itself.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        success_next(&mut ch, "exec").await;
        ch.data(subject.as_bytes()).await.unwrap();
        ch.eof().await.unwrap();
        let (kinds, out) = summary(&messages(&mut ch).await);
        assert_eq!(kinds, ["data", "exit 0", "eof", "close"], "{out}");
        assert!(
            out.starts_with("ssh-ed25519-cert-v01@openssh.com "),
            "{out}"
        );

        // Sends its key at once: the reply comes first, with the answer.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        ch.data(subject.as_bytes()).await.unwrap();
        ch.eof().await.unwrap();
        let (kinds, out) = summary(&messages(&mut ch).await);
        assert_eq!(
            kinds,
            ["success", "data", "exit 0", "eof", "close"],
            "{out}"
        );
        assert!(
            out.starts_with("ssh-ed25519-cert-v01@openssh.com "),
            "{out}"
        );

        // Sends its key about when the reply is due by itself: whichever sends the reply,
        // it comes once and before the answer.
        for ms in [3, 4, 5, 6, 7, 8] {
            let mut ch = h.channel_open_session().await.unwrap();
            ch.exec(true, cert_line.clone()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ch.data(subject.as_bytes()).await.unwrap();
            ch.eof().await.unwrap();
            let all = messages(&mut ch).await;
            let (kinds, out) = summary(&all);
            assert_eq!(
                kinds,
                ["success", "data", "exit 0", "eof", "close"],
                "{ms} ms: {out}"
            );
        }

        // A second exec while the first reads its key: refused, and the channel closed.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        let (kinds, _) = summary(&messages(&mut ch).await);
        assert_eq!(kinds, ["failure", "close"]);

        // Another request while the reply is held (russh gives it the reply's place): the
        // command ends with the reason, so a client waiting for the reply is not left there.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        ch.window_change(100, 40, 0, 0).await.unwrap();
        let all = messages(&mut ch).await;
        let (kinds, _) = summary(&all);
        // (The timer may have sent the reply first on a slow machine.)
        let rest = kinds.strip_prefix(&["success"][..]).unwrap_or(&kinds);
        assert_eq!(rest, ["stderr", "exit !0", "eof", "close"], "{kinds:?}");
        let stderr = all.iter().find_map(|m| match m {
            russh::ChannelMsg::ExtendedData { data, .. } => Some(String::from_utf8_lossy(data)),
            _ => None,
        });
        assert!(
            stderr.is_some_and(|e| e.contains("a channel request came while")),
            "{all:?}"
        );

        // On a channel with a terminal, whose window-change may come at any moment, the
        // reply is not held: it is not lost to one.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        ch.exec(true, cert_line.clone()).await.unwrap();
        ch.window_change(100, 40, 0, 0).await.unwrap();
        success_next(&mut ch, "pty").await;
        success_next(&mut ch, "exec").await;
        ch.data(subject.as_bytes()).await.unwrap();
        ch.eof().await.unwrap();
        let (kinds, out) = summary(&messages(&mut ch).await);
        assert_eq!(kinds, ["data", "exit 0", "eof", "close"], "{out}");

        // Another exec while the command runs (a `wait` of 3 s): refused, and the
        // command goes on alone, so one channel cannot run command after command past the
        // per-connection limit.
        let mut ch = h.channel_open_session().await.unwrap();
        let wait = format!("wait {id} --while approved --timeout 3s");
        ch.exec(true, wait.as_bytes()).await.unwrap();
        for _ in 0..3 {
            ch.exec(true, cert_line.clone()).await.unwrap();
        }
        let (kinds, out) = summary(&messages(&mut ch).await);
        assert_eq!(
            kinds,
            [
                "success", "failure", "failure", "failure", "data", "exit 0", "eof", "close"
            ],
            "{out}"
        );
        assert!(
            out.contains("approved") && !out.contains("cert-v01"),
            "{out}"
        );

        // Refused for its stdin: the reply still comes first, then the refusal.
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, cert_line).await.unwrap();
        ch.data(&vec![b'x'; 17 * 1024][..]).await.unwrap();
        ch.eof().await.unwrap();
        let (kinds, _) = summary(&messages(&mut ch).await);
        assert_eq!(kinds, ["success", "stderr", "exit !0", "eof", "close"]);
    });
}

//! `serve --dev` prints a walkthrough; running it as printed, with stock OpenSSH and then with
//! the helper, ends in working logins on a local sshd, and Ctrl-C stops the broker and that sshd.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_printed_walkthrough_works_as_printed() {
    util::require("/usr/sbin/sshd");
    let home = tempfile::tempdir().unwrap();
    let user = util::current_user();
    let mut broker = Command::new(util::bin())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("USER", &user)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = String::new();
    let mut lines = BufReader::new(broker.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let script: String = printed
        .lines()
        .skip_while(|l| !l.contains("--- walkthrough ---"))
        .take_while(|l| !l.contains("--- end ---"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(script.contains("approver approve 1"), "{printed}");
    let dev_dir = script
        .lines()
        .find_map(|l| l.strip_prefix("D="))
        .unwrap()
        .to_string();
    let out = Command::new("bash")
        .arg("-euc")
        .arg(&script)
        .env("HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("request 1 approved"), "{stdout}");
    assert!(stdout.contains("Key ID: \"sshjit:1:"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("uid=") && l.contains(&format!("({user})")))
            .count(),
        2,
        "expected two logins as {user}, with stock ssh and with the helper:\n{stdout}"
    );
    assert!(stdout.contains("request 2 approved"), "{stdout}");
    // The serial is the sequence number of the certificate's own audit entry.
    let serial: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial: "))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no serial in:\n{stdout}"));
    let entry = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{serial} ")))
        .unwrap_or_else(|| panic!("no audit entry {serial}:\n{stdout}"));
    assert!(
        entry.contains(&format!("certificate serial {serial}")),
        "{entry}"
    );
    // Ctrl-C stops the broker cleanly, stops the demo sshd, and removes the throwaway directory.
    let sshd_pid = std::fs::read_to_string(format!("{dev_dir}/sshd.pid")).unwrap();
    let sshd_proc = format!("/proc/{}", sshd_pid.trim());
    assert!(std::path::Path::new(&sshd_proc).exists());
    util::signal(&broker, "INT");
    let st =
        util::wait_timeout(&mut broker, Duration::from_secs(20)).expect("dev broker did not stop");
    assert!(st.success());
    assert!(
        !std::path::Path::new(&dev_dir).exists(),
        "{dev_dir} was left behind"
    );
    let start = std::time::Instant::now();
    while std::path::Path::new(&sshd_proc).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the demo sshd was left running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A terminal or pipe that goes away after the walkthrough must not stop the broker: it keeps
/// serving (and keeps its data dir) when nobody reads its stdout any more.
#[test]
fn the_dev_broker_keeps_serving_when_its_stdout_is_closed() {
    util::require("/usr/sbin/sshd");
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    let me = util::keygen(&home.path().join(".ssh"), "id_ed25519");
    let port = util::free_port();
    let mut broker = Command::new(util::bin())
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .env("HOME", home.path())
        .env("USER", util::current_user())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Close the read end before the broker writes its walkthrough.
    drop(broker.stdout.take());
    let start = std::time::Instant::now();
    let out = loop {
        let out = Command::new(util::bin())
            .args([
                "admin",
                "--broker",
                &format!("127.0.0.1:{port}"),
                "--identity",
            ])
            .arg(&me.key)
            .args(["--accept-new-broker-key", "--json", "whoami"])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .output()
            .unwrap();
        if out.status.success() || start.elapsed() > Duration::from_secs(20) {
            break out;
        }
        assert!(
            broker.try_wait().unwrap().is_none(),
            "the broker stopped when its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"role\":\"owner\""),
        "{out:?}"
    );
    util::signal(&broker, "INT");
    let st =
        util::wait_timeout(&mut broker, Duration::from_secs(20)).expect("dev broker did not stop");
    assert!(st.success());
}

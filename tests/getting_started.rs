//! docs/getting-started.md's "Try the helper on the demo broker", pasted as printed into fresh
//! shells against `serve --dev`: the helper waits, an approver approves, and the helper's
//! certificate logs in to the demo host. Only the placeholders the text tells you to fill in
//! (`D=`, `K=`, the build's PATH, and the port when 2222 is taken) are replaced.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fenced `sh` blocks of the section headed `heading`.
fn blocks(doc: &str, heading: &str) -> Vec<String> {
    let section: String = doc
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = vec![];
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => out.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn the_demo_section_of_getting_started_works_as_printed() {
    util::require("/usr/sbin/sshd");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/getting-started.md"
    ))
    .unwrap();
    let steps = blocks(&doc, "## Try the helper on the demo broker");
    assert_eq!(steps.len(), 4, "{steps:#?}");
    assert!(steps[0].contains("sshjit-broker serve --dev"));

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
    for line in BufReader::new(broker.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let field = |prefix: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{printed}"))
            .to_string()
    };
    let dir = field("D=");
    let addr = field("sshjit broker (dev mode) listening on ");
    let broker_line = field("broker() { ");
    let key = broker_line
        .split_whitespace()
        .skip_while(|w| *w != "-i")
        .nth(1)
        .unwrap()
        .to_string();
    let bin_dir = std::path::Path::new(util::bin())
        .parent()
        .unwrap()
        .to_path_buf();
    // Fill in what the text says to fill in; everything else runs as written.
    let fill = |block: &str| {
        block
            .replace("D=/tmp/sshjit-dev-...", &format!("D={dir}"))
            .replace("K=...", &format!("K={key}"))
            .replace("$PWD/target/release", bin_dir.to_str().unwrap())
            .replace("127.0.0.1:2222", &addr)
    };
    let shell = |block: String| {
        let mut c = Command::new("bash");
        c.arg("-euc")
            .arg(block)
            .env("HOME", home.path())
            .env("D", &dir)
            .env("XDG_CONFIG_HOME", format!("{dir}/config"))
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
            )
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        c
    };
    // Second shell: the helper asks and waits.
    let mut waiting = shell(fill(&steps[1]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin = format!("{}/sshjit-broker", bin_dir.display());
    let started = Instant::now();
    loop {
        let out = Command::new(&admin)
            .args(["admin", "--broker", &addr, "--identity"])
            .arg(format!("{dir}/approver_ed25519"))
            .args(["--accept-new-broker-key", "--json", "requests"])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", format!("{dir}/config"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"id\":1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the request never came: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Third shell: approve, set up the host, start its sshd.
    let out = shell(fill(&steps[2])).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let st =
        util::wait_timeout(&mut waiting, Duration::from_secs(20)).expect("the helper kept waiting");
    let waited = waiting.wait_with_output().unwrap();
    assert!(st.success(), "{waited:?}");
    assert!(
        String::from_utf8_lossy(&waited.stdout).contains("certificate for demo"),
        "{waited:?}"
    );
    // The login, through the helper's stored certificate.
    let out = shell(fill(&steps[3])).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(&format!("({user})")), "{stdout}");
    util::signal(&broker, "INT");
    assert!(util::wait_timeout(&mut broker, Duration::from_secs(20)).is_some_and(|s| s.success()));
}

//! Shell completions and man pages for both binaries: bash accepts the completion scripts and
//! registers them, and `man -l` renders the pages with every subcommand.

mod util;

use std::process::Command;

use util::require;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

const BINS: [(&str, &str); 2] = [
    ("sshjit", env!("CARGO_BIN_EXE_sshjit")),
    ("sshjit-broker", env!("CARGO_BIN_EXE_sshjit-broker")),
];

#[test]
fn bash_accepts_the_completion_scripts() {
    let bash = require("bash");
    for (name, bin) in BINS {
        let script = run(bin, &["completions", "bash"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.bash");
        std::fs::write(&file, &script).unwrap();
        // Sourcing registers a completion function for the command.
        let out = Command::new(&bash)
            .args([
                "--norc",
                "-c",
                &format!("source {} && complete -p {name}", file.display()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(name));
        for shell in ["zsh", "fish"] {
            assert!(
                run(bin, &["completions", shell]).contains(name),
                "{name} {shell}"
            );
        }
    }
    let bad = Command::new(BINS[0].1)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn man_renders_the_pages_with_every_subcommand() {
    let man = require("man");
    for (name, bin, subs) in [
        (
            BINS[0].0,
            BINS[0].1,
            &["request", "ssh", "ls", "logout", "completions"][..],
        ),
        (
            BINS[1].0,
            BINS[1].1,
            &["init", "serve", "admin", "audit", "man"][..],
        ),
    ] {
        let page = run(bin, &["man"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.1"));
        std::fs::write(&file, &page).unwrap();
        let out = Command::new(&man)
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
        for sub in subs {
            assert!(
                text.contains(&format!("{} {}", name.to_uppercase(), sub.to_uppercase())),
                "{name} {sub} missing from the rendered page:\n{text}"
            );
        }
    }
}

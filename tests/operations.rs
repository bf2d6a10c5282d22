//! Operations: `check-config` checks a data dir as `serve` would and says what to change, and
//! the systemd unit in `examples/` runs commands that exist, with the hardening it promises.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use util::{bin, keygen};

fn check_config(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["check-config", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_config_passes_a_fresh_data_dir_and_names_each_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let data = util::init_data_dir(tmp.path(), &keygen(tmp.path(), "olga"));
    let (ok, text) = check_config(&data);
    assert!(ok, "{text}");
    assert!(text.contains("is ready to serve"), "{text}");

    // A widened policy and a config others can write: both named, with what to change.
    let cfg = data.join("config.toml");
    let t = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        t.replace("max_duration_secs = 86400", "max_duration_secs = 999999"),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, text) = check_config(&data);
    assert!(!ok, "{text}");
    assert!(
        text.contains("PROBLEM config.toml") && text.contains("max_duration_secs"),
        "{text}"
    );
    assert!(
        text.contains(&format!("chmod 600 {}", cfg.display())),
        "{text}"
    );
    // A CA key with a passphrase: named, with how to remove it; and `serve` refuses it
    // before it could record a certificate it cannot sign.
    std::fs::write(&cfg, &t).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca_key = data.join("ca_key");
    let status = Command::new(util::require("ssh-keygen"))
        .args(["-q", "-p", "-N", "secret", "-f"])
        .arg(&ca_key)
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, text) = check_config(&data);
    assert!(!ok, "{text}");
    assert!(
        text.contains("PROBLEM ca_key") && text.contains("is encrypted"),
        "{text}"
    );
    assert!(text.contains("ssh-keygen -p -N"), "{text}");
    let serve = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let err = String::from_utf8_lossy(&serve.stderr);
    assert!(err.contains("is encrypted"), "{err}");

    // Not a data dir at all.
    let (ok, text) = check_config(tmp.path());
    assert!(!ok);
    assert!(text.contains("PROBLEM"), "{text}");
}

#[test]
fn the_systemd_unit_runs_real_commands_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/sshjit-broker.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing from the unit"))
            .to_string()
    };
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("User", "sshjit"),
        ("StateDirectory", "sshjit"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(key), want, "{key}");
    }
    // The commands it runs parse with this build (check-config on a fresh data dir passes).
    let tmp = tempfile::tempdir().unwrap();
    let owner = keygen(tmp.path(), "olga");
    let data = tmp.path().join("data");
    assert!(
        Command::new(bin())
            .args([
                "init",
                "--owner",
                "olga",
                "--owner-key",
                &owner.public,
                "--data-dir"
            ])
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    let pre = value("ExecStartPre").replace("/var/lib/sshjit/data", data.to_str().unwrap());
    let mut words = pre.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/sshjit-broker"));
    let out = Command::new(bin()).args(words).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let start = value("ExecStart");
    assert!(
        start.ends_with("serve --data-dir /var/lib/sshjit/data"),
        "{start}"
    );
}

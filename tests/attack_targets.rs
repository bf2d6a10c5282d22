//! Attacks on targets (hosts, fleets, fleet commands), in process through `Broker::run_line`.
//!
//! Each test plays a viewer or editor with a script, or a rogue admin, and tries to get a
//! certificate for more than was approved, or to break the rules around targets; each asserts
//! that the contract holds.

use std::collections::HashMap;

use russh::keys::ssh_key::Certificate;
use serde_json::Value;
use sshjit::broker::{Broker, Output};
use sshjit::datadir::{self, DataDir, Opened};
use sshjit::model::Timestamp;

const T0: i64 = 1_900_000_000;
const WHY: &str = "--for 1h --reason 'INC-42 rotate the worker logs'";

struct Lab {
    _tmp: tempfile::TempDir,
    opened: Opened,
    /// name -> (public key line, fingerprint)
    keys: HashMap<String, (String, String)>,
    now: Timestamp,
}

fn new_key(name: &str) -> (String, String) {
    let k = sshjit::ca::generate_key(name).unwrap();
    let public = k.public_key().to_openssh().unwrap();
    let fp = sshjit::ca::fingerprint(k.public_key().key_data());
    (public, fp)
}

impl Lab {
    /// olga (owner), oscar (owner), adam (admin), ed (editor), alice and vic (viewers).
    fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let now = Timestamp::from_unix(T0);
        let mut keys = HashMap::new();
        keys.insert("olga".to_string(), new_key("olga"));
        datadir::init(&dir, "olga", &keys["olga"].0, "127.0.0.1:0", now).unwrap();
        let opened = datadir::open(&dir).unwrap();
        let mut lab = Lab {
            _tmp: tmp,
            opened,
            keys,
            now,
        };
        for (n, r) in [
            ("oscar", "owner"),
            ("adam", "admin"),
            ("ed", "editor"),
            ("alice", "viewer"),
            ("vic", "viewer"),
        ] {
            lab.add_member("olga", n, r);
        }
        lab
    }

    fn core(&self) -> &Broker {
        &self.opened.broker
    }

    fn add_member(&mut self, by: &str, name: &str, role: &str) -> Output {
        let k = new_key(name);
        let out = self.run(
            by,
            &format!("member add {name} --role {role} --key '{}'", k.0),
        );
        if out.status == 0 {
            self.keys.insert(name.to_string(), k);
        }
        out
    }

    fn run_stdin(&self, who: &str, line: &str, stdin: &str) -> Output {
        let fp = &self.keys[who].1;
        self.core()
            .run_line(fp, line.as_bytes(), stdin.as_bytes(), self.now)
    }

    fn run(&self, who: &str, line: &str) -> Output {
        self.run_stdin(who, line, "")
    }

    fn ok(&self, who: &str, line: &str) -> String {
        let out = self.run(who, line);
        assert_eq!(out.status, 0, "{who}: {line}: {out:?}");
        out.stdout
    }

    fn json(&self, who: &str, line: &str) -> Value {
        let s = self.ok(who, &format!("{line} --json"));
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{line}: {e}: {s}"))
    }

    /// A refusal with `--json`: returns (code, message).
    fn refused(&self, who: &str, line: &str) -> (String, String) {
        let out = self.run(who, &format!("{line} --json"));
        assert_ne!(out.status, 0, "{who}: {line} was accepted: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let v: Value = serde_json::from_str(out.stderr.trim())
            .unwrap_or_else(|e| panic!("{line}: not a JSON error ({e}): {out:?}"));
        (
            v["error"]["code"].as_str().unwrap().to_string(),
            v["error"]["message"].as_str().unwrap().to_string(),
        )
    }

    fn request(&self, who: &str, line: &str) -> u64 {
        self.json(who, &format!("request {line}"))["id"]
            .as_u64()
            .unwrap()
    }

    /// A certificate for request `id` for a fresh key: (cert view, parsed certificate).
    fn cert(&self, who: &str, id: u64) -> Result<(Value, Certificate), (String, String)> {
        let fresh = new_key("fresh");
        let out = self.run_stdin(who, &format!("cert {id} --json"), &fresh.0);
        if out.status != 0 {
            let v: Value = serde_json::from_str(out.stderr.trim()).unwrap();
            return Err((
                v["error"]["code"].as_str().unwrap().to_string(),
                v["error"]["message"].as_str().unwrap().to_string(),
            ));
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let c = Certificate::from_openssh(v["certificate"].as_str().unwrap()).unwrap();
        Ok((v, c))
    }

    fn snapshot(&self) -> impl PartialEq + std::fmt::Debug + use<> {
        let s = self.core().store();
        (
            s.audit_raw(0).map(|r| r.unwrap()).collect::<Vec<_>>(),
            s.requests_in(None, self.now, usize::MAX).unwrap(),
            s.members().unwrap(),
            s.hosts().unwrap(),
            s.targets().unwrap(),
        )
    }

    fn audit_ok(&self) {
        let v = self.core().store().verify_audit().unwrap();
        assert!(v.ok, "audit chain broken: {v:?}");
    }
}

fn principals(c: &Certificate) -> Vec<String> {
    let mut p = c.valid_principals().to_vec();
    p.sort();
    p
}

fn host(lab: &Lab, name: &str, extra: &str) {
    lab.ok(
        "olga",
        &format!(
            "host add {name} --address 10.0.0.1 --login viewer=ro --login editor=deploy {extra}"
        ),
    );
}

/// Host web-01 (tag web), fleet `web` and the command `restart` on it.
fn web_fleet(lab: &Lab) {
    host(lab, "web-01", "--tag web");
    lab.ok("olga", "fleet add web --tag web");
    lab.ok(
        "olga",
        "command add restart --fleet web --run 'systemctl restart worker' --login deploy",
    );
}

// ---------------------------------------------------------------------------------------
// Viewer / editor attacks
// ---------------------------------------------------------------------------------------

#[test]
fn viewers_and_editors_cannot_manage_targets_and_nothing_changes() {
    let lab = Lab::new();
    web_fleet(&lab);
    let before = lab.snapshot();
    for who in ["alice", "ed"] {
        for line in [
            "fleet add all --tag web",
            "fleet remove web",
            "command add sh --host web-01 --run bash --login root",
            "command remove restart",
            "host add x --address 10.0.0.9 --login viewer=root",
            "host remove web-01",
            "host-config web-01",
        ] {
            let (code, msg) = lab.refused(who, line);
            assert_eq!(code, "permission_denied", "{who}: {line}: {msg}");
        }
    }
    assert_eq!(lab.snapshot(), before);
    lab.audit_ok();
}

#[test]
fn hosts_fleets_and_commands_share_one_namespace() {
    let lab = Lab::new();
    web_fleet(&lab);
    let before = lab.snapshot();
    for line in [
        "fleet add web-01 --tag web",
        "fleet add restart --tag web",
        "fleet add web --tag web",
        "command add web-01 --fleet web --run id --login deploy",
        "command add web --host web-01 --run id --login deploy",
        "command add restart --host web-01 --run id --login deploy",
        "host add web --address 10.0.0.2 --login viewer=ro",
        "host add restart --address 10.0.0.2 --login viewer=ro",
    ] {
        let (code, msg) = lab.refused("olga", line);
        assert!(
            code == "name_taken" || code == "already_exists",
            "{line}: {code}: {msg}"
        );
    }
    assert_eq!(lab.snapshot(), before);
    lab.audit_ok();
}

#[test]
fn roles_must_fit_the_target_kind() {
    let lab = Lab::new();
    web_fleet(&lab);
    let before = lab.snapshot();
    for (line, code) in [
        (
            format!("request restart --role viewer {WHY}"),
            "invalid_argument",
        ),
        (
            format!("request restart --role editor {WHY}"),
            "invalid_argument",
        ),
        (
            format!("request restart --role admin {WHY}"),
            "role_not_grantable",
        ),
        (format!("request web {WHY}"), "invalid_argument"),
        (format!("request web-01 {WHY}"), "invalid_argument"),
        (
            format!("request web --role owner {WHY}"),
            "role_not_grantable",
        ),
    ] {
        let (got, msg) = lab.refused("alice", &line);
        assert_eq!(got, code, "{line}: {msg}");
    }
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn a_fleet_certificate_holds_exactly_the_hosts_at_final_approval() {
    let lab = Lab::new();
    host(&lab, "web-01", "--tag web");
    host(&lab, "web-02", "--tag web");
    host(&lab, "db-01", "--tag db");
    lab.ok("olga", "fleet add web --tag web");
    let id = lab.request("alice", &format!("web --role viewer {WHY}"));
    // A host joins the fleet before approval: in the scope.
    host(&lab, "web-03", "--tag web");
    lab.ok("adam", &format!("approve {id}"));
    // A host joins after approval: not in the scope.
    host(&lab, "web-04", "--tag web");
    let (v, c) = lab.cert("alice", id).unwrap();
    assert_eq!(
        principals(&c),
        ["ro@web-01", "ro@web-02", "ro@web-03"],
        "{v}"
    );
    assert!(c.critical_options().is_empty());
    let ext: Vec<&String> = c.extensions().keys().collect();
    assert_eq!(ext, ["permit-pty"]);
    // Removing a host drops it; adding it again under the same name does not bring it back.
    lab.ok("olga", "host remove web-02");
    host(&lab, "web-02", "--tag web");
    let (_, c) = lab.cert("alice", id).unwrap();
    assert_eq!(principals(&c), ["ro@web-01", "ro@web-03"]);
    // Nobody else gets a certificate for it, not even an owner; those who may not read it
    // are not told it exists.
    for (who, want) in [
        ("vic", "not_found"),
        ("ed", "not_found"),
        ("olga", "permission_denied"),
        ("adam", "permission_denied"),
    ] {
        let (code, _) = lab.cert(who, id).unwrap_err();
        assert_eq!(code, want, "{who}");
    }
    lab.audit_ok();
}

#[test]
fn a_command_certificate_carries_its_command_and_nothing_else() {
    let lab = Lab::new();
    host(&lab, "q-01", "--tag queue");
    host(&lab, "q-02", "--tag queue");
    lab.ok("olga", "fleet add queue --tag queue");
    lab.ok(
        "olga",
        "command add restart --fleet queue --run '  systemctl restart worker  ' --login ops",
    );
    // An editor, an admin and an owner all get the command only (no role, no extensions).
    for who in ["ed", "alice", "adam"] {
        let id = lab.request(who, &format!("restart {WHY}"));
        let approver = if who == "adam" { "olga" } else { "adam" };
        lab.ok(approver, &format!("approve {id}"));
        let (v, c) = lab.cert(who, id).unwrap();
        assert_eq!(principals(&c), ["ops@q-01", "ops@q-02"], "{v}");
        let opts: Vec<(&String, &String)> = c.critical_options().iter().collect();
        assert_eq!(
            opts,
            [(
                &"force-command".to_string(),
                &"systemctl restart worker".to_string()
            )]
        );
        assert!(c.extensions().is_empty(), "{who}: {:?}", c.extensions());
        assert_eq!(v["command"], "systemctl restart worker");
    }
    lab.audit_ok();
}

#[test]
fn removing_a_fleet_or_command_ends_its_grants() {
    let lab = Lab::new();
    host(&lab, "web-01", "--tag web");
    lab.ok("olga", "fleet add web --tag web");
    lab.ok("olga", "fleet add web2 --tag web");
    lab.ok(
        "olga",
        "command add restart --fleet web --run 'systemctl restart worker' --login deploy",
    );
    let f = lab.request("alice", &format!("web2 --role viewer {WHY}"));
    let c = lab.request("alice", &format!("restart {WHY}"));
    let pending = lab.request("alice", &format!("restart {WHY}"));
    lab.ok("adam", &format!("approve {f}"));
    lab.ok("adam", &format!("approve {c}"));
    lab.cert("alice", f).unwrap();
    lab.cert("alice", c).unwrap();
    // A fleet used by a command cannot go; the command can.
    let (code, msg) = lab.refused("olga", "fleet remove web");
    assert_eq!(code, "invalid_state", "{msg}");
    lab.ok("olga", "command remove restart");
    lab.ok("olga", "fleet remove web2");
    for id in [f, c] {
        let (code, msg) = lab.cert("alice", id).unwrap_err();
        assert_eq!(code, "grant_not_current", "{id}: {msg}");
    }
    let (code, _) = lab.refused("adam", &format!("approve {pending}"));
    assert_eq!(code, "invalid_state");
    // Same names again: new identities, old grants stay dead.
    lab.ok("olga", "fleet add web2 --tag web");
    lab.ok(
        "olga",
        "command add restart --fleet web --run 'systemctl restart worker' --login deploy",
    );
    for id in [f, c] {
        assert!(lab.cert("alice", id).is_err());
    }
    let (code, _) = lab.refused("adam", &format!("approve {pending}"));
    assert_eq!(code, "invalid_state");
    lab.audit_ok();
}

#[test]
fn a_command_on_a_removed_host_issues_nothing_even_when_the_host_is_back() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    lab.ok(
        "olga",
        "command add restart --host web-01 --run 'systemctl restart worker' --login deploy",
    );
    let id = lab.request("alice", &format!("restart {WHY}"));
    lab.ok("adam", &format!("approve {id}"));
    lab.cert("alice", id).unwrap();
    lab.ok("olga", "host remove web-01");
    assert!(lab.cert("alice", id).is_err());
    host(&lab, "web-01", "");
    let (code, msg) = lab.cert("alice", id).unwrap_err();
    assert_eq!(code, "grant_not_current", "{msg}");
    let (code, msg) = lab.refused("alice", &format!("request restart {WHY}"));
    eprintln!("request for a command whose host was re-added: {code}: {msg}");
    lab.audit_ok();
}

/// Rule 14: removing a host cancels its pending requests and ends its grants. A command that
/// runs on exactly that host is that host's access; its requests should close with it.
#[test]
fn removing_a_host_closes_the_requests_of_commands_bound_to_it() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    lab.ok(
        "olga",
        "command add restart --host web-01 --run 'systemctl restart worker' --login deploy",
    );
    let granted = lab.request("alice", &format!("restart {WHY}"));
    lab.ok("adam", &format!("approve {granted}"));
    let pending = lab.request("alice", &format!("restart {WHY}"));
    let out = lab.ok("olga", "host remove web-01");
    eprintln!("{out}");
    let p = lab.json("alice", &format!("status {pending}"));
    let g = lab.json("alice", &format!("status {granted}"));
    eprintln!("pending after host removal: {}", p[0]["state"]);
    eprintln!("grant after host removal: {}", g[0]["grant"]);
    let audit = lab.ok("olga", "audit export");
    let ended = audit
        .lines()
        .any(|l| l.contains("grant_ended") || l.contains("GrantEnded"));
    assert_eq!(
        p[0]["state"], "cancelled",
        "a pending request for a command on a removed host stays pending (holds a pending slot, sits in approvers' queue)"
    );
    assert!(
        ended,
        "no grant-ended audit entry for the command's grant on the removed host"
    );
}

#[test]
fn dual_authorization_holds_across_fleets_and_commands() {
    let mut lab = Lab::new();
    lab.add_member("olga", "zed", "admin");
    host(&lab, "web-01", "--tag web");
    host(&lab, "vault", "--tag web --approvals 2");
    lab.ok("olga", "fleet add web --tag web");
    lab.ok(
        "olga",
        "command add restart --host vault --run 'systemctl restart worker' --login deploy",
    );
    lab.ok(
        "olga",
        "command add restart-all --fleet web --run 'systemctl restart worker' --login deploy",
    );
    for target in ["web --role viewer", "restart", "restart-all"] {
        let id = lab.request("alice", &format!("{target} {WHY}"));
        let v = lab.json("alice", &format!("status {id}"));
        assert_eq!(v[0]["approvals_required"], 2, "{target}");
        lab.ok("adam", &format!("approve {id}"));
        let (code, _) = lab.refused("adam", &format!("approve {id}"));
        assert_eq!(code, "invalid_state", "{target}: same approver twice");
        assert!(lab.cert("alice", id).is_err(), "{target}: one approval");
        lab.ok("zed", &format!("approve {id}"));
        lab.cert("alice", id).unwrap();
    }
    // A fleet's own approvals bind its commands too.
    lab.ok("olga", "fleet add web2 --tag web --approvals 2");
    lab.ok(
        "olga",
        "host add lone --address 10.0.0.3 --login viewer=ro --tag lone",
    );
    lab.ok("olga", "fleet add lonely --tag lone --approvals 2");
    lab.ok(
        "olga",
        "command add lonely-cmd --fleet lonely --run 'systemctl restart worker' --login deploy",
    );
    for target in ["lonely --role viewer", "lonely-cmd"] {
        let id = lab.request("alice", &format!("{target} {WHY}"));
        lab.ok("adam", &format!("approve {id}"));
        assert!(lab.cert("alice", id).is_err(), "{target}: one approval");
    }
    // A host needing 3 joins the fleet after one approval: the request now needs 3.
    let id = lab.request("alice", &format!("web --role viewer {WHY}"));
    lab.ok("adam", &format!("approve {id}"));
    host(&lab, "vault2", "--tag web --approvals 3");
    lab.ok("zed", &format!("approve {id}"));
    assert!(
        lab.cert("alice", id).is_err(),
        "two approvals for a 3-approval host"
    );
    lab.ok("oscar", &format!("approve {id}"));
    let (_, c) = lab.cert("alice", id).unwrap();
    assert_eq!(principals(&c), ["ro@vault", "ro@vault2", "ro@web-01"]);
    lab.audit_ok();
}

#[test]
fn approvers_cannot_approve_their_own_command_requests() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    lab.ok(
        "olga",
        "command add restart --host web-01 --run 'systemctl restart worker' --login deploy",
    );
    let id = lab.request("adam", &format!("restart {WHY}"));
    let (code, _) = lab.refused("adam", &format!("approve {id}"));
    assert_eq!(code, "permission_denied");
    let (code, _) = lab.refused("ed", &format!("approve {id}"));
    assert_eq!(code, "permission_denied");
}

#[test]
fn hidden_and_control_characters_never_reach_a_command_line() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    let before = lab.snapshot();
    let bad = [
        "echo \u{1b}[31mred",
        "echo a\u{7}",
        "echo a\nrm -rf /",
        "echo a\r",
        "echo\ta",
        "echo \u{9b}31m",
        "echo \u{202e}fdsa",
        "echo a\u{200b}b",
        "echo a\u{00a0}b",
        "echo a\u{2028}b",
        "echo \u{feff}a",
        "echo a\u{e0041}",
        "echo a\u{2066}b",
        "echo a\u{0}b",
    ];
    for run in bad {
        // Passed as one argument; the line splitter keeps what is inside single quotes.
        let line = format!("command add c1 --host web-01 --run '{run}' --login deploy");
        let (code, msg) = lab.refused("olga", &line);
        assert!(
            code == "invalid_argument" || code == "usage",
            "{run:?}: {code}: {msg}"
        );
        assert!(
            !msg.contains('\u{1b}') && !msg.contains('\u{202e}'),
            "{msg:?}"
        );
    }
    let long = format!("echo {}", "x".repeat(1000));
    let (code, _) = lab.refused(
        "olga",
        &format!("command add c1 --host web-01 --run '{long}' --login deploy"),
    );
    assert_eq!(code, "invalid_argument");
    for login in ["root@x", "-oProxyCommand", "..", "a b", "ro\u{202e}", ""] {
        let (code, msg) = lab.refused(
            "olga",
            &format!("command add c1 --host web-01 --run id --login '{login}'"),
        );
        assert!(
            code == "invalid_argument" || code == "usage",
            "{login:?}: {code}: {msg}"
        );
    }
    assert_eq!(lab.snapshot(), before);
}

/// Default-ignorable code points that render as nothing are not on the hidden list: a
/// command line (or a reason) can read as one thing to the approver and run as another.
#[test]
fn invisible_default_ignorable_characters_are_refused_in_command_lines() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    let mut accepted = Vec::new();
    for (i, c) in [
        '\u{FE0F}',  // VARIATION SELECTOR-16
        '\u{FE00}',  // VARIATION SELECTOR-1
        '\u{E0100}', // VARIATION SELECTOR-17
        '\u{180B}',  // MONGOLIAN FREE VARIATION SELECTOR ONE
        '\u{180F}',  // MONGOLIAN FREE VARIATION SELECTOR FOUR
        '\u{17B4}',  // KHMER VOWEL INHERENT AQ
        '\u{2800}',  // BRAILLE PATTERN BLANK (renders as a space)
    ]
    .into_iter()
    .enumerate()
    {
        let line =
            format!("command add c{i} --host web-01 --run '/opt/app{c}/restart.sh' --login deploy");
        if lab.run("olga", &line).status == 0 {
            accepted.push(format!("U+{:04X}", c as u32));
        }
        let reason = format!("request web-01 --role viewer --for 1h --reason 'INC-1 fix{c} it'");
        if lab.run("alice", &reason).status == 0 {
            accepted.push(format!("reason U+{:04X}", c as u32));
        }
    }
    assert!(
        accepted.is_empty(),
        "accepted invisible characters: {accepted:?}"
    );
}

#[test]
fn odd_target_input_gets_clear_errors_and_changes_nothing() {
    let lab = Lab::new();
    web_fleet(&lab);
    let before = lab.snapshot();
    let rows: Vec<String> = vec![
        "fleet add x --tag web --max-hosts 0".into(),
        "fleet add x --tag web --max-hosts 257".into(),
        "fleet add x --tag web --max-hosts -1".into(),
        "fleet add x --tag web --max-hosts 99999999999".into(),
        "fleet add x --tag web --approvals 0".into(),
        "fleet add x --tag web --approvals 6".into(),
        "fleet add x --tag web --approvals 4294967296".into(),
        "fleet add x --tag ''".into(),
        "fleet add x --tag WEB".into(),
        "fleet add x".into(),
        "fleet add X --tag web".into(),
        format!("fleet add {} --tag web", "a".repeat(65)),
        "command add x --run id --login deploy".into(),
        "command add x --fleet web --host web-01 --run id --login deploy".into(),
        "command add x --fleet nosuch --run id --login deploy".into(),
        "command add x --fleet web-01 --run id --login deploy".into(),
        "command add x --host web --run id --login deploy".into(),
        "command add x --host restart --run id --login deploy".into(),
        "command add x --fleet restart --run id --login deploy".into(),
        "command add x --fleet web --run '' --login deploy".into(),
        "command add x --fleet web --run '   ' --login deploy".into(),
        "command add x --fleet web --run id".into(),
        "command add x --fleet web --run id --login deploy --approvals 9".into(),
        "fleet show restart".into(),
        "fleet show web-01".into(),
        "command show web".into(),
        "fleet remove restart".into(),
        "command remove web".into(),
        "command remove web-01".into(),
        "fleet remove nosuch".into(),
        format!("request nosuch --role viewer {WHY}"),
        format!("request 'web;id' --role viewer {WHY}"),
    ];
    let mut report = Vec::new();
    for line in &rows {
        let (code, msg) = lab.refused("olga", line);
        assert!(!msg.is_empty(), "{line}");
        report.push(format!("{line}\n    -> {code}: {msg}"));
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(lab.snapshot(), before);
    lab.audit_ok();
}

/// An error that names a flag must name one that exists.
#[test]
fn kind_mismatch_errors_suggest_flags_that_exist() {
    let lab = Lab::new();
    web_fleet(&lab);
    for line in [
        "command add x --host restart --run id --login deploy",
        "command add x --fleet restart --run id --login deploy",
    ] {
        let (_, msg) = lab.refused("olga", line);
        assert!(
            !msg.contains("--command"),
            "{line}: the error suggests a flag that does not exist: {msg}"
        );
    }
}

#[test]
fn oversized_fleets_are_refused_and_256_hosts_fit_in_one_certificate() {
    let lab = Lab::new();
    for i in 0..257 {
        host(&lab, &format!("n-{i:03}"), "--tag big");
    }
    lab.ok("olga", "fleet add big --tag big");
    lab.ok("olga", "fleet add small --tag big --max-hosts 10");
    let before = lab.snapshot();
    for t in ["big --role viewer", "small --role viewer"] {
        let (code, msg) = lab.refused("alice", &format!("request {t} {WHY}"));
        eprintln!("{t}: {code}: {msg}");
        assert!(msg.contains("257"), "{msg}");
    }
    assert_eq!(lab.snapshot(), before);
    // 256 hosts: one certificate with 256 principals.
    lab.ok("olga", "host remove n-256");
    let id = lab.request("alice", &format!("big --role viewer {WHY}"));
    // A host joining before approval pushes it over: the approval is refused, clearly.
    host(&lab, "n-999", "--tag big");
    let (code, msg) = lab.refused("adam", &format!("approve {id}"));
    eprintln!("approve over 256: {code}: {msg}");
    lab.ok("olga", "host remove n-999");
    lab.ok("adam", &format!("approve {id}"));
    let (_, c) = lab.cert("alice", id).unwrap();
    assert_eq!(c.valid_principals().len(), 256);
    lab.audit_ok();
}

#[test]
fn a_viewer_gets_no_editor_login_through_a_mixed_fleet() {
    let lab = Lab::new();
    lab.ok(
        "olga",
        "host add a --address 10.0.0.1 --login viewer=ro --login editor=deploy --tag mix",
    );
    lab.ok(
        "olga",
        "host add b --address 10.0.0.2 --login viewer=ro2 --tag mix",
    );
    lab.ok(
        "olga",
        "host add c --address 10.0.0.3 --login editor=root --tag mix --approvals 2",
    );
    lab.ok("olga", "fleet add mix --tag mix");
    // Viewer asks viewer: c (editor only) is left out, and its approvals do not count.
    let id = lab.request("alice", &format!("mix --role viewer {WHY}"));
    lab.ok("adam", &format!("approve {id}"));
    let (_, cert) = lab.cert("alice", id).unwrap();
    assert_eq!(principals(&cert), ["ro2@b", "ro@a"]);
    // Editor base asks viewer: not every host has an editor login, so viewer everywhere.
    let id = lab.request("ed", &format!("mix --role viewer {WHY}"));
    lab.ok("adam", &format!("approve {id}"));
    let (_, cert) = lab.cert("ed", id).unwrap();
    assert_eq!(principals(&cert), ["ro2@b", "ro@a"]);
    assert_eq!(cert.extensions().len(), 1);
    // Viewer asks editor: a and c, needing c's two approvals.
    let id = lab.request("alice", &format!("mix --role editor {WHY}"));
    lab.ok("adam", &format!("approve {id}"));
    assert!(lab.cert("alice", id).is_err());
    lab.ok("oscar", &format!("approve {id}"));
    let (_, cert) = lab.cert("alice", id).unwrap();
    assert_eq!(principals(&cert), ["deploy@a", "root@c"]);
}

// ---------------------------------------------------------------------------------------
// Rogue admin
// ---------------------------------------------------------------------------------------

/// A rogue admin adds an editor whose key they hold, asks as that editor, and approves it:
/// a certificate with nobody else's approval.
#[test]
fn a_rogue_admin_cannot_approve_a_puppet_they_just_added() {
    let mut lab = Lab::new();
    host(&lab, "web-01", "");
    lab.add_member("adam", "puppet", "editor");
    let id = lab.request("puppet", &format!("web-01 --role editor {WHY}"));
    let out = lab.run("adam", &format!("approve {id}"));
    let got = lab.cert("puppet", id);
    assert!(
        out.status != 0 && got.is_err(),
        "adam added puppet (a key he holds), puppet asked, adam approved, puppet got a certificate: {}",
        got.map(|(v, _)| v["principals"].to_string())
            .unwrap_or_default()
    );
}

/// The same through a key added to an existing editor: admins may change editors' keys.
#[test]
fn a_rogue_admin_cannot_approve_for_an_editor_whose_key_they_added() {
    let lab = Lab::new();
    host(&lab, "web-01", "");
    let mine = new_key("adam-second");
    lab.ok("adam", &format!("member key-add ed --key '{}'", mine.0));
    // adam now authenticates as ed with his own second key.
    let fp = mine.1.clone();
    let as_ed = |line: &str| lab.core().run_line(&fp, line.as_bytes(), b"", lab.now);
    let out = as_ed(&format!("request web-01 --role editor {WHY} --json"));
    assert_eq!(out.status, 0, "{out:?}");
    let id = serde_json::from_str::<Value>(&out.stdout).unwrap()["id"]
        .as_u64()
        .unwrap();
    let approved = lab.run("adam", &format!("approve {id}"));
    let fresh = new_key("f");
    let cert = lab.core().run_line(
        &fp,
        format!("cert {id}").as_bytes(),
        fresh.0.as_bytes(),
        lab.now,
    );
    assert!(
        approved.status != 0 || cert.status != 0,
        "adam added his key to ed, asked as ed and approved himself: certificate issued"
    );
}

/// Dual authorization: a host needing two approvals. A single admin would remove it and add
/// it again under the same name (the same principal on the real machine) with one approval;
/// removing it takes an owner.
#[test]
fn a_rogue_admin_cannot_drop_a_hosts_dual_authorization() {
    let lab = Lab::new();
    host(&lab, "vault", "--approvals 2 --tag v");
    lab.ok("olga", "fleet add vaults --tag v --approvals 2");
    let before = lab.snapshot();
    for line in ["host remove vault", "fleet remove vaults"] {
        let (code, msg) = lab.refused("adam", line);
        assert_eq!(code, "permission_denied", "{line}: {msg}");
        assert!(msg.contains("only an owner may remove it"), "{msg}");
    }
    assert_eq!(lab.snapshot(), before);
    lab.ok("oscar", "fleet remove vaults");
    lab.ok("oscar", "host remove vault");
}

/// The fleet and command paths do not lower a host's approvals (the max is taken).
#[test]
fn a_rogue_admin_cannot_wrap_a_dual_host_in_a_cheaper_fleet_or_command() {
    let lab = Lab::new();
    host(&lab, "vault", "--approvals 2 --tag v");
    lab.ok("adam", "fleet add cheap --tag v --approvals 1");
    lab.ok(
        "adam",
        "command add sh --host vault --run 'bash -i' --login root --approvals 1",
    );
    lab.ok(
        "adam",
        "command add sh2 --fleet cheap --run 'bash -i' --login root --approvals 1",
    );
    for t in ["cheap --role editor", "sh", "sh2"] {
        let id = lab.request("ed", &format!("{t} {WHY}"));
        lab.ok("adam", &format!("approve {id}"));
        assert!(lab.cert("ed", id).is_err(), "{t}");
    }
}

/// An approval recorded by an approver who is later removed (for example, found rogue) still
/// counts toward dual authorization.
#[test]
fn a_removed_approvers_approval_does_not_count() {
    let mut lab = Lab::new();
    lab.add_member("olga", "zed", "admin");
    host(&lab, "vault", "--approvals 2");
    let id = lab.request("alice", &format!("vault --role viewer {WHY}"));
    lab.ok("zed", &format!("approve {id}"));
    lab.ok("olga", "member remove zed");
    lab.ok("adam", &format!("approve {id}"));
    let got = lab.cert("alice", id);
    assert!(
        got.is_err(),
        "granted on the approval of a removed member plus one current approver"
    );
}

#[test]
fn an_admin_still_cannot_create_a_second_approver() {
    let mut lab = Lab::new();
    let before = lab.snapshot();
    let out = lab.add_member("adam", "adam2", "admin");
    assert_ne!(out.status, 0);
    let out = lab.add_member("adam", "own2", "owner");
    assert_ne!(out.status, 0);
    for line in [
        "member set-role ed --role admin",
        "member set-role alice --role owner",
    ] {
        let (code, msg) = lab.refused("adam", line);
        assert_eq!(code, "permission_denied", "{line}: {msg}");
    }
    let k = new_key("x");
    let (code, _) = lab.refused("adam", &format!("member key-add oscar --key '{}'", k.0));
    assert_eq!(code, "permission_denied");
    assert_eq!(lab.snapshot(), before);
}

/// The scope is fixed at final approval. A rogue admin would swap another machine's host
/// entry (same name, so the real machine still accepts the principal) into the fleet with one
/// approval between the owner's `show` and `approve`; that host needs two, so removing it
/// takes an owner, and the owner's approval grants what they reviewed.
#[test]
fn a_rogue_admin_cannot_swap_a_dual_host_into_a_reviewed_fleet() {
    let lab = Lab::new();
    host(&lab, "web-01", "--tag web");
    host(&lab, "web-02", "--tag web");
    lab.ok(
        "olga",
        "host add db-01 --address 10.0.0.7 --login editor=root --tag db --approvals 2",
    );
    lab.ok("olga", "fleet add web --tag web");
    let id = lab.request("ed", &format!("web --role editor {WHY}"));
    let shown = lab.json("olga", &format!("show {id}"));
    let reviewed = shown["would_grant"]["principals"].clone();
    assert_eq!(
        reviewed,
        serde_json::json!(["deploy@web-01", "deploy@web-02"])
    );
    let (code, _) = lab.refused("adam", "host remove db-01");
    assert_eq!(code, "permission_denied");
    lab.ok("olga", &format!("approve {id}"));
    let (_, cert) = lab.cert("ed", id).unwrap();
    assert_eq!(serde_json::json!(principals(&cert)), reviewed);
}

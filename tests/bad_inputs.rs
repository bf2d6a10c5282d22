//! A table of bad inputs, each refused with its own clear error and changing nothing.
//!
//! The same setup and table run twice: over real SSH against the daemon (rows at the
//! current time), and in process through `Broker::run_line` with `now` moved forward for
//! rows that need time to pass (an expired request, a certificate after its window).

mod util;

use std::collections::HashMap;

use sshjit::broker::Broker as Core;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;
use util::{Broker, Identity, keygen};

struct Row {
    who: &'static str,
    line: String,
    stdin: &'static str,
    /// Seconds after setup; rows with an offset run in process only.
    offset: u64,
    code: &'static str,
    says: &'static str,
}

fn row(who: &'static str, line: impl Into<String>, code: &'static str, says: &'static str) -> Row {
    Row {
        who,
        line: line.into(),
        stdin: "",
        offset: 0,
        code,
        says,
    }
}

/// Setup lines: (who, line). Request ids come out as 1..=6.
fn setup(keys: &HashMap<&str, Identity>) -> Vec<(&'static str, String)> {
    let r = "--role editor --for 1h --reason 'INC-5 rotate the worker logs'";
    vec![
        (
            "olga",
            format!(
                "member add adam --role admin --key '{}'",
                keys["adam"].public
            ),
        ),
        (
            "olga",
            format!("member add ed --role editor --key '{}'", keys["ed"].public),
        ),
        (
            "olga",
            format!(
                "member add alice --role viewer --key '{}'",
                keys["alice"].public
            ),
        ),
        (
            "olga",
            "host add web-01 --address 10.0.0.5 --login editor=deploy --login viewer=ro --tag prod"
                .into(),
        ),
        (
            "olga",
            "host add vault --address 10.0.0.9 --login viewer=ro --approvals 3".into(),
        ),
        ("olga", "fleet add prodfleet --tag prod".into()),
        ("olga", "fleet add ghost --tag nosuchtag".into()),
        (
            "olga",
            "command add restart --host web-01 --run 'systemctl restart worker' --login deploy"
                .into(),
        ),
        (
            "olga",
            "command add restart-all --fleet prodfleet --run 'systemctl restart worker' --login deploy"
                .into(),
        ),
        ("alice", format!("request web-01 {r}")), // 1: pending
        ("alice", format!("request web-01 {r}")), // 2: denied
        ("adam", "deny 2 --reason 'use the runbook instead'".into()),
        ("alice", format!("request web-01 {r}")), // 3: cancelled
        ("alice", "cancel 3".into()),
        ("olga", format!("request web-01 {r}")), // 4: olga's own
        ("alice", format!("request web-01 {r}")), // 5: approved at setup time
        ("adam", "approve 5".into()),
        ("alice", format!("request web-01 {r}")), // 6: left to expire
        (
            "olga",
            "host add glass --address 10.0.0.8 --login editor=deploy --login viewer=ro --break-glass"
                .into(),
        ),
        (
            "olga",
            format!(
                "member add robo --kind bot --role editor --key '{}'",
                keys["robo"].public
            ),
        ),
        (
            "ed",
            "request glass --role editor --for 30m --reason 'INC-7 disk full' --break-glass".into(),
        ), // 7: ed's break-glass
        (
            "olga",
            "request glass --role editor --for 30m --reason 'INC-7 disk full' --break-glass".into(),
        ), // 8: olga's break-glass
    ]
}

fn table(keys: &HashMap<&str, Identity>) -> Vec<Row> {
    let alice_key = keys["alice"].public.clone();
    let fresh = keys["fresh"].public.clone();
    let big = "x".repeat(100 * 1024);
    vec![
        row(
            "olga",
            "member lst",
            "unknown_command",
            "'member' takes: add, list, remove",
        ),
        row(
            "alice",
            "request web-01 --role editr --for 1h --reason 'INC-1 x y'",
            "invalid_argument",
            "use viewer or editor",
        ),
        row(
            "adam",
            "requests --limit 0",
            "invalid_argument",
            "--limit must be at least 1",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 1h --reason INC-1 restart worker",
            "usage",
            "needs its own quotes",
        ),
        Row {
            stdin: "PRIVATE",
            ..row("alice", "cert 5", "invalid_key", "that is a private key")
        },
        row(
            "alice",
            "request web-01 --role admin --for 1h --reason 'INC-1 need root'",
            "role_not_grantable",
            "cannot be requested",
        ),
        row(
            "alice",
            "request web-01 --role owner --for 1h --reason 'INC-1 need root'",
            "role_not_grantable",
            "'owner' cannot be requested",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 1m --reason 'INC-1 quick look'",
            "invalid_argument",
            "duration 1m is out of range",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 25h --reason 'INC-1 long job'",
            "invalid_argument",
            "duration 25h is out of range",
        ),
        row(
            "alice",
            "request web-01 --role editor --for soon --reason 'INC-1 x'",
            "invalid_argument",
            "is not a duration",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 1h --reason ''",
            "invalid_argument",
            "the reason is empty",
        ),
        row(
            "alice",
            format!("request web-01 --role editor --for 1h --reason '{big}'"),
            "command_too_long",
            "Shorten the reason",
        ),
        row(
            "alice",
            format!(
                "request web-01 --role editor --for 1h --reason '{}'",
                "y".repeat(2048)
            ),
            "invalid_argument",
            "the limit is 1000",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 1h --reason 'INC-1 ring\u{7}bell'",
            "invalid_argument",
            "control character",
        ),
        row(
            "alice",
            "request web-99 --role editor --for 1h --reason 'INC-1 fix'",
            "not_found",
            "no host, fleet or command named web-99",
        ),
        row(
            "alice",
            "request web-01 --role editor --for 1h --reason 'INC-1 fix' --start 2001-01-01T00:00:00Z",
            "invalid_argument",
            "is in the past",
        ),
        row(
            "alice",
            "cert 5 --key ssh-ed25519 AAAAnotakey",
            "invalid_key",
            "is not an OpenSSH public key",
        ),
        row(
            "olga",
            "member add bob --role viewer --key 'ssh-rsa AAAAB3Nza'",
            "invalid_key",
            "is not an OpenSSH public key",
        ),
        row(
            "olga",
            "approve 4",
            "permission_denied",
            "cannot approve your own request",
        ),
        row(
            "ed",
            "approve 1",
            "permission_denied",
            "only owners and admins can approve",
        ),
        // The same whether or not the request exists: a non-approver learns nothing.
        row(
            "ed",
            "approve 999",
            "permission_denied",
            "only owners and admins can approve",
        ),
        row(
            "alice",
            "deny 999 --reason 'no such request'",
            "permission_denied",
            "only owners and admins can deny",
        ),
        row("adam", "approve 2", "invalid_state", "already denied"),
        row("adam", "approve 3", "invalid_state", "already cancelled"),
        Row {
            offset: 3601,
            ..row("adam", "approve 6", "invalid_state", "expired at")
        },
        Row {
            stdin: "KEY",
            // Not told whose it is: the same answer as for a request that is not there.
            ..row("ed", "cert 5", "not_found", "no request 5 that you can see")
        },
        Row {
            stdin: "KEY",
            ..row(
                "adam",
                "cert 5",
                "permission_denied",
                "issued only to the requester",
            )
        },
        Row {
            stdin: "KEY",
            ..row("alice", "cert 1", "invalid_state", "not approved")
        },
        Row {
            stdin: "KEY",
            offset: 3600,
            ..row("alice", "cert 5", "grant_not_current", "ended at")
        },
        row(
            "alice",
            "frobnicate 5",
            "unknown_command",
            "the commands are: whoami, ca-pubkey, request",
        ),
        row(
            "alice",
            format!("status {big}"),
            "command_too_long",
            "the limit is 8192 bytes",
        ),
        row(
            "mallory",
            "whoami",
            "permission_denied",
            "does not belong to a member",
        ),
        row(
            "olga",
            format!("member add alias --role viewer --key '{alice_key}'"),
            "already_exists",
            "already belongs to member alice",
        ),
        row(
            "olga",
            format!("member add alice --role viewer --key '{fresh}'"),
            "already_exists",
            "member alice already exists",
        ),
        row(
            "olga",
            format!("member add bob --role superuser --key '{fresh}'"),
            "invalid_argument",
            "not a role",
        ),
        row(
            "olga",
            format!("member add 'Bob!' --role viewer --key '{fresh}'"),
            "invalid_argument",
            "is not a valid name",
        ),
        row(
            "adam",
            "member remove olga",
            "permission_denied",
            "only owners can remove an owner or admin",
        ),
        row(
            "olga",
            "member remove olga",
            "invalid_state",
            "is the last owner",
        ),
        row(
            "olga",
            "host add web-02 --address 10.0.0.6 --login admin=root",
            "invalid_argument",
            "only viewer and editor have logins",
        ),
        row(
            "olga",
            "host add web-02 --address 'a;b' --login editor=deploy",
            "invalid_argument",
            "is not a host address",
        ),
        row(
            "olga",
            "host add web-02 --address 10.0.0.6 --login editor=deploy --approvals 0",
            "invalid_argument",
            "out of range",
        ),
        row(
            "olga",
            "host add web-01 --address 10.0.0.6 --login editor=deploy",
            "already_exists",
            "host web-01 already exists",
        ),
        row("adam", "deny 1", "usage", "--reason <REASON>"),
        row(
            "ed",
            "cancel 1",
            "not_found",
            "no request 1 that you can see",
        ),
        // An approver, who may read it, is told why not.
        row(
            "adam",
            "cancel 1",
            "permission_denied",
            "only the requester can cancel",
        ),
        row(
            "alice",
            "requests",
            "permission_denied",
            "only owners and admins can list",
        ),
        row(
            "alice",
            "audit verify",
            "permission_denied",
            "read the audit log",
        ),
        row("adam", "approve 999", "not_found", "no request 999"),
        row("adam", "approve abc", "usage", "invalid value 'abc'"),
        row("alice", "status 'unclosed", "usage", "unclosed quote"),
        row(
            "alice",
            "request vault --role viewer --for 1h --reason 'INC-1 read the audit'",
            "invalid_state",
            "needs 3 approvals but only 2",
        ),
        // Rule 13: one admin cannot make a second approver; non-managers change only their keys.
        row(
            "adam",
            format!("member add adam2 --role admin --key '{fresh}'"),
            "permission_denied",
            "only owners can add an owner or admin",
        ),
        row(
            "adam",
            format!("member key-add olga --key '{fresh}'"),
            "permission_denied",
            "only owners can change the keys of an owner or admin",
        ),
        row(
            "adam",
            "member set-role ed --role admin",
            "permission_denied",
            "only owners can change the role of an owner or admin",
        ),
        row(
            "alice",
            "member set-role alice --role editor",
            "permission_denied",
            "only owners and admins can change the role of members",
        ),
        row(
            "alice",
            format!("member key-add ed --key '{fresh}'"),
            "permission_denied",
            "only owners and admins can change other members",
        ),
        row(
            "olga",
            "member set-role olga --role admin",
            "invalid_state",
            "is the last owner",
        ),
        Row {
            stdin: "IDENTITY",
            ..row("alice", "cert 5", "invalid_key", "a member's identity key")
        },
        row(
            "alice",
            "request web-01 --role viewer --for 1h --reason 'INC-1 a\u{202E}b c d'",
            "invalid_argument",
            "U+202E",
        ),
        row(
            "olga",
            "host add web-02 --address 10.0.0.6 --login viewer=..",
            "invalid_argument",
            "is not a valid unix login",
        ),
        row(
            "olga",
            "host-config web-01 --dir '/etc/my ssh'",
            "invalid_argument",
            "not a directory sshd can read back",
        ),
        // Typos get the word they missed; the hint names no command of one client only.
        row(
            "alice",
            "request web-1 --role viewer --for 1h --reason 'INC-1 x y z'",
            "not_found",
            "no host, fleet or command named web-1; did you mean web-01? The names are: ghost, glass, prodfleet, restart, restart-all, vault, web-01",
        ),
        // Fleets and fleet commands.
        row(
            "alice",
            "fleet show nofleet",
            "not_found",
            "no fleet named nofleet; the fleets are: ghost, prodfleet",
        ),
        row(
            "alice",
            "command show nocmd",
            "not_found",
            "no command named nocmd; the commands are: restart, restart-all",
        ),
        row(
            "alice",
            "command show prodfleet",
            "not_found",
            "prodfleet is a fleet, not a command; use 'fleet show prodfleet'",
        ),
        row(
            "alice",
            "request ghost --role viewer --for 1h --reason 'INC-1 look at the ghosts'",
            "invalid_state",
            "fleet ghost covers no host right now, so there is nothing to grant: no host carries all of tag(s) nosuchtag; tag hosts to match it",
        ),
        row(
            "olga",
            "fleet add web-01 --tag prod",
            "already_exists",
            "web-01 is already a host; hosts, fleets and commands share one namespace",
        ),
        row(
            "olga",
            "host add prodfleet --address 10.0.0.7 --login viewer=ro",
            "already_exists",
            "prodfleet is already a fleet",
        ),
        row(
            "olga",
            "command add prodfleet --host web-01 --run 'uptime' --login deploy",
            "already_exists",
            "prodfleet is already a fleet",
        ),
        row(
            "olga",
            "command add restart --fleet prodfleet --run 'uptime' --login deploy",
            "already_exists",
            "restart is already a command",
        ),
        row(
            "olga",
            "command add bell --host web-01 --run 'uptime\u{7}' --login deploy",
            "invalid_argument",
            "contains the control or invisible character U+0007",
        ),
        row(
            "olga",
            "command add rtl --host web-01 --run 'rm -rf /tmp/x \u{202E}' --login deploy",
            "invalid_argument",
            "U+202E",
        ),
        row(
            "olga",
            "command add empty --host web-01 --run ' ' --login deploy",
            "invalid_argument",
            "--run is empty",
        ),
        row(
            "olga",
            "command add both --host web-01 --fleet prodfleet --run 'uptime' --login deploy",
            "usage",
            "cannot be used with",
        ),
        row(
            "olga",
            "command add onhost --fleet web-01 --run 'uptime' --login deploy",
            "invalid_argument",
            "web-01 is a host, not a fleet; use --host web-01",
        ),
        row(
            "olga",
            "command add badlogin --host web-01 --run 'uptime' --login -oProxy",
            "usage",
            "unexpected argument",
        ),
        row(
            "olga",
            "command add badlogin --host web-01 --run 'uptime' --login=-oProxy",
            "invalid_argument",
            "is not a valid unix login",
        ),
        row(
            "alice",
            "request restart --role viewer --for 1h --reason 'INC-1 restart the worker'",
            "invalid_argument",
            "restart is a fleet command: it runs its own command as its own login, so it takes no --role",
        ),
        row(
            "alice",
            "request prodfleet --for 1h --reason 'INC-1 look at the fleet'",
            "invalid_argument",
            "fleet prodfleet needs a role; add --role viewer or --role editor",
        ),
        row(
            "olga",
            "fleet add big --tag prod --max-hosts 257",
            "invalid_argument",
            "--max-hosts 257 is out of range; use 1 to 256",
        ),
        row("olga", "fleet add notags", "usage", "--tag <TAGS>"),
        row(
            "alice",
            "fleet add mine --tag prod",
            "permission_denied",
            "only owners and admins can add fleets",
        ),
        row(
            "alice",
            "command remove restart",
            "permission_denied",
            "only owners and admins can remove fleet commands",
        ),
        row(
            "olga",
            "fleet remove prodfleet",
            "invalid_state",
            "fleet prodfleet is used by command(s) restart-all; remove them first",
        ),
        // Rules, break-glass, reviews, bots.
        row(
            "olga",
            "rule add r1 --tag prod --max-duration 25h",
            "invalid_argument",
            "--max-duration 25h is out of range",
        ),
        row(
            "olga",
            "rule add r2 --tag prod --days mon-fri --tz Mars/Olympus",
            "invalid_argument",
            "'Mars/Olympus' is not a time zone",
        ),
        row(
            "olga",
            "rule add r3 --tag prod --max-uses 5 --per 0",
            "invalid_argument",
            "'0' is not a duration",
        ),
        row(
            "olga",
            "rule add r3 --tag prod --max-uses 5 --per 0s",
            "invalid_argument",
            "is out of range; use 1 to 1000 uses per 1m to 366d",
        ),
        row(
            "olga",
            "rule add r3 --tag prod --max-uses 5",
            "usage",
            "--per <DURATION>",
        ),
        row(
            "olga",
            "rule add r4 --max-risk 20",
            "invalid_argument",
            "a rule needs what it covers",
        ),
        row(
            "olga",
            "rule add r5 --target nosuch",
            "not_found",
            "no host, fleet or command named nosuch",
        ),
        row(
            "olga",
            "rule add r6 --tag prod --role admin",
            "role_not_grantable",
            "cannot be requested",
        ),
        row(
            "olga",
            "rule add r7 --tag prod --days fri-mon",
            "invalid_argument",
            "is not a set of days",
        ),
        row(
            "olga",
            "rule add r8 --tag prod --hours 18:00-09:00",
            "invalid_argument",
            "is not a time range",
        ),
        row(
            "olga",
            "rule add r9 --tag prod --requester alice --kind bot",
            "usage",
            "cannot be used with",
        ),
        row(
            "adam",
            "rule add r10 --tag prod",
            "permission_denied",
            "only owners add or remove rules",
        ),
        row(
            "alice",
            "rule list",
            "permission_denied",
            "only owners and admins can list rules",
        ),
        row(
            "ed",
            "request web-01 --role editor --for 30m --reason 'INC-7 disk full' --break-glass",
            "permission_denied",
            "host web-01 does not allow break-glass",
        ),
        row(
            "alice",
            "request glass --role editor --for 30m --reason 'INC-7 disk full' --break-glass",
            "permission_denied",
            "base role is editor or higher; you are viewer",
        ),
        row(
            "robo",
            "request glass --role editor --for 30m --reason 'INC-7 disk full' --break-glass",
            "permission_denied",
            "you are a bot",
        ),
        row(
            "ed",
            "request glass --role editor --for 30m --reason 'the disk is full' --break-glass",
            "invalid_argument",
            "needs an incident or ticket reference",
        ),
        row(
            "ed",
            "request glass --role editor --for 2h --reason 'INC-7 disk full' --break-glass",
            "limit_reached",
            "break-glass lasts at most 1h",
        ),
        row(
            "ed",
            "request glass --role editor --for 30m --reason 'INC-7 disk full' --break-glass --start +1h",
            "invalid_argument",
            "break-glass starts now",
        ),
        row(
            "ed",
            "review 7 --ok --comment 'fine by me'",
            "permission_denied",
            "only owners and admins can review break-glass grants",
        ),
        row(
            "olga",
            "review 8 --ok --comment 'fine by me'",
            "permission_denied",
            "you cannot review your own break-glass grant 8",
        ),
        row(
            "adam",
            "review 5 --ok --comment 'fine'",
            "invalid_state",
            "request 5 is not a break-glass grant",
        ),
        row("adam", "review 7 --comment 'fine'", "usage", "--ok"),
        row(
            "robo",
            "approve 1",
            "permission_denied",
            "only owners and admins can approve",
        ),
        row(
            "robo",
            "request web-01 --role viewer --for 30m --reason 'DEPLOY-1 look'",
            "permission_denied",
            "a bot's requests are decided by rules alone",
        ),
        row(
            "olga",
            "member set-role robo --role admin",
            "invalid_argument",
            "bots never approve, review or manage anything",
        ),
        row(
            "olga",
            format!("member add r2d2 --kind robot --role viewer --key '{fresh}'"),
            "invalid_argument",
            "'robot' is not a member kind",
        ),
        row(
            "olga",
            "host add slow --address 10.0.0.9 --login viewer=ro --escalate-after 10s",
            "invalid_argument",
            "--escalate-after 10s is out of range; use 1m to 7d",
        ),
        row(
            "olga",
            "aprove 5",
            "unknown_command",
            "did you mean 'approve'?",
        ),
        row(
            "alice",
            "request web-01 --role viewer --for 1h --reason 'INC-1 x y z' --start tomorrow",
            "invalid_argument",
            "use +DURATION such as +30m or +1d",
        ),
    ]
}

fn keys(dir: &std::path::Path, owner: Identity) -> HashMap<&'static str, Identity> {
    let mut m = HashMap::from([("olga", owner)]);
    for n in ["adam", "ed", "alice", "mallory", "fresh", "robo"] {
        m.insert(n, keygen(dir, n));
    }
    m
}

fn stdin_for(r: &Row, keys: &HashMap<&str, Identity>) -> String {
    match r.stdin {
        "KEY" => keys["fresh"].public.clone(),
        "PRIVATE" => std::fs::read_to_string(&keys["fresh"].key).unwrap(),
        "IDENTITY" => keys["olga"].public.clone(),
        _ => String::new(),
    }
}

#[test]
fn bad_inputs_over_ssh_are_refused_and_change_nothing() {
    let b = Broker::start_new();
    let keys = keys(b.tmp.path(), b.owner.clone());
    for (who, line) in setup(&keys) {
        b.ssh(&keys[who], &line).ok();
    }
    let snapshot = |b: &Broker| {
        (
            b.ssh(&b.owner, "audit export").ok().stdout,
            b.ssh(&b.owner, "member list --json").ok().stdout,
            b.ssh(&b.owner, "host list --json").ok().stdout,
            b.ssh(&b.owner, "fleet list --json").ok().stdout,
            b.ssh(&b.owner, "command list --json").ok().stdout,
            b.ssh(&b.owner, "rule list --json").ok().stdout,
        )
    };
    let before = snapshot(&b);
    let rows = table(&keys);
    assert!(rows.len() >= 25);
    let mut ran = 0;
    for r in rows.iter().filter(|r| r.offset == 0) {
        let out = b.ssh_stdin(
            &keys[r.who],
            &format!("{} --json", r.line),
            stdin_for(r, &keys).as_bytes(),
        );
        ran += 1;
        if r.who == "mallory" {
            // OpenSSH itself reports the refused key.
            assert_eq!(out.code, 255, "{out:?}");
            assert!(
                out.stderr.contains("Permission denied (publickey)"),
                "{out:?}"
            );
            continue;
        }
        assert_ne!(out.code, 0, "{} was accepted: {out:?}", r.line);
        assert_eq!(out.error_code(), r.code, "{}: {out:?}", short(&r.line));
        assert!(
            out.stderr.contains(r.says),
            "{}: expected '{}' in {}",
            short(&r.line),
            r.says,
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert!(ran >= 25, "only {ran} rows ran over SSH");
    assert_eq!(
        snapshot(&b),
        before,
        "a refused command changed stored state"
    );
    let v = b.json("audit verify");
    assert_eq!(v["ok"], true, "{v}");
    // The daemon is still up and answering.
    assert_eq!(b.ssh(&b.owner, "whoami").ok().stdout.trim(), "olga (owner)");
}

#[test]
fn bad_inputs_in_process_including_the_passage_of_time() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = keygen(tmp.path(), "olga");
    let keys = keys(tmp.path(), owner);
    let dir = DataDir::new(tmp.path().join("data"));
    let t0 = Timestamp::from_unix(1_900_000_000);
    datadir::init_on(
        &dir,
        "olga",
        &keys["olga"].public,
        "127.0.0.1:0",
        &util::test_store(),
        t0,
    )
    .unwrap();
    let opened = datadir::open(&dir).unwrap();
    let core: &Core = &opened.broker;
    let fp = |who: &str| {
        let k = sshjit::ca::parse_public_key(&keys[who].public).unwrap();
        sshjit::ca::fingerprint(k.key_data())
    };
    for (who, line) in setup(&keys) {
        let out = core.run_line(&fp(who), line.as_bytes(), b"", t0);
        assert_eq!(out.status, 0, "{line}: {out:?}");
    }
    let snapshot = || {
        let s = core.store();
        (
            s.audit_raw(0).map(|r| r.unwrap()).collect::<Vec<_>>(),
            s.requests_in(None, t0, usize::MAX).unwrap(),
            s.members().unwrap(),
            s.hosts().unwrap(),
            s.targets().unwrap(),
            s.rules().unwrap(),
        )
    };
    let before = snapshot();
    for r in table(&keys) {
        let now = t0.plus(r.offset);
        let line = format!("{} --json", r.line);
        let out = core.run_line(
            &fp(r.who),
            line.as_bytes(),
            stdin_for(&r, &keys).as_bytes(),
            now,
        );
        assert_ne!(out.status, 0, "{} was accepted: {out:?}", short(&r.line));
        let v: serde_json::Value = serde_json::from_str(out.stderr.trim()).unwrap();
        assert_eq!(v["error"]["code"], r.code, "{}: {out:?}", short(&r.line));
        assert!(
            out.stderr.contains(r.says),
            "{}: expected '{}' in {}",
            short(&r.line),
            r.says,
            out.stderr
        );
    }
    assert_eq!(snapshot(), before, "a refused command changed stored state");
    assert!(core.store().verify_audit().unwrap().ok);
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

//! A member has one or more identity keys: keys are added and removed over SSH, a removed key
//! stops working at once, and the rules that guard members guard their keys too.

mod util;

use util::{Broker, keygen};

fn fingerprint(public: &str) -> String {
    let k = sshjit::ca::parse_public_key(public).unwrap();
    sshjit::ca::fingerprint(k.key_data())
}

#[test]
fn keys_rotate_without_losing_the_member() {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    let adam = b.add_member("adam", "admin");
    let laptop = keygen(b.tmp.path(), "alice-laptop");

    // A second key for alice: both work and name the same member.
    b.ssh(
        &b.owner,
        &format!("member key-add alice --key '{}'", laptop.public),
    )
    .ok();
    assert_eq!(
        b.ssh(&laptop, "whoami").ok().stdout.trim(),
        "alice (viewer)"
    );
    assert_eq!(b.ssh(&alice, "whoami").ok().stdout.trim(), "alice (viewer)");

    // The same key cannot belong to two members, or twice to one.
    for who in ["adam", "alice"] {
        let dup = b.ssh(
            &b.owner,
            &format!("member key-add {who} --key '{}' --json", laptop.public),
        );
        assert_eq!(dup.error_code(), "already_exists", "{dup:?}");
    }

    // Removing the old key locks it out at once; the member keeps the new one.
    let old = fingerprint(&alice.public);
    b.ssh(
        &adam,
        &format!("member key-remove alice --fingerprint {old}"),
    )
    .ok();
    let refused = b.ssh(&alice, "whoami");
    assert_eq!(refused.code, 255, "{refused:?}");
    assert_eq!(
        b.ssh(&laptop, "whoami").ok().stdout.trim(),
        "alice (viewer)"
    );

    // The last key stays: remove the member instead.
    let last = fingerprint(&laptop.public);
    let out = b.ssh(
        &b.owner,
        &format!("member key-remove alice --fingerprint {last} --json"),
    );
    assert_eq!(out.error_code(), "invalid_state", "{out:?}");
    let out = b.ssh(
        &b.owner,
        "member key-remove alice --fingerprint SHA256:nope --json",
    );
    assert_eq!(out.error_code(), "not_found", "{out:?}");

    // Only owners change owners' keys, and only managers change other members' keys.
    let spare = keygen(b.tmp.path(), "spare");
    let out = b.ssh(
        &adam,
        &format!("member key-add olga --key '{}' --json", spare.public),
    );
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
    let out = b.ssh(
        &laptop,
        &format!("member key-add adam --key '{}' --json", spare.public),
    );
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
    // Everyone changes their own keys.
    b.ssh(
        &laptop,
        &format!("member key-add alice --key '{}'", spare.public),
    )
    .ok();
    assert_eq!(b.ssh(&spare, "whoami").ok().stdout.trim(), "alice (viewer)");

    // Every change is in the audit log, and the chain holds.
    let log = b.ssh(&b.owner, "audit log --limit 1000").ok().stdout;
    assert!(
        log.contains(&format!("member alice key {last} added")),
        "{log}"
    );
    assert!(
        log.contains(&format!("member alice key {old} removed")),
        "{log}"
    );
    assert_eq!(b.json("audit verify")["ok"], true);
}

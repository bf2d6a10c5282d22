//! Property test for rule 13: random member, key, role and approval commands by random people
//! (each holding private keys of their own) never get a request approved by fewer distinct
//! people than it needs. The only OWNER never acts, so no approver identity is created or
//! re-keyed by an owner: any approval by fewer people would be one person posing as two.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::Value;
use sshjit::broker::Broker;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;

/// People 1-4 act; person 0 is the owner, who only sets the team up.
const PEOPLE: usize = 5;
/// Private keys each person holds: the first is their identity at the start.
const KEYS_EACH: usize = 4;
const NAMES: [&str; 6] = ["adam", "zoe", "ed", "vic", "mallory", "sybil"];
const ROLES: [&str; 4] = ["owner", "admin", "editor", "viewer"];
const T0: i64 = 1_900_000_000;

/// (fingerprint, public key) of each key, by person.
fn keys() -> &'static Vec<Vec<(String, String)>> {
    static KEYS: OnceLock<Vec<Vec<(String, String)>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..PEOPLE)
            .map(|p| {
                (0..KEYS_EACH)
                    .map(|k| {
                        let key = sshjit::ca::generate_key(&format!("p{p}k{k}")).unwrap();
                        let public = key.public_key();
                        (
                            sshjit::ca::fingerprint(public.key_data()),
                            public.to_openssh().unwrap(),
                        )
                    })
                    .collect()
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Op {
    /// Person `by` adds member NAMES[name] with ROLES[role] and a key held by person `holder`.
    Add {
        by: usize,
        name: usize,
        role: usize,
        holder: usize,
        key: usize,
    },
    KeyAdd {
        by: usize,
        name: usize,
        holder: usize,
        key: usize,
    },
    KeyRemove {
        by: usize,
        name: usize,
        holder: usize,
        key: usize,
    },
    SetRole {
        by: usize,
        name: usize,
        role: usize,
    },
    Remove {
        by: usize,
        name: usize,
    },
    Request {
        by: usize,
    },
    Approve {
        by: usize,
        id: u64,
    },
}

/// Each op runs as the acting person with one of the keys they hold. Keys put on members are
/// mostly the actor's own (the attack), and approvals aim at the few newest requests.
fn op() -> impl Strategy<Value = (Op, usize)> {
    let person = || 1..PEOPLE;
    let holder = || prop_oneof![3 => Just(None), 1 => (0..PEOPLE).prop_map(Some)];
    let name = || 0..NAMES.len();
    let key = || 0..KEYS_EACH;
    let role = || 0..ROLES.len();
    let op = prop_oneof![
        2 => (person(), name(), role(), holder(), key()).prop_map(|(by, name, role, h, key)| {
            Op::Add { by, name, role, holder: h.unwrap_or(by), key }
        }),
        2 => (person(), name(), holder(), key()).prop_map(|(by, name, h, key)| Op::KeyAdd {
            by,
            name,
            holder: h.unwrap_or(by),
            key
        }),
        1 => (person(), name(), 0..PEOPLE, key())
            .prop_map(|(by, name, holder, key)| Op::KeyRemove { by, name, holder, key }),
        1 => (person(), name(), role()).prop_map(|(by, name, role)| Op::SetRole { by, name, role }),
        1 => (person(), name()).prop_map(|(by, name)| Op::Remove { by, name }),
        2 => person().prop_map(|by| Op::Request { by }),
        4 => (person(), 1..6u64).prop_map(|(by, id)| Op::Approve { by, id }),
    ];
    (op, key())
}

fn setup() -> (tempfile::TempDir, Broker) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let now = Timestamp::from_unix(T0);
    let k = keys();
    datadir::init(&dir, "olga", &k[0][0].1, "127.0.0.1:0", now).unwrap();
    let broker = datadir::open(&dir).unwrap().broker;
    let run = |line: String| {
        let out = broker.run_line(&k[0][0].0, line.as_bytes(), b"", now);
        assert_eq!(out.status, 0, "{line}: {out:?}");
    };
    // Two admins and two others, each the first key of a different person.
    for (p, (name, role)) in [
        ("adam", "admin"),
        ("zoe", "admin"),
        ("ed", "editor"),
        ("vic", "viewer"),
    ]
    .iter()
    .enumerate()
    {
        run(format!(
            "member add {name} --role {role} --key '{}'",
            k[p + 1][0].1
        ));
    }
    run(
        "host add web-01 --address 10.0.0.1 --login viewer=ro --login editor=deploy --approvals 2"
            .into(),
    );
    (tmp, broker)
}

fn run(broker: &Broker, person: usize, key: usize, line: &str, now: Timestamp) -> Option<Value> {
    let out = broker.run_line(
        &keys()[person][key].0,
        format!("{line} --json").as_bytes(),
        b"",
        now,
    );
    (out.status == 0).then(|| serde_json::from_str(&out.stdout).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_request_is_approved_by_fewer_people_than_it_needs(ops in prop::collection::vec(op(), 1..80)) {
        let (_tmp, broker) = setup();
        let k = keys();
        let now = Timestamp::from_unix(T0 + 10);
        // Who (which person) approved each request, successfully.
        let mut approvers: HashMap<u64, Vec<usize>> = HashMap::new();
        // Whose identity each name is: the person whose key it was made with.
        let mut owner: HashMap<&str, usize> =
            [("adam", 1), ("zoe", 2), ("ed", 3), ("vic", 4)].into_iter().collect();
        for (op, key) in ops {
            match op {
                Op::Add { by, name, role, holder, key: hk } => {
                    let line = format!("member add {} --role {} --key '{}'", NAMES[name], ROLES[role], k[holder][hk].1);
                    if run(&broker, by, key, &line, now).is_some() {
                        owner.insert(NAMES[name], holder);
                    }
                }
                Op::KeyAdd { by, name, holder, key: hk } => {
                    // Putting someone else's key on your own identity shares it on purpose, as
                    // handing over your private key would: no broker can tell, so it is no attack.
                    if owner.get(NAMES[name]) == Some(&by) && holder != by {
                        continue;
                    }
                    run(&broker, by, key, &format!("member key-add {} --key '{}'", NAMES[name], k[holder][hk].1), now);
                }
                Op::KeyRemove { by, name, holder, key: hk } => {
                    run(&broker, by, key, &format!("member key-remove {} --fingerprint {}", NAMES[name], k[holder][hk].0), now);
                }
                Op::SetRole { by, name, role } => {
                    run(&broker, by, key, &format!("member set-role {} --role {}", NAMES[name], ROLES[role]), now);
                }
                Op::Remove { by, name } => {
                    if run(&broker, by, key, &format!("member remove {}", NAMES[name]), now).is_some() {
                        owner.remove(NAMES[name]);
                    }
                }
                Op::Request { by } => {
                    run(&broker, by, key, "request web-01 --role viewer --for 1h --reason 'INC-1 property test'", now);
                }
                Op::Approve { by, id } => {
                    // The strongest attacker approves with every key they hold.
                    for k in 0..KEYS_EACH {
                        if let Some(r) = run(&broker, by, k, &format!("approve {id}"), now) {
                            let people = approvers.entry(id).or_default();
                            people.push(by);
                            if r["state"] == "approved" {
                                let distinct: BTreeSet<usize> = people.iter().copied().collect();
                                prop_assert!(
                                    distinct.len() as u64 >= r["approvals_required"].as_u64().unwrap(),
                                    "request {id} approved by people {people:?}: {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
        prop_assert!(broker.store().verify_audit().unwrap().ok);
    }
}

/// The attack the property guards against, spelled out: adam puts a key he holds on zoe, or
/// makes a second admin with it, and approves twice. Both are refused.
#[test]
fn the_known_takeovers_are_refused() {
    let (_tmp, broker) = setup();
    let k = keys();
    let now = Timestamp::from_unix(T0 + 10);
    let id = run(
        &broker,
        3,
        0,
        "request web-01 --role viewer --for 1h --reason 'INC-1 x y z'",
        now,
    )
    .unwrap()["id"]
        .as_u64()
        .unwrap();
    assert!(run(&broker, 1, 0, &format!("approve {id}"), now).is_some());
    assert!(
        run(
            &broker,
            1,
            0,
            &format!("member key-add zoe --key '{}'", k[1][1].1),
            now
        )
        .is_none()
    );
    assert!(run(&broker, 1, 1, &format!("approve {id}"), now).is_none());
    assert!(
        run(
            &broker,
            1,
            0,
            &format!("member add mallory --role admin --key '{}'", k[1][2].1),
            now
        )
        .is_none()
    );
    assert!(run(&broker, 1, 2, &format!("approve {id}"), now).is_none());
    assert!(run(&broker, 1, 0, "member set-role ed --role admin", now).is_none());
    let r = run(&broker, 0, 0, &format!("show {id}"), now).unwrap();
    assert_eq!(r["state"], "pending");
    // The second honest admin completes it.
    let r = run(&broker, 2, 0, &format!("approve {id}"), now).unwrap();
    assert_eq!(r["state"], "approved");
}

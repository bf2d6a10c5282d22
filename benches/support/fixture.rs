//! A broker in a temp dir with one member holding an approved grant, for measuring whole
//! commands through `Broker::execute` without the SSH transport. Shared by the criterion
//! benches (`benches/core.rs`) and the instruction counts (`examples/instructions.rs`).

use sshjit::broker::Broker;
use sshjit::ca;
use sshjit::commands::{Invocation, Parsed, parse_line};
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;

/// When the fixture's grant was approved; commands run a minute later.
pub const T0: Timestamp = Timestamp::from_unix(1_900_000_000);

pub struct Fixture {
    /// Holds the data dir for as long as the broker runs.
    pub _tmp: tempfile::TempDir,
    pub broker: Broker,
    /// The member alice, who holds grant 1 (viewer on web-01 for 24 hours).
    pub alice: String,
    /// A public key line to certify.
    pub subject: String,
    pub cert: Invocation,
    pub whoami: Invocation,
    pub now: Timestamp,
}

pub fn parsed(line: &str) -> Invocation {
    match parse_line(line.as_bytes()) {
        Ok(Parsed::Run(i)) => *i,
        _ => panic!("not a command line: {line}"),
    }
}

/// A fresh broker; one member signs thousands of certificates on one grant here, so the
/// per-member brakes, which exist to stop exactly that, are lifted.
pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let olga = ca::generate_key("olga").unwrap();
    let alice = ca::generate_key("alice").unwrap();
    let line = |k: &russh::keys::PrivateKey| k.public_key().to_openssh().unwrap();
    datadir::init(&dir, "olga", &line(&olga), "127.0.0.1:0", T0).unwrap();
    let cfg = std::fs::read_to_string(dir.config()).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some(("burst", _)) => "burst = 1000000".into(),
            Some(("per_minute", _)) => "per_minute = 10000000".into(),
            Some(("max_certs_per_grant", _)) => "max_certs_per_grant = 1000000".into(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(dir.config(), cfg).unwrap();
    let broker = datadir::open(&dir).unwrap().broker;
    let fp = |k: &russh::keys::PrivateKey| ca::fingerprint(k.public_key().key_data());
    let run = |who: &russh::keys::PrivateKey, l: &str| {
        assert_eq!(
            broker.run_line(&fp(who), l.as_bytes(), b"", T0).status,
            0,
            "{l}"
        )
    };
    run(
        &olga,
        &format!("member add alice --role viewer --key '{}'", line(&alice)),
    );
    run(
        &olga,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    );
    run(
        &alice,
        "request web-01 --role viewer --for 24h --reason 'LOAD-1 bench'",
    );
    run(&olga, "approve 1");
    Fixture {
        _tmp: tmp,
        broker,
        alice: fp(&alice),
        subject: format!("{}\n", line(&ca::generate_key("s").unwrap())),
        cert: parsed("cert 1"),
        whoami: parsed("whoami"),
        now: T0.plus(60),
    }
}

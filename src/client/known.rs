//! Broker host key pinning, as OpenSSH's known_hosts does it: trust on first use, refuse a change.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use russh::keys::PublicKey;

use crate::ca;
use crate::error::{Error, Result};

/// How to treat the broker's host key.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    /// The known-brokers file.
    pub file: PathBuf,
    /// The broker as configured (`host:port`), the key of the pin.
    pub broker: String,
    /// Pin a new broker's key without asking.
    pub accept_new: bool,
    /// A fingerprint the configuration says the broker has.
    pub fingerprint: Option<String>,
}

/// Checks `key` for the broker; pins it on first contact when allowed.
pub fn check(policy: &HostKeyPolicy, key: &PublicKey) -> Result<()> {
    let fp = ca::fingerprint(key.key_data());
    let presented = ca::openssh_without_comment(key)?;
    if let Some(known) = lookup(policy)? {
        if known == presented {
            return Ok(());
        }
        let known_fp = PublicKey::from_openssh(&known)
            .map(|k| ca::fingerprint(k.key_data()))
            .unwrap_or_else(|_| "unreadable".into());
        return Err(Error::BrokerKey(format!(
            "THE BROKER'S HOST KEY HAS CHANGED for {}: pinned {known_fp}, presented {fp}. \
             Someone may be intercepting the connection. If your admin confirms the broker's key changed, \
             delete the line for {} in {} and connect again",
            policy.broker,
            policy.broker,
            policy.file.display()
        )));
    }
    if let Some(want) = &policy.fingerprint {
        if want != &fp {
            return Err(Error::BrokerKey(format!(
                "the broker at {} presents {fp}, but the configured broker_fingerprint is {want}; do not continue until your admin confirms the right key",
                policy.broker
            )));
        }
        return pin(policy, &presented, &fp);
    }
    if policy.accept_new {
        return pin(policy, &presented, &fp);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!(
            "First contact with the sshjit broker at {}.\nIts host key fingerprint is {fp}.\nCheck it with your admin. Trust it and continue? [y/N] ",
            policy.broker
        );
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return pin(policy, &presented, &fp);
        }
        return Err(Error::BrokerKey(
            "broker host key not trusted; nothing was sent".into(),
        ));
    }
    Err(Error::BrokerKey(format!(
        "first contact with the broker at {} (host key {fp}) and no terminal to ask on; \
         confirm the fingerprint with your admin, then rerun with --accept-new-broker-key \
         or set broker_fingerprint = \"{fp}\" in the config file",
        policy.broker
    )))
}

fn lookup(policy: &HostKeyPolicy) -> Result<Option<String>> {
    let text = match fs::read_to_string(&policy.file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::io(format!("cannot read {}", policy.file.display()))(
                e,
            ));
        }
    };
    Ok(text.lines().find_map(|l| {
        let (who, key) = l.trim().split_once(' ')?;
        (who == policy.broker).then(|| key.trim().to_string())
    }))
}

fn pin(policy: &HostKeyPolicy, key: &str, fp: &str) -> Result<()> {
    if let Some(dir) = policy.file.parent() {
        fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&policy.file)
        .map_err(Error::io(format!("cannot write {}", policy.file.display())))?;
    writeln!(f, "{} {key}", policy.broker).map_err(Error::io("cannot pin the broker key"))?;
    eprintln!(
        "sshjit: pinned the broker key {fp} for {} in {}",
        policy.broker,
        policy.file.display()
    );
    Ok(())
}

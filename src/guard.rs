//! The host-side session guard's decisions, kept pure so they are tested without sshd: which
//! login is an sshjit certificate login (from the `SSH_AUTH_INFO_0` text that sshd gives PAM),
//! when to warn, and what to say. The `sshjit-guard` binary does the process work.

use russh::keys::ssh_key::{Certificate, PublicKey};

/// Warnings before the end, in seconds: 5 minutes and 1 minute.
pub const WARN_BEFORE: [u64; 2] = [300, 60];

/// An sshjit certificate login and its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub key_id: String,
    pub serial: u64,
    /// Unix seconds: the first second the certificate is no longer valid.
    pub valid_before: u64,
}

/// What the guard does with a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a certificate from this CA (a plain key, another CA, a password): untouched.
    NotOurs,
    /// An sshjit certificate login: end it at `valid_before`.
    Guard(Login),
    /// An sshjit login (or one that cannot be told apart) whose certificate cannot be read:
    /// the session must not start.
    Refuse(String),
}

/// The authentication methods sshd writes in `SSH_AUTH_INFO_0`, one per line.
const METHODS: [&str; 6] = [
    "publickey",
    "password",
    "keyboard-interactive",
    "hostbased",
    "gssapi-with-mic",
    "none",
];

/// The CA keys in a `sshjit_ca.pub` file: one per line (sshd allows several, for a key
/// rotation); blank lines and `#` comments are skipped. None if any other line is not a key.
pub fn ca_keys(text: &str) -> Option<Vec<PublicKey>> {
    let keys: Option<Vec<PublicKey>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| PublicKey::from_openssh(l).ok())
        .collect();
    keys.filter(|k| !k.is_empty())
}

/// Judges a login from sshd's `SSH_AUTH_INFO_0` (`None` if it is not set) against the CA keys,
/// at `now` (Unix seconds). With several sshjit certificates (several publickey steps), the
/// earliest end wins.
pub fn judge(auth_info: Option<&str>, cas: &[PublicKey], now: u64) -> Verdict {
    let Some(info) = auth_info else {
        return Verdict::Refuse(
            "SSH_AUTH_INFO_0 is not set, so the login cannot be checked (the guard runs from sshd's PAM session stack with UsePAM yes)".into(),
        );
    };
    let mut lines = info.lines().filter(|l| !l.trim().is_empty()).peekable();
    if lines.peek().is_none() {
        return Verdict::Refuse("SSH_AUTH_INFO_0 is empty".into());
    }
    let mut verdict = Verdict::NotOurs;
    for line in lines {
        let mut words = line.split_whitespace();
        // sshd writes some methods with a submethod: `keyboard-interactive/pam`.
        let method = words.next().unwrap_or_default();
        let method = method.split_once('/').map_or(method, |(m, _)| m);
        if !METHODS.contains(&method) {
            return Verdict::Refuse(format!(
                "SSH_AUTH_INFO_0 holds an unreadable line ({} bytes)",
                line.len()
            ));
        }
        if method != "publickey" {
            continue;
        }
        let (Some(algo), Some(data)) = (words.next(), words.next()) else {
            return Verdict::Refuse("SSH_AUTH_INFO_0 holds a publickey line without a key".into());
        };
        if !algo.ends_with("-cert-v01@openssh.com") {
            continue;
        }
        let cert = match Certificate::from_openssh(&format!("{algo} {data}")) {
            Ok(c) => c,
            Err(e) => {
                return Verdict::Refuse(format!("the login's certificate cannot be read: {e}"));
            }
        };
        if !cas.iter().any(|ca| cert.signature_key() == ca.key_data()) {
            continue;
        }
        if cert.valid_before() <= now {
            return Verdict::Refuse(format!(
                "the certificate {} ended at {}",
                cert.key_id(),
                cert.valid_before()
            ));
        }
        let sooner = match &verdict {
            Verdict::Guard(l) => cert.valid_before() < l.valid_before,
            _ => true,
        };
        if sooner {
            verdict = Verdict::Guard(Login {
                key_id: cert.key_id().to_string(),
                serial: cert.serial(),
                valid_before: cert.valid_before(),
            });
        }
    }
    verdict
}

/// When to warn (Unix seconds, soonest first) for a window ending at `end`, `before` it
/// (seconds), from `now` on.
pub fn warnings(end: u64, now: u64, before: &[u64]) -> Vec<u64> {
    let mut at: Vec<u64> = before
        .iter()
        .filter_map(|s| end.checked_sub(*s))
        .filter(|at| *at > now)
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

/// `14:30:00Z` for a Unix time.
pub fn clock(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// The warning line, such as "sshjit: access to web-01 ends at 14:30:00Z, in 5 minutes".
pub fn warning(host: &str, end: u64, now: u64) -> String {
    let left = end.saturating_sub(now);
    let (n, unit) = if left >= 60 {
        (left.div_ceil(60), "minute")
    } else {
        (left, "second")
    };
    format!(
        "sshjit: access to {host} ends at {}, in {n} {unit}{}",
        clock(end),
        if n == 1 { "" } else { "s" }
    )
}

/// The last line before the connection is closed.
pub fn closing(host: &str, end: u64) -> String {
    format!(
        "sshjit: access to {host} ended at {} (the grant window is over); closing this connection",
        clock(end)
    )
}

/// The host log's line for a forced end: joins the broker's audit log by key id and serial.
pub fn log_line(host: &str, login: &Login, user: &str) -> String {
    format!(
        "ended connection of {user} to {host} at the end of its window: key id {}, serial {}, valid_before {}",
        login.key_id.escape_debug(),
        login.serial,
        login.valid_before
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_key;
    use russh::keys::ssh_key::certificate::{Builder, CertType};

    fn cert_line(ca: &russh::keys::PrivateKey, before: u64) -> String {
        let subject = generate_key("s").unwrap();
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), subject.public_key(), 0, before)
                .unwrap();
        b.serial(42).unwrap();
        b.key_id("sshjit:7:alice").unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("deploy@web-01").unwrap();
        let cert = b.sign(ca).unwrap();
        format!("publickey {}", cert.to_openssh().unwrap())
    }

    #[test]
    fn logins_are_told_apart() {
        let ca = generate_key("ca").unwrap();
        let other = generate_key("other").unwrap();
        let ours = cert_line(&ca, 2_000_000_000);
        let v = judge(
            Some(&ours),
            std::slice::from_ref(ca.public_key()),
            1_900_000_000,
        );
        assert_eq!(
            v,
            Verdict::Guard(Login {
                key_id: "sshjit:7:alice".into(),
                serial: 42,
                valid_before: 2_000_000_000
            })
        );
        // Another CA's certificate, a plain key, a password: untouched.
        assert_eq!(
            judge(
                Some(&cert_line(&other, 2_000_000_000)),
                std::slice::from_ref(ca.public_key()),
                0
            ),
            Verdict::NotOurs
        );
        let plain = format!("publickey {}", ca.public_key().to_openssh().unwrap());
        assert_eq!(
            judge(Some(&plain), std::slice::from_ref(ca.public_key()), 0),
            Verdict::NotOurs
        );
        assert_eq!(
            judge(Some("password\n"), std::slice::from_ref(ca.public_key()), 0),
            Verdict::NotOurs
        );
        // Two methods, one of them ours.
        let both = format!("password\n{ours}\n");
        assert!(matches!(
            judge(Some(&both), std::slice::from_ref(ca.public_key()), 0),
            Verdict::Guard(_)
        ));
    }

    #[test]
    fn submethods_several_certificates_and_several_ca_keys() {
        let ca = generate_key("ca").unwrap();
        let next = generate_key("next").unwrap();
        let cas = ca_keys(&format!(
            "# rotated in 2026\n{}\n\n{}\n",
            ca.public_key().to_openssh().unwrap(),
            next.public_key().to_openssh().unwrap()
        ))
        .unwrap();
        assert_eq!(cas.len(), 2);
        assert_eq!(ca_keys("# nothing\n"), None);
        assert_eq!(ca_keys("not a key\n"), None);
        // keyboard-interactive/pam is a method with a submethod: not ours, not unreadable.
        assert_eq!(
            judge(Some("keyboard-interactive/pam\n"), &cas, 0),
            Verdict::NotOurs
        );
        // A second factor after an sshjit certificate, signed by the rotated-in key.
        let later = cert_line(&next, 2_000_000_000);
        let line = format!("{later}\nkeyboard-interactive/pam\n");
        assert!(matches!(judge(Some(&line), &cas, 0), Verdict::Guard(_)));
        // Two sshjit certificates: the earlier end wins, whichever comes first.
        let sooner = cert_line(&ca, 1_950_000_000);
        for info in [format!("{later}\n{sooner}"), format!("{sooner}\n{later}")] {
            match judge(Some(&info), &cas, 0) {
                Verdict::Guard(l) => assert_eq!(l.valid_before, 1_950_000_000),
                v => panic!("{v:?}"),
            }
        }
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let ca = generate_key("ca").unwrap();
        let ours = cert_line(&ca, 2_000_000_000);
        let refused = |s: Option<&str>| {
            matches!(
                judge(s, std::slice::from_ref(ca.public_key()), 0),
                Verdict::Refuse(_)
            )
        };
        assert!(refused(None));
        assert!(refused(Some("")));
        assert!(refused(Some("garbage")));
        assert!(refused(Some("publickey")));
        assert!(refused(Some(
            "publickey ssh-ed25519-cert-v01@openssh.com AAAAnotacert"
        )));
        let truncated = &ours[..ours.len() - 20];
        assert!(refused(Some(truncated)));
        // Past its end: sshd would not have let it in; the guard does not either.
        assert!(!refused(Some(&ours)));
        assert!(matches!(
            judge(
                Some(&ours),
                std::slice::from_ref(ca.public_key()),
                2_000_000_000
            ),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn warnings_come_five_and_one_minute_before() {
        assert_eq!(warnings(1000, 0, &WARN_BEFORE), vec![700, 940]);
        assert_eq!(warnings(1000, 800, &WARN_BEFORE), vec![940]);
        assert_eq!(warnings(1000, 990, &WARN_BEFORE), Vec::<u64>::new());
        assert_eq!(warnings(1000, 0, &[60, 300, 60]), vec![700, 940]);
        assert_eq!(
            warning("web-01", 52_200, 51_900),
            "sshjit: access to web-01 ends at 14:30:00Z, in 5 minutes"
        );
        assert_eq!(
            warning("web-01", 52_200, 52_140),
            "sshjit: access to web-01 ends at 14:30:00Z, in 1 minute"
        );
    }
}

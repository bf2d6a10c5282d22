//! The client side: settings (flags, then environment, then config file), the SSH connection,
//! broker key pinning, the local certificate store, and the `sshjit` and `admin` commands.

pub mod admin;
pub mod conn;
pub mod helper;
pub mod known;
pub mod listing;
pub mod local;
pub mod run;
pub mod witness;

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The broker's default port.
pub const DEFAULT_PORT: u16 = 2222;

/// Connection flags shared by `sshjit` and `sshjit-broker admin`. They belong to the commands
/// that talk to the broker (and may also come before the command), so the help of a local
/// command shows none of them.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// The broker, HOST[:PORT] (default port 2222). Also SSHJIT_BROKER or broker = in the config file.
    #[arg(long)]
    pub broker: Option<String>,
    /// Your identity: a private key file, `agent`, or `agent:SHA256:...`. Also SSHJIT_IDENTITY.
    #[arg(long)]
    pub identity: Option<String>,
    /// Pin the broker's host key on first contact without asking.
    #[arg(long)]
    pub accept_new_broker_key: bool,
}

impl ConnectArgs {
    /// These flags, with `outer`'s (given before the command) where these have none.
    pub fn or(&self, outer: &ConnectArgs) -> ConnectArgs {
        ConnectArgs {
            broker: self.broker.clone().or_else(|| outer.broker.clone()),
            identity: self.identity.clone().or_else(|| outer.identity.clone()),
            accept_new_broker_key: self.accept_new_broker_key || outer.accept_new_broker_key,
        }
    }
}

/// Which key proves who you are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An unencrypted private key file.
    File(PathBuf),
    /// A key held by the running ssh-agent; optionally the one with this fingerprint.
    Agent(Option<String>),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::File(p) => write!(f, "the key {}", p.display()),
            Identity::Agent(None) => f.write_str("any key in ssh-agent"),
            Identity::Agent(Some(fp)) => write!(f, "the ssh-agent key {fp}"),
        }
    }
}

/// `~/.config/sshjit/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    broker: Option<String>,
    identity: Option<String>,
    broker_fingerprint: Option<String>,
    /// The role `sshjit request` asks for when `--role` is not given.
    role: Option<String>,
    /// The duration `sshjit request` asks for when `--for` is not given.
    duration: Option<String>,
}

impl FileConfig {
    /// Reads the helper's config file (none is an empty one).
    fn load(home: &Path) -> Result<FileConfig> {
        let path = config_dir(home).join("config.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{} is invalid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()))(e)),
        }
    }
}

/// `sshjit request` arguments with the config file's `duration` filled in where the command
/// line has none: `--for=D` goes right after `request`, so the one shared definition of
/// `request`'s arguments still parses it. The default role is applied later
/// ([`Settings::default_role`]), once the target is known to take one.
pub fn with_request_defaults(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    // The first word that is neither a flag nor a global flag's value is the command.
    let takes_value = ["--broker", "--identity"];
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if takes_value.contains(&a.as_ref()) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if args.get(i).is_none_or(|a| a != "request") {
        return Ok(args);
    }
    let has = |flags: &[&str]| {
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            flags
                .iter()
                .any(|f| a == *f || a.starts_with(&format!("{f}=")))
        })
    };
    let file = match home() {
        Ok(h) => FileConfig::load(&h)?,
        Err(_) => return Ok(args),
    };
    let mut out = args.clone();
    if let (Some(d), false) = (&file.duration, has(&["--for", "--duration"])) {
        out.insert(i + 1, format!("--for={d}").into());
    }
    Ok(out)
}

/// Everything a client needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port`.
    pub broker: String,
    pub identity: Identity,
    pub known_brokers: PathBuf,
    /// Where the last checkpoint verified of each broker's audit log is kept.
    pub checkpoints: PathBuf,
    pub accept_new: bool,
    pub fingerprint: Option<String>,
    /// Where certificates and their keys live (`~/.ssh/sshjit`).
    pub certs_dir: PathBuf,
    /// The config file's `role`: what `request` asks for on a host or fleet without `--role`
    /// (a fleet command takes none).
    pub default_role: Option<String>,
}

/// The user's home directory, from HOME.
pub fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::Config(
                "HOME is not set; sshjit keeps its files under your home directory".into(),
            )
        })
}

/// Where certificates and their keys live: `~/.ssh/sshjit`.
pub fn certs_dir() -> Result<PathBuf> {
    Ok(home()?.join(".ssh/sshjit"))
}

/// The helper's config directory: `$XDG_CONFIG_HOME/sshjit` or `~/.config/sshjit`.
pub fn config_dir(home: &Path) -> PathBuf {
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("sshjit"),
        None => home.join(".config/sshjit"),
    }
}

impl Settings {
    /// Resolves settings: flags first, then SSHJIT_BROKER / SSHJIT_IDENTITY, then the config file.
    pub fn resolve(flags: &ConnectArgs) -> Result<Settings> {
        let home = home()?;
        let dir = config_dir(&home);
        let path = dir.join("config.toml");
        let file = FileConfig::load(&home)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let broker = flags
            .broker
            .clone()
            .or_else(|| env("SSHJIT_BROKER"))
            .or(file.broker)
            .ok_or_else(|| {
                Error::Config(format!(
                    "no broker configured; pass --broker HOST:PORT, set SSHJIT_BROKER, or add broker = \"HOST:PORT\" to {}",
                    path.display()
                ))
            })?;
        let broker = normalize_broker(&broker)?;
        let identity = match flags
            .identity
            .clone()
            .or_else(|| env("SSHJIT_IDENTITY"))
            .or(file.identity)
        {
            Some(s) => parse_identity(&s, &home)?,
            None => default_identity(&home)?,
        };
        Ok(Settings {
            broker,
            identity,
            known_brokers: dir.join("known_brokers"),
            checkpoints: dir.join("checkpoints"),
            accept_new: flags.accept_new_broker_key,
            fingerprint: file.broker_fingerprint,
            certs_dir: certs_dir()?,
            default_role: file.role,
        })
    }

    /// This client as a witness of this broker's audit log.
    pub fn witness(&self) -> witness::Witness {
        witness::Witness::new(&self.checkpoints, &self.broker)
    }

    /// The host key policy for this broker.
    pub fn host_key_policy(&self) -> known::HostKeyPolicy {
        known::HostKeyPolicy {
            file: self.known_brokers.clone(),
            broker: self.broker.clone(),
            accept_new: self.accept_new,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

fn parse_identity(s: &str, home: &Path) -> Result<Identity> {
    if s == "agent" {
        return Ok(Identity::Agent(None));
    }
    if let Some(fp) = s.strip_prefix("agent:") {
        return Ok(Identity::Agent(Some(fp.to_string())));
    }
    let path = match s.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(s),
    };
    if !path.is_file() {
        return Err(Error::Config(format!(
            "the identity key {} does not exist; give the private key file you use for the broker (not the .pub), or 'agent'",
            path.display()
        )));
    }
    let public_half = std::fs::read_to_string(&path)
        .map(|t| t.trim_start().starts_with("ssh-") || t.trim_start().starts_with("ecdsa-"))
        .unwrap_or(false);
    if public_half {
        let private = path.to_string_lossy().trim_end_matches(".pub").to_string();
        return Err(Error::Config(format!(
            "{} is the public half of a key; give the private key file instead (drop the .pub: {private})",
            path.display()
        )));
    }
    Ok(Identity::File(path))
}

fn default_identity(home: &Path) -> Result<Identity> {
    let key = home.join(".ssh/id_ed25519");
    if key.is_file() {
        return Ok(Identity::File(key));
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        return Ok(Identity::Agent(None));
    }
    Err(Error::Config(
        "no identity key: ~/.ssh/id_ed25519 does not exist and no ssh-agent is running; pass --identity FILE or set SSHJIT_IDENTITY".into(),
    ))
}

/// `host` or `host:port` to `host:port`.
fn normalize_broker(s: &str) -> Result<String> {
    let bad = || {
        Error::Config(format!(
            "'{s}' is not a broker address; use HOST or HOST:PORT, such as broker.example.com:2222"
        ))
    };
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
            port.parse::<u16>().map_err(|_| bad())?;
            Ok(s.to_string())
        }
        Some(_) => Err(bad()),
        None => Ok(format!("{s}:{DEFAULT_PORT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_get_a_default_port() {
        assert_eq!(normalize_broker("b.example").unwrap(), "b.example:2222");
        assert_eq!(normalize_broker("127.0.0.1:22").unwrap(), "127.0.0.1:22");
        for bad in ["", "b:", ":22", "b:x", "a b"] {
            assert!(normalize_broker(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identities_parse() {
        let home = Path::new("/nonexistent");
        assert_eq!(
            parse_identity("agent", home).unwrap(),
            Identity::Agent(None)
        );
        assert_eq!(
            parse_identity("agent:SHA256:x", home).unwrap(),
            Identity::Agent(Some("SHA256:x".into()))
        );
        assert!(parse_identity("~/.ssh/missing", home).is_err());
    }

    #[test]
    fn a_public_key_given_as_identity_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let pubkey = dir.path().join("id.pub");
        std::fs::write(&pubkey, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA x\n").unwrap();
        let err = parse_identity(pubkey.to_str().unwrap(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the public half of a key"), "{err}");
        assert!(err.contains(&format!(
            "drop the .pub: {}",
            dir.path().join("id").display()
        )));
    }
}

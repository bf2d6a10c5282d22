//! The helper's certificate store under `~/.ssh/sshjit/<target>/`, and handing keys to ssh-agent.
//!
//! Per grant: `<id>` (private key), `<id>.pub`, `<id>-cert.pub` and `<id>.json` (what the broker
//! said), all 0600, in a 0700 directory named after the target (a host, fleet or command);
//! `current` and `current-cert.pub` link to the newest grant so an ssh_config block can name
//! stable paths. One certificate may name many hosts (a fleet).

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::contract::CertView;
use crate::error::{Error, Result};
use crate::model::{Name, Timestamp};
use crate::target::{ScopeHost, TargetKind};

/// One certificate on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCert {
    /// The broker (`host:port`) that issued it.
    pub broker: String,
    /// The CA that signed it: a certificate is offered only while its broker's CA is this one.
    pub ca_fingerprint: String,
    pub request_id: u64,
    pub serial: u64,
    /// The target of the grant (a host, fleet or command), and its kind.
    pub target: String,
    pub kind: TargetKind,
    /// Every host the certificate names, with the login there.
    pub hosts: Vec<ScopeHost>,
    /// For a fleet command: what sshd runs with it.
    pub command: Option<String>,
    pub valid_after: Timestamp,
    pub valid_before: Timestamp,
    pub key: PathBuf,
    pub certificate: PathBuf,
}

impl LocalCert {
    /// Seconds of validity left at `now` (0 when expired).
    pub fn seconds_left(&self, now: Timestamp) -> u64 {
        now.until(self.valid_before).max(0) as u64
    }

    /// The host called `name` among those it names.
    pub fn host(&self, name: &str) -> Option<&ScopeHost> {
        self.hosts.iter().find(|h| h.name.as_str() == name)
    }

    /// `web-01`, or `fleet web (3 hosts)`.
    pub fn describe(&self) -> String {
        match (self.kind, self.hosts.len()) {
            (TargetKind::Host, _) => self.target.clone(),
            (kind, n) => format!(
                "{kind} {} ({n} host{})",
                self.target,
                if n == 1 { "" } else { "s" }
            ),
        }
    }
}

/// The directory for one target's certificates.
pub fn target_dir(root: &Path, target: &str) -> Result<PathBuf> {
    let name: Name = target.parse()?;
    Ok(root.join(name.as_str()))
}

/// Writes a new grant's key and certificate and points `current` at them.
pub fn save(
    root: &Path,
    broker: &str,
    cert: &CertView,
    request_id: u64,
    private_key: &str,
    public_key: &str,
) -> Result<LocalCert> {
    let dir = target_dir(root, cert.target.as_str())?;
    for d in [root, dir.as_path()] {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(Error::io(format!("cannot create {}", d.display())))?;
    }
    let key = dir.join(request_id.to_string());
    let certificate = dir.join(format!("{request_id}-cert.pub"));
    let local = LocalCert {
        broker: broker.to_string(),
        ca_fingerprint: cert.ca_fingerprint.clone(),
        request_id,
        serial: cert.serial,
        target: cert.target.to_string(),
        kind: cert.kind,
        hosts: cert.hosts.clone(),
        command: cert.command.clone(),
        valid_after: cert.valid_after,
        valid_before: cert.valid_before,
        key: key.clone(),
        certificate: certificate.clone(),
    };
    // These reach ssh's command line and ssh_config: refuse anything that could be read as an
    // option, even from the broker.
    for h in &local.hosts {
        crate::model::validate_login(&h.login)?;
        crate::model::validate_address(&h.address)?;
    }
    write_private(&key, private_key)?;
    write_private(
        &dir.join(format!("{request_id}.pub")),
        &format!("{}\n", public_key.trim()),
    )?;
    write_private(&certificate, &format!("{}\n", cert.certificate.trim()))?;
    let meta = serde_json::to_string_pretty(&local).map_err(Error::from)?;
    write_private(&dir.join(format!("{request_id}.json")), &meta)?;
    relink(&dir, request_id)?;
    Ok(local)
}

/// Replaces a file with `content`, created 0600.
fn write_private(path: &Path, content: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    crate::ca::write_secret_file(path, content.as_bytes())
}

fn relink(dir: &Path, id: u64) -> Result<()> {
    for (link, target) in [
        ("current", id.to_string()),
        ("current-cert.pub", format!("{id}-cert.pub")),
    ] {
        let path = dir.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path)
            .map_err(Error::io(format!("cannot link {}", path.display())))?;
    }
    Ok(())
}

/// Every certificate on disk, newest window last.
pub fn list(root: &Path) -> Result<Vec<LocalCert>> {
    let mut out = Vec::new();
    let Ok(hosts) = fs::read_dir(root) else {
        return Ok(out);
    };
    for host in hosts.flatten() {
        let Ok(files) = fs::read_dir(host.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "json")
                && let Some(c) = fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
            {
                out.push(c);
            }
        }
    }
    out.sort_by_key(|c: &LocalCert| (c.valid_before, c.request_id));
    Ok(out)
}

/// Deletes the files of certificates whose window has ended; returns them.
pub fn prune(root: &Path, now: Timestamp) -> Result<Vec<LocalCert>> {
    let mut removed = Vec::new();
    for c in list(root)? {
        if c.valid_before > now {
            continue;
        }
        remove(&c);
        removed.push(c);
    }
    Ok(removed)
}

/// Deletes one certificate's files (and the `current` links if they pointed at it).
pub fn remove(c: &LocalCert) {
    let dir = c.key.parent().map(Path::to_path_buf).unwrap_or_default();
    let id = c.request_id;
    for name in [
        id.to_string(),
        format!("{id}.pub"),
        format!("{id}-cert.pub"),
        format!("{id}.json"),
    ] {
        let _ = fs::remove_file(dir.join(name));
    }
    for link in ["current", "current-cert.pub"] {
        let p = dir.join(link);
        if fs::symlink_metadata(&p).is_ok() && fs::metadata(&p).is_err() {
            let _ = fs::remove_file(&p);
        }
    }
    let _ = fs::remove_dir(&dir);
}

/// Takes a certificate and its key out of the running ssh-agent; whether an agent was there.
pub fn remove_from_agent(c: &LocalCert) -> bool {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return false;
    }
    Command::new("ssh-add")
        .arg("-d")
        .arg(&c.key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a stored certificate is looked up for.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// A login on this host: a host or fleet grant that names it.
    Host(&'a str),
    /// This fleet command.
    Command(&'a str),
}

impl Want<'_> {
    /// Whether a grant for `target` of `kind`, naming `hosts`, serves this.
    pub fn served_by(&self, target: &str, kind: TargetKind, hosts: &[ScopeHost]) -> bool {
        match *self {
            Want::Host(h) => {
                kind != TargetKind::Command && hosts.iter().any(|s| s.name.as_str() == h)
            }
            Want::Command(c) => kind == TargetKind::Command && target == c,
        }
    }

    /// The name asked for.
    pub fn name(&self) -> &str {
        match *self {
            Want::Host(n) | Want::Command(n) => n,
        }
    }
}

/// The current certificate that serves `want`, with the most time left, if any.
pub fn current_for(root: &Path, want: Want<'_>, now: Timestamp) -> Result<Option<LocalCert>> {
    Ok(list(root)?
        .into_iter()
        .filter(|c| want.served_by(&c.target, c.kind, &c.hosts))
        .filter(|c| c.valid_after <= now && now < c.valid_before)
        .max_by_key(|c| c.valid_before))
}

/// Adds the key and its certificate to the running ssh-agent for `seconds`.
///
/// russh's agent client cannot add certificates, so this runs `ssh-add -t`, which loads
/// `KEY-cert.pub` beside `KEY`. Returns false when no agent is running.
pub fn add_to_agent(cert: &LocalCert, seconds: u64) -> Result<bool> {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return Ok(false);
    }
    let out = Command::new("ssh-add")
        .arg("-q")
        .arg("-t")
        .arg(seconds.max(1).to_string())
        .arg(&cert.key)
        .output()
        .map_err(|e| Error::Client(format!("cannot run ssh-add ({e}); install openssh-client")))?;
    if !out.status.success() {
        return Err(Error::Client(format!(
            "ssh-add refused the key: {}; the key and certificate are still in {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            cert.key
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    Ok(true)
}

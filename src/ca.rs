//! The certificate authority: key files (0600), the certificate profile, signing, and host setup.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use russh::keys::ssh_key::{
    self, Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey,
    certificate::{Builder, CertType},
    public::KeyData,
};

use crate::error::{Error, Result};
use crate::model::{
    Grant, GrantRole, Host, IdentityId, Member, Name, Request, Role, Timestamp, printable,
};
use crate::target::ScopeHost;
use crate::verdict::MemberKind;

/// The smallest RSA key the broker will certify, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// Generates a new Ed25519 key (for the CA, the broker's host key, or a dev identity).
pub fn generate_key(comment: &str) -> Result<PrivateKey> {
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| Error::Internal(format!("cannot generate a key: {e}")))?;
    key.set_comment(comment);
    Ok(key)
}

/// Writes a private key that must not exist yet, readable by its owner only (0600).
pub fn write_private_key(key: &PrivateKey, path: &Path) -> Result<()> {
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode a private key: {e}")))?;
    write_secret_file(path, pem.as_bytes())
}

/// Creates a file that must not exist yet, readable by its owner only (0600), and syncs it.
pub fn write_secret_file(path: &Path, content: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("cannot create {}", path.display())))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

/// Reads a private key, refusing one that others can read (as OpenSSH does).
pub fn read_private_key(path: &Path) -> Result<PrivateKey> {
    let meta =
        std::fs::metadata(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::DataDir(format!(
            "{} has mode {mode:o}, so others can read it; run 'chmod 600 {}'",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(Error::io(format!("cannot read {}", path.display())))?;
    let key = PrivateKey::from_openssh(text.trim())
        .map_err(|_| Error::DataDir(format!("{} is not an OpenSSH private key", path.display())))?;
    if key.is_encrypted() {
        // The broker runs unattended: nobody is there to type a passphrase.
        return Err(Error::DataDir(format!(
            "{} is encrypted; the broker needs it without a passphrase: run 'ssh-keygen -p -N \"\" -f {}' (and keep it 0600)",
            path.display(),
            path.display()
        )));
    }
    Ok(key)
}

/// SHA-256 fingerprint of a public key, as OpenSSH prints it (`SHA256:...`).
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses a public key a user pasted (`ssh-ed25519 AAAA... [comment]`) and checks it is usable.
pub fn parse_public_key(text: &str) -> Result<PublicKey> {
    let text = text.trim();
    if text.contains("PRIVATE KEY") {
        return Err(Error::InvalidKey(
            "that is a private key: never send it anywhere. Send the public key instead (the .pub file beside it)".into(),
        ));
    }
    let looks_like_path = !text.contains(' ')
        && (text.starts_with('/') || text.starts_with('~') || text.ends_with(".pub"));
    if looks_like_path {
        return Err(Error::InvalidKey(format!(
            "'{}' looks like a file name; give the key's text, such as --key \"$(cat {})\", or send it on stdin",
            printable(text, 60),
            printable(text, 60)
        )));
    }
    // Escaped only for a refusal: every certificate parses a key.
    let shown = || printable(text, 60);
    if text.contains("-cert-v01@openssh.com") {
        return Err(Error::InvalidKey(format!(
            "'{}' is a certificate, not a public key; give the .pub file of the key",
            shown()
        )));
    }
    let key = PublicKey::from_openssh(text).map_err(|_| {
        Error::InvalidKey(format!(
            "'{}' is not an OpenSSH public key; give one line such as the contents of ~/.ssh/id_ed25519.pub",
            shown()
        ))
    })?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => {}
        KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => {}
        KeyData::Rsa(rsa) if rsa.key_size() >= MIN_RSA_BITS => {}
        KeyData::Rsa(rsa) => {
            return Err(Error::InvalidKey(format!(
                "RSA key of {} bits is too weak; use Ed25519 (ssh-keygen -t ed25519) or RSA of at least {MIN_RSA_BITS} bits",
                rsa.key_size()
            )));
        }
        _ => {
            return Err(Error::InvalidKey(format!(
                "key type {} is not accepted; use Ed25519 (ssh-keygen -t ed25519)",
                key.algorithm()
            )));
        }
    }
    Ok(key)
}

/// A new member identified by the public key in `key_text`.
pub fn member_with_key(
    name: Name,
    role: Role,
    key_text: &str,
    added_by: &str,
    now: Timestamp,
) -> Result<Member> {
    let key = parse_public_key(key_text)?;
    Ok(Member {
        // The store gives the member its identity when they are added.
        id: IdentityId(0),
        name,
        role,
        kind: MemberKind::Human,
        keys: vec![openssh_without_comment(&key)?],
        key_fingerprints: vec![fingerprint(key.key_data())],
        // Whoever adds the member records themself here (see `broker::members`).
        key_added_by: vec![],
        added_at: now,
        added_by: added_by.to_string(),
    })
}

/// A public key in OpenSSH form without its comment, as stored for members.
pub fn openssh_without_comment(key: &PublicKey) -> Result<String> {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::Internal(format!("cannot encode a public key: {e}")))
}

/// Everything that goes into one certificate, decided before signing: host-scoped principals,
/// key id `sshjit:<id>:<member>`, the serial, the exact window, extensions by role, and for a
/// fleet command its `force-command` and no extensions at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    pub extensions: Vec<&'static str>,
    /// The `force-command` critical option: sshd runs only this, whatever the client asks.
    pub force_command: Option<String>,
}

/// The profile for a grant, naming `hosts` (the scope's hosts still there): one principal
/// `<login>@<host>` each, the key id, the exact window, and the rights: a fleet command's
/// forced command with no extensions, or the role's extensions (VIEWER `permit-pty`, EDITOR
/// also `permit-port-forwarding`).
pub fn profile(req: &Request, grant: &Grant, hosts: &[&ScopeHost], serial: u64) -> Profile {
    let extensions = match (&grant.scope.command, grant.effective_role) {
        (Some(_), _) | (None, None) => vec![],
        (None, Some(GrantRole::Viewer)) => vec!["permit-pty"],
        (None, Some(GrantRole::Editor)) => vec!["permit-pty", "permit-port-forwarding"],
    };
    Profile {
        serial,
        key_id: match req.requester_kind {
            MemberKind::Bot => format!("sshjit:{}:bot:{}", req.id, req.requester),
            MemberKind::Human => format!("sshjit:{}:{}", req.id, req.requester),
        },
        principals: hosts
            .iter()
            .map(|h| principal(&h.login, h.name.as_str()))
            .collect(),
        valid_after: grant.start.unix().max(0) as u64,
        valid_before: grant.end.unix().max(0) as u64,
        extensions,
        force_command: grant.scope.command.clone(),
    }
}

/// The principal for `login` on `host`: `<login>@<host>`.
pub fn principal(login: &str, host: &str) -> String {
    format!("{login}@{host}")
}

/// The certificate authority.
pub struct Ca {
    key: PrivateKey,
    /// The CA key, expanded once: ssh-key would re-derive it (a scalar multiplication) per signature.
    fast: Option<Ed25519Signer>,
}

/// An Ed25519 signing key kept in its expanded form, for signing many certificates.
struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
    public: KeyData,
}

impl signature::Signer<ssh_key::Signature> for Ed25519Signer {
    fn try_sign(&self, msg: &[u8]) -> signature::Result<ssh_key::Signature> {
        let sig = self.key.sign(msg);
        ssh_key::Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl From<&Ed25519Signer> for KeyData {
    fn from(s: &Ed25519Signer) -> KeyData {
        s.public.clone()
    }
}

impl Ca {
    /// The CA of `key`, once it has signed a trial certificate: `cert` signs only after its
    /// change commits, so a key that cannot sign must be refused before any change.
    pub fn open(key: PrivateKey) -> Result<Self> {
        let ca = Ca::new(key);
        let subject = generate_key("sshjit-trial")?;
        let trial = Profile {
            serial: 0,
            key_id: "sshjit:trial".into(),
            principals: vec!["trial".into()],
            valid_after: 0,
            valid_before: 1,
            extensions: vec![],
            force_command: None,
        };
        ca.sign(subject.public_key().key_data(), &trial)
            .map_err(|e| Error::DataDir(format!("the CA key cannot sign certificates: {e}")))?;
        Ok(ca)
    }

    pub fn new(key: PrivateKey) -> Self {
        let fast = key.key_data().ed25519().map(|kp| Ed25519Signer {
            key: ed25519_dalek::SigningKey::from_bytes(&kp.private.to_bytes()),
            public: key.public_key().key_data().clone(),
        });
        Ca { key, fast }
    }

    /// The CA's public key in OpenSSH form, for `TrustedUserCAKeys`.
    pub fn public_key(&self) -> Result<String> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(|e| Error::Internal(format!("cannot encode the CA key: {e}")))
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.public_key().key_data())
    }

    /// The SHA-256 digest of the CA's public key (what its fingerprint shows in base64).
    pub fn fingerprint_digest(&self) -> Vec<u8> {
        let fp = self
            .key
            .public_key()
            .key_data()
            .fingerprint(HashAlg::Sha256);
        fp.as_bytes().to_vec()
    }

    /// Whether `key` is the CA's own key (which is never certified).
    pub fn is_ca_key(&self, key: &KeyData) -> bool {
        key == self.key.public_key().key_data()
    }

    /// Signs a user certificate for `subject` with exactly `profile`.
    pub fn sign(&self, subject: &KeyData, profile: &Profile) -> Result<Certificate> {
        self.finish(self.prepare(subject, profile)?)
    }

    /// The certificate for `subject` with exactly `profile`, everything but its signature:
    /// every check that could refuse it is made here (and [`Ca::open`] has shown that the key
    /// signs), so that a change can record the certificate and leave the signature, most of
    /// its cost, to [`Ca::finish`] after it commits (changes run one at a time; none should
    /// wait on a signature).
    pub fn prepare(&self, subject: &KeyData, profile: &Profile) -> Result<Unsigned> {
        // The builder refuses a certificate without principals only when it signs (one
        // without any would be valid for every login).
        if profile.principals.is_empty() {
            return Err(Error::Internal(
                "cannot sign a certificate that names no principal".into(),
            ));
        }
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            subject.clone(),
            profile.valid_after,
            profile.valid_before,
        )
        .map_err(sign_err)?;
        b.serial(profile.serial).map_err(sign_err)?;
        b.key_id(profile.key_id.clone()).map_err(sign_err)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        for p in &profile.principals {
            b.valid_principal(p.clone()).map_err(sign_err)?;
        }
        if let Some(run) = &profile.force_command {
            b.critical_option("force-command", run.clone())
                .map_err(sign_err)?;
        }
        for e in &profile.extensions {
            b.extension(*e, "").map_err(sign_err)?;
        }
        Ok(Unsigned(b))
    }

    /// Signs a certificate [`Ca::prepare`] made. (What is left to fail, encoding the signed
    /// bytes or a key that cannot sign, the checks before rule out.)
    pub fn finish(&self, unsigned: Unsigned) -> Result<Certificate> {
        match &self.fast {
            Some(fast) => unsigned.0.sign(fast).map_err(sign_err),
            None => unsigned.0.sign(&self.key).map_err(sign_err),
        }
    }
}

/// A certificate checked and built but not yet signed ([`Ca::prepare`]).
#[derive(Debug)]
pub struct Unsigned(Builder);

fn sign_err(e: ssh_key::Error) -> Error {
    Error::Internal(format!("cannot sign a certificate: {e}"))
}

/// One file a host needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostFile {
    pub path: String,
    pub content: String,
}

/// What makes a host trust the broker: sshd_config lines and the files they name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostConfig {
    pub host: String,
    pub sshd_config: Vec<String>,
    pub files: Vec<HostFile>,
    /// The session guard, with `--session-guard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<SessionGuard>,
}

/// Ends the guard's PAM line (a PAM comment), so the script finds and replaces its own line
/// whatever the guard's path.
const GUARD_MARK: &str = "# sshjit-guard";

/// The session guard's setup: sshjit-guard at `path`, run by pam_exec from the session stack
/// of `pam_file`, so every connection of an sshjit certificate ends with its window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionGuard {
    pub path: String,
    pub pam_file: String,
    /// The line `pam_file` gets, before its first session line so that no other module (such
    /// as pam_env with a user's ~/.pam_environment) can change what the guard reads first;
    /// it replaces any earlier line of the guard.
    pub pam_line: String,
}

impl SessionGuard {
    /// Checks where the guard and the PAM file are; the line is made by [`HostConfig::add_guard`].
    pub fn new(path: &str, pam_service: &str) -> Result<SessionGuard> {
        validate_host_dir(path).map_err(|_| {
            Error::invalid(format!(
                "--guard-path '{}' must be an absolute path of letters, digits, '/', '.', '_' and '-', such as /usr/local/sbin/sshjit-guard",
                printable(path, 60)
            ))
        })?;
        let service_ok = !pam_service.is_empty()
            && pam_service.len() <= 64
            && !pam_service.starts_with('.')
            && pam_service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !service_ok {
            return Err(Error::invalid(format!(
                "--pam-service '{}' is not a PAM service name; use the name of sshd's file in /etc/pam.d, normally sshd",
                printable(pam_service, 60)
            )));
        }
        Ok(SessionGuard {
            path: path.to_string(),
            pam_file: format!("/etc/pam.d/{pam_service}"),
            pam_line: String::new(),
        })
    }
}

/// Builds the host setup for `host` under `dir` (normally `/etc/ssh`): a principals file for
/// each of its logins and for `command_logins`, the logins of fleet commands that run on it.
pub fn host_config(
    host: &Host,
    command_logins: &[String],
    ca_public_key: &str,
    dir: &str,
) -> HostConfig {
    let dir = dir.trim_end_matches('/');
    let ca_path = format!("{dir}/sshjit_ca.pub");
    let principals_dir = format!("{dir}/sshjit_principals");
    let sshd_config = vec![
        format!("TrustedUserCAKeys {ca_path}"),
        format!("AuthorizedPrincipalsFile {principals_dir}/%u"),
    ];
    let mut files = vec![HostFile {
        path: ca_path,
        content: format!("{}\n", ca_public_key.trim()),
    }];
    let mut logins: Vec<&String> = host.logins.values().chain(command_logins).collect();
    logins.sort();
    logins.dedup();
    for login in logins {
        files.push(HostFile {
            path: format!("{principals_dir}/{login}"),
            content: format!("{}\n", principal(login, host.name.as_str())),
        });
    }
    files.push(HostFile {
        path: format!("{dir}/sshd_config.d/sshjit.conf"),
        content: sshd_config.iter().map(|l| format!("{l}\n")).collect(),
    });
    HostConfig {
        host: host.name.to_string(),
        sshd_config,
        files,
        guard: None,
    }
}

/// Checks a `host-config --dir`: an absolute path that sshd reads back as written and a
/// shell script can use unquoted, so only `A-Z a-z 0-9 / . _ -`, no `..` step, no `%` (sshd
/// would expand it), no spaces (sshd would split there).
pub fn validate_host_dir(dir: &str) -> Result<()> {
    let ok = dir.starts_with('/')
        && dir.len() <= 200
        && dir
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
        && !dir.split('/').any(|step| step == "..");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "--dir '{}' is not a directory sshd can read back; use an absolute path of letters, digits, '/', '.', '_' and '-' (no spaces, '%' or '..'), such as /etc/ssh",
            printable(dir, 60)
        )))
    }
}

impl HostConfig {
    /// Adds the session guard: sshd must use PAM, and the PAM session stack runs the guard
    /// for every connection with the CA key under `dir`.
    pub fn add_guard(&mut self, mut g: SessionGuard, dir: &str) {
        let dir = dir.trim_end_matches('/');
        g.pam_line = format!(
            "session required pam_exec.so quiet {} pam --ca {dir}/sshjit_ca.pub --host {} {GUARD_MARK}",
            g.path, self.host
        );
        self.sshd_config.push("UsePAM yes".into());
        if let Some(conf) = self
            .files
            .iter_mut()
            .find(|f| f.path.ends_with("/sshjit.conf"))
        {
            conf.content.push_str("UsePAM yes\n");
        }
        self.guard = Some(g);
    }

    /// A POSIX shell script that writes every file or none (run as root on the host): each
    /// file is staged beside its target, and only when all are staged are they moved into
    /// place; on any failure the staged files and the directories it made are removed.
    pub fn script(&self) -> String {
        let mut s = String::from(
            "#!/bin/sh
# Makes this host trust the sshjit CA. Run as root, then reload sshd.
# Writes every file or none: all are staged first, then moved into place.
set -eu
umask 022
staged=''
made=''
cleanup() {
  for f in $staged; do rm -f \"$f\"; done
  for d in $made; do rmdir \"$d\" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
mkd() {
  [ -d \"$1\" ] && return 0
  mkd \"$(dirname \"$1\")\"
  mkdir \"$1\"
  made=\"$1 $made\"
}
",
        );
        if let Some(g) = &self.guard {
            // Checked before anything is written: all or nothing.
            s.push_str(&format!(
                "[ -x '{0}' ] || {{ echo 'sshjit: install sshjit-guard at {0} first (it is built beside sshjit-broker), then run this again' >&2; exit 1; }}\n\
                 [ -f '{1}' ] || {{ echo 'sshjit: {1} does not exist; is this the PAM service sshd uses? (see --pam-service)' >&2; exit 1; }}\n\
                 staged=\"$staged {1}.sshjit-new\"\n\
                 LC_ALL=C awk -v line='{2}' -v mark='{GUARD_MARK}' 'index($0, mark) {{ next }} !done && /^[[:space:]]*(-?session[[:space:]]|@include[[:space:]]+common-session)/ {{ print line; done = 1 }} {{ print }} END {{ if (!done) print line }}' '{1}' > '{1}.sshjit-new'\n",
                g.path, g.pam_file, g.pam_line
            ));
        }
        for f in &self.files {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                s.push_str(&format!("mkd '{parent}'\n"));
            }
            s.push_str(&format!(
                "cat > '{0}.sshjit-new' <<'SSHJIT_EOF'\n{1}SSHJIT_EOF\nstaged=\"$staged {0}.sshjit-new\"\n",
                f.path, f.content
            ));
        }
        for f in &self.files {
            s.push_str(&format!("mv -f '{0}.sshjit-new' '{0}'\n", f.path));
        }
        if let Some(g) = &self.guard {
            s.push_str(&format!("mv -f '{0}.sshjit-new' '{0}'\n", g.pam_file));
        }
        s.push_str("staged=''\nmade=''\n");
        s.push_str("echo 'sshjit: host files written; check with sshd -t and reload sshd' >&2\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused_with_reasons() {
        assert!(matches!(
            parse_public_key("ssh-ed25519 notbase64"),
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(parse_public_key(""), Err(Error::InvalidKey(_))));
        let k = generate_key("x").unwrap();
        let private = k.to_openssh(LineEnding::LF).unwrap();
        let err = parse_public_key(&private).unwrap_err().to_string();
        assert!(
            err.contains("that is a private key") && !err.contains("b3Bl"),
            "{err}"
        );
        let k = generate_key("x").unwrap();
        let line = k.public_key().to_openssh().unwrap();
        assert!(parse_public_key(&line).is_ok());
    }

    #[test]
    fn the_fast_signer_makes_certificates_that_verify_against_the_ca_key() {
        let key = generate_key("ca").unwrap();
        let ca = Ca::new(key.clone());
        assert!(ca.fast.is_some());
        let subject = generate_key("s").unwrap();
        let p = Profile {
            serial: 1,
            key_id: "sshjit:1:a".into(),
            principals: vec!["deploy@web-01".into()],
            valid_after: 1_900_000_000,
            valid_before: 1_900_003_600,
            extensions: vec!["permit-pty"],
            force_command: None,
        };
        let cert = ca.sign(subject.public_key().key_data(), &p).unwrap();
        let fp = key.public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(1_900_000_000, &[fp]).unwrap();
        assert!(cert.validate_at(1_900_003_600, &[fp]).is_err());
        // A certificate with no principal (valid for every login) is refused before any
        // change records it, not when it is signed.
        let none = Profile {
            principals: vec![],
            ..p
        };
        let e = ca
            .prepare(subject.public_key().key_data(), &none)
            .unwrap_err();
        assert_eq!(e.code(), "internal", "{e}");
    }

    #[test]
    fn private_keys_are_written_0600_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = generate_key("x").unwrap();
        write_private_key(&k, &p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_private_key(&k, &p).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_private_key(&p).is_err());
    }
}

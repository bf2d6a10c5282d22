//! `[[notify]]` in config.toml: where notifications go, checked when the broker starts, with
//! each endpoint's signing secret read from its own 0600 file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Event;
use crate::error::{Error, Result};
use crate::model::Name;

/// How an endpoint wants its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Standard Webhooks: a signed JSON body.
    #[default]
    Standard,
    /// A Slack incoming webhook (text and blocks).
    Slack,
}

/// One `[[notify]]` table, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A name for `notify status` and the log (default: the URL's host; the full URL may
    /// carry a token and is never printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// The signing secret (`whsec_` and base64, or raw bytes): required for `standard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Only these events (default: all that reach this endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A member's own endpoint: it hears about that member's requests only (approved,
    /// denied, expired, and `grant.ending`). Without it, the endpoint is the team's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// An endpoint ready to send to.
#[derive(Clone)]
pub struct Endpoint {
    /// Stable across restarts while the URL stays the same: keys its bookkeeping.
    pub id: String,
    pub name: String,
    pub url: String,
    pub format: Format,
    pub secret: Option<Vec<u8>>,
    pub events: Option<Vec<Event>>,
    pub member: Option<Name>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may hold a token) nor the secret.
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .finish()
    }
}

impl Endpoint {
    /// Whether this endpoint hears `event` about a request of `requester`.
    pub fn wants(&self, event: Event, requester: Option<&str>) -> bool {
        if self.events.as_ref().is_some_and(|e| !e.contains(&event)) && event != Event::Test {
            return false;
        }
        match &self.member {
            None => event.for_team(),
            Some(m) => {
                event == Event::Test || (event.for_requester() && requester == Some(m.as_str()))
            }
        }
    }
}

/// Checks every `[[notify]]` table and reads the secrets; `config` names the file for errors.
pub fn load(tables: &[NotifyConfig], config: &Path) -> Result<Vec<Endpoint>> {
    let mut out: Vec<Endpoint> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let at =
            |m: String| Error::Config(format!("{}: [[notify]] #{}: {m}", config.display(), i + 1));
        let host = check_url(&t.url).map_err(at)?;
        let secret = match (&t.secret_file, t.format) {
            (Some(f), _) => Some(read_secret(&beside(config, f), 16).map_err(at)?),
            (None, Format::Standard) => {
                return Err(at(
                    "format \"standard\" signs each message: set secret_file to a 0600 file holding the secret (for example whsec_ and base64 of 32 random bytes)".into(),
                ));
            }
            (None, Format::Slack) => None,
        };
        let events = t
            .events
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(|e| e.parse::<Event>())
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()
            .map_err(|e| at(e.to_string().trim_start_matches("config: ").to_string()))?;
        let member = t
            .member
            .as_deref()
            .map(str::parse::<Name>)
            .transpose()
            .map_err(|e| at(format!("member: {e}")))?;
        let name = t.name.clone().unwrap_or(host);
        if out.iter().any(|e| e.name == name) {
            return Err(at(format!(
                "another endpoint is already named {name}; give each a distinct name = \"...\""
            )));
        }
        if !name.chars().all(|c| c.is_ascii_graphic()) || name.is_empty() || name.len() > 64 {
            return Err(at(
                "name must be 1-64 printable characters without spaces".into()
            ));
        }
        let id = hex::encode(&Sha256::digest(t.url.as_bytes())[..8]);
        if out.iter().any(|e| e.id == id) {
            return Err(at("this url is already configured above".into()));
        }
        out.push(Endpoint {
            id,
            name,
            url: t.url.clone(),
            format: t.format,
            secret,
            events,
            member,
        });
    }
    Ok(out)
}

/// A file named in config.toml: a relative path is relative to config.toml's directory (the
/// data dir), not to wherever the broker was started.
pub fn beside(config: &Path, file: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

/// Checks an http(s) URL and returns its host, for naming it without its path or token.
pub fn check_url(url: &str) -> std::result::Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("url must start with http:// or https://")?;
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(
            "url must be at most 2048 characters, without spaces or control characters".into(),
        );
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("url must not carry a user or password; use secret_file".into());
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if host.is_empty() {
        return Err("url has no host".into());
    }
    Ok(host.to_string())
}

/// Reads a secret file: it must exist, be a file, and be readable by its owner only.
pub fn read_secret(path: &Path, min_len: usize) -> std::result::Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read the secret file {}: {e}; create it with: printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\" > {} && chmod 600 {} (owned by the user the broker runs as)",
            path.display(),
            path.display(),
            path.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:o}, so others can read the secret; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    let key = match text.strip_prefix("whsec_") {
        Some(b64) => Base64::decode_vec(b64).map_err(|_| {
            format!(
                "{} starts with whsec_ but the rest is not base64",
                path.display()
            )
        })?,
        None => text.as_bytes().to_vec(),
    };
    if key.len() < min_len {
        return Err(format!(
            "the secret in {} is shorter than {min_len} bytes; make one with: printf 'whsec_%s\\n' \"$(head -c 32 /dev/urandom | base64)\" > {}",
            path.display(),
            path.display()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(url: &str, format: Format, secret: Option<PathBuf>) -> NotifyConfig {
        NotifyConfig {
            name: None,
            url: url.into(),
            format,
            secret_file: secret,
            events: None,
            member: None,
        }
    }

    fn secret_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let p = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn bad_endpoints_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(dir.path(), 0o600, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let open = secret_file(dir.path(), 0o644, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let cfg = Path::new("config.toml");
        let err = |t: NotifyConfig| load(&[t], cfg).unwrap_err().to_string();
        assert!(err(table("ftp://x/y", Format::Slack, None)).contains("http:// or https://"));
        assert!(err(table("file:///etc/passwd", Format::Slack, None)).contains("http://"));
        assert!(err(table("https://u:p@x/", Format::Slack, None)).contains("user or password"));
        assert!(err(table("http://x/", Format::Standard, None)).contains("set secret_file"));
        assert!(err(table("http://x/", Format::Standard, Some(open))).contains("chmod 600"));
        let missing = dir.path().join("nope");
        assert!(err(table("http://x/", Format::Standard, Some(missing))).contains("cannot read"));
        let mut t = table("http://x/", Format::Standard, Some(good.clone()));
        t.events = Some(vec!["request.exploded".into()]);
        assert!(err(t).contains("is not an event"));
        let ok = load(
            &[table(
                "http://x:8080/hook?t=1",
                Format::Standard,
                Some(good),
            )],
            cfg,
        )
        .unwrap();
        assert_eq!(ok[0].name, "x");
        assert_eq!(ok[0].secret.as_deref().map(<[u8]>::len), Some(24));
    }

    #[test]
    fn an_unknown_format_is_a_config_error() {
        let e = toml::from_str::<NotifyConfig>("url = \"http://x/\"\nformat = \"teams\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn who_hears_what() {
        let mut e = Endpoint {
            id: "x".into(),
            name: "x".into(),
            url: "http://x/".into(),
            format: Format::Standard,
            secret: None,
            events: None,
            member: None,
        };
        assert!(e.wants(Event::RequestCreated, Some("bob")));
        assert!(!e.wants(Event::GrantEnding, Some("bob")));
        e.member = Some("alice".parse().unwrap());
        assert!(e.wants(Event::GrantEnding, Some("alice")));
        assert!(!e.wants(Event::GrantEnding, Some("bob")));
        assert!(!e.wants(Event::RequestCreated, Some("alice")));
        e.member = None;
        e.events = Some(vec![Event::BreakGlassUsed]);
        assert!(!e.wants(Event::RequestCreated, None));
        assert!(e.wants(Event::BreakGlassUsed, None));
        assert!(e.wants(Event::Test, None));
    }
}

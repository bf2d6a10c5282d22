//! Which database engine a broker uses, as `config.toml`'s `[store]` table says: sled in the
//! data dir (the default), or an etcd cluster that several brokers of one team share.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `[store]` in `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// sled in `DATA_DIR/db`: one broker, nothing else to run.
    #[default]
    Sled,
    /// An etcd cluster shared by every broker of the team.
    Etcd(EtcdConfig),
}

impl StoreConfig {
    pub fn is_sled(&self) -> bool {
        matches!(self, StoreConfig::Sled)
    }

    /// Checks the settings; says which is wrong.
    pub fn validate(&self) -> Result<()> {
        match self {
            StoreConfig::Sled => Ok(()),
            StoreConfig::Etcd(e) => e.validate(),
        }
    }

    /// Makes the settings' relative file paths relative to `base` (the config file's dir).
    pub fn resolve(&mut self, base: &Path) {
        if let StoreConfig::Etcd(e) = self {
            for f in [&mut e.ca_file, &mut e.cert_file, &mut e.key_file]
                .into_iter()
                .flatten()
            {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://` or `https://`), tried in turn.
    pub endpoints: Vec<String>,
    /// Every key of this team's broker starts with this.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The CA that signed the members' certificates (PEM), for `https://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This broker's client certificate (PEM), when etcd asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How long one call to etcd may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_prefix() -> String {
    "/sshjit/".into()
}

fn default_timeout_ms() -> u64 {
    3_000
}

impl EtcdConfig {
    /// Settings for `endpoints` (comma-separated) under `prefix`, without TLS.
    pub fn new(endpoints: &str, prefix: Option<&str>) -> Result<EtcdConfig> {
        let cfg = EtcdConfig {
            endpoints: endpoints
                .split(',')
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: prefix.map_or_else(default_prefix, str::to_string),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_ms: default_timeout_ms(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The same settings with TLS files (absolute paths), checked again.
    pub fn with_tls(
        mut self,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<EtcdConfig> {
        (self.ca_file, self.cert_file, self.key_file) = (ca_file, cert_file, key_file);
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("[store] {m}")));
        if self.endpoints.is_empty() {
            return bad(
                "etcd needs at least one endpoint, such as endpoints = [\"http://10.0.0.1:2379\"]"
                    .into(),
            );
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(hostport)
                    if !hostport.is_empty() && !hostport.contains(['/', '?', '#', '@']) => {}
                _ => {
                    return bad(format!(
                        "endpoint {e:?} is not an etcd client URL; write it as http://HOST:PORT or https://HOST:PORT"
                    ));
                }
            }
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return bad(
                "TLS files are set but an endpoint is http://; use https:// endpoints with TLS"
                    .into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("cert_file and key_file go together; set both or neither".into());
        }
        if self.prefix.is_empty() || self.prefix.len() > 128 || self.prefix.contains('\0') {
            return bad(format!(
                "prefix {:?} must be 1 to 128 characters without NUL, such as \"/sshjit/team-a/\"",
                self.prefix
            ));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return bad(format!(
                "timeout_ms = {} must be between 100 and 60000",
                self.timeout_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> std::result::Result<StoreConfig, String> {
        let c: StoreConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn sled_is_the_default_and_etcd_reads_its_settings() {
        assert_eq!(config("engine = \"sled\"").unwrap(), StoreConfig::Sled);
        let c = config("engine = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]").unwrap();
        let StoreConfig::Etcd(e) = c else {
            panic!("not etcd")
        };
        assert_eq!(e.prefix, "/sshjit/");
        assert_eq!(e.timeout_ms, 3_000);
    }

    #[test]
    fn bad_etcd_settings_are_refused_with_the_fix() {
        let cases = [
            ("endpoints = []", "at least one endpoint"),
            ("endpoints = [\"127.0.0.1:2379\"]", "http://HOST:PORT"),
            ("endpoints = [\"http://a:1/x\"]", "not an etcd client URL"),
            (
                "endpoints = [\"http://a:1\"]\nca_file = \"ca.pem\"",
                "use https:// endpoints",
            ),
            (
                "endpoints = [\"https://a:1\"]\ncert_file = \"c.pem\"",
                "set both or neither",
            ),
            ("endpoints = [\"http://a:1\"]\nprefix = \"\"", "1 to 128"),
            (
                "endpoints = [\"http://a:1\"]\ntimeout_ms = 5",
                "between 100",
            ),
            ("endpoints = [\"http://a:1\"]\nwho = 1", "unknown field"),
        ];
        for (text, says) in cases {
            let err = config(&format!("engine = \"etcd\"\n{text}")).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert!(config("engine = \"postgres\"").is_err());
    }

    #[test]
    fn relative_tls_files_are_read_beside_the_config() {
        let mut c = config(
            "engine = \"etcd\"\nendpoints = [\"https://a:1\"]\nca_file = \"ca.pem\"\ncert_file = \"/etc/c.pem\"\nkey_file = \"k.pem\"",
        )
        .unwrap();
        c.resolve(Path::new("/data"));
        let StoreConfig::Etcd(e) = c else {
            panic!("not etcd")
        };
        assert_eq!(e.ca_file.unwrap(), Path::new("/data/ca.pem"));
        assert_eq!(e.cert_file.unwrap(), Path::new("/etc/c.pem"));
        assert_eq!(e.key_file.unwrap(), Path::new("/data/k.pem"));
    }
}

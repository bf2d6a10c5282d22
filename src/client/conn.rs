//! The client side of the SSH transport: connect, check the broker's key, authenticate, run commands.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, AuthResult, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use serde::de::DeserializeOwned;

use super::known::{self, HostKeyPolicy};
use super::witness::{Seen, Witness};
use super::{Identity, Settings};
use crate::ca;
use crate::contract::CertView;
use crate::error::{Error, Result};

/// What a broker command printed and its exit status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: u32,
}

impl Answer {
    /// The answer as the contract type `T` (see [`crate::contract`]), or the broker's error.
    /// A field the contract requires and the answer lacks is an error, never a default.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T> {
        if self.status != 0 {
            return Err(self.remote_error());
        }
        serde_json::from_slice(&self.stdout).map_err(|e| {
            Error::Internal(format!(
                "the broker's answer does not match this helper's contract ({e}); the broker and the helper may be different versions"
            ))
        })
    }

    /// The broker's error, from its `--json` form when it has one.
    pub fn remote_error(&self) -> Error {
        let text = String::from_utf8_lossy(&self.stderr);
        if let Ok(body) = serde_json::from_str::<crate::contract::ErrorBody>(text.trim()) {
            return Error::Remote {
                code: body.error.code,
                message: body.error.message,
            };
        }
        Error::Remote {
            code: "remote".into(),
            message: text.trim().trim_start_matches("error: ").to_string(),
        }
    }
}

/// An authenticated connection to the broker, whose audit log was proven to extend what this
/// client saw before; commands run one per channel.
pub struct Connection {
    handle: Handle<Checker>,
    witness: Witness,
    /// The checkpoint verified when the connection opened.
    seen: Option<Seen>,
}

/// Checks the broker's host key against the known-brokers file.
struct Checker {
    policy: HostKeyPolicy,
    refusal: Arc<Mutex<Option<Error>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            self.refuse(Error::BrokerKey(
                "the broker presented a certificate as its host key; sshjit pins plain keys".into(),
            ));
            return Ok(false);
        };
        let policy = self.policy.clone();
        let key = key.clone();
        let verdict = tokio::task::spawn_blocking(move || known::check(&policy, &key))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(e.to_string())));
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                self.refuse(e);
                Ok(false)
            }
        }
    }
}

impl Checker {
    fn refuse(&self, e: Error) {
        if let Ok(mut r) = self.refusal.lock() {
            *r = Some(e);
        }
    }
}

impl Connection {
    /// Connects to the broker in `settings`, checks its key and authenticates.
    pub async fn open(settings: &Settings) -> Result<Connection> {
        let config = Arc::new(client::Config {
            nodelay: true,
            inactivity_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        });
        let refusal = Arc::new(Mutex::new(None));
        let checker = Checker {
            policy: settings.host_key_policy(),
            refusal: refusal.clone(),
        };
        let addr = settings.broker.clone();
        let connecting = client::connect(config, addr.as_str(), checker);
        let mut handle = match tokio::time::timeout(Duration::from_secs(20), connecting).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                if let Some(refused) = refusal.lock().ok().and_then(|mut r| r.take()) {
                    return Err(refused);
                }
                return Err(Error::Connect(format!(
                    "cannot reach the broker at {addr}: {e}; check --broker, SSHJIT_BROKER or broker = in the config file"
                )));
            }
            Err(_) => {
                return Err(Error::Connect(format!(
                    "the broker at {addr} did not answer within 20 s; check the address and that the broker is running"
                )));
            }
        };
        let ok = match &settings.identity {
            Identity::File(path) => auth_file(&mut handle, path).await?,
            Identity::Agent(fingerprint) => auth_agent(&mut handle, fingerprint.as_deref()).await?,
        };
        if !ok {
            return Err(Error::Auth(format!(
                "the broker at {addr} did not accept {}; ask an owner or admin to add your public key with 'member add'",
                settings.identity
            )));
        }
        let mut conn = Connection {
            handle,
            witness: settings.witness(),
            seen: None,
        };
        // Every contact is a witness's contact: no command runs on a log that was cut,
        // rewritten or forked since this client last saw it.
        conn.seen = Some(conn.witness.on_contact(&conn).await?);
        Ok(conn)
    }

    /// The checkpoint of the broker's log verified when the connection opened.
    pub fn seen(&self) -> Option<&Seen> {
        self.seen.as_ref()
    }

    /// Checks that `cert` is in the broker's log, and that the log still extends what this
    /// client saw, before the certificate is used.
    pub async fn check_certificate(&self, cert: &CertView) -> Result<()> {
        let seen = self
            .seen
            .as_ref()
            .ok_or_else(|| Error::Internal("the connection has not checked the log".into()))?;
        self.witness.check_certificate(self, seen, cert).await
    }

    /// Runs one command line on a new channel, sending `stdin` and then EOF.
    pub async fn run(&self, line: &str, stdin: &[u8]) -> Result<Answer> {
        let lost =
            |e: russh::Error| Error::Connect(format!("lost the connection to the broker: {e}"));
        let mut channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel
            .exec(true, line.as_bytes().to_vec())
            .await
            .map_err(lost)?;
        if !stdin.is_empty() {
            channel.data_bytes(stdin.to_vec()).await.map_err(lost)?;
        }
        channel.eof().await.map_err(lost)?;
        let mut answer = Answer {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: 255,
        };
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => answer.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => answer.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => answer.status = exit_status,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(answer)
    }

    /// Runs broker command `words` with `--json` and reads its answer as contract type `T`.
    pub async fn call<T: DeserializeOwned>(&self, words: &[&str]) -> Result<T> {
        self.run(&quote_line(words, true), b"").await?.typed()
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await;
    }
}

/// Joins words into an exec line the broker splits back into the same words.
pub fn quote_line(words: &[&str], json: bool) -> String {
    let mut parts: Vec<String> = words
        .iter()
        .map(|w| {
            shlex::try_quote(w)
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| w.replace('\0', ""))
        })
        .collect();
    if json {
        parts.push("--json".into());
    }
    parts.join(" ")
}

/// The best RSA signature hash the broker supports (ignored for other key types).
async fn rsa_hash(handle: &Handle<Checker>) -> Option<russh::keys::HashAlg> {
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

async fn auth_file(handle: &mut Handle<Checker>, path: &Path) -> Result<bool> {
    let key = russh::keys::load_secret_key(path, None).map_err(|e| {
        Error::Auth(format!(
            "cannot use the identity key {}: {e}. Give an unencrypted key file, or use a key in ssh-agent with --identity agent",
            path.display()
        ))
    })?;
    let hash = rsa_hash(handle).await;
    let result = handle
        .authenticate_publickey("sshjit", PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(|e| Error::Connect(format!("authentication failed: {e}")))?;
    Ok(matches!(result, AuthResult::Success))
}

async fn auth_agent(handle: &mut Handle<Checker>, want: Option<&str>) -> Result<bool> {
    let mut agent = AgentClient::connect_env().await.map_err(|e| {
        Error::Auth(format!(
            "cannot reach ssh-agent ({e}); start one (eval $(ssh-agent)) and ssh-add your key, or use --identity FILE"
        ))
    })?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| Error::Auth(format!("ssh-agent did not list its keys: {e}")))?;
    let keys: Vec<PublicKey> = identities
        .into_iter()
        .filter_map(|i| match i {
            AgentIdentity::PublicKey { key, .. } => Some(key),
            AgentIdentity::Certificate { .. } => None,
        })
        .filter(|k| want.is_none_or(|fp| ca::fingerprint(k.key_data()) == fp))
        .collect();
    if keys.is_empty() {
        return Err(Error::Auth(match want {
            Some(fp) => format!("ssh-agent holds no key {fp}; add it with ssh-add"),
            None => "ssh-agent holds no keys; add yours with ssh-add".into(),
        }));
    }
    let hash = rsa_hash(handle).await;
    for key in keys {
        let result = handle
            .authenticate_publickey_with("sshjit", key, hash, &mut agent)
            .await;
        if matches!(result, Ok(AuthResult::Success)) {
            return Ok(true);
        }
    }
    Ok(false)
}

//! A small client for etcd's v3 API through its JSON gateway (`/v3/kv/*`, `/v3/watch`), which
//! every etcd member serves on its client URLs: blocking calls that fit the storage port, over
//! the HTTP client the broker already has, with no code generation.
//!
//! Members are tried in turn: one that refuses the connection is skipped; one that answers
//! "no leader" or times out means the cluster cannot commit, which is said plainly.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64ct::{Base64, Encoding};
use serde_json::{Value, json};

use super::backend::EtcdConfig;
use crate::error::{Error, Result};

/// Why a call failed.
#[derive(Debug)]
pub(super) enum Fail {
    /// No member could be asked, or the cluster could not answer in time (no quorum):
    /// a write may or may not have been applied.
    Unavailable(String),
    /// etcd answered and refused the call.
    Refused(String),
}

impl Fail {
    pub(super) fn into_error(self) -> Error {
        match self {
            Fail::Unavailable(m) => Error::StoreUnavailable(m),
            Fail::Refused(m) => Error::Storage(format!("etcd refused a call: {m}")),
        }
    }
}

/// What a watch tells: it (re)started at a revision; keys changed (each with the revision of
/// its change), and the store has been seen through a revision; or it broke off.
pub(super) enum Watched {
    Started(i64),
    Changed(Vec<(Vec<u8>, i64)>, i64),
    Lost,
}

/// A key and value as etcd returns them, with the revision of the key's last change.
pub(super) struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A connection to one etcd cluster.
pub(super) struct Etcd {
    endpoints: Vec<String>,
    /// The member that answered last: asked first next time.
    current: AtomicUsize,
    agent: ureq::Agent,
    /// For watches, which stay open: no overall time limit.
    watch_agent: ureq::Agent,
}

impl Etcd {
    pub(super) fn connect(cfg: &EtcdConfig) -> Result<Etcd> {
        let tls = tls_config(cfg)?;
        let base = || {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls.clone())
                .timeout_connect(Some(Duration::from_millis(cfg.timeout_ms.min(1_000))))
                .max_idle_connections_per_host(64)
        };
        Ok(Etcd {
            endpoints: cfg.endpoints.clone(),
            current: AtomicUsize::new(0),
            agent: base()
                .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
                .build()
                .into(),
            watch_agent: base().build().into(),
        })
    }

    /// Calls `path` (such as `/v3/kv/range`) with `body` on the first member that answers.
    pub(super) fn call(&self, path: &str, body: &Value) -> std::result::Result<Value, Fail> {
        tracing::trace!(path, "etcd call");
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let at = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            let sent = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes());
            match sent {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let v: Value = resp
                        .body_mut()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_vec()
                        .map_err(|e| e.to_string())
                        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                        .map_err(|e| Fail::Refused(format!("{url} answered {status}: {e}")))?;
                    if status == 200 {
                        self.current.store(at, Ordering::Relaxed);
                        return Ok(v);
                    }
                    let message = v["message"].as_str().unwrap_or("no message").to_string();
                    // gRPC codes: 14 unavailable, 4 deadline exceeded: the cluster cannot
                    // answer now (no leader, no quorum). Anything else is a real refusal.
                    match v["code"].as_i64() {
                        Some(14) | Some(4) => {
                            last = format!("{}: {message}", self.endpoints[at]);
                            if message.contains("timed out") {
                                break;
                            }
                        }
                        _ => return Err(Fail::Refused(format!("{url}: {message}"))),
                    }
                }
                Err(ureq::Error::Timeout(_)) => {
                    // A member that takes this long is waiting for a quorum; asking the
                    // next would only wait again.
                    last = format!("{} did not answer in time", self.endpoints[at]);
                    break;
                }
                Err(e) => last = format!("{}: {e}", self.endpoints[at]),
            }
        }
        Err(Fail::Unavailable(last))
    }

    /// The entries of `[key, end)` (or only `key` when `end` is None), at most `limit`
    /// (0: all), in key order or reversed, at `revision` (0: the newest); and the revision read.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn range(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        descend: bool,
        revision: i64,
        serializable: bool,
    ) -> std::result::Result<(Vec<Kv>, bool, i64), Fail> {
        let mut body = json!({ "key": b64(key), "sort_target": "KEY" });
        if let Some(end) = end {
            body["range_end"] = b64(end).into();
        }
        if limit > 0 {
            body["limit"] = limit.into();
        }
        body["sort_order"] = if descend { "DESCEND" } else { "ASCEND" }.into();
        if revision > 0 {
            body["revision"] = revision.into();
        }
        if serializable {
            body["serializable"] = true.into();
        }
        let v = self.call("/v3/kv/range", &body)?;
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(kv).collect::<std::result::Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok((
            kvs,
            v["more"].as_bool() == Some(true),
            int(&v["header"]["revision"]),
        ))
    }

    /// Runs a transaction: if every compare holds, the puts (`Some`) and deletes (`None`).
    /// Returns whether the compares held, and the revision of the store after the call (the
    /// revision of the writes when they were made).
    pub(super) fn txn(
        &self,
        compare: Vec<Value>,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> std::result::Result<(bool, i64), Fail> {
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "compare": compare, "success": writes(ops) }),
        )?;
        Ok((
            v["succeeded"].as_bool() == Some(true),
            int(&v["header"]["revision"]),
        ))
    }

    /// Writes `ops` if none of `read` (key, mod revision) has changed. If one has, reads them
    /// all back in the same call, so that a retry needs no further round trip.
    pub(super) fn txn_or_read(
        &self,
        read: &[(&[u8], i64)],
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> std::result::Result<Txn, Fail> {
        let compare: Vec<Value> = read.iter().map(|(k, r)| unchanged_since(k, *r)).collect();
        let failure: Vec<Value> = read
            .iter()
            .map(|(k, _)| json!({ "request_range": { "key": b64(k) } }))
            .collect();
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "compare": compare, "success": writes(ops), "failure": failure }),
        )?;
        let revision = int(&v["header"]["revision"]);
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Txn::Committed(revision));
        }
        let mut now = Vec::with_capacity(read.len());
        for (i, (k, _)) in read.iter().enumerate() {
            let found = match v["responses"][i]["response_range"]["kvs"].as_array() {
                Some(kvs) if !kvs.is_empty() => {
                    let kv = kv(&kvs[0])?;
                    (kv.mod_revision, Some(kv.value))
                }
                _ => (0, None),
            };
            now.push((k.to_vec(), found));
        }
        Ok(Txn::Changed(now, revision))
    }

    /// Deletes every key in `[key, end)`.
    pub(super) fn delete_range(&self, key: &[u8], end: &[u8]) -> std::result::Result<(), Fail> {
        self.call(
            "/v3/kv/deleterange",
            &json!({ "key": b64(key), "range_end": b64(end) }),
        )?;
        Ok(())
    }

    /// Follows every change to keys in `[key, end)` after `revision`, telling `seen` of each
    /// message until `stop` says so. Reconnects (to the next member) when the stream breaks,
    /// from where it left off.
    pub(super) fn watch(
        self: Arc<Self>,
        key: Vec<u8>,
        end: Vec<u8>,
        mut revision: i64,
        stop: impl Fn() -> bool,
        seen: impl Fn(Watched),
    ) {
        let mut at = 0;
        while !stop() {
            let url = format!("{}/v3/watch", self.endpoints[at % self.endpoints.len()]);
            let mut create = json!({ "key": b64(&key), "range_end": b64(&end) });
            if revision > 0 {
                create["start_revision"] = (revision + 1).into();
            }
            let stream = self
                .watch_agent
                .post(&url)
                .header("content-type", "application/json")
                .send(json!({ "create_request": create }).to_string().as_bytes());
            if let Ok(mut resp) = stream {
                let reader =
                    std::io::BufReader::new(resp.body_mut().with_config().limit(u64::MAX).reader());
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        break;
                    };
                    let r = &v["result"];
                    if r["canceled"].as_bool() == Some(true) {
                        // Compacted past our revision: carry on from now.
                        revision = 0;
                        break;
                    }
                    let through = int(&r["header"]["revision"]);
                    if r["created"].as_bool() == Some(true) {
                        seen(Watched::Started(through));
                        continue;
                    }
                    let changed = r["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| {
                            let k = unb64(&e["kv"]["key"]).ok()?;
                            Some((k, int(&e["kv"]["mod_revision"])))
                        })
                        .collect();
                    seen(Watched::Changed(changed, through));
                    revision = revision.max(through);
                    if stop() {
                        return;
                    }
                }
            }
            seen(Watched::Lost);
            at += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn tls_config(cfg: &EtcdConfig) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, parse_pem};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(Error::io(format!("cannot read {}", p.display())))
    };
    let pem_error =
        |p: &std::path::Path, e: ureq::Error| Error::Config(format!("{}: {e}", p.display()));
    let mut b = TlsConfig::builder();
    if let Some(p) = &cfg.ca_file {
        let mut roots = Vec::new();
        for item in parse_pem(&read(p)?) {
            if let PemItem::Certificate(c) = item.map_err(|e| pem_error(p, e))? {
                roots.push(c);
            }
        }
        if roots.is_empty() {
            return Err(Error::Config(format!(
                "{} holds no PEM certificate; ca_file must be the CA that signed etcd's certificates",
                p.display()
            )));
        }
        b = b.root_certs(RootCerts::Specific(Arc::new(roots)));
    }
    if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
        let (mut chain, mut key) = (Vec::new(), None);
        for item in parse_pem(&read(c)?) {
            if let PemItem::Certificate(cert) = item.map_err(|e| pem_error(c, e))? {
                chain.push(cert);
            }
        }
        for item in parse_pem(&read(k)?) {
            if let PemItem::PrivateKey(pk) = item.map_err(|e| pem_error(k, e))? {
                key = Some(pk);
            }
        }
        let Some(key) = key.filter(|_| !chain.is_empty()) else {
            return Err(Error::Config(format!(
                "{} or {} holds no PEM certificate or key; cert_file and key_file must be this broker's client certificate and its key",
                c.display(),
                k.display()
            )));
        };
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

/// A key's value with the revision of its last change (0 and None: absent).
pub(super) type Versioned = (i64, Option<Vec<u8>>);

/// How a guarded transaction ended.
pub(super) enum Txn {
    /// Written, at this revision.
    Committed(i64),
    /// Something read had changed: what the keys hold now, as of a revision.
    Changed(Vec<(Vec<u8>, Versioned)>, i64),
}

fn writes(ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<Value> {
    ops.iter()
        .map(|(k, v)| match v {
            Some(v) => json!({ "request_put": { "key": b64(k), "value": b64(v) } }),
            None => json!({ "request_delete_range": { "key": b64(k) } }),
        })
        .collect()
}

pub(super) fn b64(bytes: &[u8]) -> String {
    Base64::encode_string(bytes)
}

fn unb64(v: &Value) -> std::result::Result<Vec<u8>, Fail> {
    Base64::decode_vec(v.as_str().unwrap_or(""))
        .map_err(|_| Fail::Refused("etcd sent a key or value that is not base64".into()))
}

/// An int64 field, which the gateway writes as a string.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

fn kv(v: &Value) -> std::result::Result<Kv, Fail> {
    Ok(Kv {
        key: unb64(&v["key"])?,
        value: unb64(&v["value"])?,
        mod_revision: int(&v["mod_revision"]),
    })
}

/// A compare that holds while `key` is unchanged since `revision` (0: while it is absent).
fn unchanged_since(key: &[u8], revision: i64) -> Value {
    json!({ "key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision })
}

/// A compare that holds while `key` holds `value` (None: while it is absent).
pub(super) fn holds(key: &[u8], value: Option<&[u8]>) -> Value {
    match value {
        Some(v) => {
            json!({ "key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(v) })
        }
        None => {
            json!({ "key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0 })
        }
    }
}

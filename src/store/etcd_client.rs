//! A small client for etcd's v3 gRPC API (`KV` and `Watch`), with blocking calls that fit the
//! storage port. The calls run on the client's own small tokio runtime, so a caller on any
//! thread, a runtime's or not, can wait for them.
//!
//! Members are tried in turn: one that refuses the connection is skipped; one that answers
//! "no leader" or times out means the cluster cannot commit, which is said plainly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::backend::EtcdConfig;
use super::etcd_proto as pb;
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
/// its change and the value it now holds, None when deleted), and the store has been seen
/// through a revision; or it broke off.
pub(super) enum Watched {
    Started(i64),
    Changed(Vec<(Vec<u8>, Versioned)>, i64),
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
    channels: Vec<Channel>,
    /// The member that answered last: asked first next time.
    current: AtomicUsize,
    timeout: Duration,
    /// Runs the calls; shut down without waiting when the client goes.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Etcd {
    pub(super) fn connect(cfg: &EtcdConfig) -> Result<Etcd> {
        let tls = tls_config(cfg)?;
        // Every endpoint is checked before the runtime exists: dropping a runtime on an error
        // path inside the caller's async context would panic.
        let mut endpoints = Vec::new();
        for url in &cfg.endpoints {
            let bad = |e: tonic::transport::Error| {
                Error::Config(format!("etcd endpoint {url} is not usable: {e}"))
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(bad)?
                .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(1_000)))
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
            }
            endpoints.push(endpoint);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sshjit-etcd")
            .enable_all()
            .build()
            .map_err(Error::io("cannot start the etcd client's threads"))?;
        // Channels connect lazily, on the runtime that will drive them.
        let channels = {
            let _inside = runtime.enter();
            endpoints.iter().map(Endpoint::connect_lazy).collect()
        };
        Ok(Etcd {
            endpoints: cfg.endpoints.clone(),
            channels,
            current: AtomicUsize::new(0),
            timeout: Duration::from_millis(cfg.timeout_ms),
            runtime: Some(runtime),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only Drop takes it out.
        self.runtime.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Calls the unary method `path` with `request` on the first member that answers. A `write`
    /// goes to the next member only when the last one could not be reached at all: after any
    /// other failure it may have been applied, and sending it again would apply it twice, so
    /// the caller is told it is unavailable and checks what landed.
    fn call<Req, Resp>(
        &self,
        path: &'static str,
        write: bool,
        request: Req,
    ) -> std::result::Result<Resp, Fail>
    where
        Req: prost::Message + Clone + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        tracing::trace!(path, "etcd call");
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        // Moved into the last attempt; earlier ones send a copy.
        let mut request = Some(request);
        for i in 0..n {
            let at = (start + i) % n;
            let request = match request.take() {
                Some(r) if i + 1 < n => {
                    let copy = r.clone();
                    request = Some(r);
                    copy
                }
                Some(r) => r,
                None => break,
            };
            let (channel, timeout) = (self.channels[at].clone(), self.timeout);
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.runtime().spawn(async move {
                let mut grpc = client(channel);
                let answer = tokio::time::timeout(timeout, async {
                    grpc.ready()
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    grpc.unary(
                        tonic::Request::new(request),
                        PathAndQuery::from_static(path),
                        tonic_prost::ProstCodec::<Req, Resp>::default(),
                    )
                    .await
                })
                .await;
                let _ = tx.send(answer);
            });
            let answer = rx
                .recv()
                .map_err(|_| Fail::Unavailable("the etcd client stopped".into()))?;
            match answer {
                Ok(Ok(resp)) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                // A member that takes this long is waiting for a quorum; asking the next would
                // only wait again.
                Err(_) => {
                    last = format!("{} did not answer in time", self.endpoints[at]);
                    break;
                }
                // Unavailable, deadline exceeded: the cluster cannot answer now (no leader, no
                // quorum). A transport error: this member cannot be reached (or TLS failed).
                // Anything else is a real refusal.
                Ok(Err(status)) => {
                    let why = format!("{}: {}", self.endpoints[at], explain(&status));
                    match status.code() {
                        _ if write && !unreached(&status) => {
                            if status.code() == Code::Unavailable
                                || status.code() == Code::DeadlineExceeded
                                || is_transport(&status)
                            {
                                return Err(Fail::Unavailable(why));
                            }
                            return Err(Fail::Refused(why));
                        }
                        Code::Unavailable | Code::DeadlineExceeded => {
                            last = why;
                            if status.message().contains("timed out") {
                                break;
                            }
                        }
                        _ if is_transport(&status) => last = why,
                        _ => return Err(Fail::Refused(why)),
                    }
                }
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
        let request = pb::RangeRequest {
            key: key.to_vec(),
            range_end: end.map(<[u8]>::to_vec).unwrap_or_default(),
            limit: limit as i64,
            revision,
            sort_order: if descend { pb::DESCEND } else { pb::ASCEND },
            serializable,
        };
        let r: pb::RangeResponse = self.call(pb::RANGE, false, request)?;
        Ok((
            r.kvs.into_iter().map(Kv::from).collect(),
            r.more,
            revision_of(&r.header),
        ))
    }

    /// Runs a transaction: if every compare holds, the puts (`Some`) and deletes (`None`).
    /// Returns whether the compares held, and the revision of the store after the call (the
    /// revision of the writes when they were made).
    pub(super) fn txn(
        &self,
        compare: Vec<pb::Compare>,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> std::result::Result<(bool, i64), Fail> {
        let request = pb::TxnRequest {
            compare,
            success: writes(ops),
            failure: Vec::new(),
        };
        let r: pb::TxnResponse = self.call(pb::TXN, true, request)?;
        Ok((r.succeeded, revision_of(&r.header)))
    }

    /// Writes `ops` if none of `read` (key, mod revision) has changed. If one has, reads them
    /// all back in the same call, so that a retry needs no further round trip.
    pub(super) fn txn_or_read(
        &self,
        read: &[(&[u8], i64)],
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> std::result::Result<Txn, Fail> {
        let request = pb::TxnRequest {
            compare: read.iter().map(|(k, r)| unchanged_since(k, *r)).collect(),
            success: writes(ops),
            failure: read
                .iter()
                .map(|(k, _)| pb::RequestOp {
                    request: Some(pb::Request::Range(pb::RangeRequest {
                        key: k.to_vec(),
                        ..Default::default()
                    })),
                })
                .collect(),
        };
        let r: pb::TxnResponse = self.call(pb::TXN, true, request)?;
        let revision = revision_of(&r.header);
        if r.succeeded {
            return Ok(Txn::Committed(revision));
        }
        let mut now = Vec::with_capacity(read.len());
        let mut answers = r.responses.into_iter();
        for (k, _) in read {
            let found = match answers.next().and_then(|op| op.response) {
                Some(pb::Response::Range(range)) => range.kvs.into_iter().next(),
                None => None,
            };
            let found = found.map_or((0, None), |kv| (kv.mod_revision, Some(kv.value)));
            now.push((k.to_vec(), found));
        }
        Ok(Txn::Changed(now, revision))
    }

    /// Deletes every key in `[key, end)`.
    pub(super) fn delete_range(&self, key: &[u8], end: &[u8]) -> std::result::Result<(), Fail> {
        let request = pb::DeleteRangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
        };
        let _: pb::DeleteRangeResponse = self.call(pb::DELETE_RANGE, true, request)?;
        Ok(())
    }

    /// Follows every change to keys in `[key, end)` after `revision`, telling `seen` of each
    /// message until `stop` says so. Reconnects (to the next member) when the stream breaks,
    /// from where it left off. Runs on the calling thread, which must not be a runtime's.
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
            let channel = self.channels[at % self.channels.len()].clone();
            let create = pb::WatchRequest {
                request_union: Some(pb::WatchRequestUnion::Create(pb::WatchCreateRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    start_revision: if revision > 0 { revision + 1 } else { 0 },
                })),
            };
            self.runtime().block_on(async {
                // The request stream stays open while the watch runs: closing it ends the watch.
                let (keep, open) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
                if keep.try_send(create).is_err() {
                    return;
                }
                let requests = tokio_stream::wrappers::ReceiverStream::new(open);
                let mut grpc = client(channel);
                let started = tokio::time::timeout(self.timeout, async {
                    grpc.ready()
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    grpc.streaming(
                        tonic::Request::new(requests),
                        PathAndQuery::from_static(pb::WATCH),
                        tonic_prost::ProstCodec::<pb::WatchRequest, pb::WatchResponse>::default(),
                    )
                    .await
                })
                .await;
                let Ok(Ok(answer)) = started else { return };
                let mut stream = answer.into_inner();
                loop {
                    // Wakes every second to see whether to stop.
                    let message = match tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.message(),
                    )
                    .await
                    {
                        Err(_) if stop() => return,
                        Err(_) => continue,
                        Ok(Ok(Some(m))) => m,
                        Ok(_) => return,
                    };
                    if message.canceled {
                        // Compacted past our revision: carry on from now.
                        revision = 0;
                        return;
                    }
                    let through = revision_of(&message.header);
                    if message.created {
                        seen(Watched::Started(through));
                        continue;
                    }
                    // A watcher far behind gets its events in parts, each stamped with the
                    // newest revision: a resumed watch starts after the last event received.
                    if let Some(last) = message
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .next_back()
                    {
                        revision = revision.max(last.mod_revision);
                    }
                    let changed = message
                        .events
                        .into_iter()
                        .filter_map(|e| {
                            let kv = e.kv?;
                            let value = (e.kind != pb::DELETE).then_some(kv.value);
                            Some((kv.key, (kv.mod_revision, value)))
                        })
                        .collect();
                    seen(Watched::Changed(changed, through));
                    if stop() {
                        return;
                    }
                }
            });
            if stop() {
                return;
            }
            seen(Watched::Lost);
            at += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which a runtime's own thread may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// TLS for `https://` members: the CA that signed their certificates (else the public web
/// roots) and this broker's client certificate, each checked to hold what it should.
fn tls_config(cfg: &EtcdConfig) -> Result<ClientTlsConfig> {
    use tonic::transport::{Certificate, Identity};
    use ureq::tls::{PemItem, parse_pem};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(Error::io(format!("cannot read {}", p.display())))
    };
    let count = |p: &std::path::Path, pem: &[u8], want: fn(&PemItem) -> bool| {
        let mut n = 0;
        for item in parse_pem(pem) {
            let item = item.map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
            n += usize::from(want(&item));
        }
        Ok::<_, Error>(n)
    };
    let is_cert = |i: &PemItem| matches!(i, PemItem::Certificate(_));
    let mut tls = ClientTlsConfig::new();
    match &cfg.ca_file {
        Some(p) => {
            let pem = read(p)?;
            if count(p, &pem, is_cert)? == 0 {
                return Err(Error::Config(format!(
                    "{} holds no PEM certificate; ca_file must be the CA that signed etcd's certificates",
                    p.display()
                )));
            }
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => tls = tls.with_webpki_roots(),
    }
    if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
        let (chain, key) = (read(c)?, read(k)?);
        let is_key = |i: &PemItem| matches!(i, PemItem::PrivateKey(_));
        if count(c, &chain, is_cert)? == 0 || count(k, &key, is_key)? == 0 {
            return Err(Error::Config(format!(
                "{} or {} holds no PEM certificate or key; cert_file and key_file must be this broker's client certificate and its key",
                c.display(),
                k.display()
            )));
        }
        tls = tls.identity(Identity::from_pem(chain, key));
    }
    Ok(tls)
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

fn writes(ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<pb::RequestOp> {
    ops.iter()
        .map(|(k, v)| pb::RequestOp {
            request: Some(match v {
                Some(v) => pb::Request::Put(pb::PutRequest {
                    key: k.clone(),
                    value: v.clone(),
                }),
                None => pb::Request::DeleteRange(pb::DeleteRangeRequest {
                    key: k.clone(),
                    range_end: Vec::new(),
                }),
            }),
        })
        .collect()
}

/// A gRPC client on `channel` that takes answers up to 64 MiB (a page of large values; tonic's
/// default is 4 MiB).
fn client(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20)
}

/// Whether a call failed in the transport (connecting, TLS), not in etcd.
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// Whether a call failed before it reached the member: the connection was refused or had no
/// route, so nothing was sent.
fn unreached(status: &Status) -> bool {
    use std::io::ErrorKind::*;
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A failed call's message with its causes ("transport error: ...: invalid peer certificate").
fn explain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

impl From<pb::KeyValue> for Kv {
    fn from(kv: pb::KeyValue) -> Kv {
        Kv {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
        }
    }
}

/// A compare that holds while `key` is unchanged since `revision` (0: while it is absent).
fn unchanged_since(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: 0,
        target: pb::MOD,
        key: key.to_vec(),
        against: Some(pb::Against::ModRevision(revision)),
    }
}

/// A compare that holds while `key` holds `value` (None: while it is absent).
pub(super) fn holds(key: &[u8], value: Option<&[u8]>) -> pb::Compare {
    let (target, against) = match value {
        Some(v) => (pb::VALUE, pb::Against::Value(v.to_vec())),
        None => (pb::CREATE, pb::Against::CreateRevision(0)),
    };
    pb::Compare {
        result: 0,
        target,
        key: key.to_vec(),
        against: Some(against),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on.
    fn refused() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    fn etcd(endpoints: &[&str]) -> Etcd {
        Etcd::connect(&EtcdConfig::new(&endpoints.join(","), None).unwrap()).unwrap()
    }

    fn unavailable<T>(r: std::result::Result<T, Fail>) -> String {
        match r {
            Err(Fail::Unavailable(m)) => m,
            Err(Fail::Refused(m)) => panic!("refused, not unavailable: {m}"),
            Ok(_) => panic!("succeeded"),
        }
    }

    #[test]
    fn a_write_moves_on_only_from_a_member_it_never_reached() {
        // A member that accepts the connection and drops it: the write may have reached it.
        let dropper = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dropped = format!("http://{}", dropper.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in dropper.incoming() {
                drop(s);
            }
        });
        let (a, b) = (refused(), refused());
        let write = |e: &Etcd| unavailable(e.txn(Vec::new(), &[(b"k".to_vec(), None)]));
        // Refused: nothing was sent, so the next member is tried (and named last).
        let m = write(&etcd(&[&a, &b]));
        assert!(m.contains(&b[7..]), "{m}");
        // Dropped after connecting: the write stops there, so it cannot be applied twice.
        let m = write(&etcd(&[&dropped, &b]));
        assert!(m.contains(&dropped[7..]), "{m}");
        // A read is safe to repeat anywhere.
        let m = unavailable(etcd(&[&dropped, &b]).range(b"k", None, 0, false, 0, false));
        assert!(m.contains(&b[7..]), "{m}");
    }
}

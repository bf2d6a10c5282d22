//! The broker's database: typed records, indexes, and one transaction per change, over the
//! storage port in `engine.rs` (sled behind it in `sled_engine.rs`, the only file naming sled).
//!
//! Architecture invariant: every state change goes through [`Store::apply`], whose closure
//! must return at least one audit event; the change and its audit entries commit in one
//! transaction, and the database is flushed before the caller hears of success (with group
//! commit: concurrent changes share one flush).

mod backend;
mod copy;
mod decoded;
mod engine;
mod etcd_batch;
mod etcd_client;
mod etcd_engine;
mod etcd_proto;
mod flush;
mod log;
mod outbox;
mod sled_engine;
mod sled_pending;
mod sled_redo;
mod tables;
mod tx;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use log::HEAD;

use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::model::{
    Decision, Host, IdentityId, Member, Name, OpenEntry, Request, RequestState, Timestamp,
};
use crate::rule::Rule;
use crate::target::{Target, TargetKind};
pub use backend::{EtcdConfig, StoreConfig};
use engine::{Engine, Table, TxTable};
pub use engine::{TxError, TxResult};
use etcd_engine::EtcdEngine;
pub use flush::Ticket;
use flush::{GroupFlush, RequestWatch};
use sled_engine::SledEngine;
use tables::{TableId, Tables, TxTables};

/// A certificate the broker issued, as `show` lists it (read from its audit entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: u64,
    pub request_id: u64,
    pub member: Name,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: Timestamp,
    pub valid_before: Timestamp,
    pub key_fingerprint: String,
    pub issued_at: Timestamp,
    /// The forced command, for a fleet command's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_command: Option<String>,
}

const NEXT_REQUEST: &[u8] = b"last_request_id";
const OWNERS: &[u8] = b"owner_count";
const NEXT_IDENTITY: &[u8] = b"last_identity_id";
/// Set once the denials index holds every denial (see [`Store::build_denials`]).
const DENIALS_BUILT: &[u8] = b"denials_index_built";

/// The denials index's key: requester, time of the denial, request.
fn denial_key(member: IdentityId, at: u64, id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&member.0.to_be_bytes());
    k[8..16].copy_from_slice(&at.to_be_bytes());
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The broker's database.
pub struct Store {
    engine: Arc<dyn Engine>,
    flusher: GroupFlush,
    watch: Arc<RequestWatch>,
    /// Whether changes write notifications (see [`Store::set_outbox`]).
    outbox_on: std::sync::atomic::AtomicBool,
    t: Tables,
}

/// A view of every tree inside one transaction, at the change's time.
pub struct Tx<'a> {
    now: Timestamp,
    /// Requests this change writes, so their waiters can be woken once it commits.
    touched: &'a RefCell<Vec<u64>>,
    outbox_on: bool,
    t: TxTables<'a>,
}

impl Store {
    /// Opens (or creates) the sled database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_engine(Arc::new(SledEngine::open(dir)?))
    }

    /// Opens the database `config` names: sled in `db_dir`, or a key space in etcd.
    pub fn connect(db_dir: &Path, config: &StoreConfig) -> Result<Store> {
        match config {
            StoreConfig::Sled => Store::open(db_dir),
            StoreConfig::Etcd(e) => Store::open_engine(Arc::new(EtcdEngine::connect(e)?)),
        }
    }

    /// Whether other brokers share this database (and calls to it cross the network).
    pub fn is_shared(&self) -> bool {
        self.engine.shared()
    }

    fn open_engine(engine: Arc<dyn Engine>) -> Result<Store> {
        let t = Tables::new(&engine);
        let meta = t.meta.clone();
        let log_len = move || {
            let head = meta.get(HEAD).ok().flatten();
            head.as_deref().map_or(0, |v| u64_at(v, 0).unwrap_or(0))
        };
        let store = Store {
            flusher: GroupFlush::start(engine.clone(), last_key(&t.outbox)?, log_len)?,
            t,
            watch: Arc::default(),
            outbox_on: std::sync::atomic::AtomicBool::new(false),
            engine,
        };
        if store.engine.shared() {
            // Changes other brokers commit wake this broker's waiters and delivery worker.
            let (watch, notice) = (store.watch.clone(), store.flusher.noticer());
            store.engine.watch(Box::new(move |table, key| match table {
                TableId::Requests => {
                    if let Ok(id) = u64_at(key, 0) {
                        watch.wake(&[id]);
                    }
                }
                TableId::Outbox => {
                    if let Ok(seq) = u64_at(key, 0) {
                        notice(seq);
                    }
                }
                _ => {}
            }))?;
        }
        Ok(store)
    }

    /// Applies one state change and its audit events atomically, and returns once it is flushed.
    pub fn apply<T>(
        &self,
        now: Timestamp,
        actor: &str,
        change: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<AuditEvent>)>,
    ) -> Result<T> {
        let (out, ticket) = self.commit(now, actor, change)?;
        self.flusher.wait_blocking(ticket)?;
        Ok(out)
    }

    /// Waits until the change with `ticket` is flushed. Nobody may hear of a change before.
    pub async fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        self.flusher.wait(ticket).await
    }

    /// Commits one state change and its audit events atomically, without waiting for the
    /// flush: the caller must [`Store::wait_durable`] before acknowledging it.
    pub fn commit<T>(
        &self,
        now: Timestamp,
        actor: &str,
        change: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<AuditEvent>)>,
    ) -> Result<(T, Ticket)> {
        let outbox_on = self.outbox_on.load(std::sync::atomic::Ordering::Relaxed);
        let touched = RefCell::new(Vec::new());
        let done = RefCell::new(None);
        self.engine.transact(&|view| {
            touched.borrow_mut().clear();
            let tx = Tx {
                now,
                touched: &touched,
                outbox_on,
                t: TxTables::new(view),
            };
            let (out, events) = change(&tx)?;
            if events.is_empty() {
                return Err(Error::Internal("a state change carried no audit event".into()).into());
            }
            let mut notice = None;
            for event in &events {
                let seq = tx.append_audit(now, actor, event)?;
                if tx.record_notice(seq, actor, event)? {
                    notice = Some(seq);
                }
            }
            *done.borrow_mut() = Some((out, notice));
            Ok(())
        })?;
        let (v, notice) = done
            .into_inner()
            .ok_or_else(|| Error::Internal("a transaction committed without its result".into()))?;
        let ticket = self.flusher.register(notice);
        self.watch.wake(&touched.borrow());
        Ok((v, ticket))
    }

    /// A handle that is woken whenever a change to request `id` commits. Create the
    /// `notified()` future (and `enable` it) before reading the request, so no change is missed;
    /// what it wakes for may not be flushed yet: [`Store::wait_durable`] the
    /// [`Store::latest_ticket`] before telling anyone.
    pub fn watch_request(&self, id: u64) -> Arc<tokio::sync::Notify> {
        self.watch.subscribe(id)
    }

    /// Forgets request `id`'s watch once nobody holds it.
    pub fn unwatch_request(&self, id: u64) {
        self.watch.forget(id);
    }

    /// The ticket of the latest committed change: once it is durable, so is everything before.
    pub fn latest_ticket(&self) -> Ticket {
        self.flusher.latest()
    }

    /// Whether `init` has run on this database.
    pub fn is_initialized(&self) -> Result<bool> {
        self.t.meta.contains_key(HEAD)
    }

    pub fn member(&self, name: &Name) -> Result<Option<Member>> {
        self.t
            .members
            .get(name.as_str().as_bytes())?
            .map(|raw| decoded::member(&raw))
            .transpose()
    }

    /// The member who owns the identity key with this SHA-256 fingerprint. Every command
    /// starts here, so the record's decoding is remembered (see `decoded.rs`).
    pub fn member_by_key(&self, fingerprint: &str) -> Result<Option<Member>> {
        let Some(name) = self.t.keys.get(fingerprint.as_bytes())? else {
            return Ok(None);
        };
        self.t
            .members
            .get(&name)?
            .map(|raw| decoded::member(&raw))
            .transpose()
    }

    pub fn members(&self) -> Result<Vec<Member>> {
        scan_json(&self.t.members)
    }

    pub fn host(&self, name: &Name) -> Result<Option<Host>> {
        self.t
            .hosts
            .get(name.as_str().as_bytes())?
            .map(|raw| decoded::host(&raw))
            .transpose()
    }

    pub fn hosts(&self) -> Result<Vec<Host>> {
        scan_json(&self.t.hosts)
    }

    /// The fleet or command with this name (hosts are [`Store::host`]).
    pub fn target(&self, name: &Name) -> Result<Option<Target>> {
        get_json(&self.t.targets, name.as_str().as_bytes())
    }

    /// Every fleet and command, by name.
    pub fn targets(&self) -> Result<Vec<Target>> {
        scan_json(&self.t.targets)
    }

    /// Every auto-approval rule, by name.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        scan_json(&self.t.rules)
    }

    pub fn rule(&self, name: &Name) -> Result<Option<Rule>> {
        get_json(&self.t.rules, name.as_str().as_bytes())
    }

    /// Break-glass grants waiting for review, soonest due first, at most `limit`.
    pub fn reviews_waiting(&self, limit: usize) -> Result<Vec<Request>> {
        let mut out = Vec::new();
        for kv in self.t.reviews.iter().take(limit) {
            let (k, _) = kv?;
            if let Some(r) = self.request(u64_at(&k, 8)?)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The break-glass grants of `identity` waiting for review: (request id, overdue at `now`).
    pub fn reviews_of(&self, identity: IdentityId, now: Timestamp) -> Result<Vec<(u64, bool)>> {
        let mut out = Vec::new();
        for kv in self.t.reviews.iter() {
            let (k, v) = kv?;
            if u64_at(&v, 0)? == identity.0 {
                out.push((u64_at(&k, 8)?, u64_at(&k, 0)? as i64 <= now.unix()));
            }
        }
        Ok(out)
    }

    /// What kind of target carries `name`, if any (hosts, fleets and commands share names).
    pub fn kind_of(&self, name: &Name) -> Result<Option<TargetKind>> {
        if self.t.hosts.contains_key(name.as_str().as_bytes())? {
            return Ok(Some(TargetKind::Host));
        }
        Ok(self.target(name)?.map(|t| t.kind()))
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        self.t
            .requests
            .get(id.to_be_bytes())?
            .map(|raw| self.stored_request(&raw))
            .transpose()
    }

    /// A request's stored record, decoded, with its certificate count.
    fn stored_request(&self, raw: &[u8]) -> Result<Request> {
        with_issued(raw, |r| self.t.issued.get(r.id.to_be_bytes()))
    }

    /// The newest `limit` requests in `state` at `now`, oldest first.
    ///
    /// Pending ones come from the deadline index (only undecided, unexpired requests are at
    /// or after `now` in it), so that answer never scans decided history.
    pub fn requests_in(
        &self,
        state: Option<RequestState>,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Request>> {
        let mut out = Vec::new();
        if state == Some(RequestState::Pending) {
            for kv in self.t.pending.range(pending_key(now, 0).to_vec()..).rev() {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = kv?;
                if let Some(r) = self.request(u64_at(&k, 8)?)? {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.id);
            return Ok(out);
        }
        for kv in self.t.requests.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let r = self.stored_request(&kv?.1)?;
            if state.is_none_or(|s| r.state_at(now) == s) {
                out.push(r);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// One member identity's newest `limit` requests, oldest first.
    pub fn requests_of(&self, member: IdentityId, limit: usize) -> Result<Vec<Request>> {
        let mut out = Vec::new();
        for kv in self
            .t
            .by_member
            .scan_prefix(member.0.to_be_bytes())
            .rev()
            .take(limit)
        {
            let (k, _) = kv?;
            let id = u64_at(&k, k.len() - 8)?;
            if let Some(r) = self.request(id)? {
                out.push(r);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// How many of `member`'s requests were denied at or after `since`, counting at most
    /// `cap`: one range of the denials index.
    pub fn denials_of(&self, member: IdentityId, since: Timestamp, cap: usize) -> Result<u32> {
        let from = denial_key(member, since.unix().max(0) as u64, 0);
        let to = denial_key(member, u64::MAX, u64::MAX);
        let mut n = 0;
        for kv in self.t.denials.range(from..=to).take(cap) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// Empties the denials index and forgets it was built: a database from before it. For
    /// the tests of [`Store::build_denials`].
    #[doc(hidden)]
    pub fn danger_forget_denials(&self) -> Result<()> {
        self.t.denials.clear()?;
        self.t.meta.remove(DENIALS_BUILT)
    }

    /// Builds the denials index of a database written before it existed (once, before
    /// serving), from the denial times the by-member index keeps.
    pub fn build_denials(&self) -> Result<()> {
        if self.t.meta.contains_key(DENIALS_BUILT)? {
            return Ok(());
        }
        let mut batch = Vec::new();
        for kv in self.t.by_member.iter() {
            let (k, v) = kv?;
            if v.len() == 8 && k.len() == 16 {
                let member = IdentityId(u64_at(&k, 0)?);
                let key = denial_key(member, u64_at(&v, 0)?, u64_at(&k, 8)?);
                batch.push((key.to_vec(), Some(Vec::new())));
            }
        }
        let n = batch.len();
        self.t.denials.apply(batch)?;
        self.t.meta.insert(DENIALS_BUILT, [1])?;
        self.engine.flush()?;
        if n > 0 {
            tracing::info!(denials = n, "built the denials index");
        }
        Ok(())
    }

    /// Requests of `identity` (as requester or as host) that are open at `now`: pending, or
    /// granted with a window not over and not ended. Read outside any transaction, for a
    /// removal to close them (it checks each again inside its own).
    pub fn open_requests_of(&self, identity: IdentityId, now: Timestamp) -> Result<Vec<u64>> {
        let mine = |r: &Request| r.requester_id == identity || r.resource_id == identity;
        let mut ids = Vec::new();
        for kv in self.t.pending.range(pending_key(now, 0).to_vec()..) {
            let (k, _) = kv?;
            let id = u64_at(&k, 8)?;
            if self.request(id)?.is_some_and(|r| mine(&r)) {
                ids.push(id);
            }
        }
        for kv in self.t.grants.scan_prefix(identity.0.to_be_bytes()) {
            let (k, _) = kv?;
            let id = u64_at(&k, 8)?;
            let open = self.request(id)?.is_some_and(|r| {
                r.grant()
                    .is_some_and(|g| g.ended.is_none() && now < g.end && mine(&r))
            });
            if open {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Certificates issued for a request, read from their audit entries (an index entry
    /// written before that holds its own record).
    pub fn certs_of(&self, request_id: u64) -> Result<Vec<CertRecord>> {
        self.t
            .certs
            .scan_prefix(request_id.to_be_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                if !v.is_empty() {
                    return Ok(serde_json::from_slice(&v)?);
                }
                self.cert_from_log(request_id, u64_at(&k, 8)?)
            })
            .collect()
    }

    /// Certificate `serial` of request `request_id`, as its audit entry records it.
    fn cert_from_log(&self, request_id: u64, serial: u64) -> Result<CertRecord> {
        let lost = || {
            Error::Internal(format!(
                "audit entry {serial} does not record certificate {serial} of request {request_id}; run audit verify"
            ))
        };
        let raw = self.audit_entry(serial)?.ok_or_else(lost)?;
        let entry: crate::audit::AuditEntry = serde_json::from_slice(&raw)?;
        match entry.event {
            AuditEvent::CertificateIssued {
                id,
                serial: issued,
                key_id,
                principals,
                valid_after,
                valid_before,
                key_fingerprint,
                force_command,
            } if id == request_id && issued == serial => Ok(CertRecord {
                serial,
                request_id,
                member: entry.actor.parse().map_err(|_| lost())?,
                key_id,
                principals,
                valid_after,
                valid_before,
                key_fingerprint,
                issued_at: entry.at,
                force_command,
            }),
            _ => Err(lost()),
        }
    }

    /// Flushes everything to the OS.
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }
}

/// Reading hosts and targets by name, the same way from the store and inside a transaction,
/// so finding a target is written once. A transaction's errors keep the engine's conflicts
/// (which it retries) apart from ours.
pub trait Lookup {
    type Err: From<Error>;
    fn host(&self, name: &Name) -> std::result::Result<Option<Host>, Self::Err>;
    fn target(&self, name: &Name) -> std::result::Result<Option<Target>, Self::Err>;
}

impl Lookup for Store {
    type Err = Error;
    fn host(&self, name: &Name) -> Result<Option<Host>> {
        Store::host(self, name)
    }
    fn target(&self, name: &Name) -> Result<Option<Target>> {
        Store::target(self, name)
    }
}

impl Lookup for Tx<'_> {
    type Err = TxError;
    fn host(&self, name: &Name) -> TxResult<Option<Host>> {
        Tx::host(self, name)
    }
    fn target(&self, name: &Name) -> TxResult<Option<Target>> {
        Tx::target(self, name)
    }
}

/// The newest key of a table keyed by big-endian u64 (0 if empty).
fn last_key(tree: &Table) -> Result<u64> {
    match tree.last()? {
        Some((k, _)) => u64_at(&k, 0),
        None => Ok(0),
    }
}

fn pending_key(until: Timestamp, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(until.unix().max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Internal("a stored key or counter is corrupt".into()))
}

/// A request record, decoded, with the count of certificates its grant issued from
/// `issued`: a record written before counts were kept apart holds its own count.
fn with_issued<E: From<Error>>(
    raw: &[u8],
    issued: impl FnOnce(&Request) -> std::result::Result<Option<Vec<u8>>, E>,
) -> std::result::Result<Request, E> {
    let mut r = decoded::request(raw)?;
    if matches!(r.decision, Decision::Approved { .. })
        && let Some(count) = issued(&r)?
    {
        let count = u32::try_from(u64_at(&count, 0)?)
            .map_err(|_| Error::Internal("a stored certificate count is corrupt".into()))?;
        if let Decision::Approved { grant } = &mut r.decision {
            grant.certificates = count;
        }
    }
    Ok(r)
}

fn get_json<T: DeserializeOwned>(tree: &Table, key: &[u8]) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

fn scan_json<T: DeserializeOwned>(tree: &Table) -> Result<Vec<T>> {
    tree.iter()
        .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
        .collect()
}

fn tx_get<T: DeserializeOwned>(tree: TxTable<'_>, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(tree: TxTable<'_>, key: &[u8], value: &T) -> TxResult<()> {
    tree.insert(key, serde_json::to_vec(value)?)
}

/// The database directory inside a data dir.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    /// A remembered decoding is by the record's bytes: a change shows on the next lookup.
    #[test]
    fn a_member_found_by_key_is_as_stored_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = crate::ca::generate_key("t").unwrap();
        let public = key.public_key().to_openssh().unwrap();
        let now = Timestamp::from_unix(1_700_000_000);
        let m = crate::ca::member_with_key("ann".parse().unwrap(), Role::Viewer, &public, "t", now)
            .unwrap();
        let fp = m.key_fingerprints[0].clone();
        let m = store
            .apply(now, "t", |tx| {
                let m = tx.add_member(&m)?;
                Ok((m.clone(), vec![AuditEvent::member_added(&m)]))
            })
            .unwrap();
        let role = |store: &Store| store.member_by_key(&fp).unwrap().map(|m| m.role);
        assert_eq!(role(&store), Some(Role::Viewer));
        assert_eq!(role(&store), Some(Role::Viewer));
        let mut admin = m.clone();
        admin.role = Role::Admin;
        store
            .apply(now, "t", |tx| {
                let event = AuditEvent::MemberRoleChanged {
                    name: "ann".into(),
                    from: Role::Viewer,
                    to: Role::Admin,
                };
                Ok((tx.replace_member(&m, &admin)?, vec![event]))
            })
            .unwrap();
        assert_eq!(role(&store), Some(Role::Admin));
        store
            .apply(now, "t", |tx| {
                let event = AuditEvent::MemberRemoved {
                    name: "ann".into(),
                    role: Some(Role::Admin),
                };
                Ok((tx.remove_member(&admin)?, vec![event]))
            })
            .unwrap();
        assert_eq!(role(&store), None);
    }

    /// A certificate counts in a table of its own and leaves its request's record as it was;
    /// a record from before that kept its count in itself still reads with that count.
    #[test]
    fn a_certificate_leaves_its_request_record_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::datadir::DataDir::new(tmp.path().join("data"));
        let t0 = Timestamp::from_unix(1_900_000_000);
        let keys: Vec<_> = ["olga", "alice", "subject"]
            .iter()
            .map(|n| crate::ca::generate_key(n).unwrap())
            .collect();
        let line = |i: usize| keys[i].public_key().to_openssh().unwrap();
        let fp = |i: usize| crate::ca::fingerprint(keys[i].public_key().key_data());
        crate::datadir::init(&dir, "olga", &line(0), "127.0.0.1:0", t0).unwrap();
        let broker = crate::datadir::open(&dir).unwrap().broker;
        let run = |who: usize, l: &str, stdin: &str| {
            let out = broker.run_line(&fp(who), l.as_bytes(), stdin.as_bytes(), t0);
            assert_eq!(out.status, 0, "{l}: {}", out.stderr);
        };
        run(
            0,
            &format!("member add alice --role viewer --key '{}'", line(1)),
            "",
        );
        run(
            0,
            "host add web-01 --address 10.0.0.5 --login viewer=ro",
            "",
        );
        run(
            1,
            "request web-01 --role viewer --for 1h --reason 'INC-1 look'",
            "",
        );
        run(0, "approve 1", "");
        let store = broker.store();
        let count = || {
            store
                .request(1)
                .unwrap()
                .unwrap()
                .grant()
                .unwrap()
                .certificates
        };
        let record = || store.t.requests.get(1u64.to_be_bytes()).unwrap().unwrap();
        let approved = record();
        assert_eq!(count(), 0);
        run(1, "cert 1", &line(2));
        run(1, "cert 1", &line(2));
        assert_eq!(
            record(),
            approved,
            "a certificate rewrote the request's record"
        );
        assert_eq!(count(), 2);

        // The index holds no record: `show` reads each certificate from its audit entry.
        let certs = store.certs_of(1).unwrap();
        assert_eq!(certs.len(), 2);
        for c in &certs {
            let key = [1u64.to_be_bytes(), c.serial.to_be_bytes()].concat();
            assert_eq!(store.t.certs.get(&key).unwrap(), Some(vec![]));
            assert_eq!((c.request_id, c.member.as_str()), (1, "alice"));
            assert_eq!(c.key_fingerprint, fp(2));
            assert_eq!(c.issued_at, t0);
            assert_eq!(c.principals, vec!["ro@web-01".to_string()]);
        }
        assert!(certs[0].serial < certs[1].serial);
        // One written before, with its record in the index, reads as written.
        let mut older = certs[0].clone();
        older.serial = 1;
        let key = [1u64.to_be_bytes(), 1u64.to_be_bytes()].concat();
        store
            .t
            .certs
            .insert(&key, serde_json::to_vec(&older).unwrap())
            .unwrap();
        assert_eq!(store.certs_of(1).unwrap()[0], older);
        // An index entry whose audit entry records something else is an error, not a guess.
        let key = [1u64.to_be_bytes(), 2u64.to_be_bytes()].concat();
        store.t.certs.insert(&key, []).unwrap();
        let e = store.certs_of(1).unwrap_err();
        assert!(e.to_string().contains("run audit verify"), "{e}");
        store.t.certs.remove(&key).unwrap();

        // As an earlier version stored it: the count in the record, none apart.
        let mut old: Request = serde_json::from_slice(&approved).unwrap();
        if let Decision::Approved { grant } = &mut old.decision {
            grant.certificates = 7;
        }
        store.t.issued.remove(1u64.to_be_bytes()).unwrap();
        store
            .t
            .requests
            .insert(1u64.to_be_bytes(), serde_json::to_vec(&old).unwrap())
            .unwrap();
        assert_eq!(count(), 7);
        run(1, "cert 1", &line(2));
        assert_eq!(count(), 8);
        let apart = store.t.issued.get(1u64.to_be_bytes()).unwrap().unwrap();
        assert_eq!(u64_at(&apart, 0).unwrap(), 8);
    }
}

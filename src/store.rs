//! The only module that touches sled: typed records, indexes, and one transaction per change.
//!
//! Architecture invariant: every state change goes through [`Store::apply`], whose closure
//! must return at least one audit event; the change and its audit entries commit in one sled
//! transaction, and the database is flushed before the caller hears of success.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};

use crate::audit::{self, AuditEvent, GENESIS, VerifyReport};
use crate::error::{Error, Result};
use crate::model::{Host, Member, Name, Request, RequestState, Timestamp};

/// A result inside a transaction: aborts carry our error, conflicts are retried by sled.
pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

impl From<Error> for ConflictableTransactionError<Error> {
    fn from(e: Error) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

/// A certificate the broker issued, kept for status and forensics.
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
}

const HEAD: &[u8] = b"audit_head";
const NEXT_REQUEST: &[u8] = b"last_request_id";
const NEXT_SERIAL: &[u8] = b"last_serial";
const OWNERS: &[u8] = b"owner_count";

/// The broker's database.
pub struct Store {
    db: sled::Db,
    meta: Tree,
    members: Tree,
    keys: Tree,
    hosts: Tree,
    requests: Tree,
    pending: Tree,
    by_member: Tree,
    certs: Tree,
    audit: Tree,
}

/// A view of every tree inside one transaction.
pub struct Tx<'a> {
    meta: &'a TransactionalTree,
    members: &'a TransactionalTree,
    keys: &'a TransactionalTree,
    hosts: &'a TransactionalTree,
    requests: &'a TransactionalTree,
    pending: &'a TransactionalTree,
    by_member: &'a TransactionalTree,
    certs: &'a TransactionalTree,
    audit: &'a TransactionalTree,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(Error::from);
        Ok(Store {
            meta: tree("meta")?,
            members: tree("members")?,
            keys: tree("member_keys")?,
            hosts: tree("hosts")?,
            requests: tree("requests")?,
            pending: tree("pending_by_deadline")?,
            by_member: tree("requests_by_member")?,
            certs: tree("certs")?,
            audit: tree("audit")?,
            db,
        })
    }

    /// Applies one state change and its audit events atomically, then flushes.
    pub fn apply<T>(
        &self,
        now: Timestamp,
        actor: &str,
        change: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<AuditEvent>)>,
    ) -> Result<T> {
        let trees = (
            &self.meta,
            &self.members,
            &self.keys,
            &self.hosts,
            &self.requests,
            &self.pending,
            &self.by_member,
            &self.certs,
            &self.audit,
        );
        let out = trees.transaction(
            |(meta, members, keys, hosts, requests, pending, by_member, certs, audit)| {
                let tx = Tx {
                    meta,
                    members,
                    keys,
                    hosts,
                    requests,
                    pending,
                    by_member,
                    certs,
                    audit,
                };
                let (out, events) = change(&tx)?;
                if events.is_empty() {
                    return Err(
                        Error::Internal("a state change carried no audit event".into()).into(),
                    );
                }
                for event in &events {
                    tx.append_audit(now, actor, event)?;
                }
                Ok(out)
            },
        );
        let out = match out {
            Ok(v) => v,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.db.flush()?;
        Ok(out)
    }

    /// Whether `init` has run on this database.
    pub fn is_initialized(&self) -> Result<bool> {
        Ok(self.meta.contains_key(HEAD)?)
    }

    pub fn member(&self, name: &Name) -> Result<Option<Member>> {
        get_json(&self.members, name.as_str().as_bytes())
    }

    /// The member who owns the identity key with this SHA-256 fingerprint.
    pub fn member_by_key(&self, fingerprint: &str) -> Result<Option<Member>> {
        match self.keys.get(fingerprint.as_bytes())? {
            Some(name) => get_json(&self.members, &name),
            None => Ok(None),
        }
    }

    pub fn members(&self) -> Result<Vec<Member>> {
        scan_json(&self.members)
    }

    pub fn host(&self, name: &Name) -> Result<Option<Host>> {
        get_json(&self.hosts, name.as_str().as_bytes())
    }

    pub fn hosts(&self) -> Result<Vec<Host>> {
        scan_json(&self.hosts)
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        get_json(&self.requests, &id.to_be_bytes())
    }

    /// Requests in `state` at `now`, oldest first. Pending ones come from the deadline index.
    pub fn requests_in(&self, state: Option<RequestState>, now: Timestamp) -> Result<Vec<Request>> {
        if state == Some(RequestState::Pending) {
            let mut out = Vec::new();
            for kv in self.pending.range(pending_key(now, 0).to_vec()..) {
                let (k, _) = kv?;
                let id = u64_at(&k, 8)?;
                if let Some(r) = self.request(id)? {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.id);
            return Ok(out);
        }
        let all: Vec<Request> = scan_json(&self.requests)?;
        Ok(all
            .into_iter()
            .filter(|r| state.is_none_or(|s| r.state_at(now) == s))
            .collect())
    }

    /// One member's requests, oldest first.
    pub fn requests_of(&self, member: &Name) -> Result<Vec<Request>> {
        let mut out = Vec::new();
        for kv in self.by_member.scan_prefix(member_prefix(member)) {
            let (k, _) = kv?;
            let id = u64_at(&k, k.len() - 8)?;
            if let Some(r) = self.request(id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Certificates issued for a request.
    pub fn certs_of(&self, request_id: u64) -> Result<Vec<CertRecord>> {
        let all: Vec<CertRecord> = scan_json(&self.certs)?;
        Ok(all
            .into_iter()
            .filter(|c| c.request_id == request_id)
            .collect())
    }

    /// Raw audit entries from `from_seq` on, in order.
    pub fn audit_raw(&self, from_seq: u64) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
        self.audit
            .range(from_seq.to_be_bytes()..)
            .map(|kv| kv.map(|(_, v)| v.to_vec()).map_err(Error::from))
    }

    /// The number of audit entries.
    pub fn audit_len(&self) -> Result<u64> {
        Ok(self.head()?.0)
    }

    /// Recomputes the whole chain and checks it ends at the recorded head.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        let mut v = audit::Verifier::default();
        for raw in self.audit_raw(0) {
            v.push(&raw?);
        }
        let (seq, hash) = self.head()?;
        v.expect_head(seq, &hash);
        Ok(v.finish())
    }

    fn head(&self) -> Result<(u64, [u8; 32])> {
        decode_head(self.meta.get(HEAD)?.as_deref())
    }

    /// Flushes everything to the OS.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Test and tooling access to raw trees (for tamper tests).
    #[doc(hidden)]
    pub fn danger_audit_tree(&self) -> &Tree {
        &self.audit
    }
}

impl Tx<'_> {
    pub fn member(&self, name: &Name) -> TxResult<Option<Member>> {
        tx_get(self.members, name.as_str().as_bytes())
    }

    pub fn key_owner(&self, fingerprint: &str) -> TxResult<Option<String>> {
        Ok(self
            .keys
            .get(fingerprint.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Stores a new member and indexes its keys.
    pub fn add_member(&self, m: &Member) -> TxResult<()> {
        self.adjust_owners(m, true)?;
        for fp in &m.key_fingerprints {
            self.keys
                .insert(fp.as_bytes(), m.name.as_str().as_bytes())?;
        }
        tx_put(self.members, m.name.as_str().as_bytes(), m)
    }

    pub fn remove_member(&self, m: &Member) -> TxResult<()> {
        self.adjust_owners(m, false)?;
        for fp in &m.key_fingerprints {
            self.keys.remove(fp.as_bytes())?;
        }
        self.members.remove(m.name.as_str().as_bytes())?;
        Ok(())
    }

    /// How many OWNERs exist, so the last one is never removed.
    pub fn owner_count(&self) -> TxResult<u64> {
        match self.meta.get(OWNERS)? {
            Some(v) => Ok(u64_at(&v, 0)?),
            None => Ok(0),
        }
    }

    fn adjust_owners(&self, m: &Member, add: bool) -> TxResult<()> {
        if m.role != crate::model::Role::Owner {
            return Ok(());
        }
        let n = self.owner_count()?;
        let n = if add { n + 1 } else { n.saturating_sub(1) };
        self.meta.insert(OWNERS, &n.to_be_bytes()[..])?;
        Ok(())
    }

    pub fn host(&self, name: &Name) -> TxResult<Option<Host>> {
        tx_get(self.hosts, name.as_str().as_bytes())
    }

    pub fn put_host(&self, h: &Host) -> TxResult<()> {
        tx_put(self.hosts, h.name.as_str().as_bytes(), h)
    }

    pub fn remove_host(&self, name: &Name) -> TxResult<()> {
        self.hosts.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    pub fn request(&self, id: u64) -> TxResult<Option<Request>> {
        tx_get(self.requests, &id.to_be_bytes())
    }

    /// Stores a request and keeps the pending and per-member indexes true.
    pub fn put_request(&self, r: &Request) -> TxResult<()> {
        let pk = pending_key(r.pending_until, r.id);
        if matches!(r.decision, crate::model::Decision::Pending) {
            self.pending.insert(&pk[..], &[][..])?;
        } else {
            self.pending.remove(&pk[..])?;
        }
        let mut mk = member_prefix(&r.requester);
        mk.extend_from_slice(&r.id.to_be_bytes());
        self.by_member.insert(mk, &[][..])?;
        tx_put(self.requests, &r.id.to_be_bytes(), r)
    }

    /// The next request id (1, 2, ...).
    pub fn next_request_id(&self) -> TxResult<u64> {
        self.bump(NEXT_REQUEST)
    }

    /// The next certificate serial (1, 2, ...): unique and increasing across restarts.
    pub fn next_serial(&self) -> TxResult<u64> {
        self.bump(NEXT_SERIAL)
    }

    pub fn put_cert(&self, c: &CertRecord) -> TxResult<()> {
        tx_put(self.certs, &c.serial.to_be_bytes(), c)
    }

    fn bump(&self, key: &[u8]) -> TxResult<u64> {
        let last = match self.meta.get(key)? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        };
        let next = last + 1;
        self.meta.insert(key, &next.to_be_bytes()[..])?;
        Ok(next)
    }

    fn append_audit(&self, now: Timestamp, actor: &str, event: &AuditEvent) -> TxResult<()> {
        let (seq, prev) = decode_head(self.meta.get(HEAD)?.as_deref())?;
        let seq = seq + 1;
        let (raw, hash) = audit::seal(seq, now, actor, event, &prev)?;
        self.audit.insert(&seq.to_be_bytes()[..], raw)?;
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&hash);
        self.meta.insert(HEAD, head)?;
        Ok(())
    }
}

fn open_error(dir: &Path, e: sled::Error) -> Error {
    let text = e.to_string();
    if text.contains("WouldBlock") || text.contains("could not acquire lock") {
        Error::DatabaseInUse(dir.to_path_buf())
    } else {
        Error::Storage(format!(
            "cannot open the database in {}: {text}",
            dir.display()
        ))
    }
}

fn decode_head(v: Option<&[u8]>) -> Result<(u64, [u8; 32])> {
    match v {
        None => Ok((0, GENESIS)),
        Some(v) if v.len() == 40 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&v[8..]);
            Ok((u64_at(v, 0)?, hash))
        }
        Some(_) => Err(Error::Internal("the audit head record is corrupt".into())),
    }
}

fn pending_key(until: Timestamp, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(until.unix().max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

fn member_prefix(name: &Name) -> Vec<u8> {
    let mut k = name.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Internal("a stored key or counter is corrupt".into()))
}

fn get_json<T: DeserializeOwned>(tree: &Tree, key: &[u8]) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

fn scan_json<T: DeserializeOwned>(tree: &Tree) -> Result<Vec<T>> {
    tree.iter()
        .values()
        .map(|v| Ok(serde_json::from_slice(&v?)?))
        .collect()
}

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(Error::from)?)),
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(tree: &TransactionalTree, key: &[u8], value: &T) -> TxResult<()> {
    let bytes = serde_json::to_vec(value).map_err(Error::from)?;
    tree.insert(key, bytes)?;
    Ok(())
}

/// The database directory inside a data dir.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

//! The only module that touches sled: typed records, indexes, and one transaction per change.
//!
//! Architecture invariant: every state change goes through [`Store::apply`], whose closure
//! must return at least one audit event; the change and its audit entries commit in one sled
//! transaction, and the database is flushed before the caller hears of success (with group
//! commit: concurrent changes share one flush).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};

use crate::audit::{self, AuditEvent, GENESIS, VerifyReport};
use crate::error::{Error, Result};
use crate::model::{
    Decision, Host, IdentityId, Member, Name, OpenEntry, Request, RequestState, Timestamp,
};
use crate::rule::Rule;
use crate::target::{Target, TargetKind};

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
    /// The forced command, for a fleet command's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_command: Option<String>,
}

const HEAD: &[u8] = b"audit_head";
/// sled's page cache size.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
const NEXT_REQUEST: &[u8] = b"last_request_id";
const OWNERS: &[u8] = b"owner_count";
const NEXT_IDENTITY: &[u8] = b"last_identity_id";

/// The broker's database.
pub struct Store {
    db: sled::Db,
    flusher: GroupFlush,
    watch: RequestWatch,
    meta: Tree,
    members: Tree,
    keys: Tree,
    hosts: Tree,
    targets: Tree,
    rules: Tree,
    reviews: Tree,
    requests: Tree,
    pending: Tree,
    by_member: Tree,
    open: Tree,
    grants: Tree,
    certs: Tree,
    audit: Tree,
}

/// A view of every tree inside one transaction, at the change's time.
pub struct Tx<'a> {
    now: Timestamp,
    /// Requests this change writes, so their waiters can be woken once it commits.
    touched: &'a RefCell<Vec<u64>>,
    meta: &'a TransactionalTree,
    members: &'a TransactionalTree,
    keys: &'a TransactionalTree,
    hosts: &'a TransactionalTree,
    targets: &'a TransactionalTree,
    rules: &'a TransactionalTree,
    reviews: &'a TransactionalTree,
    requests: &'a TransactionalTree,
    pending: &'a TransactionalTree,
    by_member: &'a TransactionalTree,
    open: &'a TransactionalTree,
    grants: &'a TransactionalTree,
    certs: &'a TransactionalTree,
    audit: &'a TransactionalTree,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // sled's page cache defaults to 1 GiB; the broker's working set is far smaller.
            .cache_capacity(CACHE_BYTES);
        // sled releases its file lock when its last background thread lets go, a moment after
        // the previous handle in this process is dropped: give that moment before refusing.
        let mut tries = 0;
        let db = loop {
            match config.open().map_err(|e| open_error(dir, e)) {
                Err(Error::DatabaseInUse(_)) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(Error::from);
        Ok(Store {
            meta: tree("meta")?,
            members: tree("members")?,
            keys: tree("member_keys")?,
            hosts: tree("hosts")?,
            targets: tree("fleets_and_commands")?,
            rules: tree("rules")?,
            reviews: tree("reviews_by_deadline")?,
            requests: tree("requests")?,
            pending: tree("pending_by_deadline")?,
            by_member: tree("requests_by_member")?,
            open: tree("pending_by_requester")?,
            grants: tree("grants_by_identity")?,
            certs: tree("certs")?,
            audit: tree("audit")?,
            flusher: GroupFlush::start(db.clone())?,
            watch: RequestWatch::default(),
            db,
        })
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
        let trees = (
            &self.meta,
            &self.members,
            &self.keys,
            &self.hosts,
            &self.targets,
            &self.rules,
            &self.reviews,
            &self.requests,
            &self.pending,
            &self.by_member,
            &self.open,
            &self.grants,
            &self.certs,
            &self.audit,
        );
        let touched = RefCell::new(Vec::new());
        let out = trees.transaction(
            |(
                meta,
                members,
                keys,
                hosts,
                targets,
                rules,
                reviews,
                requests,
                pending,
                by_member,
                open,
                grants,
                certs,
                audit,
            )| {
                touched.borrow_mut().clear();
                let tx = Tx {
                    now,
                    touched: &touched,
                    meta,
                    members,
                    keys,
                    hosts,
                    targets,
                    rules,
                    reviews,
                    requests,
                    pending,
                    by_member,
                    open,
                    grants,
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
        match out {
            Ok(v) => {
                let ticket = self.flusher.register();
                self.watch.wake(&touched.borrow());
                Ok((v, ticket))
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
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

    /// The fleet or command with this name (hosts are [`Store::host`]).
    pub fn target(&self, name: &Name) -> Result<Option<Target>> {
        get_json(&self.targets, name.as_str().as_bytes())
    }

    /// Every fleet and command, by name.
    pub fn targets(&self) -> Result<Vec<Target>> {
        scan_json(&self.targets)
    }

    /// Every auto-approval rule, by name.
    pub fn rules(&self) -> Result<Vec<Rule>> {
        scan_json(&self.rules)
    }

    pub fn rule(&self, name: &Name) -> Result<Option<Rule>> {
        get_json(&self.rules, name.as_str().as_bytes())
    }

    /// Break-glass grants waiting for review, soonest due first, at most `limit`.
    pub fn reviews_waiting(&self, limit: usize) -> Result<Vec<Request>> {
        let mut out = Vec::new();
        for kv in self.reviews.iter().take(limit) {
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
        for kv in self.reviews.iter() {
            let (k, v) = kv?;
            if u64_at(&v, 0)? == identity.0 {
                out.push((u64_at(&k, 8)?, u64_at(&k, 0)? as i64 <= now.unix()));
            }
        }
        Ok(out)
    }

    /// What kind of target carries `name`, if any (hosts, fleets and commands share names).
    pub fn kind_of(&self, name: &Name) -> Result<Option<TargetKind>> {
        if self.hosts.contains_key(name.as_str().as_bytes())? {
            return Ok(Some(TargetKind::Host));
        }
        Ok(self.target(name)?.map(|t| t.kind()))
    }

    pub fn request(&self, id: u64) -> Result<Option<Request>> {
        get_json(&self.requests, &id.to_be_bytes())
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
            for kv in self.pending.range(pending_key(now, 0).to_vec()..).rev() {
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
        for v in self.requests.iter().values().rev() {
            if out.len() >= limit {
                break;
            }
            let r: Request = serde_json::from_slice(&v?)?;
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

    /// How many of `member`'s newest `scan` requests were denied at or after `since`, read
    /// from the index alone.
    pub fn denials_of(&self, member: IdentityId, since: Timestamp, scan: usize) -> Result<u32> {
        let mut n = 0;
        for kv in self
            .by_member
            .scan_prefix(member.0.to_be_bytes())
            .rev()
            .take(scan)
        {
            let (_, v) = kv?;
            if v.len() == 8 && u64_at(&v, 0)? as i64 >= since.unix() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Requests of `identity` (as requester or as host) that are open at `now`: pending, or
    /// granted with a window not over and not ended. Read outside any transaction, for a
    /// removal to close them (it checks each again inside its own).
    pub fn open_requests_of(&self, identity: IdentityId, now: Timestamp) -> Result<Vec<u64>> {
        let mine = |r: &Request| r.requester_id == identity || r.resource_id == identity;
        let mut ids = Vec::new();
        for kv in self.pending.range(pending_key(now, 0).to_vec()..) {
            let (k, _) = kv?;
            let id = u64_at(&k, 8)?;
            if self.request(id)?.is_some_and(|r| mine(&r)) {
                ids.push(id);
            }
        }
        for kv in self.grants.scan_prefix(identity.0.to_be_bytes()) {
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

    /// Certificates issued for a request.
    pub fn certs_of(&self, request_id: u64) -> Result<Vec<CertRecord>> {
        self.certs
            .scan_prefix(request_id.to_be_bytes())
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
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

/// Reading hosts and targets by name, the same way from the store and inside a transaction,
/// so finding a target is written once. A transaction's errors keep sled's conflicts (which
/// it retries) apart from ours.
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
    type Err = ConflictableTransactionError<Error>;
    fn host(&self, name: &Name) -> TxResult<Option<Host>> {
        Tx::host(self, name)
    }
    fn target(&self, name: &Name) -> TxResult<Option<Target>> {
        Tx::target(self, name)
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

    /// Stores a new member under a new identity (never reused) and indexes its keys.
    /// Returns the member as stored.
    pub fn add_member(&self, m: &Member) -> TxResult<Member> {
        let mut m = m.clone();
        m.id = self.next_identity()?;
        self.adjust_owners(&m, true)?;
        for fp in &m.key_fingerprints {
            self.keys
                .insert(fp.as_bytes(), m.name.as_str().as_bytes())?;
        }
        tx_put(self.members, m.name.as_str().as_bytes(), &m)?;
        Ok(m)
    }

    /// Replaces a member's record (role, keys) with `after`, keeping the key index and the
    /// owner count true. The identity does not change.
    pub fn replace_member(&self, before: &Member, after: &Member) -> TxResult<()> {
        if before.id != after.id || before.name != after.name {
            return Err(Error::Internal("a member's identity cannot change".into()).into());
        }
        if before.role != after.role {
            self.adjust_owners(before, false)?;
            self.adjust_owners(after, true)?;
        }
        for fp in before
            .key_fingerprints
            .iter()
            .filter(|f| !after.key_fingerprints.contains(f))
        {
            self.keys.remove(fp.as_bytes())?;
        }
        for fp in after
            .key_fingerprints
            .iter()
            .filter(|f| !before.key_fingerprints.contains(f))
        {
            self.keys
                .insert(fp.as_bytes(), after.name.as_str().as_bytes())?;
        }
        tx_put(self.members, after.name.as_str().as_bytes(), after)
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

    /// Stores a new host under a new identity (never reused); returns it as stored.
    pub fn add_host(&self, h: &Host) -> TxResult<Host> {
        let mut h = h.clone();
        h.id = self.next_identity()?;
        tx_put(self.hosts, h.name.as_str().as_bytes(), &h)?;
        Ok(h)
    }

    pub fn remove_host(&self, name: &Name) -> TxResult<()> {
        self.hosts.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    pub fn rule(&self, name: &Name) -> TxResult<Option<Rule>> {
        tx_get(self.rules, name.as_str().as_bytes())
    }

    /// Stores a rule (a new one gets its identity from the caller's [`Tx::new_identity`]).
    pub fn put_rule(&self, r: &Rule) -> TxResult<()> {
        tx_put(self.rules, r.name.as_str().as_bytes(), r)
    }

    pub fn remove_rule(&self, name: &Name) -> TxResult<()> {
        self.rules.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    /// A new identity, never reused (members, hosts, targets and rules share the counter).
    pub fn new_identity(&self) -> TxResult<IdentityId> {
        self.next_identity()
    }

    /// The fleet or command with this name.
    pub fn target(&self, name: &Name) -> TxResult<Option<Target>> {
        tx_get(self.targets, name.as_str().as_bytes())
    }

    /// What kind of target carries `name`, if any.
    pub fn kind_of(&self, name: &Name) -> TxResult<Option<TargetKind>> {
        if self.hosts.get(name.as_str().as_bytes())?.is_some() {
            return Ok(Some(TargetKind::Host));
        }
        Ok(self.target(name)?.map(|t| t.kind()))
    }

    /// Stores a new fleet or command under a new identity (never reused); returns it as stored.
    pub fn add_target(&self, t: &Target) -> TxResult<Target> {
        let mut t = t.clone();
        t.set_id(self.next_identity()?);
        tx_put(self.targets, t.name().as_str().as_bytes(), &t)?;
        Ok(t)
    }

    pub fn remove_target(&self, name: &Name) -> TxResult<()> {
        self.targets.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    pub fn request(&self, id: u64) -> TxResult<Option<Request>> {
        tx_get(self.requests, &id.to_be_bytes())
    }

    /// Stores a request and keeps every index of it true: pending by deadline, by member,
    /// and the open lists of its requester and its host.
    pub fn put_request(&self, r: &Request) -> TxResult<()> {
        self.touched.borrow_mut().push(r.id);
        let pk = pending_key(r.pending_until, r.id);
        if matches!(r.decision, Decision::Pending) {
            self.pending.insert(&pk[..], &[][..])?;
        } else {
            self.pending.remove(&pk[..])?;
        }
        // By member; a denial keeps its time as the value, so history reads no records.
        let mut mk = r.requester_id.0.to_be_bytes().to_vec();
        mk.extend_from_slice(&r.id.to_be_bytes());
        match &r.decision {
            Decision::Denied { at, .. } => {
                self.by_member
                    .insert(mk, &(at.unix().max(0) as u64).to_be_bytes()[..])?;
            }
            _ => {
                self.by_member.insert(mk, &[][..])?;
            }
        }
        // The requester's pending requests, in one small record (at most the pending cap).
        let entry = matches!(r.decision, Decision::Pending).then_some(OpenEntry {
            id: r.id,
            until: r.pending_until,
        });
        self.track_open(r.requester_id, r.id, entry)?;
        // Break-glass grants waiting for review, by due time; the value is the requester.
        if let Some(due) = r.review_due {
            let rk = pending_key(due, r.id);
            if r.review.is_none() {
                self.reviews
                    .insert(&rk[..], &r.requester_id.0.to_be_bytes()[..])?;
            } else {
                self.reviews.remove(&rk[..])?;
            }
        }
        if matches!(r.decision, Decision::Approved { .. }) {
            for identity in [r.requester_id, r.resource_id] {
                let mut k = identity.0.to_be_bytes().to_vec();
                k.extend_from_slice(&r.id.to_be_bytes());
                self.grants.insert(k, &[][..])?;
            }
        }
        self.put_request_record(r)
    }

    /// Rewrites a request's record when its state and indexes do not change (a certificate
    /// count going up).
    pub fn put_request_record(&self, r: &Request) -> TxResult<()> {
        tx_put(self.requests, &r.id.to_be_bytes(), r)
    }

    /// A member's pending requests, as of the last change that touched them; entries whose
    /// `until` has passed are no longer pending.
    pub fn open_of(&self, identity: IdentityId) -> TxResult<Vec<OpenEntry>> {
        Ok(tx_get(self.open, &identity.0.to_be_bytes())?.unwrap_or_default())
    }

    /// Puts `entry` (or nothing) in `identity`'s open list in place of request `id`, and drops
    /// entries that have closed by the change's time.
    fn track_open(&self, identity: IdentityId, id: u64, entry: Option<OpenEntry>) -> TxResult<()> {
        let before = self.open_of(identity)?;
        let mut after: Vec<OpenEntry> = before
            .iter()
            .copied()
            .filter(|e| e.id != id && e.until > self.now)
            .collect();
        after.extend(entry);
        if after == before {
            return Ok(());
        }
        let key = identity.0.to_be_bytes();
        if after.is_empty() {
            self.open.remove(&key[..])?;
            return Ok(());
        }
        tx_put(self.open, &key, &after)
    }

    /// Forgets a member's pending list (they were removed, and everything open was closed).
    pub fn drop_open(&self, identity: IdentityId) -> TxResult<()> {
        self.open.remove(&identity.0.to_be_bytes()[..])?;
        Ok(())
    }

    /// The next request id (1, 2, ...).
    pub fn next_request_id(&self) -> TxResult<u64> {
        self.bump(NEXT_REQUEST)
    }

    /// The next member or host identity (1, 2, ...), never reused.
    fn next_identity(&self) -> TxResult<IdentityId> {
        self.bump(NEXT_IDENTITY).map(IdentityId)
    }

    /// The serial for a certificate issued in this transaction: the sequence number its audit
    /// entry will get. Unique and increasing across restarts, and it ties every certificate to
    /// its place in the log. Valid only when the certificate's event is the transaction's first.
    pub fn next_serial(&self) -> TxResult<u64> {
        Ok(decode_head(self.meta.get(HEAD)?.as_deref())?.0 + 1)
    }

    pub fn put_cert(&self, c: &CertRecord) -> TxResult<()> {
        // Keyed by request, then serial: a request's certificates are one prefix scan.
        let mut key = c.request_id.to_be_bytes().to_vec();
        key.extend_from_slice(&c.serial.to_be_bytes());
        tx_put(self.certs, &key, c)
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

/// A committed change's place in the flush order; durable once the flusher has passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Group commit. Committed changes take a ticket; one flusher thread flushes whatever has
/// committed since its last flush, so one flush serves every change that came before it.
struct GroupFlush {
    shared: Arc<FlushShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct FlushShared {
    state: Mutex<FlushState>,
    /// Wakes the flusher (work to do) and blocking waiters (a flush finished).
    signal: Condvar,
    /// Tells async waiters that `flushed` moved.
    flushed_tx: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct FlushState {
    registered: u64,
    flushed: u64,
    failed: Option<String>,
    stop: bool,
}

impl GroupFlush {
    fn start(db: sled::Db) -> Result<GroupFlush> {
        let shared = Arc::new(FlushShared {
            state: Mutex::new(FlushState::default()),
            signal: Condvar::new(),
            flushed_tx: tokio::sync::watch::channel(0).0,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sshjit-flush".into())
            .spawn(move || flusher(&s, &db))
            .map_err(Error::io("cannot start the flush thread"))?;
        Ok(GroupFlush {
            shared,
            thread: Some(thread),
        })
    }

    fn latest(&self) -> Ticket {
        Ticket(self.shared.lock().registered)
    }

    fn register(&self) -> Ticket {
        let mut st = self.shared.lock();
        st.registered += 1;
        self.shared.signal.notify_all();
        Ticket(st.registered)
    }

    fn wait_blocking(&self, t: Ticket) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            if st.flushed >= t.0 {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(Error::Storage(format!("flush failed: {e}")));
            }
            st = self
                .shared
                .signal
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    async fn wait(&self, t: Ticket) -> Result<()> {
        let mut rx = self.shared.flushed_tx.subscribe();
        loop {
            {
                let st = self.shared.lock();
                if st.flushed >= t.0 {
                    return Ok(());
                }
                if let Some(e) = &st.failed {
                    return Err(Error::Storage(format!("flush failed: {e}")));
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::Storage("the flush thread stopped".into()));
            }
        }
    }
}

impl FlushShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the flusher lets commits gather before it flushes, unless enough are waiting.
/// A flush costs about a millisecond of I/O here; sharing it is what makes durable writes cheap.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// A gap this long with no new commit ends the gathering.
const QUIET: std::time::Duration = std::time::Duration::from_micros(300);
/// Flush at once when this many commits are waiting.
const GATHER_MAX: u64 = 16;

fn flusher(s: &FlushShared, db: &sled::Db) {
    loop {
        let covers = {
            let mut st = s.lock();
            while st.registered == st.flushed && !st.stop {
                st = s.signal.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.registered == st.flushed {
                return;
            }
            // Keep gathering while commits keep coming (up to GATHER); a lone commit waits
            // at most one short quiet period.
            let deadline = std::time::Instant::now() + GATHER;
            loop {
                let seen = st.registered;
                if seen - st.flushed >= GATHER_MAX || st.stop {
                    break;
                }
                let left = deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .min(QUIET);
                if left.is_zero() {
                    break;
                }
                st = s
                    .signal
                    .wait_timeout(st, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                if st.registered == seen {
                    break;
                }
            }
            st.registered
        };
        let result = db.flush();
        let mut st = s.lock();
        match result {
            Ok(_) => st.flushed = covers,
            Err(e) => {
                tracing::error!(error = %e, "flush failed; changes are not acknowledged");
                st.failed = Some(e.to_string());
            }
        }
        let flushed = st.flushed;
        drop(st);
        s.signal.notify_all();
        s.flushed_tx.send_replace(flushed);
    }
}

impl Drop for GroupFlush {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.signal.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who waits for which request to change (`wait`), woken when a change to it commits.
#[derive(Default)]
struct RequestWatch {
    waiters: Mutex<HashMap<u64, Arc<tokio::sync::Notify>>>,
}

impl RequestWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<tokio::sync::Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, id: u64) -> Arc<tokio::sync::Notify> {
        self.lock().entry(id).or_default().clone()
    }

    fn forget(&self, id: u64) {
        let mut map = self.lock();
        if map.get(&id).is_some_and(|n| Arc::strong_count(n) == 1) {
            map.remove(&id);
        }
    }

    fn wake(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let map = self.lock();
        for id in ids {
            if let Some(n) = map.get(id) {
                n.notify_waiters();
            }
        }
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

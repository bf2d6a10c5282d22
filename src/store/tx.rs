//! The writes a change makes inside its transaction, each keeping every index of what it
//! writes true.

use super::*;

impl Tx<'_> {
    pub fn member(&self, name: &Name) -> TxResult<Option<Member>> {
        Ok(self
            .t
            .members
            .get(name.as_str().as_bytes())?
            .map(|raw| decoded::member(&raw))
            .transpose()?)
    }

    pub fn key_owner(&self, fingerprint: &str) -> TxResult<Option<String>> {
        Ok(self
            .t
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
            self.t
                .keys
                .insert(fp.as_bytes(), m.name.as_str().as_bytes())?;
        }
        tx_put(self.t.members, m.name.as_str().as_bytes(), &m)?;
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
            self.t.keys.remove(fp.as_bytes())?;
        }
        for fp in after
            .key_fingerprints
            .iter()
            .filter(|f| !before.key_fingerprints.contains(f))
        {
            self.t
                .keys
                .insert(fp.as_bytes(), after.name.as_str().as_bytes())?;
        }
        tx_put(self.t.members, after.name.as_str().as_bytes(), after)
    }

    pub fn remove_member(&self, m: &Member) -> TxResult<()> {
        self.adjust_owners(m, false)?;
        for fp in &m.key_fingerprints {
            self.t.keys.remove(fp.as_bytes())?;
        }
        self.t.members.remove(m.name.as_str().as_bytes())?;
        Ok(())
    }

    /// How many OWNERs exist, so the last one is never removed.
    pub fn owner_count(&self) -> TxResult<u64> {
        match self.t.meta.get(OWNERS)? {
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
        self.t.meta.insert(OWNERS, &n.to_be_bytes()[..])?;
        Ok(())
    }

    pub fn host(&self, name: &Name) -> TxResult<Option<Host>> {
        Ok(self
            .t
            .hosts
            .get(name.as_str().as_bytes())?
            .map(|raw| decoded::host(&raw))
            .transpose()?)
    }

    /// Stores a new host under a new identity (never reused); returns it as stored.
    pub fn add_host(&self, h: &Host) -> TxResult<Host> {
        let mut h = h.clone();
        h.id = self.next_identity()?;
        tx_put(self.t.hosts, h.name.as_str().as_bytes(), &h)?;
        Ok(h)
    }

    pub fn remove_host(&self, name: &Name) -> TxResult<()> {
        self.t.hosts.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    pub fn rule(&self, name: &Name) -> TxResult<Option<Rule>> {
        tx_get(self.t.rules, name.as_str().as_bytes())
    }

    /// Stores a rule (a new one gets its identity from the caller's [`Tx::new_identity`]).
    pub fn put_rule(&self, r: &Rule) -> TxResult<()> {
        tx_put(self.t.rules, r.name.as_str().as_bytes(), r)
    }

    pub fn remove_rule(&self, name: &Name) -> TxResult<()> {
        self.t.rules.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    /// A new identity, never reused (members, hosts, targets and rules share the counter).
    pub fn new_identity(&self) -> TxResult<IdentityId> {
        self.next_identity()
    }

    /// The fleet or command with this name.
    pub fn target(&self, name: &Name) -> TxResult<Option<Target>> {
        tx_get(self.t.targets, name.as_str().as_bytes())
    }

    /// What kind of target carries `name`, if any.
    pub fn kind_of(&self, name: &Name) -> TxResult<Option<TargetKind>> {
        if self.t.hosts.get(name.as_str().as_bytes())?.is_some() {
            return Ok(Some(TargetKind::Host));
        }
        Ok(self.target(name)?.map(|t| t.kind()))
    }

    /// Stores a new fleet or command under a new identity (never reused); returns it as stored.
    pub fn add_target(&self, t: &Target) -> TxResult<Target> {
        let mut t = t.clone();
        t.set_id(self.next_identity()?);
        tx_put(self.t.targets, t.name().as_str().as_bytes(), &t)?;
        Ok(t)
    }

    pub fn remove_target(&self, name: &Name) -> TxResult<()> {
        self.t.targets.remove(name.as_str().as_bytes())?;
        Ok(())
    }

    pub fn request(&self, id: u64) -> TxResult<Option<Request>> {
        let key = id.to_be_bytes();
        let Some(raw) = self.t.requests.get(key)? else {
            return Ok(None);
        };
        let issued = |_: &Request| self.t.issued.get(key);
        Ok(Some(with_issued(&raw, issued)?))
    }

    /// Stores a request and keeps every index of it true: pending by deadline, by member,
    /// and the open lists of its requester and its host.
    pub fn put_request(&self, r: &Request) -> TxResult<()> {
        self.touched.borrow_mut().push(r.id);
        // What falls due matters only to notifications: without an endpoint, no timers.
        if self.outbox_on {
            let before = self.request(r.id)?;
            self.sync_timers(before.as_ref(), r)?;
        }
        let pk = pending_key(r.pending_until, r.id);
        if matches!(r.decision, Decision::Pending) {
            self.t.pending.insert(&pk[..], &[][..])?;
        } else {
            self.t.pending.remove(&pk[..])?;
        }
        // By member; a denial keeps its time as the value, so history reads no records.
        let mut mk = r.requester_id.0.to_be_bytes().to_vec();
        mk.extend_from_slice(&r.id.to_be_bytes());
        match &r.decision {
            Decision::Denied { at, .. } => {
                let at = at.unix().max(0) as u64;
                self.t
                    .denials
                    .insert(denial_key(r.requester_id, at, r.id), [])?;
                self.t.by_member.insert(mk, &at.to_be_bytes()[..])?;
            }
            _ => {
                self.t.by_member.insert(mk, &[][..])?;
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
                self.t
                    .reviews
                    .insert(&rk[..], &r.requester_id.0.to_be_bytes()[..])?;
            } else {
                self.t.reviews.remove(&rk[..])?;
            }
        }
        if matches!(r.decision, Decision::Approved { .. }) {
            for identity in [r.requester_id, r.resource_id] {
                let mut k = identity.0.to_be_bytes().to_vec();
                k.extend_from_slice(&r.id.to_be_bytes());
                self.t.grants.insert(k, &[][..])?;
            }
        }
        tx_put(self.t.requests, &r.id.to_be_bytes(), r)
    }

    /// Counts one more certificate for request `id`'s grant, which now has `issued`. Only
    /// the count changes: the request's record stays as it was.
    pub fn count_certificate(&self, id: u64, issued: u32) -> TxResult<()> {
        self.t
            .issued
            .insert(id.to_be_bytes(), u64::from(issued).to_be_bytes())
    }

    /// A member's pending requests, as of the last change that touched them; entries whose
    /// `until` has passed are no longer pending.
    pub fn open_of(&self, identity: IdentityId) -> TxResult<Vec<OpenEntry>> {
        Ok(tx_get(self.t.open, &identity.0.to_be_bytes())?.unwrap_or_default())
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
            self.t.open.remove(&key[..])?;
            return Ok(());
        }
        tx_put(self.t.open, &key, &after)
    }

    /// Forgets a member's pending list (they were removed, and everything open was closed).
    pub fn drop_open(&self, identity: IdentityId) -> TxResult<()> {
        self.t.open.remove(&identity.0.to_be_bytes()[..])?;
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
        self.next_seq()
    }

    /// Indexes a certificate under its request. The value is empty: the certificate's audit
    /// entry, whose sequence number is its serial, holds everything about it.
    pub fn put_cert(&self, request_id: u64, serial: u64) -> TxResult<()> {
        // Keyed by request, then serial: a request's certificates are one prefix scan.
        let mut key = request_id.to_be_bytes().to_vec();
        key.extend_from_slice(&serial.to_be_bytes());
        self.t.certs.insert(key, [])
    }

    fn bump(&self, key: &[u8]) -> TxResult<u64> {
        let last = match self.t.meta.get(key)? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        };
        let next = last + 1;
        self.t.meta.insert(key, &next.to_be_bytes()[..])?;
        Ok(next)
    }
}

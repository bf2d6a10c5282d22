//! The outbox (notifications written with their change), the timers index (what falls due
//! when), and each endpoint's delivery bookkeeping.
//!
//! Outbox entries and timers change only inside a change's transaction. Delivery bookkeeping
//! (how far an endpoint got, what it must retry) is not a change to access and is not audited:
//! losing the latest of it in a crash only sends a notification again, which webhook ids let
//! receivers drop.

use serde::{Serialize, de::DeserializeOwned};
use sha2::Digest;

use super::{Store, Tx, TxResult, get_json, tx_put, u64_at};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::model::{Request, Role, Timestamp};
use crate::notify::{self, Event, Notice, Subject};

impl Tx<'_> {
    /// Writes the outbox entry for the audit entry `seq` that records `event`, if it notifies.
    /// Returns whether it wrote one.
    pub(super) fn record_notice(
        &self,
        seq: u64,
        actor: &str,
        event: &AuditEvent,
    ) -> TxResult<bool> {
        if !self.outbox_on {
            return Ok(false);
        }
        let Some((what, subject)) = notify::event_of(event) else {
            return Ok(false);
        };
        let request = match subject {
            Subject::Nothing => None,
            Subject::Request(id) => self.request(id)?,
            Subject::Member { name, role } => {
                let role = match role {
                    Some(r) => r,
                    None => match self.member(&name.parse()?)? {
                        Some(m) => m.role,
                        None => return Ok(false),
                    },
                };
                if role < Role::Admin {
                    return Ok(false);
                }
                None
            }
        };
        let notice = Notice {
            seq,
            event: what,
            at: self.now,
            actor: actor.to_string(),
            change: event.clone(),
            request,
        };
        tx_put(self.t.outbox, &seq.to_be_bytes(), &notice)?;
        Ok(true)
    }

    /// Keeps the timers of request `r` true after it changes from `before`.
    pub(super) fn sync_timers(&self, before: Option<&Request>, r: &Request) -> TxResult<()> {
        let old = before.map(notify::timers_of).unwrap_or_default();
        let new = notify::timers_of(r);
        for (at, what) in old.iter().filter(|t| !new.contains(t)) {
            self.t
                .timers
                .remove(&notify::timer_key(*at, r.id, *what)[..])?;
        }
        for (at, what) in new.iter().filter(|t| !old.contains(t)) {
            self.t
                .timers
                .insert(&notify::timer_key(*at, r.id, *what)[..], &[][..])?;
        }
        Ok(())
    }

    /// Removes a timer that fell due; false if it was already gone (the request changed).
    pub fn take_timer(&self, due: Timestamp, id: u64, what: Event) -> TxResult<bool> {
        let key = notify::timer_key(due, id, what);
        if self.t.timers.get(key)?.is_none() {
            return Ok(false);
        }
        self.t.timers.remove(key)?;
        Ok(true)
    }
}

impl Store {
    /// Up to `limit` outbox entries after `seq`, oldest first.
    pub fn notices_after(&self, seq: u64, limit: usize) -> Result<Vec<Notice>> {
        self.t
            .outbox
            .range((seq + 1).to_be_bytes()..)
            .take(limit)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn notice(&self, seq: u64) -> Result<Option<Notice>> {
        get_json(&self.t.outbox, &seq.to_be_bytes())
    }

    /// The newest outbox entry's sequence number (0 if none).
    pub fn last_notice(&self) -> Result<u64> {
        match self.t.outbox.last()? {
            Some((k, _)) => u64_at(&k, 0),
            None => Ok(0),
        }
    }

    /// Deletes outbox entries up to `seq`, which every endpoint is done with.
    pub fn prune_notices(&self, seq: u64) -> Result<usize> {
        let mut gone = Vec::new();
        for kv in self.t.outbox.range(..=seq.to_be_bytes()) {
            gone.push((kv?.0, None));
        }
        let n = gone.len();
        self.t.outbox.apply(gone)?;
        Ok(n)
    }

    /// Whether changes leave notifications in the outbox: only when an endpoint is
    /// configured (an endpoint added later starts from its first start, not from the past).
    pub fn set_outbox(&self, on: bool) {
        self.outbox_on
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A short name for this broker's log: the start of its first entry's hash, the same on
    /// every restart and different for every `init`.
    pub fn origin(&self) -> Result<String> {
        let first = self.audit_raw(1).next().transpose()?.unwrap_or_default();
        Ok(hex::encode(&sha2::Sha256::digest(&first)[..6]))
    }

    /// Follows the newest durable outbox entry (see the flusher).
    pub fn durable_notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flusher.durable_notices()
    }

    /// Timers due at or before `now`, soonest first, at most `limit`.
    pub fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<(Timestamp, u64, Event)>> {
        let end = notify::timer_key(now, u64::MAX, Event::Test);
        let mut out = Vec::new();
        for kv in self.t.timers.range(..=end).take(limit) {
            match notify::parse_timer_key(&kv?.0) {
                Some(t) => out.push(t),
                None => return Err(Error::Internal("a stored timer key is corrupt".into())),
            }
        }
        Ok(out)
    }

    /// Removes a timer that no longer matches its request (left from a time without
    /// endpoints, when timers were not kept): index upkeep, not a change to audit.
    pub fn drop_timer(&self, due: Timestamp, id: u64, what: Event) -> Result<()> {
        self.t.timers.remove(notify::timer_key(due, id, what))
    }

    /// When the soonest timer falls due.
    pub fn next_timer(&self) -> Result<Option<Timestamp>> {
        match self.t.timers.first()? {
            Some((k, _)) => Ok(notify::parse_timer_key(&k).map(|t| t.0)),
            None => Ok(None),
        }
    }

    /// An endpoint's bookkeeping record.
    pub fn endpoint_state<T: DeserializeOwned>(&self, endpoint: &str) -> Result<Option<T>> {
        get_json(&self.t.deliveries, format!("e/{endpoint}").as_bytes())
    }

    /// An endpoint's notifications waiting for a retry: (outbox seq, record).
    pub fn endpoint_retries<T: DeserializeOwned>(&self, endpoint: &str) -> Result<Vec<(u64, T)>> {
        let prefix = format!("r/{endpoint}/");
        self.t
            .deliveries
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((u64_at(&k, prefix.len())?, serde_json::from_slice(&v)?))
            })
            .collect()
    }

    /// Saves an endpoint's record and, in the same write, sets (Some) or clears (None) its
    /// retry of the notification `seq`.
    pub fn save_endpoint<S: Serialize, R: Serialize>(
        &self,
        endpoint: &str,
        state: &S,
        retry: Option<(u64, Option<&R>)>,
    ) -> Result<()> {
        let mut ops = vec![(
            format!("e/{endpoint}").into_bytes(),
            Some(serde_json::to_vec(state)?),
        )];
        if let Some((seq, r)) = retry {
            let mut key = format!("r/{endpoint}/").into_bytes();
            key.extend_from_slice(&seq.to_be_bytes());
            ops.push((key, r.map(serde_json::to_vec).transpose()?));
        }
        self.t.deliveries.apply(ops)
    }
}

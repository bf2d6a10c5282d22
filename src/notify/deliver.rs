//! Delivery: each endpoint walks the outbox in order, sends what it wants, and retries what
//! failed with exponential backoff for up to a day. Time is an argument, so retries, backoff,
//! `Retry-After` and 410 are tested without waiting.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{Endpoint, Format};
use super::format::{self, Message};
use super::{Event, Notice};
use crate::contract::DeliveryCounts;
use crate::error::Result;
use crate::model::{Name, Timestamp, escape_for_log};
use crate::store::Store;

/// Retries stop this long after the first attempt.
pub const RETRY_FOR_SECS: i64 = 24 * 3600;
/// The first wait after a failure; each further failure doubles it, up to [`MAX_BACKOFF_SECS`].
pub const FIRST_BACKOFF_SECS: u64 = 5;
pub const MAX_BACKOFF_SECS: u64 = 3600;
/// One attempt's limit, connecting and answering together.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications read from the outbox per endpoint per pass.
const BATCH: usize = 200;

/// An endpoint's progress and counters (bookkeeping, kept across restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Every outbox entry up to here was sent, is waiting for a retry, or was not wanted.
    pub cursor: u64,
    #[serde(flatten)]
    pub counts: DeliveryCounts,
    /// The endpoint did not answer well (no answer, 5xx, 408, 429): nothing is sent to it
    /// before this time, its failed notification's next retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_until: Option<Timestamp>,
}

/// An endpoint with its record and its notifications waiting for a retry (by outbox seq).
pub type EndpointStatus = (Endpoint, EndpointRecord, Vec<(u64, Retry)>);

/// A notification waiting to be sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub attempts: u32,
    pub first_at: Timestamp,
    pub next_at: Timestamp,
    pub last_error: String,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A connection error, a timeout, or a status other than 2xx and 410; `retry_after` is
    /// the `Retry-After` header in seconds, when the endpoint sent one.
    Failed {
        error: String,
        /// The HTTP status, if the endpoint answered.
        status: Option<u16>,
        retry_after: Option<u64>,
    },
    /// 410 Gone: the endpoint asks never to be called again.
    Gone,
}

impl Outcome {
    /// Whether the endpoint itself is unwell (no answer, 5xx, 408, 429), rather than this
    /// one message refused: then the rest waits for its next retry.
    pub fn endpoint_down(&self) -> bool {
        match self {
            Outcome::Failed { status, .. } => {
                status.is_none_or(|s| s >= 500 || s == 408 || s == 429)
            }
            _ => false,
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    RetryAt(Timestamp),
    /// A day of retries has passed: count it as failed.
    GiveUp,
    Disable,
}

/// After `attempts` attempts (this one included) of a notification first tried at
/// `first_at`, what comes next at `now`.
pub fn next(outcome: &Outcome, attempts: u32, first_at: Timestamp, now: Timestamp) -> Next {
    match outcome {
        Outcome::Delivered => Next::Done,
        Outcome::Gone => Next::Disable,
        Outcome::Failed { retry_after, .. } => {
            let doubling =
                FIRST_BACKOFF_SECS.saturating_mul(1 << attempts.saturating_sub(1).min(20));
            let wait = doubling
                .min(MAX_BACKOFF_SECS)
                .max(retry_after.unwrap_or(0).min(RETRY_FOR_SECS as u64));
            let at = now.plus(wait);
            if first_at.until(at) >= RETRY_FOR_SECS {
                Next::GiveUp
            } else {
                Next::RetryAt(at)
            }
        }
    }
}

/// `Retry-After` in seconds from `now`: delay-seconds, or an HTTP date.
pub fn retry_after(value: &str, now: Timestamp) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(u64::try_from(at.timestamp() - now.unix()).unwrap_or(0))
}

/// Posts a message at `now` and says how it went.
pub fn post(agent: &ureq::Agent, url: &str, m: &Message, now: Timestamp) -> Outcome {
    let mut req = agent.post(url);
    for (k, v) in &m.headers {
        req = req.header(k, v);
    }
    match req.send(m.body.as_bytes()) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Outcome::Delivered;
            }
            if status == 410 {
                return Outcome::Gone;
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, now));
            Outcome::Failed {
                error: format!("HTTP {status}"),
                status: Some(status),
                retry_after,
            }
        }
        // The URL may carry a token: it never reaches the log or `notify status`.
        Err(e) => Outcome::Failed {
            error: escape_for_log(&e.to_string().replace(url, "<url>")),
            status: None,
            retry_after: None,
        },
    }
}

/// An HTTP agent that reports every status as an answer (not an error) and gives up on an
/// attempt after `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .user_agent(concat!("sshjit/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Sends the outbox to the configured endpoints.
pub struct Deliverer {
    endpoints: Vec<Endpoint>,
    /// Names this broker's log in message ids, so two brokers' `msg_..._7` differ.
    origin: String,
    agent: ureq::Agent,
}

impl Deliverer {
    /// Starts each endpoint not seen before at the outbox's current end: it hears of changes
    /// from now on. (Called before the broker serves, so nothing slips between.)
    pub fn new(endpoints: Vec<Endpoint>, store: &Store, timeout: Duration) -> Result<Deliverer> {
        let start = store.last_notice()?;
        for e in &endpoints {
            if store.endpoint_state::<EndpointRecord>(&e.id)?.is_none() {
                let rec = EndpointRecord {
                    cursor: start,
                    ..EndpointRecord::default()
                };
                store.save_endpoint::<_, Retry>(&e.id, &rec, None)?;
            }
        }
        Ok(Deliverer {
            endpoints,
            origin: store.origin()?,
            agent: agent(timeout),
        })
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// One pass at `now` over every endpoint, up to the newest durable outbox entry
    /// `durable`, then prunes. Returns when the soonest retry falls due. (The server runs
    /// [`Deliverer::step_endpoint`] for each endpoint on its own thread instead.)
    pub fn step(&self, store: &Store, durable: u64, now: Timestamp) -> Result<Option<Timestamp>> {
        let mut soonest: Option<Timestamp> = None;
        for i in 0..self.endpoints.len() {
            if let Some(t) = self.step_endpoint(i, store, durable, now)? {
                soonest = Some(soonest.map_or(t, |s| s.min(t)));
            }
        }
        self.prune(store, durable)?;
        Ok(soonest)
    }

    /// One pass for endpoint `i`: its due retries, then what is new. An endpoint that does
    /// not answer (or answers 5xx, 408 or 429) is left alone for the rest of the pass, so a
    /// dead endpoint costs one timeout per pass, not one per notification.
    pub fn step_endpoint(
        &self,
        i: usize,
        store: &Store,
        durable: u64,
        now: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let Some(e) = self.endpoints.get(i) else {
            return Ok(None);
        };
        let Some(mut rec) = store.endpoint_state::<EndpointRecord>(&e.id)? else {
            return Ok(None);
        };
        if rec.counts.disabled.is_some() {
            return Ok(None);
        }
        if let Some(t) = rec.rest_until.filter(|t| *t > now) {
            return Ok(Some(t));
        }
        let approvers = Approvers::read(store)?;
        let mut soonest: Option<Timestamp> = None;
        let mut note = |t: Timestamp| soonest = Some(soonest.map_or(t, |s: Timestamp| s.min(t)));
        let mut down = false;
        rec.rest_until = None;
        for (seq, mut retry) in store.endpoint_retries::<Retry>(&e.id)? {
            if retry.next_at > now || down {
                note(retry.next_at.max(rec.rest_until.unwrap_or(now)));
                continue;
            }
            let Some(n) = store.notice(seq)? else {
                store.save_endpoint::<_, Retry>(&e.id, &rec, Some((seq, None)))?;
                continue;
            };
            retry.attempts += 1;
            let keep = self.attempt(store, e, &mut rec, &n, &mut retry, &approvers, now)?;
            if rec.counts.disabled.is_some() {
                return Ok(None);
            }
            if keep {
                note(retry.next_at);
            }
            down = rec.rest_until.is_some();
        }
        while !down && rec.cursor < durable {
            let batch = store.notices_after(rec.cursor, BATCH)?;
            let batch: Vec<Notice> = batch.into_iter().filter(|n| n.seq <= durable).collect();
            if batch.is_empty() {
                break;
            }
            for n in batch {
                rec.cursor = n.seq;
                if !e.wants(n.event, n.requester()) {
                    store.save_endpoint::<_, Retry>(&e.id, &rec, None)?;
                    continue;
                }
                let mut retry = Retry {
                    attempts: 1,
                    first_at: now,
                    next_at: now,
                    last_error: String::new(),
                };
                let keep = self.attempt(store, e, &mut rec, &n, &mut retry, &approvers, now)?;
                if rec.counts.disabled.is_some() {
                    return Ok(None);
                }
                if keep {
                    note(retry.next_at);
                }
                if rec.rest_until.is_some() {
                    down = true;
                    break;
                }
            }
        }
        Ok(soonest)
    }

    /// Sends `n` once and records how it went (in one write with its retry, if it needs
    /// one); true if it must be tried again. An endpoint that is down rests until then
    /// (`rec.rest_until`).
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        store: &Store,
        e: &Endpoint,
        rec: &mut EndpointRecord,
        n: &Notice,
        retry: &mut Retry,
        approvers: &Approvers,
        now: Timestamp,
    ) -> Result<bool> {
        let outcome = self.send(e, n, approvers, now);
        let keep = self.settle(e, rec, n, &outcome, retry, now);
        if outcome.endpoint_down() && rec.counts.disabled.is_none() {
            rec.rest_until = Some(retry.next_at);
        }
        store.save_endpoint(&e.id, rec, Some((n.seq, keep.then_some(&*retry))))?;
        Ok(keep)
    }

    /// Counts an attempt's outcome in `rec` and `retry`; true if it must be tried again.
    fn settle(
        &self,
        e: &Endpoint,
        rec: &mut EndpointRecord,
        n: &Notice,
        outcome: &Outcome,
        retry: &mut Retry,
        now: Timestamp,
    ) -> bool {
        match next(outcome, retry.attempts, retry.first_at, now) {
            Next::Done => {
                rec.counts.delivered += 1;
                rec.counts.last_delivered_at = Some(now);
                false
            }
            Next::RetryAt(at) => {
                let error = error_of(outcome);
                tracing::warn!(endpoint = %e.name, seq = n.seq, attempts = retry.attempts, error = %error, retry_at = %at, "notification not delivered; will retry");
                retry.next_at = at;
                retry.last_error = error.clone();
                rec.counts.last_error = Some(error);
                rec.counts.last_error_at = Some(now);
                true
            }
            Next::GiveUp => {
                let error = error_of(outcome);
                tracing::error!(endpoint = %e.name, seq = n.seq, attempts = retry.attempts, error = %error, "notification given up after a day of retries");
                rec.counts.failed += 1;
                rec.counts.last_error = Some(error);
                rec.counts.last_error_at = Some(now);
                false
            }
            Next::Disable => {
                tracing::error!(endpoint = %e.name, seq = n.seq, "endpoint answered 410 Gone; it is disabled until its url changes");
                rec.counts.disabled = Some(format!("answered 410 Gone at {now}"));
                rec.counts.last_error = Some("HTTP 410 Gone".into());
                rec.counts.last_error_at = Some(now);
                true
            }
        }
    }

    fn send(&self, e: &Endpoint, n: &Notice, approvers: &Approvers, now: Timestamp) -> Outcome {
        let approvers = approvers.for_notice(n);
        let m = match (e.format, &e.secret) {
            (Format::Standard, Some(secret)) => {
                let id = format::message_id(&self.origin, n.seq);
                format::standard(n, approvers, &id, secret, now)
            }
            _ => format::slack(n, &approvers),
        };
        post(&self.agent, &e.url, &m, now)
    }

    /// Drops outbox entries that every endpoint still sending is done with (a disabled one
    /// gets nothing more, so it holds nothing back).
    pub fn prune(&self, store: &Store, durable: u64) -> Result<()> {
        let mut done = durable;
        for e in &self.endpoints {
            match store.endpoint_state::<EndpointRecord>(&e.id)? {
                Some(rec) if rec.counts.disabled.is_some() => continue,
                Some(rec) => done = done.min(rec.cursor),
                None => {}
            }
            if let Some((seq, _)) = store.endpoint_retries::<Retry>(&e.id)?.first() {
                done = done.min(seq - 1);
            }
        }
        store.prune_notices(done)?;
        Ok(())
    }

    /// Each endpoint's counters, for `notify status`.
    pub fn status(&self, store: &Store) -> Result<Vec<EndpointStatus>> {
        let mut out = Vec::new();
        for e in &self.endpoints {
            let rec = store
                .endpoint_state::<EndpointRecord>(&e.id)?
                .unwrap_or_default();
            let retries = store.endpoint_retries::<Retry>(&e.id)?;
            out.push((e.clone(), rec, retries));
        }
        Ok(out)
    }
}

fn error_of(o: &Outcome) -> String {
    match o {
        Outcome::Failed { error, .. } => error.clone(),
        Outcome::Gone => "HTTP 410 Gone".into(),
        Outcome::Delivered => String::new(),
    }
}

/// The owners and admins, read once per pass.
struct Approvers(Vec<crate::model::Member>);

impl Approvers {
    fn read(store: &Store) -> Result<Approvers> {
        Ok(Approvers(
            store
                .members()?
                .into_iter()
                .filter(|m| m.role.can_manage() && m.kind == crate::verdict::MemberKind::Human)
                .collect(),
        ))
    }

    /// Who can act on the notice's request now: owners and admins other than its requester.
    fn for_notice(&self, n: &Notice) -> Vec<Name> {
        let wanted = matches!(
            n.event,
            Event::RequestCreated
                | Event::RequestEscalated
                | Event::BreakGlassUsed
                | Event::ReviewDue
                | Event::ReviewOverdue
        );
        match (&n.request, wanted) {
            (Some(r), true) => self
                .0
                .iter()
                .filter(|m| m.id != r.requester_id)
                .map(|m| m.name.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_unix(1_800_000_000);

    fn failed(retry_after: Option<u64>) -> Outcome {
        Outcome::Failed {
            error: "HTTP 503".into(),
            status: Some(503),
            retry_after,
        }
    }

    #[test]
    fn backoff_doubles_up_to_an_hour_and_stops_after_a_day() {
        assert_eq!(next(&failed(None), 1, T0, T0), Next::RetryAt(T0.plus(5)));
        assert_eq!(next(&failed(None), 2, T0, T0), Next::RetryAt(T0.plus(10)));
        assert_eq!(next(&failed(None), 5, T0, T0), Next::RetryAt(T0.plus(80)));
        assert_eq!(
            next(&failed(None), 30, T0, T0),
            Next::RetryAt(T0.plus(3600))
        );
        let late = T0.plus(23 * 3600 + 1800);
        assert_eq!(next(&failed(None), 40, T0, late), Next::GiveUp);
        assert_eq!(next(&Outcome::Delivered, 3, T0, late), Next::Done);
        assert_eq!(next(&Outcome::Gone, 1, T0, T0), Next::Disable);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(retry_after(" 120 ", T0), Some(120));
        // T0 is 2027-01-15T08:00:00Z.
        assert_eq!(retry_after("Fri, 15 Jan 2027 08:02:00 GMT", T0), Some(120));
        assert_eq!(retry_after("Fri, 15 Jan 2027 07:00:00 GMT", T0), Some(0));
        assert_eq!(retry_after("soon", T0), None);
    }

    #[test]
    fn retry_after_is_honoured_but_not_past_the_day() {
        assert_eq!(
            next(&failed(Some(120)), 1, T0, T0),
            Next::RetryAt(T0.plus(120))
        );
        // A shorter Retry-After does not make the backoff shorter.
        assert_eq!(
            next(&failed(Some(1)), 3, T0, T0),
            Next::RetryAt(T0.plus(20))
        );
        assert_eq!(next(&failed(Some(10 * 86400)), 1, T0, T0), Next::GiveUp);
    }
}

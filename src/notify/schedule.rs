//! The broker's background work: the scheduler, which records what falls due (expiry,
//! escalation, a window's end, a review) once when its time passes, and a delivery thread per
//! endpoint, which sends durable outbox entries. None blocks a command; all stop with the
//! server.

use std::sync::Arc;
use std::time::Duration;

use super::Event;
use crate::audit::AuditEvent;
use crate::broker::Broker;
use crate::error::{Error, Result};
use crate::model::Timestamp;
use crate::store::Store;

/// Timers fired per transaction pass.
const FIRE_BATCH: usize = 100;

/// Records every timer due at `now` as an audited change with its notice; returns how many
/// fired. A timer whose request changed meanwhile is gone already and is skipped.
pub fn fire_due(store: &Store, now: Timestamp) -> Result<usize> {
    let mut fired = 0;
    loop {
        let due = store.due_timers(now, FIRE_BATCH)?;
        if due.is_empty() {
            return Ok(fired);
        }
        for (at, id, what) in due {
            let current = store
                .request(id)?
                .is_some_and(|r| super::timers_of(&r).contains(&(at, what)));
            if !current {
                store.drop_timer(at, id, what)?;
                continue;
            }
            let r = store.apply(now, "sshjit", |tx| {
                if !tx.take_timer(at, id, what)? {
                    return Err(Error::Stale.into());
                }
                Ok(((), vec![AuditEvent::Due { id, what }]))
            });
            match r {
                Ok(()) => fired += 1,
                Err(Error::Stale) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Starts the scheduler (each second) and one delivery thread per endpoint, until `stop`
/// turns true. They are plain threads: a delivery waiting on a slow endpoint delays neither
/// the others nor the broker's shutdown (the process exits without waiting for them; what
/// was cut off is sent again after the restart).
pub fn start(broker: Arc<Broker>, stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
    let stopping = move |stop: &tokio::sync::watch::Receiver<bool>| *stop.borrow();
    // Without an endpoint nothing is told, so nothing needs to fall due.
    if broker.deliverer().is_none() {
        return Ok(());
    }
    let b = broker.clone();
    let s = stop.clone();
    spawn("sshjit-due", move || {
        while !stopping(&s) {
            if let Err(e) = fire_due(b.store(), Timestamp::now()) {
                tracing::error!(error = %e, "cannot record what fell due; will try again");
            }
            pause(&s, Duration::from_secs(1));
        }
    })?;
    let count = broker.deliverer().map_or(0, |d| d.endpoints().len());
    for i in 0..count {
        let b = broker.clone();
        let s = stop.clone();
        spawn(&format!("sshjit-notify-{i}"), move || {
            let durable = b.store().durable_notices();
            let mut seen = 0;
            let mut due: Option<Timestamp> = Some(Timestamp::now());
            while !stopping(&s) {
                let upto = *durable.borrow();
                let now = Timestamp::now();
                if upto > seen || due.is_some_and(|t| t <= now) {
                    seen = upto;
                    if let Some(d) = b.deliverer() {
                        match d.step_endpoint(i, b.store(), upto, now).and_then(|t| {
                            d.prune(b.store(), upto)?;
                            Ok(t)
                        }) {
                            Ok(t) => due = t,
                            Err(e) => {
                                tracing::error!(error = %e, "notification delivery failed; will try again");
                                due = Some(now.plus(5));
                            }
                        }
                    }
                }
                // New durable notifications are noticed within this pause.
                pause(&s, Duration::from_millis(100));
            }
        })?;
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
        .map_err(Error::io("cannot start a background thread"))
}

/// Sleeps for `d`, or less if `stop` turns true meanwhile.
fn pause(stop: &tokio::sync::watch::Receiver<bool>, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !*stop.borrow() {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The `what` of a [`AuditEvent::Due`], in words for the log.
pub fn describe(what: Event) -> &'static str {
    match what {
        Event::RequestExpired => "expired undecided",
        Event::RequestEscalated => "escalated: still undecided",
        Event::GrantEnding => "window ends in 10 minutes",
        Event::ReviewDue => "break-glass review due",
        Event::ReviewOverdue => "break-glass review overdue",
        _ => "fell due",
    }
}

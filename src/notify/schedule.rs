//! The broker's two background loops: the scheduler, which records what falls due (expiry,
//! escalation, a window's end, a review) once when its time passes, and the delivery worker,
//! which sends durable outbox entries. Neither blocks a command; both stop with the server.

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

/// Runs the scheduler (every second) and, with endpoints configured, the delivery worker,
/// until `stop` resolves.
pub async fn run(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut durable = broker.store().durable_notices();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let b = broker.clone();
        let upto = *durable.borrow_and_update();
        let pass = tokio::task::spawn_blocking(move || {
            let now = Timestamp::now();
            if let Err(e) = fire_due(b.store(), now) {
                tracing::error!(error = %e, "cannot record what fell due; will try again");
            }
            if let Some(d) = b.deliverer()
                && let Err(e) = d.step(b.store(), upto, now)
            {
                tracing::error!(error = %e, "notification delivery failed; will try again");
            }
        });
        let _ = pass.await;
        // A burst of changes is sent in a few passes, not one pass per change.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::select! {
            _ = tick.tick() => {}
            r = durable.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
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

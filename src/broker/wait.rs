//! `wait`: a request's next change (a decision, an approval, expiry), delivered as soon as
//! the change that makes it is durable, instead of being polled for. The store wakes waiters when a change to their
//! request commits; the answer is sent only after the flush that covers it.

use std::future::Future;

use super::{Broker, Call, Output, Reply};
use crate::commands::{Command, Invocation};
use crate::error::{Error, Result};
use crate::model::{Member, RequestState, Timestamp, parse_duration};
use crate::views;

/// The longest a `wait` may last.
pub const MAX_WAIT_SECS: u64 = 300;

/// A parsed `wait`: which request, which state to wait out, for how long.
struct Wait {
    id: u64,
    state: RequestState,
    timeout_secs: u64,
}

fn parse(inv: &Invocation) -> Result<Wait> {
    let Command::Wait { id, state, timeout } = &inv.command else {
        return Err(Error::Internal("not a wait command".into()));
    };
    let timeout_secs = parse_duration(timeout)?;
    if !(1..=MAX_WAIT_SECS).contains(&timeout_secs) {
        return Err(Error::invalid(format!(
            "--timeout {} is out of range; wait between 1s and 5m, and wait again if need be",
            crate::model::printable(timeout, 20)
        )));
    }
    Ok(Wait {
        id: *id,
        state: state.parse()?,
        timeout_secs,
    })
}

impl Broker {
    /// `wait` in process (`Broker::execute`, which never blocks): the request as it is now.
    pub(super) fn wait_now(&self, actor: &Member, inv: &Invocation, cx: &Call) -> Result<Reply> {
        let w = parse(inv)?;
        let r = self.visible_request(actor, w.id)?;
        Reply::of(
            &views::request_view(&r, cx.now),
            views::request_text(&r, cx.now),
        )
    }

    /// Runs `wait` for the key with `fingerprint`: answers once request `id` has left the
    /// state or changed in any other way (an approval) and that is durable, when the timeout passes, or when `stop` resolves (shutdown),
    /// whichever comes first, with the request as it then is.
    pub async fn wait(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stop: impl Future<Output = ()>,
    ) -> Output {
        let json = inv.json;
        match self.wait_inner(fingerprint, inv, stop).await {
            Ok(reply) => {
                let (out, proven) = reply.render(json);
                self.prove(out, proven)
            }
            Err(e) => Output::error(&e, json),
        }
    }

    async fn wait_inner(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stop: impl Future<Output = ()>,
    ) -> Result<Reply> {
        let actor = self.member_for_key(fingerprint)?.ok_or_else(|| {
            Error::PermissionDenied("this key does not belong to a member".into())
        })?;
        let w = parse(inv)?;
        let started = Timestamp::now();
        let give_up = started.plus(w.timeout_secs);
        let notify = self.store.watch_request(w.id);
        tokio::pin!(stop);
        let mut first = None;
        let result = loop {
            // Armed before reading, so a change that commits after the read still wakes us.
            let changed = notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Timestamp::now();
            let r = match self.visible_request(&actor, w.id) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let state = r.state_at(now);
            let first = first.get_or_insert_with(|| r.clone());
            if state != w.state || r != *first || now >= give_up {
                // What we read may not be flushed yet: nobody hears of a change before it is.
                if let Err(e) = self.store.wait_durable(self.store.latest_ticket()).await {
                    break Err(e);
                }
                break Reply::of(&views::request_view(&r, now), views::request_text(&r, now));
            }
            // A pending request also changes, by expiring, without any commit.
            let mut until = give_up;
            if state == RequestState::Pending {
                until = until.min(r.pending_until);
            }
            let secs = now.until(until).max(0) as u64;
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
                () = &mut stop => {
                    break Reply::of(&views::request_view(&r, now), views::request_text(&r, now));
                }
            }
        };
        drop(notify);
        self.store.unwatch_request(w.id);
        result
    }
}

//! `notify status` and `notify test`: owners and admins see where notifications go and how
//! delivery fares, and send a test through the same outbox as every other notification.

use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::commands::NotifyOp;
use crate::contract::{EndpointView, NotifyTestView};
use crate::error::{Error, Result};
use crate::model::Member;
use crate::notify::config::Format;

impl Broker {
    pub(super) fn notify(&self, actor: &Member, op: &NotifyOp, cx: &Call) -> Result<Reply> {
        require_manager(actor, "see or test notifications")?;
        let d = self.deliverer().ok_or_else(|| {
            Error::NotFound(
                "no notification endpoint is configured; add a [[notify]] table to config.toml (see the README) and restart the broker".into(),
            )
        })?;
        match op {
            NotifyOp::Status => {
                let durable = *self.store.durable_notices().borrow();
                let mut views = Vec::new();
                for (e, rec, retries) in d.status(&self.store)? {
                    let waiting = if rec.counts.disabled.is_some() {
                        0
                    } else {
                        self.store
                            .notices_after(rec.cursor, usize::MAX)?
                            .iter()
                            .filter(|n| n.seq <= durable && e.wants(n.event, n.requester()))
                            .count() as u64
                    };
                    views.push(EndpointView {
                        name: e.name.clone(),
                        format: match e.format {
                            Format::Standard => "standard",
                            Format::Slack => "slack",
                        }
                        .into(),
                        member: e.member.clone(),
                        pending: waiting + retries.len() as u64,
                        counts: rec.counts,
                    });
                }
                let text = status_text(&views);
                Reply::of(&views, text)
            }
            NotifyOp::Test => {
                let seq = self
                    .apply(cx, actor, |_| Ok(((), vec![AuditEvent::NotifyTest {}])))
                    .and_then(|()| self.store.last_notice())?;
                let names: Vec<String> = d.endpoints().iter().map(|e| e.name.clone()).collect();
                let text = format!(
                    "test notification {seq} queued for {}; see 'notify status'\n",
                    names.join(", ")
                );
                Reply::of(
                    &NotifyTestView {
                        seq,
                        endpoints: names,
                    },
                    text,
                )
            }
        }
    }
}

fn status_text(views: &[EndpointView]) -> String {
    let mut s = format!(
        "{:<20} {:<8} {:>7} {:>9} {:>6}  LAST ERROR\n",
        "ENDPOINT", "FORMAT", "PENDING", "DELIVERED", "FAILED"
    );
    for v in views {
        let name = match &v.member {
            Some(m) => format!("{} ({m})", v.name),
            None => v.name.clone(),
        };
        let error = match (
            &v.counts.disabled,
            &v.counts.last_error,
            v.counts.last_error_at,
        ) {
            (Some(d), _, _) => {
                format!("DISABLED: {d}; fix or remove it in config.toml and restart")
            }
            (None, Some(e), Some(at)) => format!("{e} at {at}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{name:<20} {:<8} {:>7} {:>9} {:>6}  {error}\n",
            v.format, v.pending, v.counts.delivered, v.counts.failed
        ));
    }
    s
}

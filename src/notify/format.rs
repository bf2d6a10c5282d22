//! What a notification looks like on the wire: a Standard Webhooks message (JSON body and
//! the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers), or a Slack
//! incoming-webhook message with the exact commands to act on it.

use base64ct::{Base64, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{Event, Notice};
use crate::audit::AuditEvent;
use crate::contract::RequestView;
use crate::model::{Name, Request, RequestState, Timestamp, escape_for_log};
use crate::views;

/// A message ready to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The `data` of a standard message.
#[derive(Debug, Serialize)]
pub struct Data<'a> {
    /// The audit entry that records the change (also the message id's stem).
    pub seq: u64,
    pub actor: &'a str,
    pub change: &'a AuditEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestView>,
    /// Who can approve or review it now (owners and admins other than the requester).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Name>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Event,
    timestamp: Timestamp,
    data: Data<'a>,
}

/// The webhook id: the same on every retry of the same notification to any endpoint.
pub fn message_id(origin: &str, seq: u64) -> String {
    format!("msg_{origin}_{seq}")
}

/// A Standard Webhooks message, signed with `secret` at `sent` (the attempt's time).
pub fn standard(
    n: &Notice,
    approvers: Vec<Name>,
    id: &str,
    secret: &[u8],
    sent: Timestamp,
) -> Message {
    let envelope = Envelope {
        kind: n.event,
        timestamp: n.at,
        data: data(n, approvers),
    };
    // Plain data with string keys always encodes.
    let body = serde_json::to_string(&envelope).unwrap_or_default();
    let ts = sent.unix().to_string();
    Message {
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), id.to_string()),
            ("webhook-timestamp".into(), ts.clone()),
            ("webhook-signature".into(), sign(secret, id, &ts, &body)),
        ],
        body,
    }
}

/// `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(secret: &[u8], id: &str, timestamp: &str, body: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", Base64::encode_string(&mac.finalize().into_bytes()))
}

fn data(n: &Notice, approvers: Vec<Name>) -> Data<'_> {
    Data {
        seq: n.seq,
        actor: &n.actor,
        change: &n.change,
        request: n.request.as_ref().map(|r| views::request_view(r, n.at)),
        approvers,
    }
}

/// A Slack message: a one-line `text` (for notifications and clients without blocks) and
/// blocks with the request as `show` prints it and the commands that act on it. Everything
/// is escaped for Slack (`& < >`), so a reason cannot mention `@channel` or forge a link.
pub fn slack(n: &Notice, approvers: &[Name]) -> Message {
    let headline = headline(n);
    let mut blocks = vec![section(&format!("*{}*", slack_escape(&headline)))];
    if let Some(r) = &n.request {
        let shown = views::request_text(r, n.at).replace('`', "'");
        for part in chunks(&slack_escape(&shown), SECTION_MAX - 6) {
            blocks.push(section(&format!("```{part}```")));
        }
        let actions = actions(r, n.at);
        if !actions.is_empty() {
            blocks.push(section(&slack_escape(&actions)));
        }
        if r.state_at(n.at) == RequestState::Pending && !approvers.is_empty() {
            let names: Vec<&str> = approvers.iter().map(Name::as_str).collect();
            blocks.push(section(&format!(
                "can approve: {}",
                slack_escape(&names.join(", "))
            )));
        }
    }
    let body = serde_json::json!({ "text": slack_escape(&headline), "blocks": blocks });
    Message {
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string(),
    }
}

/// Slack refuses a section whose text is longer than this (after escaping).
pub const SECTION_MAX: usize = 3000;

/// `s` in pieces of at most `max` bytes, cut at line ends where it can be, never inside a
/// character or an escape such as `&amp;`.
fn chunks(s: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut limit = max;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        let mut cut = rest[..limit].rfind('\n').map_or(limit, |i| i + 1);
        // Do not split an entity: back up to its '&' if no ';' closes it before the cut.
        if let Some(amp) = rest[..cut].rfind('&')
            && !rest[amp..cut].contains(';')
            && amp > 0
        {
            cut = amp;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

fn section(text: &str) -> serde_json::Value {
    serde_json::json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })
}

/// One line saying what happened.
pub fn headline(n: &Notice) -> String {
    let who = escape_for_log(&n.actor);
    let Some(r) = &n.request else {
        return match &n.change {
            AuditEvent::MemberAdded { name, role, .. } => {
                format!("sshjit: {name} added as {role} by {who}")
            }
            AuditEvent::MemberRemoved { name, .. } => format!("sshjit: {name} removed by {who}"),
            AuditEvent::MemberRoleChanged { name, from, to } => {
                format!("sshjit: {name} changed from {from} to {to} by {who}")
            }
            AuditEvent::MemberKeyAdded { name, .. } => {
                format!("sshjit: a key was added to {name} by {who}")
            }
            AuditEvent::MemberKeyRemoved { name, .. } => {
                format!("sshjit: a key was removed from {name} by {who}")
            }
            _ => format!("sshjit: {} from {who}", n.event),
        };
    };
    let what = format!(
        "{} {} ({})",
        r.kind.as_str(),
        r.resource,
        views::role_label(r)
    );
    let id = r.id;
    match n.event {
        Event::RequestCreated => format!(
            "sshjit: request {id} by {} for {what}, risk {}",
            r.requester, r.risk.score
        ),
        Event::RequestApproved => format!("sshjit: request {id} ({what}) approved by {who}"),
        Event::RequestDenied => format!("sshjit: request {id} ({what}) denied by {who}"),
        Event::RequestExpired => format!(
            "sshjit: request {id} by {} for {what} expired undecided",
            r.requester
        ),
        Event::RequestEscalated => format!(
            "sshjit: request {id} by {} for {what} is still waiting: escalated",
            r.requester
        ),
        Event::BreakGlassUsed => format!(
            "sshjit: BREAK-GLASS by {} on {what}, request {id}: review it",
            r.requester
        ),
        Event::ReviewDue => format!(
            "sshjit: break-glass request {id} by {} on {what} is due for review",
            r.requester
        ),
        Event::ReviewOverdue => format!(
            "sshjit: break-glass request {id} by {} on {what}: review OVERDUE",
            r.requester
        ),
        Event::GrantEnding => match r.grant() {
            Some(g) => format!(
                "sshjit: your access to {what} (request {id}) ends at {}",
                g.end
            ),
            None => format!("sshjit: your access to {what} (request {id}) is ending"),
        },
        Event::ApproverChanged | Event::Test => format!("sshjit: {} about request {id}", n.event),
    }
}

/// The commands that act on a request as it stands at `at`: approve or deny while it is
/// pending, review while a break-glass grant waits for one, nothing otherwise.
fn actions(r: &Request, at: Timestamp) -> String {
    let id = r.id;
    if r.state_at(at) == RequestState::Pending {
        format!(
            "approve: `sshjit-broker admin approve {id}`\ndeny: `sshjit-broker admin deny {id} --reason '...'`"
        )
    } else if r.break_glass && r.review.is_none() {
        format!(
            "review: `sshjit-broker admin review {id} --ok --comment '...'` or `--flag --comment '...'`"
        )
    } else {
        String::new()
    }
}

/// Slack's three escapes, after hidden and control characters are made visible.
pub fn slack_escape(s: &str) -> String {
    s.split('\n')
        .map(escape_for_log)
        .collect::<Vec<_>>()
        .join("\n")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example: secret, id, timestamp, payload and
    /// the signature it gives.
    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        let secret = Base64::decode_vec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn long_text_is_cut_into_sections_slack_accepts() {
        let s = slack_escape(&format!("x\n{}\ny", "&".repeat(990)));
        let parts = chunks(&s, SECTION_MAX - 6);
        assert!(parts.len() >= 2, "{parts:?}");
        assert!(parts.iter().all(|p| p.len() <= SECTION_MAX - 6));
        assert_eq!(parts.concat(), s);
        assert!(
            parts
                .iter()
                .all(|p| !p.ends_with("&am") && !p.starts_with("p;"))
        );
        // Multi-byte characters are never split.
        let wide = "é".repeat(5000);
        assert_eq!(chunks(&wide, 2999).concat(), wide);
    }

    #[test]
    fn slack_text_keeps_its_lines() {
        assert_eq!(slack_escape("a <b>\nc & d\n"), "a &lt;b&gt;\nc &amp; d\n");
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(
            slack_escape("<!channel> & <https://evil|click>\u{7}"),
            "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;\\u{7}"
        );
    }
}

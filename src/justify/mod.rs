//! The deterministic justification: restates a request's scope and flags a reason too thin for it.
//! A model may write the text instead ([`llm`]); the flags are always these.

pub mod llm;

use crate::model::{GrantRole, Justification, JustificationSource, Member, format_duration};
use crate::policy::{Ask, Resolved};
use crate::target::{Found, Scope, TargetKind, name_list};

/// Windows longer than this are flagged as long.
pub const LONG_WINDOW_SECS: u64 = 8 * 3600;
/// Reasons with fewer words than this are flagged as short.
pub const MIN_REASON_WORDS: usize = 4;

/// Phrases that say nothing about why access is needed.
const GENERIC: &[&str] = &[
    "access",
    "need access",
    "needs access",
    "debug",
    "debugging",
    "maintenance",
    "testing",
    "test",
    "check",
    "checking",
    "fix",
    "fix stuff",
    "fix things",
    "investigate",
    "investigation",
    "misc",
    "stuff",
    "work",
    "as discussed",
    "urgent",
    "asap",
    "n/a",
    "na",
    "none",
    "todo",
    "tbd",
];

/// How many host names a justification lists before it says "and N more".
const LISTED_HOSTS: usize = 10;

/// Writes the justification for `ask` by `requester` on the target `found`, whose scope if
/// approved now is `preview`, without any model.
pub fn deterministic(
    requester: &Member,
    found: &Found,
    preview: &Resolved,
    ask: &Ask<'_>,
) -> Justification {
    let reason = ask.reason.trim();
    let scope = &preview.scope;
    let mut flags = Vec::new();
    let words = reason.split_whitespace().count();
    if words < MIN_REASON_WORDS {
        flags.push("short_reason".to_string());
    }
    if !has_reference(reason) {
        flags.push("no_ticket_reference".to_string());
    }
    if is_generic(reason) {
        flags.push("generic_reason".to_string());
    }
    let production = scope.production();
    if ask.role == Some(GrantRole::Editor) && !production.is_empty() {
        flags.push("editor_on_production".to_string());
    }
    if found.kind != TargetKind::Host && !production.is_empty() {
        flags.push("production_in_scope".to_string());
    }
    if ask.duration_secs > LONG_WINDOW_SECS {
        flags.push("long_window".to_string());
    }

    let role = ask
        .role
        .map(|r| r.as_str().to_uppercase())
        .unwrap_or_default();
    let what = match (found.kind, found.hosts.as_slice(), &scope.command) {
        (TargetKind::Host, [host], _) => {
            let tags = if host.tags.is_empty() {
                "no tags".to_string()
            } else {
                let t: Vec<&str> = host.tags.iter().map(|t| t.as_str()).collect();
                format!("tags: {}", t.join(", "))
            };
            format!(
                "for {role} access to {} ({}:{}, {tags})",
                host.name, host.address, host.port
            )
        }
        (_, _, Some(run)) => format!(
            "to run the command {} ({} as {}; {})",
            found.name,
            quote(&summarize(run, 160)),
            scope.single_login().unwrap_or_default(),
            hosts_phrase(scope)
        ),
        _ => format!(
            "for {role} access to {} {} ({})",
            found.kind,
            found.name,
            hosts_phrase(scope)
        ),
    };
    let start = match ask.start {
        Some(t) => format!("from {t} or approval, whichever is later"),
        None => "from approval".to_string(),
    };
    let mut text = format!(
        "{} ({}) asks {what} for {}, {}. Stated reason: {}.",
        requester.name,
        requester.role,
        format_duration(ask.duration_secs),
        start,
        quote(&summarize(reason, 160)),
    );
    if flags.is_empty() {
        text.push_str(" No concerns found.");
    } else {
        text.push_str(" Check before approving: ");
        let notes: Vec<&str> = flags.iter().map(|f| describe(f)).collect();
        text.push_str(&notes.join("; "));
        text.push('.');
    }
    Justification {
        text,
        flags,
        source: JustificationSource::Deterministic,
        model: None,
    }
}

/// `3 hosts: web-01, web-02, web-03; production: web-03; left out (no login for the role): db-01`.
fn hosts_phrase(scope: &Scope) -> String {
    let n = scope.hosts.len();
    let mut s = format!(
        "{n} host{}: {}",
        if n == 1 { "" } else { "s" },
        scope.host_list(LISTED_HOSTS)
    );
    let production: Vec<&str> = scope.production().iter().map(|n| n.as_str()).collect();
    if !production.is_empty() {
        s.push_str(&format!(
            "; production: {}",
            name_list(&production, LISTED_HOSTS)
        ));
    }
    if !scope.left_out.is_empty() {
        let left: Vec<&str> = scope.left_out.iter().map(|n| n.as_str()).collect();
        s.push_str(&format!(
            "; left out, with no login for the role: {}",
            name_list(&left, LISTED_HOSTS)
        ));
    }
    s
}

/// One line of explanation per flag, for people.
pub fn describe(flag: &str) -> &'static str {
    match flag {
        "short_reason" => "the reason is only a few words",
        "no_ticket_reference" => "no ticket, incident or change reference",
        "generic_reason" => "the reason is a generic phrase",
        "editor_on_production" => "EDITOR access on a production-tagged host",
        "production_in_scope" => "production-tagged hosts are among the hosts",
        "long_window" => "the window is longer than 8h",
        _ => "see the request",
    }
}

/// Whether the reason cites a ticket (`ABC-123`), an issue (`#123`), an incident or a link.
pub fn has_reference(reason: &str) -> bool {
    reason
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')'))
        .map(|w| w.trim_matches(['\'', '"', '[', ']', ':', '.']))
        .any(|w| {
            if w.starts_with("http://") || w.starts_with("https://") {
                return true;
            }
            if let Some(n) = w.strip_prefix('#') {
                return !n.is_empty() && n.chars().all(|c| c.is_ascii_digit());
            }
            // PROJ-123, INC-42, CHG0012345, INC0001
            let (head, tail) = match w.split_once('-') {
                Some((h, t)) => (h, t),
                None => {
                    let split = w.find(|c: char| c.is_ascii_digit()).unwrap_or(w.len());
                    w.split_at(split)
                }
            };
            head.len() >= 2
                && head.chars().all(|c| c.is_ascii_uppercase())
                && !tail.is_empty()
                && tail.chars().all(|c| c.is_ascii_digit())
        })
}

fn is_generic(reason: &str) -> bool {
    let norm: String = reason
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || *c == '/')
        .collect();
    let norm = norm.split_whitespace().collect::<Vec<_>>().join(" ");
    GENERIC.contains(&norm.as_str())
}

/// The first `max` characters of the reason, cut at a word boundary.
/// Quotes what a member typed so that it cannot end the quote and go on in the broker's
/// voice: `"` and `\` inside are escaped, so the first unescaped `"` after the opening one
/// is always the broker's.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn summarize(reason: &str, max: usize) -> String {
    if reason.chars().count() <= max {
        return reason.to_string();
    }
    let cut: String = reason.chars().take(max).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(a, _)| a);
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognized() {
        for r in [
            "INC-42 restart",
            "see OPS-1234",
            "#812",
            "CHG0012345 rollout",
            "https://x/y",
            "'INC-9 down'",
            "[OPS-7]",
        ] {
            assert!(has_reference(r), "{r}");
        }
        for r in ["restart worker", "a-1", "I-1 x", "#abc"] {
            assert!(!has_reference(r), "{r}");
        }
    }

    #[test]
    fn generic_phrases_are_recognized() {
        assert!(is_generic("Debugging."));
        assert!(is_generic("need  access"));
        assert!(!is_generic("debugging the INC-4 memory leak in worker"));
    }

    #[test]
    fn long_reasons_are_summarized() {
        let s = summarize(&"word ".repeat(100), 20);
        assert!(s.ends_with('…') && s.chars().count() <= 21);
    }

    #[test]
    fn a_quoted_reason_cannot_end_its_quote() {
        assert_eq!(
            quote(r#"a". No concerns found. "#),
            r#""a\". No concerns found. ""#
        );
        assert_eq!(quote(r"a\"), r#""a\\""#);
    }
}

//! The nouns of sshjit (members, roles, hosts, requests, grants, times), parsed so bad values cannot exist.
//! Fleets, fleet commands and scopes are in [`crate::target`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::target::{Scope, TargetKind};
use crate::verdict::{MemberKind, Review, Risk, RuleApproval};

/// A point in time: whole UTC seconds since the Unix epoch. Serialized as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The broker's clock, truncated to the second. The only place the wall clock is read.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp())
    }

    /// A time from Unix seconds.
    pub const fn from_unix(secs: i64) -> Self {
        Timestamp(secs)
    }

    /// Unix seconds.
    pub const fn unix(self) -> i64 {
        self.0
    }

    /// This time plus `secs` seconds, saturating instead of overflowing.
    pub fn plus(self, secs: u64) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
        )
    }

    /// Seconds from `self` until `later` (negative if `later` is earlier).
    pub fn until(self, later: Timestamp) -> i64 {
        later.0.saturating_sub(self.0)
    }

    /// Parses RFC 3339 (`2026-11-21T22:46:20Z`), dropping sub-second parts.
    pub fn parse_rfc3339(s: &str) -> Result<Self> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| Timestamp(t.timestamp()))
            .map_err(|_| {
                Error::invalid(format!(
                    "'{}' is not a time; use RFC 3339 such as 2026-11-21T22:46:20Z",
                    printable(s, 40)
                ))
            })
    }

    /// Parses a user-supplied start time: RFC 3339, or `+DURATION` relative to `now`. The
    /// example in the error is a day after `now`, so it is one that would work.
    pub fn parse_start(s: &str, now: Timestamp) -> Result<Self> {
        match s.strip_prefix('+') {
            Some(rel) => Ok(now.plus(parse_duration(rel)?)),
            None => DateTime::parse_from_rfc3339(s)
                .map(|t| Timestamp(t.timestamp()))
                .map_err(|_| {
                    Error::invalid(format!(
                        "'{}' is not a start time; use +DURATION such as +30m or +1d, or RFC 3339 such as {}",
                        printable(s, 40),
                        now.plus(86_400)
                    ))
                }),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp(self.0, 0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a duration such as `90s`, `30m`, `2h`, `1h30m` or `1d` into seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "'{}' is not a duration; use a number with a unit, such as 30m, 2h or 1h30m (units: s, m, h, d)",
            printable(s, 40)
        ))
    };
    if s.is_empty() || s.len() > 32 {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Formats seconds as a short human duration (`2h`, `1h30m`, `45s`, `48h`).
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// A member's base role, lowest first so `Ord` ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    Owner,
}

impl Role {
    /// OWNER and ADMIN hold the manage_members power: approving, and managing members and hosts.
    pub fn can_manage(self) -> bool {
        self >= Role::Admin
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(Error::invalid(format!(
                "'{s}' is not a role; use one of owner, admin, editor, viewer"
            ))),
        }
    }
}

/// A role that just-in-time access can grant. ADMIN and OWNER are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantRole {
    Viewer,
    Editor,
}

impl GrantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantRole::Viewer => "viewer",
            GrantRole::Editor => "editor",
        }
    }
}

impl fmt::Display for GrantRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<GrantRole> for Role {
    fn from(r: GrantRole) -> Role {
        match r {
            GrantRole::Viewer => Role::Viewer,
            GrantRole::Editor => Role::Editor,
        }
    }
}

impl FromStr for GrantRole {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.parse::<Role>() {
            Ok(Role::Viewer) => Ok(GrantRole::Viewer),
            Ok(Role::Editor) => Ok(GrantRole::Editor),
            Ok(other) => Err(Error::RoleNotGrantable(other.to_string())),
            Err(_) => Err(Error::invalid(format!(
                "'{}' is not a role you can ask for; use viewer or editor",
                printable(s, 40)
            ))),
        }
    }
}

/// A member, host or tag name: 1-64 of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if ok {
            Ok(Name(s))
        } else {
            Err(Error::invalid(format!(
                "'{}' is not a valid name; use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
                printable(&s, 80)
            )))
        }
    }
}

impl FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Name::try_from(s.to_string())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unix login name on a host: 1-32 of `A-Z a-z 0-9 . _ -`, not starting with `-`, and
/// not `.` or `..` (the login names a principals file on the host).
pub fn validate_login(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{}' is not a valid unix login; use 1-32 letters, digits, '.', '_' or '-'",
            printable(s, 40)
        )))
    }
}

/// A host address: a DNS name or an IP address.
pub fn validate_address(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{}' is not a host address; use a DNS name or an IP address such as 10.0.0.5",
            printable(s, 80)
        )))
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, with a swap of two neighbours counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether `c` must not appear in text a member writes for others to read (reasons,
/// comments, command lines): controls, line and paragraph separators, spaces other than
/// U+0020, the invisible format characters (Unicode category Cf: bidi overrides and
/// isolates, zero-width characters, the BOM, tag characters) and every other default-ignorable
/// code point (variation selectors among them), which can make text read differently from
/// what it is.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            // Cf, format characters (Unicode 15.1).
            0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
            | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
            | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
            // Zl and Zp, line and paragraph separators.
            | 0x2028 | 0x2029
            // Zs other than the plain space.
            | 0x00A0 | 0x1680 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000
            // Invisible fillers and joiners outside Cf.
            | 0x034F | 0x115F | 0x1160 | 0x3164 | 0xFFA0
            // The rest of Default_Ignorable_Code_Point: Khmer and Mongolian invisibles,
            // variation selectors, reserved ignorables, and the blank braille pattern,
            // which draws as a space.
            | 0x17B4..=0x17B5 | 0x180B..=0x180F | 0xFE00..=0xFE0F | 0xFFF0..=0xFFF8
            | 0xE0000..=0xE0FFF | 0x2800)
}

/// Escapes control and hidden characters only, for writing text that may hold what a member
/// typed into the broker's log: one log record stays one line, and reads as what it is.
pub fn escape_for_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hidden_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Shortens `s` to `max` chars and escapes control characters, for echoing bad input safely.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if is_hidden_char(c) && !c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.extend(c.escape_debug());
        }
    }
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// A person on the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The identity: assigned when the member is added and never reused, so a name added
    /// again after removal is someone new (see [`IdentityId`]).
    pub id: IdentityId,
    pub name: Name,
    pub role: Role,
    /// A person, or a bot (decided by rules alone).
    #[serde(default)]
    pub kind: MemberKind,
    /// Identity keys in OpenSSH form, without comments.
    pub keys: Vec<String>,
    /// SHA-256 fingerprints of `keys`, in the same order.
    pub key_fingerprints: Vec<String>,
    /// Who added each key, in the same order: an admin never decides for a member whose key
    /// they added (see `policy::approve`).
    #[serde(default)]
    pub key_added_by: Vec<IdentityId>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// A host that access can be requested to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The identity: never reused, so a host added again under the same name is a new one.
    pub id: IdentityId,
    pub name: Name,
    pub address: String,
    pub port: u16,
    pub tags: Vec<Name>,
    /// The unix login used on this host for each grantable role.
    pub logins: BTreeMap<GrantRole, String>,
    /// Distinct approvals needed before a request is granted.
    pub approvals_required: u32,
    /// Whether break-glass requests may name it.
    #[serde(default)]
    pub break_glass: bool,
    /// How long a request may wait before it reads as escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_secs: Option<u64>,
    pub added_at: Timestamp,
    pub added_by: String,
}

impl Host {
    /// Whether the host is tagged as production.
    pub fn is_production(&self) -> bool {
        self.tags
            .iter()
            .any(|t| matches!(t.as_str(), "prod" | "production") || t.as_str().starts_with("prod-"))
    }
}

/// The identity of a member or host, from one counter, never reused.
///
/// Requests and grants hold identities, not names: after `member remove alice`, a new
/// `alice` has a new identity and nothing of the old one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityId(pub u64);

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One approver's yes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: Name,
    /// The approver's identity, so distinct approvals mean distinct members.
    pub by_id: IdentityId,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// What an approved request became: a fixed window and the access it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub start: Timestamp,
    pub end: Timestamp,
    /// The role the certificates carry; `None` for a fleet command, which carries its command.
    pub effective_role: Option<GrantRole>,
    /// The hosts, logins and forced command, fixed at final approval.
    pub scope: Scope,
    /// Certificates issued for this grant so far (capped by policy). The store keeps the
    /// count apart from the record (`certs_per_request`) and sets it here on every read; a
    /// stored record holds the count it had when last written.
    #[serde(default)]
    pub certificates: u32,
    /// Set when the requester or the host was removed: no certificate is issued after it.
    /// Certificates already issued stay valid to `end` (there is no revocation list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// Why and when a grant stopped issuing certificates before its window closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub at: Timestamp,
    pub by: Name,
    pub reason: String,
}

impl Grant {
    /// Whether `now` is inside `[start, end)` and the grant was not ended.
    pub fn is_current(&self, now: Timestamp) -> bool {
        self.start <= now && now < self.end && self.ended.is_none()
    }
}

/// How a request was decided, as stored. Expiry is not stored: it is read from the clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Decision {
    Pending,
    Approved {
        grant: Grant,
    },
    Denied {
        by: Name,
        at: Timestamp,
        reason: String,
    },
    Cancelled {
        at: Timestamp,
        /// Who cancelled it, when not the requester (a removal cancels on the remover's behalf).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Name>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A member's pending request, until its deadline: these count against the member's cap, and
/// removing the member cancels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenEntry {
    pub id: u64,
    pub until: Timestamp,
}

impl OpenEntry {
    /// Whether it is still open at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

/// The state a reader sees at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "pending" => Ok(RequestState::Pending),
            "approved" => Ok(RequestState::Approved),
            "denied" => Ok(RequestState::Denied),
            "expired" => Ok(RequestState::Expired),
            "cancelled" | "canceled" => Ok(RequestState::Cancelled),
            _ => Err(Error::invalid(format!(
                "'{}' is not a request state; use pending, approved, denied, expired or cancelled",
                printable(s, 40)
            ))),
        }
    }
}

/// Who wrote a justification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JustificationSource {
    Deterministic,
    Model,
}

/// The written case for a request, for the approver and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Justification {
    pub text: String,
    pub flags: Vec<String>,
    pub source: JustificationSource,
    /// The model that wrote the text, when `source` is `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A request for access, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub requester: Name,
    /// The requester's identity when the request was made; only that identity may use it.
    pub requester_id: IdentityId,
    /// What the request names: a host, a fleet or a fleet command.
    pub kind: TargetKind,
    pub resource: Name,
    /// The target's identity when the request was made; one added again is not this one.
    pub resource_id: IdentityId,
    /// The role asked for; `None` for a fleet command.
    pub role: Option<GrantRole>,
    pub duration_secs: u64,
    pub reason: String,
    pub requested_start: Option<Timestamp>,
    pub justification: Justification,
    pub created_at: Timestamp,
    pub pending_until: Timestamp,
    pub approvals: Vec<Approval>,
    pub approvals_required: u32,
    pub decision: Decision,
    /// The requester's kind when it was made: a bot's request is decided by rules alone.
    #[serde(default)]
    pub requester_kind: MemberKind,
    /// The risk score when it was made, with its factors.
    #[serde(default)]
    pub risk: Risk,
    /// Set when a rule approved it at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by_rule: Option<RuleApproval>,
    /// A break-glass grant: granted at once without approvers, reviewed afterwards.
    #[serde(default)]
    pub break_glass: bool,
    /// When the review of a break-glass grant is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_due: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// When it reads as escalated if still pending (the target's `--escalate-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_at: Option<Timestamp>,
}

impl Request {
    /// The state as seen at `now`: a pending request past its TTL reads as expired.
    pub fn state_at(&self, now: Timestamp) -> RequestState {
        match &self.decision {
            Decision::Pending if now >= self.pending_until => RequestState::Expired,
            Decision::Pending => RequestState::Pending,
            Decision::Approved { .. } => RequestState::Approved,
            Decision::Denied { .. } => RequestState::Denied,
            Decision::Cancelled { .. } => RequestState::Cancelled,
        }
    }

    /// Whether it is pending at `now` and past its escalation time.
    pub fn escalated_at(&self, now: Timestamp) -> bool {
        self.state_at(now) == RequestState::Pending && self.escalate_at.is_some_and(|t| now >= t)
    }

    /// Whether it is a break-glass grant still waiting for its review at `now`, and overdue.
    pub fn review_overdue(&self, now: Timestamp) -> bool {
        self.review.is_none() && self.review_due.is_some_and(|due| now >= due)
    }

    /// The grant, if the request was approved.
    pub fn grant(&self) -> Option<&Grant> {
        match &self.decision {
            Decision::Approved { grant } => Some(grant),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("1d").unwrap(), 86400);
        for bad in ["", "2", "h", "2x", "-5m", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(86400), "24h");
    }

    #[test]
    fn timestamps_round_trip_as_rfc3339() {
        let t = Timestamp::parse_rfc3339("2026-11-21T22:46:20Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-21T22:46:20Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-21T22:46:20Z\"");
        assert_eq!(Timestamp::parse_start("+30m", t).unwrap(), t.plus(1800));
    }

    #[test]
    fn admin_and_owner_are_not_grantable() {
        assert_eq!("EDITOR".parse::<GrantRole>().unwrap(), GrantRole::Editor);
        assert!(matches!(
            "admin".parse::<GrantRole>(),
            Err(Error::RoleNotGrantable(_))
        ));
        assert!(matches!(
            "owner".parse::<GrantRole>(),
            Err(Error::RoleNotGrantable(_))
        ));
    }

    #[test]
    fn typos_find_their_word() {
        assert_eq!(closest("dmeo", ["demo", "web-01"]), Some("demo"));
        assert_eq!(closest("aprove", ["approve", "deny"]), Some("approve"));
        assert_eq!(closest("zzz", ["approve", "deny"]), None);
    }

    #[test]
    fn names_are_validated() {
        assert!("web-01".parse::<Name>().is_ok());
        for bad in ["", "Web", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(bad.parse::<Name>().is_err(), "{bad}");
        }
    }
}

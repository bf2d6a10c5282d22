//! The tamper-evident audit log: typed events, the SHA-256 hash chain, and its verification.
//!
//! Entry `n` stores `prev` (entry `n-1`'s hash, 32 zero bytes for the first) and
//! `hash = SHA-256(prev || canonical(n))`, where `canonical(n)` is the entry as compact JSON
//! with sorted keys, without `prev` and `hash`: exactly the stored bytes with those two
//! members cut out. Verification hashes the bytes as stored, so any change to any byte,
//! including fields this version does not know, breaks the chain.

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::merkle::{self, Frontier, Hash};
use crate::model::{Grant, GrantRole, Host, Member, Role, Timestamp};
use crate::target::TargetKind;
use crate::verdict::ReviewVerdict;

/// The `prev` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Something that happened, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    BrokerInitialized {
        owner: String,
        ca_fingerprint: String,
    },
    MemberAdded {
        name: String,
        role: Role,
        key_fingerprints: Vec<String>,
    },
    MemberRemoved {
        name: String,
        /// The role they held (absent in entries written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
    MemberRoleChanged {
        name: String,
        from: Role,
        to: Role,
    },
    MemberKeyAdded {
        name: String,
        key_fingerprint: String,
    },
    MemberKeyRemoved {
        name: String,
        key_fingerprint: String,
    },
    HostAdded {
        name: String,
        address: String,
        port: u16,
        tags: Vec<String>,
        logins: Vec<String>,
        approvals_required: u32,
        /// Break-glass allowed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalate_after_secs: Option<u64>,
    },
    HostRemoved {
        name: String,
    },
    FleetAdded {
        name: String,
        tags: Vec<String>,
        approvals_required: u32,
        max_hosts: u32,
        /// Break-glass allowed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalate_after_secs: Option<u64>,
    },
    FleetRemoved {
        name: String,
    },
    CommandAdded {
        name: String,
        /// `fleet web` or `host web-01`.
        on: String,
        run: String,
        login: String,
        approvals_required: u32,
        /// Break-glass allowed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalate_after_secs: Option<u64>,
    },
    CommandRemoved {
        name: String,
    },
    RequestCreated {
        id: u64,
        requester: String,
        #[serde(default = "host_kind")]
        kind: TargetKind,
        resource: String,
        /// None for a fleet command.
        role: Option<GrantRole>,
        #[serde(default)]
        risk: u8,
        duration_secs: u64,
        reason: String,
        requested_start: Option<Timestamp>,
        pending_until: Timestamp,
        justification_flags: Vec<String>,
    },
    RuleAdded {
        name: String,
        /// The rule's conditions, as `rule show` describes them.
        conditions: Vec<String>,
    },
    RuleRemoved {
        name: String,
    },
    /// A grant without approvers, in an emergency (rule 18): its review is due by `review_due`.
    BreakGlass {
        id: u64,
        requester: String,
        resource: String,
        reason: String,
        review_due: Timestamp,
        risk: u8,
    },
    BreakGlassReviewed {
        id: u64,
        by: String,
        verdict: ReviewVerdict,
        comment: String,
        late: bool,
    },
    RequestApproved {
        id: u64,
        /// A member's name, or `rule:NAME` for a rule (which also lists what matched).
        by: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        matched: Vec<String>,
        comment: Option<String>,
        approvals: u32,
        approvals_required: u32,
    },
    RequestDenied {
        id: u64,
        by: String,
        reason: String,
    },
    RequestCancelled {
        id: u64,
        by: String,
        /// Set when someone other than the requester cancelled it (a removal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The final approval: the window and the scope, fixed from now on. `principals` name
    /// each host and the login there; a fleet command's grant also names its command.
    GrantStarted {
        id: u64,
        start: Timestamp,
        end: Timestamp,
        effective_role: Option<GrantRole>,
        #[serde(default)]
        principals: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force_command: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_out: Vec<String>,
    },
    /// A grant stopped issuing certificates before its window closed (a removal).
    GrantEnded {
        id: u64,
        reason: String,
    },
    /// An owner or admin sent a test notification (`notify test`).
    NotifyTest {},
    /// Something fell due for a request (it expired undecided, escalated, its window is about
    /// to end, its review is due or overdue): recorded once, with its notification.
    Due {
        id: u64,
        what: crate::notify::Event,
    },
    CertificateIssued {
        id: u64,
        serial: u64,
        key_id: String,
        principals: Vec<String>,
        valid_after: Timestamp,
        valid_before: Timestamp,
        key_fingerprint: String,
        /// What sshd runs with this certificate, for a fleet command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force_command: Option<String>,
    },
}

fn host_kind() -> TargetKind {
    TargetKind::Host
}

impl AuditEvent {
    /// The record of `m` joining the team.
    pub fn member_added(m: &Member) -> AuditEvent {
        AuditEvent::MemberAdded {
            name: m.name.to_string(),
            role: m.role,
            key_fingerprints: m.key_fingerprints.clone(),
        }
    }

    /// The record of a grant starting: its window and its scope, fixed from now on.
    pub fn grant_started(id: u64, g: &Grant) -> AuditEvent {
        AuditEvent::GrantStarted {
            id,
            start: g.start,
            end: g.end,
            effective_role: g.effective_role,
            principals: g.scope.principals(),
            force_command: g.scope.command.clone(),
            left_out: g.scope.left_out.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// The record of `h` being added.
    pub fn host_added(h: &Host) -> AuditEvent {
        AuditEvent::HostAdded {
            name: h.name.to_string(),
            address: h.address.clone(),
            port: h.port,
            tags: h.tags.iter().map(|t| t.to_string()).collect(),
            logins: h.logins.iter().map(|(r, l)| format!("{r}={l}")).collect(),
            approvals_required: h.approvals_required,
            break_glass: h.break_glass,
            escalate_after_secs: h.escalate_after_secs,
        }
    }
}

/// One link of the chain, as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub event: AuditEvent,
    pub prev: String,
    pub hash: String,
}

/// Builds the entry that follows `prev_hash` and returns it as JSON bytes with its hash.
///
/// The stored form is the canonical JSON with the chain members spliced in before `seq`
/// (keys stay sorted): `{"actor":..,"at":..,"event":{..},"hash":"..","prev":"..","seq":N}`.
pub fn seal(
    seq: u64,
    at: Timestamp,
    actor: &str,
    event: &AuditEvent,
    prev_hash: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32])> {
    // Canonical JSON sorts keys at every level. The event goes through a `Value` for that;
    // the four top-level members are written in their sorted order directly.
    let mut canonical = Vec::with_capacity(512);
    canonical.extend_from_slice(b"{\"actor\":");
    serde_json::to_writer(&mut canonical, actor)?;
    canonical.extend_from_slice(b",\"at\":");
    serde_json::to_writer(&mut canonical, &at)?;
    canonical.extend_from_slice(b",\"event\":");
    serde_json::to_writer(&mut canonical, &serde_json::to_value(event)?)?;
    let cut = canonical.len();
    canonical.extend_from_slice(SEQ_MEMBER);
    canonical.extend_from_slice(seq.to_string().as_bytes());
    canonical.push(b'}');
    let hash = chain_hash(prev_hash, &canonical);
    let mut stored = Vec::with_capacity(canonical.len() + CHAIN_SPAN);
    stored.extend_from_slice(&canonical[..cut]);
    stored.extend_from_slice(b",\"hash\":\"");
    stored.extend_from_slice(hex::encode(hash).as_bytes());
    stored.extend_from_slice(PREV_MEMBER);
    stored.extend_from_slice(hex::encode(prev_hash).as_bytes());
    stored.push(b'"');
    stored.extend_from_slice(&canonical[cut..]);
    Ok((stored, hash))
}

/// `,"seq":` — the last member of every entry.
const SEQ_MEMBER: &[u8] = b",\"seq\":";
/// `","prev":"`, between the two chain members.
const PREV_MEMBER: &[u8] = b"\",\"prev\":\"";
/// `,"hash":"<64 hex>","prev":"<64 hex>"`.
const CHAIN_SPAN: usize = 9 + 64 + 10 + 64 + 1;

/// Where the chain members start in an entry of the stored form (`...<span>,"seq":N}`),
/// counted from its end. For any entry in that form this is where the last `,"hash":"` is
/// (nothing after it can contain one: hex digits have no `h` or `s`), found without scanning;
/// an entry not in that form gets `None`, and `unseal` searches, to say what is wrong.
fn chain_span_at_end(raw: &[u8]) -> Option<usize> {
    let body = raw.strip_suffix(b"}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let i = body
        .len()
        .checked_sub(digits + SEQ_MEMBER.len() + CHAIN_SPAN)?;
    raw[i..].starts_with(b",\"hash\":\"").then_some(i)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// `SHA-256(prev || canonical)`.
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// A stored entry taken apart: its canonical bytes (as two slices), hash, prev and seq.
struct Sealed<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    hash: [u8; 32],
    prev: [u8; 32],
    seq: u64,
}

/// Splits a stored entry at its chain members. Strings inside JSON cannot hold an unescaped
/// `"`, so the last `,"hash":"` is the entry's own.
fn unseal(raw: &[u8]) -> std::result::Result<Sealed<'_>, String> {
    let bad = || "entry is not in the sealed form (chain members missing or altered)".to_string();
    let i = match chain_span_at_end(raw) {
        Some(i) => i,
        None => rfind(raw, b",\"hash\":\"").ok_or_else(bad)?,
    };
    let span = raw.get(i..i + CHAIN_SPAN).ok_or_else(bad)?;
    if &span[73..83] != PREV_MEMBER || span[CHAIN_SPAN - 1] != b'"' {
        return Err(bad());
    }
    let (mut hash, mut prev) = ([0u8; 32], [0u8; 32]);
    hex::decode_to_slice(&span[9..73], &mut hash)
        .map_err(|_| "'hash' is not 64 hex digits".to_string())?;
    hex::decode_to_slice(&span[83..147], &mut prev)
        .map_err(|_| "'prev' is not 64 hex digits".to_string())?;
    let tail = &raw[i + CHAIN_SPAN..];
    let digits = tail
        .strip_prefix(SEQ_MEMBER)
        .and_then(|t| t.strip_suffix(b"}"))
        .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
        .ok_or_else(|| "entry has no sequence number where it belongs".to_string())?;
    let seq = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| "sequence number out of range".to_string())?;
    Ok(Sealed {
        head: &raw[..i],
        tail,
        hash,
        prev,
        seq,
    })
}

/// The outcome of checking a chain and its Merkle tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries that verified.
    pub entries: u64,
    /// Hex hash of the last good entry.
    pub head: String,
    /// Base64 Merkle root (RFC 6962) of the entries that verified, as a checkpoint writes it.
    pub root: String,
    /// The size of the checkpoint the log was checked against, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Walks a chain entry by entry, in order, rebuilding its Merkle tree on the way.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: u64,
    prev: [u8; 32],
    tree: Frontier,
    /// A checkpoint the log must extend: its size and root, and the root found at that size.
    checkpoint: Option<(u64, Hash, Option<Hash>)>,
    /// The first failure: the entry it names (none when it is about the whole log), and what.
    failure: Option<(Option<u64>, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev: GENESIS,
            tree: Frontier::new(),
            checkpoint: None,
            failure: None,
        }
    }
}

impl Verifier {
    /// Checks the next entry's raw bytes. After the first failure, later entries are ignored.
    pub fn push(&mut self, raw: &[u8]) {
        self.push_with(raw, |_, _, _| {});
    }

    /// [`Verifier::push`], telling `node` each tree node (level 1 and up) the entry completes.
    pub fn push_with(&mut self, raw: &[u8], node: impl FnMut(u8, u64, &Hash)) {
        if self.failure.is_some() {
            return;
        }
        let seq = self.expected_seq;
        if let Err(problem) = self.check(raw) {
            self.failure = Some((Some(seq), problem));
            return;
        }
        self.expected_seq += 1;
        self.tree.push(merkle::leaf_hash(raw), node);
        if let Some((size, _, found @ None)) = &mut self.checkpoint
            && *size == self.tree.size()
        {
            *found = Some(self.tree.root());
        }
    }

    /// Requires the log to extend the checkpoint of `size` entries with `root`.
    pub fn expect_checkpoint(&mut self, size: u64, root: Hash) {
        let found = (size == 0).then(merkle::empty_root);
        self.checkpoint = Some((size, root, found));
    }

    /// Records a problem with the stored tree (found by whoever reads it beside the entries).
    pub fn fail_tree(&mut self, problem: String) {
        if self.failure.is_none() {
            self.failure = Some((None, problem));
        }
    }

    fn check(&mut self, raw: &[u8]) -> std::result::Result<(), String> {
        if let Some(hash) = self.intact(raw) {
            self.prev = hash;
            return Ok(());
        }
        let e = unseal(raw)?;
        if e.seq != self.expected_seq {
            return Err(format!(
                "sequence number is {}, expected {}",
                e.seq, self.expected_seq
            ));
        }
        if e.prev != self.prev {
            return Err("prev does not match the previous entry's hash".into());
        }
        let mut h = Sha256::new();
        h.update(e.prev);
        h.update(e.head);
        h.update(e.tail);
        let computed: [u8; 32] = h.finalize().into();
        if computed != e.hash {
            return Err("hash does not match the entry's contents".into());
        }
        self.prev = e.hash;
        Ok(())
    }

    /// The common case, checked without decoding hex (which cost as much as the hashing): an
    /// entry in exactly the stored form, with the expected sequence number, whose `prev` reads
    /// as the chain's last hash and whose `hash` as the hash of its contents. `None` sends the
    /// entry to the full check, which accepts these same entries (and hex in capitals too) and
    /// says what is wrong with the rest. Returns the entry's hash.
    fn intact(&self, raw: &[u8]) -> Option<[u8; 32]> {
        let i = chain_span_at_end(raw)?;
        let (head, rest) = raw.split_at(i);
        let (span, tail) = rest.split_at_checked(CHAIN_SPAN)?;
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.prev, &mut hex).ok()?;
        if span[73..83] != *PREV_MEMBER || span[83..147] != hex || span[147] != b'"' {
            return None;
        }
        let digits = tail.strip_prefix(SEQ_MEMBER)?.strip_suffix(b"}")?;
        let seq = digits.iter().try_fold(0u64, |n, d| {
            d.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
        })?;
        if digits.is_empty() || seq != self.expected_seq {
            return None;
        }
        let mut h = Sha256::new();
        h.update(self.prev);
        h.update(head);
        h.update(tail);
        let computed: [u8; 32] = h.finalize().into();
        hex::encode_to_slice(computed, &mut hex).ok()?;
        (span[9..73] == hex).then_some(computed)
    }

    /// Records a failure found outside the entries themselves (a missing tail, say).
    pub fn fail_at_next(&mut self, problem: String) {
        if self.failure.is_none() {
            self.failure = Some((Some(self.expected_seq), problem));
        }
    }

    /// Checks that the chain ends at `head`: `(last seq, hash)` as recorded beside it, and
    /// that the tree's frontier recorded there (if any) is the entries' own.
    pub fn expect_head(&mut self, seq: u64, hash: &[u8; 32], frontier: Option<&Frontier>) {
        if self.failure.is_some() {
            return;
        }
        let last = self.expected_seq - 1;
        if last < seq {
            self.failure = Some((
                Some(last + 1),
                format!(
                    "the log ends at entry {last} but the recorded head is entry {seq}: entries were removed"
                ),
            ));
        } else if last > seq || &self.prev != hash {
            self.failure = Some((
                Some(seq.max(1)),
                "the recorded head does not match the last entry".into(),
            ));
        } else if frontier.is_some_and(|f| f != &self.tree) {
            self.fail_tree(
                "the Merkle tree recorded in the head does not match the entries".into(),
            );
        }
    }

    /// The verdict.
    pub fn finish(mut self) -> VerifyReport {
        let entries = self.expected_seq - 1;
        if let Some((size, root, found)) = self.checkpoint
            && self.failure.is_none()
        {
            match found {
                None => self.fail_at_next(format!(
                    "the log has {entries} entries, but the checkpoint covers {size}: entries were cut"
                )),
                Some(found) if found != root => self.fail_tree(format!(
                    "the first {size} entries do not hash to the checkpoint's root: entries were changed, or the log was forked, after it was signed"
                )),
                Some(_) => {}
            }
        }
        let (first_bad_seq, problem) = match self.failure {
            None => (None, None),
            Some((seq, problem)) => (seq, Some(problem)),
        };
        VerifyReport {
            ok: problem.is_none(),
            entries,
            head: hex::encode(self.prev),
            root: Base64::encode_string(&self.tree.root()),
            checkpoint: self.checkpoint.map(|(size, _, _)| size),
            first_bad_seq,
            problem,
        }
    }
}

/// Verifies an export (one JSON entry per line), and that it extends `checkpoint` if given.
pub fn verify_lines(
    text: &str,
    checkpoint: Option<&crate::checkpoint::Checkpoint>,
) -> VerifyReport {
    let mut v = Verifier::default();
    if let Some(cp) = checkpoint {
        v.expect_checkpoint(cp.size, cp.root);
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        v.push(line.as_bytes());
    }
    v.finish()
}

/// Decodes a stored entry for display.
pub fn decode(raw: &[u8]) -> Result<AuditEntry> {
    serde_json::from_slice(raw)
        .map_err(|e| Error::Internal(format!("audit entry does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let ev = AuditEvent::RequestCancelled {
                    id: seq,
                    by: "alice".into(),
                    reason: None,
                };
                let (raw, h) =
                    seal(seq, Timestamp::from_unix(seq as i64), "alice", &ev, &prev).unwrap();
                prev = h;
                raw
            })
            .collect()
    }

    fn verify(entries: &[Vec<u8>]) -> VerifyReport {
        let mut v = Verifier::default();
        entries.iter().for_each(|e| v.push(e));
        v.finish()
    }

    /// The entry's canonical bytes are the sorted JSON `Value` of all four members, written
    /// out by serde_json: what an outside verifier rebuilds.
    #[test]
    fn the_canonical_bytes_are_those_of_the_sorted_value() {
        let events = [
            AuditEvent::MemberRemoved {
                name: "o\"dd\\ \u{1b}[31m".into(),
                role: None,
            },
            AuditEvent::CertificateIssued {
                id: 7,
                serial: 12,
                key_id: "sshjit:alice:7:12".into(),
                principals: vec!["ro@web-01".into(), "deploy@web-02".into()],
                valid_after: Timestamp::from_unix(1_900_000_000),
                valid_before: Timestamp::from_unix(1_900_003_600),
                key_fingerprint: "SHA256:abc".into(),
                force_command: Some("systemctl restart \"app\"".into()),
            },
        ];
        for (i, event) in events.iter().enumerate() {
            let (seq, at, actor) = (u64::MAX - i as u64, Timestamp::from_unix(-5), "bot:ci");
            let prev = [i as u8; 32];
            let value = serde_json::json!({
                "seq": seq,
                "at": at,
                "actor": actor,
                "event": serde_json::to_value(event).unwrap(),
            });
            let canonical = serde_json::to_vec(&value).unwrap();
            let (raw, hash) = seal(seq, at, actor, event, &prev).unwrap();
            assert_eq!(hash, chain_hash(&prev, &canonical));
            let e = unseal(&raw).unwrap();
            assert_eq!([e.head, e.tail].concat(), canonical);
        }
    }

    #[test]
    fn canonical_form_is_sorted_compact_json() {
        let (raw, _) = seal(
            1,
            Timestamp::from_unix(0),
            "x",
            &AuditEvent::MemberRemoved {
                name: "b".into(),
                role: None,
            },
            &GENESIS,
        )
        .unwrap();
        let s = String::from_utf8(raw).unwrap();
        assert!(s.starts_with(r#"{"actor":"x","at":"1970-01-01T00:00:00Z","event":{"name":"b","type":"member_removed"},"hash":""#), "{s}");
    }

    #[test]
    fn an_intact_chain_verifies() {
        let r = verify(&chain(5));
        assert!(r.ok && r.entries == 5, "{r:?}");
    }

    #[test]
    fn an_added_field_breaks_the_chain() {
        let mut c = chain(3);
        let mut v: Value = serde_json::from_slice(&c[1]).unwrap();
        v["event"]["extra"] = Value::Bool(true);
        c[1] = serde_json::to_vec(&v).unwrap();
        assert_eq!(verify(&c).first_bad_seq, Some(2));
    }

    #[test]
    fn a_missing_tail_is_caught_by_the_head() {
        let c = chain(3);
        let mut v = Verifier::default();
        c[..2].iter().for_each(|e| v.push(e));
        let head = {
            let mut full = Verifier::default();
            c.iter().for_each(|e| full.push(e));
            full.prev
        };
        v.expect_head(3, &head, None);
        assert_eq!(v.finish().first_bad_seq, Some(3));
    }

    #[test]
    fn the_chain_members_are_found_from_the_end_as_a_search_finds_them() {
        let hash_member = b",\"hash\":\"";
        for raw in chain(12) {
            assert_eq!(chain_span_at_end(&raw), rfind(&raw, hash_member));
        }
        // An entry not in the stored form takes the search, and is refused as before.
        let raw = &chain(1)[0];
        let mut no_seq = raw[..rfind(raw, SEQ_MEMBER).unwrap()].to_vec();
        no_seq.push(b'}');
        assert_eq!(chain_span_at_end(&no_seq), None);
        assert_eq!(
            unseal(&no_seq).err().as_deref(),
            Some("entry has no sequence number where it belongs")
        );
        let odd_digit =
            String::from_utf8(raw.clone())
                .unwrap()
                .replacen("\"prev\":\"0", "\"prev\":\"g", 1);
        assert_eq!(
            unseal(odd_digit.as_bytes()).err().as_deref(),
            Some("'prev' is not 64 hex digits")
        );
    }

    #[test]
    fn the_quick_check_takes_intact_entries_and_leaves_the_rest_to_the_full_one() {
        let c = chain(20);
        let mut v = Verifier::default();
        for e in &c {
            assert!(v.intact(e).is_some());
            v.push(e);
        }
        assert!(v.finish().ok);
        // The same hash in capitals means the same chain: the full check still accepts it.
        let mut c = chain(3);
        let hash_at = chain_span_at_end(&c[1]).unwrap() + 9;
        c[1][hash_at..hash_at + 64].make_ascii_uppercase();
        let mut v = Verifier::default();
        v.push(&c[0]);
        assert!(v.intact(&c[1]).is_none());
        c.iter().skip(1).for_each(|e| v.push(e));
        assert!(v.finish().ok);
        // A wrong sequence number, a wrong prev: refused, with the full check's words.
        let c = chain(3);
        let mut v = Verifier::default();
        v.push(&c[0]);
        v.push(&c[2]);
        assert_eq!(
            v.finish().problem.as_deref(),
            Some("sequence number is 3, expected 2")
        );
        let mut c = chain(2);
        let prev_at = chain_span_at_end(&c[1]).unwrap() + 83;
        c[1][prev_at] = if c[1][prev_at] == b'0' { b'1' } else { b'0' };
        let r = verify(&c);
        assert_eq!(r.first_bad_seq, Some(2));
        assert_eq!(
            r.problem.as_deref(),
            Some("prev does not match the previous entry's hash")
        );
    }
}

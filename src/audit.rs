//! The tamper-evident audit log: typed events, the SHA-256 hash chain, and its verification.
//!
//! Entry `n` stores `prev` (entry `n-1`'s hash, 32 zero bytes for the first) and
//! `hash = SHA-256(prev || canonical(n))`, where `canonical(n)` is the entry as compact JSON
//! with sorted keys, without `prev` and `hash`. Verification works on raw JSON, so any
//! change to any field, including fields this version does not know, breaks the chain.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{GrantRole, Role, Timestamp};

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
    },
    HostAdded {
        name: String,
        address: String,
        port: u16,
        tags: Vec<String>,
        logins: Vec<String>,
        approvals_required: u32,
    },
    HostRemoved {
        name: String,
    },
    RequestCreated {
        id: u64,
        requester: String,
        resource: String,
        role: GrantRole,
        duration_secs: u64,
        reason: String,
        requested_start: Option<Timestamp>,
        pending_until: Timestamp,
        justification_flags: Vec<String>,
    },
    RequestApproved {
        id: u64,
        by: String,
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
    },
    GrantStarted {
        id: u64,
        start: Timestamp,
        end: Timestamp,
        effective_role: GrantRole,
        login: String,
    },
    CertificateIssued {
        id: u64,
        serial: u64,
        key_id: String,
        principals: Vec<String>,
        valid_after: Timestamp,
        valid_before: Timestamp,
        key_fingerprint: String,
    },
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
pub fn seal(
    seq: u64,
    at: Timestamp,
    actor: &str,
    event: &AuditEvent,
    prev_hash: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32])> {
    let mut body = serde_json::json!({
        "seq": seq,
        "at": at,
        "actor": actor,
        "event": serde_json::to_value(event)?,
    });
    let hash = chain_hash(prev_hash, &serde_json::to_vec(&body)?);
    if let Value::Object(map) = &mut body {
        map.insert("prev".into(), Value::String(hex::encode(prev_hash)));
        map.insert("hash".into(), Value::String(hex::encode(hash)));
    }
    Ok((serde_json::to_vec(&body)?, hash))
}

/// `SHA-256(prev || canonical)`.
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// The outcome of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries that verified.
    pub entries: u64,
    /// Hex hash of the last good entry.
    pub head: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Walks a chain entry by entry, in order.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: u64,
    prev: [u8; 32],
    failure: Option<(u64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            expected_seq: 1,
            prev: GENESIS,
            failure: None,
        }
    }
}

impl Verifier {
    /// Checks the next entry's raw bytes. After the first failure, later entries are ignored.
    pub fn push(&mut self, raw: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        let seq = self.expected_seq;
        if let Err(problem) = self.check(raw) {
            self.failure = Some((seq, problem));
            return;
        }
        self.expected_seq += 1;
    }

    fn check(&mut self, raw: &[u8]) -> std::result::Result<(), String> {
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(raw) else {
            return Err("entry is not a JSON object".into());
        };
        let stored_hash = take_hex(&mut map, "hash")?;
        let prev = take_hex(&mut map, "prev")?;
        match map.get("seq").and_then(Value::as_u64) {
            Some(s) if s == self.expected_seq => {}
            Some(s) => {
                return Err(format!(
                    "sequence number is {s}, expected {}",
                    self.expected_seq
                ));
            }
            None => return Err("entry has no sequence number".into()),
        }
        if prev != self.prev {
            return Err("prev does not match the previous entry's hash".into());
        }
        let canonical = serde_json::to_vec(&Value::Object(map)).map_err(|e| e.to_string())?;
        if chain_hash(&prev, &canonical) != stored_hash {
            return Err("hash does not match the entry's contents".into());
        }
        self.prev = stored_hash;
        Ok(())
    }

    /// Records a failure found outside the entries themselves (a missing tail, say).
    pub fn fail_at_next(&mut self, problem: String) {
        if self.failure.is_none() {
            self.failure = Some((self.expected_seq, problem));
        }
    }

    /// Checks that the chain ends at `head`: `(last seq, hash)` as recorded beside it.
    pub fn expect_head(&mut self, seq: u64, hash: &[u8; 32]) {
        if self.failure.is_some() {
            return;
        }
        let last = self.expected_seq - 1;
        if last < seq {
            self.failure = Some((
                last + 1,
                format!(
                    "the log ends at entry {last} but the recorded head is entry {seq}: entries were removed"
                ),
            ));
        } else if last > seq || &self.prev != hash {
            self.failure = Some((
                seq.max(1),
                "the recorded head does not match the last entry".into(),
            ));
        }
    }

    /// The verdict.
    pub fn finish(self) -> VerifyReport {
        let entries = self.expected_seq - 1;
        match self.failure {
            None => VerifyReport {
                ok: true,
                entries,
                head: hex::encode(self.prev),
                first_bad_seq: None,
                problem: None,
            },
            Some((seq, problem)) => VerifyReport {
                ok: false,
                entries,
                head: hex::encode(self.prev),
                first_bad_seq: Some(seq),
                problem: Some(problem),
            },
        }
    }
}

fn take_hex(
    map: &mut serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<[u8; 32], String> {
    let Some(Value::String(s)) = map.remove(key) else {
        return Err(format!("entry has no '{key}'"));
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(&s, &mut out).map_err(|_| format!("'{key}' is not 64 hex digits"))?;
    Ok(out)
}

/// Verifies an export: one JSON entry per line.
pub fn verify_lines(text: &str) -> VerifyReport {
    let mut v = Verifier::default();
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
    use super::*;

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let ev = AuditEvent::RequestCancelled {
                    id: seq,
                    by: "alice".into(),
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

    #[test]
    fn canonical_form_is_sorted_compact_json() {
        let (raw, _) = seal(
            1,
            Timestamp::from_unix(0),
            "x",
            &AuditEvent::MemberRemoved { name: "b".into() },
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
        v.expect_head(3, &head);
        assert_eq!(v.finish().first_bad_seq, Some(3));
    }
}

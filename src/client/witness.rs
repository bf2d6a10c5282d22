//! The helper and `admin` as witnesses of the broker's audit log: each keeps, per broker, the
//! last checkpoint it verified, asks on every contact for proof that the log still extends
//! it, checks that each certificate it receives is in the log, and refuses a broker that
//! cannot prove either, loudly, as OpenSSH refuses a changed host key.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use base64ct::{Base64, Encoding};
use russh::keys::ssh_key::Certificate;

use super::conn::Connection;
use crate::audit::{AuditEntry, AuditEvent};
use crate::ca;
use crate::checkpoint::{Checkpoint, NoteVerifier};
use crate::contract::{CertView, ConsistencyView};
use crate::error::{Error, Result};
use crate::merkle::{self, Hash};

/// Where a client keeps what it saw of one broker's log.
#[derive(Debug, Clone)]
pub struct Witness {
    /// The broker as configured (`host:port`).
    pub broker: String,
    /// The file that holds the pinned checkpoint key and the last checkpoint verified.
    pub file: PathBuf,
}

/// What a witness remembers: the key that signs the broker's checkpoints, pinned on first
/// contact, and the last checkpoint it verified.
#[derive(Debug, Clone)]
pub struct Seen {
    pub verifier: NoteVerifier,
    pub checkpoint: Checkpoint,
    pub note: String,
}

const HEADER: &str =
    "# sshjit: the last checkpoint of this broker's audit log that this client verified\n";

impl Witness {
    /// The witness of `broker`, keeping its file in `dir`.
    pub fn new(dir: &std::path::Path, broker: &str) -> Witness {
        let name: String = broker
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | ':' | '[' | ']' => c,
                _ => '_',
            })
            .collect();
        Witness {
            broker: broker.to_string(),
            file: dir.join(name),
        }
    }

    /// What this client saw of the broker's log, if it has been here before.
    pub fn load(&self) -> Result<Option<Seen>> {
        let text = match fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", self.file.display()))(e)),
        };
        let damaged = |why: String| {
            Error::Client(format!(
                "{} is damaged ({why}); restore it from a backup, or delete it to trust the broker's log afresh",
                self.file.display()
            ))
        };
        let body = text.strip_prefix(HEADER).unwrap_or(&text);
        let (vkey, note) = body
            .split_once('\n')
            .ok_or_else(|| damaged("no key line".into()))?;
        let verifier = NoteVerifier::parse(vkey).map_err(|e| damaged(e.to_string()))?;
        let checkpoint = verifier
            .open_checkpoint(note)
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(Seen {
            verifier,
            checkpoint,
            note: note.to_string(),
        }))
    }

    /// Remembers `seen`, unless the file already holds a larger checkpoint (another run of
    /// the client got further meanwhile).
    pub fn save(&self, seen: &Seen) -> Result<()> {
        if let Ok(Some(stored)) = self.load()
            && stored.checkpoint.size > seen.checkpoint.size
        {
            return Ok(());
        }
        let dir = self.file.parent().unwrap_or(std::path::Path::new("."));
        fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
        // A file of its own for each writer (0600), renamed into place: runs of the client at
        // the same time never see each other's half-written file.
        let write = || -> std::io::Result<()> {
            let mut f = tempfile::Builder::new()
                .prefix(".checkpoint-")
                .tempfile_in(dir)?;
            write!(f, "{HEADER}{}\n{}", seen.verifier.to_vkey(), seen.note)?;
            f.as_file().sync_all()?;
            f.persist(&self.file).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(Error::io(format!("cannot write {}", self.file.display())))
    }

    /// The loud refusal, naming this witness's file as the evidence.
    pub fn refuse(&self, detail: impl Into<String>) -> Error {
        Error::LogNotExtended {
            broker: self.broker.clone(),
            detail: detail.into(),
            evidence: self.file.display().to_string(),
        }
    }

    /// Checks the broker's answer to `audit consistency --from` what this client saw, and
    /// returns what to remember next.
    pub fn check(&self, seen: Option<&Seen>, answer: &ConsistencyView) -> Result<Seen> {
        let presented = NoteVerifier::parse(&answer.checkpoint.key)
            .map_err(|e| self.refuse(format!("its checkpoint key is unusable: {e}")))?;
        let verifier = match seen {
            Some(s) if s.verifier != presented => {
                return Err(self.refuse(format!(
                    "it now signs its checkpoints with the key {}, not {} as pinned here",
                    presented.to_vkey(),
                    s.verifier.to_vkey()
                )));
            }
            Some(s) => s.verifier.clone(),
            None => presented,
        };
        let checkpoint = verifier
            .open_checkpoint(&answer.checkpoint.note)
            .map_err(|e| self.refuse(format!("its checkpoint does not verify: {e}")))?;
        if checkpoint.size != answer.to {
            return Err(self.refuse(format!(
                "it sent a checkpoint of {} entries as one of {}",
                checkpoint.size, answer.to
            )));
        }
        let next = Seen {
            verifier,
            checkpoint,
            note: answer.checkpoint.note.clone(),
        };
        let Some(seen) = seen else {
            return Ok(next);
        };
        extends(
            &seen.checkpoint,
            &next.checkpoint,
            answer.from,
            &answer.proof,
        )
        .map_err(|detail| self.refuse(detail))?;
        Ok(next)
    }

    /// On every contact: asks the broker to prove that its log extends what this client saw,
    /// checks the proof, and remembers the newer checkpoint.
    pub async fn on_contact(&self, conn: &Connection) -> Result<Seen> {
        let seen = self.load()?;
        let from = seen.as_ref().map_or(0, |s| s.checkpoint.size);
        let answer = self.prove_from(conn, from, None).await?;
        let next = self.check(seen.as_ref(), &answer)?;
        self.save(&next)?;
        Ok(next)
    }

    /// Before a certificate is used: its audit entry describes exactly it, the entry is in
    /// the checkpoint it came with, and that checkpoint extends `seen`.
    pub async fn check_certificate(
        &self,
        conn: &Connection,
        seen: &Seen,
        cert: &CertView,
    ) -> Result<()> {
        let inside = certificate_in_log(cert, &seen.verifier).map_err(|e| {
            self.refuse(format!(
                "the certificate it issued is not proven to be in its log: {e}"
            ))
        })?;
        let answer = self
            .prove_from(conn, seen.checkpoint.size, Some(inside.size))
            .await?;
        let next = self.check(Some(seen), &answer)?;
        if next.checkpoint != inside {
            return Err(self.refuse(format!(
                "it signed two different checkpoints of {} entries",
                inside.size
            )));
        }
        self.save(&next)
    }

    /// Asks the broker to prove that its log of `to` entries (default: all it has made
    /// durable) extends its first `from`; a broker whose log is shorter is refused.
    pub async fn prove_from(
        &self,
        conn: &Connection,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyView> {
        let (from, to) = (from.to_string(), to.map(|t| t.to_string()));
        let mut words = vec!["audit", "consistency", "--from", &from];
        if let Some(to) = &to {
            words.extend(["--to", to]);
        }
        match conn.call(&words).await {
            Err(Error::Remote { code, message }) if code == "beyond_log" => {
                Err(self.refuse(format!("entries were cut: {message}")))
            }
            other => other,
        }
    }
}

/// Whether the tree of `new` extends the tree of `old`, by `proof`; the problem if not.
pub fn extends(
    old: &Checkpoint,
    new: &Checkpoint,
    from: u64,
    proof: &[String],
) -> std::result::Result<(), String> {
    if from != old.size {
        return Err(format!(
            "it proved from {from} entries when asked from {}",
            old.size
        ));
    }
    if new.size < old.size {
        return Err(format!(
            "its log has {} entries, fewer than the {} this client saw: entries were cut",
            new.size, old.size
        ));
    }
    let proof = decode(proof).ok_or("its consistency proof is not base64 hashes")?;
    if merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof) {
        return Ok(());
    }
    Err(if new.size == old.size {
        format!(
            "its log of {} entries has another root than the one this client saw: entries were rewritten, or the log was forked",
            new.size
        )
    } else {
        format!(
            "it cannot prove that its log of {} entries extends the {} this client saw: entries were rewritten, or the log was forked",
            new.size, old.size
        )
    })
}

fn decode(proof: &[String]) -> Option<Vec<Hash>> {
    proof
        .iter()
        .map(|h| Base64::decode_vec(h).ok()?.try_into().ok())
        .collect()
}

/// Checks that `cert`'s audit entry records exactly this certificate and is in the signed
/// checkpoint it came with; returns that checkpoint.
pub fn certificate_in_log(
    cert: &CertView,
    verifier: &NoteVerifier,
) -> std::result::Result<Checkpoint, String> {
    let log = &cert.log;
    let checkpoint = verifier
        .open_checkpoint(&log.checkpoint.note)
        .map_err(|e| e.to_string())?;
    if checkpoint.size != log.size || log.seq != cert.serial || log.seq == 0 || log.seq > log.size {
        return Err(format!(
            "entry {} of {} does not match checkpoint size {} and serial {}",
            log.seq, log.size, checkpoint.size, cert.serial
        ));
    }
    let raw = log.entry.as_deref().ok_or("the entry is missing")?;
    let entry: AuditEntry =
        serde_json::from_str(raw).map_err(|e| format!("the entry does not decode: {e}"))?;
    let parsed = Certificate::from_openssh(&cert.certificate)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let AuditEvent::CertificateIssued {
        serial,
        key_id,
        principals,
        valid_after,
        valid_before,
        key_fingerprint,
        ..
    } = &entry.event
    else {
        return Err("the entry is not a certificate's".into());
    };
    let same = entry.seq == log.seq
        && *serial == parsed.serial()
        && key_id == parsed.key_id()
        && principals.as_slice() == parsed.valid_principals()
        && valid_after.unix() == parsed.valid_after() as i64
        && valid_before.unix() == parsed.valid_before() as i64
        && *key_fingerprint == ca::fingerprint(parsed.public_key());
    if !same {
        return Err("the entry does not describe this certificate".into());
    }
    let proof = decode(&log.proof).ok_or("the audit path is not base64 hashes")?;
    let leaf = merkle::leaf_hash(raw.as_bytes());
    if !merkle::verify_inclusion(&leaf, log.seq - 1, log.size, &proof, &checkpoint.root) {
        return Err(format!(
            "the audit path does not lead from entry {} to the checkpoint's root",
            log.seq
        ));
    }
    Ok(checkpoint)
}

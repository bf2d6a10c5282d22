//! What the broker proves about its audit log: signed checkpoints (`audit checkpoint`),
//! inclusion proofs (`audit prove`, and the one each certificate carries) and consistency
//! proofs (`audit consistency`), which let every member witness that the log only grows.
//!
//! Architecture invariant: a checkpoint is signed only for entries a flush has made durable (a
//! certificate's proof too: see `answer.rs`), so a crash never leaves a member holding a
//! checkpoint of entries the log lost.

use std::sync::{Arc, Mutex};

use base64ct::{Base64, Encoding};

use super::{Broker, Reply};
use crate::checkpoint::{Checkpoint, NoteSigner};
use crate::commands::AuditCommand;
use crate::contract::{CheckpointView, ConsistencyView, InclusionView};
use crate::error::{Error, Result};
use crate::merkle::Hash;

/// The checkpoint key, and the last checkpoint it signed (members ask for the same one often).
pub(super) struct Checkpoints {
    signer: NoteSigner,
    vkey: String,
    last: Mutex<Option<Arc<CheckpointView>>>,
}

impl Checkpoints {
    pub(super) fn new(signer: NoteSigner) -> Self {
        Checkpoints {
            vkey: signer.verifier().to_vkey(),
            signer,
            last: Mutex::new(None),
        }
    }
}

fn b64(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| Base64::encode_string(h)).collect()
}

impl Broker {
    /// The checkpoint of the first `size` entries, signed.
    fn checkpoint(&self, size: u64) -> Result<Arc<CheckpointView>> {
        let c = &self.checkpoints;
        let mut last = c.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = last.as_ref().filter(|v| v.size == size) {
            return Ok(v.clone());
        }
        let cp = Checkpoint {
            origin: c.signer.name().to_string(),
            size,
            root: self.store.audit_root(size)?,
        };
        let view = Arc::new(CheckpointView {
            origin: cp.origin.clone(),
            size,
            root: Base64::encode_string(&cp.root),
            note: c.signer.sign_checkpoint(&cp)?,
            key: c.vkey.clone(),
            sshsig: None,
            ssh_key: None,
        });
        *last = Some(view.clone());
        Ok(view)
    }

    /// `size` if given (and durable), else the whole durable log.
    fn durable_size(&self, size: Option<u64>) -> Result<u64> {
        let durable = self.store.durable_audit_len();
        match size {
            None => Ok(durable),
            Some(0) => Err(Error::invalid(
                "a checkpoint covers at least one entry; give a size from 1",
            )),
            Some(n) if n > durable => Err(Error::BeyondLog {
                size: durable,
                asked: n,
            }),
            Some(n) => Ok(n),
        }
    }

    /// The inclusion proof of entry `seq` in the checkpoint of `size` entries, with the entry
    /// when `with_entry`. The caller makes sure `size` is durable before anyone sees it.
    pub(super) fn inclusion(&self, seq: u64, size: u64, with_entry: bool) -> Result<InclusionView> {
        let proof = self.store.audit_inclusion(seq, size)?;
        let entry = match with_entry {
            true => {
                let raw = self
                    .store
                    .audit_entry(seq)?
                    .ok_or(Error::BeyondLog { size, asked: seq })?;
                Some(String::from_utf8_lossy(&raw).into_owned())
            }
            false => None,
        };
        Ok(InclusionView {
            seq,
            size,
            proof: b64(&proof),
            checkpoint: (*self.checkpoint(size)?).clone(),
            entry,
        })
    }

    /// `audit checkpoint`, `audit prove` and `audit consistency`: hashes only, for any member.
    pub(super) fn log_proof(&self, cmd: &AuditCommand) -> Result<Reply> {
        match cmd {
            AuditCommand::Checkpoint {
                size,
                sshsig,
                signers,
            } => {
                let size = self.durable_size(*size)?;
                let mut view = (*self.checkpoint(size)?).clone();
                let signer = &self.checkpoints.signer;
                let cp = Checkpoint {
                    origin: view.origin.clone(),
                    size,
                    root: self.store.audit_root(size)?,
                };
                view.sshsig = Some(signer.sshsig(&cp)?);
                view.ssh_key = Some(signer.ssh_public_key()?);
                let text = match (sshsig, signers) {
                    (true, _) => view.sshsig.clone().unwrap_or_default(),
                    (_, true) => signer.allowed_signers()?,
                    _ => view.note.clone(),
                };
                Reply::of(&view, text)
            }
            AuditCommand::Prove { seq, size } => {
                let size = self.durable_size(*size)?;
                if *seq == 0 || *seq > size {
                    return Err(Error::BeyondLog { size, asked: *seq });
                }
                let view = self.inclusion(*seq, size, false)?;
                let text = format!(
                    "entry {seq} is leaf {} of the log's first {size} entries; its audit path (base64, leaf to root):\n{}\n\n{}",
                    seq - 1,
                    lines(&view.proof),
                    view.checkpoint.note
                );
                Reply::of(&view, text)
            }
            AuditCommand::Consistency { from, to } => {
                let to = self.durable_size(*to)?;
                if *from > to {
                    return Err(Error::BeyondLog {
                        size: to,
                        asked: *from,
                    });
                }
                let proof = self.store.audit_consistency(*from, to)?;
                let view = ConsistencyView {
                    from: *from,
                    to,
                    proof: b64(&proof),
                    checkpoint: (*self.checkpoint(to)?).clone(),
                };
                let text = format!(
                    "the log's first {to} entries extend its first {from}; the proof (base64):\n{}\n\n{}",
                    lines(&view.proof),
                    view.checkpoint.note
                );
                Reply::of(&view, text)
            }
            _ => Err(Error::Internal("not a log proof command".into())),
        }
    }
}

fn lines(proof: &[String]) -> String {
    if proof.is_empty() {
        return "  (none needed)".into();
    }
    proof
        .iter()
        .map(|h| format!("  {h}"))
        .collect::<Vec<_>>()
        .join("\n")
}

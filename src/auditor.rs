//! What an auditor runs beside the broker: `audit verify` of a stopped broker's database or of
//! an export, against a checkpoint they saved, and `audit witness`, which asks a running
//! broker to prove that its log still extends that checkpoint.

use std::path::Path;

use crate::audit::{self, VerifyReport};
use crate::checkpoint::NoteVerifier;
use crate::client::Settings;
use crate::client::conn::Connection;
use crate::client::witness::{Seen, Witness};
use crate::contract::ConsistencyView;
use crate::datadir::{self, DataDir};
use crate::error::{Error, Result};

/// Where the log to verify is.
pub enum Source<'a> {
    DataDir(&'a Path),
    Export(&'a Path),
}

/// Verifies a stopped broker's database or an export: chain, tree and head, and, given a
/// checkpoint (with the key that signed it, or the data dir's), that the log still extends it.
pub fn verify(
    source: Source<'_>,
    checkpoint: Option<&Path>,
    key: Option<&str>,
) -> Result<VerifyReport> {
    let data_dir = match source {
        Source::DataDir(d) => Some(d),
        Source::Export(_) => None,
    };
    let checkpoint = checkpoint
        .map(|path| {
            let note = read(path)?;
            let verifier = verifier_for(&note, key, data_dir)?;
            verifier.open_checkpoint(&note).map_err(|e| {
                Error::BadCheckpoint(format!(
                    "{} is not a checkpoint signed by {}: {e}; the key was replaced, or the checkpoint is another broker's",
                    path.display(),
                    verifier.to_vkey()
                ))
            })
        })
        .transpose()?;
    match source {
        Source::DataDir(d) => {
            datadir::open_store(&DataDir::new(d))?.verify_audit_against(checkpoint.as_ref())
        }
        Source::Export(f) => Ok(audit::verify_lines(&read(f)?, checkpoint.as_ref())),
    }
}

/// `audit witness`: proves, with the broker's help, that its log extends the checkpoint in
/// `file`; with `update`, replaces the file's checkpoint with the newer one.
pub async fn witness(
    settings: &Settings,
    file: &Path,
    key: Option<&str>,
    update: bool,
) -> Result<ConsistencyView> {
    let note = read(file)?;
    let conn = Connection::open(settings).await?;
    let presented = conn.seen().map(|s| s.verifier.clone());
    let verifier = match (key, presented) {
        (Some(k), _) => verifier_for(&note, Some(k), None)?,
        (None, Some(v)) => v,
        (None, None) => {
            return Err(Error::Internal(
                "the connection has not checked the log".into(),
            ));
        }
    };
    let witness = Witness {
        broker: settings.broker.clone(),
        file: file.to_path_buf(),
    };
    let old = verifier.open_checkpoint(&note).map_err(|e| {
        witness.refuse(format!(
            "the checkpoint in {} does not verify with the key the broker signs with now ({}): {e}",
            file.display(),
            verifier.to_vkey()
        ))
    })?;
    let seen = Seen {
        verifier,
        checkpoint: old,
        note,
    };
    let answer = witness.prove_from(&conn, seen.checkpoint.size, None).await;
    conn.close().await;
    let answer = answer?;
    let next = witness.check(Some(&seen), &answer)?;
    if update {
        std::fs::write(file, &next.note)
            .map_err(Error::io(format!("cannot write {}", file.display())))?;
    }
    Ok(answer)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(Error::io(format!("cannot read {}", path.display())))
}

/// The key a saved checkpoint must be signed with: `key` (a verifier key, an OpenSSH public
/// key, or a file holding either), else the data dir's `checkpoint_key.pub`.
fn verifier_for(note: &str, key: Option<&str>, data_dir: Option<&Path>) -> Result<NoteVerifier> {
    let text = match (key, data_dir) {
        (Some(k), _) if Path::new(k).is_file() => read(Path::new(k))?,
        (Some(k), _) => k.to_string(),
        (None, Some(d)) => read(&DataDir::new(d).checkpoint_key().with_extension("pub"))?,
        (None, None) => {
            return Err(Error::invalid(
                "give --key with the broker's checkpoint key: the 'key' of 'audit checkpoint --json', or its data dir's checkpoint_key.pub",
            ));
        }
    };
    let text = text.trim();
    if text.starts_with("ssh-") {
        // An OpenSSH key signs under the checkpoint's origin; a wrong name fails to verify.
        let origin = note.lines().next().unwrap_or_default();
        return NoteVerifier::from_ssh(origin, text);
    }
    NoteVerifier::parse(text)
}

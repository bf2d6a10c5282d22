//! Signed checkpoints of the audit log: C2SP signed notes (c2sp.org/signed-note) with Ed25519
//! signatures carrying C2SP tlog-checkpoints (c2sp.org/tlog-checkpoint), and the same
//! checkpoint text signed as SSHSIG so that stock `ssh-keygen -Y verify` can check it.

use base64ct::{Base64, Encoding};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The namespace of the SSHSIG signatures of checkpoints (`ssh-keygen -Y verify -n`).
pub const SSHSIG_NAMESPACE: &str = "sshjit-checkpoint";
/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// The largest note a verifier reads (the spec asks for at least 16 signatures).
const MAX_NOTE: usize = 64 * 1024;
/// The most signature lines a verifier reads.
const MAX_SIGNATURES: usize = 100;
const DASH: &str = "\u{2014} ";

fn bad(msg: impl Into<String>) -> Error {
    Error::BadCheckpoint(msg.into())
}

/// A tree head: what a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            Base64::encode_string(&self.root)
        )
    }

    /// Parses a checkpoint's note text; extension lines are allowed and ignored.
    pub fn parse(text: &str) -> Result<Checkpoint> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("a checkpoint's text ends in a newline"))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(bad("a checkpoint has an origin, a size and a root line"));
        };
        if origin.is_empty() || lines.any(str::is_empty) {
            return Err(bad("a checkpoint's lines must not be empty"));
        }
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| canonical && size.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad(format!("'{size}' is not a tree size")))?;
        let root = Base64::decode_vec(root)
            .ok()
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("a checkpoint's root is not 32 bytes of base64"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// The key ID of a key name and Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4].
fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(bad(format!(
            "'{name}' cannot name a note key: it must be non-empty, with no spaces and no '+'"
        )));
    }
    Ok(())
}

/// Checks the characters of a note (or its text): no control characters but newlines.
fn check_chars(s: &str) -> Result<()> {
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(
            "a signed note may hold no control characters but newlines",
        ));
    }
    Ok(())
}

/// The broker's checkpoint signing key: an Ed25519 key and the name it signs under (the origin).
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    ssh: PrivateKey,
    verifier: NoteVerifier,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.verifier.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// From an OpenSSH Ed25519 private key; refuses other key types and bad names.
    pub fn new(name: &str, ssh: PrivateKey) -> Result<NoteSigner> {
        check_name(name)?;
        let kp = ssh
            .key_data()
            .ed25519()
            .ok_or_else(|| bad("the checkpoint key must be an Ed25519 key"))?;
        let key = SigningKey::from_bytes(&kp.private.to_bytes());
        let public = key.verifying_key();
        Ok(NoteSigner {
            name: name.to_string(),
            verifier: NoteVerifier {
                name: name.to_string(),
                id: key_id(name, &public),
                key: public,
            },
            key,
            ssh,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        self.verifier.clone()
    }

    /// A signed note of `text` (a valid note text, ending in a newline) with one signature.
    pub fn sign(&self, text: &str) -> Result<String> {
        check_chars(text)?;
        if !text.ends_with('\n') {
            return Err(bad("a note's text ends in a newline"));
        }
        let mut blob = self.verifier.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&self.key.sign(text.as_bytes()).to_bytes());
        Ok(format!(
            "{text}\n{DASH}{} {}\n",
            self.name,
            Base64::encode_string(&blob)
        ))
    }

    /// A signed checkpoint.
    pub fn sign_checkpoint(&self, cp: &Checkpoint) -> Result<String> {
        self.sign(&cp.text())
    }

    /// The armored SSHSIG of the checkpoint's text in [`SSHSIG_NAMESPACE`], with SHA-512.
    pub fn sshsig(&self, cp: &Checkpoint) -> Result<String> {
        let sig = SshSig::sign(
            &self.ssh,
            SSHSIG_NAMESPACE,
            HashAlg::Sha512,
            cp.text().as_bytes(),
        )
        .map_err(|e| Error::Internal(format!("cannot sign the checkpoint as SSHSIG: {e}")))?;
        sig.to_pem(LineEnding::LF)
            .map_err(|e| Error::Internal(format!("cannot encode an SSHSIG: {e}")))
    }

    /// The public key in OpenSSH form with the name as its comment.
    pub fn ssh_public_key(&self) -> Result<String> {
        let mut public = self.ssh.public_key().clone();
        public.set_comment(self.name.as_str());
        public
            .to_openssh()
            .map_err(|e| Error::Internal(format!("cannot encode the checkpoint key: {e}")))
    }

    /// One allowed_signers line for `ssh-keygen -Y verify -I NAME -n sshjit-checkpoint`.
    pub fn allowed_signers(&self) -> Result<String> {
        let mut public = self.ssh.public_key().clone();
        public.set_comment("");
        let key = public
            .to_openssh()
            .map_err(|e| Error::Internal(format!("cannot encode the checkpoint key: {e}")))?;
        Ok(format!(
            "{} namespaces=\"{SSHSIG_NAMESPACE}\" {}\n",
            self.name,
            key.trim()
        ))
    }
}

/// A verifier key: name, key ID, Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `name+hexid+base64(0x01 || key)`; refuses a key ID that does not match the key.
    pub fn parse(vkey: &str) -> Result<NoteVerifier> {
        let unusable = || {
            bad(format!(
                "'{}' is not a note verifier key (name+keyid+base64)",
                crate::model::printable(vkey, 80)
            ))
        };
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(unusable());
        };
        check_name(name)?;
        if id.len() != 8 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(unusable());
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| unusable())?;
        let raw = Base64::decode_vec(key).map_err(|_| unusable())?;
        let (ED25519, Ok(bytes)) = (
            raw.first().copied().unwrap_or(0),
            <[u8; 32]>::try_from(raw.get(1..).unwrap_or_default()),
        ) else {
            return Err(bad("the verifier key is not an Ed25519 key of 32 bytes"));
        };
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| unusable())?;
        if key_id(name, &key) != id {
            return Err(bad("the verifier key's ID does not match its name and key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// From an OpenSSH `ssh-ed25519` public key and the name it signs under.
    pub fn from_ssh(name: &str, openssh: &str) -> Result<NoteVerifier> {
        check_name(name)?;
        let public = PublicKey::from_openssh(openssh.trim())
            .map_err(|e| bad(format!("not an OpenSSH public key: {e}")))?;
        let ed = public
            .key_data()
            .ed25519()
            .ok_or_else(|| bad("the checkpoint key must be an Ed25519 key"))?;
        let key = VerifyingKey::from_bytes(&ed.0)
            .map_err(|_| bad("the checkpoint key is not a valid Ed25519 key"))?;
        Ok(NoteVerifier {
            name: name.to_string(),
            id: key_id(name, &key),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The verifier key string (`name+hexid+base64`).
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            Base64::encode_string(&raw)
        )
    }

    /// Verifies `note` and returns its text (including the final newline). Signatures by
    /// other keys are ignored; one by this key must be there and must verify.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str> {
        if note.len() > MAX_NOTE {
            return Err(bad(format!("a note over {MAX_NOTE} bytes is refused")));
        }
        check_chars(note)?;
        let split = note
            .strip_suffix('\n')
            .and_then(|n| n.rfind("\n\n"))
            .ok_or_else(|| bad("not a signed note: no blank line before the signatures"))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        let mut verified = false;
        for (i, line) in signatures.lines().enumerate() {
            if i >= MAX_SIGNATURES {
                return Err(bad("a note with this many signatures is refused"));
            }
            let (name, blob) = line
                .strip_prefix(DASH)
                .and_then(|l| l.split_once(' '))
                .ok_or_else(|| bad("a note's signature line is malformed"))?;
            let blob =
                Base64::decode_vec(blob).map_err(|_| bad("a note's signature is not base64"))?;
            let Some((id, sig)) = blob.split_first_chunk::<4>() else {
                return Err(bad("a note's signature is too short"));
            };
            if name != self.name || u32::from_be_bytes(*id) != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(sig)
                .map_err(|_| bad("the note's signature is not an Ed25519 signature"))?;
            self.key.verify(text.as_bytes(), &sig).map_err(|_| {
                bad(format!(
                    "the signature of {} does not verify: the note was changed",
                    self.name
                ))
            })?;
            verified = true;
        }
        if !verified {
            return Err(bad(format!(
                "the note has no signature by the key {}",
                self.to_vkey()
            )));
        }
        Ok(text)
    }

    /// Verifies a signed checkpoint and parses it; refuses one whose origin is not this key's
    /// name.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint> {
        let cp = Checkpoint::parse(self.open(note)?)?;
        if cp.origin != self.name {
            return Err(bad(format!(
                "the checkpoint is of the log '{}', not '{}'",
                crate::model::printable(&cp.origin, 80),
                self.name
            )));
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests;

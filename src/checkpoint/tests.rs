//! Signed notes and checkpoints against the published vectors, and every refusal.

use russh::keys::ssh_key::private::Ed25519Keypair;

use super::*;

// golang.org/x/mod/sumdb/note (note.go's package documentation and example_test.go), the
// format C2SP signed-note standardizes: signer, verifier key, text and signed note.
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG: &str =
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

fn peter() -> NoteSigner {
    let b64 = PETER_SKEY.splitn(5, '+').nth(4).unwrap();
    let raw = Base64::decode_vec(b64).unwrap();
    assert_eq!(raw[0], ED25519);
    let seed: [u8; 32] = raw[1..].try_into().unwrap();
    NoteSigner::new("PeterNeumann", Ed25519Keypair::from_seed(&seed).into()).unwrap()
}

fn peter_note() -> String {
    format!("{PETER_TEXT}\n\u{2014} PeterNeumann {PETER_SIG}\n")
}

fn signer(name: &str) -> NoteSigner {
    NoteSigner::new(name, crate::ca::generate_key("t").unwrap()).unwrap()
}

fn refused<T: std::fmt::Debug>(r: Result<T>, word: &str) {
    match r {
        Err(Error::BadCheckpoint(m)) => assert!(m.contains(word), "{word:?} not in {m:?}"),
        other => panic!("expected a BadCheckpoint naming {word:?}, got {other:?}"),
    }
}

#[test]
fn the_published_vector_signs_and_verifies_byte_for_byte() {
    let v = NoteVerifier::parse(PETER_VKEY).unwrap();
    assert_eq!(v.key_id(), 0xc74f20a3);
    assert_eq!(v.name(), "PeterNeumann");
    assert_eq!(v.to_vkey(), PETER_VKEY);
    let s = peter();
    assert_eq!(s.verifier(), v);
    assert_eq!(s.sign(PETER_TEXT).unwrap(), peter_note());
    assert_eq!(v.open(&peter_note()).unwrap(), PETER_TEXT);
}

#[test]
fn a_checkpoint_round_trips_and_its_text_is_exact() {
    let s = signer("sshjit/0011223344556677");
    let cp = Checkpoint {
        origin: s.name().into(),
        size: 20852163,
        root: [7; 32],
    };
    assert_eq!(
        cp.text(),
        "sshjit/0011223344556677\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"
    );
    let note = s.sign_checkpoint(&cp).unwrap();
    assert_eq!(s.verifier().open_checkpoint(&note).unwrap(), cp);
    let vkey = NoteVerifier::parse(&s.verifier().to_vkey()).unwrap();
    assert_eq!(vkey.open_checkpoint(&note).unwrap(), cp);
    let from_ssh = NoteVerifier::from_ssh(s.name(), &s.ssh_public_key().unwrap()).unwrap();
    assert_eq!(from_ssh, s.verifier());
    // Extension lines are read past; the tlog-checkpoint example parses.
    let ext = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nextra\n";
    assert_eq!(Checkpoint::parse(ext).unwrap().size, 20852163);
}

#[test]
fn changed_or_foreign_notes_are_refused() {
    let v = NoteVerifier::parse(PETER_VKEY).unwrap();
    let note = peter_note();
    refused(
        v.open(&note.replace("cryptography", "Cryptography")),
        "does not verify",
    );
    refused(v.open(&note.replace("\n\n", "\n")), "no blank line");
    refused(v.open(&note.replace("problem,", "problem,\t")), "control");
    refused(v.open(&note.replace("problem,", "problem,\r")), "control");
    // The same name with another key, and the same key under another name: not ours.
    let other = signer("PeterNeumann").sign(PETER_TEXT).unwrap();
    refused(v.open(&other), "no signature by the key");
    let renamed = note.replace("\u{2014} PeterNeumann", "\u{2014} PaulNeumann");
    refused(v.open(&renamed), "no signature by the key");
    refused(v.open(&"a".repeat(MAX_NOTE + 1)), "over");
    // Sixteen signatures by unknown keys before the known one still verify.
    let mut many = format!("{PETER_TEXT}\n");
    for i in 0..16 {
        let line = signer(&format!("k{i}")).sign(PETER_TEXT).unwrap();
        many.push_str(line.lines().last().unwrap());
        many.push('\n');
    }
    many.push_str(&format!("\u{2014} PeterNeumann {PETER_SIG}\n"));
    assert_eq!(v.open(&many).unwrap(), PETER_TEXT);
}

#[test]
fn malformed_checkpoints_and_keys_are_refused() {
    let root = Base64::encode_string(&[1u8; 32]);
    for size in ["007", "+1", "-1", "18446744073709551616", "", "1 "] {
        refused(
            Checkpoint::parse(&format!("o\n{size}\n{root}\n")),
            "tree size",
        );
    }
    refused(Checkpoint::parse("o\n1\nAAAA\n"), "32 bytes");
    refused(Checkpoint::parse("o\n1\n!!!\n"), "32 bytes");
    refused(Checkpoint::parse(&format!("\n1\n{root}\n")), "empty");
    refused(Checkpoint::parse(&format!("o\n1\n{root}")), "newline");
    refused(Checkpoint::parse("o\n1\n"), "origin, a size and a root");
    assert_eq!(
        Checkpoint::parse(&format!("o\n0\n{root}\n")).unwrap().size,
        0
    );
    let id_off = PETER_VKEY.replace("c74f20a3", "c74f20a4");
    refused(NoteVerifier::parse(&id_off), "ID does not match");
    let wrong_alg = format!(
        "PeterNeumann+c74f20a3+{}",
        Base64::encode_string(&[2u8; 33])
    );
    refused(NoteVerifier::parse(&wrong_alg), "Ed25519");
    let short = format!(
        "PeterNeumann+c74f20a3+{}",
        Base64::encode_string(&[1u8; 20])
    );
    refused(NoteVerifier::parse(&short), "Ed25519");
    refused(
        NoteVerifier::parse("Peter Neumann+c74f20a3+AAAA"),
        "no spaces",
    );
    refused(NoteVerifier::parse("nothing"), "not a note verifier key");
    refused(
        NoteSigner::new("a+b", crate::ca::generate_key("t").unwrap()),
        "'+'",
    );
    let s = signer("one");
    let cp = Checkpoint {
        origin: "two".into(),
        size: 1,
        root: [0; 32],
    };
    refused(
        s.verifier()
            .open_checkpoint(&s.sign_checkpoint(&cp).unwrap()),
        "not 'one'",
    );
}

#[test]
fn the_signer_shows_no_key_material() {
    let s = peter();
    let shown = format!("{s:?}");
    assert!(
        shown.contains("PeterNeumann") && shown.contains("c74f20a3"),
        "{shown}"
    );
    assert!(!shown.contains("AYEKFALV") && shown.len() < 100, "{shown}");
}

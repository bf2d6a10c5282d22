//! Fuzzes public-key parsing as `cert` (stdin or `--key`) and `member add --key` use it: any
//! text gets a key or an error that says why, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sshjit::model::{Role, Timestamp};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = sshjit::ca::parse_public_key(&text) {
        let _ = sshjit::ca::fingerprint(key.key_data());
        let _ = sshjit::ca::openssh_without_comment(&key);
    }
    let name = "fuzz".parse().expect("a valid name");
    let _ = sshjit::ca::member_with_key(name, Role::Viewer, &text, "fuzz", Timestamp::from_unix(0));
});

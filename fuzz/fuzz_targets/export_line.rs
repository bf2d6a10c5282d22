//! Fuzzes the offline verifier of an audit export (`audit verify --file`): any text gets a
//! report that is either ok or names the first bad entry, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let report = sshjit::audit::verify_lines(&text, None);
    assert!(report.ok == report.first_bad_seq.is_none());
    let _ = sshjit::audit::decode(data);
});

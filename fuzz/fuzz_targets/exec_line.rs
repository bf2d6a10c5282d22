//! Fuzzes the exec-line parser: any bytes a client sends as an SSH exec request get a parse
//! or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sshjit::commands::{Parsed, parse_line};

fuzz_target!(|data: &[u8]| {
    let json = sshjit::broker::wants_json(data);
    match parse_line(data) {
        Ok(Parsed::Run(inv)) => {
            let _ = (inv.json || !json, inv.reads_stdin(), inv.command.is_heavy());
        }
        Ok(Parsed::Help(text)) => assert!(!text.is_empty()),
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
});

//! Help texts and the main error texts, pinned: the exact words people see.
//!
//! Binary cases live in `tests/cmd/*.toml` (trycmd: stdout, stderr and exit status). Refresh
//! them deliberately with `TRYCMD=overwrite cargo test --test cli` and review the diff.

#[test]
fn command_line_texts() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}

/// The broker's own `help`, as `ssh BROKER help` prints it.
#[test]
fn broker_help_over_ssh() {
    let expected = include_str!("snapshots/broker-help.txt");
    let actual = sshjit::commands::help_text();
    if std::env::var_os("TRYCMD").is_some_and(|v| v == "overwrite") {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/snapshots/broker-help.txt"
            ),
            &actual,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        actual, expected,
        "broker help changed; refresh with TRYCMD=overwrite"
    );
}

//! Shell completions and man pages for both binaries, generated from their clap definitions so
//! they never drift from the flags.

use clap_complete::Shell;

use crate::error::{Error, Result};

/// The completion script for `cmd` in `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> String {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The man page for `cmd` (roff), with a section for each subcommand: what it does and its
/// options.
pub fn man_page(cmd: clap::Command) -> Result<String> {
    let mut out = Vec::new();
    let fail = |e: std::io::Error| Error::Internal(format!("cannot render the man page: {e}"));
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .map_err(fail)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let heading = format!("{} {}", cmd.get_name(), sub.get_name()).to_uppercase();
        out.extend_from_slice(format!(".SH \"{heading}\"\n").as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            out.extend_from_slice(b".PP\n");
            clap_mangen::Man::new(sub.clone())
                .render_options_section(&mut out)
                .map_err(fail)?;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

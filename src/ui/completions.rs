//! `peer completions SHELL [PROGRAM]`: shell completions generated from the
//! argh definitions that also make `--help` (by argh's own
//! `argh_complete`), so the two never drift apart.
//!
//! Owns nothing. Calls [`super::args`], [`super::help`] and
//! `argh_complete`.

use argh::ArgsInfo;
use argh_complete::Generator;
use argh_complete::bash::Bash;
use argh_complete::fish::Fish;
use argh_complete::zsh::Zsh;

use super::args::{CompletionsArgs, PeerArgs, TrackerArgs, Usage};
use super::{BoxError, help};

/// The completion script of `program` for `shell`, or why there is none.
pub fn script(shell: &str, program: &str) -> Result<String, Usage> {
    let info = match program {
        "peer" => PeerArgs::get_args_info(),
        "tracker" => TrackerArgs::get_args_info(),
        other => {
            return Err(Usage(format!(
                "no completions for {other:?}: the programs are peer and tracker"
            )));
        }
    };
    let text = match shell {
        "bash" => Bash::generate(program, &info),
        "zsh" => Zsh::generate(program, &info),
        "fish" => Fish::generate(program, &info),
        other => {
            return Err(Usage(format!(
                "no completions for the shell {other:?}: bash, zsh or fish"
            )));
        }
    };
    // Descriptions name limits as {PLACEHOLDERS}, as in --help.
    Ok(help::fill_known(&text))
}

pub fn run(a: CompletionsArgs) -> Result<(), BoxError> {
    let text = script(&a.shell, &a.program)?;
    out!("{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_every_command_and_option() {
        for shell in ["bash", "zsh", "fish"] {
            let peer = script(shell, "peer").unwrap();
            for word in [
                "share",
                "get",
                "list",
                "where",
                "completions",
                "tracker",
                "upload-limit",
            ] {
                assert!(peer.contains(word), "{shell}: {word} missing:\n{peer}");
            }
            assert!(
                !peer.contains("{PEER_"),
                "{shell}: placeholder left:\n{peer}"
            );
            let tracker = script(shell, "tracker").unwrap();
            assert!(tracker.contains("max-per-ip"), "{shell}:\n{tracker}");
        }
        assert!(script("tcsh", "peer").is_err());
        assert!(script("bash", "ls").is_err());
    }
}

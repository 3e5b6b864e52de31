//! Log records, kept apart from what the programs say to the user.
//!
//! The terminal gets one plain message per event from the commands
//! themselves; log records (timestamps, module paths, one per connection or
//! chunk) appear only when asked for: `-v`, `--log-file FILE` or
//! `RUST_LOG`. Without them only error records are written (there are
//! none in normal operation).
//!
//! A record written to the terminal while the prompt waits for a command
//! first erases the prompt line and then draws the prompt again below it,
//! so a record is never drawn over what the user is typing.
//!
//! Owns: the logger's setup and its writer. Calls `env_logger` and
//! [`super::out`].

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The filter without `-v` or `RUST_LOG`: errors only.
pub const QUIET_FILTER: &str = "error";
/// The filter with `-v` (or `--log-file`): this crate's debug records
/// (every connection, request and chunk), others' info.
pub const VERBOSE_FILTER: &str = "info,p2pfs=debug";

/// What the prompt shows while it waits for a command.
/// Kept here, not in `prompt`, because the log writer redraws it and
/// `prompt` calls this module.
pub const PROMPT: &str = "p2pfs> ";

/// Set while the prompt waits for a line on a terminal.
static PROMPT_SHOWN: AtomicBool = AtomicBool::new(false);

/// The prompt is (not) waiting on the terminal: records written meanwhile
/// redraw it.
pub fn set_prompt_shown(shown: bool) {
    PROMPT_SHOWN.store(shown, Ordering::SeqCst);
}

/// Where records go.
enum Sink {
    Stderr,
    File(File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// env_logger writes each whole record with one `write_all`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(buf),
            Sink::Stderr if PROMPT_SHOWN.load(Ordering::SeqCst) => {
                {
                    let mut e = io::stderr().lock();
                    e.write_all(b"\r\x1b[K")?;
                    e.write_all(buf)?;
                    e.flush()?;
                }
                let mut out = super::out::Stdout;
                let _ = out.write_all(PROMPT.as_bytes());
                Ok(())
            }
            Sink::Stderr => io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stderr => io::stderr().flush(),
        }
    }
}

/// Sets up logging: `verbose` or a `file` turn this crate's debug records
/// on (`RUST_LOG` overrides the filter either way); a `file` receives them
/// instead of stderr (appended), so a progress bar on the terminal and the
/// records can be had together.
pub fn init(verbose: bool, file: Option<&Path>) -> io::Result<()> {
    let default = if verbose || file.is_some() {
        VERBOSE_FILTER
    } else {
        QUIET_FILTER
    };
    let sink = match file {
        Some(p) => Sink::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", p.display())))?,
        ),
        None => Sink::Stderr,
    };
    let style = match (&sink, io::stderr().is_terminal()) {
        (Sink::Stderr, true) => env_logger::WriteStyle::Auto,
        _ => env_logger::WriteStyle::Never,
    };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .write_style(style)
        .target(env_logger::Target::Pipe(Box::new(sink)))
        .try_init();
    Ok(())
}

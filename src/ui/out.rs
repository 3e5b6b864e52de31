//! Standard output that may be closed under us: `peer list | head -1`.
//!
//! Everything the programs print on stdout goes through [`Stdout`] (with
//! the `outln!` and `out!` macros of this module), never
//! `print!`, which panics when the reader has gone. A write that finds
//! the pipe closed fails with [`StdoutClosed`] inside the `io::Error`, and
//! [`super::exit_status`] turns that into a quiet exit with status
//! [`CLOSED_STATUS`], as a shell reports for `ls | head`. A broken pipe on
//! a network socket is not this error and is still reported.
//!
//! What a command says along the way (as opposed to its result, like the
//! list `peer list` prints) goes through `note!`, which `-q` silences.
//!
//! Owns: the stdout writer, the closed-stdout error and the quiet flag.
//! Calls std only.

use std::error::Error;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by `-q`: `note!` lines are not printed.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Errors only from now on: `note!` prints nothing.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::SeqCst);
}

/// Whether `-q` asked for errors only.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::SeqCst)
}

/// The exit status after stdout was closed: 128 + SIGPIPE, what a shell
/// shows for a program that SIGPIPE ended (`ls | head`).
pub const CLOSED_STATUS: u8 = 141;

/// The reader of standard output has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl Error for StdoutClosed {}

/// The process's stdout, each write flushed, a closed pipe reported as
/// [`StdoutClosed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).map_err(closed)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(buf)
            .and_then(|()| out.flush())
            .map_err(closed)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().map_err(closed)
    }
}

fn closed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Whether `e`, or any error in its chain, is [`StdoutClosed`].
pub fn is_stdout_closed(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<StdoutClosed>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `println!` that returns `io::Result<()>` instead of panicking when
/// stdout is closed.
macro_rules! outln {
    () => {
        ::std::io::Write::write_all(&mut $crate::ui::out::Stdout, b"\n")
    };
    ($($arg:tt)*) => {
        ::std::io::Write::write_all(
            &mut $crate::ui::out::Stdout,
            format!("{}\n", format_args!($($arg)*)).as_bytes(),
        )
    };
}

/// [`outln!`] for what a command says along the way (not its result):
/// nothing with `-q`.
macro_rules! note {
    ($($arg:tt)*) => {
        if $crate::ui::out::is_quiet() {
            ::std::io::Result::Ok(())
        } else {
            outln!($($arg)*)
        }
    };
}

/// `print!` that returns `io::Result<()>` instead of panicking when stdout
/// is closed.
macro_rules! out {
    ($($arg:tt)*) => {
        ::std::io::Write::write_all(
            &mut $crate::ui::out::Stdout,
            format!($($arg)*).as_bytes(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_recognised() {
        let e = closed(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_stdout_closed(&e));
        let boxed: Box<dyn Error> = Box::new(e);
        assert!(is_stdout_closed(&*boxed));
        // A broken pipe elsewhere (a peer's socket) is a real error.
        assert!(!is_stdout_closed(&io::Error::from(
            io::ErrorKind::BrokenPipe
        )));
        let other = closed(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_stdout_closed(&other));
    }
}

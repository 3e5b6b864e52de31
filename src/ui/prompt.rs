//! The terminal around the [`Repl`]: reads lines on a "stdin" thread and
//! waits on them, on finished-download notices, on tracker-session events,
//! on what the folder watcher did (live sharing) and on signals together,
//! so a notice or Ctrl-C never waits for a key press.
//!
//! Owns: the stdin thread and the prompt string. Calls [`super::repl`],
//! [`super::format`], [`super::signals`], [`super::out`] and `peer::node`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded, select};

use super::format::{describe_event, describe_watch};
use super::out::Stdout;
use super::repl::{Flow, Repl};
use super::signals::StopSignals;
use crate::peer::download::DownloadOptions;
use crate::peer::node::Node;
use crate::peer::session::SessionEvent;
use crate::peer::watch::WatchEvent;

pub use super::log::PROMPT;

/// Runs the prompt until `quit`, the end of input, a signal or a closed
/// stdout, then stops the downloads started here and leaves the network.
pub fn run(
    node: Arc<Node>,
    dir: PathBuf,
    opts: DownloadOptions,
    events: Receiver<SessionEvent>,
    watch: Receiver<WatchEvent>,
    signals: &StopSignals,
) -> io::Result<()> {
    let (mut repl, notices) = Repl::new(Arc::clone(&node), dir, opts);
    let mut out = Stdout;
    // Whatever ended the loop, the downloads stop and the node leaves.
    let several = node.trackers().len() > 1;
    let looped = prompt_loop(
        &mut repl,
        &mut out,
        (events, several),
        (notices, watch),
        signals,
    );
    super::log::set_prompt_shown(false);
    let stopped = repl.finish();
    let said = if stopped.is_empty() {
        Ok(())
    } else {
        writeln!(
            out,
            "stopped {}: {}; the verified chunks stay in .p2pfs/, and `get NAME` resumes from \
             there",
            super::format::plural(stopped.len() as u64, "unfinished download"),
            stopped.join(", ")
        )
    };
    match Arc::try_unwrap(node) {
        Ok(node) => node.leave(),
        // A download that would not stop still holds the node. Exiting
        // closes the tracker connection, which the tracker takes as leaving.
        Err(_) => log::warn!("a download did not stop in time; leaving by exiting"),
    }
    looped?;
    said?;
    writeln!(out, "left the network")
}

/// Reads and runs commands, printing notices and events as they come,
/// until `quit`, the end of input or a signal.
fn prompt_loop(
    repl: &mut Repl,
    out: &mut Stdout,
    (events, several): (Receiver<SessionEvent>, bool),
    (notices, watch): (Receiver<String>, Receiver<WatchEvent>),
    signals: &StopSignals,
) -> io::Result<()> {
    let lines = spawn_stdin_reader()?;
    let tty = io::stdout().is_terminal();
    let (mut events, mut notices, mut sig_rx) = (events, notices, signals.receiver().clone());
    let mut watch = watch;
    writeln!(out, "type help for the commands")?;
    write!(out, "{PROMPT}")?;
    out.flush()?;
    // Log records written while the prompt waits redraw it (see ui::log).
    super::log::set_prompt_shown(tty);
    loop {
        select! {
            recv(lines) -> line => match line {
                Ok(line) => {
                    super::log::set_prompt_shown(false);
                    if repl.handle(&line, out)? == Flow::Quit {
                        return Ok(());
                    }
                    write!(out, "{PROMPT}")?;
                    out.flush()?;
                    super::log::set_prompt_shown(tty);
                }
                // End of input (Ctrl-D): like quit.
                Err(_) => return writeln!(out),
            },
            recv(notices) -> n => match n {
                Ok(n) => notice(out, tty, &n)?,
                Err(_) => notices = crossbeam_channel::never(),
            },
            recv(events) -> ev => match ev {
                Ok(ev) => {
                    for l in describe_event(&ev, several) {
                        notice(out, tty, &l)?;
                    }
                }
                Err(_) => events = crossbeam_channel::never(),
            },
            recv(watch) -> ev => match ev {
                Ok(ev) => notice(out, tty, &describe_watch(&ev))?,
                Err(_) => watch = crossbeam_channel::never(),
            },
            recv(sig_rx) -> sig => match sig {
                Ok(_) => return writeln!(out),
                Err(_) => sig_rx = crossbeam_channel::never(),
            },
        }
    }
}

/// Reads stdin line by line on its own thread. Not joined: a read from the
/// terminal has no timeout and no way to be woken; the thread ends with the
/// process, which holds nothing for it.
fn spawn_stdin_reader() -> io::Result<Receiver<String>> {
    let (line_tx, lines) = bounded::<String>(1);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.lock().read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if line_tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(lines)
}

/// Prints a line that arrived while the prompt was waiting: over the prompt
/// on a terminal, then the prompt again.
fn notice(out: &mut impl Write, tty: bool, line: &str) -> io::Result<()> {
    if tty {
        write!(out, "\r\x1b[K{line}\n{PROMPT}")?;
    } else {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

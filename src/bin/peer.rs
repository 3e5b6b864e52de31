//! `peer`: share a folder, download files, look at the network. Parses
//! arguments, calls the library, prints results and the error chain.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use argh::FromArgs;
use crossbeam_channel::{Receiver, bounded, select};
use p2pfs::chunks;
use p2pfs::error_chain;
use p2pfs::peer::download::{DownloadOptions, Progress};
use p2pfs::peer::node::{Node, NodeConfig};
use p2pfs::peer::ratelimit::parse_rate;
use p2pfs::peer::repl::{self, Flow, Repl, human};
use p2pfs::peer::session::SessionEvent;
use p2pfs::peer::{client, share};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// p2pfs peer: share a folder with the network, download files from many
/// peers at once (rarest chunks first, every chunk SHA-1 verified), and see
/// which peer holds which chunks.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Share(ShareArgs),
    Get(GetArgs),
    List(ListArgs),
    Where(WhereArgs),
}

/// Share every regular file under DIR (or only the FILEs named) and serve
/// chunks until Ctrl-C or SIGTERM, then leave the network. Names on the
/// network are paths relative to DIR with '/' separators. Hashes are cached
/// in DIR/.p2pfs-hashes so a restart does not re-hash unchanged files.
/// On a terminal it also reads commands: list, where NAME|NUMBER,
/// get NAME|NUMBER (downloads into DIR in the background), status, help,
/// quit. The chunk server accepts at most 256 connections at once, 64 from
/// one IP address (others get Busy), and closes a connection that sends no
/// Hello within 10 s or no request for 60 s.
#[derive(FromArgs)]
#[argh(subcommand, name = "share")]
struct ShareArgs {
    /// tracker address, host:port
    #[argh(option)]
    tracker: String,
    /// folder to share
    #[argh(option)]
    dir: PathBuf,
    /// only these files (paths inside DIR)
    #[argh(positional)]
    files: Vec<PathBuf>,
    /// address to serve chunks on (default 0.0.0.0:0, a free port)
    #[argh(option, default = "SocketAddr::from(([0, 0, 0, 0], 0))")]
    listen: SocketAddr,
    /// upload limit in bytes per second for all uploads together, e.g.
    /// 500K, 10M, 1G (powers of 1024; default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    upload_limit: Option<u64>,
    /// chunk size, e.g. 256K, 1M (default 1M; 1K to 16M)
    #[argh(
        option,
        from_str_fn(parse_chunk_size),
        default = "chunks::DEFAULT_CHUNK_SIZE"
    )]
    chunk_size: u32,
    /// log every request (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// do not read commands even on a terminal (use it when running in the
    /// background with `&`, where reading the terminal would stop the peer)
    #[argh(switch)]
    no_prompt: bool,
}

/// Download NAME into DIR/NAME from every peer that has chunks of it,
/// serving (and registering) each chunk as soon as it is verified. Resumes
/// from DIR/.p2pfs/ if a previous attempt was interrupted. Exits 0 only
/// when the whole file is verified and in place.
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct GetArgs {
    /// name of the file on the network
    #[argh(positional)]
    name: String,
    /// tracker address, host:port
    #[argh(option)]
    tracker: String,
    /// folder to download into
    #[argh(option)]
    dir: PathBuf,
    /// address to serve chunks on (default 0.0.0.0:0, a free port)
    #[argh(option, default = "SocketAddr::from(([0, 0, 0, 0], 0))")]
    listen: SocketAddr,
    /// upload limit in bytes per second, e.g. 500K, 10M (default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    upload_limit: Option<u64>,
    /// after downloading, keep serving the file until Ctrl-C or SIGTERM
    #[argh(switch)]
    seed: bool,
    /// requests kept in flight per source (default 4)
    #[argh(option, default = "p2pfs::peer::download::PIPELINE_DEPTH")]
    pipeline: usize,
    /// log which chunk came from which peer (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    verbose: bool,
}

/// List every file on the network with its size.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// tracker address, host:port
    #[argh(option)]
    tracker: String,
}

/// Show each peer holding NAME and a map of the chunks it has
/// ('#' all held, '+' some, '.' none, one character per chunk or group).
#[derive(FromArgs)]
#[argh(subcommand, name = "where")]
struct WhereArgs {
    /// name of the file on the network
    #[argh(positional)]
    name: String,
    /// tracker address, host:port
    #[argh(option)]
    tracker: String,
    /// width of the chunk map in characters (default 64)
    #[argh(option, default = "64")]
    width: usize,
}

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let verbose = match &args.cmd {
        Cmd::Share(a) => a.verbose,
        Cmd::Get(a) => a.verbose,
        _ => false,
    };
    let default = if verbose { "info,p2pfs=debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
    let r = match args.cmd {
        Cmd::Share(a) => share_cmd(a),
        Cmd::Get(a) => get_cmd(a),
        Cmd::List(a) => list_cmd(a),
        Cmd::Where(a) => where_cmd(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer: error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let v = parse_rate(s)?;
    let v = u32::try_from(v).map_err(|_| format!("chunk size {s} is too large"))?;
    if !(chunks::MIN_CHUNK_SIZE..=chunks::MAX_CHUNK_SIZE).contains(&v) {
        return Err(format!("chunk size {s} is outside 1K..=16M"));
    }
    Ok(v)
}

fn node_config(
    tracker: &str,
    listen: SocketAddr,
    upload_limit: Option<u64>,
) -> Result<NodeConfig, BoxError> {
    let mut cfg = NodeConfig::new(client::resolve(tracker)?);
    cfg.listen = listen;
    cfg.upload_limit = upload_limit;
    Ok(cfg)
}

/// The lines a session event is worth.
fn describe(ev: &SessionEvent) -> Vec<String> {
    match ev {
        SessionEvent::Registered { accepted, refused } => {
            let mut v = Vec::new();
            if !accepted.is_empty() {
                v.push(format!(
                    "registered {} file(s) with the tracker",
                    accepted.len()
                ));
            }
            for (name, why) in refused {
                v.push(format!("refused by the tracker: {name}: {why}"));
            }
            v
        }
        SessionEvent::Disconnected(why) => {
            vec![format!("tracker connection lost ({why}); reconnecting")]
        }
        SessionEvent::Reconnected => {
            vec!["reconnected to the tracker; files registered again".into()]
        }
    }
}

/// Prints registration outcomes as the session reports them.
fn print_session_events(
    rx: Receiver<SessionEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("session-events".into())
        .spawn(move || {
            for ev in rx {
                for line in describe(&ev) {
                    println!("{line}");
                }
            }
        })
}

fn wait_for_signal(signals: &mut Signals) {
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: leaving");
    }
}

fn share_cmd(a: ShareArgs) -> Result<(), BoxError> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let cfg = node_config(&a.tracker, a.listen, a.upload_limit)?;
    if !a.dir.is_dir() {
        return Err(format!("{} is not a folder", a.dir.display()).into());
    }
    let show = std::io::stderr().is_terminal();
    let progress = |done: u64, total: u64| {
        if show && total > 0 {
            eprint!(
                "\rhashing: {} of {}   ",
                human(done as f64),
                human(total as f64)
            );
        }
    };
    let scan = share::scan_dir(&a.dir, &a.files, a.chunk_size, &progress)?;
    if show {
        eprint!("\r\x1b[K");
    }
    for (path, why) in &scan.skipped {
        println!("skipped {}: {why}", path.display());
    }
    if scan.files.is_empty() {
        println!("nothing to share in {} (serving anyway)", a.dir.display());
    }
    for f in &scan.files {
        let g = f.geometry();
        println!(
            "sharing {}  {} bytes ({}), {} chunks",
            f.name(),
            g.length(),
            human(g.length() as f64),
            g.count()
        );
    }
    let (tx, rx) = bounded(16);
    // Commands only from a person: a pipe or /dev/null means a script or a
    // service, which only wants the peer to serve.
    if !a.no_prompt && std::io::stdin().is_terminal() {
        let node = Arc::new(Node::start(cfg, scan.files, Some(tx))?);
        println!(
            "serving chunks on {} (tracker {})",
            node.local_addr(),
            node.tracker()
        );
        return prompt_loop(node, a.dir, rx, signals);
    }
    let printer = print_session_events(rx)?;
    let node = Node::start(cfg, scan.files, Some(tx))?;
    println!(
        "serving chunks on {} (tracker {})",
        node.local_addr(),
        node.tracker()
    );
    wait_for_signal(&mut signals);
    node.leave();
    let _ = printer.join();
    println!("left the network");
    Ok(())
}

const PROMPT: &str = "p2pfs> ";

/// The terminal side of the interactive peer. Lines are read on a "stdin"
/// thread; this thread waits on them, on finished-download notices, on
/// session events and on signals together, so a notice or Ctrl-C never
/// waits for a key press.
fn prompt_loop(
    node: Arc<Node>,
    dir: PathBuf,
    events: Receiver<SessionEvent>,
    signals: Signals,
) -> Result<(), BoxError> {
    let (mut repl, notices) = Repl::new(Arc::clone(&node), dir, DownloadOptions::default());
    let sig_handle = signals.handle();
    let (sig_tx, sig_rx) = bounded(1);
    let sig_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals;
            // Ends when the handle is closed below.
            for sig in signals.forever() {
                let _ = sig_tx.try_send(sig);
            }
        })?;
    let (line_tx, lines) = bounded::<String>(1);
    // Not joined: a read from the terminal has no timeout and no way to be
    // woken; the thread ends with the process, which holds nothing for it.
    let _stdin_thread = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
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

    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    let (mut events, mut notices, mut sig_rx) = (events, notices, sig_rx);
    writeln!(out, "type help for the commands")?;
    write!(out, "{PROMPT}")?;
    out.flush()?;
    loop {
        select! {
            recv(lines) -> line => match line {
                Ok(line) => {
                    if repl.handle(&line, &mut out)? == Flow::Quit {
                        break;
                    }
                    write!(out, "{PROMPT}")?;
                    out.flush()?;
                }
                // End of input (Ctrl-D): like quit.
                Err(_) => {
                    writeln!(out)?;
                    break;
                }
            },
            recv(notices) -> n => match n {
                Ok(n) => notice(&mut out, tty, &n)?,
                Err(_) => notices = crossbeam_channel::never(),
            },
            recv(events) -> ev => match ev {
                Ok(ev) => {
                    for l in describe(&ev) {
                        notice(&mut out, tty, &l)?;
                    }
                }
                Err(_) => events = crossbeam_channel::never(),
            },
            recv(sig_rx) -> sig => match sig {
                Ok(_) => {
                    writeln!(out)?;
                    break;
                }
                Err(_) => sig_rx = crossbeam_channel::never(),
            },
        }
    }
    sig_handle.close();
    let _ = sig_thread.join();
    let stopped = repl.finish();
    if !stopped.is_empty() {
        println!(
            "stopped {} unfinished download(s): {}; the verified chunks stay in .p2pfs/, \
             and `get NAME` resumes from there",
            stopped.len(),
            stopped.join(", ")
        );
    }
    match Arc::try_unwrap(node) {
        Ok(node) => node.leave(),
        // A download that would not stop still holds the node. Exiting
        // closes the tracker connection, which the tracker takes as leaving.
        Err(_) => log::warn!("a download did not stop in time; leaving by exiting"),
    }
    println!("left the network");
    Ok(())
}

/// Prints a line that arrived while the prompt was waiting: over the prompt
/// on a terminal, then the prompt again.
fn notice(out: &mut impl Write, tty: bool, line: &str) -> std::io::Result<()> {
    if tty {
        write!(out, "\r\x1b[K{line}\n{PROMPT}")?;
    } else {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn get_cmd(a: GetArgs) -> Result<(), BoxError> {
    let cfg = node_config(&a.tracker, a.listen, a.upload_limit)?;
    // Fail fast, before serving anything, on a bad name, an unreachable
    // tracker or a file nobody has.
    p2pfs::wire::validate_name(&a.name).map_err(|e| format!("invalid name {:?}: {e}", a.name))?;
    if let Err(e) = client::locate(cfg.tracker, &a.name, false) {
        return Err(match e {
            p2pfs::peer::PeerError::Refused {
                code: p2pfs::wire::ErrorCode::UnknownFile,
                ..
            } => format!(
                "no file named {:?} on the network (see `peer list`)",
                a.name
            )
            .into(),
            other => format!("cannot ask the tracker at {}: {other}", cfg.tracker).into(),
        });
    }
    // Ctrl-C / SIGTERM: stop the download cleanly (verified chunks kept for
    // a resume, Leave sent) rather than dying mid-write.
    let cancel = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let signals_handle = signals.handle();
    let (sig_tx, sig_rx) = bounded::<i32>(4);
    let flag = Arc::clone(&cancel);
    let sig_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                flag.store(true, Ordering::SeqCst);
                let _ = sig_tx.try_send(sig);
            }
        })?;
    let stop_signals = move || {
        signals_handle.close();
        let _ = sig_thread.join();
    };
    let node = Node::start(cfg, Vec::new(), None)?;
    println!(
        "serving chunks on {} while downloading {}",
        node.local_addr(),
        a.name
    );
    let opts = DownloadOptions {
        pipeline_depth: a.pipeline.max(1),
        ..DownloadOptions::default()
    };
    // The bar redraws one stderr line in place: only on a terminal, and not
    // with -v, whose log lines on the same stream would break it up.
    let bar_on = std::io::stderr().is_terminal() && !a.verbose;
    let mut bar = |p: &Progress| {
        if bar_on {
            eprint!("\r{}\x1b[K", repl::progress_line(p, BAR_WIDTH));
            let _ = std::io::stderr().flush();
        }
    };
    let result = node.download_cancellable(&a.name, &a.dir, &opts, Some(&cancel), &mut bar);
    if bar_on {
        eprint!("\r\x1b[K");
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            node.leave();
            stop_signals();
            return Err(e.into());
        }
    };
    print!("{}", repl::format_summary(&summary));
    if a.seed {
        println!("seeding {} on {} until Ctrl-C", a.name, node.local_addr());
        let _ = sig_rx.recv();
    }
    node.leave();
    stop_signals();
    Ok(())
}

/// Characters in the progress bar of `peer get`: the whole line then fits
/// an 80-column terminal, so redrawing it in place never wraps.
const BAR_WIDTH: usize = 20;

fn list_cmd(a: ListArgs) -> Result<(), BoxError> {
    let (files, truncated) = client::list_files(client::resolve(&a.tracker)?)?;
    if files.is_empty() {
        println!("no files on the network");
    }
    let w = files
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
    for f in &files {
        println!(
            "{:<w$}  {:>14} bytes  ({})",
            f.name,
            f.length,
            human(f.length as f64)
        );
    }
    if truncated {
        println!("(list cut short by the tracker)");
    }
    Ok(())
}

fn where_cmd(a: WhereArgs) -> Result<(), BoxError> {
    let l = client::locate(client::resolve(&a.tracker)?, &a.name, false)?;
    print!("{}", repl::format_locations(&l, a.width.max(1), None)?);
    Ok(())
}

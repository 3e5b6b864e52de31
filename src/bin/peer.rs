//! `peer`: share a folder, download files, look at the network. Parses
//! arguments, calls the library, prints results and the error chain.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use crossbeam_channel::{Receiver, bounded};
use p2pfs::chunks::{self, Bitmap};
use p2pfs::peer::download::{DownloadOptions, Progress, Summary};
use p2pfs::peer::node::{Node, NodeConfig};
use p2pfs::peer::ratelimit::parse_rate;
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
}

/// Download NAME into DIR/NAME from every peer that has chunks of it,
/// serving (and registering) each chunk as soon as it is verified. Resumes
/// from DIR/NAME.part if a previous attempt was interrupted. Exits 0 only
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let v = parse_rate(s)?;
    let v = u32::try_from(v).map_err(|_| format!("chunk size {s} is too large"))?;
    if !(chunks::MIN_CHUNK_SIZE..=chunks::MAX_CHUNK_SIZE).contains(&v) {
        return Err(format!("chunk size {s} is outside 1K..=16M"));
    }
    Ok(v)
}

/// "12.3 MiB" style sizes.
fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
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

/// Prints registration outcomes as the session reports them.
fn print_session_events(
    rx: Receiver<SessionEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("session-events".into())
        .spawn(move || {
            for ev in rx {
                match ev {
                    SessionEvent::Registered { accepted, refused } => {
                        if !accepted.is_empty() {
                            println!("registered {} file(s) with the tracker", accepted.len());
                        }
                        for (name, why) in refused {
                            println!("refused by the tracker: {name}: {why}");
                        }
                    }
                    SessionEvent::Disconnected(why) => {
                        println!("tracker connection lost ({why}); reconnecting")
                    }
                    SessionEvent::Reconnected => {
                        println!("reconnected to the tracker; files registered again")
                    }
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
    let tty = std::io::stderr().is_terminal();
    let mut bar = |p: &Progress| {
        if tty {
            eprint!("\r{}", progress_line(p));
            let _ = std::io::stderr().flush();
        }
    };
    let result = node.download(&a.name, &a.dir, &opts, &mut bar);
    if tty {
        eprint!("\r\x1b[K");
    }
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            node.leave();
            return Err(e.into());
        }
    };
    print_summary(&summary);
    if a.seed {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        println!("seeding {} on {} until Ctrl-C", a.name, node.local_addr());
        wait_for_signal(&mut signals);
    }
    node.leave();
    Ok(())
}

fn progress_line(p: &Progress) -> String {
    let frac = if p.total_bytes == 0 {
        1.0
    } else {
        p.done_bytes as f64 / p.total_bytes as f64
    };
    let width = 30;
    let filled = (frac * width as f64).round() as usize;
    format!(
        "[{}{}] {:5.1}%  {} / {}  {}/s  {} source(s)  ",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width)),
        frac * 100.0,
        human(p.done_bytes as f64),
        human(p.total_bytes as f64),
        human(p.rate),
        p.active_sources
    )
}

fn print_summary(s: &Summary) {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    println!(
        "downloaded {}: {} ({} bytes) in {:.2} s, {}/s; {} chunks, {} resumed from disk, {} duplicate(s)",
        s.name,
        human(s.length as f64),
        s.length,
        secs,
        human(s.bytes_downloaded as f64 / secs),
        s.chunks_total,
        s.chunks_resumed,
        s.duplicates
    );
    for src in &s.sources {
        let mut line = format!(
            "  from {}: {} ({} bytes), {} chunk(s)",
            src.addr,
            human(src.bytes as f64),
            src.bytes,
            src.chunks
        );
        if src.hash_failures > 0 {
            line.push_str(&format!(", {} failed verification", src.hash_failures));
        }
        if let Some(why) = &src.dropped {
            line.push_str(&format!(", dropped: {why}"));
        }
        println!("{line}");
    }
    println!("saved to {}", s.path.display());
}

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
    println!(
        "{}: {} bytes ({}), {} chunks of {}, {} source(s)",
        l.name,
        l.length,
        human(l.length as f64),
        l.chunk_count,
        human(f64::from(l.chunk_size)),
        l.sources.len()
    );
    for s in &l.sources {
        let b = Bitmap::from_bytes(l.chunk_count, &s.have)
            .map_err(|e| format!("bad bitmap from the tracker: {e}"))?;
        println!(
            "  {:<22} {:>6}/{:<6} {}",
            s.addr.to_string(),
            b.count_ones(),
            l.chunk_count,
            b.render(a.width.max(1))
        );
    }
    Ok(())
}

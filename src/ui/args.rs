//! The command lines of `peer` and `tracker`: argh types, option parsers,
//! and [`from_env`], which prints `--help` with its placeholders filled in
//! (see [`super::help`]).
//!
//! Doc comments below are the help texts. They never state a limit or a
//! default as a number: they name the constant of [`crate::limits`] as
//! `{NAME}`, and the defaults are those constants too.
//!
//! Owns: option names, their parsing and defaults. Calls `limits`,
//! `peer::ratelimit::parse_rate` and [`super::help`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::{FromArgs, TopLevelCommand};

use super::help::{self, fill};
use crate::limits;
use crate::peer::ratelimit::parse_rate;

/// p2pfs peer: share a folder with the network, download files from many
/// peers at once (rarest chunks first, every chunk SHA-1 verified), and see
/// which peer holds which chunks.
#[derive(FromArgs)]
pub struct PeerArgs {
    #[argh(subcommand)]
    pub cmd: PeerCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum PeerCommand {
    Share(ShareArgs),
    Get(GetArgs),
    List(ListArgs),
    Where(WhereArgs),
}

impl PeerArgs {
    /// Whether -v asks for per-request logs.
    pub fn verbose(&self) -> bool {
        match &self.cmd {
            PeerCommand::Share(a) => a.verbose,
            PeerCommand::Get(a) => a.verbose,
            _ => false,
        }
    }
}

/// Share every regular file under DIR (or only the FILEs named) and serve
/// chunks until Ctrl-C or SIGTERM, then leave the network. Names on the
/// network are paths relative to DIR with '/' separators. Hashes are cached
/// in DIR/.p2pfs-hashes so a restart does not re-hash unchanged files.
/// On a terminal it also reads commands: list, where FILE, get FILE
/// (downloads into DIR in the background), status, help, quit; FILE is a
/// name, "a name" in quotes, or #NUMBER from the last list. The chunk server accepts at most {PEER_MAX_CONNECTIONS} connections
/// at once, {PEER_MAX_PER_IP} from one IP address (others get Busy), and
/// closes a connection that sends no Hello within {HELLO_TIMEOUT} or no
/// request for {PEER_IDLE_TIMEOUT}.
#[derive(FromArgs)]
#[argh(subcommand, name = "share")]
pub struct ShareArgs {
    /// tracker address, host:port; several, comma-separated (A,B,C), are
    /// each registered with and asked, and any one of them is enough
    #[argh(option)]
    pub tracker: String,
    /// folder to share
    #[argh(option)]
    pub dir: PathBuf,
    /// only these files (paths inside DIR)
    #[argh(positional)]
    pub files: Vec<PathBuf>,
    /// address to serve chunks on (default 0.0.0.0:0, a free port)
    #[argh(option, default = "SocketAddr::from(([0, 0, 0, 0], 0))")]
    pub listen: SocketAddr,
    /// upload limit in bytes per second for all uploads together, e.g.
    /// 500K, 10M, 1G (powers of 1024; default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub upload_limit: Option<u64>,
    /// chunk size, e.g. 256K, 1M (default {DEFAULT_CHUNK_SIZE};
    /// {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})
    #[argh(
        option,
        from_str_fn(parse_chunk_size),
        default = "limits::DEFAULT_CHUNK_SIZE"
    )]
    pub chunk_size: u32,
    /// log every request (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// do not read commands even on a terminal (use it when running in the
    /// background with `&`, where reading the terminal would stop the peer)
    #[argh(switch)]
    pub no_prompt: bool,
}

/// Download NAME into DIR/NAME from every peer that has chunks of it,
/// serving (and registering) each chunk as soon as it is verified. Resumes
/// from DIR/.p2pfs/ if a previous attempt was interrupted. Exits 0 only
/// when the whole file is verified and in place.
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
pub struct GetArgs {
    /// name of the file on the network
    #[argh(positional)]
    pub name: String,
    /// tracker address, host:port; several, comma-separated (A,B,C), are
    /// each registered with and asked, and any one of them is enough
    #[argh(option)]
    pub tracker: String,
    /// folder to download into
    #[argh(option)]
    pub dir: PathBuf,
    /// address to serve chunks on (default 0.0.0.0:0, a free port)
    #[argh(option, default = "SocketAddr::from(([0, 0, 0, 0], 0))")]
    pub listen: SocketAddr,
    /// upload limit in bytes per second, e.g. 500K, 10M (default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub upload_limit: Option<u64>,
    /// after downloading, keep serving the file until Ctrl-C or SIGTERM
    #[argh(switch)]
    pub seed: bool,
    /// requests kept in flight per source (default {PIPELINE_DEPTH})
    #[argh(option, default = "limits::PIPELINE_DEPTH")]
    pub pipeline: usize,
    /// log which chunk came from which peer (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    pub verbose: bool,
}

/// List every file on the network with its size.
#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// tracker address, host:port; several, comma-separated (A,B,C), are
    /// each registered with and asked, and any one of them is enough
    #[argh(option)]
    pub tracker: String,
}

/// Show each peer holding NAME and a map of the chunks it has
/// ('#' all held, '+' some, '.' none, one character per chunk or group).
#[derive(FromArgs)]
#[argh(subcommand, name = "where")]
pub struct WhereArgs {
    /// name of the file on the network
    #[argh(positional)]
    pub name: String,
    /// tracker address, host:port; several, comma-separated (A,B,C), are
    /// each registered with and asked, and any one of them is enough
    #[argh(option)]
    pub tracker: String,
    /// width of the chunk map in characters (default {WHERE_MAP_WIDTH})
    #[argh(option, default = "limits::WHERE_MAP_WIDTH")]
    pub width: usize,
}

/// The p2pfs tracker: keeps track of which peers hold which chunks of which
/// files. Peers register their files and chunks over one persistent
/// connection each; a peer that leaves, disconnects or stays silent for
/// {TRACKER_IDLE_TIMEOUT} (peers send a keepalive every
/// {KEEPALIVE_INTERVAL}) is forgotten with all its chunks. A new connection
/// must send its Hello within {HELLO_TIMEOUT}. At most --max-connections
/// connections are open at once, and at most --max-per-ip from one IPv4
/// address (or IPv6 /64); others get Error{Busy} and are closed. Stop it
/// with Ctrl-C or SIGTERM. Set RUST_LOG=debug for per-request logs.
#[derive(FromArgs)]
pub struct TrackerArgs {
    /// address to listen on (default 0.0.0.0:{DEFAULT_TRACKER_PORT}; port 0
    /// picks a free port)
    #[argh(
        option,
        default = "SocketAddr::from(([0, 0, 0, 0], limits::DEFAULT_TRACKER_PORT))"
    )]
    pub listen: SocketAddr,
    /// seconds of silence after which a connection is dropped (default
    /// {TRACKER_IDLE_TIMEOUT_SECS})
    #[argh(option, default = "limits::TRACKER_IDLE_TIMEOUT.as_secs()")]
    pub idle_timeout: u64,
    /// most connections open at once (default {TRACKER_MAX_CONNECTIONS})
    #[argh(option, default = "limits::TRACKER_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// most connections open at once from one IP address (default
    /// {TRACKER_MAX_PER_IP})
    #[argh(option, default = "limits::TRACKER_MAX_PER_IP")]
    pub max_per_ip: usize,
}

/// A chunk size option: a size as for rates ("256K", "1M"), within the
/// protocol's limits.
pub fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let v = parse_rate(s)?;
    let v = u32::try_from(v).map_err(|_| format!("chunk size {s} is too large"))?;
    if !(limits::MIN_CHUNK_SIZE..=limits::MAX_CHUNK_SIZE).contains(&v) {
        return Err(format!(
            "chunk size {s} is outside {}..={}",
            help::size(limits::MIN_CHUNK_SIZE),
            help::size(limits::MAX_CHUNK_SIZE)
        ));
    }
    Ok(v)
}

/// The trackers of `--tracker A,B,C`: each element trimmed, in the order
/// given, repeats dropped. An empty element (`A,,B`, a trailing comma) is
/// refused, naming the option.
pub fn tracker_list(s: &str) -> Result<Vec<String>, String> {
    let mut v: Vec<String> = Vec::new();
    for t in s.split(',').map(str::trim) {
        if t.is_empty() {
            return Err(format!(
                "--tracker {s:?}: an empty address in the list (give HOST:PORT, or several \
                 separated by commas)"
            ));
        }
        if !v.iter().any(|x| x == t) {
            v.push(t.to_owned());
        }
    }
    Ok(v)
}

/// What parsing a command line gave instead of arguments: text for stdout
/// (help, asked for) or for stderr (a usage error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlyExit {
    Help(String),
    Usage(String),
}

/// Parses `args` (without the program name) for the command `cmd`, with
/// the placeholders of help and error texts filled in.
pub fn parse<T: TopLevelCommand>(cmd: &str, args: &[&str]) -> Result<T, EarlyExit> {
    T::from_args(&[cmd], args).map_err(|e| match e.status {
        Ok(()) => EarlyExit::Help(fill(&e.output)),
        Err(()) => EarlyExit::Usage(format!(
            "{}\nRun {cmd} --help for more information.",
            fill(&e.output)
        )),
    })
}

/// Parses the process's own command line. On `--help` or a usage error,
/// prints it (help to stdout, an error to stderr) and returns the exit
/// code the program should end with.
pub fn from_env<T: TopLevelCommand>() -> Result<T, ExitCode> {
    let mut strings = Vec::new();
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(s) => strings.push(s),
            Err(a) => {
                eprintln!("Invalid utf8: {}", a.to_string_lossy());
                return Err(ExitCode::FAILURE);
            }
        }
    }
    let Some((first, rest)) = strings.split_first() else {
        eprintln!("No program name, argv is empty");
        return Err(ExitCode::FAILURE);
    };
    let cmd = std::path::Path::new(first)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(first);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match parse(cmd, &rest) {
        Ok(args) => Ok(args),
        Err(EarlyExit::Help(text)) => Err(match outln!("{text}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if super::out::is_stdout_closed(&e) => ExitCode::from(super::out::CLOSED_STATUS),
            Err(_) => ExitCode::FAILURE,
        }),
        Err(EarlyExit::Usage(text)) => {
            eprintln!("{text}");
            Err(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every help text of both programs, raw (as argh prints it) and filled.
    fn all_help() -> Vec<(String, String)> {
        let mut v = Vec::new();
        let mut add = |raw: argh::EarlyExit| v.push((raw.output.clone(), fill(&raw.output)));
        for sub in [&[][..], &["share"], &["get"], &["list"], &["where"]] {
            let mut a: Vec<&str> = sub.to_vec();
            a.push("--help");
            add(PeerArgs::from_args(&["peer"], &a).err().expect("help"));
        }
        add(TrackerArgs::from_args(&["tracker"], &["--help"])
            .err()
            .expect("help"));
        v
    }

    #[test]
    fn every_placeholder_in_the_help_is_known_and_shows_its_value() {
        let mut used = Vec::new();
        for (raw, filled) in all_help() {
            if let Err(unknown) = help::try_fill(&raw) {
                panic!("unknown placeholders {unknown:?} in:\n{raw}");
            }
            for (name, value) in help::placeholders() {
                if raw.contains(&format!("{{{name}}}")) {
                    used.push(name);
                    assert!(
                        filled.contains(&value),
                        "{name} = {value} not in:\n{filled}"
                    );
                    let braced = format!("{{{value}}}");
                    assert!(!filled.contains(&braced), "{braced} in:\n{filled}");
                }
            }
            assert!(
                !filled.contains("{PEER") && !filled.contains("{TRACKER"),
                "{filled}"
            );
        }
        for (name, _) in help::placeholders() {
            assert!(used.contains(&name), "placeholder {name} is never used");
        }
    }

    #[test]
    fn the_help_shows_the_constants() {
        let share = all_help().remove(1).1;
        for needle in [
            format!("at most {} connections", limits::PEER_MAX_CONNECTIONS),
            format!("{} from one IP address", limits::PEER_MAX_PER_IP),
            format!("no Hello within {} s", limits::HELLO_TIMEOUT.as_secs()),
            format!("no request for {} s", limits::PEER_IDLE_TIMEOUT.as_secs()),
            "(default 1M;".to_owned(),
        ] {
            assert!(
                share
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(&needle),
                "{needle:?} not in:\n{share}"
            );
        }
        let tracker = all_help().pop().unwrap().1;
        for needle in [
            format!("(default {})", limits::TRACKER_MAX_PER_IP),
            format!("(default {})", limits::TRACKER_MAX_CONNECTIONS),
            format!("default 0.0.0.0:{}", limits::DEFAULT_TRACKER_PORT),
            format!("every {} s", limits::KEEPALIVE_INTERVAL.as_secs()),
        ] {
            assert!(
                tracker
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(&needle),
                "{needle:?} not in:\n{tracker}"
            );
        }
    }

    #[test]
    fn help_goes_to_stdout_and_errors_to_stderr_with_the_hint() {
        match parse::<PeerArgs>("peer", &["get", "--help"]) {
            Err(EarlyExit::Help(t)) => {
                assert!(t.contains(&format!("(default {})", limits::PIPELINE_DEPTH)))
            }
            _ => panic!("help expected"),
        }
        match parse::<PeerArgs>("peer", &["frobnicate"]) {
            Err(EarlyExit::Usage(t)) => {
                assert!(t.ends_with("Run peer --help for more information."))
            }
            _ => panic!("usage error expected"),
        }
        assert!(parse::<PeerArgs>("peer", &["list", "--tracker", "x:1"]).is_ok());
    }

    #[test]
    fn tracker_lists_are_split_trimmed_and_deduplicated() {
        assert_eq!(tracker_list("a:1"), Ok(vec!["a:1".to_owned()]));
        assert_eq!(
            tracker_list("a:1, b:2,a:1 ,c:3"),
            Ok(vec!["a:1".to_owned(), "b:2".to_owned(), "c:3".to_owned()])
        );
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2", " , "] {
            let e = tracker_list(bad).unwrap_err();
            assert!(e.contains("empty address"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn chunk_sizes_are_checked_against_the_limits() {
        assert_eq!(parse_chunk_size("1M"), Ok(1 << 20));
        let e = parse_chunk_size("512").unwrap_err();
        assert!(e.contains("outside 1K..=16M"), "{e}");
        assert!(parse_chunk_size("32M").is_err());
    }
}

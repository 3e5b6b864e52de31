//! The command lines of `peer` and `tracker`: argh types, option parsers,
//! and [`from_env`], which prints `--help` with its placeholders filled in
//! (see [`super::help`]).
//!
//! Doc comments below are the help texts. They never state a limit or a
//! default as a number: they name the constant of [`crate::limits`] as
//! `{NAME}`, and the defaults are those constants too.
//!
//! Owns: option names, their parsing (sizes, rates, addresses) and
//! defaults. Calls `limits`, [`super::help`] and [`super::out`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use argh::{ArgsInfo, FromArgs, TopLevelCommand};

use super::help::{self, fill};
use crate::chunks::ContentId;
use crate::limits;

/// p2pfs peer: share a folder with the network, download files from many
/// peers at once (rarest chunks first, every chunk SHA-1 verified), and see
/// which peer holds which chunks.
#[derive(FromArgs, ArgsInfo)]
pub struct PeerArgs {
    #[argh(subcommand)]
    pub cmd: PeerCommand,
}

#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand)]
pub enum PeerCommand {
    Share(ShareArgs),
    Get(GetArgs),
    List(ListArgs),
    Where(WhereArgs),
    Keygen(KeygenArgs),
    Completions(CompletionsArgs),
}

impl PeerArgs {
    /// The --key-file option of the command, if it has one and it is given.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        match &self.cmd {
            PeerCommand::Share(a) => a.key_file.as_deref(),
            PeerCommand::Get(a) => a.key_file.as_deref(),
            PeerCommand::List(a) => a.key_file.as_deref(),
            PeerCommand::Where(a) => a.key_file.as_deref(),
            PeerCommand::Keygen(_) | PeerCommand::Completions(_) => None,
        }
    }

    /// Whether -v asks for per-request logs.
    pub fn verbose(&self) -> bool {
        match &self.cmd {
            PeerCommand::Share(a) => a.verbose,
            PeerCommand::Get(a) => a.verbose,
            _ => false,
        }
    }

    /// Whether -q asks for errors only.
    pub fn quiet(&self) -> bool {
        match &self.cmd {
            PeerCommand::Share(a) => a.quiet,
            PeerCommand::Get(a) => a.quiet,
            _ => false,
        }
    }

    /// Where log records go instead of stderr, if asked.
    pub fn log_file(&self) -> Option<&std::path::Path> {
        match &self.cmd {
            PeerCommand::Share(a) => a.log_file.as_deref(),
            PeerCommand::Get(a) => a.log_file.as_deref(),
            _ => None,
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
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "share")]
pub struct ShareArgs {
    /// tracker address: host or host:port (port {DEFAULT_TRACKER_PORT} if
    /// none is given), or several separated by commas (A,B,C), each
    /// registered with and asked; default $P2PFS_TRACKER
    #[argh(option)]
    pub tracker: Option<String>,
    /// folder to share
    #[argh(option)]
    pub dir: PathBuf,
    /// network key file of a private network (made by `peer keygen`;
    /// default: the file named by $P2PFS_KEY_FILE; without one, an open
    /// network in clear)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
    /// only these files (paths inside DIR)
    #[argh(positional)]
    pub files: Vec<PathBuf>,
    /// address to serve chunks on: a port, an IP address, or both
    /// (default 0.0.0.0:0, a free port)
    #[argh(
        option,
        from_str_fn(parse_listen),
        default = "SocketAddr::from(([0, 0, 0, 0], 0))"
    )]
    pub listen: SocketAddr,
    /// upload limit in bytes per second for all uploads together, e.g.
    /// 500K, 10M, 1G (powers of 1024; default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub upload_limit: Option<u64>,
    /// download limit in bytes per second for all downloads started at
    /// the prompt together, e.g. 500K, 10M, 1G (powers of 1024; default
    /// unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub download_limit: Option<u64>,
    /// chunk size, e.g. 256K, 1M (default {DEFAULT_CHUNK_SIZE};
    /// {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})
    #[argh(
        option,
        from_str_fn(parse_chunk_size),
        default = "limits::DEFAULT_CHUNK_SIZE"
    )]
    pub chunk_size: u32,
    /// log every connection and every chunk sent, and list each file shared
    /// (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// write the log records of -v to FILE (appended) instead of the
    /// terminal
    #[argh(option)]
    pub log_file: Option<PathBuf>,
    /// print errors only (for scripts)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// do not read commands even on a terminal (use it when running in the
    /// background with `&`, where reading the terminal would stop the peer)
    #[argh(switch)]
    pub no_prompt: bool,
}

/// Download each NAME into DIR/NAME from every peer that has chunks of it,
/// serving (and registering) each chunk as soon as it is verified. A NAME
/// ending in '/' is a folder: every file on the network under it, saved at
/// the same path under DIR. Several files download at once (--jobs).
/// Resumes from DIR/.p2pfs/ if a previous attempt was interrupted, and
/// skips files already complete in DIR (checked by their hashes). Exits 0
/// only when every file is verified and in place.
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "get")]
pub struct GetArgs {
    /// names of files on the network; NAME/ for every file under a folder
    #[argh(positional)]
    pub names: Vec<String>,
    /// tracker address: host or host:port (port {DEFAULT_TRACKER_PORT} if
    /// none is given), or several separated by commas (A,B,C), each
    /// registered with and asked; default $P2PFS_TRACKER
    #[argh(option)]
    pub tracker: Option<String>,
    /// folder to download into
    #[argh(option)]
    pub dir: PathBuf,
    /// network key file of a private network (made by `peer keygen`;
    /// default: the file named by $P2PFS_KEY_FILE; without one, an open
    /// network in clear)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
    /// address to serve chunks on: a port, an IP address, or both
    /// (default 0.0.0.0:0, a free port)
    #[argh(
        option,
        from_str_fn(parse_listen),
        default = "SocketAddr::from(([0, 0, 0, 0], 0))"
    )]
    pub listen: SocketAddr,
    /// upload limit in bytes per second, e.g. 500K, 10M (default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub upload_limit: Option<u64>,
    /// download limit in bytes per second for all sources together, e.g.
    /// 500K, 10M (default unlimited)
    #[argh(option, from_str_fn(parse_rate))]
    pub download_limit: Option<u64>,
    /// the content id the file must have (40 hex digits, as `peer list
    /// --long` shows): other content under NAME is refused and nothing is
    /// written
    #[argh(option, from_str_fn(parse_content_id))]
    pub id: Option<ContentId>,
    /// after downloading, keep serving the file until Ctrl-C or SIGTERM
    #[argh(switch)]
    pub seed: bool,
    /// requests kept in flight per source (default {PIPELINE_DEPTH})
    #[argh(option, default = "limits::PIPELINE_DEPTH")]
    pub pipeline: usize,
    /// log which chunk came from which peer (RUST_LOG works too); on the
    /// terminal this replaces the progress bar, unless --log-file is given
    #[argh(switch, short = 'v')]
    pub verbose: bool,
    /// write the log records of -v to FILE (appended) instead of the
    /// terminal, keeping the progress bar
    #[argh(option)]
    pub log_file: Option<PathBuf>,
    /// print errors only: no progress bar, no summary (for scripts)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// files downloaded at once when several are asked (default
    /// {BATCH_JOBS}, at most {MAX_BATCH_JOBS})
    #[argh(option, default = "limits::BATCH_JOBS")]
    pub jobs: usize,
    /// print JSON on stdout instead of text: one object per file when
    /// several are asked (as each ends), then one summary object (see README)
    #[argh(switch)]
    pub json: bool,
}

/// List the files on the network with their sizes: every file, or only
/// those under PREFIX (whole path components: "photos" or "photos/" lists
/// photos/a.jpg, not photosx/a.jpg).
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// list only the files under this folder
    #[argh(positional)]
    pub prefix: Option<String>,
    /// tracker address: host or host:port (port {DEFAULT_TRACKER_PORT} if
    /// none is given), or several separated by commas (A,B,C), each
    /// registered with and asked; default $P2PFS_TRACKER
    #[argh(option)]
    pub tracker: Option<String>,
    /// network key file of a private network (made by `peer keygen`;
    /// default: the file named by $P2PFS_KEY_FILE; without one, an open
    /// network in clear)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
    /// also show each file's content id (for `get --id`), chunk size and
    /// sources
    #[argh(switch, short = 'l')]
    pub long: bool,
    /// print one JSON object per file and line instead (fields in README)
    #[argh(switch)]
    pub json: bool,
}

/// Show each peer holding NAME and a map of the chunks it has
/// ('#' all held, '+' some, '.' none, one character per chunk or group).
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "where")]
pub struct WhereArgs {
    /// name of the file on the network
    #[argh(positional)]
    pub name: String,
    /// tracker address: host or host:port (port {DEFAULT_TRACKER_PORT} if
    /// none is given), or several separated by commas (A,B,C), each
    /// registered with and asked; default $P2PFS_TRACKER
    #[argh(option)]
    pub tracker: Option<String>,
    /// width of the chunk map in characters (default {WHERE_MAP_WIDTH})
    #[argh(option, default = "limits::WHERE_MAP_WIDTH")]
    pub width: usize,
    /// print one JSON object per source and line instead (fields in README)
    #[argh(switch)]
    pub json: bool,
    /// network key file of a private network (made by `peer keygen`;
    /// default: the file named by $P2PFS_KEY_FILE; without one, an open
    /// network in clear)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
}

/// Write a new random network key to FILE (created readable by you only;
/// an existing file is never overwritten). Copy FILE to every machine of
/// the private network and start the tracker and every peer with
/// --key-file FILE (or P2PFS_KEY_FILE=FILE): only holders of the key can
/// then connect, and every connection is encrypted.
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "keygen")]
pub struct KeygenArgs {
    /// where to write the key
    #[argh(positional)]
    pub file: PathBuf,
}

/// Print shell completions for peer (or tracker) built from the same
/// definitions as --help. Bash: peer completions bash >
/// ~/.local/share/bash-completion/completions/peer; zsh: peer completions
/// zsh > ~/.zfunc/_peer (with ~/.zfunc in fpath); fish: peer completions
/// fish > ~/.config/fish/completions/peer.fish. Add "tracker" for the
/// tracker's.
#[derive(FromArgs, ArgsInfo)]
#[argh(subcommand, name = "completions")]
pub struct CompletionsArgs {
    /// the shell: bash, zsh or fish
    #[argh(positional)]
    pub shell: String,
    /// the program to complete: peer (the default) or tracker
    #[argh(positional, default = "String::from(\"peer\")")]
    pub program: String,
}

/// The p2pfs tracker: keeps track of which peers hold which chunks of which
/// files. Peers register their files and chunks over one persistent
/// connection each; a peer that leaves, disconnects or stays silent for
/// {TRACKER_IDLE_TIMEOUT} (peers send a keepalive every
/// {KEEPALIVE_INTERVAL}) is forgotten with all its chunks. A new connection
/// must send its Hello within {HELLO_TIMEOUT}. At most --max-connections
/// connections are open at once, and at most --max-per-ip from one IPv4
/// address (or IPv6 /64); others get Error{Busy} and are closed. Stop it
/// with Ctrl-C or SIGTERM.
#[derive(FromArgs, ArgsInfo)]
pub struct TrackerArgs {
    /// address to listen on: a port, an IP address, or both (default
    /// 0.0.0.0:{DEFAULT_TRACKER_PORT}; port 0 picks a free port)
    #[argh(
        option,
        from_str_fn(parse_tracker_listen),
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
    /// network key file of a private network (made by `peer keygen`;
    /// default: the file named by $P2PFS_KEY_FILE; without one, an open
    /// network in clear)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
    /// also serve a live web dashboard, JSON (/api/files) and Prometheus
    /// metrics (/metrics) over HTTP on ADDR, e.g.
    /// 127.0.0.1:{DEFAULT_DASHBOARD_PORT} (a port alone binds loopback; off
    /// unless given). It shows every file name, size, holder address and
    /// chunk map to whoever can reach it, without the network key
    #[argh(option, from_str_fn(parse_http_listen))]
    pub http: Option<SocketAddr>,
    /// log every connection, registration and request (RUST_LOG works too)
    #[argh(switch, short = 'v')]
    pub verbose: bool,
}

/// A number of bytes: digits, maybe with a decimal part, and an optional
/// unit K, M or G (powers of 1024; "KB", "KiB" and lower case too).
/// `Err` says what is wrong in words, without naming the option.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ if number.is_empty() => return Err("is not a number".into()),
        _ => return Err(format!("has an unknown unit {unit:?} (use K, M or G)")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err("is not a number".into());
    }
    let too_large = || "is too large".to_owned();
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(mult).ok_or_else(too_large)?;
    if !frac.is_empty() {
        // Exact: the fraction times the unit must be a whole number of bytes.
        let digits = u32::try_from(frac.len()).map_err(|_| too_large())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(too_large)?;
        let f: u128 = frac.parse().map_err(|_| too_large())?;
        let part = f * u128::from(mult);
        if !part.is_multiple_of(scale) {
            return Err("is not a whole number of bytes".into());
        }
        let part = u64::try_from(part / scale).map_err(|_| too_large())?;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// The upload or download limit: bytes per second ("500K", "10M",
/// "1.5M/s"); 0 means unlimited.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    parse_bytes(t).map_err(|why| {
        format!(
            "the rate {s:?} {why}: give bytes per second such as 500K, 10M or 1G \
             (0 for unlimited)"
        )
    })
}

/// A content id (`--id`): 40 hex digits.
pub fn parse_content_id(s: &str) -> Result<ContentId, String> {
    ContentId::parse(s.trim()).ok_or_else(|| {
        format!(
            "the content id {s:?} is not 40 hex digits: give the id `peer list --long` shows, \
             such as 7ee56b99404705e8bc4bf98e582b92588daa2c55"
        )
    })
}

/// A chunk size option: a size ("256K", "1M", "1.5M"), within the
/// protocol's limits.
pub fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let range = || {
        format!(
            "from {} to {}",
            help::size(limits::MIN_CHUNK_SIZE),
            help::size(limits::MAX_CHUNK_SIZE)
        )
    };
    let v = parse_bytes(s).map_err(|why| {
        format!(
            "the chunk size {s:?} {why}: give a size such as 256K or 1M, {}",
            range()
        )
    })?;
    match u32::try_from(v) {
        Ok(v) if (limits::MIN_CHUNK_SIZE..=limits::MAX_CHUNK_SIZE).contains(&v) => Ok(v),
        _ => Err(format!(
            "the chunk size {s:?} is outside the range allowed, {}",
            range()
        )),
    }
}

/// A listening address: "17005" (a port, on every address), "10.0.0.1"
/// (an address, port `port`), or both ("10.0.0.1:17005", "[::1]:17005").
fn listen_addr(s: &str, port: u16) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(p) = t.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = t.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => Err(format!(
            "{s:?} is not a port, an IP address or IP:PORT (e.g. 7001, 0.0.0.0:7001)"
        )),
    }
}

/// `--listen` of a peer: an IP address alone gets a free port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    listen_addr(s, 0)
}

/// `--listen` of the tracker: an IP address alone gets the default port.
pub fn parse_tracker_listen(s: &str) -> Result<SocketAddr, String> {
    listen_addr(s, limits::DEFAULT_TRACKER_PORT)
}

/// `--http` of the tracker: a port alone binds loopback (the dashboard
/// shows the whole registry, so reaching it from elsewhere must be asked
/// for with an address); an IP address alone gets the suggested port.
pub fn parse_http_listen(s: &str) -> Result<SocketAddr, String> {
    match s.trim().parse::<u16>() {
        Ok(p) => Ok(SocketAddr::from(([127, 0, 0, 1], p))),
        Err(_) => listen_addr(s, limits::DEFAULT_DASHBOARD_PORT),
    }
}

/// The tracker's address as `host:port`: `--tracker` if given, else
/// `$P2PFS_TRACKER`; a host without a port gets the default port. Host
/// names are resolved later, when connecting.
pub fn tracker_address(given: Option<&str>) -> Result<String, Usage> {
    let env = std::env::var(TRACKER_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(t) = given.map(str::to_owned).or(env) else {
        return Err(Usage(format!(
            "no tracker given: use --tracker HOST[:PORT] or set {TRACKER_ENV}"
        )));
    };
    let t = t.trim();
    if t.parse::<SocketAddr>().is_ok() {
        return Ok(t.to_owned());
    }
    let port = limits::DEFAULT_TRACKER_PORT;
    if let Ok(ip) = t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    match t.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() && p.parse::<u16>().is_ok() => Ok(t.to_owned()),
        Some(_) => Err(Usage(format!(
            "--tracker {t:?}: expected HOST or HOST:PORT, e.g. 192.168.1.10 or tracker.lan:7000"
        ))),
        None if t.is_empty() => Err(Usage("--tracker is empty".into())),
        None => Ok(format!("{t}:{port}")),
    }
}

/// The environment variable that gives `--tracker` when it is left out.
pub const TRACKER_ENV: &str = "P2PFS_TRACKER";

/// A command line that cannot be used, found after argh parsed it (exit
/// status 2, like argh's own usage errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The trackers: `--tracker` if given, else `$P2PFS_TRACKER`, either one
/// address or several separated by commas (`A,B,C`), each element as
/// [`tracker_address`] reads it (a host without a port gets the default
/// port), in the order given, repeats dropped. An empty element (`A,,B`,
/// a trailing comma) is refused.
pub fn tracker_addresses(given: Option<&str>) -> Result<Vec<String>, Usage> {
    let env = std::env::var(TRACKER_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(list) = given.map(str::to_owned).or(env) else {
        return Err(Usage(format!(
            "no tracker given: use --tracker HOST[:PORT][,HOST[:PORT]...] or set {TRACKER_ENV}"
        )));
    };
    let mut v: Vec<String> = Vec::new();
    for t in list.split(',').map(str::trim) {
        if t.is_empty() {
            return Err(Usage(format!(
                "--tracker {list:?}: an empty address in the list (give HOST[:PORT], or \
                 several separated by commas)"
            )));
        }
        let a = tracker_address(Some(t))?;
        if !v.contains(&a) {
            v.push(a);
        }
    }
    Ok(v)
}

/// What parsing a command line gave instead of arguments: text for stdout
/// (help or the version, asked for) or for stderr (a usage error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlyExit {
    Help(String),
    Usage(String),
}

/// Switches of either program (they take no value); every other word
/// starting with `-` is an option followed by its value.
const SWITCHES: &[&str] = &[
    "--help",
    "-h",
    "--version",
    "-V",
    "-v",
    "--verbose",
    "-q",
    "--quiet",
    "--seed",
    "--no-prompt",
    "--json",
    "--long",
    "-l",
];

/// Subcommands of `peer`, for the "Run peer SUB --help" hint.
const SUBCOMMANDS: &[&str] = &["share", "get", "list", "where", "completions"];

/// Parses `args` (without the program name) for the command `cmd`, with
/// the placeholders of help and error texts filled in. Beyond argh:
/// `-h` is `--help`, `--version` (or `-V`) prints the version, and a
/// usage error points at the help of the subcommand it concerns.
pub fn parse<T: TopLevelCommand>(cmd: &str, args: &[&str]) -> Result<T, EarlyExit> {
    let mut words: Vec<&str> = Vec::with_capacity(args.len());
    let mut sub: Option<&str> = None;
    let mut i = 0;
    while i < args.len() {
        let w = args[i];
        i += 1;
        if w == "--" {
            words.extend_from_slice(&args[i - 1..]);
            break;
        }
        match w {
            "-h" => words.push("--help"),
            "--version" | "-V" => {
                return Err(EarlyExit::Help(format!(
                    "{cmd} {}",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            _ if w.starts_with('-') && w.len() > 1 && !SWITCHES.contains(&w) => {
                // An option and its value, which may start with '-'.
                words.push(w);
                if let Some(v) = args.get(i) {
                    words.push(v);
                    i += 1;
                }
            }
            _ => {
                if sub.is_none() && !w.starts_with('-') && SUBCOMMANDS.contains(&w) {
                    sub = Some(w);
                }
                words.push(w);
            }
        }
    }
    T::from_args(&[cmd], &words).map_err(|e| match e.status {
        Ok(()) => EarlyExit::Help(fill(&e.output)),
        Err(()) => {
            let which = match sub {
                Some(s) if cmd == "peer" => format!("{cmd} {s}"),
                _ => cmd.to_owned(),
            };
            EarlyExit::Usage(format!(
                "{}\nRun {which} --help for more information.",
                fill(&e.output)
            ))
        }
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
            Err(ExitCode::from(super::USAGE_STATUS))
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
        for sub in [
            &[][..],
            &["share"],
            &["get"],
            &["list"],
            &["where"],
            &["keygen"],
        ] {
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

    /// `peer list --long -h` took `-h` as the value of `--long`: every
    /// switch a help text shows (an option line with no `<value>`) must be
    /// in `SWITCHES`, or the word after it is swallowed as its value.
    #[test]
    fn every_switch_in_the_help_is_known_as_a_switch() {
        let help = |args: &[&str]| match parse::<PeerArgs>("peer", args) {
            Err(EarlyExit::Help(t)) => t,
            _ => panic!("help expected for {args:?}"),
        };
        let mut texts: Vec<String> = SUBCOMMANDS
            .iter()
            .map(|sub| help(&[sub, "--help"]))
            .collect();
        texts.push(help(&["--help"]));
        if let Err(EarlyExit::Help(t)) = parse::<TrackerArgs>("tracker", &["--help"]) {
            texts.push(t);
        }
        let mut seen = 0;
        for text in &texts {
            let usage = text.lines().next().unwrap_or("");
            // `[-l]` or `[--json]` in the usage line: a switch (an option
            // with a value reads `[--tracker <tracker>]`).
            for group in usage.split('[').skip(1) {
                let w = group.split(']').next().unwrap_or("");
                if !w.starts_with('-') || w.contains(' ') || w == "--" {
                    continue;
                }
                // A short switch's long name is on its line of Options.
                let long = text
                    .lines()
                    .map(str::trim_start)
                    .find_map(|l| l.strip_prefix(&format!("{w}, ")))
                    .and_then(|rest| rest.split_whitespace().next());
                for w in std::iter::once(w).chain(long) {
                    assert!(SWITCHES.contains(&w), "switch {w:?} missing from SWITCHES");
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 10,
            "only {seen} switches found: the help layout changed"
        );
    }

    /// Issue 14: `--version`, `-h` and `-V` were rejected, and a missing
    /// option of `peer share` pointed at `peer --help`.
    #[test]
    fn h_version_and_the_hint_of_the_subcommand() {
        let help = |args: &[&str]| match parse::<PeerArgs>("peer", args) {
            Err(EarlyExit::Help(t)) => t,
            _ => panic!("help expected for {args:?}"),
        };
        assert_eq!(help(&["-h"]), help(&["--help"]));
        assert_eq!(help(&["share", "-h"]), help(&["share", "--help"]));
        assert!(help(&["share", "-h"]).contains("--dir"));
        for v in [&["--version"][..], &["-V"], &["get", "--version"]] {
            assert_eq!(help(v), format!("peer {}", env!("CARGO_PKG_VERSION")));
        }
        match parse::<TrackerArgs>("tracker", &["-V"]) {
            Err(EarlyExit::Help(t)) => assert!(t.starts_with("tracker ")),
            _ => panic!("version expected"),
        }
        match parse::<PeerArgs>("peer", &["share", "--tracker", "t:1"]) {
            Err(EarlyExit::Usage(t)) => {
                assert!(t.contains("--dir"), "{t}");
                assert!(
                    t.ends_with("Run peer share --help for more information."),
                    "{t}"
                );
            }
            _ => panic!("usage error expected"),
        }
        // A value that looks like a switch is still a value.
        let a = parse::<PeerArgs>("peer", &["get", "f", "--dir", "-h", "--tracker", "-V"]);
        match a {
            Ok(PeerArgs {
                cmd: PeerCommand::Get(g),
            }) => {
                assert_eq!(g.dir, PathBuf::from("-h"));
                assert_eq!(g.tracker.as_deref(), Some("-V"));
            }
            _ => panic!("parsed expected"),
        }
    }

    /// Issue 14: `--tracker 127.0.0.1` and `--listen 17005` were refused.
    #[test]
    fn addresses_take_the_forms_people_type() {
        let port = limits::DEFAULT_TRACKER_PORT;
        for (given, want) in [
            ("127.0.0.1", format!("127.0.0.1:{port}")),
            ("127.0.0.1:9", "127.0.0.1:9".to_owned()),
            ("localhost", format!("localhost:{port}")),
            ("tracker.lan:7100", "tracker.lan:7100".to_owned()),
            ("::1", format!("[::1]:{port}")),
            ("[::1]", format!("[::1]:{port}")),
            ("[::1]:9", "[::1]:9".to_owned()),
        ] {
            assert_eq!(tracker_address(Some(given)), Ok(want), "{given}");
        }
        assert!(tracker_address(Some("host:port")).is_err());
        assert!(tracker_address(Some("")).is_err());
        assert_eq!(parse_listen("17005"), Ok("0.0.0.0:17005".parse().unwrap()));
        assert_eq!(parse_listen("10.0.0.1"), Ok("10.0.0.1:0".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:5"), Ok("[::1]:5".parse().unwrap()));
        assert_eq!(
            parse_tracker_listen("127.0.0.1"),
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        assert!(parse_listen("nope").unwrap_err().contains("not a port"));
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn tracker_lists_are_split_trimmed_and_deduplicated() {
        let port = limits::DEFAULT_TRACKER_PORT;
        let list = |s: &str| tracker_addresses(Some(s)).map_err(|u| u.0);
        assert_eq!(list("a:1"), Ok(vec!["a:1".to_owned()]));
        assert_eq!(
            list("a:1, b,a:1 ,127.0.0.1,c:3"),
            Ok(vec![
                "a:1".to_owned(),
                format!("b:{port}"),
                format!("127.0.0.1:{port}"),
                "c:3".to_owned()
            ])
        );
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2", " , "] {
            let e = list(bad).unwrap_err();
            assert!(
                e.contains("empty address") || e.contains("empty"),
                "{bad:?}: {e}"
            );
        }
        assert!(list("a:1,host:port").unwrap_err().contains("host:port"));
    }

    #[test]
    fn chunk_sizes_are_checked_against_the_limits() {
        assert_eq!(parse_chunk_size("1M"), Ok(1 << 20));
        assert_eq!(parse_chunk_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_chunk_size("256KiB"), Ok(256 << 10));
        let e = parse_chunk_size("512").unwrap_err();
        assert!(
            e.contains("outside the range allowed, from 1K to 16M"),
            "{e}"
        );
        assert!(parse_chunk_size("32M").is_err());
    }

    #[test]
    fn rates_accept_plain_suffixed_and_decimal() {
        for (s, v) in [
            ("1000", 1000),
            ("0", 0),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("10M", 10 << 20),
            ("10MB", 10 << 20),
            ("10MiB/s", 10 << 20),
            ("1G", 1 << 30),
            (" 3g ", 3 << 30),
            ("007", 7),
            ("1.5M", 3 << 19),
            (".5K", 512),
            ("17179869183G", 17179869183 << 30),
        ] {
            assert_eq!(parse_rate(s), Ok(v), "{s:?}");
        }
    }

    /// Issue 14: `--chunk-size 1.5M` was answered with a message about
    /// rates, and `--upload-limit abc` with "unknown suffix 'C'".
    #[test]
    fn bad_sizes_and_rates_are_refused_in_their_own_words() {
        for bad in [
            "", "  ", "K", "abc", "-1", "+5", "1T", "1e6", "1..5M", "0.3K",
        ] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.starts_with(&format!("the rate {bad:?} ")), "{bad:?}: {e}");
            assert!(e.contains("such as 500K, 10M or 1G"), "{bad:?}: {e}");
            let e = parse_chunk_size(bad).unwrap_err();
            assert!(e.starts_with(&format!("the chunk size {bad:?} ")), "{e}");
            assert!(!e.contains("rate") && !e.contains("per second"), "{e}");
        }
        assert_eq!(
            parse_rate("abc").unwrap_err(),
            "the rate \"abc\" is not a number: give bytes per second such as 500K, 10M or \
             1G (0 for unlimited)"
        );
        assert!(parse_rate("1T").unwrap_err().contains("unknown unit \"T\""));
        assert!(
            parse_rate("0.3K")
                .unwrap_err()
                .contains("not a whole number of bytes")
        );
        for big in ["18446744073709551616", "17179869184G"] {
            assert!(parse_rate(big).unwrap_err().contains("too large"), "{big}");
        }
    }
}

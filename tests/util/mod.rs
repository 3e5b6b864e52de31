//! Shared helpers for the integration tests (ripgrep's tests/util.rs style):
//! timeouts around every test, a raw protocol client, scratch folders,
//! child processes that are always killed, and the swarm pieces the peer
//! tests share (an in-process tracker and nodes, download options, the
//! `peer` binary).
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks;
use p2pfs::peer::download::{DownloadOptions, Summary};
use p2pfs::peer::node::{Node, NodeConfig};
use p2pfs::peer::share::{self, SharedFile};
use p2pfs::tracker::{Tracker, TrackerConfig};
use p2pfs::wire::{self, FileEntry, Have, Message};

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `secs` seconds, so a hang is a failure and never a stuck CI.
pub fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        })
        .expect("spawn test body");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic.
            match h.join() {
                Ok(_) => unreachable!(),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test timed out after {secs} s"),
    }
}

/// Polls `cond` every 20 ms until it is true or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A bare protocol client: connect, Hello, request/reply.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects without greeting.
    pub fn raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Connects and exchanges Hello.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::raw(addr);
        assert_eq!(
            c.request(&Message::Hello {
                version: wire::PROTOCOL_VERSION
            }),
            Message::Hello {
                version: wire::PROTOCOL_VERSION
            }
        );
        c
    }

    pub fn send(&mut self, m: &Message) {
        wire::write_message(&mut self.stream, m).expect("send");
    }

    pub fn recv(&mut self) -> Option<Message> {
        wire::read_message(&mut self.reader).expect("recv")
    }

    /// Reads until the server closes; returns what arrived.
    pub fn recv_result(&mut self) -> Result<Option<Message>, wire::WireError> {
        wire::read_message(&mut self.reader)
    }

    pub fn request(&mut self, m: &Message) -> Message {
        self.send(m);
        self.recv().expect("reply")
    }

    /// True once the server has closed the connection (EOF or reset).
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

/// A fresh scratch folder under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "p2pfs-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (so a failing test is reproducible).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A child process that is killed (and reaped) when dropped, whatever
/// happens in the test.
pub struct Proc {
    pub child: Child,
    pub name: String,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut p = Proc {
            child,
            name: name.into(),
            stdout: None,
        };
        p.stdout = p.child.stdout.take().map(BufReader::new);
        p
    }

    /// A child spawned by the test itself (its stdout piped), killed on
    /// drop like the others.
    pub fn adopt(name: &str, mut child: Child) -> Proc {
        let stdout = child.stdout.take().map(BufReader::new);
        Proc {
            child,
            name: name.into(),
            stdout,
        }
    }

    /// Reads stdout lines until one contains `needle`; returns that line.
    /// Bounded by the test's own timeout.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let out = self.stdout.as_mut().expect("stdout");
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).expect("read stdout");
            assert!(n > 0, "{} exited before printing {needle:?}", self.name);
            if line.contains(needle) {
                return line.trim_end().to_owned();
            }
        }
    }

    /// The rest of stdout (after the process exits).
    pub fn rest_of_stdout(&mut self) -> String {
        let mut s = String::new();
        if let Some(out) = self.stdout.as_mut() {
            let _ = out.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.name);
    }

    /// Waits up to `secs` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {secs} s",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the address out of a line like "... listening on 127.0.0.1:1234".
pub fn addr_in(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.trim_matches(|c| c == ',' || c == ')').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

// ---- Swarms: tracker, nodes, files ------------------------------------------

/// The chunk size every swarm test shares with: 64 KiB, so a file of a few
/// MiB has dozens of chunks to spread over its sources.
pub const CHUNK: u32 = 64 * 1024;

/// An in-process tracker with default settings on a free loopback port.
pub fn tracker() -> Tracker {
    tracker_with(TrackerConfig::default())
}

/// An in-process tracker with `cfg`, always on a free loopback port
/// (whatever `cfg.listen` says).
pub fn tracker_with(cfg: TrackerConfig) -> Tracker {
    Tracker::start(TrackerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    })
    .expect("tracker")
}

/// Starts an in-process node sharing `files`, listening on a free loopback
/// port, and waits until it is registered with `tracker` (so the tracker
/// already lists it when this returns). Takes the tracker's address, not a
/// [`Tracker`], so a tracker run as a separate process works too.
fn start_node(tracker: SocketAddr, files: Vec<SharedFile>, limit: Option<u64>, what: &str) -> Node {
    let mut cfg = NodeConfig::new(tracker);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.upload_limit = limit;
    let n = Node::start(cfg, files, None).expect("node");
    wait_until(10, &format!("{what} registered"), || n.is_connected());
    n
}

/// A node sharing every file in `dir` (hashed in [`CHUNK`]s), with an
/// optional upload limit in bytes per second; registered when it returns.
pub fn seed(tracker: SocketAddr, dir: &Path, limit: Option<u64>) -> Node {
    let scan = share::scan_dir(dir, &[], CHUNK, &|_, _| {}).expect("scan");
    start_node(tracker, scan.files, limit, "seed")
}

/// A lying source: shares `name` in `dir` announced with the hashes of
/// `data` while the file holds other bytes of the same length. Built
/// without the scan, so it does not check its own bytes before sending
/// (an honest `peer share` would notice and refuse): what a broken or
/// malicious peer does. No upload limit; registered when it returns.
pub fn liar(tracker: SocketAddr, dir: &Path, name: &str, data: &[u8]) -> Node {
    let p = write(dir, name, &pattern(data.len(), 99));
    let g = chunks::Geometry::new(data.len() as u64, CHUNK).expect("geometry");
    let hashes = data.chunks(CHUNK as usize).map(chunks::sha1).collect();
    let file = fs::File::open(&p).expect("open liar's file");
    let f = SharedFile::complete(name.into(), p, file, g, hashes);
    start_node(tracker, vec![f], None, "liar")
}

/// A node that shares nothing yet (it serves what it downloads), with no
/// upload limit; registered when it returns.
pub fn downloader(tracker: SocketAddr) -> Node {
    start_node(tracker, Vec::new(), None, "downloader")
}

/// Download options for tests: short I/O timeouts and retries so a dead
/// source costs seconds, not the defaults' minutes, and 15 s without
/// progress before giving up (generous: nothing is meant to stall, and a
/// loaded 2-core machine must not make a healthy download give up).
pub fn opts() -> DownloadOptions {
    DownloadOptions {
        io_timeout: Duration::from_secs(3),
        give_up_after: Duration::from_secs(15),
        retry_after: Duration::from_millis(300),
        ..DownloadOptions::default()
    }
}

/// Writes `data` to `dir/name`, creating the folders `name` runs through;
/// returns the path.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    p
}

/// The content id of `data` cut into [`CHUNK`]s, as [`seed`] shares it.
pub fn id_of(data: &[u8]) -> chunks::ContentId {
    let hashes: Vec<_> = data.chunks(CHUNK as usize).map(chunks::sha1).collect();
    chunks::ContentId::compute(data.len() as u64, CHUNK, &hashes)
}

/// Every path under `dir`, sorted (empty if it does not exist): to show
/// that something wrote nothing at all.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Bytes the download summed up in `s` kept from the source at `addr`
/// (0 if it never served).
pub fn from(s: &Summary, addr: SocketAddr) -> u64 {
    s.sources
        .iter()
        .filter(|x| x.addr == addr)
        .map(|x| x.bytes)
        .sum()
}

/// A complete file as a peer registers it with the tracker: `data` cut
/// into [`CHUNK`]s with their true hashes, every chunk held. For fake
/// sources that speak the protocol by hand.
pub fn entry(name: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        name: name.into(),
        length: data.len() as u64,
        chunk_size: CHUNK,
        hashes: data.chunks(CHUNK as usize).map(chunks::sha1).collect(),
        have: Have::All,
    }
}

// ---- The `peer` binary ------------------------------------------------------

/// The `peer` binary this `cargo test` built, logging warnings only (so
/// its stdout is just what the tests read).
pub fn peer_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peer"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs `peer share` on `dir` against the tracker at `t`, on a free
/// loopback port, with [`CHUNK`]-sized chunks and `--upload-limit limit`
/// ("0" for none, "1M", ...). Returns once it is serving and registered,
/// with the address it serves chunks on.
pub fn start_share(t: SocketAddr, dir: &Path, limit: &str) -> (Proc, SocketAddr) {
    let chunk_size = format!("{}K", CHUNK / 1024);
    let mut p = Proc::spawn(
        "peer share",
        peer_bin()
            .args(["share", "--tracker", &t.to_string()])
            .args(["--listen", "127.0.0.1:0", "--chunk-size", &chunk_size])
            .args(["--upload-limit", limit, "--dir"])
            .arg(dir),
    );
    let addr = addr_in(&p.wait_line("serving chunks on"));
    p.wait_line("registered");
    (p, addr)
}

/// `peer get NAME` into `dir` against the tracker at `t`, serving on a free
/// loopback port; not started yet.
pub fn get_command(t: SocketAddr, name: &str, dir: &Path) -> Command {
    let mut c = peer_bin();
    c.args(["get", name, "--tracker", &t.to_string()])
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(dir);
    c
}

/// Runs [`get_command`] to the end; its exit status and output.
pub fn peer_get(t: SocketAddr, name: &str, dir: &Path) -> Output {
    get_command(t, name, dir).output().unwrap()
}

/// The bytes of a download's saved bitmap (`KEY.part.have`) in the layout
/// that `p2pfs::peer::download::partfile` documents: magic, content
/// identity, bitmap, name, name length.
pub fn saved_bitmap(id: &[u8; 20], bitmap: &[u8], name: &str) -> Vec<u8> {
    let mut have = b"P2PFHAVE".to_vec();
    have.extend_from_slice(id);
    have.extend_from_slice(bitmap);
    have.extend_from_slice(name.as_bytes());
    have.extend_from_slice(&(name.len() as u16).to_be_bytes());
    have
}

/// Leaves in `dir` what an interrupted download of `name` leaves: its
/// `.part` and its saved bitmap in the work folder. The identity is zeros:
/// enough to be listed as unfinished, never enough to be trusted for a
/// resume.
pub fn plant_unfinished(dir: &Path, name: &str) {
    let part = p2pfs::peer::download::part_path(dir, name);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, b"left by an earlier run").unwrap();
    let have = saved_bitmap(&[0; 20], &[0], name);
    std::fs::write(p2pfs::peer::download::have_path(dir, name), have).unwrap();
}

/// Connects from `src` (a loopback address other than 127.0.0.1), so that
/// per-address caps see another host, optionally with a small receive
/// buffer (set before connecting, so the window stays small). std has no
/// bind-before-connect, so this goes through socket2.
pub fn connect_from(
    src: std::net::Ipv4Addr,
    dst: SocketAddr,
    rcvbuf: Option<usize>,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if !dst.is_ipv4() {
        return Err(std::io::Error::other("IPv4 only"));
    }
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&SockAddr::from(SocketAddr::from((src, 0))))?;
    sock.connect_timeout(&SockAddr::from(dst), Duration::from_secs(5))?;
    let s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

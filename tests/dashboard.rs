//! The tracker's dashboard (`tracker --http`) during real swarms: its JSON
//! says what `peer list` and `peer where` say (as text, and field for field
//! as `--json`), /metrics is Prometheus text
//! whose counters move as the swarm works, hostile HTTP clients leave the
//! tracker serving peers, and a real browser (headless Chromium, where it
//! is installed) draws every holder and a chunk grid that fills up.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks::Bitmap;
use p2pfs::tracker::TrackerConfig;
use serde_json::Value;
use util::*;

/// A name a page must escape: angle brackets, quotes, an ampersand, UTF-8.
const NAME: &str = "climbing <photo> \"été\" & co.jpg";

/// The name percent-encoded for a URL path.
fn encoded(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- A small HTTP client on std ------------------------------------------

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Sends `raw` (a whole request) and reads the answer until the server
/// closes, within 10 s.
fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw)?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    exchange(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path)
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}\n{}", r.head, r.body);
    assert!(
        r.head.contains("Content-Type: application/json"),
        "{}",
        r.head
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

// ---- Prometheus text -------------------------------------------------------

/// Parses Prometheus text: every line a comment or `name{labels} value`;
/// panics on anything else. Returns each sample by its full series name.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let words: Vec<&str> = line.split_whitespace().collect();
            if matches!(words.get(1), Some(&"HELP") | Some(&"TYPE")) {
                assert!(
                    words.len() >= 3 && is_name(words[2]),
                    "bad comment: {line:?}"
                );
            }
            if words.get(1) == Some(&"TYPE") {
                assert!(
                    matches!(words.get(3), Some(&"gauge") | Some(&"counter")),
                    "{line:?}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{line:?}"));
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(is_name(k), "bad label name: {line:?}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
                name
            }
        };
        assert!(is_name(name), "bad metric name: {line:?}");
        out.insert(series.to_owned(), value);
    }
    out
}

fn metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("text/plain; version=0.0.4"), "{}", r.head);
    parse_metrics(&r.body)
}

// ---- A swarm: tracker process, sharer, two downloaders ---------------------

struct Swarm {
    tracker: SocketAddr,
    http: SocketAddr,
    sharer: SocketAddr,
    chunks: u32,
    // Dropped (killed) last: the tracker outlives the peers.
    peers: Vec<Proc>,
    _tracker: Proc,
    // Removed after every process is gone, not under a peer still
    // writing into it.
    scratch: Scratch,
}

/// Starts the tracker with `--http 127.0.0.1:0` and a sharer of a
/// `chunks`-chunk file limited to `limit` a second.
fn swarm(tag: &str, chunks: u32, limit: &str) -> Swarm {
    let s = Scratch::new(tag);
    let mut t = Proc::spawn(
        "tracker",
        Command::new(env!("CARGO_BIN_EXE_tracker"))
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]),
    );
    let tracker = addr_in(&t.wait_line("tracker listening on"));
    let http = addr_in(
        &t.wait_line("dashboard on")
            .replace("http://", "")
            .replace('/', " "),
    );
    write(
        &s.sub("a"),
        NAME,
        &pattern(chunks as usize * CHUNK as usize, 7),
    );
    let (sharer_proc, sharer) = start_share(tracker, &s.sub("a"), limit);
    Swarm {
        scratch: s,
        tracker,
        http,
        sharer,
        chunks,
        peers: vec![sharer_proc],
        _tracker: t,
    }
}

impl Swarm {
    /// Starts `peer get NAME --seed` into a new folder; returns the
    /// endpoint it serves on.
    fn downloader(&mut self, n: u32) -> SocketAddr {
        let dir = self.scratch.sub(&format!("get{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = get_command(self.tracker, NAME, &dir);
        cmd.arg("--seed");
        let mut p = Proc::spawn("peer get", &mut cmd);
        let addr = addr_in(&p.wait_line("serving chunks on"));
        self.peers.push(p);
        addr
    }

    /// `/api/files/NAME`'s holders: endpoint -> (chunks, have).
    fn holders(&self) -> HashMap<String, (u64, String)> {
        let d = get_json(self.http, &format!("/api/files/{}", encoded(NAME)));
        d["holders"]
            .as_array()
            .expect("holders")
            .iter()
            .map(|h| {
                let ep = h["endpoint"].as_str().unwrap().to_owned();
                (
                    ep,
                    (
                        h["chunks"].as_u64().unwrap(),
                        h["have"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect()
    }

    fn peer(&self, args: &[&str]) -> String {
        let out = peer_bin()
            .args(args)
            .args(["--tracker", &self.tracker.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "peer {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The chunk map of a hex bitmap, as `where` draws it one chunk a
/// character ('#' held, '.' not).
fn map_of(have_hex: &str, chunks: u32) -> String {
    let bytes: Vec<u8> = (0..have_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&have_hex[i..i + 2], 16).unwrap())
        .collect();
    let b = Bitmap::from_bytes(chunks, &bytes).expect("bitmap");
    (0..chunks)
        .map(|i| if b.get(i) { '#' } else { '.' })
        .collect()
}

#[test]
fn api_says_what_list_and_where_say_and_metrics_move() {
    with_timeout(120, || {
        let mut sw = swarm("dash-api", 48, "1M");
        let m0 = metrics(sw.http);
        assert_eq!(m0["p2pfs_tracker_peers"], 1.0);
        assert_eq!(m0["p2pfs_tracker_files"], 1.0);
        assert_eq!(m0["p2pfs_tracker_chunks"], 48.0);
        let registers0 = m0
            .get("p2pfs_tracker_requests_total{kind=\"ChunkRegister\"}")
            .copied()
            .unwrap_or(0.0);
        let g1 = sw.downloader(1);
        let g2 = sw.downloader(2);
        // Everyone complete: the registry is still, so the answers compare.
        let want: Vec<String> = [sw.sharer, g1, g2].iter().map(|a| a.to_string()).collect();
        wait_until(60, "both downloads complete on the tracker", || {
            let h = sw.holders();
            want.iter()
                .all(|ep| h.get(ep).is_some_and(|(c, _)| *c == 48))
        });

        // /api/files is `peer list`.
        let files = get_json(sw.http, "/api/files");
        let list = sw.peer(&["list"]);
        let f = &files["files"][0];
        assert_eq!(files["files"].as_array().unwrap().len(), 1, "{files}");
        assert_eq!(f["name"], NAME);
        let length = 48 * u64::from(CHUNK);
        assert_eq!(f["length"].as_u64(), Some(length));
        assert_eq!(f["chunk_size"].as_u64(), Some(u64::from(CHUNK)));
        assert_eq!(f["chunk_count"].as_u64(), Some(48));
        assert_eq!(
            (f["sources"].as_u64(), f["complete_sources"].as_u64()),
            (Some(3), Some(3))
        );
        let id = p2pfs::chunks::ContentId::compute(
            length,
            CHUNK,
            &pattern(length as usize, 7)
                .chunks(CHUNK as usize)
                .map(p2pfs::chunks::sha1)
                .collect::<Vec<_>>(),
        );
        assert_eq!(f["id"].as_str(), Some(id.to_string().as_str()));
        let line = list.lines().next().unwrap();
        assert!(
            line.starts_with(NAME) && line.contains(&format!(" {length} bytes")),
            "{list}"
        );
        // ... and `peer list --json`, field for field.
        let listed: Vec<Value> = sw
            .peer(&["list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(listed, files["files"].as_array().unwrap().clone());

        // /api/files/NAME is `peer where NAME`: the same endpoints, counts
        // and chunk maps.
        let holders = sw.holders();
        let where_ = sw.peer(&["where", NAME, "--width", "48"]);
        let mut seen = 0;
        for l in where_.lines().skip(1) {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (count, map) = (w[1].split('/').next().unwrap(), w[2]);
            let (c, have) = &holders[w[0]];
            assert_eq!(count.parse::<u64>().ok(), Some(*c), "{l}");
            assert_eq!(map, map_of(have, sw.chunks), "{l}");
            seen += 1;
        }
        assert_eq!(seen, holders.len(), "{where_}");
        assert_eq!(seen, 3);
        let d = get_json(sw.http, &format!("/api/files/{}", encoded(NAME)));
        // ... and `peer where --json`: every field it has, for every source;
        // the API adds two of its own.
        let mut located: Vec<Value> = sw
            .peer(&["where", NAME, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut api: Vec<Value> = d["holders"].as_array().unwrap().clone();
        for h in &mut api {
            let o = h.as_object_mut().unwrap();
            assert!(o.remove("registered_at").is_some_and(|v| v.is_u64()));
            assert!(o.remove("chunks_per_s").is_some_and(|v| v.is_number()));
        }
        let by_endpoint = |v: &Value| v["endpoint"].as_str().unwrap().to_owned();
        located.sort_by_key(by_endpoint);
        api.sort_by_key(by_endpoint);
        assert_eq!(located, api);
        assert_eq!(d["file"], files["files"][0]);
        for h in d["holders"].as_array().unwrap() {
            assert_eq!(h["name"], NAME);
            assert_eq!(h["id"].as_str(), Some(id.to_string().as_str()));
            assert_eq!(h["complete"], true);
            assert!(h["registered_at"].as_u64().is_some() && h["chunks_per_s"].is_number());
        }

        // Counters moved with the swarm.
        let m1 = metrics(sw.http);
        assert_eq!(m1["p2pfs_tracker_peers"], 3.0);
        let registers1 = m1["p2pfs_tracker_requests_total{kind=\"ChunkRegister\"}"];
        // (a download may also tell some chunks in a Register rather than one by one)
        assert!(
            registers1 >= registers0 + 48.0,
            "{registers0} -> {registers1}"
        );
        assert!(m1["p2pfs_tracker_requests_total{kind=\"Locate\"}"] >= 2.0);
        assert!(m1["p2pfs_http_requests_total{route=\"api\"}"] >= 3.0);
        assert!(m1["p2pfs_tracker_registry_bytes"] > m0["p2pfs_tracker_registry_bytes"]);

        // What is not there.
        assert_eq!(get(sw.http, "/api/files/nothing%20here").status, 404);
        assert_eq!(get(sw.http, "/api/files/..%2Fx").status, 400);
        assert_eq!(get(sw.http, "/api/files/50%").status, 400);
        assert_eq!(get(sw.http, "/nowhere").status, 404);
        let post = request(sw.http, "POST", "/api/files");
        assert_eq!(post.status, 405);
        assert!(post.head.contains("Allow: GET, HEAD"));
        let head = request(sw.http, "HEAD", "/");
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        let page = get(sw.http, "/");
        assert!(page.body.contains("<script src=\"/app.js\""));
        assert!(
            page.head
                .contains("Content-Security-Policy: default-src 'none'")
        );
    });
}

/// A client that sends a request head a byte a second and never finishes
/// it. Returns how long the server kept the connection open (None: it
/// never closed it within 40 bytes).
fn slowloris(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'));
    for _ in 0..40 {
        if c.write_all(&[*head.next()?]).is_err() {
            return Some(start.elapsed());
        }
        let mut b = [0u8; 256];
        match c.read(&mut b) {
            Ok(_) => return Some(start.elapsed()), // closed, or answered 503
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Raises this process's soft limit on open files towards its hard limit
/// (at most 4096) and returns the limit then in force. The test holds 1,000
/// client sockets while the tracker, in this same process, accepts them and
/// a peer downloads: more than the usual default soft limit of 1024.
fn raise_fd_limit() -> libc::rlim_t {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed
    // by pointer, which lives on this stack for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let want = r.rlim_max.min(4096);
        if r.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = want;
            }
        }
    }
    r.rlim_cur
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn hostile_http_leaves_the_tracker_serving_peers() {
    let fd_limit = raise_fd_limit();
    with_timeout(120, move || {
        let s = Scratch::new("dash-hostile");
        let t = tracker_with(TrackerConfig {
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..TrackerConfig::default()
        });
        let (ta, ha) = (t.local_addr(), t.http_addr().expect("http"));
        let before = threads();

        // Huge headers: refused with 431 and closed, not read forever.
        let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1 << 20));
        let started = Instant::now();
        match exchange(ha, &huge) {
            Ok(r) => assert_eq!(r.status, 431, "{}", r.head),
            // The server may close before reading all we send (a reset).
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(200));
        assert_eq!(exchange(ha, many.as_bytes()).unwrap().status, 431);

        // Slowloris: more connections than workers, a byte a second each,
        // until the server closes the connection; how long that took.
        let slow: Vec<thread::JoinHandle<Option<Duration>>> = (0..8)
            .map(|_| thread::spawn(move || slowloris(ha)))
            .collect();
        // Let the workers take them before the flood.
        thread::sleep(Duration::from_millis(500));
        // A thousand connections at once, sending nothing (fewer only where
        // this process may not open that many files; it says so).
        let flood = usize::try_from(fd_limit.saturating_sub(300)).map_or(1000, |n| n.min(1000));
        if flood < 1000 {
            eprintln!(
                "NOTICE: `ulimit -n` is {fd_limit} (hard limit too): {flood} HTTP connections instead of 1,000"
            );
        }
        let idle: Vec<TcpStream> = (0..flood)
            .filter_map(|_| TcpStream::connect_timeout(&ha, Duration::from_secs(5)).ok())
            .collect();
        assert!(
            idle.len() >= flood * 9 / 10,
            "only {} connected",
            idle.len()
        );
        let grown = threads().saturating_sub(before);
        assert!(
            grown < 40,
            "{grown} more threads with 1,000 HTTP connections open"
        );

        // Meanwhile a peer registers, lists and downloads as usual.
        let data = pattern(40 * CHUNK as usize, 3);
        write(&s.sub("seed"), "f", &data);
        let started = Instant::now();
        let seed = seed(ta, &s.sub("seed"), None);
        let (files, _) = p2pfs::peer::client::list_files(ta).expect("list");
        assert_eq!(files.len(), 1);
        let d = downloader(ta);
        d.download("f", &s.sub("d"), &opts(), &mut |_| {})
            .expect("download");
        assert_eq!(std::fs::read(s.sub("d").join("f")).unwrap(), data);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "register + list + download took {took:?}"
        );

        // The slow clients were cut off at the request deadline, and the
        // dashboard answers again once the flood is gone.
        drop(idle);
        for h in slow {
            let held = h.join().unwrap();
            assert!(
                held.is_some_and(|d| d < Duration::from_secs(8)),
                "a slowloris client was kept for {held:?} (the request deadline is 3 s)"
            );
        }
        wait_until(10, "the dashboard answers again", || {
            exchange(ha, b"GET /api/files HTTP/1.1\r\n\r\n").is_ok_and(|r| r.status == 200)
        });
        let m = metrics(ha);
        assert!(
            m["p2pfs_http_dropped_total{reason=\"timeout\"}"] >= 1.0,
            "{m:?}"
        );
        assert!(m["p2pfs_http_requests_total{route=\"too_large\"}"] >= 2.0);
        drop((seed, d));
    });
}

/// The Chromium of Debian's package, if installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Loads `url` in headless Chromium (the page's script runs for a couple
/// of seconds of virtual time) and returns the DOM it built, or with
/// `screenshot`, saves a picture of the page there instead.
fn browse(chrome: &str, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .args([
        "--no-first-run",
        "--disable-extensions",
        "--virtual-time-budget=2500",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(p) => cmd
            .arg("--window-size=1600,900")
            .arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url} within 60 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// Held cells in the holders' grids (the legend's cells have no state).
fn held_cells(dom: &str) -> usize {
    dom.matches("data-state=\"held\"").count()
}

#[test]
fn a_browser_shows_every_holder_and_a_filling_chunk_grid() {
    let Some(chrome) = chromium() else {
        eprintln!(
            "NOTICE: chromium is not installed (Debian package `chromium`; .ci/run installs it): \
             the browser test of the dashboard did not run"
        );
        return;
    };
    with_timeout(120, move || {
        // 64 chunks from a sharer at 128 KiB/s: no copy can be complete
        // within 30 s (each chunk comes from the sharer once at least), so
        // two loads of the page fall inside the swarm even on a loaded
        // machine; the test ends after the second.
        let mut sw = swarm("dash-browser", 64, "128K");
        let g1 = sw.downloader(1);
        let g2 = sw.downloader(2);
        wait_until(30, "both downloaders hold a chunk", || {
            let h = sw.holders();
            [g1, g2].iter().all(|a| h.contains_key(&a.to_string()))
        });
        let profile = sw.scratch.sub("chromium");
        let first = browse(chrome, &profile, &format!("http://{}/", sw.http), None);
        let url = format!("http://{}/?file={}", sw.http, encoded(NAME));
        if let Ok(shot) = std::env::var("DASHBOARD_SCREENSHOT") {
            browse(chrome, &profile, &url, Some(Path::new(&shot)));
        }
        let second = browse(chrome, &profile, &url, None);
        let escaped = "climbing &lt;photo&gt; \"été\" &amp; co.jpg";
        for dom in [&first, &second] {
            assert!(
                dom.contains(escaped),
                "the file name is not on the page:\n{dom}"
            );
            assert!(
                !dom.contains("<photo>"),
                "a name was inserted as HTML:\n{dom}"
            );
            for ep in [sw.sharer, g1, g2] {
                assert!(
                    dom.contains(&format!("data-endpoint=\"{ep}\"")),
                    "holder {ep} is not on the page:\n{dom}"
                );
            }
            let cells = dom.matches("data-state=\"").count();
            assert!(cells >= 3 * 64, "{cells} cells for 3 holders of 64 chunks");
        }
        let (a, b) = (held_cells(&first), held_cells(&second));
        assert!(a >= 64, "the sharer's 64 held cells are missing ({a})");
        assert!(
            b > a,
            "the held cells did not grow between two loads: {a} then {b}"
        );
    });
}

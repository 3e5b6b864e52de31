//! Several trackers (issue 15): a peer given `--tracker A,B,C` registers
//! with each, asks each, and goes on through the others when trackers are
//! killed, unreachable or restarted. Everything on loopback, trackers on
//! port 0 (a restart reuses the port the first start got), every wait
//! bounded, every child killed on drop.

mod util;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::peer::node::{Node, NodeConfig};
use util::{
    CHUNK, Proc, Scratch, addr_in, opts, peer_bin, tracker, wait_until, with_timeout, write,
};

/// The documented bound (docs/reliability.md) for a restarted tracker to
/// list a sharer's files again: a dead control connection is noticed within
/// 1 s, and the next attempt comes at most one backoff step (5 s) after the
/// tracker is back.
const RELIST_BOUND: Duration = Duration::from_secs(10);

fn tracker_bin(listen: &str) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(
        "tracker",
        Command::new(env!("CARGO_BIN_EXE_tracker"))
            .env("RUST_LOG", "warn")
            .args(["--listen", listen]),
    );
    let addr = addr_in(&p.wait_line("listening on"));
    (p, addr)
}

/// `A,B,C`.
fn list(ts: &[SocketAddr]) -> String {
    ts.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// An address nothing listens on.
fn dead() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `peer share --tracker A,B,C` on `dir`, serving on a free loopback port;
/// returns once it is serving and has registered with `registered` of the
/// trackers (which ones it names).
fn share(
    ts: &[SocketAddr],
    dir: &Path,
    limit: &str,
    registered: usize,
) -> (Proc, SocketAddr, Vec<SocketAddr>) {
    let chunk_size = format!("{}K", CHUNK / 1024);
    let mut p = Proc::spawn(
        "peer share",
        peer_bin()
            .args(["share", "--tracker", &list(ts)])
            .args(["--listen", "127.0.0.1:0", "--chunk-size", &chunk_size])
            .args(["--upload-limit", limit, "--dir"])
            .arg(dir),
    );
    // The sessions may register before the serving line is printed: take
    // the lines in whatever order they come.
    let (mut addr, mut with) = (None, Vec::new());
    while addr.is_none() || with.len() < registered {
        let line = p.wait_line("");
        if line.contains("serving chunks on") {
            addr = Some(addr_in(&line));
        } else if line.starts_with("registered ") {
            let t = line.rsplit(' ').next().unwrap_or_default();
            with.push(
                t.parse()
                    .unwrap_or_else(|_| panic!("no tracker address in {line:?}")),
            );
        }
    }
    let addr = addr.expect("serving line");
    (p, addr, with)
}

fn peer(args: &[&str]) -> Output {
    peer_bin().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `peer list` against `ts` succeeds and shows `name`.
fn lists(ts: &[SocketAddr], name: &str) -> bool {
    let out = peer(&["list", "--tracker", &list(ts)]);
    out.status.success()
        && text(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")))
}

/// Whether `peer where name` against `ts` shows every one of `holders`.
fn shows(ts: &[SocketAddr], name: &str, holders: &[SocketAddr]) -> bool {
    let out = peer(&["where", name, "--tracker", &list(ts)]);
    let t = text(&out.stdout);
    out.status.success() && holders.iter().all(|h| t.contains(&h.to_string()))
}

fn kill(p: &mut Proc) {
    p.signal("KILL");
    p.wait_exit(10);
}

/// Three trackers, two sharers, a downloader. One tracker is killed
/// mid-download, a second sharer joins (so it can only be found through
/// the two trackers left), then a second tracker is killed: the download
/// completes byte-identical with chunks from the late sharer, `list` and
/// `where` still answer (naming the dead trackers on stderr), and the
/// first tracker, restarted, lists the file again within the documented
/// bound, with both sharers, through their own reconnects.
#[test]
fn downloads_and_listings_survive_two_of_three_trackers_dying() {
    with_timeout(150, || {
        let s = Scratch::new("multi-three");
        let data = util::pattern(2 << 20, 151);
        write(&s.sub("a"), "f", &data);
        write(&s.sub("b"), "f", &data);
        let (mut t1, a1) = tracker_bin("127.0.0.1:0");
        let (mut t2, a2) = tracker_bin("127.0.0.1:0");
        let (mut t3, a3) = tracker_bin("127.0.0.1:0");
        let all = [a1, a2, a3];

        // A alone could take 8 s (2 MiB at 256 KiB/s).
        let (_sa, a_addr, with) = share(&all, &s.path().join("a"), "256K", 3);
        let mut with = with;
        with.sort();
        let mut want = all.to_vec();
        want.sort();
        assert_eq!(with, want, "the sharer registered with each tracker");
        for t in all {
            assert!(lists(&[t], "f"), "{t} lists f on its own");
        }

        let mut cfg = NodeConfig::with_trackers(all.to_vec());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        let d = Arc::new(Node::start(cfg, Vec::new(), None).expect("node"));
        wait_until(10, "the downloader connected to all three", || {
            d.connected_trackers().len() == 3
        });
        let dir = s.sub("d");
        let h = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.download("f", &dir, &opts(), &mut |_| {}))
        };
        wait_until(30, "the download to start", || {
            d.share().get("f").is_some_and(|f| f.have_count() >= 3)
        });
        assert!(!h.is_finished());
        kill(&mut t1);
        let t1_down = Instant::now();

        // B starts after T1 died: only T2 and T3 know it.
        let (_sb, b_addr, with) = share(&all, &s.path().join("b"), "1M", 2);
        assert!(!with.contains(&a1), "{with:?}");
        let at_b = d.share().get("f").map_or(0, |f| f.have_count());
        wait_until(30, "a few more chunks", || {
            d.share()
                .get("f")
                .is_some_and(|f| f.have_count() >= at_b + 2)
        });
        let t2_mid_download = !h.is_finished();
        kill(&mut t2);

        let sum = h
            .join()
            .unwrap()
            .expect("the download finishes through the tracker left");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        let from_b = util::from(&sum, b_addr);
        println!(
            "download: {:.2} s (T2 killed before it ended: {t2_mid_download}), {} bytes from \
             the late sharer {b_addr}, {} from {a_addr}",
            sum.elapsed.as_secs_f64(),
            from_b,
            util::from(&sum, a_addr)
        );
        assert!(from_b > 0, "the sharer found only through T2/T3 was used");

        // Two of three down: list and where still answer, and say which
        // trackers were left out.
        let out = peer(&["list", "--tracker", &list(&all)]);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{e}");
        assert!(o.lines().any(|l| l.starts_with("f ")), "{o}");
        assert!(
            e.contains(&a1.to_string()) && e.contains(&a2.to_string()),
            "{e}"
        );
        assert!(!e.contains(&a3.to_string()), "{e}");
        assert!(
            shows(&all, "f", &[a_addr, b_addr, d.local_addr()]),
            "where shows both sharers and the downloader through T3"
        );

        // T1 comes back on its port; everyone registers again on their own.
        wait_until(10, "the port of T1 to be free", || {
            TcpListener::bind(a1).is_ok()
        });
        let (mut t1, again) = tracker_bin(&a1.to_string());
        assert_eq!(again, a1);
        let up = Instant::now();
        wait_until(20, "the restarted T1 lists f", || lists(&[a1], "f"));
        let relisted = up.elapsed();
        wait_until(
            20,
            "the restarted T1 knows both sharers and the downloader",
            || shows(&[a1], "f", &[a_addr, b_addr, d.local_addr()]),
        );
        println!(
            "T1 down {:.2} s; f listed by it again {:.2} s after its restart, every holder {:.2} s after",
            (up - t1_down).as_secs_f64(),
            relisted.as_secs_f64(),
            up.elapsed().as_secs_f64()
        );
        assert!(relisted < RELIST_BOUND, "{relisted:?}");

        // Nobody answering is an error, said clearly.
        kill(&mut t1);
        kill(&mut t3);
        let out = peer(&["list", "--tracker", &list(&all)]);
        let e = text(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{e}");
        assert!(e.contains("no tracker answers"), "{e}");
        for t in all {
            assert!(e.contains(&t.to_string()), "{e}");
        }
        if let Ok(d) = Arc::try_unwrap(d) {
            d.leave();
        }
    });
}

/// Every command takes a list with a dead tracker in it: `share` registers
/// with the live ones, `get` fetches and `get --seed` registers with each
/// live tracker, `where` answers; a dead tracker is named, not fatal.
#[test]
fn every_command_goes_on_with_a_dead_tracker_in_the_list() {
    with_timeout(90, || {
        let s = Scratch::new("multi-dead");
        let data = util::pattern(700_000, 152);
        write(&s.sub("a"), "f", &data);
        let (t1, t2) = (tracker(), tracker());
        let gone = dead();
        let ts = [gone, t1.local_addr(), t2.local_addr()];
        let (_sa, a_addr, _) = share(&ts, &s.path().join("a"), "0", 2);
        // A tracker nobody has registered with yet (just restarted, say),
        // first in the getter's list: it does not know f, the others do.
        let empty = tracker();
        let gts = [empty.local_addr(), gone, t1.local_addr(), t2.local_addr()];

        let mut g = Proc::spawn(
            "peer get --seed",
            peer_bin()
                .args(["get", "f", "--seed", "--tracker", &list(&gts)])
                .args(["--listen", "127.0.0.1:0", "--dir"])
                .arg(s.sub("g")),
        );
        let g_addr = addr_in(&g.wait_line("serving chunks on"));
        g.wait_line("seeding");
        assert_eq!(fs::read(s.path().join("g/f")).unwrap(), data);
        for t in [t1.local_addr(), t2.local_addr()] {
            wait_until(10, "the seeding getter listed by each live tracker", || {
                shows(&[t], "f", &[a_addr, g_addr])
            });
        }
        wait_until(
            10,
            "the seeding getter registered f with the empty tracker",
            || shows(&[empty.local_addr()], "f", &[g_addr]),
        );

        // $P2PFS_TRACKER takes a list too.
        let out = peer_bin()
            .env("P2PFS_TRACKER", list(&ts))
            .args(["list"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).lines().any(|l| l.starts_with("f ")));

        let out = peer(&["where", "f", "--tracker", &list(&ts)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&gone.to_string()));
        let o = text(&out.stdout);
        assert!(
            o.contains(&a_addr.to_string()) && o.contains(&g_addr.to_string()),
            "{o}"
        );

        // A name no live tracker knows is still "not found", not "no tracker".
        let out = peer(&["where", "nope", "--tracker", &list(&ts)]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("no tracker answers"),
            "{}",
            text(&out.stderr)
        );

        // An empty element is a usage error naming the option.
        let out = peer(&["list", "--tracker", &format!("{},", t1.local_addr())]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("empty address"),
            "{}",
            text(&out.stderr)
        );
        g.signal("TERM");
        assert_eq!(g.wait_exit(15), Some(0));
    });
}

/// A tracker that accepts connections and never answers (stopped with
/// SIGSTOP) costs a question to several trackers at most the grace
/// (`limits::TRACKER_GRACE`, 1 s) after another one answered, not the 10 s
/// I/O timeout: `list` and `get` go on through the other tracker.
#[test]
fn a_tracker_that_stops_answering_costs_the_others_at_most_the_grace() {
    with_timeout(90, || {
        let s = Scratch::new("multi-stopped");
        let data = util::pattern(300_000, 153);
        write(&s.sub("a"), "f", &data);
        let (t1, a1) = tracker_bin("127.0.0.1:0");
        let t2 = tracker();
        let ts = [a1, t2.local_addr()];
        let (_sa, _, _) = share(&ts, &s.path().join("a"), "0", 2);
        t1.signal("STOP");

        let t0 = Instant::now();
        let out = peer(&["list", "--tracker", &list(&ts)]);
        let took = t0.elapsed();
        let e = text(&out.stderr);
        assert!(out.status.success(), "{e}");
        assert!(text(&out.stdout).lines().any(|l| l.starts_with("f ")));
        assert!(
            e.contains(&a1.to_string()) && e.contains("no answer within"),
            "{e}"
        );

        let t0 = Instant::now();
        let out = peer_bin()
            .args(["get", "f", "--tracker", &list(&ts)])
            .args(["--listen", "127.0.0.1:0", "--dir"])
            .arg(s.sub("g"))
            .output()
            .unwrap();
        let got = t0.elapsed();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(fs::read(s.path().join("g/f")).unwrap(), data);
        println!(
            "with a stopped tracker in the list: list {:.2} s, get {:.2} s",
            took.as_secs_f64(),
            got.as_secs_f64()
        );
        assert!(took < Duration::from_secs(5), "list took {took:?}");
        assert!(got < Duration::from_secs(8), "get took {got:?}");
        t1.signal("CONT");
    });
}

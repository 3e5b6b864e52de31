//! Peers over real loopback sockets: downloads from one and many sources,
//! rate-limited sources sharing the work, a chain of downloaders, a lying
//! source, a killed source, resume after the downloader is killed, and bad
//! names. In-process where the engine is the subject, the built binaries
//! where the CLI is.

mod util;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use p2pfs::chunks;
use p2pfs::peer::download::{DownloadOptions, Summary, have_path, part_path};
use p2pfs::peer::node::Node;
use util::{
    CHUNK, Proc, Scratch, downloader, entry, from, get_command, opts, peer_bin, seed, start_share,
    tracker, wait_until, with_timeout, write,
};

fn get(n: &Node, name: &str, dir: &Path) -> Summary {
    n.download(name, dir, &opts(), &mut |_| {})
        .expect("download")
}

fn no_leftovers(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part") && !name.ends_with(".have") && name != ".p2pfs",
            "left behind: {name}"
        );
    }
}

#[test]
fn one_source_to_one_downloader() {
    with_timeout(60, || {
        let s = Scratch::new("one");
        let data = util::pattern(1_000_003, 1);
        write(&s.sub("a"), "sub/file.bin", &data);
        let t = tracker();
        let a = seed(t.local_addr(), &s.sub("a"), None);
        let b = downloader(t.local_addr());
        let sum = get(&b, "sub/file.bin", &s.sub("b"));
        assert_eq!(fs::read(s.path().join("b/sub/file.bin")).unwrap(), data);
        assert_eq!(sum.length, 1_000_003);
        assert_eq!(sum.chunks_total, 16);
        assert_eq!(sum.bytes_downloaded, 1_000_003);
        assert_eq!(from(&sum, a.local_addr()), 1_000_003);
        assert!(
            sum.sources.iter().all(|x| x.dropped.is_none()),
            "{:?}",
            sum.sources
        );
        no_leftovers(&s.path().join("b/sub"));
        // The downloader is now a full source of the file.
        let l = p2pfs::peer::client::locate(t.local_addr(), "sub/file.bin", false).unwrap();
        let me = l
            .sources
            .iter()
            .find(|x| x.addr == b.local_addr())
            .expect("downloader listed");
        assert!(chunks::Bitmap::from_bytes(16, &me.have).unwrap().is_full());
    });
}

#[test]
fn three_rate_limited_sources_each_contribute() {
    with_timeout(90, || {
        let s = Scratch::new("three");
        let data = util::pattern(3 << 20, 2);
        let t = tracker();
        let seeds: Vec<Node> = (0..3)
            .map(|i| {
                let d = s.sub(&format!("s{i}"));
                write(&d, "f", &data);
                seed(t.local_addr(), &d, Some(1 << 20))
            })
            .collect();
        let b = downloader(t.local_addr());
        let sum = get(&b, "f", &s.sub("b"));
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        for sd in &seeds {
            let got = from(&sum, sd.local_addr());
            // Ideal is a third each; a real share is well above zero.
            assert!(
                got >= (data.len() / 6) as u64,
                "source {} gave only {got} bytes: {:?}",
                sd.local_addr(),
                sum.sources
            );
        }
    });
}

#[test]
fn the_faster_source_serves_most_chunks() {
    with_timeout(90, || {
        let s = Scratch::new("fast-slow");
        let data = util::pattern(3 << 20, 3);
        let t = tracker();
        write(&s.sub("fast"), "f", &data);
        write(&s.sub("slow"), "f", &data);
        let fast = seed(t.local_addr(), &s.path().join("fast"), Some(4 << 20));
        let slow = seed(t.local_addr(), &s.path().join("slow"), Some(256 << 10));
        let b = downloader(t.local_addr());
        let sum = get(&b, "f", &s.sub("b"));
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        let (f, sl) = (from(&sum, fast.local_addr()), from(&sum, slow.local_addr()));
        assert!(f > 3 * sl, "fast {f} vs slow {sl}");
        assert!(sl > 0, "the slow source was used too");
    });
}

#[test]
fn downloaders_serve_each_other_while_downloading() {
    with_timeout(90, || {
        let s = Scratch::new("chain");
        let data = util::pattern(2 << 20, 4);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        // A slow seed: two copies from it alone would take 4 s.
        let a = seed(t.local_addr(), &s.path().join("a"), Some(1 << 20));
        let b = Arc::new(downloader(t.local_addr()));
        let c = Arc::new(downloader(t.local_addr()));
        let (bd, cd) = (s.sub("b"), s.sub("c"));
        let hb = {
            let b = Arc::clone(&b);
            thread::spawn(move || get(&b, "f", &bd))
        };
        let hc = {
            let c = Arc::clone(&c);
            thread::spawn(move || get(&c, "f", &cd))
        };
        let sb = hb.join().expect("b");
        let sc = hc.join().expect("c");
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        assert_eq!(fs::read(s.path().join("c/f")).unwrap(), data);
        // Each received chunks from the other while it was still downloading
        // (a peer only receives while it downloads).
        assert!(
            from(&sb, c.local_addr()) > 0,
            "b got nothing from c: {:?}",
            sb.sources
        );
        assert!(
            from(&sc, b.local_addr()) > 0,
            "c got nothing from b: {:?}",
            sc.sources
        );
        assert!(
            a.uploaded_bytes() < 2 * data.len() as u64,
            "the seed uploaded {} bytes for two copies",
            a.uploaded_bytes()
        );
    });
}

#[test]
fn a_lying_source_is_caught_dropped_and_the_file_is_correct() {
    with_timeout(90, || {
        let s = Scratch::new("liar");
        let data = util::pattern(2 << 20, 5);
        write(&s.sub("good"), "f", &data);
        let t = tracker();
        let good = seed(t.local_addr(), &s.path().join("good"), Some(1 << 20));
        // Announces the true hashes, serves other bytes.
        let liar = util::liar(t.local_addr(), &s.sub("liar"), "f", &data);
        let b = downloader(t.local_addr());
        let sum = get(&b, "f", &s.sub("b"));
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        let l = sum
            .sources
            .iter()
            .find(|x| x.addr == liar.local_addr())
            .expect("liar in summary");
        assert_eq!(l.bytes, 0, "nothing from the liar was kept");
        assert_eq!(l.hash_failures, opts().max_hash_failures, "{l:?}");
        assert!(
            l.dropped.as_deref().unwrap_or("").contains("verification"),
            "{l:?}"
        );
        assert_eq!(from(&sum, good.local_addr()), data.len() as u64);
    });
}

#[test]
fn a_sharer_whose_file_changed_after_hashing_refuses_it_and_sends_no_bad_byte() {
    // issue 11, item 6: an honest `peer share` whose file is rewritten
    // (same size) after it registered the hashes notices before sending.
    with_timeout(90, || {
        let s = Scratch::new("changed");
        let data = util::pattern(2 << 20, 5);
        write(&s.sub("good"), "f", &data);
        let changed_file = write(&s.sub("changed"), "f", &data);
        let t = tracker();
        let good = seed(t.local_addr(), &s.path().join("good"), Some(1 << 20));
        let changed = seed(t.local_addr(), &s.path().join("changed"), None);
        thread::sleep(Duration::from_millis(20)); // a new ctime tick
        fs::write(&changed_file, util::pattern(data.len(), 99)).unwrap();
        let b = downloader(t.local_addr());
        let sum = get(&b, "f", &s.sub("b"));
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        assert_eq!(
            changed.uploaded_bytes(),
            0,
            "no byte of the changed file was sent"
        );
        if let Some(c) = sum.sources.iter().find(|x| x.addr == changed.local_addr()) {
            assert_eq!(c.hash_failures, 0, "{c:?}");
            assert_eq!(c.bytes, 0, "{c:?}");
        }
        assert!(changed.share().get("f").is_none(), "withdrawn");
        assert_eq!(from(&sum, good.local_addr()), data.len() as u64);
    });
}

fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", p.display());
}

#[test]
fn fifos_at_the_download_names_are_refused_not_waited_on() {
    // issue 11, item 1 ("wherever a shared file is opened again"): the file
    // already under the final name is opened to be verified and shared, and
    // a `.part.have` (in `.p2pfs/`) to resume. A FIFO at either used to block `peer get`.
    with_timeout(60, || {
        let s = Scratch::new("fifo-get");
        let data = util::pattern(100_000, 3);
        write(&s.sub("src"), "f", &data);
        let t = tracker();
        let _seed = seed(t.local_addr(), &s.path().join("src"), None);
        let b = downloader(t.local_addr());
        let dir = s.sub("dl");

        mkfifo(&dir.join("f"));
        let e = b.download("f", &dir, &opts(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        fs::remove_file(dir.join("f")).unwrap();

        let part = part_path(&dir, "f");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, b"someone else's").unwrap();
        mkfifo(&have_path(&dir, "f"));
        let e = b.download("f", &dir, &opts(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("not an unfinished download"), "{e}");
        assert_eq!(fs::read(&part).unwrap(), b"someone else's");
    });
}

/// A download killed between creating its `.part` and saving the first
/// `.part.have` left an empty `.part` alone, and every later run refused it
/// ("not an unfinished download"), so `peer get DIR/` could never resume.
/// Empty and with no `.part.have` at all, it is started afresh (one with
/// bytes in it is still refused: `a_foreign_part_file_is_never_taken_over`).
#[test]
fn a_part_without_any_have_is_started_afresh() {
    with_timeout(60, || {
        let s = Scratch::new("orphan-part");
        let data = util::pattern(100_000, 5);
        write(&s.sub("src"), "f", &data);
        let t = tracker();
        let _seed = seed(t.local_addr(), &s.path().join("src"), None);
        let b = downloader(t.local_addr());
        let dir = s.sub("dl");
        let part = part_path(&dir, "f");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, b"").unwrap();
        assert!(!have_path(&dir, "f").exists());
        b.download("f", &dir, &opts(), &mut |_| {}).unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), data);
        assert!(!part.exists() && !have_path(&dir, "f").exists());
    });
}

#[test]
fn bad_and_unknown_names_fail_cleanly_and_write_nothing() {
    with_timeout(60, || {
        let s = Scratch::new("names");
        let t = tracker();
        let b = downloader(t.local_addr());
        let dir = s.sub("dl");
        for name in ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "nope"] {
            let e = b
                .download(name, &dir, &opts(), &mut |_| {})
                .expect_err(name);
            let msg = e.to_string();
            assert!(
                msg.contains("invalid name") || msg.contains("no file named"),
                "{name:?}: {msg}"
            );
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        assert!(!s.path().join("x").exists());
    });
}

// ---- Through the binaries -------------------------------------------------

#[test]
fn cli_share_list_where_get() {
    with_timeout(90, || {
        let s = Scratch::new("cli");
        let data = util::pattern(700_000, 6);
        write(&s.sub("a"), "docs/report.pdf", &data);
        let t = tracker();
        let (mut share, seed_addr) = start_share(t.local_addr(), &s.path().join("a"), "0");

        let out = peer_bin()
            .args(["list", "--tracker", &t.local_addr().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("docs/report.pdf") && text.contains("700000"),
            "{text}"
        );

        let out = peer_bin()
            .args([
                "where",
                "docs/report.pdf",
                "--tracker",
                &t.local_addr().to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&seed_addr.to_string())
                && text.contains("11/11")
                && text.contains("###########"),
            "{text}"
        );

        let out = peer_bin()
            .args([
                "get",
                "docs/report.pdf",
                "--tracker",
                &t.local_addr().to_string(),
                "--listen",
                "127.0.0.1:0",
                "--dir",
            ])
            .arg(s.path().join("b"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("downloaded docs/report.pdf")
                && text.contains(&format!("from {seed_addr}")),
            "{text}"
        );
        assert_eq!(fs::read(s.path().join("b/docs/report.pdf")).unwrap(), data);

        // Unknown and invalid names: one-line error, non-zero exit, nothing written.
        for name in ["missing.bin", "../escape"] {
            let out = peer_bin()
                .args([
                    "get",
                    name,
                    "--tracker",
                    &t.local_addr().to_string(),
                    "--listen",
                    "127.0.0.1:0",
                    "--dir",
                ])
                .arg(s.path().join("c"))
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.starts_with("peer: error:") && err.trim_end().lines().count() == 1,
                "{err}"
            );
        }
        assert!(
            !s.path().join("c").exists() || fs::read_dir(s.path().join("c")).unwrap().count() == 0
        );
        assert!(!s.path().join("escape").exists());

        // Ctrl-C/SIGTERM: leave and exit 0; the file disappears from the list.
        share.signal("TERM");
        assert_eq!(share.wait_exit(10), Some(0));
        let out = peer_bin()
            .args(["list", "--tracker", &t.local_addr().to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // The downloader (a separate process) has exited too, so nobody holds it.
        assert!(text.contains("no files"), "{text}");
    });
}

/// Chunks the saved have-bitmap of the download of NAME into `dir` claims
/// (0 if none yet):
/// "P2PFHAVE", a 20-byte identity, the bitmap, the name, the name's length
/// (`u16`).
fn saved_chunks(dir: &Path, name: &str) -> u32 {
    let trailer = name.len() + 2;
    fs::read(have_path(dir, name))
        .ok()
        .filter(|b| b.len() > 28 + trailer)
        .map(|b| {
            b[28..b.len() - trailer]
                .iter()
                .map(|x| x.count_ones())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_source_killed_mid_download_does_not_stop_it() {
    with_timeout(90, || {
        let s = Scratch::new("kill-source");
        let data = util::pattern(3 << 20, 7);
        write(&s.sub("a"), "f", &data);
        write(&s.sub("b"), "f", &data);
        let t = tracker();
        let (victim, victim_addr) = start_share(t.local_addr(), &s.path().join("a"), "1M");
        let (_other, other_addr) = start_share(t.local_addr(), &s.path().join("b"), "1M");
        let d = downloader(t.local_addr());
        let dir = s.sub("d");
        let h = {
            let d = Arc::new(d);
            let dd = Arc::clone(&d);
            (thread::spawn(move || get(&dd, "f", &dir)), d)
        };
        thread::sleep(Duration::from_millis(600));
        victim.signal("KILL");
        let sum = h.0.join().expect("download");
        assert_eq!(fs::read(s.path().join("d/f")).unwrap(), data);
        assert!(
            from(&sum, victim_addr) > 0,
            "the victim served before dying: {:?}",
            sum.sources
        );
        assert!(from(&sum, other_addr) > from(&sum, victim_addr));
    });
}

#[test]
fn a_killed_downloader_resumes_without_refetching_verified_chunks() {
    with_timeout(120, || {
        let s = Scratch::new("resume");
        let data = util::pattern(4 << 20, 8);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let (_seed, seed_addr) = start_share(t.local_addr(), &s.path().join("a"), "1M");
        let dir = s.sub("d");
        let get_cmd = || get_command(t.local_addr(), "f", &dir);
        let mut first = Proc::spawn("peer get", &mut get_cmd());
        // Wait until a good part is on disk (the have-bitmap is saved twice a second).
        wait_until(30, "some chunks saved", || saved_chunks(&dir, "f") >= 16);
        first.signal("KILL");
        first.wait_exit(10);
        assert!(
            !dir.join("f").exists(),
            "no partial file under the final name"
        );
        assert!(part_path(&dir, "f").exists());

        let out = get_cmd().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(dir.join("f")).unwrap(), data);
        no_leftovers(&dir);
        // "…; 1.0 MiB (R of 64 chunks) already on disk" and
        // "from ADDR: … (B bytes)".
        let resumed: u64 = text
            .split(" of 64 chunks) already on disk")
            .next()
            .and_then(|h| h.rsplit('(').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no resumed count in {text}"));
        assert!(resumed >= 16, "{text}");
        let fetched: u64 = text
            .lines()
            .find(|l| l.contains(&format!("from {seed_addr}")))
            .and_then(|l| l.split('(').nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no byte count in {text}"));
        assert_eq!(
            fetched,
            data.len() as u64 - resumed * u64::from(CHUNK),
            "{text}"
        );
    });
}

#[test]
fn a_foreign_part_file_is_never_taken_over() {
    with_timeout(60, || {
        let s = Scratch::new("foreign-part");
        let data = util::pattern(300_000, 10);
        write(&s.sub("a"), "movie", &data);
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let b = downloader(t.local_addr());
        let dir = s.sub("b");
        // Somebody else's unfinished download, under the name we would use.
        let part = part_path(&dir, "movie");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, b"not yours").unwrap();
        let e = b
            .download("movie", &dir, &opts(), &mut |_| {})
            .expect_err("refused");
        assert!(e.to_string().contains(&part.display().to_string()), "{e}");
        assert_eq!(fs::read(&part).unwrap(), b"not yours");
        assert!(!dir.join("movie").exists());
        // Moved away: the download goes through.
        fs::remove_file(&part).unwrap();
        get(&b, "movie", &dir);
        assert_eq!(fs::read(dir.join("movie")).unwrap(), data);
    });
}

#[test]
fn a_source_that_never_greets_does_not_hold_up_the_end() {
    with_timeout(60, || {
        let s = Scratch::new("mute");
        let data = util::pattern(200_000, 11);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        // A "peer" that registers as a source, accepts connections and then
        // says nothing at all.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ctl = util::Client::connect(t.local_addr());
        let reply = ctl.request(&p2pfs::wire::Message::Register {
            endpoint: mute.local_addr().unwrap(),
            files: vec![entry("f", &data)],
        });
        assert!(matches!(reply, p2pfs::wire::Message::RegisterReply { .. }));
        let b = downloader(t.local_addr());
        let o = DownloadOptions {
            io_timeout: Duration::from_secs(20),
            ..opts()
        };
        let started = std::time::Instant::now();
        let sum = b
            .download("f", &s.sub("b"), &o, &mut |_| {})
            .expect("download");
        assert_eq!(fs::read(s.path().join("b/f")).unwrap(), data);
        assert_eq!(sum.bytes_downloaded, data.len() as u64);
        // Ending does not wait for the mute source's 20 s Hello timeout.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        drop(mute);
    });
}

#[test]
fn ctrl_c_stops_get_cleanly_and_a_rerun_resumes() {
    with_timeout(120, || {
        let s = Scratch::new("sigint");
        let data = util::pattern(3 << 20, 12);
        write(&s.sub("a"), "f", &data);
        let t = tracker();
        let (_seed, _) = start_share(t.local_addr(), &s.path().join("a"), "1M");
        let dir = s.sub("d");
        let get_cmd = || get_command(t.local_addr(), "f", &dir);
        let mut first = Proc::spawn("peer get", &mut get_cmd());
        first.wait_line("serving chunks on");
        wait_until(30, "a few chunks on disk", || saved_chunks(&dir, "f") >= 4);
        first.signal("INT");
        assert_eq!(
            first.wait_exit(15),
            Some(130),
            "interrupted get exits with 128 + SIGINT"
        );
        assert!(!dir.join("f").exists());
        assert!(part_path(&dir, "f").exists() && have_path(&dir, "f").exists());
        // It left the tracker: only the seed is listed now.
        wait_until(10, "downloader gone from the tracker", || {
            p2pfs::peer::client::locate(t.local_addr(), "f", false)
                .is_ok_and(|l| l.sources.len() == 1)
        });
        let out = get_cmd().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read(dir.join("f")).unwrap(), data);
        assert!(text.contains("chunks) already on disk"), "{text}");
    });
}

/// A peer told to serve chunks on one loopback address of many
/// (`--listen 127.0.3.1`) connects from it too, so the tracker, which
/// records the address a peer connects from, hands it out where it
/// listens and a download from it works. (Connecting from the default
/// 127.0.0.1, it was handed out at 127.0.0.1, where nothing listened.)
#[test]
fn a_peer_listening_on_its_own_address_is_handed_out_there() {
    with_timeout(90, || {
        let s = Scratch::new("own-address");
        let data = util::pattern(3 * CHUNK as usize, 7);
        write(&s.path().join("a"), "own.bin", &data);
        let t = tracker();
        let ta = t.local_addr().to_string();
        let chunk = format!("{}K", CHUNK / 1024);
        let mut share = Proc::spawn(
            "peer share",
            peer_bin()
                .args(["share", "--tracker", &ta, "--listen", "127.0.3.1:0"])
                .args(["--chunk-size", &chunk, "--dir"])
                .arg(s.path().join("a")),
        );
        let addr = util::addr_in(&share.wait_line("serving chunks on"));
        assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 3, 1]));
        share.wait_line("registered");
        fs::create_dir_all(s.path().join("b")).unwrap();
        let out = util::peer_get(t.local_addr(), "own.bin", &s.path().join("b"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&format!("from {addr}")), "{text}");
        assert_eq!(fs::read(s.path().join("b").join("own.bin")).unwrap(), data);
    });
}

//! Live sharing (issue 13): a running `peer share` notices files added to,
//! changed in and removed from its folder, registers or withdraws them, and
//! never offers a file that is still being written, nor old content.

mod util;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use p2pfs::chunks;
use p2pfs::peer::client;
use p2pfs::peer::node::{Node, NodeConfig};
use p2pfs::peer::share;
use p2pfs::peer::watch::{FolderWatch, Scope, WatchConfig, WatchEvent};
use p2pfs::wire::{ErrorCode, Message};
use util::{CHUNK, Client, Scratch, opts, pattern, peer_get, start_share, tracker, with_timeout};

/// What `peer list` shows: the names the tracker lists.
fn listed(t: SocketAddr) -> Vec<String> {
    client::list_files(t)
        .map(|(files, _)| files.into_iter().map(|f| f.name).collect())
        .unwrap_or_default()
}

/// Polls every 50 ms until `cond` holds; how long it took. Panics after
/// `secs`.
fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// The hashes the tracker has for `name`, if it lists a source of it.
fn located(t: SocketAddr, name: &str) -> Option<(u64, Vec<chunks::Digest>)> {
    let l = client::locate(t, name, true).ok()?;
    Some((l.length, l.hashes.unwrap_or_default()))
}

fn hashes_of(data: &[u8]) -> Vec<chunks::Digest> {
    data.chunks(CHUNK as usize).map(chunks::sha1).collect()
}

/// The first request of a downloader that knows the old content: chunk 0.
fn ask_chunk0(server: SocketAddr, name: &str) -> Message {
    let mut c = Client::connect(server);
    c.request(&Message::ChunkRequest {
        name: name.into(),
        index: 0,
    })
}

#[test]
fn a_file_copied_in_is_listed_and_downloads_and_a_removed_one_is_unlisted() {
    with_timeout(60, || {
        let t = tracker();
        let ta = t.local_addr();
        let dir = Scratch::new("live-add");
        util::write(dir.path(), "first", b"there at the start");
        let (mut share, _) = start_share(ta, dir.path(), "0");
        let name = "new dir/ünï file.bin";
        let data = pattern(700_000, 3);
        util::write(dir.path(), name, &data);
        let took = until(10, "the new file listed", || {
            listed(ta).iter().any(|n| n == name)
        });
        eprintln!("listed {took:?} after it landed");
        assert!(share.wait_line("added").contains(name));
        let out = Scratch::new("live-add-out");
        let got = peer_get(ta, name, out.path());
        assert!(got.status.success(), "{got:?}");
        assert_eq!(fs::read(out.path().join(name)).unwrap(), data);

        fs::remove_file(dir.path().join(name)).unwrap();
        until(10, "the removed file unlisted", || {
            !listed(ta).iter().any(|n| n == name)
        });
        assert!(share.wait_line("removed").contains(name));
        assert_eq!(listed(ta), vec!["first".to_string()]);
        share.signal("TERM");
        share.wait_exit(10);
    });
}

#[test]
fn a_file_being_appended_to_is_offered_only_once_stable() {
    with_timeout(60, || {
        let t = tracker();
        let ta = t.local_addr();
        let dir = Scratch::new("live-append");
        util::write(dir.path(), "first", b"x");
        let (_share, _) = start_share(ta, dir.path(), "0");
        let path = dir.path().join("growing.log");
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (path, writing) = (path.clone(), Arc::clone(&writing));
            thread::spawn(move || {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                let mut all = Vec::new();
                for i in 0..15u64 {
                    let piece = pattern(20_000, i);
                    f.write_all(&piece).unwrap();
                    all.extend_from_slice(&piece);
                    thread::sleep(Duration::from_millis(200));
                }
                writing.store(false, Ordering::SeqCst);
                all
            })
        };
        // Never offered while the writer is at it.
        while writing.load(Ordering::SeqCst) {
            assert!(
                located(ta, "growing.log").is_none(),
                "offered while still being written"
            );
            thread::sleep(Duration::from_millis(100));
        }
        let data = writer.join().unwrap();
        let took = until(10, "the finished file listed", || {
            located(ta, "growing.log").is_some()
        });
        eprintln!("listed {took:?} after the last write");
        assert_eq!(
            located(ta, "growing.log").unwrap(),
            (data.len() as u64, hashes_of(&data))
        );
        let out = Scratch::new("live-append-out");
        let got = peer_get(ta, "growing.log", out.path());
        assert!(got.status.success(), "{got:?}");
        assert_eq!(fs::read(out.path().join("growing.log")).unwrap(), data);
    });
}

/// A node sharing `dir` as `peer share` does, without its folder watcher.
fn share_node(t: SocketAddr, dir: &Path) -> Node {
    let scan = share::scan_dir(dir, &[], CHUNK, &|_, _| {}).expect("scan");
    let mut cfg = NodeConfig::new(t);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let n = Node::start(cfg, scan.files, None).expect("node");
    until(10, "registered", || n.is_connected());
    n
}

#[test]
fn a_changed_file_is_served_only_with_its_new_content() {
    with_timeout(60, || {
        let t = tracker();
        let ta = t.local_addr();
        let dir = Scratch::new("live-change");
        let old = pattern(300_000, 1);
        util::write(dir.path(), "f.bin", &old);
        let node = share_node(ta, dir.path());
        until(10, "listed", || located(ta, "f.bin").is_some());
        assert_eq!(located(ta, "f.bin").unwrap().1, hashes_of(&old));

        // Rewritten in place, same length, before any watcher looks: a
        // request for a chunk of the old content is answered NotHeld, and
        // the file is withdrawn at the tracker.
        let new = pattern(300_000, 2);
        thread::sleep(Duration::from_millis(20));
        util::write(dir.path(), "f.bin", &new);
        match ask_chunk0(node.local_addr(), "f.bin") {
            Message::Error { code, .. } => assert_eq!(code, ErrorCode::NotHeld),
            other => panic!("old content served: {other:?}"),
        }
        until(5, "withdrawn", || located(ta, "f.bin").is_none());

        // The watcher hashes it again once stable and shares the new
        // content; a downloader gets the new bytes.
        let (tx, rx) = FolderWatch::channel();
        let cfg = WatchConfig {
            interval: Duration::from_millis(200),
            stable_for: Duration::from_millis(500),
        };
        let share = Arc::clone(node.share());
        let watch = FolderWatch::start(dir.path(), Scope::Folder, CHUNK, share, cfg, Some(tx))
            .expect("watch");
        until(10, "the new content registered", || {
            located(ta, "f.bin").is_some_and(|(_, h)| h == hashes_of(&new))
        });
        let ev = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            ev,
            WatchEvent::Added {
                name: "f.bin".into(),
                length: 300_000
            }
        );
        let dl = util::downloader(ta);
        let out = Scratch::new("live-change-out");
        dl.download("f.bin", out.path(), &opts(), &mut |_| {})
            .unwrap();
        assert_eq!(fs::read(out.path().join("f.bin")).unwrap(), new);

        // Changed again, now with the watcher running (another length):
        // withdrawn at once and hashed again. The downloader still holds
        // the second content under the name, so the tracker refuses the
        // third (Conflict) and keeps the second, served by the downloader;
        // once it leaves, the sharer's retry registers the third.
        let third = pattern(500_000, 3);
        util::write(dir.path(), "f.bin", &third);
        let mut seen = Vec::new();
        until(10, "the third content hashed", || {
            while let Ok(e) = rx.try_recv() {
                seen.push(e);
            }
            seen.iter().any(|e| matches!(e, WatchEvent::Updated { .. }))
        });
        assert_eq!(
            seen,
            vec![
                WatchEvent::Changed {
                    name: "f.bin".into()
                },
                WatchEvent::Updated {
                    name: "f.bin".into(),
                    length: 500_000
                }
            ]
        );
        thread::sleep(Duration::from_millis(500));
        let l = client::locate(ta, "f.bin", true).unwrap();
        assert_eq!(
            l.hashes.unwrap(),
            hashes_of(&new),
            "the second content stays"
        );
        assert_eq!(l.sources.len(), 1);
        assert_eq!(l.sources[0].addr, dl.local_addr());
        dl.leave();
        let took = until(15, "the third content registered", || {
            located(ta, "f.bin").is_some_and(|(_, h)| h == hashes_of(&third))
        });
        eprintln!("third content accepted {took:?} after the conflict ended");
        let dl = util::downloader(ta);
        let out = Scratch::new("live-change-out2");
        dl.download("f.bin", out.path(), &opts(), &mut |_| {})
            .unwrap();
        assert_eq!(fs::read(out.path().join("f.bin")).unwrap(), third);
        watch.stop();
        dl.leave();
        node.leave();
    });
}

/// `peer get --seed` watches the file it seeds: removed, it stops being a
/// source of it (the sharer still is).
#[test]
fn a_seeded_download_that_is_removed_is_withdrawn() {
    with_timeout(60, || {
        let t = tracker();
        let ta = t.local_addr();
        let dir = Scratch::new("live-seed");
        let data = pattern(200_000, 9);
        util::write(dir.path(), "s.bin", &data);
        let (_share, _) = start_share(ta, dir.path(), "0");
        let out = Scratch::new("live-seed-out");
        let mut get = util::Proc::spawn(
            "peer get --seed",
            util::get_command(ta, "s.bin", out.path()).arg("--seed"),
        );
        get.wait_line("seeding");
        let sources = || {
            client::locate(ta, "s.bin", false)
                .map(|l| l.sources.len())
                .unwrap_or(0)
        };
        until(10, "the seeder registered", || sources() == 2);
        fs::remove_file(out.path().join("s.bin")).unwrap();
        until(10, "the seeder withdrawn", || sources() == 1);
        assert!(get.wait_line("removed").contains("s.bin"));
        assert_eq!(listed(ta), vec!["s.bin".to_string()]);
        get.signal("TERM");
        get.wait_exit(10);
    });
}

/// `peer get --seed --json`: what the watcher does goes to stderr, so
/// stdout holds JSON lines only, also after the seeded file is removed.
#[test]
fn a_json_seeder_keeps_stdout_json_when_the_watcher_speaks() {
    with_timeout(60, || {
        let t = tracker();
        let ta = t.local_addr();
        let dir = Scratch::new("live-seed-json");
        util::write(dir.path(), "j.bin", &pattern(100_000, 3));
        let (_share, _) = start_share(ta, dir.path(), "0");
        let out = Scratch::new("live-seed-json-out");
        let logs = Scratch::new("live-seed-json-err");
        let err_path = logs.path().join("stderr.txt");
        let err = fs::File::create(&err_path).unwrap();
        let child = util::get_command(ta, "j.bin", out.path())
            .args(["--seed", "--json"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut get = util::Proc::adopt("peer get --seed --json", child);
        let sources = || {
            client::locate(ta, "j.bin", false)
                .map(|l| l.sources.len())
                .unwrap_or(0)
        };
        until(10, "the seeder registered", || sources() == 2);
        fs::remove_file(out.path().join("j.bin")).unwrap();
        until(10, "the seeder withdrawn", || sources() == 1);
        until(10, "the removal reported on stderr", || {
            fs::read_to_string(&err_path).is_ok_and(|e| e.contains("removed"))
        });
        get.signal("TERM");
        get.wait_exit(10);
        let stdout = get.rest_of_stdout();
        assert!(!stdout.trim().is_empty(), "no JSON summary");
        for line in stdout.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(v.is_object(), "{line}");
        }
    });
}

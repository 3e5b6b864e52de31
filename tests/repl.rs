//! The interactive peer's commands (what `peer share` reads on a terminal),
//! driven without a terminal: an in-process tracker and nodes, and the
//! command interpreter fed from a byte string.

mod util;

use std::fs;
use std::sync::Arc;

use p2pfs::ui::repl::{DownloadState, Flow, Repl};
use util::{Scratch, downloader, opts, seed, tracker, wait_until, with_timeout};

/// Runs one command line; returns what it printed.
fn say(r: &mut Repl, line: &str) -> String {
    let mut out = Vec::new();
    assert_eq!(r.handle(line, &mut out).unwrap(), Flow::Continue, "{line}");
    String::from_utf8(out).unwrap()
}

#[test]
fn list_where_get_status_at_the_prompt() {
    with_timeout(90, || {
        let s = Scratch::new("repl");
        let data = util::pattern(1 << 20, 11);
        fs::write(s.sub("seed").join("photo.jpg"), &data).unwrap();
        let t = tracker();
        // 1 MiB at 512 KiB/s: the download lasts about two seconds, far
        // longer than the few commands typed while it runs.
        let seed = Arc::new(seed(
            t.local_addr(),
            &s.path().join("seed"),
            Some(512 << 10),
        ));
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let (mut r, notices) = Repl::new(Arc::clone(&me), dir.clone(), opts());

        let mut out = Vec::new();
        r.run(
            &mut "help\n\nlist\nwhere #1\nget #1\nget photo.jpg\nfrobnicate\nget\nget #9\nwhere ../x\n"
                .as_bytes(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let seed_addr = seed.local_addr().to_string();
        for needle in [
            "commands:",
            "  1. photo.jpg",
            "1.0 MiB",
            "photo.jpg: 1048576 bytes (1.0 MiB), 16 chunks of 64.0 KiB, 1 source",
            &format!("  {seed_addr:<22}     16/16     ################"),
            "downloading photo.jpg (1.0 MiB) from 1 source in the background",
            "already downloading photo.jpg",
            "unknown command \"frobnicate\"",
            "get needs a file",
            "there is no file #9 in the last list (#1 to #1)",
            "\"../x\" is not a valid name",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(r.active_downloads(), 1, "{text}");

        let st = say(&mut r, "status");
        assert!(st.contains("downloads:\n  photo.jpg  "), "{st}");
        assert!(st.contains(&format!("serving chunks on {}", me.local_addr())));

        wait_until(30, "download finished", || r.active_downloads() == 0);
        match &r.downloads()[..] {
            [(name, DownloadState::Done(sum))] => {
                assert_eq!(name, "photo.jpg");
                assert_eq!(sum.length, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(dir.join("photo.jpg")).unwrap(), data);
        let n = notices.try_recv().expect("a notice");
        assert!(
            n.starts_with("download finished: photo.jpg (1.0 MiB)") && n.contains(&seed_addr),
            "{n}"
        );

        let st = say(&mut r, "status");
        for needle in [
            "files (1):",
            "16/16 chunks",
            "done: 1.0 MiB in",
            "from 1 peer",
            "uploads: ",
        ] {
            assert!(st.contains(needle), "missing {needle:?} in:\n{st}");
        }
        let l = say(&mut r, "list");
        assert!(
            l.contains("  1. photo.jpg") && l.contains("(you have it)"),
            "{l}"
        );
        assert!(say(&mut r, "get photo.jpg").contains("you already have photo.jpg"));
        // The tracker hears of our chunks through the session, a moment later.
        wait_until(10, "this peer listed as a source", || {
            say(&mut r, "where photo.jpg").contains("16/16     ################  (this peer)")
        });

        // The seed's own view: what it uploaded.
        let (mut sr, _n) = Repl::new(Arc::clone(&seed), s.path().join("seed"), opts());
        let st = say(&mut sr, "status");
        assert!(
            st.contains("1.0 MiB sent in all"),
            "the seed uploaded one copy:\n{st}"
        );

        let mut out = Vec::new();
        assert_eq!(r.handle("quit", &mut out).unwrap(), Flow::Quit);
        assert!(r.finish().is_empty());
    });
}

#[test]
fn quitting_during_a_download_stops_it_and_keeps_its_part_file() {
    with_timeout(90, || {
        let s = Scratch::new("repl-quit");
        fs::write(s.sub("seed").join("big"), util::pattern(2 << 20, 12)).unwrap();
        let t = tracker();
        // 2 MiB at 128 KiB/s: still running when we quit.
        let seed = Arc::new(seed(
            t.local_addr(),
            &s.path().join("seed"),
            Some(128 << 10),
        ));
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let (mut r, _notices) = Repl::new(Arc::clone(&me), dir.clone(), opts());
        let mut out = Vec::new();
        r.run(&mut "get big\nquit\nstatus\n".as_bytes(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("serving chunks"), "stopped at quit: {text}");
        wait_until(10, "some chunks on disk", || {
            fs::metadata(p2pfs::peer::download::have_path(&dir, "big")).is_ok()
        });
        // Stopped and joined: the node is ours alone again, so it can leave.
        assert_eq!(r.finish(), vec!["big".to_owned()]);
        assert_eq!(Arc::strong_count(&me), 1);
        assert!(!dir.join("big").exists());
        assert!(
            p2pfs::peer::download::part_path(&dir, "big").exists(),
            "kept for a resume"
        );
        drop(seed);
    });
}

#[test]
fn a_failed_download_can_be_retried_at_the_prompt() {
    with_timeout(120, || {
        let s = Scratch::new("repl-retry");
        let data = util::pattern(2 << 20, 13);
        fs::write(s.sub("slow").join("big"), &data).unwrap();
        let t = tracker();
        // 2 MiB at 128 KiB/s: the seed leaves long before the end.
        let slow = seed(t.local_addr(), &s.path().join("slow"), Some(128 << 10));
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let o = p2pfs::peer::download::DownloadOptions {
            give_up_after: std::time::Duration::from_secs(1),
            ..opts()
        };
        let (mut r, _notices) = Repl::new(Arc::clone(&me), dir.clone(), o);
        assert!(say(&mut r, "get big").contains("big"));
        wait_until(30, "some chunks on disk", || {
            fs::read(p2pfs::peer::download::have_path(&dir, "big"))
                .is_ok_and(|b| b.len() > 28 && b[28..].iter().any(|x| *x != 0))
        });
        slow.leave();
        wait_until(30, "the download gave up", || {
            say(&mut r, "status").contains("failed")
        });
        // Another source appears: the same command resumes the download.
        fs::write(s.sub("fast").join("big"), &data).unwrap();
        let _fast = seed(t.local_addr(), &s.path().join("fast"), None);
        let again = say(&mut r, "get big");
        assert!(!again.contains("already"), "{again}");
        wait_until(30, "the retried download finished", || {
            dir.join("big").exists()
        });
        assert_eq!(fs::read(dir.join("big")).unwrap(), data);
        r.finish();
    });
}

/// Issue 11 item 10: a bare word is always a name (a file named `2` is
/// fetched by `get 2`, before or after `list`), `#N` is the list's number
/// N, and quotes keep a name's spaces.
#[test]
fn names_that_look_like_numbers_and_names_with_spaces_can_be_fetched() {
    with_timeout(90, || {
        let s = Scratch::new("repl-names");
        let files = [("2", 21u64), ("a.txt", 22), (" padded name ", 23)];
        for (name, seed_no) in files {
            fs::write(s.sub("seed").join(name), util::pattern(100_000, seed_no)).unwrap();
        }
        let t = tracker();
        let _seed = seed(t.local_addr(), &s.path().join("seed"), None);
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let (mut r, _notices) = Repl::new(Arc::clone(&me), dir.clone(), opts());
        let fetched = |name: &str, seed_no: u64| {
            wait_until(30, name, || {
                fs::read(dir.join(name)).is_ok_and(|d| d == util::pattern(100_000, seed_no))
            })
        };

        // Before any list: the file named "2", not a list number.
        let out = say(&mut r, "get 2");
        assert!(out.contains("downloading 2 ("), "{out}");
        fetched("2", 21);

        // After a list, still the name; `#N` is the number.
        let list = say(&mut r, "list");
        let number = list
            .lines()
            .find(|l| l.contains("a.txt"))
            .and_then(|l| l.trim().split('.').next())
            .expect(&list)
            .to_owned();
        let out = say(&mut r, "where 2");
        assert!(out.starts_with("2: 100000 bytes"), "{out}");
        let out = say(&mut r, &format!("get #{number}"));
        assert!(out.contains("downloading a.txt ("), "{out}");
        fetched("a.txt", 22);

        // Quotes keep leading and trailing spaces.
        let out = say(&mut r, "where \" padded name \"");
        assert!(out.starts_with(" padded name : 100000 bytes"), "{out}");
        let out = say(&mut r, "get \" padded name \"\n");
        assert!(out.contains("downloading  padded name  ("), "{out}");
        fetched(" padded name ", 23);
        wait_until(30, "downloads finished", || r.active_downloads() == 0);
        r.finish();
    });
}

/// Issue 14: after a restart, a `.part` left by a download stopped at the
/// prompt was skipped with a technical line and `status` showed nothing.
/// `status` names the downloads that `get NAME` resumes.
#[test]
fn status_names_the_unfinished_downloads_to_resume() {
    with_timeout(30, || {
        let s = Scratch::new("repl-unfinished");
        let dir = s.sub("me");
        util::plant_unfinished(&dir, "photo.jpg");
        let t = tracker();
        let me = Arc::new(downloader(t.local_addr()));
        let (mut r, _notices) = Repl::new(Arc::clone(&me), dir, opts());
        let st = say(&mut r, "status");
        assert!(
            st.contains("unfinished download: photo.jpg; type get NAME to resume one"),
            "{st}"
        );
    });
}

/// Issue 13: `list FOLDER` and `get FOLDER/` (and several names) at the
/// prompt: one background job for the set, files under the folder only.
#[test]
fn folders_and_several_files_at_the_prompt() {
    with_timeout(90, || {
        let s = Scratch::new("repl-folder");
        let src = s.sub("seed");
        for (name, len) in [
            ("pics/a.jpg", 3000),
            ("pics/2024/b c.jpg", 70_000),
            ("picsx/no.jpg", 10),
            ("doc.txt", 5),
        ] {
            util::write(&src, name, &util::pattern(len, len as u64));
        }
        let t = tracker();
        let _seed = seed(t.local_addr(), &src, None);
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let (mut r, notices) = Repl::new(Arc::clone(&me), dir.clone(), opts());
        let l = say(&mut r, "list pics");
        assert!(
            l.contains("pics/a.jpg") && l.contains("pics/2024/b c.jpg"),
            "{l}"
        );
        assert!(!l.contains("picsx") && !l.contains("doc.txt"), "{l}");
        assert!(say(&mut r, "list nothing/").contains("no files under"));
        assert!(say(&mut r, "get nothing/").contains("no file under"));
        let started = say(&mut r, "get \"pics/\" \"doc.txt\"");
        assert!(started.contains("downloading 3 files"), "{started}");
        let notice = notices
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a notice when the set ends");
        assert!(notice.contains("downloaded 3 of 3 files"), "{notice}");
        for name in ["pics/a.jpg", "pics/2024/b c.jpg", "doc.txt"] {
            assert_eq!(
                fs::read(dir.join(name)).unwrap(),
                fs::read(src.join(name)).unwrap()
            );
        }
        assert!(!dir.join("picsx").exists());
        let st = say(&mut r, "status");
        assert!(st.contains("downloaded 3 of 3 files"), "{st}");
        // Everything here already: nothing to start.
        assert!(say(&mut r, "get pics/").contains("already have all 2 files"));
        r.finish();
    });
}

/// Issue 13: `get FILE --id ID` at the prompt, as `peer get NAME --id ID`.
/// Another id is refused at once, with both ids, and nothing at all is
/// written into the download folder (no file, no `.p2pfs/`, no parent
/// folder), by name or by #NUMBER; the prompt goes on, and the right id
/// downloads the file byte for byte.
#[test]
fn get_with_a_content_id_at_the_prompt() {
    with_timeout(90, || {
        let s = Scratch::new("repl-pin");
        let data = util::pattern(300_000, 51);
        let name = "sub/dir/f.bin";
        util::write(&s.sub("seed"), name, &data);
        let t = tracker();
        let _seed = seed(t.local_addr(), &s.path().join("seed"), None);
        let me = Arc::new(downloader(t.local_addr()));
        let dir = s.sub("me");
        let (mut r, notices) = Repl::new(Arc::clone(&me), dir.clone(), opts());
        let (right, wrong) = (util::id_of(&data), util::id_of(b"other content"));

        let mut out = Vec::new();
        let lines = format!(
            "list\nget #1 --id {wrong}\nget {name} --id {wrong}\nget --id {wrong} \"{name}\"\n\
             get #1 --id 12ab\nget sub/ --id {right}\nhelp\n"
        );
        r.run(&mut lines.as_bytes(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let refusal = format!(
            "{name:?} on the network has content id {right}, not {wrong} as given with --id; \
             refused, nothing was written"
        );
        assert_eq!(text.matches(&refusal).count(), 3, "{text}");
        for needle in [
            "the content id \"12ab\" is not 40 hex digits",
            "--id pins the content of one file",
            "get FILE --id ID",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("downloading"), "{text}");
        assert!(r.downloads().is_empty(), "no download started");
        assert_eq!(util::tree(&dir), Vec::<String>::new(), "{text}");

        // The right id, in either case of hex digits, by number.
        let upper = right.to_string().to_uppercase();
        let started = say(&mut r, &format!("get #1 --id {upper}"));
        assert!(
            started.contains(&format!("downloading {name} (")),
            "{started}"
        );
        let notice = notices
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a notice when the download ends");
        assert!(notice.starts_with("download finished"), "{notice}");
        assert_eq!(fs::read(dir.join(name)).unwrap(), data);

        // What is here now has the right id, not the wrong one.
        let again = say(&mut r, &format!("get {name} --id {wrong}"));
        assert!(
            again.contains(&format!("with content id {right}, not {wrong}")),
            "{again}"
        );
        assert!(say(&mut r, &format!("get {name} --id {right}")).contains("you already have"));
        r.finish();
    });
}

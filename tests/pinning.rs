//! Content pinning (issue 13): `peer get NAME --id ID` refuses, having
//! written nothing at all, content whose id differs; downloads content
//! whose id matches; and, when trackers disagree about a name, takes the
//! content of the pinned id from the tracker that has it, without using
//! the sources of the other content.

mod util;

use std::fs;
use std::path::Path;
use std::process::Output;

use p2pfs::peer::download::DownloadOptions;
use p2pfs::peer::node::{Node, NodeConfig};
use util::{
    Scratch, get_command, id_of, opts, seed, tracker, tree, wait_until, with_timeout, write,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn get_with_id(t: std::net::SocketAddr, name: &str, dir: &Path, id: &str) -> Output {
    get_command(t, name, dir)
        .args(["--id", id])
        .output()
        .unwrap()
}

#[test]
fn a_wrong_id_writes_nothing_and_the_right_one_downloads() {
    with_timeout(60, || {
        let s = Scratch::new("pin");
        let data = util::pattern(300_000, 41);
        let name = "sub/dir/f.bin";
        write(&s.sub("a"), name, &data);
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let right = id_of(&data);
        let wrong = id_of(b"something else");

        // Into a folder that exists (with a file of its own) and one that
        // does not: neither changes.
        let existing = s.sub("b");
        fs::write(existing.join("keep.txt"), b"mine").unwrap();
        let missing = s.path().join("nowhere");
        for dir in [&existing, &missing] {
            let before = tree(dir);
            let out = get_with_id(t.local_addr(), name, dir, &wrong.to_string());
            let e = text(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{e}");
            assert!(
                e.contains(&right.to_string()) && e.contains(&wrong.to_string()),
                "{e}"
            );
            assert!(e.contains("nothing was written"), "{e}");
            assert_eq!(tree(dir), before, "{e}");
        }
        assert!(!missing.exists());

        // Either case of hex digits is the same id.
        let out = get_with_id(
            t.local_addr(),
            name,
            &existing,
            &right.to_string().to_uppercase(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(fs::read(existing.join(name)).unwrap(), data);

        // Not an id at all: a usage error, nothing written.
        let out = get_with_id(t.local_addr(), name, &missing, "abc123");
        let e = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(e.contains("40 hex digits"), "{e}");
        assert!(!missing.exists());
    });
}

/// Two trackers, each with a different file of the same size under one
/// name. Unpinned, the first tracker says what the file is; pinned to the
/// second one's content, that content is downloaded, and no source of the
/// other content is used (none is asked, so none fails verification),
/// even on the location refreshes during the download.
#[test]
fn the_pinned_id_chooses_among_trackers_that_disagree() {
    with_timeout(90, || {
        let s = Scratch::new("pin-two");
        let x = util::pattern(1 << 20, 42);
        let y = util::pattern(1 << 20, 43);
        write(&s.sub("x"), "f", &x);
        write(&s.sub("y"), "f", &y);
        let (t1, t2) = (tracker(), tracker());
        // The other content is fast, the pinned one slow, so the download
        // spans several location refreshes.
        let sx = seed(t1.local_addr(), &s.path().join("x"), None);
        let sy = seed(t2.local_addr(), &s.path().join("y"), Some(256 << 10));
        let downloader = || {
            let mut cfg = NodeConfig::with_trackers(vec![t1.local_addr(), t2.local_addr()]);
            cfg.listen = "127.0.0.1:0".parse().unwrap();
            let d = Node::start(cfg, Vec::new(), None).expect("node");
            wait_until(10, "the downloader registered", || d.is_connected());
            d
        };
        let d = downloader();

        let pinned = DownloadOptions {
            expect_id: Some(id_of(&y)),
            ..opts()
        };
        let sum = d
            .download("f", &s.sub("pinned"), &pinned, &mut |_| {})
            .expect("pinned download");
        assert_eq!(fs::read(s.path().join("pinned/f")).unwrap(), y);
        assert!(sum.elapsed.as_secs_f64() > 2.0, "{:?}", sum.elapsed);
        assert!(
            sum.sources
                .iter()
                .all(|x| x.addr == sy.local_addr() && x.hash_failures == 0),
            "{:?}",
            sum.sources
        );
        assert_eq!(util::from(&sum, sy.local_addr()), y.len() as u64);

        // Unpinned (another peer): the first tracker's content.
        let sum = downloader()
            .download("f", &s.sub("unpinned"), &opts(), &mut |_| {})
            .expect("unpinned download");
        assert_eq!(fs::read(s.path().join("unpinned/f")).unwrap(), x);
        assert_eq!(util::from(&sum, sx.local_addr()), x.len() as u64);
    });
}

//! `peer list --json`, `peer list --long` and `peer where --json` (issue
//! 13), run as child processes and parsed: the fields README documents,
//! content ids equal to `ContentId::compute` of the files, stdout holding
//! nothing but JSON lines while the warnings about trackers left out go to
//! stderr.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::process::Output;

use p2pfs::chunks::{self, ContentId};
use serde_json::Value;
use util::{CHUNK, Scratch, peer_bin, seed, tracker, with_timeout, write};

fn peer(args: &[&str]) -> Output {
    peer_bin().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every line of stdout parsed as one JSON object (the test fails on
/// anything else).
fn objects(o: &Output) -> Vec<Value> {
    text(&o.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// The id of `data` shared in [`CHUNK`]-sized chunks.
fn id_of(data: &[u8]) -> String {
    let hashes: Vec<_> = data.chunks(CHUNK as usize).map(chunks::sha1).collect();
    ContentId::compute(data.len() as u64, CHUNK, &hashes).to_string()
}

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn list_and_where_print_one_documented_object_per_line() {
    with_timeout(60, || {
        let s = Scratch::new("json");
        let name = "photos 2024/ours \"best\" ü.bin";
        let data = util::pattern(300_000, 31);
        for d in ["a", "b"] {
            write(&s.sub(d), name, &data);
            write(&s.sub(d), "empty", b"");
        }
        let t = tracker();
        let a = seed(t.local_addr(), &s.path().join("a"), None);
        let b = seed(t.local_addr(), &s.path().join("b"), None);
        let ta = t.local_addr().to_string();

        let out = peer(&["list", "--json", "--tracker", &ta]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let files = objects(&out);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(
            files[0],
            serde_json::json!({"name": "empty", "length": 0, "chunk_size": CHUNK,
                "chunk_count": 0, "id": id_of(b""), "sources": 2, "complete_sources": 2})
        );
        assert_eq!(
            files[1],
            serde_json::json!({"name": name, "length": 300_000, "chunk_size": CHUNK,
                "chunk_count": 5, "id": id_of(&data), "sources": 2, "complete_sources": 2})
        );

        let out = peer(&["list", "--long", "--tracker", &ta]);
        let o = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = o.lines().find(|l| l.starts_with(name)).expect(&o);
        assert!(line.contains(&format!("id {}", id_of(&data))), "{line}");
        assert!(line.contains("2 sources (2 complete)"), "{line}");

        let out = peer(&["where", name, "--json", "--tracker", &ta]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut sources = objects(&out);
        sources.sort_by_key(|v| v["endpoint"].as_str().unwrap().to_owned());
        let mut expected: Vec<Value> = [a.local_addr(), b.local_addr()]
            .iter()
            .map(|e| {
                serde_json::json!({"name": name, "id": id_of(&data), "endpoint": e.to_string(),
                    "chunks": 5, "chunk_count": 5, "complete": true, "have": "f8"})
            })
            .collect();
        expected.sort_by_key(|v| v["endpoint"].as_str().unwrap().to_owned());
        assert_eq!(sources, expected);

        // Errors keep their exit status and stay off stdout.
        let out = peer(&["where", "nothing here", "--json", "--tracker", &ta]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty());
    });
}

/// Several trackers: a dead one and one that holds other content under the
/// same name are named on stderr; stdout is still only JSON, with the first
/// tracker's content.
#[test]
fn trackers_left_out_are_named_on_stderr_only() {
    with_timeout(60, || {
        let s = Scratch::new("json-trackers");
        let x = util::pattern(200_000, 32);
        let y = util::pattern(200_000, 33);
        write(&s.sub("x"), "f", &x);
        write(&s.sub("y"), "f", &y);
        let (t1, t2) = (tracker(), tracker());
        let _sx = seed(t1.local_addr(), &s.path().join("x"), None);
        let _sy = seed(t2.local_addr(), &s.path().join("y"), None);
        let dead = dead_address();
        let all = format!("{},{},{dead}", t1.local_addr(), t2.local_addr());
        for args in [
            vec!["list", "--json", "--tracker", &all],
            vec!["where", "f", "--json", "--tracker", &all],
        ] {
            let out = peer(&args);
            let e = text(&out.stderr);
            assert!(out.status.success(), "{e}");
            let got = objects(&out);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0]["id"], id_of(&x));
            assert!(e.contains(&dead.to_string()), "{e}");
            assert!(
                e.contains(&t2.local_addr().to_string()) && e.contains("other content"),
                "{e}"
            );
        }
    });
}

/// `--long` and `--json` ask the tracker about each file in turn over one
/// connection: a few hundred files take well under a second on loopback.
#[test]
fn listing_300_files_with_their_ids_is_quick() {
    with_timeout(60, || {
        let s = Scratch::new("json-300");
        for i in 0..300 {
            write(
                &s.sub("a"),
                &format!("d{}/f{i}", i % 7),
                &util::pattern(1000 + i, 34),
            );
        }
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let begin = std::time::Instant::now();
        let out = peer(&["list", "--json", "--tracker", &t.local_addr().to_string()]);
        let took = begin.elapsed();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(objects(&out).len(), 300);
        println!("list --json of 300 files: {took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    });
}

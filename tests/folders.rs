//! Issue 13: folders and several files per `peer get`, with the real
//! binaries: a tree of 300 files (0 bytes to a few MiB, nested folders,
//! names with spaces and UTF-8) shared by two peers is fetched whole by
//! `peer get top/`, resumes after a SIGKILL fetching only what is missing,
//! takes nothing from outside its prefix; an unknown folder is an error
//! that writes nothing; `--json` output is parsed here; `peer list PREFIX`.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use util::{Proc, Scratch, addr_in, pattern, peer_bin, with_timeout};

/// The files of the shared tree: relative name → length. 300 under `top/`
/// (most small, a few of a few hundred KiB, one empty, one of 1 MiB), and
/// two outside it whose names share its first letters.
fn tree() -> BTreeMap<String, usize> {
    let mut files = BTreeMap::new();
    for i in 0..300usize {
        let dir = match i % 4 {
            0 => format!("top/d{}", i % 7),
            1 => format!("top/d{}/sub {} été", i % 7, i % 3),
            2 => "top".to_owned(),
            _ => format!("top/d{}/sub {} été/deep/er", i % 7, i % 3),
        };
        let len = match i {
            0 => 0,
            1 => 1 << 20,
            _ if i % 50 == 7 => 200_000 + i * 1000,
            _ => (i * 37) % 9000,
        };
        files.insert(format!("{dir}/file {i} ü.bin"), len);
    }
    files.insert("topx/a.bin".into(), 1000);
    files.insert("other/b.bin".into(), 2000);
    files
}

fn write_tree(dir: &Path, files: &BTreeMap<String, usize>) {
    for (i, (name, len)) in files.iter().enumerate() {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, pattern(*len, i as u64 + 1)).unwrap();
    }
}

fn start_tracker() -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(
        "tracker",
        Command::new(env!("CARGO_BIN_EXE_tracker"))
            .env("RUST_LOG", "warn")
            .args(["--listen", "127.0.0.1:0"]),
    );
    let addr = addr_in(&p.wait_line("listening on"));
    (p, addr)
}

/// `peer share` of `dir` in 16 KiB chunks, uploads capped at `limit`.
fn start_share(t: SocketAddr, dir: &Path, limit: &str) -> Proc {
    let mut p = Proc::spawn(
        "peer share",
        peer_bin()
            .args(["share", "--no-prompt", "--tracker", &t.to_string()])
            .args(["--listen", "127.0.0.1:0", "--chunk-size", "16K"])
            .args(["--upload-limit", limit, "--dir"])
            .arg(dir),
    );
    p.wait_line("registered");
    p
}

fn get(t: SocketAddr, dir: &Path, names: &[&str], extra: &[&str]) -> Command {
    let mut c = peer_bin();
    c.arg("get")
        .args(names)
        .args(["--tracker", &t.to_string(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--dir")
        .arg(dir);
    c
}

/// Every line of stdout parsed as JSON (a line that is not JSON fails).
fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

const FILE_FIELDS: &[&str] = &[
    "type",
    "name",
    "id",
    "length",
    "status",
    "error",
    "path",
    "bytes_downloaded",
    "duplicates",
    "seconds",
    "sources",
];
const SUMMARY_FIELDS: &[&str] = &[
    "type",
    "files",
    "ok",
    "skipped",
    "failed",
    "bytes",
    "bytes_complete",
    "seconds",
    "rate_bytes_per_s",
    "missing",
];

fn check_fields(v: &Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(f).is_some(), "{f} missing in {v}");
    }
}

/// The regular files under `dir` (outside the work folder), relative name
/// → contents.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(at).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let t = e.file_type().unwrap();
            if e.file_name() == ".p2pfs" {
                continue;
            }
            if t.is_dir() {
                walk(base, &p, out);
            } else if t.is_file() {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

#[test]
fn a_folder_downloads_whole_resumes_after_sigkill_and_keeps_to_its_prefix() {
    with_timeout(240, || {
        let s = Scratch::new("folders");
        let files = tree();
        let (a, b) = (s.sub("a"), s.sub("b"));
        write_tree(&a, &files);
        write_tree(&b, &files);
        let (_t, ta) = start_tracker();
        // Capped, so the first run is still going when it is killed.
        let _sa = start_share(ta, &a, "1M");
        let _sb = start_share(ta, &b, "1M");

        // `peer list PREFIX`: whole components only.
        let o = peer_bin()
            .args(["list", "top/", "--tracker", &ta.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let listed = String::from_utf8_lossy(&o.stdout);
        assert_eq!(listed.lines().count(), 300, "{listed}");
        assert!(
            !listed.contains("topx") && !listed.contains("other"),
            "{listed}"
        );

        // An unknown folder: exit 3, and nothing is written.
        let nothing = s.path().join("nothing");
        let o = get(ta, &nothing, &["nope/", "top/"], &[]).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no file under \"nope/\""), "{err}");
        assert!(!nothing.exists(), "an unknown folder wrote {nothing:?}");
        // No name at all: a usage error; so is --id (one file's content)
        // with a folder or several names.
        let o = get(ta, &nothing, &[], &[]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let id = "0".repeat(40);
        for names in [&["top/"][..], &["topx/a.bin", "other/b.bin"]] {
            let o = get(ta, &nothing, names, &["--id", &id]).output().unwrap();
            assert_eq!(o.status.code(), Some(2), "{names:?}: {o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("--id pins the content of one file"), "{err}");
        }
        assert!(!nothing.exists());

        // First run: killed (SIGKILL) once a third of the files are in.
        let dst = s.path().join("dst");
        let mut first = Proc::spawn("peer get", &mut get(ta, &dst, &["top/"], &["--json"]));
        let mut done_first: Vec<(String, u64)> = Vec::new();
        while done_first.len() < 100 {
            let line = first.wait_line("\"type\":\"file\"");
            let v: Value = serde_json::from_str(&line).unwrap();
            check_fields(&v, FILE_FIELDS);
            assert_eq!(v["status"], "ok", "{v}");
            let id = v["id"].as_str().unwrap();
            assert!(
                id.len() == 40 && id.bytes().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
            let name = v["name"].as_str().unwrap().to_owned();
            assert_eq!(v["length"].as_u64(), Some(files[&name] as u64), "{v}");
            let by_sources: u64 = v["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["bytes"].as_u64().unwrap())
                .sum();
            assert_eq!(by_sources, v["bytes_downloaded"].as_u64().unwrap(), "{v}");
            done_first.push((name, files[&v["name"].as_str().unwrap().to_owned()] as u64));
        }
        first.signal("KILL");
        assert_eq!(first.wait_exit(10), None, "killed by a signal");
        let total: u64 = files
            .iter()
            .filter(|(n, _)| n.starts_with("top/"))
            .map(|(_, l)| *l as u64)
            .sum();
        let kept: u64 = done_first.iter().map(|(_, l)| l).sum();
        assert!(kept < total, "the first run was not interrupted");

        // Second run: the rest, and nothing of what was complete.
        let o = get(ta, &dst, &["top/"], &["--json"]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        let lines = json_lines(&o);
        let (summary, per_file) = lines.split_last().unwrap();
        check_fields(summary, SUMMARY_FIELDS);
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["files"], 300);
        assert_eq!(summary["failed"], 0);
        assert_eq!(per_file.len(), 300);
        let by_name: BTreeMap<&str, &Value> = per_file
            .iter()
            .map(|v| {
                check_fields(v, FILE_FIELDS);
                (v["name"].as_str().unwrap(), v)
            })
            .collect();
        for (name, _) in &done_first {
            let v = by_name[name.as_str()];
            assert_eq!(v["status"], "skipped", "{v}");
            assert_eq!(v["bytes_downloaded"], 0, "{v}");
        }
        let fetched = summary["bytes"].as_u64().unwrap();
        assert!(
            fetched <= total - kept,
            "fetched {fetched} bytes again, only {} were missing",
            total - kept
        );
        assert_eq!(summary["bytes_complete"].as_u64(), Some(total));

        // A byte-identical tree, and nothing from outside the prefix.
        let want: BTreeMap<String, Vec<u8>> = read_tree(&a)
            .into_iter()
            .filter(|(n, _)| n.starts_with("top/"))
            .collect();
        let got = read_tree(&dst);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the trees differ");
        assert!(!dst.join("topx").exists() && !dst.join("other").exists());

        // Several names, one twice, and a folder: each file once.
        let o = get(
            ta,
            &dst,
            &["topx/a.bin", "other/", "topx/a.bin"],
            &["--json"],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{o:?}");
        let lines = json_lines(&o);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[2]["files"], 2);
        assert_eq!(
            fs::read(dst.join("topx/a.bin")).unwrap(),
            fs::read(a.join("topx/a.bin")).unwrap()
        );
        // Run again as text: everything is already complete.
        let o = get(ta, &dst, &["topx/a.bin", "other/"], &[])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("skipped  topx/a.bin"), "{text}");
        assert!(text.contains("downloaded 2 of 2 files"), "{text}");
    });
}

//! The newcomer's demo, `./demo.sh`, run end to end over loopback with the
//! binaries cargo built for this test run (P2PFS_BIN_DIR, so CI does not
//! build a second, release, copy), so that CI notices when it breaks.

mod util;

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use util::Scratch;

/// Generous: the demo takes about 10 s on a debug build, its own waits are
/// bounded, and this only catches a hang.
const DEADLINE: Duration = Duration::from_secs(180);

fn demo() -> Command {
    let mut c = Command::new("bash");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh"));
    c
}

/// Whether `bash` runs and finds one of `tools`.
fn have(tools: &str) -> bool {
    Command::new("bash")
        .args([
            "-c",
            &format!("for t in {tools}; do command -v $t && exit 0; done; exit 1"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Kills a whole process group when dropped: the demo's shell and every
/// tracker and peer it started, even if the shell itself is stuck.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_demo_plays_the_whole_scenario_and_every_check_passes() {
    if !have("bash") || !have("sha1sum shasum") {
        eprintln!("skipping the demo test: it needs bash and sha1sum (or shasum)");
        return;
    }
    let s = Scratch::new("demo");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_peer"))
        .parent()
        .expect("binary folder");
    let out_path = s.path().join("demo-output.txt");
    let started = Instant::now();
    let mut child = demo()
        .args(["--size-mib", "8", "--dashboard", "--workdir"])
        .arg(s.path().join("work"))
        .env("P2PFS_BIN_DIR", bin_dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(Stdio::from(
            File::create(s.path().join("demo-errors.txt")).unwrap(),
        ))
        // Its own process group, so a timeout can kill everything it started.
        .process_group(0)
        .spawn()
        .expect("start demo.sh");
    let group = Group(child.id());
    let pgid = child.id();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > DEADLINE {
            drop(group);
            let _ = child.wait();
            panic!(
                "demo.sh did not finish within {DEADLINE:?}; output so far:\n{}",
                fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Every process it started has stopped: the group is empty.
    let group_alive = Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    drop(group);
    let out = fs::read_to_string(&out_path).unwrap();
    let err = fs::read_to_string(s.path().join("demo-errors.txt")).unwrap();
    assert!(
        status.success(),
        "demo.sh failed ({status}):\n{out}\n--- stderr:\n{err}"
    );
    for needle in [
        "tracker listening on 127.0.0.1:",
        "ok: the dashboard answers: open http://127.0.0.1:",
        "peer 1 on 127.0.0.1:",
        "climbing.jpg: 8388608 bytes (8.0 MiB), 32 chunks",
        "ok: peer 2 received",
        "ok: peer 3 received",
        "ok: all 4194304 bytes came from peer 2",
        "ok: demo/2/climbing.jpg",
        "ok: demo/3/climbing.jpg",
        "ok: demo/1/bear.jpg",
        "no files on the network",
        "demo passed",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(
        out.contains(" of climbing.jpg from 127.0.0.1:"),
        "no per-chunk lines:\n{out}"
    );
    // Three complete sources once both downloads are done.
    assert!(
        out.matches("32/32  ################################")
            .count()
            >= 4,
        "{out}"
    );
    assert!(!group_alive, "demo.sh left processes running");
}

#[test]
fn the_demo_explains_itself_and_rejects_unknown_options() {
    if !have("bash") {
        eprintln!("skipping: no bash");
        return;
    }
    let out = demo().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--keep",
        "--size-mib",
        "P2PFS_BIN_DIR",
        "sha1sum",
        "climbing.jpg",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let out = demo().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option"));
}

//! The programs' user interface, run as child processes: what happens when
//! the reader of stdout goes away, and when a signal arrives at each phase.

mod util;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::{Scratch, peer_bin, seed, tracker, wait_until, with_timeout};

/// The status a program ends with when its stdout was closed: 128 +
/// SIGPIPE, as a shell shows for `ls | head`.
const CLOSED: i32 = 141;

/// A child killed and reaped on drop, with stdout and stderr piped.
struct Child2(Child);

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Child2 {
    Child2(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peer"),
    )
}

/// Waits up to `secs` for the exit; returns the exit code and stderr.
fn finish(c: &mut Child2, secs: u64) -> (Option<i32>, String) {
    let end = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = c.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < end, "did not exit within {secs} s");
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = c.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

fn quiet(code: Option<i32>, err: &str, what: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
    assert!(err.trim().is_empty(), "{what} printed on stderr: {err}");
    assert_eq!(code, Some(CLOSED), "{what}: exit status ({err})");
}

/// Issue 11 item 11: `peer list | head -1`, `peer get … | head -1`,
/// `peer share | head -1` and `peer --help | head -1` panicked ("failed
/// printing to stdout: Broken pipe"), and the sharing peer kept running
/// with a dead printer thread.
#[test]
fn a_closed_stdout_ends_each_command_quietly() {
    with_timeout(120, || {
        let s = Scratch::new("cli-pipe");
        let data = util::pattern(300_000, 31);
        fs::write(s.sub("seed").join("f.bin"), &data).unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let _seed = seed(t.local_addr(), &s.path().join("seed"), None);

        // The reader is gone before the first line.
        for args in [
            vec!["list", "--tracker", &ta],
            vec!["where", "f.bin", "--tracker", &ta],
            vec!["share", "--help"],
        ] {
            let mut c = spawn(peer_bin().args(&args));
            drop(c.0.stdout.take());
            let (code, err) = finish(&mut c, 20);
            quiet(code, &err, &args.join(" "));
        }

        // The reader takes one line, then goes; the file is in place first.
        let dir = s.sub("got");
        let mut c = spawn(
            peer_bin()
                .args(["get", "f.bin", "--tracker", &ta, "--listen", "127.0.0.1:0"])
                .arg("--dir")
                .arg(&dir),
        );
        head_1(&mut c);
        let (code, err) = finish(&mut c, 30);
        quiet(code, &err, "peer get | head -1");
        assert_eq!(fs::read(dir.join("f.bin")).unwrap(), data);
        assert!(!dir.join("f.bin.part").exists());

        // A sharing peer prints events later ("registered …"): when that
        // fails it leaves the network and ends.
        let mut c = spawn(
            peer_bin()
                .args(["share", "--no-prompt", "--tracker", &ta])
                .args(["--listen", "127.0.0.1:0", "--dir"])
                .arg(s.path().join("seed")),
        );
        head_1(&mut c);
        let (code, err) = finish(&mut c, 20);
        quiet(code, &err, "peer share | head -1");
        wait_until(10, "only the in-process seed holds f.bin", || {
            p2pfs::peer::client::locate(t.local_addr(), "f.bin", false)
                .is_ok_and(|l| l.sources.len() == 1)
        });
    });
}

/// Reads one line of the child's stdout, then closes it.
fn head_1(c: &mut Child2) {
    let mut r = BufReader::new(c.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    r.read_line(&mut line).expect("a first line");
    assert!(!line.is_empty());
}

/// Bytes the process `pid` has read so far (`rchar` in /proc/PID/io).
fn bytes_read(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Issue 11 item 14 (the prompt side): Ctrl-C and SIGTERM while
/// `peer share` hashes a big file used to be ignored until the hashing was
/// done (22 s for 12 GiB); the peer then registered and left with status
/// 0. Now it stops within a chunk, says so, registers nothing and exits
/// with 128 + the signal number.
#[test]
fn a_signal_during_hashing_stops_share_promptly_with_the_interrupted_status() {
    with_timeout(120, || {
        let s = Scratch::new("cli-hash-signal");
        let dir = s.sub("big");
        // Sparse: no disk space, but hashing reads (and SHA-1s) 16 GiB,
        // far longer than the bound below.
        let f = fs::File::create(dir.join("huge.img")).unwrap();
        f.set_len(16 << 30).unwrap();
        drop(f);
        let t = tracker();
        let ta = t.local_addr().to_string();
        for (sig, status, name) in [("INT", 130, "Ctrl-C (SIGINT)"), ("TERM", 143, "SIGTERM")] {
            let mut c = spawn(
                peer_bin()
                    .args(["share", "--no-prompt", "--tracker", &ta])
                    .args(["--listen", "127.0.0.1:0", "--dir"])
                    .arg(&dir),
            );
            let pid = c.0.id();
            wait_until(30, "hashing under way", || bytes_read(pid) > 64 << 20);
            let sent = Instant::now();
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig}");
            let (code, err) = finish(&mut c, 10);
            let took = sent.elapsed();
            assert!(took < Duration::from_secs(3), "SIG{sig}: took {took:?}");
            assert_eq!(code, Some(status), "SIG{sig}: {err}");
            assert!(
                err.contains(&format!("peer: {name}: stopped while hashing")),
                "SIG{sig}: {err}"
            );
            let (files, _) = p2pfs::peer::client::list_files(t.local_addr()).unwrap();
            assert!(files.is_empty(), "nothing registered: {files:?}");
            assert!(!dir.join(".p2pfs-hashes").exists(), "nothing cached");
        }
    });
}

//! The programs' user interface, run as child processes: what happens when
//! the reader of stdout goes away, and when a signal arrives at each phase.

mod util;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use util::{Scratch, peer_bin, seed, tracker, wait_until, with_timeout};

/// The status a program ends with when its stdout was closed: 128 +
/// SIGPIPE, as a shell shows for `ls | head`.
const CLOSED: i32 = 141;

/// Held by each test while it runs: a process another test forks at the
/// moment this one closes its end of a child's stdout would inherit that
/// end for a moment and keep the pipe open.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    // Log records (a warning that the tracker went away) may appear; no
    // message of the program's own.
    let own: Vec<&str> = err.lines().filter(|l| !l.starts_with('[')).collect();
    assert!(own.is_empty(), "{what} printed on stderr: {err}");
    assert_eq!(code, Some(CLOSED), "{what}: exit status ({err})");
}

/// The write end of a pipe whose reader has already gone: a child's first
/// write to it fails, whatever the timing. (The read end belonged to a
/// `true` process, which has exited.)
fn closed_pipe() -> Stdio {
    let mut t = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let w = t.stdin.take().expect("stdin of true");
    t.wait().expect("wait for true");
    Stdio::from(w)
}

/// Issue 11 item 11: `peer list | head -1`, `peer get … | head -1`,
/// `peer share | head -1` and `peer --help | head -1` panicked ("failed
/// printing to stdout: Broken pipe"), and the sharing peer kept running
/// with a dead printer thread.
#[test]
fn a_closed_stdout_ends_each_command_quietly() {
    with_timeout(120, || {
        let _serial = serial();
        let s = Scratch::new("cli-pipe");
        // 512 KiB from a seed sending 256 KiB/s: about two seconds, so the
        // reader below is gone long before the summary.
        let data = util::pattern(512 << 10, 31);
        fs::write(s.sub("seed").join("f.bin"), &data).unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let _seed = seed(t.local_addr(), &s.path().join("seed"), Some(256 << 10));
        let early = s.sub("early");
        let share_dir = s.path().join("seed");

        // The reader is gone before the first line.
        let os = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|a| a.into()).collect() };
        let listen = ["--listen", "127.0.0.1:0", "--tracker", &ta, "--dir"];
        let mut get_early = os(&["get", "f.bin"]);
        get_early.extend(os(&listen));
        get_early.push(early.clone().into());
        let mut share_early = os(&["share", "--no-prompt"]);
        share_early.extend(os(&listen));
        share_early.push(share_dir.clone().into());
        let cases = [
            os(&["list", "--tracker", &ta]),
            os(&["where", "f.bin", "--tracker", &ta]),
            os(&["share", "--help"]),
            os(&["--help"]),
            get_early,
            share_early,
        ];
        for args in cases {
            let what = format!("{args:?}");
            let mut c = Child2(
                peer_bin()
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(closed_pipe())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let (code, err) = finish(&mut c, 20);
            quiet(code, &err, &what);
        }
        assert!(!early.join("f.bin").exists(), "ended at its first line");

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

        // A sharing peer prints events later: once its reader is gone, the
        // next one (the tracker going away) ends it. It leaves and exits.
        let mut t2 = tracker();
        let mut c = spawn(
            peer_bin()
                .args([
                    "share",
                    "--no-prompt",
                    "--tracker",
                    &t2.local_addr().to_string(),
                ])
                .args(["--listen", "127.0.0.1:0", "--dir"])
                .arg(&share_dir),
        );
        let mut r = BufReader::new(c.0.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.contains("registered") {
            line.clear();
            assert!(
                r.read_line(&mut line).expect("stdout") > 0,
                "no registered line"
            );
        }
        drop(r);
        t2.shutdown();
        let (code, err) = finish(&mut c, 20);
        quiet(code, &err, "peer share | head, then an event");
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
        let _serial = serial();
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

/// A program as a user runs it: no RUST_LOG from the test environment.
fn user_bin(name: &str) -> Command {
    let mut c = Command::new(match name {
        "tracker" => env!("CARGO_BIN_EXE_tracker"),
        _ => env!("CARGO_BIN_EXE_peer"),
    });
    c.env_remove("RUST_LOG").env_remove("P2PFS_TRACKER");
    c
}

/// Reads the child's stdout lines until one contains `needle`.
fn read_until(r: &mut impl BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("stdout") > 0,
            "no line with {needle:?}"
        );
        if line.contains(needle) {
            return line;
        }
    }
}

fn sigterm(c: &Child2) {
    let ok = Command::new("kill")
        .args(["-TERM", &c.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

/// Issue 14: the tracker printed `tracker listening on` twice (a log line
/// and a plain one); a refused name read "name registered with other
/// content: the name is already registered with other content" plus a
/// warning. One plain message per event; log records only when asked for.
#[test]
fn one_message_per_event_and_no_log_records_unless_asked() {
    with_timeout(60, || {
        let _serial = serial();
        let mut c = spawn(user_bin("tracker").args(["--listen", "127.0.0.1:0"]));
        let mut out = BufReader::new(c.0.stdout.take().expect("stdout"));
        read_until(&mut out, "tracker listening on");
        sigterm(&c);
        let (code, err) = finish(&mut c, 10);
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(code, Some(0), "{err}");
        assert!(err.is_empty(), "no log records by default: {err}");
        assert!(!rest.contains("listening"), "said once: {rest}");

        let s = Scratch::new("cli-messages");
        fs::write(s.sub("a").join("f.txt"), b"the first content").unwrap();
        let b = s.sub("b");
        fs::write(b.join("f.txt"), b"other content, same name").unwrap();
        fs::write(b.join("g.txt"), b"fine").unwrap();
        let t = tracker();
        let _a = seed(t.local_addr(), &s.path().join("a"), None);
        let mut c = spawn(
            user_bin("peer")
                .args([
                    "share",
                    "--no-prompt",
                    "--tracker",
                    &t.local_addr().to_string(),
                ])
                .args(["--listen", "127.0.0.1:0", "--dir"])
                .arg(&b),
        );
        let mut out = BufReader::new(c.0.stdout.take().expect("stdout"));
        let refused = read_until(&mut out, "refused");
        assert_eq!(
            refused.trim_end(),
            "refused by the tracker: f.txt: the name is already registered with other \
             content (17 bytes in 65536-byte chunks)"
        );
        sigterm(&c);
        let (code, err) = finish(&mut c, 10);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.is_empty(), "no log records by default: {err}");
    });
}

/// Runs `peer share --no-prompt ARGS --dir DIR` against `t` until it is
/// serving, then stops it with SIGTERM; returns (exit code, stdout, stderr).
fn share_briefly(t: &str, dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = spawn(
        user_bin("peer")
            .args([
                "share",
                "--no-prompt",
                "--tracker",
                t,
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .arg("--dir")
            .arg(dir),
    );
    let mut out = BufReader::new(c.0.stdout.take().expect("stdout"));
    let mut text = String::new();
    let mut line = String::new();
    while !line.contains("serving chunks on") {
        line.clear();
        if out.read_line(&mut line).expect("stdout") == 0 {
            break;
        }
        text.push_str(&line);
    }
    sigterm(&c);
    let (code, err) = finish(&mut c, 10);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    text.push_str(&rest);
    (code, text, err)
}

/// Issue 14: `share` printed one `sharing …` line per file (2,001 lines
/// for a big folder). One summary line; the list only with -v.
#[test]
fn share_sums_up_its_files_and_lists_them_only_with_v() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-summary");
        let d = s.sub("d");
        fs::write(d.join("a.txt"), vec![1u8; 1000]).unwrap();
        fs::write(d.join("b.txt"), vec![2u8; 2048]).unwrap();
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/c.txt"), b"c").unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let (code, out, err) = share_briefly(&ta, &d, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("sharing 3 files, 3.0 KiB\n"), "{out}");
        assert!(!out.contains("a.txt"), "no list without -v: {out}");
        let log = s.path().join("share.log");
        let (code, out, err) = share_briefly(&ta, &d, &["-v", "--log-file", log.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        for f in ["a.txt", "b.txt", "sub/c.txt"] {
            assert!(
                out.contains(&format!("  {f}  ")),
                "{f} listed with -v: {out}"
            );
        }
        assert!(out.contains("sharing 3 files, 3.0 KiB\n"), "{out}");
        assert!(err.is_empty(), "records go to the log file: {err}");
        let log = fs::read_to_string(&log).unwrap();
        assert!(log.contains("chunk server listening on"), "{log}");
    });
}

/// Issue 14: `share -v` promised "log every request" but logged only
/// connections; `get -v` replaced the bar with its records. Each chunk
/// sent is logged, and --log-file keeps the records off the terminal.
#[test]
fn v_logs_every_chunk_on_both_sides_and_log_file_takes_the_records() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-verbose");
        let d = s.sub("d");
        fs::write(d.join("f.bin"), util::pattern(3 << 10, 5)).unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let share_log = s.path().join("share.log");
        let mut sharer = spawn(
            user_bin("peer")
                .args([
                    "share",
                    "--no-prompt",
                    "--tracker",
                    &ta,
                    "--listen",
                    "127.0.0.1:0",
                ])
                .args(["--chunk-size", "1K", "-v", "--log-file"])
                .arg(&share_log)
                .arg("--dir")
                .arg(&d),
        );
        let mut out = BufReader::new(sharer.0.stdout.take().expect("stdout"));
        read_until(&mut out, "registered");
        let get_log = s.path().join("get.log");
        let got = s.sub("got");
        let o = user_bin("peer")
            .args([
                "get",
                "f.bin",
                "--tracker",
                &ta,
                "--listen",
                "127.0.0.1:0",
                "-v",
            ])
            .arg("--log-file")
            .arg(&get_log)
            .arg("--dir")
            .arg(&got)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        assert!(o.stderr.is_empty(), "records in the file: {o:?}");
        let log = fs::read_to_string(&get_log).unwrap();
        for i in 0..3 {
            assert!(log.contains(&format!("chunk {i} of f.bin from")), "{log}");
        }
        sigterm(&sharer);
        let (code, err) = finish(&mut sharer, 10);
        assert_eq!(code, Some(0), "{err}");
        let log = fs::read_to_string(&share_log).unwrap();
        for i in 0..3 {
            assert!(
                log.contains(&format!("sent chunk {i} of \"f.bin\"")),
                "{log}"
            );
        }
    });
}

/// Issue 14 (the share side): the `.part` of an interrupted download was
/// reported as "skipped …: unfinished download (.part)".
#[test]
fn share_says_which_downloads_can_be_resumed_and_how() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-unfinished");
        let d = s.sub("d");
        fs::write(d.join("a.txt"), b"a").unwrap();
        util::plant_unfinished(&d, "big.iso");
        let t = tracker();
        let ta = t.local_addr().to_string();
        let (code, out, err) = share_briefly(&ta, &d, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(!out.contains("skipped"), "{out}");
        let want = format!(
            "unfinished download in {}: big.iso; `peer get NAME --tracker {ta} --dir {}` resumes one",
            d.display(),
            d.display()
        );
        assert!(out.contains(&want), "{want:?} not in:\n{out}");
    });
}

/// Issue 14, conventions: --version, -h, P2PFS_TRACKER, a host name for
/// the tracker, -q, and exit statuses that tell failures apart (2 usage,
/// 3 not found or refused, 4 local I/O, 5 network).
#[test]
fn versions_environment_quiet_mode_and_exit_statuses() {
    with_timeout(90, || {
        let _serial = serial();
        let version = format!("{}\n", env!("CARGO_PKG_VERSION"));
        for (bin, args) in [
            ("peer", &["--version"][..]),
            ("peer", &["-V"]),
            ("tracker", &["--version"]),
        ] {
            let o = user_bin(bin).args(args).output().unwrap();
            assert!(o.status.success(), "{bin} {args:?}: {o:?}");
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                format!("{bin} {version}")
            );
        }
        let o = user_bin("peer").args(["get", "-h"]).output().unwrap();
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("Usage: peer get"), "{help}");
        assert!(
            help.contains("P2PFS_TRACKER"),
            "the variable is documented: {help}"
        );

        let s = Scratch::new("cli-conventions");
        let d = s.sub("d");
        let data = util::pattern(5000, 9);
        fs::write(d.join("f.bin"), &data).unwrap();
        let t = tracker();
        let port = t.local_addr().port();
        let _seed = seed(t.local_addr(), &d, None);
        let run = |args: &[&str], env: Option<String>| {
            let mut c = user_bin("peer");
            c.args(args);
            if let Some(v) = env {
                c.env("P2PFS_TRACKER", v);
            }
            c.output().unwrap()
        };
        // The tracker from the environment, by host name.
        let o = run(&["list"], Some(format!("localhost:{port}")));
        assert!(o.status.success(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("f.bin"));
        // No tracker at all: a usage error.
        let o = run(&["list"], None);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("P2PFS_TRACKER"));
        // Usage errors: 2, with the subcommand's help named.
        let o = run(&["share", "--tracker", "x"], None);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("Run peer share --help"));
        let o = run(&["frobnicate"], None);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let ta = t.local_addr().to_string();
        let got = s.sub("got");
        let get = |name: &str, dir: &std::path::Path, extra: &[&str]| {
            user_bin("peer")
                .args(["get", name, "--tracker", &ta, "--listen", "127.0.0.1:0"])
                .args(extra)
                .arg("--dir")
                .arg(dir)
                .output()
                .unwrap()
        };
        // Not on the network: 3.
        let o = get("nope.bin", &got, &[]);
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        // A folder that cannot be made (a file is in the way): 4.
        fs::write(s.path().join("a-file"), b"x").unwrap();
        let o = get("f.bin", &s.path().join("a-file"), &[]);
        assert_eq!(o.status.code(), Some(4), "{o:?}");
        // No tracker listening there: 5.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().to_string();
        drop(closed);
        let o = run(&["list", "--tracker", &dead], None);
        assert_eq!(o.status.code(), Some(5), "{o:?}");
        // -q: errors only, and the file is there.
        let o = get("f.bin", &got, &["-q"]);
        assert!(o.status.success(), "{o:?}");
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
        assert_eq!(fs::read(got.join("f.bin")).unwrap(), data);
    });
}

/// Issue 14: shell completions, from the same definitions as --help,
/// printed by `peer completions SHELL`. The bash one is loaded into bash
/// and asked to complete.
#[test]
fn completions_are_printed_and_complete_in_bash() {
    with_timeout(60, || {
        let o = user_bin("peer")
            .args(["completions", "bash"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let s = Scratch::new("cli-completions");
        let script = s.path().join("peer.bash");
        fs::write(&script, &o.stdout).unwrap();
        let complete = |words: &str, cword: usize| {
            let probe = format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _peer; echo \"${{COMPREPLY[@]}}\"",
                script.display()
            );
            let r = Command::new("bash").args(["-c", &probe]).output().unwrap();
            assert!(r.status.success(), "{r:?}");
            String::from_utf8_lossy(&r.stdout).trim().to_owned()
        };
        assert_eq!(complete("peer sh", 1), "share");
        assert_eq!(complete("peer get --up", 2), "--upload-limit");
        for (shell, first) in [("zsh", "#compdef peer"), ("fish", "complete")] {
            let o = user_bin("peer")
                .args(["completions", shell])
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains(first) && text.contains("share"),
                "{shell}: {text}"
            );
        }
        let o = user_bin("peer")
            .args(["completions", "bash", "tracker"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("--max-per-ip"));
        let o = user_bin("peer")
            .args(["completions", "tcsh"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{o:?}");
    });
}

/// Issue 14: `--upload-limit 10` means 10 bytes per second, and nothing
/// said so. The limit is echoed, and one this low is warned about.
#[test]
fn the_upload_limit_is_echoed_and_a_tiny_one_is_warned_about() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-limit");
        let d = s.sub("d");
        fs::write(d.join("a.txt"), b"a").unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let (code, out, err) = share_briefly(&ta, &d, &["--upload-limit", "10"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("uploads: limited to 10 B/s for all peers together"),
            "{out}"
        );
        assert!(
            err.contains("warning: at 10 B/s one 1.0 MiB chunk takes 29 h to send"),
            "{err}"
        );
        let (code, out, err) = share_briefly(&ta, &d, &["--upload-limit", "10M"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("uploads: limited to 10.0 MiB/s"), "{out}");
        assert!(err.is_empty(), "{err}");
    });
}

/// Issue 14: `peer share --dir d missing.txt` said "nothing to share
/// (serving anyway)" and kept running, and so did a share whose every file
/// the tracker refused. Both exit 3 with the reasons; an empty folder
/// still serves (the prompt's use).
#[test]
fn share_exits_when_nothing_it_was_given_can_be_shared() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-nothing");
        let d = s.sub("d");
        let t = tracker();
        let ta = t.local_addr().to_string();
        let o = user_bin("peer")
            .args(["share", "--no-prompt", "--tracker", &ta, "--dir"])
            .arg(&d)
            .arg("missing.txt")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("none of the files named can be shared"),
            "{err}"
        );
        assert!(err.contains("missing.txt"), "{err}");

        // Every file refused by the tracker (another peer has the names
        // with other content).
        fs::write(s.sub("first").join("f.txt"), b"first").unwrap();
        let _first = seed(t.local_addr(), &s.path().join("first"), None);
        fs::write(d.join("f.txt"), b"second, other content").unwrap();
        let mut c = spawn(
            user_bin("peer")
                .args([
                    "share",
                    "--no-prompt",
                    "--tracker",
                    &ta,
                    "--listen",
                    "127.0.0.1:0",
                ])
                .arg("--dir")
                .arg(&d),
        );
        let (code, err) = finish(&mut c, 20);
        assert_eq!(code, Some(3), "{err}");
        assert!(err.contains("the tracker refused every file"), "{err}");
        assert!(
            err.contains("f.txt: the name is already registered"),
            "{err}"
        );

        // An empty folder serves until stopped.
        let (code, out, err) = share_briefly(&ta, &s.sub("empty"), &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("nothing to share in"), "{out}");
    });
}

/// Issue 14: `peer share` started twice on one folder showed up as two
/// sources without a word. The second is refused; a lock left by a
/// killed peer is taken over.
#[test]
fn a_second_share_of_the_same_folder_is_refused() {
    with_timeout(60, || {
        let _serial = serial();
        let s = Scratch::new("cli-lock");
        let d = s.sub("d");
        fs::write(d.join("a.txt"), b"a").unwrap();
        let t = tracker();
        let ta = t.local_addr().to_string();
        let share = || {
            let mut c = user_bin("peer");
            c.args([
                "share",
                "--no-prompt",
                "--tracker",
                &ta,
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(&d);
            c
        };
        let mut first = spawn(&mut share());
        let mut out = BufReader::new(first.0.stdout.take().expect("stdout"));
        let serving = read_until(&mut out, "serving chunks on");
        let port = util::addr_in(&serving).port();
        let o = share().output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("is already shared by another peer")
                && err.contains(&format!("process {}", first.0.id()))
                && err.contains(&format!("port {port}")),
            "{err}"
        );
        // Killed: its lock stays, stale; the next share takes it over.
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        assert!(d.join(".p2pfs-lock").exists());
        let (code, out, err) = share_briefly(&ta, &d, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("sharing 1 file"), "{out}");
        assert!(!d.join(".p2pfs-lock").exists(), "removed at exit");
    });
}

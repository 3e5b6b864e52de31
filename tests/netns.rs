//! Multi-host: the tracker and three peers each in their own network
//! namespace, with their own address on a private test subnet, joined by a
//! bridge that lives in a fifth namespace. One peer shares a file, two
//! download it at the same time (and from each other), and `peer where`
//! must list every peer at the address it is reachable at in its namespace,
//! never a loopback address.
//!
//! Needs root and iproute2. Everything is created inside namespaces this
//! test makes (named `p2pfs-<pid>-<role>`): the veth pairs are created in
//! the bridge namespace with their other end moved straight into a peer's
//! namespace, so the host's interfaces and routes are never touched, and
//! the subnet 10.231.0.0/24 exists only inside them. Everything is deleted
//! on drop, on failure too. When the environment cannot do this, the test
//! prints a notice and passes.

mod util;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use util::{Proc, Scratch, addr_in, wait_until, with_timeout};

const SUBNET_PREFIX: &str = "10.231.0";

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one run; deleted (with every interface in them) on
/// drop.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("p2pfs-{}-{role}", std::process::id())
    }

    /// Bridge namespace "br", and one namespace per role with address
    /// 10.231.0.<host> on its eth0, plugged into the bridge.
    fn build(roles: &[(&str, u8)]) -> Result<Net, String> {
        let mut net = Net { names: Vec::new() };
        let br = net.ns("br");
        ip(&["netns", "add", &br])?;
        net.names.push(br.clone());
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (role, host) in roles {
            let ns = net.ns(role);
            ip(&["netns", "add", &ns])?;
            net.names.push(ns.clone());
            let port = format!("v-{role}");
            // Both ends are born in the bridge namespace; the far one moves
            // straight into the role's namespace as eth0.
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{SUBNET_PREFIX}.{host}/24");
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces; a veth pair goes
        // with either end.
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Removes namespaces left by earlier runs that were killed before they
/// could clean up (their process is gone).
fn sweep_stale() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("p2pfs-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some("not running as root".into());
    }
    if ip(&["-V"]).is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    None
}

/// `cmd` run inside namespace `ns`.
fn in_ns(ns: &str, bin: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, bin]).env("RUST_LOG", "warn");
    c
}

#[test]
fn a_swarm_across_network_namespaces() {
    if let Some(why) = unsupported() {
        println!("NOTICE: multi-host test skipped: {why}");
        return;
    }
    with_timeout(120, || {
        sweep_stale();
        let roles = [("t", 1), ("p1", 11), ("p2", 12), ("p3", 13)];
        let net = match Net::build(&roles) {
            Ok(n) => n,
            Err(e) => {
                println!("NOTICE: multi-host test skipped: cannot build namespaces: {e}");
                return;
            }
        };
        let started = Instant::now();
        let peer = env!("CARGO_BIN_EXE_peer");
        let s = Scratch::new("netns");
        let data = util::pattern(3 << 20, 41);
        fs::create_dir_all(s.path().join("p1")).unwrap();
        fs::write(s.path().join("p1/movie.bin"), &data).unwrap();

        let mut tracker = Proc::spawn(
            "tracker",
            in_ns(&net.ns("t"), env!("CARGO_BIN_EXE_tracker")).args(["--listen", "0.0.0.0:0"]),
        );
        let port = addr_in(&tracker.wait_line("listening on")).port();
        let taddr = format!("{SUBNET_PREFIX}.1:{port}");

        // The sharer listens on every interface of its namespace; slow
        // enough that the two downloaders also trade with each other.
        let mut sharer = Proc::spawn(
            "peer share",
            in_ns(&net.ns("p1"), peer)
                .args(["share", "--tracker", &taddr, "--listen", "0.0.0.0:0"])
                .args(["--chunk-size", "64K", "--upload-limit", "2M", "--dir"])
                .arg(s.path().join("p1")),
        );
        let p1_port = addr_in(&sharer.wait_line("serving chunks on")).port();
        sharer.wait_line("registered");

        let get = |role: &str| {
            let mut p = Proc::spawn(
                "peer get",
                in_ns(&net.ns(role), peer)
                    .args(["get", "movie.bin", "--tracker", &taddr])
                    .args(["--listen", "0.0.0.0:0", "--seed", "--dir"])
                    .arg(s.path().join(role)),
            );
            let port = addr_in(&p.wait_line("serving chunks on")).port();
            (p, port)
        };
        let (mut g2, p2_port) = get("p2");
        let (mut g3, p3_port) = get("p3");
        for g in [&mut g2, &mut g3] {
            let line = g.wait_line("downloaded movie.bin");
            assert!(line.contains("3145728 bytes"), "{line}");
            g.wait_line("seeding movie.bin");
        }
        for role in ["p2", "p3"] {
            assert_eq!(
                fs::read(s.path().join(role).join("movie.bin")).unwrap(),
                data
            );
        }

        // Every holder at its namespace address, with the whole file.
        let want: Vec<SocketAddr> = [(11, p1_port), (12, p2_port), (13, p3_port)]
            .iter()
            .map(|(h, p)| format!("{SUBNET_PREFIX}.{h}:{p}").parse().unwrap())
            .collect();
        let mut text = String::new();
        wait_until(20, "`peer where` lists all three peers", || {
            let out = in_ns(&net.ns("p1"), peer)
                .args(["where", "movie.bin", "--tracker", &taddr])
                .output()
                .unwrap();
            text = String::from_utf8_lossy(&out.stdout).into_owned();
            want.iter().all(|a| {
                text.lines()
                    .any(|l| l.contains(&a.to_string()) && l.contains("48/48"))
            })
        });
        assert!(text.contains("3 sources"), "{text}");
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert!(!text.contains("0.0.0.0"), "{text}");
        println!("{text}");
        println!(
            "multi-host swarm (5 namespaces, 3 MiB to two peers) took {:.2} s",
            started.elapsed().as_secs_f64()
        );
        for p in [&g2, &g3, &sharer, &tracker] {
            p.signal("TERM");
        }
        for p in [&mut g2, &mut g3, &mut sharer, &mut tracker] {
            assert_eq!(p.wait_exit(10), Some(0), "{} exits cleanly", p.name);
        }
        drop(net);
        let left = ip(&["netns", "list"]).map(|o| o.stdout).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&left).contains(&format!("p2pfs-{}-", std::process::id())),
            "namespaces removed"
        );
    });
}

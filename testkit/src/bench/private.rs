//! Scenario 8: a private network (issue 12), measured against the open
//! network in the same run.
//!
//! Single source, no limit, 1 GiB: two trackers and two seeds of the same
//! file (hard links to it), one pair open and one keyed (`--key-file`);
//! each repetition downloads from the open pair and then from the keyed
//! pair, each after the same page-cache primer as scenario 1. Figures: the
//! keyed download rate against the open one of the same repetition
//! (target >= 0.6), and CPU seconds per GiB of the downloader and of the
//! seed, keyed and open. Then scenarios 2 and 3 (multi-source and flash
//! crowd with capped uploads) run again with every process keyed; their
//! targets are the same as without a key. First, the candidate ciphers are
//! measured in this process on one core (sealing and opening full-size
//! records through snow, as p2pfs does), the figures behind the choice of
//! `Noise_NNpsk0_25519_AESGCM_SHA256` with ring.

use std::path::Path;
use std::time::{Duration, Instant};

use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};

use super::util::{GIB, MIB, R, Scratch, Stream, clear_dir, median, rate, size, write_file};
use super::{Ctx, Row, SeedProc, TrackerProc, single, spawn_get, swarm};

pub const SCENARIO: &str = "8 private network";

/// One download: (seconds, downloader CPU s, seed CPU s).
type Measured = (f64, f64, f64);

/// One download's figures (see [`Measured`]).
fn download(
    ctx: &Ctx,
    tracker: &TrackerProc,
    seed: &SeedProc,
    name: &str,
    dl: &Path,
    len: u64,
) -> R<Measured> {
    let seed_cpu0 = seed.proc.cpu_s().unwrap_or(0.0);
    let mut get = spawn_get(ctx, tracker.addr, name, dl, None, &[], false)?;
    let timeout = Duration::from_secs(60) + Duration::from_secs(len / (20 * MIB));
    let (done, _) = get.wait_line(Stream::Out, "downloaded ", timeout)?;
    let seed_cpu1 = seed.proc.cpu_s().unwrap_or(0.0);
    let exit = get.wait_exit(Duration::from_secs(30))?;
    if exit.code != Some(0) {
        return Err(format!("peer get exited with {:?}", exit.code));
    }
    clear_dir(dl)?;
    Ok((
        done.duration_since(get.started).as_secs_f64(),
        exit.cpu_s,
        seed_cpu1 - seed_cpu0,
    ))
}

pub fn run(ctx: &mut Ctx, rows: &mut Vec<Row>) -> R<()> {
    let sc = Scratch::new("private")?;
    let key = sc.path.join("net.key");
    p2pfs::net::key::NetworkKey::write_new(&key).map_err(|e| e.to_string())?;
    ciphers(ctx, rows)?;
    let r = single_source(ctx, &sc, &key, rows).and_then(|()| capped(ctx, &key, rows));
    ctx.key_file = None;
    r
}

fn single_source(ctx: &mut Ctx, sc: &Scratch, key: &Path, rows: &mut Vec<Row>) -> R<()> {
    let len = if ctx.quick { 16 * MIB } else { GIB };
    let name = "private.bin";
    let (open_dir, keyed_dir, dl) = (sc.sub("open")?, sc.sub("keyed")?, sc.sub("dl")?);
    write_file(&open_dir.join(name), len, 7)?;
    std::fs::hard_link(open_dir.join(name), keyed_dir.join(name))
        .map_err(|e| format!("hard link: {e}"))?;
    ctx.key_file = None;
    let open_tracker = TrackerProc::start(ctx, &[])?;
    let open_seed = SeedProc::start(ctx, open_tracker.addr, &open_dir, None, None)?;
    ctx.key_file = Some(key.to_path_buf());
    let keyed_tracker = TrackerProc::start(ctx, &[])?;
    let keyed_seed = SeedProc::start(ctx, keyed_tracker.addr, &keyed_dir, None, None)?;
    let primer = sc.path.join("primer");
    // (open, keyed) per repetition, each (seconds, get CPU, seed CPU).
    let mut reps = Vec::new();
    for r in 0..ctx.reps {
        ctx.key_file = None;
        single::prime(&primer, len)?;
        let open = download(ctx, &open_tracker, &open_seed, name, &dl, len)?;
        ctx.key_file = Some(key.to_path_buf());
        single::prime(&primer, len)?;
        let keyed = download(ctx, &keyed_tracker, &keyed_seed, name, &dl, len)?;
        eprintln!(
            "  rep {}: open {:.2} s (CPU get {:.2} s, seed {:.2} s), keyed {:.2} s (CPU get {:.2} s, seed {:.2} s)",
            r + 1,
            open.0,
            open.1,
            open.2,
            keyed.0,
            keyed.1,
            keyed.2
        );
        reps.push((open, keyed));
    }
    let l = len as f64;
    let gib = l / GIB as f64;
    let m = |f: fn(&(Measured, Measured)) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let ratio = m(|(o, k)| o.0 / k.0);
    rows.push(
        Row::new(
            SCENARIO,
            format!("single source, {}, keyed: download rate", size(len)),
            rate(l / m(|(_, k)| k.0)),
        )
        .baseline(format!(
            "open network, same run: {}",
            rate(l / m(|(o, _)| o.0))
        ))
        .ratio(ratio)
        .target(">= 0.60", ratio >= 0.6),
    );
    rows.push(
        Row::new(
            SCENARIO,
            "CPU s per GiB, downloader, keyed",
            format!("{:.2}", m(|(_, k)| k.1) / gib),
        )
        .baseline(format!("open: {:.2}", m(|(o, _)| o.1) / gib)),
    );
    rows.push(
        Row::new(
            SCENARIO,
            "CPU s per GiB, seed, keyed",
            format!("{:.2}", m(|(_, k)| k.2) / gib),
        )
        .baseline(format!("open: {:.2}", m(|(o, _)| o.2) / gib)),
    );
    Ok(())
}

/// Scenarios 2 and 3 with every process keyed, their rows relabelled.
fn capped(ctx: &mut Ctx, key: &Path, rows: &mut Vec<Row>) -> R<()> {
    ctx.key_file = Some(key.to_path_buf());
    // The plot shows the open network's runs; keep them.
    let plot = std::mem::take(&mut ctx.plot);
    let mut keyed = Vec::new();
    let r = swarm::run_multi(ctx, &mut keyed).and_then(|()| swarm::run_flash(ctx, &mut keyed));
    ctx.plot = plot;
    for mut row in keyed {
        let what = if row.scenario == swarm::MULTI {
            "multi-source"
        } else {
            "flash crowd"
        };
        row.figure = format!("keyed {what}: {}", row.figure);
        row.scenario = SCENARIO.to_owned();
        rows.push(row);
    }
    r
}

/// Makes the resolver a candidate is measured with.
type Resolver = fn() -> Box<dyn CryptoResolver + Send>;

/// Seal and open rates of one cipher on one core, in bytes per second.
fn cipher_rate(name: &str, resolver: Resolver, bytes: u64) -> R<(f64, f64)> {
    let e = |x: snow::Error| format!("{name}: {x}");
    let mut i = handshake_state(name, resolver, true).map_err(e)?;
    let mut r = handshake_state(name, resolver, false).map_err(e)?;
    let (mut m, mut p) = ([0u8; 128], [0u8; 128]);
    let n = i.write_message(&[], &mut m).map_err(e)?;
    r.read_message(&m[..n], &mut p).map_err(e)?;
    let n = r.write_message(&[], &mut m).map_err(e)?;
    i.read_message(&m[..n], &mut p).map_err(e)?;
    let (i, r) = (
        i.into_stateless_transport_mode().map_err(e)?,
        r.into_stateless_transport_mode().map_err(e)?,
    );
    let plain = vec![0x5au8; p2pfs::limits::MAX_RECORD_PLAINTEXT];
    let records = (bytes / plain.len() as u64).max(1);
    let mut sealed = vec![0u8; p2pfs::limits::MAX_RECORD_LEN];
    let t = Instant::now();
    for k in 0..records {
        i.write_message(k, &plain, &mut sealed).map_err(e)?;
    }
    let seal_s = t.elapsed().as_secs_f64();
    let mut opened = vec![0u8; p2pfs::limits::MAX_RECORD_LEN];
    let mut open_s = 0.0;
    for k in 0..records {
        let n = i.write_message(k, &plain, &mut sealed).map_err(e)?;
        let t = Instant::now();
        r.read_message(k, &sealed[..n], &mut opened).map_err(e)?;
        open_s += t.elapsed().as_secs_f64();
    }
    let total = (records * plain.len() as u64) as f64;
    Ok((total / seal_s, total / open_s))
}

fn handshake_state(
    name: &str,
    resolver: Resolver,
    initiator: bool,
) -> Result<snow::HandshakeState, snow::Error> {
    let psk = [7u8; 32];
    let b = snow::Builder::with_resolver(name.parse()?, resolver())
        .prologue(b"bench")?
        .psk(0, &psk)?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
}

fn ring_first() -> Box<dyn CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(RingResolver),
        Box::new(DefaultResolver),
    ))
}

/// snow's own primitives (ring only for the random numbers, which this
/// build of snow's default resolver does not have).
fn pure_rust() -> Box<dyn CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(DefaultResolver),
        Box::new(RingResolver),
    ))
}

/// The cipher candidates, one row each.
fn ciphers(ctx: &Ctx, rows: &mut Vec<Row>) -> R<()> {
    let bytes = if ctx.quick { 16 * MIB } else { 512 * MIB };
    let candidates: [(&str, &str, Resolver); 3] = [
        (
            "AES-256-GCM, ring (chosen)",
            "Noise_NNpsk0_25519_AESGCM_SHA256",
            ring_first,
        ),
        (
            "ChaCha20-Poly1305, ring",
            "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
            ring_first,
        ),
        (
            "ChaCha20-Poly1305, pure Rust",
            "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
            pure_rust,
        ),
    ];
    for (label, name, resolver) in candidates {
        let (seal, open) = cipher_rate(name, resolver, bytes)?;
        eprintln!("  {label}: seal {}, open {}", rate(seal), rate(open));
        rows.push(
            Row::new(
                SCENARIO,
                format!("cipher {label}: seal / open, 1 core"),
                format!("{} / {}", rate(seal), rate(open)),
            )
            .baseline(format!("{} records", size(bytes))),
        );
    }
    Ok(())
}

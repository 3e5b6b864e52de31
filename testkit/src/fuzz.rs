//! The wire-decoder fuzz engine shared by `examples/fuzz` (the big run:
//! `cargo run --release --example fuzz -- --cases 1000000`) and
//! `tests/fuzz_wire.rs` (a fixed-seed slice in CI).
//!
//! Each case is built from its own seed (`seed` mixed with the case number),
//! so any failing case can be replayed alone with `--start N --cases 1`. A
//! case generates a few valid messages (every type, fields from empty to
//! their limits), encodes them, damages them (bit flips, byte edits,
//! inserts, deletes, truncation, spliced frames, boundary values written
//! over length and count fields, fixed-up or lying length prefixes) or
//! replaces them with pure noise, and then feeds the bytes to every decoder
//! entry point: `Message::decode_frame` on the whole buffer, `read_message`
//! over the stream (in one piece and through a reader returning random
//! short reads, which must agree), `read_frame`, and `Message::decode` on
//! every frame's payload.
//!
//! What must hold, whatever the bytes: no panic; the largest single
//! allocation stays within what the bytes actually sent justify (a global
//! allocator records it per thread); anything that decodes re-encodes to
//! exactly the bytes it came from (one meaning per byte string, nothing
//! silently ignored) and holds no more content than its frame carried.
//!
//! Written without proptest so a million cases take seconds, not minutes.

use std::collections::BTreeMap;
use std::io::Read;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use p2pfs::wire::{
    self, Digest, ErrorCode, FileEntry, FileOutcome, FileSummary, Have, Locations, MAX_FRAME_LEN,
    Message, Source, WireError,
};

// ---- Allocation probe ---------------------------------------------------

pub use crate::alloc::{PeakAlloc, check_bounded, peak_alloc};

/// What `read_frame` may reserve before a payload's bytes arrive
/// (`INITIAL_FRAME_ALLOC` in wire.rs, private there).
pub const PREALLOC_BOUND: usize = (1 << 20) + 64;

/// Worst ratio of in-memory size to smallest wire size of a counted item
/// (a list is preallocated from its count, which is checked against the
/// bytes present first).
fn amplification() -> usize {
    [
        size_of::<FileEntry>().div_ceil(2 + 8 + 4 + 4 + 1),
        size_of::<FileOutcome>().div_ceil(2),
        size_of::<FileSummary>().div_ceil(2 + 8),
        size_of::<Source>().div_ceil(1 + 4 + 2),
        1,
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
}

// ---- Randomness -----------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough to drive a fuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The seed of case `i` of a run seeded `seed`.
pub fn case_seed(seed: u64, i: u64) -> u64 {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64()
}

// ---- Valid messages -----------------------------------------------------

const CHARS: &[char] = &[
    'a', 'b', 'z', '0', '9', '.', '/', '-', '_', ' ', '\\', '\0', '\n', '\u{7f}', 'é', 'ß', '€',
    '漢', '🦀', '\u{200b}', '\u{feff}',
];

/// A string of at most `max` bytes: usually short, sometimes at the limit.
fn text(r: &mut Rng, max: usize) -> String {
    match r.below(20) {
        0 => "n".repeat(max),
        1 => "é".repeat(max / 2),
        2 => String::new(),
        _ => {
            let n = r.below(24);
            let mut s = String::new();
            for _ in 0..n {
                let c = if r.chance(4) {
                    char::from_u32(r.below(0x11_0000) as u32).unwrap_or('x')
                } else {
                    CHARS[r.below(CHARS.len())]
                };
                if s.len() + c.len_utf8() > max {
                    break;
                }
                s.push(c);
            }
            s
        }
    }
}

fn name(r: &mut Rng) -> String {
    text(r, wire::MAX_NAME_LEN)
}

fn u64_edge(r: &mut Rng) -> u64 {
    match r.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => r.next_u64() & 0xffff,
        _ => r.next_u64(),
    }
}

fn u32_edge(r: &mut Rng) -> u32 {
    match r.below(6) {
        0 => 0,
        1 => u32::MAX,
        2 => r.below(64) as u32,
        _ => r.next_u64() as u32,
    }
}

fn addr(r: &mut Rng) -> SocketAddr {
    let port = r.next_u64() as u16;
    if r.chance(3) {
        let mut ip = [0u8; 16];
        ip.iter_mut().for_each(|b| *b = r.byte());
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
    } else {
        let ip = [r.byte(), r.byte(), r.byte(), r.byte()];
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
    }
}

fn digest(r: &mut Rng) -> Digest {
    let mut d = [0u8; 20];
    d.iter_mut().for_each(|b| *b = r.byte());
    d
}

/// A bitmap for `count` chunks with the padding bits clear.
fn bitmap(r: &mut Rng, count: usize) -> Vec<u8> {
    let mut v = r.bytes(count.div_ceil(8));
    let rem = count % 8;
    if rem != 0 {
        if let Some(last) = v.last_mut() {
            *last &= 0xffu8 << (8 - rem);
        }
    }
    v
}

/// Codes 1..=12, or unnamed codes above 12 (never `Other(c)` for c <= 12:
/// that is not canonical).
fn refusal_code(r: &mut Rng) -> ErrorCode {
    if r.chance(4) {
        ErrorCode::Other(13 + (r.next_u64() % u64::from(u16::MAX - 12)) as u16)
    } else {
        ErrorCode::from_u16(1 + r.below(12) as u16)
    }
}

fn file_entry(r: &mut Rng) -> FileEntry {
    let n = r.below(12);
    FileEntry {
        name: name(r),
        length: u64_edge(r),
        chunk_size: u32_edge(r),
        hashes: (0..n).map(|_| digest(r)).collect(),
        have: if r.chance(2) {
            Have::All
        } else {
            Have::Some(bitmap(r, n))
        },
    }
}

/// Any message, every field within its limit and consistent.
pub fn message(r: &mut Rng) -> Message {
    match r.below(15) {
        0 => Message::Hello {
            version: if r.chance(2) {
                wire::PROTOCOL_VERSION
            } else {
                r.next_u64() as u16
            },
        },
        1 => Message::Error {
            code: if r.chance(10) {
                ErrorCode::Other(0)
            } else {
                refusal_code(r)
            },
            message: text(r, wire::MAX_MESSAGE_LEN),
        },
        2 => Message::Ok,
        3 => Message::Keepalive,
        4 => Message::Register {
            endpoint: addr(r),
            files: (0..r.below(4)).map(|_| file_entry(r)).collect(),
        },
        5 => Message::RegisterReply {
            results: (0..r.below(8))
                .map(|_| {
                    if r.chance(2) {
                        FileOutcome::Accepted
                    } else {
                        FileOutcome::Refused {
                            code: refusal_code(r),
                            reason: text(r, wire::MAX_MESSAGE_LEN),
                        }
                    }
                })
                .collect(),
        },
        6 => Message::ListFiles,
        7 => Message::FileList {
            files: (0..r.below(8))
                .map(|_| FileSummary {
                    name: name(r),
                    length: u64_edge(r),
                })
                .collect(),
            truncated: r.chance(2),
        },
        8 => Message::Locate {
            name: name(r),
            with_hashes: r.chance(2),
        },
        9 => {
            let n = r.below(40);
            Message::Locations(Locations {
                name: name(r),
                length: u64_edge(r),
                chunk_size: u32_edge(r),
                chunk_count: n as u32,
                hashes: r.chance(2).then(|| (0..n).map(|_| digest(r)).collect()),
                sources: (0..r.below(6))
                    .map(|_| Source {
                        addr: addr(r),
                        have: bitmap(r, n),
                    })
                    .collect(),
            })
        }
        10 => Message::ChunkRegister {
            name: name(r),
            index: u32_edge(r),
        },
        11 => Message::Leave,
        12 => Message::ChunkRequest {
            name: name(r),
            index: u32_edge(r),
        },
        13 => Message::Withdraw { name: name(r) },
        _ => {
            let len = if r.chance(50) {
                r.below(70_000)
            } else {
                r.below(300)
            };
            Message::ChunkData {
                index: u32_edge(r),
                data: r.bytes(len),
            }
        }
    }
}

pub fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    if let Err(e) = m.encode(&mut b) {
        panic!("the generator made an unencodable {}: {e}", m.kind());
    }
    b
}

// ---- Damage ---------------------------------------------------------------

/// Values that sit on or just past a boundary, for length and count fields.
const EDGE_U32: &[u32] = &[
    0,
    1,
    2,
    4,
    5,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x3ff,
    0x400,
    0x401,
    0xffff,
    0x1_0000,
    1 << 19,
    (1 << 19) + 1,
    1 << 20,
    MAX_FRAME_LEN - 1,
    MAX_FRAME_LEN,
    MAX_FRAME_LEN + 1,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
];

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if at + 4 <= b.len() {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    if at + 2 <= b.len() {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Sets the length prefix to what follows it, so that payload damage
/// reaches the message decoder instead of the frame length check.
fn fix_len(b: &mut [u8]) {
    if b.len() >= 4 {
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
    }
}

fn mutate_once(r: &mut Rng, b: &mut Vec<u8>) {
    let n = b.len();
    match r.below(11) {
        0 if n > 0 => {
            let at = r.below(n);
            b[at] ^= 1 << r.below(8);
        }
        1 if n > 0 => {
            let at = r.below(n);
            b[at] = r.byte();
        }
        2 => {
            let at = r.below(n + 1);
            let v = r.byte();
            b.insert(at, v);
        }
        3 if n > 0 => {
            let at = r.below(n);
            let k = 1 + r.below(8.min(n - at));
            b.drain(at..at + k);
        }
        4 => {
            let at = r.below(n + 1);
            b.truncate(at);
        }
        5 if n > 0 => {
            let at = r.below(n);
            let v = EDGE_U32[r.below(EDGE_U32.len())];
            put_u32(b, at, v);
        }
        6 if n > 0 => {
            let at = r.below(n);
            let v = EDGE_U32[r.below(EDGE_U32.len())] as u16;
            put_u16(b, at, v);
        }
        7 => {
            // A lying length prefix.
            let v = EDGE_U32[r.below(EDGE_U32.len())];
            put_u32(b, 0, v);
        }
        8 if n > 5 => {
            // Another type byte on this payload.
            b[4] = if r.chance(2) {
                wire::ty::ALL[r.below(wire::ty::ALL.len())]
            } else {
                r.byte()
            };
        }
        9 => {
            // Splice in a piece of another valid frame.
            let other = encode(&message(r));
            let from = r.below(other.len());
            let to = from + r.below(other.len() - from + 1);
            let at = r.below(n + 1);
            b.splice(at..at, other[from..to].iter().copied());
        }
        _ => {
            let at = r.below(n + 1);
            let k = 1 + r.below(16);
            let extra = r.bytes(k);
            b.splice(at..at, extra);
        }
    }
}

/// How a case's bytes were made (for the statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Valid frames, untouched (must all decode and round-trip).
    Valid,
    /// Valid frames, damaged, length prefix left as damaged.
    Mutated,
    /// Damaged, then the length prefix fixed to the bytes present.
    MutatedFixedLen,
    /// A correct header over random payload bytes.
    RandomPayload,
    /// Pure noise.
    Noise,
}

/// The bytes of one case.
pub fn case_bytes(r: &mut Rng) -> (Kind, Vec<u8>) {
    match r.below(20) {
        0..=2 => {
            let mut b = Vec::new();
            for _ in 0..1 + r.below(3) {
                b.extend(encode(&message(r)));
            }
            (Kind::Valid, b)
        }
        3..=10 => {
            let mut b = encode(&message(r));
            for _ in 0..1 + r.below(4) {
                mutate_once(r, &mut b);
            }
            if r.chance(4) {
                b.extend(encode(&message(r)));
            }
            (Kind::Mutated, b)
        }
        11..=15 => {
            let mut b = encode(&message(r));
            for _ in 0..1 + r.below(3) {
                mutate_once(r, &mut b);
            }
            fix_len(&mut b);
            (Kind::MutatedFixedLen, b)
        }
        16..=17 => {
            let ty = if r.chance(4) {
                r.byte()
            } else {
                wire::ty::ALL[r.below(wire::ty::ALL.len())]
            };
            let k = r.below(200);
            let payload = r.bytes(k);
            let mut b = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
            b.push(ty);
            b.extend(payload);
            (Kind::RandomPayload, b)
        }
        _ => {
            let n = r.below(600);
            let mut b = r.bytes(n);
            if r.chance(2) && b.len() >= 2 {
                // Small lengths are the interesting ones.
                b[0] = 0;
                b[1] = 0;
            }
            (Kind::Noise, b)
        }
    }
}

// ---- Checks ---------------------------------------------------------------

/// A property that failed, with the bytes that broke it.
#[derive(Debug)]
pub struct Failure {
    pub case: u64,
    pub what: String,
    pub bytes: Vec<u8>,
}

/// A reader that hands out at most a few bytes per `read`, like a socket
/// delivering a frame in pieces.
struct Dribble<'a> {
    buf: &'a [u8],
    rng: Rng,
}

impl Read for Dribble<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (1 + self.rng.below(7)).min(out.len()).min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = &self.buf[n..];
        Ok(n)
    }
}

/// Outcome of one decode, reduced to what the statistics and the agreement
/// check need.
fn summary(r: &Result<Option<Message>, WireError>) -> String {
    match r {
        Ok(Some(m)) => format!("{m:?}"),
        Ok(None) => "end".into(),
        Err(e) => error_name(e).into(),
    }
}

pub fn error_name(e: &WireError) -> &'static str {
    match e {
        WireError::Io(_) => "Io",
        WireError::FrameTooLarge { .. } => "FrameTooLarge",
        WireError::EmptyFrame => "EmptyFrame",
        WireError::Truncated { .. } => "Truncated",
        WireError::UnknownType(_) => "UnknownType",
        WireError::TrailingBytes { .. } => "TrailingBytes",
        WireError::BadMagic(_) => "BadMagic",
        WireError::InvalidUtf8 { .. } => "InvalidUtf8",
        WireError::LimitExceeded { .. } => "LimitExceeded",
        WireError::BadAddressFamily(_) => "BadAddressFamily",
        WireError::BadFlag { .. } => "BadFlag",
        WireError::BadBitmap => "BadBitmap",
        WireError::Invalid(_) => "Invalid",
        WireError::NoAnswer { .. } => "NoAnswer",
    }
}

/// Statistics of a run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub cases: u64,
    /// Frames handed to a decoder (each frame of a stream counts).
    pub frames: u64,
    pub bytes: u64,
    /// Frames that decoded to a message (and round-tripped).
    pub decoded: u64,
    /// Errors by kind (first error of each stream).
    pub errors: BTreeMap<&'static str, u64>,
    pub kinds: BTreeMap<String, u64>,
    /// Largest single allocation seen in any decode.
    pub max_alloc: usize,
    /// Largest allocation relative to its input (bytes allocated per input
    /// byte, inputs of at least 64 bytes).
    pub max_alloc_ratio: f64,
    pub elapsed: Duration,
}

/// The largest single allocation a decoder may make reading from `rest`:
/// the up-front reservation for the length the next frame claims (capped at
/// [`PREALLOC_BOUND`]), about twice the bytes really present, or the
/// per-item overhead of those bytes, whichever is largest.
pub fn alloc_bound(rest: &[u8]) -> usize {
    let claimed = match rest.get(..4) {
        Some(p) => u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
        None => 0,
    };
    claimed
        .min(PREALLOC_BOUND)
        .max(2 * rest.len() + 64)
        .max(amplification() * rest.len() + 64)
}

/// Runs every decoder over `bytes` and checks the properties.
fn check(bytes: &[u8], kind: Kind, r: &mut Rng, st: &mut Stats) -> Result<(), String> {
    let note_peak = |peak: usize, rest: &[u8], st: &mut Stats| -> Result<(), String> {
        st.max_alloc = st.max_alloc.max(peak);
        if rest.len() >= 64 {
            st.max_alloc_ratio = st.max_alloc_ratio.max(peak as f64 / rest.len() as f64);
        }
        let bound = alloc_bound(rest);
        if peak > bound {
            return Err(format!("allocated {peak} bytes (bound {bound})"));
        }
        Ok(())
    };

    // 1. The buffer as one frame.
    let (whole, peak) = peak_alloc(|| Message::decode_frame(bytes));
    note_peak(peak, bytes, st)?;
    st.frames += 1;
    if let Ok(m) = &whole {
        if encode(m) != bytes {
            return Err(format!("{} is not canonical (decode_frame)", m.kind()));
        }
        check_bounded(m, bytes.len() - 4)?;
    }

    // 2. As a stream, in one piece; 3. the same stream in dribbles: both
    // readers must see the same sequence of results.
    let mut src = bytes;
    let mut seen = Vec::new();
    for _ in 0..=bytes.len() {
        let before = src.len();
        let rest = src;
        let (res, peak) = peak_alloc(|| wire::read_message(&mut src));
        note_peak(peak, rest, st)?;
        st.frames += 1;
        seen.push(summary(&res));
        match res {
            Ok(Some(m)) => {
                st.decoded += 1;
                let used = &bytes[bytes.len() - before..bytes.len() - src.len()];
                if encode(&m) != used {
                    return Err(format!("{} is not canonical (read_message)", m.kind()));
                }
                check_bounded(&m, used.len() - 4)?;
            }
            Ok(None) => {
                if !src.is_empty() {
                    return Err("read_message saw the end with bytes left".into());
                }
                break;
            }
            Err(e) => {
                *st.errors.entry(error_name(&e)).or_insert(0) += 1;
                break;
            }
        }
    }
    if kind == Kind::Valid && seen.last().map(String::as_str) != Some("end") {
        return Err(format!("valid frames did not all decode: {seen:?}"));
    }
    let mut dribble = Dribble {
        buf: bytes,
        rng: Rng::new(r.next_u64()),
    };
    for (k, want) in seen.iter().enumerate() {
        let rest = dribble.buf;
        let (res, peak) = peak_alloc(|| wire::read_message(&mut dribble));
        note_peak(peak, rest, st)?;
        let got = summary(&res);
        if &got != want {
            return Err(format!(
                "message {k}: read in pieces gave {got}, in one piece {want}"
            ));
        }
    }

    // 4. Frames only, then each payload through the message decoder.
    let mut src = bytes;
    for _ in 0..=bytes.len() {
        let before = src.len();
        match wire::read_frame(&mut src) {
            Ok(Some(f)) => {
                if before - src.len() != 5 + f.payload.len() {
                    return Err("read_frame consumed more or less than its frame".into());
                }
                if f.payload.len() >= MAX_FRAME_LEN as usize {
                    return Err("read_frame returned an over-limit payload".into());
                }
                let (_, peak) = peak_alloc(|| Message::decode(f.type_code, &f.payload));
                note_peak(peak, &f.payload, st)?;
                st.frames += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(())
}

/// Runs cases `start..start + cases` of run `seed`. Stops at the first
/// failure (a panic inside a decoder is caught and reported as one).
pub fn run(
    seed: u64,
    start: u64,
    cases: u64,
    mut progress: impl FnMut(&Stats),
) -> (Stats, Option<Failure>) {
    let mut st = Stats::default();
    let t0 = Instant::now();
    for i in start..start + cases {
        let mut r = Rng::new(case_seed(seed, i));
        let (kind, bytes) = case_bytes(&mut r);
        st.cases += 1;
        st.bytes += bytes.len() as u64;
        *st.kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
        let out = panic::catch_unwind(AssertUnwindSafe(|| check(&bytes, kind, &mut r, &mut st)));
        let what = match out {
            Ok(Ok(())) => None,
            Ok(Err(what)) => Some(what),
            Err(p) => Some(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        if let Some(what) = what {
            st.elapsed = t0.elapsed();
            return (
                st,
                Some(Failure {
                    case: i,
                    what,
                    bytes,
                }),
            );
        }
        if st.cases % 100_000 == 0 {
            st.elapsed = t0.elapsed();
            progress(&st);
        }
    }
    st.elapsed = t0.elapsed();
    (st, None)
}

/// The bytes as hex, 32 per line.
pub fn hex(b: &[u8]) -> String {
    b.chunks(32)
        .map(|l| {
            l.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

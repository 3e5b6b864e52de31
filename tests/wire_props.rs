//! Property tests of the wire codec (`src/wire.rs`) and a check that the hex
//! dumps in `docs/protocol.md` are exactly what the encoder produces.
//!
//! Why: the decoder reads bytes from anyone on the network, so "never panics,
//! never allocates more than the bytes actually sent justify, and every byte
//! string has at most one meaning" is checked against generated, arbitrary
//! and mutated input rather than a few hand-picked samples. The document is
//! what a third-party client is written from, so its examples are parsed out
//! of the Markdown and compared byte for byte with the encoder.
//!
//! Deterministic: every property runs a fixed number of cases from a fixed
//! RNG seed and writes no regression files, so a failure reproduces exactly
//! and a run takes a few seconds.
//!
//! Allocation is measured, not guessed: this test binary installs a global
//! allocator that records, per thread and only while armed, the largest single
//! allocation request. Tests run on several threads; the record is
//! thread-local so they do not disturb each other.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use p2pfs::chunks::{self, Bitmap, Geometry};
use p2pfs::wire::{
    self, Digest, ErrorCode, FileEntry, FileOutcome, FileSummary, Have, Locations, MAX_FRAME_LEN,
    Message, Source, WireError, chunk_data_header, validate_name,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

// ---- Allocation probe ---------------------------------------------------

use testkit::alloc::{PeakAlloc, peak_alloc};
use testkit::fuzz::{PREALLOC_BOUND, alloc_bound};

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

// ---- Config -------------------------------------------------------------

/// Fixed case count and seed; no failure-persistence files in the tree.
fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5032_5046), // "P2PF"
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

// ---- Strategies: valid messages -----------------------------------------

/// Any UTF-8 (including multi-byte and control characters: the codec does
/// not apply the name rules), at most `max_chars` chars = `4 * max_chars` bytes.
fn short_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(|v| v.into_iter().collect())
}

/// A string field limited to `max` bytes: usually short, sometimes exactly
/// at the limit (in 1-byte and in 2-byte characters).
fn text_field(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => short_text(24),
        1 => Just("n".repeat(max)),
        1 => Just("é".repeat(max / 2)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    text_field(wire::MAX_NAME_LEN)
}

fn message_text() -> impl Strategy<Value = String> {
    text_field(wire::MAX_MESSAGE_LEN)
}

/// IPv4 or IPv6; V6 with flowinfo and scope id 0 (they are not on the wire).
fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 20]>()
}

/// A have-bitmap for `count` chunks: `ceil(count / 8)` bytes, padding bits 0.
fn bitmap(count: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), count.div_ceil(8)).prop_map(move |mut v| {
        let rem = count % 8;
        if rem != 0
            && let Some(last) = v.last_mut()
        {
            *last &= 0xffu8 << (8 - rem);
        }
        v
    })
}

/// Codes 1..=14 (named) and unnamed codes above 14. `Other(c)` for c <= 14
/// is not canonical (it decodes as the named code), so it is never generated.
fn refusal_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        (1u16..=14).prop_map(ErrorCode::from_u16),
        (15u16..=u16::MAX).prop_map(ErrorCode::Other),
    ]
}

/// An Error message may also carry code 0 (`Other(0)`); only a refusal in a
/// RegisterReply may not, because 0 there means "accepted".
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![9 => refusal_code(), 1 => Just(ErrorCode::Other(0))]
}

fn file_entry() -> impl Strategy<Value = FileEntry> {
    (0usize..12)
        .prop_flat_map(|n| {
            (
                name(),
                any::<u64>(),
                any::<u32>(),
                vec(digest(), n),
                proptest::option::of(bitmap(n)),
            )
        })
        .prop_map(|(name, length, chunk_size, hashes, have)| FileEntry {
            name,
            length,
            chunk_size,
            hashes,
            have: have.map_or(Have::All, Have::Some),
        })
}

fn outcome() -> impl Strategy<Value = FileOutcome> {
    prop_oneof![
        Just(FileOutcome::Accepted),
        (refusal_code(), message_text())
            .prop_map(|(code, reason)| FileOutcome::Refused { code, reason }),
    ]
}

fn locations() -> impl Strategy<Value = Locations> {
    (0u32..40)
        .prop_flat_map(|n| {
            (
                name(),
                any::<u64>(),
                any::<u32>(),
                Just(n),
                proptest::option::of(vec(digest(), n as usize)),
                vec((addr(), bitmap(n as usize)), 0..6),
            )
        })
        .prop_map(
            |(name, length, chunk_size, chunk_count, hashes, sources)| Locations {
                name,
                length,
                chunk_size,
                chunk_count,
                hashes,
                sources: sources
                    .into_iter()
                    .map(|(addr, have)| Source { addr, have })
                    .collect(),
            },
        )
}

/// Every variant, every field within its limit and consistent with the
/// others, sizes kept small.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<u16>().prop_map(|version| Message::Hello { version }),
        (error_code(), message_text()).prop_map(|(code, message)| Message::Error { code, message }),
        Just(Message::Ok),
        Just(Message::Keepalive),
        (addr(), vec(file_entry(), 0..4))
            .prop_map(|(endpoint, files)| Message::Register { endpoint, files }),
        vec(outcome(), 0..8).prop_map(|results| Message::RegisterReply { results }),
        Just(Message::ListFiles),
        (
            vec(
                (name(), any::<u64>()).prop_map(|(name, length)| FileSummary { name, length }),
                0..8
            ),
            any::<bool>()
        )
            .prop_map(|(files, truncated)| Message::FileList { files, truncated }),
        (name(), any::<bool>())
            .prop_map(|(name, with_hashes)| Message::Locate { name, with_hashes }),
        locations().prop_map(Message::Locations),
        (name(), any::<u32>()).prop_map(|(name, index)| Message::ChunkRegister { name, index }),
        Just(Message::Leave),
        name().prop_map(|name| Message::Withdraw { name }),
        (name(), any::<u32>()).prop_map(|(name, index)| Message::ChunkRequest { name, index }),
        (any::<u32>(), vec(any::<u8>(), 0..300))
            .prop_map(|(index, data)| Message::ChunkData { index, data }),
    ]
}

// ---- Strategies: damage -------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipBit(i, bit) if !b.is_empty() => {
            let at = i.index(b.len());
            b[at] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) if !b.is_empty() => {
            let at = i.index(b.len());
            b[at] = *v;
        }
        Mutation::Insert(i, v) => {
            let at = i.index(b.len() + 1);
            b.insert(at, *v);
        }
        Mutation::Delete(i) if !b.is_empty() => {
            let at = i.index(b.len());
            b.remove(at);
        }
        Mutation::Truncate(i) => {
            let at = i.index(b.len() + 1);
            b.truncate(at);
        }
        _ => {}
    }
}

/// Rewrites the length prefix to match the bytes after it, so that damage
/// inside the payload reaches the message decoder instead of being caught
/// by the frame length check.
fn fix_len(b: &mut [u8]) {
    if b.len() >= 4 {
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
    }
}

// ---- Helpers ------------------------------------------------------------

fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    if let Err(e) = m.encode(&mut b) {
        panic!("encoding a valid {} failed: {e}", m.kind());
    }
    b
}

fn fail(what: &str, e: &WireError) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

/// Every heap-backed field of a decoded message holds no more than the frame
/// carried (see the shared `testkit::alloc::check_bounded`).
fn check_bounded(m: &Message, len: usize) -> Result<(), TestCaseError> {
    testkit::alloc::check_bounded(m, len).map_err(TestCaseError::fail)
}

/// Runs every decoder entry point over `bytes` and checks, whatever the
/// bytes: no panic (a panic fails the case), bounded allocation, and
/// canonical decoding (a frame that decodes re-encodes to the same bytes, so
/// no message has two encodings and no bytes are silently ignored).
fn check_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    // What the receiver may legitimately allocate: the up-front reservation
    // (no more than the claimed length), about twice the bytes really
    // present, or the per-item struct overhead of those bytes; the same
    // bound the fuzzer checks.
    let bound = alloc_bound(bytes);

    // 1. One complete frame in memory.
    let (r, peak) = peak_alloc(|| Message::decode_frame(bytes));
    prop_assert!(peak <= bound, "decode_frame allocated {peak} > {bound}");
    if let Ok(m) = &r {
        prop_assert_eq!(&encode(m), bytes, "{} is not canonical", m.kind());
        check_bounded(m, bytes.len() - 4)?;
    }

    // 2. A stream of frames: read_message until end, error, or no progress.
    let mut src = bytes;
    for _ in 0..=bytes.len() {
        let before = src.len();
        let (r, peak) = peak_alloc(|| wire::read_message(&mut src));
        prop_assert!(peak <= bound, "read_message allocated {peak} > {bound}");
        match r {
            Ok(Some(m)) => {
                let used = &bytes[bytes.len() - before..bytes.len() - src.len()];
                prop_assert_eq!(&encode(&m), used, "{} is not canonical", m.kind());
                check_bounded(&m, used.len() - 4)?;
            }
            Ok(None) => {
                prop_assert!(src.is_empty());
                break;
            }
            Err(_) => break,
        }
    }

    // 3. Frames only (no message decoding): each frame is exactly its prefix.
    let mut src = bytes;
    for _ in 0..=bytes.len() {
        let before = src.len();
        match wire::read_frame(&mut src) {
            Ok(Some(f)) => {
                prop_assert_eq!(before - src.len(), 5 + f.payload.len());
                prop_assert!(f.payload.len() < MAX_FRAME_LEN as usize);
                // 4. The payload decoder on its own, with the frame's type.
                let _ = Message::decode(f.type_code, &f.payload);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(())
}

// ---- Properties ---------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// (a) decode(encode(m)) == m, through every entry point, and the frame
    /// header is what the document says.
    #[test]
    fn every_message_round_trips(m in message()) {
        let b = encode(&m);
        prop_assert!(b.len() >= wire::FRAME_HEADER_LEN);
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        prop_assert_eq!(len, b.len() - 4, "len counts the type byte and the payload");
        prop_assert!(len <= MAX_FRAME_LEN as usize);
        prop_assert_eq!(b[4], m.type_code());

        let d = Message::decode_frame(&b).map_err(|e| fail("decode_frame", &e))?;
        prop_assert_eq!(&d, &m);
        let d = Message::decode(b[4], &b[5..]).map_err(|e| fail("decode", &e))?;
        prop_assert_eq!(&d, &m);

        let mut src = &b[..];
        let d = wire::read_message(&mut src).map_err(|e| fail("read_message", &e))?;
        prop_assert_eq!(d.as_ref(), Some(&m));
        let end = wire::read_message(&mut src).map_err(|e| fail("read_message", &e))?;
        prop_assert!(end.is_none(), "clean end of stream after the frame");

        let mut w = Vec::new();
        wire::write_message(&mut w, &m).map_err(|e| fail("write_message", &e))?;
        prop_assert_eq!(&w, &b);

        // Extra consistency with chunks.rs: every bitmap the codec accepts is
        // one chunks::Bitmap accepts, and ChunkData starts with its header.
        match &m {
            Message::Locations(l) => {
                for s in &l.sources {
                    prop_assert!(Bitmap::from_bytes(l.chunk_count, &s.have).is_ok());
                }
            }
            Message::Register { files, .. } => {
                for f in files {
                    if let Have::Some(bits) = &f.have {
                        prop_assert!(Bitmap::from_bytes(f.hashes.len() as u32, bits).is_ok());
                    }
                }
            }
            Message::ChunkData { index, data } => {
                let h = chunk_data_header(*index, data.len())
                    .map_err(|e| fail("chunk_data_header", &e))?;
                prop_assert_eq!(&b[..wire::CHUNK_DATA_HEADER_LEN], &h[..]);
            }
            _ => {}
        }
        check_bounded(&m, len)?;
    }

    /// (a) Several frames back to back on one stream come out in order.
    #[test]
    fn a_stream_of_messages_round_trips(ms in vec(message(), 0..6)) {
        let mut b = Vec::new();
        for m in &ms {
            b.extend_from_slice(&encode(m));
        }
        let mut src = &b[..];
        for m in &ms {
            let d = wire::read_message(&mut src).map_err(|e| fail("read_message", &e))?;
            prop_assert_eq!(d.as_ref(), Some(m));
        }
        let end = wire::read_message(&mut src).map_err(|e| fail("read_message", &e))?;
        prop_assert!(end.is_none());
    }

    /// (b) Arbitrary bytes never panic any decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        check_decoders(&bytes)?;
    }

    /// (b) Arbitrary payloads behind a correct frame header (so the message
    /// decoders, not the frame check, see the noise) never panic.
    #[test]
    fn arbitrary_payloads_never_panic(
        type_code in prop_oneof![3 => proptest::sample::select(wire::ty::ALL), 1 => any::<u8>()],
        payload in vec(any::<u8>(), 0..600),
    ) {
        let mut b = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        b.push(type_code);
        b.extend_from_slice(&payload);
        check_decoders(&b)?;
    }

    /// (c) Damaged valid frames (bits flipped, bytes set, inserted, deleted,
    /// cut off), with the length prefix left as it was or fixed up to reach
    /// the message decoder, never panic: they error or decode canonically.
    #[test]
    fn mutated_frames_never_panic(
        m in message(),
        muts in vec(mutation(), 1..5),
        fix in any::<bool>(),
    ) {
        let mut b = encode(&m);
        for mu in &muts {
            apply(&mut b, mu);
        }
        if fix {
            fix_len(&mut b);
        }
        check_decoders(&b)?;
    }

    /// (b, d) Every count field claiming more items than the payload holds
    /// (up to and past its limit) is refused without a large allocation:
    /// counts are checked against the bytes left before space is reserved.
    #[test]
    fn lying_counts_are_cheap(
        which in 0usize..6,
        count in prop_oneof![0u32..16, 0u32..=1100, 0u32..=10_001, 0u32..=(1 << 19) + 1, any::<u32>()],
        tail in vec(any::<u8>(), 0..64),
    ) {
        let c16 = (count as u16).to_be_bytes();
        let c32 = count.to_be_bytes();
        let (type_code, mut p) = match which {
            // Register: files per register.
            0 => (wire::ty::REGISTER, [&[4, 192, 0, 2, 1, 0x1b, 0x59][..], &c16].concat()),
            // Register: chunks (hashes) of the first file.
            1 => (
                wire::ty::REGISTER,
                [&[4, 192, 0, 2, 1, 0x1b, 0x59, 0, 1, 0, 0][..], &[0; 12], &c32].concat(),
            ),
            // RegisterReply: outcomes.
            2 => (wire::ty::REGISTER_REPLY, c16.to_vec()),
            // FileList: files.
            3 => (wire::ty::FILE_LIST, [&[0][..], &c32].concat()),
            // Locations: chunk count with hashes.
            4 => (wire::ty::LOCATIONS, [&[0, 1, b'x'][..], &[0; 12], &c32, &[1]].concat()),
            // Locations: sources (chunk count 9: two-byte bitmaps).
            _ => (
                wire::ty::LOCATIONS,
                [&[0, 1, b'x'][..], &[0; 12], &[0, 0, 0, 9, 0], &c16].concat(),
            ),
        };
        p.extend_from_slice(&tail);
        let mut b = ((p.len() + 1) as u32).to_be_bytes().to_vec();
        b.push(type_code);
        b.extend_from_slice(&p);
        check_decoders(&b)?;
    }

    /// (d) A length prefix that claims up to MAX_FRAME_LEN but is followed by
    /// fewer bytes is an error, found at once, and costs the receiver no more
    /// than the up-front reservation (never the claimed length).
    #[test]
    fn a_lying_length_prefix_is_cheap(
        len in prop_oneof![2u32..=4096, 4096u32..=MAX_FRAME_LEN, Just(MAX_FRAME_LEN)],
        type_code in any::<u8>(),
        sent in vec(any::<u8>(), 0..2048),
        cut in any::<Index>(),
    ) {
        // Fewer payload bytes than claimed: at most len - 2.
        let sent = &sent[..cut.index(sent.len().min(len as usize - 2) + 1)];
        let mut b = len.to_be_bytes().to_vec();
        b.push(type_code);
        b.extend_from_slice(sent);
        let start = Instant::now();
        let (r, peak) = peak_alloc(|| wire::read_frame(&mut &b[..]));
        // Generous: only a hang or a huge zero-fill would take this long.
        prop_assert!(start.elapsed() < Duration::from_secs(5));
        prop_assert!(matches!(r, Err(WireError::Truncated { .. })), "{:?}", r);
        let want = (len - 1) as usize;
        prop_assert!(peak <= want.min(PREALLOC_BOUND), "allocated {} for a {}-byte claim", peak, len);

        let (r, peak) = peak_alloc(|| Message::decode_frame(&b));
        prop_assert!(r.is_err());
        prop_assert!(peak <= want.min(PREALLOC_BOUND));
    }

    /// (d) A length prefix over MAX_FRAME_LEN (or 0) is refused before any
    /// allocation at all.
    #[test]
    fn an_oversized_length_prefix_allocates_nothing(
        len in prop_oneof![Just(0u32), MAX_FRAME_LEN + 1..=u32::MAX],
        rest in vec(any::<u8>(), 0..64),
    ) {
        let mut b = len.to_be_bytes().to_vec();
        b.extend_from_slice(&rest);
        let (r, peak) = peak_alloc(|| wire::read_frame(&mut &b[..]));
        match r {
            Err(WireError::EmptyFrame) => prop_assert_eq!(len, 0),
            Err(WireError::FrameTooLarge { len: l, max }) => {
                prop_assert_eq!(l, u64::from(len));
                prop_assert_eq!(max, MAX_FRAME_LEN);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        prop_assert_eq!(peak, 0);
    }

    /// Names the rules accept are decodable names (the rules are stricter
    /// than the codec), and the rules never panic.
    #[test]
    fn name_rules_never_panic(s in prop_oneof![short_text(40), "[a./\\\\]{0,12}"]) {
        if validate_name(&s).is_ok() {
            prop_assert!(!s.is_empty() && s.len() <= wire::MAX_NAME_LEN);
            prop_assert!(!s.starts_with('/'));
            prop_assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            let m = Message::Locate { name: s.clone(), with_hashes: false };
            let d = Message::decode_frame(&encode(&m)).map_err(|e| fail("decode", &e))?;
            prop_assert_eq!(d, m);
        }
    }
}

/// (d) Even when the sender really sends megabytes, the receiver's buffer
/// grows with what arrived (at most about twice), not with the claim.
#[test]
fn a_big_lie_costs_about_what_was_sent() {
    let sent = 3 << 20;
    let mut b = MAX_FRAME_LEN.to_be_bytes().to_vec();
    b.push(wire::ty::CHUNK_DATA);
    b.resize(5 + sent, 0xab);
    let (r, peak) = peak_alloc(|| wire::read_frame(&mut &b[..]));
    assert!(matches!(r, Err(WireError::Truncated { .. })), "{r:?}");
    assert!(peak <= 2 * sent + 4096, "allocated {peak} for {sent} bytes");
    assert!(peak < MAX_FRAME_LEN as usize);
}

/// Every limit is enforced by both sides: the encoder refuses one over, the
/// decoder refuses a count one over (before reading the items), and exactly
/// at the limit round-trips.
#[test]
fn limits_are_exact_on_both_sides() {
    use wire::*;
    let at_limit = |m: Message| {
        let b = encode(&m);
        assert_eq!(Message::decode_frame(&b).unwrap(), m, "{}", m.kind());
    };
    let refused = |m: Message| {
        let mut out = vec![0xee];
        assert!(m.encode(&mut out).is_err(), "{} encoded", m.kind());
        assert_eq!(out, [0xee], "failed encode leaves the buffer as it was");
    };
    let refused_wire = |b: &[u8]| {
        assert!(
            matches!(
                Message::decode_frame(b),
                Err(WireError::LimitExceeded { .. })
            ),
            "{b:02x?}"
        );
    };
    let frame = |ty: u8, payload: &[u8]| {
        let mut b = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        b.push(ty);
        b.extend_from_slice(payload);
        b
    };

    // Names and messages.
    for (n, ok) in [(MAX_NAME_LEN, true), (MAX_NAME_LEN + 1, false)] {
        let m = Message::ChunkRequest {
            name: "x".repeat(n),
            index: 0,
        };
        if ok {
            at_limit(m)
        } else {
            refused(m)
        }
        let mut p = (n as u16).to_be_bytes().to_vec();
        p.extend(std::iter::repeat_n(b'x', n));
        p.extend_from_slice(&[0; 4]);
        let b = frame(ty::CHUNK_REQUEST, &p);
        if ok {
            assert!(Message::decode_frame(&b).is_ok());
        } else {
            refused_wire(&b);
        }
    }
    at_limit(Message::error(
        ErrorCode::Internal,
        "e".repeat(MAX_MESSAGE_LEN),
    ));
    refused(Message::Error {
        code: ErrorCode::Internal,
        message: "e".repeat(MAX_MESSAGE_LEN + 1),
    });
    // Message::error cuts an over-long message at a char boundary instead.
    match Message::error(ErrorCode::Internal, "é".repeat(MAX_MESSAGE_LEN)) {
        Message::Error { message, .. } => assert_eq!(message.len(), MAX_MESSAGE_LEN),
        other => panic!("{other:?}"),
    }

    // Files per Register / RegisterReply.
    let entry = FileEntry {
        name: String::new(),
        length: 0,
        chunk_size: 0,
        hashes: vec![],
        have: Have::All,
    };
    let endpoint: SocketAddr = "192.0.2.1:1".parse().unwrap();
    at_limit(Message::Register {
        endpoint,
        files: vec![entry.clone(); MAX_FILES_PER_REGISTER],
    });
    refused(Message::Register {
        endpoint,
        files: vec![entry; MAX_FILES_PER_REGISTER + 1],
    });
    refused_wire(&frame(
        ty::REGISTER,
        &[4, 192, 0, 2, 1, 0, 1, 0x04, 0x01], // 1025 files
    ));
    at_limit(Message::RegisterReply {
        results: vec![FileOutcome::Accepted; MAX_FILES_PER_REGISTER],
    });
    refused(Message::RegisterReply {
        results: vec![FileOutcome::Accepted; MAX_FILES_PER_REGISTER + 1],
    });
    refused(Message::RegisterReply {
        results: vec![FileOutcome::Refused {
            code: ErrorCode::Other(0),
            reason: String::new(),
        }],
    });
    refused_wire(&frame(ty::REGISTER_REPLY, &[0x04, 0x01]));

    // Files per FileList (u32 count).
    let summary = FileSummary {
        name: String::new(),
        length: 0,
    };
    at_limit(Message::FileList {
        files: vec![summary.clone(); MAX_LIST_FILES],
        truncated: true,
    });
    refused(Message::FileList {
        files: vec![summary; MAX_LIST_FILES + 1],
        truncated: true,
    });
    let mut p = vec![1];
    p.extend_from_slice(&(MAX_LIST_FILES as u32 + 1).to_be_bytes());
    refused_wire(&frame(ty::FILE_LIST, &p));

    // Sources per Locations, chunks per file.
    let loc = |chunk_count: u32, sources: usize| Locations {
        name: "x".into(),
        length: 0,
        chunk_size: 0,
        chunk_count,
        hashes: None,
        sources: vec![
            Source {
                addr: endpoint,
                have: vec![0; (chunk_count as usize).div_ceil(8)],
            };
            sources
        ],
    };
    at_limit(Message::Locations(loc(9, MAX_SOURCES_PER_REPLY)));
    refused(Message::Locations(loc(9, MAX_SOURCES_PER_REPLY + 1)));
    let mut p = vec![0, 1, b'x'];
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&(MAX_CHUNKS_PER_FILE + 1).to_be_bytes());
    p.push(0);
    refused_wire(&frame(ty::LOCATIONS, &p));
    let mut p = vec![0, 1, b'x'];
    p.extend_from_slice(&[0; 16]);
    p.push(0);
    p.extend_from_slice(&(MAX_SOURCES_PER_REPLY as u16 + 1).to_be_bytes());
    refused_wire(&frame(ty::LOCATIONS, &p));
    let mut p = vec![4, 192, 0, 2, 1, 0, 1, 0, 1, 0, 0];
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&(MAX_CHUNKS_PER_FILE + 1).to_be_bytes());
    p.push(0); // have flag: the entry has its minimum size, so the count is what fails
    refused_wire(&frame(ty::REGISTER, &p));

    // Chunk size.
    let full = Message::ChunkData {
        index: 0,
        data: vec![0; MAX_CHUNK_SIZE as usize],
    };
    let b = encode(&full);
    assert_eq!(b.len() - 4, MAX_CHUNK_SIZE as usize + 5);
    assert_eq!(Message::decode_frame(&b).unwrap(), full);
    refused(Message::ChunkData {
        index: 0,
        data: vec![0; MAX_CHUNK_SIZE as usize + 1],
    });
    let mut b = (MAX_CHUNK_SIZE + 6).to_be_bytes().to_vec();
    b.push(ty::CHUNK_DATA);
    b.resize(4 + MAX_CHUNK_SIZE as usize + 6, 0);
    refused_wire(&b);
}

/// The largest possible Locations (name at the limit, hashes of a file of
/// MAX_CHUNKS_PER_FILE chunks, 64 IPv6 sources with full bitmaps) fits in a
/// frame, with the exact size the document states; and a Register cannot
/// carry two such files (the frame limit, not the file count, binds there).
#[test]
fn worst_case_sizes_fit_the_frame_limit() {
    use wire::*;
    let n = MAX_CHUNKS_PER_FILE;
    let m = Message::Locations(Locations {
        name: "x".repeat(MAX_NAME_LEN),
        length: u64::from(n) * u64::from(MAX_CHUNK_SIZE),
        chunk_size: MAX_CHUNK_SIZE,
        chunk_count: n,
        hashes: Some(vec![[0x5a; 20]; n as usize]),
        sources: vec![
            Source {
                addr: "[2001:db8::1]:7001".parse().unwrap(),
                have: Bitmap::full(n).as_bytes().to_vec(),
            };
            MAX_SOURCES_PER_REPLY
        ],
    });
    let b = encode(&m);
    assert_eq!(b.len() - 4, 14_682_326, "len of the largest Locations");
    assert!(b.len() - 4 <= MAX_FRAME_LEN as usize);

    let names = vec![
        FileSummary {
            name: "y".repeat(MAX_NAME_LEN),
            length: 0,
        };
        MAX_LIST_FILES
    ];
    let b = encode(&Message::FileList {
        files: names,
        truncated: true,
    });
    assert_eq!(b.len() - 4, 10_340_006, "len of the largest FileList");

    let b = encode(&Message::RegisterReply {
        results: vec![
            FileOutcome::Refused {
                code: ErrorCode::Conflict,
                reason: "r".repeat(MAX_MESSAGE_LEN),
            };
            MAX_FILES_PER_REGISTER
        ],
    });
    assert_eq!(b.len() - 4, 1_052_675, "len of the largest RegisterReply");

    let big = FileEntry {
        name: "z".into(),
        length: u64::from(n) * u64::from(DEFAULT_CHUNK),
        chunk_size: DEFAULT_CHUNK,
        hashes: vec![[0; 20]; n as usize],
        have: Have::All,
    };
    let endpoint: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let one = Message::Register {
        endpoint,
        files: vec![big.clone()],
    };
    assert!(one.encode(&mut Vec::new()).is_ok());
    let two = Message::Register {
        endpoint,
        files: vec![big.clone(), big],
    };
    assert!(matches!(
        two.encode(&mut Vec::new()),
        Err(WireError::FrameTooLarge { .. })
    ));
}

const DEFAULT_CHUNK: u32 = chunks::DEFAULT_CHUNK_SIZE;

/// The error codes table of the document: number, name and meaning.
#[test]
fn error_code_numbers() {
    let table = [
        (1, ErrorCode::BadVersion),
        (2, ErrorCode::Malformed),
        (3, ErrorCode::Unexpected),
        (4, ErrorCode::NotRegistered),
        (5, ErrorCode::UnknownFile),
        (6, ErrorCode::BadIndex),
        (7, ErrorCode::InvalidName),
        (8, ErrorCode::Conflict),
        (9, ErrorCode::NotHeld),
        (10, ErrorCode::Busy),
        (11, ErrorCode::BadGeometry),
        (12, ErrorCode::Internal),
        (13, ErrorCode::KeyRequired),
        (14, ErrorCode::KeyRejected),
    ];
    for (n, c) in table {
        assert_eq!(c.to_u16(), n);
        assert_eq!(ErrorCode::from_u16(n), c);
    }
    assert_eq!(ErrorCode::from_u16(0), ErrorCode::Other(0));
    assert_eq!(ErrorCode::from_u16(15), ErrorCode::Other(15));
    // Not canonical: an Other holding a named number decodes as the name.
    let b = encode(&Message::Error {
        code: ErrorCode::Other(5),
        message: String::new(),
    });
    assert_eq!(
        Message::decode_frame(&b).unwrap(),
        Message::Error {
            code: ErrorCode::UnknownFile,
            message: String::new()
        }
    );
}

/// The name rules as the document lists them, in the order they are checked.
#[test]
fn name_rules_match_the_document() {
    use wire::NameError::*;
    let cases: &[(&str, Option<wire::NameError>)] = &[
        ("a.txt", None),
        ("music/album 1/01 - intro.ogg", None),
        (".hidden", None),
        ("..a", None),
        ("a..", None),
        ("ünïcödé/名前", None),
        ("", Some(Empty)),
        ("a\0b", Some(Nul)),
        ("a\\b", Some(Backslash)),
        ("a\tb", Some(ControlChar)),
        ("a\u{7f}b", Some(ControlChar)),
        ("a\u{85}b", Some(ControlChar)),
        ("/etc/passwd", Some(Absolute)),
        ("a//b", Some(EmptyComponent)),
        ("a/", Some(EmptyComponent)),
        ("./a", Some(DotComponent)),
        ("a/.", Some(DotComponent)),
        ("../a", Some(DotDotComponent)),
        ("a/../b", Some(DotDotComponent)),
    ];
    for (name, want) in cases {
        assert_eq!(validate_name(name).err(), *want, "{name:?}");
    }
    assert_eq!(validate_name(&"a".repeat(255)), Ok(()));
    assert_eq!(validate_name(&"a".repeat(256)), Err(ComponentTooLong));
    let long = vec!["a".repeat(255); 4].join("/"); // 1023 bytes
    assert_eq!(validate_name(&long), Ok(()));
    assert_eq!(validate_name(&format!("{long}/b")), Err(TooLong));
    // Checked in order: the whole-name checks come before the per-component ones.
    assert_eq!(validate_name("/a\\b"), Err(Backslash));
}

// ---- The document's hex dumps -------------------------------------------

/// The example of docs/protocol.md: a 1,500,000-byte file "a.txt" in 1 MiB
/// chunks (2 chunks, the second 451,424 bytes), shared by peer A at
/// 192.0.2.10:7001 and partly by peer C at [2001:db8::7]:7001; peer B
/// downloads it. The digests are placeholders (0x11.., 0x22..).
fn doc_examples() -> Vec<(&'static str, Message)> {
    let a: SocketAddr = "192.0.2.10:7001".parse().unwrap();
    let c: SocketAddr = "[2001:db8::7]:7001".parse().unwrap();
    let hashes = vec![[0x11; 20], [0x22; 20]];
    vec![
        (
            "hello",
            Message::Hello {
                version: wire::PROTOCOL_VERSION,
            },
        ),
        (
            "register-a",
            Message::Register {
                endpoint: a,
                files: vec![FileEntry {
                    name: "a.txt".into(),
                    length: 1_500_000,
                    chunk_size: DEFAULT_CHUNK,
                    hashes: hashes.clone(),
                    have: Have::All,
                }],
            },
        ),
        (
            "register-reply-accepted",
            Message::RegisterReply {
                results: vec![FileOutcome::Accepted],
            },
        ),
        (
            "register-b",
            Message::Register {
                endpoint: "0.0.0.0:7002".parse().unwrap(),
                files: vec![],
            },
        ),
        (
            "register-reply-empty",
            Message::RegisterReply { results: vec![] },
        ),
        (
            "register-reply-conflict",
            Message::RegisterReply {
                results: vec![
                    FileOutcome::Accepted,
                    FileOutcome::Refused {
                        code: ErrorCode::Conflict,
                        reason: "differs".into(),
                    },
                ],
            },
        ),
        ("list-files", Message::ListFiles),
        (
            "file-list",
            Message::FileList {
                files: vec![FileSummary {
                    name: "a.txt".into(),
                    length: 1_500_000,
                }],
                truncated: false,
            },
        ),
        (
            "locate",
            Message::Locate {
                name: "a.txt".into(),
                with_hashes: true,
            },
        ),
        (
            "locations",
            Message::Locations(Locations {
                name: "a.txt".into(),
                length: 1_500_000,
                chunk_size: DEFAULT_CHUNK,
                chunk_count: 2,
                hashes: Some(hashes),
                sources: vec![
                    Source {
                        addr: a,
                        have: vec![0xc0],
                    },
                    Source {
                        addr: c,
                        have: vec![0x80],
                    },
                ],
            }),
        ),
        (
            "chunk-request-1",
            Message::ChunkRequest {
                name: "a.txt".into(),
                index: 1,
            },
        ),
        (
            "chunk-request-0",
            Message::ChunkRequest {
                name: "a.txt".into(),
                index: 0,
            },
        ),
        (
            "chunk-data-1",
            Message::ChunkData {
                index: 1,
                data: vec![0; 451_424],
            },
        ),
        (
            "register-b-partial",
            Message::Register {
                endpoint: "0.0.0.0:7002".parse().unwrap(),
                files: vec![FileEntry {
                    name: "a.txt".into(),
                    length: 1_500_000,
                    chunk_size: DEFAULT_CHUNK,
                    hashes: vec![[0x11; 20], [0x22; 20]],
                    have: Have::Some(vec![0x40]),
                }],
            },
        ),
        (
            "chunk-register-0",
            Message::ChunkRegister {
                name: "a.txt".into(),
                index: 0,
            },
        ),
        ("ok", Message::Ok),
        ("keepalive", Message::Keepalive),
        ("leave", Message::Leave),
        (
            "withdraw",
            Message::Withdraw {
                name: "a.txt".into(),
            },
        ),
        (
            "error-not-held",
            Message::Error {
                code: ErrorCode::NotHeld,
                message: "not yet".into(),
            },
        ),
    ]
}

/// Dumps in the document: `<!-- frame: NAME -->` (the whole frame) or
/// `<!-- frame-prefix: NAME -->` (its first bytes) followed by a fenced
/// block whose lines are hex bytes, optionally followed by `; comment`.
fn doc_dumps(doc: &str) -> Vec<(String, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("<!-- frame") else {
            continue;
        };
        let (prefix, rest) = match rest.strip_prefix("-prefix:") {
            Some(r) => (true, r),
            None => (
                false,
                rest.strip_prefix(':')
                    .unwrap_or_else(|| panic!("bad marker {line}")),
            ),
        };
        let name = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("bad marker {line}"))
            .trim()
            .to_owned();
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "marker {name} must be followed by a fence"
        );
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            let hex = l.split(';').next().unwrap_or_default();
            for tok in hex.split_whitespace() {
                assert_eq!(tok.len(), 2, "{name}: {tok:?} is not a hex byte in {l:?}");
                let b = u8::from_str_radix(tok, 16)
                    .unwrap_or_else(|_| panic!("{name}: {tok:?} is not a hex byte in {l:?}"));
                bytes.push(b);
            }
        }
        out.push((name, prefix, bytes));
    }
    out
}

/// The hex dumps shown in docs/protocol.md are exactly the encoder's bytes,
/// and every example here appears there once.
#[test]
fn protocol_md_hex_dumps_match_the_encoder() {
    let doc = include_str!("../docs/protocol.md");
    let dumps = doc_dumps(doc);
    let examples = doc_examples();
    let mut seen = BTreeSet::new();
    for (name, prefix, bytes) in &dumps {
        assert!(seen.insert(name.clone()), "{name} dumped twice");
        let m = examples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .unwrap_or_else(|| panic!("no example named {name}"));
        let b = encode(m);
        if *prefix {
            assert!(bytes.len() < b.len(), "{name}");
            assert_eq!(&b[..bytes.len()], &bytes[..], "{name} (prefix)");
        } else {
            assert_eq!(&b, bytes, "{name}");
        }
    }
    for (name, _) in &examples {
        assert!(seen.contains(*name), "{name} is not dumped in protocol.md");
    }
}

/// The dumps that matter most, spelled out here too, so that a change to the
/// encoder fails this test with the expected bytes in view.
#[test]
fn exact_bytes_of_key_frames() {
    let by_name = |n: &str| {
        let (_, m) = doc_examples().into_iter().find(|(k, _)| *k == n).unwrap();
        encode(&m)
    };
    assert_eq!(
        by_name("hello"),
        [
            0x00, 0x00, 0x00, 0x07, 0x01, 0x50, 0x32, 0x50, 0x46, 0x00, 0x01
        ]
    );
    assert_eq!(
        by_name("chunk-request-1"),
        [
            0x00, 0x00, 0x00, 0x0c, 0x20, 0x00, 0x05, b'a', b'.', b't', b'x', b't', 0, 0, 0, 1
        ]
    );
    assert_eq!(
        by_name("register-b"),
        [
            0x00, 0x00, 0x00, 0x0a, 0x10, 0x04, 0, 0, 0, 0, 0x1b, 0x5a, 0x00, 0x00
        ]
    );
    assert_eq!(
        by_name("register-reply-accepted"),
        [0x00, 0x00, 0x00, 0x05, 0x11, 0x00, 0x01, 0x00, 0x00]
    );
    assert_eq!(by_name("ok"), [0, 0, 0, 1, 0x03]);
    assert_eq!(by_name("keepalive"), [0, 0, 0, 1, 0x04]);
    assert_eq!(by_name("leave"), [0, 0, 0, 1, 0x17]);
    // ChunkData: len = 1 + 4 + 451,424 = 451,429 = 0x0006e365.
    assert_eq!(
        chunk_data_header(1, 451_424).unwrap(),
        [0x00, 0x06, 0xe3, 0x65, 0x21, 0x00, 0x00, 0x00, 0x01]
    );
    // Chunk 0's header, given in the document's prose.
    assert_eq!(
        chunk_data_header(0, DEFAULT_CHUNK as usize).unwrap(),
        [0x00, 0x10, 0x00, 0x05, 0x21, 0x00, 0x00, 0x00, 0x00]
    );
    let g = Geometry::new(1_500_000, DEFAULT_CHUNK).unwrap();
    assert_eq!(g.count(), 2);
    assert_eq!(g.chunk_len(g.index(1).unwrap()), 451_424);
}

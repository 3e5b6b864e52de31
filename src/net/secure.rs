//! Keyed connections (private networks): the Noise handshake that opens
//! them and the record layer that carries the ordinary p2pfs frames over
//! them, encrypted and authenticated (docs/protocol.md §14).
//!
//! Owns: the preamble that tells a keyed stream from a clear one, the
//! handshake (`Noise_NNpsk0_25519_AESGCM_SHA256`, prologue = the preamble,
//! pre-shared key = the network key) for both sides, and the two halves of
//! an open session: [`Sealer`] (plaintext bytes in, records out) and
//! [`Opener`] (records in, plaintext bytes out). Nothing above this layer
//! changes: the wire codec reads and writes the same frames through
//! [`SecureRead`] and [`Sealer::write_all`].
//!
//! Records: a u16 big-endian length L, then L bytes of AES-GCM ciphertext
//! and tag, 17 <= L <= 65,535 (Noise's message limit). Each direction
//! numbers its records 0, 1, 2... and uses that number as the nonce, so a
//! record that is dropped, replayed, reordered or altered fails to open
//! and ends the connection.
//!
//! Calls `limits`, `wire` (the magic, the version, decoding a clear answer)
//! and [`super::key`]; the servers and clients reach it through
//! [`super::server`] and [`super::client`] only.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
use snow::{Builder, HandshakeState, StatelessTransportState};

use super::key::NetworkKey;
use crate::limits::{HANDSHAKE_MESSAGE_LEN, MAX_RECORD_LEN, MAX_RECORD_PLAINTEXT, RECORD_TAG_LEN};
use crate::wire::{self, Message, WireError};

/// The Noise protocol name: pattern, DH, cipher, hash.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// What a keyed client sends first and a keyed server answers first: the
/// p2pfs magic, "NK" (Noise, keyed), the protocol version (u16 BE). Its
/// first byte, 'P' (0x50), can never start a clear frame (a length prefix
/// of 0x50xxxxxx exceeds the frame limit), so one byte tells a server which
/// kind of client it has. It is the Noise prologue too, so a changed
/// version breaks the handshake.
pub const PREAMBLE: [u8; 8] = {
    let v = wire::PROTOCOL_VERSION.to_be_bytes();
    let m = wire::MAGIC;
    [m[0], m[1], m[2], m[3], b'N', b'K', v[0], v[1]]
};

/// How many plaintext bytes [`Sealer::write_all`] seals before handing
/// them to the socket in one write: a few records, so a 1 MiB chunk costs
/// a handful of system calls and a connection's buffer stays small.
const SEAL_BATCH: usize = 4 * MAX_RECORD_PLAINTEXT;

/// How a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The stream failed or ended (including timeouts).
    Io(io::Error),
    /// Client side: the server answered with a clear frame (or something
    /// that does not decode as one) instead of the preamble.
    ClearAnswer(Result<Option<Message>, WireError>),
    /// The other side's preamble names another protocol version.
    Version(u16),
    /// Bytes that are neither a preamble nor a valid handshake message.
    Malformed(String),
    /// The handshake message does not verify: the other side holds another
    /// network key (or the bytes were altered on the way).
    Rejected,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::ClearAnswer(Ok(Some(m))) => {
                write!(f, "answered in clear: {}", m.kind())
            }
            HandshakeError::ClearAnswer(Ok(None)) => f.write_str("closed the connection"),
            HandshakeError::ClearAnswer(Err(e)) => write!(f, "answered in clear: {e}"),
            HandshakeError::Version(v) => write!(f, "speaks protocol version {v}"),
            HandshakeError::Malformed(what) => f.write_str(what),
            HandshakeError::Rejected => f.write_str("the handshake does not verify with our key"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

fn builder(key: &NetworkKey) -> Result<Builder<'_>, snow::Error> {
    let params = NOISE_PARAMS.parse()?;
    // ring for the cipher and the hash; snow's own X25519, which ring's
    // resolver does not offer.
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    Builder::with_resolver(params, Box::new(resolver))
        .prologue(&PREAMBLE)?
        .psk(0, key.psk())
}

fn noise_failed(e: snow::Error) -> HandshakeError {
    HandshakeError::Io(io::Error::other(format!("noise: {e}")))
}

/// The client's side: writes the preamble and the first handshake message,
/// reads and checks the server's. `r` and `w` are the two ends of one
/// connection (`r` may buffer).
pub fn client_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    key: &NetworkKey,
) -> Result<(Opener, Sealer), HandshakeError> {
    let mut hs = builder(key)
        .and_then(|b| b.build_initiator())
        .map_err(noise_failed)?;
    let mut out = [0u8; 2 + HANDSHAKE_MESSAGE_LEN];
    let n = hs.write_message(&[], &mut out[2..]).map_err(noise_failed)?;
    out[..2].copy_from_slice(&record_len(n).to_be_bytes());
    let mut first = Vec::with_capacity(PREAMBLE.len() + out.len());
    first.extend_from_slice(&PREAMBLE);
    first.extend_from_slice(&out[..2 + n]);
    w.write_all(&first)?;
    w.flush()?;

    let mut byte = [0u8; 1];
    if r.read(&mut byte)? == 0 {
        return Err(HandshakeError::ClearAnswer(Ok(None)));
    }
    if byte[0] != PREAMBLE[0] {
        // A clear frame: decode it with its first byte put back.
        let m = wire::read_message(&mut (&byte[..]).chain(r));
        return Err(HandshakeError::ClearAnswer(m));
    }
    read_preamble_rest(r)?;
    read_handshake_message(r, &mut hs)?;
    into_session(hs)
}

/// What the first bytes of an accepted connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A clear frame (the client speaks no key).
    Clear,
    /// The keyed preamble's first byte.
    Keyed,
}

/// Classifies a connection by its first byte (see [`PREAMBLE`]).
pub fn opening(first: u8) -> Opening {
    if first == PREAMBLE[0] {
        Opening::Keyed
    } else {
        Opening::Clear
    }
}

/// Reads the whole preamble (its first byte included) and checks it: the
/// server's side of a keyed opening, also used by a clear server to
/// recognise a keyed client.
pub fn read_preamble<R: Read>(r: &mut R) -> Result<(), HandshakeError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    if b[0] != PREAMBLE[0] {
        return Err(HandshakeError::Malformed("not a p2pfs preamble".into()));
    }
    read_preamble_rest(r)
}

/// The preamble after its first byte (which [`opening`] classified).
pub fn read_preamble_rest<R: Read>(r: &mut R) -> Result<(), HandshakeError> {
    let mut rest = [0u8; PREAMBLE.len() - 1];
    r.read_exact(&mut rest)?;
    if rest[..5] != PREAMBLE[1..6] {
        return Err(HandshakeError::Malformed(
            "not a p2pfs stream (bad preamble)".into(),
        ));
    }
    let version = u16::from_be_bytes([rest[5], rest[6]]);
    if version != wire::PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    Ok(())
}

/// The server's side, after [`read_preamble`]: reads and checks the
/// client's handshake message and answers the preamble and its own.
pub fn server_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    key: &NetworkKey,
) -> Result<(Opener, Sealer), HandshakeError> {
    let mut hs = builder(key)
        .and_then(|b| b.build_responder())
        .map_err(noise_failed)?;
    read_handshake_message(r, &mut hs)?;
    let mut out = [0u8; PREAMBLE.len() + 2 + HANDSHAKE_MESSAGE_LEN];
    out[..PREAMBLE.len()].copy_from_slice(&PREAMBLE);
    let n = hs
        .write_message(&[], &mut out[PREAMBLE.len() + 2..])
        .map_err(noise_failed)?;
    out[PREAMBLE.len()..PREAMBLE.len() + 2].copy_from_slice(&record_len(n).to_be_bytes());
    w.write_all(&out[..PREAMBLE.len() + 2 + n])?;
    w.flush()?;
    into_session(hs)
}

fn record_len(n: usize) -> u16 {
    // Every caller passes at most MAX_RECORD_LEN (checked by snow).
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Reads one handshake record (u16 length, exactly
/// [`HANDSHAKE_MESSAGE_LEN`] bytes) into `hs`.
fn read_handshake_message<R: Read>(
    r: &mut R,
    hs: &mut HandshakeState,
) -> Result<(), HandshakeError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len != HANDSHAKE_MESSAGE_LEN {
        return Err(HandshakeError::Malformed(format!(
            "handshake message of {len} bytes (must be {HANDSHAKE_MESSAGE_LEN})"
        )));
    }
    let mut msg = [0u8; HANDSHAKE_MESSAGE_LEN];
    r.read_exact(&mut msg)?;
    let mut payload = [0u8; HANDSHAKE_MESSAGE_LEN];
    match hs.read_message(&msg, &mut payload) {
        Ok(0) => Ok(()),
        Ok(_) => Err(HandshakeError::Malformed(
            "handshake payload must be empty".into(),
        )),
        Err(_) => Err(HandshakeError::Rejected),
    }
}

fn into_session(hs: HandshakeState) -> Result<(Opener, Sealer), HandshakeError> {
    let t = Arc::new(hs.into_stateless_transport_mode().map_err(noise_failed)?);
    Ok((Opener::new(Arc::clone(&t)), Sealer::new(t)))
}

/// The sending half of a session: seals plaintext into records.
pub struct Sealer {
    t: Arc<StatelessTransportState>,
    nonce: u64,
    out: Vec<u8>,
}

impl Sealer {
    fn new(t: Arc<StatelessTransportState>) -> Sealer {
        Sealer {
            t,
            nonce: 0,
            out: Vec::new(),
        }
    }

    /// Seals all of `data` (in records of at most
    /// [`MAX_RECORD_PLAINTEXT`] bytes) and writes the records to `w`. After
    /// an error the session is unusable (the other side's nonce no longer
    /// matches): close the connection.
    pub fn write_all<W: Write + ?Sized>(&mut self, w: &mut W, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.out.clear();
            while !data.is_empty() && self.out.len() < SEAL_BATCH {
                let n = data.len().min(MAX_RECORD_PLAINTEXT);
                self.seal_one(&data[..n])?;
                data = &data[n..];
            }
            w.write_all(&self.out)?;
        }
        Ok(())
    }

    fn seal_one(&mut self, plain: &[u8]) -> io::Result<()> {
        let start = self.out.len();
        self.out.resize(start + 2 + plain.len() + RECORD_TAG_LEN, 0);
        let n = self
            .t
            .write_message(self.nonce, plain, &mut self.out[start + 2..])
            .map_err(|e| io::Error::other(format!("cannot seal a record: {e}")))?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| io::Error::other("record counter exhausted"))?;
        self.out[start..start + 2].copy_from_slice(&record_len(n).to_be_bytes());
        self.out.truncate(start + 2 + n);
        Ok(())
    }
}

/// The receiving half of a session: opens records and hands out their
/// plaintext. Progress inside a record survives a timed-out read, so a
/// read timeout never desynchronises the stream.
pub struct Opener {
    t: Arc<StatelessTransportState>,
    nonce: u64,
    header: [u8; 2],
    header_got: usize,
    record: Vec<u8>,
    record_got: usize,
    plain: Vec<u8>,
    plain_pos: usize,
    failed: bool,
}

/// Whether `e` is the error of a record that does not open: altered,
/// forged, replayed or out of order.
pub fn is_forged(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.get_ref().is_some_and(|inner| inner.is::<Forged>())
}

/// The cause inside the `InvalidData` error of a record that does not open.
#[derive(Debug)]
struct Forged;

impl fmt::Display for Forged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an encrypted record failed authentication (altered or forged)")
    }
}

impl std::error::Error for Forged {}

fn forged() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Forged)
}

impl Opener {
    fn new(t: Arc<StatelessTransportState>) -> Opener {
        Opener {
            t,
            nonce: 0,
            header: [0; 2],
            header_got: 0,
            record: Vec::new(),
            record_got: 0,
            plain: Vec::new(),
            plain_pos: 0,
            failed: false,
        }
    }

    /// Whether received bytes wait here: plaintext not yet read, or part of
    /// a record.
    pub fn has_buffered(&self) -> bool {
        self.plain_pos < self.plain.len() || self.header_got > 0 || self.record_got > 0
    }

    /// `Read::read` of the plaintext, pulling records from `r`. `Ok(0)`
    /// only when `r` ends between two records.
    pub fn read<R: Read + ?Sized>(&mut self, r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if self.plain_pos < self.plain.len() {
            return Ok(self.copy_out(buf));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.failed {
            return Err(forged());
        }
        let Some(len) = self.fill_record(r)? else {
            return Ok(0);
        };
        // Open straight into the caller's buffer when it can take the whole
        // record (ring opens in place, so it needs the tag's room too).
        if buf.len() >= len {
            return self.open(Target::Caller(buf));
        }
        self.open(Target::Own)?;
        Ok(self.copy_out(buf))
    }

    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plain.len() - self.plain_pos);
        buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        n
    }

    /// Reads the rest of the current record; its length, or `None` at a
    /// clean end of stream before a record starts.
    fn fill_record<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<Option<usize>> {
        while self.header_got < 2 {
            match r.read(&mut self.header[self.header_got..]) {
                Ok(0) if self.header_got == 0 => return Ok(None),
                Ok(0) => return Err(truncated("record length")),
                Ok(n) => self.header_got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = usize::from(u16::from_be_bytes(self.header));
        if len <= RECORD_TAG_LEN {
            self.failed = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "encrypted record of {len} bytes (at least {} needed)",
                    RECORD_TAG_LEN + 1
                ),
            ));
        }
        if self.record.len() != len {
            self.record.resize(len, 0);
        }
        while self.record_got < len {
            match r.read(&mut self.record[self.record_got..]) {
                Ok(0) => return Err(truncated("encrypted record")),
                Ok(n) => self.record_got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(len))
    }

    /// Opens the complete record into `target`; the plaintext length.
    fn open(&mut self, target: Target<'_>) -> io::Result<usize> {
        let len = self.record.len();
        debug_assert!(len <= MAX_RECORD_LEN);
        let opened = match target {
            Target::Caller(buf) => self
                .t
                .read_message(self.nonce, &self.record, &mut buf[..len]),
            Target::Own => {
                self.plain.resize(len, 0);
                self.plain_pos = 0;
                let r = self
                    .t
                    .read_message(self.nonce, &self.record, &mut self.plain);
                if let Ok(n) = r {
                    self.plain.truncate(n);
                }
                r
            }
        };
        self.header_got = 0;
        self.record_got = 0;
        match opened {
            Ok(n) => {
                self.nonce = self.nonce.checked_add(1).ok_or_else(|| {
                    self.failed = true;
                    io::Error::other("record counter exhausted")
                })?;
                Ok(n)
            }
            Err(_) => {
                self.failed = true;
                self.plain.clear();
                Err(forged())
            }
        }
    }
}

enum Target<'a> {
    Caller(&'a mut [u8]),
    Own,
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the stream ended inside an {what}"),
    )
}

/// A reader of plaintext: `opener` (if the connection is keyed) over `inner`.
pub struct SecureRead<'a, R: ?Sized> {
    pub opener: Option<&'a mut Opener>,
    pub inner: &'a mut R,
}

impl<R: Read + ?Sized> Read for SecureRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.opener.as_deref_mut() {
            Some(o) => o.read(self.inner, buf),
            None => self.inner.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NetworkKey {
        NetworkKey::from_bytes([b; 32])
    }

    type Session = (Opener, Sealer);

    /// Runs both handshakes over in-memory pipes.
    fn pair(ck: &NetworkKey, sk: &NetworkKey) -> Result<(Session, Session), HandshakeError> {
        let mut c_out = Vec::new();
        // The client's first flight does not depend on the answer, so run
        // it against an answer produced afterwards: write, serve, read.
        let mut hs = builder(ck).unwrap().build_initiator().unwrap();
        let mut m = [0u8; 64];
        let n = hs.write_message(&[], &mut m).unwrap();
        c_out.extend_from_slice(&PREAMBLE);
        c_out.extend_from_slice(&(n as u16).to_be_bytes());
        c_out.extend_from_slice(&m[..n]);
        let mut r = &c_out[..];
        read_preamble(&mut r)?;
        let mut s_out = Vec::new();
        let server = server_handshake(&mut r, &mut s_out, sk)?;
        let mut r = &s_out[..];
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        read_preamble_rest(&mut r)?;
        read_handshake_message(&mut r, &mut hs)?;
        Ok((into_session(hs)?, server))
    }

    #[test]
    fn the_preamble_is_p2pf_nk_and_the_version() {
        assert_eq!(&PREAMBLE, b"P2PFNK\x00\x01");
        assert_eq!(opening(0x00), Opening::Clear);
        assert_eq!(opening(b'P'), Opening::Keyed);
    }

    #[test]
    fn records_round_trip_across_many_sizes_and_reads() {
        let ((mut c_open, mut c_seal), (mut s_open, mut s_seal)) = pair(&key(1), &key(1)).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut wire_bytes = Vec::new();
        c_seal.write_all(&mut wire_bytes, &data).unwrap();
        c_seal.write_all(&mut wire_bytes, b"tail").unwrap();
        // Sealed: samples of the plaintext (record starts among them) do
        // not appear.
        for at in [0, 1_000, 65_519, 200_000] {
            let sample = &data[at..at + 32];
            assert!(!wire_bytes.windows(32).any(|w| w == sample), "{at}");
        }
        // Read back through odd-sized reads and one big one.
        let mut src = &wire_bytes[..];
        let mut got = vec![0u8; 7];
        let mut all = Vec::new();
        loop {
            let want = if all.len() > 100_000 { 70_000 } else { 7 };
            got.resize(want, 0);
            let n = s_open.read(&mut src, &mut got).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(&all[..data.len()], &data[..]);
        assert_eq!(&all[data.len()..], b"tail");
        // And the other way.
        let mut back = Vec::new();
        s_seal.write_all(&mut back, b"reply").unwrap();
        let mut buf = [0u8; 5];
        c_open.read(&mut &back[..], &mut buf).unwrap();
        assert_eq!(&buf, b"reply");
    }

    #[test]
    fn a_wrong_key_is_rejected_by_the_server() {
        assert!(matches!(
            pair(&key(1), &key(2)),
            Err(HandshakeError::Rejected)
        ));
    }

    #[test]
    fn an_altered_replayed_or_dropped_record_fails_for_good() {
        let ((_, mut seal), (mut open, _)) = pair(&key(3), &key(3)).unwrap();
        let mut one = Vec::new();
        seal.write_all(&mut one, b"first record").unwrap();
        let mut two = Vec::new();
        seal.write_all(&mut two, b"second record").unwrap();
        let mut buf = [0u8; 64];
        // Replayed: the first record again where the second belongs.
        let mut stream = one.clone();
        stream.extend_from_slice(&one);
        let mut r = &stream[..];
        assert_eq!(open.read(&mut r, &mut buf).unwrap(), 12);
        let e = open.read(&mut r, &mut buf).unwrap_err();
        assert!(is_forged(&e), "{e}");
        // Once failed, always failed, even with the right record next.
        assert!(open.read(&mut &two[..], &mut buf).is_err());

        let ((_, mut seal), (mut open, _)) = pair(&key(3), &key(3)).unwrap();
        let mut rec = Vec::new();
        seal.write_all(&mut rec, b"some bytes").unwrap();
        rec[5] ^= 1;
        assert!(is_forged(&open.read(&mut &rec[..], &mut buf).unwrap_err()));
    }

    #[test]
    fn a_timed_out_read_inside_a_record_loses_nothing() {
        struct Stutter<'a>(&'a [u8], bool);
        impl Read for Stutter<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout"));
                }
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let ((_, mut seal), (mut open, _)) = pair(&key(4), &key(4)).unwrap();
        let mut rec = Vec::new();
        seal.write_all(&mut rec, b"patience").unwrap();
        let mut s = Stutter(&rec, false);
        let mut buf = [0u8; 8];
        let n = loop {
            match open.read(&mut s, &mut buf) {
                Ok(n) => break n,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        };
        assert_eq!(&buf[..n], b"patience");
    }

    #[test]
    fn a_clear_frame_in_place_of_the_answer_is_decoded_for_the_caller() {
        let mut answer = Vec::new();
        wire::write_message(
            &mut answer,
            &Message::error(wire::ErrorCode::Busy, "full".to_owned()),
        )
        .unwrap();
        let mut sent = Vec::new();
        match client_handshake(&mut &answer[..], &mut sent, &key(5)) {
            Err(HandshakeError::ClearAnswer(Ok(Some(Message::Error { message, .. })))) => {
                assert_eq!(message, "full")
            }
            other => panic!("{:?}", other.err()),
        }
        assert_eq!(&sent[..8], &PREAMBLE);
        assert_eq!(sent.len(), 8 + 2 + HANDSHAKE_MESSAGE_LEN);
        assert_eq!(&sent[8..10], &[0, 48]);
    }
}

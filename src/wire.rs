//! The p2pfs wire protocol: frames, messages, limits and file-name rules.
//!
//! Owns: the byte layout of every message exchanged with the tracker and
//! between peers (docs/protocol.md is the same layout in prose and must stay
//! identical), the named limits that bound every length read from the
//! network, and [`validate_name`], the one rule for which file names are
//! acceptable.
//!
//! Depends on nothing else in the crate and does no I/O beyond `Read`/`Write`
//! on whatever stream it is handed. Every length prefix is checked against a
//! named limit and against the bytes actually present before anything is
//! allocated, so a hostile frame costs at most its own size.
//!
//! Frame: `u32 len | u8 type | payload[len - 1]`, all integers big-endian.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};

pub use crate::limits::{KEEPALIVE_INTERVAL, TRACKER_IDLE_TIMEOUT};

/// First four bytes of every Hello payload.
pub const MAGIC: [u8; 4] = *b"P2PF";
/// The version this build speaks. A Hello with another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;

// ---- Limits -------------------------------------------------------------

// Stated once in `limits` (which also feeds `chunks` and every help text);
// re-exported here because they are part of the codec's contract.
pub use crate::limits::{
    DIGEST_LEN, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_FILE, MAX_FILES_PER_REGISTER, MAX_FRAME_LEN,
    MAX_LIST_FILES, MAX_MESSAGE_LEN, MAX_NAME_COMPONENT_LEN, MAX_NAME_LEN, MAX_SOURCES_PER_REPLY,
};
/// Bytes before a frame's payload: `u32 len` + `u8 type`.
pub const FRAME_HEADER_LEN: usize = 5;
/// Bytes of a ChunkData frame before the chunk bytes: frame header + `u32 index`.
pub const CHUNK_DATA_HEADER_LEN: usize = FRAME_HEADER_LEN + 4;
/// A frame buffer is first reserved up to this size; larger frames grow as
/// their bytes actually arrive, so a lying length prefix cannot make the
/// receiver allocate more than the sender really sent.
const INITIAL_FRAME_ALLOC: usize = (1 << 20) + 64;

/// A chunk's SHA-1 digest.
pub type Digest = [u8; DIGEST_LEN];

// ---- Message types ------------------------------------------------------

/// Message type codes (the `type` byte of a frame).
pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const ERROR: u8 = 0x02;
    pub const OK: u8 = 0x03;
    pub const KEEPALIVE: u8 = 0x04;
    pub const REGISTER: u8 = 0x10;
    pub const REGISTER_REPLY: u8 = 0x11;
    pub const LIST_FILES: u8 = 0x12;
    pub const FILE_LIST: u8 = 0x13;
    pub const LOCATE: u8 = 0x14;
    pub const LOCATIONS: u8 = 0x15;
    pub const CHUNK_REGISTER: u8 = 0x16;
    pub const LEAVE: u8 = 0x17;
    pub const WITHDRAW: u8 = 0x18;
    pub const CHUNK_REQUEST: u8 = 0x20;
    pub const CHUNK_DATA: u8 = 0x21;

    /// Every type code above, in numeric order: what tests and the fuzzer
    /// iterate over. A unit test checks that exactly these codes decode.
    pub const ALL: &[u8] = &[
        HELLO,
        ERROR,
        OK,
        KEEPALIVE,
        REGISTER,
        REGISTER_REPLY,
        LIST_FILES,
        FILE_LIST,
        LOCATE,
        LOCATIONS,
        CHUNK_REGISTER,
        LEAVE,
        WITHDRAW,
        CHUNK_REQUEST,
        CHUNK_DATA,
    ];
}

/// Error codes carried by [`Message::Error`] and by refused files in a
/// [`Message::RegisterReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: Hello had another protocol version.
    BadVersion,
    /// 2: the frame could not be decoded (the sender then closes the
    /// connection), or a field holds an impossible value (e.g. port 0).
    Malformed,
    /// 3: a valid message that is not allowed here (e.g. a reply sent as a request).
    Unexpected,
    /// 4: ChunkRegister before Register on this connection.
    NotRegistered,
    /// 5: no such file (tracker: no source; peer: not shared).
    UnknownFile,
    /// 6: chunk index out of range for the file.
    BadIndex,
    /// 7: the name breaks the name rules ([`validate_name`]).
    InvalidName,
    /// 8: the name is registered with other content (length, chunk size or hashes).
    Conflict,
    /// 9: the peer shares the file but does not hold that chunk (yet).
    NotHeld,
    /// 10: too many connections; try later.
    Busy,
    /// 11: the file's length, chunk size and hash count do not fit together.
    BadGeometry,
    /// 12: the other side failed internally (e.g. a disk read error).
    Internal,
    /// 13: this server belongs to a private network: connect with its
    /// network key (docs/protocol.md §14).
    KeyRequired,
    /// 14: a keyed client's handshake was refused: the server holds another
    /// network key, or none (docs/protocol.md §14).
    KeyRejected,
    /// Any other code, kept so newer peers' errors are still shown. Build it
    /// through [`ErrorCode::from_u16`]: `Other(5)` would be read back as
    /// `UnknownFile`.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadVersion => 1,
            ErrorCode::Malformed => 2,
            ErrorCode::Unexpected => 3,
            ErrorCode::NotRegistered => 4,
            ErrorCode::UnknownFile => 5,
            ErrorCode::BadIndex => 6,
            ErrorCode::InvalidName => 7,
            ErrorCode::Conflict => 8,
            ErrorCode::NotHeld => 9,
            ErrorCode::Busy => 10,
            ErrorCode::BadGeometry => 11,
            ErrorCode::Internal => 12,
            ErrorCode::KeyRequired => 13,
            ErrorCode::KeyRejected => 14,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u16(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::BadVersion,
            2 => ErrorCode::Malformed,
            3 => ErrorCode::Unexpected,
            4 => ErrorCode::NotRegistered,
            5 => ErrorCode::UnknownFile,
            6 => ErrorCode::BadIndex,
            7 => ErrorCode::InvalidName,
            8 => ErrorCode::Conflict,
            9 => ErrorCode::NotHeld,
            10 => ErrorCode::Busy,
            11 => ErrorCode::BadGeometry,
            12 => ErrorCode::Internal,
            13 => ErrorCode::KeyRequired,
            14 => ErrorCode::KeyRejected,
            c => ErrorCode::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::BadVersion => "protocol version mismatch",
            ErrorCode::Malformed => "malformed message",
            ErrorCode::Unexpected => "unexpected message",
            ErrorCode::NotRegistered => "not registered",
            ErrorCode::UnknownFile => "unknown file",
            ErrorCode::BadIndex => "chunk index out of range",
            ErrorCode::InvalidName => "invalid name",
            ErrorCode::Conflict => "name registered with other content",
            ErrorCode::NotHeld => "chunk not held",
            ErrorCode::Busy => "busy",
            ErrorCode::BadGeometry => "inconsistent length, chunk size and hashes",
            ErrorCode::Internal => "internal error",
            ErrorCode::KeyRequired => "network key required",
            ErrorCode::KeyRejected => "network key rejected",
            ErrorCode::Other(c) => return write!(f, "error code {c}"),
        };
        f.write_str(s)
    }
}

/// Which chunks of a file a registering peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Have {
    /// Every chunk (a sharer, or a finished download).
    All,
    /// Raw bitmap, `ceil(chunks / 8)` bytes, MSB of byte 0 = chunk 0.
    Some(Vec<u8>),
}

/// One file in a Register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub length: u64,
    pub chunk_size: u32,
    /// SHA-1 of each chunk; the count is the file's chunk count.
    pub hashes: Vec<Digest>,
    pub have: Have,
}

/// The tracker's answer for one file of a Register, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    Accepted,
    Refused { code: ErrorCode, reason: String },
}

impl FileOutcome {
    /// A refusal whose reason is cut to [`MAX_MESSAGE_LEN`] so the reply can
    /// always be encoded, whatever the reason quotes.
    pub fn refused(code: ErrorCode, reason: impl Into<String>) -> FileOutcome {
        let mut reason = reason.into();
        truncate_utf8(&mut reason, MAX_MESSAGE_LEN);
        FileOutcome::Refused { code, reason }
    }
}

/// One file in a FileList.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub name: String,
    pub length: u64,
}

/// One endpoint holding chunks of a file, in a Locations reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub addr: SocketAddr,
    /// Raw bitmap, `ceil(chunk_count / 8)` bytes.
    pub have: Vec<u8>,
}

/// The tracker's answer to Locate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    pub name: String,
    pub length: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// Present when the Locate asked for hashes; then exactly `chunk_count`.
    pub hashes: Option<Vec<Digest>>,
    pub sources: Vec<Source>,
}

/// Every message of both protocols (tracker and peer-to-peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message each way on every connection.
    Hello { version: u16 },
    /// A request failed. On the peer protocol it takes the place of the
    /// ChunkData it answers; after `Malformed` or `BadVersion` the sender closes.
    Error { code: ErrorCode, message: String },
    /// A request that has nothing else to return succeeded.
    Ok,
    /// Peer -> tracker, no reply: "I am alive" on an otherwise idle connection.
    Keepalive,
    /// Peer -> tracker: bind this connection to `endpoint`'s port and add files.
    Register {
        endpoint: SocketAddr,
        files: Vec<FileEntry>,
    },
    /// Tracker -> peer: one outcome per file of the Register, in order.
    RegisterReply { results: Vec<FileOutcome> },
    /// Any client -> tracker: which files exist?
    ListFiles,
    /// Tracker -> client.
    FileList {
        files: Vec<FileSummary>,
        truncated: bool,
    },
    /// Any client -> tracker: who holds `name`?
    Locate { name: String, with_hashes: bool },
    /// Tracker -> client.
    Locations(Locations),
    /// Peer -> tracker: "I now hold chunk `index` of `name`". Reply: Ok or Error.
    ChunkRegister { name: String, index: u32 },
    /// Peer -> tracker: forget me. Reply: Ok, then the tracker closes.
    Leave,
    /// Peer -> tracker, on a registered control connection: "I no longer
    /// hold any chunk of `name`". Reply: Ok (also when this peer did not
    /// hold it), or Error{NotRegistered} before any Register.
    Withdraw { name: String },
    /// Peer -> peer: send chunk `index` of `name`.
    ChunkRequest { name: String, index: u32 },
    /// Peer -> peer: the bytes of chunk `index`.
    ChunkData { index: u32, data: Vec<u8> },
}

impl Message {
    /// The frame type byte of this message.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Hello { .. } => ty::HELLO,
            Message::Error { .. } => ty::ERROR,
            Message::Ok => ty::OK,
            Message::Keepalive => ty::KEEPALIVE,
            Message::Register { .. } => ty::REGISTER,
            Message::RegisterReply { .. } => ty::REGISTER_REPLY,
            Message::ListFiles => ty::LIST_FILES,
            Message::FileList { .. } => ty::FILE_LIST,
            Message::Locate { .. } => ty::LOCATE,
            Message::Locations(_) => ty::LOCATIONS,
            Message::ChunkRegister { .. } => ty::CHUNK_REGISTER,
            Message::Leave => ty::LEAVE,
            Message::Withdraw { .. } => ty::WITHDRAW,
            Message::ChunkRequest { .. } => ty::CHUNK_REQUEST,
            Message::ChunkData { .. } => ty::CHUNK_DATA,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Error { .. } => "Error",
            Message::Ok => "Ok",
            Message::Keepalive => "Keepalive",
            Message::Register { .. } => "Register",
            Message::RegisterReply { .. } => "RegisterReply",
            Message::ListFiles => "ListFiles",
            Message::FileList { .. } => "FileList",
            Message::Locate { .. } => "Locate",
            Message::Locations(_) => "Locations",
            Message::ChunkRegister { .. } => "ChunkRegister",
            Message::Leave => "Leave",
            Message::Withdraw { .. } => "Withdraw",
            Message::ChunkRequest { .. } => "ChunkRequest",
            Message::ChunkData { .. } => "ChunkData",
        }
    }

    /// Shorthand for an Error message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Message {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_MESSAGE_LEN);
        Message::Error { code, message }
    }

    /// Appends the whole frame (length, type, payload) to `out`.
    ///
    /// Fails only if a field exceeds its limit (the receiver would refuse
    /// it); `out` is then left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        let r = self.encode_inner(out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_inner(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.type_code());
        match self {
            Message::Hello { version } => {
                out.extend_from_slice(&MAGIC);
                out.write_u16::<BigEndian>(*version)?;
            }
            Message::Error { code, message } => {
                out.write_u16::<BigEndian>(code.to_u16())?;
                put_str(out, message, MAX_MESSAGE_LEN, "error message")?;
            }
            Message::Ok | Message::Keepalive | Message::ListFiles | Message::Leave => {}
            Message::Register { endpoint, files } => put_register(out, endpoint, files)?,
            Message::RegisterReply { results } => put_register_reply(out, results)?,
            Message::FileList { files, truncated } => {
                out.push(u8::from(*truncated));
                put_count32(out, files.len(), MAX_LIST_FILES as u32, "files per list")?;
                for f in files {
                    put_str(out, &f.name, MAX_NAME_LEN, "name")?;
                    out.write_u64::<BigEndian>(f.length)?;
                }
            }
            Message::Locate { name, with_hashes } => {
                put_str(out, name, MAX_NAME_LEN, "name")?;
                out.push(u8::from(*with_hashes));
            }
            Message::Locations(l) => put_locations(out, l, l.hashes.as_deref())?,
            Message::Withdraw { name } => put_str(out, name, MAX_NAME_LEN, "name")?,
            Message::ChunkRegister { name, index } | Message::ChunkRequest { name, index } => {
                put_str(out, name, MAX_NAME_LEN, "name")?;
                out.write_u32::<BigEndian>(*index)?;
            }
            Message::ChunkData { index, data } => {
                out.truncate(start);
                out.extend_from_slice(&chunk_data_header(*index, data.len())?);
                out.extend_from_slice(data);
            }
        }
        finish_frame(out, start)
    }

    /// Decodes one frame's payload given its type byte. The payload must be
    /// consumed exactly: trailing bytes are an error.
    pub fn decode(type_code: u8, payload: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { buf: payload };
        let m = match type_code {
            ty::HELLO => {
                let magic = r.array::<4>("magic")?;
                if magic != MAGIC {
                    return Err(WireError::BadMagic(magic));
                }
                Message::Hello {
                    version: r.u16("version")?,
                }
            }
            ty::ERROR => Message::Error {
                code: ErrorCode::from_u16(r.u16("error code")?),
                message: r.string(MAX_MESSAGE_LEN, "error message")?,
            },
            ty::OK => Message::Ok,
            ty::KEEPALIVE => Message::Keepalive,
            ty::REGISTER => r.register()?,
            ty::REGISTER_REPLY => r.register_reply()?,
            ty::LIST_FILES => Message::ListFiles,
            ty::FILE_LIST => r.file_list()?,
            ty::LOCATE => Message::Locate {
                name: r.string(MAX_NAME_LEN, "name")?,
                with_hashes: r.flag("hashes flag")?,
            },
            ty::LOCATIONS => Message::Locations(r.locations()?),
            ty::CHUNK_REGISTER => Message::ChunkRegister {
                name: r.string(MAX_NAME_LEN, "name")?,
                index: r.u32("index")?,
            },
            ty::LEAVE => Message::Leave,
            ty::WITHDRAW => Message::Withdraw {
                name: r.string(MAX_NAME_LEN, "name")?,
            },
            ty::CHUNK_REQUEST => Message::ChunkRequest {
                name: r.string(MAX_NAME_LEN, "name")?,
                index: r.u32("index")?,
            },
            ty::CHUNK_DATA => r.chunk_data()?,
            other => return Err(WireError::UnknownType(other)),
        };
        if !r.buf.is_empty() {
            return Err(WireError::TrailingBytes {
                kind: m.kind(),
                count: r.buf.len(),
            });
        }
        Ok(m)
    }

    /// Decodes a complete frame held in memory (length prefix included).
    pub fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
        let mut src = frame;
        match read_frame(&mut src)? {
            None => Err(WireError::Truncated {
                what: "frame length",
            }),
            Some(f) => {
                if !src.is_empty() {
                    return Err(WireError::TrailingBytes {
                        kind: "frame",
                        count: src.len(),
                    });
                }
                Message::decode(f.type_code, &f.payload)
            }
        }
    }
}

/// Writes the length of the frame that starts at `start` of `out`.
fn finish_frame(out: &mut [u8], start: usize) -> Result<(), WireError> {
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN as usize {
        return Err(WireError::FrameTooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    BigEndian::write_u32(&mut out[start..start + 4], len as u32);
    Ok(())
}

/// The payload of a `Locations`, with `hashes` in place of `l.hashes`.
/// The payload of a Register (section 4.1 of docs/protocol.md).
fn put_register(
    out: &mut Vec<u8>,
    endpoint: &SocketAddr,
    files: &[FileEntry],
) -> Result<(), WireError> {
    put_addr(out, endpoint)?;
    put_count16(
        out,
        files.len(),
        MAX_FILES_PER_REGISTER,
        "files per register",
    )?;
    for f in files {
        put_str(out, &f.name, MAX_NAME_LEN, "name")?;
        out.write_u64::<BigEndian>(f.length)?;
        out.write_u32::<BigEndian>(f.chunk_size)?;
        put_count32(out, f.hashes.len(), MAX_CHUNKS_PER_FILE, "chunks per file")?;
        for h in &f.hashes {
            out.extend_from_slice(h);
        }
        match &f.have {
            Have::All => out.push(0),
            Have::Some(bits) => {
                check_bitmap(bits, f.hashes.len() as u32)?;
                out.push(1);
                out.extend_from_slice(bits);
            }
        }
    }
    Ok(())
}

/// The payload of a RegisterReply: an outcome per file, a refusal never
/// with code 0 (which means accepted).
fn put_register_reply(out: &mut Vec<u8>, results: &[FileOutcome]) -> Result<(), WireError> {
    put_count16(
        out,
        results.len(),
        MAX_FILES_PER_REGISTER,
        "files per register",
    )?;
    for r in results {
        match r {
            FileOutcome::Accepted => out.write_u16::<BigEndian>(0)?,
            FileOutcome::Refused { code, reason } => {
                if code.to_u16() == 0 {
                    return Err(WireError::Invalid("refusal with code 0"));
                }
                out.write_u16::<BigEndian>(code.to_u16())?;
                put_str(out, reason, MAX_MESSAGE_LEN, "refusal reason")?;
            }
        }
    }
    Ok(())
}

fn put_locations(
    out: &mut Vec<u8>,
    l: &Locations,
    hashes: Option<&[Digest]>,
) -> Result<(), WireError> {
    put_str(out, &l.name, MAX_NAME_LEN, "name")?;
    out.write_u64::<BigEndian>(l.length)?;
    out.write_u32::<BigEndian>(l.chunk_size)?;
    put_count32(
        out,
        l.chunk_count as usize,
        MAX_CHUNKS_PER_FILE,
        "chunks per file",
    )?;
    match hashes {
        None => out.push(0),
        Some(hashes) => {
            if hashes.len() != l.chunk_count as usize {
                return Err(WireError::Invalid("hash count differs from chunk count"));
            }
            out.push(1);
            for h in hashes {
                out.extend_from_slice(h);
            }
        }
    }
    put_count16(
        out,
        l.sources.len(),
        MAX_SOURCES_PER_REPLY,
        "sources per reply",
    )?;
    for s in &l.sources {
        put_addr(out, &s.addr)?;
        check_bitmap(&s.have, l.chunk_count)?;
        out.extend_from_slice(&s.have);
    }
    Ok(())
}

/// Appends a whole `Locations` frame whose hash list is `hashes`, given
/// apart from `l` (whose own `hashes` is ignored) so that a list shared
/// with someone else (the tracker's registry) is encoded without being
/// copied first. The same bytes as `Message::Locations` with those hashes.
pub fn encode_locations(
    l: &Locations,
    hashes: Option<&[Digest]>,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(ty::LOCATIONS);
    let r = put_locations(out, l, hashes).and_then(|()| finish_frame(out, start));
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Smallest encoding of one Register file entry: empty name (2), length (8),
/// chunk size (4), count (4), have flag (1).
const FILE_ENTRY_MIN_LEN: usize = 2 + 8 + 4 + 4 + 1;

/// The header of a ChunkData frame carrying `data_len` bytes of chunk
/// `index`. Senders write this and then the chunk bytes straight from their
/// buffer, so a chunk is never copied into a second message buffer.
pub fn chunk_data_header(
    index: u32,
    data_len: usize,
) -> Result<[u8; CHUNK_DATA_HEADER_LEN], WireError> {
    if data_len > MAX_CHUNK_SIZE as usize {
        return Err(WireError::LimitExceeded {
            what: "chunk size",
            count: data_len as u64,
            max: u64::from(MAX_CHUNK_SIZE),
        });
    }
    let mut h = [0u8; CHUNK_DATA_HEADER_LEN];
    BigEndian::write_u32(&mut h[0..4], (1 + 4 + data_len) as u32);
    h[4] = ty::CHUNK_DATA;
    BigEndian::write_u32(&mut h[5..9], index);
    Ok(h)
}

/// One frame as read off a stream: its type byte and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub type_code: u8,
    pub payload: Vec<u8>,
}

/// Reads one frame. A clean end of stream before the first byte is
/// `Ok(None)`; an end of stream inside a frame is [`WireError::Truncated`].
/// The length is checked against [`MAX_FRAME_LEN`] before any allocation.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, WireError> {
    let Some((len, type_code)) = read_header(r)? else {
        return Ok(None);
    };
    let payload = read_payload(r, len as usize - 1, Vec::new())?;
    Ok(Some(Frame { type_code, payload }))
}

/// Reads one frame's header, its length and type byte: `(len, type)`,
/// `len` checked against [`MAX_FRAME_LEN`]; `Ok(None)` on a clean end of
/// stream before the first byte. Nothing of the payload is read, so a
/// server can refuse a frame on its header alone; read the payload with
/// [`read_frame_payload`] (`len - 1` bytes).
pub fn read_frame_header<R: Read + ?Sized>(r: &mut R) -> Result<Option<(u32, u8)>, WireError> {
    read_header(r)
}

/// Reads a frame's payload of `want` bytes, after [`read_frame_header`],
/// with the same allocation bound as [`read_frame`].
pub fn read_frame_payload<R: Read + ?Sized>(r: &mut R, want: usize) -> Result<Vec<u8>, WireError> {
    read_payload(r, want, Vec::new())
}

/// Reads a frame's length and type byte: `(len, type)`, `len` checked.
fn read_header<R: Read + ?Sized>(r: &mut R) -> Result<Option<(u32, u8)>, WireError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len_buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(WireError::Truncated {
                    what: "frame length",
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    let len = BigEndian::read_u32(&len_buf);
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    let mut type_code = [0u8; 1];
    read_full(r, &mut type_code, "frame type")?;
    Ok(Some((len, type_code[0])))
}

/// Reads exactly `want` payload bytes into `buf`, its memory reused.
/// A buffer already holding at least `want` bytes (a chunk buffer passed
/// back for the next chunk) is read into as it is, without zeroing it
/// again first (which `read_to_end` would do to spare capacity: a memset
/// of every byte received). Otherwise it is cleared and at most
/// [`INITIAL_FRAME_ALLOC`] is reserved up front; beyond that it grows only
/// as bytes actually arrive.
fn read_payload<R: Read + ?Sized>(
    r: &mut R,
    want: usize,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, WireError> {
    if buf.len() >= want {
        buf.truncate(want);
        read_full(r, &mut buf, "frame payload")?;
        return Ok(buf);
    }
    buf.clear();
    buf.reserve(want.min(INITIAL_FRAME_ALLOC));
    let n = r
        .take(want as u64)
        .read_to_end(&mut buf)
        .map_err(WireError::Io)?;
    if n < want {
        return Err(WireError::Truncated {
            what: "frame payload",
        });
    }
    Ok(buf)
}

fn read_full<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), WireError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Truncated { what }
        } else {
            WireError::Io(e)
        }
    })
}

/// Reads and decodes one message; `Ok(None)` on a clean end of stream.
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, WireError> {
    read_message_into(r, &mut Vec::new())
}

/// [`read_message`] for the receive hot path: a ChunkData's bytes are read
/// straight from the stream into `spare` (taken, so its capacity is reused
/// and the chunk is never copied again after the kernel's copy); `spare`
/// is left alone for every other message. Same checks, same errors and
/// same allocation bound as decoding the whole frame.
pub fn read_message_into<R: Read + ?Sized>(
    r: &mut R,
    spare: &mut Vec<u8>,
) -> Result<Option<Message>, WireError> {
    let Some((len, type_code)) = read_header(r)? else {
        return Ok(None);
    };
    let want = len as usize - 1;
    if type_code != ty::CHUNK_DATA || want < 4 {
        let payload = read_payload(r, want, Vec::new())?;
        return Message::decode(type_code, &payload).map(Some);
    }
    let mut index = [0u8; 4];
    read_full(r, &mut index, "frame payload")?;
    let data = read_payload(r, want - 4, std::mem::take(spare))?;
    if data.len() > MAX_CHUNK_SIZE as usize {
        return Err(WireError::LimitExceeded {
            what: "chunk size",
            count: data.len() as u64,
            max: u64::from(MAX_CHUNK_SIZE),
        });
    }
    Ok(Some(Message::ChunkData {
        index: BigEndian::read_u32(&index),
        data,
    }))
}

/// Encodes `m` and writes it with one `write_all`.
pub fn write_message<W: Write + ?Sized>(w: &mut W, m: &Message) -> Result<(), WireError> {
    let mut buf = Vec::new();
    m.encode(&mut buf)?;
    w.write_all(&buf).map_err(WireError::Io)
}

// ---- Errors -------------------------------------------------------------

/// Why bytes could not be read or written as a message.
#[derive(Debug)]
pub enum WireError {
    /// The stream failed (including a read or write timeout nobody
    /// attributed to the other side; see [`WireError::NoAnswer`]).
    Io(io::Error),
    /// The other side sent or took nothing within `after`, the socket's
    /// read or write timeout: it is stopped, hung or overloaded. Built by
    /// the client, which knows the timeout, so the user reads a sentence
    /// instead of "Resource temporarily unavailable".
    NoAnswer { after: std::time::Duration },
    /// The length prefix exceeds [`MAX_FRAME_LEN`] (or an encoded message would).
    FrameTooLarge { len: u64, max: u32 },
    /// A frame with `len == 0` (no type byte).
    EmptyFrame,
    /// The stream or payload ended inside `what`.
    Truncated { what: &'static str },
    /// The type byte names no message.
    UnknownType(u8),
    /// The payload had `count` bytes left after a complete `kind` message.
    TrailingBytes { kind: &'static str, count: usize },
    /// A Hello whose magic is not [`MAGIC`]: not a p2pfs peer.
    BadMagic([u8; 4]),
    /// A string field is not UTF-8.
    InvalidUtf8 { what: &'static str },
    /// A count or length field exceeds its named limit.
    LimitExceeded {
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// An address family byte other than 4 or 6.
    BadAddressFamily(u8),
    /// A flag byte other than 0 or 1.
    BadFlag { what: &'static str, value: u8 },
    /// A bitmap with bits set past its last chunk.
    BadBitmap,
    /// A message that cannot be encoded as given (a bug in the caller).
    Invalid(&'static str),
}

impl WireError {
    /// True when the other side simply went away or went quiet (as opposed
    /// to sending something wrong).
    pub fn is_disconnect(&self) -> bool {
        match self {
            WireError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
            ),
            WireError::Truncated { .. } | WireError::NoAnswer { .. } => true,
            _ => false,
        }
    }

    /// True for a read or write timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            WireError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            WireError::NoAnswer { .. } => true,
            _ => false,
        }
    }

    /// `self`, or [`WireError::NoAnswer`] when it is the timeout of a
    /// socket whose timeout is `timeout` (an error the system raised:
    /// `WouldBlock` or `TimedOut` with no message of ours, so a deadline
    /// helper's own "deadline passed" keeps its words).
    pub fn no_answer_within(self, timeout: Option<std::time::Duration>) -> WireError {
        match (self, timeout) {
            (WireError::Io(e), Some(after)) if e.get_ref().is_none() && self_timeout(&e) => {
                WireError::NoAnswer { after }
            }
            (e, _) => e,
        }
    }

    /// The sentence for `who` failing with this error: "ADDR did not
    /// answer within 10 s" for [`WireError::NoAnswer`], else "ADDR: error".
    pub fn about(&self, who: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NoAnswer { after } => {
                write!(f, "{who} did not answer within {}", Seconds(*after))
            }
            e => write!(f, "{who}: {e}"),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "i/o error: {e}"),
            WireError::NoAnswer { after } => {
                write!(f, "did not answer within {}", Seconds(*after))
            }
            WireError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::EmptyFrame => write!(f, "empty frame (length 0)"),
            WireError::Truncated { what } => write!(f, "truncated message: ended inside {what}"),
            WireError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            WireError::TrailingBytes { kind, count } => {
                write!(f, "{count} unexpected bytes after a {kind} message")
            }
            WireError::BadMagic(m) => write!(f, "bad magic {m:02x?}: not a p2pfs peer"),
            WireError::InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            WireError::LimitExceeded { what, count, max } => {
                write!(f, "{what}: {count} exceeds the limit of {max}")
            }
            WireError::BadAddressFamily(v) => write!(f, "bad address family {v} (expected 4 or 6)"),
            WireError::BadFlag { what, value } => write!(f, "{what} is {value} (expected 0 or 1)"),
            WireError::BadBitmap => write!(f, "bitmap has bits set past the last chunk"),
            WireError::Invalid(why) => write!(f, "cannot encode: {why}"),
        }
    }
}

fn self_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A timeout as people write it: "10 s", "0.3 s".
struct Seconds(std::time::Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

// ---- Names --------------------------------------------------------------

/// Why a file name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    ComponentTooLong,
    Absolute,
    EmptyComponent,
    DotComponent,
    DotDotComponent,
    Nul,
    Backslash,
    ControlChar,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NameError::Empty => "name is empty",
            NameError::TooLong => {
                return write!(f, "name is longer than {MAX_NAME_LEN} bytes");
            }
            NameError::ComponentTooLong => {
                return write!(
                    f,
                    "a name component is longer than {MAX_NAME_COMPONENT_LEN} bytes"
                );
            }
            NameError::Absolute => "name is absolute (starts with '/')",
            NameError::EmptyComponent => "name has an empty component ('//' or a trailing '/')",
            NameError::DotComponent => "name has a '.' component",
            NameError::DotDotComponent => "name has a '..' component",
            NameError::Nul => "name contains a NUL byte",
            NameError::Backslash => "name contains a backslash",
            NameError::ControlChar => "name contains a control character",
        };
        f.write_str(s)
    }
}

impl std::error::Error for NameError {}

/// The one rule for file names, used by the tracker and by peers: a relative
/// path with `/` separators whose every component is a plain name. Joining
/// an accepted name onto a folder can never leave that folder.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    for c in name.split('/') {
        match c {
            "" => return Err(NameError::EmptyComponent),
            "." => return Err(NameError::DotComponent),
            ".." => return Err(NameError::DotDotComponent),
            c if c.len() > MAX_NAME_COMPONENT_LEN => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

// ---- Encoding helpers ---------------------------------------------------

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

fn limit(what: &'static str, count: usize, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(WireError::LimitExceeded {
            what,
            count: count as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize, what: &'static str) -> Result<(), WireError> {
    limit(what, s.len(), max)?;
    out.write_u16::<BigEndian>(s.len() as u16)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_count16(
    out: &mut Vec<u8>,
    n: usize,
    max: usize,
    what: &'static str,
) -> Result<(), WireError> {
    limit(what, n, max)?;
    out.write_u16::<BigEndian>(n as u16)?;
    Ok(())
}

fn put_count32(out: &mut Vec<u8>, n: usize, max: u32, what: &'static str) -> Result<(), WireError> {
    limit(what, n, max as usize)?;
    out.write_u32::<BigEndian>(n as u32)?;
    Ok(())
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) -> Result<(), WireError> {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.write_u16::<BigEndian>(a.port())?;
    Ok(())
}

fn check_bitmap(bits: &[u8], count: u32) -> Result<(), WireError> {
    if bits.len() != (count as usize).div_ceil(8) {
        return Err(WireError::Invalid("bitmap length differs from chunk count"));
    }
    if !padding_clear(bits, count) {
        return Err(WireError::BadBitmap);
    }
    Ok(())
}

fn padding_clear(bits: &[u8], count: u32) -> bool {
    let rem = count % 8;
    match bits.last() {
        Some(last) if rem != 0 => last & (0xffu8 >> rem) == 0,
        _ => true,
    }
}

// ---- Decoding helpers ---------------------------------------------------

/// The payloads of the larger messages, each read whole (the caller
/// checks that nothing is left).
impl Reader<'_> {
    fn register(&mut self) -> Result<Message, WireError> {
        let endpoint = self.addr()?;
        let n = self.count16(
            MAX_FILES_PER_REGISTER,
            FILE_ENTRY_MIN_LEN,
            "files per register",
        )?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string(MAX_NAME_LEN, "name")?;
            let length = self.u64("length")?;
            let chunk_size = self.u32("chunk size")?;
            let count = self.count32(MAX_CHUNKS_PER_FILE, DIGEST_LEN, "chunks per file")?;
            let hashes = self.digests(count)?;
            let have = match self.u8("have flag")? {
                0 => Have::All,
                1 => Have::Some(self.bitmap(count as u32)?),
                v => {
                    return Err(WireError::BadFlag {
                        what: "have flag",
                        value: v,
                    });
                }
            };
            files.push(FileEntry {
                name,
                length,
                chunk_size,
                hashes,
                have,
            });
        }
        Ok(Message::Register { endpoint, files })
    }

    fn register_reply(&mut self) -> Result<Message, WireError> {
        let n = self.count16(MAX_FILES_PER_REGISTER, 2, "files per register")?;
        let mut results = Vec::with_capacity(n);
        for _ in 0..n {
            results.push(match self.u16("outcome")? {
                0 => FileOutcome::Accepted,
                c => FileOutcome::Refused {
                    code: ErrorCode::from_u16(c),
                    reason: self.string(MAX_MESSAGE_LEN, "refusal reason")?,
                },
            });
        }
        Ok(Message::RegisterReply { results })
    }

    fn file_list(&mut self) -> Result<Message, WireError> {
        let truncated = self.flag("truncated flag")?;
        let n = self.count32(MAX_LIST_FILES as u32, 2 + 8, "files per list")?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            files.push(FileSummary {
                name: self.string(MAX_NAME_LEN, "name")?,
                length: self.u64("length")?,
            });
        }
        Ok(Message::FileList { files, truncated })
    }

    fn locations(&mut self) -> Result<Locations, WireError> {
        let name = self.string(MAX_NAME_LEN, "name")?;
        let length = self.u64("length")?;
        let chunk_size = self.u32("chunk size")?;
        let chunk_count = self.u32("chunk count")?;
        if chunk_count > MAX_CHUNKS_PER_FILE {
            return Err(WireError::LimitExceeded {
                what: "chunks per file",
                count: u64::from(chunk_count),
                max: u64::from(MAX_CHUNKS_PER_FILE),
            });
        }
        let hashes = if self.flag("hashes flag")? {
            Some(self.digests(chunk_count as usize)?)
        } else {
            None
        };
        let min_source = 1 + 4 + 2 + (chunk_count as usize).div_ceil(8);
        let n = self.count16(MAX_SOURCES_PER_REPLY, min_source, "sources per reply")?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            sources.push(Source {
                addr: self.addr()?,
                have: self.bitmap(chunk_count)?,
            });
        }
        Ok(Locations {
            name,
            length,
            chunk_size,
            chunk_count,
            hashes,
            sources,
        })
    }

    fn chunk_data(&mut self) -> Result<Message, WireError> {
        let index = self.u32("index")?;
        let data = self.take(self.buf.len(), "chunk data")?.to_vec();
        if data.len() > MAX_CHUNK_SIZE as usize {
            return Err(WireError::LimitExceeded {
                what: "chunk size",
                count: data.len() as u64,
                max: u64::from(MAX_CHUNK_SIZE),
            });
        }
        Ok(Message::ChunkData { index, data })
    }
}

/// A cursor over a payload whose every read reports what it was reading.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::BadFlag { what, value }),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(BigEndian::read_u16(self.take(2, what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(BigEndian::read_u32(self.take(4, what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(BigEndian::read_u64(self.take(8, what)?))
    }

    fn string(&mut self, max: usize, what: &'static str) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        limit(what, n, max)?;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::InvalidUtf8 { what })
    }

    /// A u16 count, checked against `max` and against the bytes left given
    /// each item takes at least `min_item` bytes, before any allocation.
    fn count16(
        &mut self,
        max: usize,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        let n = self.u16(what)? as usize;
        self.check_count(n, max, min_item, what)
    }

    fn count32(
        &mut self,
        max: u32,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        self.check_count(n, max as usize, min_item, what)
    }

    fn check_count(
        &self,
        n: usize,
        max: usize,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        limit(what, n, max)?;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(WireError::Truncated { what });
        }
        Ok(n)
    }

    fn digests(&mut self, n: usize) -> Result<Vec<Digest>, WireError> {
        let bytes = self.take(n.saturating_mul(DIGEST_LEN), "chunk hashes")?;
        Ok(bytes
            .chunks_exact(DIGEST_LEN)
            .map(|c| {
                let mut d = [0u8; DIGEST_LEN];
                d.copy_from_slice(c);
                d
            })
            .collect())
    }

    fn bitmap(&mut self, count: u32) -> Result<Vec<u8>, WireError> {
        let bits = self.take((count as usize).div_ceil(8), "bitmap")?;
        if !padding_clear(bits, count) {
            return Err(WireError::BadBitmap);
        }
        Ok(bits.to_vec())
    }

    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8("address family")? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("IPv6 address")?)),
            v => return Err(WireError::BadAddressFamily(v)),
        };
        Ok(SocketAddr::new(ip, self.u16("port")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encode_locations` with the hashes given apart writes the same bytes
    /// as the message holding them, and refuses the same mistakes.
    #[test]
    fn locations_with_shared_hashes_encode_like_the_message() {
        let hashes: Vec<Digest> = (0..3u8).map(|i| [i; 20]).collect();
        let mut l = Locations {
            name: "f".into(),
            length: 2500,
            chunk_size: 1024,
            chunk_count: 3,
            hashes: Some(hashes.clone()),
            sources: vec![Source {
                addr: "127.0.0.1:9".parse().unwrap(),
                have: vec![0b1010_0000],
            }],
        };
        for with in [true, false] {
            let mut want = Vec::new();
            l.hashes = with.then(|| hashes.clone());
            Message::Locations(l.clone()).encode(&mut want).unwrap();
            let mut got = vec![9u8];
            l.hashes = None;
            encode_locations(&l, with.then_some(&hashes[..]), &mut got).unwrap();
            assert_eq!(&got[1..], &want[..]);
        }
        let mut out = vec![1u8];
        assert!(encode_locations(&l, Some(&hashes[..2]), &mut out).is_err());
        assert_eq!(out, [1]);
    }

    fn frame(m: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        m.encode(&mut b).unwrap();
        b
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
            },
            Message::error(ErrorCode::UnknownFile, "no such file"),
            Message::Ok,
            Message::Keepalive,
            Message::Register {
                endpoint: "10.0.0.1:7001".parse().unwrap(),
                files: vec![
                    FileEntry {
                        name: "a/b.txt".into(),
                        length: 3000,
                        chunk_size: 1024,
                        hashes: vec![[1; 20], [2; 20], [3; 20]],
                        have: Have::All,
                    },
                    FileEntry {
                        name: "big".into(),
                        length: 5 << 30,
                        chunk_size: 16 << 20,
                        hashes: vec![[9; 20]; 320],
                        have: Have::Some({
                            let mut v = vec![0u8; 40];
                            v[0] = 0x80;
                            v
                        }),
                    },
                ],
            },
            Message::RegisterReply {
                results: vec![
                    FileOutcome::Accepted,
                    FileOutcome::Refused {
                        code: ErrorCode::Conflict,
                        reason: "different hashes".into(),
                    },
                ],
            },
            Message::ListFiles,
            Message::FileList {
                files: vec![FileSummary {
                    name: "x".into(),
                    length: 7,
                }],
                truncated: false,
            },
            Message::Locate {
                name: "x".into(),
                with_hashes: true,
            },
            Message::Locations(Locations {
                name: "x".into(),
                length: 2049,
                chunk_size: 1024,
                chunk_count: 3,
                hashes: Some(vec![[7; 20]; 3]),
                sources: vec![
                    Source {
                        addr: "127.0.0.1:9".parse().unwrap(),
                        have: vec![0xe0],
                    },
                    Source {
                        addr: "[::1]:10".parse().unwrap(),
                        have: vec![0x40],
                    },
                ],
            }),
            Message::ChunkRegister {
                name: "x".into(),
                index: 2,
            },
            Message::Leave,
            Message::Withdraw { name: "x".into() },
            Message::ChunkRequest {
                name: "x".into(),
                index: 0,
            },
            Message::ChunkData {
                index: 5,
                data: vec![1, 2, 3],
            },
        ]
    }

    #[test]
    fn every_sample_round_trips() {
        for m in samples() {
            let b = frame(&m);
            assert_eq!(Message::decode_frame(&b).unwrap(), m, "{}", m.kind());
            // And through a stream, byte by byte (split frames).
            let mut slow = SlowReader { data: &b, pos: 0 };
            assert_eq!(read_message(&mut slow).unwrap().unwrap(), m);
            assert!(read_message(&mut slow).unwrap().is_none());
        }
    }

    #[test]
    fn chunk_data_is_read_into_the_spare_buffer() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut b = frame(&Message::ChunkData {
            index: 7,
            data: data.clone(),
        });
        Message::Ok.encode(&mut b).unwrap();
        let mut spare = Vec::with_capacity(8192);
        let ptr = spare.as_ptr();
        let mut src = &b[..];
        match read_message_into(&mut src, &mut spare).unwrap() {
            Some(Message::ChunkData { index: 7, data: d }) => {
                assert_eq!(d, data);
                assert_eq!(d.as_ptr(), ptr, "the spare buffer was not reused");
                spare = d;
            }
            other => panic!("{other:?}"),
        }
        // Any other message leaves the spare buffer alone.
        assert_eq!(
            read_message_into(&mut src, &mut spare).unwrap(),
            Some(Message::Ok)
        );
        assert_eq!(spare.as_ptr(), ptr);
        assert!(read_message_into(&mut src, &mut spare).unwrap().is_none());
        // Short or cut ChunkData frames fail exactly as decoding them does.
        let whole = frame(&Message::ChunkData {
            index: 1,
            data: vec![9; 10],
        });
        for cut in 1..whole.len() {
            let mut short = whole[..cut].to_vec();
            let n = short.len() as u32;
            if cut >= 4 {
                BigEndian::write_u32(&mut short[..4], n - 4);
            }
            let a = read_message_into(&mut &short[..], &mut Vec::new()).map_err(|e| e.to_string());
            let b = read_message(&mut &short[..]).map_err(|e| e.to_string());
            let c = Message::decode_frame(&short)
                .map(Some)
                .map_err(|e| e.to_string());
            // A spare buffer already long enough is read into as it is.
            let mut full = vec![0xAA; 64];
            let d = read_message_into(&mut &short[..], &mut full).map_err(|e| e.to_string());
            assert_eq!(a, c, "cut {cut}");
            assert_eq!(b, c, "cut {cut}");
            assert_eq!(d, c, "cut {cut}");
        }
    }

    #[test]
    fn a_long_spare_buffer_is_reused_without_its_old_bytes() {
        let mut spare = vec![0xEE; 5000];
        let ptr = spare.as_ptr();
        for len in [3000usize, 5000, 1, 0, 4999] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let b = frame(&Message::ChunkData {
                index: 2,
                data: data.clone(),
            });
            match read_message_into(&mut &b[..], &mut spare).unwrap() {
                Some(Message::ChunkData { index: 2, data: d }) => {
                    assert_eq!(d, data, "len {len}");
                    spare = d;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(spare.as_ptr(), ptr, "the spare buffer was not reused");
    }

    struct SlowReader<'a> {
        data: &'a [u8],
        pos: usize,
    }

    impl Read for SlowReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.data.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.data[self.pos];
            self.pos += 1;
            Ok(1)
        }
    }

    #[test]
    fn hello_layout_is_exact() {
        let b = frame(&Message::Hello { version: 1 });
        assert_eq!(b, [0, 0, 0, 7, 0x01, b'P', b'2', b'P', b'F', 0, 1]);
    }

    #[test]
    fn withdraw_layout_is_exact() {
        let b = frame(&Message::Withdraw { name: "ab".into() });
        assert_eq!(b, [0, 0, 0, 5, 0x18, 0, 2, b'a', b'b']);
        let long = Message::Withdraw {
            name: "a".repeat(MAX_NAME_LEN + 1),
        };
        assert!(long.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn chunk_request_layout_is_exact() {
        let b = frame(&Message::ChunkRequest {
            name: "ab".into(),
            index: 258,
        });
        assert_eq!(b, [0, 0, 0, 9, 0x20, 0, 2, b'a', b'b', 0, 0, 1, 2]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for m in samples() {
            let b = frame(&m);
            for cut in 1..b.len() {
                let r = Message::decode_frame(&b[..cut]);
                assert!(r.is_err(), "{} cut at {cut} decoded", m.kind());
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for m in samples() {
            if matches!(m, Message::ChunkData { .. }) {
                continue; // its payload runs to the end of the frame by definition
            }
            let mut b = frame(&m);
            b.push(0);
            let len = BigEndian::read_u32(&b[..4]) + 1;
            BigEndian::write_u32(&mut b[..4], len);
            assert!(
                matches!(
                    Message::decode_frame(&b),
                    Err(WireError::TrailingBytes { .. })
                ),
                "{}",
                m.kind()
            );
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_before_allocation() {
        let b = [0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            read_frame(&mut &b[..]),
            Err(WireError::FrameTooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
        // Just under the limit but with no bytes behind it: truncated, and
        // the buffer only grew to what arrived.
        let mut b = Vec::new();
        b.extend_from_slice(&MAX_FRAME_LEN.to_be_bytes());
        b.push(ty::CHUNK_DATA);
        b.extend_from_slice(&[0; 100]);
        assert!(matches!(
            read_frame(&mut &b[..]),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn ty_all_lists_exactly_the_codes_that_decode() {
        // Every code in ALL has a decoder (an empty payload may be refused as
        // truncated, never as an unknown type); every other byte is unknown.
        for t in 0..=u8::MAX {
            let unknown = matches!(Message::decode(t, &[]), Err(WireError::UnknownType(_)));
            assert_eq!(ty::ALL.contains(&t), !unknown, "type 0x{t:02x}");
        }
        assert!(
            ty::ALL.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats"
        );
    }

    #[test]
    fn malformed_cases_are_typed_errors() {
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 0]),
            Err(WireError::EmptyFrame)
        ));
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 1, 0x7f]),
            Err(WireError::UnknownType(0x7f))
        ));
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 7, 0x01, b'H', b'T', b'T', b'P', 0, 1]),
            Err(WireError::BadMagic(_))
        ));
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 4, 0x20, 0, 5, b'a']),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 8, 0x20, 0, 1, 0xff, 0, 0, 0, 0]),
            Err(WireError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            Message::decode_frame(&[0, 0, 0, 4, 0x14, 0, 0, 2]),
            Err(WireError::BadFlag { .. })
        ));
        // Name length over the limit.
        let mut b = vec![0, 0, 0, 7, 0x14];
        b.extend_from_slice(&(MAX_NAME_LEN as u16 + 1).to_be_bytes());
        b.extend_from_slice(&[b'a'; 4]);
        assert!(matches!(
            Message::decode_frame(&b),
            Err(WireError::LimitExceeded { .. })
        ));
        // A Register claiming 1000 files in 20 bytes: refused before allocating.
        let mut b = vec![0, 0, 0, 10, 0x10, 4, 127, 0, 0, 1, 0, 80];
        b.extend_from_slice(&1000u16.to_be_bytes());
        assert!(matches!(
            Message::decode_frame(&b),
            Err(WireError::Truncated { .. })
        ));
        // Bad address family.
        let b = [0, 0, 0, 4, 0x10, 5, 0, 0];
        assert!(matches!(
            Message::decode_frame(&b),
            Err(WireError::BadAddressFamily(5))
        ));
    }

    #[test]
    fn encode_refuses_over_limit_fields() {
        let m = Message::Locate {
            name: "a".repeat(MAX_NAME_LEN + 1),
            with_hashes: false,
        };
        let mut out = vec![9];
        assert!(m.encode(&mut out).is_err());
        assert_eq!(out, vec![9]);
        let m = Message::ChunkData {
            index: 0,
            data: vec![0; MAX_CHUNK_SIZE as usize + 1],
        };
        assert!(m.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn bitmap_padding_is_checked() {
        let m = Message::Locations(Locations {
            name: "x".into(),
            length: 3000,
            chunk_size: 1024,
            chunk_count: 3,
            hashes: None,
            sources: vec![Source {
                addr: "127.0.0.1:1".parse().unwrap(),
                have: vec![0xf0],
            }],
        });
        assert!(matches!(
            m.encode(&mut Vec::new()),
            Err(WireError::BadBitmap)
        ));
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "a/b",
            "dir/sub/file.txt",
            "..a",
            "a..",
            ".hidden",
            "ünï/cödé",
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("../x", NameError::DotDotComponent),
            ("a/../../b", NameError::DotDotComponent),
            ("a/..", NameError::DotDotComponent),
            ("./a", NameError::DotComponent),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("a\\b", NameError::Backslash),
            ("a\0b", NameError::Nul),
            ("a\nb", NameError::ControlChar),
        ];
        for (name, err) in bad {
            assert_eq!(validate_name(name), Err(*err), "{name:?}");
        }
        assert_eq!(
            validate_name(&"a".repeat(256)),
            Err(NameError::ComponentTooLong)
        );
        let long = vec!["a".repeat(200); 6].join("/");
        assert_eq!(validate_name(&long), Err(NameError::TooLong));
        // The messages state the limits from `limits`, not copies.
        assert_eq!(
            NameError::TooLong.to_string(),
            format!("name is longer than {} bytes", crate::limits::MAX_NAME_LEN)
        );
        assert_eq!(
            NameError::ComponentTooLong.to_string(),
            format!(
                "a name component is longer than {} bytes",
                crate::limits::MAX_NAME_COMPONENT_LEN
            )
        );
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(c).to_u16(), c);
        }
    }
}

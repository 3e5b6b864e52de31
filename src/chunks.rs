//! Chunk geometry, SHA-1 hashing and have-bitmaps.
//!
//! Owns: how a file of `length` bytes is cut into chunks of `chunk_size`
//! bytes ([`Geometry`]), the validated chunk index newtype ([`ChunkIndex`]),
//! the per-chunk SHA-1 digest ([`Digest`], [`sha1()`]) and the compact bitmap of
//! which chunks someone holds ([`Bitmap`]).
//!
//! Depends on nothing else in the crate (only `std` and `sha1`), so the
//! tracker and the peer agree on geometry by construction. Numbers that come
//! from the network are checked here before they are used as offsets.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha1::{Digest as _, Sha1};

pub use crate::limits::{
    DEFAULT_CHUNK_SIZE, DIGEST_LEN, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_FILE, MIN_CHUNK_SIZE,
};

/// A SHA-1 digest of one chunk.
pub type Digest = [u8; DIGEST_LEN];

/// SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> Digest {
    Sha1::digest(data).into()
}

/// Lowercase hex of a digest (for logs and the `where` output).
pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of the bytes hashed into a [`ContentId`]: names the scheme, so a
/// later scheme can never produce the same id from the same fields.
pub const CONTENT_ID_TAG: &[u8] = b"p2pfs content id v1\0";

/// The content id of a file: SHA-1 over [`CONTENT_ID_TAG`], the length
/// (u64 big-endian), the chunk size (u32 big-endian) and every chunk hash in
/// order (protocol.md §4.1). It pins *what* a name stands for: two files have
/// the same id exactly when they have the same bytes cut the same way (as far
/// as SHA-1 tells), so `get --id` can refuse any other content under a name a
/// user already trusts. Shown as 40 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentId(pub Digest);

impl ContentId {
    /// The id of a file with this geometry and these chunk hashes.
    pub fn compute(length: u64, chunk_size: u32, hashes: &[Digest]) -> ContentId {
        let mut h = Sha1::new();
        h.update(CONTENT_ID_TAG);
        h.update(length.to_be_bytes());
        h.update(chunk_size.to_be_bytes());
        for d in hashes {
            h.update(d);
        }
        ContentId(h.finalize().into())
    }

    /// Parses 40 hex digits (either case); `None` for anything else.
    pub fn parse(text: &str) -> Option<ContentId> {
        let t = text.as_bytes();
        // Digits only: `from_str_radix` alone would also take a sign.
        if t.len() != 2 * DIGEST_LEN || !t.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut d = [0u8; DIGEST_LEN];
        for (i, pair) in t.chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            d[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(ContentId(d))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Why a (length, chunk size) pair is not a valid file geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeometryError {
    /// The chunk size is outside `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
    ChunkSize(u32),
    /// The file would need more than `MAX_CHUNKS_PER_FILE` chunks.
    TooManyChunks { length: u64, chunk_size: u32 },
    /// The number of hashes does not match the number of chunks.
    HashCount { expected: u32, got: usize },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeometryError::ChunkSize(s) => write!(
                f,
                "chunk size {s} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes"
            ),
            GeometryError::TooManyChunks { length, chunk_size } => write!(
                f,
                "a {length}-byte file in {chunk_size}-byte chunks needs more than {MAX_CHUNKS_PER_FILE} chunks; use a larger chunk size"
            ),
            GeometryError::HashCount { expected, got } => {
                write!(f, "{got} chunk hashes given for {expected} chunks")
            }
        }
    }
}

impl std::error::Error for GeometryError {}

/// How a file is cut into chunks. Every chunk is `chunk_size` bytes except
/// the last, which holds the remainder. A zero-length file has no chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    length: u64,
    chunk_size: u32,
    count: u32,
}

impl Geometry {
    /// Checks the chunk size and chunk count limits.
    pub fn new(length: u64, chunk_size: u32) -> Result<Geometry, GeometryError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(GeometryError::ChunkSize(chunk_size));
        }
        let count = length.div_ceil(u64::from(chunk_size));
        if count > u64::from(MAX_CHUNKS_PER_FILE) {
            return Err(GeometryError::TooManyChunks { length, chunk_size });
        }
        Ok(Geometry {
            length,
            chunk_size,
            count: count as u32, // checked just above
        })
    }

    /// Like [`Geometry::new`], and checks that `hash_count` hashes fit it.
    pub fn with_hashes(
        length: u64,
        chunk_size: u32,
        hash_count: usize,
    ) -> Result<Geometry, GeometryError> {
        let g = Geometry::new(length, chunk_size)?;
        if hash_count != g.count as usize {
            return Err(GeometryError::HashCount {
                expected: g.count,
                got: hash_count,
            });
        }
        Ok(g)
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Validates a raw index (e.g. from the wire).
    pub fn index(&self, raw: u32) -> Option<ChunkIndex> {
        (raw < self.count).then_some(ChunkIndex(raw))
    }

    /// Every chunk index, in order.
    pub fn indices(&self) -> impl Iterator<Item = ChunkIndex> + use<> {
        (0..self.count).map(ChunkIndex)
    }

    /// Byte offset of a chunk in the file.
    pub fn offset(&self, i: ChunkIndex) -> u64 {
        u64::from(i.0) * u64::from(self.chunk_size)
    }

    /// Length of a chunk in bytes (the last one may be short).
    pub fn chunk_len(&self, i: ChunkIndex) -> u32 {
        let rest = self.length - self.offset(i);
        rest.min(u64::from(self.chunk_size)) as u32
    }
}

/// A chunk index known to be in range for some [`Geometry`]. Only
/// [`Geometry::index`] and [`Geometry::indices`] make one, so code that holds
/// a `ChunkIndex` never needs to re-check bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(u32);

impl ChunkIndex {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Reads chunk `i` of `file` into `buf` (resized to the chunk length) with a
/// positional read.
pub fn read_chunk(file: &File, g: &Geometry, i: ChunkIndex, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(g.chunk_len(i) as usize, 0);
    file.read_exact_at(buf, g.offset(i))
}

/// Which chunks of a file someone holds: one bit per chunk, most significant
/// bit of byte 0 is chunk 0 (the layout on the wire). Keeps a count of set
/// bits so "how many" is O(1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

/// Why bytes are not a bitmap of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapError {
    /// The byte count is not `ceil(len / 8)`.
    Length { expected: usize, got: usize },
    /// A bit past the last chunk is set.
    Padding,
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitmapError::Length { expected, got } => {
                write!(f, "bitmap has {got} bytes, expected {expected}")
            }
            BitmapError::Padding => write!(f, "bitmap has bits set past the last chunk"),
        }
    }
}

impl std::error::Error for BitmapError {}

/// Bytes needed for a bitmap of `len` bits.
pub fn bitmap_bytes(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

impl Bitmap {
    /// All clear.
    pub fn new(len: u32) -> Bitmap {
        Bitmap {
            bits: vec![0; bitmap_bytes(len)],
            len,
            ones: 0,
        }
    }

    /// All set.
    pub fn full(len: u32) -> Bitmap {
        let mut b = Bitmap::new(len);
        b.bits.fill(0xff);
        b.clear_padding();
        b.ones = len;
        b
    }

    /// Parses the wire layout, rejecting a wrong length or set padding bits.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Bitmap, BitmapError> {
        let expected = bitmap_bytes(len);
        if bytes.len() != expected {
            return Err(BitmapError::Length {
                expected,
                got: bytes.len(),
            });
        }
        let mut b = Bitmap {
            bits: bytes.to_vec(),
            len,
            ones: 0,
        };
        let before: u32 = b.bits.iter().map(|x| x.count_ones()).sum();
        b.clear_padding();
        let after: u32 = b.bits.iter().map(|x| x.count_ones()).sum();
        if before != after {
            return Err(BitmapError::Padding);
        }
        b.ones = after;
        Ok(b)
    }

    fn clear_padding(&mut self) {
        let rem = self.len % 8;
        if rem != 0
            && let Some(last) = self.bits.last_mut()
        {
            *last &= 0xffu8 << (8 - rem);
        }
    }

    /// Number of bits (chunks).
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether bit `i` is set; false when out of range.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets bit `i`; returns true if it was clear. Out of range: no-op, false.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Clears bit `i`; returns true if it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    /// Clears every bit that is set in `other` (of the same length; a
    /// shorter one covers only its own bits): one pass over the words.
    pub fn clear_all(&mut self, other: &Bitmap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a &= !*b;
        }
        self.ones = self.bits.iter().map(|x| x.count_ones()).sum();
    }

    /// Indices of set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }

    /// The wire layout.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// A compact picture of the bitmap in at most `width` characters: one
    /// character per chunk when they fit, else per group of chunks.
    /// `#` = all held, `+` = some held, `.` = none.
    pub fn render(&self, width: usize) -> String {
        let width = width.max(1);
        let n = self.len as usize;
        if n == 0 {
            return String::new();
        }
        let per = n.div_ceil(width);
        (0..n.div_ceil(per))
            .map(|g| {
                let lo = g * per;
                let hi = (lo + per).min(n);
                let held = (lo..hi).filter(|&i| self.get(i as u32)).count();
                if held == hi - lo {
                    '#'
                } else if held > 0 {
                    '+'
                } else {
                    '.'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    const EMPTY_ID: &str = "42e0afcacd0ddf1474e36c861ef277dd5e933cd0";
    const ABC_ID: &str = "7ee56b99404705e8bc4bf98e582b92588daa2c55";

    #[test]
    fn content_id_matches_the_documented_example() {
        // protocol.md §4.1: an empty file in 1 MiB chunks, and "abc" in 1 KiB chunks.
        let empty = ContentId::compute(0, 1 << 20, &[]);
        let abc = ContentId::compute(3, 1024, &[sha1(b"abc")]);
        assert_eq!(empty.to_string(), EMPTY_ID);
        assert_eq!(abc.to_string(), ABC_ID);
        assert_ne!(
            empty,
            ContentId::compute(0, 1024, &[]),
            "the chunk size is part of the id"
        );
        assert_eq!(ContentId::parse(&abc.to_string().to_uppercase()), Some(abc));
        assert_eq!(ContentId::parse("abc"), None);
        assert_eq!(ContentId::parse(&"g".repeat(40)), None);
        assert_eq!(ContentId::parse(&"é".repeat(20)), None);
    }

    /// `u8::from_str_radix` takes a sign: "+f" would read as 0x0f, so an
    /// id of 40 characters that are not all hex digits must still be
    /// refused (README: "an ID that is not 40 hex digits is a usage error").
    #[test]
    fn content_id_with_a_sign_is_not_an_id() {
        assert_eq!(ContentId::parse(&"+f".repeat(20)), None);
        assert_eq!(ContentId::parse(&format!("+0{}", "0".repeat(38))), None);
        assert_eq!(ContentId::parse(&"-0".repeat(20)), None);
        assert!(ContentId::parse(ABC_ID).is_some());
    }

    use super::*;

    #[test]
    fn geometry_cuts_with_short_last_chunk() {
        let g = Geometry::new(2500, 1024).unwrap();
        assert_eq!(g.count(), 3);
        let last = g.index(2).unwrap();
        assert_eq!(g.offset(last), 2048);
        assert_eq!(g.chunk_len(last), 452);
        assert_eq!(g.chunk_len(g.index(0).unwrap()), 1024);
        assert!(g.index(3).is_none());
    }

    #[test]
    fn geometry_exact_multiple_and_empty() {
        let g = Geometry::new(4096, 1024).unwrap();
        assert_eq!(g.count(), 4);
        assert_eq!(g.chunk_len(g.index(3).unwrap()), 1024);
        let e = Geometry::new(0, 1024).unwrap();
        assert_eq!(e.count(), 0);
        assert!(e.index(0).is_none());
    }

    #[test]
    fn geometry_limits() {
        assert_eq!(Geometry::new(10, 0), Err(GeometryError::ChunkSize(0)));
        assert!(Geometry::new(10, MAX_CHUNK_SIZE + 1).is_err());
        let max = u64::from(MAX_CHUNKS_PER_FILE) * 1024;
        assert!(Geometry::new(max, 1024).is_ok());
        assert!(matches!(
            Geometry::new(max + 1, 1024),
            Err(GeometryError::TooManyChunks { .. })
        ));
        // Huge lengths never overflow.
        assert!(Geometry::new(u64::MAX, MAX_CHUNK_SIZE).is_err());
        assert!(Geometry::with_hashes(2048, 1024, 3).is_err());
        assert!(Geometry::with_hashes(2048, 1024, 2).is_ok());
    }

    #[test]
    fn files_over_4_gib() {
        let g = Geometry::new(5 << 30, 1 << 20).unwrap();
        assert_eq!(g.count(), 5 * 1024);
        let last = g.index(g.count() - 1).unwrap();
        assert_eq!(g.offset(last), (5 << 30) - (1 << 20));
    }

    #[test]
    fn bitmap_set_get_count() {
        let mut b = Bitmap::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        assert!(b.clear(0));
        assert_eq!(b.count_ones(), 1);
        let f = Bitmap::full(10);
        assert!(f.is_full());
        assert_eq!(f.as_bytes(), &[0xff, 0xc0]);
    }

    #[test]
    fn bitmap_from_bytes_checks_length_and_padding() {
        assert!(Bitmap::from_bytes(10, &[0xff, 0xc0]).unwrap().is_full());
        assert_eq!(
            Bitmap::from_bytes(10, &[0xff, 0xe0]),
            Err(BitmapError::Padding)
        );
        assert!(matches!(
            Bitmap::from_bytes(10, &[0xff]),
            Err(BitmapError::Length { .. })
        ));
        assert!(Bitmap::from_bytes(0, &[]).unwrap().is_full());
    }

    #[test]
    fn bitmap_render_groups() {
        let mut b = Bitmap::new(8);
        b.set(0);
        b.set(1);
        b.set(2);
        assert_eq!(b.render(80), "###.....");
        assert_eq!(b.render(4), "#+..");
    }

    #[test]
    fn sha1_known_answer() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}

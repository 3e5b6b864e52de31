//! Deadlines for whole frames, on top of the per-read and per-write socket
//! timeouts.
//!
//! Owns: the rule "a frame of `len` bytes may take at most `timeout + len /
//! MIN_TRANSFER_RATE`" ([`frame_allowance`]; `MIN_CHUNK_TRANSFER_RATE` for
//! `ChunkData`, [`chunk_allowance`]) and the two adapters that apply
//! it by lowering the socket's timeout before each call as the deadline
//! nears: [`DeadlineWriter`] (a server's replies, a client's requests) and
//! [`FrameDeadline`] (a client reading one reply). A per-call timeout alone
//! lets a party that moves a byte every few seconds keep a frame, its
//! memory and whatever waits for it going for as long as it likes.
//!
//! Each adapter puts the socket's timeout back to its per-call value when
//! dropped, so code that sets the timeouts once keeps seeing them. Calls
//! `limits` and `wire` (the `ChunkData` type code) only.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::limits::{MIN_CHUNK_TRANSFER_RATE, MIN_TRANSFER_RATE};

/// How long a frame of `len` bytes may take to cross: `timeout` plus
/// `len` at [`MIN_TRANSFER_RATE`].
pub fn frame_allowance(timeout: Duration, len: u64) -> Duration {
    allowance(timeout, len, MIN_TRANSFER_RATE)
}

/// [`frame_allowance`] for a `ChunkData` frame: `len` at
/// [`MIN_CHUNK_TRANSFER_RATE`].
pub fn chunk_allowance(timeout: Duration, len: u64) -> Duration {
    allowance(timeout, len, MIN_CHUNK_TRANSFER_RATE)
}

fn allowance(timeout: Duration, len: u64, rate: u64) -> Duration {
    let ms = len.saturating_mul(1000) / rate.max(1);
    timeout.saturating_add(Duration::from_millis(ms))
}

fn late(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} deadline passed"))
}

/// Writes to a socket whose write timeout is `per_write`, giving up at
/// `deadline` however the bytes trickle out.
pub struct DeadlineWriter<'a> {
    stream: &'a TcpStream,
    per_write: Duration,
    /// The timeout set on the socket now.
    current: Duration,
    deadline: Instant,
}

impl<'a> DeadlineWriter<'a> {
    /// `per_write` must be the socket's write timeout now (it is put back
    /// on drop).
    pub fn new(stream: &'a TcpStream, per_write: Duration, deadline: Instant) -> Self {
        DeadlineWriter {
            stream,
            per_write,
            current: per_write,
            deadline,
        }
    }

    /// Lowers the socket's timeout to the time left, when that is shorter.
    fn arm(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late("write"));
        }
        let want = left.min(self.per_write);
        if want != self.current {
            self.stream.set_write_timeout(Some(want))?;
            self.current = want;
        }
        Ok(())
    }
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DeadlineWriter<'_> {
    fn drop(&mut self) {
        if self.current != self.per_write {
            let _ = self.stream.set_write_timeout(Some(self.per_write));
        }
    }
}

/// Reads exactly one frame from `inner` (which reads from `stream`, e.g. a
/// `BufReader` over it) under a deadline: its 4-byte length must arrive
/// within `per_read` of the start, and the whole frame within
/// [`frame_allowance`]`(per_read, len)` ([`chunk_allowance`] once its type
/// byte says `ChunkData`). Must be created at a frame boundary: it learns
/// `len` and the type from the first five bytes read through it.
pub struct FrameDeadline<'a, R> {
    inner: &'a mut R,
    stream: &'a TcpStream,
    per_read: Duration,
    current: Duration,
    start: Instant,
    deadline: Instant,
    header: [u8; 5],
    seen: usize,
    /// Nanoseconds this side chose to wait (a download limit), counted
    /// from `paused_at`: added to the deadline. See
    /// [`FrameDeadline::paused_by`].
    paused: Option<&'a AtomicU64>,
    paused_at: u64,
    /// A bound no frame passes, whatever its length ([`FrameDeadline::capped_at`]).
    cap: Option<Instant>,
}

impl<'a, R: Read> FrameDeadline<'a, R> {
    /// `per_read` must be the socket's read timeout now (it is put back on
    /// drop).
    pub fn new(inner: &'a mut R, stream: &'a TcpStream, per_read: Duration) -> Self {
        let start = Instant::now();
        FrameDeadline {
            inner,
            stream,
            per_read,
            current: per_read,
            start,
            deadline: start + per_read,
            header: [0; 5],
            seen: 0,
            paused: None,
            paused_at: 0,
            cap: None,
        }
    }

    /// Ends the frame at `cap` at the latest, however long it is and
    /// however its bytes trickle in: a caller with a deadline of its own
    /// (the set's fast path gives a file up at one).
    pub fn capped_at(mut self, cap: Option<Instant>) -> Self {
        self.cap = cap;
        self
    }

    /// Leaves out of the deadline the time added to `paused` (nanoseconds)
    /// while this frame is read: the reader's own waits, such as a download
    /// limit's, are not the other side being slow.
    pub fn paused_by(mut self, paused: &'a AtomicU64) -> Self {
        self.paused_at = paused.load(Ordering::Relaxed);
        self.paused = Some(paused);
        self
    }

    /// The deadline, moved on by the time this side chose to wait, and
    /// never past the cap.
    fn deadline(&self) -> Instant {
        let d = match self.paused {
            None => self.deadline,
            Some(p) => {
                let waited =
                    Duration::from_nanos(p.load(Ordering::Relaxed).saturating_sub(self.paused_at));
                self.deadline.checked_add(waited).unwrap_or(self.deadline)
            }
        };
        self.cap.map_or(d, |c| d.min(c))
    }
}

impl<R: Read> Read for FrameDeadline<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline().saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late("frame"));
        }
        let want = left.min(self.per_read);
        if want != self.current {
            self.stream.set_read_timeout(Some(want))?;
            self.current = want;
        }
        let n = self.inner.read(buf)?;
        let before = self.seen;
        if before < 5 {
            let take = n.min(5 - before);
            self.header[before..before + take].copy_from_slice(&buf[..take]);
            self.seen += take;
            let [a, b, c, d, ty] = self.header;
            let len = u64::from(u32::from_be_bytes([a, b, c, d]));
            if before < 4 && self.seen >= 4 {
                self.deadline = self.start + frame_allowance(self.per_read, len);
            }
            if self.seen == 5 && ty == crate::wire::ty::CHUNK_DATA {
                self.deadline = self.start + chunk_allowance(self.per_read, len);
            }
        }
        Ok(n)
    }
}

impl<R> Drop for FrameDeadline<'_, R> {
    fn drop(&mut self) {
        if self.current != self.per_read {
            let _ = self.stream.set_read_timeout(Some(self.per_read));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn allowance_grows_with_the_frame() {
        let t = Duration::from_secs(10);
        assert_eq!(frame_allowance(t, 0), t);
        assert_eq!(frame_allowance(t, 64 * 1024), Duration::from_secs(11));
        assert_eq!(frame_allowance(t, u64::MAX), frame_allowance(t, u64::MAX));
    }

    /// A frame trickled a byte at a time, each within the per-read timeout,
    /// still ends at the deadline; the socket's timeout is put back.
    #[test]
    fn a_trickled_frame_misses_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sender = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let frame = [0u8, 0, 0, 3, 4, 1, 2];
            for b in frame {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(150));
            }
        });
        let s = TcpStream::connect(addr).unwrap();
        let per_read = Duration::from_millis(400);
        s.set_read_timeout(Some(per_read)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let t = Instant::now();
        let mut buf = [0u8; 7];
        let got = FrameDeadline::new(&mut r, &s, per_read).read_exact(&mut buf);
        assert!(got.is_err(), "the whole frame arrived");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(s.read_timeout().unwrap(), Some(per_read));
        sender.join().unwrap();
    }

    /// A reader that takes a little now and then keeps each write call
    /// going, but not the whole write past its deadline.
    #[test]
    fn a_slow_reader_does_not_hold_a_write_past_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let s = TcpStream::connect(addr).unwrap();
        let per_write = Duration::from_millis(500);
        s.set_write_timeout(Some(per_write)).unwrap();
        let big = vec![0u8; 64 << 20];
        let t = Instant::now();
        let deadline = t + Duration::from_millis(800);
        let r = DeadlineWriter::new(&s, per_write, deadline).write_all(&big);
        assert!(r.is_err());
        assert!(
            t.elapsed() < Duration::from_millis(1400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(s.write_timeout().unwrap(), Some(per_write));
        drop(s);
        reader.join().unwrap();
    }

    /// A ChunkData frame gets the chunk rate, any other frame the general
    /// one: the same bytes at the same pace pass as the one and not as the
    /// other.
    #[test]
    fn chunk_data_gets_the_lower_rate() {
        for (ty, passes) in [(crate::wire::ty::CHUNK_DATA, true), (0x13, false)] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let sender = thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut head = 4001u32.to_be_bytes().to_vec();
                head.push(ty);
                let _ = s.write_all(&head);
                for _ in 0..4 {
                    thread::sleep(Duration::from_millis(200));
                    if s.write_all(&[0u8; 1000]).is_err() {
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(500));
            });
            let s = TcpStream::connect(addr).unwrap();
            let per_read = Duration::from_millis(500);
            s.set_read_timeout(Some(per_read)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut buf = vec![0u8; 4005];
            let got = FrameDeadline::new(&mut r, &s, per_read).read_exact(&mut buf);
            assert_eq!(got.is_ok(), passes, "type {ty:#x}: {got:?}");
            drop(s);
            sender.join().unwrap();
        }
    }
}

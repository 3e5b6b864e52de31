//! Connection admission, shared by the tracker and the chunk server: caps on
//! the connections open at once (in total and per source address) and the
//! polite refusal of everything over them.
//!
//! Owns: the counts ([`Admission`]; each admitted connection holds a
//! [`Ticket`] that gives its slot back when dropped, however the connection
//! ends) and the refuser thread ([`Refuser`]) that answers refused
//! connections with `Error{Busy}` and closes them.
//!
//! Why caps per address as well as in total: both servers run one OS thread
//! per connection, so the total cap is what keeps thread count and memory
//! bounded; without a per-address cap a single host could take every slot
//! and lock everybody else out. IPv6 addresses are counted per /64, because
//! one host is usually given a whole /64 and could otherwise pick a fresh
//! address for every connection.
//!
//! Why a separate refuser thread: a refused connection is answered `Busy`
//! and then drained for a moment before it is closed (closing a socket with
//! unread input makes the kernel send a reset, which can destroy the `Busy`
//! before the client reads it). Draining on the accept thread would let a
//! flood of clients that connect and never close stall `accept` for
//! everybody; the refuser drains many sockets at once without blocking, and
//! sheds load (plain close) when even it is full.
//!
//! Calls `wire` and `sync` only; both servers reach it through the skeleton
//! ([`super::server`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded};

use crate::wire::{ErrorCode, Message};

/// The two caps. Zero is treated as one (a server that admits nobody is a
/// configuration mistake, not a feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from everybody.
    pub max_total: usize,
    /// Connections open at once from one IPv4 address or one IPv6 /64.
    pub max_per_ip: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_total` connections are open.
    Total(usize),
    /// `max_per_ip` connections from this address are open.
    PerIp(usize),
}

impl Refusal {
    /// The text sent in the `Error{Busy}`.
    pub fn message(&self) -> String {
        match self {
            Refusal::Total(n) => {
                format!("too many connections ({n} open); try again later")
            }
            Refusal::PerIp(n) => format!(
                "too many connections from your address ({n} open); close some or try again later"
            ),
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts of open connections against [`Limits`].
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    /// Connections refused over `max_total` and over `max_per_ip`, ever
    /// (for the tracker's /metrics).
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
}

/// One admitted connection's slot; dropping it frees the slot.
pub struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: Limits {
                max_total: limits.max_total.max(1),
                max_per_ip: limits.max_per_ip.max(1),
            },
            counts: Mutex::new(Counts::default()),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Each critical section is a few integer updates: a poisoned lock
        // still holds consistent counts.
        crate::sync::lock(&self.counts)
    }

    /// Admits a connection from `ip` if both caps allow it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let key = key(ip);
        let mut c = self.counts();
        if c.total >= self.limits.max_total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total(c.total));
        }
        let n = c.per_ip.entry(key).or_insert(0);
        if *n >= self.limits.max_per_ip {
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerIp(*n));
        }
        *n += 1;
        c.total += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            key,
        })
    }

    /// Connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Connections admitted and not yet ended from `ip`'s address (or /64).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.counts().per_ip.get(&key(ip)).copied().unwrap_or(0)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections refused so far over the total cap and over the
    /// per-address cap.
    pub fn cap_hits(&self) -> (u64, u64) {
        (
            self.refused_total.load(Ordering::Relaxed),
            self.refused_per_ip.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.key);
            }
        }
    }
}

/// What addresses are counted together: an IPv4 address (IPv4-mapped IPv6
/// included), or the /64 of an IPv6 address.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// How long a refused connection is drained before it is closed.
pub const REFUSE_LINGER: Duration = Duration::from_millis(200);
/// Most bytes drained from one refused connection.
const REFUSE_DRAIN_BYTES: usize = 64 * 1024;
/// Refused connections waiting for the refuser thread; beyond this they are
/// closed at once.
const REFUSE_QUEUE: usize = 64;
/// Refused connections being drained at once; beyond this they are closed
/// at once.
const REFUSE_MAX_LINGERING: usize = 256;
/// How often the refuser looks at the sockets it drains.
const REFUSE_POLL: Duration = Duration::from_millis(10);

/// The refuser thread's handle. Dropping it closes every socket still
/// lingering and joins the thread.
pub struct Refuser {
    tx: Option<Sender<TcpStream>>,
    handle: Option<JoinHandle<()>>,
}

impl Refuser {
    /// Starts the thread "`name`-refuser".
    pub fn start(name: &str) -> io::Result<Refuser> {
        let (tx, rx) = bounded(REFUSE_QUEUE);
        let handle = thread::Builder::new()
            .name(format!("{name}-refuser"))
            .stack_size(64 * 1024)
            .spawn(move || linger_loop(rx))?;
        Ok(Refuser {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Answers `Error{Busy, message}` and closes, gently when there is room
    /// to linger. Never blocks: the socket is non-blocking from here on, and
    /// the reply (a few dozen bytes) always fits a fresh socket's buffer.
    pub fn refuse(&self, stream: TcpStream, message: &str) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if Message::error(ErrorCode::Busy, message)
            .encode(&mut buf)
            .is_err()
        {
            return;
        }
        if (&stream).write(&buf).is_err() {
            return;
        }
        let _ = stream.shutdown(Shutdown::Write);
        if let Some(tx) = &self.tx {
            // Full or gone: the socket is simply closed (dropped) here.
            let _ = tx.try_send(stream);
        }
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Lingering {
    stream: TcpStream,
    until: Instant,
    drained: usize,
}

/// The refuser thread: drains each refused socket until the client closes,
/// [`REFUSE_LINGER`] passes or [`REFUSE_DRAIN_BYTES`] arrived, then closes
/// it. Ends when the handle is dropped.
fn linger_loop(rx: Receiver<TcpStream>) {
    let mut lingering: Vec<Lingering> = Vec::new();
    loop {
        let next = if lingering.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(REFUSE_POLL)
        };
        let mut add = |stream: TcpStream| {
            if lingering.len() < REFUSE_MAX_LINGERING {
                lingering.push(Lingering {
                    stream,
                    until: Instant::now() + REFUSE_LINGER,
                    drained: 0,
                });
            }
        };
        match next {
            Ok(s) => add(s),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        loop {
            match rx.try_recv() {
                Ok(s) => add(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        lingering.retain_mut(still_lingering);
    }
}

/// Reads what has arrived; false once the socket should be closed.
fn still_lingering(l: &mut Lingering) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match (&l.stream).read(&mut sink) {
            Ok(0) => return false,
            Ok(n) => {
                l.drained += n;
                if l.drained >= REFUSE_DRAIN_BYTES {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Instant::now() < l.until;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_total_and_per_address() {
        let a = Admission::new(Limits {
            max_total: 3,
            max_per_ip: 2,
        });
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let t2 = a.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp(2)));
        let t3 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Total(3)));
        drop(t1);
        assert_eq!(a.open(), 2);
        assert_eq!(a.open_from(ip("10.0.0.1")), 1);
        let t4 = a.admit(ip("10.0.0.1")).unwrap();
        drop((t2, t3, t4));
        assert_eq!(a.open(), 0);
        assert_eq!(a.open_from(ip("10.0.0.1")), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let a = Admission::new(Limits {
            max_total: 10,
            max_per_ip: 1,
        });
        let _t = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn zero_limits_admit_one() {
        let a = Admission::new(Limits {
            max_total: 0,
            max_per_ip: 0,
        });
        let _t = a.admit(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        assert!(a.admit(IpAddr::V4(Ipv4Addr::LOCALHOST)).is_err());
    }

    #[test]
    fn refused_clients_read_busy_then_eof() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let r = Refuser::start("test").unwrap();
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The client speaks first, as a real one does (its Hello).
            c.write_all(&[0, 0, 0, 1, 4]).unwrap();
            let (s, _) = l.accept().unwrap();
            r.refuse(s, "go away");
            clients.push(c);
        }
        for mut c in clients {
            match crate::wire::read_message(&mut c).unwrap() {
                Some(Message::Error { code, message }) => {
                    assert_eq!(code, ErrorCode::Busy);
                    assert_eq!(message, "go away");
                }
                other => panic!("{other:?}"),
            }
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).unwrap(), 0);
        }
        drop(r);
    }
}

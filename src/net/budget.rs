//! The budget of bytes a server spends on large request frames at once.
//!
//! Owns: the counts of bytes of large request frames being received or
//! handled, in total and per address (IPv4 address or IPv6 /64, as the
//! connection caps count them). A frame's whole `len` is charged when its
//! header arrives, before any of its payload is read, and given back when
//! its request has been answered ([`Reservation`] does it on drop, however
//! the connection ends). Without it each connection may make its server
//! buffer a frame of up to 16 MiB, so the connection caps alone would let
//! one host hold gigabytes.
//!
//! Calls `sync` and [`super::admission::key`] only; the skeleton
//! ([`super::server`]) charges it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::admission;

/// The two caps of a [`FrameBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Frames whose `len` is at most this are not charged.
    pub exempt_len: u32,
    /// Bytes charged at once, in total.
    pub total: u64,
    /// Bytes charged at once to the connections of one address.
    pub per_address: u64,
}

/// Bytes of large frames in flight, in total and per address.
#[derive(Debug)]
pub struct FrameBudget {
    limits: BudgetLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: u64,
    by_address: HashMap<IpAddr, u64>,
}

/// A charge on a [`FrameBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a FrameBudget,
    address: IpAddr,
    bytes: u64,
}

/// Why a frame could not be charged: which cap, and what is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverBudget {
    Total { used: u64, max: u64 },
    Address { used: u64, max: u64 },
}

impl OverBudget {
    /// The text of the `Error{Busy}` that refuses the frame.
    pub fn message(&self, len: u32) -> String {
        match self {
            OverBudget::Total { used, max } => format!(
                "too many large requests are being received: {used} of {max} bytes in use, \
                 a frame of {len} bytes does not fit; try again later"
            ),
            OverBudget::Address { used, max } => format!(
                "your address has {used} of its {max} bytes of large requests in flight, \
                 a frame of {len} bytes does not fit; try again later"
            ),
        }
    }
}

impl FrameBudget {
    pub fn new(limits: BudgetLimits) -> FrameBudget {
        FrameBudget {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// Charges a frame of `len` from `ip`: `Ok(None)` when it is small
    /// enough not to be charged, `Ok(Some(_))` while it is held.
    pub fn reserve(&self, ip: IpAddr, len: u32) -> Result<Option<Reservation<'_>>, OverBudget> {
        if len <= self.limits.exempt_len {
            return Ok(None);
        }
        let bytes = u64::from(len);
        let address = admission::key(ip);
        let mut s = crate::sync::lock(&self.state);
        let mine = s.by_address.get(&address).copied().unwrap_or(0);
        if mine + bytes > self.limits.per_address {
            return Err(OverBudget::Address {
                used: mine,
                max: self.limits.per_address,
            });
        }
        if s.total + bytes > self.limits.total {
            return Err(OverBudget::Total {
                used: s.total,
                max: self.limits.total,
            });
        }
        s.total += bytes;
        *s.by_address.entry(address).or_insert(0) += bytes;
        Ok(Some(Reservation {
            budget: self,
            address,
            bytes,
        }))
    }

    /// Bytes charged now, in total.
    pub fn in_use(&self) -> u64 {
        crate::sync::lock(&self.state).total
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = crate::sync::lock(&self.budget.state);
        s.total = s.total.saturating_sub(self.bytes);
        if let Some(n) = s.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                s.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total_and_gives_back() {
        let b = FrameBudget::new(BudgetLimits {
            exempt_len: 100,
            total: 1000,
            per_address: 600,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let c: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(b.reserve(a, 100).unwrap().is_none());
        let r1 = b.reserve(a, 500).unwrap().unwrap();
        assert!(matches!(
            b.reserve(a, 200),
            Err(OverBudget::Address { used: 500, .. })
        ));
        let r2 = b.reserve(c, 450).unwrap().unwrap();
        assert!(matches!(
            b.reserve(c, 101),
            Err(OverBudget::Total { used: 950, .. })
        ));
        drop(r1);
        assert_eq!(b.in_use(), 450);
        let r3 = b.reserve(a, 550).unwrap().unwrap();
        drop((r2, r3));
        assert_eq!(b.in_use(), 0);
        assert!(crate::sync::lock(&b.state).by_address.is_empty());
    }
}

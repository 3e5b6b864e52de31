//! Rarest-first chunk choice for one download.
//!
//! Owns: which chunks of the file are held, how many requests for each are in
//! flight, how many known sources hold each (availability, from the latest
//! tracker Locations), and the choice of the next chunk to ask a source for.
//!
//! Pure data: no I/O, no threads, no clock, no locks of its own. The download
//! keeps one `Picker` behind a `Mutex` shared by its worker threads (one per
//! source) and holds that lock only for these in-memory calls. Calls only
//! `chunks::Bitmap`.
//!
//! Why rarest first: a chunk that few peers hold is the one most likely to
//! become unobtainable if those peers leave, and fetching it first turns this
//! peer into one more source for it (the session registers each chunk as it
//! is verified). Ties are broken at random so that many downloaders starting
//! at once do not all fetch the same chunk from the same source.

use crate::chunks::Bitmap;

/// One chunk handed to a worker by [`Picker::pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: u32,
    /// True in endgame: the chunk is already requested from another source,
    /// and whichever copy arrives second is thrown away.
    pub duplicate: bool,
}

/// Chooses chunks rarest first and tracks what is held and in flight.
#[derive(Debug, Clone)]
pub struct Picker {
    count: u32,
    have: Bitmap,
    /// Outstanding requests per chunk (more than one only in endgame).
    in_flight: Vec<u32>,
    /// How many known sources hold each chunk.
    avail: Vec<u32>,
    rng: XorShift64Star,
}

impl Picker {
    /// `have`: chunks already verified on disk (a resumed download); its
    /// length is the file's chunk count. `seed`: PRNG seed for tie breaking
    /// (tests fix it; downloads seed from time and pid so that peers differ).
    pub fn new(have: Bitmap, seed: u64) -> Picker {
        let count = have.len();
        Picker {
            count,
            have,
            in_flight: vec![0; count as usize],
            avail: vec![0; count as usize],
            rng: XorShift64Star::new(seed),
        }
    }

    /// Replaces the availability counts with those of `sources`, one bitmap
    /// per known source (the latest Locations). Bits past the file's chunk
    /// count are ignored, so a bitmap of the wrong length cannot index out of
    /// range.
    pub fn set_availability<'a>(&mut self, sources: impl IntoIterator<Item = &'a Bitmap>) {
        self.avail.fill(0);
        for s in sources {
            for i in s.iter_ones() {
                if let Some(a) = self.avail.get_mut(i as usize) {
                    *a = a.saturating_add(1);
                }
            }
        }
    }

    /// Chooses a chunk to request from a source holding `source_has`, and
    /// marks it in flight.
    ///
    /// Normally: among chunks not held, not in flight, and held by the
    /// source, the one with the lowest availability, ties broken uniformly at
    /// random. When there is none and `endgame` is true: among chunks not
    /// held but in flight elsewhere that the source has, the one with the
    /// fewest requests in flight (random ties), returned with
    /// `duplicate: true` and counted as one more request. `None` otherwise.
    ///
    /// The picker does not know which source asked for what, so in endgame it
    /// may hand a worker a chunk that this same worker already has in flight.
    /// A worker that pipelines requests avoids that by passing a copy of the
    /// source's bitmap with its own outstanding chunks cleared.
    ///
    /// Cost: one pass over the file's chunks, O(chunk count), skipping eight
    /// chunks at a time where the source has nothing we lack. At the largest
    /// file (2^19 chunks) that is 64 KiB of bitmap per pick, well under a
    /// millisecond, against a chunk transfer of a megabyte.
    pub fn pick(&mut self, source_has: &Bitmap, endgame: bool) -> Option<Pick> {
        if let Some(i) = self.choose(source_has, false) {
            self.in_flight[i as usize] += 1;
            return Some(Pick {
                index: i,
                duplicate: false,
            });
        }
        if !endgame {
            return None;
        }
        let i = self.choose(source_has, true)?;
        let f = &mut self.in_flight[i as usize];
        *f = f.saturating_add(1);
        Some(Pick {
            index: i,
            duplicate: true,
        })
    }

    /// One pass over the candidates. `dup == false`: chunks with nothing in
    /// flight, keyed by availability. `dup == true`: chunks already in
    /// flight, keyed by how many requests are. Lowest key wins; equal keys
    /// are sampled uniformly (reservoir sampling, one random draw per tie).
    fn choose(&mut self, source_has: &Bitmap, dup: bool) -> Option<u32> {
        let have = self.have.as_bytes();
        let src = source_has.as_bytes();
        let mut best: Option<u32> = None;
        let mut best_key = u32::MAX;
        let mut ties: u64 = 0;
        for (byte_i, &h) in have.iter().enumerate() {
            let s = src.get(byte_i).copied().unwrap_or(0);
            let mut wanted = s & !h;
            while wanted != 0 {
                let bit = wanted.leading_zeros();
                wanted &= !(0x80u8 >> bit);
                // byte_i < ceil(count / 8) <= 2^16, so this cannot overflow.
                let i = byte_i as u32 * 8 + bit;
                if i >= self.count {
                    break; // padding bits of a longer source bitmap
                }
                let flying = self.in_flight[i as usize];
                let key = match (dup, flying) {
                    (false, 0) => self.avail[i as usize],
                    (true, n) if n > 0 => n,
                    _ => continue,
                };
                if key < best_key {
                    best_key = key;
                    best = Some(i);
                    ties = 1;
                } else if key == best_key {
                    ties += 1;
                    if self.rng.below(ties) == 0 {
                        best = Some(i);
                    }
                }
            }
        }
        best
    }

    /// A requested chunk was verified and written. Returns true the first
    /// time; false for a second copy (endgame duplicate) or an index out of
    /// range. Either way the request is no longer in flight.
    pub fn complete(&mut self, i: u32) -> bool {
        let Some(f) = self.in_flight.get_mut(i as usize) else {
            return false;
        };
        *f = f.saturating_sub(1);
        self.have.set(i)
    }

    /// A request for `i` was abandoned (source failed, bad hash, or a
    /// duplicate no longer needed): one fewer in flight, so the chunk can be
    /// picked again.
    pub fn release(&mut self, i: u32) {
        if let Some(f) = self.in_flight.get_mut(i as usize) {
            *f = f.saturating_sub(1);
        }
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Chunks not held yet.
    pub fn remaining(&self) -> u32 {
        self.count - self.have.count_ones()
    }

    /// Chunks held (verified).
    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// Requests in flight for chunk `i` (0 when out of range).
    pub fn in_flight(&self, i: u32) -> u32 {
        self.in_flight.get(i as usize).copied().unwrap_or(0)
    }

    /// Chunks not held that no known source has, ascending: what to name in
    /// "cannot finish: chunks 3, 7 have no source".
    pub fn unavailable(&self) -> Vec<u32> {
        (0..self.count)
            .filter(|&i| self.avail[i as usize] == 0 && !self.have.get(i))
            .collect()
    }
}

/// xorshift64* (Vigna): tiny, fast, and plenty random for tie breaking. Not
/// for anything security related.
#[derive(Debug, Clone)]
struct XorShift64Star(u64);

impl XorShift64Star {
    /// Seeds through splitmix64 so that nearby seeds (consecutive pids or
    /// timestamps) give unrelated streams and the state is never zero.
    fn new(seed: u64) -> XorShift64Star {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift64Star(if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough value in `0..n` (n > 0) by multiply-shift; the bias is
    /// below n / 2^64, irrelevant for tie breaking.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(len: u32, ones: &[u32]) -> Bitmap {
        let mut b = Bitmap::new(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_is_chosen_first() {
        // Chunk 3 is held by one source, chunk 1 by two, the rest by three.
        let a = bm(6, &[0, 1, 2, 3, 4, 5]);
        let b = bm(6, &[0, 1, 2, 4, 5]);
        let c = bm(6, &[0, 2, 4, 5]);
        for seed in 0..20 {
            let mut p = Picker::new(Bitmap::new(6), seed);
            p.set_availability([&a, &b, &c]);
            assert_eq!(p.pick(&a, false).map(|x| x.index), Some(3));
            assert_eq!(p.pick(&a, false).map(|x| x.index), Some(1));
            let third = p.pick(&a, false).unwrap();
            assert!([0, 2, 4, 5].contains(&third.index));
            assert!(!third.duplicate);
        }
    }

    #[test]
    fn chunk_no_source_advertises_is_rarest() {
        // Availability is stale: the source has chunk 2 but no Locations
        // listed it. Zero availability makes it the first choice.
        let src = bm(4, &[0, 1, 2, 3]);
        let listed = bm(4, &[0, 1, 3]);
        let mut p = Picker::new(Bitmap::new(4), 1);
        p.set_availability([&listed]);
        assert_eq!(p.pick(&src, false).unwrap().index, 2);
    }

    #[test]
    fn ties_are_spread_across_seeds() {
        let all = Bitmap::full(64);
        let mut different = 0;
        for seed in 0..100u64 {
            let mut p1 = Picker::new(Bitmap::new(64), seed);
            let mut p2 = Picker::new(Bitmap::new(64), seed + 1000);
            p1.set_availability([&all]);
            p2.set_availability([&all]);
            if p1.pick(&all, false).unwrap().index != p2.pick(&all, false).unwrap().index {
                different += 1;
            }
        }
        assert!(different >= 80, "only {different}/100 differ");
    }

    #[test]
    fn ties_are_roughly_uniform() {
        // 8 equally rare chunks, 8000 fresh pickers: each chunk should be
        // first about 1000 times.
        let all = Bitmap::full(8);
        let mut hist = [0u32; 8];
        for seed in 0..8000u64 {
            let mut p = Picker::new(Bitmap::new(8), seed);
            p.set_availability([&all]);
            hist[p.pick(&all, false).unwrap().index as usize] += 1;
        }
        for (i, &n) in hist.iter().enumerate() {
            assert!((800..1200).contains(&n), "chunk {i} first {n} times");
        }
    }

    #[test]
    fn never_picks_held_or_in_flight_outside_endgame() {
        let all = Bitmap::full(20);
        let have = bm(20, &[0, 5, 19]);
        let mut p = Picker::new(have.clone(), 7);
        p.set_availability([&all]);
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = p.pick(&all, false) {
            assert!(!x.duplicate);
            assert!(!have.get(x.index), "picked held chunk {}", x.index);
            assert!(seen.insert(x.index), "picked {} twice", x.index);
            assert_eq!(p.in_flight(x.index), 1);
        }
        assert_eq!(seen.len(), 17);
        assert_eq!(p.remaining(), 17);
    }

    #[test]
    fn only_chunks_the_source_has() {
        let src = bm(16, &[9, 10]);
        let mut p = Picker::new(Bitmap::new(16), 3);
        p.set_availability([&Bitmap::full(16)]);
        let mut got = vec![
            p.pick(&src, false).unwrap().index,
            p.pick(&src, false).unwrap().index,
        ];
        got.sort();
        assert_eq!(got, vec![9, 10]);
        assert_eq!(p.pick(&src, false), None);
        // A source with nothing we lack.
        assert_eq!(p.pick(&Bitmap::new(16), true), None);
    }

    #[test]
    fn source_bitmap_of_wrong_length_is_safe() {
        let mut p = Picker::new(Bitmap::new(3), 3);
        let longer = Bitmap::full(20);
        p.set_availability([&longer]);
        let mut got = Vec::new();
        while let Some(x) = p.pick(&longer, false) {
            got.push(x.index);
        }
        got.sort();
        assert_eq!(got, vec![0, 1, 2]);
        let shorter = Bitmap::full(1);
        let mut p = Picker::new(Bitmap::new(3), 3);
        assert_eq!(p.pick(&shorter, false).unwrap().index, 0);
        assert_eq!(p.pick(&shorter, false), None);
    }

    #[test]
    fn endgame_duplicates_only_when_nothing_else_is_left() {
        let all = Bitmap::full(4);
        let mut p = Picker::new(Bitmap::new(4), 11);
        p.set_availability([&all, &all]);
        // Three chunks in flight from source A.
        let a: Vec<u32> = (0..3).map(|_| p.pick(&all, true).unwrap().index).collect();
        assert!(a.iter().all(|&i| p.in_flight(i) == 1));
        // Endgame allowed, but a fresh chunk remains: no duplicate.
        let fresh = p.pick(&all, true).unwrap();
        assert!(!fresh.duplicate);
        assert!(!a.contains(&fresh.index));
        // Now everything is in flight: without endgame, nothing.
        assert_eq!(p.pick(&all, false), None);
        // Chunk a[0] done; three chunks left, each requested once. A
        // duplicate goes to one of them, the next to another one (fewest
        // requests in flight wins), never to the held chunk.
        assert!(p.complete(a[0]));
        let d1 = p.pick(&all, true).unwrap();
        assert!(d1.duplicate);
        assert_ne!(d1.index, a[0], "held chunk duplicated");
        assert_eq!(p.in_flight(d1.index), 2);
        let d2 = p.pick(&all, true).unwrap();
        assert!(d2.duplicate);
        assert_ne!(d2.index, d1.index, "fewest in flight should win");
        // The first copy completes, the second is a duplicate.
        assert!(p.complete(d1.index));
        assert!(!p.complete(d1.index));
        assert_eq!(p.in_flight(d1.index), 0);
    }

    #[test]
    fn complete_and_release_bookkeeping() {
        let all = Bitmap::full(3);
        let mut p = Picker::new(bm(3, &[1]), 5);
        p.set_availability([&all]);
        assert_eq!(p.remaining(), 2);
        let x = p.pick(&all, false).unwrap();
        assert_eq!(p.in_flight(x.index), 1);
        p.release(x.index);
        assert_eq!(p.in_flight(x.index), 0);
        p.release(x.index); // extra release is harmless
        assert_eq!(p.in_flight(x.index), 0);
        // Released chunks can be picked again.
        let mut got = vec![
            p.pick(&all, false).unwrap().index,
            p.pick(&all, false).unwrap().index,
        ];
        got.sort();
        assert_eq!(got, vec![0, 2]);
        assert!(p.complete(0));
        assert!(!p.complete(0));
        assert!(!p.complete(1)); // held from the start
        assert!(!p.complete(99)); // out of range
        p.release(99);
        assert_eq!(p.in_flight(99), 0);
        assert!(!p.is_complete());
        assert!(p.complete(2));
        assert!(p.is_complete());
        assert_eq!(p.remaining(), 0);
        assert_eq!(p.have(), &Bitmap::full(3));
        assert_eq!(p.pick(&all, true), None);
    }

    #[test]
    fn unavailable_lists_unheld_chunks_without_source() {
        let mut p = Picker::new(bm(8, &[7]), 0);
        assert_eq!(p.unavailable(), (0..7).collect::<Vec<_>>());
        p.set_availability([&bm(8, &[0, 1, 2]), &bm(8, &[2, 4, 5])]);
        assert_eq!(p.unavailable(), vec![3, 6]);
        // Replacing, not adding: the latest locations only.
        p.set_availability([&bm(8, &[3])]);
        assert_eq!(p.unavailable(), vec![0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn empty_file_is_complete() {
        let mut p = Picker::new(Bitmap::new(0), 0);
        assert!(p.is_complete());
        assert_eq!(p.remaining(), 0);
        assert_eq!(p.pick(&Bitmap::new(0), true), None);
        assert!(p.unavailable().is_empty());
    }

    /// Three sources with different bitmaps, each served round robin with a
    /// pipeline of two requests; some requests fail and are released. The
    /// download must end complete with every chunk completed exactly once.
    #[test]
    fn full_download_simulation() {
        let n = 100u32;
        let make = |f: &dyn Fn(u32) -> bool| {
            let mut b = Bitmap::new(n);
            (0..n).filter(|&i| f(i)).for_each(|i| {
                b.set(i);
            });
            b
        };
        // Overlapping, and together they cover every chunk.
        let s0 = make(&|i| i % 2 == 0);
        let s1 = make(&|i| i % 3 == 1);
        let s2 = make(&|i| i < 10 || i % 6 == 3 || i % 6 == 5);
        let sources = [s0, s1, s2];
        for seed in 0..10 {
            let mut p = Picker::new(bm(n, &[1, 2, 3]), seed);
            p.set_availability(sources.iter());
            assert!(p.unavailable().is_empty());
            let mut rng = XorShift64Star::new(seed ^ 0xabc);
            let mut queues: [Vec<u32>; 3] = Default::default();
            let mut firsts = 3; // chunks held at start
            let mut steps = 0;
            while !p.is_complete() {
                steps += 1;
                assert!(steps < 10_000, "simulation does not converge");
                for (s, q) in queues.iter_mut().enumerate() {
                    while q.len() < 2 {
                        // Avoid duplicating our own outstanding chunks.
                        let mut has = sources[s].clone();
                        q.iter().for_each(|&i| {
                            has.clear(i);
                        });
                        match p.pick(&has, true) {
                            Some(x) => q.push(x.index),
                            None => break,
                        }
                    }
                    if q.is_empty() {
                        continue;
                    }
                    let i = q.remove(0);
                    if rng.below(10) == 0 {
                        p.release(i); // failed request
                    } else if p.complete(i) {
                        firsts += 1;
                    }
                }
            }
            assert_eq!(firsts, n);
            for q in &mut queues {
                for i in q.drain(..) {
                    assert!(!p.complete(i));
                }
            }
            assert!((0..n).all(|i| p.in_flight(i) == 0));
        }
    }
}

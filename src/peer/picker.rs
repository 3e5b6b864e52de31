//! Rarest-first chunk choice for one download.
//!
//! Owns: which chunks of the file are held, how many requests for each are in
//! flight, how many known sources hold each (availability, from the latest
//! tracker Locations), and the choice of the next chunk to ask a source for.
//!
//! Pure data: no I/O, no threads, no clock, no locks of its own. The download
//! keeps one `Picker` behind a `Mutex` shared by its worker threads (one per
//! source) and holds that lock only for these in-memory calls. Calls only
//! `chunks::Bitmap` and `limits`.
//!
//! Why rarest first: a chunk that few peers hold is the one most likely to
//! become unobtainable if those peers leave, and fetching it first turns this
//! peer into one more source for it (the session registers each chunk as it
//! is verified). Ties are broken at random so that many downloaders starting
//! at once do not all fetch the same chunk from the same source.
//!
//! Why groups: a pick happens once per chunk, so a pick that looked at every
//! chunk would make a download quadratic in the chunk count (2^19 chunks at
//! most). As libtorrent's piece picker does, the
//! candidates (not held, nothing in flight) are kept grouped by availability,
//! each group a list with O(1) insert and remove, so a pick looks only at the
//! rarest group and draws from it at random. See [`Picker::pick`] for the
//! cost.

use crate::chunks::Bitmap;
use crate::limits::MAX_SOURCES_PER_REPLY;

/// One chunk handed to a worker by [`Picker::pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: u32,
    /// True in endgame: the chunk is already requested from another source,
    /// and whichever copy arrives second is thrown away.
    pub duplicate: bool,
}

/// Random draws from a group before falling back to a scan of it: with a
/// source holding at least a quarter of the group, all of them miss with
/// probability below 1%.
const PROBES: usize = 16;

/// Availability counts above this share the last group: one Locations reply
/// names at most this many sources, so a higher count is rare and its exact
/// value does not matter for "rarest".
const TOP_GROUP: u32 = MAX_SOURCES_PER_REPLY as u32;

/// Where a chunk is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not held, nothing in flight: in `groups[group(avail)]`.
    Candidate,
    /// Not held, requested: in `flying`.
    Flying,
    /// Held: in no list.
    Held,
}

/// The candidates of one availability count, as a list (random draws,
/// O(1) insert and swap-remove) and as a bitmap of 64-bit words with the
/// wire's bit order (to intersect with a source's bitmap 64 chunks at a
/// time).
#[derive(Debug, Clone, Default)]
struct Group {
    list: Vec<u32>,
    /// Allocated when the group first gets a member.
    words: Vec<u64>,
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
    /// Candidates grouped by availability (index: the count, capped at
    /// `TOP_GROUP`).
    groups: Vec<Group>,
    /// Chunks not held with requests in flight: the endgame's candidates.
    /// At most as many as requests outstanding, not chunks in the file.
    flying: Vec<u32>,
    /// Each chunk's position in the list its state puts it in.
    pos: Vec<u32>,
    rng: XorShift64Star,
    /// Operations spent choosing (draws, list entries and words looked
    /// at): what the tests bound instead of timing.
    work: u64,
}

impl Picker {
    /// `have`: chunks already verified on disk (a resumed download); its
    /// length is the file's chunk count. `seed`: PRNG seed for tie breaking
    /// (tests fix it; downloads seed from time and pid so that peers differ).
    pub fn new(have: Bitmap, seed: u64) -> Picker {
        let count = have.len();
        let mut p = Picker {
            count,
            have,
            in_flight: vec![0; count as usize],
            avail: vec![0; count as usize],
            groups: Vec::new(),
            flying: Vec::new(),
            pos: vec![0; count as usize],
            rng: XorShift64Star::new(seed),
            work: 0,
        };
        for i in 0..count {
            if !p.have.get(i) {
                p.list(i, State::Candidate);
            }
        }
        p
    }

    /// Replaces the availability counts with those of `sources`, one bitmap
    /// per known source (the latest Locations). Bits past the file's chunk
    /// count are ignored, so a bitmap of the wrong length cannot index out of
    /// range. Cost: the sources' bitmaps read a byte at a time, plus O(1)
    /// per chunk whose count changed.
    pub fn set_availability<'a>(&mut self, sources: impl IntoIterator<Item = &'a Bitmap>) {
        let mut fresh = vec![0u32; self.count as usize];
        for s in sources {
            for (byte_i, &b) in s.as_bytes().iter().enumerate() {
                let mut m = b;
                while m != 0 {
                    let bit = m.leading_zeros();
                    m &= !(0x80u8 >> bit);
                    if let Some(a) = fresh.get_mut(byte_i * 8 + bit as usize) {
                        *a = a.saturating_add(1);
                    }
                }
            }
        }
        for i in 0..self.count {
            let new = fresh[i as usize];
            if new == self.avail[i as usize] {
                continue;
            }
            if self.state(i) == State::Candidate {
                self.unlist(i, State::Candidate);
                self.avail[i as usize] = new;
                self.list(i, State::Candidate);
            } else {
                self.avail[i as usize] = new;
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
    /// Cost: the groups are visited rarest first (at most `TOP_GROUP` + 1,
    /// empty ones skipped at once). In a group, up to `PROBES` random draws
    /// each keep the drawn chunk if the source has it (which is a uniform
    /// choice among the group's chunks the source has); so a pick from a
    /// source holding a fair share of the rarest chunks (a seed always does)
    /// costs O(1). Only when every draw misses is the group scanned: its list
    /// when that is short, else its words against the source's bitmap, 64
    /// chunks per operation (8,192 operations at 2^19 chunks, about what
    /// copying that source's 64 KiB bitmap costs). Endgame looks at the
    /// chunks in flight only.
    pub fn pick(&mut self, source_has: &Bitmap, endgame: bool) -> Option<Pick> {
        if let Some(i) = self.choose_fresh(source_has) {
            self.set_in_flight(i, 1);
            return Some(Pick {
                index: i,
                duplicate: false,
            });
        }
        if !endgame {
            return None;
        }
        let i = self.choose_duplicate(source_has)?;
        self.set_in_flight(i, self.in_flight[i as usize].saturating_add(1));
        Some(Pick {
            index: i,
            duplicate: true,
        })
    }

    /// The rarest candidate the source has, uniformly among equals.
    fn choose_fresh(&mut self, has: &Bitmap) -> Option<u32> {
        for g in 0..self.groups.len() {
            self.work += 1;
            let len = self.groups[g].list.len();
            if len == 0 {
                continue;
            }
            for _ in 0..PROBES {
                self.work += 1;
                let i = self.groups[g].list[self.rng.below(len as u64) as usize];
                if has.get(i) {
                    return Some(i);
                }
            }
            if let Some(i) = self.scan_group(g, has) {
                return Some(i);
            }
        }
        None
    }

    /// Every candidate of group `g` that the source has, counted; one of them
    /// chosen uniformly. Walks the shorter of the list and the words.
    fn scan_group(&mut self, g: usize, has: &Bitmap) -> Option<u32> {
        let group = &self.groups[g];
        if group.list.len() <= group.words.len() {
            self.work += 2 * group.list.len() as u64;
            let n = group.list.iter().filter(|&&i| has.get(i)).count();
            if n == 0 {
                return None;
            }
            let k = self.rng.below(n as u64) as usize;
            return group.list.iter().copied().filter(|&i| has.get(i)).nth(k);
        }
        let src = has.as_bytes();
        let both = |w: usize| group.words[w] & word_of(src, w);
        self.work += 2 * group.words.len() as u64;
        let n: u64 = (0..group.words.len())
            .map(|w| u64::from(both(w).count_ones()))
            .sum();
        if n == 0 {
            return None;
        }
        let mut k = self.rng.below(n);
        for w in 0..group.words.len() {
            let mut m = both(w);
            let c = u64::from(m.count_ones());
            if k >= c {
                k -= c;
                continue;
            }
            for _ in 0..k {
                m &= m - 1;
            }
            // Bit 63 is the word's first chunk (the wire's order).
            return Some(w as u32 * 64 + 63 - m.trailing_zeros());
        }
        None
    }

    /// Among chunks in flight and not held that the source has, the one
    /// with the fewest requests (reservoir sampling among equals).
    fn choose_duplicate(&mut self, has: &Bitmap) -> Option<u32> {
        let mut best = None;
        let mut best_key = u32::MAX;
        let mut ties = 0u64;
        for k in 0..self.flying.len() {
            self.work += 1;
            let i = self.flying[k];
            if !has.get(i) {
                continue;
            }
            let key = self.in_flight[i as usize];
            if key < best_key {
                (best, best_key, ties) = (Some(i), key, 1);
            } else if key == best_key {
                ties += 1;
                if self.rng.below(ties) == 0 {
                    best = Some(i);
                }
            }
        }
        best
    }

    /// A requested chunk was verified and written. Returns true the first
    /// time; false for a second copy (endgame duplicate) or an index out of
    /// range. Either way the request is no longer in flight.
    pub fn complete(&mut self, i: u32) -> bool {
        if i >= self.count {
            return false;
        }
        let before = self.state(i);
        let f = &mut self.in_flight[i as usize];
        *f = f.saturating_sub(1);
        let first = self.have.set(i);
        self.moved(i, before);
        first
    }

    /// A request for `i` was abandoned (source failed, bad hash, or a
    /// duplicate no longer needed): one fewer in flight, so the chunk can be
    /// picked again.
    pub fn release(&mut self, i: u32) {
        if i < self.count {
            self.set_in_flight(i, self.in_flight[i as usize].saturating_sub(1));
        }
    }

    fn set_in_flight(&mut self, i: u32, n: u32) {
        let before = self.state(i);
        self.in_flight[i as usize] = n;
        self.moved(i, before);
    }

    fn state(&self, i: u32) -> State {
        if self.have.get(i) {
            State::Held
        } else if self.in_flight[i as usize] > 0 {
            State::Flying
        } else {
            State::Candidate
        }
    }

    /// Moves chunk `i` to the list of its current state if it changed.
    fn moved(&mut self, i: u32, before: State) {
        let now = self.state(i);
        if now != before {
            self.unlist(i, before);
            self.list(i, now);
        }
    }

    fn group_of(&self, i: u32) -> usize {
        self.avail[i as usize].min(TOP_GROUP) as usize
    }

    fn list(&mut self, i: u32, state: State) {
        let list = match state {
            State::Held => return,
            State::Flying => &mut self.flying,
            State::Candidate => {
                let g = self.group_of(i);
                if self.groups.len() <= g {
                    self.groups.resize_with(g + 1, Group::default);
                }
                let group = &mut self.groups[g];
                if group.words.is_empty() {
                    group.words = vec![0; (self.count as usize).div_ceil(64)];
                }
                group.words[(i / 64) as usize] |= 1u64 << (63 - i % 64);
                &mut group.list
            }
        };
        // A list holds at most `count` (<= u32::MAX) chunks.
        self.pos[i as usize] = list.len() as u32;
        list.push(i);
    }

    fn unlist(&mut self, i: u32, state: State) {
        let list = match state {
            State::Held => return,
            State::Flying => &mut self.flying,
            State::Candidate => {
                let g = self.group_of(i);
                let group = &mut self.groups[g];
                group.words[(i / 64) as usize] &= !(1u64 << (63 - i % 64));
                &mut group.list
            }
        };
        let at = self.pos[i as usize] as usize;
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.pos[moved as usize] = at as u32;
        }
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// True when no chunk is left to request for the first time (every
    /// missing chunk is in flight somewhere): the endgame. O(groups).
    pub fn all_requested(&self) -> bool {
        self.groups.iter().all(|g| g.list.is_empty())
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

/// Word `w` of a bitmap in the wire's layout (64 chunks, the first in bit
/// 63), zero past its end.
fn word_of(bytes: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(w * 8..) {
        let k = s.len().min(8);
        b[..k].copy_from_slice(&s[..k]);
    }
    u64::from_be_bytes(b)
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

    /// Picks from a picker of the largest file cost bounded work: O(1)
    /// expected when the source holds the rarest chunks (a seed), one pass
    /// over the bucket's words (64 chunks per operation) when it holds few
    /// of them. Counted in operations, not timed.
    #[test]
    fn picks_at_the_largest_file_cost_bounded_work() {
        let n = crate::limits::MAX_CHUNKS_PER_FILE;
        let words = u64::from(n / 64);
        let all = Bitmap::full(n);
        // A seed and a downloader holding the even half.
        let half = {
            let mut b = Bitmap::new(n);
            (0..n).step_by(2).for_each(|i| {
                b.set(i);
            });
            b
        };
        let mut p = Picker::new(Bitmap::new(n), 1);
        p.set_availability([&all, &half]);
        let picks = 200u64;
        let w0 = p.work;
        for _ in 0..picks {
            let x = p.pick(&all, false).unwrap();
            assert_eq!(x.index % 2, 1, "rarest (odd) first");
        }
        let seed_work = (p.work - w0) / picks;
        assert!(
            seed_work <= 40,
            "{seed_work} operations per pick from a seed"
        );
        // The half source holds none of the rarest chunks: each pick skips
        // that bucket with one pass over its words, then finds one at once.
        let w0 = p.work;
        for _ in 0..picks {
            let x = p.pick(&half, false).unwrap();
            assert_eq!(x.index % 2, 0);
        }
        let half_work = (p.work - w0) / picks;
        assert!(
            half_work <= 2 * words + 100,
            "{half_work} operations per pick from a partial source"
        );
    }

    /// Draining a whole file of the largest size from a seed, as a download
    /// does (pick, then complete), costs a few operations per chunk.
    #[test]
    fn draining_the_largest_file_costs_linear_work() {
        let n = crate::limits::MAX_CHUNKS_PER_FILE;
        let all = Bitmap::full(n);
        let mut p = Picker::new(Bitmap::new(n), 2);
        p.set_availability([&all]);
        let mut got = 0u32;
        while let Some(x) = p.pick(&all, true) {
            assert!(!x.duplicate);
            assert!(p.complete(x.index));
            got += 1;
        }
        assert_eq!(got, n);
        assert!(p.is_complete());
        assert!(p.work <= 4 * u64::from(n), "{} operations", p.work);
    }

    #[test]
    fn availability_updates_reorder_the_picks() {
        let all = Bitmap::full(8);
        let mut p = Picker::new(Bitmap::new(8), 4);
        p.set_availability([&all, &bm(8, &[0, 1, 2, 3, 4, 6, 7])]);
        assert_eq!(p.pick(&all, false).unwrap().index, 5);
        p.release(5);
        // New locations: chunk 2 is now the only one a single source has.
        p.set_availability([&all, &bm(8, &[0, 1, 3, 4, 5, 6, 7])]);
        let x = p.pick(&all, false).unwrap().index;
        assert_eq!(x, 2);
        // Chunk 7 becomes the rarest while in flight elsewhere: once that
        // request is abandoned it is the next choice.
        let seven = bm(8, &[7]);
        assert_eq!(p.pick(&seven, false).unwrap().index, 7);
        p.set_availability([&all, &all, &bm(8, &[0, 1, 2, 3, 4, 5, 6])]);
        p.release(7);
        assert!(!p.all_requested());
        assert_eq!(p.pick(&all, false).unwrap().index, 7);
        // The rest are equally available: all six remaining come out.
        let mut rest: Vec<u32> =
            std::iter::from_fn(|| p.pick(&all, false).map(|x| x.index)).collect();
        rest.sort();
        assert_eq!(rest, vec![0, 1, 3, 4, 5, 6]);
        assert!(p.all_requested());
        // Availability may change under chunks held and in flight too.
        p.set_availability(std::iter::empty());
        assert!(p.complete(0));
        p.release(1);
        assert_eq!(p.pick(&all, false).unwrap().index, 1);
        assert_eq!(p.unavailable(), (1..8).collect::<Vec<_>>());
    }

    /// A source holding few of the rarest chunks: the random draws miss and
    /// the group is scanned; the choice must still be uniform among the
    /// chunks it holds, and both scan paths (list and words) must agree.
    #[test]
    fn ties_are_uniform_when_the_source_holds_few_of_them() {
        for n in [40u32, 4096] {
            let src = bm(n, &[3, 17, 30, 39]);
            let mut hist = [0u32; 4];
            for seed in 0..4000u64 {
                let mut p = Picker::new(Bitmap::new(n), seed);
                p.set_availability([&Bitmap::full(n)]);
                let i = p.pick(&src, false).unwrap().index;
                let k = [3, 17, 30, 39].iter().position(|&x| x == i).unwrap();
                hist[k] += 1;
            }
            for (k, &c) in hist.iter().enumerate() {
                assert!((850..1150).contains(&c), "n {n}: choice {k} {c} times");
            }
        }
    }

    #[test]
    fn endgame_looks_only_at_chunks_in_flight() {
        let n = 1u32 << 16;
        let all = Bitmap::full(n);
        let mut p = Picker::new(Bitmap::new(n), 9);
        p.set_availability([&all]);
        let mut flying = Vec::new();
        while let Some(x) = p.pick(&all, false) {
            if flying.len() < 8 {
                flying.push(x.index);
            } else {
                assert!(p.complete(x.index));
            }
        }
        assert!(p.all_requested());
        let w0 = p.work;
        let d = p.pick(&all, true).unwrap();
        assert!(d.duplicate && flying.contains(&d.index));
        assert!(p.work - w0 < 100, "{} operations", p.work - w0);
        // A source lacking every chunk in flight gets nothing.
        let done = (0..n).find(|i| !flying.contains(i)).unwrap();
        assert_eq!(p.pick(&bm(n, &[done]), true), None);
    }
}

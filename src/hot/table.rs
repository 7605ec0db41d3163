//! A shard's entries, in one open-addressed table, with their fingerprints
//! in an array beside it: a lookup scans the fingerprints and loads only
//! the entry it stops at.
//!
//! A table of fingerprints pointing into a separate slab (what this
//! replaced, after Folly's F14) costs a lookup two dependent cache misses
//! before the value's reference count: the index chunk, then the entry.
//! Here slot `i`'s fingerprint is `fps[i]` and its entry `slots[i]`: the
//! index of the one gives the address of the other, no pointer to follow.
//! Probing the 96-byte entries themselves (the first version, at most 9/10
//! full) read about four of them per hit, a cache line or two each;
//! sixteen fingerprints share a line. `benches/peers/src/bin/layout.rs`
//! compares the table with the slab shape at W1's size.
//!
//! Linear probing with the entries of a run kept in fingerprint order
//! (Amble and Knuth's ordered hash table): the home slot is
//! `fingerprint × home slots / 2^32`, which grows with the fingerprint, so the
//! whole table is sorted by fingerprint and a lookup stops at the first
//! entry with a larger one (or at an empty slot, whose fingerprint is
//! larger than any key's). Each probe step is one 4-byte load and one compare,
//! and a miss costs about what a hit does ([`MAX_LOAD`] says why the table
//! is kept at most 3/4 full). An insert shifts the rest of its run on by
//! one slot; a removal shifts the entries after it that are not at home
//! back by one (no tombstones). Entries therefore move: the eviction
//! queues name an entry by its fingerprint and a per-entry id ([`Token`]),
//! not by its slot.
//!
//! Probes never wrap: [`TAIL`] or more slots after the last home slot take
//! the run that spills past it, and the last slot is always empty, which
//! ends every probe. The table has any number of home slots: it grows by
//! an eighth at a time, so 2/3 to 3/4 of them are in use while it
//! grows, and shrinks to 7/10 when removals leave it under 3/10.

use super::s3fifo::Entry;

/// The fingerprint of an empty slot: above every key's, so it ends a
/// probe.
pub(super) const VACANT: u32 = u32::MAX;

/// The highest share of home slots in use before the table grows.
///
/// At most 3/4 full, a hit scans about two fingerprints instead of about
/// four at 9/10 (`probe toyab`: 3–10 % more gets/s in one process). With
/// the 96-byte entries of before, that cost ~18 to 36 B more an entry (W4
/// 173 → 209 B in `6b41226`, not kept); the entry is 80 bytes since, so
/// 80 B at 2/3 to 3/4 costs what 96 B did at 8/10 to 9/10
/// (docs/BENCHMARKS.md, W1 and W4).
const MAX_LOAD: (usize, usize) = (3, 4);

/// Fewest home slots a table has.
const MIN_SLOTS: usize = 8;

/// Slots after the last home slot, for runs that spill past it.
const TAIL: usize = 32;

/// An entry's name in the eviction queues: its fingerprint and its id
/// (unique among a shard's live entries). Stays valid while the entry
/// moves; a token whose entry is gone finds nothing.
pub(crate) type Token = (u32, u32);

pub(crate) struct Table {
    /// The fingerprint of each slot's entry, slot by slot: a probe scans
    /// these, sixteen to a cache line, and loads only the entry it stops
    /// at. An empty slot's ([`VACANT`]) is above every key's. The entries
    /// do not repeat their fingerprints: this array is the only copy.
    fps: Box<[u32]>,
    /// `homes` home slots and at least [`TAIL`] more, the last one empty.
    /// Empty slots hold a vacant entry.
    slots: Box<[Entry]>,
    homes: usize,
    len: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            fps: vec![VACANT; MIN_SLOTS + TAIL].into(),
            slots: vacant(MIN_SLOTS + TAIL),
            homes: MIN_SLOTS,
            len: 0,
        }
    }
}

fn vacant(slots: usize) -> Box<[Entry]> {
    (0..slots).map(|_| Entry::vacant()).collect()
}

/// The home slot of fingerprint `h` among `homes` home slots.
#[inline]
fn home(h: u32, homes: usize) -> usize {
    ((u64::from(h) * homes as u64) >> 32) as usize
}

impl Table {
    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Home slots (for the tests' accounting).
    #[cfg(test)]
    pub(crate) fn homes(&self) -> usize {
        self.homes
    }

    /// The slot of the first live entry with fingerprint `h` that `is`
    /// accepts.
    #[inline]
    pub(crate) fn find(&self, h: u32, is: impl FnMut(&Entry) -> bool) -> Option<usize> {
        self.probe(h, is, |i, _| i)
    }

    /// That entry itself (a hit: the probe's own reference, not the slot
    /// indexed again).
    #[inline]
    pub(crate) fn find_ref(&self, h: u32, is: impl FnMut(&Entry) -> bool) -> Option<&Entry> {
        self.probe(h, is, |_, e| e)
    }

    #[inline]
    fn probe<'a, T>(
        &'a self,
        h: u32,
        mut is: impl FnMut(&Entry) -> bool,
        found: impl FnOnce(usize, &'a Entry) -> T,
    ) -> Option<T> {
        debug_assert!(h < VACANT);
        let mut i = home(h, self.homes);
        loop {
            // Stops in bounds: the last slot is empty.
            let f = self.fps[i];
            if f > h {
                return None;
            }
            if f == h {
                let e = &self.slots[i];
                if is(e) {
                    return Some(found(i, e));
                }
            }
            i += 1;
        }
    }

    /// The live entry a queue token names, if it is still there.
    pub(crate) fn find_token(&self, (h, id): Token) -> Option<usize> {
        self.find(h, |e| e.id() == id)
    }

    pub(crate) fn get(&self, i: usize) -> &Entry {
        &self.slots[i]
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.slots[i]
    }

    /// Files `entry` under fingerprint `h`; the caller knows its key is
    /// not in the table.
    pub(crate) fn insert(&mut self, h: u32, entry: Entry) {
        debug_assert!(h < VACANT);
        if (self.len + 1) * MAX_LOAD.1 > self.homes * MAX_LOAD.0 {
            self.rebuild(self.homes + self.homes / 8, Some((h, entry)));
        } else if let Err(entry) = self.place(h, entry) {
            // Its run would fill the last slot: a longer tail.
            self.rebuild(self.homes, Some((h, entry)));
        }
        self.len += 1;
    }

    /// Makes room for `n` entries in all at up to [`MAX_LOAD`],
    /// so that filling the table to `n` moves each entry about once
    /// instead of the nine times growing an eighth at a time takes (the
    /// warm-up knows how many keys it will load). [`Table::fit`] gives back
    /// what a reservation left unused.
    pub(crate) fn reserve(&mut self, n: usize) {
        let homes = (n * MAX_LOAD.1).div_ceil(MAX_LOAD.0);
        if homes > self.homes {
            self.rebuild(homes, None);
        }
    }

    /// Shrinks a table under 13/20 full to [`MAX_LOAD`], the least memory
    /// the formula allows (after a reservation that was not filled). A
    /// table grown an eighth at a time stays above 2/3, so it is left as
    /// it is.
    pub(crate) fn fit(&mut self) {
        self.shrink((13, 20), MAX_LOAD);
    }

    /// Refiles the entries `to` full (a share) when fewer than `below` of
    /// the home slots are in use.
    fn shrink(&mut self, below: (usize, usize), to: (usize, usize)) {
        if self.homes > MIN_SLOTS && self.len * below.1 < self.homes * below.0 {
            self.rebuild((self.len * to.1).div_ceil(to.0), None);
        }
    }

    /// Puts a live entry in fingerprint order, shifting the rest of its
    /// run on by one; gives it back when that would fill the last slot.
    fn place(&mut self, h: u32, entry: Entry) -> Result<(), Entry> {
        let mut i = home(h, self.homes);
        // Past the entries with no larger fingerprint; an empty slot's is
        // larger than any, and the last slot is empty.
        while self.fps[i] <= h {
            i += 1;
        }
        let last = self.slots.len() - 1;
        let Some(end) = (i..last).find(|&j| self.fps[j] == VACANT) else {
            return Err(entry);
        };
        // The empty slot at `end` comes round to `i`.
        self.slots[i..=end].rotate_right(1);
        self.fps[i..=end].rotate_right(1);
        self.slots[i] = entry;
        self.fps[i] = h;
        Ok(())
    }

    /// Empties slot `i` and returns its entry; the entries after it that
    /// are not at home move back one slot each.
    pub(crate) fn remove(&mut self, i: usize) -> Entry {
        debug_assert!(self.fps[i] != VACANT, "a live slot");
        let out = std::mem::replace(&mut self.slots[i], Entry::vacant());
        self.fps[i] = VACANT;
        self.len -= 1;
        let mut end = i + 1;
        while self.fps[end] != VACANT && home(self.fps[end], self.homes) < end {
            end += 1;
        }
        // Slots i+1..end move back one; the empty slot goes to end-1.
        self.slots[i..end].rotate_left(1);
        self.fps[i..end].rotate_left(1);
        // A shard that empties gives its memory back.
        self.shrink((3, 10), (7, 10));
        out
    }

    /// Refiles every entry, and `extra`, among `homes` home slots (at
    /// least [`MIN_SLOTS`] and more than the entries), with a tail long
    /// enough for the last run and an empty last slot.
    fn rebuild(&mut self, homes: usize, extra: Option<(u32, Entry)>) {
        // The table is in fingerprint order already; `extra` goes in after
        // the entries with no larger fingerprint, as `place` puts it.
        let fps = std::mem::take(&mut self.fps);
        let mut entries: Vec<(u32, Entry)> = fps
            .iter()
            .copied()
            .zip(std::mem::take(&mut self.slots).into_vec())
            .filter(|&(h, _)| h != VACANT)
            .collect();
        if let Some((h, e)) = extra {
            let at = entries.partition_point(|&(x, _)| x <= h);
            entries.insert(at, (h, e));
        }
        debug_assert!(entries.is_sorted_by_key(|&(h, _)| h));
        let homes = homes.max(MIN_SLOTS).max(entries.len() + 1);
        // Each entry goes to its home or just after the one before it.
        let slot = |next: usize, h: u32| next.max(home(h, homes));
        let end = entries.iter().fold(0, |next, &(h, _)| slot(next, h) + 1);
        self.slots = vacant((homes + TAIL).max(end + 1));
        self.fps = vec![VACANT; self.slots.len()].into();
        self.homes = homes;
        let mut next = 0;
        for (h, e) in entries {
            let at = slot(next, h);
            self.fps[at] = h;
            self.slots[at] = e;
            next = at + 1;
        }
    }

    /// Live entries with their slots and fingerprints, in slot order.
    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, u32, &Entry)> {
        (self.fps.iter().zip(self.slots.iter()).enumerate())
            .filter(|&(_, (&h, _))| h != VACANT)
            .map(|(i, (&h, e))| (i, h, e))
    }

    /// Checks the table's invariants; panics on the first violation.
    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn validate(&self) {
        assert!(self.homes >= MIN_SLOTS, "at least {MIN_SLOTS} home slots");
        assert!(
            self.slots.len() >= self.homes + TAIL,
            "the tail follows the homes"
        );
        assert_eq!(self.iter().count(), self.len, "live slots counted");
        assert_eq!(self.fps.len(), self.slots.len(), "a fingerprint a slot");
        for (i, e) in self.slots.iter().enumerate() {
            assert!(
                self.fps[i] != VACANT || (e.key.is_empty() && e.value.is_empty()),
                "empty slot {i} holds no key or value"
            );
        }
        assert!(
            self.fps.last() == Some(&VACANT),
            "an empty slot ends the last run"
        );
        let mut prev = 0;
        for (i, f, e) in self.iter() {
            assert!(f >= prev, "fingerprint order at slot {i}");
            prev = f;
            let h = home(f, self.homes);
            assert!(h <= i, "slot {i} is at or after its home {h}");
            assert!(
                (h..i).all(|j| self.fps[j] != VACANT),
                "no empty slot between slot {i} and its home {h}"
            );
            assert_eq!(
                self.find(f, |x| std::ptr::eq(x, e)),
                Some(i),
                "entry in slot {i} is found"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(id: u32) -> Entry {
        let mut e = Entry::new(0, &id.to_le_bytes(), Bytes::new(), u64::MAX, 0, 0);
        e.set_id(id);
        e
    }

    #[test]
    fn grows_finds_removes_and_shrinks() {
        let mut t = Table::default();
        // Fingerprints that crowd the same homes, and spread ones.
        let fp = |k: u32| {
            if k.is_multiple_of(3) {
                7
            } else {
                k.wrapping_mul(0x9E37_79B9)
            }
        };
        for k in 0..5000 {
            t.insert(fp(k), entry(k));
            if k.is_multiple_of(97) {
                t.validate();
            }
        }
        t.validate();
        assert!(
            t.homes() * MAX_LOAD.0 >= t.len() * MAX_LOAD.1,
            "at most 3/4 full"
        );
        for k in 0..5000 {
            assert!(t.find_token((fp(k), k)).is_some(), "key {k}");
        }
        assert!(t.find_token((fp(1), 99_999)).is_none());
        for k in (0..5000).filter(|k: &u32| k.is_multiple_of(2)) {
            let i = t.find_token((fp(k), k)).expect("live");
            assert_eq!(t.remove(i).id(), k);
        }
        t.validate();
        for k in 0..5000 {
            assert_eq!(t.find_token((fp(k), k)).is_some(), k % 2 == 1, "key {k}");
        }
        let before = t.homes();
        for k in (0..5000).filter(|k| k % 2 == 1) {
            let i = t.find_token((fp(k), k)).expect("live");
            t.remove(i);
        }
        t.validate();
        assert_eq!(t.len(), 0);
        assert!(t.homes() < before / 10, "shrank: {} home slots", t.homes());
    }

    #[test]
    fn a_reservation_is_filled_without_growing_and_fit_gives_back_the_rest() {
        let fp = |k: u32| k.wrapping_mul(0x9E37_79B9).min(VACANT - 1);
        let mut t = Table::default();
        t.insert(fp(0), entry(0));
        t.reserve(1000);
        t.validate();
        let homes = t.homes();
        assert!(
            homes * MAX_LOAD.0 >= 1000 * MAX_LOAD.1,
            "room for 1000 at 3/4: {homes}"
        );
        for k in 1..1000 {
            t.insert(fp(k), entry(k));
        }
        t.validate();
        assert_eq!(t.homes(), homes, "filled to the reservation: no growth");
        assert!((0..1000).all(|k| t.find_token((fp(k), k)).is_some()));
        // A smaller reservation keeps the room there is.
        t.reserve(10);
        assert_eq!(t.homes(), homes);
        t.fit();
        assert_eq!(t.homes(), homes, "3/4 full: nothing to give back");

        // Half of another reservation filled: `fit` shrinks it to 3/4.
        let mut t = Table::default();
        t.reserve(2000);
        for k in 0..1000 {
            t.insert(fp(k), entry(k));
        }
        t.fit();
        t.validate();
        assert!(
            t.homes() * MAX_LOAD.0 <= 1000 * MAX_LOAD.1 + MAX_LOAD.0,
            "fit to 3/4: {} home slots",
            t.homes()
        );
        assert!((0..1000).all(|k| t.find_token((fp(k), k)).is_some()));
    }

    #[test]
    fn a_run_past_the_last_home_slot_lengthens_the_tail() {
        let mut t = Table::default();
        // Every entry homes in the last home slot, however many there are:
        // the run outgrows the tail.
        let top = VACANT - 1;
        for k in 0..200 {
            t.insert(top, entry(k));
            t.validate();
        }
        for k in 0..200 {
            assert!(t.find_token((top, k)).is_some());
        }
        let i = t.find_token((top, 0)).expect("live");
        t.remove(i);
        t.validate();
        assert!(t.find_token((top, 0)).is_none());
        assert!(t.find_token((top, 199)).is_some());
        assert!(t.find_token((top - 1, 199)).is_none());
    }
}

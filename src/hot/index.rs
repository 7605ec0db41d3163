//! A shard's index: a key's 32-bit fingerprint → the slab slot holding
//! the entry, one cache line per lookup.
//!
//! A SwissTable (hashbrown) keeps its control bytes and its buckets in two
//! places, so a lookup in a table much larger than the CPU caches misses
//! twice before it reaches the entry: once for the control group, once for
//! the bucket. Here a 64-byte chunk holds seven fingerprints *and* the seven
//! slots they point at, so a lookup misses once. The layout follows Folly's
//! F14: chunks are probed in order from the key's home chunk, and each chunk
//! counts the entries that probed past it because it was full (its
//! *overflow*). A lookup stops at the first chunk whose overflow is zero,
//! and a removal decrements the counts it had raised, so there are no
//! tombstones and the table never needs cleaning.
//!
//! The table stores fingerprints, not keys: the caller confirms a candidate
//! slot against the entry (fingerprints of different keys can be equal).

/// Buckets per chunk: 7 × (4-byte tag + 4-byte slot), the overflow count
/// and 4 spare bytes fill one 64-byte line.
const WIDTH: usize = 7;

/// The slot of an empty bucket (a slab never hands it out: it has fewer
/// than `u32::MAX` slots).
const EMPTY: u32 = u32::MAX;

/// One cache line of the table.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk {
    /// Tags ([`tag`]) of the occupied buckets, 0 in an empty one; then,
    /// at [`OVERFLOW`], the number of entries whose probe passed this chunk
    /// because it was full. Eight words, so [`Chunk::matches`] compares
    /// them in two SIMD instructions.
    tags: [u32; WIDTH + 1],
    /// Slots of the occupied buckets; [`EMPTY`] in an empty one.
    slots: [u32; WIDTH],
    _spare: u32,
}

/// Where a chunk keeps its overflow count.
const OVERFLOW: usize = WIDTH;

const EMPTY_CHUNK: Chunk = Chunk {
    tags: [0; WIDTH + 1],
    slots: [EMPTY; WIDTH],
    _spare: 0,
};

impl Chunk {
    /// A bit per bucket whose tag equals `t` (never an empty one: tags
    /// are never 0).
    #[inline]
    fn matches(&self, t: u32) -> u32 {
        let mut m = 0;
        for (i, &x) in self.tags.iter().enumerate() {
            m |= u32::from(x == t) << i;
        }
        // The overflow count is no tag.
        m & ((1 << WIDTH) - 1)
    }

    fn overflow(&self) -> u32 {
        self.tags[OVERFLOW]
    }

    fn overflow_mut(&mut self) -> &mut u32 {
        &mut self.tags[OVERFLOW]
    }

    fn first_empty(&self) -> Option<usize> {
        self.slots.iter().position(|&s| s == EMPTY)
    }
}

/// The tag stored for fingerprint `h`: 0 marks an empty bucket, so a
/// fingerprint of 0 is stored as 1.
#[inline]
fn tag(h: u32) -> u32 {
    h.max(1)
}

/// Fingerprint → slot, for the entries of one shard.
#[derive(Default)]
pub(crate) struct Index {
    /// A power of two of them, or none before the first insert.
    chunks: Vec<Chunk>,
    len: usize,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunks a probe for tag `t` visits, from its home on: every
    /// chunk once at most.
    #[inline]
    fn probe(&self, t: u32) -> impl Iterator<Item = usize> + use<> {
        let n = self.chunks.len();
        let home = t as usize & n.wrapping_sub(1);
        (0..n).map(move |i| (home + i) & (n - 1))
    }

    /// The first slot filed under fingerprint `h` that `is` accepts.
    #[inline]
    pub(crate) fn find(&self, h: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = tag(h);
        for c in self.probe(t) {
            let chunk = &self.chunks[c];
            let mut m = chunk.matches(t);
            while m != 0 {
                let s = chunk.slots[m.trailing_zeros() as usize];
                if is(s) {
                    return Some(s);
                }
                m &= m - 1;
            }
            if chunk.overflow() == 0 {
                return None;
            }
        }
        None
    }

    /// Files `slot` under fingerprint `h`. The caller knows the key is not
    /// in the table yet.
    pub(crate) fn insert(&mut self, h: u32, slot: u32) {
        debug_assert_ne!(slot, EMPTY);
        // At most 6 of every 7 buckets full: probes stay short.
        if self.len + 1 > self.chunks.len() * (WIDTH - 1) {
            self.grow();
        }
        self.put(tag(h), slot);
        self.len += 1;
    }

    /// Places a tag in the first chunk with room, counting the overflow
    /// of the full chunks it passes.
    fn put(&mut self, t: u32, slot: u32) {
        for c in self.probe(t) {
            let chunk = &mut self.chunks[c];
            if let Some(i) = chunk.first_empty() {
                chunk.tags[i] = t;
                chunk.slots[i] = slot;
                return;
            }
            *chunk.overflow_mut() += 1;
        }
        unreachable!("the index grows before it is full");
    }

    /// Takes `slot`, filed under fingerprint `h`, out. False when absent.
    pub(crate) fn remove(&mut self, h: u32, slot: u32) -> bool {
        let t = tag(h);
        let mut passed = 0;
        let mut found = None;
        for c in self.probe(t) {
            let chunk = &self.chunks[c];
            if let Some(i) = (0..WIDTH).find(|&i| chunk.tags[i] == t && chunk.slots[i] == slot) {
                found = Some((c, i));
                break;
            }
            if chunk.overflow() == 0 {
                break;
            }
            passed += 1;
        }
        let Some((c, i)) = found else {
            return false;
        };
        self.chunks[c].tags[i] = 0;
        self.chunks[c].slots[i] = EMPTY;
        // The insert raised the overflow of every chunk it passed.
        for p in self.probe(t).take(passed) {
            *self.chunks[p].overflow_mut() -= 1;
        }
        self.len -= 1;
        true
    }

    /// Doubles the chunks and files every slot again (the tags are all a
    /// rehash needs).
    fn grow(&mut self) {
        let n = (self.chunks.len() * 2).max(1);
        let old = std::mem::replace(&mut self.chunks, vec![EMPTY_CHUNK; n]);
        for chunk in &old {
            for i in 0..WIDTH {
                if chunk.slots[i] != EMPTY {
                    self.put(chunk.tags[i], chunk.slots[i]);
                }
            }
        }
    }

    /// Heap bytes held (the memory formula's index share).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }

    /// Checks the counts: `len` buckets are full, every overflow count is
    /// the number of entries whose probe passes its chunk, and empty
    /// buckets have tag 0.
    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn validate(&self) {
        let n = self.chunks.len();
        let mut overflow = vec![0u32; n];
        let mut full = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            for i in 0..WIDTH {
                let (t, s) = (chunk.tags[i], chunk.slots[i]);
                if s == EMPTY {
                    assert_eq!(t, 0, "an empty bucket has tag 0");
                    continue;
                }
                assert_ne!(t, 0, "a full bucket has a tag");
                full += 1;
                let home = t as usize & (n - 1);
                let mut p = home;
                while p != c {
                    overflow[p] += 1;
                    p = (p + 1) & (n - 1);
                }
            }
        }
        assert_eq!(full, self.len, "index length counts its full buckets");
        for (c, chunk) in self.chunks.iter().enumerate() {
            assert_eq!(chunk.overflow(), overflow[c], "overflow count of chunk {c}");
        }
        assert!(self.len <= n * (WIDTH - 1), "index at most 6/7 full");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn a_chunk_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Chunk>(), 64);
        assert_eq!(std::mem::align_of::<Chunk>(), 64);
    }

    #[test]
    fn fingerprint_zero_and_equal_fingerprints_are_kept_apart() {
        let mut ix = Index::default();
        for s in 0..20 {
            ix.insert(0, s);
        }
        ix.validate();
        for s in 0..20 {
            assert_eq!(ix.find(0, |x| x == s), Some(s));
        }
        assert_eq!(ix.find(1, |x| x == 3), Some(3), "0 and 1 share tag 1");
        assert!(ix.remove(0, 7));
        assert!(!ix.remove(0, 7));
        assert_eq!(ix.find(0, |x| x == 7), None);
        ix.validate();
    }

    proptest! {
        /// The index against a map, with fingerprints from a small range
        /// so that chunks overflow and equal fingerprints are common.
        #[test]
        fn index_matches_a_map(ops in prop::collection::vec((any::<bool>(), 0u32..64, 0u32..400), 1..600)) {
            let mut ix = Index::default();
            let mut model: HashMap<u32, u32> = HashMap::new(); // slot -> fingerprint
            for (insert, fp, slot) in ops {
                // Spread the small fingerprints over the home chunks too.
                let h = fp.wrapping_mul(0x9E37_79B9) | (fp & 3);
                if insert {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(slot) {
                        v.insert(h);
                        ix.insert(h, slot);
                    }
                } else if let Some(h) = model.remove(&slot) {
                    prop_assert!(ix.remove(h, slot));
                } else {
                    prop_assert!(!ix.remove(h, slot));
                }
                ix.validate();
            }
            prop_assert_eq!(ix.len(), model.len());
            for (&slot, &h) in &model {
                prop_assert_eq!(ix.find(h, |s| s == slot), Some(slot));
            }
            for slot in 400..420 {
                prop_assert_eq!(ix.find(slot, |s| s == slot), None);
            }
        }
    }

    #[test]
    fn memory_per_entry_stays_within_the_formula() {
        let mut ix = Index::default();
        for s in 0..100_000u32 {
            ix.insert(s.wrapping_mul(0x9E37_79B9), s);
        }
        let per = ix.heap_bytes() as f64 / 100_000.0;
        // 64 B per 7 buckets, between 3/7 and 6/7 full: 10.7–21.3 B.
        assert!((10.0..=22.0).contains(&per), "{per} B per entry");
    }
}

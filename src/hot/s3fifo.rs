//! One shard of the hot tier: the S3-FIFO eviction algorithm, single-threaded.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps three FIFO queues:
//!
//! * **small** (about 10 % of the bytes): every new key lands here. A key
//!   that is read again before it reaches the head is promoted to main; a
//!   key read only once (a scan) leaves quickly and only its hash is kept in
//!   the ghost queue. This is what makes the policy scan-resistant.
//! * **main** (the rest): at the head, a key with a non-zero frequency is
//!   re-queued at the tail with its frequency decremented (CLOCK-like); a
//!   key with frequency zero is evicted.
//! * **ghost**: hashes of keys recently evicted from small. A key inserted
//!   again while its hash is in ghost goes straight to main.
//!
//! A read hit only bumps an atomic 2-bit frequency, so the sharding wrapper
//! serves hits under a *shared* lock. Removal from the middle of a queue is
//! lazy: queues hold `(slot, generation)` tokens and stale tokens are
//! skipped when popped (and compacted when they outnumber live ones).

use bytes::Bytes;
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};

/// Bytes charged per entry on top of `key.len() + value.len()`: the slab
/// slot (~104 B, up to 2x while the slab grows), the hash-table slot, the
/// queue token, the ghost slot a key may leave behind, the shared header of
/// the value buffer, and malloc's headers and rounding of the key and
/// value buffers. Measured at about 235 B of heap per entry plus malloc
/// overhead (tests/memory_bound.rs, counting allocator); the crate docs
/// state the formula and that test holds the hot tier to it within 10 %.
pub const ENTRY_OVERHEAD: usize = 288;

const MAX_FREQ: u8 = 3;

/// Which FIFO an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

/// One cached value with everything needed to decide if it may be served.
#[derive(Debug)]
pub(crate) struct Entry {
    pub hash: u64,
    pub ns: u32,
    pub key: Box<[u8]>,
    pub value: Bytes,
    /// Unix ms in engine time; `u64::MAX` = never.
    pub expires_at: u64,
    /// Namespace epoch the value was written under.
    pub epoch: u64,
    /// Per-key write version; a lower version never replaces a higher one.
    pub version: u64,
    freq: AtomicU8,
    charge: usize,
    queue: Queue,
}

impl Entry {
    pub(crate) fn new(
        hash: u64,
        ns: u32,
        key: &[u8],
        value: Bytes,
        expires_at: u64,
        epoch: u64,
        version: u64,
    ) -> Self {
        let charge = charge_of(key.len(), value.len());
        Entry {
            hash,
            ns,
            key: key.into(),
            value,
            expires_at,
            epoch,
            version,
            freq: AtomicU8::new(0),
            charge,
            queue: Queue::Small,
        }
    }

    /// Marks an entry that was hot before a restart: it is admitted straight
    /// to the main queue, so the warm-up does not push itself out of small.
    pub(crate) fn into_main(mut self) -> Self {
        self.queue = Queue::Main;
        self
    }
}

/// Bytes a `key.len()`/`value.len()` pair is charged against the capacity.
pub fn charge_of(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ENTRY_OVERHEAD
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Result of an insert.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Inserted or replaced.
    Stored,
    /// A newer version is already present; nothing changed.
    Stale,
    /// The entry alone is larger than the shard's capacity.
    TooLarge,
}

/// Why an entry left the shard, reported to the `on_evict` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    /// Capacity pressure.
    Capacity,
    /// Found expired or of an old namespace epoch while evicting.
    Dead,
}

/// A single S3-FIFO shard bounded in bytes.
pub(crate) struct Shard {
    capacity: usize,
    small_target: usize,
    used: usize,
    small_used: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    table: HashTable<u32>,
    small: VecDeque<(u32, u32)>,
    main: VecDeque<(u32, u32)>,
    ghost: VecDeque<u64>,
    ghost_set: hashbrown::HashMap<u64, u32, foldhash::fast::FixedState>,
}

impl Shard {
    pub(crate) fn new(capacity: usize) -> Self {
        Shard {
            capacity,
            small_target: (capacity / 10).max(1),
            used: 0,
            small_used: 0,
            slots: Vec::new(),
            free: Vec::new(),
            table: HashTable::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: Default::default(),
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    fn find(&self, hash: u64, ns: u32, key: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&i| {
                let e = self.slots[i as usize].entry.as_ref();
                e.is_some_and(|e| e.ns == ns && &*e.key == key)
            })
            .copied()
    }

    /// Looks a key up and counts the access. Takes `&self`: the frequency is
    /// atomic, so the caller can hold a shared lock.
    pub(crate) fn get(&self, hash: u64, ns: u32, key: &[u8]) -> Option<&Entry> {
        let i = self.find(hash, ns, key)?;
        let e = self.slots[i as usize].entry.as_ref()?;
        let f = e.freq.load(Ordering::Relaxed);
        if f < MAX_FREQ {
            // A lost update under contention only under-counts; harmless.
            e.freq.store(f + 1, Ordering::Relaxed);
        }
        Some(e)
    }

    /// The version of a key's entry, without counting an access.
    pub(crate) fn version_of(&self, hash: u64, ns: u32, key: &[u8]) -> Option<u64> {
        let i = self.find(hash, ns, key)?;
        self.slots[i as usize].entry.as_ref().map(|e| e.version)
    }

    /// Inserts or replaces `entry` unless a newer version is present, then
    /// evicts until the shard fits. `is_dead` says whether an entry met at
    /// the head of a queue is expired or of an old epoch (evicted at once).
    pub(crate) fn insert(
        &mut self,
        mut entry: Entry,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) -> Insert {
        if entry.charge > self.capacity {
            // Drop any older copy so a read cannot see it.
            self.remove(entry.hash, entry.ns, &entry.key, entry.version);
            return Insert::TooLarge;
        }
        if let Some(i) = self.find(entry.hash, entry.ns, &entry.key) {
            let slot = self.slots[i as usize].entry.as_mut().expect("live slot");
            if slot.version > entry.version {
                return Insert::Stale;
            }
            let old_charge = slot.charge;
            slot.value = entry.value;
            slot.expires_at = entry.expires_at;
            slot.epoch = entry.epoch;
            slot.version = entry.version;
            slot.charge = entry.charge;
            let q = slot.queue;
            self.used = self.used - old_charge + entry.charge;
            if q == Queue::Small {
                self.small_used = self.small_used - old_charge + entry.charge;
            }
        } else {
            let in_ghost = self.ghost_remove(entry.hash);
            if in_ghost {
                entry.queue = Queue::Main;
            }
            let charge = entry.charge;
            let hash = entry.hash;
            let queue = entry.queue;
            let idx = match self.free.pop() {
                Some(i) => {
                    self.slots[i as usize].entry = Some(entry);
                    i
                }
                None => {
                    self.slots.push(Slot {
                        generation: 0,
                        entry: Some(entry),
                    });
                    (self.slots.len() - 1) as u32
                }
            };
            let slots = &self.slots;
            self.table.insert_unique(hash, idx, |&i| {
                slots[i as usize].entry.as_ref().map_or(0, |e| e.hash)
            });
            let token = (idx, self.slots[idx as usize].generation);
            self.used += charge;
            match queue {
                Queue::Small => {
                    self.small_used += charge;
                    self.small.push_back(token);
                }
                Queue::Main => self.main.push_back(token),
            }
        }
        self.evict_to_fit(is_dead, on_evict);
        Insert::Stored
    }

    /// Removes a key if its stored version is not newer than `version`.
    /// Returns true when something was removed.
    pub(crate) fn remove(&mut self, hash: u64, ns: u32, key: &[u8], version: u64) -> bool {
        let Some(i) = self.find(hash, ns, key) else {
            return false;
        };
        if self.slots[i as usize]
            .entry
            .as_ref()
            .is_some_and(|e| e.version > version)
        {
            return false;
        }
        self.take_slot(i);
        self.maybe_compact();
        true
    }

    /// Frees slot `i`: unlinks it from the table and the byte counts. Its
    /// queue token goes stale and is skipped later.
    fn take_slot(&mut self, i: u32) -> Entry {
        let slot = &mut self.slots[i as usize];
        let e = slot.entry.take().expect("live slot");
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(i);
        if let Ok(o) = self.table.find_entry(e.hash, |&j| j == i) {
            o.remove();
        }
        self.used -= e.charge;
        if e.queue == Queue::Small {
            self.small_used -= e.charge;
        }
        e
    }

    fn is_live(&self, (i, generation): (u32, u32)) -> bool {
        let s = &self.slots[i as usize];
        s.generation == generation && s.entry.is_some()
    }

    fn evict_to_fit(
        &mut self,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) {
        while self.used > self.capacity {
            if self.small_used > self.small_target || self.main.is_empty() {
                self.evict_small(is_dead, on_evict);
            } else {
                self.evict_main(is_dead, on_evict);
            }
        }
    }

    fn evict_small(
        &mut self,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) {
        while let Some(token) = self.small.pop_front() {
            if !self.is_live(token) {
                continue;
            }
            let i = token.0;
            let e = self.slots[i as usize].entry.as_mut().expect("live");
            if is_dead(e) {
                let e = self.take_slot(i);
                on_evict(&e, Evicted::Dead);
                return;
            }
            if e.freq.load(Ordering::Relaxed) > 0 {
                // Seen again while in small: promote to main.
                e.freq.store(0, Ordering::Relaxed);
                e.queue = Queue::Main;
                self.small_used -= e.charge;
                self.main.push_back(token);
                return;
            }
            let e = self.take_slot(i);
            self.ghost_push(e.hash);
            on_evict(&e, Evicted::Capacity);
            return;
        }
        // Small held only stale tokens: take from main.
        self.evict_main(is_dead, on_evict);
    }

    fn evict_main(
        &mut self,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) {
        while let Some(token) = self.main.pop_front() {
            if !self.is_live(token) {
                continue;
            }
            let i = token.0;
            let e = self.slots[i as usize].entry.as_ref().expect("live");
            if is_dead(e) {
                let e = self.take_slot(i);
                on_evict(&e, Evicted::Dead);
                return;
            }
            let f = e.freq.load(Ordering::Relaxed);
            if f > 0 {
                e.freq.store(f - 1, Ordering::Relaxed);
                self.main.push_back(token);
                continue;
            }
            let e = self.take_slot(i);
            on_evict(&e, Evicted::Capacity);
            return;
        }
        // Main held only stale tokens; small must then hold the bytes.
        if self.used > self.capacity && !self.small.is_empty() {
            self.evict_small(is_dead, on_evict);
        }
    }

    fn ghost_push(&mut self, hash: u64) {
        // The ghost remembers about as many keys as the shard holds.
        let limit = self.table.len().max(16);
        while self.ghost.len() >= limit {
            if let Some(h) = self.ghost.pop_front() {
                self.ghost_forget(h);
            }
        }
        self.ghost.push_back(hash);
        *self.ghost_set.entry(hash).or_insert(0) += 1;
    }

    fn ghost_forget(&mut self, h: u64) {
        if let Some(c) = self.ghost_set.get_mut(&h) {
            *c -= 1;
            if *c == 0 {
                self.ghost_set.remove(&h);
            }
        }
    }

    /// True when `hash` was in the ghost; the deque copy goes stale and is
    /// dropped when it reaches the front.
    fn ghost_remove(&mut self, hash: u64) -> bool {
        self.ghost_set.remove(&hash).is_some()
    }

    /// Rebuilds the queues when stale tokens dominate, so a churn of
    /// inserts and deletes without eviction pressure cannot grow them.
    fn maybe_compact(&mut self) {
        let live = self.table.len();
        if self.small.len() + self.main.len() > 2 * live + 64 {
            let slots = &self.slots;
            let alive = |&(i, g): &(u32, u32)| {
                slots[i as usize].generation == g && slots[i as usize].entry.is_some()
            };
            self.small.retain(alive);
            self.main.retain(alive);
        }
    }

    /// Hottest keys first: main before small, higher frequency first.
    pub(crate) fn hottest(&self, out: &mut Vec<(u8, u32, Box<[u8]>)>) {
        for (q, rank_base) in [(&self.main, 4u8), (&self.small, 0u8)] {
            for &t in q.iter() {
                if self.is_live(t) {
                    let e = self.slots[t.0 as usize].entry.as_ref().expect("live");
                    out.push((
                        rank_base + e.freq.load(Ordering::Relaxed),
                        e.ns,
                        e.key.clone(),
                    ));
                }
            }
        }
    }

    /// Checks every structural invariant; panics with a description on the
    /// first violation. For tests and fuzzing.
    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn validate(&self) {
        let mut used = 0;
        let mut small_used = 0;
        let mut live = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(e) = &s.entry {
                live += 1;
                used += e.charge;
                if e.queue == Queue::Small {
                    small_used += e.charge;
                }
                assert_eq!(
                    self.find(e.hash, e.ns, &e.key),
                    Some(i as u32),
                    "table maps entry to its slot"
                );
                let token = (i as u32, s.generation);
                let q = match e.queue {
                    Queue::Small => &self.small,
                    Queue::Main => &self.main,
                };
                assert_eq!(
                    q.iter().filter(|&&t| t == token).count(),
                    1,
                    "entry queued exactly once"
                );
                assert!(e.freq.load(Ordering::Relaxed) <= MAX_FREQ);
            }
        }
        assert_eq!(live, self.table.len(), "table size equals live slots");
        assert_eq!(used, self.used, "byte count");
        assert_eq!(small_used, self.small_used, "small byte count");
        assert!(self.used <= self.capacity, "within capacity");
        assert_eq!(self.free.len() + live, self.slots.len(), "free list");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: u64, v: usize) -> Entry {
        Entry::new(
            k.wrapping_mul(0x9E3779B97F4A7C15),
            0,
            &k.to_le_bytes(),
            Bytes::from(vec![0u8; v]),
            u64::MAX,
            0,
            k,
        )
    }

    fn ins(s: &mut Shard, k: u64) {
        s.insert(e(k, 40), &|_| false, &mut |_, _| {});
        s.validate();
    }

    fn hit(s: &Shard, k: u64) -> bool {
        s.get(k.wrapping_mul(0x9E3779B97F4A7C15), 0, &k.to_le_bytes())
            .is_some()
    }

    #[test]
    fn stays_within_capacity_and_evicts() {
        let mut s = Shard::new(charge_of(8, 40) * 10);
        for k in 0..100 {
            ins(&mut s, k);
        }
        assert_eq!(s.len(), 10);
        assert!(s.used() <= charge_of(8, 40) * 10);
    }

    #[test]
    fn scan_does_not_flush_frequent_keys() {
        let mut s = Shard::new(charge_of(8, 40) * 100);
        for round in 0..3 {
            for k in 0..50 {
                if round == 0 {
                    ins(&mut s, k);
                }
                hit(&s, k);
            }
            // push them towards main
            for k in 0..50 {
                hit(&s, k);
            }
        }
        for k in 1000..1500 {
            ins(&mut s, k); // a one-pass scan
        }
        let kept = (0..50).filter(|&k| hit(&s, k)).count();
        assert!(kept >= 45, "scan flushed the hot set: {kept}/50 kept");
    }

    #[test]
    fn older_version_never_replaces_newer() {
        let mut s = Shard::new(10_000);
        let mut a = e(1, 10);
        a.version = 5;
        s.insert(a, &|_| false, &mut |_, _| {});
        let mut b = e(1, 20);
        b.version = 4;
        assert_eq!(s.insert(b, &|_| false, &mut |_, _| {}), Insert::Stale);
        assert!(!s.remove(e(1, 0).hash, 0, &1u64.to_le_bytes(), 3));
        assert!(s.remove(e(1, 0).hash, 0, &1u64.to_le_bytes(), 5));
        s.validate();
    }

    #[test]
    fn delete_churn_does_not_grow_queues() {
        let mut s = Shard::new(1 << 30);
        for k in 0..100_000u64 {
            s.insert(e(k, 1), &|_| false, &mut |_, _| {});
            s.remove(e(k, 0).hash, 0, &k.to_le_bytes(), u64::MAX);
        }
        s.validate();
        assert!(s.small.len() + s.main.len() < 200);
    }

    #[test]
    fn dead_entries_are_evicted_first() {
        let mut s = Shard::new(charge_of(8, 40) * 4);
        for k in 0..4 {
            ins(&mut s, k);
            hit(&s, k);
        }
        let mut dead = 0;
        s.insert(e(99, 40), &|x| x.version == 0, &mut |_, why| {
            if why == Evicted::Dead {
                dead += 1
            }
        });
        assert_eq!(dead, 1);
        assert!(!hit(&s, 0));
    }
}

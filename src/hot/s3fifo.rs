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
//! lazy: queues hold `(fingerprint, id)` tokens ([`Token`]) and stale
//! tokens are skipped when popped (and compacted when they outnumber live
//! ones).
//!
//! Memory per entry (see [`ENTRY_OVERHEAD`]): one 80-byte slot and its
//! 4-byte fingerprint in the shard's table ([`super::table`], 2/3 to 3/4
//! of its slots in use), keys of up to [`INLINE_KEY`] bytes inside the
//! slot, an 8-byte queue token and a ghost of 32-bit fingerprints.

use super::table::{Table, Token, VACANT};
use bytes::Bytes;
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes charged per entry on top of `key.len() + value.len()`. Where they
/// go, for a key of up to 14 bytes, kept inside the slot (measured 161–206 B
/// requested, 186–230 B with glibc's chunks): the 80-byte table slot
/// (namespace, key, value handle, expiry, epoch, version, and frequency,
/// queue and id in one word) with the table's empty slots (2/3 to 3/4 of
/// its home slots in use: 107–120 B a slot) and its 4-byte fingerprint in
/// the table's probe array (5–6 B), the queue token (8 B, up
/// to 2x while its ring grows), the ghost fingerprint a key may leave
/// behind (4 B in the ring plus 5 B of table, with slack), and the value
/// buffer's shared header (24 B; a `Bytes` the engine also hands to the
/// writer), plus glibc's 8-byte header and 16-byte rounding of the value
/// buffer and that header. A longer key costs two allocations on top: its
/// bytes (its length rounded up, 32 B at least) and the 16-byte box that
/// points to them (a 32-byte chunk, which [`charge_of`] adds).
/// tests/memory_bound.rs holds the hot tier's real heap, measured with a
/// counting allocator, to the formula within 10 %.
pub const ENTRY_OVERHEAD: usize = 200;

const MAX_FREQ: u8 = 3;

/// Keys up to this many bytes are stored inside the slot: no allocation,
/// and no pointer to chase when a lookup compares keys.
pub(crate) const INLINE_KEY: usize = 14;
// `ENTRY_OVERHEAD`'s public doc states the number.
const _: () = assert!(INLINE_KEY == 14);

/// Which FIFO an entry lives in (bit 2 of [`Entry`]'s `meta`). Whether a
/// table slot holds an entry at all is the table's fingerprint array's to
/// say ([`VACANT`]), not the entry's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small = 0,
    Main = 1,
}

/// A key: inline when short, boxed otherwise. 16 bytes: the long form is
/// a thin pointer to the boxed slice, so the short form keeps 14 bytes
/// beside its length and the enum's tag.
#[derive(Debug)]
pub(crate) enum Key {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<Box<[u8]>>),
}

impl Key {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut b = [0; INLINE_KEY];
            b[..key.len()].copy_from_slice(key);
            Key::Inline(key.len() as u8, b)
        } else {
            Key::Heap(Box::new(key.into()))
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline(n, b) => &b[..*n as usize],
            Key::Heap(b) => b,
        }
    }
}

/// The table hash of a 32-bit fingerprint: hashbrown takes the bucket from
/// the low bits and its 7-bit tag from the top ones.
#[inline]
fn table_hash(h: u32) -> u64 {
    (u64::from(h) << 32) | u64::from(h)
}

/// The 32 bits of a key's hash a shard keeps. Bits 32.. picked the shard,
/// so they are the same for every key of a shard and would add nothing.
/// Below [`VACANT`], the fingerprint of an empty table slot.
#[inline]
fn fingerprint(hash: u64) -> u32 {
    (hash as u32).min(VACANT - 1)
}

/// One cached value with everything needed to decide if it may be served.
///
/// 80 bytes. Its fingerprint is not here: the table keeps it in the probe
/// array beside the slot ([`super::table`]), and the caller passes the
/// key's hash beside an entry it inserts.
#[derive(Debug)]
pub(crate) struct Entry {
    pub ns: u32,
    pub value: Bytes,
    pub key: Key,
    /// Unix ms in engine time; `u64::MAX` = never.
    pub expires_at: u64,
    /// Namespace epoch the value was written under.
    pub epoch: u64,
    /// Per-key write version; a lower version never replaces a higher one.
    pub version: u64,
    /// The access frequency (bits 0–1, up to [`MAX_FREQ`]), the queue
    /// (bit 2, a [`Queue`]; bit 3 is spare) and the id (bits 4–31) in one
    /// word. The
    /// id, with the fingerprint, is the entry's name in the queues
    /// ([`Token`]): unique among the shard's live entries, so the token
    /// of an entry that is gone finds nothing. A read hit under the shared
    /// lock stores the word with its frequency bumped; the queue and the
    /// id only change under the exclusive lock, so that store keeps them.
    meta: AtomicU32,
}

/// Ids are the top 28 bits of [`Entry`]'s `meta`.
const ID_SHIFT: u32 = 4;
const ID_MASK: u32 = u32::MAX >> ID_SHIFT;
const FREQ_MASK: u32 = 0b11;
const QUEUE_SHIFT: u32 = 2;
const QUEUE_BIT: u32 = 1 << QUEUE_SHIFT;

impl Entry {
    pub(crate) fn new(
        ns: u32,
        key: &[u8],
        value: Bytes,
        expires_at: u64,
        epoch: u64,
        version: u64,
    ) -> Self {
        Entry {
            ns,
            key: Key::new(key),
            value,
            expires_at,
            epoch,
            version,
            meta: AtomicU32::new(Self::meta(0, Queue::Small, 0)),
        }
    }

    const fn meta(id: u32, queue: Queue, freq: u8) -> u32 {
        (id << ID_SHIFT) | ((queue as u32) << QUEUE_SHIFT) | freq as u32
    }

    /// An empty table slot.
    pub(super) fn vacant() -> Self {
        Entry {
            ns: 0,
            key: Key::Inline(0, [0; INLINE_KEY]),
            value: Bytes::new(),
            expires_at: 0,
            epoch: 0,
            version: 0,
            meta: AtomicU32::new(Self::meta(0, Queue::Small, 0)),
        }
    }

    #[inline]
    fn load(&self) -> u32 {
        self.meta.load(Ordering::Relaxed)
    }

    fn queue(&self) -> Queue {
        if self.load() & QUEUE_BIT == 0 {
            Queue::Small
        } else {
            Queue::Main
        }
    }

    fn set_queue(&mut self, q: Queue) {
        let m = self.meta.get_mut();
        *m = (*m & !QUEUE_BIT) | ((q as u32) << QUEUE_SHIFT);
    }

    pub(super) fn id(&self) -> u32 {
        self.load() >> ID_SHIFT
    }

    pub(super) fn set_id(&mut self, id: u32) {
        let m = self.meta.get_mut();
        *m = (*m & !(ID_MASK << ID_SHIFT)) | ((id & ID_MASK) << ID_SHIFT);
    }

    fn freq(&self) -> u8 {
        (self.load() & FREQ_MASK) as u8
    }

    /// Sets the frequency. Only under the exclusive lock: it stores the
    /// whole word, which a reader's [`Entry::touch`] would race.
    fn set_freq(&self, f: u8) {
        let m = self.load();
        self.meta
            .store((m & !FREQ_MASK) | u32::from(f), Ordering::Relaxed);
    }

    /// Marks an entry that was hot before a restart: it is admitted straight
    /// to the main queue, so the warm-up does not push itself out of small.
    pub(crate) fn into_main(mut self) -> Self {
        self.set_queue(Queue::Main);
        self
    }

    /// Bytes charged against the capacity.
    fn charge(&self) -> usize {
        charge_of(self.key.len(), self.value.len())
    }

    /// Counts an access (the frequency saturates at [`MAX_FREQ`]).
    #[inline]
    pub(crate) fn touch(&self) {
        let m = self.load();
        if m & FREQ_MASK < u32::from(MAX_FREQ) {
            // A lost update under contention only under-counts; harmless.
            // Readers store the queue and id bits they loaded, which only
            // an exclusive lock holder changes.
            self.meta.store(m + 1, Ordering::Relaxed);
        }
    }

    /// The table has matched the fingerprint; this checks the rest.
    #[inline]
    fn is(&self, ns: u32, key: &[u8]) -> bool {
        // The table never compares an empty slot.
        self.ns == ns && super::bytes_eq(&self.key, key)
    }
}

/// Bytes a `key.len()`/`value.len()` pair is charged against the capacity:
/// `key_len + value_len + ENTRY_OVERHEAD`, and 32 more for a key longer
/// than the 14 bytes a slot holds, for the box that points to it (a
/// 32-byte malloc chunk; without it, 40-byte keys with small values took
/// 1.16x the capacity in chunks, tests/memory_bound.rs).
pub fn charge_of(key_len: usize, value_len: usize) -> usize {
    let boxed = if key_len > INLINE_KEY {
        HEAP_KEY_BOX
    } else {
        0
    };
    key_len + value_len + ENTRY_OVERHEAD + boxed
}

/// What [`charge_of`] adds for a key kept outside the slot.
const HEAP_KEY_BOX: usize = 32;

/// Fingerprints of keys recently evicted from small, oldest first, with a
/// table of their positions for lookups: 4 B in the ring plus a 4-byte
/// table index per key (a map of 64-bit hashes to counts took 16 + 8).
#[derive(Default)]
struct Ghost {
    /// Fingerprints by position; [`Ghost::GONE`] marks one taken out by
    /// a lookup (it still counts towards the size until it leaves).
    ring: VecDeque<u32>,
    /// Position of `ring[0]`; positions wrap around `u32`.
    head: u32,
    /// Positions of the fingerprints in `ring` that are not `GONE`.
    table: HashTable<u32>,
}

impl Ghost {
    const GONE: u32 = 0;

    /// `GONE` is reserved: fingerprint 0 is stored as 1.
    fn fp(h: u32) -> u32 {
        h.max(1)
    }

    fn len(&self) -> usize {
        self.ring.len()
    }

    fn at(ring: &VecDeque<u32>, head: u32, pos: u32) -> u32 {
        ring[pos.wrapping_sub(head) as usize]
    }

    /// Drops the oldest fingerprint.
    fn pop(&mut self) {
        let Some(h) = self.ring.pop_front() else {
            return;
        };
        let pos = self.head;
        self.head = self.head.wrapping_add(1);
        if h != Self::GONE
            && let Ok(o) = self.table.find_entry(table_hash(h), |&p| p == pos)
        {
            o.remove();
        }
    }

    fn push(&mut self, h: u32) {
        let h = Self::fp(h);
        let pos = self.head.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(h);
        let (ring, head) = (&self.ring, self.head);
        self.table
            .insert_unique(table_hash(h), pos, |&p| table_hash(Self::at(ring, head, p)));
    }

    /// Takes every copy of `h` out; true when there was one.
    fn remove(&mut self, h: u32) -> bool {
        let h = Self::fp(h);
        let mut found = false;
        loop {
            let (ring, head) = (&self.ring, self.head);
            match self
                .table
                .find_entry(table_hash(h), |&p| Self::at(ring, head, p) == h)
            {
                Ok(o) => {
                    let (pos, _) = o.remove();
                    let i = pos.wrapping_sub(self.head) as usize;
                    self.ring[i] = Self::GONE;
                    found = true;
                }
                Err(_) => return found,
            }
        }
    }

    #[cfg(any(test, feature = "validate"))]
    fn validate(&self) {
        let live = self.ring.iter().filter(|&&h| h != Self::GONE).count();
        assert_eq!(live, self.table.len(), "ghost table indexes its ring");
    }
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
    table: Table,
    /// The next entry's id.
    next_id: u32,
    small: VecDeque<Token>,
    main: VecDeque<Token>,
    ghost: Ghost,
}

impl Shard {
    pub(crate) fn new(capacity: usize) -> Self {
        Shard {
            capacity,
            small_target: (capacity / 10).max(1),
            used: 0,
            small_used: 0,
            table: Table::default(),
            next_id: 0,
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: Ghost::default(),
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Makes room for `n` more entries, as many as the byte bound can hold
    /// at most (see [`Table::reserve`]).
    pub(crate) fn reserve(&mut self, n: usize) {
        let n = n.min(self.capacity / ENTRY_OVERHEAD);
        self.table.reserve(self.table.len() + n);
    }

    /// Gives back table room a reservation left unused (see [`Table::fit`]).
    pub(crate) fn fit(&mut self) {
        self.table.fit();
    }

    #[inline]
    fn find(&self, hash: u64, ns: u32, key: &[u8]) -> Option<usize> {
        self.table.find(fingerprint(hash), |e| e.is(ns, key))
    }

    /// Looks a key up and counts the access. Takes `&self`: the frequency is
    /// atomic, so the caller can hold a shared lock.
    #[inline]
    pub(crate) fn get(&self, hash: u64, ns: u32, key: &[u8]) -> Option<&Entry> {
        let e = self.peek(hash, ns, key)?;
        e.touch();
        Some(e)
    }

    /// Looks a key up without counting an access.
    #[inline]
    pub(crate) fn peek(&self, hash: u64, ns: u32, key: &[u8]) -> Option<&Entry> {
        self.table.find_ref(fingerprint(hash), |e| e.is(ns, key))
    }

    /// The version of a key's entry, without counting an access (the
    /// mirror's fills compare it).
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn version_of(&self, hash: u64, ns: u32, key: &[u8]) -> Option<u64> {
        self.peek(hash, ns, key).map(|e| e.version)
    }

    /// Inserts or replaces `entry` unless a newer version is present, then
    /// evicts until the shard fits. `is_dead` says whether an entry met at
    /// the head of a queue is expired or of an old epoch (evicted at once).
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        mut entry: Entry,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) -> Insert {
        let h = fingerprint(hash);
        let charge = entry.charge();
        if charge > self.capacity {
            // Drop any older copy so a read cannot see it.
            if let Some(i) = self.find(hash, entry.ns, &entry.key)
                && self.table.get(i).version <= entry.version
            {
                self.take_slot(i);
                self.maybe_compact();
            }
            return Insert::TooLarge;
        }
        if let Some(i) = self.find(hash, entry.ns, &entry.key) {
            let slot = self.table.get_mut(i);
            if slot.version > entry.version {
                return Insert::Stale;
            }
            let old_charge = slot.charge();
            slot.value = entry.value;
            slot.expires_at = entry.expires_at;
            slot.epoch = entry.epoch;
            slot.version = entry.version;
            let q = slot.queue();
            self.used = self.used - old_charge + charge;
            if q == Queue::Small {
                self.small_used = self.small_used - old_charge + charge;
            }
        } else {
            if self.ghost.remove(h) {
                entry.set_queue(Queue::Main);
            }
            let queue = entry.queue();
            // Ids are unique among live entries unless 2^28 inserts pass
            // while one stays; a token can then name another entry of the
            // same fingerprint, which only ages that entry early.
            entry.set_id(self.next_id);
            self.next_id = self.next_id.wrapping_add(1) & ID_MASK;
            let token = (h, entry.id());
            self.table.insert(h, entry);
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
        if self.table.get(i).version > version {
            return false;
        }
        self.take_slot(i);
        self.maybe_compact();
        true
    }

    /// Takes the entry in slot `i` out of the table and the byte counts.
    /// Its queue token goes stale and is skipped later. Entries move: slot
    /// numbers found before this call are stale after it.
    fn take_slot(&mut self, i: usize) -> Entry {
        let e = self.table.remove(i);
        let charge = e.charge();
        self.used -= charge;
        if e.queue() == Queue::Small {
            self.small_used -= charge;
        }
        e
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
            let Some(i) = self.table.find_token(token) else {
                continue;
            };
            let e = self.table.get_mut(i);
            if is_dead(e) {
                let e = self.take_slot(i);
                on_evict(&e, Evicted::Dead);
                return;
            }
            if e.freq() > 0 {
                // Seen again while in small: promote to main.
                e.set_freq(0);
                e.set_queue(Queue::Main);
                self.small_used -= e.charge();
                self.main.push_back(token);
                return;
            }
            let e = self.take_slot(i);
            self.ghost_push(token.0);
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
            let Some(i) = self.table.find_token(token) else {
                continue;
            };
            let e = self.table.get(i);
            if is_dead(e) {
                let e = self.take_slot(i);
                on_evict(&e, Evicted::Dead);
                return;
            }
            let f = e.freq();
            if f > 0 {
                e.set_freq(f - 1);
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

    fn ghost_push(&mut self, hash: u32) {
        // The ghost remembers about as many keys as the shard holds.
        let limit = self.table.len().max(16);
        while self.ghost.len() >= limit {
            self.ghost.pop();
        }
        self.ghost.push(hash);
    }

    /// Rebuilds the queues when stale tokens dominate, so a churn of
    /// inserts and deletes without eviction pressure cannot grow them.
    fn maybe_compact(&mut self) {
        let live = self.table.len();
        if self.small.len() + self.main.len() > 2 * live + 64 {
            let table = &self.table;
            let alive = |&t: &Token| table.find_token(t).is_some();
            self.small.retain(alive);
            self.main.retain(alive);
        }
    }

    /// Hottest keys first: main before small, higher frequency first.
    pub(crate) fn hottest(&self, out: &mut Vec<(u8, u32, Box<[u8]>)>) {
        for (q, rank_base) in [(&self.main, 4u8), (&self.small, 0u8)] {
            for &t in q.iter() {
                if let Some(i) = self.table.find_token(t) {
                    let e = self.table.get(i);
                    out.push((rank_base + e.freq(), e.ns, Box::from(&*e.key)));
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
        let mut ids = std::collections::HashSet::new();
        for (i, h, e) in self.table.iter() {
            used += e.charge();
            if e.queue() == Queue::Small {
                small_used += e.charge();
            }
            // A fingerprint is its own fingerprint (it is below VACANT).
            let found = self.find(u64::from(h), e.ns, &e.key);
            assert_eq!(found, Some(i), "the key finds its entry");
            assert!(ids.insert(e.id()), "ids unique among live entries");
            let token = (h, e.id());
            let (q, other) = match e.queue() {
                Queue::Small => (&self.small, &self.main),
                _ => (&self.main, &self.small),
            };
            assert_eq!(
                q.iter().filter(|&&t| t == token).count(),
                1,
                "entry queued exactly once"
            );
            assert!(!other.contains(&token), "entry in one queue only");
            assert!(e.freq() <= MAX_FREQ);
        }
        self.table.validate();
        assert_eq!(used, self.used, "byte count");
        assert_eq!(small_used, self.small_used, "small byte count");
        assert!(self.used <= self.capacity, "within capacity");
        self.ghost.validate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hk(k: u64) -> u64 {
        k.wrapping_mul(0x9E3779B97F4A7C15)
    }

    fn e(k: u64, v: usize) -> Entry {
        Entry::new(
            0,
            &k.to_le_bytes(),
            Bytes::from(vec![0u8; v]),
            u64::MAX,
            0,
            k,
        )
    }

    fn ins(s: &mut Shard, k: u64) {
        s.insert(hk(k), e(k, 40), &|_| false, &mut |_, _| {});
        s.validate();
    }

    fn hit(s: &Shard, k: u64) -> bool {
        s.get(hk(k), 0, &k.to_le_bytes()).is_some()
    }

    #[test]
    fn entry_layout() {
        // ENTRY_OVERHEAD's breakdown counts an 80-byte slot and a 16-byte key.
        assert_eq!(std::mem::size_of::<Key>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 80);
    }

    #[test]
    fn frequency_queue_and_id_share_a_word_without_clobbering() {
        let mut x = e(1, 8);
        x.set_id(ID_MASK);
        x.set_queue(Queue::Main);
        for _ in 0..5 {
            x.touch();
        }
        assert_eq!(x.freq(), MAX_FREQ, "saturates");
        assert_eq!((x.id(), x.queue()), (ID_MASK, Queue::Main));
        x.set_freq(1);
        x.set_id(7);
        assert_eq!((x.freq(), x.id(), x.queue()), (1, 7, Queue::Main));
        x.set_queue(Queue::Small);
        assert_eq!((x.freq(), x.id(), x.queue()), (1, 7, Queue::Small));
        let v = Entry::vacant();
        assert!(v.key.is_empty() && v.value.is_empty() && v.queue() == Queue::Small);
    }

    #[test]
    fn long_keys_and_ghost_round_trip() {
        let mut s = Shard::new(charge_of(40, 8) * 4);
        let key = |k: u64| format!("{k:040}").into_bytes();
        for k in 0..20 {
            let e = Entry::new(0, &key(k), Bytes::from_static(b"12345678"), u64::MAX, 0, k);
            s.insert(hk(k), e, &|_| false, &mut |_, _| {});
            s.validate();
        }
        assert!(s.get(hk(19), 0, &key(19)).is_some());
        assert!(s.get(hk(0), 0, &key(0)).is_none());
        // Key 0 left through small unread: back in, it goes to main.
        let e = Entry::new(
            0,
            &key(0),
            Bytes::from_static(b"12345678"),
            u64::MAX,
            0,
            100,
        );
        s.insert(hk(0), e, &|_| false, &mut |_, _| {});
        s.validate();
        let i = s.find(hk(0), 0, &key(0)).expect("inserted");
        assert_eq!(s.table.get(i).queue(), Queue::Main);
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
        s.insert(hk(1), a, &|_| false, &mut |_, _| {});
        let mut b = e(1, 20);
        b.version = 4;
        assert_eq!(
            s.insert(hk(1), b, &|_| false, &mut |_, _| {}),
            Insert::Stale
        );
        let h = hk(1);
        assert!(!s.remove(h, 0, &1u64.to_le_bytes(), 3));
        assert!(s.remove(h, 0, &1u64.to_le_bytes(), 5));
        s.validate();
    }

    #[test]
    fn delete_churn_does_not_grow_queues() {
        let mut s = Shard::new(1 << 30);
        for k in 0..100_000u64 {
            s.insert(hk(k), e(k, 1), &|_| false, &mut |_, _| {});
            s.remove(hk(k), 0, &k.to_le_bytes(), u64::MAX);
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
        s.insert(hk(99), e(99, 40), &|x| x.version == 0, &mut |_, why| {
            if why == Evicted::Dead {
                dead += 1
            }
        });
        assert_eq!(dead, 1);
        assert!(!hit(&s, 0));
    }
}

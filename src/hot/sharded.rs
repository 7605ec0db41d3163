//! Sharding wrapper around [`super::s3fifo::Shard`].

use super::bias::BiasedRwLock;
use super::s3fifo::{Entry, Evicted, Insert, Shard};
use bytes::Bytes;
use crossbeam_utils::CachePadded;
use std::hash::{BuildHasher, Hasher};

/// What a hot-tier hit returns.
#[derive(Debug, Clone)]
pub(crate) struct HotHit {
    pub value: Bytes,
    pub expires_at: u64,
    pub epoch: u64,
}

pub(crate) struct HotTier {
    /// Each on cache lines of its own (128 bytes on x86-64, where the
    /// prefetcher fetches lines in pairs): a read under the real lock
    /// writes the lock word, and with the 232-byte shards packed one
    /// shard's lock word shared a line with the next one's table pointers,
    /// which that shard's readers then missed on whenever a reader on
    /// another core had taken the lock.
    shards: Box<[CachePadded<BiasedRwLock<Shard>>]>,
    mask: u64,
    /// Randomly seeded per process and per cache: an attacker who picks
    /// keys cannot aim them at one bucket (hash flooding).
    hasher: foldhash::quality::RandomState,
}

impl HotTier {
    /// `shards` must be a power of two; capacity is split evenly.
    pub(crate) fn new(capacity: usize, shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        let per = capacity / shards;
        HotTier {
            shards: (0..shards)
                .map(|_| CachePadded::new(BiasedRwLock::new(Shard::new(per))))
                .collect(),
            mask: shards as u64 - 1,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    #[inline]
    pub(crate) fn hash(&self, ns: u32, key: &[u8]) -> u64 {
        // Not `hash_one((ns, key))`: the fixed-width namespace id first
        // makes the pair unambiguous without the slice's length prefix.
        let mut h = self.hasher.build_hasher();
        h.write_u32(ns);
        h.write(key);
        h.finish()
    }

    /// The index of the shard that holds keys of this hash.
    #[inline]
    pub(crate) fn shard_index(&self, hash: u64) -> usize {
        // Bits 32.. pick the shard (at most 16 of them: `shards` ≤ 65 536);
        // a shard keeps the low 32 bits as the key's fingerprint, for its
        // table and ghost, so these stay independent.
        ((hash >> 32) & self.mask) as usize
    }

    fn shard(&self, hash: u64) -> &BiasedRwLock<Shard> {
        &self.shards[self.shard_index(hash)]
    }

    /// A hit under the shard's shared lock. The caller checks expiry and
    /// epoch (it knows the time and the namespace's current epoch).
    #[inline]
    pub(crate) fn get(&self, hash: u64, ns: u32, key: &[u8]) -> Option<HotHit> {
        let shard = self.shard(hash).read();
        shard.get(hash, ns, key).map(|e| HotHit {
            value: e.value.clone(),
            expires_at: e.expires_at,
            epoch: e.epoch,
        })
    }

    /// The value of a hit that `serve(expires_at, epoch)` accepts, cloned
    /// and counted as an access under the shard's shared lock: a get's
    /// whole hot path. `None` for anything else (absent, expired, of an
    /// old epoch); the caller then takes the long way.
    #[inline]
    pub(crate) fn get_served(
        &self,
        hash: u64,
        ns: u32,
        key: &[u8],
        serve: impl FnOnce(u64, u64) -> bool,
    ) -> Option<Bytes> {
        let shard = self.shard(hash).read();
        let e = shard.peek(hash, ns, key)?;
        if !serve(e.expires_at, e.epoch) {
            return None;
        }
        e.touch();
        Some(e.value.clone())
    }

    #[cfg(any(feature = "redis", test))]
    pub(crate) fn version_of(&self, hash: u64, ns: u32, key: &[u8]) -> Option<u64> {
        self.shard(hash).read().version_of(hash, ns, key)
    }

    /// Inserts `entry`, whose key hashes to `hash`.
    pub(crate) fn insert(
        &self,
        hash: u64,
        entry: Entry,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) -> Insert {
        self.shard(hash)
            .write()
            .insert(hash, entry, is_dead, on_evict)
    }

    /// Inserts entries, each with its key's hash, of the shard of `hash`
    /// under one write lock (the warm-up fills a shard's share of a chunk
    /// at once).
    pub(crate) fn insert_batch(
        &self,
        hash: u64,
        entries: impl Iterator<Item = (u64, Entry)>,
        is_dead: &dyn Fn(&Entry) -> bool,
        on_evict: &mut dyn FnMut(&Entry, Evicted),
    ) {
        let mut shard = self.shard(hash).write();
        for (h, e) in entries {
            debug_assert_eq!(self.shard_index(h), self.shard_index(hash));
            shard.insert(h, e, is_dead, on_evict);
        }
    }

    /// Makes room for `n` more entries spread over the shards, before a
    /// bulk fill (the warm-up); [`HotTier::fit`] after it gives back what
    /// went unused.
    pub(crate) fn reserve(&self, n: usize) {
        let per = n.div_ceil(self.shards.len());
        for s in self.shards.iter() {
            s.write().reserve(per);
        }
    }

    pub(crate) fn fit(&self) {
        for s in self.shards.iter() {
            s.write().fit();
        }
    }

    pub(crate) fn remove(&self, hash: u64, ns: u32, key: &[u8], version: u64) -> bool {
        self.shard(hash).write().remove(hash, ns, key, version)
    }

    /// Bytes charged, summed over shards.
    pub(crate) fn used_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.read().used()).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Up to `limit` keys, hottest first, as `(namespace id, key)`. Keys
    /// equally hot (the shards rank by queue and frequency, nothing
    /// finer) come by namespace id, then in key order: the order of the
    /// redb table the warm-up reads them from, which it then walks instead
    /// of descending to each key.
    pub(crate) fn hottest(&self, limit: usize) -> Vec<(u32, Box<[u8]>)> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            s.read_real().hottest(&mut all);
        }
        all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| (a.1, &a.2).cmp(&(b.1, &b.2))));
        all.truncate(limit);
        all.into_iter().map(|(_, ns, k)| (ns, k)).collect()
    }

    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn validate(&self) {
        for s in self.shards.iter() {
            s.read_real().validate();
        }
    }
}

//! The caches under test behind one small trait, at default settings
//! except for a byte-weighted capacity so every cache holds the same bytes.

use bytes::Bytes;
use embercache::{Cache, NamespaceHandle};

/// Bytes one entry is charged, for every cache: embercache's own formula.
pub fn charge(key_len: usize, value_len: usize) -> u64 {
    embercache::charge_of(key_len, value_len) as u64
}

/// A concurrent byte-keyed cache.
pub trait Kv: Send + Sync {
    fn get(&self, key: &[u8]) -> Option<Bytes>;
    fn set(&self, key: &[u8], value: Bytes);
    /// Hot-tier hits so far, for caches with more than one tier.
    fn hot_hits(&self) -> Option<u64> {
        None
    }
    /// Finishes work the loads left behind (a write queue, deferred
    /// maintenance), so a timed read pass measures reads alone.
    fn settle(&self) {}
}

pub const NS: &str = "w";

impl Kv for Cache {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        Cache::get(self, NS, key).expect("embercache get")
    }
    fn set(&self, key: &[u8], value: Bytes) {
        Cache::set(self, NS, key, value).expect("embercache set")
    }
    fn hot_hits(&self) -> Option<u64> {
        Some(ember_hot_hits(self))
    }
    fn settle(&self) {
        self.flush().expect("embercache flush")
    }
}

/// A namespace handle: what a program that reads one namespace often holds
/// (`Cache::get` by name also finds the namespace on each call).
impl Kv for NamespaceHandle {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        NamespaceHandle::get(self, key).expect("embercache get")
    }
    fn set(&self, key: &[u8], value: Bytes) {
        NamespaceHandle::set(self, key, value).expect("embercache set")
    }
    fn hot_hits(&self) -> Option<u64> {
        Some(ember_hot_hits(self.cache()))
    }
    fn settle(&self) {
        self.cache().flush().expect("embercache flush")
    }
}

pub struct Moka(pub moka::sync::Cache<Vec<u8>, Bytes>);

impl Moka {
    pub fn new(capacity_bytes: u64) -> Self {
        Moka(
            moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|k: &Vec<u8>, v: &Bytes| charge(k.len(), v.len()) as u32)
                .build(),
        )
    }
}

impl Kv for Moka {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.0.get(key)
    }
    fn set(&self, key: &[u8], value: Bytes) {
        self.0.insert(key.to_vec(), value)
    }
    fn settle(&self) {
        self.0.run_pending_tasks()
    }
}

#[derive(Clone)]
pub struct ChargeW;

impl quick_cache::Weighter<Vec<u8>, Bytes> for ChargeW {
    fn weight(&self, k: &Vec<u8>, v: &Bytes) -> u64 {
        charge(k.len(), v.len())
    }
}

pub struct Quick(pub quick_cache::sync::Cache<Vec<u8>, Bytes, ChargeW>);

impl Quick {
    pub fn new(capacity_bytes: u64, est_items: usize) -> Self {
        Quick(quick_cache::sync::Cache::with_weighter(
            est_items,
            capacity_bytes,
            ChargeW,
        ))
    }
}

impl Kv for Quick {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.0.get(key)
    }
    fn set(&self, key: &[u8], value: Bytes) {
        self.0.insert(key.to_vec(), value)
    }
}

pub struct Foyer(pub foyer::Cache<Vec<u8>, Bytes>);

impl Foyer {
    pub fn new(capacity_bytes: u64) -> Self {
        Foyer(
            foyer::CacheBuilder::new(capacity_bytes as usize)
                .with_weighter(|k: &Vec<u8>, v: &Bytes| charge(k.len(), v.len()) as usize)
                .build(),
        )
    }
}

impl Kv for Foyer {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.0.get(key).map(|e| e.value().clone())
    }
    fn set(&self, key: &[u8], value: Bytes) {
        self.0.insert(key.to_vec(), value);
    }
}

/// An in-memory embercache (no disk) holding `capacity_bytes` in its hot tier.
pub fn ember(capacity_bytes: u64, shards: Option<usize>) -> Cache {
    let mut b = Cache::builder().in_memory().hot_capacity(capacity_bytes);
    if let Some(s) = shards {
        b = b.shards(s);
    }
    b.open().expect("open embercache")
}

/// [`ember`]'s benchmark namespace, as a handle.
pub fn ember_ns(capacity_bytes: u64, shards: Option<usize>) -> NamespaceHandle {
    ember(capacity_bytes, shards)
        .namespace(NS)
        .expect("embercache namespace")
}

/// Hot-tier hits so far in the benchmark namespace.
pub fn ember_hot_hits(c: &Cache) -> u64 {
    c.stats()
        .namespaces
        .iter()
        .find(|n| n.name == NS)
        .map_or(0, |n| n.hot_hits)
}

//! The loading layer's state for one cache: breakers per upstream, flights
//! in progress, per-namespace policies, key statistics and counters,
//! registered loaders, background refresh handles.
//!
//! It lives in the engine's shared state (`Shared::load`), created on first
//! use; `close()` (and a drop) waits for background refreshes and saves the
//! learned state before the final commit (`LoadState::on_close`).

use super::adaptive::{KeyTable, LoadPolicy, NsPersist, Rng};
use super::breaker::{BreakerConfig, CircuitBreaker};
use super::histogram::LatencyHistogram;
use super::loader::{LoadError, Loaded};
use super::single_flight::SingleFlight;
use crate::Cache;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// meta key prefix of a namespace's key statistics.
pub(crate) const META_NS: &str = "load/ns/";
/// meta key prefix of an upstream's breaker snapshot.
pub(crate) const META_BREAKER: &str = "load/breaker/";
/// Key statistics are saved at most this often (engine ms) on activity.
pub(crate) const SAVE_EVERY_MS: u64 = 10_000;
/// Access counters are halved this often (engine ms).
pub(crate) const DECAY_EVERY_MS: u64 = 3_600_000;

pub(crate) type FlightKey = (Arc<str>, Vec<u8>);
/// `Ok(None)`: the upstream said the key does not exist.
pub(crate) type FlightResult = Result<Option<Bytes>, LoadError>;

/// A loader registered for a namespace (refresh, refresher, preload).
pub(crate) type SharedLoader = Arc<dyn Fn(&[u8]) -> Result<Loaded, LoadError> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Registered {
    pub upstream: Arc<str>,
    pub loader: SharedLoader,
}

#[derive(Debug, Default)]
pub(crate) struct NsCounters {
    pub cache_hits: AtomicU64,
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub stale_served: AtomicU64,
    pub negative_hits: AtomicU64,
    pub negatives_stored: AtomicU64,
    pub refreshes: AtomicU64,
    pub early_refreshes: AtomicU64,
    pub rejected: AtomicU64,
    pub last_ttl_ms: AtomicU64,
}

pub(crate) struct NsState {
    pub name: Arc<str>,
    pub keys: Mutex<KeyTable>,
    pub counters: NsCounters,
    pub latency: LatencyHistogram,
    pub dirty: AtomicBool,
    pub last_save: AtomicU64,
    pub last_decay: AtomicU64,
    pub sample: AtomicU64,
}

pub(crate) struct TokenBucket {
    pub tokens: f64,
    pub last_ms: u64,
}

pub(crate) struct LoadState {
    pub flights: SingleFlight<FlightKey, FlightResult>,
    pub breakers: RwLock<HashMap<String, CircuitBreaker>>,
    pub upstream_cfg: RwLock<HashMap<String, BreakerConfig>>,
    pub policies: RwLock<HashMap<String, LoadPolicy>>,
    pub namespaces: RwLock<HashMap<String, Arc<NsState>>>,
    pub loaders: RwLock<HashMap<String, Registered>>,
    pub buckets: Mutex<HashMap<String, TokenBucket>>,
    pub rng: Rng,
    pub threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    #[cfg(feature = "async")]
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LoadState {
    fn new() -> Self {
        LoadState {
            flights: SingleFlight::default(),
            breakers: RwLock::new(HashMap::new()),
            upstream_cfg: RwLock::new(HashMap::new()),
            policies: RwLock::new(HashMap::new()),
            namespaces: RwLock::new(HashMap::new()),
            loaders: RwLock::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            rng: Rng::default(),
            threads: Mutex::new(Vec::new()),
            #[cfg(feature = "async")]
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The state of `cache`, created on first use.
    pub(crate) fn of(cache: &Cache) -> Arc<LoadState> {
        cache
            .sh()
            .load
            .get_or_init(|| Arc::new(LoadState::new()))
            .clone()
    }

    /// At close: waits for background refreshes, then queues the learned
    /// state (key statistics, breakers) so the final commit includes it.
    pub(crate) fn on_close(&self, sh: &crate::engine::Shared) {
        let hs: Vec<_> = self.threads.lock().drain(..).collect();
        for h in hs {
            let _ = h.join();
        }
        #[cfg(feature = "async")]
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let now = sh.time.now_ms();
        let put = |key: String, bytes: Vec<u8>| {
            let op = crate::store::writer::Op::LoaderMeta {
                key,
                value: Some(bytes),
                done: None,
            };
            if let Err(e) = sh.send(op) {
                tracing::warn!(error = %e, "could not save the loading state at close");
            }
        };
        let nss: Vec<Arc<NsState>> = self.namespaces.read().values().cloned().collect();
        for n in nss {
            n.last_save.store(now, Ordering::Relaxed);
            put(
                format!("{META_NS}{}", n.name),
                postcard::to_allocvec(&n.persist()).unwrap_or_default(),
            );
        }
        let bs: Vec<CircuitBreaker> = self.breakers.read().values().cloned().collect();
        for b in bs {
            put(
                format!("{META_BREAKER}{}", b.name()),
                postcard::to_allocvec(&b.snapshot()).unwrap_or_default(),
            );
        }
    }

    /// The namespace's loading state, loaded from `loader_meta` on first use.
    pub(crate) fn ns(&self, cache: &Cache, name: &str) -> Arc<NsState> {
        if let Some(n) = self.namespaces.read().get(name) {
            return n.clone();
        }
        let mut w = self.namespaces.write();
        if let Some(n) = w.get(name) {
            return n.clone();
        }
        let mut table = KeyTable::default();
        if let Some(bytes) = cache.loader_meta_get(&format!("{META_NS}{name}")) {
            match postcard::from_bytes::<NsPersist>(&bytes) {
                Ok(p) if p.format == 1 => table.keys = p.keys.into_iter().collect(),
                Ok(p) => tracing::warn!(
                    namespace = name,
                    format = p.format,
                    "unknown loader state format; starting fresh"
                ),
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "loader state does not decode; starting fresh")
                }
            }
        }
        let now = cache.now_ms();
        let n = Arc::new(NsState {
            name: name.into(),
            keys: Mutex::new(table),
            counters: NsCounters::default(),
            latency: LatencyHistogram::default(),
            dirty: AtomicBool::new(false),
            last_save: AtomicU64::new(now),
            last_decay: AtomicU64::new(now),
            sample: AtomicU64::new(0),
        });
        w.insert(name.to_string(), n.clone());
        n
    }

    pub(crate) fn policy(&self, ns: &str) -> LoadPolicy {
        self.policies.read().get(ns).cloned().unwrap_or_default()
    }

    /// The breaker of `upstream`: created on first use from its configured
    /// settings (else the defaults overridden by the environment) and the
    /// snapshot persisted before a restart.
    pub(crate) fn breaker(&self, cache: &Cache, upstream: &str) -> CircuitBreaker {
        if let Some(b) = self.breakers.read().get(upstream) {
            return b.clone();
        }
        let mut w = self.breakers.write();
        if let Some(b) = w.get(upstream) {
            return b.clone();
        }
        let cfg = match self.upstream_cfg.read().get(upstream) {
            Some(c) => c.clone(),
            None => BreakerConfig::default()
                .from_env(upstream)
                .unwrap_or_else(|e| {
                    tracing::warn!(upstream, error = %e, "ignoring breaker environment; using defaults");
                    BreakerConfig::default()
                }),
        };
        let b = CircuitBreaker::new(upstream, cfg.clone()).unwrap_or_else(|e| {
            tracing::warn!(upstream, error = %e, "invalid breaker config; using defaults");
            CircuitBreaker::new(upstream, BreakerConfig::default()).expect("defaults are valid")
        });
        if let Some(bytes) = cache.loader_meta_get(&format!("{META_BREAKER}{upstream}"))
            && let Ok(snap) = postcard::from_bytes(&bytes)
        {
            b.restore(&snap);
        }
        w.insert(upstream.to_string(), b.clone());
        b
    }

    /// Forgets finished background threads and tasks.
    pub(crate) fn reap(&self) {
        self.threads.lock().retain(|h| !h.is_finished());
        #[cfg(feature = "async")]
        self.tasks.lock().retain(|h| !h.is_finished());
    }
}

impl NsState {
    pub(crate) fn persist(&self) -> NsPersist {
        let t = self.keys.lock();
        NsPersist {
            format: 1,
            keys: t.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub(crate) fn save(&self, cache: &Cache, now: u64) -> Result<(), crate::WriteError> {
        self.dirty.store(false, Ordering::Relaxed);
        self.last_save.store(now, Ordering::Relaxed);
        let bytes = postcard::to_allocvec(&self.persist()).unwrap_or_default();
        cache.loader_meta_put(&format!("{META_NS}{}", self.name), Some(bytes))
    }

    /// Counts an access (sampled), decays and saves when due.
    pub(crate) fn access(&self, cache: &Cache, key: &[u8], policy: &LoadPolicy, now: u64) {
        let n = u64::from(policy.access_sample.max(1));
        if self
            .sample
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(n)
        {
            self.keys
                .lock()
                .record_access(key, n, policy.max_tracked_keys);
            self.dirty.store(true, Ordering::Relaxed);
        }
        self.maybe_save(cache, now);
    }

    pub(crate) fn maybe_save(&self, cache: &Cache, now: u64) {
        let last_decay = self.last_decay.load(Ordering::Relaxed);
        if now.saturating_sub(last_decay) >= DECAY_EVERY_MS
            && self
                .last_decay
                .compare_exchange(last_decay, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.keys.lock().decay();
        }
        let last = self.last_save.load(Ordering::Relaxed);
        if self.dirty.load(Ordering::Relaxed)
            && now.saturating_sub(last) >= SAVE_EVERY_MS
            && self
                .last_save
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Err(e) = self.save(cache, now)
        {
            tracing::warn!(namespace = %self.name, error = %e, "saving loader state failed");
        }
    }
}

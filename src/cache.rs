//! The public handle: [`Cache`] and its [`CacheBuilder`].

use crate::clock::{Clock, EngineTime};
use crate::config::{Durability, Limits, NamespacePolicy};
use crate::engine::Shared;
use crate::error::{Error, OpenError, ReadError, WriteError};
use crate::hot::HotTier;
use crate::namespace::Namespaces;
use crate::stats::{self, EngineCounters, NamespaceStats, Stats};
use crate::store::open;
use crate::store::outbox::OutboxItem;
use crate::store::pending::Pending;
use crate::store::writer::{Op, Writer};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a key still lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The entry never expires.
    Never,
    /// The entry expires after this long.
    Remaining(Duration),
}

/// An entry with its freshness, from [`Cache::get_entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    pub value: Bytes,
    /// Time left before expiry; `None` = never expires; zero when stale.
    pub ttl: Option<Duration>,
    /// `Some(how long ago it expired)` for an entry served stale (within
    /// the namespace's `max(stale_for, max_stale)` retention).
    pub stale_by: Option<Duration>,
}

/// Options of one write. `WriteOptions::default()` uses the namespace's
/// default TTL and the cache's durability mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteOptions {
    /// TTL of this write; `None` = the namespace default.
    pub ttl: Option<Duration>,
    /// Return only once the write is fsynced, whatever the durability mode.
    pub durable: bool,
}

impl WriteOptions {
    /// A write with this TTL.
    pub fn ttl(ttl: Duration) -> Self {
        WriteOptions {
            ttl: Some(ttl),
            durable: false,
        }
    }
    /// Makes the write wait for its fsync.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }
}

/// Configures and opens a [`Cache`]. Every setting has a default; `open()`
/// validates them all.
///
/// ```
/// use embercache::{Cache, Durability, NamespacePolicy};
/// use std::time::Duration;
/// let dir = tempfile::tempdir().unwrap();
/// let cache = Cache::builder()
///     .dir(dir.path())
///     .hot_capacity(64 << 20)
///     .durability(Durability::Sync)
///     .namespace("price", NamespacePolicy::default().ttl(Duration::from_secs(180)))
///     .open()
///     .unwrap();
/// cache.set("price", b"BTC", b"97000.5".to_vec()).unwrap();
/// assert_eq!(cache.get("price", b"BTC").unwrap().as_deref(), Some(&b"97000.5"[..]));
/// cache.close().unwrap();
/// ```
#[derive(Clone)]
pub struct CacheBuilder {
    dir: Option<PathBuf>,
    backend: Option<open::BackendFactory>,
    wal_backend: Option<open::BackendFactory>,
    hot_capacity: u64,
    warm_capacity: u64,
    durability: Durability,
    namespaces: HashMap<String, NamespacePolicy>,
    default_policy: NamespacePolicy,
    clock: Option<Arc<dyn Clock>>,
    shards: Option<usize>,
    strict: bool,
    limits: Limits,
    outbox: bool,
    #[cfg(feature = "redis")]
    redis: Option<crate::mirror::MirrorConfig>,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            dir: None,
            backend: None,
            wal_backend: None,
            hot_capacity: 64 << 20,
            warm_capacity: 1 << 30,
            durability: Durability::default(),
            namespaces: HashMap::new(),
            default_policy: NamespacePolicy::default(),
            clock: None,
            shards: None,
            strict: false,
            limits: Limits::default(),
            outbox: false,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("dir", &self.dir)
            .field("custom_backend", &self.backend.is_some())
            .field("hot_capacity", &self.hot_capacity)
            .field("warm_capacity", &self.warm_capacity)
            .field("durability", &self.durability)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

/// A storage-backend factory behind the type-erased [`open::BackendFactory`].
fn boxed<F, B>(make: F) -> open::BackendFactory
where
    F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
    B: redb::StorageBackend,
{
    Arc::new(move || make().map(|b| Box::new(b) as Box<dyn redb::StorageBackend>))
}

impl CacheBuilder {
    /// Data directory; created if missing. Without it (or with
    /// [`CacheBuilder::in_memory`]) the warm tier lives in memory: nothing
    /// touches the disk and nothing survives the process. Default: in memory.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }
    /// A custom redb storage backend instead of a file in `dir`: `make` is
    /// called at open and again whenever the writer reopens the database
    /// after an I/O error. For fault injection and unusual storage; the
    /// directory lock is then the backend's business. Default: none.
    pub fn storage_backend<F, B>(mut self, make: F) -> Self
    where
        F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
        B: redb::StorageBackend,
    {
        self.backend = Some(boxed(make));
        self
    }

    /// The write-ahead log's storage, for a cache whose database is on a
    /// [`CacheBuilder::storage_backend`] (a directory cache keeps its log
    /// in `embercache.wal` beside the database file). Called once at
    /// open. Without it such a cache has no log, and every group of
    /// writes is an fsynced database commit. With [`Limits::wal_bytes`] 0
    /// the log is only replayed at open, never written. Default: none.
    pub fn wal_backend<F, B>(mut self, make: F) -> Self
    where
        F: Fn() -> std::io::Result<B> + Send + Sync + 'static,
        B: redb::StorageBackend,
    {
        self.wal_backend = Some(boxed(make));
        self
    }

    /// No disk at all: the warm tier is an in-memory redb. Default.
    pub fn in_memory(mut self) -> Self {
        self.dir = None;
        self
    }
    /// Hot-tier bound in bytes (key + value + `ENTRY_OVERHEAD` per entry).
    /// Default: 64 MiB.
    pub fn hot_capacity(mut self, bytes: u64) -> Self {
        self.hot_capacity = bytes;
        self
    }
    /// Warm-tier bound in bytes of keys and records. Default: 1 GiB.
    pub fn warm_capacity(mut self, bytes: u64) -> Self {
        self.warm_capacity = bytes;
        self
    }
    /// Default: `Durability::Buffered { max_delay: 10 ms }`.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Declares a namespace with its policy. Undeclared namespaces get the
    /// default policy on first use.
    pub fn namespace(mut self, name: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.namespaces.insert(name.into(), policy);
        self
    }
    /// Policy of namespaces not declared. Default: `NamespacePolicy::default()`.
    pub fn default_policy(mut self, policy: NamespacePolicy) -> Self {
        self.default_policy = policy;
        self
    }
    /// Time source. Default: [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }
    /// Hot-tier shards, a power of two. Default: 4 × cores, rounded up.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }
    /// Fail `open` with `OpenError::Corrupt` instead of moving a damaged
    /// database file aside and starting empty. Default: false.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
    /// Record every set, delete and epoch bump in a durable outbox, in the
    /// same transaction as the write, for a mirror to deliver (the Redis
    /// mirror turns this on). Default: false.
    pub fn outbox(mut self, enabled: bool) -> Self {
        self.outbox = enabled;
        self
    }

    /// Mirror the cache to Redis (feature `redis`): every write goes
    /// through the durable outbox to Redis, a local miss reads through,
    /// an empty directory warms from Redis, deletes and epoch bumps reach
    /// the other instances. Turns the outbox on. See docs/MIRROR.md.
    /// Default: no mirror.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, config: crate::mirror::MirrorConfig) -> Self {
        self.redis = Some(config);
        self
    }
    /// [`CacheBuilder::redis`] with `MirrorConfig::from_env()` when one of
    /// `EMBERCACHE_REDIS_URL`, `EMBERCACHE_REDIS_CLUSTER` or
    /// `EMBERCACHE_REDIS_SENTINEL` is set; unchanged otherwise (see
    /// docs/MIRROR.md for every variable).
    #[cfg(feature = "redis")]
    pub fn redis_from_env(self) -> Self {
        match crate::mirror::MirrorConfig::from_env() {
            Some(c) => self.redis(c),
            None => self,
        }
    }

    /// Limits and write-path tuning. Default: `Limits::default()`.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn validate(&self, shards: usize) -> Result<(), OpenError> {
        let bad = |setting, reason: String| Err(OpenError::InvalidConfig { setting, reason });
        if !shards.is_power_of_two() || shards > 1 << 16 {
            return bad(
                "shards",
                format!("{shards} is not a power of two in 1..=65536"),
            );
        }
        let min_hot = shards as u64 * 4096;
        if self.hot_capacity < min_hot {
            return bad(
                "hot_capacity",
                format!(
                    "{} bytes is below {min_hot} (4 KiB per shard)",
                    self.hot_capacity
                ),
            );
        }
        if self.warm_capacity < 1 << 20 {
            return bad(
                "warm_capacity",
                format!("{} bytes is below 1 MiB", self.warm_capacity),
            );
        }
        if let Durability::Buffered { max_delay } = self.durability
            && max_delay > Duration::from_secs(60)
        {
            return bad(
                "durability",
                format!("max_delay {max_delay:?} is above 60 s"),
            );
        }
        let l = &self.limits;
        if l.max_key_len == 0 || l.max_key_len > 1 << 20 {
            return bad(
                "limits.max_key_len",
                format!("{} is not in 1..=1 MiB", l.max_key_len),
            );
        }
        if l.max_value_len == 0 || l.max_value_len > u32::MAX as usize {
            return bad(
                "limits.max_value_len",
                format!("{} is not in 1..=4 GiB", l.max_value_len),
            );
        }
        if l.queue_capacity == 0
            || l.group_max_ops == 0
            || l.group_max_bytes == 0
            || l.sweep_batch == 0
        {
            return bad(
                "limits",
                "queue_capacity, group_max_ops, group_max_bytes and sweep_batch must be positive"
                    .into(),
            );
        }
        if l.max_namespace_len == 0 {
            return bad("limits.max_namespace_len", "must be positive".into());
        }
        // Zero would run the writer's maintenance (or snapshot) in a busy
        // loop: a sweep transaction after every commit, or instead of one.
        if l.maintenance_interval.is_zero() {
            return bad(
                "limits.maintenance_interval",
                "must be positive (default 1 s)".into(),
            );
        }
        if l.snapshot_interval.is_zero() {
            return bad(
                "limits.snapshot_interval",
                "must be positive (default 30 s)".into(),
            );
        }
        for (name, p) in self
            .namespaces
            .iter()
            .map(|(n, p)| (n.as_str(), p))
            .chain([("<default>", &self.default_policy)])
        {
            if name != "<default>"
                && let Err(reason) = Namespaces::check_name(name, l.max_namespace_len)
            {
                return bad("namespace", format!("{name:?} {reason}"));
            }
            if let Some(level) = p.compression_level
                && !(1..=22).contains(&level)
            {
                return bad(
                    "compression_level",
                    format!("{level} for namespace {name} is not in 1..=22"),
                );
            }
            if let Some(n) = p.auto_dictionary
                && n < 64
            {
                return bad(
                    "auto_dictionary",
                    format!(
                        "{n} for namespace {name} is below 64: too few values to train a \
                         dictionary from (default 4096; `no_auto_dictionary()` turns it off)"
                    ),
                );
            }
            if p.default_ttl == Some(Duration::ZERO) || p.max_ttl == Some(Duration::ZERO) {
                return bad(
                    "ttl",
                    format!("a zero TTL for namespace {name} would expire everything at once"),
                );
            }
        }
        Ok(())
    }

    /// Opens the cache: validates settings, opens or creates the database
    /// (moving a damaged file aside unless `strict`), starts the writer and
    /// the warm-up. Never waits for the warm-up.
    pub fn open(self) -> Result<Cache, OpenError> {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = self.shards.unwrap_or((cores * 4).next_power_of_two());
        self.validate(shards)?;
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            r.validate()
                .map_err(|(setting, reason)| OpenError::InvalidConfig { setting, reason })?;
        }
        #[cfg(feature = "redis")]
        let outbox = self.outbox || self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let outbox = self.outbox;
        let source = match (&self.backend, &self.dir) {
            (Some(f), _) => open::Source::Backend(f.clone()),
            (None, Some(dir)) => open::Source::Dir(dir.clone()),
            (None, None) => open::Source::Memory,
        };
        let opened = open::open(&source, self.strict)?;
        let mut meta = opened.meta;
        let schemas: Vec<(String, String)> = self
            .namespaces
            .iter()
            .filter_map(|(n, p)| p.schema_version.clone().map(|v| (n.clone(), v)))
            .collect();
        let bumped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            open::apply_schema_versions(&opened.db, &mut meta, &schemas)
        }))
        .unwrap_or_else(|_| {
            Err(redb::Error::Corrupted(
                "redb panicked applying schema versions: the database file is damaged".into(),
            ))
        })
        .map_err(|e| OpenError::Storage(Arc::new(e)))?;
        for ns in &bumped {
            tracing::info!(namespace = %ns, "schema version changed; namespace epoch bumped");
        }
        let ns = Namespaces::new(
            self.namespaces.clone(),
            self.default_policy.clone(),
            self.limits.max_namespace_len,
        );
        for name in self.namespaces.keys() {
            ns.get(name).map_err(|e| OpenError::InvalidConfig {
                setting: "namespace",
                reason: e.to_string(),
            })?;
        }
        let mut purge = Vec::new();
        for (name, epoch) in &meta.epochs {
            if let Ok(n) = ns.get(name) {
                n.epoch.store(*epoch, Ordering::Release);
                purge.push((name.clone(), *epoch));
            }
        }
        let mut decoders = HashMap::new();
        for (id, (_, bytes)) in &meta.dicts {
            // A dictionary that fails to load here is retried on first use.
            if let Some(d) = crate::engine::load_decoder(bytes) {
                decoders.insert(*id, d);
            }
        }
        for (name, id) in &meta.dict_current {
            if let (Ok(n), Some((_, bytes))) = (ns.get(name), meta.dicts.get(id)) {
                let level = n.policy.compression_level.unwrap_or(3);
                *n.dict.write() = Some((
                    *id,
                    Arc::new(zstd::dict::EncoderDictionary::copy(bytes, level)),
                ));
            }
        }
        let counters = EngineCounters::default();
        let (rows, bytes) =
            crate::store::outbox::measure(&opened.db).map_err(OpenError::Storage)?;
        counters.outbox_rows.store(rows, Ordering::Relaxed);
        counters.outbox_bytes.store(bytes, Ordering::Relaxed);
        counters.records.store(meta.records, Ordering::Relaxed);
        counters.disk_bytes.store(meta.bytes, Ordering::Relaxed);
        let wal_gen = meta.wal_gen;
        // A log is opened (and replayed) when there is one even with
        // `wal_bytes` 0: it may hold acknowledged writes of an earlier run.
        let cap = self.limits.wal_bytes;
        let wal = match (&source, &self.wal_backend) {
            (open::Source::Dir(dir), _) => open::open_wal(dir, cap)?,
            (open::Source::Backend(_), Some(make)) => {
                let io = |source| OpenError::Io {
                    dir: PathBuf::new(),
                    source,
                };
                let file = make().map_err(io)?;
                Some(crate::store::wal::Wal::open(file, cap).map_err(io)?)
            }
            _ => None,
        };
        let (tx, rx) = crossbeam_channel::bounded(self.limits.queue_capacity);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            trainers: Default::default(),
            db: RwLock::new(Some(Arc::new(opened.db))),
            source,
            hot: HotTier::new(self.hot_capacity as usize, shards),
            hot_capacity: self.hot_capacity as usize,
            pending: Pending::new(shards),
            ns,
            time: match &self.clock {
                Some(clock) => EngineTime::new(clock.clone(), meta.engine_time),
                None => EngineTime::system(meta.engine_time),
            },
            limits: self.limits.clone(),
            durability: self.durability,
            next_version: AtomicU64::new(meta.version_hw.max(1)),
            commit_seq: AtomicU64::new(0),
            delete_marks: (0..crate::engine::DELETE_STRIPES)
                .map(|_| AtomicU64::new(0))
                .collect(),
            readers: Default::default(),
            counters,
            commit_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
            ),
            last_error: Mutex::new(None),
            moved_aside: opened.moved_aside,
            file: opened.file,
            damage_found: AtomicBool::new(false),
            warm_capacity: self.warm_capacity,
            outbox,
            max_retention_ms: self
                .namespaces
                .values()
                .chain([&self.default_policy])
                .map(NamespacePolicy::retention_ms)
                .max()
                .unwrap_or(0),
            decoders: RwLock::new(decoders),
            next_dict_id: AtomicU32::new(meta.dicts.keys().max().map_or(1, |m| m + 1)),
            tx,
            closed: AtomicBool::new(false),
            close_gate: RwLock::new(()),
            load: Default::default(),
            read_miss: Default::default(),
        });
        let mut writer = Writer::new(shared.clone(), rx, purge, wal, wal_gen, self.strict);
        // Writes acknowledged before a crash that only the log holds.
        writer.recover(wal_gen).map_err(OpenError::Storage)?;
        let spawn_err = |source| OpenError::Io {
            dir: self.dir.clone().unwrap_or_default(),
            source,
        };
        let w = std::thread::Builder::new()
            .name("embercache-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_err)?;
        if shared.outbox {
            // The bumps made at open were written straight to meta; queue
            // them again so they reach the mirror's outbox (the writer
            // never lowers a stored epoch, so this only adds the rows).
            for name in &bumped {
                if let Ok(n) = shared.ns.get(name) {
                    let epoch = n.epoch();
                    let _ = shared.send(Op::Epoch {
                        ns: n,
                        epoch,
                        done: None,
                    });
                }
            }
        }
        let s2 = shared.clone();
        let warm = std::thread::Builder::new()
            .name("embercache-warmup".into())
            .spawn(move || {
                // redb may panic on a damaged page while warming: the file
                // is marked damaged, and the cache goes on without the rest.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s2.warm_up()));
                if let Err(p) = r {
                    s2.counters.warmup_done.store(1, Ordering::Release);
                    s2.damaged_or_resume("the warm-up", p);
                }
            })
            .map_err(spawn_err)?;
        #[cfg(feature = "redis")]
        let mirror = match self.redis.clone() {
            Some(cfg) => {
                Some(crate::mirror::Mirror::start(shared.clone(), cfg).map_err(spawn_err)?)
            }
            None => None,
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                shared,
                threads: Mutex::new(vec![w, warm]),
                close_result: Mutex::new(None),
                #[cfg(feature = "redis")]
                mirror,
            }),
        })
    }
}

struct Inner {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The outcome of the one close (see `Inner::close`).
    close_result: Mutex<Option<Result<(), WriteError>>>,
    /// The Redis mirror, stopped before the writer on close.
    #[cfg(feature = "redis")]
    mirror: Option<crate::mirror::Mirror>,
}

impl Inner {
    /// Closes once; later and concurrent callers wait for that close and
    /// get its result (an early `Ok` would let a caller exit before the
    /// data is durable).
    fn close(&self) -> Result<(), WriteError> {
        let mut result = self.close_result.lock();
        if let Some(r) = result.as_ref() {
            return r.clone();
        }
        let r = self.close_once();
        *result = Some(r.clone());
        r
    }

    fn close_once(&self) -> Result<(), WriteError> {
        // The mirror stops first: its last delivery needs the writer for
        // its acks.
        #[cfg(feature = "redis")]
        if let Some(m) = &self.mirror {
            m.stop();
        }
        // The loading layer's background refreshes finish and its learned
        // state is queued while writes are still accepted.
        if let Some(load) = self.shared.load.get() {
            load.on_close(&self.shared);
        }
        {
            // No enqueue is in flight while `closed` flips (see close_gate):
            // every accepted write is ahead of the Close op below.
            let _gate = self.shared.close_gate.write();
            self.shared.closed.store(true, Ordering::Release);
        }
        let (tx, rx) = crate::store::reply::pair();
        // A blocking send: the queue drains, or the writer gives up on a
        // failing disk and exits, which disconnects the channel.
        let r = match self.shared.tx.send(Op::Close(tx)) {
            Ok(()) => rx.recv(),
            Err(_) => Err(WriteError::Closed),
        };
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        // A dictionary being trained finds the writer gone and ends; its
        // read of the samples must not keep the file open. (`closed` is
        // set: no thread starts after this.)
        let trainer = self.shared.trainers.lock().thread.take();
        if let Some(t) = trainer {
            let _ = t.join();
        }
        // Release the file (and its lock) now, not when the last clone goes:
        // the directory can be opened again as soon as close returns.
        let db = self.shared.db.write().take();
        // A kept reader of a closed database would fail or answer from
        // pages it still holds (see `store::readers`).
        self.shared.readers.drop_all();
        drop(db);
        r
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping without close() still commits every accepted write.
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing embercache on drop failed");
        }
    }
}

/// A persistent embedded cache. Cheap to clone: clones share one engine.
/// See the crate docs for the tiers and the guarantees.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("file", &self.inner.shared.file)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A builder with every default.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// The Redis mirror, if one runs (for src/mirror).
    #[cfg(feature = "redis")]
    pub(crate) fn mirror_handle(&self) -> Option<&crate::mirror::Mirror> {
        self.inner.mirror.as_ref()
    }

    /// The shared engine state (for src/admin.rs).
    pub(crate) fn sh(&self) -> &Shared {
        &self.inner.shared
    }

    /// The value of `key` in `ns`, if present, live and of the current epoch.
    pub fn get(&self, ns: &str, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        self.sh().get_value(ns, key)
    }

    /// A handle on namespace `ns` (created with its policy on first use,
    /// as a write would): the same calls without the name, and a `get`
    /// that does not look the namespace up each time. Fails on an invalid
    /// name.
    pub fn namespace(&self, ns: &str) -> Result<crate::NamespaceHandle, WriteError> {
        let resolved = self.sh().ns.get(ns)?;
        Ok(crate::NamespaceHandle::new(self.clone(), resolved))
    }

    /// Whether `key` is present and live.
    pub fn contains(&self, ns: &str, key: &[u8]) -> Result<bool, ReadError> {
        Ok(self.sh().get(ns, key, false)?.is_some())
    }

    /// How long `key` still lives; `None` when absent.
    pub fn ttl(&self, ns: &str, key: &[u8]) -> Result<Option<Ttl>, ReadError> {
        let now = self.sh().time.now_ms();
        Ok(self.sh().get(ns, key, false)?.map(|f| match f.expires_at {
            u64::MAX => Ttl::Never,
            t => Ttl::Remaining(Duration::from_millis(t.saturating_sub(now))),
        }))
    }

    /// The entry of `key` with its remaining TTL, including an entry that
    /// expired less than the namespace's retention window ago
    /// (`NamespacePolicy::stale_for` / `max_stale`), marked stale. `get`
    /// never returns stale entries; loaders use this one.
    pub fn get_entry(&self, ns: &str, key: &[u8]) -> Result<Option<EntryInfo>, ReadError> {
        let now = self.sh().time.now_ms();
        Ok(self.sh().get(ns, key, true)?.map(|f| {
            let (ttl, stale_by) = match f.expires_at {
                u64::MAX => (None, None),
                t if t > now => (Some(Duration::from_millis(t - now)), None),
                t => (Some(Duration::ZERO), Some(Duration::from_millis(now - t))),
            };
            EntryInfo {
                value: f.value,
                ttl,
                stale_by,
            }
        }))
    }

    /// Engine time in unix milliseconds: the injected clock, never going
    /// backwards (see `Clock`). Loaders compute their deadlines with it.
    pub fn now_ms(&self) -> u64 {
        self.sh().time.now_ms()
    }

    /// Reads a loader-state entry (learned TTLs, breaker state, counters)
    /// as of the last commit. For the loading layer.
    #[doc(hidden)]
    pub fn loader_meta_get(&self, key: &str) -> Option<Vec<u8>> {
        self.sh().loader_meta_get(key)
    }

    /// Sets (`Some`) or removes (`None`) a loader-state entry; durable with
    /// the next commit (or `flush()`). For the loading layer.
    #[doc(hidden)]
    pub fn loader_meta_put(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), WriteError> {
        self.sh().send(Op::LoaderMeta {
            key: key.to_string(),
            value,
            done: None,
        })
    }

    /// Up to `limit` mirror writes waiting in the outbox, oldest first.
    /// For the mirror.
    #[doc(hidden)]
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<OutboxItem>, ReadError> {
        let db = self.sh().db().map_err(ReadError::Storage)?;
        crate::store::outbox::peek(&db, limit).map_err(ReadError::Storage)
    }

    /// Removes delivered mirror writes from the outbox (a row replaced by a
    /// newer write of its key since `outbox_peek` stays). Returns once the
    /// removal is committed. For the mirror.
    #[doc(hidden)]
    pub fn outbox_ack(&self, items: &[OutboxItem]) -> Result<(), WriteError> {
        let items = items
            .iter()
            .map(|i| (i.namespace.clone(), i.key.clone(), i.version))
            .collect();
        self.sh().request(|done| Op::OutboxAck {
            items,
            done: Some(done),
        })
    }

    /// Stores `value` with the namespace's default TTL.
    pub fn set(&self, ns: &str, key: &[u8], value: impl Into<Bytes>) -> Result<(), WriteError> {
        self.sh()
            .set(ns, key, value.into(), None, self.sh().waits(false))
    }

    /// Stores `value` expiring after `ttl` (capped by the namespace's max TTL).
    pub fn set_with_ttl(
        &self,
        ns: &str,
        key: &[u8],
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), WriteError> {
        self.sh()
            .set(ns, key, value.into(), Some(ttl), self.sh().waits(false))
    }

    /// Stores `value` with explicit options (TTL, per-call durability).
    pub fn set_with(
        &self,
        ns: &str,
        key: &[u8],
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> Result<(), WriteError> {
        self.sh().set(
            ns,
            key,
            value.into(),
            opts.ttl,
            self.sh().waits(opts.durable),
        )
    }

    /// Removes `key`. Removing an absent key is not an error.
    pub fn delete(&self, ns: &str, key: &[u8]) -> Result<(), WriteError> {
        self.sh().delete(ns, key, self.sh().waits(false))
    }

    /// Removes `key` and waits until the removal is fsynced.
    pub fn delete_durable(&self, ns: &str, key: &[u8]) -> Result<(), WriteError> {
        self.sh().delete(ns, key, true)
    }

    /// Looks up many keys at once; the results are in the order of `keys`.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        ns: &str,
        keys: &[K],
    ) -> Result<Vec<Option<Bytes>>, ReadError> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        Ok(self
            .sh()
            .get_many(ns, &keys)?
            .into_iter()
            .map(|f| f.map(|f| f.value))
            .collect())
    }

    /// Stores many entries. With `opts.durable` (or `Sync` mode) returns
    /// once all are fsynced. Stops at the first invalid entry; the ones
    /// before it are stored.
    pub fn set_many<K: AsRef<[u8]>, V: Into<Bytes>>(
        &self,
        ns: &str,
        items: impl IntoIterator<Item = (K, V)>,
        opts: WriteOptions,
    ) -> Result<(), WriteError> {
        // One commit wait for the whole batch, not one per entry.
        for (k, v) in items {
            self.sh().set(ns, k.as_ref(), v.into(), opts.ttl, false)?;
        }
        if self.sh().waits(opts.durable) {
            self.flush()?;
        }
        Ok(())
    }

    /// Removes many keys; see [`Cache::set_many`] for durability.
    pub fn delete_many<K: AsRef<[u8]>>(
        &self,
        ns: &str,
        keys: &[K],
        durable: bool,
    ) -> Result<(), WriteError> {
        for k in keys {
            self.sh().delete(ns, k.as_ref(), false)?;
        }
        if self.sh().waits(durable) {
            self.flush()?;
        }
        Ok(())
    }

    /// Live entries of `ns` whose key starts with `prefix`, in key order.
    /// Materializes the result; corrupt records are skipped and counted.
    pub fn scan(&self, ns: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Bytes)>, ReadError> {
        Ok(self
            .sh()
            .scan(ns, prefix)?
            .into_iter()
            .map(|(k, f)| (k, f.value))
            .collect())
    }

    /// Hides every entry of `ns` at once by bumping its epoch (O(1)); the
    /// old entries are purged in the background. Returns the new epoch. In
    /// `Sync` mode returns once the bump is fsynced.
    pub fn invalidate_namespace(&self, ns: &str) -> Result<u64, WriteError> {
        self.sh().invalidate_namespace(ns, false)
    }

    /// Like [`Cache::invalidate_namespace`], returning once the bump is
    /// fsynced in any durability mode.
    pub fn invalidate_namespace_durable(&self, ns: &str) -> Result<u64, WriteError> {
        self.sh().invalidate_namespace(ns, true)
    }

    /// Returns when every write accepted so far is fsynced and committed to
    /// the database: stats and `outbox_peek` then count all of
    /// them (reads and scans see a write as soon as its call returns;
    /// [`Cache::train_dictionary`] flushes by itself).
    pub fn flush(&self) -> Result<(), WriteError> {
        self.sh().request(Op::Flush)
    }

    /// Runs the maintenance pass now (expiry sweep, disk bound, purge of
    /// old epochs) and returns when it is done. It also runs on its own
    /// every `Limits::maintenance_interval`.
    pub fn run_maintenance(&self) -> Result<(), WriteError> {
        self.sh().request(Op::Maintain)
    }

    /// Flushes, writes the hot-set snapshot, stops and joins the background
    /// threads. Other clones see `Closed` errors afterwards.
    pub fn close(self) -> Result<(), WriteError> {
        self.inner.close()
    }

    /// Trains a zstd dictionary from up to 4 MiB of the namespace's current
    /// values; later writes use it. Records keep naming the dictionary they
    /// were written with, so old ones stay readable. Returns its id. It
    /// flushes first: the samples include every earlier write. A namespace
    /// also trains its first one on its own
    /// ([`NamespacePolicy::auto_dictionary`](crate::NamespacePolicy::auto_dictionary)).
    /// Refused with the outbox on (a Redis mirror): records go to Redis as
    /// stored, and other hosts could not read them; such a cache writes
    /// every record without a dictionary.
    pub fn train_dictionary(&self, ns: &str) -> Result<u32, Error> {
        self.sh().train_dictionary(ns, false)
    }

    // ----- typed layer ----------------------------------------------------

    /// Reads and deserializes (postcard) a value stored with [`Cache::set_as`].
    pub fn get_as<T: DeserializeOwned>(&self, ns: &str, key: &[u8]) -> Result<Option<T>, Error> {
        match self.get(ns, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(postcard::from_bytes(&b)?)),
        }
    }

    /// Serializes `value` with postcard and stores it.
    pub fn set_as<T: Serialize + ?Sized>(
        &self,
        ns: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(value)?;
        Ok(self.set(ns, key, bytes)?)
    }

    /// Like [`Cache::set_as`] with options.
    pub fn set_as_with<T: Serialize + ?Sized>(
        &self,
        ns: &str,
        key: &[u8],
        value: &T,
        opts: WriteOptions,
    ) -> Result<(), Error> {
        let bytes = postcard::to_allocvec(value)?;
        Ok(self.set_with(ns, key, bytes, opts)?)
    }

    // ----- observability --------------------------------------------------

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let sh = self.sh();
        let c = &sh.counters;
        let commits = stats::get(&c.commits);
        let namespaces = sh
            .ns
            .all()
            .into_iter()
            .map(|n| {
                let k = &n.counters;
                NamespaceStats {
                    name: n.name.to_string(),
                    epoch: n.epoch(),
                    hot_hits: stats::get(&k.hot_hits),
                    warm_hits: stats::get(&k.warm_hits),
                    misses: stats::get(&k.misses),
                    sets: stats::get(&k.sets),
                    deletes: stats::get(&k.deletes),
                    hot_evictions: stats::get(&k.hot_evictions),
                    warm_evictions: stats::get(&k.warm_evictions),
                    expirations: stats::get(&k.expirations),
                    invalidations: stats::get(&k.invalidations),
                    raw_bytes_written: stats::get(&k.raw_bytes),
                    stored_bytes_written: stats::get(&k.stored_bytes),
                    // The one new writes use: none with the outbox.
                    dictionary: match sh.outbox {
                        true => None,
                        false => n.dict.read().as_ref().map(|(id, _)| *id),
                    },
                }
            })
            .collect();
        Stats {
            namespaces,
            hot_bytes: sh.hot.used_bytes() as u64,
            hot_capacity: sh.hot_capacity as u64,
            hot_entries: sh.hot.len() as u64,
            disk_records: stats::get(&c.records),
            disk_bytes: stats::get(&c.disk_bytes),
            disk_capacity: sh.warm_capacity,
            file_bytes: sh
                .file
                .as_ref()
                .and_then(|f| std::fs::metadata(f).ok())
                .map_or(0, |m| m.len()),
            queue_depth: sh.tx.len() as u64,
            commits,
            committed_ops: stats::get(&c.committed_ops),
            commit_latency_avg: Duration::from_micros(
                stats::get(&c.commit_micros_total)
                    .checked_div(commits)
                    .unwrap_or(0),
            ),
            commit_latency_max: Duration::from_micros(stats::get(&c.commit_micros_max)),
            write_errors: stats::get(&c.write_errors),
            last_write_error: sh.last_error.lock().clone(),
            maintenance_errors: stats::get(&c.maintenance_errors),
            corrupt_reads: stats::get(&c.corrupt_reads),
            moved_aside: sh.moved_aside.clone(),
            outbox_rows: stats::get(&c.outbox_rows),
            outbox_bytes: stats::get(&c.outbox_bytes),
            outbox_coalesced: stats::get(&c.outbox_coalesced),
            warmup_loaded: stats::get(&c.warmup_loaded),
            warmup_total: stats::get(&c.warmup_total),
            warmup_done: stats::get(&c.warmup_done) == 1,
            log_replayed: stats::get(&c.log_replayed),
        }
    }

    /// Every metric in the Prometheus text exposition format.
    /// Includes the loading layer's metrics once it is in use and the
    /// Redis mirror's when one runs; every circuit breaker is one family.
    pub fn metrics_text(&self) -> String {
        let mut out = crate::metrics::render(&self.stats(), &self.sh().commit_latency);
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out.truncate(body.len());
        }
        let mut breakers = Vec::new();
        if self.sh().load.get().is_some() {
            out.push_str(&self.load_metrics_body());
            breakers.extend(self.load_breakers());
        }
        #[cfg(feature = "redis")]
        {
            out.push_str(&self.mirror_metrics_body());
            breakers.extend(self.mirror_breaker());
        }
        if !breakers.is_empty() {
            out.push_str(&crate::load::breaker_metrics_text(&breakers));
        }
        out.push_str("# EOF\n");
        out
    }

    /// The database file, or `None` in memory-only mode.
    pub fn file(&self) -> Option<&Path> {
        self.sh().file.as_deref()
    }

    /// Checks the hot tier's invariants; panics on a violation.
    #[cfg(any(test, feature = "validate"))]
    pub fn validate(&self) {
        self.sh().validate();
    }
}

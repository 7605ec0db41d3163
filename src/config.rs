//! Builder settings: durability, namespace policies, limits.

use std::time::Duration;

/// When a write becomes durable. See docs/DURABILITY.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `set` returns once the write is in the hot tier and the write queue.
    /// The writer commits (with fsync) at least every `max_delay`; a crash
    /// loses at most the writes of the last window. Default, 10 ms.
    Buffered { max_delay: Duration },
    /// `set` returns once the write is fsynced: in the write-ahead log
    /// (its group's record), or, with the log off or failing, in the redb
    /// commit that contains it. Concurrent writers share one fsync (group
    /// commit). A logged group is committed to redb right after its writes
    /// return, so [`Stats`](crate::Stats) may count them a moment later;
    /// [`Cache::flush`](crate::Cache::flush) waits for that commit.
    Sync,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Buffered {
            max_delay: Duration::from_millis(10),
        }
    }
}

/// Per-namespace policy. Build with the chained setters:
///
/// ```
/// use embercache::NamespacePolicy;
/// use std::time::Duration;
/// let prices = NamespacePolicy::default()
///     .ttl(Duration::from_secs(180))
///     .max_ttl(Duration::from_secs(600))
///     .compression_level(3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespacePolicy {
    /// TTL applied when a write gives none. Default: none (no expiry).
    pub default_ttl: Option<Duration>,
    /// Any TTL is capped to this, including "no expiry". Default: none.
    pub max_ttl: Option<Duration>,
    /// zstd level for values at or above `Limits::compression_threshold`;
    /// `None` disables compression. Default: `Some(3)`.
    pub compression_level: Option<i32>,
    /// Whether values of this namespace enter the hot tier. Default: true.
    pub hot_admission: bool,
    /// Stale-while-revalidate window: for this long after expiry, a loader
    /// serves the old value at once and refreshes it in the background.
    /// Default: none.
    pub stale_for: Option<Duration>,
    /// Stale-if-error window: for this long after expiry, a loader whose
    /// upstream fails serves the old value, marked stale. Default: none.
    ///
    /// Expired entries are kept (hidden from `get`, visible to
    /// `Cache::get_entry`) until `expires_at + max(stale_for, max_stale)`.
    pub max_stale: Option<Duration>,
    /// How long a loader's "does not exist" answer is cached. Default: none
    /// (not cached).
    pub negative_ttl: Option<Duration>,
    /// A version of the code or schema that produced this namespace's
    /// values (a hash, say). Opening with a different version than the last
    /// open bumps the namespace epoch: old values are never served again.
    /// Default: none.
    pub schema_version: Option<String>,
    /// Train the namespace's first zstd dictionary on its own, in a
    /// background thread, once this many values at or above
    /// `Limits::compression_threshold` were written without one (as
    /// [`Cache::train_dictionary`](crate::Cache::train_dictionary) does,
    /// but from up to 1 MiB of the stored values and without its search
    /// for the best segment size: it runs while the writers do, on their
    /// CPU, and takes 10–28× less time, for a ratio within 0.03 on the
    /// bench's JSON values; at least 64). Small JSON
    /// values then compress about 2× better and faster (docs/BENCHMARKS.md
    /// W5, W9). Once per namespace and process: a failed training (too few
    /// distinct values, say) is logged and tried again at the next open.
    /// One namespace trains at a time; training holds ~5 MiB while it runs,
    /// and the dictionary ~0.3 MiB afterwards. `None` (or compression off)
    /// never trains on its own, nor does a cache with the outbox (a Redis
    /// mirror), which writes without dictionaries. Default: `Some(4096)`.
    pub auto_dictionary: Option<u32>,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy {
            default_ttl: None,
            max_ttl: None,
            compression_level: Some(3),
            hot_admission: true,
            stale_for: None,
            max_stale: None,
            negative_ttl: None,
            schema_version: None,
            auto_dictionary: Some(4096),
        }
    }
}

impl NamespacePolicy {
    /// Default TTL for writes that give none.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }
    /// Upper bound for every TTL in this namespace.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = Some(ttl);
        self
    }
    /// zstd level (1..=22); see [`NamespacePolicy::compression_level`].
    pub fn compression_level(mut self, level: i32) -> Self {
        self.compression_level = Some(level);
        self
    }
    /// Train the first dictionary after `writes` writes (at least 64); see
    /// [`NamespacePolicy::auto_dictionary`].
    pub fn auto_dictionary(mut self, writes: u32) -> Self {
        self.auto_dictionary = Some(writes);
        self
    }
    /// Never train a dictionary on its own.
    pub fn no_auto_dictionary(mut self) -> Self {
        self.auto_dictionary = None;
        self
    }
    /// Store values raw.
    pub fn no_compression(mut self) -> Self {
        self.compression_level = None;
        self
    }
    /// Keep values of this namespace out of (false) or in (true) the hot tier.
    pub fn hot_admission(mut self, admit: bool) -> Self {
        self.hot_admission = admit;
        self
    }
    /// Stale-while-revalidate window; see [`NamespacePolicy::stale_for`].
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }
    /// Stale-if-error window; see [`NamespacePolicy::max_stale`].
    pub fn max_stale(mut self, window: Duration) -> Self {
        self.max_stale = Some(window);
        self
    }
    /// TTL of cached "does not exist" answers.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }
    /// Code/schema version; a change bumps the epoch at open.
    pub fn schema_version(mut self, version: impl Into<String>) -> Self {
        self.schema_version = Some(version.into());
        self
    }

    /// How long expired entries are kept for stale reads, in ms.
    pub(crate) fn retention_ms(&self) -> u64 {
        let ms =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        ms(self.stale_for).max(ms(self.max_stale))
    }
}

/// Hard limits and tuning of the write path. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest key in bytes. Default: 4096.
    pub max_key_len: usize,
    /// Longest value in bytes (before compression). Also bounds every
    /// decompression. Default: 16 MiB.
    pub max_value_len: usize,
    /// Longest namespace name in bytes. Default: 128.
    pub max_namespace_len: usize,
    /// Values shorter than this are stored uncompressed. Default: 64.
    /// (Longer values are stored uncompressed too when zstd would not
    /// shrink them by at least a tenth.)
    pub compression_threshold: usize,
    /// Writes waiting for the writer thread. Default: 65 536.
    pub queue_capacity: usize,
    /// How long a write waits for room in a full queue before
    /// `WriteError::QueueFull`. Default: 5 s.
    pub queue_wait: Duration,
    /// Most writes in one commit. Default: 8192.
    pub group_max_ops: usize,
    /// Most record bytes in one commit. Default: 32 MiB.
    pub group_max_bytes: usize,
    /// How often the writer sweeps expired entries and checks the disk
    /// bound. Default: 1 s; must not be zero.
    pub maintenance_interval: Duration,
    /// Expired entries deleted per sweep transaction. Default: 4096.
    pub sweep_batch: usize,
    /// How often the hot-set snapshot is written (also at close).
    /// Default: 30 s; must not be zero.
    pub snapshot_interval: Duration,
    /// Largest size of the write-ahead log (`embercache.wal`, beside the
    /// database file). A group of writes is made durable by appending it
    /// to the log and fsyncing that, then applied to the database without
    /// fsync; a durable database commit (every maintenance pass, or when
    /// the log is full) takes over what the log held, and the log starts
    /// over. The file grows in 1 MiB steps up to this size (it never
    /// shrinks: a lower value takes effect only for a new file). 0 turns
    /// the log off: every group is then a durable database commit, and a
    /// log left by an earlier run is still replayed at open. A cache
    /// opened on a directory keeps it in `embercache.wal`; one on a
    /// storage backend has a log only with `CacheBuilder::wal_backend`.
    /// Default: 16 MiB.
    pub wal_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 4096,
            max_value_len: 16 << 20,
            max_namespace_len: 128,
            compression_threshold: 64,
            queue_capacity: 65_536,
            queue_wait: Duration::from_secs(5),
            group_max_ops: 8192,
            group_max_bytes: 32 << 20,
            maintenance_interval: Duration::from_secs(1),
            sweep_batch: 4096,
            snapshot_interval: Duration::from_secs(30),
            wal_bytes: 16 << 20,
        }
    }
}

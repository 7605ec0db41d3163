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
    /// `set` returns after the commit that contains it is fsynced.
    /// Concurrent writers share one commit (group commit).
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
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy {
            default_ttl: None,
            max_ttl: None,
            compression_level: Some(3),
            hot_admission: true,
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
    /// bound. Default: 1 s.
    pub maintenance_interval: Duration,
    /// Expired entries deleted per sweep transaction. Default: 4096.
    pub sweep_batch: usize,
    /// How often the hot-set snapshot is written (also at close).
    /// Default: 30 s.
    pub snapshot_interval: Duration,
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
        }
    }
}

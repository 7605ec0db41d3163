//! # embercache
//!
//! A persistent embedded cache for one host: a sharded in-memory **hot
//! tier** (S3-FIFO, bounded in bytes, read hits under a shared,
//! reader-biased lock) over a **warm tier** in redb (zstd-compressed,
//! checksummed records, a TTL index, group-committed by one background
//! writer). It survives restarts,
//! `kill -9` and power loss within its durability mode, and warms the hot
//! tier from what was hot before the restart.
//!
//! ```
//! use embercache::{Cache, NamespacePolicy};
//! use std::time::Duration;
//!
//! let cache = Cache::builder()
//!     .in_memory()
//!     .namespace("price", NamespacePolicy::default().ttl(Duration::from_secs(180)))
//!     .open()?;
//! cache.set("price", b"ETH", b"3120.25".to_vec())?;
//! assert_eq!(cache.get("price", b"ETH")?.as_deref(), Some(&b"3120.25"[..]));
//! // A handle on a namespace read often: its `get` skips the name lookup.
//! let prices = cache.namespace("price")?;
//! assert!(prices.get(b"ETH")?.is_some());
//! cache.set_as("position", b"alice", &(42u32, "YES".to_string()))?;
//! let p: Option<(u32, String)> = cache.get_as("position", b"alice")?;
//! assert_eq!(p, Some((42, "YES".into())));
//! cache.invalidate_namespace("price")?; // O(1): every price is gone
//! assert_eq!(cache.get("price", b"ETH")?, None);
//! cache.close()?;
//! # Ok::<(), embercache::Error>(())
//! ```
//!
//! ## Memory
//!
//! The hot tier charges each entry `key.len() + value.len() + ENTRY_OVERHEAD`
//! bytes ([`ENTRY_OVERHEAD`] = 200: the 80-byte table slot and its 4-byte
//! fingerprint with the table's empty slots, queue token, ghost
//! fingerprint, value-buffer header, allocator headers and rounding;
//! measured by tests/memory_bound.rs and the W4 benchmark; keys over 14
//! bytes also cost two allocations of their own, and are charged 32 bytes
//! more, see [`charge_of`]) and never holds more
//! than its capacity. Writes not yet committed are held once more until their
//! commit (bounded by `Limits::queue_capacity`).
//!
//! ## Durability
//!
//! See [`Durability`] and docs/DURABILITY.md: `Buffered` (default) loses at
//! most the last `max_delay` of writes on a crash; `Sync` and durable
//! writes return after their fsync; `flush()` makes everything before it
//! durable; dropping the cache commits everything accepted.

/// A fault-injection point, compiled only with the `failpoints` feature.
/// `$e` maps the configured argument to the value the enclosing function
/// returns when the point is set to `return`; any point can also `panic`,
/// `sleep` or call a callback. A point without `$e` has no `return` (the
/// fail crate panics if one is configured).
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
    ($name:expr, $e:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $e);
    };
}

/// Every fault-injection point, for tests that check they were all hit.
#[cfg(feature = "failpoints")]
pub const FAILPOINTS: &[&str] = &[
    "writer::commit",
    "writer::defer",
    "writer::durable_commit",
    "writer::sweep",
    "disk::write",
    "disk::fsync",
    "zstd::compress",
    "zstd::decompress",
    "dict::load",
    #[cfg(feature = "redis")]
    "mirror::drain",
    #[cfg(feature = "redis")]
    "mirror::fill",
    #[cfg(feature = "redis")]
    "mirror::subscribe",
    #[cfg(feature = "redis")]
    "mirror::queue_full",
];

mod admin;
mod cache;
mod clock;
mod config;
mod engine;
mod error;
mod handle;
mod hot;
#[cfg(feature = "json-lines")]
mod import;
mod load;
mod metrics;
#[cfg(feature = "redis")]
mod mirror;
mod namespace;
mod stats;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use admin::{
    AdminError, CompactReport, ExportedEntry, NamespaceDisk, Problem, VerifyReport, compact_dir,
};
pub use cache::{Cache, CacheBuilder, Ttl, WriteOptions};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, Limits, NamespacePolicy};
pub use error::{Error, OpenError, ReadError, RecordError, WriteError};
pub use handle::NamespaceHandle;
pub use hot::{ENTRY_OVERHEAD, charge_of};
#[cfg(feature = "json-lines")]
pub use import::{
    ImportError, ImportReport, import_json_lines, import_json_lines_with, write_json_line,
};
pub use load::{
    BatchLoaded, BreakerConfig, BreakerConfigError, BreakerMetrics, BreakerOpen, BreakerSnapshot,
    BreakerState, CallError, CallOutcome, CircuitBreaker, LoadError, LoadPolicy, LoadStats, Loaded,
    Lookup, NEGATIVE_SUFFIX, NamespaceLoadStats, Origin, Permit, RefreshReport, Refresher,
    RefresherConfig, StaleReason, breaker_metrics_text,
};
#[cfg(feature = "redis")]
pub use mirror::{MirrorConfig, MirrorStats, RedisDeployment};
pub use stats::{NamespaceStats, Stats};
pub use store::open::{DAMAGED_MARKER, DB_FILE};
pub use store::outbox::{EPOCH_NAMESPACE, OutboxItem, OutboxKind};

/// The record codec, public for `embercache verify`, the fuzzers and tools
/// that read the database file directly; and a namespace's dictionary
/// training (`train`, as the engine runs it), for the benches.
pub mod record {
    pub use crate::store::record::{
        Compression, Dictionary, Encoding, HEADER_LEN, Header, decode, decode_header, encode,
    };
    pub use crate::store::train::{DICT_BYTES, FIRST_SAMPLE_BYTES, SEARCHED_SAMPLE_BYTES, train};
}

//! Counters and the [`Stats`] snapshot returned by `Cache::stats()`.
//!
//! Counters are relaxed atomics bumped on the hot path; `stats()` reads
//! them into plain structs. The three a `get` bumps (hot hits, warm hits,
//! misses) are [`Striped`]: one cache line per thread (round-robin over a
//! few stripes), so concurrent readers never write the same line. `metrics_text()` (src/metrics.rs) renders the
//! same numbers in the Prometheus text format.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Stripes of a [`Striped`] counter. Threads take them round-robin, so up
/// to this many threads each bump their own line.
pub(crate) const STRIPES: usize = 16;

/// One stripe, alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A counter split over [`STRIPES`] cache lines and summed when read: a
/// per-namespace hit counter shared by every reading thread made that
/// line ping-pong between cores on every get (1 KiB per counter).
#[derive(Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

/// The stripe of the calling thread, assigned round-robin on first use.
/// A `const`-initialised thread local without a destructor, read with
/// `Cell::get` and the first use out of line: each read is one load from
/// the thread's TLS block (this runs on every hot hit; with the first use
/// inside the closure of `LocalKey::with`, that call was not inlined, 7
/// instructions more a get).
#[inline]
pub(crate) fn my_stripe() -> usize {
    thread_local! {
        static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    #[cold]
    #[inline(never)]
    fn assign(mine: &'static std::thread::LocalKey<std::cell::Cell<usize>>) -> usize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = NEXT.fetch_add(1, Relaxed) % STRIPES;
        mine.set(i);
        i
    }
    match MINE.get() {
        usize::MAX => assign(&MINE),
        i => i,
    }
}

/// A counter that can be bumped and read: a plain atomic or a [`Striped`].
pub(crate) trait Counter {
    fn bump(&self, n: u64);
    fn read(&self) -> u64;
}

impl Counter for AtomicU64 {
    fn bump(&self, n: u64) {
        self.fetch_add(n, Relaxed);
    }
    fn read(&self) -> u64 {
        self.load(Relaxed)
    }
}

impl Counter for Striped {
    #[inline]
    fn bump(&self, n: u64) {
        self.0[my_stripe()].0.fetch_add(n, Relaxed);
    }
    fn read(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[derive(Default)]
pub(crate) struct NsCounters {
    pub hot_hits: Striped,
    pub warm_hits: Striped,
    pub misses: Striped,
    pub sets: AtomicU64,
    pub deletes: AtomicU64,
    pub hot_evictions: AtomicU64,
    pub warm_evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations: AtomicU64,
    /// Value bytes before compression / record payload bytes after, summed
    /// over every write: their ratio is the compression ratio.
    pub raw_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
}

#[derive(Default)]
pub(crate) struct EngineCounters {
    pub commits: AtomicU64,
    pub committed_ops: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub commit_micros_max: AtomicU64,
    pub write_errors: AtomicU64,
    pub maintenance_errors: AtomicU64,
    pub corrupt_reads: AtomicU64,
    pub records: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub warmup_total: AtomicU64,
    pub outbox_rows: AtomicU64,
    pub outbox_bytes: AtomicU64,
    pub outbox_coalesced: AtomicU64,
    pub warmup_loaded: AtomicU64,
    pub warmup_done: AtomicU64,
    pub log_replayed: AtomicU64,
}

#[inline]
pub(crate) fn add(c: &(impl Counter + ?Sized), n: u64) {
    c.bump(n);
}

pub(crate) fn get(c: &(impl Counter + ?Sized)) -> u64 {
    c.read()
}

/// Counters of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NamespaceStats {
    pub name: String,
    pub epoch: u64,
    /// Gets answered by the hot tier.
    pub hot_hits: u64,
    /// Gets answered by the warm tier (redb) or the write queue.
    pub warm_hits: u64,
    /// Gets that found nothing (absent, expired, or of an old epoch).
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    /// Entries pushed out of the hot tier (still on disk).
    pub hot_evictions: u64,
    /// Entries dropped from disk to respect the warm-tier byte bound.
    pub warm_evictions: u64,
    /// Expired entries removed (hot tier and disk sweeper).
    pub expirations: u64,
    /// `invalidate_namespace` calls.
    pub invalidations: u64,
    /// Value bytes written before compression.
    pub raw_bytes_written: u64,
    /// Payload bytes written after compression.
    pub stored_bytes_written: u64,
    /// The id of the dictionary new writes compress with, if any (trained
    /// by `Cache::train_dictionary` or `NamespacePolicy::auto_dictionary`).
    pub dictionary: Option<u32>,
}

impl NamespaceStats {
    /// Hits over gets, in [0, 1]; 0 when there was no get.
    pub fn hit_rate(&self) -> f64 {
        let gets = self.hot_hits + self.warm_hits + self.misses;
        if gets == 0 {
            0.0
        } else {
            (self.hot_hits + self.warm_hits) as f64 / gets as f64
        }
    }
    /// Raw over stored bytes of everything written (1.0 when nothing was).
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes_written == 0 {
            1.0
        } else {
            self.raw_bytes_written as f64 / self.stored_bytes_written as f64
        }
    }
}

/// A point-in-time copy of every counter. Cheap to take.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    pub namespaces: Vec<NamespaceStats>,
    /// Bytes charged in the hot tier (see the memory formula in the crate docs).
    pub hot_bytes: u64,
    pub hot_capacity: u64,
    pub hot_entries: u64,
    /// Records in the warm tier and their bytes (keys + records).
    pub disk_records: u64,
    pub disk_bytes: u64,
    pub disk_capacity: u64,
    /// Size of the redb file (0 in memory-only mode).
    pub file_bytes: u64,
    /// Writes waiting for the writer thread.
    pub queue_depth: u64,
    /// Group commits: groups of writes made durable (one log fsync, or
    /// one fsynced commit) and applied to the database. Groups that share
    /// one redb transaction count one each (after a failed commit, its
    /// groups are retried as one); maintenance is not counted.
    pub commits: u64,
    pub committed_ops: u64,
    /// Per group commit, from its start to its redb commit (or to the
    /// point it left a shared transaction open for the next group).
    pub commit_latency_avg: Duration,
    pub commit_latency_max: Duration,
    /// Failed commits (disk full, I/O errors); the writer retries.
    pub write_errors: u64,
    pub last_write_error: Option<String>,
    /// Failed maintenance passes (expiry sweep, disk bound, epoch purge,
    /// snapshot); the next pass retries.
    pub maintenance_errors: u64,
    /// Records that failed their checksum or decoding on read.
    pub corrupt_reads: u64,
    /// Set when open found a damaged file and moved it aside.
    pub moved_aside: Option<String>,
    /// Mirror writes waiting in the outbox (0 when the mirror is off), their
    /// bytes, and writes replaced by a newer write of the same key before
    /// they were sent.
    pub outbox_rows: u64,
    pub outbox_bytes: u64,
    pub outbox_coalesced: u64,
    /// Hot-set warm-up after open: keys loaded / keys in the snapshot.
    pub warmup_loaded: u64,
    pub warmup_total: u64,
    pub warmup_done: bool,
    /// Writes replayed from the write-ahead log since open: at open (what
    /// a crash left only in the log) and after reopening the database on
    /// an I/O error. 0 after a clean close.
    pub log_replayed: u64,
}

impl Stats {
    /// Totals over all namespaces.
    pub fn total(&self) -> NamespaceStats {
        let mut t = NamespaceStats {
            name: "*".into(),
            ..Default::default()
        };
        for n in &self.namespaces {
            t.hot_hits += n.hot_hits;
            t.warm_hits += n.warm_hits;
            t.misses += n.misses;
            t.sets += n.sets;
            t.deletes += n.deletes;
            t.hot_evictions += n.hot_evictions;
            t.warm_evictions += n.warm_evictions;
            t.expirations += n.expirations;
            t.invalidations += n.invalidations;
            t.raw_bytes_written += n.raw_bytes_written;
            t.stored_bytes_written += n.stored_bytes_written;
        }
        t
    }
}

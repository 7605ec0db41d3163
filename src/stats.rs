//! Counters and the [`Stats`] snapshot returned by `Cache::stats()`.
//!
//! Counters are relaxed atomics bumped on the hot path; `stats()` reads
//! them into plain structs. The three a `get` bumps (hot hits, warm hits,
//! misses) are [`Striped`]: one cache line per thread, so concurrent
//! readers never write the same line, and a thread that owns its line
//! bumps it without a locked instruction. `metrics_text()`
//! (src/metrics.rs) renders the same numbers in the Prometheus text format.

use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Stripes a thread can own. Up to this many threads at once each own
/// one; more share the second bank of a [`Striped`] counter.
pub(crate) const STRIPES: usize = 16;

/// One stripe, alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A counter split over cache lines and summed when read: a per-namespace
/// hit counter shared by every reading thread made that line ping-pong
/// between cores on every get.
///
/// Stripes `0..STRIPES` are owned, each by at most one live thread at a
/// time ([`my_stripe`]): only that thread writes it, so a bump is a load
/// and a store, not a `lock xadd` (a locked instruction on every hot hit,
/// on top of the shard lock's two and the value's reference count's two).
/// Stripes `STRIPES..` are for threads that own none (more than
/// [`STRIPES`] threads at once), bumped with `fetch_add` (2 KiB per
/// counter).
#[derive(Default)]
pub(crate) struct Striped([Stripe; 2 * STRIPES]);

/// Which stripes live threads own, one bit each.
static OWNED: AtomicU32 = AtomicU32::new(0);
const _: () = assert!(STRIPES <= 32 && STRIPES.is_power_of_two());

/// Gives its thread's stripe back when the thread ends.
struct Owner(std::cell::Cell<usize>);

impl Drop for Owner {
    fn drop(&mut self) {
        let i = self.0.get();
        if i < STRIPES {
            // Later bumps of this thread (from other thread-locals'
            // destructors) go to a shared stripe, with `fetch_add`.
            MINE.set(STRIPES + i);
            // Release: the next owner's claim (Acquire) sees every store
            // this thread made to the stripe.
            OWNED.fetch_and(!(1 << i), Release);
        }
    }
}

thread_local! {
    /// The calling thread's stripe, `usize::MAX` before its first use. A
    /// `const`-initialised thread local without a destructor, read with
    /// `Cell::get` and the first use out of line: each read is one load
    /// from the thread's TLS block (this runs on every hot hit; with the
    /// first use inside the closure of `LocalKey::with`, that call was not
    /// inlined, 7 instructions more a get).
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    /// Its owner guard (a destructor, so kept apart from `MINE`).
    static OWNER: Owner = const { Owner(std::cell::Cell::new(usize::MAX)) };
}

/// The calling thread's stripe: below [`STRIPES`] one it owns, from
/// [`STRIPES`] to `2 × STRIPES` a shared one (assigned round-robin).
#[inline]
fn mine() -> usize {
    #[cold]
    #[inline(never)]
    fn assign() -> usize {
        let i = claim().unwrap_or_else(|| {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            STRIPES + NEXT.fetch_add(1, Relaxed) % STRIPES
        });
        MINE.set(i);
        i
    }
    match MINE.get() {
        usize::MAX => assign(),
        i => i,
    }
}

/// Takes a free stripe for the calling thread, to give back when it ends;
/// `None` when all are owned, or when the thread's [`Owner`] is already
/// gone (late in its teardown) and could not give one back.
fn claim() -> Option<usize> {
    let mut cur = OWNED.load(Relaxed);
    loop {
        let free = !cur & (u32::MAX >> (32 - STRIPES));
        if free == 0 {
            return None;
        }
        let i = free.trailing_zeros() as usize;
        // Acquire: sees the stores of the stripe's last owner.
        match OWNED.compare_exchange_weak(cur, cur | 1 << i, Acquire, Relaxed) {
            Ok(_) => {
                if OWNER.try_with(|o| o.0.set(i)).is_ok() {
                    return Some(i);
                }
                // No destructor would give it back.
                OWNED.fetch_and(!(1 << i), Release);
                return None;
            }
            Err(now) => cur = now,
        }
    }
}

/// The calling thread's stripe in `0..STRIPES`, for per-thread slots other
/// than counters (the kept warm readers): its own when it owns one.
#[inline]
pub(crate) fn my_stripe() -> usize {
    mine() % STRIPES
}

/// The calling thread's stripe when it owns one (then only it writes
/// there; the hot shards' biased reads publish themselves in it).
#[inline]
pub(crate) fn owned_stripe() -> Option<usize> {
    let i = mine();
    (i < STRIPES).then_some(i)
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
        let i = mine();
        // The mask keeps the index in bounds without a check.
        let s = &self.0[i & (2 * STRIPES - 1)].0;
        if i < STRIPES {
            // Only this thread writes an owned stripe.
            s.store(s.load(Relaxed).wrapping_add(n), Relaxed);
        } else {
            s.fetch_add(n, Relaxed);
        }
    }
    fn read(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |t, s| t.wrapping_add(s.0.load(Relaxed)))
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

/// The tests that need a stripe to own run one at a time (here and in
/// `hot::bias`): the first here holds every stripe while it runs, which the
/// others would see (they would then test only their shared branch).
#[cfg(test)]
pub(crate) static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Far more threads than stripes, all bumping at once (four or five
    /// to each shared stripe): owners and sharers together lose no bump
    /// (an owned stripe written by two threads, or a shared one bumped
    /// with a plain store, would).
    #[test]
    fn concurrent_bumps_are_all_counted() {
        let _one = ONE_AT_A_TIME.lock();
        let threads = 5 * STRIPES + 3;
        let per = 200_000u64;
        let c = Arc::new(Striped::default());
        let start = Arc::new(Barrier::new(threads));
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (c, start) = (c.clone(), start.clone());
                std::thread::spawn(move || {
                    // Each takes its stripe before any thread ends (and
                    // gives one back).
                    c.bump(0);
                    start.wait();
                    for _ in 0..per {
                        c.bump(1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("join");
        }
        assert_eq!(c.read(), threads as u64 * per);
    }

    /// A thread that ends gives its stripe back: one thread after another
    /// keeps finding one to own (without the give-back, at most
    /// `STRIPES` of them would), and the next owner carries on counting
    /// where the last one left off.
    #[test]
    fn ended_threads_give_their_stripes_back() {
        let _one = ONE_AT_A_TIME.lock();
        let c = Arc::new(Striped::default());
        let rounds = 4 * STRIPES;
        let mut owned = 0;
        for _ in 0..rounds {
            let c = c.clone();
            let i = std::thread::spawn(move || {
                c.bump(3);
                mine()
            })
            .join()
            .expect("join");
            owned += usize::from(i < STRIPES);
        }
        // Other tests' threads may own stripes meanwhile, but more than
        // `STRIPES` rounds still find one free, which without the
        // give-back at most `STRIPES` could.
        assert!(
            owned > STRIPES,
            "{owned} of {rounds} threads owned a stripe"
        );
        assert_eq!(c.read(), 3 * rounds as u64);
    }

    /// A bump from a thread-local's destructor that runs after the owner
    /// guard's goes to a shared stripe, with `fetch_add`: the stripe it
    /// owned may already be another thread's. (Thread-local destructors
    /// run in the reverse order of their registration here; `LATE` is
    /// registered before the first bump registers the guard.)
    #[test]
    fn bumps_after_the_give_back_use_a_shared_stripe() {
        struct Late(std::cell::Cell<Option<std::sync::mpsc::Sender<usize>>>);
        impl Drop for Late {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(mine());
                }
            }
        }
        thread_local! {
            static LATE: Late = const { Late(std::cell::Cell::new(None)) };
        }
        let _one = ONE_AT_A_TIME.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let first = std::thread::spawn(move || {
            LATE.with(|l| l.0.set(Some(tx)));
            Striped::default().bump(1);
            mine()
        })
        .join()
        .expect("join");
        let late = rx.recv().expect("the late destructor ran");
        if first < STRIPES {
            assert_eq!(
                late,
                STRIPES + first,
                "owned {first}, bumped after the give-back"
            );
        } else {
            // Every stripe was owned by other tests' engine threads:
            // shared all along.
            assert_eq!(late, first);
        }
    }
}

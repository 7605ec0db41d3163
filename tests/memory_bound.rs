//! The hot tier's real heap stays within its configured capacity (+10 %)
//! under random value sizes, measured by a counting global allocator.
//!
//! Attribution: every heap block is tagged, in a small header, with whether
//! it was allocated while the test thread was inside a `set` call. Those
//! blocks are what the hot tier holds (entry, key and value buffers, slab,
//! table, queues, ghost) plus what pending writes and queued records hold
//! until their commit. After a `flush()` (twice, so the writer has also
//! dropped the committed group) the pending part is gone and the tagged
//! bytes still live are the hot tier's. redb's page cache is filled by the
//! writer thread, never tagged, so it needs no bound here.
//!
//! Besides the requested bytes, the test estimates what glibc malloc really
//! uses per block (16-byte rounding plus an 8-byte header, 32 bytes
//! minimum) and prints both, with the heap per entry beyond
//! `key.len() + value.len()` (compare with `ENTRY_OVERHEAD`).

use embercache::{Cache, Durability, ENTRY_OVERHEAD};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Tagged bytes live: as requested, and as glibc would use them.
static TAGGED: AtomicI64 = AtomicI64::new(0);
static TAGGED_CHUNKS: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// Whether allocations of this thread are tagged now.
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

/// glibc's chunk for a request: 8-byte header, 16-byte rounding, 32 minimum.
fn chunk(size: usize) -> i64 {
    ((size + 8 + 15) & !15).max(32) as i64
}

struct Tagging;

/// Room before each block for the tag; keeps the caller's alignment.
fn prefix(l: Layout) -> usize {
    l.align().max(16)
}

// SAFETY: every block is the system allocator's block of `size + prefix`
// bytes, aligned to at least 16; the caller gets the address `prefix`
// bytes in (still aligned to `l.align()`, since prefix is a multiple of
// it) and the tag lives in the 8 bytes just before that address, inside
// the block. `dealloc` recomputes the same prefix from the same layout.
unsafe impl GlobalAlloc for Tagging {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let pre = prefix(l);
        let Ok(full) = Layout::from_size_align(l.size() + pre, pre) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `full` has a non-zero size.
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            return base;
        }
        let tagged = TRACK.try_with(Cell::get).unwrap_or(false);
        // SAFETY: `pre` ≥ 16 bytes lie inside the block before `user`.
        unsafe {
            let user = base.add(pre);
            (user.sub(8) as *mut u64).write(u64::from(tagged));
            if tagged {
                TAGGED.fetch_add(l.size() as i64, Ordering::Relaxed);
                TAGGED_CHUNKS.fetch_add(chunk(l.size()), Ordering::Relaxed);
            }
            user
        }
    }

    unsafe fn dealloc(&self, user: *mut u8, l: Layout) {
        let pre = prefix(l);
        // SAFETY: `user` came from `alloc` with this layout (GlobalAlloc
        // contract), so the tag and the block start are where alloc put them.
        unsafe {
            if (user.sub(8) as *const u64).read() == 1 {
                TAGGED.fetch_sub(l.size() as i64, Ordering::Relaxed);
                TAGGED_CHUNKS.fetch_sub(chunk(l.size()), Ordering::Relaxed);
            }
            System.dealloc(
                user.sub(pre),
                Layout::from_size_align_unchecked(l.size() + pre, pre),
            );
        }
    }
}

#[global_allocator]
static ALLOC: Tagging = Tagging;

/// Runs `f` with this thread's allocations tagged.
fn tagged<T>(f: impl FnOnce() -> T) -> T {
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    r
}

#[derive(Debug, Default)]
struct Worst {
    /// Highest tagged bytes / capacity seen.
    ratio: f64,
    /// Same with glibc's chunk sizes.
    ratio_chunks: f64,
    /// Heap per entry beyond key + value at the worst sample (requested).
    overhead: f64,
    overhead_chunks: f64,
    entries: u64,
}

/// Fills a fresh cache with values of `sizes` under keys of at least
/// `key_len` bytes and samples the tagged heap after every batch.
fn run(
    what: &str,
    capacity: u64,
    sizes: std::ops::Range<usize>,
    sets: usize,
    key_len: usize,
) -> Worst {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .dir(dir.path())
        .hot_capacity(capacity)
        .shards(4)
        .durability(Durability::Buffered {
            max_delay: Duration::from_millis(5),
        })
        .open()
        .unwrap();
    cache.set("ns", b"first", b"x".to_vec()).unwrap(); // creates the namespace
    cache.delete("ns", b"first").unwrap();
    cache.flush().unwrap();
    cache.wait_for_warm_up(Duration::from_secs(10));
    let start = (
        TAGGED.load(Ordering::SeqCst),
        TAGGED_CHUNKS.load(Ordering::SeqCst),
    );
    let mut rng = StdRng::seed_from_u64(sizes.end as u64);
    let mut worst = Worst::default();
    let batch = 1000;
    for b in 0..sets / batch {
        for _ in 0..batch {
            // A key space ~3x what fits: inserts, overwrites and evictions.
            let n = rng.gen_range(0..sets / 3);
            let key = format!("key{n:0>w$}", w = key_len.saturating_sub(3)).into_bytes();
            let len = rng.gen_range(sizes.clone());
            let fill: u8 = rng.r#gen();
            tagged(|| cache.set("ns", &key, vec![fill; len])).unwrap();
        }
        cache.flush().unwrap();
        // The writer drops a committed group after replying to its flush;
        // a second flush returns only after that.
        cache.flush().unwrap();
        let heap = TAGGED.load(Ordering::SeqCst) - start.0;
        let heap_chunks = TAGGED_CHUNKS.load(Ordering::SeqCst) - start.1;
        let s = cache.stats();
        assert!(s.hot_bytes <= capacity, "charged bytes above capacity");
        let entries = s.hot_entries.max(1);
        let payload = s.hot_bytes.saturating_sub(entries * ENTRY_OVERHEAD as u64);
        let ratio = heap as f64 / capacity as f64;
        if ratio > worst.ratio || b == 0 {
            worst.ratio = ratio;
            worst.overhead = (heap as f64 - payload as f64) / entries as f64;
            worst.overhead_chunks = (heap_chunks as f64 - payload as f64) / entries as f64;
            worst.entries = entries;
        }
        worst.ratio_chunks = worst.ratio_chunks.max(heap_chunks as f64 / capacity as f64);
    }
    cache.close().unwrap();
    eprintln!(
        "{what}: capacity {capacity} B, worst heap {:.3}x capacity ({:.3}x with malloc chunks), \
         {} entries, heap per entry beyond key+value {:.0} B ({:.0} B with malloc chunks; \
         ENTRY_OVERHEAD {ENTRY_OVERHEAD})",
        worst.ratio, worst.ratio_chunks, worst.entries, worst.overhead, worst.overhead_chunks
    );
    worst
}

/// The tagged-bytes counter is global: one measurement at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CAPACITY: u64 = 4 << 20;

/// Runs each case (what, value sizes, sets, least key length) and fails
/// if any went above capacity + 10 %, requested or in malloc chunks.
fn check(cases: &[(&str, std::ops::Range<usize>, usize, usize)]) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut failed = Vec::new();
    for (what, sizes, sets, key_len) in cases {
        let w = run(what, CAPACITY, sizes.clone(), *sets, *key_len);
        if w.ratio > 1.10 {
            failed.push(format!(
                "{what}: {:.3}x, {:.0} B per entry beyond key+value",
                w.ratio, w.overhead
            ));
        }
        // The same bound in glibc's chunks: what the process really holds
        // (a second small allocation per entry, like a long key's box,
        // shows here first).
        if w.ratio_chunks > 1.10 {
            failed.push(format!(
                "{what}: {:.3}x in malloc chunks, {:.0} B per entry beyond key+value",
                w.ratio_chunks, w.overhead_chunks
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "hot tier heap above capacity + 10 %: {failed:?}"
    );
}

#[test]
fn the_attribution_counts_what_it_should() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A tagged 1 MiB buffer counts 1 MiB, an untagged one nothing, and
    // both are gone once dropped.
    let before = TAGGED.load(Ordering::SeqCst);
    let v = tagged(|| vec![1u8; 1 << 20]);
    let w = vec![1u8; 1 << 20];
    assert_eq!(TAGGED.load(Ordering::SeqCst) - before, 1 << 20);
    drop((v, w));
    assert_eq!(TAGGED.load(Ordering::SeqCst), before);
}

#[test]
fn hot_tier_heap_stays_within_capacity_for_large_values() {
    check(&[
        ("values 0..16 KiB", 0..16 << 10, 6_000, 0),
        ("values 0..256 KiB", 0..256 << 10, 2_000, 0),
    ]);
}

// Small values are where the per-entry overhead dominates: this held the
// engine to a measured ENTRY_OVERHEAD (it was 160 B, measured ~235 B + malloc;
// 288 until the compact slot layout, since then 200 with ~154–195 B measured).
// Keys over 14 bytes live outside the slot, behind a box of their own
// that `charge_of` charges 32 B for: the 40-byte case (the bot's
// addresses) holds those two allocations to the same bound (without the
// 32 B it measured 0.98x requested and 1.16x in malloc chunks, which
// fails the chunk bound).
#[test]
fn hot_tier_heap_stays_within_capacity_for_small_values() {
    check(&[
        ("values 0..64 B", 0..64, 60_000, 0),
        ("values 0..1 KiB", 0..1024, 30_000, 0),
        ("values 0..64 B, 40-byte keys", 0..64, 60_000, 40),
    ]);
}

//! W4 memory: insert-only, values 64–1024 bytes, a 256 MiB budget (times
//! `--scale`): heap bytes per entry beyond key + value, measured with a
//! counting global allocator, and inserts/s.
//!
//! Attribution: every heap block carries a tag in a small header saying
//! whether it was allocated while the benchmark thread was inside the
//! cache under test (construction and inserts). Tagged bytes still live
//! at the end are what the cache holds: its tables, queues and entries,
//! key copies, and the value buffers it keeps. embercache runs on disk
//! with its background writer; redb's page cache is filled by the writer
//! thread, so it is not tagged (the hot tier is what is compared), and
//! its queued records and pending writes are freed by two `flush()`es
//! before the measurement. moka, quick_cache and foyer do their work on
//! the calling thread (moka after `run_pending_tasks()`).
//!
//! Overhead per entry = (tagged heap − Σ key + value of the resident
//! entries) / resident entries, as requested from the allocator and as
//! glibc would use it (8-byte header, 16-byte rounding, 32 minimum).

use crate::Scale;
use crate::peers::{self, Foyer, Moka, Quick};
use crate::report::{Table, si};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

static TAGGED: AtomicI64 = AtomicI64::new(0);
static TAGGED_CHUNKS: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

/// glibc's chunk for a request: 8-byte header, 16-byte rounding, 32 minimum.
fn chunk(size: usize) -> i64 {
    ((size + 8 + 15) & !15).max(32) as i64
}

/// Room before each block for the tag; keeps the caller's alignment.
fn prefix(l: Layout) -> usize {
    l.align().max(16)
}

/// The benchmark binary's global allocator: the system allocator plus a
/// 16-byte tag header per block (every workload pays it alike).
pub struct Tagging;

// SAFETY: every block is the system allocator's block of `size + prefix`
// bytes, aligned to `prefix` (≥ 16 and a multiple of the caller's
// alignment); the caller gets the address `prefix` bytes in, still aligned
// to `l.align()`, and the tag lives in the 8 bytes just before it, inside
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

/// Runs `f` with this thread's allocations tagged.
fn tagged<T>(f: impl FnOnce() -> T) -> T {
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    r
}

fn live() -> (i64, i64) {
    (
        TAGGED.load(Ordering::SeqCst),
        TAGGED_CHUNKS.load(Ordering::SeqCst),
    )
}

/// What one cache holds at the end.
struct Held {
    entries: u64,
    /// Σ key + value of the resident entries.
    payload: u64,
}

/// One cache under test: insert, settle, then count what is resident.
trait Subject {
    fn insert(&self, key: Vec<u8>, value: Bytes);
    /// Finishes deferred work (embercache: commit and drop the queued
    /// records; moka: apply pending writes).
    fn settle(&self) {}
    fn held(&self, keys: &[(Vec<u8>, usize)]) -> Held;
}

/// The cache, then its directory (dropped in that order).
struct Ember(embercache::Cache, #[allow(dead_code)] tempfile::TempDir);

impl Subject for Ember {
    fn insert(&self, key: Vec<u8>, value: Bytes) {
        self.0.set(peers::NS, &key, value).expect("embercache set");
    }
    fn settle(&self) {
        // The writer drops a committed group after replying to its flush;
        // a second flush returns only after that.
        self.0.flush().expect("flush");
        self.0.flush().expect("flush");
    }
    fn held(&self, _: &[(Vec<u8>, usize)]) -> Held {
        let s = self.0.stats();
        Held {
            entries: s.hot_entries,
            payload: s.hot_bytes - s.hot_entries * embercache::ENTRY_OVERHEAD as u64,
        }
    }
}

/// Resident keys and their bytes, found with a lookup that does not count
/// as an access.
fn scan(keys: &[(Vec<u8>, usize)], has: impl Fn(&[u8]) -> bool) -> Held {
    let mut h = Held {
        entries: 0,
        payload: 0,
    };
    for (k, len) in keys {
        if has(k) {
            h.entries += 1;
            h.payload += (k.len() + len) as u64;
        }
    }
    h
}

impl Subject for Quick {
    fn insert(&self, key: Vec<u8>, value: Bytes) {
        self.0.insert(key, value)
    }
    fn held(&self, keys: &[(Vec<u8>, usize)]) -> Held {
        scan(keys, |k| self.0.peek(k).is_some())
    }
}

impl Subject for Moka {
    fn insert(&self, key: Vec<u8>, value: Bytes) {
        self.0.insert(key, value)
    }
    fn settle(&self) {
        self.0.run_pending_tasks();
    }
    fn held(&self, keys: &[(Vec<u8>, usize)]) -> Held {
        scan(keys, |k| self.0.contains_key(k))
    }
}

impl Subject for Foyer {
    fn insert(&self, key: Vec<u8>, value: Bytes) {
        self.0.insert(key, value);
    }
    fn held(&self, keys: &[(Vec<u8>, usize)]) -> Held {
        scan(keys, |k| self.0.contains(k))
    }
}

/// Builds one cache under test.
type Maker = Box<dyn Fn() -> Box<dyn Subject>>;

pub fn w4(scale: &Scale) -> String {
    let budget = ((256u64 << 20) as f64 * scale.factor) as u64;
    let mean_charge = peers::charge(10, 544);
    // Inserts: 1.5x what fits, so every cache is full and evicting.
    let n = (budget / mean_charge) as usize * 3 / 2;
    let mut rng = StdRng::seed_from_u64(4);
    let keys: Vec<(Vec<u8>, usize)> = (0..n)
        .map(|i| (format!("k{i:09}").into_bytes(), rng.gen_range(64..=1024)))
        .collect();
    println!("W4 memory: budget {budget} B, {n} inserts");
    let mut t = Table::new(&[
        "cache",
        "entries held",
        "heap per entry beyond key+value (requested)",
        "same, glibc chunks",
        "heap / budget",
        "of which at construction",
        "inserts/s",
    ]);
    let est = (budget / mean_charge) as usize;
    let makers: Vec<(&str, Maker)> = vec![
        (
            "embercache (hot tier)",
            Box::new(move || {
                let dir = tempfile::tempdir().expect("tempdir");
                let c = embercache::Cache::builder()
                    .dir(dir.path())
                    .hot_capacity(budget)
                    .open()
                    .expect("open embercache");
                Box::new(Ember(c, dir))
            }),
        ),
        (
            "quick_cache",
            Box::new(move || Box::new(Quick::new(budget, est))),
        ),
        ("moka", Box::new(move || Box::new(Moka::new(budget)))),
        (
            "foyer (memory)",
            Box::new(move || Box::new(Foyer::new(budget))),
        ),
    ];
    let mut per_entry = Vec::new();
    for (name, make) in &makers {
        let before = live();
        let start = Instant::now();
        let mut built = 0;
        let c = tagged(|| {
            let c = make();
            built = live().0 - before.0;
            for (i, (k, len)) in keys.iter().enumerate() {
                c.insert(k.clone(), Bytes::from(vec![i as u8; *len]));
            }
            c.settle();
            c
        });
        let secs = start.elapsed().as_secs_f64();
        let after = live();
        let heap = after.0 - before.0;
        let heap_chunks = after.1 - before.1;
        let h = c.held(&keys);
        let per = |bytes: i64| (bytes as f64 - h.payload as f64) / h.entries.max(1) as f64;
        per_entry.push((name.to_string(), per(heap), per(heap_chunks)));
        t.row(vec![
            name.to_string(),
            h.entries.to_string(),
            format!("{:.0} B", per(heap)),
            format!("{:.0} B", per(heap_chunks)),
            format!("{:.3}", heap as f64 / budget as f64),
            format!("{:.1} MiB", built as f64 / (1 << 20) as f64),
            si(n as f64 / secs),
        ]);
        drop(c);
    }
    let mut s = String::new();
    let _ = writeln!(s, "## W4 memory\n");
    let _ = writeln!(
        s,
        "Insert-only: {n} new keys (10 bytes) with values of 64–1024 bytes (uniform, seeded), 1.5× what \
         fits, into a budget of {budget} bytes; every cache is charged `key + value + {}` per entry \
         (embercache's `charge_of`). Heap is measured with a counting global allocator that tags the blocks \
         allocated by the benchmark thread inside the cache (construction and inserts) and counts those still \
         live at the end; embercache runs on disk, its redb page cache (filled by the writer thread) is not \
         counted, and two `flush()`es free its queued records first. *Beyond key+value* subtracts the key and \
         value bytes of the entries still held. *glibc chunks* adds malloc's 8-byte header and 16-byte \
         rounding per block. *At construction* is the part allocated by the constructor (quick_cache sizes its \
         table for the expected entries there; embercache allocates its write queue, 65 536 slots, there), \
         included in the per-entry figures. embercache's inserts/s include zstd, the record codec and the \
         writer thread.\n",
        embercache::ENTRY_OVERHEAD
    );
    s.push_str(&t.md());
    let find = |n: &str| per_entry.iter().find(|p| p.0 == n).map(|p| (p.1, p.2));
    if let (Some(e), Some(q)) = (find("embercache (hot tier)"), find("quick_cache")) {
        let _ = writeln!(
            s,
            "\nembercache − quick_cache overhead per entry: {:+.0} B requested, {:+.0} B with malloc chunks \
             (target: ≤ 0).\n",
            e.0 - q.0,
            e.1 - q.1
        );
    }
    s
}

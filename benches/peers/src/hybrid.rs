//! foyer's hybrid cache (memory + disk), the closest Rust peer, in two
//! workloads: W6 read-through, and the write rows it adds to W5.
//!
//! W6 read-through: a hot tier that holds 1 % of N warm keys (N = 5 M at
//! scale 1), Zipf 0.99 gets, a miss fetched from the "upstream" and
//! inserted; against foyer's hybrid cache (memory + disk) with the same
//! memory budget. Also reports the bytes each keeps on disk for the same
//! JSON documents.

use crate::Scale;
use crate::peers::charge;
use crate::report::{Runs, Table, dur_ns, si};
use crate::workload::{self, Id};
use bytes::Bytes;
use embercache::{Cache, NamespacePolicy};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

const NS: &str = "doc";

/// The upstream: the document of key `i`, a 200–1000-byte JSON position or
/// market as the bot stores them, regenerated on demand (no sleep: the
/// fetch costs only its CPU, so the caches' own costs dominate).
fn upstream(i: Id) -> Bytes {
    let mut rng = StdRng::seed_from_u64(0x6_0000 ^ u64::from(i));
    // A market's description length depends on its id alone; when it is
    // out of range the key holds a position document instead.
    if i % 2 == 1 {
        let v = workload::market_json(&mut rng, u64::from(i));
        if (200..=1000).contains(&v.len()) {
            return Bytes::from(v);
        }
    }
    loop {
        let v = workload::position_json(&mut rng, u64::from(i), 5000);
        if (200..=1000).contains(&v.len()) {
            return Bytes::from(v);
        }
    }
}

/// A cache with a disk tier, read through: `get` answers from memory or
/// disk, and on a miss fetches from the upstream and inserts.
trait Tiered: Sync {
    fn load(&self, key: &[u8], value: Bytes);
    /// Returns whether memory or disk answered.
    fn read_through(&self, key: &[u8], id: Id) -> bool;
    fn disk_bytes(&self) -> u64;
}

struct Ember {
    cache: Cache,
    dir: tempfile::TempDir,
}

impl Tiered for Ember {
    fn load(&self, key: &[u8], value: Bytes) {
        self.cache.set(NS, key, value).expect("embercache set");
    }
    fn read_through(&self, key: &[u8], id: Id) -> bool {
        if let Some(v) = self.cache.get(NS, key).expect("embercache get") {
            std::hint::black_box(v);
            return true;
        }
        self.cache
            .set(NS, key, upstream(id))
            .expect("embercache set");
        false
    }
    fn disk_bytes(&self) -> u64 {
        dir_bytes(self.dir.path())
    }
}

struct FoyerHybrid {
    cache: foyer::HybridCache<Vec<u8>, Bytes>,
    rt: tokio::runtime::Runtime,
    /// Removed when the cache is dropped.
    dir: tempfile::TempDir,
}

impl FoyerHybrid {
    /// foyer at its defaults except the sizes: `memory` bytes in memory
    /// (weighed with the same charge as embercache), a filesystem device of
    /// `disk` bytes.
    fn new(
        memory: u64,
        disk: u64,
        compression: foyer::Compression,
        policy: foyer::HybridCachePolicy,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let device = foyer::FsDeviceBuilder::new(dir.path())
            .with_capacity(disk as usize)
            .build()
            .expect("foyer device");
        use foyer::DeviceBuilder as _;
        let cache = rt
            .block_on(
                foyer::HybridCacheBuilder::new()
                    .with_policy(policy)
                    .memory(memory as usize)
                    .with_weighter(|k: &Vec<u8>, v: &Bytes| charge(k.len(), v.len()) as usize)
                    .storage()
                    .with_engine_config(foyer::BlockEngineConfig::new(device))
                    .with_compression(compression)
                    .build(),
            )
            .expect("foyer hybrid");
        FoyerHybrid { cache, rt, dir }
    }
}

impl Tiered for FoyerHybrid {
    fn load(&self, key: &[u8], value: Bytes) {
        self.cache.insert(key.to_vec(), value);
    }
    fn read_through(&self, key: &[u8], id: Id) -> bool {
        let key = key.to_vec();
        let got = self.rt.block_on(self.cache.get(&key)).expect("foyer get");
        if let Some(e) = got {
            std::hint::black_box(e.value().clone());
            return true;
        }
        self.cache.insert(key, upstream(id));
        false
    }
    fn disk_bytes(&self) -> u64 {
        dir_bytes(self.dir.path())
    }
}

/// Bytes of the files under `dir` (the space they take on disk).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.blocks() * 512
            };
        }
    }
    total
}

struct Outcome {
    ops: Runs,
    hit: f64,
    p50: u64,
    p99: u64,
    p999: u64,
}

/// Timed read-through runs, one per element of `runs`: each holds one
/// Zipf trace per thread.
fn measure(c: &dyn Tiered, keys: &[Vec<u8>], runs: &[Vec<Vec<Id>>]) -> Outcome {
    let mut ops = Runs::default();
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let (mut hits, mut total) = (0u64, 0u64);
    for traces in runs {
        let barrier = Barrier::new(traces.len() + 1);
        let (secs, per_thread) = std::thread::scope(|s| {
            let hs: Vec<_> = traces
                .iter()
                .map(|tr| {
                    let b = &barrier;
                    s.spawn(move || {
                        let mut h = Histogram::<u64>::new(3).expect("histogram");
                        let mut hit = 0u64;
                        b.wait();
                        for &id in tr {
                            let t = Instant::now();
                            hit += u64::from(c.read_through(&keys[id as usize], id));
                            let _ = h.record(t.elapsed().as_nanos() as u64);
                        }
                        (h, hit)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let out: Vec<_> = hs.into_iter().map(|h| h.join().expect("worker")).collect();
            (start.elapsed().as_secs_f64(), out)
        });
        let n: usize = traces.iter().map(Vec::len).sum();
        ops.0.push(n as f64 / secs);
        for (h, hit) in per_thread {
            hist.add(&h).expect("merge");
            hits += hit;
        }
        total += n as u64;
    }
    Outcome {
        ops,
        hit: hits as f64 / total.max(1) as f64,
        p50: hist.value_at_quantile(0.5),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
    }
}

pub fn w6(scale: &Scale) -> String {
    let n = scale.keys(5_000_000);
    // Few ops per run: foyer's disk reads at defaults run at ~10-30 k/s.
    let ops = scale.ops(100_000);
    println!("W6 read-through: {n} keys, {ops} gets per thread per run");
    let keys: Vec<Vec<u8>> = (0..n as Id).map(workload::key_bytes).collect();
    let t0 = Instant::now();
    let sizes: Vec<usize> = (0..n as Id).map(|i| upstream(i).len()).collect();
    let total_charge: u64 = sizes
        .iter()
        .zip(&keys)
        .map(|(&v, k)| charge(k.len(), v))
        .sum();
    let raw_bytes: u64 = sizes.iter().map(|&v| v as u64).sum();
    let memory = total_charge / 100;
    println!(
        "  {} of JSON, memory budget {} (generated in {:.1} s)",
        si(raw_bytes as f64),
        si(memory as f64),
        t0.elapsed().as_secs_f64()
    );
    let mut t = Table::new(&[
        "cache",
        "threads",
        "gets/s median (min–max)",
        "hit ratio (memory + disk)",
        "p50",
        "p99",
        "p99.9",
        "load",
        "disk bytes",
        "disk / raw JSON",
    ]);
    let mut p99s: Vec<(String, usize, u64)> = Vec::new();
    let mut disks: Vec<(String, u64)> = Vec::new();
    type Make = Box<dyn Fn() -> Box<dyn Tiered>>;
    let disk_cap = (raw_bytes * 3 / 2).max(256 << 20);
    let makes: Vec<(&str, Make)> = vec![
        (
            "embercache (zstd 3, trained dictionary)",
            Box::new(move || Box::new(ember(memory, &keys_sample(n), true))),
        ),
        (
            "embercache (zstd 3, no dictionary)",
            Box::new(move || Box::new(ember(memory, &keys_sample(n), false))),
        ),
        (
            "foyer hybrid (defaults: no compression)",
            Box::new(move || {
                Box::new(FoyerHybrid::new(
                    memory,
                    disk_cap,
                    foyer::Compression::None,
                    foyer::HybridCachePolicy::default(),
                ))
            }),
        ),
        (
            "foyer hybrid (zstd)",
            Box::new(move || {
                Box::new(FoyerHybrid::new(
                    memory,
                    disk_cap,
                    foyer::Compression::Zstd,
                    foyer::HybridCachePolicy::default(),
                ))
            }),
        ),
    ];
    for (name, make) in &makes {
        println!("  {name}: loading");
        let c = make();
        let started = Instant::now();
        for (i, k) in keys.iter().enumerate() {
            c.load(k, upstream(i as Id));
        }
        let load_secs = started.elapsed().as_secs_f64();
        // An untimed pass brings the Zipf-hot keys into memory, as a
        // running service would have them.
        let warm = vec![vec![workload::zipf_trace_shared(n, 0.99, ops, 600, 600)]];
        let _ = measure(c.as_ref(), &keys, &warm);
        let disk = c.disk_bytes();
        println!(
            "  {name}: loaded in {load_secs:.1} s, {} on disk",
            si(disk as f64)
        );
        disks.push((name.to_string(), disk));
        for threads in [1usize, 2] {
            // A fresh sampling stream for every run and thread: a run that
            // replayed a trace of its size (about the hot tier's entry
            // count) would mostly hit what that trace itself brought in.
            let runs: Vec<Vec<Vec<Id>>> = (0..scale.runs as u64)
                .map(|r| {
                    (0..threads as u64)
                        .map(|i| workload::zipf_trace_shared(n, 0.99, ops, 600, 610 + 16 * r + i))
                        .collect()
                })
                .collect();
            let o = measure(c.as_ref(), &keys, &runs);
            p99s.push((name.to_string(), threads, o.p99));
            t.row(vec![
                name.to_string(),
                threads.to_string(),
                o.ops.rate(),
                format!("{:.1} %", 100.0 * o.hit),
                dur_ns(o.p50 as f64),
                dur_ns(o.p99 as f64),
                dur_ns(o.p999 as f64),
                format!("{:.1} s ({}/s)", load_secs, si(n as f64 / load_secs)),
                si(disk as f64) + "B",
                format!("{:.2}", disk as f64 / raw_bytes as f64),
            ]);
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "## W6 read-through\n");
    let _ = writeln!(
        s,
        "{n} keys, each a 200–1000-byte JSON document ({} in all); memory budget 1 % of their charged bytes \
         ({}); Zipf 0.99 gets, {ops} per thread per run, {} runs, each run and thread with its own sampling stream \
         (no run replays a trace the cache has seen), after one untimed pass that brings the hot keys into memory. A get that neither memory nor disk answers fetches the document from the \"upstream\" (it \
         regenerates the JSON, no sleep) and inserts it. Each op is timed. embercache keeps everything on disk \
         (warm capacity above the data); foyer's hybrid cache gets a filesystem device of {} and otherwise its \
         defaults (policy write-on-eviction, no compression), plus a row with its zstd compression. foyer's \
         gets are async: each one is `block_on` from the benchmark thread on a 2-worker tokio runtime. \
         *disk bytes*: the blocks each cache's directory holds after the load and the warm-up pass \
         (embercache: the redb file with all records, indexes and free pages; foyer: its device files). \
         All threads and passes share one popularity ranking (the same hot keys), each with its own \
         sampling stream.\n",
        si(raw_bytes as f64) + "B",
        si(memory as f64) + "B",
        scale.runs,
        si(disk_cap as f64) + "B",
    );
    s.push_str(&t.md());
    let p99 = |name: &str, th: usize| {
        p99s.iter()
            .find(|p| p.0 == name && p.1 == th)
            .map(|p| p.2 as f64)
    };
    let disk = |name: &str| disks.iter().find(|d| d.0 == name).map(|d| d.1 as f64);
    let ours = "embercache (zstd 3, trained dictionary)";
    let foyer_default = "foyer hybrid (defaults: no compression)";
    let _ = writeln!(
        s,
        "\n| ratio | 1 thread | 2 threads | target |\n|---|---|---|---|"
    );
    let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}×", a / b),
        _ => "–".into(),
    };
    let _ = writeln!(
        s,
        "| p99 embercache / foyer hybrid | {} | {} | ≤ 1× |",
        r(p99(ours, 1), p99(foyer_default, 1)),
        r(p99(ours, 2), p99(foyer_default, 2))
    );
    let _ = writeln!(
        s,
        "| disk bytes embercache / foyer hybrid | {} | | ≤ 0.5× |",
        r(disk(ours), disk(foyer_default))
    );
    s.push('\n');
    s
}

/// Keys whose documents seed the dictionary: the first 20 000.
fn keys_sample(n: usize) -> Vec<Id> {
    (0..n.min(20_000) as Id).collect()
}

/// An embercache on disk with `memory` bytes of hot tier; with `dict`, a
/// dictionary trained on a sample of the documents before the load.
fn ember(memory: u64, sample: &[Id], dict: bool) -> Ember {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::builder()
        .dir(dir.path())
        .hot_capacity(memory)
        .warm_capacity(u64::MAX / 4)
        // No dictionary of its own: `dict` says whether it gets one.
        .namespace(NS, NamespacePolicy::default().no_auto_dictionary())
        .open()
        .expect("open embercache");
    if dict {
        for &i in sample {
            cache
                .set(NS, &workload::key_bytes(i), upstream(i))
                .expect("set");
        }
        cache.flush().expect("flush");
        cache.train_dictionary(NS).expect("train dictionary");
    }
    Ember { cache, dir }
}

/// Rows for W5: foyer's hybrid cache taking the same JSON writes with
/// `WriteOnInsertion` (every insert is queued for its device at once).
/// foyer promises no durability per write: `insert` returns before the
/// disk write and nothing is fsynced per write, so these rows are an upper
/// bound for a hybrid cache, not a durable store; the time `close()` takes
/// to flush is reported beside them.
pub fn w5_foyer(scale: &Scale) -> String {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let values = workload::json_200_1000(4096, 900);
    let mut t = Table::new(&[
        "store",
        "writers",
        "inserts/s median (min–max)",
        "close (flush) time",
        "value bytes inserted",
        "bytes written to its device",
    ]);
    let avg_len = values.iter().map(|v| v.len()).sum::<usize>() as f64 / values.len() as f64;
    for writers in [1usize, 4, 16, 64] {
        let mut runs = Runs::default();
        let mut close = Runs::default();
        let mut written = Runs::default();
        let mut inserted = Runs::default();
        for _ in 0..scale.runs {
            let c = FoyerHybrid::new(
                64 << 20,
                4 << 30,
                foyer::Compression::None,
                foyer::HybridCachePolicy::WriteOnInsertion,
            );
            let stop = AtomicBool::new(false);
            let done = AtomicU64::new(0);
            let start = Instant::now();
            std::thread::scope(|s| {
                for w in 0..writers {
                    let (stop, done, c, values) = (&stop, &done, &c, &values);
                    s.spawn(move || {
                        let mut j = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let v = values[(w * 7919 + j as usize) % values.len()].clone();
                            c.cache.insert(format!("w{w}:{j}").into_bytes(), v);
                            j += 1;
                        }
                        done.fetch_add(j, Ordering::Relaxed);
                    });
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(scale.secs));
                stop.store(true, Ordering::Relaxed);
            });
            let count = done.load(Ordering::Relaxed) as f64;
            runs.0.push(count / start.elapsed().as_secs_f64());
            inserted.0.push(count * avg_len);
            let t0 = Instant::now();
            c.rt.block_on(c.cache.close()).expect("foyer close");
            close.0.push(t0.elapsed().as_nanos() as f64);
            written
                .0
                .push(c.cache.statistics().disk_write_bytes() as f64);
        }
        t.row(vec![
            "foyer hybrid (write-on-insertion, no fsync)".into(),
            writers.to_string(),
            runs.rate(),
            dur_ns(close.median()),
            si(inserted.median()) + "B",
            si(written.median()) + "B",
        ]);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### foyer hybrid on the same writes\n\nfoyer's hybrid cache (64 MiB memory, 4 GiB filesystem device, \
         policy write-on-insertion so every insert is queued for the device) taking the same JSON values from \
         1–64 threads, {} runs of {} s. **Not a durable store:** `insert` returns before its disk write and \
         foyer never fsyncs per write, so after a crash any of these writes may be gone. The rate is what an \
         in-memory insert costs plus the background flushers' share of the 2 cores; *close* is how long the final \
         flush took. Bytes written include foyer's block and entry headers and alignment; fewer bytes written \
         than inserted means foyer dropped queued writes (it does so when its flush buffers are full).\n",
        scale.runs, scale.secs
    );
    s.push_str(&t.md());
    s.push('\n');
    s
}

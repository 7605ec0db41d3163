//! A small, single-threaded W1-like driver for instruction counts under
//! callgrind (wall-clock numbers are too noisy on a shared machine):
//!
//! ```sh
//! cargo build --release --manifest-path benches/peers/Cargo.toml --bin probe
//! valgrind --tool=callgrind --toggle-collect='*probe*gets*' \
//!     benches/peers/target/release/probe embercache 100000 200000
//! ```
//!
//! Only `gets` is counted (`--toggle-collect`), so instructions per get =
//! the reported total / the number of gets. `which` is `embercache` or
//! `quick_cache` (or `embercache-ttl`: every key with a TTL); keys are 10 bytes, values 100 bytes, Zipf 0.99.
//!
//! `probe warm KEYS GETS THREADS` is W6's read path (hot tier 1 %, the
//! rest from redb) at a smaller size.
//! `probe seq KEYS GETS ROUNDS QC_FIRST [THREADS]` loads and times one cache at a time,
//! as W1 does (the fair comparison: `race` interleaves both caches' loads,
//! which spreads quick_cache's keys over more pages and costs it ~25 %).
//! `probe race KEYS GETS ROUNDS THREADS` times embercache and quick_cache
//! in alternation, round after round, and prints each round's ratio and
//! their median: on a shared machine, load that drifts between two long
//! runs then mostly cancels out. `probe w2 KEYS OPS` runs a W2-like mix
//! (gets with insert on a miss, every 10th op a set, 1 % capacity) on
//! embercache alone; `embercache-ttl` is the get driver with TTLs (W8).
//! `probe ttlrace KEYS GETS ROUNDS TTL_FIRST` is W8's get cost in one
//! process: a cache without TTLs and one with, runs alternating
//! (`PROBE_NO_TTL=1`: the second cache gets no TTLs either, an A/A run).
//! `probe ttl3 KEYS GETS ROUNDS ROTATE` splits that cost: the system clock
//! as the engine reads it, the same behind a `dyn Clock`, and a clock
//! read in one load (see `ttl3`).
//! `probe toyab KEYS GETS ROUNDS THREADS` times the engine and `layout`'s
//! toy open table (`src/toy.rs`: no lock, namespace, clock or
//! statistics) on the same keys and values in one process, rounds
//! alternating: the engine's share of the toy's gets/s is a figure two
//! builds of the engine can be compared by, where their rates alone
//! would differ with the machine's drift.
//! `probe w7 DIR RUNS [shuffled]` is W7's warm-up alone: it fills `DIR`
//! with 1 M entries once, then reopens it RUNS times and prints each
//! warm-up's time and CPU per entry; under callgrind
//! (`callgrind_annotate --inclusive=yes`, `warm_chunk`) the instructions
//! it takes.

#[path = "../toy.rs"]
mod toy;

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Zipf};

/// `n` keys (`k000000042`) and 100-byte values.
fn data(n: usize) -> (Vec<Vec<u8>>, Vec<Bytes>) {
    let keys = (0..n).map(|i| format!("k{i:09}").into_bytes()).collect();
    let values = (0..n)
        .map(|i| Bytes::from(format!("{i:0100}").into_bytes()))
        .collect();
    (keys, values)
}

/// `ops` Zipf(`s`) key ids over `n` keys, ranks shuffled, from one seed.
fn zipf(n: usize, s: f64, ops: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rng);
    let z = Zipf::new(n as u64, s).expect("zipf");
    (0..ops)
        .map(|_| perm[z.sample(&mut rng) as usize - 1])
        .collect()
}

#[inline(never)]
fn gets(get: &(dyn Fn(&[u8]) -> Option<Bytes> + Sync), keys: &[Vec<u8>], trace: &[u32]) -> usize {
    let mut hits = 0;
    for &id in trace {
        if std::hint::black_box(get(&keys[id as usize])).is_some() {
            hits += 1;
        }
    }
    hits
}

/// Gets/s of `threads` threads each running `trace` through `get`.
fn rate(
    get: &(dyn Fn(&[u8]) -> Option<Bytes> + Sync),
    keys: &[Vec<u8>],
    traces: &[Vec<u32>],
) -> f64 {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in traces {
            s.spawn(move || gets(get, keys, t));
        }
    });
    traces.iter().map(Vec::len).sum::<usize>() as f64 / start.elapsed().as_secs_f64()
}

fn race(n: usize, ops: usize, rounds: usize, threads: usize) {
    let (keys, values) = data(n);
    let traces: Vec<Vec<u32>> = (0..threads)
        .map(|t| {
            let mut rng = StdRng::seed_from_u64(100 + t as u64);
            let mut perm: Vec<u32> = (0..n as u32).collect();
            perm.shuffle(&mut StdRng::seed_from_u64(100));
            let z = Zipf::new(n as u64, 0.99).expect("zipf");
            (0..ops)
                .map(|_| perm[z.sample(&mut rng) as usize - 1])
                .collect()
        })
        .collect();
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let e = embercache::Cache::builder()
        .in_memory()
        .hot_capacity(cap)
        .open()
        .expect("open");
    let q = quick_cache::sync::Cache::<Vec<u8>, Bytes, peers_charge::W>::with_weighter(
        n,
        cap,
        peers_charge::W,
    );
    for (k, v) in keys.iter().zip(&values) {
        e.set("w", k, v.clone()).expect("set");
        q.insert(k.clone(), v.clone());
    }
    e.flush().expect("flush");
    let h = e.namespace("w").expect("namespace");
    let eg = |k: &[u8]| h.get(k).expect("get");
    let qg = |k: &[u8]| q.get(k);
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let a = rate(&eg, &keys, &traces);
        let b = rate(&qg, &keys, &traces);
        ratios.push(a / b);
        println!(
            "round {r}: embercache {a:.0}/s quick_cache {b:.0}/s ratio {:.2}",
            a / b
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "{threads} thread(s): median ratio {:.2} (min {:.2}, max {:.2}) over {rounds} rounds",
        ratios[rounds / 2],
        ratios[0],
        ratios[rounds - 1]
    );
}

/// An in-memory cache holding every key in namespace `w`, all resident.
fn loaded(keys: &[Vec<u8>], values: &[Bytes]) -> embercache::Cache {
    let cap = keys.len() as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let e = embercache::Cache::builder()
        .in_memory()
        .hot_capacity(cap)
        .open()
        .expect("open");
    for (k, v) in keys.iter().zip(values) {
        e.set("w", k, v.clone()).expect("set");
    }
    e.flush().expect("flush");
    e
}

/// The engine against `layout`'s toy table (see the crate docs' `toyab`):
/// the engine loaded first, then the toy from the same keys and `Bytes`,
/// rounds alternating which runs first.
fn toyab(n: usize, ops: usize, rounds: usize, threads: usize) {
    let (keys, values) = data(n);
    let traces: Vec<Vec<u32>> = (0..threads as u64)
        .map(|t| zipf(n, 0.99, ops, 100 + t))
        .collect();
    let e = loaded(&keys, &values);
    let h = e.namespace("w").expect("namespace");
    let o = toy::Open::new(&keys, &values);
    let ge = |k: &[u8]| h.get(k).expect("get");
    let gt = |k: &[u8]| o.get(k);
    let (mut re, mut rt) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            re.push(rate(&ge, &keys, &traces));
            rt.push(rate(&gt, &keys, &traces));
        } else {
            rt.push(rate(&gt, &keys, &traces));
            re.push(rate(&ge, &keys, &traces));
        }
        println!("round {r}: engine {:.0} toy {:.0}", re[r], rt[r]);
    }
    let mut ratios: Vec<f64> = re.iter().zip(&rt).map(|(e, t)| e / t).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "engine / toy: median of per-round ratios {:.3} ({:.3}–{:.3})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

/// W1's order: one cache at a time, loaded alone (its allocations not
/// interleaved with the other's), timed `rounds` times, then dropped.
fn seq(n: usize, ops: usize, rounds: usize, qc_first: bool, threads: usize) {
    let (keys, values) = data(n);
    let traces: Vec<Vec<u32>> = (0..threads as u64)
        .map(|t| zipf(n, 0.99, ops, 100 + t))
        .collect();
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ember = || {
        let e = loaded(&keys, &values);
        let h = e.namespace("w").expect("namespace");
        let g = |k: &[u8]| h.get(k).expect("get");
        median((0..rounds).map(|_| rate(&g, &keys, &traces)).collect())
    };
    let quick = || {
        let q = quick_cache::sync::Cache::<Vec<u8>, Bytes, peers_charge::W>::with_weighter(
            n,
            cap,
            peers_charge::W,
        );
        for (k, v) in keys.iter().zip(&values) {
            q.insert(k.clone(), v.clone());
        }
        let g = |k: &[u8]| q.get(k);
        median((0..rounds).map(|_| rate(&g, &keys, &traces)).collect())
    };
    let (e, q) = if qc_first {
        let q = quick();
        (ember(), q)
    } else {
        let e = ember();
        (e, quick())
    };
    println!(
        "seq: embercache {e:.0}/s quick_cache {q:.0}/s ratio {:.2}",
        e / q
    );
}

fn ttlrace(n: usize, ops: usize, rounds: usize, ttl_first: bool) {
    let (keys, values) = data(n);
    let trace = vec![zipf(n, 0.99, ops, 100)];
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let open = || {
        embercache::Cache::builder()
            .in_memory()
            .hot_capacity(cap)
            .open()
            .expect("open")
    };
    // PROBE_NO_TTL=1: the "ttl" cache gets no TTLs either (an A/A run).
    let aa = std::env::var_os("PROBE_NO_TTL").is_some();
    let load = |c: &embercache::Cache, ttl: bool| {
        for (k, v) in keys.iter().zip(&values) {
            if ttl && !aa {
                c.set_with_ttl("w", k, v.clone(), std::time::Duration::from_secs(3600))
                    .expect("set");
            } else {
                c.set("w", k, v.clone()).expect("set");
            }
        }
        c.flush().expect("flush");
    };
    let (plain, ttl) = if ttl_first {
        let t = open();
        load(&t, true);
        let p = open();
        load(&p, false);
        (p, t)
    } else {
        let p = open();
        load(&p, false);
        let t = open();
        load(&t, true);
        (p, t)
    };
    let pg = |k: &[u8]| plain.get("w", k).expect("get");
    let tg = |k: &[u8]| ttl.get("w", k).expect("get");
    for r in 0..rounds {
        let a = rate(&pg, &keys, &trace);
        let b = rate(&tg, &keys, &trace);
        println!(
            "round {r}: plain {a:.0}/s ttl {b:.0}/s cost {:+.1} %",
            100.0 * (a / b - 1.0)
        );
    }
}

/// A clock that never moves, whose hot-path read is one load from a page
/// of its own: what a TTL check would cost with a time word kept fresh by
/// someone else (see `ttl3`).
#[derive(Debug)]
struct WordClock {
    now: u64,
    /// 128 KiB; the word read is in the middle, on a page nothing else uses.
    words: Box<[std::sync::atomic::AtomicU64]>,
}

impl WordClock {
    fn new(now: u64) -> Self {
        let words = (0..16384)
            .map(|_| std::sync::atomic::AtomicU64::new(now))
            .collect();
        WordClock { now, words }
    }
}

impl embercache::Clock for WordClock {
    fn wall_ms(&self) -> u64 {
        self.now
    }
    fn monotonic_ms(&self) -> u64 {
        self.now
    }
    fn wall_check_interval_ms(&self) -> u64 {
        1
    }
    fn monotonic_coarse_ms(&self) -> (u64, u64) {
        (
            self.words[8192].load(std::sync::atomic::Ordering::Relaxed),
            1,
        )
    }
}

/// `probe ttl3 KEYS GETS ROUNDS ROTATE`: four caches in one process, one
/// without TTLs (`plain`), three with: one on the system clock (`sys`, the
/// vDSO's coarse clock), one on [`WordClock`] (`word`) and one on a
/// `SystemClock` handed to the builder (`dyn`: read through the `Clock`
/// trait object, as any clock given to the builder is). Each round times a pass of each, in an order
/// that rotates from round to round; `ROTATE` (0–3) rotates the order in
/// which they are built. Prints each round's TTL cost on the three
/// clocks, then their medians.
fn ttl3(n: usize, ops: usize, rounds: usize, rotate: usize) {
    let (keys, values) = data(n);
    let trace = vec![zipf(n, 0.99, ops, 100)];
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    const NAMES: [&str; 4] = ["plain", "sys", "word", "dyn"];
    let mut built: Vec<Option<embercache::Cache>> = vec![None, None, None, None];
    for j in 0..4 {
        let k = (j + rotate) % 4;
        let mut b = embercache::Cache::builder().in_memory().hot_capacity(cap);
        if k == 2 {
            b = b.clock(WordClock::new(1_700_000_000_000));
        } else if k == 3 {
            b = b.clock(embercache::SystemClock::default());
        }
        let c = b.open().expect("open");
        for (key, v) in keys.iter().zip(&values) {
            if k == 0 {
                c.set("w", key, v.clone()).expect("set");
            } else {
                c.set_with_ttl("w", key, v.clone(), std::time::Duration::from_secs(3600))
                    .expect("set");
            }
        }
        c.flush().expect("flush");
        built[k] = Some(c);
    }
    let caches: Vec<embercache::Cache> = built.into_iter().map(|c| c.expect("built")).collect();
    let mut cost: [Vec<f64>; 3] = Default::default();
    for r in 0..rounds {
        let mut x = [0.0; 4];
        for j in 0..4 {
            let k = (j + r) % 4;
            let c = &caches[k];
            x[k] = rate(&|key: &[u8]| c.get("w", key).expect("get"), &keys, &trace);
        }
        let mut line = format!("round {r}:");
        for k in 0..4 {
            line += &format!(" {} {:.0}/s", NAMES[k], x[k]);
        }
        line += "; TTL cost:";
        for k in 1..4 {
            cost[k - 1].push(100.0 * (x[0] / x[k] - 1.0));
            line += &format!(" {} {:+.1} %", NAMES[k], cost[k - 1][r]);
        }
        println!("{line}");
    }
    let mut line = "median TTL cost:".to_string();
    for k in 1..4 {
        let v = &mut cost[k - 1];
        v.sort_by(f64::total_cmp);
        line += &format!(" {} {:+.1} %", NAMES[k], v[v.len() / 2]);
    }
    println!("{line}");
}

/// The same byte weight as benches/peers (embercache's charge).
mod peers_charge {
    #[derive(Clone)]
    pub struct W;
    impl quick_cache::Weighter<Vec<u8>, bytes::Bytes> for W {
        fn weight(&self, k: &Vec<u8>, v: &bytes::Bytes) -> u64 {
            embercache::charge_of(k.len(), v.len()) as u64
        }
    }
}

/// W2-like: gets that insert on a miss, every 10th op a set.
#[inline(never)]
fn w2ops(c: &embercache::Cache, keys: &[Vec<u8>], values: &[Bytes], trace: &[u32]) -> usize {
    let mut hits = 0;
    for (i, &id) in trace.iter().enumerate() {
        let k = &keys[id as usize];
        if i % 10 == 9 {
            c.set("w", k, values[id as usize].clone()).expect("set");
        } else if c.get("w", k).expect("get").is_some() {
            hits += 1;
        } else {
            c.set("w", k, values[id as usize].clone()).expect("set");
        }
    }
    hits
}

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let f: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
}

/// W7's data set (1 M entries, 10-byte keys, the workload's 100-byte
/// values) written into `dir` once; then `runs` reopens, each timed until
/// the warm-up is done, with the process's CPU time per hot entry. With
/// `shuffled`, the keys are written in a scattered order, so the hot set
/// (the last keys written) is spread over the whole key space instead of
/// being its last fifth.
fn w7(dir: &std::path::Path, runs: usize, shuffled: bool) {
    if !dir.join(embercache::DB_FILE).exists() {
        let c = embercache::Cache::builder().dir(dir).open().expect("open");
        for j in 0..1_000_000u64 {
            // 999 983 is prime, so this is a permutation of 0..1 M.
            let i = if shuffled { j * 999_983 % 1_000_000 } else { j };
            let mut v = format!(
                "{{\"id\":{i},\"bid\":0.{:04},\"ask\":0.{:04},\"pad\":\"",
                i % 9973,
                i % 7919
            );
            while v.len() < 98 {
                v.push((b'a' + (v.len() as u8 % 26)) as char);
            }
            v.push_str("\"}");
            c.set("w", format!("k{i:09}").as_bytes(), Bytes::from(v))
                .expect("set");
        }
        c.close().expect("close");
    }
    for _ in 0..runs {
        let (cpu0, t0) = (cpu_secs(), std::time::Instant::now());
        let c = embercache::Cache::builder()
            .dir(dir)
            .open()
            .expect("reopen");
        let mut s = c.stats();
        while !s.warmup_done {
            std::thread::sleep(std::time::Duration::from_millis(1));
            s = c.stats();
        }
        let (w, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - cpu0);
        println!(
            "w7: {} hot entries in {:.1} ms, {:.0} k entries/s, {:.2} µs CPU per entry",
            s.hot_entries,
            w * 1e3,
            s.hot_entries as f64 / w / 1e3,
            cpu * 1e6 / s.hot_entries.max(1) as f64
        );
        c.close().expect("close");
    }
}

/// `probe warm KEYS GETS THREADS`: W6's read path at a smaller size: a
/// cache on disk whose hot tier holds 1 % of KEYS 500-byte values, then
/// Zipf 0.99 gets from THREADS threads (3 rounds; the first brings the hot
/// set in), so most misses of the hot tier are redb reads.
fn warm(n: usize, ops: usize, threads: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cap = (n / 100) as u64 * embercache::charge_of(10, 500) as u64;
    let c = embercache::Cache::builder()
        .dir(dir.path())
        .hot_capacity(cap)
        .open()
        .expect("open");
    for i in 0..n {
        let v = format!("{{\"id\":{i},\"pad\":\"{:0>480}\"}}", i * 7919);
        c.set("w", format!("k{i:09}").as_bytes(), v.into_bytes())
            .expect("set");
    }
    c.flush().expect("flush");
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:09}").into_bytes()).collect();
    let traces: Vec<Vec<u32>> = (0..threads as u64)
        .map(|t| zipf(n, 0.99, ops, 300 + t))
        .collect();
    let h = c.namespace("w").expect("namespace");
    let g = |k: &[u8]| h.get(k).expect("get");
    for round in 0..3 {
        let r = rate(&g, &keys, &traces);
        println!("warm: round {round}, {threads} thread(s): {r:.0} gets/s");
    }
    c.close().expect("close");
}

fn main() {
    let mut a = std::env::args().skip(1);
    let which = a.next().unwrap_or_else(|| "embercache".into());
    if which == "w2" {
        // probe w2 KEYS OPS: capacity 1 % of the keys, Zipf 0.8.
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops) = (num(100_000), num(100_000));
        let (keys, values) = data(n);
        let trace = zipf(n, 0.8, ops, 700);
        let cap = (n / 100) as u64 * embercache::charge_of(10, 100) as u64;
        let c = embercache::Cache::builder()
            .in_memory()
            .hot_capacity(cap)
            .open()
            .expect("open");
        let t = std::time::Instant::now();
        let hits = w2ops(&c, &keys, &values, &trace);
        println!(
            "w2: {hits} hits of {ops} ops, {:.0} ops/s",
            ops as f64 / t.elapsed().as_secs_f64()
        );
        return;
    }
    if which == "ttlrace" {
        // probe ttlrace KEYS OPS ROUNDS TTL_FIRST: W8's get cost, both caches
        // alive at once, runs alternating.
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, rounds, ttl_first) = (num(1_000_000), num(2_000_000), num(5), num(0));
        ttlrace(n, ops, rounds, ttl_first == 1);
        return;
    }
    if which == "ttl3" {
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, rounds, rotate) = (num(1_000_000), num(2_000_000), num(9), num(0));
        ttl3(n, ops, rounds, rotate);
        return;
    }
    if which == "w7" {
        // probe w7 DIR RUNS [shuffled]: W7's warm-up alone, for `perf record`.
        let dir = std::path::PathBuf::from(a.next().expect("probe w7 DIR RUNS"));
        let runs: usize = a.next().map_or(5, |s| s.parse().expect("runs"));
        w7(&dir, runs, a.next().as_deref() == Some("shuffled"));
        return;
    }
    if which == "warm" {
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, threads) = (num(500_000), num(1_000_000), num(1));
        warm(n, ops, threads);
        return;
    }
    if which == "toyab" {
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, rounds, threads) = (num(1_000_000), num(2_000_000), num(6), num(1));
        toyab(n, ops, rounds, threads);
        return;
    }
    if which == "seq" {
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, rounds, qc_first) = (num(1_000_000), num(2_000_000), num(5), num(0));
        seq(n, ops, rounds, qc_first == 1, num(1));
        return;
    }
    if which == "race" {
        let mut num = |d: usize| a.next().map_or(d, |s| s.parse().expect("number"));
        let (n, ops, rounds, threads) = (num(250_000), num(500_000), num(9), num(1));
        race(n, ops, rounds, threads);
        return;
    }
    let n: usize = a.next().map_or(100_000, |s| s.parse().expect("keys"));
    let ops: usize = a.next().map_or(200_000, |s| s.parse().expect("gets"));
    let (keys, values) = data(n);
    let trace = zipf(n, 0.99, ops, 100);
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let hits = match which.as_str() {
        "embercache" | "embercache-ttl" => {
            let c = embercache::Cache::builder()
                .in_memory()
                .hot_capacity(cap)
                // Under valgrind the writer thread runs rarely.
                .limits({
                    let mut l = embercache::Limits::default();
                    l.queue_wait = std::time::Duration::from_secs(3600);
                    l
                })
                .open()
                .expect("open");
            // `embercache-ttl`: every key with a 1-hour TTL (W8's get cost).
            let ttl = (which == "embercache-ttl").then(|| std::time::Duration::from_secs(3600));
            for (k, v) in keys.iter().zip(&values) {
                match ttl {
                    Some(t) => c.set_with_ttl("w", k, v.clone(), t).expect("set"),
                    None => c.set("w", k, v.clone()).expect("set"),
                }
            }
            c.flush().expect("flush");
            // Warm: every key read once, so frequencies settle as in W1.
            gets(&|_| None, &keys, &[]);
            // Through a namespace handle, as W1 reads (`PROBE_BY_NAME=1`:
            // `Cache::get` by name).
            let h = c.namespace("w").expect("namespace");
            let by_name = std::env::var_os("PROBE_BY_NAME").is_some();
            let get = |k: &[u8]| {
                if by_name {
                    c.get("w", k).expect("get")
                } else {
                    h.get(k).expect("get")
                }
            };
            for k in &keys {
                get(k);
            }
            let t = std::time::Instant::now();
            let hits = gets(&get, &keys, &trace);
            eprintln!(
                "{which}: {:.0} ns per get",
                t.elapsed().as_nanos() as f64 / trace.len() as f64
            );
            hits
        }
        "quick_cache" => {
            let c = quick_cache::sync::Cache::<Vec<u8>, Bytes>::new(n * 2);
            for (k, v) in keys.iter().zip(&values) {
                c.insert(k.clone(), v.clone());
            }
            let get = |k: &[u8]| c.get(k);
            for k in &keys {
                get(k);
            }
            gets(&get, &keys, &trace)
        }
        other => panic!("unknown cache {other}"),
    };
    println!("{which}: {hits}/{ops} hits");
}

//! Pre-generated workloads: keys, Zipf traces, JSON values.
//!
//! Everything is derived from fixed seeds so a run can be repeated exactly.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// A key id in `0..n`, for the single-threaded hit-ratio simulations.
pub type Id = u32;

/// `len` requests over `n` keys, Zipf(`s`) by popularity rank; ranks map to
/// key ids through a random permutation so hot keys are spread over the id
/// space (and over shards).
pub fn zipf_trace(n: usize, s: f64, len: usize, seed: u64) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    let perm = permutation(n, &mut rng);
    let z = Zipf::new(n as u64, s).expect("valid Zipf parameters");
    (0..len)
        .map(|_| perm[z.sample(&mut rng) as usize - 1])
        .collect()
}

/// Like [`zipf_trace`], but the popularity (rank → key) comes from
/// `popularity_seed` and only the sampling from `seed`: threads or passes
/// that share a `popularity_seed` ask for the same hot keys, as the clients
/// of one service do.
pub fn zipf_trace_shared(n: usize, s: f64, len: usize, popularity_seed: u64, seed: u64) -> Vec<Id> {
    let perm = permutation(n, &mut StdRng::seed_from_u64(popularity_seed));
    let mut rng = StdRng::seed_from_u64(seed);
    let z = Zipf::new(n as u64, s).expect("valid Zipf parameters");
    (0..len)
        .map(|_| perm[z.sample(&mut rng) as usize - 1])
        .collect()
}

fn permutation(n: usize, rng: &mut StdRng) -> Vec<Id> {
    let mut perm: Vec<Id> = (0..n as Id).collect();
    perm.shuffle(rng);
    perm
}

/// Zipf requests interrupted every `every` requests by a one-pass scan of
/// `scan_len` consecutive ids (a range that moves on each time): a backup
/// job or a "list all markets" page walking cold keys once.
pub fn scan_trace(
    n: usize,
    s: f64,
    len: usize,
    every: usize,
    scan_len: usize,
    seed: u64,
) -> Vec<Id> {
    let base = zipf_trace(n, s, len, seed);
    let mut out = Vec::with_capacity(len + len / every * scan_len);
    let mut next_scan = 0usize;
    for (i, id) in base.into_iter().enumerate() {
        if i > 0 && i % every == 0 {
            for j in 0..scan_len {
                out.push(((next_scan + j) % n) as Id);
            }
            next_scan = (next_scan + scan_len) % n;
        }
        out.push(id);
    }
    out
}

/// Zipf requests whose hot set moves every `len / phases` requests: the
/// rank → key mapping is rotated by `n / phases`, so the keys that were
/// hottest become cold at once (markets come and go).
pub fn shifting_trace(n: usize, s: f64, len: usize, phases: usize, seed: u64) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    let perm = permutation(n, &mut rng);
    let z = Zipf::new(n as u64, s).expect("valid Zipf parameters");
    let phase_len = len.div_ceil(phases);
    (0..len)
        .map(|i| {
            let rank = z.sample(&mut rng) as usize - 1;
            let shift = (i / phase_len) * (n / phases);
            perm[(rank + shift) % n]
        })
        .collect()
}

/// The byte key of id `i`: 10 bytes, like a short market or user id.
pub fn key_bytes(i: Id) -> Vec<u8> {
    format!("k{i:09}").into_bytes()
}

/// A 100-byte value for key `i` (digits, so it does not compress to nothing).
pub fn value_100(i: Id) -> bytes::Bytes {
    let mut s = format!(
        "{{\"id\":{i},\"bid\":0.{:04},\"ask\":0.{:04},\"pad\":\"",
        i % 9973,
        i % 7919
    );
    while s.len() < 98 {
        s.push((b'a' + (s.len() as u8 % 26)) as char);
    }
    s.push_str("\"}");
    bytes::Bytes::from(s)
}

// ----- the demo's JSON values (copied from src/bin/embercache/demo.rs) ------

const WORDS: &[&str] = &[
    "will",
    "the",
    "fed",
    "cut",
    "rates",
    "in",
    "march",
    "election",
    "winner",
    "btc",
    "above",
    "price",
    "by",
    "end",
    "of",
    "year",
    "court",
    "ruling",
    "vote",
    "senate",
    "approve",
    "bill",
    "launch",
    "token",
    "report",
    "growth",
    "inflation",
];

fn words(rng: &mut StdRng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

const TS: u64 = 1_764_000_000_000;

pub fn price_json(rng: &mut StdRng, m: u64) -> String {
    let bid: f64 = rng.gen_range(0.01..0.97);
    let spread: f64 = rng.gen_range(0.001..0.03);
    format!(
        r#"{{"market":"m{m}","bid":{bid:.4},"ask":{:.4},"mid":{:.4},"spread":{spread:.4},"ts":{},"src":"ws","v":3}}"#,
        bid + spread,
        bid + spread / 2.0,
        TS + rng.gen_range(0..1_000_000)
    )
}

pub fn market_json(rng: &mut StdRng, m: u64) -> String {
    let desc_len = 300 + (m.wrapping_mul(2_654_435_761) % 1000) as usize;
    format!(
        r#"{{"id":"m{m}","slug":"market-{m}","question":"{}?","description":"{}","outcomes":["YES","NO"],"volume":{:.2},"liquidity":{:.2},"end_date":"2026-{:02}-{:02}T00:00:00Z","group":"g{}","active":true}}"#,
        words(rng, 60),
        words(rng, desc_len),
        rng.gen_range(1_000.0..5_000_000.0),
        rng.gen_range(500.0..900_000.0),
        1 + m % 12,
        1 + m % 28,
        m % 500
    )
}

pub fn position_json(rng: &mut StdRng, u: u64, markets: u64) -> String {
    let n = rng.gen_range(1..8);
    let ps: Vec<String> = (0..n)
        .map(|_| {
            format!(
                r#"{{"market":"m{}","side":"{}","size":{:.2},"avg_price":{:.4},"pnl":{:.2}}}"#,
                rng.gen_range(0..markets),
                if rng.gen_bool(0.5) { "YES" } else { "NO" },
                rng.gen_range(1.0..5000.0),
                rng.gen_range(0.01..0.99),
                rng.gen_range(-500.0..500.0)
            )
        })
        .collect();
    format!(
        r#"{{"user":"u{u}","positions":[{}],"ts":{}}}"#,
        ps.join(","),
        TS + rng.gen_range(0..1_000_000)
    )
}

pub fn search_json(rng: &mut StdRng, q: u64, markets: u64) -> String {
    let n = rng.gen_range(10..26);
    let rs: Vec<String> = (0..n)
        .map(|_| {
            let m = rng.gen_range(0..markets);
            format!(
                r#"{{"id":"m{m}","question":"{}?","volume":{:.2},"price":{:.3}}}"#,
                words(rng, 70),
                rng.gen_range(1_000.0..5_000_000.0),
                rng.gen_range(0.01..0.99)
            )
        })
        .collect();
    format!(
        r#"{{"query":"q{q}","page":0,"sort":"volume","results":[{}]}}"#,
        rs.join(",")
    )
}

pub fn user_stats_json(rng: &mut StdRng, u: u64) -> String {
    format!(
        r#"{{"user":"u{u}","pnl":{:.2},"trades":{},"win_rate":{:.3},"volume":{:.2},"computed_ms":{}}}"#,
        rng.gen_range(-10_000.0..50_000.0),
        rng.gen_range(0..5000),
        rng.gen_range(0.0..1.0),
        rng.gen_range(0.0..2_000_000.0),
        TS + rng.gen_range(0..1_000_000)
    )
}

/// `n` JSON values of 200–1000 bytes for the durable-write workload:
/// positions and markets, truncated-free (whole documents), as the bot writes.
pub fn json_200_1000(n: usize, seed: u64) -> Vec<bytes::Bytes> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        let v = if i.is_multiple_of(2) {
            position_json(&mut rng, i, 5000)
        } else {
            market_json(&mut rng, i)
        };
        i += 1;
        if (200..=1000).contains(&v.len()) {
            out.push(bytes::Bytes::from(v));
        }
    }
    out
}

/// Runs `writers` threads calling `op(thread, seq)` for `secs`; ops/s.
#[allow(dead_code)] // not every binary that includes this module uses it
pub fn hammer(writers: usize, secs: f64, op: impl Fn(usize, u64) + Sync) -> f64 {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..writers {
            let (stop, done, op) = (&stop, &done, &op);
            s.spawn(move || {
                let mut j = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op(t, j);
                    j += 1;
                }
                done.fetch_add(j, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// W5's steady state: 4000 values other than the timed run's (keys `p:<n>`,
/// values `value(0, n)`) written from 16 threads, so the fill shares its
/// commits, then the namespace's dictionary (`train_dictionary`; fewer
/// values than `auto_dictionary`'s 4096, so no second training starts on
/// its own). A namespace does this once in its life.
#[allow(dead_code)] // not every binary that includes this module uses it
pub fn steady_fill(
    c: &embercache::Cache,
    ns: &str,
    value: &(dyn Fn(usize, u64) -> bytes::Bytes + Sync),
) {
    std::thread::scope(|sc| {
        for t in 0..16u64 {
            sc.spawn(move || {
                for j in (t..4000).step_by(16) {
                    c.set(ns, format!("p:{j}").as_bytes(), value(0, j))
                        .expect("fill");
                }
            });
        }
    });
    c.train_dictionary(ns).expect("dictionary");
}

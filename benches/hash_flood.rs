//! Hash flooding (issue 3 §5): get latency with 1,000,000 adversarial keys
//! against 1,000,000 random ones. The adversarial keys are the multiples
//! of 2^20 as little-endian u64s: their low 20 bits are all zero, so a
//! naive hasher (identity, or FxHash-style multiply on an integer key)
//! would send them to a handful of buckets of the hot tier's tables. The
//! hot tier hashes with a per-process random seed (foldhash quality), so
//! both sets must cost the same: p99 within 2x.
//!
//! Run: `cargo bench --bench hash_flood` (set `HASH_FLOOD_KEYS` for a
//! smaller run). Prints both p99s and the ratio; exits 1 above 2x.

use embercache::{Cache, Durability};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Stores every key (8-byte value), then times one `get` of each, in a
/// shuffled order, from the hot tier.
fn measure(keys: &[[u8; 8]]) -> Latency {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::builder()
        .dir(dir.path())
        // Room for every key: 8 + 8 + ENTRY_OVERHEAD bytes each.
        .hot_capacity(1 << 30)
        .durability(Durability::Buffered {
            max_delay: Duration::from_millis(50),
        })
        .open()
        .expect("open");
    for chunk in keys.chunks(10_000) {
        cache
            .set_many(
                "ns",
                chunk.iter().map(|k| (k, k.to_vec())),
                Default::default(),
            )
            .expect("set");
        cache.flush().expect("flush");
    }
    let s = cache.stats();
    assert_eq!(s.hot_entries, keys.len() as u64, "every key is hot");
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(1));
    // One warm pass, then the timed one.
    for &i in &order {
        black_box(cache.get("ns", &keys[i]).expect("get"));
    }
    let mut times = Vec::with_capacity(keys.len());
    for &i in &order {
        let t = Instant::now();
        let v = cache.get("ns", &keys[i]).expect("get");
        times.push(t.elapsed());
        assert!(v.is_some(), "key {i} missing");
    }
    cache.close().expect("close");
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: *times.last().expect("times"),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n: u64 = std::env::var("HASH_FLOOD_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let adversarial: Vec<[u8; 8]> = (0..n).map(|i| (i << 20).to_le_bytes()).collect();
    let mut rng = StdRng::seed_from_u64(42);
    let random: Vec<[u8; 8]> = (0..n).map(|_| rng.r#gen::<u64>().to_le_bytes()).collect();
    let r = measure(&random);
    let a = measure(&adversarial);
    let ratio = a.p99.as_secs_f64() / r.p99.as_secs_f64();
    println!("hash flood, {n} keys, get from the hot tier:");
    println!(
        "  random keys:      p50 {:?}, p99 {:?}, max {:?}",
        r.p50, r.p99, r.max
    );
    println!(
        "  adversarial keys: p50 {:?}, p99 {:?}, max {:?}",
        a.p50, a.p99, a.max
    );
    println!("  p99 ratio adversarial/random: {ratio:.2} (bound 2.00)");
    if ratio > 2.0 {
        eprintln!("adversarial keys are more than 2x slower at p99: hash flooding works");
        std::process::exit(1);
    }
}

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
//! `quick_cache`; keys are 10 bytes, values 100 bytes, Zipf 0.99.

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Zipf};

#[inline(never)]
fn gets(get: &dyn Fn(&[u8]) -> Option<Bytes>, keys: &[Vec<u8>], trace: &[u32]) -> usize {
    let mut hits = 0;
    for &id in trace {
        if std::hint::black_box(get(&keys[id as usize])).is_some() {
            hits += 1;
        }
    }
    hits
}

fn main() {
    let mut a = std::env::args().skip(1);
    let which = a.next().unwrap_or_else(|| "embercache".into());
    let n: usize = a.next().map_or(100_000, |s| s.parse().expect("keys"));
    let ops: usize = a.next().map_or(200_000, |s| s.parse().expect("gets"));
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:09}").into_bytes()).collect();
    let values: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("{i:0100}").into_bytes()))
        .collect();
    let mut rng = StdRng::seed_from_u64(100);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rng);
    let z = Zipf::new(n as u64, 0.99).expect("zipf");
    let trace: Vec<u32> = (0..ops)
        .map(|_| perm[z.sample(&mut rng) as usize - 1])
        .collect();
    let cap = n as u64 * embercache::charge_of(10, 100) as u64 * 5 / 4;
    let hits = match which.as_str() {
        "embercache" => {
            let c = embercache::Cache::builder()
                .in_memory()
                .hot_capacity(cap)
                .open()
                .expect("open");
            for (k, v) in keys.iter().zip(&values) {
                c.set("w", k, v.clone()).expect("set");
            }
            c.flush().expect("flush");
            // Warm: every key read once, so frequencies settle as in W1.
            gets(&|_| None, &keys, &[]);
            let get = |k: &[u8]| c.get("w", k).expect("get");
            for k in &keys {
                get(k);
            }
            gets(&get, &keys, &trace)
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

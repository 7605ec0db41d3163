//! Does one dependent cache miss fewer per get pay at W1's size? Toy
//! hot-tier layouts and quick_cache, on the same keys, values and Zipf
//! 0.99 trace, in one process, rounds rotating which goes first:
//!
//! ```sh
//! cargo build --release --manifest-path benches/peers/Cargo.toml --bin layout
//! benches/peers/target/release/layout 1000000 2000000 15
//! ```
//!
//! - `index+slab`, embercache's shape: a 64-byte chunk of fingerprints and
//!   slot numbers, then the 88-byte entry (the engine's has 96) in a slab
//!   page, then the value's reference count (three misses in a row for a
//!   cold key);
//! - `open`: the same entries in an open-addressed table probed linearly
//!   from the hash, so the first load is the entry itself (two in a row);
//! - `quick_cache` at its defaults;
//! - `index+slab, read-locked`: the first behind a `parking_lot` read lock,
//!   as a hot shard is (quick_cache takes one too).
//!
//! The toys have no namespace, expiry clock or statistics, and take no
//! inserts after the load: what they compare is the layout of a hit.
//! `LAYOUT_LOAD=1.0` sets the open table's highest load factor (default
//! 0.75; the table's size is a power of two, so the load it gets is lower:
//! "table bytes per key" says what it costs).
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Zipf};
#[path = "../toy.rs"]
mod toy;

use std::time::Instant;
use toy::{Entry, Open, Slot, h64};

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk {
    tags: [u32; 8],
    slots: [u32; 7],
    _s: u32,
}

/// Index chunks → slab entries (embercache's shape).
struct ChunkSlab {
    chunks: Vec<Chunk>,
    pages: Vec<Box<[Option<Entry>; 64]>>,
}

impl ChunkSlab {
    fn new(keys: &[Vec<u8>], values: &[Bytes]) -> Self {
        let nchunks = (keys.len() * 7 / 6 / 7).next_power_of_two();
        let mut s = ChunkSlab {
            chunks: vec![
                Chunk {
                    tags: [0; 8],
                    slots: [u32::MAX; 7],
                    _s: 0
                };
                nchunks
            ],
            pages: Vec::new(),
        };
        // Insert in a shuffled order, so slab order is not index order.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(3));
        for (slot, &i) in order.iter().enumerate() {
            if slot % 64 == 0 {
                s.pages.push(Box::new([const { None }; 64]));
            }
            let h = h64(&keys[i]);
            s.pages[slot / 64][slot % 64] = Some(Entry::new(h, &keys[i], &values[i]));
            let t = (h as u32) | 1;
            let mut c = (t as usize) & (nchunks - 1);
            loop {
                let ch = &mut s.chunks[c];
                if let Some(j) = ch.slots.iter().position(|&x| x == u32::MAX) {
                    ch.tags[j] = t;
                    ch.slots[j] = slot as u32;
                    break;
                }
                ch.tags[7] += 1;
                c = (c + 1) & (nchunks - 1);
            }
        }
        s
    }

    #[inline(never)]
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        let h = h64(key);
        let t = (h as u32) | 1;
        let n = self.chunks.len();
        let mut c = (t as usize) & (n - 1);
        loop {
            let ch = &self.chunks[c];
            for j in 0..7 {
                if ch.tags[j] == t {
                    let s = ch.slots[j] as usize;
                    if let Some(e) = &self.pages[s / 64][s % 64]
                        && e.hash == h as u32
                        && &e.key[..e.klen as usize] == key
                        && e.epoch == 0
                        && e.expires == u64::MAX
                    {
                        return Some(e.value.clone());
                    }
                }
            }
            if ch.tags[7] == 0 {
                return None;
            }
            c = (c + 1) & (n - 1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let gets: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(4_000_000);
    let rounds: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(5);
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:09}").into_bytes()).collect();
    let values: Vec<Bytes> = (0..n)
        .map(|i| Bytes::copy_from_slice(format!("{i:0100}").as_bytes()))
        .collect();
    // Promote every value to a shared (reference-counted) `Bytes`, as a
    // cache's stored copy is after its first clone.
    let values: Vec<Bytes> = values
        .iter()
        .map(|v| {
            let c = v.clone();
            drop(c);
            v.clone()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(9);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rng);
    let z = Zipf::new(n as u64, 0.99).unwrap();
    let trace: Vec<u32> = (0..gets)
        .map(|_| perm[z.sample(&mut rng) as usize - 1])
        .collect();
    let cs = ChunkSlab::new(&keys, &values);
    let op = Open::new(&keys, &values);
    let qc = quick_cache::sync::Cache::<Vec<u8>, Bytes>::new(n * 2);
    for i in 0..n {
        qc.insert(keys[i].clone(), values[i].clone());
    }
    let locked = parking_lot::RwLock::new(ChunkSlab::new(&keys, &values));
    let mut res = vec![Vec::new(); 4];
    for r in 0..rounds {
        for w in 0..4 {
            let w = (w + r) % 4;
            let t0 = Instant::now();
            let mut hits = 0usize;
            for &id in &trace {
                let k = &keys[id as usize];
                let v = match w {
                    0 => cs.get(k),
                    1 => op.get(k),
                    2 => qc.get(k.as_slice()),
                    _ => locked.read().get(k),
                };
                if std::hint::black_box(v).is_some() {
                    hits += 1;
                }
            }
            assert_eq!(hits, gets);
            res[w].push(gets as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let med: Vec<f64> = res
        .iter_mut()
        .map(|r| {
            r.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            r[rounds / 2]
        })
        .collect();
    let slab_bytes =
        std::mem::size_of::<Option<Entry>>() as f64 + 64.0 * cs.chunks.len() as f64 / n as f64;
    let open_bytes = (std::mem::size_of::<Slot>() * op.slots.len()) as f64 / n as f64;
    for (w, (name, bytes)) in [
        ("index+slab", slab_bytes),
        ("open", open_bytes),
        ("quick_cache", f64::NAN),
        ("index+slab, read-locked", slab_bytes),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{name:>12}: {:.0} k gets/s (rounds {:?}); table bytes per key {bytes:.0}",
            med[w] / 1e3,
            res[w].iter().map(|x| (x / 1e3).round()).collect::<Vec<_>>()
        );
    }
    println!(
        "open / index+slab {:.2}; index+slab / quick_cache {:.2}; open / quick_cache {:.2}; \
         locked / quick_cache {:.2}",
        med[1] / med[0],
        med[0] / med[2],
        med[1] / med[2],
        med[3] / med[2]
    );
}

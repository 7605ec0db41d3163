//! W5's durable-write loop alone, for profiling and for A/B runs of two
//! builds (the full W5 also starts Redis and foyer):
//!
//! ```sh
//! cargo build --release --manifest-path benches/peers/Cargo.toml --bin w5prof
//! TMPDIR=/dev/shm benches/peers/target/release/w5prof both 16 1.5 3
//! perf record --call-graph dwarf -F 700 benches/peers/target/release/w5prof ember 16 3
//! ```
//!
//! `w5prof WHICH WRITERS SECS [ROUNDS]`: `ember` (embercache `Sync`, WRITERS
//! threads), `raw` (raw redb, one thread, batches of WRITERS) or `both`
//! (alternating, with the per-round ratio). Each run also prints the
//! process CPU time per write, which a shared machine disturbs less than
//! the rate. On tmpfs (`TMPDIR=/dev/shm`) fsync is nearly free, so what is
//! left is the engine's own cost next to redb's.
#[allow(dead_code)]
#[path = "../workload.rs"]
mod workload;

use bytes::Bytes;
use embercache::{Cache, Durability};
use std::time::Instant;
use workload::hammer;

fn cpu_s() -> f64 {
    let st = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let which = a[1].clone();
    let w: usize = a[2].parse().unwrap();
    let secs: f64 = a[3].parse().unwrap();
    let rounds: usize = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(1);
    let values = workload::json_200_1000(4096, 900);
    let value =
        |t: usize, j: u64| -> Bytes { values[(t * 7919 + j as usize) % values.len()].clone() };
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    let ember = || {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::builder()
            .dir(dir.path())
            .durability(Durability::Sync)
            .open()
            .unwrap();
        let c0 = cpu_s();
        let r = hammer(w, secs, |t, j| {
            c.set("w", format!("w{t}:{j}").as_bytes(), value(t, j))
                .unwrap()
        });
        let cpu = (cpu_s() - c0) / (r * secs) * 1e6;
        c.close().unwrap();
        println!("  ember cpu/op {cpu:.1} us");
        r
    };
    let raw = || {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
        let mut j = 0u64;
        let c0 = cpu_s();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let tx = db.begin_write().unwrap();
            {
                let mut tab = tx.open_table(table).unwrap();
                for _ in 0..w {
                    let v: Bytes = value(0, j);
                    tab.insert(format!("w0:{j}").as_bytes(), &v[..]).unwrap();
                    j += 1;
                }
            }
            tx.commit().unwrap();
        }
        println!("  raw cpu/op {:.1} us", (cpu_s() - c0) / j as f64 * 1e6);
        j as f64 / start.elapsed().as_secs_f64()
    };
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        match which.as_str() {
            "ember" => println!("ember {w}: {:.0}/s", ember()),
            "raw" => println!("raw {w}: {:.0}/s", raw()),
            _ => {
                let e = ember();
                let r = raw();
                println!("ember {e:.0} raw {r:.0} ratio {:.3}", e / r);
                ratios.push(e / r);
            }
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("median ratio {:.3}", ratios[ratios.len() / 2]);
    }
}

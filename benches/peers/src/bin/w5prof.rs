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
//! left is the engine's own cost next to redb's. `ember` runs also print
//! ops per commit, the commit cycle and the time inside the commit.
//!
//! Environment: `W5_SYNC_US=150` puts both stores on an in-memory redb
//! whose fsync sleeps that long (a steady disk for A/B runs while the real
//! one is shared); `W5_RAW_KEYS=ember` makes `raw` insert the keys the
//! embercache writers use (one sequence per writer, so a batch of N lands
//! on up to N leaves) instead of one sequence; `W5_NOCOMP=1` stores
//! embercache's values raw (what compression costs); `W5_BUFFERED=1` runs
//! `ember` in the default `Buffered` mode (rate including a final flush);
//! `W5_RATIO=1` prints, for `ember` runs, the compression ratio of each
//! 100 ms and from when the namespace's first dictionary is in use;
//! `W5_STEADY=1` writes 4000 other values and trains the dictionary before
//! an `ember` run (W5's steady-state rows).
#[allow(dead_code)]
#[path = "../workload.rs"]
mod workload;

use bytes::Bytes;
use embercache::{Cache, Durability};
use std::time::Instant;
use workload::hammer;

/// An in-memory redb whose `sync_data` sleeps `W5_SYNC_US` µs: a disk with
/// a steady fsync latency, for A/B runs while the real disk is shared.
#[derive(Debug)]
struct SlowSync(redb::backends::InMemoryBackend, std::time::Duration);

type IoResult<T> = Result<T, std::io::Error>;

impl redb::StorageBackend for SlowSync {
    fn len(&self) -> IoResult<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> IoResult<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> IoResult<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> IoResult<()> {
        std::thread::sleep(self.1);
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> IoResult<()> {
        self.0.write(offset, data)
    }
}

fn slow_sync() -> Option<std::time::Duration> {
    let us: u64 = std::env::var("W5_SYNC_US").ok()?.parse().ok()?;
    Some(std::time::Duration::from_micros(us))
}

fn cpu_s() -> f64 {
    let st = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Prints the compression ratio of the values `c`'s namespace `w` took in
/// each 100 ms until `stop`, marked `d` once its dictionary is in use.
fn ratio_trace(c: &Cache, start: Instant, stop: &std::sync::atomic::AtomicBool) {
    let mut last = (0u64, 0u64);
    let mut out = String::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let st = c.stats();
        if let Some(n) = st.namespaces.iter().find(|n| n.name == "w") {
            let raw = n.raw_bytes_written - last.0;
            let stored = n.stored_bytes_written - last.1;
            last = (n.raw_bytes_written, n.stored_bytes_written);
            out += &format!(
                " {:.0} ms {:.2}{}",
                start.elapsed().as_secs_f64() * 1e3,
                raw as f64 / stored.max(1) as f64,
                if n.dictionary.is_some() { " d" } else { "" }
            );
        }
    }
    println!("  ratio per 100 ms:{out}");
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
        // W5_BUFFERED=1: the default `Buffered` mode, rate including a
        // final flush (W5's Buffered rows).
        let buffered = std::env::var_os("W5_BUFFERED").is_some();
        let mut b = Cache::builder();
        if !buffered {
            b = b.durability(Durability::Sync);
        }
        b = match slow_sync() {
            Some(d) => {
                b.storage_backend(move || Ok(SlowSync(redb::backends::InMemoryBackend::new(), d)))
            }
            None => b.dir(dir.path()),
        };
        // W5_NOCOMP=1: the namespace stores values raw (what compression
        // costs the write path).
        if std::env::var_os("W5_NOCOMP").is_some() {
            b = b.namespace("w", embercache::NamespacePolicy::default().no_compression());
        }
        let c = b.open().unwrap();
        // W5_STEADY=1: W5's steady state: 4000 other values and the
        // namespace's dictionary before the timed run.
        if std::env::var_os("W5_STEADY").is_some() {
            workload::steady_fill(&c, "w", &value);
        }
        let c0 = cpu_s();
        let s0 = c.stats();
        let start = Instant::now();
        // W5_RATIO=1: the compression ratio of each 100 ms of the run
        // (`d` once the namespace's dictionary is in use).
        let trace = std::env::var_os("W5_RATIO").is_some();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut r = std::thread::scope(|sc| {
            if trace {
                sc.spawn(|| ratio_trace(&c, start, &stop));
            }
            let r = hammer(w, secs, |t, j| {
                c.set("w", format!("w{t}:{j}").as_bytes(), value(t, j))
                    .unwrap()
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        });
        if buffered {
            c.flush().unwrap();
            r = r * secs / start.elapsed().as_secs_f64();
        }
        let cpu = (cpu_s() - c0) / (r * secs) * 1e6;
        let s1 = c.stats();
        let commits = (s1.commits - s0.commits).max(1) as f64;
        println!(
            "  ember {:.1} ops/commit, {:.0} us/commit cycle, {:.0} us in commit",
            (s1.committed_ops - s0.committed_ops) as f64 / commits,
            secs * 1e6 / commits,
            s1.commit_latency_avg.as_micros() as f64
        );
        c.close().unwrap();
        println!("  ember cpu/op {cpu:.1} us");
        r
    };
    let raw = || {
        let dir = tempfile::tempdir().unwrap();
        let db = match slow_sync() {
            Some(d) => redb::Builder::new()
                .create_with_backend(SlowSync(redb::backends::InMemoryBackend::new(), d))
                .unwrap(),
            None => redb::Database::create(dir.path().join("raw.redb")).unwrap(),
        };
        let mut j = 0u64;
        let spread = std::env::var("W5_RAW_KEYS").is_ok_and(|k| k == "ember");
        let c0 = cpu_s();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let tx = db.begin_write().unwrap();
            {
                let mut tab = tx.open_table(table).unwrap();
                for t in 0..w {
                    // W5_RAW_KEYS=ember: the keys embercache's writers
                    // use (`w{t}:{n}`, one sequence per writer, so a
                    // batch lands on up to `w` leaves); else one sequence.
                    let v: Bytes = value(0, j);
                    let k = if spread {
                        format!("w{t}:{}", j / w as u64)
                    } else {
                        format!("w0:{j}")
                    };
                    tab.insert(k.as_bytes(), &v[..]).unwrap();
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

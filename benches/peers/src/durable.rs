//! W5 durable writes: embercache `Sync` (group commit) and `Buffered`
//! against raw redb with the same batch sizes and Redis with an AOF.

use crate::Scale;
use crate::redis_srv::RedisServer;
use crate::report::{Runs, Table, dur_ns, si};
use crate::workload;
use bytes::Bytes;
use embercache::{Cache, Durability};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WRITERS: [usize; 4] = [1, 4, 16, 64];

/// fsync latency of the disk under the temp dir: 4 KiB write + fdatasync.
fn fsync_latency() -> Histogram<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("probe")).expect("probe file");
    let block = vec![7u8; 4096];
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..300 {
        let t = Instant::now();
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        if i >= 20 {
            let _ = h.record(t.elapsed().as_nanos() as u64);
        }
    }
    h
}

/// Runs `writers` threads calling `op(thread, seq)` for `secs`; ops/s.
fn hammer(writers: usize, secs: f64, op: impl Fn(usize, u64) + Sync) -> f64 {
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

pub fn w5(scale: &Scale) -> String {
    let secs = scale.secs;
    let values = workload::json_200_1000(4096, 900);
    let avg_len = values.iter().map(|v| v.len()).sum::<usize>() as f64 / values.len() as f64;
    let value = |t: usize, j: u64| values[(t * 7919 + j as usize) % values.len()].clone();
    println!("W5 durable writes");
    let fs = fsync_latency();
    let mut s = String::new();
    let _ = writeln!(s, "## W5 durable writes\n");
    let _ = writeln!(
        s,
        "Disk first: 4 KiB write + `fdatasync` on the temp dir's file system, 280 samples: p50 {}, p99 {}, \
         mean {}. A single-writer durable store cannot beat about 1 / p50 = {} commits/s.\n",
        dur_ns(fs.value_at_quantile(0.5) as f64),
        dur_ns(fs.value_at_quantile(0.99) as f64),
        dur_ns(fs.mean()),
        si(1e9 / fs.value_at_quantile(0.5) as f64)
    );
    let _ = writeln!(
        s,
        "Values: {} JSON documents of 200–1000 bytes (markets and positions from the demo generator, mean {avg_len:.0} \
         bytes), new keys. Each cell: {} runs of {secs} s, writes/s median (min–max). embercache compresses \
         (zstd 3, default) and writes a 40-byte header per record; raw redb stores the JSON as is, one thread, \
         one write transaction (`Durability::Immediate`) per batch. Redis: `--appendonly yes`, one connection \
         per writer, SET with pipeline depth 1.\n",
        values.len(),
        scale.runs
    );
    let mut t = Table::new(&[
        "store",
        "writers / batch",
        "writes/s median (min–max)",
        "avg ops per commit",
    ]);
    let mut ember_sync = Vec::new();
    for &w in &WRITERS {
        let mut runs = Runs::default();
        let mut group = Runs::default();
        for _ in 0..scale.runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = Cache::builder()
                .dir(dir.path())
                .durability(Durability::Sync)
                .open()
                .expect("open");
            let s0 = c.stats();
            runs.0.push(hammer(w, secs, |t, j| {
                c.set("w", format!("w{t}:{j}").as_bytes(), value(t, j))
                    .expect("sync set")
            }));
            let s1 = c.stats();
            group.0.push(
                (s1.committed_ops - s0.committed_ops) as f64
                    / (s1.commits - s0.commits).max(1) as f64,
            );
            c.close().expect("close");
        }
        ember_sync.push(runs.median());
        t.row(vec![
            "embercache Sync".into(),
            w.to_string(),
            runs.rate(),
            format!("{:.1}", group.median()),
        ]);
    }
    for &w in &[1usize, 4] {
        let mut runs = Runs::default();
        for _ in 0..scale.runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = Cache::builder().dir(dir.path()).open().expect("open");
            let start = Instant::now();
            let n = hammer(w, secs, |t, j| {
                c.set("w", format!("w{t}:{j}").as_bytes(), value(t, j))
                    .expect("buffered set")
            }) * secs;
            c.flush().expect("flush");
            runs.0.push(n / start.elapsed().as_secs_f64());
            c.close().expect("close");
        }
        t.row(vec![
            "embercache Buffered 10 ms (incl. final flush)".into(),
            w.to_string(),
            runs.rate(),
            "–".into(),
        ]);
    }
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    let mut redb_rates = Vec::new();
    for &b in &WRITERS {
        let mut runs = Runs::default();
        for _ in 0..scale.runs {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = redb::Database::create(dir.path().join("raw.redb")).expect("redb");
            let mut j = 0u64;
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                let tx = db.begin_write().expect("begin_write");
                {
                    let mut tab = tx.open_table(table).expect("table");
                    for _ in 0..b {
                        let v: Bytes = value(0, j);
                        tab.insert(format!("w0:{j}").as_bytes(), &v[..])
                            .expect("insert");
                        j += 1;
                    }
                }
                tx.commit().expect("commit");
            }
            runs.0.push(j as f64 / start.elapsed().as_secs_f64());
        }
        redb_rates.push(runs.median());
        t.row(vec![
            "raw redb (1 thread)".into(),
            format!("batch {b}"),
            runs.rate(),
            b.to_string(),
        ]);
    }
    let mut redis_always = Vec::new();
    for mode in ["always", "everysec"] {
        let Some(srv) =
            RedisServer::start(&["--save", "", "--appendonly", "yes", "--appendfsync", mode])
        else {
            t.row(vec![
                "Redis".into(),
                "–".into(),
                "redis-server not found".into(),
                "–".into(),
            ]);
            break;
        };
        for &w in &WRITERS {
            let mut runs = Runs::default();
            for _ in 0..scale.runs {
                let cons: Vec<_> = (0..w)
                    .map(|_| std::sync::Mutex::new(srv.connection()))
                    .collect();
                runs.0.push(hammer(w, secs, |t, j| {
                    let mut c = cons[t].lock().expect("connection");
                    let _: () = redis::cmd("SET")
                        .arg(format!("w{t}:{j}").as_bytes())
                        .arg(&value(t, j)[..])
                        .query(&mut *c)
                        .expect("SET");
                }));
            }
            if mode == "always" {
                redis_always.push(runs.median());
            }
            t.row(vec![
                format!("Redis appendfsync {mode} (networked)"),
                w.to_string(),
                runs.rate(),
                "–".into(),
            ]);
        }
    }
    s.push_str(&t.md());
    let _ = writeln!(
        s,
        "\n| check (medians) | 1 | 4 | 16 | 64 | target |\n|---|---|---|---|---|---|"
    );
    let cells = |f: &dyn Fn(usize) -> String| {
        WRITERS
            .iter()
            .enumerate()
            .map(|(i, _)| f(i))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(
        s,
        "| embercache Sync (N writers) / raw redb (batch N) | {} | ≥ 0.87 (overhead ≤ 15 %) |",
        cells(&|i| format!("{:.2}", ember_sync[i] / redb_rates[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync N writers / 1 writer | {} | ≥ 8 at 16 |",
        cells(&|i| format!("{:.1}×", ember_sync[i] / ember_sync[0]))
    );
    if redis_always.len() == WRITERS.len() {
        let _ = writeln!(
            s,
            "| embercache Sync / Redis appendfsync always | {} | ≥ 1 |",
            cells(&|i| format!("{:.2}", ember_sync[i] / redis_always[i]))
        );
    }
    s.push('\n');
    s
}

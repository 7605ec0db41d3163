//! W5 durable writes: embercache `Sync` (group commit) and `Buffered`
//! against raw redb with the same batch sizes and Redis with an AOF.

use crate::Scale;
use crate::redis_srv::RedisServer;
use crate::report::{Runs, Table, dur_ns, si};
use crate::workload::{self, hammer};
use bytes::Bytes;
use embercache::{Cache, Durability};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

const WRITERS: [usize; 4] = [1, 4, 16, 64];

/// Flushes every dirty page of the machine (`sync`), so that a timed run
/// does not pay for what the run before it left in the page cache: Redis
/// `everysec` fsyncs its AOF in the background up to a second after its
/// run, and the next store's run would share the disk with it.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

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
         bytes), new keys. Each cell: {} runs of {secs} s, writes/s median (min–max); before each timed run \
         `sync` flushes what the store before it left dirty (Redis `everysec` fsyncs its AOF up to a second \
         after its run), so no store shares the disk with another's writes. embercache compresses \
         (zstd 3, default; the *compression off* rows store the values raw, to tell the codec's cost from \
         the engine's) and writes a 40-byte header per record. Each embercache run opens a new cache, whose \
         namespace trains its first dictionary after 4096 writes, inside the timed run; the *steady state* \
         rows first write 4000 other values and train the dictionary (`train_dictionary`), as a namespace \
         does once in its life, and then time the same run; raw redb stores the JSON as is, one thread, \
         one write transaction (`Durability::Immediate`) per batch, keys `w0:<n>` in one sequence (a batch \
         lands on one or two B-tree leaves); the *embercache's keys* rows insert the keys the N embercache \
         writers write (`w<t>:<n>`, one of each writer per batch, so a batch touches up to N leaves, as a \
         group commit of N writers does). Redis: `--appendonly yes`, one connection \
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
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("entries");
    // One embercache Sync run with `w` writers: (writes/s, ops per commit).
    // `compress` false: the namespace stores values raw, which separates
    // what zstd costs from what the engine costs. `steady`: 4000 other
    // values and the namespace's dictionary before the timed run
    // (`workload::steady_fill`): the run then measures a namespace in its
    // steady state instead of one that trains its dictionary during it.
    let ember = |w: usize, compress: bool, steady: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Cache::builder()
            .dir(dir.path())
            .durability(Durability::Sync);
        if !compress {
            b = b.namespace("w", embercache::NamespacePolicy::default().no_compression());
        }
        let c = b.open().expect("open");
        if steady {
            workload::steady_fill(&c, "w", &value);
        }
        settle();
        let s0 = c.stats();
        let rate = hammer(w, secs, |t, j| {
            c.set("w", format!("w{t}:{j}").as_bytes(), value(t, j))
                .expect("sync set")
        });
        let s1 = c.stats();
        c.close().expect("close");
        (
            rate,
            (s1.committed_ops - s0.committed_ops) as f64 / (s1.commits - s0.commits).max(1) as f64,
        )
    };
    // One raw redb run: one thread, one transaction per `b` inserts. Keys
    // `w0:{n}` (one sequence: a batch lands on one or two leaves), or with
    // `same_keys` embercache's (`w{t}:{n}`, one sequence per writer, a
    // batch holding one key of each: up to `b` leaves per transaction).
    let raw = |b: usize, same_keys: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("raw.redb")).expect("redb");
        settle();
        let mut j = 0u64;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let tx = db.begin_write().expect("begin_write");
            {
                let mut tab = tx.open_table(table).expect("table");
                for t in 0..b {
                    let v: Bytes = value(0, j);
                    let key = if same_keys {
                        format!("w{t}:{}", j / b as u64)
                    } else {
                        format!("w0:{j}")
                    };
                    tab.insert(key.as_bytes(), &v[..]).expect("insert");
                    j += 1;
                }
            }
            tx.commit().expect("commit");
        }
        j as f64 / start.elapsed().as_secs_f64()
    };
    let servers: Vec<(&str, Option<RedisServer>)> = ["always", "everysec"]
        .into_iter()
        .map(|mode| {
            (
                mode,
                RedisServer::start(&["--save", "", "--appendonly", "yes", "--appendfsync", mode]),
            )
        })
        .collect();
    let redis_run = |srv: &RedisServer, w: usize| {
        let cons: Vec<_> = (0..w)
            .map(|_| std::sync::Mutex::new(srv.connection()))
            .collect();
        settle();
        hammer(w, secs, |t, j| {
            let mut c = cons[t].lock().expect("connection");
            let _: () = redis::cmd("SET")
                .arg(format!("w{t}:{j}").as_bytes())
                .arg(&value(t, j)[..])
                .query(&mut *c)
                .expect("SET");
        })
    };
    // The machine is shared and its fsync latency drifts by 5x within a
    // minute, so the stores are interleaved run by run (embercache, raw
    // redb, Redis always, Redis everysec for each writer count) and the
    // ratios are taken per run, between neighbours, then their median.
    let n = WRITERS.len();
    let mut ember_runs = vec![Runs::default(); n];
    let mut steady_runs = vec![Runs::default(); n];
    let mut steady_vs_redb = vec![Runs::default(); n];
    let mut steady_vs_one = vec![Runs::default(); n];
    let mut raw_value_runs = vec![Runs::default(); n];
    let mut vs_redb_raw_values = vec![Runs::default(); n];
    let mut group = vec![Runs::default(); n];
    let mut redb_runs = vec![Runs::default(); n];
    let mut same_runs = vec![Runs::default(); n];
    let mut vs_same = vec![Runs::default(); n];
    let mut redis_runs = vec![vec![Runs::default(); n]; servers.len()];
    let (mut vs_redb, mut vs_always, mut vs_one) = (
        vec![Runs::default(); n],
        vec![Runs::default(); n],
        vec![Runs::default(); n],
    );
    for _ in 0..scale.runs {
        let (mut first, mut steady_first) = (f64::NAN, f64::NAN);
        for (i, &w) in WRITERS.iter().enumerate() {
            let (e, g) = ember(w, true, false);
            let (st, _) = ember(w, true, true);
            let (u, _) = ember(w, false, false);
            let r = raw(w, false);
            raw_value_runs[i].0.push(u);
            vs_redb_raw_values[i].0.push(u / r);
            let rs = raw(w, true);
            same_runs[i].0.push(rs);
            vs_same[i].0.push(e / rs);
            ember_runs[i].0.push(e);
            group[i].0.push(g);
            redb_runs[i].0.push(r);
            vs_redb[i].0.push(e / r);
            if i == 0 {
                first = e;
                steady_first = st;
            }
            vs_one[i].0.push(e / first);
            steady_runs[i].0.push(st);
            steady_vs_redb[i].0.push(st / r);
            steady_vs_one[i].0.push(st / steady_first);
            for (k, (mode, srv)) in servers.iter().enumerate() {
                if let Some(srv) = srv {
                    let x = redis_run(srv, w);
                    redis_runs[k][i].0.push(x);
                    if *mode == "always" {
                        vs_always[i].0.push(e / x);
                    }
                }
            }
        }
    }
    for (i, &w) in WRITERS.iter().enumerate() {
        t.row(vec![
            "embercache Sync".into(),
            w.to_string(),
            ember_runs[i].rate(),
            format!("{:.1}", group[i].median()),
        ]);
    }
    for (i, &w) in WRITERS.iter().enumerate() {
        t.row(vec![
            "embercache Sync, namespace with its dictionary (steady state)".into(),
            w.to_string(),
            steady_runs[i].rate(),
            "–".into(),
        ]);
    }
    for (i, &w) in WRITERS.iter().enumerate() {
        t.row(vec![
            "embercache Sync, compression off".into(),
            w.to_string(),
            raw_value_runs[i].rate(),
            "–".into(),
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
    for (i, &b) in WRITERS.iter().enumerate() {
        t.row(vec![
            "raw redb (1 thread)".into(),
            format!("batch {b}"),
            redb_runs[i].rate(),
            b.to_string(),
        ]);
    }
    for (i, &b) in WRITERS.iter().enumerate() {
        t.row(vec![
            "raw redb (1 thread), embercache's keys".into(),
            format!("batch {b}"),
            same_runs[i].rate(),
            b.to_string(),
        ]);
    }
    for (k, (mode, srv)) in servers.iter().enumerate() {
        if srv.is_none() {
            t.row(vec![
                "Redis".into(),
                "–".into(),
                "redis-server not found".into(),
                "–".into(),
            ]);
            break;
        }
        for (i, &w) in WRITERS.iter().enumerate() {
            t.row(vec![
                format!("Redis appendfsync {mode} (networked)"),
                w.to_string(),
                redis_runs[k][i].rate(),
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
    let ratio = |r: &Runs| format!("{:.2} ({:.2}–{:.2})", r.median(), r.min(), r.max());
    let _ = writeln!(
        s,
        "| embercache Sync (N writers) / raw redb (batch N) | {} | ≥ 0.87 (overhead ≤ 15 %) |",
        cells(&|i| ratio(&vs_redb[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync (N writers) / raw redb with embercache's keys (batch N) | {} | – |",
        cells(&|i| ratio(&vs_same[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync, compression off / raw redb (batch N) | {} | – |",
        cells(&|i| ratio(&vs_redb_raw_values[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync N writers / 1 writer | {} | ≥ 8 at 16 |",
        cells(&|i| ratio(&vs_one[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync steady state (N writers) / raw redb (batch N) | {} | ≥ 0.87 (overhead ≤ 15 %) |",
        cells(&|i| ratio(&steady_vs_redb[i]))
    );
    let _ = writeln!(
        s,
        "| embercache Sync steady state, N writers / 1 writer | {} | ≥ 8 at 16 |",
        cells(&|i| ratio(&steady_vs_one[i]))
    );
    if vs_always.iter().all(|r| !r.0.is_empty()) {
        let _ = writeln!(
            s,
            "| embercache Sync / Redis appendfsync always | {} | ≥ 1 |",
            cells(&|i| ratio(&vs_always[i]))
        );
    }
    let _ = writeln!(
        s,
        "\nRatios are medians (min–max) of per-run ratios: each run measures the stores back to back, so a \
         slow phase of the shared disk hits both sides of a ratio."
    );
    s.push('\n');
    s
}

//! W1 hot read and W2 mixed with eviction: throughput and latency with 1
//! and 2 threads, byte keys and `Bytes` values for every cache.

use crate::Scale;
use crate::charts;
use crate::peers::{self, Foyer, Kv, Moka, Quick};
use crate::redis_srv::RedisServer;
use crate::report::{Runs, Table, dur_ns, si};
use crate::workload::{self, Id};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::Barrier;
use std::time::Instant;

/// Builds one cache of a table's rows.
type MakeKv = Box<dyn Fn() -> Box<dyn Kv>>;

/// Runs `body(thread, trace)` on one thread per trace, started together;
/// returns the wall time in seconds.
fn timed<F: Fn(usize, &[Id]) + Sync>(traces: &[Vec<Id>], body: F) -> f64 {
    let barrier = Barrier::new(traces.len() + 1);
    std::thread::scope(|s| {
        for (t, tr) in traces.iter().enumerate() {
            let (b, body) = (&barrier, &body);
            s.spawn(move || {
                b.wait();
                body(t, tr);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // scope joins the workers when this closure returns
        start
    })
    .elapsed()
    .as_secs_f64()
}

struct Data {
    keys: Vec<Vec<u8>>,
    values: Vec<Bytes>,
}

impl Data {
    fn new(n: usize) -> Self {
        Data {
            keys: (0..n as Id).map(workload::key_bytes).collect(),
            values: (0..n as Id).map(workload::value_100).collect(),
        }
    }
    fn bytes(&self) -> u64 {
        self.keys
            .iter()
            .zip(&self.values)
            .map(|(k, v)| peers::charge(k.len(), v.len()))
            .sum()
    }
}

/// Latency of single gets, `per_thread` ops per thread, all threads at once.
fn latencies(c: &dyn Kv, d: &Data, traces: &[Vec<Id>]) -> Histogram<u64> {
    let hists: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = traces
            .iter()
            .map(|tr| {
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new(3).expect("histogram");
                    for &id in tr {
                        let t = Instant::now();
                        std::hint::black_box(c.get(&d.keys[id as usize]));
                        let _ = h.record(t.elapsed().as_nanos() as u64);
                    }
                    h
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("latency thread"))
            .collect()
    });
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for h in hists {
        all.add(h).expect("merge");
    }
    all
}

pub fn w1(scale: &Scale) -> String {
    let n = scale.keys(1_000_000);
    let ops = scale.ops(2_000_000);
    let d = Data::new(n);
    let cap = d.bytes() * 5 / 4;
    println!("W1 hot read: {n} keys, capacity {cap} bytes");
    let mut t = Table::new(&[
        "cache",
        "threads",
        "gets/s median (min–max)",
        "p50",
        "p99",
        "p99.9",
        "resident",
    ]);
    // Per cache and thread count: each run's gets/s, in run order.
    let mut per_run: Vec<(String, usize, Runs)> = Vec::new();
    let peers: Vec<(&str, MakeKv)> = vec![
        (
            "embercache",
            Box::new(move || Box::new(peers::ember_ns(cap, None))),
        ),
        (
            "embercache (by name)",
            Box::new(move || Box::new(peers::ember(cap, None))),
        ),
        ("moka", Box::new(move || Box::new(Moka::new(cap)))),
        (
            "quick_cache",
            Box::new(move || Box::new(Quick::new(cap, n))),
        ),
        (
            "foyer (memory)",
            Box::new(move || Box::new(Foyer::new(cap))),
        ),
    ];
    // Every cache is loaded first, one after the other (each load's
    // allocations stay together, as in a process holding one cache), and
    // the timed runs then take turns: run r of every cache, then run r + 1.
    // A drift in the machine's speed (a shared VM's neighbours) then
    // reaches every cache's runs alike instead of whichever cache was
    // being measured when it came.
    let loaded: Vec<(&str, Box<dyn Kv>, usize)> = peers
        .iter()
        .map(|(name, make)| {
            let c = make();
            for (i, k) in d.keys.iter().enumerate() {
                c.set(k, d.values[i].clone());
            }
            c.settle();
            let resident = d.keys.iter().filter(|k| c.get(k).is_some()).count();
            (*name, c, resident)
        })
        .collect();
    let mut rows: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for threads in [1usize, 2] {
        let traces: Vec<Vec<Id>> = (0..threads)
            .map(|i| workload::zipf_trace(n, 0.99, ops, 100 + i as u64))
            .collect();
        let mut runs: Vec<Runs> = loaded.iter().map(|_| Runs::default()).collect();
        for _ in 0..scale.runs {
            for (i, (_, c, _)) in loaded.iter().enumerate() {
                let secs = timed(&traces, |_, tr| {
                    for &id in tr {
                        std::hint::black_box(c.get(&d.keys[id as usize]));
                    }
                });
                runs[i].0.push((ops * threads) as f64 / secs);
            }
        }
        let lat_traces: Vec<Vec<Id>> = traces
            .iter()
            .map(|tr| tr[..tr.len().min(1_000_000)].to_vec())
            .collect();
        for (i, (name, c, resident)) in loaded.iter().enumerate() {
            let h = latencies(c.as_ref(), &d, &lat_traces);
            let median = runs[i].median();
            per_run.push((name.to_string(), threads, Runs(runs[i].0.clone())));
            charts::point(&charts::W1_THREADS, name, threads as f64, median);
            if threads == 1 {
                for (x, q) in [(1.0, 0.5), (2.0, 0.99), (3.0, 0.999)] {
                    charts::point(&charts::W1_LATENCY, name, x, h.value_at_quantile(q) as f64);
                }
            }
            rows.push((
                i,
                threads,
                vec![
                    name.to_string(),
                    threads.to_string(),
                    runs[i].rate(),
                    dur_ns(h.value_at_quantile(0.5) as f64),
                    dur_ns(h.value_at_quantile(0.99) as f64),
                    dur_ns(h.value_at_quantile(0.999) as f64),
                    format!("{:.1} %", 100.0 * *resident as f64 / n as f64),
                ],
            ));
        }
    }
    drop(loaded);
    // The table lists each cache's rows together, as before.
    rows.sort_by_key(|r| (r.0, r.1));
    for (_, _, row) in rows {
        t.row(row);
    }
    let redis_rows = redis_w1(&d, n, scale);
    for r in redis_rows {
        t.row(r);
    }
    let mut s = String::new();
    let _ = writeln!(s, "## W1 hot read\n");
    let _ = writeln!(
        s,
        "{n} keys (10-byte keys, 100-byte values), capacity 1.25 × their charged bytes so every key is resident, \
         Zipf 0.99 gets, {ops} gets per thread per run, {} runs; gets/s is the median with min–max. Every cache is \
         loaded first; the runs then take turns (run 1 of each cache, then run 2, …), so a drift in the \
         machine's speed reaches every cache alike. Latency: a \
         separate pass of up to 1 M timed gets per thread (each op timed with `Instant::now()`, which adds about \
         20–40 ns). Redis is a networked baseline (loopback, one connection per thread, fewer ops). \
         `embercache` reads through a `NamespaceHandle` (`Cache::namespace`), as a program holding one per \
         namespace does; `embercache (by name)` calls `Cache::get(ns, key)`, which finds the namespace by \
         its name on each call.\n",
        scale.runs
    );
    s.push_str(&t.md());
    let find = |name: &str, th: usize| {
        per_run
            .iter()
            .find(|m| m.0 == name && m.1 == th)
            .map(|m| &m.2)
    };
    let _ = writeln!(
        s,
        "\n| ratio | median gets/s, 1 thread | per run, 1 thread | median gets/s, 2 threads | per run, 2 threads | target |\n|---|---|---|---|---|---|"
    );
    for ours in ["embercache", "embercache (by name)"] {
        for (peer, target) in [
            ("quick_cache", "≥ 1.1×"),
            ("moka", "≥ 3×"),
            ("foyer (memory)", "–"),
        ] {
            let mut cells = Vec::new();
            for th in [1, 2] {
                match (find(ours, th), find(peer, th)) {
                    (Some(a), Some(b)) => {
                        cells.push(format!("{:.2}×", a.median() / b.median()));
                        let r = Runs(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect());
                        cells.push(format!(
                            "{:.2}× ({:.2}–{:.2})",
                            r.median(),
                            r.min(),
                            r.max()
                        ));
                    }
                    _ => cells.extend(["–".to_string(), "–".to_string()]),
                }
            }
            let _ = writeln!(s, "| {ours} / {peer} | {} | {target} |", cells.join(" | "));
        }
    }
    let _ = writeln!(
        s,
        "\n*median gets/s*: the ratio of the two medians above; *per run*: the median (min–max) of the \
         ratios of the two caches' runs with the same number, which ran seconds apart, so a drift in the \
         machine's speed between runs cancels out (as W5's and W8's ratios are taken)."
    );
    s.push('\n');
    s
}

fn redis_w1(d: &Data, n: usize, scale: &Scale) -> Vec<Vec<String>> {
    let Some(srv) = RedisServer::start(&["--save", "", "--appendonly", "no"]) else {
        return vec![vec![
            "Redis".into(),
            "–".into(),
            "redis-server not found".into(),
        ]];
    };
    let mut con = srv.connection();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET")
                .arg(&d.keys[i][..])
                .arg(&d.values[i][..])
                .ignore();
        }
        let _: () = p.query(&mut con).expect("redis load");
    }
    let mut rows = Vec::new();
    for depth in [1usize, 16] {
        for threads in [1usize, 2] {
            let ops = scale.ops(200_000) * if depth == 16 { 4 } else { 1 };
            let traces: Vec<Vec<Id>> = (0..threads)
                .map(|i| workload::zipf_trace(n, 0.99, ops, 100 + i as u64))
                .collect();
            let mut runs = Runs::default();
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let hists = parking_hist(threads);
            for _ in 0..scale.runs.min(3) {
                let secs = timed(&traces, |t, tr| {
                    let mut con = srv.connection();
                    let mut h = Histogram::<u64>::new(3).expect("histogram");
                    for chunk in tr.chunks(depth) {
                        let start = Instant::now();
                        if depth == 1 {
                            let v: Option<Vec<u8>> = redis::cmd("GET")
                                .arg(&d.keys[chunk[0] as usize][..])
                                .query(&mut con)
                                .expect("GET");
                            std::hint::black_box(v);
                        } else {
                            let mut p = redis::pipe();
                            for &id in chunk {
                                p.cmd("GET").arg(&d.keys[id as usize][..]);
                            }
                            let v: Vec<Option<Vec<u8>>> = p.query(&mut con).expect("pipelined GET");
                            std::hint::black_box(v);
                        }
                        let _ = h.record(start.elapsed().as_nanos() as u64);
                    }
                    hists[t].lock().expect("hist").add(h).expect("merge");
                });
                runs.0.push((ops * threads) as f64 / secs);
            }
            for h in &hists {
                hist.add(&*h.lock().expect("hist")).expect("merge");
            }
            rows.push(vec![
                format!(
                    "Redis (networked, pipeline {depth}{})",
                    if depth > 1 {
                        ", latency per pipeline"
                    } else {
                        ""
                    }
                ),
                threads.to_string(),
                runs.rate(),
                dur_ns(hist.value_at_quantile(0.5) as f64),
                dur_ns(hist.value_at_quantile(0.99) as f64),
                dur_ns(hist.value_at_quantile(0.999) as f64),
                "100 %".into(),
            ]);
        }
    }
    rows
}

fn parking_hist(n: usize) -> Vec<std::sync::Mutex<Histogram<u64>>> {
    (0..n)
        .map(|_| std::sync::Mutex::new(Histogram::<u64>::new(3).expect("histogram")))
        .collect()
}

/// W2: 90 % get (insert on miss) / 10 % set, capacity 1 % and 10 %.
pub fn w2(scale: &Scale) -> String {
    let n = scale.keys(1_000_000);
    let ops = scale.ops(1_000_000);
    let threads = 2usize;
    let d = Data::new(n);
    let per_entry = peers::charge(10, 100);
    println!("W2 mixed with eviction");
    let mut t = Table::new(&[
        "zipf",
        "capacity",
        "cache",
        "ops/s median (min–max)",
        "hit ratio % (median)",
    ]);
    let mut hit_rows: Vec<(String, String, f64)> = Vec::new();
    for s_exp in [0.8, 1.0] {
        let traces: Vec<Vec<Id>> = (0..threads)
            .map(|i| workload::zipf_trace(n, s_exp, ops, 700 + i as u64))
            .collect();
        for cap_pct in [1.0, 10.0] {
            let cap = (n as f64 * cap_pct / 100.0) as u64 * per_entry;
            let est = (n as f64 * cap_pct / 100.0) as usize;
            let makers: Vec<(&str, MakeKv)> = vec![
                (
                    "embercache",
                    Box::new(move || Box::new(peers::ember_ns(cap, None))),
                ),
                ("moka", Box::new(move || Box::new(Moka::new(cap)))),
                (
                    "quick_cache",
                    Box::new(move || Box::new(Quick::new(cap, est))),
                ),
                (
                    "foyer (memory)",
                    Box::new(move || Box::new(Foyer::new(cap))),
                ),
            ];
            for (name, make) in &makers {
                let (mut rates, mut hits) = (Runs::default(), Runs::default());
                for _ in 0..scale.runs {
                    let c = make();
                    let counts: Vec<std::sync::atomic::AtomicU64> =
                        (0..2).map(|_| Default::default()).collect();
                    let before = c.hot_hits();
                    let secs = timed(&traces, |_, tr| {
                        let (mut g, mut h) = (0u64, 0u64);
                        for (i, &id) in tr.iter().enumerate() {
                            let k = &d.keys[id as usize];
                            if i % 10 == 9 {
                                c.set(k, d.values[id as usize].clone());
                            } else {
                                g += 1;
                                if c.get(k).is_some() {
                                    h += 1;
                                } else {
                                    c.set(k, d.values[id as usize].clone());
                                }
                            }
                        }
                        counts[0].fetch_add(g, std::sync::atomic::Ordering::Relaxed);
                        counts[1].fetch_add(h, std::sync::atomic::Ordering::Relaxed);
                    });
                    rates.0.push((ops * threads) as f64 / secs);
                    let gets = counts[0].load(std::sync::atomic::Ordering::Relaxed) as f64;
                    let h = match before {
                        // embercache: only hot-tier hits count (the warm tier holds every key written)
                        Some(b) => (c.hot_hits().unwrap_or(0) - b) as f64,
                        None => counts[1].load(std::sync::atomic::Ordering::Relaxed) as f64,
                    };
                    hits.0.push(100.0 * h / gets);
                }
                hit_rows.push((
                    format!("{s_exp}/{cap_pct}"),
                    name.to_string(),
                    hits.median(),
                ));
                t.row(vec![
                    s_exp.to_string(),
                    format!("{cap_pct} %"),
                    name.to_string(),
                    rates.rate(),
                    format!("{:.2}", hits.median()),
                ]);
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "## W2 mixed with eviction\n");
    let _ = writeln!(
        s,
        "{n} keys, {threads} threads × {ops} ops per run, {} runs, each run on a fresh (cold) cache: every 10th op is a \
         set, the others are gets that insert on a miss. Capacity in bytes = capacity % × keys × {per_entry} \
         (same charge for every cache). embercache runs in memory at default settings: its hit ratio counts only \
         hot-tier hits, although its in-memory warm tier answers the other gets too (a hot miss costs a redb read, \
         then a fill); every set also goes through zstd and the writer thread.\n",
        scale.runs
    );
    s.push_str(&t.md());
    let mut diffs = Vec::new();
    for (cfg, name, h) in &hit_rows {
        if name == "embercache"
            && let Some(m) = hit_rows.iter().find(|r| &r.0 == cfg && r.1 == "moka")
        {
            diffs.push(h - m.2);
        }
    }
    let _ = writeln!(
        s,
        "\nembercache − moka hit ratio: {} points.\n",
        diffs
            .iter()
            .map(|x| format!("{x:+.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = si(0.0);
    s
}

//! W7 restart: reopen a directory holding N entries; time to the first get,
//! time until the warm-up has refilled the hot tier; Redis reloading an RDB
//! and an AOF of the same data.

use crate::Scale;
use crate::redis_srv::RedisServer;
use crate::report::{Runs, Table, dur_ns, si};
use crate::workload::{self, Id};
use embercache::Cache;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// CPU time (user + system) this process has used, in seconds, from
/// /proc/self/stat (clock ticks, 100 Hz); `None` off Linux.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub fn w7(scale: &Scale) -> String {
    let n = scale.keys(1_000_000);
    println!("W7 restart: {n} entries");
    let keys: Vec<Vec<u8>> = (0..n as Id).map(workload::key_bytes).collect();
    let values: Vec<_> = (0..n as Id).map(workload::value_100).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Cache::builder().dir(dir.path()).open().expect("open");
    let load = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        c.set("w", k, v.clone()).expect("set");
    }
    c.close().expect("close");
    let load_secs = load.elapsed().as_secs_f64();
    let file = std::fs::metadata(dir.path().join(embercache::DB_FILE)).map_or(0, |m| m.len());
    let (mut open_t, mut first_t, mut warm_t, mut rate) = (
        Runs::default(),
        Runs::default(),
        Runs::default(),
        Runs::default(),
    );
    let mut loaded = 0;
    let mut cpu_per_entry = Runs::default();
    for r in 0..scale.runs {
        let cpu0 = process_cpu_secs();
        let t0 = Instant::now();
        let c = Cache::builder().dir(dir.path()).open().expect("reopen");
        open_t.0.push(t0.elapsed().as_nanos() as f64);
        let probe = &keys[(r * 7919) % n];
        assert!(
            c.get("w", probe).expect("first get").is_some(),
            "first get found nothing"
        );
        first_t.0.push(t0.elapsed().as_nanos() as f64);
        let limit = Instant::now() + Duration::from_secs(120);
        let mut s = c.stats();
        while !s.warmup_done && Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(1));
            s = c.stats();
        }
        let w = t0.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (cpu0, process_cpu_secs()) {
            cpu_per_entry
                .0
                .push((b - a) * 1e9 / s.hot_entries.max(1) as f64);
        }
        warm_t.0.push(w * 1e9);
        loaded = s.hot_entries;
        rate.0.push(s.hot_entries as f64 / w);
        c.close().expect("close");
    }
    let mut t = Table::new(&[
        "store",
        "entries",
        "ready / first get",
        "hot set warm",
        "entries/s warmed or loaded",
    ]);
    t.row(vec![
        "embercache (open; open + first get)".into(),
        n.to_string(),
        format!(
            "open {} ({}–{}); first get {} ({}–{})",
            dur_ns(open_t.median()),
            dur_ns(open_t.min()),
            dur_ns(open_t.max()),
            dur_ns(first_t.median()),
            dur_ns(first_t.min()),
            dur_ns(first_t.max())
        ),
        format!(
            "{} ({}–{}), {loaded} hot entries",
            dur_ns(warm_t.median()),
            dur_ns(warm_t.min()),
            dur_ns(warm_t.max())
        ),
        rate.rate(),
    ]);
    let mut redis_rate = None;
    for (label, args) in [
        ("Redis RDB reload", vec!["--save", "", "--appendonly", "no"]),
        (
            "Redis AOF reload",
            vec![
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
        ),
    ] {
        let rdir = tempfile::tempdir().expect("tempdir");
        let Some(srv) = RedisServer::start_in(rdir.path(), None, &args) else {
            t.row(vec![
                label.into(),
                "–".into(),
                "redis-server not found".into(),
                "–".into(),
                "–".into(),
            ]);
            break;
        };
        let mut con = srv.connection();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut p = redis::pipe();
            for &i in chunk {
                p.cmd("SET").arg(&keys[i][..]).arg(&values[i][..]).ignore();
            }
            let _: () = p.query(&mut con).expect("redis load");
        }
        if label.contains("RDB") {
            let _: () = redis::cmd("SAVE").query(&mut con).expect("SAVE");
        } else {
            // Let everysec fsync the tail of the AOF before the kill.
            std::thread::sleep(Duration::from_millis(1500));
        }
        drop(con);
        drop(srv); // SIGKILL: what a restart after a crash reloads
        let mut ready = Runs::default();
        for _ in 0..scale.runs {
            let t0 = Instant::now();
            let srv = RedisServer::start_in(rdir.path(), None, &args).expect("restart redis");
            ready.0.push(t0.elapsed().as_nanos() as f64);
            let mut con = srv.connection();
            let size: usize = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
            assert_eq!(size, n, "{label}: reloaded {size} of {n} keys");
        }
        let r = n as f64 / (ready.median() / 1e9);
        if label.contains("RDB") {
            redis_rate = Some(r);
        }
        t.row(vec![
            format!("{label} (networked, until PING answers)"),
            n.to_string(),
            format!(
                "{} ({}–{})",
                dur_ns(ready.median()),
                dur_ns(ready.min()),
                dur_ns(ready.max())
            ),
            "all loaded".into(),
            si(r),
        ]);
    }
    let mut s = String::new();
    let _ = writeln!(s, "## W7 restart\n");
    let cpu_note = if cpu_per_entry.0.is_empty() {
        String::new()
    } else {
        format!(
            " CPU time of the whole process from open to the end of the warm-up, per hot entry: {} ({}–{}); \
             unlike the rates, it does not depend on what else the machine runs (100 Hz ticks).",
            dur_ns(cpu_per_entry.median()),
            dur_ns(cpu_per_entry.min()),
            dur_ns(cpu_per_entry.max())
        )
    };
    let _ = writeln!(
        s,
        "{n} entries (10-byte keys, 100-byte values) written with default settings (64 MiB hot tier, Buffered), \
         then closed: a redb file of {} MB (written in {load_secs:.1} s). Each of {} runs reopens the directory \
         and times `open`, the first `get` of a key, and the warm-up (hot snapshot → hot tier) until \
         `Stats::warmup_done`; entries/s = hot entries after the warm-up / that time. The page cache holds the \
         file (a restart of the process, not of the machine). Redis: the same keys, an RDB written by `SAVE` \
         (or an AOF with everysec), the server killed and restarted on the same directory; time until it \
         answers PING (it answers LOADING until the whole data set is in).{cpu_note}\n",
        file / 1_000_000,
        scale.runs
    );
    s.push_str(&t.md());
    let _ = writeln!(
        s,
        "\nTargets: first get < 50 ms at 1 M entries — **{}** ({}); warm-up rate ≥ Redis RDB reload rate — **{}** ({} vs {} entries/s).\n",
        if first_t.median() < 50e6 {
            "met"
        } else {
            "missed"
        },
        dur_ns(first_t.median()),
        match redis_rate {
            Some(r) if rate.median() >= r => "met",
            Some(_) => "missed",
            None => "not measured",
        },
        si(rate.median()),
        redis_rate.map_or("–".into(), si)
    );
    s
}

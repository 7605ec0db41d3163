//! `embercache demo`: the trading bot's cache workload (docs: the seed
//! digest) run against the embedded store, with a live line per second and
//! a summary. Run it twice on one directory to see the warm restart: the
//! second run's first second is served from the hot tier, warmed from the
//! snapshot the first run wrote at close.
//!
//! The workload, per operation (each worker thread, flat out):
//! * 90 % reads over seven namespaces, Zipf-skewed keys; a miss is
//!   followed by a set of a freshly "fetched" value (read-through);
//! * 7 % price updates (TTL 180 s);
//! * 1.5 % user-stats recomputations;
//! * 1 % trades: the market's price is re-set with the post-trade TTL of
//!   30 s and the user's positions are invalidated (deleted);
//! * 0.5 % watched addresses added (TTL 15 min);
//! * every 4 s the search namespace is invalidated (a search-logic change).

use crate::{Outcome, close, human_bytes};
use embercache::{Cache, NamespacePolicy, NamespaceStats, Stats, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Run the trading bot's cache workload against an embedded store.
///
/// Seven namespaces as the bot uses them (price, market, group, position,
/// search, user_stats, watched_addresses) with their TTLs, Zipf-skewed
/// keys and realistic JSON values; 90 % reads with read-through on a
/// miss. Prints a line per second (ops/s, hit rate, hot-tier and disk
/// size) and a summary: throughput, hit rate by tier overall and per
/// namespace, get latency p50/p99, memory, disk and compression.
///
/// Run it twice on the same directory: the second summary's "first
/// second" line shows the restart was warm (hot-tier hits from the very
/// first second).
///
/// Example: embercache demo --seconds 10 --threads 2
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Data directory (created if missing).
    #[arg(long, default_value = "./embercache-data")]
    dir: PathBuf,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Worker threads issuing operations.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Distinct markets (the Zipf key space of price and market).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    markets: u64,
    /// Hot-tier capacity in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    hot_mib: u64,
    /// Mirror to this Redis (`redis://127.0.0.1:6379/`): writes reach it
    /// through the outbox, misses read through, an empty directory warms
    /// from it. Default: `EMBERCACHE_REDIS_URL` if set, else no mirror.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

const NAMESPACES: [&str; 7] = [
    "price",
    "market",
    "group",
    "position",
    "search",
    "user_stats",
    "watched_addresses",
];

/// Share of reads per namespace, in per-mille, in `NAMESPACES` order.
const READ_MIX: [u32; 7] = [400, 200, 50, 130, 80, 90, 50];

const USERS: u64 = 5_000;
const QUERIES: u64 = 2_000;
const GROUPS: u64 = 500;
const ADDRESSES: u64 = 3_000;

fn open(a: &Args) -> Result<Cache, crate::Failure> {
    let min = |m: u64| Duration::from_secs(m * 60);
    let b = Cache::builder()
        .dir(&a.dir)
        .hot_capacity(a.hot_mib << 20)
        .namespace("price", NamespacePolicy::default().ttl(min(3)))
        .namespace("market", NamespacePolicy::default().ttl(min(30)))
        .namespace("group", NamespacePolicy::default().ttl(min(10)))
        .namespace("position", NamespacePolicy::default().ttl(min(3)))
        .namespace("search", NamespacePolicy::default().ttl(min(5)))
        .namespace("user_stats", NamespacePolicy::default().ttl(min(10)))
        .namespace("watched_addresses", NamespacePolicy::default().ttl(min(15)));
    #[cfg(feature = "redis")]
    let b = match &a.redis {
        Some(url) => b.redis(embercache::MirrorConfig::new(url.as_str())),
        None => b.redis_from_env(),
    };
    b.open().map_err(crate::Failure::from)
}

// ----- values -----------------------------------------------------------------

const WORDS: [&str; 32] = [
    "will",
    "the",
    "market",
    "resolve",
    "yes",
    "before",
    "election",
    "price",
    "above",
    "below",
    "rate",
    "fed",
    "cut",
    "bitcoin",
    "ethereum",
    "reach",
    "end",
    "of",
    "year",
    "team",
    "win",
    "final",
    "season",
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn price_json(rng: &mut StdRng, m: u64) -> String {
    let bid: f64 = rng.gen_range(0.01..0.97);
    let spread: f64 = rng.gen_range(0.001..0.03);
    format!(
        r#"{{"market":"m{m}","bid":{bid:.4},"ask":{:.4},"mid":{:.4},"spread":{spread:.4},"ts":{},"src":"ws","v":3}}"#,
        bid + spread,
        bid + spread / 2.0,
        now_ms()
    )
}

fn market_json(rng: &mut StdRng, m: u64) -> String {
    // 500-1500 bytes, the length fixed per market like real descriptions.
    let desc_len = 300 + (m.wrapping_mul(2_654_435_761) % 1000) as usize;
    format!(
        r#"{{"id":"m{m}","slug":"market-{m}","question":"{}?","description":"{}","outcomes":["YES","NO"],"volume":{:.2},"liquidity":{:.2},"end_date":"2026-{:02}-{:02}T00:00:00Z","group":"g{}","active":true}}"#,
        words(rng, 60),
        words(rng, desc_len),
        rng.gen_range(1_000.0..5_000_000.0),
        rng.gen_range(500.0..900_000.0),
        1 + m % 12,
        1 + m % 28,
        m % GROUPS
    )
}

fn group_json(rng: &mut StdRng, g: u64) -> String {
    let n = 5 + (g % 40);
    let ids: Vec<String> = (0..n).map(|i| format!("\"m{}\"", g * 40 + i)).collect();
    format!(
        r#"{{"group":"g{g}","title":"{}","markets":[{}],"volume":{:.2}}}"#,
        words(rng, 40),
        ids.join(","),
        rng.gen_range(10_000.0..9_000_000.0)
    )
}

fn position_json(rng: &mut StdRng, u: u64, markets: u64) -> String {
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
        now_ms()
    )
}

fn search_json(rng: &mut StdRng, q: u64, markets: u64) -> String {
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

fn user_stats_json(rng: &mut StdRng, u: u64) -> String {
    format!(
        r#"{{"user":"u{u}","pnl":{:.2},"trades":{},"win_rate":{:.3},"volume":{:.2},"computed_ms":{}}}"#,
        rng.gen_range(-10_000.0..50_000.0),
        rng.gen_range(0..5000),
        rng.gen_range(0.0..1.0),
        rng.gen_range(0.0..2_000_000.0),
        now_ms()
    )
}

fn address_json(a: u64) -> String {
    format!(
        r#"{{"address":"0x{a:040x}","label":"whale-{a}","added_ms":{}}}"#,
        now_ms()
    )
}

// ----- latency histogram ----------------------------------------------------

/// Log-linear latency histogram in nanoseconds: 16 linear sub-buckets per
/// power of two (~6 % resolution), fixed size, merged at the end.
struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

impl Histogram {
    const SUB: u32 = 4; // 2^4 sub-buckets

    fn new() -> Self {
        Histogram {
            counts: vec![0; 64 << Self::SUB],
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < (1 << Self::SUB) {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - Self::SUB)) & ((1 << Self::SUB) - 1);
        (((exp - Self::SUB + 1) << Self::SUB) as u64 + sub) as usize
    }

    /// The lower bound of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        let per = 1u64 << Self::SUB;
        if i < per {
            return i;
        }
        let exp = i / per - 1 + u64::from(Self::SUB);
        let sub = i % per;
        (1 << exp) | (sub << (exp - u64::from(Self::SUB)))
    }

    fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.max = self.max.max(ns);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.max = self.max.max(o.max);
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn quantile(&self, q: f64) -> u64 {
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::value(i);
            }
        }
        self.max
    }
}

fn fmt_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ----- the workers -----------------------------------------------------------

/// What a worker hands back when it stops.
struct WorkerResult {
    latency: Histogram,
    errors: u64,
    last_error: Option<String>,
}

struct Worker {
    cache: Cache,
    rng: StdRng,
    markets: u64,
    zm: Zipf<f64>,
    zu: Zipf<f64>,
    zq: Zipf<f64>,
    zg: Zipf<f64>,
    za: Zipf<f64>,
    latency: Histogram,
    errors: u64,
    last_error: Option<String>,
}

impl Worker {
    fn pick(&mut self, z: Zipf<f64>) -> u64 {
        // Zipf samples are in [1, n]; rank 1 is the most popular.
        z.sample(&mut self.rng) as u64 - 1
    }

    fn note<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        if let Err(e) = r {
            self.errors += 1;
            self.last_error = Some(e.to_string());
        }
    }

    /// A key of namespace `i` and the value an upstream fetch would return.
    fn key(&mut self, i: usize) -> Vec<u8> {
        match i {
            0 | 1 => format!("m{}", self.pick(self.zm)),
            2 => format!("g{}", self.pick(self.zg)),
            3 => format!("u{}:open", self.pick(self.zu)),
            4 => format!("q{}:p0", self.pick(self.zq)),
            5 => format!("u{}", self.pick(self.zu)),
            _ => format!("0x{:040x}", self.pick(self.za)),
        }
        .into_bytes()
    }

    fn fetch(&mut self, i: usize, key: &[u8]) -> String {
        // Parse the id back out of the key: digits after the first char.
        let id: u64 = key[1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |a, b| {
                a.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
            });
        let m = self.markets;
        let rng = &mut self.rng;
        match i {
            0 => price_json(rng, id),
            1 => market_json(rng, id),
            2 => group_json(rng, id),
            3 => position_json(rng, id, m),
            4 => search_json(rng, id, m),
            5 => user_stats_json(rng, id),
            _ => address_json(self.pick(self.za)),
        }
    }

    fn read(&mut self) {
        let r = self.rng.gen_range(0..1000u32);
        let mut acc = 0;
        let mut i = NAMESPACES.len() - 1;
        for (j, w) in READ_MIX.iter().enumerate() {
            acc += w;
            if r < acc {
                i = j;
                break;
            }
        }
        let key = self.key(i);
        let t0 = Instant::now();
        let got = self.cache.get(NAMESPACES[i], &key);
        self.latency.record(t0.elapsed().as_nanos() as u64);
        match got {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Read-through: fetch from "upstream" and fill the cache.
                let v = self.fetch(i, &key);
                let r = self.cache.set(NAMESPACES[i], &key, v.into_bytes());
                self.note(r);
            }
            Err(e) => self.note::<embercache::ReadError>(Err(e)),
        }
    }

    fn step(&mut self) {
        let r = self.rng.gen_range(0..1000u32);
        if r < 900 {
            self.read();
        } else if r < 970 {
            let m = self.pick(self.zm);
            let v = price_json(&mut self.rng, m);
            let r = self.cache.set("price", format!("m{m}").as_bytes(), v);
            self.note(r);
        } else if r < 985 {
            let u = self.pick(self.zu);
            let v = user_stats_json(&mut self.rng, u);
            let r = self.cache.set("user_stats", format!("u{u}").as_bytes(), v);
            self.note(r);
        } else if r < 995 {
            // A trade: the market "just traded" gets the short TTL, and the
            // user's cached positions are stale.
            let m = self.pick(self.zm);
            let u = self.pick(self.zu);
            let v = price_json(&mut self.rng, m);
            let r = self.cache.set_with(
                "price",
                format!("m{m}").as_bytes(),
                v,
                WriteOptions::ttl(Duration::from_secs(30)),
            );
            self.note(r);
            for side in ["open", "closed"] {
                let r = self
                    .cache
                    .delete("position", format!("u{u}:{side}").as_bytes());
                self.note(r);
            }
        } else {
            let a = self.pick(self.za);
            let r = self.cache.set(
                "watched_addresses",
                format!("0x{a:040x}").as_bytes(),
                address_json(a),
            );
            self.note(r);
        }
    }
}

// ----- the run ------------------------------------------------------------------

/// Hot / warm / miss counts, summed over namespaces.
#[derive(Clone, Copy, Default)]
struct Tiers {
    hot: u64,
    warm: u64,
    miss: u64,
}

impl Tiers {
    fn of(s: &Stats) -> Self {
        let t = s.total();
        Tiers {
            hot: t.hot_hits,
            warm: t.warm_hits,
            miss: t.misses,
        }
    }
    fn minus(self, o: Tiers) -> Tiers {
        Tiers {
            hot: self.hot.saturating_sub(o.hot),
            warm: self.warm.saturating_sub(o.warm),
            miss: self.miss.saturating_sub(o.miss),
        }
    }
    fn gets(self) -> u64 {
        self.hot + self.warm + self.miss
    }
    fn pct(self, n: u64) -> f64 {
        if self.gets() == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.gets() as f64
        }
    }
    fn line(self) -> String {
        format!(
            "hot {:.1} %, warm {:.1} %, miss {:.1} %",
            self.pct(self.hot),
            self.pct(self.warm),
            self.pct(self.miss)
        )
    }
}

pub(crate) fn run(a: Args) -> Outcome {
    let opened = Instant::now();
    let cache = open(&a)?;
    let zipf = |n: u64, s: f64| {
        Zipf::new(n, s).map_err(|e| crate::Failure::new(format!("bad Zipf parameters: {e}")))
    };
    let (zm, zu, zq, zg, za) = (
        zipf(a.markets, 1.0)?,
        zipf(USERS, 1.1)?,
        zipf(QUERIES, 1.0)?,
        zipf(GROUPS, 0.9)?,
        zipf(ADDRESSES, 1.0)?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let base = cache.stats();
    let start = Instant::now();
    let seed = now_ms();
    let mut handles = Vec::new();
    for t in 0..a.threads {
        let mut w = Worker {
            cache: cache.clone(),
            rng: StdRng::seed_from_u64(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            markets: a.markets,
            zm,
            zu,
            zq,
            zg,
            za,
            latency: Histogram::new(),
            errors: 0,
            last_error: None,
        };
        let (stop, ops) = (stop.clone(), ops.clone());
        let invalidates_search = t == 0;
        let h = std::thread::Builder::new()
            .name(format!("demo-{t}"))
            .spawn(move || {
                let mut next_invalidation = Instant::now() + Duration::from_secs(4);
                let mut local = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    w.step();
                    local += 1;
                    if local == 256 {
                        ops.fetch_add(local, Ordering::Relaxed);
                        local = 0;
                        if invalidates_search && Instant::now() >= next_invalidation {
                            next_invalidation += Duration::from_secs(4);
                            let r = w.cache.invalidate_namespace("search").map(|_| ());
                            w.note(r);
                        }
                    }
                }
                ops.fetch_add(local, Ordering::Relaxed);
                WorkerResult {
                    latency: w.latency,
                    errors: w.errors,
                    last_error: w.last_error,
                }
            })
            .map_err(|e| crate::Failure::new(format!("cannot start a worker thread: {e}")))?;
        handles.push(h);
    }

    let pb = crate::bar(a.seconds, "demo (seconds)");
    let say = |line: String| {
        if pb.is_hidden() {
            println!("{line}");
        } else {
            pb.println(line);
        }
    };
    let mut per_second: Vec<Tiers> = Vec::new();
    let mut prev_tiers = Tiers::of(&base);
    let mut prev_ops = 0u64;
    let mut warm_done_at: Option<Duration> = base.warmup_done.then_some(Duration::ZERO);
    for sec in 1..=a.seconds {
        let due = start + Duration::from_secs(sec);
        // Poll finely only to timestamp the end of the warm-up.
        while Instant::now() < due {
            std::thread::sleep(Duration::from_millis(10).min(due - Instant::now()));
            if warm_done_at.is_none() && cache.stats().warmup_done {
                warm_done_at = Some(opened.elapsed());
            }
        }
        let s = cache.stats();
        let tiers = Tiers::of(&s);
        let d = tiers.minus(prev_tiers);
        let total_ops = ops.load(Ordering::Relaxed);
        say(format!(
            "[{sec:>3}s] {:>11} ops/s  hit {:>5.1} % (hot {:>5.1} %, warm {:>4.1} %)  hot {:>6.1} MiB  disk {:>6.1} MiB",
            thousands(total_ops - prev_ops),
            d.pct(d.hot + d.warm),
            d.pct(d.hot),
            d.pct(d.warm),
            s.hot_bytes as f64 / (1 << 20) as f64,
            s.disk_bytes as f64 / (1 << 20) as f64,
        ));
        pb.inc(1);
        per_second.push(d);
        prev_tiers = tiers;
        prev_ops = total_ops;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    let mut latency = Histogram::new();
    let (mut errors, mut last_error) = (0, None);
    for h in handles {
        match h.join() {
            Ok(r) => {
                latency.merge(&r.latency);
                errors += r.errors;
                if r.last_error.is_some() {
                    last_error = r.last_error;
                }
            }
            Err(_) => {
                errors += 1;
                last_error = Some("a worker thread panicked".into());
            }
        }
    }
    let end = cache.stats();
    #[cfg(feature = "redis")]
    if let Some(m) = cache.mirror_stats() {
        println!(
            "redis mirror   breaker {}, {} writes applied ({} refused as older), outbox {} rows, read-through {} hits / {} misses, warm start {} loaded",
            m.breaker.as_str(),
            m.applied,
            m.stale,
            m.outbox_rows,
            m.read_hits,
            m.read_misses,
            m.warm_loaded
        );
    }
    let total_ops = ops.load(Ordering::Relaxed);
    let closing = Instant::now();
    close(cache)?;
    let close_took = closing.elapsed();
    summary(&Summary {
        a: &a,
        elapsed,
        total_ops,
        base: &base,
        end: &end,
        per_second: &per_second,
        latency: &latency,
        warm_done_at,
        close_took,
        errors,
        last_error,
    })?;
    Ok(())
}

struct Summary<'a> {
    a: &'a Args,
    elapsed: Duration,
    total_ops: u64,
    base: &'a Stats,
    end: &'a Stats,
    per_second: &'a [Tiers],
    latency: &'a Histogram,
    warm_done_at: Option<Duration>,
    close_took: Duration,
    errors: u64,
    last_error: Option<String>,
}

fn ns_delta(end: &NamespaceStats, base: Option<&NamespaceStats>) -> NamespaceStats {
    let z = NamespaceStats::default();
    let b = base.unwrap_or(&z);
    let mut d = end.clone();
    d.hot_hits -= b.hot_hits.min(d.hot_hits);
    d.warm_hits -= b.warm_hits.min(d.warm_hits);
    d.misses -= b.misses.min(d.misses);
    d.sets -= b.sets.min(d.sets);
    d.deletes -= b.deletes.min(d.deletes);
    d.raw_bytes_written -= b.raw_bytes_written.min(d.raw_bytes_written);
    d.stored_bytes_written -= b.stored_bytes_written.min(d.stored_bytes_written);
    d
}

fn summary(s: &Summary<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let all = Tiers::of(s.end).minus(Tiers::of(s.base));
    let first = s.per_second.first().copied().unwrap_or_default();
    let t = s.end.total();
    writeln!(out)?;
    writeln!(
        out,
        "== embercache demo: {:.1} s, {} threads, {} ==",
        secs,
        s.a.threads,
        s.a.dir.display()
    )?;
    writeln!(
        out,
        "throughput     {} ops/s ({} ops)",
        thousands((s.total_ops as f64 / secs) as u64),
        thousands(s.total_ops)
    )?;
    writeln!(
        out,
        "gets           {}: hit rate {:.1} % ({})",
        thousands(all.gets()),
        all.pct(all.hot + all.warm),
        all.line()
    )?;
    writeln!(out, "first second: {}", first.line())?;
    writeln!(
        out,
        "get latency    p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
        fmt_ns(s.latency.quantile(0.50)),
        fmt_ns(s.latency.quantile(0.99)),
        fmt_ns(s.latency.quantile(0.999)),
        fmt_ns(s.latency.max),
        thousands(s.latency.total())
    )?;
    let warm = match (s.end.warmup_total, s.warm_done_at) {
        (0, _) => "no snapshot (first run on this directory: cold start)".to_string(),
        (n, Some(t)) => format!(
            "{} of {} snapshot keys loaded, done {} ms after open",
            thousands(s.end.warmup_loaded),
            thousands(n),
            t.as_millis()
        ),
        (n, None) => format!(
            "{} of {} snapshot keys loaded, still running at the end",
            thousands(s.end.warmup_loaded),
            thousands(n)
        ),
    };
    writeln!(out, "warm-up        {warm}")?;
    writeln!(
        out,
        "hot tier       {} of {} ({} entries)",
        human_bytes(s.end.hot_bytes),
        human_bytes(s.end.hot_capacity),
        thousands(s.end.hot_entries)
    )?;
    writeln!(
        out,
        "disk           {} in {} records (file {})",
        human_bytes(s.end.disk_bytes),
        thousands(s.end.disk_records),
        human_bytes(s.end.file_bytes)
    )?;
    writeln!(
        out,
        "compression    {:.2}x over everything written ({} raw -> {} stored)",
        t.compression_ratio(),
        human_bytes(t.raw_bytes_written),
        human_bytes(t.stored_bytes_written)
    )?;
    writeln!(
        out,
        "writes         {} commits, avg {:?}, max {:?}; close took {} ms",
        thousands(s.end.commits.saturating_sub(s.base.commits)),
        s.end.commit_latency_avg,
        s.end.commit_latency_max,
        s.close_took.as_millis()
    )?;
    if s.errors > 0 {
        writeln!(
            out,
            "errors         {} (last: {})",
            s.errors,
            s.last_error.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7}",
        "NAMESPACE", "GETS", "HIT %", "HOT %", "WARM %", "MISS %", "SETS", "DELETES", "ZSTD"
    )?;
    for name in NAMESPACES {
        let Some(e) = s.end.namespaces.iter().find(|n| n.name == name) else {
            continue;
        };
        let d = ns_delta(e, s.base.namespaces.iter().find(|n| n.name == name));
        let tr = Tiers {
            hot: d.hot_hits,
            warm: d.warm_hits,
            miss: d.misses,
        };
        writeln!(
            out,
            "{:<18} {:>10} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>9} {:>8} {:>6.2}x",
            name,
            thousands(tr.gets()),
            tr.pct(tr.hot + tr.warm),
            tr.pct(tr.hot),
            tr.pct(tr.warm),
            tr.pct(tr.miss),
            thousands(d.sets),
            thousands(d.deletes),
            d.compression_ratio()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip() {
        for v in [0u64, 1, 15, 16, 17, 100, 1000, 123_456, 1 << 40] {
            let lo = Histogram::value(Histogram::index(v));
            assert!(lo <= v && v - lo <= v / 16 + 1, "{v} -> {lo}");
        }
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((470..=500).contains(&p50), "{p50}");
    }
}

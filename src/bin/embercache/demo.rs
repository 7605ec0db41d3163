//! `embercache demo`: the trading bot's cache workload (docs: the seed
//! digest) run against the embedded store, with a live line per second and
//! a summary. Run it twice on one directory to see the warm restart: the
//! second run's first second is served from the hot tier, warmed from the
//! snapshot the first run wrote at close.
//!
//! Every read goes through a loader (`Cache::load` / `get_many_or_load`)
//! that calls a simulated upstream (`upstream.rs`: injected latency and
//! failures, and an outage of `prices-api`), so the summary can show the
//! upstream calls the cache saved and what it served while an upstream was
//! down. The workload, per operation (each worker thread, flat out):
//! * 91.5 % reads over seven namespaces, Zipf-skewed keys, each namespace
//!   through its upstream; 3 % of market reads ask for markets that do not
//!   exist (cached as "not found");
//! * 7 % batch price reads (a page of 10 markets, one upstream call for the
//!   missing ones);
//! * 1 % trades: `touch_activity` on the market's price (its TTL drops to
//!   the post-trade TTL), the user's positions are invalidated (deleted) and
//!   their stats recomputed (`refresh`);
//! * 0.5 % watched addresses added (`refresh`: loaded at once).
//!
//! Time is not compressed: TTLs are the bot's. Only the windows that would
//! not show in a 10 s run are shortened, and printed in the summary: the
//! post-trade price TTL (bot: 30 s for 5 min; here 1 s for 3 s), the price
//! stale-while-revalidate window (bot: 30 s; here 1 s), and the breaker's
//! wait in open (default 60 s; here 0.5 s doubling to 2 s).

use crate::upstream::{OUTAGE_UPSTREAM, SPECS, Upstreams, parse_outage};
use crate::{Outcome, close, human_bytes};
use embercache::{
    BatchLoaded, BreakerConfig, BreakerState, Cache, LoadError, LoadPolicy, LoadStats, Loaded,
    Lookup, NamespacePolicy, NamespaceStats, Origin, Stats,
};
use indicatif::MultiProgress;
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
/// keys and realistic JSON values. Every read goes through a loader that
/// calls a simulated upstream (prices-api, markets-api, positions-api,
/// search-api, stats-api, rpc) with injected latency (100-500 µs) and
/// failures; prices-api is down for a while in the middle of the run
/// (`--outage`). Prints a line per second (ops/s, hit rate, upstream
/// calls, hot-tier and disk size, open breakers) and a summary:
/// throughput, hit rate by tier overall and per namespace, get latency,
/// memory, disk and compression, and a loading table: upstream calls saved,
/// stale values served during the outage, negative hits, breakers.
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
    /// When prices-api is down (every call fails): FROM-TO in seconds from
    /// the start of the workload (`3-6`), or `off`. Default: from 30 % to
    /// 60 % of the run (3-6 in a 10 s run).
    #[arg(long, value_name = "FROM-TO|off", value_parser = parse_outage_arg)]
    outage: Option<Outage>,
    /// The search logic's version; its hash is the search namespace's
    /// schema version, so running with a different one starts with no
    /// search results cached (results of the old logic are never served).
    #[arg(long, default_value = "rank-by-volume-v1", value_name = "VERSION")]
    search_logic: String,
    /// Mirror to this Redis server (`redis://[:password@]host:port[/db]`):
    /// writes reach it through the outbox, misses read through, an empty
    /// directory warms from it (with a progress bar on a terminal).
    /// Without --redis, --redis-cluster or --redis-sentinel: the
    /// deployment in EMBERCACHE_REDIS_URL, _CLUSTER or _SENTINEL if set,
    /// else no mirror. The other EMBERCACHE_REDIS_* settings (prefix,
    /// timeouts, breaker) apply either way; see docs/MIRROR.md.
    #[cfg(feature = "redis")]
    #[arg(
        long,
        value_name = "URL",
        help_heading = "Redis mirror",
        conflicts_with_all = ["redis_cluster", "redis_sentinel"]
    )]
    redis: Option<String>,
    /// Mirror to a Redis Cluster reached through these seed nodes,
    /// comma-separated (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    /// Any node finds the others; list every master so pub/sub can move
    /// when one is lost.
    #[cfg(feature = "redis")]
    #[arg(
        long,
        value_name = "URL,URL,...",
        value_delimiter = ',',
        num_args = 1,
        help_heading = "Redis mirror",
        conflicts_with = "redis_sentinel"
    )]
    redis_cluster: Vec<String>,
    /// Mirror to the master that these sentinels monitor, followed across
    /// failovers: comma-separated sentinel URLs (`redis://10.0.0.1:26379`;
    /// a sentinel with a password of its own: `redis://:pw@host:26379`).
    /// Needs --redis-master. A password-protected master: set
    /// EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD (and _USERNAME, _DB) in
    /// the environment, not on the command line where `ps` shows it.
    #[cfg(feature = "redis")]
    #[arg(
        long,
        value_name = "URL,URL,...",
        value_delimiter = ',',
        num_args = 1,
        help_heading = "Redis mirror",
        requires = "redis_master"
    )]
    redis_sentinel: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor
    /// <NAME> ...` in sentinel.conf). Only with --redis-sentinel.
    #[cfg(feature = "redis")]
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Redis mirror",
        requires = "redis_sentinel"
    )]
    redis_master: Option<String>,
}

/// The mirror the demo's flags ask for, with the other settings from the
/// `EMBERCACHE_REDIS_*` variables; `None` without flags (then the
/// environment alone decides). A malformed URL or master name is a usage
/// error (exit 2) that names the flag.
#[cfg(feature = "redis")]
fn mirror_config(a: &Args) -> Result<Option<embercache::MirrorConfig>, crate::Failure> {
    let usage = |flag: &str, reason: String| crate::Failure {
        code: 2,
        message: format!("{flag}: {reason}"),
    };
    let check = |flag: &str, urls: &[String]| {
        for u in urls {
            if u.trim().is_empty() {
                return Err(usage(
                    flag,
                    "an empty URL (a doubled or trailing comma?); expected \
                     redis://host:port[,redis://host:port...]"
                        .into(),
                ));
            }
            if let Err(e) = redis::Client::open(u.trim()) {
                return Err(usage(
                    flag,
                    format!(
                        "{:?} is not a Redis URL (redis://[:password@]host:port): {e}",
                        redact_url(u)
                    ),
                ));
            }
        }
        Ok(())
    };
    let list = |urls: &[String]| urls.iter().map(|u| u.trim()).collect::<Vec<_>>().join(",");
    // The flags stand in for the variables that say where Redis is, so
    // one code path (and one validation) builds every deployment.
    let location: [(&str, Option<String>); 4] = if let Some(url) = &a.redis {
        check("--redis", std::slice::from_ref(url))?;
        [
            ("EMBERCACHE_REDIS_URL", Some(url.trim().to_string())),
            ("EMBERCACHE_REDIS_CLUSTER", None),
            ("EMBERCACHE_REDIS_SENTINEL", None),
            ("EMBERCACHE_REDIS_SENTINEL_MASTER", None),
        ]
    } else if !a.redis_cluster.is_empty() {
        check("--redis-cluster", &a.redis_cluster)?;
        [
            ("EMBERCACHE_REDIS_URL", None),
            ("EMBERCACHE_REDIS_CLUSTER", Some(list(&a.redis_cluster))),
            ("EMBERCACHE_REDIS_SENTINEL", None),
            ("EMBERCACHE_REDIS_SENTINEL_MASTER", None),
        ]
    } else if !a.redis_sentinel.is_empty() {
        check("--redis-sentinel", &a.redis_sentinel)?;
        let raw = a.redis_master.as_deref().unwrap_or_default();
        let master = raw.trim();
        if master.is_empty() || master.contains(char::is_whitespace) {
            return Err(usage(
                "--redis-master",
                format!(
                    "{raw:?} is not a master name; give the name of `sentinel monitor <NAME> ...`"
                ),
            ));
        }
        [
            ("EMBERCACHE_REDIS_URL", None),
            ("EMBERCACHE_REDIS_CLUSTER", None),
            ("EMBERCACHE_REDIS_SENTINEL", Some(list(&a.redis_sentinel))),
            ("EMBERCACHE_REDIS_SENTINEL_MASTER", Some(master.to_string())),
        ]
    } else {
        return Ok(None);
    };
    Ok(embercache::MirrorConfig::from_vars(|k| {
        match location.iter().find(|(name, _)| *name == k) {
            Some((_, v)) => v.clone(),
            None => std::env::var(k).ok(),
        }
    }))
}

/// `url` with its password hidden, for error messages (the library's
/// `Debug` does the same for its settings).
#[cfg(feature = "redis")]
fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority
        .rfind('@')
        .and_then(|at| Some((authority[..at].find(':')?, at)))
    {
        Some((colon, at)) => format!(
            "{}<redacted>{}",
            &url[..start + colon + 1],
            &url[start + at..]
        ),
        None => url.to_string(),
    }
}

/// A parsed `--outage` (`None`: off).
#[derive(Clone, Copy)]
pub(crate) struct Outage(Option<(Duration, Duration)>);

fn parse_outage_arg(s: &str) -> Result<Outage, String> {
    parse_outage(s).map(Outage)
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

/// The upstream each namespace loads from, in `NAMESPACES` order.
const UPSTREAMS: [&str; 7] = [
    "prices-api",
    "markets-api",
    "markets-api",
    "positions-api",
    "search-api",
    "stats-api",
    "rpc",
];

/// Share of reads per namespace, in per-mille, in `NAMESPACES` order.
const READ_MIX: [u32; 7] = [400, 200, 50, 130, 80, 90, 50];

const USERS: u64 = 5_000;
const QUERIES: u64 = 2_000;
const GROUPS: u64 = 500;
const ADDRESSES: u64 = 3_000;
/// Ids of markets that do not exist (asked for by 3 % of market reads).
const GHOST_MARKETS: u64 = 200;
const GHOST_SHARE: f64 = 0.03;
/// Markets per batch price read (a page).
const BATCH: u64 = 10;

/// Post-trade price TTL and how long it applies (see the module doc).
const TRADE_TTL: Duration = Duration::from_secs(1);
const TRADE_FOR: Duration = Duration::from_secs(3);

/// FNV-1a: a stable hash of the search logic's version string.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn open(a: &Args) -> Result<Cache, crate::Failure> {
    let min = |m: u64| Duration::from_secs(m * 60);
    let b = Cache::builder()
        .dir(&a.dir)
        .hot_capacity(a.hot_mib << 20)
        .namespace(
            "price",
            NamespacePolicy::default()
                .ttl(min(3))
                .stale_for(Duration::from_secs(1))
                .max_stale(min(10)),
        )
        .namespace(
            "market",
            NamespacePolicy::default()
                .ttl(min(30))
                .negative_ttl(min(5))
                .max_stale(min(10)),
        )
        .namespace("group", NamespacePolicy::default().ttl(min(10)))
        .namespace("position", NamespacePolicy::default().ttl(min(3)))
        .namespace(
            "search",
            NamespacePolicy::default()
                .ttl(min(5))
                .schema_version(format!("{:016x}", fnv1a(&a.search_logic))),
        )
        .namespace(
            "user_stats",
            NamespacePolicy::default().ttl(min(10)).stale_for(min(1)),
        )
        .namespace("watched_addresses", NamespacePolicy::default().ttl(min(15)));
    #[cfg(feature = "redis")]
    let b = match mirror_config(a)? {
        Some(cfg) => b.redis(cfg),
        None => b.redis_from_env(),
    };
    let cache = b.open().map_err(crate::Failure::from)?;
    // Prices: 3 min, learned between 15 s and 10 min from how often a
    // reload finds a changed price, capped after a trade.
    cache.set_load_policy(
        "price",
        LoadPolicy::default()
            .ttl(min(3))
            .adaptive(Duration::from_secs(15), min(10))
            .activity(TRADE_TTL, TRADE_FOR),
    );
    // One breaker per upstream: resilience4j's thresholds over a shorter
    // window, and a wait in open short enough to see it close again in a
    // 10 s run. EMBERCACHE_BREAKER_<UPSTREAM>_* override it.
    for (name, _, _) in SPECS {
        let cfg = BreakerConfig::default()
            .window(20, 10)
            .wait(Duration::from_millis(500), Duration::from_secs(2))
            .from_env(name)?;
        cache.configure_upstream(name, cfg)?;
    }
    Ok(cache)
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

fn words(rng: &mut impl Rng, bytes: usize) -> String {
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

fn price_json(rng: &mut impl Rng, m: u64) -> String {
    let bid: f64 = rng.gen_range(0.01..0.97);
    let spread: f64 = rng.gen_range(0.001..0.03);
    format!(
        r#"{{"market":"m{m}","bid":{bid:.4},"ask":{:.4},"mid":{:.4},"spread":{spread:.4},"ts":{},"src":"ws","v":3}}"#,
        bid + spread,
        bid + spread / 2.0,
        now_ms()
    )
}

fn market_json(rng: &mut impl Rng, m: u64) -> String {
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

fn group_json(rng: &mut impl Rng, g: u64) -> String {
    let n = 5 + (g % 40);
    let ids: Vec<String> = (0..n).map(|i| format!("\"m{}\"", g * 40 + i)).collect();
    format!(
        r#"{{"group":"g{g}","title":"{}","markets":[{}],"volume":{:.2}}}"#,
        words(rng, 40),
        ids.join(","),
        rng.gen_range(10_000.0..9_000_000.0)
    )
}

fn position_json(rng: &mut impl Rng, u: u64, markets: u64) -> String {
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

fn search_json(rng: &mut impl Rng, q: u64, markets: u64) -> String {
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

fn user_stats_json(rng: &mut impl Rng, u: u64) -> String {
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

/// What the loading reads of one namespace got, as seen by the callers.
#[derive(Clone, Copy, Default)]
struct NsCount {
    /// Loading reads (a batch counts one per key).
    gets: u64,
    /// Reads that got an error: the upstream failed or its breaker was
    /// open, and there was no old value to fall back on.
    failed: u64,
    /// Stale values served (revalidating, or standing in for a failure).
    stale: u64,
    /// Of those, served while the namespace's upstream was down.
    stale_in_outage: u64,
    /// Reads answered by a cached "does not exist".
    negative: u64,
}

/// What a worker hands back when it stops.
struct WorkerResult {
    latency: Histogram,
    load_latency: Histogram,
    counts: [NsCount; 7],
    errors: u64,
    last_error: Option<String>,
}

struct Worker {
    cache: Cache,
    up: Arc<Upstreams>,
    rng: StdRng,
    markets: u64,
    zm: Zipf<f64>,
    zu: Zipf<f64>,
    zq: Zipf<f64>,
    zg: Zipf<f64>,
    za: Zipf<f64>,
    zghost: Zipf<f64>,
    /// Reads answered by the cache (live, not-found or stale).
    latency: Histogram,
    /// Reads that needed the loader: the upstream answered, failed, or its
    /// breaker refused (then fast).
    load_latency: Histogram,
    counts: [NsCount; 7],
    errors: u64,
    last_error: Option<String>,
}

/// The numeric id in a key: `m42` → 42, `u7:open` → 7, `0x…2a` → 42.
fn id_of(key: &[u8]) -> u64 {
    if let Some(hex) = key.strip_prefix(b"0x") {
        return std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h.trim_start_matches('0'), 16).ok())
            .unwrap_or(0);
    }
    key.iter()
        .skip(1)
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |a, b| {
            a.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
        })
}

/// What upstream `i` answers for `key`.
fn fetch(i: usize, key: &[u8], markets: u64) -> Loaded {
    let id = id_of(key);
    let rng = &mut rand::thread_rng();
    let v = match i {
        0 => price_json(rng, id),
        1 if id >= markets => return Loaded::NotFound,
        1 => market_json(rng, id),
        2 => group_json(rng, id),
        3 => position_json(rng, id, markets),
        4 => search_json(rng, id, markets),
        5 => user_stats_json(rng, id),
        _ => address_json(id),
    };
    Loaded::value(v.into_bytes())
}

/// Gives every namespace its loader: a call to its simulated upstream.
fn register_loaders(cache: &Cache, up: &Arc<Upstreams>, markets: u64) {
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let up = up.clone();
        cache.register_loader(ns, UPSTREAMS[i], move |key| {
            up.call(i, UPSTREAMS[i], 1)?;
            Ok(fetch(i, key, markets))
        });
    }
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

    /// A key of namespace `i`.
    fn key(&mut self, i: usize) -> Vec<u8> {
        match i {
            0 => format!("m{}", self.pick(self.zm)),
            1 if self.rng.gen_bool(GHOST_SHARE) => {
                format!("m{}", self.markets + self.pick(self.zghost))
            }
            1 => format!("m{}", self.pick(self.zm)),
            2 => format!("g{}", self.pick(self.zg)),
            3 => format!("u{}:open", self.pick(self.zu)),
            4 => format!("q{}:p0", self.pick(self.zq)),
            5 => format!("u{}", self.pick(self.zu)),
            _ => format!("0x{:040x}", self.pick(self.za)),
        }
        .into_bytes()
    }

    /// Counts one loading read of namespace `i` (and its latency, if timed).
    fn record(&mut self, i: usize, r: Result<Lookup, LoadError>, nanos: Option<u64>) {
        let down = self.up.get(UPSTREAMS[i]).down();
        let c = &mut self.counts[i];
        c.gets += 1;
        let from_cache = match &r {
            Ok(l) => {
                if l.is_stale() {
                    c.stale += 1;
                    if down {
                        c.stale_in_outage += 1;
                    }
                }
                if l.is_not_found() && l.origin == Origin::Cache {
                    c.negative += 1;
                }
                l.origin != Origin::Loader && l.error.is_none()
            }
            Err(
                LoadError::Failed { .. }
                | LoadError::BreakerOpen { .. }
                | LoadError::NotReturned { .. },
            ) => {
                c.failed += 1;
                false
            }
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
                false
            }
        };
        if let Some(ns) = nanos {
            if from_cache {
                self.latency.record(ns);
            } else {
                self.load_latency.record(ns);
            }
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
        let got = self.cache.load(NAMESPACES[i], &key);
        let took = t0.elapsed().as_nanos() as u64;
        self.record(i, got, Some(took));
    }

    /// A page of prices in one call: the loader gets only the missing ones.
    fn batch_read(&mut self) {
        let mut keys: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| format!("m{}", self.pick(self.zm)).into_bytes())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let up = self.up.clone();
        let got = self
            .cache
            .get_many_or_load("price", &keys, UPSTREAMS[0], move |missing| {
                up.call(0, UPSTREAMS[0], missing.len())?;
                Ok(missing
                    .iter()
                    .map(|k| (k.to_vec(), Ok(fetch(0, k, 0))))
                    .collect::<BatchLoaded>())
            });
        match got {
            Ok(rs) => {
                for r in rs {
                    self.record(0, r, None);
                }
            }
            Err(e) => self.note::<LoadError>(Err(e)),
        }
    }

    /// A trade: the market's price gets the short post-trade TTL, the
    /// user's cached positions are stale (deleted), their stats recomputed.
    fn trade(&mut self) {
        let m = self.pick(self.zm);
        let u = self.pick(self.zu);
        let r = self
            .cache
            .touch_activity("price", format!("m{m}").as_bytes());
        self.note(r);
        for side in ["open", "closed"] {
            let r = self
                .cache
                .delete("position", format!("u{u}:{side}").as_bytes());
            self.note(r);
        }
        self.refresh("user_stats", format!("u{u}"));
    }

    /// An event-driven reload; an upstream failure keeps the old value and
    /// is already counted by the upstream.
    fn refresh(&mut self, ns: &str, key: String) {
        match self.cache.refresh(ns, key.as_bytes()) {
            Ok(_)
            | Err(
                LoadError::Failed { .. }
                | LoadError::BreakerOpen { .. }
                | LoadError::NotReturned { .. },
            ) => {}
            Err(e) => self.note::<LoadError>(Err(e)),
        }
    }

    fn step(&mut self) {
        let r = self.rng.gen_range(0..1000u32);
        if r < 915 {
            self.read();
        } else if r < 985 {
            self.batch_read();
        } else if r < 995 {
            self.trade();
        } else {
            // A watched address is added: load it now, not on first use.
            let a = self.pick(self.za);
            self.refresh("watched_addresses", format!("0x{a:040x}"));
        }
    }
}

/// When an upstream's breaker was not closed, as seen by polling it.
struct BreakerWatch {
    name: &'static str,
    was_closed: bool,
    /// (from, to) since the workload started; `to` is `None` while it lasts.
    periods: Vec<(Duration, Option<Duration>)>,
}

impl BreakerWatch {
    fn poll(&mut self, cache: &Cache, at: Duration) {
        let closed = cache.breaker(self.name).state() == BreakerState::Closed;
        if self.was_closed && !closed {
            self.periods.push((at, None));
        } else if !self.was_closed
            && closed
            && let Some(p) = self.periods.last_mut()
        {
            p.1 = Some(at);
        }
        self.was_closed = closed;
    }

    fn describe(&self) -> String {
        if self.periods.is_empty() {
            return "-".into();
        }
        let s: Vec<String> = self
            .periods
            .iter()
            .map(|(a, b)| match b {
                Some(b) => format!("{:.2}-{:.2} s", a.as_secs_f64(), b.as_secs_f64()),
                None => format!("{:.2} s-end", a.as_secs_f64()),
            })
            .collect();
        s.join(", ")
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
    let (zm, zu, zq, zg, za, zghost) = (
        zipf(a.markets, 1.0)?,
        zipf(USERS, 1.1)?,
        zipf(QUERIES, 1.0)?,
        zipf(GROUPS, 0.9)?,
        zipf(ADDRESSES, 1.0)?,
        zipf(GHOST_MARKETS, 1.0)?,
    );
    let outage = match a.outage {
        Some(Outage(o)) => o,
        None => Some((
            Duration::from_secs(a.seconds) * 3 / 10,
            Duration::from_secs(a.seconds) * 6 / 10,
        )),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let base = cache.stats();
    let multi = crate::interactive().then(MultiProgress::new);
    #[cfg(feature = "redis")]
    let mut warm_bar = crate::WarmStartBar::start(&cache, &base, multi.as_ref());
    let start = Instant::now();
    let up = Arc::new(Upstreams::new(NAMESPACES.len(), outage, start));
    register_loaders(&cache, &up, a.markets);
    let mut watches: Vec<BreakerWatch> = SPECS
        .iter()
        .map(|(name, _, _)| BreakerWatch {
            name,
            was_closed: true,
            periods: Vec::new(),
        })
        .collect();
    let seed = now_ms();
    let mut handles = Vec::new();
    for t in 0..a.threads {
        let mut w = Worker {
            cache: cache.clone(),
            up: up.clone(),
            rng: StdRng::seed_from_u64(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            markets: a.markets,
            zm,
            zu,
            zq,
            zg,
            za,
            zghost,
            latency: Histogram::new(),
            load_latency: Histogram::new(),
            counts: [NsCount::default(); 7],
            errors: 0,
            last_error: None,
        };
        let (stop, ops) = (stop.clone(), ops.clone());
        let h = std::thread::Builder::new()
            .name(format!("demo-{t}"))
            .spawn(move || {
                let mut local = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    w.step();
                    local += 1;
                    if local == 64 {
                        ops.fetch_add(local, Ordering::Relaxed);
                        local = 0;
                    }
                }
                ops.fetch_add(local, Ordering::Relaxed);
                WorkerResult {
                    latency: w.latency,
                    load_latency: w.load_latency,
                    counts: w.counts,
                    errors: w.errors,
                    last_error: w.last_error,
                }
            })
            .map_err(|e| crate::Failure::new(format!("cannot start a worker thread: {e}")))?;
        handles.push(h);
    }

    let pb = crate::bar(a.seconds, "demo (seconds)");
    let pb = match &multi {
        Some(m) => m.add(pb),
        None => pb,
    };
    let say = |line: String| match &multi {
        Some(m) => {
            let _ = m.println(line);
        }
        None => println!("{line}"),
    };
    let mut per_second: Vec<Tiers> = Vec::new();
    let mut prev_tiers = Tiers::of(&base);
    let mut prev_ops = 0u64;
    let mut prev_calls = 0u64;
    let mut prev_stale = 0u64;
    let mut warm_done_at: Option<Duration> = base.warmup_done.then_some(Duration::ZERO);
    for sec in 1..=a.seconds {
        let due = start + Duration::from_secs(sec);
        // Poll finely to timestamp the end of the warm-up and the
        // breakers' state changes.
        while Instant::now() < due {
            std::thread::sleep(Duration::from_millis(10).min(due - Instant::now()));
            if warm_done_at.is_none() && cache.stats().warmup_done {
                warm_done_at = Some(opened.elapsed());
            }
            for w in &mut watches {
                w.poll(&cache, start.elapsed());
            }
            #[cfg(feature = "redis")]
            if let Some(b) = &mut warm_bar {
                b.poll(&cache);
            }
        }
        let s = cache.stats();
        let tiers = Tiers::of(&s);
        let d = tiers.minus(prev_tiers);
        let total_ops = ops.load(Ordering::Relaxed);
        let calls = up.total_calls();
        let stale: u64 = cache
            .load_stats()
            .namespaces
            .iter()
            .map(|n| n.stale_served)
            .sum();
        let open: Vec<&str> = watches
            .iter()
            .filter(|w| !w.was_closed)
            .map(|w| w.name)
            .collect();
        say(format!(
            "[{sec:>3}s] {:>9} ops/s  hit {:>5.1} % (hot {:>5.1} %, warm {:>4.1} %)  upstream {:>6} calls/s  stale {:>6}/s  hot {:>5.1} MiB  disk {:>5.1} MiB{}",
            thousands(total_ops - prev_ops),
            d.pct(d.hot + d.warm),
            d.pct(d.hot),
            d.pct(d.warm),
            thousands(calls - prev_calls),
            thousands(stale - prev_stale),
            s.hot_bytes as f64 / (1 << 20) as f64,
            s.disk_bytes as f64 / (1 << 20) as f64,
            if open.is_empty() {
                String::new()
            } else {
                format!("  breaker open: {}", open.join(", "))
            }
        ));
        pb.inc(1);
        per_second.push(d);
        prev_tiers = tiers;
        prev_ops = total_ops;
        prev_calls = calls;
        prev_stale = stale;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    #[cfg(feature = "redis")]
    if let Some(b) = warm_bar.take() {
        b.finish(&cache);
    }
    let mut latency = Histogram::new();
    let mut load_latency = Histogram::new();
    let mut counts = [NsCount::default(); 7];
    let (mut errors, mut last_error) = (0, None);
    for h in handles {
        match h.join() {
            Ok(r) => {
                latency.merge(&r.latency);
                load_latency.merge(&r.load_latency);
                for (c, w) in counts.iter_mut().zip(&r.counts) {
                    c.gets += w.gets;
                    c.failed += w.failed;
                    c.stale += w.stale;
                    c.stale_in_outage += w.stale_in_outage;
                    c.negative += w.negative;
                }
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
    // Background revalidations still running would store after close.
    cache.wait_refreshes();
    for w in &mut watches {
        w.poll(&cache, start.elapsed());
    }
    let end = cache.stats();
    let loading = cache.load_stats();
    let hottest_price = cache.learned_ttl("price", b"m0").ok();
    #[cfg(feature = "redis")]
    if let Some(m) = cache.mirror_stats() {
        println!(
            "redis mirror   breaker {}, {} writes applied ({} refused as older), outbox {} rows, read-through {} hits / {} misses, warm start {} loaded{}",
            m.breaker.as_str(),
            m.applied,
            m.stale,
            m.outbox_rows,
            m.read_hits,
            m.read_misses,
            m.warm_loaded,
            if m.warm_running {
                " (still running)"
            } else {
                ""
            }
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
        load_latency: &load_latency,
        warm_done_at,
        close_took,
        errors,
        last_error,
        loads: LoadReport {
            counts: &counts,
            up: &up,
            stats: &loading,
            watches: &watches,
            outage,
            hottest_price,
        },
    })?;
    Ok(())
}

/// The loading side of the summary.
struct LoadReport<'a> {
    counts: &'a [NsCount; 7],
    up: &'a Upstreams,
    stats: &'a LoadStats,
    watches: &'a [BreakerWatch],
    outage: Option<(Duration, Duration)>,
    /// The TTL a reload of the most traded market would get now.
    hottest_price: Option<Duration>,
}

struct Summary<'a> {
    a: &'a Args,
    elapsed: Duration,
    total_ops: u64,
    base: &'a Stats,
    end: &'a Stats,
    per_second: &'a [Tiers],
    latency: &'a Histogram,
    load_latency: &'a Histogram,
    warm_done_at: Option<Duration>,
    close_took: Duration,
    errors: u64,
    last_error: Option<String>,
    loads: LoadReport<'a>,
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
        "engine gets    {} (a loading read that misses makes 2-3): hit rate {:.1} % ({})",
        thousands(all.gets()),
        all.pct(all.hot + all.warm),
        all.line()
    )?;
    writeln!(out, "first second: {}", first.line())?;
    for (what, h, whom) in [
        ("get latency ", s.latency, "answered by the cache"),
        ("load latency", s.load_latency, "that needed the loader"),
    ] {
        writeln!(
            out,
            "{what}   p50 {}, p99 {}, p99.9 {}, max {} ({} reads {whom})",
            fmt_ns(h.quantile(0.50)),
            fmt_ns(h.quantile(0.99)),
            fmt_ns(h.quantile(0.999)),
            fmt_ns(h.max),
            thousands(h.total())
        )?;
    }
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
    loading_summary(&mut out, &s.loads)
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The loading tables: calls saved per namespace, then per upstream its
/// measured latency, failures and breaker.
fn loading_summary(out: &mut impl Write, l: &LoadReport<'_>) -> std::io::Result<()> {
    let ns_stats = |name: &str| l.stats.namespaces.iter().find(|n| n.name == name);
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:<14} {:>10} {:>8} {:>10} {:>7} {:>7} {:>7} {:>9} {:>8}",
        "LOADING",
        "UPSTREAM",
        "GETS",
        "CALLS",
        "SAVED",
        "SAVED %",
        "FAILED",
        "STALE",
        "IN OUTAGE",
        "NEG HITS"
    )?;
    let mut all = NsCount::default();
    let mut all_calls = 0;
    for (i, name) in NAMESPACES.iter().enumerate() {
        let c = l.counts[i];
        let calls = l.up.ns_calls(i);
        // The engine's own counters; the demo's must agree with them.
        let (stale, neg) =
            ns_stats(name).map_or((c.stale, c.negative), |n| (n.stale_served, n.negative_hits));
        writeln!(
            out,
            "{:<18} {:<14} {:>10} {:>8} {:>10} {:>7.1} {:>7} {:>7} {:>9} {:>8}",
            name,
            UPSTREAMS[i],
            thousands(c.gets),
            thousands(calls),
            thousands(c.gets.saturating_sub(calls)),
            pct(c.gets.saturating_sub(calls), c.gets),
            thousands(c.failed),
            thousands(stale),
            thousands(c.stale_in_outage),
            thousands(neg)
        )?;
        all.gets += c.gets;
        all.failed += c.failed;
        all.stale += stale;
        all.stale_in_outage += c.stale_in_outage;
        all.negative += neg;
        all_calls += calls;
    }
    writeln!(
        out,
        "{:<18} {:<14} {:>10} {:>8} {:>10} {:>7.1} {:>7} {:>7} {:>9} {:>8}",
        "all",
        "",
        thousands(all.gets),
        thousands(all_calls),
        thousands(all.gets.saturating_sub(all_calls)),
        pct(all.gets.saturating_sub(all_calls), all.gets),
        thousands(all.failed),
        thousands(all.stale),
        thousands(all.stale_in_outage),
        thousands(all.negative)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<14} {:>8} {:>9} {:>8} {:>9} {:<9} {:<30} NOT CLOSED",
        "UPSTREAM", "LATENCY", "CALLS", "FAILED", "REJECTED", "BREAKER", "TRANSITIONS",
    )?;
    for u in &l.up.all {
        let m = l.stats.upstreams.iter().find(|m| m.name == u.name);
        let (state, rejected, transitions) = match m {
            Some(m) => {
                let t = |from: BreakerState, to: BreakerState| {
                    m.transitions[from as usize][to as usize]
                };
                use BreakerState::{Closed, HalfOpen, Open};
                (
                    m.state.as_str(),
                    m.rejected,
                    format!(
                        "{}: opened {}, probed {}, closed {}",
                        m.transitions_total(),
                        t(Closed, Open) + t(HalfOpen, Open),
                        t(Open, HalfOpen),
                        t(HalfOpen, Closed)
                    ),
                )
            }
            None => ("closed", 0, "0".to_string()),
        };
        let watch = l.watches.iter().find(|w| w.name == u.name);
        writeln!(
            out,
            "{:<14} {:>8} {:>9} {:>8} {:>9} {:<9} {:<30} {}",
            u.name,
            fmt_ns(u.mean_latency().as_nanos() as u64),
            thousands(u.calls()),
            thousands(u.failures()),
            thousands(rejected),
            state,
            transitions,
            watch.map_or("-".into(), BreakerWatch::describe)
        )?;
    }
    writeln!(out)?;
    let injected: Vec<String> = SPECS
        .iter()
        .map(|(n, _, f)| format!("{n} {:.1} %", f * 100.0))
        .collect();
    writeln!(
        out,
        "injected       latency as measured above; random failures {}",
        injected.join(", ")
    )?;
    match l.outage {
        Some((from, to)) => {
            let i = UPSTREAMS
                .iter()
                .position(|u| *u == OUTAGE_UPSTREAM)
                .unwrap_or(0);
            writeln!(
                out,
                "outage         {OUTAGE_UPSTREAM} down {:.1}-{:.1} s: {} stale {} values served meanwhile, {} {} gets failed (no value to fall back on); breaker not closed {}",
                from.as_secs_f64(),
                to.as_secs_f64(),
                thousands(l.counts[i].stale_in_outage),
                NAMESPACES[i],
                thousands(l.counts[i].failed),
                NAMESPACES[i],
                l.watches
                    .iter()
                    .find(|w| w.name == OUTAGE_UPSTREAM)
                    .map_or("-".into(), BreakerWatch::describe)
            )?;
        }
        None => writeln!(out, "outage         off (--outage)")?,
    }
    if let Some(p) = ns_stats("price") {
        writeln!(
            out,
            "adaptive TTL   price: mean learned {} over {} tracked keys (bounds 15 s-10 min, base 3 min); m0 (most traded) now {}, {} for {} after a trade",
            p.mean_learned_ttl.map_or("-".into(), secs),
            thousands(p.tracked_keys),
            l.hottest_price.map_or("-".into(), secs),
            secs(TRADE_TTL),
            secs(TRADE_FOR)
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

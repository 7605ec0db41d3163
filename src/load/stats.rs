//! Counters of the loading layer, per namespace and per upstream, and
//! their Prometheus text.

use super::breaker::{BreakerMetrics, CircuitBreaker, breaker_metrics_text};
use super::state::{LoadState, NsState};
use crate::Cache;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Loading counters of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NamespaceLoadStats {
    pub name: String,
    /// Loading reads answered by a live entry.
    pub cache_hits: u64,
    /// Loader calls (foreground, background and refreshes).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Stale values served (revalidating or because loading failed).
    pub stale_served: u64,
    /// Reads answered by a cached "not found".
    pub negative_hits: u64,
    /// "Not found" answers stored.
    pub negatives_stored: u64,
    /// Background and explicit refreshes.
    pub refreshes: u64,
    /// Refreshes started early by XFetch.
    pub early_refreshes: u64,
    /// Loads refused by an open breaker.
    pub breaker_rejections: u64,
    /// Keys whose statistics are kept.
    pub tracked_keys: u64,
    /// The TTL given to the last loaded value (adaptive, with jitter).
    pub last_ttl: Duration,
    /// Mean learned TTL over the tracked keys that have one.
    pub mean_learned_ttl: Option<Duration>,
}

/// Every loading counter.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LoadStats {
    pub namespaces: Vec<NamespaceLoadStats>,
    pub upstreams: Vec<BreakerMetrics>,
}

fn ns_stats(n: &NsState) -> NamespaceLoadStats {
    let c = &n.counters;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (tracked, learned) = {
        let t = n.keys.lock();
        let l: Vec<u64> = t
            .keys
            .values()
            .map(|s| s.ttl_ms)
            .filter(|&t| t > 0)
            .collect();
        let mean =
            (!l.is_empty()).then(|| Duration::from_millis(l.iter().sum::<u64>() / l.len() as u64));
        (t.keys.len() as u64, mean)
    };
    NamespaceLoadStats {
        name: n.name.to_string(),
        cache_hits: g(&c.cache_hits),
        loads: g(&c.loads),
        load_errors: g(&c.load_errors),
        stale_served: g(&c.stale_served),
        negative_hits: g(&c.negative_hits),
        negatives_stored: g(&c.negatives_stored),
        refreshes: g(&c.refreshes),
        early_refreshes: g(&c.early_refreshes),
        breaker_rejections: g(&c.rejected),
        tracked_keys: tracked,
        last_ttl: Duration::from_millis(g(&c.last_ttl_ms)),
        mean_learned_ttl: learned,
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Cache {
    /// Loading counters per namespace and the breakers of every upstream.
    pub fn load_stats(&self) -> LoadStats {
        let st = LoadState::of(self);
        let mut nss: Vec<Arc<NsState>> = st.namespaces.read().values().cloned().collect();
        nss.sort_by(|a, b| a.name.cmp(&b.name));
        let mut bs: Vec<CircuitBreaker> = st.breakers.read().values().cloned().collect();
        bs.sort_by(|a, b| a.name().cmp(b.name()));
        LoadStats {
            namespaces: nss.iter().map(|n| ns_stats(n)).collect(),
            upstreams: bs.iter().map(CircuitBreaker::metrics).collect(),
        }
    }

    /// The loading metrics in the Prometheus text format (prefix
    /// `embercache_load_` and `embercache_breaker_`), to serve next to
    /// `metrics_text()`.
    pub fn load_metrics_text(&self) -> String {
        let mut out = self.load_metrics_body();
        out.push_str(&breaker_metrics_text(&self.load_breakers()));
        out
    }

    /// The upstream breakers, sorted by name.
    pub(crate) fn load_breakers(&self) -> Vec<CircuitBreaker> {
        let st = LoadState::of(self);
        let mut bs: Vec<CircuitBreaker> = st.breakers.read().values().cloned().collect();
        bs.sort_by(|a, b| a.name().cmp(b.name()));
        bs
    }

    /// The loading metrics without the breakers (`metrics_text` renders all
    /// breakers, the mirror's included, as one family).
    pub(crate) fn load_metrics_body(&self) -> String {
        let st = LoadState::of(self);
        let mut nss: Vec<Arc<NsState>> = st.namespaces.read().values().cloned().collect();
        nss.sort_by(|a, b| a.name.cmp(&b.name));
        let stats: Vec<NamespaceLoadStats> = nss.iter().map(|n| ns_stats(n)).collect();
        let mut out = String::new();
        type Field = fn(&NamespaceLoadStats) -> u64;
        let counters: [(&str, &str, Field); 9] = [
            (
                "cache_hits",
                "loading reads answered by a live entry",
                |s| s.cache_hits,
            ),
            ("loads", "loader calls", |s| s.loads),
            ("load_errors", "loader calls that failed", |s| s.load_errors),
            ("stale_served", "stale values served", |s| s.stale_served),
            (
                "negative_hits",
                "reads answered by a cached not-found",
                |s| s.negative_hits,
            ),
            ("negatives_stored", "not-found answers stored", |s| {
                s.negatives_stored
            }),
            ("refreshes", "background and explicit refreshes", |s| {
                s.refreshes
            }),
            (
                "early_refreshes",
                "refreshes started early by XFetch",
                |s| s.early_refreshes,
            ),
            (
                "breaker_rejections",
                "loads refused by an open breaker",
                |s| s.breaker_rejections,
            ),
        ];
        for (name, help, f) in counters {
            let _ = writeln!(out, "# HELP embercache_load_{name}_total {help}.");
            let _ = writeln!(out, "# TYPE embercache_load_{name}_total counter");
            for s in &stats {
                let _ = writeln!(
                    out,
                    "embercache_load_{name}_total{{namespace=\"{}\"}} {}",
                    escape(&s.name),
                    f(s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP embercache_load_ttl_seconds TTL given to the last loaded value (adaptive)."
        );
        let _ = writeln!(out, "# TYPE embercache_load_ttl_seconds gauge");
        for s in &stats {
            let _ = writeln!(
                out,
                "embercache_load_ttl_seconds{{namespace=\"{}\"}} {}",
                escape(&s.name),
                s.last_ttl.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "# HELP embercache_load_latency_seconds Loader call latency."
        );
        let _ = writeln!(out, "# TYPE embercache_load_latency_seconds histogram");
        for n in &nss {
            n.latency.render(
                &mut out,
                "embercache_load_latency_seconds",
                &format!("namespace=\"{}\"", escape(&n.name)),
            );
        }
        out
    }
}

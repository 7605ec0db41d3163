//! The demo's simulated upstream services: one per API the bot calls, each
//! with an injected latency (a short sleep), a small random failure rate,
//! and optionally an outage window during which every call fails. The
//! demo's loaders call them; their counters are the "upstream calls made"
//! side of the summary's loading table.
//!
//! Latencies are the bot's (~2 ms for a price, ~10 ms for a search, from
//! the seed digest's figures scaled to a local network) divided by 20, so
//! that a miss costs 100-1000x a cache hit, as in production, while two
//! worker threads still run tens of thousands of operations a second.
//! `thread::sleep` overshoots by tens of microseconds; the summary prints
//! the latency actually measured.

use embercache::LoadError;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One simulated service.
pub(crate) struct Upstream {
    pub name: &'static str,
    /// Time one call takes.
    pub latency: Duration,
    /// Extra time per key after the first in a batch call.
    pub per_key: Duration,
    /// Share of calls that fail at random (a timeout, a 502).
    pub fail_rate: f64,
    /// From..to, measured from the start of the workload: every call fails.
    pub outage: Option<(Duration, Duration)>,
    started: Instant,
    calls: AtomicU64,
    failures: AtomicU64,
    busy_ns: AtomicU64,
}

/// The bot's upstreams: name, latency in µs, random failure rate.
pub(crate) const SPECS: [(&str, u64, f64); 6] = [
    ("prices-api", 100, 0.005),
    ("markets-api", 200, 0.005),
    ("positions-api", 150, 0.01),
    ("search-api", 500, 0.01),
    ("stats-api", 300, 0.005),
    ("rpc", 100, 0.02),
];

/// The upstream that goes down during the injected outage.
pub(crate) const OUTAGE_UPSTREAM: &str = "prices-api";

impl Upstream {
    fn new(
        (name, latency_us, fail_rate): (&'static str, u64, f64),
        outage: Option<(Duration, Duration)>,
        started: Instant,
    ) -> Self {
        Upstream {
            name,
            latency: Duration::from_micros(latency_us),
            per_key: Duration::from_micros(10),
            fail_rate,
            outage: if name == OUTAGE_UPSTREAM {
                outage
            } else {
                None
            },
            started,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
        }
    }

    /// Whether the injected outage is on now.
    pub fn down(&self) -> bool {
        self.outage.is_some_and(|(from, to)| {
            let at = self.started.elapsed();
            at >= from && at < to
        })
    }

    /// One call for `keys` keys: waits the latency, then fails if the
    /// service is down or at random.
    pub fn call(&self, keys: usize) -> Result<(), LoadError> {
        let t0 = Instant::now();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let extra = self.per_key * u32::try_from(keys.saturating_sub(1)).unwrap_or(u32::MAX);
        std::thread::sleep(self.latency + extra);
        self.busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let err = if self.down() {
            Some("503 Service Unavailable (injected outage)")
        } else if rand::thread_rng().gen_bool(self.fail_rate) {
            Some("timed out (injected failure)")
        } else {
            None
        };
        match err {
            Some(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(LoadError::message(format!("{}: {e}", self.name)))
            }
            None => Ok(()),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Mean measured duration of a call.
    pub fn mean_latency(&self) -> Duration {
        let n = self.calls().max(1);
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed) / n)
    }
}

/// Every upstream, and the calls made on behalf of each namespace.
pub(crate) struct Upstreams {
    pub all: Vec<Upstream>,
    /// Loader calls per namespace (index into the demo's `NAMESPACES`).
    ns_calls: Vec<AtomicU64>,
}

impl Upstreams {
    pub fn new(namespaces: usize, outage: Option<(Duration, Duration)>, started: Instant) -> Self {
        Upstreams {
            all: SPECS
                .iter()
                .map(|&s| Upstream::new(s, outage, started))
                .collect(),
            ns_calls: (0..namespaces).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The upstream called `name`.
    pub fn get(&self, name: &str) -> &Upstream {
        self.all
            .iter()
            .find(|u| u.name == name)
            .unwrap_or(&self.all[0])
    }

    /// A call for namespace `ns` to `upstream` with `keys` keys.
    pub fn call(&self, ns: usize, upstream: &str, keys: usize) -> Result<(), LoadError> {
        if let Some(c) = self.ns_calls.get(ns) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.get(upstream).call(keys)
    }

    /// Calls made for namespace `ns`.
    pub fn ns_calls(&self, ns: usize) -> u64 {
        self.ns_calls
            .get(ns)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Calls made to every upstream.
    pub fn total_calls(&self) -> u64 {
        self.all.iter().map(Upstream::calls).sum()
    }
}

/// Parses `--outage`: `FROM-TO` in whole or fractional seconds from the
/// start of the workload, or `off`.
pub(crate) fn parse_outage(s: &str) -> Result<Option<(Duration, Duration)>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad =
        || format!("{s:?} is not an outage window; write FROM-TO in seconds (e.g. 3-6) or off");
    let (a, b) = t.split_once('-').ok_or_else(bad)?;
    let secs = |x: &str| -> Result<Duration, String> {
        let v: f64 = x.trim().parse().map_err(|_| bad())?;
        Duration::try_from_secs_f64(v).map_err(|_| bad())
    };
    let (from, to) = (secs(a)?, secs(b)?);
    if from >= to {
        return Err(format!(
            "outage {s:?} ends before it starts; write FROM-TO with FROM < TO"
        ));
    }
    Ok(Some((from, to)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_windows_parse() {
        let s = Duration::from_secs;
        assert_eq!(parse_outage("3-6"), Ok(Some((s(3), s(6)))));
        assert_eq!(
            parse_outage("0.5-1.5"),
            Ok(Some((
                Duration::from_millis(500),
                Duration::from_millis(1500)
            )))
        );
        assert_eq!(parse_outage("off"), Ok(None));
        for bad in ["", "3", "6-3", "3-3", "a-b", "-1-2", "3-"] {
            assert!(parse_outage(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_upstream_fails_only_inside_its_outage() {
        let started = Instant::now() - Duration::from_secs(5);
        let spec = ("prices-api", 1, 0.0);
        let down = Upstream::new(
            spec,
            Some((Duration::ZERO, Duration::from_secs(60))),
            started,
        );
        assert!(down.call(1).is_err());
        let over = Upstream::new(
            spec,
            Some((Duration::ZERO, Duration::from_secs(1))),
            started,
        );
        assert!(over.call(3).is_ok());
        assert_eq!((down.failures(), over.failures()), (1, 0));
    }
}

//! A circuit breaker: closed / open / half-open over a count-based sliding
//! window of failure and slow-call rates, exponential backoff with jitter
//! while open, a bounded number of half-open probes.
//!
//! It knows nothing about the cache. Time is passed in as engine
//! milliseconds (`now_ms`) by the caller, so the cache's injected clock
//! drives it and tests move time by hand; the Redis mirror and the loaders
//! use the same type.
//!
//! ```
//! use embercache::{BreakerConfig, CircuitBreaker, CallOutcome};
//! use std::time::Duration;
//! let b = CircuitBreaker::new("prices-api", BreakerConfig::default()).unwrap();
//! let now = 1_000;
//! match b.try_acquire(now) {
//!     Ok(permit) => {
//!         // ... call the upstream, measure how long it took ...
//!         permit.record(CallOutcome::Success, Duration::from_millis(20), now + 20);
//!     }
//!     Err(open) => println!("not calling: retry in {:?}", open.retry_after),
//! }
//! ```

use super::histogram::LatencyHistogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Settings of one breaker. The defaults follow resilience4j's
/// `CircuitBreakerConfig` (failure rate 50 %, slow-call rate 100 % at 60 s,
/// a window of 100 calls with at least 10, 60 s in open) plus exponential
/// backoff with jitter in open and 3 half-open probes.
///
/// The bot's breaker today opens after 3 failures, waits 60 s and lets 3
/// probes through; [`BreakerConfig::legacy_bot`] reproduces that.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Open when at least this percentage of the calls in the window failed.
    /// Default: 50.0. Env: `EMBERCACHE_BREAKER_<UPSTREAM>_FAILURE_RATE`.
    pub failure_rate_threshold: f64,
    /// Open when at least this percentage of the calls in the window were
    /// slow. Default: 100.0 (all of them). Env: `..._SLOW_CALL_RATE`.
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this long is slow. Default: 60 s.
    /// Env: `..._SLOW_CALL_DURATION` (`500ms`, `60s`, `2m`).
    pub slow_call_duration: Duration,
    /// The sliding window: the last this many calls. Default: 100.
    /// Env: `..._WINDOW`.
    pub window_size: u32,
    /// Rates are not evaluated before the window holds this many calls.
    /// Default: 10. Env: `..._MIN_CALLS`.
    pub minimum_calls: u32,
    /// Wait in open before the first probe. Default: 60 s. Env: `..._WAIT`.
    pub wait_in_open: Duration,
    /// Each reopening without a close in between multiplies the wait by
    /// this. Default: 2.0. Env: `..._BACKOFF`.
    pub backoff_multiplier: f64,
    /// The wait never exceeds this (before jitter). Default: 10 min.
    /// Env: `..._MAX_WAIT`.
    pub max_wait_in_open: Duration,
    /// The wait is scaled by a random factor in `1 ± jitter`, so breakers
    /// of many processes do not probe in lockstep. Default: 0.2.
    /// Env: `..._JITTER`.
    pub jitter: f64,
    /// Calls let through in half-open; when all have answered, the breaker
    /// closes unless they fail (or are slow) at the thresholds above, in
    /// which case it opens again with a longer wait. Default: 3.
    /// Env: `..._HALF_OPEN_PROBES`.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            window_size: 100,
            minimum_calls: 10,
            wait_in_open: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            max_wait_in_open: Duration::from_secs(600),
            jitter: 0.2,
            half_open_probes: 3,
        }
    }
}

/// A setting that is out of range, or an environment variable that does not
/// parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid breaker setting `{setting}`: {reason}")]
pub struct BreakerConfigError {
    /// The field, or the environment variable, at fault.
    pub setting: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl BreakerConfig {
    /// The bot's breaker before embercache: 3 failures in a row open it
    /// (window 3, minimum 3, failure rate 100 %), a fixed 60 s wait, no
    /// jitter, 3 half-open probes.
    pub fn legacy_bot() -> Self {
        BreakerConfig {
            failure_rate_threshold: 100.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            window_size: 3,
            minimum_calls: 3,
            wait_in_open: Duration::from_secs(60),
            backoff_multiplier: 1.0,
            max_wait_in_open: Duration::from_secs(60),
            jitter: 0.0,
            half_open_probes: 3,
        }
    }

    /// Failure-rate threshold in percent.
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.failure_rate_threshold = percent;
        self
    }
    /// Slow-call rate threshold in percent, and what counts as slow.
    pub fn slow_calls(mut self, percent: f64, duration: Duration) -> Self {
        self.slow_call_rate_threshold = percent;
        self.slow_call_duration = duration;
        self
    }
    /// Window size and the minimum number of calls before rates count.
    pub fn window(mut self, size: u32, minimum_calls: u32) -> Self {
        self.window_size = size;
        self.minimum_calls = minimum_calls;
        self
    }
    /// First wait in open and the cap of the backoff.
    pub fn wait(mut self, first: Duration, max: Duration) -> Self {
        self.wait_in_open = first;
        self.max_wait_in_open = max;
        self
    }
    /// Backoff multiplier between consecutive openings.
    pub fn backoff(mut self, multiplier: f64) -> Self {
        self.backoff_multiplier = multiplier;
        self
    }
    /// Jitter fraction of the wait, in [0, 1).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }
    /// Probes let through in half-open.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        let bad = |setting: &str, reason: String| {
            Err(BreakerConfigError {
                setting: setting.into(),
                reason,
            })
        };
        for (name, v) in [
            ("failure_rate_threshold", self.failure_rate_threshold),
            ("slow_call_rate_threshold", self.slow_call_rate_threshold),
        ] {
            if !(v > 0.0 && v <= 100.0) {
                return bad(name, format!("{v} is not a percentage in (0, 100]"));
            }
        }
        if self.window_size == 0 || self.window_size > 100_000 {
            return bad(
                "window_size",
                format!("{} is not in 1..=100000", self.window_size),
            );
        }
        if self.minimum_calls == 0 || self.minimum_calls > self.window_size {
            return bad(
                "minimum_calls",
                format!(
                    "{} is not in 1..=window_size ({})",
                    self.minimum_calls, self.window_size
                ),
            );
        }
        if self.wait_in_open.is_zero() || self.max_wait_in_open < self.wait_in_open {
            return bad(
                "wait_in_open",
                format!(
                    "{:?} must be positive and at most max_wait_in_open ({:?})",
                    self.wait_in_open, self.max_wait_in_open
                ),
            );
        }
        if !(1.0..=100.0).contains(&self.backoff_multiplier) {
            return bad(
                "backoff_multiplier",
                format!("{} is not in 1..=100", self.backoff_multiplier),
            );
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad("jitter", format!("{} is not in [0, 1)", self.jitter));
        }
        if self.half_open_probes == 0 {
            return bad("half_open_probes", "must be at least 1".into());
        }
        Ok(())
    }

    /// This config overridden by the process environment: first
    /// `EMBERCACHE_BREAKER_<SETTING>` (every upstream), then
    /// `EMBERCACHE_BREAKER_<UPSTREAM>_<SETTING>`, where `<UPSTREAM>` is the
    /// name upper-cased with every character other than A-Z and 0-9
    /// replaced by `_` (`prices-api` → `PRICES_API`). Settings:
    /// `FAILURE_RATE`, `SLOW_CALL_RATE` (percent), `SLOW_CALL_DURATION`,
    /// `WAIT`, `MAX_WAIT` (`250ms`, `60s`, `5m`, `1h`), `WINDOW`,
    /// `MIN_CALLS`, `HALF_OPEN_PROBES` (integers), `BACKOFF`, `JITTER`.
    pub fn from_env(self, upstream: &str) -> Result<Self, BreakerConfigError> {
        self.from_vars(upstream, |name| std::env::var(name).ok())
    }

    /// [`BreakerConfig::from_env`] with a custom variable lookup (tests,
    /// config files).
    pub fn from_vars(
        mut self,
        upstream: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BreakerConfigError> {
        let up: String = upstream
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        for prefix in [
            "EMBERCACHE_BREAKER_".to_string(),
            format!("EMBERCACHE_BREAKER_{up}_"),
        ] {
            let get = |s: &str| var(&format!("{prefix}{s}")).map(|v| (format!("{prefix}{s}"), v));
            let bad = |name: &str, v: &str, what: &str| BreakerConfigError {
                setting: name.into(),
                reason: format!("{v:?} is not {what}"),
            };
            let float = |s: &str| -> Result<Option<f64>, BreakerConfigError> {
                get(s)
                    .map(|(n, v)| v.trim().parse().map_err(|_| bad(&n, &v, "a number")))
                    .transpose()
            };
            let int = |s: &str| -> Result<Option<u32>, BreakerConfigError> {
                get(s)
                    .map(|(n, v)| v.trim().parse().map_err(|_| bad(&n, &v, "an integer")))
                    .transpose()
            };
            let dur = |s: &str| -> Result<Option<Duration>, BreakerConfigError> {
                get(s)
                    .map(|(n, v)| {
                        parse_duration(&v).ok_or_else(|| bad(&n, &v, "a duration like 60s"))
                    })
                    .transpose()
            };
            if let Some(v) = float("FAILURE_RATE")? {
                self.failure_rate_threshold = v;
            }
            if let Some(v) = float("SLOW_CALL_RATE")? {
                self.slow_call_rate_threshold = v;
            }
            if let Some(v) = dur("SLOW_CALL_DURATION")? {
                self.slow_call_duration = v;
            }
            if let Some(v) = int("WINDOW")? {
                self.window_size = v;
            }
            if let Some(v) = int("MIN_CALLS")? {
                self.minimum_calls = v;
            }
            if let Some(v) = dur("WAIT")? {
                self.wait_in_open = v;
            }
            if let Some(v) = dur("MAX_WAIT")? {
                self.max_wait_in_open = v;
            }
            if let Some(v) = float("BACKOFF")? {
                self.backoff_multiplier = v;
            }
            if let Some(v) = float("JITTER")? {
                self.jitter = v;
            }
            if let Some(v) = int("HALF_OPEN_PROBES")? {
                self.half_open_probes = v;
            }
        }
        self.validate()?;
        Ok(self)
    }
}

/// `250ms`, `60s`, `5m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls go through; outcomes fill the window.
    Closed,
    /// No call goes through until the wait is over.
    Open,
    /// A bounded number of probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (metric label values).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// How a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The upstream answered (a "not found" is an answer too).
    Success,
    /// The upstream failed or timed out.
    Failure,
}

/// A call refused because the breaker is open (or its half-open probes are
/// all taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is open; next probe in {retry_after:?}")]
pub struct BreakerOpen {
    /// The breaker's name (the upstream).
    pub name: Arc<str>,
    /// How long until a probe may be let through (zero when only the
    /// half-open probes are busy).
    pub retry_after: Duration,
}

/// The persisted form of a breaker: enough to come back open after a
/// restart during an outage instead of hammering the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// Format of this struct; 1.
    pub format: u8,
    /// The state when saved. A half-open breaker comes back open with its
    /// wait over, so its probes start again.
    pub state: BreakerState,
    /// Engine time (unix ms) when an open breaker lets the first probe
    /// through.
    pub open_until_ms: u64,
    /// Openings since the last close: the backoff exponent.
    pub consecutive_opens: u32,
    /// The window, oldest first: bit 0 failed, bit 1 slow.
    pub window: Vec<u8>,
}

/// A snapshot of a breaker's counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    pub name: String,
    pub state: BreakerState,
    /// `transitions[from][to]`, indexed by `BreakerState as usize`.
    pub transitions: [[u64; 3]; 3],
    pub successes: u64,
    pub failures: u64,
    /// Calls (successful or not) at or above `slow_call_duration`.
    pub slow_calls: u64,
    /// Calls refused while open.
    pub rejected: u64,
    /// Failure rate (percent) over the current window, when it holds at
    /// least `minimum_calls`.
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
}

impl BreakerMetrics {
    /// Total state changes.
    pub fn transitions_total(&self) -> u64 {
        self.transitions.iter().flatten().sum()
    }
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until_ms: u64,
    },
    HalfOpen {
        issued: u32,
        answered: u32,
        failed: u32,
        slow: u32,
    },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: VecDeque<u8>,
    failed: u32,
    slow: u32,
    consecutive_opens: u32,
    /// Bumped on every transition: outcomes of calls admitted under an
    /// older generation are counted in the metrics but not in the window.
    generation: u64,
    rng: u64,
    transitions: [[u64; 3]; 3],
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    successes: AtomicU64,
    failures: AtomicU64,
    slow_calls: AtomicU64,
    rejected: AtomicU64,
    latency: LatencyHistogram,
}

/// A circuit breaker. Cheap to clone: clones share the state. See the
/// module docs for an example.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

/// Permission to make one call. Report how it went with
/// [`Permit::record`]; dropping it unrecorded (the caller panicked or was
/// cancelled) frees a half-open probe slot without counting the call.
#[derive(Debug)]
#[must_use = "record the call's outcome, or the breaker learns nothing"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the upstream; used in metrics and
    /// errors).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        let name: String = name.into();
        // Seed the jitter from a random hasher so processes differ.
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(name.as_bytes());
            h.finish() | 1
        };
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                name: name.into(),
                inner: Mutex::new(Inner {
                    state: State::Closed,
                    window: VecDeque::with_capacity(config.window_size as usize),
                    failed: 0,
                    slow: 0,
                    consecutive_opens: 0,
                    generation: 0,
                    rng: seed,
                    transitions: [[0; 3]; 3],
                }),
                config,
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                slow_calls: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                latency: LatencyHistogram::default(),
            }),
        })
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The current state. An open breaker whose wait is over still reports
    /// `Open` until a call asks for a permit.
    pub fn state(&self) -> BreakerState {
        self.shared.inner.lock().state.public()
    }

    /// Asks to make a call at engine time `now_ms`. Closed: always granted.
    /// Open: refused until the wait is over, then the breaker turns
    /// half-open. Half-open: granted for at most `half_open_probes` calls.
    pub fn try_acquire(&self, now_ms: u64) -> Result<Permit, BreakerOpen> {
        let mut g = self.shared.inner.lock();
        if let State::Open { until_ms } = g.state {
            if now_ms < until_ms {
                drop(g);
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(BreakerOpen {
                    name: self.shared.name.clone(),
                    retry_after: Duration::from_millis(until_ms - now_ms),
                });
            }
            self.transition(
                &mut g,
                State::HalfOpen {
                    issued: 0,
                    answered: 0,
                    failed: 0,
                    slow: 0,
                },
            );
        }
        let probes = self.shared.config.half_open_probes;
        let probe = match &mut g.state {
            State::Closed => false,
            State::HalfOpen { issued, .. } if *issued < probes => {
                *issued += 1;
                true
            }
            _ => {
                drop(g);
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(BreakerOpen {
                    name: self.shared.name.clone(),
                    retry_after: Duration::ZERO,
                });
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            generation: g.generation,
            probe,
            recorded: false,
        })
    }

    fn transition(&self, g: &mut Inner, to: State) {
        let from = g.state.public().index();
        let to_i = to.public().index();
        g.transitions[from][to_i] += 1;
        g.generation += 1;
        if matches!(to, State::Closed) {
            g.consecutive_opens = 0;
        }
        if !matches!(to, State::HalfOpen { .. }) {
            // A fresh window after opening or closing: old outcomes
            // describe an upstream that has changed since.
            g.window.clear();
            g.failed = 0;
            g.slow = 0;
        }
        tracing::info!(
            breaker = %self.shared.name,
            from = BreakerState::as_str(g.state.public()),
            to = to.public().as_str(),
            "circuit breaker transition"
        );
        g.state = to;
    }

    fn open(&self, g: &mut Inner, now_ms: u64) {
        let c = &self.shared.config;
        let exp = g.consecutive_opens.min(63) as i32;
        let base = c.wait_in_open.as_secs_f64() * c.backoff_multiplier.powi(exp);
        let wait = base.min(c.max_wait_in_open.as_secs_f64());
        // xorshift64*: jitter only needs to decorrelate processes.
        g.rng ^= g.rng >> 12;
        g.rng ^= g.rng << 25;
        g.rng ^= g.rng >> 27;
        let r = g.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let unit = r as f64 / (1u64 << 53) as f64; // [0, 1)
        let wait = wait * (1.0 + c.jitter * (2.0 * unit - 1.0));
        let until_ms = now_ms.saturating_add((wait * 1000.0) as u64);
        g.consecutive_opens = g.consecutive_opens.saturating_add(1);
        self.transition(g, State::Open { until_ms });
    }

    fn rates(&self, failed: u32, slow: u32, n: u32) -> (f64, f64) {
        let n = f64::from(n.max(1));
        (f64::from(failed) * 100.0 / n, f64::from(slow) * 100.0 / n)
    }

    fn on_result(&self, p: &Permit, outcome: CallOutcome, latency: Duration, now_ms: u64) {
        let s = &self.shared;
        let slow = latency >= s.config.slow_call_duration;
        let failed = outcome == CallOutcome::Failure;
        s.latency.observe(latency);
        let c = if failed { &s.failures } else { &s.successes };
        c.fetch_add(1, Ordering::Relaxed);
        if slow {
            s.slow_calls.fetch_add(1, Ordering::Relaxed);
        }
        let mut g = s.inner.lock();
        if g.generation != p.generation {
            return;
        }
        let bits = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        let probes = s.config.half_open_probes;
        match &mut g.state {
            State::Closed => {
                if g.window.len() == s.config.window_size as usize
                    && let Some(old) = g.window.pop_front()
                {
                    g.failed -= u32::from(old & FAILED != 0);
                    g.slow -= u32::from(old & SLOW != 0);
                }
                g.window.push_back(bits);
                g.failed += u32::from(failed);
                g.slow += u32::from(slow);
                let n = g.window.len() as u32;
                if n >= s.config.minimum_calls {
                    let (fr, sr) = self.rates(g.failed, g.slow, n);
                    if fr >= s.config.failure_rate_threshold
                        || sr >= s.config.slow_call_rate_threshold
                    {
                        self.open(&mut g, now_ms);
                    }
                }
            }
            State::HalfOpen {
                answered,
                failed: hf,
                slow: hs,
                ..
            } => {
                *answered += 1;
                *hf += u32::from(failed);
                *hs += u32::from(slow);
                let (answered, hf, hs) = (*answered, *hf, *hs);
                // Decide as soon as the outcome is certain: reopen once the
                // failures already reach the threshold of all the probes.
                let (fr_all, sr_all) = self.rates(hf, hs, probes);
                if fr_all >= s.config.failure_rate_threshold
                    || sr_all >= s.config.slow_call_rate_threshold
                {
                    self.open(&mut g, now_ms);
                } else if answered >= probes {
                    self.transition(&mut g, State::Closed);
                }
            }
            State::Open { .. } => {}
        }
    }

    /// Runs `f` through the breaker: refused while open, timed with `now`,
    /// recorded as a failure when it returns `Err`.
    pub fn call<T, E>(
        &self,
        now: impl Fn() -> u64,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, CallError<E>> {
        let start = now();
        let permit = self.try_acquire(start).map_err(CallError::Open)?;
        let r = f();
        let end = now();
        let latency = Duration::from_millis(end.saturating_sub(start));
        let outcome = if r.is_ok() {
            CallOutcome::Success
        } else {
            CallOutcome::Failure
        };
        permit.record(outcome, latency, end);
        r.map_err(CallError::Failed)
    }

    /// The state to persist. See [`BreakerSnapshot`].
    pub fn snapshot(&self) -> BreakerSnapshot {
        let g = self.shared.inner.lock();
        let (state, open_until_ms) = match g.state {
            State::Closed => (BreakerState::Closed, 0),
            State::Open { until_ms } => (BreakerState::Open, until_ms),
            State::HalfOpen { .. } => (BreakerState::HalfOpen, 0),
        };
        BreakerSnapshot {
            format: 1,
            state,
            open_until_ms,
            consecutive_opens: g.consecutive_opens,
            window: g.window.iter().copied().collect(),
        }
    }

    /// Puts the breaker back where a snapshot left it (after a restart).
    /// Counters and transitions start from zero.
    pub fn restore(&self, snap: &BreakerSnapshot) {
        let mut g = self.shared.inner.lock();
        g.generation += 1;
        g.consecutive_opens = snap.consecutive_opens;
        g.window.clear();
        g.failed = 0;
        g.slow = 0;
        let keep = snap
            .window
            .len()
            .saturating_sub(self.shared.config.window_size as usize);
        for &b in &snap.window[keep..] {
            g.window.push_back(b & (FAILED | SLOW));
            g.failed += u32::from(b & FAILED != 0);
            g.slow += u32::from(b & SLOW != 0);
        }
        g.state = match snap.state {
            BreakerState::Closed => State::Closed,
            BreakerState::Open => State::Open {
                until_ms: snap.open_until_ms,
            },
            // Probes in flight died with the process: probe again at once.
            BreakerState::HalfOpen => State::Open { until_ms: 0 },
        };
    }

    /// Total state changes so far (cheap; used to persist on change).
    pub fn transitions_total(&self) -> u64 {
        self.shared.inner.lock().transitions.iter().flatten().sum()
    }

    /// The counters.
    pub fn metrics(&self) -> BreakerMetrics {
        let s = &self.shared;
        let g = s.inner.lock();
        let n = g.window.len() as u32;
        let (fr, sr) = self.rates(g.failed, g.slow, n);
        let enough = n >= s.config.minimum_calls;
        BreakerMetrics {
            name: s.name.to_string(),
            state: g.state.public(),
            transitions: g.transitions,
            successes: s.successes.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            slow_calls: s.slow_calls.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            failure_rate: enough.then_some(fr),
            slow_call_rate: enough.then_some(sr),
        }
    }

    /// Appends this breaker's metrics in the Prometheus text format
    /// (without `# HELP`/`# TYPE` lines; see [`breaker_metrics_text`]).
    fn encode_samples(&self, out: &mut String) {
        let m = self.metrics();
        let name = escape(&m.name);
        for st in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let _ = writeln!(
                out,
                "embercache_breaker_state{{upstream=\"{name}\",state=\"{}\"}} {}",
                st.as_str(),
                u8::from(m.state == st)
            );
        }
        for from in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            for to in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                let n = m.transitions[from.index()][to.index()];
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "embercache_breaker_transitions_total{{upstream=\"{name}\",from=\"{}\",to=\"{}\"}} {n}",
                        from.as_str(),
                        to.as_str()
                    );
                }
            }
        }
        for (outcome, n) in [
            ("success", m.successes),
            ("failure", m.failures),
            ("rejected", m.rejected),
        ] {
            let _ = writeln!(
                out,
                "embercache_breaker_calls_total{{upstream=\"{name}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "embercache_breaker_slow_calls_total{{upstream=\"{name}\"}} {}",
            m.slow_calls
        );
        self.shared.latency.render(
            out,
            "embercache_breaker_call_latency_seconds",
            &format!("upstream=\"{name}\""),
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of several breakers, with one `# HELP`/`# TYPE`
/// header per metric family.
pub fn breaker_metrics_text<'a>(breakers: impl IntoIterator<Item = &'a CircuitBreaker>) -> String {
    let mut body = String::new();
    for b in breakers {
        b.encode_samples(&mut body);
    }
    let mut out = String::new();
    for (family, kind, help) in [
        (
            "embercache_breaker_state",
            "gauge",
            "1 for the state each breaker is in",
        ),
        (
            "embercache_breaker_transitions_total",
            "counter",
            "state changes",
        ),
        (
            "embercache_breaker_calls_total",
            "counter",
            "calls by outcome (rejected = refused while open)",
        ),
        (
            "embercache_breaker_slow_calls_total",
            "counter",
            "calls at or above slow_call_duration",
        ),
        (
            "embercache_breaker_call_latency_seconds",
            "histogram",
            "latency of calls through the breaker",
        ),
    ] {
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| {
                l.strip_prefix(family).is_some_and(|r| {
                    r.starts_with('{')
                        || (kind == "histogram"
                            && ["_bucket{", "_sum{", "_count{"]
                                .iter()
                                .any(|s| r.starts_with(s)))
                })
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {family} {help}.");
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Why [`CircuitBreaker::call`] did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call.
    #[error(transparent)]
    Open(BreakerOpen),
    /// The call was made and failed.
    #[error("call failed")]
    Failed(E),
}

impl Permit {
    /// Reports the call's outcome and latency; `now_ms` is the engine time
    /// at its end (the reopening wait is counted from it).
    pub fn record(mut self, outcome: CallOutcome, latency: Duration, now_ms: u64) {
        self.recorded = true;
        self.breaker.on_result(&self, outcome, latency, now_ms);
    }

    /// Whether this permit is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.recorded || !self.probe {
            return;
        }
        // A probe that never answered: give its slot back.
        let mut g = self.breaker.shared.inner.lock();
        if g.generation == self.generation
            && let State::HalfOpen { issued, .. } = &mut g.state
        {
            *issued = issued.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(5);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    fn fail(b: &CircuitBreaker, now: u64) {
        b.try_acquire(now)
            .unwrap()
            .record(CallOutcome::Failure, MS, now);
    }
    fn ok(b: &CircuitBreaker, now: u64) {
        b.try_acquire(now)
            .unwrap()
            .record(CallOutcome::Success, MS, now);
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = BreakerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.failure_rate_threshold, 50.0);
        assert_eq!(c.slow_call_rate_threshold, 100.0);
        assert_eq!(c.slow_call_duration, Duration::from_secs(60));
        assert_eq!((c.window_size, c.minimum_calls), (100, 10));
        assert_eq!(c.wait_in_open, Duration::from_secs(60));
        assert_eq!(c.half_open_probes, 3);
        BreakerConfig::legacy_bot().validate().unwrap();
    }

    #[test]
    fn stays_closed_below_minimum_calls() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        for i in 0..9 {
            fail(&b, i);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 10);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failure_rate_over_sliding_window() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        // 51 successes then 49 failures: 49 % over a full window, closed.
        for _ in 0..51 {
            ok(&b, 0);
        }
        for _ in 0..49 {
            fail(&b, 0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.metrics().failure_rate, Some(49.0));
        // The window slides: the next failure pushes out the oldest
        // success, 50 / 100 = the threshold.
        fail(&b, 0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn slow_calls_open_it() {
        let c = BreakerConfig {
            slow_call_rate_threshold: 80.0,
            slow_call_duration: Duration::from_secs(2),
            ..cfg()
        };
        let b = CircuitBreaker::new("x", c).unwrap();
        for _ in 0..8 {
            b.try_acquire(0)
                .unwrap()
                .record(CallOutcome::Success, Duration::from_secs(3), 0);
        }
        for _ in 0..2 {
            ok(&b, 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.metrics().slow_calls, 8);
    }

    #[test]
    fn open_rejects_until_wait_then_bounded_probes() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        for _ in 0..10 {
            fail(&b, 1_000);
        }
        let e = b.try_acquire(1_000).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(60));
        assert!(b.try_acquire(60_999).is_err());
        // Wait over: three probes, the fourth is refused.
        let p: Vec<Permit> = (0..3).map(|_| b.try_acquire(61_000).unwrap()).collect();
        assert!(p.iter().all(Permit::is_probe));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(61_000).is_err());
        for p in p {
            p.record(CallOutcome::Success, MS, 61_001);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let m = b.metrics();
        assert_eq!(m.transitions_total(), 3);
        assert_eq!(m.rejected, 3);
    }

    #[test]
    fn failed_probes_reopen_with_exponential_backoff() {
        let c = BreakerConfig {
            max_wait_in_open: Duration::from_secs(200),
            ..cfg()
        };
        let b = CircuitBreaker::new("x", c).unwrap();
        for _ in 0..10 {
            fail(&b, 0);
        }
        let mut now = 0;
        for expected in [120_000u64, 200_000, 200_000] {
            let wait = b.try_acquire(now).unwrap_err().retry_after;
            now += wait.as_millis() as u64;
            // Two failed probes out of three reach 50 %: reopened at once.
            fail(&b, now);
            assert_eq!(b.state(), BreakerState::HalfOpen);
            fail(&b, now);
            assert_eq!(b.state(), BreakerState::Open);
            assert_eq!(
                b.try_acquire(now).unwrap_err().retry_after,
                Duration::from_millis(expected)
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let c = BreakerConfig {
            jitter: 0.5,
            ..BreakerConfig::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let b = CircuitBreaker::new("x", c.clone()).unwrap();
            for _ in 0..10 {
                fail(&b, 0);
            }
            let w = b.try_acquire(0).unwrap_err().retry_after;
            assert!(w >= Duration::from_secs(30) && w <= Duration::from_secs(90));
            seen.insert(w);
        }
        assert!(seen.len() > 1, "jitter never varied the wait");
    }

    #[test]
    fn dropped_probe_frees_its_slot() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        for _ in 0..10 {
            fail(&b, 0);
        }
        let held: Vec<Permit> = (0..3).map(|_| b.try_acquire(60_000).unwrap()).collect();
        assert!(b.try_acquire(60_000).is_err());
        drop(held);
        assert!(b.try_acquire(60_000).is_ok());
    }

    #[test]
    fn outcomes_from_an_older_state_do_not_count() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        let late = b.try_acquire(0).unwrap();
        for _ in 0..10 {
            fail(&b, 0);
        }
        let p: Vec<Permit> = (0..3).map(|_| b.try_acquire(60_000).unwrap()).collect();
        late.record(CallOutcome::Failure, MS, 60_000); // admitted while closed
        assert_eq!(b.state(), BreakerState::HalfOpen);
        for p in p {
            p.record(CallOutcome::Success, MS, 60_001);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn snapshot_restores_an_open_breaker() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        for _ in 0..10 {
            fail(&b, 5_000);
        }
        let snap = b.snapshot();
        let bytes = postcard::to_allocvec(&snap).unwrap();
        let back: BreakerSnapshot = postcard::from_bytes(&bytes).unwrap();
        let b2 = CircuitBreaker::new("x", cfg()).unwrap();
        b2.restore(&back);
        assert_eq!(b2.state(), BreakerState::Open);
        assert_eq!(
            b2.try_acquire(6_000).unwrap_err().retry_after,
            Duration::from_secs(59)
        );
        assert_eq!(b2.snapshot().consecutive_opens, 1);
        // A closed one keeps its window.
        let c = CircuitBreaker::new("y", cfg()).unwrap();
        for _ in 0..9 {
            fail(&c, 0);
        }
        let c2 = CircuitBreaker::new("y", cfg()).unwrap();
        c2.restore(&c.snapshot());
        fail(&c2, 0);
        assert_eq!(c2.state(), BreakerState::Open);
    }

    #[test]
    fn legacy_bot_opens_after_three_failures() {
        let b = CircuitBreaker::new("x", BreakerConfig::legacy_bot()).unwrap();
        fail(&b, 0);
        fail(&b, 0);
        ok(&b, 0);
        fail(&b, 0);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 0);
        fail(&b, 0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire(0).unwrap_err().retry_after,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn env_overrides_global_then_per_upstream() {
        let vars = [
            ("EMBERCACHE_BREAKER_FAILURE_RATE", "30"),
            ("EMBERCACHE_BREAKER_WAIT", "10s"),
            ("EMBERCACHE_BREAKER_PRICES_API_FAILURE_RATE", "25.5"),
            ("EMBERCACHE_BREAKER_PRICES_API_SLOW_CALL_DURATION", "750ms"),
            ("EMBERCACHE_BREAKER_PRICES_API_HALF_OPEN_PROBES", "5"),
        ];
        let look = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let c = BreakerConfig::default()
            .from_vars("prices-api", look)
            .unwrap();
        assert_eq!(c.failure_rate_threshold, 25.5);
        assert_eq!(c.wait_in_open, Duration::from_secs(10));
        assert_eq!(c.slow_call_duration, Duration::from_millis(750));
        assert_eq!(c.half_open_probes, 5);
        let other = BreakerConfig::default().from_vars("rpc", look).unwrap();
        assert_eq!(other.failure_rate_threshold, 30.0);
        let e = BreakerConfig::default()
            .from_vars("rpc", |n| {
                (n == "EMBERCACHE_BREAKER_RPC_WINDOW").then(|| "lots".to_string())
            })
            .unwrap_err();
        assert_eq!(e.setting, "EMBERCACHE_BREAKER_RPC_WINDOW");
        let e = BreakerConfig::default()
            .from_vars("rpc", |n| {
                (n == "EMBERCACHE_BREAKER_RPC_FAILURE_RATE").then(|| "150".to_string())
            })
            .unwrap_err();
        assert_eq!(e.setting, "failure_rate_threshold");
    }

    #[test]
    fn call_wraps_a_closure() {
        let b = CircuitBreaker::new("x", cfg()).unwrap();
        let now = std::sync::atomic::AtomicU64::new(0);
        let t = || now.load(Ordering::Relaxed);
        assert_eq!(b.call(t, || Ok::<_, ()>(7)), Ok(7));
        // One success and nine failures: 90 % once the minimum is reached.
        for _ in 0..9 {
            assert_eq!(
                b.call(t, || Err::<u8, _>("down")),
                Err(CallError::Failed("down"))
            );
        }
        assert!(matches!(
            b.call(t, || Ok::<_, ()>(1)),
            Err(CallError::Open(_))
        ));
        let text = breaker_metrics_text([&b]);
        assert!(text.contains("embercache_breaker_state{upstream=\"x\",state=\"open\"} 1"));
        assert!(text.contains("outcome=\"failure\"} 9"));
        assert!(text.contains("embercache_breaker_call_latency_seconds_count"));
        assert!(text.contains("# TYPE embercache_breaker_call_latency_seconds histogram"));
    }
}

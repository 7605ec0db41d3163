//! What the loaders learn per key: access frequency (sampled), how often a
//! refresh finds a changed value (volatility → learned TTL), recent
//! activity (a trade shortens the TTL), and how long a load takes (XFetch).
//!
//! Pure logic over plain numbers: the caller passes engine time in ms. The
//! state is serializable and persisted per namespace in `loader_meta`.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// How a namespace loads: TTLs and their adaptation, jitter, early refresh,
/// access tracking. Set it with `Cache::set_load_policy`; the stale windows
/// and the negative TTL are on [`crate::NamespacePolicy`].
///
/// ```
/// use embercache::LoadPolicy;
/// use std::time::Duration;
/// // Prices: 3 min, 30 s for 5 min after a trade, learned between 15 s and 10 min.
/// let prices = LoadPolicy::default()
///     .ttl(Duration::from_secs(180))
///     .adaptive(Duration::from_secs(15), Duration::from_secs(600))
///     .activity(Duration::from_secs(30), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LoadPolicy {
    /// TTL of a loaded value, and the starting point of adaptation.
    /// Default: the namespace's default TTL, else 5 min.
    pub ttl: Option<Duration>,
    /// Bounds of the learned TTL; `None` = no volatility adaptation.
    /// A refresh that returns a changed value halves a key's TTL, one that
    /// returns the same value lengthens it by 25 %, within these bounds.
    /// Default: none.
    pub adaptive: Option<(Duration, Duration)>,
    /// After `Cache::touch_activity`, the key's TTL is at most this for
    /// `activity_for`, then relaxes linearly back to its learned TTL over
    /// another `activity_for`. Default: none.
    pub activity_ttl: Option<Duration>,
    /// See `activity_ttl`. Default: 5 min.
    pub activity_for: Duration,
    /// Every loaded TTL is shortened by a random fraction up to this, so
    /// keys loaded together do not expire together. Default: 0.1.
    pub ttl_jitter: f64,
    /// XFetch's β (Vattani et al. 2015): a hit on a tracked key refreshes
    /// it early with probability rising as expiry nears, scaled by how
    /// long its load takes. 0 disables. Default: 1.0.
    pub xfetch_beta: f64,
    /// One access in this many is counted (counters are estimates). 1 counts
    /// every access. Default: 8.
    pub access_sample: u32,
    /// Most keys whose statistics are kept (the most accessed). Default: 4096.
    pub max_tracked_keys: usize,
}

impl Default for LoadPolicy {
    fn default() -> Self {
        LoadPolicy {
            ttl: None,
            adaptive: None,
            activity_ttl: None,
            activity_for: Duration::from_secs(300),
            ttl_jitter: 0.1,
            xfetch_beta: 1.0,
            access_sample: 8,
            max_tracked_keys: 4096,
        }
    }
}

impl LoadPolicy {
    /// Base TTL of loaded values.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Learn each key's TTL from its volatility, between `min` and `max`.
    pub fn adaptive(mut self, min: Duration, max: Duration) -> Self {
        self.adaptive = Some((min.min(max), max.max(min)));
        self
    }
    /// Shorten a key's TTL to `ttl` for `for_` after `touch_activity`.
    pub fn activity(mut self, ttl: Duration, for_: Duration) -> Self {
        self.activity_ttl = Some(ttl);
        self.activity_for = for_;
        self
    }
    /// TTL jitter fraction, 0..1.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction.clamp(0.0, 0.9);
        self
    }
    /// XFetch β; 0 disables early refresh.
    pub fn xfetch_beta(mut self, beta: f64) -> Self {
        self.xfetch_beta = beta.max(0.0);
        self
    }
    /// Count one access in `n`.
    pub fn access_sample(mut self, n: u32) -> Self {
        self.access_sample = n.max(1);
        self
    }
}

/// What is known about one key. Persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyStats {
    /// Estimated accesses (sampled, decayed).
    pub hits: u64,
    /// Learned TTL in ms; 0 = not learned yet.
    pub ttl_ms: u64,
    /// EWMA of "a refresh returned a changed value", 0..1.
    pub volatility: f32,
    /// Checksum of the last loaded value (to detect changes).
    pub last_hash: u32,
    /// Whether `last_hash` is set.
    pub has_hash: bool,
    /// How long the last load took, ms (XFetch's delta).
    pub load_ms: u32,
    /// Engine time until which the key counts as active (after a trade).
    pub active_until: u64,
    pub loads: u32,
    pub changes: u32,
    /// Registered as a hot key: always kept fresh by the refresher.
    pub pinned: bool,
}

/// The persisted per-namespace state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct NsPersist {
    pub format: u8,
    pub keys: Vec<(Vec<u8>, KeyStats)>,
}

/// Per-namespace key statistics.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    pub keys: HashMap<Vec<u8>, KeyStats>,
}

/// `x` multiplied by the change/no-change factor, clamped.
fn adapt(ttl_ms: u64, changed: bool, (min, max): (u64, u64)) -> u64 {
    let t = if changed {
        ttl_ms / 2
    } else {
        ttl_ms.saturating_add(ttl_ms / 4)
    };
    t.clamp(min, max)
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl KeyTable {
    /// Counts an access (the caller already sampled it) by `weight`.
    pub(crate) fn record_access(&mut self, key: &[u8], weight: u64, max_keys: usize) {
        if let Some(s) = self.keys.get_mut(key) {
            s.hits = s.hits.saturating_add(weight);
            return;
        }
        self.keys.insert(
            key.to_vec(),
            KeyStats {
                hits: weight,
                ..KeyStats::default()
            },
        );
        if self.keys.len() > max_keys + max_keys / 4 {
            self.prune(max_keys);
        }
    }

    /// Keeps the `max_keys` most accessed keys (and every pinned one).
    pub(crate) fn prune(&mut self, max_keys: usize) {
        let mut hits: Vec<u64> = self
            .keys
            .values()
            .filter(|s| !s.pinned)
            .map(|s| s.hits)
            .collect();
        if hits.len() <= max_keys {
            return;
        }
        let cut = hits.len() - max_keys;
        let (_, &mut threshold, _) = hits.select_nth_unstable(cut);
        let mut removed = 0;
        self.keys.retain(|_, s| {
            if s.pinned || s.hits > threshold || removed >= cut {
                true
            } else {
                removed += 1;
                false
            }
        });
    }

    /// Halves every counter (popularity follows recent use).
    pub(crate) fn decay(&mut self) {
        for s in self.keys.values_mut() {
            s.hits /= 2;
        }
    }

    /// Records a load of `key` that returned a value with checksum `hash`
    /// in `load_ms`; returns whether it differed from the previous one.
    pub(crate) fn record_load(
        &mut self,
        key: &[u8],
        hash: u32,
        load_ms: u64,
        base_ms: u64,
        bounds: Option<(u64, u64)>,
    ) -> Option<bool> {
        let s = self.keys.entry(key.to_vec()).or_default();
        s.loads = s.loads.saturating_add(1);
        s.load_ms = u32::try_from(load_ms).unwrap_or(u32::MAX);
        let changed = s.has_hash.then_some(s.last_hash != hash);
        s.last_hash = hash;
        s.has_hash = true;
        if let Some(c) = changed {
            s.changes += u32::from(c);
            s.volatility = 0.7 * s.volatility + 0.3 * f32::from(u8::from(c));
        }
        if let Some(b) = bounds {
            let cur = if s.ttl_ms == 0 {
                base_ms.clamp(b.0, b.1)
            } else {
                s.ttl_ms
            };
            s.ttl_ms = match changed {
                Some(c) => adapt(cur, c, b),
                None => cur,
            };
        }
        changed
    }

    /// The TTL to give `key` now: learned (or base), capped by recent
    /// activity, before jitter.
    pub(crate) fn ttl_for(&self, key: &[u8], policy: &LoadPolicy, base_ms: u64, now: u64) -> u64 {
        let s = self.keys.get(key);
        let mut ttl = match (s, policy.adaptive) {
            (Some(s), Some(_)) if s.ttl_ms > 0 => s.ttl_ms,
            (_, Some((lo, hi))) => base_ms.clamp(ms(lo), ms(hi)),
            _ => base_ms,
        };
        if let (Some(s), Some(short)) = (s, policy.activity_ttl) {
            let short = ms(short);
            let relax = ms(policy.activity_for).max(1);
            if now < s.active_until {
                ttl = ttl.min(short);
            } else if now < s.active_until.saturating_add(relax) && ttl > short {
                let frac = (now - s.active_until) as f64 / relax as f64;
                ttl = short + ((ttl - short) as f64 * frac) as u64;
            }
        }
        ttl.max(1)
    }

    /// The most accessed keys, hottest first, pinned keys before all.
    pub(crate) fn top(&self, n: usize) -> Vec<Vec<u8>> {
        let mut v: Vec<(&Vec<u8>, &KeyStats)> = self.keys.iter().collect();
        v.sort_by(|a, b| {
            (b.1.pinned, b.1.hits)
                .cmp(&(a.1.pinned, a.1.hits))
                .then(a.0.cmp(b.0))
        });
        v.into_iter().take(n).map(|(k, _)| k.clone()).collect()
    }
}

/// XFetch: refresh early when `delta · β · −ln(u) ≥ remaining`, with `u`
/// uniform in (0, 1]. A key whose load takes longer, or that is closer to
/// expiry, is more likely to be refreshed.
pub(crate) fn xfetch(delta_ms: u64, beta: f64, remaining_ms: u64, u: f64) -> bool {
    if beta <= 0.0 {
        return false;
    }
    let u = u.clamp(f64::MIN_POSITIVE, 1.0);
    delta_ms.max(1) as f64 * beta * -u.ln() >= remaining_ms as f64
}

/// Shortens `ttl_ms` by up to `jitter` (a fraction), `u` uniform in [0, 1).
pub(crate) fn jitter(ttl_ms: u64, jitter: f64, u: f64) -> u64 {
    ((ttl_ms as f64) * (1.0 - jitter * u)).max(1.0) as u64
}

/// A cheap shared random source (xorshift64*, seeded per process).
#[derive(Debug)]
pub(crate) struct Rng(std::sync::atomic::AtomicU64);

impl Default for Rng {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(1);
        Rng(std::sync::atomic::AtomicU64::new(h.finish() | 1))
    }
}

impl Rng {
    /// Uniform in [0, 1).
    pub(crate) fn unit(&self) -> f64 {
        use std::sync::atomic::Ordering;
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn volatile_key_shrinks_static_key_grows_within_bounds() {
        let mut t = KeyTable::default();
        let b = Some((15 * S, 600 * S));
        for i in 0..20u32 {
            t.record_load(b"vol", i, 5, 180 * S, b);
            t.record_load(b"static", 7, 5, 180 * S, b);
        }
        assert_eq!(t.keys[&b"vol"[..]].ttl_ms, 15 * S);
        assert_eq!(t.keys[&b"static"[..]].ttl_ms, 600 * S);
        assert!(t.keys[&b"vol"[..]].volatility > 0.9);
        assert!(t.keys[&b"static"[..]].volatility < 0.1);
    }

    #[test]
    fn activity_caps_then_relaxes() {
        let p = LoadPolicy::default()
            .ttl(Duration::from_secs(180))
            .activity(Duration::from_secs(30), Duration::from_secs(300));
        let mut t = KeyTable::default();
        t.record_access(b"k", 1, 10);
        t.keys.get_mut(&b"k"[..]).unwrap().active_until = 1_000 * S;
        assert_eq!(t.ttl_for(b"k", &p, 180 * S, 900 * S), 30 * S);
        // Halfway through the relax window: halfway back.
        assert_eq!(t.ttl_for(b"k", &p, 180 * S, 1_150 * S), 105 * S);
        assert_eq!(t.ttl_for(b"k", &p, 180 * S, 1_300 * S), 180 * S);
    }

    #[test]
    fn xfetch_is_more_likely_near_expiry() {
        // u = e^-1 → -ln u = 1: refresh iff delta·β ≥ remaining.
        let u = (-1.0f64).exp();
        assert!(xfetch(100, 1.0, 100, u));
        assert!(!xfetch(100, 1.0, 101, u));
        assert!(xfetch(100, 2.0, 200, u));
        assert!(!xfetch(100, 0.0, 0, u));
        let r = Rng::default();
        let near = (0..10_000)
            .filter(|_| xfetch(50, 1.0, 10, 1.0 - r.unit()))
            .count();
        let far = (0..10_000)
            .filter(|_| xfetch(50, 1.0, 500, 1.0 - r.unit()))
            .count();
        assert!(near > 5_000 && far < 100, "near {near}, far {far}");
    }

    #[test]
    fn jitter_only_shortens() {
        assert_eq!(jitter(1000, 0.1, 0.0), 1000);
        assert_eq!(jitter(1000, 0.1, 0.5), 950);
        assert!(jitter(1000, 0.1, 0.999) >= 900);
    }

    #[test]
    fn prune_keeps_the_hottest_and_pinned() {
        let mut t = KeyTable::default();
        for i in 0..100u64 {
            t.record_access(&i.to_be_bytes(), i, 1000);
        }
        t.keys.get_mut(&0u64.to_be_bytes()[..]).unwrap().pinned = true;
        t.prune(10);
        assert_eq!(t.keys.len(), 11);
        assert!(t.keys.contains_key(&0u64.to_be_bytes()[..]));
        assert!(t.keys.contains_key(&99u64.to_be_bytes()[..]));
        assert_eq!(t.top(2)[0], 0u64.to_be_bytes().to_vec());
        assert_eq!(t.top(2)[1], 99u64.to_be_bytes().to_vec());
        t.decay();
        assert_eq!(t.keys[&99u64.to_be_bytes()[..]].hits, 49);
    }
}

//! A small lock-free latency histogram (millisecond buckets, powers of two)
//! rendered in the Prometheus text format. The loaders measure latency in
//! engine milliseconds (the injected clock), so millisecond resolution is
//! what there is to record.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in ms: 1, 2, 4 … 65 536 (about 65 s), then +Inf.
const BOUNDS: usize = 17;

#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // Bucket i holds values <= 2^i ms.
        let i = if ms <= 1 {
            0
        } else {
            (64 - (ms - 1).leading_zeros()) as usize
        };
        self.buckets[i.min(BOUNDS)].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends `name_bucket`, `name_sum` and `name_count` samples (in
    /// seconds) with `labels` (already formatted, `k="v",…`).
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for i in 0..BOUNDS {
            acc += self.buckets[i].load(Ordering::Relaxed);
            let le = (1u64 << i) as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
        }
        acc += self.buckets[BOUNDS].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {acc}");
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        for ms in [0, 1, 2, 3, 1000, 1_000_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.001\"} 2"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.002\"} 3"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.004\"} 4"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"1.024\"} 5"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 6"));
        assert!(s.contains("x_count{a=\"b\"} 6"));
    }
}

//! Prometheus text rendering of [`Stats`] through prometheus-client.
//!
//! The counters live in the engine as plain atomics; each call builds a
//! registry from a [`Stats`] snapshot and encodes it. Rendering is meant for
//! a scrape every few seconds, not for the hot path.

use crate::stats::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

pub(crate) fn render(s: &Stats, commit_latency: &Histogram) -> String {
    let mut reg = Registry::with_prefix("embercache");
    let fam = |reg: &mut Registry,
               name: &str,
               help: &str,
               f: &dyn Fn(&crate::NamespaceStats) -> Vec<(&'static str, u64)>| {
        let family = Family::<Labels, Counter>::default();
        for n in &s.namespaces {
            for (tier, v) in f(n) {
                let mut l: Labels = vec![("namespace", n.name.clone())];
                if !tier.is_empty() {
                    l.push(("tier", tier.to_string()));
                }
                family.get_or_create(&l).inc_by(v);
            }
        }
        reg.register(name, help, family);
    };
    fam(
        &mut reg,
        "hits",
        "Gets answered, by namespace and tier",
        &|n| vec![("hot", n.hot_hits), ("warm", n.warm_hits)],
    );
    fam(&mut reg, "misses", "Gets that found nothing", &|n| {
        vec![("", n.misses)]
    });
    fam(&mut reg, "sets", "Writes accepted", &|n| vec![("", n.sets)]);
    fam(&mut reg, "deletes", "Deletes accepted", &|n| {
        vec![("", n.deletes)]
    });
    fam(&mut reg, "evictions", "Entries evicted, by tier", &|n| {
        vec![("hot", n.hot_evictions), ("warm", n.warm_evictions)]
    });
    fam(&mut reg, "expirations", "Expired entries removed", &|n| {
        vec![("", n.expirations)]
    });
    fam(&mut reg, "invalidations", "Namespace epoch bumps", &|n| {
        vec![("", n.invalidations)]
    });
    fam(
        &mut reg,
        "raw_bytes_written",
        "Value bytes written before compression",
        &|n| vec![("", n.raw_bytes_written)],
    );
    fam(
        &mut reg,
        "stored_bytes_written",
        "Payload bytes written after compression",
        &|n| vec![("", n.stored_bytes_written)],
    );
    gauge(
        &mut reg,
        "hot_bytes",
        "Bytes charged in the hot tier",
        s.hot_bytes,
    );
    gauge(
        &mut reg,
        "hot_capacity_bytes",
        "Hot-tier bound",
        s.hot_capacity,
    );
    gauge(
        &mut reg,
        "hot_entries",
        "Entries in the hot tier",
        s.hot_entries,
    );
    gauge(
        &mut reg,
        "disk_records",
        "Records in the warm tier",
        s.disk_records,
    );
    gauge(
        &mut reg,
        "disk_bytes",
        "Key and record bytes in the warm tier",
        s.disk_bytes,
    );
    gauge(
        &mut reg,
        "disk_capacity_bytes",
        "Warm-tier bound",
        s.disk_capacity,
    );
    gauge(
        &mut reg,
        "file_bytes",
        "Size of the redb file",
        s.file_bytes,
    );
    gauge(
        &mut reg,
        "queue_depth",
        "Writes waiting for the writer",
        s.queue_depth,
    );
    counter(&mut reg, "commits", "Group commits", s.commits);
    counter(
        &mut reg,
        "committed_ops",
        "Operations committed",
        s.committed_ops,
    );
    counter(&mut reg, "write_errors", "Failed commits", s.write_errors);
    counter(
        &mut reg,
        "maintenance_errors",
        "Failed maintenance passes",
        s.maintenance_errors,
    );
    counter(
        &mut reg,
        "corrupt_reads",
        "Records that failed their checks on read",
        s.corrupt_reads,
    );
    gauge(
        &mut reg,
        "outbox_rows",
        "Mirror writes waiting in the outbox",
        s.outbox_rows,
    );
    gauge(
        &mut reg,
        "outbox_bytes",
        "Bytes waiting in the outbox",
        s.outbox_bytes,
    );
    counter(
        &mut reg,
        "log_replayed",
        "Writes replayed from the write-ahead log since open",
        s.log_replayed,
    );
    counter(
        &mut reg,
        "outbox_coalesced",
        "Outbox writes replaced by a newer write of the same key",
        s.outbox_coalesced,
    );
    gauge(
        &mut reg,
        "warmup_loaded",
        "Keys loaded by the warm-up",
        s.warmup_loaded,
    );
    gauge(
        &mut reg,
        "warmup_total",
        "Keys in the hot-set snapshot",
        s.warmup_total,
    );
    reg.register(
        "commit_latency_seconds",
        "Commit latency (fsync included)",
        commit_latency.clone(),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

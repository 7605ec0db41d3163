//! Inspecting and maintaining a data directory: stats, verify, compact.

use crate::{Failure, Outcome, bar, close, display_bytes, human_bytes, open_existing, spinner};
use std::io::Write;
use std::path::PathBuf;

/// Show what a data directory holds: file size, records and bytes per
/// namespace, compression, hot-tier settings and the warm-up snapshot.
///
/// Hit and miss counters live in the process that serves the cache; a
/// fresh `stats` process has none, so this shows the stored state.
///
/// Example: embercache stats ./embercache-data
#[derive(clap::Args)]
pub(crate) struct StatsArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
}

/// Check every stored record and the expiry index.
///
/// Decodes each record (header, checksum, bounded decompression), checks
/// that each has exactly one expiry-index entry pointing back at it, that
/// no index entry is dangling, and that the stored record and byte counts
/// match. Opens the database in strict mode: a damaged file is reported,
/// never moved aside. Exits 1 on any problem.
///
/// Example: embercache verify ./embercache-data
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
    /// Most problems to list. Default: 50 (0 = all).
    #[arg(long, default_value_t = 50)]
    max_problems: usize,
}

/// Shrink the database file.
///
/// First removes expired entries and those of invalidated namespaces,
/// then runs redb's own compaction on the file in place (crash-safe: redb
/// commits each step, an interrupted compaction leaves a valid file).
/// The directory must not be open in another process.
///
/// Example: embercache compact ./embercache-data
#[derive(clap::Args)]
pub(crate) struct CompactArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
}

pub(crate) fn stats(a: StatsArgs) -> Outcome {
    let cache = open_existing(&a.dir, false)?;
    let usage = cache.disk_usage();
    let s = cache.stats();
    close(cache)?;
    let usage = usage?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "embercache {}", a.dir.display())?;
    writeln!(out, "  file            {}", human_bytes(s.file_bytes))?;
    writeln!(
        out,
        "  warm tier       {} records, {} of {} bound",
        s.disk_records,
        human_bytes(s.disk_bytes),
        human_bytes(s.disk_capacity)
    )?;
    writeln!(
        out,
        "  hot tier        {} capacity; restart snapshot holds {} keys",
        human_bytes(s.hot_capacity),
        s.warmup_total
    )?;
    if let Some(m) = &s.moved_aside {
        writeln!(out, "  moved aside     {m}")?;
    }
    if s.log_replayed > 0 {
        writeln!(
            out,
            "  log replayed    {} writes the last run left only in the write-ahead log",
            s.log_replayed
        )?;
    }
    if s.write_errors > 0 {
        writeln!(
            out,
            "  write errors    {} (last: {})",
            s.write_errors,
            s.last_write_error.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:>6} {:>10} {:>10} {:>11} {:>11} {:>9}",
        "NAMESPACE", "EPOCH", "RECORDS", "LIVE", "DISK", "RAW", "RAW/DISK"
    )?;
    let epoch_of = |ns: &str| {
        s.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map_or(0, |n| n.epoch)
    };
    for d in &usage {
        let ratio = if d.bytes == 0 {
            1.0
        } else {
            d.raw_bytes as f64 / d.bytes as f64
        };
        writeln!(
            out,
            "{:<20} {:>6} {:>10} {:>10} {:>11} {:>11} {:>8.2}x",
            display_bytes(d.namespace.as_bytes(), 20),
            epoch_of(&d.namespace),
            d.records,
            d.live,
            human_bytes(d.bytes),
            human_bytes(d.raw_bytes),
            ratio
        )?;
    }
    if usage.is_empty() {
        writeln!(out, "(no records)")?;
    }
    Ok(())
}

pub(crate) fn verify(a: VerifyArgs) -> Outcome {
    let cache = open_existing(&a.dir, true)?;
    let pb = bar(cache.stats().disk_records, "verifying");
    let report = cache.verify(&mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    close(cache)?;
    let report = report?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "checked {} records and {} expiry-index entries ({} expired or invalidated, awaiting the sweeper)",
        report.records, report.index_entries, report.dead_records
    )?;
    if report.is_clean() {
        writeln!(out, "OK: no problems found")?;
        return Ok(());
    }
    let limit = if a.max_problems == 0 {
        usize::MAX
    } else {
        a.max_problems
    };
    for p in report.problems.iter().take(limit) {
        writeln!(
            out,
            "PROBLEM {} / {}: {}",
            p.namespace,
            display_bytes(&p.key, 64),
            p.reason
        )?;
    }
    if report.problems.len() > limit {
        writeln!(
            out,
            "… and {} more (--max-problems 0 lists all)",
            report.problems.len() - limit
        )?;
    }
    Err(Failure::new(format!(
        "{} problems found in {}; unreadable records are skipped on reads, `embercache export` then `import` into a fresh directory rebuilds a clean database",
        report.problems.len(),
        a.dir.display()
    )))
}

pub(crate) fn compact(a: CompactArgs) -> Outcome {
    if !a.dir.join(embercache::DB_FILE).is_file() {
        // Same message as the other read commands.
        open_existing(&a.dir, true)?;
    }
    let pb = spinner("compacting (passes)");
    let r = embercache::compact_dir(&a.dir, &mut |pass| pb.set_position(u64::from(pass)));
    pb.finish_and_clear();
    let r = r?;
    let saved = r.bytes_before.saturating_sub(r.bytes_after);
    println!(
        "compacted {}: {} -> {} ({} freed, {} passes, {:.1} s)",
        a.dir.display(),
        human_bytes(r.bytes_before),
        human_bytes(r.bytes_after),
        human_bytes(saved),
        r.passes,
        r.took.as_secs_f64()
    );
    Ok(())
}

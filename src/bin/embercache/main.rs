//! `embercache`: the command-line tool over the embercache library.
//!
//! One file per command group: `demo.rs` (the trading-bot workload),
//! `io.rs` (get, set, del, scan, export, import), `admin.rs` (stats,
//! verify, compact), `torture.rs` (the kill -9 loop), `upstream.rs` (the
//! demo's simulated upstream services). This file holds the argument definitions, the error
//! type that maps failures to exit codes, and helpers shared by the groups.
//!
//! Exit codes: 0 success, 1 failure (including "key absent" for `get` and
//! any problem found by `verify`), 2 usage error (clap's own code).

mod admin;
mod demo;
mod io;
mod torture;
mod upstream;

use clap::{Parser, Subcommand};
use embercache::{Cache, DB_FILE};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A persistent embedded cache: inspect, edit, check and benchmark an
/// embercache data directory.
#[derive(Parser)]
#[command(name = "embercache", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  embercache demo --seconds 10\n  embercache get ./embercache-data price m42\n  embercache export ./data > dump.jsonl"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(demo::Args),
    Stats(admin::StatsArgs),
    Get(io::GetArgs),
    Set(io::SetArgs),
    Del(io::DelArgs),
    Scan(io::ScanArgs),
    Verify(admin::VerifyArgs),
    Compact(admin::CompactArgs),
    Export(io::ExportArgs),
    Import(io::ImportArgs),
    Torture(torture::Args),
    /// The writer process of `torture` (started by it, not by hand).
    #[command(hide = true)]
    TortureChild(torture::ChildArgs),
}

/// A failure to report: a one-line message and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Exit 1 with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
    /// Exit 1 with nothing printed (e.g. `get` of an absent key).
    pub fn silent() -> Self {
        Failure {
            code: 1,
            message: String::new(),
        }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(e.to_string())
    }
}

pub(crate) type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Stats(a) => admin::stats(a),
        Command::Get(a) => io::get(a),
        Command::Set(a) => io::set(a),
        Command::Del(a) => io::del(a),
        Command::Scan(a) => io::scan(a),
        Command::Verify(a) => admin::verify(a),
        Command::Compact(a) => admin::compact(a),
        Command::Export(a) => io::export(a),
        Command::Import(a) => io::import(a),
        Command::Torture(a) => torture::run(a),
        Command::TortureChild(a) => torture::child(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

// ----- helpers shared by the command groups ---------------------------------

/// Opens the cache in `dir`, which must already hold a database: commands
/// that only read or remove never create an empty one by accident. With
/// `strict`, a damaged file is an error instead of being moved aside
/// (verify and export must report damage, not hide it).
pub(crate) fn open_existing(dir: &Path, strict: bool) -> Result<Cache, Failure> {
    if !dir.join(DB_FILE).is_file() {
        return Err(Failure::new(format!(
            "no embercache database in {} (no {DB_FILE} there); check the path, or create one with `embercache set` or `embercache import`",
            dir.display()
        )));
    }
    Cache::builder()
        .dir(dir)
        .strict(strict)
        .open()
        .map_err(Failure::from)
}

/// Opens the cache in `dir`, creating the directory and database if needed.
pub(crate) fn open_or_create(dir: &Path) -> Result<Cache, Failure> {
    Cache::builder().dir(dir).open().map_err(Failure::from)
}

/// Closes the cache after letting the hot-set warm-up finish: closing in
/// the middle of it would save a snapshot of only what it had loaded, and
/// the next process would start colder than this one did.
pub(crate) fn close(cache: Cache) -> Outcome {
    cache.wait_for_warm_up(Duration::from_secs(10));
    cache.close().map_err(Failure::from)
}

/// Whether progress bars should be drawn: only when stderr (where they
/// go) is a terminal, so piped and scripted runs stay quiet.
pub(crate) fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar over `total` items, or a hidden one when not interactive.
pub(crate) fn bar(total: u64, what: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// A spinner counting items of unknown total, or a hidden one.
pub(crate) fn spinner(what: &str) -> ProgressBar {
    if !interactive() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {msg}: {pos} ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// The progress of a warm start from Redis: a spinner counting the entries
/// the mirror loads into an empty local store (`MirrorStats::warm_*`; the
/// total is unknown until the SCAN ends). Drawn on a terminal only.
#[cfg(feature = "redis")]
pub(crate) struct WarmStartBar {
    pb: ProgressBar,
    started: std::time::Instant,
}

#[cfg(feature = "redis")]
impl WarmStartBar {
    /// A bar when a warm start from Redis is running or about to (the
    /// mirror starts one on an empty local store), else `None`. `opened`
    /// are the stats right after open. Added to `multi` when given.
    pub fn start(
        cache: &Cache,
        opened: &embercache::Stats,
        multi: Option<&indicatif::MultiProgress>,
    ) -> Option<Self> {
        let m = cache.mirror_stats()?;
        if m.warm_done || !(m.warm_running || opened.disk_records == 0) {
            return None;
        }
        if !interactive() {
            return Some(WarmStartBar {
                pb: ProgressBar::hidden(),
                started: std::time::Instant::now(),
            });
        }
        let pb = ProgressBar::new_spinner();
        let pb = match multi {
            Some(multi) => multi.add(pb),
            None => pb,
        };
        let style = ProgressStyle::with_template(
            "{spinner} warm start from Redis: {pos} entries loaded ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.enable_steady_tick(Duration::from_millis(100));
        Some(WarmStartBar {
            pb,
            started: std::time::Instant::now(),
        })
    }

    /// Updates the bar from the mirror's counters; true once the warm start
    /// is over (the bar is then finished with a one-line result).
    pub fn poll(&mut self, cache: &Cache) -> bool {
        let Some(m) = cache.mirror_stats() else {
            return true;
        };
        if self.pb.is_finished() {
            return true;
        }
        self.pb.set_position(m.warm_loaded);
        self.pb
            .set_message(format!("- {} Redis keys scanned", m.warm_scanned));
        if m.warm_done {
            self.pb.finish_with_message(format!(
                "- done: {} Redis keys scanned in {} ms",
                m.warm_scanned,
                self.started.elapsed().as_millis()
            ));
            return true;
        }
        false
    }

    /// Leaves the bar with its last figures (the warm start may still be
    /// running: it goes on in the background).
    pub fn finish(mut self, cache: &Cache) {
        if !self.poll(cache) {
            self.pb
                .abandon_with_message("- still running in the background");
        }
    }
}

/// Parses a duration such as `500ms`, `30s`, `2m`, `1h` or `7d`
/// (a bare number means seconds). Zero is refused: a zero TTL would expire
/// before the write lands.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; write a whole number and a unit: 500ms, 30s, 2m, 1h, 7d")
    })?;
    let ms_per: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m, h or d"
            ));
        }
    };
    if n == 0 {
        return Err("a TTL of zero would expire at once; give a positive duration or delete the key instead".into());
    }
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// A key or value for display: the text when it is printable UTF-8,
/// otherwise `0x` and hex. Cut to `max` characters with an ellipsis.
pub(crate) fn display_bytes(b: &[u8], max: usize) -> String {
    let s = match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        Ok(s) => s.escape_default().to_string(),
        Err(_) => {
            let mut h = String::from("0x");
            for byte in b.iter().take(max) {
                h.push_str(&format!("{byte:02x}"));
            }
            h
        }
    };
    if s.chars().count() > max {
        let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

/// Bytes as a short human figure (KiB, MiB, GiB).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_refuse_garbage() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in [
            "",
            "s",
            "0s",
            "-1s",
            "1.5s",
            "3x",
            "99999999999999999999d",
            "1 s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_bytes_escapes_and_cuts() {
        assert_eq!(display_bytes(b"abc", 10), "abc");
        assert_eq!(display_bytes(&[0xff, 0x00], 10), "0xff00");
        assert_eq!(display_bytes(b"a\nb", 10), "a\\nb");
        assert_eq!(display_bytes(b"abcdefghij", 5), "abcd…");
    }
}

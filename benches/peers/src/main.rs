//! Side-by-side benchmarks of embercache against moka, quick_cache, foyer,
//! raw redb and Redis (issue 6). One command runs every workload and writes
//! docs/BENCHMARKS.md:
//!
//! ```sh
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- [--scale 0.25] [--only w3,w1] [--runs 5]
//! ```
//!
//! This crate has its own `[workspace]`, so the root `cargo test` and CI
//! never build the peers.

mod charts;
mod compress;
mod durable;
mod hybrid;
mod memory;
mod peers;
mod redis_srv;
mod report;
mod restart;
mod sim;
mod tput;
mod ttl;
mod w3;
mod workload;

use report::Doc;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// How big a run is: key and op counts are multiplied by `factor`.
pub struct Scale {
    pub factor: f64,
    /// W3 (hit ratio) has its own factor: it is single-threaded and
    /// deterministic, so it runs once at full size by default.
    pub w3_factor: f64,
    pub runs: usize,
    /// Seconds per timed run of the durable-write workload.
    pub secs: f64,
}

impl Scale {
    pub fn keys(&self, n: usize) -> usize {
        ((n as f64 * self.factor) as usize).max(1000)
    }
    pub fn ops(&self, n: usize) -> usize {
        ((n as f64 * self.factor) as usize).max(1000)
    }
    /// The scale W3 uses.
    pub fn for_w3(&self) -> Scale {
        Scale {
            factor: self.w3_factor,
            w3_factor: self.w3_factor,
            runs: self.runs,
            secs: self.secs,
        }
    }
}

const ALL: &[&str] = &["w3", "w1", "w2", "w4", "w5", "w6", "w7", "w8", "w9"];

/// Counts the heap the caches under test hold (W4); see src/memory.rs.
#[global_allocator]
static ALLOC: memory::Tagging = memory::Tagging;

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = root.join("docs/BENCHMARKS.md");
    let mut scale = Scale {
        factor: 1.0,
        w3_factor: 1.0,
        runs: 5,
        secs: 1.5,
    };
    let mut only: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--out" => out = PathBuf::from(val()),
            "--scale" => {
                scale.factor = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--scale takes a number"))
            }
            "--w3-scale" => {
                scale.w3_factor = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--w3-scale takes a number"))
            }
            "--runs" => {
                scale.runs = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--runs takes a count"))
            }
            "--secs" => {
                scale.secs = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--secs takes seconds"))
            }
            "--only" => only = val().split(',').map(str::to_string).collect(),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if scale.runs < 1 {
        usage("--runs must be at least 1");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.is_empty() {
        "cargo run --release --manifest-path benches/peers/Cargo.toml".to_string()
    } else {
        format!(
            "cargo run --release --manifest-path benches/peers/Cargo.toml -- {}",
            args.join(" ")
        )
    };
    let started = Instant::now();
    let load_before = sh("uptime", &[]);
    let mut doc = Doc {
        path: out.clone(),
        head: header(&root, &command, &scale, &load_before),
        sections: Vec::new(),
    };
    // The hand-written reading of the numbers (targets missed, why, what
    // would close them) lives beside the code and is copied in verbatim.
    if let Ok(a) = std::fs::read_to_string(root.join("benches/peers/analysis.md")) {
        doc.sections.push(a);
    }
    doc.save();
    for w in &only {
        let section = match w.as_str() {
            "w3" => w3::w3(&scale.for_w3()),
            "w1" => tput::w1(&scale),
            "w2" => tput::w2(&scale),
            "w4" => memory::w4(&scale),
            "w5" => durable::w5(&scale) + &hybrid::w5_foyer(&scale),
            "w6" => hybrid::w6(&scale),
            "w7" => restart::w7(&scale),
            "w8" => ttl::w8(&scale),
            "w9" => compress::w9(&scale),
            other => usage(&format!(
                "unknown workload {other}; known: {}",
                ALL.join(",")
            )),
        };
        doc.add(section);
    }
    let charts = charts::render(&out.with_file_name("bench"), "bench");
    if !charts.is_empty() {
        doc.add(charts);
    }
    doc.add(format!(
        "---\nLoad after the run: `{}`. Whole run: {:.0} s.\n",
        sh("uptime", &[]).trim(),
        started.elapsed().as_secs_f64()
    ));
    println!("wrote {}", out.display());
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!(
        "usage: embercache-peers [--out FILE] [--scale F] [--w3-scale F] [--runs N] [--secs S] [--only {}]",
        ALL.join(",")
    );
    std::process::exit(2)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn header(root: &std::path::Path, command: &str, scale: &Scale, load: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let lock = std::fs::read_to_string(root.join("benches/peers/Cargo.lock")).unwrap_or_default();
    let version = |name: &str| {
        let mut found = Vec::new();
        let mut lines = lock.lines();
        while let Some(l) = lines.next() {
            if l == format!("name = \"{name}\"")
                && let Some(v) = lines.next()
            {
                found.push(
                    v.trim_start_matches("version = ")
                        .trim_matches('"')
                        .to_string(),
                );
            }
        }
        found.join(", ")
    };
    let mut s = String::new();
    let _ = writeln!(s, "# embercache benchmarks\n");
    let _ = writeln!(
        s,
        "Side-by-side with the peers of issue 6, same run, same machine. Written by `benches/peers` \
         (its own cargo workspace, so the root build and CI never compile the peers). Reproduce with \
         (about 20–40 minutes on 2 cores; needs `redis-server` on the PATH, else the Redis rows are \
         skipped; PNG charts go to docs/bench/):\n\n\
         ```sh\n{command}\n```\n"
    );
    let _ = writeln!(s, "## Machine and versions\n");
    let _ = writeln!(s, "- CPU: {model}, `nproc` = {}", sh("nproc", &[]).trim());
    let _ = writeln!(
        s,
        "- Memory: {}",
        mem.trim_start_matches("MemTotal:").trim()
    );
    let _ = writeln!(s, "- Kernel: {}", sh("uname", &["-sr"]).trim());
    let _ = writeln!(s, "- Load before the run: `{}`", load.trim());
    let _ = writeln!(
        s,
        "- embercache at `{}`; moka {}, quick_cache {}, foyer {}, redb {}, redis-rs {}, zstd {}; {}",
        std::env::var("EMBERCACHE_REV").unwrap_or_else(|_| sh(
            "git",
            &[
                "-C",
                &root.display().to_string(),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        )
        .trim()
        .to_string()),
        version("moka"),
        version("quick_cache"),
        version("foyer"),
        version("redb"),
        version("redis"),
        version("zstd"),
        sh("redis-server", &["--version"])
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(s, "- rustc: {}", sh("rustc", &["--version"]).trim());
    let _ = writeln!(
        s,
        "- Scale factor {} for W1/W2 (key and op counts multiplied by it; the issue's sizes are factor 1), {} for W3; \
         {} runs per timed cell, {} s per durable-write run.\n",
        scale.factor, scale.w3_factor, scale.runs, scale.secs
    );
    s
}

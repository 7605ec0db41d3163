//! `embercache torture`: the kill -9 loop (issue 3 §4).
//!
//! Each cycle re-executes this binary as a hidden `torture-child` that
//! opens the data directory and writes from `--writers` threads until it
//! is killed: sets of 0..64 KiB values with and without TTLs, deletes,
//! namespace invalidations, in `Sync` mode on even cycles and `Buffered`
//! mode (1, 10 or 50 ms) on odd ones. The parent SIGKILLs it at a random
//! moment (sometimes while it is still opening the database), reopens the
//! directory, timing open + first get (the recovery time), and reads back
//! every key.
//!
//! The acknowledgement log is the child's stdout, a pipe the parent reads:
//! after each operation returns `Ok`, the writing thread prints one line,
//! `<thread> <op index> <A|B> <wall ms before> <wall ms after>`. `A` means
//! acknowledged durable (Sync mode, a durable write, or a `flush()` that
//! returned `Ok`, which acknowledges every earlier op of that thread); `B`
//! means only accepted. A line is written after its op returned and a
//! pipe keeps what was written before the writer died, so every `A` the
//! parent reads was acknowledged before the kill.
//!
//! Operations come from a seeded generator per (cycle, thread): the parent
//! regenerates them instead of reading values through the pipe. Each
//! thread owns its namespaces and keys, so each namespace has a single,
//! ordered history (a write racing another thread's invalidation of the
//! same namespace has no defined order; see docs/ARCHITECTURE.md "Not
//! yet").
//!
//! The check, per thread: the recovered state must equal the state after
//! some prefix of the thread's operations that contains every
//! acknowledged one and at most the one in flight beyond what it logged.
//! A key that matches no allowed prefix is *lost* (an acknowledged value is
//! missing or older) or *resurrected* (present where every allowed state
//! has it deleted, invalidated or expired). Expiry is read with the real
//! clock: an entry set at wall time `t` with TTL `d` expires at `t + d`,
//! up to the write's duration and a 250 ms grace either side.
//! The state the check accepted is where the next cycle starts: the
//! directory is reused, so recovery runs on a database that keeps growing
//! its history.

use crate::{Failure, Outcome, bar};
use embercache::{Cache, Durability, Limits, ReadError, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Run the kill -9 torture loop against a data directory.
///
/// Starts a child process that writes with several threads (mixed value
/// sizes, TTLs, deletes, namespace invalidations; Sync and Buffered
/// durability), kills it with SIGKILL at a random moment, reopens the
/// directory and checks every acknowledged write. Prints the cycles, the
/// writes acknowledged durable, lost writes, corrupt reads, failed opens
/// and the recovery time (open + first get). Exits 1 if anything was lost,
/// corrupt or failed.
///
/// Example: embercache torture --dir /tmp/torture --cycles 1000 --writers 4
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Work directory (created if missing); the cache lives in `data/`.
    #[arg(long)]
    dir: PathBuf,
    /// Kill-and-reopen cycles to run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    cycles: u64,
    /// Writer threads in the child.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    writers: u64,
    /// Seed of the whole run (operations and kill moments); random if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Longest time a child writes before it is killed, in milliseconds.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    max_run_ms: u64,
}

/// The writer process of one cycle (started by `torture`, not by hand).
#[derive(clap::Args)]
pub(crate) struct ChildArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    writers: u64,
    /// 0 = `Durability::Sync`; otherwise `Buffered` with this `max_delay`.
    #[arg(long)]
    max_delay_ms: u64,
}

/// Namespaces owned by each writer thread.
const NS_PER_WRITER: usize = 2;
/// Keys per namespace.
const KEYS: usize = 48;
/// Slack on both sides of an expiry: the write's engine time is read
/// somewhere between the logged wall times, and engine time may run a
/// little ahead of the wall clock (src/clock.rs).
const GRACE_MS: u64 = 250;
/// No acknowledgement line for this long from a child that should be
/// writing means it hangs.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn ns_name(thread: usize, ns: usize) -> String {
    format!("w{thread}n{ns}")
}

fn key_name(k: usize) -> Vec<u8> {
    format!("k{k:02}").into_bytes()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One generated operation of a writer thread.
#[derive(Debug, Clone, Copy)]
enum Op {
    Set {
        ns: usize,
        key: usize,
        len: usize,
        /// Seeds the value bytes.
        salt: u64,
        ttl_ms: Option<u64>,
        durable: bool,
    },
    Del {
        ns: usize,
        key: usize,
        durable: bool,
    },
    Invalidate {
        ns: usize,
    },
    Flush,
}

/// The seed of thread `t` in a cycle whose seed is `seed`.
fn thread_seed(seed: u64, t: usize) -> u64 {
    seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn gen_op(rng: &mut StdRng, buffered: bool) -> Op {
    let ns = rng.gen_range(0..NS_PER_WRITER);
    let key = rng.gen_range(0..KEYS);
    let roll = rng.gen_range(0..100);
    if roll < 2 {
        return Op::Invalidate { ns };
    }
    if buffered && roll < 12 {
        return Op::Flush;
    }
    if roll < 30 {
        return Op::Del {
            ns,
            key,
            durable: buffered && rng.gen_bool(0.1),
        };
    }
    // Mostly small, some large, a few at the 64 KiB top (zero included).
    let len = match rng.gen_range(0..100) {
        0..=29 => rng.gen_range(0..64),
        30..=69 => rng.gen_range(64..4096),
        70..=94 => rng.gen_range(4096..32 << 10),
        _ => rng.gen_range(32 << 10..=64 << 10),
    };
    let ttl_ms = match rng.gen_range(0..10) {
        0..=5 => None,
        6 | 7 => Some(rng.gen_range(50..3000)),
        _ => Some(3_600_000),
    };
    Op::Set {
        ns,
        key,
        len,
        salt: rng.r#gen(),
        ttl_ms,
        durable: buffered && rng.gen_bool(0.1),
    }
}

/// The bytes of a set: the salt first (so no two writes look alike), then
/// either a compressible pattern or random bytes.
fn value(salt: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(salt);
    let mut v: Vec<u8> = if salt.is_multiple_of(2) {
        let b: u8 = rng.r#gen();
        (0..len).map(|j| b.wrapping_add((j / 64) as u8)).collect()
    } else {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    };
    let n = len.min(8);
    v[..n].copy_from_slice(&salt.to_le_bytes()[..n]);
    v
}

fn fingerprint(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: deterministic within one build, which is all
    // the parent (the same binary) needs.
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.write_usize(bytes.len());
    h.finish()
}

fn open(dir: &Path, durability: Durability) -> Result<Cache, embercache::OpenError> {
    let mut limits = Limits::default();
    // Bounds what pending writes hold in memory (64 KiB values).
    limits.queue_capacity = 2048;
    Cache::builder()
        .dir(dir)
        .durability(durability)
        .hot_capacity(8 << 20)
        .shards(4)
        .limits(limits)
        // A damaged file is a failed open here, never quietly moved aside.
        .strict(true)
        .open()
}

// ----- the child ----------------------------------------------------------

pub(crate) fn child(a: ChildArgs) -> Outcome {
    let buffered = a.max_delay_ms > 0;
    let durability = if buffered {
        Durability::Buffered {
            max_delay: Duration::from_millis(a.max_delay_ms),
        }
    } else {
        Durability::Sync
    };
    let cache = open(&a.dir, durability)?;
    writeln!(std::io::stdout().lock(), "READY")?;
    let threads: Vec<_> = (0..a.writers as usize)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || child_writer(&cache, a.seed, t, buffered))
        })
        .collect();
    for t in threads {
        if let Ok(Err(f)) = t.join() {
            return Err(f);
        }
    }
    // Only reached when the parent went away (the pipe broke).
    Ok(())
}

/// Writes until killed; returns only on an error or a broken pipe.
fn child_writer(cache: &Cache, seed: u64, t: usize, buffered: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(thread_seed(seed, t));
    for i in 0u64.. {
        let op = gen_op(&mut rng, buffered);
        let before = wall_ms();
        let (r, acked) = match op {
            Op::Set {
                ns,
                key,
                len,
                salt,
                ttl_ms,
                durable,
            } => {
                let mut o = WriteOptions::default();
                o.ttl = ttl_ms.map(Duration::from_millis);
                if durable {
                    o = o.durable();
                }
                let r = cache.set_with(&ns_name(t, ns), &key_name(key), value(salt, len), o);
                (r, !buffered || durable)
            }
            Op::Del { ns, key, durable } => {
                let (n, k) = (ns_name(t, ns), key_name(key));
                let r = if durable {
                    cache.delete_durable(&n, &k)
                } else {
                    cache.delete(&n, &k)
                };
                (r, !buffered || durable)
            }
            Op::Invalidate { ns } => (
                cache.invalidate_namespace(&ns_name(t, ns)).map(|_| ()),
                !buffered,
            ),
            Op::Flush => (cache.flush(), true),
        };
        if let Err(e) = r {
            return Err(Failure::new(format!("thread {t} op {i} {op:?}: {e}")));
        }
        let after = wall_ms();
        let tag = if acked { 'A' } else { 'B' };
        // One write per line (well under PIPE_BUF): lines never interleave.
        let line = format!("{t} {i} {tag} {before} {after}\n");
        let mut out = std::io::stdout().lock();
        if out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

// ----- the parent -----------------------------------------------------------

/// A stored value as the model knows it: its fingerprint and the window in
/// which it expires (`u64::MAX` = never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    fp: u64,
    exp_lo: u64,
    exp_hi: u64,
}

/// What the model allows one key to be.
type Slot = Option<Val>;

/// The wall-clock window in which a thread's keys were read back.
type ReadTime = (u64, u64);

/// `observed` (a fingerprint or absent), read within `at`, agrees with
/// model slot `want`.
fn agrees(want: Slot, observed: Option<u64>, at: ReadTime) -> bool {
    match (want, observed) {
        (None, None) => true,
        (None, Some(_)) => false,
        // Absent is fine once it may have expired.
        (Some(v), None) => v.exp_lo <= at.1.saturating_add(GRACE_MS),
        // Present is fine while it may still live.
        (Some(v), Some(fp)) => v.fp == fp && v.exp_hi.saturating_add(GRACE_MS) > at.0,
    }
}

/// One thread's log as the parent read it.
#[derive(Default)]
struct ThreadLog {
    /// (wall before, wall after) of each logged op, in op order.
    times: Vec<(u64, u64)>,
    /// Ops `0..acked` are acknowledged durable.
    acked: usize,
}

#[derive(Default)]
struct Figures {
    cycles: u64,
    acked_writes: u64,
    lost: u64,
    resurrected: u64,
    not_a_prefix: u64,
    corrupt_reads: u64,
    read_errors: u64,
    failed_opens: u64,
    failed_closes: u64,
    child_errors: u64,
    recovery: Vec<Duration>,
}

impl Figures {
    fn failed(&self) -> bool {
        self.lost
            + self.resurrected
            + self.not_a_prefix
            + self.corrupt_reads
            + self.read_errors
            + self.failed_opens
            + self.failed_closes
            + self.child_errors
            > 0
    }
}

/// Applies op `op` (logged between `lo` and `hi`) to one thread's slots.
fn apply(slots: &mut [Slot], op: &Op, lo: u64, hi: u64) -> Vec<usize> {
    match *op {
        Op::Set {
            ns,
            key,
            len,
            salt,
            ttl_ms,
            ..
        } => {
            let (exp_lo, exp_hi) = match ttl_ms {
                None => (u64::MAX, u64::MAX),
                Some(t) => (lo + t, hi + t),
            };
            let i = ns * KEYS + key;
            slots[i] = Some(Val {
                fp: fingerprint(&value(salt, len)),
                exp_lo,
                exp_hi,
            });
            vec![i]
        }
        Op::Del { ns, key, .. } => {
            let i = ns * KEYS + key;
            slots[i] = None;
            vec![i]
        }
        Op::Invalidate { ns } => {
            let r: Vec<usize> = (ns * KEYS..(ns + 1) * KEYS).collect();
            for &i in &r {
                slots[i] = None;
            }
            r
        }
        Op::Flush => Vec::new(),
    }
}

/// Reads every key of `thread`: fingerprints (None = absent or unreadable)
/// and the wall time of the reads.
fn read_thread(
    cache: &Cache,
    thread: usize,
    figures: &mut Figures,
    errors: &mut Vec<String>,
) -> (Vec<Option<u64>>, ReadTime) {
    let start = wall_ms();
    let mut out = Vec::with_capacity(NS_PER_WRITER * KEYS);
    for ns in 0..NS_PER_WRITER {
        let name = ns_name(thread, ns);
        for k in 0..KEYS {
            out.push(match cache.get(&name, &key_name(k)) {
                Ok(v) => v.map(|v| fingerprint(&v)),
                Err(ReadError::Corrupt { .. }) => {
                    figures.corrupt_reads += 1;
                    errors.push(format!("{name}/k{k:02}: corrupt record"));
                    None
                }
                Err(e) => {
                    figures.read_errors += 1;
                    errors.push(format!("{name}/k{k:02}: {e}"));
                    None
                }
            });
        }
    }
    (out, (start, wall_ms()))
}

/// Checks one thread's recovered keys against the prefixes its log allows;
/// returns the model state the next cycle starts from.
#[allow(clippy::too_many_arguments)]
fn check_thread(
    start: &[Slot],
    ops: &[Op],
    log: &ThreadLog,
    child_start: u64,
    killed_at: u64,
    observed: &[Option<u64>],
    now: ReadTime,
    figures: &mut Figures,
    errors: &mut Vec<String>,
    thread: usize,
) -> Vec<Slot> {
    let bounds = |i: usize| -> (u64, u64) {
        match log.times.get(i) {
            Some(&t) => t,
            // The op in flight: after the previous one, before the kill.
            None => (
                log.times.last().map_or(child_start, |t| t.1),
                killed_at.max(child_start),
            ),
        }
    };
    // State after the acknowledged prefix.
    let mut state = start.to_vec();
    for (i, op) in ops[..log.acked].iter().enumerate() {
        let (lo, hi) = bounds(i);
        apply(&mut state, op, lo, hi);
    }
    // Every later prefix, up to and including the op in flight.
    let mut allowed: Vec<Vec<Slot>> = vec![Vec::new(); state.len()];
    for (i, s) in state.iter().enumerate() {
        allowed[i].push(*s);
    }
    let mismatched = |s: &[Slot], i: usize| !agrees(s[i], observed[i], now);
    let mut mismatches = (0..state.len()).filter(|&i| mismatched(&state, i)).count();
    let mut matched: Option<Vec<Slot>> = (mismatches == 0).then(|| state.clone());
    for (i, op) in ops.iter().enumerate().skip(log.acked) {
        let (lo, hi) = bounds(i);
        let before: Vec<(usize, bool)> = match op {
            Op::Set { ns, key, .. } | Op::Del { ns, key, .. } => vec![ns * KEYS + key],
            Op::Invalidate { ns } => (ns * KEYS..(ns + 1) * KEYS).collect(),
            Op::Flush => Vec::new(),
        }
        .into_iter()
        .map(|k| (k, mismatched(&state, k)))
        .collect();
        let touched = apply(&mut state, op, lo, hi);
        for (k, was) in before {
            let is = mismatched(&state, k);
            if was && !is {
                mismatches -= 1;
            } else if !was && is {
                mismatches += 1;
            }
        }
        for k in touched {
            allowed[k].push(state[k]);
        }
        if mismatches == 0 && matched.is_none() {
            matched = Some(state.clone());
        }
    }
    for (i, obs) in observed.iter().enumerate() {
        if allowed[i].iter().any(|s| agrees(*s, *obs, now)) {
            continue;
        }
        let name = format!("{}/k{:02}", ns_name(thread, i / KEYS), i % KEYS);
        if obs.is_some() {
            figures.resurrected += 1;
            errors.push(format!(
                "{name}: present, but no allowed state has this value live ({} acked of {} ops)",
                log.acked,
                ops.len()
            ));
        } else {
            figures.lost += 1;
            errors.push(format!(
                "{name}: absent, but every allowed state has it live ({} acked of {} ops)",
                log.acked,
                ops.len()
            ));
        }
    }
    match matched {
        Some(s) => s,
        None => {
            figures.not_a_prefix += 1;
            errors.push(format!(
                "thread {thread}: no single prefix of its {} ops explains the recovered state",
                ops.len()
            ));
            // Start the next cycle from what is there, expiry unknown.
            observed
                .iter()
                .map(|o| {
                    o.map(|fp| Val {
                        fp,
                        exp_lo: 0,
                        exp_hi: u64::MAX,
                    })
                })
                .collect()
        }
    }
}

/// What the child printed, read by a thread so the parent can time the kill.
enum Line {
    Ready,
    Ack {
        thread: usize,
        index: u64,
        durable: bool,
        before: u64,
        after: u64,
    },
}

fn parse_line(l: &str) -> Option<Line> {
    if l == "READY" {
        return Some(Line::Ready);
    }
    let mut it = l.split(' ');
    let thread = it.next()?.parse().ok()?;
    let index = it.next()?.parse().ok()?;
    let durable = match it.next()? {
        "A" => true,
        "B" => false,
        _ => return None,
    };
    let before = it.next()?.parse().ok()?;
    let after = it.next()?.parse().ok()?;
    Some(Line::Ack {
        thread,
        index,
        durable,
        before,
        after,
    })
}

struct Cycle<'a> {
    index: u64,
    seed: u64,
    max_delay_ms: u64,
    writers: usize,
    data: &'a Path,
    work: &'a Path,
    /// Kill this long after READY; `None` = kill while the child opens.
    kill_after: Option<Duration>,
    early_kill: Duration,
}

/// Runs one child and kills it. Returns the logs, the child's start and
/// kill wall times, or an error text when the child misbehaved.
fn run_child(c: &Cycle) -> Result<(Vec<ThreadLog>, u64, u64), String> {
    let stderr_path = c.work.join("child.stderr");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child_start = wall_ms();
    let mut child = Command::new(exe)
        .arg("torture-child")
        .arg("--dir")
        .arg(c.data)
        .args([
            "--seed",
            &c.seed.to_string(),
            "--writers",
            &c.writers.to_string(),
            "--max-delay-ms",
            &c.max_delay_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let child_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut lines = Vec::new();
    let mut kill_at = c
        .kill_after
        .is_none()
        .then(|| Instant::now() + c.early_kill);
    let mut killed = false;
    loop {
        let wait = match kill_at {
            Some(t) if !killed => t.saturating_duration_since(Instant::now()),
            _ => HANG_GUARD,
        };
        match rx.recv_timeout(wait) {
            Ok(l) => {
                if l == "READY"
                    && let Some(d) = c.kill_after
                {
                    kill_at = Some(Instant::now() + d);
                }
                lines.push(l);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if killed || kill_at.is_none() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "child printed nothing for {HANG_GUARD:?}\n{}",
                    child_stderr()
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !killed && kill_at.is_some_and(|t| Instant::now() >= t) {
            // SIGKILL on unix: no destructor, no flush, no close.
            child.kill().map_err(|e| format!("kill: {e}"))?;
            killed = true;
        }
    }
    let _ = reader.join();
    let status = child.wait().map_err(|e| e.to_string())?;
    let killed_at = wall_ms();
    if !killed {
        return Err(format!(
            "child exited by itself ({status}) after {} lines\n{}",
            lines.len(),
            child_stderr()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(9) {
            return Err(format!(
                "child ended with {status}, not SIGKILL\n{}",
                child_stderr()
            ));
        }
    }
    let mut logs: Vec<ThreadLog> = (0..c.writers).map(|_| ThreadLog::default()).collect();
    for l in &lines {
        match parse_line(l) {
            Some(Line::Ready) => {}
            Some(Line::Ack {
                thread,
                index,
                durable,
                before,
                after,
            }) => {
                let log = logs
                    .get_mut(thread)
                    .ok_or_else(|| format!("bad thread in line {l:?}"))?;
                if index != log.times.len() as u64 {
                    return Err(format!(
                        "thread {thread} logged op {index} after {} ops",
                        log.times.len()
                    ));
                }
                log.times.push((before, after));
                if durable {
                    log.acked = log.times.len();
                }
            }
            None => return Err(format!("unreadable line from the child: {l:?}")),
        }
    }
    Ok((logs, child_start, killed_at))
}

/// The recovery check of one cycle. Updates `model` to the accepted state.
fn check_cycle(
    c: &Cycle,
    logs: &[ThreadLog],
    child_start: u64,
    killed_at: u64,
    model: &mut [Vec<Slot>],
    figures: &mut Figures,
    errors: &mut Vec<String>,
) {
    let buffered = c.max_delay_ms > 0;
    let t0 = Instant::now();
    let cache = match open(c.data, Durability::Sync) {
        Ok(cache) => cache,
        Err(e) => {
            figures.failed_opens += 1;
            errors.push(format!("open after the kill failed: {e}"));
            // Keep the damaged directory for inspection; start afresh.
            let aside = c.work.join(format!("data.failed-open-{}", c.index));
            let _ = std::fs::rename(c.data, aside);
            model.iter_mut().for_each(|m| m.fill(None));
            return;
        }
    };
    let first = cache.get(&ns_name(0, 0), &key_name(0));
    figures.recovery.push(t0.elapsed());
    if let Err(ReadError::Corrupt { .. }) = first {
        figures.corrupt_reads += 1;
    }
    if let Some(m) = cache.stats().moved_aside {
        errors.push(format!("the database was moved aside: {m}"));
        figures.failed_opens += 1;
    }
    for (t, log) in logs.iter().enumerate() {
        figures.acked_writes += {
            let mut rng = StdRng::seed_from_u64(thread_seed(c.seed, t));
            (0..log.acked)
                .filter(|_| !matches!(gen_op(&mut rng, buffered), Op::Flush))
                .count() as u64
        };
        // Every logged op plus the one that may have been in flight.
        let mut rng = StdRng::seed_from_u64(thread_seed(c.seed, t));
        let ops: Vec<Op> = (0..=log.times.len())
            .map(|_| gen_op(&mut rng, buffered))
            .collect();
        let (observed, now) = read_thread(&cache, t, figures, errors);
        model[t] = check_thread(
            &model[t],
            &ops,
            log,
            child_start,
            killed_at,
            &observed,
            now,
            figures,
            errors,
            t,
        );
    }
    if let Err(e) = cache.close() {
        errors.push(format!("close after the check failed: {e}"));
        figures.failed_closes += 1;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn run(a: Args) -> Outcome {
    let seed = a.seed.unwrap_or_else(|| rand::thread_rng().r#gen());
    let writers = a.writers as usize;
    std::fs::create_dir_all(&a.dir)?;
    let data = a.dir.join("data");
    if data.exists() {
        return Err(Failure::new(format!(
            "{} already exists; torture needs a fresh directory (remove it or pick another --dir)",
            data.display()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut figures = Figures::default();
    let mut model: Vec<Vec<Slot>> = vec![vec![None; NS_PER_WRITER * KEYS]; writers];
    let pb = bar(a.cycles, "torture");
    let mut stderr = std::io::stderr();
    for index in 0..a.cycles {
        let max_delay_ms = if index % 2 == 0 {
            0
        } else {
            [1, 10, 50][(index / 2 % 3) as usize]
        };
        // One cycle in ten is killed while the child is still opening
        // (recovering) the database. Not the first: it creates the file,
        // and a kill during creation leaves a file redb refuses (see
        // tests/torture.rs `kill_while_creating_the_database`).
        let early = rng.gen_bool(0.1) && index > 0;
        let c = Cycle {
            index,
            seed: rng.r#gen(),
            max_delay_ms,
            writers,
            data: &data,
            work: &a.dir,
            kill_after: (!early).then(|| Duration::from_millis(rng.gen_range(0..=a.max_run_ms))),
            early_kill: Duration::from_millis(rng.gen_range(0..30)),
        };
        let mut errors = Vec::new();
        match run_child(&c) {
            Ok((logs, child_start, killed_at)) => check_cycle(
                &c,
                &logs,
                child_start,
                killed_at,
                &mut model,
                &mut figures,
                &mut errors,
            ),
            Err(e) => {
                figures.child_errors += 1;
                errors.push(format!("child: {e}"));
            }
        }
        figures.cycles += 1;
        for e in errors.iter().take(20) {
            pb.suspend(|| writeln!(stderr, "cycle {index} (seed {:#x}): {e}", c.seed))?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut rec = figures.recovery.clone();
    rec.sort();
    let mut out = std::io::stdout().lock();
    writeln!(out, "torture run (seed {seed:#x}, {writers} writers)")?;
    writeln!(out, "cycles: {}", figures.cycles)?;
    writeln!(out, "writes acknowledged durable: {}", figures.acked_writes)?;
    writeln!(out, "lost: {}", figures.lost)?;
    writeln!(out, "resurrected: {}", figures.resurrected)?;
    writeln!(out, "not a prefix: {}", figures.not_a_prefix)?;
    writeln!(out, "corrupt reads: {}", figures.corrupt_reads)?;
    writeln!(out, "read errors: {}", figures.read_errors)?;
    writeln!(out, "failed opens: {}", figures.failed_opens)?;
    writeln!(out, "failed closes: {}", figures.failed_closes)?;
    writeln!(out, "child errors: {}", figures.child_errors)?;
    writeln!(
        out,
        "recovery (open + first get): p50 {}, p99 {}, max {}",
        ms(percentile(&rec, 0.50)),
        ms(percentile(&rec, 0.99)),
        ms(rec.last().copied().unwrap_or_default())
    )?;
    if figures.failed() {
        return Err(Failure::new(format!(
            "torture found problems (replay with --seed {seed})"
        )));
    }
    Ok(())
}

//! kill -9 test: a child process writes, the parent kills it with SIGKILL
//! at a random moment, reopens the directory and checks that nothing
//! acknowledged was lost and nothing removed came back.
//!
//! The child is this test binary run again (`child_writer`, ignored in a
//! normal run). It derives its operations from a seed, so the parent can
//! regenerate the exact sequence; after each operation that returned `Ok`
//! the child prints one line describing it, which the parent compares with
//! its own copy.
//!
//! Which operations count as acknowledged:
//! - `Sync` mode: every operation that returned `Ok` (it was fsynced).
//! - `Buffered` mode: every operation before a `flush()` that returned `Ok`.
//!
//! The writer commits in queue order, one transaction per group, so the
//! recovered state must equal the state after some prefix of the operation
//! sequence: at least every acknowledged operation, at most one more than
//! the child printed (the one in flight when it died). The check looks for
//! such a prefix; any key that matches none of the allowed states counts as
//! lost (or resurrected).
//!
//! Time: the child runs on a `ManualClock` stopped at `T0`. Its TTLs are
//! 1 h and 3 h. The parent opens two copies of the killed directory, one at
//! `T0 + 30 min` (every TTL entry must still be there) and one at
//! `T0 + 2 h` (the 1 h entries must be gone: expired ⇒ absent).

mod dirs;

use dirs::copy_dir;
use embercache::{Cache, Durability, ManualClock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ENV: &str = "EMBERCACHE_CRASH_CHILD";
const T0: u64 = 1_750_000_000_000;
const HOUR: u64 = 3_600_000;
const NAMESPACES: [&str; 3] = ["p", "q", "r"];
const KEYS: usize = 40;
/// Cycles in the normal suite; half run in each mode.
const CYCLES: u64 = 24;
/// No line from the child for this long means it hangs: fail, do not wait.
const HANG_GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Durability::Sync`: every returned write is durable.
    Sync,
    /// `Durability::Buffered`: durable once a later `flush()` returned.
    Buffered { max_delay_ms: u64 },
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Set {
        ns: usize,
        key: usize,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Del {
        ns: usize,
        key: usize,
    },
    Invalidate {
        ns: usize,
    },
    Flush,
}

fn key(k: usize) -> Vec<u8> {
    format!("k{k:02}").into_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Operation `i` of a sequence; `rng` is seeded once per sequence.
fn gen_op(rng: &mut StdRng, mode: Mode, i: u64) -> Op {
    let ns = rng.gen_range(0..NAMESPACES.len());
    let key = rng.gen_range(0..KEYS);
    let flush_weight = match mode {
        Mode::Sync => 2,
        Mode::Buffered { .. } => 15,
    };
    let roll = rng.gen_range(0..100);
    if roll < 2 {
        return Op::Invalidate { ns };
    }
    if roll < 2 + flush_weight {
        return Op::Flush;
    }
    if roll < 20 + flush_weight {
        return Op::Del { ns, key };
    }
    let len = match rng.gen_range(0..20) {
        0..=9 => rng.gen_range(0..64),
        10..=16 => rng.gen_range(64..2000),
        _ => rng.gen_range(2000..20_000),
    };
    let mut value: Vec<u8> = if rng.gen_bool(0.5) {
        let b: u8 = rng.r#gen();
        (0..len).map(|j| b.wrapping_add((j / 32) as u8)).collect()
    } else {
        (0..len).map(|_| rng.r#gen()).collect()
    };
    // The op index in the value: no two writes look alike.
    let n = value.len().min(8);
    value[..n].copy_from_slice(&i.to_le_bytes()[..n]);
    let ttl_ms = match rng.gen_range(0..10) {
        0..=5 => None,
        6 | 7 => Some(HOUR),
        _ => Some(3 * HOUR),
    };
    Op::Set {
        ns,
        key,
        value,
        ttl_ms,
    }
}

/// The line the child prints for op `i`: `ACK` when it is acknowledged
/// durable by itself, `BUF` when it was only accepted.
fn describe(i: u64, op: &Op, mode: Mode) -> String {
    let tag = match (mode, op) {
        (Mode::Sync, _) | (_, Op::Flush) => "ACK",
        _ => "BUF",
    };
    match op {
        Op::Set {
            ns,
            key: k,
            value,
            ttl_ms,
        } => format!(
            "{tag} {i} set {} {} {} {}",
            NAMESPACES[*ns],
            String::from_utf8_lossy(&key(*k)),
            ttl_ms.map_or("-".to_string(), |t| t.to_string()),
            hex(value)
        ),
        Op::Del { ns, key: k } => format!(
            "{tag} {i} del {} {}",
            NAMESPACES[*ns],
            String::from_utf8_lossy(&key(*k))
        ),
        Op::Invalidate { ns } => format!("{tag} {i} inv {}", NAMESPACES[*ns]),
        Op::Flush => format!("{tag} {i} flush"),
    }
}

fn open(dir: &Path, clock: ManualClock, durability: Durability) -> Cache {
    Cache::builder()
        .dir(dir)
        .clock(clock)
        .durability(durability)
        .shards(2)
        .hot_capacity(256 << 10)
        // A damaged file must fail the test, not be moved aside quietly.
        .strict(true)
        .open()
        .unwrap_or_else(|e| panic!("open of {} failed: {e}", dir.display()))
}

/// The writer process. Runs only when the parent set `ENV`.
#[test]
#[ignore = "child process of crash_consistency_under_sigkill"]
fn child_writer() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[0]);
    let seed: u64 = parts[1].parse().unwrap();
    let mode = match parts[2].parse::<u64>().unwrap() {
        0 => Mode::Sync,
        ms => Mode::Buffered { max_delay_ms: ms },
    };
    let durability = match mode {
        Mode::Sync => Durability::Sync,
        Mode::Buffered { max_delay_ms } => Durability::Buffered {
            max_delay: Duration::from_millis(max_delay_ms),
        },
    };
    let cache = open(dir, ManualClock::new(T0), durability);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = std::io::stdout().lock();
    // libtest has printed "test child_writer ... " without a newline.
    writeln!(out).unwrap();
    // Runs until killed.
    for i in 0.. {
        let op = gen_op(&mut rng, mode, i);
        let r = match &op {
            Op::Set {
                ns,
                key: k,
                value,
                ttl_ms,
            } => match ttl_ms {
                Some(t) => cache.set_with_ttl(
                    NAMESPACES[*ns],
                    &key(*k),
                    value.clone(),
                    Duration::from_millis(*t),
                ),
                None => cache.set(NAMESPACES[*ns], &key(*k), value.clone()),
            },
            Op::Del { ns, key: k } => cache.delete(NAMESPACES[*ns], &key(*k)),
            Op::Invalidate { ns } => cache.invalidate_namespace(NAMESPACES[*ns]).map(|_| ()),
            Op::Flush => cache.flush(),
        };
        if let Err(e) = r {
            panic!("op {i} {op:?} failed: {e}");
        }
        writeln!(out, "{}", describe(i, &op, mode)).unwrap();
        out.flush().unwrap();
    }
}

/// Model state: (namespace, key) → (value, expires_at in engine time).
type State = BTreeMap<(usize, usize), (Vec<u8>, u64)>;

fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Set {
            ns,
            key,
            value,
            ttl_ms,
        } => {
            // The child's engine time is T0 throughout (its clock never moves).
            let exp = ttl_ms.map_or(u64::MAX, |t| T0 + t);
            state.insert((*ns, *key), (value.clone(), exp));
        }
        Op::Del { ns, key } => {
            state.remove(&(*ns, *key));
        }
        Op::Invalidate { ns } => state.retain(|(n, _), _| n != ns),
        Op::Flush => {}
    }
}

/// What a reader at engine time `now` must see.
fn visible(state: &State, now: u64) -> BTreeMap<(usize, usize), Vec<u8>> {
    state
        .iter()
        .filter(|(_, (_, exp))| *exp > now)
        .map(|(k, (v, _))| (*k, v.clone()))
        .collect()
}

/// Everything a reopened cache returns, read key by key and by scan (both
/// must agree).
fn read_all(cache: &Cache) -> BTreeMap<(usize, usize), Vec<u8>> {
    let mut out = BTreeMap::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        let mut by_get = BTreeMap::new();
        for k in 0..KEYS {
            if let Some(v) = cache.get(ns, &key(k)).expect("get after crash") {
                by_get.insert(key(k), v.to_vec());
            }
        }
        let by_scan: BTreeMap<Vec<u8>, Vec<u8>> = cache
            .scan(ns, b"")
            .expect("scan after crash")
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        assert_eq!(by_get, by_scan, "get and scan disagree in namespace {ns}");
        for k in 0..KEYS {
            if let Some(v) = by_get.remove(&key(k)) {
                out.insert((n, k), v);
            }
        }
    }
    out
}

#[derive(Default, Debug)]
struct Figures {
    cycles: u64,
    acked_writes: u64,
    lost: u64,
    resurrected: u64,
    inconsistent: u64,
}

/// Outcome of checking one reopened copy against the allowed prefixes.
struct Check {
    /// Prefix lengths whose state matches exactly.
    matching: Vec<u64>,
    lost: u64,
    resurrected: u64,
    report: String,
}

/// `ops` holds every op that may have run; prefixes `acked..=ops.len()`
/// are allowed outcomes.
fn check(got: &BTreeMap<(usize, usize), Vec<u8>>, ops: &[Op], acked: u64, now: u64) -> Check {
    let mut state = State::new();
    for op in &ops[..acked as usize] {
        apply(&mut state, op);
    }
    let mut allowed: Vec<BTreeMap<(usize, usize), Vec<u8>>> = vec![visible(&state, now)];
    for op in &ops[acked as usize..] {
        apply(&mut state, op);
        allowed.push(visible(&state, now));
    }
    let matching = allowed
        .iter()
        .enumerate()
        .filter(|(_, s)| *s == got)
        .map(|(p, _)| acked + p as u64)
        .collect();
    let (mut lost, mut resurrected) = (0, 0);
    let mut report = String::new();
    for (ns, name) in NAMESPACES.iter().enumerate() {
        for k in 0..KEYS {
            let g = got.get(&(ns, k));
            if allowed.iter().any(|s| s.get(&(ns, k)) == g) {
                continue;
            }
            let want = allowed[0].get(&(ns, k));
            if g.is_some() && allowed.iter().all(|s| s.get(&(ns, k)).is_none()) {
                resurrected += 1;
            } else {
                lost += 1;
            }
            let short = |v: Option<&Vec<u8>>| v.map(|v| hex(&v[..v.len().min(8)]));
            report += &format!(
                "  {name}/k{k:02}: got {:?}, acknowledged state has {:?}\n",
                short(g),
                short(want)
            );
        }
    }
    Check {
        matching,
        lost,
        resurrected,
        report,
    }
}

fn run_cycle(cycle: u64, seed: u64, mode: Mode, kill_at: u64, figures: &mut Figures) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let stderr_path = tmp.path().join("child.stderr");
    let mode_arg = match mode {
        Mode::Sync => 0,
        Mode::Buffered { max_delay_ms } => max_delay_ms,
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, format!("{}|{seed}|{mode_arg}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if (line.starts_with("ACK ") || line.starts_with("BUF ")) && tx.send(line).is_err() {
                break;
            }
        }
    });
    let child_stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut lines = Vec::new();
    let mut killed = false;
    loop {
        match rx.recv_timeout(HANG_GUARD) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "cycle {cycle}: child printed nothing for {HANG_GUARD:?}\n{}",
                    child_stderr()
                );
            }
        }
        if !killed && lines.len() as u64 >= kill_at {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(
        killed,
        "cycle {cycle}: child stopped after {} lines without being killed ({status})\n{}",
        lines.len(),
        child_stderr()
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "child must die by SIGKILL");
    }

    // Regenerate the sequence and compare line by line.
    let mut rng = StdRng::seed_from_u64(seed);
    let printed = lines.len() as u64;
    // One more than printed: the op in flight may have reached the disk.
    let ops: Vec<Op> = (0..=printed).map(|i| gen_op(&mut rng, mode, i)).collect();
    let mut acked = 0;
    for (i, l) in lines.iter().enumerate() {
        let want = describe(i as u64, &ops[i], mode);
        assert!(
            *l == want,
            "cycle {cycle}: child and parent disagree on op {i}: child {:?}, parent {:?}",
            &l[..l.len().min(80)],
            &want[..want.len().min(80)]
        );
        if l.starts_with("ACK ") {
            acked = i as u64 + 1;
        }
    }
    figures.acked_writes += ops[..acked as usize]
        .iter()
        .filter(|o| !matches!(o, Op::Flush))
        .count() as u64;

    // Check two copies at two engine times (see the module docs).
    let copy = tmp.path().join("copy");
    copy_dir(&dir, &copy);
    let mut matched: Option<Vec<u64>> = None;
    for (d, now) in [(&dir, T0 + HOUR / 2), (&copy, T0 + 2 * HOUR)] {
        let cache = open(d, ManualClock::new(now), Durability::Sync);
        assert_eq!(cache.stats().moved_aside, None);
        let got = read_all(&cache);
        let c = check(&got, &ops, acked, now);
        figures.lost += c.lost;
        figures.resurrected += c.resurrected;
        assert!(
            c.lost == 0 && c.resurrected == 0,
            "cycle {cycle} (seed {seed}, {mode:?}, {printed} printed, {acked} acknowledged, \
             read at T0+{} ms): {} lost, {} resurrected\n{}",
            now - T0,
            c.lost,
            c.resurrected,
            c.report
        );
        // Both copies hold the same file: one prefix must explain both reads.
        let m: Vec<u64> = match matched.take() {
            None => c.matching,
            Some(prev) => prev
                .into_iter()
                .filter(|p| c.matching.contains(p))
                .collect(),
        };
        if m.is_empty() {
            figures.inconsistent += 1;
        }
        assert!(
            !m.is_empty(),
            "cycle {cycle} (seed {seed}, {mode:?}): every key is allowed but no single \
             prefix of the sequence explains the recovered state"
        );
        matched = Some(m);
        // The sweep and the epoch purge after recovery remove nothing live.
        cache.run_maintenance().unwrap();
        assert_eq!(
            read_all(&cache),
            got,
            "maintenance after recovery changed reads"
        );
        cache.validate();
        cache.close().unwrap();
    }
    figures.cycles += 1;
}

#[test]
fn crash_consistency_under_sigkill() {
    let base: u64 = std::env::var("EMBERCACHE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE);
    let mut rng = StdRng::seed_from_u64(base);
    let mut figures = Figures::default();
    for cycle in 0..CYCLES {
        let seed = rng.r#gen();
        let mode = if cycle % 2 == 0 {
            Mode::Sync
        } else {
            Mode::Buffered {
                max_delay_ms: [1, 20, 200][(cycle / 2 % 3) as usize],
            }
        };
        let kill_at = rng.gen_range(20..400);
        run_cycle(cycle, seed, mode, kill_at, &mut figures);
    }
    eprintln!(
        "crash test (base seed {base:#x}): {} cycles, {} acknowledged writes checked, \
         {} lost, {} resurrected, {} inconsistent",
        figures.cycles,
        figures.acked_writes,
        figures.lost,
        figures.resurrected,
        figures.inconsistent
    );
    assert_eq!(figures.cycles, CYCLES);
    assert!(
        figures.acked_writes > 0,
        "nothing was acknowledged: the test checked nothing"
    );
    assert_eq!(figures.lost, 0);
}

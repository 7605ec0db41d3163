//! Arbitrary input to the JSON-lines import (`embercache import`).
//!
//! An independent parser here (serde_json + base64, written from the
//! format in src/import.rs's docs, not sharing its code) says what each
//! line means. Properties:
//! * The import never panics; it stops exactly at the first line the
//!   oracle finds malformed (`Malformed`, with that line number) or whose
//!   entry the cache must refuse (`Write`: bad namespace name, key or
//!   value too long), or reads everything.
//! * Every entry of the lines before that one is readable afterwards with
//!   its value and expiry (last line wins), already expired ones are
//!   skipped, and nothing from the lines after it was stored.
//! * The report counts what was stored and skipped.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use embercache::{Cache, Durability, ImportError, Limits, ManualClock, Ttl, import_json_lines};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;
const MAX_KEY: usize = 16;
const MAX_VALUE: usize = 64;
const MAX_NS: usize = 8;
/// Namespace names a structured line picks from: valid ones, and ones the
/// cache refuses (empty, too long, a control character).
const NAMESPACES: [&str; 7] = ["a", "b", "ns é", "", "toolong-ns", "x\u{1}", "12345678"];
/// Expiries a structured line picks from, relative to `T0`.
const EXPIRIES: [Option<i64>; 6] = [
    None,
    Some(-1000),
    Some(0),
    Some(1),
    Some(60_000),
    Some(i64::MAX),
];

#[derive(Arbitrary, Debug)]
enum LineSpec {
    /// A well-formed line (which the cache may still refuse).
    Entry {
        ns: u8,
        key: Vec<u8>,
        value: Vec<u8>,
        expiry: u8,
        /// Write the bytes as base64 even when they are UTF-8.
        b64: bool,
        crlf: bool,
    },
    /// A well-formed line cut short (at least one byte kept).
    Cut {
        ns: u8,
        key: Vec<u8>,
        value: Vec<u8>,
        at: u16,
    },
    /// Whitespace only: skipped.
    Blank(u8),
    /// Anything, newlines included.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Lines(Vec<LineSpec>),
}

fn entry_line(ns: &str, key: &[u8], value: &[u8], expiry: Option<i64>, b64: bool) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("ns".into(), Value::String(ns.into()));
    for (name, b) in [("key", key), ("value", value)] {
        match std::str::from_utf8(b) {
            Ok(s) if !b64 => m.insert(name.into(), Value::String(s.into())),
            _ => m.insert(format!("{name}_b64"), Value::String(B64.encode(b))),
        };
    }
    if let Some(d) = expiry {
        m.insert(
            "expires_at_ms".into(),
            Value::from((T0 as i64).saturating_add(d) as u64),
        );
    }
    serde_json::to_vec(&Value::Object(m)).expect("serialize")
}

fn assemble(lines: &[LineSpec]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        match l {
            LineSpec::Entry {
                ns,
                key,
                value,
                expiry,
                b64,
                crlf,
            } => {
                let ns = NAMESPACES[usize::from(*ns) % NAMESPACES.len()];
                let e = EXPIRIES[usize::from(*expiry) % EXPIRIES.len()];
                out.extend(entry_line(ns, key, value, e, *b64));
                out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
            LineSpec::Cut { ns, key, value, at } => {
                let ns = NAMESPACES[usize::from(*ns) % NAMESPACES.len()];
                let full = entry_line(ns, key, value, None, false);
                let at = 1 + usize::from(*at) % (full.len() - 1);
                out.extend_from_slice(&full[..at]);
                out.push(b'\n');
            }
            LineSpec::Blank(n) => {
                out.extend(std::iter::repeat_n(b' ', usize::from(n % 4)));
                out.push(b'\n');
            }
            LineSpec::Raw(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// What the oracle makes of one line.
enum Meaning {
    Blank,
    Entry {
        ns: String,
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at: Option<u64>,
    },
    Malformed,
}

fn bytes_field(m: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    match (m.get(name), m.get(&format!("{name}_b64"))) {
        (Some(Value::String(s)), None) => Some(s.as_bytes().to_vec()),
        (None, Some(Value::String(s))) => B64.decode(s).ok(),
        _ => None,
    }
}

fn meaning(line: &[u8]) -> Meaning {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Meaning::Blank;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Meaning::Malformed;
    };
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return Meaning::Malformed;
    };
    let Some(Value::String(ns)) = m.get("ns") else {
        return Meaning::Malformed;
    };
    let expires_at = match m.get("expires_at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(t) => Some(t),
            None => return Meaning::Malformed,
        },
    };
    match (bytes_field(&m, "key"), bytes_field(&m, "value")) {
        (Some(key), Some(value)) => Meaning::Entry {
            ns: ns.clone(),
            key,
            value,
            expires_at,
        },
        _ => Meaning::Malformed,
    }
}

/// Splits like `BufRead::read_until(b'\n')`, then drops "\n" and one "\r".
fn split(input: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        out.push(line.strip_suffix(b"\r").unwrap_or(line));
        rest = next;
    }
    out
}

fn refused(ns: &str, key: &[u8], value: &[u8]) -> bool {
    ns.is_empty()
        || ns.len() > MAX_NS
        || ns.chars().any(char::is_control)
        || key.len() > MAX_KEY
        || value.len() > MAX_VALUE
}

fuzz_target!(|input: Input| {
    let bytes = match &input {
        Input::Bytes(b) => b.clone(),
        Input::Lines(l) => assemble(l),
    };
    let mut limits = Limits::default();
    limits.max_key_len = MAX_KEY;
    limits.max_value_len = MAX_VALUE;
    limits.max_namespace_len = MAX_NS;
    let clock = ManualClock::new(T0);
    let cache = Cache::builder()
        .in_memory()
        .clock(clock)
        .shards(1)
        // Small tiers: under ASan a large hot tier costs more to set up
        // than the whole import.
        .hot_capacity(64 << 10)
        // No buffering delay: the writer commits as soon as it has work,
        // instead of idling up to 10 ms per run.
        .durability(Durability::Buffered {
            max_delay: Duration::ZERO,
        })
        .limits(limits)
        .open()
        .expect("open");

    // The oracle: where the import must stop and what it must store.
    let mut model: BTreeMap<(String, Vec<u8>), (Vec<u8>, Option<u64>)> = BTreeMap::new();
    let mut after: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();
    let (mut stored, mut expired) = (0u64, 0u64);
    let mut stop: Option<(u64, bool)> = None; // (line, malformed?)
    let lines = split(&bytes);
    for (i, l) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let m = meaning(l);
        if stop.is_some() {
            if let Meaning::Entry { ns, key, .. } = m {
                after.insert((ns, key));
            }
            continue;
        }
        match m {
            Meaning::Blank => {}
            Meaning::Malformed => stop = Some((n, true)),
            Meaning::Entry {
                ns,
                key,
                value,
                expires_at,
            } => {
                // Expiry first: an expired line is skipped before the
                // cache could refuse it.
                if expires_at.is_some_and(|t| t <= T0) {
                    expired += 1;
                } else if refused(&ns, &key, &value) {
                    stop = Some((n, false));
                } else {
                    stored += 1;
                    model.insert((ns, key), (value, expires_at));
                }
            }
        }
    }

    let r = import_json_lines(&cache, &bytes[..]);
    cache.validate();
    let rep = match (&r, stop) {
        (Ok(rep), None) => {
            assert_eq!(rep.lines, lines.len() as u64);
            *rep
        }
        (Err(e @ ImportError::Malformed { line, .. }), Some((n, true)))
        | (Err(e @ ImportError::Write { line, .. }), Some((n, false))) => {
            assert_eq!(*line, n, "stopped at the wrong line: {e}");
            assert!(e.to_string().contains(&format!("line {n}")), "{e}");
            *e.report()
        }
        (r, stop) => panic!("import returned {r:?}, the oracle expected a stop at {stop:?}"),
    };
    assert_eq!(
        (rep.stored, rep.expired),
        (stored, expired),
        "report counts"
    );
    for ((ns, key), (value, expires_at)) in &model {
        let got = cache.get(ns, key).expect("get");
        assert_eq!(
            got.as_deref(),
            Some(&value[..]),
            "{ns}/{key:?} lost or wrong"
        );
        let want = match expires_at {
            // u64::MAX is the engine's "never".
            None | Some(u64::MAX) => Ttl::Never,
            Some(t) => Ttl::Remaining(Duration::from_millis(t - T0)),
        };
        assert_eq!(
            cache.ttl(ns, key).expect("ttl"),
            Some(want),
            "{ns}/{key:?} expiry"
        );
    }
    for (ns, key) in after {
        if !model.contains_key(&(ns.clone(), key.clone())) && !refused(&ns, &key, b"") {
            assert_eq!(
                cache.get(&ns, &key).expect("get"),
                None,
                "line after the stop was stored"
            );
        }
    }
    cache.close().expect("close");
});

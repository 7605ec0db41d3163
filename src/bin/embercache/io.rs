//! Reading and writing entries: get, set, del, scan, export, import.

use crate::{
    Failure, Outcome, bar, close, display_bytes, open_existing, open_or_create, parse_duration,
    spinner,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use embercache::{ExportedEntry, WriteOptions};
use serde_json::{Map, Value};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Print the value of a key to stdout (raw bytes, no newline added).
///
/// Exits 1 with nothing on stdout when the key is absent or expired.
///
/// Example: embercache get ./embercache-data price m42
#[derive(clap::Args)]
pub(crate) struct GetArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
    /// Namespace, e.g. price.
    ns: String,
    /// Key (UTF-8).
    key: String,
}

/// Store a value under a key.
///
/// The value comes from the argument, or from stdin when it is `-`.
/// Without --ttl the entry never expires. Creates the directory and the
/// database if they do not exist.
///
/// Example: embercache set ./data price m42 '{"bid":0.41}' --ttl 30s
#[derive(clap::Args)]
pub(crate) struct SetArgs {
    /// Data directory (created if missing).
    dir: PathBuf,
    /// Namespace, e.g. price.
    ns: String,
    /// Key (UTF-8).
    key: String,
    /// The value, or `-` to read it from stdin (bytes, kept as is).
    value: String,
    /// Time to live: a whole number and a unit (ms, s, m, h, d), e.g. 500ms, 30s, 2m. Default: never expires.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
}

/// Delete a key. Deleting an absent key is not an error.
///
/// Example: embercache del ./data position u17:open
#[derive(clap::Args)]
pub(crate) struct DelArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
    /// Namespace.
    ns: String,
    /// Key (UTF-8).
    key: String,
}

/// List the live entries of a namespace: key, size and a value preview.
///
/// Keys are in byte order; only keys starting with PREFIX when it is given.
///
/// Example: embercache scan ./embercache-data market m1
#[derive(clap::Args)]
pub(crate) struct ScanArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
    /// Namespace.
    ns: String,
    /// Only keys starting with this prefix. Default: every key.
    prefix: Option<String>,
    /// Most rows to print. Default: 100 (0 = all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Write every live entry to stdout as JSON lines.
///
/// One object per line: {"ns", "key", "value"}; "key_b64" / "value_b64"
/// (standard base64) replace "key" / "value" when the bytes are not UTF-8;
/// "expires_at_ms" (unix milliseconds) is present when the entry expires.
/// `embercache import` reads the same format.
///
/// Example: embercache export ./data > dump.jsonl
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// Data directory (must already hold a database).
    dir: PathBuf,
}

/// Read JSON lines (the `export` format) from stdin and store them.
///
/// Entries whose "expires_at_ms" has passed are skipped; the others keep
/// their remaining lifetime. At the first malformed line the import stops,
/// reports the line number on stderr and exits 1; every line before it
/// stays imported. Creates the directory and the database if needed.
///
/// Example: embercache import ./data2 < dump.jsonl
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// Data directory (created if missing).
    dir: PathBuf,
}

pub(crate) fn get(a: GetArgs) -> Outcome {
    let cache = open_existing(&a.dir, false)?;
    let found = cache.get(&a.ns, a.key.as_bytes());
    close(cache)?;
    match found? {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            out.flush()?;
            Ok(())
        }
        None => {
            if std::io::stderr().is_terminal() {
                eprintln!("(not found: {} / {})", a.ns, a.key);
            }
            Err(Failure::silent())
        }
    }
}

pub(crate) fn set(a: SetArgs) -> Outcome {
    let value = if a.value == "-" {
        let mut v = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut v)
            .map_err(|e| Failure::new(format!("cannot read the value from stdin: {e}")))?;
        v
    } else {
        a.value.into_bytes()
    };
    let cache = open_or_create(&a.dir)?;
    let r = match a.ttl {
        Some(t) => cache.set_with(&a.ns, a.key.as_bytes(), value, WriteOptions::ttl(t)),
        None => cache.set(&a.ns, a.key.as_bytes(), value),
    };
    close(cache)?;
    Ok(r?)
}

pub(crate) fn del(a: DelArgs) -> Outcome {
    let cache = open_existing(&a.dir, false)?;
    let r = cache.delete(&a.ns, a.key.as_bytes());
    close(cache)?;
    Ok(r?)
}

pub(crate) fn scan(a: ScanArgs) -> Outcome {
    let cache = open_existing(&a.dir, false)?;
    let prefix = a.prefix.unwrap_or_default();
    let rows = cache.scan(&a.ns, prefix.as_bytes());
    close(cache)?;
    let rows = rows?;
    let shown = if a.limit == 0 {
        rows.len()
    } else {
        a.limit.min(rows.len())
    };
    let keys: Vec<String> = rows[..shown]
        .iter()
        .map(|(k, _)| display_bytes(k, 48))
        .collect();
    let kw = keys
        .iter()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<kw$}  {:>9}  VALUE", "KEY", "SIZE")?;
    for (k, (_, v)) in keys.iter().zip(&rows[..shown]) {
        writeln!(out, "{k:<kw$}  {:>9}  {}", v.len(), display_bytes(v, 72))?;
    }
    if shown < rows.len() {
        writeln!(
            out,
            "… {} more (raise --limit, or 0 for all)",
            rows.len() - shown
        )?;
    }
    writeln!(out, "{} entries in {}", rows.len(), a.ns)?;
    Ok(())
}

/// The JSON object of one exported entry.
fn to_json(e: &ExportedEntry) -> Value {
    let mut m = Map::new();
    m.insert("ns".into(), Value::String(e.namespace.clone()));
    let mut bytes_field = |name: &str, b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => m.insert(name.into(), Value::String(s.to_string())),
        Err(_) => m.insert(format!("{name}_b64"), Value::String(B64.encode(b))),
    };
    bytes_field("key", &e.key);
    bytes_field("value", &e.value);
    if let Some(t) = e.expires_at_ms {
        m.insert("expires_at_ms".into(), Value::from(t));
    }
    Value::Object(m)
}

pub(crate) fn export(a: ExportArgs) -> Outcome {
    let cache = open_existing(&a.dir, true)?;
    let pb = bar(cache.stats().disk_records, "exporting");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let r = cache.export(&mut |e| {
        pb.inc(1);
        serde_json::to_writer(&mut out, &to_json(&e))?;
        out.write_all(b"\n")
    });
    let flushed = out.flush();
    pb.finish_and_clear();
    close(cache)?;
    match r {
        // `embercache export | head` closing the pipe early is not a failure.
        Err(embercache::AdminError::Sink(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(n) => {
            flushed?;
            if crate::interactive() {
                eprintln!("exported {n} entries");
            }
            Ok(())
        }
    }
}

/// One parsed import line.
struct Line {
    ns: String,
    key: Vec<u8>,
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

/// Reads `name` (a string) or `name_b64` (base64 of the bytes).
fn bytes_field(m: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let b64 = format!("{name}_b64");
    match (m.get(name), m.get(&b64)) {
        (Some(_), Some(_)) => Err(format!("has both \"{name}\" and \"{b64}\"; keep one")),
        (Some(Value::String(s)), None) => Ok(s.clone().into_bytes()),
        (Some(_), None) => Err(format!("\"{name}\" must be a string")),
        (None, Some(Value::String(s))) => B64
            .decode(s)
            .map_err(|e| format!("\"{b64}\" is not valid base64: {e}")),
        (None, Some(_)) => Err(format!("\"{b64}\" must be a string")),
        (None, None) => Err(format!("missing \"{name}\" (or \"{b64}\")")),
    }
}

fn parse_line(raw: &[u8]) -> Result<Line, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_string())?;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(m) = v else {
        return Err("not a JSON object".into());
    };
    let ns = match m.get("ns") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"ns\" must be a string".into()),
        None => return Err("missing \"ns\"".into()),
    };
    let expires_at_ms = match m.get("expires_at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("\"expires_at_ms\" must be a non-negative integer (unix milliseconds)")?,
        ),
    };
    Ok(Line {
        ns,
        key: bytes_field(&m, "key")?,
        value: bytes_field(&m, "value")?,
        expires_at_ms,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn import(a: ImportArgs) -> Outcome {
    let cache = open_or_create(&a.dir)?;
    let pb = spinner("importing");
    let mut input = std::io::stdin().lock();
    let mut raw = Vec::new();
    let (mut stored, mut expired) = (0u64, 0u64);
    let mut number = 0u64;
    let failed: Option<String> = loop {
        raw.clear();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) => break Some(format!("reading stdin after line {number}: {e}")),
        }
        number += 1;
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l = match parse_line(line) {
            Ok(l) => l,
            Err(e) => break Some(format!("line {number}: {e}")),
        };
        let r = match l.expires_at_ms {
            None => cache.set(&l.ns, &l.key, l.value),
            Some(t) => {
                let now = now_ms();
                if t <= now {
                    expired += 1;
                    continue;
                }
                let ttl = Duration::from_millis(t - now);
                cache.set_with(&l.ns, &l.key, l.value, WriteOptions::ttl(ttl))
            }
        };
        if let Err(e) = r {
            break Some(format!("line {number}: {e}"));
        }
        stored += 1;
        pb.inc(1);
    };
    pb.finish_and_clear();
    // close() flushes: every line before a bad one is durable when we exit.
    close(cache)?;
    let summary = format!("imported {stored} entries, skipped {expired} already expired");
    match failed {
        Some(msg) => Err(Failure::new(format!(
            "{msg}; {summary} (the lines before it are kept); fix that line and import the rest"
        ))),
        None => {
            if crate::interactive() {
                eprintln!("{summary}");
            }
            Ok(())
        }
    }
}

//! The JSON-lines format of `embercache export` and `embercache import`,
//! as a library function so the CLI, tools and the `import_lines` fuzzer
//! share one parser.
//!
//! One JSON object per line:
//!
//! ```text
//! {"ns":"price","key":"m1","value":"0.42","expires_at_ms":1750000180000}
//! {"ns":"blob","key":"k","value_b64":"AP7/"}
//! ```
//!
//! * `ns`: the namespace, a string.
//! * `key` / `value`: the bytes as a UTF-8 string; `key_b64` / `value_b64`
//!   (standard base64, padded) replace them when the bytes are not UTF-8.
//!   Exactly one of each pair.
//! * `expires_at_ms`: absolute expiry in unix milliseconds (engine time),
//!   absent or `null` when the entry never expires.
//!
//! Other fields are ignored. Lines end with `\n` (an optional `\r` before
//! it is dropped); blank lines are skipped. The export writes entries in
//! (namespace, key) order, so a dump has no duplicate keys; an import
//! applies lines in order, so of duplicates the last one wins.

use crate::admin::ExportedEntry;
use crate::cache::{Cache, WriteOptions};
use crate::error::WriteError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use std::io::{BufRead, Write};
use std::time::Duration;

/// What an import did (so far, when it stopped at an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Entries stored.
    pub stored: u64,
    /// Entries skipped because their `expires_at_ms` had already passed.
    pub expired: u64,
}

/// Why [`import_json_lines`] stopped. Every line before [`ImportError::line`]
/// was applied (and flushed, unless the flush itself failed); none after.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A line is not a valid entry (not UTF-8, not JSON, a missing or
    /// mistyped field, bad base64).
    #[error("line {line}: {reason}; fix that line and import the rest")]
    Malformed {
        line: u64,
        reason: String,
        report: ImportReport,
    },
    /// Reading the input failed after `line` lines.
    #[error("reading the input after line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
        report: ImportReport,
    },
    /// The cache refused the entry of `line` (key or value too large, an
    /// invalid namespace name) or could not store it.
    #[error("line {line}: {source}")]
    Write {
        line: u64,
        #[source]
        source: WriteError,
        report: ImportReport,
    },
}

impl ImportError {
    /// The line the import stopped at (1-based; for `Read`, the last line
    /// read completely).
    pub fn line(&self) -> u64 {
        match self {
            ImportError::Malformed { line, .. }
            | ImportError::Read { line, .. }
            | ImportError::Write { line, .. } => *line,
        }
    }

    /// What was imported before the import stopped.
    pub fn report(&self) -> &ImportReport {
        match self {
            ImportError::Malformed { report, .. }
            | ImportError::Read { report, .. }
            | ImportError::Write { report, .. } => report,
        }
    }
}

/// Writes `entry` as one line of the format in the module docs, `\n`
/// included. `embercache export` writes every entry this way.
pub fn write_json_line(entry: &ExportedEntry, out: &mut dyn Write) -> std::io::Result<()> {
    let mut m = Map::new();
    m.insert("ns".into(), Value::String(entry.namespace.clone()));
    let mut bytes_field = |name: &str, b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => m.insert(name.into(), Value::String(s.to_string())),
        Err(_) => m.insert(format!("{name}_b64"), Value::String(B64.encode(b))),
    };
    bytes_field("key", &entry.key);
    bytes_field("value", &entry.value);
    if let Some(t) = entry.expires_at_ms {
        m.insert("expires_at_ms".into(), Value::from(t));
    }
    serde_json::to_writer(&mut *out, &Value::Object(m))?;
    out.write_all(b"\n")
}

/// Reads JSON lines (the format in the module docs) and stores each entry.
/// Entries whose `expires_at_ms` is not after the cache's current time are
/// skipped; the others keep their remaining lifetime. Stops at the first
/// line that is malformed or that the cache refuses; every line before it
/// stays imported. Flushes before returning, so what the report counts is
/// durable.
///
/// ```
/// use embercache::{Cache, import_json_lines};
/// let cache = Cache::builder().in_memory().open()?;
/// let dump = b"{\"ns\":\"a\",\"key\":\"k\",\"value\":\"v\"}\n{\"ns\":\"a\"}\n";
/// let err = import_json_lines(&cache, &dump[..]).unwrap_err();
/// assert_eq!(err.line(), 2);
/// assert_eq!(cache.get("a", b"k")?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), embercache::Error>(())
/// ```
pub fn import_json_lines(cache: &Cache, input: impl BufRead) -> Result<ImportReport, ImportError> {
    import_json_lines_with(cache, input, &mut |_| {})
}

/// [`import_json_lines`] calling `progress` after every stored entry.
pub fn import_json_lines_with(
    cache: &Cache,
    mut input: impl BufRead,
    progress: &mut dyn FnMut(&ImportReport),
) -> Result<ImportReport, ImportError> {
    let mut rep = ImportReport::default();
    let mut raw = Vec::new();
    let failed = loop {
        raw.clear();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(source) => {
                break Some(ImportError::Read {
                    line: rep.lines,
                    source,
                    report: rep,
                });
            }
        }
        rep.lines += 1;
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let e = match parse_line(line) {
            Ok(e) => e,
            Err(reason) => {
                break Some(ImportError::Malformed {
                    line: rep.lines,
                    reason,
                    report: rep,
                });
            }
        };
        let stored = match e.expires_at_ms {
            None => cache.set(&e.namespace, &e.key, e.value),
            Some(t) => {
                // Engine time, as the export wrote it: a TTL measured from
                // here is the remaining lifetime the dump recorded.
                let now = cache.sh().time.now_ms();
                if t <= now {
                    rep.expired += 1;
                    continue;
                }
                let ttl = Duration::from_millis(t - now);
                cache.set_with(&e.namespace, &e.key, e.value, WriteOptions::ttl(ttl))
            }
        };
        if let Err(source) = stored {
            break Some(ImportError::Write {
                line: rep.lines,
                source,
                report: rep,
            });
        }
        rep.stored += 1;
        progress(&rep);
    };
    // Make the lines before a bad one durable too: the caller is told they
    // are kept.
    let flushed = cache.flush();
    match (failed, flushed) {
        (Some(e), _) => Err(e),
        (None, Err(source)) => Err(ImportError::Write {
            line: rep.lines,
            source,
            report: rep,
        }),
        (None, Ok(())) => Ok(rep),
    }
}

/// One parsed line.
struct Line {
    namespace: String,
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
    let namespace = match m.get("ns") {
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
        namespace,
        key: bytes_field(&m, "key")?,
        value: bytes_field(&m, "value")?,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_import_back() {
        let a = Cache::builder().in_memory().open().unwrap();
        a.set("ns", b"k", b"v".to_vec()).unwrap();
        a.set("ns", b"\xff", b"\x00\xfe".to_vec()).unwrap();
        a.set_with_ttl("t", b"x", b"y".to_vec(), Duration::from_secs(60))
            .unwrap();
        let mut dump = Vec::new();
        a.export(&mut |e| write_json_line(&e, &mut dump)).unwrap();
        let b = Cache::builder().in_memory().open().unwrap();
        let rep = import_json_lines(&b, &dump[..]).unwrap();
        assert_eq!((rep.lines, rep.stored, rep.expired), (3, 3, 0));
        assert_eq!(
            b.get("ns", b"\xff").unwrap().as_deref(),
            Some(&b"\x00\xfe"[..])
        );
        assert!(matches!(
            b.ttl("t", b"x").unwrap(),
            Some(crate::Ttl::Remaining(_))
        ));
    }

    #[test]
    fn stops_at_the_first_bad_line_with_its_number() {
        let c = Cache::builder().in_memory().open().unwrap();
        let input = b"{\"ns\":\"a\",\"key\":\"1\",\"value\":\"one\"}\r\n\n  \n[1]\n{\"ns\":\"a\",\"key\":\"2\",\"value\":\"two\"}\n";
        let e = import_json_lines(&c, &input[..]).unwrap_err();
        assert!(matches!(e, ImportError::Malformed { line: 4, .. }), "{e}");
        assert_eq!(e.report().stored, 1);
        assert_eq!(c.get("a", b"1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(c.get("a", b"2").unwrap(), None);
        let e =
            import_json_lines(&c, &b"{\"ns\":\"\",\"key\":\"k\",\"value\":\"v\"}"[..]).unwrap_err();
        assert!(matches!(e, ImportError::Write { line: 1, .. }), "{e}");
    }
}

//! Reading and writing entries: get, set, del, scan, export, import.

use crate::{
    Failure, Outcome, bar, close, display_bytes, open_existing, open_or_create, parse_duration,
    spinner,
};
use embercache::WriteOptions;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

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

pub(crate) fn export(a: ExportArgs) -> Outcome {
    let cache = open_existing(&a.dir, true)?;
    let pb = bar(cache.stats().disk_records, "exporting");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let r = cache.export(&mut |e| {
        pb.inc(1);
        embercache::write_json_line(&e, &mut out)
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

pub(crate) fn import(a: ImportArgs) -> Outcome {
    let cache = open_or_create(&a.dir)?;
    let pb = spinner("importing");
    let r = embercache::import_json_lines_with(&cache, std::io::stdin().lock(), &mut |_| pb.inc(1));
    pb.finish_and_clear();
    // close() flushes: every line before a bad one is durable when we exit.
    close(cache)?;
    let rep = match &r {
        Ok(rep) => rep,
        Err(e) => e.report(),
    };
    let summary = format!(
        "imported {} entries, skipped {} already expired",
        rep.stored, rep.expired
    );
    match r {
        Err(e) => Err(Failure::new(format!(
            "{e}; {summary} (the lines before it are kept)"
        ))),
        Ok(_) => {
            if crate::interactive() {
                eprintln!("{summary}");
            }
            Ok(())
        }
    }
}

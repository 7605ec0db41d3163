//! The mirror outbox: writes that must still reach the Redis mirror.
//!
//! When the mirror is enabled, the writer adds an outbox row in the same
//! redb transaction as each local set, delete and epoch bump, so a crash
//! can never lose a mirror write whose local write committed. The mirror
//! reads rows in commit order (`peek`) and removes them once Redis
//! acknowledged them (`ack`).
//!
//! The outbox keeps only the latest write per key: a newer write of a key
//! replaces its row (counted as coalesced). Versions make every mirror
//! write idempotent and monotonic, so sending only the latest is enough,
//! and the outbox can never outgrow the set of keys written during an
//! outage.
//!
//! ```text
//! outbox       (namespace, key) → row: kind u8 | seq u64 LE | version u64 LE | payload
//! outbox_order seq u64          → (namespace, key)        (commit order)
//! ```
//! Epoch bumps use the namespace `"\0epoch"` with the namespace name as key
//! and the new epoch as version. Put payloads are the stored record (the
//! mirror validates it on the way back); deletes and epochs have none.

use crate::error::storage;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use std::sync::Arc;

pub(crate) const OUTBOX: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("outbox");
pub(crate) const OUTBOX_ORDER: TableDefinition<u64, (&str, &[u8])> =
    TableDefinition::new("outbox_order");

/// The pseudo-namespace of epoch-bump rows.
pub const EPOCH_NAMESPACE: &str = "\0epoch";

const ROW_HEADER: usize = 17;

/// What an outbox row asks the mirror to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxKind {
    /// Store `record` (the checksummed record, as on disk).
    Put,
    /// Delete the key.
    Delete,
    /// The namespace named by `key` moved to epoch `version`.
    Epoch,
}

/// One pending mirror write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxItem {
    /// Position in commit order (restarts when the outbox empties).
    pub seq: u64,
    pub namespace: String,
    pub key: Vec<u8>,
    pub kind: OutboxKind,
    /// The write's per-key version (the epoch for `Epoch`).
    pub version: u64,
    /// The record for `Put`, empty otherwise.
    pub record: Vec<u8>,
}

fn encode_row(kind: OutboxKind, seq: u64, version: u64, payload: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(ROW_HEADER + payload.len());
    row.push(kind as u8);
    row.extend_from_slice(&seq.to_le_bytes());
    row.extend_from_slice(&version.to_le_bytes());
    row.extend_from_slice(payload);
    row
}

fn decode_row(row: &[u8]) -> Option<(OutboxKind, u64, u64, &[u8])> {
    if row.len() < ROW_HEADER {
        return None;
    }
    let kind = match row[0] {
        0 => OutboxKind::Put,
        1 => OutboxKind::Delete,
        2 => OutboxKind::Epoch,
        _ => return None,
    };
    let seq = u64::from_le_bytes(row[1..9].try_into().ok()?);
    let version = u64::from_le_bytes(row[9..17].try_into().ok()?);
    Some((kind, seq, version, &row[ROW_HEADER..]))
}

/// The outbox tables of one write transaction.
pub(crate) struct Outbox<'t> {
    rows: Table<'t, (&'static str, &'static [u8]), &'static [u8]>,
    order: Table<'t, u64, (&'static str, &'static [u8])>,
    next_seq: u64,
    /// What this transaction changed.
    pub delta: OutboxDelta,
}

/// Row and byte changes of one transaction, and rows coalesced.
#[derive(Debug, Default)]
pub(crate) struct OutboxDelta {
    pub rows: i64,
    pub bytes: i64,
    pub coalesced: u64,
}

impl OutboxDelta {
    /// Adds `other`'s changes (transactions that share one commit).
    pub(crate) fn merge(&mut self, other: &OutboxDelta) {
        self.rows += other.rows;
        self.bytes += other.bytes;
        self.coalesced += other.coalesced;
    }
}

impl<'t> Outbox<'t> {
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, Arc<redb::Error>> {
        let order = txn.open_table(OUTBOX_ORDER).map_err(storage)?;
        // Sequence numbers continue after the last row still queued.
        let next_seq = order
            .last()
            .map_err(storage)?
            .map_or(1, |(k, _)| k.value() + 1);
        Ok(Outbox {
            rows: txn.open_table(OUTBOX).map_err(storage)?,
            order,
            next_seq,
            delta: OutboxDelta::default(),
        })
    }

    /// Makes `(kind, version, payload)` the pending mirror write of a key,
    /// replacing (coalescing) an older one.
    pub(crate) fn push(
        &mut self,
        ns: &str,
        key: &[u8],
        kind: OutboxKind,
        version: u64,
        payload: &[u8],
    ) -> Result<(), Arc<redb::Error>> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let d = &mut self.delta;
        let row = encode_row(kind, seq, version, payload);
        let old = self
            .rows
            .insert((ns, key), row.as_slice())
            .map_err(storage)?
            .map(|g| (decode_row(g.value()).map(|(_, s, _, _)| s), g.value().len()));
        if let Some((old_seq, old_len)) = old {
            if let Some(s) = old_seq {
                self.order.remove(s).map_err(storage)?;
            }
            d.rows -= 1;
            d.bytes -= (key.len() + old_len) as i64;
            d.coalesced += 1;
        }
        self.order.insert(seq, (ns, key)).map_err(storage)?;
        d.rows += 1;
        d.bytes += (key.len() + row.len()) as i64;
        Ok(())
    }

    /// Removes a key's row if it is still the write with `version` (a newer
    /// write of the key may have replaced it since it was read; then the
    /// newer one stays), and says what kind of row it removed. Versions,
    /// unlike sequence numbers, are never reused.
    pub(crate) fn ack(
        &mut self,
        ns: &str,
        key: &[u8],
        version: u64,
    ) -> Result<Option<OutboxKind>, Arc<redb::Error>> {
        let d = &mut self.delta;
        let current = self
            .rows
            .get((ns, key))
            .map_err(storage)?
            .and_then(|g| decode_row(g.value()).map(|(k, s, v, _)| (k, s, v, g.value().len())));
        if let Some((kind, seq, v, len)) = current
            && v == version
        {
            self.rows.remove((ns, key)).map_err(storage)?;
            self.order.remove(seq).map_err(storage)?;
            d.rows -= 1;
            d.bytes -= (key.len() + len) as i64;
            return Ok(Some(kind));
        }
        Ok(None)
    }
}

/// Up to `limit` pending mirror writes, oldest first.
pub(crate) fn peek(db: &redb::Database, limit: usize) -> Result<Vec<OutboxItem>, Arc<redb::Error>> {
    contained(db, "reading the outbox", || peek_unguarded(db, limit))
}

/// Runs a read that redb may panic in on a damaged page: the panic becomes
/// a typed `Corrupted` error.
fn contained<T>(
    db: &redb::Database,
    what: &str,
    f: impl FnOnce() -> Result<T, Arc<redb::Error>>,
) -> Result<T, Arc<redb::Error>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        if super::tables::reads_through(db) {
            std::panic::resume_unwind(p); // not the file's panic
        }
        Err(Arc::new(redb::Error::Corrupted(format!(
            "the database file is damaged (redb panicked {what}); \
             reopen the cache to move the file aside and start empty"
        ))))
    })
}

fn peek_unguarded(db: &redb::Database, limit: usize) -> Result<Vec<OutboxItem>, Arc<redb::Error>> {
    let r = db.begin_read().map_err(storage)?;
    let order = r.open_table(OUTBOX_ORDER).map_err(storage)?;
    let rows = r.open_table(OUTBOX).map_err(storage)?;
    let mut out = Vec::new();
    for item in order.iter().map_err(storage)?.take(limit) {
        let (seq, k) = item.map_err(storage)?;
        let (ns, key) = k.value();
        let Some(row) = rows.get((ns, key)).map_err(storage)? else {
            continue;
        };
        let Some((kind, _, version, payload)) = decode_row(row.value()) else {
            continue;
        };
        out.push(OutboxItem {
            seq: seq.value(),
            namespace: ns.to_string(),
            key: key.to_vec(),
            kind,
            version,
            record: payload.to_vec(),
        });
    }
    Ok(out)
}

/// Rows and bytes in the outbox (counted at open).
pub(crate) fn measure(db: &redb::Database) -> Result<(u64, u64), Arc<redb::Error>> {
    contained(db, "measuring the outbox", || measure_unguarded(db))
}

fn measure_unguarded(db: &redb::Database) -> Result<(u64, u64), Arc<redb::Error>> {
    let r = db.begin_read().map_err(storage)?;
    let rows = r.open_table(OUTBOX).map_err(storage)?;
    let mut bytes = 0u64;
    for item in rows.iter().map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        bytes += (k.value().1.len() + v.value().len()) as u64;
    }
    Ok((rows.len().map_err(storage)?, bytes))
}

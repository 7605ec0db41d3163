//! redb table definitions. docs/ARCHITECTURE.md describes each.

use redb::TableDefinition;

/// (namespace, key) → record (see `record.rs`).
pub(crate) const ENTRIES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("entries");

/// (expires_at, version, namespace, key) → (), for entries with a TTL only
/// (format 3; entries without one, `expires_at = u64::MAX`, are never
/// swept, and indexing them cost every write a second B-tree insert).
/// Ordered by expiry, then by write order. The sweeper walks it from the
/// start up to "now" minus the longest stale-retention window of any
/// namespace; the disk bound walks it from the start too, so it drops what
/// expires soonest, then entries without a TTL, found by reading
/// `entries` (writer.rs `drop_unindexed`). Namespace and key are part of the key: versions are unique
/// per key, not per database (a value filled from the Redis mirror keeps
/// the version another instance gave it).
pub(crate) const EXPIRY: TableDefinition<(u64, u64, &str, &[u8]), ()> =
    TableDefinition::new("expiry_v2");

/// Format 1's index, `(expires_at, version) → (namespace, key)`: rebuilt as
/// [`EXPIRY`] when a format-1 database is opened.
pub(crate) const EXPIRY_V1: TableDefinition<(u64, u64), (&str, &[u8])> =
    TableDefinition::new("expiry");

/// Named values: see the `meta` constants below.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Loader state (learned TTLs, breaker state, access counters): name → bytes,
/// written through the writer like everything else.
pub(crate) const LOADER_META: TableDefinition<&str, &[u8]> = TableDefinition::new("loader_meta");

// The mirror outbox tables ("outbox", "outbox_order") are defined in
// src/store/outbox.rs.

/// u32 LE: the database format version.
pub(crate) const META_FORMAT: &str = "format_version";
/// u64 LE: every version handed out so far is below this.
pub(crate) const META_VERSION_HW: &str = "version_high_water";
/// u64 LE: engine time at the last commit (restart floor, see clock.rs).
pub(crate) const META_TIME: &str = "engine_time";
/// u64 LE: the write-ahead log generation whose records are not yet all
/// in a durable commit (see `wal.rs`). A new database starts at a random one.
pub(crate) const META_WAL_GEN: &str = "wal_generation";
/// u64 LE: number of records in ENTRIES.
pub(crate) const META_RECORDS: &str = "records";
/// u64 LE: key + record bytes in ENTRIES (the warm-tier byte bound).
pub(crate) const META_BYTES: &str = "bytes";
/// postcard `Vec<(String, Vec<u8>)>`: hot keys, hottest first; keys equally
/// hot by namespace, then in key order (the warm-up walks `ENTRIES`).
pub(crate) const META_HOT_SNAPSHOT: &str = "hot_snapshot";
/// Prefix of `epoch/<namespace>` → u64 LE.
pub(crate) const META_EPOCH_PREFIX: &str = "epoch/";
/// Prefix of `schema/<namespace>` → the namespace's schema version (UTF-8).
pub(crate) const META_SCHEMA_PREFIX: &str = "schema/";
/// Prefix of `dict/<id as 10 digits>` → postcard `(namespace, dictionary bytes)`.
pub(crate) const META_DICT_PREFIX: &str = "dict/";
/// Prefix of `dict_current/<namespace>` → u32 LE: the dictionary new writes use.
pub(crate) const META_DICT_CURRENT_PREFIX: &str = "dict_current/";

/// The meta key of dictionary `id`.
pub(crate) fn dict_key(id: u32) -> String {
    format!("{META_DICT_PREFIX}{id:010}")
}

/// The database format this build writes. 4: the write-ahead log
/// (`wal_generation` in meta, `embercache.wal` beside the file); a build
/// that knows only format 3 would ignore the log and lose what it holds,
/// so it must refuse the file.
pub(crate) const FORMAT: u32 = 4;

pub(crate) fn u64_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

pub(crate) fn u32_from(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Whether every table of the database reads through to its last entry
/// without redb panicking or reporting corruption. Asked after a panic was
/// caught around redb: when the tables read through, the panic was not the
/// file's (a bug, an injected fault, a caller's closure) and is not blamed
/// on it. O(database), only on that path.
pub(crate) fn reads_through(db: &redb::Database) -> bool {
    use redb::{ReadableDatabase, ReadableTable};
    fn walk<K: redb::Key + 'static, V: redb::Value + 'static>(
        r: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<(), redb::Error> {
        let t = match r.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for item in t.iter()? {
            item?;
        }
        Ok(())
    }
    let read = || -> Result<(), redb::Error> {
        let Ok(r) = db.begin_read() else {
            return Ok(()); // not a question of damage
        };
        walk(&r, ENTRIES)?;
        walk(&r, EXPIRY)?;
        walk(&r, META)?;
        walk(&r, LOADER_META)?;
        walk(&r, super::outbox::OUTBOX)?;
        walk(&r, super::outbox::OUTBOX_ORDER)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(Err(redb::Error::Corrupted(_))) | Err(_) => false,
        Ok(_) => true,
    }
}

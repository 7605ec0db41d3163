//! Typed errors, one enum per operation family, all convertible into [`Error`].
//!
//! Messages say what happened and, where there is one, what to do about it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a stored record could not be decoded. Every record read from disk is
/// checked; none of these ever panics or allocates more than the maximum
/// value size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than a record header.
    #[error("record is {len} bytes, shorter than the {header}-byte header")]
    Truncated { len: usize, header: usize },
    /// The format version byte is not one this build can read.
    #[error("record format version {0} is not supported by this build")]
    UnknownFormat(u8),
    /// The compression tag is not one this build knows.
    #[error("unknown compression tag {0}")]
    UnknownCompression(u8),
    /// The checksum over header and payload does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The declared value length is above the configured maximum.
    #[error("declared value length {len} exceeds the maximum value size {max}")]
    TooLarge { len: usize, max: usize },
    /// zstd refused the payload (corrupt frame, or it would expand beyond the
    /// declared length: a decompression bomb).
    #[error("zstd payload rejected: {0}")]
    Decompress(String),
    /// The payload decompressed to a length other than the header declares.
    #[error("payload decoded to {actual} bytes, header declares {declared}")]
    LengthMismatch { declared: usize, actual: usize },
    /// The record names a compression dictionary that is not stored.
    #[error("record needs zstd dictionary {0}, which is not in the database")]
    MissingDictionary(u32),
}

/// Errors from [`crate::CacheBuilder::open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A builder setting is out of range.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidConfig {
        setting: &'static str,
        reason: String,
    },
    /// Another process (or another `Cache` in this one) has the directory open.
    #[error(
        "data directory {dir} is already open by another process or Cache; close it first or use another directory"
    )]
    AlreadyOpen { dir: PathBuf },
    /// The data directory or database file could not be created or read.
    #[error("cannot use data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database file is damaged and `strict` mode forbids moving it aside.
    #[error(
        "database file {file} is damaged ({reason}); without `strict` it would be moved aside and the cache started empty"
    )]
    Corrupt { file: PathBuf, reason: String },
    /// The database was written by a newer embercache.
    #[error(
        "database format version {found} is newer than this build supports ({supported}); upgrade embercache"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    /// An error from redb while setting up tables.
    #[error("storage error while opening: {0}")]
    Storage(#[source] Arc<redb::Error>),
}

/// Errors from writes: set, delete, flush, namespace invalidation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Key longer than [`crate::Limits::max_key_len`].
    #[error("key is {len} bytes; the maximum is {max} (Limits::max_key_len)")]
    KeyTooLarge { len: usize, max: usize },
    /// Value longer than [`crate::Limits::max_value_len`].
    #[error("value is {len} bytes; the maximum is {max} (Limits::max_value_len)")]
    ValueTooLarge { len: usize, max: usize },
    /// A namespace name that is empty, too long, or not valid.
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidNamespace { name: String, reason: &'static str },
    /// A TTL that cannot be honoured (zero).
    #[error("invalid TTL: {0}")]
    InvalidTtl(&'static str),
    /// The write queue stayed full for the whole backpressure wait.
    #[error(
        "write queue stayed full for {waited:?}; the disk is not keeping up (raise Limits::queue_wait or slow down)"
    )]
    QueueFull { waited: Duration },
    /// The cache was closed.
    #[error("the cache is closed")]
    Closed,
    /// The commit that should have made this write durable failed. The cache
    /// keeps serving reads and retries; the write is not yet durable.
    #[error("commit failed, write not yet durable: {0}")]
    Storage(#[source] Arc<redb::Error>),
}

/// Errors from reads.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stored record failed its checks. It is not returned; `embercache
    /// verify` lists such records.
    #[error("corrupt record in namespace {namespace:?}: {source}")]
    Corrupt {
        namespace: String,
        #[source]
        source: RecordError,
    },
    /// redb failed to read.
    #[error("storage error on read: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// A namespace name that is empty or too long.
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidNamespace { name: String, reason: &'static str },
    /// The cache was closed.
    #[error("the cache is closed")]
    Closed,
}

/// Any embercache error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The typed layer could not (de)serialize a value with postcard.
    #[error("value (de)serialization failed: {0}")]
    Serde(#[from] postcard::Error),
    /// A maintenance operation (dictionary training, compaction) failed.
    #[error("{0}")]
    Maintenance(String),
}

pub(crate) fn storage<E: Into<redb::Error>>(e: E) -> Arc<redb::Error> {
    Arc::new(e.into())
}

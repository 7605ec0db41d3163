//! The warm tier: redb tables, the record codec, pending writes, the
//! background writer, and opening/recovery.

pub(crate) mod open;
pub(crate) mod outbox;
pub(crate) mod pending;
pub(crate) mod readers;
pub mod record;
pub(crate) mod reply;
pub(crate) mod tables;
pub(crate) mod train;
pub(crate) mod wal;
pub(crate) mod walk;
pub(crate) mod writer;

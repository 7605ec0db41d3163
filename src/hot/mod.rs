//! The hot tier: an in-memory map bounded in bytes.
//!
//! [`s3fifo`] is the single-threaded eviction algorithm; [`sharded`] spreads
//! keys over power-of-two shards, each behind a `parking_lot::RwLock`, with a
//! randomly seeded hasher. Read hits take the shared lock only.

pub(crate) mod s3fifo;
pub(crate) mod sharded;

pub use s3fifo::{ENTRY_OVERHEAD, charge_of};
pub(crate) use s3fifo::{Entry, Evicted, Insert};
pub(crate) use sharded::HotTier;

//! Writes accepted but not yet committed, visible to reads.
//!
//! A write is inserted here, into the hot tier and into the writer's queue
//! under one shard lock, with its version assigned under that same lock:
//! per key, queue order is version order, and a read that misses the hot
//! tier still sees a write the writer has not committed yet
//! (read-your-writes). The writer removes an entry after the commit that
//! contains it, unless a newer write of the key replaced it meanwhile.

use bytes::Bytes;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

#[derive(Debug, Clone)]
pub(crate) enum PendingKind {
    Set {
        value: Bytes,
        expires_at: u64,
        epoch: u64,
    },
    Delete,
}

#[derive(Debug)]
pub(crate) struct PendingOp {
    pub hash: u64,
    pub ns: u32,
    pub key: Box<[u8]>,
    pub version: u64,
    pub kind: PendingKind,
}

pub(crate) struct PendingShard {
    table: HashTable<PendingOp>,
}

impl PendingShard {
    pub(crate) fn get(&self, hash: u64, ns: u32, key: &[u8]) -> Option<&PendingOp> {
        self.table.find(hash, |p| p.ns == ns && &*p.key == key)
    }

    /// Records `op` as the latest write of its key.
    pub(crate) fn put(&mut self, op: PendingOp) {
        match self
            .table
            .entry(op.hash, |p| p.ns == op.ns && p.key == op.key, |p| p.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = op,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(op);
            }
        }
    }

    /// Drops the entry of a key if it is still the write with `version`.
    pub(crate) fn remove_if(&mut self, hash: u64, ns: u32, key: &[u8], version: u64) {
        if let Ok(o) = self.table.find_entry(hash, |p| {
            p.ns == ns && &*p.key == key && p.version == version
        }) {
            o.remove();
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PendingOp> {
        self.table.iter()
    }
}

pub(crate) struct Pending {
    shards: Box<[Mutex<PendingShard>]>,
    mask: u64,
}

impl Pending {
    pub(crate) fn new(shards: usize) -> Self {
        Pending {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(PendingShard {
                        table: HashTable::new(),
                    })
                })
                .collect(),
            mask: shards as u64 - 1,
        }
    }

    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, PendingShard> {
        self.shards[((hash >> 32) & self.mask) as usize].lock()
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&PendingOp)) {
        for s in self.shards.iter() {
            for op in s.lock().iter() {
                f(op);
            }
        }
    }
}

//! Warm-tier readers kept from one get to the next.
//!
//! A hot-tier miss reads `entries` in redb. Beginning a read transaction
//! registers it in redb's transaction tracker (a mutex all readers share),
//! and opening the table walks the table tree, whose top pages every reader
//! shares too; each step bumps reference counts on those shared lines. With
//! two reader threads on two cores most of a warm get went into moving
//! those lines between the cores (`probe warm`: two threads ran 1.15× one
//! thread). A reader opened when `commit_seq` was `seq` has every commit up
//! to `seq`, so it can answer later gets that read the same `seq` after
//! they looked in pending (`Shared::entries`: the writer bumps `commit_seq`
//! before it drops a committed write from pending). Each thread keeps one,
//! in the slot of its stripe ([`crate::stats::my_stripe`]), and opens a new
//! one only after a commit.
//!
//! A kept reader pins its snapshot: redb cannot reuse pages freed by later
//! commits while it lives, and the hot-set snapshot commits without
//! bumping `commit_seq`. So the writer's maintenance pass (every
//! `maintenance_interval`) drops every reader not in use, and close and the
//! writer's reopen drop them all after taking the database out of
//! `Shared::db`: a reader of a closed database fails its reads (redb closes
//! the file under it) or answers from pages it still holds.

use crate::stats::{STRIPES, my_stripe};
use parking_lot::Mutex;
use redb::ReadOnlyTable;
use std::sync::Arc;

/// `entries`, as a read transaction sees it.
pub(crate) type EntriesTable = ReadOnlyTable<(&'static str, &'static [u8]), &'static [u8]>;

/// One stripe's reader and the commit it was opened at, alone on its lines
/// (two, for the adjacent-line prefetcher).
#[derive(Default)]
#[repr(align(128))]
struct Slot(Mutex<Option<(u64, Arc<EntriesTable>)>>);

/// The kept readers, one slot per stripe.
pub(crate) struct Readers {
    slots: Box<[Slot]>,
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            slots: (0..STRIPES).map(|_| Slot::default()).collect(),
        }
    }
}

impl Readers {
    fn mine(&self) -> &Mutex<Option<(u64, Arc<EntriesTable>)>> {
        &self.slots[my_stripe()].0
    }

    /// The calling thread's reader, if it was opened at commit `seq`.
    pub(crate) fn get(&self, seq: u64) -> Option<Arc<EntriesTable>> {
        match &*self.mine().lock() {
            Some((s, t)) if *s == seq => Some(t.clone()),
            _ => None,
        }
    }

    /// Keeps `table`, opened at commit `seq`, for the calling thread.
    pub(crate) fn put(&self, seq: u64, table: Arc<EntriesTable>) {
        *self.mine().lock() = Some((seq, table));
    }

    /// Drops every reader not in use right now (one in use is left for the
    /// next pass).
    pub(crate) fn drop_idle(&self) {
        for s in self.slots.iter() {
            if let Some(mut g) = s.0.try_lock() {
                *g = None;
            }
        }
    }

    /// Drops every reader (the database is about to be closed).
    pub(crate) fn drop_all(&self) {
        for s in self.slots.iter() {
            *s.0.lock() = None;
        }
    }

    /// Readers kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.slots.iter().filter(|s| s.0.lock().is_some()).count()
    }
}

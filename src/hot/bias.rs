//! A reader-biased lock for the hot shards, after BRAVO (Dice and Kogan,
//! "BRAVO: Biased Locking for Reader-Writer Locks", USENIX ATC 2019).
//!
//! A `parking_lot::RwLock` read makes two locked instructions on the lock's
//! word, a line every reading core writes. Biased reads (below), switched
//! on and off between rounds on one cache in one process, ran W1's gets
//! 3–13 % faster at two threads and −3 to +9 % at one (docs/BENCHMARKS.md,
//! W1). While a shard is read-mostly its lock is *biased*: a
//! reader instead publishes the lock's address in a slot only its own
//! thread writes ([`VISIBLE`], one per owned stripe of
//! [`crate::stats::owned_stripe`]) and reads under that. A writer takes the
//! real lock, turns the bias off and waits until no slot names its lock;
//! only then does it touch the data.
//!
//! Why a reader and a writer cannot both go ahead (a Dekker pair, all four
//! accesses `SeqCst`): the reader stores its slot and then loads the bias;
//! the writer stores the bias (false) and then loads every slot. In the
//! single order of `SeqCst` accesses one of the two stores comes first, so
//! either the reader sees the bias off (and takes the real lock) or the
//! writer sees the reader's slot (and waits for it to clear).
//!
//! The bias comes back after [`REBIAS_AFTER`] reads under the real lock
//! with no write between them, set by a reader that holds the real lock
//! (so no writer is inside). A write-heavy shard (W2 writes to each shard
//! every few dozen reads) stays on the real lock and pays one plain store
//! a read for the count; a read-mostly one revokes at most once per
//! [`REBIAS_AFTER`] reads, for an atomic swap and a scan of 16 lines.
//!
//! Threads that own no stripe (more than [`STRIPES`] at once) and nested
//! reads on one thread (its slot is taken) use the real lock. As with
//! `parking_lot`'s own lock, a thread must not read a lock it is already
//! reading: a writer waiting in between would wait for the outer read,
//! and the inner one for the writer. Reads that scan a whole shard
//! ([`BiasedRwLock::read_real`]) take the real lock, so that a writer
//! parks behind them instead of spinning.

use crate::stats::{STRIPES, owned_stripe};
use crossbeam_utils::CachePadded;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};

/// Reads under the real lock, with no write between them, after which a
/// lock is biased again.
const REBIAS_AFTER: u32 = 1024;

/// The address of the lock each owned stripe's thread is reading without
/// taking it, 0 for none. Only the owning thread stores a lock's address
/// or 0 into its slot; writers only load.
static VISIBLE: [CachePadded<AtomicUsize>; STRIPES] =
    [const { CachePadded::new(AtomicUsize::new(0)) }; STRIPES];

/// A `parking_lot::RwLock` whose reads skip the lock word while no one
/// writes (see the module docs).
pub(crate) struct BiasedRwLock<T> {
    /// Readers may read without the lock. Set only by a reader holding the
    /// real lock, cleared only by the writer holding it.
    bias: AtomicBool,
    /// Reads under the real lock since the last write, while not biased.
    /// Bumped with a plain load and store (two readers may lose a count,
    /// which only delays the bias); on the lock word's line, which those
    /// reads have just written anyway.
    shared_reads: AtomicU32,
    lock: RwLock<T>,
}

/// A read: of a biased lock, or under the real one. Its variants are
/// private: a `&T` copied out of a biased read would outlive the slot that
/// protects it.
pub(crate) struct ReadGuard<'a, T>(Read<'a, T>);

enum Read<'a, T> {
    Biased {
        data: &'a T,
        slot: &'static AtomicUsize,
        /// The slot is this thread's: the guard must be dropped here.
        _not_send: PhantomData<*const ()>,
    },
    Shared(RwLockReadGuard<'a, T>),
}

impl<T> BiasedRwLock<T> {
    pub(crate) fn new(data: T) -> Self {
        BiasedRwLock {
            bias: AtomicBool::new(false),
            shared_reads: AtomicU32::new(0),
            lock: RwLock::new(data),
        }
    }

    fn id(&self) -> usize {
        self as *const Self as usize
    }

    #[inline]
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        if self.bias.load(Relaxed)
            && let Some(slot) = owned_stripe().map(|i| &*VISIBLE[i])
            // Taken by an outer read of this thread: overwriting it would
            // hide that read from its lock's writer.
            && slot.load(Relaxed) == 0
        {
            slot.swap(self.id(), SeqCst);
            if self.bias.load(SeqCst) {
                // SAFETY: no writer touches the data while `slot` names
                // this lock: a writer holding the real lock has turned the
                // bias off (SeqCst) and then waits, loading every slot
                // (SeqCst), until none names it; this thread published its
                // slot (SeqCst) and then saw the bias still on, so by the
                // module's Dekker argument that writer is waiting for this
                // slot. The bias was turned on (Release) by a reader
                // holding the real lock after the last writer released it,
                // and loaded here with SeqCst (Acquire), so that writer's
                // writes are visible. `write` hands out its guard only
                // after the wait, and the guard's drop clears the slot
                // (Release) after the last use of `data`, which the
                // writer's load (Acquire) then orders before its writes.
                let data = unsafe { &*self.lock.data_ptr() };
                return ReadGuard(Read::Biased {
                    data,
                    slot,
                    _not_send: PhantomData,
                });
            }
            slot.store(0, Release);
        }
        self.read_real()
    }

    /// A read under the real lock, biased or not: for a read that holds
    /// the lock long (a scan of the whole shard), which a writer then
    /// waits for parked, not spinning in `revoke`.
    pub(crate) fn read_real(&self) -> ReadGuard<'_, T> {
        let guard = self.lock.read();
        if !self.bias.load(Relaxed) {
            let n = self.shared_reads.load(Relaxed) + 1;
            if n >= REBIAS_AFTER {
                // Release: a biased reader that sees it sees the data as
                // the last writer left it (this thread acquired that from
                // the real lock).
                self.bias.store(true, Release);
            } else {
                self.shared_reads.store(n, Relaxed);
            }
        }
        ReadGuard(Read::Shared(guard))
    }

    /// The real write lock, once no biased reader is left.
    #[inline]
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        let guard = self.lock.write();
        // Relaxed: under the write lock nothing else changes the bias, and
        // its last setter released the real lock before this acquired it.
        if self.bias.load(Relaxed) {
            self.revoke();
        }
        self.shared_reads.store(0, Relaxed);
        guard
    }

    #[cold]
    #[inline(never)]
    fn revoke(&self) {
        self.bias.store(false, SeqCst);
        let me = self.id();
        for slot in VISIBLE.iter() {
            let mut spins = 0u32;
            while slot.load(SeqCst) == me {
                // A biased read is one lookup and a clone (scans take the
                // real lock), unless its thread was preempted.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn is_biased(&self) -> bool {
        self.bias.load(Relaxed)
    }
}

#[cfg(test)]
impl<T> ReadGuard<'_, T> {
    fn biased(&self) -> bool {
        matches!(self.0, Read::Biased { .. })
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            Read::Biased { data, .. } => data,
            Read::Shared(g) => g,
        }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Read::Biased { slot, .. } = &self.0 {
            // Release: orders this read's loads before the stores of a
            // writer that sees the slot clear.
            slot.store(0, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ONE_AT_A_TIME;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    fn biased<T>(data: T) -> BiasedRwLock<T> {
        let l = BiasedRwLock::new(data);
        for _ in 0..REBIAS_AFTER {
            drop(l.read());
        }
        assert!(
            l.is_biased(),
            "{REBIAS_AFTER} reads without a write bias the lock"
        );
        l
    }

    /// Whether this thread's reads of a biased lock can skip it: it owns a
    /// stripe. Under `cargo test` other tests' threads may hold all of
    /// them (the stripe tests take [`ONE_AT_A_TIME`]); the thread then
    /// reads under the real lock, which the tests check instead.
    fn owns_stripe() -> bool {
        owned_stripe().is_some()
    }

    #[test]
    fn reads_bias_the_lock_and_a_write_revokes_it() {
        let _one = ONE_AT_A_TIME.lock();
        let l = BiasedRwLock::new(7u32);
        assert!(!l.read().biased());
        for _ in 1..REBIAS_AFTER - 1 {
            drop(l.read());
        }
        assert!(!l.is_biased(), "one read short");
        drop(l.read());
        assert!(l.is_biased());
        {
            let g = l.read();
            assert_eq!(g.biased(), owns_stripe());
            assert_eq!(*g, 7);
            assert!(!l.read_real().biased(), "a scan takes the real lock");
        }
        *l.write() = 8;
        assert!(!l.is_biased(), "a write turns the bias off");
        let g = l.read();
        assert!(!g.biased());
        assert_eq!(*g, 8);
    }

    #[test]
    fn a_write_restarts_the_count() {
        let l = BiasedRwLock::new(());
        for _ in 0..REBIAS_AFTER - 1 {
            drop(l.read());
        }
        drop(l.write());
        for _ in 0..REBIAS_AFTER - 1 {
            drop(l.read());
        }
        assert!(!l.is_biased());
    }

    #[test]
    fn nested_reads_of_one_thread_take_the_real_lock() {
        let _one = ONE_AT_A_TIME.lock();
        if !owns_stripe() {
            return; // every read takes the real lock: nothing nests
        }
        let (a, b) = (Arc::new(biased(1u8)), biased(2u8));
        let outer = a.read();
        assert!(outer.biased());
        let inner_b = b.read();
        let inner_a = a.read();
        assert!(!inner_b.biased());
        assert!(!inner_a.biased());
        assert_eq!((*outer, *inner_a, *inner_b), (1, 1, 2));
        drop((inner_a, inner_b));
        // The outer read still holds its slot: a write on another thread
        // waits for it.
        let writer = {
            let a = Arc::clone(&a);
            std::thread::spawn(move || drop(a.write()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !writer.is_finished(),
            "the writer waits for the biased read"
        );
        drop(outer);
        writer.join().expect("writer");
        assert!(!a.is_biased());
    }

    /// A writer fills every word of the data with one number; readers,
    /// biased or not, must never see two numbers at once. Fails when
    /// `revoke` does not wait for the slots (checked by removing its loop).
    #[test]
    fn readers_never_see_a_write_in_progress() {
        let _one = ONE_AT_A_TIME.lock();
        const WORDS: usize = 64;
        let l = Arc::new(BiasedRwLock::new(
            (0..WORDS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        // More readers than stripes: the rest read under the real lock.
        let readers: Vec<_> = (0..STRIPES + 2)
            .map(|_| {
                let (l, stop) = (Arc::clone(&l), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut biased = 0u64;
                    while !stop.load(Relaxed) {
                        let g = l.read();
                        biased += g.biased() as u64;
                        let first = g[0].load(Relaxed);
                        for w in g.iter() {
                            std::hint::spin_loop();
                            assert_eq!(w.load(Relaxed), first, "a write was seen half done");
                        }
                    }
                    (biased, owns_stripe())
                })
            })
            .collect();
        let mut rebiased = 0;
        for n in 1..=100u64 {
            {
                let g = l.write();
                for w in g.iter() {
                    w.store(n, Relaxed);
                    std::hint::spin_loop();
                }
            }
            // Until the readers have biased the lock again (bounded).
            for _ in 0..50 {
                if l.is_biased() {
                    rebiased += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(true, Relaxed);
        let (mut biased, mut owners) = (0, 0);
        for r in readers {
            let (b, owned) = r.join().expect("a reader saw a torn write");
            biased += b;
            owners += owned as u64;
        }
        assert!(rebiased > 0, "the readers never biased the lock again");
        if owners > 0 {
            assert!(
                biased > 0,
                "no read was biased ({owners} readers owned a stripe)"
            );
        }
    }
}

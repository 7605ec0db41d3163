//! Test support, compiled with the `testing` feature: a simulated disk that
//! loses power.
//!
//! [`PowerLossDisk`] is an in-memory redb [`StorageBackend`] that
//! remembers, besides the bytes a reader sees, the **durable image** (the
//! bytes as of the last `sync_data`) and every `write` / `set_len` issued
//! since. From those it builds **crash images**: what the storage could hold
//! if power failed before the pending sync completed — the durable image
//! plus a random subset of the unsynced writes, applied in any order, some
//! of them torn at a 512-byte or 4 KiB boundary (only a prefix of the write
//! landed). This is the failure model of a disk with a volatile write cache
//! below a file system that does not order unsynced writes, the same model
//! SQLite's and RocksDB's crash-test layers and redb's own
//! `tests/crash_consistency.rs` use.
//!
//! Reopen embercache on an image with [`PowerLossDisk::from_image`] and
//! [`PowerLossDisk::factory`]:
//!
//! ```
//! use embercache::Cache;
//! use embercache::testing::PowerLossDisk;
//!
//! let disk = PowerLossDisk::new();
//! let cache = Cache::builder().storage_backend(disk.factory()).open()?;
//! cache.set("ns", b"k", b"v".to_vec())?;
//! cache.flush()?; // acknowledged durable: every crash image must keep it
//! cache.set("ns", b"k2", b"maybe".to_vec())?; // not yet durable
//!
//! let image = disk.crash_image(42);
//! let after = PowerLossDisk::from_image(image.bytes);
//! let cache2 = Cache::builder().storage_backend(after.factory()).open()?;
//! assert_eq!(cache2.get("ns", b"k")?.as_deref(), Some(&b"v"[..]));
//! # cache2.close()?;
//! # drop(cache);
//! # Ok::<(), embercache::Error>(())
//! ```
//!
//! To cut power at the moment it hurts most — while a sync is in flight,
//! with a whole commit's writes pending — register a hook with
//! [`PowerLossDisk::on_sync`]: it runs at the start of every `sync_data`
//! and gets a [`PowerCut`] that builds images of that instant.
//!
//! The disk is per-process and shared by its clones (the factory hands out
//! clones), so the lock methods of [`StorageBackend`] keep redb's defaults
//! (unsupported), exactly as redb's `InMemoryBackend` does.

use parking_lot::Mutex;
use redb::StorageBackend;
use std::sync::Arc;

/// Sector sizes a write may be torn at: a 512-byte sector or a 4 KiB page.
const TEAR_BOUNDARIES: [u64; 2] = [512, 4096];

/// One storage operation not yet made durable by a sync.
#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// Runs at the start of every `sync_data`; see [`PowerLossDisk::on_sync`].
type SyncHook = Box<dyn FnMut(&PowerCut<'_>) + Send>;

struct DiskState {
    /// What reads see: every write applied.
    live: Vec<u8>,
    /// The bytes as of the last completed `sync_data`.
    durable: Vec<u8>,
    /// Writes and length changes since the last sync, in issue order.
    unsynced: Vec<Unsynced>,
    syncs: u64,
    writes: u64,
    hook: Option<SyncHook>,
}

/// A simulated disk that can lose power; see the [module docs](self).
///
/// Cheap to clone: clones are the same disk.
#[derive(Clone)]
pub struct PowerLossDisk {
    state: Arc<Mutex<DiskState>>,
}

impl std::fmt::Debug for PowerLossDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the bytes: redb may log the backend.
        let s = self.state.lock();
        f.debug_struct("PowerLossDisk")
            .field("len", &s.live.len())
            .field("syncs", &s.syncs)
            .field("unsynced", &s.unsynced.len())
            .finish_non_exhaustive()
    }
}

impl Default for PowerLossDisk {
    fn default() -> Self {
        Self::new()
    }
}

/// How a crash image was cut from the unsynced writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CutKind {
    /// Every unsynced write lost: the durable image alone.
    DropAll,
    /// The first `n` unsynced operations in issue order, the last of them
    /// possibly torn (an ordered write-back interrupted).
    InOrderPrefix,
    /// A random subset in a random order, some writes torn.
    RandomSubset,
    /// Every unsynced operation, in a random order, some writes torn (the
    /// cache was flushing when the power went).
    AllSomeTorn,
}

/// A crash image and how it was made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CrashImage {
    /// The storage contents after the power loss.
    pub bytes: Vec<u8>,
    /// How the unsynced operations were chosen.
    pub kind: CutKind,
    /// Unsynced operations (writes and length changes) at the cut.
    pub unsynced: usize,
    /// Of those, how many reached the image (whole or torn).
    pub applied: usize,
    /// Of the applied writes, how many landed only in part.
    pub torn: usize,
}

/// The storage at one instant, as seen by an [`PowerLossDisk::on_sync`]
/// hook: the durable image and the unsynced operations.
pub struct PowerCut<'a> {
    durable: &'a [u8],
    unsynced: &'a [Unsynced],
    sync: u64,
}

impl PowerCut<'_> {
    /// A crash image of this instant, chosen by `seed` (same seed, same
    /// image).
    pub fn image(&self, seed: u64) -> CrashImage {
        cut(self.durable, self.unsynced, seed)
    }
    /// Number of the sync that is starting (the first is 1).
    pub fn sync_number(&self) -> u64 {
        self.sync
    }
    /// Writes and length changes issued since the last sync.
    pub fn unsynced_ops(&self) -> usize {
        self.unsynced.len()
    }
}

impl PowerLossDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::from_image(Vec::new())
    }

    /// A disk holding `image`, all of it durable (the state after a crash,
    /// once power is back).
    pub fn from_image(image: Vec<u8>) -> Self {
        PowerLossDisk {
            state: Arc::new(Mutex::new(DiskState {
                live: image.clone(),
                durable: image,
                unsynced: Vec::new(),
                syncs: 0,
                writes: 0,
                hook: None,
            })),
        }
    }

    /// A factory for [`crate::CacheBuilder::storage_backend`]: every call
    /// returns this same disk, so a reopen after an I/O error finds its data.
    pub fn factory(&self) -> impl Fn() -> std::io::Result<PowerLossDisk> + Send + Sync + 'static {
        let disk = self.clone();
        move || Ok(disk.clone())
    }

    /// A crash image of the disk now, chosen by `seed`.
    pub fn crash_image(&self, seed: u64) -> CrashImage {
        let s = self.state.lock();
        cut(&s.durable, &s.unsynced, seed)
    }

    /// The bytes as of the last completed sync.
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// Calls `hook` at the start of every `sync_data`, before the pending
    /// writes become durable: a power cut during that sync may leave any of
    /// the images the [`PowerCut`] builds. Replaces an earlier hook.
    ///
    /// The hook runs on the thread that syncs (embercache's writer) with
    /// the disk locked: it must not call methods of this disk.
    pub fn on_sync(&self, hook: impl FnMut(&PowerCut<'_>) + Send + 'static) {
        self.state.lock().hook = Some(Box::new(hook));
    }

    /// Removes the `on_sync` hook.
    pub fn clear_hook(&self) {
        self.state.lock().hook = None;
    }

    /// `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// `write` calls so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Writes and length changes not yet synced.
    pub fn unsynced_ops(&self) -> usize {
        self.state.lock().unsynced.len()
    }
}

fn out_of_range() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "read beyond the end of the simulated disk",
    )
}

fn to_usize(n: u64) -> std::io::Result<usize> {
    usize::try_from(n).map_err(|_| std::io::Error::other("offset does not fit in memory"))
}

impl StorageBackend for PowerLossDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.state.lock();
        let start = to_usize(offset)?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| s.live.get(start..end))
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut s = self.state.lock();
        s.live.resize(to_usize(len)?, 0);
        s.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        s.syncs += 1;
        if let Some(hook) = s.hook.as_mut() {
            hook(&PowerCut {
                durable: &s.durable,
                unsynced: &s.unsynced,
                sync: s.syncs,
            });
        }
        // Replaying the unsynced operations in order yields `live`, without
        // copying the whole disk on every sync.
        for op in s.unsynced.drain(..) {
            apply(&mut s.durable, &op, None);
        }
        debug_assert_eq!(s.durable.len(), s.live.len());
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.state.lock();
        let start = to_usize(offset)?;
        let end = start
            .checked_add(data.len())
            .ok_or_else(|| std::io::Error::other("write past the address space"))?;
        // Like a file: writing past the end extends it.
        if end > s.live.len() {
            s.live.resize(end, 0);
        }
        s.live[start..end].copy_from_slice(data);
        s.writes += 1;
        s.unsynced.push(Unsynced::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// Applies `op` to `image`; a write keeps only its first `keep` bytes when
/// given (a torn write).
fn apply(image: &mut Vec<u8>, op: &Unsynced, keep: Option<usize>) {
    match op {
        Unsynced::SetLen(len) => image.resize(*len as usize, 0),
        Unsynced::Write { offset, data } => {
            let data = &data[..keep.unwrap_or(data.len())];
            let start = *offset as usize;
            let end = start + data.len();
            if end > image.len() {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
    }
}

/// SplitMix64: a small, good-enough generator, so the library needs no
/// `rand` dependency for this.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Where a write starting at `offset` of `len` bytes may be torn: the
/// number of bytes kept, cut at an absolute sector or page boundary
/// strictly inside the write. `None` if no boundary falls inside it.
fn tear_point(rng: &mut Rng, offset: u64, len: usize) -> Option<usize> {
    let b = TEAR_BOUNDARIES[rng.below(TEAR_BOUNDARIES.len() as u64) as usize];
    let end = offset + len as u64;
    let first = (offset / b + 1) * b;
    if first >= end {
        return None;
    }
    let count = (end - 1 - first) / b + 1; // boundaries in (offset, end)
    let at = first + rng.below(count) * b;
    Some((at - offset) as usize)
}

/// Builds one crash image from `durable` and the `unsynced` operations.
fn cut(durable: &[u8], unsynced: &[Unsynced], seed: u64) -> CrashImage {
    let mut rng = Rng(seed);
    let kind = match rng.below(100) {
        0..10 => CutKind::DropAll,
        10..35 => CutKind::InOrderPrefix,
        35..85 => CutKind::RandomSubset,
        _ => CutKind::AllSomeTorn,
    };
    let n = unsynced.len();
    // (index, bytes kept) of each applied operation, in application order.
    let mut plan: Vec<(usize, Option<usize>)> = Vec::new();
    let tear = |rng: &mut Rng, i: usize| match &unsynced[i] {
        Unsynced::Write { offset, data } => tear_point(rng, *offset, data.len()),
        Unsynced::SetLen(_) => None,
    };
    match kind {
        CutKind::DropAll => {}
        CutKind::InOrderPrefix => {
            let k = rng.below(n as u64 + 1) as usize;
            plan.extend((0..k).map(|i| (i, None)));
            if k > 0 && rng.chance(50) {
                plan[k - 1].1 = tear(&mut rng, k - 1);
            }
        }
        CutKind::RandomSubset | CutKind::AllSomeTorn => {
            let keep = if kind == CutKind::RandomSubset {
                rng.below(101)
            } else {
                100
            };
            for i in 0..n {
                if rng.below(100) < keep {
                    let t = if rng.chance(20) {
                        tear(&mut rng, i)
                    } else {
                        None
                    };
                    plan.push((i, t));
                }
            }
            // Fisher–Yates: the disk may persist them in any order.
            for i in (1..plan.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                plan.swap(i, j);
            }
        }
    }
    let mut bytes = durable.to_vec();
    for &(i, keep) in &plan {
        apply(&mut bytes, &unsynced[i], keep);
    }
    CrashImage {
        bytes,
        kind,
        unsynced: n,
        applied: plan.len(),
        torn: plan.iter().filter(|(_, k)| k.is_some()).count(),
    }
}

/// A write as the write-ahead log holds it: (namespace, key, record —
/// `None` for a delete —, version, expires_at, mirror). A delete logs no
/// expiry: it reads back as 0.
pub type WalWrite = (String, Vec<u8>, Option<Vec<u8>>, u64, u64, bool);

/// The image of a write-ahead log (src/store/wal.rs) holding `groups`,
/// one record each, at `generation`, up to the first group the log has no
/// room for (`capacity` bytes; the writer would checkpoint there).
/// For the fuzzer and tests.
pub fn wal_image(groups: &[Vec<WalWrite>], generation: u64, capacity: u64) -> Vec<u8> {
    use crate::store::wal::{Wal, Write};
    let image = PowerLossDisk::new();
    let mut wal = Wal::open(Box::new(image.clone()), capacity).expect("in memory");
    for g in groups {
        let writes = g
            .iter()
            .map(|(ns, key, record, version, expires_at, mirror)| Write {
                ns,
                key,
                record: record.as_deref(),
                version: *version,
                expires_at: *expires_at,
                mirror: *mirror,
            });
        // No room: the writer would checkpoint and start over; the image
        // holds what was logged until then.
        if !wal.append(generation, writes).expect("in memory") {
            break;
        }
    }
    image.durable_image()
}

/// Reads a write-ahead log image back as recovery does: the writes of
/// `generation` in order, and what stopped the replay early if it was not
/// a torn or foreign record. Never panics.
pub fn wal_read_back(
    image: Vec<u8>,
    generation: u64,
) -> std::io::Result<(Vec<WalWrite>, Option<String>)> {
    let disk = PowerLossDisk::from_image(image);
    let len = disk.len()?;
    let wal = crate::store::wal::Wal::open(Box::new(disk), len)?;
    let (found, _) = wal.read_back(generation)?;
    let writes = found
        .writes
        .into_iter()
        .map(|w| (w.ns, w.key, w.record, w.version, w.expires_at, w.mirror))
        .collect();
    Ok((writes, found.damaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_makes_writes_durable_and_images_fall_between() {
        let d = PowerLossDisk::new();
        d.write(0, &[1; 1000]).unwrap();
        d.sync_data().unwrap();
        assert_eq!(d.durable_image(), vec![1; 1000]);
        d.write(0, &[2; 1000]).unwrap();
        d.set_len(2000).unwrap();
        for seed in 0..200 {
            let img = d.crash_image(seed);
            assert!(img.bytes.len() == 1000 || img.bytes.len() == 2000);
            // Every byte is old or new, and a torn write keeps a prefix
            // that ends on a 512-byte boundary.
            let twos = img.bytes[..1000].iter().take_while(|b| **b == 2).count();
            assert!(img.bytes[twos..1000].iter().all(|b| *b == 1));
            assert!(twos == 0 || twos == 1000 || twos % 512 == 0);
            if img.kind == CutKind::DropAll {
                assert_eq!(img.bytes, vec![1; 1000]);
            }
        }
    }

    #[test]
    fn tear_points_are_on_boundaries_inside_the_write() {
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let off = rng.below(20_000);
            let len = rng.below(10_000) as usize + 1;
            if let Some(k) = tear_point(&mut rng, off, len) {
                assert!(k > 0 && k < len);
                assert!((off + k as u64).is_multiple_of(512));
            }
        }
        assert_eq!(tear_point(&mut rng, 0, 512), None);
    }

    #[test]
    fn hook_sees_the_pending_writes() {
        let d = PowerLossDisk::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        d.on_sync(move |cut| s2.lock().push((cut.sync_number(), cut.unsynced_ops())));
        d.write(0, b"abc").unwrap();
        d.write(3, b"def").unwrap();
        d.sync_data().unwrap();
        d.sync_data().unwrap();
        assert_eq!(*seen.lock(), vec![(1, 2), (2, 0)]);
        assert_eq!(d.syncs(), 2);
        assert_eq!(d.writes(), 2);
    }
}

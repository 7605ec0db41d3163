//! The namespace registry: names, policies, epochs, per-namespace counters.
//!
//! A namespace is created on first use with the default policy unless the
//! builder declared it. Its epoch is persisted in the meta table; bumping it
//! (`invalidate_namespace`) hides every older entry at once, and the
//! maintenance pass purges them later.

use crate::config::NamespacePolicy;
use crate::error::WriteError;
use crate::stats::NsCounters;
use parking_lot::RwLock;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use zstd::dict::EncoderDictionary;

pub(crate) struct Namespace {
    pub id: u32,
    pub name: Arc<str>,
    pub policy: NamespacePolicy,
    pub epoch: AtomicU64,
    /// Expired entries stay readable as stale this long (ms); see
    /// `NamespacePolicy::max_stale`.
    pub retention_ms: u64,
    /// Serializes `invalidate_namespace`: the bump is queued before it is
    /// visible, so no write can carry an epoch the disk does not know yet.
    pub invalidate: parking_lot::Mutex<()>,
    pub counters: NsCounters,
    /// The dictionary new writes compress with: (id, prepared at the
    /// namespace's level).
    pub dict: RwLock<Option<(u32, Arc<EncoderDictionary<'static>>)>>,
    /// Writes at or above the compression threshold without a dictionary,
    /// towards `NamespacePolicy::auto_dictionary`.
    pub undictionaried: AtomicU64,
    /// Held from persisting a trained dictionary to installing it: the
    /// one in memory is the one `dict_current` names.
    pub training: parking_lot::Mutex<()>,
}

impl Namespace {
    /// Read on every get: inlined, or each get pays a call through the
    /// GOT and the spills around it (another codegen unit).
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// When an entry expiring at `expires_at` may be dropped from the hot
    /// tier: after its stale-retention window. (The disk sweeper keys its
    /// index by `expires_at` and keeps the longest window of any namespace.)
    pub(crate) fn purge_at(&self, expires_at: u64) -> u64 {
        expires_at.saturating_add(self.retention_ms)
    }
}

/// A cheap hash of a namespace name for the lock-free table: length and up
/// to 16 bytes. Names are the application's, not an attacker's; the worst
/// case is a longer linear probe.
#[inline]
fn name_hash(name: &str) -> usize {
    let b = name.as_bytes();
    let n = b.len();
    let mut x = n as u64;
    if n >= 8 {
        let w = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        x ^= w(0) ^ w(n - 8).rotate_left(29);
    } else {
        for &c in b {
            x = x.rotate_left(8) ^ u64::from(c);
        }
    }
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

/// How many namespaces get the lock-free lookup (by name and by id). More
/// are fine: they are found through the locked maps, one `Arc` clone each.
const FAST: usize = 128;

/// The registry. Namespaces are never removed, so the first [`FAST`] of
/// them are also published in two fixed tables of set-once slots that
/// readers probe with plain loads: a `get` takes no lock and writes no
/// shared cache line (the `RwLock` + `Arc` clone it replaced were four
/// atomic read-modify-writes on lines every thread shares, per get).
pub(crate) struct Namespaces {
    /// Open addressing by name hash over `2 * FAST` slots (at most half
    /// full), linear probing; a slot is set once and never cleared, so an
    /// empty slot ends a probe.
    fast_by_name: Box<[OnceLock<Arc<Namespace>>]>,
    /// `fast_by_id[id]` for ids below `FAST`.
    fast_by_id: Box<[OnceLock<Arc<Namespace>>]>,
    /// Every namespace; creation happens under its write lock.
    by_name: RwLock<HashMap<Arc<str>, Arc<Namespace>>>,
    by_id: RwLock<Vec<Arc<Namespace>>>,
    declared: HashMap<String, NamespacePolicy>,
    default_policy: NamespacePolicy,
    max_name_len: usize,
}

impl Namespaces {
    pub(crate) fn new(
        declared: HashMap<String, NamespacePolicy>,
        default_policy: NamespacePolicy,
        max_name_len: usize,
    ) -> Self {
        Namespaces {
            fast_by_name: (0..2 * FAST).map(|_| OnceLock::new()).collect(),
            fast_by_id: (0..FAST).map(|_| OnceLock::new()).collect(),
            by_name: RwLock::new(HashMap::new()),
            by_id: RwLock::new(Vec::new()),
            declared,
            default_policy,
            max_name_len,
        }
    }

    /// The probe sequence of `name` in `fast_by_name`.
    fn probe(&self, name: &str) -> impl Iterator<Item = &OnceLock<Arc<Namespace>>> {
        let mask = self.fast_by_name.len() - 1;
        let h = name_hash(name);
        (0..self.fast_by_name.len()).map(move |i| &self.fast_by_name[(h + i) & mask])
    }

    /// Lock-free lookup among the first `FAST` namespaces.
    #[inline]
    fn fast(&self, name: &str) -> Option<&Arc<Namespace>> {
        let mask = self.fast_by_name.len() - 1;
        let h = name_hash(name);
        for i in 0..self.fast_by_name.len() {
            match self.fast_by_name[(h + i) & mask].get() {
                Some(ns) if crate::hot::bytes_eq(ns.name.as_bytes(), name.as_bytes()) => {
                    return Some(ns);
                }
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    /// Checks a namespace name: non-empty, bounded, no control characters.
    pub(crate) fn check_name(name: &str, max: usize) -> Result<(), &'static str> {
        if name.is_empty() {
            return Err("must not be empty");
        }
        if name.len() > max {
            return Err("longer than Limits::max_namespace_len");
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(())
    }

    /// The namespace named `name`, created with its policy on first use.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Namespace>, WriteError> {
        self.get_ref(name).map(Cow::into_owned)
    }

    /// Like [`Self::get`], borrowed when it can be: the read path's lookup,
    /// lock-free and without touching the `Arc`'s count.
    #[inline]
    pub(crate) fn get_ref(&self, name: &str) -> Result<Cow<'_, Arc<Namespace>>, WriteError> {
        match self.fast(name) {
            Some(ns) => Ok(Cow::Borrowed(ns)),
            None => self.get_slow(name),
        }
    }

    /// `get_ref` past the lock-free table: the locked map, or a new
    /// namespace. Out of line, so the common lookup stays small.
    #[cold]
    #[inline(never)]
    fn get_slow(&self, name: &str) -> Result<Cow<'_, Arc<Namespace>>, WriteError> {
        if let Some(ns) = self.by_name.read().get(name) {
            return Ok(Cow::Owned(ns.clone()));
        }
        Self::check_name(name, self.max_name_len).map_err(|reason| {
            WriteError::InvalidNamespace {
                name: name.chars().take(64).collect(),
                reason,
            }
        })?;
        let mut by_name = self.by_name.write();
        if let Some(ns) = by_name.get(name) {
            return Ok(Cow::Owned(ns.clone()));
        }
        let mut by_id = self.by_id.write();
        let policy = self
            .declared
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.default_policy.clone());
        let ns = Arc::new(Namespace {
            id: by_id.len() as u32,
            name: name.into(),
            retention_ms: policy.retention_ms(),
            policy,
            invalidate: parking_lot::Mutex::new(()),
            epoch: AtomicU64::new(0),
            counters: NsCounters::default(),
            dict: RwLock::new(None),
            undictionaried: AtomicU64::new(0),
            training: parking_lot::Mutex::new(()),
        });
        by_id.push(ns.clone());
        by_name.insert(ns.name.clone(), ns.clone());
        if (ns.id as usize) < FAST {
            // Published after the locked maps, under their write lock (so
            // one publisher at a time): a reader that misses it here finds
            // it there. At most `FAST` of `2 * FAST` slots are used, so the
            // probe always finds an empty one.
            let _ = self.fast_by_id[ns.id as usize].set(ns.clone());
            if let Some(slot) = self.probe(name).find(|s| s.get().is_none()) {
                let _ = slot.set(ns.clone());
            }
        }
        Ok(Cow::Owned(ns))
    }

    pub(crate) fn by_id(&self, id: u32) -> Option<Arc<Namespace>> {
        self.by_id_ref(id).map(Cow::into_owned)
    }

    /// Like [`Self::by_id`], lock-free and borrowed for the first `FAST` ids.
    pub(crate) fn by_id_ref(&self, id: u32) -> Option<Cow<'_, Arc<Namespace>>> {
        if let Some(ns) = self.fast_by_id.get(id as usize).and_then(OnceLock::get) {
            return Some(Cow::Borrowed(ns));
        }
        self.by_id.read().get(id as usize).cloned().map(Cow::Owned)
    }

    /// Whether a hot entry of namespace `id` may be dropped at `now`: past
    /// its stale-retention window, or of an old epoch.
    pub(crate) fn is_dead(&self, id: u32, expires_at: u64, epoch: u64, now: u64) -> bool {
        match self.by_id_ref(id) {
            Some(n) => n.purge_at(expires_at) <= now || n.epoch() != epoch,
            None => true,
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Namespace>> {
        self.by_id.read().clone()
    }
}

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
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zstd::dict::EncoderDictionary;

pub(crate) struct Namespace {
    pub id: u32,
    pub name: Arc<str>,
    pub policy: NamespacePolicy,
    pub epoch: AtomicU64,
    pub counters: NsCounters,
    /// The dictionary new writes compress with: (id, prepared at the
    /// namespace's level).
    pub dict: RwLock<Option<(u32, Arc<EncoderDictionary<'static>>)>>,
}

impl Namespace {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

pub(crate) struct Namespaces {
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
            by_name: RwLock::new(HashMap::new()),
            by_id: RwLock::new(Vec::new()),
            declared,
            default_policy,
            max_name_len,
        }
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
        if let Some(ns) = self.by_name.read().get(name) {
            return Ok(ns.clone());
        }
        Self::check_name(name, self.max_name_len).map_err(|reason| {
            WriteError::InvalidNamespace {
                name: name.chars().take(64).collect(),
                reason,
            }
        })?;
        let mut by_name = self.by_name.write();
        if let Some(ns) = by_name.get(name) {
            return Ok(ns.clone());
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
            policy,
            epoch: AtomicU64::new(0),
            counters: NsCounters::default(),
            dict: RwLock::new(None),
        });
        by_id.push(ns.clone());
        by_name.insert(ns.name.clone(), ns.clone());
        Ok(ns)
    }

    pub(crate) fn by_id(&self, id: u32) -> Option<Arc<Namespace>> {
        self.by_id.read().get(id as usize).cloned()
    }

    /// The current epoch of namespace `id` (0 for an unknown id).
    pub(crate) fn epoch_of(&self, id: u32) -> u64 {
        self.by_id.read().get(id as usize).map_or(0, |n| n.epoch())
    }

    pub(crate) fn all(&self) -> Vec<Arc<Namespace>> {
        self.by_id.read().clone()
    }
}

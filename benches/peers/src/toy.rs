//! The toy hot-tier entry and open-addressed table of `layout` (see its
//! docs), shared with `probe toyab`, which times the engine against the
//! table on the same keys and values in one process: a fixed reference
//! for comparing builds of the engine whose code layouts differ.

use bytes::Bytes;
use std::hash::{BuildHasher, Hasher};

pub fn h64(k: &[u8]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(7).build_hasher();
    h.write(k);
    h.finish()
}

#[derive(Clone)]
pub struct Entry {
    pub hash: u32,
    pub klen: u8,
    pub key: [u8; 23],
    pub value: Bytes,
    pub expires: u64,
    pub epoch: u64,
    /// Unread here; the engine's entry has it (96 bytes in all).
    _version: u64,
}

impl Entry {
    /// A fresh entry for `key` (at most 23 bytes) with hash `h`.
    pub fn new(h: u64, key: &[u8], value: &Bytes) -> Self {
        let mut k = [0u8; 23];
        k[..key.len()].copy_from_slice(key);
        Entry {
            hash: h as u32,
            klen: key.len() as u8,
            key: k,
            value: value.clone(),
            expires: u64::MAX,
            epoch: 0,
            _version: 1,
        }
    }
}

/// One slot of the open table.
pub struct Slot(Option<Entry>);

/// Entries in an open-addressed table probed from the hash directly.
pub struct Open {
    pub slots: Vec<Slot>,
}

impl Open {
    pub fn new(keys: &[Vec<u8>], values: &[Bytes]) -> Self {
        let max_load: f64 = std::env::var("LAYOUT_LOAD")
            .map(|v| v.parse().expect("LAYOUT_LOAD: a number"))
            .unwrap_or(0.75);
        let n = ((keys.len() as f64 / max_load).ceil() as usize).next_power_of_two();
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            slots.push(Slot(None));
        }
        let mut o = Open { slots };
        for i in 0..keys.len() {
            let h = h64(&keys[i]);
            let mut p = (h >> 20) as usize & (n - 1);
            while o.slots[p].0.is_some() {
                p = (p + 1) & (n - 1);
            }
            o.slots[p].0 = Some(Entry::new(h, &keys[i], &values[i]));
        }
        o
    }

    #[inline(never)]
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let h = h64(key);
        let n = self.slots.len();
        let mut p = (h >> 20) as usize & (n - 1);
        loop {
            match &self.slots[p].0 {
                None => return None,
                Some(e) => {
                    if e.hash == h as u32
                        && &e.key[..e.klen as usize] == key
                        && e.epoch == 0
                        && e.expires == u64::MAX
                    {
                        return Some(e.value.clone());
                    }
                }
            }
            p = (p + 1) & (n - 1);
        }
    }
}

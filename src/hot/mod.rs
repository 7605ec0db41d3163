//! The hot tier: an in-memory map bounded in bytes.
//!
//! [`s3fifo`] is the single-threaded eviction algorithm; [`sharded`] spreads
//! keys over power-of-two shards, each behind a reader-biased lock
//! ([`bias`]: a `parking_lot::RwLock` that read-mostly shards read without
//! writing its word), with a randomly seeded hasher. Read hits never take
//! the exclusive lock. [`table`] holds a shard's entries.

mod bias;
pub(crate) mod s3fifo;
pub(crate) mod sharded;
mod table;

pub use s3fifo::{ENTRY_OVERHEAD, charge_of};
pub(crate) use s3fifo::{Entry, Evicted, Insert};
pub(crate) use sharded::HotTier;

/// `a == b` for byte strings, without a `memcmp` call for the short ones
/// (keys and namespace names mostly are): up to three word compares.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let h = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => h(a, 0) == h(b, 0) && h(a, n - 4) == h(b, n - 4),
        8..=16 => w(a, 0) == w(b, 0) && w(a, n - 8) == w(b, n - 8),
        17..=24 => w(a, 0) == w(b, 0) && w(a, 8) == w(b, 8) && w(a, n - 8) == w(b, n - 8),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_eq_is_slice_equality() {
        let base: Vec<u8> = (0..40u8).collect();
        for n in 0..40 {
            let a = &base[..n];
            assert!(super::bytes_eq(a, a));
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!super::bytes_eq(a, &b), "len {n}, byte {i}");
            }
            assert!(!super::bytes_eq(a, &base[..n + 1]));
        }
    }
}

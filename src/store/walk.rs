//! Reading many `entries` records whose keys come in ascending order.
//!
//! A `get` descends the B-tree from its root: a few page look-ups in
//! redb's page cache and a binary search per level, about half the cost
//! of warming a small record. When the keys asked for are sorted and
//! close together (the warm-up's snapshot segments), walking forward from
//! the previous one reads each leaf page once instead.

use redb::{AccessGuard, Range, ReadOnlyTable};
use std::cmp::Ordering;

type Key = (&'static str, &'static [u8]);
type Record = AccessGuard<'static, &'static [u8]>;

/// Past this many records that are not asked for, a walk seeks instead:
/// stepping over a record costs a few tens of ns, a seek about what a
/// `get` costs (~0.5 µs on a cold page cache).
const MAX_STEPS: usize = 16;

/// A cursor over `entries` for keys asked for in ascending order. A key
/// asked for out of order is still found, by a seek.
pub(crate) struct KeyWalk<'t, 'k> {
    table: &'t ReadOnlyTable<Key, &'static [u8]>,
    /// Forward from the last seek; `None` before the first one and after
    /// a read error.
    range: Option<Range<'static, Key, &'static [u8]>>,
    /// The record the range stands on, not handed out yet: every record
    /// between the last key asked for and this one has been stepped over.
    /// `None` at the end of the table.
    head: Option<(AccessGuard<'static, Key>, Record)>,
    /// The last key asked for.
    last: Option<(&'k str, &'k [u8])>,
}

impl<'t, 'k> KeyWalk<'t, 'k> {
    pub(crate) fn new(table: &'t ReadOnlyTable<Key, &'static [u8]>) -> Self {
        KeyWalk {
            table,
            range: None,
            head: None,
            last: None,
        }
    }

    /// Positions the walk on the first record at or after `target`.
    fn seek(&mut self, target: (&str, &[u8])) {
        self.head = None;
        self.range = self.table.range::<(&str, &[u8])>(target..).ok();
        self.step();
    }

    /// Moves the head to the next record. A read error ends the range: the
    /// next key asked for seeks again.
    fn step(&mut self) {
        self.head = match self.range.as_mut().and_then(Iterator::next) {
            Some(Ok(e)) => Some(e),
            Some(Err(_)) => {
                self.range = None;
                None
            }
            None => None,
        };
    }

    /// The record of `(ns, key)`, if stored. A read error reads as "not
    /// stored" (the warm-up skips such keys; a `get` will report it).
    pub(crate) fn get(&mut self, ns: &'k str, key: &'k [u8]) -> Option<Record> {
        let target = (ns, key);
        let forward = self.last.is_some_and(|last| last < target);
        self.last = Some(target);
        let mut sought = !forward || self.range.is_none();
        if sought {
            self.seek(target);
        }
        let mut steps = 0;
        loop {
            // The end of the table: nothing at or after `target`.
            let (k, _) = self.head.as_ref()?;
            match k.value().cmp(&target) {
                Ordering::Equal => {
                    let (_, record) = self.head.take()?;
                    self.step();
                    return Some(record);
                }
                Ordering::Greater => return None,
                Ordering::Less if steps < MAX_STEPS => {
                    steps += 1;
                    self.step();
                }
                Ordering::Less if !sought => {
                    sought = true;
                    self.seek(target);
                }
                // A seek never lands before its key; should it, give up.
                Ordering::Less => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyWalk;
    use crate::store::tables::ENTRIES;
    use redb::{Database, ReadableDatabase, backends::InMemoryBackend};

    #[test]
    fn finds_what_a_get_finds_in_any_order() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("db");
        let w = db.begin_write().expect("write");
        {
            let mut t = w.open_table(ENTRIES).expect("table");
            // Every third key of 0..600 in two namespaces.
            for ns in ["a", "b"] {
                for i in (0..600u32).step_by(3) {
                    let k = i.to_be_bytes();
                    let v = format!("{ns}{i}");
                    t.insert((ns, &k[..]), v.as_bytes()).expect("insert");
                }
            }
        }
        w.commit().expect("commit");
        let r = db.begin_read().expect("read");
        let t = r.open_table(ENTRIES).expect("table");
        let keys: Vec<(&str, [u8; 4])> = ["a", "b", "c", ""]
            .into_iter()
            .flat_map(|ns| (0..700u32).map(move |i| (ns, i.to_be_bytes())))
            .collect();
        let check = |order: &[&(&str, [u8; 4])]| {
            let mut walk = KeyWalk::new(&t);
            for &&(ns, ref k) in order {
                let got = walk.get(ns, k).map(|g| g.value().to_vec());
                let want = t
                    .get((ns, &k[..]))
                    .expect("get")
                    .map(|g| g.value().to_vec());
                assert_eq!(got, want, "{ns} {k:?}");
            }
        };
        // Ascending, with dense and sparse stretches; descending; shuffled.
        let mut sorted: Vec<_> = keys.iter().collect();
        sorted.sort();
        check(&sorted);
        let sparse: Vec<_> = sorted.iter().copied().step_by(37).collect();
        check(&sparse);
        sorted.reverse();
        check(&sorted);
        let mut mixed: Vec<_> = keys.iter().collect();
        mixed.sort_by_key(|(ns, k)| (u32::from_be_bytes(*k).wrapping_mul(2_654_435_761), *ns));
        check(&mixed);
    }
}

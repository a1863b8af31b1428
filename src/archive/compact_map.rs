//! `CompactMap`: a map of small fixed-size keys and values that costs little more than its
//! payload, for the writer's view of an archive of millions of messages.
//!
//! A hash map of a million entries costs about three times its payload at its peak: a load
//! factor below one, and the old and new tables side by side while it grows. Here the entries
//! live in one vector sorted by key (looked up by binary search), and insertions wait in a small
//! hash map that is merged into the vector in bulk. A large vector that grows is remapped by the
//! allocator rather than copied, and only the pages written count.

use std::collections::HashMap;
use std::hash::Hash;

/// Insertions held before a merge into the sorted vector (which costs one pass over it).
const MERGE_AT: usize = 1 << 16;

/// A key of uniformly spread bits (a hash), whose top 16 bits order it first.
pub trait Key: Ord + Hash + Copy {
    fn top16(&self) -> u16;
}

impl Key for u128 {
    fn top16(&self) -> u16 {
        (self >> 112) as u16
    }
}

impl Key for [u64; 2] {
    fn top16(&self) -> u16 {
        (self[0] >> 48) as u16
    }
}

impl Key for [u128; 2] {
    fn top16(&self) -> u16 {
        self[0].top16()
    }
}

pub struct CompactMap<K, V> {
    /// Sorted by key, each key once.
    sorted: Vec<(K, V)>,
    /// Where each value of `top16` starts in `sorted` (and one past the end), so that a lookup
    /// searches a few entries, not all of them: 65,537 numbers, or none while `sorted` is empty.
    starts: Vec<usize>,
    /// Keys absent from `sorted`.
    recent: HashMap<K, V>,
}

impl<K: Key, V: Copy> Default for CompactMap<K, V> {
    fn default() -> Self {
        CompactMap {
            sorted: Vec::new(),
            starts: Vec::new(),
            recent: HashMap::new(),
        }
    }
}

impl<K: Key, V: Copy> CompactMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        match self.position(key) {
            Ok(i) => Some(&self.sorted[i].1),
            Err(_) => self.recent.get(key),
        }
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing what it had.
    pub fn insert(&mut self, key: K, value: V) {
        match self.position(&key) {
            Ok(i) => self.sorted[i].1 = value,
            Err(_) => {
                self.recent.insert(key, value);
                if self.recent.len() >= MERGE_AT {
                    self.merge();
                }
            }
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.sorted.retain(|(k, v)| keep(k, v));
        self.recent.retain(|k, v| keep(k, v));
        self.index_starts();
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Every key and value, in any order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.sorted.iter().map(|(k, v)| (k, v)).chain(&self.recent)
    }

    /// Moves every entry into the sorted vector, for [`CompactMap::settled`].
    pub fn settle(&mut self) {
        if !self.recent.is_empty() {
            self.merge();
        }
    }

    /// The entries sorted by key: all of them after [`CompactMap::settle`], until the next
    /// insertion.
    pub fn settled(&self) -> &[(K, V)] {
        &self.sorted
    }

    /// Where `key` is in `sorted` (`Ok`), or is not.
    fn position(&self, key: &K) -> Result<usize, ()> {
        let Some(range) = self
            .starts
            .get(key.top16() as usize..key.top16() as usize + 2)
        else {
            return Err(());
        };
        let (start, end) = (range[0], range[1]);
        match self.sorted[start..end].binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => Ok(start + i),
            Err(_) => Err(()),
        }
    }

    fn index_starts(&mut self) {
        self.starts.clear();
        if self.sorted.is_empty() {
            return;
        }
        let mut at = 0;
        for top in 0..=u16::MAX as usize {
            while at < self.sorted.len() && (self.sorted[at].0.top16() as usize) < top {
                at += 1;
            }
            self.starts.push(at);
        }
        self.starts.push(self.sorted.len());
    }

    /// Moves `recent` into `sorted`, merging from the back in place.
    fn merge(&mut self) {
        let mut added: Vec<(K, V)> = self.recent.drain().collect();
        added.sort_unstable_by_key(|a| a.0);
        let mut old = self.sorted.len();
        // The tail's contents are placeholders, each overwritten below before it is read.
        self.sorted.extend_from_slice(&added);
        let mut next = added.len();
        let mut write = self.sorted.len();
        while next > 0 {
            write -= 1;
            if old > 0 && self.sorted[old - 1].0 > added[next - 1].0 {
                self.sorted[write] = self.sorted[old - 1];
                old -= 1;
            } else {
                self.sorted[write] = added[next - 1];
                next -= 1;
            }
        }
        self.index_starts();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn agrees_with_a_btree_map_through_merges() {
        let mut compact = CompactMap::default();
        let mut model = BTreeMap::new();
        // A little LCG: keys repeat, so replacements hit both the vector and the recent map.
        let mut x: u64 = 12345;
        // Keys in 150,000 values, spread over the top bits as hashes are.
        let key_of = |k: u64| u128::from(k) << 110 | u128::from(k);
        for n in 0..(3 * MERGE_AT as u64 + 17) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = key_of((x >> 40) % 150_000);
            compact.insert(key, n);
            model.insert(key, n);
            if n % 50_000 == 0 {
                compact.retain(|k, _| !k.is_multiple_of(97));
                model.retain(|k: &u128, _| !k.is_multiple_of(97));
            }
        }
        assert_eq!(compact.len(), model.len());
        assert_eq!(compact.iter().count(), model.len());
        assert!(compact.sorted.windows(2).all(|w| w[0].0 < w[1].0));
        for k in 0..150_000 {
            let key = key_of(k);
            assert_eq!(compact.get(&key), model.get(&key), "key {key}");
        }
        compact.settle();
        assert!(
            compact
                .settled()
                .iter()
                .map(|(k, v)| (k, v))
                .eq(model.iter())
        );
    }
}

//! `CompactMap`: a map of small fixed-size keys and values that costs little more than its
//! payload, for the writer's view of an archive of millions of messages.
//!
//! A hash map of a million entries costs about three times its payload at its peak: a load
//! factor below one, and the old and new tables side by side while it grows. Here the entries
//! live in one vector sorted by key (looked up by binary search), and insertions wait in a small
//! hash map that is merged into the vector in bulk. A large vector that grows is remapped by the
//! allocator rather than copied, and only the pages written count. An insertion does not look
//! in the vector (at a million entries every look there is a cache miss): a key in both has
//! its value in the hash map, and the merge keeps that one.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Insertions held before a merge into the sorted vector (which costs one pass over it).
const MERGE_AT: usize = 1 << 16;

/// A key of uniformly spread bits (a hash), whose first 64 bits order it first.
pub trait Key: Ord + Hash + Copy {
    fn high(&self) -> u64;
}

impl Key for u128 {
    fn high(&self) -> u64 {
        (self >> 64) as u64
    }
}

impl Key for [u64; 2] {
    fn high(&self) -> u64 {
        self[0]
    }
}

impl Key for [u128; 2] {
    fn high(&self) -> u64 {
        self[0].high()
    }
}

/// Keys are hashes already: `recent` mixes their words with a multiply each instead of SipHash
/// (SipHash over a hash is wasted work, and it showed in a backup's profile).
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub struct CompactMap<K, V> {
    /// Sorted by key, each key once.
    sorted: Vec<(K, V)>,
    /// Where each bucket (the top `bucket_bits` of a key) starts in `sorted`, and one past the
    /// end, so that a lookup reads about one entry: there are about as many buckets as entries
    /// (from 256 to 16 million), or none while `sorted` is empty.
    starts: Vec<u32>,
    bucket_bits: u32,
    /// The latest insertions: a key here may be in `sorted` too, with an older value.
    recent: HashMap<K, V, BuildHasherDefault<FoldHasher>>,
}

impl<K: Key, V: Copy> Default for CompactMap<K, V> {
    fn default() -> Self {
        CompactMap {
            sorted: Vec::new(),
            starts: Vec::new(),
            bucket_bits: 8,
            recent: HashMap::default(),
        }
    }
}

impl<K: Key, V: Copy> CompactMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.recent
            .get(key)
            .or_else(|| Some(&self.sorted[self.position(key).ok()?].1))
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing what it had.
    pub fn insert(&mut self, key: K, value: V) {
        self.recent.insert(key, value);
        if self.recent.len() >= MERGE_AT {
            self.merge();
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.settle();
        self.sorted.retain(|(k, v)| keep(k, v));
        self.index_starts();
    }

    pub fn len(&self) -> usize {
        let only_recent = self.recent.keys().filter(|k| self.position(k).is_err());
        self.sorted.len() + only_recent.count()
    }

    /// Every key and value, in any order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let current = |(k, _): &&(K, V)| !self.recent.contains_key(k);
        let sorted = self.sorted.iter().filter(current).map(|(k, v)| (k, v));
        sorted.chain(&self.recent)
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
        let bucket = self.bucket(key);
        let Some(range) = self.starts.get(bucket..bucket + 2) else {
            return Err(());
        };
        let (start, end) = (range[0] as usize, range[1] as usize);
        match self.sorted[start..end].binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => Ok(start + i),
            Err(_) => Err(()),
        }
    }

    fn bucket(&self, key: &K) -> usize {
        (key.high() >> (64 - self.bucket_bits)) as usize
    }

    fn index_starts(&mut self) {
        self.starts.clear();
        if self.sorted.is_empty() {
            self.starts.shrink_to_fit();
            return;
        }
        let len = u32::try_from(self.sorted.len()).expect("fewer than 2^32 entries");
        self.bucket_bits = (u32::BITS - len.leading_zeros()).clamp(8, 24);
        let buckets = 1usize << self.bucket_bits;
        let mut at = 0;
        for bucket in 0..buckets {
            while at < self.sorted.len() && self.bucket(&self.sorted[at].0) < bucket {
                at += 1;
            }
            self.starts.push(at as u32);
        }
        self.starts.push(len);
        self.starts.shrink_to_fit();
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
        // `write - old` is `next` plus the keys replaced so far: never below `old`, so no old
        // entry is overwritten before it is moved.
        while next > 0 {
            write -= 1;
            if old > 0 && self.sorted[old - 1].0 > added[next - 1].0 {
                self.sorted[write] = self.sorted[old - 1];
                old -= 1;
            } else {
                if old > 0 && self.sorted[old - 1].0 == added[next - 1].0 {
                    // Replaced: the newer value is the one written.
                    old -= 1;
                }
                self.sorted[write] = added[next - 1];
                next -= 1;
            }
        }
        // One slot for each replaced key is left between the untouched head and the merge.
        self.sorted.drain(old..write);
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

    #[test]
    fn keys_crowded_into_one_bucket_are_still_found() {
        // Not spread like hashes: every key in the first bucket, found by binary search there.
        let mut compact = CompactMap::default();
        for k in 0..(MERGE_AT as u128 + 1000) {
            compact.insert(k * 3, k);
        }
        compact.settle();
        for k in 0..(MERGE_AT as u128 + 1000) {
            assert_eq!(compact.get(&(k * 3)), Some(&k));
            assert_eq!(compact.get(&(k * 3 + 1)), None);
        }
        assert_eq!(compact.get(&u128::MAX), None);
    }
}

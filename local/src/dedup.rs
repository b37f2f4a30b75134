//! The writer's in-memory index of the stored idempotent records (see `store::Writer`):
//! which record ids are already in the navigation table.
//!
//! A key is the first 96 bits of SHA-256(recordId). A different record taken for a
//! duplicate needs a 96-bit collision: with 10 million records stored, about 10^-22 per
//! new record.
//!
//! The keys live in 16,384 sorted runs, one per value of the key's first 14 bits, each
//! holding the key's last 88 bits: 11 bytes a key plus a little slack, instead of the
//! 13 bytes a slot (at a load of 44–87 %, so 15–30 bytes a key) of a hash set of 96-bit
//! keys, and no doubling of the table (old and new both held) as it grows. A lookup is a
//! binary search of a run of n / 16,384 keys; an insert or a removal moves half a run
//! on average (3 KB with 10 million keys stored, 200 bytes with 600,000). 65,536 runs
//! of 80 bits were tried: at 540,000 keys their headers and per-run slack held 2 MB more
//! (the `memory` test below).

/// The dedup key of an idempotent record: the first 96 bits of SHA-256(recordId).
pub type DedupKey = [u8; 12];

/// What a run stores of a key: its last 88 bits (the first 8 and the top 6 of the next
/// are the run's index).
type Rest = [u8; 11];

const RUNS: usize = 1 << 14;

/// The dedup key of `record_id`.
pub fn dedup_key(record_id: &str) -> DedupKey {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(record_id.as_bytes());
    let mut key = [0u8; 12];
    key.copy_from_slice(&digest[..12]);
    key
}

fn split(key: &DedupKey) -> (usize, Rest) {
    let [a, rest @ ..] = *key;
    (usize::from(u16::from_be_bytes([a, rest[0]]) >> 2), rest)
}

/// A set of [`DedupKey`]s (see the module).
pub struct DedupSet {
    runs: Box<[Vec<Rest>]>,
}

impl std::fmt::Debug for DedupSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupSet")
            .field("len", &self.len())
            .finish()
    }
}

impl Default for DedupSet {
    /// An empty set; its runs are made at the first insert (the operator tools' store
    /// and a store without idempotent records need none).
    fn default() -> Self {
        DedupSet {
            runs: Box::default(),
        }
    }
}

fn empty_runs() -> Box<[Vec<Rest>]> {
    std::iter::repeat_with(Vec::new).take(RUNS).collect()
}

impl FromIterator<DedupKey> for DedupSet {
    /// Builds the set in one pass and one sort per run (the start-up load: inserting
    /// keys one by one would move half a run each time).
    fn from_iter<I: IntoIterator<Item = DedupKey>>(keys: I) -> Self {
        let mut set = DedupSet::default();
        for key in keys {
            if set.runs.is_empty() {
                set.runs = empty_runs();
            }
            let (run, rest) = split(&key);
            if let Some(run) = set.runs.get_mut(run) {
                run.push(rest);
            }
        }
        for run in set.runs.iter_mut() {
            run.sort_unstable();
            run.dedup();
            run.shrink_to_fit();
        }
        set
    }
}

impl DedupSet {
    /// Keys in the set (a sum over the runs: for logs and tests, not the write path).
    pub fn len(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }

    /// Whether `key` is in the set.
    pub fn contains(&self, key: &DedupKey) -> bool {
        let (run, rest) = split(key);
        self.runs
            .get(run)
            .is_some_and(|run| run.binary_search(&rest).is_ok())
    }

    /// Adds `key`; false when it was there already.
    pub fn insert(&mut self, key: DedupKey) -> bool {
        if self.runs.is_empty() {
            self.runs = empty_runs();
        }
        let (run, rest) = split(&key);
        let Some(run) = self.runs.get_mut(run) else {
            return false;
        };
        match run.binary_search(&rest) {
            Ok(_) => false,
            Err(at) => {
                if run.len() == run.capacity() {
                    // An eighth more (at least 4), not double: the slack stays under
                    // 12.5 % of the keys, for a copy of 8 keys per insert on average.
                    run.reserve_exact((run.len() / 8).max(4));
                }
                run.insert(at, rest);
                true
            }
        }
    }

    /// Removes `key`; false when it was not there.
    pub fn remove(&mut self, key: &DedupKey) -> bool {
        let (run, rest) = split(key);
        let Some(run) = self.runs.get_mut(run) else {
            return false;
        };
        match run.binary_search(&rest) {
            Ok(at) => {
                run.remove(at);
                // Give back what a run no longer needs (records expire in bulk).
                if run.capacity() > 2 * run.len() + 8 {
                    run.shrink_to(run.len() + run.len() / 8);
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A deterministic stream of keys (SplitMix64), with many sharing their first
    /// 16 bits so that runs hold several keys.
    fn keys(seed: u64, n: usize) -> Vec<DedupKey> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| {
                let mut key = [0u8; 12];
                key[..8].copy_from_slice(&next().to_le_bytes());
                key[8..].copy_from_slice(&next().to_le_bytes()[..4]);
                // 16 distinct runs only (the first 14 bits: 2 of byte 0, 2 of byte
                // 1's top 6): long runs, inserts in their middle.
                key[0] &= 0x03;
                key[1] &= 0x0f;
                key
            })
            .collect()
    }

    #[test]
    fn answers_as_a_hash_set_through_inserts_and_removals() {
        let mut set = DedupSet::default();
        let mut model = HashSet::new();
        let stream = keys(7, 20_000);
        for (i, key) in stream.iter().enumerate() {
            assert_eq!(set.insert(*key), model.insert(*key), "insert {i}");
            // Re-insert an earlier key now and then: a duplicate.
            if i % 7 == 0 {
                let earlier = stream[i / 2];
                assert_eq!(set.insert(earlier), model.insert(earlier));
            }
            // Remove some (the sweep), present or not.
            if i % 5 == 0 {
                let old = stream[i / 3];
                assert_eq!(set.remove(&old), model.remove(&old), "remove {i}");
            }
        }
        assert_eq!(set.len(), model.len());
        for key in &stream {
            assert_eq!(set.contains(key), model.contains(key));
        }
        for key in keys(8, 2_000) {
            assert_eq!(set.contains(&key), model.contains(&key));
        }
        for key in &stream {
            assert_eq!(set.remove(key), model.remove(key));
        }
        assert_eq!(set.len(), 0);
        assert!(set.runs.iter().all(|run| run.capacity() <= 8));
    }

    #[test]
    fn a_set_built_at_once_equals_one_built_key_by_key() {
        let mut stream = keys(11, 5_000);
        stream.extend_from_within(..100); // the table never repeats an id; the set copes
        let built: DedupSet = stream.iter().copied().collect();
        let mut by_insert = DedupSet::default();
        for key in &stream {
            by_insert.insert(*key);
        }
        assert_eq!(built.len(), 5_000);
        assert_eq!(built.len(), by_insert.len());
        assert_eq!(built.runs, by_insert.runs);
        // No key, no runs (400 KB of them).
        let none: DedupSet = std::iter::empty().collect();
        assert!(none.runs.is_empty() && !none.contains(&[0; 12]));
    }

    #[test]
    fn keys_differing_in_one_bit_of_their_run_or_of_their_rest_are_told_apart() {
        let key = [0xab; 12];
        // Bits of the run index (byte 0, top 6 bits of byte 1), of the byte shared by
        // index and rest (its low 2 bits), and of the last byte.
        let flips = [
            (0, 0x80),
            (0, 0x01),
            (1, 0x04),
            (1, 0x80),
            (1, 0x01),
            (1, 0x02),
            (11, 0x01),
        ];
        let mut set = DedupSet::default();
        assert!(set.insert(key));
        for (byte, bit) in flips {
            let mut other = key;
            other[byte] ^= bit;
            assert!(!set.contains(&other), "byte {byte} bit {bit:#x}");
            assert!(set.insert(other));
            assert!(!set.insert(other));
        }
        assert!(!set.insert(key));
        assert_eq!(set.len(), 1 + flips.len());
    }

    #[test]
    fn the_key_is_the_head_of_the_record_ids_sha256() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 …
        assert_eq!(
            dedup_key("abc"),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde
            ]
        );
    }
}
#[cfg(test)]
mod memory {
    fn resident_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// What the set holds at the size `scripts/bench-cpu`'s durable run reaches (a
    /// measurement, not a check: `cargo test --release -p local --lib memory --
    /// --ignored --nocapture`). 7.5 MB here with glibc's malloc; 65,536 runs of 10-byte
    /// rests held 9.5 MB; a hash set of 12-byte keys takes 2^20 slots of 13 bytes at this
    /// size, 13.6 MB (and 20 MB while it grows into them).
    #[test]
    #[ignore = "a measurement; run it alone"]
    fn resident_set_of_540_000_keys() {
        let before = resident_kib();
        let set: super::DedupSet = (0..540_000u32)
            .map(|i| super::dedup_key(&i.to_string()))
            .fold(super::DedupSet::default(), |mut set, key| {
                set.insert(key);
                set
            });
        let grown = resident_kib().saturating_sub(before);
        eprintln!("{} keys: {grown} KiB resident", set.len());
        assert_eq!(set.len(), 540_000);
    }
}

//! The in-memory table of completed exceptions: origin chunk -> COW chunk.
//!
//! Consecutive exceptions (origin chunks `o..=o+k` stored in COW chunks `n..=n+k`) are kept as
//! one run, packed as the kernel packs them: the key is `o`, the value holds `n` in its low 56
//! bits and `k` (0..=255) in its top 8 bits. A run never leaves its 256-aligned group of origin
//! chunks, which bounds `k` and lets the table be sharded by group: each shard is an ordered map
//! behind its own read-write lock, so lookups on different groups never contend and lookups on
//! the same group share the lock.
//!
//! Memory: a B-tree entry is 16 bytes plus node overhead; bulk loading (sorted) fills nodes, so a
//! loaded table of scattered exceptions costs about 18 bytes per exception and runs cost far less
//! (see tests/table_memory.rs for the measured figures).

use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const NUMBER_BITS: u32 = 56;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;
/// Runs stay inside groups of 2^GROUP_SHIFT origin chunks (the kernel's hash shift).
const GROUP_SHIFT: u32 = 8;
const RUN_EXTRA_MAX: u64 = (1 << GROUP_SHIFT) - 1;
/// Enough shards that 2 cores times a few dozen request threads rarely meet on one lock.
const SHARDS: usize = 64;

fn pack(new: u64, extra: u64) -> u64 {
    debug_assert!(new <= NUMBER_MASK && extra <= RUN_EXTRA_MAX);
    (extra << NUMBER_BITS) | new
}

fn unpack(v: u64) -> (u64, u64) {
    (v & NUMBER_MASK, v >> NUMBER_BITS)
}

fn group(old: u64) -> u64 {
    old >> GROUP_SHIFT
}

fn shard_of(old: u64) -> usize {
    // Mix the group number so that neighbouring groups spread over the shards.
    (group(old).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

/// A mapping found by [`ExceptionTable::lookup_run`]: origin chunk `c` is in COW chunk `new`,
/// and so are the next `len - 1` origin chunks, consecutively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub new: u64,
    pub len: u64,
}

/// One run of the table: origin chunks `old..old+len` in COW chunks `new..new+len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub old: u64,
    pub new: u64,
    pub len: u64,
}

pub struct ExceptionTable {
    shards: Vec<RwLock<BTreeMap<u64, u64>>>,
    chunks: AtomicU64,
}

impl Default for ExceptionTable {
    fn default() -> Self {
        ExceptionTable::new()
    }
}

impl ExceptionTable {
    pub fn new() -> ExceptionTable {
        ExceptionTable {
            shards: (0..SHARDS).map(|_| RwLock::new(BTreeMap::new())).collect(),
            chunks: AtomicU64::new(0),
        }
    }

    /// Builds a table from `(old, new)` pairs with distinct `old` (the loader checked that).
    pub fn from_pairs(mut pairs: Vec<(u64, u64)>) -> ExceptionTable {
        pairs.sort_unstable();
        let mut per_shard: Vec<Vec<(u64, u64)>> = vec![Vec::new(); SHARDS];
        let mut run: Option<Run> = None;
        let flush = |r: Run, per_shard: &mut Vec<Vec<(u64, u64)>>| {
            per_shard[shard_of(r.old)].push((r.old, pack(r.new, r.len - 1)));
        };
        for &(old, new) in &pairs {
            match &mut run {
                Some(r)
                    if r.old + r.len == old
                        && r.new + r.len == new
                        && group(r.old) == group(old) =>
                {
                    r.len += 1
                }
                _ => {
                    if let Some(r) = run.take() {
                        flush(r, &mut per_shard);
                    }
                    run = Some(Run { old, new, len: 1 });
                }
            }
        }
        if let Some(r) = run {
            flush(r, &mut per_shard);
        }
        ExceptionTable {
            // Sorted input: the B-tree is bulk-built with full nodes.
            shards: per_shard
                .into_iter()
                .map(|v| RwLock::new(v.into_iter().collect()))
                .collect(),
            chunks: AtomicU64::new(pairs.len() as u64),
        }
    }

    /// Number of origin chunks with an exception.
    pub fn len(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of runs stored (for memory figures).
    pub fn runs(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn lookup(&self, old: u64) -> Option<u64> {
        self.lookup_run(old).map(|m| m.new)
    }

    /// Where origin chunk `old` is, and how many chunks from it on follow consecutively.
    pub fn lookup_run(&self, old: u64) -> Option<Mapped> {
        let map = self.shards[shard_of(old)].read();
        let (&start, &v) = map.range(..=old).next_back()?;
        let (new, extra) = unpack(v);
        (old <= start + extra).then(|| Mapped {
            new: new + (old - start),
            len: start + extra - old + 1,
        })
    }

    /// Adds `old -> new`, joining it to a neighbouring run where both numbers continue it.
    /// Returns false (and changes nothing) when `old` already has an exception.
    pub fn insert(&self, old: u64, new: u64) -> bool {
        let mut map = self.shards[shard_of(old)].write();
        let before = map.range(..=old).next_back().map(|(&s, &v)| (s, unpack(v)));
        if let Some((s, (_, extra))) = before
            && old <= s + extra
        {
            return false;
        }
        let after = map
            .range(old + 1..)
            .next()
            .map(|(&s, &v)| (s, unpack(v)))
            .filter(|&(s, (n, _))| s == old + 1 && n == new + 1 && group(s) == group(old));
        let joins_before = before.filter(|&(s, (n, extra))| {
            s + extra + 1 == old && n + extra + 1 == new && group(s) == group(old)
        });
        match (joins_before, after) {
            (Some((s, (n, e1))), Some((s2, (_, e2)))) => {
                map.remove(&s2);
                map.insert(s, pack(n, e1 + e2 + 2));
            }
            (Some((s, (n, e1))), None) => {
                map.insert(s, pack(n, e1 + 1));
            }
            (None, Some((s2, (_, e2)))) => {
                map.remove(&s2);
                map.insert(old, pack(new, e2 + 1));
            }
            (None, None) => {
                map.insert(old, pack(new, 0));
            }
        }
        self.chunks.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Removes the exception of origin chunk `old` (a merge step); splits a run if needed.
    /// Returns the COW chunk it was in.
    pub fn remove(&self, old: u64) -> Option<u64> {
        let mut map = self.shards[shard_of(old)].write();
        let (&s, &v) = map.range(..=old).next_back()?;
        let (n, extra) = unpack(v);
        if old > s + extra {
            return None;
        }
        map.remove(&s);
        if old > s {
            map.insert(s, pack(n, old - s - 1));
        }
        if old < s + extra {
            map.insert(old + 1, pack(n + (old - s) + 1, s + extra - old - 1));
        }
        self.chunks.fetch_sub(1, Ordering::Relaxed);
        Some(n + (old - s))
    }

    /// Every run as `(first origin chunk, count)`, in no particular order: the changed-chunk
    /// map of `crate::changes`. Shards are read one at a time, so a table that grows meanwhile
    /// gives at least what it held when the call began.
    pub fn chunk_runs(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.read().iter().map(|(&old, &v)| (old, unpack(v).1 + 1)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn runs_join_and_split() {
        let t = ExceptionTable::new();
        assert!(t.insert(10, 100));
        assert!(t.insert(12, 102));
        assert_eq!(t.runs(), 2);
        assert!(t.insert(11, 101), "fills the gap and joins both runs");
        assert_eq!(t.runs(), 1);
        assert_eq!(t.lookup_run(10), Some(Mapped { new: 100, len: 3 }));
        assert_eq!(t.chunk_runs(), [(10, 3)]);
        assert!(!t.insert(11, 500), "duplicate refused");
        assert_eq!(t.remove(11), Some(101));
        assert_eq!(t.lookup(10), Some(100));
        assert_eq!(t.lookup(11), None);
        assert_eq!(t.lookup(12), Some(102));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn runs_never_cross_a_group() {
        let t = ExceptionTable::new();
        for c in 250..262 {
            assert!(t.insert(c, c + 1000));
        }
        assert_eq!(t.runs(), 2, "255|256 is a group boundary");
        assert_eq!(t.lookup_run(250), Some(Mapped { new: 1250, len: 6 }));
        let bulk = ExceptionTable::from_pairs((0..600).map(|c| (c, c + 7)).collect());
        assert_eq!(bulk.runs(), 3);
        assert_eq!(bulk.lookup(599), Some(606));
    }

    #[test]
    fn matches_a_map_under_random_operations() {
        let mut rng = crate::rng::Rng(42);
        let mut rnd = |m: u64| rng.next() % m;
        let t = ExceptionTable::new();
        let mut model = HashMap::new();
        for _ in 0..20000 {
            let old = rnd(2000);
            if rnd(4) == 0 {
                assert_eq!(t.remove(old), model.remove(&old));
            } else {
                let new = if rnd(2) == 0 { old + 5 } else { rnd(1 << 40) };
                let fresh = !model.contains_key(&old);
                assert_eq!(t.insert(old, new), fresh);
                model.entry(old).or_insert(new);
            }
        }
        for old in 0..2100 {
            assert_eq!(t.lookup(old), model.get(&old).copied(), "chunk {old}");
        }
        assert_eq!(t.len(), model.len() as u64);
        let rebuilt = ExceptionTable::from_pairs(model.iter().map(|(&o, &n)| (o, n)).collect());
        for old in 0..2100 {
            assert_eq!(rebuilt.lookup(old), model.get(&old).copied());
        }
    }
}

//! A blocked Bloom filter of the keys in the SQLite store's `cmids` table.
//!
//! Why: nearly every cmid a batch looks up is new, and until now each one
//! cost a probe of the table's B-tree: a statement run and a descent of the
//! index, about a fifth of a commit's work per message with cmids (as our
//! clients send them). A filter that has seen every key of the table answers
//! "certainly not there" for most new keys from one cache line; only a key
//! it may hold (about 1 in 100 new keys at the filter's capacity, far fewer
//! at the third of it that it is built for, and every real retry) is probed.
//!
//! Blocked: all of a key's bits lie in one 512-bit block, so an answer costs
//! one cache miss instead of one per bit, for a slightly higher rate of
//! false positives than a classic filter of the same size. A false positive
//! costs a probe, never a wrong answer: the filter is only ever asked
//! whether a probe can be skipped.

/// Bits per key the filter is sized for. With [`PROBES`] bits per key in a
/// 512-bit block that is about 1 % false positives at capacity.
const BITS_PER_KEY: usize = 10;

/// Bits set and tested per key.
const PROBES: u32 = 7;

/// Words in a block: 8 × 64 bits, one cache line.
const BLOCK_WORDS: usize = 8;

/// A set of 64-bit key hashes that may answer "maybe" for a hash it never
/// saw, and never answers "no" for one it did.
pub(super) struct Filter {
    blocks: Vec<[u64; BLOCK_WORDS]>,
    capacity: usize,
    keys: usize,
}

impl Filter {
    /// An empty filter sized for `capacity` keys (at least one block).
    pub(super) fn with_capacity(capacity: usize) -> Filter {
        let bits = capacity.saturating_mul(BITS_PER_KEY);
        let n = bits.div_ceil(BLOCK_WORDS * 64).max(1);
        Filter {
            blocks: vec![[0; BLOCK_WORDS]; n],
            capacity,
            keys: 0,
        }
    }

    /// The keys it was sized for.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys added so far (a key added twice counts twice).
    pub(super) fn keys(&self) -> usize {
        self.keys
    }

    /// Bytes it holds.
    pub(super) fn bytes(&self) -> usize {
        self.blocks.len() * BLOCK_WORDS * 8
    }

    /// Adds a key's hash.
    pub(super) fn insert(&mut self, hash: u64) {
        let (block, bits) = self.place(hash);
        let block = &mut self.blocks[block];
        for bit in bits {
            block[bit / 64] |= 1 << (bit % 64);
        }
        self.keys += 1;
    }

    /// Whether the key with this hash may have been added: `false` means
    /// it certainly was not.
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        let (block, mut bits) = self.place(hash);
        let block = &self.blocks[block];
        bits.all(|bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// The block of a hash (from its high half) and its bits in that block
    /// (nine bits each from a remix of its low half).
    fn place(&self, hash: u64) -> (usize, impl Iterator<Item = usize>) {
        // Lemire's multiply-shift: a uniform block index without a division.
        let block = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        let mut mix = (hash & 0xffff_ffff).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bits = (0..PROBES).map(move |_| {
            let bit = (mix & 511) as usize;
            mix >>= 9;
            bit
        });
        (block as usize, bits)
    }
}

/// Its size, not its bits (up to 20 MiB of them).
impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("capacity", &self.capacity)
            .field("keys", &self.keys)
            .field("bytes", &self.bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn never_forgets_a_key_and_rarely_claims_one() {
        let hasher = std::collections::hash_map::RandomState::new();
        let n = 50_000;
        let mut f = Filter::with_capacity(n);
        for i in 0..n {
            f.insert(hasher.hash_one((7_i64, format!("c-{i}"))));
        }
        assert_eq!(f.keys(), n);
        for i in 0..n {
            assert!(f.may_contain(hasher.hash_one((7_i64, format!("c-{i}")))));
        }
        // Keys it never saw: about 1 % false positives at capacity (some
        // 480 of 50,000, give or take 22); the bound leaves room for chance
        // and fails a filter with fewer working probes, or none.
        let fp = (0..n)
            .filter(|i| f.may_contain(hasher.hash_one((8_i64, format!("c-{i}")))))
            .count();
        assert!(fp < n / 50, "{fp} false positives in {n}");
        assert!(f.bytes() >= n * BITS_PER_KEY / 8);
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let f = Filter::with_capacity(0);
        assert_eq!(f.bytes(), 64);
        assert!((0..1000u64).all(|h| !f.may_contain(h.wrapping_mul(0x1234_5678_9abc_def1))));
    }
}

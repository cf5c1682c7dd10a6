//! The paged KV cache: keys and values of every running sequence, in fixed-size blocks carved out
//! of one allocation sized by a memory budget. A sequence holds a [`BlockTable`] (its blocks in
//! order); blocks are taken as it grows and all given back at once when it finishes, is cancelled
//! or is preempted, so memory never fragments and the budget is never exceeded.
//!
//! Prefix reuse: a full block is named by the [`BlockDigest`] of every token up to its end
//! ([`block_digests`]), and once written it is published under that name ([`KvCache::publish`]).
//! A new sequence whose prompt starts with the same tokens attaches those blocks instead of
//! computing them ([`KvCache::attach`]); blocks are reference-counted, and a sequence only ever
//! writes past its attached prefix, so sharing needs no copying. Published blocks that no sequence
//! holds stay cached but count as free: [`KvCache::reserve`] takes plain free blocks first and then
//! evicts cached ones, least recently released first.
//!
//! Attention runs directly over the blocks ([`KvCache::attend`]): no per-step copy of a sequence's
//! history, and each query row is computed independently of the others in the step, so a sequence
//! gets bit-identical results whether it runs alone, batched, or prefilled in chunks.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// The shape of one token's keys (or values) in one layer, and how many layers there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one token occupies across all layers, keys and values.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// The name of a full block's contents: a SHA-256 over what computed it (the `weights` the
/// sequence runs with beyond the model's own: a LoRA adapter's identity, or nothing) and every
/// token from the start of the sequence to the end of the block, so equal digests mean equal keys
/// and values.
pub type BlockDigest = [u8; 32];

/// Appends the digests of the full blocks of `tokens` that `digests` does not name yet, for a
/// sequence run with `weights` (empty for the bare model).
pub fn block_digests(digests: &mut Vec<BlockDigest>, weights: &[u8], tokens: &[u32], block_size: usize) {
    for block in digests.len()..tokens.len() / block_size {
        let mut hasher = Sha256::new();
        match digests.last() {
            Some(parent) => hasher.update(parent),
            None => hasher.update(weights),
        }
        for token in &tokens[block * block_size..(block + 1) * block_size] {
            hasher.update(token.to_le_bytes());
        }
        digests.push(hasher.finalize().into());
    }
}

/// How much of a prompt the cache already holds ([`KvCache::lookup`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixHit {
    /// Leading blocks found.
    pub blocks: usize,
    /// Of those, blocks no sequence holds: attaching them takes them out of the free count.
    pub idle: usize,
}

/// The blocks of one sequence, in token order, and how many tokens they hold.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
    /// Leading full blocks already offered to the prefix index.
    published: usize,
}

impl BlockTable {
    /// Tokens written to the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// One query row of a step: which sequence's table it reads and its position in that sequence.
#[derive(Clone, Copy, Debug)]
pub struct QueryRow {
    /// Index into the tables passed alongside.
    pub sequence: usize,
    pub position: usize,
}

/// Fixed-size blocks of keys and values for every layer.
pub struct KvCache {
    shape: KvShape,
    block_size: usize,
    /// Per layer: `[blocks, kv_heads, head_dim, block_size]`, transposed within a block so a
    /// query scores [`KEYS`] positions with vertical multiply-adds.
    keys: Vec<Vec<f32>>,
    /// Per layer: `[blocks, kv_heads, block_size, head_dim]`.
    values: Vec<Vec<f32>>,
    /// Blocks holding nothing reusable.
    free: Vec<u32>,
    total: usize,
    /// Sequences holding each block.
    holders: Vec<u32>,
    /// Published blocks by the digest of their contents, and the reverse.
    published: HashMap<BlockDigest, u32>,
    digest_of: Vec<Option<BlockDigest>>,
    /// Published blocks nobody holds, by release order (the oldest is evicted first).
    idle: BTreeMap<u64, u32>,
    idle_since: Vec<u64>,
    releases: u64,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("shape", &self.shape)
            .field("block_size", &self.block_size)
            .field("blocks", &self.total)
            .field("free", &self.free_blocks())
            .field("cached", &self.published.len())
            .finish()
    }
}

impl KvCache {
    /// As many blocks of `block_size` tokens as fit in `budget_bytes` (at least one).
    pub fn with_budget(shape: KvShape, block_size: usize, budget_bytes: usize) -> Self {
        let block_size = block_size.max(1);
        let blocks = (budget_bytes / (shape.bytes_per_token() * block_size)).max(1);
        let per_layer = blocks * shape.kv_heads * block_size * shape.head_dim;
        Self {
            shape,
            block_size,
            keys: (0..shape.layers).map(|_| vec![0.0; per_layer]).collect(),
            values: (0..shape.layers).map(|_| vec![0.0; per_layer]).collect(),
            // Popped from the end: lowest block ids first.
            free: (0..blocks as u32).rev().collect(),
            total: blocks,
            holders: vec![0; blocks],
            published: HashMap::new(),
            digest_of: vec![None; blocks],
            idle: BTreeMap::new(),
            idle_since: vec![0; blocks],
            releases: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the cache.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks of `table` that no other sequence holds: what releasing it frees.
    pub fn exclusive_blocks(&self, table: &BlockTable) -> usize {
        table.blocks.iter().filter(|&&block| self.holders[block as usize] == 1).count()
    }

    /// Blocks no sequence holds, cached ones included.
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Tokens the whole cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.total * self.block_size
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Makes `table` able to hold `tokens` tokens, taking plain free blocks first and then the
    /// least recently released cached ones. Takes nothing and returns false when there are not
    /// enough free blocks.
    pub fn reserve(&mut self, table: &mut BlockTable, tokens: usize) -> bool {
        let needed = self.blocks_for(tokens).saturating_sub(table.blocks.len());
        if needed > self.free_blocks() {
            return false;
        }
        for _ in 0..needed {
            let block = match self.free.pop() {
                Some(block) => block,
                None => self.evict_oldest(),
            };
            self.holders[block as usize] = 1;
            table.blocks.push(block);
        }
        true
    }

    /// Takes the least recently released cached block out of the prefix index.
    fn evict_oldest(&mut self) -> u32 {
        let (_, block) = self.idle.pop_first().expect("reserve counted the cached blocks; this is a bug");
        if let Some(digest) = self.digest_of[block as usize].take() {
            self.published.remove(&digest);
        }
        block
    }

    /// Gives every block of `table` back; the table is empty afterwards. Published blocks stay
    /// cached; the later blocks of a sequence count as released earlier, so under pressure a
    /// cached prefix is evicted from its end.
    pub fn release(&mut self, table: &mut BlockTable) {
        for block in table.blocks.drain(..).rev() {
            let holders = &mut self.holders[block as usize];
            *holders -= 1;
            if *holders > 0 {
                continue;
            }
            if self.digest_of[block as usize].is_some() {
                self.releases += 1;
                self.idle_since[block as usize] = self.releases;
                self.idle.insert(self.releases, block);
            } else {
                self.free.push(block);
            }
        }
        table.len = 0;
        table.published = 0;
    }

    /// How many leading blocks named by `digests` are cached.
    pub fn lookup(&self, digests: &[BlockDigest]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        for digest in digests {
            let Some(&block) = self.published.get(digest) else { break };
            hit.blocks += 1;
            hit.idle += usize::from(self.holders[block as usize] == 0);
        }
        hit
    }

    /// Starts the empty `table` with the cached blocks among the leading `digests` and returns
    /// the tokens they hold. Pass only the digests of blocks whose tokens need no logits.
    pub fn attach(&mut self, table: &mut BlockTable, digests: &[BlockDigest]) -> usize {
        debug_assert!(table.blocks.is_empty(), "attach starts a table");
        for digest in digests {
            let Some(&block) = self.published.get(digest) else { break };
            let holders = &mut self.holders[block as usize];
            if *holders == 0 {
                self.idle.remove(&self.idle_since[block as usize]);
            }
            *holders += 1;
            table.blocks.push(block);
        }
        table.published = table.blocks.len();
        table.len = table.blocks.len() * self.block_size;
        table.len
    }

    /// A table for a sequence forked from `table`'s (the other choices of an `n` > 1 request,
    /// after the prompt): its full blocks shared — a sequence only writes past its full blocks —
    /// and its partial last block copied into a block of the fork's own. `None` when no block is
    /// free for that copy.
    pub fn fork(&mut self, table: &BlockTable) -> Option<BlockTable> {
        let full = table.len / self.block_size;
        let partial = !table.len.is_multiple_of(self.block_size);
        if partial && self.free_blocks() == 0 {
            return None;
        }
        let mut fork = BlockTable {
            blocks: table.blocks[..full].to_vec(),
            len: full * self.block_size,
            published: table.published.min(full),
        };
        for &block in &fork.blocks {
            self.holders[block as usize] += 1;
        }
        if partial {
            let reserved = self.reserve(&mut fork, table.len);
            debug_assert!(reserved, "a free block was counted; this is a bug");
            let span = self.shape.kv_heads * self.block_size * self.shape.head_dim;
            let (from, to) = (table.blocks[full] as usize * span, fork.blocks[full] as usize * span);
            for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
                layer.copy_within(from..from + span, to);
            }
            fork.len = table.len;
        }
        Some(fork)
    }

    /// Offers `table`'s newly full blocks to the prefix index under their `digests` (those of the
    /// sequence's tokens). A block whose contents are already cached elsewhere stays private.
    pub fn publish(&mut self, table: &mut BlockTable, digests: &[BlockDigest]) {
        let full = digests.len().min(table.len / self.block_size);
        for (index, digest) in digests.iter().enumerate().take(full).skip(table.published) {
            let block = table.blocks[index];
            if let Entry::Vacant(entry) = self.published.entry(*digest) {
                entry.insert(block);
                self.digest_of[block as usize] = Some(*digest);
            }
        }
        table.published = table.published.max(full);
    }

    /// Writes the keys and values of `tokens` new tokens of one layer at the end of `table`'s
    /// sequence (already rotated keys). `keys` and `values` are `[tokens, kv_heads * head_dim]`;
    /// the table must have room ([`KvCache::reserve`]). Call [`KvCache::advance`] once every layer
    /// is written.
    pub fn write(&mut self, layer: usize, table: &BlockTable, keys: &[f32], values: &[f32]) {
        let KvShape { kv_heads, head_dim, .. } = self.shape;
        let row = kv_heads * head_dim;
        for (i, (k, v)) in keys.chunks_exact(row).zip(values.chunks_exact(row)).enumerate() {
            let position = table.len + i;
            let block = table.blocks[position / self.block_size] as usize;
            let slot = position % self.block_size;
            for head in 0..kv_heads {
                let first = (block * kv_heads + head) * self.block_size * head_dim;
                let from = head * head_dim..(head + 1) * head_dim;
                // Keys transposed within the block (`[head_dim][block_size]`), values as rows.
                for (d, &key) in k[from.clone()].iter().enumerate() {
                    self.keys[layer][first + d * self.block_size + slot] = key;
                }
                self.values[layer][first + slot * head_dim..][..head_dim].copy_from_slice(&v[from]);
            }
        }
    }

    /// Counts `tokens` newly written tokens as part of `table`'s sequence.
    pub fn advance(&self, table: &mut BlockTable, tokens: usize) {
        debug_assert!(table.len + tokens <= table.blocks.len() * self.block_size);
        table.len += tokens;
    }

    /// Causal self-attention of layer `layer` for every query row: row `r` attends to positions
    /// `0..=rows[r].position` of its sequence. `queries` is `[rows, heads * head_dim]` (rotated);
    /// the result has the same shape. Heads share KV heads in groups of `heads / kv_heads`.
    pub fn attend(
        &self,
        layer: usize,
        tables: &[&BlockTable],
        rows: &[QueryRow],
        queries: &[f32],
        heads: usize,
    ) -> Vec<f32> {
        let KvShape { kv_heads, head_dim, .. } = self.shape;
        let group = heads / kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (keys, values) = (&self.keys[layer], &self.values[layer]);
        let mut out = vec![0.0f32; rows.len() * heads * head_dim];
        // One item per (row, KV head): the query heads that share a KV head are consecutive, and
        // each key and value row is read once for all of them, walked block by block (no
        // division per position). Each head's arithmetic is what it would be alone; the softmax
        // uses the vectorized `exp` and divides each weight by the total once, before the sum.
        let items = out.par_chunks_mut(group * head_dim).enumerate();
        items.for_each_init(Vec::<f32>::new, |scores, (item, out)| {
            let (row, kv_head) = (item / kv_heads, item % kv_heads);
            let QueryRow { sequence, position } = rows[row];
            let length = position + 1;
            let table = tables[sequence];
            let first_query = (row * heads + kv_head * group) * head_dim;
            let queries = &queries[first_query..first_query + group * head_dim];
            // `scores` holds each head's scores in turn: `[group][length]`, then its weights.
            scores.clear();
            scores.resize(group * length, 0.0);
            for (i, (keys, count)) in self.head_blocks(keys, table, kv_head, length).enumerate() {
                for (h, query) in queries.chunks_exact(head_dim).enumerate() {
                    let scores = &mut scores[h * length + i * self.block_size..][..count];
                    block_scores(query, keys, self.block_size, scale, scores);
                }
            }
            for scores in scores.chunks_exact_mut(length) {
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0;
                for score in scores.iter_mut() {
                    *score = crate::vector_math::exp(*score - max);
                    total += *score;
                }
                scores.iter_mut().for_each(|score| *score /= total);
            }
            out.fill(0.0);
            let value_rows = self.head_blocks(values, table, kv_head, length);
            for (t, value) in
                value_rows.flat_map(|(rows, count)| rows[..count * head_dim].chunks_exact(head_dim)).enumerate()
            {
                for (h, out) in out.chunks_exact_mut(head_dim).enumerate() {
                    let weight = scores[h * length + t];
                    for (o, &v) in out.iter_mut().zip(value) {
                        *o = weight.mul_add(v, *o);
                    }
                }
            }
        });
        out
    }

    /// One KV head's blocks of `cache` (a layer's keys or values) covering positions
    /// `0..length` of `table`'s sequence, in order: each block's whole storage
    /// (`block_size · head_dim` values) and how many of its positions are in range.
    fn head_blocks<'a>(
        &self,
        cache: &'a [f32],
        table: &'a BlockTable,
        kv_head: usize,
        length: usize,
    ) -> impl Iterator<Item = (&'a [f32], usize)> + 'a {
        let KvShape { kv_heads, head_dim, .. } = self.shape;
        let block_size = self.block_size;
        let blocks = table.blocks[..length.div_ceil(block_size)].iter().enumerate();
        blocks.map(move |(i, &block)| {
            let first = (block as usize * kv_heads + kv_head) * block_size * head_dim;
            (&cache[first..first + block_size * head_dim], (length - i * block_size).min(block_size))
        })
    }
}

/// Keys scored together: one vector register of f32.
const KEYS: usize = 8;

/// `scores[s] = query · key_s · scale` for the first `scores.len()` keys of a block stored
/// transposed (`keys[d · block_size + s]`). [`KEYS`] keys at a time, each `d` adding
/// `query[d] · keys[d][s..s + KEYS]` (vertical fused multiply-adds, no horizontal sum per key)
/// into one of four partial sums so the chains overlap; a chunk reaching past the positions in
/// range reads the block's other slots and drops their scores. Slots left where the block size
/// is not a multiple of [`KEYS`] are scored one by one, in the same order of operations.
fn block_scores(query: &[f32], keys: &[f32], block_size: usize, scale: f32, scores: &mut [f32]) {
    let score = |sums: [[f32; KEYS]; 4], k: usize| ((sums[0][k] + sums[1][k]) + (sums[2][k] + sums[3][k])) * scale;
    let mut slot = 0;
    while slot < scores.len() && slot + KEYS <= block_size {
        let mut sums = [[0.0f32; KEYS]; 4];
        let add = |sum: &mut [f32; KEYS], q: f32, d: usize| {
            let column: &[f32; KEYS] =
                keys[d * block_size + slot..][..KEYS].try_into().expect("a chunk holds KEYS keys; this is a bug");
            for k in 0..KEYS {
                sum[k] = q.mul_add(column[k], sum[k]);
            }
        };
        let quads = query.chunks_exact(4);
        let rest = quads.remainder();
        for (c, quad) in quads.enumerate() {
            let [s0, s1, s2, s3] = &mut sums;
            add(s0, quad[0], 4 * c);
            add(s1, quad[1], 4 * c + 1);
            add(s2, quad[2], 4 * c + 2);
            add(s3, quad[3], 4 * c + 3);
        }
        for (p, &q) in rest.iter().enumerate() {
            add(&mut sums[p], q, query.len() - rest.len() + p);
        }
        let kept = (scores.len() - slot).min(KEYS);
        for (k, out) in scores[slot..slot + kept].iter_mut().enumerate() {
            *out = score(sums, k);
        }
        slot += KEYS;
    }
    for (s, out) in scores.iter_mut().enumerate().skip(slot) {
        let mut sums = [[0.0f32; KEYS]; 4];
        for (d, &q) in query.iter().enumerate() {
            sums[d % 4][0] = q.mul_add(keys[d * block_size + s], sums[d % 4][0]);
        }
        *out = score(sums, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape { layers: 1, kv_heads: 1, head_dim: 2 };

    #[test]
    fn the_budget_sets_the_block_count_and_blocks_come_back_on_release() {
        // 16 bytes per token, 4-token blocks: 64 bytes per block.
        let mut cache = KvCache::with_budget(SHAPE, 4, 64 * 3 + 10);
        assert_eq!((cache.total_blocks(), cache.capacity_tokens()), (3, 12));
        let mut a = BlockTable::default();
        assert!(cache.reserve(&mut a, 5));
        assert_eq!((a.blocks(), cache.free_blocks()), (2, 1));
        let mut b = BlockTable::default();
        assert!(!cache.reserve(&mut b, 8), "two blocks are not free");
        assert_eq!((b.blocks(), cache.free_blocks()), (0, 1), "a failed reserve takes nothing");
        cache.release(&mut a);
        assert_eq!((a.blocks(), a.len(), cache.free_blocks()), (0, 0, 3));
        assert!(cache.reserve(&mut b, 8));
    }

    #[test]
    fn a_published_prefix_is_shared_then_cached_then_evicted_last_block_first() {
        // Four 2-token blocks.
        let mut cache = KvCache::with_budget(SHAPE, 2, 32 * 4);
        let tokens = [1, 2, 3, 4, 5];
        let mut digests = Vec::new();
        block_digests(&mut digests, &[], &tokens, 2);
        assert_eq!(digests.len(), 2, "only full blocks are named");
        let mut a = BlockTable::default();
        assert!(cache.reserve(&mut a, 5));
        cache.advance(&mut a, 5);
        cache.publish(&mut a, &digests);
        assert_eq!(cache.lookup(&digests), PrefixHit { blocks: 2, idle: 0 });

        let mut b = BlockTable::default();
        assert_eq!(cache.attach(&mut b, &digests[..1]), 2, "one shared block of two tokens");
        assert_eq!(cache.free_blocks(), 1, "sharing takes no block");
        assert_eq!((cache.exclusive_blocks(&a), cache.exclusive_blocks(&b)), (2, 0), "a shares its first block");
        cache.release(&mut a);
        assert_eq!(cache.free_blocks(), 3, "a's private tail is free, its second block cached but free");
        assert_eq!(cache.lookup(&digests), PrefixHit { blocks: 2, idle: 1 });

        // Taking three blocks uses the plain free ones first, then evicts the cached one.
        let mut c = BlockTable::default();
        assert!(cache.reserve(&mut c, 4));
        assert_eq!(cache.lookup(&digests), PrefixHit { blocks: 2, idle: 1 }, "plain free blocks went first");
        assert!(cache.reserve(&mut c, 6));
        assert_eq!(cache.lookup(&digests), PrefixHit { blocks: 1, idle: 0 }, "b still holds the first block");
        cache.release(&mut b);
        cache.release(&mut c);
        assert_eq!(cache.lookup(&digests), PrefixHit { blocks: 1, idle: 1 });
        assert_eq!(cache.free_blocks(), 4);
    }

    #[test]
    fn digests_name_the_whole_prefix_not_just_the_block() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        block_digests(&mut a, &[], &[1, 2, 3, 4], 2);
        block_digests(&mut b, &[], &[9, 9, 3, 4], 2);
        assert_ne!(a[1], b[1], "same block tokens after a different prefix");
        let mut grown = a[..1].to_vec();
        block_digests(&mut grown, &[], &[1, 2, 3, 4, 5], 2);
        assert_eq!(grown, a, "extending computes only the new blocks");
        let mut adapted = Vec::new();
        block_digests(&mut adapted, &[7; 32], &[1, 2, 3, 4], 2);
        assert!(adapted.iter().zip(&a).all(|(x, y)| x != y), "other weights, other keys and values");
    }

    #[test]
    fn attention_is_causal_and_reads_across_blocks() {
        let mut cache = KvCache::with_budget(SHAPE, 2, 1024);
        let mut table = BlockTable::default();
        assert!(cache.reserve(&mut table, 3));
        // Keys are zero, so the weights are uniform over the visible positions.
        let keys = [0.0; 6];
        let values = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        cache.write(0, &table, &keys, &values);
        cache.advance(&mut table, 3);
        let rows: Vec<QueryRow> = (0..3).map(|position| QueryRow { sequence: 0, position }).collect();
        let out = cache.attend(0, &[&table], &rows, &[0.5; 6], 1);
        assert_eq!(out, vec![1.0, 10.0, 1.5, 15.0, 2.0, 20.0]);
    }

    #[test]
    fn a_fork_shares_full_blocks_and_copies_the_partial_one() {
        // Four 2-token blocks; a 3-token sequence holds one full block and one partial.
        let mut cache = KvCache::with_budget(SHAPE, 2, 32 * 4);
        let mut parent = BlockTable::default();
        assert!(cache.reserve(&mut parent, 3));
        let rows = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        cache.write(0, &parent, &rows, &rows);
        cache.advance(&mut parent, 3);
        let mut fork = cache.fork(&parent).unwrap();
        assert_eq!((fork.len(), fork.blocks(), cache.free_blocks()), (3, 2, 1), "one new block, for the copy");
        assert_eq!(fork.blocks[0], parent.blocks[0]);
        // Each writes its own fourth token; neither sees the other's.
        for (table, value) in [(&mut parent, 5.0), (&mut fork, 4.0)] {
            assert!(cache.reserve(table, 4));
            cache.write(0, table, &[value, 10.0 * value], &[value, 10.0 * value]);
            cache.advance(table, 1);
        }
        let rows = [QueryRow { sequence: 0, position: 3 }, QueryRow { sequence: 1, position: 3 }];
        let out = cache.attend(0, &[&parent, &fork], &rows, &[0.0; 4], 1);
        // Zero queries: each row averages its own sequence's four values.
        assert_eq!(out, vec![11.0 / 4.0, 110.0 / 4.0, 10.0 / 4.0, 100.0 / 4.0]);
        let mut whole = cache.fork(&parent).unwrap();
        assert_eq!(cache.free_blocks(), 1, "a fork at a block boundary copies nothing");
        for table in [&mut parent, &mut fork, &mut whole] {
            cache.release(table);
        }
        assert_eq!(cache.free_blocks(), 4);

        let mut small = KvCache::with_budget(SHAPE, 2, 32 * 2);
        let mut parent = BlockTable::default();
        assert!(small.reserve(&mut parent, 3));
        small.advance(&mut parent, 3);
        assert!(small.fork(&parent).is_none(), "no block is free for the copy");
        assert_eq!(small.free_blocks(), 0, "a failed fork takes nothing");
    }

    #[test]
    fn block_scores_are_the_scaled_dot_products_in_any_block_size() {
        let head_dim = 6;
        let query: Vec<f32> = (0..head_dim).map(|d| d as f32 - 2.5).collect();
        for (block_size, count) in [(16, 16), (16, 5), (11, 11), (3, 2)] {
            let key = |s: usize, d: usize| ((s * 7 + d * 3) % 5) as f32 - 2.0;
            let transposed: Vec<f32> =
                (0..head_dim * block_size).map(|i| key(i % block_size, i / block_size)).collect();
            let mut scores = vec![0.0; count];
            block_scores(&query, &transposed, block_size, 0.5, &mut scores);
            let expected: Vec<f32> =
                (0..count).map(|s| (0..head_dim).map(|d| query[d] * key(s, d)).sum::<f32>() * 0.5).collect();
            assert_eq!(scores, expected, "block size {block_size}, {count} keys");
        }
    }
}

//! The paged KV cache: keys and values of every running sequence, in fixed-size blocks carved out
//! of one allocation sized by a memory budget. A sequence holds a [`BlockTable`] (its blocks in
//! order); blocks are taken as it grows and all given back at once when it finishes, is cancelled
//! or is preempted, so memory never fragments and the budget is never exceeded.
//!
//! Attention runs directly over the blocks ([`KvCache::attend`]): no per-step copy of a sequence's
//! history, and each query row is computed independently of the others in the step, so a sequence
//! gets bit-identical results whether it runs alone, batched, or prefilled in chunks.

use rayon::prelude::*;

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

/// The blocks of one sequence, in token order, and how many tokens they hold.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
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
    /// Per layer: `[blocks, kv_heads, block_size, head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    free: Vec<u32>,
    total: usize,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("shape", &self.shape)
            .field("block_size", &self.block_size)
            .field("blocks", &self.total)
            .field("free", &self.free.len())
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
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the cache.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks no sequence holds.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Tokens the whole cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.total * self.block_size
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Makes `table` able to hold `tokens` tokens. Takes nothing and returns false when there are
    /// not enough free blocks.
    pub fn reserve(&mut self, table: &mut BlockTable, tokens: usize) -> bool {
        let needed = self.blocks_for(tokens).saturating_sub(table.blocks.len());
        if needed > self.free.len() {
            return false;
        }
        let start = self.free.len() - needed;
        table.blocks.extend(self.free.drain(start..));
        true
    }

    /// Gives every block of `table` back; the table is empty afterwards.
    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.append(&mut table.blocks);
        table.len = 0;
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
                let at = ((block * kv_heads + head) * self.block_size + slot) * head_dim;
                let from = head * head_dim..(head + 1) * head_dim;
                self.keys[layer][at..at + head_dim].copy_from_slice(&k[from.clone()]);
                self.values[layer][at..at + head_dim].copy_from_slice(&v[from]);
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
        out.par_chunks_mut(head_dim).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (item, out)| {
            let (row, head) = (item / heads, item % heads);
            let QueryRow { sequence, position } = rows[row];
            let table = tables[sequence];
            let kv_head = head / group;
            let query = &queries[item * head_dim..(item + 1) * head_dim];
            let at = |t: usize| {
                let block = table.blocks[t / self.block_size] as usize;
                ((block * kv_heads + kv_head) * self.block_size + t % self.block_size) * head_dim
            };
            scores.clear();
            scores.extend((0..=position).map(|t| dot(query, &keys[at(t)..at(t) + head_dim]) * scale));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                total += *score;
            }
            out.fill(0.0);
            for (t, &weight) in scores.iter().enumerate() {
                let weight = weight / total;
                for (o, &v) in out.iter_mut().zip(&values[at(t)..at(t) + head_dim]) {
                    *o = weight.mul_add(v, *o);
                }
            }
        });
        out
    }
}

/// Dot product with eight independent accumulators, so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] = x[i].mul_add(y[i], lanes[i]);
        }
    }
    lanes.iter().sum::<f32>() + tail
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
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..19).map(|i| (i % 3) as f32).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), plain);
    }
}

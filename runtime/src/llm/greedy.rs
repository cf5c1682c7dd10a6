//! Greedy decoding of a batch of prompts at once, each until a stop token or its own token limit,
//! with the model's batched forward pass and a KV cache sized for exactly these prompts. This is
//! for measuring a model (a fine-tuning job's held-out answers); live traffic goes through the
//! serving engine and its scheduler.

use candle_core::Tensor;

use super::kv_cache::{BlockTable, KvCache};
use super::sampling;
use crate::model::llama::{Llama, Logits, SequenceStep};
use crate::model::lora::LoraAdapter;

/// Tokens per KV block.
const BLOCK_SIZE: usize = 16;

/// A prompt, the most tokens to generate after it, and the LoRA adapter to answer with (read
/// against the model; `None`: the bare model).
#[derive(Clone, Debug)]
pub struct Prompt<'a> {
    pub tokens: Vec<u32>,
    pub max_tokens: usize,
    pub adapter: Option<&'a LoraAdapter>,
}

/// The greedy continuation of every prompt (without the stop token), in order.
pub fn generate(model: &Llama, prompts: &[Prompt<'_>], stop: &[u32]) -> candle_core::Result<Vec<Vec<u32>>> {
    let context = model.config().context_length;
    if let Some(long) = prompts.iter().find(|p| p.tokens.is_empty() || p.tokens.len() + p.max_tokens > context) {
        candle_core::bail!(
            "a prompt of {} tokens with {} to generate does not fit the context of {context}",
            long.tokens.len(),
            long.max_tokens
        );
    }
    let blocks: usize = prompts.iter().map(|p| (p.tokens.len() + p.max_tokens).div_ceil(BLOCK_SIZE)).sum();
    let shape = model.kv_shape();
    let mut cache = KvCache::with_budget(shape, BLOCK_SIZE, blocks.max(1) * BLOCK_SIZE * shape.bytes_per_token());
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::default()).collect();
    for (prompt, table) in prompts.iter().zip(&mut tables) {
        if !cache.reserve(table, prompt.tokens.len() + prompt.max_tokens) {
            candle_core::bail!("the KV cache was sized for these prompts; this is a bug");
        }
    }
    let mut outputs = vec![Vec::new(); prompts.len()];
    // What each unfinished sequence feeds next: its prompt, then its last token.
    let mut pending: Vec<Option<Vec<u32>>> =
        prompts.iter().map(|p| (p.max_tokens > 0).then(|| p.tokens.clone())).collect();
    while pending.iter().any(Option::is_some) {
        let active: Vec<usize> = (0..prompts.len()).filter(|&i| pending[i].is_some()).collect();
        let mut steps: Vec<SequenceStep<'_>> = Vec::with_capacity(active.len());
        for ((input, table), prompt) in pending.iter().zip(tables.iter_mut()).zip(prompts) {
            if let Some(tokens) = input {
                steps.push(SequenceStep { tokens, table, logits: Logits::Last, adapter: prompt.adapter });
            }
        }
        let logits: Tensor = model.forward(&mut steps, &mut cache)?;
        drop(steps);
        for (row, &i) in active.iter().enumerate() {
            let next = sampling::argmax(&logits.get(row)?.to_vec1::<f32>()?);
            let done = stop.contains(&next);
            if !done {
                outputs[i].push(next);
            }
            pending[i] = (!done && outputs[i].len() < prompts[i].max_tokens).then(|| vec![next]);
        }
    }
    Ok(outputs)
}

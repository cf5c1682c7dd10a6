//! Held-out metrics of a language model as serving runs it: the runtime's llama
//! ([`lantern_runtime::model::llama::Llama`]) with its KV cache and, for a quantized version, its
//! quantized kernels — what a user of the published version gets.
//!
//! - [`loss`]: the mean negative log-likelihood of the target tokens (each scored from the
//!   logits after the tokens before it, [`Logits::Every`]), and its perplexity.
//! - [`accuracy`]: the share of held-out questions whose greedy answer equals the reference
//!   after trimming (`eval_accuracy`).

use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::llm::greedy::{self, Prompt};
use lantern_runtime::llm::kv_cache::{BlockTable, KvCache};
use lantern_runtime::llm::sampling;
use lantern_runtime::model::llama::{Llama, Logits, SequenceStep};

use super::data::{Question, Sequence};
use super::jsonl;
use super::params::model_error;
use crate::error::Result;

/// Held-out sequences scored per forward pass.
const SCORE_CHUNK: usize = 8;
/// Held-out questions answered together.
const ANSWER_CHUNK: usize = 32;
/// Tokens per KV block.
const BLOCK_SIZE: usize = 16;

/// `eval_loss` and `eval_perplexity` over the targets of `sequences`.
pub fn loss(model: &Llama, sequences: &[Sequence]) -> Result<Vec<(String, f64)>> {
    let (mut total, mut targets) = (0.0f64, 0usize);
    for chunk in sequences.chunks(SCORE_CHUNK) {
        let tokens: usize = chunk.iter().map(|s| s.tokens.len()).sum();
        let shape = model.kv_shape();
        let blocks: usize = chunk.iter().map(|s| s.tokens.len().div_ceil(BLOCK_SIZE)).sum();
        let mut cache = KvCache::with_budget(shape, BLOCK_SIZE, blocks.max(1) * BLOCK_SIZE * shape.bytes_per_token());
        let mut tables: Vec<BlockTable> = chunk.iter().map(|_| BlockTable::default()).collect();
        for (sequence, table) in chunk.iter().zip(&mut tables) {
            if !cache.reserve(table, sequence.tokens.len()) {
                return Err(model_error(candle_core::Error::Msg("the KV cache was sized for these sequences".into())));
            }
        }
        let mut steps: Vec<SequenceStep<'_>> = chunk
            .iter()
            .zip(&mut tables)
            .map(|(s, table)| SequenceStep { tokens: &s.tokens, table, logits: Logits::Every, adapter: None })
            .collect();
        let rows = model.forward(&mut steps, &mut cache).and_then(|l| l.to_vec2::<f32>()).map_err(model_error)?;
        debug_assert_eq!(rows.len(), tokens);
        let mut rows = rows.into_iter();
        for sequence in chunk {
            let logits: Vec<Vec<f32>> = rows.by_ref().take(sequence.tokens.len()).collect();
            // Token i is predicted from the logits after token i - 1.
            for i in 1..sequence.tokens.len() {
                if sequence.targets[i] {
                    let mut row = logits[i - 1].clone();
                    total -= f64::from(sampling::score(&mut row, sequence.tokens[i], 0).logprob);
                    targets += 1;
                }
            }
        }
    }
    let loss = total / targets.max(1) as f64;
    Ok(vec![("eval_loss".to_owned(), loss), ("eval_perplexity".to_owned(), loss.exp())])
}

/// `eval_accuracy`: the share of `questions` whose greedy answer matches its reference.
pub fn accuracy(model: &Llama, codec: &TextCodec, questions: &[Question]) -> Result<(String, f64)> {
    let mut right = 0;
    for chunk in questions.chunks(ANSWER_CHUNK) {
        let prompts: Vec<Prompt<'_>> = chunk
            .iter()
            .map(|q| Prompt { tokens: q.prompt.clone(), max_tokens: q.max_tokens, adapter: None })
            .collect();
        let answers = greedy::generate(model, &prompts, codec.tokenizer().eos()).map_err(model_error)?;
        for (question, answer) in chunk.iter().zip(answers) {
            let text = codec.tokenizer().decode(&answer, true)?;
            right += usize::from(jsonl::exact_match(&text, &question.reference));
        }
    }
    Ok(("eval_accuracy".to_owned(), right as f64 / questions.len().max(1) as f64))
}

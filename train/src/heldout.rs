//! Held-out metrics of a language model as serving runs it: the runtime's llama
//! ([`lantern_runtime::model::llama::Llama`]) with its KV cache and, for a quantized version, its
//! quantized kernels — what a user of the published version gets.
//!
//! - [`loss`]: the mean negative log-likelihood of the target tokens (each scored from the
//!   logits after the tokens before it, [`Logits::Every`]), and its perplexity.
//! - [`accuracy`]: the share of held-out questions whose greedy answer equals the reference
//!   after trimming (`eval_accuracy`).
//! - [`agreement`]: the share of target tokens where a student's most likely next token is its
//!   teacher's (`eval_agreement`).

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
    for_each_target(model, sequences, |row, target| {
        total -= f64::from(sampling::score(&mut row.to_vec(), target, 0).logprob);
        targets += 1;
    })?;
    let loss = total / targets.max(1) as f64;
    Ok(vec![("eval_loss".to_owned(), loss), ("eval_perplexity".to_owned(), loss.exp())])
}

/// The most likely next token at every target of `sequences`, in order.
pub fn greedy_targets(model: &Llama, sequences: &[Sequence]) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    for_each_target(model, sequences, |row, _| tokens.push(sampling::argmax(row)))?;
    Ok(tokens)
}

/// `eval_agreement`: the share of the targets of `sequences` where `model`'s most likely next
/// token is `expected`'s (a teacher's [`greedy_targets`]).
pub fn agreement(model: &Llama, sequences: &[Sequence], expected: &[u32]) -> Result<(String, f64)> {
    let found = greedy_targets(model, sequences)?;
    let same = found.iter().zip(expected).filter(|(a, b)| a == b).count();
    Ok(("eval_agreement".to_owned(), same as f64 / found.len().max(1) as f64))
}

/// Runs `model` over `sequences` (a few at a time, each in its own KV blocks) and calls `each`
/// with the logits that predict every target token, and that token, in order: sequence by
/// sequence, position by position (token `i` predicted by the logits after token `i − 1`).
pub fn for_each_target(model: &Llama, sequences: &[Sequence], mut each: impl FnMut(&[f32], u32)) -> Result<()> {
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
        let logits = model.forward(&mut steps, &mut cache).map_err(model_error)?;
        let (rows, vocab) = logits.dims2().map_err(model_error)?;
        debug_assert_eq!(rows, tokens);
        let logits = logits.flatten_all().and_then(|l| l.to_vec1::<f32>()).map_err(model_error)?;
        let mut start = 0;
        for sequence in chunk {
            for i in 1..sequence.tokens.len() {
                if sequence.targets[i] {
                    let row = start + i - 1;
                    each(&logits[row * vocab..(row + 1) * vocab], sequence.tokens[i]);
                }
            }
            start += sequence.tokens.len();
        }
    }
    Ok(())
}

/// `eval_accuracy`: the share of `questions` whose greedy answer matches its reference; none
/// without questions (data of plain texts has no references).
pub fn accuracy(model: &Llama, codec: &TextCodec, questions: &[Question]) -> Result<Option<(String, f64)>> {
    if questions.is_empty() {
        return Ok(None);
    }
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
    Ok(Some(("eval_accuracy".to_owned(), right as f64 / questions.len() as f64)))
}

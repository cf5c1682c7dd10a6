//! Choosing the next token from logits: greedy, or temperature sampling narrowed by top-k and
//! top-p, after the repetition, presence and frequency penalties and the logit bias; seeded for
//! reproducibility, and reporting log-probabilities when asked. Pure over plain slices, and in
//! place: no copy or sort of the whole vocabulary per token (see [`nucleus`]).
//!
//! The reported log-probabilities are those of the distribution sampled from: the log-softmax of
//! the logits after the penalties, the bias and any mask the caller applied (`-inf` logits), at
//! the request's temperature (1 when greedy). Top-k and top-p narrow which tokens can be drawn;
//! they do not renormalize what is reported.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Most alternatives reported per token (OpenAI's `top_logprobs` bound).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Bound on a logit bias, as OpenAI's API sets it.
const MAX_LOGIT_BIAS: f32 = 100.0;
/// Bound on the presence and frequency penalties, as OpenAI's API sets it.
const MAX_PENALTY: f32 = 2.0;

/// Sampling parameters of one request (OpenAI / vLLM names and meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`.
    pub top_p: f32,
    /// Above 1 discourages tokens already in the sequence, prompt included (1 disables).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token generated so far (OpenAI, −2..2).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (OpenAI, −2..2).
    pub frequency_penalty: f32,
    /// Added to the logits of the named tokens (OpenAI's `logit_bias`, −100..100).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each drawn token's log-probability and this many of the most likely alternatives
    /// (0..=[`MAX_TOP_LOGPROBS`]); `None` reports nothing.
    pub logprobs: Option<usize>,
    /// Seed of the sampling RNG; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Refuses values that have no meaning for a model of `vocab_size` tokens; the message names
    /// the field and the allowed range.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return Err(Error::invalid(format!("temperature must be between 0 and 100, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k must be at least 1"));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(Error::invalid(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            )));
        }
        for (name, penalty) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&penalty) {
                return Err(Error::invalid(format!("{name} must be between -2 and 2, got {penalty}")));
            }
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= vocab_size {
                return Err(Error::invalid(format!(
                    "logit_bias names token {token}, outside this model's vocabulary of {vocab_size} tokens"
                )));
            }
            if !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&bias) {
                return Err(Error::invalid(format!("logit_bias values must be between -100 and 100, got {bias}")));
            }
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(Error::invalid(format!(
                "at most {MAX_TOP_LOGPROBS} top logprobs may be asked for, got {}",
                self.logprobs.unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// A drawn token and, when asked for, its log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<Logprobs>,
}

/// Log-probabilities around one drawn token.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    /// The drawn token's.
    pub logprob: f32,
    /// The most likely tokens and theirs, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// Draws tokens for one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for validated `params`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// A sampler like this one for another of the request's sequences (`n` > 1): the same
    /// parameters, its own draws (seeded from the seed and `index` where there is a seed).
    pub fn sibling(&self, index: usize) -> Self {
        let seed = self.params.seed.map(|seed| seed.wrapping_add(index as u64));
        Self::new(SamplingParams { seed, ..self.params.clone() })
    }

    /// The next token after `prompt` and `output` (the tokens generated so far), from `logits`
    /// (modified in place: they end up holding the sampling weights).
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32], output: &[u32]) -> Sampled {
        let params = &self.params;
        penalize_repetition(logits, prompt.iter().chain(output), params.repetition_penalty);
        penalize_output(logits, output, params.presence_penalty, params.frequency_penalty);
        for &(token, bias) in &params.logit_bias {
            logits[token as usize] += bias;
        }
        let greedy = params.temperature == 0.0 || params.top_k == Some(1);
        if greedy && params.logprobs.is_none() {
            return Sampled { token: argmax(logits), logprobs: None };
        }
        let greedy_token = greedy.then(|| argmax(logits));
        // The weights `e^((logit − max) / T)` in place of the logits: the softmax, unnormalized.
        let temperature = if greedy { 1.0 } else { params.temperature };
        let total = softmax_weights(logits, temperature);
        let token = match (greedy_token, params.top_k, params.top_p) {
            (Some(token), _, _) => token,
            // The whole distribution: drawn straight from the weights, in token order.
            (None, None, p) if p >= 1.0 => self.draw(logits.iter().enumerate().map(|(t, &w)| (t as u32, w)), total),
            (None, top_k, top_p) => {
                let candidates = nucleus(logits, total, top_k, top_p);
                let mass = candidates.iter().map(|&(_, w)| f64::from(w)).sum();
                self.draw(candidates.into_iter(), mass)
            }
        };
        let logprobs = self.params.logprobs.map(|k| logprobs(logits, total, token, k));
        Sampled { token, logprobs }
    }

    /// A token from `(token, weight)` pairs whose weights add up to `mass`; never one of weight 0
    /// (a masked token), even where rounding leaves the point past the end.
    fn draw(&mut self, candidates: impl Iterator<Item = (u32, f32)>, mass: f64) -> u32 {
        let mut point = self.rng.random::<f64>() * mass;
        let mut last = 0;
        for (token, weight) in candidates.filter(|&(_, weight)| weight > 0.0) {
            point -= f64::from(weight);
            last = token;
            if point <= 0.0 {
                return token;
            }
        }
        last
    }
}

/// How likely the model finds `token` after the tokens before it, with the `k` most likely
/// alternatives: the log-softmax of its own `logits`, at temperature 1 with nothing added (how a
/// prompt token is scored). `logits` end up holding the softmax weights.
pub fn score(logits: &mut [f32], token: u32, k: usize) -> Logprobs {
    let total = softmax_weights(logits, 1.0);
    logprobs(logits, total, token, k)
}

/// `token`'s log-probability and the `k` most likely tokens' from softmax `weights` adding up to
/// `total`.
fn logprobs(weights: &[f32], total: f64, token: u32, k: usize) -> Logprobs {
    Logprobs {
        logprob: log_probability(weights[token as usize], total),
        top: most_likely(weights, k).into_iter().map(|(t, w)| (t, log_probability(w, total))).collect(),
    }
}

/// Replaces `logits` by `e^((logit − max) / temperature)` and returns their sum. A masked
/// (`-inf`) logit gets weight 0.
fn softmax_weights(logits: &mut [f32], temperature: f32) -> f64 {
    let max = logits[argmax(logits) as usize];
    let mut total = 0.0f64;
    for weight in logits.iter_mut() {
        *weight = crate::vector_math::exp((*weight - max) / temperature);
        total += f64::from(*weight);
    }
    total
}

/// `ln(weight / total)`; `-inf` for a weight of 0.
fn log_probability(weight: f32, total: f64) -> f32 {
    (f64::from(weight) / total).ln() as f32
}

/// The `k` largest weights and their tokens, largest first (ties: lower id first), in one pass
/// that keeps a short sorted list.
fn most_likely(weights: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (token, &weight) in weights.iter().enumerate() {
        if top.len() == k && weight <= top[k - 1].1 {
            continue;
        }
        let at = top.partition_point(|&(_, w)| w >= weight);
        top.insert(at, (token as u32, weight));
        top.truncate(k);
    }
    top
}

/// The candidates top-k and top-p keep, most likely first, from the softmax `weights` (adding up
/// to `total`). Only the tokens within a factor of 10⁻⁴ of the most likely are gathered and
/// sorted, not the whole vocabulary; where they do not hold the `top_k` tokens or the nucleus
/// (a flat distribution, `top_p` near 1), every token is.
fn nucleus(weights: &[f32], total: f64, top_k: Option<usize>, top_p: f32) -> Vec<(u32, f32)> {
    match narrowed(weights, total, top_k, top_p, 1e-4) {
        (candidates, true) => candidates,
        (_, false) => narrowed(weights, total, top_k, top_p, 0.0).0,
    }
}

/// [`nucleus`] over the tokens whose weight is at least `cutoff`, and whether those held what
/// top-k and top-p keep (always, for a cutoff of 0).
fn narrowed(weights: &[f32], total: f64, top_k: Option<usize>, top_p: f32, cutoff: f32) -> (Vec<(u32, f32)>, bool) {
    let mut candidates: Vec<(u32, f32)> =
        weights.iter().enumerate().filter(|&(_, &w)| w >= cutoff).map(|(t, &w)| (t as u32, w)).collect();
    let everything = cutoff == 0.0;
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let mut total = total;
    if let Some(k) = top_k {
        if candidates.len() < k && !everything {
            return (candidates, false);
        }
        candidates.truncate(k);
        total = candidates.iter().map(|&(_, w)| f64::from(w)).sum();
    }
    // Nucleus: the shortest prefix whose probability reaches top_p.
    let mut kept = 0.0f64;
    let reached = candidates.iter().position(|&(_, weight)| {
        kept += f64::from(weight) / total;
        kept >= f64::from(top_p)
    });
    match reached {
        Some(last) => candidates.truncate(last + 1),
        // Not reached among the gathered tokens: the rest may belong to the nucleus.
        None if !everything && top_k.is_none() => return (candidates, false),
        // Within the top k, or over every token: short only by rounding; all are kept.
        None => {}
    }
    (candidates, true)
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Divides positive logits of seen tokens by `penalty` and multiplies negative ones, so a seen
/// token always becomes less likely (the CTRL / Hugging Face rule).
fn penalize_repetition<'a>(logits: &mut [f32], seen_tokens: impl Iterator<Item = &'a u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &token in seen_tokens {
        if let Some(logit) = logits.get_mut(token as usize)
            && seen.insert(token)
        {
            *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
        }
    }
}

/// OpenAI's penalties over the generated tokens: `presence` once per distinct token, `frequency`
/// once per occurrence.
fn penalize_output(logits: &mut [f32], output: &[u32], presence: f32, frequency: f32) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &token in output {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit -= frequency;
            if seen.insert(token) {
                *logit -= presence;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.0]
    }

    fn sampler(params: SamplingParams) -> Sampler {
        params.validate(5).unwrap();
        Sampler::new(params)
    }

    /// The token drawn from `logits()` after `output`, with no prompt.
    fn token(sampler: &mut Sampler, output: &[u32]) -> u32 {
        sampler.sample(&mut logits(), &[], output).token
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        assert_eq!(token(&mut sampler(SamplingParams::greedy()), &[]), 1);
        let top1 = SamplingParams { top_k: Some(1), seed: Some(1), ..SamplingParams::default() };
        assert_eq!(token(&mut sampler(top1), &[]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_a_sibling_its_own() {
        let params = SamplingParams { temperature: 1.5, seed: Some(42), ..SamplingParams::default() };
        let draw = |s: &mut Sampler| (0..50).map(|_| token(s, &[])).collect::<Vec<_>>();
        let first = draw(&mut sampler(params.clone()));
        assert_eq!(first, draw(&mut sampler(params.clone())));
        assert!(first.iter().collect::<std::collections::HashSet<_>>().len() > 1, "temperature 1.5 never varied");
        let sibling = sampler(params.clone()).sibling(1);
        assert_eq!(sibling.params.seed, Some(43));
        assert_ne!(draw(&mut sampler(params).sibling(1)), first);
    }

    #[test]
    fn top_k_and_top_p_narrow_the_choice() {
        let top2 = SamplingParams { temperature: 5.0, top_k: Some(2), seed: Some(3), ..SamplingParams::default() };
        let mut s = sampler(top2);
        assert!((0..200).all(|_| matches!(token(&mut s, &[]), 1 | 2)));
        let nucleus = SamplingParams { temperature: 1.0, top_p: 0.01, seed: Some(3), ..SamplingParams::default() };
        let mut s = sampler(nucleus);
        assert!((0..200).all(|_| token(&mut s, &[]) == 1));
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let params = SamplingParams { temperature: 100.0, seed: Some(5), ..SamplingParams::default() };
        let mut s = sampler(params);
        for _ in 0..500 {
            let mut masked = logits();
            masked[1] = f32::NEG_INFINITY;
            masked[4] = f32::NEG_INFINITY;
            assert!(!matches!(s.sample(&mut masked, &[], &[]).token, 1 | 4));
        }
    }

    #[test]
    fn the_gathered_candidates_are_what_sorting_every_token_keeps() {
        // A peaked distribution (most tokens far below the cutoff) and a flat one (none are).
        for spread in [40.0f32, 0.001] {
            let weights: Vec<f32> =
                (0..5_000).map(|i| (-spread * ((i * 7_919) % 5_000) as f32 / 5_000.0).exp()).collect();
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            for (top_k, top_p) in [(None, 0.5), (None, 0.999), (Some(3), 1.0), (Some(3), 0.5), (Some(4_000), 0.9)] {
                let every_token = narrowed(&weights, total, top_k, top_p, 0.0).0;
                assert_eq!(nucleus(&weights, total, top_k, top_p), every_token, "{spread} {top_k:?} {top_p}");
            }
        }
    }

    #[test]
    fn repetition_penalty_moves_away_from_seen_tokens_of_prompt_and_output() {
        let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        // Token 1 (3.0) halves to 1.5, below token 2 (2.5).
        assert_eq!(token(&mut sampler(params.clone()), &[1, 1]), 2);
        assert_eq!(sampler(params).sample(&mut logits(), &[1], &[]).token, 2);
        let mut negative = vec![-1.0, -2.0];
        penalize_repetition(&mut negative, [0].iter(), 3.0);
        assert_eq!(negative, vec![-3.0, -2.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let mut penalized = logits();
        penalize_output(&mut penalized, &[1, 1, 1, 2], 0.5, 0.25);
        assert_eq!(penalized, vec![1.0, 3.0 - 0.5 - 0.75, 2.5 - 0.5 - 0.25, -1.0, 0.0]);
        // In the prompt, token 1 is not penalized; generated three times, it loses to token 2.
        let params = SamplingParams { frequency_penalty: 0.3, ..SamplingParams::greedy() };
        assert_eq!(sampler(params.clone()).sample(&mut logits(), &[1, 1, 1], &[]).token, 1);
        assert_eq!(token(&mut sampler(params), &[1, 1]), 2);
    }

    #[test]
    fn logit_bias_moves_the_named_tokens() {
        let params = SamplingParams { logit_bias: vec![(3, 5.0), (1, -100.0)], ..SamplingParams::greedy() };
        assert_eq!(token(&mut sampler(params), &[]), 3);
    }

    #[test]
    fn logprobs_are_the_log_softmax_at_the_temperature_with_the_most_likely_alternatives() {
        let log_softmax = |temperature: f32| -> Vec<f32> {
            let scaled: Vec<f64> = logits().iter().map(|&l| f64::from(l / temperature)).collect();
            let total: f64 = scaled.iter().map(|l| l.exp()).sum();
            scaled.iter().map(|l| (l - total.ln()) as f32).collect()
        };
        for (params, temperature) in [
            (SamplingParams { logprobs: Some(3), ..SamplingParams::greedy() }, 1.0),
            (SamplingParams { logprobs: Some(2), temperature: 0.5, seed: Some(1), ..SamplingParams::default() }, 0.5),
        ] {
            let expected = log_softmax(temperature);
            let k = params.logprobs.unwrap();
            let sampled = sampler(params).sample(&mut logits(), &[], &[]);
            let logprobs = sampled.logprobs.unwrap();
            assert!((logprobs.logprob - expected[sampled.token as usize]).abs() < 1e-5, "{logprobs:?}");
            let tokens: Vec<u32> = logprobs.top.iter().map(|&(t, _)| t).collect();
            assert_eq!(tokens, [1, 2, 0][..k]);
            for (token, logprob) in logprobs.top {
                assert!((logprob - expected[token as usize]).abs() < 1e-5);
            }
        }
        let chosen_only = SamplingParams { logprobs: Some(0), ..SamplingParams::greedy() };
        assert_eq!(sampler(chosen_only).sample(&mut logits(), &[], &[]).logprobs.unwrap().top, vec![]);
        assert_eq!(sampler(SamplingParams::greedy()).sample(&mut logits(), &[], &[]).logprobs, None);
    }

    #[test]
    fn a_scored_token_gets_the_plain_log_softmax() {
        let total: f64 = logits().iter().map(|&l| f64::from(l).exp()).sum();
        let scored = score(&mut logits(), 3, 2);
        assert!((f64::from(scored.logprob) - (-1.0 - total.ln())).abs() < 1e-5, "{scored:?}");
        assert_eq!(scored.top.iter().map(|&(t, _)| t).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn the_most_likely_are_found_in_one_pass_with_ties_to_the_lower_id() {
        let weights = [0.1, 0.5, 0.5, 0.0, 0.9, 0.2];
        assert_eq!(most_likely(&weights, 3), vec![(4, 0.9), (1, 0.5), (2, 0.5)]);
        assert_eq!(most_likely(&weights, 10).len(), 6);
        assert_eq!(most_likely(&weights, 0), vec![]);
    }

    #[test]
    fn invalid_values_are_refused_by_name() {
        for (params, field) in [
            (SamplingParams { temperature: -0.5, ..SamplingParams::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..SamplingParams::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..SamplingParams::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..SamplingParams::default() }, "top_p"),
            (SamplingParams { top_k: Some(0), ..SamplingParams::default() }, "top_k"),
            (SamplingParams { repetition_penalty: 0.0, ..SamplingParams::default() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 2.5, ..SamplingParams::default() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: f32::NAN, ..SamplingParams::default() }, "frequency_penalty"),
            (SamplingParams { logit_bias: vec![(5, 1.0)], ..SamplingParams::default() }, "vocabulary of 5"),
            (SamplingParams { logit_bias: vec![(0, 101.0)], ..SamplingParams::default() }, "logit_bias"),
            (SamplingParams { logprobs: Some(21), ..SamplingParams::default() }, "top logprobs"),
        ] {
            let err = params.validate(5).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}

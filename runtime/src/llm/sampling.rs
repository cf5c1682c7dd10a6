//! Choosing the next token from logits: greedy, or temperature sampling narrowed by top-k and
//! top-p, after a repetition penalty; seeded for reproducibility. Pure over plain slices, and
//! in place: no copy or sort of the whole vocabulary per token (see [`nucleus`]).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Sampling parameters of one request (OpenAI / vLLM names and meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`.
    pub top_p: f32,
    /// Above 1 discourages tokens already in the sequence (1 disables).
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG; `None` draws one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: 1.0, repetition_penalty: 1.0, seed: None }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Refuses values that have no meaning; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
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
        Ok(())
    }
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

    /// The next token after `previous`, from `logits` (modified in place).
    pub fn sample(&mut self, logits: &mut [f32], previous: &[u32]) -> u32 {
        penalize_repetition(logits, previous, self.params.repetition_penalty);
        if self.params.temperature == 0.0 || self.params.top_k == Some(1) {
            return argmax(logits);
        }
        // The weights `e^((logit − max) / T)` in place of the logits: the softmax, unnormalized.
        let max = logits[argmax(logits) as usize];
        let mut total = 0.0f64;
        for weight in logits.iter_mut() {
            *weight = crate::vector_math::exp((*weight - max) / self.params.temperature);
            total += f64::from(*weight);
        }
        let candidates = match (self.params.top_k, self.params.top_p) {
            // The whole distribution: drawn straight from the weights, in token order.
            (None, p) if p >= 1.0 => return self.draw(logits.iter().enumerate().map(|(t, &w)| (t as u32, w)), total),
            (top_k, top_p) => nucleus(logits, total, top_k, top_p),
        };
        let mass = candidates.iter().map(|&(_, w)| f64::from(w)).sum();
        self.draw(candidates.into_iter(), mass)
    }

    /// A token from `(token, weight)` pairs whose weights add up to `mass`.
    fn draw(&mut self, candidates: impl Iterator<Item = (u32, f32)>, mass: f64) -> u32 {
        let mut point = self.rng.random::<f64>() * mass;
        let mut last = 0;
        for (token, weight) in candidates {
            point -= f64::from(weight);
            if point <= 0.0 {
                return token;
            }
            if weight > 0.0 {
                last = token;
            }
        }
        last
    }
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
fn penalize_repetition(logits: &mut [f32], previous: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &token in previous {
        if let Some(logit) = logits.get_mut(token as usize)
            && seen.insert(token)
        {
            *logit = if *logit > 0.0 { *logit / penalty } else { *logit * penalty };
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
        params.validate().unwrap();
        Sampler::new(params)
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        assert_eq!(sampler(SamplingParams::greedy()).sample(&mut logits(), &[]), 1);
        let top1 = SamplingParams { top_k: Some(1), seed: Some(1), ..SamplingParams::default() };
        assert_eq!(sampler(top1).sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let params = SamplingParams { temperature: 1.5, seed: Some(42), ..SamplingParams::default() };
        let draw = |params: &SamplingParams| {
            let mut s = sampler(params.clone());
            (0..50).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        assert!(
            draw(&params).iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "temperature 1.5 never varied"
        );
    }

    #[test]
    fn top_k_and_top_p_narrow_the_choice() {
        let top2 = SamplingParams { temperature: 5.0, top_k: Some(2), seed: Some(3), ..SamplingParams::default() };
        let mut s = sampler(top2);
        assert!((0..200).all(|_| matches!(s.sample(&mut logits(), &[]), 1 | 2)));
        let nucleus = SamplingParams { temperature: 1.0, top_p: 0.01, seed: Some(3), ..SamplingParams::default() };
        let mut s = sampler(nucleus);
        assert!((0..200).all(|_| s.sample(&mut logits(), &[]) == 1));
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
    fn repetition_penalty_moves_away_from_seen_tokens() {
        let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        // Token 1 (3.0) halves to 1.5, below token 2 (2.5).
        assert_eq!(sampler(params).sample(&mut logits(), &[1, 1]), 2);
        let mut negative = vec![-1.0, -2.0];
        penalize_repetition(&mut negative, &[0], 3.0);
        assert_eq!(negative, vec![-3.0, -2.0]);
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
        ] {
            let err = params.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}

//! BERT sentence embeddings (the sentence-transformers recipe): the encoder over a batch of token
//! sequences padded to the longest, masked mean pooling over each sequence's real tokens, then L2
//! normalization. Weights from an HF checkpoint (`config.json` + safetensors), tensor names as
//! HF writes them (`embeddings.word_embeddings`, `encoder.layer.{i}.attention.self.query`, …,
//! with or without a `bert.` prefix).

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::llm::tokenizer::Tokenizer;

/// The checkpoint's `config.json` (the fields the encoder needs).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_activation() -> String {
    "gelu".into()
}

fn default_type_vocab() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

impl Config {
    /// Refuses what this implementation does not compute.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} is not supported (exact gelu only)", self.hidden_act));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder with mean pooling.
pub struct Bert {
    config: Config,
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

impl Bert {
    /// Loads the encoder from `vb` (HF names).
    pub fn load(vb: VarBuilder<'_>, config: &Config) -> candle_core::Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let hidden = config.hidden_size;
        let norm = |vb: VarBuilder<'_>| candle_nn::layer_norm(hidden, config.layer_norm_eps, vb);
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let layer = vb.pp(format!("encoder.layer.{i}"));
                let attention = layer.pp("attention");
                Ok(Layer {
                    query: candle_nn::linear(hidden, hidden, attention.pp("self.query"))?,
                    key: candle_nn::linear(hidden, hidden, attention.pp("self.key"))?,
                    value: candle_nn::linear(hidden, hidden, attention.pp("self.value"))?,
                    attention_output: candle_nn::linear(hidden, hidden, attention.pp("output.dense"))?,
                    attention_norm: norm(attention.pp("output.LayerNorm"))?,
                    intermediate: candle_nn::linear(hidden, config.intermediate_size, layer.pp("intermediate.dense"))?,
                    output: candle_nn::linear(config.intermediate_size, hidden, layer.pp("output.dense"))?,
                    output_norm: norm(layer.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            word_embeddings: candle_nn::embedding(config.vocab_size, hidden, embeddings.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                config.max_position_embeddings,
                hidden,
                embeddings.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                config.type_vocab_size,
                hidden,
                embeddings.pp("token_type_embeddings"),
            )?,
            embeddings_norm: norm(embeddings.pp("LayerNorm"))?,
            layers,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One unit-length embedding per sequence of token ids (each at most
    /// `max_position_embeddings` long and not empty).
    pub fn embed(&self, sequences: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if sequences.iter().any(Vec::is_empty) || longest > self.config.max_position_embeddings {
            candle_core::bail!("sequences must hold 1 to {} tokens", self.config.max_position_embeddings);
        }
        let batch = sequences.len();
        let mut ids = vec![0u32; batch * longest];
        let mut mask = vec![0f32; batch * longest];
        for (i, sequence) in sequences.iter().enumerate() {
            ids[i * longest..i * longest + sequence.len()].copy_from_slice(sequence);
            mask[i * longest..i * longest + sequence.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (batch, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, longest), &self.device)?;
        let positions = Tensor::arange(0u32, longest as u32, &self.device)?;
        let x = self
            .word_embeddings
            .forward(&ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?
            .broadcast_add(&self.token_type_embeddings.forward(&Tensor::zeros(1, DType::U32, &self.device)?)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        // Padding gets the lowest score before softmax, as HF does: [batch, 1, 1, longest].
        let bias = ((1.0 - &mask)? * f64::from(f32::MIN))?.unsqueeze(1)?.unsqueeze(1)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias)?;
        }
        // Mean over each sequence's real tokens, then unit length.
        let mask = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&mask)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum(1)?)?;
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        pooled.broadcast_div(&norms)?.to_vec2::<f32>()
    }

    fn layer(&self, layer: &Layer, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, length, hidden) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let head_dim = hidden / heads;
        let split = |t: Tensor| t.reshape((batch, length, heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(layer.query.forward(x)?)?;
        let k = split(layer.key.forward(x)?)?;
        let v = split(layer.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, length, hidden))?;
        let attended = layer.attention_norm.forward(&(layer.attention_output.forward(&context)? + x)?)?;
        let intermediate = gelu(&layer.intermediate.forward(&attended)?)?;
        layer.output_norm.forward(&(layer.output.forward(&intermediate)? + &attended)?)
    }
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, split across the threads. candle's
/// `gelu_erf` calls libm's scalar `erff` per value (10.6% of an embedding profile);
/// [`crate::vector_math::erf`] is a rational function the compiler vectorizes.
fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    let mut values = x.flatten_all()?.to_vec1::<f32>()?;
    values.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            *v = 0.5 * *v * (1.0 + crate::vector_math::erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
    Tensor::from_vec(values, x.shape(), x.device())
}

/// What a [`SentenceEncoder`] is asked to embed.
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderInput {
    /// Texts, tokenized with the model's special tokens.
    Texts(Vec<String>),
    /// Token ids, embedded as given (as from the model's tokenizer, special tokens included).
    Tokens(Vec<Vec<u32>>),
}

impl EncoderInput {
    /// How many inputs: one embedding each.
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(texts) => texts.len(),
            Self::Tokens(sequences) => sequences.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sentence encoder: the tokenizer, its length limit and the model.
pub struct SentenceEncoder {
    bert: Bert,
    tokenizer: Tokenizer,
    max_tokens: usize,
}

impl SentenceEncoder {
    /// `max_tokens` is capped by the model's position table.
    pub fn new(bert: Bert, tokenizer: Tokenizer, max_tokens: usize) -> Self {
        let max_tokens = max_tokens.min(bert.config.max_position_embeddings);
        Self { bert, tokenizer, max_tokens }
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.bert.config.hidden_size
    }

    /// The token sequences `input` asks to embed: texts tokenized with the special tokens the
    /// model expects, token ids as given. Refuses an empty list, an empty input, a token id
    /// outside the vocabulary and an input over the length limit, naming which one.
    pub fn sequences(&self, input: &EncoderInput) -> Result<Vec<Vec<u32>>> {
        if input.is_empty() {
            return Err(Error::invalid("no input to embed"));
        }
        let sequences = match input {
            EncoderInput::Texts(texts) => texts
                .iter()
                .enumerate()
                .map(|(index, text)| match text.is_empty() {
                    true => Err(Error::invalid(format!("input {index} is empty"))),
                    false => self.tokenizer.encode_with_special_tokens(text),
                })
                .collect::<Result<Vec<_>>>()?,
            EncoderInput::Tokens(sequences) => {
                let vocab = self.bert.config.vocab_size;
                for (index, ids) in sequences.iter().enumerate() {
                    if ids.is_empty() {
                        return Err(Error::invalid(format!("input {index} is empty")));
                    }
                    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(Error::invalid(format!(
                            "input {index} has token {id}, outside this model's vocabulary of {vocab} tokens"
                        )));
                    }
                }
                sequences.clone()
            }
        };
        if let Some((index, ids)) = sequences.iter().enumerate().find(|(_, ids)| ids.len() > self.max_tokens) {
            return Err(Error::invalid(format!(
                "input {index} has {} tokens; this model embeds at most {}",
                ids.len(),
                self.max_tokens
            )));
        }
        Ok(sequences)
    }

    /// Unit-length embeddings of tokenized sequences, computed as one padded batch.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.bert.embed(sequences).map_err(|e| Error::ModelFile(format!("bert forward: {e}")))
    }

    /// Unit-length embeddings of `texts` and the number of tokens they took, as one batch.
    pub fn encode(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize)> {
        let sequences = self.sequences(&EncoderInput::Texts(texts.to_vec()))?;
        let tokens = sequences.iter().map(Vec::len).sum();
        Ok((self.embed(&sequences)?, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_agrees_with_candles_exact_gelu() {
        let values: Vec<f32> = (0..16_001).map(|i| (i as f32 - 8_000.0) / 1_000.0).collect();
        let x = Tensor::from_vec(values.clone(), (values.len(),), &Device::Cpu).unwrap();
        let ours = gelu(&x).unwrap().to_vec1::<f32>().unwrap();
        let candle = x.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        for ((v, a), b) in values.iter().zip(&ours).zip(&candle) {
            assert!((a - b).abs() <= 1.6e-6 * v.abs().max(1.0), "gelu({v}): {a} vs candle's {b}");
        }
    }
}

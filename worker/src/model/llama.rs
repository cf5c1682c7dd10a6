//! The llama architecture (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU) with
//! weights from GGUF, quantized or not, and a forward pass that runs several sequences in one
//! step: every linear layer multiplies the tokens of all sequences together (one read of the
//! weights per step, which is what makes batched decoding faster than one stream at a time), while
//! attention runs per sequence against that sequence's own KV cache.
//!
//! GGUF tensor names follow llama.cpp (`token_embd`, `blk.{i}.attn_q`, …, `output_norm`,
//! `output`, tied to `token_embd` when absent); rotary embeddings are the interleaved form GGUF
//! llama files are converted for.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};

/// Hyper-parameters, as the GGUF metadata states them.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub context_length: usize,
}

impl Config {
    /// Reads `llama.*` metadata.
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let get = |key: &str| metadata.get(key).ok_or_else(|| invalid(format!("the GGUF file has no {key}")));
        let usize_of = |key: &str| -> Result<usize> {
            get(key)?.to_u32().map(|v| v as usize).map_err(|e| invalid(format!("{key}: {e}")))
        };
        let architecture = get("general.architecture")?.to_string().map_err(|e| invalid(e.to_string()))?;
        if architecture != "llama" {
            return Err(invalid(format!("architecture {architecture:?} is not llama")));
        }
        let hidden_size = usize_of("llama.embedding_length")?;
        let heads = usize_of("llama.attention.head_count")?;
        let kv_heads = usize_of("llama.attention.head_count_kv").unwrap_or(heads);
        let head_dim = usize_of("llama.rope.dimension_count").unwrap_or(hidden_size / heads.max(1));
        let config = Self {
            vocab_size: match metadata.get("llama.vocab_size") {
                Some(v) => v.to_u32().map_err(|e| invalid(e.to_string()))? as usize,
                None => get("tokenizer.ggml.tokens")?.to_vec().map_err(|e| invalid(e.to_string()))?.len(),
            },
            hidden_size,
            layers: usize_of("llama.block_count")?,
            heads,
            kv_heads,
            head_dim,
            rope_theta: metadata.get("llama.rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0),
            rms_eps: get("llama.attention.layer_norm_rms_epsilon")?.to_f32().map_err(|e| invalid(e.to_string()))?
                as f64,
            context_length: usize_of("llama.context_length")?,
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(invalid(format!("inconsistent attention shape: {config:?}")));
        }
        Ok(config)
    }
}

fn invalid(reason: String) -> Error {
    Error::ModelFile(format!("llama GGUF: {reason}"))
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
}

/// A loaded llama model.
pub struct Llama {
    config: Config,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
}

/// One sequence's keys and values, per layer: `[kv_heads, tokens, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct SequenceCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl SequenceCache {
    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's share of a step: its new tokens and its cache.
pub struct SequenceStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SequenceCache,
}

impl Llama {
    /// Loads the model a GGUF file describes.
    pub fn from_gguf<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R, device: &Device) -> Result<Self> {
        let config = Config::from_gguf(&content.metadata)?;
        let mut tensor =
            |name: &str| content.tensor(reader, name, device).map_err(|e| invalid(format!("tensor {name}: {e}")));
        let dense = |qtensor: &candle_core::quantized::QTensor, name: &str| {
            qtensor.dequantize(device).map_err(|e| invalid(format!("tensor {name}: {e}")))
        };
        let matmul =
            |qtensor, name: &str| QMatMul::from_qtensor(qtensor).map_err(|e| invalid(format!("tensor {name}: {e}")));
        let token_embd = tensor("token_embd.weight")?;
        let embeddings = dense(&token_embd, "token_embd.weight")?;
        let norm = dense(&tensor("output_norm.weight")?, "output_norm.weight")?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => matmul(tensor("output.weight")?, "output.weight")?,
            false => matmul(token_embd, "token_embd.weight")?,
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut linear = |suffix: &str| {
                let name = format!("blk.{i}.{suffix}.weight");
                matmul(tensor(&name)?, &name)
            };
            let (wq, wk, wv, wo) = (linear("attn_q")?, linear("attn_k")?, linear("attn_v")?, linear("attn_output")?);
            let (w_gate, w_up, w_down) = (linear("ffn_gate")?, linear("ffn_up")?, linear("ffn_down")?);
            let attn_norm = dense(&tensor(&format!("blk.{i}.attn_norm.weight"))?, "attn_norm")?;
            let ffn_norm = dense(&tensor(&format!("blk.{i}.ffn_norm.weight"))?, "ffn_norm")?;
            layers.push(Layer { attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down });
        }
        let (cos, sin) = rotary_tables(&config, device).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { config, embeddings, layers, norm, output, cos, sin })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one step for several sequences: appends each sequence's `tokens` to its cache and
    /// returns the logits after each sequence's last token, `[sequences, vocab]`.
    pub fn forward(&self, steps: &mut [SequenceStep<'_>]) -> candle_core::Result<Tensor> {
        let device = self.embeddings.device();
        let all: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if steps.iter().any(|s| s.tokens.is_empty()) {
            candle_core::bail!("every sequence in a step needs at least one token");
        }
        for step in steps.iter() {
            if step.cache.len + step.tokens.len() > self.config.context_length {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the context of {}",
                    step.cache.len + step.tokens.len(),
                    self.config.context_length
                );
            }
        }
        let ids = Tensor::new(all.as_slice(), device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_eps as f32)?;
            let attention = self.attention(index, layer, &h, steps)?;
            x = (x + attention)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.config.rms_eps as f32)?;
            let gated = (candle_nn::ops::silu(&layer.w_gate.forward(&h)?)? * layer.w_up.forward(&h)?)?;
            x = (x + layer.w_down.forward(&gated)?)?;
        }
        let mut last_rows = Vec::with_capacity(steps.len());
        let mut offset = 0;
        for step in steps.iter_mut() {
            offset += step.tokens.len();
            last_rows.push((offset - 1) as u32);
            step.cache.len += step.tokens.len();
        }
        let last = x.index_select(&Tensor::new(last_rows.as_slice(), device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.config.rms_eps as f32)?;
        self.output.forward(&last)
    }

    /// Self-attention of layer `index` for every sequence; `h` holds all sequences' tokens.
    fn attention(
        &self,
        index: usize,
        layer: &Layer,
        h: &Tensor,
        steps: &mut [SequenceStep<'_>],
    ) -> candle_core::Result<Tensor> {
        let Config { heads, kv_heads, head_dim, .. } = self.config;
        let group = heads / kv_heads;
        let q_all = layer.wq.forward(h)?;
        let k_all = layer.wk.forward(h)?;
        let v_all = layer.wv.forward(h)?;
        let mut outputs = Vec::with_capacity(steps.len());
        let mut start = 0;
        for step in steps.iter_mut() {
            let n = step.tokens.len();
            let position = step.cache.len;
            let split = |t: &Tensor, count: usize| -> candle_core::Result<Tensor> {
                t.narrow(0, start, n)?.reshape((n, count, head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)
            };
            let cos = self.cos.narrow(0, position, n)?;
            let sin = self.sin.narrow(0, position, n)?;
            let q = candle_nn::rotary_emb::rope_i(&split(&q_all, heads)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&split(&k_all, kv_heads)?, &cos, &sin)?.squeeze(0)?;
            let v = split(&v_all, kv_heads)?.squeeze(0)?;
            let (k, v) = match step.cache.layers.get(index) {
                Some((k_cache, v_cache)) => (Tensor::cat(&[k_cache, &k], 1)?, Tensor::cat(&[v_cache, &v], 1)?),
                None => (k, v),
            };
            let total = k.dim(1)?;
            // Heads sharing a KV head are multiplied together: [kv_heads, group * n, head_dim].
            let q = q.reshape((kv_heads, group * n, head_dim))?;
            let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
            let scores = if n > 1 {
                let mask = causal_mask(n, position, q.device())?;
                scores.reshape((kv_heads, group, n, total))?.broadcast_add(&mask)?.reshape((
                    kv_heads,
                    group * n,
                    total,
                ))?
            } else {
                scores
            };
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let out =
                weights.matmul(&v)?.reshape((heads, n, head_dim))?.transpose(0, 1)?.reshape((n, heads * head_dim))?;
            outputs.push(out);
            if index < step.cache.layers.len() {
                step.cache.layers[index] = (k, v);
            } else {
                step.cache.layers.push((k, v));
            }
            start += n;
        }
        layer.wo.forward(&Tensor::cat(&outputs, 0)?)
    }
}

/// `[n, position + n]`: 0 where query `i` may see key `j` (`j <= position + i`), −∞ elsewhere.
fn causal_mask(n: usize, position: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = position + n;
    let values: Vec<f32> =
        (0..n).flat_map(|i| (0..total).map(move |j| if j <= position + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(values, (n, total), device)
}

/// Cosine and sine tables for every position of the context: `[context, head_dim / 2]`.
fn rotary_tables(config: &Config, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let inverse: Vec<f32> =
        (0..half).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.head_dim as f32)).collect();
    let inverse = Tensor::from_vec(inverse, (1, half), device)?;
    let positions = Tensor::arange(0u32, config.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles = positions.matmul(&inverse)?;
    Ok((angles.cos()?, angles.sin()?))
}

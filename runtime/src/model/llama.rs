//! The llama architecture (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU) with
//! weights from GGUF, quantized or not, and a forward pass that runs several sequences in one
//! step: every linear layer multiplies the tokens of all sequences together (one read of the
//! weights per step, which is what makes batched decoding faster than one stream at a time; the
//! projections that read one input in one pass of the kernel), while attention runs per sequence
//! against that sequence's own KV cache. The step keeps its residual stream in one buffer:
//! RMSNorm, rotary embeddings, SwiGLU and the residual adds work on the step's own vectors,
//! with no tensor allocated per operation.
//!
//! GGUF tensor names follow llama.cpp (`token_embd`, `blk.{i}.attn_q`, …, `output_norm`,
//! `output`, tied to `token_embd` when absent); rotary embeddings are the interleaved form GGUF
//! llama files are converted for. HF checkpoints ([`Llama::from_hf`]) load into the same
//! structure.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::lora::{AdapterRows, LoraAdapter, Projection};
use super::quantized::QLinear;
use crate::error::{Error, Result};
use crate::llm::kv_cache::{BlockTable, KvCache, KvShape, QueryRow};

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
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let Self { heads, kv_heads, head_dim, .. } = *self;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim % 2 != 0 {
            return Err(format!("inconsistent attention shape: {self:?}"));
        }
        Ok(())
    }
}

/// An HF checkpoint's `config.json` for the llama architecture.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct HfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

impl HfConfig {
    /// The sizes the forward pass needs, checked for a consistent attention shape.
    pub fn to_config(&self) -> Result<Config> {
        let heads = self.num_attention_heads;
        let config = Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            layers: self.num_hidden_layers,
            heads,
            kv_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / heads.max(1)),
            rope_theta: self.rope_theta,
            rms_eps: self.rms_norm_eps,
            context_length: self.max_position_embeddings,
        };
        config.check().map_err(|reason| Error::ModelFile(format!("llama config.json: {reason}")))?;
        Ok(config)
    }
}

fn invalid(reason: String) -> Error {
    Error::ModelFile(format!("llama GGUF: {reason}"))
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    ffn_norm: Vec<f32>,
    w_gate: QLinear,
    w_up: QLinear,
    w_down: QLinear,
}

/// A loaded llama model.
pub struct Llama {
    config: Config,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: QLinear,
    /// Rotary tables, `[context, head_dim / 2]` row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's share of a step.
pub struct SequenceStep<'a> {
    /// The tokens to append to the sequence (a prompt chunk, or the last sampled token).
    pub tokens: &'a [u32],
    /// The sequence's blocks; they must have room for `tokens` ([`KvCache::reserve`]).
    pub table: &'a mut BlockTable,
    /// Which logits the step returns for the sequence.
    pub logits: Logits,
    /// The LoRA adapter the sequence runs with, read against this model; `None`: the bare model.
    pub adapter: Option<&'a LoraAdapter>,
}

/// The logits a sequence wants from a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: a prompt chunk that does not end the prompt.
    None,
    /// After its last token, to sample the next.
    Last,
    /// After each of its tokens, to score a prompt (one row per token).
    Every,
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
        let vector = |qtensor: &candle_core::quantized::QTensor, name: &str| {
            dense(qtensor, name)?.to_vec1::<f32>().map_err(|e| invalid(format!("tensor {name}: {e}")))
        };
        let matmul = |qtensor, name: &str| QLinear::new(qtensor).map_err(|e| invalid(format!("tensor {name}: {e}")));
        let token_embd = tensor("token_embd.weight")?;
        let embeddings = dense(&token_embd, "token_embd.weight")?;
        let norm = vector(&tensor("output_norm.weight")?, "output_norm.weight")?;
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
            let attn_norm = vector(&tensor(&format!("blk.{i}.attn_norm.weight"))?, "attn_norm")?;
            let ffn_norm = vector(&tensor(&format!("blk.{i}.ffn_norm.weight"))?, "ffn_norm")?;
            layers.push(Layer { attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down });
        }
        let (cos, sin) = rotary_tables(&config, device).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { config, embeddings, layers, norm, output, cos, sin })
    }

    /// Loads an HF checkpoint (`model.layers.{i}.self_attn.q_proj`, …; f32, f16 or bf16, computed
    /// in f32). HF orders each head's query and key rows for the half-split rotary form; they are
    /// reordered here to the interleaved form this forward uses (the permutation llama.cpp
    /// applies when converting to GGUF), so both layouts share one forward pass.
    pub fn from_hf(vb: VarBuilder<'_>, hf: &HfConfig) -> Result<Self> {
        let config = hf.to_config()?;
        let fail = |e: candle_core::Error| Error::ModelFile(format!("llama safetensors: {e}"));
        let Config { hidden_size, heads, kv_heads, head_dim, .. } = config;
        let dense = |vb: &VarBuilder<'_>, name: &str, shape: (usize, usize)| vb.get(shape, name).map_err(fail);
        let vector = |vb: &VarBuilder<'_>, name: &str| {
            vb.get(hidden_size, name).and_then(|v| v.to_dtype(DType::F32)?.to_vec1::<f32>()).map_err(fail)
        };
        let interleaved = |w: Tensor, heads: usize| super::dense::interleaved(&w, heads).map_err(fail);
        let model = vb.pp("model");
        let embeddings = dense(&model, "embed_tokens.weight", (hf.vocab_size, hidden_size))?;
        let norm = vector(&model, "norm.weight")?;
        let output = match hf.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            true => embeddings.clone(),
            false => dense(&vb, "lm_head.weight", (hf.vocab_size, hidden_size))?,
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let layer = model.pp(format!("layers.{i}"));
            let linear = |name: &str, shape| dense(&layer, &format!("{name}.weight"), shape);
            let (q, kv) = (heads * head_dim, kv_heads * head_dim);
            layers.push(Layer {
                attn_norm: vector(&layer, "input_layernorm.weight")?,
                wq: QLinear::dense(interleaved(linear("self_attn.q_proj", (q, hidden_size))?, heads)?),
                wk: QLinear::dense(interleaved(linear("self_attn.k_proj", (kv, hidden_size))?, kv_heads)?),
                wv: QLinear::dense(linear("self_attn.v_proj", (kv, hidden_size))?),
                wo: QLinear::dense(linear("self_attn.o_proj", (hidden_size, q))?),
                ffn_norm: vector(&layer, "post_attention_layernorm.weight")?,
                w_gate: QLinear::dense(linear("mlp.gate_proj", (hf.intermediate_size, hidden_size))?),
                w_up: QLinear::dense(linear("mlp.up_proj", (hf.intermediate_size, hidden_size))?),
                w_down: QLinear::dense(linear("mlp.down_proj", (hidden_size, hf.intermediate_size))?),
            });
        }
        let (cos, sin) = rotary_tables(&config, vb.device()).map_err(fail)?;
        Ok(Self { config, embeddings, layers, norm, output: QLinear::dense(output), cos, sin })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the model's weights are.
    pub fn device(&self) -> &Device {
        self.embeddings.device()
    }

    /// The width of the MLP's inner layer.
    pub fn intermediate_size(&self) -> candle_core::Result<usize> {
        match self.layers.first() {
            Some(layer) => Ok(layer.w_gate.shape()?.0),
            None => Ok(0),
        }
    }

    /// Reads the LoRA adapter in a version's `files` against this model (shapes, targets,
    /// layers checked).
    pub fn read_adapter(&self, files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<LoraAdapter> {
        let intermediate = self.intermediate_size().map_err(|e| Error::ModelFile(e.to_string()))?;
        LoraAdapter::from_files(files, &self.config, intermediate, self.device())
    }

    /// The shape of this model's KV cache entries.
    pub fn kv_shape(&self) -> KvShape {
        KvShape { layers: self.config.layers, kv_heads: self.config.kv_heads, head_dim: self.config.head_dim }
    }

    /// Runs one step for several sequences: appends each sequence's `tokens` to its cache and
    /// returns the logits each asked for ([`Logits`]), in order, `[rows, vocab]`. Every row is computed independently of the others, so the
    /// result for a sequence does not depend on what else is in the step — nor on the adapters
    /// the other sequences use: each projection runs the base over every row, then each
    /// adapter's low-rank update over its own rows. A refused step (context exceeded, no room
    /// reserved) leaves every cache as it was.
    pub fn forward(&self, steps: &mut [SequenceStep<'_>], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        crate::compute_threads::on_pool(|| self.forward_here(steps, cache))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(&self, steps: &mut [SequenceStep<'_>], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let device = self.embeddings.device();
        let Config { heads, kv_heads, head_dim, context_length, vocab_size, .. } = self.config;
        let mut rows = Vec::new();
        for (sequence, step) in steps.iter().enumerate() {
            let (start, n) = (step.table.len(), step.tokens.len());
            if n == 0 {
                candle_core::bail!("every sequence in a step needs at least one token");
            }
            if start + n > context_length {
                candle_core::bail!("sequence of {} tokens exceeds the context of {context_length}", start + n);
            }
            if cache.blocks_for(start + n) > step.table.blocks() {
                candle_core::bail!("no KV blocks reserved for {} tokens", start + n);
            }
            rows.extend((start..start + n).map(|position| QueryRow { sequence, position }));
        }
        let all: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        // The residual stream, `[rows, hidden]`, updated in place; `h` holds each normalized copy.
        let mut x = self.embeddings.index_select(&Tensor::new(all.as_slice(), device)?, 0)?.flatten_all()?.to_vec1()?;
        let mut h = Vec::with_capacity(x.len());
        let adapters = AdapterRows::new(steps.iter().map(|s| (s.adapter, s.tokens.len())), device)?;
        let kv_row = kv_heads * head_dim;
        let eps = self.config.rms_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, eps, &mut h);
            let qkv = [(Projection::Q, &layer.wq), (Projection::K, &layer.wk), (Projection::V, &layer.wv)];
            let [mut q, mut k, v] = project(&adapters, index, qkv, &h, device)?;
            self.rotate(&mut q, heads, &rows);
            self.rotate(&mut k, kv_heads, &rows);
            let mut offset = 0;
            for step in steps.iter() {
                let span = offset * kv_row..(offset + step.tokens.len()) * kv_row;
                cache.write(index, step.table, &k[span.clone()], &v[span]);
                offset += step.tokens.len();
            }
            let tables: Vec<&BlockTable> = steps.iter().map(|s| &*s.table).collect();
            let attended = cache.attend(index, &tables, &rows, &q, heads);
            let [o] = project(&adapters, index, [(Projection::O, &layer.wo)], &attended, device)?;
            add(&mut x, &o);
            rms_norm(&x, &layer.ffn_norm, eps, &mut h);
            let gate_up = [(Projection::Gate, &layer.w_gate), (Projection::Up, &layer.w_up)];
            let [mut gated, up] = project(&adapters, index, gate_up, &h, device)?;
            swiglu(&mut gated, &up);
            let [down] = project(&adapters, index, [(Projection::Down, &layer.w_down)], &gated, device)?;
            add(&mut x, &down);
        }
        let hidden = self.config.hidden_size;
        let mut asked = Vec::with_capacity(steps.len() * hidden);
        let mut offset = 0;
        for step in steps.iter_mut() {
            let n = step.tokens.len();
            let first = match step.logits {
                Logits::None => offset + n,
                Logits::Last => offset + n - 1,
                Logits::Every => offset,
            };
            asked.extend_from_slice(&x[first * hidden..(offset + n) * hidden]);
            offset += n;
            cache.advance(step.table, n);
        }
        let asking = asked.len() / hidden.max(1);
        rms_norm(&asked, &self.norm, eps, &mut h);
        let [logits] = QLinear::forward_all([&self.output], &h, asking, device)?;
        Tensor::from_vec(logits, (asking, vocab_size), device)
    }

    /// Applies the interleaved rotary embedding in place to `x`, `[rows, heads * head_dim]`.
    fn rotate(&self, x: &mut [f32], heads: usize, rows: &[QueryRow]) {
        let half = self.config.head_dim / 2;
        for (row, values) in rows.iter().zip(x.chunks_exact_mut(heads * self.config.head_dim)) {
            let cos = &self.cos[row.position * half..(row.position + 1) * half];
            let sin = &self.sin[row.position * half..(row.position + 1) * half];
            for head in values.chunks_exact_mut(self.config.head_dim) {
                for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
        }
    }
}

/// `x` (`[rows, in]` row-major) through the layer's `projections` that read it, in one pass of
/// the kernel, each `[rows, out]` row-major with each adapter's update on its own rows.
fn project<const N: usize>(
    adapters: &AdapterRows<'_>,
    layer: usize,
    projections: [(Projection, &QLinear); N],
    x: &[f32],
    device: &Device,
) -> candle_core::Result<[Vec<f32>; N]> {
    let width = projections[0].1.shape()?.1;
    let rows = x.len() / width.max(1);
    let mut outputs = QLinear::forward_all(projections.map(|(_, weights)| weights), x, rows, device)?;
    if !adapters.is_empty() {
        let x = Tensor::from_slice(x, (rows, width), device)?;
        for (output, (projection, _)) in outputs.iter_mut().zip(projections) {
            let width = output.len() / rows.max(1);
            let base = Tensor::from_vec(std::mem::take(output), (rows, width), device)?;
            *output = adapters.adapt(layer, projection, &x, base)?.flatten_all()?.to_vec1()?;
        }
    }
    Ok(outputs)
}

/// RMSNorm of each row of `x` (`[rows, weight.len()]`) into `out`: `v / √(mean(v²) + ε) · w`,
/// the mean of the squares summed in eight lanes so it vectorizes.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    for row in x.chunks_exact(weight.len().max(1)) {
        let mut lanes = [0.0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for chunk in chunks {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane = v.mul_add(*v, *lane);
            }
        }
        let scale = 1.0 / ((lanes.iter().sum::<f32>() + tail) / row.len() as f32 + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
}

/// `x += y`, element by element (a residual connection).
fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// SwiGLU in place: `gate ← silu(gate) · up`, with candle's form of `silu` (`v / (1 + e^-v)`)
/// and a vectorized `exp`.
fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + crate::vector_math::exp(-*g)) * u;
    }
}

/// Cosine and sine tables for every position of the context: `[context, head_dim / 2]`.
fn rotary_tables(config: &Config, device: &Device) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let half = config.head_dim / 2;
    let inverse: Vec<f32> =
        (0..half).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.head_dim as f32)).collect();
    let inverse = Tensor::from_vec(inverse, (1, half), device)?;
    let positions = Tensor::arange(0u32, config.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles = positions.matmul(&inverse)?;
    Ok((angles.cos()?.flatten_all()?.to_vec1()?, angles.sin()?.flatten_all()?.to_vec1()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_agrees_with_candles() {
        let (rows, width) = (3, 37);
        let x: Vec<f32> = (0..rows * width).map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0).collect();
        let weight: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / 40.0).collect();
        let mut ours = Vec::new();
        rms_norm(&x, &weight, 1e-5, &mut ours);
        let tensor = |values: &[f32], shape: &[usize]| Tensor::from_slice(values, shape, &Device::Cpu).unwrap();
        let candle = candle_nn::ops::rms_norm(&tensor(&x, &[rows, width]), &tensor(&weight, &[width]), 1e-5).unwrap();
        for (a, b) in ours.iter().zip(candle.flatten_all().unwrap().to_vec1::<f32>().unwrap()) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs candle's {b}");
        }
    }
}

//! A llama version as dense f32 tensors under HF names, whatever its files store: GGUF (quantized
//! weights dequantized) or HF safetensors (f32, f16 or bf16). Fine-tuning starts from this; the
//! serving side's own loaders ([`super::load`]) keep quantized weights quantized. Quantization
//! writes it back as GGUF in a chosen type ([`DenseLlama::write_gguf`], with candle's quantizer
//! and GGUF writer).
//!
//! GGUF orders each head's query and key rows for the interleaved rotary form (llama.cpp permutes
//! them when converting from HF); they are put back in HF's half-split order here, so the tensors
//! are exactly an HF checkpoint's and a merged fine-tune is written as one.

use std::collections::HashMap;
use std::io::{Seek, Write};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use lantern_contract::job::GgufType;

use super::llama::{Config, HfConfig};
use crate::error::{Error, Result};
use crate::llm::codec::TextCodec;
use crate::repository::{Architecture, Format, VerifiedVersion};

/// A llama's config, weights and text codec (tokenizer and chat template).
pub struct DenseLlama {
    pub config: HfConfig,
    /// `model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, …, `model.norm.weight`,
    /// and `lm_head.weight` when the output is not tied to the embeddings.
    pub tensors: HashMap<String, Tensor>,
    pub codec: TextCodec,
}

impl std::fmt::Debug for DenseLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseLlama")
            .field("config", &self.config)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// Reads a verified llama version as dense tensors on `device`. Refuses another architecture, a
/// version without a tokenizer, and weights that do not match the config.
pub fn read(verified: &VerifiedVersion, device: &Device) -> Result<DenseLlama> {
    let manifest = &verified.manifest;
    if manifest.architecture != Architecture::Llama {
        return Err(Error::ModelFile(format!("the architecture is {:?}, not llama", manifest.architecture)));
    }
    let dense = match manifest.format {
        Format::Gguf => from_gguf(verified, device)?,
        Format::Safetensors => from_hf(verified, device)?,
        Format::Lora => {
            return Err(Error::ModelFile("a LoRA adapter, not a whole model: fine-tune its base instead".into()));
        }
    };
    dense.check()?;
    Ok(dense)
}

fn from_gguf(verified: &VerifiedVersion, device: &Device) -> Result<DenseLlama> {
    let (path, bytes) = super::single_gguf(verified).map_err(Error::ModelFile)?;
    let fail = |reason: String| Error::ModelFile(format!("{path}: {reason}"));
    let mut reader = std::io::Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| fail(e.to_string()))?;
    let codec = TextCodec::from_gguf(&content.metadata).map_err(|e| fail(e.to_string()))?;
    let config = hf_config(&content).map_err(|e| fail(e.to_string()))?;
    let Config { heads, kv_heads, .. } = Config::from_gguf(&content.metadata)?;
    let mut read = |name: &str| {
        let tensor = content.tensor(&mut reader, name, device).and_then(|q| q.dequantize(device));
        tensor.map_err(|e| fail(format!("tensor {name}: {e}")))
    };
    let mut tensors = HashMap::new();
    tensors.insert("model.embed_tokens.weight".to_owned(), read("token_embd.weight")?);
    tensors.insert("model.norm.weight".to_owned(), read("output_norm.weight")?);
    if !config.tie_word_embeddings {
        tensors.insert("lm_head.weight".to_owned(), read("output.weight")?);
    }
    for i in 0..config.num_hidden_layers {
        for (gguf, hf) in LAYER_TENSORS {
            let mut tensor = read(&format!("blk.{i}.{gguf}.weight"))?;
            if let Some(heads) = match *gguf {
                "attn_q" => Some(heads),
                "attn_k" => Some(kv_heads),
                _ => None,
            } {
                tensor = half_split(&tensor, heads).map_err(|e| fail(format!("blk.{i}.{gguf}: {e}")))?;
            }
            tensors.insert(format!("model.layers.{i}.{hf}.weight"), tensor);
        }
    }
    Ok(DenseLlama { config, tensors, codec })
}

/// GGUF's per-layer tensors and their HF names.
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The HF config a GGUF llama corresponds to: the metadata's sizes, the MLP width from the gate
/// projection's shape, the output tied when the file has no `output.weight`.
fn hf_config(content: &gguf_file::Content) -> Result<HfConfig> {
    let config = Config::from_gguf(&content.metadata)?;
    let gate = content
        .tensor_infos
        .get("blk.0.ffn_gate.weight")
        .ok_or_else(|| Error::ModelFile("no tensor blk.0.ffn_gate.weight".into()))?;
    Ok(HfConfig {
        vocab_size: config.vocab_size,
        hidden_size: config.hidden_size,
        intermediate_size: gate.shape.dims()[0],
        num_hidden_layers: config.layers,
        num_attention_heads: config.heads,
        num_key_value_heads: Some(config.kv_heads),
        head_dim: Some(config.head_dim),
        rms_norm_eps: config.rms_eps,
        rope_theta: config.rope_theta,
        max_position_embeddings: config.context_length,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    })
}

/// Each head's query or key rows from HF's half-split order (all first halves of the rotated
/// dimension pairs, then all second halves) to the interleaved order (each pair side by side)
/// that GGUF files and this runtime's forward pass use: the permutation llama.cpp applies when
/// converting to GGUF. [`half_split`] undoes it.
pub(crate) fn interleaved(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, 2, head_dim / 2, columns))?.transpose(1, 2)?.reshape((rows, columns))
}

/// Each head's rows from the interleaved order (pairs of rotated dimensions side by side) back
/// to the half-split order (all first halves, then all second halves).
fn half_split(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = w.dims2()?;
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, columns))?.transpose(1, 2)?.reshape((rows, columns))
}

fn from_hf(verified: &VerifiedVersion, device: &Device) -> Result<DenseLlama> {
    let file =
        |name: &str| verified.files.get(name).ok_or_else(|| Error::ModelFile(format!("the version has no {name}")));
    let config: HfConfig = serde_json::from_slice(file("config.json")?)
        .map_err(|e| Error::ModelFile(format!("config.json is not a llama config: {e}")))?;
    let codec =
        TextCodec::from_hf(file("tokenizer.json")?, verified.files.get("tokenizer_config.json").map(Vec::as_slice))?;
    let mut tensors = super::safetensors(verified, device).map_err(Error::ModelFile)?;
    for tensor in tensors.values_mut() {
        *tensor = tensor
            .to_dtype(candle_core::DType::F32)
            .map_err(|e| Error::Candle { context: "reading the weights as f32".into(), source: e })?;
    }
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    Ok(DenseLlama { config, tensors, codec })
}

/// The type a matrix with rows of `columns` values is written in for `ty`: `ty` itself, or, for a
/// k-quant whose 256-value super-blocks do not divide the rows, llama.cpp's fallback (`Q4_K` →
/// `Q5_0`, `Q5_K` → `Q5_1`, `Q6_K` → `Q8_0`, 32-value blocks). Rows that no block of either
/// divides are refused, saying why.
pub fn matrix_type(ty: GgufType, columns: usize) -> std::result::Result<GgmlDType, String> {
    let (primary, fallback) = match ty {
        GgufType::Q8_0 => (GgmlDType::Q8_0, None),
        GgufType::Q4_0 => (GgmlDType::Q4_0, None),
        GgufType::Q4_1 => (GgmlDType::Q4_1, None),
        GgufType::Q4K => (GgmlDType::Q4K, Some(GgmlDType::Q5_0)),
        GgufType::Q5K => (GgmlDType::Q5K, Some(GgmlDType::Q5_1)),
        GgufType::Q6K => (GgmlDType::Q6K, Some(GgmlDType::Q8_0)),
    };
    std::iter::once(primary).chain(fallback).find(|t| columns.is_multiple_of(t.block_size())).ok_or_else(|| {
        format!(
            "has rows of {columns} values, not a whole number of {ty}'s {}-value blocks{}",
            primary.block_size(),
            fallback.map_or(String::new(), |f| format!(" nor of its fallback {f:?}'s {}", f.block_size()))
        )
    })
}

impl DenseLlama {
    /// Writes the model as a GGUF llama file, as llama.cpp's converter and quantizer would: the
    /// `llama.*` hyper-parameters, the codec's tokenizer and chat template
    /// ([`TextCodec::gguf_metadata`]), every matrix in `ty` (the embeddings and the output
    /// included: llama.cpp's `--pure`; a k-quant matrix whose rows its super-blocks do not divide
    /// in llama.cpp's fallback type, [`matrix_type`]) with its query and key rows in the
    /// interleaved order, and the norms in f32. A matrix no block divides is refused, named,
    /// before anything is written.
    pub fn write_gguf<W: Write + Seek>(&self, ty: GgufType, out: &mut W) -> Result<()> {
        let c = &self.config;
        let llama = c.to_config()?;
        let tensor =
            |name: &str| self.tensors.get(name).ok_or_else(|| Error::ModelFile(format!("the weights have no {name}")));
        let candle = |name: &str| {
            let context = format!("quantizing {name}");
            move |source| Error::Candle { context, source }
        };
        let matrix = |name: &str, w: &Tensor| -> Result<QTensor> {
            let columns = w.dim(1).map_err(candle(name))?;
            let dtype = matrix_type(ty, columns).map_err(|why| Error::ModelFile(format!("{name} {why}")))?;
            QTensor::quantize(w, dtype).map_err(candle(name))
        };
        let vector = |name: &str, w: &Tensor| QTensor::quantize(w, GgmlDType::F32).map_err(candle(name));
        let mut tensors = vec![
            ("token_embd.weight".to_owned(), matrix("token_embd", tensor("model.embed_tokens.weight")?)?),
            ("output_norm.weight".to_owned(), vector("output_norm", tensor("model.norm.weight")?)?),
        ];
        if !c.tie_word_embeddings {
            tensors.push(("output.weight".to_owned(), matrix("output", tensor("lm_head.weight")?)?));
        }
        for i in 0..c.num_hidden_layers {
            for (gguf, hf) in LAYER_TENSORS {
                let name = format!("blk.{i}.{gguf}.weight");
                let w = tensor(&format!("model.layers.{i}.{hf}.weight"))?;
                let written = match *gguf {
                    "attn_norm" | "ffn_norm" => vector(&name, w)?,
                    "attn_q" => matrix(&name, &interleaved(w, llama.heads).map_err(candle(&name))?)?,
                    "attn_k" => matrix(&name, &interleaved(w, llama.kv_heads).map_err(candle(&name))?)?,
                    _ => matrix(&name, w)?,
                };
                tensors.push((name, written));
            }
        }
        let u32_of = |n: usize| Value::U32(n as u32);
        let mut metadata = vec![
            ("general.architecture".to_owned(), Value::String("llama".to_owned())),
            // llama.cpp's `general.file_type` of a file mostly in one type (a k-quant with no
            // mix of its own is llama.cpp's `_S` variant, or Q6_K).
            (
                "general.file_type".to_owned(),
                Value::U32(match ty {
                    GgufType::Q4_0 => 2,
                    GgufType::Q4_1 => 3,
                    GgufType::Q8_0 => 7,
                    GgufType::Q4K => 14,
                    GgufType::Q5K => 16,
                    GgufType::Q6K => 18,
                }),
            ),
            ("general.quantization_version".to_owned(), Value::U32(2)),
            ("llama.vocab_size".to_owned(), u32_of(c.vocab_size)),
            ("llama.context_length".to_owned(), u32_of(c.max_position_embeddings)),
            ("llama.embedding_length".to_owned(), u32_of(c.hidden_size)),
            ("llama.block_count".to_owned(), u32_of(c.num_hidden_layers)),
            ("llama.feed_forward_length".to_owned(), u32_of(c.intermediate_size)),
            ("llama.attention.head_count".to_owned(), u32_of(llama.heads)),
            ("llama.attention.head_count_kv".to_owned(), u32_of(llama.kv_heads)),
            ("llama.rope.dimension_count".to_owned(), u32_of(llama.head_dim)),
            ("llama.rope.freq_base".to_owned(), Value::F32(c.rope_theta)),
            ("llama.attention.layer_norm_rms_epsilon".to_owned(), Value::F32(c.rms_norm_eps as f32)),
        ];
        metadata.extend(self.codec.gguf_metadata()?);
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(out, &metadata, &tensors)
            .map_err(|e| Error::Candle { context: "writing the GGUF file".into(), source: e })
    }

    /// Every tensor the config needs is there with its shape, and the tokenizer covers the
    /// vocabulary's ids.
    fn check(&self) -> Result<()> {
        let c = &self.config;
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1));
        let (q, kv) =
            (c.num_attention_heads * head_dim, c.num_key_value_heads.unwrap_or(c.num_attention_heads) * head_dim);
        let mut expected = vec![
            ("model.embed_tokens.weight".to_owned(), vec![c.vocab_size, c.hidden_size]),
            ("model.norm.weight".to_owned(), vec![c.hidden_size]),
        ];
        if !c.tie_word_embeddings {
            expected.push(("lm_head.weight".to_owned(), vec![c.vocab_size, c.hidden_size]));
        }
        for i in 0..c.num_hidden_layers {
            let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
            expected.extend([
                (name("input_layernorm"), vec![c.hidden_size]),
                (name("self_attn.q_proj"), vec![q, c.hidden_size]),
                (name("self_attn.k_proj"), vec![kv, c.hidden_size]),
                (name("self_attn.v_proj"), vec![kv, c.hidden_size]),
                (name("self_attn.o_proj"), vec![c.hidden_size, q]),
                (name("post_attention_layernorm"), vec![c.hidden_size]),
                (name("mlp.gate_proj"), vec![c.intermediate_size, c.hidden_size]),
                (name("mlp.up_proj"), vec![c.intermediate_size, c.hidden_size]),
                (name("mlp.down_proj"), vec![c.hidden_size, c.intermediate_size]),
            ]);
        }
        for (name, shape) in expected {
            match self.tensors.get(&name) {
                None => return Err(Error::ModelFile(format!("the weights have no {name}"))),
                Some(tensor) if tensor.dims() != shape.as_slice() => {
                    return Err(Error::ModelFile(format!("{name} is {:?}, the config needs {shape:?}", tensor.dims())));
                }
                Some(_) => {}
            }
        }
        let tokens = self.codec.tokenizer().vocab_size();
        if tokens > c.vocab_size {
            return Err(Error::ModelFile(format!(
                "the tokenizer has {tokens} tokens, the model's vocabulary {}",
                c.vocab_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quants_fall_back_as_llama_cpp_does_where_their_super_blocks_do_not_divide_the_rows() {
        assert_eq!(matrix_type(GgufType::Q4K, 1536), Ok(GgmlDType::Q4K));
        assert_eq!(matrix_type(GgufType::Q4K, 576), Ok(GgmlDType::Q5_0));
        assert_eq!(matrix_type(GgufType::Q5K, 576), Ok(GgmlDType::Q5_1));
        assert_eq!(matrix_type(GgufType::Q6K, 576), Ok(GgmlDType::Q8_0));
        assert_eq!(matrix_type(GgufType::Q6K, 512), Ok(GgmlDType::Q6K));
        assert_eq!(matrix_type(GgufType::Q4_1, 64), Ok(GgmlDType::Q4_1));
        assert_eq!(
            matrix_type(GgufType::Q4K, 100).unwrap_err(),
            "has rows of 100 values, not a whole number of Q4_K's 256-value blocks nor of its fallback Q5_0's 32"
        );
        assert_eq!(
            matrix_type(GgufType::Q8_0, 48).unwrap_err(),
            "has rows of 48 values, not a whole number of Q8_0's 32-value blocks"
        );
    }
}

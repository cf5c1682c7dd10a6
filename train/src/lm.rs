//! The trainable llama decoder over bytes: RMSNorm, rotary embeddings (the HF "rotate half"
//! layout), grouped-query causal attention and a SwiGLU MLP, with the embedding matrix tied to
//! the output. Tensor names are HF's (`model.layers.{i}.self_attn.q_proj.weight`, …), so a
//! checkpoint written by [`TrainLlama::write_checkpoint`] is an HF llama checkpoint that the
//! serving side ([`lantern_runtime::model::llama::Llama::from_hf`]) loads unchanged, tokenizer included.
//!
//! With [`Precision::Bf16`] every matrix product (projections, attention scores and mixing, the
//! output layer) casts its operands to bfloat16 and its result back; the weights, the residual
//! stream, the norms, the softmax and the loss stay f32, and the gradients reach the f32 weights
//! through the casts.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};

use super::config::{LlamaSpec, Precision};
use super::data::{END_OF_TEXT, VOCAB_SIZE};
use super::params::{Initializer, Params, model_error};
use crate::error::{Error, Result};

const RMS_NORM_EPS: f64 = 1e-5;
const ROPE_THETA: f64 = 10_000.0;
/// Standard deviation of the initial weights; residual outputs get it divided by √(2 · layers).
const INIT_STD: f64 = 0.02;
/// The end-of-text token's text in `tokenizer.json`.
pub const END_OF_TEXT_TOKEN: &str = "<|endoftext|>";

struct Layer {
    attn_norm: Var,
    q: Var,
    k: Var,
    v: Var,
    o: Var,
    mlp_norm: Var,
    gate: Var,
    up: Var,
    down: Var,
}

/// The model and its parameters.
pub struct TrainLlama {
    spec: LlamaSpec,
    params: Params,
    embed: Var,
    layers: Vec<Layer>,
    norm: Var,
    /// `[context, head_dim]` rotary tables, each frequency twice (first half, second half).
    cos: Tensor,
    sin: Tensor,
    /// `[context, context]`: 0 on and below the diagonal, −∞ above.
    mask: Tensor,
    /// The format matrix products run in.
    compute: DType,
}

impl TrainLlama {
    /// Fresh weights from `seed`, or the checkpoint in `spec.init_from`, on `device`.
    pub fn new(spec: &LlamaSpec, seed: u64, device: &Device) -> Result<Self> {
        let mut init = Initializer::new(seed);
        let (hidden, inner, head_dim) = (spec.hidden_size, spec.intermediate_size, spec.hidden_size / spec.heads);
        let kv = spec.kv_heads() * head_dim;
        let residual_std = INIT_STD / (2.0 * spec.layers as f64).sqrt();
        let ones = |n: usize| Tensor::ones(n, DType::F32, device).map_err(model_error);
        let mut params = Params::on(device);
        let embed = params.add("model.embed_tokens.weight", init.normal((VOCAB_SIZE, hidden), INIT_STD)?)?;
        let mut layers = Vec::with_capacity(spec.layers);
        for i in 0..spec.layers {
            let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
            layers.push(Layer {
                attn_norm: params.add(name("input_layernorm"), ones(hidden)?)?,
                q: params.add(name("self_attn.q_proj"), init.normal((hidden, hidden), INIT_STD)?)?,
                k: params.add(name("self_attn.k_proj"), init.normal((kv, hidden), INIT_STD)?)?,
                v: params.add(name("self_attn.v_proj"), init.normal((kv, hidden), INIT_STD)?)?,
                o: params.add(name("self_attn.o_proj"), init.normal((hidden, hidden), residual_std)?)?,
                mlp_norm: params.add(name("post_attention_layernorm"), ones(hidden)?)?,
                gate: params.add(name("mlp.gate_proj"), init.normal((inner, hidden), INIT_STD)?)?,
                up: params.add(name("mlp.up_proj"), init.normal((inner, hidden), INIT_STD)?)?,
                down: params.add(name("mlp.down_proj"), init.normal((hidden, inner), residual_std)?)?,
            });
        }
        let norm = params.add("model.norm.weight", ones(hidden)?)?;
        let (cos, sin) = rotary_tables(spec.context, head_dim, device).map_err(model_error)?;
        let mask = causal_mask(spec.context, device).map_err(model_error)?;
        let compute = match spec.precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        };
        let model = Self { spec: spec.clone(), params, embed, layers, norm, cos, sin, mask, compute };
        if let Some(dir) = &spec.init_from {
            model.check_hf_config(dir)?;
            model.params.load(&dir.join(WEIGHTS_FILE))?;
        }
        Ok(model)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Next-token logits `[batch · length, vocab]` for token ids `[batch, length]`.
    pub fn logits(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, length) = ids.dims2()?;
        let hidden = self.spec.hidden_size;
        let mut h = self.embed.as_tensor().index_select(&ids.flatten_all()?, 0)?;
        let (cos, sin) = (self.cos.narrow(0, 0, length)?, self.sin.narrow(0, 0, length)?);
        let mask = self.mask.narrow(0, 0, length)?.narrow(1, 0, length)?;
        for layer in &self.layers {
            let attended =
                self.attention(layer, &rms_norm(&h, &layer.attn_norm)?, batch, length, (&cos, &sin), &mask)?;
            h = (h + attended)?;
            let x = rms_norm(&h, &layer.mlp_norm)?;
            let gated = (self.linear(&x, &layer.gate)?.silu()? * self.linear(&x, &layer.up)?)?;
            h = (h + self.linear(&gated, &layer.down)?)?;
        }
        debug_assert_eq!(h.dims(), &[batch * length, hidden]);
        self.linear(&rms_norm(&h, &self.norm)?, &self.embed)
    }

    /// `a · b` in the compute format, as f32.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self.compute {
            DType::F32 => a.matmul(b),
            compute => a.to_dtype(compute)?.matmul(&b.to_dtype(compute)?)?.to_dtype(DType::F32),
        }
    }

    /// `x · wᵀ` for `x` `[rows, in]` and `w` `[out, in]`.
    fn linear(&self, x: &Tensor, w: &Var) -> candle_core::Result<Tensor> {
        self.matmul(x, &w.as_tensor().t()?)
    }

    /// Mean next-token cross-entropy over token windows of equal length.
    pub fn loss(&self, windows: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let length = windows[0].len() - 1;
        let inputs: Vec<u32> = windows.iter().flat_map(|w| w[..length].iter().copied()).collect();
        let targets: Vec<u32> = windows.iter().flat_map(|w| w[1..].iter().copied()).collect();
        let device = self.params.device();
        let inputs = Tensor::from_vec(inputs, (windows.len(), length), device)?;
        let targets = Tensor::from_vec(targets, windows.len() * length, device)?;
        candle_nn::loss::cross_entropy(&self.logits(&inputs)?, &targets)
    }

    /// Greedy continuation of `prompt` until the end-of-text token or `max_tokens` tokens
    /// (recomputing the whole sequence each token: evaluation prompts are short).
    pub fn greedy(&self, prompt: &[u32], max_tokens: usize) -> candle_core::Result<Vec<u32>> {
        let mut tokens = prompt.to_vec();
        let mut generated = Vec::new();
        while generated.len() < max_tokens && tokens.len() < self.spec.context {
            let ids = Tensor::new(tokens.as_slice(), self.params.device())?.unsqueeze(0)?;
            let logits = self.logits(&ids)?.get(tokens.len() - 1)?.to_vec1::<f32>()?;
            let next = lantern_runtime::llm::sampling::argmax(&logits);
            if next == END_OF_TEXT {
                break;
            }
            generated.push(next);
            tokens.push(next);
        }
        Ok(generated)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        batch: usize,
        length: usize,
        (cos, sin): (&Tensor, &Tensor),
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (heads, kv_heads) = (self.spec.heads, self.spec.kv_heads());
        let head_dim = self.spec.hidden_size / heads;
        let split = |t: Tensor, n: usize| t.reshape((batch, length, n, head_dim))?.transpose(1, 2)?.contiguous();
        let q = rotate(&split(self.linear(x, &layer.q)?, heads)?, cos, sin)?;
        let k = repeat_kv(rotate(&split(self.linear(x, &layer.k)?, kv_heads)?, cos, sin)?, heads / kv_heads)?;
        let v = repeat_kv(split(self.linear(x, &layer.v)?, kv_heads)?, heads / kv_heads)?;
        let scores = (self.matmul(&q, &k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = self.matmul(&weights, &v)?.transpose(1, 2)?.reshape((batch * length, heads * head_dim))?;
        self.linear(&context, &layer.o)
    }

    /// Writes an HF llama checkpoint: `config.json`, `model.safetensors`, and the byte-level
    /// `tokenizer.json` with a `tokenizer_config.json` naming the end-of-text token.
    pub fn write_checkpoint(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| Error::io(format!("writing {}", dir.join(name).display()), e))
        };
        write(HF_CONFIG, self.hf_config().to_string().as_bytes())?;
        self.params.save(&dir.join(WEIGHTS_FILE))?;
        write("tokenizer.json", byte_tokenizer_json()?.as_bytes())?;
        write("tokenizer_config.json", serde_json::json!({ "eos_token": END_OF_TEXT_TOKEN }).to_string().as_bytes())
    }

    fn hf_config(&self) -> serde_json::Value {
        let spec = &self.spec;
        serde_json::json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": VOCAB_SIZE,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads,
            "num_key_value_heads": spec.kv_heads(),
            "max_position_embeddings": spec.context,
            "rms_norm_eps": RMS_NORM_EPS,
            "rope_theta": ROPE_THETA,
            "tie_word_embeddings": true,
            "eos_token_id": END_OF_TEXT,
            "torch_dtype": "float32",
        })
    }

    /// Refuses a checkpoint to continue from whose sizes differ from the job's.
    fn check_hf_config(&self, dir: &Path) -> Result<()> {
        let path = dir.join(HF_CONFIG);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let found: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::config("model.llama.init_from", format!("{}: {e}", path.display())))?;
        let expected = self.hf_config();
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        ] {
            if found[key] != expected[key] {
                return Err(Error::config(
                    "model.llama.init_from",
                    format!("{} has {key} {}, the job {}", path.display(), found[key], expected[key]),
                ));
            }
        }
        Ok(())
    }
}

const HF_CONFIG: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";

fn rms_norm(x: &Tensor, weight: &Var) -> candle_core::Result<Tensor> {
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + RMS_NORM_EPS)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(weight.as_tensor())
}

/// HF's rotary embedding on `[batch, heads, length, head_dim]`: `x · cos + rotate_half(x) · sin`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let rotated = Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Each key/value head repeated for the `group` query heads that share it.
fn repeat_kv(x: Tensor, group: usize) -> candle_core::Result<Tensor> {
    if group == 1 {
        return Ok(x);
    }
    let (batch, kv_heads, length, head_dim) = x.dims4()?;
    x.unsqueeze(2)?.expand((batch, kv_heads, group, length, head_dim))?.reshape((
        batch,
        kv_heads * group,
        length,
        head_dim,
    ))
}

fn rotary_tables(context: usize, head_dim: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(context * head_dim);
    let mut sin = Vec::with_capacity(context * head_dim);
    for position in 0..context {
        let angles: Vec<f64> =
            (0..half).map(|i| position as f64 / ROPE_THETA.powf(2.0 * i as f64 / head_dim as f64)).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos() as f32));
            sin.extend(angles.iter().map(|a| a.sin() as f32));
        }
    }
    Ok((Tensor::from_vec(cos, (context, head_dim), device)?, Tensor::from_vec(sin, (context, head_dim), device)?))
}

fn causal_mask(context: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..context)
        .flat_map(|row| (0..context).map(move |column| if column > row { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (context, context), device)
}

/// A byte-level `tokenizer.json`: the 256 bytes (as GPT-2's byte-to-character table writes them)
/// are tokens 0..=255, so token id = byte value, and the end-of-text token is 256. No merges.
pub fn byte_tokenizer_json() -> Result<String> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    let vocab: tokenizers::models::bpe::Vocab =
        (0..=255u8).map(|byte| (byte_char(byte).to_string(), u32::from(byte))).collect();
    let fail = |e: tokenizers::Error| Error::Startup(format!("building the byte tokenizer: {e}"));
    let model = BPE::builder().vocab_and_merges(vocab, Vec::new()).build().map_err(fail)?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.add_special_tokens(&[tokenizers::AddedToken::from(END_OF_TEXT_TOKEN, true)]);
    tokenizer.to_string(false).map_err(fail)
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others
/// for the characters from U+0100 on, in byte order.
fn byte_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let offset = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + offset).expect("U+0100..U+0143 are characters; this is a bug")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lantern_runtime::llm::tokenizer::Tokenizer;

    fn tiny() -> LlamaSpec {
        LlamaSpec {
            hidden_size: 16,
            intermediate_size: 32,
            layers: 2,
            heads: 4,
            kv_heads: Some(2),
            context: 12,
            init_from: None,
            precision: Precision::F32,
        }
    }

    /// Plain gradient descent on one fixed batch; the loss before and after.
    fn descend(model: &TrainLlama, steps: usize) -> (f32, f32) {
        let windows = vec![(0..13).map(|i| (i * 7 % 256) as u32).collect::<Vec<_>>(); 2];
        let first = model.loss(&windows).unwrap().to_scalar::<f32>().unwrap();
        for _ in 0..steps {
            let loss = model.loss(&windows).unwrap();
            let grads = loss.backward().unwrap();
            let mut values = model.params().read_flat().unwrap();
            let g = model.params().gradients_flat(&grads).unwrap();
            values.iter_mut().zip(&g).for_each(|(p, g)| *p -= 0.5 * g);
            model.params().write_flat(&values).unwrap();
        }
        (first, model.loss(&windows).unwrap().to_scalar::<f32>().unwrap())
    }

    #[test]
    fn the_byte_tokenizer_maps_each_byte_to_its_value() {
        let tokenizer = Tokenizer::from_json(byte_tokenizer_json().unwrap().as_bytes(), &[END_OF_TEXT_TOKEN]).unwrap();
        let text = "12+30=42 é\n";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, super::super::data::bytes_to_tokens(text.as_bytes()));
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        assert_eq!(tokenizer.eos(), &[END_OF_TEXT]);
        assert_eq!(tokenizer.encode("1<|endoftext|>").unwrap(), vec![u32::from(b'1'), END_OF_TEXT]);
    }

    #[test]
    fn a_position_sees_only_the_past() {
        let model = TrainLlama::new(&tiny(), 1, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[5u32, 6, 7, 8]], &Device::Cpu).unwrap();
        let whole = model.logits(&ids).unwrap().to_vec2::<f32>().unwrap();
        let changed = Tensor::new(&[[5u32, 6, 7, 99]], &Device::Cpu).unwrap();
        let other = model.logits(&changed).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(whole[..3], other[..3], "changing the last token leaves earlier positions alone");
        assert_ne!(whole[3], other[3]);
    }

    #[test]
    fn gradient_steps_lower_the_loss_on_a_fixed_batch() {
        let (first, last) = descend(&TrainLlama::new(&tiny(), 2, &Device::Cpu).unwrap(), 20);
        assert!((first - (VOCAB_SIZE as f32).ln()).abs() < 0.1, "near uniform at the start: {first}");
        assert!(last < first - 1.0, "{first} -> {last}");
    }

    #[test]
    fn bf16_products_give_the_f32_gradients_to_within_bf16_rounding() {
        let windows = vec![(0..13).map(|i| (i * 7 % 256) as u32).collect::<Vec<_>>(); 2];
        let gradients = |precision: Precision| {
            let model = TrainLlama::new(&LlamaSpec { precision, ..tiny() }, 2, &Device::Cpu).unwrap();
            let loss = model.loss(&windows).unwrap();
            let grads = loss.backward().unwrap();
            (loss.to_scalar::<f32>().unwrap(), model.params().gradients_flat(&grads).unwrap())
        };
        let ((f32_loss, exact), (bf16_loss, rounded)) = (gradients(Precision::F32), gradients(Precision::Bf16));
        assert!((bf16_loss - f32_loss).abs() < 1e-2, "{bf16_loss} vs {f32_loss}");
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let difference: Vec<f32> = exact.iter().zip(&rounded).map(|(a, b)| a - b).collect();
        let relative = norm(&difference) / norm(&exact);
        assert!(relative < 0.03, "bf16 gradients differ from f32 by {relative} (relative L2)");
        let (first, last) = descend(
            &TrainLlama::new(&LlamaSpec { precision: Precision::Bf16, ..tiny() }, 2, &Device::Cpu).unwrap(),
            20,
        );
        assert!(last < first - 1.0, "bf16 training lowers the loss too: {first} -> {last}");
    }
}

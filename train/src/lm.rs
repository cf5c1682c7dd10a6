//! The trainable llama decoder: RMSNorm, rotary embeddings (the HF "rotate half" layout),
//! grouped-query causal attention and a SwiGLU MLP. Tensor names are HF's
//! (`model.layers.{i}.self_attn.q_proj.weight`, …), so a checkpoint written by
//! [`TrainLlama::write_checkpoint`] is an HF llama checkpoint that the serving side
//! ([`lantern_runtime::model::llama::Llama::from_hf`]) loads unchanged, tokenizer included.
//!
//! A model is trained from scratch over bytes ([`TrainLlama::new`], sizes from the job, the
//! embedding tied to the output), or fine-tuned from a pretrained base
//! ([`TrainLlama::fine_tune`], the architecture from the base's own config): every weight
//! trained, or the base frozen with LoRA adapters on the target projections. Under LoRA only the
//! adapters are parameters: they alone get gradients, optimizer state and a place in the
//! all-reduce, and they are named as PEFT's `adapter_model.safetensors` names them
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`).
//!
//! With [`Precision::Bf16`] every matrix product (projections, adapters, attention scores and
//! mixing, the output layer) casts its operands to bfloat16 and its result back; the weights, the
//! residual stream, the norms, the softmax and the loss stay f32, and the gradients reach the f32
//! weights through the casts.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::model::dense::DenseLlama;
use lantern_runtime::model::llama::{Config, HfConfig, Llama};
use lantern_runtime::model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, Projection};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::config::{FineTuneMethod, LlamaSpec, LoraSpec, Precision};
use super::data::{Sequence, VOCAB_SIZE};
use super::params::{Initializer, Params, model_error};
use crate::error::{Error, Result};

const RMS_NORM_EPS: f64 = 1e-5;
const ROPE_THETA: f32 = 10_000.0;
/// Standard deviation of the initial weights; residual outputs get it divided by √(2 · layers).
const INIT_STD: f64 = 0.02;
/// What fills a sequence shorter than its batch's longest: never a target, never attended to.
const PADDING: u32 = 0;
/// The end-of-text token's text in `tokenizer.json`.
pub const END_OF_TEXT_TOKEN: &str = "<|endoftext|>";

/// A teacher's view of the targets a student is trained on: at each target (in the order of
/// [`TrainLlama::distillation_loss`]), its most likely tokens `[targets, k]` and their
/// probabilities at `temperature`, renormalized over those tokens.
pub struct SoftTargets {
    pub tokens: Tensor,
    pub probabilities: Tensor,
    pub temperature: f64,
    /// The share of the loss that is the data's own cross-entropy.
    pub cross_entropy_weight: f64,
}

/// The summed negative log-likelihood of `targets` `[rows, 1]` under `logits` `[rows, vocab]`.
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(logits, D::Minus1)?.gather(targets, 1)?.sum_all()?.neg()
}

/// A weight the optimizer updates, or one it leaves alone.
enum Weight {
    Trained(Var),
    Frozen(Tensor),
}

impl Weight {
    fn tensor(&self) -> &Tensor {
        match self {
            Self::Trained(var) => var.as_tensor(),
            Self::Frozen(tensor) => tensor,
        }
    }
}

/// A projection `x · Wᵀ`, with a LoRA adapter's `scale · (x · Aᵀ) · Bᵀ` added when it has one.
struct Linear {
    weight: Weight,
    adapter: Option<Adapter>,
}

struct Adapter {
    /// `[rank, in]`.
    a: Var,
    /// `[out, rank]`.
    b: Var,
    scale: f64,
    /// The adapter's place in the model (layer, then target), which its dropout masks are drawn
    /// from.
    stream: u64,
}

/// What a forward pass is for: training draws LoRA dropout, evaluation never does.
#[derive(Clone, Copy, Debug)]
pub enum Pass<'a> {
    /// A share of a training batch: `positions[i]` is sequence `i`'s place in the global reading
    /// order. Its dropout masks are drawn from that place, not from the rank that reads it, so a
    /// run draws the same masks on any number of ranks and again on resume.
    Training {
        positions: &'a [u64],
    },
    Evaluation,
}

/// LoRA dropout over one forward pass.
struct Dropout<'a> {
    rate: f64,
    seed: u64,
    positions: &'a [u64],
}

struct Layer {
    attn_norm: Weight,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Weight,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linear(&self, projection: Projection) -> &Linear {
        match projection {
            Projection::Q => &self.q,
            Projection::K => &self.k,
            Projection::V => &self.v,
            Projection::O => &self.o,
            Projection::Gate => &self.gate,
            Projection::Up => &self.up,
            Projection::Down => &self.down,
        }
    }
}

/// The model and its parameters.
pub struct TrainLlama {
    config: HfConfig,
    /// The sizes the forward pass reads (head width, key/value heads, rotary θ, RMSNorm ε).
    shape: Config,
    /// Tokens per training sequence.
    context: usize,
    params: Params,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Weight,
    /// `None`: tied to the embeddings.
    output: Option<Linear>,
    /// `[context, head_dim]` rotary tables, each frequency twice (first half, second half).
    cos: Tensor,
    sin: Tensor,
    /// `[context, context]`: 0 on and below the diagonal, −∞ above.
    mask: Tensor,
    /// The format matrix products run in.
    compute: DType,
    /// The tokenizer and chat template: the base's, or the byte-level one.
    codec: TextCodec,
    /// LoRA's dropout rate (0 without adapters) and the seed its masks are drawn from.
    dropout: (f64, u64),
}

impl TrainLlama {
    /// Fresh weights from `seed`, or the checkpoint in `spec.init_from`, on `device`: a byte-level
    /// model with the embedding tied to the output.
    pub fn new(spec: &LlamaSpec, seed: u64, device: &Device) -> Result<Self> {
        let config = HfConfig {
            vocab_size: VOCAB_SIZE,
            hidden_size: spec.hidden_size,
            intermediate_size: spec.intermediate_size,
            num_hidden_layers: spec.layers,
            num_attention_heads: spec.heads,
            num_key_value_heads: Some(spec.kv_heads()),
            head_dim: None,
            rms_norm_eps: RMS_NORM_EPS,
            rope_theta: ROPE_THETA,
            max_position_embeddings: spec.context,
            tie_word_embeddings: true,
        };
        let model = Self::fresh(config, byte_codec()?, (spec.context, spec.precision), seed, device)?;
        if let Some(dir) = &spec.init_from {
            model.check_hf_config(dir)?;
            model.params.load(&dir.join(WEIGHTS_FILE))?;
        }
        Ok(model)
    }

    /// Fresh weights from `seed` on `device` for the architecture `config` (its embedding tied
    /// to the output) with `codec`'s tokenizer, trained on sequences of `context` tokens in
    /// `precision`.
    pub fn fresh(
        config: HfConfig,
        codec: TextCodec,
        (context, precision): (usize, Precision),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let shape = config.to_config()?;
        let (hidden, inner, layer_count) = (config.hidden_size, config.intermediate_size, config.num_hidden_layers);
        let (q_rows, kv_rows) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
        let mut init = Initializer::new(seed);
        let residual_std = INIT_STD / (2.0 * layer_count as f64).sqrt();
        let ones = |n: usize| Tensor::ones(n, DType::F32, device).map_err(model_error);
        let mut params = Params::on(device);
        let embed = Weight::Trained(
            params.add("model.embed_tokens.weight", init.normal((config.vocab_size, hidden), INIT_STD)?)?,
        );
        let mut layers = Vec::with_capacity(layer_count);
        for i in 0..layer_count {
            let mut add = |suffix: &str, tensor: Tensor| {
                params.add(format!("model.layers.{i}.{suffix}.weight"), tensor).map(Weight::Trained)
            };
            let linear = |weight| Linear { weight, adapter: None };
            layers.push(Layer {
                attn_norm: add("input_layernorm", ones(hidden)?)?,
                q: linear(add("self_attn.q_proj", init.normal((q_rows, hidden), INIT_STD)?)?),
                k: linear(add("self_attn.k_proj", init.normal((kv_rows, hidden), INIT_STD)?)?),
                v: linear(add("self_attn.v_proj", init.normal((kv_rows, hidden), INIT_STD)?)?),
                o: linear(add("self_attn.o_proj", init.normal((hidden, q_rows), residual_std)?)?),
                mlp_norm: add("post_attention_layernorm", ones(hidden)?)?,
                gate: linear(add("mlp.gate_proj", init.normal((inner, hidden), INIT_STD)?)?),
                up: linear(add("mlp.up_proj", init.normal((inner, hidden), INIT_STD)?)?),
                down: linear(add("mlp.down_proj", init.normal((hidden, inner), residual_std)?)?),
            });
        }
        let norm = Weight::Trained(params.add("model.norm.weight", ones(hidden)?)?);
        let config = HfConfig { tie_word_embeddings: true, ..config };
        Self::assemble(config, shape, context, precision, params, (embed, layers, norm, None), codec)
    }

    /// The pretrained `base` prepared for fine-tuning by `method` over sequences of `context`
    /// tokens, on `device`; LoRA's `A` matrices are drawn from `seed` (PEFT's default:
    /// uniform in ±1/√in), its `B` matrices start at zero.
    pub fn fine_tune(
        base: DenseLlama,
        method: &FineTuneMethod,
        context: usize,
        precision: Precision,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let DenseLlama { config, tensors, codec } = base;
        let shape = config.to_config()?;
        let mut base = BaseWeights { tensors, method, device };
        let mut init = Initializer::new(seed);
        let mut params = Params::on(device);
        let embed = base.weight("model.embed_tokens.weight", &mut params)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let mut norm =
                |suffix: &str, params: &mut Params| base.weight(&format!("model.layers.{i}.{suffix}.weight"), params);
            let attn_norm = norm("input_layernorm", &mut params)?;
            let mlp_norm = norm("post_attention_layernorm", &mut params)?;
            let mut linear = |target| base.linear(i, target, &mut init, &mut params);
            layers.push(Layer {
                attn_norm,
                q: linear(Projection::Q)?,
                k: linear(Projection::K)?,
                v: linear(Projection::V)?,
                o: linear(Projection::O)?,
                mlp_norm,
                gate: linear(Projection::Gate)?,
                up: linear(Projection::Up)?,
                down: linear(Projection::Down)?,
            });
        }
        let norm = base.weight("model.norm.weight", &mut params)?;
        let output = match config.tie_word_embeddings {
            true => None,
            false => Some(Linear { weight: base.weight("lm_head.weight", &mut params)?, adapter: None }),
        };
        let dropout = match method {
            FineTuneMethod::Lora(lora) => (lora.dropout, seed),
            FineTuneMethod::Full => (0.0, seed),
        };
        Self::assemble(config, shape, context, precision, params, (embed, layers, norm, output), codec)
            .map(|model| Self { dropout, ..model })
    }

    fn assemble(
        config: HfConfig,
        shape: Config,
        context: usize,
        precision: Precision,
        params: Params,
        (embed, layers, norm, output): (Weight, Vec<Layer>, Weight, Option<Linear>),
        codec: TextCodec,
    ) -> Result<Self> {
        let device = params.device().clone();
        let (cos, sin) =
            rotary_tables(context, shape.head_dim, f64::from(shape.rope_theta), &device).map_err(model_error)?;
        let mask = causal_mask(context, &device).map_err(model_error)?;
        let compute = match precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        };
        let dropout = (0.0, 0);
        Ok(Self {
            config,
            shape,
            context,
            params,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            mask,
            compute,
            codec,
            dropout,
        })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The architecture, as `config.json` holds it.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The model's tokenizer and chat template.
    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    /// Next-token logits `[batch · length, vocab]` for token ids `[batch, length]`.
    pub fn logits(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.head(&self.hidden(ids, None)?)
    }

    /// The residual stream after the last layer, `[batch · length, hidden]`.
    fn hidden(&self, ids: &Tensor, dropout: Option<&Dropout<'_>>) -> candle_core::Result<Tensor> {
        let (batch, length) = ids.dims2()?;
        let mut h = self.embed.tensor().index_select(&ids.flatten_all()?, 0)?;
        let (cos, sin) = (self.cos.narrow(0, 0, length)?, self.sin.narrow(0, 0, length)?);
        let mask = self.mask.narrow(0, 0, length)?.narrow(1, 0, length)?;
        for layer in &self.layers {
            let x = self.rms_norm(&h, &layer.attn_norm)?;
            h = (h + self.attention(layer, &x, (batch, length), (&cos, &sin), &mask, dropout)?)?;
            let x = self.rms_norm(&h, &layer.mlp_norm)?;
            let gated = (self.linear(&x, &layer.gate, dropout)?.silu()? * self.linear(&x, &layer.up, dropout)?)?;
            h = (h + self.linear(&gated, &layer.down, dropout)?)?;
        }
        debug_assert_eq!(h.dims(), &[batch * length, self.config.hidden_size]);
        Ok(h)
    }

    /// Logits for rows of the residual stream: the final norm, then the output layer.
    fn head(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.rms_norm(h, &self.norm)?;
        match &self.output {
            Some(output) => self.linear(&x, output, None),
            None => self.matmul(&x, &self.embed.tensor().t()?),
        }
    }

    /// `a · b` in the compute format, as f32.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self.compute {
            DType::F32 => a.matmul(b),
            compute => a.to_dtype(compute)?.matmul(&b.to_dtype(compute)?)?.to_dtype(DType::F32),
        }
    }

    /// `x · Wᵀ (+ scale · (dropout(x) · Aᵀ) · Bᵀ)` for `x` `[rows, in]` and `W` `[out, in]`.
    fn linear(&self, x: &Tensor, linear: &Linear, dropout: Option<&Dropout<'_>>) -> candle_core::Result<Tensor> {
        let base = self.matmul(x, &linear.weight.tensor().t()?)?;
        match &linear.adapter {
            None => Ok(base),
            Some(Adapter { a, b, scale, stream }) => {
                let x = match dropout {
                    Some(dropout) => (x * dropout.mask(*stream, x.dims2()?, x.device())?)?,
                    None => x.clone(),
                };
                let low = self.matmul(&x, &a.as_tensor().t()?)?;
                base + (self.matmul(&low, &b.as_tensor().t()?)? * *scale)?
            }
        }
    }

    fn rms_norm(&self, x: &Tensor, weight: &Weight) -> candle_core::Result<Tensor> {
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.shape.rms_eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&scale)?.broadcast_mul(weight.tensor())
    }

    /// `scale` times the summed next-token cross-entropy over the targets of `sequences`
    /// (right-padded to the longest; causal attention keeps the padding out of every real
    /// position). Only target positions reach the output layer. With `scale` one over the
    /// global batch's target count times the world size, the ranks' mean is the global mean.
    pub fn loss(&self, sequences: &[Sequence], scale: f64, pass: Pass<'_>) -> candle_core::Result<Tensor> {
        let (logits, targets) = self.target_logits(sequences, pass)?;
        cross_entropy(&logits, &targets)? * scale
    }

    /// `scale` times the summed distillation loss over the targets of `sequences`:
    /// `(1 − w) · T² · KL(teacher ‖ student) + w · CE` at every target, the student's
    /// distribution softened by the same temperature `T` as the teacher's, which `teacher`
    /// holds for its top tokens at each target in order.
    pub fn distillation_loss(
        &self,
        sequences: &[Sequence],
        teacher: &SoftTargets,
        scale: f64,
        pass: Pass<'_>,
    ) -> candle_core::Result<Tensor> {
        let (logits, targets) = self.target_logits(sequences, pass)?;
        let SoftTargets { tokens, probabilities, temperature, cross_entropy_weight } = teacher;
        if tokens.dim(0)? != logits.dim(0)? {
            candle_core::bail!("{} soft targets for {} targets; this is a bug", tokens.dim(0)?, logits.dim(0)?);
        }
        let softened = candle_nn::ops::log_softmax(&(&logits / *temperature)?, D::Minus1)?.gather(tokens, 1)?;
        let kl = (probabilities * (probabilities.clamp(f32::MIN_POSITIVE, 1.0)?.log()? - softened)?)?.sum_all()?;
        let distilled = (kl * ((1.0 - cross_entropy_weight) * temperature * temperature))?;
        let loss = match *cross_entropy_weight > 0.0 {
            true => (distilled + (cross_entropy(&logits, &targets)? * *cross_entropy_weight)?)?,
            false => distilled,
        };
        loss * scale
    }

    /// The logits `[targets, vocab]` predicting each target token of `sequences` (sequence by
    /// sequence, position by position), and those tokens `[targets, 1]`.
    fn target_logits(&self, sequences: &[Sequence], pass: Pass<'_>) -> candle_core::Result<(Tensor, Tensor)> {
        let length = sequences.iter().map(|s| s.tokens.len()).max().unwrap_or(0).saturating_sub(1);
        if length == 0 {
            candle_core::bail!("a training sequence needs at least two tokens");
        }
        let mut inputs = Vec::with_capacity(sequences.len() * length);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (index, sequence) in sequences.iter().enumerate() {
            for position in 0..length {
                inputs.push(sequence.tokens.get(position).copied().unwrap_or(PADDING));
                if sequence.targets.get(position + 1) == Some(&true) {
                    rows.push((index * length + position) as u32);
                    targets.push(sequence.tokens[position + 1]);
                }
            }
        }
        let device = self.params.device();
        let inputs = Tensor::from_vec(inputs, (sequences.len(), length), device)?;
        let rows = Tensor::from_vec(rows, targets.len(), device)?;
        let targets = Tensor::from_vec(targets, (rows.dim(0)?, 1), device)?;
        let dropout = match pass {
            Pass::Training { positions } if self.dropout.0 > 0.0 => {
                if positions.len() != sequences.len() {
                    candle_core::bail!(
                        "{} sequences with {} positions; this is a bug",
                        sequences.len(),
                        positions.len()
                    );
                }
                Some(Dropout { rate: self.dropout.0, seed: self.dropout.1, positions })
            }
            _ => None,
        };
        let logits = self.head(&self.hidden(&inputs, dropout.as_ref())?.index_select(&rows, 0)?)?;
        Ok((logits, targets))
    }

    /// Greedy continuation of `prompt` until a stop token or `max_tokens` tokens (recomputing
    /// the whole sequence each token: evaluation prompts are short).
    pub fn greedy(&self, prompt: &[u32], max_tokens: usize) -> candle_core::Result<Vec<u32>> {
        let mut tokens = prompt.to_vec();
        let mut generated = Vec::new();
        while generated.len() < max_tokens && tokens.len() < self.context {
            let ids = Tensor::new(tokens.as_slice(), self.params.device())?.unsqueeze(0)?;
            let logits = self.logits(&ids)?.get(tokens.len() - 1)?.to_vec1::<f32>()?;
            let next = lantern_runtime::llm::sampling::argmax(&logits);
            if self.codec.tokenizer().eos().contains(&next) {
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
        (batch, length): (usize, usize),
        (cos, sin): (&Tensor, &Tensor),
        mask: &Tensor,
        dropout: Option<&Dropout<'_>>,
    ) -> candle_core::Result<Tensor> {
        let Config { heads, kv_heads, head_dim, .. } = self.shape;
        let split = |t: Tensor, n: usize| t.reshape((batch, length, n, head_dim))?.transpose(1, 2)?.contiguous();
        let project = |linear| self.linear(x, linear, dropout);
        let q = rotate(&split(project(&layer.q)?, heads)?, cos, sin)?;
        let k = repeat_kv(rotate(&split(project(&layer.k)?, kv_heads)?, cos, sin)?, heads / kv_heads)?;
        let v = repeat_kv(split(project(&layer.v)?, kv_heads)?, heads / kv_heads)?;
        let scores = (self.matmul(&q, &k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = self.matmul(&weights, &v)?.transpose(1, 2)?.reshape((batch * length, heads * head_dim))?;
        self.linear(&context, &layer.o, dropout)
    }

    /// The model as serving loads it: the merged weights in the runtime's llama (on the
    /// parameters' device).
    pub fn to_serving(&self) -> Result<Llama> {
        let tensors: HashMap<String, Tensor> = self.merged_weights().map_err(model_error)?.into_iter().collect();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, self.params.device());
        Ok(Llama::from_hf(vb, &self.config)?)
    }

    /// The base's weights with every adapter folded in (`W + scale · B · A`), under HF names:
    /// the tensors of the merged checkpoint.
    pub fn merged_weights(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut tensors = vec![("model.embed_tokens.weight".to_owned(), self.embed.tensor().clone())];
        for (i, layer) in self.layers.iter().enumerate() {
            let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
            tensors.push((name("input_layernorm"), layer.attn_norm.tensor().clone()));
            tensors.push((name("post_attention_layernorm"), layer.mlp_norm.tensor().clone()));
            for projection in Projection::ALL {
                tensors.push((name(projection.module()), layer.linear(projection).merged()?));
            }
        }
        tensors.push(("model.norm.weight".to_owned(), self.norm.tensor().clone()));
        if let Some(output) = &self.output {
            tensors.push(("lm_head.weight".to_owned(), output.merged()?));
        }
        Ok(tensors)
    }

    /// Writes the model as an HF llama checkpoint: `config.json`, `model.safetensors` (adapters
    /// merged into their projections), and the codec's `tokenizer.json` and
    /// `tokenizer_config.json` (chat template, end-of-sequence token).
    pub fn write_checkpoint(&self, dir: &Path) -> Result<()> {
        let (tokenizer, tokenizer_config) = self.codec.to_hf()?;
        write(dir, HF_CONFIG, self.hf_config().to_string().as_bytes())?;
        let tensors: HashMap<String, Tensor> = self.merged_weights().map_err(model_error)?.into_iter().collect();
        let path = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|e| Error::candle(format!("writing {}", path.display()), e))?;
        write(dir, "tokenizer.json", tokenizer.as_bytes())?;
        write(dir, "tokenizer_config.json", tokenizer_config.as_bytes())
    }

    /// Writes the LoRA adapters as PEFT writes them: `adapter_model.safetensors` (the trained
    /// `lora_A` / `lora_B` matrices under PEFT's names) and `adapter_config.json`, naming
    /// `base` as the model they apply to.
    pub fn write_adapter(&self, dir: &Path, lora: &LoraSpec, base: &str) -> Result<()> {
        self.params.save(&dir.join(ADAPTER_WEIGHTS_FILE))?;
        let targets: Vec<&str> = lora.targets.iter().map(|target| target.name()).collect();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": lora.rank,
            "lora_alpha": lora.scale() * lora.rank as f64,
            "lora_dropout": lora.dropout,
            "target_modules": targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
        });
        write(dir, ADAPTER_CONFIG_FILE, serde_json::to_string_pretty(&config).unwrap_or_default().as_bytes())
    }

    /// `config.json`: the architecture, plus what HF's loaders look for beside it.
    fn hf_config(&self) -> serde_json::Value {
        let mut config = serde_json::to_value(&self.config).unwrap_or_default();
        let extra = serde_json::json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "eos_token_id": self.codec.tokenizer().eos().first(),
            "torch_dtype": "float32",
        });
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        config
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

/// A base's tensors, taken one by one into the model: trained under full fine-tuning, frozen
/// (with adapters on the targets) under LoRA.
struct BaseWeights<'a> {
    tensors: HashMap<String, Tensor>,
    method: &'a FineTuneMethod,
    device: &'a Device,
}

impl BaseWeights<'_> {
    fn weight(&mut self, name: &str, params: &mut Params) -> Result<Weight> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::config("model.fine_tune.base", format!("the base has no {name}")))?;
        let tensor = tensor.to_device(self.device).map_err(model_error)?;
        match self.method {
            FineTuneMethod::Full => params.add(name, tensor).map(Weight::Trained),
            FineTuneMethod::Lora(_) => Ok(Weight::Frozen(tensor)),
        }
    }

    /// Layer `layer`'s `projection`, with an adapter when LoRA targets it.
    fn linear(
        &mut self,
        layer: usize,
        projection: Projection,
        init: &mut Initializer,
        params: &mut Params,
    ) -> Result<Linear> {
        let weight = self.weight(&format!("model.layers.{layer}.{}.weight", projection.module()), params)?;
        let adapter = match self.method {
            FineTuneMethod::Lora(lora) if lora.targets.iter().any(|target| target.name() == projection.name()) => {
                Some(Adapter::new((layer, projection), weight.tensor(), lora, init, params)?)
            }
            _ => None,
        };
        Ok(Linear { weight, adapter })
    }
}

impl Linear {
    /// `W + scale · B · A`, or `W` without an adapter.
    fn merged(&self) -> candle_core::Result<Tensor> {
        let weight = self.weight.tensor();
        match &self.adapter {
            None => Ok(weight.clone()),
            Some(Adapter { a, b, scale, .. }) => weight + (b.as_tensor().matmul(a.as_tensor())? * *scale)?,
        }
    }
}

impl Adapter {
    /// An adapter for layer `layer`'s `projection` `weight` `[out, in]`, its matrices registered
    /// under PEFT's names.
    fn new(
        (layer, projection): (usize, Projection),
        weight: &Tensor,
        lora: &LoraSpec,
        init: &mut Initializer,
        params: &mut Params,
    ) -> Result<Self> {
        let (out, input) = weight.dims2().map_err(model_error)?;
        if lora.rank == 0 || lora.rank > out.min(input) {
            return Err(Error::config(
                "model.fine_tune.method.lora.rank",
                format!(
                    "{} does not fit layer {layer}'s {} ({out} × {input}): it must be 1 to {}",
                    lora.rank,
                    projection.name(),
                    out.min(input)
                ),
            ));
        }
        let a = init.uniform((lora.rank, input), 1.0 / (input as f64).sqrt())?;
        let b = Tensor::zeros((out, lora.rank), DType::F32, &Device::Cpu).map_err(model_error)?;
        Ok(Self {
            a: params.add(projection.tensor_name(layer, "lora_A"), a)?,
            b: params.add(projection.tensor_name(layer, "lora_B"), b)?,
            scale: lora.scale(),
            stream: (layer * Projection::ALL.len() + projection as usize) as u64,
        })
    }
}

impl Dropout<'_> {
    /// The mask (0 or `1 / (1 − rate)`) for adapter `stream`'s input `[rows, features]`, whose
    /// rows are the positions of the pass's sequences in order. Each sequence's rows come from
    /// a stream of its own, position by position, so the padding after a sequence never shifts
    /// its mask.
    fn mask(&self, stream: u64, (rows, features): (usize, usize), device: &Device) -> candle_core::Result<Tensor> {
        let per_sequence = rows / self.positions.len().max(1);
        let kept = (1.0 / (1.0 - self.rate)) as f32;
        let mut mask = Vec::with_capacity(rows * features);
        for &position in self.positions {
            let mut rng = StdRng::seed_from_u64(mix(mix(self.seed, position), stream));
            mask.extend((0..per_sequence * features).map(|_| match rng.random::<f64>() < self.rate {
                true => 0.0,
                false => kept,
            }));
        }
        Tensor::from_vec(mask, (rows, features), device)
    }
}

/// A well-spread 64-bit value from two (SplitMix64's finalizer over their combination).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const HF_CONFIG: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The byte-level codec of a model trained from scratch: [`byte_tokenizer_json`], ending
/// answers at the end-of-text token, without a chat template.
fn byte_codec() -> Result<TextCodec> {
    let config = serde_json::json!({ "eos_token": END_OF_TEXT_TOKEN }).to_string();
    Ok(TextCodec::from_hf(byte_tokenizer_json()?.as_bytes(), Some(config.as_bytes()))?)
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

fn rotary_tables(
    context: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(context * head_dim);
    let mut sin = Vec::with_capacity(context * head_dim);
    for position in 0..context {
        let angles: Vec<f64> =
            (0..half).map(|i| position as f64 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
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
    use crate::config::LoraTarget;
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

    /// Two windows of 13 tokens.
    fn windows() -> Vec<Sequence> {
        vec![Sequence::window((0..13).map(|i| (i * 7 % 256) as u32).collect()); 2]
    }

    /// The mean loss over `sequences`' targets.
    fn mean_loss(model: &TrainLlama, sequences: &[Sequence]) -> Tensor {
        let targets: usize = sequences.iter().map(Sequence::target_count).sum();
        model.loss(sequences, 1.0 / targets as f64, Pass::Evaluation).unwrap()
    }

    /// Plain gradient descent on one fixed batch; the loss before and after.
    fn descend(model: &TrainLlama, steps: usize) -> (f32, f32) {
        let windows = windows();
        let first = mean_loss(model, &windows).to_scalar::<f32>().unwrap();
        for _ in 0..steps {
            let loss = mean_loss(model, &windows);
            let grads = loss.backward().unwrap();
            let mut values = model.params().read_flat().unwrap();
            let g = model.params().gradients_flat(&grads).unwrap();
            values.iter_mut().zip(&g).for_each(|(p, g)| *p -= 0.5 * g);
            model.params().write_flat(&values).unwrap();
        }
        (first, mean_loss(model, &windows).to_scalar::<f32>().unwrap())
    }

    /// `teacher`'s soft targets at the targets of `sequences`: every token, at `temperature`.
    fn soft_targets(teacher: &TrainLlama, sequences: &[Sequence], temperature: f64, weight: f64) -> SoftTargets {
        let (logits, _) = teacher.target_logits(sequences, Pass::Evaluation).unwrap();
        let (mut tokens, mut probabilities) = (Vec::new(), Vec::new());
        for row in logits.to_vec2::<f32>().unwrap() {
            let (top, weights) = crate::distill::top_k(&row, VOCAB_SIZE, temperature);
            tokens.extend(top);
            probabilities.extend(weights);
        }
        let rows = tokens.len() / VOCAB_SIZE;
        SoftTargets {
            tokens: Tensor::from_vec(tokens, (rows, VOCAB_SIZE), &Device::Cpu).unwrap(),
            probabilities: Tensor::from_vec(probabilities, (rows, VOCAB_SIZE), &Device::Cpu).unwrap(),
            temperature,
            cross_entropy_weight: weight,
        }
    }

    #[test]
    fn a_student_distilled_from_a_teacher_comes_to_match_it() {
        let teacher = TrainLlama::new(&tiny(), 1, &Device::Cpu).unwrap();
        descend(&teacher, 30);
        let windows = windows();
        let targets: usize = windows.iter().map(Sequence::target_count).sum();
        let scale = 1.0 / targets as f64;
        let soft = soft_targets(&teacher, &windows, 2.0, 0.0);
        let distilled = |model: &TrainLlama, soft: &SoftTargets| {
            model.distillation_loss(&windows, soft, scale, Pass::Evaluation).unwrap()
        };
        let itself = distilled(&teacher, &soft).to_scalar::<f32>().unwrap();
        assert!(itself.abs() < 1e-4, "the teacher against itself: {itself}");

        let small =
            LlamaSpec { hidden_size: 8, intermediate_size: 16, layers: 1, heads: 2, kv_heads: Some(1), ..tiny() };
        let student = TrainLlama::new(&small, 2, &Device::Cpu).unwrap();
        let first = distilled(&student, &soft).to_scalar::<f32>().unwrap();
        for _ in 0..40 {
            let grads = distilled(&student, &soft).backward().unwrap();
            let mut values = student.params().read_flat().unwrap();
            let g = student.params().gradients_flat(&grads).unwrap();
            values.iter_mut().zip(&g).for_each(|(p, g)| *p -= 0.5 * g);
            student.params().write_flat(&values).unwrap();
        }
        let last = distilled(&student, &soft).to_scalar::<f32>().unwrap();
        assert!(first > 0.1 && last < 0.5 * first, "the KL term from {first} to {last}");

        // All cross-entropy: the data's own loss.
        let plain = mean_loss(&student, &windows).to_scalar::<f32>().unwrap();
        let only_data = distilled(&student, &soft_targets(&teacher, &windows, 2.0, 1.0)).to_scalar::<f32>().unwrap();
        assert!((plain - only_data).abs() < 1e-5, "{plain} against {only_data}");
    }

    #[test]
    fn the_byte_tokenizer_maps_each_byte_to_its_value() {
        let tokenizer = Tokenizer::from_json(byte_tokenizer_json().unwrap().as_bytes(), &[END_OF_TEXT_TOKEN]).unwrap();
        let text = "12+30=42 é\n";
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, super::super::data::bytes_to_tokens(text.as_bytes()));
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        assert_eq!(tokenizer.eos(), &[super::super::data::END_OF_TEXT]);
        assert_eq!(tokenizer.encode("1<|endoftext|>").unwrap(), vec![u32::from(b'1'), super::super::data::END_OF_TEXT]);
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
        let windows = windows();
        let gradients = |precision: Precision| {
            let model = TrainLlama::new(&LlamaSpec { precision, ..tiny() }, 2, &Device::Cpu).unwrap();
            let loss = mean_loss(&model, &windows);
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

    /// A tiny byte-level llama with random weights, as a pretrained base.
    fn tiny_base(seed: u64) -> DenseLlama {
        let model = TrainLlama::new(&tiny(), seed, &Device::Cpu).unwrap();
        DenseLlama {
            config: model.config.clone(),
            tensors: model.merged_weights().unwrap().into_iter().collect(),
            codec: byte_codec().unwrap(),
        }
    }

    fn lora_spec(rank: usize, targets: &[LoraTarget]) -> LoraSpec {
        LoraSpec { rank, alpha: Some(2.0 * rank as f64), targets: targets.to_vec(), dropout: 0.0 }
    }

    fn lora(rank: usize, targets: &[LoraTarget]) -> FineTuneMethod {
        FineTuneMethod::Lora(lora_spec(rank, targets))
    }

    fn fine_tuned(method: &FineTuneMethod, seed: u64) -> TrainLlama {
        TrainLlama::fine_tune(tiny_base(7), method, tiny().context, Precision::F32, seed, &Device::Cpu).unwrap()
    }

    fn logits(model: &TrainLlama) -> Vec<Vec<f32>> {
        let ids = Tensor::new(&[[5u32, 6, 7, 8, 200, 3]], &Device::Cpu).unwrap();
        model.logits(&ids).unwrap().to_vec2::<f32>().unwrap()
    }

    /// Sets every parameter to seeded values of about `scale`.
    fn randomize(model: &TrainLlama, seed: u64, scale: f64) {
        let values = Initializer::new(seed).normal((1, model.params().len()), scale).unwrap();
        model.params().write_flat(&values.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
    }

    #[test]
    fn under_lora_only_the_adapters_are_parameters_and_a_zero_b_leaves_the_base_unchanged() {
        let targets = [LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj];
        let adapted = fine_tuned(&lora(2, &targets), 1);
        let names: Vec<&str> = adapted.params().iter().map(|(name, _)| name).collect();
        assert_eq!(names.len(), tiny().layers * targets.len() * 2);
        assert_eq!(names[0], "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(names[1], "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        // q: [16, 16], v: [8, 16], down: [16, 32], rank 2, in both layers.
        assert_eq!(adapted.params().len(), 2 * 2 * ((16 + 16) + (16 + 8) + (32 + 16)));
        let full = fine_tuned(&FineTuneMethod::Full, 1);
        assert_eq!(full.params().len(), TrainLlama::new(&tiny(), 7, &Device::Cpu).unwrap().params().len());
        assert_eq!(logits(&adapted), logits(&full), "B starts at zero");
    }

    #[test]
    fn merged_weights_give_the_logits_of_base_plus_adapter() {
        let adapted = fine_tuned(&lora(3, &LoraTarget::ALL), 1);
        randomize(&adapted, 11, 0.2);
        let merged = DenseLlama { tensors: adapted.merged_weights().unwrap().into_iter().collect(), ..tiny_base(7) };
        let merged =
            TrainLlama::fine_tune(merged, &FineTuneMethod::Full, tiny().context, Precision::F32, 1, &Device::Cpu)
                .unwrap();
        let (a, b) = (logits(&adapted), logits(&merged));
        let difference = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(difference < 1e-4, "merged logits differ by {difference}");
        assert_ne!(a, logits(&fine_tuned(&FineTuneMethod::Full, 1)), "the adapters changed the model");
    }

    #[test]
    fn lora_gradients_equal_finite_differences() {
        let model = fine_tuned(&lora(2, &[LoraTarget::KProj, LoraTarget::OProj, LoraTarget::UpProj]), 1);
        randomize(&model, 5, 0.3);
        // Masked and padded: the second sequence is shorter and predicts only its last 3 tokens.
        let mut sequences = windows();
        sequences[1] =
            Sequence { tokens: vec![9, 8, 7, 6, 5, 4, 3], targets: vec![false, false, false, false, true, true, true] };
        let loss = |model: &TrainLlama| f64::from(mean_loss(model, &sequences).to_scalar::<f32>().unwrap());
        let gradients = model.params().gradients_flat(&mean_loss(&model, &sequences).backward().unwrap()).unwrap();
        let values = model.params().read_flat().unwrap();
        let step = 1e-2_f32;
        // Indices spread over every adapter matrix, A and B alike.
        for index in (0..values.len()).step_by(values.len() / 24) {
            let mut moved = values.clone();
            moved[index] += step;
            model.params().write_flat(&moved).unwrap();
            let up = loss(&model);
            moved[index] -= 2.0 * step;
            model.params().write_flat(&moved).unwrap();
            let down = loss(&model);
            let numeric = (up - down) / (2.0 * f64::from(step));
            let analytic = f64::from(gradients[index]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.02 * analytic.abs(),
                "parameter {index}: finite difference {numeric}, gradient {analytic}"
            );
        }
    }

    #[test]
    fn lora_dropout_follows_each_sequences_place_in_the_reading_order_and_spares_evaluation() {
        let method = FineTuneMethod::Lora(LoraSpec { dropout: 0.3, ..lora_spec(2, &LoraTarget::ALL) });
        let model = fine_tuned(&method, 1);
        randomize(&model, 3, 0.3);
        let mut sequences = windows();
        sequences[1] = Sequence { tokens: vec![9, 8, 7, 6, 5], targets: vec![false, true, true, true, true] };
        let loss = |sequences: &[Sequence], pass: Pass<'_>| {
            model.loss(sequences, 1.0, pass).unwrap().to_scalar::<f32>().unwrap()
        };
        let training = |sequences: &[Sequence], positions: &[u64]| loss(sequences, Pass::Training { positions });
        let evaluated = loss(&sequences, Pass::Evaluation);
        let together = training(&sequences, &[40, 41]);
        assert_ne!(together, evaluated, "training drops features");
        assert_ne!(together, training(&sequences, &[42, 43]), "other places draw other masks");
        // Apart (as two ranks read them, the short one unpadded), each keeps its masks.
        let apart = training(&sequences[..1], &[40]) + training(&sequences[1..], &[41]);
        assert!((together - apart).abs() < 1e-4 * together.abs(), "{together} vs {apart}");
        let undropped = fine_tuned(&FineTuneMethod::Lora(lora_spec(2, &LoraTarget::ALL)), 1);
        randomize(&undropped, 3, 0.3);
        let plain = undropped.loss(&sequences, 1.0, Pass::Training { positions: &[40, 41] }).unwrap();
        assert_eq!(plain.to_scalar::<f32>().unwrap(), evaluated, "no dropout: training is evaluation");
    }
}

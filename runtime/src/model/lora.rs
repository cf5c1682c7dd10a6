//! LoRA adapters over a llama, in PEFT's file layout: `adapter_config.json` (`r`, `lora_alpha`,
//! `target_modules`, …) and `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[rank, in]`) and
//! `….lora_B.weight` (`[out, rank]`). An adapter is read against the base it adapts: every
//! matrix must fit the base projection it names, every tensor must be one the base has a place
//! for, and a setting this runtime does not apply (DoRA, biases, per-module ranks, …) is refused,
//! never ignored.
//!
//! Applied in a step whose rows belong to several adapters (or none), a projection runs the base
//! once over every row, then each adapter's `scale · (x · Aᵀ) · Bᵀ` over its own rows only,
//! gathered and added back in place ([`Projection::adapt`]): a row's result does not depend on
//! the other rows of the step, whichever adapters they use.
//!
//! The serving llama keeps the query and key rows of each head interleaved (the rotary layout
//! GGUF uses); an adapter's `B` for `q_proj` and `k_proj` has HF's half-split row order and is
//! reordered here the same way [`super::llama::Llama::from_hf`] reorders the base.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::llama::Config;
use crate::error::{Error, Result};

/// PEFT's adapter files.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// What PEFT puts before a module's HF path in a tensor name.
const PEFT_PREFIX: &str = "base_model.model.";

/// A llama projection an adapter can change, by its HF module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Self; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The module's name (`q_proj`), as PEFT's `target_modules` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The module's path inside a layer (`self_attn.q_proj`).
    pub fn module(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// PEFT's name of layer `layer`'s `matrix` (`lora_A` or `lora_B`) for this projection.
    pub fn tensor_name(self, layer: usize, matrix: &str) -> String {
        format!("{PEFT_PREFIX}model.layers.{layer}.{}.{matrix}.weight", self.module())
    }
}

/// The settings of `adapter_config.json` this runtime reads. Every other PEFT setting that would
/// change the computation must be absent or at its neutral value ([`AdapterConfig::check`]).
#[derive(Clone, Debug, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
}

impl AdapterConfig {
    /// The adapted projections, refusing every setting the runtime would otherwise ignore.
    pub fn check(&self) -> std::result::Result<BTreeSet<Projection>, String> {
        if let Some(kind) = &self.peft_type
            && kind != "LORA"
        {
            return Err(format!("peft_type {kind:?} is not LORA"));
        }
        if self.r == 0 {
            return Err("r is 0".into());
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(format!("lora_alpha {} is not a positive number", self.lora_alpha));
        }
        let unsupported = [
            (self.use_dora, "use_dora"),
            (self.fan_in_fan_out, "fan_in_fan_out"),
            (self.bias.as_deref().is_some_and(|b| b != "none"), "bias other than \"none\""),
            (!self.rank_pattern.is_empty(), "rank_pattern"),
            (!self.alpha_pattern.is_empty(), "alpha_pattern"),
            (self.modules_to_save.as_ref().is_some_and(|m| !m.is_null()), "modules_to_save"),
            (self.layers_to_transform.as_ref().is_some_and(|l| !l.is_null()), "layers_to_transform"),
        ];
        if let Some((_, setting)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(format!("{setting} is not supported"));
        }
        let names = self
            .target_modules
            .as_array()
            .ok_or_else(|| format!("target_modules must be a list of module names, not {}", self.target_modules))?;
        let mut targets = BTreeSet::new();
        for name in names {
            let name = name.as_str().ok_or_else(|| format!("target_modules holds {name}, not a name"))?;
            let projection = Projection::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Projection::ALL.iter().map(|p| p.name()).collect();
                format!("target module {name:?} is not a llama projection ({})", known.join(", "))
            })?;
            targets.insert(projection);
        }
        if targets.is_empty() {
            return Err("target_modules is empty".into());
        }
        Ok(targets)
    }

    /// The factor the low-rank product is multiplied by: `alpha / r`, or `alpha / √r` under
    /// rsLoRA.
    pub fn scale(&self) -> f64 {
        match self.use_rslora {
            true => self.lora_alpha / (self.r as f64).sqrt(),
            false => self.lora_alpha / self.r as f64,
        }
    }
}

/// One projection's low-rank update, stored ready to multiply: `Aᵀ` `[in, rank]` and
/// `scale · Bᵀ` `[rank, out]`.
#[derive(Debug)]
struct LowRank {
    a_t: Tensor,
    b_t: Tensor,
}

/// An adapter read against its base: per layer, the update of each adapted projection.
#[derive(Debug)]
pub struct LoraAdapter {
    rank: usize,
    targets: BTreeSet<Projection>,
    layers: Vec<BTreeMap<Projection, LowRank>>,
    bytes: usize,
}

/// The `[out, in]` shape of each of a base llama's projections.
pub fn projection_shape(config: &Config, intermediate: usize, projection: Projection) -> (usize, usize) {
    let Config { hidden_size, heads, kv_heads, head_dim, .. } = *config;
    match projection {
        Projection::Q => (heads * head_dim, hidden_size),
        Projection::K | Projection::V => (kv_heads * head_dim, hidden_size),
        Projection::O => (hidden_size, heads * head_dim),
        Projection::Gate | Projection::Up => (intermediate, hidden_size),
        Projection::Down => (hidden_size, intermediate),
    }
}

impl LoraAdapter {
    /// Reads the adapter from its version's `files` (by name: [`ADAPTER_CONFIG_FILE`],
    /// [`ADAPTER_WEIGHTS_FILE`]) for a base of `config` whose MLP is `intermediate` wide.
    pub fn from_files(
        files: &BTreeMap<String, Vec<u8>>,
        config: &Config,
        intermediate: usize,
        device: &Device,
    ) -> Result<Self> {
        let fail = |reason: String| Error::ModelFile(format!("LoRA adapter: {reason}"));
        let file = |name: &str| files.get(name).ok_or_else(|| fail(format!("{name} is missing")));
        let adapter: AdapterConfig = serde_json::from_slice(file(ADAPTER_CONFIG_FILE)?)
            .map_err(|e| fail(format!("{ADAPTER_CONFIG_FILE}: {e}")))?;
        let targets = adapter.check().map_err(|reason| fail(format!("{ADAPTER_CONFIG_FILE}: {reason}")))?;
        let mut tensors = candle_core::safetensors::load_buffer(file(ADAPTER_WEIGHTS_FILE)?, &Device::Cpu)
            .map_err(|e| fail(format!("{ADAPTER_WEIGHTS_FILE}: {e}")))?;
        let (rank, scale) = (adapter.r, adapter.scale());
        let mut layers = Vec::with_capacity(config.layers);
        let mut bytes = 0;
        for layer in 0..config.layers {
            let mut updates = BTreeMap::new();
            for &projection in &targets {
                let (out, input) = projection_shape(config, intermediate, projection);
                if rank > out.min(input) {
                    return Err(fail(format!(
                        "rank {rank} does not fit {} ({out} × {input}) of layer {layer}",
                        projection.name()
                    )));
                }
                let mut matrix = |name: &str, shape: (usize, usize)| {
                    let key = projection.tensor_name(layer, name);
                    let tensor = tensors.remove(&key).ok_or_else(|| fail(format!("{key} is missing")))?;
                    if tensor.dims() != [shape.0, shape.1] {
                        return Err(fail(format!("{key} is {:?}; the base needs {shape:?}", tensor.dims())));
                    }
                    tensor.to_dtype(DType::F32).map_err(|e| fail(format!("{key}: {e}")))
                };
                let a = matrix("lora_A", (rank, input))?;
                let b = matrix("lora_B", (out, rank))?;
                let b = match projection {
                    Projection::Q => interleave_rows(&b, config.heads, config.head_dim),
                    Projection::K => interleave_rows(&b, config.kv_heads, config.head_dim),
                    _ => Ok(b),
                };
                let ready = |a: Tensor, b: candle_core::Result<Tensor>| -> candle_core::Result<LowRank> {
                    Ok(LowRank {
                        a_t: a.t()?.contiguous()?.to_device(device)?,
                        b_t: (b? * scale)?.t()?.contiguous()?.to_device(device)?,
                    })
                };
                let update = ready(a, b).map_err(|e| fail(format!("layer {layer} {}: {e}", projection.name())))?;
                bytes += (update.a_t.elem_count() + update.b_t.elem_count()) * 4;
                updates.insert(projection, update);
            }
            layers.push(updates);
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(fail(format!("{extra} has no place in the base ({} layers, targets {})", config.layers, {
                let names: Vec<&str> = targets.iter().map(|p| p.name()).collect();
                names.join(", ")
            })));
        }
        Ok(Self { rank, targets, layers, bytes })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn targets(&self) -> &BTreeSet<Projection> {
        &self.targets
    }

    /// Memory the adapter's matrices take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Reorders `[heads · head_dim, n]` rows from HF's half-split rotary order to the interleaved one.
fn interleave_rows(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = w.dims2()?;
    w.reshape((heads, 2, head_dim / 2, columns))?.transpose(1, 2)?.reshape((rows, columns))
}

/// Which rows of a step each adapter serves: the rows of a step's sequences grouped by the
/// adapter they use (sequences of the bare base in no group).
pub struct AdapterRows<'a> {
    groups: Vec<(&'a LoraAdapter, Tensor)>,
}

impl<'a> AdapterRows<'a> {
    /// Groups rows given as `(adapter, row count)` per sequence, in row order.
    pub fn new(
        sequences: impl IntoIterator<Item = (Option<&'a LoraAdapter>, usize)>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut groups: Vec<(&'a LoraAdapter, Vec<u32>)> = Vec::new();
        let mut row = 0u32;
        for (adapter, count) in sequences {
            let rows = row..row + count as u32;
            row += count as u32;
            let Some(adapter) = adapter else { continue };
            match groups.iter_mut().find(|(other, _)| std::ptr::eq(*other, adapter)) {
                Some((_, group)) => group.extend(rows),
                None => groups.push((adapter, rows.collect())),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(adapter, rows)| Ok((adapter, Tensor::from_vec(rows.clone(), rows.len(), device)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { groups })
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds each adapter's update of `projection` in `layer` to its rows of `base` (`x · Wᵀ`
    /// for every row of `x`).
    pub fn adapt(&self, layer: usize, projection: Projection, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor> {
        let mut y = base;
        for (adapter, rows) in &self.groups {
            let Some(update) = adapter.layers.get(layer).and_then(|updates| updates.get(&projection)) else {
                continue;
            };
            let delta = x.index_select(rows, 0)?.matmul(&update.a_t)?.matmul(&update.b_t)?;
            y = y.index_add(rows, &delta, 0)?;
        }
        Ok(y)
    }
}

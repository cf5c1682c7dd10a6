//! A multi-layer perceptron: `layers = [in, hidden…, out]`, an activation between layers and a
//! linear output. Weights are `layers.{i}.weight` (`[out, in]`) and `layers.{i}.bias` in
//! `model.safetensors`; the config lives in the manifest's `config`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::repository::{Architecture, Format, MANIFEST_FILE, Manifest, Task, TensorSpec};
use crate::tensor::DataType;

/// The weights file of an MLP version.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The single input's name.
pub const INPUT: &str = "input";
/// The single output's name.
pub const OUTPUT: &str = "output";

pub use lantern_contract::job::Activation;

/// MLP hyper-parameters, as stored in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Layer widths including input and output: `[in, hidden…, out]`.
    pub layers: Vec<usize>,
    pub activation: Activation,
}

impl Config {
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.layers[0]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.layers[self.layers.len() - 1]
    }

    /// Checks the config is usable and agrees with the manifest's signature.
    pub fn check_signature(&self, manifest: &Manifest) -> Result<(), String> {
        if self.layers.len() < 2 || self.layers.contains(&0) {
            return Err(format!("mlp layers {:?} need at least two non-zero widths", self.layers));
        }
        let expected = self.manifest_spec();
        let matches = |actual: &[TensorSpec], wanted: &[TensorSpec]| {
            actual.len() == 1 && actual[0].name == wanted[0].name && actual[0].shape == wanted[0].shape
        };
        if !matches(&manifest.inputs, &expected.inputs) || !matches(&manifest.outputs, &expected.outputs) {
            return Err(format!(
                "the signature must be input {:?} and output {:?} for mlp layers {:?}",
                expected.inputs[0], expected.outputs[0], self.layers
            ));
        }
        Ok(())
    }

    /// A manifest (without files) describing an MLP with this config.
    pub fn manifest_spec(&self) -> Manifest {
        let spec = |name: &str, width: usize| TensorSpec {
            name: name.into(),
            datatype: DataType::F32,
            shape: vec![-1, width as i64],
        };
        Manifest {
            format: Format::Safetensors,
            architecture: Architecture::Mlp,
            task: Task::Tensor,
            config: serde_json::to_value(self).expect("an mlp config always serializes; this is a bug"),
            inputs: vec![spec(INPUT, self.in_features())],
            outputs: vec![spec(OUTPUT, self.out_features())],
            metrics: Default::default(),
            base: None,
            job: None,
            files: Vec::new(),
        }
    }

    /// Freshly initialised weights (uniform in ±1/√fan_in, as PyTorch's `Linear` does), seeded.
    pub fn random_weights(&self, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (i, pair) in self.layers.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-bound..bound)).collect::<Vec<f32>>();
            let weight = Tensor::from_vec(draw(fan_in * fan_out), (fan_out, fan_in), &Device::Cpu)?;
            let bias = Tensor::from_vec(draw(fan_out), fan_out, &Device::Cpu)?;
            tensors.insert(format!("layers.{i}.weight"), weight);
            tensors.insert(format!("layers.{i}.bias"), bias);
        }
        Ok(tensors)
    }
}

impl Config {
    /// Writes a freshly initialised MLP (`model.safetensors` and `manifest.json`) into `dir`,
    /// creating it: a source directory ready for [`crate::repository::publish`].
    pub fn write_initialised(&self, dir: &Path, seed: u64) -> Result<(), Error> {
        let manifest = self.manifest_spec();
        self.check_signature(&manifest).map_err(Error::invalid)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        self.random_weights(seed)
            .and_then(|weights| candle_core::safetensors::save(&weights, &weights_path))
            .map_err(|e| Error::io(format!("writing {}", weights_path.display()), std::io::Error::other(e)))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        std::fs::write(&manifest_path, manifest.to_json())
            .map_err(|e| Error::io(format!("writing {}", manifest_path.display()), e))
    }
}

/// A loaded MLP.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
}

impl Mlp {
    /// Loads the weights named `layers.{i}.weight` / `layers.{i}.bias`, checking their shapes.
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> candle_core::Result<Self> {
        let vb = vb.pp("layers");
        let layers = cfg
            .layers
            .windows(2)
            .enumerate()
            .map(|(i, pair)| candle_nn::linear(pair[0], pair[1], vb.pp(i)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, activation: cfg.activation })
    }
}

impl super::TensorModel for Mlp {
    /// `input` may live on the host: it is copied to the weights' device first.
    fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = input.to_device(self.layers[0].weight().device())?.to_dtype(DType::F32)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = match self.activation {
                    Activation::Relu => x.relu()?,
                    Activation::Gelu => x.gelu()?,
                    Activation::Tanh => x.tanh()?,
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&x)?,
                };
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorModel;

    /// The same network computed with plain loops, independent of candle.
    fn reference_forward(weights: &HashMap<String, Tensor>, cfg: &Config, row: &[f32]) -> Vec<f32> {
        let mut x = row.to_vec();
        let last = cfg.layers.len() - 2;
        for i in 0..=last {
            let w = weights[&format!("layers.{i}.weight")].to_vec2::<f32>().unwrap();
            let b = weights[&format!("layers.{i}.bias")].to_vec1::<f32>().unwrap();
            x = w.iter().zip(&b).map(|(w_row, b)| w_row.iter().zip(&x).map(|(w, x)| w * x).sum::<f32>() + b).collect();
            if i < last {
                x = x.into_iter().map(|v| v.tanh()).collect();
            }
        }
        x
    }

    #[test]
    fn forward_matches_a_reference_implementation() {
        let cfg = Config { layers: vec![3, 5, 2], activation: Activation::Tanh };
        let weights = cfg.random_weights(7).unwrap();
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let mlp = Mlp::load(vb, &cfg).unwrap();
        let rows = [[0.5f32, -1.0, 2.0], [0.0, 0.25, -0.75]];
        let input = Tensor::new(&rows, &Device::Cpu).unwrap();
        let out = mlp.forward(&input).unwrap().to_vec2::<f32>().unwrap();
        for (row, got) in rows.iter().zip(&out) {
            let want = reference_forward(&weights, &cfg, row);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn weights_of_the_wrong_shape_are_refused() {
        let weights = Config { layers: vec![3, 4, 2], activation: Activation::Relu }.random_weights(1).unwrap();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        assert!(Mlp::load(vb, &Config { layers: vec![3, 5, 2], activation: Activation::Relu }).is_err());
    }

    #[test]
    fn random_weights_are_reproducible_per_seed() {
        let cfg = Config { layers: vec![2, 2], activation: Activation::Relu };
        let a = cfg.random_weights(3).unwrap()["layers.0.weight"].to_vec2::<f32>().unwrap();
        let b = cfg.random_weights(3).unwrap()["layers.0.weight"].to_vec2::<f32>().unwrap();
        let c = cfg.random_weights(4).unwrap()["layers.0.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

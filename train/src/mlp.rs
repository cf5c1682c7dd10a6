//! Training the serving core's MLP ([`lantern_runtime::model::mlp::Mlp`]) itself: its layers are built over
//! the trainable parameters, so what is trained is exactly what serves. Regression minimises the
//! mean squared error of one output; classification the cross-entropy of one logit per class.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::MlpSpec;
use super::params::{Params, model_error};
use crate::error::{Error, Result};
use lantern_runtime::model::TensorModel;
use lantern_runtime::model::mlp::{self, Mlp};
use lantern_runtime::repository::MANIFEST_FILE;

pub struct TrainMlp {
    config: mlp::Config,
    classes: Option<usize>,
    params: Params,
    mlp: Mlp,
}

impl TrainMlp {
    /// `features` inputs; `classes` outputs for classification, else one, on `device`. Weights
    /// are initialised as the serving core's `init-mlp` does, from `seed`.
    pub fn new(spec: &MlpSpec, features: usize, classes: Option<usize>, seed: u64, device: &Device) -> Result<Self> {
        let layers = [vec![features], spec.hidden.clone(), vec![classes.unwrap_or(1)]].concat();
        let config = mlp::Config { layers, activation: spec.activation };
        let initial = config.random_weights(seed).map_err(model_error)?;
        let mut params = Params::on(device);
        let mut tensors = HashMap::new();
        for i in 0..config.layers.len() - 1 {
            for kind in ["weight", "bias"] {
                let name = format!("layers.{i}.{kind}");
                let var = params.add(name.clone(), initial[&name].clone())?;
                tensors.insert(name, var.as_tensor().clone());
            }
        }
        // The layers hold the variables' own tensors, so updates reach them.
        let mlp = Mlp::load(VarBuilder::from_tensors(tensors, DType::F32, device), &config).map_err(model_error)?;
        Ok(Self { config, classes, params, mlp })
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The mean loss over `rows` and their `targets`.
    pub fn loss(&self, rows: &[Vec<f32>], targets: &[f32]) -> candle_core::Result<Tensor> {
        let device = self.params.device();
        let output = self.mlp.forward(&self.input(rows)?)?;
        match self.classes {
            Some(_) => {
                let classes: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
                candle_nn::loss::cross_entropy(&output, &Tensor::from_vec(classes, targets.len(), device)?)
            }
            None => candle_nn::loss::mse(&output.squeeze(1)?, &Tensor::from_slice(targets, targets.len(), device)?),
        }
    }

    /// `rows` as one `[rows, features]` tensor on the parameters' device.
    fn input(&self, rows: &[Vec<f32>]) -> candle_core::Result<Tensor> {
        Tensor::from_vec(rows.concat(), (rows.len(), self.config.in_features()), self.params.device())
    }

    /// Held-out loss, and accuracy for classification.
    pub fn evaluate(&self, rows: &[Vec<f32>], targets: &[f32]) -> Result<Vec<(String, f64)>> {
        let loss = self.loss(rows, targets).and_then(|l| l.to_scalar::<f32>()).map_err(model_error)?;
        let mut metrics = vec![("eval_loss".to_owned(), f64::from(loss))];
        if self.classes.is_some() {
            let predicted = self
                .input(rows)
                .and_then(|input| self.mlp.forward(&input)?.argmax(1)?.to_vec1::<u32>())
                .map_err(model_error)?;
            let right = predicted.iter().zip(targets).filter(|&(&p, &t)| p as f32 == t).count();
            metrics.push(("eval_accuracy".to_owned(), right as f64 / targets.len() as f64));
        }
        Ok(metrics)
    }

    /// Writes `model.safetensors` and `manifest.json`: a source directory for `publish`.
    pub fn write_checkpoint(&self, dir: &Path) -> Result<()> {
        self.params.save(&dir.join(mlp::WEIGHTS_FILE))?;
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, self.config.manifest_spec().to_json())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lantern_runtime::model::mlp::Activation;

    #[test]
    fn training_updates_reach_the_serving_layers_and_learn_a_line() {
        let spec = MlpSpec { hidden: vec![8], activation: Activation::Tanh };
        let model = TrainMlp::new(&spec, 1, None, 3, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = (0..16).map(|i| vec![i as f32 / 8.0 - 1.0]).collect();
        let targets: Vec<f32> = rows.iter().map(|r| 0.5 * r[0] + 0.2).collect();
        let first = model.loss(&rows, &targets).unwrap().to_scalar::<f32>().unwrap();
        for _ in 0..200 {
            let grads = model.loss(&rows, &targets).unwrap().backward().unwrap();
            let g = model.params().gradients_flat(&grads).unwrap();
            let mut values = model.params().read_flat().unwrap();
            values.iter_mut().zip(&g).for_each(|(p, g)| *p -= 0.1 * g);
            model.params().write_flat(&values).unwrap();
        }
        let last = model.loss(&rows, &targets).unwrap().to_scalar::<f32>().unwrap();
        assert!(last < first / 10.0 && last < 0.01, "{first} -> {last}");
    }
}

//! The optimizer over a flat parameter vector: AdamW with decoupled weight decay, a linear
//! warm-up then cosine decay of the learning rate, and global-norm gradient clipping. Every rank
//! runs it on the same averaged gradients, so every rank's parameters stay identical.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::config::{OptimizerSpec, ScheduleSpec};
use crate::error::{Error, Result};

/// The learning rate of (0-based) `step`: linear from `lr / warmup` up to `lr` over the warm-up,
/// then a cosine from `lr` down to `min_lr` at the last step.
pub fn learning_rate(optimizer: &OptimizerSpec, schedule: &ScheduleSpec, step: u64) -> f64 {
    let (peak, floor) = (optimizer.learning_rate, optimizer.min_learning_rate);
    if step < schedule.warmup_steps {
        return peak * (step + 1) as f64 / schedule.warmup_steps as f64;
    }
    let decay_steps = (schedule.steps - schedule.warmup_steps).max(1) as f64;
    let progress = ((step - schedule.warmup_steps) as f64 / decay_steps).min(1.0);
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `gradients` down to global L2 norm `max_norm` when above it (0 turns clipping off);
/// returns the norm before clipping.
pub fn clip(gradients: &mut [f32], max_norm: f64) -> f64 {
    let norm = gradients.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / norm) as f32;
        gradients.iter_mut().for_each(|g| *g *= scale);
    }
    norm
}

/// AdamW's moments and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    spec: OptimizerSpec,
    decay: Vec<bool>,
    first: Vec<f32>,
    second: Vec<f32>,
    /// Updates applied so far.
    steps: u64,
}

const FIRST: &str = "adamw.first_moment";
const SECOND: &str = "adamw.second_moment";

impl AdamW {
    /// Fresh moments for parameters where `decay` says which numbers get weight decay.
    pub fn new(spec: OptimizerSpec, decay: Vec<bool>) -> Self {
        let count = decay.len();
        Self { spec, decay, first: vec![0.0; count], second: vec![0.0; count], steps: 0 }
    }

    /// One update of `params` with `gradients` at learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], gradients: &[f32], lr: f64) {
        self.steps += 1;
        let OptimizerSpec { beta1, beta2, epsilon, weight_decay, .. } = self.spec;
        let step = self.steps as i32;
        let (correction1, correction2) = (1.0 - beta1.powi(step), 1.0 - beta2.powi(step));
        let (beta1, beta2) = (beta1 as f32, beta2 as f32);
        let step_size = (lr / correction1) as f32;
        let (root2, epsilon) = (correction2.sqrt() as f32, epsilon as f32);
        let shrink = (1.0 - lr * weight_decay) as f32;
        params
            .par_iter_mut()
            .zip(gradients.par_iter())
            .zip(self.first.par_iter_mut().zip(self.second.par_iter_mut()))
            .zip(self.decay.par_iter())
            .for_each(|(((param, &g), (m, v)), &decay)| {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                if decay {
                    *param *= shrink;
                }
                *param -= step_size * *m / (v.sqrt() / root2 + epsilon);
            });
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Writes the moments (the step count lives in the training state's JSON).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensor = |values: &[f32]| Tensor::from_slice(values, values.len(), &Device::Cpu);
        let tensors: HashMap<String, Tensor> = [(FIRST, &self.first), (SECOND, &self.second)]
            .into_iter()
            .map(|(name, values)| tensor(values).map(|t| (name.to_owned(), t)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| Error::candle("optimizer state", e))?;
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| Error::candle(format!("writing {}", path.display()), e))
    }

    /// Restores moments written by [`AdamW::save`] after `steps` updates.
    pub fn load(&mut self, path: &Path, steps: u64) -> Result<()> {
        let fail = |reason: String| Error::State { path: path.to_owned(), reason };
        let read = |e| Error::candle(format!("reading {}", path.display()), e);
        let stored = candle_core::safetensors::load(path, &Device::Cpu).map_err(read)?;
        for (name, target) in [(FIRST, &mut self.first), (SECOND, &mut self.second)] {
            let values = stored.get(name).ok_or_else(|| fail(format!("no {name}")))?.to_vec1::<f32>().map_err(read)?;
            if values.len() != target.len() {
                return Err(fail(format!("{name} holds {} values, the model has {}", values.len(), target.len())));
            }
            *target = values;
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_warms_up_linearly_then_decays_to_the_floor() {
        let optimizer = OptimizerSpec { learning_rate: 1.0, min_learning_rate: 0.1, ..OptimizerSpec::default() };
        let schedule = ScheduleSpec { steps: 110, warmup_steps: 10, global_batch: 1 };
        let rate = |step| learning_rate(&optimizer, &schedule, step);
        assert!((rate(0) - 0.1).abs() < 1e-12 && (rate(4) - 0.5).abs() < 1e-12);
        assert!((rate(10) - 1.0).abs() < 1e-12, "the peak right after the warm-up");
        assert!((rate(60) - 0.55).abs() < 1e-12, "half way down the cosine");
        assert!((rate(110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_norm_and_leaves_small_gradients_alone() {
        let mut big = vec![3.0, 4.0];
        assert_eq!(clip(&mut big, 1.0), 5.0);
        assert!((big[0] - 0.6).abs() < 1e-6 && (big[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.3, 0.4];
        clip(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }

    #[test]
    fn adamw_moves_against_the_gradient_and_decays_only_matrices() {
        let spec = OptimizerSpec { weight_decay: 0.5, ..OptimizerSpec::default() };
        let mut adam = AdamW::new(spec.clone(), vec![true, false]);
        let mut params = vec![1.0, 1.0];
        adam.update(&mut params, &[0.0, 2.0], 0.1);
        // The first step moves by about lr · sign(g); decay shrinks only the first by lr · wd.
        assert!((params[0] - 0.95).abs() < 1e-6, "{params:?}");
        assert!((params[1] - 0.9).abs() < 1e-6, "{params:?}");
        let dir = tempfile::tempdir().unwrap();
        adam.save(&dir.path().join("o.safetensors")).unwrap();
        let mut restored = AdamW::new(spec, vec![true, false]);
        restored.load(&dir.path().join("o.safetensors"), adam.steps()).unwrap();
        assert_eq!(restored, adam);
    }
}

//! A model's trainable tensors, by name, in a fixed order. The optimizer and the collective see
//! them as one flat f32 vector ([`Params::read_flat`], [`Params::gradients_flat`]) so an update is
//! a loop over numbers and an all-reduce is one buffer; names are what checkpoints store.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Named variables in registration order, all on one device.
#[derive(Debug)]
pub struct Params {
    device: Device,
    entries: Vec<(String, Var)>,
}

impl Params {
    /// No variables yet; those added will live on `device`.
    pub fn on(device: &Device) -> Self {
        Self { device: device.clone(), entries: Vec::new() }
    }

    /// Where the variables live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Registers `tensor` (copied to the parameters' device) as the variable `name` and returns it.
    pub fn add(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<Var> {
        let var = tensor.to_device(&self.device).and_then(|t| Var::from_tensor(&t)).map_err(model_error)?;
        self.entries.push((name.into(), var.clone()));
        Ok(var)
    }

    /// Variables with their names, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(name, var)| (name.as_str(), var))
    }

    /// Numbers in all variables.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, var)| var.elem_count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// For each number, whether weight decay applies: matrices yes, vectors (norms, biases) no.
    pub fn decay_mask(&self) -> Vec<bool> {
        self.entries.iter().flat_map(|(_, var)| std::iter::repeat_n(var.rank() >= 2, var.elem_count())).collect()
    }

    /// Every variable's values, concatenated in order.
    pub fn read_flat(&self) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.len());
        for (_, var) in &self.entries {
            flat.extend(var.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(model_error)?);
        }
        Ok(flat)
    }

    /// Sets every variable from `flat` (as [`Params::read_flat`] lays it out).
    pub fn write_flat(&self, flat: &[f32]) -> Result<()> {
        let mut offset = 0;
        for (_, var) in &self.entries {
            let count = var.elem_count();
            let values = Tensor::from_slice(&flat[offset..offset + count], var.shape(), var.device());
            values.and_then(|t| var.set(&t)).map_err(model_error)?;
            offset += count;
        }
        Ok(())
    }

    /// The gradients of every variable, flat; zeros for a variable the loss does not reach.
    pub fn gradients_flat(&self, gradients: &GradStore) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.len());
        for (_, var) in &self.entries {
            match gradients.get(var.as_tensor()) {
                Some(g) => flat.extend(g.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(model_error)?),
                None => flat.extend(std::iter::repeat_n(0.0, var.elem_count())),
            }
        }
        Ok(flat)
    }

    /// Writes every variable to a safetensors file under its name.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.entries.iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())).collect();
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| Error::candle(format!("writing {}", path.display()), e))
    }

    /// Sets every variable from a safetensors file; each must be there with the same shape.
    pub fn load(&self, path: &Path) -> Result<()> {
        let stored = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::candle(format!("reading {}", path.display()), e))?;
        for (name, var) in &self.entries {
            let tensor = stored
                .get(name)
                .ok_or_else(|| Error::State { path: path.to_owned(), reason: format!("no tensor {name}") })?;
            if tensor.shape() != var.shape() {
                return Err(Error::State {
                    path: path.to_owned(),
                    reason: format!("{name} is {:?}, the model needs {:?}", tensor.dims(), var.dims()),
                });
            }
            tensor.to_dtype(DType::F32).and_then(|t| var.set(&t.to_device(&self.device)?)).map_err(model_error)?;
        }
        Ok(())
    }
}

/// Seeded normal values for initial weights (Box–Muller), the same on every rank.
pub struct Initializer {
    rng: rand::rngs::StdRng,
}

impl Initializer {
    pub fn new(seed: u64) -> Self {
        Self { rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    /// A `[rows, columns]` tensor of values drawn uniformly from `-bound..bound`.
    pub fn uniform(&mut self, shape: (usize, usize), bound: f64) -> Result<Tensor> {
        let values = (0..shape.0 * shape.1).map(|_| self.rng.random_range(-bound..bound) as f32).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).map_err(model_error)
    }

    /// A `[rows, columns]` tensor of normal values with standard deviation `std`.
    pub fn normal(&mut self, shape: (usize, usize), std: f64) -> Result<Tensor> {
        let count = shape.0 * shape.1;
        let mut values = Vec::with_capacity(count + 1);
        while values.len() < count {
            let (u, v): (f64, f64) = (self.rng.random_range(f64::EPSILON..1.0), self.rng.random());
            let radius = (-2.0 * u.ln()).sqrt() * std;
            let angle = std::f64::consts::TAU * v;
            values.push((radius * angle.cos()) as f32);
            values.push((radius * angle.sin()) as f32);
        }
        values.truncate(count);
        Tensor::from_vec(values, shape, &Device::Cpu).map_err(model_error)
    }
}

/// A tensor operation failed: a shape bug or exhausted memory.
pub fn model_error(error: candle_core::Error) -> Error {
    Error::candle("training computation", error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_values_round_trip_and_decay_skips_vectors() {
        let mut params = Params::on(&Device::Cpu);
        params.add("w", Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
        params.add("b", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(params.len(), 8);
        assert_eq!(params.decay_mask(), [vec![true; 6], vec![false; 2]].concat());
        let values: Vec<f32> = (0..8).map(|i| i as f32).collect();
        params.write_flat(&values).unwrap();
        assert_eq!(params.read_flat().unwrap(), values);
        let dir = tempfile::tempdir().unwrap();
        params.save(&dir.path().join("p.safetensors")).unwrap();
        params.write_flat(&[0.0; 8]).unwrap();
        params.load(&dir.path().join("p.safetensors")).unwrap();
        assert_eq!(params.read_flat().unwrap(), values);
    }

    #[test]
    fn initial_values_are_seeded_with_the_asked_spread() {
        let a = Initializer::new(3).normal((100, 100), 0.02).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = Initializer::new(3).normal((100, 100), 0.02).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        assert!(mean.abs() < 0.002 && (std - 0.02).abs() < 0.002, "mean {mean}, std {std}");
    }
}

//! Creating parameters: freshly initialised from a seed, or taken from loaded tensors with
//! name and shape checks. The same architecture code serves both paths.

use crate::error::{RegistryError, Result};
use crate::init::InitRng;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

pub(crate) struct Builder {
    pub device: Device,
    pub dtype: DType,
    tensors: Option<(HashMap<String, Tensor>, String)>,
    rng: InitRng,
    pub params: Vec<(String, Var)>,
}

impl Builder {
    pub fn init(device: &Device, dtype: DType, seed: u64) -> Self {
        Self {
            device: device.clone(),
            dtype,
            tensors: None,
            rng: InitRng::new(seed),
            params: vec![],
        }
    }

    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        origin: String,
        device: &Device,
        dtype: DType,
    ) -> Self {
        Self {
            device: device.clone(),
            dtype,
            tensors: Some((tensors, origin)),
            rng: InitRng::new(0),
            params: vec![],
        }
    }

    /// Drops a loaded tensor that the model does not keep (e.g. a tied lm_head).
    pub fn discard(&mut self, name: &str) {
        if let Some((m, _)) = &mut self.tensors {
            m.remove(name);
        }
    }

    pub fn var(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let t = match &mut self.tensors {
            Some((map, origin)) => {
                let t = map
                    .remove(name)
                    .ok_or_else(|| RegistryError::MissingTensor {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        origin: origin.clone(),
                    })?;
                if t.dims() != shape {
                    return Err(RegistryError::ShapeMismatch {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                        origin: origin.clone(),
                    });
                }
                t.to_device(&self.device)?.to_dtype(self.dtype)?
            }
            None => {
                let n: usize = shape.iter().product();
                let data = match init {
                    Init::Normal(std) => self.rng.normal(n, std),
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                };
                Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?
            }
        };
        let v = Var::from_tensor(&t)?;
        self.params.push((name.to_string(), v.clone()));
        Ok(v)
    }

    /// Draws a uniform tensor from the builder's RNG (LoRA A init).
    pub fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Ok(
            Tensor::from_vec(self.rng.uniform(n, bound), shape, &self.device)?
                .to_dtype(self.dtype)?,
        )
    }

    /// The parameters created, and the names of loaded tensors nobody asked for.
    pub fn finish(self) -> (Vec<(String, Var)>, Vec<String>) {
        let mut left: Vec<String> = self
            .tensors
            .map(|(m, _)| m.into_keys().collect())
            .unwrap_or_default();
        left.sort();
        (self.params, left)
    }
}

//! A state dict (name -> tensor) with shape-checked access, shared by the dialect loaders.

use crate::bail;
use crate::error::Result;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
}

impl StateDict {
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Self {
        StateDict { tensors }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have exactly `shape` (an empty shape also accepts a single-element tensor
    /// such as rosinality's `[1]` noise weights).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let Some(t) = self.tensors.get(name) else {
            bail!("missing tensor '{name}' (expected shape {shape:?})");
        };
        let numel: usize = shape.iter().product();
        let scalar_ok = shape.is_empty() && t.numel() == 1;
        if t.shape != shape && !scalar_ok {
            bail!(
                "tensor '{name}' has shape {:?}, expected {:?}",
                t.shape,
                shape
            );
        }
        debug_assert_eq!(t.numel(), numel);
        Ok(t)
    }

    /// The tensor `name` with `shape`, its data reshaped to `as_shape` (same element count).
    pub fn get_as(&self, name: &str, shape: &[usize], as_shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        Tensor::new(as_shape.to_vec(), t.data.clone())
    }

    pub fn vec(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.get(name, &[len])?.data.clone())
    }

    pub fn scalar(&self, name: &str) -> Result<f32> {
        Ok(self.get(name, &[])?.data[0])
    }

    /// The shape of `name`, if present (for inferring the architecture of files that carry no hyper-parameters).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }
}

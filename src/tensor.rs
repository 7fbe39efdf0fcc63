//! A plain owned float32 tensor in row-major (C) order: the unit of data between io, model and backends.

use crate::bail;
use crate::error::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            bail!(
                "tensor of shape {:?} needs {} values, got {}",
                shape,
                numel,
                data.len()
            );
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let numel = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; numel],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self> {
        Tensor::new(shape, self.data)
    }

    /// Rows `[start, end)` of the leading dimension.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Tensor {
            shape,
            data: self.data[start * row..end * row].to_vec(),
        }
    }

    /// Concatenate along the leading dimension; all trailing shapes must agree.
    pub fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            bail!("cannot concatenate zero tensors");
        };
        let tail = &first.shape[1..];
        let mut rows = 0;
        let mut data = Vec::new();
        for p in parts {
            if &p.shape[1..] != tail {
                bail!(
                    "cannot concatenate shapes {:?} and {:?}",
                    first.shape,
                    p.shape
                );
            }
            rows += p.shape[0];
            data.extend_from_slice(&p.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor { shape, data })
    }

    /// Largest absolute element-wise difference; shapes must match.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            bail!("shape mismatch: {:?} vs {:?}", self.shape, other.shape);
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    }

    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}

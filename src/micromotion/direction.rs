//! Edit directions and the latents of an edit: load a direction `d` in any of the shapes people hold one in, and
//! move latents along it (`w + alpha * d`), one alpha or the paper's clip schedule.

use crate::bail;
use crate::error::{Error, Result};
use crate::io::latents;
use crate::io::safetensors::SafeTensors;
use crate::tensor::Tensor;
use std::path::Path;

/// The tensor `mmengine fit` stores the direction under.
const FIT_DIRECTION: &str = "direction";

/// Load the direction `spec` names as `[num_ws, w_dim]`.
///
/// Accepted: W+ `[L, D]` (a fitted `.safetensors`, whose `direction` tensor is taken when no `:NAME` is given),
/// `[1, L, D]` (the paper's `.pt` files), or a W direction `[1, D]` / `[D]`, broadcast to every layer. Any latent
/// container of [`latents::read_latents`] works.
pub fn load(spec: &str, num_ws: usize, w_dim: usize) -> Result<Tensor> {
    let d = read(spec)?;
    if let Some(i) = d.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{spec}: direction element {i} is {} (must be finite)",
            d.data[i]
        );
    }
    to_layers(d, num_ws, w_dim).map_err(|e| Error::invalid(format!("{spec}: {e}")))
}

fn read(spec: &str) -> Result<Tensor> {
    // A fit output holds several tensors; the direction is the one meant here.
    if spec.to_ascii_lowercase().ends_with(".safetensors") {
        let file = SafeTensors::open(Path::new(spec))?;
        if file.contains(FIT_DIRECTION) {
            return file.tensor(FIT_DIRECTION);
        }
    }
    latents::read_latents(spec)
}

fn to_layers(d: Tensor, l: usize, w: usize) -> Result<Tensor> {
    match d.shape.as_slice() {
        &[ll, ww] | &[1, ll, ww] if ll == l && ww == w => d.reshape(vec![l, w]),
        &[ww] | &[1, ww] if ww == w => {
            let data = d.data.repeat(l);
            Tensor::new(vec![l, w], data)
        }
        s => bail!(
            "direction has shape {s:?}; the model expects [{l}, {w}] (W+, optionally [1, {l}, {w}]) or [{w}] (W)"
        ),
    }
}

/// `w + alpha * d` for one latent `w` `[L * D]` and direction `d` `[L, D]`, appended to `out`.
pub fn shift_into(w: &[f32], d: &Tensor, alpha: f32, out: &mut Vec<f32>) {
    out.extend(w.iter().zip(&d.data).map(|(&w, &d)| w + alpha * d));
}

/// `ws + alpha * d` for every row of ws `[N, L, D]`.
pub fn shift(ws: &Tensor, d: &Tensor, alpha: f32) -> Result<Tensor> {
    if ws.shape.len() != 3 || ws.shape[1..] != d.shape[..] {
        bail!(
            "latents of shape {:?} do not match the direction {:?}",
            ws.shape,
            d.shape
        );
    }
    let mut data = Vec::with_capacity(ws.data.len());
    for w in ws.data.chunks(d.numel()) {
        shift_into(w, d, alpha, &mut data);
    }
    Tensor::new(ws.shape.clone(), data)
}

/// The paper's clip schedule: frame i moves by `(i / 100) * scale`, i = 0..frames-1.
pub fn paper_alphas(scale: f32, frames: usize) -> Vec<f32> {
    (0..frames).map(|i| (i as f32 / 100.0) * scale).collect()
}

/// `n` alphas evenly from `a` to `b`, both included (`a` alone when n = 1).
pub fn linspace(a: f32, b: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![a];
    }
    (0..n)
        .map(|i| {
            let t = i as f32 / (n - 1) as f32;
            // This form hits both ends exactly.
            a * (1.0 - t) + b * t
        })
        .collect()
}

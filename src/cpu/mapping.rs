//! The mapping network and truncation, on the CPU.

use crate::backend::Truncation;
use crate::bail;
use crate::error::Result;
use crate::model::Network;
use crate::tensor::Tensor;

const SQRT2: f32 = std::f32::consts::SQRT_2;

/// Effective mapping weights (`W * lr / sqrt(in)`, `b * lr`), computed once per network.
pub struct Mapping {
    layers: Vec<(Tensor, Vec<f32>)>,
}

impl Mapping {
    pub fn new(net: &Network) -> Self {
        let lr = net.mapping_lr_mul;
        let layers = net
            .mapping
            .iter()
            .map(|d| {
                let gain = lr / (d.weight.shape[1] as f32).sqrt();
                let w = Tensor {
                    shape: d.weight.shape.clone(),
                    data: d.weight.data.iter().map(|v| v * gain).collect(),
                };
                (w, d.bias.iter().map(|b| b * lr).collect())
            })
            .collect();
        Mapping { layers }
    }

    /// `z [N, z_dim]` -> w `[N, w_dim]` (one w per sample, before broadcast and truncation).
    pub fn forward(&self, net: &Network, z: &Tensor) -> Result<Tensor> {
        if z.ndim() != 2 || z.shape[1] != net.z_dim {
            bail!(
                "z has shape {:?}, the model expects [N, {}]",
                z.shape,
                net.z_dim
            );
        }
        let mut x = z.clone();
        for row in x.data.chunks_mut(net.z_dim) {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let scale = 1.0 / (mean_sq + 1e-8).sqrt();
            row.iter_mut().for_each(|v| *v *= scale);
        }
        for (w, b) in &self.layers {
            let (out, inp) = (w.shape[0], w.shape[1]);
            let n = x.shape[0];
            let mut y = vec![0f32; n * out];
            for s in 0..n {
                let xs = &x.data[s * inp..(s + 1) * inp];
                for o in 0..out {
                    let wo = &w.data[o * inp..(o + 1) * inp];
                    let acc: f32 = xs.iter().zip(wo).map(|(a, b)| a * b).sum();
                    let v = acc + b[o];
                    y[s * out + o] = if v < 0.0 { v * 0.2 } else { v } * SQRT2;
                }
            }
            x = Tensor::new(vec![n, out], y)?;
        }
        Ok(x)
    }
}

/// Broadcast w `[N, w_dim]` to ws `[N, num_ws, w_dim]` and apply truncation.
pub fn broadcast_truncate(net: &Network, w: &Tensor, t: Truncation) -> Result<Tensor> {
    let (n, d) = (w.shape[0], net.w_dim);
    let mut ws = Vec::with_capacity(n * net.num_ws * d);
    for s in 0..n {
        for _ in 0..net.num_ws {
            ws.extend_from_slice(&w.data[s * d..(s + 1) * d]);
        }
    }
    let mut ws = Tensor::new(vec![n, net.num_ws, d], ws)?;
    truncate(net, &mut ws, t);
    Ok(ws)
}

/// In-place truncation of ws `[N, num_ws, w_dim]`, with torch's `lerp` arithmetic (which switches formula at
/// weight 0.5 for accuracy).
pub fn truncate(net: &Network, ws: &mut Tensor, t: Truncation) {
    if t.psi == 1.0 {
        return;
    }
    let (layers, d) = (net.num_ws, net.w_dim);
    let cutoff = t.cutoff.unwrap_or(layers).min(layers);
    for sample in ws.data.chunks_mut(layers * d) {
        for row in sample.chunks_mut(d).take(cutoff) {
            for (v, &avg) in row.iter_mut().zip(&net.w_avg) {
                let diff = *v - avg;
                *v = if t.psi < 0.5 {
                    avg + t.psi * diff
                } else {
                    *v - diff * (1.0 - t.psi)
                };
            }
        }
    }
}

//! The paper's subspace step over a set of anchor latents `[k, L, D]`: robust PCA of each layer's `k x D` matrix,
//! the best rank-q reconstruction of its low-rank part, and the micromotion direction between two anchors.
//!
//! The paper reconstructs with `torch.pca_lowrank` (randomized, not reproducible outside torch's RNG); here the
//! rank-q reconstruction is the exact truncated SVD, which the randomized one approximates.

use super::rpca::{rpca, Rpca};
use super::svd::svd;
use crate::bail;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Settings of [`fit`].
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Rank q of the reconstruction (the paper uses 4).
    pub rank: usize,
    /// Iteration cap of the robust PCA (the paper uses 1000).
    pub max_iter: usize,
    /// Anchor the direction starts from.
    pub from: usize,
    /// Anchor the direction ends at; `None` is the last anchor.
    pub to: Option<usize>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            rank: 4,
            max_iter: 1000,
            from: 0,
            to: None,
        }
    }
}

/// Result of [`fit`]; tensors are `[k, L, D]` unless noted.
#[derive(Clone, Debug)]
pub struct Fit {
    /// Robust PCA low-rank part (the paper's `L`).
    pub rpca_low_rank: Tensor,
    /// Robust PCA sparse part (`S`).
    pub rpca_sparse: Tensor,
    /// Rank-q truncated SVD of the low-rank part, per layer: the anchors projected onto the subspace.
    pub lowrank: Tensor,
    /// `lowrank[to] - lowrank[from]`, `[L, D]`.
    pub direction: Tensor,
    /// Robust PCA iterations per layer.
    pub iterations: Vec<usize>,
    /// Robust PCA error at exit per layer.
    pub final_err: Vec<f64>,
    /// The anchors the direction was taken between.
    pub from: usize,
    pub to: usize,
}

/// One layer's results, `k x D` row-major.
pub(crate) struct LayerFit {
    low_rank: Vec<f64>,
    sparse: Vec<f64>,
    lowrank: Vec<f64>,
    iterations: usize,
    final_err: f64,
}

impl LayerFit {
    /// Completes layer `layer`'s fit from its robust PCA: the rank-`rank` reconstruction of L (exact truncated SVD,
    /// from the loop's own factors of L when it has them).
    pub(crate) fn from_rpca(
        dec: Rpca,
        layer: usize,
        k: usize,
        width: usize,
        rank: usize,
    ) -> Result<Self> {
        let lowrank = match &dec.low_rank_basis {
            Some(basis) => basis.truncated(rank),
            None => svd(&dec.low_rank, k, width)
                .map_err(|e| in_layer(layer, e))?
                .truncated(rank),
        };
        Ok(LayerFit {
            low_rank: dec.low_rank,
            sparse: dec.sparse,
            lowrank,
            iterations: dec.iterations,
            final_err: dec.final_err,
        })
    }
}

/// Names the layer an error happened in.
pub(crate) fn in_layer(layer: usize, e: Error) -> Error {
    Error::invalid(format!("layer {layer}: {e}"))
}

/// A validated fit problem: `k` anchors of `layers` x `width`, the direction between anchors `from` and `to`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FitShape {
    pub k: usize,
    pub layers: usize,
    pub width: usize,
    pub from: usize,
    pub to: usize,
}

impl FitShape {
    /// Checks `anchors` `[k, L, D]` and `opts` as every fit (CPU or device) does, before any work.
    pub(crate) fn check(anchors: &Tensor, opts: &FitOptions) -> Result<Self> {
        let &[k, layers, width] = anchors.shape.as_slice() else {
            bail!(
                "anchors must be a 3-D tensor [anchors, layers, width], got shape {:?}",
                anchors.shape
            );
        };
        if k < 2 {
            bail!(
                "{k} anchor (shape {:?}); the fit needs at least 2 anchors [k >= 2, layers, width]",
                anchors.shape
            );
        }
        if layers == 0 || width == 0 {
            bail!("anchors of shape {:?} hold no values", anchors.shape);
        }
        let max_rank = k.min(width);
        if opts.rank == 0 || opts.rank > max_rank {
            bail!(
                "rank {} is out of range 1..={max_rank} (the smaller of {k} anchors and width {width})",
                opts.rank
            );
        }
        if opts.max_iter == 0 {
            bail!("max_iter must be at least 1, got 0");
        }
        let to = opts.to.unwrap_or(k - 1);
        for (what, index) in [("from", opts.from), ("to", to)] {
            if index >= k {
                bail!(
                    "{what} anchor {index} is out of range for {k} anchors (0..={})",
                    k - 1
                );
            }
        }
        if opts.from == to {
            bail!("from and to are both anchor {to}; the direction would be zero");
        }
        if let Some(i) = anchors.data.iter().position(|v| !v.is_finite()) {
            bail!(
                "anchors element [{}, {}, {}] is {} (anchors must be finite)",
                i / (layers * width),
                i / width % layers,
                i % width,
                anchors.data[i]
            );
        }
        Ok(FitShape {
            k,
            layers,
            width,
            from: opts.from,
            to,
        })
    }

    /// Layer `l`'s `k x D` matrix of the anchors `[k, L, D]`, row-major, in float64.
    pub(crate) fn layer_matrix(&self, anchors: &Tensor, l: usize) -> Vec<f64> {
        let mut m = Vec::with_capacity(self.k * self.width);
        for a in 0..self.k {
            let start = (a * self.layers + l) * self.width;
            m.extend(
                anchors.data[start..start + self.width]
                    .iter()
                    .map(|&v| v as f64),
            );
        }
        m
    }

    /// The [`Fit`] of the per-layer results, in layer order.
    pub(crate) fn assemble(&self, results: &[LayerFit]) -> Result<Fit> {
        let FitShape {
            k,
            layers,
            width,
            from,
            to,
        } = *self;
        // Scatter the per-layer k x D matrices back into [k, L, D].
        let gather = |pick: fn(&LayerFit) -> &[f64]| {
            let mut data = vec![0f32; k * layers * width];
            for (l, r) in results.iter().enumerate() {
                for (a, row) in pick(r).chunks_exact(width).enumerate() {
                    let start = (a * layers + l) * width;
                    for (o, &v) in data[start..start + width].iter_mut().zip(row) {
                        *o = v as f32;
                    }
                }
            }
            Tensor::new(vec![k, layers, width], data)
        };
        let rpca_low_rank = gather(|r| &r.low_rank)?;
        let rpca_sparse = gather(|r| &r.sparse)?;
        let lowrank = gather(|r| &r.lowrank)?;
        // The difference is taken in float64 before rounding, like the rest of the computation.
        let mut direction = Vec::with_capacity(layers * width);
        for r in results {
            let row = |a: usize| &r.lowrank[a * width..(a + 1) * width];
            direction.extend(row(to).iter().zip(row(from)).map(|(t, f)| (t - f) as f32));
        }
        Ok(Fit {
            rpca_low_rank,
            rpca_sparse,
            lowrank,
            direction: Tensor::new(vec![layers, width], direction)?,
            iterations: results.iter().map(|r| r.iterations).collect(),
            final_err: results.iter().map(|r| r.final_err).collect(),
            from,
            to,
        })
    }
}

/// Fit the micromotion subspace to `anchors` `[k, L, D]` (k anchors, L layers, width D). Layers are independent
/// and run in parallel.
pub fn fit(anchors: &Tensor, opts: &FitOptions) -> Result<Fit> {
    let shape = FitShape::check(anchors, opts)?;
    let results: Vec<LayerFit> = (0..shape.layers)
        .into_par_iter()
        .map(|l| -> Result<LayerFit> {
            let m = shape.layer_matrix(anchors, l);
            let dec = rpca(&m, shape.k, shape.width, opts.max_iter).map_err(|e| in_layer(l, e))?;
            LayerFit::from_rpca(dec, l, shape.k, shape.width, opts.rank)
        })
        .collect::<Result<_>>()?;
    shape.assemble(&results)
}

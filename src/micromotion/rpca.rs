//! Robust PCA by the inexact augmented Lagrangian method, exactly as the paper's `RPCA_gpu`
//! (`StyleCLIP/optimization/pca.py`): M = L + S with L low-rank and S sparse.
//!
//! Two details of the original are kept on purpose because they decide the iteration count: the tolerance is
//! absolute (`1e-7 * sum(M^2)`) while the error it is compared with is relative (`sum((M-L-S)^2) / sum(M^2)`), and
//! both use squared norms. The golden case E reproduces the paper's counts only with these.

use super::svd::{svd, Svd};
use crate::bail;
use crate::error::Result;

/// The decomposition of one matrix.
#[derive(Clone, Debug)]
pub struct Rpca {
    /// Low-rank part L, row-major like the input.
    pub low_rank: Vec<f64>,
    /// Sparse part S.
    pub sparse: Vec<f64>,
    /// Iterations run (one SVD each).
    pub iterations: usize,
    /// `sum((M-L-S)^2) / sum(M^2)` at exit.
    pub final_err: f64,
    /// L as a thin SVD: the last iteration's factors with its shrunk singular values (still descending), so a
    /// truncation of L needs no second SVD. `None` where the loop ran elsewhere (the device fit).
    pub low_rank_svd: Option<Svd>,
}

/// `sign(x) * max(|x| - t, 0)`.
fn shrink(x: f64, t: f64) -> f64 {
    x.signum() * (x.abs() - t).max(0.0)
}

/// The loop's constants for one matrix, derived as the paper does; shared by the CPU loop and the device fit so
/// both validate alike and iterate with the same values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RpcaConstants {
    /// `sum(M^2)`.
    pub norm2: f64,
    /// `k*D / (4 sum(M^2))`.
    pub mu: f64,
    /// `1/mu`: the singular value threshold.
    pub mu_inv: f64,
    /// `lambda/mu` with `lambda = 1/sqrt(max(k, D))`: the entry-wise threshold of S.
    pub sparse_threshold: f64,
    /// `1e-7 * sum(M^2)` (absolute, compared with the relative error, as in the original).
    pub tol: f64,
}

impl RpcaConstants {
    /// Validates the row-major `rows x cols` matrix `m` and `max_iter`, and derives the constants.
    pub(crate) fn new(m: &[f64], rows: usize, cols: usize, max_iter: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || m.len() != rows * cols {
            bail!(
                "robust PCA needs a non-empty {rows} x {cols} matrix, got {} values",
                m.len()
            );
        }
        if max_iter == 0 {
            bail!("robust PCA needs max_iter >= 1");
        }
        if let Some(i) = m.iter().position(|v| !v.is_finite()) {
            bail!(
                "robust PCA input element {i} (row {}, column {}) is {}",
                i / cols,
                i % cols,
                m[i]
            );
        }
        let norm2: f64 = m.iter().map(|v| v * v).sum();
        if norm2 == 0.0 {
            // mu = k*D / (4*0) and err = 0/0: the original divides by zero.
            bail!("robust PCA of an all-zero {rows} x {cols} matrix is undefined");
        }
        let mu = (rows * cols) as f64 / (4.0 * norm2);
        let mu_inv = 1.0 / mu;
        let lambda = 1.0 / (rows.max(cols) as f64).sqrt();
        Ok(RpcaConstants {
            norm2,
            mu,
            mu_inv,
            sparse_threshold: mu_inv * lambda,
            tol: 1e-7 * norm2,
        })
    }
}

/// Decompose the row-major `rows x cols` matrix `m`, iterating at most `max_iter` times.
pub fn rpca(m: &[f64], rows: usize, cols: usize, max_iter: usize) -> Result<Rpca> {
    let RpcaConstants {
        norm2,
        mu,
        mu_inv,
        sparse_threshold,
        tol,
    } = RpcaConstants::new(m, rows, cols, max_iter)?;

    let n = m.len();
    let mut low_rank = vec![0.0; n];
    let mut sparse = vec![0.0; n];
    let mut y = vec![0.0; n];
    let mut work = vec![0.0; n];
    let mut low_rank_svd = None;
    let mut err = f64::INFINITY;
    let mut iterations = 0;
    while err > tol && iterations < max_iter {
        // L = singular value thresholding of M - S + Y/mu at 1/mu.
        for i in 0..n {
            work[i] = m[i] - sparse[i] + mu_inv * y[i];
        }
        let mut dec = svd(&work, rows, cols)?;
        dec.s.iter_mut().for_each(|s| *s = shrink(*s, mu_inv));
        low_rank = dec.reconstruct_with(&dec.s);
        low_rank_svd = Some(dec);
        // S = entry-wise shrinkage of M - L + Y/mu at lambda/mu; then the dual ascent step and the error.
        let mut residual2 = 0.0;
        for i in 0..n {
            sparse[i] = shrink(m[i] - low_rank[i] + mu_inv * y[i], sparse_threshold);
            let r = m[i] - low_rank[i] - sparse[i];
            y[i] += mu * r;
            residual2 += r * r;
        }
        err = residual2 / norm2;
        iterations += 1;
    }
    Ok(Rpca {
        low_rank,
        sparse,
        iterations,
        final_err: err,
        low_rank_svd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's factors of L are an SVD of L: they rebuild it, and truncating them gives what truncating a
    /// fresh SVD of L gives (the fit's rank-q reconstruction takes the former).
    #[test]
    fn low_rank_factors_are_an_svd_of_l() {
        let (rows, cols) = (12, 40);
        let mut state = 0x1234_5678_u64;
        let m: Vec<f64> = (0..rows * cols)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                // Two smooth components plus noise and a few outliers.
                let (r, c) = ((i / cols) as f64, (i % cols) as f64);
                (c * 0.3).sin()
                    + r * 0.1 * (c * 0.7).cos()
                    + 0.05 * noise
                    + if i % 97 == 0 { 3.0 } else { 0.0 }
            })
            .collect();
        let dec = rpca(&m, rows, cols, 1000).unwrap();
        assert!(dec.iterations > 1);
        let factors = dec.low_rank_svd.as_ref().unwrap();
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&factors.truncated(rows), &dec.low_rank));
        let fresh = svd(&dec.low_rank, rows, cols).unwrap();
        assert!(close(&factors.truncated(2), &fresh.truncated(2)));
    }
}

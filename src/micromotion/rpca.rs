//! Robust PCA by the inexact augmented Lagrangian method, exactly as the paper's `RPCA_gpu`
//! (`StyleCLIP/optimization/pca.py`): M = L + S with L low-rank and S sparse.
//!
//! Two details of the original are kept on purpose because they decide the iteration count: the tolerance is
//! absolute (`1e-7 * sum(M^2)`) while the error it is compared with is relative (`sum((M-L-S)^2) / sum(M^2)`), and
//! both use squared norms. The golden case E reproduces the paper's counts only with these.

use super::svd::left_singular;
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
    /// L as the last iteration left it, factored, so that a truncation of L needs no second SVD. `None` where the
    /// loop ran elsewhere (the device fit).
    pub low_rank_basis: Option<LowRankBasis>,
}

/// Singular value thresholding without V: for `W = U diag(s) V^T`, `U diag(shrink(s, t)) V^T = U diag(f) U^T W`
/// with `f = shrink(s, t) / s` (0 where s = 0), since `U^T W = diag(s) V^T`. Every f is below 1, and components
/// with s <= t drop out, so no small singular value is divided by.
#[derive(Clone, Debug)]
pub struct LowRankBasis {
    rows: usize,
    cols: usize,
    /// `rows x r`, orthonormal columns, in descending order of s (and of shrink(s, t), which keeps that order).
    u: Vec<f64>,
    f: Vec<f64>,
    /// The thresholded matrix W.
    w: Vec<f64>,
}

impl LowRankBasis {
    /// `W`'s left singular vectors and the factors for threshold `t`.
    fn new(w: Vec<f64>, rows: usize, cols: usize, t: f64) -> Result<Self> {
        let (u, s) = left_singular(&w, rows, cols)?;
        let f = s
            .iter()
            .map(|&s| if s > 0.0 { shrink(s, t) / s } else { 0.0 })
            .collect();
        Ok(LowRankBasis {
            rows,
            cols,
            u,
            f,
            w,
        })
    }

    /// The thresholded matrix's best rank-`q` approximation, `U[:, :q] diag(f[:q]) U[:, :q]^T W`; `q` at least
    /// the rank gives the whole thresholded matrix.
    pub fn truncated(&self, q: usize) -> Vec<f64> {
        let (rows, cols, r) = (self.rows, self.cols, self.f.len());
        let mut out = vec![0.0; rows * cols];
        let mut projection = vec![0.0; cols];
        for k in 0..q.min(r) {
            let f = self.f[k];
            if f == 0.0 {
                continue;
            }
            // (u_k^T W), then f u_k (u_k^T W) added row by row.
            projection.iter_mut().for_each(|p| *p = 0.0);
            for (a, w_row) in self.w.chunks_exact(cols).enumerate() {
                let coef = self.u[a * r + k];
                projection
                    .iter_mut()
                    .zip(w_row)
                    .for_each(|(p, &x)| *p += coef * x);
            }
            for (a, out_row) in out.chunks_exact_mut(cols).enumerate() {
                let coef = f * self.u[a * r + k];
                out_row
                    .iter_mut()
                    .zip(&projection)
                    .for_each(|(o, &p)| *o += coef * p);
            }
        }
        out
    }
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
    let mut low_rank_basis = None;
    let mut err = f64::INFINITY;
    let mut iterations = 0;
    while err > tol && iterations < max_iter {
        // L = singular value thresholding of M - S + Y/mu at 1/mu.
        for i in 0..n {
            work[i] = m[i] - sparse[i] + mu_inv * y[i];
        }
        let basis = LowRankBasis::new(work.clone(), rows, cols, mu_inv)?;
        low_rank = basis.truncated(rows.min(cols));
        low_rank_basis = Some(basis);
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
        low_rank_basis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's factors of L rebuild it, and truncating them gives what truncating a fresh SVD of L gives (the
    /// fit's rank-q reconstruction takes the former).
    #[test]
    fn low_rank_basis_is_l_factored() {
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
        let basis = dec.low_rank_basis.as_ref().unwrap();
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&basis.truncated(rows), &dec.low_rank));
        let fresh = crate::micromotion::svd::svd(&dec.low_rank, rows, cols).unwrap();
        assert!(close(&basis.truncated(2), &fresh.truncated(2)));
    }

    /// Thresholding through U alone is thresholding through the full SVD, for wide, square and tall matrices.
    #[test]
    fn thresholding_without_v_matches_the_svd() {
        for (rows, cols) in [(7, 30), (9, 9), (25, 6)] {
            let mut state = 0x9e37_79b9_u64 + rows as u64;
            let w: Vec<f64> = (0..rows * cols)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect();
            let d = crate::micromotion::svd::svd(&w, rows, cols).unwrap();
            let t = d.s[d.s.len() / 2];
            let shrunk: Vec<f64> = d.s.iter().map(|&s| shrink(s, t)).collect();
            let basis = LowRankBasis::new(w, rows, cols, t).unwrap();
            let got = basis.truncated(rows.min(cols));
            let want = d.reconstruct_with(&shrunk);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-13, "{rows}x{cols}: {err:e}");
        }
    }
}

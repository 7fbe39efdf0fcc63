//! Thin singular value decomposition by one-sided (Hestenes) Jacobi, in float64, with no system library.
//!
//! The micromotion matrices are wide (k anchors x 512 widths). A Householder LQ step with row pivoting first
//! reduces the k x D matrix to a k x k lower triangle L (`P A = [L 0] H`, P a permutation, H orthogonal); Jacobi
//! rotations then act on the rows of L^T (L's columns, which converge in fewer sweeps than its rows) and are
//! accumulated; once the rows are mutually orthogonal their norms are the singular values, and the two factors,
//! carried back through P and H, are U and V^T. A tall matrix is transposed first, so the rotated side is
//! always the short one. One-sided Jacobi keeps small singular values accurate relative to their size, which a
//! Gram-matrix eigen-solver (squaring the condition number) does not.

use crate::bail;
use crate::error::Result;

/// Sweeps are quadratically convergent; a matrix that still rotates after this many is not a finite input.
const MAX_SWEEPS: usize = 60;

/// Rows whose norm falls below this, after scaling the matrix to a largest entry of about 1, have squared norms
/// near the underflow range, where the dot products that steer the rotations lose their relative accuracy; their
/// singular value is reported as 0 and their V^T row is completed to an orthonormal set instead.
const NEGLIGIBLE: f64 = 1e-140;

/// `M = U diag(s) V^T` for a row-major `rows x cols` matrix M, with `r = min(rows, cols)` components.
#[derive(Clone, Debug)]
pub struct Svd {
    pub rows: usize,
    pub cols: usize,
    /// `rows x r`, row-major, orthonormal columns.
    pub u: Vec<f64>,
    /// `r` singular values, descending, non-negative.
    pub s: Vec<f64>,
    /// `r x cols`, row-major, orthonormal rows.
    pub vt: Vec<f64>,
}

impl Svd {
    /// Number of components, `min(rows, cols)`.
    pub fn components(&self) -> usize {
        self.s.len()
    }

    /// `U[:, :q] diag(values) V^T[:q]` with `q = values.len()`: the truncated reconstruction when `values` is a
    /// prefix of `s`, or a reconstruction with modified singular values. Values beyond `components()` have no
    /// component to scale and are ignored.
    pub fn reconstruct_with(&self, values: &[f64]) -> Vec<f64> {
        let r = self.components();
        let mut out = vec![0.0; self.rows * self.cols];
        for (a, out_row) in out.chunks_exact_mut(self.cols).enumerate() {
            for (i, &value) in values.iter().take(r).enumerate() {
                let coef = self.u[a * r + i] * value;
                if coef == 0.0 {
                    continue;
                }
                let v = &self.vt[i * self.cols..(i + 1) * self.cols];
                for (o, &x) in out_row.iter_mut().zip(v) {
                    *o += coef * x;
                }
            }
        }
        out
    }

    /// The best rank-`q` approximation `U[:, :q] diag(s[:q]) V^T[:q]`; `q >= components()` gives M itself.
    pub fn truncated(&self, q: usize) -> Vec<f64> {
        self.reconstruct_with(&self.s[..q.min(self.components())])
    }
}

/// Checks that `m` holds `rows x cols` finite values.
fn check_input(m: &[f64], rows: usize, cols: usize) -> Result<()> {
    if m.len() != rows * cols {
        bail!(
            "SVD of a {rows} x {cols} matrix needs {} values, got {}",
            rows * cols,
            m.len()
        );
    }
    if let Some(i) = m.iter().position(|v| !v.is_finite()) {
        bail!(
            "SVD input element {i} (row {}, column {}) is {}",
            i / cols,
            i % cols,
            m[i]
        );
    }
    Ok(())
}

/// Thin SVD of the row-major `rows x cols` matrix `m`, converged to machine precision.
pub fn svd(m: &[f64], rows: usize, cols: usize) -> Result<Svd> {
    check_input(m, rows, cols)?;
    if rows <= cols {
        let (u, s, vt) = wide_svd(m.to_vec(), rows, cols)?;
        return Ok(Svd {
            rows,
            cols,
            u,
            s,
            vt,
        });
    }
    // Tall: M^T = U' s V'^T, so M = V' s U'^T.
    let (ut, s, vtt) = wide_svd(transpose(m, rows, cols), cols, rows)?;
    Ok(Svd {
        rows,
        cols,
        u: transpose(&vtt, cols, rows),
        s,
        vt: transpose(&ut, cols, cols),
    })
}

/// The left singular vectors and singular values of the row-major `rows x cols` matrix `m`, without V: `(u, s)`,
/// u `rows x r` row-major with orthonormal columns, s descending, `r = min(rows, cols)`, as [`svd`] gives them.
/// For a wide matrix about half of [`svd`]'s work: the rotations act on L^T, whose normalised rows are U, and V
/// would need them accumulated.
pub fn left_singular(m: &[f64], rows: usize, cols: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    check_input(m, rows, cols)?;
    if rows > cols {
        let d = svd(m, rows, cols)?;
        return Ok((d.u, d.s));
    }
    let mut a = m.to_vec();
    let scale = scale_to_unit(&mut a);
    let (_, perm, lt) = pivoted_lq_transposed(&mut a, rows, cols);
    let (_, mut s, zt) = jacobi(lt, rows, rows, false)?;
    s.iter_mut().for_each(|v| *v /= scale);
    Ok((left_vectors(&zt, &perm), s))
}

fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

crate::cpu::avx2_twin! {
    /// Four independent partial sums let the compiler vectorise the loop (a single running sum fixes the order);
    /// the order is the same at any vector width, so the AVX2 twin gives the same bits.
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        let mut acc = [0.0; 4];
        let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
        let tail: f64 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for k in 0..4 {
                acc[k] += x[k] * y[k];
            }
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }
}

crate::cpu::avx2_twin! {
    /// Apply the plane rotation `(x, y) <- (c x - s y, s x + c y)` to two rows.
    fn rotate(x: &mut [f64], y: &mut [f64], c: f64, s: f64) {
        for (p, q) in x.iter_mut().zip(y.iter_mut()) {
            let (a, b) = (*p, *q);
            *p = c * a - s * b;
            *q = s * a + c * b;
        }
    }
}

crate::cpu::avx2_twin! {
    /// `x <- x - w v`.
    fn subtract_scaled(x: &mut [f64], w: f64, v: &[f64]) {
        x.iter_mut().zip(v).for_each(|(x, v)| *x -= w * v);
    }
}

/// Two distinct rows of a row-major matrix, mutably (`i < j`).
fn row_pair(data: &mut [f64], width: usize, i: usize, j: usize) -> (&mut [f64], &mut [f64]) {
    let (head, tail) = data.split_at_mut(j * width);
    (&mut head[i * width..(i + 1) * width], &mut tail[..width])
}

/// Scales `a` by a power of two (exact) so that its largest entry is about 1, the dot products then neither
/// overflowing nor underflowing for any finite input; returns the factor.
fn scale_to_unit(a: &mut [f64]) -> f64 {
    let max_abs = a.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
    let exponent = if max_abs > 0.0 {
        (max_abs.log2().floor() as i32).clamp(-1000, 1000)
    } else {
        0
    };
    let scale = 2f64.powi(-exponent);
    a.iter_mut().for_each(|v| *v *= scale);
    scale
}

/// `P A = [L 0] H` by the pivoted LQ of the `m x n` matrix `a` (`m <= n`, overwritten): the reflectors of H, the
/// row order P and L^T (`m x m`). Rotating the m x m L^T instead of the m x n rows makes each Jacobi sweep cost
/// m^3 instead of m^2 n (12 x 512: the whole SVD about ten times cheaper), and H and P are orthogonal. The
/// rotations act on the rows of L^T, L's columns: after the pivoted LQ those are far closer to orthogonal than
/// L's rows (one more step of a QR iteration, Drmac and Veselic's preconditioner), so Jacobi needs fewer sweeps
/// when k is large (8-9 instead of 13-14 at 200 x 512).
fn pivoted_lq_transposed(
    a: &mut [f64],
    m: usize,
    n: usize,
) -> (Vec<Reflector>, Vec<usize>, Vec<f64>) {
    let (reflectors, perm) = lq_in_place(a, m, n);
    let mut lt = vec![0.0; m * m];
    for (r, row) in a.chunks_exact(n).enumerate() {
        for (c, &x) in row[..=r].iter().enumerate() {
            lt[c * m + r] = x;
        }
    }
    (reflectors, perm, lt)
}

/// U of `A` from Jacobi's `Z^T` for `L^T = W s Z^T`: L = Z s W^T, so A = P^T Z s (W^T [I 0] H) and U = P^T Z.
fn left_vectors(zt: &[f64], perm: &[usize]) -> Vec<f64> {
    let m = perm.len();
    let mut u = vec![0.0; m * m];
    for (i, &row) in perm.iter().enumerate() {
        for k in 0..m {
            u[row * m + k] = zt[k * m + i];
        }
    }
    u
}

/// SVD of a `m x n` matrix with `m <= n`: returns U (`m x m`), s (`m`), V^T (`m x n`).
fn wide_svd(mut a: Vec<f64>, m: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let scale = scale_to_unit(&mut a);
    let (u, mut s, vt) = if m < n {
        let (reflectors, perm, lt) = pivoted_lq_transposed(&mut a, m, n);
        let (w, s, zt) = jacobi(lt, m, m, true)?;
        let mut vt = vec![0.0; m * n];
        for (k, dst) in vt.chunks_exact_mut(n).enumerate() {
            for (j, x) in dst[..m].iter_mut().enumerate() {
                *x = w[j * m + k];
            }
            // [W^T 0] H_{m-1} ... H_0: the last reflector acts first.
            for r in reflectors.iter().rev() {
                r.apply(dst);
            }
        }
        (left_vectors(&zt, &perm), s, vt)
    } else {
        jacobi(a, m, n, true)?
    };
    s.iter_mut().for_each(|v| *v /= scale);
    Ok((u, s, vt))
}

/// A Householder reflector `H = I - tau v v^T` acting on entries `start..` of a row.
struct Reflector {
    start: usize,
    v: Vec<f64>,
    tau: f64,
}

impl Reflector {
    /// `row <- row H`.
    fn apply(&self, row: &mut [f64]) {
        let tail = &mut row[self.start..];
        let w = self.tau * dot(tail, &self.v);
        subtract_scaled(tail, w, &self.v);
    }
}

/// Householder LQ with row pivoting of the row-major `m x n` matrix (`m <= n`) in place: step i first brings the
/// remaining row with the largest trailing norm to row i. Afterwards row i holds L's row i in its first i + 1
/// entries and zeros beyond, and `P A = [L 0] H_{m-1} ... H_0` with the returned reflectors, where row i of `P A`
/// is row `perm[i]` of A.
fn lq_in_place(a: &mut [f64], m: usize, n: usize) -> (Vec<Reflector>, Vec<usize>) {
    let mut reflectors = Vec::with_capacity(m);
    let mut perm: Vec<usize> = (0..m).collect();
    for i in 0..m {
        let trailing = |r: usize| {
            let x = &a[r * n + i..(r + 1) * n];
            dot(x, x)
        };
        let best = (i..m)
            .map(|r| (r, trailing(r)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .map_or(i, |(r, _)| r);
        if best != i {
            let (ri, rb) = row_pair(a, n, i, best);
            ri.swap_with_slice(rb);
            perm.swap(i, best);
        }
        let x = &a[i * n + i..(i + 1) * n];
        let norm = dot(x, x).sqrt();
        if norm == 0.0 {
            continue;
        }
        // Reflect x onto -sign(x0) ||x|| e0, the choice that avoids cancellation in v0.
        let alpha = if x[0] >= 0.0 { -norm } else { norm };
        let mut v = x.to_vec();
        v[0] -= alpha;
        let vv = dot(&v, &v);
        let r = Reflector {
            start: i,
            v,
            tau: 2.0 / vv,
        };
        let (head, rows_below) = a.split_at_mut((i + 1) * n);
        let row = &mut head[i * n..];
        row[i] = alpha;
        row[i + 1..].iter_mut().for_each(|x| *x = 0.0);
        for below in rows_below.chunks_exact_mut(n) {
            r.apply(below);
        }
        reflectors.push(r);
    }
    (reflectors, perm)
}

/// One-sided Jacobi on the rows of a scaled `m x n` matrix (`m <= n`): U (`m x m`; empty unless `accumulate`),
/// the row norms as singular values (`m`, still scaled), V^T (`m x n`).
fn jacobi(
    mut a: Vec<f64>,
    m: usize,
    n: usize,
    accumulate: bool,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    // q accumulates the row rotations: a = q * M (scaled), so M = q^T a and U = q^T.
    let mut q = Vec::new();
    if accumulate {
        q = vec![0.0; m * m];
        for i in 0..m {
            q[i * m + i] = 1.0;
        }
    }
    // A computed dot product of length n carries a rounding error of about sqrt(n) ulps; a stricter threshold
    // could keep rotating on noise.
    let threshold = (n as f64).sqrt() * f64::EPSILON;
    let mut converged = false;
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        // Squared row norms, recomputed each sweep and updated exactly by each rotation in between: one dot
        // product per pair instead of three.
        let mut norm2: Vec<f64> = a.chunks_exact(n).map(|r| dot(r, r)).collect();
        for i in 0..m {
            // de Rijk's pivoting: bring the largest remaining row to position i (fewer sweeps).
            let best = (i..m)
                .max_by(|&x, &y| norm2[x].total_cmp(&norm2[y]))
                .unwrap_or(i);
            if best != i {
                let (ri, rb) = row_pair(&mut a, n, i, best);
                ri.swap_with_slice(rb);
                if accumulate {
                    let (qi, qb) = row_pair(&mut q, m, i, best);
                    qi.swap_with_slice(qb);
                }
                norm2.swap(i, best);
            }
            for j in i + 1..m {
                let (ri, rj) = row_pair(&mut a, n, i, j);
                let (alpha, beta) = (norm2[i], norm2[j]);
                let gamma = dot(ri, rj);
                if gamma == 0.0 || gamma.abs() <= threshold * alpha.sqrt() * beta.sqrt() {
                    continue;
                }
                rotated = true;
                // The smaller root of t^2 + 2 zeta t - 1 = 0 zeroes the rows' inner product with |angle| <= pi/4.
                // (libm's hypot is a measurable share of the time; zeta^2 only overflows where t = 1/(2 zeta).)
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = if zeta.abs() < 1e150 {
                    zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt())
                } else {
                    0.5 / zeta
                };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(ri, rj, c, s);
                norm2[i] = alpha - t * gamma;
                norm2[j] = beta + t * gamma;
                if accumulate {
                    let (qi, qj) = row_pair(&mut q, m, i, j);
                    rotate(qi, qj, c, s);
                }
            }
        }
        if !rotated {
            converged = true;
            break;
        }
    }
    if !converged {
        bail!("SVD of a {m} x {n} matrix did not converge in {MAX_SWEEPS} Jacobi sweeps");
    }

    let norms: Vec<f64> = a.chunks_exact(n).map(|r| dot(r, r).sqrt()).collect();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));

    let mut u = vec![0.0; q.len()];
    let mut s = vec![0.0; m];
    let mut vt = vec![0.0; m * n];
    let mut degenerate = Vec::new();
    for (k, &src) in order.iter().enumerate() {
        if accumulate {
            for row in 0..m {
                u[row * m + k] = q[src * m + row];
            }
        }
        let norm = norms[src];
        if norm < NEGLIGIBLE {
            degenerate.push(k);
            continue;
        }
        s[k] = norm;
        let inv = 1.0 / norm;
        for (v, &x) in vt[k * n..(k + 1) * n]
            .iter_mut()
            .zip(&a[src * n..(src + 1) * n])
        {
            *v = x * inv;
        }
    }
    complete_rows(&mut vt, n, &degenerate);
    Ok((u, s, vt))
}

/// Fill the rows `missing` of `vt` (currently zero) with unit vectors orthogonal to every other row. Each one
/// starts from the standard basis vector least covered by the rows so far (residual norm at least
/// sqrt((n - rows) / n), never zero) and is orthogonalised twice, for orthogonality to rounding.
fn complete_rows(vt: &mut [f64], n: usize, missing: &[usize]) {
    for &k in missing {
        let mut covered = vec![0.0; n];
        for row in vt.chunks_exact(n) {
            covered.iter_mut().zip(row).for_each(|(c, x)| *c += x * x);
        }
        let best = (0..n)
            .min_by(|&x, &y| covered[x].total_cmp(&covered[y]))
            .expect("n >= 1");
        let mut v = vec![0.0; n];
        v[best] = 1.0;
        for _ in 0..2 {
            for row in vt.chunks_exact(n) {
                let d = dot(row, &v);
                v.iter_mut().zip(row).for_each(|(x, r)| *x -= d * r);
            }
        }
        let norm = dot(&v, &v).sqrt();
        vt[k * n..(k + 1) * n]
            .iter_mut()
            .zip(&v)
            .for_each(|(o, x)| *o = x / norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (xorshift64*), enough for test matrices.
    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
                (r >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Largest |G - I| for the Gram matrix of `count` vectors of length `len`, where vector i's entry j is
    /// `at(i, j)`.
    fn orthonormality_error(count: usize, len: usize, at: impl Fn(usize, usize) -> f64) -> f64 {
        let mut worst = 0.0f64;
        for i in 0..count {
            for j in 0..count {
                let g: f64 = (0..len).map(|p| at(i, p) * at(j, p)).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((g - want).abs());
            }
        }
        worst
    }

    /// Checks every property of a thin SVD and returns it.
    fn check(m: &[f64], rows: usize, cols: usize) -> Svd {
        let d = svd(m, rows, cols).unwrap();
        let r = rows.min(cols);
        assert_eq!((d.u.len(), d.s.len(), d.vt.len()), (rows * r, r, r * cols));
        let scale = m.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        let recon = d.truncated(r);
        let err = max_abs_diff(&recon, m);
        assert!(
            err < 1e-13 * scale,
            "{rows}x{cols}: reconstruction error {err:e}"
        );
        let eu = orthonormality_error(r, rows, |i, p| d.u[p * r + i]);
        let ev = orthonormality_error(r, cols, |i, p| d.vt[i * cols + p]);
        assert!(eu < 1e-13, "{rows}x{cols}: U^T U - I = {eu:e}");
        assert!(ev < 1e-13, "{rows}x{cols}: V^T V - I = {ev:e}");
        assert!(
            d.s.windows(2).all(|w| w[0] >= w[1]),
            "not descending: {:?}",
            d.s
        );
        assert!(d.s.iter().all(|&s| s >= 0.0));
        d
    }

    #[test]
    fn wide_random_matrices() {
        for (rows, cols, seed) in [
            (11, 512, 1),
            (12, 512, 2),
            (2, 7, 3),
            (64, 512, 4),
            (5, 5, 5),
        ] {
            check(&random(rows * cols, seed), rows, cols);
        }
    }

    /// Rows whose norms grow down the matrix (from 1e-12 to 1): the pivoted LQ reorders all of them, and the
    /// small singular values keep their relative accuracy. Also the many-anchor case (200 x 512).
    #[test]
    fn graded_rows_and_many_rows() {
        let (rows, cols) = (30, 64);
        let mut m = random(rows * cols, 14);
        for (i, row) in m.chunks_exact_mut(cols).enumerate() {
            let scale = 10f64.powf(12.0 * (i as f64 / (rows - 1) as f64 - 1.0));
            row.iter_mut().for_each(|v| *v *= scale);
        }
        let d = check(&m, rows, cols);
        assert!(d.s[rows - 1] > 1e-14, "{:?}", d.s);
        check(&random(200 * 512, 15), 200, 512);
    }

    #[test]
    fn tall_matrices_k_greater_than_d() {
        for (rows, cols, seed) in [(20, 3, 6), (300, 200, 7), (9, 1, 8)] {
            check(&random(rows * cols, seed), rows, cols);
        }
    }

    #[test]
    fn single_row() {
        let m = random(512, 9);
        let d = check(&m, 1, 512);
        let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((d.s[0] - norm).abs() < 1e-13 * norm);
        assert!((d.u[0].abs() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn known_singular_values() {
        // diag(3, 1e-20, 2) padded with zero columns: exact values, sorted, tiny one kept to relative precision.
        let mut m = vec![0.0; 3 * 6];
        m[0] = 3.0;
        m[6 + 1] = 1e-20;
        m[12 + 4] = 2.0;
        let d = check(&m, 3, 6);
        assert_eq!(d.s[0], 3.0);
        assert_eq!(d.s[1], 2.0);
        assert!((d.s[2] - 1e-20).abs() < 1e-34);
    }

    #[test]
    fn rank_deficient() {
        // Rank 3 out of 10 rows (products of random factors), plus two exactly repeated rows.
        let (rows, rank, cols) = (10, 3, 512);
        let a = random(rows * rank, 10);
        let b = random(rank * cols, 11);
        let mut m = vec![0.0; rows * cols];
        for i in 0..rows {
            for p in 0..rank {
                for j in 0..cols {
                    m[i * cols + j] += a[i * rank + p] * b[p * cols + j];
                }
            }
        }
        let d = check(&m, rows, cols);
        assert!(d.s[rank - 1] > 1e-3);
        assert!(d.s[rank..].iter().all(|&s| s < 1e-13 * d.s[0]), "{:?}", d.s);
        // The rank-3 truncation is the matrix itself.
        assert!(max_abs_diff(&d.truncated(rank), &m) < 1e-13);
    }

    #[test]
    fn zero_rows_and_zero_matrix() {
        let mut m = random(4 * 9, 12);
        m[9..18].iter_mut().for_each(|v| *v = 0.0);
        let d = check(&m, 4, 9);
        assert_eq!(d.s[3], 0.0);
        for (rows, cols) in [(3, 8), (8, 3), (1, 1)] {
            let d = check(&vec![0.0; rows * cols], rows, cols);
            assert!(d.s.iter().all(|&s| s == 0.0));
        }
    }

    #[test]
    fn extreme_scales() {
        for scale in [1e-200, 1e200] {
            let m: Vec<f64> = random(6 * 40, 13).iter().map(|v| v * scale).collect();
            let d = svd(&m, 6, 40).unwrap();
            let err = max_abs_diff(&d.truncated(6), &m);
            assert!(err < 1e-13 * scale, "scale {scale:e}: error {err:e}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        let e = svd(&[1.0, f64::NAN], 1, 2).unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(svd(&[1.0; 5], 2, 3).is_err());
    }
}

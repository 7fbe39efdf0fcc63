//! A packed 6 x 16 single-precision GEMM microkernel (BLIS layout) for the convolutions in `cpu::conv`.
//!
//! The `gemm` crate re-packs both operands on every call and reaches about half the FMA peak of this CPU on
//! conv-shaped products; the generator needs more than that end to end. Here the convolution packs its operands
//! itself, once, straight from the activations (im2col with the style folded in) and the weights, so this
//! kernel only has to stream them:
//!
//! - `A` (weights): row blocks of `MR` output rows, each stored k-major: `a[k * MR + r]`.
//! - `B` (pixels): column panels of `NR` pixels, each stored k-major: `b[k * NR + c]`.
//! - `C += A B` for one `MR x NR` tile, row `r` at `c + r * ldc`, `NR` contiguous pixels per row.

/// Output rows (channels) per microkernel tile: one broadcast each.
pub const MR: usize = 6;
/// Pixels per microkernel tile: two 8-wide vectors. 6 x 2 accumulators + 2 B vectors + 1 broadcast fit the 16
/// AVX registers.
pub const NR: usize = 16;

/// `C[MR x NR] += A_panel[MR x kc] @ B_panel[kc x NR]`.
///
/// # Safety
/// `a` holds `kc * MR` floats, `b` holds `kc * NR`, and `c` points at `MR` rows of `NR` writable floats `ldc`
/// apart.
#[inline]
pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if *HAS_FMA {
            return kernel_avx2(kc, a, b, c, ldc);
        }
    }
    kernel_portable(kc, a, b, c, ldc)
}

#[cfg(target_arch = "x86_64")]
static HAS_FMA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
});

/// Whether this CPU has AVX2 and FMA (checked once).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return *HAS_FMA;
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Plain Rust twin for CPUs without AVX2/FMA (and the reference for the vector version).
unsafe fn kernel_portable(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    let mut acc = [[0.0f32; NR]; MR];
    for k in 0..kc {
        let bk = std::slice::from_raw_parts(b.add(k * NR), NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.add(k * MR + r);
            for (x, &bv) in row.iter_mut().zip(bk) {
                *x += av * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), NR);
        for (d, v) in dst.iter_mut().zip(row) {
            *d += v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    // Two k steps per iteration give the out-of-order core independent loads to run ahead with.
    let mut k = 0;
    while k + 2 <= kc {
        for step in 0..2 {
            let b0 = _mm256_loadu_ps(b.add(step * NR));
            let b1 = _mm256_loadu_ps(b.add(step * NR + 8));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(step * MR + r));
                acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
            }
        }
        a = a.add(2 * MR);
        b = b.add(2 * NR);
        k += 2;
    }
    if k < kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r));
            acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
            acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let dst = c.add(r * ldc);
        _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc_r[0]));
        _mm256_storeu_ps(
            dst.add(8),
            _mm256_add_ps(_mm256_loadu_ps(dst.add(8)), acc_r[1]),
        );
    }
}

/// `C[rows x cols] += A B` over whole tiles: `a` is `rows / MR` packed row blocks of depth `kc` (block `rb` at
/// `a[rb * a_stride..]`), `b` is `cols / NR` packed panels of depth `kc`, `c` is row-major with stride `ldc`.
/// The A block stays in L1 while the B panels stream from L2.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    kc: usize,
    a: &[f32],
    a_stride: usize,
    row_blocks: usize,
    b: &[f32],
    panels: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if kc == 0 {
        return;
    }
    assert!(row_blocks == 0 || a.len() >= (row_blocks - 1) * a_stride + kc * MR);
    assert!(b.len() >= panels * kc * NR);
    assert!(panels * NR <= ldc && c.len() >= row_blocks * MR * ldc);
    for rb in 0..row_blocks {
        let ap = a[rb * a_stride..].as_ptr();
        for p in 0..panels {
            // SAFETY: the asserts above bound the A block, the B panel and the MR x NR tile of C.
            unsafe {
                kernel(
                    kc,
                    ap,
                    b.as_ptr().add(p * kc * NR),
                    c.as_mut_ptr().add(rb * MR * ldc + p * NR),
                    ldc,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_kernel_matches_portable() {
        for kc in [1, 2, 7, 64] {
            let a: Vec<f32> = (0..kc * MR).map(|i| (i % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..kc * NR).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
            let ldc = NR + 3;
            let c0: Vec<f32> = (0..MR * ldc).map(|i| i as f32).collect();
            let (mut c1, mut c2) = (c0.clone(), c0.clone());
            unsafe {
                kernel(kc, a.as_ptr(), b.as_ptr(), c1.as_mut_ptr(), ldc);
                kernel_portable(kc, a.as_ptr(), b.as_ptr(), c2.as_mut_ptr(), ldc);
            }
            assert_eq!(c1, c2, "kc {kc}");
            assert_eq!(c1[NR..ldc], c0[NR..ldc], "padding columns untouched");
        }
    }
}

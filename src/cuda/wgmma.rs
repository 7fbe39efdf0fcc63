//! The check a device passes before its sm_90 kernels (`kernels/modconv_wgmma.cu`) serve any layer: one wgmma
//! product through `wgmma_probe`, on operands laid out as those kernels lay theirs out, must give exactly the product
//! `kernels/wgmma.cuh` says it computes. Small integers make every product and sum exact in f32, so any difference
//! means the instruction reads or writes other elements than the kernels assume (the layout was derived from the
//! PTX ISA without a GPU at hand); the backend then keeps to the mma.sync kernels.

use super::device::{Device, LaunchDims};
use super::kernels::Kernel;
use super::params::WgmmaProbeParams;
use crate::error::Result;

/// Rows of A and D, columns of B and D, and K of the probed m64n128k16 product.
const M: usize = 64;
const N: usize = 128;
const K: usize = 16;

/// Whether `wgmma_probe` computes D = C + A B on `dev` with A (64 x 16) and B (128 x 16, n-major) in the modconv
/// kernels' kind of layout: one K group's core matrices contiguous along M or N (SBO 128 bytes), K groups LBO apart.
pub fn layout_agrees<D: Device>(dev: &D) -> Result<bool> {
    // Distinct small integers per row, column and K index: a misplaced element changes the sums.
    let a: Vec<f32> = (0..M * K)
        .map(|e| ((e / K * 3 + e % K * 5) % 7) as f32 - 3.0)
        .collect();
    let b: Vec<f32> = (0..N * K)
        .map(|e| ((e / K * 5 + e % K * 3) % 9) as f32 - 4.0)
        .collect();
    let c: Vec<f32> = (0..M * N).map(|e| (e % 11) as f32).collect();
    let halves = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    };
    let upload = |bytes: &[u8]| -> Result<D::Buffer> {
        let mut buf = dev.alloc(bytes.len())?;
        dev.upload(bytes, &mut buf)?;
        Ok(buf)
    };
    let (a_buf, b_buf) = (upload(&halves(&a))?, upload(&halves(&b))?);
    let c_buf = upload(bytemuck::cast_slice(&c))?;
    let d_buf = dev.alloc(M * N * 4)?;
    let a_bytes = (M * K * 2) as i32;
    let params = WgmmaProbeParams {
        d: dev.address(&d_buf),
        c: dev.address(&c_buf),
        a: dev.address(&a_buf),
        b: dev.address(&b_buf),
        a_offset: 0,
        a_lbo: (M * 16) as i32,
        a_sbo: 128,
        b_offset: a_bytes,
        b_lbo: (N * 16) as i32,
        b_sbo: 128,
    };
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    dev.launch(Kernel::WgmmaProbe, dims, &params)?;
    let mut d = vec![0f32; M * N];
    dev.download(&d_buf, bytemuck::cast_slice_mut(&mut d))?;
    Ok((0..M * N).all(|e| {
        let (r, n) = (e / N, e % N);
        let dot: f32 = (0..K).map(|k| a[r * K + k] * b[n * K + k]).sum();
        d[e] == c[e] + dot
    }))
}

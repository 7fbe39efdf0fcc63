//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod fit_case;
pub mod golden_nets;
pub mod images_u8;
pub mod ops_cases;
pub mod random_noise;
pub mod tensor_cores;

/// Tolerance for case G's images. The reference (stylegan2-ada-pytorch, which has no device check) ran that
/// network's 16 and 32 px blocks (`num_fp16_res=2`) in float16 on the CPU, contrary to the case README, so our
/// float32 render differs at float16 precision (measured 5e-3 to 7e-3 max abs on outputs of magnitude ~5). An fp16
/// emulation in PyTorch reproduces the reference bit for bit (benches/stylegan2_torch.py --fp16-res); one on top of
/// our own float32 blocks does not, because their last bits differ from PyTorch's (oneDNN, MKL) and ~0.6% of the
/// 16 px block's inputs then round to a different float16. The ws are float32 in both and keep the usual 1e-5.
pub const FP16_BLOCKS_TOL: f32 = 1e-2;

/// The golden reference data: `$MMENGINE_GOLDEN`, else `../shared/golden` beside the repository.
pub fn golden_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MMENGINE_GOLDEN") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("golden")
}

pub fn golden(case: &str, file: &str) -> PathBuf {
    let path = golden_dir().join(case).join(file);
    assert!(
        path.exists(),
        "golden file {} is missing (set MMENGINE_GOLDEN to the golden folder)",
        path.display()
    );
    path
}

/// Assert `actual` matches `expected` within `abs` absolute, or `rel` relative for large values.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: length mismatch");
    let mut max_err = 0f32;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        let allowed = abs.max(rel * e.abs());
        assert!(
            err <= allowed && a.is_finite(),
            "{what}: element {i}: got {a}, expected {e} (error {err:e} > {allowed:e})"
        );
        max_err = max_err.max(err);
    }
    max_err
}

/// Assert `actual` is `expected` bit for bit (same shape, same f32 bit patterns).
pub fn assert_same_bits(what: &str, actual: &mmengine::Tensor, expected: &mmengine::Tensor) {
    assert_eq!(actual.shape, expected.shape, "{what}: shapes differ");
    for (i, (a, e)) in actual.data.iter().zip(&expected.data).enumerate() {
        assert_eq!(
            a.to_bits(),
            e.to_bits(),
            "{what}: element {i}: got {a}, expected {e}"
        );
    }
}

/// Deterministic uniform [-1, 1) values (xorshift64*), so the tests need no extra crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn tensor(&mut self, shape: Vec<usize>) -> mmengine::Tensor {
        let data = (0..shape.iter().product()).map(|_| self.next()).collect();
        mmengine::Tensor::new(shape, data).unwrap()
    }
}

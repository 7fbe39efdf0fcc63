//! Golden case E (the micromotion subspace fit, `micromotion_rpca`), checked for any implementation of the fit:
//! the CPU's, the emulated kernels', a GPU's.

use super::golden_dir;
use mmengine::io::safetensors::SafeTensors;
use mmengine::micromotion::{Fit, FitOptions};
use mmengine::{Result, Tensor};

/// Tolerance the golden README recommends for L, S, lowrank_exact and direction_exact.
pub const FIT_TOL: f32 = 1e-4;
/// The float64 references are computed like the fit: they agree to float32 rounding of the outputs.
pub const FIT_F64_TOL: f32 = 1e-5;

pub fn case_e() -> SafeTensors {
    SafeTensors::open(
        golden_dir()
            .join("micromotion_rpca")
            .join("rpca.safetensors"),
    )
    .unwrap()
}

/// Runs `fit` on case E's anchors with the paper's settings and holds the result to the golden data: iteration
/// counts exact per layer, tensors within [`FIT_TOL`] (and [`FIT_F64_TOL`] of the float64 references).
pub fn check_case_e(what: &str, fit: impl Fn(&Tensor, &FitOptions) -> Result<Fit>) {
    let case = case_e();
    let anchors = case.tensor("anchors").unwrap();
    let got = fit(&anchors, &FitOptions::default()).unwrap();
    let (_, iterations) = case.tensor_i64("iterations").unwrap();
    let iterations: Vec<usize> = iterations.into_iter().map(|v| v as usize).collect();
    println!("{what}: iterations {:?}", got.iterations);
    assert_eq!(got.iterations, iterations, "{what}: iterations per layer");
    let (_, iterations_f64) = case.tensor_i64("iterations_f64").unwrap();
    assert!(
        iterations_f64
            .iter()
            .map(|&v| v as usize)
            .eq(got.iterations.iter().copied()),
        "{what}: iterations per layer against the float64 reference"
    );
    assert_eq!((got.from, got.to), (0, 10));
    for (name, tensor, tol) in [
        ("L", &got.rpca_low_rank, FIT_TOL),
        ("S", &got.rpca_sparse, FIT_TOL),
        ("lowrank_exact", &got.lowrank, FIT_TOL),
        ("direction_exact", &got.direction, FIT_TOL),
        ("L_f64", &got.rpca_low_rank, FIT_F64_TOL),
        ("S_f64", &got.rpca_sparse, FIT_F64_TOL),
        ("lowrank_exact_f64", &got.lowrank, FIT_F64_TOL),
        ("direction_exact_f64", &got.direction, FIT_F64_TOL),
    ] {
        let err = tensor.max_abs_diff(&case.tensor(name).unwrap()).unwrap();
        println!("{what}: {name} max abs error {err:.3e}");
        assert!(err <= tol, "{what}: {name} max abs error {err:e} > {tol:e}");
    }
    let (_, want_err) = case.tensor_f64("final_err_f64").unwrap();
    let worst = got
        .final_err
        .iter()
        .zip(&want_err)
        .map(|(g, w)| ((g - w) / w).abs())
        .fold(0.0, f64::max);
    println!("{what}: final_err max relative error {worst:.3e}");
    assert!(worst < 1e-6, "{what}: final_err relative error {worst:e}");
}

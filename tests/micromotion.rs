//! The micromotion subspace fit against golden case E (the paper's `RPCA_gpu` run by PyTorch), through the library
//! and through `mmengine fit`, and the fit's refusals of bad input.

mod common;

use common::golden;
use mmengine::io::latents::read_latents;
use mmengine::io::npy;
use mmengine::io::safetensors::SafeTensors;
use mmengine::micromotion::{fit, FitOptions};
use mmengine::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Tolerance the golden README recommends for L, S, lowrank_exact and direction_exact.
const TOL: f32 = 1e-4;

fn case() -> SafeTensors {
    SafeTensors::open(golden("micromotion_rpca", "rpca.safetensors")).unwrap()
}

fn paper(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("paper")
        .join(file);
    assert!(path.exists(), "paper file {} is missing", path.display());
    path
}

fn golden_iterations(case: &SafeTensors, name: &str) -> Vec<usize> {
    let (shape, values) = case.tensor_i64(name).unwrap();
    assert_eq!(shape, vec![18]);
    values.into_iter().map(|v| v as usize).collect()
}

/// Largest |a - b|, printed, and held to `tol`.
fn check_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    let err = got.max_abs_diff(want).unwrap();
    println!("{what}: max abs error {err:.3e}");
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
    err
}

#[test]
fn library_fit_matches_golden_case_e() {
    assert_eq!(case().tensor("anchors").unwrap().shape, vec![11, 18, 512]);
    common::fit_case::check_case_e("cpu", fit);
}

#[test]
fn fit_other_settings() {
    let anchors = case().tensor("anchors").unwrap();
    // A reversed direction with a rank equal to the anchor count: the reconstruction is L itself.
    let opts = FitOptions {
        rank: 11,
        max_iter: 3,
        from: 7,
        to: Some(2),
    };
    let got = fit(&anchors, &opts).unwrap();
    assert!(
        got.iterations.iter().all(|&n| n <= 3),
        "{:?}",
        got.iterations
    );
    let err = got.lowrank.max_abs_diff(&got.rpca_low_rank).unwrap();
    assert!(
        err < 1e-5,
        "full-rank reconstruction differs from L by {err:e}"
    );
    let (layers, width) = (18, 512);
    for l in 0..layers {
        for d in 0..width {
            let at = |a: usize| got.lowrank.data[(a * layers + l) * width + d];
            // The fit subtracts in float64 and rounds once; this subtracts rounded values.
            let diff = (got.direction.data[l * width + d] - (at(2) - at(7))).abs();
            assert!(diff < 1e-6, "direction [{l}, {d}] off by {diff:e}");
        }
    }
}

#[test]
fn paper_direction_file_is_not_an_anchor_set() {
    let spec = paper("d_latent_smile.pt");
    let direction = read_latents(spec.to_str().unwrap()).unwrap();
    assert_eq!(direction.shape, vec![1, 18, 512]);
    let e = fit(&direction, &FitOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 anchors"), "{e}");
}

fn mmengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmengine"))
        .args(args)
        .output()
        .expect("run mmengine")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cli_fit_writes_the_golden_subspace() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("anchors.npy");
    npy::write_npy(&anchors, &case.tensor("anchors").unwrap()).unwrap();
    let out = dir.path().join("fit.safetensors");
    let run = mmengine(&["fit", "--anchors", s(&anchors), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "fit failed: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one summary line: {stderr}"
    );
    assert!(stderr.contains("[5, 5, 5, 5, 7, 6, 2, 6"), "{stderr}");

    let got = SafeTensors::open(&out).unwrap();
    for (name, want) in [
        ("L", "L"),
        ("S", "S"),
        ("lowrank", "lowrank_exact"),
        ("direction", "direction_exact"),
    ] {
        check_close(
            name,
            &got.tensor(name).unwrap(),
            &case.tensor(want).unwrap(),
            TOL,
        );
    }
    let (shape, iterations) = got.tensor_i64("iterations").unwrap();
    assert_eq!(shape, vec![18]);
    let iterations: Vec<usize> = iterations.into_iter().map(|v| v as usize).collect();
    assert_eq!(iterations, golden_iterations(&case, "iterations"));
    assert_eq!(got.tensor("final_err").unwrap().shape, vec![18]);
    let meta = &got.metadata;
    assert_eq!(meta["rank"], "4");
    assert_eq!(meta["max_iter"], "1000");
    assert_eq!(meta["from"], "0");
    assert_eq!(meta["to"], "10");
    assert_eq!(meta["anchors"], s(&anchors));
    assert_eq!(meta["mmengine_version"], env!("CARGO_PKG_VERSION"));
}

/// `mmengine fit` must fail with exit code 1, one error line containing every needle, and no output file.
fn fit_fails(anchors: &str, extra: &[&str], needles: &[&str]) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("fit.safetensors");
    let mut args = vec!["fit", "--anchors", anchors, "-o", s(&out)];
    args.extend_from_slice(extra);
    let run = mmengine(&args);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(1), "mmengine {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "expected one error line: {stderr}");
    for n in needles {
        assert!(line.contains(n), "error '{line}' should mention '{n}'");
    }
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn cli_fit_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let anchors = case().tensor("anchors").unwrap();
    let good = dir.path().join("anchors.npy");
    npy::write_npy(&good, &anchors).unwrap();
    let good = s(&good);

    // A paper direction file holds one [1, 18, 512] tensor: one anchor.
    let smile = paper("d_latent_smile.pt");
    fit_fails(
        s(&smile),
        &[],
        &["d_latent_smile.pt", "1 anchor", "at least 2"],
    );

    let flat = dir.path().join("flat.npy");
    npy::write_npy(
        &flat,
        &anchors.slice_rows(0, 1).reshape(vec![18, 512]).unwrap(),
    )
    .unwrap();
    fit_fails(s(&flat), &[], &["3-D", "[18, 512]"]);

    let mut nan = anchors.clone();
    nan.data[(3 * 18 + 5) * 512 + 7] = f32::NAN;
    let nan_file = dir.path().join("nan.npy");
    npy::write_npy(&nan_file, &nan).unwrap();
    fit_fails(s(&nan_file), &[], &["[3, 5, 7]", "NaN"]);

    fit_fails(good, &["--rank", "12"], &["rank 12", "1..=11"]);
    fit_fails(good, &["--rank", "0"], &["rank 0"]);
    fit_fails(good, &["--from", "11"], &["from anchor 11", "11 anchors"]);
    fit_fails(good, &["--to", "20"], &["to anchor 20", "0..=10"]);
    fit_fails(good, &["--from", "4", "--to", "4"], &["both anchor 4"]);
    fit_fails(good, &["--max-iter", "0"], &["max_iter"]);
}

#[test]
fn cli_fit_on_cuda_without_a_driver_says_so() {
    if mmengine::cuda::driver::driver_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("anchors.npy");
    npy::write_npy(&anchors, &case().tensor("anchors").unwrap()).unwrap();
    fit_fails(
        s(&anchors),
        &["--device", "cuda"],
        &["no CUDA driver", "--device cpu"],
    );
}

//! The CUDA kernels, run by the host emulation (feature `emu`) against the same golden data as the CPU reference.
#![cfg(feature = "emu")]

mod common;

use common::ops_cases::{check_all_cases, OpBackend};
use mmengine::cpu::ops::{BiasAct, ModConv, Resample, Upfirdn};
use mmengine::cuda::emu::EmuDevice;
use mmengine::cuda::ops;
use mmengine::{Result, Tensor};

struct EmuOps(EmuDevice);

impl OpBackend for EmuOps {
    fn name(&self) -> String {
        "emu".to_string()
    }
    fn supports(&self, op: &str) -> bool {
        matches!(op, "bias_act")
    }
    fn upfirdn2d(&self, _x: &Tensor, _f: &Tensor, _p: &Upfirdn) -> Result<Tensor> {
        unreachable!("not a device op yet")
    }
    fn bias_act(&self, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
        ops::bias_act(&self.0, x, b, p)
    }
    fn modulated_conv2d(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _styles: &Tensor,
        _noise: Option<&Tensor>,
        _f: &Tensor,
        _p: &ModConv,
    ) -> Result<Tensor> {
        unreachable!("not a device op yet")
    }
    fn conv2d_resample(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _f: &Tensor,
        _p: &Resample,
    ) -> Result<Tensor> {
        unreachable!("the generator never down-samples; conv2d_resample stays a CPU op")
    }
}

#[test]
fn golden_ops_through_emulated_kernels() {
    check_all_cases(&EmuOps(EmuDevice::new()));
}

/// The device fit (kernels/rpca.cu) on golden case E. The emulation has no cuSOLVER: its SVD step is the CPU's,
/// every other step runs the kernels.
#[test]
fn micromotion_fit_through_emulated_kernels_matches_golden_case_e() {
    let start = std::time::Instant::now();
    common::fit_case::check_case_e("emu", |anchors, opts| {
        mmengine::micromotion::device::fit_on(&EmuDevice::new(), anchors, opts)
    });
    println!("emulated fit: {:.2} s", start.elapsed().as_secs_f64());
}

/// Other settings (a reversed direction, full rank, an iteration cap) give what the CPU fit gives.
#[test]
fn micromotion_fit_through_emulated_kernels_matches_the_cpu_fit() {
    use mmengine::micromotion::{device::fit_on, fit, FitOptions};
    let anchors = common::fit_case::case_e().tensor("anchors").unwrap();
    // Three layers keep the emulated run short; layer 6 of the case stops after 2 iterations, the others go on.
    let anchors = Tensor::new(
        vec![11, 3, 512],
        anchors
            .data
            .chunks_exact(512)
            .enumerate()
            .filter(|(i, _)| matches!(i % 18, 4..=6))
            .flat_map(|(_, row)| row.to_vec())
            .collect(),
    )
    .unwrap();
    let opts = FitOptions {
        rank: 11,
        max_iter: 3,
        from: 7,
        to: Some(2),
    };
    let want = fit(&anchors, &opts).unwrap();
    let got = fit_on(&EmuDevice::new(), &anchors, &opts).unwrap();
    assert_eq!(got.iterations, want.iterations);
    assert_eq!((got.from, got.to), (7, 2));
    for (name, g, w) in [
        ("L", &got.rpca_low_rank, &want.rpca_low_rank),
        ("S", &got.rpca_sparse, &want.rpca_sparse),
        ("lowrank", &got.lowrank, &want.lowrank),
        ("direction", &got.direction, &want.direction),
    ] {
        let err = g.max_abs_diff(w).unwrap();
        println!("{name}: max abs difference from the CPU fit {err:.3e}");
        assert!(err < 1e-5, "{name}: {err:e}");
    }
}

/// Bad input gets the CPU fit's errors, before any device work.
#[test]
fn micromotion_fit_on_device_refuses_bad_input_like_the_cpu() {
    use mmengine::micromotion::{device::fit_on, fit, FitOptions};
    let anchors = common::fit_case::case_e().tensor("anchors").unwrap();
    let mut nan = anchors.clone();
    nan.data[(3 * 18 + 5) * 512 + 7] = f32::NAN;
    let mut zero_layer = anchors.clone();
    for a in 0..11 {
        zero_layer.data[(a * 18 + 9) * 512..(a * 18 + 10) * 512].fill(0.0);
    }
    let one_anchor = anchors.slice_rows(0, 1);
    let flat = one_anchor.clone().reshape(vec![18, 512]).unwrap();
    let opts = |rank, max_iter, from, to| FitOptions {
        rank,
        max_iter,
        from,
        to,
    };
    let cases = [
        (&flat, opts(4, 1000, 0, None), "3-D"),
        (&one_anchor, opts(4, 1000, 0, None), "at least 2 anchors"),
        (&nan, opts(4, 1000, 0, None), "[3, 5, 7]"),
        (&zero_layer, opts(4, 1000, 0, None), "layer 9"),
        (&anchors, opts(12, 1000, 0, None), "rank 12"),
        (&anchors, opts(0, 1000, 0, None), "rank 0"),
        (&anchors, opts(4, 0, 0, None), "max_iter"),
        (&anchors, opts(4, 1000, 11, None), "from anchor 11"),
        (&anchors, opts(4, 1000, 0, Some(20)), "to anchor 20"),
        (&anchors, opts(4, 1000, 4, Some(4)), "both anchor 4"),
    ];
    for (input, opts, needle) in cases {
        let want = fit(input, &opts).unwrap_err().to_string();
        let got = fit_on(&EmuDevice::new(), input, &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(got, want);
        assert!(got.contains(needle), "'{got}' should mention '{needle}'");
    }
}

/// `mmengine fit --device emu` writes what the CPU fit computes and says where it ran.
#[test]
fn cli_fit_on_the_emulation() {
    use mmengine::io::{npy, safetensors::SafeTensors};
    use mmengine::micromotion::{fit, FitOptions};
    let anchors = common::fit_case::case_e().tensor("anchors").unwrap();
    // The first two layers keep the emulated run short.
    let anchors = Tensor::new(
        vec![11, 2, 512],
        anchors
            .data
            .chunks_exact(512)
            .enumerate()
            .filter(|(i, _)| i % 18 < 2)
            .flat_map(|(_, row)| row.to_vec())
            .collect(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("anchors.npy");
    npy::write_npy(&input, &anchors).unwrap();
    let output = dir.path().join("fit.safetensors");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mmengine"))
        .args(["fit", "--device", "emu", "--anchors"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("on emu") && stderr.contains("[5, 5]"),
        "{stderr}"
    );
    let want = fit(&anchors, &FitOptions::default()).unwrap();
    let got = SafeTensors::open(&output).unwrap();
    for (name, w) in [("L", &want.rpca_low_rank), ("direction", &want.direction)] {
        let err = got.tensor(name).unwrap().max_abs_diff(w).unwrap();
        assert!(err < 1e-5, "{name}: {err:e}");
    }
}

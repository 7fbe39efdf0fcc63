//! The golden checks on a real CUDA GPU. CI and most development machines have none: there every test here is
//! reported as skipped, with the reason, and counted in cargo's "ignored" total (this file has its own harness so
//! the count is real and the reason is printed, not hidden).

mod common;

use common::golden_dir;
use mmengine::backend::{Backend, NoiseMode};
use mmengine::cli::{open_backend, DeviceArg};
use mmengine::cpu::ops::Act;
use mmengine::cpu::ConvPath;
use mmengine::cuda::conv::{DeviceConvLayer, Finish};
use mmengine::cuda::device::{Device, DeviceTensor};
use mmengine::cuda::driver::CudaDevice;
use mmengine::cuda::{CudaBackend, Precision};
use mmengine::io::image::Images8;
use mmengine::selftest::{self, Check, DeviceOps};
use mmengine::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn assert_all_pass(what: &str, checks: &[Check]) {
    for c in checks {
        println!(
            "    {} {:40} max error {:.2e}",
            c.case, c.output, c.max_abs_err
        );
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} {} ({:.2e}) {}",
                c.case,
                c.output,
                c.max_abs_err,
                c.problem.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(failed.is_empty(), "{what}: {}", failed.join("; "));
    assert!(!checks.is_empty(), "{what}: nothing checked");
}

/// What a test did: its checks, or nothing because this machine lacks something it needs (printed as skipped).
enum Ran {
    Checked,
    Skipped(String),
}

/// The mma and ldmatrix wrappers against the PTX fragment tables and cvt's rounding, on the GPU's own instructions: the first
/// place to look when a tensor-core mode fails its golden cases.
fn tensor_core_instructions(dev: CudaDevice) -> Ran {
    common::tensor_cores::mma_follows_the_ptx_fragment_layouts(&dev);
    common::tensor_cores::ldmatrix_follows_the_ptx_layout(&dev);
    common::tensor_cores::register_conversions_round_like_cvt(&dev);
    Ran::Checked
}

/// The wgmma wrapper against wgmma.cuh's reading of the PTX ISA, on an sm_90 GPU's own instruction: the first place
/// to look when the sm_90 convolution kernels fail.
fn wgmma_instruction(dev: CudaDevice) -> Ran {
    if !dev.wgmma() {
        return Ran::Skipped("wgmma needs an sm_90 GPU (compute capability 9.0)".to_string());
    }
    common::tensor_cores::wgmma_follows_the_ptx_layout(&dev);
    Ran::Checked
}

/// The sm_90 convolution kernels (wgmma) against the mma.sync ones on the same GPU: 3x3 layers with 256 outputs
/// (two channel blocks of the 128-channel kernel), 40 (the 64-channel one) and 24 (the 32-channel one), each with
/// several K chunks, the last partial, and partial rectangles, then the 512 and 1024 px conv1 shapes (64 channels
/// in two chunks, 32 in one, where the narrow kernels keep one buffer), in fp16 and bf16. Both stage the same rounded inputs
/// and sum in f32, in different orders; the outputs are stored in the 16-bit type, so they may differ by a rounding
/// of it. A misplaced operand or accumulator differs by O(1).
fn wgmma_conv_matches_mma_sync(dev: CudaDevice) -> Ran {
    if !dev.wgmma() {
        return Ran::Skipped(
            "no sm_90 GPU, or its wgmma check failed (see the warning)".to_string(),
        );
    }
    let plain = CudaDevice::new(0).unwrap().without_wgmma();
    let mut rng = common::Rng(0x3c90);
    for (i, o) in [(300, 256), (70, 40), (70, 24), (64, 64), (32, 32)] {
        check_wgmma_conv(&dev, &plain, &mut rng, i, o);
    }
    Ran::Checked
}

fn check_wgmma_conv(
    dev: &CudaDevice,
    plain: &CudaDevice,
    rng: &mut common::Rng,
    i: usize,
    o: usize,
) {
    let (n, h, w) = (2, 19, 21);
    let x = rng.tensor(vec![n, i, h, w]);
    let styles = rng.tensor(vec![n, i]);
    let weight = rng.tensor(vec![o, i, 3, 3]);
    let bias = rng.tensor(vec![o]).data;
    for precision in [Precision::Fp16, Precision::Bf16] {
        let dtype = precision.activation_dtype();
        let run = |d: &CudaDevice| -> Tensor {
            let finish = Finish {
                bias: Some(&bias),
                act: Act::LRELU,
                gain: Act::LRELU.default_gain(),
                clamp: Some(256.0),
                output: dtype,
            };
            let layer =
                DeviceConvLayer::with_precision(d, &weight, true, 1, &finish, false, precision)
                    .unwrap();
            let xd = DeviceTensor::upload_as(d, &x, dtype).unwrap();
            let sd = DeviceTensor::upload(d, &styles).unwrap();
            let dcoefs = layer.demod(d, &sd).unwrap();
            layer
                .forward(d, &xd, &sd, dcoefs.as_ref(), None, ConvPath::Fast)
                .unwrap()
                .download(d)
                .unwrap()
        };
        let (sm90, mma_sync) = (run(dev), run(plain));
        let ulp = match precision {
            Precision::Bf16 => 2f32.powi(-8),
            _ => 2f32.powi(-11),
        };
        let mut worst = 0f32;
        for (e, (a, b)) in sm90.data.iter().zip(&mma_sync.data).enumerate() {
            // Two roundings of the stored type, and the f32 sums' different orders (outputs are O(1) here).
            let bound = 2.0 * ulp * b.abs() + 2e-3;
            assert!(
                (a - b).abs() <= bound,
                "{i} -> {o} channels, {precision}: element {e}: wgmma {a}, mma.sync {b}"
            );
            worst = worst.max((a - b).abs() / bound);
        }
        println!(
            "    {i} -> {o} channels, {precision}: largest difference {worst:.3} of two roundings"
        );
    }
}

fn gemm_precisions(dev: CudaDevice) -> Ran {
    common::tensor_cores::gemm_precisions_against_f64_products(&dev);
    Ran::Checked
}

fn golden_ops(dev: CudaDevice) -> Ran {
    let report = selftest::ops_cases(&golden_dir(), &DeviceOps(dev)).unwrap();
    assert_all_pass("golden ops on the GPU", &report.checks);
    Ran::Checked
}

fn golden_generator(_dev: CudaDevice) -> Ran {
    let checks = selftest::generator_cases(&golden_dir(), Precision::Fp32, &|net| {
        open_backend(DeviceArg::Cuda(0), net, Precision::Fp32)
    })
    .unwrap();
    assert_all_pass("golden generator cases on the GPU", &checks);
    Ran::Checked
}

/// The generator cases in tf32, fp16 and bf16 on the GPU's tensor cores (whose summation order the emulation's
/// twins do not reproduce), at the modes' derived image tolerances.
fn golden_generator_tensor_cores(_dev: CudaDevice) -> Ran {
    for precision in [Precision::Tf32, Precision::Fp16, Precision::Bf16] {
        println!("  {precision}:");
        let checks = selftest::generator_cases(&golden_dir(), precision, &|net| {
            open_backend(DeviceArg::Cuda(0), net, precision)
        })
        .unwrap();
        assert_all_pass(&format!("golden generator cases in {precision}"), &checks);
    }
    Ran::Checked
}

/// A batch in passes of 2 images, each pass's download overlapping the next pass's kernels on another stream,
/// gives exactly the images of one pass (a download ordered before its kernels finish would not), in f32 and as
/// bytes.
fn pipelined_passes(dev: CudaDevice) -> Ran {
    let net = common::golden_nets::nvlabs_network("nvlabs_tiny");
    let ws = common::golden_nets::cases("nvlabs_tiny")
        .tensor("ws")
        .unwrap();
    let ws = Tensor::cat_rows(&[ws.clone(), ws.clone(), ws.clone()]).unwrap();
    let noise = NoiseMode::Random {
        seed: 1,
        first_image: 0,
    };
    let backend = CudaBackend::new(dev, net, Precision::Fp32).unwrap();
    let whole = backend.synthesize(&ws, noise).unwrap();
    backend.set_images_per_pass_limit(2);
    for _ in 0..3 {
        let passes = backend.synthesize(&ws, noise).unwrap();
        assert!(
            passes.data == whole.data,
            "pipelined passes changed the images"
        );
    }
    // The same passes converted to bytes on the device.
    let bytes = backend.synthesize_u8(&ws, noise).unwrap();
    assert!(bytes == Images8::from_tensor(&whole).unwrap());
    Ran::Checked
}

/// The device's conversion to 8-bit pixels gives the host's bytes, NaN, infinities and rounding boundaries
/// included.
fn images_to_u8(dev: CudaDevice) -> Ran {
    common::images_u8::kernel_matches_the_host_conversion(&dev);
    Ran::Checked
}

/// The device's random noise is the host's, within an ulp or two of the device's logf and sincospif.
fn random_noise(dev: CudaDevice) -> Ran {
    let (exact, total) = common::random_noise::kernel_matches_the_host(&dev);
    println!("random noise: {exact} of {total} values equal to the host's bit for bit");
    Ran::Checked
}

/// Needs cuSOLVER, which a machine with only the driver lacks.
fn golden_fit(dev: CudaDevice) -> Ran {
    // SAFETY: only tries to load the library.
    if !unsafe { cudarc::cusolver::sys::is_culib_present() } {
        return Ran::Skipped("cuSOLVER (libcusolver) could not be loaded".to_string());
    }
    common::fit_case::check_case_e("cuda", |anchors, opts| {
        mmengine::micromotion::device::fit_on(&dev, anchors, opts)
    });
    Ran::Checked
}

type GpuTest = (&'static str, fn(CudaDevice) -> Ran);

const TESTS: &[GpuTest] = &[
    ("tensor_core_instructions", tensor_core_instructions),
    ("wgmma_instruction", wgmma_instruction),
    ("wgmma_conv_matches_mma_sync", wgmma_conv_matches_mma_sync),
    ("gemm_precisions", gemm_precisions),
    ("golden_ops", golden_ops),
    ("golden_generator", golden_generator),
    (
        "golden_generator_tensor_cores",
        golden_generator_tensor_cores,
    ),
    ("pipelined_passes", pipelined_passes),
    ("images_to_u8", images_to_u8),
    ("random_noise", random_noise),
    ("golden_fit", golden_fit),
];

fn main() {
    println!("\nrunning {} GPU tests", TESTS.len());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, test) in TESTS {
        match CudaDevice::new(0) {
            Err(e) => {
                println!("test gpu::{name} ... skipped: {e}");
                skipped += 1;
            }
            Ok(dev) => match catch_unwind(AssertUnwindSafe(|| test(dev))) {
                Ok(Ran::Checked) => {
                    println!("test gpu::{name} ... ok");
                    passed += 1;
                }
                Ok(Ran::Skipped(why)) => {
                    println!("test gpu::{name} ... skipped: {why}");
                    skipped += 1;
                }
                Err(_) => {
                    println!("test gpu::{name} ... FAILED");
                    failed += 1;
                }
            },
        }
    }
    if skipped > 0 {
        println!("{skipped} GPU tests skipped (reasons above)");
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; {skipped} ignored; 0 measured; 0 filtered out\n"
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

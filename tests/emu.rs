//! The CUDA kernels, run by the host emulation (feature `emu`) against the same golden data as the CPU reference.
#![cfg(feature = "emu")]

mod common;

use common::ops_cases::check_all_cases;
use common::{assert_close, golden, Rng};
use mmengine::backend::Truncation;
use mmengine::cpu::ops::{Act, BiasAct, Upfirdn};
use mmengine::cuda::emu::EmuDevice;
use mmengine::cuda::mapping::DeviceMapping;
use mmengine::cuda::ops;
use mmengine::io::safetensors::SafeTensors;
use mmengine::model;
use mmengine::selftest::DeviceOps;
use mmengine::Tensor;

#[test]
fn golden_ops_through_emulated_kernels() {
    check_all_cases(&DeviceOps(EmuDevice::new()));
}

/// upfirdn2d beyond the golden cases, against the CPU reference: up and down factors above 2, odd and
/// non-square filters, crops on some sides, flip, gain, more planes than one block row, and a filter too large
/// for the default tile (the host shrinks the tile).
#[test]
fn upfirdn2d_general_cases_match_the_cpu_reference() {
    let dev = EmuDevice::new();
    let cases: [(&[usize], &[usize], Upfirdn); 4] = [
        (
            &[2, 3, 11, 9],
            &[5, 7],
            Upfirdn {
                up: 3,
                down: 2,
                pad: [-2, 3, 4, -1],
                flip_filter: true,
                gain: 2.0,
            },
        ),
        (
            &[1, 2, 13, 17],
            &[6],
            Upfirdn {
                up: 1,
                down: 3,
                pad: [3, 3, -1, 2],
                flip_filter: false,
                gain: 3.0,
            },
        ),
        (
            &[1, 1, 9, 10],
            &[5],
            Upfirdn {
                up: 4,
                down: 1,
                pad: [1, -3, 2, 0],
                flip_filter: true,
                gain: 16.0,
            },
        ),
        (
            &[1, 1, 100, 160],
            &[33, 30],
            Upfirdn {
                up: 1,
                down: 4,
                pad: [0; 4],
                flip_filter: false,
                // Keeps the sums of 990 taps O(1), where the 1e-5 tolerance is meaningful.
                gain: 0.03,
            },
        ),
    ];
    for (i, (x_shape, f_shape, p)) in cases.into_iter().enumerate() {
        let mut rng = Rng(0x0f1d_2d00 + i as u64);
        let x = rng.tensor(x_shape.to_vec());
        let f = rng.tensor(f_shape.to_vec());
        let expected = mmengine::cpu::ops::upfirdn2d(&x, &f, &p).unwrap();
        let actual = ops::upfirdn2d(&dev, &x, &f, &p).unwrap();
        assert_eq!(actual.shape, expected.shape, "case {i}: shape");
        let err = assert_close(
            &format!("case {i}"),
            &actual.data,
            &expected.data,
            1e-5,
            1e-6,
        );
        println!("upfirdn2d general case {i} {p:?}: max abs error {err:.3e}");
    }
}

#[test]
fn device_ops_reject_bad_shapes() {
    let dev = EmuDevice::new();
    let x = Tensor::zeros(vec![1, 2, 4, 4]);
    let p = Upfirdn::default();
    for (f, why) in [
        (Tensor::zeros(vec![2, 2, 2]), "filter must be 1-D or 2-D"),
        (Tensor::zeros(vec![5, 5]), "smaller than the 5x5 filter"),
    ] {
        let err = ops::upfirdn2d(&dev, &x, &f, &p).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let err = ops::upfirdn2d(
        &dev,
        &Tensor::zeros(vec![2, 4, 4]),
        &Tensor::zeros(vec![3]),
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4-D"), "{err}");
    let err = ops::bias_act(&dev, &x, Some(&[0.0; 3]), &BiasAct::new(Act::LRELU))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias has 3 values"), "{err}");
}

/// The kernels' activation (shared by every epilogue) on the values where a clamp or a leaky ReLU could differ
/// from the CPU's: NaN stays NaN with or without a clamp (as f32::clamp keeps it), infinities and -0 follow.
#[test]
fn bias_act_treats_nan_infinities_and_zero_as_the_cpu_does() {
    let dev = EmuDevice::new();
    let values = [
        f32::NAN,
        -3.0,
        0.25,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        1e3,
        -f32::NAN,
    ];
    let x = Tensor::new(vec![1, 2, 2, 2], values.to_vec()).unwrap();
    for act in [Act::Linear, Act::LRELU] {
        for clamp in [None, Some(0.5)] {
            let p = BiasAct {
                clamp,
                ..BiasAct::new(act)
            };
            let device = ops::bias_act(&dev, &x, Some(&[0.0, 0.5]), &p).unwrap();
            let host = mmengine::cpu::ops::bias_act(&x, Some(&[0.0, 0.5]), &p).unwrap();
            for (i, (d, h)) in device.data.iter().zip(&host.data).enumerate() {
                assert!(
                    d.to_bits() == h.to_bits() || (d.is_nan() && h.is_nan()),
                    "{act:?}, clamp {clamp:?}, x = {}: device {d}, CPU {h}",
                    values[i]
                );
            }
        }
    }
}

#[test]
fn images_to_u8_kernel_matches_the_host_conversion() {
    common::images_u8::kernel_matches_the_host_conversion(&EmuDevice::new());
}

/// On the host, the kernel calls the same `logf`, `sin` and `cos` as its twin: every value is the same.
#[test]
fn random_noise_kernel_matches_the_host() {
    let (exact, total) = common::random_noise::kernel_matches_the_host(&EmuDevice::new());
    assert_eq!(exact, total, "{} of {total} values differ", total - exact);
}

const WS_TOL: f32 = 1e-5;

fn device_mapping(case: &str, file: &str) -> DeviceMapping<EmuDevice> {
    let net = model::load(&golden(case, file)).unwrap();
    DeviceMapping::new(&EmuDevice::new(), &net).unwrap()
}

fn trunc(psi: f32, cutoff: Option<usize>) -> Truncation {
    Truncation { psi, cutoff }
}

/// Maps case `case`'s z on the device and checks each (truncation, expected ws) pair.
fn check_mapping(case: &str, file: &str, expected: &[(Truncation, Tensor, &str)]) {
    let dev = EmuDevice::new();
    let mapping = device_mapping(case, file);
    let z = SafeTensors::open(golden(case, "cases.safetensors"))
        .unwrap()
        .tensor("z")
        .unwrap();
    for (t, want, name) in expected {
        let ws = mapping.map(&dev, &z, *t).unwrap();
        assert_eq!(ws.shape, want.shape, "{case} {name}: shape");
        let err = assert_close(name, &ws.data, &want.data, WS_TOL, 0.0);
        println!("emu mapping {case} {name} max abs error {err:.3e}");
    }
}

#[test]
fn mapping_case_a_nvlabs_tiny() {
    let c = SafeTensors::open(golden("nvlabs_tiny", "cases.safetensors")).unwrap();
    check_mapping(
        "nvlabs_tiny",
        "model.pkl",
        &[
            (Truncation::default(), c.tensor("ws").unwrap(), "ws"),
            (trunc(0.7, None), c.tensor("ws_trunc").unwrap(), "ws_trunc"),
        ],
    );
}

#[test]
fn mapping_case_c_rosinality_tiny() {
    let c = SafeTensors::open(golden("rosinality_tiny", "cases.safetensors")).unwrap();
    // The reference gives one w per sample; the mapping repeats it over the 8 ws.
    let broadcast = |name: &str| {
        let w = c.tensor(name).unwrap();
        let data = w.data.chunks(64).flat_map(|row| row.repeat(8)).collect();
        Tensor::new(vec![4, 8, 64], data).unwrap()
    };
    check_mapping(
        "rosinality_tiny",
        "ckpt.pt",
        &[
            (Truncation::default(), broadcast("w"), "w"),
            (trunc(0.7, None), broadcast("w_trunc"), "w_trunc"),
        ],
    );
}

#[test]
fn mapping_case_g_nvlabs_snapshot() {
    let c = SafeTensors::open(golden("nvlabs_snapshot", "cases.safetensors")).unwrap();
    check_mapping(
        "nvlabs_snapshot",
        "snapshot.pkl",
        &[
            (Truncation::default(), c.tensor("ws").unwrap(), "ws"),
            (trunc(0.5, None), c.tensor("ws_trunc").unwrap(), "ws_trunc"),
            (
                trunc(0.5, Some(4)),
                c.tensor("ws_trunc_cutoff4").unwrap(),
                "ws_trunc_cutoff4",
            ),
        ],
    );
}

#[test]
fn mapping_rejects_a_wrong_latent_shape() {
    let dev = EmuDevice::new();
    let mapping = device_mapping("nvlabs_tiny", "model.pkl");
    for shape in [vec![4, 63], vec![4, 8, 64]] {
        let err = mapping
            .map(&dev, &Tensor::zeros(shape), Truncation::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the model expects [N, 64]"), "{err}");
    }
}

/// The tensor-core wrappers of `kernels/mma.cuh` (through their host twins) against the PTX ISA's fragment tables,
/// and the GEMM kernels built on them against f64 products.
mod tensor_cores {
    use crate::common::tensor_cores;
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::cuda::gemm::{self, Precision};

    #[test]
    fn mma_twins_follow_the_ptx_fragment_layouts() {
        tensor_cores::mma_follows_the_ptx_fragment_layouts(&EmuDevice::new());
    }

    #[test]
    fn ldmatrix_twin_follows_the_ptx_layout() {
        tensor_cores::ldmatrix_follows_the_ptx_layout(&EmuDevice::new());
    }

    #[test]
    fn wgmma_twin_follows_the_ptx_layout() {
        tensor_cores::wgmma_follows_the_ptx_layout(&EmuDevice::sm90());
        // The check a GPU passes before its sm_90 kernels serve layers agrees with the twin.
        assert!(mmengine::cuda::wgmma::layout_agrees(&EmuDevice::sm90()).unwrap());
    }

    #[test]
    fn register_conversions_round_like_cvt() {
        tensor_cores::register_conversions_round_like_cvt(&EmuDevice::new());
    }

    #[test]
    fn gemm_precisions_against_f64_products() {
        tensor_cores::gemm_precisions_against_f64_products(&EmuDevice::new());
    }

    #[test]
    fn precision_names_parse_and_bad_ones_say_what_is_expected() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        let err = "fp64".parse::<Precision>().unwrap_err().to_string();
        assert!(
            err.contains("fp64") && err.contains("fp32, tf32, fp16 or bf16"),
            "{err}"
        );
    }

    #[test]
    fn matmul_rejects_mismatched_shapes_and_handles_empty_ones() {
        let dev = EmuDevice::new();
        let a = mmengine::Tensor::zeros(vec![3, 4]);
        let b = mmengine::Tensor::zeros(vec![5, 2]);
        assert!(gemm::matmul(&dev, &a, &b, Precision::Tf32).is_err());
        let v = mmengine::Tensor::zeros(vec![4]);
        assert!(gemm::matmul(&dev, &v, &b, Precision::Fp32).is_err());
        let empty_k = gemm::matmul(
            &dev,
            &mmengine::Tensor::zeros(vec![3, 0]),
            &mmengine::Tensor::zeros(vec![0, 2]),
            Precision::Fp16,
        )
        .unwrap();
        assert_eq!((empty_k.shape, empty_k.data), (vec![3, 2], vec![0.0; 6]));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The modulated convolution kernels against the CPU generator's convolution and the unfused up-sampling twin.

mod modconv {
    use super::common::{assert_close, Rng};
    use mmengine::cpu::conv::{ModConvLayer, NoiseInput};
    use mmengine::cpu::ops::Act;
    use mmengine::cpu::ConvPath;
    use mmengine::cuda::conv::{DeviceConvLayer, DeviceNoise, Finish};
    use mmengine::cuda::device::{DType, DeviceTensor};
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::model::Noise;
    use mmengine::Tensor;

    enum NoiseKind {
        None,
        Shared,
        PerSample,
    }

    /// One layer shape: batch, in, out, height, width, kernel, up, demodulate, noise, clamp.
    struct Case {
        n: usize,
        i: usize,
        o: usize,
        h: usize,
        w: usize,
        k: usize,
        up: usize,
        demodulate: bool,
        noise: NoiseKind,
        clamp: Option<f32>,
    }

    /// Runs `c` on the device (fast path, and the unfused path for up-sampling) and on the CPU's fast conv;
    /// every result must agree.
    fn check(c: &Case, seed: u64) {
        let dev = EmuDevice::new();
        let mut rng = Rng(seed);
        let x = rng.tensor(vec![c.n, c.i, c.h, c.w]);
        let weight = rng.tensor(vec![c.o, c.i, c.k, c.k]);
        let styles = rng.tensor(vec![c.n, c.i]);
        let bias = rng.tensor(vec![c.o]).data;
        let (oh, ow) = (c.h * c.up, c.w * c.up);
        let shared = Noise {
            buffer: rng.tensor(vec![oh, ow]),
            strength: 0.3,
        };
        let per_sample = rng.tensor(vec![c.n, 1, oh, ow]);
        let act = if c.k == 3 { Act::LRELU } else { Act::Linear };
        let cpu = ModConvLayer {
            weight: &weight,
            weight_gain: 1.0,
            demodulate: c.demodulate,
            up: c.up,
            noise: match c.noise {
                NoiseKind::None => None,
                NoiseKind::Shared => Some(NoiseInput::Shared(&shared)),
                NoiseKind::PerSample => Some(NoiseInput::PerSample(&per_sample)),
            },
            bias: &bias,
            act,
            act_gain: act.default_gain(),
            clamp: c.clamp,
        }
        .forward(&x, &styles)
        .unwrap();

        let finish = Finish {
            bias: Some(&bias),
            act,
            gain: act.default_gain(),
            clamp: c.clamp,
            output: DType::F32,
        };
        let layer = DeviceConvLayer::new(&dev, &weight, c.demodulate, c.up, &finish, true).unwrap();
        let xd = DeviceTensor::upload(&dev, &x).unwrap();
        let sd = DeviceTensor::upload(&dev, &styles).unwrap();
        // The device takes the shared plane already times its strength, as the CPU's const noise.
        let shared_scaled = shared
            .buffer
            .data
            .iter()
            .map(|v| v * shared.strength)
            .collect();
        let shared_d = DeviceTensor::upload(
            &dev,
            &Tensor::new(shared.buffer.shape.clone(), shared_scaled).unwrap(),
        )
        .unwrap();
        let per_sample_d = DeviceTensor::upload(&dev, &per_sample).unwrap();
        let dcoefs = layer.demod(&dev, &sd).unwrap();
        let run = |path| {
            let noise = match c.noise {
                NoiseKind::None => None,
                NoiseKind::Shared => Some(DeviceNoise::Shared(&shared_d)),
                NoiseKind::PerSample => Some(DeviceNoise::PerSample(&per_sample_d)),
            };
            layer
                .forward(&dev, &xd, &sd, dcoefs.as_ref(), noise, path)
                .unwrap()
                .download(&dev)
                .unwrap()
        };
        let fast = run(ConvPath::Fast);
        assert_eq!(fast.shape, cpu.shape);
        let err = assert_close("device vs cpu", &fast.data, &cpu.data, 1e-5, 1e-5);
        println!(
            "modconv n{} i{} o{} {}x{} k{} up{}: max abs error vs cpu {err:.3e}",
            c.n, c.i, c.o, c.h, c.w, c.k, c.up
        );
        if let Some(clamp) = c.clamp {
            let hits = |t: &Tensor| t.data.iter().filter(|v| v.abs() == clamp).count();
            assert!(hits(&cpu) > 0, "the test clamp should bite");
            assert_eq!(hits(&fast), hits(&cpu), "elements at the clamp");
        }
        if c.up == 2 {
            let unfused = run(ConvPath::Reference);
            let err = assert_close("fused vs unfused", &fast.data, &unfused.data, 1e-5, 1e-5);
            println!("  fused vs unfused up-sampling: max abs error {err:.3e}");
        }
    }

    #[test]
    fn same_resolution_tiles_and_edges() {
        // 35-pixel planes (no 128-bit stores), 70 channels (two channel tiles), K = 180 (a partial K slice).
        check(
            &Case {
                n: 3,
                i: 20,
                o: 70,
                h: 5,
                w: 7,
                k: 3,
                up: 1,
                demodulate: true,
                noise: NoiseKind::Shared,
                clamp: Some(0.5),
            },
            1,
        );
        // 4x8 planes: 96 pixels, a partial pixel tile, per-sample noise.
        check(
            &Case {
                n: 3,
                i: 9,
                o: 12,
                h: 4,
                w: 8,
                k: 3,
                up: 1,
                demodulate: false,
                noise: NoiseKind::PerSample,
                clamp: None,
            },
            2,
        );
        // 1x1 with more channels than the narrow tile takes: the wide tile, 35-pixel planes.
        check(
            &Case {
                n: 2,
                i: 24,
                o: 20,
                h: 5,
                w: 7,
                k: 1,
                up: 1,
                demodulate: true,
                noise: NoiseKind::Shared,
                clamp: None,
            },
            6,
        );
        // ToRGB-like 1x1 (the per-pixel dot-product kernel), no demodulation, clamped.
        check(
            &Case {
                n: 2,
                i: 20,
                o: 3,
                h: 6,
                w: 6,
                k: 1,
                up: 1,
                demodulate: false,
                noise: NoiseKind::None,
                clamp: Some(0.5),
            },
            3,
        );
        // 9 outputs: the narrow tile.
        check(
            &Case {
                n: 2,
                i: 20,
                o: 9,
                h: 6,
                w: 6,
                k: 1,
                up: 1,
                demodulate: true,
                noise: NoiseKind::None,
                clamp: None,
            },
            7,
        );
    }

    #[test]
    fn fused_up_sampling_matches_unfused_pair() {
        // Output 14 x 30: two tile rows and columns, both cut at the image edge; 13 channels (a partial group);
        // 20 input channels (a partial K slice).
        check(
            &Case {
                n: 2,
                i: 20,
                o: 13,
                h: 7,
                w: 15,
                k: 3,
                up: 2,
                demodulate: true,
                noise: NoiseKind::Shared,
                clamp: Some(0.5),
            },
            4,
        );
        check(
            &Case {
                n: 3,
                i: 5,
                o: 8,
                h: 4,
                w: 4,
                k: 3,
                up: 2,
                demodulate: false,
                noise: NoiseKind::PerSample,
                clamp: None,
            },
            5,
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = EmuDevice::new();
        let mut rng = Rng(9);
        let finish = Finish {
            bias: None,
            act: Act::Linear,
            gain: 1.0,
            clamp: None,
            output: DType::F32,
        };
        let w5 = rng.tensor(vec![4, 3, 5, 5]);
        assert!(DeviceConvLayer::new(&dev, &w5, true, 1, &finish, false).is_err());
        let w3 = rng.tensor(vec![4, 3, 3, 3]);
        assert!(DeviceConvLayer::new(&dev, &w3, true, 3, &finish, false).is_err());
        let layer = DeviceConvLayer::new(&dev, &w3, true, 1, &finish, false).unwrap();
        let x = DeviceTensor::upload(&dev, &rng.tensor(vec![2, 5, 4, 4])).unwrap();
        let s = DeviceTensor::upload(&dev, &rng.tensor(vec![2, 3])).unwrap();
        let d = layer.demod(&dev, &s).unwrap();
        assert!(layer
            .forward(&dev, &x, &s, d.as_ref(), None, ConvPath::Fast)
            .is_err());
        let x = DeviceTensor::upload(&dev, &rng.tensor(vec![2, 3, 4, 4])).unwrap();
        let noise = DeviceTensor::upload(&dev, &rng.tensor(vec![5, 5])).unwrap();
        let wrong_noise = Some(DeviceNoise::Shared(&noise));
        assert!(layer
            .forward(&dev, &x, &s, d.as_ref(), wrong_noise, ConvPath::Fast)
            .is_err());
        // Missing demodulation coefficients.
        assert!(layer
            .forward(&dev, &x, &s, None, None, ConvPath::Fast)
            .is_err());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The device synthesis network against the golden generator cases A, B and C (as tests/golden_generator.rs).

mod synthesis {
    use super::common::golden_nets::{
        cases, check_intermediates, check_traced_const, nvlabs_network, rosinality_layer,
        rosinality_network, CASE_B_CLAMP_HITS,
    };
    use super::common::{assert_close, assert_same_bits};
    use mmengine::backend::{Backend, NoiseMode};
    use mmengine::cpu::{ConvPath, CpuBackend};
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::cuda::synthesis::DeviceSynthesis;

    use mmengine::model::Network;
    use mmengine::Tensor;
    use std::collections::HashMap;

    const IMG_TOL: f32 = 1e-4;

    /// Render on the emulated device and collect every traced tensor, keyed by our layer names.
    fn traced(
        synth: &DeviceSynthesis<EmuDevice>,
        net: &Network,
        ws: &Tensor,
    ) -> (Tensor, HashMap<String, Tensor>) {
        let mut seen = HashMap::new();
        let img = synth
            .synthesize_traced(
                &EmuDevice::new(),
                net,
                ws,
                NoiseMode::Const,
                &mut |name, t| {
                    seen.insert(name.to_string(), t.clone());
                },
            )
            .unwrap();
        (img, seen)
    }

    /// Checks the golden intermediates of sample 0 whose names `ours` maps to a traced tensor; returns how many.
    fn check_nvlabs_const(
        case: &str,
        path: ConvPath,
    ) -> (DeviceSynthesis<EmuDevice>, Network, HashMap<String, Tensor>) {
        let net = nvlabs_network(case);
        let synth = DeviceSynthesis::new(&EmuDevice::new(), &net, path).unwrap();
        let c = cases(case);
        let (img, seen) = traced(&synth, &net, &c.tensor("ws").unwrap());
        check_traced_const(&format!("emu {path:?}"), case, &img, &seen);
        (synth, net, seen)
    }

    #[test]
    fn nvlabs_tiny_case_a() {
        let (synth, net, _) = check_nvlabs_const("nvlabs_tiny", ConvPath::Fast);
        let c = cases("nvlabs_tiny");
        for (ws_name, noise, img_name) in [
            ("ws", NoiseMode::None, "img_none"),
            ("ws_mixed", NoiseMode::Const, "img_mixed_const"),
            ("ws_trunc", NoiseMode::Const, "img_trunc_const"),
        ] {
            let img = synth
                .synthesize(&EmuDevice::new(), &net, &c.tensor(ws_name).unwrap(), noise)
                .unwrap();
            let err = assert_close(
                img_name,
                &img.data,
                &c.tensor(img_name).unwrap().data,
                IMG_TOL,
                0.0,
            );
            println!("emu nvlabs_tiny {img_name} max error {err:.3e}");
        }
    }

    #[test]
    fn nvlabs_tiny_case_a_unfused_up_sampling() {
        check_nvlabs_const("nvlabs_tiny", ConvPath::Reference);
    }

    #[test]
    fn nvlabs_tiny_clamp_case_b() {
        let (_, _, seen) = check_nvlabs_const("nvlabs_tiny_clamp", ConvPath::Fast);
        for (layer, expected) in CASE_B_CLAMP_HITS {
            let hit = seen[layer].data.iter().filter(|v| v.abs() == 256.0).count();
            assert_eq!(hit, expected, "{layer}: elements at the clamp");
        }
    }

    #[test]
    fn rosinality_tiny_case_c() {
        let c = cases("rosinality_tiny");
        let net = rosinality_network();
        let synth = DeviceSynthesis::new(&EmuDevice::new(), &net, ConvPath::Fast).unwrap();
        let (img, seen) = traced(&synth, &net, &c.tensor("wplus").unwrap());
        let err = assert_close(
            "img_fixed_noise",
            &img.data,
            &c.tensor("img_fixed_noise").unwrap().data,
            IMG_TOL,
            0.0,
        );
        println!("emu rosinality img_fixed_noise max error {err:.3e}");
        let compared = check_intermediates("emu", "rosinality_tiny", &seen, 0.0, rosinality_layer);
        assert_eq!(compared, 11 * 2, "intermediates compared");
        // Untraced, the skip image joins in the ToRGB kernels: the same bits.
        let untraced = synth
            .synthesize(
                &EmuDevice::new(),
                &net,
                &c.tensor("wplus").unwrap(),
                NoiseMode::Const,
            )
            .unwrap();
        assert_same_bits("rosinality untraced", &untraced, &img);
    }

    #[test]
    fn random_noise_matches_cpu_backend() {
        let net = nvlabs_network("nvlabs_tiny");
        let synth = DeviceSynthesis::new(&EmuDevice::new(), &net, ConvPath::Fast).unwrap();
        let ws = cases("nvlabs_tiny").tensor("ws").unwrap().slice_rows(1, 3);
        let noise = NoiseMode::Random {
            seed: 5,
            first_image: 1,
        };
        let img = synth
            .synthesize(&EmuDevice::new(), &net, &ws, noise)
            .unwrap();
        let expected = CpuBackend::new(net).synthesize(&ws, noise).unwrap();
        let err = assert_close("random noise", &img.data, &expected.data, IMG_TOL, 0.0);
        println!("emu nvlabs_tiny random noise vs cpu max error {err:.3e}");
    }

    #[test]
    fn bad_ws_is_an_error() {
        let net = nvlabs_network("nvlabs_tiny");
        let synth = DeviceSynthesis::new(&EmuDevice::new(), &net, ConvPath::Fast).unwrap();
        let ws = Tensor::zeros(vec![2, net.num_ws + 1, net.w_dim]);
        assert!(synth
            .synthesize(&EmuDevice::new(), &net, &ws, NoiseMode::Const)
            .is_err());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The CUDA backend's passes: batches split by the device memory (reported, or learnt from failed allocations),
// pipelined downloads, and the same images as one pass.

mod passes {
    use super::common::golden_nets::{cases, nvlabs_network};
    use mmengine::backend::{Backend, FrontPass, NoiseMode};
    use mmengine::cpu::ConvPath;
    use mmengine::cuda::device::{DType, Device, DeviceTensor};
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::cuda::kernels::Kernel;
    use mmengine::cuda::synthesis::DeviceSynthesis;
    use mmengine::cuda::{CudaBackend, Precision};
    use mmengine::error::Error;
    use mmengine::Tensor;

    /// Six different images: case A's ws twice over, with per-image random noise (whose streams depend on each
    /// image's index in the batch, so a pass that starts at the wrong index changes the result).
    fn job() -> (Tensor, NoiseMode) {
        let ws = cases("nvlabs_tiny").tensor("ws").unwrap();
        let ws = Tensor::cat_rows(&[ws.clone(), ws.clone(), ws]).unwrap();
        let ws = ws.slice_rows(0, 6);
        let noise = NoiseMode::Random {
            seed: 3,
            first_image: 10,
        };
        (ws, noise)
    }

    /// The job in one pass on an unlimited device; returns the images, the memory the weights hold and the peak.
    fn one_pass() -> (Tensor, usize, usize) {
        let backend = CudaBackend::new(
            EmuDevice::new(),
            nvlabs_network("nvlabs_tiny"),
            Precision::Fp32,
        )
        .unwrap();
        let weights = backend.device().memory_meter().live();
        let (ws, noise) = job();
        let img = backend.synthesize(&ws, noise).unwrap();
        assert_eq!(backend.images_per_pass_limit(), usize::MAX);
        (img, weights, backend.device().memory_meter().peak())
    }

    fn limited(bytes: usize, reported: bool) -> CudaBackend<EmuDevice> {
        let dev = EmuDevice::with_memory_limit(bytes, reported);
        CudaBackend::new(dev, nvlabs_network("nvlabs_tiny"), Precision::Fp32).unwrap()
    }

    #[test]
    fn a_batch_larger_than_the_reported_free_memory_renders_in_passes() {
        let (expected, weights, peak) = one_pass();
        // Room for about a third of the batch's working memory.
        let limit = weights + (peak - weights) / 3;
        let backend = limited(limit, true);
        let (ws, noise) = job();
        let img = backend.synthesize(&ws, noise).unwrap();
        assert_eq!(img.shape, expected.shape);
        assert!(img.data == expected.data, "passes changed the images");
        // The same passes as 8-bit images are the host's conversion of the f32 ones.
        let images = backend.synthesize_u8(&ws, noise).unwrap();
        assert_eq!(
            images,
            mmengine::io::image::Images8::from_tensor(&expected).unwrap()
        );
        let used = backend.device().memory_meter().peak();
        assert!(
            used <= limit && used < peak,
            "peak {used} with a limit of {limit}"
        );
    }

    #[test]
    fn out_of_memory_halves_the_pass_when_free_memory_is_not_reported() {
        let (expected, weights, peak) = one_pass();
        let limit = weights + (peak - weights) / 2;
        let backend = limited(limit, false);
        let (ws, noise) = job();
        let img = backend.synthesize(&ws, noise).unwrap();
        assert!(
            img.data == expected.data,
            "retried passes changed the images"
        );
        let per_pass = backend.images_per_pass_limit();
        assert!(per_pass < 6, "the pass never shrank ({per_pass})");
        // The next call starts from the learnt size.
        let again = backend.synthesize(&ws, noise).unwrap();
        assert!(again.data == expected.data);
        assert_eq!(backend.images_per_pass_limit(), per_pass);
    }

    /// In passes of 2 images, the 4-16 px blocks of the 32 px network leave fewer than 2^16 pixels per layer:
    /// they run first over all 6 images, and each pass takes the 32 px block from what they left. The images are
    /// those of one pass, bit for bit, in f32 (also as bytes) and with 16-bit activations carried.
    #[test]
    fn the_first_blocks_run_over_the_batch_before_the_passes() {
        let (expected, _, _) = one_pass();
        let (ws, noise) = job();
        for precision in [Precision::Fp32, Precision::Fp16] {
            let backend =
                CudaBackend::new(EmuDevice::new(), nvlabs_network("nvlabs_tiny"), precision)
                    .unwrap();
            let whole = backend.synthesize(&ws, noise).unwrap();
            if precision == Precision::Fp32 {
                assert!(whole.data == expected.data);
            }
            backend.set_images_per_pass(2).unwrap();
            assert_eq!(backend.images_per_pass(6), Some(2));
            assert_eq!(
                backend.front_pass(6),
                Some(FrontPass {
                    resolution: 16,
                    images: 6
                })
            );
            let affine = || backend.device().launches(Kernel::ModconvAffine);
            let before = affine();
            let img = backend.synthesize(&ws, noise).unwrap();
            assert!(
                img.data == whole.data,
                "{precision:?}: the front and passes changed the images"
            );
            // A styles launch per layer: the 8 layers of the 4-16 px blocks once, the 3 of the 32 px block once
            // per pass.
            let net = backend.network();
            let front = net.layers.iter().filter(|l| l.resolution <= 16).count();
            assert_eq!(front, 8);
            assert_eq!(affine() - before, front + 3 * (net.layers.len() - front));
            if precision == Precision::Fp32 {
                let images = backend.synthesize_u8(&ws, noise).unwrap();
                assert_eq!(
                    images,
                    mmengine::io::image::Images8::from_tensor(&whole).unwrap()
                );
            }
        }
        let backend = CudaBackend::new(
            EmuDevice::new(),
            nvlabs_network("nvlabs_tiny"),
            Precision::Fp32,
        )
        .unwrap();
        // No more images than a pass: no front.
        backend.set_images_per_pass(4).unwrap();
        assert_eq!(backend.front_pass(4), None);
        // In passes of 1024 images, 8 px leaves 2^16 pixels: only the 4 px block goes first.
        backend.set_images_per_pass(1024).unwrap();
        assert_eq!(
            backend.front_pass(3000),
            Some(FrontPass {
                resolution: 4,
                images: 3000
            })
        );
        // In passes of 4096, no layer is small enough.
        backend.set_images_per_pass(4096).unwrap();
        assert_eq!(backend.front_pass(10000), None);
    }

    /// With free memory for a pass of one image and a front of some of the images, the front runs over as many
    /// as fit, a group at a time; the images stay those of one pass, within the memory.
    #[test]
    fn the_front_takes_as_many_images_as_the_free_memory_holds() {
        let (expected, weights, _) = one_pass();
        let (ws, noise) = job();
        let (backend, limit, front) = (1..400)
            .find_map(|k| {
                let limit = weights + k * 10_000;
                let backend = limited(limit, true);
                backend.set_images_per_pass(1).unwrap();
                let front = backend.front_pass(6)?;
                (front.images < 6).then_some((backend, limit, front))
            })
            .expect("no memory limit gives a front of part of the batch");
        assert!(front.images >= 2 && front.resolution == 16, "{front:?}");
        let img = backend.synthesize(&ws, noise).unwrap();
        assert!(img.data == expected.data, "the groups changed the images");
        let used = backend.device().memory_meter().peak();
        assert!(used <= limit, "peak {used} with a limit of {limit}");
    }

    /// Where the free memory is not reported, a front that runs out of it is halved (for the next call too) and
    /// planned again; the images stay those of one pass.
    #[test]
    fn out_of_memory_in_the_front_halves_it() {
        let (expected, weights, _) = one_pass();
        let (ws, noise) = job();
        let mut halved = false;
        for k in 1..400 {
            let backend = limited(weights + k * 10_000, false);
            backend.set_images_per_pass(1).unwrap();
            assert_eq!(backend.front_pass(6).map(|f| f.images), Some(6));
            match backend.synthesize(&ws, noise) {
                Ok(img) => {
                    assert!(
                        img.data == expected.data,
                        "a halved front changed the images"
                    );
                    if backend.front_pass(6).is_none_or(|f| f.images < 6) {
                        halved = true;
                        break;
                    }
                }
                Err(Error::DeviceMemory(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            halved,
            "no memory limit made the front run out of memory and then succeed"
        );
    }

    /// `DeviceTensor::rows` (what each pass takes of the front's images) copies exactly those rows, in any stored
    /// type, and refuses rows the tensor does not have.
    #[test]
    fn device_tensor_rows_copy_those_rows() {
        let dev = EmuDevice::new();
        let t = Tensor::new(vec![4, 2, 3], (0..24).map(|v| v as f32).collect()).unwrap();
        for dtype in [DType::F32, DType::F16] {
            let d = DeviceTensor::upload_as(&dev, &t, dtype).unwrap();
            let part = d.rows(&dev, 1, 3).unwrap().download(&dev).unwrap();
            assert_eq!(part.shape, [2, 2, 3]);
            assert_eq!(part.data, t.data[6..18]);
            assert_eq!(d.rows(&dev, 4, 4).unwrap().shape, [0, 2, 3]);
            assert!(d.rows(&dev, 3, 5).is_err());
            assert!(d.rows(&dev, 2, 1).is_err());
        }
    }

    /// Runs of layers that start or end inside a block (the activation alone is not what the next layer needs)
    /// are refused, as is a run that lacks what the layers before it left.
    #[test]
    fn the_synthesis_splits_only_after_a_torgb() {
        let net = nvlabs_network("nvlabs_tiny");
        let dev = EmuDevice::new();
        let synth = DeviceSynthesis::new(&dev, &net, ConvPath::Fast).unwrap();
        let (ws, noise) = job();
        let refused = |ws: &Tensor, layers: std::ops::Range<usize>, carry, expected: &str| {
            let err = synth
                .synthesize_layers(&dev, &net, ws, noise, layers.clone(), carry)
                .err()
                .unwrap_or_else(|| panic!("layers {layers:?} ran"));
            assert!(err.to_string().contains(expected), "{err}");
        };
        // A run that stops before layer 3 (b8.conv1), after b8.conv0.
        refused(&ws, 0..3, None, "after a ToRGB, not after b8.conv0");
        refused(&ws, 2..11, None, "needs what the layers before it left");
        let front = synth
            .synthesize_layers(&dev, &net, &ws, noise, 0..2, None)
            .unwrap();
        refused(&ws.slice_rows(0, 2), 2..11, Some(front), "6 images carried");
    }

    #[test]
    fn too_little_memory_for_one_image_is_a_device_memory_error() {
        let (_, weights, _) = one_pass();
        let backend = limited(weights + 1024, false);
        let (ws, noise) = job();
        match backend.synthesize(&ws, noise) {
            Err(Error::DeviceMemory(msg)) => assert!(msg.contains("out of memory"), "{msg}"),
            other => panic!(
                "expected an out-of-memory error, got {:?}",
                other.map(|t| t.shape)
            ),
        }
        assert_eq!(backend.images_per_pass_limit(), 1);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The tensor-core modulated convolutions (kernels/modconv_tc.cu) against the f32 kernels, and the device synthesis
// in every precision against the golden images.

mod tensor_core_conv {
    use super::common::golden_nets::nvlabs_network;
    use super::common::{assert_close, assert_same_bits, golden, Rng};
    use mmengine::backend::NoiseMode;
    use mmengine::cpu::ops::Act;
    use mmengine::cpu::ConvPath;
    use mmengine::cuda::conv::{
        skip_upsample_plus, DeviceConvLayer, DeviceNoise, Finish, FusedToRgb,
    };
    use mmengine::cuda::device::{DType, Device, DeviceTensor};
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::cuda::gemm::Precision;
    use mmengine::cuda::kernels::Kernel;
    use mmengine::cuda::synthesis::DeviceSynthesis;
    use mmengine::io::safetensors::SafeTensors;
    use mmengine::model::LayerKind;
    use mmengine::selftest;

    use mmengine::Tensor;
    use std::collections::BTreeMap;

    const TENSOR_CORE_MODES: [Precision; 3] = [Precision::Tf32, Precision::Fp16, Precision::Bf16];
    /// 2^-23: one f32 rounding of any kind (twice the unit roundoff).
    const F32_ROUNDING: f64 = 1.0 / (1u64 << 23) as f64;

    /// The input rounding's relative error u (2^-11 for tf32 and f16, 2^-8 for bf16), and its absolute error
    /// below the normal range: half of f16's subnormal spacing 2^-24 (tf32 and bf16 share f32's range).
    fn input_rounding(precision: Precision) -> (f64, f64) {
        match precision {
            Precision::Fp32 => (0.0, 0.0),
            Precision::Tf32 => (2f64.powi(-11), 0.0),
            Precision::Fp16 => (2f64.powi(-11), 2f64.powi(-25)),
            Precision::Bf16 => (2f64.powi(-8), 0.0),
        }
    }

    /// The relative part of check_layer's conv bound: two factors rounded by u each, and an f32 sum of K terms
    /// in each kernel.
    fn conv_relative_bound(u: f64, k: f64) -> f64 {
        2.0 * u + u * u + 2.0 * k * F32_ROUNDING * (1.0 + u) * (1.0 + u)
    }

    /// `t` times `s`.
    fn scaled(t: Tensor, s: f32) -> Tensor {
        Tensor::new(t.shape.clone(), t.data.iter().map(|v| v * s).collect()).unwrap()
    }

    /// One layer with the magnitudes of a real FFHQ layer: activations up to 256 (the conv clamp), styles up to
    /// 10, weights of a unit-variance-like weight times 1/sqrt(fan_in). `up` 2: the fused up-sampling conv (k 3).
    struct Layer {
        n: usize,
        i: usize,
        o: usize,
        h: usize,
        w: usize,
        k: usize,
        up: usize,
        demodulate: bool,
        per_sample_noise: bool,
        clamp: Option<f32>,
    }

    /// Runs `l` in every tensor-core mode and in f32 and compares elementwise. With a_k = x s (the f32 product
    /// both kernels stage), S = sum_k |a_k w_k|, A = sum_k |a_k|, W = sum_k |w_k| over the output's receptive
    /// field, the conv sums differ by at most
    ///   (2u + u^2 + 2 K 2^-23 (1 + u)^2) S + 2 eta (A + W)
    /// (input rounding u relative or eta absolute per factor, an f32 sum of K terms in each kernel; the fp16 weight
    /// scale is a power of two >= 1 here, as all weights are below 1, so it only shrinks the weight's eta), and
    /// the epilogue (times d <= the demodulation coefficient, plus noise and bias, lrelu of slope <= 1, times the
    /// gain, clamp: all 1-Lipschitz after the gain) maps that to
    ///   gain (d bound + 2^-20 (d S + |noise| + |bias|))
    /// where the second term covers the two kernels' f32 roundings of the epilogue itself.
    ///
    /// Up-sampling (`up_sums`): each GEMM value z = sum_i a_i w_i (K = I terms, one position and tap) carries the
    /// bound above with its own S_z and A_z + W_z. T[Y, X] adds the at most 4 z landing on it, and the output is
    /// v = sum_{a,b} f_a f_b T[y - 1 + a, x - 1 + b] with f = (1/4, 3/4, 3/4, 1/4): linear, with
    /// sum |f_a f_b| = 4 (the blur's gain). So v's error is at most the same blur, with |f|, of the T errors,
    /// i.e. the bound above with S and A + W replaced by their blurred sums over T (S = sum f_a f_b sum S_z, at
    /// most 4 times the largest S_z), plus the f32 roundings of scatter and blur in each kernel: a term of v passes
    /// at most 3 T additions, then 1 product and 3 additions per blur axis (2 roundings in the tensor-core
    /// kernels' symmetric sums), at most 11 roundings, so 2 x 11 x 2^-24 S.
    fn check_layer(l: &Layer, seed: u64) {
        check_layer_on(&EmuDevice::new(), l, seed);
        // An sm_90 device takes the wgmma kernels for the 3x3 layers in fp16 and bf16; up-sampling layers with at
        // most 256 inputs take per-sample weights.
        let wgmma = match (l.k, l.up) {
            (3, 2) if l.i <= 256 => [
                Kernel::ModconvUp23x3SampleWeightsWgmmaF16,
                Kernel::ModconvUp23x3SampleWeightsWgmmaBf16,
            ],
            (3, 2) => [
                Kernel::ModconvUp23x3WgmmaF16,
                Kernel::ModconvUp23x3WgmmaBf16,
            ],
            (3, 1) if l.o > 64 => [Kernel::Modconv3x3WgmmaF16, Kernel::Modconv3x3WgmmaBf16],
            (3, 1) if l.o > 32 => [
                Kernel::Modconv3x3N64WgmmaF16,
                Kernel::Modconv3x3N64WgmmaBf16,
            ],
            (3, 1) => [
                Kernel::Modconv3x3N32WgmmaF16,
                Kernel::Modconv3x3N32WgmmaBf16,
            ],
            _ => return,
        };
        let sm90 = EmuDevice::sm90();
        check_layer_on(&sm90, l, seed);
        for kernel in wgmma {
            assert_eq!(sm90.launches(kernel), 1, "{kernel:?}");
        }
    }

    fn check_layer_on(dev: &EmuDevice, l: &Layer, seed: u64) {
        let mut rng = Rng(seed);
        let x = scaled(rng.tensor(vec![l.n, l.i, l.h, l.w]), 256.0);
        let styles = scaled(rng.tensor(vec![l.n, l.i]), 10.0);
        let fan_in = (l.i * l.k * l.k) as f32;
        let weight = scaled(rng.tensor(vec![l.o, l.i, l.k, l.k]), 1.0 / fan_in.sqrt());
        let bias = rng.tensor(vec![l.o]).data;
        let (oh, ow) = (l.h * l.up, l.w * l.up);
        let noise_plane = rng.tensor(vec![l.n, 1, oh, ow]);
        let act = if l.k == 3 { Act::LRELU } else { Act::Linear };
        let gain = act.default_gain();
        let sd = DeviceTensor::upload(dev, &styles).unwrap();
        let noise_d = DeviceTensor::upload(dev, &noise_plane).unwrap();
        // The shared plane as the device takes it: already times the layer's strength.
        let noise_strength = 0.7f32;
        let shared_plane = scaled(
            Tensor::new(vec![oh, ow], noise_plane.data[..oh * ow].to_vec()).unwrap(),
            noise_strength,
        );
        let shared_d = DeviceTensor::upload(dev, &shared_plane).unwrap();
        // x in the layer's input type; the output stored as `output`.
        let run_path = |precision: Precision, path, x: &Tensor, output: DType| {
            let finish = Finish {
                bias: Some(&bias),
                act,
                gain,
                clamp: l.clamp,
                output,
            };
            let layer = DeviceConvLayer::with_precision(
                dev,
                &weight,
                l.demodulate,
                l.up,
                &finish,
                path == ConvPath::Reference,
                precision,
            )
            .unwrap();
            let xd = DeviceTensor::upload_as(dev, x, layer.input_dtype()).unwrap();
            let dcoefs = layer.demod(dev, &sd).unwrap();
            let noise = if l.per_sample_noise {
                DeviceNoise::PerSample(&noise_d)
            } else {
                DeviceNoise::Shared(&shared_d)
            };
            let y = layer
                .forward(dev, &xd, &sd, dcoefs.as_ref(), Some(noise), path)
                .unwrap()
                .download(dev)
                .unwrap();
            (y, dcoefs.map(|d| d.download(dev).unwrap()))
        };
        let mut addends = vec![0f64; l.n * l.o * oh * ow];
        for (e, addend) in addends.iter_mut().enumerate() {
            let (b, o, pix) = (e / (l.o * oh * ow), e / (oh * ow) % l.o, e % (oh * ow));
            let noise = if l.per_sample_noise {
                noise_plane.data[b * oh * ow + pix]
            } else {
                noise_plane.data[pix] * noise_strength
            };
            *addend = (noise.abs() + bias[o].abs()) as f64;
        }
        // K: the terms of one f32 sum in each kernel's GEMM; the up-sampling kernels' scatter and blur add 11
        // roundings (see above).
        let (k_total, blur_roundings) = if l.up == 1 {
            ((l.i * l.k * l.k) as f64, 0.0)
        } else {
            (l.i as f64, 11.0)
        };
        let mut clamp_hits = 0;
        for precision in TENSOR_CORE_MODES {
            // The kernels read x stored in the mode's activation type (16-bit in fp16 and bf16): the f32 reference
            // gets the same values, so the analysis above covers the conv itself. A 3x3 layer stores its output in
            // that type too (as in the synthesis), which rounds the result once more (u_out relative, eta_out
            // absolute); a 1x1 (ToRGB) stores f32.
            let activations = precision.activation_dtype();
            let x_in = round_to(&x, activations);
            let output = if l.k == 3 { activations } else { DType::F32 };
            let (y32, d32) = run_path(Precision::Fp32, ConvPath::Fast, &x_in, DType::F32);
            clamp_hits += l
                .clamp
                .map_or(0, |c| y32.data.iter().filter(|v| v.abs() == c).count());
            // Per output (b, o, pixel): S and A + W.
            let (s_sum, aw_sum) = if l.up == 1 {
                same_sums(l, &x_in, &styles, &weight)
            } else {
                up_sums(l, &x_in, &styles, &weight)
            };
            let (y, _) = run_path(precision, ConvPath::Fast, &x_in, output);
            let (u, eta) = input_rounding(precision);
            let (u_out, eta_out) = if output == DType::F32 {
                (0.0, 0.0)
            } else {
                (u, eta)
            };
            let relative = conv_relative_bound(u, k_total) + blur_roundings * F32_ROUNDING;
            let mut worst = 0f64;
            for (e, (&got, &want)) in y.data.iter().zip(&y32.data).enumerate() {
                assert!(got.is_finite(), "{precision}: element {e} is {got}");
                if let Some(clamp) = l.clamp {
                    assert!(
                        got.abs() <= clamp,
                        "{precision}: element {e} = {got} beyond the clamp"
                    );
                }
                let d = d32.as_ref().map_or(1.0, |d| {
                    d.data[e / (l.o * oh * ow) * l.o + e / (oh * ow) % l.o] as f64
                });
                let conv_bound = gain as f64
                    * (d * (relative * s_sum[e] + 2.0 * eta * aw_sum[e])
                        + 2f64.powi(-20) * (d * s_sum[e] + addends[e]));
                let bound = conv_bound + u_out * (want.abs() as f64 + conv_bound) + eta_out;
                let err = (got as f64 - want as f64).abs();
                assert!(
                    err <= bound,
                    "{precision}: element {e}: {got} vs f32 {want} (error {err:e}, bound {bound:e})"
                );
                worst = worst.max(err / bound.max(f64::MIN_POSITIVE));
            }
            let max_err = assert_close(precision.name(), &y.data, &y32.data, f32::INFINITY, 0.0);
            println!(
                "modconv_tc {precision} ({activations:?} in, {output:?} out) n{} i{} o{} {}x{} k{} up{}: max abs \
                 error vs f32 {max_err:.3e}, worst error / bound {worst:.3}",
                l.n, l.i, l.o, l.h, l.w, l.k, l.up
            );
            if l.up == 2 && activations != DType::F32 {
                // The unfused up-sampling twin computes in f32 only: it refuses 16-bit activations.
                let layer = DeviceConvLayer::with_precision(
                    dev,
                    &weight,
                    l.demodulate,
                    l.up,
                    &Finish {
                        bias: Some(&bias),
                        act,
                        gain,
                        clamp: l.clamp,
                        output,
                    },
                    true,
                    precision,
                )
                .unwrap();
                let xd = DeviceTensor::upload_as(dev, &x_in, activations).unwrap();
                let dcoefs = layer.demod(dev, &sd).unwrap();
                let refused =
                    layer.forward(dev, &xd, &sd, dcoefs.as_ref(), None, ConvPath::Reference);
                assert!(
                    refused.is_err(),
                    "{precision}: the unfused twin took 16-bit activations"
                );
            }
        }
        if l.clamp.is_some() {
            assert!(clamp_hits > 0, "the test clamp should bite");
        }
    }

    /// |a_k| for input channel i at (y, x) of sample b, zero outside the image.
    fn staged_abs(
        l: &Layer,
        x: &Tensor,
        styles: &Tensor,
        b: usize,
        i: usize,
        y: isize,
        x_: isize,
    ) -> f64 {
        if y < 0 || x_ < 0 || y >= l.h as isize || x_ >= l.w as isize {
            return 0.0;
        }
        let v = x.data[((b * l.i + i) * l.h + y as usize) * l.w + x_ as usize];
        (v * styles.data[b * l.i + i]).abs() as f64
    }

    /// Same-resolution S and A + W per output over the k x k receptive field (padding counts a zero a_k with its
    /// weight).
    fn same_sums(l: &Layer, x: &Tensor, styles: &Tensor, weight: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let (hw, kk, pad) = (l.h * l.w, l.k * l.k, l.k as isize / 2);
        let mut s_sum = vec![0f64; l.n * l.o * hw];
        let mut aw_sum = vec![0f64; l.n * l.o * hw];
        for b in 0..l.n {
            for o in 0..l.o {
                for pix in 0..hw {
                    let (py, px) = ((pix / l.w) as isize, (pix % l.w) as isize);
                    let e = (b * l.o + o) * hw + pix;
                    for i in 0..l.i {
                        for t in 0..kk {
                            let iy = py + (t / l.k) as isize - pad;
                            let ix = px + (t % l.k) as isize - pad;
                            let w = weight.data[(o * l.i + i) * kk + t].abs() as f64;
                            let a = staged_abs(l, x, styles, b, i, iy, ix);
                            s_sum[e] += a * w;
                            aw_sum[e] += a + w;
                        }
                    }
                }
            }
        }
        (s_sum, aw_sum)
    }

    /// Up-sampling S and A + W per output: S_z and A_z + W_z of each GEMM value summed into the transposed conv's
    /// (2H + 1) x (2W + 1) grid T, then blurred with |f| (padding 1), as check_layer derives.
    fn up_sums(l: &Layer, x: &Tensor, styles: &Tensor, weight: &Tensor) -> (Vec<f64>, Vec<f64>) {
        const F: [f64; 4] = [0.25, 0.75, 0.75, 0.25];
        let (th, tw, oh, ow) = (2 * l.h + 1, 2 * l.w + 1, 2 * l.h, 2 * l.w);
        let mut s_sum = vec![0f64; l.n * l.o * oh * ow];
        let mut aw_sum = vec![0f64; l.n * l.o * oh * ow];
        for b in 0..l.n {
            for o in 0..l.o {
                let (mut s_t, mut aw_t) = (vec![0f64; th * tw], vec![0f64; th * tw]);
                for (y, x_) in (0..l.h).flat_map(|y| (0..l.w).map(move |x_| (y, x_))) {
                    for t in 0..9 {
                        let at = (2 * y + t / 3) * tw + 2 * x_ + t % 3;
                        for i in 0..l.i {
                            let a = staged_abs(l, x, styles, b, i, y as isize, x_ as isize);
                            let w = weight.data[(o * l.i + i) * 9 + t].abs() as f64;
                            s_t[at] += a * w;
                            aw_t[at] += a + w;
                        }
                    }
                }
                for (y, x_) in (0..oh).flat_map(|y| (0..ow).map(move |x_| (y, x_))) {
                    let e = ((b * l.o + o) * oh + y) * ow + x_;
                    for (ty, fy) in (y..y + 4).zip(F) {
                        for (tx, fx) in (x_..x_ + 4).zip(F) {
                            // T row/col ty - 1, tx - 1 (padding 1).
                            if (1..=th).contains(&ty) && (1..=tw).contains(&tx) {
                                let at = (ty - 1) * tw + tx - 1;
                                s_sum[e] += fy * fx * s_t[at];
                                aw_sum[e] += fy * fx * aw_t[at];
                            }
                        }
                    }
                }
            }
        }
        (s_sum, aw_sum)
    }

    /// `t` rounded to `dtype` as the device stores it (round to nearest even).
    fn round_to(t: &Tensor, dtype: DType) -> Tensor {
        let round = |v: f32| match dtype {
            DType::F32 => v,
            DType::F16 => half::f16::from_f32(v).to_f32(),
            DType::Bf16 => half::bf16::from_f32(v).to_f32(),
        };
        Tensor::new(t.shape.clone(), t.data.iter().map(|&v| round(v)).collect()).unwrap()
    }

    #[test]
    fn same_resolution_3x3_against_f32() {
        // 70 channels: the 8 x 8 x 64 block shape, two channel blocks; K = 360: two chunks in every mode (32
        // channels each in f16/bf16, 16 in tf32), the last partial; a 9 x 10 image: four squares, three partial.
        check_layer(
            &Layer {
                n: 2,
                i: 40,
                o: 70,
                h: 9,
                w: 10,
                k: 3,
                up: 1,
                demodulate: true,
                per_sample_noise: false,
                clamp: Some(256.0),
            },
            0x7c01,
        );
        // 24 outputs: the 8 x 16 x 32 block shape; 70 input channels: several K chunks in every mode, the last
        // partial; a 9 x 20 image: four 8 x 16 rectangles, three of them partial.
        check_layer(
            &Layer {
                n: 2,
                i: 70,
                o: 24,
                h: 9,
                w: 20,
                k: 3,
                up: 1,
                demodulate: true,
                per_sample_noise: true,
                clamp: None,
            },
            0x7c03,
        );
        // No demodulation, per-sample noise, K = 81 (odd: an f16/bf16 pair split at the end).
        check_layer(
            &Layer {
                n: 3,
                i: 9,
                o: 12,
                h: 4,
                w: 8,
                k: 3,
                up: 1,
                demodulate: false,
                per_sample_noise: true,
                clamp: None,
            },
            0x7c02,
        );
    }

    #[test]
    fn sm90_3x3_against_f32() {
        // 140 outputs: two 128-channel blocks of the wgmma kernels, the second mostly padding; 45 input channels:
        // two 32-channel chunks, the second with one full 8-channel group, a partial one (an f16/bf16 pair split
        // at the end) and two empty ones; a 9 x 17 image: four 8 x 16 rectangles, three partial.
        check_layer(
            &Layer {
                n: 2,
                i: 45,
                o: 140,
                h: 9,
                w: 17,
                k: 3,
                up: 1,
                demodulate: true,
                per_sample_noise: false,
                clamp: Some(256.0),
            },
            0x7c04,
        );
        // 40 outputs: the 64-channel wgmma block; 60 input channels: two chunks (the kernel's two buffers), the
        // second partial.
        check_layer(
            &Layer {
                n: 1,
                i: 60,
                o: 40,
                h: 8,
                w: 16,
                k: 3,
                up: 1,
                demodulate: true,
                per_sample_noise: true,
                clamp: None,
            },
            0x7c07,
        );
        // The gather's runs of 4 pixels, aligned (a width that is a multiple of 4) and not, where rectangles meet the
        // image's edges on every side and chunks follow one another: 70 outputs (the 128-channel kernel, which
        // applies the styles in its gather) with a width of 20 and a partial second chunk; 20 outputs (the
        // 32-channel kernel) with a width of 13 and a second chunk of 4 channels; 48 outputs (the 64-channel kernel
        // and its two B buffers) over three chunks with a width of 36.
        for (n, i, o, h, w, seed) in [
            (1, 40, 70, 11, 20, 0x7c0a),
            (2, 36, 20, 7, 13, 0x7c0b),
            (1, 72, 48, 12, 36, 0x7c0c),
        ] {
            check_layer(
                &Layer {
                    n,
                    i,
                    o,
                    h,
                    w,
                    k: 3,
                    up: 1,
                    demodulate: true,
                    per_sample_noise: n > 1,
                    clamp: Some(256.0),
                },
                seed,
            );
        }
        // An up-sampling layer with 264 input channels: more than the per-sample weights take on sm_90, so the
        // wgmma kernel with one weight for the batch (9 stages, the first partial).
        check_layer(
            &Layer {
                n: 2,
                i: 264,
                o: 9,
                h: 5,
                w: 7,
                k: 3,
                up: 2,
                demodulate: true,
                per_sample_noise: false,
                clamp: Some(256.0),
            },
            0x7c08,
        );
    }

    #[test]
    fn same_resolution_1x1_against_f32() {
        // ToRGB-like: 3 outputs (the per-pixel dot-product kernel, two runs of 256 pixels per sample), no
        // demodulation, clamped; a demodulated 1x1 with an odd K and 40 outputs (the 8 x 8 x 64 shape), two
        // squares across; and 12 outputs (the 8 x 16 x 32 shape).
        check_layer(
            &Layer {
                n: 2,
                i: 40,
                o: 3,
                h: 17,
                w: 20,
                k: 1,
                up: 1,
                demodulate: false,
                per_sample_noise: false,
                clamp: Some(256.0),
            },
            0x7c03,
        );
        check_layer(
            &Layer {
                n: 2,
                i: 37,
                o: 40,
                h: 3,
                w: 10,
                k: 1,
                up: 1,
                demodulate: true,
                per_sample_noise: true,
                clamp: None,
            },
            0x7c04,
        );
        check_layer(
            &Layer {
                n: 2,
                i: 24,
                o: 12,
                h: 9,
                w: 20,
                k: 1,
                up: 1,
                demodulate: false,
                per_sample_noise: false,
                clamp: None,
            },
            0x7c07,
        );
    }

    #[test]
    fn up_sampling_3x3_against_f32() {
        // Output 14 x 18: two tile rows, one partial tile column. 20 channels: a full and a partial 16-channel
        // block. I = 20: a partial stage in every mode (2 tf32 stages of 16 channels, 1 f16/bf16 stage of 32).
        check_layer(
            &Layer {
                n: 2,
                i: 20,
                o: 20,
                h: 7,
                w: 9,
                k: 3,
                up: 2,
                demodulate: true,
                per_sample_noise: false,
                clamp: Some(256.0),
            },
            0x7c05,
        );
        // No demodulation, per-sample noise, three samples, output 26 x 30 (3 x 2 tiles, all partial at the far
        // edges), 9 channels (one partial block), I = 69: 5 tf32 and 3 f16/bf16 stages, so both shared-memory
        // buffers serve the main loop; odd, so an f16/bf16 pair straddles the start of the channels (the kernel
        // aligns K to its end, making stage 0 the partial one).
        check_layer(
            &Layer {
                n: 3,
                i: 69,
                o: 9,
                h: 13,
                w: 15,
                k: 3,
                up: 2,
                demodulate: false,
                per_sample_noise: true,
                clamp: None,
            },
            0x7c06,
        );
        // Output 12 x 36, rows a multiple of 4 values: the epilogue's 4-value stores and noise loads, and the second
        // tile column cut after two of its seven quads.
        check_layer(
            &Layer {
                n: 2,
                i: 40,
                o: 16,
                h: 6,
                w: 18,
                k: 3,
                up: 2,
                demodulate: true,
                per_sample_noise: true,
                clamp: Some(256.0),
            },
            0x7c07,
        );
    }

    /// A block's conv1 (3x3, demodulated, lrelu, noise, bias, clamp 256, output in the mode's activation type) and
    /// the ToRGB after it (1x1 to 3 channels, linear, gain 1, f32 output), as the synthesis builds them.
    struct Pair {
        n: usize,
        i: usize,
        o: usize,
        h: usize,
        w: usize,
        rgb_clamp: Option<f32>,
    }

    /// A same-resolution synthesis conv as the generator builds it (demodulated, lrelu, its gain, the given
    /// clamp), storing the mode's activation type.
    fn synthesis_conv(
        dev: &EmuDevice,
        weight: &Tensor,
        bias: &[f32],
        clamp: Option<f32>,
        precision: Precision,
    ) -> DeviceConvLayer<EmuDevice> {
        let finish = Finish {
            bias: Some(bias),
            act: Act::LRELU,
            gain: Act::LRELU.default_gain(),
            clamp,
            output: precision.activation_dtype(),
        };
        DeviceConvLayer::with_precision(dev, weight, true, 1, &finish, false, precision).unwrap()
    }

    /// The fused pair (forward_with_torgb) against the unfused one in every tensor-core mode. y must be bit for bit
    /// the unfused conv's. rgb[b, c, pix] = clamp(sum_o a_o w_co + bias_c), a_o = y_o s_o, in both from the same
    /// stored y: the unfused ToRGB rounds a_o and w_co to the mode's type (u relative, or eta absolute below f16's
    /// normal range) and sums the K = O products in f32; the fused one multiplies and sums in f32 (K + 1
    /// roundings of at most 2^-24 S). With S = sum_o |a_o w_co| and A + W = sum_o |a_o| + |w_co|, that is
    /// check_layer's conv bound with gain 1 and no demodulation or noise:
    ///   (2u + u^2 + 2 K 2^-23 (1 + u)^2) S + 2 eta (A + W) + 2^-20 (S + |bias_c|)
    /// (the last term: each kernel's f32 rounding of the bias addition); the clamp is 1-Lipschitz.
    fn check_fused_torgb(l: &Pair, seed: u64) {
        check_fused_torgb_on(&EmuDevice::new(), l, seed, &TENSOR_CORE_MODES);
        // An sm_90 device fuses the ToRGB into the 64- or 32-channel wgmma kernel in fp16 and bf16 (launched with
        // and without y).
        let sm90 = EmuDevice::sm90();
        check_fused_torgb_on(&sm90, l, seed, &TENSOR_CORE_MODES);
        let kernels = if l.o > 32 {
            [
                Kernel::Modconv3x3TorgbN64WgmmaF16,
                Kernel::Modconv3x3TorgbN64WgmmaBf16,
            ]
        } else {
            [
                Kernel::Modconv3x3TorgbN32WgmmaF16,
                Kernel::Modconv3x3TorgbN32WgmmaBf16,
            ]
        };
        for kernel in kernels {
            assert_eq!(sm90.launches(kernel), 2, "{kernel:?}");
        }
    }

    fn check_fused_torgb_on(dev: &EmuDevice, l: &Pair, seed: u64, modes: &[Precision]) {
        let mut rng = Rng(seed);
        let x = scaled(rng.tensor(vec![l.n, l.i, l.h, l.w]), 256.0);
        let styles = scaled(rng.tensor(vec![l.n, l.i]), 10.0);
        let weight = scaled(
            rng.tensor(vec![l.o, l.i, 3, 3]),
            1.0 / ((9 * l.i) as f32).sqrt(),
        );
        let bias = rng.tensor(vec![l.o]).data;
        // Shared noise as the device takes it: already times the layer's strength.
        let noise = DeviceTensor::upload(dev, &scaled(rng.tensor(vec![l.h, l.w]), 0.7)).unwrap();
        let rgb_styles = scaled(rng.tensor(vec![l.n, l.o]), 10.0);
        let rgb_weight = scaled(rng.tensor(vec![3, l.o, 1, 1]), 1.0 / (l.o as f32).sqrt());
        let rgb_bias = rng.tensor(vec![3]).data;
        let sd = DeviceTensor::upload(dev, &styles).unwrap();
        let rgb_sd = DeviceTensor::upload(dev, &rgb_styles).unwrap();
        let hw = l.h * l.w;
        let mut clamp_hits = 0;
        for &precision in modes {
            let activations = precision.activation_dtype();
            let conv = synthesis_conv(dev, &weight, &bias, Some(256.0), precision);
            let torgb = DeviceConvLayer::with_precision(
                dev,
                &rgb_weight,
                false,
                1,
                &Finish {
                    bias: Some(&rgb_bias),
                    act: Act::Linear,
                    gain: 1.0,
                    clamp: l.rgb_clamp,
                    output: DType::F32,
                },
                false,
                precision,
            )
            .unwrap();
            assert!(conv.can_fuse_torgb(&torgb), "{precision}: not fusable");
            let xd = DeviceTensor::upload_as(dev, &x, activations).unwrap();
            let dcoefs = conv.demod(dev, &sd).unwrap();
            let layer_noise = || Some(DeviceNoise::Shared(&noise));
            let y_ref = conv
                .forward(
                    dev,
                    &xd,
                    &sd,
                    dcoefs.as_ref(),
                    layer_noise(),
                    ConvPath::Fast,
                )
                .unwrap();
            let rgb_ref = torgb
                .forward(dev, &y_ref, &rgb_sd, None, None, ConvPath::Fast)
                .unwrap()
                .download(dev)
                .unwrap();
            let fused = |keep_conv_output| {
                conv.forward_with_torgb(
                    dev,
                    &xd,
                    &sd,
                    dcoefs.as_ref(),
                    layer_noise(),
                    FusedToRgb {
                        layer: &torgb,
                        styles: &rgb_sd,
                        skip: None,
                        keep_conv_output,
                    },
                )
                .unwrap()
            };
            let (y, rgb) = fused(true);
            let (y, y_ref) = (
                y.unwrap().download(dev).unwrap(),
                y_ref.download(dev).unwrap(),
            );
            assert_same_bits(&format!("{precision}: fused y"), &y, &y_ref);
            let rgb = rgb.download(dev).unwrap();
            // Without the conv's output (the last block's), the kernel writes the same image and no y.
            let (no_y, rgb_alone) = fused(false);
            assert!(no_y.is_none(), "{precision}: a y nobody asked for");
            assert_same_bits(
                &format!("{precision}: rgb without y"),
                &rgb_alone.download(dev).unwrap(),
                &rgb,
            );
            assert_eq!(rgb.shape, rgb_ref.shape);
            let (u, eta) = input_rounding(precision);
            let k = l.o as f64;
            let relative = conv_relative_bound(u, k);
            let mut worst = 0f64;
            for (e, (&got, &want)) in rgb.data.iter().zip(&rgb_ref.data).enumerate() {
                let (b, c, pix) = (e / (3 * hw), e / hw % 3, e % hw);
                let (mut s_sum, mut aw_sum) = (0f64, 0f64);
                for o in 0..l.o {
                    let a = (y.data[(b * l.o + o) * hw + pix] * rgb_styles.data[b * l.o + o]).abs();
                    let w = rgb_weight.data[c * l.o + o].abs();
                    s_sum += a as f64 * w as f64;
                    aw_sum += a as f64 + w as f64;
                }
                let bound = relative * s_sum
                    + 2.0 * eta * aw_sum
                    + 2f64.powi(-20) * (s_sum + rgb_bias[c].abs() as f64);
                let err = (got as f64 - want as f64).abs();
                assert!(
                    err <= bound,
                    "{precision}: rgb element {e}: fused {got}, unfused {want} (error {err:e}, bound {bound:e})"
                );
                if let Some(clamp) = l.rgb_clamp {
                    assert!(
                        got.abs() <= clamp,
                        "{precision}: rgb element {e} = {got} beyond the clamp"
                    );
                }
                worst = worst.max(err / bound);
            }
            clamp_hits += l
                .rgb_clamp
                .map_or(0, |c| rgb.data.iter().filter(|v| v.abs() == c).count());
            let max_err = assert_close(
                precision.name(),
                &rgb.data,
                &rgb_ref.data,
                f32::INFINITY,
                0.0,
            );
            println!(
                "fused torgb {precision} n{} i{} o{} {}x{}: y identical, rgb max abs error vs unfused {max_err:.3e}, \
                 worst error / bound {worst:.3}",
                l.n, l.i, l.o, l.h, l.w
            );
        }
        if l.rgb_clamp.is_some() {
            assert!(clamp_hits > 0, "the test's rgb clamp should bite");
        }
    }

    #[test]
    fn fused_torgb_matches_the_unfused_pair() {
        // 20 channels: the 8 x 16 x 32 block shape, channels 20.. empty; a 5 x 18 image: two partial rectangles;
        // clamped.
        check_fused_torgb(
            &Pair {
                n: 3,
                i: 20,
                o: 20,
                h: 5,
                w: 18,
                rgb_clamp: Some(2.0),
            },
            0x7c11,
        );
        // 37 channels: the 8 x 8 x 64 shape, across both warp columns; a 9 x 9 image: four squares, three partial;
        // no clamp.
        check_fused_torgb(
            &Pair {
                n: 2,
                i: 9,
                o: 37,
                h: 9,
                w: 9,
                rgb_clamp: None,
            },
            0x7c12,
        );
    }

    #[test]
    fn fused_torgb_on_sm90_up_to_128_channels() {
        // 100 channels: the 128-channel wgmma block (fp16 and bf16 on sm_90 only; the mma.sync kernels fuse at
        // most 64), channels 100.. empty; 40 inputs: two K chunks; a 9 x 17 image: four partial rectangles.
        let sm90 = EmuDevice::sm90();
        check_fused_torgb_on(
            &sm90,
            &Pair {
                n: 2,
                i: 40,
                o: 100,
                h: 9,
                w: 17,
                rgb_clamp: Some(2.0),
            },
            0x7c14,
            &[Precision::Fp16, Precision::Bf16],
        );
        for kernel in [
            Kernel::Modconv3x3TorgbWgmmaF16,
            Kernel::Modconv3x3TorgbWgmmaBf16,
        ] {
            assert_eq!(sm90.launches(kernel), 2, "{kernel:?}");
        }
    }

    /// The fusion is for the tensor-core modes, a 3x3 conv with at most 64 outputs (128 on sm_90's wgmma kernels:
    /// one block column), and a ToRGB of at most 4 channels, with a bias, that reads that conv's outputs.
    #[test]
    fn fused_torgb_only_where_it_applies() {
        let dev = EmuDevice::new();
        let mut rng = Rng(0x7c13);
        let unbiased_weight = rng.tensor(vec![3, 64, 1, 1]);
        let mut layer =
            |dev: &EmuDevice, precision: Precision, o: usize, i: usize, k: usize, rgb: bool| {
                let bias = vec![0.5; o];
                let finish = Finish {
                    bias: Some(&bias),
                    act: if rgb { Act::Linear } else { Act::LRELU },
                    gain: if rgb { 1.0 } else { Act::LRELU.default_gain() },
                    clamp: None,
                    output: if rgb {
                        DType::F32
                    } else {
                        precision.activation_dtype()
                    },
                };
                let w = rng.tensor(vec![o, i, k, k]);
                DeviceConvLayer::with_precision(dev, &w, !rgb, 1, &finish, false, precision)
                    .unwrap()
            };
        for precision in TENSOR_CORE_MODES {
            assert!(layer(&dev, precision, 64, 8, 3, false)
                .can_fuse_torgb(&layer(&dev, precision, 3, 64, 1, true)));
            assert!(!layer(&dev, precision, 65, 8, 3, false)
                .can_fuse_torgb(&layer(&dev, precision, 3, 65, 1, true)));
            assert!(!layer(&dev, precision, 32, 8, 3, false)
                .can_fuse_torgb(&layer(&dev, precision, 5, 32, 1, true)));
            assert!(!layer(&dev, precision, 32, 8, 3, false)
                .can_fuse_torgb(&layer(&dev, precision, 3, 16, 1, true)));
            assert!(!layer(&dev, precision, 32, 8, 1, false)
                .can_fuse_torgb(&layer(&dev, precision, 3, 32, 1, true)));
            // The kernel adds the ToRGB's bias unconditionally.
            let unbiased = DeviceConvLayer::with_precision(
                &dev,
                &unbiased_weight,
                false,
                1,
                &Finish {
                    bias: None,
                    act: Act::Linear,
                    gain: 1.0,
                    clamp: None,
                    output: DType::F32,
                },
                false,
                precision,
            )
            .unwrap();
            assert!(!layer(&dev, precision, 64, 8, 3, false).can_fuse_torgb(&unbiased));
        }
        // On sm_90, fp16 and bf16 run the wgmma kernels, whose widest block holds 128 channels.
        let sm90 = EmuDevice::sm90();
        for precision in [Precision::Fp16, Precision::Bf16] {
            assert!(layer(&sm90, precision, 128, 8, 3, false)
                .can_fuse_torgb(&layer(&sm90, precision, 3, 128, 1, true)));
            assert!(!layer(&sm90, precision, 129, 8, 3, false)
                .can_fuse_torgb(&layer(&sm90, precision, 3, 129, 1, true)));
        }
        let conv = layer(&dev, Precision::Fp32, 32, 8, 3, false);
        let torgb = layer(&dev, Precision::Fp32, 3, 32, 1, true);
        assert!(!conv.can_fuse_torgb(&torgb));
        let x = DeviceTensor::upload(&dev, &rng.tensor(vec![1, 8, 4, 4])).unwrap();
        let styles = DeviceTensor::upload(&dev, &rng.tensor(vec![1, 8])).unwrap();
        let rgb_styles = DeviceTensor::upload(&dev, &rng.tensor(vec![1, 32])).unwrap();
        let dcoefs = conv.demod(&dev, &styles).unwrap();
        assert!(conv
            .forward_with_torgb(
                &dev,
                &x,
                &styles,
                dcoefs.as_ref(),
                None,
                FusedToRgb {
                    layer: &torgb,
                    styles: &rgb_styles,
                    skip: None,
                    keep_conv_output: true,
                },
            )
            .is_err());
    }

    /// `skip` `[N, C, H, W]` up-sampled plus `addend` `[N, C, 2H, 2W]` by the stand-alone kernel.
    fn upsampled_plus(
        dev: &EmuDevice,
        skip: &DeviceTensor<EmuDevice>,
        addend: &DeviceTensor<EmuDevice>,
    ) -> Tensor {
        skip_upsample_plus(dev, skip, addend)
            .unwrap()
            .download(dev)
            .unwrap()
    }

    /// The skip image joins in the kernel that writes the ToRGB (ModconvParams::skip): the plain ToRGB in every
    /// mode (the f32 narrow kernel, the tensor-core 1x1 ones) and the fused conv1 + ToRGB give the bits of the
    /// stand-alone skip up-sampling with the ToRGB output as its addend. Shapes with odd half-sizes put taps past
    /// both edges; the rgb clamp bites before the skip is added.
    #[test]
    fn skip_image_joins_in_the_torgb_kernels() {
        let dev = EmuDevice::new();
        let mut rng = Rng(0x5c1b);
        let (n, i, h, w) = (2, 20, 6, 10);
        let x = scaled(rng.tensor(vec![n, i, h, w]), 4.0);
        let styles = DeviceTensor::upload(&dev, &rng.tensor(vec![n, i])).unwrap();
        let skip =
            DeviceTensor::upload(&dev, &scaled(rng.tensor(vec![n, 3, h / 2, w / 2]), 3.0)).unwrap();
        let weight = scaled(rng.tensor(vec![i, i, 3, 3]), 0.3);
        let bias = rng.tensor(vec![i]).data;
        let rgb_weight = rng.tensor(vec![3, i, 1, 1]);
        let rgb_bias = rng.tensor(vec![3]).data;
        let rgb_styles = DeviceTensor::upload(&dev, &rng.tensor(vec![n, i])).unwrap();
        let rgb_finish = Finish {
            bias: Some(&rgb_bias),
            act: Act::Linear,
            gain: 1.0,
            clamp: Some(1.5),
            output: DType::F32,
        };
        for precision in [Precision::Fp32].into_iter().chain(TENSOR_CORE_MODES) {
            let activations = precision.activation_dtype();
            let xd = DeviceTensor::upload_as(&dev, &x, activations).unwrap();
            let torgb = DeviceConvLayer::with_precision(
                &dev,
                &rgb_weight,
                false,
                1,
                &rgb_finish,
                false,
                precision,
            )
            .unwrap();
            assert!(torgb.takes_skip());
            let plain = torgb.forward_torgb(&dev, &xd, &styles, None).unwrap();
            let joined = torgb
                .forward_torgb(&dev, &xd, &styles, Some(&skip))
                .unwrap()
                .download(&dev)
                .unwrap();
            let want = upsampled_plus(&dev, &skip, &plain);
            assert_same_bits(&format!("{precision}: ToRGB + skip"), &joined, &want);
            let plain = plain.download(&dev).unwrap();
            assert!(
                plain.data.iter().any(|v| v.abs() == 1.5)
                    && joined.data.iter().any(|v| v.abs() > 1.5),
                "{precision}: the clamp should bite before the skip image is added"
            );
            // A wrong skip shape, and a layer that cannot add one, are errors.
            let small =
                DeviceTensor::upload(&dev, &rng.tensor(vec![n, 3, h / 2, w / 2 - 1])).unwrap();
            let err = torgb
                .forward_torgb(&dev, &xd, &styles, Some(&small))
                .err()
                .expect("a wrong skip shape should be an error")
                .to_string();
            assert!(
                err.contains("skip image") && err.contains("[2, 3, 3, 5]"),
                "{err}"
            );
            let conv = synthesis_conv(&dev, &weight, &bias, None, precision);
            assert!(!conv.takes_skip());
            assert!(conv.forward_torgb(&dev, &xd, &styles, Some(&skip)).is_err());
            if precision == Precision::Fp32 {
                continue;
            }
            let dcoefs = conv.demod(&dev, &styles).unwrap();
            let fused = |skip| {
                let (y, rgb) = conv
                    .forward_with_torgb(
                        &dev,
                        &xd,
                        &styles,
                        dcoefs.as_ref(),
                        None,
                        FusedToRgb {
                            layer: &torgb,
                            styles: &rgb_styles,
                            skip,
                            keep_conv_output: true,
                        },
                    )
                    .unwrap();
                (y.unwrap().download(&dev).unwrap(), rgb)
            };
            let (y_plain, rgb_plain) = fused(None);
            let (y_joined, rgb_joined) = fused(Some(&skip));
            assert_same_bits(&format!("{precision}: fused y"), &y_joined, &y_plain);
            assert_same_bits(
                &format!("{precision}: fused ToRGB + skip"),
                &rgb_joined.download(&dev).unwrap(),
                &upsampled_plus(&dev, &skip, &rgb_plain),
            );
        }
    }

    /// The fused conv1 + ToRGB kernels of `precision`: the 8 x 8 x 64 block shape's and the 8 x 16 x 32 one's
    /// (layers with at most 32 channels).
    fn fused_kernels(precision: Precision) -> [Kernel; 2] {
        match precision {
            Precision::Tf32 => [Kernel::Modconv3x3TorgbTf32, Kernel::Modconv3x3TorgbN32Tf32],
            Precision::Fp16 => [Kernel::Modconv3x3TorgbF16, Kernel::Modconv3x3TorgbN32F16],
            Precision::Bf16 => [Kernel::Modconv3x3TorgbBf16, Kernel::Modconv3x3TorgbN32Bf16],
            Precision::Fp32 => unreachable!("fp32 runs no fused ToRGB"),
        }
    }

    /// Renders `case`'s `img_const` in `precision`; returns the image, the golden one and every traced tensor.
    fn render(case: &str, precision: Precision) -> (Tensor, Tensor, BTreeMap<String, Tensor>) {
        render_on(&EmuDevice::new(), case, precision)
    }

    /// Also checks that the untraced render, where the skip image joins in the ToRGB kernels, gives the traced
    /// render's bits with no stand-alone skip up-sampling.
    fn render_on(
        dev: &EmuDevice,
        case: &str,
        precision: Precision,
    ) -> (Tensor, Tensor, BTreeMap<String, Tensor>) {
        let net = nvlabs_network(case);
        let synth = DeviceSynthesis::with_precision(dev, &net, ConvPath::Fast, precision).unwrap();
        let cases = SafeTensors::open(golden(case, "cases.safetensors")).unwrap();
        let ws = cases.tensor("ws").unwrap();
        let mut seen = BTreeMap::new();
        let img = synth
            .synthesize_traced(dev, &net, &ws, NoiseMode::Const, &mut |name, t| {
                seen.insert(name.to_string(), t.clone());
            })
            .unwrap();
        assert!(dev.launches(Kernel::SkipUpsample) > 0);
        let untraced_dev = if dev.wgmma() {
            EmuDevice::sm90()
        } else {
            EmuDevice::new()
        };
        let untraced = synth
            .synthesize(&untraced_dev, &net, &ws, NoiseMode::Const)
            .unwrap();
        assert_same_bits(&format!("{case} {precision} untraced"), &untraced, &img);
        assert_eq!(
            untraced_dev.launches(Kernel::SkipUpsample),
            0,
            "{precision}: the skip image should join in the ToRGB kernels"
        );
        (img, cases.tensor("img_const").unwrap(), seen)
    }

    /// Also: the blocks whose conv1 has at most 64 channels (b16 and b32 here; b4 and b8 have 128) compute their
    /// ToRGB in conv1's epilogue, b32's (32 channels) in the 32-channel block shape's kernel; the others run it on
    /// its own, in the 32-channel shape's 1x1 kernel (3 outputs); and the trace names the same tensors as the
    /// unfused fp32 synthesis.
    #[test]
    fn nvlabs_tiny_case_a_in_every_mode() {
        let net = nvlabs_network("nvlabs_tiny");
        // The conv1 widths of the blocks whose ToRGB can be fused.
        let fusable: Vec<usize> = net
            .layers
            .windows(2)
            .filter(|p| {
                p[0].kind == LayerKind::Conv
                    && p[1].kind == LayerKind::ToRgb
                    && p[0].weight.shape[0] <= 64
            })
            .map(|p| p[0].weight.shape[0])
            .collect();
        let narrow = fusable.iter().filter(|&&c| c <= 32).count();
        let torgbs = net
            .layers
            .iter()
            .filter(|l| l.kind == LayerKind::ToRgb)
            .count();
        assert!(
            narrow > 0 && narrow < fusable.len() && fusable.len() < torgbs,
            "the case should cover every path"
        );
        let (_, _, unfused) = render("nvlabs_tiny", Precision::Fp32);
        for precision in TENSOR_CORE_MODES {
            let dev = EmuDevice::new();
            let (img, golden_img, seen) = render_on(&dev, "nvlabs_tiny", precision);
            let [square, wide] = fused_kernels(precision);
            assert_eq!(
                [dev.launches(square), dev.launches(wide)],
                [fusable.len() - narrow, narrow],
                "{precision}: fused launches (8 x 8 x 64, 8 x 16 x 32)"
            );
            let narrow_1x1 = match precision {
                Precision::Tf32 => Kernel::Modconv1x1Few,
                Precision::Fp16 => Kernel::Modconv1x1FewHalf,
                _ => Kernel::Modconv1x1FewBfloat,
            };
            assert_eq!(
                dev.launches(narrow_1x1),
                torgbs - fusable.len(),
                "{precision}: unfused ToRGB launches"
            );
            assert!(
                seen.keys().eq(unfused.keys()),
                "{precision}: the trace names other tensors"
            );
            let tol = selftest::image_tolerance(precision, &golden_img);
            let err = assert_close(precision.name(), &img.data, &golden_img.data, tol, 0.0);
            println!(
                "emu nvlabs_tiny {precision} img_const max error {err:.3e} (tolerance {tol:.3e})"
            );
        }
    }

    /// On an sm_90 device: the up-sampling convs (at most 256 inputs: with per-sample weights), the 128-channel
    /// conv1 layers (b4, b8), b16's 64-channel conv1 and b32's 32-channel one, with their fused ToRGBs, on the
    /// wgmma kernels.
    #[test]
    fn nvlabs_tiny_case_a_on_sm90() {
        for precision in [Precision::Fp16, Precision::Bf16] {
            let dev = EmuDevice::sm90();
            let (img, golden_img, _) = render_on(&dev, "nvlabs_tiny", precision);
            let wgmma = match precision {
                Precision::Fp16 => [
                    Kernel::Modconv3x3TorgbWgmmaF16,
                    Kernel::Modconv3x3TorgbN64WgmmaF16,
                    Kernel::Modconv3x3TorgbN32WgmmaF16,
                    Kernel::ModconvUp23x3SampleWeightsWgmmaF16,
                ],
                _ => [
                    Kernel::Modconv3x3TorgbWgmmaBf16,
                    Kernel::Modconv3x3TorgbN64WgmmaBf16,
                    Kernel::Modconv3x3TorgbN32WgmmaBf16,
                    Kernel::ModconvUp23x3SampleWeightsWgmmaBf16,
                ],
            };
            for kernel in wgmma {
                assert!(
                    dev.launches(kernel) > 0,
                    "{precision}: {kernel:?} not launched"
                );
            }
            let tol = selftest::image_tolerance(precision, &golden_img);
            let err = assert_close(precision.name(), &img.data, &golden_img.data, tol, 0.0);
            println!("emu sm90 nvlabs_tiny {precision} img_const max error {err:.3e} (tolerance {tol:.3e})");
        }
    }

    /// Case B's activations reach the conv clamp (256); in fp16 they still never pass it, and the image stays
    /// within the mode's tolerance.
    #[test]
    fn nvlabs_tiny_clamp_case_b_in_fp16() {
        let (img, golden_img, seen) = render("nvlabs_tiny_clamp", Precision::Fp16);
        let tol = selftest::image_tolerance(Precision::Fp16, &golden_img);
        let err = assert_close("fp16", &img.data, &golden_img.data, tol, 0.0);
        println!("emu nvlabs_tiny_clamp fp16 img_const max error {err:.3e} (tolerance {tol:.3e})");
        let mut at_clamp = 0;
        for (name, t) in seen.iter().filter(|(n, _)| n.ends_with(".out")) {
            assert!(
                t.data.iter().all(|v| v.abs() <= 256.0),
                "{name} passes the clamp"
            );
            at_clamp += t.data.iter().filter(|v| v.abs() == 256.0).count();
        }
        assert!(at_clamp > 0, "the clamp should bite in case B");
    }
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

/// The command line renders through the emulated CUDA generator, and matches the CPU backend.
#[test]
fn cli_render_on_the_emulation_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let render = |device: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{device}.npy"));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mmengine"))
            .args([
                "render", "--seeds", "0-2", "--batch", "2", "--quiet", "--device", device, "-o",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        mmengine::io::npy::read_npy(&out).unwrap()
    };
    // The emulation computes each batch of 2 in passes of one image, through the download pipeline.
    let (cpu, emu) = (render("cpu", &[]), render("emu", &["--pass-images", "1"]));
    assert_eq!(cpu.shape, emu.shape);
    let err = cpu.max_abs_diff(&emu).unwrap();
    assert!(err < 1e-4, "emu vs cpu render: {err:e}");
}

/// `bench` on a device reports throughput, TFLOP/s and the device memory the engine's buffers peaked at.
#[test]
fn cli_bench_on_the_emulation_reports_device_memory_and_a_layer_profile() {
    let model = golden("nvlabs_tiny", "model.pkl");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mmengine"))
        .args([
            "bench",
            "--device",
            "emu",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--precision",
            "fp16",
            "--profile",
            "--json",
            "--pass-images",
            "1",
            "--noise-mode",
            "random",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["achieved_tflop_per_s"].is_number(), "{report}");
    // Passes of 1 image as asked; the 4-16 px blocks first over both images; the noise drawn on the device.
    assert_eq!(report["images_per_pass"], 1, "{report}");
    assert_eq!(report["noise"], "random", "{report}");
    assert_eq!(
        report["front_pass"],
        serde_json::json!({"resolution": 16, "images": 2}),
        "{report}"
    );
    // 2 images of 3 x 32 x 32 f32 per batch at the reported rate.
    let out = report["output_gbyte_per_s"].as_f64().unwrap();
    let expected = report["images_per_s"].as_f64().unwrap() * (3 * 32 * 32 * 4) as f64 / 1e9;
    assert!((out - expected).abs() <= 1e-9 * expected, "{report}");
    // At least the weights and one batch's activations: more than the 32 px images themselves.
    let images = 2 * 3 * 32 * 32 * 4;
    assert!(
        report["peak_device_memory_bytes"].as_u64().unwrap() > images,
        "{report}"
    );
    // One row per layer, the ToRGBs of the blocks whose conv1 computes them (16 and 32 px, 64 channels or
    // fewer) in their conv's row; every layer's work at least its 3x3 convs' FLOPs; no roofline for the
    // emulation.
    let layers = &report["layers"];
    assert_eq!(layers["images"], 1, "{layers}");
    let rows = layers["rows"].as_array().unwrap();
    let images: Vec<u64> = rows.iter().map(|r| r["images"].as_u64().unwrap()).collect();
    assert_eq!(images, [2, 2, 2, 2, 2, 2, 2, 1, 1], "{layers}");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "b4.conv1",
            "b4.torgb",
            "b8.conv0",
            "b8.conv1",
            "b8.torgb",
            "b16.conv0",
            "b16.conv1 + b16.torgb",
            "b32.conv0",
            "b32.conv1 + b32.torgb",
        ]
    );
    for r in rows {
        assert!(
            r["ms"].as_f64().unwrap() > 0.0 && r["mbytes"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(r["bound_ms"].is_null(), "{r}");
    }
    // Per image, as the total counts the front's rows.
    let conv_gflop = report["gflop_per_image"].as_f64().unwrap();
    let gflop: f64 = rows
        .iter()
        .map(|r| r["gflop"].as_f64().unwrap() / r["images"].as_f64().unwrap())
        .sum();
    assert!(
        gflop >= conv_gflop && gflop < 1.05 * conv_gflop,
        "{gflop} vs {conv_gflop}"
    );
    let ms: f64 = rows
        .iter()
        .map(|r| r["ms"].as_f64().unwrap() / r["images"].as_f64().unwrap())
        .sum();
    let total = layers["total_ms"].as_f64().unwrap();
    assert!((total - ms).abs() <= 1e-9 * ms, "{total} vs {ms}");
    assert!(layers["fraction_of_bound"].is_null(), "{layers}");
}

/// `selftest --precision fp16` runs the generator cases through the tensor-core kernels, every one within the
/// mode's derived image tolerance, and says so in its JSON report.
#[test]
fn cli_selftest_on_the_emulation_in_fp16() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mmengine"))
        .args([
            "selftest",
            "--device",
            "emu",
            "--precision",
            "fp16",
            "--json",
            "--golden",
        ])
        .arg(common::golden_dir())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["precision"], "fp16", "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let checks = report["checks"].as_array().unwrap();
    let images: Vec<_> = checks
        .iter()
        .filter(|c| c["output"].as_str().unwrap().starts_with("img"))
        .collect();
    assert_eq!(images.len(), 7, "image checks: {report}");
    for c in images {
        // Looser than the fp32 tolerance (the mode rounds), and met.
        assert!(c["tol_abs"].as_f64().unwrap() > 1e-4, "{c}");
        assert!(
            c["max_abs_err"].as_f64().unwrap() <= c["tol_abs"].as_f64().unwrap(),
            "{c}"
        );
    }
}

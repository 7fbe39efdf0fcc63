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
        matches!(op, "bias_act" | "modulated_conv2d")
    }
    fn upfirdn2d(&self, _x: &Tensor, _f: &Tensor, _p: &Upfirdn) -> Result<Tensor> {
        unreachable!("not a device op yet")
    }
    fn bias_act(&self, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
        ops::bias_act(&self.0, x, b, p)
    }
    fn modulated_conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        styles: &Tensor,
        noise: Option<&Tensor>,
        f: &Tensor,
        p: &ModConv,
    ) -> Result<Tensor> {
        ops::modulated_conv2d(&self.0, x, w, styles, noise, f, p)
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

// ---------------------------------------------------------------------------------------------------------------
// The modulated convolution kernels against the CPU generator's convolution and the unfused up-sampling twin.

mod modconv {
    use super::common::assert_close;
    use mmengine::cpu::conv::{ModConvLayer, NoiseInput};
    use mmengine::cpu::ops::Act;
    use mmengine::cpu::ConvPath;
    use mmengine::cuda::conv::{DeviceConvLayer, DeviceNoise, Finish};
    use mmengine::cuda::device::DeviceTensor;
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::model::Noise;
    use mmengine::Tensor;

    /// A small deterministic generator of values in [-1, 1).
    struct Lcg(u64);

    impl Lcg {
        fn tensor(&mut self, shape: Vec<usize>) -> Tensor {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            Tensor::new(shape, data).unwrap()
        }
    }

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
        let mut rng = Lcg(seed);
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
        };
        let layer = DeviceConvLayer::new(&dev, &weight, c.demodulate, c.up, &finish, true).unwrap();
        let xd = DeviceTensor::upload(&dev, &x).unwrap();
        let sd = DeviceTensor::upload(&dev, &styles).unwrap();
        let shared_d = DeviceTensor::upload(&dev, &shared.buffer).unwrap();
        let per_sample_d = DeviceTensor::upload(&dev, &per_sample).unwrap();
        let dcoefs = layer.demod(&dev, &sd).unwrap();
        let run = |path| {
            let noise = match c.noise {
                NoiseKind::None => None,
                NoiseKind::Shared => Some(DeviceNoise::Shared {
                    plane: &shared_d,
                    strength: shared.strength,
                }),
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
        // ToRGB-like 1x1 (the narrow tile), no demodulation, clamped.
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
        let mut rng = Lcg(9);
        let finish = Finish {
            bias: None,
            act: Act::Linear,
            gain: 1.0,
            clamp: None,
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
        let wrong_noise = Some(DeviceNoise::Shared {
            plane: &noise,
            strength: 1.0,
        });
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
    use super::common::{assert_close, golden};
    use mmengine::backend::{Backend, NoiseMode};
    use mmengine::cpu::{ConvPath, CpuBackend};
    use mmengine::cuda::emu::EmuDevice;
    use mmengine::cuda::synthesis::DeviceSynthesis;
    use mmengine::io::safetensors::SafeTensors;
    use mmengine::model::nvlabs::{self, NvlabsConfig};
    use mmengine::model::state::StateDict;
    use mmengine::model::{rosinality, Network, SourceFormat};
    use mmengine::Tensor;
    use std::collections::{BTreeMap, HashMap};

    const IMG_TOL: f32 = 1e-4;

    fn state_dict(case: &str) -> StateDict {
        let st = SafeTensors::open(golden(case, "weights.safetensors")).unwrap();
        let tensors: BTreeMap<String, Tensor> = st
            .names()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        StateDict::new(tensors)
    }

    fn nvlabs_network(case: &str) -> Network {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(golden(case, "config.json")).unwrap()).unwrap();
        let kwargs = config["generator_init_kwargs"].as_object().unwrap();
        let cfg = NvlabsConfig::from_init(&[], kwargs).unwrap();
        nvlabs::build(&cfg, &state_dict(case), SourceFormat::NvlabsPickle).unwrap()
    }

    fn cases(case: &str) -> SafeTensors {
        SafeTensors::open(golden(case, "cases.safetensors")).unwrap()
    }

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
    fn check_intermediates(
        case: &str,
        seen: &HashMap<String, Tensor>,
        rel: f32,
        ours: impl Fn(&str) -> Option<String>,
    ) -> usize {
        let inter = SafeTensors::open(golden(case, "intermediates.safetensors")).unwrap();
        let mut compared = 0;
        for name in inter.names() {
            let Some(key) = ours(name) else { continue };
            let Some(t) = seen.get(&key) else { continue };
            let expected = inter.tensor(name).unwrap();
            let err = assert_close(name, &t.slice_rows(0, 1).data, &expected.data, IMG_TOL, rel);
            println!("emu {case} {name} max error {err:.3e}");
            compared += 1;
        }
        compared
    }

    fn check_nvlabs_const(
        case: &str,
        path: ConvPath,
    ) -> (DeviceSynthesis<EmuDevice>, Network, HashMap<String, Tensor>) {
        let net = nvlabs_network(case);
        let synth = DeviceSynthesis::new(&EmuDevice::new(), &net, path).unwrap();
        let c = cases(case);
        let (img, seen) = traced(&synth, &net, &c.tensor("ws").unwrap());
        let err = assert_close(
            "img_const",
            &img.data,
            &c.tensor("img_const").unwrap().data,
            IMG_TOL,
            1e-5,
        );
        println!("emu {case} {path:?} img_const max error {err:.3e}");
        let compared = check_intermediates(case, &seen, 1e-5, |name| {
            name.strip_prefix("synthesis.").map(str::to_string)
        });
        assert_eq!(
            compared,
            (2 * 2 + 2) + 3 * (3 * 2 + 2),
            "intermediates compared"
        );
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
        // The clamp must bite exactly where the reference's did (all 4 samples).
        for (layer, expected) in [
            ("b16.conv1.out", 1517),
            ("b32.conv1.out", 2795),
            ("b8.conv1.out", 0),
        ] {
            let hit = seen[layer].data.iter().filter(|v| v.abs() == 256.0).count();
            assert_eq!(hit, expected, "{layer}: elements at the clamp");
        }
    }

    /// rosinality module name -> our traced name, for the 32 px golden network.
    fn rosinality_layer(name: &str) -> Option<String> {
        let (module, what) = name.rsplit_once('.')?;
        let ours = match module {
            "conv1" => "b4.conv1".to_string(),
            "to_rgb1" => "b4.torgb".to_string(),
            m if m.starts_with("convs.") => {
                let i: usize = m[6..].parse().ok()?;
                let slot = if i.is_multiple_of(2) {
                    "conv0"
                } else {
                    "conv1"
                };
                format!("b{}.{slot}", 8 << (i / 2))
            }
            m if m.starts_with("to_rgbs.") => {
                format!("b{}.torgb", 8 << m[8..].parse::<usize>().ok()?)
            }
            _ => return None,
        };
        match (what, module.starts_with("to_rgb")) {
            ("styles", _) => Some(format!("{ours}.styles")),
            // rosinality's ToRGB output is the running skip image; its conv layers' output is ours.
            ("out", true) => Some(format!("{}.img", ours.split('.').next()?)),
            ("out", false) => Some(format!("{ours}.out")),
            _ => None,
        }
    }

    #[test]
    fn rosinality_tiny_case_c() {
        let c = cases("rosinality_tiny");
        let latent_avg = c.tensor("latent_avg").unwrap().data;
        let net = rosinality::build(&state_dict("rosinality_tiny"), Some(latent_avg)).unwrap();
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
        let compared = check_intermediates("rosinality_tiny", &seen, 0.0, rosinality_layer);
        assert_eq!(compared, 11 * 2, "intermediates compared");
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

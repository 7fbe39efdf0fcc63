//! The CUDA kernels, run by the host emulation (feature `emu`) against the same golden data as the CPU reference.
#![cfg(feature = "emu")]

mod common;

use common::ops_cases::{check_all_cases, OpBackend};
use common::{assert_close, golden};
use mmengine::backend::Truncation;
use mmengine::cpu::ops::{Act, BiasAct, ModConv, Resample, Upfirdn};
use mmengine::cuda::emu::EmuDevice;
use mmengine::cuda::mapping::DeviceMapping;
use mmengine::cuda::ops;
use mmengine::io::safetensors::SafeTensors;
use mmengine::model;
use mmengine::{Result, Tensor};

struct EmuOps(EmuDevice);

impl OpBackend for EmuOps {
    fn name(&self) -> String {
        "emu".to_string()
    }
    fn supports(&self, op: &str) -> bool {
        matches!(op, "bias_act" | "upfirdn2d")
    }
    fn upfirdn2d(&self, x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor> {
        ops::upfirdn2d(&self.0, x, f, p)
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

/// A deterministic pseudo-random tensor in [-1, 1) (xorshift), for cases the golden set does not cover.
fn random_tensor(shape: Vec<usize>, seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data = (0..shape.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::new(shape, data).unwrap()
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
        let x = random_tensor(x_shape.to_vec(), 2 * i as u64);
        let f = random_tensor(f_shape.to_vec(), 2 * i as u64 + 1);
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

//! The golden `ops` cases (NVlabs reference ops), run against any implementation of the ops: the CPU reference
//! (`tests/golden_ops.rs`), the CUDA kernels in the host emulation (`tests/emu.rs`) and on a GPU (`tests/gpu.rs`).

use super::{assert_close, golden};
use mmengine::cpu::ops::{self, Act, BiasAct, ModConv, Resample, Upfirdn};
use mmengine::io::safetensors::SafeTensors;
use mmengine::{Result, Tensor};
use serde_json::Value;

/// One implementation of the ops. `supports` names the ops it has; the runner reports the cases it skips.
pub trait OpBackend {
    fn name(&self) -> String;
    fn supports(&self, op: &str) -> bool;
    fn upfirdn2d(&self, x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor>;
    fn bias_act(&self, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor>;
    fn modulated_conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        styles: &Tensor,
        noise: Option<&Tensor>,
        f: &Tensor,
        p: &ModConv,
    ) -> Result<Tensor>;
    fn conv2d_resample(&self, x: &Tensor, w: &Tensor, f: &Tensor, p: &Resample) -> Result<Tensor>;
}

/// The CPU reference ops.
pub struct CpuOps;

impl OpBackend for CpuOps {
    fn name(&self) -> String {
        "cpu".to_string()
    }
    fn supports(&self, _op: &str) -> bool {
        true
    }
    fn upfirdn2d(&self, x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor> {
        ops::upfirdn2d(x, f, p)
    }
    fn bias_act(&self, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
        ops::bias_act(x, b, p)
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
        ops::modulated_conv2d(x, w, styles, noise, f, p)
    }
    fn conv2d_resample(&self, x: &Tensor, w: &Tensor, f: &Tensor, p: &Resample) -> Result<Tensor> {
        ops::conv2d_resample(x, w, f, p)
    }
}

fn int(p: &Value, key: &str) -> i64 {
    p[key]
        .as_i64()
        .unwrap_or_else(|| panic!("param '{key}' missing or not an integer: {p}"))
}

fn uint(p: &Value, key: &str) -> usize {
    usize::try_from(int(p, key)).unwrap()
}

fn flag(p: &Value, key: &str) -> bool {
    p[key]
        .as_bool()
        .unwrap_or_else(|| panic!("param '{key}' missing or not a bool: {p}"))
}

fn float(p: &Value, key: &str) -> f32 {
    p[key]
        .as_f64()
        .unwrap_or_else(|| panic!("param '{key}' missing or not a number: {p}")) as f32
}

/// Runs every golden ops case the backend supports and asserts each against the reference output. Returns the
/// number of cases checked.
pub fn check_all_cases(backend: &dyn OpBackend) -> usize {
    let json: Value =
        serde_json::from_slice(&std::fs::read(golden("ops", "ops.json")).expect("read ops.json"))
            .expect("ops.json is JSON");
    let st = SafeTensors::open(golden("ops", "ops.safetensors")).expect("open ops.safetensors");
    let cases = json["cases"].as_array().expect("cases array");
    assert_eq!(cases.len(), 40, "the golden ops set should have 40 cases");

    let backend_name = backend.name();
    let mut checked = 0;
    let mut skipped = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let op = case["op"].as_str().unwrap();
        if !backend.supports(op) {
            skipped.push(name);
            continue;
        }
        let p = &case["params"];
        let input = |key: &str| -> Tensor {
            let tname = case["inputs"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no input '{key}'"));
            st.tensor(tname).unwrap()
        };
        let expected = st.tensor(case["output"].as_str().unwrap()).unwrap();
        // 1e-5 absolute for the O(1) outputs; the undemodulated modconv outputs reach O(40), where float32
        // accumulation order alone moves the last bits, so allow 1e-6 relative (about 8 ulp) on top.
        let mut rel = 1e-6;
        let actual = match op {
            "upfirdn2d" => {
                let pad: Vec<i32> = p["padding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as i32)
                    .collect();
                let params = Upfirdn {
                    up: uint(p, "up"),
                    down: uint(p, "down"),
                    pad: pad.try_into().expect("padding has 4 values"),
                    flip_filter: flag(p, "flip_filter"),
                    gain: float(p, "gain"),
                };
                backend
                    .upfirdn2d(&input("x"), &input("f"), &params)
                    .unwrap_or_else(|e| panic!("{name} on {backend_name}: {e}"))
            }
            "bias_act" => {
                let act = match p["act"].as_str().unwrap() {
                    "lrelu" => Act::Lrelu {
                        alpha: float(p, "alpha"),
                    },
                    "linear" => Act::Linear,
                    other => panic!("{name}: unknown activation {other}"),
                };
                let clamp = p["clamp"].as_f64().map(|c| c as f32);
                let params = BiasAct {
                    dim: uint(p, "dim"),
                    act,
                    gain: float(p, "gain"),
                    clamp,
                };
                let b = input("b");
                let y = backend
                    .bias_act(&input("x"), Some(&b.data), &params)
                    .unwrap_or_else(|e| panic!("{name} on {backend_name}: {e}"));
                if let Some(c) = clamp {
                    rel = 1e-5;
                    let hits = y.data.iter().filter(|v| v.abs() == c).count();
                    assert_eq!(
                        hits,
                        uint(p, "n_clamped"),
                        "{name}: number of clamped elements"
                    );
                }
                y
            }
            "modulated_conv2d" => {
                assert_eq!(uint(p, "down"), 1, "{name}: down-sampling modconv");
                let params = ModConv {
                    up: uint(p, "up"),
                    padding: uint(p, "padding"),
                    demodulate: flag(p, "demodulate"),
                    flip_weight: flag(p, "flip_weight"),
                    fused: flag(p, "fused_modconv"),
                };
                let noise = case["inputs"].get("noise").map(|_| input("noise"));
                backend
                    .modulated_conv2d(
                        &input("x"),
                        &input("weight"),
                        &input("styles"),
                        noise.as_ref(),
                        &input("resample_filter"),
                        &params,
                    )
                    .unwrap_or_else(|e| panic!("{name} on {backend_name}: {e}"))
            }
            "conv2d_resample" => {
                let params = Resample {
                    up: uint(p, "up"),
                    down: uint(p, "down"),
                    padding: uint(p, "padding"),
                    groups: uint(p, "groups"),
                    flip_weight: flag(p, "flip_weight"),
                    flip_filter: flag(p, "flip_filter"),
                };
                backend
                    .conv2d_resample(&input("x"), &input("w"), &input("f"), &params)
                    .unwrap_or_else(|e| panic!("{name} on {backend_name}: {e}"))
            }
            other => panic!("{name}: unknown op '{other}'"),
        };
        let shape: Vec<usize> = case["output_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(actual.shape, shape, "{name}: output shape");
        let err = assert_close(
            &format!("{name} on {backend_name}"),
            &actual.data,
            &expected.data,
            1e-5,
            rel,
        );
        println!("{backend_name}: {name:40} max abs error {err:.3e}");
        checked += 1;
    }
    if !skipped.is_empty() {
        println!(
            "{backend_name}: {} cases of ops it does not implement skipped: {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    assert!(checked > 0, "{backend_name}: no golden ops case checked");
    checked
}

//! The golden checks, as a library: the ops cases (golden `ops`) against any implementation of the ops, and the
//! generator cases (A, B, C) against any backend. The test suite asserts on them; `mmengine selftest` prints them,
//! so a user can check their GPU and install with the same cases CI runs.

use crate::backend::{Backend, NoiseMode, Truncation};
use crate::cpu::ops::{self, Act, BiasAct, ModConv, Resample, Upfirdn};
use crate::cuda::Precision;
use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensors;
use crate::model::{self, Network};
use crate::tensor::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Image tolerance of the golden READMEs (absolute).
pub const IMG_TOL: f32 = 1e-4;
/// ws tolerance of the golden READMEs (absolute).
pub const WS_TOL: f32 = 1e-5;

/// The image tolerance of a tensor-core mode, in input roundings u of the mode times the reference image's largest
/// magnitude. Each conv layer adds at most about 2u of its sum of |terms| (the emulation tests' per-layer bound,
/// the blurred sum for the up-sampling convs), a 16-bit activation store u of the value, demodulation keeps each
/// layer's sum within a small multiple of its output scale, and independent roundings largely cancel. Measured in
/// the emulation on case A (image scale 2.4), every conv on the tensor cores, ToRGB fused where it can be and
/// 16-bit activations in fp16/bf16: tf32 1.80e-3, fp16 2.08e-3, bf16 1.99e-2, i.e. 1.5-2.1 u times the scale; 8 u
/// leaves a margin of about 4.
pub const IMAGE_ROUNDINGS: f64 = 8.0;

/// The image tolerance of `precision` against `reference`: the READMEs' [`IMG_TOL`] in the exact mode (fp32),
/// [`IMAGE_ROUNDINGS`] u max|reference| in the tensor-core modes.
pub fn image_tolerance(precision: Precision, reference: &Tensor) -> f32 {
    if !precision.uses_tensor_cores() {
        return IMG_TOL;
    }
    let scale = reference.data.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    (IMAGE_ROUNDINGS * precision.unit_roundoff() * scale) as f32
}

/// The outcome of comparing one output with its reference: `|actual - expected| <= max(abs, rel * |expected|)`
/// element-wise, and every value finite.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// The golden case's letter (A, B, C; D for the ops set).
    pub case: String,
    /// The output compared (an ops case's name for D).
    pub output: String,
    pub max_abs_err: f32,
    pub tol_abs: f32,
    pub tol_rel: f32,
    pub passed: bool,
    /// Why it failed beyond the error figure (shape, non-finite values, a count that differs).
    pub problem: Option<String>,
}

impl Check {
    pub fn compare(
        case: &str,
        output: &str,
        actual: &Tensor,
        expected: &Tensor,
        abs: f32,
        rel: f32,
    ) -> Self {
        let mut check = Check {
            case: case.to_string(),
            output: output.to_string(),
            max_abs_err: 0.0,
            tol_abs: abs,
            tol_rel: rel,
            passed: true,
            problem: None,
        };
        if actual.shape != expected.shape {
            check.passed = false;
            check.problem = Some(format!(
                "shape {:?}, expected {:?}",
                actual.shape, expected.shape
            ));
            return check;
        }
        for (&a, &e) in actual.data.iter().zip(&expected.data) {
            let err = (a - e).abs();
            if !a.is_finite() {
                check.passed = false;
                check.problem = Some("non-finite output".to_string());
            }
            if err > abs.max(rel * e.abs()) {
                check.passed = false;
            }
            check.max_abs_err = check.max_abs_err.max(err);
        }
        check
    }

    fn failed(case: &str, output: &str, problem: String) -> Self {
        Check {
            case: case.to_string(),
            output: output.to_string(),
            max_abs_err: f32::NAN,
            tol_abs: 0.0,
            tol_rel: 0.0,
            passed: false,
            problem: Some(problem),
        }
    }
}

/// One implementation of the ops. `supports` names the ops it has; the others' cases are reported as skipped.
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

/// Results of the ops cases: the checks of the cases run, and the names of the cases skipped because the backend
/// does not implement their op.
pub struct OpsReport {
    pub checks: Vec<Check>,
    pub skipped: Vec<String>,
}

fn param<'a>(p: &'a Value, key: &str, case: &str) -> Result<&'a Value> {
    p.get(key)
        .ok_or_else(|| Error::Invalid(format!("ops.json: case {case} has no parameter '{key}'")))
}

fn uint(p: &Value, key: &str, case: &str) -> Result<usize> {
    param(p, key, case)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::Invalid(format!("ops.json: case {case}: '{key}' is not an integer")))
}

fn flag(p: &Value, key: &str, case: &str) -> Result<bool> {
    param(p, key, case)?
        .as_bool()
        .ok_or_else(|| Error::Invalid(format!("ops.json: case {case}: '{key}' is not a bool")))
}

fn float(p: &Value, key: &str, case: &str) -> Result<f32> {
    param(p, key, case)?
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| Error::Invalid(format!("ops.json: case {case}: '{key}' is not a number")))
}

/// Runs every golden `ops` case (`golden/ops/ops.json`) the backend supports.
pub fn ops_cases(golden: &Path, backend: &dyn OpBackend) -> Result<OpsReport> {
    let json_path = golden.join("ops").join("ops.json");
    let text = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e))?;
    let json: Value =
        serde_json::from_slice(&text).map_err(|e| Error::format(&json_path, e.to_string()))?;
    let st = SafeTensors::open(golden.join("ops").join("ops.safetensors"))?;
    let cases = json["cases"]
        .as_array()
        .ok_or_else(|| Error::format(&json_path, "no 'cases' array"))?;
    let mut report = OpsReport {
        checks: Vec::new(),
        skipped: Vec::new(),
    };
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let op = case["op"].as_str().unwrap_or("?");
        if !backend.supports(op) {
            report.skipped.push(name.to_string());
            continue;
        }
        let check = run_op_case(case, name, op, &st, backend)
            .unwrap_or_else(|e| Check::failed("D", name, e.to_string()));
        report.checks.push(check);
    }
    Ok(report)
}

fn run_op_case(
    case: &Value,
    name: &str,
    op: &str,
    st: &SafeTensors,
    backend: &dyn OpBackend,
) -> Result<Check> {
    let p = &case["params"];
    let input = |key: &str| -> Result<Tensor> {
        let tname = case["inputs"][key]
            .as_str()
            .ok_or_else(|| Error::Invalid(format!("ops.json: case {name} has no input '{key}'")))?;
        st.tensor(tname)
    };
    let expected = st.tensor(case["output"].as_str().unwrap_or(""))?;
    // 1e-5 absolute for the O(1) outputs; the undemodulated modconv outputs reach O(40), where float32
    // accumulation order alone moves the last bits, so allow 1e-6 relative (about 8 ulp) on top.
    let (abs, mut rel) = (1e-5, 1e-6);
    let mut clamp_hits = None;
    let actual = match op {
        "upfirdn2d" => {
            let pad: Vec<i32> = param(p, "padding", name)?
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_i64())
                        .map(|v| v as i32)
                        .collect()
                })
                .unwrap_or_default();
            let params = Upfirdn {
                up: uint(p, "up", name)?,
                down: uint(p, "down", name)?,
                pad: pad.try_into().map_err(|_| {
                    Error::Invalid(format!("ops.json: case {name}: padding needs 4 values"))
                })?,
                flip_filter: flag(p, "flip_filter", name)?,
                gain: float(p, "gain", name)?,
            };
            backend.upfirdn2d(&input("x")?, &input("f")?, &params)?
        }
        "bias_act" => {
            let act = match param(p, "act", name)?.as_str() {
                Some("lrelu") => Act::Lrelu {
                    alpha: float(p, "alpha", name)?,
                },
                Some("linear") => Act::Linear,
                other => {
                    return Err(Error::Invalid(format!(
                        "ops.json: case {name}: activation {other:?}"
                    )))
                }
            };
            let clamp = p["clamp"].as_f64().map(|c| c as f32);
            let params = BiasAct {
                dim: uint(p, "dim", name)?,
                act,
                gain: float(p, "gain", name)?,
                clamp,
            };
            let b = input("b")?;
            let y = backend.bias_act(&input("x")?, Some(&b.data), &params)?;
            if let Some(c) = clamp {
                rel = 1e-5;
                let hits = y.data.iter().filter(|v| v.abs() == c).count();
                clamp_hits = Some((hits, uint(p, "n_clamped", name)?));
            }
            y
        }
        "modulated_conv2d" => {
            if uint(p, "down", name)? != 1 {
                return Err(Error::Invalid(format!(
                    "ops.json: case {name}: down-sampling modconv"
                )));
            }
            let params = ModConv {
                up: uint(p, "up", name)?,
                padding: uint(p, "padding", name)?,
                demodulate: flag(p, "demodulate", name)?,
                flip_weight: flag(p, "flip_weight", name)?,
                fused: flag(p, "fused_modconv", name)?,
            };
            let noise = case["inputs"]
                .get("noise")
                .map(|_| input("noise"))
                .transpose()?;
            backend.modulated_conv2d(
                &input("x")?,
                &input("weight")?,
                &input("styles")?,
                noise.as_ref(),
                &input("resample_filter")?,
                &params,
            )?
        }
        "conv2d_resample" => {
            let params = Resample {
                up: uint(p, "up", name)?,
                down: uint(p, "down", name)?,
                padding: uint(p, "padding", name)?,
                groups: uint(p, "groups", name)?,
                flip_weight: flag(p, "flip_weight", name)?,
                flip_filter: flag(p, "flip_filter", name)?,
            };
            backend.conv2d_resample(&input("x")?, &input("w")?, &input("f")?, &params)?
        }
        other => {
            return Err(Error::Invalid(format!(
                "ops.json: case {name}: unknown op '{other}'"
            )))
        }
    };
    let mut check = Check::compare("D", name, &actual, &expected, abs, rel);
    if let Some((hits, expected_hits)) = clamp_hits {
        if hits != expected_hits {
            check.passed = false;
            check.problem = Some(format!(
                "{hits} elements clamped, the reference clamped {expected_hits}"
            ));
        }
    }
    Ok(check)
}

/// Opens a backend for a network (the device under test).
pub type OpenBackend<'a> = dyn Fn(Network) -> Result<Box<dyn Backend>> + 'a;

fn golden_file(golden: &Path, case: &str, file: &str) -> PathBuf {
    golden.join(case).join(file)
}

fn compare_into(
    checks: &mut Vec<Check>,
    case: &str,
    output: &str,
    actual: Result<Tensor>,
    expected: &Tensor,
    tol: f32,
) {
    checks.push(match actual {
        Ok(a) => Check::compare(case, output, &a, expected, tol, 0.0),
        Err(e) => Check::failed(case, output, e.to_string()),
    });
}

/// Generator cases A (NVlabs `model.pkl`), B (its conv_clamp twin) and C (rosinality `ckpt.pt`): mapping and
/// synthesis through the backend `open` gives, against the reference outputs, at the READMEs' tolerances (images
/// at [`image_tolerance`] for the `precision` the backend synthesizes in; the mapping is f32 in every mode).
pub fn generator_cases(
    golden: &Path,
    precision: Precision,
    open: &OpenBackend,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let t = |psi| Truncation { psi, cutoff: None };

    for (case, outputs) in [
        (
            "nvlabs_tiny",
            &[
                ("ws", NoiseMode::Const, "img_const"),
                ("ws", NoiseMode::None, "img_none"),
                ("ws_trunc", NoiseMode::Const, "img_trunc_const"),
                ("ws_mixed", NoiseMode::Const, "img_mixed_const"),
            ][..],
        ),
        (
            "nvlabs_tiny_clamp",
            &[("ws", NoiseMode::Const, "img_const")][..],
        ),
    ] {
        let label = if case == "nvlabs_tiny" { "A" } else { "B" };
        let backend = open(model::load(&golden_file(golden, case, "model.pkl"))?)?;
        let c = SafeTensors::open(golden_file(golden, case, "cases.safetensors"))?;
        let z = c.tensor("z")?;
        let ws_names: &[(f32, &str)] = if case == "nvlabs_tiny" {
            &[(1.0, "ws"), (0.7, "ws_trunc")]
        } else {
            &[(1.0, "ws")]
        };
        for &(psi, name) in ws_names {
            compare_into(
                &mut checks,
                label,
                name,
                backend.map(&z, t(psi)),
                &c.tensor(name)?,
                WS_TOL,
            );
        }
        for &(ws, noise, img) in outputs {
            let out = backend.synthesize(&c.tensor(ws)?, noise);
            let expected = c.tensor(img)?;
            let tol = image_tolerance(precision, &expected);
            compare_into(&mut checks, label, img, out, &expected, tol);
        }
    }

    let backend = open(model::load(&golden_file(
        golden,
        "rosinality_tiny",
        "ckpt.pt",
    ))?)?;
    let c = SafeTensors::open(golden_file(golden, "rosinality_tiny", "cases.safetensors"))?;
    // Without truncation every ws row of a sample is its w.
    let w = backend.map(&c.tensor("z")?, t(1.0)).map(|ws| {
        let (n, num_ws, w_dim) = (ws.shape[0], ws.shape[1], ws.shape[2]);
        let rows = (0..n)
            .flat_map(|i| ws.data[i * num_ws * w_dim..][..w_dim].to_vec())
            .collect();
        Tensor::new(vec![n, w_dim], rows).expect("rows of ws")
    });
    compare_into(&mut checks, "C", "w", w, &c.tensor("w")?, WS_TOL);
    for (ws, img) in [
        ("wplus", "img_fixed_noise"),
        ("latent_mix_inject3", "img_mix_inject3"),
    ] {
        let out = backend.synthesize(&c.tensor(ws)?, NoiseMode::Const);
        let expected = c.tensor(img)?;
        let tol = image_tolerance(precision, &expected);
        compare_into(&mut checks, "C", img, out, &expected, tol);
    }
    Ok(checks)
}

/// The ops on a CUDA device (GPU or emulation): the twins in [`crate::cuda::ops`].
pub struct DeviceOps<D: crate::cuda::device::Device>(pub D);

impl<D: crate::cuda::device::Device> OpBackend for DeviceOps<D> {
    fn name(&self) -> String {
        self.0.describe()
    }
    fn supports(&self, op: &str) -> bool {
        // conv2d_resample (down-sampling, plain convs) is not a generator op: the device has no kernel for it.
        matches!(op, "bias_act" | "upfirdn2d" | "modulated_conv2d")
    }
    fn upfirdn2d(&self, x: &Tensor, f: &Tensor, p: &Upfirdn) -> Result<Tensor> {
        crate::cuda::ops::upfirdn2d(&self.0, x, f, p)
    }
    fn bias_act(&self, x: &Tensor, b: Option<&[f32]>, p: &BiasAct) -> Result<Tensor> {
        crate::cuda::ops::bias_act(&self.0, x, b, p)
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
        crate::cuda::ops::modulated_conv2d(&self.0, x, w, styles, noise, f, p)
    }
    fn conv2d_resample(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _f: &Tensor,
        _p: &Resample,
    ) -> Result<Tensor> {
        Err(Error::Invalid(
            "conv2d_resample: not a device op".to_string(),
        ))
    }
}

//! Every case of the golden `ops` set (NVlabs reference ops) against `mmengine::cpu::ops`.

mod common;

use common::{assert_close, golden};
use mmengine::cpu::ops::{self, Act, BiasAct, ModConv, Resample, Upfirdn};
use mmengine::io::safetensors::SafeTensors;
use mmengine::Tensor;
use serde_json::Value;

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

#[test]
fn golden_ops_all_cases() {
    let json: Value =
        serde_json::from_slice(&std::fs::read(golden("ops", "ops.json")).expect("read ops.json"))
            .expect("ops.json is JSON");
    let st = SafeTensors::open(golden("ops", "ops.safetensors")).expect("open ops.safetensors");
    let cases = json["cases"].as_array().expect("cases array");
    assert_eq!(cases.len(), 40, "the golden ops set should have 40 cases");

    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let op = case["op"].as_str().unwrap();
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
                ops::upfirdn2d(&input("x"), &input("f"), &params).unwrap()
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
                let y = ops::bias_act(&input("x"), Some(&b.data), &params).unwrap();
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
                ops::modulated_conv2d(
                    &input("x"),
                    &input("weight"),
                    &input("styles"),
                    noise.as_ref(),
                    &input("resample_filter"),
                    &params,
                )
                .unwrap()
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
                ops::conv2d_resample(&input("x"), &input("w"), &input("f"), &params).unwrap()
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
        let err = assert_close(name, &actual.data, &expected.data, 1e-5, rel);
        println!("{name:40} max abs error {err:.3e}");
        checked += 1;
    }
    assert_eq!(checked, cases.len(), "every case must be checked");
}

#[test]
fn filter_1331_matches_golden() {
    let st = SafeTensors::open(golden("ops", "ops.safetensors")).unwrap();
    assert_eq!(ops::filter_1331(), st.tensor("filter_1331").unwrap());
}

#[test]
fn bad_shapes_are_errors() {
    let x = Tensor::zeros(vec![1, 4, 8, 8]);
    let f = ops::filter_1331();
    assert!(ops::upfirdn2d(&Tensor::zeros(vec![4, 8, 8]), &f, &Upfirdn::default()).is_err());
    let tiny = Upfirdn {
        pad: [-4, -4, 0, 0],
        ..Upfirdn::default()
    };
    assert!(ops::upfirdn2d(&x, &f, &tiny).is_err());
    assert!(ops::bias_act(&x, Some(&[0.0; 3]), &BiasAct::new(Act::LRELU)).is_err());
    let w = Tensor::zeros(vec![6, 3, 3, 3]);
    assert!(ops::conv2d(&x, &w, &ops::Conv::default()).is_err());
    let styles = Tensor::zeros(vec![1, 4]);
    let params = ModConv {
        up: 1,
        padding: 1,
        demodulate: true,
        flip_weight: true,
        fused: true,
    };
    assert!(ops::modulated_conv2d(&x, &w, &styles, None, &f, &params).is_err());
    let w4 = Tensor::zeros(vec![6, 4, 3, 3]);
    let wrong_noise = Tensor::zeros(vec![7, 8]);
    assert!(ops::modulated_conv2d(&x, &w4, &styles, Some(&wrong_noise), &f, &params).is_err());
}

//! Every case of the golden `ops` set (NVlabs reference ops) against `mmengine::cpu::ops`.

mod common;

use common::golden;
use common::ops_cases::check_all_cases;
use mmengine::cpu::ops::{self, Act, BiasAct, ModConv, Upfirdn};
use mmengine::io::safetensors::SafeTensors;
use mmengine::selftest::CpuOps;
use mmengine::Tensor;

#[test]
fn golden_ops_all_cases() {
    assert_eq!(
        check_all_cases(&CpuOps),
        40,
        "the CPU reference implements every op"
    );
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

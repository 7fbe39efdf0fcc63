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

//! Per-layer timing of the device synthesis against a roofline: what each layer's kernels must compute and move
//! (the cost model of BENCHMARKS.md), the peak rates of the GPUs the project is measured on, and the bound they
//! give.

use super::gemm::Precision;
use crate::backend::LayerProfile;
use crate::model::{LayerKind, SynthesisLayer};

/// The FLOPs and device-memory bytes of one synthesis layer for `n` images, as an ideal kernel does it: every
/// multiply-add counted twice (the up-sampling conv at its input resolution, without the blur), each activation
/// read once and written once in `activation_bytes` per element; weights and noise planes, shared by the batch,
/// are not counted. A ToRGB writes the f32 image and reads the previous block's half-size image (`skip`); it
/// reads its input only when it runs on its own (not `fused`, computed in the epilogue of the conv before it).
pub fn layer_cost(
    layer: &SynthesisLayer,
    n: usize,
    activation_bytes: usize,
    fused: bool,
    skip: bool,
) -> (f64, f64) {
    let (i, o, k) = (layer.in_channels, layer.out_channels, layer.kernel);
    let res = layer.resolution;
    let res_in = res / layer.up;
    let n = n as f64;
    let flop = 2.0 * n * (i * o * k * k * res_in * res_in) as f64;
    let bytes = match layer.kind {
        LayerKind::Conv => {
            n * (i * res_in * res_in * activation_bytes) as f64
                + conv_output_bytes(layer, n as usize, activation_bytes)
        }
        LayerKind::ToRgb => {
            let input = if fused {
                0
            } else {
                i * res * res * activation_bytes
            };
            let previous = if skip {
                o * (res / 2) * (res / 2) * 4
            } else {
                0
            };
            n * (input + o * res * res * 4 + previous) as f64
        }
    };
    (flop, bytes)
}

/// The bytes a conv layer's output takes for `n` images: part of its [`layer_cost`], and what the last block's
/// conv does not write when its ToRGB is fused (nothing else reads it).
pub fn conv_output_bytes(layer: &SynthesisLayer, n: usize, activation_bytes: usize) -> f64 {
    (n * layer.out_channels * layer.resolution * layer.resolution * activation_bytes) as f64
}

/// A GPU's dense peak arithmetic rate in a precision and its memory bandwidth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    pub flop_per_s: f64,
    pub bytes_per_s: f64,
}

/// The published dense peaks of the GPUs this project is measured on, from the device name the driver reports
/// (`NVIDIA H100 80GB HBM3`, `NVIDIA H100 PCIe`, `NVIDIA H200`); `None` for other devices.
pub fn peaks(device_name: &str, precision: Precision) -> Option<Peaks> {
    // [fp32, tf32, fp16 and bf16] TFLOP/s (dense), then TB/s.
    let (tflops, tbytes) = if device_name.contains("H200") {
        ([67.0, 494.7, 989.4], 4.8)
    } else if device_name.contains("H100 PCIe") {
        ([51.2, 378.0, 756.0], 2.0)
    } else if device_name.contains("H100") && !device_name.contains("NVL") {
        ([67.0, 494.7, 989.4], 3.35)
    } else {
        return None;
    };
    let tflop = match precision {
        Precision::Fp32 => tflops[0],
        Precision::Tf32 => tflops[1],
        Precision::Fp16 | Precision::Bf16 => tflops[2],
    };
    Some(Peaks {
        flop_per_s: tflop * 1e12,
        bytes_per_s: tbytes * 1e12,
    })
}

/// The least time `row`'s work can take at `peaks`: its FLOPs at the arithmetic peak or its bytes at the
/// bandwidth, whichever is longer.
pub fn bound_seconds(row: &LayerProfile, peaks: Peaks) -> f64 {
    (row.flop / peaks.flop_per_s).max(row.bytes / peaks.bytes_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn layer(
        kind: LayerKind,
        i: usize,
        o: usize,
        k: usize,
        up: usize,
        res: usize,
    ) -> SynthesisLayer {
        SynthesisLayer {
            name: "layer".to_string(),
            kind,
            ws_index: 0,
            in_channels: i,
            out_channels: o,
            resolution: res,
            up,
            kernel: k,
            demodulate: kind == LayerKind::Conv,
            weight_gain: 1.0,
            clamp: None,
            fp16: false,
            weight: Tensor::zeros(vec![0]),
            affine_weight: Tensor::zeros(vec![0]),
            affine_bias: Vec::new(),
            bias: Vec::new(),
            noise: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs()
    }

    /// The 1024 px block of config-f, as BENCHMARKS.md's roofline table counts it.
    #[test]
    fn costs_of_the_1024_px_block() {
        let up = layer(LayerKind::Conv, 64, 32, 3, 2, 1024);
        let (flop, bytes) = layer_cost(&up, 1, 4, false, false);
        assert!(
            close(flop, 2.0 * 64.0 * 32.0 * 9.0 * 512.0 * 512.0),
            "{flop}"
        );
        assert!(
            close(bytes, (64.0 * 512.0 * 512.0 + 32.0 * 1024.0 * 1024.0) * 4.0),
            "{bytes}"
        );
        // 16-bit activations halve the bytes; a batch multiplies both.
        let (flop8, bytes8) = layer_cost(&up, 8, 2, false, false);
        assert!(close(flop8, 8.0 * flop) && close(bytes8, 4.0 * bytes));

        let conv = layer(LayerKind::Conv, 32, 32, 3, 1, 1024);
        let (flop, bytes) = layer_cost(&conv, 1, 4, false, false);
        assert!(
            close(flop, 2.0 * 32.0 * 32.0 * 9.0 * 1024.0 * 1024.0),
            "{flop}"
        );
        assert!(close(bytes, 2.0 * 32.0 * 1024.0 * 1024.0 * 4.0), "{bytes}");

        let torgb = layer(LayerKind::ToRgb, 32, 3, 1, 1, 1024);
        let image = 3.0 * 1024.0 * 1024.0 * 4.0;
        let (flop, fused) = layer_cost(&torgb, 1, 2, true, true);
        assert!(close(flop, 2.0 * 32.0 * 3.0 * 1024.0 * 1024.0), "{flop}");
        assert!(close(fused, image + image / 4.0), "{fused}");
        let (_, alone) = layer_cost(&torgb, 1, 2, false, true);
        assert!(
            close(alone - fused, 32.0 * 1024.0 * 1024.0 * 2.0),
            "{alone}"
        );
        let (_, first) = layer_cost(&torgb, 1, 2, true, false);
        assert!(close(first, image), "{first}");
    }

    #[test]
    fn peaks_of_the_measured_gpus_and_none_for_others() {
        let sxm = peaks("NVIDIA H100 80GB HBM3", Precision::Fp16).unwrap();
        assert_eq!((sxm.flop_per_s, sxm.bytes_per_s), (989.4e12, 3.35e12));
        assert_eq!(
            peaks("NVIDIA H100 80GB HBM3", Precision::Fp32)
                .unwrap()
                .flop_per_s,
            67e12
        );
        assert_eq!(
            peaks("NVIDIA H100 PCIe", Precision::Tf32)
                .unwrap()
                .flop_per_s,
            378e12
        );
        let h200 = peaks(
            "cuda:0 NVIDIA H200 (kernels: embedded fatbin)",
            Precision::Bf16,
        )
        .unwrap();
        assert_eq!((h200.flop_per_s, h200.bytes_per_s), (989.4e12, 4.8e12));
        assert!(peaks("NVIDIA H100 NVL", Precision::Fp16).is_none());
        assert!(peaks("NVIDIA A100-SXM4-80GB", Precision::Fp16).is_none());
        assert!(peaks("host emulation of the CUDA kernels", Precision::Fp32).is_none());
    }

    /// Compute-bound rows take their FLOPs at the peak, memory-bound ones their bytes at the bandwidth.
    #[test]
    fn the_bound_is_the_slower_of_the_two() {
        let p = Peaks {
            flop_per_s: 100.0,
            bytes_per_s: 10.0,
        };
        let row = |flop, bytes| LayerProfile {
            name: String::new(),
            images: 1,
            seconds: 1.0,
            flop,
            bytes,
        };
        assert_eq!(bound_seconds(&row(1000.0, 5.0), p), 10.0);
        assert_eq!(bound_seconds(&row(10.0, 50.0), p), 5.0);
    }
}

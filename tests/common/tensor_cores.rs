//! The tensor-core instruction wrappers of `kernels/mma.cuh` (probe kernels) against the PTX ISA's fragment tables
//! and cvt's rounding, and the GEMM kernels built on them against f64 products: generic over the device, so the
//! emulation's host twins (tests/emu.rs) and a real GPU's instructions (tests/gpu.rs) meet the same checks.

use super::Rng;
use half::{bf16, f16};
use mmengine::cuda::device::{Device, LaunchDims};
use mmengine::cuda::gemm::{self, Precision};
use mmengine::cuda::kernels::Kernel;
use mmengine::cuda::params::{
    LdmatrixProbeParams, MmaConvertProbeParams, MmaProbeParams, WgmmaProbeParams,
    WGMMA_PROBE_SHARED_BYTES,
};

/// f32's unit roundoff doubled: a bound on one f32 rounding of any kind, truncation included.
const F32_ROUNDING: f64 = 1.0 / (1u64 << 23) as f64;

fn upload<D: Device>(dev: &D, words: &[u32]) -> D::Buffer {
    let mut buf = dev.alloc(words.len() * 4).unwrap();
    dev.upload(bytemuck::cast_slice(words), &mut buf).unwrap();
    buf
}

fn download<D: Device>(dev: &D, buf: &D::Buffer, len: usize) -> Vec<u32> {
    let mut words = vec![0u32; len];
    dev.download(buf, bytemuck::cast_slice_mut(&mut words))
        .unwrap();
    words
}

fn one_warp() -> LaunchDims {
    LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
    }
}

/// Round to tf32 as cvt.rna.tf32.f32 does: to the nearest multiple of 2^(exponent - 10), ties away from zero.
fn tf32_rna(x: f32) -> f32 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let exponent = ((x.to_bits() >> 23) & 0xff).max(1) as i32 - 127;
    let ulp = 2f64.powi(exponent - 10);
    let magnitude = ((x.abs() as f64 / ulp) + 0.5).floor() * ulp;
    (magnitude as f32).copysign(x)
}

/// An mma input type, with its fragment layout as the PTX ISA tables give it.
#[derive(Clone, Copy, Debug)]
enum Input {
    Tf32,
    F16,
    Bf16,
}

impl Input {
    fn k(self) -> usize {
        match self {
            Input::Tf32 => 8,
            Input::F16 | Input::Bf16 => 16,
        }
    }

    fn probe(self) -> Kernel {
        match self {
            Input::Tf32 => Kernel::MmaProbeTf32,
            Input::F16 => Kernel::MmaProbeF16,
            Input::Bf16 => Kernel::MmaProbeBf16,
        }
    }

    /// A value of the type, as f32.
    fn round(self, x: f32) -> f32 {
        match self {
            Input::Tf32 => tf32_rna(x),
            Input::F16 => f16::from_f32(x).to_f32(),
            Input::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// The 16-bit encoding of a packed element.
    fn bits16(self, x: f32) -> u32 {
        match self {
            Input::F16 => f16::from_f32(x).to_bits() as u32,
            Input::Bf16 => bf16::from_f32(x).to_bits() as u32,
            Input::Tf32 => unreachable!("tf32 is not packed"),
        }
    }

    /// Lane `lane`'s A registers for a 16 x k matrix (PTX ISA, "Matrix Fragments for mma.m16n8k8" and
    /// "... for mma.m16n8k16 with floating point type").
    fn a_registers(self, a: &[Vec<f32>], lane: usize) -> [u32; 4] {
        let (group, tig) = (lane >> 2, lane % 4);
        match self {
            // row = groupID for a0 and a2, groupID + 8 for a1 and a3;
            // col = threadID_in_group for a0 and a1, threadID_in_group + 4 for a2 and a3.
            Input::Tf32 => [
                a[group][tig],
                a[group + 8][tig],
                a[group][tig + 4],
                a[group + 8][tig + 4],
            ]
            .map(f32::to_bits),
            // a0..a7, two per .f16x2 register, low to high: row = groupID for ai with i in {0, 1, 4, 5},
            // groupID + 8 otherwise; col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
            Input::F16 | Input::Bf16 => {
                let element = |i: usize| {
                    let row = if matches!(i, 0 | 1 | 4 | 5) {
                        group
                    } else {
                        group + 8
                    };
                    let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
                    self.bits16(a[row][col])
                };
                [0, 1, 2, 3].map(|r| element(2 * r) | element(2 * r + 1) << 16)
            }
        }
    }

    /// Lane `lane`'s B registers for a k x 8 matrix.
    fn b_registers(self, b: &[Vec<f32>], lane: usize) -> [u32; 2] {
        let (group, tig) = (lane >> 2, lane % 4);
        match self {
            // row = threadID_in_group for b0, threadID_in_group + 4 for b1; col = groupID.
            Input::Tf32 => [b[tig][group], b[tig + 4][group]].map(f32::to_bits),
            // b0..b3, two per register: row = threadID_in_group * 2 + (i & 1), plus 8 for i >= 2; col = groupID.
            Input::F16 | Input::Bf16 => {
                let element = |i: usize| {
                    let row = tig * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
                    self.bits16(b[row][group])
                };
                [0, 1].map(|r| element(2 * r) | element(2 * r + 1) << 16)
            }
        }
    }
}

/// The element of C (and D) in lane `lane`'s register `i`: row = groupID for c0 and c1, groupID + 8 for c2
/// and c3; col = threadID_in_group * 2 + (i & 1).
fn c_position(lane: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (lane >> 2, lane % 4);
    (if i < 2 { group } else { group + 8 }, tig * 2 + (i & 1))
}

/// Runs one probe launch: every lane's D registers.
fn run_probe<D: Device>(dev: &D, input: Input, a: &[u32], b: &[u32], c: &[f32]) -> Vec<f32> {
    let (a_buf, b_buf) = (upload(dev, a), upload(dev, b));
    let c_buf = upload(dev, &c.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    let d_buf = dev.alloc(32 * 4 * 4).unwrap();
    let params = MmaProbeParams {
        d: dev.address(&d_buf),
        a: dev.address(&a_buf),
        b: dev.address(&b_buf),
        c: dev.address(&c_buf),
    };
    dev.launch(input.probe(), one_warp(), &params).unwrap();
    download(dev, &d_buf, 32 * 4)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

/// Each wrapper's twin on random, non-symmetric A, B and C laid out by the PTX tables: every lane must get
/// D = A B + C at its own positions. A wrong row, column, register or half anywhere moves O(1) values around,
/// far outside the f32 summation bound; the test shows that by swapping two A registers.
pub fn mma_follows_the_ptx_fragment_layouts<D: Device>(dev: &D) {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for input in [Input::Tf32, Input::F16, Input::Bf16] {
        let k = input.k();
        let mut matrix = |rows: usize, cols: usize| -> Vec<Vec<f32>> {
            (0..rows)
                .map(|_| (0..cols).map(|_| input.round(rng.next())).collect())
                .collect()
        };
        let (a, b) = (matrix(16, k), matrix(k, 8));
        let c: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..8).map(|_| rng.next()).collect())
            .collect();
        let a_regs: Vec<u32> = (0..32).flat_map(|l| input.a_registers(&a, l)).collect();
        let b_regs: Vec<u32> = (0..32).flat_map(|l| input.b_registers(&b, l)).collect();
        let c_regs: Vec<f32> = (0..32)
            .flat_map(|l| (0..4).map(move |i| c_position(l, i)))
            .map(|(row, col)| c[row][col])
            .collect();

        // The largest error relative to the bound of a k + 1 term f32 sum.
        let worst = |d: &[f32]| -> f64 {
            let mut worst = 0f64;
            for lane in 0..32 {
                for i in 0..4 {
                    let (row, col) = c_position(lane, i);
                    let terms = (0..k).map(|kk| a[row][kk] as f64 * b[kk][col] as f64);
                    let exact = c[row][col] as f64 + terms.clone().sum::<f64>();
                    let bound = k as f64
                        * F32_ROUNDING
                        * (c[row][col].abs() as f64 + terms.map(f64::abs).sum::<f64>());
                    let err = (d[lane * 4 + i] as f64 - exact).abs();
                    assert!(d[lane * 4 + i].is_finite());
                    worst = worst.max(err / bound);
                }
            }
            worst
        };
        let d = run_probe(dev, input, &a_regs, &b_regs, &c_regs);
        let ratio = worst(&d);
        eprintln!("mma {input:?}: largest error {ratio:.3} of the f32 summation bound");
        assert!(ratio <= 1.0, "{input:?}: D off by {ratio} x the bound");

        let mut swapped = a_regs.clone();
        for lane in swapped.chunks_mut(4) {
            lane.swap(1, 2);
        }
        let ratio = worst(&run_probe(dev, input, &swapped, &b_regs, &c_regs));
        assert!(
            ratio > 100.0,
            "{input:?}: swapping a1 and a2 went unnoticed"
        );
    }
}

/// ldmatrix.x4 and .x2 by the PTX ISA ("Warp-level matrix load instruction: ldmatrix"): lane l names row l % 8 of
/// matrix l / 8 (.x2: lanes 0-15 only), and receives in register j the 32-bit word l % 4 of row l / 4 of matrix j.
/// The rows live in shared memory in a shuffled order, so a lane that read its own row, or a row of the wrong
/// matrix, gets another value.
pub fn ldmatrix_follows_the_ptx_layout<D: Device>(dev: &D) {
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let rows: Vec<u32> = (0..32 * 4).map(|_| rng.next().to_bits()).collect();
    // A permutation of the 32 shared-memory rows: row_of_lane[l] is where lane l's row is.
    let mut row_of_lane: Vec<i32> = (0..32).collect();
    for i in (1..32).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        row_of_lane.swap(i, j);
    }
    assert_ne!(row_of_lane, (0..32).collect::<Vec<_>>());
    let rows_buf = upload(dev, &rows);
    let lanes_buf = upload(
        dev,
        &row_of_lane.iter().map(|&r| r as u32).collect::<Vec<_>>(),
    );
    let out_buf = dev.alloc(32 * 4 * 4).unwrap();
    let out_x2_buf = dev.alloc(32 * 2 * 4).unwrap();
    let params = LdmatrixProbeParams {
        out: dev.address(&out_buf),
        out_x2: dev.address(&out_x2_buf),
        rows: dev.address(&rows_buf),
        row_of_lane: dev.address(&lanes_buf),
    };
    dev.launch(Kernel::LdmatrixProbe, one_warp(), &params)
        .unwrap();
    let out = download(dev, &out_buf, 32 * 4);
    let out_x2 = download(dev, &out_x2_buf, 32 * 2);
    for lane in 0..32 {
        for j in 0..4 {
            let expected = rows[row_of_lane[8 * j + lane / 4] as usize * 4 + lane % 4];
            assert_eq!(out[lane * 4 + j], expected, "x4: lane {lane}, register {j}");
            if j < 2 {
                assert_eq!(
                    out_x2[lane * 2 + j],
                    expected,
                    "x2: lane {lane}, register {j}"
                );
            }
        }
    }
}

/// wgmma.mma_async m64n128k16 (f16, both operands in shared memory, no swizzle, K-major) by kernels/wgmma.cuh's
/// reading of the PTX ISA: element (r, k) of an operand at byte (r / 8) SBO + (k / 8) LBO + (r % 8) 16 + (k % 8) 2
/// from the descriptor's start, and D = C + A B in the accumulator layout (warp w: rows 16 w ..; d[4 j + i] at row
/// groupID + 8 (i >> 1), column 8 j + 2 tig + (i & 1)). Two layouts with different strides and gaps between core
/// matrices, so a swapped LBO and SBO, or a wrong accumulator position, reads or writes other elements.
pub fn wgmma_follows_the_ptx_layout<D: Device>(dev: &D) {
    let mut rng = Rng(0x5eed_cafe_f00d_0003);
    let mut half =
        |n: usize| -> Vec<f16> { (0..n).map(|_| f16::from_f32(rng.next() * 2.0)).collect() };
    let a = half(64 * 16);
    let b = half(128 * 16);
    let c: Vec<f32> = (0..64 * 128).map(|_| rng.next()).collect();
    let to_words = |h: &[f16]| -> Vec<u32> {
        h.chunks(2)
            .map(|p| p[0].to_bits() as u32 | (p[1].to_bits() as u32) << 16)
            .collect()
    };
    let (a_buf, b_buf) = (upload(dev, &to_words(&a)), upload(dev, &to_words(&b)));
    let c_buf = upload(dev, &c.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let d_buf = dev.alloc(64 * 128 * 4).unwrap();
    // (A offset, LBO, SBO, B offset, LBO, SBO) in bytes: the modconv kernel's kind of layout (core matrices of
    // one K group contiguous along M or N), then K groups adjacent with padded rows between core matrices.
    let layouts = [
        (0, 128, 256, 4096, 2048, 128),
        (48, 1168, 144, 6016, 4096, 256),
    ];
    for (a_offset, a_lbo, a_sbo, b_offset, b_lbo, b_sbo) in layouts {
        let a_end = a_offset + 7 * a_sbo + a_lbo + 128;
        assert!(
            a_end <= b_offset && b_offset + 15 * b_sbo + b_lbo + 128 <= WGMMA_PROBE_SHARED_BYTES
        );
        let params = WgmmaProbeParams {
            d: dev.address(&d_buf),
            c: dev.address(&c_buf),
            a: dev.address(&a_buf),
            b: dev.address(&b_buf),
            a_offset,
            a_lbo,
            a_sbo,
            b_offset,
            b_lbo,
            b_sbo,
        };
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
        };
        dev.launch(Kernel::WgmmaProbe, dims, &params).unwrap();
        let d = download(dev, &d_buf, 64 * 128);
        let mut worst = 0f64;
        for r in 0..64 {
            for n in 0..128 {
                let (mut exact, mut magnitude) =
                    (c[r * 128 + n] as f64, c[r * 128 + n].abs() as f64);
                for k in 0..16 {
                    let p = a[r * 16 + k].to_f64() * b[n * 16 + k].to_f64();
                    exact += p;
                    magnitude += p.abs();
                }
                // 16 products (exact in f32) and C in some order: at most 17 f32 roundings of partial sums.
                let bound = 17.0 * F32_ROUNDING * magnitude;
                let got = f32::from_bits(d[r * 128 + n]) as f64;
                let ratio = (got - exact).abs() / bound.max(f64::MIN_POSITIVE);
                assert!(
                    ratio <= 1.0,
                    "layout {a_offset}/{a_lbo}/{a_sbo}: D[{r}][{n}] = {got}, expected {exact} (bound {bound:e})"
                );
                worst = worst.max(ratio);
            }
        }
        eprintln!(
            "wgmma layout {a_offset}/{a_lbo}/{a_sbo} {b_offset}/{b_lbo}/{b_sbo}: largest error {worst:.3} of the \
             f32 summation bound"
        );
    }
}

/// float -> tf32 / f16x2 / bf16x2 register conversions: rounding (ties included), subnormals, overflow,
/// infinities and NaN, and which half of a packed register each value lands in.
pub fn register_conversions_round_like_cvt<D: Device>(dev: &D) {
    let mut x: Vec<f32> = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,                       // f32 subnormal
        6e-8,                        // f16 subnormal
        2.98e-8,                     // below half the smallest f16 subnormal: 0
        65504.0,                     // f16 max
        65519.0,                     // rounds down to the f16 max
        65520.0,                     // rounds up to infinity in f16
        -65520.0,                    //
        f32::from_bits(0x3f80_1000), // 1 + 2^-11: a tf32 and f16 tie (tf32 away, f16 to even: 1)
        f32::from_bits(0xbf80_1000), // its negative
        f32::from_bits(0x3f80_8000), // a bf16 tie, to even: 1
        f32::from_bits(0x3f81_8000), // a bf16 tie, to even: up
        f32::from_bits(0x7f7f_f000), // tf32 tie above its max: infinity
        f32::from_bits(0x7f7f_efff), // just below: the tf32 max
    ]
    .to_vec();
    let mut rng = Rng(0x0dd_ba11);
    x.extend((0..2000).map(|_| f32::from_bits((rng.next_u64() >> 32) as u32)));
    x.extend((0..2000).map(|_| rng.next() * 1e3));
    assert_eq!(x.len() % 2, 0);
    let n = x.len();

    let x_buf = upload(dev, &x.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let tf32_buf = dev.alloc(n * 4).unwrap();
    let half2_buf = dev.alloc(n * 2).unwrap();
    let bfloat162_buf = dev.alloc(n * 2).unwrap();
    let params = MmaConvertProbeParams {
        tf32: dev.address(&tf32_buf),
        half2: dev.address(&half2_buf),
        bfloat162: dev.address(&bfloat162_buf),
        x: dev.address(&x_buf),
        n: n as i64,
    };
    dev.launch(
        Kernel::MmaConvertProbe,
        LaunchDims::linear(n / 2, 256, 64),
        &params,
    )
    .unwrap();
    let tf32 = download(dev, &tf32_buf, n);
    let half2 = download(dev, &half2_buf, n / 2);
    let bfloat162 = download(dev, &bfloat162_buf, n / 2);

    // For a NaN input cvt gives some NaN; its payload is not part of the contract.
    for (i, &v) in x.iter().enumerate() {
        let want = tf32_rna(v);
        let got = f32::from_bits(tf32[i]);
        assert!(
            if v.is_nan() {
                got.is_nan()
            } else {
                tf32[i] == want.to_bits()
            },
            "tf32 of {v:e} ({:#010x}): got {got:e} ({:#010x}), want {want:e}",
            v.to_bits(),
            tf32[i]
        );
        assert!(
            v.is_nan() || tf32[i] & 0x1fff == 0,
            "tf32 of {v:e} keeps low mantissa bits"
        );
        let half = 16 * (i % 2) as u32;
        // The 16-bit encodings of the packed registers: equal, or for a NaN input any NaN (its exponent all ones
        // and a non-zero mantissa, as `nan_mantissa` masks it).
        let check16 = |name: &str, packed: &[u32], want: u16, nan_mantissa: u32| {
            let got = (packed[i / 2] >> half) & 0xffff;
            let exponent = 0x7fff & !nan_mantissa;
            let ok = if v.is_nan() {
                got & exponent == exponent && got & nan_mantissa != 0
            } else {
                got == want as u32
            };
            assert!(
                ok,
                "{name} of {v:e} (element {i}): got {got:#06x}, want {want:#06x}"
            );
        };
        check16("f16", &half2, f16::from_f32(v).to_bits(), 0x03ff);
        check16("bf16", &bfloat162, bf16::from_f32(v).to_bits(), 0x007f);
    }
}

/// The largest |a_ik b_kj| sum and the product, both in f64, of `a` and `b` after `round`.
fn f64_product(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    round: impl Fn(f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let (a, b): (Vec<f64>, Vec<f64>) = (
        a.iter().map(|&v| round(v) as f64).collect(),
        b.iter().map(|&v| round(v) as f64).collect(),
    );
    let mut product = vec![0f64; m * n];
    let mut abs_product = vec![0f64; m * n];
    for i in 0..m {
        for kk in 0..k {
            for j in 0..n {
                product[i * n + j] += a[i * k + kk] * b[kk * n + j];
                abs_product[i * n + j] += (a[i * k + kk] * b[kk * n + j]).abs();
            }
        }
    }
    (product, abs_product)
}

/// The GEMM kernel in every precision, on sizes that leave partial tiles in M, N and K (and an odd K, which
/// splits an f16/bf16 pair at the edge), against two f64 references, elementwise, with S_ij = sum_k |a_ik
/// b_kj|:
/// - the product of the inputs rounded to the mode's type, within the bound of a K term f32 sum,
///   K * 2^-23 * S_ij (products of tf32, f16 and bf16 values are exact in f32);
/// - the exact product of the f32 inputs, within (2u + u^2 + K * 2^-23 (1 + u)^2) * S_ij, where u is the
///   input rounding's relative error: 2^-11 for tf32 and f16 (10 stored mantissa bits), 2^-8 for bf16, 0 for
///   fp32. For unit-scale data that is about 1e-3 of S for tf32 and fp16 and 8e-3 for bf16.
pub fn gemm_precisions_against_f64_products<D: Device>(dev: &D) {
    let mut rng = Rng(0x6e33_0001);
    for (m, n, k) in [(70, 75, 83), (5, 9, 7), (33, 130, 300)] {
        let a = rng.tensor(vec![m, k]);
        let b = rng.tensor(vec![k, n]);
        let (exact, abs_exact) = f64_product(&a.data, &b.data, (m, n, k), |v| v);
        for precision in Precision::ALL {
            let (u, round): (f64, fn(f32) -> f32) = match precision {
                Precision::Fp32 => (0.0, |v| v),
                Precision::Tf32 => (2f64.powi(-11), tf32_rna),
                Precision::Fp16 => (2f64.powi(-11), |v| f16::from_f32(v).to_f32()),
                Precision::Bf16 => (2f64.powi(-8), |v| bf16::from_f32(v).to_f32()),
            };
            let c = gemm::matmul(dev, &a, &b, precision).unwrap();
            assert_eq!(c.shape, vec![m, n]);
            let (rounded, abs_rounded) = f64_product(&a.data, &b.data, (m, n, k), round);
            let summation = k as f64 * F32_ROUNDING;
            let (mut worst_rounded, mut worst_exact) = (0f64, 0f64);
            for i in 0..m * n {
                let got = c.data[i] as f64;
                assert!(
                    c.data[i].is_finite(),
                    "{precision} {m}x{n}x{k}: element {i} is {got}"
                );
                let err = (got - rounded[i]).abs();
                assert!(
                    err <= summation * abs_rounded[i],
                    "{precision} {m}x{n}x{k}: element {i}: {got} vs rounded-input product {} (error {err:e})",
                    rounded[i]
                );
                worst_rounded = worst_rounded.max(err / abs_rounded[i]);
                let err = (got - exact[i]).abs();
                let bound = 2.0 * u + u * u + summation * (1.0 + u) * (1.0 + u);
                assert!(
                    err <= bound * abs_exact[i],
                    "{precision} {m}x{n}x{k}: element {i}: {got} vs exact product {} (error {err:e})",
                    exact[i]
                );
                worst_exact = worst_exact.max(err / abs_exact[i]);
            }
            eprintln!(
                "gemm {precision} {m}x{n}x{k}: max error / S: {worst_rounded:.2e} against the rounded-input \
                 product, {worst_exact:.2e} against the exact product"
            );
        }
    }
}

//! Calibration for the conv benchmarks on a shared machine: the FMA peak of 1 and 2 threads right now, the packed
//! microkernel in cache, and (with any argument) the `gemm` crate alone on conv-shaped products.
use gemm::Parallelism;
use std::time::Instant;

fn run(m: usize, n: usize, k: usize, par: Parallelism, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut go = || unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            m as isize,
            1,
            false,
            a.as_ptr(),
            m as isize,
            1,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    go();
    let t = Instant::now();
    for _ in 0..reps {
        go();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * n * k) as f64 / s / 1e9
}

fn main() {
    peak();
    packed();
    if std::env::args().nth(1).is_none() {
        return;
    }
    for &(m, n, k) in &[
        (512, 64, 576),
        (4096, 64, 576),
        (512, 512, 4608),
        (2048, 512, 4608),
        (1024, 256, 2304),
        (4096, 128, 1152),
        (1024, 4608, 512),
    ] {
        let p = run(m, n, k, Parallelism::Rayon(0), 5);
        let s = run(m, n, k, Parallelism::None, 5);
        println!("m {m:5} n {n:4} k {k:4}: 2 thr {p:6.1}  1 thr {s:6.1} GFLOP/s");
    }
}

/// FMA peak of one thread: 12 independent accumulators.
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999);
    let b = _mm256_set1_ps(0.001);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = 0.0;
    for x in acc {
        let mut v = [0.0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), x);
        s += v.iter().sum::<f32>();
    }
    s
}

pub fn peak() {
    use rayon::prelude::*;
    let iters = 50_000_000;
    for threads in [1, 2] {
        let t = Instant::now();
        (0..threads).into_par_iter().for_each(|_| {
            std::hint::black_box(unsafe { peak_loop(iters) });
        });
        let s = t.elapsed().as_secs_f64();
        println!(
            "FMA peak {threads} thr: {:6.1} GFLOP/s",
            (threads * iters * 12 * 16) as f64 / s / 1e9
        );
    }
}

pub fn packed() {
    use mmengine::cpu::microkernel::{gemm_packed, MR, NR};
    let (kc, blocks, panels) = (256, 43, 8);
    let a = vec![0.5f32; blocks * kc * MR];
    let b = vec![0.25f32; panels * kc * NR];
    let mut c = vec![0.0f32; blocks * MR * panels * NR];
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        gemm_packed(kc, &a, kc * MR, blocks, &b, panels, &mut c, panels * NR);
    }
    let s = t.elapsed().as_secs_f64();
    let flops = 2.0 * (kc * blocks * MR * panels * NR * reps) as f64;
    println!(
        "packed microkernel 1 thr (in cache): {:6.1} GFLOP/s",
        flops / s / 1e9
    );
}

//! Times the fast modulated 3x3 convolution (weights packed beforehand, as the generator does) on the
//! generator-shaped layers and reports GFLOP/s of direct-convolution work (2 N H W O I 9 / time; the Winograd
//! up = 1 layers do 4/9 of those multiply-adds, so they can exceed the FMA peak). Run with
//! `cargo run --release --example bench_conv`; set `RAYON_NUM_THREADS` to pick the thread count.

use mmengine::cpu::conv::{ModConvLayer, NoiseInput};
use mmengine::cpu::ops::Act;
use mmengine::model::Noise;
use mmengine::Tensor;
use std::time::Instant;

fn filled(shape: Vec<usize>, seed: u32) -> Tensor {
    let numel: usize = shape.iter().product();
    let data = (0..numel)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1 << 24) as f32
                - 0.5
        })
        .collect();
    Tensor::new(shape, data).unwrap()
}

fn bench(n: usize, c: usize, o: usize, res: usize, up: usize, reps: usize) {
    let x = filled(vec![n, c, res, res], 1);
    let styles = filled(vec![n, c], 2);
    let weight = filled(vec![o, c, 3, 3], 3);
    let bias = vec![0.1; o];
    let noise = Noise {
        buffer: filled(vec![res * up, res * up], 4),
        strength: 0.1,
    };
    let layer = ModConvLayer {
        weight: &weight,
        weight_gain: 1.0 / ((c * 9) as f32).sqrt(),
        demodulate: true,
        up,
        noise: Some(NoiseInput::Shared(&noise)),
        bias: &bias,
        act: Act::LRELU,
        act_gain: std::f32::consts::SQRT_2,
        clamp: Some(256.0),
    };
    // Packed once, as the generator does per network.
    let packed = layer.pack().unwrap();
    layer.forward_packed(&packed, &x, &styles).unwrap(); // warm-up
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(layer.forward_packed(&packed, &x, &styles).unwrap());
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    // Up-sampling layers count their transposed conv at input resolution, like the design notes.
    let flops = 2.0 * (n * res * res * c * o * 9) as f64;
    println!(
        "3x3 up={up} {c:3}->{o:3} ch {res:4}x{res:<4} batch {n}: {:8.2} ms  {:6.1} GFLOP/s  ({} threads)",
        secs * 1e3,
        flops / secs / 1e9,
        rayon::current_num_threads()
    );
}

/// The 3x3 layers of `ffhq256` (input resolution), batch 8, then a few batch-1 cases. Optional first argument:
/// only the layers whose description contains it (e.g. `up=2`).
fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let layers: &[(usize, usize, usize, usize, usize, usize)] = &[
        (8, 512, 512, 4, 1, 10),
        (8, 512, 512, 8, 1, 5),
        (8, 512, 512, 16, 1, 3),
        (8, 512, 512, 32, 1, 2),
        (8, 256, 256, 64, 1, 2),
        (8, 128, 128, 128, 1, 2),
        (8, 64, 64, 256, 1, 2),
        (8, 512, 512, 4, 2, 5),
        (8, 512, 512, 8, 2, 3),
        (8, 512, 512, 16, 2, 2),
        (8, 512, 256, 32, 2, 2),
        (8, 256, 128, 64, 2, 2),
        (8, 128, 64, 128, 2, 2),
        (1, 512, 512, 4, 1, 20),
        (1, 512, 512, 16, 1, 5),
        (1, 128, 64, 128, 2, 3),
    ];
    for &(n, c, o, res, up, reps) in layers {
        if format!("up={up} {c}->{o} {res}x batch {n}").contains(&filter) {
            bench(n, c, o, res, up, reps);
        }
    }
}

//! Criterion benchmarks of the CPU backend: one synthesis layer in both convolution paths, and whole-network
//! renders of the bundled demo model and of the random-weight `ffhq256` configuration (batch 8, the figure
//! BENCHMARKS.md compares with PyTorch). Run with `cargo bench --bench cpu`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmengine::backend::{Backend, NoiseMode, Truncation};
use mmengine::cpu::{ConvPath, CpuBackend};
use mmengine::model::{self, random};
use mmengine::{seeds, Tensor};
use std::hint::black_box;

fn seeds_z(n: usize, z_dim: usize) -> Tensor {
    let data = (0..n as u32)
        .flat_map(|s| seeds::z_from_seed(s, z_dim))
        .collect();
    Tensor::new(vec![n, z_dim], data).unwrap()
}

fn render_bench(c: &mut Criterion, name: &str, backend: &CpuBackend, batch: usize) {
    let ws = backend
        .map(
            &seeds_z(batch, backend.network().z_dim),
            Truncation::default(),
        )
        .unwrap();
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("synthesize batch {batch}"), |b| {
        b.iter(|| black_box(backend.synthesize(&ws, NoiseMode::Const).unwrap()))
    });
    group.finish();
}

fn demo(c: &mut Criterion) {
    for path in [ConvPath::Fast, ConvPath::Reference] {
        let backend = CpuBackend::with_conv_path(model::bundled().unwrap(), path);
        render_bench(c, &format!("demo-32px {path:?}"), &backend, 8);
    }
}

fn ffhq256(c: &mut Criterion) {
    let net = random::network(&random::config("ffhq256").unwrap(), 0).unwrap();
    render_bench(c, "ffhq256 Fast", &CpuBackend::new(net), 8);
}

criterion_group!(benches, demo, ffhq256);
criterion_main!(benches);

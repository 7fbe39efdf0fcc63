//! The CPU generator against the golden data of the reference PyTorch code: cases A (nvlabs_tiny),
//! B (nvlabs_tiny_clamp) and C (rosinality_tiny), built from their `weights.safetensors` state dicts so that
//! these tests exercise the generator independently of the checkpoint readers.

mod common;

use common::assert_close;
use common::golden_nets::{
    cases, check_intermediates, check_traced_const, nvlabs_network, rosinality_layer,
    rosinality_network, CASE_B_CLAMP_HITS,
};
use mmengine::backend::{Backend, NoiseMode, Truncation};
use mmengine::cpu::{ConvPath, CpuBackend};
use mmengine::Tensor;
use std::collections::HashMap;

const IMG_TOL: f32 = 1e-4;
const WS_TOL: f32 = 1e-5;

/// Render `ws` and collect every traced tensor, keyed by our layer names.
fn traced(
    backend: &CpuBackend,
    ws: &Tensor,
    noise: NoiseMode,
) -> (Tensor, HashMap<String, Tensor>) {
    let mut seen = HashMap::new();
    let img = backend
        .synthesize_traced(ws, noise, &mut |name, t| {
            seen.insert(name.to_string(), t.clone());
        })
        .unwrap();
    (img, seen)
}

const PATHS: [ConvPath; 2] = [ConvPath::Fast, ConvPath::Reference];

fn check_nvlabs_case(case: &str) {
    for path in PATHS {
        println!("{case}: {path:?} convolution");
        check_nvlabs_case_on(case, CpuBackend::with_conv_path(nvlabs_network(case), path));
    }
}

fn check_nvlabs_case_on(case: &str, backend: CpuBackend) {
    let c = cases(case);
    let ws = backend
        .map(&c.tensor("z").unwrap(), Truncation::default())
        .unwrap();
    let err = assert_close("ws", &ws.data, &c.tensor("ws").unwrap().data, WS_TOL, 0.0);
    println!("{case} ws max error {err:e}");

    let expected_ws = c.tensor("ws").unwrap();
    let (img, seen) = traced(&backend, &expected_ws, NoiseMode::Const);
    check_traced_const("cpu", case, &img, &seen);
}

#[test]
fn nvlabs_tiny_case_a() {
    check_nvlabs_case("nvlabs_tiny");
    for path in PATHS {
        let backend = CpuBackend::with_conv_path(nvlabs_network("nvlabs_tiny"), path);
        other_nvlabs_tiny_cases(&backend);
    }
}

fn other_nvlabs_tiny_cases(backend: &CpuBackend) {
    let c = cases("nvlabs_tiny");
    let z = c.tensor("z").unwrap();
    let trunc = Truncation {
        psi: 0.7,
        cutoff: None,
    };
    let ws_trunc = backend.map(&z, trunc).unwrap();
    assert_close(
        "ws_trunc",
        &ws_trunc.data,
        &c.tensor("ws_trunc").unwrap().data,
        WS_TOL,
        0.0,
    );
    for (ws_name, noise, img_name) in [
        ("ws", NoiseMode::None, "img_none"),
        ("ws_trunc", NoiseMode::Const, "img_trunc_const"),
        ("ws_mixed", NoiseMode::Const, "img_mixed_const"),
    ] {
        let img = backend
            .synthesize(&c.tensor(ws_name).unwrap(), noise)
            .unwrap();
        let err = assert_close(
            img_name,
            &img.data,
            &c.tensor(img_name).unwrap().data,
            IMG_TOL,
            0.0,
        );
        println!("nvlabs_tiny {img_name} max error {err:e}");
    }
}

#[test]
fn nvlabs_tiny_clamp_case_b() {
    check_nvlabs_case("nvlabs_tiny_clamp");
    for path in PATHS {
        let backend = CpuBackend::with_conv_path(nvlabs_network("nvlabs_tiny_clamp"), path);
        let ws = cases("nvlabs_tiny_clamp").tensor("ws").unwrap();
        let (_, seen) = traced(&backend, &ws, NoiseMode::Const);
        for (layer, expected) in CASE_B_CLAMP_HITS {
            let hit = seen[layer].data.iter().filter(|v| v.abs() == 256.0).count();
            assert_eq!(hit, expected, "{path:?} {layer}: elements at the clamp");
        }
    }
}

#[test]
fn rosinality_tiny_case_c() {
    for path in PATHS {
        rosinality_case_c_on(CpuBackend::with_conv_path(rosinality_network(), path));
    }
}

fn rosinality_case_c_on(backend: CpuBackend) {
    let c = cases("rosinality_tiny");
    let z = c.tensor("z").unwrap();
    let w = backend.map(&z, Truncation::default()).unwrap();
    let expected_w = c.tensor("w").unwrap();
    for s in 0..4 {
        for l in 0..8 {
            let row = &w.data[(s * 8 + l) * 64..(s * 8 + l + 1) * 64];
            assert_close(
                "w",
                row,
                &expected_w.data[s * 64..(s + 1) * 64],
                WS_TOL,
                0.0,
            );
        }
    }
    let (img, seen) = traced(&backend, &c.tensor("wplus").unwrap(), NoiseMode::Const);
    let err = assert_close(
        "img_fixed_noise",
        &img.data,
        &c.tensor("img_fixed_noise").unwrap().data,
        IMG_TOL,
        0.0,
    );
    println!("rosinality img_fixed_noise max error {err:e}");
    let compared = check_intermediates("cpu", "rosinality_tiny", &seen, 0.0, rosinality_layer);
    assert_eq!(compared, 11 * 2, "intermediates compared");

    // W broadcast, style mixing (as a W+ latent), and truncation with latent_avg.
    let img = backend.synthesize(&w, NoiseMode::Const).unwrap();
    assert_close(
        "img_w_fixed_noise",
        &img.data,
        &c.tensor("img_w_fixed_noise").unwrap().data,
        IMG_TOL,
        0.0,
    );
    let img = backend
        .synthesize(&c.tensor("latent_mix_inject3").unwrap(), NoiseMode::Const)
        .unwrap();
    assert_close(
        "img_mix_inject3",
        &img.data,
        &c.tensor("img_mix_inject3").unwrap().data,
        IMG_TOL,
        0.0,
    );
    let ws_trunc = backend
        .map(
            &z,
            Truncation {
                psi: 0.7,
                cutoff: None,
            },
        )
        .unwrap();
    let img = backend.synthesize(&ws_trunc, NoiseMode::Const).unwrap();
    assert_close(
        "img_trunc",
        &img.data,
        &c.tensor("img_trunc").unwrap().data,
        IMG_TOL,
        0.0,
    );
}

#[test]
fn random_noise_is_reproducible_and_batch_independent() {
    // Both paths draw the same noise, so they agree with each other as well.
    let reference = CpuBackend::with_conv_path(nvlabs_network("nvlabs_tiny"), ConvPath::Reference);
    let ws = cases("nvlabs_tiny").tensor("ws").unwrap();
    let expected = reference
        .synthesize(
            &ws,
            NoiseMode::Random {
                seed: 5,
                first_image: 0,
            },
        )
        .unwrap();
    let backend = CpuBackend::new(nvlabs_network("nvlabs_tiny"));
    let ws = cases("nvlabs_tiny").tensor("ws").unwrap();
    let all = backend
        .synthesize(
            &ws,
            NoiseMode::Random {
                seed: 5,
                first_image: 0,
            },
        )
        .unwrap();
    let again = backend
        .synthesize(
            &ws,
            NoiseMode::Random {
                seed: 5,
                first_image: 0,
            },
        )
        .unwrap();
    assert_eq!(all, again);
    assert_close(
        "fast vs reference, random noise",
        &all.data,
        &expected.data,
        1e-5,
        0.0,
    );
    // Images 2..4 rendered on their own get the same noise as in the full batch (the fast path may sum in another
    // order for another batch size, hence a tolerance rather than bit equality).
    let tail = backend
        .synthesize(
            &ws.slice_rows(2, 4),
            NoiseMode::Random {
                seed: 5,
                first_image: 2,
            },
        )
        .unwrap();
    assert_close(
        "batch of 2 vs batch of 4",
        &tail.data,
        &all.slice_rows(2, 4).data,
        1e-5,
        0.0,
    );
    // Another seed changes the images; and random noise differs from the stored buffers.
    let other = backend
        .synthesize(
            &ws,
            NoiseMode::Random {
                seed: 6,
                first_image: 0,
            },
        )
        .unwrap();
    assert!(other.max_abs_diff(&all).unwrap() > 1e-3);
    let konst = backend.synthesize(&ws, NoiseMode::Const).unwrap();
    assert!(konst.max_abs_diff(&all).unwrap() > 1e-3);
}

#[test]
fn rosinality_from_the_paper_layout_truncation_matches_nvlabs_rule() {
    // Truncation with a cutoff leaves the layers past the cutoff untouched.
    let backend = CpuBackend::new(rosinality_network());
    let z = cases("rosinality_tiny").tensor("z").unwrap();
    let full = backend.map(&z, Truncation::default()).unwrap();
    let cut = backend
        .map(
            &z,
            Truncation {
                psi: 0.5,
                cutoff: Some(3),
            },
        )
        .unwrap();
    let net = backend.network();
    for s in 0..4 {
        for l in 0..net.num_ws {
            let row = |t: &Tensor| {
                t.data[(s * net.num_ws + l) * 64..(s * net.num_ws + l + 1) * 64].to_vec()
            };
            if l >= 3 {
                assert_eq!(row(&cut), row(&full));
            } else {
                let expected: Vec<f32> = row(&full)
                    .iter()
                    .zip(&net.w_avg)
                    .map(|(w, a)| a + 0.5 * (w - a))
                    .collect();
                assert_close("cutoff", &row(&cut), &expected, 1e-6, 0.0);
            }
        }
    }
}

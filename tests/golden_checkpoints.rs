//! Every checkpoint dialect through `model::load` and the default CPU backend, against the golden outputs:
//! A and B (NVlabs pickles), C (rosinality zip .pt), G (training snapshot), H (TensorFlow pickle, expected outputs
//! = case A's) and I (legacy rosinality training checkpoint, expected outputs = case C's).

mod common;

use common::{assert_close, golden, FP16_BLOCKS_TOL};
use mmengine::backend::{Backend, NoiseMode, Truncation};
use mmengine::cpu::CpuBackend;
use mmengine::io::safetensors::SafeTensors;
use mmengine::model::{self, SourceFormat};

const IMG_TOL: f32 = 1e-4;
const WS_TOL: f32 = 1e-5;

fn backend(case: &str, file: &str) -> CpuBackend {
    CpuBackend::new(model::load(&golden(case, file)).unwrap())
}

fn cases(case: &str) -> SafeTensors {
    SafeTensors::open(golden(case, "cases.safetensors")).unwrap()
}

fn trunc(psi: f32, cutoff: Option<usize>) -> Truncation {
    Truncation { psi, cutoff }
}

/// Case A's outputs from a checkpoint of its network (the .pkl itself, or the TF pickle of case H).
fn check_case_a(b: &CpuBackend, what: &str) {
    let c = cases("nvlabs_tiny");
    let z = c.tensor("z").unwrap();
    for (psi, name) in [(1.0, "ws"), (0.7, "ws_trunc")] {
        let ws = b.map(&z, trunc(psi, None)).unwrap();
        let err = assert_close(name, &ws.data, &c.tensor(name).unwrap().data, WS_TOL, 0.0);
        println!("{what} {name} max error {err:e}");
    }
    for (ws, noise, img) in [
        ("ws", NoiseMode::Const, "img_const"),
        ("ws", NoiseMode::None, "img_none"),
        ("ws_trunc", NoiseMode::Const, "img_trunc_const"),
        ("ws_mixed", NoiseMode::Const, "img_mixed_const"),
    ] {
        let out = b.synthesize(&c.tensor(ws).unwrap(), noise).unwrap();
        let err = assert_close(img, &out.data, &c.tensor(img).unwrap().data, IMG_TOL, 0.0);
        println!("{what} {img} max error {err:e}");
    }
}

#[test]
fn case_a_nvlabs_pickle() {
    let b = backend("nvlabs_tiny", "model.pkl");
    assert_eq!(b.network().source, SourceFormat::NvlabsPickle);
    check_case_a(&b, "A model.pkl");
}

#[test]
fn case_h_tensorflow_pickle() {
    let b = backend("nvlabs_tf", "model_tf.pkl");
    assert_eq!(b.network().source, SourceFormat::NvlabsTfPickle);
    check_case_a(&b, "H model_tf.pkl");
}

#[test]
fn case_b_clamp_pickle() {
    let b = backend("nvlabs_tiny_clamp", "model.pkl");
    assert_eq!(b.network().conv_clamp, Some(256.0));
    let c = cases("nvlabs_tiny_clamp");
    let ws = b
        .map(&c.tensor("z").unwrap(), Truncation::default())
        .unwrap();
    assert_close("ws", &ws.data, &c.tensor("ws").unwrap().data, WS_TOL, 0.0);
    let img = b
        .synthesize(&c.tensor("ws").unwrap(), NoiseMode::Const)
        .unwrap();
    let err = assert_close(
        "img_const",
        &img.data,
        &c.tensor("img_const").unwrap().data,
        IMG_TOL,
        1e-5,
    );
    println!("B img_const max error {err:e}");
}

/// Case C's outputs that do not depend on `latent_avg`, from either rosinality checkpoint.
fn check_case_c(b: &CpuBackend, what: &str) {
    let c = cases("rosinality_tiny");
    let w = b
        .map(&c.tensor("z").unwrap(), Truncation::default())
        .unwrap();
    // Every layer of ws carries the same w.
    let expected = c.tensor("w").unwrap();
    for (row, chunk) in w.data.chunks(64).enumerate() {
        let s = row / 8;
        assert_close(
            "w",
            chunk,
            &expected.data[s * 64..(s + 1) * 64],
            WS_TOL,
            0.0,
        );
    }
    for (ws, img) in [
        (w.clone(), "img_w_fixed_noise"),
        (c.tensor("wplus").unwrap(), "img_fixed_noise"),
        (c.tensor("latent_mix_inject3").unwrap(), "img_mix_inject3"),
    ] {
        let out = b.synthesize(&ws, NoiseMode::Const).unwrap();
        let err = assert_close(img, &out.data, &c.tensor(img).unwrap().data, IMG_TOL, 0.0);
        println!("{what} {img} max error {err:e}");
    }
}

#[test]
fn case_c_rosinality_zip_checkpoint() {
    let b = backend("rosinality_tiny", "ckpt.pt");
    assert_eq!(b.network().source, SourceFormat::RosinalityPt);
    check_case_c(&b, "C ckpt.pt");
    // Truncation uses the checkpoint's latent_avg.
    let c = cases("rosinality_tiny");
    assert_close(
        "latent_avg",
        &b.network().w_avg,
        &c.tensor("latent_avg").unwrap().data,
        0.0,
        0.0,
    );
    let ws = b.map(&c.tensor("z").unwrap(), trunc(0.7, None)).unwrap();
    let img = b.synthesize(&ws, NoiseMode::Const).unwrap();
    let err = assert_close(
        "img_trunc",
        &img.data,
        &c.tensor("img_trunc").unwrap().data,
        IMG_TOL,
        0.0,
    );
    println!("C img_trunc max error {err:e}");
}

#[test]
fn case_i_legacy_training_checkpoint() {
    let b = backend("rosinality_train", "ckpt_legacy.pt");
    check_case_c(&b, "I ckpt_legacy.pt");
    // No latent_avg in a training checkpoint: it is computed (seeded), and lands near the reference's own
    // estimate from a different set of 4096 z.
    let net = b.network();
    assert!(
        net.w_avg_origin.starts_with("computed"),
        "{}",
        net.w_avg_origin
    );
    let reference = cases("rosinality_tiny").tensor("latent_avg").unwrap();
    let dist: f32 = net
        .w_avg
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = reference.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(
        dist < 0.1 * norm,
        "computed w_avg is {dist} from the reference's (norm {norm})"
    );
    // And it is deterministic.
    let again = model::load(&golden("rosinality_train", "ckpt_legacy.pt")).unwrap();
    assert_eq!(again.w_avg, net.w_avg);
}

/// The layer table marks the blocks NVlabs runs in float16 (`num_fp16_res`), and the canonical file keeps the mark.
#[test]
fn case_g_fp16_layers() {
    let net = model::load(&golden("nvlabs_snapshot", "snapshot.pkl")).unwrap();
    let fp16: Vec<&str> = net
        .layers
        .iter()
        .filter(|l| l.fp16)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        fp16,
        [
            "b16.conv0",
            "b16.conv1",
            "b16.torgb",
            "b32.conv0",
            "b32.conv1",
            "b32.torgb"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.safetensors");
    model::canonical::save(&net, &path).unwrap();
    let back = model::load(&path).unwrap();
    let flags = |n: &model::Network| n.layers.iter().map(|l| l.fp16).collect::<Vec<_>>();
    assert_eq!(flags(&back), flags(&net));
    // num_fp16_res = 0, and a canonical file written before the field existed: float32 throughout.
    assert!(!flags(&model::load(&golden("nvlabs_tiny", "model.pkl")).unwrap()).contains(&true));
    let bundled = model::bundled().unwrap();
    assert!(!flags(&bundled).contains(&true));
}

#[test]
fn case_g_training_snapshot() {
    let b = backend("nvlabs_snapshot", "snapshot.pkl");
    let net = b.network();
    assert_eq!(
        (net.resolution, net.num_ws, net.conv_clamp),
        (32, 8, Some(256.0))
    );
    let c = cases("nvlabs_snapshot");
    let z = c.tensor("z").unwrap();
    for (t, name) in [
        (Truncation::default(), "ws"),
        (trunc(0.5, None), "ws_trunc"),
        (trunc(0.5, Some(4)), "ws_trunc_cutoff4"),
    ] {
        let ws = b.map(&z, t).unwrap();
        let err = assert_close(name, &ws.data, &c.tensor(name).unwrap().data, WS_TOL, 0.0);
        println!("G {name} max error {err:e}");
    }
    for (ws, noise, img) in [
        ("ws", NoiseMode::Const, "img_const"),
        ("ws", NoiseMode::None, "img_none"),
        (
            "ws_trunc_cutoff4",
            NoiseMode::Const,
            "img_trunc_cutoff4_const",
        ),
    ] {
        let out = b.synthesize(&c.tensor(ws).unwrap(), noise).unwrap();
        let err = assert_close(
            img,
            &out.data,
            &c.tensor(img).unwrap().data,
            FP16_BLOCKS_TOL,
            0.0,
        );
        println!("G {img} max error {err:e} (reference ran fp16 blocks)");
    }
}

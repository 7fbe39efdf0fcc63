//! Checkpoint containers against the golden data: NVlabs pickles (PyTorch and TF), rosinality torch.save files in
//! both formats, the paper's direction files, and hostile or corrupt input.

mod common;

use common::{assert_close, golden, golden_dir};
use mmengine::io::checkpoint::{
    detect, read_nvlabs_pickle, read_tf_pickle, read_torch_checkpoint, Format, TorchCheckpoint,
};
use mmengine::io::pickle::{self, Value};
use mmengine::io::safetensors::SafeTensors;
use mmengine::Tensor;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn config(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(case, "config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Same names, shapes and bit-identical values.
fn assert_same_weights(what: &str, got: &BTreeMap<String, Tensor>, path: &Path) {
    let st = SafeTensors::open(path).unwrap();
    let expected: Vec<&str> = st.names().collect();
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, expected, "{what}: tensor names differ");
    for (name, t) in got {
        let e = st.tensor(name).unwrap();
        assert_eq!(t.shape, e.shape, "{what}: {name} shape");
        let same = t
            .data
            .iter()
            .zip(&e.data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: {name} values are not bit-identical");
    }
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn nvlabs_case(case: &str) {
    let path = golden(case, "model.pkl");
    assert_eq!(detect(&path).unwrap(), Format::NvlabsPickle);
    let pkl = read_nvlabs_pickle(&path).unwrap();
    assert_eq!(pkl.keys, vec!["G_ema".to_string()]);
    assert_eq!(pkl.g_ema.class_name, "Generator");
    assert_same_weights(
        case,
        &pkl.g_ema.state_dict(),
        &golden(case, "weights.safetensors"),
    );
    let kwargs = &pkl.g_ema.attrs["_init_kwargs"];
    let expected = &config(case)["generator_init_kwargs"];
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&kwargs[k], v, "{case}: _init_kwargs.{k}");
    }
    assert_eq!(pkl.g_ema.attrs["_init_args"], serde_json::json!([]));
    let synthesis = &pkl.g_ema.children["synthesis"];
    assert_eq!(synthesis.class_name, "SynthesisNetwork");
    let conv0 = &synthesis.children["b8"].children["conv0"];
    assert_eq!(conv0.class_name, "SynthesisLayer");
    assert_eq!(conv0.attrs["up"], serde_json::json!(2));
    assert_eq!(conv0.params["noise_strength"].shape, Vec::<usize>::new());
}

#[test]
fn nvlabs_tiny_pickle_matches_weights() {
    nvlabs_case("nvlabs_tiny");
}

#[test]
fn nvlabs_tiny_clamp_pickle_matches_weights() {
    nvlabs_case("nvlabs_tiny_clamp");
    let pkl = read_nvlabs_pickle(&golden("nvlabs_tiny_clamp", "model.pkl")).unwrap();
    let layer = &pkl.g_ema.children["synthesis"].children["b32"].children["conv1"];
    assert_eq!(layer.attrs["conv_clamp"], serde_json::json!(256));
}

#[test]
fn nvlabs_snapshot_loads() {
    let path = golden("nvlabs_snapshot", "snapshot.pkl");
    assert_eq!(detect(&path).unwrap(), Format::NvlabsPickle);
    let pkl = read_nvlabs_pickle(&path).unwrap();
    for k in ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"] {
        assert!(
            pkl.keys.iter().any(|x| x == k),
            "missing key {k}: {:?}",
            pkl.keys
        );
    }
    let g = &pkl.g_ema;
    // EasyDict kwargs, with numpy scalars inside, become plain JSON numbers and objects.
    let expected = &config("nvlabs_snapshot")["G_init_kwargs"];
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&g.attrs["_init_kwargs"][k], v, "_init_kwargs.{k}");
    }
    assert_eq!(g.attrs["num_ws"], serde_json::json!(8));
    let sd = g.state_dict();
    for (name, shape) in [
        ("mapping.fc0.weight", vec![64, 64]),
        ("mapping.fc7.bias", vec![64]),
        ("mapping.w_avg", vec![64]),
        ("synthesis.b4.const", vec![128, 4, 4]),
        ("synthesis.b4.conv1.weight", vec![128, 128, 3, 3]),
        ("synthesis.b4.conv1.noise_const", vec![4, 4]),
        ("synthesis.b8.conv0.affine.weight", vec![128, 64]),
        ("synthesis.b16.conv0.weight", vec![64, 128, 3, 3]),
        ("synthesis.b32.torgb.weight", vec![3, 32, 1, 1]),
        ("synthesis.b32.resample_filter", vec![4, 4]),
    ] {
        assert_eq!(sd[name].shape, shape, "{name}");
        assert!(sd[name].all_finite(), "{name}");
    }
    // The `set` of non-persistent buffers is parsed (an empty set here).
    let b4 = &g.children["synthesis"].children["b4"];
    assert_eq!(
        b4.attrs["_non_persistent_buffers_set"],
        serde_json::json!([])
    );
}

/// TF layout `[kh, kw, in, out]` -> PyTorch `[out, in, kh, kw]`, optionally flipped in both spatial axes.
fn tf_conv(t: &Tensor, flip: bool) -> Tensor {
    let [kh, kw, i, o] = t.shape[..] else {
        panic!("{:?}", t.shape)
    };
    let mut out = vec![0f32; t.numel()];
    for y in 0..kh {
        for x in 0..kw {
            for c in 0..i {
                for d in 0..o {
                    let (sy, sx) = if flip {
                        (kh - 1 - y, kw - 1 - x)
                    } else {
                        (y, x)
                    };
                    out[((d * i + c) * kh + y) * kw + x] = t.data[((sy * kw + sx) * i + c) * o + d];
                }
            }
        }
    }
    Tensor::new(vec![o, i, kh, kw], out).unwrap()
}

fn transpose2(t: &Tensor) -> Tensor {
    let [r, c] = t.shape[..] else {
        panic!("{:?}", t.shape)
    };
    let data = (0..c)
        .flat_map(|j| (0..r).map(move |i| (i, j)))
        .map(|(i, j)| t.data[i * c + j])
        .collect();
    Tensor::new(vec![c, r], data).unwrap()
}

#[test]
fn nvlabs_tf_pickle_maps_to_case_a() {
    let path = golden("nvlabs_tf", "model_tf.pkl");
    assert_eq!(detect(&path).unwrap(), Format::TfPickle);
    let gs = read_tf_pickle(&path).unwrap();
    assert_eq!(gs.name, "Gs");
    assert_eq!(gs.static_kwargs["latent_size"], serde_json::json!(64));
    assert_eq!(gs.static_kwargs["architecture"], serde_json::json!("skip"));
    let st = SafeTensors::open(golden("nvlabs_tiny", "weights.safetensors")).unwrap();
    let v = |n: &str| {
        gs.variables
            .get(n)
            .unwrap_or_else(|| panic!("no variable {n}"))
    };
    let w = |n: &str| st.tensor(n).unwrap();
    let exact = |what: &str, a: &Tensor, b: &Tensor| {
        assert_eq!(a.shape, b.shape, "{what}");
        assert_close(what, &a.data, &b.data, 0.0, 0.0);
    };
    exact("dlatent_avg", v("dlatent_avg"), &w("mapping.w_avg"));
    exact(
        "Dense0",
        &transpose2(v("mapping/Dense0/weight")),
        &w("mapping.fc0.weight"),
    );
    exact(
        "Dense7 bias",
        v("mapping/Dense7/bias"),
        &w("mapping.fc7.bias"),
    );
    let c = v("synthesis/4x4/Const/const").clone();
    exact(
        "const",
        &c.reshape(vec![128, 4, 4]).unwrap(),
        &w("synthesis.b4.const"),
    );
    exact(
        "4x4 Conv",
        &tf_conv(v("synthesis/4x4/Conv/weight"), false),
        &w("synthesis.b4.conv1.weight"),
    );
    exact(
        "8x8 Conv1",
        &tf_conv(v("synthesis/8x8/Conv1/weight"), false),
        &w("synthesis.b8.conv1.weight"),
    );
    exact(
        "16x16 Conv0_up",
        &tf_conv(v("synthesis/16x16/Conv0_up/weight"), true),
        &w("synthesis.b16.conv0.weight"),
    );
    exact(
        "32x32 ToRGB",
        &tf_conv(v("synthesis/32x32/ToRGB/weight"), false),
        &w("synthesis.b32.torgb.weight"),
    );
    exact(
        "mod_weight",
        &transpose2(v("synthesis/8x8/Conv0_up/mod_weight")),
        &w("synthesis.b8.conv0.affine.weight"),
    );
    let mod_bias: Vec<f32> = v("synthesis/8x8/Conv0_up/mod_bias")
        .data
        .iter()
        .map(|b| b + 1.0)
        .collect();
    assert_close(
        "mod_bias + 1",
        &mod_bias,
        &w("synthesis.b8.conv0.affine.bias").data,
        1e-6,
        0.0,
    );
    let strength = v("synthesis/8x8/Conv1/noise_strength");
    assert_eq!(strength.shape, Vec::<usize>::new());
    exact(
        "noise_strength",
        strength,
        &w("synthesis.b8.conv1.noise_strength"),
    );
    for (tf, pt) in [
        ("synthesis/noise0", "synthesis.b4.conv1.noise_const"),
        ("synthesis/noise1", "synthesis.b8.conv0.noise_const"),
        ("synthesis/noise6", "synthesis.b32.conv1.noise_const"),
    ] {
        let n = v(tf).clone();
        let e = w(pt);
        exact(tf, &n.reshape(e.shape.clone()).unwrap(), &e);
    }
    // The PyTorch reader refuses it with a clear message.
    let err = read_nvlabs_pickle(&path).unwrap_err().to_string();
    assert!(err.contains("TensorFlow"), "{err}");
}

#[test]
fn rosinality_zip_checkpoint() {
    let path = golden("rosinality_tiny", "ckpt.pt");
    assert_eq!(detect(&path).unwrap(), Format::TorchZip);
    let ckpt = TorchCheckpoint::open(&path).unwrap();
    assert_eq!(ckpt.keys(), vec!["g_ema", "latent_avg"]);
    let sd = ckpt.state_dict("g_ema").unwrap();
    assert_same_weights(
        "rosinality_tiny",
        &sd,
        &golden("rosinality_tiny", "weights.safetensors"),
    );
    let latent_avg = ckpt.tensor("latent_avg").unwrap().unwrap();
    let cases = SafeTensors::open(golden("rosinality_tiny", "cases.safetensors")).unwrap();
    let expected = cases.tensor("latent_avg").unwrap();
    assert_eq!(latent_avg.shape, expected.shape);
    assert_close("latent_avg", &latent_avg.data, &expected.data, 0.0, 0.0);
    assert!(ckpt.args().is_none());
}

#[test]
fn rosinality_legacy_checkpoint() {
    let path = golden("rosinality_train", "ckpt_legacy.pt");
    assert_eq!(detect(&path).unwrap(), Format::TorchLegacy);
    let ckpt = TorchCheckpoint::open(&path).unwrap();
    for k in ["g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"] {
        assert!(ckpt.keys().iter().any(|x| x == k), "missing {k}");
    }
    let sd = ckpt.state_dict("g_ema").unwrap();
    assert_same_weights(
        "rosinality_train",
        &sd,
        &golden("rosinality_tiny", "weights.safetensors"),
    );
    assert!(ckpt.tensor("latent_avg").unwrap().is_none());
    let args = ckpt.args().expect("argparse args");
    assert!(!args.is_empty());
    assert!(ckpt.state_dict("latent_avg").is_err());
}

#[test]
fn paper_direction_files() {
    let dir = golden_dir().join("..").join("paper");
    for (file, shape) in [
        ("d_latent_smile.pt", vec![1, 18, 512]),
        ("d_latent_angry.pt", vec![1, 18, 512]),
        ("d_latent_aging.pt", vec![1, 18, 512]),
        ("d_latent_aging_baseline.pt", vec![1, 18, 512]),
        ("d_latent_aging_oldGrayHair.pt", vec![1, 18, 512]),
        ("d_latent_eyesClose.pt", vec![1, 18, 512]),
        ("d_latent_headsTurn.pt", vec![1, 18, 512]),
        ("interfacegan_pose.pt", vec![1, 18, 512]),
        ("interfacegan_age.pt", vec![1, 512]),
        ("interfacegan_smile.pt", vec![1, 512]),
    ] {
        let path = dir.join(file);
        let Value::Tensor(t) = read_torch_checkpoint(&path).unwrap() else {
            panic!("{file}: not a tensor")
        };
        assert_eq!(t.shape, shape, "{file}");
        assert!(t.all_finite(), "{file}");
    }
    let Value::Tensor(age) = read_torch_checkpoint(&dir.join("interfacegan_age.pt")).unwrap()
    else {
        unreachable!()
    };
    let norm: f32 = age.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
}

/// A protocol-2 pickle calling `module.name("echo hi")`.
fn calling_global(module: &str, name: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'c'];
    p.extend(format!("{module}\n{name}\n").as_bytes());
    p.extend(b"X\x07\x00\x00\x00echo hi\x85R.");
    p
}

#[test]
fn forbidden_globals_are_rejected() {
    for (module, name) in [("os", "system"), ("posix", "system"), ("builtins", "eval")] {
        let bytes = calling_global(module, name);
        let f = temp_file(&bytes);
        let err = read_nvlabs_pickle(f.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("forbidden pickle global '{module}.{name}'")),
            "{err}"
        );
        let fname = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&fname), "error does not name the file: {err}");
    }
    // STACK_GLOBAL spelling too.
    let p = b"\x80\x04\x8c\x02os\x8c\x06system\x93.";
    let err = pickle::load(p, &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("os.system"), "{err}");
    // An allow-listed class that is not a function cannot be called.
    let err = pickle::load(
        &calling_global("torch", "FloatStorage"),
        &mut |_| unreachable!(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot be called"), "{err}");
}

#[test]
fn truncated_and_random_files_are_clean_errors() {
    for (case, file) in [
        ("nvlabs_tiny", "model.pkl"),
        ("nvlabs_snapshot", "snapshot.pkl"),
        ("nvlabs_tf", "model_tf.pkl"),
    ] {
        let bytes = std::fs::read(golden(case, file)).unwrap();
        let f = temp_file(&bytes[..bytes.len() / 2]);
        let err = if case == "nvlabs_tf" {
            read_tf_pickle(f.path()).unwrap_err()
        } else {
            read_nvlabs_pickle(f.path()).unwrap_err()
        }
        .to_string();
        let fname = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&fname) && err.contains("truncated"), "{err}");
    }
    for (case, file) in [
        ("rosinality_tiny", "ckpt.pt"),
        ("rosinality_train", "ckpt_legacy.pt"),
    ] {
        let bytes = std::fs::read(golden(case, file)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 1, 100] {
            let f = temp_file(&bytes[..cut]);
            let err = read_torch_checkpoint(f.path()).unwrap_err().to_string();
            let fname = f.path().file_name().unwrap().to_string_lossy().into_owned();
            assert!(err.contains(&fname), "{err}");
        }
    }
    // Pseudo-random bytes (fixed LCG), with and without a pickle/zip-looking start.
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    };
    for start in [&b""[..], b"\x80\x04", b"PK\x03\x04", torch_magic()] {
        for _ in 0..50 {
            let mut bytes = start.to_vec();
            bytes.extend(random(4096));
            let f = temp_file(&bytes);
            assert!(read_torch_checkpoint(f.path()).is_err());
            assert!(read_nvlabs_pickle(f.path()).is_err());
            let _ = detect(f.path());
        }
    }
}

fn torch_magic() -> &'static [u8] {
    mmengine::io::torch::LEGACY_MAGIC
}

#[test]
fn every_prefix_and_byte_flip_of_a_small_pickle_is_handled() {
    // A small torch zip file: cut and corrupt it everywhere; any outcome but a panic is fine.
    let bytes = std::fs::read(golden_dir().join("../paper/interfacegan_age.pt")).unwrap();
    for n in (0..bytes.len()).step_by(7) {
        let _ = mmengine::io::torch::load_bytes(&bytes[..n]);
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xa5;
        let _ = mmengine::io::torch::load_bytes(&bad);
    }
}

#[test]
fn unknown_opcode_is_named() {
    let err = pickle::load(b"\x80\x02K\x01\xff.", &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("0xff") && err.contains("offset 4"), "{err}");
}

#[test]
fn huge_declared_lengths_do_not_allocate() {
    for p in [
        &b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc."[..], // BINUNICODE8
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xffabc.",      // BINBYTES8
        b"\x80\x03X\xff\xff\xff\xffabc.",                         // BINUNICODE
        b"\x80\x02\x8b\xff\xff\xff\x7f\x01.",                     // LONG4
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff.",         // FRAME
        b"\x80\x02r\xff\xff\xff\xff.",                            // LONG_BINPUT on an empty stack
        b"\x80\x02j\xff\xff\xff\xff.",                            // LONG_BINGET of a missing key
    ] {
        let err = pickle::load(p, &mut |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
    }
    // A numpy array whose declared shape does not match its data.
    let mut p =
        b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
            .to_vec();
    p.extend(b"(K\x01J\xff\xff\xff\x7fJ\xff\xff\xff\x7f\x86cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R");
    p.extend(b"\x89C\x04\x00\x00\x00\x00tb.");
    let err = pickle::load(&p, &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn deep_nesting_and_shared_blowup_are_bounded() {
    // 100k nested empty lists: rejected by the depth limit, without a stack overflow.
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    let err = pickle::load(&p, &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("deeper"), "{err}");
    // A list that contains itself.
    let cyc = b"\x80\x02]q\x00h\x00a.";
    let err = pickle::load(cyc, &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle"), "{err}");
    // "Billion laughs": each level is a list of 10 references to the previous one.
    let mut p = vec![0x80, 2, b'X', 3, 0, 0, 0, b'l', b'o', b'l', b'q', 0];
    for level in 1..=30u8 {
        p.push(b'(');
        for _ in 0..10 {
            p.extend([b'h', level - 1]);
        }
        p.extend([b'l', b'q', level]);
    }
    p.push(b'.');
    let err = pickle::load(&p, &mut |_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expands"), "{err}");
}

#[test]
fn nvlabs_pickle_without_g_ema_names_its_keys() {
    let p = b"\x80\x02}(X\x01\x00\x00\x00GNX\x01\x00\x00\x00DNu.";
    let f = temp_file(p);
    let err = read_nvlabs_pickle(f.path()).unwrap_err().to_string();
    assert!(err.contains("G_ema") && err.contains("G, D"), "{err}");
}

/// A plain pickle `_rebuild_tensor_v2(_load_from_bytes(<legacy stream of a 2-float storage>), 1, size, stride)`.
fn view_pickle(size: &[u32], stride: &[u32]) -> Vec<u8> {
    let mut inner = torch_magic().to_vec();
    inner.extend(b"\x80\x02M\xe9\x03.\x80\x02}.");
    inner.extend(b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
    inner.extend(b"X\x01\x00\x00\x000X\x06\x00\x00\x00cuda:0K\x02NtQ.");
    inner.extend(b"\x80\x02]X\x01\x00\x00\x000a.");
    inner.extend(2i64.to_le_bytes());
    inner.extend(1.5f32.to_le_bytes());
    inner.extend(2.5f32.to_le_bytes());
    let mut p =
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(ctorch.storage\n_load_from_bytes\nB".to_vec();
    p.extend((inner.len() as u32).to_le_bytes());
    p.extend(&inner);
    p.extend(b"\x85RK\x01(");
    for d in size {
        p.push(b'J');
        p.extend(d.to_le_bytes());
    }
    p.extend(b"t(");
    for s in stride {
        p.push(b'J');
        p.extend(s.to_le_bytes());
    }
    p.extend(b"t\x89)tR.");
    p
}

#[test]
fn tensor_views_honour_offset_and_stride() {
    let v = mmengine::io::torch::load_pickle(&view_pickle(&[2, 3], &[0, 0])).unwrap();
    let Value::Tensor(t) = v else { panic!("{v:?}") };
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(t.data, vec![2.5; 6]);
    // Past the storage end.
    let err = mmengine::io::torch::load_pickle(&view_pickle(&[2], &[1]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("past its storage"), "{err}");
    // A stride-0 view asking for 10^9 x 10^9 elements is refused before anything is allocated.
    let err =
        mmengine::io::torch::load_pickle(&view_pickle(&[1_000_000_000, 1_000_000_000], &[0, 0]))
            .unwrap_err()
            .to_string();
    assert!(err.contains("expands"), "{err}");
    // Every prefix and byte flip of the nested-stream pickle: errors or values, never a panic.
    let good = view_pickle(&[2], &[1]);
    for n in 0..good.len() {
        let _ = mmengine::io::torch::load_pickle(&good[..n]);
    }
    for i in 0..good.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= x;
            let _ = mmengine::io::torch::load_pickle(&bad);
        }
    }
}

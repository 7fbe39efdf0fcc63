//! The command-line contract: the commands and flags other tools call, their outputs, and their errors.

mod common;

use common::{assert_close, golden, FP16_BLOCKS_TOL};
use mmengine::io::npy;
use mmengine::io::safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmengine"))
        .args(args)
        .output()
        .expect("run mmengine")
}

fn ok(args: &[&str]) -> String {
    let out = mmengine(args);
    assert!(
        out.status.success(),
        "mmengine {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command that must fail: non-zero exit, no panic, one error line that contains every `needle`.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = mmengine(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "mmengine {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let line = stderr.trim();
    assert_eq!(
        line.lines().count(),
        1,
        "expected one error line, got: {stderr}"
    );
    for n in needles {
        assert!(line.contains(n), "error '{line}' should mention '{n}'");
    }
    line.to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pkl(case: &str) -> PathBuf {
    golden(case, "model.pkl")
}

/// No file, and no temporary sibling, is left in `dir`.
fn assert_empty_dir(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn info_describes_every_format() {
    for model in [
        pkl("nvlabs_tiny"),
        golden("nvlabs_tf", "model_tf.pkl"),
        golden("nvlabs_snapshot", "snapshot.pkl"),
        golden("rosinality_tiny", "ckpt.pt"),
        golden("rosinality_train", "ckpt_legacy.pt"),
    ] {
        let out = ok(&["info", s(&model)]);
        assert!(out.contains("32x32"), "{out}");
        assert!(out.contains("z_dim:           64"), "{out}");
        assert!(out.contains("num_ws:          8"), "{out}");
        assert!(out.contains("4:128 8:128 16:64 32:32"), "{out}");
    }
    let out = ok(&["info", s(&pkl("nvlabs_tiny_clamp"))]);
    assert!(out.contains("conv_clamp:      256"), "{out}");
    // --layers shows which layers NVlabs runs in float16 (case G: num_fp16_res = 2, the 16 and 32 px blocks).
    let out = ok(&[
        "info",
        "--layers",
        s(&golden("nvlabs_snapshot", "snapshot.pkl")),
    ]);
    let fp16: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('b') && l.ends_with("true"))
        .map(|l| l.split_whitespace().next().unwrap())
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
}

#[test]
fn convert_then_render_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [
        ("nv", pkl("nvlabs_tiny_clamp")),
        ("ros", golden("rosinality_tiny", "ckpt.pt")),
        ("tf", golden("nvlabs_tf", "model_tf.pkl")),
    ] {
        let st = dir.path().join(format!("{name}.safetensors"));
        ok(&["convert", s(&model), "-o", s(&st)]);
        let a = dir.path().join(format!("{name}_a.npy"));
        let b = dir.path().join(format!("{name}_b.npy"));
        ok(&[
            "render",
            "--model",
            s(&model),
            "--seeds",
            "0-2",
            "--trunc",
            "0.7",
            "-o",
            s(&a),
        ]);
        ok(&[
            "render",
            "--model",
            s(&st),
            "--seeds",
            "0-2",
            "--trunc",
            "0.7",
            "-o",
            s(&b),
        ]);
        let (a, b) = (npy::read_npy(&a).unwrap(), npy::read_npy(&b).unwrap());
        assert_eq!(a.shape, vec![3, 3, 32, 32]);
        assert_eq!(
            a.data, b.data,
            "{name}: converted model renders differently"
        );
        let info = ok(&["info", s(&st)]);
        assert!(
            info.contains("mmengine safetensors (converted from "),
            "{info}"
        );
    }
}

#[test]
fn map_and_render_match_the_golden_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let cases = SafeTensors::open(golden("nvlabs_tiny", "cases.safetensors")).unwrap();
    let z = dir.path().join("z.npy");
    npy::write_npy(&z, &cases.tensor("z").unwrap()).unwrap();
    let ws = dir.path().join("ws.npy");
    ok(&[
        "map",
        "--model",
        s(&pkl("nvlabs_tiny")),
        "--z",
        s(&z),
        "--trunc",
        "0.7",
        "-o",
        s(&ws),
    ]);
    let got = npy::read_npy(&ws).unwrap();
    assert_eq!(got.shape, vec![4, 8, 64]);
    assert_close(
        "ws_trunc",
        &got.data,
        &cases.tensor("ws_trunc").unwrap().data,
        1e-5,
        0.0,
    );

    // A W+ latent through the whole CLI, as raw float32.
    let mixed = dir.path().join("mixed.npy");
    npy::write_npy(&mixed, &cases.tensor("ws_mixed").unwrap()).unwrap();
    let img = dir.path().join("img.npy");
    ok(&[
        "render",
        "--model",
        s(&pkl("nvlabs_tiny")),
        "--ws",
        s(&mixed),
        "--batch",
        "3",
        "--quiet",
        "-o",
        s(&img),
    ]);
    let got = npy::read_npy(&img).unwrap();
    assert_close(
        "img_mixed_const",
        &got.data,
        &cases.tensor("img_mixed_const").unwrap().data,
        1e-4,
        0.0,
    );

    // noise-mode none, W input from a safetensors file with a tensor name.
    let img = dir.path().join("none.npy");
    let ws_file = format!(
        "{}:ws",
        golden("nvlabs_tiny", "cases.safetensors").display()
    );
    ok(&[
        "render",
        "--model",
        s(&pkl("nvlabs_tiny")),
        "--ws",
        &ws_file,
        "--noise-mode",
        "none",
        "-o",
        s(&img),
    ]);
    let got = npy::read_npy(&img).unwrap();
    assert_close(
        "img_none",
        &got.data,
        &cases.tensor("img_none").unwrap().data,
        1e-4,
        0.0,
    );
}

#[test]
fn truncation_cutoff_matches_the_snapshot_case() {
    let dir = tempfile::tempdir().unwrap();
    let cases = SafeTensors::open(golden("nvlabs_snapshot", "cases.safetensors")).unwrap();
    let z = dir.path().join("z.npy");
    npy::write_npy(&z, &cases.tensor("z").unwrap()).unwrap();
    let model = golden("nvlabs_snapshot", "snapshot.pkl");
    let ws = dir.path().join("ws.npy");
    ok(&[
        "map",
        "--model",
        s(&model),
        "--z",
        s(&z),
        "--trunc",
        "0.5",
        "--trunc-cutoff",
        "4",
        "-o",
        s(&ws),
    ]);
    let got = npy::read_npy(&ws).unwrap();
    assert_close(
        "ws_trunc_cutoff4",
        &got.data,
        &cases.tensor("ws_trunc_cutoff4").unwrap().data,
        1e-5,
        0.0,
    );
    let img = dir.path().join("img.npy");
    ok(&[
        "render",
        "--model",
        s(&model),
        "--z",
        s(&z),
        "--trunc",
        "0.5",
        "--trunc-cutoff",
        "4",
        "-o",
        s(&img),
    ]);
    let got = npy::read_npy(&img).unwrap();
    let err = assert_close(
        "img_trunc_cutoff4_const",
        &got.data,
        &cases.tensor("img_trunc_cutoff4_const").unwrap().data,
        FP16_BLOCKS_TOL,
        0.0,
    );
    println!(
        "nvlabs_snapshot img_trunc_cutoff4_const max error {err:e} (the reference ran fp16 blocks)"
    );
}

#[test]
fn png_outputs_a_person_can_look_at() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    ok(&[
        "render",
        "--seeds",
        "0-2,42",
        "--batch",
        "2",
        "-o",
        s(&frames),
    ]);
    for seed in ["seed0000", "seed0001", "seed0002", "seed0042"] {
        let (w, h) = png_size(&frames.join(format!("{seed}.png")));
        assert_eq!((w, h), (32, 32));
    }
    let grid = dir.path().join("grid.png");
    ok(&["render", "--seeds", "0-4", "-o", s(&grid)]);
    assert_eq!(png_size(&grid), (3 * 32, 2 * 32));
    // Without seeds the files are numbered.
    let ws = dir.path().join("ws.npy");
    ok(&["map", "--seeds", "1,2", "-o", s(&ws)]);
    let numbered = dir.path().join("numbered");
    ok(&["render", "--ws", s(&ws), "-o", s(&numbered)]);
    assert_eq!(png_size(&numbered.join("img00001.png")), (32, 32));
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    (reader.info().width, reader.info().height)
}

#[test]
fn seeds_give_nvlabs_z() {
    // --seeds must mean the same faces as NVlabs' gen_images.py: map the golden z and compare.
    let dir = tempfile::tempdir().unwrap();
    let seeds = SafeTensors::open(golden("seeds", "numpy_randn.safetensors")).unwrap();
    let z = seeds.tensor("z_dim64").unwrap();
    let zfile = dir.path().join("z.npy");
    npy::write_npy(&zfile, &z).unwrap();
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    ok(&[
        "map",
        "--seeds",
        "0,1,2,3,42,1000,123456,4294967295",
        "-o",
        s(&a),
    ]);
    ok(&["map", "--z", s(&zfile), "-o", s(&b)]);
    assert_eq!(npy::read_npy(&a).unwrap(), npy::read_npy(&b).unwrap());
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("x.npy");

    // Missing, truncated, corrupt and hostile checkpoints.
    let missing = dir.path().join("missing.pkl");
    fails(
        &[
            "render",
            "--model",
            s(&missing),
            "--seeds",
            "0",
            "-o",
            s(&out),
        ],
        &["missing.pkl"],
    );
    let bytes = std::fs::read(pkl("nvlabs_tiny")).unwrap();
    let truncated = dir.path().join("truncated.pkl");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &[
            "render",
            "--model",
            s(&truncated),
            "--seeds",
            "0",
            "-o",
            s(&out),
        ],
        &["truncated.pkl"],
    );
    let corrupt = dir.path().join("corrupt.pt");
    std::fs::write(&corrupt, b"this is not a checkpoint at all").unwrap();
    fails(&["info", s(&corrupt)], &["corrupt.pt"]);
    let hostile = dir.path().join("hostile.pkl");
    // protocol 2: GLOBAL 'os system', the argument 'echo pwned', REDUCE, STOP.
    std::fs::write(
        &hostile,
        b"\x80\x02cos\nsystem\nX\x0a\x00\x00\x00echo pwnedq\x00\x85q\x01Rq\x02.",
    )
    .unwrap();
    fails(&["info", s(&hostile)], &["hostile.pkl", "os"]);
    assert_empty_dir(&out_dir);

    // Latents of the wrong shape, and non-finite latents.
    let bad = dir.path().join("bad.npy");
    npy::write_npy(&bad, &mmengine::Tensor::zeros(vec![2, 5, 64])).unwrap();
    fails(
        &["render", "--ws", s(&bad), "-o", s(&out)],
        &["bad.npy", "[2, 5, 64]"],
    );
    let mut nan = mmengine::Tensor::zeros(vec![2, 64]);
    nan.data[70] = f32::NAN;
    let nan_file = dir.path().join("nan.npy");
    npy::write_npy(&nan_file, &nan).unwrap();
    fails(
        &["render", "--z", s(&nan_file), "-o", s(&out)],
        &["nan.npy", "NaN"],
    );
    fails(
        &["render", "--ws", s(&nan_file), "-o", s(&out)],
        &["nan.npy", "NaN"],
    );
    assert_empty_dir(&out_dir);

    // Unwritable outputs: a folder that does not exist, an unknown extension.
    let nowhere = dir.path().join("no").join("such").join("dir").join("x.npy");
    fails(&["render", "--seeds", "0", "-o", s(&nowhere)], &["x.npy"]);
    let grid = dir.path().join("no").join("grid.png");
    fails(&["render", "--seeds", "0", "-o", s(&grid)], &["grid.png"]);
    fails(
        &["render", "--seeds", "0", "-o", s(&out_dir.join("x.jpg"))],
        &["x.jpg"],
    );
    fails(&["render", "--seeds", "0-", "-o", s(&out)], &["0-"]);
    // Passes are a device's: the cpu backend takes a batch at once.
    fails(
        &[
            "render",
            "--seeds",
            "0",
            "--pass-images",
            "4",
            "-o",
            s(&out),
        ],
        &["--pass-images 4", "cuda and emu"],
    );
    fails(
        &[
            "render",
            "--seeds",
            "0",
            "--pass-images",
            "0",
            "-o",
            s(&out),
        ],
        &["--pass-images", "at least 1"],
    );
    assert_empty_dir(&out_dir);
}

#[test]
fn doctor_reports_backends_devices_and_kernels() {
    let text = ok(&["doctor"]);
    assert!(text.contains("backends:") && text.contains("cpu"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["doctor", "--json"])).unwrap();
    assert!(json["devices"].is_array(), "{json}");
    // The run-time CUDA libraries, libcuda found exactly when the engine sees a driver.
    let libraries = json["libraries"].as_array().expect("libraries list");
    let found = |name: &str| {
        libraries
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {libraries:?}"))["found"]
            .as_bool()
            .unwrap()
    };
    assert_eq!(found("libcuda"), mmengine::cuda::driver::driver_present());
    found("libcusolver");
    found("libnvrtc");
    assert!(
        text.contains("libraries:") && text.contains("libcusolver"),
        "{text}"
    );
    let kernels = json["kernels"].as_array().expect("kernels list");
    // A build with nvcc lists every kernel of kernels/*.cu with its compiled figures.
    if json["nvcc"].is_string() {
        let names: Vec<&str> = kernels.iter().filter_map(|k| k["name"].as_str()).collect();
        for kernel in mmengine::cuda::kernels::Kernel::ALL {
            assert!(
                names.contains(&kernel.name()),
                "{} missing from {names:?}",
                kernel.name()
            );
        }
        for k in kernels {
            for key in [
                "archs",
                "registers",
                "spill_bytes",
                "shared_bytes",
                "tensor_core_ops",
                "local_memory",
                "main_loop_instructions_per_mma",
            ] {
                assert!(k.get(key).is_some(), "kernel entry without '{key}': {k}");
            }
        }
    }
}

#[test]
fn selftest_on_the_cpu_passes_every_golden_check() {
    let golden = common::golden_dir();
    let text = ok(&["selftest", "--device", "cpu", "--golden", s(&golden)]);
    assert!(text.contains(" 0 failed"), "{text}");
    assert!(!text.contains("FAIL "), "{text}");
    fails(
        &["selftest", "--golden", "/nonexistent"],
        &["/nonexistent", "no golden data"],
    );
}

#[test]
fn device_flag_is_checked_before_any_work() {
    // A value clap rejects: its usage error (exit 2) names the valid devices.
    let out = mmengine(&["render", "--device", "gpu", "--seeds", "0", "-o", "x.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'gpu' is not a device") && stderr.contains("cuda:N"),
        "{stderr}"
    );
    if !mmengine::cuda::driver::driver_present() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.png");
        fails(
            &["render", "--device", "cuda", "--seeds", "0", "-o", s(&out)],
            &["no CUDA driver", "--device cpu"],
        );
        assert_empty_dir(dir.path());
    }
}

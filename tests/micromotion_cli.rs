//! The `edit` and `clip` commands: latents, images, clip files and errors, through the real binary.

mod common;

use common::golden;
use mmengine::io::npy;
use mmengine::io::safetensors::{self, Data, SafeTensors};
use mmengine::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmengine_env(args: &[&str], path_env: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mmengine"));
    cmd.args(args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().expect("run mmengine")
}

fn ok(args: &[&str]) {
    let out = mmengine_env(args, None);
    assert!(
        out.status.success(),
        "mmengine {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command that must fail with one error line mentioning every needle.
fn fails_env(args: &[&str], path_env: Option<&Path>, needles: &[&str]) {
    let out = mmengine_env(args, path_env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "mmengine {args:?}: {stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "expected one error line: {stderr}");
    for n in needles {
        assert!(line.contains(n), "error '{line}' should mention '{n}'");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    model: PathBuf,
    /// The four W+ faces `ws_mixed` [4, 8, 64].
    faces: Tensor,
    faces_file: PathBuf,
    /// A W+ direction [8, 64] and a W direction [64].
    d: Tensor,
    d_file: PathBuf,
    dw: Tensor,
    dw_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cases = SafeTensors::open(golden("nvlabs_tiny", "cases.safetensors")).unwrap();
    let faces = cases.tensor("ws_mixed").unwrap();
    assert_eq!(faces.shape, vec![4, 8, 64]);
    let faces_file = dir.path().join("faces.npy");
    npy::write_npy(&faces_file, &faces).unwrap();
    // Deterministic, varied, of a size that visibly moves the tiny model.
    let d = Tensor::new(
        vec![8, 64],
        (0..512)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.5)
            .collect(),
    )
    .unwrap();
    let d_file = dir.path().join("d.npy");
    npy::write_npy(&d_file, &d).unwrap();
    let dw = Tensor::new(vec![64], d.data[64..128].to_vec()).unwrap();
    let dw_file = dir.path().join("dw.npy");
    npy::write_npy(&dw_file, &dw).unwrap();
    Setup {
        model: golden("nvlabs_tiny", "model.pkl"),
        dir,
        faces,
        faces_file,
        d,
        d_file,
        dw,
        dw_file,
    }
}

/// `faces + alpha * d` computed here, with `d` [L*D] (or [D], broadcast).
fn shifted(faces: &Tensor, d: &[f32], alpha: f32) -> Tensor {
    let data = faces
        .data
        .iter()
        .enumerate()
        .map(|(i, &w)| w + alpha * d[i % d.len()])
        .collect();
    Tensor::new(faces.shape.clone(), data).unwrap()
}

/// Bit-identical images (without printing a thousand floats when not).
fn same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}");
    assert!(
        got.data == want.data,
        "{what}: max difference {}",
        got.max_abs_diff(want).unwrap()
    );
}

fn render_npy(t: &Setup, ws: &Path, out: &Path) -> Tensor {
    ok(&[
        "render",
        "--model",
        s(&t.model),
        "--ws",
        s(ws),
        // The same batches as `edit_npy`: results are exact only for equal batching.
        "--batch",
        "3",
        "--quiet",
        "-o",
        s(out),
    ]);
    npy::read_npy(out).unwrap()
}

fn edit_npy(t: &Setup, direction: &Path, alpha: &str, out: &Path) -> Tensor {
    ok(&[
        "edit",
        "--model",
        s(&t.model),
        "--ws",
        s(&t.faces_file),
        "--direction",
        s(direction),
        "--alpha",
        alpha,
        "--batch",
        "3",
        "--quiet",
        "-o",
        s(out),
    ]);
    npy::read_npy(out).unwrap()
}

#[test]
fn edit_is_render_of_the_shifted_latents() {
    let t = setup();
    let p = |n: &str| t.dir.path().join(n);
    let plain = render_npy(&t, &t.faces_file, &p("plain.npy"));
    same(
        &edit_npy(&t, &t.d_file, "0", &p("e0.npy")),
        &plain,
        "alpha 0",
    );

    for (name, d, file) in [("wplus", &t.d, &t.d_file), ("w", &t.dw, &t.dw_file)] {
        let latents = p(&format!("{name}_ws.npy"));
        npy::write_npy(&latents, &shifted(&t.faces, &d.data, -1.5)).unwrap();
        let want = render_npy(&t, &latents, &p(&format!("{name}_want.npy")));
        let got = edit_npy(&t, file, "-1.5", &p(&format!("{name}_got.npy")));
        same(&got, &want, name);
        assert!(
            got.max_abs_diff(&plain).unwrap() > 0.1,
            "{name}: the edit changes nothing"
        );
    }

    // A fitted .safetensors: its `direction` tensor is the one taken.
    let fitted = p("fit.safetensors");
    let junk = vec![9.0f32; 4 * 512];
    safetensors::write(
        &fitted,
        &[
            ("L", &[4, 8, 64], Data::F32(&junk)),
            ("direction", &[8, 64], Data::F32(&t.d.data)),
        ],
        &Default::default(),
    )
    .unwrap();
    let got = edit_npy(&t, &fitted, "-1.5", &p("fit_got.npy"));
    same(&got, &npy::read_npy(p("wplus_want.npy")).unwrap(), "fitted");

    // Directory output: one PNG per face.
    let dir = p("faces");
    ok(&[
        "edit",
        "--model",
        s(&t.model),
        "--ws",
        s(&t.faces_file),
        "--direction",
        s(&t.d_file),
        "--alpha",
        "2",
        "-o",
        s(&dir),
    ]);
    for i in 0..4 {
        assert_eq!(png(&dir.join(format!("face{i:03}.png"))).0, (32, 32));
    }
}

#[test]
fn clip_latents_follow_the_schedule() {
    let t = setup();
    let latents = t.dir.path().join("lat.npy");
    let frames_dir = t.dir.path().join("frames");
    ok(&[
        "clip",
        "--model",
        s(&t.model),
        "--ws",
        s(&t.faces_file),
        "--direction",
        s(&t.d_file),
        "--scale",
        "3",
        "--frames",
        "7",
        "--batch",
        "5",
        "--quiet",
        "--save-latents",
        s(&latents),
        "-o",
        s(&frames_dir),
    ]);
    let got = npy::read_npy(&latents).unwrap();
    assert_eq!(got.shape, vec![4 * 7, 8, 64]);
    for face in 0..4 {
        let w = Tensor::new(
            vec![1, 8, 64],
            t.faces.data[face * 512..(face + 1) * 512].to_vec(),
        )
        .unwrap();
        for i in 0..7 {
            let alpha = (i as f32 / 100.0) * 3.0;
            let row = face * 7 + i;
            assert_eq!(
                got.data[row * 512..(row + 1) * 512],
                shifted(&w, &t.d.data, alpha).data[..],
                "face {face} frame {i}"
            );
        }
    }
    // One clip per face, in its own folder of frames.
    for face in 0..4 {
        for i in 0..7 {
            let f = frames_dir.join(format!("face{face:03}/frame{i:04}.png"));
            assert_eq!(png(&f).0, (32, 32), "{}", f.display());
        }
    }

    // --alphas A:B:N: N values from A to B, both ends exact.
    ok(&[
        "clip",
        "--model",
        s(&t.model),
        "--ws",
        s(&t.faces_file),
        "--direction",
        s(&t.dw_file),
        "--alphas",
        "-2:2:5",
        "--quiet",
        "--save-latents",
        s(&latents),
        "-o",
        s(&t.dir.path().join("alphas.gif")),
    ]);
    let got = npy::read_npy(&latents).unwrap();
    assert_eq!(got.shape, vec![4 * 5, 8, 64]);
    for (i, alpha) in [-2.0f32, -1.0, 0.0, 1.0, 2.0].into_iter().enumerate() {
        let want = shifted(&t.faces, &t.dw.data, alpha);
        for face in 0..4 {
            let row = face * 5 + i;
            assert_eq!(
                got.data[row * 512..(row + 1) * 512],
                want.data[face * 512..(face + 1) * 512],
                "face {face} alpha {alpha}"
            );
        }
    }
}

/// (width, height), channels, pixels.
fn png(path: &Path) -> ((u32, u32), usize, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    ((info.width, info.height), info.color_type.samples(), buf)
}

/// (width, height, delays of every frame).
fn gif_info(path: &Path) -> (u16, u16, Vec<u16>) {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(std::fs::File::open(path).unwrap()).unwrap();
    let mut delays = Vec::new();
    while let Some(frame) = dec.read_next_frame().unwrap() {
        delays.push(frame.delay);
    }
    (dec.width(), dec.height(), delays)
}

#[test]
fn clip_files_grid_and_normalisation() {
    let t = setup();
    let p = |n: &str| t.dir.path().join(n);
    let clip = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "clip",
            "--model",
            s(&t.model),
            "--ws",
            s(&t.faces_file),
            "--direction",
            s(&t.d_file),
            "--frames",
            "6",
            "--batch",
            "4",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", s(out)]);
        ok(&args);
    };

    // One GIF per face beside OUT, each with every frame; 30 fps is 3 hundredths of a second per frame.
    clip(&[], &p("smile.gif"));
    assert!(!p("smile.gif").exists());
    for face in 0..4 {
        let (w, h, delays) = gif_info(&p(&format!("smile_face{face:03}.gif")));
        assert_eq!((w, h), (32, 32));
        assert_eq!(delays, vec![3; 6]);
    }

    // --grid: one clip, the four faces 2 x 2.
    clip(&["--grid", "--fps", "10"], &p("grid.gif"));
    let (w, h, delays) = gif_info(&p("grid.gif"));
    assert_eq!((w, h), (64, 64));
    assert_eq!(delays, vec![10; 6]);
    let grid_dir = p("grid_frames");
    clip(&["--grid"], &grid_dir);
    for i in 0..6 {
        assert_eq!(png(&grid_dir.join(format!("frame{i:04}.png"))).0, (64, 64));
    }

    // The paper's min-max normalisation stretches every frame to the full 0..255.
    let mm = p("minmax");
    clip(&["--grid", "--normalize", "minmax"], &mm);
    let cl = p("clamp");
    clip(&["--grid", "--normalize", "clamp"], &cl);
    for i in 0..6 {
        let name = format!("frame{i:04}.png");
        let (_, c, px) = png(&mm.join(&name));
        assert_eq!(c, 3);
        assert_eq!(*px.iter().min().unwrap(), 0, "{name}");
        assert_eq!(*px.iter().max().unwrap(), 255, "{name}");
        assert_ne!(px, png(&cl.join(&name)).2);
    }
    // Frame 0 is alpha 0, the faces themselves: clamped, the bytes `render` writes for them.
    let rendered = p("faces.png");
    ok(&[
        "render",
        "--model",
        s(&t.model),
        "--ws",
        s(&t.faces_file),
        "--quiet",
        "-o",
        s(&rendered),
    ]);
    assert_eq!(png(&cl.join("frame0000.png")), png(&rendered));
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn assert_empty_dir(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn mp4_goes_through_ffmpeg_or_fails_clearly() {
    let t = setup();
    let out_dir = t.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let empty = t.dir.path().join("empty_path");
    std::fs::create_dir(&empty).unwrap();
    let args = |direction: &Path, out: &Path| -> Vec<String> {
        [
            "clip",
            "--model",
            s(&t.model),
            "--ws",
            s(&t.faces_file),
            "--direction",
            s(direction),
            "--frames",
            "4",
            "--grid",
            "--save-latents",
            s(&out_dir.join("lat.npy")),
            "-o",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };

    let mp4 = out_dir.join("clip.mp4");
    fails_env(
        &strs(&args(&t.d_file, &mp4)),
        Some(&empty),
        &["ffmpeg", "`ffmpeg` package"],
    );
    assert_empty_dir(&out_dir);

    // The paper's direction belongs to the 1024 px FFHQ model, not to the 32 px test network.
    let smile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/paper/d_latent_smile.pt");
    let gif = out_dir.join("clip.gif");
    fails_env(
        &strs(&args(&smile, &gif)),
        None,
        &["d_latent_smile.pt", "[1, 18, 512]", "[8, 64]"],
    );
    assert_empty_dir(&out_dir);

    // A stand-in ffmpeg that stores what it is sent: the frames arrive as raw rgb24, and the file is renamed
    // into place only once ffmpeg exits successfully.
    let bin = t.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("ffmpeg");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -version ] && exit 0\nfor last; do :; done\nexec /bin/cat > \"$last\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = mmengine_env(&strs(&args(&t.d_file, &mp4)), Some(&bin));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&mp4).unwrap().len(), 4 * 64 * 64 * 3);
    let mut left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["clip.mp4", "lat.npy"]);

    // An ffmpeg that fails: its last message ends our one error line, and nothing is left behind.
    std::fs::remove_file(&mp4).unwrap();
    std::fs::remove_file(out_dir.join("lat.npy")).unwrap();
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -version ] && exit 0\necho \"Unknown encoder 'libx264'\" >&2\nexit 1\n",
    )
    .unwrap();
    fails_env(
        &strs(&args(&t.d_file, &mp4)),
        Some(&bin),
        &["clip.mp4", "ffmpeg failed", "Unknown encoder 'libx264'"],
    );
    assert_empty_dir(&out_dir);
}

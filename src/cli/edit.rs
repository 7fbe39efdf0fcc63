//! `edit` (one image per face, moved along a direction) and `clip` (the paper's micromotion clip of each face).

use super::render::{
    check_output_ext, check_parent, load_model, load_ws, render_batches, render_to_output,
    NoiseArgs, RunArgs,
};
use crate::backend::NoiseMode;
use crate::bail;
use crate::error::{Error, Result};
use crate::io::image::{self, Images8, Normalize};
use crate::io::npy::NpyStream;
use crate::io::video::{self, ClipKind, ClipWriter, FrameSize};
use crate::micromotion::direction;
use crate::tensor::Tensor;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EditArgs {
    /// Checkpoint (default: the bundled demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Faces: W [N, w_dim] or W+ [N, num_ws, w_dim] latents (.npy, .npz key `w`, .pt, .safetensors[:name]).
    #[arg(long)]
    ws: String,
    /// Direction: a fitted .safetensors (its `direction`), a paper .pt [1, L, D], [L, D], or a W direction [D].
    #[arg(long)]
    direction: String,
    /// Step along the direction: each face becomes w + alpha * d.
    #[arg(long, allow_hyphen_values = true)]
    alpha: f32,
    #[command(flatten)]
    noise: NoiseArgs,
    #[command(flatten)]
    run: RunArgs,
    /// OUT.npy (raw float32 NCHW), OUT.png (one grid image) or a directory (face000.png, ...).
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NormalizeArg {
    /// Each frame stretched to 0..255 (the paper's clips).
    Minmax,
    /// x * 127.5 + 128, clamped (as `render`).
    Clamp,
}

#[derive(Args)]
pub struct ClipArgs {
    /// Checkpoint (default: the bundled demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Faces: W [N, w_dim] or W+ [N, num_ws, w_dim] latents (.npy, .npz key `w`, .pt, .safetensors[:name]).
    #[arg(long)]
    ws: String,
    /// Direction: a fitted .safetensors (its `direction`), a paper .pt [1, L, D], [L, D], or a W direction [D].
    #[arg(long)]
    direction: String,
    /// Frame i is w + (i / 100) * scale * d (the paper's schedule).
    #[arg(long, default_value_t = 5.0, allow_hyphen_values = true)]
    scale: f32,
    /// Frames per clip.
    #[arg(long, default_value_t = 100)]
    frames: usize,
    /// A:B:N instead of the paper's schedule: N alphas evenly from A to B, both included.
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["scale", "frames"])]
    alphas: Option<String>,
    #[arg(long, value_enum, default_value_t = NormalizeArg::Minmax)]
    normalize: NormalizeArg,
    /// Frames per second (GIF delays are whole hundredths of a second).
    #[arg(long, default_value_t = 30.0)]
    fps: f32,
    #[command(flatten)]
    run: RunArgs,
    /// One clip with every face side by side (a grid) instead of one clip per face.
    #[arg(long)]
    grid: bool,
    /// Also write the latents of every frame, float32 [N * frames, num_ws, w_dim], face by face.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// OUT.gif, OUT.mp4 (needs ffmpeg) or a directory of PNG frames. Several faces without --grid give one clip
    /// each: OUT_face000.gif, ... beside OUT, or OUT/face000/frame0000.png, ... for a directory.
    #[arg(short, long)]
    output: PathBuf,
}

fn face_name(i: usize) -> String {
    format!("face{i:03}")
}

pub fn edit(args: EditArgs) -> Result<()> {
    args.run.start()?;
    if !args.alpha.is_finite() {
        bail!("--alpha must be a finite number, got {}", args.alpha);
    }
    let net = load_model(args.model.as_deref())?;
    let ws = load_ws(&net, &args.ws)?;
    let n = ws.shape[0];
    if n == 0 {
        bail!("{}: no faces to edit", args.ws);
    }
    let d = direction::load(&args.direction, net.num_ws, net.w_dim)?;
    let edited = direction::shift(&ws, &d, args.alpha)?;
    let names = (0..n).map(|i| face_name(i) + ".png").collect();
    let backend = args.run.open_backend(net)?;
    render_to_output(
        backend.as_ref(),
        &args.output,
        names,
        &args.run,
        "edit",
        |first| args.noise.mode(first),
        |range| Ok(edited.slice_rows(range.start, range.end)),
    )
}

/// `A:B:N`.
fn parse_alphas(spec: &str) -> Result<Vec<f32>> {
    let bad = || Error::invalid(format!("--alphas {spec}: expected A:B:N, e.g. -3:3:61"));
    let parts: Vec<&str> = spec.split(':').collect();
    let [a, b, n] = parts.as_slice() else {
        return Err(bad());
    };
    let (a, b): (f32, f32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if !(a.is_finite() && b.is_finite()) || n == 0 {
        return Err(bad());
    }
    Ok(direction::linspace(a, b, n))
}

/// The clip files: OUT itself for one clip, else one per face beside it (files) or inside it (directories).
fn clip_paths(out: &Path, kind: ClipKind, clips: usize) -> Vec<PathBuf> {
    if clips == 1 {
        return vec![out.to_path_buf()];
    }
    (0..clips)
        .map(|i| match kind {
            ClipKind::Frames => out.join(face_name(i)),
            ClipKind::Gif | ClipKind::Mp4 => {
                let stem = out.file_stem().unwrap_or_default().to_string_lossy();
                let ext = out.extension().unwrap_or_default().to_string_lossy();
                out.with_file_name(format!("{stem}_{}.{ext}", face_name(i)))
            }
        })
        .collect()
}

pub fn clip(args: ClipArgs) -> Result<()> {
    args.run.start()?;
    let alphas = match &args.alphas {
        Some(spec) => parse_alphas(spec)?,
        None => {
            if !args.scale.is_finite() {
                bail!("--scale must be a finite number, got {}", args.scale);
            }
            direction::paper_alphas(args.scale, args.frames)
        }
    };
    let frames = alphas.len();
    if frames == 0 {
        bail!("--frames must be at least 1");
    }
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be a positive number, got {}", args.fps);
    }
    let kind = ClipKind::of(&args.output)?;
    if kind == ClipKind::Mp4 {
        video::check_ffmpeg()?;
    }
    if kind != ClipKind::Frames {
        check_parent(&args.output)?;
    }
    if let Some(path) = &args.save_latents {
        check_output_ext(path, &["npy"])?;
        check_parent(path)?;
    }
    let norm = match args.normalize {
        NormalizeArg::Minmax => Normalize::MinMax,
        NormalizeArg::Clamp => Normalize::Clamp,
    };

    let net = load_model(args.model.as_deref())?;
    let ws = load_ws(&net, &args.ws)?;
    let n = ws.shape[0];
    if n == 0 {
        bail!("{}: no faces to animate", args.ws);
    }
    let d = direction::load(&args.direction, net.num_ws, net.w_dim)?;
    let (l, wd, res, ch) = (net.num_ws, net.w_dim, net.resolution, net.img_channels);
    let row = l * wd;
    let mut latents_out = match &args.save_latents {
        Some(path) => Some(NpyStream::create(path, &[n * frames, l, wd])?),
        None => None,
    };

    // Render order: face by face, or frame by frame for the grid, so that every clip frame is complete as soon
    // as its images are in and nothing but the frame being assembled is held in memory.
    let clips = if args.grid { 1 } else { n };
    let locate = |k: usize| {
        if args.grid {
            (k % n, k / n)
        } else {
            (k / frames, k % frames)
        }
    };
    let size = if args.grid {
        let (cols, rows) = image::grid_shape(n);
        FrameSize {
            width: cols * res,
            height: rows * res,
            channels: ch,
        }
    } else {
        FrameSize {
            width: res,
            height: res,
            channels: ch,
        }
    };
    let paths = clip_paths(&args.output, kind, clips);
    let mut finished: Vec<PathBuf> = Vec::new();
    let mut writer: Option<ClipWriter> = None;
    let mut cells: Vec<Vec<u8>> = Vec::with_capacity(n);
    let backend = args.run.open_backend(net)?;
    let result = render_batches(
        n * frames,
        &args.run,
        "clip",
        |range| {
            let mut data = Vec::with_capacity(range.len() * row);
            for k in range.clone() {
                let (face, frame) = locate(k);
                let w = &ws.data[face * row..(face + 1) * row];
                direction::shift_into(w, &d, alphas[frame], &mut data);
            }
            Tensor::new(vec![range.len(), l, wd], data)
        },
        |first, ws| {
            // Clamped frames are converted where they are rendered (a GPU then downloads a byte per value);
            // min-max needs each frame's floats.
            let images = match norm {
                Normalize::Clamp => backend.synthesize_u8(ws, NoiseMode::Const)?,
                Normalize::MinMax => {
                    Images8::from_tensor_with(&backend.synthesize(ws, NoiseMode::Const)?, norm)?
                }
            };
            for i in 0..images.count {
                let (face, frame) = locate(first + i);
                let pixels = images.image(i).to_vec();
                let (clip, pixels) = if args.grid {
                    cells.push(pixels);
                    if cells.len() < n {
                        continue;
                    }
                    let (grid, _, _) = image::tile(&cells, res, res, ch);
                    cells.clear();
                    (0, grid)
                } else {
                    (face, pixels)
                };
                if writer.is_none() {
                    writer = Some(ClipWriter::create(&paths[clip], kind, size, args.fps)?);
                }
                writer.as_mut().expect("just opened").push(&pixels)?;
                if frame == frames - 1 {
                    writer.take().expect("open").finish()?;
                    finished.push(paths[clip].clone());
                }
            }
            Ok(())
        },
    )
    .and_then(|()| match latents_out.take() {
        Some(mut stream) => {
            let mut data = Vec::with_capacity(frames * row);
            for w in ws.data.chunks(row) {
                data.clear();
                for &alpha in &alphas {
                    direction::shift_into(w, &d, alpha, &mut data);
                }
                stream.write(&data)?;
            }
            stream.finish().map(|_| ())
        }
        None => Ok(()),
    });
    if let Err(e) = result {
        // No partial output: the clips that were already complete go too.
        if kind != ClipKind::Frames {
            for p in &finished {
                let _ = std::fs::remove_file(p);
            }
        }
        return Err(e);
    }
    if !args.run.quiet {
        let shown = match paths.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} ... ({} clips)", many[0].display(), many.len()),
        };
        eprintln!("wrote {shown}, {frames} frames each");
    }
    Ok(())
}

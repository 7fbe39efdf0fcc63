//! `info`, `convert`, `map` and `render`.

use super::device::{open_backend, DeviceArg};
use super::progress;
use crate::backend::{Backend, NoiseMode, Truncation};
use crate::bail;
use crate::cuda::Precision;
use crate::error::{Error, Result};
use crate::io::{image, latents, npy};
use crate::model::{self, Network};
use crate::seeds;
use crate::tensor::Tensor;
use clap::{ArgGroup, Args, ValueEnum};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NoiseArg {
    Const,
    None,
    Random,
}

/// Where latents come from and how they are truncated (shared by `map` and `render`).
#[derive(Args)]
pub struct LatentArgs {
    /// Seeds, NVlabs style: `0-7,12,20-23`; z = np.random.RandomState(seed).randn(z_dim).
    #[arg(long)]
    seeds: Option<String>,
    /// z latents [N, z_dim] (.npy, .npz, .pt, .safetensors[:name]).
    #[arg(long)]
    z: Option<String>,
    /// Truncation psi (1 = none).
    #[arg(long, default_value_t = 1.0)]
    trunc: f32,
    /// Truncate only the first N ws (NVlabs truncation_cutoff).
    #[arg(long)]
    trunc_cutoff: Option<usize>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["seeds", "z"])))]
pub struct MapArgs {
    /// Checkpoint (default: the bundled demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    latents: LatentArgs,
    /// Output .npy, float32 [N, num_ws, w_dim].
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["seeds", "z", "ws"])))]
pub struct RenderArgs {
    /// Checkpoint (default: the bundled demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    latents: LatentArgs,
    /// W [N, w_dim] or W+ [N, num_ws, w_dim] latents (.npy, .npz key `w`, .pt, .safetensors[:name]).
    #[arg(long)]
    ws: Option<String>,
    #[command(flatten)]
    noise: NoiseArgs,
    #[command(flatten)]
    run: RunArgs,
    /// OUT.npy (raw float32 NCHW), OUT.png (one grid image) or a directory (one PNG per image).
    #[arg(short, long)]
    output: PathBuf,
}

/// `--noise-mode` and its seed (shared by `render` and `edit`).
#[derive(Args)]
pub struct NoiseArgs {
    #[arg(long, value_enum, default_value_t = NoiseArg::Const)]
    noise_mode: NoiseArg,
    /// Seed of `--noise-mode random`.
    #[arg(long, default_value_t = 0)]
    noise_seed: u32,
}

impl NoiseArgs {
    /// The mode's name on the command line.
    pub fn name(&self) -> &'static str {
        match self.noise_mode {
            NoiseArg::Const => "const",
            NoiseArg::None => "none",
            NoiseArg::Random => "random",
        }
    }

    /// The noise of a batch that starts at image `first_image` of the job.
    pub fn mode(&self, first_image: usize) -> NoiseMode {
        match self.noise_mode {
            NoiseArg::Const => NoiseMode::Const,
            NoiseArg::None => NoiseMode::None,
            NoiseArg::Random => NoiseMode::Random {
                seed: self.noise_seed,
                first_image,
            },
        }
    }
}

/// How a rendering job runs (shared by every command that renders).
#[derive(Args)]
pub struct RunArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// cpu, emu (the CUDA kernels in the host emulation) or cuda[:N].
    #[arg(long, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// fp32 (exact), or tf32, fp16, bf16 on a CUDA device's tensor cores (fp32 accumulation).
    #[arg(long, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Images per device pass (cuda, emu): the device computes a batch in passes, one after another while the
    /// previous one downloads (default: planned, 32 at 1024 px; free device memory may lower it).
    #[arg(long)]
    pub pass_images: Option<usize>,
}

impl RunArgs {
    /// Check the settings and size the worker pool.
    pub fn start(&self) -> Result<()> {
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.pass_images == Some(0) {
            bail!("--pass-images must be at least 1");
        }
        set_threads(self.threads)?;
        self.device.check_available()
    }

    /// The backend of --device and --precision for `net`, with --pass-images.
    pub fn open_backend(&self, net: Network) -> Result<Box<dyn Backend>> {
        let backend = open_backend(self.device, net, self.precision)?;
        set_pass_images(backend.as_ref(), self.pass_images)?;
        Ok(backend)
    }
}

/// --pass-images, where given.
pub(super) fn set_pass_images(backend: &dyn Backend, images: Option<usize>) -> Result<()> {
    match images {
        Some(n) => backend
            .set_images_per_pass(n)
            .map_err(|e| Error::invalid(format!("--pass-images {n}: {e}"))),
        None => Ok(()),
    }
}

pub(super) fn load_model(path: Option<&Path>) -> Result<Network> {
    match path {
        Some(p) => model::load(p),
        None => model::bundled(),
    }
}

pub fn info(path: &Path, show_layers: bool) -> Result<()> {
    let net = model::load(path)?;
    println!("file:            {}", path.display());
    println!("format:          {}", net.source);
    println!(
        "resolution:      {0}x{0}, {1} channels",
        net.resolution, net.img_channels
    );
    println!("z_dim:           {}", net.z_dim);
    println!("w_dim:           {}", net.w_dim);
    println!("num_ws:          {}", net.num_ws);
    println!(
        "mapping layers:  {} (lr multiplier {})",
        net.mapping.len(),
        net.mapping_lr_mul
    );
    let channels: Vec<String> = net
        .channels_per_resolution()
        .iter()
        .map(|(r, c)| format!("{r}:{c}"))
        .collect();
    println!("channels:        {}", channels.join(" "));
    match net.conv_clamp {
        Some(c) => println!("conv_clamp:      {c}"),
        None => println!("conv_clamp:      none"),
    }
    println!("w_avg:           {}", net.w_avg_origin);
    println!("parameters:      {}", net.parameter_count());
    if show_layers {
        println!(
            "\n{:<10} {:>3} {:>5} {:>5} {:>5} {:>3} {:>2} {:>6} {:>6} {:>5}",
            "layer", "ws", "in", "out", "res", "up", "k", "demod", "noise", "fp16"
        );
        for l in &net.layers {
            println!(
                "{:<10} {:>3} {:>5} {:>5} {:>5} {:>3} {:>2} {:>6} {:>6} {:>5}",
                l.name,
                l.ws_index,
                l.in_channels,
                l.out_channels,
                l.resolution,
                l.up,
                l.kernel,
                l.demodulate,
                l.noise.is_some(),
                l.fp16
            );
        }
    }
    Ok(())
}

pub fn convert(path: &Path, output: &Path) -> Result<()> {
    let net = model::load(path)?;
    model::canonical::save(&net, output)?;
    eprintln!(
        "wrote {} ({} parameters, from {})",
        output.display(),
        net.parameter_count(),
        net.source.original()
    );
    Ok(())
}

/// The latents of a job: z to map, or ws ready to synthesize.
enum Latents {
    Z(Tensor),
    Ws(Tensor),
}

fn resolve_latents(
    net: &Network,
    args: &LatentArgs,
    ws_file: Option<&str>,
) -> Result<(Latents, Option<Vec<u32>>)> {
    if !(args.trunc.is_finite()) {
        bail!("--trunc must be a finite number, got {}", args.trunc);
    }
    if let Some(spec) = &args.seeds {
        let seeds = seeds::parse_seeds(spec)?;
        let mut z = Vec::with_capacity(seeds.len() * net.z_dim);
        for &s in &seeds {
            z.extend(seeds::z_from_seed(s, net.z_dim));
        }
        let z = Tensor::new(vec![seeds.len(), net.z_dim], z)?;
        return Ok((Latents::Z(z), Some(seeds)));
    }
    if let Some(spec) = &args.z {
        let z = latents::read_latents(spec)?;
        check_finite(spec, &z)?;
        if z.ndim() != 2 || z.shape[1] != net.z_dim {
            bail!(
                "{spec}: z has shape {:?}, the model expects [N, {}]",
                z.shape,
                net.z_dim
            );
        }
        return Ok((Latents::Z(z), None));
    }
    let spec = ws_file.expect("clap requires one input");
    Ok((Latents::Ws(load_ws(net, spec)?), None))
}

/// W `[N, w_dim]` or W+ `[N, num_ws, w_dim]` latents from a file, as W+.
pub(super) fn load_ws(net: &Network, spec: &str) -> Result<Tensor> {
    let w = latents::read_latents(spec)?;
    check_finite(spec, &w)?;
    to_ws(net, w).map_err(|e| Error::invalid(format!("{spec}: {e}")))
}

fn check_finite(spec: &str, t: &Tensor) -> Result<()> {
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{spec}: element {i} is {} (latents must be finite)",
            t.data[i]
        );
    }
    Ok(())
}

/// W `[N, w_dim]` is broadcast to every layer; W+ `[N, num_ws, w_dim]` is taken as it is.
fn to_ws(net: &Network, w: Tensor) -> Result<Tensor> {
    let (l, d) = (net.num_ws, net.w_dim);
    match w.shape.as_slice() {
        &[n, dd] if dd == d => {
            let mut data = Vec::with_capacity(n * l * d);
            for row in w.data.chunks(d) {
                for _ in 0..l {
                    data.extend_from_slice(row);
                }
            }
            Tensor::new(vec![n, l, d], data)
        }
        &[_, ll, dd] if ll == l && dd == d => Ok(w),
        s => bail!("latent has shape {s:?}; the model expects W [N, {d}] or W+ [N, {l}, {d}]"),
    }
}

fn make_ws(
    backend: &dyn Backend,
    net: &Network,
    lat: &Latents,
    range: std::ops::Range<usize>,
    t: Truncation,
) -> Result<Tensor> {
    match lat {
        Latents::Z(z) => backend.map(&z.slice_rows(range.start, range.end), t),
        Latents::Ws(ws) => {
            let mut ws = ws.slice_rows(range.start, range.end);
            crate::cpu::mapping::truncate(net, &mut ws, t);
            Ok(ws)
        }
    }
}

fn truncation(args: &LatentArgs, net: &Network) -> Result<Truncation> {
    if let Some(c) = args.trunc_cutoff {
        if c > net.num_ws {
            bail!(
                "--trunc-cutoff {c} exceeds the model's num_ws ({})",
                net.num_ws
            );
        }
    }
    Ok(Truncation {
        psi: args.trunc,
        cutoff: args.trunc_cutoff,
    })
}

pub fn map(args: MapArgs) -> Result<()> {
    let net = load_model(args.model.as_deref())?;
    let trunc = truncation(&args.latents, &net)?;
    let (lat, _) = resolve_latents(&net, &args.latents, None)?;
    let backend = open_backend(DeviceArg::Cpu, net, Precision::Fp32)?;
    let Latents::Z(z) = &lat else {
        unreachable!("map takes z or seeds")
    };
    let ws = backend.map(z, trunc)?;
    check_output_ext(&args.output, &["npy"])?;
    npy::write_npy(&args.output, &ws)?;
    eprintln!("wrote {} {:?}", args.output.display(), ws.shape);
    Ok(())
}

pub(super) fn check_output_ext(path: &Path, allowed: &[&str]) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !allowed.contains(&ext) {
        bail!(
            "{}: unsupported output type; use {}",
            path.display(),
            allowed
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    Ok(())
}

/// A file output must have a folder to go to: checked before rendering, not after.
pub(super) fn check_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("folder {} does not exist", dir.display()),
                ),
            ));
        }
    }
    Ok(())
}

/// Where rendered images go.
pub(super) enum Sink {
    /// Raw float32 NCHW, streamed to a temporary file and renamed at the end.
    Npy(npy::NpyStream),
    /// One grid PNG, written once all images are in.
    Grid {
        path: PathBuf,
        images: Vec<image::Images8>,
    },
    /// One PNG per image.
    Dir { dir: PathBuf, names: Vec<String> },
}

impl Sink {
    /// `names` are the file names of the images when `path` is a directory.
    pub(super) fn create(path: &Path, shape: &[usize], names: Vec<String>) -> Result<Sink> {
        let ext = path.extension().and_then(|e| e.to_str());
        if path.is_dir() || ext.is_none() {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
            return Ok(Sink::Dir {
                dir: path.to_path_buf(),
                names,
            });
        }
        match ext {
            Some("npy") => Ok(Sink::Npy(npy::NpyStream::create(path, shape)?)),
            Some("png") => {
                // The grid is written at the end: refuse a missing folder now, before any rendering.
                check_parent(path)?;
                Ok(Sink::Grid {
                path: path.to_path_buf(),
                    images: Vec::new(),
                })
            }
            _ => bail!(
                "{}: unsupported output type; use .npy (raw float32), .png (one grid image) or a directory",
                path.display()
            ),
        }
    }

    /// Synthesizes a batch (`first`: the index of its first image) and writes it: f32 for a `.npy`, 8-bit images
    /// for PNGs, which the backend converts before they leave the device.
    pub(super) fn render(
        &mut self,
        backend: &dyn Backend,
        first: usize,
        ws: &Tensor,
        noise: NoiseMode,
    ) -> Result<()> {
        match self {
            Sink::Npy(stream) => stream.write(&backend.synthesize(ws, noise)?.data),
            Sink::Grid { images, .. } => {
                images.push(backend.synthesize_u8(ws, noise)?);
                Ok(())
            }
            // PNG encoding costs far more than a GPU's synthesis of the image: encode the batch on every core.
            Sink::Dir { dir, names } => {
                let images = backend.synthesize_u8(ws, noise)?;
                (0..images.count).into_par_iter().try_for_each(|i| {
                    image::write_image_png(dir.join(&names[first + i]), &images, i)
                })
            }
        }
    }

    pub(super) fn finish(self) -> Result<String> {
        match self {
            Sink::Npy(stream) => stream.finish().map(|p| p.display().to_string()),
            Sink::Grid { path, images } => {
                image::write_grid_png(&path, &image::Images8::cat(images)?)?;
                Ok(path.display().to_string())
            }
            Sink::Dir { dir, names } => Ok(format!("{} ({} images)", dir.display(), names.len())),
        }
    }
}

/// `--threads N`: size rayon's global pool (the CPU backend's workers).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::invalid(format!("--threads {n}: {e}")))?;
    }
    Ok(())
}

/// Render `n` images in batches of `run.batch`, with the progress bar: `ws_of` gives the ws of a range of images,
/// `render` synthesizes and stores each batch given the index of its first image.
pub(super) fn render_batches(
    n: usize,
    run: &RunArgs,
    what: &str,
    mut ws_of: impl FnMut(std::ops::Range<usize>) -> Result<Tensor>,
    mut render: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let bar = progress::bar(n, n.div_ceil(run.batch), run.quiet, what);
    for start in (0..n).step_by(run.batch) {
        let end = (start + run.batch).min(n);
        render(start, &ws_of(start..end)?)?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Render one image per entry of `names` in batches into `output` (a `.npy`, a `.png` grid, or a folder of PNGs
/// called `names`), then say where they went. Shared by `render` and `edit`.
pub(super) fn render_to_output(
    backend: &dyn Backend,
    output: &Path,
    names: Vec<String>,
    run: &RunArgs,
    what: &str,
    noise: impl Fn(usize) -> NoiseMode,
    ws_of: impl FnMut(std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<()> {
    let net = backend.network();
    let n = names.len();
    let shape = [n, net.img_channels, net.resolution, net.resolution];
    let mut sink = Sink::create(output, &shape, names)?;
    render_batches(n, run, what, ws_of, |first, ws| {
        sink.render(backend, first, ws, noise(first))
    })?;
    let written = sink.finish()?;
    if !run.quiet {
        eprintln!("wrote {written}");
    }
    Ok(())
}

pub fn render(args: RenderArgs) -> Result<()> {
    args.run.start()?;
    let net = load_model(args.model.as_deref())?;
    let trunc = truncation(&args.latents, &net)?;
    let (lat, seeds) = resolve_latents(&net, &args.latents, args.ws.as_deref())?;
    let n = match &lat {
        Latents::Z(z) => z.shape[0],
        Latents::Ws(ws) => ws.shape[0],
    };
    if n == 0 {
        bail!("no latents to render");
    }
    let names = match seeds {
        Some(seeds) => seeds.iter().map(|s| format!("seed{s:04}.png")).collect(),
        None => (0..n).map(|i| format!("img{i:05}.png")).collect(),
    };
    let backend = args.run.open_backend(net)?;
    render_to_output(
        backend.as_ref(),
        &args.output,
        names,
        &args.run,
        "render",
        |first| args.noise.mode(first),
        |range| make_ws(backend.as_ref(), backend.network(), &lat, range, trunc),
    )
}

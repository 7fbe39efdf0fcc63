//! `mmengine bench`: throughput of the generator on a device, for a checkpoint or a random-weight configuration.

use super::device::{open_backend, DeviceArg};
use super::render::NoiseArgs;
use crate::backend::{LayerProfile, Truncation};
use crate::bail;
use crate::cuda::profile::{bound_seconds, peaks, Peaks};
use crate::cuda::Precision;
use crate::error::Result;
use crate::model::{self, random};
use crate::seeds;
use crate::tensor::Tensor;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// Checkpoint to time (default: a random-weight network of --config).
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// Random-weight configuration: ffhq1024, ffhq512 or ffhq256.
    #[arg(long, default_value = "ffhq256")]
    config: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Untimed batches first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// cpu, emu or cuda[:N].
    #[arg(long, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// fp32, or tf32, fp16, bf16 on a CUDA device's tensor cores (the cpu device computes in fp32 only).
    #[arg(long, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also time each synthesis layer on its own (cuda and emu; the device waits after every layer) against its
    /// FLOPs and bytes, and, on a GPU with known peak rates (H100, H200), the roofline.
    #[arg(long)]
    profile: bool,
    /// The images each batch hands back: f32 (the raw tensor a pipeline reads) or u8 (8-bit pixels by NVlabs'
    /// rule, what `render` to PNG downloads from a GPU: a quarter of the bytes).
    #[arg(long, value_enum, default_value_t = ImageValues::F32)]
    images: ImageValues,
    /// Images per device pass (cuda, emu; default: planned, 32 at 1024 px): the batch is computed in passes,
    /// one after another while the previous one downloads.
    #[arg(long)]
    pass_images: Option<usize>,
    /// The noise of the timed batches, as for `render` (the profile uses the stored noise).
    #[command(flatten)]
    noise: NoiseArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageValues {
    F32,
    U8,
}

impl ImageValues {
    fn bytes(self) -> usize {
        match self {
            ImageValues::F32 => 4,
            ImageValues::U8 => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ImageValues::F32 => "f32",
            ImageValues::U8 => "u8",
        }
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.iters == 0 || args.pass_images == Some(0) {
        bail!("--batch, --iters and --pass-images must be at least 1");
    }
    super::render::set_threads(args.threads)?;
    let (net, name) = match &args.model {
        Some(p) => (model::load(p)?, p.display().to_string()),
        None => (
            random::network(&random::config(&args.config)?, 0)?,
            args.config.clone(),
        ),
    };
    let gflop_per_image = 2.0 * random::conv_macs(&net) / 1e9;
    let (res, z_dim) = (net.resolution, net.z_dim);
    // The images a batch hands back (on a GPU: what crosses the host link).
    let image_bytes = (net.img_channels * res * res * args.images.bytes()) as f64;
    let backend = open_backend(args.device, net, args.precision)?;
    super::render::set_pass_images(backend.as_ref(), args.pass_images)?;
    let pass = backend.images_per_pass(args.batch);
    let front = backend.front_pass(args.batch);
    let mut z = Vec::with_capacity(args.batch * z_dim);
    for i in 0..args.batch {
        z.extend(seeds::z_from_seed(i as u32, z_dim));
    }
    let z = Tensor::new(vec![args.batch, z_dim], z)?;
    if args.profile && args.device == DeviceArg::Cpu {
        bail!("--profile times the device kernels: use --device cuda or emu");
    }
    let run = || -> Result<f64> {
        let start = Instant::now();
        let ws = backend.map(&z, Truncation::default())?;
        let noise = args.noise.mode(0);
        match args.images {
            ImageValues::F32 => drop(backend.synthesize(&ws, noise)?),
            ImageValues::U8 => drop(backend.synthesize_u8(&ws, noise)?),
        }
        Ok(start.elapsed().as_secs_f64())
    };
    for _ in 0..args.warmup {
        run()?;
    }
    let times = (0..args.iters)
        .map(|_| run())
        .collect::<Result<Vec<f64>>>()?;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let images_per_s = args.batch as f64 / mean;
    let gflops = gflop_per_image * images_per_s;
    let output_gbytes = image_bytes * images_per_s / 1e9;
    let layers = if args.profile {
        let ws = backend.map(&z, Truncation::default())?;
        backend.profile(&ws)?
    } else {
        None
    };
    let device = backend.name();
    let rates = peaks(&device, args.precision);
    let peak = peak_rss_bytes();
    let peak_device = backend.peak_device_memory();
    if args.json {
        let report = serde_json::json!({
            "model": name,
            "device": device,
            "precision": args.precision.to_string(),
            "resolution": res,
            "batch": args.batch,
            "images_per_pass": pass,
            "front_pass": front.map(|f| serde_json::json!({
                "resolution": f.resolution,
                "images": f.images,
            })),
            "iters": args.iters,
            "images": args.images.name(),
            "noise": args.noise.name(),
            "ms_per_batch": mean * 1e3,
            "ms_per_batch_best": best * 1e3,
            "images_per_s": images_per_s,
            "gflop_per_image": gflop_per_image,
            "achieved_gflop_per_s": gflops,
            "achieved_tflop_per_s": gflops / 1e3,
            "output_gbyte_per_s": output_gbytes,
            "peak_memory_bytes": peak,
            "peak_device_memory_bytes": peak_device,
            "layers": layers.as_ref().map(|rows| profile_json(rows, rates)),
        });
        println!("{report}");
    } else {
        println!("model:        {name} ({res}x{res}, {gflop_per_image:.1} GFLOP/image)");
        println!("device:       {device} ({})", args.precision);
        println!("noise:        {}", args.noise.name());
        if let Some(pass) = pass {
            match front {
                Some(f) => println!(
                    "passes:       of {pass} images, the blocks up to {0}x{0} first over {1} images at a time",
                    f.resolution, f.images
                ),
                None => println!("passes:       of {pass} images"),
            }
        }
        println!(
            "batch {}:     {:.1} ms/batch (best {:.1}), {:.3} images/s, {:.1} GFLOP/s ({:.3} TFLOP/s)",
            args.batch,
            mean * 1e3,
            best * 1e3,
            images_per_s,
            gflops,
            gflops / 1e3
        );
        println!(
            "images out:   {output_gbytes:.3} GB/s of {} pixels (on a GPU, over the host link)",
            args.images.name()
        );
        match peak {
            Some(b) => println!(
                "peak memory:  {:.0} MiB (process RSS)",
                b as f64 / 1048576.0
            ),
            None => println!("peak memory:  unknown on this platform"),
        }
        if let Some(b) = peak_device {
            println!(
                "peak device memory: {:.0} MiB (the engine's buffers)",
                b as f64 / 1048576.0
            );
        }
        if let Some(rows) = &layers {
            print_profile(rows, rates);
        }
    }
    Ok(())
}

/// The per-layer table: time, achieved rates and, with known peaks, the roofline bound and the fraction of it
/// reached (bound time / measured time). Rows of the front ran over more images than the pass; the total counts
/// each row's share of the pass's images.
fn print_profile(rows: &[LayerProfile], rates: Option<Peaks>) {
    let images = pass_images(rows);
    match rows.first() {
        Some(first) if first.images != images => println!(
            "per layer, the device waiting after each layer: the first blocks in one pass of {} images, the \
             rest in one of {images}; the total for {images} images:",
            first.images
        ),
        _ => println!("per layer, one pass of {images} images, the device waiting after each layer:"),
    }
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "layer", "images", "GFLOP", "MB", "ms", "TFLOP/s", "GB/s", "bound ms", "of it"
    );
    let line = |r: &LayerProfile, bound: Option<f64>| {
        let (bound_ms, fraction) = match bound {
            Some(b) => (
                format!("{:.3}", b * 1e3),
                format!("{:.0}%", 100.0 * b / r.seconds),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<28} {:>6} {:>9.2} {:>9.1} {:>9.3} {:>9.2} {:>9.1} {bound_ms:>9} {fraction:>6}",
            r.name,
            r.images,
            r.flop / 1e9,
            r.bytes / 1e6,
            r.seconds * 1e3,
            r.flop / r.seconds / 1e12,
            r.bytes / r.seconds / 1e9
        );
    };
    for r in rows {
        line(r, rates.map(|p| bound_seconds(r, p)));
    }
    let (total, bound) = pass_total(rows, rates);
    line(&total, bound);
    if rates.is_none() {
        println!("(no roofline: the peak rates of this device are not known)");
    }
}

/// The images of the profile's pass (its last row's; front rows may hold more).
fn pass_images(rows: &[LayerProfile]) -> usize {
    rows.last().map_or(0, |r| r.images)
}

/// The profile's rows summed for the pass's images (a front row counts in proportion), and the sum of their
/// roofline bounds where the peaks are known.
fn pass_total(rows: &[LayerProfile], rates: Option<Peaks>) -> (LayerProfile, Option<f64>) {
    let images = pass_images(rows);
    let scaled: Vec<LayerProfile> = rows
        .iter()
        .map(|r| {
            let share = images as f64 / r.images as f64;
            LayerProfile {
                name: r.name.clone(),
                images,
                seconds: r.seconds * share,
                flop: r.flop * share,
                bytes: r.bytes * share,
            }
        })
        .collect();
    let sum = |f: fn(&LayerProfile) -> f64| scaled.iter().map(f).sum::<f64>();
    let total = LayerProfile {
        name: "total".to_string(),
        images,
        seconds: sum(|r| r.seconds),
        flop: sum(|r| r.flop),
        bytes: sum(|r| r.bytes),
    };
    let bound = rates.map(|p| scaled.iter().map(|r| bound_seconds(r, p)).sum());
    (total, bound)
}

fn profile_json(rows: &[LayerProfile], rates: Option<Peaks>) -> serde_json::Value {
    let layers: Vec<_> = rows
        .iter()
        .map(|r| {
            let bound = rates.map(|p| bound_seconds(r, p));
            serde_json::json!({
                "name": r.name,
                "images": r.images,
                "ms": r.seconds * 1e3,
                "gflop": r.flop / 1e9,
                "mbytes": r.bytes / 1e6,
                "tflop_per_s": r.flop / r.seconds / 1e12,
                "gbyte_per_s": r.bytes / r.seconds / 1e9,
                "bound_ms": bound.map(|b| b * 1e3),
                "fraction_of_bound": bound.map(|b| b / r.seconds),
            })
        })
        .collect();
    let (total, bound) = pass_total(rows, rates);
    serde_json::json!({
        "images": total.images,
        "rows": layers,
        "total_ms": total.seconds * 1e3,
        "peak_tflop_per_s": rates.map(|p| p.flop_per_s / 1e12),
        "peak_gbyte_per_s": rates.map(|p| p.bytes_per_s / 1e9),
        "bound_ms": bound.map(|b| b * 1e3),
        "fraction_of_bound": bound.map(|b| b / total.seconds),
    })
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

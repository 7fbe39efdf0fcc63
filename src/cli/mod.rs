//! The `mmengine` command line: argument parsing and the commands. This is the only layer that prints.

mod bench;
mod device;
mod doctor;
mod edit;
mod fit;
mod progress;
mod render;
mod selftest;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use device::{open_backend, DeviceArg};
pub use render::NoiseArg;

/// StyleGAN2 rendering and micromotion editing.
#[derive(Parser)]
#[command(name = "mmengine", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Describe a checkpoint: format, resolution, dimensions, channels, clamp, parameter count.
    Info {
        /// Checkpoint: rosinality .pt, NVlabs .pkl (PyTorch or TensorFlow) or mmengine .safetensors.
        model: PathBuf,
        /// Also print the layer table.
        #[arg(long)]
        layers: bool,
    },
    /// Convert a checkpoint to mmengine's memory-mapped safetensors format.
    Convert {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Map latents to ws and write them as float32 .npy [N, num_ws, w_dim].
    Map(render::MapArgs),
    /// Render images (PNG files, a PNG grid, or raw float32 .npy).
    Render(render::RenderArgs),
    /// Time the generator: images/s, ms per batch, GFLOP/s, peak memory.
    Bench(bench::BenchArgs),
    /// Fit the micromotion subspace to anchor latents (robust PCA per layer, rank-q reconstruction, direction).
    Fit(fit::FitArgs),
    /// Move faces along an edit direction and render them: one image per face, w + alpha * d.
    Edit(edit::EditArgs),
    /// Render the micromotion clip of each face along a direction (GIF, MP4 or PNG frames).
    Clip(edit::ClipArgs),
    /// What this build and machine can run: backends, GPUs, and the compiled kernel table.
    Doctor(doctor::DoctorArgs),
    /// Run the golden reference cases on a device and print each case's error and verdict.
    Selftest(selftest::SelftestArgs),
}

/// Run the parsed command; errors come back for `main` to print on one line.
pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Info { model, layers } => render::info(&model, layers),
        Command::Convert { model, output } => render::convert(&model, &output),
        Command::Map(args) => render::map(args),
        Command::Render(args) => render::render(args),
        Command::Bench(args) => bench::bench(args),
        Command::Fit(args) => fit::fit(args),
        Command::Edit(args) => edit::edit(args),
        Command::Clip(args) => edit::clip(args),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Selftest(args) => selftest::selftest(args),
    }
}

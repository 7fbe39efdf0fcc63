//! mmengine: StyleGAN2 rendering and the micromotion method.
//!
//! `io` reads and writes files, `model` turns checkpoints of every dialect into one [`model::Network`], `cpu`
//! executes it, `micromotion` fits the paper's edit subspace to anchor latents, `cli` wires the commands. Nothing
//! below `cli` prints.

pub mod backend;
pub mod cli;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod io;
pub mod micromotion;
pub mod model;
pub mod seeds;
pub mod selftest;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;

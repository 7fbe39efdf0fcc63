//! mmengine: StyleGAN2 rendering and the micromotion method.
//!
//! `io` reads and writes files, `model` turns checkpoints of every dialect into one [`model::Network`], `cpu`
//! executes it, `cli` wires the commands. Nothing below `cli` prints.

pub mod cpu;
pub mod error;
pub mod io;
pub mod model;
pub mod seeds;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;

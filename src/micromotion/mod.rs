//! The micromotion method's subspace fit (Wu et al., "Micromotion StyleGAN"): robust PCA of anchor latents per
//! W+ layer, a low-rank reconstruction, and the edit direction between two anchors. Everything runs on the CPU in
//! float64.

pub mod fit;
pub mod rpca;
pub mod svd;

pub use fit::{fit, Fit, FitOptions};
pub use rpca::{rpca, Rpca};
pub use svd::{svd, Svd};

//! The micromotion method (Wu et al., "Micromotion StyleGAN"): the subspace fit of anchor latents (robust PCA per
//! W+ layer, a low-rank reconstruction, and the edit direction between two anchors, in float64 on the CPU or, through
//! [`device::fit_on`], a CUDA device), and the edits along a direction.

pub mod cusolver;
pub mod device;
pub mod direction;
pub mod fit;
pub mod rpca;
pub mod svd;

pub use fit::{fit, Fit, FitOptions};
pub use rpca::{rpca, Rpca};
pub use svd::{svd, Svd};

//! The CPU backend: exact float32 reference ops and the generator built on them.

pub mod conv;
pub mod ops;

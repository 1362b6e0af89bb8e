//! densegpu: memory-efficient DenseNet training and inference on any GPU through WebGPU.

pub mod error;
pub mod gpu;
pub mod ops;
pub mod reference;

pub use error::{Error, Result};
pub use gpu::Gpu;

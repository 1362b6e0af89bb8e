//! densegpu: memory-efficient DenseNet training and inference on any GPU through WebGPU.

pub mod atomic_file;
pub mod checkpoint;
pub mod data;
pub mod densenet;
pub mod error;
pub mod executor;
pub mod gpu;
pub mod graph;
pub mod memory;
pub mod onnx;
pub mod ops;
pub mod reference;
pub mod schedule;
pub mod selftest;
pub mod train;

pub use densenet::{DenseNetConfig, MemoryMode};
pub use error::{Error, Result};
pub use executor::{Session, SgdHyper, StepResult};
pub use gpu::Gpu;
pub use schedule::Pass;

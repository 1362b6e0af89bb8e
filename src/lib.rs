//! densegpu: memory-efficient DenseNet training and inference on any GPU through WebGPU.

pub mod checkpoint;
pub mod data;
pub mod densenet;
pub mod error;
pub mod executor;
pub mod gpu;
pub mod graph;
pub mod onnx;
pub mod ops;
pub mod plan;
pub mod reference;
pub mod schedule;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use densenet::{DenseNetConfig, MemoryMode};
pub use executor::{Session, SgdHyper, StepResult};
pub use schedule::Mode;

//! densegpu: memory-efficient DenseNet training and inference on any GPU through WebGPU.

pub mod checkpoint;
pub mod data;
pub mod densenet;
pub mod error;
pub mod executor;
pub mod files;
pub mod gpu;
pub mod graph;
pub mod memory;
pub mod onnx;
pub mod ops;
pub mod peak;
pub mod profile;
pub mod reference;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
pub mod schedule;
pub mod selftest;
pub mod train;
pub mod trainer;
pub mod tune;

pub use densenet::{DenseNetConfig, MemoryMode};
pub use error::{Error, Result};
pub use executor::{Divergence, DivergenceSource, Session, SgdHyper, StepResult};
pub use gpu::Gpu;
pub use schedule::Pass;
pub use trainer::Trainer;

/// Runs a future to completion on the calling thread, for native callers of densegpu's async
/// API: examples, tests, command-line tools. Every GPU operation (creating a [`Gpu`] or a
/// [`Session`], a training step, a read-back, a checkpoint) is one `async fn`, which the
/// browser awaits from its event loop and a native program drives with this:
///
/// ```no_run
/// use densegpu::{block_on, Gpu};
/// let gpu = block_on(Gpu::new())?;
/// # Ok::<(), densegpu::Error>(())
/// ```
///
/// Not available on wasm32, where blocking the only thread would stall the GPU it waits for.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

//! Typed host functions around the WGSL kernels, one module per op family (and one shader
//! file per family under `shaders/`).
//!
//! Conventions every op follows:
//! - Activations are f32 in channel-major order (C, N, H, W): a channel prefix of a tensor is
//!   a contiguous range, so a dense layer reads the first `c` channels of its block in place.
//!   Conv weights are OIHW and linear weights (out, in), exactly as PyTorch stores them.
//! - A tensor is passed as a [`View`]: a buffer and an element offset. Inputs and outputs may
//!   share one buffer (the arena) as long as their ranges do not overlap.
//! - A kernel that writes a gradient takes `accumulate`: `false` overwrites the output, `true`
//!   adds to it. Dense blocks need the latter, because every later layer adds to the gradient
//!   of the channels it read.
//! - Host functions validate nothing about buffer sizes beyond what wgpu validates; shapes
//!   are checked by the graph that builds them.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod sgd;

pub(crate) use crate::gpu::shaders;
pub(crate) use crate::gpu::{grid, Kernel};
pub use crate::gpu::{Dispatch, View, Window};
pub use crate::Gpu;

/// `true` as a WGSL `u32` flag.
pub(crate) fn flag(b: bool) -> u32 {
    b as u32
}

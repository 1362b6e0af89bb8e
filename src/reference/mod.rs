//! Plain-Rust reference implementations of every op, forward and backward, in the same
//! layouts and with the same semantics as the GPU kernels, accumulating in f64. They exist to
//! test the kernels; nothing in the engine calls them.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod graph;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod sgd;

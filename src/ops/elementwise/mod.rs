//! ReLU on its own (where it does not follow a batch norm), the copy that the naive memory
//! mode uses to materialise concatenations, gradient accumulation, and dropout.
//!
//! Every kernel here takes the same parameter block, [`ElementwiseParams`].

pub mod kernels;

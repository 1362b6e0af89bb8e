//! The fully connected classifier on (features, N) activations (channel-major with 1x1
//! spatial, as the global average pool leaves them); weights (out, in) as PyTorch stores them.
//!
//! Every linear kernel takes a [`LinearParams`] block, where `offN` is the element offset of
//! the tensor at binding N (see each function for which tensor that is).

pub mod kernels;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub n: u32,
    pub in_features: u32,
    pub out_features: u32,
}

impl LinearShape {
    pub fn new(n: u32, in_features: u32, out_features: u32) -> Self {
        LinearShape { n, in_features, out_features }
    }
}

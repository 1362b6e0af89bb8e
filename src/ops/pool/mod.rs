//! Pooling on channel-major (C, N, H, W) activations: the transitions' 2x2 average pool, the
//! ImageNet stem's 3x3 stride-2 pad-1 max pool, and the head's global average pool, each with
//! its backward. Output shapes follow PyTorch (floor mode, padding never selected).
//!
//! Every pool kernel takes a [`PoolParams`] block, where `offN` is the element offset of the
//! tensor at binding N (see each function for which tensor that is).

pub mod kernels;

/// The shape of a pool's input, (C, N, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub c: u32,
    pub n: u32,
    pub h: u32,
    pub w: u32,
}

impl PoolShape {
    pub fn new(c: u32, n: u32, h: u32, w: u32) -> Self {
        PoolShape { c, n, h, w }
    }
    /// Elements of the input.
    pub fn len(&self) -> usize {
        self.planes() as usize * (self.h * self.w) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Independent H x W planes, C·N.
    pub fn planes(&self) -> u32 {
        self.c * self.n
    }
    /// Output (height, width) of the 2x2 stride-2 average pool: floor(h/2), floor(w/2).
    pub fn avg_out(&self) -> (u32, u32) {
        (self.h / 2, self.w / 2)
    }
    /// Output (height, width) of the 3x3 stride-2 pad-1 max pool: floor((h − 1)/2) + 1.
    pub fn max_out(&self) -> (u32, u32) {
        (self.h.saturating_sub(1) / 2 + 1, self.w.saturating_sub(1) / 2 + 1)
    }
}

//! Batch norm (PyTorch `BatchNorm2d` semantics) with an optional fused ReLU, forward and
//! backward, over channel-major (C, N, H, W) activations.
//!
//! Each batch norm owns four small tensors of 2C contiguous floats:
//! - `affine` = [gamma(C), beta(C)] and its gradient `grad_affine` = [dgamma(C), dbeta(C)];
//! - `running` = [running_mean(C), running_var(C)], updated once per training step;
//! - `stats` = [mean(C), invstd(C)]: the statistics the normalisation uses. Training writes the
//!   batch statistics there ([`batchnorm_train_stats`]), evaluation derives them from the
//!   running ones ([`batchnorm_eval_stats`]); [`batchnorm_apply`] and the backward kernels only
//!   read them. A recompute in backward therefore reuses the forward's statistics and never
//!   touches the running ones a second time.
//!
//! The backward kernels assume training mode (mean and variance are functions of x) and
//! recompute the ReLU mask from x, stats and affine, so the BN output need not be stored.
//!
//! Aliasing: the input `x` may be a channel prefix of a larger buffer (that is only an offset).
//! No output range may overlap any input range of the same launch.

pub mod kernels;

/// Channels, images and pixels per image; each channel holds `m() = n * hw` values.
///
/// A launch may cover a slice of a batch norm's channels: then `c` is the slice's width,
/// `first` its first channel and `total` the batch norm's channel count, which is what
/// its stats, affine, grad_affine and running tensors hold. The activation views (x, dy,
/// y or dx) are the slice's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchNormShape {
    pub c: u32,
    pub n: u32,
    pub hw: u32,
    pub first: u32,
    pub total: u32,
}

impl BatchNormShape {
    /// All `c` channels of a batch norm.
    pub fn new(c: u32, n: u32, hw: u32) -> Self {
        BatchNormShape { c, n, hw, first: 0, total: c }
    }
    /// Channels `[first, first + c)` of this (whole) batch norm.
    pub fn slice(self, first: u32, c: u32) -> Self {
        assert!(first + c <= self.total, "batch norm slice {first}+{c} of {} channels", self.total);
        BatchNormShape { c, first, ..self }
    }
    pub fn m(&self) -> u32 {
        self.n * self.hw
    }
    pub fn len(&self) -> u32 {
        self.c * self.m()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BatchNormShape {
    /// The most roundings a value passes through in this shape's per-channel sums (the
    /// statistics and the backward's dgamma and dbeta): each of the 256 invocations adds
    /// ceil(M / 256) values in order, then `reduce_pair` adds 16 partials and 16 totals. A sum
    /// of depth `d` lies within Higham's `γ_d · Σ|terms|` of the exact one ("Accuracy and
    /// Stability of Numerical Algorithms", 2nd ed., §3.1). Follows shaders/batchnorm.wgsl.
    pub fn sum_rounding_depth(&self) -> u64 {
        (self.m() as u64).div_ceil(WG as u64) + 32
    }
}

/// Invocations per workgroup of every kernel but `eval_stats` (batchnorm.wgsl's `WG`); the sums'
/// rounding depth depends on it.
const WG: u32 = 256;

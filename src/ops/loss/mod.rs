//! Softmax cross-entropy from class-major logits (K, N) and f32 class-index labels (N): the
//! batch-mean loss, the number of correct predictions, and (when training) the gradient
//! dlogits = (softmax − onehot) / N, all from one launch.
//!
//! Labels are validated by the host before upload. On the GPU a label that is NaN or outside
//! [0, K) never indexes memory: it makes the loss NaN and its dlogits column NaN, and does not
//! count as correct. A fractional label truncates toward zero.
//!
//! The kernel's [`LossParams`] block holds `classes`, `n`, `write_grad`, `accumulate`, then the
//! element offsets of logits, labels, dlogits and the [loss, correct] pair (bindings 1 to 4).

pub mod kernels;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossShape {
    pub classes: u32,
    pub n: u32,
}

impl LossShape {
    pub fn new(classes: u32, n: u32) -> Self {
        LossShape { classes, n }
    }
}

//! Softmax cross-entropy from class-major logits (K, N) and f32 class-index labels (N): the
//! batch-mean loss, the number of correct predictions, and (when training) the gradient
//! dlogits = (softmax − onehot) / N, all from one launch.
//!
//! Labels are validated by the host before upload. On the GPU a label that is NaN or outside
//! [0, K) never indexes memory: it makes the loss NaN and its dlogits column NaN, and does not
//! count as correct. A fractional label truncates toward zero.
//!
//! Parameter words, in order: `classes`, `n`, `write_grad`, `accumulate`, then the element
//! offsets of logits, labels, dlogits and the [loss, correct] pair (bindings 1 to 4).

use super::{flag, shaders, Dispatch, Gpu, Kernel, View};

const CROSS_ENTROPY: Kernel = Kernel { shader: &shaders::LOSS, entry: "cross_entropy", buffers: 4 };

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

/// Records the cross-entropy kernel.
///
/// - `stats` (2 floats) receives the batch-mean loss and then the count of samples
///   whose argmax (lowest index on ties) equals the label. With `accumulate_stats` both are
///   added to what the views already hold, so an evaluation pass can sum over many batches
///   before one readback (the mean stays per batch: divide by the batch count).
/// - `dlogits`: `Some` writes (overwrites) the gradient of the mean loss; `None` is the
///   evaluation-only variant.
pub fn cross_entropy(
    gpu: &Gpu,
    s: LossShape,
    logits: View,
    labels: View,
    dlogits: Option<View>,
    stats: View,
    accumulate_stats: bool,
) -> Dispatch {
    // Without a gradient, binding 3 still needs a window; the kernel never touches it.
    let (d, d_offset) = dlogits.map_or((gpu.unused_binding(0), 0), |v| (v.buffer, v.offset));
    let words = [
        s.classes,
        s.n,
        flag(dlogits.is_some()),
        flag(accumulate_stats),
        logits.offset,
        labels.offset,
        d_offset,
        stats.offset,
    ];
    let buffers = [logits.buffer, labels.buffer, d, stats.buffer];
    gpu.dispatch(&CROSS_ENTROPY, &words, &buffers, [1, 1, 1])
}

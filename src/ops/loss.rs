//! Softmax cross-entropy from class-major logits (K, N) and f32 class-index labels (N): the
//! batch-mean loss, the number of correct predictions, and (when training) the gradient
//! dlogits = (softmax − onehot) / N, all from one launch.
//!
//! Labels are validated by the host before upload. On the GPU a label that is NaN or outside
//! [0, K) never indexes memory: it makes the loss NaN and its dlogits column NaN, and does not
//! count as correct. A fractional label truncates toward zero.
//!
//! Parameter words, in order: `classes`, `n`, `write_grad`, `accumulate`, then the element
//! offsets of logits, labels, dlogits, loss, correct (bindings 1 to 5).

use super::{flag, shaders, Dispatch, Gpu, Kernel, View};

const CROSS_ENTROPY: Kernel = Kernel { shader: &shaders::LOSS, entry: "cross_entropy", buffers: 5 };

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
/// - `loss` (1 float) receives the batch-mean loss and `correct` (1 float) the count of samples
///   whose argmax (lowest index on ties) equals the label. With `accumulate_stats` both are
///   added to what the views already hold, so an evaluation pass can sum over many batches
///   before one readback (the mean stays per batch: divide by the batch count).
/// - `dlogits`: `Some` writes (overwrites) the gradient of the mean loss; `None` is the
///   evaluation-only variant.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    gpu: &Gpu,
    s: LossShape,
    logits: View,
    labels: View,
    dlogits: Option<View>,
    loss: View,
    correct: View,
    accumulate_stats: bool,
) -> Dispatch {
    // Without a gradient, binding 3 still needs a buffer; the kernel never touches it.
    let d = dlogits.unwrap_or(logits);
    let words = [
        s.classes,
        s.n,
        flag(dlogits.is_some()),
        flag(accumulate_stats),
        logits.offset,
        labels.offset,
        d.offset,
        loss.offset,
        correct.offset,
    ];
    let buffers = [logits.buffer, labels.buffer, d.buffer, loss.buffer, correct.buffer];
    gpu.dispatch(&CROSS_ENTROPY, &words, &buffers, [1, 1, 1])
}

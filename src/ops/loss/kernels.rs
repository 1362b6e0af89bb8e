//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::LossLaunch;
use super::LossShape;
use crate::executor::Recorder;
use crate::gpu::{shaders, Dispatch, Gpu, Kernel, View};
use crate::ops::flag;

const CROSS_ENTROPY: Kernel = Kernel { shader: &shaders::LOSS, entry: "cross_entropy", buffers: 4 };

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
    cross_entropy_of(gpu, s, s.n, logits, labels, dlogits, stats, accumulate_stats)
}

/// [`cross_entropy`] over `s.n` images of a batch of `n_total` (one batch shard): the loss
/// and its gradient are means over the whole batch.
#[allow(clippy::too_many_arguments)]
fn cross_entropy_of(
    gpu: &Gpu,
    s: LossShape,
    n_total: u32,
    logits: View,
    labels: View,
    dlogits: Option<View>,
    stats: View,
    accumulate_stats: bool,
) -> Dispatch {
    // Without a gradient, binding 3 still needs a window; the kernel never touches it.
    let (d, d_offset) = dlogits.map_or((gpu.unused_binding(0), 0), |v| (v.buffer, v.offset));
    let params = LossParams {
        classes: s.classes,
        n: s.n,
        n_total,
        write_grad: flag(dlogits.is_some()),
        accumulate: flag(accumulate_stats),
        off1: logits.offset,
        off2: labels.offset,
        off3: d_offset,
        off4: stats.offset,
    };
    let buffers = [logits.buffer, labels.buffer, d, stats.buffer];
    gpu.dispatch(&CROSS_ENTROPY, &params, &buffers, [1, 1, 1])
}

crate::uniform! {
    /// The parameter block of loss.wgsl.
    pub struct LossParams for shaders::LOSS {
        classes: u32,
        n: u32,
        n_total: u32,
        write_grad: u32,
        accumulate: u32,
        off1: u32,
        off2: u32,
        off3: u32,
        off4: u32,
    }
}

/// Records the loss launch of a schedule.
/// Once per batch shard: each shard's images add their share of the whole batch's mean loss
/// and their correct count to what the shards before them wrote.
pub(crate) fn record(launch: &LossLaunch, r: &mut Recorder) {
    let LossLaunch { shape, logits, labels, loss, dlogits } = *launch;
    r.each_shard(|r, shard| {
        let part = LossShape { n: shard.images, ..shape };
        let dlogits = dlogits.map(|d| r.view(d));
        let (logits, labels, loss) = (r.view(logits), r.view(labels), r.view(loss));
        r.push(cross_entropy_of(r.gpu, part, shard.total, logits, labels, dlogits, loss, shard.index > 0));
    });
}

//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::LossLaunch;
use super::LossShape;
use crate::executor::Recorder;
use crate::gpu::{shaders, Dispatch, Family, Gpu, Kernel, View};
use crate::ops::flag;

const CROSS_ENTROPY: Kernel = Kernel { shader: &shaders::LOSS, entry: "cross_entropy", buffers: 4 };
const CROSS_ENTROPY_ROWS: Kernel = Kernel { shader: &shaders::LOSS, entry: "cross_entropy_rows", buffers: 4 };
const COMBINE_ROWS: Kernel = Kernel { shader: &shaders::LOSS, entry: "combine_rows", buffers: 4 };

/// Floats of scratch [`cross_entropy_rows`] needs per sample: its loss, hit and invalid flag.
pub const ROW_SCRATCH_WORDS: u32 = 3;

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

/// The workgroup family's [`cross_entropy`], for GPUs: one 64-invocation workgroup per sample
/// striding over the classes writes dlogits (when `Some`) and the sample's loss, hit and
/// invalid flag into `scratch` ([`ROW_SCRATCH_WORDS`] floats per sample), then one workgroup
/// sums those over the batch in a fixed order into `stats`, as `cross_entropy` does. Same
/// results and semantics as [`cross_entropy`], rounded in another order.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_rows(
    gpu: &Gpu,
    s: LossShape,
    logits: View,
    labels: View,
    dlogits: Option<View>,
    stats: View,
    scratch: View,
    accumulate_stats: bool,
) -> Vec<Dispatch> {
    cross_entropy_rows_of(gpu, s, s.n, logits, labels, dlogits, stats, scratch, accumulate_stats)
}

#[allow(clippy::too_many_arguments)]
fn cross_entropy_rows_of(
    gpu: &Gpu,
    s: LossShape,
    n_total: u32,
    logits: View,
    labels: View,
    dlogits: Option<View>,
    stats: View,
    scratch: View,
    accumulate_stats: bool,
) -> Vec<Dispatch> {
    assert!(s.n <= 65_535, "cross entropy over {} samples: at most 65,535 per launch", s.n);
    let (d, d_offset) = dlogits.map_or((gpu.unused_binding(0), 0), |v| (v.buffer, v.offset));
    let rows = LossParams {
        classes: s.classes,
        n: s.n,
        n_total,
        write_grad: flag(dlogits.is_some()),
        accumulate: 0,
        off1: logits.offset,
        off2: labels.offset,
        off3: d_offset,
        off4: scratch.offset,
    };
    let combine = LossParams {
        accumulate: flag(accumulate_stats),
        off1: 0,
        off2: 0,
        off3: scratch.offset,
        off4: stats.offset,
        ..rows
    };
    let (unused1, unused2) = (gpu.unused_binding(0), gpu.unused_binding(1));
    vec![
        gpu.dispatch(&CROSS_ENTROPY_ROWS, &rows, &[logits.buffer, labels.buffer, d, scratch.buffer], [s.n, 1, 1]),
        gpu.dispatch(&COMBINE_ROWS, &combine, &[unused1, unused2, scratch.buffer, stats.buffer], [1, 1, 1]),
    ]
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
///
/// The workgroup family (forced, or the adapter's default) takes [`cross_entropy_rows`] where
/// the step has split scratch for it, which only training steps plan.
pub(crate) fn record(launch: &LossLaunch, r: &mut Recorder) {
    let LossLaunch { shape, logits, labels, loss, dlogits } = *launch;
    let scratch = r.split_scratch().filter(|v| {
        let words = v.buffer.size / 4 - v.offset as u64;
        r.gpu.family() == Family::Workgroup && words >= (ROW_SCRATCH_WORDS * shape.n) as u64
    });
    r.each_shard(|r, shard| {
        let part = LossShape { n: shard.images, ..shape };
        let dlogits = dlogits.map(|d| r.view(d));
        let (logits, labels, loss) = (r.view(logits), r.view(labels), r.view(loss));
        let accumulate = shard.index > 0;
        match scratch {
            Some(scratch) => {
                for d in
                    cross_entropy_rows_of(r.gpu, part, shard.total, logits, labels, dlogits, loss, scratch, accumulate)
                {
                    r.push(d);
                }
            }
            None => r.push(cross_entropy_of(r.gpu, part, shard.total, logits, labels, dlogits, loss, accumulate)),
        }
    });
}

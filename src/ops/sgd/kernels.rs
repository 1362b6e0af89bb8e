//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::SgdHyper;
use crate::executor::{OptimizerSegment, Recorder, WatchedState};
use crate::gpu::{grid, shaders, Dispatch, Gpu, Kernel, View};
use crate::ops::flag;

const SGD_STEP: Kernel = Kernel { shader: &shaders::SGD, entry: "sgd_step", buffers: 4 };
const CHECK_FINITE: Kernel = Kernel { shader: &shaders::SGD, entry: "check_finite", buffers: 4 };

/// A divergence flag word that saw only finite values: the host's fill before a step. Any
/// other value is the lowest element index (within the launch's range) that was not finite.
pub const NO_NON_FINITE: u32 = u32::MAX;

crate::uniform! {
    /// The parameter block of sgd.wgsl; offsets are in elements (`flag_off` in words of the
    /// flags binding), `nesterov` is 0 or 1.
    pub struct SgdParams for shaders::SGD {
        len: u32,
        param_off: u32,
        grad_off: u32,
        buf_off: u32,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        nesterov: u32,
        flag_off: u32,
    }
}

/// The parameter block of an SGD step over `len` elements at the given element offsets, whose
/// two divergence flags are words `flag_off` and `flag_off + 1`.
pub fn sgd_params(len: u32, param_off: u32, grad_off: u32, buf_off: u32, flag_off: u32, h: &SgdHyper) -> SgdParams {
    SgdParams {
        len,
        param_off,
        grad_off,
        buf_off,
        lr: h.lr,
        momentum: h.momentum,
        weight_decay: h.weight_decay,
        nesterov: flag(h.nesterov),
        flag_off,
    }
}

/// Records one step over `len` parameters: updates `param` and `momentum_buf` in place and
/// only reads `grad`. Views may share a buffer or not. `flags` views two words, filled with
/// [`NO_NON_FINITE`] before the step: the first receives the lowest index whose gradient is
/// NaN or infinite, the second the lowest whose updated parameter is. The check reads only
/// what the update reads and writes anyway, so it costs no pass over memory.
///
/// The momentum buffer must start zeroed (that gives PyTorch's buf = g on the first step). With
/// momentum 0 the buffer is never touched and may be `None`; a step recorded without a buffer
/// must then never be given a non-zero momentum through `set_params`.
pub fn sgd_step(
    gpu: &Gpu,
    len: u32,
    param: View,
    grad: View,
    momentum_buf: Option<View>,
    flags: View,
    h: &SgdHyper,
) -> Dispatch {
    assert!(momentum_buf.is_some() || h.momentum == 0.0, "sgd_step: momentum {} needs a momentum buffer", h.momentum);
    // Without momentum the third binding is a placeholder the kernel never reads.
    let (buf, buf_offset) = momentum_buf.map_or((gpu.unused_binding(0), 0), |v| (v.buffer, v.offset));
    let words = sgd_params(len, param.offset, grad.offset, buf_offset, flags.offset, h);
    gpu.dispatch(&SGD_STEP, &words, &[param.buffer, grad.buffer, buf, flags.buffer], grid(len as u64, 256))
}

/// Records a check of `len` values (batch-norm running statistics, which the forward pass
/// updates outside the optimizer): the word `flag` receives the lowest index that is NaN or
/// infinite, and keeps [`NO_NON_FINITE`] otherwise.
pub fn check_finite(gpu: &Gpu, len: u32, values: View, flag: View) -> Dispatch {
    let words = SgdParams { len, param_off: values.offset, flag_off: flag.offset, ..Default::default() };
    let unread = [gpu.unused_binding(0), gpu.unused_binding(1)];
    gpu.dispatch(&CHECK_FINITE, &words, &[values.buffer, unread[0], unread[1], flag.buffer], grid(len as u64, 256))
}

/// Records the optimizer step of a schedule: one launch per segment of the persistent
/// parameter buffers, whose hyper-parameters are rewritten every step, then one finiteness
/// check per buffer of running statistics.
pub(crate) fn record_update(r: &mut Recorder) {
    for OptimizerSegment { len, views: [param, grad, momentum], flags } in r.optimizer_segments().to_vec() {
        let d = sgd_step(r.gpu, len, param, grad, Some(momentum), flags, &SgdHyper::densenet_cifar());
        let offsets = [param.offset, grad.offset, momentum.offset, flags.offset];
        r.push_per_step(d, move |gpu, d, s| {
            d.set_params(gpu, &sgd_params(len, offsets[0], offsets[1], offsets[2], offsets[3], &s.sgd))
        });
    }
    for WatchedState { len, values, flag } in r.watched_states().to_vec() {
        let d = check_finite(r.gpu, len, values, flag);
        r.push(d);
    }
}

//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::SgdHyper;
use crate::executor::Recorder;
use crate::gpu::{grid, shaders, Dispatch, Gpu, Kernel, View};
use crate::ops::flag;

const SGD_STEP: Kernel = Kernel { shader: &shaders::SGD, entry: "sgd_step", buffers: 3 };

crate::uniform! {
    /// The parameter block of sgd.wgsl; offsets are in elements, `nesterov` is 0 or 1.
    pub struct SgdParams for shaders::SGD {
        len: u32,
        param_off: u32,
        grad_off: u32,
        buf_off: u32,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        nesterov: u32,
    }
}

/// The parameter block of an SGD step over `len` elements at the given element offsets.
pub fn sgd_params(len: u32, param_off: u32, grad_off: u32, buf_off: u32, h: &SgdHyper) -> SgdParams {
    SgdParams {
        len,
        param_off,
        grad_off,
        buf_off,
        lr: h.lr,
        momentum: h.momentum,
        weight_decay: h.weight_decay,
        nesterov: flag(h.nesterov),
    }
}

/// Records one step over `len` parameters: updates `param` and `momentum_buf` in place and
/// only reads `grad`. Views may share a buffer or not.
///
/// The momentum buffer must start zeroed (that gives PyTorch's buf = g on the first step). With
/// momentum 0 the buffer is never touched and may be `None`; a step recorded without a buffer
/// must then never be given a non-zero momentum through `set_params`.
pub fn sgd_step(gpu: &Gpu, len: u32, param: View, grad: View, momentum_buf: Option<View>, h: &SgdHyper) -> Dispatch {
    assert!(momentum_buf.is_some() || h.momentum == 0.0, "sgd_step: momentum {} needs a momentum buffer", h.momentum);
    // Without momentum the third binding is a placeholder the kernel never reads.
    let (buf, buf_offset) = momentum_buf.map_or((gpu.unused_binding(0), 0), |v| (v.buffer, v.offset));
    let words = sgd_params(len, param.offset, grad.offset, buf_offset, h);
    gpu.dispatch(&SGD_STEP, &words, &[param.buffer, grad.buffer, buf], grid(len as u64, 256))
}

/// Records the optimizer step of a schedule: one launch per segment of the persistent
/// parameter buffers, whose hyper-parameters are rewritten every step.
pub(crate) fn record_update(r: &mut Recorder) {
    let segments = r.optimizer_segments().to_vec();
    for (len, [param, grad, momentum]) in segments {
        let d = sgd_step(r.gpu, len, param, grad, Some(momentum), &SgdHyper::densenet_cifar());
        r.push_per_step(d, move |gpu, d, s| d.set_params(gpu, &sgd_params(len, 0, 0, 0, &s.sgd)));
    }
}

//! One step of torch.optim.SGD (dampening 0, optional Nesterov, weight decay) over a flat range
//! of parameters. The whole parameter arena can be one range: the update is elementwise.
//!
//! Parameter words, in order: `len`, `param_off`, `grad_off`, `buf_off`, `lr` (f32 bits),
//! `momentum` (f32 bits), `weight_decay` (f32 bits), `nesterov` (0 or 1). [`sgd_params`]
//! builds them, so a learning-rate schedule calls `Dispatch::set_params(gpu, &sgd_params(..))`
//! on the recorded step instead of rebuilding it.

use super::{flag, grid, shaders, Dispatch, Gpu, Kernel, View};

const SGD_STEP: Kernel = Kernel { shader: &shaders::SGD, entry: "sgd_step", buffers: 3 };

/// The optimiser's hyperparameters, with PyTorch's meaning (dampening is always 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl SgdHyper {
    /// The CIFAR recipe of the reference DenseNet demo: lr 0.1, momentum 0.9, Nesterov, 1e-4.
    pub fn densenet_cifar() -> Self {
        SgdHyper { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true }
    }
}

/// The DenseNet CIFAR recipe, [`SgdHyper::densenet_cifar`].
impl Default for SgdHyper {
    fn default() -> Self {
        Self::densenet_cifar()
    }
}

/// The parameter words of an SGD step over `len` elements at the given element offsets.
pub fn sgd_params(len: u32, param_off: u32, grad_off: u32, buf_off: u32, h: &SgdHyper) -> Vec<u32> {
    vec![
        len,
        param_off,
        grad_off,
        buf_off,
        h.lr.to_bits(),
        h.momentum.to_bits(),
        h.weight_decay.to_bits(),
        flag(h.nesterov),
    ]
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

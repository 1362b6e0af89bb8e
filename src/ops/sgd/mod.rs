//! One step of torch.optim.SGD (dampening 0, optional Nesterov, weight decay) over a flat range
//! of parameters. The whole parameter arena can be one range: the update is elementwise.
//!
//! [`sgd_params`] builds the kernel's [`SgdParams`] block, so a learning-rate schedule calls
//! `Dispatch::set_params(gpu, &sgd_params(..))` on the recorded step instead of rebuilding it.

pub mod kernels;

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

/// The [`crate::ops::Work`] of one SGD step over `parameters` elements: it reads each
/// parameter, its gradient and its momentum and writes the parameter and momentum back, with
/// 8 FLOPs each (weight decay, momentum, Nesterov's look-ahead and the step, a multiply-add
/// each).
pub fn work(parameters: u64) -> crate::ops::Work {
    let p = parameters as f64;
    crate::ops::Work::elements(8.0 * p, 3.0 * p, 2.0 * p)
}

/// The DenseNet CIFAR recipe, [`SgdHyper::densenet_cifar`].
impl Default for SgdHyper {
    fn default() -> Self {
        Self::densenet_cifar()
    }
}

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

use crate::graph::NodeId;
use crate::ops::Work;
use crate::schedule::{Loc, Pass, Phase, ScheduleBuilder};

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

/// The loss launch: class-major `logits` (K, N), `labels` (N), the [loss, correct] pair, and
/// in training the gradient `dlogits` (K, N), overwritten.
#[derive(Clone, Debug, PartialEq)]
pub struct LossLaunch {
    pub shape: LossShape,
    pub logits: Loc,
    pub labels: Loc,
    pub loss: Loc,
    pub dlogits: Option<Loc>,
}

impl LossLaunch {
    /// The launch's [`Work`]: per logit a max, a subtraction, an exponential and a sum (4
    /// FLOPs; an exponential is counted as one), reading logits and labels, writing the
    /// [loss, correct] pair and, in training, dlogits (3 more FLOPs per logit).
    pub fn work(&self) -> Work {
        let (k, n) = (self.shape.classes as f64, self.shape.n as f64);
        let forward = Work::elements(4.0 * k * n, k * n + n, 2.0);
        match self.dlogits {
            Some(_) => forward + Work::elements(3.0 * k * n, 0.0, k * n),
            None => forward,
        }
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        let mut v = vec![self.logits, self.labels, self.loss];
        v.extend(self.dlogits);
        v
    }
}

/// The loss's forward, which in training also writes the logits' gradient: the loss has no
/// backward of its own.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let (inputs, loss) = b.node_locs(id, phase);
    let [classes, n, _, _] = g.shape(node.inputs[0]);
    let dlogits = (b.pass() == Pass::Train).then(|| b.gradient_loc(node.inputs[0]).0);
    let shape = LossShape::new(classes, n);
    b.push(id, phase, LossLaunch { shape, logits: inputs[0], labels: inputs[1], loss, dlogits });
}

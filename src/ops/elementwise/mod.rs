//! ReLU on its own (where it does not follow a batch norm), the copy that the naive memory
//! mode uses to materialise concatenations, gradient accumulation, and dropout.
//!
//! Every kernel here takes the same parameter block, [`ElementwiseParams`].

pub mod kernels;

use crate::graph::{NodeId, Op};
use crate::ops::Work;
use crate::schedule::{Loc, Pass, Phase, ScheduleBuilder};

/// The elementwise launches over `len` contiguous elements. Dropout's mask is a hash of
/// (`key`, step, element), so backward and any recomputation draw the forward's mask.
#[derive(Clone, Debug, PartialEq)]
pub enum ElementwiseLaunch {
    ReluForward {
        len: u32,
        x: Loc,
        y: Loc,
    },
    ReluBackward {
        len: u32,
        x: Loc,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    /// `plane` is N·H·W, the values of one channel over the batch (which batch shards need to
    /// key the mask by each element's index in the whole batch).
    DropoutForward {
        len: u32,
        plane: u32,
        rate: f32,
        key: u32,
        x: Loc,
        y: Loc,
    },
    DropoutBackward {
        len: u32,
        plane: u32,
        rate: f32,
        key: u32,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    /// `y = x`.
    Copy {
        len: u32,
        x: Loc,
        y: Loc,
    },
    /// `y += x`.
    Add {
        len: u32,
        x: Loc,
        y: Loc,
    },
    Fill {
        len: u32,
        y: Loc,
        value: f32,
    },
}

impl ElementwiseLaunch {
    /// Elements the launch covers.
    pub fn len(&self) -> u32 {
        match *self {
            ElementwiseLaunch::ReluForward { len, .. }
            | ElementwiseLaunch::ReluBackward { len, .. }
            | ElementwiseLaunch::DropoutForward { len, .. }
            | ElementwiseLaunch::DropoutBackward { len, .. }
            | ElementwiseLaunch::Copy { len, .. }
            | ElementwiseLaunch::Add { len, .. }
            | ElementwiseLaunch::Fill { len, .. } => len,
        }
    }

    /// Whether the launch covers no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the launch computes, e.g. `relu forward` or `copy`.
    pub fn kind(&self) -> &'static str {
        match self {
            ElementwiseLaunch::ReluForward { .. } => "relu forward",
            ElementwiseLaunch::ReluBackward { .. } => "relu backward",
            ElementwiseLaunch::DropoutForward { .. } => "dropout forward",
            ElementwiseLaunch::DropoutBackward { .. } => "dropout backward",
            ElementwiseLaunch::Copy { .. } => "copy",
            ElementwiseLaunch::Add { .. } => "add",
            ElementwiseLaunch::Fill { .. } => "fill",
        }
    }

    /// The launch's [`Work`]: one FLOP per element for ReLU, its mask, an add, and dropout's
    /// scale (its hash is integer work, not counted); none for a copy or fill.
    pub fn work(&self) -> Work {
        match *self {
            ElementwiseLaunch::ReluForward { len, .. } | ElementwiseLaunch::DropoutForward { len, .. } => {
                Work::elements(len as f64, len as f64, len as f64)
            }
            ElementwiseLaunch::ReluBackward { len, accumulate, .. } => {
                Work::elements(len as f64, 2.0 * len as f64, 0.0).with_output(len as f64, accumulate)
            }
            ElementwiseLaunch::DropoutBackward { len, accumulate, .. } => {
                Work::elements(len as f64, len as f64, 0.0).with_output(len as f64, accumulate)
            }
            ElementwiseLaunch::Copy { len, .. } => Work::elements(0.0, len as f64, len as f64),
            ElementwiseLaunch::Add { len, .. } => {
                Work::elements(len as f64, len as f64, 0.0).with_output(len as f64, true)
            }
            ElementwiseLaunch::Fill { len, .. } => Work::elements(0.0, 0.0, len as f64),
        }
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        match *self {
            ElementwiseLaunch::ReluForward { x, y, .. }
            | ElementwiseLaunch::DropoutForward { x, y, .. }
            | ElementwiseLaunch::Copy { x, y, .. }
            | ElementwiseLaunch::Add { x, y, .. } => vec![x, y],
            ElementwiseLaunch::ReluBackward { x, dy, dx, .. } => vec![x, dy, dx],
            ElementwiseLaunch::DropoutBackward { dy, dx, .. } => vec![dy, dx],
            ElementwiseLaunch::Fill { y, .. } => vec![y],
        }
    }
}

/// ReLU, dropout (a copy in evaluation or at rate 0) and copy, forward or recomputed.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let (inputs, y) = b.node_locs(id, phase);
    let (len, x) = (g.elems(node.output) as u32, inputs[0]);
    let op = match node.op {
        Op::Relu => ElementwiseLaunch::ReluForward { len, x, y },
        Op::Dropout { rate, key } if b.pass() == Pass::Train && rate > 0.0 => {
            let [_, n, h, w] = g.shape(node.output);
            ElementwiseLaunch::DropoutForward { len, plane: n * h * w, rate, key, x, y }
        }
        Op::Dropout { .. } | Op::Copy => ElementwiseLaunch::Copy { len, x, y },
        _ => unreachable!("not an elementwise op"),
    };
    b.push(id, phase, op);
}

/// Their backward: the input gradient only, which a copy passes through (adding where the
/// gradient accumulates).
pub(crate) fn backward(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let xt = node.inputs[0];
    let x = matches!(node.op, Op::Relu).then(|| b.saved_loc(xt));
    let Some((dx, accumulate)) = b.input_gradient(xt) else { return };
    let len = g.elems(xt) as u32;
    let op = match node.op {
        Op::Relu => ElementwiseLaunch::ReluBackward { len, x: x.unwrap(), dy, dx, accumulate },
        Op::Dropout { rate, key } if rate > 0.0 => {
            let [_, n, h, w] = g.shape(xt);
            ElementwiseLaunch::DropoutBackward { len, plane: n * h * w, rate, key, dy, dx, accumulate }
        }
        Op::Dropout { .. } | Op::Copy if accumulate => ElementwiseLaunch::Add { len, x: dy, y: dx },
        Op::Dropout { .. } | Op::Copy => ElementwiseLaunch::Copy { len, x: dy, y: dx },
        _ => unreachable!("not an elementwise op"),
    };
    b.push(id, Phase::Backward, op);
}

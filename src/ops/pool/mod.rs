//! Pooling on channel-major (C, N, H, W) activations: the transitions' 2x2 average pool, the
//! ImageNet stem's 3x3 stride-2 pad-1 max pool, and the head's global average pool, each with
//! its backward. Output shapes follow PyTorch (floor mode, padding never selected).
//!
//! Every pool kernel takes a [`PoolParams`] block, where `offN` is the element offset of the
//! tensor at binding N (see each function for which tensor that is).

pub mod kernels;

use crate::graph::{Graph, NodeId, Op, SliceId};
use crate::ops::Work;
use crate::schedule::{Loc, Phase, ScheduleBuilder};

/// The shape of a pool's input, (C, N, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub c: u32,
    pub n: u32,
    pub h: u32,
    pub w: u32,
}

impl PoolShape {
    /// The shape of a pool over tensor `x` of `g`.
    pub fn of_input(g: &Graph, x: SliceId) -> Self {
        let [c, n, h, w] = g.shape(x);
        PoolShape::new(c, n, h, w)
    }
    pub fn new(c: u32, n: u32, h: u32, w: u32) -> Self {
        PoolShape { c, n, h, w }
    }
    /// Elements of the input.
    pub fn len(&self) -> usize {
        self.planes() as usize * (self.h * self.w) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Independent H x W planes, C·N.
    pub fn planes(&self) -> u32 {
        self.c * self.n
    }
    /// Output (height, width) of the 2x2 stride-2 average pool: floor(h/2), floor(w/2).
    pub fn avg_out(&self) -> (u32, u32) {
        (self.h / 2, self.w / 2)
    }
    /// Output (height, width) of the 3x3 stride-2 pad-1 max pool: floor((h − 1)/2) + 1.
    pub fn max_out(&self) -> (u32, u32) {
        (self.h.saturating_sub(1) / 2 + 1, self.w.saturating_sub(1) / 2 + 1)
    }
}

/// The pool launches: `x` and `dx` are (C, N, H, W), `y` and `dy` the pool's output shape.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolLaunch {
    AvgForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    AvgBackward {
        shape: PoolShape,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    MaxForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    /// Reads `x` to find each window's maximum again rather than storing indices.
    MaxBackward {
        shape: PoolShape,
        x: Loc,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
    GlobalAvgForward {
        shape: PoolShape,
        x: Loc,
        y: Loc,
    },
    GlobalAvgBackward {
        shape: PoolShape,
        dy: Loc,
        dx: Loc,
        accumulate: bool,
    },
}

impl PoolLaunch {
    /// The pool's input shape.
    pub fn shape(&self) -> PoolShape {
        match *self {
            PoolLaunch::AvgForward { shape, .. }
            | PoolLaunch::AvgBackward { shape, .. }
            | PoolLaunch::MaxForward { shape, .. }
            | PoolLaunch::MaxBackward { shape, .. }
            | PoolLaunch::GlobalAvgForward { shape, .. }
            | PoolLaunch::GlobalAvgBackward { shape, .. } => shape,
        }
    }

    /// What the launch computes, e.g. `avg 2x2 forward`.
    pub fn kind(&self) -> &'static str {
        match self {
            PoolLaunch::AvgForward { .. } => "avg 2x2 forward",
            PoolLaunch::AvgBackward { .. } => "avg 2x2 backward",
            PoolLaunch::MaxForward { .. } => "max 3x3 forward",
            PoolLaunch::MaxBackward { .. } => "max 3x3 backward",
            PoolLaunch::GlobalAvgForward { .. } => "global avg forward",
            PoolLaunch::GlobalAvgBackward { .. } => "global avg backward",
        }
    }

    /// The launch's [`Work`]: one FLOP per window tap (an add or a comparison) and one per
    /// output for the average's scale; the max pool's backward re-finds each window's maximum.
    pub fn work(&self) -> Work {
        let input = |s: &PoolShape| s.len() as f64;
        let planes = |s: &PoolShape| s.planes() as f64;
        match *self {
            PoolLaunch::AvgForward { shape: s, .. } => {
                let out = planes(&s) * (s.avg_out().0 * s.avg_out().1) as f64;
                Work::elements(4.0 * out + out, input(&s), out)
            }
            PoolLaunch::AvgBackward { shape: s, accumulate, .. } => {
                let out = planes(&s) * (s.avg_out().0 * s.avg_out().1) as f64;
                Work::elements(input(&s), out, 0.0).with_output(input(&s), accumulate)
            }
            PoolLaunch::MaxForward { shape: s, .. } => {
                let out = planes(&s) * (s.max_out().0 * s.max_out().1) as f64;
                Work::elements(9.0 * out, input(&s), out)
            }
            PoolLaunch::MaxBackward { shape: s, accumulate, .. } => {
                let out = planes(&s) * (s.max_out().0 * s.max_out().1) as f64;
                Work::elements(9.0 * out, input(&s) + out, 0.0).with_output(input(&s), accumulate)
            }
            PoolLaunch::GlobalAvgForward { shape: s, .. } => {
                Work::elements(input(&s) + planes(&s), input(&s), planes(&s))
            }
            PoolLaunch::GlobalAvgBackward { shape: s, accumulate, .. } => {
                Work::elements(input(&s), planes(&s), 0.0).with_output(input(&s), accumulate)
            }
        }
    }

    /// The launch over `n` images (one batch shard) instead of the whole batch.
    pub fn with_batch(&self, n: u32) -> PoolLaunch {
        let mut l = self.clone();
        match &mut l {
            PoolLaunch::AvgForward { shape, .. }
            | PoolLaunch::AvgBackward { shape, .. }
            | PoolLaunch::MaxForward { shape, .. }
            | PoolLaunch::MaxBackward { shape, .. }
            | PoolLaunch::GlobalAvgForward { shape, .. }
            | PoolLaunch::GlobalAvgBackward { shape, .. } => shape.n = n,
        }
        l
    }

    /// Every operand of the launch.
    pub fn operands(&self) -> Vec<Loc> {
        match *self {
            PoolLaunch::AvgForward { x, y, .. }
            | PoolLaunch::MaxForward { x, y, .. }
            | PoolLaunch::GlobalAvgForward { x, y, .. } => vec![x, y],
            PoolLaunch::AvgBackward { dy, dx, .. } | PoolLaunch::GlobalAvgBackward { dy, dx, .. } => vec![dy, dx],
            PoolLaunch::MaxBackward { x, dy, dx, .. } => vec![x, dy, dx],
        }
    }
}

/// A pool's forward, or its recomputation.
pub(crate) fn forward(b: &mut ScheduleBuilder, id: NodeId, phase: Phase) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let (inputs, y) = b.node_locs(id, phase);
    let (shape, x) = (PoolShape::of_input(g, node.inputs[0]), inputs[0]);
    let op = match node.op {
        Op::AvgPool2x2 => PoolLaunch::AvgForward { shape, x, y },
        Op::MaxPool3x3s2p1 => PoolLaunch::MaxForward { shape, x, y },
        Op::GlobalAvgPool => PoolLaunch::GlobalAvgForward { shape, x, y },
        _ => unreachable!("not a pool"),
    };
    b.push(id, phase, op);
}

/// A pool's backward: its input gradient.
pub(crate) fn backward(b: &mut ScheduleBuilder, id: NodeId, dy: Loc) {
    let g = b.graph();
    let node = &g.nodes[id.0];
    let xt = node.inputs[0];
    let x = matches!(node.op, Op::MaxPool3x3s2p1).then(|| b.saved_loc(xt));
    let Some((dx, accumulate)) = b.input_gradient(xt) else { return };
    let shape = PoolShape::of_input(g, xt);
    let op = match node.op {
        Op::AvgPool2x2 => PoolLaunch::AvgBackward { shape, dy, dx, accumulate },
        Op::MaxPool3x3s2p1 => PoolLaunch::MaxBackward { shape, x: x.unwrap(), dy, dx, accumulate },
        Op::GlobalAvgPool => PoolLaunch::GlobalAvgBackward { shape, dy, dx, accumulate },
        _ => unreachable!("not a pool"),
    };
    b.push(id, Phase::Backward, op);
}

//! The network, described once as a static graph of typed nodes over channel slices. Three
//! consumers read it: the schedule compiler (which derives backward, recomputation and
//! lifetimes, and so feeds the memory planner and the executor), the CPU reference
//! interpreter and the ONNX exporter.
//!
//! A node reads and writes *slices*: channel ranges of *storages*. A storage is one planned allocation of shape
//! (C, N, H, W) in channel-major order, so any channel range of it is contiguous. A dense block
//! is one storage: each layer writes its new channels into its own range and the next layer
//! reads a channel prefix, so concatenation costs nothing. Where a graph copies instead (the
//! naive memory mode), it says so with explicit [`Op::Copy`] nodes.

use crate::error::{Error, Result};
use crate::ops::conv::Conv2dShape;
use crate::ops::pool::PoolShape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageId(pub usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceId(pub usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);
/// A group of learnable tensors kept contiguous, so one kernel binding reaches all of them
/// (a batch norm's weight and bias, a linear layer's weight and bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);
/// A group of non-learnable persistent tensors (a batch norm's running mean and variance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub usize);

/// The running-statistics momentum of every batch norm: running ← (1 − m)·running + m·batch,
/// PyTorch's `BatchNorm2d` default.
pub const BN_MOMENTUM: f32 = 0.1;
/// The epsilon every batch norm adds to the variance, PyTorch's `BatchNorm2d` default.
pub const BN_EPS: f32 = 1e-5;

/// A batch of `images` in PyTorch's (N, C, H, W) order, rearranged into the channel-major
/// (C, N, H, W) order of every activation here; `shape` is the (C, N, H, W) shape. Panics if
/// `images` does not hold C·N·H·W values.
pub fn channel_major(images: &[f32], [c, n, h, w]: [u32; 4]) -> Vec<f32> {
    let (c, n, plane) = (c as usize, n as usize, (h * w) as usize);
    assert_eq!(images.len(), c * n * plane, "a batch of {n} images of {c} channels and {plane} pixels");
    let mut out = vec![0.0; images.len()];
    for i in 0..n {
        for ch in 0..c {
            let (src, dst) = ((i * c + ch) * plane, (ch * n + i) * plane);
            out[dst..dst + plane].copy_from_slice(&images[src..src + plane]);
        }
    }
    out
}

/// Who writes and who reads each storage, from one pass over the nodes: the schedule compiler
/// and the ONNX exporter both decide fusions and folds from it.
#[derive(Clone, Debug, Default)]
pub struct StorageUses {
    /// Per storage (indexed by [`StorageId`]), the nodes writing into it, in node order.
    pub writers: Vec<Vec<NodeId>>,
    /// Per storage, every read as (node, the tensor it reads), in node order.
    pub readers: Vec<Vec<(NodeId, SliceId)>>,
}

impl StorageUses {
    /// The last node whose output covers all of `s`'s channels, if any.
    pub fn whole_writer(&self, g: &Graph, s: StorageId) -> Option<NodeId> {
        self.writers[s.0].iter().rev().copied().find(|&n| g.slice(g.nodes[n.0].output).c == g.storages[s.0].c)
    }

    /// The node that reads `s` when exactly one node does (possibly through several inputs)
    /// and every read covers all of its channels.
    pub fn sole_whole_reader(&self, g: &Graph, s: StorageId) -> Option<NodeId> {
        let reads = &self.readers[s.0];
        let (first, _) = *reads.first()?;
        let whole = |t: SliceId| g.slice(t).c0 == 0 && g.slice(t).c == g.storages[s.0].c;
        reads.iter().all(|&(n, t)| n == first && whole(t)).then_some(first)
    }

    /// The nodes reading any channel of `s`, each once, in node order.
    pub fn reader_nodes(&self, s: StorageId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.readers[s.0].iter().map(|&(n, _)| n).collect();
        nodes.dedup();
        nodes
    }
}

/// One planned allocation, channel-major (C, N, H, W).
#[derive(Clone, Debug)]
pub struct Storage {
    pub name: String,
    pub c: u32,
    pub n: u32,
    pub h: u32,
    pub w: u32,
    /// Whether `n` is the batch, so the storage can be split along it into batch shards (an
    /// activation, the labels); `false` for a small vector such as batch statistics or the loss.
    pub batched: bool,
}

impl Storage {
    /// Elements of one channel (N·H·W). Only meaningful for storages a plan accepts: those
    /// hold fewer than 2^32 elements; [`Storage::elems`] is exact for any size.
    pub fn channel_elems(&self) -> u32 {
        self.n.wrapping_mul(self.h).wrapping_mul(self.w)
    }
    /// Elements of the whole storage (C·N·H·W), computed in u64 so that a huge batch gives
    /// the true size (and an honest "too large" error) rather than a wrapped one.
    pub fn elems(&self) -> u64 {
        self.c as u64 * self.n as u64 * self.h as u64 * self.w as u64
    }
}

/// A channel range `[c0, c0 + c)` of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSlice {
    pub storage: StorageId,
    pub c0: u32,
    pub c: u32,
}

/// How a parameter starts (PyTorch's DenseNet initialisation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, sqrt(2 / fan_out)) (He, fan-out), for convolutions.
    HeFanOut {
        fan_out: u32,
    },
    /// U(-bound, bound), PyTorch's default for a linear weight (bound = 1/sqrt(fan_in)).
    Uniform {
        bound: f32,
    },
    Constant(f32),
}

#[derive(Clone, Debug)]
pub struct ParamTensor {
    /// The torchvision state-dict key, e.g. `features.denseblock1.denselayer1.conv1.weight`.
    pub name: String,
    /// PyTorch shape (OIHW for convs, (out, in) for linear).
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub tensors: Vec<ParamTensor>,
}

impl ParamGroup {
    pub fn len(&self) -> usize {
        self.tensors.iter().map(ParamTensor::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `values` laid out in this group's layout (its tensors back to back, row-major), cut into
    /// each tensor's own slice. Panics if `values` is shorter than the group.
    pub fn split<'a>(&'a self, values: &'a [f32]) -> impl Iterator<Item = (&'a ParamTensor, &'a [f32])> + 'a {
        self.tensors.iter().scan(0, move |at, t| {
            let slice = &values[*at..*at + t.len()];
            *at += t.len();
            Some((t, slice))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// No bias. Input and output shapes come from the tensors.
    Conv2d {
        weight: ParamId,
        kernel: u32,
        stride: u32,
        pad: u32,
    },
    /// Batch norm over the input's channels, optionally followed by ReLU. Training mode
    /// normalises with the batch statistics, which it saves in `stats` (a 2·C storage holding
    /// mean and 1/sqrt(var + eps)) for backward and for recomputation; eval mode uses `running`.
    BatchNorm {
        affine: ParamId,
        running: StateId,
        stats: StorageId,
        relu: bool,
    },
    Relu,
    /// Inverted dropout; `key` makes each dropout's mask distinct and reproducible.
    Dropout {
        rate: f32,
        key: u32,
    },
    AvgPool2x2,
    MaxPool3x3s2p1,
    GlobalAvgPool,
    /// Input (in, N) with 1x1 spatial, weight group [weight (out, in), bias (out)].
    Linear {
        params: ParamId,
    },
    /// Output is a copy of the input; used where a graph materialises a concatenation.
    Copy,
    /// Inputs [logits (K, N), labels (1, N) as f32 class indices]; output (2, 1): mean loss and
    /// the number of correct predictions. In training it also seeds the logits' gradient.
    SoftmaxCrossEntropy,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<SliceId>,
    pub output: SliceId,
    /// Training keeps no copy of this node's output for backward: backward recomputes it
    /// from the node's inputs (and, for batch norm, from the statistics saved in forward).
    pub recompute: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub batch: u32,
    pub storages: Vec<Storage>,
    pub slices: Vec<ChannelSlice>,
    pub params: Vec<ParamGroup>,
    pub states: Vec<ParamGroup>,
    pub nodes: Vec<Node>,
    pub input: Option<SliceId>,
    pub labels: Option<SliceId>,
    pub logits: Option<SliceId>,
    pub loss: Option<SliceId>,
}

impl Graph {
    pub fn new(batch: u32) -> Self {
        Graph { batch, ..Default::default() }
    }

    /// The channel range behind slice `t`.
    pub fn slice(&self, t: SliceId) -> &ChannelSlice {
        &self.slices[t.0]
    }

    /// Who writes and who reads each storage.
    pub fn uses(&self) -> StorageUses {
        let mut uses = StorageUses {
            writers: vec![Vec::new(); self.storages.len()],
            readers: vec![Vec::new(); self.storages.len()],
        };
        for (i, node) in self.nodes.iter().enumerate() {
            for &t in &node.inputs {
                uses.readers[self.slice(t).storage.0].push((NodeId(i), t));
            }
            uses.writers[self.slice(node.output).storage.0].push(NodeId(i));
        }
        uses
    }

    pub fn storage_of(&self, t: SliceId) -> &Storage {
        &self.storages[self.slices[t.0].storage.0]
    }

    /// (C, N, H, W) of a tensor.
    pub fn shape(&self, t: SliceId) -> [u32; 4] {
        let s = self.storage_of(t);
        [self.slices[t.0].c, s.n, s.h, s.w]
    }

    pub fn elems(&self, t: SliceId) -> u64 {
        let [c, n, h, w] = self.shape(t);
        c as u64 * n as u64 * h as u64 * w as u64
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(ParamGroup::len).sum()
    }

    pub fn new_storage(&mut self, name: impl Into<String>, c: u32, h: u32, w: u32) -> StorageId {
        self.storages.push(Storage { name: name.into(), c, n: self.batch, h, w, batched: true });
        StorageId(self.storages.len() - 1)
    }

    /// A small storage whose shape is not an activation's (statistics, the loss).
    pub fn new_vector(&mut self, name: impl Into<String>, len: u32) -> StorageId {
        self.storages.push(Storage { name: name.into(), c: len, n: 1, h: 1, w: 1, batched: false });
        StorageId(self.storages.len() - 1)
    }

    /// Channels `[c0, c0 + c)` of `storage`, as a slice nodes can read and write.
    pub fn slice_of(&mut self, storage: StorageId, c0: u32, c: u32) -> SliceId {
        assert!(c0 + c <= self.storages[storage.0].c, "slice beyond storage {}", self.storages[storage.0].name);
        self.slices.push(ChannelSlice { storage, c0, c });
        SliceId(self.slices.len() - 1)
    }

    /// A new storage of (c, N, h, w) activations, and the slice of all its channels.
    pub fn new_activation(&mut self, name: impl Into<String>, c: u32, h: u32, w: u32) -> SliceId {
        let s = self.new_storage(name, c, h, w);
        self.slice_of(s, 0, c)
    }

    pub fn add_params(&mut self, tensors: Vec<ParamTensor>) -> ParamId {
        self.params.push(ParamGroup { tensors });
        ParamId(self.params.len() - 1)
    }

    pub fn add_state(&mut self, tensors: Vec<ParamTensor>) -> StateId {
        self.states.push(ParamGroup { tensors });
        StateId(self.states.len() - 1)
    }

    pub fn add_node(&mut self, name: impl Into<String>, op: Op, inputs: Vec<SliceId>, output: SliceId) -> NodeId {
        self.nodes.push(Node { name: name.into(), op, inputs, output, recompute: false });
        NodeId(self.nodes.len() - 1)
    }

    // ---- Builders for each op: they create parameters with torchvision's names and the
    // ---- output tensor (a fresh storage, or a given destination such as a block slice).

    pub fn input_image(&mut self, c: u32, h: u32, w: u32) -> SliceId {
        let t = self.new_activation("input", c, h, w);
        self.input = Some(t);
        t
    }

    /// `name` is the module path, e.g. `features.conv0`; the weight is `{name}.weight`.
    pub fn conv2d(&mut self, name: &str, x: SliceId, out: Conv2dOut, kernel: u32, stride: u32, pad: u32) -> SliceId {
        let [c_in, n, h, w] = self.shape(x);
        let geometry = Conv2dShape { n, c_in, h, w, c_out: 0, kh: kernel, kw: kernel, stride, pad };
        let (oh, ow) = (geometry.out_h(), geometry.out_w());
        let y = match out {
            Conv2dOut::New(c_out) => self.new_activation(format!("{name}.out"), c_out, oh, ow),
            Conv2dOut::Into(t) => t,
        };
        let [c_out, _, yh, yw] = self.shape(y);
        assert_eq!((yh, yw), (oh, ow), "{name}: destination has the wrong spatial size");
        let weight = self.add_params(vec![ParamTensor {
            name: format!("{name}.weight"),
            shape: vec![c_out as usize, c_in as usize, kernel as usize, kernel as usize],
            init: Init::HeFanOut { fan_out: c_out * kernel * kernel },
        }]);
        self.add_node(name, Op::Conv2d { weight, kernel, stride, pad }, vec![x], y);
        y
    }

    pub fn batch_norm(&mut self, name: &str, x: SliceId, relu: bool) -> SliceId {
        let [c, _, h, w] = self.shape(x);
        let y = self.new_activation(format!("{name}.out"), c, h, w);
        self.batch_norm_into(name, x, y, relu);
        y
    }

    pub fn batch_norm_into(&mut self, name: &str, x: SliceId, y: SliceId, relu: bool) -> NodeId {
        let c = self.shape(x)[0] as usize;
        let tensor = |suffix: &str, v: f32| ParamTensor {
            name: format!("{name}.{suffix}"),
            shape: vec![c],
            init: Init::Constant(v),
        };
        let affine = self.add_params(vec![tensor("weight", 1.0), tensor("bias", 0.0)]);
        let running = self.add_state(vec![tensor("running_mean", 0.0), tensor("running_var", 1.0)]);
        let stats = self.new_vector(format!("{name}.batch_stats"), 2 * c as u32);
        self.add_node(name, Op::BatchNorm { affine, running, stats, relu }, vec![x], y)
    }

    pub fn relu(&mut self, name: &str, x: SliceId) -> SliceId {
        let [c, _, h, w] = self.shape(x);
        let y = self.new_activation(format!("{name}.out"), c, h, w);
        self.add_node(name, Op::Relu, vec![x], y);
        y
    }

    pub fn dropout_into(&mut self, name: &str, x: SliceId, y: SliceId, rate: f32) -> NodeId {
        // Keyed by name, not position, so every memory mode (whose graphs differ in node
        // count) draws the same masks.
        let key = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        self.add_node(name, Op::Dropout { rate, key }, vec![x], y)
    }

    pub fn pool(&mut self, name: &str, op: Op, x: SliceId, out: Option<SliceId>) -> SliceId {
        let [c, n, h, w] = self.shape(x);
        let (oh, ow) = match op {
            Op::AvgPool2x2 => PoolShape::new(c, n, h, w).avg_out(),
            Op::MaxPool3x3s2p1 => PoolShape::new(c, n, h, w).max_out(),
            Op::GlobalAvgPool => (1, 1),
            _ => panic!("{name}: not a pooling op"),
        };
        let y = out.unwrap_or_else(|| self.new_activation(format!("{name}.out"), c, oh, ow));
        assert_eq!(self.shape(y), [c, self.batch, oh, ow], "{name}: destination has the wrong shape");
        self.add_node(name, op, vec![x], y);
        y
    }

    pub fn linear(&mut self, name: &str, x: SliceId, out_features: u32) -> SliceId {
        let in_features = self.shape(x)[0];
        let y = self.new_activation(format!("{name}.out"), out_features, 1, 1);
        let bound = 1.0 / (in_features as f32).sqrt();
        let params = self.add_params(vec![
            ParamTensor {
                name: format!("{name}.weight"),
                shape: vec![out_features as usize, in_features as usize],
                init: Init::Uniform { bound },
            },
            ParamTensor { name: format!("{name}.bias"), shape: vec![out_features as usize], init: Init::Constant(0.0) },
        ]);
        self.add_node(name, Op::Linear { params }, vec![x], y);
        y
    }

    pub fn copy_into(&mut self, name: &str, x: SliceId, y: SliceId) -> NodeId {
        assert_eq!(self.shape(x), self.shape(y), "{name}: copy between different shapes");
        self.add_node(name, Op::Copy, vec![x], y)
    }

    /// The softmax cross-entropy of `logits` (K, N) against the batch's labels, which also
    /// makes `logits` the graph's output (what inference returns and ONNX exports).
    pub fn cross_entropy(&mut self, logits: SliceId) -> SliceId {
        let labels_storage = self.new_storage("labels", 1, 1, 1);
        let labels = self.slice_of(labels_storage, 0, 1);
        let loss_storage = self.new_vector("loss", 2);
        let loss = self.slice_of(loss_storage, 0, 2);
        self.add_node("loss", Op::SoftmaxCrossEntropy, vec![logits, labels], loss);
        self.labels = Some(labels);
        self.logits = Some(logits);
        self.loss = Some(loss);
        loss
    }

    /// Checks the invariants every consumer relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.input.is_none() || self.logits.is_none() {
            return bad("the graph has no input or no logits".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let out_storage = self.slice(node.output).storage;
            if node.recompute {
                let s = &self.storages[out_storage.0];
                if self.slice(node.output).c != s.c {
                    return bad(format!("node {} is recomputed but shares its output storage {}", node.name, s.name));
                }
                if matches!(node.op, Op::SoftmaxCrossEntropy) {
                    return bad("the loss cannot be recomputed".into());
                }
            }
            for &x in &node.inputs {
                if self.slice(x).storage == out_storage && node.op != Op::SoftmaxCrossEntropy {
                    let (a, b) = (self.slice(x), self.slice(node.output));
                    if a.c0 < b.c0 + b.c && b.c0 < a.c0 + a.c {
                        return bad(format!("node {i} ({}) reads and writes overlapping channels", node.name));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where a conv writes: a fresh tensor with this many channels, or a given destination.
#[derive(Clone, Copy, Debug)]
pub enum Conv2dOut {
    New(u32),
    Into(SliceId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_elems_do_not_wrap_at_a_huge_batch() {
        // 5,000,000 images of 32x32: 5.12e9 values per channel, beyond u32.
        let s = Storage { name: "input".into(), c: 3, n: 5_000_000, h: 32, w: 32, batched: true };
        assert_eq!(s.elems(), 3 * 5_000_000 * 1024);
    }
}

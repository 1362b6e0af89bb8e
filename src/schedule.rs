//! Compiles a [`Graph`] into the exact list of kernel launches of one training step (forward,
//! recomputation, backward, update) or one inference pass, and into the *values* those
//! launches touch, each with its lifetime over the launch list.
//!
//! A value is one incarnation of a storage: its forward contents, its contents recomputed
//! during backward, or its gradient. Values are what the memory planner packs into the arena.
//! Everything here is plain Rust with no GPU, so the memory plan of any model in any mode is
//! known before a device is opened.
//!
//! This module holds the general mechanisms ([`ScheduleBuilder`]); which launches a node emits
//! in forward, recomputation and backward is its op family's rule, in `crate::ops::<family>`.
//! The rules, none of them specific to DenseNet:
//! - backward visits nodes in reverse; a node's backward reads the forward values its op
//!   needs (a conv its input, a batch norm its input and saved statistics, ...);
//! - a needed value whose producer is marked `recompute` is not kept from forward: the
//!   producer (and, recursively, whatever recomputed inputs it needs) runs again just before
//!   its first backward use, batch norm normalising with the statistics saved in forward, so
//!   running statistics change exactly once per step;
//! - gradients of a storage accumulate by channel range: the first contribution to a range
//!   overwrites it, later ones add, and a range that receives nothing is zero-filled;
//! - (conv's rules) a recomputed BN-ReLU whose whole output is read by nothing but one 1x1
//!   stride-1 unpadded conv is never applied: the conv normalises its input on load, in forward, in any
//!   recomputation and in its weight gradient, so that output has no value at all;
//! - (conv's rules) a batch norm whose output only a conv reads gets its backward inside the conv's, one
//!   channel slice of the conv's input gradient at a time (at most [`ScheduleOptions::gradient_slice_bytes`]),
//!   computed in place where the batch norm's input gradient starts, so the gradient of the
//!   normalised tensor never exists whole.

use crate::graph::{ChannelSlice, Graph, NodeId, ParamId, SliceId, StateId, StorageId, StorageUses};
use crate::memory::arena::{ArenaRequest, Category};
use crate::memory::shards::BatchShards;
use crate::ops::elementwise::ElementwiseLaunch;
use std::collections::{HashMap, HashSet};

/// What a compiled schedule does: a training step or an inference pass (PyTorch's training and
/// evaluation modes). Not to be confused with [`crate::MemoryMode`], which chooses what a training
/// step keeps for backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Forward with batch statistics, backward, and the optimizer update.
    Train,
    /// Forward only, with running statistics and no dropout.
    Eval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ValueId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Forward,
    Recomputed,
    Gradient,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub storage: StorageId,
    pub kind: ValueKind,
    pub elems: u64,
    /// First and last launch index that touch the value (inclusive).
    pub first: usize,
    pub last: usize,
}

/// Where a kernel operand lives: in a planned value at an element offset, or in the
/// persistent parameter, gradient or state storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Value { value: ValueId, offset: u32 },
    Param(ParamId),
    Grad(ParamId),
    State(StateId),
}

pub use crate::ops::LaunchOp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Recompute,
    Backward,
    Update,
}

#[derive(Clone, Debug)]
pub struct Launch {
    pub node: Option<NodeId>,
    pub phase: Phase,
    pub op: LaunchOp,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub pass: Pass,
    pub values: Vec<Value>,
    pub launches: Vec<Launch>,
    /// The forward values the host writes (image and labels) and reads (logits and loss).
    pub input: ValueId,
    pub labels: Option<ValueId>,
    pub logits: ValueId,
    pub loss: Option<ValueId>,
}

impl Schedule {
    /// The memory planner's view: one request per value, or per shard of a batched value when
    /// the batch is split into `shards`, with the index of each value's first request (its
    /// shards follow in order). A forward value still alive in backward is a stored
    /// activation; everything else is transient workspace.
    pub fn requests(&self, graph: &Graph, shards: &BatchShards) -> (Vec<ArenaRequest>, Vec<usize>) {
        let mut requests = Vec::new();
        let mut first = Vec::with_capacity(self.values.len());
        for (v, request) in self.values.iter().zip(self.value_requests(graph)) {
            first.push(requests.len());
            if shards.len() == 1 || !graph.storages[v.storage.0].batched {
                requests.push(request);
                continue;
            }
            for shard in shards.iter() {
                let bytes = v.elems * 4 / shard.total as u64 * shard.images as u64;
                let name = format!("{} [images {}..{}]", request.name, shard.first, shard.first + shard.images);
                requests.push(ArenaRequest { name, bytes, ..request.clone() });
            }
        }
        (requests, first)
    }

    fn value_requests<'a>(&'a self, graph: &'a Graph) -> impl Iterator<Item = ArenaRequest> + 'a {
        let backward_start =
            self.launches.iter().position(|l| l.phase != Phase::Forward).unwrap_or(self.launches.len());
        self.values.iter().map(move |v| {
            let stored = v.kind == ValueKind::Forward && v.last >= backward_start && self.pass == Pass::Train;
            let kind = match v.kind {
                ValueKind::Forward => "",
                ValueKind::Recomputed => " (recomputed)",
                ValueKind::Gradient => " (gradient)",
            };
            ArenaRequest {
                name: format!("{}{kind}", graph.storages[v.storage.0].name),
                bytes: v.elems * 4,
                first_use: v.first,
                last_use: v.last,
                category: if stored { Category::Activations } else { Category::Workspace },
            }
        })
    }
}

/// One compilation in progress, and the general mechanisms every op's schedule rules (in
/// [`crate::ops`]) build on: the values a launch reads and writes in forward, recomputation and
/// backward, gradients accumulated by channel range, and launches appended with their operands'
/// lifetimes.
pub struct ScheduleBuilder<'g> {
    graph: &'g Graph,
    pass: Pass,
    options: ScheduleOptions,
    values: Vec<Value>,
    launches: Vec<Launch>,
    forward: HashMap<StorageId, ValueId>,
    recomputed: HashMap<StorageId, ValueId>,
    gradient: HashMap<StorageId, ValueId>,
    /// Channel ranges of each gradient storage that already hold a contribution.
    written: HashMap<StorageId, Vec<(u32, u32)>>,
    param_grad_written: Vec<bool>,
    /// The single node that writes each storage wholly (only such nodes may be recomputed).
    producer: HashMap<StorageId, NodeId>,
    has_writer: Vec<bool>,
    /// The storages that exactly one node reads, reading all of them, and the host never
    /// sees: their producer's output exists only to feed that node.
    sole_reader: HashMap<StorageId, NodeId>,
    /// Each node that applies its input's producer on load (a 1x1 conv normalising with its
    /// BN-ReLU), and that producer, whose output then has no value (see [`crate::ops::folds`]).
    folded_input: HashMap<NodeId, NodeId>,
    /// The producers of `folded_input`.
    folded: HashSet<NodeId>,
}

/// Choices of the schedule compiler that trade memory against the number of launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// How much of a batch norm's output gradient backward may hold at once where it takes
    /// that gradient in channel slices, in bytes. Tests make it tiny to get many uneven slices.
    pub gradient_slice_bytes: u64,
    /// The most images one batch shard may hold (see [`crate::memory::shards`]). `None` lets
    /// the planner take the fewest shards whose tensors fit the device's storage bindings;
    /// tests force small, unequal shards with it.
    pub max_shard_images: Option<u32>,
    /// Bytes of scratch for weight gradients that split their pixels over many workgroups and
    /// add the parts in a second pass (the workgroup kernel family, see
    /// [`crate::ops::conv::workgroup`]); planned for training only. 0 plans none, and such a
    /// gradient then runs in one pass.
    pub split_scratch_bytes: u64,
}

impl Default for ScheduleOptions {
    /// 8 MiB gradient slices: about 32 channels of a CIFAR DenseNet's first block at batch 64,
    /// small beside the block. Shards as the bindings need. No split-reduction scratch.
    fn default() -> Self {
        ScheduleOptions { gradient_slice_bytes: 8 << 20, max_shard_images: None, split_scratch_bytes: 0 }
    }
}

/// Compiles `graph` for `pass` with the default [`ScheduleOptions`].
pub fn compile(graph: &Graph, pass: Pass) -> crate::Result<Schedule> {
    compile_with(graph, pass, &ScheduleOptions::default())
}

/// Compiles `graph` for `pass`: forward (and for training, backward and the update) as
/// launches over planned values.
pub fn compile_with(graph: &Graph, pass: Pass, options: &ScheduleOptions) -> crate::Result<Schedule> {
    graph.validate()?;
    if pass == Pass::Train {
        check_batch_statistics(graph)?;
    }
    let uses = graph.uses();
    let producer: HashMap<StorageId, NodeId> =
        (0..graph.storages.len()).map(StorageId).filter_map(|s| uses.whole_writer(graph, s).map(|n| (s, n))).collect();
    let has_writer: Vec<bool> = uses.writers.iter().map(|w| !w.is_empty()).collect();
    let sole_reader = sole_whole_readers(graph, &uses);
    let folded_input = crate::ops::folds(graph, &uses, &producer, &sole_reader);
    let folded = folded_input.values().copied().collect();
    let mut c = ScheduleBuilder {
        graph,
        pass,
        options: *options,
        values: Vec::new(),
        launches: Vec::new(),
        forward: HashMap::new(),
        recomputed: HashMap::new(),
        gradient: HashMap::new(),
        written: HashMap::new(),
        param_grad_written: vec![false; graph.params.len()],
        producer,
        has_writer,
        sole_reader,
        folded_input,
        folded,
    };
    let input = c.forward_loc(graph.input.unwrap());
    let labels = graph.labels.map(|l| c.forward_loc(l));
    for i in 0..graph.nodes.len() {
        crate::ops::forward(&mut c, NodeId(i), Phase::Forward);
    }
    if pass == Pass::Train {
        for i in (0..graph.nodes.len()).rev() {
            c.backward_node(NodeId(i));
        }
        c.push_launch(Launch { node: None, phase: Phase::Update, op: LaunchOp::SgdUpdate });
    }
    // The host writes the image and labels before the first launch, and reads the logits
    // and the loss after the last one.
    for loc in [Some(input), labels].into_iter().flatten() {
        if let Loc::Value { value, .. } = loc {
            c.values[value.0].first = 0;
        }
    }
    for v in &mut c.values {
        if v.first == usize::MAX {
            (v.first, v.last) = (0, 0); // never used by a launch (nothing reads it)
        }
    }
    let end = c.launches.len().saturating_sub(1);
    let logits = c.forward[&graph.slice(graph.logits.unwrap()).storage];
    c.values[logits.0].last = end;
    let loss = graph.loss.map(|l| c.forward[&graph.slice(l).storage]);
    if let Some(l) = loss {
        c.values[l.0].last = end;
    }
    let value_of = |loc: Loc| match loc {
        Loc::Value { value, .. } => value,
        _ => unreachable!(),
    };
    Ok(Schedule {
        pass,
        values: c.values,
        launches: c.launches,
        input: value_of(input),
        labels: labels.map(value_of),
        logits,
        loss,
    })
}

pub use crate::ops::batchnorm::check_batch_statistics;

impl<'g> ScheduleBuilder<'g> {
    /// The graph being compiled.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// What the schedule does: a training step or an inference pass.
    pub fn pass(&self) -> Pass {
        self.pass
    }

    /// The compiler's settings.
    pub fn options(&self) -> &ScheduleOptions {
        &self.options
    }

    fn now(&self) -> usize {
        self.launches.len()
    }

    /// A value with no lifetime yet: it starts at the first launch that uses it, so a
    /// gradient created while its node's other launches are recorded can still take the
    /// place of a value those launches free.
    fn new_value(&mut self, storage: StorageId, kind: ValueKind) -> ValueId {
        let elems = self.graph.storages[storage.0].elems();
        self.new_value_of(storage, kind, elems)
    }

    /// A value holding only `elems` elements of a storage (a slice of its channels).
    pub fn new_value_of(&mut self, storage: StorageId, kind: ValueKind, elems: u64) -> ValueId {
        self.values.push(Value { storage, kind, elems, first: usize::MAX, last: 0 });
        ValueId(self.values.len() - 1)
    }

    fn loc_in(&mut self, v: ValueId, t: SliceId) -> Loc {
        self.loc_at(v, *self.graph.slice(t))
    }

    fn loc_at(&self, v: ValueId, slice: ChannelSlice) -> Loc {
        let offset = slice.c0 * self.graph.storages[slice.storage.0].channel_elems();
        Loc::Value { value: v, offset }
    }

    /// The forward value of a tensor's storage, created on first use.
    pub fn forward_loc(&mut self, t: SliceId) -> Loc {
        let s = self.graph.slice(t).storage;
        let v = match self.forward.get(&s) {
            Some(&v) => v,
            None => {
                let v = self.new_value(s, ValueKind::Forward);
                self.forward.insert(s, v);
                v
            }
        };
        self.loc_in(v, t)
    }

    /// The value backward reads for a forward tensor: the stored forward value, or the
    /// recomputed one (recomputing it now if this is its first use in backward).
    pub fn saved_loc(&mut self, t: SliceId) -> Loc {
        let s = self.graph.slice(t).storage;
        let recompute = self.producer.get(&s).is_some_and(|&p| self.graph.nodes[p.0].recompute);
        if !recompute {
            return self.forward_loc(t);
        }
        if !self.recomputed.contains_key(&s) {
            let p = self.producer[&s];
            assert!(
                !self.folded.contains(&p),
                "{}: the output of a batch norm folded into its consumer has no value to read",
                self.graph.nodes[p.0].name
            );
            crate::ops::forward(self, p, Phase::Recompute);
        }
        let v = self.recomputed[&s];
        self.loc_in(v, t)
    }

    /// Where a node reads input `t` in `phase`: its forward value in forward, and in
    /// recomputation whatever backward can see (see [`ScheduleBuilder::saved_loc`]).
    pub fn input_loc(&mut self, t: SliceId, phase: Phase) -> Loc {
        if phase == Phase::Recompute {
            self.saved_loc(t)
        } else {
            self.forward_loc(t)
        }
    }

    /// Where a node writes its output `t` in `phase`: its forward value in forward, a new
    /// recomputed value in recomputation.
    pub fn output_loc(&mut self, t: SliceId, phase: Phase) -> Loc {
        if phase != Phase::Recompute {
            return self.forward_loc(t);
        }
        let s = self.graph.slice(t).storage;
        let v = self.new_value(s, ValueKind::Recomputed);
        self.recomputed.insert(s, v);
        self.loc_in(v, t)
    }

    /// A node's inputs and output in `phase`, inputs first (see [`ScheduleBuilder::input_loc`]
    /// and [`ScheduleBuilder::output_loc`]).
    pub fn node_locs(&mut self, id: NodeId, phase: Phase) -> (Vec<Loc>, Loc) {
        let node = &self.graph.nodes[id.0];
        let inputs = node.inputs.iter().map(|&t| self.input_loc(t, phase)).collect();
        (inputs, self.output_loc(node.output, phase))
    }

    /// The forward value of a small storage written once per pass, such as batch statistics.
    pub fn stats_loc(&mut self, stats: StorageId) -> Loc {
        let v = self.forward.get(&stats).copied().unwrap_or_else(|| {
            let v = self.new_value(stats, ValueKind::Forward);
            self.forward.insert(stats, v);
            v
        });
        Loc::Value { value: v, offset: 0 }
    }

    /// Appends a launch of `node` in `phase`.
    pub fn push(&mut self, node: NodeId, phase: Phase, op: impl Into<LaunchOp>) {
        self.push_launch(Launch { node: Some(node), phase, op: op.into() });
    }

    /// Appends a launch and stretches its operands' lifetimes to it. Lifetimes are set here,
    /// not when an operand is looked up, because recomputation may insert launches between
    /// the look-up and the launch that uses it.
    fn push_launch(&mut self, launch: Launch) {
        let at = self.now();
        for loc in launch.op.operands() {
            if let Loc::Value { value, .. } = loc {
                let v = &mut self.values[value.0];
                v.first = v.first.min(at);
                v.last = v.last.max(at);
            }
        }
        self.launches.push(launch);
    }

    /// The gradient value of a tensor's storage, and whether `t`'s channels already hold a
    /// contribution (so the next one must accumulate). Zero-fills any part of `t` that has
    /// a contribution elsewhere in its range, so one accumulate flag serves the whole slice.
    pub fn gradient_loc(&mut self, t: SliceId) -> (Loc, bool) {
        self.gradient_of(*self.graph.slice(t))
    }

    /// [`ScheduleBuilder::gradient_loc`] for a channel range that need not be a graph slice.
    pub fn gradient_of(&mut self, slice: ChannelSlice) -> (Loc, bool) {
        let s = slice.storage;
        let v = match self.gradient.get(&s) {
            Some(&v) => v,
            None => {
                let v = self.new_value(s, ValueKind::Gradient);
                self.gradient.insert(s, v);
                v
            }
        };
        let (lo, hi) = (slice.c0, slice.c0 + slice.c);
        let written = self.written.entry(s).or_default();
        let mut covered: Vec<(u32, u32)> =
            written.iter().map(|&(a, b)| (a.max(lo), b.min(hi))).filter(|(a, b)| a < b).collect();
        covered.sort();
        let covered_channels: u32 = covered.iter().map(|(a, b)| b - a).sum();
        let accumulate = covered_channels > 0;
        if accumulate && covered_channels < slice.c {
            let mut gaps = Vec::new();
            let mut at = lo;
            for &(a, b) in &covered {
                if a > at {
                    gaps.push((at, a));
                }
                at = at.max(b);
            }
            if at < hi {
                gaps.push((at, hi));
            }
            let ce = self.graph.storages[s.0].channel_elems();
            for (a, b) in gaps {
                let y = Loc::Value { value: v, offset: a * ce };
                let op = ElementwiseLaunch::Fill { len: (b - a) * ce, y, value: 0.0 };
                self.push_launch(Launch { node: None, phase: Phase::Backward, op: op.into() });
            }
        }
        let written = self.written.get_mut(&s).unwrap();
        written.push((lo, hi));
        (self.loc_at(v, slice), accumulate)
    }

    /// The gradient of input `t` and whether it accumulates, or None if nothing upstream
    /// needs it (no node writes `t`'s storage: the image, the labels).
    pub fn input_gradient(&mut self, t: SliceId) -> Option<(Loc, bool)> {
        self.needs_gradient(t).then(|| self.gradient_loc(t))
    }

    /// The output gradient a node's backward reads, or None if nothing downstream produced
    /// one (the node does not influence the loss).
    fn output_gradient(&mut self, t: SliceId) -> Option<Loc> {
        let slice = *self.graph.slice(t);
        let written = self.written.get(&slice.storage)?;
        let (lo, hi) = (slice.c0, slice.c0 + slice.c);
        if !written.iter().any(|&(a, b)| a < hi && lo < b) {
            return None;
        }
        // Channels no consumer wrote are zero-filled first, so the whole range holds the gradient.
        let (loc, _) = self.gradient_loc(t);
        Some(loc)
    }

    /// Whether a node computes `t`, so that its gradient has somewhere to go.
    pub fn needs_gradient(&self, t: SliceId) -> bool {
        self.has_writer[self.graph.slice(t).storage.0]
    }

    /// A parameter group's gradient, and whether an earlier launch already wrote it.
    pub fn param_grad(&mut self, p: ParamId) -> (Loc, bool) {
        let accumulate = std::mem::replace(&mut self.param_grad_written[p.0], true);
        (Loc::Grad(p), accumulate)
    }

    /// The producer a node applies on load instead of reading its output, if it folds one.
    pub fn folded_input(&self, id: NodeId) -> Option<NodeId> {
        self.folded_input.get(&id).copied()
    }

    /// Whether a node's output is folded into its consumer (so it has no value).
    pub fn is_folded(&self, id: NodeId) -> bool {
        self.folded.contains(&id)
    }

    /// The single node that writes all of storage `s`, if there is one.
    pub fn producer(&self, s: StorageId) -> Option<NodeId> {
        self.producer.get(&s).copied()
    }

    /// The single node that reads all of storage `s` and nothing else does, not even the host.
    pub fn sole_reader(&self, s: StorageId) -> Option<NodeId> {
        self.sole_reader.get(&s).copied()
    }

    fn backward_node(&mut self, id: NodeId) {
        let Some(dy) = self.output_gradient(self.graph.nodes[id.0].output) else { return };
        crate::ops::backward(self, id, dy);
    }
}

/// The storages that exactly one node reads (possibly through several inputs), every read
/// covering all of the storage's channels, and that the host never reads or writes.
fn sole_whole_readers(g: &Graph, uses: &StorageUses) -> HashMap<StorageId, NodeId> {
    let host_visible: Vec<StorageId> =
        [g.input, g.labels, g.logits, g.loss].into_iter().flatten().map(|t| g.slice(t).storage).collect();
    (0..g.storages.len())
        .map(StorageId)
        .filter(|s| !host_visible.contains(s))
        .filter_map(|s| uses.sole_whole_reader(g, s).map(|n| (s, n)))
        .collect()
}

//! Everything about device memory, computed without a device: how the persistent tensors are
//! laid out in buffers ([`PersistentLayout`]), how a schedule's activations are packed into one
//! arena ([`arena`]), the limits both obey ([`arena_limits`]), and the byte counts by category
//! that a step needs ([`MemoryPlan::report`]). The executor allocates exactly what a
//! [`MemoryPlan`] says; the `memory` example, `plan_training`, `largest_batch` and the browser's
//! plan table read the same plan before anything runs.

pub mod arena;
pub mod shards;

use crate::error::{Error, Result};
use crate::graph::{Graph, ParamGroup};
use crate::schedule::{self, Pass, Schedule, ScheduleOptions};
use arena::{ArenaLayout, ArenaLimits, MemoryReport};
use shards::BatchShards;

/// WebGPU's default `minStorageBufferOffsetAlignment`, in bytes: every binding window, and so
/// every arena offset and every persistent group, starts at a multiple of it. It also keeps each
/// tensor on its own cache lines.
pub const BINDING_ALIGNMENT: u64 = 256;

/// The arena limits on a device whose storage bindings hold at most `binding_limit` bytes.
pub fn arena_limits(binding_limit: u64) -> ArenaLimits {
    ArenaLimits { max_buffer_bytes: binding_limit, alignment: BINDING_ALIGNMENT }
}

/// Groups of persistent tensors laid out back to back in as few buffers as the binding
/// limit allows. Parameters, gradients and momentum share one layout, so one SGD launch per
/// buffer updates everything.
#[derive(Clone, Debug, Default)]
pub struct Segments {
    /// Elements (f32) per buffer.
    pub buffer_elems: Vec<u64>,
    /// (buffer, element offset) of each group.
    pub places: Vec<(usize, u32)>,
}

impl Segments {
    /// Elements a group takes: group starts are binding-window aligned, so each group can be
    /// bound on its own.
    pub fn padded_len(group: &ParamGroup) -> u64 {
        (group.len() as u64).next_multiple_of(BINDING_ALIGNMENT / 4)
    }

    /// Places `groups` in order, opening a new buffer when the next group would pass
    /// `max_buffer_bytes`. Errors with [`Error::TooLarge`] when one group alone does.
    pub fn layout(groups: &[ParamGroup], max_buffer_bytes: u64) -> Result<Segments> {
        let max_elems = max_buffer_bytes / 4;
        let mut s = Segments::default();
        for g in groups {
            let len = Self::padded_len(g);
            if len > max_elems {
                let name = g.tensors.first().map(|t| t.name.as_str()).unwrap_or("?");
                return Err(Error::TooLarge(format!(
                    "parameter `{name}` needs {} bytes, more than one storage binding holds ({max_buffer_bytes})",
                    len * 4
                )));
            }
            if s.buffer_elems.last().is_none_or(|&used| used + len > max_elems) {
                s.buffer_elems.push(0);
            }
            let b = s.buffer_elems.len() - 1;
            s.places.push((b, s.buffer_elems[b] as u32));
            s.buffer_elems[b] += len;
        }
        Ok(s)
    }

    /// Bytes of all the buffers.
    pub fn bytes(&self) -> u64 {
        self.buffer_elems.iter().sum::<u64>() * 4
    }
}

/// Where a model's persistent tensors live: the parameter groups (whose layout their
/// gradients and momentum buffers share) and the state groups (running statistics).
#[derive(Clone, Debug, Default)]
pub struct PersistentLayout {
    pub params: Segments,
    pub states: Segments,
}

impl PersistentLayout {
    /// The layout of `graph`'s persistent groups under `limits`.
    pub fn new(graph: &Graph, limits: &ArenaLimits) -> Result<PersistentLayout> {
        Ok(PersistentLayout {
            params: Segments::layout(&graph.params, limits.max_buffer_bytes)?,
            states: Segments::layout(&graph.states, limits.max_buffer_bytes)?,
        })
    }
}

/// The persistent layout and the activation arena of one schedule, computed without a GPU.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub persistent: PersistentLayout,
    pub schedule: Schedule,
    pub arena: ArenaLayout,
    pub pass: Pass,
    /// How the batch is split (one shard where every tensor fits a binding).
    pub shards: BatchShards,
    /// Per schedule value, the index of its first arena placement; a batched value has one
    /// placement per shard, in shard order.
    pub value_placements: Vec<usize>,
    /// The index of the shard-statistics scratch among the arena placements, and its bytes, if
    /// there is one.
    shard_statistics: Option<(usize, u64)>,
    /// The index of the split-reduction scratch among the arena placements, and its bytes.
    split_scratch: Option<(usize, u64)>,
}

impl MemoryPlan {
    /// Compiles `graph`'s schedule for `pass` (default options) and plans its arena under
    /// `limits`.
    pub fn new(graph: &Graph, pass: Pass, limits: &ArenaLimits) -> Result<MemoryPlan> {
        let persistent = PersistentLayout::new(graph, limits)?;
        Self::with_persistent(graph, pass, limits, persistent, &ScheduleOptions::default())
    }

    /// As [`MemoryPlan::new`], for a model whose persistent layout already exists (a
    /// session's), with the session's schedule options.
    pub fn with_persistent(
        graph: &Graph,
        pass: Pass,
        limits: &ArenaLimits,
        persistent: PersistentLayout,
        options: &ScheduleOptions,
    ) -> Result<MemoryPlan> {
        let schedule = schedule::compile_with(graph, pass, options)?;
        let shards = BatchShards::plan(graph, &schedule, limits.max_buffer_bytes, options.max_shard_images)?;
        let (mut requests, value_placements) = schedule.requests(graph, &shards);
        let mut shard_statistics = None;
        if let Some(scratch) = shard_statistics_request(graph, &schedule, &shards) {
            shard_statistics = Some((requests.len(), scratch.bytes));
            requests.push(scratch);
        }
        let mut split_scratch = None;
        if options.split_scratch_bytes > 0 && pass == Pass::Train {
            let last = schedule.launches.len().saturating_sub(1);
            let bytes = options.split_scratch_bytes;
            split_scratch = Some((requests.len(), bytes));
            let what = "split weight-gradient partial sums";
            requests.push(arena::ArenaRequest::new(what, bytes, 0, last, arena::Category::Workspace));
        }
        let arena = arena::layout_arena(&requests, limits)?;
        Ok(MemoryPlan { persistent, schedule, arena, pass, shards, value_placements, shard_statistics, split_scratch })
    }

    /// The arena placement of the scratch through which sharded batch statistics combine
    /// (see [`shard_statistics_request`]), when the batch is sharded in training.
    pub fn shard_statistics_placement(&self) -> Option<(arena::Placement, u64)> {
        self.shard_statistics.map(|(i, bytes)| (self.arena.placements[i], bytes))
    }

    /// The arena placement of the split-reduction scratch (see
    /// [`ScheduleOptions::split_scratch_bytes`]), and its bytes, when there is one.
    pub fn split_scratch_placement(&self) -> Option<(arena::Placement, u64)> {
        self.split_scratch.map(|(i, bytes)| (self.arena.placements[i], bytes))
    }

    /// Bytes by category for this schedule, adding up to `total`: every byte the executor
    /// allocates. Parameters include the batch-norm running statistics; gradients and
    /// optimizer state exist only when training. Activations are the most that forward keeps
    /// for backward at any one step; workspace is the rest of the activation arena (gradients
    /// of activations, recomputed values, packing slack), so activations + workspace is the
    /// arena the plan allocates beside the persistent buffers.
    pub fn report(&self) -> MemoryReport {
        let arena = self.arena.report();
        let train = self.pass == Pass::Train;
        let parameters = self.persistent.params.bytes() + self.persistent.states.bytes();
        let gradients = if train { self.persistent.params.bytes() } else { 0 };
        let optimizer = gradients;
        MemoryReport {
            parameters,
            gradients,
            optimizer,
            activations: arena.activations,
            // Everything the arena holds beyond the stored activations (transient values at
            // the busiest step, and packing slack), so that the categories add up to the total.
            workspace: arena.total - arena.activations,
            peak_live: arena.peak_live + parameters + gradients + optimizer,
            total: arena.total + parameters + gradients + optimizer,
        }
    }
}

/// Floats per channel and shard in the shard-statistics scratch: the shard's mean, its sum of
/// squared deviations and its value count (a `u32` in the float's bits).
pub const SHARD_STATISTICS_WORDS: u64 = 3;

/// The scratch through which a sharded training step combines batch statistics: for the widest
/// batch norm, [`SHARD_STATISTICS_WORDS`] floats per channel and shard. Alive for the whole step
/// (every batch norm reuses it, one after another). `None` without shards or batch norms, or in
/// evaluation, which normalises with the running statistics.
pub fn shard_statistics_request(
    graph: &Graph,
    schedule: &Schedule,
    shards: &BatchShards,
) -> Option<arena::ArenaRequest> {
    if shards.len() < 2 || schedule.pass != Pass::Train {
        return None;
    }
    let widest = (graph.nodes.iter())
        .filter(|n| matches!(n.op, crate::graph::Op::BatchNorm { .. }))
        .map(|n| graph.shape(n.inputs[0])[0] as u64)
        .max()?;
    let bytes = widest * SHARD_STATISTICS_WORDS * shards.len() as u64 * 4;
    let last = schedule.launches.len().saturating_sub(1);
    Some(arena::ArenaRequest::new("batch statistics of each shard", bytes, 0, last, arena::Category::Workspace))
}

/// The memory report of `graph`'s schedule for `pass`, for the default WebGPU binding limit.
pub fn memory_report(graph: &Graph, pass: Pass) -> Result<MemoryReport> {
    Ok(MemoryPlan::new(graph, pass, &ArenaLimits::WEBGPU_DEFAULT)?.report())
}

//! The arena memory planner: places every tensor of a training step in one arena made of a
//! few large GPU buffers, so that the executor allocates only what the schedule needs at its
//! busiest step and never allocates during training.
//!
//! The graph numbers its schedule steps (forward, then backward) and describes every tensor by
//! its size and the inclusive range of steps that use it. [`layout_arena`] gives each tensor a
//! [`Placement`] (buffer index and byte offset) such that
//!
//! * two tensors whose lifetimes share a step never share a byte;
//! * every offset is a multiple of [`ArenaLimits::alignment`], and every size is rounded up to
//!   it (so a tensor never straddles another's alignment slot);
//! * no buffer is larger than [`ArenaLimits::max_buffer_bytes`]: when the arena would be, it is
//!   split over several buffers. A tensor is never split, so one larger than the limit is
//!   [`Error::TooLarge`].
//!
//! No plan can be smaller than [`peak_live_bytes`]. For properly nested (LIFO) lifetimes, the
//! shape a forward-then-backward schedule mostly has, the plan reaches that bound exactly
//! whenever it fits in one buffer. Arbitrary lifetimes make optimal packing NP-hard, so the
//! planner runs several cheap heuristics (see [`Strategy`]) and keeps the smallest arena.
//!
//! Zero-byte tensors are allowed: they take no space and get `Placement { buffer: 0, offset: 0 }`
//! (which may name a buffer that does not exist when the whole arena is empty); the executor
//! must not bind them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

use crate::Error;

/// What a tensor holds; only used to break the memory report down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Trainable weights (persistent).
    Parameters,
    /// Their gradients (persistent).
    Gradients,
    /// Optimizer state such as momentum (persistent).
    Optimizer,
    /// Values stored by the forward pass for the backward pass.
    Activations,
    /// Transient values: recomputed features, gradient temporaries, scratch space.
    Workspace,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 5] =
        [Category::Parameters, Category::Gradients, Category::Optimizer, Category::Activations, Category::Workspace];

    /// Lower-case name used in reports and messages.
    pub fn name(self) -> &'static str {
        match self {
            Category::Parameters => "parameters",
            Category::Gradients => "gradients",
            Category::Optimizer => "optimizer",
            Category::Activations => "activations",
            Category::Workspace => "workspace",
        }
    }
}

/// One tensor to place. It is alive from `first_use` to `last_use`, both inclusive, so two
/// tensors where one's last use is the other's first use do conflict. A persistent tensor is
/// simply one alive over the whole schedule (`first_use = 0`, `last_use` = last step).
#[derive(Clone, Debug)]
pub struct ArenaRequest {
    /// Shown in errors; need not be unique.
    pub name: String,
    /// Size before alignment rounding; zero is allowed and takes no space.
    pub bytes: u64,
    pub first_use: usize,
    pub last_use: usize,
    pub category: Category,
}

impl ArenaRequest {
    pub fn new(name: impl Into<String>, bytes: u64, first_use: usize, last_use: usize, category: Category) -> Self {
        ArenaRequest { name: name.into(), bytes, first_use, last_use, category }
    }
}

/// What the device allows.
#[derive(Clone, Copy, Debug)]
pub struct ArenaLimits {
    /// Largest buffer the arena may use: the device's `maxStorageBufferBindingSize`, because
    /// the executor binds whole buffers. If it is not a multiple of `alignment`, only the
    /// aligned part below it is used.
    pub max_buffer_bytes: u64,
    /// Every offset is a multiple of this (WebGPU's `minStorageBufferOffsetAlignment`). Any
    /// positive value works, not only powers of two.
    pub alignment: u64,
}

impl ArenaLimits {
    /// WebGPU's guaranteed defaults: 128 MiB bindings, 256-byte offset alignment.
    pub const WEBGPU_DEFAULT: ArenaLimits = ArenaLimits { max_buffer_bytes: 128 << 20, alignment: 256 };
}

/// Where one tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into [`ArenaLayout::buffer_bytes`].
    pub buffer: usize,
    /// Byte offset inside that buffer, a multiple of the alignment.
    pub offset: u64,
}

/// A placement heuristic. [`layout_arena`] runs them all and keeps the smallest arena; ties go
/// to the earlier one in [`Strategy::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Sweep the tensors in order of first use (longer lifetimes first on ties) and put each at
    /// the lowest free address. On properly nested lifetimes this is a stack allocator, hence
    /// optimal; it is also the fastest.
    FirstFitByStart,
    /// The same sweep, but each tensor takes the free gap that grows the arena least and, among
    /// those, the tightest one. Helps when lifetimes cross and leave holes.
    BestFitByStart,
    /// Largest tensors first, each into the tightest gap between the already placed tensors
    /// whose lifetimes overlap its own (Pisarchyk & Lee, "Efficient Memory Management for Deep
    /// Neural Net Inference", greedy by size). Usually the best on crossing lifetimes, but it is
    /// quadratic in the number of non-persistent tensors, so [`layout_arena`] skips it beyond
    /// some 10,000 of them.
    GreedyBySize,
    /// The same placement, but the tensors that cover most of the memory-time plane (bytes
    /// times steps alive) go first. Long-lived tensors then settle before the short ones that
    /// must fit around them; on DenseNet training schedules split at a 128 MiB binding limit
    /// this packed some 10 MiB tighter than by size alone.
    GreedyByArea,
}

impl Strategy {
    pub const ALL: [Strategy; 4] =
        [Strategy::FirstFitByStart, Strategy::BestFitByStart, Strategy::GreedyBySize, Strategy::GreedyByArea];

    fn is_greedy(self) -> bool {
        matches!(self, Strategy::GreedyBySize | Strategy::GreedyByArea)
    }
}

/// Where every request lives: the arena's buffers and each request's placement, as
/// [`layout_arena`] returns it. One part of a [`crate::memory::MemoryPlan`].
#[derive(Clone, Debug)]
pub struct ArenaLayout {
    /// Size of each buffer to allocate, each at most the limit and a multiple of the alignment.
    pub buffer_bytes: Vec<u64>,
    /// One placement per request, in request order.
    pub placements: Vec<Placement>,
    /// The heuristic that produced this layout.
    pub strategy: Strategy,
    report: MemoryReport,
}

impl ArenaLayout {
    /// Bytes the executor allocates: the sum of the buffer sizes.
    pub fn total_bytes(&self) -> u64 {
        self.buffer_bytes.iter().sum()
    }

    /// Where the memory goes; see [`MemoryReport`].
    pub fn report(&self) -> MemoryReport {
        self.report
    }
}

/// Memory use of an arena layout, all figures in bytes after alignment rounding.
///
/// Each category figure is that category's peak live bytes over the schedule: for the
/// persistent categories (parameters, gradients, optimizer) it is simply their sum; for
/// activations and workspace it is the most that is alive at any one step. Category peaks may
/// happen at different steps, so they need not add up to `peak_live`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    pub parameters: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub workspace: u64,
    /// Most bytes alive at any one step, all categories together: the lower bound of any plan.
    pub peak_live: u64,
    /// Bytes the arena allocates. At least `peak_live`; equal for properly nested lifetimes
    /// that fit in one buffer. The gap is fragmentation plus buffer-splitting waste.
    pub total: u64,
}

impl MemoryReport {
    /// The figure for one category.
    pub fn category(&self, category: Category) -> u64 {
        match category {
            Category::Parameters => self.parameters,
            Category::Gradients => self.gradients,
            Category::Optimizer => self.optimizer,
            Category::Activations => self.activations,
            Category::Workspace => self.workspace,
        }
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = (1u64 << 20) as f64;
        writeln!(f, "{:<12} {:>12} {:>16}", "memory", "MiB", "bytes")?;
        let rows = Category::ALL.iter().map(|&c| (c.name(), self.category(c)));
        for (name, bytes) in rows.chain([("peak live", self.peak_live), ("arena total", self.total)]) {
            writeln!(f, "{:<12} {:>12.2} {:>16}", name, bytes as f64 / MIB, bytes)?;
        }
        Ok(())
    }
}

/// The smallest arena any plan could have: the most aligned bytes alive at any one step.
/// An `alignment` of 0 is treated as 1.
pub fn peak_live_bytes(requests: &[ArenaRequest], alignment: u64) -> u64 {
    let alignment = alignment.max(1);
    peak_of(requests.iter().map(|r| (r.first_use, r.last_use, round_up(r.bytes, alignment).unwrap_or(u64::MAX))))
}

/// Lays out the arena with every [`Strategy`] and returns the smallest layout.
///
/// Errors: [`Error::Config`] for a zero alignment or a tensor whose `last_use` precedes its
/// `first_use`; [`Error::TooLarge`] for a tensor that does not fit in one buffer.
pub fn layout_arena(requests: &[ArenaRequest], limits: &ArenaLimits) -> Result<ArenaLayout, Error> {
    let problem = Problem::new(requests, limits)?;
    let mut best: Option<(Vec<Placement>, Vec<u64>, Strategy)> = None;
    for strategy in Strategy::ALL {
        let n = problem.items.len() as u64;
        if strategy.is_greedy() && n.saturating_mul(n) / 2 > GREEDY_WORK_LIMIT {
            continue;
        }
        let (placements, buffers) = problem.run(strategy);
        let better = match &best {
            Some((_, best_buffers, _)) => buffers.iter().sum::<u64>() < best_buffers.iter().sum::<u64>(),
            None => true,
        };
        if better {
            best = Some((placements, buffers, strategy));
        }
    }
    let (placements, buffers, strategy) = best.expect("first-fit always produces a plan");
    Ok(problem.finish(requests, placements, buffers, strategy))
}

/// Lays out the arena with one given strategy, even a greedy one on a huge input. Meant for
/// comparing the heuristics; [`layout_arena`] is what the executor should call.
pub fn layout_arena_with(
    requests: &[ArenaRequest],
    limits: &ArenaLimits,
    strategy: Strategy,
) -> Result<ArenaLayout, Error> {
    let problem = Problem::new(requests, limits)?;
    let (placements, buffers) = problem.run(strategy);
    Ok(problem.finish(requests, placements, buffers, strategy))
}

/// A greedy strategy visits n²/2 placed tensors for n non-persistent ones, a few nanoseconds
/// each. Above this (some 10,000 tensors; a DenseNet-201 step has a few thousand besides its
/// persistent ones) [`layout_arena`] skips the greedy ones so that planning stays well under a second, and the
/// sweeps' answer has to do.
const GREEDY_WORK_LIMIT: u64 = 50_000_000;

fn round_up(bytes: u64, alignment: u64) -> Option<u64> {
    bytes.div_ceil(alignment).checked_mul(alignment)
}

/// Peak of the summed sizes of the `(first, last, size)` intervals alive at any step.
fn peak_of(intervals: impl Iterator<Item = (usize, usize, u64)>) -> u64 {
    let mut starts: Vec<(usize, u64)> = Vec::new();
    let mut ends: Vec<(usize, u64)> = Vec::new();
    for (first, last, size) in intervals.filter(|&(_, _, size)| size > 0) {
        starts.push((first, size));
        ends.push((last, size));
    }
    starts.sort_unstable();
    ends.sort_unstable();
    let (mut live, mut peak, mut e) = (0u64, 0u64, 0);
    for &(first, size) in &starts {
        // Lifetimes are inclusive, so a tensor ending at this step still counts.
        while e < ends.len() && ends[e].0 < first {
            live = live.saturating_sub(ends[e].1);
            e += 1;
        }
        live = live.saturating_add(size);
        peak = peak.max(live);
    }
    peak
}

/// A tensor the strategies have to place: nonzero, not persistent.
#[derive(Clone, Copy, Debug)]
struct Item {
    request: usize,
    size: u64,
    first: usize,
    last: usize,
}

/// A validated request list, with the persistent tensors already placed.
struct Problem {
    alignment: u64,
    /// Usable bytes per buffer: the limit rounded down to the alignment.
    capacity: u64,
    items: Vec<Item>,
    /// Placements of the persistent tensors, which sit at the bottom of the buffers.
    fixed: Vec<(usize, Placement)>,
    /// Per buffer, the bytes taken by persistent tensors; the strategies place above it.
    floors: Vec<u64>,
}

impl Problem {
    fn new(requests: &[ArenaRequest], limits: &ArenaLimits) -> Result<Problem, Error> {
        let alignment = limits.alignment;
        if alignment == 0 {
            return Err(Error::Config("arena alignment must be positive".into()));
        }
        let capacity = limits.max_buffer_bytes / alignment * alignment;
        let mut all = Vec::with_capacity(requests.len());
        for (request, r) in requests.iter().enumerate() {
            if r.last_use < r.first_use {
                return Err(Error::Config(format!(
                    "tensor `{}` (#{request}) has last use at step {} before its first use at step {}",
                    r.name, r.last_use, r.first_use
                )));
            }
            let size = round_up(r.bytes, alignment).filter(|&s| s <= capacity).ok_or_else(|| {
                let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
                Error::TooLarge(format!(
                    "tensor `{}` ({}, #{request}) needs {} bytes ({:.1} MiB) but one GPU buffer may hold at most {} \
                     bytes ({:.1} MiB, {alignment}-byte aligned) on this device, and a tensor cannot be split; \
                     reduce the batch size or the image resolution",
                    r.name,
                    r.category.name(),
                    r.bytes,
                    mib(r.bytes),
                    limits.max_buffer_bytes,
                    mib(limits.max_buffer_bytes),
                ))
            })?;
            if size > 0 {
                all.push(Item { request, size, first: r.first_use, last: r.last_use });
            }
        }

        // A tensor alive over the whole schedule conflicts with every other, so in any single-buffer
        // plan it can be moved to the bottom (shifting what lay below it up) without growing the
        // arena. Placing these first keeps them out of the strategies' conflict searches, which
        // matters because a network has thousands of parameter, gradient and optimizer tensors.
        let span_first = all.iter().map(|i| i.first).min().unwrap_or(0);
        let span_last = all.iter().map(|i| i.last).max().unwrap_or(0);
        let (mut persistent, items): (Vec<Item>, Vec<Item>) =
            all.into_iter().partition(|i| i.first == span_first && i.last == span_last);
        persistent.sort_by_key(|i| (Reverse(i.size), i.request));
        let mut floors: Vec<u64> = Vec::new();
        let mut fixed = Vec::with_capacity(persistent.len());
        for item in &persistent {
            // First-fit decreasing over buffers: only matters when the persistent set alone
            // exceeds one buffer.
            let buffer = match floors.iter().position(|&floor| capacity - floor >= item.size) {
                Some(b) => b,
                None => {
                    floors.push(0);
                    floors.len() - 1
                }
            };
            fixed.push((item.request, Placement { buffer, offset: floors[buffer] }));
            floors[buffer] += item.size;
        }
        Ok(Problem { alignment, capacity, items, fixed, floors })
    }

    /// Placements of `self.items` (same order) and buffer sizes.
    fn run(&self, strategy: Strategy) -> (Vec<Placement>, Vec<u64>) {
        match strategy {
            Strategy::FirstFitByStart => self.sweep(false),
            Strategy::BestFitByStart => self.sweep(true),
            Strategy::GreedyBySize => self.greedy(|i| (Reverse(i.size as u128), i.first, Reverse(i.last))),
            Strategy::GreedyByArea => {
                self.greedy(|i| (Reverse(i.size as u128 * (i.last - i.first + 1) as u128), i.first, Reverse(i.last)))
            }
        }
    }

    fn finish(
        &self,
        requests: &[ArenaRequest],
        item_placements: Vec<Placement>,
        buffer_bytes: Vec<u64>,
        strategy: Strategy,
    ) -> ArenaLayout {
        let mut placements = vec![Placement { buffer: 0, offset: 0 }; requests.len()];
        for (item, placement) in self.items.iter().zip(item_placements) {
            placements[item.request] = placement;
        }
        for &(request, placement) in &self.fixed {
            placements[request] = placement;
        }
        let category_peak = |c: Category| {
            let aligned = |r: &ArenaRequest| round_up(r.bytes, self.alignment).unwrap_or(u64::MAX);
            peak_of(requests.iter().filter(|r| r.category == c).map(|r| (r.first_use, r.last_use, aligned(r))))
        };
        let report = MemoryReport {
            parameters: category_peak(Category::Parameters),
            gradients: category_peak(Category::Gradients),
            optimizer: category_peak(Category::Optimizer),
            activations: category_peak(Category::Activations),
            workspace: category_peak(Category::Workspace),
            peak_live: peak_live_bytes(requests, self.alignment),
            total: buffer_bytes.iter().sum(),
        };
        ArenaLayout { buffer_bytes, placements, strategy, report }
    }

    /// FirstFitByStart / BestFitByStart: one pass in order of first use, with a free list per
    /// buffer. Tensors are released as soon as the sweep passes their last use.
    fn sweep(&self, best_fit: bool) -> (Vec<Placement>, Vec<u64>) {
        let items = &self.items;
        let mut order: Vec<usize> = (0..items.len()).collect();
        // Outer lifetimes before the ones they enclose: that is what makes nested lifetimes stack.
        order.sort_unstable_by_key(|&i| (items[i].first, Reverse(items[i].last), Reverse(items[i].size), i));

        let mut arena = Arena::new(self.capacity, &self.floors);
        let mut placements = vec![Placement { buffer: 0, offset: 0 }; items.len()];
        let mut live: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
        for i in order {
            let item = items[i];
            while let Some(&Reverse((last, j))) = live.peek() {
                if last >= item.first {
                    break;
                }
                live.pop();
                arena.release(placements[j], items[j].size);
            }
            placements[i] = arena.allocate(item.size, best_fit);
            live.push(Reverse((item.last, i)));
        }
        (placements, arena.high)
    }

    /// GreedyBySize and GreedyByArea, which differ only in the order `key` gives the tensors.
    /// Each tensor scans every tensor already placed, in offset order, skipping
    /// those whose lifetimes miss its own. That is n²/2 visits in all, but of contiguous memory
    /// at about a nanosecond each; gathering just the conflicting tensors through an interval
    /// index and sorting them by offset was measured an order of magnitude slower on DenseNet-like
    /// schedules, where the stored activations all overlap each other.
    fn greedy<K: Ord>(&self, key: impl Fn(&Item) -> K) -> (Vec<Placement>, Vec<u64>) {
        let items = &self.items;
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by_key(|&i| (key(&items[i]), i));

        // Step ranks instead of steps keep a scanned entry at 24 bytes; comparisons are unchanged.
        let mut steps: Vec<usize> = items.iter().flat_map(|i| [i.first, i.last]).collect();
        steps.sort_unstable();
        steps.dedup();
        let rank = |step: usize| steps.partition_point(|&s| s < step) as u32;

        let mut placements = vec![Placement { buffer: 0, offset: 0 }; items.len()];
        let mut high = self.floors.clone();
        let mut floors = self.floors.clone();
        let mut placed: Vec<OffsetList> = floors.iter().map(|_| OffsetList::default()).collect();
        for i in order {
            let Item { size, first, last, .. } = items[i];
            let (first, last) = (rank(first), rank(last));
            // Per buffer: the tightest gap between conflicting tensors, else just above them.
            // Across buffers: whatever grows the arena least, then the tightest fit.
            let mut best: Option<((u64, u64, usize), Placement)> = None;
            for (buffer, list) in placed.iter().enumerate() {
                let mut below = floors[buffer];
                let mut tightest: Option<(u64, u64)> = None;
                for e in list.iter() {
                    // Lifetimes cross unpredictably, so the common path is kept free of branches.
                    let conflict = (e.first <= last) & (first <= e.last);
                    if conflict & (e.offset >= below + size) && tightest.is_none_or(|(gap, _)| e.offset - below < gap) {
                        tightest = Some((e.offset - below, below));
                    }
                    below = if conflict { below.max(e.end) } else { below };
                }
                let (gap, offset) = match tightest {
                    Some(found) => found,
                    None if self.capacity - below >= size => (self.capacity - below, below),
                    None => continue,
                };
                let key = ((offset + size).saturating_sub(high[buffer]), gap, buffer);
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, Placement { buffer, offset }));
                }
            }
            let placement = best.map(|(_, p)| p).unwrap_or_else(|| {
                floors.push(0);
                high.push(0);
                placed.push(OffsetList::default());
                Placement { buffer: floors.len() - 1, offset: 0 }
            });
            let end = placement.offset + size;
            high[placement.buffer] = high[placement.buffer].max(end);
            placed[placement.buffer].insert(Placed { offset: placement.offset, end, first, last });
            placements[i] = placement;
        }
        (placements, high)
    }
}

#[derive(Clone, Copy, Debug)]
struct Placed {
    offset: u64,
    end: u64,
    first: u32,
    last: u32,
}

/// Tensors of one buffer in offset order, kept in bounded chunks so that an insertion moves at
/// most a chunk instead of the whole list.
#[derive(Default)]
struct OffsetList {
    chunks: Vec<Vec<Placed>>,
}

impl OffsetList {
    const CHUNK: usize = 512;

    fn insert(&mut self, p: Placed) {
        let after = |e: &Placed| e.offset <= p.offset;
        let Some(last) = self.chunks.len().checked_sub(1) else {
            self.chunks.push(vec![p]);
            return;
        };
        let c = self.chunks.partition_point(|chunk| chunk.last().is_some_and(after)).min(last);
        let chunk = &mut self.chunks[c];
        chunk.insert(chunk.partition_point(after), p);
        if chunk.len() > 2 * Self::CHUNK {
            let tail = chunk.split_off(Self::CHUNK);
            self.chunks.insert(c + 1, tail);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Placed> {
        self.chunks.iter().flatten()
    }
}

/// Free space of the sweep strategies: per buffer, the free gaps above the persistent floor as
/// `start -> end`, coalesced, the last one reaching the buffer's capacity.
struct Arena {
    capacity: u64,
    free: Vec<BTreeMap<u64, u64>>,
    /// Per buffer, the highest byte ever used: the buffer's final size.
    high: Vec<u64>,
}

impl Arena {
    fn new(capacity: u64, floors: &[u64]) -> Arena {
        let free = floors.iter().map(|&floor| BTreeMap::from([(floor, capacity)])).collect();
        Arena { capacity, free, high: floors.to_vec() }
    }

    fn allocate(&mut self, size: u64, best_fit: bool) -> Placement {
        let mut chosen: Option<((u64, u64), usize, u64)> = None;
        'buffers: for (buffer, gaps) in self.free.iter().enumerate() {
            for (&start, &end) in gaps {
                if end - start < size {
                    continue;
                }
                if !best_fit {
                    chosen = Some(((0, 0), buffer, start));
                    break 'buffers;
                }
                // Growing the buffer costs real memory; a loose fit only costs future options.
                let key = ((start + size).saturating_sub(self.high[buffer]), end - start);
                if chosen.is_none_or(|(k, _, _)| key < k) {
                    chosen = Some((key, buffer, start));
                }
            }
        }
        let (buffer, start) = match chosen {
            Some((_, buffer, start)) => (buffer, start),
            None => {
                self.free.push(BTreeMap::from([(0, self.capacity)]));
                self.high.push(0);
                (self.free.len() - 1, 0)
            }
        };
        let gaps = &mut self.free[buffer];
        let end = gaps.remove(&start).expect("chosen gap exists");
        if start + size < end {
            gaps.insert(start + size, end);
        }
        self.high[buffer] = self.high[buffer].max(start + size);
        Placement { buffer, offset: start }
    }

    fn release(&mut self, placement: Placement, size: u64) {
        let gaps = &mut self.free[placement.buffer];
        let (mut start, mut end) = (placement.offset, placement.offset + size);
        if let Some((&before, &before_end)) = gaps.range(..start).next_back() {
            if before_end == start {
                gaps.remove(&before);
                start = before;
            }
        }
        if let Some(after_end) = gaps.remove(&end) {
            end = after_end;
        }
        gaps.insert(start, end);
    }
}

//! Runs a graph on the GPU. A [`Session`] owns the persistent state (parameters, their
//! gradients, momentum buffers and batch-norm running statistics); a [`Program`] is one
//! compiled schedule (a training step or an inference pass) with its planned activation arena
//! and every kernel launch recorded once. Running a step only rewrites a few parameter words
//! (learning rate, dropout seed) and replays the launches.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, View};
use crate::graph::{Graph, Init, ParamGroup, StateId};
use crate::memory::arena::{ArenaLayout, ArenaLimits};
use crate::memory::shards::{BatchShards, Shard};
use crate::memory::{arena_limits, MemoryPlan, PersistentLayout, Segments};
use crate::ops;
use crate::profile::{self, DispatchTime, LaunchInfo, StepProfile};
use crate::schedule::{LaunchOp, Loc, Pass, Phase, Schedule, ScheduleOptions};
use crate::Gpu;
use rand::SeedableRng;
use rand_distr::Distribution;
use std::sync::Arc;

pub use crate::ops::sgd::SgdHyper;

/// Every persistent tensor by torchvision state-dict name: (name, PyTorch shape, values).
pub type StateDict = Vec<(String, Vec<usize>, Vec<f32>)>;
/// One vector per parameter (or state) group, in group order and layout.
pub type GroupValues = Vec<Vec<f32>>;

struct Persistent {
    params: Vec<wgpu::Buffer>,
    grads: Vec<wgpu::Buffer>,
    momentum: Vec<wgpu::Buffer>,
    states: Vec<wgpu::Buffer>,
    /// The training step's divergence flags (see sgd.wgsl): two words per parameter buffer
    /// (gradient, update) at words `2b` and `2b + 1`, then one per state buffer.
    divergence_flags: wgpu::Buffer,
}

impl Persistent {
    fn flag_words(&self) -> usize {
        flag_words(self.params.len(), self.states.len())
    }
}

/// Words of [`Persistent::divergence_flags`] for these many parameter and state buffers.
fn flag_words(param_buffers: usize, state_buffers: usize) -> usize {
    2 * param_buffers + state_buffers
}

/// A model's persistent state on one device, and its compiled programs.
pub struct Session {
    pub gpu: Arc<Gpu>,
    pub graph: Graph,
    limits: ArenaLimits,
    layout: PersistentLayout,
    schedule_options: ScheduleOptions,
    persistent: Persistent,
    train: Option<Program>,
    eval: Option<Program>,
    /// Training steps taken; keys the dropout masks.
    pub step: u64,
    /// Batches normalised with batch statistics (PyTorch's `num_batches_tracked`).
    pub batches_tracked: u64,
}

/// Loss and correct-prediction count of one batch, and for a training step the first value
/// the step made NaN or infinite.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    pub loss: f32,
    pub correct: u32,
    /// For a training step: the first parameter tensor whose gradient or update was not
    /// finite, else the first running statistic that was not; `None` when every one was (and
    /// always for inference).
    pub diverged: Option<Divergence>,
}

/// Where a training step first produced a NaN or an infinity, found on the device by the
/// optimizer launch (sgd.wgsl's divergence flags) and read back with the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The tensor's torchvision state-dict name, e.g. `features.conv0.weight`.
    pub tensor: String,
    pub source: DivergenceSource,
    /// The first non-finite value (NaN, inf or -inf), at the lowest flagged element.
    pub value: f32,
}

/// Which value of a tensor a [`Divergence`] was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DivergenceSource {
    /// The parameter's gradient from this step's backward pass.
    Gradient,
    /// The updated parameter, from a finite gradient (the update overflowed).
    Update,
    /// A batch-norm running statistic, after this step's forward pass.
    Statistics,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, v) = (&self.tensor, self.value);
        match self.source {
            DivergenceSource::Gradient => write!(f, "the gradient of `{t}` became {v}"),
            DivergenceSource::Update => write!(f, "the update made `{t}` {v} (its gradient was finite)"),
            DivergenceSource::Statistics => write!(f, "the running statistic `{t}` was {v} after the forward pass"),
        }
    }
}

impl Session {
    /// Allocates the persistent state and initialises parameters like PyTorch's DenseNet,
    /// deterministically from `seed`.
    pub async fn new(gpu: Arc<Gpu>, graph: Graph, seed: u64) -> Result<Session> {
        graph.validate()?;
        let limits = arena_limits(gpu.max_binding_bytes());
        let layout = PersistentLayout::new(&graph, &limits)?;
        let alloc = async |name: &str, layout: &Segments| -> Result<Vec<wgpu::Buffer>> {
            let mut out = Vec::new();
            for (i, &elems) in layout.buffer_elems.iter().enumerate() {
                out.push(gpu.storage_buffer(&format!("{name} {i}"), elems * 4).await?);
            }
            Ok(out)
        };
        let persistent = Persistent {
            params: alloc("parameters", &layout.params).await?,
            grads: alloc("gradients", &layout.params).await?,
            momentum: alloc("momentum", &layout.params).await?,
            states: alloc("running statistics", &layout.states).await?,
            divergence_flags: gpu
                .storage_buffer(
                    "divergence flags",
                    4 * flag_words(layout.params.buffer_elems.len(), layout.states.buffer_elems.len()) as u64,
                )
                .await?,
        };
        let schedule_options = ScheduleOptions { split_scratch_bytes: split_scratch_bytes(&gpu), ..Default::default() };
        let session = Session {
            gpu,
            graph,
            limits,
            layout,
            schedule_options,
            persistent,
            train: None,
            eval: None,
            step: 0,
            batches_tracked: 0,
        };
        session.initialise(seed);
        Ok(session)
    }

    fn initialise(&self, seed: u64) {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        for (i, group) in self.graph.params.iter().enumerate() {
            let values: Vec<f32> = group.tensors.iter().flat_map(|t| init_values(t.init, t.len(), &mut rng)).collect();
            self.write_group(&self.persistent.params, &self.layout.params, i, &values);
        }
        // Momentum starts at zero, which makes the first update PyTorch's `buf = g` exactly.
        for (b, &elems) in self.persistent.momentum.iter().zip(&self.layout.params.buffer_elems) {
            self.gpu.fill_f32(b, 0, elems as usize, 0.0);
        }
        for (i, group) in self.graph.states.iter().enumerate() {
            let values: Vec<f32> = group.tensors.iter().flat_map(|t| init_values(t.init, t.len(), &mut rng)).collect();
            self.write_group(&self.persistent.states, &self.layout.states, i, &values);
        }
    }

    fn write_group(&self, buffers: &[wgpu::Buffer], layout: &Segments, group: usize, values: &[f32]) {
        let (b, offset) = layout.places[group];
        self.gpu.write_f32(&buffers[b], offset as u64, values);
    }

    /// Every persistent tensor by its torchvision state-dict name, with its PyTorch shape:
    /// parameters, then running statistics.
    pub async fn state_dict(&self) -> Result<StateDict> {
        let mut out = Vec::new();
        let sets = [
            (&self.graph.params, &self.layout.params, &self.persistent.params),
            (&self.graph.states, &self.layout.states, &self.persistent.states),
        ];
        for (groups, layout, buffers) in sets {
            for (i, g) in groups.iter().enumerate() {
                let (b, offset) = layout.places[i];
                let values = self.gpu.read_f32(&buffers[b], offset as u64, g.len()).await?;
                out.extend(g.split(&values).map(|(t, v)| (t.name.clone(), t.shape.clone(), v.to_vec())));
            }
        }
        Ok(out)
    }

    async fn read_groups(
        &self,
        groups: &[ParamGroup],
        layout: &Segments,
        buffers: &[wgpu::Buffer],
    ) -> Result<GroupValues> {
        let mut out = Vec::with_capacity(groups.len());
        for (g, &(b, offset)) in groups.iter().zip(&layout.places) {
            out.push(self.gpu.read_f32(&buffers[b], offset as u64, g.len()).await?);
        }
        Ok(out)
    }

    /// Every parameter group's values, in group order and layout.
    pub async fn parameters(&self) -> Result<GroupValues> {
        self.read_groups(&self.graph.params, &self.layout.params, &self.persistent.params).await
    }

    /// Every parameter group's gradient from the last training step.
    pub async fn gradients(&self) -> Result<GroupValues> {
        self.read_groups(&self.graph.params, &self.layout.params, &self.persistent.grads).await
    }

    /// Every state group (batch-norm running mean and variance).
    pub async fn states(&self) -> Result<GroupValues> {
        self.read_groups(&self.graph.states, &self.layout.states, &self.persistent.states).await
    }

    /// Every parameter group's momentum buffer.
    pub async fn momentum(&self) -> Result<GroupValues> {
        self.read_groups(&self.graph.params, &self.layout.params, &self.persistent.momentum).await
    }

    fn write_groups(
        &self,
        groups: &[ParamGroup],
        layout: &Segments,
        buffers: &[wgpu::Buffer],
        values: &[Vec<f32>],
        what: &str,
    ) -> Result<()> {
        if values.len() != groups.len() {
            return Err(Error::Shape(format!("expected {} {what} groups, got {}", groups.len(), values.len())));
        }
        for (i, (g, v)) in groups.iter().zip(values).enumerate() {
            if v.len() != g.len() {
                let name = g.tensors.first().map(|t| t.name.as_str()).unwrap_or("?");
                return Err(Error::Shape(format!(
                    "{what} group {i} (`{name}`…) has {} values, expected {}",
                    v.len(),
                    g.len()
                )));
            }
        }
        for (i, v) in values.iter().enumerate() {
            self.write_group(buffers, layout, i, v);
        }
        Ok(())
    }

    /// Replaces every parameter group (same order and layout as [`Session::parameters`]).
    pub fn set_parameters(&self, values: &[Vec<f32>]) -> Result<()> {
        self.write_groups(&self.graph.params, &self.layout.params, &self.persistent.params, values, "parameter")
    }

    /// Replaces every state group (same order and layout as [`Session::states`]).
    pub fn set_states(&self, values: &[Vec<f32>]) -> Result<()> {
        self.write_groups(&self.graph.states, &self.layout.states, &self.persistent.states, values, "state")
    }

    /// Replaces every momentum buffer (for resuming training).
    pub fn set_momentum(&self, values: &[Vec<f32>]) -> Result<()> {
        self.write_groups(&self.graph.params, &self.layout.params, &self.persistent.momentum, values, "momentum")
    }

    /// Overwrites a persistent tensor by its state-dict name. The length must match.
    pub fn set_tensor(&self, name: &str, values: &[f32]) -> Result<()> {
        let sets = [
            (&self.graph.params, &self.layout.params, &self.persistent.params),
            (&self.graph.states, &self.layout.states, &self.persistent.states),
        ];
        for (groups, layout, buffers) in sets {
            for (i, g) in groups.iter().enumerate() {
                let mut at = 0u64;
                for t in &g.tensors {
                    if t.name == name {
                        if values.len() != t.len() {
                            return Err(Error::Shape(format!(
                                "`{name}` has {} values, expected {} (shape {:?})",
                                values.len(),
                                t.len(),
                                t.shape
                            )));
                        }
                        let (b, offset) = layout.places[i];
                        self.gpu.write_f32(&buffers[b], offset as u64 + at, values);
                        return Ok(());
                    }
                    at += t.len() as u64;
                }
            }
        }
        Err(Error::Shape(format!("the model has no tensor named `{name}`")))
    }

    /// The memory plan of this session's program for `pass` (compiled or not).
    pub fn memory_plan(&self, pass: Pass) -> Result<MemoryPlan> {
        MemoryPlan::with_persistent(&self.graph, pass, &self.limits, self.layout.clone(), &self.schedule_options)
    }

    /// The schedule compiler's options for this session's programs.
    pub fn schedule_options(&self) -> &ScheduleOptions {
        &self.schedule_options
    }

    /// Sets the schedule compiler's options for this session's programs; compiled programs are
    /// released, so the next step compiles with the new options.
    pub fn set_schedule_options(&mut self, options: ScheduleOptions) {
        self.schedule_options = options;
        self.train = None;
        self.eval = None;
    }

    async fn program(&mut self, pass: Pass) -> Result<&mut Program> {
        let plan = match pass {
            Pass::Train if self.train.is_none() => Some(self.memory_plan(pass)?),
            Pass::Eval if self.eval.is_none() => Some(self.memory_plan(pass)?),
            _ => None,
        };
        let slot = match pass {
            Pass::Train => &mut self.train,
            Pass::Eval => &mut self.eval,
        };
        if let Some(plan) = plan {
            *slot = Some(Program::new(&self.gpu, &self.graph, plan, &self.persistent).await?);
        }
        Ok(slot.as_mut().unwrap())
    }

    /// Compiles and allocates the program for `pass` now (otherwise the first step does).
    pub async fn prepare(&mut self, pass: Pass) -> Result<()> {
        self.program(pass).await.map(|_| ())
    }

    /// Frees a compiled program's arena (e.g. the training arena before a long evaluation).
    pub fn release(&mut self, pass: Pass) {
        match pass {
            Pass::Train => self.train = None,
            Pass::Eval => self.eval = None,
        }
    }

    /// Bytes allocated on the device: persistent buffers plus every compiled program's arena.
    pub fn allocated_bytes(&self) -> u64 {
        let p = &self.persistent;
        let persistent: u64 =
            [&p.params, &p.grads, &p.momentum, &p.states].iter().flat_map(|v| v.iter()).map(|b| b.size()).sum();
        persistent + [&self.train, &self.eval].iter().filter_map(|p| p.as_ref()).map(|p| p.arena_bytes()).sum::<u64>()
    }

    /// Bytes of the compiled program's activation arena, if it is compiled.
    pub fn arena_bytes(&self, pass: Pass) -> Option<u64> {
        match pass {
            Pass::Train => self.train.as_ref(),
            Pass::Eval => self.eval.as_ref(),
        }
        .map(Program::arena_bytes)
    }

    fn check_batch(&self, images: &[f32], labels: &[u32]) -> Result<()> {
        let input = self.graph.input.unwrap();
        let [c, n, h, w] = self.graph.shape(input);
        let expected = (c * n * h * w) as usize;
        if images.len() != expected {
            return Err(Error::Shape(format!(
                "expected a batch of {n} images of {c}x{h}x{w} ({expected} values in NCHW order), got {} values",
                images.len()
            )));
        }
        if labels.len() != n as usize {
            return Err(Error::Shape(format!("expected {n} labels, got {}", labels.len())));
        }
        let classes = self.graph.shape(self.graph.logits.unwrap())[0];
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Shape(format!("label {bad} is out of range for {classes} classes")));
        }
        Ok(())
    }

    /// Writes a batch (NCHW images, as PyTorch takes them) into the program's input values.
    fn upload(&self, program: &Program, images: &[f32], labels: &[u32]) {
        let [c, _, h, w] = self.graph.shape(self.graph.input.unwrap());
        let image = (c * h * w) as usize;
        for shard in program.shards().iter() {
            let (from, to) = (shard.first as usize, (shard.first + shard.images) as usize);
            let cnhw = crate::graph::channel_major(&images[from * image..to * image], [c, shard.images, h, w]);
            let (b, off) = program.value_place(program.schedule.input, shard.index);
            self.gpu.write_f32(&program.arena[b], off, &cnhw);
            if let Some(l) = program.schedule.labels {
                let (b, off) = program.value_place(l, shard.index);
                let as_f32: Vec<f32> = labels[from..to].iter().map(|&l| l as f32).collect();
                self.gpu.write_f32(&program.arena[b], off, &as_f32);
            }
        }
    }

    /// One SGD training step on a batch: forward (batch statistics), backward, update.
    /// Returns the batch's loss and correct count from before the update. Hyper-parameters
    /// that [`crate::train::check_sgd`] refuses (momentum outside [0, 1), a negative or NaN
    /// learning rate or weight decay) are an error, before anything runs.
    pub async fn train_step(&mut self, images: &[f32], labels: &[u32], sgd: &SgdHyper) -> Result<StepResult> {
        self.check_batch(images, labels)?;
        crate::train::check_sgd(sgd)?;
        let step = self.step;
        let gpu = self.gpu.clone();
        self.program(Pass::Train).await?;
        let program = self.train.as_ref().unwrap();
        self.upload(program, images, labels);
        program.set_step(&gpu, step, sgd);
        self.arm_divergence_flags();
        gpu.run(&program.dispatches).await?;
        let result = self.read_result(Pass::Train).await?;
        self.step += 1;
        self.batches_tracked += 1;
        Ok(result)
    }

    /// [`Session::train_step`], timed launch by launch for the step profiler: each dispatch runs
    /// in a compute pass of its own between timestamps (see [`Gpu::run_profiled`]), and the
    /// step's wall time is split into host work, waiting for the device and the readback.
    /// The step trains exactly as [`Session::train_step`] would (same launches, same order).
    /// [`StepProfile::data_wait`] and `unprofiled_wall` are left for the caller. Errors: as
    /// [`Session::train_step`].
    pub async fn profile_train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        sgd: &SgdHyper,
    ) -> Result<(StepResult, StepProfile)> {
        let start = web_time::Instant::now();
        self.check_batch(images, labels)?;
        crate::train::check_sgd(sgd)?;
        let step = self.step;
        let gpu = self.gpu.clone();
        self.program(Pass::Train).await?;
        let program = self.train.as_ref().unwrap();
        self.upload(program, images, labels);
        program.set_step(&gpu, step, sgd);
        self.arm_divergence_flags();
        let submitted = start.elapsed().as_secs_f64();
        let timed = gpu.run_profiled(&program.dispatches).await?;
        let finished = start.elapsed().as_secs_f64();
        let result = self.read_result(Pass::Train).await?;
        let wall = start.elapsed().as_secs_f64();
        self.step += 1;
        self.batches_tracked += 1;
        let program = self.train.as_ref().unwrap();
        let parameters: u64 = self.graph.params.iter().map(|p| p.len() as u64).sum();
        let launches = (program.schedule.launches.iter())
            .map(|l| {
                let node =
                    l.node.map(|n| self.graph.nodes[n.0].name.clone()).unwrap_or_else(|| l.op.family().to_string());
                let phase = match l.phase {
                    Phase::Forward => "forward",
                    Phase::Recompute => "recompute",
                    Phase::Backward => "backward",
                    Phase::Update => "update",
                };
                // `forward stats`, `recompute apply`, `backward input` (not `backward backward input`).
                let kind = l.op.kind();
                let direction = if kind.starts_with(phase) { kind.to_string() } else { format!("{phase} {kind}") };
                LaunchInfo {
                    family: l.op.family(),
                    direction,
                    block: if l.node.is_some() { profile::block_of(&node) } else { "optimizer".into() },
                    shape: l.op.shape_text(),
                    node,
                    work: l.op.work(parameters),
                }
            })
            .collect();
        let dispatches: Vec<DispatchTime> = (program.dispatches.iter().zip(&program.launch_of).zip(timed))
            .map(|((d, &launch), (submission, start, seconds))| DispatchTime {
                launch,
                entry: d.label,
                module: d.module,
                submission,
                start,
                seconds,
            })
            .collect();
        let device_span = dispatches.iter().map(|d| d.start + d.seconds).fold(0.0, f64::max);
        let profile = StepProfile {
            clock: crate::tune::clock(&gpu),
            adapter: gpu.describe(),
            launches,
            dispatches,
            wall,
            host: submitted,
            wait: finished - submitted,
            readback: wall - finished,
            data_wait: 0.0,
            device_span,
            unprofiled_wall: None,
        };
        Ok((result, profile))
    }

    /// Fills the divergence flags with [`ops::sgd::kernels::NO_NON_FINITE`] before a training
    /// step; the write is ordered before the step's submission.
    fn arm_divergence_flags(&self) {
        let words = vec![ops::sgd::kernels::NO_NON_FINITE; self.persistent.flag_words()];
        self.gpu.write_u32(&self.persistent.divergence_flags, 0, &words);
    }

    /// The loss and correct count of `pass`'s last run and, for training, the divergence flags,
    /// read back in one copy and one wait.
    async fn read_result(&self, pass: Pass) -> Result<StepResult> {
        let program = match pass {
            Pass::Train => self.train.as_ref(),
            Pass::Eval => self.eval.as_ref(),
        }
        .expect("the pass ran, so its program is compiled");
        let Some(loss) = program.schedule.loss else {
            return Ok(StepResult { loss: f32::NAN, correct: 0, diverged: None });
        };
        let (b, off) = program.value_place(loss, 0);
        let flags = &self.persistent.divergence_flags;
        let flag_words = if pass == Pass::Train { self.persistent.flag_words() } else { 0 };
        let words = self.gpu.read_words(&[(&program.arena[b], off, 2), (flags, 0, flag_words)]).await?;
        let (loss, correct) = (f32::from_bits(words[0][0]), f32::from_bits(words[0][1]) as u32);
        let diverged = self.divergence(&words[1]).await?;
        Ok(StepResult { loss, correct, diverged })
    }

    /// Decodes the flags a training step left (see [`Persistent::divergence_flags`]): a
    /// gradient first, then an update (both in parameter-buffer order, so the earliest tensor
    /// of the graph wins), then a running statistic; reads the offending value back.
    async fn divergence(&self, flags: &[u32]) -> Result<Option<Divergence>> {
        use ops::sgd::kernels::NO_NON_FINITE;
        let p = &self.persistent;
        let params = p.params.len();
        let candidates = (0..params)
            .map(|b| (flags.get(2 * b), DivergenceSource::Gradient, b))
            .chain((0..params).map(|b| (flags.get(2 * b + 1), DivergenceSource::Update, b)))
            .chain((0..p.states.len()).map(|b| (flags.get(2 * params + b), DivergenceSource::Statistics, b)));
        for (flag, source, b) in candidates {
            let Some(&index) = flag.filter(|&&f| f != NO_NON_FINITE) else { continue };
            let (buffer, groups, layout) = match source {
                DivergenceSource::Gradient => (&p.grads[b], &self.graph.params, &self.layout.params),
                DivergenceSource::Update => (&p.params[b], &self.graph.params, &self.layout.params),
                DivergenceSource::Statistics => (&p.states[b], &self.graph.states, &self.layout.states),
            };
            let value = self.gpu.read_f32(buffer, index as u64, 1).await?[0];
            let tensor =
                tensor_at(groups, layout, b, index as u64).unwrap_or_else(|| format!("element {index} of buffer {b}"));
            return Ok(Some(Divergence { tensor, source, value }));
        }
        Ok(None)
    }

    /// Inference on a batch with running statistics: the logits as (N, classes), row-major,
    /// plus the loss and correct count against `labels`.
    pub async fn eval_batch(&mut self, images: &[f32], labels: &[u32]) -> Result<(Vec<f32>, StepResult)> {
        self.check_batch(images, labels)?;
        let gpu = self.gpu.clone();
        self.program(Pass::Eval).await?;
        let program = self.eval.as_ref().unwrap();
        self.upload(program, images, labels);
        gpu.run(&program.dispatches).await?;
        let result = self.read_result(Pass::Eval).await?;
        let program = self.eval.as_ref().unwrap();
        let [k, n, _, _] = self.graph.shape(self.graph.logits.unwrap());
        let (k, n) = (k as usize, n as usize);
        let mut logits = vec![0.0; k * n];
        for shard in program.shards().iter() {
            let (b, off) = program.value_place(program.schedule.logits, shard.index);
            let images = shard.images as usize;
            let class_major = gpu.read_f32(&program.arena[b], off, k * images).await?;
            for c in 0..k {
                for i in 0..images {
                    logits[(shard.first as usize + i) * k + c] = class_major[c * images + i];
                }
            }
        }
        Ok((logits, result))
    }
}

fn init_values(init: Init, len: usize, rng: &mut rand_pcg::Pcg64) -> Vec<f32> {
    match init {
        Init::HeFanOut { fan_out } => {
            let normal = rand_distr::Normal::new(0.0f32, (2.0 / fan_out as f32).sqrt()).unwrap();
            (0..len).map(|_| normal.sample(rng)).collect()
        }
        Init::Uniform { bound } => {
            let uniform = rand_distr::Uniform::new_inclusive(-bound, bound).unwrap();
            (0..len).map(|_| uniform.sample(rng)).collect()
        }
        Init::Constant(v) => vec![v; len],
    }
}

/// What changes between steps, for the per-step parameter words of a launch.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs {
    /// Training steps taken before this one (dropout masks are keyed by it).
    pub step: u64,
    pub sgd: SgdHyper,
}

/// The split-reduction scratch a session on `gpu` plans: none where the register family is the
/// default (a CPU driver has few cores to fill, so its weight gradients need no splits),
/// [`crate::ops::conv::workgroup::SPLIT_SCRATCH_BYTES`] elsewhere.
pub fn split_scratch_bytes(gpu: &Gpu) -> u64 {
    match gpu.default_family() {
        crate::gpu::Family::Register => 0,
        crate::gpu::Family::Workgroup => crate::ops::conv::workgroup::SPLIT_SCRATCH_BYTES,
    }
}

/// Rewrites a recorded dispatch's parameter words for a step.
type PerStep = Box<dyn Fn(&Gpu, &Dispatch, &StepInputs) + Send + Sync>;

/// Where each op family's `record` (in `ops::<family>::kernels`) turns its launches into
/// dispatches: resolves operands to views and collects the dispatches, and which of them
/// rewrite their parameters every step.
pub struct Recorder<'a> {
    pub gpu: &'a Gpu,
    resolve: &'a dyn Fn(Loc, usize) -> View<'a>,
    shards: &'a BatchShards,
    /// The shard that [`Recorder::view`] resolves batched values in.
    shard: usize,
    shard_statistics: Option<View<'a>>,
    split_scratch: Option<View<'a>>,
    optimizer_segments: Vec<OptimizerSegment<'a>>,
    watched_states: Vec<WatchedState<'a>>,
    dispatches: Vec<Dispatch>,
    per_step: Vec<(usize, PerStep)>,
}

impl<'a> Recorder<'a> {
    /// The view an operand is bound through: for a batched value, its part in the current
    /// shard (see [`Recorder::set_shard`]).
    pub fn view(&self, loc: Loc) -> View<'a> {
        (self.resolve)(loc, self.shard)
    }

    /// How the batch is split; one shard when it is not.
    pub fn shards(&self) -> &'a BatchShards {
        self.shards
    }

    /// Makes shard `k` the one [`Recorder::view`] resolves batched values in, and returns it.
    pub fn set_shard(&mut self, k: usize) -> Shard {
        self.shard = k;
        self.shards.shard(k)
    }

    /// Records `each` once per shard, in batch order, with that shard current, then makes the
    /// first shard current again.
    pub fn each_shard(&mut self, mut each: impl FnMut(&mut Recorder<'a>, Shard)) {
        for k in 0..self.shards.len() {
            let shard = self.set_shard(k);
            each(self, shard);
        }
        self.shard = 0;
    }

    /// The scratch of [`crate::memory::shard_statistics_request`]: present in a sharded
    /// training step.
    pub fn shard_statistics(&self) -> Option<View<'a>> {
        self.shard_statistics
    }

    /// The scratch of [`ScheduleOptions::split_scratch_bytes`], when the plan has one.
    pub fn split_scratch(&self) -> Option<View<'a>> {
        self.split_scratch
    }

    /// Appends a dispatch whose parameters never change.
    pub fn push(&mut self, d: Dispatch) {
        self.dispatches.push(d);
    }

    /// Appends a dispatch whose parameters `per_step` rewrites before every step.
    pub fn push_per_step(
        &mut self,
        d: Dispatch,
        per_step: impl Fn(&Gpu, &Dispatch, &StepInputs) + Send + Sync + 'static,
    ) {
        self.per_step.push((self.dispatches.len(), Box::new(per_step)));
        self.dispatches.push(d);
    }

    /// One per persistent parameter buffer, in buffer order.
    pub fn optimizer_segments(&self) -> &[OptimizerSegment<'a>] {
        &self.optimizer_segments
    }

    /// One per persistent buffer of running statistics, in buffer order.
    pub fn watched_states(&self) -> &[WatchedState<'a>] {
        &self.watched_states
    }
}

/// One persistent parameter buffer as the optimizer updates it.
#[derive(Clone, Copy)]
pub struct OptimizerSegment<'a> {
    /// Elements in the buffer.
    pub len: u32,
    /// The buffer's parameters, gradients and momentum.
    pub views: [View<'a>; 3],
    /// Its two divergence flag words (gradient, update), see `ops::sgd::kernels::sgd_step`.
    pub flags: View<'a>,
}

/// One persistent buffer of running statistics, checked for NaN and infinity after the forward
/// pass updated it.
#[derive(Clone, Copy)]
pub struct WatchedState<'a> {
    /// Elements in the buffer.
    pub len: u32,
    pub values: View<'a>,
    /// Its divergence flag word, see `ops::sgd::kernels::check_finite`.
    pub flag: View<'a>,
}

/// Records one launch of a schedule, by its op family's `record`.
fn record(launch: &LaunchOp, r: &mut Recorder) {
    match launch {
        LaunchOp::Conv(l) => ops::conv::kernels::record(l, r),
        LaunchOp::BatchNorm(l) => ops::batchnorm::kernels::record(l, r),
        LaunchOp::Elementwise(l) => ops::elementwise::kernels::record(l, r),
        LaunchOp::Pool(l) => ops::pool::kernels::record(l, r),
        LaunchOp::Linear(l) => ops::linear::kernels::record(l, r),
        LaunchOp::Loss(l) => ops::loss::kernels::record(l, r),
        LaunchOp::SgdUpdate => ops::sgd::kernels::record_update(r),
    }
}

/// One compiled schedule with its arena and recorded launches.
pub struct Program {
    pub schedule: Schedule,
    /// Where each schedule value lives in the arena.
    pub layout: ArenaLayout,
    arena: Vec<wgpu::Buffer>,
    dispatches: Vec<Dispatch>,
    /// Per dispatch, the index of the schedule launch that recorded it.
    launch_of: Vec<usize>,
    per_step: Vec<(usize, PerStep)>,
    shards: BatchShards,
    /// Per value, the index of its first placement in `layout`.
    value_placements: Vec<usize>,
    /// Per value, its placements: the shard count for a batched value, else 1.
    value_shards: Vec<usize>,
}

impl Program {
    async fn new(gpu: &Gpu, graph: &Graph, memory: MemoryPlan, persistent: &Persistent) -> Result<Program> {
        let shard_statistics_place = memory.shard_statistics_placement();
        let split_scratch_place = memory.split_scratch_placement();
        let MemoryPlan {
            persistent: PersistentLayout { params: param_layout, states: state_layout },
            schedule,
            arena: layout,
            shards,
            value_placements,
            ..
        } = memory;
        let mut arena = Vec::new();
        for (i, &bytes) in layout.buffer_bytes.iter().enumerate() {
            arena.push(gpu.storage_buffer(&format!("arena {i}"), bytes).await?);
        }
        // Each operand is bound through the window of its value or parameter group, which
        // keeps the bindings of one launch disjoint (see `Window`).
        fn group_view<'b>(buffers: &'b [wgpu::Buffer], layout: &Segments, groups: &[ParamGroup], i: usize) -> View<'b> {
            let (b, off) = layout.places[i];
            View::in_window(&buffers[b], off as u64 * 4, Segments::padded_len(&groups[i]) * 4, 0)
        }
        // Per value, its placements: the shard count for a batched value, else 1.
        let value_shards: Vec<usize> = (schedule.values.iter())
            .map(|v| if graph.storages[v.storage.0].batched { shards.len() } else { 1 })
            .collect();
        let resolve = |loc: Loc, k: usize| -> View<'_> {
            match loc {
                Loc::Value { value, offset } if value_shards[value.0] > 1 => {
                    // A batched value's shard is a whole (C, n_k, H, W) storage of its own, so a
                    // channel offset scales with the shard's images.
                    let shard = shards.shard(k);
                    let p = layout.placements[value_placements[value.0] + k];
                    let bytes = (schedule.values[value.0].elems * 4 / shard.total as u64 * shard.images as u64).max(4);
                    View::in_window(&arena[p.buffer], p.offset, bytes, shard.part(offset))
                }
                Loc::Value { value, offset } => {
                    let p = layout.placements[value_placements[value.0]];
                    let bytes = (schedule.values[value.0].elems * 4).max(4);
                    View::in_window(&arena[p.buffer], p.offset, bytes, offset)
                }
                Loc::Param(id) => group_view(&persistent.params, &param_layout, &graph.params, id.0),
                Loc::Grad(id) => group_view(&persistent.grads, &param_layout, &graph.params, id.0),
                Loc::State(StateId(id)) => group_view(&persistent.states, &state_layout, &graph.states, id),
            }
        };
        let p = persistent;
        let flags = &p.divergence_flags;
        let optimizer_segments = (param_layout.buffer_elems.iter().enumerate())
            .map(|(b, &elems)| OptimizerSegment {
                len: elems as u32,
                views: [&p.params[b], &p.grads[b], &p.momentum[b]].map(|buffer| View::new(buffer, 0)),
                flags: View::new(flags, 2 * b as u32),
            })
            .collect();
        let params = p.params.len();
        let watched_states = (state_layout.buffer_elems.iter().enumerate())
            .map(|(b, &elems)| WatchedState {
                len: elems as u32,
                values: View::new(&p.states[b], 0),
                flag: View::new(flags, (2 * params + b) as u32),
            })
            .collect();
        let shard_statistics =
            shard_statistics_place.map(|(p, bytes)| View::in_window(&arena[p.buffer], p.offset, bytes, 0));
        let split_scratch = split_scratch_place.map(|(p, bytes)| View::in_window(&arena[p.buffer], p.offset, bytes, 0));
        let mut recorder = Recorder {
            gpu,
            resolve: &resolve,
            shards: &shards,
            shard: 0,
            shard_statistics,
            split_scratch,
            optimizer_segments,
            watched_states,
            dispatches: Vec::new(),
            per_step: Vec::new(),
        };
        let mut launch_of = Vec::new();
        for (i, launch) in schedule.launches.iter().enumerate() {
            record(&launch.op, &mut recorder);
            launch_of.resize(recorder.dispatches.len(), i);
        }
        let Recorder { dispatches, per_step, .. } = recorder;
        Ok(Program { schedule, layout, arena, dispatches, launch_of, per_step, shards, value_placements, value_shards })
    }

    /// Where value `v`'s part in shard `k` (its whole, for an unbatched value) starts: the
    /// arena buffer and the element offset.
    fn value_place(&self, v: crate::schedule::ValueId, k: usize) -> (usize, u64) {
        let k = if self.value_shards[v.0] > 1 { k } else { 0 };
        let p = self.layout.placements[self.value_placements[v.0] + k];
        (p.buffer, p.offset / 4)
    }

    /// How the batch is split.
    pub fn shards(&self) -> &BatchShards {
        &self.shards
    }

    pub fn arena_bytes(&self) -> u64 {
        self.arena.iter().map(|b| b.size()).sum()
    }

    /// Rewrites what changes between steps: dropout seeds and the SGD hyper-parameters.
    fn set_step(&self, gpu: &Gpu, step: u64, sgd: &SgdHyper) {
        let inputs = StepInputs { step, sgd: *sgd };
        for (launch, per_step) in &self.per_step {
            per_step(gpu, &self.dispatches[*launch], &inputs);
        }
    }
}

/// The name of the tensor holding element `index` of persistent buffer `buffer`, whose groups
/// `layout` places; `None` in the padding between groups.
fn tensor_at(groups: &[ParamGroup], layout: &Segments, buffer: usize, index: u64) -> Option<String> {
    for (g, &(b, offset)) in groups.iter().zip(&layout.places) {
        let offset = offset as u64;
        if b != buffer || index < offset || index >= offset + g.len() as u64 {
            continue;
        }
        let mut at = offset;
        for t in &g.tensors {
            if index < at + t.len() as u64 {
                return Some(t.name.clone());
            }
            at += t.len() as u64;
        }
    }
    None
}

//! Runs a graph on the GPU. A [`Session`] owns the persistent state (parameters, their
//! gradients, momentum buffers and batch-norm running statistics); a [`Program`] is one
//! compiled schedule (a training step or an inference pass) with its planned activation arena
//! and every kernel launch recorded once. Running a step only rewrites a few parameter words
//! (learning rate, dropout seed) and replays the launches.

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, View};
use crate::graph::{Graph, Init, ParamGroup, StateId};
use crate::graph::{BN_EPS, BN_MOMENTUM};
use crate::memory::arena::{ArenaLimits, ArenaPlan};
use crate::memory::{arena_limits, MemoryPlan, PersistentLayout, Segments};
use crate::ops;
use crate::schedule::{LaunchOp, Loc, Pass, Schedule, ScheduleOptions};
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

/// Loss and correct-prediction count of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    pub loss: f32,
    pub correct: u32,
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
        };
        let session = Session {
            gpu,
            graph,
            limits,
            layout,
            schedule_options: ScheduleOptions::default(),
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

    /// The memory plan of this session's program for `mode` (compiled or not).
    pub fn memory_plan(&self, mode: Pass) -> Result<MemoryPlan> {
        MemoryPlan::with_persistent(&self.graph, mode, &self.limits, self.layout.clone(), &self.schedule_options)
    }

    /// Sets the schedule compiler's options for this session's programs; compiled programs are
    /// released, so the next step compiles with the new options.
    pub fn set_schedule_options(&mut self, options: ScheduleOptions) {
        self.schedule_options = options;
        self.train = None;
        self.eval = None;
    }

    async fn program(&mut self, mode: Pass) -> Result<&mut Program> {
        let plan = match mode {
            Pass::Train if self.train.is_none() => Some(self.memory_plan(mode)?),
            Pass::Eval if self.eval.is_none() => Some(self.memory_plan(mode)?),
            _ => None,
        };
        let slot = match mode {
            Pass::Train => &mut self.train,
            Pass::Eval => &mut self.eval,
        };
        if let Some(plan) = plan {
            *slot = Some(Program::new(&self.gpu, &self.graph, plan, &self.persistent).await?);
        }
        Ok(slot.as_mut().unwrap())
    }

    /// Compiles and allocates the program for `mode` now (otherwise the first step does).
    pub async fn prepare(&mut self, mode: Pass) -> Result<()> {
        self.program(mode).await.map(|_| ())
    }

    /// Frees a compiled program's arena (e.g. the training arena before a long evaluation).
    pub fn release(&mut self, mode: Pass) {
        match mode {
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
    pub fn arena_bytes(&self, mode: Pass) -> Option<u64> {
        match mode {
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
        let cnhw = crate::graph::channel_major(images, self.graph.shape(self.graph.input.unwrap()));
        let (b, off) = program.value_place(program.schedule.input);
        self.gpu.write_f32(&program.arena[b], off, &cnhw);
        if let Some(l) = program.schedule.labels {
            let (b, off) = program.value_place(l);
            let as_f32: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            self.gpu.write_f32(&program.arena[b], off, &as_f32);
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
        gpu.run(&program.dispatches).await?;
        let result = program.read_loss(&gpu).await?;
        self.step += 1;
        self.batches_tracked += 1;
        Ok(result)
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
        let result = program.read_loss(&gpu).await?;
        let [k, n, _, _] = self.graph.shape(self.graph.logits.unwrap());
        let (b, off) = program.value_place(program.schedule.logits);
        let class_major = gpu.read_f32(&program.arena[b], off, (k * n) as usize).await?;
        let mut logits = vec![0.0; class_major.len()];
        for c in 0..k as usize {
            for i in 0..n as usize {
                logits[i * k as usize + c] = class_major[c * n as usize + i];
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

/// Per-step parameter words that change: which launches carry a dropout seed or the
/// learning rate, and how to rebuild their words.
enum StepParams {
    Dropout { launch: usize, len: u32, x: u32, y: u32, rate: f32, key: u32, accumulate: bool },
    Sgd { launch: usize, len: u32, offset: u32 },
}

/// One compiled schedule with its arena and recorded launches.
pub struct Program {
    pub schedule: Schedule,
    pub plan: ArenaPlan,
    arena: Vec<wgpu::Buffer>,
    dispatches: Vec<Dispatch>,
    step_params: Vec<StepParams>,
}

impl Program {
    async fn new(gpu: &Gpu, graph: &Graph, memory: MemoryPlan, persistent: &Persistent) -> Result<Program> {
        let MemoryPlan {
            persistent: PersistentLayout { params: param_layout, states: state_layout },
            schedule,
            arena: plan,
            ..
        } = memory;
        let mut arena = Vec::new();
        for (i, &bytes) in plan.buffer_bytes.iter().enumerate() {
            arena.push(gpu.storage_buffer(&format!("arena {i}"), bytes).await?);
        }
        let mut program = Program { schedule, plan, arena, dispatches: Vec::new(), step_params: Vec::new() };
        // Each operand is bound through the window of its value or parameter group, which
        // keeps the bindings of one launch disjoint (see `Window`).
        fn group_view<'b>(buffers: &'b [wgpu::Buffer], layout: &Segments, groups: &[ParamGroup], i: usize) -> View<'b> {
            let (b, off) = layout.places[i];
            View::in_window(&buffers[b], off as u64 * 4, Segments::padded_len(&groups[i]) * 4, 0)
        }
        let resolve = |loc: Loc| -> View<'_> {
            match loc {
                Loc::Value { value, offset } => {
                    let p = program.plan.placements[value.0];
                    let bytes = (program.schedule.values[value.0].elems * 4).max(4);
                    View::in_window(&program.arena[p.buffer], p.offset, bytes, offset)
                }
                Loc::Param(id) => group_view(&persistent.params, &param_layout, &graph.params, id.0),
                Loc::Grad(id) => group_view(&persistent.grads, &param_layout, &graph.params, id.0),
                Loc::State(StateId(id)) => group_view(&persistent.states, &state_layout, &graph.states, id),
            }
        };
        let mut dispatches = Vec::new();
        let mut step_params = Vec::new();
        for launch in &program.schedule.launches {
            let r = resolve;
            use ops::batchnorm::kernels as bn;
            use ops::elementwise::kernels as ew;
            use ops::{conv::kernels as conv, linear::kernels as linear, loss::kernels as loss, pool::kernels as pool};
            let d = match launch.op {
                LaunchOp::ConvForward { shape, x, w, y } => conv::conv2d_forward(gpu, &shape, r(x), r(w), r(y)),
                LaunchOp::ConvForwardBnRelu { shape, x, stats, affine, w, y } => {
                    conv::conv2d_forward_bnrelu(gpu, &shape, r(x), r(stats), r(affine), r(w), r(y))
                }
                LaunchOp::ConvBackwardInput { shape, channels, dy, w, dx, accumulate } => {
                    conv::conv2d_backward_input_channels(gpu, &shape, channels, r(dy), r(w), r(dx), accumulate)
                }
                LaunchOp::ConvBackwardWeight { shape, x, dy, dw, accumulate } => {
                    conv::conv2d_backward_weight(gpu, &shape, r(x), r(dy), r(dw), accumulate)
                }
                LaunchOp::ConvBackwardWeightBnRelu { shape, x, stats, affine, dy, dw, accumulate } => {
                    conv::conv2d_backward_weight_bnrelu(
                        gpu,
                        &shape,
                        r(x),
                        r(stats),
                        r(affine),
                        r(dy),
                        r(dw),
                        accumulate,
                    )
                }
                LaunchOp::BnTrainStats { shape, x, stats, running } => {
                    bn::batchnorm_train_stats(gpu, shape, r(x), r(stats), r(running), BN_MOMENTUM, BN_EPS)
                }
                LaunchOp::BnEvalStats { shape, running, stats } => {
                    bn::batchnorm_eval_stats(gpu, shape.c, r(running), r(stats), BN_EPS)
                }
                LaunchOp::BnApply { shape, x, stats, affine, y, relu } => {
                    bn::batchnorm_apply(gpu, shape, r(x), r(stats), r(affine), r(y), relu)
                }
                LaunchOp::BnBackward { shape, x, dy, stats, affine, grad_affine, dx, relu, accumulate } => {
                    // The split pair measured faster on lavapipe than the fused kernel; the
                    // input pass reads the sums the affine pass just wrote.
                    let dy_loc = dy;
                    let (x, dy, stats, affine, grad_affine) = (r(x), r(dy), r(stats), r(affine), r(grad_affine));
                    let affine_pass =
                        bn::batchnorm_backward_affine(gpu, shape, x, dy, stats, affine, grad_affine, relu, false);
                    match dx {
                        Some(dx) if dx == dy_loc => {
                            assert!(!accumulate, "an in-place batch-norm backward overwrites its input gradient");
                            dispatches.push(affine_pass);
                            bn::batchnorm_backward_input_in_place(gpu, shape, x, stats, affine, grad_affine, dy, relu)
                        }
                        Some(dx) => {
                            dispatches.push(affine_pass);
                            bn::batchnorm_backward_input(
                                gpu,
                                shape,
                                x,
                                dy,
                                stats,
                                affine,
                                grad_affine,
                                r(dx),
                                relu,
                                accumulate,
                            )
                        }
                        None => affine_pass,
                    }
                }
                LaunchOp::ReluForward { len, x, y } => ew::relu_forward(gpu, len, r(x), r(y)),
                LaunchOp::ReluBackward { len, x, dy, dx, accumulate } => {
                    ew::relu_backward_into(gpu, len, r(x), r(dy), r(dx), accumulate)
                }
                LaunchOp::DropoutForward { len, rate, key, x, y } => {
                    let (x, y) = (r(x), r(y));
                    step_params.push(StepParams::Dropout {
                        launch: dispatches.len(),
                        len,
                        x: x.offset,
                        y: y.offset,
                        rate,
                        key,
                        accumulate: false,
                    });
                    ew::dropout_forward(gpu, len, x, y, rate, [key, 0])
                }
                LaunchOp::DropoutBackward { len, rate, key, dy, dx, accumulate } => {
                    let (dy, dx) = (r(dy), r(dx));
                    step_params.push(StepParams::Dropout {
                        launch: dispatches.len(),
                        len,
                        x: dy.offset,
                        y: dx.offset,
                        rate,
                        key,
                        accumulate,
                    });
                    ew::dropout_backward(gpu, len, dy, dx, rate, [key, 0], accumulate)
                }
                LaunchOp::AvgPoolForward { shape, x, y } => pool::avg_pool_forward(gpu, shape, r(x), r(y)),
                LaunchOp::AvgPoolBackward { shape, dy, dx, accumulate } => {
                    pool::avg_pool_backward(gpu, shape, r(dy), r(dx), accumulate)
                }
                LaunchOp::MaxPoolForward { shape, x, y } => pool::max_pool_forward(gpu, shape, r(x), r(y)),
                LaunchOp::MaxPoolBackward { shape, x, dy, dx, accumulate } => {
                    pool::max_pool_backward(gpu, shape, r(x), r(dy), r(dx), accumulate)
                }
                LaunchOp::GlobalAvgPoolForward { shape, x, y } => pool::global_avg_pool_forward(gpu, shape, r(x), r(y)),
                LaunchOp::GlobalAvgPoolBackward { shape, dy, dx, accumulate } => {
                    pool::global_avg_pool_backward(gpu, shape, r(dy), r(dx), accumulate)
                }
                LaunchOp::LinearForward { shape, x, params, y } => linear::forward(gpu, shape, r(x), r(params), r(y)),
                LaunchOp::LinearBackwardParams { shape, x, dy, grad_params } => {
                    let dw = r(grad_params);
                    let db = dw.at(shape.out_features * shape.in_features);
                    dispatches.push(linear::backward_weight(gpu, shape, r(x), r(dy), dw, false));
                    linear::backward_bias(gpu, shape, r(dy), db, false)
                }
                LaunchOp::LinearBackwardInput { shape, dy, params, dx, accumulate } => {
                    linear::backward_input(gpu, shape, r(params), r(dy), r(dx), accumulate)
                }
                LaunchOp::Copy { len, x, y } => ew::copy(gpu, len, r(x), r(y)),
                LaunchOp::Add { len, x, y } => ew::add(gpu, len, r(x), r(y)),
                LaunchOp::Fill { len, y, value } => ew::fill(gpu, len, r(y), value),
                LaunchOp::Loss { n, classes, logits, labels, loss, dlogits } => {
                    let s = ops::loss::LossShape::new(classes, n);
                    loss::cross_entropy(gpu, s, r(logits), r(labels), dlogits.map(r), r(loss), false)
                }
                LaunchOp::SgdUpdate => {
                    for (b, &elems) in param_layout.buffer_elems.iter().enumerate() {
                        let len = elems as u32;
                        fn view(buffers: &[wgpu::Buffer], b: usize) -> View<'_> {
                            View::new(&buffers[b], 0)
                        }
                        step_params.push(StepParams::Sgd { launch: dispatches.len(), len, offset: 0 });
                        dispatches.push(ops::sgd::kernels::sgd_step(
                            gpu,
                            len,
                            view(&persistent.params, b),
                            view(&persistent.grads, b),
                            Some(view(&persistent.momentum, b)),
                            &SgdHyper::densenet_cifar(),
                        ));
                    }
                    continue;
                }
            };
            dispatches.push(d);
        }
        program.dispatches = dispatches;
        program.step_params = step_params;
        Ok(program)
    }

    fn value_place(&self, v: crate::schedule::ValueId) -> (usize, u64) {
        let p = self.plan.placements[v.0];
        (p.buffer, p.offset / 4)
    }

    pub fn arena_bytes(&self) -> u64 {
        self.arena.iter().map(|b| b.size()).sum()
    }

    /// Rewrites what changes between steps: dropout seeds and the SGD hyper-parameters.
    fn set_step(&self, gpu: &Gpu, step: u64, sgd: &SgdHyper) {
        for p in &self.step_params {
            match *p {
                StepParams::Dropout { launch, len, x, y, rate, key, accumulate } => {
                    let seed = [key, step as u32];
                    self.dispatches[launch]
                        .set_params(gpu, &ops::elementwise::kernels::dropout_params(len, x, y, rate, seed, accumulate));
                }
                StepParams::Sgd { launch, len, offset } => {
                    self.dispatches[launch]
                        .set_params(gpu, &ops::sgd::kernels::sgd_params(len, offset, offset, offset, sgd));
                }
            }
        }
    }

    async fn read_loss(&self, gpu: &Gpu) -> Result<StepResult> {
        let Some(loss) = self.schedule.loss else {
            return Ok(StepResult { loss: f32::NAN, correct: 0 });
        };
        let (b, off) = self.value_place(loss);
        let v = gpu.read_f32(&self.arena[b], off, 2).await?;
        Ok(StepResult { loss: v[0], correct: v[1] as u32 })
    }
}

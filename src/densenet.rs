//! DenseNet and DenseNet-BC, for CIFAR-sized and ImageNet-sized inputs, built as a [`Graph`]
//! with torchvision's parameter names, in one of three memory modes.
//!
//! The modes differ only in how the graph is wired and which nodes are marked `recompute`;
//! the schedule compiler, planner and executor treat every graph alike.

use crate::error::{Error, Result};
use crate::graph::{Conv2dOut, Graph, Op, SliceId};
use crate::memory::arena::ArenaLimits;
use crate::memory::MemoryPlan;
use crate::schedule::Pass;
use std::fmt;
use std::str::FromStr;

/// How much of the forward pass training keeps for backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryMode {
    /// What most implementations do: every layer materialises its concatenated input, and
    /// every intermediate (concatenation, BN-ReLU, conv outputs) is kept for backward. Memory
    /// grows quadratically with depth; this is the baseline.
    Naive,
    /// One buffer per dense block: each layer writes its new channels into its slice and the
    /// next reads the channel prefix in place. BN-ReLU outputs are recomputed in backward;
    /// bottleneck (1x1 conv) outputs are kept.
    Efficient,
    /// As efficient, and the whole bottleneck path (BN-ReLU, 1x1 conv, BN-ReLU) is recomputed
    /// too: only the block buffers and small statistics survive until backward.
    Minimal,
}

impl MemoryMode {
    pub const ALL: [MemoryMode; 3] = [MemoryMode::Naive, MemoryMode::Efficient, MemoryMode::Minimal];

    pub fn name(self) -> &'static str {
        match self {
            MemoryMode::Naive => "naive",
            MemoryMode::Efficient => "efficient",
            MemoryMode::Minimal => "minimal",
        }
    }
}

impl fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MemoryMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MemoryMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown memory mode `{s}`: use naive, efficient or minimal")))
    }
}

/// A DenseNet's hyper-parameters, with the names torchvision and the reference demo use.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenseNetConfig {
    pub growth_rate: u32,
    pub block_config: Vec<u32>,
    pub num_init_features: u32,
    /// Bottleneck width factor; 0 means no bottleneck (plain DenseNet: BN-ReLU-conv3x3 only).
    pub bn_size: u32,
    pub compression: f32,
    pub drop_rate: f32,
    pub num_classes: u32,
    /// CIFAR stem (one 3x3 conv) instead of ImageNet's (7x7/2 conv, BN, ReLU, 3x3/2 max pool).
    pub small_inputs: bool,
    pub in_channels: u32,
    pub image_size: u32,
}

impl DenseNetConfig {
    /// Whether `other` is this architecture, leaving out what a run's data and other flags
    /// set: the class count, the drop rate and the image size. A resumed run compares the
    /// model its flags build with its checkpoint's this way.
    pub fn same_architecture(&self, other: &DenseNetConfig) -> bool {
        let other = DenseNetConfig {
            num_classes: self.num_classes,
            drop_rate: self.drop_rate,
            image_size: self.image_size,
            ..other.clone()
        };
        other == *self
    }

    /// DenseNet-BC for CIFAR: 3 blocks of (depth - 4) / 6 bottleneck layers, stem of 2k.
    pub fn cifar_bc(depth: u32, growth_rate: u32, num_classes: u32) -> Result<Self> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) {
            return Err(Error::Config(format!("DenseNet-BC depth must be 6n+4 (e.g. 40, 100, 190, 250), got {depth}")));
        }
        let n = (depth - 4) / 6;
        Ok(DenseNetConfig {
            growth_rate,
            block_config: vec![n; 3],
            num_init_features: 2 * growth_rate,
            bn_size: 4,
            compression: 0.5,
            drop_rate: 0.0,
            num_classes,
            small_inputs: true,
            in_channels: 3,
            image_size: 32,
        })
    }

    /// Plain DenseNet for CIFAR: 3 blocks of (depth - 4) / 3 layers, stem of 16, no compression.
    pub fn cifar(depth: u32, growth_rate: u32, num_classes: u32) -> Result<Self> {
        if depth < 7 || !(depth - 4).is_multiple_of(3) {
            return Err(Error::Config(format!("DenseNet depth must be 3n+4 (e.g. 40, 100), got {depth}")));
        }
        let n = (depth - 4) / 3;
        Ok(DenseNetConfig {
            block_config: vec![n; 3],
            num_init_features: 16,
            bn_size: 0,
            compression: 1.0,
            ..Self::cifar_bc(10, growth_rate, num_classes)?
        })
    }

    fn imagenet(growth_rate: u32, blocks: [u32; 4], init: u32, num_classes: u32) -> Self {
        DenseNetConfig {
            growth_rate,
            block_config: blocks.to_vec(),
            num_init_features: init,
            bn_size: 4,
            compression: 0.5,
            drop_rate: 0.0,
            num_classes,
            small_inputs: false,
            in_channels: 3,
            image_size: 224,
        }
    }

    pub fn densenet121(num_classes: u32) -> Self {
        Self::imagenet(32, [6, 12, 24, 16], 64, num_classes)
    }
    pub fn densenet169(num_classes: u32) -> Self {
        Self::imagenet(32, [6, 12, 32, 32], 64, num_classes)
    }
    pub fn densenet201(num_classes: u32) -> Self {
        Self::imagenet(32, [6, 12, 48, 32], 64, num_classes)
    }
    pub fn densenet161(num_classes: u32) -> Self {
        Self::imagenet(48, [6, 12, 36, 24], 96, num_classes)
    }

    /// `densenet121`, `densenet169`, `densenet201` or `densenet161`.
    pub fn by_name(name: &str, num_classes: u32) -> Result<Self> {
        match name {
            "densenet121" => Ok(Self::densenet121(num_classes)),
            "densenet169" => Ok(Self::densenet169(num_classes)),
            "densenet201" => Ok(Self::densenet201(num_classes)),
            "densenet161" => Ok(Self::densenet161(num_classes)),
            _ => Err(Error::Config(format!(
                "unknown model `{name}`: use densenet121, densenet169, densenet201 or densenet161"
            ))),
        }
    }

    /// The most dense blocks a DenseNet may have (torchvision's have 4, the CIFAR ones 3).
    pub const MAX_BLOCKS: usize = 16;
    /// The most layers one dense block may have (DenseNet-BC-250 has 41, DenseNet-201 48).
    pub const MAX_LAYERS_PER_BLOCK: u32 = 10_000;
    /// The most channels any tensor of the model may have: input, stem, growth rate,
    /// bottleneck, every block's width, and the classes (DenseNet-161 ends at 2208).
    pub const MAX_CHANNELS: u64 = 1 << 24;
    /// The largest image side, in pixels (the streamed loader's largest image side too).
    pub const MAX_IMAGE_SIZE: u32 = 1 << 15;

    /// Checks that this configuration describes a DenseNet densegpu can build, within the
    /// bounds above, so that no size derived from it overflows and a config read from a file
    /// cannot make densegpu build an absurd graph: the growth rate and every block's layer
    /// count positive; at most [`MAX_BLOCKS`](Self::MAX_BLOCKS) blocks of at most
    /// [`MAX_LAYERS_PER_BLOCK`](Self::MAX_LAYERS_PER_BLOCK) layers; input channels, stem
    /// channels, growth rate, bottleneck width (`bn_size · growth_rate`), classes and every
    /// block's width at most [`MAX_CHANNELS`](Self::MAX_CHANNELS), and every transition
    /// keeping at least one channel; `drop_rate` in [0, 1), `compression` in (0, 1], at least
    /// 2 classes; `image_size` a positive multiple of the model's downsampling (2^(blocks-1),
    /// times 4 with the ImageNet stem) and at most [`MAX_IMAGE_SIZE`](Self::MAX_IMAGE_SIZE).
    ///
    /// Errors: [`Error::Config`] naming the value, the bound and what to change.
    /// [`DenseNetConfig::build`] checks this first.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.growth_rate == 0 || self.block_config.is_empty() || self.block_config.contains(&0) {
            return bad(format!("growth rate and every block's layer count must be positive: {self:?}"));
        }
        let blocks = self.block_config.len();
        if blocks > Self::MAX_BLOCKS {
            return bad(format!(
                "{blocks} dense blocks are more than densegpu builds (at most {}; torchvision's DenseNets have 4,                  the CIFAR ones 3): use fewer blocks",
                Self::MAX_BLOCKS
            ));
        }
        if let Some((b, &layers)) = self.block_config.iter().enumerate().find(|(_, &l)| l > Self::MAX_LAYERS_PER_BLOCK)
        {
            return bad(format!(
                "dense block {} has {layers} layers, more than densegpu builds (at most {} a block;                  DenseNet-BC-250 has 41): use fewer layers",
                b + 1,
                Self::MAX_LAYERS_PER_BLOCK
            ));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return bad(format!("drop rate must be in [0, 1), got {}", self.drop_rate));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!("compression must be in (0, 1], got {}", self.compression));
        }
        let max = Self::MAX_CHANNELS;
        let channels = |what: &str, c: u64| {
            if c == 0 || c > max {
                bad(format!("{what} is {c}, but it must be between 1 and {max} (2^24): use a narrower model"))
            } else {
                Ok(())
            }
        };
        channels("the input's channel count (in_channels)", self.in_channels.into())?;
        channels("the stem's channel count (num_init_features)", self.num_init_features.into())?;
        channels("the growth rate", self.growth_rate.into())?;
        if self.bn_size > 0 {
            channels("the bottleneck width (bn_size · growth rate)", self.bn_size as u64 * self.growth_rate as u64)?;
        }
        if self.num_classes > 1 {
            channels("the class count", self.num_classes.into())?;
        }
        // The block widths in u64, so that no sum overflows before it is checked.
        let mut c = self.num_init_features as u64;
        for (b, &layers) in self.block_config.iter().enumerate() {
            c += layers as u64 * self.growth_rate as u64;
            channels(&format!("the width at the end of dense block {}", b + 1), c)?;
            if b + 1 < blocks {
                let out = (c as f32 * self.compression).floor() as u64;
                if out == 0 {
                    return bad(format!(
                        "transition {} maps {c} channels to none (compression {}): raise the compression or the                          growth rate",
                        b + 1,
                        self.compression
                    ));
                }
                c = out;
            }
        }
        let downsample: u32 = if self.small_inputs { 1 << (blocks - 1) } else { 4 << (blocks - 1) };
        if self.image_size == 0 || !self.image_size.is_multiple_of(downsample) || self.image_size > Self::MAX_IMAGE_SIZE
        {
            return bad(format!(
                "image size must be a positive multiple of {downsample} for this model, at most {}, got {}",
                Self::MAX_IMAGE_SIZE,
                self.image_size
            ));
        }
        if self.num_classes < 2 {
            return bad(format!("need at least 2 classes, got {}", self.num_classes));
        }
        Ok(())
    }

    /// The architecture of a DenseNet state dict with torchvision's names, from its tensor names
    /// and shapes alone: for a safetensors file saved from torchvision or PyTorch, which carries no
    /// densegpu config.
    ///
    /// Names may use the old spelling of released torchvision checkpoints
    /// (`denselayer1.norm.1.weight`) and may all carry the `module.` prefix of a model saved from
    /// `torch.nn.DataParallel`; `num_batches_tracked` entries are ignored. What it reads:
    ///
    /// - the stem: a 7x7 `features.conv0` with `features.norm0` is ImageNet's (`small_inputs`
    ///   false, `image_size` 224), a 3x3 `features.conv0` without it the CIFAR one (`image_size`
    ///   32); `num_init_features` and `in_channels` are `conv0`'s output and input channels;
    /// - `block_config`: the `denselayer`s of each `denseblock`;
    /// - DenseNet-BC or plain: a dense layer with a `conv2` has a 1x1 bottleneck `conv1` of
    ///   `bn_size · growth_rate` outputs; one without has a single 3x3 `conv1` (`bn_size` 0);
    /// - `growth_rate`: the outputs of a dense layer's 3x3 conv;
    /// - `compression`: a transition conv's outputs over its inputs;
    /// - `num_classes`: the rows of `classifier.weight`.
    ///
    /// `drop_rate` is 0 (dropout leaves no trace in the weights). The configuration found is then
    /// checked against every tensor: a tensor it lacks, one it does not expect and a shape it
    /// does not give are errors that name the tensor.
    pub fn infer_from_names_and_shapes(tensors: &[(String, Vec<usize>)]) -> Result<DenseNetConfig> {
        Inference::new(tensors)?.config()
    }

    /// Channels at the end of each dense block (for a config that [`validate`](Self::validate)s;
    /// beyond `u32` a width saturates).
    pub fn block_widths(&self) -> Vec<u32> {
        let mut c = self.num_init_features;
        let mut widths = Vec::new();
        for (b, &layers) in self.block_config.iter().enumerate() {
            c = c.saturating_add(layers.saturating_mul(self.growth_rate));
            widths.push(c);
            if b + 1 < self.block_config.len() {
                c = (c as f32 * self.compression).floor() as u32;
            }
        }
        widths
    }

    /// The training graph (with loss) for a batch size and memory mode. Errors: the config does
    /// not [`validate`](Self::validate), or the batch is 0.
    pub fn build(&self, batch: u32, mode: MemoryMode) -> Result<Graph> {
        self.validate()?;
        if batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let mut g = Graph::new(batch);
        let (k, size) = (self.growth_rate, self.image_size);
        let x = g.input_image(self.in_channels, size, size);
        let widths = self.block_widths();
        let mut spatial = if self.small_inputs { size } else { size / 4 };
        // The first block's buffer receives the stem's output directly.
        let mut block = new_block(&mut g, mode, 1, widths[0], spatial);
        let stem_out = block_view(&mut g, mode, block, 0, self.num_init_features, spatial, "features.conv0");
        if self.small_inputs {
            g.conv2d("features.conv0", x, Conv2dOut::Into(stem_out), 3, 1, 1);
        } else {
            let c0 = g.conv2d("features.conv0", x, Conv2dOut::New(self.num_init_features), 7, 2, 3);
            let n0 = g.batch_norm("features.norm0", c0, true);
            g.pool("features.pool0", Op::MaxPool3x3s2p1, n0, Some(stem_out));
        }
        let mut channels = self.num_init_features;
        let mut block_input = stem_out;
        for (b, &layers) in self.block_config.iter().enumerate() {
            let b1 = b + 1;
            let mut features = block_input; // naive mode: the materialised concatenation so far
            for i in 1..=layers {
                let name = format!("features.denseblock{b1}.denselayer{i}");
                let input = match mode {
                    MemoryMode::Naive => features,
                    _ => g.slice_of(block.unwrap(), 0, channels),
                };
                let new = self.dense_layer(&mut g, mode, &name, input, block, channels, spatial);
                if mode == MemoryMode::Naive {
                    // Concatenate by copying, as frameworks without in-place channel views do.
                    let cat = g.new_activation(format!("{name}.concat"), channels + k, spatial, spatial);
                    let (old_part, new_part) =
                        (g.slice_of(g.slice(cat).storage, 0, channels), g.slice_of(g.slice(cat).storage, channels, k));
                    g.copy_into(&format!("{name}.concat.0"), features, old_part);
                    g.copy_into(&format!("{name}.concat.1"), new, new_part);
                    features = cat;
                }
                channels += k;
            }
            let block_out = match mode {
                MemoryMode::Naive => features,
                _ => g.slice_of(block.unwrap(), 0, channels),
            };
            if b1 == self.block_config.len() {
                let normed = g.batch_norm("features.norm5", block_out, true);
                let pooled = g.pool("features.pool5", Op::GlobalAvgPool, normed, None);
                let logits = g.linear("classifier", pooled, self.num_classes);
                g.cross_entropy(logits);
                break;
            }
            // Transition: BN-ReLU, 1x1 conv, 2x2 average pool into the next block's buffer.
            let name = format!("features.transition{b1}");
            let out_c = (channels as f32 * self.compression).floor() as u32;
            let normed = g.batch_norm(&format!("{name}.norm"), block_out, true);
            if mode != MemoryMode::Naive {
                mark_recompute(&mut g, normed);
            }
            let conv = g.conv2d(&format!("{name}.conv"), normed, Conv2dOut::New(out_c), 1, 1, 0);
            spatial /= 2;
            block = new_block(&mut g, mode, b1 + 1, widths[b1], spatial);
            let next = block_view(&mut g, mode, block, 0, out_c, spatial, &format!("{name}.pool"));
            g.pool(&format!("{name}.pool"), Op::AvgPool2x2, conv, Some(next));
            channels = out_c;
            block_input = next;
        }
        g.validate()?;
        Ok(g)
    }

    /// One dense layer; returns the tensor holding its `k` new channels.
    #[allow(clippy::too_many_arguments)]
    fn dense_layer(
        &self,
        g: &mut Graph,
        mode: MemoryMode,
        name: &str,
        input: SliceId,
        block: Option<crate::graph::StorageId>,
        channels: u32,
        spatial: u32,
    ) -> SliceId {
        let k = self.growth_rate;
        let norm1 = g.batch_norm(&format!("{name}.norm1"), input, true);
        if mode != MemoryMode::Naive {
            mark_recompute(g, norm1);
        }
        let conv2_input = if self.bn_size > 0 {
            let bottleneck = g.conv2d(&format!("{name}.conv1"), norm1, Conv2dOut::New(self.bn_size * k), 1, 1, 0);
            if mode == MemoryMode::Minimal {
                mark_recompute(g, bottleneck);
            }
            let norm2 = g.batch_norm(&format!("{name}.norm2"), bottleneck, true);
            if mode != MemoryMode::Naive {
                mark_recompute(g, norm2);
            }
            norm2
        } else {
            norm1
        };
        let last_conv = if self.bn_size > 0 { "conv2" } else { "conv1" };
        let destination = match block {
            Some(s) => g.slice_of(s, channels, k),
            None => g.new_activation(format!("{name}.out"), k, spatial, spatial),
        };
        if self.drop_rate > 0.0 {
            let conv = g.conv2d(&format!("{name}.{last_conv}"), conv2_input, Conv2dOut::New(k), 3, 1, 1);
            g.dropout_into(&format!("{name}.dropout"), conv, destination, self.drop_rate);
        } else {
            g.conv2d(&format!("{name}.{last_conv}"), conv2_input, Conv2dOut::Into(destination), 3, 1, 1);
        }
        destination
    }
}

/// Efficient and minimal modes keep each dense block in one storage; naive has none.
fn new_block(g: &mut Graph, mode: MemoryMode, b: usize, width: u32, spatial: u32) -> Option<crate::graph::StorageId> {
    (mode != MemoryMode::Naive).then(|| g.new_storage(format!("features.denseblock{b}"), width, spatial, spatial))
}

/// Where a block's first channels go: the block buffer's prefix, or (naive) a tensor of its own.
fn block_view(
    g: &mut Graph,
    mode: MemoryMode,
    block: Option<crate::graph::StorageId>,
    c0: u32,
    c: u32,
    spatial: u32,
    name: &str,
) -> SliceId {
    match (mode, block) {
        (MemoryMode::Naive, _) | (_, None) => g.new_activation(format!("{name}.out"), c, spatial, spatial),
        (_, Some(s)) => g.slice_of(s, c0, c),
    }
}

/// Marks the node that produced `t` for recomputation in backward.
fn mark_recompute(g: &mut Graph, t: SliceId) {
    let node = g.nodes.iter().rposition(|n| n.output == t).expect("tensor has a producer");
    g.nodes[node].recompute = true;
}

/// Whether a DenseNet fits: the plan must place every tensor within the binding limit and,
/// with a budget, allocate no more than it.
fn fits(config: &DenseNetConfig, batch: u32, mode: MemoryMode, limits: &ArenaLimits, budget: Option<u64>) -> bool {
    let Ok(graph) = config.build(batch, mode) else { return false };
    match MemoryPlan::new(&graph, Pass::Train, limits) {
        Ok(plan) => budget.is_none_or(|b| plan.report().total <= b),
        Err(_) => false,
    }
}

/// The largest training batch whose plan fits the limits (and the budget, if given), or
/// None if no batch that can train fits. A model whose last batch norm sees a 1x1 map trains
/// only from batch 2 (batch statistics need 2 values per channel), so its answer is never 1.
pub fn largest_batch(
    config: &DenseNetConfig,
    mode: MemoryMode,
    limits: &ArenaLimits,
    budget: Option<u64>,
) -> Option<u32> {
    let smallest = (1..=2).find(|&b| fits(config, b, mode, limits, budget))?;
    let (mut lo, mut hi) = (smallest, smallest + 1);
    while hi < 1 << 20 && fits(config, hi, mode, limits, budget) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(config, mid, mode, limits, budget) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// The training memory plan of a DenseNet, checked before anything runs. A batch that does
/// not fit gives an error naming the mode, the bytes needed and the largest batch that fits.
pub fn plan_training(
    config: &DenseNetConfig,
    batch: u32,
    mode: MemoryMode,
    limits: &ArenaLimits,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    let graph = config.build(batch, mode)?;
    let too_large = |why: String| {
        let advice = match largest_batch(config, mode, limits, budget) {
            Some(b) => format!("the largest batch that fits in {mode} mode is {b}"),
            None => format!("not even a batch of 1 fits in {mode} mode"),
        };
        let leaner = match mode {
            MemoryMode::Naive => "; the efficient and minimal modes need far less",
            MemoryMode::Efficient => "; minimal mode needs less",
            MemoryMode::Minimal => "",
        };
        Error::TooLarge(format!("batch {batch} in {mode} mode: {why}; {advice}{leaner}"))
    };
    let plan = MemoryPlan::new(&graph, Pass::Train, limits).map_err(|e| match e {
        Error::TooLarge(m) => too_large(m),
        other => other,
    })?;
    let total = plan.report().total;
    if let Some(b) = budget.filter(|&b| total > b) {
        return Err(too_large(format!("needs {total} bytes, more than the budget of {b} bytes")));
    }
    Ok(plan)
}

/// The training plan of every memory mode as one JSON value, in bytes: what `memory --json`
/// prints and what the browser demo shows, so the two can be compared byte for byte.
/// `shards` lists the images of each batch shard (one shard, the whole batch, where every
/// tensor fits a storage binding). A mode that does not fit carries an `error` instead of
/// figures. With a `budget`, each mode
/// also names the largest batch whose plan fits in it.
pub fn memory_plans_json(
    config: &DenseNetConfig,
    batch: u32,
    limits: &ArenaLimits,
    budget: Option<u64>,
) -> serde_json::Value {
    let modes: Vec<serde_json::Value> = MemoryMode::ALL
        .into_iter()
        .map(|mode| {
            let mut o = match plan_training(config, batch, mode, limits, None) {
                Ok(plan) => {
                    let r = plan.report();
                    serde_json::json!({
                        "mode": mode.name(), "parameters": r.parameters, "gradients": r.gradients,
                        "optimizer": r.optimizer, "activations": r.activations, "workspace": r.workspace,
                        "total": r.total, "shards": plan.shards.sizes,
                    })
                }
                Err(e) => serde_json::json!({ "mode": mode.name(), "error": e.to_string() }),
            };
            if let Some(b) = budget {
                o["largest_batch"] = serde_json::json!(largest_batch(config, mode, limits, Some(b)));
            }
            o
        })
        .collect();
    let mut out = serde_json::json!({
        "batch_size": batch,
        "binding_limit": limits.max_buffer_bytes,
        "modes": modes,
    });
    if let Some(b) = budget {
        out["budget"] = serde_json::json!(b);
    }
    out
}

/// The tensor names and shapes [`DenseNetConfig::infer_from_names_and_shapes`] reads, by their
/// current torchvision names.
struct Inference {
    shapes: std::collections::BTreeMap<String, Vec<usize>>,
}

/// The most dense blocks an inferred model may have (torchvision's have 4, the CIFAR ones 3);
/// every transition halves the image, so more would ask for huge inputs.
const MAX_INFERRED_BLOCKS: u32 = 8;

fn not_inferred(why: String) -> Error {
    Error::Data(format!("cannot infer the DenseNet architecture from the tensor names and shapes: {why}"))
}

/// `features.denseblock{b}.denselayer{i}.…` → `(b, i)`.
fn block_and_layer(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("features.denseblock")?;
    let (b, rest) = rest.split_once('.')?;
    let i = rest.strip_prefix("denselayer")?.split('.').next()?;
    Some((b.parse().ok()?, i.parse().ok()?))
}

/// A shape's size as a u32, or an error naming the tensor.
fn size_u32(name: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| not_inferred(format!("`{name}` has a dimension of {v}, too large for a DenseNet")))
}

impl Inference {
    fn new(tensors: &[(String, Vec<usize>)]) -> Result<Self> {
        use crate::checkpoint::{canonical_name, DATA_PARALLEL_PREFIX};
        if tensors.is_empty() {
            return Err(not_inferred("there are no tensors".into()));
        }
        let wrapped = tensors.iter().all(|(n, _)| n.starts_with(DATA_PARALLEL_PREFIX));
        let mut shapes = std::collections::BTreeMap::new();
        for (raw, shape) in tensors {
            let name = canonical_name(if wrapped { &raw[DATA_PARALLEL_PREFIX.len()..] } else { raw });
            if name.ends_with(".num_batches_tracked") {
                continue;
            }
            if shapes.insert(name.clone(), shape.clone()).is_some() {
                return Err(not_inferred(format!("`{name}` is given twice (under its old and its new spelling?)")));
            }
        }
        Ok(Inference { shapes })
    }

    /// The shape of `name`, which must have `dims` dimensions.
    fn shape(&self, name: &str, dims: usize) -> Result<&[usize]> {
        let shape = self.shapes.get(name).ok_or_else(|| {
            not_inferred(format!(
                "`{name}` is missing (a torchvision DenseNet state dict has `features.conv0.weight`, \
                 `features.denseblock1.denselayer1.*`, ..., `classifier.weight`)"
            ))
        })?;
        if shape.len() != dims {
            return Err(not_inferred(format!("`{name}` has shape {shape:?}, but it must have {dims} dimensions")));
        }
        Ok(shape)
    }

    /// Layers per dense block, from the `denseblock{b}.denselayer{i}` names; blocks and layers
    /// must count from 1 without gaps.
    fn block_config(&self) -> Result<Vec<u32>> {
        let mut blocks: std::collections::BTreeMap<u32, std::collections::BTreeSet<u32>> = Default::default();
        for name in self.shapes.keys() {
            if let Some((b, i)) = block_and_layer(name) {
                blocks.entry(b).or_default().insert(i);
            }
        }
        if blocks.is_empty() {
            return Err(not_inferred(
                "no `features.denseblock<b>.denselayer<i>.*` tensors: is this a torchvision DenseNet state dict?"
                    .into(),
            ));
        }
        let mut config = Vec::with_capacity(blocks.len());
        for (want, (&b, layers)) in (1u32..).zip(&blocks) {
            if b != want {
                return Err(not_inferred(format!(
                    "there is no `features.denseblock{want}`, but there is a `features.denseblock{b}` (blocks count from 1)"
                )));
            }
            for (want, &i) in (1u32..).zip(layers) {
                if i != want {
                    return Err(not_inferred(format!(
                        "`features.denseblock{b}` has no `denselayer{want}` but has a `denselayer{i}` (layers count from 1)"
                    )));
                }
            }
            config.push(layers.len() as u32);
        }
        Ok(config)
    }

    /// The compression that gives every transition's output channels: `floor(in · c) = out`.
    /// `None` when there is no transition (one block).
    fn compression(&self, blocks: usize) -> Result<Option<f32>> {
        let mut transitions = Vec::with_capacity(blocks.saturating_sub(1));
        for t in 1..blocks {
            let name = format!("features.transition{t}.conv.weight");
            let s = self.shape(&name, 4)?;
            let (out, input) = (s[0], s[1]);
            if out == 0 || input == 0 || out > input {
                return Err(not_inferred(format!(
                    "`{name}` has shape {s:?}: a transition maps its input channels to at most as many \
                     (compression in (0, 1])"
                )));
            }
            transitions.push((name, out, input));
        }
        if transitions.is_empty() {
            return Ok(None);
        }
        // Every c with floor(in · c) = out for each transition lies in [max out/in, min (out+1)/in).
        // The shortest decimal there (0.5, 0.3...) is what a person would have chosen; failing
        // that, the lower bound and the next few f32 values up (the product may round below).
        let lo = transitions.iter().map(|&(_, o, i)| o as f64 / i as f64).fold(0.0, f64::max);
        let hi = transitions.iter().map(|&(_, o, i)| (o + 1) as f64 / i as f64).fold(f64::INFINITY, f64::min);
        let fits =
            |c: f32| c > 0.0 && c <= 1.0 && transitions.iter().all(|(_, o, i)| (*i as f32 * c).floor() as usize == *o);
        let decimals = (1..=6).map(|d| {
            let scale = 10f64.powi(d);
            ((lo * scale - 1e-9).ceil() / scale) as f32
        });
        let lower = lo as f32;
        let mut candidates =
            decimals.filter(|&c| (c as f64) < hi).chain((0..4).map(|ulps| f32::from_bits(lower.to_bits() + ulps)));
        candidates.find(|&c| fits(c)).map(Some).ok_or_else(|| {
            let shown: Vec<String> =
                transitions.iter().map(|(n, o, i)| format!("`{n}` maps {i} channels to {o}")).collect();
            not_inferred(format!("no one compression factor fits every transition: {}", shown.join(", ")))
        })
    }

    fn config(&self) -> Result<DenseNetConfig> {
        let conv0 = self.shape("features.conv0.weight", 4)?;
        let has_norm0 = self.shapes.contains_key("features.norm0.weight");
        let small_inputs = match (conv0[2], conv0[3], has_norm0) {
            (7, 7, true) => false,
            (3, 3, false) => true,
            (7, 7, false) => {
                return Err(not_inferred(
                    "`features.conv0.weight` is 7x7, ImageNet's stem, but `features.norm0.weight` is missing".into(),
                ))
            }
            (3, 3, true) => {
                return Err(not_inferred(
                    "`features.conv0.weight` is 3x3, the CIFAR stem, which has no `features.norm0`, yet the \
                     tensors include `features.norm0.weight`"
                        .into(),
                ))
            }
            (h, w, _) => {
                return Err(not_inferred(format!(
                    "`features.conv0.weight` is {h}x{w}; densegpu builds the ImageNet stem (7x7 conv0, norm0, \
                     max pool) or the CIFAR one (3x3 conv0)"
                )))
            }
        };
        let block_config = self.block_config()?;
        if block_config.len() > MAX_INFERRED_BLOCKS as usize {
            return Err(not_inferred(format!(
                "there are {} dense blocks, more than densegpu infers (at most {MAX_INFERRED_BLOCKS}; \
                 torchvision's DenseNets have 4, the CIFAR ones 3)",
                block_config.len()
            )));
        }
        let layer = "features.denseblock1.denselayer1";
        let conv1_name = format!("{layer}.conv1.weight");
        let conv1 = self.shape(&conv1_name, 4)?;
        let (growth_rate, bn_size) = if self.shapes.contains_key(&format!("{layer}.conv2.weight")) {
            let conv2_name = format!("{layer}.conv2.weight");
            let conv2 = self.shape(&conv2_name, 4)?;
            let (width, k) = (conv1[0], conv2[0]);
            if k == 0 || width == 0 || !width.is_multiple_of(k) {
                return Err(not_inferred(format!(
                    "the bottleneck `{conv1_name}` has {width} output channels, which is not a multiple of the \
                     growth rate {k} (the output channels of `{conv2_name}`): densegpu's bottleneck is \
                     bn_size · growth rate wide"
                )));
            }
            (size_u32(&conv2_name, k)?, size_u32(&conv1_name, width / k)?)
        } else {
            if conv1[2..] != [3, 3] {
                return Err(not_inferred(format!(
                    "`{conv1_name}` has shape {conv1:?} and there is no `{layer}.conv2.weight`: a plain \
                     DenseNet's layer has one 3x3 conv, DenseNet-BC's a 1x1 `conv1` and a 3x3 `conv2`"
                )));
            }
            (size_u32(&conv1_name, conv1[0])?, 0)
        };
        // Without transitions the factor is never used: the constructors' value then.
        let compression = self.compression(block_config.len())?.unwrap_or(if bn_size > 0 { 0.5 } else { 1.0 });
        let classifier = self.shape("classifier.weight", 2)?;
        let blocks = block_config.len() as u32;
        let (default_size, downsample) =
            if small_inputs { (32, 1u32 << (blocks - 1)) } else { (224, 4 << (blocks - 1)) };
        let config = DenseNetConfig {
            growth_rate,
            block_config,
            num_init_features: size_u32("features.conv0.weight", conv0[0])?,
            bn_size,
            compression,
            drop_rate: 0.0,
            num_classes: size_u32("classifier.weight", classifier[0])?,
            small_inputs,
            in_channels: size_u32("features.conv0.weight", conv0[1])?,
            image_size: u32::next_multiple_of(default_size, downsample),
        };
        self.check_against(&config)?;
        Ok(config)
    }

    /// Every tensor of the model `config` builds, present with its shape, and nothing else.
    fn check_against(&self, config: &DenseNetConfig) -> Result<()> {
        let summary = format!(
            "{} DenseNet{} with growth rate {}, blocks {:?}, {} stem channels{}, compression {} and {} classes",
            if config.small_inputs { "a CIFAR" } else { "an ImageNet" },
            if config.bn_size > 0 { "-BC" } else { "" },
            config.growth_rate,
            config.block_config,
            config.num_init_features,
            if config.bn_size > 0 { format!(", bottleneck {}·k", config.bn_size) } else { String::new() },
            config.compression,
            config.num_classes
        );
        let graph = config.build(1, MemoryMode::Efficient).map_err(|e| not_inferred(format!("{summary}: {e}")))?;
        let mut model = std::collections::BTreeMap::new();
        for t in graph.params.iter().chain(&graph.states).flat_map(|g| &g.tensors) {
            model.insert(t.name.as_str(), &t.shape);
        }
        let mut missing = Vec::new();
        for (&name, &want) in &model {
            match self.shapes.get(name) {
                None => missing.push(name.to_string()),
                Some(got) if got != want => {
                    return Err(not_inferred(format!(
                        "the tensors look like {summary}, but `{name}` has shape {got:?} where that model's is \
                         {want:?}"
                    )))
                }
                Some(_) => {}
            }
        }
        let extra: Vec<String> = self.shapes.keys().filter(|n| !model.contains_key(n.as_str())).cloned().collect();
        let listed = |names: &[String]| {
            let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
            match names.len() {
                0..=5 => shown.join(", "),
                n => format!("{} and {} more", shown.join(", "), n - 5),
            }
        };
        if !missing.is_empty() {
            return Err(not_inferred(format!(
                "the tensors look like {summary}, but {} of that model's tensors are missing: {}",
                missing.len(),
                listed(&missing)
            )));
        }
        if !extra.is_empty() {
            return Err(not_inferred(format!(
                "the tensors look like {summary}, but {} of them are not that model's: {}",
                extra.len(),
                listed(&extra)
            )));
        }
        Ok(())
    }
}

//! Batch shards: a batch split into shards trains and evaluates as the whole batch does, in
//! every memory mode, with and without dropout; and the planner picks the fewest shards that
//! fit the storage bindings.

use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::memory::arena::ArenaLimits;
use densegpu::memory::shards::BatchShards;
use densegpu::memory::MemoryPlan;
use densegpu::schedule::ScheduleOptions;
use densegpu::{block_on, Pass, Session, SgdHyper};

mod support;
use support::{batch, gpu, rel_err, tiny_config};

const SGD: SgdHyper = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// Five images in shards of at most 2: shards of 2, 2 and 1 images, so unequal ones too.
const BATCH: u32 = 5;

struct Run {
    losses: Vec<f32>,
    correct: Vec<u32>,
    grads: Vec<f32>,
    params: Vec<f32>,
    states: Vec<f32>,
    eval_logits: Vec<f32>,
    eval_loss: f32,
}

fn run(mode: MemoryMode, drop_rate: f32, max_shard_images: Option<u32>) -> Run {
    let graph = tiny_config(drop_rate).build(BATCH, mode).unwrap();
    let mut session = block_on(Session::new(gpu(), graph.clone(), 7)).unwrap();
    // Uneven batch-norm gradient slices too, so sharding meets the sliced backward.
    let options =
        ScheduleOptions { gradient_slice_bytes: 5 * BATCH as u64 * 8 * 8 * 4, max_shard_images, ..Default::default() };
    session.set_schedule_options(options);
    let (mut losses, mut correct) = (Vec::new(), Vec::new());
    for step in 0..3 {
        let (nchw, _, labels) = batch(&graph, 300 + step);
        let r = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
        losses.push(r.loss);
        correct.push(r.correct);
    }
    let shards = session.memory_plan(Pass::Train).unwrap().shards;
    match max_shard_images {
        Some(2) => assert_eq!(shards.sizes, [2, 2, 1], "the forced shard size is taken"),
        _ => assert_eq!(shards.sizes, [BATCH], "everything fits one shard"),
    }
    let (nchw, _, labels) = batch(&graph, 999);
    let (eval_logits, e) = block_on(session.eval_batch(&nchw, &labels)).unwrap();
    let flat = |g: Vec<Vec<f32>>| g.concat();
    Run {
        losses,
        correct,
        grads: flat(block_on(session.gradients()).unwrap()),
        params: flat(block_on(session.parameters()).unwrap()),
        states: flat(block_on(session.states()).unwrap()),
        eval_logits,
        eval_loss: e.loss,
    }
}

/// The sharded run reorders float32 sums over the batch, nothing else: each shard sums its
/// own images (the batch-norm moments, dgamma and dbeta, weight gradients, the loss), and the
/// shards' sums are added in order. Every such sum of M terms lies within γ_M·Σ|terms| of the
/// exact one (Higham, "Accuracy and Stability of Numerical Algorithms", §3.1) whatever the
/// order; here M is at most 5·8·8 = 320 values per channel summed in 256-wide trees and short
/// serial runs, so a few units of float32 rounding (6e-8) per sum. Three SGD steps carry the
/// difference forward through the updates. The bound below, 2e-6 relative (norm-wise), is 30
/// such roundings; it is what the issue aims at (1e-6) with room for the three steps, and
/// far below what a wrong combination gives (a shard's statistics instead of the batch's
/// change the loss in the second digit).
const SHARDED_BOUND: f64 = 2e-6;

#[test]
fn a_sharded_batch_trains_and_evaluates_as_the_whole_batch() {
    for mode in MemoryMode::ALL {
        for drop_rate in [0.0, 0.25] {
            let whole = run(mode, drop_rate, None);
            let sharded = run(mode, drop_rate, Some(2));
            let what = format!("{mode}, drop {drop_rate}");
            let e = rel_err(&sharded.losses, &whole.losses);
            assert!(e < SHARDED_BOUND, "{what}: losses {:?} vs {:?} ({e:.1e})", sharded.losses, whole.losses);
            assert_eq!(sharded.correct, whole.correct, "{what}: correct counts");
            for (name, got, want) in [
                ("gradients", &sharded.grads, &whole.grads),
                ("parameters", &sharded.params, &whole.params),
                ("running statistics", &sharded.states, &whole.states),
                ("evaluation logits", &sharded.eval_logits, &whole.eval_logits),
            ] {
                let e = rel_err(got, want);
                assert!(e < SHARDED_BOUND, "{what}: {name} differ by {e:.2e}");
            }
            let e = rel_err(&[sharded.eval_loss], &[whole.eval_loss]);
            assert!(e < SHARDED_BOUND, "{what}: evaluation loss {} vs {}", sharded.eval_loss, whole.eval_loss);
        }
    }
}

#[test]
fn memory_modes_stay_bit_identical_when_sharded() {
    let naive = run(MemoryMode::Naive, 0.25, Some(2));
    for mode in [MemoryMode::Efficient, MemoryMode::Minimal] {
        let other = run(mode, 0.25, Some(2));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&other.losses), bits(&naive.losses), "{mode}: losses");
        assert_eq!(bits(&other.grads), bits(&naive.grads), "{mode}: gradients");
        assert_eq!(bits(&other.params), bits(&naive.params), "{mode}: parameters");
        assert_eq!(bits(&other.states), bits(&naive.states), "{mode}: running statistics");
    }
}

#[test]
fn the_measured_arena_equals_the_sharded_plan() {
    for mode in MemoryMode::ALL {
        let graph = tiny_config(0.0).build(BATCH, mode).unwrap();
        let mut session = block_on(Session::new(gpu(), graph.clone(), 1)).unwrap();
        session.set_schedule_options(ScheduleOptions { max_shard_images: Some(2), ..Default::default() });
        let plan = session.memory_plan(Pass::Train).unwrap();
        assert_eq!(plan.shards.len(), 3);
        let (nchw, _, labels) = batch(&graph, 1);
        block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
        assert_eq!(session.allocated_bytes(), plan.report().total, "{mode}: allocated bytes differ from the plan");
    }
}

/// DenseNet-BC-100 (k = 12) at batch 200: block 1 (216 channels of 32x32 maps) needs
/// 216·200·1024·4 bytes = 169 MiB, more than a 128 MiB binding.
fn bc100() -> DenseNetConfig {
    DenseNetConfig::cifar_bc(100, 12, 10).unwrap()
}

#[test]
fn the_planner_takes_the_fewest_shards_that_fit_the_bindings() {
    let limits = ArenaLimits::WEBGPU_DEFAULT;
    let graph = bc100().build(200, MemoryMode::Minimal).unwrap();
    let plan = MemoryPlan::new(&graph, Pass::Train, &limits).unwrap();
    // 216·1024·4 bytes an image: 151 images a binding, so 2 shards of 100.
    assert_eq!(plan.shards.sizes, [100, 100]);
    assert!(plan.arena.buffer_bytes.iter().all(|&b| b <= limits.max_buffer_bytes));
    // At batch 64 everything fits: one shard, and the plan is the unsharded one.
    let small = bc100().build(64, MemoryMode::Minimal).unwrap();
    assert_eq!(MemoryPlan::new(&small, Pass::Train, &limits).unwrap().shards, BatchShards::whole(64));
}

#[test]
fn an_image_larger_than_a_binding_is_refused_by_name() {
    // A 1 MiB binding: at 64x64 images one image's part of block 1 (216·4096·4 bytes = 3.4 MiB)
    // is larger, and no shard can hold less than one image.
    let limits = ArenaLimits { max_buffer_bytes: 1 << 20, ..ArenaLimits::WEBGPU_DEFAULT };
    let config = DenseNetConfig { image_size: 64, ..bc100() };
    let graph = config.build(4, MemoryMode::Minimal).unwrap();
    let e = MemoryPlan::new(&graph, Pass::Train, &limits).unwrap_err().to_string();
    assert!(e.contains("one image's part of") && e.contains("cannot split an image"), "{e}");
}

#[test]
fn densenet121_in_shards_takes_the_step_of_the_whole_batch() {
    // A whole DenseNet-121 step at 224x224 is too slow for the suite on a CPU driver; 64x64
    // images (2x2 maps in the last block) in forced shards of 2 + 1 images exercise the same
    // ImageNet stem, max pool and four blocks.
    let config = DenseNetConfig { image_size: 64, ..DenseNetConfig::by_name("densenet121", 4).unwrap() };
    let graph = config.build(3, MemoryMode::Minimal).unwrap();
    let (nchw, cnhw, labels) = batch(&graph, 42);
    let step = |max_shard_images| {
        let mut session = block_on(Session::new(gpu(), graph.clone(), 3)).unwrap();
        session.set_schedule_options(ScheduleOptions { max_shard_images, ..Default::default() });
        let before = (block_on(session.parameters()).unwrap(), block_on(session.states()).unwrap());
        let loss = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap().loss;
        let shards = session.memory_plan(Pass::Train).unwrap().shards.sizes;
        let grads = block_on(session.gradients()).unwrap().concat();
        (loss, grads, block_on(session.states()).unwrap().concat(), shards, before)
    };
    let (whole, sharded) = (step(None), step(Some(2)));
    assert_eq!((&whole.3, &sharded.3), (&vec![3], &vec![2, 1]));
    // 121 layers of batch norm over as few as 3·2·2 values a channel amplify any rounding
    // difference: here the whole batch's own float32 gradients differ from the float64
    // reference by about 1e-3 (ReLU masks flip near their kink, as the gradient-fidelity
    // section of BENCHMARKS.md describes). Reordering the batch sums (all that shards change)
    // must stay an order of magnitude below float32's own error on this very step, and the
    // loss and running statistics, which no backward amplifies, within SHARDED_BOUND.
    let (params, states) = &whole.4;
    let labels_f: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let want = densegpu::reference::graph::run(&graph, params, states, &cnhw, &labels_f, true, 0);
    let float32_error = rel_err(&whole.1, &want.param_grads.concat());
    let e = rel_err(&sharded.1, &whole.1);
    assert!(e < 0.1 * float32_error, "gradients: sharded vs whole {e:.2e}, whole vs float64 {float32_error:.2e}");
    let e = rel_err(&[sharded.0], &[whole.0]);
    assert!(e < SHARDED_BOUND, "losses {} vs {} ({e:.1e})", sharded.0, whole.0);
    let e = rel_err(&sharded.2, &whole.2);
    assert!(e < SHARDED_BOUND, "running statistics differ by {e:.2e}");
}

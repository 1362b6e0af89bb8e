//! Whole training steps on the GPU: against the CPU reference, across memory modes, and
//! against finite differences.

use densegpu::densenet::MemoryMode;
use densegpu::gpu::Family;
use densegpu::graph::{Conv2dOut, Graph, Op};
use densegpu::ops::conv::workgroup::SPLIT_SCRATCH_BYTES;
use densegpu::reference::graph as reference;
use densegpu::schedule::ScheduleOptions;
use densegpu::{block_on, Gpu, Session, SgdHyper};
use std::sync::Arc;

mod support;
use support::{batch, gpu, rel_err, tiny_config};

fn flat(groups: &[Vec<f32>]) -> Vec<f32> {
    groups.concat()
}

const SGD: SgdHyper = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

/// Bytes of 5 channels of the tiny net's first block (3 images of 8x8): the batch norms'
/// backward then runs in uneven slices of 5 channels, not in one piece.
const FIVE_CHANNELS: u64 = 5 * 3 * 8 * 8 * 4;

#[test]
fn naive_training_step_matches_cpu_reference() {
    for (drop_rate, slice_bytes) in [(0.0, FIVE_CHANNELS), (0.2, FIVE_CHANNELS), (0.0, u64::MAX)] {
        let graph = tiny_config(drop_rate).build(3, MemoryMode::Naive).unwrap();
        let mut session = block_on(Session::new(gpu(), graph.clone(), 11)).unwrap();
        session.set_schedule_options(ScheduleOptions { gradient_slice_bytes: slice_bytes, ..Default::default() });
        for step in 0..2u64 {
            let params = block_on(session.parameters()).unwrap();
            let states = block_on(session.states()).unwrap();
            let momentum = block_on(session.momentum()).unwrap();
            let (nchw, cnhw, labels) = batch(&graph, 100 + step);
            let labels_f: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let want = reference::run(&graph, &params, &states, &cnhw, &labels_f, true, step);
            let got = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
            assert!((got.loss - want.loss).abs() <= 1e-4 * want.loss.abs(), "loss {} vs {}", got.loss, want.loss);
            assert_eq!(got.correct as f32, want.correct);
            let grads = block_on(session.gradients()).unwrap();
            let e = rel_err(&flat(&grads), &flat(&want.param_grads));
            assert!(e < 1e-4, "drop {drop_rate} step {step}: gradients differ by {e:.2e}");
            for (i, (g, w)) in grads.iter().zip(&want.param_grads).enumerate() {
                let e = rel_err(g, w);
                assert!(e < 1e-3, "group {i} ({}) differs by {e:.2e}", graph.params[i].tensors[0].name);
            }
            let new_states = block_on(session.states()).unwrap();
            let e = rel_err(&flat(&new_states), &flat(&want.states));
            assert!(e < 1e-5, "running statistics differ by {e:.2e}");
            // The update itself, with the reference optimizer on the reference gradients.
            let mut want_params = params.clone();
            let mut want_momentum = momentum.clone();
            for ((p, m), g) in want_params.iter_mut().zip(&mut want_momentum).zip(&want.param_grads) {
                densegpu::reference::sgd::sgd_step(p, g, m, &SGD);
            }
            let new_params = block_on(session.parameters()).unwrap();
            let e = rel_err(&flat(&new_params), &flat(&want_params));
            assert!(e < 1e-6, "updated parameters differ by {e:.2e}");
        }
    }
}

type Trained = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// Three SGD steps per mode from the same initialisation and data.
fn run_three_steps(mode: MemoryMode, drop_rate: f32, slice_bytes: u64) -> Trained {
    run_three_steps_on(
        gpu(),
        mode,
        drop_rate,
        ScheduleOptions { gradient_slice_bytes: slice_bytes, ..Default::default() },
    )
}

fn run_three_steps_on(gpu: Arc<Gpu>, mode: MemoryMode, drop_rate: f32, options: ScheduleOptions) -> Trained {
    let graph = tiny_config(drop_rate).build(3, mode).unwrap();
    let mut session = block_on(Session::new(gpu, graph.clone(), 5)).unwrap();
    session.set_schedule_options(options);
    let mut losses = Vec::new();
    for step in 0..3 {
        let (nchw, _, labels) = batch(&graph, 200 + step);
        losses.push(block_on(session.train_step(&nchw, &labels, &SGD)).unwrap().loss);
    }
    let grads = flat(&block_on(session.gradients()).unwrap());
    let params = flat(&block_on(session.parameters()).unwrap());
    let states = flat(&block_on(session.states()).unwrap());
    (losses, grads, params, states)
}

#[test]
fn every_memory_mode_gives_the_same_training() {
    // Naive takes each batch-norm gradient whole; the others in uneven slices.
    for drop_rate in [0.0, 0.25] {
        let naive = run_three_steps(MemoryMode::Naive, drop_rate, u64::MAX);
        for mode in [MemoryMode::Efficient, MemoryMode::Minimal] {
            let other = run_three_steps(mode, drop_rate, FIVE_CHANNELS);
            let what = format!("{mode} vs naive, drop {drop_rate}");
            assert!(rel_err(&other.0, &naive.0) < 1e-5, "{what}: losses {:?} vs {:?}", other.0, naive.0);
            assert!(rel_err(&other.1, &naive.1) < 1e-5, "{what}: gradients differ");
            assert!(rel_err(&other.2, &naive.2) < 1e-5, "{what}: parameters differ");
            assert!(rel_err(&other.3, &naive.3) < 1e-5, "{what}: running statistics differ");
            // Stronger, and true on lavapipe: every fused or sliced kernel computes each value
            // with the same operations in the same order as naive's separate launches.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&other.0), bits(&naive.0), "{what}: losses are not bit-identical");
            assert_eq!(bits(&other.1), bits(&naive.1), "{what}: gradients are not bit-identical");
            assert_eq!(bits(&other.2), bits(&naive.2), "{what}: parameters are not bit-identical");
            assert_eq!(bits(&other.3), bits(&naive.3), "{what}: running statistics are not bit-identical");
        }
    }
}

/// Either kernel family, forced (on a device of its own, so no other test sees the choice),
/// trains bit-identically across the memory modes; the workgroup family with its weight
/// gradients split over the pixels through the scratch. The two families agree with each
/// other within float32 rounding (they sum in different orders).
#[test]
fn either_kernel_family_trains_bit_identically_across_memory_modes() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut by_family = Vec::new();
    for family in [Family::Register, Family::Workgroup] {
        let device = Arc::new(block_on(Gpu::new()).unwrap());
        device.force_family(Some(family));
        let scratch = if family == Family::Workgroup { SPLIT_SCRATCH_BYTES } else { 0 };
        let options = |slice_bytes| ScheduleOptions {
            gradient_slice_bytes: slice_bytes,
            split_scratch_bytes: scratch,
            ..Default::default()
        };
        let naive = run_three_steps_on(device.clone(), MemoryMode::Naive, 0.25, options(u64::MAX));
        for mode in [MemoryMode::Efficient, MemoryMode::Minimal] {
            let other = run_three_steps_on(device.clone(), mode, 0.25, options(FIVE_CHANNELS));
            let what = format!("{} family, {mode} vs naive", family.name());
            assert_eq!(bits(&other.0), bits(&naive.0), "{what}: losses are not bit-identical");
            assert_eq!(bits(&other.1), bits(&naive.1), "{what}: gradients are not bit-identical");
            assert_eq!(bits(&other.2), bits(&naive.2), "{what}: parameters are not bit-identical");
            assert_eq!(bits(&other.3), bits(&naive.3), "{what}: running statistics are not bit-identical");
        }
        by_family.push(naive);
    }
    let (register, workgroup) = (&by_family[0], &by_family[1]);
    assert_ne!(bits(&register.1), bits(&workgroup.1), "the forced families must run different kernels");
    assert!(rel_err(&workgroup.0, &register.0) < 1e-5, "losses {:?} vs {:?}", workgroup.0, register.0);
    assert!(rel_err(&workgroup.1, &register.1) < 1e-4, "gradients differ by more than float32 rounding");
    assert!(rel_err(&workgroup.2, &register.2) < 1e-5, "parameters differ by more than float32 rounding");
}

#[test]
fn the_measured_arena_equals_the_plan() {
    for mode in MemoryMode::ALL {
        let graph = tiny_config(0.0).build(3, mode).unwrap();
        let mut session = block_on(Session::new(gpu(), graph.clone(), 1)).unwrap();
        let planned = session.memory_plan(densegpu::Pass::Train).unwrap().report().total;
        let (nchw, _, labels) = batch(&graph, 1);
        block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
        assert_eq!(session.allocated_bytes(), planned, "{mode}: allocated bytes differ from the plan");
    }
}

#[test]
fn finite_differences_agree_with_backward_on_a_tiny_graph() {
    // conv -> BN+ReLU -> pool -> linear -> loss, at odd sizes.
    let mut g = Graph::new(2);
    let x = g.input_image(3, 7, 5);
    let c = g.conv2d("conv", x, Conv2dOut::New(4), 3, 1, 1);
    let b = g.batch_norm("norm", c, true);
    let p = g.pool("pool", Op::GlobalAvgPool, b, None);
    let logits = g.linear("classifier", p, 3);
    g.cross_entropy(logits);
    let mut session = block_on(Session::new(gpu(), g.clone(), 3)).unwrap();
    let (nchw, _, labels) = batch(&g, 9);
    let frozen = SgdHyper { lr: 0.0, momentum: 0.0, weight_decay: 0.0, nesterov: false };
    block_on(session.train_step(&nchw, &labels, &frozen)).unwrap();
    let grads = block_on(session.gradients()).unwrap();
    let state = block_on(session.state_dict()).unwrap();
    let mut checked = 0;
    for (group, pg) in g.params.iter().enumerate() {
        let mut at = 0;
        for t in &pg.tensors {
            let values = &state.iter().find(|(n, _, _)| n == &t.name).unwrap().2;
            for i in [0, t.len() / 2, t.len() - 1] {
                let h = 1e-2;
                let mut loss_at = |delta: f32| {
                    let mut v = values.clone();
                    v[i] += delta;
                    session.set_tensor(&t.name, &v).unwrap();
                    let l = block_on(session.train_step(&nchw, &labels, &frozen)).unwrap().loss;
                    session.set_tensor(&t.name, values).unwrap();
                    l as f64
                };
                let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
                let analytic = grads[group][at + i] as f64;
                assert!(
                    (fd - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                    "{}[{i}]: finite difference {fd:.5} vs backward {analytic:.5}",
                    t.name
                );
                checked += 1;
            }
            at += t.len();
        }
    }
    assert!(checked >= 15);
}

#[test]
fn batch_1_with_1x1_maps_evaluates_but_refuses_to_train() {
    // DenseNet-BC-16 on 4x4 images: block 3 (and norm5) sees 1x1 maps, one value per channel
    // at batch 1. Training must refuse with an error (the statistics kernel would fail);
    // evaluation uses the running statistics and works.
    let config = densegpu::DenseNetConfig { image_size: 4, ..tiny_config(0.0) };
    let graph = config.build(1, MemoryMode::Efficient).unwrap();
    let mut session = block_on(Session::new(gpu(), graph.clone(), 3)).unwrap();
    let (nchw, _, labels) = batch(&graph, 5);
    let err = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap_err();
    assert!(matches!(err, densegpu::Error::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`features.norm5`") && msg.contains("batch size of at least 2"), "{msg}");
    assert_eq!(session.step, 0, "nothing ran");
    let (logits, result) = block_on(session.eval_batch(&nchw, &labels)).unwrap();
    assert_eq!(logits.len(), 5);
    assert!(logits.iter().all(|v| v.is_finite()) && result.loss.is_finite(), "{logits:?}");
}

#[test]
fn a_session_refuses_sgd_hyperparameters_outside_their_range() {
    let graph = tiny_config(0.0).build(3, MemoryMode::Efficient).unwrap();
    let mut session = block_on(Session::new(gpu(), graph.clone(), 3)).unwrap();
    let before = block_on(session.parameters()).unwrap();
    let (nchw, _, labels) = batch(&graph, 6);
    for (sgd, part) in [
        (SgdHyper { momentum: 1.5, ..SGD }, "momentum must be in [0, 1), got 1.5"),
        (SgdHyper { lr: -0.1, ..SGD }, "learning rate must be a finite number >= 0, got -0.1"),
        (SgdHyper { weight_decay: f32::NAN, ..SGD }, "weight decay must be a finite number >= 0, got NaN"),
    ] {
        let msg = block_on(session.train_step(&nchw, &labels, &sgd)).unwrap_err().to_string();
        assert!(msg.contains(part), "{msg:?} does not say {part:?}");
    }
    assert_eq!(session.step, 0);
    assert_eq!(block_on(session.parameters()).unwrap(), before, "no step ran");
}

/// A NaN in one weight of the second dense layer reaches the loss in every memory mode through
/// every ReLU, BN-ReLU, batch norm and pool (a `max`-based ReLU turned it into zeros and the loss
/// stayed finite; in efficient and minimal mode it passes the BN-ReLU a conv applies on load
/// through that channel's NaN statistics), and the step reports a parameter tensor whose
/// gradient is NaN. A finite step reports nothing.
#[test]
fn a_nan_weight_stops_the_step_in_every_memory_mode_naming_a_tensor() {
    use densegpu::DivergenceSource;
    for mode in [MemoryMode::Naive, MemoryMode::Efficient, MemoryMode::Minimal] {
        let graph = tiny_config(0.0).build(3, mode).unwrap();
        let mut session = block_on(Session::new(gpu(), graph.clone(), 11)).unwrap();
        let (nchw, _, labels) = batch(&graph, 100);
        let finite = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
        assert!(finite.loss.is_finite() && finite.diverged.is_none(), "{mode:?}: {finite:?}");
        let name = "features.denseblock1.denselayer2.conv1.weight";
        let (_, _, mut values) = block_on(session.state_dict()).unwrap().into_iter().find(|t| t.0 == name).unwrap();
        values[3] = f32::NAN;
        session.set_tensor(name, &values).unwrap();
        let r = block_on(session.train_step(&nchw, &labels, &SGD)).unwrap();
        assert!(r.loss.is_nan(), "{mode:?}: the NaN weight must reach the loss, got {}", r.loss);
        let d = r.diverged.unwrap_or_else(|| panic!("{mode:?}: a NaN gradient was not flagged"));
        assert_eq!(d.source, DivergenceSource::Gradient, "{mode:?}: {d}");
        assert!(d.value.is_nan(), "{mode:?}: {d}");
        assert!(graph.params.iter().any(|g| g.tensors.iter().any(|t| t.name == d.tensor)), "{mode:?}: {d}");
    }
}

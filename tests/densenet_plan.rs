//! Model definitions and memory plans, checked without a GPU.

use densegpu::densenet::{largest_batch, plan_training};
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::memory::arena::ArenaLimits;
use densegpu::memory::{memory_report, MemoryPlan};
use densegpu::Pass;

#[test]
fn parameter_counts_equal_torchvision() {
    let cases = [
        (DenseNetConfig::cifar_bc(100, 12, 10).unwrap(), 769_162),
        (DenseNetConfig::cifar_bc(40, 12, 10).unwrap(), 176_122),
        (DenseNetConfig::cifar_bc(190, 12, 10).unwrap(), 2_365_222),
        (DenseNetConfig::densenet121(1000), 7_978_856),
        (DenseNetConfig::densenet169(1000), 14_149_480),
        (DenseNetConfig::densenet201(1000), 20_013_928),
        (DenseNetConfig::densenet161(1000), 28_681_000),
    ];
    for (config, expected) in cases {
        for mode in MemoryMode::ALL {
            let g = config.build(1, mode).unwrap();
            assert_eq!(g.parameter_count(), expected, "{config:?} in {mode}");
        }
    }
}

fn stored_activations(depth: u32, mode: MemoryMode) -> f64 {
    let g = DenseNetConfig::cifar_bc(depth, 12, 10).unwrap().build(64, mode).unwrap();
    // Depth 250's first block buffer (516 channels) outgrows a 128 MiB binding at batch 64;
    // growth with depth is what is measured here, so plan for a device with 2 GiB bindings.
    let limits = ArenaLimits { max_buffer_bytes: 2 << 30, alignment: 256 };
    MemoryPlan::new(&g, Pass::Train, &limits).unwrap().report().activations as f64
}

#[test]
fn stored_activations_are_linear_in_depth_except_naive() {
    let depths = [40u32, 100, 190, 250];
    for mode in MemoryMode::ALL {
        // Bytes per layer: flat for a linear mode, growing with depth for a quadratic one.
        let per_layer: Vec<f64> = depths.iter().map(|&d| stored_activations(d, mode) / (d - 4) as f64).collect();
        println!("{mode}: bytes per layer {per_layer:?}");
        let growth = per_layer[3] / per_layer[0];
        match mode {
            // Linear: per-layer bytes stay within 10% of the shallowest net's.
            MemoryMode::Efficient | MemoryMode::Minimal => {
                assert!(
                    per_layer.iter().all(|&p| p <= per_layer[0] * 1.1),
                    "{mode} grows faster than linearly: {per_layer:?}"
                )
            }
            // Quadratic: per-layer bytes rise with every depth step (measured 3.1x from 40 to 250).
            MemoryMode::Naive => {
                assert!(per_layer.windows(2).all(|w| w[1] > w[0] * 1.2), "naive per-layer bytes {per_layer:?}");
                assert!(growth > 2.5, "naive should grow quadratically, per-layer growth {growth:.2}")
            }
        }
    }
}

#[test]
fn the_plan_orders_the_modes_and_meets_the_floor() {
    let config = DenseNetConfig::cifar_bc(100, 12, 10).unwrap();
    let report = |mode| memory_report(&config.build(64, mode).unwrap(), Pass::Train).unwrap();
    let (naive, efficient, minimal) =
        (report(MemoryMode::Naive), report(MemoryMode::Efficient), report(MemoryMode::Minimal));
    const MIB: u64 = 1 << 20;
    // The three block buffers alone are 78 MiB at batch 64; minimal keeps little beyond them.
    assert!(minimal.activations >= 78 * MIB && minimal.activations <= 82 * MIB, "minimal {}", minimal.activations);
    // Efficient adds the bottleneck outputs (about 252 MiB).
    assert!(efficient.activations <= 78 * MIB + 256 * MIB, "efficient {}", efficient.activations);
    assert!(naive.activations > 5 * efficient.activations);
    assert!(naive.total > efficient.total && efficient.total > minimal.total);
    // Parameters, gradients and optimizer state do not depend on the mode.
    assert_eq!(
        (naive.parameters, naive.gradients, naive.optimizer),
        (minimal.parameters, minimal.gradients, minimal.optimizer)
    );
}

#[test]
fn a_batch_beyond_the_binding_limit_is_sharded_and_a_budget_refuses_with_advice() {
    let config = DenseNetConfig::cifar_bc(100, 12, 10).unwrap();
    let limits = ArenaLimits::WEBGPU_DEFAULT;
    // Block 1 at batch 1024 is 864 MiB: it is split into batch shards, each within a binding.
    let plan = plan_training(&config, 1024, MemoryMode::Efficient, &limits, None).unwrap();
    assert_eq!(plan.shards.len(), 7, "{:?}", plan.shards);
    assert!(plan.arena.buffer_bytes.iter().all(|&b| b <= limits.max_buffer_bytes));
    // A budget is honoured the same way.
    let budget = 160 << 20;
    let fit = largest_batch(&config, MemoryMode::Minimal, &limits, Some(budget)).unwrap();
    let total = plan_training(&config, fit, MemoryMode::Minimal, &limits, Some(budget)).unwrap().report().total;
    assert!(total <= budget);
    let err = plan_training(&config, fit + 1, MemoryMode::Minimal, &limits, Some(budget)).unwrap_err().to_string();
    assert!(err.contains("budget") && err.contains(&format!("is {fit}")), "{err}");
}

#[test]
fn a_recomputed_bn_relu_read_only_by_a_1x1_weight_gradient_is_fused_into_it() {
    use densegpu::ops::{batchnorm::BatchNormLaunch, conv::ConvLaunch};
    use densegpu::schedule::{compile, LaunchOp, Phase, ValueKind};
    // DenseNet-BC-40: 3 blocks of 6 layers, 2 transitions.
    let config = DenseNetConfig::cifar_bc(40, 12, 10).unwrap();
    let count = |mode| {
        let g = config.build(2, mode).unwrap();
        let s = compile(&g, Pass::Train).unwrap();
        let fused = s
            .launches
            .iter()
            .filter(|l| matches!(l.op, LaunchOp::Conv(ConvLaunch::BackwardWeightBnRelu { .. })))
            .count();
        let recomputed_bn = s
            .launches
            .iter()
            .filter(|l| {
                l.phase == Phase::Recompute && matches!(l.op, LaunchOp::BatchNorm(BatchNormLaunch::Apply { .. }))
            })
            .count();
        let recomputed_values = s.values.iter().filter(|v| v.kind == ValueKind::Recomputed).count();
        (fused, recomputed_bn, recomputed_values)
    };
    assert_eq!(count(MemoryMode::Naive), (0, 0, 0));
    // Efficient: every norm1 and transition norm is fused; only the norm2s are recomputed.
    assert_eq!(count(MemoryMode::Efficient), (18 + 2, 18, 18));
    // Minimal also recomputes each bottleneck conv, but that recomputation normalises on load
    // too (see below), so every norm1 and transition norm fuses here as well, and only the
    // norm2s and bottleneck outputs are recomputed.
    assert_eq!(count(MemoryMode::Minimal), (18 + 2, 18, 18 * 2));
}

#[test]
fn a_recomputed_bn_relu_read_only_by_a_1x1_conv_is_applied_on_its_load_and_never_stored() {
    use densegpu::graph::Op;
    use densegpu::ops::{batchnorm::BatchNormLaunch, conv::ConvLaunch};
    use densegpu::schedule::{compile, LaunchOp, Phase, ValueKind};
    use std::collections::HashSet;
    // DenseNet-BC-40: 3 blocks of 6 layers (norm1, conv1, norm2, conv2 each), 2 transitions
    // (norm, conv, pool) and the final norm: 18 * 2 + 2 + 1 = 39 batch norms.
    let config = DenseNetConfig::cifar_bc(40, 12, 10).unwrap();
    let bns = 39;
    let count = |mode, run| {
        let g = config.build(2, mode).unwrap();
        let s = compile(&g, run).unwrap();
        let launches = |phase: Phase, pick: &dyn Fn(&LaunchOp) -> bool| {
            s.launches.iter().filter(|l| l.phase == phase && pick(&l.op)).count()
        };
        let fused = |op: &LaunchOp| matches!(op, LaunchOp::Conv(ConvLaunch::ForwardBnRelu { .. }));
        let apply = |op: &LaunchOp| matches!(op, LaunchOp::BatchNorm(BatchNormLaunch::Apply { .. }));
        let stats = |op: &LaunchOp| {
            matches!(op, LaunchOp::BatchNorm(BatchNormLaunch::TrainStats { .. } | BatchNormLaunch::EvalStats { .. }))
        };
        // The storages the fused launches normalise on load: the folded BN-ReLU outputs.
        let folded: HashSet<_> = s
            .launches
            .iter()
            .filter(|l| fused(&l.op))
            .map(|l| {
                let conv = &g.nodes[l.node.unwrap().0];
                assert!(matches!(conv.op, Op::Conv2d { kernel: 1, stride: 1, pad: 0, .. }), "{}", conv.name);
                g.slice(conv.inputs[0]).storage
            })
            .collect();
        // Its gradient still flows from the conv's backward input to the batch norm's backward.
        assert!(
            s.values.iter().all(|v| v.kind == ValueKind::Gradient || !folded.contains(&v.storage)),
            "{mode}: a folded BN-ReLU output has a value in the schedule"
        );
        // Statistics are still computed once per batch norm, in forward only.
        assert_eq!(launches(Phase::Forward, &stats), bns, "{mode}");
        assert_eq!(launches(Phase::Recompute, &stats), 0, "{mode}");
        (
            folded.len(),
            launches(Phase::Forward, &fused),
            launches(Phase::Recompute, &fused),
            launches(Phase::Forward, &apply),
            launches(Phase::Recompute, &apply),
        )
    };
    // Naive keeps every BN-ReLU output (none is marked recompute), so nothing folds.
    assert_eq!(count(MemoryMode::Naive, Pass::Train), (0, 0, 0, bns, 0));
    // Efficient: the 18 norm1s and 2 transition norms fold; the norm2s feed 3x3 convs.
    assert_eq!(count(MemoryMode::Efficient, Pass::Train), (20, 20, 0, bns - 20, 18));
    // Minimal: the same folds, and each recomputed bottleneck conv normalises on load again.
    assert_eq!(count(MemoryMode::Minimal, Pass::Train), (20, 20, 18, bns - 20, 18));
    // Inference folds the same batch norms (with running statistics).
    assert_eq!(count(MemoryMode::Efficient, Pass::Eval), (20, 20, 0, bns - 20, 0));
    assert_eq!(count(MemoryMode::Naive, Pass::Eval), (0, 0, 0, bns, 0));
}

/// The absolute target for efficient mode: at DenseNet-BC-100, batch 64, the stored
/// activations plus workspace (that is, the whole activation arena) fit in 352 MiB, of which
/// 330 MiB are the block buffers and bottleneck outputs that must be stored.
#[test]
fn efficient_mode_needs_at_most_352_mib_beyond_the_parameters_at_bc100_batch_64() {
    let config = DenseNetConfig::cifar_bc(100, 12, 10).unwrap();
    let r = memory_report(&config.build(64, MemoryMode::Efficient).unwrap(), Pass::Train).unwrap();
    const MIB: u64 = 1 << 20;
    assert_eq!(r.activations + r.workspace, r.total - r.parameters - r.gradients - r.optimizer);
    assert!(r.activations + r.workspace <= 352 * MIB, "{:.1} MiB", (r.activations + r.workspace) as f64 / MIB as f64);
}

/// A batch norm read only by a conv gets its backward slice by slice inside the conv's: no
/// gradient value of a whole batch-norm output exists, every slice stays within the slice
/// budget, and where the batch norm's input gradient starts there (a transition, a
/// bottleneck) the slices are computed in place in it.
#[test]
fn batch_norm_gradients_are_taken_in_slices_within_budget() {
    use densegpu::ops::{batchnorm::BatchNormLaunch, conv::ConvLaunch};
    use densegpu::schedule::{compile_with, LaunchOp, Loc, ScheduleOptions, ValueKind};
    let config = DenseNetConfig::cifar_bc(40, 12, 10).unwrap();
    // 5 channels of the first block: 16 images of 32x32.
    let options = ScheduleOptions { gradient_slice_bytes: 5 * 16 * 32 * 32 * 4, ..Default::default() };
    for mode in MemoryMode::ALL {
        let g = config.build(16, mode).unwrap();
        let s = compile_with(&g, Pass::Train, &options).unwrap();
        // Every batch norm but norm5, which feeds the global pool.
        let is_bn_output = |name: &str| name.contains(".norm") && !name.contains("norm5") && !name.ends_with("stats");
        for v in s.values.iter().filter(|v| v.kind == ValueKind::Gradient) {
            let storage = &g.storages[v.storage.0];
            if is_bn_output(&storage.name) {
                assert!(
                    v.elems * 4 <= options.gradient_slice_bytes,
                    "{mode}: {} gradient of {} elements",
                    storage.name,
                    v.elems
                );
            }
        }
        let (mut sliced, mut in_place) = (0, 0);
        for l in &s.launches {
            match l.op {
                LaunchOp::Conv(ConvLaunch::BackwardInput { channels, shape, .. }) if channels.1 < shape.c_in => {
                    sliced += 1
                }
                LaunchOp::BatchNorm(BatchNormLaunch::Backward { dy, dx: Some(dx), .. })
                    if matches!(dy, Loc::Value { .. }) && dx == dy =>
                {
                    in_place += 1
                }
                _ => {}
            }
        }
        assert!(sliced > 18 * 2, "{mode}: {sliced} sliced input gradients");
        // Each norm2 (18) and transition norm (2) is computed in place, in every slice.
        assert!(in_place >= 20, "{mode}: {in_place} in-place batch-norm backward launches");
    }
}

#[test]
fn training_refuses_a_batch_norm_with_one_value_per_channel_but_inference_does_not() {
    use densegpu::densenet::memory_plans_json;
    // DenseNet-121 on 32x32 images: the last block's maps are 1x1, so at batch 1 each of its
    // batch norms (and norm5) would see one value per channel.
    let config = DenseNetConfig { image_size: 32, ..DenseNetConfig::densenet121(10) };
    let limits = ArenaLimits::WEBGPU_DEFAULT;
    for mode in MemoryMode::ALL {
        let err = plan_training(&config, 1, mode, &limits, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, densegpu::Error::Config(_)), "{err:?}");
        for part in [
            "`features.denseblock4.denselayer1.norm1`",
            "`features.norm5`",
            "1 value per channel",
            "Expected more than 1 value per channel when training",
            "batch size of at least 2",
            "larger images",
        ] {
            assert!(msg.contains(part), "{mode}: {msg:?} does not say {part:?}");
        }
        assert!(plan_training(&config, 2, mode, &limits, None).is_ok(), "{mode}: batch 2 trains");
        // Inference at batch 1 uses the running statistics and stays possible.
        let graph = config.build(1, mode).unwrap();
        MemoryPlan::new(&graph, Pass::Eval, &limits).unwrap();
        // The planners never offer batch 1 for training.
        assert!(largest_batch(&config, mode, &limits, Some(4 << 30)).unwrap() >= 2);
        let tight = plan_training(&config, 2, mode, &limits, None).unwrap().report().total;
        assert_eq!(largest_batch(&config, mode, &limits, Some(tight)), Some(2), "{mode}");
        assert_eq!(largest_batch(&config, mode, &limits, Some(tight - 1)), None, "{mode}");
    }
    let json = memory_plans_json(&config, 1, &limits, None);
    for mode in json["modes"].as_array().unwrap() {
        assert!(mode["error"].as_str().unwrap().contains("`features.norm5`"), "{mode}");
    }
    // 64x64 inputs leave 2x2 maps: batch 1 trains.
    let larger = DenseNetConfig { image_size: 64, ..config };
    assert!(plan_training(&larger, 1, MemoryMode::Efficient, &limits, None).is_ok());
}

#[test]
fn a_huge_batch_is_refused_with_its_true_size() {
    // 5,000,000 images of 32x32 are 5.12e9 values per channel, beyond u32: the error must give
    // the input's real size, 3 channels x 5e6 x 32 x 32 x 4 bytes, not a wrapped one.
    let config = DenseNetConfig::cifar_bc(10, 4, 10).unwrap();
    let limits = ArenaLimits::WEBGPU_DEFAULT;
    let msg = plan_training(&config, 5_000_000, MemoryMode::Naive, &limits, None).unwrap_err().to_string();
    assert!(msg.contains("tensor `input`"), "{msg}");
    assert!(msg.contains(&format!("needs {} bytes", 3u64 * 5_000_000 * 32 * 32 * 4)), "{msg}");
}

//! The step profiler (`Session::profile_train_step`, `densegpu::profile`): a profiled step
//! trains exactly as an ordinary one, every dispatch is timed and attributed, the table adds
//! up, and the Chrome trace follows the trace event format (what Perfetto and
//! chrome://tracing read: a `traceEvents` array of complete `X` events with microsecond `ts`
//! and `dur`, and `M` metadata naming processes and threads).

mod support;

use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::ops::conv::ConvLaunch;
use densegpu::ops::{LaunchOp, Work};
use densegpu::profile::{block_of, Peak, StepProfile};
use densegpu::{block_on, Session, SgdHyper};
use support::gpu;

/// DenseNet-BC-16 k=8 at 16x16, batch 8: every op family, three blocks, batch norms in
/// every direction, in a few seconds on lavapipe.
fn config() -> DenseNetConfig {
    DenseNetConfig { image_size: 16, ..DenseNetConfig::cifar_bc(16, 8, 10).unwrap() }
}

/// Two steps, the second profiled (the first compiles the kernels), and the session.
fn profiled(mode: MemoryMode) -> (StepProfile, Session, Vec<f32>) {
    let graph = config().build(8, mode).unwrap();
    let (images, _, labels) = support::batch(&graph, 3);
    let mut session = block_on(Session::new(gpu(), graph, 7)).unwrap();
    let sgd = SgdHyper::densenet_cifar();
    block_on(session.train_step(&images, &labels, &sgd)).unwrap();
    let (result, profile) = block_on(session.profile_train_step(&images, &labels, &sgd)).unwrap();
    assert!(result.loss.is_finite());
    (profile, session, vec![result.loss])
}

#[test]
fn a_profiled_step_trains_exactly_as_an_ordinary_one() {
    let (_, profiled_session, profiled_loss) = profiled(MemoryMode::Efficient);
    let graph = config().build(8, MemoryMode::Efficient).unwrap();
    let (images, _, labels) = support::batch(&graph, 3);
    let mut session = block_on(Session::new(gpu(), graph, 7)).unwrap();
    let sgd = SgdHyper::densenet_cifar();
    block_on(session.train_step(&images, &labels, &sgd)).unwrap();
    let loss = block_on(session.train_step(&images, &labels, &sgd)).unwrap().loss;
    assert_eq!(loss.to_bits(), profiled_loss[0].to_bits());
    let bits = |groups: Vec<Vec<f32>>| groups.into_iter().flatten().map(f32::to_bits).collect::<Vec<_>>();
    let (a, b) = (block_on(profiled_session.parameters()).unwrap(), block_on(session.parameters()).unwrap());
    assert!(bits(a) == bits(b), "the profiled step updated the weights differently");
    assert_eq!(profiled_session.step, session.step);
}

#[test]
fn every_dispatch_is_timed_and_the_table_adds_up() {
    let (p, _, _) = profiled(MemoryMode::Minimal);
    assert!(!p.dispatches.is_empty());
    assert!(p.dispatches.iter().all(|d| d.seconds >= 0.0 && d.start >= 0.0 && d.launch < p.launches.len()));
    // Every launch of the schedule recorded at least one dispatch.
    let mut seen = vec![false; p.launches.len()];
    p.dispatches.iter().for_each(|d| seen[d.launch] = true);
    assert!(seen.iter().all(|&s| s), "launches without a dispatch");
    let families: std::collections::BTreeSet<&str> = p.launches.iter().map(|l| l.family).collect();
    let expected = ["batchnorm", "conv", "linear", "loss", "pool", "sgd"];
    assert!(expected.iter().all(|f| families.contains(f)), "{families:?}");
    // The rows hold every dispatch's time and every launch's work exactly once.
    let table = p.table();
    let row_seconds: f64 = table.iter().map(|r| r.seconds).sum();
    let launch_seconds = p.launch_seconds();
    assert!((row_seconds - launch_seconds).abs() <= 1e-9 * launch_seconds.max(1.0));
    assert_eq!(table.iter().map(|r| r.dispatches).sum::<usize>(), p.dispatches.len());
    let work = p.launches.iter().fold(Work::default(), |a, l| a + l.work);
    let rows = table.iter().fold(Work::default(), |a, r| a + r.work);
    assert!((rows.flops - work.flops).abs() <= 1e-9 * work.flops);
    assert!((rows.bytes_read - work.bytes_read).abs() <= 1e-9 * work.bytes_read);
    // Slowest first, and the families' view adds up to the same.
    assert!(table.windows(2).all(|w| w[0].seconds >= w[1].seconds));
    let family_seconds: f64 = p.families().iter().map(|r| r.seconds).sum();
    assert!((family_seconds - launch_seconds).abs() <= 1e-9 * launch_seconds.max(1.0));
    // The wall time is split into parts that add up to it.
    let parts = p.host + p.wait + p.readback;
    assert!((parts - p.wall).abs() <= 1e-6 + 1e-3 * p.wall, "{parts} against {}", p.wall);
    assert!(p.device_span <= p.wall, "the device span {} exceeds the wall time {}", p.device_span, p.wall);
    if p.clock == "device timestamps" {
        // The launches add up to the device's span, less what lies between them: within 10%.
        let span = p.device_span;
        assert!(
            launch_seconds <= span * (1.0 + 1e-6) && launch_seconds >= 0.9 * span,
            "{launch_seconds} s, span {span} s"
        );
    }
    let report = p.report(Some(&Peak { bytes_per_second: 1e10, flops_per_second: 5e10 }));
    for needle in ["conv / backward weight / denseblock1", "denseblock1", "roofline", "GFLOP/s", "wall time"] {
        assert!(report.contains(needle), "the report lacks `{needle}`:\n{report}");
    }
}

#[test]
fn the_chrome_trace_follows_the_trace_event_format() {
    let (p, _, _) = profiled(MemoryMode::Efficient);
    // Written and read back as a file would be.
    let text = serde_json::to_string(&p.chrome_trace()).unwrap();
    let trace: serde_json::Value = serde_json::from_str(&text).unwrap();
    support::check_chrome_trace(&trace, p.dispatches.len());
}

#[test]
fn blocks_follow_torchvision_names() {
    assert_eq!(block_of("features.denseblock2.denselayer3.conv1"), "denseblock2");
    assert_eq!(block_of("features.transition1.norm"), "transition1");
    assert_eq!(block_of("features.conv0"), "stem");
    assert_eq!(block_of("features.norm5"), "head");
    assert_eq!(block_of("classifier"), "head");
}

#[test]
fn the_conv_work_of_a_densenet_bc_100_forward_matches_its_architecture() {
    // DenseNet-BC-100 (k=12) at 32x32, counted by hand from its architecture (Huang et al.,
    // CVPR 2017, Table 1 and §3): the stem's 3x3 conv 3 -> 24, then per dense layer a 1x1 conv
    // to 4k = 48 channels and a 3x3 conv to k = 12, 16 layers a block, and transitions halving
    // the channels with a 1x1 conv before each 2x2 pooling.
    let (k, layers) = (12.0, 16);
    let mut macs = 32.0 * 32.0 * 3.0 * 9.0 * 24.0;
    let mut channels = 24.0;
    for (block, side) in [32.0f64, 16.0, 8.0].into_iter().enumerate() {
        for _ in 0..layers {
            macs += side * side * (channels * 4.0 * k + 4.0 * k * 9.0 * k);
            channels += k;
        }
        if block < 2 {
            let half: f64 = (channels / 2.0f64).floor();
            macs += side * side * channels * half;
            channels = half;
        }
    }
    let graph = DenseNetConfig::cifar_bc(100, 12, 10).unwrap().build(1, MemoryMode::Efficient).unwrap();
    let schedule = densegpu::schedule::compile(&graph, densegpu::Pass::Train).unwrap();
    let mut counted = 0.0;
    for l in schedule.launches.iter().filter(|l| l.phase == densegpu::schedule::Phase::Forward) {
        let LaunchOp::Conv(conv) = &l.op else { continue };
        let (macs, work) = (conv.shape().macs() as f64, l.op.work(0));
        // A conv's work is its multiply-adds, plus 3 FLOPs per input element where it
        // normalises its input on load (the fused BN-ReLU).
        let bn_relu = match conv {
            ConvLaunch::ForwardBnRelu { shape, .. } => 3.0 * shape.input_elems() as f64,
            _ => 0.0,
        };
        assert_eq!(work.flops, 2.0 * macs + bn_relu, "{conv:?}");
        counted += macs;
    }
    // The same sum in another order: equal to f64 rounding.
    assert!((counted - macs).abs() <= 1e-9 * macs, "schedule {counted:.0} MACs, architecture {macs:.0}");
    // And about the 0.29 G multiply-adds a forward pass that DenseNet-BC-100 is known for.
    assert!((macs / 1e9 - 0.29).abs() < 0.01, "{macs}");
}

/// A trace saved by `--profile` (say, of a DenseNet-BC-100 step) checked as the tests above
/// check theirs: `DENSEGPU_TRACE=step.json cargo test --release --test profile -- --ignored`.
#[test]
#[ignore = "checks the file named by DENSEGPU_TRACE"]
fn a_saved_trace_follows_the_trace_event_format() {
    let path = std::env::var("DENSEGPU_TRACE").expect("DENSEGPU_TRACE names a trace file");
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let dispatches =
        (trace["traceEvents"].as_array().unwrap().iter()).filter(|e| e["ph"] == "X" && e["pid"] == 1).count();
    support::check_chrome_trace(&trace, dispatches);
    let seconds = |pid: u64| -> f64 {
        (trace["traceEvents"].as_array().unwrap().iter())
            .filter(|e| e["ph"] == "X" && e["pid"] == pid)
            .map(|e| e["dur"].as_f64().unwrap() * 1e-6)
            .sum()
    };
    println!("{path}: {dispatches} device slices, {:.3} s of launches", seconds(1));
}

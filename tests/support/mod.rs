//! Helpers shared by the whole-model test files (`mod support;` in each).
#![allow(dead_code)]

use densegpu::densenet::DenseNetConfig;
use densegpu::graph::Graph;
use densegpu::{block_on, Gpu};
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};

/// One device per test binary.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| Arc::new(block_on(Gpu::new()).unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"))))
        .clone()
}

/// ‖got − want‖ / ‖want‖, after checking that `got` is all finite.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite value");
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// DenseNet-BC depth 16 (2 layers per block), k = 4, on 8x8 images, 5 classes.
pub fn tiny_config(drop_rate: f32) -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 4,
        num_init_features: 6,
        drop_rate,
        num_classes: 5,
        image_size: 8,
        ..DenseNetConfig::cifar_bc(16, 4, 5).unwrap()
    }
}

/// A random batch for `graph`: images in NCHW (what a session takes), the same images
/// channel-major (what the graph holds), and labels.
pub fn batch(graph: &Graph, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let [c, n, h, w] = graph.shape(graph.input.unwrap());
    let classes = graph.shape(graph.logits.unwrap())[0];
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let nchw: Vec<f32> = (0..c * n * h * w).map(|_| rng.random_range(-2.0..2.0)).collect();
    let cnhw = densegpu::graph::channel_major(&nchw, [c, n, h, w]);
    let labels = (0..n).map(|_| rng.random_range(0..classes)).collect();
    (nchw, cnhw, labels)
}

/// Every model tensor (parameters, then running statistics) of `graph`, by state-dict name,
/// with values drawn uniformly from `range`, deterministically from `seed`.
pub fn random_tensors(graph: &Graph, seed: u64, range: std::ops::Range<f32>) -> Vec<densegpu::checkpoint::NamedTensor> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    graph
        .params
        .iter()
        .chain(&graph.states)
        .flat_map(|g| &g.tensors)
        .map(|t| densegpu::checkpoint::NamedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: (0..t.len()).map(|_| rng.random_range(range.clone())).collect(),
        })
        .collect()
}

/// Checks a step profiler's Chrome trace (`densegpu::profile::StepProfile::chrome_trace`) as
/// the JSON trace event format has it, which Perfetto and chrome://tracing read: a
/// `traceEvents` array of complete (`X`) events with a name, microsecond `ts` and `dur`, a
/// process and a thread; one device slice per dispatch (`dispatches` of them) with the
/// profiler's arguments, a conv's naming its kernel candidate; every device track named by a
/// `thread_name` metadata (`M`) event; the slices in time order.
pub fn check_chrome_trace(trace: &serde_json::Value, dispatches: usize) {
    let events = trace["traceEvents"].as_array().expect("a traceEvents array");
    let complete: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let device: Vec<&&serde_json::Value> = complete.iter().filter(|e| e["pid"] == 1).collect();
    assert_eq!(device.len(), dispatches, "one slice per dispatch");
    for e in &complete {
        assert!(e["name"].is_string() && e["ts"].is_number() && e["dur"].is_number(), "{e}");
        assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
    }
    for e in &device {
        for arg in ["node", "block", "shape", "entry", "kernel", "flops", "bytes_read", "bytes_written"] {
            assert!(!e["args"][arg].is_null(), "slice without `{arg}`: {e}");
        }
    }
    let conv = device.iter().find(|e| e["cat"] == "conv").expect("a conv slice");
    assert!(conv["args"]["kernel"].as_str().is_some_and(|k| !k.ends_with(".wgsl")), "{conv}");
    let named: Vec<u64> = (events.iter().filter(|e| e["ph"] == "M" && e["pid"] == 1 && e["name"] == "thread_name"))
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    for e in &device {
        assert!(named.contains(&e["tid"].as_u64().unwrap()), "track {} has no name", e["tid"]);
    }
    let starts: Vec<f64> = device.iter().map(|e| e["ts"].as_f64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "slices out of order");
}

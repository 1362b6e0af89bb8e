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

//! torchvision weights as they are: the architecture read from a state dict's tensor names and
//! shapes (no GPU).

use densegpu::checkpoint::{NamedTensor, Weights};
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::graph::Graph;
use densegpu::Error;
use rand::{Rng, SeedableRng};

mod support;
use support::tiny_config;

/// Tensor names and shapes, as a state dict lists them.
type Shapes = Vec<(String, Vec<usize>)>;

fn graph_of(config: &DenseNetConfig) -> Graph {
    config.build(1, MemoryMode::Efficient).unwrap()
}

/// A torchvision state dict's names and shapes for `config`, `num_batches_tracked` included,
/// under names passed through `rename`.
fn names_and_shapes(config: &DenseNetConfig, rename: impl Fn(&str) -> String) -> Shapes {
    let graph = graph_of(config);
    let mut out = Vec::new();
    for t in graph.params.iter().chain(&graph.states).flat_map(|g| &g.tensors) {
        out.push((rename(&t.name), t.shape.clone()));
        if let Some(m) = t.name.strip_suffix(".running_mean") {
            out.push((rename(&format!("{m}.num_batches_tracked")), vec![]));
        }
    }
    out
}

/// The spelling of torchvision's old released checkpoints: `denselayer1.norm.1.weight`.
fn old_spelling(name: &str) -> String {
    ["norm1", "norm2", "conv1", "conv2"].iter().fold(name.to_string(), |s, k| {
        s.replace(&format!(".{k}."), &format!(".{}.{}.", &k[..k.len() - 1], &k[k.len() - 1..]))
    })
}

fn message<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn infer(list: &[(String, Vec<usize>)]) -> densegpu::Result<DenseNetConfig> {
    DenseNetConfig::infer_from_names_and_shapes(list)
}

#[test]
fn the_imagenet_densenets_are_recognised_from_their_tensors() {
    for (name, classes) in [("densenet121", 1000), ("densenet169", 1000), ("densenet201", 7), ("densenet161", 1000)] {
        let config = DenseNetConfig::by_name(name, classes).unwrap();
        assert_eq!(infer(&names_and_shapes(&config, str::to_string)).unwrap(), config, "{name}");
        // Old key spelling, and the `module.` prefix of DataParallel, on top.
        let old = names_and_shapes(&config, |n| format!("module.{}", old_spelling(n)));
        assert!(old.iter().any(|(n, _)| n == "module.features.denseblock1.denselayer1.norm.1.weight"));
        assert_eq!(infer(&old).unwrap(), config, "{name} with old keys and `module.`");
    }
}

#[test]
fn cifar_densenets_are_recognised_from_their_tensors() {
    let bc100 = DenseNetConfig::cifar_bc(100, 12, 10).unwrap();
    let bc40_c100 = DenseNetConfig::cifar_bc(40, 12, 100).unwrap();
    let plain = DenseNetConfig::cifar(40, 12, 10).unwrap();
    // Another bottleneck width, compression and stem; a compression whose first transition alone
    // would not give it (96 → 28 is also 0.2917).
    let odd = DenseNetConfig { bn_size: 2, compression: 0.3, num_init_features: 24, ..bc40_c100.clone() };
    for config in [bc100, bc40_c100, plain, odd] {
        assert_eq!(infer(&names_and_shapes(&config, str::to_string)).unwrap(), config);
        let old = names_and_shapes(&config, old_spelling);
        assert_eq!(infer(&old).unwrap(), config, "old keys");
    }
    // The image size is no tensor's: an inferred CIFAR model is for 32x32 images.
    let tiny = tiny_config(0.0);
    assert_eq!(infer(&names_and_shapes(&tiny, str::to_string)).unwrap(), DenseNetConfig { image_size: 32, ..tiny });
}

#[test]
fn a_list_that_is_no_densenet_gets_an_error_naming_what_is_wrong() {
    let config = DenseNetConfig::cifar_bc(40, 12, 10).unwrap();
    let full = names_and_shapes(&config, str::to_string);
    let without = |f: &dyn Fn(&str) -> bool| full.iter().filter(|(n, _)| !f(n)).cloned().collect::<Vec<_>>();
    let with_shape = |name: &str, shape: Vec<usize>| {
        full.iter().map(|(n, s)| (n.clone(), if n == name { shape.clone() } else { s.clone() })).collect::<Vec<_>>()
    };
    let cases: Vec<(Shapes, Vec<&str>)> = vec![
        (vec![], vec!["no tensors"]),
        (without(&|n| n == "classifier.weight"), vec!["`classifier.weight` is missing"]),
        (without(&|n| n.starts_with("features.conv0")), vec!["`features.conv0.weight` is missing"]),
        (without(&|n| n.contains("denseblock")), vec!["no `features.denseblock<b>.denselayer<i>.*` tensors"]),
        (
            without(&|n| n.starts_with("features.denseblock2.denselayer3.")),
            vec!["`features.denseblock2` has no `denselayer3`"],
        ),
        (with_shape("features.conv0.weight", vec![24, 3, 5, 5]), vec!["`features.conv0.weight` is 5x5", "7x7", "3x3"]),
        (
            with_shape("features.denseblock1.denselayer1.conv1.weight", vec![50, 24, 1, 1]),
            vec!["`features.denseblock1.denselayer1.conv1.weight` has 50 output channels", "growth rate 12"],
        ),
        (
            with_shape("features.norm5.weight", vec![7]),
            vec!["`features.norm5.weight` has shape [7]", "[132]", "growth rate 12", "blocks [6, 6, 6]"],
        ),
        (
            with_shape("features.transition1.conv.weight", vec![120, 96, 1, 1]),
            vec!["`features.transition1.conv.weight` has shape [120, 96, 1, 1]", "compression"],
        ),
        (
            without(&|n| n == "features.denseblock3.denselayer2.norm2.running_var"),
            vec!["missing", "`features.denseblock3.denselayer2.norm2.running_var`"],
        ),
        (
            [full.clone(), vec![("features.extra.weight".to_string(), vec![3])]].concat(),
            vec!["not that model's", "`features.extra.weight`"],
        ),
        (
            [full.clone(), vec![("features.norm0.weight".to_string(), vec![24])]].concat(),
            vec!["3x3, the CIFAR stem", "`features.norm0.weight`"],
        ),
    ];
    let nine_blocks: Shapes = std::iter::once(("features.conv0.weight".to_string(), vec![24, 3, 3, 3]))
        .chain((1..=9).map(|b| (format!("features.denseblock{b}.denselayer1.norm1.weight"), vec![24])))
        .collect();
    let cases = [cases, vec![(nine_blocks, vec!["9 dense blocks", "at most 8"])]].concat();
    for (list, parts) in cases {
        let m = message(infer(&list));
        assert!(m.starts_with("cannot infer the DenseNet architecture"), "{m}");
        for p in parts {
            assert!(m.contains(p), "{m:?} does not say {p:?}");
        }
    }
    // Both spellings of one tensor.
    let twice = [full.clone(), vec![("features.denseblock1.denselayer1.norm.1.weight".to_string(), vec![24])]].concat();
    assert!(message(infer(&twice)).contains("given twice"));
}

/// Every model tensor of `graph` with random values.
fn random_tensors(graph: &Graph, seed: u64) -> Vec<NamedTensor> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    graph
        .params
        .iter()
        .chain(&graph.states)
        .flat_map(|g| &g.tensors)
        .map(|t| NamedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            // Running variances stay positive, so that the files also evaluate sensibly.
            data: (0..t.len()).map(|_| rng.random_range(0.5f32..1.5)).collect(),
        })
        .collect()
}

#[test]
fn model_config_is_the_files_own_or_inferred() {
    let config = tiny_config(0.0);
    let tensors = random_tensors(&graph_of(&config), 4);
    let ours = Weights { config: Some(config.clone()), tensors: tensors.clone(), ..Default::default() };
    assert_eq!(ours.model_config().unwrap(), config);
    let bare = Weights { tensors: tensors.clone(), ..Default::default() };
    assert_eq!(bare.model_config().unwrap(), DenseNetConfig { image_size: 32, ..config });
    let broken = Weights { tensors: tensors[1..].to_vec(), ..Default::default() };
    let m = message(broken.model_config());
    assert!(m.contains("missing") && m.contains("no `densegpu.config` metadata"), "{m}");
}

//! torchvision weights as they are: the architecture read from a state dict's tensor names and
//! shapes (no GPU), fine-tuning from weights with another classifier (GPU), and the command-line
//! tools on a file without densegpu's metadata.

use densegpu::checkpoint::{self, NamedTensor, Weights};
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::graph::Graph;
use densegpu::{block_on, Error, Session};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{gpu, tiny_config};

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

/// Every model tensor of `graph` with random values. Running variances stay positive, so that
/// the files also evaluate sensibly.
fn random_tensors(graph: &Graph, seed: u64) -> Vec<NamedTensor> {
    support::random_tensors(graph, seed, 0.5..1.5)
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

fn state(session: &Session) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    block_on(session.state_dict()).unwrap()
}

#[test]
fn fine_tuning_leaves_out_a_classifier_for_other_classes_and_nothing_else() {
    let ten = DenseNetConfig { num_classes: 10, ..tiny_config(0.0) };
    let three = DenseNetConfig { num_classes: 3, ..tiny_config(0.0) };
    let source = random_tensors(&graph_of(&ten), 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten.safetensors");
    checkpoint::save_weights(&path, &ten, &source).unwrap();
    let weights = checkpoint::load_weights(&path).unwrap();

    let session = block_on(Session::new(gpu(), three.build(2, MemoryMode::Efficient).unwrap(), 7)).unwrap();
    let fresh = state(&session);
    // The strict loader refuses it, naming the classifier.
    let m = message(checkpoint::apply_weights(&session, &weights));
    assert!(m.contains("classifier.weight") && m.contains("[10, "), "{m}");

    let swap =
        checkpoint::apply_weights_for_fine_tuning(&session, &weights).unwrap().expect("the classifier is left out");
    assert_eq!(swap.left_out, ["classifier.weight", "classifier.bias"]);
    assert_eq!((swap.file_classes, swap.model_classes), (10, 3));
    let said = swap.to_string();
    for p in ["`classifier.weight`", "`classifier.bias`", "10 classes", "3"] {
        assert!(said.contains(p), "{said:?} does not say {p:?}");
    }
    for ((name, shape, got), (_, _, before)) in state(&session).into_iter().zip(&fresh) {
        if name.starts_with("classifier.") {
            assert_eq!(&got, before, "`{name}` keeps its fresh initialisation");
        } else {
            let want = source.iter().find(|t| t.name == name).unwrap();
            assert_eq!(shape, want.shape, "{name}");
            assert_eq!(got, want.data, "`{name}` comes from the file");
        }
    }
    // The crate's (and torchvision's) classifier initialisation: U(±1/sqrt(in)) weights, zero bias.
    let (_, shape, w) = fresh.iter().find(|t| t.0 == "classifier.weight").unwrap();
    let bound = 1.0 / (shape[1] as f32).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|&v| v != 0.0));
    assert!(fresh.iter().find(|t| t.0 == "classifier.bias").unwrap().2.iter().all(|&v| v == 0.0));

    // Weights with the model's own classes load whole, nothing left out.
    let same = Weights { tensors: random_tensors(&graph_of(&three), 2), ..Default::default() };
    assert_eq!(checkpoint::apply_weights_for_fine_tuning(&session, &same).unwrap(), None);
}

#[test]
fn fine_tuning_still_refuses_any_other_mismatch_and_writes_nothing() {
    let ten = DenseNetConfig { num_classes: 10, ..tiny_config(0.0) };
    let three = DenseNetConfig { num_classes: 3, ..tiny_config(0.0) };
    let source = random_tensors(&graph_of(&ten), 3);
    let session = block_on(Session::new(gpu(), three.build(2, MemoryMode::Efficient).unwrap(), 8)).unwrap();
    let before = state(&session);
    let with = |name: &str, shape: Vec<usize>| {
        let mut tensors = source.clone();
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        t.data = vec![0.0; shape.iter().product()];
        t.shape = shape;
        Weights { tensors, ..Default::default() }
    };
    // Another shape elsewhere, as the strict loader says it.
    let m = message(checkpoint::apply_weights_for_fine_tuning(&session, &with("features.norm5.weight", vec![7])));
    assert!(m.contains("`features.norm5.weight` shape [7]"), "{m}");
    // A classifier over another number of features is no class-count change.
    let m = message(checkpoint::apply_weights_for_fine_tuning(&session, &with("classifier.weight", vec![10, 5])));
    assert!(m.contains("`classifier.weight` shape [10, 5]"), "{m}");
    // A missing tensor.
    let mut missing = source.clone();
    missing.retain(|t| t.name != "features.denseblock1.denselayer2.conv2.weight");
    let m = message(checkpoint::apply_weights_for_fine_tuning(
        &session,
        &Weights { tensors: missing, ..Default::default() },
    ));
    assert!(m.contains("lack") && m.contains("features.denseblock1.denselayer2.conv2.weight"), "{m}");
    assert_eq!(state(&session), before, "nothing is written when anything else differs");
}

// ---------------------------------------------------------------------------------------------
// The tools, on a file saved from PyTorch

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

fn run_example(name: &str, args: &[&str]) -> std::process::Output {
    let bin = example(name);
    assert!(bin.exists(), "{} is built by `cargo test` (or `cargo build --release --examples`)", bin.display());
    Command::new(bin).args(args).output().unwrap()
}

fn succeeded(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A state dict as PyTorch's `safetensors.torch.save_file` writes it from a DataParallel model
/// loaded from an old checkpoint: old key spelling, `module.` prefix, no densegpu metadata.
fn torch_file(path: &Path, tensors: &[NamedTensor]) {
    let rename = |n: &str| format!("module.{}", old_spelling(n));
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| (rename(&t.name), Dtype::F32, t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    for t in tensors {
        if let Some(m) = t.name.strip_suffix(".running_mean") {
            raw.push((rename(&format!("{m}.num_batches_tracked")), Dtype::I64, vec![], 3i64.to_le_bytes().to_vec()));
        }
    }
    let views: Vec<(String, TensorView<'_>)> =
        raw.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Two classes of 32x32 images, 2 per class for training and testing each.
fn image_folder(root: &Path) {
    for split in ["train", "test"] {
        for class in 0..2u32 {
            let dir = root.join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2u32 {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = (x * (3 + class * 4) + y * (5 + i)) % 256;
                    image::Rgb([v as u8, (255 - v) as u8, ((x * y) % 256) as u8])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn the_tools_take_a_torchvision_file_without_densegpu_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // DenseNet-BC-10 (one layer per block), k = 4, for 10 classes.
    let config = DenseNetConfig::cifar_bc(10, 4, 10).unwrap();
    let weights = dir.path().join("torch.safetensors");
    torch_file(&weights, &random_tensors(&graph_of(&config), 5));
    let w = weights.to_str().unwrap();
    let data = dir.path().join("data");
    image_folder(&data);
    let d = data.to_str().unwrap();

    let out = succeeded(&run_example("eval", &["--weights", w, "--data", d, "--batch-size", "2", "--json"]));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["images"], 4, "{out}");

    let image = data.join("test/class0/000.png");
    let out = succeeded(&run_example("predict", &["--weights", w, image.to_str().unwrap(), "--json"]));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["logits"].as_array().unwrap().len(), 10, "{out}");

    let onnx = dir.path().join("model.onnx");
    let out = succeeded(&run_example("export_onnx", &["--weights", w, "--out", onnx.to_str().unwrap()]));
    assert!(out.contains("wrote"), "{out}");
    use tract_onnx::prelude::*;
    tract_onnx::onnx().model_for_path(&onnx).expect("the exported model loads in tract");

    // Fine-tuning the 10-class file on 2 classes, the model taken from the file.
    let out = succeeded(&run_example(
        "train_cifar",
        &["--data", d, "--init", w, "--batch-size", "2", "--valid-size", "0", "--max-steps", "1", "--epochs", "1"],
    ));
    assert!(
        out.contains(
            "left out `classifier.weight` and `classifier.bias` (the file's classifier has 10 classes, the model's 2)"
        ),
        "{out}"
    );
    assert!(out.contains("DenseNet-BC-10 (k=4)"), "{out}");

    // Architecture flags that disagree with the file: the strict error, and the way out.
    let out = run_example(
        "train_cifar",
        &["--data", d, "--init", w, "--depth", "16", "--valid-size", "0", "--max-steps", "1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`features.conv0.weight` shape [8, 3, 3, 3]"), "{stderr}");
    assert!(stderr.contains("leave out --model, --depth"), "{stderr}");

    // A file that is no DenseNet says so.
    let bad = dir.path().join("bad.safetensors");
    let data = [0u8; 4];
    let views = vec![("conv.weight".to_string(), TensorView::new(Dtype::F32, vec![1], &data).unwrap())];
    std::fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = run_example("eval", &["--weights", bad.to_str().unwrap(), "--data", d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.safetensors") && stderr.contains("`features.conv0.weight` is missing"), "{stderr}");
}

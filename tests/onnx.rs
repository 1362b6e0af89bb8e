//! ONNX export, checked against an independent runtime (tract) and structurally.

use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::graph::{Conv2dOut, Graph, Op};
use densegpu::onnx::{self, ExportOptions, Normalization};
use densegpu::{block_on, Session};
use onnx_protobuf::{Message, ModelProto};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use tract_onnx::prelude::*;

mod support;
use support::{gpu, rel_err};

type StateDict = Vec<(String, Vec<usize>, Vec<f32>)>;

/// DenseNet-BC, depth 16 (2 bottleneck layers per block), k = 6, on 16x16 images.
fn cifar_config() -> DenseNetConfig {
    DenseNetConfig { image_size: 16, ..DenseNetConfig::cifar_bc(16, 6, 10).unwrap() }
}

/// DenseNet-121-shaped (ImageNet stem: 7x7/2 conv, BN-ReLU, max pool; four blocks), shrunk.
fn imagenet_config() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 8,
        block_config: vec![2, 2, 2, 2],
        num_init_features: 16,
        image_size: 32,
        ..DenseNetConfig::densenet121(7)
    }
}

/// Gives every batch norm non-trivial affine parameters and running statistics (positive
/// variances), the same in every session passed.
fn randomise_batch_norms(sessions: &[&Session], seed: u64) {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let g = &sessions[0].graph;
    let set = |name: &str, values: Vec<f32>| {
        for s in sessions {
            s.set_tensor(name, &values).unwrap();
        }
    };
    for node in &g.nodes {
        if let Op::BatchNorm { affine, running, .. } = node.op {
            let c = g.params[affine.0].tensors[0].len();
            let mut draw = |lo: f32, hi: f32| (0..c).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>();
            let (gamma, beta, mean, var) = (draw(0.5, 1.5), draw(-0.5, 0.5), draw(-0.5, 0.5), draw(0.3, 3.0));
            set(&g.params[affine.0].tensors[0].name, gamma);
            set(&g.params[affine.0].tensors[1].name, beta);
            set(&g.states[running.0].tensors[0].name, mean);
            set(&g.states[running.0].tensors[1].name, var);
        }
    }
}

fn images(graph: &Graph, seed: u64) -> Vec<f32> {
    let [c, n, h, w] = graph.shape(graph.input.unwrap());
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    (0..c * n * h * w).map(|_| rng.random_range(-2.0..2.0)).collect()
}

/// Eval-mode sessions of one graph at batch 1 and 3, with identical weights.
fn sessions(config: &DenseNetConfig, mode: MemoryMode) -> [Session; 2] {
    let make = |n| block_on(Session::new(gpu(), config.build(n, mode).unwrap(), 17)).unwrap();
    let (s1, s3) = (make(1), make(3));
    randomise_batch_norms(&[&s1, &s3], 99);
    [s1, s3]
}

fn tract_model(bytes: &[u8]) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the model")
        .into_optimized()
        .expect("tract infers every shape and type")
        .into_runnable()
        .expect("tract plans the model")
}

fn tract_logits(model: &Arc<TypedRunnableModel>, graph: &Graph, images: &[f32]) -> Vec<f32> {
    let [c, n, h, w] = graph.shape(graph.input.unwrap());
    let input = Tensor::from_shape(&[n as usize, c as usize, h as usize, w as usize], images).unwrap();
    let out = model.run(tvec!(input.into())).expect("tract runs the model");
    let classes = graph.shape(graph.logits.unwrap())[0] as usize;
    assert_eq!(out[0].shape(), &[n as usize, classes], "logits shape");
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

/// Exports the sessions' model and checks tract's logits against densegpu's at both batch
/// sizes, from one model loaded once (so the batch dimension really is dynamic). Returns the
/// largest relative error and the model bytes.
fn check_against_tract(
    config: &DenseNetConfig,
    sessions: &mut [Session; 2],
    options: &ExportOptions,
    preprocess: impl Fn(&Graph, &[f32]) -> Vec<f32>,
) -> (f64, Vec<u8>) {
    let state = block_on(sessions[1].state_dict()).unwrap();
    let bytes = onnx::export(&sessions[1].graph, Some(config), &state, options).unwrap();
    // The batch size the graph was built for must not leak into the model.
    assert!(
        bytes == onnx::export(&sessions[0].graph, Some(config), &state, options).unwrap(),
        "batch-dependent export"
    );
    check_structure(&bytes);
    let model = tract_model(&bytes);
    let mut worst = 0.0f64;
    for (i, s) in sessions.iter_mut().enumerate() {
        let raw = images(&s.graph, 1000 + i as u64);
        let n = s.graph.batch as usize;
        let (want, _) = block_on(s.eval_batch(&preprocess(&s.graph, &raw), &vec![0; n])).unwrap();
        let got = tract_logits(&model, &s.graph, &raw);
        let e = rel_err(&got, &want);
        assert!(e < 1e-4, "batch {n}: tract's logits differ from densegpu's by {e:.2e} ({options:?})");
        worst = worst.max(e);
    }
    (worst, bytes)
}

fn identity(_: &Graph, x: &[f32]) -> Vec<f32> {
    x.to_vec()
}

/// What holds for every exported model, read back with the ONNX protobuf messages.
fn check_structure(bytes: &[u8]) -> ModelProto {
    let model = ModelProto::parse_from_bytes(bytes).expect("valid protobuf");
    let opset = model.opset_import.iter().find(|o| o.domain.is_empty()).expect("default opset declared");
    assert!(opset.version >= 17, "opset {}", opset.version);
    assert!(model.ir_version >= 8);
    let g = model.graph.as_ref().expect("a graph");
    let mut defined: HashSet<&str> = HashSet::new();
    for init in &g.initializer {
        assert!(defined.insert(&init.name), "initializer `{}` appears twice", init.name);
        let elems: i64 = init.dims.iter().product();
        let width = if init.data_type == 7 { 8 } else { 4 };
        assert_eq!(init.raw_data.len() as i64, elems * width, "initializer `{}` has the wrong byte count", init.name);
    }
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "input");
    let dims = &g.input[0].type_.tensor_type().shape.dim;
    assert_eq!(dims.len(), 4, "input is NCHW");
    assert!(
        matches!(&dims[0].value, Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam(_))),
        "dynamic batch"
    );
    assert!(defined.insert(&g.input[0].name));
    for node in &g.node {
        for i in &node.input {
            assert!(defined.contains(i.as_str()), "node `{}` reads `{i}` before it is defined", node.name);
        }
        for o in &node.output {
            assert!(defined.insert(o), "`{o}` is defined twice");
        }
        let allowed = [
            "Conv",
            "BatchNormalization",
            "Relu",
            "Concat",
            "AveragePool",
            "MaxPool",
            "GlobalAveragePool",
            "Flatten",
            "Gemm",
            "Sub",
            "Div",
            "Identity",
        ];
        assert!(allowed.contains(&node.op_type.as_str()), "unexpected op {}", node.op_type);
    }
    assert_eq!(g.output.len(), 1);
    assert_eq!(g.output[0].name, "logits");
    assert!(defined.contains("logits"));
    model
}

fn param_bytes(state: &StateDict) -> usize {
    state.iter().map(|(_, _, v)| v.len() * 4).sum()
}

#[test]
fn cifar_densenet_bc_matches_tract() {
    let config = cifar_config();
    for mode in [MemoryMode::Naive, MemoryMode::Efficient] {
        let mut s = sessions(&config, mode);
        for fold in [false, true] {
            let options = ExportOptions { fold_batch_norm: fold, ..Default::default() };
            let (e, bytes) = check_against_tract(&config, &mut s, &options, identity);
            eprintln!("cifar BC {mode} fold={fold}: max relative error {e:.2e}, {} bytes", bytes.len());
            if !fold {
                // Every initializer is a state-dict tensor under its torchvision name.
                let state = block_on(s[1].state_dict()).unwrap();
                let model = check_structure(&bytes);
                let names: HashSet<&str> = model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
                let want: HashSet<&str> = state.iter().map(|(n, _, _)| n.as_str()).collect();
                assert_eq!(names, want);
                assert!(names.contains("features.conv0.weight"));
                let p = param_bytes(&state);
                assert!(bytes.len() <= p + p / 10 + 16 * 1024, "{} bytes for {p} parameter bytes", bytes.len());
                let concats = model.graph.node.iter().filter(|n| n.op_type == "Concat").count();
                // Each layer reads one prefix and so does each block's final norm, once each.
                let layers: u32 = config.block_config.iter().sum();
                assert!(concats <= (layers + 3) as usize, "{concats} concats");
            }
        }
    }
}

#[test]
fn imagenet_stem_densenet_matches_tract() {
    let config = imagenet_config();
    for mode in [MemoryMode::Naive, MemoryMode::Efficient] {
        let mut s = sessions(&config, mode);
        for fold in [false, true] {
            let options = ExportOptions { fold_batch_norm: fold, ..Default::default() };
            let (e, bytes) = check_against_tract(&config, &mut s, &options, identity);
            eprintln!("imagenet-stem {mode} fold={fold}: max relative error {e:.2e}, {} bytes", bytes.len());
            let model = check_structure(&bytes);
            let bns = model.graph.node.iter().filter(|n| n.op_type == "BatchNormalization").count();
            let layers: usize = config.block_config.iter().sum::<u32>() as usize;
            // norm0, norm1/norm2 per layer, one per transition, norm5.
            let all = 1 + 2 * layers + 3 + 1;
            // Folding removes norm0 and every norm2 (the bottleneck's); the rest follow a concat.
            assert_eq!(bns, if fold { all - 1 - layers } else { all }, "fold={fold}");
            if fold {
                let conv0 = model.graph.node.iter().find(|n| n.name == "features.conv0").unwrap();
                assert_eq!(conv0.input, ["input", "features.conv0.weight", "features.conv0.bias"]);
            }
        }
    }
}

#[test]
fn model_normalises_raw_input_when_asked() {
    let config = cifar_config();
    let n = Normalization::cifar10();
    let normalise = |g: &Graph, x: &[f32]| -> Vec<f32> {
        let [c, _, h, w] = g.shape(g.input.unwrap());
        let plane = (h * w) as usize;
        x.iter()
            .enumerate()
            .map(|(i, &v)| (v - n.mean[(i / plane) % c as usize]) / n.std[(i / plane) % c as usize])
            .collect()
    };
    let mut s = sessions(&config, MemoryMode::Efficient);
    for (fold_input, fold_bn) in [(false, false), (true, false), (true, true)] {
        let options = ExportOptions {
            normalize_input: true,
            fold_input_normalization: fold_input,
            fold_batch_norm: fold_bn,
            ..Default::default()
        };
        let (e, bytes) = check_against_tract(&config, &mut s, &options, normalise);
        eprintln!("normalised input, fold input {fold_input}, fold BN {fold_bn}: max relative error {e:.2e}");
        let model = check_structure(&bytes);
        let ops: Vec<&str> = model.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        // The stem pads, so the mean cannot become a bias: a Sub stays, the Div folds.
        assert!(ops.contains(&"Sub"));
        assert_eq!(ops.contains(&"Div"), !fold_input);
        let meta = |k: &str| model.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
        assert_eq!(meta(onnx::META_NORMALIZATION).as_deref(), Some("in_model"));
    }
}

/// A hand-built graph whose first conv is unpadded (so the whole normalisation folds), that
/// reads a middle slice of a storage, and has a conv → BN without ReLU.
#[test]
fn generic_graph_with_unpadded_stem_and_slices() {
    let build = |batch| {
        let mut g = Graph::new(batch);
        let x = g.input_image(3, 9, 9);
        let c = g.conv2d("stem", x, Conv2dOut::New(8), 1, 1, 0);
        let b = g.batch_norm("stem_norm", c, false);
        let r = g.relu("stem_relu", b);
        let s = g.slice(r).storage;
        let mid = g.slice_of(s, 2, 4);
        let c2 = g.conv2d("mid", mid, Conv2dOut::New(5), 3, 2, 1);
        let n2 = g.batch_norm("mid_norm", c2, true);
        let p = g.pool("pool", Op::GlobalAvgPool, n2, None);
        let logits = g.linear("classifier", p, 4);
        g.cross_entropy(logits);
        g
    };
    let sess = |batch| block_on(Session::new(gpu(), build(batch), 5)).unwrap();
    let (s1, s3) = (sess(1), sess(3));
    randomise_batch_norms(&[&s1, &s3], 3);
    let mut s = [s1, s3];
    let n = Normalization { mean: vec![0.3, -0.2, 0.5], std: vec![0.5, 2.0, 1.5] };
    let normalise = |g: &Graph, x: &[f32]| -> Vec<f32> {
        let [c, _, h, w] = g.shape(g.input.unwrap());
        let plane = (h * w) as usize;
        x.iter()
            .enumerate()
            .map(|(i, &v)| (v - n.mean[(i / plane) % c as usize]) / n.std[(i / plane) % c as usize])
            .collect()
    };
    for fold in [false, true] {
        let options = ExportOptions {
            normalize_input: true,
            fold_input_normalization: fold,
            fold_batch_norm: fold,
            normalization: Some(n.clone()),
            ..Default::default()
        };
        // `Slice` is outside check_structure's DenseNet op list, so check definitions here.
        let state = block_on(s[1].state_dict()).unwrap();
        let bytes = onnx::export(&s[1].graph, None, &state, &options).unwrap();
        let model = ModelProto::parse_from_bytes(&bytes).unwrap();
        let ops: Vec<&str> = model.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains(&"Slice"));
        assert_eq!(ops.contains(&"Sub"), !fold, "an unpadded first conv absorbs the whole normalisation");
        assert_eq!(ops.iter().filter(|&&o| o == "BatchNormalization").count(), if fold { 0 } else { 2 });
        let model = tract_model(&bytes);
        for s in s.iter_mut() {
            let raw = images(&s.graph, 7);
            let nb = s.graph.batch as usize;
            let (want, _) = block_on(s.eval_batch(&normalise(&s.graph, &raw), &vec![0; nb])).unwrap();
            let e = rel_err(&tract_logits(&model, &s.graph, &raw), &want);
            eprintln!("generic graph fold={fold} batch {nb}: relative error {e:.2e}");
            assert!(e < 1e-4, "fold={fold} batch {nb}: {e:.2e}");
        }
    }
}

#[test]
fn metadata_records_config_and_normalisation() {
    let config = cifar_config();
    let graph = config.build(1, MemoryMode::Minimal).unwrap();
    let session = block_on(Session::new(gpu(), graph.clone(), 1)).unwrap();
    let state = block_on(session.state_dict()).unwrap();
    let bytes = onnx::export(&graph, Some(&config), &state, &ExportOptions::default()).unwrap();
    let model = check_structure(&bytes);
    let meta = |k: &str| model.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone()).unwrap();
    let back: DenseNetConfig = serde_json::from_str(&meta(onnx::META_CONFIG)).unwrap();
    assert_eq!(back, config);
    let mean: Vec<f32> = serde_json::from_str(&meta(onnx::META_MEAN)).unwrap();
    let std: Vec<f32> = serde_json::from_str(&meta(onnx::META_STD)).unwrap();
    assert_eq!(Normalization { mean, std }, Normalization::cifar10());
    assert_eq!(meta(onnx::META_NORMALIZATION), "by_caller");
    assert_eq!(model.opset_import[0].version, 17);
    // tract's own shape inference agrees on the output: (batch, classes).
    let typed = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap().into_typed().unwrap();
    let fact = typed.output_fact(0).unwrap();
    assert_eq!(fact.shape.len(), 2);
    assert_eq!(fact.shape[1], 10.to_dim());
    assert!(fact.shape[0].to_i64().is_err(), "batch stays symbolic");
}

#[test]
fn mismatched_weights_and_bad_paths_fail_cleanly() {
    let dir = std::env::temp_dir().join(format!("densegpu-onnx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = cifar_config();
    let graph = config.build(1, MemoryMode::Efficient).unwrap();
    let session = block_on(Session::new(gpu(), graph.clone(), 1)).unwrap();
    let state = block_on(session.state_dict()).unwrap();
    let options = ExportOptions::default();
    let out = dir.join("model.onnx");
    let expect_err = |state: &StateDict, path: &std::path::Path, needle: &str| {
        let err = onnx::export_to_file(path, &graph, Some(&config), state, &options).unwrap_err().to_string();
        assert!(err.contains(needle), "error `{err}` does not mention `{needle}`");
        assert!(!path.exists(), "a failed export left {}", path.display());
    };

    // Weights of another growth rate: same names, different shapes from the first bottleneck on.
    let other = DenseNetConfig { growth_rate: 4, ..config.clone() }.build(1, MemoryMode::Efficient).unwrap();
    let wrong = block_on(block_on(Session::new(gpu(), other, 1)).unwrap().state_dict()).unwrap();
    expect_err(&wrong, &out, "`features.denseblock1.denselayer1.conv1.weight` has shape [16, 12, 1, 1]");
    // A missing tensor, an extra one.
    let mut missing = state.clone();
    missing.retain(|(n, _, _)| n != "features.denseblock2.denselayer1.norm2.running_var");
    expect_err(&missing, &out, "features.denseblock2.denselayer1.norm2.running_var");
    let mut extra = state.clone();
    extra.push(("features.denseblock4.denselayer1.conv1.weight".into(), vec![1], vec![0.0]));
    expect_err(&extra, &out, "features.denseblock4.denselayer1.conv1.weight");

    // A path under a regular file cannot be created.
    let file = dir.join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("model.onnx");
    expect_err(&state, &under_file, &under_file.display().to_string());
    // Renaming onto a directory fails after the temporary file is written: it must go too.
    let as_dir = dir.join("a-directory");
    std::fs::create_dir_all(&as_dir).unwrap();
    let err = onnx::export_to_file(&as_dir, &graph, Some(&config), &state, &options).unwrap_err().to_string();
    assert!(err.contains("a-directory"), "{err}");

    // A good export replaces nothing but its own file and leaves no temporary behind.
    onnx::export_to_file(&out, &graph, Some(&config), &state, &options).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes, onnx::export(&graph, Some(&config), &state, &options).unwrap());
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["a-directory", "model.onnx", "plain-file"]);

    let bad_opset = ExportOptions { opset: 11, ..Default::default() };
    assert!(onnx::export(&graph, None, &state, &bad_opset).unwrap_err().to_string().contains("opset 11"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The path the example takes: a densegpu weights file, loaded with `checkpoint`, exported.
/// The file stays in the target's scratch directory for trying the example by hand.
#[test]
fn weights_file_exports_like_the_session() {
    let config = cifar_config();
    let mut s = sessions(&config, MemoryMode::Efficient);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-test-weights.safetensors");
    densegpu::checkpoint::save_weights(
        &path,
        &config,
        &block_on(densegpu::checkpoint::session_weights(&s[1])).unwrap(),
    )
    .unwrap();
    let weights = densegpu::checkpoint::load_weights(&path).unwrap();
    assert_eq!(weights.config.as_ref(), Some(&config));
    let tensors: StateDict = weights.tensors.into_iter().map(|t| (t.name, t.shape, t.data)).collect();
    let options = ExportOptions { fold_batch_norm: true, ..Default::default() };
    let bytes = onnx::export(&s[1].graph, Some(&config), &tensors, &options).unwrap();
    let (_, from_session) = check_against_tract(&config, &mut s, &options, identity);
    assert!(bytes == from_session, "a weights file round trip changes the export");
}

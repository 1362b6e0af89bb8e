//! Weights files and resume checkpoints: the safetensors format PyTorch reads and writes,
//! strict matching against a model, atomic writes, and bit-exact resumption on the GPU.

use densegpu::checkpoint::{self, NamedTensor, TrainingState, Weights};
use densegpu::data::{BatchLoader, Dataset, LoaderOptions};
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::graph::Graph;
use densegpu::trainer::LrSchedule;
use densegpu::{block_on, Error, Session, SgdHyper, Trainer};
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

mod support;
use support::{gpu, tiny_config};

/// Every model tensor of `graph` with random values, a few of them awkward bit patterns
/// (negative zero, a subnormal, a NaN with a payload) that only a byte-exact format keeps.
fn random_tensors(graph: &Graph, seed: u64) -> Vec<NamedTensor> {
    let mut out = support::random_tensors(graph, seed, -3.0..3.0);
    out[0].data[0] = -0.0;
    out[0].data[1] = f32::from_bits(1);
    out[0].data[2] = f32::from_bits(0x7fc0_1234);
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same_tensors(got: &[NamedTensor], want: &[NamedTensor]) {
    assert_eq!(got.len(), want.len(), "tensor count");
    for w in want {
        let g = got.iter().find(|g| g.name == w.name).unwrap_or_else(|| panic!("`{}` is missing", w.name));
        assert_eq!(g.shape, w.shape, "shape of `{}`", w.name);
        assert_eq!(bits(&g.data), bits(&w.data), "values of `{}`", w.name);
    }
}

/// A raw safetensors file, as PyTorch's `save_file` would write it.
fn raw_file(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, metadata).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A torchvision-style state dict of the graph's tensors: F32, plus an I64 `num_batches_tracked`
/// per batch norm, under names passed through `rename`.
fn torch_file(tensors: &[NamedTensor], count: i64, rename: impl Fn(&str) -> String) -> Vec<u8> {
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|t| (rename(&t.name), Dtype::F32, t.shape.clone(), f32_bytes(&t.data))).collect();
    for t in tensors {
        if let Some(m) = t.name.strip_suffix(".running_mean") {
            raw.push((rename(&format!("{m}.num_batches_tracked")), Dtype::I64, vec![], count.to_le_bytes().to_vec()));
        }
    }
    raw_file(&raw, Some(HashMap::from([("format".to_string(), "pt".to_string())])))
}

fn message(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn graph_of(config: &DenseNetConfig) -> Graph {
    config.build(3, MemoryMode::Efficient).unwrap()
}

#[test]
fn weights_round_trip_bit_exact_with_config_and_metadata() {
    let config = tiny_config(0.2);
    let graph = graph_of(&config);
    let tensors = random_tensors(&graph, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let extra = HashMap::from([("dataset".to_string(), "cifar10".to_string())]);
    checkpoint::save_weights_with_metadata(&path, &config, &tensors, &extra).unwrap();

    let loaded = checkpoint::load_weights(&path).unwrap();
    assert_eq!(loaded.config.as_ref(), Some(&config));
    assert_same_tensors(&loaded.tensors, &tensors);
    assert_eq!(loaded.metadata.get("dataset").map(String::as_str), Some("cifar10"));
    assert_eq!(loaded.metadata.get(checkpoint::META_FORMAT).map(String::as_str), Some(checkpoint::WEIGHTS_FORMAT));
    assert_eq!(loaded.metadata.get("format").map(String::as_str), Some("pt"));
    // No count was given, so every batch norm says 0, as a fresh PyTorch module does.
    assert_eq!(loaded.batches_tracked, Some(0));
    // The matched layout is the graph's, group for group.
    let (params, states) = checkpoint::weights_for_graph(&graph, &loaded).unwrap();
    assert_eq!(params.len(), graph.params.len());
    assert_eq!(states.len(), graph.states.len());
    assert_eq!(bits(&params[0][..3]), bits(&tensors[0].data[..3]));

    // Bytes and files are the same thing.
    let bytes = checkpoint::weights_to_bytes_with_metadata(&config, &tensors, &extra).unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    let from_bytes = checkpoint::weights_from_bytes(&bytes, "dropped.safetensors").unwrap();
    assert_same_tensors(&from_bytes.tensors, &tensors);

    let reserved = HashMap::from([(checkpoint::META_CONFIG.to_string(), "{}".to_string())]);
    assert!(message(checkpoint::weights_to_bytes_with_metadata(&config, &tensors, &reserved)).contains("reserved"));
}

#[test]
fn written_file_is_a_pytorch_state_dict() {
    let config = tiny_config(0.0);
    let graph = graph_of(&config);
    let mut tensors = random_tensors(&graph, 2);
    tensors.push(NamedTensor { name: "features.norm5.num_batches_tracked".into(), shape: vec![], data: vec![1234.0] });
    let bytes = checkpoint::weights_to_bytes(&config, &tensors).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut bn = 0;
    for t in graph.params.iter().chain(&graph.states).flat_map(|g| &g.tensors) {
        let v = file.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{}", t.name);
        assert_eq!(v.shape(), &t.shape[..], "{}", t.name);
        if let Some(m) = t.name.strip_suffix(".running_mean") {
            let c = file.tensor(&format!("{m}.num_batches_tracked")).unwrap();
            assert_eq!((c.dtype(), c.shape()), (Dtype::I64, &[][..]), "{m}");
            let want: i64 = if m == "features.norm5" { 1234 } else { 0 };
            assert_eq!(i64::from_le_bytes(c.data().try_into().unwrap()), want, "{m}");
            bn += 1;
        }
    }
    assert_eq!(file.len(), graph.params.iter().chain(&graph.states).map(|g| g.tensors.len()).sum::<usize>() + bn);
    assert!(bn >= 10);
    // OIHW: a dense layer's 3x3 conv maps 4·k bottleneck channels to k.
    assert_eq!(file.tensor("features.denseblock1.denselayer1.conv2.weight").unwrap().shape(), &[4, 16, 3, 3]);
}

#[test]
fn torchvision_file_with_old_key_spelling_loads() {
    let graph = graph_of(&tiny_config(0.0));
    let tensors = random_tensors(&graph, 3);
    let old = |n: &str| {
        ["norm1", "norm2", "conv1", "conv2"].iter().fold(n.to_string(), |s, k| {
            s.replace(&format!(".{k}."), &format!(".{}.{}.", &k[..k.len() - 1], &k[k.len() - 1..]))
        })
    };
    assert_eq!(old("features.denseblock1.denselayer1.norm1.weight"), "features.denseblock1.denselayer1.norm.1.weight");
    let bytes = torch_file(&tensors, 7, old);
    assert!(SafeTensors::deserialize(&bytes).unwrap().names().iter().any(|n| n.contains(".conv.2.")));
    let w = checkpoint::weights_from_bytes(&bytes, "densenet-old.safetensors").unwrap();
    assert_eq!(w.config, None);
    assert_eq!(w.batches_tracked, Some(7));
    assert_same_tensors(&w.tensors, &tensors);
    checkpoint::weights_for_graph(&graph, &w).unwrap();
    // Transitions keep `norm` / `conv` without a number: nothing to rename there.
    assert_eq!(checkpoint::canonical_name("features.transition1.norm.weight"), "features.transition1.norm.weight");
    assert_eq!(
        checkpoint::canonical_name("features.denseblock2.denselayer10.relu.2.x"),
        "features.denseblock2.denselayer10.relu2.x"
    );

    // Both spellings of one tensor in one file is ambiguous.
    let mut raw = vec![];
    for n in ["features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer1.norm.1.weight"] {
        raw.push((n.to_string(), Dtype::F32, vec![1], f32_bytes(&[1.0])));
    }
    let m = message(checkpoint::weights_from_bytes(&raw_file(&raw, None), "both.safetensors"));
    assert!(m.contains("both.safetensors") && m.contains("norm.1.weight") && m.contains("norm1.weight"), "{m}");
}

#[test]
fn a_state_dict_saved_from_data_parallel_loads_without_its_module_prefix() {
    let config = tiny_config(0.0);
    let graph = graph_of(&config);
    let tensors = random_tensors(&graph, 4);
    // torch.nn.DataParallel's `module.` prefix, on top of the old key spelling.
    let wrapped = |n: &str| format!("module.{}", n.replace(".norm1.", ".norm.1."));
    let bytes = torch_file(&tensors, 5, wrapped);
    assert!(SafeTensors::deserialize(&bytes).unwrap().names().iter().all(|n| n.starts_with("module.")));
    let w = checkpoint::weights_from_bytes(&bytes, "dp.safetensors").unwrap();
    assert_same_tensors(&w.tensors, &tensors);
    assert_eq!(w.batches_tracked, Some(5));
    assert!(w.tensor("classifier.bias").is_some());
    checkpoint::weights_for_graph(&graph, &w).unwrap();

    // A densegpu weights file whose keys were prefixed loads with its config too, so every
    // loader (eval, predict, export_onnx, --init) takes it.
    let ours = checkpoint::weights_to_bytes(&config, &tensors).unwrap();
    let file = SafeTensors::deserialize(&ours).unwrap();
    let (_, header) = SafeTensors::read_metadata(&ours).unwrap();
    let raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (format!("module.{n}"), v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dp.safetensors");
    std::fs::write(&path, raw_file(&raw, header.metadata().clone())).unwrap();
    let w = checkpoint::load_weights(&path).unwrap();
    assert_eq!(w.config.as_ref(), Some(&config));
    assert_same_tensors(&w.tensors, &tensors);

    // Only some keys prefixed: nothing is renamed, and the error says where the prefix comes from.
    // A weight, not a batch count: a lone count without its batch norm fails earlier, for
    // another reason. (`tensors()` comes in no fixed order.)
    let mut raw = raw;
    let k = raw.iter().position(|r| r.0 == "module.classifier.weight").unwrap();
    raw[k].0 = raw[k].0.strip_prefix("module.").unwrap().to_string();
    let w = checkpoint::weights_from_bytes(&raw_file(&raw, header.metadata().clone()), "mixed.safetensors").unwrap();
    let m = message(checkpoint::weights_for_graph(&graph, &w));
    assert!(m.contains("`module.") && m.contains("DataParallel") && m.contains("model.module.state_dict()"), "{m}");
}

#[test]
fn missing_misshaped_and_extra_tensors_are_named() {
    let graph = graph_of(&tiny_config(0.0));
    let tensors = random_tensors(&graph, 4);
    let weights = |t: Vec<NamedTensor>| Weights { tensors: t, ..Default::default() };

    let name = "features.denseblock2.denselayer2.norm2.running_var";
    let missing: Vec<NamedTensor> = tensors.iter().filter(|t| t.name != name).cloned().collect();
    let m = message(checkpoint::weights_for_graph(&graph, &weights(missing)));
    assert!(m.contains(name) && m.contains("lack"), "{m}");

    let name = "features.transition1.conv.weight";
    let mut misshaped = tensors.clone();
    let t = misshaped.iter_mut().find(|t| t.name == name).unwrap();
    let want = t.shape.clone();
    t.shape = vec![want[1], want[0], 1, 1];
    let m = message(checkpoint::weights_for_graph(&graph, &weights(misshaped)));
    assert!(
        m.contains(name)
            && m.contains(&format!("{:?}", want))
            && m.contains(&format!("{:?}", [want[1], want[0], 1, 1])),
        "{m}"
    );

    let mut extra = tensors.clone();
    extra.push(NamedTensor { name: "features.norm0.weight".into(), shape: vec![6], data: vec![1.0; 6] });
    let m = message(checkpoint::weights_for_graph(&graph, &weights(extra)));
    assert!(m.contains("features.norm0.weight"), "{m}");

    // A count for a batch norm the model has is fine; one for a module it lacks is extra.
    let mut counted = tensors.clone();
    counted.push(NamedTensor { name: "features.norm5.num_batches_tracked".into(), shape: vec![], data: vec![3.0] });
    checkpoint::weights_for_graph(&graph, &weights(counted.clone())).unwrap();
    counted.push(NamedTensor { name: "features.norm9.num_batches_tracked".into(), shape: vec![], data: vec![3.0] });
    let m = message(checkpoint::weights_for_graph(&graph, &weights(counted)));
    assert!(m.contains("features.norm9.num_batches_tracked"), "{m}");

    // In a file, a count with no running statistics beside it would otherwise vanish unseen.
    let raw = vec![("features.norm7.num_batches_tracked".to_string(), Dtype::I64, vec![], 5i64.to_le_bytes().to_vec())];
    let m = message(checkpoint::weights_from_bytes(&raw_file(&raw, None), "lonely.safetensors"));
    assert!(m.contains("lonely.safetensors") && m.contains("features.norm7.num_batches_tracked"), "{m}");

    // Another configuration's file: the model's own tensors are what it lacks.
    let other = random_tensors(&graph_of(&DenseNetConfig { growth_rate: 6, ..tiny_config(0.0) }), 4);
    let m = message(checkpoint::weights_for_graph(&graph, &weights(other)));
    assert!(m.contains("shape") || m.contains("lack"), "{m}");
}

#[test]
fn half_bfloat_and_double_inputs_are_converted() {
    // Values exact in every format: the conversion must give them back bit for bit.
    let values = [0.0f32, -0.0, 1.0, -2.5, 0.15625, 65504.0, 6.103_515_6e-5, 5.960_464_5e-8, f32::INFINITY];
    let f16 = [0x0000u16, 0x8000, 0x3c00, 0xc100, 0x3100, 0x7bff, 0x0400, 0x0001, 0x7c00];
    let bf16: Vec<u16> = values.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let raw = vec![
        ("a".to_string(), Dtype::F16, vec![values.len()], f16.iter().flat_map(|h| h.to_le_bytes()).collect()),
        ("b".to_string(), Dtype::BF16, vec![values.len()], bf16.iter().flat_map(|h| h.to_le_bytes()).collect()),
        (
            "c".to_string(),
            Dtype::F64,
            vec![values.len()],
            values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect(),
        ),
    ];
    let w = checkpoint::weights_from_bytes(&raw_file(&raw, None), "half.safetensors").unwrap();
    assert_eq!(w.batches_tracked, None);
    for name in ["a", "b", "c"] {
        let t = w.tensor(name).unwrap();
        // bf16 cannot hold every value: compare against its own truncation.
        let want: Vec<f32> = if name == "b" {
            bf16.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect()
        } else {
            values.to_vec()
        };
        assert_eq!(bits(&t.data), bits(&want), "{name}");
    }

    let raw = vec![("big".to_string(), Dtype::F64, vec![1], 1e300f64.to_le_bytes().to_vec())];
    let m = message(checkpoint::weights_from_bytes(&raw_file(&raw, None), "big.safetensors"));
    assert!(m.contains("big.safetensors") && m.contains("`big`"), "{m}");
    let raw = vec![("ints".to_string(), Dtype::I32, vec![1], 1i32.to_le_bytes().to_vec())];
    let m = message(checkpoint::weights_from_bytes(&raw_file(&raw, None), "ints.safetensors"));
    assert!(m.contains("`ints`") && m.contains("I32"), "{m}");
}

#[test]
fn truncated_and_corrupt_files_name_the_file_and_the_problem() {
    let config = tiny_config(0.0);
    let tensors = random_tensors(&graph_of(&config), 5);
    let dir = tempfile::tempdir().unwrap();
    let good = checkpoint::weights_to_bytes(&config, &tensors).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let check = |bytes: &[u8], what: &str, expect: &str| {
        let path = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let m = message(checkpoint::load_weights(&path));
        assert!(m.contains(&path.display().to_string()), "{what}: the error does not name the file: {m}");
        assert!(m.contains(expect), "{what}: expected `{expect}` in: {m}");
    };
    check(&[], "empty", "too short");
    check(&good[..5], "cut-in-length", "too short");
    check(&good[..8 + header_len / 2], "cut-in-header", "truncated");
    check(&good[..good.len() - 1], "cut-in-data", "truncated");
    check(&good[..8 + header_len + 10], "cut-early-in-data", "truncated");
    let mut corrupt = good.clone();
    corrupt[8] = b'#';
    check(&corrupt, "corrupt-header", "corrupt");
    let mut garbage = good.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    check(&garbage, "bad-length", "safetensors");
    check(b"PK\x03\x04 a zip", "pickle", "pickle");
    let mut bad_config = good.clone();
    let at = bad_config.windows(11).position(|w| w == b"growth_rate").unwrap();
    bad_config[at] = b'X';
    check(&bad_config, "bad-config", "densegpu.config");
    let m = message(checkpoint::load_weights(&dir.path().join("absent.safetensors")));
    assert!(m.contains("absent.safetensors") && m.contains("cannot read: not found"), "{m}");
    let m = message(checkpoint::load_weights(dir.path()));
    assert!(m.contains("cannot read: it is a directory") && !m.contains("permission"), "{m}");
    // A weights file is not a checkpoint.
    let path = dir.path().join("weights.safetensors");
    std::fs::write(&path, &good).unwrap();
    let m = message(checkpoint::load_checkpoint(&path));
    assert!(m.contains("weights.safetensors") && m.contains("not a densegpu resume checkpoint"), "{m}");
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn failed_atomic_write_keeps_the_previous_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt.safetensors");
    checkpoint::write_atomic(&path, |f| f.write_all(b"previous checkpoint")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"previous checkpoint");

    // Fails half-way through writing.
    let r = checkpoint::write_atomic(&path, |f| {
        f.write_all(b"half of a new")?;
        Err(std::io::Error::other("disk full (injected)"))
    });
    let m = message(r);
    assert!(m.contains("run.ckpt.safetensors") && m.contains("disk full (injected)"), "{m}");
    assert_eq!(std::fs::read(&path).unwrap(), b"previous checkpoint");
    assert_eq!(dir_entries(dir.path()), ["run.ckpt.safetensors"]);

    // Panics half-way through writing.
    let r = std::panic::catch_unwind(|| {
        let _ = checkpoint::write_atomic(&path, |f| {
            f.write_all(b"half of a new").unwrap();
            panic!("injected panic");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"previous checkpoint");
    assert_eq!(dir_entries(dir.path()), ["run.ckpt.safetensors"]);

    // A save whose content cannot be encoded writes nothing either.
    let config = tiny_config(0.0);
    let bad = [NamedTensor { name: "x".into(), shape: vec![2, 2], data: vec![1.0; 3] }];
    let m = message(checkpoint::save_weights(&path, &config, &bad));
    assert!(m.contains("run.ckpt.safetensors") && m.contains("`x`"), "{m}");
    assert_eq!(std::fs::read(&path).unwrap(), b"previous checkpoint");

    // And a successful write replaces it whole.
    checkpoint::write_atomic(&path, |f| f.write_all(b"next")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"next");
    assert_eq!(dir_entries(dir.path()), ["run.ckpt.safetensors"]);
}

// ---- On the GPU ----

/// A batch in NCHW and its labels.
fn batch(graph: &Graph, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let [c, n, h, w] = graph.shape(graph.input.unwrap());
    let classes = graph.shape(graph.logits.unwrap())[0];
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let images = (0..c * n * h * w).map(|_| rng.random_range(-2.0..2.0)).collect();
    let labels = (0..n).map(|_| rng.random_range(0..classes)).collect();
    (images, labels)
}

/// An odd learning rate, so that a hyper-parameter that does not come back bit for bit shows.
const SGD: SgdHyper = SgdHyper { lr: 0.0731, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

struct Snapshot {
    params: Vec<Vec<f32>>,
    momentum: Vec<Vec<f32>>,
    states: Vec<Vec<f32>>,
}

fn snapshot(s: &Session) -> Snapshot {
    Snapshot {
        params: block_on(s.parameters()).unwrap(),
        momentum: block_on(s.momentum()).unwrap(),
        states: block_on(s.states()).unwrap(),
    }
}

fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| bits(x) == bits(y))
}

#[test]
fn weights_through_a_session_round_trip() {
    let config = tiny_config(0.0);
    let graph = graph_of(&config);
    let tensors = random_tensors(&graph, 6);
    let mut session = block_on(Session::new(gpu(), graph.clone(), 1)).unwrap();
    let bytes = checkpoint::weights_to_bytes(&config, &tensors).unwrap();
    let mut weights = checkpoint::weights_from_bytes(&bytes, "w.safetensors").unwrap();
    weights.batches_tracked = Some(41);
    checkpoint::apply_weights(&session, &weights).unwrap();
    session.batches_tracked = weights.batches_tracked.unwrap();
    let out = block_on(checkpoint::session_weights(&session)).unwrap();
    let (counts, model): (Vec<NamedTensor>, Vec<NamedTensor>) =
        out.into_iter().partition(|t| t.name.ends_with(".num_batches_tracked"));
    assert_same_tensors(&model, &tensors);
    assert!(!counts.is_empty() && counts.iter().all(|t| t.shape.is_empty() && t.data == [41.0]));

    // Saved and read back, the count is the I64 PyTorch writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let all: Vec<NamedTensor> = model.iter().chain(&counts).cloned().collect();
    checkpoint::save_weights(&path, &config, &all).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let c = file.tensor("features.norm5.num_batches_tracked").unwrap();
    assert_eq!((c.dtype(), i64::from_le_bytes(c.data().try_into().unwrap())), (Dtype::I64, 41));
    assert_eq!(checkpoint::load_weights(&path).unwrap().batches_tracked, Some(41));

    // A rejected file leaves the session as it was.
    let before = snapshot(&session);
    let mut wrong = weights.clone();
    wrong.tensors.pop();
    assert!(checkpoint::apply_weights(&session, &wrong).is_err());
    assert!(same(&snapshot(&session).params, &before.params));
}

#[test]
fn resuming_from_a_checkpoint_is_bit_exact() {
    // Dropout on, so the restored step counter decides the masks.
    let config = tiny_config(0.25);
    let graph = config.build(3, MemoryMode::Efficient).unwrap();
    let batches: Vec<_> = (0..4).map(|i| batch(&graph, 300 + i)).collect();

    let mut straight = block_on(Session::new(gpu(), graph.clone(), 7)).unwrap();
    for (images, labels) in &batches {
        block_on(straight.train_step(images, labels, &SGD)).unwrap();
    }
    let want = snapshot(&straight);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resume.safetensors");
    {
        let mut first = block_on(Session::new(gpu(), graph.clone(), 7)).unwrap();
        for (images, labels) in &batches[..2] {
            block_on(first.train_step(images, labels, &SGD)).unwrap();
        }
        let state = TrainingState {
            step: 999, // the session's own counter is what counts
            epoch: 3,
            batch_in_epoch: 2,
            rng_state: vec![u64::MAX, 0x0123_4567_89ab_cdef, 0],
            best_valid_accuracy: Some(0.8125),
            sgd: SGD,
            extra: [("schedule".to_string(), "cosine".to_string())].into(),
            ..Default::default()
        };
        block_on(checkpoint::save_checkpoint(&path, &first, &config, &state)).unwrap();
    }
    assert_eq!(dir_entries(dir.path()), ["resume.safetensors"]);

    let (weights, state, momentum) = checkpoint::load_checkpoint(&path).unwrap();
    assert_eq!(weights.config.as_ref(), Some(&config));
    assert_eq!((state.step, state.batches_tracked, state.epoch, state.batch_in_epoch), (2, 2, 3, 2));
    assert_eq!(state.rng_state, [u64::MAX, 0x0123_4567_89ab_cdef, 0]);
    assert_eq!(state.best_valid_accuracy, Some(0.8125));
    assert_eq!(state.extra.get("schedule").map(String::as_str), Some("cosine"));
    assert_eq!(state.sgd.lr.to_bits(), SGD.lr.to_bits());
    assert_eq!(state.sgd.weight_decay.to_bits(), SGD.weight_decay.to_bits());
    assert_eq!((state.sgd.momentum, state.sgd.nesterov), (SGD.momentum, SGD.nesterov));
    assert_eq!(weights.batches_tracked, Some(2));
    assert_eq!(momentum.len(), graph.params.iter().map(|g| g.tensors.len()).sum::<usize>());
    // The model tensors of a checkpoint also read as plain weights.
    assert_same_tensors(&checkpoint::load_weights(&path).unwrap().tensors, &weights.tensors);

    // A different seed: everything must come from the file.
    let mut resumed = block_on(Session::new(gpu(), graph.clone(), 99)).unwrap();
    block_on(checkpoint::apply_checkpoint(&mut resumed, &weights, &state, &momentum)).unwrap();
    assert_eq!((resumed.step, resumed.batches_tracked), (2, 2));
    for (images, labels) in &batches[2..] {
        block_on(resumed.train_step(images, labels, &state.sgd)).unwrap();
    }
    let got = snapshot(&resumed);
    assert!(same(&got.params, &want.params), "parameters differ from the uninterrupted run");
    assert!(same(&got.momentum, &want.momentum), "momentum differs from the uninterrupted run");
    assert!(same(&got.states, &want.states), "running statistics differ from the uninterrupted run");
    assert_eq!((resumed.step, resumed.batches_tracked), (straight.step, straight.batches_tracked));

    // The comparison can fail: restoring all but the step counter redraws other dropout masks.
    let mut wrong_step = block_on(Session::new(gpu(), graph.clone(), 99)).unwrap();
    let forgetful = TrainingState { step: 0, ..state.clone() };
    block_on(checkpoint::apply_checkpoint(&mut wrong_step, &weights, &forgetful, &momentum)).unwrap();
    for (images, labels) in &batches[2..] {
        block_on(wrong_step.train_step(images, labels, &state.sgd)).unwrap();
    }
    assert!(!same(&snapshot(&wrong_step).params, &want.params), "the step counter made no difference");

    // Momentum for a tensor the model lacks, or none for one it has, is refused.
    let mut short = momentum.clone();
    let dropped = short.pop().unwrap().name;
    let m = message(block_on(checkpoint::apply_checkpoint(&mut resumed, &weights, &state, &short)));
    assert!(m.contains(&dropped), "{m}");
}

/// A dataset of `len` random 8x8 images of the tiny net's 5 classes.
fn tiny_dataset(len: usize, seed: u64) -> Dataset {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let mut set = Dataset::empty((0..5).map(|c| format!("class{c}")).collect(), 8, 8);
    set.images = (0..len * 3 * 8 * 8).map(|_| rng.random::<u8>()).collect();
    set.labels = (0..len).map(|_| rng.random_range(0..5)).collect();
    set
}

/// A trainer of the tiny net on 7 images in batches of 3 (2 batches per epoch, the 7th image
/// left out), over 3 epochs with a learning-rate drop half way.
fn tiny_trainer(seed: u64, sgd: SgdHyper) -> Trainer {
    let graph = tiny_config(0.25).build(3, MemoryMode::Efficient).unwrap();
    let session = block_on(Session::new(gpu(), graph, seed)).unwrap();
    let options = LoaderOptions { prefetch: 1, ..LoaderOptions::train(3, 5) };
    let loader = BatchLoader::new(tiny_dataset(7, 1), options).unwrap();
    Trainer::new(session, loader, LrSchedule::step_decay(sgd, &[0.5], 6)).unwrap().with_epochs(3)
}

const TRAINER_SGD: SgdHyper = SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: true };

#[test]
fn a_trainer_resumed_mid_epoch_goes_on_as_if_it_never_stopped() {
    let mut straight = tiny_trainer(7, TRAINER_SGD);
    assert_eq!((straight.batches_per_epoch(), straight.total_steps()), (2, Some(6)));
    let mut want = Vec::new();
    while !straight.finished() {
        want.push(block_on(straight.step()).unwrap());
    }
    assert_eq!(want.len(), 6);
    let cursor: Vec<(u64, u64, usize, bool)> = want.iter().map(|r| (r.step, r.epoch, r.batch, r.epoch_ended)).collect();
    assert_eq!(
        cursor,
        [(1, 0, 0, false), (2, 0, 1, true), (3, 1, 0, false), (4, 1, 1, true), (5, 2, 0, false), (6, 2, 1, true)]
    );
    assert_eq!(want[1].sums.seen, 6);
    assert_eq!(want[1].sums.loss_sum, 3.0 * want[0].loss as f64 + 3.0 * want[1].loss as f64);
    assert!(block_on(straight.step()).is_err(), "a finished run refuses another step");

    // Stopped by --max-steps in the middle of epoch 2, saved, and resumed in a fresh session.
    let mut first = tiny_trainer(7, TRAINER_SGD).with_max_steps(Some(3));
    let mut got = Vec::new();
    while !first.finished() {
        got.push(block_on(first.step()).unwrap());
    }
    assert_eq!((first.epoch(), first.batch_in_epoch(), first.sums().seen), (1, 1, 3));
    let mut state = TrainingState::default();
    first.record(&mut state);
    assert_eq!((state.step, state.epoch, state.batch_in_epoch), (3, 1, 1));
    assert_eq!(state.sgd.lr, TRAINER_SGD.lr * 0.1, "the next step is past the milestone");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let config = tiny_config(0.25);
    block_on(checkpoint::save_checkpoint(&path, first.session(), &config, &state)).unwrap();

    let mut resumed = tiny_trainer(99, TRAINER_SGD);
    let (weights, saved, momentum) = checkpoint::load_checkpoint(&path).unwrap();
    block_on(checkpoint::apply_checkpoint(resumed.session_mut(), &weights, &saved, &momentum)).unwrap();
    assert!(resumed.restore(&saved).unwrap(), "the running sums come back");
    assert_eq!(resumed.sums(), first.sums());
    while !resumed.finished() {
        got.push(block_on(resumed.step()).unwrap());
    }
    // Everything but the time spent waiting for data, which is measured.
    let untimed = |reports: &[densegpu::trainer::StepReport]| -> Vec<densegpu::trainer::StepReport> {
        reports.iter().map(|r| densegpu::trainer::StepReport { data_wait: Default::default(), ..*r }).collect()
    };
    assert_eq!(untimed(&got), untimed(&want), "the same batches, learning rates, losses and epoch sums");

    // Without its sums, a mid-epoch checkpoint still resumes, and says so; a batch past the end
    // of an epoch (another batch size) is refused.
    let mut forgetful = saved.clone();
    forgetful.extra.clear();
    assert!(!tiny_trainer(1, TRAINER_SGD).restore(&forgetful).unwrap());
    let past = TrainingState { batch_in_epoch: 2, ..saved.clone() };
    let m = tiny_trainer(1, TRAINER_SGD).restore(&past).unwrap_err().to_string();
    assert!(m.contains("an epoch of this data has 2 batches"), "{m}");
}

#[test]
fn a_trainer_stops_at_a_non_finite_loss_naming_step_and_epoch() {
    let mut trainer = tiny_trainer(3, SgdHyper { lr: 1e30, ..TRAINER_SGD });
    let err = loop {
        match block_on(trainer.step()) {
            Ok(r) => assert!(r.step < 6, "the loss stayed finite at lr 1e30"),
            Err(e) => break e,
        }
    };
    match &err {
        Error::Diverged { loss, cause, step, epoch } => {
            // At lr 1e30 the first update overflows a weight while its gradient is finite; the
            // loss is still finite in that step, so the cause must name the tensor.
            assert!(!loss.is_finite() || cause.is_some(), "{err}");
            assert_eq!(*step, trainer.session().step);
            assert!(err.to_string().contains(&format!("at step {step} (epoch {})", epoch + 1)), "{err}");
        }
        other => panic!("expected a non-finite loss, got {other:?}"),
    }
}

//! ONNX export of a [`Graph`] in eval mode, walking the same graph the executor runs.
//!
//! The exported model takes a float32 NCHW tensor named `input` with a dynamic batch
//! dimension and returns `logits` (N, classes). Only standard operators appear: Conv,
//! BatchNormalization (inference form), Relu, Concat, AveragePool, MaxPool,
//! GlobalAveragePool, Flatten and Gemm, plus Sub/Div when the model normalises its own input
//! and Slice for a graph that reads part of what one node wrote (DenseNets never do).
//!
//! Eval semantics: batch norm uses running statistics, dropout and copies are identities and
//! the loss node is dropped. The graph's channel-range tensors become ONNX values: a read of
//! a storage range written by several producers (a dense block's prefix) becomes one Concat
//! of their outputs in channel order, emitted once per distinct prefix.
//!
//! Initializers keep the torchvision state-dict names (`features.conv0.weight`, ...). With
//! [`ExportOptions::fold_batch_norm`], a batch norm whose input is a conv output that nothing
//! else reads is folded into that conv: the conv keeps its weight's name (holding the folded
//! values, as its doc string says) and gains a bias `{conv}.bias`.

use crate::densenet::DenseNetConfig;
use crate::error::{Error, Result};
use crate::graph::BN_EPS;
use crate::graph::{Graph, Node, Op, ParamGroup, ParamId, SliceId};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Name of the model's input value.
pub const INPUT_NAME: &str = "input";
/// Name of the model's output value.
pub const OUTPUT_NAME: &str = "logits";
/// Symbolic name of the dynamic batch dimension.
pub const BATCH_DIM: &str = "batch";
/// Metadata keys written into `ModelProto.metadata_props`.
pub const META_CONFIG: &str = "densegpu.config";
pub const META_MEAN: &str = "densegpu.input.mean";
pub const META_STD: &str = "densegpu.input.std";
/// `"in_model"` when the model normalises raw pixels itself, `"by_caller"` when its input
/// must already be normalised with the recorded mean and std.
pub const META_NORMALIZATION: &str = "densegpu.input.normalization";

/// Oldest and newest opsets this exporter knows to be valid for the operators it emits.
pub const MIN_OPSET: i64 = 17;
pub const MAX_OPSET: i64 = 21;

/// Per-channel input normalisation `(x - mean) / std`, applied to pixels in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn cifar10() -> Self {
        Normalization { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2470, 0.2435, 0.2616] }
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Self::cifar10()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// ONNX opset, [`MIN_OPSET`]..=[`MAX_OPSET`].
    pub opset: i64,
    /// Fold each batch norm into the conv before it where that is exact (the conv's output
    /// feeds only that batch norm). Off by default: the unfolded model mirrors the graph.
    pub fold_batch_norm: bool,
    /// The normalisation the model was trained with; recorded in the metadata. With
    /// `normalize_input` it also becomes part of the model.
    pub normalization: Option<Normalization>,
    /// Make the model take raw pixels and normalise them itself with `normalization`.
    /// Off by default: like [`crate::Session::eval_batch`], the model takes normalised input.
    pub normalize_input: bool,
    /// With `normalize_input`, fold the normalisation into the convs that read the input
    /// instead of emitting Sub and Div. The division always folds into the weights (it
    /// commutes with zero padding); the mean folds into a bias only for unpadded convs,
    /// since a padded conv's border sees zeros in normalised space, i.e. raw pixels equal to
    /// the mean, which a bias cannot express. Padded convs (both DenseNet stems) therefore
    /// keep one Sub node before them.
    pub fold_input_normalization: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: MIN_OPSET,
            fold_batch_norm: false,
            normalization: Some(Normalization::cifar10()),
            normalize_input: false,
            fold_input_normalization: false,
        }
    }
}

/// Serialises `graph` with the weights in `tensors` (a state dict including running
/// statistics, as [`crate::Session::state_dict`] returns it) as an ONNX model.
pub fn export(
    graph: &Graph,
    config: Option<&DenseNetConfig>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    options: &ExportOptions,
) -> Result<Vec<u8>> {
    let model = build_model(graph, config, tensors, options)?;
    // A single protobuf message cannot exceed 2 GiB; larger models would need external data.
    let size = model.compute_size();
    if size >= 1 << 31 {
        return Err(Error::TooLarge(format!(
            "the ONNX model would be {size} bytes, over protobuf's 2 GiB limit for one file"
        )));
    }
    model.write_to_bytes().map_err(|e| Error::Data(format!("cannot serialise the ONNX model: {e}")))
}

/// [`export`] to a file, atomically: the model goes to a temporary file in the same
/// directory that is renamed over `path` only once complete, so a failed export leaves
/// neither a partial file nor a changed old one.
pub fn export_to_file(
    path: impl AsRef<Path>,
    graph: &Graph,
    config: Option<&DenseNetConfig>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    options: &ExportOptions,
) -> Result<()> {
    let bytes = export(graph, config, tensors, options)?;
    // All or nothing: a failed export leaves no partial model behind.
    crate::files::write_atomic(path.as_ref(), |file| std::io::Write::write_all(file, &bytes))
}

/// IR version matching an opset (the ONNX versioning table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

fn build_model(
    graph: &Graph,
    config: Option<&DenseNetConfig>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    options: &ExportOptions,
) -> Result<ModelProto> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&options.opset) {
        return Err(Error::Config(format!(
            "ONNX opset {} is not supported: use {MIN_OPSET} to {MAX_OPSET}",
            options.opset
        )));
    }
    graph.validate()?;
    let weights = check_weights(graph, tensors)?;
    let mut b = Builder::new(graph, weights, options)?;
    b.emit_input()?;
    for (i, node) in graph.nodes.iter().enumerate() {
        b.emit_node(i, node)?;
    }
    let logits = b.emit_output()?;

    let input_shape = graph.shape(graph.input.expect("validated"));
    let mut g = GraphProto::new();
    g.name = "densegpu".into();
    g.node = b.nodes;
    g.initializer = b.initializers;
    g.input = vec![value_info(INPUT_NAME, &[None, Some(input_shape[0]), Some(input_shape[2]), Some(input_shape[3])])];
    g.output = vec![value_info(&logits, &[None, Some(graph.shape(graph.logits.expect("validated"))[0])])];

    let mut model = ModelProto::new();
    model.ir_version = ir_version(options.opset);
    model.opset_import = vec![OperatorSetIdProto { version: options.opset, ..Default::default() }];
    model.producer_name = "densegpu".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = "DenseNet exported by densegpu (eval mode)".into();
    model.graph = Some(g).into();
    let mut meta = |key: &str, value: String| {
        model.metadata_props.push(StringStringEntryProto { key: key.into(), value, ..Default::default() })
    };
    if let Some(config) = config {
        let json =
            serde_json::to_string(config).map_err(|e| Error::Config(format!("cannot encode the config: {e}")))?;
        meta(META_CONFIG, json);
    }
    if let Some(n) = &options.normalization {
        let json = |v: &[f32]| serde_json::to_string(v).expect("floats serialise");
        meta(META_MEAN, json(&n.mean));
        meta(META_STD, json(&n.std));
        meta(META_NORMALIZATION, if options.normalize_input { "in_model" } else { "by_caller" }.into());
    }
    Ok(model)
}

/// The state dict by name, after checking it holds exactly the graph's persistent tensors
/// with the graph's shapes.
fn check_weights<'a>(
    graph: &Graph,
    tensors: &'a [(String, Vec<usize>, Vec<f32>)],
) -> Result<HashMap<&'a str, &'a [f32]>> {
    let mismatch = |m: String| Err(Error::Shape(format!("the weights do not match the model: {m}")));
    let mut by_name: HashMap<&str, (&[usize], &[f32])> = HashMap::new();
    for (name, shape, values) in tensors {
        if values.len() != shape.iter().product::<usize>() {
            return mismatch(format!("`{name}` has {} values but shape {shape:?}", values.len()));
        }
        if by_name.insert(name, (shape, values)).is_some() {
            return mismatch(format!("`{name}` appears twice"));
        }
    }
    let mut expected = HashSet::new();
    for t in graph.params.iter().chain(&graph.states).flat_map(|g| &g.tensors) {
        expected.insert(t.name.as_str());
        match by_name.get(t.name.as_str()) {
            None => return mismatch(format!("`{}` (shape {:?}) is missing", t.name, t.shape)),
            Some((shape, _)) if *shape != t.shape.as_slice() => {
                return mismatch(format!("`{}` has shape {shape:?}, the model needs {:?}", t.name, t.shape))
            }
            Some(_) => {}
        }
    }
    // PyTorch state dicts carry a step counter per batch norm that inference does not use.
    let mut extra: Vec<&str> =
        by_name.keys().copied().filter(|n| !expected.contains(n) && !n.ends_with("num_batches_tracked")).collect();
    extra.sort_unstable();
    if let Some(first) = extra.first() {
        return mismatch(format!("`{first}` is not part of the model ({} unexpected tensors)", extra.len()));
    }
    Ok(by_name.into_iter().map(|(n, (_, v))| (n, v)).collect())
}

fn value_info(name: &str, dims: &[Option<u32>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam(BATCH_DIM.into()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }).into(),
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INTS.into(), ints: ints.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INT.into(), i, ..Default::default() }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::FLOAT.into(), f, ..Default::default() }
}

/// One contiguous channel range of a storage, as last written by a node, and the ONNX value
/// holding it.
#[derive(Clone, Debug)]
struct Write {
    c0: u32,
    c: u32,
    value: String,
}

/// How the model's input normalisation is realised.
#[derive(Clone, Debug, PartialEq)]
enum InputNorm {
    None,
    /// Sub and Div nodes.
    Explicit,
    /// Sub node; 1/std folded into the weights of every conv reading the input.
    FoldScale,
    /// Everything folded into the weights and biases of the (unpadded) convs reading the input.
    FoldAll,
}

struct Builder<'a> {
    graph: &'a Graph,
    weights: HashMap<&'a str, &'a [f32]>,
    options: &'a ExportOptions,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    initializer_names: HashSet<String>,
    value_names: HashSet<String>,
    /// Per storage, its current contents by channel range, sorted by `c0`.
    writes: Vec<Vec<Write>>,
    /// Concat and Slice values already emitted, by their parts.
    derived: HashMap<Vec<String>, String>,
    /// Values that are (N, C) rather than (N, C, H, W).
    flat: HashSet<String>,
    /// Conv node index → the batch norm node folded into it.
    folded_into: HashMap<usize, usize>,
    /// Batch norm node index → the value the folded conv produced in its place.
    folded_output: HashMap<usize, String>,
    input_norm: InputNorm,
}

impl<'a> Builder<'a> {
    fn new(graph: &'a Graph, weights: HashMap<&'a str, &'a [f32]>, options: &'a ExportOptions) -> Result<Self> {
        let mut b = Builder {
            graph,
            weights,
            options,
            nodes: Vec::new(),
            initializers: Vec::new(),
            initializer_names: HashSet::new(),
            value_names: [INPUT_NAME, OUTPUT_NAME].into_iter().map(String::from).collect(),
            writes: vec![Vec::new(); graph.storages.len()],
            derived: HashMap::new(),
            flat: HashSet::new(),
            folded_into: HashMap::new(),
            folded_output: HashMap::new(),
            input_norm: InputNorm::None,
        };
        if options.fold_batch_norm {
            b.folded_into = foldable_batch_norms(graph);
        }
        b.input_norm = b.plan_input_normalization()?;
        Ok(b)
    }

    /// Nodes reading any channel of the input storage.
    fn input_readers(&self) -> Vec<usize> {
        let input = self.graph.slice(self.graph.input.expect("validated"));
        self.graph.uses().reader_nodes(input.storage).into_iter().map(|n| n.0).collect()
    }

    fn plan_input_normalization(&self) -> Result<InputNorm> {
        let o = self.options;
        if !o.normalize_input {
            return Ok(InputNorm::None);
        }
        let Some(n) = &o.normalization else {
            return Err(Error::Config("normalize_input needs the normalization constants".into()));
        };
        let c = self.graph.shape(self.graph.input.expect("validated"))[0] as usize;
        if n.mean.len() != c || n.std.len() != c {
            return Err(Error::Config(format!(
                "the normalization has {} means and {} stds for an input of {c} channels",
                n.mean.len(),
                n.std.len()
            )));
        }
        if n.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) || n.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::Config(format!("normalization constants must be finite with std > 0: {n:?}")));
        }
        if !o.fold_input_normalization {
            return Ok(InputNorm::Explicit);
        }
        let readers = self.input_readers();
        let pads: Option<Vec<u32>> = readers
            .iter()
            .map(|&i| match self.graph.nodes[i].op {
                Op::Conv2d { weight, pad, .. } if self.param_users(weight) == 1 => Some(pad),
                _ => None,
            })
            .collect();
        Ok(match pads {
            // Only convs read the input, so the normalisation can move into their weights.
            Some(p) if !p.is_empty() && p.iter().all(|&p| p == 0) => InputNorm::FoldAll,
            Some(p) if !p.is_empty() => InputNorm::FoldScale,
            _ => InputNorm::Explicit,
        })
    }

    fn param_users(&self, p: ParamId) -> usize {
        conv_weight_users(self.graph, p)
    }

    fn fresh_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.value_names.contains(&name) || self.initializer_names.contains(&name) {
            name = format!("{base}.{i}");
            i += 1;
        }
        self.value_names.insert(name.clone());
        name
    }

    fn add_initializer(&mut self, name: &str, dims: &[usize], values: &[f32], doc: &str) -> Result<()> {
        if !self.initializer_names.insert(name.to_string()) {
            return Err(Error::Config(format!("ONNX export: initializer `{name}` would be written twice")));
        }
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            doc_string: doc.into(),
            ..Default::default()
        });
        Ok(())
    }

    fn add_int_initializer(&mut self, base: &str, values: &[i64]) -> String {
        let name = self.fresh_name(base);
        self.initializer_names.insert(name.clone());
        self.value_names.remove(&name);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: DataType::INT64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A graph parameter as an initializer under its own name (once, however often used).
    fn param_initializer(&mut self, name: &str, dims: &[usize]) -> Result<String> {
        if !self.initializer_names.contains(name) {
            let values = self.weights[name];
            self.add_initializer(name, dims, values, "")?;
        }
        Ok(name.to_string())
    }

    fn push_node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            op_type: op_type.into(),
            name: name.into(),
            input: inputs,
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
    }

    /// Records that `value` now holds tensor `t`'s channels.
    fn write(&mut self, t: SliceId, value: String) -> Result<()> {
        let ten = *self.graph.slice(t);
        let (lo, hi) = (ten.c0, ten.c0 + ten.c);
        let list = &mut self.writes[ten.storage.0];
        if let Some(w) = list.iter().find(|w| w.c0 < hi && lo < w.c0 + w.c && (w.c0 < lo || w.c0 + w.c > hi)) {
            return Err(Error::Config(format!(
                "ONNX export: a node writes channels {lo}..{hi} of `{}`, partly overwriting the range {}..{} that \
                 `{}` wrote; such graphs are not supported",
                self.graph.storages[ten.storage.0].name,
                w.c0,
                w.c0 + w.c,
                w.value
            )));
        }
        list.retain(|w| w.c0 + w.c <= lo || w.c0 >= hi);
        let at = list.partition_point(|w| w.c0 < lo);
        list.insert(at, Write { c0: lo, c: ten.c, value });
        Ok(())
    }

    /// The ONNX value holding tensor `t`: a producer's output, or a Concat (and, for a read
    /// of part of one write, Slice) of producers' outputs, emitted once.
    fn read(&mut self, t: SliceId) -> Result<String> {
        let ten = *self.graph.slice(t);
        let storage_name = self.graph.storages[ten.storage.0].name.clone();
        let (lo, hi) = (ten.c0, ten.c0 + ten.c);
        let mut parts = Vec::new();
        let mut cursor = lo;
        let overlapping: Vec<Write> =
            self.writes[ten.storage.0].iter().filter(|w| w.c0 < hi && lo < w.c0 + w.c).cloned().collect();
        for w in overlapping {
            if w.c0 > cursor {
                break;
            }
            let (a, b) = (cursor.max(w.c0), hi.min(w.c0 + w.c));
            if (a, b) == (w.c0, w.c0 + w.c) {
                parts.push(w.value.clone());
            } else {
                parts.push(self.slice(&w.value, (a - w.c0) as i64, (b - w.c0) as i64));
            }
            cursor = b;
        }
        if cursor < hi {
            return Err(Error::Config(format!(
                "ONNX export: channels {cursor}..{hi} of `{storage_name}` are read before any node writes them"
            )));
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        if let Some(v) = self.derived.get(&parts) {
            return Ok(v.clone());
        }
        let name = self.fresh_name(&format!("{storage_name}[{lo}:{hi}]"));
        self.push_node("Concat", &name, parts.clone(), &name, vec![attr_int("axis", 1)]);
        self.derived.insert(parts, name.clone());
        Ok(name)
    }

    fn slice(&mut self, value: &str, start: i64, end: i64) -> String {
        let key = vec![value.to_string(), format!("{start}:{end}")];
        if let Some(v) = self.derived.get(&key) {
            return v.clone();
        }
        let name = self.fresh_name(&format!("{value}[{start}:{end}]"));
        let starts = self.add_int_initializer(&format!("{name}.starts"), &[start]);
        let ends = self.add_int_initializer(&format!("{name}.ends"), &[end]);
        let axes = self.add_int_initializer(&format!("{name}.axes"), &[1]);
        self.push_node("Slice", &name, vec![value.into(), starts, ends, axes], &name, vec![]);
        self.derived.insert(key, name.clone());
        name
    }

    fn normalization(&self) -> &Normalization {
        self.options.normalization.as_ref().expect("checked in plan_input_normalization")
    }

    fn emit_input(&mut self) -> Result<()> {
        let input = self.graph.input.expect("validated");
        let c = self.graph.shape(input)[0] as usize;
        let value = match self.input_norm {
            InputNorm::None | InputNorm::FoldAll => INPUT_NAME.to_string(),
            InputNorm::Explicit | InputNorm::FoldScale => {
                let n = self.normalization().clone();
                self.add_initializer("normalization.mean", &[1, c, 1, 1], &n.mean, "per-channel input mean")?;
                let centered = self.fresh_name("input.centered");
                self.push_node(
                    "Sub",
                    "normalization.sub",
                    vec![INPUT_NAME.into(), "normalization.mean".into()],
                    &centered,
                    vec![],
                );
                if self.input_norm == InputNorm::FoldScale {
                    centered
                } else {
                    self.add_initializer("normalization.std", &[1, c, 1, 1], &n.std, "per-channel input std")?;
                    let normalized = self.fresh_name("input.normalized");
                    self.push_node(
                        "Div",
                        "normalization.div",
                        vec![centered, "normalization.std".into()],
                        &normalized,
                        vec![],
                    );
                    normalized
                }
            }
        };
        self.write(input, value)
    }

    /// The value name for node `node`'s output: `logits` for the graph's logits, else the
    /// node's name.
    fn output_name(&mut self, node: &Node) -> String {
        if Some(node.output) == self.graph.logits {
            OUTPUT_NAME.to_string()
        } else {
            self.fresh_name(&node.name)
        }
    }

    fn emit_node(&mut self, index: usize, node: &Node) -> Result<()> {
        let g = self.graph;
        match node.op {
            Op::SoftmaxCrossEntropy => Ok(()),
            Op::Dropout { .. } | Op::Copy => {
                let x = self.read(node.inputs[0])?;
                self.write(node.output, x)
            }
            Op::Conv2d { weight, kernel, stride, pad } => self.emit_conv(index, node, weight, kernel, stride, pad),
            Op::BatchNorm { affine, running, relu, .. } => {
                if let Some(v) = self.folded_output.remove(&index) {
                    return self.write(node.output, v);
                }
                let x = self.read(node.inputs[0])?;
                let names: Vec<(String, Vec<usize>)> = g.params[affine.0]
                    .tensors
                    .iter()
                    .chain(&g.states[running.0].tensors)
                    .map(|t| (t.name.clone(), t.shape.clone()))
                    .collect();
                let mut inputs = vec![x];
                for (name, shape) in &names {
                    inputs.push(self.param_initializer(name, shape)?);
                }
                let out = self.output_name(node);
                let bn_out = if relu { self.fresh_name(&format!("{}.bn", node.name)) } else { out.clone() };
                self.push_node("BatchNormalization", &node.name, inputs, &bn_out, vec![attr_float("epsilon", BN_EPS)]);
                if relu {
                    self.push_node("Relu", &format!("{}.relu", node.name), vec![bn_out], &out, vec![]);
                }
                self.write(node.output, out)
            }
            Op::Relu => {
                let x = self.read(node.inputs[0])?;
                let out = self.output_name(node);
                self.push_node("Relu", &node.name, vec![x], &out, vec![]);
                self.write(node.output, out)
            }
            Op::AvgPool2x2 | Op::MaxPool3x3s2p1 | Op::GlobalAvgPool => {
                let x = self.read(node.inputs[0])?;
                self.require_spatial(&x, node)?;
                let out = self.output_name(node);
                let (op_type, attrs) = match node.op {
                    Op::AvgPool2x2 => {
                        ("AveragePool", vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])])
                    }
                    Op::MaxPool3x3s2p1 => (
                        "MaxPool",
                        vec![
                            attr_ints("kernel_shape", &[3, 3]),
                            attr_ints("strides", &[2, 2]),
                            attr_ints("pads", &[1, 1, 1, 1]),
                        ],
                    ),
                    _ => ("GlobalAveragePool", vec![]),
                };
                self.push_node(op_type, &node.name, vec![x], &out, attrs);
                self.write(node.output, out)
            }
            Op::Linear { params } => {
                let [_, _, h, w] = g.shape(node.inputs[0]);
                if (h, w) != (1, 1) {
                    return Err(Error::Config(format!(
                        "ONNX export: linear layer `{}` reads a {h}x{w} input; only 1x1 is defined",
                        node.name
                    )));
                }
                let x = self.read(node.inputs[0])?;
                let x = self.flatten(&x, &node.name);
                let group = &g.params[params.0].tensors;
                let (w_name, w_shape) = (group[0].name.clone(), group[0].shape.clone());
                let (b_name, b_shape) = (group[1].name.clone(), group[1].shape.clone());
                let inputs =
                    vec![x, self.param_initializer(&w_name, &w_shape)?, self.param_initializer(&b_name, &b_shape)?];
                let out = self.output_name(node);
                self.push_node("Gemm", &node.name, inputs, &out, vec![attr_int("transB", 1)]);
                self.flat.insert(out.clone());
                self.write(node.output, out)
            }
        }
    }

    fn require_spatial(&self, value: &str, node: &Node) -> Result<()> {
        if self.flat.contains(value) {
            return Err(Error::Config(format!(
                "ONNX export: `{}` needs a spatial input but reads a flattened one",
                node.name
            )));
        }
        Ok(())
    }

    /// `value` as (N, C): a Flatten unless it already is.
    fn flatten(&mut self, value: &str, node_name: &str) -> String {
        if self.flat.contains(value) {
            return value.to_string();
        }
        let key = vec![value.to_string(), "flatten".to_string()];
        if let Some(v) = self.derived.get(&key) {
            return v.clone();
        }
        let out = self.fresh_name(&format!("{node_name}.flatten"));
        self.push_node("Flatten", &out, vec![value.into()], &out, vec![attr_int("axis", 1)]);
        self.flat.insert(out.clone());
        self.derived.insert(key, out.clone());
        out
    }

    fn emit_conv(
        &mut self,
        index: usize,
        node: &Node,
        weight: ParamId,
        kernel: u32,
        stride: u32,
        pad: u32,
    ) -> Result<()> {
        let g = self.graph;
        let x = self.read(node.inputs[0])?;
        self.require_spatial(&x, node)?;
        let pt = &g.params[weight.0].tensors[0];
        let (w_name, w_shape) = (pt.name.clone(), pt.shape.clone());
        let reads_input = g.slice(node.inputs[0]).storage == g.slice(g.input.expect("validated")).storage;
        let fold_input = reads_input && matches!(self.input_norm, InputNorm::FoldAll | InputNorm::FoldScale);
        let fold_bn = self.folded_into.get(&index).copied();
        let mut inputs = vec![x];
        let mut doc = Vec::new();
        if !fold_input && fold_bn.is_none() {
            inputs.push(self.param_initializer(&w_name, &w_shape)?);
        } else {
            let mut w: Vec<f64> = self.weights[w_name.as_str()].iter().map(|&v| v as f64).collect();
            let (c_out, c_in) = (w_shape[0], w_shape[1]);
            let taps = w.len() / (c_out * c_in);
            let mut bias = vec![0.0f64; c_out];
            if fold_input {
                let n = self.normalization().clone();
                let c0 = g.slice(node.inputs[0]).c0 as usize;
                for o in 0..c_out {
                    for i in 0..c_in {
                        let (m, s) = (n.mean[c0 + i] as f64, n.std[c0 + i] as f64);
                        for v in &mut w[(o * c_in + i) * taps..][..taps] {
                            *v /= s;
                            if self.input_norm == InputNorm::FoldAll {
                                bias[o] -= *v * m;
                            }
                        }
                    }
                }
                doc.push(match self.input_norm {
                    InputNorm::FoldAll => "input normalisation folded in",
                    _ => "1/std of the input normalisation folded in",
                });
            }
            let mut bias_doc = "";
            if let Some(bn) = fold_bn {
                let Op::BatchNorm { affine, running, .. } = g.nodes[bn].op else {
                    unreachable!("only batch norms fold")
                };
                let get = |group: &ParamGroup, k: usize| self.weights[group.tensors[k].name.as_str()];
                let (gamma, beta) = (get(&g.params[affine.0], 0), get(&g.params[affine.0], 1));
                let (mean, var) = (get(&g.states[running.0], 0), get(&g.states[running.0], 1));
                for o in 0..c_out {
                    let a = gamma[o] as f64 / (var[o] as f64 + BN_EPS as f64).sqrt();
                    w[o * c_in * taps..][..c_in * taps].iter_mut().for_each(|v| *v *= a);
                    bias[o] = (bias[o] - mean[o] as f64) * a + beta[o] as f64;
                }
                doc.push("batch norm folded in");
                bias_doc = "folded batch norm shift";
            }
            let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let w_doc = format!("{} ({})", w_name, doc.join("; "));
            self.add_initializer(&w_name, &w_shape, &w32, &w_doc)?;
            inputs.push(w_name.clone());
            if bias.iter().any(|&b| b != 0.0) || fold_bn.is_some() {
                let b_name = format!("{}.bias", node.name);
                let b32: Vec<f32> = bias.iter().map(|&v| v as f32).collect();
                let b_doc = if bias_doc.is_empty() { "input normalisation shift" } else { bias_doc };
                self.add_initializer(&b_name, &[c_out], &b32, b_doc)?;
                inputs.push(b_name);
            }
        }
        let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
        let attrs =
            vec![attr_ints("kernel_shape", &[k, k]), attr_ints("strides", &[s, s]), attr_ints("pads", &[p, p, p, p])];
        match fold_bn {
            None => {
                let out = self.output_name(node);
                self.push_node("Conv", &node.name, inputs, &out, attrs);
                self.write(node.output, out)
            }
            Some(bn) => {
                let bn_node = &g.nodes[bn];
                let Op::BatchNorm { relu, .. } = bn_node.op else { unreachable!("only batch norms fold") };
                let out = self.output_name(bn_node);
                let conv_out = if relu { self.fresh_name(&node.name) } else { out.clone() };
                self.push_node("Conv", &node.name, inputs, &conv_out, attrs);
                if relu {
                    self.push_node("Relu", &format!("{}.relu", bn_node.name), vec![conv_out], &out, vec![]);
                }
                self.folded_output.insert(bn, out);
                Ok(())
            }
        }
    }

    /// The graph's logits as the model's output, (N, classes).
    fn emit_output(&mut self) -> Result<String> {
        let logits = self.graph.logits.expect("validated");
        let v = self.read(logits)?;
        let v = self.flatten(&v, "logits");
        if v != OUTPUT_NAME {
            self.push_node("Identity", OUTPUT_NAME, vec![v], OUTPUT_NAME, vec![]);
        }
        Ok(OUTPUT_NAME.to_string())
    }
}

/// How many conv nodes use weight `p` (a shared weight cannot take a fold or a normalisation).
fn conv_weight_users(graph: &Graph, p: ParamId) -> usize {
    graph.nodes.iter().filter(|n| matches!(n.op, Op::Conv2d { weight, .. } if weight == p)).count()
}

/// Conv node index → batch norm node index, for every batch norm that reads exactly one
/// conv's whole output when nothing else reads or overwrites that output, and the conv's
/// weight is its own. Folding is exact there: in eval mode batch norm is a per-channel
/// affine map of the conv output.
fn foldable_batch_norms(graph: &Graph) -> HashMap<usize, usize> {
    let overlaps = |a: SliceId, b: SliceId| {
        let (a, b) = (graph.slice(a), graph.slice(b));
        a.storage == b.storage && a.c0 < b.c0 + b.c && b.c0 < a.c0 + a.c
    };
    let protected: Vec<SliceId> = [graph.input, graph.logits].into_iter().flatten().collect();
    let uses = graph.uses();
    let mut out = HashMap::new();
    for (i, bn) in graph.nodes.iter().enumerate() {
        if !matches!(bn.op, Op::BatchNorm { .. }) {
            continue;
        }
        let x = bn.inputs[0];
        let writers = &uses.writers[graph.slice(x).storage.0];
        let Some(j) = writers.iter().map(|n| n.0).filter(|&j| j < i).rfind(|&j| overlaps(graph.nodes[j].output, x))
        else {
            continue;
        };
        let conv = &graph.nodes[j];
        let Op::Conv2d { weight, .. } = conv.op else { continue };
        let same_range = graph.slice(conv.output) == graph.slice(x);
        let weight_shared = conv_weight_users(graph, weight) > 1;
        let other_readers =
            uses.readers[graph.slice(conv.output).storage.0].iter().any(|&(k, t)| k.0 != i && overlaps(t, conv.output));
        let touches_io = protected.iter().any(|&t| overlaps(t, conv.output) || overlaps(t, bn.output));
        if same_range && !weight_shared && !other_readers && !touches_io && !out.contains_key(&j) {
            out.insert(j, i);
        }
    }
    out
}

//! Weights and resume checkpoints as safetensors files that PyTorch reads and writes as is.
//!
//! # Weights files
//! Tensors carry torchvision's state-dict names and PyTorch's layouts (OIHW convolutions,
//! (out, in) linear weights), stored as little-endian `F32`; every batch norm also gets
//! `<module>.num_batches_tracked`, an `I64` scalar (shape `[]`) as PyTorch writes it. So
//! `torchvision.models.densenet121().load_state_dict(safetensors.torch.load_file(path))` needs no
//! conversion. The `__metadata__` holds:
//!
//! | key | value |
//! |---|---|
//! | `format` | `pt`, the tag Hugging Face tools expect on a PyTorch state dict |
//! | `densegpu.format` | [`WEIGHTS_FORMAT`] or [`CHECKPOINT_FORMAT`] |
//! | `densegpu.config` | the [`DenseNetConfig`] as JSON |
//! | `densegpu.training` | checkpoints only: the [`TrainingState`] as JSON |
//!
//! # Reading
//! Any safetensors state dict loads, ours or one saved from PyTorch: `F32` as is, `F16`, `BF16`
//! and `F64` converted to f32; `num_batches_tracked` may be absent or any integer type; the old
//! key spelling of released torchvision checkpoints (`denselayer1.norm.1.weight`) is renamed to
//! the current one (`denselayer1.norm1.weight`), and the `module.` prefix of a state dict saved
//! from `torch.nn.DataParallel` is removed when every key has it. Matching against a model
//! ([`weights_for_graph`], [`apply_weights`]) is strict: a missing tensor, a tensor of another
//! shape, and a tensor the model does not have are all errors that name the tensor. Nothing is
//! dropped quietly; the exceptions are stated where they happen: [`load_weights`] on a resume
//! checkpoint leaves out the optimizer state, which only [`load_checkpoint`] returns, and
//! [`apply_weights_for_fine_tuning`] leaves out a classifier for another number of classes and
//! says so.
//!
//! Every read, from memory or from a file, goes through one checked header parser: a header
//! beyond 100 MB or beyond the file, tensor offsets that leave gaps, overlap, overflow or do not
//! match a tensor's dtype and shape, and data that does not end where the file does are errors
//! that name the file, and no tensor is given memory beyond what the file's bytes justify.
//!
//! A file without densegpu's config (a state dict saved from torchvision or PyTorch) still tells
//! its architecture: [`Weights::model_config`] infers it from the tensor names and shapes.
//!
//! # Resume checkpoints
//! A weights file plus one momentum buffer per parameter, `optimizer.momentum.<parameter name>`
//! (`F32`, the parameter's shape), and the [`TrainingState`] (step, epoch, RNG words, SGD
//! hyper-parameters...) in `densegpu.training`. Loading one into a fresh session and training on
//! gives the same bits as never having stopped.
//!
//! # Writing
//! Every file is written through [`write_atomic`]: a temporary file in the target's directory,
//! flushed and fsynced, then renamed over the target, so a crash or a failed write leaves the
//! previous file whole.

use crate::densenet::DenseNetConfig;
use crate::error::{Error, Result};
use crate::executor::GroupValues;
use crate::executor::{Session, SgdHyper};
pub use crate::files::write_atomic;
use crate::graph::{Graph, ParamGroup};
use safetensors::{Dtype, SafeTensorError};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// `densegpu.format` of a weights file.
pub const WEIGHTS_FORMAT: &str = "densegpu-weights/1";
/// `densegpu.format` of a resume checkpoint.
pub const CHECKPOINT_FORMAT: &str = "densegpu-checkpoint/1";
/// Metadata key of the format tag.
pub const META_FORMAT: &str = "densegpu.format";
/// Metadata key of the model configuration (JSON of [`DenseNetConfig`]).
pub const META_CONFIG: &str = "densegpu.config";
/// Metadata key of a checkpoint's training state (JSON of [`TrainingState`]).
pub const META_TRAINING: &str = "densegpu.training";
/// Name prefix of the momentum buffers in a checkpoint.
pub const MOMENTUM_PREFIX: &str = "optimizer.momentum.";
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";
/// The key prefix of a state dict saved from a model wrapped in `torch.nn.DataParallel`.
pub const DATA_PARALLEL_PREFIX: &str = "module.";

/// One tensor by its torchvision state-dict name, PyTorch shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a weights file holds.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    /// The model configuration, when the file was written by densegpu (checked with
    /// [`DenseNetConfig::validate`] as it is read).
    pub config: Option<DenseNetConfig>,
    /// Parameters and running statistics under their current torchvision names (old spellings
    /// already renamed). `num_batches_tracked` is not among them: see `batches_tracked`.
    pub tensors: Vec<NamedTensor>,
    /// The file's whole `__metadata__`, the keys above included.
    pub metadata: HashMap<String, String>,
    /// The largest `num_batches_tracked` in the file (densegpu writes one count for every batch
    /// norm; a PyTorch model fine-tuned with some batch norms frozen may have several), or
    /// `None` when the file has none.
    pub batches_tracked: Option<u64>,
}

impl Weights {
    /// The tensor called `name` (its current torchvision name), if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The model these weights are for: the file's own `densegpu.config` when it has one,
    /// otherwise the architecture inferred from the tensor names and shapes (a state dict saved
    /// from torchvision or PyTorch; see [`DenseNetConfig::infer_from_names_and_shapes`]). An
    /// inferred config has `drop_rate` 0 and the stem's usual `image_size` (224 or 32).
    pub fn model_config(&self) -> Result<DenseNetConfig> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let shapes: Vec<(String, Vec<usize>)> =
            self.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        DenseNetConfig::infer_from_names_and_shapes(&shapes).map_err(|e| {
            Error::Data(format!(
                "{e} (the file has no `{META_CONFIG}` metadata either, which densegpu's own weights files carry)"
            ))
        })
    }
}

/// Where training stood when a checkpoint was written: everything beyond the model's tensors
/// and the momentum buffers that an uninterrupted run would still have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingState {
    /// SGD steps taken. [`save_checkpoint`] records the session's own counter, which keys the
    /// dropout masks, whatever this field says.
    pub step: u64,
    pub epoch: u64,
    /// Batches of `epoch` already trained on.
    pub batch_in_epoch: u64,
    /// The trainer's RNG state (shuffling, augmentation), opaque to densegpu.
    pub rng_state: Vec<u64>,
    pub best_valid_accuracy: Option<f64>,
    /// The hyper-parameters of the next step (the learning rate as scheduled at `step`).
    pub sgd: SgdHyper,
    /// Batches normalised with batch statistics. [`save_checkpoint`] records the session's
    /// counter, whatever this field says.
    pub batches_tracked: u64,
    /// Anything else the trainer wants back (schedule, data set, seed...), as text.
    pub extra: BTreeMap<String, String>,
}

/// The JSON form of [`TrainingState`]. Floats are widened to f64 so that every f32 comes back
/// bit for bit (serde_json parses f32 through f64, which could round twice), and the RNG words
/// stay integers, which serde_json keeps exact for all of u64.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainingJson {
    step: u64,
    epoch: u64,
    batch_in_epoch: u64,
    rng_state: Vec<u64>,
    best_valid_accuracy: Option<f64>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    batches_tracked: u64,
    #[serde(default)]
    extra: BTreeMap<String, String>,
}

impl From<&TrainingState> for TrainingJson {
    fn from(s: &TrainingState) -> Self {
        TrainingJson {
            step: s.step,
            epoch: s.epoch,
            batch_in_epoch: s.batch_in_epoch,
            rng_state: s.rng_state.clone(),
            best_valid_accuracy: s.best_valid_accuracy,
            lr: s.sgd.lr as f64,
            momentum: s.sgd.momentum as f64,
            weight_decay: s.sgd.weight_decay as f64,
            nesterov: s.sgd.nesterov,
            batches_tracked: s.batches_tracked,
            extra: s.extra.clone(),
        }
    }
}

impl From<TrainingJson> for TrainingState {
    fn from(j: TrainingJson) -> Self {
        TrainingState {
            step: j.step,
            epoch: j.epoch,
            batch_in_epoch: j.batch_in_epoch,
            rng_state: j.rng_state,
            best_valid_accuracy: j.best_valid_accuracy,
            sgd: SgdHyper {
                lr: j.lr as f32,
                momentum: j.momentum as f32,
                weight_decay: j.weight_decay as f32,
                nesterov: j.nesterov,
            },
            batches_tracked: j.batches_tracked,
            extra: j.extra,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// An owned tensor in safetensors' byte form.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_raw(t: &NamedTensor) -> Result<Raw> {
    let expected: usize = t.shape.iter().product();
    if t.data.len() != expected {
        return Err(Error::Shape(format!(
            "tensor `{}` has {} values but its shape {:?} holds {expected}",
            t.name,
            t.data.len(),
            t.shape
        )));
    }
    let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Raw { dtype: Dtype::F32, shape: t.shape.clone(), bytes })
}

fn i64_scalar(v: u64) -> Raw {
    Raw { dtype: Dtype::I64, shape: vec![], bytes: (v as i64).to_le_bytes().to_vec() }
}

/// The batch norms among `names`: every module with a `running_mean`.
fn batch_norm_modules<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    names.filter_map(|n| n.strip_suffix(".running_mean")).collect()
}

/// The model's tensors plus one `num_batches_tracked` per batch norm. A tensor named
/// `<bn>.num_batches_tracked` in `tensors` (as [`session_weights`] returns) gives the count;
/// a batch norm without one gets 0, PyTorch's value for a module that never trained.
fn model_entries(tensors: &[NamedTensor]) -> Result<Vec<(String, Raw)>> {
    let mut out = Vec::with_capacity(tensors.len() * 2);
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for t in tensors {
        if let Some(module) = t.name.strip_suffix(&format!(".{NUM_BATCHES_TRACKED}")) {
            let v = match t.data[..] {
                [v] if v >= 0.0 && v.fract() == 0.0 => v as u64,
                _ => {
                    return Err(Error::Shape(format!(
                        "`{}` must hold one non-negative whole number, got {:?}",
                        t.name, t.data
                    )))
                }
            };
            counts.insert(module, v);
        } else {
            out.push((t.name.clone(), f32_raw(t)?));
        }
    }
    for module in batch_norm_modules(tensors.iter().map(|t| t.name.as_str())) {
        let count = counts.remove(module).unwrap_or(0);
        out.push((format!("{module}.{NUM_BATCHES_TRACKED}"), i64_scalar(count)));
    }
    if let Some(module) = counts.keys().next() {
        return Err(Error::Shape(format!("`{module}.{NUM_BATCHES_TRACKED}` has no `{module}.running_mean` beside it")));
    }
    Ok(out)
}

fn base_metadata(format: &str, config: &DenseNetConfig) -> Result<HashMap<String, String>> {
    let config = serde_json::to_string(config).map_err(|e| Error::Config(format!("cannot encode the config: {e}")))?;
    Ok(HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (META_FORMAT.to_string(), format.to_string()),
        (META_CONFIG.to_string(), config),
    ]))
}

fn serialize(entries: &[(String, Raw)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    for (name, _) in entries {
        if !seen.insert(name.as_str()) {
            return Err(Error::Shape(format!("tensor `{name}` is given twice")));
        }
    }
    let bytes = safetensors::serialize(entries.iter().map(|(n, r)| (n.as_str(), r)), Some(metadata))
        .map_err(|e| Error::Data(format!("cannot encode safetensors: {e}")))?;
    Ok(sorted_metadata(bytes))
}

/// Rewrites the header with `__metadata__` in key order. safetensors writes it in hash-map
/// order, which changes from run to run; sorted, the same weights always give the same bytes
/// (so files can be compared and hashed).
fn sorted_metadata(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let Ok(serde_json::Value::Object(mut header)) = serde_json::from_slice(&bytes[8..8 + n]) else {
        return bytes;
    };
    if let Some(serde_json::Value::Object(meta)) = header.get_mut("__metadata__") {
        let mut entries: Vec<(String, serde_json::Value)> = std::mem::take(meta).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        meta.extend(entries);
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    // The tensor data stays 8-byte aligned, as safetensors pads it: with spaces.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// A weights file's bytes (see the module documentation for the format).
pub fn weights_to_bytes(config: &DenseNetConfig, tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    weights_to_bytes_with_metadata(config, tensors, &HashMap::new())
}

/// As [`weights_to_bytes`], with extra `__metadata__` entries (e.g. the data set or the
/// accuracy). Keys starting with `densegpu.`, and `format`, are reserved.
pub fn weights_to_bytes_with_metadata(
    config: &DenseNetConfig,
    tensors: &[NamedTensor],
    extra: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut metadata = base_metadata(WEIGHTS_FORMAT, config)?;
    for (k, v) in extra {
        if k == "format" || k.starts_with("densegpu.") {
            return Err(Error::Config(format!("metadata key `{k}` is reserved for densegpu")));
        }
        metadata.insert(k.clone(), v.clone());
    }
    serialize(&model_entries(tensors)?, metadata)
}

/// Writes a weights file atomically.
pub fn save_weights(path: &Path, config: &DenseNetConfig, tensors: &[NamedTensor]) -> Result<()> {
    save_weights_with_metadata(path, config, tensors, &HashMap::new())
}

/// As [`save_weights`], with extra `__metadata__` entries.
pub fn save_weights_with_metadata(
    path: &Path,
    config: &DenseNetConfig,
    tensors: &[NamedTensor],
    extra: &HashMap<String, String>,
) -> Result<()> {
    let bytes = weights_to_bytes_with_metadata(config, tensors, extra)
        .map_err(|e| Error::Data(format!("{}: not written: {e}", path.display())))?;
    write_atomic(path, |f| f.write_all(&bytes))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What one safetensors file holds, sorted into model tensors, counts and momentum.
struct Parsed {
    weights: Weights,
    momentum: Vec<NamedTensor>,
}

fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "too short to be a safetensors file (no 8-byte header length)".into(),
        SafeTensorError::InvalidHeaderLength => {
            "truncated or not safetensors: the header length is beyond the end of the file".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "truncated or padded: the tensor data does not end where the file does".into()
        }
        SafeTensorError::InvalidHeader(_) | SafeTensorError::InvalidHeaderDeserialization(_) => {
            format!("corrupt safetensors header: {e}")
        }
        _ => format!("invalid safetensors file: {e}"),
    }
}

/// The current torchvision name for a key in the old spelling: in a dense layer, `norm.1`,
/// `relu.1`, `conv.1` (and `.2`) became `norm1`... The rule is torchvision's own.
pub fn canonical_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let merge = i > 0
            && i + 2 < parts.len()
            && parts[i - 1].starts_with("denselayer")
            && matches!(parts[i], "norm" | "relu" | "conv")
            && matches!(parts[i + 1], "1" | "2");
        if merge {
            out.push(format!("{}{}", parts[i], parts[i + 1]));
            i += 2;
        } else {
            out.push(parts[i].to_string());
            i += 1;
        }
    }
    out.join(".")
}

fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let magnitude = match exp {
        // Subnormal: mant · 2^-24, exact in f32.
        0 => mant as f32 * f32::from_bits(0x3380_0000),
        0x1f => f32::from_bits(0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (mant << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// Appends the values of `data` (whole elements of `dtype`) to `out` as f32. `name` is the
/// tensor's, for errors.
fn extend_floats(out: &mut Vec<f32>, origin: &str, name: &str, dtype: Dtype, data: &[u8]) -> Result<()> {
    match dtype {
        Dtype::F32 => out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        Dtype::F16 => out.extend(data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        Dtype::BF16 => {
            out.extend(data.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)))
        }
        Dtype::F64 => {
            for b in data.chunks_exact(8) {
                let v = f64::from_le_bytes(b.try_into().unwrap());
                let narrowed = v as f32;
                if v.is_finite() && !narrowed.is_finite() {
                    return Err(Error::Data(format!("{origin}: tensor `{name}` holds {v}, beyond the range of f32")));
                }
                out.push(narrowed);
            }
        }
        other => return float_dtype(origin, name, other),
    }
    Ok(())
}

/// Whether `dtype` is one that weights may have (F32, F16, BF16, F64), or an error naming the
/// tensor.
fn float_dtype(origin: &str, name: &str, dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => Ok(()),
        other => {
            Err(Error::Data(format!("{origin}: tensor `{name}` is {other:?}; weights must be F32 (or F16, BF16, F64)")))
        }
    }
}

/// Where a file's tensor bytes come from: all in memory (a browser's file, a test's bytes), or
/// read from the file tensor by tensor, in pieces, so that a file is never held whole.
enum TensorData<'a> {
    Memory(&'a [u8]),
    File { file: std::fs::File, data_start: u64 },
}

/// Bytes converted per read from a file: whole elements of every dtype.
const PIECE_BYTES: usize = 8 << 20;

impl TensorData<'_> {
    /// The raw bytes of a small tensor (a batch count).
    fn bytes(&mut self, origin: &str, info: &safetensors::tensor::TensorInfo) -> Result<Vec<u8>> {
        let (start, end) = info.data_offsets;
        match self {
            TensorData::Memory(data) => Ok(data[start..end].to_vec()),
            TensorData::File { file, data_start } => {
                let mut out = vec![0u8; end - start];
                read_at(file, *data_start + start as u64, &mut out, origin)?;
                Ok(out)
            }
        }
    }

    /// A tensor's values as f32, memory for all of them reserved first (an error naming the
    /// tensor and the bytes needed, not an abort, when it cannot be).
    fn floats(&mut self, origin: &str, name: &str, info: &safetensors::tensor::TensorInfo) -> Result<Vec<f32>> {
        // Before any memory is reserved: a 4-bit dtype's count is twice its bytes.
        float_dtype(origin, name, info.dtype)?;
        let count: usize = info.shape.iter().product();
        let mut out = Vec::new();
        crate::files::try_reserve(&mut out, count as u64, || {
            format!("{origin}: tensor `{name}`, {count} values of {:?} read as f32", info.dtype)
        })?;
        let (start, end) = info.data_offsets;
        match self {
            TensorData::Memory(data) => extend_floats(&mut out, origin, name, info.dtype, &data[start..end])?,
            TensorData::File { file, data_start } => {
                let mut piece = vec![0u8; PIECE_BYTES.min(end - start)];
                let mut at = start;
                while at < end {
                    let n = piece.len().min(end - at);
                    read_at(file, *data_start + at as u64, &mut piece[..n], origin)?;
                    extend_floats(&mut out, origin, name, info.dtype, &piece[..n])?;
                    at += n;
                }
            }
        }
        Ok(out)
    }
}

fn read_at(file: &mut std::fs::File, offset: u64, buf: &mut [u8], origin: &str) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|e| crate::files::read_error(origin, &e))
}

fn count(origin: &str, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<u64> {
    let bad = |what: String| Error::Data(format!("{origin}: `{name}` {what}; it must be one integer"));
    if shape.iter().product::<usize>() != 1 {
        return Err(bad(format!("has shape {shape:?}")));
    }
    let v: i128 = match dtype {
        Dtype::I64 => i64::from_le_bytes(data.try_into().unwrap()) as i128,
        Dtype::U64 => u64::from_le_bytes(data.try_into().unwrap()) as i128,
        Dtype::I32 => i32::from_le_bytes(data.try_into().unwrap()) as i128,
        Dtype::U32 => u32::from_le_bytes(data.try_into().unwrap()) as i128,
        other => return Err(bad(format!("is {other:?}"))),
    };
    u64::try_from(v).map_err(|_| bad(format!("is {v}")))
}

fn not_pickle(start: &[u8], origin: &str) -> Result<()> {
    if start.starts_with(b"PK\x03\x04") {
        return Err(Error::Data(format!(
            "{origin}: this is a PyTorch pickle (.pt/.pth) archive, not safetensors; convert it with \
             `safetensors.torch.save_file(torch.load(path), out)`"
        )));
    }
    Ok(())
}

/// The most bytes a safetensors header may take: safetensors' own bound (100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The header length that a file of `file_len` bytes gives in its first 8 bytes (`start`, the
/// bytes read so far), checked to be within [`MAX_HEADER_BYTES`] and the file.
fn header_length(start: &[u8], file_len: u64, origin: &str) -> Result<u64> {
    not_pickle(start, origin)?;
    let bad = |e: SafeTensorError| Error::Data(format!("{origin}: {}", describe(&e)));
    let Some(&first) = start.first_chunk::<8>() else { return Err(bad(SafeTensorError::HeaderTooSmall)) };
    let n = u64::from_le_bytes(first);
    if n > MAX_HEADER_BYTES {
        return Err(bad(SafeTensorError::HeaderTooLarge));
    }
    if n > file_len.saturating_sub(8) {
        return Err(bad(SafeTensorError::InvalidHeaderLength));
    }
    Ok(n)
}

/// The one checked header parser every safetensors read goes through: `text` is the JSON header,
/// `data_len` the bytes of the file after it. The tensors' offsets must run from 0 without gaps
/// or overlaps, each tensor's bytes must be what its dtype and shape take (safetensors'
/// [`Metadata`](safetensors::tensor::Metadata) checks these without overflow), and the last
/// tensor must end where the file does. Afterwards every tensor's `data_offsets` lie within
/// `data_len`.
fn parse_header(text: &[u8], data_len: u64, origin: &str) -> Result<safetensors::tensor::Metadata> {
    let header: safetensors::tensor::Metadata =
        serde_json::from_slice(text).map_err(|e| Error::Data(format!("{origin}: corrupt safetensors header: {e}")))?;
    if header.data_len() as u64 != data_len {
        return Err(Error::Data(format!("{origin}: {}", describe(&SafeTensorError::MetadataIncompleteBuffer))));
    }
    Ok(header)
}

fn parse(bytes: &[u8], origin: &str) -> Result<Parsed> {
    let n = header_length(bytes, bytes.len() as u64, origin)? as usize;
    let (text, data) = bytes[8..].split_at(n);
    let header = parse_header(text, data.len() as u64, origin)?;
    parse_tensors(&header, TensorData::Memory(data), origin)
}

/// Reads a safetensors file's header, then its tensors one at a time in pieces: the file is
/// never held whole, and a tensor that memory cannot hold as f32 is an error naming it.
fn parse_file(path: &Path) -> Result<Parsed> {
    use std::io::Read;
    let origin = path.display().to_string();
    let fail = |e: std::io::Error| crate::files::read_error(&origin, &e);
    let (mut file, len) = crate::files::open(path)?;
    let mut start = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut start).map_err(fail)?;
    let n = header_length(&start, len, &origin)?;
    let mut text = vec![0u8; n as usize];
    file.read_exact(&mut text).map_err(fail)?;
    let header = parse_header(&text, len - 8 - n, &origin)?;
    parse_tensors(&header, TensorData::File { file, data_start: 8 + n }, &origin)
}

fn parse_tensors(header: &safetensors::tensor::Metadata, mut data: TensorData<'_>, origin: &str) -> Result<Parsed> {
    let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let format = metadata.get(META_FORMAT).map(String::as_str);
    let is_checkpoint = match format {
        None | Some(WEIGHTS_FORMAT) => false,
        Some(CHECKPOINT_FORMAT) => true,
        Some(other) => {
            return Err(Error::Data(format!(
                "{origin}: unknown format `{other}` (this densegpu reads {WEIGHTS_FORMAT} and {CHECKPOINT_FORMAT}); \
                 was it written by a newer version?"
            )))
        }
    };
    let config = match metadata.get(META_CONFIG) {
        Some(json) => {
            let config = serde_json::from_str::<DenseNetConfig>(json)
                .map_err(|e| Error::Data(format!("{origin}: corrupt `{META_CONFIG}` metadata: {e}")))?;
            config.validate().map_err(|e| {
                Error::Data(format!("{origin}: the `{META_CONFIG}` metadata describes no model densegpu builds: {e}"))
            })?;
            Some(config)
        }
        None => None,
    };

    let mut tensors = Vec::new();
    let mut momentum = Vec::new();
    let mut counts: Vec<(String, u64)> = Vec::new();
    let mut sources: HashMap<String, String> = HashMap::new();
    let infos = header.tensors();
    let mut entries: Vec<(&str, &safetensors::tensor::TensorInfo)> =
        infos.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    // The header's order is a hash map's; sort so errors and results do not vary run to run.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    // A model wrapped in torch.nn.DataParallel (or DistributedDataParallel) saves every key
    // as `module.<key>`; when all of them are, the wrapper's prefix goes.
    let model_keys = || entries.iter().map(|e| e.0).filter(|n| !(is_checkpoint && n.starts_with(MOMENTUM_PREFIX)));
    let wrapped = model_keys().next().is_some() && model_keys().all(|n| n.starts_with(DATA_PARALLEL_PREFIX));
    for (raw_name, info) in entries {
        let (dtype, shape) = (info.dtype, info.shape.clone());
        if is_checkpoint {
            if let Some(param) = raw_name.strip_prefix(MOMENTUM_PREFIX) {
                momentum.push(NamedTensor {
                    name: param.to_string(),
                    data: data.floats(origin, raw_name, info)?,
                    shape,
                });
                continue;
            }
        }
        let name = canonical_name(if wrapped { &raw_name[DATA_PARALLEL_PREFIX.len()..] } else { raw_name });
        if let Some(first) = sources.insert(name.clone(), raw_name.to_string()) {
            return Err(Error::Data(format!("{origin}: `{first}` and `{raw_name}` are the same tensor `{name}`")));
        }
        if let Some(module) = name.strip_suffix(&format!(".{NUM_BATCHES_TRACKED}")) {
            let bytes = match shape.iter().product::<usize>() {
                1 => data.bytes(origin, info)?,
                _ => Vec::new(),
            };
            counts.push((module.to_string(), count(origin, raw_name, dtype, &shape, &bytes)?));
        } else {
            tensors.push(NamedTensor { data: data.floats(origin, raw_name, info)?, name, shape });
        }
    }
    // A count is kept only as `batches_tracked`; one whose batch norm is absent would vanish
    // unseen, so it must sit beside running statistics (which the model match then checks).
    for (module, _) in &counts {
        let stats = format!("{module}.running_mean");
        if !tensors.iter().any(|t| t.name == stats) {
            return Err(Error::Data(format!("{origin}: `{module}.{NUM_BATCHES_TRACKED}` has no `{stats}` beside it")));
        }
    }
    let batches_tracked = counts.iter().map(|&(_, c)| c).max();
    Ok(Parsed { weights: Weights { config, tensors, metadata, batches_tracked }, momentum })
}

/// Reads a weights file (ours or a PyTorch state dict) from memory; `origin` names it in errors.
/// A resume checkpoint reads too: its model tensors, without the optimizer state.
pub fn weights_from_bytes(bytes: &[u8], origin: &str) -> Result<Weights> {
    parse(bytes, origin).map(|p| p.weights)
}

/// Reads a weights file (see [`weights_from_bytes`]), tensor by tensor in pieces (the file is
/// never held whole). Errors name the file and say what happened: not found, a directory,
/// permission denied, not safetensors, or a tensor that memory cannot hold (with its size).
pub fn load_weights(path: &Path) -> Result<Weights> {
    parse_file(path).map(|p| p.weights)
}

// ---------------------------------------------------------------------------------------------
// Matching a model

fn shown(names: &[String]) -> String {
    const SHOW: usize = 5;
    let list: Vec<String> = names.iter().take(SHOW).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(SHOW) {
        0 => list.join(", "),
        more => format!("{} and {more} more", list.join(", ")),
    }
}

/// Gathers `tensors` into the layout of `groups`, checking that every tensor is present with
/// its shape. `what` says whose tensors they are in errors.
fn gather(groups: &[ParamGroup], tensors: &[NamedTensor], what: &str) -> Result<Vec<Vec<f32>>> {
    let by_name: HashMap<&str, &NamedTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut missing = Vec::new();
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mut values = Vec::with_capacity(g.len());
        for p in &g.tensors {
            let Some(t) = by_name.get(p.name.as_str()) else {
                missing.push(p.name.clone());
                continue;
            };
            if t.shape != p.shape {
                return Err(Error::Data(format!(
                    "the {what} give `{}` shape {:?} but the model's is {:?}",
                    p.name, t.shape, p.shape
                )));
            }
            if t.data.len() != p.len() {
                return Err(Error::Data(format!(
                    "the {what} give `{}` {} values for shape {:?}",
                    p.name,
                    t.data.len(),
                    t.shape
                )));
            }
            values.extend_from_slice(&t.data);
        }
        out.push(values);
    }
    if !missing.is_empty() {
        return Err(Error::Data(format!("the {what} lack {} model tensor(s): {}", missing.len(), shown(&missing))));
    }
    Ok(out)
}

/// Parameter and running-statistic values of `weights` in the layout of
/// [`Session::set_parameters`] and [`Session::set_states`]. Every model tensor must be present
/// with the model's shape, and every tensor in `weights` must belong to the model (a
/// `<bn>.num_batches_tracked` among the tensors, as [`session_weights`] returns it, is accepted
/// for each of the model's batch norms); otherwise the error names the tensor.
pub fn weights_for_graph(graph: &Graph, weights: &Weights) -> Result<(GroupValues, GroupValues)> {
    let model: std::collections::HashSet<&str> =
        graph.params.iter().chain(&graph.states).flat_map(|g| g.tensors.iter().map(|t| t.name.as_str())).collect();
    let batch_norms = batch_norm_modules(model.iter().copied());
    let extra: Vec<String> = weights
        .tensors
        .iter()
        .filter(|t| !model.contains(t.name.as_str()))
        .filter(|t| t.name.strip_suffix(&format!(".{NUM_BATCHES_TRACKED}")).is_none_or(|m| !batch_norms.contains(&m)))
        .map(|t| t.name.clone())
        .collect();
    if !extra.is_empty() {
        let why = if extra.iter().any(|n| n.starts_with(DATA_PARALLEL_PREFIX)) {
            format!(
                "keys starting with `{DATA_PARALLEL_PREFIX}` come from torch.nn.DataParallel; the prefix is removed \
                 only when every key has it, so save `model.module.state_dict()` instead"
            )
        } else {
            "is it another configuration?".to_string()
        };
        return Err(Error::Data(format!(
            "the weights have {} tensor(s) the model does not: {} ({why})",
            extra.len(),
            shown(&extra)
        )));
    }
    let params = gather(&graph.params, &weights.tensors, "weights")?;
    let states = gather(&graph.states, &weights.tensors, "weights")?;
    Ok((params, states))
}

/// Overwrites a session's parameters and running statistics with `weights` (checked as by
/// [`weights_for_graph`]; nothing is written unless all of it matches). The session's
/// `batches_tracked` counter is not touched (it needs `&mut`): set it from
/// `weights.batches_tracked` if the count matters, as [`apply_checkpoint`] does.
pub fn apply_weights(session: &Session, weights: &Weights) -> Result<()> {
    let (params, states) = weights_for_graph(&session.graph, weights)?;
    session.set_parameters(&params)?;
    session.set_states(&states)
}

/// The classifier a fine-tuning start leaves out: the file's has another number of classes
/// than the model's (see [`apply_weights_for_fine_tuning`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifierSwap {
    /// The tensors not loaded, by name: `classifier.weight` and `classifier.bias`.
    pub left_out: Vec<String>,
    /// Classes of the file's classifier.
    pub file_classes: usize,
    /// Classes of the model's.
    pub model_classes: usize,
}

impl std::fmt::Display for ClassifierSwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.left_out.iter().map(|n| format!("`{n}`")).collect();
        write!(
            f,
            "left out {} (the file's classifier has {} classes, the model's {}); the classifier keeps its \
             fresh initialisation (weight uniform in ±1/sqrt(in_features), bias 0, as torchvision's DenseNet)",
            names.join(" and "),
            self.file_classes,
            self.model_classes
        )
    }
}

/// Whether `weights` hold a classifier for another number of classes than `graph`'s, and
/// nothing else about it differs: `classifier.weight` of shape `[classes, in_features]` with the
/// model's `in_features`, and `classifier.bias` of shape `[classes]`. GPU-free; what
/// [`apply_weights_for_fine_tuning`] decides with.
pub fn classifier_swap(graph: &Graph, weights: &Weights) -> Option<ClassifierSwap> {
    let model = |name: &str| graph.params.iter().flat_map(|g| &g.tensors).find(|t| t.name == name).map(|t| &t.shape);
    let (model_weight, model_bias) = (model("classifier.weight")?, model("classifier.bias")?);
    let (file_weight, file_bias) =
        (&weights.tensor("classifier.weight")?.shape, &weights.tensor("classifier.bias")?.shape);
    let (&[file_classes, in_features], &[model_classes, model_in]) = (&file_weight[..], &model_weight[..]) else {
        return None;
    };
    let swap = in_features == model_in
        && file_classes != model_classes
        && file_bias[..] == [file_classes]
        && model_bias[..] == [model_classes];
    swap.then(|| ClassifierSwap {
        left_out: vec!["classifier.weight".into(), "classifier.bias".into()],
        file_classes,
        model_classes,
    })
}

/// [`apply_weights`] for fine-tuning: when the file's classifier is for another number of
/// classes (see [`classifier_swap`]), every other tensor loads and the classifier keeps the
/// session's own initialisation, which is torchvision's for a DenseNet (`classifier.weight`
/// uniform in ±1/sqrt(in_features), `classifier.bias` 0); the answer says what was left out.
/// Any other difference (a missing or extra tensor, another shape anywhere else, the
/// classifier's input width included) is the error [`apply_weights`] gives, and then nothing
/// is written.
pub fn apply_weights_for_fine_tuning(session: &Session, weights: &Weights) -> Result<Option<ClassifierSwap>> {
    let Some(swap) = classifier_swap(&session.graph, weights) else {
        apply_weights(session, weights)?;
        return Ok(None);
    };
    // Check everything else as strictly as ever, with the model's own shapes standing in for
    // the classifier that is left out.
    let mut rest = Weights {
        tensors: weights.tensors.iter().filter(|t| !swap.left_out.contains(&t.name)).cloned().collect(),
        ..Default::default()
    };
    for t in session.graph.params.iter().flat_map(|g| &g.tensors).filter(|t| swap.left_out.contains(&t.name)) {
        rest.tensors.push(NamedTensor { name: t.name.clone(), shape: t.shape.clone(), data: vec![0.0; t.len()] });
    }
    let (params, states) = weights_for_graph(&session.graph, &rest)?;
    for (group, values) in session.graph.params.iter().zip(&params) {
        for (t, v) in group.split(values).filter(|(t, _)| !swap.left_out.contains(&t.name)) {
            session.set_tensor(&t.name, v)?;
        }
    }
    session.set_states(&states)?;
    Ok(Some(swap))
}

/// A session's parameters and running statistics, plus `<bn>.num_batches_tracked` (shape `[]`,
/// the session's count; exact up to 2^24) for each batch norm: what [`save_weights`] takes.
pub async fn session_weights(session: &Session) -> Result<Vec<NamedTensor>> {
    let mut out: Vec<NamedTensor> =
        session.state_dict().await?.into_iter().map(|(name, shape, data)| NamedTensor { name, shape, data }).collect();
    let modules: Vec<String> =
        batch_norm_modules(out.iter().map(|t| t.name.as_str())).into_iter().map(str::to_string).collect();
    for m in modules {
        out.push(NamedTensor {
            name: format!("{m}.{NUM_BATCHES_TRACKED}"),
            shape: vec![],
            data: vec![session.batches_tracked as f32],
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Finiteness

/// Describes the tensors among `tensors` that hold a value that is not finite (NaN or ±inf):
/// `None` when every value is finite, otherwise the first such tensor, the kind of value, and
/// how many tensors are affected, e.g. "`features.norm5.running_var` holds inf (7 of its 342
/// values), as do 6 more tensors". `what` prefixes each name (e.g. "the momentum of ").
pub fn describe_non_finite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [f32])>, what: &str) -> Option<String> {
    let mut first = None;
    let mut more = 0usize;
    for (name, data) in tensors {
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad == 0 {
            continue;
        }
        if first.is_some() {
            more += 1;
            continue;
        }
        let kind = if data.iter().any(|v| v.is_nan()) {
            "NaN"
        } else if data.contains(&f32::INFINITY) {
            "inf"
        } else {
            "-inf"
        };
        first = Some(format!("{what}`{name}` holds {kind} ({bad} of its {} values)", data.len()));
    }
    first.map(|f| match more {
        0 => f,
        1 => format!("{f}, as does 1 more tensor"),
        n => format!("{f}, as do {n} more tensors"),
    })
}

/// Whether a session's state is fit to save as a good checkpoint: `None` when every parameter,
/// running statistic and momentum buffer is finite, otherwise what is not (see
/// [`describe_non_finite`]). A diverging run can keep a finite loss for a while after its
/// running variances overflow, so a trainer checks this before it writes a checkpoint.
pub async fn non_finite_state(session: &Session) -> Result<Option<String>> {
    let tensors = session.state_dict().await?;
    if let Some(m) = describe_non_finite(tensors.iter().map(|(n, _, d)| (n.as_str(), d.as_slice())), "") {
        return Ok(Some(m));
    }
    let momentum = session.momentum().await?;
    let named =
        session.graph.params.iter().zip(&momentum).flat_map(|(g, v)| g.split(v)).map(|(p, v)| (p.name.as_str(), v));
    Ok(describe_non_finite(named, "the momentum of "))
}

// ---------------------------------------------------------------------------------------------
// Resume checkpoints

/// A resume checkpoint's bytes: the session's weights (with its exact batch count), momentum
/// buffers and `state` (its `step` and `batches_tracked` replaced by the session's counters).
pub async fn checkpoint_to_bytes(session: &Session, config: &DenseNetConfig, state: &TrainingState) -> Result<Vec<u8>> {
    let tensors: Vec<NamedTensor> =
        session.state_dict().await?.into_iter().map(|(name, shape, data)| NamedTensor { name, shape, data }).collect();
    let mut entries = model_entries(&tensors)?;
    // model_entries wrote 0 counts (no count tensors given); the exact u64 goes in directly.
    for (name, raw) in entries.iter_mut() {
        if name.ends_with(NUM_BATCHES_TRACKED) {
            *raw = i64_scalar(session.batches_tracked);
        }
    }
    let momentum = session.momentum().await?;
    for (p, values) in session.graph.params.iter().zip(&momentum).flat_map(|(g, v)| g.split(v)) {
        let t = NamedTensor { name: p.name.clone(), shape: p.shape.clone(), data: values.to_vec() };
        entries.push((format!("{MOMENTUM_PREFIX}{}", p.name), f32_raw(&t)?));
    }
    let mut state = state.clone();
    state.step = session.step;
    state.batches_tracked = session.batches_tracked;
    let mut metadata = base_metadata(CHECKPOINT_FORMAT, config)?;
    let json = serde_json::to_string(&TrainingJson::from(&state))
        .map_err(|e| Error::Config(format!("cannot encode the training state: {e}")))?;
    metadata.insert(META_TRAINING.to_string(), json);
    serialize(&entries, metadata)
}

/// Writes a resume checkpoint atomically (see [`checkpoint_to_bytes`]).
pub async fn save_checkpoint(
    path: &Path,
    session: &Session,
    config: &DenseNetConfig,
    state: &TrainingState,
) -> Result<()> {
    let bytes = checkpoint_to_bytes(session, config, state)
        .await
        .map_err(|e| Error::Data(format!("{}: not written: {e}", path.display())))?;
    write_atomic(path, |f| f.write_all(&bytes))
}

/// Reads a resume checkpoint from memory: the weights, the training state and the momentum
/// buffers (named by their parameter). `origin` names the file in errors.
pub fn checkpoint_from_bytes(bytes: &[u8], origin: &str) -> Result<(Weights, TrainingState, Vec<NamedTensor>)> {
    checkpoint_from_parsed(parse(bytes, origin)?, origin)
}

fn checkpoint_from_parsed(parsed: Parsed, origin: &str) -> Result<(Weights, TrainingState, Vec<NamedTensor>)> {
    let Parsed { weights, momentum } = parsed;
    if weights.metadata.get(META_FORMAT).map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(Error::Data(format!(
            "{origin}: not a densegpu resume checkpoint (no `{META_FORMAT}: {CHECKPOINT_FORMAT}` metadata); \
             a weights file loads with load_weights"
        )));
    }
    let json = weights
        .metadata
        .get(META_TRAINING)
        .ok_or_else(|| Error::Data(format!("{origin}: the checkpoint has no `{META_TRAINING}` metadata")))?;
    let state: TrainingJson = serde_json::from_str(json)
        .map_err(|e| Error::Data(format!("{origin}: corrupt `{META_TRAINING}` metadata: {e}")))?;
    Ok((weights, state.into(), momentum))
}

/// Reads a resume checkpoint (see [`checkpoint_from_bytes`]).
pub fn load_checkpoint(path: &Path) -> Result<(Weights, TrainingState, Vec<NamedTensor>)> {
    checkpoint_from_parsed(parse_file(path)?, &path.display().to_string())
}

/// Puts a session where the checkpoint's run stood: weights, running statistics, momentum
/// buffers, and the step and batch counters. Everything is checked before anything is written.
/// The trainer restores the rest of `state` (epoch, RNG, learning rate) itself.
pub async fn apply_checkpoint(
    session: &mut Session,
    weights: &Weights,
    state: &TrainingState,
    momentum: &[NamedTensor],
) -> Result<()> {
    let (params, states) = weights_for_graph(&session.graph, weights)?;
    let extra: Vec<String> = {
        let model: std::collections::HashSet<&str> =
            session.graph.params.iter().flat_map(|g| g.tensors.iter().map(|t| t.name.as_str())).collect();
        momentum
            .iter()
            .filter(|t| !model.contains(t.name.as_str()))
            .map(|t| format!("{MOMENTUM_PREFIX}{}", t.name))
            .collect()
    };
    if !extra.is_empty() {
        return Err(Error::Data(format!(
            "momentum for {} tensor(s) the model does not have: {}",
            extra.len(),
            shown(&extra)
        )));
    }
    let buffers = gather(&session.graph.params, momentum, "momentum buffers")?;
    session.set_parameters(&params)?;
    session.set_states(&states)?;
    session.set_momentum(&buffers)?;
    session.step = state.step;
    session.batches_tracked = state.batches_tracked;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_non_finite_names_the_first_tensor_and_counts_the_rest() {
        let ok = [1.0f32, -2.0, 0.0];
        let inf = [1.0, f32::INFINITY, f32::INFINITY];
        let nan = [f32::NAN, f32::NEG_INFINITY];
        let neg = [f32::NEG_INFINITY];
        assert_eq!(describe_non_finite([("a", &ok[..])], ""), None);
        assert_eq!(
            describe_non_finite([("a", &ok[..]), ("b.running_var", &inf[..])], ""),
            Some("`b.running_var` holds inf (2 of its 3 values)".into())
        );
        assert_eq!(
            describe_non_finite([("w", &nan[..]), ("x", &inf[..])], "the momentum of "),
            Some("the momentum of `w` holds NaN (2 of its 2 values), as does 1 more tensor".into())
        );
        assert_eq!(
            describe_non_finite([("v", &neg[..]), ("x", &inf[..]), ("y", &nan[..])], ""),
            Some("`v` holds -inf (1 of its 1 values), as do 2 more tensors".into())
        );
    }

    #[test]
    fn the_data_parallel_prefix_goes_only_when_every_key_has_it() {
        let file = |names: &[&str]| {
            let data = 1.0f32.to_le_bytes().to_vec();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
                .iter()
                .map(|n| (n.to_string(), safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &data).unwrap()))
                .collect();
            safetensors::serialize(views, None).unwrap()
        };
        let names = |w: Weights| w.tensors.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let all = file(&["module.classifier.bias", "module.features.denseblock1.denselayer1.norm.1.weight"]);
        assert_eq!(
            names(weights_from_bytes(&all, "all").unwrap()),
            ["classifier.bias", "features.denseblock1.denselayer1.norm1.weight"]
        );
        let some = file(&["module.classifier.bias", "classifier.weight"]);
        assert_eq!(names(weights_from_bytes(&some, "some").unwrap()), ["classifier.weight", "module.classifier.bias"]);
    }
}

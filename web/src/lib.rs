//! The browser entry point: wasm-bindgen functions around the same engine the native examples
//! use. Nothing here computes anything the library does not; it only holds the page's state
//! between calls and turns results into JSON and errors into JS exceptions.
//!
//! The page has one model at a time, so the state is a thread-local (wasm is single-threaded).
//! An async call takes the model out of it for the duration of its GPU work and puts it back
//! after, so a second call that arrives meanwhile gets a clear "busy" error instead of a
//! borrow panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use densegpu::checkpoint::{self, NamedTensor, TrainingState};
use densegpu::data::{self, BatchLoader, Dataset, LoaderOptions, Normalization, CIFAR10_CLASSES};
use densegpu::densenet::{largest_batch, memory_plans_json, plan_training};
use densegpu::memory::arena::ArenaLimits;
use densegpu::memory::arena_limits;
use densegpu::schedule::ScheduleOptions;
use densegpu::train::softmax;
use densegpu::trainer::{LrSchedule, Trainer};
use densegpu::tune;
use densegpu::{DenseNetConfig, Error, Gpu, MemoryMode, Pass, Session, SgdHyper};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

/// The demo's images are CIFAR-sized.
const IMAGE_SIZE: usize = 32;

/// What the page asks for when it creates a model; a checkpoint keeps it (without the kernel
/// cache) so that a reloaded page can build the same model again.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ModelRequest {
    depth: u32,
    growth_rate: u32,
    mode: String,
    batch_size: u32,
    #[serde(default = "default_lr")]
    lr: f32,
    #[serde(default = "default_momentum")]
    momentum: f32,
    #[serde(default = "default_weight_decay")]
    weight_decay: f32,
    #[serde(default)]
    seed: u64,
    /// At most this many images per batch shard (fewer than the planner needs forces shards, so
    /// that a page on a generous device can show a batch split across bindings).
    #[serde(default)]
    max_shard_images: Option<u32>,
    /// The conv kernel family: `auto` (the default: tuned on this adapter), `register` or
    /// `workgroup` (forced, untimed).
    #[serde(default = "default_kernels")]
    kernels: String,
    /// `off`, `cached` (the default) or `full`, as the native `--autotune`.
    #[serde(default = "default_autotune")]
    autotune: String,
    /// The tuned choices the page kept in localStorage (see `densegpu::tune::Cache::to_json`);
    /// the reply's `kernel_cache` is the updated text to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel_cache: Option<String>,
}

/// Where the page's data came from, kept in a checkpoint so that a resume after a reload trains
/// on the same images: generated data is made again from its arguments; dropped files are not
/// kept in the tab, so the same files must be added again (their CRC-32 must match).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum DataSource {
    Generated { train: usize, test: usize, seed: u64 },
    Files { train: usize, test: usize, classes: Vec<String>, crc32: u32 },
}

impl DataSource {
    /// The source of data that was not generated: counts, classes and a CRC-32 of the training
    /// and test labels and pixels, in order.
    fn files(train: &Dataset, test: &Dataset) -> DataSource {
        let mut crc = crc32fast::Hasher::new();
        for set in [train, test] {
            crc.update(&set.images);
            for label in &set.labels {
                crc.update(&label.to_le_bytes());
            }
        }
        DataSource::Files {
            train: train.len(),
            test: test.len(),
            classes: train.classes.clone(),
            crc32: crc.finalize(),
        }
    }

    fn describe(&self) -> String {
        match self {
            DataSource::Generated { train, test, seed } => {
                format!("the generated data ({train} training and {test} test images, seed {seed})")
            }
            DataSource::Files { train, test, classes, .. } => {
                format!("added files: {train} training and {test} test images of the classes {}", classes.join(", "))
            }
        }
    }
}

/// The checkpoint's `extra` entries that only the page reads.
const WEB_REQUEST: &str = "web_model_request";
const WEB_DATA: &str = "web_data";

fn default_kernels() -> String {
    "auto".to_string()
}
fn default_autotune() -> String {
    "cached".to_string()
}

fn default_lr() -> f32 {
    0.1
}
fn default_momentum() -> f32 {
    0.9
}
fn default_weight_decay() -> f32 {
    1e-4
}

struct Model {
    /// The session, its loader and where training stands; open-ended, at a constant learning
    /// rate.
    trainer: Trainer,
    config: DenseNetConfig,
    mode: MemoryMode,
    classes: Vec<String>,
    /// What built it, for [`export_checkpoint`] (the kernel cache left out).
    request: ModelRequest,
    data: DataSource,
}

#[derive(Default)]
struct Demo {
    gpu: Option<Arc<Gpu>>,
    train: Option<Dataset>,
    test: Option<Dataset>,
    /// Set with the data by [`use_generated_data`]; `None` for added files (see
    /// [`DataSource::files`]).
    generated: Option<DataSource>,
    /// `None` while an async call has it out, or before `create_model`.
    model: Option<Model>,
    busy: bool,
}

thread_local! {
    static DEMO: RefCell<Demo> = RefCell::new(Demo::default());
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Runs `f` with the model taken out of the shared state and puts it back afterwards, even
/// when `f` fails, so one failed step never loses the trained weights.
async fn with_model<T, F>(f: F) -> Result<T, JsError>
where
    F: AsyncFnOnce(&mut Model) -> densegpu::Result<T>,
{
    let mut model = DEMO.with_borrow_mut(|d| {
        if d.busy {
            return Err(js_error("the model is busy with another operation; wait for it to finish"));
        }
        let model = d.model.take().ok_or_else(|| js_error("no model yet: create one first"))?;
        d.busy = true;
        Ok(model)
    })?;
    let result = f(&mut model).await;
    DEMO.with_borrow_mut(|d| {
        d.model = Some(model);
        d.busy = false;
    });
    result.map_err(js_error)
}

fn limits(gpu: Option<&Gpu>) -> ArenaLimits {
    match gpu {
        Some(g) => arena_limits(g.max_binding_bytes()),
        None => ArenaLimits::WEBGPU_DEFAULT,
    }
}

/// Installs the panic hook so a Rust panic shows its message in the console.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Sets the page's conv kernels for a new model (`kernels`: auto, register or workgroup) and,
/// for `auto`, tunes them on this adapter with the choices in `cache` (JSON, as kept in
/// localStorage). Returns `{family, forced, shapes, timed, seconds, workgroup, register,
/// line}` (`family` is `mixed` when the tuning chose both) and the updated cache text.
async fn choose_kernels(
    session: &Session,
    kernels: &str,
    autotune: tune::Autotune,
    cache: Option<&str>,
) -> Result<(serde_json::Value, Option<String>), JsError> {
    let gpu = &session.gpu;
    tune::set_kernels(gpu, kernels).map_err(js_error)?;
    // The page's device outlives its models: a model asked to run untuned must not inherit
    // what an earlier model's tuning chose.
    if autotune == tune::Autotune::Off {
        gpu.clear_kernel_choices();
    }
    if kernels != "auto" {
        return Ok((serde_json::json!({ "family": kernels, "forced": true }), None));
    }
    let mut cache = tune::Cache::from_json(cache.unwrap_or_default());
    let start = js_sys::Date::now();
    let tuned = tune::tune_with(session, Pass::Train, autotune, &mut cache, &mut |_| {}).await.map_err(js_error)?;
    let seconds = (js_sys::Date::now() - start) / 1000.0;
    let (register, workgroup) = tune::family_counts(&tuned);
    let family = match (register, workgroup) {
        (0, 0) => gpu.default_family().name(),
        (_, 0) => "register",
        (0, _) => "workgroup",
        _ => "mixed",
    };
    let timed = tuned.iter().filter(|t| t.source == tune::Source::Timed).count();
    let info = serde_json::json!({
        "family": family,
        "forced": false,
        "shapes": tuned.len(),
        "timed": timed,
        "seconds": seconds,
        "clock": tune::clock(gpu),
        "workgroup": workgroup,
        "register": register,
        "line": tune::summary(gpu, &tuned, seconds),
        "timings": tuned.iter().filter(|t| !t.timings.is_empty()).map(|t| serde_json::json!({
            "key": t.key,
            "chosen": t.chosen,
            "seconds": t.timings.iter().map(|m| (m.candidate, m.seconds)).collect::<HashMap<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    Ok((info, Some(cache.to_json())))
}

/// Opens the browser's WebGPU adapter. Returns `{adapter, max_binding_bytes, kernels}` as
/// JSON; `kernels` names the adapter type's default conv kernel family (`register` on a
/// software adapter such as SwiftShader, `workgroup` on a GPU), which a model runs where
/// tuning has not chosen otherwise (see `create_model`).
#[wasm_bindgen]
pub async fn init_gpu() -> Result<String, JsError> {
    let gpu = Arc::new(Gpu::new().await.map_err(js_error)?);
    let info = serde_json::json!({
        "adapter": gpu.describe(),
        "max_binding_bytes": gpu.max_binding_bytes(),
        "kernels": gpu.default_family().name(),
    });
    DEMO.with_borrow_mut(|d| d.gpu = Some(gpu));
    Ok(info.to_string())
}

/// The training memory plan of all three modes for a DenseNet-BC, as JSON in bytes: the
/// same value `cargo run --example memory -- --json` prints for the same config, batch and
/// binding limit. Uses the device's binding limit once [`init_gpu`] has run, else WebGPU's
/// default.
#[wasm_bindgen]
pub fn memory_plans(depth: u32, growth_rate: u32, classes: u32, batch_size: u32) -> Result<String, JsError> {
    let config = DenseNetConfig::cifar_bc(depth, growth_rate, classes).map_err(js_error)?;
    let limits = DEMO.with_borrow(|d| limits(d.gpu.as_deref()));
    Ok(memory_plans_json(&config, batch_size, &limits, None).to_string())
}

/// Replaces the data with the built-in generated set (10 classes of shapes and patterns).
#[wasm_bindgen]
pub fn use_generated_data(train_len: usize, test_len: usize, seed: u64) -> Result<String, JsError> {
    let set = data::synthetic(train_len, test_len, seed);
    let summary = set_data(set.train, set.test)?;
    DEMO.with_borrow_mut(|d| d.generated = Some(DataSource::Generated { train: train_len, test: test_len, seed }));
    Ok(summary)
}

/// Adds the records of one CIFAR-10 binary batch file (`data_batch_N.bin` or
/// `test_batch.bin`) to the data, holding out every tenth image for testing.
#[wasm_bindgen]
pub fn add_cifar_batch(bytes: &[u8], file_name: &str) -> Result<String, JsError> {
    let parsed = data::parse_cifar10_batch(bytes, file_name).map_err(js_error)?;
    let classes: Vec<String> = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    append(&classes, &parsed.labels, |i| parsed.image(i).to_vec(), parsed.len())
}

/// Adds one PNG or JPEG file of class `class_name` (the name of the folder it was in). It must
/// be 32x32, as in the native image-folder format.
#[wasm_bindgen]
pub fn add_image(bytes: &[u8], file_name: &str, class_name: &str) -> Result<String, JsError> {
    let pixels = data::decode_image(bytes, file_name, IMAGE_SIZE, IMAGE_SIZE).map_err(js_error)?;
    // Dropped images replace the generated set rather than join its classes.
    let known = DEMO.with_borrow(|d| d.train.as_ref().filter(|t| !is_generated(t)).map(|t| t.classes.clone()));
    let mut classes = known.unwrap_or_default();
    if !classes.iter().any(|c| c == class_name) {
        classes.push(class_name.to_string());
    }
    let label = classes.iter().position(|c| c == class_name).unwrap() as u32;
    append(&classes, &[label], |_| pixels.clone(), 1)
}

fn is_generated(set: &Dataset) -> bool {
    set.classes.iter().eq(data::SYNTHETIC_CLASSES.iter())
}

/// Forgets all data.
#[wasm_bindgen]
pub fn clear_data() {
    DEMO.with_borrow_mut(|d| {
        d.train = None;
        d.test = None;
        d.generated = None;
    });
}

fn set_data(train: Dataset, test: Dataset) -> Result<String, JsError> {
    let summary = data_summary(&train, &test);
    DEMO.with_borrow_mut(|d| {
        d.train = Some(train);
        d.test = Some(test);
    });
    Ok(summary)
}

fn data_summary(train: &Dataset, test: &Dataset) -> String {
    serde_json::json!({
        "train": train.len(), "test": test.len(), "classes": train.classes,
        "class_counts": train.class_counts(),
    })
    .to_string()
}

/// Appends `count` images (image `i` from `pixels(i)`, label `labels[i]`) under `classes`,
/// every tenth one to the test set. Generated data is replaced, not mixed with.
fn append(
    classes: &[String],
    labels: &[u32],
    pixels: impl Fn(usize) -> Vec<u8>,
    count: usize,
) -> Result<String, JsError> {
    DEMO.with_borrow_mut(|d| {
        let fresh = || Dataset::empty(classes.to_vec(), IMAGE_SIZE, IMAGE_SIZE);
        let generated = d.train.as_ref().is_some_and(is_generated);
        let (mut train, mut test) = match (d.train.take(), d.test.take()) {
            (Some(tr), Some(te)) if !generated => (tr, te),
            _ => (fresh(), fresh()),
        };
        if !train.classes.iter().zip(classes).all(|(a, b)| a == b) {
            return Err(js_error(format!(
                "these images use the classes {classes:?}, but the data so far has {:?}; clear the data first",
                train.classes
            )));
        }
        train.classes = classes.to_vec();
        test.classes = classes.to_vec();
        let first = train.len() + test.len();
        for (i, &label) in labels.iter().enumerate().take(count) {
            let into = if (first + i) % 10 == 9 { &mut test } else { &mut train };
            into.images.extend(pixels(i));
            into.labels.push(label);
        }
        let summary = data_summary(&train, &test);
        d.train = Some(train);
        d.test = Some(test);
        d.generated = None;
        Ok(summary)
    })
}

/// Where the page's current data came from; `None` without data.
fn data_source(d: &Demo) -> Option<DataSource> {
    match (&d.train, &d.test, &d.generated) {
        (Some(_), Some(_), Some(generated)) => Some(generated.clone()),
        (Some(train), Some(test), None) => Some(DataSource::files(train, test)),
        _ => None,
    }
}

/// Creates a DenseNet-BC for the current data from a JSON request
/// `{depth, growth_rate, mode, batch_size, lr?, momentum?, weight_decay?, seed?,
/// max_shard_images?}`.
/// The training plan is checked against the device first: a batch that does not fit gives
/// an error naming the largest batch that does. Returns the model's summary as JSON.
#[wasm_bindgen]
pub async fn create_model(request_json: &str) -> Result<String, JsError> {
    let request: ModelRequest =
        serde_json::from_str(request_json).map_err(|e| js_error(format!("bad model request {request_json}: {e}")))?;
    let mode: MemoryMode = request.mode.parse().map_err(js_error)?;
    let autotune: tune::Autotune = request.autotune.parse().map_err(js_error)?;
    let sgd =
        SgdHyper { lr: request.lr, momentum: request.momentum, weight_decay: request.weight_decay, nesterov: true };
    densegpu::train::check_sgd(&sgd).map_err(js_error)?;
    let (gpu, train, source) = DEMO.with_borrow_mut(|d| {
        if d.busy {
            return Err(js_error("the model is busy; stop training before creating a new one"));
        }
        let gpu = d.gpu.clone().ok_or_else(|| js_error("WebGPU is not initialised yet"))?;
        let train =
            d.train.clone().ok_or_else(|| js_error("no data yet: use the generated data or drop some images"))?;
        let source = data_source(d).expect("the page has data");
        Ok((gpu, train, source))
    })?;
    let classes = train.classes.clone();
    let config =
        DenseNetConfig::cifar_bc(request.depth, request.growth_rate, classes.len() as u32).map_err(js_error)?;
    let limits = limits(Some(&gpu));
    let plan = plan_training(&config, request.batch_size, mode, &limits, None).map_err(js_error)?;
    if train.len() < request.batch_size as usize {
        return Err(js_error(format!(
            "the training data has {} images, fewer than one batch of {}: add data or lower the batch size",
            train.len(),
            request.batch_size
        )));
    }
    let graph = config.build(request.batch_size, mode).map_err(js_error)?;
    // The old model goes only now, once the new one is known to fit: a refused request
    // keeps what was trained. Its GPU memory is freed before the new arena is allocated.
    DEMO.with_borrow_mut(|d| d.model = None);
    let mut session = Session::new(gpu, graph, request.seed).await.map_err(js_error)?;
    if request.max_shard_images.is_some() {
        let options = ScheduleOptions { max_shard_images: request.max_shard_images, ..*session.schedule_options() };
        session.set_schedule_options(options);
    }
    // Before the arena: the program recorded with it launches the chosen kernels.
    let (kernels, kernel_cache) =
        choose_kernels(&session, &request.kernels, autotune, request.kernel_cache.as_deref()).await?;
    // Allocating the arena now turns a device that refuses the memory into an error here,
    // with advice, rather than in the first step.
    if let Err(e) = session.prepare(Pass::Train).await {
        return Err(js_error(refused_memory(e, &config, request.batch_size, mode, &limits, plan.report().total)));
    }
    let options = LoaderOptions { prefetch: 0, ..LoaderOptions::train(request.batch_size as usize, request.seed) };
    let loader = BatchLoader::new(train, options).map_err(js_error)?;
    let summary = serde_json::json!({
        "parameters": session.graph.parameter_count(),
        "mode": mode.name(),
        "batch_size": request.batch_size,
        "classes": classes,
        "plan": memory_plans_json(&config, request.batch_size, &limits, None)["modes"]
            .as_array()
            .and_then(|m| m.iter().find(|p| p["mode"] == mode.name()).cloned()),
        "allocated_bytes": session.allocated_bytes(),
        "shards": session.memory_plan(Pass::Train).map_err(js_error)?.shards.sizes,
        "kernels": kernels,
        "kernel_cache": kernel_cache,
    });
    let trainer = Trainer::new(session, loader, LrSchedule::constant(sgd)).map_err(js_error)?;
    let request = ModelRequest { kernel_cache: None, ..request };
    let model = Model { trainer, config, mode, classes, request, data: source };
    DEMO.with_borrow_mut(|d| d.model = Some(model));
    Ok(summary.to_string())
}

/// A device's refusal of memory, with the largest batch whose plan needs at most half of what
/// was refused: the plan is exact, the device's own budget is not known.
fn refused_memory(
    e: Error,
    config: &DenseNetConfig,
    batch: u32,
    mode: MemoryMode,
    limits: &ArenaLimits,
    planned: u64,
) -> String {
    match e {
        Error::OutOfMemory(_) | Error::Device(_) => {
            let advice = match largest_batch(config, mode, limits, Some(planned / 2)).filter(|&b| b < batch) {
                Some(b) => format!("try a batch of {b} or less, or a leaner memory mode"),
                None => "try a smaller model or a leaner memory mode".to_string(),
            };
            format!("the device refused the {planned} bytes that batch {batch} needs in {mode} mode ({e}); {advice}")
        }
        other => other.to_string(),
    }
}

/// Runs one training step on the next batch. Returns
/// `{step, epoch, epoch_ended, loss, batch_accuracy, allocated_bytes}` as JSON (`epoch_ended`:
/// this was the epoch's last batch, when the page keeps a checkpoint). A step that diverges (a
/// loss, gradient, weight or running statistic NaN or infinite) stops with an error that names
/// the tensor and says to lower the learning rate; the model is kept.
#[wasm_bindgen]
pub async fn train_step() -> Result<String, JsError> {
    with_model(async |m: &mut Model| {
        let lr = m.trainer.next_sgd().lr;
        let r = match m.trainer.step().await {
            Ok(r) => r,
            Err(e @ Error::Diverged { .. }) => {
                // A diverging rate can be 1e30: scientific notation, not 31 digits.
                let lr = if lr >= 1e6 { format!("{lr:e}") } else { lr.to_string() };
                return Err(Error::Training(format!("{e}: lower the learning rate (now {lr}) and train again")));
            }
            Err(e) => return Err(e),
        };
        Ok(serde_json::json!({
            "step": r.step,
            "epoch": r.epoch,
            "epoch_ended": r.epoch_ended,
            "loss": r.loss,
            "batch_accuracy": r.correct as f64 / r.images as f64,
            "allocated_bytes": m.trainer.session().allocated_bytes(),
        })
        .to_string())
    })
    .await
}

/// Runs one training step on the next batch with every launch timed (see `densegpu::profile`):
/// it trains as any other step. Returns `{step, loss, report, trace, launch_seconds,
/// device_span, dispatches}`: the report as the native `--profile` prints it (against this
/// adapter's ceiling, measured now with `densegpu::peak`), and the Chrome trace as an object,
/// which the page offers as a download for Perfetto or chrome://tracing.
#[wasm_bindgen]
pub async fn profile_step() -> Result<String, JsError> {
    with_model(async |m: &mut Model| {
        let step = m.trainer.session().step;
        m.trainer.profile_step(step);
        let r = m.trainer.step().await?;
        let profile =
            m.trainer.take_profile().ok_or_else(|| Error::Training("the step ran without its profile".into()))?;
        let peak = densegpu::peak::measure(&m.trainer.session().gpu).await?;
        Ok(serde_json::json!({
            "step": r.step,
            "loss": r.loss,
            "report": profile.report(Some(&peak)),
            "trace": profile.chrome_trace(),
            "launch_seconds": profile.launch_seconds(),
            "device_span": profile.device_span,
            "dispatches": profile.dispatches.len(),
        })
        .to_string())
    })
    .await
}

/// Eval-mode accuracy and loss on the held-out images: `{loss, accuracy, images}`. Frees the
/// inference arena again afterwards.
#[wasm_bindgen]
pub async fn evaluate() -> Result<String, JsError> {
    let test = DEMO.with_borrow(|d| d.test.clone()).filter(|t| !t.is_empty());
    let test = test.ok_or_else(|| js_error("there are no held-out images to evaluate on"))?;
    with_model(async |m: &mut Model| {
        let e = m.trainer.evaluate(&test).await?;
        Ok(serde_json::json!({ "loss": e.loss, "accuracy": e.accuracy, "images": e.images }).to_string())
    })
    .await
}

#[derive(Serialize)]
struct Prediction {
    class: String,
    probability: f64,
}

/// Classifies one image given as RGBA pixels of `width` x `height` (a canvas's `ImageData`),
/// which must be the model's 32x32. Returns the classes with their probabilities, most
/// likely first, as JSON.
#[wasm_bindgen]
pub async fn classify_rgba(rgba: &[u8], width: usize, height: usize) -> Result<String, JsError> {
    if width != IMAGE_SIZE || height != IMAGE_SIZE || rgba.len() != 4 * width * height {
        return Err(js_error(format!(
            "the image is {width}x{height} with {} bytes, but the model takes {IMAGE_SIZE}x{IMAGE_SIZE} RGBA ({} bytes); scale it first",
            rgba.len(),
            4 * IMAGE_SIZE * IMAGE_SIZE
        )));
    }
    let plane = width * height;
    let mut chw = vec![0u8; 3 * plane];
    for (p, px) in rgba.chunks_exact(4).enumerate() {
        for c in 0..3 {
            chw[c * plane + p] = px[c];
        }
    }
    classify_chw(chw).await
}

/// Classifies a 32x32 PNG or JPEG file.
#[wasm_bindgen]
pub async fn classify_file(bytes: &[u8], file_name: &str) -> Result<String, JsError> {
    classify_chw(data::decode_image(bytes, file_name, IMAGE_SIZE, IMAGE_SIZE).map_err(js_error)?).await
}

async fn classify_chw(chw: Vec<u8>) -> Result<String, JsError> {
    with_model(async |m: &mut Model| {
        let session = m.trainer.session_mut();
        let batch = session.graph.batch as usize;
        let mut image = vec![0.0f32; chw.len()];
        Normalization::CIFAR10.apply(&chw, &mut image);
        // The eval program has the training batch size: repeat the image to fill it.
        let images: Vec<f32> = image.iter().copied().cycle().take(image.len() * batch).collect();
        let (logits, _) = session.eval_batch(&images, &vec![0; batch]).await?;
        session.release(Pass::Eval);
        let k = m.classes.len();
        let mut ranked: Vec<Prediction> = softmax(&logits[..k])
            .into_iter()
            .zip(&m.classes)
            .map(|(probability, class)| Prediction { class: class.clone(), probability })
            .collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Ok(serde_json::to_string(&ranked).expect("predictions serialise"))
    })
    .await
}

/// The trained model as an ONNX file (eval mode, normalised input, CIFAR-10 normalisation in
/// the metadata), as the native `--onnx` flag writes it.
#[wasm_bindgen]
pub async fn export_onnx() -> Result<js_sys::Uint8Array, JsError> {
    let bytes = with_model(async |m: &mut Model| {
        let session = m.trainer.session();
        let tensors = session.state_dict().await?;
        let options = densegpu::onnx::ExportOptions::default();
        densegpu::onnx::export(&session.graph, Some(&m.config), &tensors, &options)
    })
    .await?;
    Ok(js_sys::Uint8Array::from(&bytes[..]))
}

/// The weights as safetensors with torchvision names, as the native trainer saves them.
#[wasm_bindgen]
pub async fn export_safetensors() -> Result<js_sys::Uint8Array, JsError> {
    let bytes = with_model(async |m: &mut Model| {
        let tensors: Vec<NamedTensor> = checkpoint::session_weights(m.trainer.session()).await?;
        let mut extra = HashMap::new();
        extra.insert("classes".to_string(), m.classes.join(","));
        checkpoint::weights_to_bytes_with_metadata(&m.config, &tensors, &extra)
    })
    .await?;
    Ok(js_sys::Uint8Array::from(&bytes[..]))
}

/// Loads weights from a safetensors file (the demo's own, the native trainer's, or a
/// torchvision-named export) into the current model. Every tensor must match the model.
#[wasm_bindgen]
pub async fn load_safetensors(bytes: &[u8], file_name: &str) -> Result<String, JsError> {
    let weights = checkpoint::weights_from_bytes(bytes, file_name).map_err(js_error)?;
    with_model(async |m: &mut Model| {
        let session = m.trainer.session_mut();
        checkpoint::apply_weights(session, &weights)?;
        if let Some(count) = weights.batches_tracked {
            session.batches_tracked = count;
        }
        Ok(serde_json::json!({ "tensors": weights.tensors.len() }).to_string())
    })
    .await
}

/// The model's resume checkpoint as bytes, for the tab's storage: the native trainer's format
/// (weights, momentum, the step, the batch cursor of the epoch and its running sums), plus the
/// model request and where the data came from, so that [`resume_checkpoint`] can rebuild all of
/// it after a reload. Errors when a weight, statistic or momentum is not finite (nothing to
/// keep), or while the model is busy.
#[wasm_bindgen]
pub async fn export_checkpoint() -> Result<js_sys::Uint8Array, JsError> {
    let bytes = with_model(async |m: &mut Model| {
        if let Some(what) = checkpoint::non_finite_state(m.trainer.session()).await? {
            return Err(Error::Training(format!("{what}: a diverged model is not saved")));
        }
        let mut state = TrainingState::default();
        m.trainer.record(&mut state);
        state.extra.insert(WEB_REQUEST.into(), to_json(&m.request));
        state.extra.insert(WEB_DATA.into(), to_json(&m.data));
        checkpoint::checkpoint_to_bytes(m.trainer.session(), &m.config, &state).await
    })
    .await?;
    Ok(js_sys::Uint8Array::from(&bytes[..]))
}

/// The page's records as JSON: plain data, so encoding cannot fail.
fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("the page's records serialise")
}

/// The page's own records in a checkpoint from [`export_checkpoint`].
fn saved_records(state: &TrainingState, origin: &str) -> densegpu::Result<(ModelRequest, DataSource)> {
    let entry = |key: &str| {
        state.extra.get(key).ok_or_else(|| {
            Error::Data(format!("{origin}: no `{key}` entry: not a checkpoint of this page (export_checkpoint)"))
        })
    };
    let request = serde_json::from_str(entry(WEB_REQUEST)?)
        .map_err(|e| Error::Data(format!("{origin}: corrupt `{WEB_REQUEST}`: {e}")))?;
    let data = serde_json::from_str(entry(WEB_DATA)?)
        .map_err(|e| Error::Data(format!("{origin}: corrupt `{WEB_DATA}`: {e}")))?;
    Ok((request, data))
}

/// What a checkpoint from [`export_checkpoint`] holds, without building anything: `{step,
/// epoch, batch_in_epoch, request, data, data_text, data_ready}`, where `data_ready` says
/// whether [`resume_checkpoint`] can go on with the page's data as it is (generated data is
/// always made again), and `data_text` describes what it needs.
#[wasm_bindgen]
pub fn checkpoint_info(bytes: &[u8]) -> Result<String, JsError> {
    let origin = "the checkpoint kept in this tab";
    let (_, state, _) = checkpoint::checkpoint_from_bytes(bytes, origin).map_err(js_error)?;
    let (request, data) = saved_records(&state, origin).map_err(js_error)?;
    let ready = matches!(data, DataSource::Generated { .. }) || DEMO.with_borrow(data_source).as_ref() == Some(&data);
    Ok(serde_json::json!({
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "request": request,
        "data": data,
        "data_text": data.describe(),
        "data_ready": ready,
    })
    .to_string())
}

/// Builds the model of a checkpoint from [`export_checkpoint`] and puts it where the saved run
/// stood, so that the next [`train_step`] continues it bit for bit. Generated data is made again;
/// added files must be added again first (counts, classes and CRC-32 are compared).
/// `kernel_cache` is the kept tuning, as for [`create_model`]. Returns `{model, data, step,
/// epoch}`: the model summary as [`create_model`] gives it and the data summary. Errors name
/// what does not match; the page's previous model is then kept.
#[wasm_bindgen]
pub async fn resume_checkpoint(bytes: &[u8], kernel_cache: Option<String>) -> Result<String, JsError> {
    let origin = "the checkpoint kept in this tab";
    let (weights, state, momentum) = checkpoint::checkpoint_from_bytes(bytes, origin).map_err(js_error)?;
    let (request, data) = saved_records(&state, origin).map_err(js_error)?;
    let summary = match &data {
        DataSource::Generated { train, test, seed } => use_generated_data(*train, *test, *seed)?,
        DataSource::Files { .. } => {
            let (current, summary) = DEMO.with_borrow(|d| {
                let summary = d.train.as_ref().zip(d.test.as_ref()).map(|(tr, te)| data_summary(tr, te));
                (data_source(d), summary)
            });
            if current.as_ref() != Some(&data) {
                let holds = current.map_or("no data".to_string(), |c| c.describe());
                return Err(js_error(format!(
                    "{origin} was trained on {}, but the page holds {holds}. The tab keeps the model, not the files: \
                     add the same files again (clear the data first), then resume",
                    data.describe()
                )));
            }
            summary.expect("the page has data")
        }
    };
    let request = ModelRequest { kernel_cache, ..request };
    let model = create_model(&serde_json::to_string(&request).map_err(js_error)?).await?;
    let resumed = with_model(async |m: &mut Model| {
        checkpoint::apply_checkpoint(m.trainer.session_mut(), &weights, &state, &momentum).await?;
        if let Some(what) = checkpoint::non_finite_state(m.trainer.session()).await? {
            return Err(Error::Data(format!("{origin}: {what}; it cannot be resumed")));
        }
        m.trainer.restore(&state)?;
        Ok((m.trainer.session().step, m.trainer.epoch()))
    })
    .await;
    let (step, epoch) = match resumed {
        Ok(at) => at,
        Err(e) => {
            // A half-restored model must not be trained on as if it were the saved run.
            DEMO.with_borrow_mut(|d| d.model = None);
            return Err(e);
        }
    };
    let model: serde_json::Value = serde_json::from_str(&model).map_err(js_error)?;
    let data: serde_json::Value = serde_json::from_str(&summary).map_err(js_error)?;
    Ok(serde_json::json!({ "model": model, "data": data, "step": step, "epoch": epoch }).to_string())
}

/// Frees the model and its GPU memory.
#[wasm_bindgen]
pub fn drop_model() -> Result<(), JsError> {
    DEMO.with_borrow_mut(|d| {
        if d.busy {
            return Err(js_error("the model is busy; wait for the current step to finish"));
        }
        d.model = None;
        Ok(())
    })
}

/// Bytes the model holds on the device right now (parameters, optimizer state and arenas).
#[wasm_bindgen]
pub fn allocated_bytes() -> f64 {
    DEMO.with_borrow(|d| d.model.as_ref().map_or(0.0, |m| m.trainer.session().allocated_bytes() as f64))
}

/// The model's training mode and config, for the page's header.
#[wasm_bindgen]
pub fn model_info() -> Option<String> {
    DEMO.with_borrow(|d| {
        d.model.as_ref().map(|m| {
            serde_json::json!({ "mode": m.mode.name(), "config": m.config, "step": m.trainer.session().step })
                .to_string()
        })
    })
}

/// Checks this device's kernels against the CPU reference on random inputs (forward and
/// backward of every op family). Returns `{passed, checks: [{name, shape, rel_err, passed,
/// detail}]}` as JSON.
#[wasm_bindgen]
pub async fn run_selftest() -> Result<String, JsError> {
    let gpu = DEMO.with_borrow(|d| d.gpu.clone()).ok_or_else(|| js_error("WebGPU is not initialised yet"))?;
    let checks = densegpu::selftest::run(&gpu).await;
    let passed = densegpu::selftest::all_passed(&checks);
    Ok(serde_json::json!({ "passed": passed, "checks": checks }).to_string())
}

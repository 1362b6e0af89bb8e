//! Autotune: which conv kernel (the register family or a workgroup candidate) runs fastest for
//! each conv shape of a model on this adapter, measured on the adapter and cached.
//!
//! On first use of an adapter and a shape, [`tune`] times every candidate the adapter's limits
//! can run on that shape (wall clock around the launches with the device polled to idle; the
//! device is requested without timestamp queries, which not every adapter offers) and records
//! the fastest in the [`Gpu`]'s kernel choices, which every later recorded program reads (see
//! [`crate::ops::conv::kernels::choose`]). The choices are kept per adapter (name, backend,
//! device type, driver: [`Gpu::describe`]) in `kernels.json` in the user's cache folder (in
//! the browser, the page keeps [`Cache::to_json`] in localStorage), so later runs read them
//! and time nothing. [`tune_with`] is the asynchronous core both use; [`tune`] is its native,
//! blocking form with the cache file.
//!
//! The fused BN-ReLU forms share their direction's choice and are timed through their plain
//! form, so a fused and an unfused launch of one conv always sum in the same order.

use crate::error::{Error, Result};
use crate::gpu::{Family, Gpu, View};
use crate::ops::conv::kernels::{self as conv, ConvDirection, ConvKernel};
use crate::ops::conv::{Conv2dShape, ConvLaunch};
use crate::ops::LaunchOp;
use crate::{Pass, Session};
use std::collections::BTreeMap;
use std::path::PathBuf;
// std's Instant panics in a browser; this one reads performance.now() there and is std's
// elsewhere.
use web_time::Instant;

/// How kernels are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Autotune {
    /// No timing: the device type's default family (register on CPU drivers, workgroup on
    /// GPUs) with its default candidate.
    Off,
    /// Time only the shapes the cache does not hold for this adapter (the default).
    #[default]
    Cached,
    /// Time every shape again, and replace the cache's entries.
    Full,
}

impl std::str::FromStr for Autotune {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(Autotune::Off),
            "cached" => Ok(Autotune::Cached),
            "full" => Ok(Autotune::Full),
            other => Err(format!("unknown autotune setting `{other}`: use off, cached or full")),
        }
    }
}

/// One candidate's measurement.
#[derive(Clone, Debug)]
pub struct Timing {
    /// `register` or a workgroup candidate's name.
    pub candidate: &'static str,
    /// Mean seconds per launch over the timed rounds.
    pub seconds: f64,
}

/// What tuning decided for one conv shape and direction.
#[derive(Clone, Debug)]
pub struct Tuned {
    /// The tuning key ([`ConvDirection::tuning_key`]).
    pub key: String,
    /// Every candidate timed, in the order timed; empty unless `source` is `Timed`.
    pub timings: Vec<Timing>,
    /// The candidate now chosen.
    pub chosen: String,
    /// Where the choice came from.
    pub source: Source,
}

/// Where a tuned choice came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This adapter's cache held it.
    Cache,
    /// The candidates were timed now.
    Timed,
    /// One candidate was left after the families out of the race in this shape's class (see
    /// [`tune`]), so nothing needed timing.
    OnlyCandidate,
}

/// Whether each candidate runs once untimed first. A browser compiles a pipeline in the
/// background and its first launch waits for the compile: in Chromium on SwiftShader that
/// charged the register kernels 2-8 s of compiling and handed 7 of 26 shapes to the slower
/// family. Natively the pipeline is compiled when the launch is recorded, before the clock.
const WARM_UP: bool = cfg!(target_arch = "wasm32");

/// Launches timed per candidate that is still in the race after its first.
const ROUNDS: usize = 2;

/// A family whose best candidate measures this many times the best time of a shape is out of
/// the race for the other shapes of its class (see [`class`]): it will not win there either,
/// and on a CPU driver a badly fitting kernel takes a second a launch. A single candidate whose
/// first launch is this slow gets no further rounds. On lavapipe the workgroup family runs 2.4
/// to 25 times slower than the register family at DenseNet-BC-100's shapes (BENCHMARKS.md).
const HOPELESS: f64 = 2.0;

/// Tunes every conv of `session`'s program for `pass`: see the module documentation.
/// `each` is called after every shape (for progress and reports). Returns what was decided,
/// one entry per tuning key. With [`Autotune::Off`] it times nothing and returns nothing.
///
/// Shapes are taken class by class (direction, kernel geometry, map size), the cheapest first;
/// a family that is hopeless on one shape of a class (see [`HOPELESS`]) is not timed on the
/// rest, and a shape left with one candidate is not timed at all. On lavapipe this keeps a
/// DenseNet-BC-100 to one timed workgroup launch per class.
///
/// Errors: a device error while timing. A cache file that cannot be read or parsed is ignored
/// and rewritten; one that cannot be written is reported on stderr and the run goes on.
#[cfg(not(target_arch = "wasm32"))]
pub fn tune(session: &Session, pass: Pass, setting: Autotune, each: &mut dyn FnMut(&Tuned)) -> Result<Vec<Tuned>> {
    if setting == Autotune::Off {
        return Ok(Vec::new());
    }
    let mut cache = Cache::load();
    let out = crate::block_on(tune_with(session, pass, setting, &mut cache, each))?;
    // The choices already hold for this run; a cache that cannot be written (a read-only
    // home) only means the next run times again, which is no reason to stop this one.
    if let Err(e) = cache.save() {
        eprintln!("warning: {e}; the kernel choices hold for this run only");
    }
    Ok(out)
}

/// [`tune`] with the choices read from and recorded in `cache` (the caller loads and keeps
/// it: a file natively, localStorage in a browser). Errors: a device error while timing.
pub async fn tune_with(
    session: &Session,
    pass: Pass,
    setting: Autotune,
    cache: &mut Cache,
    each: &mut dyn FnMut(&Tuned),
) -> Result<Vec<Tuned>> {
    let gpu = &session.gpu;
    if setting == Autotune::Off {
        return Ok(Vec::new());
    }
    let plan = session.memory_plan(pass)?;
    let images = plan.shards.shard(0).images;
    let mut seen = BTreeMap::new();
    for launch in &plan.schedule.launches {
        let LaunchOp::Conv(l) = &launch.op else { continue };
        let (direction, shape) = match l.with_batch(images, false) {
            ConvLaunch::Forward { shape, .. } | ConvLaunch::ForwardBnRelu { shape, .. } => {
                (ConvDirection::Forward, shape)
            }
            ConvLaunch::BackwardInput { shape, .. } => (ConvDirection::BackwardInput, shape),
            ConvLaunch::BackwardWeight { shape, .. } | ConvLaunch::BackwardWeightBnRelu { shape, .. } => {
                (ConvDirection::BackwardWeight, shape)
            }
        };
        if direction.workgroup_serves(&shape) {
            seen.entry(direction.tuning_key(&shape)).or_insert((direction, shape));
        }
    }
    let mut shapes: Vec<(ConvDirection, Conv2dShape)> = seen.into_values().collect();
    shapes.sort_by_key(|(d, s)| (class(*d, s), s.flops_forward()));
    let scratch_bytes = session.schedule_options().split_scratch_bytes;
    let mut hopeless: BTreeMap<String, Vec<Family>> = BTreeMap::new();
    let mut out = Vec::new();
    for (direction, shape) in shapes {
        let out_of_race = hopeless.entry(class(direction, &shape)).or_default();
        let tuned = tune_shape(gpu, cache, direction, &shape, setting, scratch_bytes, out_of_race).await?;
        each(&tuned);
        out.push(tuned);
    }
    Ok(out)
}

/// One line on what [`tune`] did, for a trainer's log or a page, or `None` when it timed
/// nothing (every choice came from the cache): shapes timed, seconds taken, families chosen.
pub fn summary(gpu: &Gpu, tuned: &[Tuned], seconds: f64) -> Option<String> {
    let timed = tuned.iter().filter(|t| t.source == Source::Timed).count();
    if timed == 0 {
        return None;
    }
    let workgroup = tuned.iter().filter(|t| family_of(&t.chosen) == Family::Workgroup).count();
    Some(format!(
        "Tuned the conv kernels for {} in {seconds:.1} s: {timed} of {} shapes timed, {workgroup} on the workgroup family, {} on the register family",
        gpu.describe(),
        tuned.len(),
        tuned.len() - workgroup,
    ))
}

/// Shapes whose kernels rank alike: one direction, kernel geometry and map size.
fn class(direction: ConvDirection, s: &Conv2dShape) -> String {
    format!("{direction:?} {}x{}/{}p{} {}x{}", s.kh, s.kw, s.stride, s.pad, s.h, s.w)
}

/// Tunes one direction of one conv shape (see [`tune`]) with `scratch_bytes` of split scratch
/// at hand, leaving out the families in `out_of_race` (and adding to it those that prove
/// hopeless here); records the choice in `gpu` and `cache`, and returns it.
pub async fn tune_shape(
    gpu: &Gpu,
    cache: &mut Cache,
    direction: ConvDirection,
    shape: &Conv2dShape,
    setting: Autotune,
    scratch_bytes: u64,
    out_of_race: &mut Vec<Family>,
) -> Result<Tuned> {
    let adapter = gpu.describe();
    let key = direction.tuning_key(shape);
    let tuned = match cache.get(&adapter, &key) {
        Some(name) if setting != Autotune::Full => {
            Tuned { key, timings: Vec::new(), chosen: name, source: Source::Cache }
        }
        _ => {
            let mut kernels = candidates(gpu, direction, shape);
            kernels.retain(|k| !out_of_race.contains(&family(k)));
            // The device type's default first: it sets the pace the others must beat.
            kernels.sort_by_key(|k| family(k) != gpu.default_family());
            let timings = if kernels.len() == 1 {
                Vec::new()
            } else {
                time_candidates(gpu, direction, shape, scratch_bytes, &kernels).await?
            };
            let chosen = if timings.is_empty() { kernels[0].name() } else { pick(gpu, direction, &timings) };
            let best = timings.iter().map(|t| t.seconds).fold(f64::INFINITY, f64::min);
            for f in [Family::Register, Family::Workgroup] {
                let of_family = timings.iter().filter(|t| family_of(t.candidate) == f);
                let fastest = of_family.map(|t| t.seconds).fold(f64::INFINITY, f64::min);
                if fastest.is_finite() && fastest > HOPELESS * best && !out_of_race.contains(&f) {
                    out_of_race.push(f);
                }
            }
            cache.set(&adapter, &key, chosen);
            let source = if timings.is_empty() { Source::OnlyCandidate } else { Source::Timed };
            Tuned { key, timings, chosen: chosen.to_string(), source }
        }
    };
    gpu.set_kernel_choice(&tuned.key, &tuned.chosen);
    Ok(tuned)
}

fn family(k: &ConvKernel) -> Family {
    match k {
        ConvKernel::Register => Family::Register,
        ConvKernel::Workgroup(_) => Family::Workgroup,
    }
}

fn family_of(candidate: &str) -> Family {
    if candidate == ConvKernel::Register.name() {
        Family::Register
    } else {
        Family::Workgroup
    }
}

/// How much faster than the device type's default a candidate must measure to replace it: a
/// closer race is within timing noise, and keeping the default then keeps runs reproducible.
pub const MARGIN: f64 = 0.10;

/// The fastest candidate, unless the device type's default kernel (the first timed of its
/// family) is within [`MARGIN`] of it.
fn pick(gpu: &Gpu, direction: ConvDirection, timings: &[Timing]) -> &'static str {
    let best = timings.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds)).expect("a candidate was timed");
    let default = direction.default_kernel(gpu, gpu.default_family()).name();
    match timings.iter().find(|t| t.candidate == default) {
        Some(d) if d.seconds <= best.seconds * (1.0 + MARGIN) => d.candidate,
        _ => best.candidate,
    }
}

/// The candidates for `direction` of `s` this adapter can run: the register family and every
/// workgroup candidate within its limits. On a CPU driver (an adapter whose default family is
/// the register family) only the workgroup family's default candidate races the register
/// kernel: the family runs 2 to 35 times slower there (BENCHMARKS.md), and SwiftShader did not
/// finish the first launch of `gemm64x64r8` (64 unrolled accumulators) in 400 s before Chrome
/// lost the device, so timing every candidate on a CPU driver risks the run for nothing. The
/// tests still run every candidate on lavapipe.
pub fn candidates(gpu: &Gpu, direction: ConvDirection, s: &Conv2dShape) -> Vec<ConvKernel> {
    let mut out = vec![ConvKernel::Register];
    if !direction.workgroup_serves(s) {
        return out;
    }
    if gpu.default_family() == Family::Register {
        out.extend(Some(direction.default_kernel(gpu, Family::Workgroup)).filter(|k| *k != ConvKernel::Register));
    } else {
        let fitting = direction.candidates().iter().filter(|t| t.fits(&gpu.limits));
        out.extend(fitting.map(|t| ConvKernel::Workgroup(*t)));
    }
    out
}

/// Times `kernels` on zero-filled operands of shape `s` (the kernels' speed does not depend on
/// the values), in order. Pipelines compile when a launch is recorded, before its clock
/// starts (in a browser, during an untimed first launch: see [`WARM_UP`]). A candidate whose
/// first timed launch takes [`HOPELESS`] times the best so far gets no more rounds.
pub async fn time_candidates(
    gpu: &Gpu,
    direction: ConvDirection,
    s: &Conv2dShape,
    scratch_bytes: u64,
    kernels: &[ConvKernel],
) -> Result<Vec<Timing>> {
    let block = |elems: u32| gpu.storage_buffer("tuning operand", elems as u64 * 4);
    let (x, w, y) = (block(s.input_elems()).await?, block(s.weight_elems()).await?, block(s.output_elems()).await?);
    let scratch =
        if scratch_bytes > 0 { Some(gpu.storage_buffer("tuning scratch", scratch_bytes).await?) } else { None };
    fn v(b: &wgpu::Buffer) -> View<'_> {
        View::new(b, 0)
    }
    let mut out: Vec<Timing> = Vec::new();
    for &kernel in kernels {
        let dispatches = match direction {
            ConvDirection::Forward => vec![conv::forward_with(gpu, kernel, s, v(&x), v(&w), v(&y))],
            ConvDirection::BackwardInput => {
                vec![conv::backward_input_with(gpu, kernel, s, (0, s.c_in), v(&y), v(&w), v(&x), false)]
            }
            ConvDirection::BackwardWeight => {
                conv::backward_weight_with(gpu, kernel, s, v(&x), None, v(&y), v(&w), scratch.as_ref().map(v), false)
            }
        };
        let best = out.iter().map(|t| t.seconds).fold(f64::INFINITY, f64::min);
        if WARM_UP {
            run_and_wait(gpu, &dispatches, &x).await?;
        }
        let start = Instant::now();
        run_and_wait(gpu, &dispatches, &x).await?;
        let first = start.elapsed().as_secs_f64();
        if first > HOPELESS * best {
            out.push(Timing { candidate: kernel.name(), seconds: first });
            continue;
        }
        for _ in 1..ROUNDS {
            run_and_wait(gpu, &dispatches, &x).await?;
        }
        out.push(Timing { candidate: kernel.name(), seconds: start.elapsed().as_secs_f64() / ROUNDS as f64 });
    }
    Ok(out)
}

/// Runs the launches and returns once the device has finished them: natively by polling the
/// device to idle; in a browser, which cannot block, by reading one float of `any` back (its
/// mapping resolves only after the work submitted before it).
async fn run_and_wait(gpu: &Gpu, dispatches: &[crate::gpu::Dispatch], any: &wgpu::Buffer) -> Result<()> {
    gpu.run(dispatches).await?;
    #[cfg(target_arch = "wasm32")]
    return gpu.read_f32(any, 0, 1).await.map(|_| ());
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = any;
        gpu.wait()
    }
}

/// Sets how `gpu` chooses kernels from a command line's `--kernels` value: `register` or
/// `workgroup` forces that family (its default candidates), `auto` follows the tuning (or the
/// device type's default where nothing is tuned).
pub fn set_kernels(gpu: &Gpu, kernels: &str) -> Result<()> {
    let family = match kernels {
        "auto" => None,
        "register" => Some(Family::Register),
        "workgroup" => Some(Family::Workgroup),
        other => {
            return Err(Error::Config(format!("unknown kernel family `{other}`: use register, workgroup or auto")))
        }
    };
    gpu.force_family(family);
    Ok(())
}

/// The tuned choices: adapter description → tuning key → candidate name. Natively a file
/// ([`Cache::load`], [`Cache::save`]); a browser page keeps [`Cache::to_json`] in localStorage
/// and reads it back with [`Cache::from_json`].
#[derive(Default)]
pub struct Cache {
    /// The file, natively; a browser has none.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    path: Option<PathBuf>,
    entries: BTreeMap<String, BTreeMap<String, String>>,
}

impl Cache {
    /// The cache from its JSON text; malformed text reads as empty (and is replaced by the
    /// next [`Cache::to_json`]), since the cache only saves time.
    pub fn from_json(text: &str) -> Cache {
        Cache { path: None, entries: serde_json::from_str(text).unwrap_or_default() }
    }

    /// The cache as JSON text, for [`Cache::from_json`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.entries).expect("a map of strings serialises")
    }

    /// `$DENSEGPU_CACHE_DIR/kernels.json`, else `$XDG_CACHE_HOME/densegpu/kernels.json`, else
    /// `~/.cache/densegpu/kernels.json` (`%LOCALAPPDATA%\densegpu` on Windows).
    #[cfg(not(target_arch = "wasm32"))]
    fn path() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = var("DENSEGPU_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("densegpu")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("densegpu")))
            .or_else(|| var("LOCALAPPDATA").map(|d| d.join("densegpu")))?;
        Some(dir.join("kernels.json"))
    }

    /// Reads the cache file; a missing, unreadable or malformed one reads as empty (and is
    /// rewritten by [`Cache::save`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load() -> Cache {
        let path = Self::path();
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        Cache { path, ..Cache::from_json(&text) }
    }

    fn get(&self, adapter: &str, key: &str) -> Option<String> {
        self.entries.get(adapter)?.get(key).cloned()
    }

    fn set(&mut self, adapter: &str, key: &str, candidate: &str) {
        self.entries.entry(adapter.to_string()).or_default().insert(key.to_string(), candidate.to_string());
    }

    /// Writes the cache file atomically (a reader never sees half a file). Errors: the folder
    /// or the file cannot be written.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Data(format!("creating the kernel cache folder {}: {e}", dir.display())))?;
        }
        let text = self.to_json();
        crate::atomic_file::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
    }
}

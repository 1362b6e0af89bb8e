//! Autotune: which conv kernel (a register or a workgroup candidate) runs fastest for each conv
//! shape of a model on this adapter, measured on the adapter and cached.
//!
//! On first use of an adapter and a shape, [`tune`] times every candidate the adapter's limits
//! can run on that shape (with timestamp queries around the launches where the adapter has
//! them, else the wall clock with the device polled to idle: see [`clock`]) and records
//! the fastest in the [`Gpu`]'s kernel choices, which every later recorded program reads (see
//! [`crate::ops::conv::kernels::choose`]). The choices are kept per adapter (name, backend,
//! device type, driver: [`Gpu::describe`]) and candidate list in `kernels.json` in the user's cache folder (in
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
    /// The candidate's name ([`ConvKernel::name`]).
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
    /// One candidate was left after the candidates out of the race in this shape's class (see
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

/// A first launch at least this long (seconds) is timed once: the wall clock's jitter (a few
/// milliseconds of scheduling) is then well inside [`MARGIN`], and a second launch of the
/// slowest DenseNet-BC-100 shapes (a second each on lavapipe) would only lengthen tuning.
const ONE_LAUNCH_ENOUGH: f64 = 0.25;

/// A candidate that measures this many times the best time of a shape is out of the race for
/// the other shapes of its class (see [`class`]): it will not win there either, and on a CPU
/// driver a badly fitting kernel takes a second a launch. A candidate whose first launch is
/// this slow gets no further rounds. On lavapipe the workgroup family runs 2.4
/// to 25 times slower than the register family at DenseNet-BC-100's shapes (BENCHMARKS.md).
const HOPELESS: f64 = 2.0;

/// Tunes every conv of `session`'s program for `pass`: see the module documentation.
/// `each` is called after every shape (for progress and reports). Returns what was decided,
/// one entry per tuning key. With [`Autotune::Off`] it times nothing and returns nothing.
///
/// Shapes are taken class by class (direction, kernel geometry, map size), the cheapest first;
/// a candidate that is hopeless on one shape of a class (see [`HOPELESS`]) is not timed on the
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
    cache.retire_others(&gpu.describe(), &cache_section(gpu));
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
    let mut hopeless: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
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
    let (register, workgroup) = family_counts(tuned);
    Some(format!(
        "Tuned the conv kernels for {} in {seconds:.1} s: {timed} of {} shapes timed, {workgroup} on the workgroup family, {register} on the register family",
        gpu.describe(),
        tuned.len(),
    ))
}

/// How many of `tuned`'s choices are (register, workgroup) family candidates.
pub fn family_counts(tuned: &[Tuned]) -> (usize, usize) {
    let workgroup = tuned.iter().filter(|t| family_of(&t.chosen) == Family::Workgroup).count();
    (tuned.len() - workgroup, workgroup)
}

/// The cache's section for `gpu`: its adapter ([`Gpu::describe`]) and a fingerprint of this
/// build's candidates (every tile) and of [`MARGIN`]. `cached` never revisits an entry, so a
/// choice made among other candidates or under another rule must not be read as this
/// build's: with the fingerprint, a changed candidate list times the shapes again.
fn cache_section(gpu: &Gpu) -> String {
    let mut text = format!("margin {MARGIN}");
    for direction in [ConvDirection::Forward, ConvDirection::BackwardWeight] {
        for kernel in direction.kernels() {
            text.push_str(&format!("; {kernel:?}"));
        }
    }
    // FNV-1a (64-bit): the same value on every build and platform, which std's hasher does
    // not promise.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{} [kernels {hash:016x}]", gpu.describe())
}

/// Shapes whose kernels rank alike: one direction, kernel geometry and map size.
fn class(direction: ConvDirection, s: &Conv2dShape) -> String {
    format!("{direction:?} {}x{}/{}p{} {}x{}", s.kh, s.kw, s.stride, s.pad, s.h, s.w)
}

/// Tunes one direction of one conv shape (see [`tune`]) with `scratch_bytes` of split scratch
/// at hand, leaving out the candidates named in `out_of_race` (and adding to it those that
/// prove hopeless here); records the choice in `gpu` and `cache`, and returns it.
pub async fn tune_shape(
    gpu: &Gpu,
    cache: &mut Cache,
    direction: ConvDirection,
    shape: &Conv2dShape,
    setting: Autotune,
    scratch_bytes: u64,
    out_of_race: &mut Vec<&'static str>,
) -> Result<Tuned> {
    let adapter = cache_section(gpu);
    let key = direction.tuning_key(shape);
    let tuned = match cache.get(&adapter, &key) {
        Some(name) if setting != Autotune::Full => {
            Tuned { key, timings: Vec::new(), chosen: name, source: Source::Cache }
        }
        _ => {
            let mut kernels = candidates(gpu, direction, shape);
            kernels.retain(|k| !out_of_race.contains(&k.name()));
            // The device type's default first: it sets the pace the others must beat.
            let default = direction.default_kernel(gpu, gpu.default_family());
            kernels.sort_by_key(|k| (*k != default, k.family() != gpu.default_family()));
            let timings = if kernels.len() == 1 {
                Vec::new()
            } else {
                time_candidates(gpu, direction, shape, scratch_bytes, &kernels).await?
            };
            let chosen = if timings.is_empty() { kernels[0].name() } else { pick(gpu, direction, &timings) };
            let best = timings.iter().map(|t| t.seconds).fold(f64::INFINITY, f64::min);
            out_of_race.extend(timings.iter().filter(|t| t.seconds > HOPELESS * best).map(|t| t.candidate));
            cache.set(&adapter, &key, chosen);
            let source = if timings.is_empty() { Source::OnlyCandidate } else { Source::Timed };
            Tuned { key, timings, chosen: chosen.to_string(), source }
        }
    };
    gpu.set_kernel_choice(&tuned.key, &tuned.chosen);
    Ok(tuned)
}

/// The family of a candidate named in a cache or a timing: the workgroup family's if a
/// direction lists it there, else the register family's (the cache's fingerprint, see
/// [`cache_section`], keeps other builds' names out).
fn family_of(candidate: &str) -> Family {
    let workgroup = |d: ConvDirection| d.workgroup_tiles().iter().any(|t| t.name == candidate);
    if workgroup(ConvDirection::Forward) || workgroup(ConvDirection::BackwardWeight) {
        Family::Workgroup
    } else {
        Family::Register
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

/// The candidates for `direction` of `s` this adapter can run: every register and workgroup
/// candidate within its limits. On a CPU driver (an adapter whose default
/// family is the register family) only the workgroup family's default candidate races the
/// register candidates: the family runs 2 to 35 times slower there (BENCHMARKS.md), and
/// SwiftShader did not finish the first launch of `gemm64x64r8` (64 unrolled accumulators) in
/// 400 s before Chrome lost the device, so timing every candidate on a CPU driver risks the run
/// for nothing. The tests still run every candidate on lavapipe.
pub fn candidates(gpu: &Gpu, direction: ConvDirection, s: &Conv2dShape) -> Vec<ConvKernel> {
    let register = direction.kernels().into_iter().filter(|k| k.family() == Family::Register && k.fits(gpu));
    let mut out: Vec<ConvKernel> = register.collect();
    if !direction.workgroup_serves(s) {
        return out;
    }
    if gpu.default_family() == Family::Register {
        out.extend(Some(direction.default_kernel(gpu, Family::Workgroup)).filter(|k| k.family() == Family::Workgroup));
    } else {
        out.extend(direction.kernels().into_iter().filter(|k| k.family() == Family::Workgroup && k.fits(gpu)));
    }
    out
}

/// Times `kernels` on zero-filled operands of shape `s` (the kernels' speed does not depend on
/// the values), in order, by [`clock`]. Pipelines compile when a launch is recorded, before its clock
/// starts (in a browser, during an untimed first launch: see [`WARM_UP`]). A candidate whose
/// first timed launch takes [`HOPELESS`] times the best so far, or [`ONE_LAUNCH_ENOUGH`], gets
/// no more rounds.
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
        let first = launch_seconds(gpu, &dispatches, &x).await?;
        if first > HOPELESS * best || first >= ONE_LAUNCH_ENOUGH {
            out.push(Timing { candidate: kernel.name(), seconds: first });
            continue;
        }
        let mut total = first;
        for _ in 1..ROUNDS {
            total += launch_seconds(gpu, &dispatches, &x).await?;
        }
        out.push(Timing { candidate: kernel.name(), seconds: total / ROUNDS as f64 });
    }
    Ok(out)
}

/// How [`time_candidates`] measures a launch on `gpu`: `device timestamps` where the adapter
/// offers timestamp queries, else `wall clock` (around the launch, waiting for the device).
pub fn clock(gpu: &Gpu) -> &'static str {
    if gpu.has_timestamps() {
        "device timestamps"
    } else {
        "wall clock"
    }
}

/// Seconds one run of the launches takes: the device's own timestamps around the pass where
/// it has them (see [`Gpu::time_on_device`]), else the wall clock around the run and the wait.
async fn launch_seconds(gpu: &Gpu, dispatches: &[crate::gpu::Dispatch], any: &wgpu::Buffer) -> Result<f64> {
    let start = Instant::now();
    if let Some(seconds) = gpu.time_on_device(dispatches).await? {
        return Ok(seconds);
    }
    if !gpu.has_timestamps() {
        run_and_wait(gpu, dispatches, any).await?;
    }
    // Without timestamps, or with timestamps out of order (the run finished either way).
    Ok(start.elapsed().as_secs_f64())
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
/// `workgroup` forces that family (its default candidate), `auto` follows the tuning (or the
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

/// The tuned choices: adapter description and candidate fingerprint (see [`cache_section`]) →
/// tuning key → candidate name. Natively a file
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

    /// Drops `adapter`'s sections other than `current` (see [`cache_section`]): choices made
    /// among another build's candidates.
    fn retire_others(&mut self, adapter: &str, current: &str) {
        let older = |section: &str| section == adapter || section.starts_with(&format!("{adapter} [kernels "));
        self.entries.retain(|section, _| section == current || !older(section));
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

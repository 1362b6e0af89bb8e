//! Autotune: which conv kernel (a register or a workgroup candidate) runs fastest for each conv
//! shape of a model on this adapter, measured on the adapter and cached.
//!
//! On first use of an adapter and a shape, [`tune`] times every candidate the adapter's limits
//! can run on that shape (with timestamp queries around the launches where the adapter has
//! them, else the wall clock with the device polled to idle: see [`clock`]), each after an
//! untimed warm-up launch that pays any pipeline compile, on two launches that agree or the
//! fastest of three ([`race`]), and records the fastest in the [`Gpu`]'s kernel choices,
//! which every later recorded program reads (see [`crate::ops::conv::kernels::choose`]). The
//! choices are kept per adapter (name, backend, device type, driver: [`Gpu::describe`]),
//! candidate list and rules in `kernels.json` in the user's cache folder (in
//! the browser, the page keeps [`Cache::to_json`] in localStorage), so later runs read them
//! and time nothing. [`tune_with`] is the asynchronous core both use; [`tune`] is its native,
//! blocking form with the cache file.
//!
//! The fused BN-ReLU forms share their direction's choice and are timed through their plain
//! form, so a fused and an unfused launch of one conv always sum in the same order.

use crate::error::{Error, Result};
use crate::gpu::{Family, Gpu, Grid, View};
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
    /// Seconds of one launch: the fastest of its timed launches (see [`race`]).
    pub seconds: f64,
    /// Every timed launch's seconds, in order (two or three; the warm-up is not among them).
    pub launches: Vec<f64>,
    /// Seconds the untimed warm-up took by the wall clock: on a driver that compiles at the
    /// first launch, mostly the compile (nothing where an earlier shape compiled it already).
    pub warm_up: f64,
    /// The candidate whose kernel this one launches too, and whose timing it took (see
    /// [`race`]).
    pub same_as: Option<&'static str>,
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

/// Two timed launches agree when the slower is within this fraction of the faster. Half of
/// [`MARGIN`], so two launches that agree cannot by themselves flip a choice the margin
/// decides. On a loaded machine (another process on one of lavapipe's two cores) launches of
/// the same kernel differ by up to 2x; the third launch and the minimum then stand for the
/// kernel's own time, since a neighbour only ever adds to it.
pub const AGREE: f64 = 0.05;

/// A candidate that measures this many times the best time of a shape is out of the race for
/// the other shapes of its class (see [`class`]): it will not win there either, and on a CPU
/// driver a badly fitting kernel takes a second a launch. A candidate whose two timed launches
/// both take this many times the best so far gets no third. On lavapipe the workgroup family
/// runs 2.4 to 25 times slower than the register family at DenseNet-BC-100's shapes
/// (BENCHMARKS.md).
pub const HOPELESS: f64 = 2.0;

/// The race's rules, in the cache's fingerprint (see [`cache_section`]): choices made under
/// other rules (the first tuner timed a candidate's first launch, compile included, and kept
/// the result) are timed again.
const RULES: &str = "warm-up, then 2 launches that agree or the minimum of 3";

/// What one call of [`race`]'s `launch` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// An untimed run before a candidate's first timed launch. A driver may compile a
    /// pipeline when it is first launched rather than when it is created: lavapipe's
    /// llvmpipe builds its machine code then (tens of seconds for the large register tiles
    /// with an empty Mesa shader cache), and a browser compiles in the background and makes
    /// the first launch wait. Its time must never count as the kernel's.
    WarmUp,
    /// A launch whose seconds count.
    Timed,
}

/// Races `candidates` (names, in order) with `launch(i, what)`, which runs candidate `i` and
/// returns its seconds (for [`Launch::WarmUp`], what [`Timing::warm_up`] should say).
///
/// Each candidate first runs once untimed, then two timed launches; if they do not
/// agree within [`AGREE`], a third, and its time is the minimum (a busy machine only ever adds
/// time). So every time returned rests on at least two compile-free launches, and no choice
/// made from them can have lost to a compile. Two exceptions spend no launch on a candidate
/// that cannot win: one whose first timed launch takes twice [`HOPELESS`] times the best
/// settled time so far gets no second (a neighbour on the machine slows a launch by 2x at
/// most), and one whose two launches both take [`HOPELESS`] times it gets no third. A
/// candidate with `twins[i] == Some(j)` launches the same kernel as candidate `j < i` (see
/// [`crate::ops::conv::wgsl::ConvTiles::same_kernel`]) and takes its timing without running.
/// Errors: whatever `launch` returns.
pub async fn race(
    candidates: &[&'static str],
    twins: &[Option<usize>],
    mut launch: impl AsyncFnMut(usize, Launch) -> Result<f64>,
) -> Result<Vec<Timing>> {
    let mut out: Vec<Timing> = Vec::new();
    for (i, &candidate) in candidates.iter().enumerate() {
        if let Some(j) = twins.get(i).copied().flatten().filter(|&j| j < i) {
            let same_as = Some(out[j].same_as.unwrap_or(out[j].candidate));
            out.push(Timing { candidate, same_as, ..out[j].clone() });
            continue;
        }
        let best = out.iter().map(|t| t.seconds).fold(f64::INFINITY, f64::min);
        let warm_up = launch(i, Launch::WarmUp).await?;
        let mut launches = vec![launch(i, Launch::Timed).await?];
        if launches[0] <= 2.0 * HOPELESS * best {
            launches.push(launch(i, Launch::Timed).await?);
            let fastest = launches.iter().copied().fold(f64::INFINITY, f64::min);
            let slowest = launches.iter().copied().fold(0.0, f64::max);
            if slowest > fastest * (1.0 + AGREE) && fastest <= HOPELESS * best {
                launches.push(launch(i, Launch::Timed).await?);
            }
        }
        let seconds = launches.iter().copied().fold(f64::INFINITY, f64::min);
        out.push(Timing { candidate, seconds, launches, warm_up, same_as: None });
    }
    Ok(out)
}

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
    let mut text = format!("margin {MARGIN}; {RULES}");
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
            let chosen = if timings.is_empty() { kernels[0].name() } else { choose(default.name(), &timings) };
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

/// The fastest candidate of `timings`, unless `default` (the device type's default kernel)
/// was timed within [`MARGIN`] of it. Panics if `timings` is empty.
pub fn choose(default: &str, timings: &[Timing]) -> &'static str {
    let best = timings.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds)).expect("a candidate was timed");
    match timings.iter().find(|t| t.candidate == default) {
        Some(d) if d.seconds <= best.seconds * (1.0 + MARGIN) => d.candidate,
        _ => best.candidate,
    }
}

/// The candidates for `direction` of `s` this adapter can run: every register and workgroup
/// candidate within its limits. On a CPU driver (an adapter whose default family is the
/// register family) fewer race:
/// - only the workgroup family's default: the family runs 2 to 35 times slower there
///   (BENCHMARKS.md), and SwiftShader did not finish the first launch of `gemm64x64r8` (64
///   unrolled accumulators) in 400 s before Chrome lost the device;
/// - natively, only the register family's default too (`register-subgroup` where the device
///   has subgroups, see `kernels::register_default`): each register candidate costs its
///   compile, which lavapipe does on the tuner's clock at its first launch (4-22 s a kernel
///   with an empty shader cache, BENCHMARKS.md, "Tiles and compile time"), and the subgroup
///   default runs the products 1.7-1.9x faster than `register` there (BENCHMARKS.md, "Weights
///   once per subgroup"). In a browser every register candidate races: on SwiftShader
///   `register-wide` measured 2-3x faster on small 1x1 products.
///
/// The tests still run every candidate on lavapipe (the sweep of realistic values at
/// DenseNet's shapes only with `cargo xtask test --full`).
pub fn candidates(gpu: &Gpu, direction: ConvDirection, s: &Conv2dShape) -> Vec<ConvKernel> {
    let cpu_driver = gpu.default_family() == Family::Register;
    let only_default = cpu_driver && !cfg!(target_arch = "wasm32");
    let register = (direction.kernels().into_iter())
        .filter(|k| k.family() == Family::Register && k.fits(gpu))
        .filter(|k| !only_default || *k == direction.default_kernel(gpu, Family::Register));
    let mut out: Vec<ConvKernel> = register.collect();
    if !direction.workgroup_serves(s) {
        return out;
    }
    if cpu_driver {
        out.extend(Some(direction.default_kernel(gpu, Family::Workgroup)).filter(|k| k.family() == Family::Workgroup));
    } else {
        out.extend(direction.kernels().into_iter().filter(|k| k.family() == Family::Workgroup && k.fits(gpu)));
    }
    out
}

/// Times `kernels` on zero-filled operands of shape `s` (the kernels' speed does not depend on
/// the values), in order, by [`clock`], through [`race`]: each one's warm-up launch runs a
/// single workgroup (see [`Grid::OneWorkgroup`]), which is enough to make the driver compile it.
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
    let launches: Vec<Vec<crate::gpu::Dispatch>> = (kernels.iter())
        .map(|&kernel| match direction {
            ConvDirection::Forward => vec![conv::forward_with(gpu, kernel, s, v(&x), v(&w), v(&y))],
            ConvDirection::BackwardInput => {
                vec![conv::backward_input_with(gpu, kernel, s, (0, s.c_in), v(&y), v(&w), v(&x), false)]
            }
            ConvDirection::BackwardWeight => {
                conv::backward_weight_with(gpu, kernel, s, v(&x), None, v(&y), v(&w), scratch.as_ref().map(v), false)
            }
        })
        .collect();
    let names: Vec<&'static str> = kernels.iter().map(|k| k.name()).collect();
    // A register candidate whose launches are another's kernels (same entry points, same
    // tiles) is that candidate's twin.
    let twins: Vec<Option<usize>> = (0..kernels.len())
        .map(|i| {
            (0..i).find(|&j| match (kernels[i], kernels[j]) {
                (ConvKernel::Register(a), ConvKernel::Register(b)) => {
                    launches[i].len() == launches[j].len()
                        && launches[i]
                            .iter()
                            .zip(&launches[j])
                            .all(|(x, y)| x.label == y.label && a.same_kernel(&b, x.label))
                }
                _ => false,
            })
        })
        .collect();
    race(&names, &twins, async |i, what| match what {
        Launch::WarmUp => {
            let start = Instant::now();
            run_and_wait(gpu, &launches[i], &x, Grid::OneWorkgroup).await?;
            Ok(start.elapsed().as_secs_f64())
        }
        Launch::Timed => launch_seconds(gpu, &launches[i], &x).await,
    })
    .await
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
pub(crate) async fn launch_seconds(gpu: &Gpu, dispatches: &[crate::gpu::Dispatch], any: &wgpu::Buffer) -> Result<f64> {
    let start = Instant::now();
    if let Some(seconds) = gpu.time_on_device(dispatches).await? {
        return Ok(seconds);
    }
    if !gpu.has_timestamps() {
        run_and_wait(gpu, dispatches, any, Grid::Whole).await?;
    }
    // Without timestamps, or with timestamps out of order (the run finished either way).
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the launches on `grid` and returns once the device has finished them: natively by
/// polling the device to idle; in a browser, which cannot block, by reading one float of
/// `any` back (its mapping resolves only after the work submitted before it).
async fn run_and_wait(gpu: &Gpu, dispatches: &[crate::gpu::Dispatch], any: &wgpu::Buffer, grid: Grid) -> Result<()> {
    gpu.run_on(dispatches, grid).await?;
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

    /// The cache from a kernel-cache file's bytes (`kernels.json`); bytes that are not UTF-8,
    /// or not the JSON [`Cache::to_json`] writes, read as empty, as in [`Cache::from_json`].
    pub fn from_bytes(bytes: &[u8]) -> Cache {
        std::str::from_utf8(bytes).map(Cache::from_json).unwrap_or_default()
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

    /// Reads the cache file ([`Cache::from_bytes`]); a missing, unreadable or malformed one,
    /// or one too large for memory, reads as empty (and is rewritten by [`Cache::save`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load() -> Cache {
        let path = Self::path();
        let bytes = path.as_deref().and_then(|p| crate::files::read(p).ok()).unwrap_or_default();
        Cache { path, ..Cache::from_bytes(&bytes) }
    }

    /// Every cached choice as (section, tuning key, candidate name), in key order: the section
    /// is an adapter and candidate fingerprint (see [`tune`]), the key a conv shape's
    /// [`ConvDirection::tuning_key`].
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.entries.iter().flat_map(|(section, choices)| {
            choices.iter().map(move |(key, candidate)| (section.as_str(), key.as_str(), candidate.as_str()))
        })
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
        crate::files::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
    }
}

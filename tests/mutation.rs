//! Seeded mutation testing of every reader of untrusted bytes, on the stable toolchain, so
//! that CI keeps what the fuzz targets (`fuzz/`, nightly) found: the safetensors and checkpoint
//! readers, the CIFAR binary reader, image decoding as the streamed loader does it, the kernel
//! cache file and the `--init` architecture inference.
//!
//! Each reader gets [`INPUTS`] inputs: the seed corpus that the fuzzers start from
//! (`fuzz/corpus/<target>/seed-*`) and the inputs the fuzzers found bugs with
//! (`fuzz/regressions/<target>/`), each mutated by one to four byte-level changes (bit flips,
//! boundary bytes and 64-bit lengths, numbers in the text replaced by boundary values, dtype
//! names swapped, insertions, deletions, duplications, truncations, splices of two seeds). The
//! checks are the fuzz targets' own (`fuzz/src/lib.rs`): the reader returns Ok or an error and
//! never panics, its memory and file forms agree, and what it accepts keeps its promises. A
//! reader must also never ask for memory out of proportion to its input (a mutated length
//! field must not make it allocate gigabytes): any single allocation above 1 GiB is refused,
//! and one above the reader's bound fails the test.
//!
//! A failure names the reader, the seed file and the mutation, and leaves the input in
//! `target/tmp/mutation-failures/` for `cargo +nightly fuzz run <target> <file>`. An abort
//! ("memory allocation of N bytes failed") is an infallible allocation above 1 GiB: rerun
//! with `MUTATION_TRACE=1 cargo test --release --test mutation -- --nocapture` to see the case.
//! `MUTATION_INPUTS=N` and `MUTATION_SEED=S` change the count and the seed.
//!
//! The seed corpus is written by `cargo test --release --test mutation -- --ignored
//! write_seed_corpus` (deterministic, a few KiB per target).

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use densegpu::checkpoint::{self, NamedTensor};
use densegpu::data;
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Mutated inputs per reader (`MUTATION_INPUTS` overrides).
const INPUTS: usize = 5000;
/// The seed of the first reader's mutations (`MUTATION_SEED` overrides); reader `i` uses
/// this plus `i`.
const SEED: u64 = 27;

// ---------------------------------------------------------------------------------------------
// Bounded allocation

/// Any single allocation larger than this is refused (a null pointer: `try_reserve` turns it
/// into an error, anything else aborts).
const REFUSE_ABOVE: usize = 1 << 30;

thread_local! {
    /// The largest single allocation this thread asked for since it was last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording each thread's largest request and refusing absurd ones.
struct Bounded;

impl Bounded {
    fn admit(size: usize) -> bool {
        // try_with: a thread being torn down has no slot left, and allocates little.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        size <= REFUSE_ABOVE
    }
}

// SAFETY: every call goes to `System` unchanged, or returns null (an allocation failure).
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::admit(layout.size()) {
            System.alloc(layout)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::admit(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::admit(new_size) {
            System.realloc(ptr, layout, new_size)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// The most one input may make `reader` allocate at once: image decoding within its
/// documented 512 MiB limit (`StreamOptions::max_decode_bytes` and the image crate's default),
/// every other reader a small multiple of the input's size.
fn allocation_bound(reader: &str, input_len: usize) -> usize {
    match reader {
        "image" => 512 << 20,
        _ => (16 << 20) + 64 * input_len,
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// 64-bit values that lengths and offsets break on.
const BOUNDARY_U64: [u64; 10] = [0, 1, 7, 8, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 63, u64::MAX - 7, u64::MAX];
/// Numbers to put where a text has a number (JSON sizes and offsets, shapes, channels).
const BOUNDARY_NUMBERS: [&str; 14] = [
    "0",
    "1",
    "-1",
    "17",
    "10001",
    "16777217",
    "4294967295",
    "4294967296",
    "2305843009213693951",
    "9223372036854775807",
    "18446744073709551608",
    "18446744073709551615",
    "99999999999999999999",
    "1e309",
];
/// Words of the formats to swap for one another (safetensors dtypes, JSON literals, names).
const WORDS: [&str; 16] = [
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "U8",
    "F4",
    "BOOL",
    "null",
    "true",
    "[]",
    "{}",
    "norm0",
    "conv2",
    "denselayer1",
    "transition1",
];

/// Applies one random change to `input`; `others` are the reader's seeds, for splices. Returns
/// what it did, for a failure's message.
fn mutate_once(rng: &mut Pcg64Mcg, input: &mut Vec<u8>, others: &[Vec<u8>]) -> String {
    let len = input.len();
    let at = |rng: &mut Pcg64Mcg| if len == 0 { 0 } else { rng.random_range(0..len) };
    match rng.random_range(0..11) {
        0 if len > 0 => {
            let (i, bit) = (at(rng), rng.random_range(0..8));
            input[i] ^= 1 << bit;
            format!("flip bit {bit} of byte {i}")
        }
        1 if len > 0 => {
            let (i, v) = (at(rng), [0u8, 0x7f, 0x80, 0xff][rng.random_range(0..4)]);
            input[i] = v;
            format!("byte {i} = {v:#04x}")
        }
        2 => {
            let (i, n) = (at(rng), rng.random_range(1..=16));
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(i..i, bytes);
            format!("insert {n} random bytes at {i}")
        }
        3 if len > 1 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(len / 4 + 1));
            input.drain(i..i + n);
            format!("delete {n} bytes at {i}")
        }
        4 if len > 1 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(64));
            let copy = input[i..i + n].to_vec();
            let to = at(rng);
            input.splice(to..to, copy);
            format!("copy {n} bytes from {i} to {to}")
        }
        5 if len >= 8 => {
            // The first 8 bytes are safetensors' header length; elsewhere any 64-bit field.
            let i = if rng.random_bool(0.5) { 0 } else { rng.random_range(0..=len - 8) };
            let v = BOUNDARY_U64[rng.random_range(0..BOUNDARY_U64.len())];
            input[i..i + 8].copy_from_slice(&v.to_le_bytes());
            format!("u64 at {i} = {v:#x}")
        }
        6 => match replace_run(rng, input, |b| b.is_ascii_digit(), &BOUNDARY_NUMBERS) {
            Some((s, v)) => format!("number at {s} = {v}"),
            None => mutate_once(rng, input, others),
        },
        7 => match replace_run(rng, input, |b| b.is_ascii_alphanumeric(), &WORDS) {
            Some((s, v)) => format!("word at {s} = {v}"),
            None => mutate_once(rng, input, others),
        },
        8 if len > 0 => {
            let n = at(rng);
            input.truncate(n);
            format!("truncate to {n} bytes")
        }
        9 => {
            let other = &others[rng.random_range(0..others.len())];
            let (i, j) = (at(rng), if other.is_empty() { 0 } else { rng.random_range(0..other.len()) });
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
            format!("splice: first {i} bytes, then another seed's from {j}")
        }
        10 if len > 0 => {
            let (i, n) = (at(rng), rng.random_range(1..=8));
            for b in input.iter_mut().skip(i).take(n) {
                *b = 0xff;
            }
            format!("{n} bytes of 0xff at {i}")
        }
        _ => mutate_once(rng, input, others),
    }
}

/// The `[start, end)` of every run of bytes that `keep` accepts.
/// Replaces one run of bytes that `keep` accepts (a number, a word) with one of `choices`;
/// `None` when the input has no such run. Returns where the run started and what went in.
fn replace_run<'c>(
    rng: &mut Pcg64Mcg,
    input: &mut Vec<u8>,
    keep: impl Fn(u8) -> bool,
    choices: &[&'c str],
) -> Option<(usize, &'c str)> {
    let found = runs(input, keep);
    if found.is_empty() {
        return None;
    }
    let (s, e) = found[rng.random_range(0..found.len())];
    let v = choices[rng.random_range(0..choices.len())];
    input.splice(s..e, v.bytes());
    Some((s, v))
}

fn runs(bytes: &[u8], keep: impl Fn(u8) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (keep(b), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, bytes.len()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The run

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(target)
}

/// The inputs the fuzzers found a bug with, `fuzz/regressions/<target>/`.
fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("regressions").join(target)
}

/// The files of `dir` whose names `keep` accepts, by file name; none when `dir` is absent.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        .filter(|(name, _)| keep(name))
        .map(|(name, p)| (name, std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// The committed seeds of `target` (`seed-*`), by file name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let out = files(&corpus_dir(target), |n| n.starts_with("seed-"));
    assert!(!out.is_empty(), "{} holds no seed-* files", corpus_dir(target).display());
    out
}

/// What the mutation test starts from: the seeds and the fuzzers' regression inputs.
fn starting_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = seeds(target);
    out.extend(files(&regressions_dir(target), |_| true));
    out
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Feeds `target`'s reader its seeds unchanged, then mutated ones; panics naming the first
/// input that fails.
fn run(target: &str) {
    let (index, check) = checks::READERS
        .iter()
        .enumerate()
        .find(|(_, (name, _))| *name == target)
        .map(|(i, (_, check))| (i, *check))
        .unwrap_or_else(|| panic!("no reader called {target}"));
    let seeds = starting_inputs(target);
    let bodies: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    let inputs = env_number("MUTATION_INPUTS", INPUTS as u64) as usize;
    let seed = env_number("MUTATION_SEED", SEED) + index as u64;
    let trace = std::env::var_os("MUTATION_TRACE").is_some();
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let started = Instant::now();
    quiet_panics(true);
    let mut failure = None;
    let mut accepted = 0;
    for i in 0..seeds.len() + inputs {
        let (from, mut input, mut what) = if i < seeds.len() {
            (i, bodies[i].clone(), vec!["unchanged".to_string()])
        } else {
            let from = rng.random_range(0..seeds.len());
            (from, bodies[from].clone(), Vec::new())
        };
        if i >= seeds.len() {
            for _ in 0..rng.random_range(1..=4) {
                what.push(mutate_once(&mut rng, &mut input, &bodies));
            }
        }
        let case = format!(
            "reader `{target}`, input {i} (MUTATION_SEED={}), seed file {}, mutations: {}",
            seed - index as u64,
            seeds[from].0,
            what.join("; ")
        );
        if trace {
            eprintln!("{case}");
        }
        LARGEST.with(|l| l.set(0));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let largest = LARGEST.with(Cell::get);
        let problem = match outcome {
            Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
            Ok(_) if largest > allocation_bound(target, input.len()) => Some(format!(
                "asked for {largest} bytes at once for an input of {} bytes (bound {}{})",
                input.len(),
                allocation_bound(target, input.len()),
                if largest > REFUSE_ABOVE { "; refused" } else { "" }
            )),
            Ok(ok) => {
                accepted += ok as usize;
                None
            }
        };
        if let Some(problem) = problem {
            failure = Some((case, problem, input));
            break;
        }
    }
    quiet_panics(false);
    if let Some((case, problem, input)) = failure {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{target}-{}", input.len()));
        std::fs::write(&file, &input).unwrap();
        panic!(
            "{case}: {problem}\nthe input is in {}: `cd fuzz && cargo +nightly fuzz run {target} {}` replays it",
            file.display(),
            file.display()
        );
    }
    eprintln!(
        "mutation test: `{target}` read {} seeds and {inputs} mutated inputs ({accepted} accepted) in {:.2} s \
         without a panic",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

thread_local! {
    /// Whether this thread's panics are caught and reported by [`run`] (so the panic hook
    /// need not print them).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Makes the panic hook skip this thread's panics (`true`) or print them as usual. The hook is
/// process-wide, so it is installed once and asks each thread.
fn quiet_panics(quiet: bool) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(quiet));
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[test]
fn safetensors_reader_survives_mutated_files() {
    run("safetensors");
}

#[test]
fn checkpoint_reader_survives_mutated_files() {
    run("checkpoint");
}

#[test]
fn cifar_reader_survives_mutated_files() {
    run("cifar");
}

#[test]
fn image_decoding_survives_mutated_files() {
    run("image");
}

#[test]
fn kernel_cache_reader_survives_mutated_files() {
    run("kernel_cache");
}

#[test]
fn init_inference_survives_mutated_names_and_shapes() {
    run("init");
}

#[test]
fn every_reader_has_a_test_and_a_seed_corpus() {
    let tested = ["safetensors", "checkpoint", "cifar", "image", "kernel_cache", "init"];
    let readers: Vec<&str> = checks::READERS.iter().map(|(name, _)| *name).collect();
    assert_eq!(readers, tested);
    for target in tested {
        let total: usize = seeds(target).iter().map(|(_, b)| b.len()).sum();
        assert!(total <= 64 << 10, "the seed corpus of {target} is {total} bytes; keep it to a few KiB");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{target}.rs")).is_file(),
            "no fuzz target for {target}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: what the fuzzers found, each input named

/// A safetensors file whose tensors' offsets are contiguous and match their shapes, but add up
/// to nearly 2^64 bytes: the file reader summed them with the header's size unchecked
/// (`8 + header + data_len`), which overflows (a panic where overflow is checked, as in the
/// fuzzers' and debug builds).
fn offsets_near_the_end_of_u64() -> Vec<u8> {
    let size = (1u64 << 61) - 1;
    let tensors: Vec<String> = (0..8)
        .map(|i| {
            format!(r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#, i * size, (i + 1) * size)
        })
        .collect();
    let header = format!("{{{}}}", tensors.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    bytes
}

#[test]
fn safetensors_offsets_that_overflow_are_an_error_not_a_panic() {
    let bytes = offsets_near_the_end_of_u64();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("offsets-overflow.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    for result in [
        checkpoint::weights_from_bytes(&bytes, &path.display().to_string()).map(|_| ()),
        checkpoint::load_weights(&path).map(|_| ()),
        checkpoint::checkpoint_from_bytes(&bytes, &path.display().to_string()).map(|_| ()),
        checkpoint::load_checkpoint(&path).map(|_| ()),
    ] {
        let m = result.unwrap_err().to_string();
        assert!(m.contains(&path.display().to_string()) && m.contains("tensor data does not end"), "{m}");
    }
    assert!(!checks::safetensors(&bytes) && !checks::checkpoint(&bytes));
}

/// Found by the `image` target (a timeout): a 500-byte JPEG whose header declares a
/// 21280x17476 greyscale image. The in-memory image folder's decoder checked the size only
/// after decoding, and the lenient JPEG decoder filled in all 372 million pixels of the
/// truncated stream (13 s under the fuzzer, 355 MiB, then 1 GiB as RGB).
#[test]
fn a_small_jpeg_declaring_a_huge_image_is_refused_before_decoding() {
    let bytes = std::fs::read(regressions_dir("image").join("timeout-jpeg-declaring-21280x17476.jpg")).unwrap();
    LARGEST.with(|l| l.set(0));
    let m = data::decode_image(&bytes, "huge.jpg", 32, 32).unwrap_err().to_string();
    let largest = LARGEST.with(Cell::get);
    assert!(m.contains("huge.jpg is 21280x17476 (width x height)") && m.contains("must be 32x32"), "{m}");
    assert!(largest < 1 << 20, "refusing it asked for {largest} bytes at once");
    let m = data::decode_rgb_bytes(&bytes, Path::new("huge.jpg"), &Default::default()).unwrap_err().to_string();
    assert!(m.contains("huge.jpg declares an image too large to decode"), "{m}");
    assert!(!checks::image(&bytes));
}

fn absurd_configs() -> Vec<(DenseNetConfig, &'static str)> {
    let base = DenseNetConfig::cifar_bc(40, 12, 10).unwrap();
    let with = |f: &dyn Fn(&mut DenseNetConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    vec![
        (with(&|c| c.block_config = vec![1; 40]), "at most 16"),
        (with(&|c| c.block_config = vec![4_000_000_000]), "at most 10000 a block"),
        (with(&|c| c.growth_rate = 1 << 31), "the growth rate is 2147483648"),
        (with(&|c| c.num_init_features = u32::MAX), "num_init_features"),
        (with(&|c| c.bn_size = 1 << 21), "bottleneck width"),
        (with(&|c| c.growth_rate = 1 << 22), "the width at the end of dense block 1"),
        (with(&|c| c.in_channels = 0), "in_channels"),
        (with(&|c| c.num_classes = u32::MAX), "class count"),
        (with(&|c| c.image_size = 1 << 20), "at most 32768"),
        (with(&|c| c.compression = 1e-9), "maps"),
    ]
}

#[test]
fn a_config_beyond_densegpus_bounds_is_an_error_naming_the_bound() {
    for (config, expect) in absurd_configs() {
        let m = match config.build(1, MemoryMode::Efficient) {
            Ok(_) => panic!("{config:?} builds"),
            Err(e) => e.to_string(),
        };
        assert!(m.contains(expect), "{config:?}: expected `{expect}` in: {m}");
        // From a weights file's `densegpu.config`, the error names the file.
        let json = serde_json::to_string(&config).unwrap();
        let metadata = HashMap::from([("densegpu.config".to_string(), json)]);
        let data = 1f32.to_le_bytes();
        let one = TensorView::new(Dtype::F32, vec![1], &data).unwrap();
        let file = safetensors::serialize([("classifier.bias", one)], Some(metadata)).unwrap();
        let m = checkpoint::weights_from_bytes(&file, "absurd.safetensors").unwrap_err().to_string();
        assert!(m.contains("absurd.safetensors") && m.contains("densegpu.config") && m.contains(expect), "{m}");
        assert!(!checks::safetensors(&file));
    }
}

#[test]
fn inferring_a_model_of_absurd_width_is_an_error_not_a_panic() {
    // A stem and a growth rate of 2^31 channels: the old builder's widths overflowed u32.
    let names = "features.conv0.weight 2147483648x3x3x3\n\
                 features.denseblock1.denselayer1.conv1.weight 2147483648x2147483648x3x3\n\
                 classifier.weight 10x4294967296\n";
    let m = DenseNetConfig::infer_from_names_and_shapes(&checks::names_and_shapes(names.as_bytes()))
        .unwrap_err()
        .to_string();
    assert!(m.contains("num_init_features") && m.contains("16777216"), "{m}");
    assert!(!checks::init(names.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// The seed corpus

/// Small models of each kind the readers meet: DenseNet-BC and plain CIFAR ones, and an
/// ImageNet-stem one.
fn seed_configs() -> Vec<(&'static str, DenseNetConfig)> {
    let bc = DenseNetConfig {
        growth_rate: 2,
        block_config: vec![1, 1],
        num_init_features: 4,
        bn_size: 2,
        compression: 0.5,
        drop_rate: 0.0,
        num_classes: 3,
        small_inputs: true,
        in_channels: 3,
        image_size: 8,
    };
    let plain = DenseNetConfig { bn_size: 0, compression: 1.0, block_config: vec![2], ..bc.clone() };
    let imagenet = DenseNetConfig { small_inputs: false, in_channels: 1, ..bc.clone() };
    vec![("bc", bc), ("plain", plain), ("imagenet", imagenet)]
}

/// Every model tensor of `config` (parameters and running statistics) with small values.
fn model_tensors(config: &DenseNetConfig) -> Vec<NamedTensor> {
    let graph = config.build(1, MemoryMode::Efficient).unwrap();
    let mut out = Vec::new();
    for t in graph.params.iter().chain(&graph.states).flat_map(|g| &g.tensors) {
        let n: usize = t.shape.iter().product();
        let data = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
        out.push(NamedTensor { name: t.name.clone(), shape: t.shape.clone(), data });
    }
    out
}

type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn serialize(tensors: &[RawTensor], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, metadata).unwrap()
}

fn raw(t: &NamedTensor, dtype: Dtype) -> RawTensor {
    let bytes = match dtype {
        Dtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F64 => t.data.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
        // Quarters of small integers are exact in both 16-bit formats: the top half of the f32
        // is the BF16, and an F16 has the same sign, a re-biased exponent and 10 mantissa bits.
        Dtype::BF16 => t.data.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        Dtype::F16 => t.data.iter().flat_map(|v| f16_bits(*v).to_le_bytes()).collect(),
        other => panic!("no seed tensors of {other:?}"),
    };
    (t.name.clone(), dtype, t.shape.clone(), bytes)
}

/// The F16 of a value that F16 holds exactly (no rounding: the seeds' values are quarters).
fn f16_bits(v: f32) -> u16 {
    if v == 0.0 {
        return ((v.to_bits() >> 16) & 0x8000) as u16;
    }
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = ((bits >> 13) & 0x3ff) as u16;
    sign | ((exp as u16) << 10) | mant
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

/// Writes the seed corpus under `fuzz/corpus/` (run it after a format changes, and commit the
/// files): valid inputs of each reader, small enough that the fuzzers mutate them quickly.
#[test]
#[ignore = "writes the committed seed corpus; run by hand"]
fn write_seed_corpus() {
    let configs = seed_configs();
    let (_, bc) = &configs[0];
    let bc_tensors = model_tensors(bc);

    // Weights: densegpu's own file; a PyTorch state dict in F16 under the old names with the
    // DataParallel prefix (its architecture inferred); BF16 and F64 ones of the other models.
    write_seed("safetensors", "densegpu-bc.safetensors", &checkpoint::weights_to_bytes(bc, &bc_tensors).unwrap());
    let torch = |tensors: &[NamedTensor], dtype: Dtype, rename: &dyn Fn(&str) -> String| {
        let mut raws: Vec<RawTensor> = tensors
            .iter()
            .map(|t| {
                let (_, d, s, b) = raw(t, dtype);
                (rename(&t.name), d, s, b)
            })
            .collect();
        for t in tensors.iter().filter_map(|t| t.name.strip_suffix(".running_mean")) {
            raws.push((rename(&format!("{t}.num_batches_tracked")), Dtype::I64, vec![], 5i64.to_le_bytes().to_vec()));
        }
        serialize(&raws, None)
    };
    let old_names = |n: &str| {
        let n = n
            .replace("norm1", "norm.1")
            .replace("norm2", "norm.2")
            .replace("conv1", "conv.1")
            .replace("conv2", "conv.2");
        format!("module.{n}")
    };
    write_seed("safetensors", "torch-bc-f16-old-names.safetensors", &torch(&bc_tensors, Dtype::F16, &old_names));
    write_seed(
        "safetensors",
        "torch-plain-bf16.safetensors",
        &torch(&model_tensors(&configs[1].1), Dtype::BF16, &|n| n.to_string()),
    );
    write_seed(
        "safetensors",
        "torch-imagenet-f64.safetensors",
        &torch(&model_tensors(&configs[2].1), Dtype::F64, &|n| n.to_string()),
    );

    // A resume checkpoint: the weights, a momentum buffer per parameter, the training state.
    let graph = bc.build(1, MemoryMode::Efficient).unwrap();
    let params: Vec<&str> = graph.params.iter().flat_map(|g| &g.tensors).map(|t| t.name.as_str()).collect();
    let mut raws: Vec<RawTensor> = bc_tensors.iter().map(|t| raw(t, Dtype::F32)).collect();
    for t in bc_tensors.iter().filter(|t| params.contains(&t.name.as_str())) {
        let (_, d, s, b) = raw(t, Dtype::F32);
        raws.push((format!("{}{}", checkpoint::MOMENTUM_PREFIX, t.name), d, s, b));
    }
    for t in bc_tensors.iter().filter_map(|t| t.name.strip_suffix(".running_mean")) {
        raws.push((format!("{t}.num_batches_tracked"), Dtype::I64, vec![], 12i64.to_le_bytes().to_vec()));
    }
    let training = r#"{"step":12,"epoch":2,"batch_in_epoch":4,"rng_state":[1,2,3,4],"best_valid_accuracy":0.5,"lr":0.1,"momentum":0.9,"weight_decay":0.0001,"nesterov":true,"batches_tracked":12,"extra":{"seed":"7"}}"#;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (checkpoint::META_FORMAT.to_string(), checkpoint::CHECKPOINT_FORMAT.to_string()),
        (checkpoint::META_CONFIG.to_string(), serde_json::to_string(bc).unwrap()),
        (checkpoint::META_TRAINING.to_string(), training.to_string()),
    ]);
    let ckpt = serialize(&raws, Some(metadata));
    checkpoint::checkpoint_from_bytes(&ckpt, "seed").unwrap();
    write_seed("checkpoint", "densegpu-bc.safetensors", &ckpt);

    // CIFAR-10 batches of one and two records.
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| (i * 7 % 251) as u8));
        r
    };
    write_seed("cifar", "one-record.bin", &record(3));
    write_seed("cifar", "two-records.bin", &[record(0), record(9)].concat());

    // Images: PNGs (RGB at the browser's 32x32, greyscale, RGBA, 16-bit) and JPEGs (RGB and
    // greyscale), all tiny.
    let encode = |img: image::DynamicImage, format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let rgb = |w: u32, h: u32| image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
    use image::{DynamicImage as D, ImageFormat as F};
    write_seed("image", "rgb-32x32.png", &encode(D::ImageRgb8(rgb(32, 32)), F::Png));
    write_seed(
        "image",
        "grey-5x3.png",
        &encode(D::ImageLuma8(image::GrayImage::from_fn(5, 3, |x, _| image::Luma([x as u8 * 40]))), F::Png),
    );
    write_seed(
        "image",
        "rgba-3x4.png",
        &encode(D::ImageRgba8(image::RgbaImage::from_fn(3, 4, |x, y| image::Rgba([x as u8, y as u8, 9, 200]))), F::Png),
    );
    write_seed(
        "image",
        "rgb16-2x2.png",
        &encode(
            D::ImageRgb16(image::ImageBuffer::from_fn(2, 2, |x, _| image::Rgb([x as u16 * 9000, 7, 65535]))),
            F::Png,
        ),
    );
    write_seed("image", "rgb-32x32.jpg", &encode(D::ImageRgb8(rgb(32, 32)), F::Jpeg));
    write_seed(
        "image",
        "grey-9x7.jpg",
        &encode(D::ImageLuma8(image::GrayImage::from_fn(9, 7, |x, y| image::Luma([(x * y) as u8 * 4]))), F::Jpeg),
    );

    // Kernel caches as `Cache::to_json` writes them.
    let cache = r#"{
  "llvmpipe (LLVM 15.0.7, 256 bits) (Cpu, Vulkan) [kernels 0c6f6d1b9f4e2a77]": {
    "conv backward_weight 3x3/1p1 in<=128 out 12 images<=64 8x8": "wgrad16x64",
    "conv forward 1x1/1p0 in<=256 out 48 images<=64 16x16": "register-subgroup",
    "conv forward 3x3/1p1 in<=64 out 12 images<=64 32x32": "gemm32x128"
  }
}"#;
    write_seed("kernel_cache", "one-adapter.json", cache.as_bytes());
    let two = r#"{"NVIDIA GeForce RTX 3080 (DiscreteGpu, Vulkan) [kernels 0c6f6d1b9f4e2a77]":{"conv backward_input 3x3/1p1 in<=16 out 32 images<=8 56x56":"register"},"old [kernels 0000000000000000]":{"conv forward 7x7/2p3 in<=4 out 64 images<=32 224x224":"register-wide"}}"#;
    write_seed("kernel_cache", "two-adapters.json", two.as_bytes());

    // Names and shapes for `--init`: each seed model, and the BC one under old names.
    let listing = |tensors: &[NamedTensor], rename: &dyn Fn(&str) -> String| {
        let mut text = String::new();
        for t in tensors {
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            text.push_str(&format!("{} {}\n", rename(&t.name), dims.join("x")));
        }
        text
    };
    for (name, config) in &configs {
        let text = listing(&model_tensors(config), &|n| n.to_string());
        DenseNetConfig::infer_from_names_and_shapes(&checks::names_and_shapes(text.as_bytes())).unwrap();
        write_seed("init", &format!("{name}.txt"), text.as_bytes());
    }
    write_seed("init", "bc-old-names.txt", listing(&bc_tensors, &old_names).as_bytes());

    // Every seed reads.
    for target in ["safetensors", "cifar", "image"] {
        for (name, bytes) in seeds(target) {
            match target {
                "safetensors" => {
                    checkpoint::weights_from_bytes(&bytes, &name).unwrap().model_config().unwrap();
                }
                "cifar" => {
                    data::parse_cifar10_batch(&bytes, &name).unwrap();
                }
                _ => {
                    data::decode_rgb_bytes(&bytes, Path::new(&name), &Default::default()).unwrap();
                }
            }
        }
    }
}

//! What the fuzz targets check on each input, shared with the in-suite mutation test
//! (`tests/mutation.rs` includes this file), so that the stable test suite keeps what the
//! fuzzers found.
//!
//! Each check feeds one input to one of densegpu's readers. A reader may accept the input or
//! refuse it with an error; a check panics (which is what the fuzzer and the test report) when
//! the reader panics, or when two ways of reading the same bytes disagree (from memory and from
//! a file), or when what it accepted breaks a promise (a model config that does not validate,
//! an image transform of the wrong length, a kernel cache that does not read back as written).

use std::path::{Path, PathBuf};

use densegpu::checkpoint::{self, NamedTensor, Weights};
use densegpu::data::{self, StreamOptions, StreamRng};
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::tune::Cache;
use rand::SeedableRng;

/// A reader's check: feeds it one input, panics on a broken promise, and says whether the
/// reader accepted the input.
pub type Check = fn(&[u8]) -> bool;

/// The readers by target name: the fuzz target of each is `fuzz_targets/<name>.rs`, its seed
/// corpus `corpus/<name>/seed-*`.
pub const READERS: [(&str, Check); 6] = [
    ("safetensors", safetensors),
    ("checkpoint", checkpoint),
    ("cifar", cifar),
    ("image", image),
    ("kernel_cache", kernel_cache),
    ("init", init),
];

/// `bytes` in a scratch file of this process and thread, for the readers that take a path;
/// removed when dropped. A new file each time (never one truncated and rewritten, which ext4
/// flushes to disk on close), so an input costs no disk I/O.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str, bytes: &[u8]) -> Scratch {
        let thread: String =
            format!("{:?}", std::thread::current().id()).chars().filter(char::is_ascii_digit).collect();
        let path = std::env::temp_dir().join(format!("densegpu-fuzz-{}-{thread}-{what}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("cannot write the scratch file {}: {e}", path.display()));
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn same_tensors(what: &str, a: &[NamedTensor], b: &[NamedTensor]) {
    assert_eq!(a.len(), b.len(), "{what}: the tensor counts differ");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.name, &x.shape), (&y.name, &y.shape), "{what}: the tensors differ");
        let bits = |t: &NamedTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert!(bits(x) == bits(y), "{what}: the values of `{}` differ", x.name);
    }
}

fn same_weights(what: &str, a: &Weights, b: &Weights) {
    assert_eq!(a.config, b.config, "{what}: the configs differ");
    assert_eq!(a.metadata, b.metadata, "{what}: the metadata differ");
    assert_eq!(a.batches_tracked, b.batches_tracked, "{what}: the batch counts differ");
    same_tensors(what, &a.tensors, &b.tensors);
}

/// What a weights file's reader promises of what it accepts: a config read from the file
/// validates, and the model it describes (its own config or the inferred one, as `--init`,
/// `eval`, `predict` and `export_onnx` take it) builds.
fn accepted_weights(weights: &Weights) {
    if let Some(config) = &weights.config {
        config.validate().expect("an accepted file's config validates");
    }
    if let Ok(config) = weights.model_config() {
        config.validate().expect("an accepted model config validates");
    }
}

/// A safetensors weights file, read from memory (`weights_from_bytes`, the browser's way) and
/// from a file (`load_weights`, tensor by tensor): the two must agree.
pub fn safetensors(bytes: &[u8]) -> bool {
    let memory = checkpoint::weights_from_bytes(bytes, "fuzz.safetensors");
    let file = checkpoint::load_weights(&Scratch::new("weights.safetensors", bytes).0);
    agree("weights", memory, file, |a, b| {
        same_weights("weights from memory and from a file", a, b);
        accepted_weights(a);
    })
}

/// One input read from memory and from a file: both must accept it (then `check` compares the
/// two) or both refuse it. Returns whether it was accepted.
fn agree<T, E: std::fmt::Debug>(
    what: &str,
    memory: Result<T, E>,
    file: Result<T, E>,
    check: impl FnOnce(&T, &T),
) -> bool {
    match (memory, file) {
        (Ok(a), Ok(b)) => {
            check(&a, &b);
            true
        }
        (Err(_), Err(_)) => false,
        (memory, file) => panic!("{what} from memory and from a file disagree: {:?} vs {:?}", memory.err(), file.err()),
    }
}

/// A resume checkpoint, from memory (`checkpoint_from_bytes`) and from a file
/// (`load_checkpoint`): the two must agree.
pub fn checkpoint(bytes: &[u8]) -> bool {
    let memory = checkpoint::checkpoint_from_bytes(bytes, "fuzz.safetensors");
    let file = checkpoint::load_checkpoint(&Scratch::new("checkpoint.safetensors", bytes).0);
    agree("a checkpoint", memory, file, |(wa, sa, ma), (wb, sb, mb)| {
        same_weights("a checkpoint from memory and from a file", wa, wb);
        assert_eq!(sa, sb, "the training states from memory and from a file differ");
        same_tensors("the momentum from memory and from a file", ma, mb);
        accepted_weights(wa);
    })
}

/// A CIFAR-10 binary batch, parsed from memory (`parse_cifar10_batch`, the browser's way) and
/// read from a file in pieces (`load_cifar10_batch`): the two must agree.
pub fn cifar(bytes: &[u8]) -> bool {
    let memory = data::parse_cifar10_batch(bytes, "fuzz.bin");
    let file = data::load_cifar10_batch(&Scratch::new("batch.bin", bytes).0);
    agree("a CIFAR batch", memory, file, |a, b| {
        assert_eq!(a.labels, b.labels, "the labels from memory and from a file differ");
        assert!(a.images == b.images, "the images from memory and from a file differ");
        assert_eq!(a.images.len(), a.labels.len() * a.image_bytes(), "images and labels disagree");
    })
}

/// An image file as the streamed loader decodes it (`decode_rgb_bytes` with the default limits)
/// and then transforms it for ImageNet training and evaluation at 32x32, and as the in-memory
/// image folder and the browser decode it (`decode_image` at 32x32).
pub fn image(bytes: &[u8]) -> bool {
    const SIZE: u32 = 32;
    let streamed = data::decode_rgb_bytes(bytes, Path::new("fuzz.img"), &StreamOptions::default());
    if let Ok(img) = &streamed {
        let values = 3 * (SIZE * SIZE) as usize;
        let mut rng = StreamRng::seed_from_u64(bytes.len() as u64);
        assert_eq!(data::train_transform(img, SIZE, &mut rng).len(), values, "the train transform's length");
        assert_eq!(data::eval_transform(img, SIZE).len(), values, "the eval transform's length");
    }
    let folder = data::decode_image(bytes, "fuzz.img", SIZE as usize, SIZE as usize);
    if let Ok(pixels) = &folder {
        assert_eq!(pixels.len(), 3 * (SIZE * SIZE) as usize, "decode_image's length");
    }
    streamed.is_ok() || folder.is_ok()
}

/// A kernel cache file (`kernels.json`): whatever it holds reads (as empty when malformed), and
/// what it reads writes and reads back the same. Accepted: it holds a choice.
pub fn kernel_cache(bytes: &[u8]) -> bool {
    let cache = Cache::from_bytes(bytes);
    let accepted = cache.entries().next().is_some();
    let text = cache.to_json();
    let again = Cache::from_json(&text);
    assert!(cache.entries().eq(again.entries()), "the kernel cache does not read back as written");
    assert_eq!(again.to_json(), text, "the kernel cache does not write the same twice");
    accepted
}

/// Tensor names and shapes, one tensor a line: the name, then its shape as sizes separated by
/// `x` (`features.conv0.weight 24x3x3x3`), nothing after the name for a scalar. Lines that do
/// not parse are left out.
pub fn names_and_shapes(bytes: &[u8]) -> Vec<(String, Vec<usize>)> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let name = parts.next().unwrap_or_default().to_string();
        let shape = match parts.next() {
            None | Some("") => Some(Vec::new()),
            Some(dims) => dims.split('x').map(|d| d.parse().ok()).collect(),
        };
        if let Some(shape) = shape {
            out.push((name, shape));
        }
    }
    out
}

/// The `--init` architecture inference (`DenseNetConfig::infer_from_names_and_shapes`) from
/// names and shapes in the text form of [`names_and_shapes`]: a config it infers validates and
/// builds.
pub fn init(bytes: &[u8]) -> bool {
    let Ok(config) = DenseNetConfig::infer_from_names_and_shapes(&names_and_shapes(bytes)) else { return false };
    config.validate().expect("an inferred config validates");
    config.build(1, MemoryMode::Minimal).expect("an inferred config builds");
    true
}

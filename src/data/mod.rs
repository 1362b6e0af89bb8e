//! Datasets for the CIFAR trainer: the CIFAR-10 binary format, an image-folder layout, an
//! embedded synthetic set, augmentation, torchvision's ImageNet transforms ([`transforms`]),
//! normalisation, a validation split, a prefetching batch loader, and (native only) a streamed
//! image folder of images of any size, decoded on worker threads while training runs
//! ([`StreamLoader`]). Everything here runs on the CPU.
//!
//! Images are kept as `u8` in NCHW order (N×3×H×W) and become normalised `f32` only one batch
//! at a time, so CIFAR-10 costs 184 MB in memory rather than 737 MB.

mod augment;
mod cifar_binary;
#[cfg(not(target_arch = "wasm32"))]
mod download;
mod image_folder;
mod loader;
#[cfg(not(target_arch = "wasm32"))]
mod stream;
mod synthetic;
pub mod transforms;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use crate::{Error, Result};

pub use augment::{crop_flip, CropFlip, Normalization};
pub use cifar_binary::{load_cifar10_batch, load_cifar10_binary, parse_cifar10_batch, CIFAR10_RECORD_BYTES};
#[cfg(not(target_arch = "wasm32"))]
pub use download::download_cifar10;
pub use image_folder::{decode_image, load_image_folder};
pub use loader::{Batch, BatchLoader, BatchSource, EpochBatches, LoaderOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use stream::{
    decode_rgb, decode_rgb_bytes, default_workers, ImageFolderStream, Split, StreamEpoch, StreamLoader,
    StreamLoaderOptions, StreamOptions, StreamRng, Transform, IMAGE_EXTENSIONS,
};
pub use synthetic::{synthetic, SYNTHETIC_CLASSES};
pub use transforms::{eval_transform, train_transform, CropBox, IMAGENET_MEAN, IMAGENET_STD};

/// Per-channel mean of the CIFAR-10 training images (RGB, on the 0..1 scale).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training images (RGB, on the 0..1 scale).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// MD5 of [`CIFAR10_URL`], as published next to it.
pub const CIFAR10_MD5: &str = "c58f30108f718f92721af3b95e74349a";
/// The folder the official archive unpacks into.
pub const CIFAR10_ARCHIVE_DIR: &str = "cifar-10-batches-bin";
/// Training files of the binary format, in the order their records are read.
pub const CIFAR10_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// Test file of the binary format.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// Every dataset here is RGB.
pub const CHANNELS: usize = 3;

/// Labelled RGB images stored as `u8` in NCHW order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `len() × 3 × height × width` bytes, channel planes R, G, B, each row-major.
    pub images: Vec<u8>,
    /// One label per image, each below `classes.len()`.
    pub labels: Vec<u32>,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    /// An empty dataset with the given classes and image size.
    pub fn empty(classes: Vec<String>, height: usize, width: usize) -> Dataset {
        Dataset { images: Vec::new(), labels: Vec::new(), classes, height, width }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Bytes per image: 3 × height × width.
    pub fn image_bytes(&self) -> usize {
        CHANNELS * self.height * self.width
    }

    /// Image `i` as 3 × height × width bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.images[i * n..(i + 1) * n]
    }

    /// How many images each class has, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices`, in that order. Errors, instead of aborting, when memory cannot
    /// hold the copy (`what` names the set in the message).
    pub fn select(&self, indices: &[usize], what: &str) -> Result<Dataset> {
        let n = self.image_bytes();
        let mut images = Vec::new();
        crate::files::try_reserve(&mut images, (indices.len() * n) as u64, || {
            format!("{what} ({} images of {n} bytes)", indices.len())
        })?;
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Ok(Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            height: self.height,
            width: self.width,
        })
    }

    /// Holds `valid_size` randomly chosen training images out as a validation set, the way the
    /// reference recipe holds out 5,000 of CIFAR-10's 50,000. Both parts keep the original
    /// order; the choice depends only on `seed`. `valid_size` 0 gives an empty validation set.
    pub fn split_validation(&self, valid_size: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if valid_size >= self.len() && valid_size > 0 {
            return Err(Error::Config(format!(
                "validation size {valid_size} leaves no training images out of {}; choose a validation size below {}",
                self.len(),
                self.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut Pcg64Mcg::seed_from_u64(mix(seed, 0x7661_6c69_6400, 0)));
        let mut valid: Vec<usize> = order[..valid_size].to_vec();
        valid.sort_unstable();
        let mut is_valid = vec![false; self.len()];
        for &i in &valid {
            is_valid[i] = true;
        }
        let train: Vec<usize> = (0..self.len()).filter(|&i| !is_valid[i]).collect();
        Ok((self.select(&train, "the training set")?, self.select(&valid, "the validation set")?))
    }

    /// Checks the invariants the loader relies on; `what` names the source in the message.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.images.len() != self.labels.len() * self.image_bytes() {
            return Err(Error::Data(format!(
                "{what}: {} image bytes for {} labels of 3x{}x{} images",
                self.images.len(),
                self.labels.len(),
                self.height,
                self.width
            )));
        }
        if let Some(i) = self.labels.iter().position(|&l| l as usize >= self.classes.len()) {
            return Err(Error::Data(format!(
                "{what}: image {i} has label {} but there are only {} classes",
                self.labels[i],
                self.classes.len()
            )));
        }
        Ok(())
    }
}

/// A dataset's training and test parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainTest {
    pub train: Dataset,
    pub test: Dataset,
}

/// The on-disk layouts [`load`] understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// CIFAR-10 binary batches in this directory (possibly the archive's `cifar-10-batches-bin`
    /// folder inside the directory given).
    CifarBinary(PathBuf),
    /// `train/<class>/*.{png,jpg,jpeg}` and `test/<class>/*` under this directory.
    ImageFolder(PathBuf),
}

/// Says which layout `dir` holds, or why it holds none.
pub fn detect_layout(dir: impl AsRef<Path>) -> Result<Layout> {
    let dir = dir.as_ref();
    if !dir.exists() {
        return Err(Error::Data(format!(
            "dataset directory {} does not exist; give a directory holding CIFAR-10 binary batches or an image folder, or fetch CIFAR-10 with --download {}",
            dir.display(),
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(Error::Data(format!(
            "{} is a file, not a dataset directory; give the directory that holds it",
            dir.display()
        )));
    }
    let binary_marker = |d: &Path| d.join(CIFAR10_TRAIN_FILES[0]).is_file() || d.join(CIFAR10_TEST_FILE).is_file();
    if binary_marker(dir) {
        return Ok(Layout::CifarBinary(dir.to_path_buf()));
    }
    let unpacked = dir.join(CIFAR10_ARCHIVE_DIR);
    if binary_marker(&unpacked) {
        return Ok(Layout::CifarBinary(unpacked));
    }
    if dir.join("train").is_dir() {
        return Ok(Layout::ImageFolder(dir.to_path_buf()));
    }
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::Data(format!("cannot list dataset directory {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    entries.sort();
    let shown = if entries.is_empty() {
        "it is empty".to_string()
    } else if entries.len() > 8 {
        format!("it holds {}, … ({} entries)", entries[..8].join(", "), entries.len())
    } else {
        format!("it holds {}", entries.join(", "))
    };
    Err(Error::Data(format!(
        "{} is not a dataset directory: expected either CIFAR-10 binary batches ({} … {} and {}, directly or in {}/) or an image folder (train/<class>/*.png|jpg|jpeg and test/<class>/*); {shown}",
        dir.display(),
        CIFAR10_TRAIN_FILES[0],
        CIFAR10_TRAIN_FILES[4],
        CIFAR10_TEST_FILE,
        CIFAR10_ARCHIVE_DIR
    )))
}

/// Loads the dataset in `dir`, whichever layout it has (see [`detect_layout`]). Image folders
/// must hold 32x32 images; use [`load_image_folder`] for another size.
pub fn load(dir: impl AsRef<Path>) -> Result<TrainTest> {
    match detect_layout(dir)? {
        Layout::CifarBinary(d) => load_cifar10_binary(d),
        Layout::ImageFolder(d) => load_image_folder(d, 32, 32),
    }
}

/// Folds a seed and two stream coordinates into one well-mixed 64-bit seed, so that nearby
/// (epoch, batch) pairs still get unrelated random streams.
pub(crate) fn mix(seed: u64, a: u64, b: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(splitmix(seed) ^ a) ^ b)
}

//! A streamed image folder: `DIR/train/<class>/*` with `DIR/val/<class>/*` or
//! `DIR/test/<class>/*`, PNG or JPEG of any size, decoded while training runs.
//!
//! [`ImageFolderStream::open`] lists the image paths up front (memory grows with the number of
//! files by one path each, never with the pixels). A [`StreamLoader`] decodes them on a pool of
//! worker threads into a bounded window of finished images, runs a caller-given [`Transform`]
//! on each, and hands out [`Batch`]es in order.
//!
//! Every batch is a pure function of (folder contents, options, seed, epoch, batch index): the
//! epoch's order comes from (seed, epoch), and the transform of the image at position `p` of
//! the epoch gets a [`StreamRng`] seeded from (seed, epoch, `p`) alone, never from which worker
//! ran it or when. Batches are therefore the same whatever the worker count, and an epoch can
//! resume at any batch.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::loader::Batch;
use super::mix;
use crate::{Error, Result};

/// The random number generator a [`Transform`] draws from; seeded per image from
/// (seed, epoch, position in the epoch).
pub type StreamRng = rand_pcg::Pcg64Mcg;

/// Turns one decoded RGB image into the model's input: `3 × H × W` `f32` in CHW order (channel
/// planes R, G, B, each row-major), the same length for every image of a loader. Randomness
/// (crops, flips) must come from the given generator only, so that batches stay reproducible.
pub type Transform = Arc<dyn Fn(&RgbImage, &mut StreamRng) -> Vec<f32> + Send + Sync>;

/// File name extensions read as images (compared case-insensitively); the format itself is
/// read from the bytes.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Which part of an image folder to stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `DIR/train/`.
    Train,
    /// `DIR/val/`.
    Val,
    /// `DIR/test/`.
    Test,
    /// `DIR/val/` when it exists, else `DIR/test/`.
    Eval,
}

/// How [`ImageFolderStream::open`] reads a folder and how its images are decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// The most bytes one image may need while it is decoded (its RGB pixels included); an
    /// image whose header declares more is refused before any pixel is decoded, so a
    /// decompression bomb cannot exhaust memory. 512 MiB by default.
    pub max_decode_bytes: u64,
    /// The largest width and height an image may declare, in pixels; 32,768 by default.
    pub max_side: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { max_decode_bytes: 512 << 20, max_side: 32_768 }
    }
}

/// The image paths of one split of an image folder, with their labels. Classes are the
/// sub-folders of `DIR/train/` sorted by name (label `i` is `classes()[i]`), whichever split
/// is opened, or the split's own when an evaluation split is opened without a `DIR/train/`.
/// Images are listed class after class; within a class, the folder's files in name order, then
/// its sub-folders', recursively (as torchvision's `ImageFolder` finds them).
#[derive(Clone, Debug)]
pub struct ImageFolderStream {
    split_dir: PathBuf,
    classes: Vec<String>,
    /// The split's folder name of each class, as on disk (`classes` may have replaced bytes that
    /// are not UTF-8).
    class_dirs: Vec<OsString>,
    /// Paths inside the class folder (usually just the file name): image `i` is
    /// `split_dir/class_dirs[labels[i]]/names[i]`, which keeps the
    /// listing to about 40 bytes an image for ImageNet-style names.
    names: Vec<Box<OsStr>>,
    labels: Vec<u32>,
    ignored_files: usize,
    opts: StreamOptions,
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

fn is_image_name(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    !hidden
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// How deep [`list_images`] follows folders inside a class folder; deeper is taken for a
/// symbolic-link loop.
const MAX_CLASS_FOLDER_DEPTH: usize = 32;

/// Appends the images under `dir` (= class folder / `relative`) to `names`, as paths relative to
/// the class folder: the folder's own files in name order, then each sub-folder's in name order,
/// as torchvision's `ImageFolder` walks a class (`sorted(os.walk(..., followlinks=True))`).
/// Other files are counted in `ignored`.
fn list_images(
    dir: &Path,
    relative: &Path,
    depth: usize,
    names: &mut Vec<Box<OsStr>>,
    ignored: &mut usize,
) -> Result<()> {
    if depth > MAX_CLASS_FOLDER_DEPTH {
        return Err(Error::Data(format!(
            "{} is more than {MAX_CLASS_FOLDER_DEPTH} folders deep inside its class folder; is there a symbolic-link loop?",
            dir.display()
        )));
    }
    let mut folders = Vec::new();
    for p in list_dir(dir)? {
        let name = p.file_name().expect("a listed path has a name");
        if p.is_dir() && !name.to_string_lossy().starts_with('.') {
            folders.push(p);
        } else if is_image_name(&p) && p.is_file() {
            names.push(relative.join(name).into_os_string().into_boxed_os_str());
        } else {
            *ignored += 1;
        }
    }
    for folder in folders {
        let name = folder.file_name().expect("a listed path has a name");
        list_images(&folder, &relative.join(name), depth + 1, names, ignored)?;
    }
    Ok(())
}

/// The class folders of `split_dir`, sorted by name.
fn class_dirs(split_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !split_dir.is_dir() {
        return Err(Error::Data(format!(
            "{} is missing; an image folder holds train/<class>/*.png|jpg|jpeg and val/<class>/* or test/<class>/*",
            split_dir.display()
        )));
    }
    let dirs: Vec<(String, PathBuf)> = list_dir(split_dir)?
        .into_iter()
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .map(|p| (p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), p))
        .collect();
    if dirs.is_empty() {
        return Err(Error::Data(format!(
            "{} has no class folders; an image folder holds <class>/*.png|jpg|jpeg under train/ and val/ or test/",
            split_dir.display()
        )));
    }
    Ok(dirs)
}

impl ImageFolderStream {
    /// Lists `split` of the image folder `dir` (see [`Split`]). Nothing is decoded.
    ///
    /// Errors ([`Error::Data`], naming the folder): the split's folder (or, for
    /// [`Split::Train`], `dir/train`) is missing or has no class folders; a class folder of the
    /// split holds no `.png`, `.jpg` or `.jpeg` file, even in its sub-folders; a class folder
    /// of `val/` or `test/` has no namesake under `train/`; folders nest more than 32 deep
    /// inside a class folder (a symbolic-link loop).
    /// Other files (and hidden ones) are not errors: they are left out and counted in
    /// [`ignored_files`](Self::ignored_files).
    pub fn open(dir: impl AsRef<Path>, split: Split, opts: StreamOptions) -> Result<ImageFolderStream> {
        let dir = dir.as_ref();
        let train_dir = dir.join("train");
        let split_dir = match split {
            Split::Train => train_dir.clone(),
            Split::Val => dir.join("val"),
            Split::Test => dir.join("test"),
            Split::Eval if dir.join("val").is_dir() => dir.join("val"),
            Split::Eval => dir.join("test"),
        };
        // An evaluation folder on its own (no train/) names its classes itself.
        let class_root =
            if split != Split::Train && !train_dir.is_dir() && split_dir.is_dir() { &split_dir } else { &train_dir };
        let classes: Vec<String> = class_dirs(class_root)?.into_iter().map(|(name, _)| name).collect();
        let mut names: Vec<Box<OsStr>> = Vec::new();
        let mut labels = Vec::new();
        let mut dirs: Vec<OsString> = classes.iter().map(OsString::from).collect();
        let mut ignored_files = 0;
        for (name, class_dir) in class_dirs(&split_dir)? {
            let Some(label) = classes.iter().position(|c| *c == name) else {
                return Err(Error::Data(format!(
                    "{} is a class the training set does not have (training classes: {}); every class of {} needs a folder under {}",
                    class_dir.display(),
                    classes.join(", "),
                    split_dir.display(),
                    dir.join("train").display()
                )));
            };
            dirs[label] = class_dir.file_name().unwrap_or_default().to_os_string();
            let before = names.len();
            list_images(&class_dir, Path::new(""), 0, &mut names, &mut ignored_files)?;
            if names.len() == before {
                return Err(Error::Data(format!(
                    "class folder {} holds no .png, .jpg or .jpeg images; add images or remove the folder",
                    class_dir.display()
                )));
            }
            labels.resize(names.len(), label as u32);
        }
        names.shrink_to_fit();
        labels.shrink_to_fit();
        Ok(ImageFolderStream { split_dir, classes, class_dirs: dirs, names, labels, ignored_files, opts })
    }

    /// Images listed.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No image was listed (never the case for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Class names, those of `train/`; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The folder of the opened split, e.g. `DIR/val`.
    pub fn split_dir(&self) -> &Path {
        &self.split_dir
    }

    /// Path of image `i`, in listing order.
    pub fn path(&self, i: usize) -> PathBuf {
        self.split_dir.join(&self.class_dirs[self.labels[i] as usize]).join(&*self.names[i])
    }

    /// Label of image `i`, below `classes().len()`.
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    /// Every label, in listing order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Files inside class folders that were left out: not `.png`/`.jpg`/`.jpeg`, hidden, or not
    /// a regular file.
    pub fn ignored_files(&self) -> usize {
        self.ignored_files
    }

    /// Reads and decodes image `i` into 8-bit RGB (greyscale, grey+alpha, RGBA, CMYK and
    /// 16-bit images are converted; alpha is dropped).
    ///
    /// Errors ([`Error::Data`], naming the file): it cannot be read; it is not a PNG or JPEG,
    /// or is corrupt or truncated; its declared size exceeds [`StreamOptions`]' limits.
    pub fn decode(&self, i: usize) -> Result<RgbImage> {
        decode_rgb(&self.path(i), &self.opts)
    }
}

/// Reads and decodes the PNG or JPEG at `path` into 8-bit RGB within `opts`' limits; see
/// [`ImageFolderStream::decode`].
pub fn decode_rgb(path: &Path, opts: &StreamOptions) -> Result<RgbImage> {
    decode_rgb_bytes(&crate::files::read(path)?, path, opts)
}

/// Decodes the bytes of a PNG or JPEG file into 8-bit RGB within `opts`' limits, as
/// [`decode_rgb`] does once it has read the file; `path` is what errors call it. The format is
/// read from the bytes (a JPEG's start, `FF D8 FF`, else a PNG's signature), never from the name.
///
/// Errors ([`Error::Data`], naming `path`): not a PNG or JPEG, corrupt or truncated (JPEGs are
/// decoded strictly), or a declared size beyond `opts`' limits (refused before any pixel is
/// decoded).
pub fn decode_rgb_bytes(bytes: &[u8], path: &Path, opts: &StreamOptions) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes, path, opts);
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(opts.max_decode_bytes);
    limits.max_image_width = Some(opts.max_side);
    limits.max_image_height = Some(opts.max_side);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(e) => too_large(path, opts, &e),
        e => corrupt(path, &e),
    })?;
    Ok(img.into_rgb8())
}

fn too_large(path: &Path, opts: &StreamOptions, why: &dyn std::fmt::Display) -> Error {
    Error::Data(format!(
        "{} declares an image too large to decode within the limits ({} MiB, {} pixels a side): {why}; \
         it may be a decompression bomb: remove it, or shrink it if it is a real image",
        path.display(),
        opts.max_decode_bytes >> 20,
        opts.max_side
    ))
}

fn corrupt(path: &Path, why: &dyn std::fmt::Display) -> Error {
    Error::Data(format!(
        "cannot decode {}: {why}; the file is corrupt, truncated or not a PNG/JPEG: replace or remove it \
         (or skip such files with --skip-bad-images)",
        path.display()
    ))
}

/// A JPEG (baseline or progressive; greyscale, YCbCr, CMYK or YCCK) straight into RGB with
/// zune-jpeg in strict mode, which refuses a truncated or corrupt stream where the lenient mode
/// would fill the missing part with grey.
fn decode_jpeg(bytes: &[u8], path: &Path, opts: &StreamOptions) -> Result<RgbImage> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let side = opts.max_side as usize;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| {
        let e = e.to_string();
        if e.contains("limit") {
            too_large(path, opts, &e)
        } else {
            corrupt(path, &e)
        }
    })?;
    let (w, h) = decoder.dimensions().map(|(w, h)| (w as u32, h as u32)).unwrap_or_default();
    // The RGB output plus the decoder's working planes, about as much again.
    let need = 2 * 3 * w as u64 * h as u64;
    if need > opts.max_decode_bytes {
        return Err(too_large(path, opts, &format!("{w}x{h} pixels need about {} MiB", need >> 20)));
    }
    let pixels = decoder.decode().map_err(|e| corrupt(path, &e))?;
    RgbImage::from_raw(w, h, pixels).ok_or_else(|| corrupt(path, &"the decoder returned too few pixels"))
}

/// How a [`StreamLoader`] draws batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLoaderOptions {
    pub batch_size: usize,
    pub seed: u64,
    /// A new permutation of the images every epoch; off reads them in listing order.
    pub shuffle: bool,
    /// Leave out the last batch of an epoch when it would be short.
    pub drop_last: bool,
    /// Decoding threads; 0 decodes each batch on the thread that asks for it.
    pub workers: usize,
    /// Finished batches the workers may run ahead of the consumer (at least 1 is used). The
    /// window of images in flight is `queue_depth × batch_size + workers`, which bounds memory.
    pub queue_depth: usize,
    /// A bad image (unreadable, corrupt, too large) is replaced by the next image of the
    /// epoch's order that decodes, and counted in [`StreamLoader::bad_images`], instead of
    /// ending the epoch with an error. Batches keep their size and stay reproducible.
    pub skip_bad_images: bool,
}

impl StreamLoaderOptions {
    /// A training loader: shuffled, full batches only, one worker per core, two batches ahead.
    pub fn train(batch_size: usize, seed: u64) -> StreamLoaderOptions {
        StreamLoaderOptions {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            workers: default_workers(),
            queue_depth: 2,
            skip_bad_images: false,
        }
    }

    /// An evaluation loader: every image once, in order; the last batch may be short.
    pub fn eval(batch_size: usize) -> StreamLoaderOptions {
        StreamLoaderOptions { shuffle: false, drop_last: false, ..StreamLoaderOptions::train(batch_size, 0) }
    }
}

/// The machine's cores (1 where that cannot be told), the default worker count.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What every batch of a loader is made from; shared with the workers.
struct Recipe {
    stream: ImageFolderStream,
    opts: StreamLoaderOptions,
    transform: Transform,
    /// Dataset indices found bad so far (with `skip_bad_images`).
    bad: Mutex<BTreeSet<usize>>,
}

/// One transformed image, or why it could not be made.
type Item = Result<(Vec<f32>, u32)>;

impl Recipe {
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.stream.len()).collect();
        if self.opts.shuffle {
            order.shuffle(&mut StreamRng::seed_from_u64(mix(self.opts.seed, epoch, u64::MAX)));
        }
        order
    }

    fn batches(&self) -> usize {
        let (n, b) = (self.stream.len(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Images in the epoch's batches: whole batches, or every image.
    fn epoch_images(&self) -> usize {
        (self.batches() * self.opts.batch_size).min(self.stream.len())
    }

    /// The image at position `pos` of `epoch`'s order, decoded and transformed.
    fn item(&self, order: &[usize], epoch: u64, pos: usize) -> Item {
        let mut rng = StreamRng::seed_from_u64(mix(self.opts.seed ^ 0x5354_5245_414d, epoch, pos as u64));
        let mut k = pos;
        loop {
            let i = order[k];
            let known_bad = self.opts.skip_bad_images && self.bad.lock().unwrap().contains(&i);
            if !known_bad {
                match self.stream.decode(i) {
                    Ok(img) => return Ok(((self.transform)(&img, &mut rng), self.stream.label(i))),
                    Err(e) if !self.opts.skip_bad_images => return Err(e),
                    Err(_) => {
                        self.bad.lock().unwrap().insert(i);
                    }
                }
            }
            k = (k + 1) % order.len();
            if k == pos {
                return Err(Error::Data(format!(
                    "no image of {} decodes; the last one tried was {}",
                    self.stream.split_dir().display(),
                    self.stream.path(i).display()
                )));
            }
        }
    }
}

/// Batches of transformed images streamed from an [`ImageFolderStream`].
pub struct StreamLoader {
    recipe: Arc<Recipe>,
}

impl StreamLoader {
    /// A loader over `stream` that turns each image into model input with `transform`.
    /// Errors ([`Error::Config`]) when the batch size is 0.
    pub fn new(stream: ImageFolderStream, opts: StreamLoaderOptions, transform: Transform) -> Result<StreamLoader> {
        if opts.batch_size == 0 {
            return Err(Error::Config("batch size 0: choose a batch size of at least 1".into()));
        }
        Ok(StreamLoader { recipe: Arc::new(Recipe { stream, opts, transform, bad: Mutex::new(BTreeSet::new()) }) })
    }

    /// The listed images.
    pub fn stream(&self) -> &ImageFolderStream {
        &self.recipe.stream
    }

    pub fn options(&self) -> &StreamLoaderOptions {
        &self.recipe.opts
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.recipe.batches()
    }

    /// The order in which `epoch` visits the images (indices into the stream).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.recipe.order(epoch)
    }

    /// Paths of the images found bad and skipped so far (with `skip_bad_images`), in listing
    /// order.
    pub fn bad_images(&self) -> Vec<PathBuf> {
        self.recipe.bad.lock().unwrap().iter().map(|&i| self.recipe.stream.path(i)).collect()
    }

    /// Batch `index` of `epoch`, decoded on the calling thread. Panics if `index` is not below
    /// [`batches_per_epoch`](Self::batches_per_epoch).
    pub fn batch(&self, epoch: u64, index: usize) -> Result<Batch> {
        assert!(index < self.batches_per_epoch(), "batch {index} of an epoch of {} batches", self.batches_per_epoch());
        let mut it = StreamEpoch::new(self.recipe.clone(), epoch, index, index + 1, 0);
        it.next().expect("one batch")
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> StreamEpoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on, to resume an interrupted epoch; they are
    /// the batches an uninterrupted run would have seen. Decoding starts at once on
    /// [`StreamLoaderOptions::workers`] threads, which stop when the iterator is dropped.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> StreamEpoch {
        let end = self.batches_per_epoch();
        let workers = self.recipe.opts.workers;
        StreamEpoch::new(self.recipe.clone(), epoch, start.min(end), end, workers)
    }
}

/// The window of images in flight between the workers and the consumer.
struct Window {
    /// Next position of the epoch's order a worker will claim.
    next: usize,
    /// Position of `slots[0]`, the next one the consumer takes.
    base: usize,
    /// Claimed positions `base..next`; `None` while a worker is still on it.
    slots: VecDeque<Option<std::thread::Result<Item>>>,
    stop: bool,
}

struct Shared {
    window: Mutex<Window>,
    /// Signalled when a slot is filled (the consumer waits on it).
    filled: Condvar,
    /// Signalled when the consumer frees a slot or the epoch stops (workers wait on it).
    freed: Condvar,
}

/// Iterator over one epoch's batches: `Ok(batch)` with `images` as `len × 3 × H × W` `f32`
/// (NCHW, as the transform made them), or the error of the first image that failed (naming
/// its file), after which it ends.
pub struct StreamEpoch {
    recipe: Arc<Recipe>,
    order: Arc<Vec<usize>>,
    epoch: u64,
    next: usize,
    end: usize,
    shared: Option<Arc<Shared>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl StreamEpoch {
    fn new(recipe: Arc<Recipe>, epoch: u64, start: usize, end: usize, workers: usize) -> StreamEpoch {
        let order = Arc::new(recipe.order(epoch));
        let b = recipe.opts.batch_size;
        let first = (start * b).min(recipe.epoch_images());
        let last = (end * b).min(recipe.epoch_images());
        let mut it = StreamEpoch {
            recipe: recipe.clone(),
            order: order.clone(),
            epoch,
            next: start,
            end,
            shared: None,
            threads: Vec::new(),
        };
        if workers == 0 || first >= last || cfg!(target_arch = "wasm32") {
            return it;
        }
        let capacity = recipe.opts.queue_depth.max(1) * b + workers;
        let shared = Arc::new(Shared {
            window: Mutex::new(Window { next: first, base: first, slots: VecDeque::new(), stop: false }),
            filled: Condvar::new(),
            freed: Condvar::new(),
        });
        static THREAD: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..workers {
            let (recipe, order, shared) = (recipe.clone(), order.clone(), shared.clone());
            let name = format!("densegpu-decode-{}", THREAD.fetch_add(1, Ordering::Relaxed));
            let spawned = std::thread::Builder::new().name(name).spawn(move || loop {
                let pos = {
                    let mut w = shared.window.lock().unwrap();
                    loop {
                        if w.stop || w.next >= last {
                            return;
                        }
                        if w.next - w.base < capacity {
                            break;
                        }
                        w = shared.freed.wait(w).unwrap();
                    }
                    w.next += 1;
                    w.slots.push_back(None);
                    w.next - 1
                };
                // A panicking transform is handed to the consumer rather than hanging it.
                let item = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recipe.item(&order, epoch, pos)));
                let mut w = shared.window.lock().unwrap();
                let base = w.base;
                w.slots[pos - base] = Some(item);
                shared.filled.notify_all();
            });
            match spawned {
                Ok(handle) => it.threads.push(handle),
                // Without threads the consumer decodes inline; with some, they suffice.
                Err(_) if it.threads.is_empty() => return it,
                Err(_) => break,
            }
        }
        it.shared = Some(shared);
        it
    }

    /// The transformed image at position `pos`, the next one in order.
    fn take(&mut self, pos: usize) -> Item {
        let Some(shared) = &self.shared else {
            return self.recipe.item(&self.order, self.epoch, pos);
        };
        let mut w = shared.window.lock().unwrap();
        debug_assert_eq!(w.base, pos);
        let item = loop {
            if let Some(Some(_)) = w.slots.front() {
                break w.slots.pop_front().flatten().expect("a filled slot");
            }
            w = shared.filled.wait(w).unwrap();
        };
        w.base += 1;
        shared.freed.notify_all();
        drop(w);
        item.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn stop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.window.lock().unwrap().stop = true;
            shared.freed.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared = None;
    }
}

impl Iterator for StreamEpoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let b = self.recipe.opts.batch_size;
        let (first, last) = (self.next * b, ((self.next + 1) * b).min(self.recipe.epoch_images()));
        let mut images: Vec<f32> = Vec::new();
        let mut labels = Vec::with_capacity(last - first);
        let mut per_image = None;
        for pos in first..last {
            let made = self.take(pos).and_then(|(pixels, label)| match per_image {
                Some(n) if n != pixels.len() => Err(Error::Data(format!(
                    "the transform made {} values from {} but {n} from the images before it; it must make \
                     3 x H x W values for every image",
                    pixels.len(),
                    self.recipe.stream.path(self.order[pos]).display(),
                ))),
                _ => Ok((pixels, label)),
            });
            match made {
                Ok((pixels, label)) => {
                    if per_image.is_none() {
                        per_image = Some(pixels.len());
                        images.reserve_exact(pixels.len() * (last - first));
                    }
                    images.extend_from_slice(&pixels);
                    labels.push(label);
                }
                Err(e) => {
                    self.next = self.end;
                    self.stop();
                    return Some(Err(e));
                }
            }
        }
        let batch = Batch { images, labels, epoch: self.epoch, index: self.next };
        self.next += 1;
        if self.next >= self.end {
            self.stop();
        }
        Some(Ok(batch))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (0, Some(n))
    }
}

impl Drop for StreamEpoch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl super::BatchSource for StreamLoader {
    type Epoch = StreamEpoch;

    fn batch_size(&self) -> usize {
        self.recipe.opts.batch_size
    }

    fn images(&self) -> usize {
        self.recipe.stream.len()
    }

    fn batches_per_epoch(&self) -> usize {
        self.recipe.batches()
    }

    fn epoch_from(&self, epoch: u64, start: usize) -> StreamEpoch {
        StreamLoader::epoch_from(self, epoch, start)
    }
}

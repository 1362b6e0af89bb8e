//! Batches of normalised NCHW `f32` images for `Session::train_step` / `eval_batch`.
//!
//! Every batch is a pure function of (dataset, options, epoch, batch index): the epoch's order
//! comes from (seed, epoch) and a batch's augmentation from (seed, epoch, index). Prefetching
//! on another thread therefore cannot change any result, and an epoch can resume at any batch.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use super::augment::{apply_table, crop_flip, CropFlip, Normalization};
use super::{mix, Dataset};
use crate::{Error, Result};

/// How a [`BatchLoader`] draws batches.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// A new permutation of the images every epoch; off reads them in dataset (file) order.
    pub shuffle: bool,
    /// Random crop with `pad` pixels of zero padding, then random horizontal flip.
    pub augment: bool,
    /// Zero padding for the random crop (4 in the reference recipe).
    pub pad: usize,
    /// Leave out the last batch of an epoch when it would be short.
    pub drop_last: bool,
    pub seed: u64,
    /// Batches prepared ahead on a background thread (native only); 0 prepares each batch when
    /// it is asked for.
    pub prefetch: usize,
    pub normalization: Normalization,
}

impl LoaderOptions {
    /// The reference recipe's training loader: shuffled, augmented, full batches only.
    pub fn train(batch_size: usize, seed: u64) -> LoaderOptions {
        LoaderOptions {
            batch_size,
            shuffle: true,
            augment: true,
            pad: 4,
            drop_last: true,
            seed,
            prefetch: 2,
            normalization: Normalization::CIFAR10,
        }
    }

    /// An evaluation loader: every image once, in order, not augmented; the last batch may be
    /// short.
    pub fn eval(batch_size: usize) -> LoaderOptions {
        LoaderOptions { shuffle: false, augment: false, drop_last: false, ..LoaderOptions::train(batch_size, 0) }
    }
}

/// One batch: `images` holds `labels.len()` images as normalised NCHW `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub epoch: u64,
    /// Position of this batch within its epoch.
    pub index: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What a batch is made from; shared with the prefetch thread.
struct BatchRecipe {
    data: Arc<Dataset>,
    opts: LoaderOptions,
    table: Vec<[f32; 256]>,
}

impl BatchRecipe {
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.opts.shuffle {
            order.shuffle(&mut Pcg64Mcg::seed_from_u64(mix(self.opts.seed, epoch, u64::MAX)));
        }
        order
    }

    fn batches(&self) -> usize {
        let (n, b) = (self.data.len(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn batch(&self, order: &[usize], epoch: u64, index: usize) -> Batch {
        let b = self.opts.batch_size;
        let members = &order[index * b..((index + 1) * b).min(order.len())];
        let per = self.data.image_bytes();
        let mut images = vec![0f32; members.len() * per];
        let mut rng = Pcg64Mcg::seed_from_u64(mix(self.opts.seed, epoch, index as u64));
        let mut scratch = vec![0u8; per];
        for (&i, dst) in members.iter().zip(images.chunks_exact_mut(per)) {
            let src = self.data.image(i);
            if self.opts.augment {
                let t = CropFlip::random(&mut rng, self.opts.pad);
                crop_flip(src, &mut scratch, self.data.height, self.data.width, self.opts.pad, t);
                apply_table(&self.table, &scratch, dst);
            } else {
                apply_table(&self.table, src, dst);
            }
        }
        Batch { images, labels: members.iter().map(|&i| self.data.labels[i]).collect(), epoch, index }
    }
}

/// Cuts a dataset into batches epoch by epoch.
pub struct BatchLoader {
    recipe: Arc<BatchRecipe>,
}

impl BatchLoader {
    pub fn new(data: impl Into<Arc<Dataset>>, opts: LoaderOptions) -> Result<BatchLoader> {
        let data = data.into();
        data.check("batch loader")?;
        if opts.batch_size == 0 {
            return Err(Error::Config("batch size 0: choose a batch size of at least 1".into()));
        }
        if opts.normalization.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(Error::Config(format!(
                "normalisation std {:?} must be positive in every channel",
                opts.normalization.std
            )));
        }
        let table = opts.normalization.table();
        Ok(BatchLoader { recipe: Arc::new(BatchRecipe { data, opts, table }) })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.recipe.data
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.recipe.opts
    }

    /// Batches in one epoch (the short last one counts unless `drop_last`).
    pub fn batches_per_epoch(&self) -> usize {
        self.recipe.batches()
    }

    /// The order in which `epoch` visits the images (the identity without shuffling).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.recipe.order(epoch)
    }

    /// Batch `index` of `epoch`, computed on the calling thread. Panics if `index` is not below
    /// [`batches_per_epoch`](Self::batches_per_epoch).
    pub fn batch(&self, epoch: u64, index: usize) -> Batch {
        assert!(index < self.batches_per_epoch(), "batch {index} of an epoch of {} batches", self.batches_per_epoch());
        self.recipe.batch(&self.recipe.order(epoch), epoch, index)
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on, to resume an interrupted epoch; the
    /// batches are the same as those an uninterrupted run would have seen.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochBatches {
        let end = self.batches_per_epoch();
        let start = start.min(end);
        let order = Arc::new(self.recipe.order(epoch));
        EpochBatches::new(self.recipe.clone(), order, epoch, start, end)
    }
}

/// Where a [`crate::trainer::Trainer`] draws its training batches from: an in-memory
/// [`BatchLoader`] or a streamed [`super::StreamLoader`]. Each batch must be a pure function of
/// (epoch, index), so that a resumed epoch sees the batches an uninterrupted one would have.
pub trait BatchSource {
    /// The batches of one epoch from some batch on; an `Err` (a file that cannot be decoded,
    /// say) ends the epoch.
    type Epoch: Iterator<Item = Result<Batch>>;

    /// Images per batch (the last batch of an epoch may hold fewer).
    fn batch_size(&self) -> usize;

    /// Images in the data set.
    fn images(&self) -> usize;

    /// Batches in one epoch.
    fn batches_per_epoch(&self) -> usize;

    /// The batches of `epoch` from batch `start` on.
    fn epoch_from(&self, epoch: u64, start: usize) -> Self::Epoch;
}

impl BatchSource for BatchLoader {
    type Epoch = std::iter::Map<EpochBatches, fn(Batch) -> Result<Batch>>;

    fn batch_size(&self) -> usize {
        self.recipe.opts.batch_size
    }

    fn images(&self) -> usize {
        self.recipe.data.len()
    }

    fn batches_per_epoch(&self) -> usize {
        self.recipe.batches()
    }

    fn epoch_from(&self, epoch: u64, start: usize) -> Self::Epoch {
        BatchLoader::epoch_from(self, epoch, start).map(Ok)
    }
}

/// Iterator over one epoch's batches, prepared ahead on a background thread when the options
/// ask for prefetching (native), or on demand.
pub struct EpochBatches {
    next: usize,
    end: usize,
    source: Source,
}

enum Source {
    Inline {
        recipe: Arc<BatchRecipe>,
        order: Arc<Vec<usize>>,
        epoch: u64,
    },
    #[cfg(not(target_arch = "wasm32"))]
    Prefetch {
        rx: Option<std::sync::mpsc::Receiver<Batch>>,
        worker: Option<std::thread::JoinHandle<()>>,
    },
}

impl EpochBatches {
    fn new(recipe: Arc<BatchRecipe>, order: Arc<Vec<usize>>, epoch: u64, start: usize, end: usize) -> EpochBatches {
        #[cfg(not(target_arch = "wasm32"))]
        if recipe.opts.prefetch > 0 && start < end {
            // The bound keeps memory to `prefetch` ready batches plus the one being built.
            let (tx, rx) = std::sync::mpsc::sync_channel(recipe.opts.prefetch);
            let worker = std::thread::Builder::new()
                .name("densegpu-prefetch".into())
                .spawn(move || {
                    for i in start..end {
                        // A closed channel means the consumer dropped the epoch early.
                        if tx.send(recipe.batch(&order, epoch, i)).is_err() {
                            break;
                        }
                    }
                })
                .expect("cannot start the batch prefetch thread");
            return EpochBatches { next: start, end, source: Source::Prefetch { rx: Some(rx), worker: Some(worker) } };
        }
        EpochBatches { next: start, end, source: Source::Inline { recipe, order, epoch } }
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let batch = match &mut self.source {
            Source::Inline { recipe, order, epoch } => recipe.batch(order, *epoch, self.next),
            #[cfg(not(target_arch = "wasm32"))]
            Source::Prefetch { rx, worker } => match rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok(b)) => b,
                _ => {
                    // The worker only hangs up early by panicking: pass its panic on.
                    if let Some(Err(panic)) = worker.take().map(|w| w.join()) {
                        std::panic::resume_unwind(panic);
                    }
                    return None;
                }
            },
        };
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for EpochBatches {}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Source::Prefetch { rx, worker } = &mut self.source {
            // Hang up first so a worker blocked on a full channel wakes and stops.
            drop(rx.take());
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}

//! Batch shards: the batch split into consecutive runs of images so that no activation tensor
//! has to fit one storage binding whole.
//!
//! A storage binding holds at most 128 MiB on lavapipe, by default in every browser and on many
//! mobile GPUs, and a DenseNet's first dense block at batch 151 (BC-100, k=12, 32x32) or its stem
//! at 224x224 and batch 64 is larger. The planner therefore splits every batched storage
//! (C, N, H, W) into shards (C, n_k, H, W), n_0 + n_1 + ... = N, each a whole storage of its own
//! in the arena; every launch runs once per shard, and what reduces over the batch (batch-norm
//! statistics and backward sums, weight gradients, the loss) combines across shards with the
//! semantics of one whole batch (see the op families' `record`).
//!
//! Where everything fits there is one shard, and the launches are exactly those of an unsharded
//! step.

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::schedule::Schedule;

/// How a batch of `total()` images is split: shard `k` holds images
/// `first(k) .. first(k) + sizes[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchShards {
    /// Images per shard, in batch order; none is zero.
    pub sizes: Vec<u32>,
}

/// One shard as a launch sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Its index, from 0.
    pub index: usize,
    /// Its first image within the batch.
    pub first: u32,
    /// Its images.
    pub images: u32,
    /// Images in the whole batch.
    pub total: u32,
}

impl Shard {
    /// The part of a batched length `len` (elements over the whole batch, a multiple of the
    /// batch size, as every length of a (C, N, H, W) storage or of a channel range of one is)
    /// that falls in this shard.
    pub fn part(&self, len: u32) -> u32 {
        debug_assert_eq!(len % self.total, 0, "{len} elements do not split over a batch of {}", self.total);
        (len as u64 * self.images as u64 / self.total as u64) as u32
    }
}

impl BatchShards {
    /// One shard holding the whole batch of `n`.
    pub fn whole(n: u32) -> BatchShards {
        BatchShards { sizes: vec![n] }
    }

    /// `n` images in `count` shards as equal as can be, the larger ones first.
    pub fn even(n: u32, count: u32) -> BatchShards {
        let count = count.clamp(1, n.max(1));
        let (base, extra) = (n / count, n % count);
        BatchShards { sizes: (0..count).map(|k| base + u32::from(k < extra)).collect() }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Never: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Images in the batch.
    pub fn total(&self) -> u32 {
        self.sizes.iter().sum()
    }

    /// The most images in one shard.
    pub fn largest(&self) -> u32 {
        self.sizes.iter().copied().max().unwrap_or(0)
    }

    /// Shard `k`.
    pub fn shard(&self, k: usize) -> Shard {
        Shard { index: k, first: self.sizes[..k].iter().sum(), images: self.sizes[k], total: self.total() }
    }

    /// Every shard in batch order.
    pub fn iter(&self) -> impl Iterator<Item = Shard> + '_ {
        (0..self.len()).map(|k| self.shard(k))
    }

    /// The fewest shards of `schedule`'s batch such that every batched value's shard fits in
    /// `binding_bytes`, with at most `max_images` images a shard when given (tests force
    /// small, unequal shards with it).
    ///
    /// Errors with [`Error::TooLarge`] naming the tensor when one image's part of a value is
    /// already larger than a binding (nothing smaller than one image can be split off), or when
    /// a value holds more than 2^32 - 1 elements over the whole batch.
    pub fn plan(
        graph: &Graph,
        schedule: &Schedule,
        binding_bytes: u64,
        max_images: Option<u32>,
    ) -> Result<BatchShards> {
        let n = graph.batch;
        let mut per_shard = max_images.unwrap_or(n).clamp(1, n.max(1));
        for v in &schedule.values {
            let storage = &graph.storages[v.storage.0];
            if v.elems > u32::MAX as u64 {
                return Err(Error::TooLarge(format!(
                    "tensor `{}` needs {} bytes ({:.1} GiB): a tensor of a batch may hold at most 2^32 - 1 values, \
                     as the kernels count them in 32 bits; reduce the batch size or the image resolution",
                    storage.name,
                    v.elems * 4,
                    (v.elems * 4) as f64 / (1u64 << 30) as f64
                )));
            }
            if !storage.batched || v.elems == 0 {
                continue;
            }
            let image_bytes = v.elems * 4 / n as u64;
            if image_bytes > binding_bytes {
                return Err(Error::TooLarge(format!(
                    "one image's part of `{}` needs {image_bytes} bytes ({:.1} MiB), more than one storage binding \
                     holds ({binding_bytes} bytes, {:.1} MiB); batch shards cannot split an image, so this model \
                     needs smaller images or a device with larger storage bindings",
                    storage.name,
                    image_bytes as f64 / (1 << 20) as f64,
                    binding_bytes as f64 / (1 << 20) as f64
                )));
            }
            per_shard = per_shard.min((binding_bytes / image_bytes) as u32);
        }
        Ok(BatchShards::even(n, n.div_ceil(per_shard.max(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_batch_evenly_larger_first() {
        assert_eq!(BatchShards::even(5, 3).sizes, [2, 2, 1]);
        assert_eq!(BatchShards::even(64, 2).sizes, [32, 32]);
        assert_eq!(BatchShards::even(7, 1).sizes, [7]);
        let s = BatchShards::even(5, 3);
        assert_eq!(s.shard(2), Shard { index: 2, first: 4, images: 1, total: 5 });
        assert_eq!(s.shard(1).part(10 * 5), 20);
        assert_eq!(s.total(), 5);
    }
}

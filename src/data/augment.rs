//! The reference recipe's augmentation (random crop with zero padding, then random horizontal
//! flip, as torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip apply them) and
//! per-channel normalisation.

use rand::Rng;

use super::{CHANNELS, CIFAR10_MEAN, CIFAR10_STD};

/// One draw of the augmentation: the crop window's top-left corner inside the zero-padded
/// image (`0..=2·pad` on each axis; `pad, pad` is the identity) and whether to mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    pub x: usize,
    pub y: usize,
    pub flip: bool,
}

impl CropFlip {
    /// The transform that changes nothing.
    pub fn identity(pad: usize) -> CropFlip {
        CropFlip { x: pad, y: pad, flip: false }
    }

    /// A uniformly random crop offset and a fair coin for the flip.
    pub fn random<R: Rng + ?Sized>(rng: &mut R, pad: usize) -> CropFlip {
        CropFlip { x: rng.random_range(0..=2 * pad), y: rng.random_range(0..=2 * pad), flip: rng.random_bool(0.5) }
    }
}

/// Applies `t` to one 3×H×W image: `dst[c][y][x]` is the padded source at
/// `(y + t.y, x' + t.x)` with `x' = W−1−x` when flipped, and 0 where that falls in the padding.
pub fn crop_flip(src: &[u8], dst: &mut [u8], height: usize, width: usize, pad: usize, t: CropFlip) {
    let plane = height * width;
    assert_eq!(src.len(), CHANNELS * plane, "crop_flip: source is not 3x{height}x{width}");
    assert_eq!(dst.len(), CHANNELS * plane, "crop_flip: destination is not 3x{height}x{width}");
    assert!(t.x <= 2 * pad && t.y <= 2 * pad, "crop_flip: offset {t:?} outside 0..={}", 2 * pad);
    for c in 0..CHANNELS {
        let (s, d) = (&src[c * plane..(c + 1) * plane], &mut dst[c * plane..(c + 1) * plane]);
        for y in 0..height {
            let row = &mut d[y * width..(y + 1) * width];
            // Source row in unpadded coordinates; outside 0..height it is padding.
            let sy = (y + t.y).checked_sub(pad).filter(|&sy| sy < height);
            let Some(sy) = sy else {
                row.fill(0);
                continue;
            };
            let srow = &s[sy * width..(sy + 1) * width];
            for (x, out) in row.iter_mut().enumerate() {
                let xc = if t.flip { width - 1 - x } else { x };
                *out = match (xc + t.x).checked_sub(pad) {
                    Some(sx) if sx < width => srow[sx],
                    _ => 0,
                };
            }
        }
    }
}

/// Per-channel normalisation `(v/255 − mean) / std`, applied through a lookup table.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The CIFAR-10 statistics of the reference recipe.
    pub const CIFAR10: Normalization = Normalization { mean: CIFAR10_MEAN, std: CIFAR10_STD };
    /// `v/255` only.
    pub const NONE: Normalization = Normalization { mean: [0.0; 3], std: [1.0; 3] };

    pub(crate) fn table(&self) -> Vec<[f32; 256]> {
        (0..CHANNELS)
            .map(|c| {
                let mut t = [0f32; 256];
                for (v, out) in t.iter_mut().enumerate() {
                    *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
                t
            })
            .collect()
    }

    /// Normalises one 3×H×W image into `dst`.
    pub fn apply(&self, src: &[u8], dst: &mut [f32]) {
        apply_table(&self.table(), src, dst);
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::CIFAR10
    }
}

pub(crate) fn apply_table(table: &[[f32; 256]], src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let plane = src.len() / CHANNELS;
    for (c, t) in table.iter().enumerate() {
        for (o, &v) in dst[c * plane..(c + 1) * plane].iter_mut().zip(&src[c * plane..(c + 1) * plane]) {
            *o = t[v as usize];
        }
    }
}

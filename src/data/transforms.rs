//! torchvision's ImageNet transforms, as pure functions on decoded RGB images (no GPU, no I/O):
//! `RandomResizedCrop(S)` + `RandomHorizontalFlip()` for training, `Resize(S·256/224)` +
//! `CenterCrop(S)` for evaluation, then `ToTensor()` + `Normalize(IMAGENET_MEAN, IMAGENET_STD)`.
//!
//! Each function follows the torchvision code it names (torchvision 0.2x,
//! `torchvision/transforms/transforms.py` and `functional.py`), and resizing follows what
//! torchvision calls on PIL images: Pillow's `Image.resize(..., BILINEAR)`, i.e.
//! `ImagingResample` in Pillow's `src/libImaging/Resample.c` (see [`resize_bilinear_antialias`]).
//!
//! CIFAR-sized data does not come through here: the CIFAR recipe keeps
//! [`crop_flip`](super::crop_flip) and [`Normalization::CIFAR10`](super::Normalization::CIFAR10).

use image::RgbImage;
use rand::Rng;

use super::{Normalization, CHANNELS};

/// ImageNet's per-channel mean (RGB, on the 0..1 scale), as torchvision's classification
/// reference (`references/classification/presets.py`) and every torchvision weights' `transforms`
/// use it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB, on the 0..1 scale); same source as
/// [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalization {
    /// ImageNet's statistics ([`IMAGENET_MEAN`], [`IMAGENET_STD`]).
    pub const IMAGENET: Normalization = Normalization { mean: IMAGENET_MEAN, std: IMAGENET_STD };
}

/// `RandomResizedCrop`'s default area range, as a fraction of the image.
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// `RandomResizedCrop`'s default aspect-ratio (width / height) range.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// A crop window in pixels: rows `top..top + height`, columns `left..left + width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// Python's `round` (half to even), then `int`.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// The crop box of torchvision's `RandomResizedCrop.get_params(img, scale, ratio)` for an
/// image of `h`×`w`: up to ten tries of a target area `h·w·U(scale)` and an aspect ratio
/// `exp(U(ln ratio.0, ln ratio.1))` (log-uniform), with `w = round(√(area·aspect))`,
/// `h = round(√(area/aspect))` (Python's round); the first with `0 < w ≤ W` and `0 < h ≤ H` is
/// placed uniformly (`top` in `0..=H−h`, `left` in `0..=W−w`). After ten misses it returns
/// [`fallback_crop_box`]. The draws come from `rng` rather than torch's generator, so the
/// distribution is torchvision's but not its exact sequence.
pub fn random_resized_crop_box<R: Rng + ?Sized>(
    h: u32,
    w: u32,
    rng: &mut R,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = h as f64 * w as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        // torch's `uniform_(a, b)` is a + (b − a)·U[0, 1).
        let target_area = area * (scale.0 + (scale.1 - scale.0) * rng.random::<f64>());
        let aspect = (log_lo + (log_hi - log_lo) * rng.random::<f64>()).exp();
        let cw = py_round((target_area * aspect).sqrt());
        let ch = py_round((target_area / aspect).sqrt());
        if 0 < cw && cw <= w as i64 && 0 < ch && ch <= h as i64 {
            let (ch, cw) = (ch as u32, cw as u32);
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return CropBox { top, left, height: ch, width: cw };
        }
    }
    fallback_crop_box(h, w, ratio)
}

/// `RandomResizedCrop.get_params`' fallback after ten misses, a central crop whose aspect is
/// clamped into `ratio`: when `W/H < min(ratio)`, `w = W`, `h = round(w / min(ratio))`; when
/// `W/H > max(ratio)`, `h = H`, `w = round(h · max(ratio))`; otherwise the whole image. The box
/// sits at `((H − h) // 2, (W − w) // 2)`.
pub fn fallback_crop_box(h: u32, w: u32, ratio: (f64, f64)) -> CropBox {
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < lo {
        (py_round(w as f64 / lo) as u32, w)
    } else if in_ratio > hi {
        (h, py_round(h as f64 * hi) as u32)
    } else {
        (h, w)
    };
    // The rounding cannot overshoot in practice (W/lo < H), but a box never leaves the image.
    let (ch, cw) = (ch.min(h), cw.min(w));
    CropBox { top: (h - ch) / 2, left: (w - cw) / 2, height: ch, width: cw }
}

/// The size `Resize(resize_to)` gives an `h`×`w` image (torchvision's
/// `_compute_resized_output_size` with one int): the shorter side becomes `resize_to`, the
/// longer `int(resize_to · long / short)` (truncated). Returns `(new_h, new_w)`.
pub fn eval_resize_size(h: u32, w: u32, resize_to: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: int * int is exact, `/` is one correctly rounded division, `int` truncates.
    let new_long = ((resize_to as u64 * long as u64) as f64 / short as f64) as u32;
    if w <= h {
        (new_long, resize_to)
    } else {
        (resize_to, new_long)
    }
}

/// The evaluation resize for crop size `size`: `size · 256 / 224` rounded down (256 for 224,
/// torchvision's reference `val_resize_size`; the floor is timm's `scale_size =
/// floor(img_size / crop_pct)` with `crop_pct = 0.875`).
pub fn eval_resize_for(size: u32) -> u32 {
    (size as u64 * 256 / 224) as u32
}

/// torchvision's `CenterCrop(size)` box on an `h`×`w` image that is at least `size` on each
/// side: `top = int(round((h − size) / 2.0))`, `left = int(round((w − size) / 2.0))`, with
/// Python's round (half to even: an offset of 16.5 gives 16, 17.5 gives 18).
pub fn center_crop_box(h: u32, w: u32, size: u32) -> CropBox {
    assert!(h >= size && w >= size, "center_crop_box: {h}x{w} is smaller than the crop {size}");
    let off = |d: u32| py_round(d as f64 / 2.0) as u32;
    CropBox { top: off(h - size), left: off(w - size), height: size, width: size }
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// One axis's resampling weights: for output pixel `i`, input pixels `start[i]..start[i] +
/// weights[i].len()` of the (cropped) axis, as Pillow's `precompute_coeffs` with the bilinear
/// (triangle, support 1) filter computes them, then `normalize_coeffs_8bpc`'s fixed point.
struct Coeffs {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    // `(double)(in1 - in0) / outSize` with in0 = 0, in1 = in_size (Pillow's box is floats).
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size as usize);
    let mut weights = Vec::with_capacity(out_size as usize);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let mut k: Vec<f64> = (0..xmax.max(0))
            .map(|x| {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                (1.0 - t.abs()).max(0.0)
            })
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|v| *v /= ww);
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        weights
            .push(k.iter().map(|&v| if v < 0.0 { (-0.5 + v * one) as i32 } else { (0.5 + v * one) as i32 }).collect());
        start.push(xmin as usize);
    }
    Coeffs { start, weights }
}

/// Pillow's `clip8`: the rounded fixed-point sum back to a byte.
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes the `region` of `img` to `out_w`×`out_h` as Pillow's `Image.resize((out_w, out_h),
/// Image.BILINEAR)` does on the cropped image (torchvision's PIL path: `F.resized_crop` crops,
/// then resizes). Pillow's `ImagingResampleInner`: a separable triangle filter whose support is
/// `max(1, in/out)` input pixels (antialiasing when shrinking, plain bilinear when enlarging),
/// centred on `(x + 0.5)·in/out`, weights normalised per output pixel and rounded to 22-bit
/// fixed point; a horizontal pass over only the rows the vertical pass reads, rounded to 8 bits,
/// then a vertical pass. An axis whose size does not change is copied, as Pillow skips its pass.
pub fn resized_crop(img: &RgbImage, region: CropBox, out_w: u32, out_h: u32) -> RgbImage {
    assert!(out_w > 0 && out_h > 0, "resized_crop: empty output {out_w}x{out_h}");
    assert!(
        region.width > 0
            && region.height > 0
            && region.left + region.width <= img.width()
            && region.top + region.height <= img.height(),
        "resized_crop: {region:?} is not inside the {}x{} image",
        img.width(),
        img.height()
    );
    let src = img.as_raw();
    let stride = img.width() as usize * CHANNELS;
    let (left, top) = (region.left as usize, region.top as usize);
    let horiz = precompute_coeffs(region.width, out_w);
    let vert = precompute_coeffs(region.height, out_h);
    let need_h = out_w != region.width;
    let need_v = out_h != region.height;

    // Rows of the region the vertical pass reads (all of them when it is skipped).
    let (first, last) = if need_v {
        let n = out_h as usize - 1;
        (vert.start[0], vert.start[n] + vert.weights[n].len())
    } else {
        (0, region.height as usize)
    };
    let tw = out_w as usize;
    let mut temp = vec![0u8; (last - first) * tw * CHANNELS];
    for (r, row) in temp.chunks_exact_mut(tw * CHANNELS).enumerate() {
        let srow = &src[(top + first + r) * stride..][..stride];
        if !need_h {
            row.copy_from_slice(&srow[left * CHANNELS..(left + tw) * CHANNELS]);
            continue;
        }
        for (xx, out) in row.chunks_exact_mut(CHANNELS).enumerate() {
            let x0 = left + horiz.start[xx];
            let mut acc = [1i32 << (PRECISION_BITS - 1); CHANNELS];
            for (x, &k) in horiz.weights[xx].iter().enumerate() {
                let p = &srow[(x0 + x) * CHANNELS..][..CHANNELS];
                for c in 0..CHANNELS {
                    acc[c] += p[c] as i32 * k;
                }
            }
            for c in 0..CHANNELS {
                out[c] = clip8(acc[c]);
            }
        }
    }
    if !need_v {
        return RgbImage::from_raw(out_w, out_h, temp).expect("resized_crop: buffer size");
    }
    let mut out = vec![0u8; out_h as usize * tw * CHANNELS];
    for (yy, row) in out.chunks_exact_mut(tw * CHANNELS).enumerate() {
        let y0 = vert.start[yy] - first;
        let ks = &vert.weights[yy];
        for (i, o) in row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &k) in ks.iter().enumerate() {
                acc += temp[(y0 + y) * tw * CHANNELS + i] as i32 * k;
            }
            *o = clip8(acc);
        }
    }
    RgbImage::from_raw(out_w, out_h, out).expect("resized_crop: buffer size")
}

/// The whole of `img` resized to `out_w`×`out_h`, as Pillow's `Image.resize(...,
/// Image.BILINEAR)` (see [`resized_crop`]).
pub fn resize_bilinear_antialias(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    resized_crop(img, CropBox { top: 0, left: 0, height: img.height(), width: img.width() }, out_w, out_h)
}

/// `Resize(eval_resize_for(size))` + `CenterCrop(size)` on the PIL path, as bytes: the
/// evaluation transform before `ToTensor` and `Normalize`.
pub fn eval_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (h, w) = eval_resize_size(img.height(), img.width(), eval_resize_for(size));
    let resized = resize_bilinear_antialias(img, w, h);
    let b = center_crop_box(h, w, size);
    image::imageops::crop_imm(&resized, b.left, b.top, b.width, b.height).to_image()
}

/// `RandomResizedCrop(size)` (default scale and ratio) + `RandomHorizontalFlip(0.5)` on the
/// PIL path, as bytes. The crop box is drawn first, then the flip's coin.
pub fn train_crop<R: Rng + ?Sized>(img: &RgbImage, size: u32, rng: &mut R) -> RgbImage {
    let b = random_resized_crop_box(img.height(), img.width(), rng, RRC_SCALE, RRC_RATIO);
    let mut out = resized_crop(img, b, size, size);
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// `ToTensor()` + `Normalize(norm.mean, norm.std)`: interleaved RGB bytes to normalised CHW
/// floats, `(v/255 − mean) / std` in `f32` as torchvision computes it.
pub fn to_chw_normalized(img: &RgbImage, norm: &Normalization) -> Vec<f32> {
    let mut out = vec![0.0; img.as_raw().len()];
    write_chw_normalized(img, norm, &mut out);
    out
}

/// [`to_chw_normalized`] into `dst` (3·H·W floats), for filling one image's slot of a batch.
pub fn write_chw_normalized(img: &RgbImage, norm: &Normalization, dst: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(dst.len(), CHANNELS * plane, "write_chw_normalized: destination is not 3x{plane}");
    let table = norm.table();
    for (i, p) in img.pixels().enumerate() {
        for c in 0..CHANNELS {
            dst[c * plane + i] = table[c][p.0[c] as usize];
        }
    }
}

/// The ImageNet training transform: [`train_crop`] then ImageNet normalisation, as `size`×`size`
/// CHW floats.
pub fn train_transform<R: Rng + ?Sized>(img: &RgbImage, size: u32, rng: &mut R) -> Vec<f32> {
    to_chw_normalized(&train_crop(img, size, rng), &Normalization::IMAGENET)
}

/// The ImageNet evaluation transform: [`eval_crop`] then ImageNet normalisation, as
/// `size`×`size` CHW floats.
pub fn eval_transform(img: &RgbImage, size: u32) -> Vec<f32> {
    to_chw_normalized(&eval_crop(img, size), &Normalization::IMAGENET)
}

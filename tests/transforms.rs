//! torchvision's ImageNet transforms (`densegpu::data::transforms`) against their definitions:
//! RandomResizedCrop's boxes and fallback, Resize's size rule, CenterCrop's offsets, and
//! Pillow's bilinear resampling worked by hand on small images.

use densegpu::data::transforms::*;
use densegpu::data::Normalization;
use image::{Rgb, RgbImage};
use rand::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// An RNG that replays scripted `next_u64` values (then zeros), counting the calls.
struct Scripted {
    values: Vec<u64>,
    calls: usize,
}

impl RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        let v = self.values.get(self.calls).copied().unwrap_or(0);
        self.calls += 1;
        v
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[test]
fn random_resized_crop_boxes_stay_within_torchvisions_bounds() {
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    for &(h, w) in &[(375u32, 500u32), (500, 375), (224, 224), (32, 32), (1000, 300), (64, 97)] {
        let (mut log_aspects, mut fallbacks) = (Vec::new(), 0);
        for _ in 0..4000 {
            let b = random_resized_crop_box(h, w, &mut rng, RRC_SCALE, RRC_RATIO);
            assert!(b.height > 0 && b.width > 0 && b.top + b.height <= h && b.left + b.width <= w, "{b:?} in {h}x{w}");
            if b == fallback_crop_box(h, w, RRC_RATIO) {
                fallbacks += 1;
                continue;
            }
            // w and h are rounded from an area in [0.08, 1]·H·W and an aspect in [3/4, 4/3], so
            // the box is within half a pixel of those bounds on each side.
            let area = b.height as f64 * b.width as f64 / (h as f64 * w as f64);
            let (hi_w, hi_h) = (b.width as f64 + 0.5, b.height as f64 + 0.5);
            let (lo_w, lo_h) = (b.width as f64 - 0.5, b.height as f64 - 0.5);
            assert!(hi_w * hi_h >= 0.08 * (h * w) as f64 && area <= 1.0, "area fraction {area} for {b:?} in {h}x{w}");
            assert!(hi_w / lo_h >= 0.75 && lo_w / hi_h <= 4.0 / 3.0, "aspect of {b:?}");
            log_aspects.push((b.width as f64 / b.height as f64).ln());
        }
        assert!(fallbacks < 400, "{fallbacks} fallbacks for {h}x{w}");
        if h >= 224 && w >= 224 && h == w {
            // Log-uniform aspect: the accepted log-aspects are centred on 0 and spread over
            // [ln 3/4, ln 4/3] (a uniform's quartiles at ±ln(4/3)/2).
            log_aspects.sort_by(f64::total_cmp);
            let q = |p: f64| log_aspects[(p * log_aspects.len() as f64) as usize];
            let half = (4.0f64 / 3.0).ln() / 2.0;
            assert!(q(0.5).abs() < 0.02, "median log-aspect {}", q(0.5));
            assert!(
                (q(0.75) - half).abs() < 0.03 && (q(0.25) + half).abs() < 0.03,
                "quartiles {} {}",
                q(0.25),
                q(0.75)
            );
        }
    }
}

#[test]
fn random_resized_crop_takes_ten_tries_before_falling_back() {
    // `random::<f64>()` maps u64::MAX to just under 1: area fraction ~1 with aspect ~4/3 gives
    // w = round(√(H·W·4/3)) > W, a miss. Nine misses, then area 0.08 and aspect 1 (u = 0.5)
    // is accepted on the tenth try and its offsets come from the next draws.
    let miss = [u64::MAX, u64::MAX];
    let mut values: Vec<u64> = miss.iter().copied().cycle().take(18).collect();
    values.extend([0, 1u64 << 63]);
    let mut rng = Scripted { values, calls: 0 };
    let b = random_resized_crop_box(100, 100, &mut rng, RRC_SCALE, RRC_RATIO);
    // √(0.08·10000) = 28.28 → 28 on both sides.
    assert_eq!((b.height, b.width), (28, 28));
    assert!(b.top <= 72 && b.left <= 72);
    // Ten misses fall back, drawing nothing more.
    let mut rng = Scripted { values: vec![u64::MAX; 20], calls: 0 };
    assert_eq!(
        random_resized_crop_box(100, 100, &mut rng, RRC_SCALE, RRC_RATIO),
        fallback_crop_box(100, 100, RRC_RATIO)
    );
    assert_eq!(rng.calls, 20);
    assert_eq!(fallback_crop_box(100, 100, RRC_RATIO), CropBox { top: 0, left: 0, height: 100, width: 100 });
}

#[test]
fn random_resized_crop_fallback_clamps_the_ratio_as_torchvision() {
    // A 10-high, 1000-wide strip: every try's h = round(√(area/aspect)) ≥ 24 > 10, so all ten
    // miss. W/H = 100 > 4/3: h = H = 10, w = round(10·4/3) = 13, centred (0, (1000−13)//2).
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    for _ in 0..50 {
        assert_eq!(
            random_resized_crop_box(10, 1000, &mut rng, RRC_SCALE, RRC_RATIO),
            CropBox { top: 0, left: 493, height: 10, width: 13 }
        );
        // Tall: W/H = 0.01 < 3/4: w = W = 10, h = round(10/0.75) = round(13.33) = 13.
        assert_eq!(
            random_resized_crop_box(1000, 10, &mut rng, RRC_SCALE, RRC_RATIO),
            CropBox { top: 493, left: 0, height: 13, width: 10 }
        );
    }
    // Python's round is half to even: h = 3 → w = round(4.0) = 4; h = 9 → round(12.0);
    // W/H < 3/4 with w = 3: h = round(4.0) = 4; w = 6 → h = round(8.0) = 8 (exact values);
    // h = 15 → w = round(20.0) = 20.
    assert_eq!(fallback_crop_box(3, 100, RRC_RATIO), CropBox { top: 0, left: 48, height: 3, width: 4 });
    assert_eq!(fallback_crop_box(100, 3, RRC_RATIO), CropBox { top: 48, left: 0, height: 4, width: 3 });
    // Ratio given in either order, as torchvision takes min/max.
    assert_eq!(fallback_crop_box(15, 200, (4.0 / 3.0, 0.75)), CropBox { top: 0, left: 90, height: 15, width: 20 });
    // Half-way cases round to even: ratio 1.5 on h = 5: 7.5 → 8; h = 7: 10.5 → 10.
    assert_eq!(fallback_crop_box(5, 100, (0.5, 1.5)).width, 8);
    assert_eq!(fallback_crop_box(7, 100, (0.5, 1.5)).width, 10);
    // Impossible scales fall back too: the whole image when its aspect is within the range.
    let mut rng = Pcg64Mcg::seed_from_u64(2);
    assert_eq!(
        random_resized_crop_box(40, 50, &mut rng, (2.0, 3.0), RRC_RATIO),
        CropBox { top: 0, left: 0, height: 40, width: 50 }
    );
}

#[test]
fn evaluation_resize_and_centre_crop_follow_torchvision() {
    // Resize(256): shorter side 256, longer int(256·long/short).
    assert_eq!(eval_resize_size(375, 500, 256), (256, 341)); // 341.33
    assert_eq!(eval_resize_size(500, 375, 256), (341, 256));
    assert_eq!(eval_resize_size(477, 720, 256), (256, 386)); // 386.41
    assert_eq!(eval_resize_size(300, 300, 256), (256, 256));
    assert_eq!(eval_resize_size(3, 5, 4), (4, 6)); // 6.67 truncated
    assert_eq!(eval_resize_size(32, 32, 256), (256, 256));
    assert_eq!(eval_resize_for(224), 256);
    assert_eq!(eval_resize_for(32), 36);
    // CenterCrop(224): round((h−224)/2) half to even.
    assert_eq!(center_crop_box(256, 341, 224), CropBox { top: 16, left: 58, height: 224, width: 224 }); // 58.5 → 58
    assert_eq!(center_crop_box(256, 259, 224), CropBox { top: 16, left: 18, height: 224, width: 224 }); // 17.5 → 18
    assert_eq!(center_crop_box(224, 224, 224), CropBox { top: 0, left: 0, height: 224, width: 224 });
    assert_eq!(center_crop_box(5, 4, 2), CropBox { top: 2, left: 1, height: 2, width: 2 });
    // 1.5 → 2, 1
}

fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = f(x, y);
        Rgb([v, v / 2, 255 - v])
    })
}

#[test]
fn resizing_matches_pillows_bilinear_worked_by_hand() {
    // Shrinking 4 → 2: scale 2, support 2, output 0 centred at 1: taps x = 0..3 (xmax clipped at
    // 4: int(1 + 2 + 0.5) = 3) with triangle weights (1 − |x + 0.5 − 1|/2) = 0.75, 0.75, 0.25,
    // normalised to 3/7, 3/7, 1/7. For a row 0, 70, 140, 210: 0·3/7 + 70·3/7 + 140/7 = 50.
    // Output 1 (centre 3, taps 1..4): weights 0.25, 0.75, 0.75 → (70 + 3·140 + 3·210)/7 = 160.
    let img = grey(4, 1, |x, _| (70 * x) as u8);
    let out = resize_bilinear_antialias(&img, 2, 1);
    assert_eq!(out.get_pixel(0, 0).0[0], 50);
    assert_eq!(out.get_pixel(1, 0).0[0], 160);
    // Other channels go through the same weights: 35·3/7 + 70/7 = 25; 255 − ... by linearity.
    assert_eq!(out.get_pixel(0, 0).0[1], 25);
    assert_eq!(out.get_pixel(0, 0).0[2], 205);

    // Enlarging 2 → 4: plain bilinear, support 1: output 0 at centre 0.5·0.5 = 0.25 reads pixel 0
    // only (weight of pixel 1: 1 − |1 + 0.5 − 0.25| < 0 → 0); output 1 at 0.75: pixels 0 and 1
    // with weights 0.75 and 0.25; 2: 0.25/0.75; 3: pixel 1 only. Row 0, 100 → 0, 25, 75, 100.
    let img = grey(2, 1, |x, _| (100 * x) as u8);
    let out = resize_bilinear_antialias(&img, 4, 1);
    let row: Vec<u8> = (0..4).map(|x| out.get_pixel(x, 0).0[0]).collect();
    assert_eq!(row, [0, 25, 75, 100]);

    // Rounding to 8 bits after the horizontal pass (Pillow's 8-bit intermediate): 3 → 2 wide,
    // 1 → 2 high. Row 0, 1, 0: scale 1.5, output 0 centre 0.75, taps 0..2 (int(0.75+1.5+0.5) = 2)
    // weights 1 − |0.5 − 0.75|/1.5 = 5/6, 1 − |1.5 − 0.75|/1.5 = 1/2 → 1·(1/2)/(4/3) = 0.375 → 0.
    let img = grey(3, 1, |x, _| (x == 1) as u8 * 255);
    let out = resize_bilinear_antialias(&img, 2, 2);
    // 255·0.375 = 95.6 → 96, then the vertical pass enlarges 1 → 2 rows of the same value.
    assert_eq!(out.get_pixel(0, 0).0[0], 96);
    assert_eq!(out.get_pixel(0, 1).0[0], 96);
    assert_eq!(out.get_pixel(1, 0).0[0], 96);

    // Same size: a copy.
    let img = grey(5, 3, |x, y| (x * 40 + y * 7) as u8);
    assert_eq!(resize_bilinear_antialias(&img, 5, 3), img);
    // A constant image stays constant at any size (weights sum to one).
    let flat = grey(37, 23, |_, _| 201);
    for (w, h) in [(5, 4), (80, 50), (37, 7), (1, 1)] {
        assert!(resize_bilinear_antialias(&flat, w, h).pixels().all(|p| p.0 == [201, 100, 54]));
    }
}

#[test]
fn resized_crop_is_crop_then_resize() {
    let img = grey(40, 30, |x, y| ((x * 13 + y * 29) % 251) as u8);
    let b = CropBox { top: 5, left: 7, height: 20, width: 17 };
    let cropped = image::imageops::crop_imm(&img, b.left, b.top, b.width, b.height).to_image();
    for (w, h) in [(8, 8), (17, 20), (33, 9)] {
        assert_eq!(resized_crop(&img, b, w, h), resize_bilinear_antialias(&cropped, w, h));
    }
}

#[test]
fn evaluation_transform_of_a_small_image_by_hand() {
    // A 3x5 (h x w) image with eval size 2: Resize(int(2·256/224) = 2) → shorter side 2, longer
    // int(2·5/3) = 3: 2x3. CenterCrop(2): top round(0/2) = 0, left round(1/2) = round(0.5) = 0.
    let img = grey(5, 3, |x, y| (x * 50 + y * 10) as u8);
    assert_eq!(eval_resize_for(2), 2);
    assert_eq!(eval_resize_size(3, 5, 2), (2, 3));
    assert_eq!(center_crop_box(2, 3, 2), CropBox { top: 0, left: 0, height: 2, width: 2 });
    let crop = eval_crop(&img, 2);
    let resized = resize_bilinear_antialias(&img, 3, 2);
    assert_eq!(crop, image::imageops::crop_imm(&resized, 0, 0, 2, 2).to_image());
    // Horizontal 5 → 3 (scale 5/3, support 5/3): output 0 centred at 5/6 reads pixels 0 and 1
    // with weights 1 − |x + 0.5 − 5/6|·3/5 = 0.8, 0.6 (pixel 2's is 0), so row y gives
    // (0.8·10y + 0.6·(50 + 10y))/1.4 = 10y + 21.4 → 21, 31, 41. Vertical 3 → 2 (scale 1.5):
    // output row 0 centred at 0.75 reads rows 0 and 1 with weights 5/6, 1/2:
    // (21·5/6 + 31/2)/(4/3) = 24.75 → 25. (Pillow 13 gives 25 for this image too.)
    assert_eq!(crop.get_pixel(0, 0).0[0], 25);
    assert_eq!(crop.get_pixel(0, 0).0, [25, 13, 230]);
    assert_eq!(crop.get_pixel(1, 1).0, [116, 58, 139]);
    let floats = eval_transform(&img, 2);
    assert_eq!(floats.len(), 3 * 2 * 2);
    let expected = (25.0f32 / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
    assert_eq!(floats[0], expected);
    assert_eq!(floats, to_chw_normalized(&crop, &Normalization::IMAGENET));
    // CHW: plane 1 is green.
    assert_eq!(floats[4], (crop.get_pixel(0, 0).0[1] as f32 / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]);
}

#[test]
fn training_transform_is_a_crop_resize_and_a_fair_flip() {
    let img = grey(64, 48, |x, y| ((x * 3 + y * 5) % 256) as u8);
    let mut flips = 0;
    for seed in 0..200 {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let out = train_crop(&img, 16, &mut rng);
        assert_eq!(out.dimensions(), (16, 16));
        // Replay the draws: the box first, then the coin.
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let b = random_resized_crop_box(48, 64, &mut rng, RRC_SCALE, RRC_RATIO);
        let plain = resized_crop(&img, b, 16, 16);
        let flip = rand::Rng::random_bool(&mut rng, 0.5);
        let expected = if flip { image::imageops::flip_horizontal(&plain) } else { plain };
        assert_eq!(out, expected);
        flips += flip as u32;
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        assert_eq!(train_transform(&img, 16, &mut rng), to_chw_normalized(&out, &Normalization::IMAGENET));
    }
    assert!((70..=130).contains(&flips), "{flips} flips in 200");
}

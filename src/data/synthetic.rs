//! An embedded 10-class 32x32 RGB dataset that needs no files, for demos and smoke tests.
//!
//! Each class is a shape or pattern drawn in a colour from a class-specific hue band over a
//! random dull background, with random position, size, angle, phase, lighting and pixel noise.
//! Two classes share each hue band (class `c` and `c + 5`), and the bands overlap a little, so
//! colour alone does not tell the classes apart: a network has to see the shape too.

use rand::Rng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64Mcg;

use super::{mix, Dataset, TrainTest, CHANNELS};

/// Class names of [`synthetic`], in label order.
pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "antidiagonal_stripes",
    "disc",
    "square",
    "ring",
    "cross",
    "checkerboard",
    "triangle",
];

const SIZE: usize = 32;
const TRAIN_STREAM: u64 = 0x0074_7261_696e;
const TEST_STREAM: u64 = 0x7465_7374;

/// `train_len` training and `test_len` test images, a function of `seed` alone. Image `i` has
/// label `i % 10`, so every class has `len / 10` images (the first `len % 10` classes one more)
/// and any prefix is nearly balanced.
pub fn synthetic(train_len: usize, test_len: usize, seed: u64) -> TrainTest {
    TrainTest {
        train: generate(train_len, mix(seed, TRAIN_STREAM, 0)),
        test: generate(test_len, mix(seed, TEST_STREAM, 0)),
    }
}

fn generate(len: usize, seed: u64) -> Dataset {
    let per = CHANNELS * SIZE * SIZE;
    let mut images = vec![0u8; len * per];
    let fill = |first: usize, out: &mut [u8]| {
        for (k, dst) in out.chunks_exact_mut(per).enumerate() {
            let i = first + k;
            // Each image has its own stream, so the split between threads changes nothing.
            let mut rng = Pcg64Mcg::seed_from_u64(mix(seed, i as u64, 1));
            draw(i % SYNTHETIC_CLASSES.len(), &mut rng, dst);
        }
    };
    let threads = if cfg!(target_arch = "wasm32") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
    };
    if threads <= 1 || len < 256 {
        fill(0, &mut images);
    } else {
        let chunk = len.div_ceil(threads);
        std::thread::scope(|s| {
            for (t, out) in images.chunks_mut(chunk * per).enumerate() {
                s.spawn(move || fill(t * chunk, out));
            }
        });
    }
    Dataset {
        images,
        labels: (0..len).map(|i| (i % SYNTHETIC_CLASSES.len()) as u32).collect(),
        classes: SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect(),
        height: SIZE,
        width: SIZE,
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Coverage of a shape edge at signed distance `d` (negative inside), one pixel wide, so
/// that small shapes keep their outline instead of aliasing into blocks.
fn cover(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

fn draw(class: usize, rng: &mut Pcg64Mcg, out: &mut [u8]) {
    let hue = (class % 5) as f32 / 5.0 + rng.random_range(-0.13..0.13);
    let fg = hsv(hue, rng.random_range(0.55..1.0), rng.random_range(0.6..1.0));
    let bg = hsv(rng.random(), rng.random_range(0.0..0.35), rng.random_range(0.05..0.5));
    let scale: f32 = rng.random_range(0.75..1.25);
    let (cx, cy) = (rng.random_range(10.0..22.0f32), rng.random_range(10.0..22.0f32));
    let tilt = rng.random_range(-12f32..12.0).to_radians();
    let (sin, cos) = tilt.sin_cos();

    // Stripes: period, phase and an orientation 45° apart per class, jittered by `tilt`.
    let period = rng.random_range(4.0..8.0f32);
    let phase = rng.random_range(0.0..period);
    let angle = [90.0f32, 0.0, 45.0, 135.0][class % 4].to_radians() + tilt;
    let (sa, ca) = angle.sin_cos();
    let radius = rng.random_range(5.0..9.5f32) * scale;
    let thick = rng.random_range(1.5..3.0f32);
    let cell = rng.random_range(3.0..6.0f32);
    let (ox, oy) = (rng.random_range(0.0..2.0 * cell), rng.random_range(0.0..2.0 * cell));

    let shade = rng.random_range(-0.3..0.3f32);
    let shade_angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (shade_s, shade_c) = shade_angle.sin_cos();
    let noise = Normal::new(0.0f32, rng.random_range(0.03..0.08)).expect("positive sigma");

    let plane = SIZE * SIZE;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            // Shape-local coordinates: centred and slightly rotated.
            let (dx, dy) = (px - cx, py - cy);
            let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
            let m = match class {
                0..=3 => {
                    let t = ((px * ca + py * sa + phase) / period).rem_euclid(1.0);
                    // Bars half a period wide, centred where the phase is one half.
                    cover(((t - 0.5).abs() - 0.25) * period)
                }
                4 => cover((u * u + v * v).sqrt() - radius),
                5 => cover(u.abs().max(v.abs()) - radius * 0.85),
                6 => cover(((u * u + v * v).sqrt() - radius).abs() - thick * 0.5),
                7 => {
                    let arm = |a: f32, b: f32| (a.abs() - radius).max(b.abs() - thick * 0.5);
                    cover(arm(u, v).min(arm(v, u)))
                }
                8 => {
                    let (i, j) = (((px + ox) / cell).floor() as i32, ((py + oy) / cell).floor() as i32);
                    ((i + j).rem_euclid(2)) as f32
                }
                _ => {
                    // Upward triangle with apex at v = −h/2 and base at v = +h/2.
                    let h = radius * 1.8;
                    let half = (v + h * 0.5) / h * radius;
                    cover((-h * 0.5 - v).max(v - h * 0.5).max((u.abs() - half) * 0.85))
                }
            };
            let light = 1.0 + shade * ((px - 16.0) * shade_c + (py - 16.0) * shade_s) / 16.0;
            for c in 0..CHANNELS {
                let value = (bg[c] * (1.0 - m) + fg[c] * m) * light + noise.sample(rng);
                out[c * plane + y * SIZE + x] = (value * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

//! ReLU, accumulation and dropout.

/// PyTorch's `relu`: NaN stays NaN (`f32::max` would drop it).
pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| if v > 0.0 || v.is_nan() { v } else { 0.0 }).collect()
}

/// PyTorch's `threshold_backward(dy, x, 0)`: the gradient is zeroed where `x <= 0`, so a NaN
/// input passes it through.
pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter().zip(dy).map(|(&x, &g)| if x <= 0.0 { 0.0 } else { g }).collect()
}

/// dst + src.
pub fn add(src: &[f32], dst: &[f32]) -> Vec<f32> {
    src.iter().zip(dst).map(|(a, b)| b + a).collect()
}

fn mix32(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// The counter-based hash that decides element `i`'s fate under `seed` (the GPU's
/// `dropout_hash` in `elementwise.wgsl`, written independently).
pub fn dropout_hash(seed: [u32; 2], i: u32) -> u32 {
    let k0 = mix32(seed[0] ^ 0x9e37_79b9);
    let k1 = mix32(seed[1] ^ k0);
    mix32(mix32(i ^ k0).wrapping_add(k1))
}

/// `true` where an element is kept: its hash is at least rate·2^32.
pub fn dropout_mask(len: usize, rate: f32, seed: [u32; 2]) -> Vec<bool> {
    let threshold = (rate as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    (0..len as u32).map(|i| dropout_hash(seed, i) >= threshold).collect()
}

fn masked_scaled(v: &[f32], rate: f32, seed: [u32; 2]) -> Vec<f32> {
    let scale = 1.0 / (1.0 - rate);
    v.iter().zip(dropout_mask(v.len(), rate, seed)).map(|(&a, keep)| if keep { a * scale } else { 0.0 }).collect()
}

/// Inverted dropout: kept values scaled by 1/(1 − rate), dropped ones zero.
pub fn dropout_forward(x: &[f32], rate: f32, seed: [u32; 2]) -> Vec<f32> {
    masked_scaled(x, rate, seed)
}

pub fn dropout_backward(dy: &[f32], rate: f32, seed: [u32; 2]) -> Vec<f32> {
    masked_scaled(dy, rate, seed)
}

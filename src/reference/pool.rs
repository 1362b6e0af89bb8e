//! Pooling references: 2x2 average, 3x3 stride-2 pad-1 max, and global average, on
//! (C, N, H, W) data. The backward passes scatter (each output sends its gradient to its
//! inputs), the opposite formulation from the GPU's gather, so the two check each other.

use crate::ops::pool::PoolShape;

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dims(s: PoolShape) -> (usize, usize, usize) {
    (s.planes() as usize, s.h as usize, s.w as usize)
}

pub fn avg_pool_forward64(s: PoolShape, x: &[f64]) -> Vec<f64> {
    let (planes, h, w) = dims(s);
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![0.0; planes * oh * ow];
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0.0;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    sum += x[(pl * h + 2 * oy + dy) * w + 2 * ox + dx];
                }
                y[(pl * oh + oy) * ow + ox] = sum / 4.0;
            }
        }
    }
    y
}

pub fn avg_pool_backward64(s: PoolShape, dy: &[f64]) -> Vec<f64> {
    let (planes, h, w) = dims(s);
    let (oh, ow) = (h / 2, w / 2);
    let mut dx = vec![0.0; planes * h * w];
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let g = dy[(pl * oh + oy) * ow + ox] / 4.0;
                for (ddy, ddx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    dx[(pl * h + 2 * oy + ddy) * w + 2 * ox + ddx] += g;
                }
            }
        }
    }
    dx
}

/// The flat index (within the plane) of the first maximum of window (oy, ox), scanning the
/// window row-major and skipping padded cells, exactly as PyTorch's max pool does; a NaN wins
/// over any number and the last NaN over earlier ones (PyTorch's `val > max || isnan(val)`).
fn max_window_argmax(x: &[f64], h: usize, w: usize, oy: usize, ox: usize) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for ky in 0..3 {
        for kx in 0..3 {
            let (iy, ix) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                continue;
            }
            let j = iy as usize * w + ix as usize;
            if best.is_none_or(|(_, m)| x[j] > m || x[j].is_nan()) {
                best = Some((j, x[j]));
            }
        }
    }
    best.expect("every window holds at least one real cell").0
}

pub fn max_pool_forward64(s: PoolShape, x: &[f64]) -> Vec<f64> {
    let (planes, h, w) = dims(s);
    let (oh, ow) = (s.max_out().0 as usize, s.max_out().1 as usize);
    let mut y = vec![0.0; planes * oh * ow];
    for pl in 0..planes {
        let plane = &x[pl * h * w..(pl + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                y[(pl * oh + oy) * ow + ox] = plane[max_window_argmax(plane, h, w, oy, ox)];
            }
        }
    }
    y
}

pub fn max_pool_backward64(s: PoolShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let (planes, h, w) = dims(s);
    let (oh, ow) = (s.max_out().0 as usize, s.max_out().1 as usize);
    let mut dx = vec![0.0; planes * h * w];
    for pl in 0..planes {
        let plane = &x[pl * h * w..(pl + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                dx[pl * h * w + max_window_argmax(plane, h, w, oy, ox)] += dy[(pl * oh + oy) * ow + ox];
            }
        }
    }
    dx
}

pub fn global_avg_pool_forward64(s: PoolShape, x: &[f64]) -> Vec<f64> {
    let hw = (s.h * s.w) as usize;
    x.chunks(hw).map(|plane| plane.iter().sum::<f64>() / hw as f64).collect()
}

pub fn global_avg_pool_backward64(s: PoolShape, dy: &[f64]) -> Vec<f64> {
    let hw = (s.h * s.w) as usize;
    dy.iter().flat_map(|&g| std::iter::repeat_n(g / hw as f64, hw)).collect()
}

pub fn avg_pool_forward(s: PoolShape, x: &[f32]) -> Vec<f32> {
    to32(&avg_pool_forward64(s, &to64(x)))
}

pub fn avg_pool_backward(s: PoolShape, dy: &[f32]) -> Vec<f32> {
    to32(&avg_pool_backward64(s, &to64(dy)))
}

pub fn max_pool_forward(s: PoolShape, x: &[f32]) -> Vec<f32> {
    to32(&max_pool_forward64(s, &to64(x)))
}

pub fn max_pool_backward(s: PoolShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    to32(&max_pool_backward64(s, &to64(x), &to64(dy)))
}

pub fn global_avg_pool_forward(s: PoolShape, x: &[f32]) -> Vec<f32> {
    to32(&global_avg_pool_forward64(s, &to64(x)))
}

pub fn global_avg_pool_backward(s: PoolShape, dy: &[f32]) -> Vec<f32> {
    to32(&global_avg_pool_backward64(s, &to64(dy)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1] without rand: distinct enough that no max-pool window
    /// holds a tie, so the finite differences never straddle an argmax switch.
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks backward(dy) against central differences of x ↦ Σ dy ⊙ forward(x).
    fn check(
        len: usize,
        out_len: usize,
        forward: impl Fn(&[f64]) -> Vec<f64>,
        backward: impl Fn(&[f64], &[f64]) -> Vec<f64>,
    ) {
        let x = values(len, 1);
        let dy = values(out_len, 2);
        let analytic = backward(&x, &dy);
        let h = 1e-6;
        for i in 0..len {
            let mut xp = x.clone();
            xp[i] += h;
            let mut xm = x.clone();
            xm[i] -= h;
            let dot = |x: &[f64]| forward(x).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
            let numeric = (dot(&xp) - dot(&xm)) / (2.0 * h);
            assert!((numeric - analytic[i]).abs() < 1e-7, "element {i}: numeric {numeric}, analytic {}", analytic[i]);
        }
    }

    #[test]
    fn pool_backwards_match_finite_differences() {
        for s in [PoolShape::new(2, 3, 5, 7), PoolShape::new(1, 2, 4, 4), PoolShape::new(3, 1, 3, 5)] {
            let (ah, aw) = s.avg_out();
            check(
                s.len(),
                (s.planes() * ah * aw) as usize,
                |x| avg_pool_forward64(s, x),
                |_, dy| avg_pool_backward64(s, dy),
            );
            let (mh, mw) = s.max_out();
            check(
                s.len(),
                (s.planes() * mh * mw) as usize,
                |x| max_pool_forward64(s, x),
                |x, dy| max_pool_backward64(s, x, dy),
            );
            check(
                s.len(),
                s.planes() as usize,
                |x| global_avg_pool_forward64(s, x),
                |_, dy| global_avg_pool_backward64(s, dy),
            );
        }
    }

    #[test]
    fn max_pool_matches_pytorch_on_ties_and_padding() {
        // One 4x4 plane, all equal: each window's gradient goes to its first real cell.
        // Window (oy, ox) covers rows 2·oy−1 ..= 2·oy+1 and the same for columns, clipped.
        let s = PoolShape::new(1, 1, 4, 4);
        let x = vec![-3.0; 16];
        let dx = max_pool_backward64(s, &x, &[1.0, 10.0, 100.0, 1000.0]);
        let mut want = vec![0.0; 16];
        want[0] = 1.0; // window (0,0): rows 0..=1, cols 0..=1 → (0,0)
        want[1] = 10.0; // window (0,1): rows 0..=1, cols 1..=3 → (0,1)
        want[4] = 100.0; // window (1,0): rows 1..=3, cols 0..=1 → (1,0)
        want[5] = 1000.0; // window (1,1): rows 1..=3, cols 1..=3 → (1,1)
        assert_eq!(dx, want);
        // All-negative values: the output is a real value, never the padding's zero.
        assert_eq!(max_pool_forward64(s, &x), vec![-3.0; 4]);
        assert_eq!(s.max_out(), (2, 2));
        assert_eq!(PoolShape::new(1, 1, 112, 112).max_out(), (56, 56));
        assert_eq!(PoolShape::new(1, 1, 7, 5).max_out(), (4, 3));
    }
}

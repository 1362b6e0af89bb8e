//! 2-D convolution without bias: activations (C, N, H, W), weights OIHW, zero padding.

use crate::ops::conv::Conv2dShape;

/// The flat index of `x[c][n][h][w]` in a (C, N, H, W) tensor with spatial size `hs` x `ws`.
fn at(s: &Conv2dShape, c: u32, n: u32, h: u32, w: u32, hs: u32, ws: u32) -> usize {
    (((c as usize * s.n as usize + n as usize) * hs as usize + h as usize) * ws as usize) + w as usize
}

fn weight_at(s: &Conv2dShape, co: u32, ci: u32, i: u32, j: u32) -> usize {
    ((co as usize * s.c_in as usize + ci as usize) * s.kh as usize + i as usize) * s.kw as usize + j as usize
}

/// Calls `f(co, ci, n, oh, ow, ih, iw, i, j)` for every (output, tap) pair whose input pixel
/// lies inside the image: the one loop nest that forward and both backwards share, so the
/// three can only disagree on what they do with a pair, never on which pairs exist.
fn for_each_tap(s: &Conv2dShape, mut f: impl FnMut([u32; 9])) {
    let (oh_n, ow_n) = (s.out_h(), s.out_w());
    for co in 0..s.c_out {
        for ci in 0..s.c_in {
            for n in 0..s.n {
                for oh in 0..oh_n {
                    for ow in 0..ow_n {
                        for i in 0..s.kh {
                            let ih = (oh * s.stride + i) as i64 - s.pad as i64;
                            if ih < 0 || ih >= s.h as i64 {
                                continue;
                            }
                            for j in 0..s.kw {
                                let iw = (ow * s.stride + j) as i64 - s.pad as i64;
                                if iw < 0 || iw >= s.w as i64 {
                                    continue;
                                }
                                f([co, ci, n, oh, ow, ih as u32, iw as u32, i, j]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// y[co, n, oh, ow] = Σ x[ci, n, oh·s − p + i, ow·s − p + j] · w[co, ci, i, j]
pub fn conv2d_forward(s: &Conv2dShape, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (oh_n, ow_n) = (s.out_h(), s.out_w());
    let mut y = vec![0.0f64; (s.c_out * s.n * oh_n * ow_n) as usize];
    for_each_tap(s, |[co, ci, n, oh, ow, ih, iw, i, j]| {
        y[at(s, co, n, oh, ow, oh_n, ow_n)] +=
            x[at(s, ci, n, ih, iw, s.h, s.w)] as f64 * w[weight_at(s, co, ci, i, j)] as f64;
    });
    y.into_iter().map(|v| v as f32).collect()
}

/// dx[ci, n, ih, iw] = Σ over the outputs that read that pixel of dy · w.
pub fn conv2d_backward_input(s: &Conv2dShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (oh_n, ow_n) = (s.out_h(), s.out_w());
    let mut dx = vec![0.0f64; (s.c_in * s.n * s.h * s.w) as usize];
    for_each_tap(s, |[co, ci, n, oh, ow, ih, iw, i, j]| {
        dx[at(s, ci, n, ih, iw, s.h, s.w)] +=
            dy[at(s, co, n, oh, ow, oh_n, ow_n)] as f64 * w[weight_at(s, co, ci, i, j)] as f64;
    });
    dx.into_iter().map(|v| v as f32).collect()
}

/// dw[co, ci, i, j] = Σ over batch and output pixels of dy · x.
pub fn conv2d_backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (oh_n, ow_n) = (s.out_h(), s.out_w());
    let mut dw = vec![0.0f64; (s.c_out * s.c_in * s.kh * s.kw) as usize];
    for_each_tap(s, |[co, ci, n, oh, ow, ih, iw, i, j]| {
        dw[weight_at(s, co, ci, i, j)] +=
            dy[at(s, co, n, oh, ow, oh_n, ow_n)] as f64 * x[at(s, ci, n, ih, iw, s.h, s.w)] as f64;
    });
    dw.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        // A fixed-seed LCG keeps this test free of the RNG crates' API.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The loss L = Σ y · g for a fixed g has ∂L/∂x = backward_input(g) and
    /// ∂L/∂w = backward_weight(x, g); central differences in f64 check both.
    /// (Conv is linear in each argument, so the differences are exact up to rounding.)
    fn check(s: Conv2dShape) {
        let x = values((s.c_in * s.n * s.h * s.w) as usize, 1);
        let w = values((s.c_out * s.c_in * s.kh * s.kw) as usize, 2);
        let g = values((s.c_out * s.n * s.out_h() * s.out_w()) as usize, 3);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            conv2d_forward(&s, x, w).iter().zip(&g).map(|(&y, &g)| y as f64 * g as f64).sum()
        };
        let eps = 0.125f32; // a power of two, so x ± eps is exact in f32
        let dx = conv2d_backward_input(&s, &g, &w);
        for i in 0..x.len() {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let numeric = (loss(&plus, &w) - loss(&minus, &w)) / (2.0 * eps as f64);
            assert!((numeric - dx[i] as f64).abs() < 1e-4, "{s:?} dx[{i}]: {numeric} vs {}", dx[i]);
        }
        let dw = conv2d_backward_weight(&s, &x, &g);
        for i in 0..w.len() {
            let (mut plus, mut minus) = (w.clone(), w.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let numeric = (loss(&x, &plus) - loss(&x, &minus)) / (2.0 * eps as f64);
            assert!((numeric - dw[i] as f64).abs() < 1e-4, "{s:?} dw[{i}]: {numeric} vs {}", dw[i]);
        }
    }

    #[test]
    fn backward_matches_finite_differences_of_forward() {
        let shape =
            |n, c_in, h, w, c_out, kh, kw, stride, pad| Conv2dShape { n, c_in, h, w, c_out, kh, kw, stride, pad };
        check(shape(2, 3, 5, 4, 2, 3, 3, 1, 1));
        check(shape(1, 2, 7, 6, 3, 3, 2, 2, 1));
        check(shape(2, 2, 3, 3, 2, 1, 1, 1, 0));
    }

    #[test]
    fn forward_of_a_hand_sized_case() {
        // One 2x2 image, one 2x2 kernel, no padding: a single dot product.
        let s = Conv2dShape { n: 1, c_in: 1, h: 2, w: 2, c_out: 1, kh: 2, kw: 2, stride: 1, pad: 0 };
        assert_eq!(conv2d_forward(&s, &[1.0, 2.0, 3.0, 4.0], &[1.0, 10.0, 100.0, 1000.0]), vec![4321.0]);
    }
}

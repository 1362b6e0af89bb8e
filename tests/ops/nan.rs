//! NaN propagation, as PyTorch does it: a NaN that enters ReLU, a fused BN-ReLU, a batch norm's
//! statistics or a max pool comes out as NaN, so a diverging run shows in its loss at once.
//! WGSL lets `max(NaN, 0.0)` return 0.0 (lavapipe does), which hid a diverged activation as a
//! zero; each test here fails with `max`-based kernels.

use crate::common::*;
use densegpu::ops::batchnorm::kernels::{batchnorm_apply, batchnorm_train_stats};
use densegpu::ops::batchnorm::BatchNormShape;
use densegpu::ops::conv::kernels::{self as conv, ConvKernel};
use densegpu::ops::conv::Conv2dShape;
use densegpu::ops::elementwise::kernels as elementwise;
use densegpu::ops::pool::kernels::{max_pool_backward, max_pool_forward};
use densegpu::ops::pool::PoolShape;
use densegpu::reference;

/// Equal values, with NaN equal to NaN (a NaN's payload is not compared).
#[track_caller]
fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w || (g.is_nan() && w.is_nan()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn relu_keeps_nan_forward_and_passes_its_gradient_backward() {
    let len = 1000;
    let mut x = random(len, 1);
    for i in [0, 17, 500, 999] {
        x[i] = f32::NAN;
    }
    x[3] = f32::NEG_INFINITY;
    x[4] = f32::INFINITY;
    let dy = random(len, 2);
    let mut s = Slots::new();
    let (xs, ys, dys, dxs) = (s.input(&x), s.output(len), s.input(&dy), s.output(len));
    let buf = s.upload();
    run(&[
        elementwise::relu_forward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, ys)),
        elementwise::relu_backward_into(
            gpu(),
            len as u32,
            s.view(&buf, xs),
            s.view(&buf, dys),
            s.view(&buf, dxs),
            false,
        ),
    ]);
    let y = s.read(&buf, ys);
    assert!(y[17].is_nan() && y[3] == 0.0 && y[4] == f32::INFINITY, "relu of NaN, -inf, inf: {:?}", &y[..5]);
    assert_same("relu forward", &y, &reference::elementwise::relu_forward(&x));
    let dx = s.read(&buf, dxs);
    assert_eq!(dx[17], dy[17], "the gradient at a NaN input passes, as in PyTorch's threshold_backward");
    assert_same("relu backward", &dx, &reference::elementwise::relu_backward(&x, &dy));
    s.assert_guards_intact(&buf);
}

/// One NaN in channel 1 of a training-mode batch norm: that channel's mean and variance are
/// NaN, so every value of the channel, after the fused ReLU, is NaN; channel 0 is untouched.
#[test]
fn a_nan_input_makes_its_batch_norm_channel_nan_through_the_fused_relu() {
    let s = BatchNormShape::new(2, 4, 36);
    let m = s.m() as usize;
    let mut x: Vec<f32> = random(2 * m, 3).iter().map(|v| 0.8 + 1.5 * v).collect();
    x[m + 40] = f32::NAN;
    let running = [0.0, 0.0, 1.0, 1.0];
    let affine = [1.0, 1.0, 0.0, 0.0];
    let mut slots = Slots::new();
    let (xs, stats, rs, aff, ys) =
        (slots.input(&x), slots.output(4), slots.input(&running), slots.input(&affine), slots.output(2 * m));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    run(&[
        batchnorm_train_stats(gpu(), s, v(xs), v(stats), v(rs), 0.1, 1e-5),
        batchnorm_apply(gpu(), s, v(xs), v(stats), v(aff), v(ys), true),
    ]);
    let st = slots.read(&buf, stats);
    assert!(st[0].is_finite() && st[2].is_finite(), "channel 0's statistics: {st:?}");
    assert!(st[1].is_nan() && st[3].is_nan(), "channel 1's mean and 1/std must be NaN: {st:?}");
    let running_now = slots.read(&buf, rs);
    assert!(running_now[1].is_nan() && running_now[3].is_nan(), "running statistics of channel 1: {running_now:?}");
    let y = slots.read(&buf, ys);
    assert!(y[..m].iter().all(|v| v.is_finite()), "channel 0 has no NaN input");
    assert!(y[m..].iter().all(|v| v.is_nan()), "every BN-ReLU output of channel 1 must be NaN");
    slots.assert_guards_intact(&buf);
}

/// The BN-ReLU a 1x1 conv applies on load (efficient and minimal mode's recomputed input)
/// keeps `max` per value and adds a per-channel NaN where the channel's statistics or affine
/// are not finite, which is where any NaN or infinite input of a training-mode batch norm
/// ends up. With channel 1's mean NaN and channel 2's 1/std infinite, every output of the
/// product is NaN (each sums a term of both channels), and so is every weight gradient of
/// input channels 1 and 2, while the other channels' weight gradients stay finite. Every
/// kernel family and candidate on small odd shapes (scalar loads at 35 pixels an image, the
/// workgroup family's vector loads at 32), and DenseNet-BC-100's block-1 bottleneck (120 -> 48
/// channels at 32x32, batch 64) on post-ReLU-like inputs and small gradients with the default
/// register candidate and the first workgroup pair (every pair with `--full`).
#[test]
fn a_nan_batch_norm_channel_stays_nan_through_the_bn_relu_a_conv_applies_on_load() {
    let g = gpu();
    let pointwise = |n, c_in, h, w, c_out| Conv2dShape { n, c_in, h, w, c_out, kh: 1, kw: 1, stride: 1, pad: 0 };
    let all = kernel_pairs();
    let workgroup = all.iter().position(|(k, _)| matches!(k, ConvKernel::Workgroup(_))).unwrap();
    let representatives = if full_tests() { all.clone() } else { vec![all[0], all[workgroup]] };
    let cases = [
        (pointwise(2, 3, 5, 7, 13), all.clone()),
        (pointwise(2, 3, 4, 8, 13), all.clone()),
        (pointwise(64, 120, 32, 32, 48), representatives),
    ];
    for (seed, (s, kernels)) in cases.into_iter().enumerate() {
        let seed = 20 + 10 * seed as u64;
        let c = s.c_in as usize;
        let x: Vec<f32> = random(s.input_elems() as usize, seed).iter().map(|v| 0.8 + 1.5 * v.abs()).collect();
        let wt: Vec<f32> = random(s.weight_elems() as usize, seed + 1).iter().map(|v| 0.1 * v).collect();
        let dy: Vec<f32> = random(s.output_elems() as usize, seed + 2).iter().map(|v| 1e-3 * v).collect();
        // [mean; invstd] and [gamma; beta] per channel, as a training-mode batch norm of x has them.
        let mut stats: Vec<f32> = (0..2 * c).map(|i| if i < c { 1.55 } else { 2.3 }).collect();
        stats[1] = f32::NAN;
        stats[c + 2] = f32::INFINITY;
        let affine: Vec<f32> = random(2 * c, seed + 3).iter().map(|v| 1.0 + 0.2 * v).collect();
        for (product, gradient) in kernels {
            let name = format!("{}/{} at {s:?}", product.name(), gradient.name());
            if !product.fits(g) || !gradient.fits(g) {
                continue;
            }
            let mut slots = Slots::new();
            let [xs, ws, dys, ss, afs] = [&x, &wt, &dy, &stats, &affine].map(|v| slots.input(v));
            let (y, dw) = (slots.output(dy.len()), slots.output(wt.len()));
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let mut d = vec![conv::forward_bnrelu_with(g, product, &s, v(xs), v(ss), v(afs), v(ws), v(y))];
            let bn = Some((v(ss), v(afs)));
            d.extend(conv::backward_weight_with(g, gradient, &s, v(xs), bn, v(dys), v(dw), None, false));
            run(&d);
            slots.assert_guards_intact(&buf);
            let y = slots.read(&buf, y);
            if let Some(i) = y.iter().position(|v| !v.is_nan()) {
                panic!("{name}: output {i} is {}, not NaN", y[i]);
            }
            let dw = slots.read(&buf, dw);
            for (i, v) in dw.iter().enumerate() {
                let k = i % c;
                let diverged = k == 1 || k == 2;
                assert!(
                    if diverged { v.is_nan() } else { v.is_finite() },
                    "{name}: weight gradient {i} (input channel {k}) is {v}"
                );
            }
        }
    }
}

/// A NaN wins its 3x3 windows (the last NaN of a window, as PyTorch's `val > max || isnan(val)`
/// scan), and the backward routes each window's gradient to it.
#[test]
fn max_pool_propagates_nan_and_routes_its_gradient_to_it() {
    let s = PoolShape::new(2, 2, 9, 9);
    let mut x = random(s.len(), 4);
    // Plane 0: one NaN; plane 1: two NaNs in one window (rows 0-2, cols 0-2 of output (0, 0)
    // after padding: rows 0..=1, cols 0..=1).
    x[40] = f32::NAN;
    x[81] = f32::NAN;
    x[81 + 10] = f32::NAN;
    let (oh, ow) = s.max_out();
    let out = (s.planes() * oh * ow) as usize;
    let dy = random(out, 5);
    let mut slots = Slots::new();
    let (xs, ys, dys, dxs) = (slots.input(&x), slots.output(out), slots.input(&dy), slots.output(x.len()));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    run(&[max_pool_forward(gpu(), s, v(xs), v(ys)), max_pool_backward(gpu(), s, v(xs), v(dys), v(dxs), false)]);
    let y = slots.read(&buf, ys);
    let want = reference::pool::max_pool_forward(s, &x);
    assert_same("max pool forward", &y, &want);
    assert!(y.iter().filter(|v| v.is_nan()).count() >= 5, "the NaNs must win their windows: {y:?}");
    let dx = slots.read(&buf, dxs);
    // A cell winning several windows sums their gradients, in an order that may round apart.
    assert_close("max pool backward", &dx, &reference::pool::max_pool_backward(s, &x, &dy));
    assert_eq!(dx[81], 0.0, "of two NaNs in a window, the last one wins (PyTorch)");
    assert!(dx[81 + 10] != 0.0, "the last NaN of the window receives its gradient");
    slots.assert_guards_intact(&buf);
}

//! Every kernel variant at the shapes users run (the convs and batch norms of DenseNet-BC-100 at
//! batch 64 on 32x32, 16x16 and 8x8 maps, DenseNet-121's stem and a block-2 layer, the pools,
//! the classifier, ReLU, dropout and the SGD step) on the values
//! training sees: post-ReLU activations (non-negative, mean far from zero, many exact zeros),
//! batch-norm inputs whose channel means lie several deviations from zero, He-initialised
//! weights and gradients four orders of magnitude smaller than the activations.
//!
//! Each output element must lie within its own f32 rounding bound, derived from the kernel's
//! order of operations: a sum whose terms pass through at most `d` roundings is within
//! `γ_d · Σ|terms|` of the exact one (Higham, "Accuracy and Stability of Numerical
//! Algorithms", 2nd ed., §3.1), and the reference's own rounding to f32 adds `u·|want|`. The
//! depths come from the kernels' host code (`ConvKernel::rounding_depth`,
//! `BatchNormShape::sum_rounding_depth`). For a sum that does not cancel, the bound is about
//! `d · 6e-8` relative: 2e-6 for a 3x3 conv over 48 channels, 3e-5 for a batch-norm sum over
//! 65,536 values. Each check prints the relative L2 error it measured.

use crate::common::*;
use densegpu::gpu::Family;
use densegpu::gpu::View;
use densegpu::ops::batchnorm::{kernels::*, BatchNormShape};
use densegpu::ops::conv::wgsl::REGISTER_TILES;
use densegpu::ops::conv::workgroup::{
    vector_loads, weight_grad_splits, ConvTile, GEMM_TILES, SPLIT_SCRATCH_BYTES, WEIGHT_GRAD_TILES,
};
use densegpu::ops::conv::{kernels::*, Conv2dShape};
use densegpu::reference::{batchnorm as bn_ref, conv as conv_ref};
use densegpu::selftest::{compare_within, gamma, sum_bound, UNIT_ROUNDOFF as U};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

const MOMENTUM: f32 = 0.1;
const EPS: f32 = 1e-5;

fn normal(len: usize, mean: f32, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let d = Normal::new(mean, std).unwrap();
    (0..len).map(|_| d.sample(&mut rng)).collect()
}

/// Post-ReLU activations: max(0, 0.8 + z), mean about 0.9, one value in five exactly zero.
fn post_relu(len: usize, seed: u64) -> Vec<f32> {
    normal(len, 0.8, 1.0, seed).into_iter().map(|v| v.max(0.0)).collect()
}

/// He-initialised weights (std sqrt(2 / fan_in)), as torchvision initialises its convs.
fn he(len: usize, fan_in: u32, seed: u64) -> Vec<f32> {
    normal(len, 0.0, (2.0 / fan_in as f32).sqrt(), seed)
}

/// Gradients 1e4 times smaller than the activations.
fn small_gradients(len: usize, seed: u64) -> Vec<f32> {
    normal(len, 0.0, 1e-4, seed)
}

/// Batch-norm inputs (C, M): channel `c` has mean 3·sin(c) + 1 and deviation 0.2 to 2, so
/// most means lie several deviations away from zero.
fn pre_batchnorm(c: usize, m: usize, seed: u64) -> Vec<f32> {
    let mut x = normal(c * m, 0.0, 1.0, seed);
    for (ch, values) in x.chunks_mut(m).enumerate() {
        let (mean, std) = (3.0 * (ch as f32).sin() + 1.0, 0.2 + 1.8 * ((ch * 7 % 11) as f32 / 10.0));
        values.iter_mut().for_each(|v| *v = mean + std * *v);
    }
    x
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|a| a.abs()).collect()
}

/// As [`sum_bound`] for an output added onto `before`: one more rounding, on `before` too.
fn accumulated_bound(depth: u64, abs_terms: &[f32], before: &[f32], want: &[f32]) -> Vec<f64> {
    let terms: Vec<f32> = abs_terms.iter().zip(before).map(|(a, b)| a + b.abs()).collect();
    sum_bound(depth + 1, &terms, want).iter().zip(want).map(|(b, w)| b + U * (*w as f64).abs()).collect()
}

#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    let check = compare_within(what, "", got, want, bound);
    println!("{what}: relative L2 error {:.2e}", check.rel_err);
    assert!(check.passed, "{what}: {}", check.detail.unwrap_or_default());
}

fn plus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn conv(n: u32, c_in: u32, c_out: u32, hw: u32, k: u32, stride: u32, pad: u32) -> Conv2dShape {
    Conv2dShape { n, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride, pad }
}

/// The convs of DenseNet-BC-100 (k=12) at batch 64, one of each kernel and map size, and of
/// DenseNet-121 (its 7x7 stride-2 stem and a block-2 layer) at smaller batches.
fn densenet_convs() -> Vec<(&'static str, Conv2dShape)> {
    vec![
        ("BC-100 stem 3x3", conv(64, 3, 24, 32, 3, 1, 1)),
        ("BC-100 block 1 bottleneck 1x1", conv(64, 204, 48, 32, 1, 1, 0)),
        ("BC-100 block 1 growth 3x3", conv(64, 48, 12, 32, 3, 1, 1)),
        ("BC-100 block 2 bottleneck 1x1", conv(64, 300, 48, 16, 1, 1, 0)),
        ("BC-100 block 2 growth 3x3", conv(64, 48, 12, 16, 3, 1, 1)),
        ("BC-100 block 3 bottleneck 1x1", conv(64, 342, 48, 8, 1, 1, 0)),
        ("BC-100 block 3 growth 3x3 (narrow)", conv(64, 48, 12, 8, 3, 1, 1)),
        ("DenseNet-121 stem 7x7/2", conv(2, 3, 64, 224, 7, 2, 3)),
        ("DenseNet-121 block 2 bottleneck 1x1", conv(8, 256, 128, 28, 1, 1, 0)),
        ("DenseNet-121 block 2 growth 3x3", conv(8, 128, 32, 28, 3, 1, 1)),
    ]
}

/// The register family's candidates in every direction, against the depths of
/// `ConvKernel::rounding_depth`: in CI the default and the one this adapter launches untuned
/// (`register_default`: the subgroup candidate on lavapipe), with `--full` every candidate
/// the device runs. `register_candidates_give_the_same_bits` holds the others to the
/// default's bits.
#[test]
fn conv_kernels_at_densenet_shapes_stay_within_f32_rounding() {
    let mut candidates = register_candidates();
    if !full_tests() {
        let launched = register_default(gpu());
        candidates.retain(|&k| k == ConvKernel::REGISTER || k == launched);
    }
    for (k, (name, s)) in densenet_convs().into_iter().enumerate() {
        check_conv_kernels(name, &s, 1000 * k as u64, &candidates);
    }
}

/// Every workgroup-family candidate (see `densegpu::ops::conv::workgroup`), in every direction
/// it serves, at the same shapes and values, against the same kind of bound: the depths of
/// `Conv2dShape::workgroup_rounding_depth`. The weight gradient runs once in one pass and once
/// split over the pixels through a scratch buffer.
#[test]
fn every_workgroup_candidate_at_densenet_shapes_stays_within_f32_rounding() {
    let candidates: Vec<ConvKernel> =
        GEMM_TILES.iter().chain(&WEIGHT_GRAD_TILES).map(|t| ConvKernel::Workgroup(*t)).collect();
    for (k, (name, s)) in densenet_convs().into_iter().enumerate() {
        check_conv_kernels(name, &s, 1000 * k as u64, &candidates);
    }
}

fn check_conv_kernels(name: &str, s: &Conv2dShape, seed: u64, kernels: &[ConvKernel]) {
    let s = *s;
    let x = post_relu(s.input_elems() as usize, seed);
    let w = he(s.weight_elems() as usize, s.c_in * s.kh * s.kw, seed + 1);
    let dy = small_gradients(s.output_elems() as usize, seed + 2);
    let y = conv_ref::conv2d_forward(&s, &x, &w);
    let y_abs = conv_ref::conv2d_forward(&s, &x, &abs(&w));
    let dx = conv_ref::conv2d_backward_input(&s, &dy, &w);
    let dx_abs = conv_ref::conv2d_backward_input(&s, &abs(&dy), &abs(&w));
    let dw = conv_ref::conv2d_backward_weight(&s, &x, &dy);
    let dw_abs = conv_ref::conv2d_backward_weight(&s, &x, &abs(&dy));
    let dx_before = small_gradients(dx.len(), seed + 3);
    let dw_before = small_gradients(dw.len(), seed + 4);
    let is_gemm = |t: &ConvTile| GEMM_TILES.contains(t);
    // The accumulating store is one helper (`put`) shared by every kernel of a family, so it
    // is checked with each family's first candidates only.
    let accumulates = |k: ConvKernel| match k {
        ConvKernel::Register(t) => t == REGISTER_TILES[0],
        ConvKernel::Workgroup(t) => t == GEMM_TILES[0] || t == WEIGHT_GRAD_TILES[0],
    };

    for &kernel in kernels {
        let depth = kernel.rounding_depth(&s, 1);
        let what = |op: &str| format!("{name} {} {op} (depth {depth:?})", kernel.name());
        let gemm = !matches!(kernel, ConvKernel::Workgroup(t) if !is_gemm(&t));
        // The workgroup family reads the source operand (x, or dy for the input gradient) from
        // a 16-byte-aligned offset, as the arena places it, so its pointwise convs take their
        // vector loads here; `workgroup_vector_loads_equal_scalar_loads_at_a_densenet_shape`
        // shows the scalar loads sum the same, bit for bit.
        let workgroup = kernel.family() == Family::Workgroup;
        let source = |slots: &mut Slots, values: &[f32]| {
            if workgroup {
                slots.input_aligned(values)
            } else {
                slots.input(values)
            }
        };
        let pointwise = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0;
        let vector = |v: View| {
            assert_eq!(
                vector_loads(&s, v.offset),
                workgroup && pointwise,
                "{name}: vector loads where the test means them"
            );
            workgroup && pointwise
        };
        if gemm {
            // One buffer per direction: block 1's activations at batch 64 do not fit one
            // binding together.
            let mut slots = Slots::new();
            let (xs, ws, ys) = (source(&mut slots, &x), slots.input(&w), slots.output(y.len()));
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            run(&[forward_with(gpu(), kernel, &s, v(xs), v(ws), v(ys))]);
            let what = |op: &str| format!("{}{}", what(op), if vector(v(xs)) { " vec4" } else { "" });
            assert_within(&what("forward"), &slots.read(&buf, ys), &y, &sum_bound(depth.forward, &y_abs, &y));
            slots.assert_guards_intact(&buf);
        }
        let serves_input = ConvDirection::BackwardInput.workgroup_serves(&s) || kernel.family() == Family::Register;
        if gemm && serves_input {
            let mut slots = Slots::new();
            let (ws, dys, dxs, dxa) =
                (slots.input(&w), source(&mut slots, &dy), slots.output(dx.len()), slots.input(&dx_before));
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let what = |op: &str| format!("{}{}", what(op), if vector(v(dys)) { " vec4" } else { "" });
            let all = (0, s.c_in);
            let mut d = vec![backward_input_with(gpu(), kernel, &s, all, v(dys), v(ws), v(dxs), false)];
            if accumulates(kernel) {
                d.push(backward_input_with(gpu(), kernel, &s, all, v(dys), v(ws), v(dxa), true));
            }
            run(&d);
            let bound = sum_bound(depth.backward_input, &dx_abs, &dx);
            assert_within(&what("backward_input"), &slots.read(&buf, dxs), &dx, &bound);
            if accumulates(kernel) {
                let want = plus(&dx, &dx_before);
                let bound = accumulated_bound(depth.backward_input, &dx_abs, &dx_before, &want);
                assert_within(&what("backward_input accumulate"), &slots.read(&buf, dxa), &want, &bound);
            }
            slots.assert_guards_intact(&buf);
        }
        if gemm && kernel.family() == Family::Workgroup {
            continue;
        }
        // A register candidate once; a workgroup candidate in one pass, then split.
        let scratch_options: &[usize] = match kernel {
            ConvKernel::Register(_) => &[0],
            ConvKernel::Workgroup(_) => &[0, SPLIT_SCRATCH_BYTES as usize / 4],
        };
        for &scratch_len in scratch_options {
            let mut slots = Slots::new();
            let (xs, dys, dws, dwa) =
                (source(&mut slots, &x), slots.input(&dy), slots.output(dw.len()), slots.input(&dw_before));
            let scratch = slots.output(scratch_len);
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let scratch_view = (scratch_len > 0).then(|| v(scratch));
            let depth = match kernel {
                ConvKernel::Register(_) => depth,
                ConvKernel::Workgroup(t) => {
                    let splits = weight_grad_splits(&t, &s, scratch_len as u64);
                    assert!(scratch_len == 0 || splits > 1, "{name}: a scratch of {scratch_len} floats gives splits");
                    kernel.rounding_depth(&s, splits)
                }
            };
            let vec4 = if vector(v(xs)) { " vec4" } else { "" };
            let what = |op: &str| format!("{name} {} {op} (depth {depth:?}){vec4}", kernel.name());
            let mut d = backward_weight_with(gpu(), kernel, &s, v(xs), None, v(dys), v(dws), scratch_view, false);
            if accumulates(kernel) {
                d.extend(backward_weight_with(gpu(), kernel, &s, v(xs), None, v(dys), v(dwa), scratch_view, true));
            }
            run(&d);
            let bound = sum_bound(depth.backward_weight, &dw_abs, &dw);
            assert_within(&what("backward_weight"), &slots.read(&buf, dws), &dw, &bound);
            if accumulates(kernel) {
                let want = plus(&dw, &dw_before);
                let bound = accumulated_bound(depth.backward_weight, &dw_abs, &dw_before, &want);
                assert_within(&what("backward_weight accumulate"), &slots.read(&buf, dwa), &want, &bound);
            }
            slots.assert_guards_intact(&buf);
        }
    }
}

/// The input gradient of a channel slice (what the sliced batch-norm backward asks for), at
/// block 1's shapes: it must equal the same channels of the whole gradient's bound.
#[test]
fn channel_sliced_input_gradient_stays_within_f32_rounding() {
    for (name, s) in [
        ("BC-100 block 1 bottleneck 1x1", conv(64, 204, 48, 32, 1, 1, 0)),
        ("BC-100 block 1 growth 3x3", conv(64, 48, 12, 32, 3, 1, 1)),
    ] {
        let w = he(s.weight_elems() as usize, s.c_in * s.kh * s.kw, 11);
        let dy = small_gradients(s.output_elems() as usize, 12);
        let (first, count) = (5u32, 19u32);
        let plane = (s.n * s.h * s.w) as usize;
        let range = first as usize * plane..(first + count) as usize * plane;
        let dx = conv_ref::conv2d_backward_input(&s, &dy, &w)[range.clone()].to_vec();
        let dx_abs = conv_ref::conv2d_backward_input(&s, &abs(&dy), &abs(&w))[range].to_vec();
        let mut slots = Slots::new();
        let (ws, dys, dxs) = (slots.input(&w), slots.input(&dy), slots.output(dx.len()));
        let buf = slots.upload();
        let v = |slot| slots.view(&buf, slot);
        run(&[conv2d_backward_input_channels(gpu(), &s, (first, count), v(dys), v(ws), v(dxs), false)]);
        let bound = sum_bound(ConvKernel::REGISTER.rounding_depth(&s, 1).backward_input, &dx_abs, &dx);
        assert_within(&format!("{name} backward_input channels {first}+{count}"), &slots.read(&buf, dxs), &dx, &bound);
        slots.assert_guards_intact(&buf);
    }
}

/// A batch-norm problem at a real size, with the statistics of its own batch (as in training)
/// and no value within 1e-3 of the ReLU's kink, where a rounding could flip the mask: a
/// flipped mask is a discontinuity, not a rounding error, and no f32 bound covers it.
struct BatchNormProblem {
    s: BatchNormShape,
    x: Vec<f32>,
    stats: Vec<f32>,
    affine: Vec<f32>,
    dy: Vec<f32>,
}

impl BatchNormProblem {
    fn new(c: u32, n: u32, hw: u32, seed: u64) -> BatchNormProblem {
        let s = BatchNormShape::new(c, n, hw);
        let (cu, m) = (c as usize, s.m() as usize);
        let mut x = pre_batchnorm(cu, m, seed);
        let stats = bn_ref::train_stats(cu, m, &x, &vec![0.0; 2 * cu], MOMENTUM, EPS).0;
        // γ in [0.5, 1.5] and β in [−0.2, 0.2], as in a trained network.
        let affine: Vec<f32> = normal(2 * cu, 0.0, 1.0, seed + 1)
            .iter()
            .enumerate()
            .map(|(i, z)| if i < cu { 1.0 + 0.5 * z.tanh() } else { 0.2 * z.tanh() })
            .collect();
        for ch in 0..cu {
            let scale = stats[cu + ch] as f64 * affine[ch] as f64;
            for v in &mut x[ch * m..(ch + 1) * m] {
                let pre = (*v as f64 - stats[ch] as f64) * scale + affine[cu + ch] as f64;
                if pre.abs() < 1e-3 {
                    *v = (*v as f64 + 2e-3 / scale) as f32;
                }
            }
        }
        let dy = small_gradients(cu * m, seed + 2);
        BatchNormProblem { s, x, stats, affine, dy }
    }
    fn c(&self) -> usize {
        self.s.c as usize
    }
    fn m(&self) -> usize {
        self.s.m() as usize
    }
    /// Per element: xhat and the gradient reaching the normalisation (dy masked by the ReLU).
    fn xhat_and_grad(&self, relu: bool) -> (Vec<f64>, Vec<f64>) {
        let (c, m) = (self.c(), self.m());
        let mut xhat = vec![0.0; c * m];
        let mut g = vec![0.0; c * m];
        for ch in 0..c {
            let (mean, invstd) = (self.stats[ch] as f64, self.stats[c + ch] as f64);
            let (gamma, beta) = (self.affine[ch] as f64, self.affine[c + ch] as f64);
            for i in ch * m..(ch + 1) * m {
                xhat[i] = (self.x[i] as f64 - mean) * invstd;
                g[i] = if relu && gamma * xhat[i] + beta <= 0.0 { 0.0 } else { self.dy[i] as f64 };
            }
        }
        (xhat, g)
    }
    /// Bounds for [dgamma, dbeta] and dx, from the sums' depth `d`: dbeta = Σ g is within
    /// γ_d·Σ|g|; dgamma = Σ g·xhat within γ_{d+3}·Σ|g·xhat| (xhat itself takes two roundings,
    /// its product one); dx = scale·(g − (dbeta + xhat·dgamma)/M) carries those errors divided by
    /// M, plus 8 roundings of its own on each term.
    fn backward_bounds(&self, relu: bool, want_affine: &[f32], want_dx: &[f32]) -> (Vec<f64>, Vec<f64>) {
        self.backward_bounds_at(self.s.sum_rounding_depth(), relu, want_affine, want_dx)
    }
    fn backward_bounds_at(&self, d: u64, relu: bool, want_affine: &[f32], want_dx: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (c, m) = (self.c(), self.m());
        let (xhat, g) = self.xhat_and_grad(relu);
        let mut affine_bound = vec![0.0; 2 * c];
        let mut dx_bound = vec![0.0; c * m];
        for ch in 0..c {
            let r = ch * m..(ch + 1) * m;
            let sum_g: f64 = g[r.clone()].iter().map(|v| v.abs()).sum();
            let sum_gx: f64 = r.clone().map(|i| (g[i] * xhat[i]).abs()).sum();
            affine_bound[ch] = gamma(d + 3) * sum_gx + U * (want_affine[ch] as f64).abs();
            affine_bound[c + ch] = gamma(d) * sum_g + U * (want_affine[c + ch] as f64).abs();
            let scale = (self.affine[ch] as f64 * self.stats[c + ch] as f64).abs();
            for i in r {
                let carried = (gamma(d) * sum_g + xhat[i].abs() * gamma(d + 3) * sum_gx) / m as f64;
                let own = 8.0 * U * (g[i].abs() + (sum_g + xhat[i].abs() * sum_gx) / m as f64);
                dx_bound[i] = scale * (carried + own) + U * (want_dx[i] as f64).abs();
            }
        }
        (affine_bound, dx_bound)
    }
}

/// Block 1 of DenseNet-BC-100 at batch 64 (65,536 values per channel) and block 3 (4,096).
fn batchnorm_problems() -> Vec<(&'static str, BatchNormProblem)> {
    vec![
        ("BC-100 block 1 (32x32, batch 64)", BatchNormProblem::new(24, 64, 32 * 32, 1)),
        ("BC-100 block 3 (8x8, batch 64)", BatchNormProblem::new(48, 64, 8 * 8, 2)),
    ]
}

#[test]
fn batchnorm_statistics_and_apply_at_real_sizes_stay_within_f32_rounding() {
    for (name, p) in batchnorm_problems() {
        let (c, m) = (p.c(), p.m());
        let running: Vec<f32> =
            (0..2 * c).map(|i| if i < c { 0.1 * i as f32 } else { 1.0 + 0.05 * i as f32 }).collect();
        let (want_stats, want_running) = bn_ref::train_stats(c, m, &p.x, &running, MOMENTUM, EPS);
        let mut slots = Slots::new();
        let (xs, rs, ss, afs, ys) = (
            slots.input(&p.x),
            slots.input(&running),
            slots.output(2 * c),
            slots.input(&p.affine),
            slots.output(c * m),
        );
        let ref_stats = slots.input(&want_stats);
        let buf = slots.upload();
        let v = |slot| slots.view(&buf, slot);
        run(&[
            batchnorm_train_stats(gpu(), p.s, v(xs), v(ss), v(rs), MOMENTUM, EPS),
            batchnorm_apply(gpu(), p.s, v(xs), v(ref_stats), v(afs), v(ys), true),
        ]);
        // The kernel shifts by the mean of 256 evenly spaced values, then sums x − shift and
        // (x − shift)² to depth d: the mean's error is γ_{d+1}·Σ|x − shift|/M plus its own
        // rounding, and the variance's relative error is γ_{d+5}·(1 + (mean − shift)²/var).
        // invstd's is half that plus 8 roundings of eps, sqrt and the division (WGSL allows
        // those a few ULP).
        let d = p.s.sum_rounding_depth();
        let mo = MOMENTUM as f64;
        let mut stats_bound = vec![0.0; 2 * c];
        let mut running_bound = vec![0.0; 2 * c];
        let sampled = m.min(256);
        for ch in 0..c {
            let values = &p.x[ch * m..(ch + 1) * m];
            let shift = (0..sampled).map(|i| values[i * (m / sampled)] as f64).sum::<f64>() / sampled as f64;
            let mean = want_stats[ch] as f64;
            let spread = values.iter().map(|&v| (v as f64 - shift).abs()).sum::<f64>() / m as f64;
            stats_bound[ch] = gamma(d + 1) * spread + 2.0 * U * mean.abs();
            let invstd = want_stats[c + ch] as f64;
            let var = 1.0 / (invstd * invstd) - EPS as f64;
            let var_rel = gamma(d + 5) * (1.0 + (mean - shift).powi(2) / var);
            stats_bound[c + ch] = (var_rel / 2.0 + 8.0 * U) * invstd;
            let var_unbiased = var * m as f64 / (m as f64 - 1.0);
            let (rm, rv) = (running[ch] as f64, running[c + ch] as f64);
            running_bound[ch] = 4.0 * U * ((1.0 - mo) * rm.abs() + mo * mean.abs()) + mo * stats_bound[ch];
            running_bound[c + ch] =
                4.0 * U * ((1.0 - mo) * rv + mo * var_unbiased) + mo * var_unbiased * (var_rel + 4.0 * U);
        }
        assert_within(&format!("{name} train_stats"), &slots.read(&buf, ss), &want_stats, &stats_bound);
        assert_within(&format!("{name} running update"), &slots.read(&buf, rs), &want_running, &running_bound);
        // y = (x − mean)·invstd·γ + β: four roundings of the terms' magnitudes.
        let want_y = bn_ref::apply(c, m, &p.x, &want_stats, &p.affine, true);
        let y_bound: Vec<f64> = (0..c * m)
            .map(|i| {
                let ch = i / m;
                let t = (p.x[i] as f64 - want_stats[ch] as f64) * want_stats[c + ch] as f64 * p.affine[ch] as f64;
                4.0 * U * (t.abs() + (p.affine[c + ch] as f64).abs()) + U * (want_y[i] as f64).abs()
            })
            .collect();
        assert_within(&format!("{name} apply (relu)"), &slots.read(&buf, ys), &want_y, &y_bound);
        slots.assert_guards_intact(&buf);
    }
}

#[test]
fn batchnorm_backward_variants_at_real_sizes_stay_within_f32_rounding() {
    for (name, p) in batchnorm_problems() {
        let (c, m) = (p.c(), p.m());
        for relu in [false, true] {
            let want_affine = bn_ref::backward_affine(c, m, &p.x, &p.dy, &p.stats, &p.affine, relu);
            let want_dx = bn_ref::backward_input(c, m, &p.x, &p.dy, &p.stats, &p.affine, relu);
            let (affine_bound, dx_bound) = p.backward_bounds(relu, &want_affine, &want_dx);
            let dx_before = small_gradients(c * m, 7);
            let want_dx_acc = plus(&want_dx, &dx_before);
            let dx_acc_bound: Vec<f64> = dx_bound
                .iter()
                .zip(&dx_before)
                .zip(&want_dx_acc)
                .map(|((b, before), w)| b + U * (before.abs() as f64 + (*w as f64).abs()))
                .collect();

            let mut slots = Slots::new();
            let (xs, dys, ss, afs) =
                (slots.input(&p.x), slots.input(&p.dy), slots.input(&p.stats), slots.input(&p.affine));
            let (gs, dxs, dxa) = (slots.output(2 * c), slots.output(c * m), slots.input(&dx_before));
            let (fused_g, fused_dx) = (slots.output(2 * c), slots.output(c * m));
            // In place on a channel slice, as the sliced schedule runs it: dy's copy receives dx.
            let (first, count) = (3u32, 7u32);
            let range = first as usize * m..(first + count) as usize * m;
            let sliced = p.s.slice(first, count);
            let (slice_xs, slice_dx) = (slots.input(&p.x[range.clone()]), slots.input(&p.dy[range.clone()]));
            let slice_g = slots.output(2 * c);
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let (x, dy, st, af) = (v(xs), v(dys), v(ss), v(afs));
            run(&[
                batchnorm_backward_affine(gpu(), p.s, x, dy, st, af, v(gs), relu, false),
                batchnorm_backward_input(gpu(), p.s, x, dy, st, af, v(gs), v(dxs), relu, false),
                batchnorm_backward_input(gpu(), p.s, x, dy, st, af, v(gs), v(dxa), relu, true),
                batchnorm_backward(gpu(), p.s, x, dy, st, af, v(fused_g), v(fused_dx), relu, false, false),
                batchnorm_backward_affine(gpu(), sliced, v(slice_xs), v(slice_dx), st, af, v(slice_g), relu, false),
                batchnorm_backward_input_in_place(gpu(), sliced, v(slice_xs), st, af, v(slice_g), v(slice_dx), relu),
            ]);
            let what = |op: &str| format!("{name} relu={relu} {op} (sum depth {})", p.s.sum_rounding_depth());
            assert_within(&what("backward_affine"), &slots.read(&buf, gs), &want_affine, &affine_bound);
            assert_within(&what("backward_input"), &slots.read(&buf, dxs), &want_dx, &dx_bound);
            assert_within(&what("backward_input accumulate"), &slots.read(&buf, dxa), &want_dx_acc, &dx_acc_bound);
            assert_within(&what("fused backward affine"), &slots.read(&buf, fused_g), &want_affine, &affine_bound);
            assert_within(&what("fused backward dx"), &slots.read(&buf, fused_dx), &want_dx, &dx_bound);
            let slice_affine: Vec<usize> = (first as usize..(first + count) as usize)
                .chain(c + first as usize..c + (first + count) as usize)
                .collect();
            let got_g = slots.read(&buf, slice_g);
            let pick = |v: &[f32]| slice_affine.iter().map(|&i| v[i]).collect::<Vec<f32>>();
            let pick64 = |v: &[f64]| slice_affine.iter().map(|&i| v[i]).collect::<Vec<f64>>();
            assert_within(&what("sliced backward_affine"), &pick(&got_g), &pick(&want_affine), &pick64(&affine_bound));
            assert_within(
                &what("sliced in-place backward_input"),
                &slots.read(&buf, slice_dx),
                &want_dx[range.clone()],
                &dx_bound[range.clone()],
            );
        }
    }
}

/// The bound on train_stats' [mean, invstd] and on the running update for one channel whose
/// values went through `parts` (start, end) ranges, each summed as `channel_moments` sums a
/// channel (shifted by the mean of 256 evenly spaced values, to depth d_k = ceil(len/256) + 32),
/// then combined in order by Chan et al.'s update as `combine_stats` does. Per part, the mean's
/// error e_k is γ_{d_k+1}·Σ|x − shift|/len + 2u·|mean_k| and M2's relative error
/// γ_{d_k+5}·(1 + (mean_k − shift)²/var_k) + 2u (its product by the count). Each combine step
/// adds 4u·|δ·n_k/n| + u·|mean| to the mean and, to M2, the error of δ² n_k·count/n:
/// 2|δ|·(e_k + the running mean's error) plus 6u·δ² n_k·count/n, and 2u·M2 for its two
/// additions. Returns (mean bound, relative bound on the biased variance).
fn split_moments_bound(values: &[f32], parts: &[(usize, usize)]) -> (f64, f64) {
    let (mut count, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
    let (mut mean_err, mut m2_err) = (0.0f64, 0.0f64);
    for &(lo, hi) in parts {
        let part = &values[lo..hi];
        let len = part.len();
        let sampled = len.min(256);
        let shift = (0..sampled).map(|i| part[i * (len / sampled)] as f64).sum::<f64>() / sampled as f64;
        let mean_k = part.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        let m2_k = part.iter().map(|&v| (v as f64 - mean_k).powi(2)).sum::<f64>();
        let var_k = m2_k / len as f64;
        let d = (len as u64).div_ceil(256) + 32;
        let spread = part.iter().map(|&v| (v as f64 - shift).abs()).sum::<f64>() / len as f64;
        let e_k = gamma(d + 1) * spread + 2.0 * U * mean_k.abs();
        let m2_k_err = (gamma(d + 5) * (1.0 + (mean_k - shift).powi(2) / var_k) + 2.0 * U) * m2_k;
        let nk = len as f64;
        let n = count + nk;
        let delta = mean_k - mean;
        let w = count * nk / n;
        let delta_err = e_k + mean_err;
        mean_err = (count * mean_err + nk * e_k) / n + 4.0 * U * (delta * nk / n).abs();
        mean += delta * nk / n;
        mean_err += U * mean.abs();
        m2 += m2_k + delta * delta * w;
        m2_err += m2_k_err + 2.0 * delta.abs() * delta_err * w + 6.0 * U * delta * delta * w + 2.0 * U * m2;
        count = n;
    }
    (mean_err, m2_err / m2 + U)
}

/// The workgroup family's two-pass statistics and affine gradient (a pixel split per workgroup
/// layer, then a fixed-order combine) at BC-100 block 1 with the schedule's own split count,
/// and at block 3 with 5 uneven splits, through a NaN-poisoned scratch: each output within
/// the bound of its own summation order, and the combine order fixed (a rerun is bit-identical).
#[test]
fn batchnorm_split_reductions_at_real_sizes_stay_within_f32_rounding() {
    for (name, p) in batchnorm_problems() {
        let (c, m) = (p.c(), p.m());
        let scheduled = batchnorm_splits(p.s, SPLIT_SCRATCH_BYTES / 4);
        let splits = if scheduled > 1 { scheduled } else { 5 };
        let parts: Vec<(usize, usize)> =
            (0..splits as usize).map(|k| (k * m / splits as usize, (k + 1) * m / splits as usize)).collect();
        let running: Vec<f32> =
            (0..2 * c).map(|i| if i < c { 0.1 * i as f32 } else { 1.0 + 0.05 * i as f32 }).collect();
        let (want_stats, want_running) = bn_ref::train_stats(c, m, &p.x, &running, MOMENTUM, EPS);
        let mo = MOMENTUM as f64;
        let mut stats_bound = vec![0.0; 2 * c];
        let mut running_bound = vec![0.0; 2 * c];
        for ch in 0..c {
            let (mean_bound, var_rel) = split_moments_bound(&p.x[ch * m..(ch + 1) * m], &parts);
            let (mean, invstd) = (want_stats[ch] as f64, want_stats[c + ch] as f64);
            stats_bound[ch] = mean_bound;
            stats_bound[c + ch] = (var_rel / 2.0 + 8.0 * U) * invstd;
            let var_unbiased = (1.0 / (invstd * invstd) - EPS as f64) * m as f64 / (m as f64 - 1.0);
            let (rm, rv) = (running[ch] as f64, running[c + ch] as f64);
            running_bound[ch] = 4.0 * U * ((1.0 - mo) * rm.abs() + mo * mean.abs()) + mo * mean_bound;
            running_bound[c + ch] =
                4.0 * U * ((1.0 - mo) * rv + mo * var_unbiased) + mo * var_unbiased * (var_rel + 4.0 * U);
        }
        let d = p.s.split_rounding_depth(splits);
        for relu in [false, true] {
            let want_affine = bn_ref::backward_affine(c, m, &p.x, &p.dy, &p.stats, &p.affine, relu);
            let want_dx = bn_ref::backward_input(c, m, &p.x, &p.dy, &p.stats, &p.affine, relu);
            let (affine_bound, _) = p.backward_bounds_at(d, relu, &want_affine, &want_dx);
            let g_before = small_gradients(2 * c, 8);
            let want_acc = plus(&want_affine, &g_before);
            let acc_bound: Vec<f64> = (affine_bound.iter().zip(&g_before).zip(&want_acc))
                .map(|((b, before), w)| b + U * (before.abs() as f64 + (*w as f64).abs()))
                .collect();
            let mut slots = Slots::new();
            let (xs, dys, ss, afs) =
                (slots.input(&p.x), slots.input(&p.dy), slots.input(&p.stats), slots.input(&p.affine));
            let (rs, stats_out) = (slots.input(&running), slots.output(2 * c));
            let (gs, ga) = (slots.output(2 * c), slots.input(&g_before));
            let scratch = slots.output(3 * c * splits as usize);
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            let (x, dy, st, af, sc) = (v(xs), v(dys), v(ss), v(afs), v(scratch));
            let mut launches = batchnorm_train_stats_split(gpu(), p.s, x, sc, v(stats_out), v(rs), splits);
            launches.extend(batchnorm_backward_affine_split(gpu(), p.s, x, dy, st, af, v(gs), sc, relu, false, splits));
            launches.extend(batchnorm_backward_affine_split(gpu(), p.s, x, dy, st, af, v(ga), sc, relu, true, splits));
            run(&launches);
            let what = |op: &str| format!("{name} {splits} splits relu={relu} {op}");
            if !relu {
                assert_within(&what("train_stats"), &slots.read(&buf, stats_out), &want_stats, &stats_bound);
                assert_within(&what("running update"), &slots.read(&buf, rs), &want_running, &running_bound);
            }
            let got_affine = slots.read(&buf, gs);
            assert_within(&what("backward_affine"), &got_affine, &want_affine, &affine_bound);
            assert_within(&what("backward_affine accumulate"), &slots.read(&buf, ga), &want_acc, &acc_bound);
            slots.assert_guards_intact(&buf);
            // The same launches again give the same bits: the combine order is fixed.
            run(&batchnorm_backward_affine_split(gpu(), p.s, x, dy, st, af, v(gs), sc, relu, false, splits));
            let again = slots.read(&buf, gs);
            assert_eq!(bits(&again), bits(&got_affine), "{}", what("rerun"));
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The 1x1 conv that applies its input's BN-ReLU on load, forward and weight gradient, at
/// block 1's bottleneck. Its operand a = relu(bn(x)) carries the four roundings of the
/// normalisation, which the conv multiplies by |w| (or |dy|) and sums. Every candidate of both
/// families (the workgroup family's with x at an aligned offset, so through its vector loads).
#[test]
fn fused_bnrelu_conv_at_real_size_stays_within_f32_rounding() {
    let s = conv(64, 204, 48, 32, 1, 1, 0);
    let p = BatchNormProblem::new(s.c_in, s.n, s.h * s.w, 21);
    let (c, m) = (p.c(), p.m());
    let w = he(s.weight_elems() as usize, s.c_in, 22);
    let dy = small_gradients(s.output_elems() as usize, 23);
    let a = bn_ref::apply(c, m, &p.x, &p.stats, &p.affine, true);
    // The rounding of each loaded operand: 4u·(|(x − mean)·invstd·γ| + |β|).
    let a_err: Vec<f32> = (0..c * m)
        .map(|i| {
            let ch = i / m;
            let t = (p.x[i] as f64 - p.stats[ch] as f64) * p.stats[c + ch] as f64 * p.affine[ch] as f64;
            (4.0 * U * (t.abs() + (p.affine[c + ch] as f64).abs()) + U * (a[i] as f64).abs()) as f32
        })
        .collect();
    let y = conv_ref::conv2d_forward(&s, &a, &w);
    let y_abs = conv_ref::conv2d_forward(&s, &a, &abs(&w));
    let y_carried = conv_ref::conv2d_forward(&s, &a_err, &abs(&w));
    let dw = conv_ref::conv2d_backward_weight(&s, &a, &dy);
    let dw_abs = conv_ref::conv2d_backward_weight(&s, &a, &abs(&dy));
    let dw_carried = conv_ref::conv2d_backward_weight(&s, &a_err, &abs(&dy));
    let register = register_candidates().into_iter().map(|k| (k, k));
    let workgroup = GEMM_TILES.iter().zip(WEIGHT_GRAD_TILES.iter().cycle());
    let workgroup = workgroup.map(|(p, w)| (ConvKernel::Workgroup(*p), ConvKernel::Workgroup(*w)));
    for (product, weight) in register.chain(workgroup) {
        let (forward_depth, weight_depth) =
            (product.rounding_depth(&s, 1).forward, weight.rounding_depth(&s, 1).backward_weight);
        let mut slots = Slots::new();
        let xs = if product.family() == Family::Workgroup { slots.input_aligned(&p.x) } else { slots.input(&p.x) };
        let (ss, afs, ws, dys) = (slots.input(&p.stats), slots.input(&p.affine), slots.input(&w), slots.input(&dy));
        let (ys, dws) = (slots.output(y.len()), slots.output(dw.len()));
        let buf = slots.upload();
        let v = |slot| slots.view(&buf, slot);
        let bn = Some((v(ss), v(afs)));
        run(&[
            forward_bnrelu_with(gpu(), product, &s, v(xs), v(ss), v(afs), v(ws), v(ys)),
            backward_weight_with(gpu(), weight, &s, v(xs), bn, v(dys), v(dws), None, false).remove(0),
        ]);
        // The carried error passes through the same sum: (1 + γ_d) times it.
        let with_carried = |bound: Vec<f64>, carried: &[f32], depth: u64| -> Vec<f64> {
            bound.iter().zip(carried).map(|(b, c)| b + *c as f64 * (1.0 + gamma(depth))).collect()
        };
        let bound = with_carried(sum_bound(forward_depth, &y_abs, &y), &y_carried, forward_depth);
        let what = format!("BC-100 block 1 bottleneck forward with BN-ReLU on load, {}", product.name());
        assert_within(&what, &slots.read(&buf, ys), &y, &bound);
        let bound = with_carried(sum_bound(weight_depth, &dw_abs, &dw), &dw_carried, weight_depth);
        let what = format!("BC-100 block 1 bottleneck weight gradient with BN-ReLU on load, {}", weight.name());
        assert_within(&what, &slots.read(&buf, dws), &dw, &bound);
        slots.assert_guards_intact(&buf);
    }
}

/// The workgroup family's vector loads against its scalar loads, at DenseNet-BC-100's block-3
/// bottleneck (342 -> 48 channels, 8x8 maps, batch 64): every candidate's pointwise launches
/// read their source operand once from a 16-byte-aligned offset (the `vec4` entry points, see
/// `workgroup::vector_loads`) and once from an odd one (the scalar entry points). Forward, the
/// input gradient, the weight gradient in one pass and split, and both fused BN-ReLU forms must
/// agree bit for bit: the loads change, the staged values and every sum's order do not. The
/// scalar outputs are also checked against the reference, so two equally wrong paths fail.
#[test]
fn workgroup_vector_loads_equal_scalar_loads_at_a_densenet_shape() {
    let s = conv(64, 342, 48, 8, 1, 1, 0);
    let p = BatchNormProblem::new(s.c_in, s.n, s.h * s.w, 31);
    let w = he(s.weight_elems() as usize, s.c_in, 32);
    let dy = small_gradients(s.output_elems() as usize, 33);
    let (y, dx, dw) = (
        conv_ref::conv2d_forward(&s, &p.x, &w),
        conv_ref::conv2d_backward_input(&s, &dy, &w),
        conv_ref::conv2d_backward_weight(&s, &p.x, &dy),
    );
    let scratch_len = SPLIT_SCRATCH_BYTES as usize / 4;
    let pairs = GEMM_TILES.iter().zip(WEIGHT_GRAD_TILES.iter().cycle());
    for (product, weight) in pairs.map(|(p, w)| (ConvKernel::Workgroup(*p), ConvKernel::Workgroup(*w))) {
        let mut outputs: Vec<Vec<Vec<f32>>> = Vec::new();
        for aligned in [true, false] {
            let mut slots = Slots::new();
            let source = |slots: &mut Slots, v: &[f32]| if aligned { slots.input_aligned(v) } else { slots.input(v) };
            let (xs, dys) = (source(&mut slots, &p.x), source(&mut slots, &dy));
            let (ws, gs, ss, afs) = (slots.input(&w), slots.input(&dy), slots.input(&p.stats), slots.input(&p.affine));
            let xg = source(&mut slots, &p.x);
            let outs = [y.len(), y.len(), dx.len(), dw.len(), dw.len(), dw.len()].map(|n| slots.output(n));
            let scratch = slots.output(scratch_len);
            let buf = slots.upload();
            let v = |slot| slots.view(&buf, slot);
            for src in [v(xs), v(dys), v(xg)] {
                assert_eq!(vector_loads(&s, src.offset), aligned, "offset {}", src.offset);
            }
            let bn = Some((v(ss), v(afs)));
            let mut d = vec![
                forward_with(gpu(), product, &s, v(xs), v(ws), v(outs[0])),
                forward_bnrelu_with(gpu(), product, &s, v(xs), v(ss), v(afs), v(ws), v(outs[1])),
                backward_input_with(gpu(), product, &s, (0, s.c_in), v(dys), v(ws), v(outs[2]), false),
            ];
            d.extend(backward_weight_with(gpu(), weight, &s, v(xg), None, v(gs), v(outs[3]), None, false));
            d.extend(backward_weight_with(gpu(), weight, &s, v(xg), None, v(gs), v(outs[4]), Some(v(scratch)), false));
            d.extend(backward_weight_with(gpu(), weight, &s, v(xg), bn, v(gs), v(outs[5]), None, false));
            run(&d);
            outputs.push(outs.iter().map(|&o| slots.read(&buf, o)).collect());
            slots.assert_guards_intact(&buf);
        }
        let names = [
            "forward",
            "forward with BN-ReLU",
            "backward_input",
            "backward_weight",
            "backward_weight split",
            "backward_weight with BN-ReLU",
        ];
        for (i, op) in names.iter().enumerate() {
            let what = format!("{} / {} {op}", product.name(), weight.name());
            assert!(outputs[1][i].iter().all(|v| v.is_finite()), "{what}: the scalar loads left a poisoned output");
            assert_eq!(bits(&outputs[0][i]), bits(&outputs[1][i]), "{what}: vector and scalar loads differ");
        }
        assert_close(&format!("{} forward", product.name()), &outputs[1][0], &y);
        assert_close(&format!("{} backward_input", product.name()), &outputs[1][2], &dx);
        assert_close(&format!("{} backward_weight", weight.name()), &outputs[1][3], &dw);
    }
}

/// The head of DenseNet-BC-100 at batch 64 (the global average pool over 8x8 maps of 342
/// channels, the 342 → 10 classifier) and transition 1's 2x2 average pool at 32x32 (108
/// channels): every sum's depth is its length plus the roundings around it (the bias, the
/// 0.25 and 1/64 scalings).
#[test]
fn pools_and_classifier_at_real_sizes_stay_within_f32_rounding() {
    use densegpu::ops::linear::{kernels as linear, LinearShape};
    use densegpu::ops::pool::{kernels as pool, PoolShape};
    use densegpu::reference::{linear as linear_ref, pool as pool_ref};

    let head = PoolShape::new(342, 64, 8, 8);
    let x = post_relu(head.len(), 31);
    let pooled = pool_ref::global_avg_pool_forward(head, &x);
    let s = LinearShape::new(64, 342, 10);
    let w = he(10 * 342, 342, 32);
    let b = normal(10, 0.0, 0.1, 33);
    let params: Vec<f32> = w.iter().chain(&b).copied().collect();
    let dy = small_gradients(10 * 64, 34);
    let y = linear_ref::forward(s, &pooled, &w, &b);
    let y_abs = linear_ref::forward(s, &pooled, &abs(&w), &abs(&b));
    let dx = linear_ref::backward_input(s, &w, &dy);
    let dx_abs = linear_ref::backward_input(s, &abs(&w), &abs(&dy));
    let dw = linear_ref::backward_weight(s, &pooled, &dy);
    let dw_abs = linear_ref::backward_weight(s, &pooled, &abs(&dy));
    let db = linear_ref::backward_bias(s, &dy);
    let db_abs = linear_ref::backward_bias(s, &abs(&dy));
    let dpooled = small_gradients(342 * 64, 35);
    let dhead = pool_ref::global_avg_pool_backward(head, &dpooled);
    let trans = PoolShape::new(108, 64, 32, 32);
    let t = post_relu(trans.len(), 36);
    let t_out = pool_ref::avg_pool_forward(trans, &t);
    let t_abs = pool_ref::avg_pool_forward(trans, &abs(&t));
    let dt_out = small_gradients(t_out.len(), 37);
    let dt = pool_ref::avg_pool_backward(trans, &dt_out);

    let mut slots = Slots::new();
    let (xs, gs, ps) = (slots.input(&x), slots.output(pooled.len()), slots.input(&pooled));
    let (ws, dys, ys) = (slots.input(&params), slots.input(&dy), slots.output(y.len()));
    let (dxs, dws, dbs) = (slots.output(dx.len()), slots.output(dw.len()), slots.output(db.len()));
    let (dps, dhs) = (slots.input(&dpooled), slots.output(dhead.len()));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    let wv = v(ws);
    run(&[
        pool::global_avg_pool_forward(gpu(), head, v(xs), v(gs)),
        pool::global_avg_pool_backward(gpu(), head, v(dps), v(dhs), false),
        linear::forward(gpu(), s, v(ps), wv, v(ys)),
        linear::backward_input(gpu(), s, wv, v(dys), v(dxs), false),
        linear::backward_weight(gpu(), s, v(ps), v(dys), v(dws), false),
        linear::backward_bias(gpu(), s, v(dys), v(dbs), false),
    ]);
    // Σ of 64 non-negative values, then a division (WGSL allows it 2.5 ULP: 3 roundings).
    let pooled_abs = pool_ref::global_avg_pool_forward(head, &abs(&x));
    assert_within("global average pool 8x8", &slots.read(&buf, gs), &pooled, &sum_bound(64 + 3, &pooled_abs, &pooled));
    assert_within("global average pool backward", &slots.read(&buf, dhs), &dhead, &sum_bound(3, &abs(&dhead), &dhead));
    assert_within("classifier forward", &slots.read(&buf, ys), &y, &sum_bound(342 + 1, &y_abs, &y));
    assert_within("classifier backward_input", &slots.read(&buf, dxs), &dx, &sum_bound(10, &dx_abs, &dx));
    assert_within("classifier backward_weight", &slots.read(&buf, dws), &dw, &sum_bound(64, &dw_abs, &dw));
    assert_within("classifier backward_bias", &slots.read(&buf, dbs), &db, &sum_bound(64, &db_abs, &db));
    slots.assert_guards_intact(&buf);

    let mut slots = Slots::new();
    let (ts, tos, dtos, dts) =
        (slots.input(&t), slots.output(t_out.len()), slots.input(&dt_out), slots.output(dt.len()));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    run(&[
        pool::avg_pool_forward(gpu(), trans, v(ts), v(tos)),
        pool::avg_pool_backward(gpu(), trans, v(dtos), v(dts), false),
    ]);
    // (a + b) + (c + d), then the exact scaling by 0.25; the backward is that scaling alone.
    assert_within("transition 2x2 average pool", &slots.read(&buf, tos), &t_out, &sum_bound(2, &t_abs, &t_out));
    assert_within("transition 2x2 average pool backward", &slots.read(&buf, dts), &dt, &vec![0.0; dt.len()]);
    slots.assert_guards_intact(&buf);
}

/// ReLU, dropout and one SGD step over block 1's sizes (216 channels at 32x32, batch 64 for
/// the activations; the parameters of DenseNet-BC-100, 0.8 M, for SGD).
#[test]
fn relu_dropout_and_sgd_at_real_sizes_stay_within_f32_rounding() {
    use densegpu::ops::elementwise::kernels as elementwise;
    use densegpu::ops::sgd::{kernels as sgd, SgdHyper};
    use densegpu::reference::{elementwise as ew_ref, sgd as sgd_ref};

    let len = 216 * 64 * 32 * 32 / 4;
    let x = normal(len, 0.2, 1.0, 41);
    let dy = small_gradients(len, 42);
    let (rate, seed) = (0.2, [7, 3]);
    let relu = ew_ref::relu_forward(&x);
    let drop = ew_ref::dropout_forward(&x, rate, seed);
    let mut slots = Slots::new();
    let (xs, dys, rs, ds) = (slots.input(&x), slots.input(&dy), slots.output(len), slots.output(len));
    let (rbs, dbs) = (slots.output(len), slots.output(len));
    let buf = slots.upload();
    let v = |slot| slots.view(&buf, slot);
    run(&[
        elementwise::relu_forward(gpu(), len as u32, v(xs), v(rs)),
        elementwise::relu_backward_into(gpu(), len as u32, v(xs), v(dys), v(rbs), false),
        elementwise::dropout_forward(gpu(), len as u32, v(xs), v(ds), rate, seed),
        elementwise::dropout_backward(gpu(), len as u32, v(dys), v(dbs), rate, seed, false),
    ]);
    // ReLU selects; dropout multiplies by 1/(1 − rate), itself rounded to f32 on the host.
    assert_within("relu", &slots.read(&buf, rs), &relu, &vec![0.0; len]);
    let relu_back = ew_ref::relu_backward(&x, &dy);
    assert_within("relu backward", &slots.read(&buf, rbs), &relu_back, &vec![0.0; len]);
    let two_roundings = |want: &[f32]| want.iter().map(|w| 2.0 * U * (*w as f64).abs()).collect::<Vec<f64>>();
    assert_within("dropout", &slots.read(&buf, ds), &drop, &two_roundings(&drop));
    let drop_back = ew_ref::dropout_backward(&dy, rate, seed);
    assert_within("dropout backward", &slots.read(&buf, dbs), &drop_back, &two_roundings(&drop_back));
    slots.assert_guards_intact(&buf);

    // Two Nesterov steps, so the momentum buffer is non-zero in the second.
    let n = 769_162;
    let h = SgdHyper::densenet_cifar();
    let w0 = he(n, 100, 43);
    let grads = [small_gradients(n, 44), small_gradients(n, 45)];
    let (mut w, mut b) = (w0.clone(), vec![0.0; n]);
    let mut slots = Slots::new();
    let (ws, gs, bs) = (slots.input(&w0), slots.input(&grads[0]), slots.input(&b));
    let flags = slots.input(&[f32::from_bits(sgd::NO_NON_FINITE); 2]);
    let buf = slots.upload();
    for g in &grads {
        let b_before = b.clone();
        let w_before = w.clone();
        sgd_ref::sgd_step(&mut w, g, &mut b, &h);
        gpu().write_f32(&buf, slots.view(&buf, gs).buffer_offset(), g);
        run(&[sgd::sgd_step(
            gpu(),
            n as u32,
            slots.view(&buf, ws),
            slots.view(&buf, gs),
            Some(slots.view(&buf, bs)),
            slots.view(&buf, flags),
            &h,
        )]);
        let flag_words: Vec<u32> = slots.read(&buf, flags).iter().map(|v| v.to_bits()).collect();
        assert_eq!(flag_words, [sgd::NO_NON_FINITE; 2], "a finite step raised a divergence flag");
        // g' = g + λw, b = μb + g', g'' = g' + μb, w − lr·g'': two roundings per line.
        let (lr, mu, wd) = (h.lr as f64, h.momentum as f64, h.weight_decay as f64);
        let mut w_bound = Vec::with_capacity(n);
        let mut b_bound = Vec::with_capacity(n);
        for i in 0..n {
            let t = g[i].abs() as f64 + wd * w_before[i].abs() as f64;
            let bb = mu * b_before[i].abs() as f64 + t;
            b_bound.push(gamma(4) * bb + U * b[i].abs() as f64);
            w_bound.push(gamma(8) * (w_before[i].abs() as f64 + lr * (t + mu * bb)) + U * w[i].abs() as f64);
        }
        assert_within("sgd momentum buffer", &slots.read(&buf, bs), &b, &b_bound);
        assert_within("sgd parameters", &slots.read(&buf, ws), &w, &w_bound);
    }
}

use crate::common::*;
use densegpu::ops::batchnorm::{kernels as batchnorm, BatchNormShape};
use densegpu::ops::conv::kernels::{self as conv, ConvKernel};
use densegpu::ops::conv::Conv2dShape;
use densegpu::reference::conv as reference;

#[allow(clippy::too_many_arguments)]
fn shape(n: u32, c_in: u32, h: u32, w: u32, c_out: u32, k: u32, stride: u32, pad: u32) -> Conv2dShape {
    Conv2dShape { n, c_in, h, w, c_out, kh: k, kw: k, stride, pad }
}

/// Covers each kernel (1x1 matrix product, 3x3 stride 1, general) in each direction, with odd
/// sizes everywhere so no tile divides evenly.
fn shapes() -> Vec<Conv2dShape> {
    vec![
        shape(5, 13, 7, 5, 3, 1, 1, 0),
        shape(1, 3, 7, 5, 13, 1, 1, 0),
        shape(5, 3, 7, 5, 13, 3, 1, 1),
        shape(1, 13, 7, 5, 3, 3, 1, 1),
        shape(2, 5, 9, 11, 7, 3, 1, 0),
        shape(1, 4, 6, 5, 9, 3, 1, 2),
        shape(2, 3, 13, 11, 5, 7, 2, 3), // the ImageNet stem's geometry
        shape(1, 3, 9, 7, 13, 3, 2, 1),  // stride 2, odd input
        shape(5, 13, 7, 5, 3, 2, 2, 0),
        shape(3, 6, 7, 5, 4, 1, 2, 0),
        Conv2dShape { n: 2, c_in: 3, h: 7, w: 6, c_out: 5, kh: 3, kw: 2, stride: 1, pad: 1 },
        shape(5, 24, 8, 8, 48, 1, 1, 0),
        shape(5, 48, 8, 8, 12, 3, 1, 1),
        shape(1, 3, 32, 32, 24, 3, 1, 1),
        // The wide 3x3 kernel with partial segments, line bands and channel blocks everywhere.
        shape(3, 5, 13, 19, 14, 3, 1, 1),
        shape(2, 7, 11, 17, 25, 3, 1, 0),
        // The narrow (at most 8 wide) 3x3 kernel: an 8-wide map with a partial line band,
        // and one narrower than its segment.
        shape(2, 7, 9, 8, 25, 3, 1, 1),
        shape(3, 13, 11, 6, 5, 3, 1, 1),
    ]
}

/// A tensor of `before + len + after` elements where `len` elements starting at `before` are
/// the operand and the rest belongs to other channels that the kernel must not touch.
struct Region {
    values: Vec<f32>,
    before: usize,
    len: usize,
}

impl Region {
    fn new(before: usize, inner: Vec<f32>, after: usize, seed: u64) -> Region {
        let mut values = random(before, seed);
        let len = inner.len();
        values.extend(inner);
        values.extend(random(after, seed + 1));
        Region { values, before, len }
    }
    fn inner(&self) -> &[f32] {
        &self.values[self.before..self.before + self.len]
    }
}

/// Builds the launches of one check from (input views, output view, accumulate).
type Launch<'a> = dyn Fn(&[densegpu::gpu::View], densegpu::gpu::View, bool) -> Vec<densegpu::gpu::Dispatch> + 'a;

/// Runs a gradient/output kernel into a channel slice of a larger tensor, once overwriting
/// (the slice poisoned with NaN) and once accumulating onto random values, and compares with
/// the reference. `dispatch(input views, output view, accumulate)` builds the launch.
#[allow(clippy::too_many_arguments)]
fn check_output(
    what: &str,
    s: &Conv2dShape,
    inputs: &[Region],
    out_len: usize,
    out_plane: usize,
    want: &[f32],
    accumulate_modes: &[bool],
    dispatch: &Launch<'_>,
) {
    for &accumulate in accumulate_modes {
        let prefill = if accumulate { random(out_len, 77) } else { vec![f32::NAN; out_len] };
        let out = Region::new(2 * out_plane, prefill.clone(), 3 * out_plane, 55);
        let mut slots = Slots::new();
        let input_slots: Vec<Slot> = inputs.iter().map(|r| slots.input(&r.values)).collect();
        let out_slot = slots.input(&out.values);
        let buffer = slots.upload();
        let views: Vec<_> = input_slots.iter().map(|&sl| slots.view(&buffer, sl)).collect();
        let input_views: Vec<_> = views.iter().zip(inputs).map(|(v, r)| v.at(r.before as u32)).collect();
        let out_view = slots.view(&buffer, out_slot).at(out.before as u32);
        run(&dispatch(&input_views, out_view, accumulate));
        let got = slots.read(&buffer, out_slot);
        let expected: Vec<f32> =
            if accumulate { want.iter().zip(&prefill).map(|(w, p)| w + p).collect() } else { want.to_vec() };
        let context = format!("{what} {s:?} accumulate={accumulate}");
        assert_close(&context, &got[out.before..out.before + out.len], &expected);
        for (i, (g, o)) in got.iter().zip(&out.values).enumerate() {
            if i < out.before || i >= out.before + out.len {
                assert_eq!(g.to_bits(), o.to_bits(), "{context}: element {i} outside the output slice changed");
            }
        }
        slots.assert_guards_intact(&buffer);
    }
}

fn check_all_directions(s: &Conv2dShape, seed: u64, accumulate_modes: &[bool]) {
    for (product, weight) in kernel_pairs() {
        check_all_directions_with(s, seed, accumulate_modes, product, weight);
    }
}

fn check_all_directions_with(
    s: &Conv2dShape,
    seed: u64,
    accumulate_modes: &[bool],
    product: ConvKernel,
    weight: ConvKernel,
) {
    let g = gpu();
    let x_plane = (s.n * s.h * s.w) as usize;
    let y_plane = (s.n * s.out_h() * s.out_w()) as usize;
    // x and dy are channel prefixes of larger tensors, read in place.
    let x = Region::new(0, random(s.input_elems() as usize, seed), 2 * x_plane, seed + 10);
    let w = Region::new(7, random(s.weight_elems() as usize, seed + 1), 0, seed + 11);
    let dy = Region::new(0, random(s.output_elems() as usize, seed + 2), 3 * y_plane, seed + 12);

    let want = reference::conv2d_forward(s, x.inner(), w.inner());
    let what = |direction: &str| format!("{direction} ({})", product.name());
    check_output(&what("forward"), s, &[x, w], s.output_elems() as usize, y_plane, &want, &[false], &|i, out, _| {
        vec![conv::forward_with(g, product, s, i[0], i[1], out)]
    });

    let x = Region::new(0, random(s.input_elems() as usize, seed), 2 * x_plane, seed + 10);
    let w = Region::new(7, random(s.weight_elems() as usize, seed + 1), 0, seed + 11);
    let want = reference::conv2d_backward_input(s, dy.inner(), w.inner());
    let w_again = Region::new(7, w.inner().to_vec(), 0, seed + 11);
    let dy_again = Region::new(0, dy.inner().to_vec(), 3 * y_plane, seed + 12);
    check_output(
        &what("backward input"),
        s,
        &[dy_again, w],
        s.input_elems() as usize,
        x_plane,
        &want,
        accumulate_modes,
        &|i, out, acc| vec![conv::backward_input_with(g, product, s, (0, s.c_in), i[0], i[1], out, acc)],
    );

    // A slice of the input channels: [1, c_in - 1), or the last one alone.
    let (first, count) = if s.c_in > 2 { (1, s.c_in - 2) } else { (s.c_in - 1, 1) };
    let slice = &want[first as usize * x_plane..(first + count) as usize * x_plane];
    let dy_again = Region::new(0, dy.inner().to_vec(), 3 * y_plane, seed + 12);
    check_output(
        &what("backward input channels"),
        s,
        &[dy_again, w_again],
        slice.len(),
        x_plane,
        slice,
        accumulate_modes,
        &|i, out, acc| vec![conv::backward_input_with(g, product, s, (first, count), i[0], i[1], out, acc)],
    );

    let want = reference::conv2d_backward_weight(s, x.inner(), dy.inner());
    let weights = s.weight_elems() as usize;
    let what = format!("backward weight ({})", weight.name());
    check_output(&what, s, &[x, dy], weights, 1, &want, accumulate_modes, &|i, out, acc| {
        conv::backward_weight_with(g, weight, s, i[0], None, i[1], out, None, acc)
    });
}

#[test]
fn conv2d_matches_reference_on_odd_shapes() {
    for (i, s) in shapes().iter().enumerate() {
        check_all_directions(s, 100 + i as u64 * 7, &[false, true]);
    }
}

#[test]
fn conv2d_weight_grad_folds_a_large_grid() {
    // 73,728 weights on the general path: one workgroup each, more than one grid row holds.
    check_all_directions(&shape(1, 64, 5, 5, 128, 3, 2, 1), 5, &[false]);
}

#[test]
fn conv2d_weight_grad_stays_accurate_over_long_reductions() {
    // DenseNet-BC sizes at batch 64, 32x32: the weight gradients sum 65,536 products each.
    check_all_directions(&shape(64, 24, 32, 32, 48, 1, 1, 0), 3, &[true]);
    check_all_directions(&shape(64, 48, 32, 32, 12, 3, 1, 1), 4, &[false]);
}

#[test]
fn conv2d_shape_arithmetic() {
    let stem = shape(64, 3, 224, 224, 64, 7, 2, 3);
    assert_eq!((stem.out_h(), stem.out_w()), (112, 112));
    assert_eq!(stem.flops_forward(), 2 * 64 * 64 * 112 * 112 * 3 * 49);
    let growth = shape(64, 48, 32, 32, 12, 3, 1, 1);
    assert_eq!((growth.out_h(), growth.out_w()), (32, 32));
    assert_eq!(shape(1, 3, 9, 7, 13, 3, 2, 1).out_w(), 4);
}

#[test]
fn conv1x1_weight_grad_with_bn_relu_on_load_matches_reference() {
    // Odd sizes, partial weight blocks along both axes, long reductions, and (the last) more
    // input channels than one column block at DenseNet-BC's bottleneck width.
    let cases = [
        (shape(5, 13, 7, 5, 3, 1, 1, 0), &[false, true][..]),
        (shape(1, 3, 7, 5, 13, 1, 1, 0), &[false, true][..]),
        (shape(3, 37, 5, 9, 19, 1, 1, 0), &[false, true][..]),
        (shape(64, 24, 32, 32, 48, 1, 1, 0), &[true][..]),
    ];
    let g = gpu();
    for (i, (s, accumulate_modes)) in cases.iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let c = s.c_in as usize;
        let plane = (s.n * s.h * s.w) as usize;
        let y_plane = (s.n * s.out_h() * s.out_w()) as usize;
        // x is a channel prefix of a larger block and the statistics and affine parameters
        // sit at odd offsets, as in the arena and the parameter buffers.
        let x = Region::new(0, random(s.input_elems() as usize, seed), 2 * plane, seed + 1);
        let mut stats = random(2 * c, seed + 2);
        stats[c..].iter_mut().for_each(|v| *v = v.abs() + 0.5); // invstd > 0
        let stats = Region::new(5, stats, 0, seed + 3);
        let affine = Region::new(9, random(2 * c, seed + 4), 0, seed + 5);
        let dy = Region::new(0, random(s.output_elems() as usize, seed + 6), 3 * y_plane, seed + 7);
        let normed = densegpu::reference::batchnorm::apply(c, plane, x.inner(), stats.inner(), affine.inner(), true);
        assert!(normed.contains(&0.0) && normed.iter().any(|&v| v > 0.0), "the ReLU clips some values");
        let want = reference::conv2d_backward_weight(s, &normed, dy.inner());
        let weights = s.weight_elems() as usize;
        for (_, kernel) in kernel_pairs() {
            let inputs = [&x, &stats, &affine, &dy]
                .map(|r| Region::new(r.before, r.inner().to_vec(), r.values.len() - r.before - r.len, seed + 9));
            check_output(
                &format!("backward weight with BN-ReLU ({})", kernel.name()),
                s,
                &inputs,
                weights,
                1,
                &want,
                accumulate_modes,
                &|v, out, acc| conv::backward_weight_with(g, kernel, s, v[0], Some((v[1], v[2])), v[3], out, None, acc),
            );
        }
    }
}

#[test]
fn conv1x1_forward_with_bn_relu_on_load_matches_reference_and_the_unfused_pair() {
    // Odd sizes: channel counts off the 16-row block, pixel counts off the 16-pixel segment
    // (n = 3 and odd maps), and (the last) a bottleneck-like conv with many input channels.
    let cases = [
        shape(3, 13, 7, 5, 3, 1, 1, 0),
        shape(1, 3, 7, 5, 13, 1, 1, 0),
        shape(3, 37, 5, 9, 19, 1, 1, 0),
        shape(3, 61, 9, 7, 48, 1, 1, 0),
    ];
    let g = gpu();
    for (i, s) in cases.iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        let c = s.c_in as usize;
        let plane = (s.n * s.h * s.w) as usize;
        let y_plane = (s.n * s.out_h() * s.out_w()) as usize;
        let y_len = s.output_elems() as usize;
        // x is a channel prefix of a larger block, y a channel slice of one, and the statistics,
        // affine parameters and weights sit at odd offsets, as in the arena and parameter buffers.
        let x = Region::new(0, random(s.input_elems() as usize, seed), 2 * plane, seed + 1);
        let mut stats = random(2 * c, seed + 2);
        stats[c..].iter_mut().for_each(|v| *v = v.abs() + 0.5); // invstd > 0
        let stats = Region::new(5, stats, 0, seed + 3);
        let affine = Region::new(9, random(2 * c, seed + 4), 0, seed + 5);
        let w = Region::new(7, random(s.weight_elems() as usize, seed + 6), 0, seed + 7);
        let y = Region::new(2 * y_plane, vec![f32::NAN; y_len], 3 * y_plane, seed + 8);
        let normed = densegpu::reference::batchnorm::apply(c, plane, x.inner(), stats.inner(), affine.inner(), true);
        assert!(normed.contains(&0.0) && normed.iter().any(|&v| v > 0.0), "the ReLU clips some values");
        let want = reference::conv2d_forward(s, &normed, w.inner());

        for (kernel, _) in kernel_pairs() {
            let mut slots = Slots::new();
            let [xs, ss, affs, ws, ys] = [&x, &stats, &affine, &w, &y].map(|r| slots.input(&r.values));
            // The unfused pair: BnApply into a tensor of its own, then the plain 1x1 conv.
            let normed_slot = slots.output(normed.len());
            let pair_slot = slots.output(y_len);
            let buffer = slots.upload();
            let at = |slot, r: &Region| slots.view(&buffer, slot).at(r.before as u32);
            let (xv, sv, av, wv, yv) = (at(xs, &x), at(ss, &stats), at(affs, &affine), at(ws, &w), at(ys, &y));
            let nv = slots.view(&buffer, normed_slot);
            let bn_shape = BatchNormShape::new(s.c_in, s.n, s.h * s.w);
            run(&[
                conv::forward_bnrelu_with(g, kernel, s, xv, sv, av, wv, yv),
                batchnorm::batchnorm_apply(g, bn_shape, xv, sv, av, nv, true),
                conv::forward_with(g, kernel, s, nv, wv, slots.view(&buffer, pair_slot)),
            ]);
            let pair = slots.read(&buffer, pair_slot);
            let got = slots.read(&buffer, ys);
            let fused = &got[y.before..y.before + y_len];
            let k = kernel.name();
            assert_close(&format!("forward with BN-ReLU {s:?} ({k})"), fused, &want);
            assert_close(&format!("BnApply then forward {s:?} ({k})"), &pair, &want);
            // The schedule swaps the pair for the fused launch only in some memory modes, which
            // must still train identically.
            for (j, (f, p)) in fused.iter().zip(&pair).enumerate() {
                assert_eq!(f.to_bits(), p.to_bits(), "{s:?} ({k}): element {j} is {f} fused but {p} unfused");
            }
            for (j, (g, o)) in got.iter().zip(&y.values).enumerate() {
                if j < y.before || j >= y.before + y_len {
                    assert_eq!(g.to_bits(), o.to_bits(), "{s:?} ({k}): element {j} outside the output slice changed");
                }
            }
            slots.assert_guards_intact(&buffer);
        }
    }
}

/// The register candidates split the work differently (tile sizes, workgroups, which
/// invocation owns which outputs) but add every output's terms in the same order, so each
/// gives the same bits as the default: a tuned run on a CPU driver trains exactly as an
/// untuned one, whichever register candidates the tuner picked. Every direction, on the odd
/// shapes above, with both forms of the fused BN-ReLU conv among them.
#[test]
fn register_candidates_give_the_same_bits() {
    let g = gpu();
    for (i, s) in shapes().iter().enumerate() {
        let seed = 900 + 10 * i as u64;
        let x = random(s.input_elems() as usize, seed);
        let w = random(s.weight_elems() as usize, seed + 1);
        let dy = random(s.output_elems() as usize, seed + 2);
        let c = s.c_in as usize;
        let mut stats = random(2 * c, seed + 3);
        stats[c..].iter_mut().for_each(|v| *v = v.abs() + 0.5);
        let affine = random(2 * c, seed + 4);
        let pointwise = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0;
        let candidates = register_candidates();
        let outputs: Vec<Vec<Vec<f32>>> = candidates
            .iter()
            .map(|&kernel| {
                let mut slots = Slots::new();
                let [xs, ws, dys, ss, afs] = [&x, &w, &dy, &stats, &affine].map(|v| slots.input(v));
                let (y, dx, dw) = (slots.output(dy.len()), slots.output(x.len()), slots.output(w.len()));
                let (yf, dwf) = (slots.output(dy.len()), slots.output(w.len()));
                let buf = slots.upload();
                let v = |slot| slots.view(&buf, slot);
                let mut d = vec![
                    conv::forward_with(g, kernel, s, v(xs), v(ws), v(y)),
                    conv::backward_input_with(g, kernel, s, (0, s.c_in), v(dys), v(ws), v(dx), false),
                ];
                d.extend(conv::backward_weight_with(g, kernel, s, v(xs), None, v(dys), v(dw), None, false));
                let mut read = vec![y, dx, dw];
                if pointwise {
                    d.push(conv::forward_bnrelu_with(g, kernel, s, v(xs), v(ss), v(afs), v(ws), v(yf)));
                    let bn = Some((v(ss), v(afs)));
                    d.extend(conv::backward_weight_with(g, kernel, s, v(xs), bn, v(dys), v(dwf), None, false));
                    read.extend([yf, dwf]);
                }
                run(&d);
                slots.assert_guards_intact(&buf);
                read.into_iter().map(|o| slots.read(&buf, o)).collect()
            })
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (t, got) in candidates.iter().zip(&outputs).skip(1) {
            for (k, (a, b)) in outputs[0].iter().zip(got).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{s:?} output {k}: poisoned");
                assert_eq!(bits(a), bits(b), "{s:?} output {k}: {} and {} differ", candidates[0].name(), t.name());
            }
        }
    }
}

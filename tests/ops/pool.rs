use crate::common::*;
use densegpu::ops::pool::{kernels as pool, PoolShape};
use densegpu::reference::pool as reference;

const SHAPES: &[(u32, u32, u32, u32)] = &[(3, 1, 7, 5), (13, 5, 7, 7), (3, 5, 5, 3), (1, 1, 2, 2), (13, 1, 1, 1)];

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Runs one backward kernel twice: overwriting a poisoned output, then adding to a random
/// prefill; both against the reference.
fn check_backward(
    what: &str,
    inputs: &[&[f32]],
    out_len: usize,
    want: &[f32],
    launch: impl Fn(&Slots, &wgpu::Buffer, &[Slot], Slot, bool) -> densegpu::gpu::Dispatch,
) {
    for accumulate in [false, true] {
        let mut s = Slots::new();
        let ins: Vec<Slot> = inputs.iter().map(|v| s.input(v)).collect();
        let prefill = random(out_len, 77);
        let out = if accumulate { s.input(&prefill) } else { s.output(out_len) };
        let buf = s.upload();
        run(&[launch(&s, &buf, &ins, out, accumulate)]);
        let want = if accumulate { add(want, &prefill) } else { want.to_vec() };
        assert_close(&format!("{what} (accumulate {accumulate})"), &s.read(&buf, out), &want);
        s.assert_guards_intact(&buf);
    }
}

fn check_forward(what: &str, x: &[f32], want: &[f32], launch: impl Fn(View, View) -> densegpu::gpu::Dispatch) {
    let mut s = Slots::new();
    let (xs, ys) = (s.input(x), s.output(want.len()));
    let buf = s.upload();
    run(&[launch(s.view(&buf, xs), s.view(&buf, ys))]);
    assert_close(what, &s.read(&buf, ys), want);
    s.assert_guards_intact(&buf);
}

use densegpu::gpu::View;

fn check_avg(sh: PoolShape) {
    let g = gpu();
    let x = random(sh.len(), 1);
    let (oh, ow) = sh.avg_out();
    let dy = random((sh.planes() * oh * ow) as usize, 2);
    check_forward(&format!("avg forward {sh:?}"), &x, &reference::avg_pool_forward(sh, &x), |x, y| {
        pool::avg_pool_forward(g, sh, x, y)
    });
    let want = reference::avg_pool_backward(sh, &dy);
    check_backward(&format!("avg backward {sh:?}"), &[&dy], sh.len(), &want, |s, b, i, o, acc| {
        pool::avg_pool_backward(g, sh, s.view(b, i[0]), s.view(b, o), acc)
    });
}

fn check_max(sh: PoolShape, x: &[f32]) {
    let g = gpu();
    let (oh, ow) = sh.max_out();
    let dy = random((sh.planes() * oh * ow) as usize, 2);
    check_forward(&format!("max forward {sh:?}"), x, &reference::max_pool_forward(sh, x), |x, y| {
        pool::max_pool_forward(g, sh, x, y)
    });
    let want = reference::max_pool_backward(sh, x, &dy);
    check_backward(&format!("max backward {sh:?}"), &[x, &dy], sh.len(), &want, |s, b, i, o, acc| {
        pool::max_pool_backward(g, sh, s.view(b, i[0]), s.view(b, i[1]), s.view(b, o), acc)
    });
}

fn check_global(sh: PoolShape) {
    let g = gpu();
    let x = random(sh.len(), 1);
    let dy = random(sh.planes() as usize, 2);
    check_forward(&format!("global forward {sh:?}"), &x, &reference::global_avg_pool_forward(sh, &x), |x, y| {
        pool::global_avg_pool_forward(g, sh, x, y)
    });
    let want = reference::global_avg_pool_backward(sh, &dy);
    check_backward(&format!("global backward {sh:?}"), &[&dy], sh.len(), &want, |s, b, i, o, acc| {
        pool::global_avg_pool_backward(g, sh, s.view(b, i[0]), s.view(b, o), acc)
    });
}

#[test]
fn avg_pool_matches_reference() {
    for &(c, n, h, w) in SHAPES.iter().filter(|s| s.2 >= 2 && s.3 >= 2) {
        check_avg(PoolShape::new(c, n, h, w));
    }
}

#[test]
fn avg_pool_matches_reference_at_densenet_size() {
    check_avg(PoolShape::new(216, 64, 32, 32));
}

#[test]
fn max_pool_matches_reference() {
    for &(c, n, h, w) in SHAPES {
        let sh = PoolShape::new(c, n, h, w);
        check_max(sh, &random(sh.len(), 1));
    }
}

/// Values drawn from three levels, so most windows hold ties and some are all-negative:
/// the gradient must go to the first maximum in row-major order, exactly like PyTorch.
#[test]
fn max_pool_routes_ties_like_pytorch() {
    for &(c, n, h, w) in SHAPES {
        let sh = PoolShape::new(c, n, h, w);
        let x: Vec<f32> = random(sh.len(), 5).iter().map(|v| (v * 1.5).round() * 0.5 - 0.25).collect();
        check_max(sh, &x);
    }
}

#[test]
fn max_pool_matches_reference_at_imagenet_stem_size() {
    let sh = PoolShape::new(64, 5, 112, 112);
    assert_eq!(sh.max_out(), (56, 56));
    check_max(sh, &random(sh.len(), 1));
}

#[test]
fn global_avg_pool_matches_reference() {
    for &(c, n, h, w) in SHAPES {
        check_global(PoolShape::new(c, n, h, w));
    }
    check_global(PoolShape::new(342, 64, 8, 8));
}

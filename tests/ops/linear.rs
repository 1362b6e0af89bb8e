use crate::common::*;
use densegpu::ops::linear::{kernels as linear, LinearShape};
use densegpu::reference::linear as reference;

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn check(s: LinearShape) {
    let g = gpu();
    let (n, fin, fout) = (s.n as usize, s.in_features as usize, s.out_features as usize);
    let x = random(fin * n, 1);
    let w = random(fout * fin, 2);
    let b = random(fout, 3);
    let dy = random(fout * n, 4);

    let mut sl = Slots::new();
    let params: Vec<f32> = w.iter().chain(&b).copied().collect();
    let (xs, ps, ys) = (sl.input(&x), sl.input(&params), sl.output(fout * n));
    let buf = sl.upload();
    run(&[linear::forward(g, s, sl.view(&buf, xs), sl.view(&buf, ps), sl.view(&buf, ys))]);
    assert_close(&format!("linear forward {s:?}"), &sl.read(&buf, ys), &reference::forward(s, &x, &w, &b));
    sl.assert_guards_intact(&buf);

    let want_dx = reference::backward_input(s, &w, &dy);
    let want_dw = reference::backward_weight(s, &x, &dy);
    let want_db = reference::backward_bias(s, &dy);
    for accumulate in [false, true] {
        let mut sl = Slots::new();
        let (xs, ws, dys) = (sl.input(&x), sl.input(&w), sl.input(&dy));
        let (px, pw, pb) = (random(fin * n, 5), random(fout * fin, 6), random(fout, 7));
        let (dxs, dws, dbs) = if accumulate {
            (sl.input(&px), sl.input(&pw), sl.input(&pb))
        } else {
            (sl.output(fin * n), sl.output(fout * fin), sl.output(fout))
        };
        let buf = sl.upload();
        let v = |slot| sl.view(&buf, slot);
        run(&[
            linear::backward_input(g, s, v(ws), v(dys), v(dxs), accumulate),
            linear::backward_weight(g, s, v(xs), v(dys), v(dws), accumulate),
            linear::backward_bias(g, s, v(dys), v(dbs), accumulate),
        ]);
        let expect = |want: &[f32], prefill: &[f32]| if accumulate { add(want, prefill) } else { want.to_vec() };
        let tag = format!("{s:?} accumulate {accumulate}");
        assert_close(&format!("linear dx {tag}"), &sl.read(&buf, dxs), &expect(&want_dx, &px));
        assert_close(&format!("linear dw {tag}"), &sl.read(&buf, dws), &expect(&want_dw, &pw));
        assert_close(&format!("linear db {tag}"), &sl.read(&buf, dbs), &expect(&want_db, &pb));
        sl.assert_guards_intact(&buf);
    }
}

#[test]
fn linear_matches_reference_on_small_shapes() {
    for (n, fin, fout) in [(1, 3, 13), (5, 13, 3), (5, 7, 10), (1, 1, 1)] {
        check(LinearShape::new(n, fin, fout));
    }
}

#[test]
fn linear_matches_reference_on_classifier_shapes() {
    // DenseNet-BC-100 on CIFAR-10, then DenseNet-121 on ImageNet.
    check(LinearShape::new(64, 342, 10));
    check(LinearShape::new(64, 1024, 1000));
}

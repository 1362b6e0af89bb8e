use crate::common::*;
use densegpu::ops::elementwise::kernels as elementwise;
use densegpu::reference;

#[test]
fn relu_forward_and_backward_match_reference() {
    for &len in &[1usize, 7 * 5 * 3, 13 * 5 * 7 * 5, 70_001] {
        let x = random(len, 1);
        let dy = random(len, 2);
        let mut s = Slots::new();
        let (xs, ys, dys) = (s.input(&x), s.output(len), s.input(&dy));
        let buf = s.upload();
        run(&[elementwise::relu_forward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, ys))]);
        assert_close("relu forward", &s.read(&buf, ys), &reference::elementwise::relu_forward(&x));
        run(&[elementwise::relu_backward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, dys), s.view(&buf, dys))]);
        assert_close("relu backward", &s.read(&buf, dys), &reference::elementwise::relu_backward(&x, &dy));
        s.assert_guards_intact(&buf);
    }
}

const LENGTHS: &[usize] = &[1, 7 * 5 * 3, 13 * 5 * 7 * 5, 70_001];

#[test]
fn copy_and_add_match_reference() {
    for &len in LENGTHS {
        let src = random(len, 3);
        let dst = random(len, 4);
        let mut s = Slots::new();
        let (srcs, copys, adds) = (s.input(&src), s.output(len), s.input(&dst));
        let buf = s.upload();
        run(&[
            elementwise::copy(gpu(), len as u32, s.view(&buf, srcs), s.view(&buf, copys)),
            elementwise::add(gpu(), len as u32, s.view(&buf, srcs), s.view(&buf, adds)),
        ]);
        assert_eq!(s.read(&buf, copys), src, "copy");
        assert_close("add", &s.read(&buf, adds), &reference::elementwise::add(&src, &dst));
        s.assert_guards_intact(&buf);
    }
}

#[test]
fn copy_and_add_work_across_buffers() {
    let len = 1000;
    let src = random(len, 5);
    let dst = random(len, 6);
    let (mut a, mut b) = (Slots::new(), Slots::new());
    let srcs = a.input(&src);
    let (copys, adds) = (b.output(len), b.input(&dst));
    let (abuf, bbuf) = (a.upload(), b.upload());
    run(&[
        elementwise::copy(gpu(), len as u32, a.view(&abuf, srcs), b.view(&bbuf, copys)),
        elementwise::add(gpu(), len as u32, a.view(&abuf, srcs), b.view(&bbuf, adds)),
    ]);
    assert_eq!(b.read(&bbuf, copys), src, "copy");
    assert_close("add", &b.read(&bbuf, adds), &reference::elementwise::add(&src, &dst));
    a.assert_guards_intact(&abuf);
    b.assert_guards_intact(&bbuf);
}

/// The GPU mask, read off an output whose inputs are never zero.
fn mask_of(y: &[f32]) -> Vec<bool> {
    y.iter().map(|&v| v != 0.0).collect()
}

#[test]
fn dropout_forward_draws_the_reference_mask_bit_for_bit() {
    for &len in LENGTHS {
        for (rate, seed) in [(0.0f32, [0u32, 0u32]), (0.2, [3, 17]), (0.5, [3, 18]), (0.9, [u32::MAX, 1])] {
            let x = random(len, 7);
            let mut s = Slots::new();
            let (xs, ys) = (s.input(&x), s.output(len));
            let buf = s.upload();
            run(&[elementwise::dropout_forward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, ys), rate, seed)]);
            let y = s.read(&buf, ys);
            let want_mask = reference::elementwise::dropout_mask(len, rate, seed);
            assert!(mask_of(&y) == want_mask, "len {len} rate {rate} seed {seed:?}: mask differs from the reference");
            let want = reference::elementwise::dropout_forward(&x, rate, seed);
            assert_eq!(y, want, "len {len} rate {rate} seed {seed:?}: values differ");
            s.assert_guards_intact(&buf);
        }
    }
}

#[test]
fn dropout_keep_rate_and_seed_independence() {
    let len = 1 << 20;
    for rate in [0.1f32, 0.2, 0.5] {
        let a = reference::elementwise::dropout_mask(len, rate, [1, 1]);
        let b = reference::elementwise::dropout_mask(len, rate, [1, 2]);
        let c = reference::elementwise::dropout_mask(len, rate, [2, 1]);
        let keep = 1.0 - rate as f64;
        let sd = (keep * (1.0 - keep) / len as f64).sqrt();
        for (name, m) in [("a", &a), ("b", &b), ("c", &c)] {
            let got = m.iter().filter(|&&k| k).count() as f64 / len as f64;
            assert!((got - keep).abs() < 5.0 * sd, "rate {rate}, mask {name}: keep rate {got}, expected {keep}");
        }
        // Masks of different seeds agree only as often as independent draws would.
        let both = keep * keep + (1.0 - keep) * (1.0 - keep);
        for (name, m, n) in [("step", &a, &b), ("stream", &a, &c)] {
            let agree = m.iter().zip(n.iter()).filter(|(x, y)| x == y).count() as f64 / len as f64;
            assert!(
                (agree - both).abs() < 0.005,
                "rate {rate}: masks of another {name} agree on {agree}, expected {both}"
            );
        }
    }
}

#[test]
fn dropout_recompute_redraws_the_same_mask() {
    let len = 10_007u32;
    let rate = 0.3;
    let x = random(len as usize, 8);
    let mut s = Slots::new();
    let (xs, y1, y2) = (s.input(&x), s.output(len as usize), s.output(len as usize));
    let buf = s.upload();
    let forward = elementwise::dropout_forward(gpu(), len, s.view(&buf, xs), s.view(&buf, y1), rate, [5, 100]);
    let recompute = elementwise::dropout_forward(gpu(), len, s.view(&buf, xs), s.view(&buf, y2), rate, [5, 100]);
    run(&[forward]);
    run(&[recompute]);
    assert_eq!(s.read(&buf, y1), s.read(&buf, y2), "the recompute redrew a different mask");
    s.assert_guards_intact(&buf);
}

/// The next step reuses the recorded launch with a new seed.
#[test]
fn dropout_new_seed_through_set_params() {
    let len = 10_007u32;
    let rate = 0.3;
    let x = random(len as usize, 8);
    let mut s = Slots::new();
    let (xs, y1, y2) = (s.input(&x), s.output(len as usize), s.output(len as usize));
    let buf = s.upload();
    let old = elementwise::dropout_forward(gpu(), len, s.view(&buf, xs), s.view(&buf, y2), rate, [5, 100]);
    let forward = elementwise::dropout_forward(gpu(), len, s.view(&buf, xs), s.view(&buf, y1), rate, [5, 100]);
    let y1_offset = s.view(&buf, y1).offset;
    forward.set_params(
        gpu(),
        &elementwise::dropout_params(len, s.view(&buf, xs).offset, y1_offset, rate, [5, 101], false),
    );
    run(&[old, forward]);
    let y = s.read(&buf, y1);
    assert_eq!(y, reference::elementwise::dropout_forward(&x, rate, [5, 101]));
    assert!(y != s.read(&buf, y2), "a new seed drew the same mask");
    s.assert_guards_intact(&buf);
}

#[test]
fn dropout_backward_matches_reference() {
    for &len in LENGTHS {
        let (rate, seed) = (0.25f32, [9u32, 4u32]);
        let dy = random(len, 10);
        let prefill = random(len, 11);
        let mut s = Slots::new();
        let (dys, over, acc, inplace) = (s.input(&dy), s.output(len), s.input(&prefill), s.input(&dy));
        let buf = s.upload();
        let v = |slot| s.view(&buf, slot);
        run(&[
            elementwise::dropout_backward(gpu(), len as u32, v(dys), v(over), rate, seed, false),
            elementwise::dropout_backward(gpu(), len as u32, v(dys), v(acc), rate, seed, true),
            elementwise::dropout_backward(gpu(), len as u32, v(inplace), v(inplace), rate, seed, false),
        ]);
        let want = reference::elementwise::dropout_backward(&dy, rate, seed);
        assert_eq!(s.read(&buf, over), want, "len {len}: overwrite");
        assert_close(
            "dropout backward, accumulated",
            &s.read(&buf, acc),
            &reference::elementwise::add(&want, &prefill),
        );
        assert_eq!(s.read(&buf, inplace), want, "len {len}: in place");
        s.assert_guards_intact(&buf);
    }
}

#[test]
fn relu_backward_into_matches_reference() {
    for &len in LENGTHS {
        let x = random(len, 12);
        let dy = random(len, 13);
        let prefill = random(len, 14);
        let want = reference::elementwise::relu_backward(&x, &dy);
        let (mut a, mut b) = (Slots::new(), Slots::new());
        let (xs, over, acc, inplace) = (a.input(&x), a.output(len), a.input(&prefill), a.input(&dy));
        let dys = b.input(&dy);
        let (abuf, bbuf) = (a.upload(), b.upload());
        let (va, vb) = (|slot| a.view(&abuf, slot), |slot| b.view(&bbuf, slot));
        run(&[
            elementwise::relu_backward_into(gpu(), len as u32, va(xs), vb(dys), va(over), false),
            elementwise::relu_backward_into(gpu(), len as u32, va(xs), vb(dys), va(acc), true),
            elementwise::relu_backward_into(gpu(), len as u32, va(xs), va(inplace), va(inplace), false),
        ]);
        assert_eq!(a.read(&abuf, over), want, "len {len}: overwrite");
        assert_close("relu backward, accumulated", &a.read(&abuf, acc), &reference::elementwise::add(&want, &prefill));
        assert_eq!(a.read(&abuf, inplace), want, "len {len}: in place");
        a.assert_guards_intact(&abuf);
        b.assert_guards_intact(&bbuf);
    }
}

#[test]
fn fill_overwrites_exactly_its_range() {
    for &len in &[1usize, 13 * 5 * 7, 70_001] {
        let mut s = Slots::new();
        let y = s.output(len);
        let buf = s.upload();
        run(&[elementwise::fill(gpu(), len as u32, s.view(&buf, y), -0.75)]);
        assert!(s.read(&buf, y).iter().all(|&v| v == -0.75), "every element is the fill value");
        s.assert_guards_intact(&buf);
    }
}

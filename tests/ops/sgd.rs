use crate::common::*;
use densegpu::block_on;
use densegpu::gpu::View;
use densegpu::ops::sgd::kernels::{self as sgd, sgd_params, NO_NON_FINITE};
use densegpu::ops::sgd::SgdHyper;
use densegpu::reference::sgd as reference;

const STRICT: f64 = 1e-5;

#[track_caller]
fn assert_very_close(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    assert!(e < STRICT, "{what}: relative error {e:.3e} >= {STRICT:.0e}");
}

/// Several steps in a row with a fresh gradient each step and an lr change half-way through,
/// comparing params and buffer after every step. The new lr reaches the recorded step through
/// `set_params` (as a schedule does) or, with `set_params` false, by recording it again.
/// `separate` puts params, grads and buffer in three buffers; otherwise all share one.
fn check(len: usize, h0: SgdHyper, separate: bool, set_params: bool) {
    let g = gpu();
    let p0 = random(len, 1);
    let grads: Vec<Vec<f32>> = (0..4).map(|k| random(len, 10 + k)).collect();
    let use_buf = h0.momentum != 0.0;

    let mut sl = Slots::new();
    let (ps, gs, bs) = if separate {
        // Keeps a huge range within one binding's limit: only the three separate buffers hold it.
        (sl.input(&[]), sl.input(&[]), sl.input(&[]))
    } else {
        (sl.input(&p0), sl.input(&grads[0]), sl.input(&vec![0.0; len]))
    };
    let fs = sl.input(&[f32::from_bits(NO_NON_FINITE); 2]);
    let shared = sl.upload();
    let fv = sl.view(&shared, fs);
    let (pb, gb, bb);
    let (pv, gv, bv) = if separate {
        let upload = |v: &[f32]| {
            let b = block_on(g.storage_buffer("sgd test", len as u64 * 4)).unwrap();
            g.write_f32(&b, 0, v);
            b
        };
        (pb, gb, bb) = (upload(&p0), upload(&grads[0]), upload(&vec![0.0; len]));
        (View::new(&pb, 0), View::new(&gb, 0), View::new(&bb, 0))
    } else {
        (sl.view(&shared, ps), sl.view(&shared, gs), sl.view(&shared, bs))
    };
    let mut step = sgd::sgd_step(g, len as u32, pv, gv, use_buf.then_some(bv), fv, &h0);

    let (mut p, mut buf) = (p0.clone(), vec![0.0f32; len]);
    let mut h = h0;
    for (k, grad) in grads.iter().enumerate() {
        if k == 2 {
            h.lr *= 0.1;
            if set_params {
                step.set_params(g, &sgd_params(len as u32, pv.offset, gv.offset, bv.offset, fv.offset, &h));
            } else {
                step = sgd::sgd_step(g, len as u32, pv, gv, use_buf.then_some(bv), fv, &h);
            }
        }
        g.write_f32(gv.buffer.buffer, gv.buffer_offset(), grad);
        run(std::slice::from_ref(&step));
        reference::sgd_step(&mut p, grad, &mut buf, &h);
        let tag = format!("len {len} {h:?} separate {separate} step {k}");
        assert_very_close(
            &format!("params {tag}"),
            &block_on(g.read_f32(pv.buffer.buffer, pv.buffer_offset(), len)).unwrap(),
            &p,
        );
        let got_buf = block_on(g.read_f32(bv.buffer.buffer, bv.buffer_offset(), len)).unwrap();
        if use_buf {
            assert_very_close(&format!("momentum buffer {tag}"), &got_buf, &buf);
        } else {
            assert!(got_buf.iter().all(|&v| v == 0.0), "plain SGD touched the buffer ({tag})");
        }
        let got_grad = block_on(g.read_f32(gv.buffer.buffer, gv.buffer_offset(), len)).unwrap();
        assert_eq!(got_grad, *grad, "the gradient must be read only ({tag})");
        let flags: Vec<u32> = sl.read(&shared, fs).iter().map(|v| v.to_bits()).collect();
        assert_eq!(flags, [NO_NON_FINITE; 2], "a finite step raised a divergence flag ({tag})");
    }
    if !separate {
        sl.assert_guards_intact(&shared);
    }
}

#[test]
fn sgd_matches_reference_over_several_steps() {
    let configs = [
        SgdHyper::densenet_cifar(),
        SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: false },
        SgdHyper { lr: 0.1, momentum: 0.0, weight_decay: 1e-4, nesterov: false },
        SgdHyper { lr: 0.1, momentum: 0.5, weight_decay: 0.0, nesterov: true },
    ];
    for h in configs {
        for len in [1, 13, 1000] {
            for separate in [false, true] {
                check(len, h, separate, false);
            }
        }
    }
}

#[test]
fn sgd_learning_rate_changes_through_set_params() {
    check(1000, SgdHyper::densenet_cifar(), false, true);
    check(13, SgdHyper { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: false }, true, true);
}

#[test]
fn sgd_covers_a_densenet_sized_parameter_range() {
    // DenseNet-201's 20,013,928 parameters need more than 65,535 workgroups of 256.
    check(20_013_928, SgdHyper::densenet_cifar(), true, false);
}

/// Reads a flags slot back as words.
fn flag_words(sl: &Slots, buf: &wgpu::Buffer, slot: Slot) -> Vec<u32> {
    sl.read(buf, slot).iter().map(|v| v.to_bits()).collect()
}

/// Gradients with a NaN and infinities at known places, in a range at a non-zero offset: the
/// gradient flag holds the lowest bad index (relative to the range), and so does the update
/// flag, since each bad gradient makes its weight NaN or infinite too. Then finite gradients
/// and a learning rate that overflows some updates (|lr·g| = 6e38 > f32::MAX, 3.4e38) set only
/// the update flag, at the first weight that overflowed.
#[test]
fn sgd_flags_the_first_non_finite_gradient_and_update() {
    let g = gpu();
    let len = 3000;
    let w0 = random(len, 1);
    let mut grad = random(len, 2);
    for (i, v) in [(2999, f32::NAN), (1777, f32::INFINITY), (1234, f32::NAN), (2500, f32::NEG_INFINITY)] {
        grad[i] = v;
    }
    let overflowing: Vec<f32> = (0..len).map(|i| if i >= 2001 { 2.0 } else { 1e-30 }).collect();
    let mut sl = Slots::new();
    let _lead = sl.input(&[0.5; 77]);
    let (ps, gs, bs) = (sl.input(&w0), sl.input(&grad), sl.input(&vec![0.0; len]));
    let fs = sl.input(&[f32::from_bits(NO_NON_FINITE); 2]);
    let (ps2, gs2, fs2) = (sl.input(&w0), sl.input(&overflowing), sl.input(&[f32::from_bits(NO_NON_FINITE); 2]));
    let buf = sl.upload();
    let v = |s| sl.view(&buf, s);
    let huge = SgdHyper { lr: 3e38, momentum: 0.0, weight_decay: 0.0, nesterov: false };
    run(&[
        sgd::sgd_step(g, len as u32, v(ps), v(gs), Some(v(bs)), v(fs), &SgdHyper::densenet_cifar()),
        sgd::sgd_step(g, len as u32, v(ps2), v(gs2), None, v(fs2), &huge),
    ]);
    assert_eq!(flag_words(&sl, &buf, fs), [1234, 1234], "NaN and infinite gradients");
    assert_eq!(flag_words(&sl, &buf, fs2), [NO_NON_FINITE, 2001], "finite gradients, overflowing updates");
    sl.assert_guards_intact(&buf);
}

/// The running-statistics check: the lowest NaN or infinite index, at an offset, and a clear
/// flag over finite values (the largest finite f32 included).
#[test]
fn check_finite_flags_the_first_nan_or_infinity() {
    let g = gpu();
    let len = 700;
    let mut bad = random(len, 3);
    bad[650] = f32::NAN;
    bad[301] = f32::NEG_INFINITY;
    let mut good = random(len, 4);
    good[5] = f32::MAX;
    good[6] = -f32::MAX;
    good[7] = f32::MIN_POSITIVE / 2.0;
    let mut sl = Slots::new();
    let (bad_s, good_s) = (sl.input(&bad), sl.input(&good));
    let (f1, f2) = (sl.input(&[f32::from_bits(NO_NON_FINITE)]), sl.input(&[f32::from_bits(NO_NON_FINITE)]));
    let buf = sl.upload();
    let v = |s| sl.view(&buf, s);
    run(&[sgd::check_finite(g, len as u32, v(bad_s), v(f1)), sgd::check_finite(g, len as u32, v(good_s), v(f2))]);
    assert_eq!(flag_words(&sl, &buf, f1), [301]);
    assert_eq!(flag_words(&sl, &buf, f2), [NO_NON_FINITE]);
    sl.assert_guards_intact(&buf);
}

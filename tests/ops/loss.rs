use crate::common::*;
use densegpu::ops::loss::{kernels as loss, LossShape};
use densegpu::reference::loss as reference;
use rand::{Rng, SeedableRng};

fn labels(classes: u32, n: u32, seed: u64) -> Vec<f32> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..classes) as f32).collect()
}

struct Run {
    loss: f32,
    correct: f32,
    dlogits: Option<Vec<f32>>,
}

/// One launch with every tensor packed into a single buffer. `prefill` gives the (loss,
/// correct) already in the outputs when accumulating; otherwise they start poisoned.
/// With `rows`, the workgroup family's two-pass form through a NaN-poisoned scratch.
fn launch(s: LossShape, logits: &[f32], labels: &[f32], grad: bool, prefill: Option<(f32, f32)>, rows: bool) -> Run {
    let mut sl = Slots::new();
    let ls = sl.input(logits);
    let ys = sl.input(labels);
    let ds = grad.then(|| sl.output(logits.len()));
    let stats = match prefill {
        Some((l, c)) => sl.input(&[l, c]),
        None => sl.output(2),
    };
    let scratch = sl.output((loss::ROW_SCRATCH_WORDS * s.n) as usize);
    let buf = sl.upload();
    let v = |slot| sl.view(&buf, slot);
    if rows {
        run(&loss::cross_entropy_rows(gpu(), s, v(ls), v(ys), ds.map(v), v(stats), v(scratch), prefill.is_some()));
    } else {
        run(&[loss::cross_entropy(gpu(), s, v(ls), v(ys), ds.map(v), v(stats), prefill.is_some())]);
    }
    sl.assert_guards_intact(&buf);
    let [loss, correct] = sl.read(&buf, stats)[..] else { unreachable!() };
    Run { loss, correct, dlogits: ds.map(|d| sl.read(&buf, d)) }
}

fn check(classes: u32, n: u32, logits: &[f32]) {
    check_form(classes, n, logits, false);
    check_form(classes, n, logits, true);
}

fn check_form(classes: u32, n: u32, logits: &[f32], rows: bool) {
    let s = LossShape::new(classes, n);
    let y = labels(classes, n, 11);
    let want = reference::cross_entropy(classes as usize, n as usize, logits, &y);
    let tag = format!("K={classes} N={n} rows={rows}");
    let launch = |s, logits, y, grad, prefill| launch(s, logits, y, grad, prefill, rows);

    let got = launch(s, logits, &y, true, None);
    assert_close(&format!("loss {tag}"), &[got.loss], &[want.loss]);
    assert_eq!(got.correct, want.correct, "correct count {tag}");
    assert_close(&format!("dlogits {tag}"), got.dlogits.as_ref().unwrap(), &want.dlogits);

    let eval = launch(s, logits, &y, false, None);
    assert_close(&format!("eval loss {tag}"), &[eval.loss], &[want.loss]);
    assert_eq!(eval.correct, want.correct, "eval correct count {tag}");

    let summed = launch(s, logits, &y, false, Some((1.5, 7.0)));
    assert_close(&format!("accumulated loss {tag}"), &[summed.loss], &[want.loss + 1.5]);
    assert_eq!(summed.correct, want.correct + 7.0, "accumulated correct count {tag}");
}

#[test]
fn cross_entropy_matches_reference() {
    for (classes, n) in [(3, 1), (13, 5), (10, 64), (1000, 64), (10, 300), (1, 3)] {
        // Scaled up so softmax is far from uniform and many predictions are confident.
        let logits: Vec<f32> = random((classes * n) as usize, 3).iter().map(|v| v * 6.0).collect();
        check(classes, n, &logits);
    }
}

#[test]
fn cross_entropy_is_stable_for_large_logits_and_breaks_ties_low() {
    // Offsets of ±80 would overflow exp() in f32 without the max subtracted.
    let (classes, n) = (10, 5);
    let big: Vec<f32> = random(classes * n, 4).iter().map(|v| v * 80.0).collect();
    check(classes as u32, n as u32, &big);
    // Three levels only: most samples have tied maxima, and argmax must take the lowest index.
    let (classes, n) = (4, 64);
    let tied: Vec<f32> = random(classes * n, 5).iter().map(|v| (v * 1.5).round()).collect();
    check(classes as u32, n as u32, &tied);
}

#[test]
fn cross_entropy_with_invalid_labels_gives_nan_not_a_crash() {
    let (classes, n) = (10u32, 5u32);
    let logits = random((classes * n) as usize, 6);
    for (bad, rows) in [-1.0, 10.0, 1e9, f32::NAN, f32::INFINITY].into_iter().flat_map(|b| [(b, false), (b, true)]) {
        let mut y = labels(classes, n, 12);
        y[2] = bad;
        let got = launch(LossShape::new(classes, n), &logits, &y, true, None, rows);
        assert!(got.loss.is_nan(), "label {bad}: loss {}", got.loss);
        let want = reference::cross_entropy(classes as usize, n as usize, &logits, &y);
        assert!(want.loss.is_nan());
        // The correct count ignores the bad sample; the other columns of dlogits are intact.
        assert_eq!(got.correct, want.correct, "label {bad}");
        let d = got.dlogits.unwrap();
        for k in 0..classes as usize {
            for s in 0..n as usize {
                let (g, w) = (d[k * n as usize + s], want.dlogits[k * n as usize + s]);
                if s == 2 {
                    assert!(g.is_nan(), "label {bad}: dlogits[{k}, 2] = {g}");
                } else {
                    assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "label {bad}: dlogits[{k}, {s}] {g} vs {w}");
                }
            }
        }
    }
}

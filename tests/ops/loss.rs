use crate::common::*;
use densegpu::ops::loss::{kernels as loss, LossShape};
use densegpu::reference::loss as reference;
use densegpu::selftest::{compare_within, gamma, UNIT_ROUNDOFF as U};
use rand::{Rng, SeedableRng};

/// One ULP of an f32 result is at most 2u of its magnitude.
const ULP: f64 = 2.0 * U;
/// The absolute error a result may take on top of its relative one: WGSL lets an
/// implementation flush subnormal results to zero (f32's smallest normal, per rounding).
const FLUSH: f64 = f32::MIN_POSITIVE as f64;

/// `(1 + a)(1 + b) − 1`: two relative errors in a row.
fn compose(a: f64, b: f64) -> f64 {
    a + b + a * b
}

/// Per-element error bounds of the loss kernels (both forms), derived from their order of
/// operations and WGSL's accuracy for the built-ins they call (WGSL spec, "Floating Point
/// Accuracy": `exp(x)` within 3 + 2|x| ULP, `log(x)` within 3 ULP, or 2^-21 absolute for x in
/// [0.5, 2], `x / y` within 2.5 ULP; + − × correctly rounded, |error| ≤ u·|result|). Per image
/// s with valid label y and row maximum m:
/// - e_j = exp(x_j − m): the subtraction's rounding moves exp's argument by u|t|, then exp's own
///   error: E_j = u|t_j| ∘ 2u(3 + 2|t_j|), with a ∘ b = a + b + ab;
/// - z = Σ e_j over at most K + 6 roundings (one-pass: a serial loop; rows: ⌈K/64⌉ per lane,
///   then a 64-lane tree): rel_z = max E_j ∘ γ_{K+6}, all terms positive;
/// - log z: rel_z ∘ rel_z carried, plus log's own error;
/// - loss_s = (log z + m) − x_y: two roundings, γ_2 on |log z + m| and |loss_s|;
/// - the batch mean: Σ loss_s over at most N + 8 roundings (⌈N/256⌉ per lane, then an 8-level
///   tree), divided by f32(N) (2.5 ULP);
/// - dlogits_j = (e_j / z − onehot) · (1 / f32(N)): the quotient's error E_j ∘ rel_z ∘ 2.5 ULP,
///   the subtraction's u, the reciprocal's 2.5 ULP and the product's u.
///
/// Each bound adds the reference's own rounding to f32 (u·|want|) and `FLUSH` per operation.
/// Returns (the mean loss's bound, each dlogits element's bound).
fn loss_bounds(classes: usize, n: usize, logits: &[f32], labels: &[f32]) -> (f64, Vec<f64>) {
    let at = |k: usize, s: usize| logits[k * n + s] as f64;
    let quotient = 5.0 * U; // 2.5 ULP
    let (mut sum_err, mut sum_abs) = (0.0, 0.0);
    let mut d_bound = vec![0.0; classes * n];
    for s in 0..n {
        let m = (0..classes).map(|k| at(k, s)).fold(f64::NEG_INFINITY, f64::max);
        let t: Vec<f64> = (0..classes).map(|k| at(k, s) - m).collect();
        let rel_e: Vec<f64> = t.iter().map(|t| compose(U * t.abs(), ULP * (3.0 + 2.0 * t.abs()))).collect();
        let z: f64 = t.iter().map(|t| t.exp()).sum();
        let rel_z = compose(rel_e.iter().cloned().fold(0.0, f64::max), gamma(classes as u64 + 6));
        let log_z = z.ln();
        let own_log = if (0.5..=2.0).contains(&z) { 2f64.powi(-21) } else { 3.0 * ULP * log_z.abs() };
        let err_log = compose(rel_z, rel_z) + own_log + FLUSH;
        let y = labels[s] as usize;
        let loss = log_z + m - at(y, s);
        sum_err += err_log * (1.0 + gamma(2)) + gamma(2) * ((log_z + m).abs() + loss.abs()) + 2.0 * FLUSH;
        sum_abs += loss.abs();
        let inv_n = compose(quotient, U); // the reciprocal, then the product
        for k in 0..classes {
            let p = t[k].exp() / z;
            let q = p - (k == y) as u8 as f64;
            let err_q = p * compose(compose(rel_e[k], rel_z), quotient) + U * q.abs() + 2.0 * FLUSH;
            let d = q / n as f64;
            d_bound[k * n + s] = err_q / n as f64 * (1.0 + inv_n) + inv_n * d.abs() + U * d.abs() + FLUSH;
        }
    }
    let depth = gamma(n as u64 + 8);
    let mean = sum_abs / n as f64;
    let loss_bound =
        (sum_err * (1.0 + depth) + depth * sum_abs) / n as f64 * (1.0 + quotient) + quotient * mean + U * mean + FLUSH;
    (loss_bound, d_bound)
}

#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    let check = compare_within(what, "", got, want, bound);
    assert!(check.passed, "{what}: {}", check.detail.unwrap_or_default());
}

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

    let (loss_bound, d_bound) = loss_bounds(classes as usize, n as usize, logits, &y);

    let got = launch(s, logits, &y, true, None);
    assert_within(&format!("loss {tag}"), &[got.loss], &[want.loss], &[loss_bound]);
    assert_eq!(got.correct, want.correct, "correct count {tag}");
    assert_within(&format!("dlogits {tag}"), got.dlogits.as_ref().unwrap(), &want.dlogits, &d_bound);

    let eval = launch(s, logits, &y, false, None);
    assert_within(&format!("eval loss {tag}"), &[eval.loss], &[want.loss], &[loss_bound]);
    assert_eq!(eval.correct, want.correct, "eval correct count {tag}");

    // Added onto what was there: one more rounding.
    let summed = launch(s, logits, &y, false, Some((1.5, 7.0)));
    let sum_bound = loss_bound + U * (want.loss as f64 + 1.5).abs();
    assert_within(&format!("accumulated loss {tag}"), &[summed.loss], &[want.loss + 1.5], &[sum_bound]);
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

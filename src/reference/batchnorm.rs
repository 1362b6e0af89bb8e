//! Batch norm with an optional fused ReLU, PyTorch semantics, in f64. Tensors are laid out as
//! the kernels see them: `x` is (C, M) channel-major with M = N·H·W values per channel, and
//! the small tensors are [first(C), second(C)]: stats = [mean, invstd], affine = [gamma, beta],
//! grad_affine = [dgamma, dbeta], running = [running_mean, running_var].

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// Per channel: the mean and the biased variance (two passes).
fn moments(c: usize, m: usize, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), c * m);
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let xs = &x[ch * m..(ch + 1) * m];
        mean[ch] = xs.iter().sum::<f64>() / m as f64;
        var[ch] = xs.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m as f64;
    }
    (mean, var)
}

fn stats_of(c: usize, m: usize, x: &[f64], eps: f64) -> Vec<f64> {
    let (mean, var) = moments(c, m, x);
    mean.iter().copied().chain(var.iter().map(|v| 1.0 / (v + eps).sqrt())).collect()
}

fn apply_f64(c: usize, m: usize, x: &[f64], stats: &[f64], affine: &[f64], relu: bool) -> Vec<f64> {
    let mut y = vec![0.0; c * m];
    for ch in 0..c {
        for i in ch * m..(ch + 1) * m {
            let v = (x[i] - stats[ch]) * stats[c + ch] * affine[ch] + affine[c + ch];
            // Not f64::max, which drops a NaN; PyTorch's relu keeps it.
            y[i] = if relu && v <= 0.0 { 0.0 } else { v };
        }
    }
    y
}

/// Training-mode backward: returns (grad_affine, dx).
fn backward_f64(
    c: usize,
    m: usize,
    x: &[f64],
    dy: &[f64],
    stats: &[f64],
    affine: &[f64],
    relu: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut grad_affine = vec![0.0; 2 * c];
    let mut dx = vec![0.0; c * m];
    for ch in 0..c {
        let (mean, invstd, gamma, beta) = (stats[ch], stats[c + ch], affine[ch], affine[c + ch]);
        let range = ch * m..(ch + 1) * m;
        let xhat: Vec<f64> = x[range.clone()].iter().map(|v| (v - mean) * invstd).collect();
        let g: Vec<f64> = dy[range.clone()]
            .iter()
            .zip(&xhat)
            .map(|(&d, &h)| if relu && gamma * h + beta <= 0.0 { 0.0 } else { d })
            .collect();
        let dbeta: f64 = g.iter().sum();
        let dgamma: f64 = g.iter().zip(&xhat).map(|(a, b)| a * b).sum();
        grad_affine[ch] = dgamma;
        grad_affine[c + ch] = dbeta;
        for (k, i) in range.enumerate() {
            dx[i] = gamma * invstd / m as f64 * (m as f64 * g[k] - dbeta - xhat[k] * dgamma);
        }
    }
    (grad_affine, dx)
}

/// Training-mode statistics and PyTorch's running update. Returns (stats, new running), with
/// stats = [mean, 1/sqrt(biased var + eps)] and running_var updated with the unbiased variance.
pub fn train_stats(c: usize, m: usize, x: &[f32], running: &[f32], momentum: f32, eps: f32) -> (Vec<f32>, Vec<f32>) {
    assert!(m >= 2);
    let (mean, var) = moments(c, m, &widen(x));
    let stats = stats_of(c, m, &widen(x), eps as f64);
    let mo = momentum as f64;
    let mut new_running = widen(running);
    for ch in 0..c {
        new_running[ch] = (1.0 - mo) * new_running[ch] + mo * mean[ch];
        new_running[c + ch] = (1.0 - mo) * new_running[c + ch] + mo * var[ch] * m as f64 / (m as f64 - 1.0);
    }
    (narrow(&stats), narrow(&new_running))
}

/// Evaluation-mode statistics: [running_mean, 1/sqrt(running_var + eps)].
pub fn eval_stats(c: usize, running: &[f32], eps: f32) -> Vec<f32> {
    let r = widen(running);
    let invstd = r[c..2 * c].iter().map(|v| 1.0 / (v + eps as f64).sqrt());
    narrow(&r[..c].iter().copied().chain(invstd).collect::<Vec<_>>())
}

/// y = gamma·(x − mean)·invstd + beta, then ReLU if `relu`.
pub fn apply(c: usize, m: usize, x: &[f32], stats: &[f32], affine: &[f32], relu: bool) -> Vec<f32> {
    narrow(&apply_f64(c, m, &widen(x), &widen(stats), &widen(affine), relu))
}

/// [dgamma, dbeta] of the training-mode batch norm (+ ReLU) whose output gradient is dy.
pub fn backward_affine(
    c: usize,
    m: usize,
    x: &[f32],
    dy: &[f32],
    stats: &[f32],
    affine: &[f32],
    relu: bool,
) -> Vec<f32> {
    narrow(&backward_f64(c, m, &widen(x), &widen(dy), &widen(stats), &widen(affine), relu).0)
}

/// dx of the training-mode batch norm (+ ReLU) whose output gradient is dy.
pub fn backward_input(
    c: usize,
    m: usize,
    x: &[f32],
    dy: &[f32],
    stats: &[f32],
    affine: &[f32],
    relu: bool,
) -> Vec<f32> {
    narrow(&backward_f64(c, m, &widen(x), &widen(dy), &widen(stats), &widen(affine), relu).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-5;

    /// A deterministic spread of values in [-1, 1] with no exact ties (a tiny LCG).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// The loss Σ w·y of the training-mode forward, where the statistics depend on x.
    fn loss(c: usize, m: usize, x: &[f64], affine: &[f64], w: &[f64], relu: bool) -> f64 {
        let y = apply_f64(c, m, x, &stats_of(c, m, x, EPS), affine, relu);
        y.iter().zip(w).map(|(a, b)| a * b).sum()
    }

    fn check_gradients(relu: bool) {
        let (c, m) = (3, 10);
        let x = values(c * m, 1);
        // Shifted betas keep some channels mostly active and others mostly clipped.
        let affine: Vec<f64> =
            values(2 * c, 2).iter().enumerate().map(|(i, v)| if i < c { v + 1.5 } else { *v }).collect();
        let w = values(c * m, 3);
        let (grad_affine, dx) = backward_f64(c, m, &x, &w, &stats_of(c, m, &x, EPS), &affine, relu);
        let h = 1e-6;
        let numeric = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        for i in 0..c * m {
            let fd = numeric(&|d| {
                let mut xp = x.clone();
                xp[i] += d;
                loss(c, m, &xp, &affine, &w, relu)
            });
            assert!((fd - dx[i]).abs() < 1e-6 * (1.0 + fd.abs()), "dx[{i}]: numeric {fd}, analytic {}", dx[i]);
        }
        for j in 0..2 * c {
            let fd = numeric(&|d| {
                let mut ap = affine.clone();
                ap[j] += d;
                loss(c, m, &x, &ap, &w, relu)
            });
            let an = grad_affine[j];
            assert!((fd - an).abs() < 1e-6 * (1.0 + fd.abs()), "grad_affine[{j}]: numeric {fd}, analytic {an}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        check_gradients(false);
    }

    #[test]
    fn backward_with_relu_matches_finite_differences() {
        check_gradients(true);
    }

    #[test]
    fn relu_case_clips_something() {
        // Guards the test above against a ReLU that happens to be active everywhere.
        let (c, m) = (3, 10);
        let x = values(c * m, 1);
        let affine: Vec<f64> =
            values(2 * c, 2).iter().enumerate().map(|(i, v)| if i < c { v + 1.5 } else { *v }).collect();
        let y = apply_f64(c, m, &x, &stats_of(c, m, &x, EPS), &affine, true);
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!(zeros > 0 && zeros < c * m, "{zeros} of {} clipped", c * m);
    }

    #[test]
    fn running_update_follows_pytorch() {
        // One channel of [1, 2, 3, 4]: mean 2.5, biased var 1.25, unbiased 5/3.
        let (stats, running) = train_stats(1, 4, &[1.0, 2.0, 3.0, 4.0], &[0.5, 2.0], 0.1, 1e-5);
        assert!((stats[0] - 2.5).abs() < 1e-7);
        assert!((stats[1] as f64 - 1.0 / (1.25f64 + 1e-5).sqrt()).abs() < 1e-6);
        assert!((running[0] as f64 - (0.9 * 0.5 + 0.1 * 2.5)).abs() < 1e-7);
        assert!((running[1] as f64 - (0.9 * 2.0 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
    }
}

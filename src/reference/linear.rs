//! Linear layer reference: x (in, N), w (out, in), b (out), y (out, N).

use crate::ops::linear::LinearShape;

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dims(s: LinearShape) -> (usize, usize, usize) {
    (s.n as usize, s.in_features as usize, s.out_features as usize)
}

pub fn forward64(s: LinearShape, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let (n, fin, fout) = dims(s);
    let mut y = vec![0.0; fout * n];
    for o in 0..fout {
        for j in 0..n {
            y[o * n + j] = b[o] + (0..fin).map(|k| w[o * fin + k] * x[k * n + j]).sum::<f64>();
        }
    }
    y
}

pub fn backward_input64(s: LinearShape, w: &[f64], dy: &[f64]) -> Vec<f64> {
    let (n, fin, fout) = dims(s);
    let mut dx = vec![0.0; fin * n];
    for k in 0..fin {
        for j in 0..n {
            dx[k * n + j] = (0..fout).map(|o| w[o * fin + k] * dy[o * n + j]).sum();
        }
    }
    dx
}

pub fn backward_weight64(s: LinearShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let (n, fin, fout) = dims(s);
    let mut dw = vec![0.0; fout * fin];
    for o in 0..fout {
        for k in 0..fin {
            dw[o * fin + k] = (0..n).map(|j| dy[o * n + j] * x[k * n + j]).sum();
        }
    }
    dw
}

pub fn backward_bias64(s: LinearShape, dy: &[f64]) -> Vec<f64> {
    let n = s.n as usize;
    dy.chunks(n).map(|row| row.iter().sum()).collect()
}

pub fn forward(s: LinearShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    to32(&forward64(s, &to64(x), &to64(w), &to64(b)))
}

pub fn backward_input(s: LinearShape, w: &[f32], dy: &[f32]) -> Vec<f32> {
    to32(&backward_input64(s, &to64(w), &to64(dy)))
}

pub fn backward_weight(s: LinearShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    to32(&backward_weight64(s, &to64(x), &to64(dy)))
}

pub fn backward_bias(s: LinearShape, dy: &[f32]) -> Vec<f32> {
    to32(&backward_bias64(s, &to64(dy)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f64> {
        (0..len).map(|i| ((i as f64 + 1.0) * 0.754877 + seed as f64 * 0.569840).fract() * 2.0 - 1.0).collect()
    }

    /// Central differences of Σ dy ⊙ forward(x, w, b) with respect to every element of `which`
    /// (0 = x, 1 = w, 2 = b), against the analytic gradient.
    fn check(s: LinearShape, which: usize, analytic: &[f64], x: &[f64], w: &[f64], b: &[f64], dy: &[f64]) {
        let h = 1e-6;
        let dot =
            |args: [&[f64]; 3]| forward64(s, args[0], args[1], args[2]).iter().zip(dy).map(|(a, g)| a * g).sum::<f64>();
        let base = [x, w, b];
        for i in 0..base[which].len() {
            let (mut plus, mut minus) = (base[which].to_vec(), base[which].to_vec());
            plus[i] += h;
            minus[i] -= h;
            let (mut ap, mut am) = (base, base);
            ap[which] = &plus;
            am[which] = &minus;
            let numeric = (dot(ap) - dot(am)) / (2.0 * h);
            assert!((numeric - analytic[i]).abs() < 1e-7, "arg {which} element {i}: {numeric} vs {}", analytic[i]);
        }
    }

    #[test]
    fn linear_backwards_match_finite_differences() {
        for s in [LinearShape::new(3, 4, 5), LinearShape::new(1, 7, 2), LinearShape::new(5, 1, 3)] {
            let (n, fin, fout) = dims(s);
            let (x, w, b, dy) = (values(fin * n, 1), values(fout * fin, 2), values(fout, 3), values(fout * n, 4));
            check(s, 0, &backward_input64(s, &w, &dy), &x, &w, &b, &dy);
            check(s, 1, &backward_weight64(s, &x, &dy), &x, &w, &b, &dy);
            check(s, 2, &backward_bias64(s, &dy), &x, &w, &b, &dy);
        }
    }
}

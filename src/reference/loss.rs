//! Softmax cross-entropy reference on class-major logits (K, N) with f32 class-index labels.

#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Mean over the batch of −log softmax(logits)[label]; NaN if any label is invalid.
    pub loss: f32,
    /// (softmax − onehot) / N, (K, N); an invalid label's column is NaN.
    pub dlogits: Vec<f32>,
    /// Samples whose argmax (lowest index on ties) equals the label.
    pub correct: f32,
}

/// The label's class, or `None` when it is NaN or outside [0, K) (the GPU's rule).
fn class_of(label: f64, classes: usize) -> Option<usize> {
    (label >= 0.0 && label < classes as f64).then_some(label as usize)
}

/// The mean loss, its gradient, and the correct count, in f64.
pub fn cross_entropy64(classes: usize, n: usize, logits: &[f64], labels: &[f64]) -> (f64, Vec<f64>, usize) {
    let mut total = 0.0;
    let mut correct = 0;
    let mut d = vec![0.0; classes * n];
    for s in 0..n {
        let at = |k: usize| logits[k * n + s];
        let mut arg = 0;
        for k in 1..classes {
            if at(k) > at(arg) {
                arg = k;
            }
        }
        let m = at(arg);
        let z: f64 = (0..classes).map(|k| (at(k) - m).exp()).sum();
        match class_of(labels[s], classes) {
            Some(label) => {
                total += z.ln() + m - at(label);
                correct += (arg == label) as usize;
                for k in 0..classes {
                    d[k * n + s] = ((at(k) - m).exp() / z - (k == label) as u8 as f64) / n as f64;
                }
            }
            None => {
                total = f64::NAN;
                (0..classes).for_each(|k| d[k * n + s] = f64::NAN);
            }
        }
    }
    (total / n as f64, d, correct)
}

pub fn cross_entropy(classes: usize, n: usize, logits: &[f32], labels: &[f32]) -> CrossEntropy {
    let logits: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let labels: Vec<f64> = labels.iter().map(|&v| v as f64).collect();
    let (loss, d, correct) = cross_entropy64(classes, n, &logits, &labels);
    CrossEntropy { loss: loss as f32, dlogits: d.iter().map(|&v| v as f32).collect(), correct: correct as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        for (classes, n) in [(3, 1), (4, 5), (10, 2)] {
            let logits: Vec<f64> =
                (0..classes * n).map(|i| ((i as f64 + 1.0) * 0.618034).fract() * 6.0 - 3.0).collect();
            let labels: Vec<f64> = (0..n).map(|s| ((s * 7 + 2) % classes) as f64).collect();
            let (_, d, _) = cross_entropy64(classes, n, &logits, &labels);
            let h = 1e-6;
            for i in 0..logits.len() {
                let (mut plus, mut minus) = (logits.clone(), logits.clone());
                plus[i] += h;
                minus[i] -= h;
                let numeric = (cross_entropy64(classes, n, &plus, &labels).0
                    - cross_entropy64(classes, n, &minus, &labels).0)
                    / (2.0 * h);
                assert!((numeric - d[i]).abs() < 1e-8, "({classes}, {n}) element {i}: {numeric} vs {}", d[i]);
            }
        }
    }

    #[test]
    fn cross_entropy_hand_example() {
        // Two classes, one sample, logits (0, ln 3): softmax (1/4, 3/4).
        let (loss, d, correct) = cross_entropy64(2, 1, &[0.0, 3f64.ln()], &[0.0]);
        assert!((loss - 4f64.ln()).abs() < 1e-12);
        assert!((d[0] + 0.75).abs() < 1e-12 && (d[1] - 0.75).abs() < 1e-12);
        assert_eq!(correct, 0);
        // Ties go to the lowest index, as torch.argmax does.
        assert_eq!(cross_entropy64(3, 1, &[1.0, 1.0, 0.0], &[0.0]).2, 1);
        assert_eq!(cross_entropy64(3, 1, &[1.0, 1.0, 0.0], &[1.0]).2, 0);
        // Huge logits stay finite: the max is subtracted first.
        assert!(cross_entropy64(2, 1, &[1000.0, 0.0], &[1.0]).0.is_finite());
    }
}

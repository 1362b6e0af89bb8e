//! torch.optim.SGD reference (dampening 0). State lives in f32, as on the GPU; each step is
//! computed in f64 and rounded once when stored.

use crate::ops::sgd::SgdHyper;

/// One step over every element: updates `param` and (when momentum ≠ 0) `momentum_buf` in
/// place. A zeroed buffer reproduces PyTorch's first step, where buf = g.
pub fn sgd_step(param: &mut [f32], grad: &[f32], momentum_buf: &mut [f32], h: &SgdHyper) {
    let (lr, momentum, wd) = (h.lr as f64, h.momentum as f64, h.weight_decay as f64);
    for i in 0..param.len() {
        let w = param[i] as f64;
        let mut g = grad[i] as f64 + wd * w;
        if momentum != 0.0 {
            let b = momentum * momentum_buf[i] as f64 + g;
            momentum_buf[i] = b as f32;
            g = if h.nesterov { g + momentum * b } else { b };
        }
        param[i] = (w - lr * g) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// p = 1, g = 0.5 on both steps, lr 0.1, momentum 0.9, weight decay 0.01, worked by hand
    /// from PyTorch's update rule.
    #[test]
    fn two_steps_match_pytorch_by_hand() {
        let cases = [
            // Step 1: g = 0.51, buf = 0.51. Step 2: g = 0.50949, buf = 0.96849.
            (0.9, false, [0.949, 0.852151]),
            // Nesterov: step 1 g = 0.51 + 0.9·0.51 = 0.969; step 2 g = 0.509031 + 0.9·0.968031.
            (0.9, true, [0.9031, 0.76507411]),
            // Plain SGD: p − 0.1·(0.5 + 0.01·p) twice.
            (0.0, false, [0.949, 0.898051]),
        ];
        for (momentum, nesterov, want) in cases {
            let h = SgdHyper { lr: 0.1, momentum, weight_decay: 0.01, nesterov };
            let (mut p, mut buf) = ([1.0f32], [0.0f32]);
            for want in want {
                sgd_step(&mut p, &[0.5], &mut buf, &h);
                assert!(
                    (p[0] as f64 - want).abs() < 1e-6,
                    "momentum {momentum} nesterov {nesterov}: {} vs {want}",
                    p[0]
                );
            }
            if momentum == 0.0 {
                assert_eq!(buf, [0.0], "plain SGD must not touch the buffer");
            }
        }
    }
}

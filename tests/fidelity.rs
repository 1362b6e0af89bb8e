//! Gradient fidelity at a realistic size: the first training step of DenseNet-BC-16 (k=8) at
//! batch 32 on 32x32 images that look like real ones (the built-in synthetic set, normalised as
//! CIFAR-10 is), with batch norms as a trained network has them, in every memory mode, against
//! the CPU reference (f64 within each op). Targets (issue #11): at most 1e-6 relative error at
//! the median tensor and 3e-4 at the worst.
//!
//! What this can and cannot show: every kernel stays within its f32 rounding bound
//! (tests/ops/realistic.rs), yet a step's gradients can still differ from f64 by 1e-4 to 1e-3
//! when one pre-activation lies within f32 rounding (about 1e-7) of a ReLU's kink and the two
//! evaluations take different sides of it. At initialisation the batch-norm β gradients cancel
//! by factors of 100 to 3,000, so that one element moves whole tensors. PyTorch float32 against
//! float64 shows it on about one batch in three at this size, and so does densegpu (the
//! comparison is in BENCHMARKS.md, with `cargo run --release --example fidelity`). This batch
//! has no such element on lavapipe, so the step measures the kernels' precision alone; if a
//! kernel change makes it fail by a wide margin in a single tensor, check for a flipped mask
//! with the example before suspecting precision.

use densegpu::block_on;
use densegpu::densenet::MemoryMode;
use densegpu::selftest::{realistic_session, step_fidelity, STEP_MEDIAN_TARGET, STEP_WORST_TARGET};

mod support;
use support::gpu;

#[test]
fn first_step_gradients_match_the_reference_at_a_realistic_size_in_every_mode() {
    let mut first: Option<Vec<Vec<f32>>> = None;
    for mode in MemoryMode::ALL {
        let (mut session, images, labels) = block_on(realistic_session(gpu(), mode, 3)).unwrap();
        let f = block_on(step_fidelity(&mut session, &images, &labels)).unwrap();
        let (median, worst) = (f.median(), f.worst());
        println!(
            "{mode}: {} tensors, median {median:.2e}, worst {:.2e} ({})",
            f.tensors.len(),
            worst.rel_err,
            worst.name
        );
        assert!(
            (f.loss - f.reference_loss).abs() <= 1e-6 * f.reference_loss,
            "loss {} vs {}",
            f.loss,
            f.reference_loss
        );
        assert!(median <= STEP_MEDIAN_TARGET, "{mode}: median relative error {median:.2e} > {STEP_MEDIAN_TARGET:.0e}");
        assert!(
            worst.rel_err <= STEP_WORST_TARGET,
            "{mode}: {} differs by {:.2e} > {STEP_WORST_TARGET:.0e}",
            worst.name,
            worst.rel_err
        );
        // The modes train bit-identically, so their gradients are the same bits.
        let grads: Vec<Vec<f32>> = f.tensors.iter().map(|t| t.device.clone()).collect();
        match &first {
            None => first = Some(grads),
            Some(naive) => assert!(
                naive.iter().flatten().zip(grads.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{mode}: gradients differ from naive's"
            ),
        }
    }
}

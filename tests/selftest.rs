//! The in-library self-test (the one the browser build runs) on the native adapter: every
//! check passes, every op family is covered, and the comparison really catches wrong results.

use densegpu::selftest::{self, Check, TOLERANCE};
use densegpu::{block_on, Gpu};

/// One check per kernel and direction the executor launches; the test fails if the
/// self-test stops covering any of them.
const REQUIRED: &[&str] = &[
    "training_step/gradients (median tensor)",
    "training_step/gradients (worst tensor)",
    "realistic-conv1x1/forward",
    "realistic-conv1x1/backward_input",
    "realistic-conv1x1/backward_weight",
    "realistic-conv3x3/forward",
    "realistic-conv3x3/backward_input",
    "realistic-conv3x3/backward_weight",
    "realistic-batchnorm/backward_affine",
    "conv1x1/forward",
    "conv1x1/backward_input",
    "conv1x1/backward_input (accumulate)",
    "conv1x1/backward_weight",
    "conv3x3/forward",
    "conv3x3/backward_input",
    "conv3x3/backward_input (accumulate)",
    "conv3x3/backward_weight",
    // The workgroup family, which a GPU runs: the same directions.
    "realistic-conv1x1-workgroup/forward",
    "realistic-conv1x1-workgroup/backward_weight",
    "realistic-conv3x3-workgroup/backward_input",
    "conv1x1-workgroup/forward",
    "conv1x1-workgroup/backward_input (accumulate)",
    "conv3x3-workgroup/backward_weight",
    "conv7x7s2-workgroup/forward",
    "fused-workgroup/conv1x1_bnrelu_forward",
    "fused-workgroup/conv1x1_bnrelu_weight_grad",
    "batchnorm/train_stats",
    "batchnorm/running_update",
    "batchnorm/apply",
    "batchnorm/backward_affine",
    "batchnorm/backward_input",
    "batchnorm/backward_input (accumulate)",
    "relu/forward",
    "relu/backward",
    "pool/avg_forward",
    "pool/avg_backward",
    "pool/global_avg_forward",
    "pool/global_avg_backward",
    "linear/forward",
    "linear/backward_input",
    "linear/backward_weight",
    "linear/backward_bias",
    "cross_entropy/loss",
    "cross_entropy/dlogits",
    "sgd/params",
    "sgd/momentum",
];

#[test]
fn every_kernel_matches_the_reference_on_this_device() {
    let gpu =
        std::sync::Arc::new(block_on(Gpu::new()).unwrap_or_else(|e| panic!("this test needs a GPU adapter: {e}")));
    let checks = block_on(selftest::run(&gpu));
    for c in &checks {
        println!("{:<8} {:<44} {:>10.3e}  {}", if c.passed { "ok" } else { "FAILED" }, c.name, c.rel_err, c.shape);
    }
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.passed).collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed on {}:\n{failed:#?}",
        failed.len(),
        checks.len(),
        gpu.describe()
    );
    assert!(selftest::all_passed(&checks));

    let missing: Vec<&&str> = REQUIRED.iter().filter(|name| !checks.iter().any(|c| c.name == **name)).collect();
    assert!(missing.is_empty(), "the self-test no longer checks {missing:?}");
    let mut names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), checks.len(), "two checks share a name");
    // The report is what the browser build shows; it must serialise.
    serde_json::to_string(&checks).expect("checks serialise to JSON");
}

#[test]
fn compare_catches_wrong_and_unwritten_results() {
    let want: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() + 1.5).collect();
    let exact = selftest::compare("exact", "50", &want, &want);
    assert!(exact.passed && exact.rel_err == 0.0 && exact.detail.is_none(), "{exact:?}");

    // Float rounding must not fail a check ...
    let rounded: Vec<f32> = want.iter().map(|v| v * (1.0 + 1e-6)).collect();
    assert!(selftest::compare("rounded", "50", &rounded, &want).passed);

    // ... but one wrong element must.
    let mut wrong = want.clone();
    wrong[17] += 0.05;
    let c = selftest::compare("wrong", "50", &wrong, &want);
    assert!(!c.passed && c.rel_err >= TOLERANCE, "{c:?}");
    assert!(c.detail.as_deref().unwrap().contains("element 17"), "{c:?}");

    // An element the kernel never wrote keeps its NaN poison; an overflow is infinite.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut unwritten = want.clone();
        unwritten[3] = bad;
        let c = selftest::compare("unwritten", "50", &unwritten, &want);
        assert!(!c.passed, "{c:?}");
        assert!(c.detail.as_deref().unwrap().contains("element 3"), "{c:?}");
    }

    assert!(!selftest::compare("short", "50", &want[1..], &want).passed);

    assert!(selftest::all_passed(std::slice::from_ref(&exact)));
    assert!(!selftest::all_passed(&[exact, c]));
    assert!(!selftest::all_passed(&[]), "an empty self-test proves nothing");
}

#[test]
fn compare_within_fails_an_element_outside_its_bound() {
    let want = [1.0f32, 2.0, 3.0];
    let bound = [1e-6, 1e-6, 1e-6];
    assert!(selftest::compare_within("exact", "3", &want, &want, &bound).passed);
    let off = [1.0f32, 2.0 + 4.8e-7, 3.0];
    let check = selftest::compare_within("off by 2 ulp", "3", &off, &want, &[1e-6, 2e-7, 1e-6]);
    assert!(!check.passed, "an element 2.4x outside its bound passed");
    assert!(check.detail.unwrap().contains("element 1"));
    // The relative error (1e-7) is far below the plain tolerance: only the bound catches it.
    assert!(selftest::compare("off by 2 ulp", "3", &off, &want).passed);
}

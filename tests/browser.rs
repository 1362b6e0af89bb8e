//! The browser demo in headless Chromium (WebGPU; SwiftShader on machines without a GPU),
//! judged here against the native oracles.
//!
//! `web/e2e/run.mjs` drives the page once: the kernel self-test, training on the generated
//! data, a prediction, the ONNX download and a screenshot. These tests check what it saved.
//! They need the built page (`cargo xtask web --build-only`), Node.js with `npm ci` in
//! `web/e2e`, and Chromium; `cargo xtask test` provides all three and sets
//! `DENSEGPU_BROWSER_TESTS=1`, which turns a missing piece into a failure. Without that
//! variable the tests are skipped with a message, so a plain `cargo test` works anywhere.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use densegpu::densenet::memory_plans_json;
use densegpu::memory::arena_limits;
use densegpu::DenseNetConfig;
use serde_json::Value;
use tract_onnx::prelude::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Kept after the run for CI to collect: results.json, model.onnx, densenet.safetensors and
/// the screenshot page.png.
fn artifacts_dir() -> PathBuf {
    root().join("artifacts").join("browser")
}

/// Runs the page once for all tests; `None` when the browser tests are not requested.
fn browser_run() -> Option<&'static Value> {
    static RUN: OnceLock<Option<Value>> = OnceLock::new();
    RUN.get_or_init(|| {
        let required = std::env::var_os("DENSEGPU_BROWSER_TESTS").is_some_and(|v| v == "1");
        let ready = root().join("web/pkg/densegpu_web.js").exists()
            && root().join("web/e2e/node_modules/playwright-core").exists();
        if !required {
            eprintln!(
                "browser tests skipped: set DENSEGPU_BROWSER_TESTS=1 (as `cargo xtask test` does) after \
                 `cargo xtask web --build-only` and `npm ci` in web/e2e"
            );
            return None;
        }
        assert!(
            ready,
            "the browser tests need web/pkg (cargo xtask web --build-only) and web/e2e/node_modules (npm ci)"
        );
        let out = artifacts_dir();
        let _ = std::fs::remove_dir_all(&out);
        let status = Command::new("node")
            .arg(root().join("web/e2e/run.mjs"))
            .arg("--out")
            .arg(&out)
            .status()
            .expect("node runs (install Node.js 18+)");
        let text = std::fs::read_to_string(out.join("results.json")).expect("the browser run wrote results.json");
        let results: Value = serde_json::from_str(&text).expect("results.json is JSON");
        assert!(status.success(), "the browser run failed: {}", results["failure"]);
        Some(results)
    })
    .as_ref()
}

#[test]
fn kernels_in_the_browser_match_the_cpu_reference() {
    let Some(run) = browser_run() else { return };
    let selftest = &run["selftest"];
    let checks = selftest["checks"].as_array().expect("the page ran the kernel self-test");
    let failed: Vec<&Value> = checks.iter().filter(|c| c["passed"] != true).collect();
    assert!(failed.is_empty(), "kernels that disagree with the CPU reference in the browser: {failed:#?}");
    assert_eq!(selftest["passed"], true);
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for family in ["conv", "batchnorm", "relu", "pool", "linear", "cross_entropy", "sgd"] {
        assert!(names.iter().any(|n| n.contains(family)), "no {family} check ran in the browser: {names:?}");
    }
    // Each kernel family, forced, trains bit-identically across the memory modes in the browser.
    for check in ["memory_modes-register/efficient", "memory_modes-register/minimal"]
        .into_iter()
        .chain(["memory_modes-workgroup/efficient", "memory_modes-workgroup/minimal"])
    {
        assert!(names.iter().any(|n| n.starts_with(check)), "no {check} check ran in the browser: {names:?}");
    }
}

#[test]
fn the_page_tunes_its_kernels_and_keeps_the_choice() {
    let Some(run) = browser_run() else { return };
    let t = &run["tuning"];
    let (started, full, cached) = (&t["started"], &t["full"], &t["cached"]);
    assert_eq!(started["kernels"]["forced"], false, "{t}");
    assert!(started["kernels"]["shapes"].as_u64() > Some(0), "the page's model was not tuned: {t}");
    let stored = started["stored"].as_str().expect("the page kept the tuned choices in localStorage");
    let stored: Value = serde_json::from_str(stored).expect("the kept choices are JSON");
    assert!(stored.as_object().is_some_and(|adapters| !adapters.is_empty()), "{stored}");
    // A full tuning times every shape with more than one candidate; the cache then serves all.
    assert!(full["timed"].as_u64() > Some(0), "a full tuning timed nothing: {full}");
    assert_eq!(cached["timed"], 0, "the kept cache did not spare the timing: {cached}");
    assert_eq!(cached["shapes"], full["shapes"], "{t}");
    assert_eq!(
        (cached["register"].clone(), cached["workgroup"].clone()),
        (full["register"].clone(), full["workgroup"].clone())
    );
    for timed in full["timings"].as_array().unwrap() {
        let seconds = timed["seconds"].as_object().unwrap();
        assert!(seconds.contains_key("register") && seconds.len() >= 2, "{timed}");
        assert!(seconds.values().all(|s| s.as_f64().is_some_and(|s| s > 0.0)), "{timed}");
    }
    eprintln!("browser tuning: {}", full["line"]);
}

#[test]
fn either_forced_kernel_family_trains_in_the_browser() {
    let Some(run) = browser_run() else { return };
    let f = &run["families"];
    let losses =
        |k: &str| -> Vec<f64> { f[k]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (register, workgroup) = (losses("register"), losses("workgroup"));
    for k in ["register", "workgroup"] {
        assert_eq!(f[k]["kernels"]["family"], k, "{f}");
        assert_eq!(f[k]["kernels"]["forced"], true, "{f}");
    }
    // The same model, seed and data: the families differ only in their sums' order, which
    // the first three steps carry into the loss at the native test's scale (tests/training.rs).
    assert_eq!(register.len(), 6, "{f}");
    for (a, b) in register.iter().zip(&workgroup).take(3) {
        assert!(
            a.is_finite() && (a - b).abs() <= 1e-4 * a.abs(),
            "losses {register:?} register vs {workgroup:?} workgroup"
        );
    }
    eprintln!(
        "browser, forced families: register {:.1} img/s, workgroup {:.1} img/s",
        f["register"]["images_per_second"].as_f64().unwrap(),
        f["workgroup"]["images_per_second"].as_f64().unwrap()
    );
}

#[test]
fn the_page_trains_and_its_loss_goes_down() {
    let Some(run) = browser_run() else { return };
    let losses: Vec<f64> = run["history"].as_array().unwrap().iter().map(|h| h["loss"].as_f64().unwrap()).collect();
    assert!(losses.len() >= 20, "only {} steps were shown", losses.len());
    assert!(losses.iter().all(|l| l.is_finite()), "non-finite loss: {losses:?}");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    assert!(last < 0.9 * first, "the loss did not go down: first five steps {first:.3}, last five {last:.3}");
    let history = run["history"].as_array().unwrap();
    assert!(history.iter().all(|h| h["allocated_bytes"].as_f64().unwrap() > 0.0), "memory was not shown");
    assert!(history.iter().skip(1).all(|h| h["images_per_second"].as_f64().unwrap() > 0.0), "speed was not shown");
    // SwiftShader is a software adapter: the page must pick the register family there (a
    // GPU's page gets the workgroup family).
    let kernels = run["kernels"].as_str().unwrap_or_default();
    let adapter = run["adapter"].as_str().unwrap_or_default().to_lowercase();
    assert!(["register", "workgroup"].contains(&kernels), "the page did not say its kernels: {}", run["kernels"]);
    if adapter.contains("swiftshader") {
        assert_eq!(kernels, "register", "{adapter}");
    }
    eprintln!(
        "browser: {} steps in {:.1} s on {} ({kernels} kernels), loss {first:.3} -> {last:.3}",
        losses.len(),
        run["trainSeconds"].as_f64().unwrap_or(0.0),
        run["adapter"]
    );
}

#[test]
fn the_plan_shown_equals_the_native_plan() {
    let Some(run) = browser_run() else { return };
    let shown: Value = serde_json::from_str(run["plans"].as_str().expect("the page showed a plan")).unwrap();
    let m = &run["model"];
    let config = DenseNetConfig::cifar_bc(
        m["depth"].as_u64().unwrap() as u32,
        m["growth_rate"].as_u64().unwrap() as u32,
        m["classes"].as_u64().unwrap() as u32,
    )
    .unwrap();
    // The page plans with its device's binding limit; plan natively with the same one.
    let limits = arena_limits(shown["binding_limit"].as_u64().unwrap());
    let native = memory_plans_json(&config, m["batch_size"].as_u64().unwrap() as u32, &limits, None);
    assert_eq!(shown, native, "the browser's plan differs from the native one");
    assert!(native["modes"].as_array().unwrap().iter().all(|p| p["total"].as_u64().unwrap() > 0));
}

#[test]
fn the_downloaded_onnx_model_runs_in_tract_and_agrees_with_the_page() {
    let Some(run) = browser_run() else { return };
    assert_eq!(run["onnxName"], "densenet.onnx");
    let bytes = std::fs::read(artifacts_dir().join("model.onnx")).expect("the ONNX download was saved");
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the downloaded model")
        .into_optimized()
        .expect("tract types the model")
        .into_runnable()
        .expect("tract plans the model");
    // The page's test image, normalised as the page does before inference.
    let rgba: Vec<u8> = run["testImage"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let mut chw = vec![0u8; 3 * 32 * 32];
    for (p, px) in rgba.chunks_exact(4).enumerate() {
        for c in 0..3 {
            chw[c * 1024 + p] = px[c];
        }
    }
    let mut input = vec![0f32; chw.len()];
    densegpu::data::Normalization::CIFAR10.apply(&chw, &mut input);
    let out = model.run(tvec!(Tensor::from_shape(&[1, 3, 32, 32], &input).unwrap().into())).expect("tract runs it");
    let logits: Vec<f32> = out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    let probabilities = densegpu::train::softmax(&logits);
    let classes = densegpu::data::SYNTHETIC_CLASSES;
    for p in run["predictions"].as_array().expect("the page classified the test image") {
        let class = classes.iter().position(|c| *c == p["class"].as_str().unwrap()).unwrap();
        let (page, tract) = (p["probability"].as_f64().unwrap(), probabilities[class]);
        assert!((page - tract).abs() < 1e-4, "{}: the page says {page:.6}, tract {tract:.6}", classes[class]);
    }
}

#[test]
fn the_page_showed_no_error_and_a_screenshot_was_saved() {
    let Some(run) = browser_run() else { return };
    assert_eq!(run["errors"], Value::Array(vec![]), "the page reported errors");
    assert_eq!(run["errorBanner"], "", "the error banner was visible");
    assert_eq!(run["pageErrors"], Value::Array(vec![]), "uncaught exceptions in the page");
    assert_eq!(run["status"], "stopped", "training should have stopped at the step limit");
    let png = std::fs::read(artifacts_dir().join("page.png")).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "the screenshot is not a real PNG");
}

#[test]
fn pause_holds_training_and_resume_continues() {
    let Some(run) = browser_run() else { return };
    let (at, after) = (run["pause"]["pausedAt"].as_u64().unwrap(), run["pause"]["afterWait"].as_u64().unwrap());
    // The step in flight when Pause is clicked may still land; nothing after it.
    assert!(after <= at + 1, "training went on while paused: {at} steps at pause, {after} 1.5 s later");
    assert!(run["history"].as_array().unwrap().len() as u64 > after, "training did not resume");
}

#[test]
fn a_batch_the_device_cannot_hold_names_the_largest_that_fits() {
    let Some(run) = browser_run() else { return };
    let message = run["tooLargeError"].as_str().expect("the page reported the oversized batch");
    assert!(message.contains("largest batch that fits"), "{message}");
    assert!(message.contains("efficient mode"), "{message}");
}

#[test]
fn a_browser_without_webgpu_gets_a_clear_message() {
    let Some(run) = browser_run() else { return };
    let plain = &run["withoutWebGpu"];
    assert_eq!(plain["status"], "error", "{plain}");
    let message = plain["errors"].to_string();
    assert!(message.contains("WebGPU"), "{message}");
}

#[test]
fn a_dropped_cifar_batch_becomes_the_data() {
    let Some(run) = browser_run() else { return };
    let data = &run["cifarData"];
    // 120 records: every tenth is held out for testing.
    assert_eq!((data["train"].as_u64(), data["test"].as_u64()), (Some(108), Some(12)), "{data}");
    assert_eq!(data["classes"][0], "airplane");
    assert_eq!(data["class_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 108);
}

#[test]
fn the_weights_download_is_torchvision_named_and_loads_back() {
    let Some(run) = browser_run() else { return };
    assert_eq!(run["weightsName"], "densenet.safetensors");
    let weights = densegpu::checkpoint::load_weights(&artifacts_dir().join("densenet.safetensors"))
        .expect("the downloaded weights read natively");
    let config = weights.config.as_ref().expect("the file records its config");
    let m = &run["model"];
    assert_eq!((config.growth_rate as u64, config.num_classes as u64), (m["growth_rate"].as_u64().unwrap(), 10));
    for name in [
        "features.conv0.weight",
        "features.denseblock1.denselayer1.norm1.running_var",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(weights.tensor(name).is_some(), "no {name} in the download");
    }
    let top = |key: &str| run[key][0]["probability"].as_f64().unwrap();
    assert_ne!(top("predictions"), top("predictionsAfterTraining"), "two more steps should change the prediction");
    assert!(run["weightsStatus"].as_str().unwrap().starts_with("Loaded"), "{}", run["weightsStatus"]);
    let probabilities = |key: &str| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = run[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["class"].as_str().unwrap().to_string(), p["probability"].as_f64().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for ((class, before), (_, after)) in
        probabilities("predictions").iter().zip(probabilities("predictionsAfterReload"))
    {
        assert!((before - after).abs() < 1e-6, "{class}: {before} before the download, {after} after loading it back");
    }
}

#[test]
fn a_picked_image_folder_becomes_the_data_with_one_class_per_folder() {
    let Some(run) = browser_run() else { return };
    let data = &run["folderData"];
    assert_eq!(data["classes"], serde_json::json!(["blue", "green", "red"]), "{data}");
    // 30 images: every tenth is held out for testing.
    assert_eq!((data["train"].as_u64(), data["test"].as_u64()), (Some(27), Some(3)), "{data}");
}

#[test]
fn a_batch_split_into_shards_trains_as_the_whole_batch_in_the_browser() {
    let Some(run) = browser_run() else { return };
    let s = &run["sharded"];
    assert_eq!(s["whole"]["shards"], serde_json::json!([16]), "{s}");
    assert_eq!(s["sharded"]["shards"], serde_json::json!([6, 5, 5]), "{s}");
    let losses =
        |k: &str| -> Vec<f64> { s[k]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (whole, sharded) = (losses("whole"), losses("sharded"));
    // The same bound as the native test (tests/shards.rs): shards reorder float32 sums only.
    for (a, b) in whole.iter().zip(&sharded) {
        assert!(a.is_finite() && (a - b).abs() <= 2e-6 * a.abs(), "losses {whole:?} whole vs {sharded:?} sharded");
    }
}

/// The Profile button times a step launch by launch: its report is the native one, its
/// trace (downloaded through the page's link) follows the trace event format, and the
/// launches add up to within 10% of the device's span.
#[test]
fn the_page_profiles_a_step_and_its_trace_loads() {
    let Some(results) = browser_run() else { return };
    let p = &results["profile"];
    let report = p["report"].as_str().unwrap_or_else(|| panic!("no profile: {p}"));
    for needle in ["Step profile on", "family / direction / block", "conv / backward weight", "roofline"] {
        assert!(report.contains(needle), "no `{needle}` in:\n{report}");
    }
    let trace: Value = serde_json::from_slice(&std::fs::read(artifacts_dir().join("profile.json")).unwrap()).unwrap();
    support::check_chrome_trace(&trace, p["dispatches"].as_u64().unwrap() as usize);
    let (launches, span) = (p["launch_seconds"].as_f64().unwrap(), p["device_span"].as_f64().unwrap());
    assert!(launches <= span * (1.0 + 1e-6) && launches >= 0.9 * span, "launches {launches} s, span {span} s");
}

/// #27: the demo keeps its checkpoint in the tab's storage (IndexedDB) at each epoch end and
/// when a run stops, offers it after a reload, refuses it while the data it was trained on is
/// missing, and resumes it bit-exactly: the two steps after the resume give the losses the
/// original page got for the same two steps.
#[test]
fn the_tab_keeps_a_checkpoint_and_a_reload_resumes_it_bit_exactly() {
    let Some(run) = browser_run() else { return };
    let tab = &run["tabStorage"];
    let saves = tab["saves"].as_array().expect("the page recorded its checkpoint saves");
    assert!(saves.iter().any(|s| s["why"].as_str().is_some_and(|w| w.starts_with("end of epoch 1"))), "{saves:?}");
    let last = saves.last().unwrap();
    assert_eq!((last["why"].as_str(), last["step"].as_u64()), (Some("stopped"), Some(8)), "{saves:?}");
    let offer = &tab["offer"];
    assert_eq!(offer["shown"], true, "no resume offer after the reload: {offer}");
    assert_eq!(offer["info"]["step"], 8, "{offer}");
    assert_eq!(offer["info"]["data_ready"], false, "{offer}");
    let text = offer["text"].as_str().unwrap();
    assert!(text.contains("after step 8") && text.contains("add the same files"), "{text}");
    let refused = tab["withoutFiles"].as_str().expect("resuming without the files was refused");
    assert!(refused.contains("add the same files again"), "{refused}");
    assert_eq!(tab["resumed"]["step"], 8, "{tab}");
    let reference: Vec<f64> = tab["reference"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
    let resumed: Vec<f64> =
        tab["afterResume"].as_array().unwrap().iter().map(|s| s["loss"].as_f64().unwrap()).collect();
    assert_eq!(reference.len(), 2);
    assert_eq!(resumed, reference, "the resumed run must continue bit for bit");
    assert_eq!(tab["afterResume"][1]["step"], 10, "{tab}");
}

#[test]
fn a_failed_step_shows_its_error_and_keeps_the_model() {
    let Some(run) = browser_run() else { return };
    let failed = &run["failedStep"];
    let error = failed["error"].as_str().expect("the diverging step reported an error");
    assert!(error.contains("at step") && error.contains("lower the learning rate"), "{error}");
    assert_eq!(failed["banner"].as_str(), Some(error), "the error is shown on the page");
    assert!(failed["modelInfo"].is_string(), "the model was dropped: {failed}");
    assert!(failed["predictions"].is_string(), "the kept model cannot classify: {failed}");
    assert_eq!(failed["offerShown"], true, "the page offers the checkpoint from before the failure: {failed}");
}

#[test]
fn a_file_larger_than_the_page_can_hold_is_refused_with_its_size() {
    let Some(run) = browser_run() else { return };
    let huge = &run["hugeFile"];
    assert_eq!(huge["read"], false, "the file was read before it was refused: {huge}");
    let error = huge["error"].as_str().expect("the page refused the 3 GB file");
    assert!(
        error.contains("data_batch_9.bin") && error.contains("2.79 GiB") && error.contains("3,000,000,000 bytes"),
        "{error}"
    );
    assert!(error.contains("at most 1.00 GiB a file"), "{error}");
}

//! The ImageNet trainer as users run it: the example binary that `cargo test` builds, on a
//! tiny generated image folder (3 classes, PNG and JPEG of mixed sizes) at 32 px; and `eval`
//! on the weights it saves.

#[path = "support/kill.rs"]
mod kill;

use std::path::{Path, PathBuf};
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

fn train(data: &Path, extra: &[&str]) -> std::process::Output {
    let bin = example("train_imagenet");
    assert!(bin.exists(), "{} is built by `cargo test`", bin.display());
    let mut args =
        vec!["--data", data.to_str().unwrap(), "--model", "densenet121", "--image-size", "32", "--batch-size", "2"];
    args.push("--json");
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "2"]);
    }
    if !extra.contains(&"--max-steps") && !extra.contains(&"--epochs") {
        args.extend_from_slice(&["--max-steps", "2"]);
    }
    args.extend_from_slice(extra);
    Command::new(bin).args(&args).env_remove("XDG_RUNTIME_DIR").env("DENSEGPU_AUTOTUNE", "off").output().unwrap()
}

/// 3 classes x 6 training and 2 validation images each, of mixed sizes, PNG and JPEG.
fn image_folder(root: &Path) {
    image_folder_of(root, 6, 2);
}

/// 3 classes x `train` training and `val` validation images each (see [`image_folder`]).
fn image_folder_of(root: &Path, train: u32, val: u32) {
    let sizes = [(40, 30), (50, 64), (33, 41)];
    for (split, count) in [("train", train), ("val", val)] {
        for class in 0..3u32 {
            let dir = root.join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let (w, h) = sizes[((i + class) % 3) as usize];
                let tag = class * 71 + i * 13;
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let v = (x * (3 + class * 4) + y * (5 + i) + tag) % 256;
                    image::Rgb([v as u8, (255 - v) as u8, ((x * y + tag) % 256) as u8])
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(dir.join(format!("{i:03}.{ext}"))).unwrap();
            }
        }
    }
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train_imagenet failed:\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn densenet121_trains_two_steps_on_a_tiny_folder_and_reports_top1_and_top5() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    let save = dir.path().join("run");
    let s = summary(&train(dir.path(), &["--save", save.to_str().unwrap()]));
    assert!(s["train_loss"].as_f64().unwrap().is_finite(), "{s}");
    let (top1, top5) = (s["top1"].as_f64().unwrap(), s["top5"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&top1) && top1 <= top5, "{s}");
    // Top-5 of 3 classes always holds the label.
    assert_eq!(top5, 1.0, "{s}");
    assert_eq!(s["val_images"], 6, "{s}");
    assert_eq!(s["steps"], 2, "{s}");
    assert_eq!(s["bad_images"], 0, "{s}");
    let share = s["data_wait_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{s}");
    assert!(s["images_per_second"].as_f64().unwrap() > 0.0, "{s}");
    for file in ["checkpoint.safetensors", "last.safetensors", "best.safetensors"] {
        assert!(save.join(file).exists(), "{file} is written");
    }
}

#[test]
fn a_corrupt_image_is_an_error_naming_it_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    // A JPEG cut short: the validation pass at the end reads every image, so it is met.
    let good = std::fs::read(dir.path().join("val/class1/001.jpg")).unwrap();
    std::fs::write(dir.path().join("val/class1/broken.jpg"), &good[..good.len() / 3]).unwrap();

    let out = train(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected an error exit:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("broken.jpg"), "the error names the file:\n{stderr}");

    let s = summary(&train(dir.path(), &["--skip-bad-images"]));
    assert_eq!(s["bad_images"], 1, "{s}");
    assert!(s["train_loss"].as_f64().unwrap().is_finite(), "{s}");
}

#[test]
fn a_corrupt_training_image_stops_the_run_naming_it_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    image_folder_of(dir.path(), 2, 1);
    // One epoch of 6 images in batches of 2 reads every training image.
    let victim = dir.path().join("train/class1/001.jpg");
    let good = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &good[..good.len() / 2]).unwrap();
    let save = dir.path().join("run");
    let out = train(dir.path(), &["--epochs", "1", "--save", save.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected an error exit:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&victim.display().to_string()), "the error names the file:\n{stderr}");
    assert!(!save.join("last.safetensors").exists(), "a failed run does not write final weights");

    let s = summary(&train(dir.path(), &["--epochs", "1", "--skip-bad-images"]));
    assert_eq!(s["bad_images"], 1, "{s}");
    assert_eq!(s["steps"], 3, "{s}");
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn a_run_resumed_mid_epoch_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    image_folder_of(dir.path(), 3, 1);
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    let (w, p) = (whole.to_str().unwrap(), parts.to_str().unwrap());
    // 4 steps of one epoch of 9 images (the odd one out is dropped); the interrupted run stops
    // after step 2, mid-epoch, and the resumed one takes 3 decoding workers instead of 2:
    // batches do not depend on them.
    let a = summary(&train(dir.path(), &["--epochs", "1", "--save", w]));
    summary(&train(dir.path(), &["--epochs", "1", "--max-steps", "2", "--save", p]));
    let b = summary(&train(dir.path(), &["--epochs", "1", "--resume", p, "--save", p, "--workers", "3"]));
    assert_eq!(a["steps"], 4, "{a}");
    assert_eq!(b["steps"], 4, "{b}");
    for key in ["train_loss", "top1", "top5", "val_loss"] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    for file in ["last.safetensors", "checkpoint.safetensors"] {
        assert!(tensors(&whole.join(file)) == tensors(&parts.join(file)), "{file} differs after resuming");
    }
    // The epoch's row sums the steps before and after the resume.
    let rows = |d: &Path| std::fs::read_to_string(d.join("metrics.csv")).unwrap();
    assert_eq!(rows(&whole), rows(&parts));
    assert!(rows(&whole).starts_with("epoch,train_loss,train_accuracy,val_loss,top1,top5\n1,"), "{}", rows(&whole));

    // `eval` streams the same validation images through the same transform: the same top-1.
    let bin = example("eval");
    let weights = whole.join("last.safetensors");
    let out = Command::new(bin)
        .args(["--weights", weights.to_str().unwrap(), "--data", dir.path().to_str().unwrap()])
        .args(["--batch-size", "2", "--workers", "2", "--json"])
        .output()
        .unwrap();
    let e = summary(&out);
    assert_eq!(e["images"], 3, "{e}");
    assert_eq!(e["test_accuracy"], a["top1"], "{e} vs {a}");
    assert_eq!(e["top5_accuracy"], a["top5"], "{e} vs {a}");
}

#[test]
fn eval_and_predict_refuse_a_folder_with_another_class_count_than_the_model() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    let save = dir.path().join("run");
    summary(&train(dir.path(), &["--max-steps", "1", "--save", save.to_str().unwrap()]));
    let other = dir.path().join("two");
    for class in ["a", "b"] {
        std::fs::create_dir_all(other.join("val").join(class)).unwrap();
        std::fs::copy(dir.path().join("val/class0/000.png"), other.join("val").join(class).join("x.png")).unwrap();
    }
    let weights = save.join("last.safetensors");
    let out = Command::new(example("eval"))
        .args(["--weights", weights.to_str().unwrap(), "--data", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has 2 classes but the model") && stderr.contains("has 3"), "{stderr}");

    // predict names the classes after the folder it was trained on, and refuses another.
    let photo = dir.path().join("val/class2/001.jpg");
    let predict = |classes: &Path| {
        Command::new(example("predict"))
            .args(["--weights", weights.to_str().unwrap(), "--classes", classes.to_str().unwrap(), "--json"])
            .arg(&photo)
            .output()
            .unwrap()
    };
    let line = summary(&predict(dir.path()));
    let top5 = line["top5"].as_array().unwrap();
    assert_eq!(top5.len(), 3, "{line}");
    let mut named: Vec<&str> = top5.iter().map(|c| c["class"].as_str().unwrap()).collect();
    named.sort();
    assert_eq!(named, ["class0", "class1", "class2"], "{line}");
    std::fs::create_dir_all(other.join("train/a")).unwrap();
    std::fs::copy(dir.path().join("val/class0/000.png"), other.join("train/a/x.png")).unwrap();
    let out = predict(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 class folders but the model has 3"), "{stderr}");
}

#[test]
fn kill_9_while_streaming_loses_nothing_and_the_end_is_bit_identical() {
    // 3 kills here (one of each kind); `cargo xtask test --full` kills 20 times.
    let (kills, epochs) = if std::env::var_os("DENSEGPU_FULL_TESTS").is_some() { (20, 12) } else { (3, 3) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder_of(&data, 2, 1); // 6 training images: 3 steps of 2 per epoch
    let args: Vec<String> = [
        "--data",
        data.to_str().unwrap(),
        "--model",
        "densenet121",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--workers",
        "2",
        "--epochs",
        &epochs.to_string(),
        "--checkpoint-every",
        "1",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let seen = kill::kill_test(&example("train_imagenet"), &args, dir.path(), kills, 11);
    println!("train_imagenet: {}", seen.summary());
}

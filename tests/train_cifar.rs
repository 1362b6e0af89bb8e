//! The CIFAR trainer as users run it: the example binary that `cargo test` builds.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

fn train(args: &[&str]) -> std::process::Output {
    let bin = example("train_cifar");
    assert!(bin.exists(), "{} is built by `cargo test`", bin.display());
    Command::new(bin).args(args).output().unwrap()
}

#[test]
fn a_nan_loss_stops_training_keeps_the_last_checkpoint_and_suggests_a_lower_lr() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_str().unwrap();
    let small = ["--depth", "10", "--growth-rate", "4", "--batch-size", "16", "--valid-size", "0"];
    let onnx = dir.path().join("model.onnx");
    let first = train(
        &[&small[..], &["--max-steps", "2", "--save", save, "--json", "--onnx", onnx.to_str().unwrap()]].concat(),
    );
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // --onnx exports the trained model, and an independent runtime loads it.
    use tract_onnx::prelude::*;
    tract_onnx::onnx().model_for_path(&onnx).expect("the exported model loads in tract");
    let summary: serde_json::Value =
        serde_json::from_slice(first.stdout.split(|&b| b == b'\n').find(|l| l.starts_with(b"{")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    let checkpoint = dir.path().join("checkpoint.safetensors");
    let last = dir.path().join("last.safetensors");
    let before = std::fs::read(&checkpoint).expect("a run stopped by --max-steps still writes its checkpoint");
    assert!(last.exists(), "last.safetensors is written even mid-epoch");

    let diverging =
        train(&[&small[..], &["--max-steps", "6", "--save", save, "--resume", save, "--lr", "1e30"]].concat());
    assert!(!diverging.status.success());
    let stderr = String::from_utf8_lossy(&diverging.stderr);
    assert!(stderr.contains("loss became"), "{stderr}");
    assert!(stderr.contains("--lr"), "{stderr}");
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the last good checkpoint is kept");
}

#[test]
fn bad_data_gets_an_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["--data", dir.path().join("missing").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing"), "{stderr}");
}

//! The CIFAR trainer as users run it: the example binary that `cargo test` builds.

#[path = "support/kill.rs"]
mod kill;

use std::path::{Path, PathBuf};
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

/// Runs an example without `XDG_RUNTIME_DIR`, as in a container or over ssh: the driver's
/// complaint about it must not reach the terminal.
fn run_example(name: &str, args: &[&str]) -> std::process::Output {
    let bin = example(name);
    assert!(bin.exists(), "{} is built by `cargo test`", bin.display());
    // Kernel tuning is tested on its own (below): timing-based choices would make runs that
    // must agree (a resume, a rerun) depend on the cache's state.
    let out =
        Command::new(bin).args(args).env_remove("XDG_RUNTIME_DIR").env("DENSEGPU_AUTOTUNE", "off").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "the driver's XDG_RUNTIME_DIR complaint got through:\n{stderr}");
    out
}

fn train(args: &[&str]) -> std::process::Output {
    run_example("train_cifar", args)
}

/// A failed run's error: exit status 1 (an error, not a panic) and its stderr.
fn refused(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected an error exit, got {:?}:\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// An image folder of two classes: `train` images per class for training, 2 per class for
/// testing, each 32x32 with its own pattern.
fn image_folder(root: &Path, train: u32) {
    for (split, count) in [("train", train), ("test", 2)] {
        for class in 0..2u32 {
            let dir = root.join(split).join(format!("class{class}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let tag = class * 97 + i * 13 + if split == "test" { 5 } else { 0 };
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = (x * (3 + class * 4) + y * (5 + i) + tag) % 256;
                    image::Rgb([v as u8, (255 - v) as u8, ((x * y + tag) % 256) as u8])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// Every tensor of a saved file is finite (momentum included, for a checkpoint).
fn assert_all_finite(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in file.tensors() {
        if view.dtype() == safetensors::Dtype::F32 {
            let bad = view.data().chunks_exact(4).filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
            assert_eq!(bad.count(), 0, "`{name}` in {} is not finite", path.display());
        }
    }
}

const SMALL: [&str; 8] = ["--depth", "10", "--growth-rate", "4", "--batch-size", "16", "--valid-size", "0"];

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
    let stderr = refused(&diverging);
    assert!(stderr.contains("became"), "{stderr}");
    assert!(stderr.contains("--lr 1e29"), "{stderr}");
    // It says which checkpoint is kept: the one it resumed from, at step 2.
    assert!(stderr.contains(&format!("{} (step 2), is unchanged", checkpoint.display())), "{stderr}");
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the last good checkpoint is kept");
}

#[test]
fn a_nan_before_the_first_checkpoint_says_that_none_exists() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("run");
    let out = train(&[&SMALL[..], &["--max-steps", "20", "--lr", "1e30", "--save", save.to_str().unwrap()]].concat());
    let stderr = refused(&out);
    assert!(stderr.contains("training stopped"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no checkpoint had been saved yet (one is written at the end of each epoch, and every \
             --checkpoint-every steps), so {}",
            save.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("is kept"), "{stderr}");
    assert!(!save.join("checkpoint.safetensors").exists());
}

/// The case (#27): the synthetic default at `--lr 100`. A NaN or infinity in a gradient,
/// an updated weight or a running statistic stops the run in the step that made it (the SGD
/// launch and a check of the running statistics flag it on the device), naming the tensor; the
/// same run stopped one step earlier saves a checkpoint in which everything is finite. On main
/// 0cb2e4b the ReLUs zeroed the NaN activations and the run went on until its loss was NaN.
#[test]
fn lr_100_stops_in_the_first_non_finite_step_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(&train(&["--lr", "100", "--max-steps", "39"]));
    let after = stderr.split(" at step ").nth(1).unwrap_or_else(|| panic!("no step named:\n{stderr}"));
    let step: u64 = after.split(' ').next().unwrap().parse().unwrap();
    assert!(stderr.contains("became") || stderr.contains(" was "), "{stderr}");
    assert!(stderr.contains("`features."), "the first tensor affected is named:\n{stderr}");
    assert!(step > 1, "{stderr}");
    let save = dir.path().join("before");
    let steps = (step - 1).to_string();
    let out = train(&["--lr", "100", "--max-steps", &steps, "--save", save.to_str().unwrap()]);
    assert!(out.status.success(), "the steps before {step} were finite:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_all_finite(&save.join("checkpoint.safetensors"));
}

#[test]
fn only_a_finite_state_is_saved_and_called_good() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 8); // 16 training images: one batch of 16 per epoch
    let data = data.to_str().unwrap();

    // Divergence after a good first epoch: the checkpoint of step 1 is finite and is the one kept.
    let save = dir.path().join("diverged");
    let out = train(
        &[&SMALL[..], &["--data", data, "--epochs", "4", "--lr", "1e30", "--save", save.to_str().unwrap()]].concat(),
    );
    let stderr = refused(&out);
    let checkpoint = save.join("checkpoint.safetensors");
    assert!(
        stderr.contains(&format!("the last good checkpoint, {} (step 1), is kept", checkpoint.display())),
        "{stderr}"
    );
    assert_all_finite(&checkpoint);
    assert_all_finite(&save.join("best.safetensors"));

    // A running variance that is already infinite (the loss stays finite: training normalises
    // with batch statistics) is found before anything is written.
    let good = dir.path().join("good");
    let out = train(&[&SMALL[..], &["--data", data, "--max-steps", "1", "--save", good.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut weights = densegpu::checkpoint::load_weights(&good.join("last.safetensors")).unwrap();
    let var = weights.tensors.iter_mut().find(|t| t.name == "features.norm5.running_var").unwrap();
    var.data[0] = f32::INFINITY;
    let init = dir.path().join("inf.safetensors");
    densegpu::checkpoint::save_weights(&init, weights.config.as_ref().unwrap(), &weights.tensors).unwrap();
    let save = dir.path().join("inf");
    let out = train(
        &[
            &SMALL[..],
            &["--data", data, "--max-steps", "1", "--init", init.to_str().unwrap(), "--save", save.to_str().unwrap()],
        ]
        .concat(),
    );
    let stderr = refused(&out);
    // The device's check after the forward pass finds it in step 1.
    assert!(
        stderr.contains("the running statistic `features.norm5.running_var` was inf after the forward pass at step 1"),
        "{stderr}"
    );
    assert!(stderr.contains("no checkpoint had been saved yet"), "{stderr}");
    for file in ["checkpoint.safetensors", "best.safetensors", "last.safetensors", "metrics.csv"] {
        assert!(!save.join(file).exists(), "{file} was written from a non-finite state");
    }
}

#[test]
fn a_resumed_epoch_is_reported_whole_in_metrics_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 24); // 48 training images: 3 batches of 16 per epoch
    let data = data.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let save = dir.path().join(name);
        let args = [&SMALL[..], &["--data", data, "--epochs", "1", "--save", save.to_str().unwrap()], extra].concat();
        let out = train(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        save
    };
    let whole = run("whole", &[]);
    let split = run("split", &["--max-steps", "1"]);
    assert!(!split.join("metrics.csv").exists(), "the first epoch is not over yet");
    run("split", &["--resume", split.to_str().unwrap()]);
    let want = std::fs::read_to_string(whole.join("metrics.csv")).unwrap();
    let got = std::fs::read_to_string(split.join("metrics.csv")).unwrap();
    assert_eq!(want.lines().count(), 2, "{want}");
    assert_eq!(got, want, "the resumed epoch's row covers all of its steps");
}

#[test]
fn bad_flags_are_refused_with_the_problem_and_the_fix() {
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--momentum", "1.5"], &["momentum must be in [0, 1), got 1.5", "0.9"]),
        (&["--lr=-1"], &["learning rate must be a finite number >= 0, got -1", "0.1"]),
        (&["--lr", "NaN"], &["learning rate must be a finite number >= 0, got NaN"]),
        (&["--weight-decay=-0.1"], &["weight decay must be a finite number >= 0, got -0.1", "1e-4"]),
        (&["--bn-size", "0"], &["--bn-size 0", "plain DenseNet", "--bn-size 1 or more"]),
        (&["--milestones", "0.5,1.5"], &["--milestones", "[0, 1]", "1.5"]),
    ];
    for (args, parts) in cases {
        let stderr = refused(&train(args));
        for p in parts {
            assert!(stderr.contains(p), "{args:?}: {stderr:?} does not say {p:?}");
        }
    }
}

/// The first run on an adapter times the kernels of its conv shapes, says so in one line and
/// caches the choices; the next run reads them and times nothing. A forced family runs too,
/// and an unknown one is refused before anything runs.
#[test]
fn train_cifar_tunes_once_per_adapter_and_shape_and_then_reads_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let args = [&SMALL[..], &["--max-steps", "1"], extra].concat();
        let out = Command::new(example("train_cifar"))
            .args(&args)
            .env("DENSEGPU_CACHE_DIR", cache.path())
            .env_remove("DENSEGPU_AUTOTUNE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run(&[]);
    let line = first.lines().find(|l| l.starts_with("Tuned the conv kernels")).unwrap_or_else(|| panic!("{first}"));
    assert!(line.contains(" s: ") && line.contains("shapes timed"), "{line}");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.path().join("kernels.json")).unwrap()).unwrap();
    let adapter = cached.as_object().unwrap().values().next().expect("one adapter's entries");
    assert!(adapter.as_object().unwrap().keys().any(|k| k.starts_with("conv backward_weight")), "{cached}");
    let saved = cache.path().join("run");
    let second = run(&["--save", saved.to_str().unwrap()]);
    assert!(!second.contains("Tuned the conv kernels"), "the second run timed again:\n{second}");
    // `eval` at the training batch reads the cache training wrote and times nothing; with an
    // empty cache it times its shapes (so it does tune, and reads the cache when it has them).
    let data = cache.path().join("data");
    image_folder(&data, 2);
    let eval = |cache_dir: &Path| {
        let weights = saved.join("last.safetensors");
        let out = Command::new(example("eval"))
            .args(["--weights", weights.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch-size", "16"])
            .env("DENSEGPU_CACHE_DIR", cache_dir)
            .env_remove("DENSEGPU_AUTOTUNE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = eval(cache.path());
    assert!(!stderr.contains("Tuned the conv kernels"), "eval timed shapes training had tuned:\n{stderr}");
    let empty = tempfile::tempdir().unwrap();
    let stderr = eval(empty.path());
    assert!(stderr.contains("Tuned the conv kernels"), "eval did not tune with an empty cache:\n{stderr}");
    let forced = run(&["--kernels", "workgroup"]);
    assert!(!forced.contains("Tuned the conv kernels"), "{forced}");
    let out = train(&[&SMALL[..], &["--kernels", "fastest"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fastest") && stderr.contains("register") && stderr.contains("workgroup"), "{stderr}");
    let out = train(&[&SMALL[..], &["--autotune", "always"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("always") && stderr.contains("use off, cached or full"), "{stderr}");
    // A cache folder that cannot be created (a file stands where it would go) costs a warning
    // and the next run's timing, not this run.
    let blocker = cache.path().join("not-a-folder");
    std::fs::write(&blocker, b"").unwrap();
    let args = [&SMALL[..], &["--max-steps", "1"]].concat();
    let out = Command::new(example("train_cifar"))
        .args(&args)
        .env("DENSEGPU_CACHE_DIR", blocker.join("cache"))
        .env_remove("DENSEGPU_AUTOTUNE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "an unwritable kernel cache stopped the run: {stderr}");
    assert!(stderr.contains("warning") && stderr.contains("kernel cache"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Tuned the conv kernels"));
}

#[test]
fn batch_1_on_densenet121_is_refused_naming_the_layer() {
    // 32x32 inputs leave DenseNet-121's last block with 1x1 maps: one value per channel.
    let stderr = refused(&train(&["--model", "densenet121", "--batch-size", "1", "--max-steps", "1"]));
    for p in ["`features.norm5`", "1 value per channel", "batch size of at least 2", "larger images"] {
        assert!(stderr.contains(p), "{stderr:?} does not say {p:?}");
    }
    // The memory planner agrees instead of saying it fits.
    let out = run_example("memory", &["--model", "densenet121", "--image-size", "32", "--batch-size", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("cannot train").count(), 3, "{stdout}");
    assert!(stdout.contains("`features.norm5`"), "{stdout}");
}

#[test]
fn bad_data_gets_an_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["--data", dir.path().join("missing").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing"), "{stderr}");
}

#[test]
fn export_onnx_takes_a_state_dict_saved_from_data_parallel() {
    use safetensors::tensor::TensorView;
    let config = densegpu::DenseNetConfig::cifar_bc(10, 4, 10).unwrap();
    let graph = config.build(1, densegpu::MemoryMode::Efficient).unwrap();
    let tensors: Vec<densegpu::checkpoint::NamedTensor> = graph
        .params
        .iter()
        .chain(&graph.states)
        .flat_map(|g| &g.tensors)
        .map(|t| densegpu::checkpoint::NamedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: vec![0.5; t.len()],
        })
        .collect();
    let ours = densegpu::checkpoint::weights_to_bytes(&config, &tensors).unwrap();
    let file = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&ours).unwrap();
    let views: Vec<(String, TensorView<'_>)> =
        file.tensors().into_iter().map(|(n, v)| (format!("module.{n}"), v)).collect();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("dp.safetensors");
    std::fs::write(&weights, safetensors::serialize(views, header.metadata().clone()).unwrap()).unwrap();
    let onnx = dir.path().join("dp.onnx");
    let out = run_example("export_onnx", &["--weights", weights.to_str().unwrap(), "--out", onnx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use tract_onnx::prelude::*;
    tract_onnx::onnx().model_for_path(&onnx).expect("the exported model loads in tract");
}

/// `--profile FILE` profiles the chosen step of the run: the report is printed and FILE is a
/// Chrome trace; a step the run does not have is refused before anything runs.
#[test]
fn train_cifar_profiles_the_chosen_step() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("step.json");
    let args =
        [&SMALL[..], &["--max-steps", "3", "--profile", trace.to_str().unwrap(), "--profile-step", "2"]].concat();
    let out = train(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for needle in
        ["Step profile on", "family / direction / block", "conv / backward weight", "roofline", "Chrome trace written"]
    {
        assert!(stdout.contains(needle), "no `{needle}` in:\n{stdout}");
    }
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let slices = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X" && e["pid"] == 1).count();
    assert!(slices > 50, "{slices} device slices");
    let err =
        refused(&train(&[&SMALL[..], &["--max-steps", "3", "--profile", "x.json", "--profile-step", "4"]].concat()));
    assert!(err.contains("--profile-step 4") && err.contains("from 1 to 3"), "{err}");
}

/// 4 epochs of 3 batches of 16 on a 48-image folder, checkpointing every step.
fn crash_run_args(data: &str, epochs: u32) -> Vec<String> {
    let e = epochs.to_string();
    ["--depth", "10", "--growth-rate", "6", "--batch-size", "16", "--valid-size", "0", "--lr", "0.05", "--data", data]
        .iter()
        .map(|s| s.to_string())
        .chain(["--epochs".into(), e, "--checkpoint-every".into(), "1".into(), "--json".into()])
        .collect()
}

#[test]
fn resume_alone_goes_on_with_the_saved_model_flags_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 24);
    let args = crash_run_args(data.to_str().unwrap(), 2);
    let args: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--checkpoint-every" && *a != "1").collect();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(train(&[&args[..], &["--save", whole.to_str().unwrap()]].concat()));
    // Stopped mid-epoch 2, then resumed with nothing but the folder: the model (depth 10, k=6),
    // the schedule, the data and the folder to save into come from the checkpoint.
    ok(train(&[&args[..], &["--save", split.to_str().unwrap(), "--max-steps", "4"]].concat()));
    ok(train(&["--resume", split.to_str().unwrap(), "--json"]));
    kill::assert_same_files(&whole, &split);

    // A flag that contradicts the saved run is refused by name; one that agrees is fine.
    let resume = split.to_str().unwrap();
    let stderr = refused(&train(&["--resume", resume, "--batch-size", "8"]));
    assert!(stderr.contains("--batch-size 8 contradicts") && stderr.contains("--batch-size 16"), "{stderr}");
    let stderr = refused(&train(&["--resume", resume, "--momentum", "0.5"]));
    assert!(stderr.contains("--momentum 0.5 contradicts") && stderr.contains("--momentum 0.9"), "{stderr}");
    let stderr = refused(&train(&["--resume", resume, "--no-augment"]));
    assert!(stderr.contains("--no-augment contradicts"), "{stderr}");
    let stderr = refused(&train(&["--resume", resume, "--depth", "16"]));
    assert!(stderr.contains("DenseNet-BC-16") && stderr.contains("DenseNet-BC-10"), "{stderr}");
    ok(train(&["--resume", resume, "--batch-size", "16", "--lr", "0.050", "--depth", "10", "--growth-rate", "6"]));
    let stderr = refused(&train(&["--resume", dir.path().to_str().unwrap()]));
    assert!(stderr.contains("holds no checkpoint.safetensors"), "{stderr}");
}

#[test]
fn kill_9_at_any_moment_loses_nothing_and_the_end_is_bit_identical() {
    // 10 kills here; `cargo xtask test --full` kills 100 times over a longer run.
    let (kills, epochs) = if std::env::var_os("DENSEGPU_FULL_TESTS").is_some() { (100, 40) } else { (10, 8) };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 24);
    let args = crash_run_args(data.to_str().unwrap(), epochs);
    let seen = kill::kill_test(&example("train_cifar"), &args, dir.path(), kills, 7);
    println!("train_cifar: {}", seen.summary());
}

#[test]
fn a_file_size_limit_stops_the_run_naming_the_file_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    image_folder(&data, 24);
    let save = dir.path().join("run");
    let args = crash_run_args(data.to_str().unwrap(), 2);
    let first = train(
        &[
            args.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["--max-steps", "1", "--save", save.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let checkpoint = save.join("checkpoint.safetensors");
    let before = std::fs::read(&checkpoint).unwrap();
    // RLIMIT_FSIZE at half the checkpoint's size (`ulimit -f` counts KiB): its next write fails
    // with EFBIG, which must end the run with an error naming the file, not SIGXFSZ's kill.
    let limit = before.len() / 2 / 1024;
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -f {limit} && exec \"$0\" --resume \"$1\""))
        .arg(example("train_cifar"))
        .arg(&save)
        .env_remove("XDG_RUNTIME_DIR")
        .env("DENSEGPU_AUTOTUNE", "off")
        .output()
        .unwrap();
    let stderr = refused(&out);
    assert!(stderr.contains(&checkpoint.display().to_string()) && stderr.contains("file-size limit"), "{stderr}");
    assert!(stderr.contains("unchanged"), "{stderr}");
    assert!(std::fs::read(&checkpoint).unwrap() == before, "the last good checkpoint was touched");
    assert!(!kill::writing(&save, "checkpoint.safetensors"), "the partial write was left behind");
    let again = train(&["--resume", save.to_str().unwrap(), "--max-steps", "3", "--json"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

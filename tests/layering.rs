//! The GPU-free modules (graph, schedule, memory planning, reference, ONNX, the profiler's report,
//! and the root of every op module) name nothing from the GPU side, so that planning, testing against the reference and
//! exporting never need a device, and so that the dependency arrows point one way.

use std::path::{Path, PathBuf};

/// What GPU-side code is reached through: the device and dispatch types, the executor, the op
/// modules' host functions, and wgpu itself.
const GPU_SIDE: &[&str] =
    &["crate::gpu", "crate::executor", "kernels::", "mod kernels", "wgpu", "crate::Gpu", "crate::Session"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The GPU-free source files: graph.rs, schedule.rs, onnx.rs, memory/, reference/, and the
/// root (`mod.rs`) of ops/ and of each op module.
fn gpu_free_files() -> Vec<PathBuf> {
    let src = src();
    let mut files: Vec<PathBuf> =
        ["graph.rs", "schedule.rs", "onnx.rs", "profile.rs", "ops/mod.rs"].iter().map(|f| src.join(f)).collect();
    for dir in ["memory", "reference"] {
        for entry in std::fs::read_dir(src.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for entry in std::fs::read_dir(src.join("ops")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.push(path.join("mod.rs"));
        }
    }
    files
}

/// Every line of `path` outside comments that names a GPU-side item, as `file:line: text`.
/// The `pub mod kernels;` declaration of an op module is allowed: it declares the GPU side, it
/// does not use it.
fn gpu_side_uses(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            code.trim() != "pub mod kernels;" && GPU_SIDE.iter().any(|item| code.contains(item))
        })
        .map(|(i, line)| format!("{}:{}: {}", path.display(), i + 1, line.trim()))
        .collect()
}

#[test]
fn gpu_free_modules_name_nothing_from_the_gpu_side() {
    let files = gpu_free_files();
    assert!(files.len() >= 15, "expected the GPU-free files, found {files:?}");
    let uses: Vec<String> = files.iter().flat_map(|f| gpu_side_uses(f)).collect();
    assert!(uses.is_empty(), "GPU-free modules name GPU-side items:\n{}", uses.join("\n"));
}

#[test]
fn the_check_finds_gpu_side_names_where_they_are() {
    // The executor and the op modules' host functions are GPU-side: the check must see that.
    assert!(!gpu_side_uses(&src().join("executor.rs")).is_empty());
    assert!(!gpu_side_uses(&src().join("ops/conv/kernels.rs")).is_empty());
}

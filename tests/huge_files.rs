//! Files larger than memory can hold are read in pieces or refused with their size, never an
//! abort: a CIFAR-10 batch of about 3 GB and a safetensors file with a 2.4 GB float16 tensor,
//! each read in a child process whose address space is limited (`ulimit -v`, i.e.
//! RLIMIT_AS) to less than the old readers needed.
//!
//! The files are sparse (`set_len`): they take no disk space, and read back as zeros (label 0,
//! black pixels; +0.0 halves). Each test re-runs this test binary as the child, running only
//! [`child`] with `HUGE_FILES_CHILD` naming what to read; on its own, [`child`] does nothing.

use std::path::Path;
use std::process::Command;

const RECORD: u64 = 3073;
const GIB: u64 = 1 << 30;

/// Runs [`child`] in this binary with `what` to do and the address space limited to `limit`
/// bytes. Returns its exit status and output.
fn in_child(what: &str, limit: u64) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" --exact child --include-ignored --nocapture --test-threads 1",
            limit / 1024
        ))
        .arg(exe)
        .env("HUGE_FILES_CHILD", what)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A sparse file of `len` bytes after `head`. `None` (the test says it skips) where the file
/// system cannot make one.
fn sparse(path: &Path, head: &[u8], len: u64) -> Option<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(head).unwrap();
    if let Err(e) = f.set_len(len) {
        eprintln!("skipped: cannot make a sparse file of {len} bytes in {}: {e}", path.display());
        return None;
    }
    Some(())
}

/// The child's half (see the module documentation).
#[test]
#[ignore = "the child half of the huge-file tests, which run it"]
fn child() {
    let Ok(what) = std::env::var("HUGE_FILES_CHILD") else { return };
    let (kind, path) = what.split_once(':').unwrap();
    match kind {
        "cifar" => match densegpu::data::load(path) {
            Ok(set) => println!("LOADED {} training images", set.train.len()),
            Err(e) => println!("ERROR {e}"),
        },
        "weights" => match densegpu::checkpoint::load_weights(Path::new(path)) {
            Ok(w) => println!("LOADED {} tensors", w.tensors.len()),
            Err(e) => println!("ERROR {e}"),
        },
        other => panic!("unknown child task {other}"),
    }
}

/// A CIFAR-10 binary folder whose first training batch holds `records` records.
fn cifar_folder(dir: &Path, records: u64) -> Option<()> {
    let one = vec![0u8; RECORD as usize];
    for file in ["data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"] {
        std::fs::write(dir.join(file), &one).unwrap();
    }
    sparse(&dir.join("data_batch_1.bin"), &[], records * RECORD)
}

#[test]
fn a_3_gb_cifar_batch_loads_without_a_copy_of_itself_or_is_refused_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let records = 3_000_000_000 / RECORD;
    let Some(()) = cifar_folder(dir.path(), records) else { return };
    let task = format!("cifar:{}", dir.path().display());
    // The images take 3072 of each record's 3073 bytes: 2.79 GiB. Reading the file whole and
    // then copying the images needed twice that; in pieces, 4 GiB of address space is enough.
    let (ok, out) = in_child(&task, 4 * GIB);
    assert!(ok && out.contains(&format!("LOADED {} training images", records + 4)), "{out}");
    // Where even the images do not fit: an error naming the folder, the records and the bytes.
    let (ok, out) = in_child(&task, 2 * GIB);
    assert!(ok, "the child aborted instead of returning an error:\n{out}");
    let bytes = (records + 4) * 3072;
    for part in [
        "ERROR",
        &dir.path().display().to_string(),
        &format!("{} CIFAR-10 records", records + 4),
        &format!("({bytes} bytes), which could not be allocated"),
    ] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
}

#[test]
fn a_2_4_gb_float16_tensor_is_refused_with_its_size_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    let values: u64 = 1_200_000_000;
    let header = format!(
        r#"{{"features.conv0.weight":{{"dtype":"F16","shape":[{values}],"data_offsets":[0,{}]}}}}"#,
        values * 2
    );
    let mut head = (header.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(header.as_bytes());
    let Some(()) = sparse(&path, &head, head.len() as u64 + values * 2) else { return };
    // As f32 the tensor needs 4.47 GiB: more than 4 GiB of address space holds, whatever the
    // reader does; the old one read the 2.4 GB file whole first and aborted converting it.
    let (ok, out) = in_child(&format!("weights:{}", path.display()), 4 * GIB);
    assert!(ok, "the child aborted instead of returning an error:\n{out}");
    for part in ["ERROR", &path.display().to_string(), "`features.conv0.weight`", "needs 4.47 GiB (4800000000 bytes)"] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
}

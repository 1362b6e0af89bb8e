//! The CIFAR-10 binary format: records of one label byte and 3072 pixel bytes (the R, G and B
//! planes of a 32x32 image, each row-major), which is already the NCHW layout kept in memory.

use std::path::Path;

use super::{Dataset, TrainTest, CIFAR10_CLASSES, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES};
use crate::{Error, Result};

const PIXELS: usize = 3 * 32 * 32;
/// Bytes in one record: 1 label byte + 3072 pixel bytes.
pub const CIFAR10_RECORD_BYTES: usize = 1 + PIXELS;

/// Parses one batch file's bytes. `name` is what error messages call the file; this takes
/// bytes rather than a path so that the browser can hand over a dropped file.
pub fn parse_cifar10_batch(bytes: &[u8], name: &str) -> Result<Dataset> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR10_RECORD_BYTES) {
        let whole = bytes.len() / CIFAR10_RECORD_BYTES;
        return Err(Error::Data(format!(
            "{name}: {} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte CIFAR-10 records ({whole} records and {} bytes left over); the file is truncated or not a CIFAR-10 binary batch: download it again",
            bytes.len(),
            bytes.len() - whole * CIFAR10_RECORD_BYTES
        )));
    }
    let n = bytes.len() / CIFAR10_RECORD_BYTES;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = record[0];
        if label as usize >= CIFAR10_CLASSES.len() {
            return Err(Error::Data(format!(
                "{name}: record {i} (byte offset {}) has label {label}, but CIFAR-10 labels are 0..9; the file is corrupt or is not CIFAR-10 (CIFAR-100 binaries have two label bytes)",
                i * CIFAR10_RECORD_BYTES
            )));
        }
        labels.push(label as u32);
        images.extend_from_slice(&record[1..]);
    }
    Ok(Dataset {
        images,
        labels,
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        height: 32,
        width: 32,
    })
}

fn read_batch(dir: &Path, file: &str) -> Result<Dataset> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "a CIFAR-10 binary directory needs {} … {} and {}; download the archive again (--download)",
                CIFAR10_TRAIN_FILES[0], CIFAR10_TRAIN_FILES[4], CIFAR10_TEST_FILE
            )
        } else {
            "check the file's permissions".to_string()
        };
        Error::Data(format!("cannot read {}: {e}; {fix}", path.display()))
    })?;
    parse_cifar10_batch(&bytes, &path.display().to_string())
}

/// Reads `data_batch_1.bin` … `data_batch_5.bin` (train, in that order) and `test_batch.bin`
/// from `dir`. Class names come from the archive's `batches.meta.txt` when it is there.
pub fn load_cifar10_binary(dir: impl AsRef<Path>) -> Result<TrainTest> {
    let dir = dir.as_ref();
    let mut train = read_batch(dir, CIFAR10_TRAIN_FILES[0])?;
    for file in &CIFAR10_TRAIN_FILES[1..] {
        train.append(read_batch(dir, file)?);
    }
    let mut test = read_batch(dir, CIFAR10_TEST_FILE)?;
    if let Some(classes) = read_meta(dir) {
        train.classes = classes.clone();
        test.classes = classes;
    }
    Ok(TrainTest { train, test })
}

/// The official archive lists the class names one per line; anything else falls back to the
/// built-in names rather than failing, since the names are only labels for humans.
fn read_meta(dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("batches.meta.txt")).ok()?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    (names.len() == CIFAR10_CLASSES.len()).then_some(names)
}

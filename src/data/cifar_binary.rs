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
    check_length(bytes.len() as u64, name)?;
    let mut set = empty_set();
    reserve(&mut set, (bytes.len() / CIFAR10_RECORD_BYTES) as u64, name)?;
    append_records(&mut set, bytes, 0, name)?;
    Ok(set)
}

fn empty_set() -> Dataset {
    Dataset::empty(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(), 32, 32)
}

fn check_length(len: u64, name: &str) -> Result<()> {
    let record = CIFAR10_RECORD_BYTES as u64;
    if len == 0 || !len.is_multiple_of(record) {
        return Err(Error::Data(format!(
            "{name}: {len} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte CIFAR-10 records ({} records and {} bytes left over); the file is truncated or not a CIFAR-10 binary batch: download it again",
            len / record,
            len % record
        )));
    }
    Ok(())
}

/// Room for `records` more images in `set`, or an error naming `what` and the memory needed.
fn reserve(set: &mut Dataset, records: u64, what: &str) -> Result<()> {
    let what = || format!("{what}: {records} CIFAR-10 records");
    crate::files::try_reserve(&mut set.images, records * PIXELS as u64, what)?;
    crate::files::try_reserve(&mut set.labels, records, what)
}

/// Appends whole records to `set`; `first` is the index of the first one in its file.
fn append_records(set: &mut Dataset, bytes: &[u8], first: usize, name: &str) -> Result<()> {
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = record[0];
        if label as usize >= CIFAR10_CLASSES.len() {
            let i = first + i;
            return Err(Error::Data(format!(
                "{name}: record {i} (byte offset {}) has label {label}, but CIFAR-10 labels are 0..9; the file is corrupt or is not CIFAR-10 (CIFAR-100 binaries have two label bytes)",
                i * CIFAR10_RECORD_BYTES
            )));
        }
        set.labels.push(label as u32);
        set.images.extend_from_slice(&record[1..]);
    }
    Ok(())
}

fn read_error(path: &Path, e: &std::io::Error) -> Error {
    let fix = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "; a CIFAR-10 binary directory needs {} … {} and {}; download the archive again (--download)",
            CIFAR10_TRAIN_FILES[0], CIFAR10_TRAIN_FILES[4], CIFAR10_TEST_FILE
        )
    } else {
        String::new()
    };
    Error::Data(format!("cannot read {}: {}{fix}", path.display(), crate::files::io_cause(e)))
}

/// The length of a batch file, checked to be whole records.
fn batch_length(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if meta.is_dir() {
        return Err(read_error(path, &std::io::Error::from(std::io::ErrorKind::IsADirectory)));
    }
    check_length(meta.len(), &path.display().to_string())?;
    Ok(meta.len())
}

/// Appends the records of the batch file at `path` to `set`, reading it in pieces: no copy of
/// the file is held, so a batch needs only the memory its images take in `set`.
fn read_batch_into(set: &mut Dataset, path: &Path) -> Result<()> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| read_error(path, &e))?;
    // 256 records (about 787 KB) a read.
    let mut chunk = vec![0u8; 256 * CIFAR10_RECORD_BYTES];
    let mut first = 0;
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            match file.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(path, &e)),
            }
        }
        if filled % CIFAR10_RECORD_BYTES != 0 {
            // The file changed length while it was read.
            return Err(Error::Data(format!(
                "{name}: the file ended in the middle of a record (was it being written?)"
            )));
        }
        append_records(set, &chunk[..filled], first, &name)?;
        first += filled / CIFAR10_RECORD_BYTES;
        if filled < chunk.len() {
            return Ok(());
        }
    }
}

/// Reads one CIFAR-10 binary batch file (e.g. `data_batch_1.bin`) as [`load_cifar10_binary`]
/// reads each of its files: in pieces, into memory reserved up front, with the built-in class
/// names. The set holds the same images and labels as [`parse_cifar10_batch`] of the file's
/// bytes. Errors name the file and say what happened (not found, a directory, permission
/// denied, not whole records, a label out of range, too large for memory with its size).
pub fn load_cifar10_batch(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    read_paths(&[path.to_path_buf()], &path.display().to_string())
}

/// Reads the batch files `files` of `dir` into one set, memory for all of them reserved before
/// any is read (so a set too large for memory is refused with its size, not aborted).
fn read_batches(dir: &Path, files: &[&str]) -> Result<Dataset> {
    let paths: Vec<std::path::PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    let what = match &paths[..] {
        [one] => one.display().to_string(),
        _ => format!("the {} batch files in {}", paths.len(), dir.display()),
    };
    read_paths(&paths, &what)
}

/// Reads the batch files `paths` into one set; `what` names them in a memory error.
fn read_paths(paths: &[std::path::PathBuf], what: &str) -> Result<Dataset> {
    let lengths = paths.iter().map(|p| batch_length(p)).collect::<Result<Vec<u64>>>()?;
    let records: u64 = lengths.iter().map(|l| l / CIFAR10_RECORD_BYTES as u64).sum();
    let mut set = empty_set();
    reserve(&mut set, records, what)?;
    for path in paths {
        read_batch_into(&mut set, path)?;
    }
    Ok(set)
}

/// Reads `data_batch_1.bin` … `data_batch_5.bin` (train, in that order) and `test_batch.bin`
/// from `dir`. Class names come from the archive's `batches.meta.txt` when it is there.
///
/// Files are read in pieces into memory reserved up front: the set needs the memory of its
/// images (3073 bytes a record), no more, and a set larger than that is refused with the size
/// it needs. Errors name the file and say what happened (not found, a directory, permission
/// denied, a partial record, a label out of range).
pub fn load_cifar10_binary(dir: impl AsRef<Path>) -> Result<TrainTest> {
    let dir = dir.as_ref();
    let mut train = read_batches(dir, &CIFAR10_TRAIN_FILES)?;
    let mut test = read_batches(dir, &[CIFAR10_TEST_FILE])?;
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

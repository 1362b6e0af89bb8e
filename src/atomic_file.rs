//! All-or-nothing file writes, for checkpoints, weights, metrics and ONNX files: a crash or an
//! error never leaves a half-written file where a good one was.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `path` all or nothing: `write` fills a new temporary file in the same directory
/// (same file system, so the rename cannot turn into a copy), which is flushed, fsynced and
/// renamed over `path`. If `write` fails or panics, or any step after it does, the temporary
/// file is removed and whatever `path` held before is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let fail = |what: &str, e: io::Error| {
        Error::Data(format!("{}: could not {what}: {e} (any previous file there is unchanged)", path.display()))
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Data(format!("{}: not a file path", path.display())))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (mut file, temp) = create_temp(&dir, &file_name).map_err(|e| fail("create a temporary file", e))?;
    let guard = TempGuard(Some(temp.clone()));
    write(&mut file).map_err(|e| fail("write", e))?;
    file.flush().map_err(|e| fail("flush", e))?;
    file.sync_all().map_err(|e| fail("sync", e))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|e| fail("rename the temporary file over it", e))?;
    guard.disarm();
    // The rename is durable only once the directory entry is; not every platform can open a
    // directory to sync it, and the file itself is already safe, so a failure here is not one.
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn create_temp(dir: &Path, file_name: &str) -> io::Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
        // create_new: never truncate a file some other writer is filling.
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((f, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the temporary file on every way out (errors and panics) until disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

//! Files that lose nothing and fail in words: all-or-nothing writes for checkpoints, weights,
//! metrics and ONNX files (a crash or an error never leaves a half-written file where a good
//! one was), whole-file reads that refuse what memory cannot hold instead of aborting, and
//! errors that say what happened (not found, a directory, permission denied, no space, a
//! file-size limit) rather than only that it did.

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
        Error::Data(format!(
            "{}: could not {what}: {} (any previous file there is unchanged)",
            path.display(),
            io_cause(&e)
        ))
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

/// What an I/O error means, in words a user can act on, with the system's own message after.
pub fn io_cause(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let meaning = match e.kind() {
        K::NotFound => "not found (check the path)",
        K::PermissionDenied => "permission denied (check the permissions of the file and its folder)",
        K::IsADirectory => "it is a directory, not a file",
        K::NotADirectory => "a component of the path is a file, not a directory",
        K::StorageFull => "no space left on the device (free some and run again)",
        K::FileTooLarge => "the file would exceed this process's file-size limit (`ulimit -f`)",
        K::ReadOnlyFilesystem => "the file system is read-only",
        K::OutOfMemory => "out of memory",
        K::UnexpectedEof => "the file ended early (truncated?)",
        _ => "I/O error",
    };
    format!("{meaning} [{e}]")
}

/// The error for a failed read of `file` (a path as shown): `FILE: cannot read: ` and what
/// happened ([`io_cause`]).
pub fn read_error(file: impl std::fmt::Display, e: &io::Error) -> Error {
    Error::Data(format!("{file}: cannot read: {}", io_cause(e)))
}

/// Opens `path` for reading, with its length in bytes; a directory, or a path that cannot be
/// opened, is a [`read_error`].
pub fn open(path: &Path) -> Result<(File, u64)> {
    let fail = |e: io::Error| read_error(path.display(), &e);
    let meta = std::fs::metadata(path).map_err(fail)?;
    if meta.is_dir() {
        return Err(fail(io::Error::from(io::ErrorKind::IsADirectory)));
    }
    Ok((File::open(path).map_err(fail)?, meta.len()))
}

/// Reads all of `path`, as [`std::fs::read`] does, but with an error that says what went wrong
/// and names the file, and with the buffer reserved up front ([`try_reserve`]) so that a file
/// larger than memory can hold is refused with its size instead of aborting the process.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let (mut file, len) = open(path)?;
    let mut bytes = Vec::new();
    try_reserve(&mut bytes, len, || format!("{}, a file of {}", path.display(), human_bytes(len)))?;
    file.read_to_end(&mut bytes).map_err(|e| read_error(path.display(), &e))?;
    Ok(bytes)
}

/// Reserves room for `count` more values in `v`, as [`Vec::try_reserve_exact`], with an error
/// instead of an abort when memory cannot hold them: what needed them (`what`, e.g. a file and
/// its size) and how many bytes.
pub fn try_reserve<T>(v: &mut Vec<T>, count: u64, what: impl FnOnce() -> String) -> Result<()> {
    let bytes = count.saturating_mul(std::mem::size_of::<T>() as u64);
    usize::try_from(count).ok().and_then(|n| v.try_reserve_exact(n).ok()).ok_or_else(|| {
        Error::Data(format!(
            "{}: too large for this process's memory: it needs {}, which could not be allocated; use a \
             machine with more memory, raise the process's memory limit (ulimit -v), or split the file",
            what(),
            human_bytes(bytes)
        ))
    })
}

/// A byte count for people: `3.00 GiB (3221225472 bytes)`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (bytes as f64, "bytes");
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{value:.2} {unit} ({bytes} bytes)")
    }
}

/// Makes a file-size limit (`ulimit -f`, `RLIMIT_FSIZE`) fail the write with `EFBIG`, which
/// [`write_atomic`] reports naming the file, instead of killing the process with `SIGXFSZ`
/// (the default) before it can say anything. Idempotent; a no-op off Unix.
pub fn report_file_size_limit() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to ignore installs no handler code; it only
    // changes what the kernel does on SIGXFSZ for this process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Removes the temporary files that [`write_atomic`] left in `dir` when a process was killed
/// mid-write (`.NAME.PID.N.tmp`, whose process no longer runs), so that kills leave nothing
/// behind. A file of a live process, or one that cannot be removed, stays. Returns how many
/// were removed. Unix only (elsewhere nothing is removed).
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_pid(&name) else { continue };
        if !process_runs(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The writer's process id in a temporary file's name, as [`create_temp`] makes them.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.rsplitn(3, '.');
    let (_counter, pid, _file) = (parts.next()?.parse::<u64>().ok()?, parts.next()?, parts.next()?);
    pid.parse().ok()
}

fn process_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        // Signal 0 checks that the process exists without touching it; EPERM means it does
        // (another user's).
        // SAFETY: kill with signal 0 sends nothing.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_their_writers_pid() {
        assert_eq!(temp_pid(".checkpoint.safetensors.4242.7.tmp"), Some(4242));
        assert_eq!(temp_pid(".metrics.csv.17.0.tmp"), Some(17));
        assert_eq!(temp_pid("checkpoint.safetensors"), None);
        assert_eq!(temp_pid(".x.tmp"), None);
    }

    #[test]
    fn a_dead_writers_temporary_file_goes_and_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this id (above Linux's PID_MAX_LIMIT of 2^22).
        let dead = dir.path().join(".checkpoint.safetensors.4194305.0.tmp");
        let live = dir.path().join(format!(".checkpoint.safetensors.{}.0.tmp", std::process::id()));
        let other = dir.path().join("checkpoint.safetensors");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), if cfg!(unix) { 1 } else { 0 });
        assert_eq!(dead.exists(), !cfg!(unix));
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn io_causes_say_what_happened() {
        use io::ErrorKind as K;
        assert!(io_cause(&io::Error::from(K::NotFound)).starts_with("not found"));
        assert!(io_cause(&io::Error::from(K::IsADirectory)).starts_with("it is a directory"));
        assert!(io_cause(&io::Error::from(K::PermissionDenied)).starts_with("permission denied"));
        if cfg!(target_os = "linux") {
            assert!(io_cause(&io::Error::from_raw_os_error(27)).contains("file-size limit"), "EFBIG");
            assert!(io_cause(&io::Error::from_raw_os_error(28)).starts_with("no space left"), "ENOSPC");
        }
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB (3221225472 bytes)");
    }
}

//! `--download DIR`: fetch the CIFAR-10 binary archive, check its MD5, unpack it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use super::{CIFAR10_ARCHIVE_DIR, CIFAR10_RECORD_BYTES, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES};
use crate::{Error, Result};

const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// True when `dir` already holds every batch file with a plausible length, so a repeated
/// `--download` costs nothing.
fn complete(dir: &Path) -> bool {
    CIFAR10_TRAIN_FILES.iter().chain([&CIFAR10_TEST_FILE]).all(|f| {
        std::fs::metadata(dir.join(f))
            .is_ok_and(|m| m.is_file() && m.len() > 0 && m.len() % CIFAR10_RECORD_BYTES as u64 == 0)
    })
}

/// Downloads the CIFAR-10 binary archive from `url` into `dir`, checks that its MD5 is
/// `expected_md5`, and unpacks it, giving `dir/cifar-10-batches-bin` (which [`super::load`]
/// finds when handed `dir`). Does nothing when that folder is already complete. The archive is
/// removed once unpacked, and on any failure, so no half-download is ever mistaken for data.
pub fn download_cifar10(url: &str, dir: impl AsRef<Path>, expected_md5: &str) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let target = dir.join(CIFAR10_ARCHIVE_DIR);
    if complete(&target) {
        return Ok(target);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Data(format!("cannot create download directory {}: {e}", dir.display())))?;
    let part = dir.join(format!("{ARCHIVE_NAME}.part"));
    let result = fetch(url, dir, &part, expected_md5).and_then(|()| unpack(url, dir, &part, &target));
    let _ = std::fs::remove_file(&part);
    result.map(|()| target)
}

fn fetch(url: &str, dir: &Path, part: &Path, expected_md5: &str) -> Result<()> {
    let by_hand = || format!("or download {url} by hand and unpack it into {}", dir.display());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => Error::Data(format!(
            "downloading {url} failed: the server answered HTTP {code}; check the URL and try again later, {}",
            by_hand()
        )),
        e => Error::Data(format!("downloading {url} failed: {e}; check the network connection, {}", by_hand())),
    })?;
    let mut body = response.into_body().into_reader();
    let file = File::create(part).map_err(|e| Error::Data(format!("cannot create {}: {e}", part.display())))?;
    let mut out = BufWriter::new(file);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Data(format!(
                    "downloading {url} broke off: {e}; the partial download was removed: try again, {}",
                    by_hand()
                )))
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::Data(format!("cannot write {}: {e}", part.display())))?;
    }
    out.flush().map_err(|e| Error::Data(format!("cannot write {}: {e}", part.display())))?;
    let got = format!("{:x}", hasher.finalize());
    if !got.eq_ignore_ascii_case(expected_md5.trim()) {
        return Err(Error::Data(format!(
            "{url}: the downloaded archive has MD5 {got} but {} was expected; the download is corrupt or the file changed, so it was removed: try again",
            expected_md5.trim()
        )));
    }
    Ok(())
}

fn unpack(url: &str, dir: &Path, archive: &Path, target: &Path) -> Result<()> {
    // Unpacking into a scratch folder and renaming at the end means a failure halfway never
    // leaves a half-filled `cifar-10-batches-bin` behind.
    let scratch = dir.join(".cifar-10-unpacking");
    let _ = std::fs::remove_dir_all(&scratch);
    let result = unpack_via(url, archive, &scratch, target);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn unpack_via(url: &str, archive: &Path, scratch: &Path, target: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|e| Error::Data(format!("cannot open {}: {e}", archive.display())))?;
    tar::Archive::new(GzDecoder::new(BufReader::new(file))).unpack(scratch).map_err(|e| {
        Error::Data(format!(
            "cannot unpack the archive from {url}: {e}; the file is not a valid .tar.gz (or the disk is full)"
        ))
    })?;
    let unpacked = scratch.join(CIFAR10_ARCHIVE_DIR);
    if !complete(&unpacked) {
        return Err(Error::Data(format!(
            "the archive from {url} does not hold {CIFAR10_ARCHIVE_DIR}/{} … {} and {}; is the URL the CIFAR-10 binary version?",
            CIFAR10_TRAIN_FILES[0], CIFAR10_TRAIN_FILES[4], CIFAR10_TEST_FILE
        )));
    }
    if target.exists() {
        std::fs::remove_dir_all(target)
            .map_err(|e| Error::Data(format!("cannot replace the incomplete {}: {e}", target.display())))?;
    }
    std::fs::rename(&unpacked, target)
        .map_err(|e| Error::Data(format!("cannot move the unpacked data to {}: {e}", target.display())))
}

//! Kill tests for the trainers (`#[path = "support/kill.rs"] mod kill;`): start a trainer,
//! SIGKILL it at chosen moments (while it steps, while a checkpoint or `metrics.csv` is being
//! written), resume, and check that every file stayed readable and that the end is an
//! uninterrupted run's, byte for byte.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The run's files that must end identical to an uninterrupted run's.
pub const RUN_FILES: [&str; 4] = ["checkpoint.safetensors", "best.safetensors", "last.safetensors", "metrics.csv"];

/// The run folder `got` holds [`RUN_FILES`] byte for byte as `want` does.
pub fn assert_same_files(want: &Path, got: &Path) {
    for file in RUN_FILES {
        let (a, b) = (std::fs::read(want.join(file)).unwrap(), std::fs::read(got.join(file)).unwrap());
        assert!(a == b, "{file} differs from the uninterrupted run's");
    }
}

/// Where a kill lands: while steps run, while `checkpoint.safetensors` is being written, or
/// while `metrics.csv` is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KillAt {
    Step,
    CheckpointWrite,
    MetricsWrite,
}

/// Whether `dir` holds a temporary file of an atomic write of `file` (one is being written).
pub fn writing(dir: &Path, file: &str) -> bool {
    let prefix = format!(".{file}.");
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(&prefix) && name.ends_with(".tmp")
    })
}

/// Every file of the run directory reads: the checkpoint and weights through densegpu's
/// readers, metrics.csv as whole rows under its header.
pub fn assert_readable(dir: &Path, kill: usize) {
    let checkpoint = dir.join("checkpoint.safetensors");
    if checkpoint.exists() {
        densegpu::checkpoint::load_checkpoint(&checkpoint).unwrap_or_else(|e| panic!("after kill {kill}: {e}"));
    }
    for file in ["best.safetensors", "last.safetensors"] {
        if dir.join(file).exists() {
            densegpu::checkpoint::load_weights(&dir.join(file)).unwrap_or_else(|e| panic!("after kill {kill}: {e}"));
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.csv")) {
        assert!(text.ends_with('\n'), "after kill {kill}: metrics.csv ends mid-row:\n{text}");
        let columns = text.lines().next().unwrap().split(',').count();
        for (i, line) in text.lines().enumerate() {
            assert_eq!(line.split(',').count(), columns, "after kill {kill}: row {i} of metrics.csv: {line}");
            assert!(i == 0 || line.split(',').next().unwrap().parse::<u64>() == Ok(i as u64), "{text}");
        }
    }
}

/// The step of the run's checkpoint, 0 without one.
pub fn checkpoint_step(dir: &Path) -> u64 {
    match densegpu::checkpoint::load_checkpoint(&dir.join("checkpoint.safetensors")) {
        Ok((_, state, _)) => state.step,
        Err(_) => 0,
    }
}

/// What a kill test saw.
#[derive(Debug, Default)]
pub struct Kills {
    /// Kills at each [`KillAt`], and of those how many found the write under way (its
    /// temporary file was there after the kill).
    pub at: Vec<(KillAt, bool)>,
    /// Steps saved before a kill and not on disk after it (must be 0).
    pub saved_steps_lost: u64,
}

/// Starts `bin args` and kills it with SIGKILL at `at` (see [`KillAt`]); a `Step`
/// kill waits for a new checkpoint (the run is stepping) and then `delay`. Returns whether a
/// kill happened (the run may finish first, successfully), and whether the write it aimed at
/// was under way.
pub fn run_and_kill(bin: &Path, args: &[String], dir: &Path, at: KillAt, delay: std::time::Duration) -> Option<bool> {
    use std::time::{Duration, Instant, SystemTime};
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    let checkpoint = dir.join("checkpoint.safetensors");
    let before = modified(&checkpoint);
    let log = dir.with_extension("stderr");
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .env("DENSEGPU_AUTOTUNE", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut stepping_since = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{} failed: {}", bin.display(), std::fs::read_to_string(&log).unwrap());
            return None;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "{} hangs", bin.display());
        let due = match at {
            KillAt::Step => {
                if stepping_since.is_none() && modified(&checkpoint) != before {
                    stepping_since = Some(Instant::now());
                }
                stepping_since.is_some_and(|t| t.elapsed() >= delay)
            }
            KillAt::CheckpointWrite => writing(dir, "checkpoint.safetensors"),
            KillAt::MetricsWrite => writing(dir, "metrics.csv"),
        };
        if due {
            child.kill().unwrap();
            child.wait().unwrap();
            let aimed = match at {
                KillAt::Step => true,
                KillAt::CheckpointWrite => writing(dir, "checkpoint.safetensors"),
                KillAt::MetricsWrite => writing(dir, "metrics.csv"),
            };
            return Some(aimed);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Kills the trainer `bin` (run with `args`, which checkpoint every step, plus `--save DIR`)
/// `kills` times (seeded: the kinds cycle through [`KillAt`], a step kill's delay is drawn
/// from 0-60 ms), resuming each time with `--resume DIR` alone, and checks every file after
/// every kill, and the end against an uninterrupted run's (same files, byte for byte).
pub fn kill_test(bin: &Path, args: &[String], root: &Path, kills: usize, seed: u64) -> Kills {
    use rand::{Rng, SeedableRng};
    let never = std::time::Duration::from_secs(3600);
    let (whole, killed) = (root.join("whole"), root.join("killed"));
    let with_save = |d: &Path| [args, &["--save".into(), d.display().to_string()]].concat();
    assert_eq!(run_and_kill(bin, &with_save(&whole), &whole, KillAt::Step, never), None);

    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let mut seen = Kills::default();
    let mut args = with_save(&killed);
    let kinds = [KillAt::Step, KillAt::CheckpointWrite, KillAt::MetricsWrite];
    while seen.at.len() < kills {
        let at = kinds[seen.at.len() % kinds.len()];
        let delay = std::time::Duration::from_millis(rng.random_range(0..60));
        let saved = checkpoint_step(&killed);
        let Some(aimed) = run_and_kill(bin, &args, &killed, at, delay) else { break };
        seen.at.push((at, aimed));
        assert_readable(&killed, seen.at.len());
        seen.saved_steps_lost += saved.saturating_sub(checkpoint_step(&killed));
        if killed.join("checkpoint.safetensors").exists() {
            args = vec!["--resume".into(), killed.display().to_string()];
        }
    }
    assert_eq!(seen.at.len(), kills, "the run ended before {kills} kills: {seen:?}");
    // Resumed until done.
    while run_and_kill(bin, &args, &killed, KillAt::Step, never).is_some() {}
    assert_same_files(&whole, &killed);
    assert_eq!(seen.saved_steps_lost, 0, "{seen:?}");
    assert!(!writing(&killed, "checkpoint.safetensors"), "a resumed run removes what a killed one left");
    seen
}

impl Kills {
    /// One line: kills by kind, how many found their write under way, what was lost.
    pub fn summary(&self) -> String {
        let count = |k: KillAt| self.at.iter().filter(|(a, _)| *a == k).count();
        let under_way = |k: KillAt| self.at.iter().filter(|(a, w)| *a == k && *w).count();
        format!(
            "{} kills survived: {} during steps, {} during checkpoint writes ({} of them mid-write), {} during \
             metrics writes ({} mid-write); files ever unreadable: 0; saved steps lost: {}",
            self.at.len(),
            count(KillAt::Step),
            count(KillAt::CheckpointWrite),
            under_way(KillAt::CheckpointWrite),
            count(KillAt::MetricsWrite),
            under_way(KillAt::MetricsWrite),
            self.saved_steps_lost
        )
    }
}

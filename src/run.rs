//! What a training command keeps around the [`Trainer`]'s loop, shared by `train_cifar` and
//! `train_imagenet`: the run directory (`checkpoint.safetensors` at the end of each epoch and
//! every `--checkpoint-every` steps, `best.safetensors`, `last.safetensors`, `metrics.csv`),
//! resuming from it (with the flags that define the run, [`RunFlags`]), the best validation
//! weights, and the stop when training diverges, which names the last good (finite)
//! checkpoint the run keeps.
//!
//! A kill at any moment costs at most the steps since the last checkpoint: every file is
//! replaced atomically ([`crate::files`]), and a resumed run drops the `metrics.csv` rows
//! of epochs its checkpoint had not reached, which it trains (bit-exactly) again.
//!
//! Nothing is saved, or kept as the best, unless all of it is finite: a diverging run can keep a
//! finite loss for a while after its running variances overflow.
//!
//! Native only: it reads and writes files.

use crate::checkpoint::{self, NamedTensor, TrainingState, Weights};
use crate::data::BatchSource;
use crate::densenet::DenseNetConfig;
use crate::profile::StepProfile;
use crate::trainer::{StepReport, Trainer};
use crate::{Error, Result, Session};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The key of [`TrainingState::extra`] that holds a run's [`RunFlags`], as JSON.
pub const RUN_FLAGS: &str = "run_flags";

/// The command-line flags that define a run (batch size, learning rate, schedule, memory mode,
/// data settings, seed...): long name (without the dashes) → its values as given, a switch as
/// `["true"]` or `["false"]`. Saved in every checkpoint ([`RunFlags::record`]) so that
/// `--resume DIR` alone goes on with them; the model itself comes from the checkpoint's config.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunFlags(pub BTreeMap<String, Vec<String>>);

impl RunFlags {
    /// Stores the flags in `state.extra` under [`RUN_FLAGS`].
    pub fn record(&self, state: &mut TrainingState) {
        let json = serde_json::to_string(&self.0).expect("a map of strings serialises");
        state.extra.insert(RUN_FLAGS.to_string(), json);
    }

    /// The flags a checkpoint's state holds, or `None` for a checkpoint written before they
    /// were saved. Errors when the entry is not a map of flag values.
    pub fn saved(state: &TrainingState) -> Result<Option<RunFlags>> {
        let Some(json) = state.extra.get(RUN_FLAGS) else { return Ok(None) };
        serde_json::from_str(json)
            .map(|m| Some(RunFlags(m)))
            .map_err(|e| Error::Data(format!("the checkpoint's `{RUN_FLAGS}` entry is corrupt: {e}")))
    }

    /// Whether two values of a flag say the same (`0.10` is `0.1`).
    pub fn same_values(a: &[String], b: &[String]) -> bool {
        let same = |x: &String, y: &String| match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => x == y,
        };
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
    }
}

/// A run's saved checkpoint (`DIR/checkpoint.safetensors`), read before anything is built so
/// that the model and the flags can come from it.
pub struct SavedRun {
    /// The run directory.
    pub dir: PathBuf,
    /// Its checkpoint file.
    pub path: PathBuf,
    pub weights: Weights,
    pub state: TrainingState,
    /// The momentum buffers, by parameter name.
    pub momentum: Vec<NamedTensor>,
}

impl SavedRun {
    /// Reads `dir/checkpoint.safetensors`. Errors when it is missing (saying what `dir` holds),
    /// unreadable or not a resume checkpoint.
    pub fn open(dir: &Path) -> Result<SavedRun> {
        let path = dir.join("checkpoint.safetensors");
        if dir.is_dir() && !path.exists() {
            return Err(Error::Data(format!(
                "--resume {}: the folder holds no checkpoint.safetensors; a run saves one there at the end of \
                 each epoch (and every --checkpoint-every steps) when started with --save {0}",
                dir.display()
            )));
        }
        let (weights, state, momentum) = checkpoint::load_checkpoint(&path)?;
        Ok(SavedRun { dir: dir.to_path_buf(), path, weights, state, momentum })
    }

    /// The model the checkpoint was saved from. Errors when the file carries no config.
    pub fn config(&self) -> Result<DenseNetConfig> {
        self.weights.model_config().map_err(|e| Error::Data(format!("{}: {e}", self.path.display())))
    }
}

/// Where the run's last good (finite) checkpoint is, for the message when training stops.
#[derive(Clone, Debug, PartialEq)]
pub enum LastGood {
    /// None yet, and none to fall back on.
    Nothing,
    /// The checkpoint this run resumed from, untouched so far, and its step.
    Resumed(PathBuf, u64),
    /// Written by this run, at this step.
    Saved(PathBuf, u64),
}

/// A training run's files and its best validation weights.
///
/// `metrics.csv` has one row per epoch: `epoch`, then the columns given to [`RunFiles::new`],
/// each with 6 decimals (empty where a value is absent).
pub struct RunFiles {
    dir: Option<PathBuf>,
    config: DenseNetConfig,
    metrics_columns: Vec<String>,
    /// The base learning rate, for the hint when training diverges (a tenth of it).
    lr: f32,
    last_good: LastGood,
    best_accuracy: Option<f64>,
    best_weights: Option<Vec<NamedTensor>>,
}

/// What [`RunFiles::resume`] restored.
pub struct Resumed {
    /// The checkpoint's training state (cursor, best validation accuracy, RNG, extra entries).
    pub state: TrainingState,
    /// `false` when the checkpoint stopped mid-epoch without the epoch's running sums, so the
    /// epoch's `metrics.csv` row covers only the steps after resuming.
    pub sums_restored: bool,
}

impl RunFiles {
    /// Files for a run of `config` in `dir` (created if missing), or in memory only when `dir`
    /// is `None`. `metrics_columns` name `metrics.csv`'s columns after `epoch`; `lr` is the
    /// run's base learning rate.
    ///
    /// Errors when `dir` cannot be created. With a `dir`, a file-size limit stops the run with
    /// an error naming the file rather than killing it ([`crate::files::report_file_size_limit`]).
    pub fn new(dir: Option<&Path>, config: &DenseNetConfig, metrics_columns: &[&str], lr: f32) -> Result<RunFiles> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Data(format!("{}: cannot create the folder: {}", dir.display(), crate::files::io_cause(&e)))
            })?;
            // A file-size limit then stops the run with an error naming the file.
            crate::files::report_file_size_limit();
            // What a run killed mid-write left behind.
            crate::files::remove_stale_temps(dir);
        }
        Ok(RunFiles {
            dir: dir.map(Path::to_path_buf),
            config: config.clone(),
            metrics_columns: metrics_columns.iter().map(|c| c.to_string()).collect(),
            lr,
            last_good: LastGood::Nothing,
            best_accuracy: None,
            best_weights: None,
        })
    }

    /// Continues the run saved in `saved` (see [`SavedRun::open`]): loads its checkpoint into
    /// the trainer's session (weights, running statistics, momentum, step), puts the trainer's
    /// cursor where it stopped, so the run goes on bit-exactly, and drops the `metrics.csv`
    /// rows (in this run's directory) of epochs the checkpoint had not finished: a run killed
    /// after writing a row but before its checkpoint trains that epoch again.
    ///
    /// Errors when the checkpoint does not fit the session's model, holds a non-finite value
    /// (it was saved while training diverged), or stopped at a batch this loader's epoch does
    /// not have; or when `metrics.csv` cannot be rewritten.
    pub async fn resume<L: BatchSource>(&mut self, trainer: &mut Trainer<L>, saved: SavedRun) -> Result<Resumed> {
        let SavedRun { path, weights, state, momentum, .. } = saved;
        checkpoint::apply_checkpoint(trainer.session_mut(), &weights, &state, &momentum)
            .await
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        if let Some(what) = checkpoint::non_finite_state(trainer.session()).await? {
            return Err(Error::Data(format!(
                "{}: {what}, so this run cannot go on from it (it was saved while training diverged); start \
                 again with a lower --lr, or from an earlier copy of the checkpoint",
                path.display()
            )));
        }
        let sums_restored = trainer.restore(&state)?;
        self.keep_metrics_rows(state.epoch)?;
        self.last_good = LastGood::Resumed(path, trainer.session().step);
        self.best_accuracy = state.best_valid_accuracy;
        Ok(Resumed { state, sums_restored })
    }

    /// One training step, where a non-finite loss becomes [`RunFiles::stopped`]'s error.
    pub async fn step<L: BatchSource>(&self, trainer: &mut Trainer<L>) -> Result<StepReport> {
        match trainer.step().await {
            Err(e @ Error::Diverged { .. }) => Err(self.stopped(e)),
            other => other,
        }
    }

    /// Refuses to go on from a session holding a non-finite weight, running statistic or
    /// momentum, after the step `report` describes. Call it before saving or validating.
    pub async fn check_finite(&self, session: &Session, report: &StepReport) -> Result<()> {
        match checkpoint::non_finite_state(session).await? {
            Some(what) => Err(self.stopped(format!("after step {} (epoch {}), {what}", report.step, report.epoch + 1))),
            None => Ok(()),
        }
    }

    /// The error that stops a diverging run: why, which checkpoint is kept, and a lower rate to
    /// try.
    pub fn stopped(&self, why: impl std::fmt::Display) -> Error {
        Error::Training(format!(
            "{why}; training stopped, and {}. Try a lower learning rate, e.g. --lr {}",
            self.describe_last_good(),
            flag_number(self.lr / 10.0)
        ))
    }

    /// Records a finished epoch: its `metrics.csv` row (`values` in the column order given to
    /// [`RunFiles::new`]) and, when `accuracy` (the validation accuracy, `None` without a
    /// validation set) is the best so far, the session's weights as the best, in memory and as
    /// `best.safetensors`. Without a validation set every epoch counts as the best. Returns
    /// whether it was.
    pub async fn end_epoch(
        &mut self,
        session: &Session,
        epoch: u64,
        accuracy: Option<f64>,
        values: &[Option<f64>],
    ) -> Result<bool> {
        let improved = match (accuracy, self.best_accuracy) {
            (Some(a), Some(b)) => a > b,
            _ => true,
        };
        if improved {
            let tensors = checkpoint::session_weights(session).await?;
            if let Some(dir) = &self.dir {
                checkpoint::save_weights(&dir.join("best.safetensors"), &self.config, &tensors)?;
            }
            self.best_weights = Some(tensors);
            self.best_accuracy = accuracy.or(self.best_accuracy);
        }
        self.append_metrics(epoch + 1, values)?;
        Ok(improved)
    }

    /// Writes `checkpoint.safetensors` (atomically) with the trainer's position and this run's
    /// best accuracy in `state`, which becomes the last good checkpoint. Nothing without a run
    /// directory.
    pub async fn save_checkpoint<L: BatchSource>(
        &mut self,
        trainer: &Trainer<L>,
        state: &mut TrainingState,
    ) -> Result<()> {
        state.best_valid_accuracy = self.best_accuracy;
        trainer.record(state);
        if let Some(dir) = &self.dir {
            let path = dir.join("checkpoint.safetensors");
            checkpoint::save_checkpoint(&path, trainer.session(), &self.config, state).await?;
            self.last_good = LastGood::Saved(path, trainer.session().step);
        }
        Ok(())
    }

    /// Writes `last.safetensors` and, when no epoch ended in this run or the one it resumed,
    /// `best.safetensors` too, both from the session's weights.
    pub async fn finish(&self, session: &Session) -> Result<()> {
        if let Some(dir) = &self.dir {
            let tensors = checkpoint::session_weights(session).await?;
            checkpoint::save_weights(&dir.join("last.safetensors"), &self.config, &tensors)?;
            if !dir.join("best.safetensors").exists() {
                checkpoint::save_weights(&dir.join("best.safetensors"), &self.config, &tensors)?;
            }
        }
        Ok(())
    }

    /// The best validation accuracy so far, this run's or the resumed run's.
    pub fn best_accuracy(&self) -> Option<f64> {
        self.best_accuracy
    }

    /// The best-validation weights: this run's, else those of the run it resumed (its
    /// `best.safetensors`), else `None`. Errors when that file cannot be read.
    pub fn best_weights(&self) -> Result<Option<Weights>> {
        if let Some(tensors) = &self.best_weights {
            return Ok(Some(Weights {
                config: Some(self.config.clone()),
                tensors: tensors.clone(),
                ..Default::default()
            }));
        }
        match self.dir.as_ref().map(|d| d.join("best.safetensors")).filter(|p| p.exists()) {
            Some(path) => checkpoint::load_weights(&path).map(Some),
            None => Ok(None),
        }
    }

    fn describe_last_good(&self) -> String {
        match (&self.last_good, &self.dir) {
            (LastGood::Saved(path, step), _) => {
                format!("the last good checkpoint, {} (step {step}), is kept", path.display())
            }
            (LastGood::Resumed(path, step), _) => format!(
                "no checkpoint was saved since resuming; the one resumed from, {} (step {step}), is unchanged",
                path.display()
            ),
            (LastGood::Nothing, Some(dir)) => format!(
                "no checkpoint had been saved yet (one is written at the end of each epoch, and every \
                 --checkpoint-every steps), so {} holds none from this run",
                dir.display()
            ),
            (LastGood::Nothing, None) => "nothing was saved (--save DIR keeps a checkpoint every epoch)".into(),
        }
    }

    fn metrics_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("metrics.csv"))
    }

    fn read_metrics(path: &Path) -> Result<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::Data(format!("{}: cannot read: {}", path.display(), crate::files::io_cause(&e)))),
        }
    }

    /// Appends one row, replacing the file atomically: a kill leaves the old rows or the new
    /// ones, never half a row.
    fn append_metrics(&self, epoch: u64, values: &[Option<f64>]) -> Result<()> {
        let Some(path) = self.metrics_path() else { return Ok(()) };
        let mut text = Self::read_metrics(&path)?;
        if text.is_empty() {
            text += &format!("epoch,{}\n", self.metrics_columns.join(","));
        }
        text += &epoch.to_string();
        for v in values {
            text += &format!(",{}", v.map(|v| format!("{v:.6}")).unwrap_or_default());
        }
        text.push('\n');
        crate::files::write_atomic(&path, |f| f.write_all(text.as_bytes()))
    }

    /// Keeps the header and the rows of the first `epochs` epochs.
    fn keep_metrics_rows(&self, epochs: u64) -> Result<()> {
        let Some(path) = self.metrics_path() else { return Ok(()) };
        let text = Self::read_metrics(&path)?;
        let mut kept = String::new();
        for (i, line) in text.lines().enumerate() {
            let epoch = line.split(',').next().and_then(|e| e.parse::<u64>().ok());
            if i == 0 || epoch.is_some_and(|e| e <= epochs) {
                kept += line;
                kept.push('\n');
            }
        }
        if kept == text {
            return Ok(());
        }
        crate::files::write_atomic(&path, |f| f.write_all(kept.as_bytes()))
    }
}

/// Loads `--init` weights into a session built for them, fine-tuning style: a classifier for
/// another number of classes is left out (see
/// [`checkpoint::apply_weights_for_fine_tuning`]). Returns the line that says so, if it was.
/// Errors name the file; `hint` (e.g. "; leave out --model ...") is appended to them.
pub fn apply_init(session: &Session, path: &Path, weights: &Weights, hint: &str) -> Result<Option<String>> {
    let swap = checkpoint::apply_weights_for_fine_tuning(session, weights)
        .map_err(|e| Error::Data(format!("--init {}: {e}{hint}", path.display())))?;
    Ok(swap.map(|swap| format!("--init {}: {swap}", path.display())))
}

/// A number as a command-line flag value: plain when short, in exponent form (1e29) when not.
pub fn flag_number(v: f32) -> String {
    let plain = v.to_string();
    if plain.len() <= 8 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// Sets up the conv kernels of a command's `pass` (see [`crate::tune`]): `kernels` is `auto`
/// (tuned, or the device type's default where nothing is tuned), `register` or `workgroup`
/// (that family, forced); with `auto`, `autotune` says whether to tune. Every command reads
/// and adds to the same cache (`kernels.json`), so `eval` and `predict` use what training
/// measured wherever their shapes are the same. Returns the line a command prints when it
/// timed anything: how many shapes, how long, and what was chosen.
///
/// Errors: an unknown family, or a device error while timing.
pub fn choose_kernels(
    session: &Session,
    pass: crate::Pass,
    kernels: &str,
    autotune: crate::tune::Autotune,
) -> Result<Option<String>> {
    use crate::tune;
    tune::set_kernels(&session.gpu, kernels)?;
    if kernels != "auto" {
        return Ok(None);
    }
    let start = std::time::Instant::now();
    let tuned = tune::tune(session, pass, autotune, &mut |_| {})?;
    Ok(tune::summary(&session.gpu, &tuned, start.elapsed().as_secs_f64())
        .map(|line| format!("{line} (cached for later runs; --autotune off skips this)")))
}

/// A trainer command's `--profile FILE` (with `--profile-step N`): which step of the run to
/// profile, and where its trace goes.
pub struct ProfileRequest {
    path: PathBuf,
}

impl ProfileRequest {
    /// Arms `trainer` to profile the `nth` step of this run (counted from 1, from where a
    /// resumed run starts), when `path` is given. Errors, before anything runs: `nth` is 0, or
    /// the run has fewer steps than `nth`.
    pub fn arm<L: BatchSource>(
        path: Option<&Path>,
        nth: u64,
        trainer: &mut Trainer<L>,
    ) -> Result<Option<ProfileRequest>> {
        let Some(path) = path else { return Ok(None) };
        let start = trainer.session().step;
        let steps = trainer.total_steps().map(|t| t.saturating_sub(start));
        if nth == 0 || steps.is_some_and(|s| s < nth) {
            return Err(Error::Config(format!(
                "--profile-step {nth} is not a step of this run ({} steps): choose one from 1 to {0}; the first \
                 includes compiling the kernels, so 2 or later shows a step as the rest of the run runs",
                steps.unwrap_or(0)
            )));
        }
        trainer.profile_step(start + nth - 1);
        Ok(Some(ProfileRequest { path: path.to_path_buf() }))
    }

    /// After a step: if it was the profiled one, writes its trace and returns the report to
    /// print (see [`save_profile`]). Errors: as [`save_profile`].
    pub fn after_step<L: BatchSource>(&self, trainer: &mut Trainer<L>) -> Result<Option<String>> {
        match trainer.take_profile() {
            Some(profile) => save_profile(&trainer.session().gpu, &profile, &self.path).map(Some),
            None => Ok(None),
        }
    }
}

/// Finishes a step profile for a command (`--profile FILE`): measures the adapter's ceiling
/// ([`crate::peak::measure`]) for the roofline, writes the Chrome trace to `path` atomically
/// (open it in Perfetto or chrome://tracing), and returns the report to print
/// ([`StepProfile::report`]). Errors: the file cannot be written (named), or a device error
/// while measuring the ceiling.
pub fn save_profile(gpu: &crate::Gpu, profile: &StepProfile, path: &Path) -> Result<String> {
    let peak = crate::block_on(crate::peak::measure(gpu))?;
    let text = serde_json::to_string(&profile.chrome_trace()).expect("a trace is plain JSON");
    crate::files::write_atomic(path, |f| f.write_all(text.as_bytes()))?;
    Ok(format!(
        "{}Chrome trace written to {} (open it in Perfetto or chrome://tracing)",
        profile.report(Some(&peak)),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_numbers_stay_short() {
        assert_eq!(flag_number(0.01), "0.01");
        assert_eq!(flag_number(1e29), "1e29");
    }

    #[test]
    fn metrics_rows_follow_the_columns_and_leave_absent_values_empty() {
        let dir = tempfile::tempdir().unwrap();
        let config = DenseNetConfig::cifar_bc(10, 4, 3).unwrap();
        let files = RunFiles::new(Some(dir.path()), &config, &["train_loss", "valid_accuracy"], 0.1).unwrap();
        files.append_metrics(1, &[Some(0.5), None]).unwrap();
        files.append_metrics(2, &[Some(0.25), Some(0.75)]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert_eq!(text, "epoch,train_loss,valid_accuracy\n1,0.500000,\n2,0.250000,0.750000\n");
    }

    #[test]
    fn the_stop_names_the_last_good_checkpoint() {
        let config = DenseNetConfig::cifar_bc(10, 4, 3).unwrap();
        let mut files = RunFiles::new(None, &config, &[], 0.5).unwrap();
        let e = files.stopped("loss is NaN").to_string();
        assert!(e.contains("nothing was saved") && e.contains("--lr 0.05"), "{e}");
        files.last_good = LastGood::Saved(PathBuf::from("runs/a/checkpoint.safetensors"), 40);
        let e = files.stopped("loss is NaN").to_string();
        assert!(e.contains("runs/a/checkpoint.safetensors (step 40), is kept"), "{e}");
    }
}

//! The training loop every front end drives: the CIFAR trainer (`examples/train_cifar.rs`) and
//! the browser demo (`web/`) both step one [`Trainer`] and add only their own reporting
//! (progress bar, metrics file, checkpoints; JSON for the page).
//!
//! A [`Trainer`] owns a [`Session`] and the [`BatchLoader`] that feeds it, and keeps where the
//! run stands: the cursor (epoch, batch within the epoch), the learning-rate schedule, the
//! length of the run, and the running sums of the epoch in progress. [`Trainer::step`] trains
//! on the next batch. The cursor and sums go into a checkpoint's [`TrainingState`] with
//! [`Trainer::record`] and come back with [`Trainer::restore`], so a resumed run sees the same
//! batches, learning rates and epoch summaries as one that never stopped.

use crate::checkpoint::TrainingState;
use crate::data::{BatchLoader, BatchSource, Dataset};
use crate::profile::StepProfile;
use crate::train::Evaluation;
use crate::{Error, Result, Session, SgdHyper};

/// Keys of a [`TrainingState::extra`] that hold the running sums of the epoch in progress (see
/// [`Trainer::record`]), so that a resumed epoch's summary covers the whole epoch. The names
/// date from when the CIFAR trainer alone wrote them; checkpoints it saved still resume.
pub const EPOCH_LOSS_SUM: &str = "train_cifar.epoch_loss_sum";
/// See [`EPOCH_LOSS_SUM`].
pub const EPOCH_CORRECT: &str = "train_cifar.epoch_correct";
/// See [`EPOCH_LOSS_SUM`].
pub const EPOCH_SEEN: &str = "train_cifar.epoch_seen";

/// Wall time where the platform has a clock: `std::time::Instant` panics on wasm32, so the
/// browser measures nothing.
struct Stopwatch(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch(
            #[cfg(not(target_arch = "wasm32"))]
            std::time::Instant::now(),
        )
    }

    fn elapsed(&self) -> std::time::Duration {
        #[cfg(not(target_arch = "wasm32"))]
        return self.0.elapsed();
        #[cfg(target_arch = "wasm32")]
        std::time::Duration::ZERO
    }
}

/// Step decay: the SGD hyper-parameters of every step, with the learning rate multiplied by
/// 0.1 at each milestone passed.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// The hyper-parameters of step 0; only the learning rate changes later.
    pub base: SgdHyper,
    /// Steps (counted from 0 over the whole run) from which the learning rate is 0.1 times
    /// lower, one drop for each milestone at or below the step. Any order; empty for a constant
    /// learning rate.
    pub milestones: Vec<u64>,
}

impl LrSchedule {
    /// `base` at every step.
    pub fn constant(base: SgdHyper) -> LrSchedule {
        LrSchedule { base, milestones: Vec::new() }
    }

    /// The reference recipe's decay: a drop at each of `fractions` (each in [0, 1]; 0.5 and
    /// 0.75 in the DenseNet paper) of a run of `run_steps` steps, rounded down to a step.
    pub fn step_decay(base: SgdHyper, fractions: &[f64], run_steps: u64) -> LrSchedule {
        LrSchedule { base, milestones: fractions.iter().map(|f| (f * run_steps as f64) as u64).collect() }
    }

    /// The hyper-parameters of step `step` (the session's step counter before the step runs).
    pub fn at(&self, step: u64) -> SgdHyper {
        let drops = self.milestones.iter().filter(|&&m| step >= m).count() as i32;
        SgdHyper { lr: self.base.lr * 0.1f32.powi(drops), ..self.base }
    }
}

/// Running sums over the batches of one epoch trained so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochSums {
    /// Σ batch mean loss × batch size (nats).
    pub loss_sum: f64,
    /// Images the model classified correctly, each as the batch's forward pass saw it.
    pub correct: u64,
    /// Images trained on.
    pub seen: u64,
}

impl EpochSums {
    /// Mean loss per image so far (nats); 0 before any image.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// Fraction of the images so far classified correctly, in [0, 1]; 0 before any image.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

/// What one [`Trainer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// SGD steps the session has taken, this one included.
    pub step: u64,
    /// The epoch of the batch trained on, counted from 0.
    pub epoch: u64,
    /// The batch's index within its epoch, from 0.
    pub batch: usize,
    /// Images in the batch.
    pub images: usize,
    /// The batch's mean cross-entropy loss before the update (nats).
    pub loss: f32,
    /// Images of the batch classified correctly before the update.
    pub correct: u32,
    /// The running sums of `epoch`, this batch included.
    pub sums: EpochSums,
    /// This batch was the last of its epoch: `sums` is the whole epoch's, and the trainer has
    /// moved on to batch 0 of the next epoch with fresh sums.
    pub epoch_ended: bool,
    /// Time this step spent waiting for its batch from the loader (the loader's `next()`,
    /// including starting the epoch's iterator), part of the step's wall time. Zero in the
    /// browser, where `std::time::Instant` has no clock (it panics on wasm32).
    pub data_wait: std::time::Duration,
}

/// One training run: a [`Session`], the loader that feeds it (a [`BatchLoader`] or another
/// [`BatchSource`], such as a streamed image folder), the learning-rate schedule, how long the
/// run is, and where it stands.
pub struct Trainer<L: BatchSource = BatchLoader> {
    session: Session,
    loader: L,
    schedule: LrSchedule,
    epochs: Option<u64>,
    max_steps: Option<u64>,
    epoch: u64,
    batch_in_epoch: usize,
    sums: EpochSums,
    /// The batches of `epoch` from `batch_in_epoch` on, prepared ahead when the loader
    /// prefetches; created at the first step of an epoch (or after a resume, or a failed step).
    batches: Option<L::Epoch>,
    /// The session step to profile (see [`Trainer::profile_step`]), and its profile once taken.
    profile_at: Option<u64>,
    profile: Option<StepProfile>,
}

impl<L: BatchSource> Trainer<L> {
    /// A run that starts at batch 0 of epoch 0 (see [`restore`](Self::restore) to go on from a
    /// checkpoint) and runs until told otherwise ([`with_epochs`](Self::with_epochs),
    /// [`with_max_steps`](Self::with_max_steps)).
    ///
    /// Errors when the loader's batch size is not the session's, or when the training set is
    /// smaller than one batch (the loader drops a short last batch, so an epoch would be empty).
    pub fn new(session: Session, loader: L, schedule: LrSchedule) -> Result<Trainer<L>> {
        let batch_size = loader.batch_size();
        if batch_size != session.graph.batch as usize {
            return Err(Error::Config(format!(
                "the loader draws batches of {batch_size}, but the model was built for batches of {}",
                session.graph.batch
            )));
        }
        if loader.batches_per_epoch() == 0 {
            return Err(Error::Config(format!(
                "the training set ({} images) is smaller than one batch of {batch_size}",
                loader.images()
            )));
        }
        Ok(Trainer {
            session,
            loader,
            schedule,
            epochs: None,
            max_steps: None,
            epoch: 0,
            batch_in_epoch: 0,
            sums: EpochSums::default(),
            batches: None,
            profile_at: None,
            profile: None,
        })
    }

    /// Profiles the step that takes the session from `step` to `step + 1` steps
    /// ([`Session::profile_train_step`], with the loader's wait for its batch): it trains as
    /// any other step, and [`Trainer::take_profile`] returns its profile afterwards.
    pub fn profile_step(&mut self, step: u64) {
        self.profile_at = Some(step);
    }

    /// The profile of the step chosen by [`Trainer::profile_step`], once it has run.
    pub fn take_profile(&mut self) -> Option<StepProfile> {
        self.profile.take()
    }

    /// Ends the run after `epochs` whole epochs.
    pub fn with_epochs(mut self, epochs: u64) -> Trainer<L> {
        self.epochs = Some(epochs);
        self
    }

    /// Ends the run once the session has taken `max_steps` steps in all (counting any taken
    /// before a resume), even mid-epoch; `None` sets no such limit.
    pub fn with_max_steps(mut self, max_steps: Option<u64>) -> Trainer<L> {
        self.max_steps = max_steps;
        self
    }

    /// The session's step count at which the run ends: the smaller of its epochs' steps and
    /// its step limit; `None` for an open-ended run.
    pub fn total_steps(&self) -> Option<u64> {
        let epochs = self.epochs.map(|e| e.saturating_mul(self.batches_per_epoch() as u64));
        match (epochs, self.max_steps) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The run has taken all its epochs or steps: [`step`](Self::step) would refuse.
    pub fn finished(&self) -> bool {
        self.epochs.is_some_and(|e| self.epoch >= e) || self.total_steps().is_some_and(|t| self.session.step >= t)
    }

    /// Trains on the next batch with this step's learning rate, then moves the cursor on (to
    /// the next epoch after its last batch) and adds the batch to the epoch's sums.
    ///
    /// Errors: [`Error::Diverged`] when the loss is NaN or infinite, or the step made a
    /// gradient, weight or running statistic so (detected on the device in the same step),
    /// naming the step, the epoch and the first tensor affected; the step has run (the session's counter and the cursor have moved on) but the
    /// sums leave the batch out, and the weights are most likely no longer finite. Any error
    /// of [`Session::train_step`], or of the loader making the batch, as is, with the cursor
    /// where it was. [`Error::Config`] once the run is [`finished`](Self::finished).
    pub async fn step(&mut self) -> Result<StepReport> {
        if self.finished() {
            return Err(Error::Config(format!(
                "the run is over: it has taken its {} steps ({} epochs)",
                self.session.step, self.epoch
            )));
        }
        let (epoch, start) = (self.epoch, self.batch_in_epoch);
        let waiting = Stopwatch::start();
        let batches = self.batches.get_or_insert_with(|| self.loader.epoch_from(epoch, start));
        let next = batches.next().expect("the cursor is always before the end of its epoch");
        let data_wait = waiting.elapsed();
        let batch = match next {
            Ok(b) => b,
            Err(e) => {
                // A batch that could not be made (a bad file): the cursor stays on it.
                self.batches = None;
                return Err(e);
            }
        };
        debug_assert_eq!((batch.epoch, batch.index), (epoch, start));
        let sgd = self.schedule.at(self.session.step);
        let stepped = if self.profile_at == Some(self.session.step) {
            let profiled = self.session.profile_train_step(&batch.images, &batch.labels, &sgd).await;
            profiled.map(|(result, mut profile)| {
                profile.data_wait = data_wait.as_secs_f64();
                self.profile = Some(profile);
                result
            })
        } else {
            self.session.train_step(&batch.images, &batch.labels, &sgd).await
        };
        let result = match stepped {
            Ok(r) => r,
            Err(e) => {
                // The batch was taken from the iterator: start it again at the cursor.
                self.batches = None;
                return Err(e);
            }
        };
        let finite = result.loss.is_finite() && result.diverged.is_none();
        if finite {
            self.sums.loss_sum += result.loss as f64 * batch.len() as f64;
            self.sums.correct += result.correct as u64;
            self.sums.seen += batch.len() as u64;
        }
        let sums = self.sums;
        self.batch_in_epoch += 1;
        let epoch_ended = self.batch_in_epoch >= self.batches_per_epoch();
        if epoch_ended {
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.sums = EpochSums::default();
            self.batches = None;
        }
        if !finite {
            let cause = result.diverged.map(|d| d.to_string());
            return Err(Error::Diverged { loss: result.loss, cause, step: self.session.step, epoch });
        }
        Ok(StepReport {
            step: self.session.step,
            epoch,
            batch: batch.index,
            images: batch.len(),
            loss: result.loss,
            correct: result.correct,
            sums,
            epoch_ended,
            data_wait,
        })
    }

    /// Eval-mode accuracy and mean loss over every image of `set` (see
    /// [`crate::train::evaluate`]); frees the inference arena after, the training one stays.
    pub async fn evaluate(&mut self, set: &Dataset) -> Result<Evaluation> {
        crate::train::evaluate(&mut self.session, set).await
    }

    /// Writes where the run stands into `state` for a checkpoint: the step count, the cursor,
    /// the next step's hyper-parameters, and the epoch's running sums (under [`EPOCH_LOSS_SUM`],
    /// [`EPOCH_CORRECT`] and [`EPOCH_SEEN`] in `extra`). Leaves the rest of `state` (RNG, best
    /// validation accuracy, other `extra` entries) to the caller.
    pub fn record(&self, state: &mut TrainingState) {
        state.step = self.session.step;
        state.epoch = self.epoch;
        state.batch_in_epoch = self.batch_in_epoch as u64;
        state.sgd = self.next_sgd();
        state.extra.insert(EPOCH_LOSS_SUM.into(), self.sums.loss_sum.to_string());
        state.extra.insert(EPOCH_CORRECT.into(), self.sums.correct.to_string());
        state.extra.insert(EPOCH_SEEN.into(), self.sums.seen.to_string());
    }

    /// Puts the cursor and the epoch's running sums where a checkpoint's `state` says, as
    /// [`record`](Self::record) wrote them. The session's side (weights, momentum, the step
    /// counter) is [`crate::checkpoint::apply_checkpoint`]'s to restore.
    ///
    /// Returns `false` when the checkpoint stopped mid-epoch but holds no running sums (one
    /// written by another program): the epoch's sums then cover only the steps from here on.
    /// Errors when a sum is not a number, or when the checkpoint's batch is past the end of an
    /// epoch of this loader (it was saved with another batch size or data set).
    pub fn restore(&mut self, state: &TrainingState) -> Result<bool> {
        let per_epoch = self.batches_per_epoch();
        if state.batch_in_epoch >= per_epoch as u64 {
            return Err(Error::Data(format!(
                "the checkpoint stopped after batch {} of epoch {}, but an epoch of this data has {per_epoch} \
                 batches; resume with the batch size and data it was saved with",
                state.batch_in_epoch,
                state.epoch + 1
            )));
        }
        let mut sums = EpochSums::default();
        let mut restored = true;
        if state.batch_in_epoch > 0 {
            let saved = |key: &str| state.extra.get(key).map(String::as_str);
            match (saved(EPOCH_LOSS_SUM), saved(EPOCH_CORRECT), saved(EPOCH_SEEN)) {
                (Some(l), Some(c), Some(n)) => {
                    let bad = |key: &str| Error::Data(format!("the checkpoint's `{key}` is not a number"));
                    sums.loss_sum = l.parse().map_err(|_| bad(EPOCH_LOSS_SUM))?;
                    sums.correct = c.parse().map_err(|_| bad(EPOCH_CORRECT))?;
                    sums.seen = n.parse().map_err(|_| bad(EPOCH_SEEN))?;
                }
                _ => restored = false,
            }
        }
        self.epoch = state.epoch;
        self.batch_in_epoch = state.batch_in_epoch as usize;
        self.sums = sums;
        self.batches = None;
        Ok(restored)
    }

    /// The hyper-parameters the next step will use.
    pub fn next_sgd(&self) -> SgdHyper {
        self.schedule.at(self.session.step)
    }

    /// The epoch the next step trains in, counted from 0.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Batches of the current epoch already trained on.
    pub fn batch_in_epoch(&self) -> usize {
        self.batch_in_epoch
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    /// The running sums of the current epoch.
    pub fn sums(&self) -> EpochSums {
        self.sums
    }

    /// The learning-rate schedule, over the session's step counter.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// The loader the batches come from.
    pub fn loader(&self) -> &L {
        &self.loader
    }

    /// The session being trained (`step` is the number of steps taken).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session, to load weights, prepare or release arenas, or run inference between
    /// steps. Its step counter picks the learning rate and ends the run.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The session, for what comes after training (testing, export).
    pub fn into_session(self) -> Session {
        self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_drops_tenfold_at_each_milestone() {
        let base = SgdHyper::densenet_cifar();
        let s = LrSchedule::step_decay(base, &[0.5, 0.75], 100);
        assert_eq!(s.milestones, [50, 75]);
        let lrs: Vec<f32> = [0, 49, 50, 74, 75, 1000].iter().map(|&step| s.at(step).lr).collect();
        let want = [0.1, 0.1, 0.1 * 0.1f32.powi(1), 0.1 * 0.1f32.powi(1), 0.1 * 0.1f32.powi(2), 0.1 * 0.1f32.powi(2)];
        assert_eq!(lrs, want);
        assert_eq!(SgdHyper { lr: base.lr, ..s.at(80) }, base, "only the learning rate changes");
        // A constant schedule gives the base values, bit for bit.
        let odd = SgdHyper { lr: 0.123_456_79, ..base };
        assert_eq!(LrSchedule::constant(odd).at(1 << 40).lr.to_bits(), odd.lr.to_bits());
    }

    #[test]
    fn epoch_sums_average_per_image_and_are_zero_when_empty() {
        assert_eq!((EpochSums::default().mean_loss(), EpochSums::default().accuracy()), (0.0, 0.0));
        let s = EpochSums { loss_sum: 6.0, correct: 3, seen: 4 };
        assert_eq!((s.mean_loss(), s.accuracy()), (1.5, 0.75));
    }

    #[test]
    fn a_divergence_names_the_tensor_the_step_and_the_epoch_from_1() {
        let e = Error::Diverged { loss: f32::NAN, cause: None, step: 7, epoch: 0 };
        assert_eq!(e.to_string(), "the loss became NaN at step 7 (epoch 1)");
        let cause = crate::Divergence {
            tensor: "features.conv0.weight".into(),
            source: crate::DivergenceSource::Gradient,
            value: f32::INFINITY,
        };
        let e = Error::Diverged { loss: 1.5e30, cause: Some(cause.to_string()), step: 3, epoch: 1 };
        assert_eq!(
            e.to_string(),
            "the gradient of `features.conv0.weight` became inf at step 3 (epoch 2), where the loss was 1.5e30"
        );
    }
}

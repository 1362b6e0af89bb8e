//! One error type for the crate. Every message names the problem and, where there is one,
//! the fix.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NoAdapter(String),
    #[error("GPU device error: {0}")]
    Device(String),
    #[error("GPU validation error (a densegpu bug, please report it): {0}")]
    Validation(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("too large for this device: {0}")]
    TooLarge(String),
    #[error("invalid shape: {0}")]
    Shape(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A dataset, weights or checkpoint file that is missing, unreadable or malformed. The
    /// message names the file and the problem.
    #[error("{0}")]
    Data(String),
    /// Training diverged or could not go on; the message says what to change.
    #[error("{0}")]
    Training(String),
    /// A training step's loss was NaN or infinite ([`crate::Trainer::step`]): training has
    /// diverged. `step` counts the steps taken, this one included; `epoch` counts from 0 and
    /// the message counts it from 1. A front end adds what to change (a lower learning rate).
    #[error("the loss became {loss} at step {step} (epoch {})", epoch + 1)]
    NonFiniteLoss { loss: f32, step: u64, epoch: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

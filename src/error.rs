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
    /// A training step diverged ([`crate::Trainer::step`]): its loss was NaN or infinite, or
    /// it made a gradient, a parameter or a running statistic so (`cause`, from
    /// [`crate::Divergence`]'s message, names the first such tensor). `step` counts the steps
    /// taken, this one included; `epoch` counts from 0 and the message counts it from 1. A front
    /// end adds what to change (a lower learning rate).
    #[error("{}", diverged_message(*loss, cause.as_deref(), *step, *epoch))]
    Diverged { loss: f32, cause: Option<String>, step: u64, epoch: u64 },
}

fn diverged_message(loss: f32, cause: Option<&str>, step: u64, epoch: u64) -> String {
    // A diverging loss can be 1e30: print it in scientific notation, not 31 digits.
    let loss = if loss.is_finite() && loss.abs() >= 1e6 { format!("{loss:e}") } else { loss.to_string() };
    let at = format!("at step {step} (epoch {})", epoch + 1);
    match cause {
        Some(cause) => format!("{cause} {at}, where the loss was {loss}"),
        None => format!("the loss became {loss} {at}"),
    }
}

pub type Result<T> = std::result::Result<T, Error>;

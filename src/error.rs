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
}

pub type Result<T> = std::result::Result<T, Error>;

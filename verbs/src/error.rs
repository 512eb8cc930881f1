//! The verbs API's error type.

pub use ferroce_transport::engine::VerbsError;
use ferroce_transport::io::thread::EngineStopped;

/// Why a verbs call failed. Work completions carry their own status
/// ([`WcStatus`](crate::WcStatus)); this is for calls the device refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused the command (ibverbs `EINVAL`, `ENOMEM`, `EBUSY`, …).
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// The device's engine thread has stopped.
    #[error("the device has stopped")]
    DeviceStopped,
    /// Opening the device failed (binding a socket, spawning the thread).
    #[error("device I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An argument the API checks itself (say, a range outside a memory region).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl From<EngineStopped> for Error {
    fn from(_: EngineStopped) -> Error {
        Error::DeviceStopped
    }
}

/// Result of a verbs call.
pub type Result<T> = std::result::Result<T, Error>;

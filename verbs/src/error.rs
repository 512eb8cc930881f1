//! The verbs API's error type.

use ferroce_transport::control::ReplyError;
pub use ferroce_transport::engine::VerbsError;
use ferroce_transport::io::thread::EngineStopped;

use crate::cq::PollTimeout;

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
    /// The device answered a command with a reply of another kind (its message kind):
    /// a bug of the backend, or a daemon of another build.
    #[error("the device answered with an unexpected reply (kind {0:#06x})")]
    UnexpectedReply(u16),
    /// Opening the device failed (binding a socket, spawning the thread).
    #[error("device I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An argument the API checks itself (say, a range outside a memory region).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// [`CompletionQueue::poll_wait`](crate::CompletionQueue::poll_wait) ran out of time;
    /// the completions that arrived are inside.
    #[error(transparent)]
    Timeout(#[from] PollTimeout),
    /// [`QueuePair::post_send_list`](crate::QueuePair::post_send_list) refused one
    /// request of the list (nothing of the list was posted).
    #[error(transparent)]
    PostList(Box<PostListError>),
}

/// Request `bad_wr` of a list given to
/// [`QueuePair::post_send_list`](crate::QueuePair::post_send_list) was refused, for
/// `error` (ibverbs' `bad_wr`, as an index into the list). The list is checked whole
/// before any of it is posted, so none of it was: fix or drop that request and post the
/// list again. A refusal of the QP itself (not ready to send, device stopped) names
/// request 0.
#[derive(Debug, thiserror::Error)]
#[error("work request {bad_wr} of the list: {error}")]
#[non_exhaustive]
pub struct PostListError {
    /// Index of the refused request in the list.
    pub bad_wr: usize,
    /// Why it was refused.
    pub error: Error,
}

impl From<PostListError> for Error {
    fn from(error: PostListError) -> Error {
        Error::PostList(Box::new(error))
    }
}

impl From<EngineStopped> for Error {
    fn from(_: EngineStopped) -> Error {
        Error::DeviceStopped
    }
}

impl From<ReplyError> for Error {
    fn from(error: ReplyError) -> Error {
        match error {
            ReplyError::Verbs(error) => Error::Verbs(error),
            ReplyError::Unexpected(kind) => Error::UnexpectedReply(kind),
        }
    }
}

/// Result of a verbs call.
pub type Result<T> = std::result::Result<T, Error>;

//! Errors of verbs commands. A remote peer's misbehaviour is never one of these: it
//! becomes a NAK, a counted drop or a completion status.

use super::namespace::QuotaResource;
use super::qp::{QpState, QpType};

/// Why a verbs command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// An argument is out of range or inconsistent (ibverbs `EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A configured device limit would be exceeded (ibverbs `ENOMEM`/`EINVAL`).
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The namespace's quota of `resource` would be passed (the daemon sets quotas per
    /// tenant; see [`Quotas`](super::namespace::Quotas)).
    #[error("quota exceeded: at most {limit} {resource} in this namespace")]
    QuotaExceeded {
        /// Which resource.
        resource: QuotaResource,
        /// The namespace's quota of it.
        limit: u64,
    },
    /// No such namespace, PD, MR, CQ, SRQ or QP in the namespace.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The identifier or address is already in use.
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
    /// The resource is still used by another one (ibverbs `EBUSY`).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The QP cannot move between these states.
    #[error("invalid state transition {from:?} -> {to:?} for {qp_type:?}")]
    InvalidStateTransition {
        /// QP type.
        qp_type: QpType,
        /// Current state.
        from: QpState,
        /// Requested state.
        to: QpState,
    },
    /// The transition requires an attribute that was not given.
    #[error("missing QP attribute {0} for this transition")]
    MissingAttribute(&'static str),
    /// The transition does not allow an attribute that was given.
    #[error("QP attribute {0} not allowed in this transition")]
    AttributeNotAllowed(&'static str),
    /// The command is not valid in the QP's current state (say, post_send before RTS).
    #[error("not allowed in QP state {0:?}")]
    InvalidState(QpState),
    /// A key, PD or access-flag check failed for the owner's own access.
    #[error("access denied: {0}")]
    AccessDenied(&'static str),
    /// The work queue is full.
    #[error("work queue full")]
    QueueFull,
}

/// Result of a verbs command.
pub type Result<T> = core::result::Result<T, VerbsError>;

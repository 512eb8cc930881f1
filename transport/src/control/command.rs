//! The operations ([`Command`]) and their answers ([`Reply`]).

use std::net::IpAddr;

use ferroce_wire::Qpn;

use crate::engine::{
    AccessFlags, CompletionQueueId, Counters, DeviceAttributes, Lkey, MemoryRegion, PathMtu,
    ProtectionDomain, QpAttr, QpInfo, QpInitAttr, RecvWr, SharedReceiveQueueId, SrqAttr,
    VerbsError,
};
use crate::io::ThreadCounters;

/// A control operation on one namespace's resources (which namespace is the
/// executor's business: the embedded device's, or the one a daemon connection attached
/// to). Each is answered by one [`Reply`]: the one named in its documentation, or
/// [`Reply::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Device attributes and limits (`ibv_query_device`) → [`Reply::Device`].
    QueryDevice,
    /// The port's state (`ibv_query_port`) → [`Reply::Port`].
    QueryPort,
    /// The namespace's GIDs, in GID-table order (`ibv_query_gid`) → [`Reply::Gids`].
    QueryGids,
    /// The engine's counters and the engine thread's → [`Reply::Counters`].
    QueryCounters,
    /// `ibv_alloc_pd` → [`Reply::Pd`].
    AllocPd,
    /// `ibv_dealloc_pd` → [`Reply::Done`].
    DeallocPd {
        /// The PD.
        pd: ProtectionDomain,
    },
    /// A zeroed region of `length` bytes the engine owns (`ibv_reg_mr` on device
    /// memory) → [`Reply::Mr`].
    RegMr {
        /// Its PD.
        pd: ProtectionDomain,
        /// Bytes.
        length: u64,
        /// Access flags.
        access: AccessFlags,
    },
    /// `ibv_dereg_mr` → [`Reply::Done`].
    DeregMr {
        /// The region's local key.
        lkey: Lkey,
    },
    /// Copies `data` into the region `lkey` at address `addr` (the safe
    /// `MemoryRegion::write`) → [`Reply::Done`].
    MrWrite {
        /// The region.
        lkey: Lkey,
        /// Address of the first byte written.
        addr: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Copies `length` bytes at `addr` out of the region `lkey` → [`Reply::Bytes`].
    MrRead {
        /// The region.
        lkey: Lkey,
        /// Address of the first byte read.
        addr: u64,
        /// Bytes to read.
        length: u64,
    },
    /// `ibv_create_cq` with `cqe` entries → [`Reply::Cq`].
    CreateCq {
        /// Entries.
        cqe: u32,
    },
    /// `ibv_destroy_cq` → [`Reply::Done`]. The executor stops delivering the CQ's
    /// completions anywhere.
    DestroyCq {
        /// The CQ.
        cq: CompletionQueueId,
    },
    /// `ibv_create_qp` → [`Reply::Qp`].
    CreateQp {
        /// What the QP is made of.
        init: QpInitAttr,
    },
    /// `ibv_modify_qp` (the set fields of `attr` are the mask) → [`Reply::Done`].
    ModifyQp {
        /// The QP.
        qpn: Qpn,
        /// New attributes.
        attr: QpAttr,
    },
    /// `ibv_query_qp` → [`Reply::QpInfo`].
    QueryQp {
        /// The QP.
        qpn: Qpn,
    },
    /// `ibv_destroy_qp` → [`Reply::Done`].
    DestroyQp {
        /// The QP.
        qpn: Qpn,
    },
    /// `ibv_create_srq` → [`Reply::Srq`].
    CreateSrq {
        /// Its PD.
        pd: ProtectionDomain,
        /// Sizes and limit.
        attr: SrqAttr,
    },
    /// Arms the limit event (`ibv_modify_srq` with `IBV_SRQ_LIMIT`; 0 disarms) →
    /// [`Reply::Done`].
    ModifySrq {
        /// The SRQ.
        srq: SharedReceiveQueueId,
        /// The new limit.
        srq_limit: u32,
    },
    /// `ibv_query_srq` → [`Reply::SrqAttr`].
    QuerySrq {
        /// The SRQ.
        srq: SharedReceiveQueueId,
    },
    /// `ibv_destroy_srq` → [`Reply::Done`].
    DestroySrq {
        /// The SRQ.
        srq: SharedReceiveQueueId,
    },
    /// `ibv_post_srq_recv`, refused synchronously when the SRQ is full →
    /// [`Reply::Done`].
    PostSrqRecv {
        /// The SRQ.
        srq: SharedReceiveQueueId,
        /// The receive.
        wr: RecvWr,
    },
}

/// What `query_port` needs from the engine (the rest of `ibv_port_attr` is constant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStatus {
    /// The namespace's addresses are on a working link.
    pub active: bool,
    /// The port's active MTU.
    pub active_mtu: PathMtu,
    /// Entries in the namespace's GID table.
    pub gid_tbl_len: u32,
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// The command was refused.
    Error(VerbsError),
    /// Device attributes.
    Device(DeviceAttributes),
    /// Port state.
    Port(PortStatus),
    /// GIDs.
    Gids(Vec<IpAddr>),
    /// Counters.
    Counters {
        /// The engine's (boxed: the largest reply by far, and a rare one).
        engine: Box<Counters>,
        /// The engine thread's.
        thread: ThreadCounters,
    },
    /// A new PD.
    Pd(ProtectionDomain),
    /// A new memory region.
    Mr(MemoryRegion),
    /// Bytes read.
    Bytes(Vec<u8>),
    /// A new CQ.
    Cq(CompletionQueueId),
    /// A new QP.
    Qp(Qpn),
    /// A QP's state and attributes.
    QpInfo(QpInfo),
    /// A new SRQ.
    Srq(SharedReceiveQueueId),
    /// An SRQ's attributes.
    SrqAttr(SrqAttr),
}

/// A [`Reply`] was not the one the command asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The command was refused.
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// The reply is of another kind than the command's (its message kind, as
    /// [`codec`](super::codec) numbers them): an executor bug or a mismatched peer.
    #[error("unexpected reply (kind {0:#06x})")]
    Unexpected(u16),
}

/// `TryFrom<Reply>` for what each reply carries: `Reply::Error` becomes
/// [`ReplyError::Verbs`], any other kind [`ReplyError::Unexpected`].
macro_rules! reply_payload {
    ($($ty:ty => $pattern:pat => $value:expr;)*) => {$(
        impl TryFrom<Reply> for $ty {
            type Error = ReplyError;

            fn try_from(reply: Reply) -> Result<$ty, ReplyError> {
                match reply {
                    $pattern => Ok($value),
                    Reply::Error(error) => Err(ReplyError::Verbs(error)),
                    other => Err(ReplyError::Unexpected(other.kind())),
                }
            }
        }
    )*};
}

reply_payload! {
    () => Reply::Done => ();
    DeviceAttributes => Reply::Device(device) => device;
    PortStatus => Reply::Port(port) => port;
    Vec<IpAddr> => Reply::Gids(gids) => gids;
    (Counters, ThreadCounters) => Reply::Counters { engine, thread } => (*engine, thread);
    ProtectionDomain => Reply::Pd(pd) => pd;
    MemoryRegion => Reply::Mr(mr) => mr;
    Vec<u8> => Reply::Bytes(bytes) => bytes;
    CompletionQueueId => Reply::Cq(cq) => cq;
    Qpn => Reply::Qp(qpn) => qpn;
    QpInfo => Reply::QpInfo(info) => info;
    SharedReceiveQueueId => Reply::Srq(srq) => srq;
    SrqAttr => Reply::SrqAttr(attr) => attr;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::kind;

    #[test]
    fn a_reply_converts_to_its_payload_or_says_what_it_was() {
        assert_eq!(
            ProtectionDomain::try_from(Reply::Pd(ProtectionDomain(3))),
            Ok(ProtectionDomain(3))
        );
        assert_eq!(<()>::try_from(Reply::Done), Ok(()));
        assert_eq!(
            Qpn::try_from(Reply::Error(VerbsError::QueueFull)),
            Err(ReplyError::Verbs(VerbsError::QueueFull))
        );
        assert_eq!(
            ProtectionDomain::try_from(Reply::Done),
            Err(ReplyError::Unexpected(kind::DONE))
        );
        assert_eq!(
            Vec::<u8>::try_from(Reply::Gids(Vec::new())),
            Err(ReplyError::Unexpected(kind::GIDS))
        );
    }
}

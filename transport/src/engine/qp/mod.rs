//! Queue pairs: types, attributes, the IBA state machine, work requests, and the
//! pieces shared by the requester, responder and completer.

mod completer;
mod requester;
mod responder;
mod retransmit;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use ferroce_wire::{packet, Psn, Qpn, Rkey, ICRC_LEN};

use super::buffers::BufferPool;
use super::cq::{CompletionQueue, CompletionQueueId, WcOpcode, WcStatus, WorkCompletion};
use super::error::{Result, VerbsError};
use super::event::Events;
use super::memory::LentBytes;
use super::memory::{AccessFlags, Key, Lkey, MemoryAccess, ProtectionDomain};
use super::srq::{SharedReceiveQueue, SharedReceiveQueueId};
use super::{AsyncEvent, Counters, Time};

pub(crate) use requester::Requester;
pub(crate) use responder::Responder;

/// QP transport service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpType {
    /// Reliable Connected.
    Rc,
    /// Unreliable Connected.
    Uc,
    /// Unreliable Datagram.
    Ud,
}

impl QpType {
    /// Its `ibv_qp_type` value (RC 2, UC 3, UD 4).
    pub const fn ibv_code(self) -> u8 {
        match self {
            QpType::Rc => 2,
            QpType::Uc => 3,
            QpType::Ud => 4,
        }
    }

    /// The type of an `ibv_qp_type` value.
    pub const fn from_ibv_code(code: u8) -> Option<QpType> {
        match code {
            2 => Some(QpType::Rc),
            3 => Some(QpType::Uc),
            4 => Some(QpType::Ud),
            _ => None,
        }
    }
}

/// QP states (`ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Reset: nothing is processed.
    Reset,
    /// Initialised: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained: no new send work is started.
    Sqd,
    /// Send queue error (UC, UD).
    Sqe,
    /// Error: all work completes with `WrFlushErr`.
    Err,
}

impl QpState {
    /// Every state, in the order above.
    pub const ALL: [QpState; 7] = [
        QpState::Reset,
        QpState::Init,
        QpState::Rtr,
        QpState::Rts,
        QpState::Sqd,
        QpState::Sqe,
        QpState::Err,
    ];

    /// Its `ibv_qp_state` value (RESET 0 … ERR 6, the order of [`QpState::ALL`]).
    pub const fn ibv_code(self) -> u8 {
        match self {
            QpState::Reset => 0,
            QpState::Init => 1,
            QpState::Rtr => 2,
            QpState::Rts => 3,
            QpState::Sqd => 4,
            QpState::Sqe => 5,
            QpState::Err => 6,
        }
    }

    /// The state of an `ibv_qp_state` value.
    pub const fn from_ibv_code(code: u8) -> Option<QpState> {
        if (code as usize) < QpState::ALL.len() {
            Some(QpState::ALL[code as usize])
        } else {
            None
        }
    }
}

/// Path MTU (`ibv_mtu`), 256 to 4096 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes.
    Mtu4096,
}

impl PathMtu {
    /// Bytes of payload per packet.
    pub const fn bytes(self) -> u32 {
        match self {
            PathMtu::Mtu256 => 256,
            PathMtu::Mtu512 => 512,
            PathMtu::Mtu1024 => 1024,
            PathMtu::Mtu2048 => 2048,
            PathMtu::Mtu4096 => 4096,
        }
    }

    /// Its `ibv_mtu` value (256 → 1 … 4096 → 5).
    pub const fn ibv_code(self) -> u8 {
        match self {
            PathMtu::Mtu256 => 1,
            PathMtu::Mtu512 => 2,
            PathMtu::Mtu1024 => 3,
            PathMtu::Mtu2048 => 4,
            PathMtu::Mtu4096 => 5,
        }
    }

    /// The MTU of an `ibv_mtu` value.
    pub const fn from_ibv_code(code: u8) -> Option<PathMtu> {
        match code {
            1..=5 => PathMtu::from_bytes(128 << code),
            _ => None,
        }
    }

    /// The MTU of `bytes` bytes, if it is one of the five IB MTUs.
    pub const fn from_bytes(bytes: u32) -> Option<PathMtu> {
        match bytes {
            256 => Some(PathMtu::Mtu256),
            512 => Some(PathMtu::Mtu512),
            1024 => Some(PathMtu::Mtu1024),
            2048 => Some(PathMtu::Mtu2048),
            4096 => Some(PathMtu::Mtu4096),
            _ => None,
        }
    }
}

/// Where a connected QP sends (`ibv_ah_attr` with its GRH, for RoCEv2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressVector {
    /// The peer's address (destination GID).
    pub remote: IpAddr,
    /// The source address, one of the namespace's GIDs (the sgid index); `None` picks the
    /// namespace's first GID of the peer's family.
    pub local: Option<IpAddr>,
}

/// QP attributes for `modify_qp` (set fields are the attribute mask) and `query_qp`
/// (every field set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpAttr {
    /// New state.
    pub state: Option<QpState>,
    /// P_Key index (only 0 exists).
    pub pkey_index: Option<u16>,
    /// Port number (only 1 exists).
    pub port_num: Option<u8>,
    /// Q_Key (UD).
    pub qkey: Option<u32>,
    /// Remote access allowed to this QP (RC/UC).
    pub access: Option<AccessFlags>,
    /// Path MTU (RC/UC).
    pub path_mtu: Option<PathMtu>,
    /// Destination QPN (RC/UC).
    pub dest_qpn: Option<Qpn>,
    /// Receive queue (expected) PSN.
    pub rq_psn: Option<Psn>,
    /// Send queue (next) PSN.
    pub sq_psn: Option<Psn>,
    /// Outstanding READ/atomics this QP may have as requester.
    pub max_rd_atomic: Option<u8>,
    /// READ/atomics this QP keeps as responder (the responder-resource ring).
    pub max_dest_rd_atomic: Option<u8>,
    /// RNR NAK timer code this QP sends as responder.
    pub min_rnr_timer: Option<u8>,
    /// Local ACK timeout code: 4.096 µs × 2^t, 0 = none.
    pub timeout: Option<u8>,
    /// Transport retries (7 = infinite).
    pub retry_cnt: Option<u8>,
    /// RNR retries (7 = infinite).
    pub rnr_retry: Option<u8>,
    /// Peer address (RC/UC).
    pub av: Option<AddressVector>,
    /// The address vector's GRH flow label (`ah_attr.grh.flow_label`, 20 bits; rdma_cm
    /// sets one). It picks the UDP source port as in rxe; 0 or unset derives the label
    /// from the two QPNs. Allowed wherever `av` is.
    pub flow_label: Option<u32>,
}

/// Work queue sizes (`ibv_qp_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCap {
    /// Send WRs outstanding at most.
    pub max_send_wr: u32,
    /// Receive WRs outstanding at most.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline bytes per send WR.
    pub max_inline_data: u32,
}

/// What `create_qp` needs (`ibv_qp_init_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInitAttr {
    /// Transport service.
    pub qp_type: QpType,
    /// Protection domain.
    pub pd: ProtectionDomain,
    /// CQ for send completions.
    pub send_cq: CompletionQueueId,
    /// CQ for receive completions.
    pub recv_cq: CompletionQueueId,
    /// Shared receive queue, if receives come from one.
    pub srq: Option<SharedReceiveQueueId>,
    /// Queue sizes.
    pub cap: QpCap,
    /// Every send WR generates a completion, not only signaled ones.
    pub sq_sig_all: bool,
}

/// What `query_qp` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInfo {
    /// QP number.
    pub qpn: Qpn,
    /// Transport service.
    pub qp_type: QpType,
    /// Current state.
    pub state: QpState,
    /// Every attribute (`state` included).
    pub attr: QpAttr,
    /// Queue sizes.
    pub cap: QpCap,
    /// Send WRs not yet completed.
    pub send_outstanding: usize,
    /// Receive WRs posted and not yet consumed.
    pub recv_outstanding: usize,
    /// Responses (ACKs, NAKs, READ responses, atomic ACKs) waiting to be sent: at most
    /// `MAX_QUEUED_ACKS` plus two per responder resource.
    pub responses_queued: usize,
}

/// A scatter/gather element (`ibv_sge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Address inside a memory region.
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// The region's local key.
    pub lkey: Lkey,
}

/// The operation of a send WR, with its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data.
    SendWithImm(u32),
    /// SEND that invalidates a remote rkey (RC).
    SendWithInv(Rkey),
    /// RDMA WRITE.
    RdmaWrite {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: Rkey,
    },
    /// RDMA WRITE with immediate data (consumes a remote receive).
    RdmaWriteWithImm {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: Rkey,
        /// Immediate data.
        imm: u32,
    },
    /// RDMA READ into the SGEs.
    RdmaRead {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: Rkey,
    },
    /// Compare and swap 8 remote bytes; the original lands in the first SGE.
    CompareSwap {
        /// Remote address (8-byte aligned).
        remote_addr: u64,
        /// Remote key.
        rkey: Rkey,
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// Fetch and add on 8 remote bytes; the original lands in the first SGE.
    FetchAdd {
        /// Remote address (8-byte aligned).
        remote_addr: u64,
        /// Remote key.
        rkey: Rkey,
        /// Addend.
        add: u64,
    },
    /// Invalidate a local key (no packet).
    LocalInv(Rkey),
}

impl SendOp {
    /// The opcode of its completion.
    pub fn wc_opcode(self) -> WcOpcode {
        match self {
            SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_) => WcOpcode::Send,
            SendOp::RdmaWrite { .. } | SendOp::RdmaWriteWithImm { .. } => WcOpcode::RdmaWrite,
            SendOp::RdmaRead { .. } => WcOpcode::RdmaRead,
            SendOp::CompareSwap { .. } => WcOpcode::CompSwap,
            SendOp::FetchAdd { .. } => WcOpcode::FetchAdd,
            SendOp::LocalInv(_) => WcOpcode::LocalInv,
        }
    }

    /// READ and atomics: limited by max_rd_atomic, answered with data.
    fn is_read_or_atomic(self) -> bool {
        matches!(
            self,
            SendOp::RdmaRead { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        )
    }

    fn is_atomic(self) -> bool {
        matches!(self, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. })
    }
}

/// Where a UD send goes (the address handle plus remote QPN and Q_Key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdDestination {
    /// Destination address.
    pub address: IpAddr,
    /// Destination QPN.
    pub qpn: Qpn,
    /// Q_Key; with the high bit set the QP's own Q_Key is used (as in ibverbs).
    pub qkey: u32,
}

/// A scatter/gather list. Work requests rarely have more than two entries, and those
/// are kept inline: posting a work request allocates nothing.
pub type SgList = smallvec::SmallVec<[Sge; 2]>;

/// A send work request (`ibv_send_wr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWr {
    /// Caller's id, returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Gather list (SEND/WRITE source) or scatter list (READ/atomic destination).
    pub sg_list: SgList,
    /// Inline data, copied at post time instead of read through `sg_list`.
    pub inline_data: Option<Vec<u8>>,
    /// Generate a completion on success.
    pub signaled: bool,
    /// Wait for earlier READ/atomics to complete first.
    pub fence: bool,
    /// Set the solicited event bit.
    pub solicited: bool,
    /// UD destination.
    pub ud: Option<UdDestination>,
}

impl SendWr {
    /// A signaled work request with no flags.
    pub fn new(wr_id: u64, op: SendOp, sg_list: impl Into<SgList>) -> SendWr {
        SendWr {
            wr_id,
            op,
            sg_list: sg_list.into(),
            inline_data: None,
            signaled: true,
            fence: false,
            solicited: false,
            ud: None,
        }
    }
}

/// A receive work request (`ibv_recv_wr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWr {
    /// Caller's id, returned in the completion.
    pub wr_id: u64,
    /// Scatter list.
    pub sg_list: SgList,
}

/// Attributes a transition's mask may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttrMask(u32);

impl AttrMask {
    const PKEY_INDEX: u32 = 1 << 0;
    const PORT: u32 = 1 << 1;
    const QKEY: u32 = 1 << 2;
    const ACCESS: u32 = 1 << 3;
    const PATH_MTU: u32 = 1 << 4;
    const DEST_QPN: u32 = 1 << 5;
    const RQ_PSN: u32 = 1 << 6;
    const SQ_PSN: u32 = 1 << 7;
    const MAX_RD_ATOMIC: u32 = 1 << 8;
    const MAX_DEST_RD_ATOMIC: u32 = 1 << 9;
    const MIN_RNR_TIMER: u32 = 1 << 10;
    const TIMEOUT: u32 = 1 << 11;
    const RETRY_CNT: u32 = 1 << 12;
    const RNR_RETRY: u32 = 1 << 13;
    const AV: u32 = 1 << 14;
    const FLOW_LABEL: u32 = 1 << 15;

    const NAMES: [&'static str; 16] = [
        "pkey_index",
        "port_num",
        "qkey",
        "access",
        "path_mtu",
        "dest_qpn",
        "rq_psn",
        "sq_psn",
        "max_rd_atomic",
        "max_dest_rd_atomic",
        "min_rnr_timer",
        "timeout",
        "retry_cnt",
        "rnr_retry",
        "av",
        "flow_label",
    ];

    fn of(attr: &QpAttr) -> AttrMask {
        let bits = [
            attr.pkey_index.is_some(),
            attr.port_num.is_some(),
            attr.qkey.is_some(),
            attr.access.is_some(),
            attr.path_mtu.is_some(),
            attr.dest_qpn.is_some(),
            attr.rq_psn.is_some(),
            attr.sq_psn.is_some(),
            attr.max_rd_atomic.is_some(),
            attr.max_dest_rd_atomic.is_some(),
            attr.min_rnr_timer.is_some(),
            attr.timeout.is_some(),
            attr.retry_cnt.is_some(),
            attr.rnr_retry.is_some(),
            attr.av.is_some(),
            attr.flow_label.is_some(),
        ];
        AttrMask(
            bits.iter()
                .enumerate()
                .fold(0, |m, (i, &set)| m | (u32::from(set) << i)),
        )
    }

    fn first_name(bits: u32) -> &'static str {
        Self::NAMES[bits.trailing_zeros() as usize]
    }
}

/// The attribute names `MissingAttribute` and `AttributeNotAllowed` give.
#[cfg(test)]
pub(crate) const ATTRIBUTE_NAMES: [&str; 16] = AttrMask::NAMES;

/// Required and optional attributes of a transition (IBA table 91 / ib_verbs.c
/// `qp_state_table`, without alternate paths and path migration), or `None` when the
/// transition is not allowed.
fn transition_rule(qp_type: QpType, from: QpState, to: QpState) -> Option<(u32, u32)> {
    use AttrMask as M;
    use QpState::*;
    use QpType::*;
    let connected = matches!(qp_type, Rc | Uc);
    let init_attrs = M::PKEY_INDEX | M::PORT | if connected { M::ACCESS } else { M::QKEY };
    let rule = match (from, to) {
        (_, Reset) | (_, Err) => (0, 0),
        (Reset, Init) => (init_attrs, 0),
        (Init, Init) => (0, init_attrs),
        (Init, Rtr) => match qp_type {
            Rc => (
                M::AV
                    | M::PATH_MTU
                    | M::DEST_QPN
                    | M::RQ_PSN
                    | M::MAX_DEST_RD_ATOMIC
                    | M::MIN_RNR_TIMER,
                M::ACCESS | M::PKEY_INDEX,
            ),
            Uc => (
                M::AV | M::PATH_MTU | M::DEST_QPN | M::RQ_PSN,
                M::ACCESS | M::PKEY_INDEX,
            ),
            Ud => (0, M::PKEY_INDEX | M::QKEY),
        },
        (Rtr, Rts) => match qp_type {
            Rc => (
                M::SQ_PSN | M::TIMEOUT | M::RETRY_CNT | M::RNR_RETRY | M::MAX_RD_ATOMIC,
                M::ACCESS | M::MIN_RNR_TIMER,
            ),
            Uc => (M::SQ_PSN, M::ACCESS),
            Ud => (M::SQ_PSN, M::QKEY),
        },
        (Rts, Rts) | (Sqd, Rts) => match qp_type {
            Rc => (0, M::ACCESS | M::MIN_RNR_TIMER),
            Uc => (0, M::ACCESS),
            Ud => (0, M::QKEY),
        },
        (Rts, Sqd) => (0, 0),
        (Sqd, Sqd) => match qp_type {
            Rc => (
                0,
                M::PORT
                    | M::AV
                    | M::TIMEOUT
                    | M::RETRY_CNT
                    | M::RNR_RETRY
                    | M::MAX_RD_ATOMIC
                    | M::MAX_DEST_RD_ATOMIC
                    | M::ACCESS
                    | M::PKEY_INDEX
                    | M::MIN_RNR_TIMER,
            ),
            Uc => (0, M::AV | M::ACCESS | M::PKEY_INDEX),
            Ud => (0, M::PKEY_INDEX | M::QKEY),
        },
        (Sqe, Rts) => match qp_type {
            Rc => return None,
            Uc => (0, M::ACCESS),
            Ud => (0, M::QKEY),
        },
        _ => return None,
    };
    Some(rule)
}

/// A send WR as the requester and completer track it.
#[derive(Debug)]
pub(crate) struct SendWqe {
    pub wr: SendWr,
    pub length: u32,
    /// First PSN (READ: of the request; its responses use `first_psn..=last_psn`).
    pub first_psn: Psn,
    pub last_psn: Psn,
    pub started: bool,
    pub done: bool,
    pub status: WcStatus,
    /// Why it failed, for `vendor_err`.
    pub vendor_err: u32,
}

/// Payloads this long or longer are sent from registered memory when the engine lends
/// (shorter ones cost less to copy than the two extra iovecs they would need).
pub(crate) const LEND_MIN: usize = 512;

/// A packet a QP wants sent: its headers, addresses, and the whole datagram buffer with
/// the payload already in place after the header space (gathered straight from memory,
/// so it is copied once) or lent from the region, headers, pad and ICRC still to write.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub repr: packet::Repr,
    pub payload_len: usize,
    pub buffer: Vec<u8>,
    /// The payload and where it goes, when it stays in registered memory (`buffer` then
    /// has no room for it: headers, pad and ICRC only).
    pub lent: Option<(usize, LentBytes)>,
    pub src: IpAddr,
    pub dst: IpAddr,
}

impl Outgoing {
    /// A datagram for `repr` with room for `payload_len` bytes of payload: headers,
    /// pad and ICRC zeroed, the payload left for the caller to fill completely (a
    /// packet whose payload could not be read is never sent).
    pub fn new(
        repr: packet::Repr,
        payload_len: usize,
        src: IpAddr,
        dst: IpAddr,
        buffers: &mut BufferPool,
    ) -> Outgoing {
        // Unknown opcodes are never built; an empty buffer makes `build` fail cleanly.
        let len = packet::buffer_len(&repr, payload_len).unwrap_or(0);
        let mut buffer = buffers.take(len);
        let header = repr.header_len().unwrap_or(0).min(len);
        buffer[..header].fill(0);
        buffer[(header + payload_len).min(len)..].fill(0);
        Outgoing {
            repr,
            payload_len,
            buffer,
            lent: None,
            src,
            dst,
        }
    }

    /// A datagram for `repr` whose payload is `lent`, bytes of registered memory sent
    /// from where they are (see `QueuePair::lend`).
    pub fn lent(
        repr: packet::Repr,
        lent: LentBytes,
        src: IpAddr,
        dst: IpAddr,
        buffers: &mut BufferPool,
    ) -> Outgoing {
        let len = lent.len();
        let header = repr.header_len().unwrap_or(0);
        let mut buffer = buffers.take(header + packet::pad_for(len) as usize + ICRC_LEN);
        buffer.fill(0);
        Outgoing {
            repr,
            payload_len: len,
            buffer,
            lent: Some((header, lent)),
            src,
            dst,
        }
    }

    /// Where the payload goes.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.repr.header_len().unwrap_or(0);
        self.buffer
            .get_mut(start..start + self.payload_len)
            .unwrap_or_default()
    }
}

/// Everything outside the QP that processing touches.
pub(crate) struct Context<'a> {
    /// The QP's namespace (for trace events: QPNs are per namespace).
    pub ns: crate::engine::NamespaceId,
    pub now: Time,
    pub buffers: &'a mut BufferPool,
    /// Payloads of at least [`LEND_MIN`] bytes from one SGE may stay in registered
    /// memory ([`Engine::lending`](crate::engine::Engine::lending)).
    pub lend: bool,
    pub memory: &'a mut dyn MemoryAccess,
    pub cqs: &'a mut BTreeMap<CompletionQueueId, CompletionQueue>,
    pub srqs: &'a mut BTreeMap<SharedReceiveQueueId, SharedReceiveQueue>,
    pub events: &'a mut Events,
    pub counters: &'a mut Counters,
    pub gids: &'a [IpAddr],
}

impl Context<'_> {
    fn push_completion(&mut self, cq: CompletionQueueId, wc: WorkCompletion) {
        self.push_completion_solicited(cq, wc, false);
    }

    /// Adds a completion; `solicited` when the message asked for a solicited event.
    /// False when the CQ was full (it never grows past its depth): the completion is
    /// lost and counted, and the owner learns it from the `CqErr` event (the first time).
    fn push_completion_solicited(
        &mut self,
        cq: CompletionQueueId,
        wc: WorkCompletion,
        solicited: bool,
    ) -> bool {
        match self.cqs.get_mut(&cq).map(|q| q.push(wc, solicited)) {
            Some(Ok(true)) => {
                if !self.events.notify_completion(cq) {
                    self.counters.async_events_dropped += 1;
                }
            }
            Some(Ok(false)) => {}
            Some(Err(first)) => {
                self.counters.completion_queue_overflows += 1;
                if first {
                    self.raise(AsyncEvent::CqErr(cq));
                }
                return false;
            }
            None => {
                self.counters.completion_queue_overflows += 1;
                return false;
            }
        }
        true
    }

    /// Queues an async event for the namespace (counted when its queue is full).
    pub(crate) fn raise(&mut self, event: AsyncEvent) {
        if self.events.raise(event) {
            tracing::debug!(ns = %self.ns, %event, "async event");
        } else {
            self.counters.async_events_dropped += 1;
            tracing::debug!(ns = %self.ns, %event, "async event dropped: the queue is full");
        }
    }
}

/// A queue pair.
#[derive(Debug)]
pub struct QueuePair {
    pub(crate) qpn: Qpn,
    pub(crate) qp_type: QpType,
    pub(crate) state: QpState,
    pub(crate) pd: ProtectionDomain,
    pub(crate) send_cq: CompletionQueueId,
    pub(crate) recv_cq: CompletionQueueId,
    pub(crate) srq: Option<SharedReceiveQueueId>,
    pub(crate) cap: QpCap,
    pub(crate) sq_sig_all: bool,
    /// Current attribute values (all set).
    pub(crate) attr: QpAttr,
    /// Resolved source address of a connected QP.
    pub(crate) local: Option<IpAddr>,
    pub(crate) sq: VecDeque<SendWqe>,
    pub(crate) rq: VecDeque<RecvWr>,
    pub(crate) req: Requester,
    pub(crate) resp: Responder,
    /// UDP source port: rxe's `0xC000 + hash_32(qpn, 14)`.
    pub(crate) src_port: u16,
    /// QP1, the General Services Interface (MADs of RDMA CM): a UD QP whose sends carry
    /// AckReq, as rxe's IB_QPT_GSI sends do.
    pub(crate) gsi: bool,
    /// How long a plain ACK may wait ([`crate::engine::EngineConfig::ack_delay`]).
    pub(crate) ack_delay: Duration,
    /// A packet reached it in RTR and `AsyncEvent::CommEst` was raised (once).
    pub(crate) comm_established: bool,
}

/// rxe's source port for a QP before it has a peer, and for UD QPs
/// (`RXE_ROCE_V2_SPORT + hash_32(qpn, 14)`; the rxe UD capture shows 0xdf94 for QPN 0x11).
pub fn udp_source_port(qpn: Qpn) -> u16 {
    let hash = qpn.value().wrapping_mul(0x61C8_8647) >> (32 - 14);
    0xC000 | (hash as u16 & 0x3fff)
}

/// rxe's source port for a connected QP once its address vector is set: the flow label
/// `rdma_calc_flow_label(local, remote)` folded by `rdma_flow_label_to_udp_sport` (the
/// rxe RC and UC captures show 0xc121 for QPNs 0x11 ↔ 0x11).
pub fn connected_udp_source_port(local: Qpn, remote: Qpn) -> u16 {
    let mut v = u64::from(local.value()) * u64::from(remote.value());
    v ^= v >> 20;
    v ^= v >> 40;
    flow_label_udp_source_port((v & 0xf_ffff) as u32)
}

/// `rdma_flow_label_to_udp_sport`: the low 14 bits of a flow label folded with its top
/// 6, in the RoCEv2 source port range.
pub fn flow_label_udp_source_port(flow_label: u32) -> u16 {
    let low = (flow_label & 0x3fff) ^ ((flow_label & 0xf_c000) >> 14);
    0xC000 | low as u16
}

/// Attribute values a new QP starts with (what `query_qp` shows in RESET).
fn initial_attr() -> QpAttr {
    QpAttr {
        state: Some(QpState::Reset),
        pkey_index: Some(0),
        port_num: Some(1),
        qkey: Some(0),
        access: Some(AccessFlags::NONE),
        path_mtu: Some(PathMtu::Mtu256),
        dest_qpn: Some(Qpn::new(0)),
        rq_psn: Some(Psn::new(0)),
        sq_psn: Some(Psn::new(0)),
        max_rd_atomic: Some(0),
        max_dest_rd_atomic: Some(0),
        min_rnr_timer: Some(0),
        timeout: Some(0),
        retry_cnt: Some(0),
        rnr_retry: Some(0),
        av: None,
        flow_label: Some(0),
    }
}

/// Device limits a modify must respect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModifyLimits {
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
}

impl QueuePair {
    pub(crate) fn new(qpn: Qpn, init: &QpInitAttr) -> QueuePair {
        QueuePair {
            qpn,
            qp_type: init.qp_type,
            state: QpState::Reset,
            pd: init.pd,
            send_cq: init.send_cq,
            recv_cq: init.recv_cq,
            srq: init.srq,
            cap: init.cap,
            sq_sig_all: init.sq_sig_all,
            attr: initial_attr(),
            local: None,
            sq: VecDeque::new(),
            rq: VecDeque::new(),
            req: Requester::default(),
            resp: Responder::default(),
            src_port: udp_source_port(qpn),
            gsi: false,
            ack_delay: Duration::ZERO,
            comm_established: false,
        }
    }

    /// QP number.
    pub fn qpn(&self) -> Qpn {
        self.qpn
    }

    /// Current state.
    pub fn state(&self) -> QpState {
        self.state
    }

    pub(crate) fn info(&self) -> QpInfo {
        let mut attr = self.attr;
        attr.state = Some(self.state);
        QpInfo {
            qpn: self.qpn,
            qp_type: self.qp_type,
            state: self.state,
            attr,
            cap: self.cap,
            send_outstanding: self.sq.len(),
            recv_outstanding: self.rq.len(),
            responses_queued: self.resp.queued(),
        }
    }

    fn path_mtu(&self) -> u32 {
        self.attr.path_mtu.map_or(256, PathMtu::bytes)
    }

    /// `modify_qp`: checks the transition and its attributes, then applies them.
    /// `resolve_local` checks (or picks) the source address among the namespace's GIDs.
    pub(crate) fn modify(
        &mut self,
        attr: &QpAttr,
        limits: ModifyLimits,
        resolve_local: impl Fn(&AddressVector) -> Option<IpAddr>,
        ctx: &mut Context<'_>,
    ) -> Result<()> {
        let from = self.state;
        let to = attr.state.unwrap_or(from);
        let (required, optional) =
            transition_rule(self.qp_type, from, to).ok_or(VerbsError::InvalidStateTransition {
                qp_type: self.qp_type,
                from,
                to,
            })?;
        // The flow label is part of the address vector.
        let optional = if (required | optional) & AttrMask::AV != 0 {
            optional | AttrMask::FLOW_LABEL
        } else {
            optional
        };
        let given = AttrMask::of(attr).0;
        let missing = required & !given;
        if missing != 0 {
            return Err(VerbsError::MissingAttribute(AttrMask::first_name(missing)));
        }
        let extra = given & !(required | optional);
        if extra != 0 {
            return Err(VerbsError::AttributeNotAllowed(AttrMask::first_name(extra)));
        }
        // Value checks before anything changes.
        if attr.pkey_index.is_some_and(|p| p != 0) {
            return Err(VerbsError::InvalidArgument("pkey_index (only 0 exists)"));
        }
        if attr.port_num.is_some_and(|p| p != 1) {
            return Err(VerbsError::InvalidArgument("port_num (only 1 exists)"));
        }
        if attr.timeout.is_some_and(|t| t > 31) || attr.min_rnr_timer.is_some_and(|t| t > 31) {
            return Err(VerbsError::InvalidArgument("timer codes are 5 bits"));
        }
        if attr.retry_cnt.is_some_and(|r| r > 7) || attr.rnr_retry.is_some_and(|r| r > 7) {
            return Err(VerbsError::InvalidArgument("retry counts are 3 bits"));
        }
        if attr.max_rd_atomic.is_some_and(|n| n > limits.max_rd_atomic) {
            return Err(VerbsError::LimitExceeded("max_rd_atomic"));
        }
        if attr
            .max_dest_rd_atomic
            .is_some_and(|n| n > limits.max_dest_rd_atomic)
        {
            return Err(VerbsError::LimitExceeded("max_dest_rd_atomic"));
        }
        if attr.flow_label.is_some_and(|l| l > 0xf_ffff) {
            return Err(VerbsError::InvalidArgument("flow_label is 20 bits"));
        }
        let local = match &attr.av {
            Some(av) => Some(
                resolve_local(av).ok_or(VerbsError::InvalidArgument("av: no such local GID"))?,
            ),
            None => self.local,
        };

        macro_rules! take {
            ($($field:ident),*) => {$(
                if attr.$field.is_some() {
                    self.attr.$field = attr.$field;
                }
            )*};
        }
        take!(
            pkey_index,
            port_num,
            qkey,
            access,
            path_mtu,
            dest_qpn,
            rq_psn,
            sq_psn,
            max_rd_atomic,
            max_dest_rd_atomic,
            min_rnr_timer,
            timeout,
            retry_cnt,
            rnr_retry,
            av,
            flow_label
        );
        self.local = local;
        if (attr.av.is_some() || attr.flow_label.is_some()) && self.qp_type != QpType::Ud {
            let label = self.attr.flow_label.unwrap_or(0);
            self.src_port = if label != 0 {
                flow_label_udp_source_port(label)
            } else {
                connected_udp_source_port(self.qpn, self.attr.dest_qpn.unwrap_or_default())
            };
        }
        if let Some(psn) = attr.rq_psn {
            self.resp.epsn = psn;
        }
        if let Some(psn) = attr.sq_psn {
            self.req.reset_psn(psn);
        }
        if attr.max_dest_rd_atomic.is_some() {
            self.resp
                .resize_resources(usize::from(self.attr.max_dest_rd_atomic.unwrap_or(0)));
        }
        if attr.retry_cnt.is_some() || attr.rnr_retry.is_some() {
            self.reset_retry_counters();
        }
        match to {
            QpState::Reset if from != QpState::Reset => self.reset(),
            QpState::Err if from != QpState::Err => {
                self.state = QpState::Err;
                self.flush(ctx);
                self.last_wqe_reached(ctx);
            }
            _ => {}
        }
        self.state = to;
        if from != to {
            tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, ?from, ?to, "QP state changed");
        }
        Ok(())
    }

    /// Back to RESET: queues emptied without completions, protocol state cleared.
    fn reset(&mut self) {
        self.sq.clear();
        self.rq.clear();
        self.req = Requester::default();
        self.resp = Responder::default();
        self.attr = initial_attr();
        self.local = None;
        self.src_port = udp_source_port(self.qpn);
        self.comm_established = false;
    }

    pub(crate) fn reset_retry_counters(&mut self) {
        self.req.retry_left = self.attr.retry_cnt.unwrap_or(0);
        self.req.rnr_left = self.attr.rnr_retry.unwrap_or(0);
    }

    /// `post_send`: checks the WR against the QP and queues it; nothing is sent here.
    pub(crate) fn post_send(&mut self, wr: SendWr, ctx: &mut Context<'_>) -> Result<()> {
        match self.state {
            QpState::Rts | QpState::Sqd | QpState::Err => {}
            QpState::Sqe if self.qp_type != QpType::Rc => {}
            state => return Err(VerbsError::InvalidState(state)),
        }
        if self.sq.len() >= self.cap.max_send_wr as usize {
            return Err(VerbsError::QueueFull);
        }
        if wr.sg_list.len() > self.cap.max_send_sge as usize {
            return Err(VerbsError::LimitExceeded("max_send_sge"));
        }
        let length = match &wr.inline_data {
            Some(data) => {
                if !wr.sg_list.is_empty() {
                    return Err(VerbsError::InvalidArgument("inline data with an sg_list"));
                }
                if data.len() > self.cap.max_inline_data as usize {
                    return Err(VerbsError::LimitExceeded("max_inline_data"));
                }
                data.len() as u64
            }
            None => wr.sg_list.iter().map(|s| u64::from(s.length)).sum(),
        };
        let length = u32::try_from(length)
            .ok()
            .filter(|&l| l <= responder::MAX_MESSAGE)
            .ok_or(VerbsError::InvalidArgument("message over 2 GiB"))?;
        let allowed = match self.qp_type {
            QpType::Rc => true,
            QpType::Uc => matches!(
                wr.op,
                SendOp::Send
                    | SendOp::SendWithImm(_)
                    | SendOp::RdmaWrite { .. }
                    | SendOp::RdmaWriteWithImm { .. }
                    | SendOp::LocalInv(_)
            ),
            QpType::Ud => matches!(wr.op, SendOp::Send | SendOp::SendWithImm(_)),
        };
        if !allowed {
            return Err(VerbsError::InvalidArgument(
                "operation not supported on this QP type",
            ));
        }
        if wr.op.is_read_or_atomic() && wr.inline_data.is_some() {
            return Err(VerbsError::InvalidArgument("inline READ or atomic"));
        }
        if wr.op.is_read_or_atomic() && self.attr.max_rd_atomic == Some(0) {
            // rxe would wait forever for a READ/atomic credit; refuse instead.
            return Err(VerbsError::InvalidArgument(
                "READ/atomic with max_rd_atomic 0",
            ));
        }
        if wr.op.is_atomic() && length != 8 {
            return Err(VerbsError::InvalidArgument("atomics return 8 bytes"));
        }
        if self.qp_type == QpType::Ud {
            if wr.ud.is_none() {
                return Err(VerbsError::InvalidArgument("UD send without a destination"));
            }
            if length > self.path_mtu_for_ud() {
                return Err(VerbsError::InvalidArgument(
                    "UD message longer than the MTU",
                ));
            }
        }
        let wqe = SendWqe {
            wr,
            length,
            first_psn: Psn::new(0),
            last_psn: Psn::new(0),
            started: false,
            done: false,
            status: WcStatus::Success,
            vendor_err: 0,
        };
        if self.state == QpState::Err {
            // Work posted to a QP in error completes at once with a flush.
            let wc = self.send_completion(&wqe, WcStatus::WrFlushErr);
            ctx.push_completion(self.send_cq, wc);
            return Ok(());
        }
        self.sq.push_back(wqe);
        Ok(())
    }

    pub(crate) fn path_mtu_for_ud(&self) -> u32 {
        self.req.ud_mtu
    }

    /// `post_recv` to the QP's own receive queue.
    pub(crate) fn post_recv(&mut self, wr: RecvWr, ctx: &mut Context<'_>) -> Result<()> {
        if self.srq.is_some() {
            return Err(VerbsError::InvalidArgument("QP uses an SRQ"));
        }
        if self.state == QpState::Reset {
            return Err(VerbsError::InvalidState(self.state));
        }
        if self.rq.len() >= self.cap.max_recv_wr as usize {
            return Err(VerbsError::QueueFull);
        }
        if wr.sg_list.len() > self.cap.max_recv_sge as usize {
            return Err(VerbsError::LimitExceeded("max_recv_sge"));
        }
        if self.state == QpState::Err {
            let wc = self.recv_completion(&wr, WcStatus::WrFlushErr, WcOpcode::Recv, 0);
            ctx.push_completion(self.recv_cq, wc);
            return Ok(());
        }
        self.rq.push_back(wr);
        Ok(())
    }

    fn send_completion(&self, wqe: &SendWqe, status: WcStatus) -> WorkCompletion {
        WorkCompletion {
            wr_id: wqe.wr.wr_id,
            status,
            opcode: wqe.wr.op.wc_opcode(),
            byte_len: if status == WcStatus::Success {
                wqe.length
            } else {
                0
            },
            imm_data: None,
            invalidated_rkey: None,
            qp_num: self.qpn,
            src_qp: Qpn::new(0),
            grh: false,
            pkey_index: 0,
            vendor_err: wqe.vendor_err,
        }
    }

    fn recv_completion(
        &self,
        wr: &RecvWr,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
    ) -> WorkCompletion {
        WorkCompletion {
            wr_id: wr.wr_id,
            status,
            opcode,
            byte_len,
            imm_data: None,
            invalidated_rkey: None,
            qp_num: self.qpn,
            src_qp: self.attr.dest_qpn.unwrap_or_default(),
            grh: false,
            pkey_index: 0,
            vendor_err: 0,
        }
    }

    /// Pops finished WQEs at the head of the send queue, in order, into the send CQ.
    pub(crate) fn complete_front(&mut self, ctx: &mut Context<'_>) {
        while self.sq.front().is_some_and(|w| w.done) {
            let Some(wqe) = self.sq.pop_front() else {
                break;
            };
            if self.req.send_index == 0 {
                self.req.send_offset = 0;
            } else {
                self.req.send_index -= 1;
            }
            let signaled = self.sq_sig_all || wqe.wr.signaled;
            if wqe.status != WcStatus::Success || signaled {
                let wc = self.send_completion(&wqe, wqe.status);
                ctx.push_completion(self.send_cq, wc);
            }
        }
    }

    /// Fails the oldest unfinished send WR with `status`, moves the QP to ERR and flushes.
    pub(crate) fn fail_send(&mut self, status: WcStatus, vendor_err: u32, ctx: &mut Context<'_>) {
        tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, ?status, vendor_err, "send failed; QP goes to error");
        if let Some(wqe) = self.sq.iter_mut().find(|w| !w.done) {
            wqe.done = true;
            wqe.status = status;
            wqe.vendor_err = vendor_err;
        }
        self.enter_error(ctx);
    }

    /// Moves to ERR: every outstanding WR completes, the failed one with its status and
    /// the rest with `WrFlushErr`, in order.
    pub(crate) fn enter_error(&mut self, ctx: &mut Context<'_>) {
        self.enter_error_raising(AsyncEvent::QpFatal(self.qpn), ctx);
    }

    /// [`QueuePair::enter_error`], telling the application with `event` (the responder
    /// names the class of its error).
    pub(crate) fn enter_error_raising(&mut self, event: AsyncEvent, ctx: &mut Context<'_>) {
        if self.state == QpState::Err {
            return;
        }
        tracing::debug!(ns = %ctx.ns, qpn = %self.qpn, from = ?self.state, to = ?QpState::Err, "QP state changed");
        self.state = QpState::Err;
        ctx.raise(event);
        self.flush(ctx);
        self.last_wqe_reached(ctx);
    }

    /// A QP on an SRQ in ERR takes no more of its WRs (the one in progress went back to
    /// the SRQ in `flush`): IBA's Last WQE Reached.
    fn last_wqe_reached(&self, ctx: &mut Context<'_>) {
        if self.srq.is_some() {
            ctx.raise(AsyncEvent::QpLastWqeReached(self.qpn));
        }
    }

    fn flush(&mut self, ctx: &mut Context<'_>) {
        self.complete_front(ctx);
        while let Some(wqe) = self.sq.pop_front() {
            let status = if wqe.done {
                wqe.status
            } else {
                WcStatus::WrFlushErr
            };
            if status != WcStatus::Success || self.sq_sig_all || wqe.wr.signaled {
                let wc = self.send_completion(&wqe, status);
                ctx.push_completion(self.send_cq, wc);
            }
        }
        self.req.send_index = 0;
        self.req.send_offset = 0;
        self.req.timer.stop();
        self.req.rnr_until = None;
        if let Some(recv) = self.resp.take_in_progress_recv() {
            let wc = self.recv_completion(&recv, WcStatus::WrFlushErr, WcOpcode::Recv, 0);
            ctx.push_completion(self.recv_cq, wc);
        }
        while let Some(recv) = self.rq.pop_front() {
            let wc = self.recv_completion(&recv, WcStatus::WrFlushErr, WcOpcode::Recv, 0);
            ctx.push_completion(self.recv_cq, wc);
        }
        // Only NAKs already decided still go out (the peer must learn why).
        self.resp.keep_only_naks();
    }

    /// The next packet this QP wants to send: responses first, then requests.
    pub(crate) fn poll_transmit(&mut self, ctx: &mut Context<'_>) -> Option<Outgoing> {
        if let Some(out) = self.poll_response(ctx) {
            return Some(out);
        }
        let out = self.poll_request(ctx);
        self.complete_front(ctx);
        if out.is_some() {
            // A held ACK goes out in the same batch as this request.
            self.resp.release_ack(ctx.now);
        }
        out
    }

    /// The earliest time this QP wants `handle_timeout`.
    pub(crate) fn timeout(&self) -> Option<Time> {
        [
            self.req.timer.fire_at(),
            self.req.rnr_until,
            self.resp.ack_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Copies `out.len()` bytes of the WR's message at `offset` from its gather list
    /// (or inline data) through local keys.
    fn gather(
        &self,
        wqe: &SendWqe,
        offset: u32,
        out: &mut [u8],
        memory: &dyn MemoryAccess,
    ) -> core::result::Result<(), ()> {
        if let Some(inline) = &wqe.wr.inline_data {
            let start = offset as usize;
            let src = inline.get(start..start + out.len()).ok_or(())?;
            out.copy_from_slice(src);
            return Ok(());
        }
        walk_sges(&wqe.wr.sg_list, offset, out.len(), |sge, addr, at, n| {
            memory
                .read(
                    Key::Local(sge.lkey),
                    self.pd,
                    addr,
                    &mut out[at..at + n],
                    AccessFlags::NONE,
                )
                .map_err(|_| ())
        })
    }

    /// Where the `len` bytes at `offset` of the WR's data are in registered memory, when
    /// the packet can carry them from there: lending is on, they are at least
    /// [`LEND_MIN`] bytes in one SGE, and its key checks pass (when they do not,
    /// `gather` fails the WR as it always has).
    fn lend(&self, wqe: &SendWqe, offset: u32, len: usize, ctx: &Context<'_>) -> Option<LentBytes> {
        if !ctx.lend || len < LEND_MIN || wqe.wr.inline_data.is_some() {
            return None;
        }
        let mut lent = None;
        walk_sges(&wqe.wr.sg_list, offset, len, |sge, addr, at, n| {
            if at != 0 || n != len {
                return Err(()); // Spread over SGEs: copied instead.
            }
            lent = ctx
                .memory
                .lend(Key::Local(sge.lkey), self.pd, addr, len, AccessFlags::NONE)
                .ok();
            Ok(())
        })
        .ok()?;
        lent
    }

    /// Copies `data` into a scatter list at `offset` (needs LOCAL_WRITE).
    fn scatter(
        pd: ProtectionDomain,
        sg_list: &[Sge],
        offset: u32,
        data: &[u8],
        memory: &mut dyn MemoryAccess,
    ) -> core::result::Result<(), ()> {
        walk_sges(sg_list, offset, data.len(), |sge, addr, at, n| {
            memory
                .write(
                    Key::Local(sge.lkey),
                    pd,
                    addr,
                    &data[at..at + n],
                    AccessFlags::LOCAL_WRITE,
                )
                .map_err(|_| ())
        })
    }
}

/// Calls `f(sge, address, offset_in_data, len)` for each piece of the byte range
/// `offset..offset + len` of a scatter/gather list; fails when the list is too short or
/// a piece's address overflows (an SGE near the top of the address space).
fn walk_sges(
    sg_list: &[Sge],
    offset: u32,
    len: usize,
    mut f: impl FnMut(&Sge, u64, usize, usize) -> core::result::Result<(), ()>,
) -> core::result::Result<(), ()> {
    let mut skip = u64::from(offset);
    let mut done = 0usize;
    for sge in sg_list {
        if done == len {
            break;
        }
        let sge_len = u64::from(sge.length);
        if skip >= sge_len {
            skip -= sge_len;
            continue;
        }
        let n = ((sge_len - skip) as usize).min(len - done);
        let addr = sge.addr.checked_add(skip).ok_or(())?;
        f(sge, addr, done, n)?;
        done += n;
        skip = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(())
    }
}

/// Total bytes a scatter list holds.
fn sg_capacity(sg_list: &[Sge]) -> u64 {
    sg_list.iter().map(|s| u64::from(s.length)).sum()
}

#[cfg(test)]
mod tests;

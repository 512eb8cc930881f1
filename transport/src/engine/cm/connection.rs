//! One connection of the CM: its state (cm.c's `enum ib_cm_state`), the attributes
//! negotiated in REQ and REP, the message it may have to resend, and the QP
//! attributes it gives its QP (cm.c's `ib_cm_init_qp_attr`).

use std::net::IpAddr;
use std::time::Duration;

use ferroce_wire::cm::{self as wire_cm, Message};
use ferroce_wire::{mad, Psn, Qpn};

use super::{CommId, ListenerId};
use crate::engine::memory::AccessFlags;
use crate::engine::qp::{AddressVector, PathMtu, QpAttr, QpState, QpType};
use crate::engine::Time;

/// A connection's state (Linux `enum ib_cm_state`; IDLE is the absence of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmState {
    /// Active: REQ sent, waiting for the REP.
    ReqSent,
    /// Active: the peer sent an MRA for the REQ; waiting longer.
    MraReqRcvd,
    /// Passive: REQ received, the consumer not yet told (transient).
    ReqRcvd,
    /// Passive: the consumer has the request; a repeated REQ is answered with an MRA
    /// (rdma_cm's delayed MRA).
    MraReqSent,
    /// Passive: REP sent, waiting for the RTU.
    RepSent,
    /// Passive: the peer sent an MRA for the REP; waiting longer.
    MraRepRcvd,
    /// Active: REP received, the QP being moved to RTS (transient).
    RepRcvd,
    /// Connected.
    Established,
    /// DREQ sent, waiting for the DREP.
    DreqSent,
    /// DREQ received (transient: the agent answers at once).
    DreqRcvd,
    /// Disconnected, waiting before the IDs may be reused.
    Timewait,
    /// A service ID resolution sent, waiting for its SIDR_REP.
    SidrReqSent,
}

/// The two addresses a connection's MADs travel between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// This side's address.
    pub local: IpAddr,
    /// The peer's address.
    pub remote: IpAddr,
}

/// A message sent that waits for an answer, resent on its timer.
#[derive(Debug, Clone)]
pub(crate) struct Outstanding {
    pub mad: Box<[u8; mad::MAD_LEN]>,
    pub retries_left: u8,
    /// How long each try waits (an MRA lengthens it).
    pub timeout: Duration,
    pub due: Time,
}

/// One connection (or service ID resolution).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub id: CommId,
    /// The peer's comm ID; 0 until its REQ or REP told it.
    pub remote_id: u32,
    pub state: CmState,
    /// The listener a passive connection came through.
    pub listener: Option<ListenerId>,
    /// This side's QP (a passive one gets it at accept).
    pub qpn: Option<Qpn>,
    pub qp_type: QpType,
    pub remote_qpn: Qpn,
    pub remote_ca_guid: u64,
    pub route: Route,
    /// The transaction ID answers carry: the REQ's (passive) or this side's.
    pub tid: u64,
    pub path_mtu: PathMtu,
    /// The PSN this side's QP sends from.
    pub sq_psn: Psn,
    /// The PSN this side's QP expects first.
    pub rq_psn: Psn,
    /// This side's `max_dest_rd_atomic`.
    pub responder_resources: u8,
    /// This side's `max_rd_atomic`.
    pub initiator_depth: u8,
    pub retry_count: u8,
    /// This side's QP's RNR retries (the peer asked for them in its REQ or REP).
    pub rnr_retry_count: u8,
    /// The RNR retries this side asks the peer for in its REP.
    pub peer_rnr_retry_count: u8,
    pub min_rnr_timer: u8,
    /// The local ACK timeout code (cm.c's `av.timeout`); timewait lasts as long.
    pub ack_timeout: u8,
    /// The consumer's own ACK timeout, which the path's does not replace.
    pub ack_timeout_set: bool,
    pub flow_control: bool,
    pub max_cm_retries: u8,
    /// How long a REQ, REP or DREQ of this connection waits for its answer.
    pub response_timeout: Duration,
    pub outstanding: Option<Outstanding>,
    pub timewait_until: Option<Time>,
    /// In the agent's duplicate and stale-connection indexes.
    pub indexed: bool,
}

impl Connection {
    /// A connection in `state` with nothing negotiated yet: no peer IDs, PSNs,
    /// resources or retries, no timer.
    pub fn new(
        id: CommId,
        state: CmState,
        route: Route,
        tid: u64,
        qp_type: QpType,
        path_mtu: PathMtu,
    ) -> Connection {
        Connection {
            id,
            remote_id: 0,
            state,
            listener: None,
            qpn: None,
            qp_type,
            remote_qpn: Qpn::new(0),
            remote_ca_guid: 0,
            route,
            tid,
            path_mtu,
            sq_psn: Psn::new(0),
            rq_psn: Psn::new(0),
            responder_resources: 0,
            initiator_depth: 0,
            retry_count: 0,
            rnr_retry_count: 0,
            peer_rnr_retry_count: 0,
            min_rnr_timer: 0,
            ack_timeout: 0,
            ack_timeout_set: false,
            flow_control: false,
            max_cm_retries: 0,
            response_timeout: Duration::ZERO,
            outstanding: None,
            timewait_until: None,
            indexed: false,
        }
    }

    /// When the connection next needs `handle_timeout`.
    pub fn timer(&self) -> Option<Time> {
        match (&self.outstanding, self.timewait_until) {
            (Some(out), Some(t)) => Some(out.due.min(t)),
            (Some(out), None) => Some(out.due),
            (None, t) => t,
        }
    }

    /// A passive connection its consumer has not accepted or rejected yet (it holds a
    /// place in its listener's backlog).
    pub fn awaits_consumer(&self) -> bool {
        matches!(self.state, CmState::ReqRcvd | CmState::MraReqSent)
    }

    /// Sends `mad` and keeps it for resending: `retries` more times, `timeout` apart.
    pub fn expect_answer(&mut self, now: Time, mad: &[u8; mad::MAD_LEN], retries: u8) {
        self.outstanding = Some(Outstanding {
            mad: Box::new(*mad),
            retries_left: retries,
            timeout: self.response_timeout,
            due: now + self.response_timeout,
        });
    }

    /// RESET → INIT: remote write always, READ and atomics when this side keeps
    /// responder resources (cm.c's `cm_init_qp_init_attr`).
    pub fn init_attr(responder_resources: u8, qp_type: QpType) -> QpAttr {
        let mut access = AccessFlags::REMOTE_WRITE;
        if responder_resources > 0 && qp_type == QpType::Rc {
            access = access | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_ATOMIC;
        }
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: Some(access),
            ..QpAttr::default()
        }
    }

    /// INIT → RTR: the peer's address and QP, the path MTU, the PSN expected first and
    /// (RC) the responder resources and RNR timer (`cm_init_qp_rtr_attr`).
    pub fn rtr_attr(&self) -> QpAttr {
        let mut attr = QpAttr {
            state: Some(QpState::Rtr),
            av: Some(AddressVector {
                remote: self.route.remote,
                local: Some(self.route.local),
            }),
            path_mtu: Some(self.path_mtu),
            dest_qpn: Some(self.remote_qpn),
            rq_psn: Some(self.rq_psn),
            ..QpAttr::default()
        };
        if self.qp_type == QpType::Rc {
            attr.max_dest_rd_atomic = Some(self.responder_resources);
            attr.min_rnr_timer = Some(self.min_rnr_timer);
        }
        attr
    }

    /// RTR → RTS: the PSN sent from and (RC) the retries, READ depth and ACK timeout
    /// (`cm_init_qp_rts_attr`).
    pub fn rts_attr(&self) -> QpAttr {
        let mut attr = QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(self.sq_psn),
            ..QpAttr::default()
        };
        if self.qp_type == QpType::Rc {
            attr.retry_cnt = Some(self.retry_count);
            attr.rnr_retry = Some(self.rnr_retry_count);
            attr.max_rd_atomic = Some(self.initiator_depth);
            attr.timeout = Some(self.ack_timeout);
        }
        attr
    }

    /// The RTU of this connection.
    pub fn rtu(&self) -> Message<'static> {
        Message::Rtu(wire_cm::rtu::Repr {
            local_comm_id: self.id.0,
            remote_comm_id: self.remote_id,
            private_data: &[],
        })
    }

    /// The DREP of this connection.
    pub fn drep(&self) -> Message<'static> {
        Message::Drep(wire_cm::drep::Repr {
            local_comm_id: self.id.0,
            remote_comm_id: self.remote_id,
            private_data: &[],
        })
    }

    /// An MRA of this connection for `kind`.
    pub fn mra(&self, kind: wire_cm::MessageKind, service_timeout: u8) -> Message<'static> {
        Message::Mra(wire_cm::mra::Repr {
            local_comm_id: self.id.0,
            remote_comm_id: self.remote_id,
            message_mraed: kind,
            service_timeout,
            private_data: &[],
        })
    }
}

/// A whole CM MAD for `message`, or `None` when a field does not fit (private data
/// longer than its place: the API checks lengths first).
pub(crate) fn emit(tid: u64, message: Message<'_>) -> Option<Box<[u8; mad::MAD_LEN]>> {
    let mut bytes = Box::new([0u8; mad::MAD_LEN]);
    let repr = wire_cm::Repr::new(tid, message);
    repr.emit(&mut mad::Packet::new_unchecked(&mut bytes[..]))
        .ok()?;
    Some(bytes)
}

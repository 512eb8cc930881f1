//! The active side: connect (REQ), the REP that moves the QP to RTS and is answered
//! with an RTU, MRAs that lengthen a wait, REJs from either side, and service ID
//! resolution (SIDR_REQ → SIDR_REP).

use ferroce_wire::cm::{
    self as wire_cm, mra, rej, rep, req, sidr_rep, Message, MessageKind, ServiceId,
};
use ferroce_wire::{mad, Gid};

use super::connection::{emit, CmState, Connection, Route};
use super::passive::QpFacts;
use super::timer::{ack_timeout, cm_duration};
use super::{Agent, CmEvent, CommId, ConnectParams, QpCommand, CA_ACK_DELAY};
use crate::engine::error::{Result, VerbsError};
use crate::engine::qp::{QpState, QpType};
use crate::engine::Time;

/// The hop limit rdma_cm's REQ carries on RoCE (the route's: rping's shows 64).
const HOP_LIMIT: u8 = 64;

impl Agent {
    /// Starts a connection from QP `qp` (in INIT) to `service_id` at `route.remote`:
    /// the REQ goes out, and the REP will move the QP to RTS.
    pub fn connect(
        &mut self,
        now: Time,
        route: Route,
        qp: QpFacts,
        service_id: ServiceId,
        params: &ConnectParams,
        private_data: &[u8],
    ) -> Result<CommId> {
        if private_data.len() > req::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        let transport = match qp.qp_type {
            QpType::Rc => req::TransportServiceType::Rc,
            QpType::Uc => req::TransportServiceType::Uc,
            QpType::Ud => return Err(VerbsError::InvalidArgument("connect needs an RC or UC QP")),
        };
        if qp.state != QpState::Init {
            return Err(VerbsError::InvalidState(qp.state));
        }
        if self.bound(qp.qpn).is_some() {
            return Err(VerbsError::Busy("QP already bound to a connection"));
        }
        params.check()?;
        let id = self.allocate_id();
        let rq_psn = self.random_psn();
        let responder = params
            .responder_resources
            .min(self.config.max_dest_rd_atomic);
        let initiator = params.initiator_depth.min(self.config.max_rd_atomic);
        let path_mtu = self.config.active_mtu;
        let packet_life_time = params.packet_life_time.min(30);
        let local_ack_timeout = ack_timeout(CA_ACK_DELAY, packet_life_time);
        let tid = self.new_tid(id);
        let request = req::Repr {
            local_comm_id: id.0,
            service_id,
            local_ca_guid: self.ca_guid,
            local_qkey: 0,
            local_qpn: qp.qpn,
            responder_resources: responder,
            local_eecn: 0,
            initiator_depth: initiator,
            remote_eecn: 0,
            remote_cm_response_timeout: params.cm_response_timeout.min(31),
            transport_service_type: transport,
            end_to_end_flow_control: params.flow_control,
            starting_psn: rq_psn,
            local_cm_response_timeout: params.cm_response_timeout.min(31),
            retry_count: params.retry_count,
            pkey: ferroce_wire::bth::DEFAULT_PKEY,
            path_mtu: path_mtu.ibv_code(),
            rdc_exists: false,
            rnr_retry_count: params.rnr_retry_count,
            max_cm_retries: params.max_cm_retries,
            srq: qp.has_srq,
            extended_transport_type: 0,
            primary_path: req::Path {
                // Routed (hop limit above 1): both LIDs permissive, as cm.c does.
                local_lid: 0xffff,
                remote_lid: 0xffff,
                local_gid: Gid::from_ip(route.local),
                remote_gid: Gid::from_ip(route.remote),
                flow_label: 0,
                packet_rate: 0,
                traffic_class: 0,
                hop_limit: HOP_LIMIT,
                sl: 0,
                subnet_local: false,
                local_ack_timeout,
            },
            alternate_path: req::Path::default(),
            sap_supported: false,
            private_data,
        };
        let Some(mad) = emit(tid, Message::Req(request)) else {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        };
        let conn = Connection {
            qpn: Some(qp.qpn),
            sq_psn: rq_psn,
            rq_psn,
            responder_resources: responder,
            initiator_depth: initiator,
            retry_count: params.retry_count,
            rnr_retry_count: params.rnr_retry_count,
            min_rnr_timer: params.min_rnr_timer & 0x1f,
            ack_timeout: params.ack_timeout.unwrap_or(packet_life_time + 1).min(31),
            ack_timeout_set: params.ack_timeout.is_some(),
            flow_control: params.flow_control,
            max_cm_retries: params.max_cm_retries,
            // cm.c: twice the packet life time plus the peer's response time.
            response_timeout: cm_duration(packet_life_time) * 2
                + cm_duration(params.cm_response_timeout),
            ..Connection::new(id, CmState::ReqSent, route, tid, qp.qp_type, path_mtu)
        };
        Ok(self.start(now, conn, mad))
    }

    /// Files a new connection and sends its first message, resent on its timer.
    fn start(&mut self, now: Time, mut conn: Connection, mad: Box<[u8; mad::MAD_LEN]>) -> CommId {
        let id = conn.id;
        let route = conn.route;
        conn.expect_answer(now, &mad, conn.max_cm_retries);
        self.connections.insert(id, conn);
        self.send(route, mad);
        self.refresh_timer(id);
        id
    }

    pub(super) fn handle_rep(&mut self, now: Time, route: Route, tid: u64, rep: &rep::Repr<'_>) {
        let id = CommId(rep.remote_comm_id);
        let waiting = self
            .connections
            .get(&id)
            .is_some_and(|c| matches!(c.state, CmState::ReqSent | CmState::MraReqRcvd));
        if !waiting {
            self.duplicate_rep(id, rep);
            return;
        }
        let guid = rep.local_ca_guid;
        if self.by_remote.contains_key(&(guid, rep.local_comm_id)) {
            self.counters.duplicates += 1;
            return;
        }
        if let Some(&old) = self.by_remote_qpn.get(&(guid, rep.local_qpn)) {
            // The peer's QP is another connection's still: refuse, tear that one down;
            // this one times out as in cm.c.
            self.issue_rej(
                route,
                tid,
                (rep.remote_comm_id, rep.local_comm_id),
                MessageKind::Rep,
                rej::Reason::StaleConnection,
                &[],
            );
            self.disconnect_stale(now, old);
            return;
        }
        let limits = self.config;
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        conn.remote_id = rep.local_comm_id;
        conn.remote_ca_guid = guid;
        conn.remote_qpn = rep.local_qpn;
        // Crossed over: the peer's responder resources bound what this side issues.
        conn.initiator_depth = rep.responder_resources.min(limits.max_rd_atomic);
        conn.responder_resources = rep.initiator_depth.min(limits.max_dest_rd_atomic);
        conn.sq_psn = rep.starting_psn;
        conn.rnr_retry_count = rep.rnr_retry_count;
        if !conn.ack_timeout_set {
            conn.ack_timeout =
                ack_timeout(rep.target_ack_delay, conn.ack_timeout.saturating_sub(1));
        }
        conn.outstanding = None;
        conn.state = CmState::RepRcvd;
        let (qpn, steps) = (conn.qpn, Box::new([conn.rtr_attr(), conn.rts_attr()]));
        self.index(id);
        self.refresh_timer(id);
        if let Some(qpn) = qpn {
            self.qp_commands
                .push_back(QpCommand::Connect { id, qpn, steps });
        }
    }

    /// A REP for a connection past REQ_SENT: answered with the RTU again when
    /// established (its RTU was lost), as `cm_dup_rep_handler`.
    fn duplicate_rep(&mut self, id: CommId, rep: &rep::Repr<'_>) {
        let Some(conn) = self
            .connections
            .get(&id)
            .filter(|c| c.remote_id == rep.local_comm_id)
        else {
            self.counters.unmatched += 1;
            return;
        };
        self.counters.duplicates += 1;
        if conn.state == CmState::Established {
            let (route, tid, rtu) = (conn.route, conn.tid, conn.rtu());
            self.send_message(route, tid, rtu);
        }
    }

    /// The engine moved the QP of connection `id` to RTS (`ok`) or could not: send the
    /// RTU and report the connection up, or reject the REP as rdma_cm does.
    pub fn finish_connect(&mut self, id: CommId, ok: bool) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if conn.state != CmState::RepRcvd {
            return;
        }
        let (route, tid) = (conn.route, conn.tid);
        if ok {
            conn.state = CmState::Established;
            let rtu = conn.rtu();
            self.send_message(route, tid, rtu);
            self.raise(CmEvent::Established(id));
        } else {
            let message = Message::Rej(rej::Repr {
                local_comm_id: id.0,
                remote_comm_id: conn.remote_id,
                message_rejected: MessageKind::Rep,
                reason: rej::Reason::ConsumerDefined,
                ari: &[],
                private_data: &[],
            });
            let qpn = conn.qpn;
            self.send_message(route, tid, message);
            self.remove(id);
            if let Some(qpn) = qpn {
                self.qp_commands.push_back(QpCommand::Flush(qpn));
            }
            self.raise(CmEvent::ConnectError(id));
        }
    }

    pub(super) fn handle_mra(&mut self, now: Time, mra: &mra::Repr<'_>) {
        let id = CommId(mra.remote_comm_id);
        let Some(conn) = self.connections.get_mut(&id) else {
            self.counters.unmatched += 1;
            return;
        };
        let next = match (mra.message_mraed, conn.state) {
            (MessageKind::Req, CmState::ReqSent) => CmState::MraReqRcvd,
            (MessageKind::Rep, CmState::RepSent) if conn.remote_id == mra.local_comm_id => {
                CmState::MraRepRcvd
            }
            (_, CmState::MraReqRcvd | CmState::MraRepRcvd) => {
                self.counters.duplicates += 1;
                return;
            }
            _ => {
                self.counters.unmatched += 1;
                return;
            }
        };
        // cm.c: the service timeout plus the path's ACK timeout, for this wait and the
        // retries after it.
        let timeout = cm_duration(mra.service_timeout) + cm_duration(conn.ack_timeout);
        if let Some(out) = &mut conn.outstanding {
            out.timeout = timeout;
            out.due = now + timeout;
        }
        conn.state = next;
        self.refresh_timer(id);
    }

    pub(super) fn handle_rej(&mut self, now: Time, rej: &rej::Repr<'_>) {
        let Some(id) = self.rejected_connection(rej) else {
            self.counters.unmatched += 1;
            return;
        };
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        let stale = rej.reason == rej::Reason::StaleConnection;
        let timewait = match conn.state {
            CmState::ReqSent
            | CmState::MraReqRcvd
            | CmState::RepSent
            | CmState::MraRepRcvd
            | CmState::ReqRcvd
            | CmState::MraReqSent => stale,
            CmState::DreqSent | CmState::RepRcvd | CmState::Established => true,
            CmState::DreqRcvd | CmState::Timewait | CmState::SidrReqSent => {
                self.counters.unmatched += 1;
                return;
            }
        };
        let qpn = conn.qpn;
        if timewait {
            self.enter_timewait(now, id);
        } else {
            self.remove(id);
        }
        if let Some(qpn) = qpn {
            self.qp_commands.push_back(QpCommand::Flush(qpn));
        }
        self.raise(CmEvent::Rejected {
            id,
            reason: rej.reason,
            private_data: rej.private_data.to_vec(),
        });
    }

    /// The connection a REJ is about (cm.c's `cm_acquire_rejected_id`): a timeout
    /// REJ names the sender's CA GUID in its ARI and is matched by remote ID; a REJ of
    /// a REQ by our comm ID alone (the sender has no ID for us yet); any other by both.
    fn rejected_connection(&self, rej: &rej::Repr<'_>) -> Option<CommId> {
        if rej.reason == rej::Reason::Timeout {
            let guid = u64::from_be_bytes(rej.ari.get(..8)?.try_into().ok()?);
            return self.by_remote.get(&(guid, rej.local_comm_id)).copied();
        }
        let id = CommId(rej.remote_comm_id);
        let conn = self.connections.get(&id)?;
        let matches =
            rej.message_rejected == MessageKind::Req || conn.remote_id == rej.local_comm_id;
        matches.then_some(id)
    }

    /// Resolves `service_id` at `route.remote` to a UD QP and Q_Key (SIDR); the
    /// answer comes as [`CmEvent::ServiceResolved`], or [`CmEvent::Unreachable`] after
    /// the retries. rdma_cm waits `cm_response_timeout` for each try.
    pub fn resolve(
        &mut self,
        now: Time,
        route: Route,
        service_id: ServiceId,
        params: &ConnectParams,
        private_data: &[u8],
    ) -> Result<CommId> {
        if private_data.len() > wire_cm::sidr_req::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        let id = self.allocate_id();
        let tid = self.new_tid(id);
        let message = Message::SidrReq(wire_cm::sidr_req::Repr {
            request_id: id.0,
            pkey: ferroce_wire::bth::DEFAULT_PKEY,
            service_id,
            private_data,
        });
        let Some(mad) = emit(tid, message) else {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        };
        let mtu = self.config.active_mtu;
        let conn = Connection {
            max_cm_retries: params.max_cm_retries,
            response_timeout: cm_duration(params.cm_response_timeout),
            ..Connection::new(id, CmState::SidrReqSent, route, tid, QpType::Ud, mtu)
        };
        Ok(self.start(now, conn, mad))
    }

    pub(super) fn handle_sidr_rep(&mut self, rep: &sidr_rep::Repr<'_>) {
        let id = CommId(rep.request_id);
        if self.state(id) != Some(CmState::SidrReqSent) {
            self.counters.unmatched += 1;
            return;
        }
        self.remove(id);
        self.raise(CmEvent::ServiceResolved {
            id,
            status: rep.status,
            qpn: rep.qpn,
            qkey: rep.qkey,
            private_data: rep.private_data.to_vec(),
        });
    }
}

//! The passive side: listeners, a REQ becoming a connection request, the consumer's
//! accept (REP) or reject (REJ), the RTU, and service ID resolution answered.

use std::net::IpAddr;

use ferroce_wire::cm::{
    self as wire_cm, rej, req, rtu, sidr_rep, sidr_req, Message, MessageKind, ServiceId,
};
use ferroce_wire::{cma, Gid, Qpn};

use super::connection::{CmState, Connection, Route};
use super::timer::cm_duration;
use super::{
    AcceptParams, Agent, CmEvent, CommId, ConnectRequest, Listener, ListenerId, CA_ACK_DELAY,
    MRA_SERVICE_TIMEOUT,
};
use crate::engine::error::{Result, VerbsError};
use crate::engine::qp::{PathMtu, QpAttr, QpState, QpType};
use crate::engine::Time;

/// What the agent needs to know of a QP it is given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QpFacts {
    pub qpn: Qpn,
    pub qp_type: QpType,
    pub state: QpState,
    pub has_srq: bool,
}

impl Agent {
    /// Listens on `service_id`: up to `backlog` requests wait for the consumer at
    /// once; with `ud_qp`, service ID resolutions are answered with that QP.
    pub fn listen(
        &mut self,
        service_id: ServiceId,
        backlog: u32,
        ud_qp: Option<Qpn>,
    ) -> Result<ListenerId> {
        if backlog == 0 {
            return Err(VerbsError::InvalidArgument("backlog 0"));
        }
        if self.services.contains_key(&service_id) {
            return Err(VerbsError::AlreadyExists("a listener on this service ID"));
        }
        let id = self.allocate_listener();
        self.listeners.insert(
            id,
            Listener {
                service_id,
                backlog: backlog as usize,
                pending: 0,
                ud_qp,
            },
        );
        self.services.insert(service_id, id);
        Ok(id)
    }

    /// Stops listening. Requests already reported stay for the consumer to answer.
    pub fn unlisten(&mut self, listener: ListenerId) -> Result<()> {
        let removed = self
            .listeners
            .remove(&listener)
            .ok_or(VerbsError::NotFound("listener"))?;
        self.services.remove(&removed.service_id);
        Ok(())
    }

    /// A REJ answering a received message with no connection behind it (cm.c's
    /// `cm_issue_rej`): the comm IDs swapped from the message, its transaction ID.
    pub(super) fn issue_rej(
        &mut self,
        route: Route,
        tid: u64,
        (local_comm_id, remote_comm_id): (u32, u32),
        of: MessageKind,
        reason: rej::Reason,
        ari: &[u8],
    ) {
        let message = Message::Rej(rej::Repr {
            local_comm_id,
            remote_comm_id,
            message_rejected: of,
            reason,
            ari,
            private_data: &[],
        });
        self.send_message(route, tid, message);
    }

    pub(super) fn handle_req(
        &mut self,
        now: Time,
        route: Route,
        tid: u64,
        req: &req::Repr<'_>,
        gids: &[IpAddr],
    ) {
        let remote_key = (req.local_ca_guid, req.local_comm_id);
        // The same REQ again (its REP, RTU or our MRA lost).
        if let Some(&id) = self.by_remote.get(&remote_key) {
            self.counters.duplicates += 1;
            self.duplicate_req(id);
            return;
        }
        let reject = |agent: &mut Agent, reason, ari: &[u8]| {
            agent.issue_rej(
                route,
                tid,
                (0, req.local_comm_id),
                MessageKind::Req,
                reason,
                ari,
            );
        };
        // A new connection from a QP we think is still connected: the old one is
        // stale (the peer lost it); refuse this one and tear the old one down.
        if let Some(&old) = self.by_remote_qpn.get(&(req.local_ca_guid, req.local_qpn)) {
            reject(self, rej::Reason::StaleConnection, &[]);
            self.disconnect_stale(now, old);
            return;
        }
        let Some(&listener_id) = self.services.get(&req.service_id) else {
            reject(self, rej::Reason::InvalidServiceId, &[]);
            return;
        };
        let qp_type = match req.transport_service_type {
            req::TransportServiceType::Rc => QpType::Rc,
            req::TransportServiceType::Uc => QpType::Uc,
            _ => {
                reject(self, rej::Reason::InvalidTransportType, &[]);
                return;
            }
        };
        let Some(listener) = self.listeners.get(&listener_id) else {
            reject(self, rej::Reason::InvalidServiceId, &[]);
            return;
        };
        if listener.ud_qp.is_some() {
            // rdma_cm refuses a connection to a UD service (cma_check_req_qp_type).
            reject(self, rej::Reason::ConsumerDefined, &[]);
            return;
        }
        // The REQ names our GID as remote; the kernel answers an address it does not
        // own with "invalid GID" and its own GID as ARI.
        let local = req.primary_path.remote_gid.ip().to_canonical();
        let remote = req.primary_path.local_gid.ip().to_canonical();
        if !gids.contains(&local) || local.is_ipv4() != remote.is_ipv4() {
            let ours = Gid::from_ip(route.local);
            reject(self, rej::Reason::InvalidGid, &ours.0);
            return;
        }
        // The REQ's MTU code is IBA's, which is also ibverbs'.
        let path_mtu = match PathMtu::from_ibv_code(req.path_mtu) {
            Some(mtu) if mtu <= self.config.active_mtu => mtu,
            _ => {
                reject(self, rej::Reason::InvalidMtu, &[]);
                return;
            }
        };
        // Past the backlog (or with no room to report it) the REQ is dropped
        // unanswered, as rdma_cm does when its backlog is full: the peer retries.
        if listener.pending >= listener.backlog || !self.event_room() {
            self.counters.backlog_full += 1;
            return;
        }
        let id = self.allocate_id();
        let conn = Connection {
            remote_id: req.local_comm_id,
            listener: Some(listener_id),
            remote_qpn: req.local_qpn,
            remote_ca_guid: req.local_ca_guid,
            // The REQ's starting PSN is the one the passive side sends from (cm.c
            // keeps it as `sq_psn`; the REP's is the one it expects).
            sq_psn: req.starting_psn,
            rq_psn: req.starting_psn,
            responder_resources: req.initiator_depth,
            initiator_depth: req.responder_resources,
            retry_count: req.retry_count,
            rnr_retry_count: req.rnr_retry_count,
            // The path's packet life time is the REQ's ACK timeout less one; the
            // timeout is that plus one again.
            ack_timeout: req.primary_path.local_ack_timeout.max(1),
            flow_control: req.end_to_end_flow_control,
            max_cm_retries: req.max_cm_retries,
            response_timeout: cm_duration(req.local_cm_response_timeout),
            ..Connection::new(
                id,
                CmState::ReqRcvd,
                Route { local, remote },
                tid,
                qp_type,
                path_mtu,
            )
        };
        self.connections.insert(id, conn);
        self.index(id);
        if let Some(listener) = self.listeners.get_mut(&listener_id) {
            listener.pending += 1;
        }
        let cma = req
            .service_id
            .rdma_ip_parts()
            .and_then(|_| cma::Packet::new_checked(req.private_data).ok())
            .and_then(|p| cma::Repr::parse(&p).ok())
            .filter(|h| h.cma_version == cma::CMA_VERSION);
        let request = ConnectRequest {
            id,
            listener: listener_id,
            service_id: req.service_id,
            local,
            remote,
            remote_qpn: req.local_qpn,
            qp_type,
            path_mtu,
            responder_resources: req.initiator_depth,
            initiator_depth: req.responder_resources,
            private_data: req.private_data.to_vec(),
            cma,
        };
        self.raise(CmEvent::ConnectRequest(request));
        // rdma_cm hands the request up and marks it MRA-delayed at once: a repeated
        // REQ from now on gets an MRA, so a slow consumer does not time the peer out.
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.state = CmState::MraReqSent;
        }
    }

    /// A REQ we already hold: an MRA while the consumer decides, the REP again while
    /// it waits for its RTU (cm.c leaves that to the REP's timer; answering at once
    /// recovers a lost REP sooner, and a kernel peer takes either).
    fn duplicate_req(&mut self, id: CommId) {
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        let route = conn.route;
        let tid = conn.tid;
        match conn.state {
            CmState::MraReqSent => {
                let mra = conn.mra(MessageKind::Req, MRA_SERVICE_TIMEOUT);
                self.send_message(route, tid, mra);
            }
            CmState::RepSent | CmState::MraRepRcvd => {
                if let Some(out) = &conn.outstanding {
                    let mad = out.mad.clone();
                    self.send(route, mad);
                }
            }
            _ => {}
        }
    }

    /// Checks that the consumer may accept request `id` on this QP and plans its
    /// transitions: INIT (from RESET), RTR and RTS with the negotiated attributes.
    pub fn prepare_accept(
        &mut self,
        id: CommId,
        qp: QpFacts,
        params: &AcceptParams,
        private_data_len: usize,
    ) -> Result<Vec<QpAttr>> {
        if private_data_len > wire_cm::rep::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        if self.bound(qp.qpn).is_some_and(|other| other != id) {
            return Err(VerbsError::Busy("QP already bound to a connection"));
        }
        let limits = self.config;
        let conn = self
            .connections
            .get_mut(&id)
            .ok_or(VerbsError::NotFound("connection"))?;
        if !conn.awaits_consumer() {
            return Err(VerbsError::InvalidArgument(
                "connection is not a pending request",
            ));
        }
        if qp.qp_type != conn.qp_type {
            return Err(VerbsError::InvalidArgument(
                "QP type differs from the request's",
            ));
        }
        if !matches!(qp.state, QpState::Reset | QpState::Init) {
            return Err(VerbsError::InvalidState(qp.state));
        }
        let responder = params
            .responder_resources
            .unwrap_or(conn.responder_resources);
        // Never issue more READs at once than the peer keeps resources for.
        let initiator = params
            .initiator_depth
            .unwrap_or(conn.initiator_depth)
            .min(conn.initiator_depth);
        conn.responder_resources = responder.min(limits.max_dest_rd_atomic);
        conn.initiator_depth = initiator.min(limits.max_rd_atomic);
        // The REQ's RNR retries stay this QP's (cm.c); the consumer's go to the peer.
        conn.peer_rnr_retry_count = params.rnr_retry_count.min(7);
        conn.min_rnr_timer = params.min_rnr_timer & 0x1f;
        conn.flow_control = params.flow_control;
        if let Some(timeout) = params.ack_timeout {
            conn.ack_timeout = timeout.min(31);
            conn.ack_timeout_set = true;
        }
        let mut steps = Vec::with_capacity(3);
        if qp.state == QpState::Reset {
            steps.push(Connection::init_attr(
                conn.responder_resources,
                conn.qp_type,
            ));
        }
        // The PSN this side expects, which the REP announces.
        let rq_psn = self.random_psn();
        let Some(conn) = self.connections.get_mut(&id) else {
            return Err(VerbsError::NotFound("connection"));
        };
        conn.rq_psn = rq_psn;
        conn.qpn = Some(qp.qpn);
        steps.push(conn.rtr_attr());
        steps.push(conn.rts_attr());
        Ok(steps)
    }

    /// The QP of request `id` is in RTS: send the REP and wait for the RTU.
    pub fn complete_accept(&mut self, now: Time, id: CommId, has_srq: bool, private_data: &[u8]) {
        let ca_guid = self.ca_guid;
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let Some(qpn) = conn.qpn else {
            return;
        };
        let rep = Message::Rep(wire_cm::rep::Repr {
            local_comm_id: id.0,
            remote_comm_id: conn.remote_id,
            local_qkey: 0,
            local_qpn: qpn,
            local_eecn: 0,
            starting_psn: conn.rq_psn,
            responder_resources: conn.responder_resources,
            initiator_depth: conn.initiator_depth,
            target_ack_delay: CA_ACK_DELAY,
            failover_accepted: 0,
            end_to_end_flow_control: conn.flow_control,
            rnr_retry_count: conn.peer_rnr_retry_count,
            srq: has_srq,
            local_ca_guid: ca_guid,
            private_data,
        });
        let Some(mad) = super::connection::emit(conn.tid, rep) else {
            self.counters.malformed += 1;
            return;
        };
        conn.state = CmState::RepSent;
        let retries = conn.max_cm_retries;
        conn.expect_answer(now, &mad, retries);
        let (route, listener) = (conn.route, conn.listener);
        self.release_backlog(listener);
        self.send(route, mad);
        self.refresh_timer(id);
    }

    /// The consumer refuses request `id` (REJ "consumer defined" with its private
    /// data); the connection ends.
    pub fn reject(&mut self, id: CommId, private_data: &[u8]) -> Result<()> {
        if private_data.len() > rej::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        let conn = self
            .connections
            .get(&id)
            .ok_or(VerbsError::NotFound("connection"))?;
        if !conn.awaits_consumer() {
            return Err(VerbsError::InvalidArgument(
                "connection is not a pending request",
            ));
        }
        let message = Message::Rej(rej::Repr {
            local_comm_id: id.0,
            remote_comm_id: conn.remote_id,
            message_rejected: MessageKind::Req,
            reason: rej::Reason::ConsumerDefined,
            ari: &[],
            private_data,
        });
        let (route, tid) = (conn.route, conn.tid);
        self.send_message(route, tid, message);
        self.remove(id);
        Ok(())
    }

    /// The connection a QP is bound to, if any.
    pub fn bound(&self, qpn: Qpn) -> Option<CommId> {
        self.connections
            .values()
            .find(|c| c.qpn == Some(qpn))
            .map(|c| c.id)
    }

    pub(super) fn handle_rtu(&mut self, rtu: &rtu::Repr<'_>) {
        let id = CommId(rtu.remote_comm_id);
        let Some(conn) = self
            .connections
            .get_mut(&id)
            .filter(|c| c.remote_id == rtu.local_comm_id)
        else {
            self.counters.unmatched += 1;
            return;
        };
        if !matches!(conn.state, CmState::RepSent | CmState::MraRepRcvd) {
            self.counters.duplicates += 1;
            return;
        }
        conn.state = CmState::Established;
        conn.outstanding = None;
        self.refresh_timer(id);
        self.raise(CmEvent::Established(id));
    }

    /// A service ID resolution: answered at once from the listener's UD QP, with
    /// "unsupported" when nobody listens and "rejected" when the listener is not a UD
    /// service (rdma_cm's answers).
    pub(super) fn handle_sidr_req(
        &mut self,
        route: Route,
        tid: u64,
        req: &sidr_req::Repr<'_>,
        qkey_of: impl Fn(Qpn) -> Option<u32>,
    ) {
        let listener = self
            .services
            .get(&req.service_id)
            .and_then(|id| self.listeners.get(id));
        let (status, qpn, qkey) = match listener.map(|l| l.ud_qp) {
            None => (sidr_rep::Status::Unsupported, Qpn::new(0), 0),
            Some(None) => (sidr_rep::Status::Reject, Qpn::new(0), 0),
            Some(Some(qpn)) => match qkey_of(qpn) {
                Some(qkey) => (sidr_rep::Status::Success, qpn, qkey),
                None => (sidr_rep::Status::NoQp, Qpn::new(0), 0),
            },
        };
        let message = Message::SidrRep(sidr_rep::Repr {
            request_id: req.request_id,
            status,
            qpn,
            service_id: req.service_id,
            qkey,
            additional_info: &[],
            private_data: &[],
        });
        self.send_message(route, tid, message);
    }
}

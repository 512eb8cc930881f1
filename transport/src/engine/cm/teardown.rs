//! Ending connections: the consumer's disconnect, DREQ and DREP from either side,
//! timewait, and the timers that resend a message or give up on it.

use ferroce_wire::cm::{drep, dreq, rej, Message, MessageKind};

use super::connection::{emit, CmState, Route};
use super::timer::cm_duration;
use super::{Agent, CmEvent, CommId, QpCommand};
use crate::engine::error::{Result, VerbsError};
use crate::engine::Time;

impl Agent {
    /// The consumer ends connection `id`. Established: its QP goes to ERR and a DREQ
    /// out (the DREP, or the DREQ's last timeout, brings [`CmEvent::Disconnected`]).
    /// Waiting for an RTU: REJ and timewait, as cm.c's destroy does. A connect not yet
    /// answered is abandoned with a timeout REJ (ARI: this CA's GUID) and a request not
    /// yet accepted rejected; both end at once, without an event. Already
    /// disconnecting: nothing to do.
    pub fn disconnect(&mut self, now: Time, id: CommId, private_data: &[u8]) -> Result<()> {
        if private_data.len() > dreq::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        let conn = self
            .connections
            .get(&id)
            .ok_or(VerbsError::NotFound("connection"))?;
        match conn.state {
            CmState::Established => self.send_dreq(now, id, private_data),
            CmState::RepSent | CmState::MraRepRcvd => {
                self.reject_own(id, MessageKind::Other, rej::Reason::ConsumerDefined, &[]);
                self.flush_qp(id);
                self.enter_timewait(now, id);
                self.raise(CmEvent::Disconnected(id));
            }
            CmState::ReqSent | CmState::MraReqRcvd => {
                let guid = self.ca_guid.to_be_bytes();
                self.reject_own(id, MessageKind::Req, rej::Reason::Timeout, &guid);
                self.flush_qp(id);
                self.remove(id);
            }
            CmState::ReqRcvd | CmState::MraReqSent => self.reject(id, &[])?,
            CmState::SidrReqSent => self.remove(id),
            CmState::DreqSent | CmState::DreqRcvd | CmState::Timewait => {}
            CmState::RepRcvd => return Err(VerbsError::Busy("connection being established")),
        }
        Ok(())
    }

    /// A REJ this side sends for its own connection (not an answer to a received
    /// message), with its own comm ID and transaction ID.
    fn reject_own(&mut self, id: CommId, of: MessageKind, reason: rej::Reason, ari: &[u8]) {
        let Some(conn) = self.connections.get(&id) else {
            return;
        };
        let message = Message::Rej(rej::Repr {
            local_comm_id: id.0,
            remote_comm_id: conn.remote_id,
            message_rejected: of,
            reason,
            ari,
            private_data: &[],
        });
        let (route, tid) = (conn.route, conn.tid);
        self.send_message(route, tid, message);
    }

    /// Moves the connection's QP to ERR (through the engine).
    fn flush_qp(&mut self, id: CommId) {
        if let Some(qpn) = self.connections.get(&id).and_then(|c| c.qpn) {
            self.qp_commands.push_back(QpCommand::Flush(qpn));
        }
    }

    /// Flushes the QP and sends a DREQ (new transaction), resent on its timer.
    fn send_dreq(&mut self, now: Time, id: CommId, private_data: &[u8]) {
        let tid = self.new_tid(id);
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        let message = Message::Dreq(dreq::Repr {
            local_comm_id: id.0,
            remote_comm_id: conn.remote_id,
            remote_qpn: conn.remote_qpn,
            private_data,
        });
        let Some(mad) = emit(tid, message) else {
            self.counters.malformed += 1;
            return;
        };
        conn.tid = tid;
        conn.state = CmState::DreqSent;
        let retries = conn.max_cm_retries;
        conn.expect_answer(now, &mad, retries);
        let route = conn.route;
        self.flush_qp(id);
        self.send(route, mad);
        self.refresh_timer(id);
    }

    /// A newer connection showed this one stale: an established one is disconnected
    /// (cm.c sends it a DREQ).
    pub(super) fn disconnect_stale(&mut self, now: Time, id: CommId) {
        if self.state(id) == Some(CmState::Established) {
            self.send_dreq(now, id, &[]);
        }
    }

    /// Out of the duplicate indexes and into timewait for the ACK timeout (cm.c's
    /// `cm_enter_timewait`); the QP is not touched here.
    pub(super) fn enter_timewait(&mut self, now: Time, id: CommId) {
        self.unindex(id);
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        conn.state = CmState::Timewait;
        conn.outstanding = None;
        conn.timewait_until = Some(now + cm_duration(conn.ack_timeout));
        self.refresh_timer(id);
    }

    pub(super) fn handle_dreq(&mut self, now: Time, route: Route, tid: u64, dreq: &dreq::Repr<'_>) {
        let id = CommId(dreq.remote_comm_id);
        let Some(conn) = self
            .connections
            .get(&id)
            .filter(|c| c.remote_id == dreq.local_comm_id)
        else {
            // Nothing here (long gone, or never): answer so the peer stops asking, as
            // cm.c's `cm_issue_drep`.
            self.counters.unmatched += 1;
            let message = Message::Drep(drep::Repr {
                local_comm_id: dreq.remote_comm_id,
                remote_comm_id: dreq.local_comm_id,
                private_data: &[],
            });
            self.send_message(route, tid, message);
            return;
        };
        if conn.qpn != Some(dreq.remote_qpn) {
            self.counters.unmatched += 1;
            return;
        }
        match conn.state {
            CmState::RepSent | CmState::MraRepRcvd | CmState::Established | CmState::DreqSent => {}
            CmState::Timewait => {
                // Our DREP was lost: again.
                self.counters.duplicates += 1;
                let (route, drep) = (conn.route, conn.drep());
                self.send_message(route, tid, drep);
                return;
            }
            CmState::DreqRcvd => {
                self.counters.duplicates += 1;
                return;
            }
            _ => {
                self.counters.unmatched += 1;
                return;
            }
        }
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        conn.state = CmState::DreqRcvd;
        conn.outstanding = None;
        conn.tid = tid;
        let (route, drep) = (conn.route, conn.drep());
        // rdma_cm's consumer answers a DREQ with rdma_disconnect: QP to ERR, then the
        // DREP. The agent does both at once.
        self.flush_qp(id);
        self.send_message(route, tid, drep);
        self.enter_timewait(now, id);
        self.raise(CmEvent::Disconnected(id));
    }

    pub(super) fn handle_drep(&mut self, now: Time, drep: &drep::Repr<'_>) {
        let id = CommId(drep.remote_comm_id);
        let Some(conn) = self
            .connections
            .get(&id)
            .filter(|c| c.remote_id == drep.local_comm_id)
        else {
            self.counters.unmatched += 1;
            return;
        };
        if conn.state != CmState::DreqSent {
            self.counters.duplicates += 1;
            return;
        }
        self.enter_timewait(now, id);
        self.raise(CmEvent::Disconnected(id));
    }

    /// Connection `id`'s timer fired: timewait over, or its message due again — resent
    /// while retries are left, given up on after.
    pub(super) fn connection_timeout(&mut self, now: Time, id: CommId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if conn.state == CmState::Timewait && conn.timewait_until.is_some_and(|t| t <= now) {
            self.remove(id);
            self.raise(CmEvent::TimewaitExit(id));
            return;
        }
        let route = conn.route;
        let state = conn.state;
        let Some(out) = conn.outstanding.as_mut().filter(|o| o.due <= now) else {
            return;
        };
        if out.retries_left > 0 {
            out.retries_left -= 1;
            out.due = now + out.timeout;
            let mad = out.mad.clone();
            self.counters.retransmits += 1;
            tracing::debug!(ns = %self.ns, %id, ?state, "CM message resent");
            self.send(route, mad);
            return;
        }
        conn.outstanding = None;
        tracing::debug!(ns = %self.ns, %id, ?state, "CM retries exhausted");
        match state {
            CmState::ReqSent | CmState::MraReqRcvd | CmState::RepSent | CmState::MraRepRcvd => {
                self.flush_qp(id);
                self.remove(id);
                self.raise(CmEvent::Unreachable(id));
            }
            CmState::DreqSent => {
                self.enter_timewait(now, id);
                self.raise(CmEvent::Disconnected(id));
            }
            CmState::SidrReqSent => {
                self.remove(id);
                self.raise(CmEvent::Unreachable(id));
            }
            _ => {}
        }
    }
}

//! The CM as the engine exposes it: the consumer's calls (listen, connect, accept,
//! reject, disconnect, resolve, events) and the hooks through which datagrams to QP1,
//! time and the agent's MADs pass. QP1's MADs belong to the agent unless the
//! namespace made QP1 a raw GSI QP ([`Engine::create_gsi_qp`]); then the CM is off.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferroce_wire::cm::ServiceId;
use ferroce_wire::opcode::OpCode;
use ferroce_wire::{bth, deth, mad, packet, Psn, Qpn};

use super::connection::{Connection, Route};
use super::passive::QpFacts;
use super::{
    AcceptParams, Agent, CmCounters, CmEvent, CmState, CommId, ConnectParams, ListenerId,
    QpCommand, ServiceAddress,
};
use crate::engine::error::{Result, VerbsError};
use crate::engine::memory::LentBytes;
use crate::engine::qp::{self, QpState, QpType};
use crate::engine::trace::count_drop;
use crate::engine::{
    build, canonical, pkey_match, Datagram, DatagramMeta, Engine, NamespaceId, Time,
};

/// The headers of a MAD QP1 sends: UD SEND Only to QP1 with the default P_Key, AckReq
/// set (as rxe sends GSI datagrams) and a DETH with the GSI Q_Key from QP1.
pub fn gsi_send_headers(psn: Psn) -> packet::Repr {
    let bth = bth::Repr {
        opcode: OpCode::UdSendOnly,
        solicited: false,
        migreq: false,
        pad_count: 0,
        pkey: bth::DEFAULT_PKEY,
        fecn: false,
        becn: false,
        dest_qp: Qpn::GSI,
        ack_req: true,
        psn,
    };
    let mut repr = packet::Repr::new(bth);
    repr.deth = Some(deth::Repr {
        qkey: deth::GSI_QKEY,
        src_qp: Qpn::GSI,
    });
    repr
}

/// Which namespaces' agents have timers and MADs to send, so the engine's timeout and
/// transmit paths do not visit every namespace.
#[derive(Debug, Default)]
pub(crate) struct CmSchedule {
    timers: BTreeSet<(Time, NamespaceId)>,
    timer_of: BTreeMap<NamespaceId, Time>,
    outbox: BTreeSet<NamespaceId>,
}

impl CmSchedule {
    /// The earliest CM timer of any namespace.
    pub fn next_timeout(&self) -> Option<Time> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Forgets a namespace.
    pub fn forget(&mut self, ns: NamespaceId) {
        if let Some(t) = self.timer_of.remove(&ns) {
            self.timers.remove(&(t, ns));
        }
        self.outbox.remove(&ns);
    }
}

impl Engine {
    /// The namespace's agent, unless QP1 is a raw GSI QP.
    fn cm_agent(&mut self, ns: NamespaceId) -> Result<&mut Agent> {
        let space = self.ns_mut(ns)?;
        if space.qps.contains_key(&Qpn::GSI) {
            return Err(VerbsError::Busy("QP1 is a raw GSI QP: the CM is off"));
        }
        Ok(&mut space.cm)
    }

    /// What the agent needs of QP `qpn`.
    fn qp_facts(&self, ns: NamespaceId, qpn: Qpn) -> Result<QpFacts> {
        let qp = self
            .ns(ns)?
            .qps
            .get(&qpn)
            .ok_or(VerbsError::NotFound("QP"))?;
        Ok(QpFacts {
            qpn,
            qp_type: qp.qp_type,
            state: qp.state,
            has_srq: qp.srq.is_some(),
        })
    }

    /// Listens for connection requests to `service_id` (for RDMA CM over IP:
    /// `ServiceId::rdma_ip(PortSpace::Tcp, port)`); at most `backlog` wait for
    /// [`Engine::cm_accept`] or [`Engine::cm_reject`] at once, more are dropped
    /// unanswered (the peer retries).
    pub fn cm_listen(
        &mut self,
        ns: NamespaceId,
        service_id: ServiceId,
        backlog: u32,
    ) -> Result<ListenerId> {
        self.cm_agent(ns)?.listen(service_id, backlog, None)
    }

    /// Serves `service_id` with UD QP `qpn`: service ID resolutions (SIDR) are answered
    /// with its QPN and Q_Key.
    pub fn cm_listen_ud(
        &mut self,
        ns: NamespaceId,
        service_id: ServiceId,
        qpn: Qpn,
    ) -> Result<ListenerId> {
        if self.qp_facts(ns, qpn)?.qp_type != QpType::Ud {
            return Err(VerbsError::InvalidArgument("a UD service needs a UD QP"));
        }
        self.cm_agent(ns)?.listen(service_id, 1, Some(qpn))
    }

    /// Stops a listener (requests it reported stay to be answered).
    pub fn cm_unlisten(&mut self, ns: NamespaceId, listener: ListenerId) -> Result<()> {
        self.cm_agent(ns)?.unlisten(listener)
    }

    /// Connects RC or UC QP `qpn` (in RESET or INIT) to service `to`: the
    /// QP moves to INIT now, the REQ goes out, and when the REP comes the QP moves to
    /// RTS with the negotiated attributes and [`CmEvent::Established`] follows.
    pub fn cm_connect(
        &mut self,
        now: Time,
        ns: NamespaceId,
        qpn: Qpn,
        to: ServiceAddress,
        params: &ConnectParams,
        private_data: &[u8],
    ) -> Result<CommId> {
        if private_data.len() > ferroce_wire::cm::req::PRIVATE_DATA_LEN {
            return Err(VerbsError::InvalidArgument(
                "private data too long for the message",
            ));
        }
        params.check()?;
        let route = self.cm_route(ns, to.address)?;
        let mut facts = self.qp_facts(ns, qpn)?;
        let limits = self.config.limits;
        let agent = self.cm_agent(ns)?;
        if agent.bound(qpn).is_some() {
            return Err(VerbsError::Busy("QP already bound to a connection"));
        }
        if matches!(facts.qp_type, QpType::Rc | QpType::Uc) && facts.state == QpState::Reset {
            let resources = params.responder_resources.min(limits.max_qp_rd_atom);
            self.modify_qp(ns, qpn, &Connection::init_attr(resources, facts.qp_type))?;
            facts.state = QpState::Init;
        }
        let id =
            self.cm_agent(ns)?
                .connect(now, route, facts, to.service_id, params, private_data)?;
        self.after_cm(ns);
        Ok(id)
    }

    /// Accepts connection request `id` on QP `qpn` (RESET or INIT, the request's
    /// type): the QP moves through INIT, RTR and RTS with the negotiated attributes
    /// and the REP goes out; [`CmEvent::Established`] follows the RTU. On an error the
    /// request still waits for an accept or reject.
    pub fn cm_accept(
        &mut self,
        now: Time,
        ns: NamespaceId,
        id: CommId,
        qpn: Qpn,
        params: &AcceptParams,
        private_data: &[u8],
    ) -> Result<()> {
        let facts = self.qp_facts(ns, qpn)?;
        let steps = self
            .cm_agent(ns)?
            .prepare_accept(id, facts, params, private_data.len())?;
        for step in &steps {
            if let Err(err) = self.modify_qp(ns, qpn, step) {
                if let Some(conn) = self.ns_mut(ns)?.cm.connections.get_mut(&id) {
                    conn.qpn = None;
                }
                return Err(err);
            }
        }
        self.cm_agent(ns)?
            .complete_accept(now, id, facts.has_srq, private_data);
        self.after_cm(ns);
        Ok(())
    }

    /// Rejects connection request `id` (REJ "consumer defined" with `private_data`).
    pub fn cm_reject(&mut self, ns: NamespaceId, id: CommId, private_data: &[u8]) -> Result<()> {
        self.cm_agent(ns)?.reject(id, private_data)?;
        self.after_cm(ns);
        Ok(())
    }

    /// Ends connection `id` from this side. An established one: its QP goes to ERR
    /// (its work completes with WR_FLUSH_ERR) and a DREQ goes out; the DREP, or the
    /// DREQ's last timeout, brings [`CmEvent::Disconnected`], timewait
    /// [`CmEvent::TimewaitExit`]. One waiting for its RTU: a REJ, then the same. A
    /// connect not yet answered is abandoned (a timeout REJ) and a request not yet
    /// accepted rejected, both at once and without an event. Already disconnecting:
    /// nothing to do.
    pub fn cm_disconnect(
        &mut self,
        now: Time,
        ns: NamespaceId,
        id: CommId,
        private_data: &[u8],
    ) -> Result<()> {
        self.cm_agent(ns)?.disconnect(now, id, private_data)?;
        self.after_cm(ns);
        Ok(())
    }

    /// Asks `to.address` which UD QP serves `to.service_id` (SIDR); the answer is a
    /// [`CmEvent::ServiceResolved`] (or [`CmEvent::Unreachable`] after the retries of
    /// `params`).
    pub fn cm_resolve_service(
        &mut self,
        now: Time,
        ns: NamespaceId,
        to: ServiceAddress,
        params: &ConnectParams,
        private_data: &[u8],
    ) -> Result<CommId> {
        let route = self.cm_route(ns, to.address)?;
        let id = self
            .cm_agent(ns)?
            .resolve(now, route, to.service_id, params, private_data)?;
        self.after_cm(ns);
        Ok(id)
    }

    /// The next CM event of a namespace, oldest first. At most
    /// [`DeviceLimits::max_async_events`](crate::engine::DeviceLimits::max_async_events)
    /// wait; beyond that the newest is dropped and counted.
    pub fn poll_cm_event(&mut self, ns: NamespaceId) -> Option<CmEvent> {
        self.namespaces.get_mut(&ns)?.cm.events.pop()
    }

    /// A connection's state (`None`: no such connection, or it ended).
    pub fn cm_state(&self, ns: NamespaceId, id: CommId) -> Option<CmState> {
        self.namespaces.get(&ns)?.cm.state(id)
    }

    /// The namespace's CM counters.
    pub fn cm_counters(&self, ns: NamespaceId) -> Result<CmCounters> {
        Ok(self.ns(ns)?.cm.counters)
    }

    /// The CA GUID the namespace's CM puts in its REQs and REPs.
    pub fn cm_ca_guid(&self, ns: NamespaceId) -> Result<u64> {
        Ok(self.ns(ns)?.cm.ca_guid)
    }

    /// This namespace's address towards `remote`: its first GID of the same family.
    fn cm_route(&self, ns: NamespaceId, remote: IpAddr) -> Result<Route> {
        let remote = canonical(remote);
        let local = self
            .ns(ns)?
            .gids
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == remote.is_ipv4())
            .ok_or(VerbsError::InvalidArgument(
                "no local GID of the remote's family",
            ))?;
        Ok(Route { local, remote })
    }

    /// After the agent ran: carries out the QP work it asked for (reporting back) and
    /// files its timer and outbox.
    fn after_cm(&mut self, ns: NamespaceId) {
        loop {
            let Some(space) = self.namespaces.get_mut(&ns) else {
                return;
            };
            let Some(command) = space.cm.qp_commands.pop_front() else {
                break;
            };
            match command {
                QpCommand::Connect { id, qpn, steps } => {
                    let ok = steps
                        .iter()
                        .all(|step| self.modify_qp(ns, qpn, step).is_ok());
                    if let Some(space) = self.namespaces.get_mut(&ns) {
                        space.cm.finish_connect(id, ok);
                    }
                }
                QpCommand::Flush(qpn) => {
                    let in_error = self
                        .ns(ns)
                        .ok()
                        .and_then(|space| space.qps.get(&qpn))
                        .is_none_or(|qp| qp.state == QpState::Err);
                    if !in_error {
                        let to_error = qp::QpAttr {
                            state: Some(QpState::Err),
                            ..qp::QpAttr::default()
                        };
                        // The QP exists and is not in ERR: the move cannot fail.
                        let _ = self.modify_qp(ns, qpn, &to_error);
                    }
                }
            }
        }
        let Some(space) = self.namespaces.get(&ns) else {
            return;
        };
        let new = space.cm.next_timeout();
        let has_mail = !space.cm.outbox.is_empty();
        let schedule = &mut self.cm_schedule;
        let old = schedule.timer_of.get(&ns).copied();
        if old != new {
            if let Some(t) = old {
                schedule.timers.remove(&(t, ns));
                schedule.timer_of.remove(&ns);
            }
            if let Some(t) = new {
                schedule.timers.insert((t, ns));
                schedule.timer_of.insert(ns, t);
            }
        }
        if has_mail {
            schedule.outbox.insert(ns);
        }
    }

    /// A datagram to QP1 of namespace `ns`, which has no raw GSI QP: a UD SEND with
    /// the GSI Q_Key and a MAD goes to the agent; anything else is dropped (counted as
    /// rxe would: wrong transport, Q_Key, P_Key).
    pub(crate) fn handle_gsi_datagram(
        &mut self,
        now: Time,
        ns: NamespaceId,
        meta: &DatagramMeta,
        parsed: &packet::Parsed<'_>,
    ) {
        let repr = &parsed.repr;
        if repr.bth.opcode != OpCode::UdSendOnly {
            count_drop!(self.counters, wrong_transport, %ns, qpn = %Qpn::GSI, src = %meta.src);
            return;
        }
        if !pkey_match(repr.bth.pkey, bth::DEFAULT_PKEY) {
            let pkey = repr.bth.pkey;
            count_drop!(self.counters, pkey_mismatch, %ns, qpn = %Qpn::GSI, pkey = format_args!("{pkey:#06x}"));
            return;
        }
        if repr.deth.map(|d| d.qkey) != Some(deth::GSI_QKEY) {
            count_drop!(self.counters, qkey_mismatch, %ns, qpn = %Qpn::GSI, src = %meta.src);
            return;
        }
        let Some(space) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let route = Route {
            local: canonical(meta.dst),
            remote: canonical(meta.src),
        };
        let crate::engine::namespace::Namespace { cm, gids, qps, .. } = space;
        let qkey_of = |qpn: Qpn| {
            qps.get(&qpn)
                .filter(|qp| qp.qp_type == QpType::Ud)
                .map(|qp| qp.attr.qkey.unwrap_or(0))
        };
        cm.handle_mad(now, route, parsed.payload, gids, qkey_of);
        self.after_cm(ns);
    }

    /// Runs the CM timers due at `now`.
    pub(crate) fn handle_cm_timeouts(&mut self, now: Time) {
        let due: Vec<NamespaceId> = self
            .cm_schedule
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|&(_, ns)| ns)
            .collect();
        for ns in due {
            if let Some(space) = self.namespaces.get_mut(&ns) {
                space.cm.handle_timeout(now);
            }
            self.after_cm(ns);
        }
    }

    /// Emits up to `room` MADs the agents queued, as UD SENDs from QP1 to the peer's
    /// QP1 (GSI Q_Key, default P_Key, AckReq set, QP1's own PSN and source port, as
    /// rxe sends them). Returns how many.
    pub(crate) fn transmit_cm(
        &mut self,
        room: usize,
        emit: &mut impl FnMut(Datagram, Option<(usize, LentBytes)>),
    ) -> usize {
        if self.cm_schedule.outbox.is_empty() {
            return 0;
        }
        let mut count = 0;
        let namespaces: Vec<NamespaceId> = self.cm_schedule.outbox.iter().copied().collect();
        let src_port = self.config.udp_src_port.port(qp::udp_source_port(Qpn::GSI));
        for ns in namespaces {
            loop {
                if count >= room {
                    return count;
                }
                let Some(space) = self.namespaces.get_mut(&ns) else {
                    break;
                };
                let Some(out) = space.cm.outbox.pop_front() else {
                    break;
                };
                let psn = space.cm.next_psn();
                space.cm.counters.sent += 1;
                let repr = gsi_send_headers(psn);
                let header = repr.header_len().unwrap_or(0);
                let mut outgoing = qp::Outgoing::new(
                    repr,
                    mad::MAD_LEN,
                    out.route.local,
                    out.route.remote,
                    &mut self.buffers,
                );
                if let Some(place) = outgoing.buffer.get_mut(header..header + mad::MAD_LEN) {
                    place.copy_from_slice(&out.mad[..]);
                }
                if let Some((datagram, _)) = build(outgoing, src_port) {
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += datagram.len() as u64;
                    emit(datagram, None);
                    count += 1;
                }
            }
            self.cm_schedule.outbox.remove(&ns);
        }
        count
    }
}

//! The InfiniBand Communication Manager of a namespace: the agent that owns the MADs
//! of the namespace's QP1 and runs one state machine per connection, as Linux's
//! `ib_cm` (`drivers/infiniband/core/cm.c`) does with rdma_cm (`cma.c`) on top.
//!
//! - `Agent` (here): the namespace's tables — connections by local communication
//!   ID, listeners by service ID, the remote-ID and remote-QPN indexes that find
//!   duplicates and stale connections — its timers, its bounded outbox of MADs and its
//!   bounded queue of [`CmEvent`]s; `Agent::handle_mad` demultiplexes a received MAD.
//! - `connection`: one connection's state, attributes and messages.
//! - `passive`: listen, REQ, accept, reject, RTU, SIDR_REQ.
//! - `active`: connect, REP, MRA, REJ, SIDR_REQ/REP of a resolution.
//! - `teardown`: disconnect, DREQ, DREP, the retransmit and timewait timers.
//! - `engine`: the [`Engine`](super::Engine) methods consumers call, and the hooks
//!   that feed the agent datagrams and time and send what it queued.
//!
//! The CM drives the QPs it connects itself (INIT → RTR → RTS with the negotiated
//! attributes, ERR on disconnect), as rdma_cm does for an `rdma_cm_id` with a QP: the
//! engine owns both, so a REP moves the QP and sends the RTU in one step and no
//! consumer sees a half-configured QP.
//!
//! Timers and retries are the kernel's: a REQ waits `2 × packet life time + remote CM
//! response timeout`, a REP or DREQ the peer's local CM response timeout, each resent
//! up to `max CM retries` times; an MRA extends the wait by its service timeout;
//! timewait lasts the local ACK timeout ([`timer`]).

mod active;
pub(crate) mod connection;
mod engine;
mod passive;
mod teardown;
pub mod timer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;

use ferroce_wire::cm::{self as wire_cm, rej, sidr_rep, Message, ServiceId};
use ferroce_wire::{cma, mad, Qpn};

use super::event::BoundedQueue;
use super::qp::{PathMtu, QpAttr, QpType};
use super::{NamespaceId, SplitMix64, Time};
use connection::{Connection, Route};

pub use connection::CmState;
pub use engine::gsi_send_headers;
pub(crate) use engine::CmSchedule;

/// A connection's local communication ID (also the request ID of a service ID
/// resolution): unique in its namespace while the connection exists, timewait
/// included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommId(pub u32);

impl fmt::Display for CommId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Where a connection or a service ID resolution goes: the peer's address (its GID)
/// and the service asked for there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceAddress {
    /// The peer's IP address.
    pub address: IpAddr,
    /// The service ID (for RDMA CM over IP: `ServiceId::rdma_ip(space, port)`).
    pub service_id: ServiceId,
}

/// A listener of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(pub u32);

/// rdma_cm's CM response timeout (`CMA_CM_RESPONSE_TIMEOUT`): 4096 ms.
pub const CM_RESPONSE_TIMEOUT: u8 = 20;
/// rdma_cm's CM retries (`CMA_MAX_CM_RETRIES`).
pub const MAX_CM_RETRIES: u8 = 15;
/// rdma_cm's packet life time on RoCE (`CMA_IBOE_PACKET_LIFETIME`): the REQ of rping
/// against rxe carries a local ACK timeout of 19 from it.
pub const ROCE_PACKET_LIFE_TIME: u8 = 18;
/// The ACK delay this CA announces in a REP's target ACK delay: rxe's 15, which a
/// kernel peer folds into its local ACK timeout.
pub const CA_ACK_DELAY: u8 = 15;
/// The service timeout of the MRA a passive connection answers a repeated REQ with
/// while its consumer has not decided (rdma_cm's `CMA_CM_MRA_SETTING`: 2^24 × 4.096 µs,
/// about 65 s).
pub const MRA_SERVICE_TIMEOUT: u8 = 24;
/// MADs waiting to be sent at most; beyond that new ones are dropped and counted (a
/// peer can make the agent answer every MAD it sends).
pub const MAX_OUTBOX: usize = 1024;
/// rdma_cm's Q_Key of UD services (`RDMA_UDP_QKEY`).
pub const RDMA_UDP_QKEY: u32 = 0x0123_4567;

/// The private data librdmacm sends in a REQ (or SIDR_REQ) to an RDMA CM IP service:
/// the RDMA CM header (the active side's address and port, the passive side's
/// address) and the consumer's bytes after it. `None` when the addresses are of two
/// IP versions or the consumer's bytes do not fit the REQ's 92 bytes.
pub fn rdma_ip_private_data(
    source: std::net::SocketAddr,
    destination: IpAddr,
    user: &[u8],
) -> Option<Vec<u8>> {
    let addresses = match (source.ip().to_canonical(), destination.to_canonical()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => cma::Addresses::V4 { src, dst },
        (IpAddr::V6(src), IpAddr::V6(dst)) => cma::Addresses::V6 { src, dst },
        _ => return None,
    };
    if cma::HEADER_LEN + user.len() > wire_cm::req::PRIVATE_DATA_LEN {
        return None;
    }
    let header = cma::Repr {
        cma_version: cma::CMA_VERSION,
        port: source.port(),
        addresses,
    };
    let mut data = vec![0u8; cma::HEADER_LEN];
    header.emit(&mut cma::Packet::new_unchecked(&mut data[..]));
    data.extend_from_slice(user);
    Some(data)
}

/// What the active side asks for in its REQ (rdma_cm's `rdma_conn_param` and the
/// timing rdma_cm fills in). The defaults are rdma_cm's over RoCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectParams {
    /// READ/atomic requests this side accepts at once (its `max_dest_rd_atomic`).
    pub responder_resources: u8,
    /// READ/atomic requests this side issues at once (its `max_rd_atomic`).
    pub initiator_depth: u8,
    /// Transport retries (3 bits; 7 is infinite).
    pub retry_count: u8,
    /// RNR retries the peer should make towards this side (3 bits; 7 is infinite).
    pub rnr_retry_count: u8,
    /// End-to-end flow control.
    pub flow_control: bool,
    /// The RNR NAK timer this side's QP sends (rdma_cm leaves 0: 655 ms).
    pub min_rnr_timer: u8,
    /// The local ACK timeout to use instead of the one computed from the path
    /// (`rdma_set_ack_timeout`).
    pub ack_timeout: Option<u8>,
    /// How long the peer may take to answer (5-bit code).
    pub cm_response_timeout: u8,
    /// How often a REQ or DREQ is resent before giving up.
    pub max_cm_retries: u8,
    /// The path's packet life time (5-bit code).
    pub packet_life_time: u8,
}

impl ConnectParams {
    /// Refuses values the REQ cannot carry.
    pub fn check(&self) -> super::Result<()> {
        if self.retry_count > 7 || self.rnr_retry_count > 7 || self.max_cm_retries > 15 {
            return Err(super::VerbsError::InvalidArgument(
                "retry count out of range",
            ));
        }
        if self.cm_response_timeout > 31 || self.packet_life_time > 31 {
            return Err(super::VerbsError::InvalidArgument("timer codes are 5 bits"));
        }
        Ok(())
    }
}

impl Default for ConnectParams {
    fn default() -> ConnectParams {
        ConnectParams {
            responder_resources: 1,
            initiator_depth: 1,
            retry_count: 7,
            rnr_retry_count: 7,
            flow_control: false,
            min_rnr_timer: 0,
            ack_timeout: None,
            cm_response_timeout: CM_RESPONSE_TIMEOUT,
            max_cm_retries: MAX_CM_RETRIES,
            packet_life_time: ROCE_PACKET_LIFE_TIME,
        }
    }
}

/// What the passive side answers in its REP (rdma_cm's `rdma_conn_param` of
/// `rdma_accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptParams {
    /// READ/atomic requests this side accepts at once; `None` takes the request's
    /// initiator depth.
    pub responder_resources: Option<u8>,
    /// READ/atomic requests this side issues at once; `None` takes the request's
    /// responder resources. Never more than the request's responder resources.
    pub initiator_depth: Option<u8>,
    /// RNR retries the peer should make towards this side (3 bits; 7 is infinite).
    pub rnr_retry_count: u8,
    /// End-to-end flow control.
    pub flow_control: bool,
    /// The RNR NAK timer this side's QP sends (rdma_cm leaves 0: 655 ms).
    pub min_rnr_timer: u8,
    /// The local ACK timeout to use instead of the request's.
    pub ack_timeout: Option<u8>,
}

impl Default for AcceptParams {
    fn default() -> AcceptParams {
        AcceptParams {
            responder_resources: None,
            initiator_depth: None,
            rnr_retry_count: 7,
            flow_control: false,
            min_rnr_timer: 0,
            ack_timeout: None,
        }
    }
}

/// A connection request waiting for its listener's consumer
/// ([`Engine::cm_accept`](super::Engine::cm_accept) or
/// [`Engine::cm_reject`](super::Engine::cm_reject)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The new connection.
    pub id: CommId,
    /// The listener it came to.
    pub listener: ListenerId,
    /// The service ID asked for.
    pub service_id: ServiceId,
    /// This side's address (the GID the REQ names as remote).
    pub local: IpAddr,
    /// The active side's address.
    pub remote: IpAddr,
    /// The active side's QP.
    pub remote_qpn: Qpn,
    /// RC or UC.
    pub qp_type: QpType,
    /// The path MTU asked for.
    pub path_mtu: PathMtu,
    /// READ/atomics the active side will issue at once (its initiator depth).
    pub responder_resources: u8,
    /// READ/atomics the active side accepts at once (its responder resources).
    pub initiator_depth: u8,
    /// The REQ's private data field, whole.
    pub private_data: Vec<u8>,
    /// The RDMA CM IP header at the start of the private data, when the service ID is
    /// an RDMA CM IP one and the header parses.
    pub cma: Option<cma::Repr>,
}

impl ConnectRequest {
    /// The consumer's part of the private data: after the RDMA CM header if there is
    /// one.
    pub fn user_data(&self) -> &[u8] {
        let skip = if self.cma.is_some() {
            cma::HEADER_LEN
        } else {
            0
        };
        &self.private_data[skip.min(self.private_data.len())..]
    }
}

/// What happened to a namespace's connections ([`Engine::poll_cm_event`](super::Engine::poll_cm_event)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmEvent {
    /// A REQ reached a listener.
    ConnectRequest(ConnectRequest),
    /// The connection is up: the active side got the REP and sent the RTU, or the
    /// passive side got the RTU.
    Established(CommId),
    /// The peer refused (a REJ); the QP is in ERR.
    Rejected {
        /// The connection.
        id: CommId,
        /// The REJ's reason.
        reason: rej::Reason,
        /// The REJ's private data field, whole.
        private_data: Vec<u8>,
    },
    /// The peer did not answer a REQ or REP through every retry; the connection is
    /// gone and its QP in ERR.
    Unreachable(CommId),
    /// The REP arrived but the QP could not be moved to RTS with its attributes; the
    /// connection was rejected.
    ConnectError(CommId),
    /// The connection is down (a DREQ from either side, answered or timed out); its QP
    /// is in ERR, its work flushed, and it waits out timewait.
    Disconnected(CommId),
    /// Timewait ended: the connection is gone and its ID may be reused.
    TimewaitExit(CommId),
    /// A service ID resolution (SIDR) was answered.
    ServiceResolved {
        /// The resolution.
        id: CommId,
        /// The answer's status.
        status: sidr_rep::Status,
        /// The QP serving the service.
        qpn: Qpn,
        /// Its Q_Key.
        qkey: u32,
        /// The SIDR_REP's private data field, whole.
        private_data: Vec<u8>,
    },
}

/// The CM agent's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmCounters {
    /// CM MADs received.
    pub received: u64,
    /// MADs sent (retransmissions included).
    pub sent: u64,
    /// REQ, REP, DREQ and SIDR_REQ resent on their timer.
    pub retransmits: u64,
    /// Repeated messages (REQ, REP, RTU, MRA, DREQ, DREP) recognised as such.
    pub duplicates: u64,
    /// Messages for no connection this agent knows, or for one in a state that takes
    /// no such message.
    pub unmatched: u64,
    /// MADs that do not parse.
    pub malformed: u64,
    /// MADs of another class, method or class version (answered with "unsupported
    /// method/attribute" when they are Get or Set, as Linux's MAD layer does), and
    /// LAP/APR, which Linux ignores on RoCE.
    pub unsupported: u64,
    /// REQs dropped because their listener's backlog (or the event queue) was full;
    /// the active side retries.
    pub backlog_full: u64,
    /// Events dropped because the namespace's CM event queue was full.
    pub events_dropped: u64,
    /// MADs dropped because the outbox was full.
    pub outbox_full: u64,
}

/// A listener: a service ID and how many requests may wait for its consumer.
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    pub service_id: ServiceId,
    pub backlog: usize,
    /// Requests reported and not yet accepted or rejected.
    pub pending: usize,
    /// The UD QP a service ID resolution is answered with.
    pub ud_qp: Option<Qpn>,
}

/// A MAD waiting to leave QP1.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingMad {
    pub route: Route,
    pub mad: Box<[u8; mad::MAD_LEN]>,
}

/// Work on a QP the engine does for the agent (the agent only holds QPNs).
#[derive(Debug, Clone)]
pub(crate) enum QpCommand {
    /// Move the QP to RTR and RTS with these attributes, then report to
    /// [`Agent::finish_connect`].
    Connect {
        id: CommId,
        qpn: Qpn,
        steps: Box<[QpAttr; 2]>,
    },
    /// Move the QP to ERR: its work completes with WR_FLUSH_ERR.
    Flush(Qpn),
}

/// Device limits the agent negotiates within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgentConfig {
    pub active_mtu: PathMtu,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub event_limit: usize,
}

/// One namespace's CM agent.
#[derive(Debug)]
pub(crate) struct Agent {
    pub ns: NamespaceId,
    pub config: AgentConfig,
    /// This CA's GUID in REQ and REP (and the ARI of a timeout REJ).
    pub ca_guid: u64,
    /// High half of the transaction IDs of the messages this agent starts.
    hi_tid: u32,
    next_id: u32,
    rng: SplitMix64,
    /// PSN of QP1's next send.
    psn: u32,
    pub connections: BTreeMap<CommId, Connection>,
    /// (remote CA GUID, remote comm ID) of connections not in timewait: duplicates.
    pub by_remote: BTreeMap<(u64, u32), CommId>,
    /// (remote CA GUID, remote QPN) of connections not in timewait: stale connections.
    pub by_remote_qpn: BTreeMap<(u64, Qpn), CommId>,
    pub listeners: BTreeMap<ListenerId, Listener>,
    pub services: BTreeMap<ServiceId, ListenerId>,
    next_listener: u32,
    timers: BTreeSet<(Time, CommId)>,
    timer_of: BTreeMap<CommId, Time>,
    pub outbox: VecDeque<OutgoingMad>,
    pub events: BoundedQueue<CmEvent>,
    pub qp_commands: VecDeque<QpCommand>,
    pub counters: CmCounters,
}

impl Agent {
    /// An agent drawing its identifiers (CA GUID, comm IDs, PSNs) from `rng`.
    pub fn new(ns: NamespaceId, config: AgentConfig, mut rng: SplitMix64) -> Agent {
        let ca_guid = rng.next() | 1;
        let hi_tid = (rng.next() as u32) | 1;
        let next_id = rng.next() as u32;
        Agent {
            ns,
            config,
            ca_guid,
            hi_tid,
            next_id,
            rng,
            psn: 0,
            connections: BTreeMap::new(),
            by_remote: BTreeMap::new(),
            by_remote_qpn: BTreeMap::new(),
            listeners: BTreeMap::new(),
            services: BTreeMap::new(),
            next_listener: 1,
            timers: BTreeSet::new(),
            timer_of: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: BoundedQueue::new(config.event_limit),
            qp_commands: VecDeque::new(),
            counters: CmCounters::default(),
        }
    }

    /// A fresh local comm ID: counting up from a random start, skipping 0 and every ID
    /// a connection still holds (timewait included), as `xa_alloc_cyclic` does.
    fn allocate_id(&mut self) -> CommId {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0 && !self.connections.contains_key(&CommId(id)) {
                return CommId(id);
            }
        }
    }

    /// The transaction ID of a message this agent starts (REQ, DREQ, SIDR_REQ).
    fn new_tid(&self, id: CommId) -> u64 {
        (u64::from(self.hi_tid) << 32) | u64::from(id.0)
    }

    /// A random starting PSN (24 bits), as rdma_cm draws one per connection.
    fn random_psn(&mut self) -> ferroce_wire::Psn {
        ferroce_wire::Psn::new(self.rng.next() as u32 & 0xff_ffff)
    }

    pub fn allocate_listener(&mut self) -> ListenerId {
        let id = ListenerId(self.next_listener);
        self.next_listener = self.next_listener.wrapping_add(1).max(1);
        id
    }

    /// Queues a MAD for QP1; counted and dropped when the outbox is full.
    fn send(&mut self, route: Route, mad: Box<[u8; mad::MAD_LEN]>) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.counters.outbox_full += 1;
            tracing::debug!(ns = %self.ns, "CM outbox full, MAD dropped");
            return;
        }
        self.outbox.push_back(OutgoingMad { route, mad });
    }

    /// Emits a CM message with transaction ID `tid` and queues it.
    fn send_message(&mut self, route: Route, tid: u64, message: Message<'_>) {
        match connection::emit(tid, message) {
            Some(mad) => self.send(route, mad),
            None => self.counters.malformed += 1,
        }
    }

    /// The PSN of QP1's next datagram.
    pub fn next_psn(&mut self) -> ferroce_wire::Psn {
        let psn = ferroce_wire::Psn::new(self.psn);
        self.psn = (self.psn + 1) & 0xff_ffff;
        psn
    }

    /// Queues an event; counted when the queue is full.
    fn raise(&mut self, event: CmEvent) {
        tracing::debug!(ns = %self.ns, ?event, "CM event");
        if !self.events.push(event) {
            self.counters.events_dropped += 1;
        }
    }

    /// True when one more event fits.
    fn event_room(&self) -> bool {
        self.events.len() < self.events.limit()
    }

    /// The earliest timer of any connection.
    pub fn next_timeout(&self) -> Option<Time> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Re-reads a connection's timer into the ordered set.
    fn refresh_timer(&mut self, id: CommId) {
        let new = self.connections.get(&id).and_then(Connection::timer);
        let old = self.timer_of.get(&id).copied();
        if old == new {
            return;
        }
        if let Some(t) = old {
            self.timers.remove(&(t, id));
            self.timer_of.remove(&id);
        }
        if let Some(t) = new {
            self.timers.insert((t, id));
            self.timer_of.insert(id, t);
        }
    }

    /// Takes a connection out of the duplicate and stale-connection indexes (on
    /// timewait or when it ends), as `cm_remove_remote`.
    fn unindex(&mut self, id: CommId) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        if !conn.indexed {
            return;
        }
        conn.indexed = false;
        let (guid, remote_id, remote_qpn) = (conn.remote_ca_guid, conn.remote_id, conn.remote_qpn);
        if self.by_remote.get(&(guid, remote_id)) == Some(&id) {
            self.by_remote.remove(&(guid, remote_id));
        }
        if self.by_remote_qpn.get(&(guid, remote_qpn)) == Some(&id) {
            self.by_remote_qpn.remove(&(guid, remote_qpn));
        }
    }

    /// Puts a connection into the indexes; false (nothing changed) when another
    /// connection holds its remote ID.
    fn index(&mut self, id: CommId) -> bool {
        let Some(conn) = self.connections.get(&id) else {
            return false;
        };
        let (guid, remote_id, remote_qpn) = (conn.remote_ca_guid, conn.remote_id, conn.remote_qpn);
        if self.by_remote.contains_key(&(guid, remote_id)) {
            return false;
        }
        self.by_remote.insert((guid, remote_id), id);
        self.by_remote_qpn.insert((guid, remote_qpn), id);
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.indexed = true;
        }
        true
    }

    /// Ends a connection (IDLE): out of every table, its listener's backlog freed.
    fn remove(&mut self, id: CommId) {
        self.unindex(id);
        if let Some(conn) = self.connections.remove(&id) {
            if conn.awaits_consumer() {
                self.release_backlog(conn.listener);
            }
        }
        self.refresh_timer(id);
    }

    fn release_backlog(&mut self, listener: Option<ListenerId>) {
        if let Some(listener) = listener.and_then(|l| self.listeners.get_mut(&l)) {
            listener.pending = listener.pending.saturating_sub(1);
        }
    }

    /// A MAD arrived at QP1 from `route.remote` (to `route.local`). `gids` are the
    /// namespace's addresses; `qkey_of` reads a UD QP's Q_Key for SIDR answers.
    pub fn handle_mad(
        &mut self,
        now: Time,
        route: Route,
        bytes: &[u8],
        gids: &[IpAddr],
        qkey_of: impl Fn(Qpn) -> Option<u32>,
    ) {
        self.counters.received += 1;
        let Ok(packet) = mad::Packet::new_checked(bytes) else {
            self.counters.malformed += 1;
            return;
        };
        let Some(bytes) = bytes.get(..mad::MAD_LEN) else {
            self.counters.malformed += 1;
            return;
        };
        let is_cm = packet.base_version() == mad::BASE_VERSION
            && packet.mgmt_class() == mad::MgmtClass::CommunicationManagement
            && packet.class_version() == wire_cm::CLASS_VERSION
            && packet.method() == mad::Method::Send;
        if !is_cm {
            self.unmatched_mad(route, bytes);
            return;
        }
        let Ok(repr) = wire_cm::Repr::parse(&packet) else {
            // ClassPortInfo, unknown attributes and truncated fields: cm.c drops them.
            self.counters.malformed += 1;
            return;
        };
        let tid = repr.header.transaction_id;
        tracing::debug!(ns = %self.ns, remote = %route.remote, message = %repr.message, "CM MAD received");
        match repr.message {
            Message::Req(req) => self.handle_req(now, route, tid, &req, gids),
            Message::Mra(mra) => self.handle_mra(now, &mra),
            Message::Rej(rej) => self.handle_rej(now, &rej),
            Message::Rep(rep) => self.handle_rep(now, route, tid, &rep),
            Message::Rtu(rtu) => self.handle_rtu(&rtu),
            Message::Dreq(dreq) => self.handle_dreq(now, route, tid, &dreq),
            Message::Drep(drep) => self.handle_drep(now, &drep),
            Message::SidrReq(req) => self.handle_sidr_req(route, tid, &req, qkey_of),
            Message::SidrRep(rep) => self.handle_sidr_rep(&rep),
            // Linux's cm_lap_handler and cm_apr_handler refuse alternate paths on
            // RoCE: the message is dropped, nothing answers it.
            Message::Lap(_) | Message::Apr(_) => self.counters.unsupported += 1,
        }
    }

    /// A MAD no agent takes: a Get or Set is answered with GetResp and status
    /// "unsupported method/attribute" (ib_mad's `generate_unmatched_resp`); anything
    /// else is dropped.
    fn unmatched_mad(&mut self, route: Route, bytes: &[u8]) {
        self.counters.unsupported += 1;
        let mut reply = Box::new([0u8; mad::MAD_LEN]);
        reply.copy_from_slice(&bytes[..mad::MAD_LEN]);
        let mut packet = mad::Packet::new_unchecked(&mut reply[..]);
        if !matches!(packet.method(), mad::Method::Get | mad::Method::Set) {
            return;
        }
        packet.set_method(mad::Method::GetResp);
        packet.set_status(mad::STATUS_UNSUPPORTED_METHOD_ATTRIBUTE);
        self.send(route, reply);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<CommId> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|&(_, id)| id)
            .collect();
        for id in due {
            self.connection_timeout(now, id);
            self.refresh_timer(id);
        }
    }

    /// True while the agent has a listener or a connection (QP1 is then its own).
    pub fn in_use(&self) -> bool {
        !self.listeners.is_empty() || !self.connections.is_empty()
    }

    /// A connection's state, or `None` once it is gone.
    pub fn state(&self, id: CommId) -> Option<CmState> {
        self.connections.get(&id).map(|c| c.state)
    }
}

#[cfg(test)]
mod tests {
    use super::connection::{CmState, Connection, Route};
    use super::*;

    fn agent() -> Agent {
        let config = AgentConfig {
            active_mtu: PathMtu::Mtu1024,
            max_rd_atomic: 16,
            max_dest_rd_atomic: 16,
            event_limit: 8,
        };
        Agent::new(NamespaceId::DEFAULT, config, SplitMix64(7))
    }

    #[test]
    fn comm_ids_skip_zero_and_every_id_still_held_timewait_included() {
        let mut agent = agent();
        let route = Route {
            local: "10.0.0.1".parse().unwrap(),
            remote: "10.0.0.2".parse().unwrap(),
        };
        let held = CommId(u32::MAX);
        let conn = Connection::new(
            held,
            CmState::Timewait,
            route,
            0,
            QpType::Rc,
            PathMtu::Mtu1024,
        );
        agent.connections.insert(held, conn);
        agent.next_id = u32::MAX;
        // u32::MAX is in timewait, 0 is never an ID: the next free one is 1.
        assert_eq!(agent.allocate_id(), CommId(1));
        assert_eq!(agent.allocate_id(), CommId(2));
    }

    #[test]
    fn two_agents_of_one_engine_seed_draw_different_ids() {
        let a = Agent::new(
            NamespaceId(0),
            agent().config,
            SplitMix64::for_namespace(1, NamespaceId(0)),
        );
        let b = Agent::new(
            NamespaceId(1),
            agent().config,
            SplitMix64::for_namespace(1, NamespaceId(1)),
        );
        assert_ne!(a.next_id, b.next_id);
        assert_ne!(a.ca_guid, b.ca_guid);
    }
}

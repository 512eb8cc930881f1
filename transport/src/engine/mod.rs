//! The sans-IO RoCEv2 engine: queue pairs, memory, completions and namespaces as a
//! deterministic state machine. It never reads a clock or a socket: time comes in as a
//! [`Time`] argument, datagrams come in through `handle_datagram` and go out through
//! `poll_transmit`.
//!
//! Two engines back to back, one RC SEND (the I/O layer or the simulator moves the
//! datagrams in real use):
//!
//! ```
//! use ferroce_transport::engine::*;
//! use ferroce_transport::wire::{Psn, Qpn};
//!
//! let ns = NamespaceId::DEFAULT;
//! let addrs = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
//! let mut hosts = Vec::new();
//! for (i, addr) in addrs.iter().enumerate() {
//!     let config = EngineConfig { default_gids: vec![*addr], ..EngineConfig::default() };
//!     let mut engine = Engine::new(config, i as u64);
//!     let pd = engine.alloc_pd(ns)?;
//!     let cq = engine.create_cq(ns, 16)?;
//!     let mr = engine.reg_mr(ns, pd, 4096, AccessFlags::LOCAL_WRITE)?;
//!     let cap = QpCap { max_send_wr: 4, max_recv_wr: 4, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 };
//!     let init = QpInitAttr { qp_type: QpType::Rc, pd, send_cq: cq, recv_cq: cq, srq: None, cap, sq_sig_all: true };
//!     let qpn = engine.create_qp(ns, init)?;
//!     hosts.push((engine, cq, mr, qpn));
//! }
//! for i in 0..2 {
//!     let (peer, peer_qpn) = (addrs[1 - i], hosts[1 - i].3);
//!     let (engine, _, _, qpn) = &mut hosts[i];
//!     let init = QpAttr { state: Some(QpState::Init), pkey_index: Some(0), port_num: Some(1),
//!                         access: Some(AccessFlags::NONE), ..QpAttr::default() };
//!     engine.modify_qp(ns, *qpn, &init)?;
//!     let rtr = QpAttr { state: Some(QpState::Rtr), av: Some(AddressVector { remote: peer, local: None }),
//!                        path_mtu: Some(PathMtu::Mtu1024), dest_qpn: Some(peer_qpn), rq_psn: Some(Psn::new(0)),
//!                        max_dest_rd_atomic: Some(1), min_rnr_timer: Some(12), ..QpAttr::default() };
//!     engine.modify_qp(ns, *qpn, &rtr)?;
//!     let rts = QpAttr { state: Some(QpState::Rts), sq_psn: Some(Psn::new(0)), timeout: Some(14),
//!                        retry_cnt: Some(7), rnr_retry: Some(7), max_rd_atomic: Some(1), ..QpAttr::default() };
//!     engine.modify_qp(ns, *qpn, &rts)?;
//! }
//! // hosts[0] sends to hosts[1].
//! let (sender, receiver) = hosts.split_at_mut(1);
//! let (s_engine, s_cq, s_mr, s_qpn) = &mut sender[0];
//! let (r_engine, r_cq, r_mr, r_qpn) = &mut receiver[0];
//! r_engine.post_recv(ns, *r_qpn, RecvWr { wr_id: 7, sg_list: vec![Sge { addr: r_mr.addr, length: 64, lkey: r_mr.lkey }].into() })?;
//! s_engine.mr_write(ns, s_mr.lkey, s_mr.addr, b"hello")?;
//! let sge = Sge { addr: s_mr.addr, length: 5, lkey: s_mr.lkey };
//! s_engine.post_send(ns, *s_qpn, SendWr::new(1, SendOp::Send, vec![sge]))?;
//! let now = Time::ZERO;
//! while let Some(d) = s_engine.poll_transmit(now) {
//!     r_engine.handle_datagram(now, d.meta, &d.payload);
//!     while let Some(ack) = r_engine.poll_transmit(now) {
//!         s_engine.handle_datagram(now, ack.meta, &ack.payload);
//!     }
//! }
//! let wc = &r_engine.poll_cq(ns, *r_cq, 1)?[0];
//! assert_eq!((wc.wr_id, wc.status, wc.byte_len), (7, WcStatus::Success, 5));
//! assert_eq!(s_engine.poll_cq(ns, *s_cq, 1)?[0].status, WcStatus::Success);
//! # Ok::<(), VerbsError>(())
//! ```

mod buffers;
pub mod cm;
pub mod cq;
pub mod error;
pub mod event;
mod lent;
pub mod memory;
pub mod namespace;
pub mod qp;
pub mod queues;
pub mod sim;
pub mod srq;
pub mod timer;
mod trace;

pub use cm::{
    AcceptParams, CmCounters, CmEvent, CmState, CommId, ConnectParams, ConnectRequest, ListenerId,
    ServiceAddress,
};
pub use cq::{CompletionQueueId, WcOpcode, WcStatus, WorkCompletion};
pub use error::{Result, VerbsError};
pub use event::{AsyncEvent, DEFAULT_MAX_ASYNC_EVENTS, PORT_NUM};
pub use lent::{Lending, Lent, LentDatagram};
pub use memory::{
    AccessFlags, CallerMemory, Lkey, MemoryAccess, MemoryBacking, MemoryRegion, ProtectionDomain,
    RegionMemory,
};
pub use namespace::{NamespaceId, QuotaResource, Quotas, Usage};
pub use qp::{
    AddressVector, PathMtu, QpAttr, QpCap, QpInfo, QpInitAttr, QpState, QpType, RecvWr, SendOp,
    SendWr, SgList, Sge, UdDestination,
};
pub use queues::{QueueDepth, QueueKind};
pub use srq::{SharedReceiveQueueId, SrqAttr};
use trace::count_drop;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: nanoseconds since an epoch the caller chose (the engine thread's
/// start, or zero on a simulator's virtual clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// A time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// The two ECN bits of the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ecn {
    /// Not ECN-capable transport.
    #[default]
    NotEct,
    /// ECT(1).
    Ect1,
    /// ECT(0).
    Ect0,
    /// Congestion experienced.
    Ce,
}

/// Where a datagram came from or goes to, as the IP/UDP layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatagramMeta {
    /// IP source address.
    pub src: IpAddr,
    /// IP destination address (selects the namespace on receive).
    pub dst: IpAddr,
    /// UDP source port (flow entropy; any value is accepted on receive).
    pub src_port: u16,
    /// ECN bits.
    pub ecn: Ecn,
    /// IPv4 only: the identification and DF flag the datagram carried, which the ICRC
    /// covers but a UDP socket does not show (the I/O layer recovers them with
    /// `ferroce_wire::ident::IdentSolver`). `None` means ident 0 with DF, what ferroce's
    /// own sockets send and what outgoing datagrams assume.
    pub ipv4_ident: Option<ferroce_wire::ident::Recovered>,
}

/// A UDP payload with where it goes: what the engine hands to I/O (and the simulator).
/// Every byte is its own; a datagram whose payload stays in registered memory is a
/// [`LentDatagram`] of a [`Lending`] round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Addresses, source port and ECN.
    pub meta: DatagramMeta,
    /// The UDP payload: BTH to ICRC.
    pub payload: Vec<u8>,
}

impl Datagram {
    /// Bytes on the wire (the UDP payload).
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True for an empty UDP payload.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Limits of a namespace's resources (each namespace is a virtual device), reported by
/// [`Engine::query_device`] and enforced with [`VerbsError::LimitExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// QPs per namespace.
    pub max_qp: u32,
    /// Work requests per send or receive queue.
    pub max_qp_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// CQs per namespace.
    pub max_cq: u32,
    /// Entries per CQ.
    pub max_cqe: u32,
    /// MRs per namespace.
    pub max_mr: u32,
    /// Bytes per MR.
    pub max_mr_size: u64,
    /// PDs per namespace.
    pub max_pd: u32,
    /// SRQs per namespace.
    pub max_srq: u32,
    /// Work requests per SRQ.
    pub max_srq_wr: u32,
    /// SGEs per SRQ work request.
    pub max_srq_sge: u32,
    /// Inline bytes per send WR.
    pub max_inline_data: u32,
    /// `max_dest_rd_atomic` at most (responder resources per QP).
    pub max_qp_rd_atom: u8,
    /// `max_rd_atomic` at most (outstanding READ/atomics per QP as requester).
    pub max_qp_init_rd_atom: u8,
    /// Async events (and, apart, completion-channel events) queued per namespace at
    /// most; beyond that the newest is dropped and counted (see [`event`]).
    pub max_async_events: u32,
}

impl Default for DeviceLimits {
    /// rxe's limits (`rxe_param.h`), with MRs capped at 1 GiB because the engine owns
    /// their bytes.
    fn default() -> DeviceLimits {
        DeviceLimits {
            max_qp: 0x1_0000,
            max_qp_wr: 0x4000,
            max_sge: 32,
            max_cq: 0x4000,
            max_cqe: 0x7fff,
            max_mr: 0x4000,
            max_mr_size: 1 << 30,
            max_pd: 0x7ff0,
            max_srq: 0x4000,
            max_srq_wr: 0x4000,
            max_srq_sge: 27,
            max_inline_data: 400,
            max_qp_rd_atom: 128,
            max_qp_init_rd_atom: 128,
            max_async_events: DEFAULT_MAX_ASYNC_EVENTS,
        }
    }
}

/// What `query_device` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttributes {
    /// Resource limits (per namespace).
    pub limits: DeviceLimits,
    /// The port's active MTU (UD messages at most this long).
    pub active_mtu: PathMtu,
}

/// Which UDP source port outgoing packets carry (the ICRC covers it, so it must be the
/// port the datagram really leaves from). Receivers accept any source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourcePortPolicy {
    /// rxe's flow entropy: `0xC000 | (hash_32(qpn, 14) & 0x3fff)` per QP.
    #[default]
    PerQp,
    /// One port for everything (a socket bound to port 4791 sends from 4791).
    Fixed(u16),
}

impl SourcePortPolicy {
    /// The source port of a QP whose own (entropy) port is `qp_port`.
    fn port(self, qp_port: u16) -> u16 {
        match self {
            SourcePortPolicy::PerQp => qp_port,
            SourcePortPolicy::Fixed(port) => port,
        }
    }
}

/// Engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Resource limits.
    pub limits: DeviceLimits,
    /// The port's active MTU (rxe: netdev MTU − 80 rounded down; 1500 gives 1024).
    pub active_mtu: PathMtu,
    /// GIDs (IP addresses) of the default namespace.
    pub default_gids: Vec<IpAddr>,
    /// UDP source port of outgoing packets.
    pub udp_src_port: SourcePortPolicy,
    /// How long an RC responder may hold a plain ACK back (0: send each at once, as rxe
    /// does). A held ACK goes out with the QP's next request packet, when this delay
    /// has passed, or when another ACK would follow it — one ACK then acknowledges
    /// every message before it, so ping-pong traffic sends its ACKs in the same batch
    /// as its replies and a stream of WRITEs gets one ACK per batch.
    pub ack_delay: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            limits: DeviceLimits::default(),
            active_mtu: PathMtu::Mtu1024,
            default_gids: Vec::new(),
            udp_src_port: SourcePortPolicy::PerQp,
            ack_delay: Duration::ZERO,
        }
    }
}

/// NAKs by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NakCounters {
    /// PSN sequence error.
    pub psn_sequence: u64,
    /// Receiver not ready.
    pub rnr: u64,
    /// Invalid request.
    pub invalid_request: u64,
    /// Remote access error.
    pub remote_access: u64,
    /// Remote operational error.
    pub remote_operational: u64,
    /// Invalid RD request or reserved codes.
    pub other: u64,
}

impl NakCounters {
    pub(crate) fn count(&mut self, code: ferroce_wire::NakCode) {
        use ferroce_wire::NakCode::*;
        match code {
            PsnSequenceError => self.psn_sequence += 1,
            InvalidRequest => self.invalid_request += 1,
            RemoteAccessError => self.remote_access += 1,
            RemoteOperationalError => self.remote_operational += 1,
            InvalidRdRequest | Reserved(_) => self.other += 1,
        }
    }
}

/// Packets dropped, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    /// Not a RoCEv2 packet the parser accepts.
    pub malformed: u64,
    /// No namespace owns the destination address.
    pub unknown_address: u64,
    /// No such QP in the namespace.
    pub unknown_qp: u64,
    /// The opcode's transport is not the QP's.
    pub wrong_transport: u64,
    /// The QP's state does not accept the packet.
    pub wrong_state: u64,
    /// The source is not the connected QP's peer.
    pub address_mismatch: u64,
    /// UD Q_Key mismatch.
    pub qkey_mismatch: u64,
    /// P_Key not of the QP's partition (ibverbs' `bad_pkey_cntr`).
    pub pkey_mismatch: u64,
    /// UD (or UC) with no receive WR posted.
    pub no_receive_buffer: u64,
    /// PSN ahead of the expected one.
    pub out_of_sequence: u64,
    /// A response that matches no outstanding request.
    pub unexpected_response: u64,
    /// A response already processed.
    pub duplicate_response: u64,
    /// A duplicate READ/atomic with no matching responder resource.
    pub duplicate_not_replayed: u64,
    /// UC requests refused (UC sends no NAK).
    pub refused: u64,
    /// UD messages longer than the port's active MTU (no sender may emit one).
    pub too_long: u64,
}

/// Engine counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Datagrams handed to `handle_datagram`.
    pub packets_in: u64,
    /// Datagrams returned by `poll_transmit`.
    pub packets_out: u64,
    /// UDP payload bytes in.
    pub bytes_in: u64,
    /// UDP payload bytes out.
    pub bytes_out: u64,
    /// Request packets sent again (go-back-N).
    pub retransmits: u64,
    /// Retransmit timer expiries with work outstanding.
    pub timeouts: u64,
    /// Duplicate requests seen by responders.
    pub duplicates: u64,
    /// Bad ICRC.
    pub icrc_errors: u64,
    /// CNPs received.
    pub cnps_received: u64,
    /// Packets with ECN CE received.
    pub ecn_ce_received: u64,
    /// Completions lost to full CQs.
    pub completion_queue_overflows: u64,
    /// Async and completion-channel events dropped because the namespace's queue was
    /// full ([`DeviceLimits::max_async_events`]).
    pub async_events_dropped: u64,
    /// NAKs sent by responders.
    pub naks_sent: NakCounters,
    /// NAKs received by requesters.
    pub naks_received: NakCounters,
    /// Drops by reason.
    pub drops: DropCounters,
}

/// A small seeded generator (SplitMix64): keys and addresses depend only on the seed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for namespace `id` of an engine seeded with `seed`: each namespace
    /// draws its own sequence, so identical commands in two namespaces give identical
    /// identifiers (keys included), as namespaces promise.
    pub(crate) fn for_namespace(seed: u64, id: NamespaceId) -> SplitMix64 {
        let mut mix = SplitMix64(seed ^ u64::from(id.0).wrapping_mul(0xd6e8_feb8_6659_fd93));
        SplitMix64(mix.next())
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Mixed into the engine's seed for the CM agents' random streams.
const CM_SEED: u64 = 0x436f_6d6d_4d67_7200;

/// IPv4-mapped IPv6 addresses are the IPv4 address (RoCEv2 GIDs for IPv4 are mapped).
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The ICRC envelope of a datagram between two addresses (IPv4: ident 0 and DF, as the
/// I/O layer's unconnected PMTUDISC_DO socket makes the kernel send).
fn envelope(src: IpAddr, dst: IpAddr, src_port: u16) -> Option<ferroce_wire::icrc::Envelope> {
    received_envelope(src, dst, src_port, None)
}

/// The ICRC envelope of a received datagram: IPv4 with the identification and DF flag
/// the I/O layer recovered (`None`: ident 0 with DF).
fn received_envelope(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    ipv4_ident: Option<ferroce_wire::ident::Recovered>,
) -> Option<ferroce_wire::icrc::Envelope> {
    use ferroce_wire::icrc::{Envelope, IpFields, IPV4_DONT_FRAG};
    match (canonical(src), canonical(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut env = Envelope::ipv4(s, d, 0, src_port);
            if let (
                Some(found),
                IpFields::V4 {
                    ident, flags_frag, ..
                },
            ) = (ipv4_ident, &mut env.ip)
            {
                *ident = found.ident;
                *flags_frag = if found.dont_frag { IPV4_DONT_FRAG } else { 0 };
            }
            Some(env)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(Envelope::ipv6(s, d, src_port)),
        _ => None,
    }
}

/// IBA's P_Key match (rxe's `pkey_match`): the same partition in the low 15 bits,
/// not the invalid partition 0, and at least one side a full member (bit 15): two
/// limited members of a partition may not talk.
pub fn pkey_match(packet: u16, table: u16) -> bool {
    const PARTITION: u16 = 0x7fff;
    const FULL_MEMBER: u16 = 0x8000;
    packet & PARTITION != 0
        && packet & PARTITION == table & PARTITION
        && (packet | table) & FULL_MEMBER != 0
}

/// Work-queue entries a QP holds, as its namespace's quota counts them.
fn work_queue_entries(init: &QpInitAttr) -> u64 {
    queue_entries(init.cap, init.srq.is_some())
}

/// Send-queue entries, and receive-queue entries unless the QP receives from an SRQ.
fn queue_entries(cap: QpCap, on_srq: bool) -> u64 {
    let recv = if on_srq { 0 } else { cap.max_recv_wr };
    u64::from(cap.max_send_wr) + u64::from(recv)
}

/// ibverbs: remote write and atomics need local write.
fn check_mr_access(access: AccessFlags) -> Result<()> {
    let needs_local = AccessFlags::REMOTE_WRITE.bits() | AccessFlags::REMOTE_ATOMIC.bits();
    if access.bits() & needs_local != 0 && !access.contains(AccessFlags::LOCAL_WRITE) {
        return Err(VerbsError::InvalidArgument(
            "REMOTE_WRITE/REMOTE_ATOMIC need LOCAL_WRITE",
        ));
    }
    Ok(())
}

use buffers::BufferPool;
use ferroce_wire::Qpn;
use memory::LentBytes;
use namespace::Namespace;
use qp::{Context, QueuePair};

/// Packets a QP sends in a row before the next QP with work gets its turn: one 64 KiB
/// message at a 4 KiB MTU, so a QP's multi-packet message leaves in one run while QPs
/// still take turns.
pub const QP_BURST: usize = 16;

/// The sans-IO RoCEv2 engine: namespaces of verbs resources, driven by datagrams and
/// time. Same seed and same inputs give the same outputs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    seed: u64,
    namespaces: BTreeMap<NamespaceId, Namespace>,
    routes: BTreeMap<IpAddr, NamespaceId>,
    counters: Counters,
    /// QPs that may have something to send, round-robin.
    active: VecDeque<(NamespaceId, Qpn)>,
    /// Last packets of destroyed QPs (their held ACKs), sent before anything else.
    parting: VecDeque<Datagram>,
    active_set: BTreeSet<(NamespaceId, Qpn)>,
    /// Every QP's earliest timer, ordered, so `poll_timeout` is not a scan of all QPs.
    timers: BTreeSet<(Time, NamespaceId, Qpn)>,
    timer_of: BTreeMap<(NamespaceId, Qpn), Time>,
    /// Spare datagram buffers ([`Engine::recycle`]).
    buffers: BufferPool,
    /// The port's state as the I/O layer last reported it ([`Engine::handle_port_event`]);
    /// down until it reports (an engine without I/O has no link).
    port_active: bool,
    /// Namespaces whose CM agents have timers or MADs to send.
    cm_schedule: cm::CmSchedule,
}

/// The datagram of a packet a QP built: headers emitted and the ICRC filled in; its
/// payload is still lent when the QP lent it (it goes `at` in the datagram).
fn build(out: qp::Outgoing, src_port: u16) -> Option<(Datagram, Option<(usize, LentBytes)>)> {
    use ferroce_wire::{icrc, packet};
    let env = envelope(out.src, out.dst, src_port)?;
    let mut repr = out.repr;
    repr.bth.pad_count = packet::pad_for(out.payload_len);
    let mut bytes = out.buffer;
    // The payload is in place (or lent) and the pad bytes are still zero: write the
    // headers, then the ICRC over all of it.
    repr.emit(&mut bytes).ok()?;
    match &out.lent {
        // Lent by the QP a moment ago, in this step: read through raw copies.
        Some((at, lent)) => icrc::fill_around_with(&env, &mut bytes, *at, lent.len(), |hash| {
            lent.for_each_chunk(|chunk| hash.update(chunk))
        })
        .ok()?,
        None => icrc::fill(&env, &mut bytes).ok()?,
    }
    let datagram = Datagram {
        meta: DatagramMeta {
            src: canonical(out.src),
            dst: canonical(out.dst),
            src_port,
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        },
        payload: bytes,
    };
    Some((datagram, out.lent))
}

macro_rules! context {
    ($ns:expr, $engine:expr, $now:expr) => {
        Context {
            ns: $ns.id,
            now: $now,
            buffers: &mut $engine.buffers,
            lend: false,
            memory: &mut $ns.memory,
            cqs: &mut $ns.cqs,
            srqs: &mut $ns.srqs,
            events: &mut $ns.events,
            counters: &mut $engine.counters,
            gids: &$ns.gids,
        }
    };
}

impl Engine {
    /// An engine with the default namespace holding `config.default_gids`.
    pub fn new(config: EngineConfig, seed: u64) -> Engine {
        let mut engine = Engine {
            seed,
            namespaces: BTreeMap::new(),
            routes: BTreeMap::new(),
            counters: Counters::default(),
            active: VecDeque::new(),
            parting: VecDeque::new(),
            active_set: BTreeSet::new(),
            timers: BTreeSet::new(),
            timer_of: BTreeMap::new(),
            buffers: BufferPool::default(),
            port_active: false,
            cm_schedule: cm::CmSchedule::default(),
            config,
        };
        let gids = engine.config.default_gids.clone();
        // A fresh engine has no routes, so only duplicate GIDs in the config can clash;
        // then the default namespace gets the first of each.
        let mut unique = Vec::new();
        for gid in gids {
            if !unique
                .iter()
                .any(|g: &IpAddr| canonical(*g) == canonical(gid))
            {
                unique.push(gid);
            }
        }
        // Cannot fail: the id is new and the GIDs are distinct.
        let _ = engine.create_namespace(NamespaceId::DEFAULT, &unique);
        engine
    }

    /// Limits and port attributes.
    pub fn query_device(&self) -> DeviceAttributes {
        DeviceAttributes {
            limits: self.config.limits,
            active_mtu: self.config.active_mtu,
        }
    }

    /// Counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Creates a namespace owning `gids`; each address belongs to one namespace only.
    pub fn create_namespace(&mut self, id: NamespaceId, gids: &[IpAddr]) -> Result<()> {
        if self.namespaces.contains_key(&id) {
            return Err(VerbsError::AlreadyExists("namespace"));
        }
        for gid in gids {
            if self.routes.contains_key(&canonical(*gid)) {
                return Err(VerbsError::AlreadyExists("GID owned by another namespace"));
            }
        }
        let gids: Vec<IpAddr> = gids.iter().map(|g| canonical(*g)).collect();
        for gid in &gids {
            self.routes.insert(*gid, id);
        }
        let rng = SplitMix64::for_namespace(self.seed, id);
        let event_limit = self.config.limits.max_async_events;
        let agent = cm::Agent::new(
            id,
            cm::AgentConfig {
                active_mtu: self.config.active_mtu,
                max_rd_atomic: self.config.limits.max_qp_init_rd_atom,
                max_dest_rd_atomic: self.config.limits.max_qp_rd_atom,
                event_limit: event_limit as usize,
            },
            // Its own stream, so the CM's draws leave key and address draws unchanged.
            SplitMix64::for_namespace(self.seed ^ CM_SEED, id),
        );
        self.namespaces
            .insert(id, Namespace::new(id, gids, rng, event_limit, agent));
        Ok(())
    }

    /// Adds a GID to a namespace.
    pub fn add_gid(&mut self, ns: NamespaceId, gid: IpAddr) -> Result<()> {
        let gid = canonical(gid);
        if self.routes.contains_key(&gid) {
            return Err(VerbsError::AlreadyExists("GID owned by a namespace"));
        }
        let space = self.ns_mut(ns)?;
        space.gids.push(gid);
        let raised = space.events.raise(AsyncEvent::GidChange(PORT_NUM));
        self.routes.insert(gid, ns);
        self.count_dropped_event(raised);
        Ok(())
    }

    /// Sets a namespace's quotas (the daemon's share for a tenant). They bound what is
    /// created from now on; what exists already stays.
    pub fn set_quotas(&mut self, ns: NamespaceId, quotas: Quotas) -> Result<()> {
        self.ns_mut(ns)?.quotas = quotas;
        Ok(())
    }

    /// A namespace's quotas ([`Quotas::UNLIMITED`] unless set).
    pub fn quotas(&self, ns: NamespaceId) -> Result<Quotas> {
        Ok(self.ns(ns)?.quotas)
    }

    /// What a namespace holds, in the units of its quotas.
    pub fn usage(&self, ns: NamespaceId) -> Result<Usage> {
        Ok(self.ns(ns)?.usage())
    }

    /// The I/O layer reports the port's state: up while its sockets' addresses are on
    /// a working link (reported once they are bound), down when one is not. A change
    /// raises `PortActive` or `PortErr` in every namespace (each is a virtual device
    /// on the one port); a report of the same state raises nothing.
    pub fn handle_port_event(&mut self, active: bool) {
        if self.port_active == active {
            return;
        }
        self.port_active = active;
        let event = if active {
            AsyncEvent::PortActive(PORT_NUM)
        } else {
            AsyncEvent::PortErr(PORT_NUM)
        };
        tracing::debug!(%event, "port state changed");
        let mut dropped = 0;
        for space in self.namespaces.values_mut() {
            dropped += u64::from(!space.events.raise(event));
        }
        self.counters.async_events_dropped += dropped;
    }

    /// True when the I/O layer last reported the port up.
    pub fn port_active(&self) -> bool {
        self.port_active
    }

    fn count_dropped_event(&mut self, raised: bool) {
        if !raised {
            self.counters.async_events_dropped += 1;
        }
    }

    /// Removes a namespace and everything in it.
    pub fn destroy_namespace(&mut self, ns: NamespaceId) -> Result<()> {
        let removed = self
            .namespaces
            .remove(&ns)
            .ok_or(VerbsError::NotFound("namespace"))?;
        for gid in removed.gids {
            self.routes.remove(&gid);
        }
        self.active_set.retain(|(n, _)| *n != ns);
        self.active.retain(|(n, _)| *n != ns);
        self.timers.retain(|(_, n, _)| *n != ns);
        self.timer_of.retain(|(n, _), _| *n != ns);
        self.cm_schedule.forget(ns);
        Ok(())
    }

    /// The GIDs of a namespace.
    pub fn gids(&self, ns: NamespaceId) -> Result<&[IpAddr]> {
        Ok(&self.ns(ns)?.gids)
    }

    fn ns(&self, ns: NamespaceId) -> Result<&Namespace> {
        self.namespaces
            .get(&ns)
            .ok_or(VerbsError::NotFound("namespace"))
    }

    fn ns_mut(&mut self, ns: NamespaceId) -> Result<&mut Namespace> {
        self.namespaces
            .get_mut(&ns)
            .ok_or(VerbsError::NotFound("namespace"))
    }

    /// Re-reads a QP's timer into the ordered timer set (after anything that may move it).
    fn refresh_timer(&mut self, ns: NamespaceId, qpn: Qpn) {
        let new = self
            .namespaces
            .get(&ns)
            .and_then(|space| space.qps.get(&qpn))
            .and_then(QueuePair::timeout);
        let old = self.timer_of.get(&(ns, qpn)).copied();
        if old == new {
            return;
        }
        if let Some(t) = old {
            self.timers.remove(&(t, ns, qpn));
            self.timer_of.remove(&(ns, qpn));
        }
        if let Some(t) = new {
            self.timers.insert((t, ns, qpn));
            self.timer_of.insert((ns, qpn), t);
        }
    }

    fn schedule(&mut self, ns: NamespaceId, qpn: Qpn) {
        if self.active_set.insert((ns, qpn)) {
            self.active.push_back((ns, qpn));
        }
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&mut self, ns: NamespaceId) -> Result<ProtectionDomain> {
        let limit = self.config.limits.max_pd as usize;
        let space = self.ns_mut(ns)?;
        if space.pds.len() >= limit {
            return Err(VerbsError::LimitExceeded("max_pd"));
        }
        let pd = space.allocate_pd();
        space.pds.insert(pd);
        Ok(pd)
    }

    /// Frees a PD no MR, SRQ or QP uses.
    pub fn dealloc_pd(&mut self, ns: NamespaceId, pd: ProtectionDomain) -> Result<()> {
        let space = self.ns_mut(ns)?;
        if !space.pds.contains(&pd) {
            return Err(VerbsError::NotFound("PD"));
        }
        if space.memory.uses_pd(pd)
            || space.qps.values().any(|q| q.pd == pd)
            || space.srqs.values().any(|s| s.pd == pd)
        {
            return Err(VerbsError::Busy("PD in use"));
        }
        space.pds.remove(&pd);
        Ok(())
    }

    /// Registers a zeroed region of `length` bytes owned by the engine.
    pub fn reg_mr(
        &mut self,
        ns: NamespaceId,
        pd: ProtectionDomain,
        length: u64,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        // Refuse before allocating: the length comes from the caller.
        if length > self.config.limits.max_mr_size {
            return Err(VerbsError::LimitExceeded("max_mr_size"));
        }
        self.check_mr_quotas(ns, length)?;
        let length =
            usize::try_from(length).map_err(|_| VerbsError::LimitExceeded("max_mr_size"))?;
        self.reg_mr_backed(ns, pd, Box::new(vec![0u8; length]), access)
    }

    /// Registers memory the caller provides (a `Box` of a [`MemoryBacking`], or
    /// [`CallerMemory`]) behind the same key, PD, access and bounds checks as
    /// `reg_mr`; its whole length is the region, and caller memory's address its iova.
    pub fn reg_mr_backed(
        &mut self,
        ns: NamespaceId,
        pd: ProtectionDomain,
        backing: impl Into<RegionMemory>,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        let backing = backing.into();
        let limits = self.config.limits;
        if backing.len() as u64 > limits.max_mr_size {
            return Err(VerbsError::LimitExceeded("max_mr_size"));
        }
        check_mr_access(access)?;
        self.check_mr_quotas(ns, backing.len() as u64)?;
        let space = self.ns_mut(ns)?;
        if !space.pds.contains(&pd) {
            return Err(VerbsError::NotFound("PD"));
        }
        if space.memory.len() >= limits.max_mr as usize {
            return Err(VerbsError::LimitExceeded("max_mr"));
        }
        let key_byte = space.rng.next() as u8;
        let addr_bits = space.rng.next() as u32;
        space
            .memory
            .register_backing(pd, backing, access, key_byte, addr_bits)
            .map_err(|_| VerbsError::LimitExceeded("MR table"))
    }

    fn check_mr_quotas(&self, ns: NamespaceId, length: u64) -> Result<()> {
        let space = self.ns(ns)?;
        space.check_quota(QuotaResource::Mrs, 1)?;
        space.check_quota(QuotaResource::RegisteredBytes, length)
    }

    /// Deregisters a region: every later access with its keys fails.
    pub fn dereg_mr(&mut self, ns: NamespaceId, lkey: Lkey) -> Result<()> {
        self.ns_mut(ns)?
            .memory
            .deregister(lkey)
            .map(|_| ())
            .ok_or(VerbsError::NotFound("MR"))
    }

    /// The owner writes into its region (like an application filling its buffer).
    pub fn mr_write(&mut self, ns: NamespaceId, lkey: Lkey, addr: u64, data: &[u8]) -> Result<()> {
        self.ns_mut(ns)?
            .memory
            .owner_write(lkey, addr, data)
            .map_err(|_| VerbsError::AccessDenied("lkey or range"))
    }

    /// The owner reads from its region.
    pub fn mr_read(
        &mut self,
        ns: NamespaceId,
        lkey: Lkey,
        addr: u64,
        out: &mut [u8],
    ) -> Result<()> {
        self.ns_mut(ns)?
            .memory
            .owner_read(lkey, addr, out)
            .map_err(|_| VerbsError::AccessDenied("lkey or range"))
    }

    /// Creates a CQ of `cqe` entries.
    pub fn create_cq(&mut self, ns: NamespaceId, cqe: u32) -> Result<CompletionQueueId> {
        let limits = self.config.limits;
        if cqe == 0 || cqe > limits.max_cqe {
            return Err(VerbsError::LimitExceeded("max_cqe"));
        }
        let space = self.ns_mut(ns)?;
        if space.cqs.len() >= limits.max_cq as usize {
            return Err(VerbsError::LimitExceeded("max_cq"));
        }
        space.check_quota(QuotaResource::Cqs, 1)?;
        let id = space.allocate_cq();
        space.cqs.insert(id, cq::CompletionQueue::new(cqe as usize));
        Ok(id)
    }

    /// Destroys a CQ no QP uses.
    pub fn destroy_cq(&mut self, ns: NamespaceId, cq: CompletionQueueId) -> Result<()> {
        let space = self.ns_mut(ns)?;
        if !space.cqs.contains_key(&cq) {
            return Err(VerbsError::NotFound("CQ"));
        }
        if space
            .qps
            .values()
            .any(|q| q.send_cq == cq || q.recv_cq == cq)
        {
            return Err(VerbsError::Busy("CQ in use"));
        }
        space.cqs.remove(&cq);
        Ok(())
    }

    /// Takes up to `max` completions, oldest first.
    pub fn poll_cq(
        &mut self,
        ns: NamespaceId,
        cq: CompletionQueueId,
        max: usize,
    ) -> Result<Vec<WorkCompletion>> {
        Ok(self
            .ns_mut(ns)?
            .cqs
            .get_mut(&cq)
            .ok_or(VerbsError::NotFound("CQ"))?
            .poll(max))
    }

    /// Arms a CQ's completion event for its next completion, or with `solicited_only`
    /// its next solicited or failed one (`ibv_req_notify_cq`); the event is delivered
    /// once, through [`Engine::poll_completion_event`].
    pub fn req_notify_cq(
        &mut self,
        ns: NamespaceId,
        cq: CompletionQueueId,
        solicited_only: bool,
    ) -> Result<()> {
        self.ns_mut(ns)?
            .cqs
            .get_mut(&cq)
            .ok_or(VerbsError::NotFound("CQ"))?
            .arm(solicited_only);
        Ok(())
    }

    /// The next asynchronous event of a namespace, oldest first (`ibv_get_async_event`
    /// without the wait). At most [`DeviceLimits::max_async_events`] wait; see
    /// [`event`] for what happens beyond.
    pub fn poll_event(&mut self, ns: NamespaceId) -> Option<AsyncEvent> {
        self.namespaces.get_mut(&ns)?.events.async_events.pop()
    }

    /// Async events waiting in a namespace.
    pub fn pending_events(&self, ns: NamespaceId) -> usize {
        self.namespaces
            .get(&ns)
            .map_or(0, |space| space.events.async_events.len())
    }

    /// The next CQ whose armed notification fired (`ibv_get_cq_event` without the
    /// wait), oldest first.
    pub fn poll_completion_event(&mut self, ns: NamespaceId) -> Option<CompletionQueueId> {
        self.namespaces.get_mut(&ns)?.events.completion_events.pop()
    }

    /// Creates an SRQ.
    pub fn create_srq(
        &mut self,
        ns: NamespaceId,
        pd: ProtectionDomain,
        attr: SrqAttr,
    ) -> Result<SharedReceiveQueueId> {
        let limits = self.config.limits;
        if attr.max_wr == 0 || attr.max_wr > limits.max_srq_wr {
            return Err(VerbsError::LimitExceeded("max_srq_wr"));
        }
        if attr.max_sge > limits.max_srq_sge {
            return Err(VerbsError::LimitExceeded("max_srq_sge"));
        }
        if attr.srq_limit > attr.max_wr {
            return Err(VerbsError::InvalidArgument("srq_limit above max_wr"));
        }
        let space = self.ns_mut(ns)?;
        if !space.pds.contains(&pd) {
            return Err(VerbsError::NotFound("PD"));
        }
        if space.srqs.len() >= limits.max_srq as usize {
            return Err(VerbsError::LimitExceeded("max_srq"));
        }
        space.check_quota(QuotaResource::Srqs, 1)?;
        space.check_quota(QuotaResource::WorkRequests, u64::from(attr.max_wr))?;
        space.work_requests += u64::from(attr.max_wr);
        let id = space.allocate_srq();
        space
            .srqs
            .insert(id, srq::SharedReceiveQueue::new(pd, attr));
        Ok(id)
    }

    /// Arms (or disarms, with 0) an SRQ's limit.
    pub fn modify_srq(
        &mut self,
        ns: NamespaceId,
        srq: SharedReceiveQueueId,
        srq_limit: u32,
    ) -> Result<()> {
        let queue = self
            .ns_mut(ns)?
            .srqs
            .get_mut(&srq)
            .ok_or(VerbsError::NotFound("SRQ"))?;
        if srq_limit > queue.attr.max_wr {
            return Err(VerbsError::InvalidArgument("srq_limit above max_wr"));
        }
        queue.attr.srq_limit = srq_limit;
        Ok(())
    }

    /// SRQ attributes (`srq_limit` 0 once the limit event fired).
    pub fn query_srq(&self, ns: NamespaceId, srq: SharedReceiveQueueId) -> Result<SrqAttr> {
        Ok(self
            .ns(ns)?
            .srqs
            .get(&srq)
            .ok_or(VerbsError::NotFound("SRQ"))?
            .attr())
    }

    /// Destroys an SRQ no QP uses.
    pub fn destroy_srq(&mut self, ns: NamespaceId, srq: SharedReceiveQueueId) -> Result<()> {
        let space = self.ns_mut(ns)?;
        if !space.srqs.contains_key(&srq) {
            return Err(VerbsError::NotFound("SRQ"));
        }
        if space.qps.values().any(|q| q.srq == Some(srq)) {
            return Err(VerbsError::Busy("SRQ in use"));
        }
        if let Some(removed) = space.srqs.remove(&srq) {
            space.work_requests -= u64::from(removed.attr.max_wr);
        }
        Ok(())
    }

    /// Posts a receive WR to an SRQ.
    pub fn post_srq_recv(
        &mut self,
        ns: NamespaceId,
        srq: SharedReceiveQueueId,
        wr: RecvWr,
    ) -> Result<()> {
        let queue = self
            .ns_mut(ns)?
            .srqs
            .get_mut(&srq)
            .ok_or(VerbsError::NotFound("SRQ"))?;
        if queue.queue.len() >= queue.attr.max_wr as usize {
            return Err(VerbsError::QueueFull);
        }
        if wr.sg_list.len() > queue.attr.max_sge as usize {
            return Err(VerbsError::LimitExceeded("max_sge"));
        }
        queue.queue.push_back(wr);
        Ok(())
    }

    /// Creates a QP in RESET; its QPN is allocated inside the namespace.
    pub fn create_qp(&mut self, ns: NamespaceId, init: QpInitAttr) -> Result<Qpn> {
        let limits = self.config.limits;
        self.check_cap(&init.cap)?;
        let ud_mtu = self.config.active_mtu.bytes();
        let ack_delay = self.config.ack_delay;
        let space = self.ns_mut(ns)?;
        if space.qps.len() >= limits.max_qp as usize {
            return Err(VerbsError::LimitExceeded("max_qp"));
        }
        if !space.pds.contains(&init.pd) {
            return Err(VerbsError::NotFound("PD"));
        }
        if !space.cqs.contains_key(&init.send_cq) || !space.cqs.contains_key(&init.recv_cq) {
            return Err(VerbsError::NotFound("CQ"));
        }
        if let Some(srq) = init.srq {
            if !space.srqs.contains_key(&srq) {
                return Err(VerbsError::NotFound("SRQ"));
            }
        }
        space.check_quota(QuotaResource::Qps, 1)?;
        space.check_quota(QuotaResource::WorkRequests, work_queue_entries(&init))?;
        let qpn = space
            .allocate_qpn()
            .ok_or(VerbsError::LimitExceeded("QPN space"))?;
        space.work_requests += work_queue_entries(&init);
        let mut qp = QueuePair::new(qpn, &init);
        qp.req.ud_mtu = ud_mtu;
        qp.ack_delay = ack_delay;
        space.qps.insert(qpn, qp);
        Ok(qpn)
    }

    fn check_cap(&self, cap: &QpCap) -> Result<()> {
        let limits = &self.config.limits;
        if cap.max_send_wr > limits.max_qp_wr || cap.max_recv_wr > limits.max_qp_wr {
            return Err(VerbsError::LimitExceeded("max_qp_wr"));
        }
        if cap.max_send_sge > limits.max_sge || cap.max_recv_sge > limits.max_sge {
            return Err(VerbsError::LimitExceeded("max_sge"));
        }
        if cap.max_inline_data > limits.max_inline_data {
            return Err(VerbsError::LimitExceeded("max_inline_data"));
        }
        Ok(())
    }

    /// Creates the namespace's QP1 (GSI) for RDMA CM and other MADs: a UD QP numbered 1
    /// (`init.qp_type` must be UD); its Q_Key should be set to
    /// [`ferroce_wire::deth::GSI_QKEY`] when it is moved to INIT.
    pub fn create_gsi_qp(&mut self, ns: NamespaceId, init: QpInitAttr) -> Result<Qpn> {
        if init.qp_type != QpType::Ud {
            return Err(VerbsError::InvalidArgument("QP1 is a UD QP"));
        }
        self.check_cap(&init.cap)?;
        let ud_mtu = self.config.active_mtu.bytes();
        let space = self.ns_mut(ns)?;
        if space.qps.contains_key(&Qpn::GSI) {
            return Err(VerbsError::AlreadyExists("QP1"));
        }
        if space.cm.in_use() {
            return Err(VerbsError::Busy("QP1 is the CM agent's"));
        }
        if !space.pds.contains(&init.pd) {
            return Err(VerbsError::NotFound("PD"));
        }
        if !space.cqs.contains_key(&init.send_cq) || !space.cqs.contains_key(&init.recv_cq) {
            return Err(VerbsError::NotFound("CQ"));
        }
        space.check_quota(QuotaResource::Qps, 1)?;
        space.check_quota(QuotaResource::WorkRequests, work_queue_entries(&init))?;
        space.work_requests += work_queue_entries(&init);
        let mut qp = QueuePair::new(Qpn::GSI, &init);
        qp.req.ud_mtu = ud_mtu;
        qp.gsi = true;
        space.qps.insert(Qpn::GSI, qp);
        Ok(Qpn::GSI)
    }

    /// Destroys a QP (its outstanding work is dropped without completions).
    pub fn destroy_qp(&mut self, ns: NamespaceId, qpn: Qpn) -> Result<()> {
        let space = self
            .namespaces
            .get_mut(&ns)
            .ok_or(VerbsError::NotFound("namespace"))?;
        let mut qp = space.qps.remove(&qpn).ok_or(VerbsError::NotFound("QP"))?;
        space.work_requests -= queue_entries(qp.cap, qp.srq.is_some());
        // An ACK held back (`ack_delay`) still goes out: the requests it acknowledges
        // were executed, and the peer would otherwise retry them against a gone QP.
        if qp.resp.ack_due().is_some() {
            qp.resp.release_ack(Time::ZERO);
            let mut ctx = context!(space, self, Time::ZERO);
            let out = qp.poll_response(&mut ctx);
            let src_port = self.config.udp_src_port.port(qp.src_port);
            if let Some((datagram, lent)) = out.and_then(|out| build(out, src_port)) {
                self.parting.push_back(lent::owned_now(datagram, lent));
            }
        }
        self.refresh_timer(ns, qpn);
        Ok(())
    }

    /// Moves a QP between states with the attributes the transition requires or allows.
    pub fn modify_qp(&mut self, ns: NamespaceId, qpn: Qpn, attr: &QpAttr) -> Result<()> {
        let limits = qp::ModifyLimits {
            max_rd_atomic: self.config.limits.max_qp_init_rd_atom,
            max_dest_rd_atomic: self.config.limits.max_qp_rd_atom,
        };
        let now = Time::ZERO;
        let space = self
            .namespaces
            .get_mut(&ns)
            .ok_or(VerbsError::NotFound("namespace"))?;
        let qp = space.qps.get_mut(&qpn).ok_or(VerbsError::NotFound("QP"))?;
        let gids = space.gids.clone();
        let resolve = |av: &AddressVector| -> Option<IpAddr> {
            let remote = canonical(av.remote);
            match av.local {
                Some(local) => {
                    let local = canonical(local);
                    (gids.contains(&local) && local.is_ipv4() == remote.is_ipv4()).then_some(local)
                }
                None => gids
                    .iter()
                    .copied()
                    .find(|g| g.is_ipv4() == remote.is_ipv4()),
            }
        };
        let mut ctx = context!(space, self, now);
        let mut attr = *attr;
        if let Some(av) = &mut attr.av {
            av.remote = canonical(av.remote);
        }
        qp.modify(&attr, limits, resolve, &mut ctx)?;
        self.refresh_timer(ns, qpn);
        self.schedule(ns, qpn);
        Ok(())
    }

    /// A QP's state and every attribute.
    pub fn query_qp(&self, ns: NamespaceId, qpn: Qpn) -> Result<QpInfo> {
        Ok(self
            .ns(ns)?
            .qps
            .get(&qpn)
            .ok_or(VerbsError::NotFound("QP"))?
            .info())
    }

    /// Queues a send WR. Nothing is sent here: packets come out of `poll_transmit`.
    pub fn post_send(&mut self, ns: NamespaceId, qpn: Qpn, wr: SendWr) -> Result<()> {
        if wr.sg_list.len() > self.config.limits.max_sge as usize {
            return Err(VerbsError::LimitExceeded("max_sge"));
        }
        let space = self
            .namespaces
            .get_mut(&ns)
            .ok_or(VerbsError::NotFound("namespace"))?;
        let qp = space.qps.get_mut(&qpn).ok_or(VerbsError::NotFound("QP"))?;
        let mut ctx = context!(space, self, Time::ZERO);
        qp.post_send(wr, &mut ctx)?;
        self.schedule(ns, qpn);
        Ok(())
    }

    /// Posts a receive WR to a QP's own receive queue.
    pub fn post_recv(&mut self, ns: NamespaceId, qpn: Qpn, wr: RecvWr) -> Result<()> {
        let space = self
            .namespaces
            .get_mut(&ns)
            .ok_or(VerbsError::NotFound("namespace"))?;
        let qp = space.qps.get_mut(&qpn).ok_or(VerbsError::NotFound("QP"))?;
        let mut ctx = context!(space, self, Time::ZERO);
        qp.post_recv(wr, &mut ctx)
    }

    /// A datagram arrived (the UDP payload from the BTH to the ICRC).
    pub fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]) {
        self.receive(now, meta, payload, false);
    }

    /// A datagram arrived whose ICRC the I/O layer has already verified: recovering the
    /// IPv4 identification with `ferroce_wire::ident::IdentSolver` succeeds only for a
    /// valid ICRC, so checking it again would be a second pass over every byte.
    pub fn handle_verified_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]) {
        self.receive(now, meta, payload, true);
    }

    fn receive(&mut self, now: Time, meta: DatagramMeta, payload: &[u8], icrc_verified: bool) {
        use ferroce_wire::opcode::Operation;
        use ferroce_wire::{icrc, packet, Transport};
        self.counters.packets_in += 1;
        self.counters.bytes_in += payload.len() as u64;
        let Ok(parsed) = packet::parse(payload) else {
            count_drop!(self.counters, malformed, src = %meta.src);
            return;
        };
        let Some(env) = received_envelope(meta.src, meta.dst, meta.src_port, meta.ipv4_ident)
        else {
            count_drop!(self.counters, malformed, src = %meta.src);
            return;
        };
        if !icrc_verified && !matches!(icrc::verify(&env, payload), Ok(true)) {
            self.counters.icrc_errors += 1;
            tracing::debug!(src = %meta.src, qpn = %parsed.repr.bth.dest_qp, reason = "icrc_error", "packet dropped");
            return;
        }
        if meta.ecn == Ecn::Ce {
            self.counters.ecn_ce_received += 1;
        }
        let Ok(info) = parsed.repr.info() else {
            count_drop!(self.counters, malformed, src = %meta.src);
            return;
        };
        if info.transport == Transport::Cnp {
            // Recognised; congestion control comes later.
            self.counters.cnps_received += 1;
            return;
        }
        let Some(&ns) = self.routes.get(&canonical(meta.dst)) else {
            count_drop!(self.counters, unknown_address, src = %meta.src, dst = %meta.dst);
            return;
        };
        let Some(space) = self.namespaces.get_mut(&ns) else {
            count_drop!(self.counters, unknown_address, src = %meta.src, dst = %meta.dst);
            return;
        };
        let qpn = parsed.repr.bth.dest_qp;
        if qpn == Qpn::GSI && !space.qps.contains_key(&Qpn::GSI) {
            self.handle_gsi_datagram(now, ns, &meta, &parsed);
            return;
        }
        let Some(qp) = space.qps.get_mut(&qpn) else {
            count_drop!(self.counters, unknown_qp, %ns, qpn = %qpn, src = %meta.src);
            return;
        };
        let transport_ok = matches!(
            (info.transport, qp.qp_type),
            (Transport::Rc, QpType::Rc) | (Transport::Uc, QpType::Uc) | (Transport::Ud, QpType::Ud)
        );
        if !transport_ok {
            count_drop!(self.counters, wrong_transport, %ns, qpn = %qpn, src = %meta.src);
            return;
        }
        if qp.qp_type != QpType::Ud {
            // As rxe's check_addr: a connected QP only hears its peer.
            let peer = qp.attr.av.map(|av| canonical(av.remote));
            if peer != Some(canonical(meta.src)) || qp.local != Some(canonical(meta.dst)) {
                count_drop!(self.counters, address_mismatch, %ns, qpn = %qpn, src = %meta.src);
                return;
            }
        }
        // rxe's check_keys, after the address as there: every QP, QP1 included, is in
        // the one partition of the P_Key table.
        if !pkey_match(parsed.repr.bth.pkey, ferroce_wire::bth::DEFAULT_PKEY) {
            let pkey = parsed.repr.bth.pkey;
            count_drop!(self.counters, pkey_mismatch, %ns, qpn = %qpn, pkey = format_args!("{pkey:#06x}"));
            return;
        }
        if qp.state == QpState::Rtr && qp.qp_type != QpType::Ud && !qp.comm_established {
            qp.comm_established = true;
            let raised = space.events.raise(AsyncEvent::CommEst(qpn));
            self.counters.async_events_dropped += u64::from(!raised);
        }
        let mut ctx = context!(space, self, now);
        match info.operation {
            Operation::Acknowledge | Operation::ReadResponse | Operation::AtomicAcknowledge => {
                qp.handle_response(&parsed, &mut ctx);
            }
            _ => qp.handle_request(&meta, &parsed, &mut ctx),
        }
        self.refresh_timer(ns, qpn);
        self.schedule(ns, qpn);
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Datagram> {
        let mut next = None;
        self.transmit(now, 1, false, |datagram, lent| {
            next = Some(lent::owned_now(datagram, lent))
        });
        next
    }

    /// Appends up to `max` datagrams to send to `out`; returns how many. Zero means
    /// nothing is ready, as `poll_transmit` returning `None` does. Cheaper per datagram
    /// than calling `poll_transmit` in a loop: each QP is looked up, and its timer
    /// refiled, once per burst of up to [`QP_BURST`] packets.
    pub fn poll_transmit_into(&mut self, now: Time, out: &mut Vec<Datagram>, max: usize) -> usize {
        self.transmit(now, max, false, |datagram, lent| {
            out.push(lent::owned_now(datagram, lent))
        })
    }

    /// A transmit round that may leave payloads in registered memory instead of copying
    /// them into the datagram, for the I/O layer to gather straight from there: the
    /// kernel's copy is then the only one. The round holds the engine until every
    /// datagram it gave is sent or owned (see [`Lending`]).
    pub fn lending(&mut self) -> Lending<'_> {
        Lending::new(self)
    }

    /// One pass over the QPs with something to send, each giving up to [`QP_BURST`]
    /// packets in turn, until `max` datagrams went to `emit`. With `lend`, QPs may lend
    /// payloads; `emit` gets them with the datagram (never past this step otherwise).
    fn transmit(
        &mut self,
        now: Time,
        max: usize,
        lend: bool,
        mut emit: impl FnMut(Datagram, Option<(usize, LentBytes)>),
    ) -> usize {
        let mut count = 0;
        while count < max {
            let Some(datagram) = self.parting.pop_front() else {
                break;
            };
            self.counters.packets_out += 1;
            self.counters.bytes_out += datagram.len() as u64;
            emit(datagram, None);
            count += 1;
        }
        if count < max {
            count += self.transmit_cm(max - count, &mut emit);
        }
        for _ in 0..self.active.len() {
            if count >= max {
                break;
            }
            let Some((ns, qpn)) = self.active.pop_front() else {
                break;
            };
            let Some(space) = self.namespaces.get_mut(&ns) else {
                self.active_set.remove(&(ns, qpn));
                continue;
            };
            let Some(qp) = space.qps.get_mut(&qpn) else {
                self.active_set.remove(&(ns, qpn));
                continue;
            };
            let src_port = self.config.udp_src_port.port(qp.src_port);
            let mut ctx = context!(space, self, now);
            ctx.lend = lend;
            let mut drained = false;
            for _ in 0..QP_BURST {
                if count >= max {
                    break;
                }
                let Some(out) = qp.poll_transmit(&mut ctx) else {
                    drained = true;
                    break;
                };
                if let Some((datagram, lent)) = build(out, src_port) {
                    let lent_len = lent.as_ref().map_or(0, |(_, bytes)| bytes.len());
                    ctx.counters.packets_out += 1;
                    ctx.counters.bytes_out += (datagram.len() + lent_len) as u64;
                    emit(datagram, lent);
                    count += 1;
                }
            }
            self.refresh_timer(ns, qpn);
            if drained {
                self.active_set.remove(&(ns, qpn));
            } else {
                self.active.push_back((ns, qpn));
            }
        }
        count
    }

    /// Gives back the payload of a datagram [`Engine::poll_transmit`] returned, once it
    /// is sent: later packets are built in it instead of in a new allocation.
    pub fn recycle(&mut self, payload: Vec<u8>) {
        self.buffers.put(payload);
    }

    /// When the engine next wants `handle_timeout`, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        let qp = self.timers.first().map(|&(t, _, _)| t);
        match (qp, self.cm_schedule.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<(NamespaceId, Qpn)> = self
            .timers
            .iter()
            .take_while(|(t, _, _)| *t <= now)
            .map(|&(_, ns, qpn)| (ns, qpn))
            .collect();
        for (ns, qpn) in due {
            if let Some(space) = self.namespaces.get_mut(&ns) {
                if let Some(qp) = space.qps.get_mut(&qpn) {
                    let mut ctx = context!(space, self, now);
                    qp.handle_timeout(&mut ctx);
                }
            }
            self.refresh_timer(ns, qpn);
            self.schedule(ns, qpn);
        }
        self.handle_cm_timeouts(now);
    }
}

impl sim::Node for Engine {
    fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]) {
        Engine::handle_datagram(self, now, meta, payload);
    }

    fn poll_transmit(&mut self, now: Time) -> Option<Datagram> {
        Engine::poll_transmit(self, now)
    }

    fn poll_timeout(&self) -> Option<Time> {
        Engine::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Time) {
        Engine::handle_timeout(self, now);
    }
}

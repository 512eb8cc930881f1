//! The `engine` fuzz target's world: one engine with two namespaces, each with PDs,
//! CQs, an SRQ, RC/UC/UD QPs connected to a peer that the input plays, and regions
//! filled with that namespace's byte pattern. An input is a sequence of [`Action`]s
//! (verbs calls, crafted or raw datagrams, sends, clock steps); after each one
//! [`World::check`] holds the engine to the invariants of issue 12 item 9.

pub mod cm;
pub mod craft;
pub mod invariants;
pub mod model;
#[cfg(test)]
mod regressions;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use ferroce_transport::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Engine, EngineConfig, Lkey, NamespaceId,
    PathMtu, ProtectionDomain, QpAttr, QpCap, QpInitAttr, QpState, QpType, RecvWr, SendOp, SendWr,
    Sge, SharedReceiveQueueId, SrqAttr, Time, UdDestination,
};
use ferroce_transport::wire::opcode::Operation;
use ferroce_transport::wire::packet::Parsed;
use ferroce_transport::wire::{Psn, Qpn, Rkey, ServiceId};

use craft::{host, AddrPick, Crafted, Incoming, KeyPick, Lookup, Raw};
use model::{pattern, sanitize, Forged, Region};

/// Steps one input runs at most.
pub const MAX_STEPS: usize = 200;
/// Datagrams one `Transmit` takes at most before the engine is deemed to loop.
const MAX_BURST: usize = 100_000;
/// Region sizes the world registers: several packets at the smallest path MTU.
pub const REGION_LEN: u64 = 2048;
/// Largest region the input may register.
const MAX_REGION_LEN: u64 = 16 * 1024;
/// QPs per namespace at most (CM accepts add some).
const MAX_QPS: usize = 16;
/// Regions per namespace at most (setup's included).
const MAX_REGIONS: usize = 8;
/// The Q_Key of every UD QP.
const QKEY: u32 = 0x1111_1111;
/// First PSN each way.
const START_PSN: u32 = 0x00ff_fff0;

/// Remote access granted to every connected QP at setup.
fn remote_access() -> AccessFlags {
    AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_ATOMIC
}

/// A QP as the world set it up.
#[derive(Debug, Clone, Copy)]
struct QpModel {
    qpn: Qpn,
    qp_type: QpType,
    pd: ProtectionDomain,
}

/// One namespace's resources.
#[derive(Debug)]
struct Space {
    id: NamespaceId,
    gid: IpAddr,
    pds: [ProtectionDomain; 2],
    cqs: [CompletionQueueId; 2],
    srq: SharedReceiveQueueId,
    qps: Vec<QpModel>,
    regions: Vec<Region>,
    next_serial: u8,
    forged: Forged,
}

/// A scatter/gather element: inside a region the world holds (perturbed; the other
/// namespace's is a tenant trying its neighbour's keys), or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum SgePick {
    Region {
        other_namespace: bool,
        index: u8,
        offset: i16,
        length: u16,
        key_flip: u8,
    },
    Any {
        addr: u64,
        length: u32,
        lkey: u32,
    },
}

/// The operation of a posted send.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum OpPick {
    Send,
    SendWithImm(u32),
    SendWithInv(KeyPick),
    Write(AddrPick, KeyPick),
    WriteWithImm(AddrPick, KeyPick, u32),
    Read(AddrPick, KeyPick),
    CompareSwap(AddrPick, KeyPick, u64, u64),
    FetchAdd(AddrPick, KeyPick, u64),
    LocalInv(KeyPick),
}

/// Where a UD send goes.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct UdPick {
    to_namespace: Option<u8>,
    qpn: u32,
    qkey: Option<u32>,
}

/// Attributes of a `modify_qp` (each `None` is left out of the mask).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct ModifyPick {
    state: Option<u8>,
    access: Option<u8>,
    path_mtu: Option<u8>,
    dest_qpn: Option<u32>,
    rq_psn: Option<u32>,
    sq_psn: Option<u32>,
    max_rd_atomic: Option<u8>,
    max_dest_rd_atomic: Option<u8>,
    min_rnr_timer: Option<u8>,
    timeout: Option<u8>,
    retry_cnt: Option<u8>,
    rnr_retry: Option<u8>,
    qkey: Option<u32>,
    pkey_index: Option<u16>,
    /// The peer, another host, or the other namespace.
    av: Option<u8>,
}

/// One step.
#[derive(Debug, Clone, Arbitrary)]
pub enum Action {
    // The first variant is what zero bytes pick: a crafted packet.
    Packet(Crafted),
    Raw(Raw),
    /// The same packet `4 × count + 1` times (its PSN, when picked relative to the
    /// expected one, follows each time), without sending anything in between: a peer
    /// flooding faster than the engine's answers leave.
    Flood {
        count: u8,
        packet: Crafted,
    },
    /// Takes up to `max` datagrams the engine wants to send (0: all of them).
    Transmit {
        max: u8,
    },
    /// Moves the clock by `mantissa << shift` nanoseconds and runs due timers.
    Advance {
        mantissa: u16,
        shift: u8,
    },
    PostSend {
        ns: u8,
        qp: u8,
        op: OpPick,
        sges: Vec<SgePick>,
        inline: Option<Vec<u8>>,
        /// signaled, fence, solicited.
        flags: u8,
        ud: UdPick,
    },
    PostRecv {
        ns: u8,
        qp: u8,
        sges: Vec<SgePick>,
    },
    PostSrqRecv {
        ns: u8,
        sges: Vec<SgePick>,
    },
    ModifyQp {
        ns: u8,
        qp: u8,
        attr: ModifyPick,
    },
    ModifySrq {
        ns: u8,
        limit: u8,
    },
    RegMr {
        ns: u8,
        second_pd: bool,
        len: u16,
        access: u8,
    },
    DeregMr {
        ns: u8,
        index: u8,
    },
    PollCq {
        ns: u8,
        cq: u8,
        max: u8,
    },
    ReqNotifyCq {
        ns: u8,
        cq: u8,
        solicited: bool,
    },
    PollEvent {
        ns: u8,
    },
    /// A MAD to a namespace's QP1.
    Mad(cm::MadPick),
    /// The consumer takes a namespace's next CM event; a connection request is
    /// accepted on a new QP or rejected.
    CmAnswer {
        ns: u8,
        accept: bool,
    },
    /// The consumer disconnects one of the connections the agent reported.
    CmDisconnect {
        ns: u8,
        index: u8,
    },
}

/// The engine and everything the world knows about it.
#[derive(Debug)]
pub struct World {
    engine: Engine,
    now: Time,
    spaces: [Space; 2],
    /// The PSN the peer sends next, per (namespace, QPN).
    peer_psn: BTreeMap<(usize, Qpn), Psn>,
    /// The last PSN of a request the engine sent, per (namespace, destination QPN).
    sent_psn: BTreeMap<(usize, Qpn), Psn>,
    /// Where [`World::check`] reads regions into (one allocation per input, not per
    /// region and step).
    scratch: Vec<u8>,
    /// Comm IDs the CM agents reported, per namespace.
    cm_ids: [Vec<ferroce_transport::engine::CommId>; 2],
}

fn ns_index(ns: u8) -> usize {
    usize::from(ns % 2)
}

impl World {
    /// Engine, namespaces, QPs in RTS, regions filled with their patterns.
    pub fn new() -> World {
        let config = EngineConfig {
            default_gids: vec![host(1)],
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(config, 0x5eed);
        let second = NamespaceId(1);
        engine
            .create_namespace(second, &[host(2)])
            .expect("a second namespace");
        let spaces = [
            Space::new(&mut engine, 0, NamespaceId::DEFAULT, host(1)),
            Space::new(&mut engine, 1, second, host(2)),
        ];
        let mut world = World {
            engine,
            now: Time::ZERO,
            spaces,
            peer_psn: BTreeMap::new(),
            sent_psn: BTreeMap::new(),
            scratch: vec![0; MAX_REGION_LEN as usize],
            cm_ids: [Vec::new(), Vec::new()],
        };
        for space in &world.spaces {
            world
                .engine
                .cm_listen(space.id, ServiceId(cm::SERVICE), 4)
                .expect("a listener");
        }
        for ns in 0..2 {
            for qp in world.spaces[ns].qps.clone() {
                world.connect(ns, qp);
                world.peer_psn.insert((ns, qp.qpn), Psn::new(START_PSN));
            }
            for _ in 0..4 {
                world.register(ns, None, REGION_LEN, AccessFlags::NONE);
            }
        }
        // A receive posted on every QP (and two on each SRQ) so that SENDs land from
        // the first step, in the first half of the first full-access region of the
        // QP's PD; the second half only a WRITE or atomic may change.
        let quarter = REGION_LEN as u16 / 4;
        let receive = |index, offset: u16, length| SgePick::Region {
            other_namespace: false,
            index,
            offset: offset as i16,
            length,
            key_flip: 0,
        };
        for ns in 0..2 {
            for qp in 0..world.spaces[ns].qps.len() {
                let index = if world.spaces[ns].qps[qp].pd == world.spaces[ns].pds[0] {
                    0
                } else {
                    3
                };
                world.step(&Action::PostRecv {
                    ns: ns as u8,
                    qp: qp as u8,
                    sges: vec![receive(index, 0, quarter)],
                });
            }
            for offset in [quarter, quarter + quarter / 2] {
                world.step(&Action::PostSrqRecv {
                    ns: ns as u8,
                    sges: vec![receive(0, offset, quarter / 2)],
                });
            }
        }
        world
    }

    /// The engine under test.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Moves a QP from RESET to RTS towards the peer.
    fn connect(&mut self, ns: usize, qp: QpModel) {
        let id = self.spaces[ns].id;
        let connected = qp.qp_type != QpType::Ud;
        let rc = qp.qp_type == QpType::Rc;
        let init = QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: connected.then(remote_access),
            qkey: (!connected).then_some(QKEY),
            ..QpAttr::default()
        };
        let mut rtr = QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        };
        let mut rts = QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(Psn::new(START_PSN)),
            ..QpAttr::default()
        };
        if connected {
            rtr.av = Some(AddressVector {
                remote: host(9),
                local: None,
            });
            rtr.path_mtu = Some(PathMtu::Mtu256);
            rtr.dest_qpn = Some(peer_qpn(ns, qp.qpn));
            rtr.rq_psn = Some(Psn::new(START_PSN));
        }
        if rc {
            rtr.max_dest_rd_atomic = Some(2);
            rtr.min_rnr_timer = Some(1);
            rts.timeout = Some(10);
            rts.retry_cnt = Some(3);
            rts.rnr_retry = Some(3);
            rts.max_rd_atomic = Some(2);
        }
        for attr in [init, rtr, rts] {
            self.engine
                .modify_qp(id, qp.qpn, &attr)
                .expect("setup moves the QP to RTS");
        }
    }

    /// Registers a region (setup's cycle through the access kinds when `access` is
    /// `None`) and fills it with its pattern.
    fn register(&mut self, ns: usize, second_pd: Option<bool>, len: u64, access: AccessFlags) {
        let space = &mut self.spaces[ns];
        if space.regions.len() >= MAX_REGIONS {
            return;
        }
        let setup_index = space.regions.len();
        let (pd, access) = match second_pd {
            Some(second) => (space.pds[usize::from(second)], access),
            None => {
                // Full access, remote READ only, local only, and full access in the
                // other PD.
                let all = AccessFlags::LOCAL_WRITE | remote_access();
                let kinds = [
                    (0, all),
                    (0, AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ),
                    (0, AccessFlags::NONE),
                    (1, all),
                ];
                let (pd, access) = kinds[setup_index % kinds.len()];
                (space.pds[pd], access)
            }
        };
        let Ok(mr) = self.engine.reg_mr(space.id, pd, len, access) else {
            return;
        };
        let serial = space.next_serial;
        space.next_serial = space.next_serial.wrapping_add(1);
        let bytes = pattern(ns, serial, mr.length as usize);
        self.engine
            .mr_write(space.id, mr.lkey, mr.addr, &bytes)
            .expect("the owner writes its new region");
        space.regions.push(Region::new(mr, bytes));
    }

    /// Runs one action, then checks every invariant; panics on a violation.
    pub fn step(&mut self, action: &Action) {
        match action {
            Action::PostSend {
                ns,
                qp,
                op,
                sges,
                inline,
                flags,
                ud,
            } => self.post_send(
                ns_index(*ns),
                *qp,
                *op,
                sges,
                inline.as_deref(),
                *flags,
                *ud,
            ),
            Action::PostRecv { ns, qp, sges } => {
                let ns = ns_index(*ns);
                let qp = self.qp(ns, *qp);
                let sg_list = self.writable_sges(ns, sges, qp.pd);
                let id = self.spaces[ns].id;
                let wr = RecvWr {
                    wr_id: 0,
                    sg_list: sg_list.into(),
                };
                let _ = self.engine.post_recv(id, qp.qpn, wr);
            }
            Action::PostSrqRecv { ns, sges } => {
                let ns = ns_index(*ns);
                let pd = self.spaces[ns].pds[0];
                let sg_list = self.writable_sges(ns, sges, pd);
                let space = &self.spaces[ns];
                let wr = RecvWr {
                    wr_id: 0,
                    sg_list: sg_list.into(),
                };
                let _ = self.engine.post_srq_recv(space.id, space.srq, wr);
            }
            Action::ModifyQp { ns, qp, attr } => self.modify_qp(ns_index(*ns), *qp, attr),
            Action::ModifySrq { ns, limit } => {
                let space = &self.spaces[ns_index(*ns)];
                let _ = self
                    .engine
                    .modify_srq(space.id, space.srq, u32::from(*limit));
            }
            Action::RegMr {
                ns,
                second_pd,
                len,
                access,
            } => {
                let access =
                    AccessFlags::from_bits(u32::from(*access & 0xf)).unwrap_or(AccessFlags::NONE);
                let len = u64::from(*len) % (MAX_REGION_LEN + 1);
                self.register(ns_index(*ns), Some(*second_pd), len, access);
            }
            Action::DeregMr { ns, index } => {
                let space = &mut self.spaces[ns_index(*ns)];
                if !space.regions.is_empty() {
                    let at = usize::from(*index) % space.regions.len();
                    let region = space.regions.remove(at);
                    self.engine
                        .dereg_mr(space.id, region.mr.lkey)
                        .expect("a registered region deregisters");
                }
            }
            Action::PollCq { ns, cq, max } => {
                let space = &self.spaces[ns_index(*ns)];
                let cq = space.cqs[usize::from(*cq % 2)];
                let max = usize::from(*max);
                let polled = self
                    .engine
                    .poll_cq(space.id, cq, max)
                    .expect("the CQ exists");
                assert!(polled.len() <= max, "poll_cq returned more than asked");
            }
            Action::ReqNotifyCq { ns, cq, solicited } => {
                let space = &self.spaces[ns_index(*ns)];
                let cq = space.cqs[usize::from(*cq % 2)];
                self.engine
                    .req_notify_cq(space.id, cq, *solicited)
                    .expect("the CQ exists");
            }
            Action::PollEvent { ns } => {
                let _ = self.engine.poll_event(self.spaces[ns_index(*ns)].id);
            }
            Action::Packet(crafted) => {
                if let Some(incoming) = crafted.build(self) {
                    self.receive(incoming);
                }
            }
            Action::Flood { count, packet } => {
                for _ in 0..=4 * usize::from(*count) {
                    if let Some(incoming) = packet.build(self) {
                        self.receive(incoming);
                    }
                    self.check();
                }
            }
            Action::Raw(raw) => {
                let incoming = raw.build(self);
                self.receive(incoming);
            }
            Action::Transmit { max } => self.transmit(usize::from(*max)),
            Action::Mad(pick) => {
                let ns = usize::from(pick.to_ns % 2);
                let incoming = pick.build(self, &self.cm_ids[ns]);
                self.receive(incoming);
            }
            Action::CmAnswer { ns, accept } => self.cm_answer(ns_index(*ns), *accept),
            Action::CmDisconnect { ns, index } => {
                let ns = ns_index(*ns);
                let ids = &self.cm_ids[ns];
                if !ids.is_empty() {
                    let id = ids[usize::from(*index) % ids.len()];
                    let _ = self
                        .engine
                        .cm_disconnect(self.now, self.spaces[ns].id, id, &[]);
                }
            }
            Action::Advance { mantissa, shift } => {
                let nanos = u64::from(*mantissa) << (shift % 24);
                self.now = self.now + Duration::from_nanos(nanos);
                self.engine.handle_timeout(self.now);
            }
        }
        self.check();
    }

    /// Takes one CM event of namespace `ns`; a request is accepted on a new RC QP of
    /// the first PD (which the model then knows, so WRITEs to it are permitted as to
    /// the others) or rejected.
    fn cm_answer(&mut self, ns: usize, accept: bool) {
        use ferroce_transport::engine::{AcceptParams, CmEvent};
        let space = &mut self.spaces[ns];
        let Some(event) = self.engine.poll_cm_event(space.id) else {
            return;
        };
        let CmEvent::ConnectRequest(request) = event else {
            return;
        };
        self.cm_ids[ns].push(request.id);
        if !accept || space.qps.len() >= MAX_QPS {
            let _ = self.engine.cm_reject(space.id, request.id, b"no");
            return;
        }
        let init = QpInitAttr {
            qp_type: QpType::Rc,
            pd: space.pds[0],
            send_cq: space.cqs[1],
            recv_cq: space.cqs[1],
            srq: None,
            cap: QpCap {
                max_send_wr: 8,
                max_recv_wr: 8,
                max_send_sge: 4,
                max_recv_sge: 4,
                max_inline_data: 64,
            },
            sq_sig_all: false,
        };
        let Ok(qpn) = self.engine.create_qp(space.id, init) else {
            return;
        };
        space.qps.push(QpModel {
            qpn,
            qp_type: QpType::Rc,
            pd: space.pds[0],
        });
        let params = AcceptParams::default();
        let _ = self
            .engine
            .cm_accept(self.now, space.id, request.id, qpn, &params, &[]);
    }

    fn qp(&self, ns: usize, index: u8) -> QpModel {
        let qps = &self.spaces[ns].qps;
        qps[usize::from(index) % qps.len()]
    }

    /// The SGEs picked, each marked writable in the model where it is valid for
    /// local writes in `pd` (receives and READ/atomic results land there).
    fn writable_sges(&mut self, ns: usize, picks: &[SgePick], pd: ProtectionDomain) -> Vec<Sge> {
        let sges: Vec<Sge> = picks
            .iter()
            .take(4)
            .filter_map(|p| self.sge(ns, *p))
            .collect();
        for sge in &sges {
            let regions = &mut self.spaces[ns].regions;
            if let Some(region) = regions.iter_mut().find(|r| r.mr.lkey == sge.lkey) {
                region.permit(
                    pd,
                    AccessFlags::LOCAL_WRITE,
                    sge.addr,
                    u64::from(sge.length),
                );
            }
        }
        sges
    }

    #[allow(clippy::too_many_arguments)]
    fn post_send(
        &mut self,
        ns: usize,
        qp: u8,
        op: OpPick,
        picks: &[SgePick],
        inline: Option<&[u8]>,
        flags: u8,
        ud: UdPick,
    ) {
        let qp = self.qp(ns, qp);
        let remote =
            |addr: AddrPick, key: KeyPick| (addr.resolve(&*self), Rkey(key.resolve(&*self)));
        let op = match op {
            OpPick::Send => SendOp::Send,
            OpPick::SendWithImm(imm) => SendOp::SendWithImm(imm),
            OpPick::SendWithInv(key) => SendOp::SendWithInv(Rkey(key.resolve(&*self))),
            OpPick::Write(addr, key) => {
                let (remote_addr, rkey) = remote(addr, key);
                SendOp::RdmaWrite { remote_addr, rkey }
            }
            OpPick::WriteWithImm(addr, key, imm) => {
                let (remote_addr, rkey) = remote(addr, key);
                SendOp::RdmaWriteWithImm {
                    remote_addr,
                    rkey,
                    imm,
                }
            }
            OpPick::Read(addr, key) => {
                let (remote_addr, rkey) = remote(addr, key);
                SendOp::RdmaRead { remote_addr, rkey }
            }
            OpPick::CompareSwap(addr, key, compare, swap) => {
                let (remote_addr, rkey) = remote(addr, key);
                SendOp::CompareSwap {
                    remote_addr,
                    rkey,
                    compare,
                    swap,
                }
            }
            OpPick::FetchAdd(addr, key, add) => {
                let (remote_addr, rkey) = remote(addr, key);
                SendOp::FetchAdd {
                    remote_addr,
                    rkey,
                    add,
                }
            }
            OpPick::LocalInv(key) => SendOp::LocalInv(Rkey(key.resolve(&*self))),
        };
        // Only READ and atomic results are written locally by a send WR; their SGEs
        // become writable. Other SGEs are gathered from, never written.
        let writes_back = matches!(
            op,
            SendOp::RdmaRead { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        );
        let sg_list = if writes_back {
            self.writable_sges(ns, picks, qp.pd)
        } else {
            picks
                .iter()
                .take(4)
                .filter_map(|p| self.sge(ns, *p))
                .collect()
        };
        let mut wr = SendWr::new(0, op, sg_list);
        wr.inline_data = inline.map(|bytes| {
            let mut bytes = bytes.to_vec();
            sanitize(&mut bytes);
            bytes
        });
        wr.signaled = flags & 1 != 0;
        wr.fence = flags & 2 != 0;
        wr.solicited = flags & 4 != 0;
        if qp.qp_type == QpType::Ud {
            let address = match ud.to_namespace {
                Some(ns) => self.spaces[ns_index(ns)].gid,
                None => host(9),
            };
            wr.ud = Some(UdDestination {
                address,
                qpn: Qpn::new(ud.qpn & Qpn::MAX),
                qkey: ud.qkey.unwrap_or(0x8000_0000),
            });
        }
        let _ = self.engine.post_send(self.spaces[ns].id, qp.qpn, wr);
    }

    /// An SGE in (or around) one of the namespace's regions, or anywhere.
    fn sge(&self, ns: usize, pick: SgePick) -> Option<Sge> {
        Some(match pick {
            SgePick::Region {
                other_namespace,
                index,
                offset,
                length,
                key_flip,
            } => {
                let owner = if other_namespace { 1 - ns } else { ns };
                let regions = &self.spaces[owner].regions;
                let region = regions.get(usize::from(index) % regions.len().max(1))?;
                Sge {
                    addr: region.mr.addr.wrapping_add(offset as i64 as u64),
                    length: u32::from(length),
                    lkey: Lkey(region.mr.lkey.0 ^ u32::from(key_flip)),
                }
            }
            SgePick::Any { addr, length, lkey } => Sge {
                addr,
                length,
                lkey: Lkey(lkey),
            },
        })
    }

    fn modify_qp(&mut self, ns: usize, qp: u8, pick: &ModifyPick) {
        let qp = self.qp(ns, qp);
        let mtus = [
            PathMtu::Mtu256,
            PathMtu::Mtu512,
            PathMtu::Mtu1024,
            PathMtu::Mtu2048,
            PathMtu::Mtu4096,
        ];
        let av = pick.av.map(|which| AddressVector {
            remote: match which % 3 {
                0 => host(9),
                1 => host(8),
                _ => self.spaces[1 - ns].gid,
            },
            local: None,
        });
        let attr = QpAttr {
            state: pick
                .state
                .map(|s| QpState::ALL[usize::from(s) % QpState::ALL.len()]),
            pkey_index: pick.pkey_index,
            port_num: None,
            qkey: pick.qkey,
            access: pick.access.map(|bits| {
                AccessFlags::from_bits(u32::from(bits & 0xf)).unwrap_or(AccessFlags::NONE)
            }),
            path_mtu: pick.path_mtu.map(|m| mtus[usize::from(m) % mtus.len()]),
            dest_qpn: pick.dest_qpn.map(|q| Qpn::new(q & Qpn::MAX)),
            rq_psn: pick.rq_psn.map(Psn::new),
            sq_psn: pick.sq_psn.map(Psn::new),
            max_rd_atomic: pick.max_rd_atomic,
            max_dest_rd_atomic: pick.max_dest_rd_atomic,
            min_rnr_timer: pick.min_rnr_timer,
            timeout: pick.timeout,
            retry_cnt: pick.retry_cnt,
            rnr_retry: pick.rnr_retry,
            av,
            flow_label: None,
        };
        let id = self.spaces[ns].id;
        if self.engine.modify_qp(id, qp.qpn, &attr).is_ok() {
            if let Some(psn) = attr.rq_psn {
                self.peer_psn.insert((ns, qp.qpn), psn);
            }
        }
    }

    /// Hands a datagram to the engine, after marking what it may legitimately write.
    fn receive(&mut self, incoming: Incoming) {
        if let Ok(parsed) = ferroce_transport::wire::packet::parse(&incoming.bytes) {
            self.permit_remote(incoming.meta.dst, &parsed);
            let ns = self.spaces.iter().position(|s| s.gid == incoming.meta.dst);
            if let Some(ns) = ns {
                let key = (ns, parsed.repr.bth.dest_qp);
                if let Some(next) = self.peer_psn.get_mut(&key) {
                    if parsed.repr.bth.psn == *next {
                        *next = next.next();
                    }
                }
            }
        }
        self.engine
            .handle_datagram(self.now, incoming.meta, &incoming.bytes);
    }

    /// A WRITE or atomic names a range of a region: when its P_Key matches, the key is
    /// one of the destination namespace's, the QP's transport, access and PD allow it,
    /// and the range fits, the model lets those bytes change (from now on).
    fn permit_remote(&mut self, dst: IpAddr, parsed: &Parsed<'_>) {
        let Some(ns) = self.spaces.iter().position(|s| s.gid == dst) else {
            return;
        };
        let Ok(info) = parsed.repr.info() else {
            return;
        };
        if !invariants::pkey_matches(parsed.repr.bth.pkey) {
            return;
        }
        let space = &self.spaces[ns];
        let Some(qp) = space
            .qps
            .iter()
            .find(|q| q.qpn == parsed.repr.bth.dest_qp)
            .copied()
        else {
            return;
        };
        let transport_matches = matches!(
            (info.transport, qp.qp_type),
            (ferroce_transport::wire::Transport::Rc, QpType::Rc)
                | (ferroce_transport::wire::Transport::Uc, QpType::Uc)
        );
        if !transport_matches {
            return;
        }
        let Ok(qp_info) = self.engine.query_qp(space.id, qp.qpn) else {
            return;
        };
        let qp_access = qp_info.attr.access.unwrap_or(AccessFlags::NONE);
        let (rkey, va, len, needed) =
            match (info.operation, parsed.repr.reth, parsed.repr.atomic_eth) {
                (Operation::Write, Some(reth), _) => (
                    reth.rkey,
                    reth.virtual_address,
                    u64::from(reth.dma_length),
                    AccessFlags::REMOTE_WRITE,
                ),
                (Operation::CompareSwap | Operation::FetchAdd, _, Some(eth)) => {
                    if eth.virtual_address % 8 != 0 {
                        return;
                    }
                    (eth.rkey, eth.virtual_address, 8, AccessFlags::REMOTE_ATOMIC)
                }
                _ => return,
            };
        if !qp_access.contains(needed) {
            return;
        }
        let space = &mut self.spaces[ns];
        if let Some(region) = space.regions.iter_mut().find(|r| r.mr.rkey == rkey) {
            region.permit(qp.pd, needed, va, len);
        }
    }

    /// Takes what the engine sends (up to `max`, 0 for all): each datagram must parse
    /// with a good ICRC, come from a namespace's address, and carry nothing of another
    /// namespace's memory.
    fn transmit(&mut self, max: usize) {
        let limit = if max == 0 { MAX_BURST } else { max };
        let mut sent = 0;
        while sent < limit {
            let Some(datagram) = self.engine.poll_transmit(self.now) else {
                return;
            };
            sent += 1;
            let parsed = craft::check_outgoing(&datagram)
                .unwrap_or_else(|e| panic!("outgoing datagram {datagram:?}: {e}"));
            let Some(ns) = self.spaces.iter().position(|s| s.gid == datagram.meta.src) else {
                panic!(
                    "a datagram from no namespace's address: {:?}",
                    datagram.meta
                );
            };
            let forged = &self.spaces[ns].forged;
            let original = parsed.repr.atomic_ack_eth.map(|a| a.original.to_be_bytes());
            for bytes in [
                parsed.payload,
                original.as_ref().map_or(&[][..], |o| &o[..]),
            ] {
                if let Some((at, other)) = model::foreign_tag(ns, bytes, forged) {
                    panic!(
                        "namespace {ns} sent namespace {other}'s memory at payload byte {at}: {:?} {:?}",
                        parsed.repr,
                        &bytes[at..(at + 8).min(bytes.len())]
                    );
                }
            }
            let is_request = parsed.repr.info().is_ok_and(|info| {
                !matches!(
                    info.operation,
                    Operation::Acknowledge | Operation::ReadResponse | Operation::AtomicAcknowledge
                )
            });
            if is_request {
                self.sent_psn
                    .insert((ns, parsed.repr.bth.dest_qp), parsed.repr.bth.psn);
            }
            self.engine.recycle(datagram.payload);
        }
        if max == 0 {
            assert!(
                self.engine.poll_transmit(self.now).is_none(),
                "the engine still sends after {MAX_BURST} datagrams in one go"
            );
        }
    }

    /// Every invariant after a step: regions changed only where permitted, and every
    /// queue within its bound.
    pub fn check(&mut self) {
        for ns in 0..2 {
            let space = &mut self.spaces[ns];
            for region in &mut space.regions {
                let now = &mut self.scratch[..region.seen.len()];
                self.engine
                    .mr_read(space.id, region.mr.lkey, region.mr.addr, now)
                    .expect("the owner reads its region");
                if let Some(at) = model::check_region(ns, region, now, &mut space.forged) {
                    panic!(
                        "namespace {ns} region {:?}: byte {at} changed from {:#04x} to {:#04x} \
                         though no permitted operation targeted it",
                        region.mr, region.seen[at], now[at]
                    );
                }
            }
            let depths = self
                .engine
                .queue_depths(space.id)
                .expect("the namespace exists");
            invariants::check_queues(ns, &depths);
        }
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

/// The peer's QPN for QP `qpn` of namespace `ns`.
fn peer_qpn(ns: usize, qpn: Qpn) -> Qpn {
    Qpn::new(0x100 * (ns as u32 + 1) + qpn.value())
}

impl Space {
    fn new(engine: &mut Engine, _index: usize, id: NamespaceId, gid: IpAddr) -> Space {
        let pds = [
            engine.alloc_pd(id).expect("a PD"),
            engine.alloc_pd(id).expect("a PD"),
        ];
        // A tiny CQ (overflows) and a roomy one.
        let cqs = [
            engine.create_cq(id, 4).expect("a CQ"),
            engine.create_cq(id, 64).expect("a CQ"),
        ];
        let srq = engine
            .create_srq(
                id,
                pds[0],
                SrqAttr {
                    max_wr: 8,
                    max_sge: 4,
                    srq_limit: 2,
                },
            )
            .expect("an SRQ");
        let cap = QpCap {
            max_send_wr: 8,
            max_recv_wr: 8,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        };
        // RC (tiny send CQ), RC on the SRQ, UC, UD, and RC in the second PD.
        let kinds = [
            (QpType::Rc, 0, false, cqs[0]),
            (QpType::Rc, 0, true, cqs[1]),
            (QpType::Uc, 0, false, cqs[1]),
            (QpType::Ud, 0, false, cqs[1]),
            (QpType::Rc, 1, false, cqs[1]),
        ];
        let qps = kinds
            .iter()
            .map(|&(qp_type, pd, on_srq, send_cq)| {
                let init = QpInitAttr {
                    qp_type,
                    pd: pds[pd],
                    send_cq,
                    recv_cq: cqs[1],
                    srq: on_srq.then_some(srq),
                    cap,
                    sq_sig_all: false,
                };
                QpModel {
                    qpn: engine.create_qp(id, init).expect("a QP"),
                    qp_type,
                    pd: pds[pd],
                }
            })
            .collect();
        Space {
            id,
            gid,
            pds,
            cqs,
            srq,
            qps,
            regions: Vec::new(),
            next_serial: 0,
            forged: Forged::default(),
        }
    }
}

impl Lookup for World {
    fn gid(&self, ns: usize) -> IpAddr {
        self.spaces[ns].gid
    }

    fn peer(&self) -> IpAddr {
        host(9)
    }

    fn stranger(&self) -> IpAddr {
        host(8)
    }

    fn qpn(&self, ns: usize, index: u8) -> Qpn {
        self.qp(ns, index).qpn
    }

    fn psns(&self, ns: usize, qpn: Qpn) -> (Psn, Psn) {
        let next = self
            .peer_psn
            .get(&(ns, qpn))
            .copied()
            .unwrap_or(Psn::new(START_PSN));
        let dest = self
            .engine
            .query_qp(self.spaces[ns].id, qpn)
            .ok()
            .and_then(|info| info.attr.dest_qpn)
            .unwrap_or(Qpn::new(0));
        let sent = self
            .sent_psn
            .get(&(ns, dest))
            .copied()
            .unwrap_or(Psn::new(START_PSN));
        (next, sent)
    }

    fn path_mtu(&self, ns: usize, qpn: Qpn) -> u32 {
        self.engine
            .query_qp(self.spaces[ns].id, qpn)
            .ok()
            .and_then(|info| info.attr.path_mtu)
            .map_or(256, PathMtu::bytes)
    }

    fn peer_qpn_and_qkey(&self, ns: usize, qpn: Qpn) -> (Qpn, u32) {
        (peer_qpn(ns, qpn), QKEY)
    }

    fn key(&self, ns: usize, index: u8) -> Option<u32> {
        let regions = &self.spaces[ns].regions;
        let region = regions.get(usize::from(index) % regions.len().max(1))?;
        Some(region.mr.rkey.0)
    }

    fn region(&self, ns: usize, index: u8) -> Option<(u64, u64)> {
        let regions = &self.spaces[ns].regions;
        let region = regions.get(usize::from(index) % regions.len().max(1))?;
        Some((region.mr.addr, region.mr.length))
    }
}

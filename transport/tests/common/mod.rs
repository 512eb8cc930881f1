//! Two engines wired back to back in memory on a virtual clock: a tiny loop, not the
//! simulator. A filter sees every datagram and may drop it.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use ferroce_transport::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Datagram, Engine, EngineConfig, MemoryRegion,
    NamespaceId, PathMtu, ProtectionDomain, QpAttr, QpCap, QpInitAttr, QpState, QpType, RecvWr,
    SendOp, SendWr, Sge, Time, WorkCompletion,
};
use ferroce_transport::wire::{packet, Psn, Qpn};

pub const NS: NamespaceId = NamespaceId::DEFAULT;
pub const QP_RC: QpType = QpType::Rc;
pub const MR_LEN: u64 = 64 * 1024;

/// Direction of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    AtoB,
    BtoA,
}

/// One side: an engine with a PD, a CQ, one MR and one QP.
pub struct Side {
    pub engine: Engine,
    pub addr: IpAddr,
    pub pd: ProtectionDomain,
    pub cq: CompletionQueueId,
    pub mr: MemoryRegion,
    pub qpn: Qpn,
}

impl Side {
    pub fn new(addr: IpAddr, seed: u64, qp_type: QpType, access: AccessFlags) -> Side {
        Side::with_config(EngineConfig::default(), addr, seed, qp_type, access)
    }

    pub fn with_config(
        mut config: EngineConfig,
        addr: IpAddr,
        seed: u64,
        qp_type: QpType,
        access: AccessFlags,
    ) -> Side {
        config.default_gids = vec![addr];
        let mut engine = Engine::new(config, seed);
        let pd = engine.alloc_pd(NS).unwrap();
        let cq = engine.create_cq(NS, 256).unwrap();
        let mr = engine.reg_mr(NS, pd, MR_LEN, access).unwrap();
        let qpn = engine.create_qp(NS, init_attr(qp_type, pd, cq)).unwrap();
        Side {
            engine,
            addr,
            pd,
            cq,
            mr,
            qpn,
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.engine
            .mr_write(NS, self.mr.lkey, self.mr.addr + offset, data)
            .unwrap();
    }

    pub fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.engine
            .mr_read(NS, self.mr.lkey, self.mr.addr + offset, &mut out)
            .unwrap();
        out
    }

    pub fn sge(&self, offset: u64, length: u32) -> Sge {
        Sge {
            addr: self.mr.addr + offset,
            length,
            lkey: self.mr.lkey,
        }
    }

    pub fn post_recv(&mut self, wr_id: u64, offset: u64, length: u32) {
        let sge = self.sge(offset, length);
        self.engine
            .post_recv(
                NS,
                self.qpn,
                RecvWr {
                    wr_id,
                    sg_list: vec![sge].into(),
                },
            )
            .unwrap();
    }

    pub fn post_send(&mut self, wr: SendWr) {
        self.engine.post_send(NS, self.qpn, wr).unwrap();
    }

    pub fn poll(&mut self) -> Vec<WorkCompletion> {
        self.engine.poll_cq(NS, self.cq, 1024).unwrap()
    }

    pub fn state(&self) -> QpState {
        self.engine.query_qp(NS, self.qpn).unwrap().state
    }
}

pub fn init_attr(qp_type: QpType, pd: ProtectionDomain, cq: CompletionQueueId) -> QpInitAttr {
    QpInitAttr {
        qp_type,
        pd,
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        cap: QpCap {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 256,
        },
        sq_sig_all: false,
    }
}

/// Connection parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub mtu: PathMtu,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub min_rnr_timer: u8,
    pub max_rd_atomic: u8,
    pub qp_access: AccessFlags,
    /// First PSN both ways.
    pub start_psn: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            mtu: PathMtu::Mtu1024,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 1,
            max_rd_atomic: 4,
            qp_access: AccessFlags::REMOTE_WRITE
                | AccessFlags::REMOTE_READ
                | AccessFlags::REMOTE_ATOMIC,
            start_psn: 0x100,
        }
    }
}

/// Moves a connected QP RESET → INIT → RTR → RTS towards `peer`.
pub fn connect(
    engine: &mut Engine,
    ns: NamespaceId,
    qpn: Qpn,
    peer: IpAddr,
    peer_qpn: Qpn,
    qp_type: QpType,
    p: &Params,
) {
    let rc = qp_type == QpType::Rc;
    engine
        .modify_qp(
            ns,
            qpn,
            &QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                access: Some(p.qp_access),
                ..QpAttr::default()
            },
        )
        .unwrap();
    let mut rtr = QpAttr {
        state: Some(QpState::Rtr),
        av: Some(AddressVector {
            remote: peer,
            local: None,
        }),
        path_mtu: Some(p.mtu),
        dest_qpn: Some(peer_qpn),
        rq_psn: Some(Psn::new(p.start_psn)),
        ..QpAttr::default()
    };
    if rc {
        rtr.max_dest_rd_atomic = Some(p.max_rd_atomic);
        rtr.min_rnr_timer = Some(p.min_rnr_timer);
    }
    engine.modify_qp(ns, qpn, &rtr).unwrap();
    let mut rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(Psn::new(p.start_psn)),
        ..QpAttr::default()
    };
    if rc {
        rts.timeout = Some(p.timeout);
        rts.retry_cnt = Some(p.retry_cnt);
        rts.rnr_retry = Some(p.rnr_retry);
        rts.max_rd_atomic = Some(p.max_rd_atomic);
    }
    engine.modify_qp(ns, qpn, &rts).unwrap();
}

type Filter = Box<dyn FnMut(Dir, &packet::Repr, Time) -> bool>;

/// Two connected sides and the loop between them.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub now: Time,
    /// Returns false to drop a datagram.
    pub filter: Filter,
    /// Every datagram that went out, with its direction (kept or not).
    pub log: Vec<(Dir, packet::Repr, usize)>,
    /// Take datagrams from lending rounds (`Engine::lending`), owning each at once.
    pub lend: bool,
    /// How many came with lent bytes.
    pub lent: usize,
}

pub fn all_access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

impl Pair {
    /// Loses the first packet going `dir` that `matches`; every other one passes.
    pub fn drop_once(
        &mut self,
        dir: Dir,
        mut matches: impl FnMut(&packet::Repr) -> bool + 'static,
    ) {
        let mut dropped = false;
        self.filter = Box::new(move |d, r, _| {
            if d == dir && !dropped && matches(r) {
                dropped = true;
                return false;
            }
            true
        });
    }

    pub fn new(qp_type: QpType, p: Params) -> Pair {
        Pair::between(
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            qp_type,
            p,
        )
    }

    pub fn between(a: IpAddr, b: IpAddr, qp_type: QpType, p: Params) -> Pair {
        let mut a = Side::new(a, 1, qp_type, all_access());
        let mut b = Side::new(b, 2, qp_type, all_access());
        connect(&mut a.engine, NS, a.qpn, b.addr, b.qpn, qp_type, &p);
        connect(&mut b.engine, NS, b.qpn, a.addr, a.qpn, qp_type, &p);
        Pair {
            a,
            b,
            now: Time::ZERO,
            filter: Box::new(|_, _, _| true),
            log: Vec::new(),
            lend: false,
            lent: 0,
        }
    }

    pub fn rc() -> Pair {
        Pair::new(QpType::Rc, Params::default())
    }

    /// The next datagram `engine` sends: from a lending round when `lend`, owned at once
    /// (its lent bytes copied in), and whether it came lent.
    fn next_datagram(engine: &mut Engine, lend: bool, now: Time) -> Option<(Datagram, bool)> {
        if !lend {
            return engine.poll_transmit(now).map(|d| (d, false));
        }
        let mut out = Vec::with_capacity(1);
        engine.lending().poll_transmit_into(now, &mut out, 1);
        let d = out.pop()?;
        let lent = d.lent().is_some();
        Some((d.own(), lent))
    }

    /// Takes the next datagram going `dir` and hands it to the other side as `run` does
    /// (filtered and logged); returns it for tests that deliver it again or alter it.
    pub fn pass(&mut self, dir: Dir) -> Datagram {
        let from = match dir {
            Dir::AtoB => &mut self.a.engine,
            Dir::BtoA => &mut self.b.engine,
        };
        let (d, lent) = Pair::next_datagram(from, self.lend, self.now).expect("nothing to pass");
        self.deliver(dir, (d.clone(), lent));
        d
    }

    fn deliver(&mut self, dir: Dir, (d, lent): (Datagram, bool)) {
        self.lent += usize::from(lent);
        let parsed = packet::parse(&d.payload).expect("engine sent a malformed packet");
        let keep = (self.filter)(dir, &parsed.repr, self.now);
        self.log.push((dir, parsed.repr, parsed.payload.len()));
        if keep {
            let to = match dir {
                Dir::AtoB => &mut self.b.engine,
                Dir::BtoA => &mut self.a.engine,
            };
            to.handle_datagram(self.now, d.meta, &d.payload);
        }
    }

    /// Runs until both sides are quiet and no timer is due before `limit` from now.
    pub fn run_for(&mut self, limit: std::time::Duration) {
        let deadline = self.now + limit;
        for _ in 0..1_000_000 {
            let mut moved = false;
            while let Some(d) = Pair::next_datagram(&mut self.a.engine, self.lend, self.now) {
                moved = true;
                self.deliver(Dir::AtoB, d);
            }
            while let Some(d) = Pair::next_datagram(&mut self.b.engine, self.lend, self.now) {
                moved = true;
                self.deliver(Dir::BtoA, d);
            }
            if moved {
                continue;
            }
            let next = [self.a.engine.poll_timeout(), self.b.engine.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= deadline => {
                    self.now = self.now.max(t);
                    self.a.engine.handle_timeout(self.now);
                    self.b.engine.handle_timeout(self.now);
                }
                _ => return,
            }
        }
        panic!("the pair never went quiet");
    }

    pub fn run(&mut self) {
        self.run_for(std::time::Duration::from_secs(600));
    }

    pub fn count(&self, dir: Dir, pred: impl Fn(&packet::Repr) -> bool) -> usize {
        self.log
            .iter()
            .filter(|(d, r, _)| *d == dir && pred(r))
            .count()
    }
}

pub fn send_wr(wr_id: u64, op: SendOp, sg_list: Vec<Sge>) -> SendWr {
    SendWr::new(wr_id, op, sg_list)
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Delivers datagrams between engines by destination address until all are quiet
/// (no timers: for tests without loss). `hosts` pairs each engine with its addresses.
pub fn pump(hosts: &mut [(&mut Engine, Vec<IpAddr>)]) -> usize {
    let mut moved = 0;
    loop {
        let mut any = false;
        for i in 0..hosts.len() {
            while let Some(d) = hosts[i].0.poll_transmit(Time::ZERO) {
                any = true;
                moved += 1;
                if let Some(to) = hosts
                    .iter_mut()
                    .find(|(_, addrs)| addrs.contains(&d.meta.dst))
                {
                    to.0.handle_datagram(Time::ZERO, d.meta, &d.payload);
                }
            }
        }
        if !any {
            return moved;
        }
    }
}

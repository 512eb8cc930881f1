//! Two engines in the deterministic simulator, each with a PD, one CQ, one MR and one RC
//! QP connected to the other: what the `sim_*` property tests drive.
#![allow(dead_code)]
// A failed setup step is a failed test: unwrap is the clearest way to say so here.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, Network, RunOutcome};
use ferroce_transport::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Engine, EngineConfig, MemoryRegion, NamespaceId,
    PathMtu, QpAttr, QpCap, QpInitAttr, QpState, QpType, RecvWr, SendWr, Sge, Time, WorkCompletion,
};
use ferroce_transport::wire::{Psn, Qpn};

pub const NS: NamespaceId = NamespaceId::DEFAULT;
/// Node index of the requester.
pub const A: usize = 0;
/// Node index of the responder.
pub const B: usize = 1;

/// Connection parameters of both QPs.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub mtu: PathMtu,
    /// IB timeout code: 4.096 µs × 2^timeout.
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub min_rnr_timer: u8,
    pub max_rd_atomic: u8,
    /// Access flags of the responder's MR.
    pub responder_mr_access: AccessFlags,
    /// Length of each side's MR.
    pub mr_len: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            mtu: PathMtu::Mtu1024,
            // 4.096 µs × 2^8 ≈ 1 ms: a few round trips of the default link.
            timeout: 8,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 1,
            max_rd_atomic: 4,
            responder_mr_access: all_access(),
            mr_len: 128 * 1024,
        }
    }
}

pub fn all_access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

/// One side's resources.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub addr: IpAddr,
    pub cq: CompletionQueueId,
    pub mr: MemoryRegion,
    pub qpn: Qpn,
}

/// A connected RC pair in a simulated network.
pub struct RcPair {
    pub net: Network<Engine>,
    pub sides: [Side; 2],
    pub params: Params,
}

fn side(
    net: &mut Network<Engine>,
    index: usize,
    seed: u64,
    access: AccessFlags,
    p: &Params,
) -> Side {
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index as u8));
    let config = EngineConfig {
        default_gids: vec![addr],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, seed ^ index as u64);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 4096).unwrap();
    let mr = engine.reg_mr(NS, pd, p.mr_len, access).unwrap();
    let qpn = engine
        .create_qp(
            NS,
            QpInitAttr {
                qp_type: QpType::Rc,
                pd,
                send_cq: cq,
                recv_cq: cq,
                srq: None,
                cap: QpCap {
                    max_send_wr: 1024,
                    max_recv_wr: 1024,
                    max_send_sge: 4,
                    max_recv_sge: 4,
                    max_inline_data: 64,
                },
                sq_sig_all: false,
            },
        )
        .unwrap();
    let added = net.add_node(engine, [addr]);
    assert_eq!(added, index);
    Side { addr, cq, mr, qpn }
}

/// RESET → INIT → RTR → RTS towards the peer.
fn connect(engine: &mut Engine, me: &Side, peer: &Side, p: &Params) {
    engine
        .modify_qp(
            NS,
            me.qpn,
            &QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                access: Some(
                    AccessFlags::REMOTE_WRITE
                        | AccessFlags::REMOTE_READ
                        | AccessFlags::REMOTE_ATOMIC,
                ),
                ..QpAttr::default()
            },
        )
        .unwrap();
    engine
        .modify_qp(
            NS,
            me.qpn,
            &QpAttr {
                state: Some(QpState::Rtr),
                av: Some(AddressVector {
                    remote: peer.addr,
                    local: None,
                }),
                path_mtu: Some(p.mtu),
                dest_qpn: Some(peer.qpn),
                rq_psn: Some(Psn::new(0xff_fff0)),
                max_dest_rd_atomic: Some(p.max_rd_atomic),
                min_rnr_timer: Some(p.min_rnr_timer),
                ..QpAttr::default()
            },
        )
        .unwrap();
    // PSNs start just below the 24-bit wrap so every run crosses it.
    engine
        .modify_qp(
            NS,
            me.qpn,
            &QpAttr {
                state: Some(QpState::Rts),
                sq_psn: Some(Psn::new(0xff_fff0)),
                timeout: Some(p.timeout),
                retry_cnt: Some(p.retry_cnt),
                rnr_retry: Some(p.rnr_retry),
                max_rd_atomic: Some(p.max_rd_atomic),
                ..QpAttr::default()
            },
        )
        .unwrap();
}

impl RcPair {
    pub fn new(seed: u64, link: LinkConfig, params: Params) -> RcPair {
        let mut net = Network::new(seed, link);
        let a = side(&mut net, A, seed, all_access(), &params);
        let b = side(&mut net, B, seed, params.responder_mr_access, &params);
        connect(net.node_mut(A), &a, &b, &params);
        connect(net.node_mut(B), &b, &a, &params);
        RcPair {
            net,
            sides: [a, b],
            params,
        }
    }

    pub fn engine(&mut self, index: usize) -> &mut Engine {
        self.net.node_mut(index)
    }

    pub fn side(&self, index: usize) -> Side {
        self.sides[index]
    }

    /// Writes into a side's MR at `offset` (as its application would).
    pub fn write(&mut self, index: usize, offset: u64, data: &[u8]) {
        let mr = self.sides[index].mr;
        self.engine(index)
            .mr_write(NS, mr.lkey, mr.addr + offset, data)
            .unwrap();
    }

    /// Reads a side's MR.
    pub fn read(&mut self, index: usize, offset: u64, len: usize) -> Vec<u8> {
        let mr = self.sides[index].mr;
        let mut out = vec![0; len];
        self.engine(index)
            .mr_read(NS, mr.lkey, mr.addr + offset, &mut out)
            .unwrap();
        out
    }

    pub fn sge(&self, index: usize, offset: u64, length: u32) -> Sge {
        let mr = self.sides[index].mr;
        Sge {
            addr: mr.addr + offset,
            length,
            lkey: mr.lkey,
        }
    }

    pub fn post_send(&mut self, index: usize, wr: SendWr) {
        let qpn = self.sides[index].qpn;
        self.engine(index).post_send(NS, qpn, wr).unwrap();
    }

    pub fn post_recv(&mut self, index: usize, wr_id: u64, offset: u64, length: u32) {
        let qpn = self.sides[index].qpn;
        let sge = self.sge(index, offset, length);
        self.engine(index)
            .post_recv(
                NS,
                qpn,
                RecvWr {
                    wr_id,
                    sg_list: vec![sge].into(),
                },
            )
            .unwrap();
    }

    pub fn poll(&mut self, index: usize) -> Vec<WorkCompletion> {
        let cq = self.sides[index].cq;
        self.engine(index).poll_cq(NS, cq, 4096).unwrap()
    }

    pub fn state(&self, index: usize) -> QpState {
        self.net
            .node(index)
            .query_qp(NS, self.sides[index].qpn)
            .unwrap()
            .state
    }

    /// Runs until side `A` has `a` completions and side `B` has `b` (collected into the
    /// returned vectors, in order), or until `limit` of virtual time has passed.
    pub fn run_for_completions(
        &mut self,
        a: usize,
        b: usize,
        limit: Duration,
    ) -> (Vec<WorkCompletion>, Vec<WorkCompletion>, RunOutcome) {
        let deadline = self.net.now() + limit;
        let mut got: [Vec<WorkCompletion>; 2] = [Vec::new(), Vec::new()];
        let sides = self.sides;
        let outcome = self.net.run_while(
            |net| {
                for (index, side) in sides.iter().enumerate() {
                    // Polling through `node` would be enough, but the engine's poll_cq
                    // takes `&mut`.
                    let wcs = net.node_mut(index).poll_cq(NS, side.cq, 4096).unwrap();
                    got[index].extend(wcs);
                }
                got[0].len() < a || got[1].len() < b
            },
            deadline,
        );
        let [got_a, got_b] = got;
        (got_a, got_b, outcome)
    }

    /// Runs until nothing is left to do (or `limit`), then returns what both CQs hold.
    pub fn settle(&mut self, limit: Duration) -> (Vec<WorkCompletion>, Vec<WorkCompletion>) {
        let deadline = self.net.now() + limit;
        self.net.run_until_idle(deadline);
        (self.poll(A), self.poll(B))
    }

    pub fn now(&self) -> Time {
        self.net.now()
    }
}

/// A small deterministic byte generator for test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

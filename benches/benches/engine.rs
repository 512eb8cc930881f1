//! The sans-IO engine alone: two engines joined back to back in memory (two queues, no
//! simulator, no sockets), one thread. Each iteration posts a batch of signaled RDMA
//! WRITEs on an RC QP, moves datagrams until both engines are quiet and reaps the
//! completions, so the figures include segmentation, ICRC on both sides, the
//! responder's memory writes, ACKs and completion handling. Payloads are lent from the
//! sender's region, as the I/O runner has them, and copied out as its kernel would.
//!
//! Two views of the same work: `…/bytes` reports payload bytes per second, `…/packets`
//! datagrams per second (requests and ACKs, both directions) — per CPU core, since it
//! all runs on one thread.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroce_transport::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Datagram, Engine, EngineConfig, LentDatagram,
    MemoryRegion, NamespaceId, PathMtu, QpAttr, QpCap, QpInitAttr, QpState, QpType, SendOp, SendWr,
    Sge, Time, WcStatus,
};
use ferroce_wire::{Psn, Qpn};

const NS: NamespaceId = NamespaceId::DEFAULT;
/// Work requests posted per iteration (fits the send queue; the engine paces itself).
const BATCH: u64 = 64;

struct Side {
    engine: Engine,
    cq: CompletionQueueId,
    mr: MemoryRegion,
    qpn: Qpn,
}

/// Two connected engines and the queues between them.
struct Pair {
    sides: [Side; 2],
    queues: [Vec<Datagram>; 2],
    /// A lending round's datagrams (empty between rounds; kept for its room).
    lent: Vec<LentDatagram<'static>>,
    now: Time,
    size: u32,
    mtu: PathMtu,
}

fn side(index: u8, mr_len: u64) -> (Side, IpAddr) {
    let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index));
    let mut engine = Engine::new(
        EngineConfig {
            default_gids: vec![addr],
            ..EngineConfig::default()
        },
        u64::from(index),
    );
    let pd = engine.alloc_pd(NS).expect("pd");
    let cq = engine.create_cq(NS, 1024).expect("cq");
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    let mr = engine.reg_mr(NS, pd, mr_len, access).expect("mr");
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
                    max_send_wr: 256,
                    max_recv_wr: 16,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
                sq_sig_all: true,
            },
        )
        .expect("qp");
    (
        Side {
            engine,
            cq,
            mr,
            qpn,
        },
        addr,
    )
}

fn connect(side: &mut Side, peer: IpAddr, peer_qpn: Qpn, mtu: PathMtu) {
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: Some(AccessFlags::REMOTE_WRITE),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            av: Some(AddressVector {
                remote: peer,
                local: None,
            }),
            path_mtu: Some(mtu),
            dest_qpn: Some(peer_qpn),
            rq_psn: Some(Psn::new(0)),
            max_dest_rd_atomic: Some(1),
            min_rnr_timer: Some(1),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(Psn::new(0)),
            timeout: Some(14),
            retry_cnt: Some(7),
            rnr_retry: Some(7),
            max_rd_atomic: Some(1),
            ..QpAttr::default()
        },
    ];
    for attr in &steps {
        side.engine
            .modify_qp(NS, side.qpn, attr)
            .expect("modify_qp");
    }
}

impl Pair {
    fn new(size: u32, mtu: PathMtu) -> Pair {
        let mr_len = u64::from(size.max(64)) * BATCH;
        let (mut a, a_addr) = side(0, mr_len);
        let (mut b, b_addr) = side(1, mr_len);
        connect(&mut a, b_addr, b.qpn, mtu);
        connect(&mut b, a_addr, a.qpn, mtu);
        let data: Vec<u8> = (0..mr_len).map(|i| i as u8).collect();
        a.engine
            .mr_write(NS, a.mr.lkey, a.mr.addr, &data)
            .expect("fill");
        Pair {
            sides: [a, b],
            queues: [Vec::new(), Vec::new()],
            lent: Vec::new(),
            now: Time::ZERO,
            size,
            mtu,
        }
    }

    /// Posts a batch of WRITEs, runs both engines until quiet, reaps the completions.
    /// Returns the datagrams moved.
    fn batch(&mut self) -> u64 {
        let [a, b] = &mut self.sides;
        for index in 0..BATCH {
            let offset = index * u64::from(self.size.max(64));
            let wr = SendWr::new(
                index,
                SendOp::RdmaWrite {
                    remote_addr: b.mr.addr + offset,
                    rkey: b.mr.rkey,
                },
                vec![Sge {
                    addr: a.mr.addr + offset,
                    length: self.size,
                    lkey: a.mr.lkey,
                }],
            );
            a.engine.post_send(NS, a.qpn, wr).expect("post_send");
        }
        let mut moved = 0;
        let mut completed = 0;
        while completed < BATCH {
            // A microsecond per round: time moves, but never as far as a retransmit
            // timeout (4.096 µs × 2^14 ≈ 67 ms).
            self.now = self.now + Duration::from_micros(1);
            let mut progress = false;
            for (from, queue) in [(0, 1), (1, 0)] {
                // In batches from a lending round, as the I/O layer takes them; lent
                // payloads are copied out at once, as the kernel's send copies them.
                let (engine, out) = (&mut self.sides[from].engine, &mut self.queues[queue]);
                let mut lent: Vec<LentDatagram<'_>> = std::mem::take(&mut self.lent);
                let mut lending = engine.lending();
                while lending.poll_transmit_into(self.now, &mut lent, 64) > 0 {}
                out.extend(lent.drain(..).map(LentDatagram::own));
                self.lent = LentDatagram::own_all(lent);
            }
            for (to, queue) in self.queues.iter_mut().enumerate() {
                for datagram in queue.drain(..) {
                    progress = true;
                    moved += 1;
                    self.sides[to].engine.handle_datagram(
                        self.now,
                        datagram.meta,
                        &datagram.payload,
                    );
                    // Sent, so its buffer goes back to the sender, as the I/O layer's do.
                    self.sides[1 - to].engine.recycle(datagram.payload);
                }
            }
            let a = &mut self.sides[0];
            for wc in a.engine.poll_cq(NS, a.cq, 256).expect("poll_cq") {
                assert_eq!(wc.status, WcStatus::Success);
                completed += 1;
            }
            assert!(
                progress || completed == BATCH,
                "engines stalled at {completed} of {BATCH} (MTU {:?})",
                self.mtu
            );
        }
        moved
    }
}

fn rc_write(c: &mut Criterion) {
    let cases = [
        (64u32, PathMtu::Mtu1024),
        (4096, PathMtu::Mtu1024),
        (4096, PathMtu::Mtu4096),
        // The loopback bandwidth bench's WRITE.
        (65536, PathMtu::Mtu4096),
    ];
    for (unit, label) in [("bytes", true), ("packets", false)] {
        let mut group = c.benchmark_group(format!("engine/rc_write/{unit}"));
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_secs(1));
        for (size, mtu) in cases {
            let mut pair = Pair::new(size, mtu);
            // The packet count of a batch does not change from one batch to the next:
            // same WRs, same ACK coalescing.
            let packets = pair.batch();
            group.throughput(if label {
                Throughput::Bytes(u64::from(size) * BATCH)
            } else {
                Throughput::Elements(packets)
            });
            let id = BenchmarkId::new(format!("mtu{}", mtu.bytes()), size);
            group.bench_function(id, |bencher| {
                bencher.iter(|| black_box(pair.batch()));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, rc_write);
criterion_main!(benches);

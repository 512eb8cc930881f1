#![allow(clippy::unwrap_used)]
//! UD (DETH, Q_Key, 40 bytes of GRH space), UC (no ACKs, a gap drops the message) and
//! shared receive queues with the limit event.

mod common;

use std::net::IpAddr;

use common::*;
use ferroce_transport::engine::{
    AsyncEvent, Engine, EngineConfig, PathMtu, QpAttr, QpState, QpType, RecvWr, SendOp, SrqAttr,
    UdDestination, VerbsError, WcOpcode, WcStatus,
};
use ferroce_transport::wire::{OpCode, Psn, Qpn};

const QKEY: u32 = 0x1234_5678;

fn ud_ready(engine: &mut Engine, qpn: Qpn) {
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port_num: Some(1),
        qkey: Some(QKEY),
        ..QpAttr::default()
    };
    engine.modify_qp(NS, qpn, &init).unwrap();
    let rtr = QpAttr {
        state: Some(QpState::Rtr),
        ..QpAttr::default()
    };
    engine.modify_qp(NS, qpn, &rtr).unwrap();
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(Psn::new(7)),
        ..QpAttr::default()
    };
    engine.modify_qp(NS, qpn, &rts).unwrap();
}

fn ud_pair() -> (Side, Side) {
    let mut a = Side::new("10.0.0.1".parse().unwrap(), 1, QpType::Ud, all_access());
    let mut b = Side::new("10.0.0.2".parse().unwrap(), 2, QpType::Ud, all_access());
    ud_ready(&mut a.engine, a.qpn);
    ud_ready(&mut b.engine, b.qpn);
    (a, b)
}

fn ud_send(
    wr_id: u64,
    op: SendOp,
    sge: ferroce_transport::engine::Sge,
    to: &Side,
    qkey: u32,
) -> ferroce_transport::engine::SendWr {
    let mut wr = send_wr(wr_id, op, vec![sge]);
    wr.ud = Some(UdDestination {
        address: to.addr,
        qpn: to.qpn,
        qkey,
    });
    wr
}

fn exchange(a: &mut Side, b: &mut Side) -> usize {
    let (aa, ba) = (a.addr, b.addr);
    pump(&mut [(&mut a.engine, vec![aa]), (&mut b.engine, vec![ba])])
}

#[test]
fn ud_send_lands_after_40_bytes_of_grh() {
    let (mut a, mut b) = ud_pair();
    a.write(0, b"datagram!");
    b.post_recv(1, 0, 100);
    let wr = ud_send(5, SendOp::SendWithImm(77), a.sge(0, 9), &b, QKEY);
    a.post_send(wr);
    assert_eq!(exchange(&mut a, &mut b), 1, "UD is unacknowledged");
    let wc = b.poll().remove(0);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::Recv, 40 + 9)
    );
    assert_eq!((wc.src_qp, wc.grh, wc.imm_data), (a.qpn, true, Some(77)));
    let buf = b.read(0, 49);
    assert_eq!(&buf[40..], b"datagram!");
    // rxe writes the IPv4 header in the last 20 of the 40 bytes.
    assert_eq!(&buf[..20], &[0; 20]);
    assert_eq!(buf[20], 0x45);
    assert_eq!(buf[29], 17);
    assert_eq!(&buf[32..36], &[10, 0, 0, 1]);
    assert_eq!(&buf[36..40], &[10, 0, 0, 2]);
    let sent = a.poll().remove(0);
    assert_eq!((sent.wr_id, sent.status), (5, WcStatus::Success));
}

#[test]
fn ud_qkey_mismatch_and_missing_receive_are_dropped() {
    let (mut a, mut b) = ud_pair();
    b.post_recv(1, 0, 100);
    a.post_send(ud_send(1, SendOp::Send, a.sge(0, 4), &b, QKEY ^ 1));
    exchange(&mut a, &mut b);
    assert_eq!(b.engine.counters().drops.qkey_mismatch, 1);
    assert!(b.poll().is_empty());
    // High bit set: the sender's own Q_Key is used, which matches.
    a.post_send(ud_send(2, SendOp::Send, a.sge(0, 4), &b, 0x8000_0000));
    exchange(&mut a, &mut b);
    assert_eq!(b.poll().len(), 1);
    a.post_send(ud_send(3, SendOp::Send, a.sge(0, 4), &b, QKEY));
    exchange(&mut a, &mut b);
    assert_eq!(b.engine.counters().drops.no_receive_buffer, 1);
}

#[test]
fn ud_message_limits() {
    let (mut a, mut b) = ud_pair();
    // Longer than the active MTU (1024): refused at post time.
    let wr = ud_send(1, SendOp::Send, a.sge(0, 1025), &b, QKEY);
    assert!(matches!(
        a.engine.post_send(NS, a.qpn, wr),
        Err(VerbsError::InvalidArgument(_))
    ));
    // UD has no RDMA.
    let mut write = ud_send(
        2,
        SendOp::RdmaWrite {
            remote_addr: 0,
            rkey: b.mr.rkey,
        },
        a.sge(0, 8),
        &b,
        QKEY,
    );
    write.ud = None;
    assert!(a.engine.post_send(NS, a.qpn, write).is_err());
    // A receive without room for GRH + payload completes with a length error.
    b.post_recv(9, 0, 40 + 3);
    a.post_send(ud_send(3, SendOp::Send, a.sge(0, 4), &b, QKEY));
    exchange(&mut a, &mut b);
    let wc = b.poll().remove(0);
    assert_eq!((wc.wr_id, wc.status), (9, WcStatus::LocLenErr));
}

#[test]
fn ud_messages_longer_than_the_port_mtu_are_dropped() {
    // A peer whose port MTU is 4096 sends 2000 bytes to a port of 1024.
    let config = EngineConfig {
        active_mtu: PathMtu::Mtu4096,
        ..EngineConfig::default()
    };
    let mut a = Side::with_config(
        config,
        "10.0.0.1".parse().unwrap(),
        1,
        QpType::Ud,
        all_access(),
    );
    let (_, mut b) = ud_pair();
    ud_ready(&mut a.engine, a.qpn);
    b.post_recv(1, 0, 4096);
    a.post_send(ud_send(1, SendOp::Send, a.sge(0, 2000), &b, QKEY));
    a.post_send(ud_send(2, SendOp::Send, a.sge(0, 1024), &b, QKEY));
    assert_eq!(exchange(&mut a, &mut b), 2);
    let got: Vec<_> = b.poll().iter().map(|w| (w.status, w.byte_len)).collect();
    assert_eq!(
        got,
        [(WcStatus::Success, 40 + 1024)],
        "the receive waited for the second"
    );
    assert_eq!(b.engine.counters().drops.too_long, 1);
}

#[test]
fn uc_send_and_write_without_acks() {
    let mut pair = Pair::new(QpType::Uc, Params::default());
    let data = pattern(2500, 4);
    pair.a.write(0, &data);
    pair.b.post_recv(1, 0, 4096);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 2500)]));
    pair.a.post_send(send_wr(
        2,
        SendOp::RdmaWriteWithImm {
            remote_addr: pair.b.mr.addr + 8192,
            rkey: pair.b.mr.rkey,
            imm: 3,
        },
        vec![pair.a.sge(0, 2500)],
    ));
    pair.b.post_recv(2, 0, 0);
    pair.run();
    assert_eq!(pair.b.read(0, 2500), data);
    assert_eq!(pair.b.read(8192, 2500), data);
    let recv: Vec<_> = pair
        .b
        .poll()
        .iter()
        .map(|w| (w.wr_id, w.opcode, w.byte_len))
        .collect();
    assert_eq!(
        recv,
        [
            (1, WcOpcode::Recv, 2500),
            (2, WcOpcode::RecvRdmaWithImm, 2500)
        ]
    );
    assert_eq!(
        pair.count(common::Dir::BtoA, |_| true),
        0,
        "UC sends no ACKs"
    );
    assert!(pair.count(common::Dir::AtoB, |r| r.bth.ack_req) == 0);
    assert_eq!(pair.a.poll().len(), 2);
    // UC has no READ or atomics.
    let read = send_wr(
        3,
        SendOp::RdmaRead {
            remote_addr: pair.b.mr.addr,
            rkey: pair.b.mr.rkey,
        },
        vec![pair.a.sge(0, 8)],
    );
    assert!(pair.a.engine.post_send(NS, pair.a.qpn, read).is_err());
}

#[test]
fn uc_gap_drops_the_message_and_reuses_the_receive() {
    let mut pair = Pair::new(QpType::Uc, Params::default());
    let first = pattern(3000, 1);
    let second = pattern(100, 2);
    pair.a.write(0, &first);
    pair.a.write(4000, &second);
    pair.b.post_recv(1, 0, 4096);
    pair.filter =
        Box::new(|dir, r, _| !(dir == common::Dir::AtoB && r.bth.opcode == OpCode::UcSendMiddle));
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 3000)]));
    pair.a
        .post_send(send_wr(2, SendOp::Send, vec![pair.a.sge(4000, 100)]));
    pair.run();
    // The sender cannot know: both complete.
    assert_eq!(pair.a.poll().len(), 2);
    // The receiver lost the first message; the second used the same receive WR.
    let recv = pair.b.poll();
    assert_eq!(recv.len(), 1);
    assert_eq!((recv[0].wr_id, recv[0].byte_len), (1, 100));
    assert_eq!(pair.b.read(0, 100), second);
    assert!(pair.b.engine.counters().drops.out_of_sequence >= 1);
}

#[test]
fn srq_feeds_two_qps_and_fires_its_limit_once() {
    let mut a = Side::new("10.0.0.1".parse().unwrap(), 1, QpType::Rc, all_access());
    let mut b = Side::new("10.0.0.2".parse().unwrap(), 2, QpType::Rc, all_access());
    let srq = b
        .engine
        .create_srq(
            NS,
            b.pd,
            SrqAttr {
                max_wr: 8,
                max_sge: 1,
                srq_limit: 0,
            },
        )
        .unwrap();
    let mut init = init_attr(QpType::Rc, b.pd, b.cq);
    init.srq = Some(srq);
    let b1 = b.engine.create_qp(NS, init).unwrap();
    let b2 = b.engine.create_qp(NS, init).unwrap();
    let a2 = a
        .engine
        .create_qp(NS, init_attr(QpType::Rc, a.pd, a.cq))
        .unwrap();
    let p = Params::default();
    let (aa, ba): (IpAddr, IpAddr) = (a.addr, b.addr);
    connect(&mut a.engine, NS, a.qpn, ba, b1, QpType::Rc, &p);
    connect(&mut a.engine, NS, a2, ba, b2, QpType::Rc, &p);
    connect(&mut b.engine, NS, b1, aa, a.qpn, QpType::Rc, &p);
    connect(&mut b.engine, NS, b2, aa, a2, QpType::Rc, &p);
    // A QP on an SRQ takes no receives of its own.
    let own = RecvWr {
        wr_id: 0,
        sg_list: vec![b.sge(0, 8)].into(),
    };
    assert!(b.engine.post_recv(NS, b1, own).is_err());
    for i in 0..4u64 {
        let wr = RecvWr {
            wr_id: 100 + i,
            sg_list: vec![b.sge(i * 64, 64)].into(),
        };
        b.engine.post_srq_recv(NS, srq, wr).unwrap();
    }
    b.engine.modify_srq(NS, srq, 2).unwrap();
    for (i, qpn) in [a.qpn, a2, a.qpn].into_iter().enumerate() {
        a.write(i as u64 * 8, &[i as u8 + 1; 8]);
        a.engine
            .post_send(
                NS,
                qpn,
                send_wr(i as u64, SendOp::Send, vec![a.sge(i as u64 * 8, 8)]),
            )
            .unwrap();
        pump(&mut [(&mut a.engine, vec![aa]), (&mut b.engine, vec![ba])]);
    }
    let recv: Vec<_> = b.poll().iter().map(|w| (w.wr_id, w.qp_num)).collect();
    assert_eq!(recv, [(100, b1), (101, b2), (102, b1)]);
    assert_eq!(b.read(64, 8), [2; 8]);
    // 4 posted, limit 2: the third receive left 1 < 2.
    assert_eq!(
        b.engine.poll_event(NS),
        Some(AsyncEvent::SrqLimitReached(srq))
    );
    assert_eq!(b.engine.poll_event(NS), None);
    assert_eq!(
        b.engine.query_srq(NS, srq).unwrap().srq_limit,
        0,
        "disarmed"
    );
    assert_eq!(
        b.engine.destroy_srq(NS, srq),
        Err(VerbsError::Busy("SRQ in use"))
    );
    // An empty SRQ means RNR for the sender.
    a.engine
        .post_send(NS, a.qpn, send_wr(9, SendOp::Send, vec![a.sge(0, 8)]))
        .unwrap();
    a.engine
        .post_send(NS, a.qpn, send_wr(10, SendOp::Send, vec![a.sge(0, 8)]))
        .unwrap();
    pump(&mut [(&mut a.engine, vec![aa]), (&mut b.engine, vec![ba])]);
    assert_eq!(b.engine.counters().naks_sent.rnr, 1);
}

#[test]
fn path_mtu_256_segments_and_4096_carries_whole_pages() {
    for (mtu, packets) in [(PathMtu::Mtu256, 16), (PathMtu::Mtu4096, 1)] {
        let mut pair = Pair::new(
            QpType::Rc,
            Params {
                mtu,
                ..Params::default()
            },
        );
        pair.b.post_recv(1, 0, 4096);
        let data = pattern(4096, 8);
        pair.a.write(0, &data);
        pair.a
            .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 4096)]));
        pair.run();
        assert_eq!(pair.b.read(0, 4096), data);
        assert_eq!(pair.count(common::Dir::AtoB, |_| true), packets);
    }
}

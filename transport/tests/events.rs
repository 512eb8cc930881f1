#![allow(clippy::unwrap_used)]
//! Async events (`ibv_async_event`): each one ferroce raises, raised when it should be
//! and not otherwise, and the queue that holds them bounded however many are raised
//! and however few are read.

mod common;

use common::*;
use ferroce_transport::engine::{
    AsyncEvent, DeviceLimits, Engine, EngineConfig, QpAttr, QpState, QpType, RecvWr, SendOp,
    SrqAttr, DEFAULT_MAX_ASYNC_EVENTS, PORT_NUM,
};
use ferroce_transport::wire::{Qpn, Rkey};

/// Every event waiting, oldest first.
fn drain(side: &mut Side) -> Vec<AsyncEvent> {
    std::iter::from_fn(|| side.engine.poll_event(NS)).collect()
}

/// A local invalidate of a key that names no region: a local error, which moves the QP
/// to ERR on its own.
fn fail_locally(side: &mut Side, wr_id: u64) {
    side.post_send(send_wr(wr_id, SendOp::LocalInv(Rkey(0xdead_be00)), vec![]));
    while side
        .engine
        .poll_transmit(ferroce_transport::engine::Time::ZERO)
        .is_some()
    {}
}

fn to_state(engine: &mut Engine, qpn: Qpn, state: QpState) {
    let attr = QpAttr {
        state: Some(state),
        ..QpAttr::default()
    };
    engine.modify_qp(NS, qpn, &attr).unwrap();
}

fn to_init(engine: &mut Engine, qpn: Qpn) {
    let init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port_num: Some(1),
        access: Some(all_access()),
        ..QpAttr::default()
    };
    engine.modify_qp(NS, qpn, &init).unwrap();
}

#[test]
fn a_qp_that_fails_on_its_own_raises_qp_fatal_and_a_modify_does_not() {
    let mut pair = Pair::rc();
    fail_locally(&mut pair.a, 1);
    assert_eq!(pair.a.state(), QpState::Err);
    assert_eq!(drain(&mut pair.a), [AsyncEvent::QpFatal(pair.a.qpn)]);
    // The application moving its own QP to ERR is no async error.
    to_state(&mut pair.b.engine, pair.b.qpn, QpState::Err);
    assert_eq!(drain(&mut pair.b), []);
}

#[test]
fn a_nak_that_fails_the_requester_raises_qp_fatal() {
    let mut pair = Pair::rc();
    // A WRITE with a key B never handed out: B NAKs (remote access error), A's QP fails.
    let op = SendOp::RdmaWrite {
        remote_addr: pair.b.mr.addr,
        rkey: Rkey(pair.b.mr.rkey.0 ^ 0xff),
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 64)]));
    pair.run();
    assert_eq!(pair.a.state(), QpState::Err);
    assert_eq!(drain(&mut pair.a), [AsyncEvent::QpFatal(pair.a.qpn)]);
    // The responder's QP went to ERR too (a class C error, as rxe), and says why.
    assert_eq!(drain(&mut pair.b), [AsyncEvent::QpAccessErr(pair.b.qpn)]);
}

#[test]
fn an_invalid_request_raises_qp_req_err_at_the_responder() {
    let mut pair = Pair::rc();
    // 64 bytes into an 8-byte receive: NAK invalid request.
    pair.b.post_recv(1, 0, 8);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 64)]));
    pair.run();
    assert_eq!(drain(&mut pair.b), [AsyncEvent::QpReqErr(pair.b.qpn)]);
    assert_eq!(drain(&mut pair.a), [AsyncEvent::QpFatal(pair.a.qpn)]);
}

#[test]
fn a_full_cq_raises_cq_err_once_per_poll() {
    let mut side = Side::new("10.0.0.1".parse().unwrap(), 1, QpType::Rc, all_access());
    let cq = side.engine.create_cq(NS, 2).unwrap();
    let qpn = side
        .engine
        .create_qp(NS, init_attr(QpType::Rc, side.pd, cq))
        .unwrap();
    to_init(&mut side.engine, qpn);
    to_state(&mut side.engine, qpn, QpState::Err);
    // Each receive posted to a QP in ERR completes at once with a flush.
    let post = |side: &mut Side, count: u64| {
        for wr_id in 0..count {
            let wr = RecvWr {
                wr_id,
                sg_list: vec![side.sge(0, 8)].into(),
            };
            side.engine.post_recv(NS, qpn, wr).unwrap();
        }
    };
    // 2 fit, 3 are lost: one event, not three.
    post(&mut side, 5);
    assert_eq!(side.engine.counters().completion_queue_overflows, 3);
    assert_eq!(drain(&mut side), [AsyncEvent::CqErr(cq)]);
    // Polled, the CQ reports its next loss again.
    assert_eq!(side.engine.poll_cq(NS, cq, 1).unwrap().len(), 1);
    post(&mut side, 3);
    assert_eq!(side.engine.counters().completion_queue_overflows, 5);
    assert_eq!(drain(&mut side), [AsyncEvent::CqErr(cq)]);
}

#[test]
fn srq_limit_and_last_wqe_reached() {
    let mut pair = Pair::rc();
    let b = &mut pair.b;
    let attr = SrqAttr {
        max_wr: 8,
        max_sge: 1,
        srq_limit: 0,
    };
    let srq = b.engine.create_srq(NS, b.pd, attr).unwrap();
    let mut init = init_attr(QpType::Rc, b.pd, b.cq);
    init.srq = Some(srq);
    let on_srq = b.engine.create_qp(NS, init).unwrap();
    connect(
        &mut b.engine,
        NS,
        on_srq,
        pair.a.addr,
        pair.a.qpn,
        QpType::Rc,
        &Params::default(),
    );
    // Re-point A at the QP on the SRQ.
    to_state(&mut pair.a.engine, pair.a.qpn, QpState::Reset);
    let (b_addr, a_qpn) = (pair.b.addr, pair.a.qpn);
    connect(
        &mut pair.a.engine,
        NS,
        a_qpn,
        b_addr,
        on_srq,
        QpType::Rc,
        &Params::default(),
    );
    for wr_id in 0..2 {
        let wr = RecvWr {
            wr_id,
            sg_list: vec![pair.b.sge(wr_id * 64, 64)].into(),
        };
        pair.b.engine.post_srq_recv(NS, srq, wr).unwrap();
    }
    pair.b.engine.modify_srq(NS, srq, 2).unwrap();
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(drain(&mut pair.b), [AsyncEvent::SrqLimitReached(srq)]);
    // The QP on the SRQ leaves it: Last WQE Reached, by a modify (no QP fatal) ...
    to_state(&mut pair.b.engine, on_srq, QpState::Err);
    assert_eq!(drain(&mut pair.b), [AsyncEvent::QpLastWqeReached(on_srq)]);
    // ... and a QP without an SRQ raises none.
    to_state(&mut pair.b.engine, pair.b.qpn, QpState::Err);
    assert_eq!(drain(&mut pair.b), []);
}

#[test]
fn comm_est_when_the_first_packet_reaches_a_qp_in_rtr() {
    let mut pair = Pair::rc();
    // B back to RTR only, as an application that has not yet moved to RTS.
    let (a_addr, a_qpn, b_qpn) = (pair.a.addr, pair.a.qpn, pair.b.qpn);
    to_state(&mut pair.b.engine, b_qpn, QpState::Reset);
    let p = Params::default();
    to_init(&mut pair.b.engine, b_qpn);
    let rtr = QpAttr {
        state: Some(QpState::Rtr),
        av: Some(ferroce_transport::engine::AddressVector {
            remote: a_addr,
            local: None,
        }),
        path_mtu: Some(p.mtu),
        dest_qpn: Some(a_qpn),
        rq_psn: Some(ferroce_transport::wire::Psn::new(p.start_psn)),
        max_dest_rd_atomic: Some(p.max_rd_atomic),
        min_rnr_timer: Some(p.min_rnr_timer),
        ..QpAttr::default()
    };
    pair.b.engine.modify_qp(NS, b_qpn, &rtr).unwrap();
    assert_eq!(drain(&mut pair.b), []);
    for i in 0..2 {
        pair.b.post_recv(i, i * 64, 64);
        pair.a
            .post_send(send_wr(i, SendOp::Send, vec![pair.a.sge(0, 8)]));
        pair.run();
    }
    assert_eq!(pair.b.poll().len(), 2);
    // Once, for the first packet.
    assert_eq!(drain(&mut pair.b), [AsyncEvent::CommEst(b_qpn)]);
    // A QP in RTS hears packets with no event.
    assert_eq!(drain(&mut pair.a), []);
}

#[test]
fn port_and_gid_events_reach_every_namespace_on_changes_only() {
    let mut side = Side::new("10.0.0.1".parse().unwrap(), 1, QpType::Rc, all_access());
    let other = ferroce_transport::engine::NamespaceId(7);
    side.engine
        .create_namespace(other, &["10.0.7.1".parse().unwrap()])
        .unwrap();
    assert!(
        !side.engine.port_active(),
        "no I/O has reported the port up"
    );
    side.engine.handle_port_event(true);
    side.engine.handle_port_event(true);
    side.engine.handle_port_event(false);
    side.engine
        .add_gid(NS, "10.0.0.9".parse().unwrap())
        .unwrap();
    assert_eq!(
        drain(&mut side),
        [
            AsyncEvent::PortActive(PORT_NUM),
            AsyncEvent::PortErr(PORT_NUM),
            AsyncEvent::GidChange(PORT_NUM)
        ]
    );
    let in_other: Vec<_> = std::iter::from_fn(|| side.engine.poll_event(other)).collect();
    assert_eq!(
        in_other,
        [
            AsyncEvent::PortActive(PORT_NUM),
            AsyncEvent::PortErr(PORT_NUM)
        ]
    );
}

/// 100 000 QP-fatal events and nobody reading: the queue stops at its bound, the rest
/// are counted, and what stays is the oldest (a GID change raised last is the one
/// dropped). Reading one makes room for one.
#[test]
fn the_event_queue_stays_bounded_when_nobody_reads() {
    const EVENTS: u64 = 100_000;
    let mut pair = Pair::rc();
    let (b_addr, b_qpn, a_qpn) = (pair.b.addr, pair.b.qpn, pair.a.qpn);
    for i in 0..EVENTS {
        fail_locally(&mut pair.a, i);
        // Its error completion is taken, so the CQ never overflows (no CQ_ERR).
        assert_eq!(pair.a.poll().len(), 1);
        to_state(&mut pair.a.engine, a_qpn, QpState::Reset);
        connect(
            &mut pair.a.engine,
            NS,
            a_qpn,
            b_addr,
            b_qpn,
            QpType::Rc,
            &Params::default(),
        );
    }
    pair.a
        .engine
        .add_gid(NS, "10.0.0.9".parse().unwrap())
        .unwrap();
    let bound = DEFAULT_MAX_ASYNC_EVENTS as usize;
    assert_eq!(pair.a.engine.pending_events(NS), bound);
    assert_eq!(
        pair.a.engine.counters().async_events_dropped,
        EVENTS + 1 - bound as u64
    );
    assert_eq!(
        pair.a.engine.poll_event(NS),
        Some(AsyncEvent::QpFatal(a_qpn))
    );
    pair.a.engine.handle_port_event(true);
    assert_eq!(pair.a.engine.pending_events(NS), bound);
    let events = drain(&mut pair.a);
    assert!(events[..bound - 1]
        .iter()
        .all(|e| *e == AsyncEvent::QpFatal(a_qpn)));
    assert_eq!(events[bound - 1], AsyncEvent::PortActive(PORT_NUM));
}

#[test]
fn the_bound_is_configurable() {
    let config = EngineConfig {
        limits: DeviceLimits {
            max_async_events: 3,
            ..DeviceLimits::default()
        },
        ..EngineConfig::default()
    };
    let mut side = Side::with_config(
        config,
        "10.0.0.1".parse().unwrap(),
        1,
        QpType::Rc,
        all_access(),
    );
    for i in 0..10u8 {
        side.engine
            .add_gid(NS, std::net::Ipv4Addr::new(10, 0, 1, i).into())
            .unwrap();
    }
    assert_eq!(side.engine.pending_events(NS), 3);
    assert_eq!(side.engine.counters().async_events_dropped, 7);
}

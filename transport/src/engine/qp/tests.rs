//! The QP state machine: every transition, allowed and refused, with its required and
//! optional attributes.

use std::net::{IpAddr, Ipv4Addr};

use ferroce_wire::{Psn, Qpn};

use super::*;
use crate::engine::{Engine, EngineConfig, NamespaceId, VerbsError};

const NS: NamespaceId = NamespaceId::DEFAULT;
const ALL_STATES: [QpState; 7] = QpState::ALL;

fn engine() -> Engine {
    let config = EngineConfig {
        default_gids: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
        ..EngineConfig::default()
    };
    Engine::new(config, 7)
}

fn new_qp(engine: &mut Engine, qp_type: QpType) -> Qpn {
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 16).unwrap();
    let cap = QpCap {
        max_send_wr: 4,
        max_recv_wr: 4,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let init = QpInitAttr {
        qp_type,
        pd,
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        cap,
        sq_sig_all: true,
    };
    engine.create_qp(NS, init).unwrap()
}

/// Exactly the attributes a transition requires.
fn required(qp_type: QpType, from: QpState, to: QpState) -> QpAttr {
    let mut attr = QpAttr {
        state: Some(to),
        ..QpAttr::default()
    };
    let connected = qp_type != QpType::Ud;
    match (from, to) {
        (QpState::Reset, QpState::Init) => {
            attr.pkey_index = Some(0);
            attr.port_num = Some(1);
            if connected {
                attr.access = Some(AccessFlags::REMOTE_WRITE);
            } else {
                attr.qkey = Some(0x1111_1111);
            }
        }
        (QpState::Init, QpState::Rtr) if connected => {
            attr.av = Some(AddressVector {
                remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                local: None,
            });
            attr.path_mtu = Some(PathMtu::Mtu1024);
            attr.dest_qpn = Some(Qpn::new(0x22));
            attr.rq_psn = Some(Psn::new(5));
            if qp_type == QpType::Rc {
                attr.max_dest_rd_atomic = Some(1);
                attr.min_rnr_timer = Some(12);
            }
        }
        (QpState::Rtr, QpState::Rts) => {
            attr.sq_psn = Some(Psn::new(9));
            if qp_type == QpType::Rc {
                attr.timeout = Some(14);
                attr.retry_cnt = Some(7);
                attr.rnr_retry = Some(7);
                attr.max_rd_atomic = Some(1);
            }
        }
        _ => {}
    }
    attr
}

/// Drives a fresh QP to `state` along the normal path (SQE only for UC/UD, via a
/// direct set since only errors lead there).
fn qp_in(engine: &mut Engine, qp_type: QpType, state: QpState) -> Qpn {
    let qpn = new_qp(engine, qp_type);
    let path = [QpState::Init, QpState::Rtr, QpState::Rts];
    let mut current = QpState::Reset;
    let target = match state {
        QpState::Sqd | QpState::Sqe => QpState::Rts,
        other => other,
    };
    if target == QpState::Err {
        engine
            .modify_qp(NS, qpn, &required(qp_type, current, QpState::Err))
            .unwrap();
        return qpn;
    }
    for next in path {
        if current == target {
            break;
        }
        engine
            .modify_qp(NS, qpn, &required(qp_type, current, next))
            .unwrap();
        current = next;
    }
    if state == QpState::Sqd {
        engine
            .modify_qp(NS, qpn, &required(qp_type, current, QpState::Sqd))
            .unwrap();
    }
    if state == QpState::Sqe {
        let space = engine.namespaces.get_mut(&NS).unwrap();
        space.qps.get_mut(&qpn).unwrap().state = QpState::Sqe;
    }
    qpn
}

fn allowed(qp_type: QpType, from: QpState, to: QpState) -> bool {
    use QpState::*;
    match (from, to) {
        (_, Reset) | (_, Err) => true,
        (Reset, Init) | (Init, Init) | (Init, Rtr) | (Rtr, Rts) => true,
        (Rts, Rts) | (Rts, Sqd) | (Sqd, Rts) | (Sqd, Sqd) => true,
        (Sqe, Rts) => qp_type != QpType::Rc,
        _ => false,
    }
}

#[test]
fn every_transition_is_allowed_or_refused_as_iba_says() {
    for qp_type in [QpType::Rc, QpType::Uc, QpType::Ud] {
        for from in ALL_STATES {
            if from == QpState::Sqe && qp_type == QpType::Rc {
                continue; // RC never reaches SQE.
            }
            for to in ALL_STATES {
                let mut engine = engine();
                let qpn = qp_in(&mut engine, qp_type, from);
                assert_eq!(engine.query_qp(NS, qpn).unwrap().state, from);
                let result = engine.modify_qp(NS, qpn, &required(qp_type, from, to));
                if allowed(qp_type, from, to) {
                    assert_eq!(result, Ok(()), "{qp_type:?} {from:?} -> {to:?}");
                    assert_eq!(engine.query_qp(NS, qpn).unwrap().state, to);
                } else {
                    assert_eq!(
                        result,
                        Err(VerbsError::InvalidStateTransition { qp_type, from, to }),
                        "{qp_type:?} {from:?} -> {to:?}"
                    );
                    assert_eq!(engine.query_qp(NS, qpn).unwrap().state, from);
                }
            }
        }
    }
}

#[test]
fn each_required_attribute_is_required() {
    for qp_type in [QpType::Rc, QpType::Uc, QpType::Ud] {
        for (from, to) in [
            (QpState::Reset, QpState::Init),
            (QpState::Init, QpState::Rtr),
            (QpState::Rtr, QpState::Rts),
        ] {
            let full = required(qp_type, from, to);
            let fields = AttrMask::of(&full).0;
            for bit in 0..16 {
                if fields & (1 << bit) == 0 {
                    continue;
                }
                let mut engine = engine();
                let qpn = qp_in(&mut engine, qp_type, from);
                let mut partial = full;
                clear(&mut partial, bit);
                assert_eq!(
                    engine.modify_qp(NS, qpn, &partial),
                    Err(VerbsError::MissingAttribute(AttrMask::NAMES[bit])),
                    "{qp_type:?} {from:?} -> {to:?} without {}",
                    AttrMask::NAMES[bit]
                );
                assert_eq!(engine.query_qp(NS, qpn).unwrap().state, from);
            }
        }
    }
}

fn clear(attr: &mut QpAttr, bit: usize) {
    match bit {
        0 => attr.pkey_index = None,
        1 => attr.port_num = None,
        2 => attr.qkey = None,
        3 => attr.access = None,
        4 => attr.path_mtu = None,
        5 => attr.dest_qpn = None,
        6 => attr.rq_psn = None,
        7 => attr.sq_psn = None,
        8 => attr.max_rd_atomic = None,
        9 => attr.max_dest_rd_atomic = None,
        10 => attr.min_rnr_timer = None,
        11 => attr.timeout = None,
        12 => attr.retry_cnt = None,
        13 => attr.rnr_retry = None,
        14 => attr.av = None,
        _ => attr.flow_label = None,
    }
}

#[test]
fn attributes_outside_the_transition_are_refused() {
    let mut engine = engine();
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Reset);
    let mut attr = required(QpType::Rc, QpState::Reset, QpState::Init);
    attr.sq_psn = Some(Psn::new(1));
    assert_eq!(
        engine.modify_qp(NS, qpn, &attr),
        Err(VerbsError::AttributeNotAllowed("sq_psn"))
    );
    // UD has a Q_Key, not access flags; RC the other way round.
    let ud = qp_in(&mut engine, QpType::Ud, QpState::Reset);
    let mut attr = required(QpType::Ud, QpState::Reset, QpState::Init);
    attr.access = Some(AccessFlags::REMOTE_READ);
    assert_eq!(
        engine.modify_qp(NS, ud, &attr),
        Err(VerbsError::AttributeNotAllowed("access"))
    );
    // RTS -> RTS may change min_rnr_timer (RC) but not the path MTU.
    let rts = qp_in(&mut engine, QpType::Rc, QpState::Rts);
    let ok = QpAttr {
        min_rnr_timer: Some(3),
        ..QpAttr::default()
    };
    assert_eq!(engine.modify_qp(NS, rts, &ok), Ok(()));
    assert_eq!(
        engine.query_qp(NS, rts).unwrap().attr.min_rnr_timer,
        Some(3)
    );
    let bad = QpAttr {
        path_mtu: Some(PathMtu::Mtu256),
        ..QpAttr::default()
    };
    assert_eq!(
        engine.modify_qp(NS, rts, &bad),
        Err(VerbsError::AttributeNotAllowed("path_mtu"))
    );
}

#[test]
fn attribute_values_are_checked() {
    let mut engine = engine();
    let limits = engine.query_device().limits;
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Rtr);
    let mut attr = required(QpType::Rc, QpState::Rtr, QpState::Rts);
    attr.retry_cnt = Some(8);
    assert!(matches!(
        engine.modify_qp(NS, qpn, &attr),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut attr = required(QpType::Rc, QpState::Rtr, QpState::Rts);
    attr.timeout = Some(32);
    assert!(matches!(
        engine.modify_qp(NS, qpn, &attr),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut attr = required(QpType::Rc, QpState::Rtr, QpState::Rts);
    attr.max_rd_atomic = Some(limits.max_qp_init_rd_atom.saturating_add(1));
    if limits.max_qp_init_rd_atom < u8::MAX {
        assert_eq!(
            engine.modify_qp(NS, qpn, &attr),
            Err(VerbsError::LimitExceeded("max_rd_atomic"))
        );
    }
    // An address of a family the namespace has no GID for.
    let init = qp_in(&mut engine, QpType::Rc, QpState::Init);
    let mut attr = required(QpType::Rc, QpState::Init, QpState::Rtr);
    attr.av = Some(AddressVector {
        remote: "fd00::2".parse().unwrap(),
        local: None,
    });
    assert!(matches!(
        engine.modify_qp(NS, init, &attr),
        Err(VerbsError::InvalidArgument(_))
    ));
    // A named local GID must be one of the namespace's.
    attr.av = Some(AddressVector {
        remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        local: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99))),
    });
    assert!(matches!(
        engine.modify_qp(NS, init, &attr),
        Err(VerbsError::InvalidArgument(_))
    ));
}

#[test]
fn query_reports_what_was_set_and_reset_clears_it() {
    let mut engine = engine();
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Rts);
    let info = engine.query_qp(NS, qpn).unwrap();
    assert_eq!(info.state, QpState::Rts);
    assert_eq!(info.attr.path_mtu, Some(PathMtu::Mtu1024));
    assert_eq!(info.attr.dest_qpn, Some(Qpn::new(0x22)));
    assert_eq!(info.attr.rq_psn, Some(Psn::new(5)));
    assert_eq!(info.attr.sq_psn, Some(Psn::new(9)));
    assert_eq!(info.attr.timeout, Some(14));
    assert_eq!(info.attr.min_rnr_timer, Some(12));
    engine
        .modify_qp(NS, qpn, &required(QpType::Rc, QpState::Rts, QpState::Reset))
        .unwrap();
    let info = engine.query_qp(NS, qpn).unwrap();
    assert_eq!(
        info.attr.path_mtu,
        Some(PathMtu::Mtu256),
        "a new QP starts at 256"
    );
    assert_eq!(info.attr.av, None);
}

#[test]
fn work_is_refused_before_the_queue_is_ready() {
    let mut engine = engine();
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Reset);
    let recv = RecvWr {
        wr_id: 1,
        sg_list: vec![].into(),
    };
    assert_eq!(
        engine.post_recv(NS, qpn, recv.clone()),
        Err(VerbsError::InvalidState(QpState::Reset))
    );
    let send = SendWr::new(1, SendOp::Send, vec![]);
    for state in [QpState::Reset, QpState::Init, QpState::Rtr] {
        let qpn = qp_in(&mut engine, QpType::Rc, state);
        assert_eq!(
            engine.post_send(NS, qpn, send.clone()),
            Err(VerbsError::InvalidState(state))
        );
    }
    let init = qp_in(&mut engine, QpType::Rc, QpState::Init);
    assert_eq!(engine.post_recv(NS, init, recv.clone()), Ok(()));
    // Queue depth and SGE limits.
    for _ in 0..3 {
        engine.post_recv(NS, init, recv.clone()).unwrap();
    }
    assert_eq!(
        engine.post_recv(NS, init, recv.clone()),
        Err(VerbsError::QueueFull)
    );
    let rts = qp_in(&mut engine, QpType::Rc, QpState::Rts);
    let sge = Sge {
        addr: 0,
        length: 1,
        lkey: Lkey(0),
    };
    let two = SendWr::new(1, SendOp::Send, vec![sge, sge]);
    assert_eq!(
        engine.post_send(NS, rts, two),
        Err(VerbsError::LimitExceeded("max_send_sge"))
    );
    // Nothing goes out from post_send itself.
    engine.post_send(NS, rts, send.clone()).unwrap();
    assert_eq!(engine.counters().packets_out, 0);
}

#[test]
fn moving_to_err_flushes_posted_work_in_order() {
    let mut engine = engine();
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Rts);
    for id in 1..=3 {
        engine
            .post_recv(
                NS,
                qpn,
                RecvWr {
                    wr_id: 10 + id,
                    sg_list: vec![].into(),
                },
            )
            .unwrap();
        engine
            .post_send(NS, qpn, SendWr::new(id, SendOp::Send, vec![]))
            .unwrap();
    }
    engine
        .modify_qp(NS, qpn, &required(QpType::Rc, QpState::Rts, QpState::Err))
        .unwrap();
    let cq = engine.namespaces[&NS].qps[&qpn].send_cq;
    let wcs = engine.poll_cq(NS, cq, 16).unwrap();
    let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        got,
        [
            (1, WcStatus::WrFlushErr),
            (2, WcStatus::WrFlushErr),
            (3, WcStatus::WrFlushErr),
            (11, WcStatus::WrFlushErr),
            (12, WcStatus::WrFlushErr),
            (13, WcStatus::WrFlushErr)
        ]
    );
}

#[test]
fn connected_source_port_matches_the_rxe_captures() {
    // rc_pingpong.pcap and uc_write_bw.pcap: QPN 0x11 talking to QPN 0x11 uses 0xc121.
    assert_eq!(
        connected_udp_source_port(Qpn::new(0x11), Qpn::new(0x11)),
        0xc121
    );
    // ud_pingpong.pcap: UD QPN 0x11 uses 0xdf94.
    assert_eq!(udp_source_port(Qpn::new(0x11)), 0xdf94);
    let mut engine = engine();
    let qpn = qp_in(&mut engine, QpType::Rc, QpState::Rtr);
    let qp = &engine.namespaces[&NS].qps[&qpn];
    assert_eq!(qp.src_port, connected_udp_source_port(qpn, Qpn::new(0x22)));
}

#[test]
fn source_port_is_rxe_hash() {
    // hash_32(0x11, 14) = (0x11 * 0x61C88647) >> 18, computed by hand.
    let hash = (0x11u32.wrapping_mul(0x61C8_8647)) >> 18;
    assert_eq!(udp_source_port(Qpn::new(0x11)), 0xC000 | hash as u16);
    assert_ne!(
        udp_source_port(Qpn::new(0x11)),
        udp_source_port(Qpn::new(0x12))
    );
}

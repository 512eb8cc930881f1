#![allow(clippy::unwrap_used)]
//! P_Key checks on receive, as rxe's `check_keys`: the one partition is the default
//! 0xFFFF (a full member), so a packet must carry partition 0x7FFF, as a full or a
//! limited member; anything else is dropped and counted (`bad_pkey_cntr`) before the
//! QP sees it — requests and responses alike.

mod common;

use common::*;
use ferroce_transport::engine::{pkey_match, Datagram, SendOp, WcStatus};
use ferroce_transport::wire::icrc::{self, Envelope};

/// `d` with its BTH P_Key set to `pkey` and the ICRC made valid again, so only the
/// P_Key check can refuse it.
fn with_pkey(d: &Datagram, pkey: u16) -> Vec<u8> {
    let mut bytes = d.payload.clone();
    bytes[2..4].copy_from_slice(&pkey.to_be_bytes());
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(t)) = (d.meta.src, d.meta.dst) else {
        unreachable!("the pair is IPv4");
    };
    icrc::fill(&Envelope::ipv4(s, t, 0, d.meta.src_port), &mut bytes).unwrap();
    bytes
}

/// Keys of other partitions, and of the invalid partition 0 as a full or limited member.
const FOREIGN: [u16; 5] = [0x1234, 0x0000, 0x8000, 0x7ffe, 0xfffe];

#[test]
fn requests_of_another_partition_are_dropped_and_counted() {
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 64);
    pair.a.write(0, b"partition");
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 9)]));
    let d = pair.a.engine.poll_transmit(pair.now).unwrap();
    for pkey in FOREIGN {
        pair.b
            .engine
            .handle_datagram(pair.now, d.meta, &with_pkey(&d, pkey));
    }
    assert_eq!(pair.b.poll(), [], "a foreign P_Key reached the QP");
    assert!(
        pair.b.engine.poll_transmit(pair.now).is_none(),
        "no ACK or NAK"
    );
    assert_eq!(pair.b.engine.counters().drops.pkey_mismatch, 5);
    // A limited member of the default partition talks to a full member.
    pair.b
        .engine
        .handle_datagram(pair.now, d.meta, &with_pkey(&d, 0x7fff));
    let wc = pair.b.poll();
    assert_eq!(
        (wc.len(), wc[0].status, wc[0].byte_len),
        (1, WcStatus::Success, 9)
    );
    assert_eq!(pair.b.read(0, 9), b"partition");
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
    assert_eq!(pair.b.engine.counters().drops.pkey_mismatch, 5);
}

#[test]
fn responses_of_another_partition_are_dropped_and_counted() {
    let mut pair = Pair::rc();
    let op = SendOp::RdmaWrite {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 64)]));
    pair.pass(Dir::AtoB);
    let ack = pair.b.engine.poll_transmit(pair.now).unwrap();
    pair.a
        .engine
        .handle_datagram(pair.now, ack.meta, &with_pkey(&ack, 0x4242));
    assert_eq!(
        pair.a.poll(),
        [],
        "an ACK of another partition completed a WRITE"
    );
    assert_eq!(pair.a.engine.counters().drops.pkey_mismatch, 1);
    pair.a
        .engine
        .handle_datagram(pair.now, ack.meta, &ack.payload);
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
}

#[test]
fn membership_rules() {
    // (packet, table): same partition, not partition 0, at least one full member.
    let accepted = [(0xffff, 0xffff), (0x7fff, 0xffff), (0xffff, 0x7fff)];
    let refused = [
        (0x7fff, 0x7fff), // two limited members
        (0x0001, 0x0001),
        (0x8000, 0x8000), // the invalid partition
        (0x0000, 0xffff),
        (0x8001, 0xffff), // another partition
    ];
    for (packet, table) in accepted {
        assert!(pkey_match(packet, table), "{packet:#06x} vs {table:#06x}");
    }
    for (packet, table) in refused {
        assert!(!pkey_match(packet, table), "{packet:#06x} vs {table:#06x}");
    }
    assert!(pkey_match(0x8001, 0x0001) && pkey_match(0x0001, 0x8001));
}

/// QP1 (the GSI, where RDMA CM's MADs arrive) takes any key of the P_Key table, as rxe's
/// `check_keys` looks it up there: with the one default entry, the same rule.
#[test]
fn qp1_checks_the_pkey_table_too() {
    use ferroce_transport::engine::{
        Engine, EngineConfig, QpAttr, QpState, QpType, RecvWr, SendWr, Sge, Time, UdDestination,
    };
    use ferroce_transport::wire::deth::GSI_QKEY;
    use ferroce_transport::wire::Qpn;
    let addrs: [std::net::IpAddr; 2] = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
    let mut hosts: Vec<(Engine, ferroce_transport::engine::MemoryRegion, _)> = addrs
        .iter()
        .map(|addr| {
            let config = EngineConfig {
                default_gids: vec![*addr],
                ..EngineConfig::default()
            };
            let mut engine = Engine::new(config, 1);
            let pd = engine.alloc_pd(NS).unwrap();
            let cq = engine.create_cq(NS, 16).unwrap();
            let access = ferroce_transport::engine::AccessFlags::LOCAL_WRITE;
            let mr = engine.reg_mr(NS, pd, 4096, access).unwrap();
            let gsi = engine
                .create_gsi_qp(NS, init_attr(QpType::Ud, pd, cq))
                .unwrap();
            for state in [QpState::Init, QpState::Rtr, QpState::Rts] {
                let mut attr = QpAttr {
                    state: Some(state),
                    ..QpAttr::default()
                };
                if state == QpState::Init {
                    attr.pkey_index = Some(0);
                    attr.port_num = Some(1);
                    attr.qkey = Some(GSI_QKEY);
                }
                if state == QpState::Rts {
                    attr.sq_psn = Some(ferroce_transport::wire::Psn::new(0));
                }
                engine.modify_qp(NS, gsi, &attr).unwrap();
            }
            (engine, mr, cq)
        })
        .collect();
    let (b_engine, b_mr, _) = &mut hosts[1];
    let sge = Sge {
        addr: b_mr.addr,
        length: 1024,
        lkey: b_mr.lkey,
    };
    let recv = RecvWr {
        wr_id: 1,
        sg_list: vec![sge].into(),
    };
    b_engine.post_recv(NS, Qpn::GSI, recv).unwrap();
    let (a_engine, a_mr, _) = &mut hosts[0];
    let sge = Sge {
        addr: a_mr.addr,
        length: 256,
        lkey: a_mr.lkey,
    };
    let mut mad = SendWr::new(1, SendOp::Send, vec![sge]);
    mad.ud = Some(UdDestination {
        address: addrs[1],
        qpn: Qpn::GSI,
        qkey: GSI_QKEY,
    });
    a_engine.post_send(NS, Qpn::GSI, mad).unwrap();
    let d = a_engine.poll_transmit(Time::ZERO).unwrap();
    let (b_engine, _, b_cq) = &mut hosts[1];
    for pkey in FOREIGN {
        b_engine.handle_datagram(Time::ZERO, d.meta, &with_pkey(&d, pkey));
    }
    assert_eq!(b_engine.poll_cq(NS, *b_cq, 4).unwrap(), []);
    assert_eq!(b_engine.counters().drops.pkey_mismatch, 5);
    b_engine.handle_datagram(Time::ZERO, d.meta, &with_pkey(&d, 0x7fff));
    let wc = b_engine.poll_cq(NS, *b_cq, 4).unwrap();
    assert_eq!((wc.len(), wc[0].status), (1, WcStatus::Success));
}

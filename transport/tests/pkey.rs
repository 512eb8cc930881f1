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
    let mut d = pair.a.engine.poll_transmit(pair.now).unwrap();
    d.own();
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
    let request = pair.a.engine.poll_transmit(pair.now).unwrap();
    pair.b
        .engine
        .handle_datagram(pair.now, request.meta, &request.payload);
    let mut ack = pair.b.engine.poll_transmit(pair.now).unwrap();
    ack.own();
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

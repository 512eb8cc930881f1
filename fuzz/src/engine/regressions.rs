//! Inputs the `engine` target found failing, or that were built to show a hole the
//! fuzzer cannot reach within one input's length, written as action sequences.
//! `cargo test --lib` here (stable works: the library needs no libFuzzer) runs them;
//! each names the issue item it belongs to.

use ferroce_transport::wire::OpCode;

use super::craft::{AddrPick, Crafted, Near24};
use super::{Action, World, REGION_LEN};

/// Issue 12 item 2 (responder work): ACKs pile up past `MAX_QUEUED_ACKS` when each
/// follows a READ job, and a duplicate READ turns its fresh job into a replay so the
/// next READ is not refused; overwriting the ring then removes the READ job but not
/// the ACK behind it. Nothing is sent in between (the peer floods faster than the
/// engine's answers leave), and the queue grows by one ACK per three packets.
#[test]
fn responder_acks_behind_replayed_reads_stay_bounded() {
    let mut world = World::new();
    let write = Crafted::to_qp(OpCode::RcWriteOnly, 0, 0, 256);
    world.step(&Action::Flood {
        count: 65,
        packet: write.clone(),
    });
    for _ in 0..40 {
        let read = Crafted::to_qp(OpCode::RcReadRequest, 0, 0, 8);
        world.step(&Action::Packet(read.clone()));
        let duplicate = Crafted {
            psn: Near24::Near(-1),
            ..read
        };
        world.step(&Action::Packet(duplicate));
        world.step(&Action::Packet(write.clone()));
    }
}

/// Issue 12 item 4 (P_Key): a WRITE with a P_Key of another partition must not touch
/// memory (rxe drops it before the QP sees it). Failed before the P_Key check landed
/// (byte 1024 of the region changed).
#[test]
fn a_foreign_pkey_writes_nothing() {
    let mut world = World::new();
    let write = Crafted::to_qp(OpCode::RcWriteOnly, 0, 0, 256);
    let beyond_receives = AddrPick::Region {
        ns: 0,
        index: 0,
        offset: REGION_LEN as i16 / 2,
    };
    let foreign = Crafted {
        pkey: Some(0x1234),
        addr: beyond_receives,
        ..write.clone()
    };
    world.step(&Action::Packet(foreign));
    // The same WRITE in the default partition lands (so the test can fail), at the
    // PSN the dropped one had (the world counted that one as sent).
    world.step(&Action::Packet(Crafted {
        addr: beyond_receives,
        psn: Near24::Near(-1),
        ..write
    }));
    let region = &world.spaces[0].regions[0];
    let half = REGION_LEN as usize / 2;
    assert_eq!(region.seen[half..half + 256], [0x11; 256]);
}

/// Issue 15 item 2 (the CM agent): REQs past the listener's backlog, repeated and
/// stale ones, accepts, RTUs and DREQs naming the agent's comm IDs, and MADs of other
/// classes keep every CM queue within its bound and every answer well formed.
#[test]
fn cm_requests_and_answers_stay_bounded() {
    use super::cm::{CommPick, MadPick};
    use super::craft::SourcePick;
    let mut world = World::new();
    let mad = |attribute: u8, local: u32, remote: CommPick, class_method| MadPick {
        to_ns: 0,
        from: SourcePick::Peer,
        attribute,
        class_method,
        tid: 7,
        local_comm_id: local,
        remote_comm_id: remote,
        sane_req: true,
        body: vec![0x11; 40],
    };
    for id in 0..40u32 {
        // A new QP (REQ offset 32, body offset 24) for most, repeats for the rest.
        let mut req = mad(0x10, id % 12, CommPick::Any(0), None);
        req.body[24..28].copy_from_slice(&((id % 12) << 8).to_be_bytes());
        world.step(&Action::Mad(req));
    }
    for _ in 0..6 {
        world.step(&Action::CmAnswer {
            ns: 0,
            accept: true,
        });
        world.step(&Action::CmAnswer {
            ns: 0,
            accept: false,
        });
    }
    world.step(&Action::Transmit { max: 0 });
    let ns = ferroce_transport::engine::NamespaceId::DEFAULT;
    let counters = world.engine().cm_counters(ns).unwrap();
    assert!(
        counters.backlog_full > 0 && counters.duplicates > 0,
        "{counters:?}"
    );
    for attribute in 0x10..=0x1b {
        for index in 0..4 {
            world.step(&Action::Mad(mad(
                attribute,
                index,
                CommPick::Known(index as u8),
                None,
            )));
        }
    }
    world.step(&Action::Mad(mad(
        0x12,
        1,
        CommPick::Any(2),
        Some((0x04, 1, 0x01)),
    )));
    world.step(&Action::CmDisconnect { ns: 0, index: 0 });
    world.step(&Action::Transmit { max: 0 });
    world.step(&Action::Advance {
        mantissa: 0xffff,
        shift: 20,
    });
    world.step(&Action::Transmit { max: 0 });
}

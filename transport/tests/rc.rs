#![allow(clippy::unwrap_used)]
//! RC end to end: two engines in memory doing SEND/WRITE/READ/atomics, loss recovery,
//! every NAK, retry exhaustion and flush.

mod common;

use std::time::Duration;

use common::*;
use ferroce_transport::engine::{
    AccessFlags, CallerMemory, Datagram, PathMtu, QpAttr, QpState, QpType, SendOp, Sge, WcOpcode,
    WcStatus, QP_BURST,
};
use ferroce_transport::wire::{packet, AckSyndrome, NakCode, OpCode, Psn, Qpn, Rkey};

#[test]
fn send_multi_packet_message_arrives_whole() {
    let mut pair = Pair::rc();
    let data = pattern(3000, 7);
    pair.a.write(0, &data);
    pair.b.post_recv(77, 100, 4096);
    pair.a
        .post_send(send_wr(5, SendOp::Send, vec![pair.a.sge(0, 3000)]));
    pair.run();
    assert_eq!(pair.b.read(100, 3000), data);
    let recv = pair.b.poll();
    assert_eq!(recv.len(), 1);
    let wc = &recv[0];
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (77, WcStatus::Success, WcOpcode::Recv, 3000)
    );
    assert_eq!(wc.src_qp, pair.a.qpn);
    assert_eq!(wc.qp_num, pair.b.qpn);
    let send = pair.a.poll();
    assert_eq!(send.len(), 1);
    assert_eq!(
        (send[0].wr_id, send[0].status, send[0].opcode),
        (5, WcStatus::Success, WcOpcode::Send)
    );
    // 1024-byte MTU: First, Middle, Last; AckReq only on the last.
    let ops: Vec<OpCode> = pair
        .log
        .iter()
        .filter(|(d, _, _)| *d == Dir::AtoB)
        .map(|(_, r, _)| r.bth.opcode)
        .collect();
    assert_eq!(
        ops,
        [
            OpCode::RcSendFirst,
            OpCode::RcSendMiddle,
            OpCode::RcSendLast
        ]
    );
    assert_eq!(pair.count(Dir::AtoB, |r| r.bth.ack_req), 1);
    assert_eq!(
        pair.count(Dir::BtoA, |r| r.bth.opcode == OpCode::RcAcknowledge),
        1
    );
    // PSNs start at the sq_psn and are consecutive.
    let psns: Vec<u32> = pair
        .log
        .iter()
        .filter(|(d, _, _)| *d == Dir::AtoB)
        .map(|(_, r, _)| r.bth.psn.value())
        .collect();
    assert_eq!(psns, [0x100, 0x101, 0x102]);
}

#[test]
fn send_with_immediate_and_gather_list() {
    let mut pair = Pair::rc();
    pair.a.write(0, b"hello ");
    pair.a.write(500, b"world");
    pair.b.post_recv(1, 0, 64);
    let sges = vec![pair.a.sge(0, 6), pair.a.sge(500, 5)];
    pair.a
        .post_send(send_wr(2, SendOp::SendWithImm(0xdead_beef), sges));
    pair.run();
    assert_eq!(pair.b.read(0, 11), b"hello world");
    let wc = pair.b.poll().remove(0);
    assert_eq!(wc.imm_data, Some(0xdead_beef));
    assert_eq!(wc.byte_len, 11);
}

#[test]
fn inline_send() {
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 64);
    let mut wr = send_wr(2, SendOp::Send, vec![]);
    wr.inline_data = Some(b"inline!".to_vec());
    pair.a.post_send(wr);
    pair.run();
    assert_eq!(pair.b.read(0, 7), b"inline!");
    // Inline data over the QP's max_inline_data is refused.
    let mut big = send_wr(3, SendOp::Send, vec![]);
    big.inline_data = Some(vec![0; 257]);
    assert!(pair.a.engine.post_send(NS, pair.a.qpn, big).is_err());
}

#[test]
fn rdma_write_and_write_with_immediate() {
    let mut pair = Pair::rc();
    let data = pattern(5000, 3);
    pair.a.write(0, &data);
    let remote = pair.b.mr.addr + 1000;
    let rkey = pair.b.mr.rkey;
    pair.a.post_send(send_wr(
        1,
        SendOp::RdmaWrite {
            remote_addr: remote,
            rkey,
        },
        vec![pair.a.sge(0, 5000)],
    ));
    pair.run();
    assert_eq!(pair.b.read(1000, 5000), data);
    assert!(
        pair.b.poll().is_empty(),
        "a plain WRITE consumes no receive"
    );
    let wc = pair.a.poll().remove(0);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::RdmaWrite, 5000)
    );

    pair.b.post_recv(9, 0, 0);
    pair.a.post_send(send_wr(
        2,
        SendOp::RdmaWriteWithImm {
            remote_addr: remote,
            rkey,
            imm: 42,
        },
        vec![pair.a.sge(100, 2000)],
    ));
    pair.run();
    let wc = pair.b.poll().remove(0);
    assert_eq!(
        (wc.wr_id, wc.opcode, wc.imm_data, wc.byte_len),
        (9, WcOpcode::RecvRdmaWithImm, Some(42), 2000)
    );
    assert_eq!(pair.b.read(1000, 2000), data[100..2100]);
}

/// Payloads lent from the application's own memory (`CallerMemory`, as `reg_mr_raw`
/// registers it) arrive intact, with ICRCs the peer accepts, and a later transfer
/// carries what the application wrote in between. Run under Miri (`.ci/run`): the
/// engine reads that memory only through raw copies, never a reference.
#[test]
fn payloads_lent_from_caller_memory_arrive_intact() {
    let mut pair = Pair::rc();
    pair.lend = true;
    let data = pattern(3000, 7);
    let buffer: *mut [u8] = Box::into_raw(data.clone().into_boxed_slice());
    // SAFETY: freed only after the region is deregistered below; the test writes it
    // only between transfers, holding no reference into it.
    #[allow(unsafe_code)]
    let memory = unsafe { CallerMemory::new(buffer.cast(), data.len()) }.unwrap();
    let mr = pair
        .a
        .engine
        .reg_mr_backed(NS, pair.a.pd, memory, AccessFlags::LOCAL_WRITE)
        .unwrap();
    let (remote, rkey) = (pair.b.mr.addr, pair.b.mr.rkey);
    let sge = Sge {
        addr: mr.addr,
        length: 3000,
        lkey: mr.lkey,
    };
    let write =
        |wr_id, remote_addr| send_wr(wr_id, SendOp::RdmaWrite { remote_addr, rkey }, vec![sge]);
    pair.a.post_send(write(1, remote));
    pair.run();
    assert_eq!(pair.b.read(0, 3000), data);
    let lent = pair.lent;
    assert!(lent >= 3, "every packet of at least 512 bytes lent: {lent}");
    // The application writes between transfers; the next one carries its bytes.
    // SAFETY: inside the buffer; the first transfer completed and the next is not
    // posted yet, so the engine leaves the bytes alone.
    #[allow(unsafe_code)]
    unsafe {
        buffer.cast::<u8>().add(1000).write_bytes(0xab, 600)
    };
    pair.a.post_send(write(2, remote + 3000));
    pair.run();
    let mut expect = data;
    expect[1000..1600].fill(0xab);
    assert_eq!(pair.b.read(3000, 3000), expect);
    assert!(pair.lent >= 2 * lent);
    assert_eq!(pair.a.poll().len(), 2);
    pair.a.engine.dereg_mr(NS, mr.lkey).unwrap();
    // SAFETY: deregistered; the buffer is the test's alone again.
    #[allow(unsafe_code)]
    drop(unsafe { Box::from_raw(buffer) });
}

#[test]
fn payloads_lent_from_registered_memory_go_out_as_copied_ones_would() {
    let run = |lend: bool| {
        let mut pair = Pair::rc();
        pair.lend = lend;
        let data = pattern(9000, 5);
        pair.a.write(0, &data);
        let (remote, rkey) = (pair.b.mr.addr, pair.b.mr.rkey);
        let write = |remote_addr| SendOp::RdmaWrite { remote_addr, rkey };
        // Lent: one SGE. Copied: too short, and a payload spread over two SGEs.
        pair.a
            .post_send(send_wr(1, write(remote), vec![pair.a.sge(0, 9000)]));
        pair.a
            .post_send(send_wr(2, write(remote + 9000), vec![pair.a.sge(0, 100)]));
        let two = vec![pair.a.sge(0, 700), pair.a.sge(8000, 700)];
        pair.a.post_send(send_wr(3, write(remote + 9100), two));
        // READ responses are lent too.
        let read = SendOp::RdmaRead {
            remote_addr: remote,
            rkey,
        };
        pair.a
            .post_send(send_wr(4, read, vec![pair.a.sge(10_000, 3000)]));
        pair.run();
        assert_eq!(pair.a.read(10_000, 3000), data[..3000]);
        assert_eq!(pair.b.read(0, 9000), data);
        assert_eq!(pair.b.read(9000, 100), data[..100]);
        assert_eq!(pair.b.read(9100, 700), data[..700]);
        assert_eq!(pair.b.read(9800, 700), data[8000..8700]);
        assert_eq!(pair.a.poll().len(), 4);
        (pair.log, pair.lent)
    };
    let (copied, none) = run(false);
    let (lent, some) = run(true);
    assert_eq!(none, 0);
    let packets = |len: usize| len.div_ceil(1024);
    assert_eq!(
        some,
        packets(9000) + packets(3000),
        "the 9000-byte WRITE, the READ"
    );
    assert_eq!(
        lent, copied,
        "the same packets, byte counts and ICRCs accepted"
    );
}

/// `poll_transmit_into` sends what `poll_transmit` sends, but each QP's packets in
/// bursts of up to `QP_BURST` (QPs still take turns), never more than asked, and says 0
/// when nothing is ready.
#[test]
fn batched_transmit_takes_turns_in_bursts() {
    let mut pairs = [false, true].map(|batched| {
        let mut pair = Pair::rc();
        let (a, b) = (&mut pair.a, &mut pair.b);
        let second_a = a
            .engine
            .create_qp(NS, init_attr(QP_RC, a.pd, a.cq))
            .unwrap();
        let second_b = b
            .engine
            .create_qp(NS, init_attr(QP_RC, b.pd, b.cq))
            .unwrap();
        let p = Params::default();
        connect(&mut a.engine, NS, second_a, b.addr, second_b, QP_RC, &p);
        connect(&mut b.engine, NS, second_b, a.addr, second_a, QP_RC, &p);
        a.write(0, &pattern(20 * 1024, 3));
        let rkey = b.mr.rkey;
        for (i, qpn) in [a.qpn, second_a].into_iter().enumerate() {
            let remote_addr = b.mr.addr + i as u64 * 20 * 1024;
            let op = SendOp::RdmaWrite { remote_addr, rkey };
            let wr = send_wr(i as u64, op, vec![a.sge(0, 20 * 1024)]);
            a.engine.post_send(NS, qpn, wr).unwrap();
        }
        let mut out = Vec::new();
        if batched {
            assert_eq!(a.engine.poll_transmit_into(pair.now, &mut out, 5), 5);
            while a.engine.poll_transmit_into(pair.now, &mut out, 64) > 0 {}
        } else {
            out.extend(std::iter::from_fn(|| a.engine.poll_transmit(pair.now)));
        }
        (pair, out, second_b)
    });
    let dest_qp = |d: &Datagram| packet::parse(&d.payload).unwrap().repr.bth.dest_qp;
    // The responder's QPNs the two WRITEs go to (the same in both pairs: same seeds).
    let (first, second) = (pairs[0].0.b.qpn, pairs[0].2);
    // At a 1024-byte MTU each WRITE is 20 packets.
    let mut runs: Vec<(Qpn, usize)> = Vec::new();
    for d in &pairs[1].1 {
        match runs.last_mut() {
            Some((qpn, n)) if *qpn == dest_qp(d) => *n += 1,
            _ => runs.push((dest_qp(d), 1)),
        }
    }
    assert_eq!(
        runs,
        [
            (first, 5),
            (second, QP_BURST),
            (first, 15),
            (second, 20 - QP_BURST)
        ]
    );
    let per_qp = |out: &[Datagram], qpn| -> Vec<Vec<u8>> {
        let mine = out.iter().filter(|d| dest_qp(d) == qpn);
        mine.map(|d| d.payload.clone()).collect()
    };
    for qpn in [first, second] {
        assert_eq!(per_qp(&pairs[0].1, qpn), per_qp(&pairs[1].1, qpn));
    }
    // Delivered, they finish both WRITEs.
    let (pair, out, _) = &mut pairs[1];
    for d in out.drain(..) {
        pair.b.engine.handle_datagram(pair.now, d.meta, &d.payload);
    }
    pair.run();
    assert_eq!(pair.b.read(20 * 1024, 20 * 1024), pattern(20 * 1024, 3));
    assert_eq!(pair.a.poll().len(), 2);
    assert_eq!(
        pair.a
            .engine
            .poll_transmit_into(pair.now, &mut Vec::new(), 64),
        0
    );
}

#[test]
fn rdma_read_multi_packet() {
    let mut pair = Pair::rc();
    let data = pattern(4500, 11);
    pair.b.write(2000, &data);
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr + 2000,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(
        4,
        op,
        vec![pair.a.sge(0, 4000), pair.a.sge(8000, 500)],
    ));
    pair.run();
    assert_eq!(pair.a.read(0, 4000), data[..4000]);
    assert_eq!(pair.a.read(8000, 500), data[4000..]);
    let wc = pair.a.poll().remove(0);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::RdmaRead, 4500)
    );
    // One request, five responses (First, 3 Middle, Last).
    assert_eq!(pair.count(Dir::AtoB, |_| true), 1);
    assert_eq!(
        pair.count(Dir::BtoA, |r| r.bth.opcode == OpCode::RcReadResponseMiddle),
        3
    );
}

#[test]
fn atomics_compare_swap_and_fetch_add() {
    let mut pair = Pair::rc();
    pair.b.write(64, &100u64.to_ne_bytes());
    let rkey = pair.b.mr.rkey;
    let addr = pair.b.mr.addr + 64;
    pair.a.post_send(send_wr(
        1,
        SendOp::FetchAdd {
            remote_addr: addr,
            rkey,
            add: 5,
        },
        vec![pair.a.sge(0, 8)],
    ));
    pair.a.post_send(send_wr(
        2,
        SendOp::CompareSwap {
            remote_addr: addr,
            rkey,
            compare: 105,
            swap: 7,
        },
        vec![pair.a.sge(8, 8)],
    ));
    pair.a.post_send(send_wr(
        3,
        SendOp::CompareSwap {
            remote_addr: addr,
            rkey,
            compare: 1,
            swap: 9,
        },
        vec![pair.a.sge(16, 8)],
    ));
    pair.run();
    assert_eq!(pair.a.read(0, 8), 100u64.to_ne_bytes());
    assert_eq!(pair.a.read(8, 8), 105u64.to_ne_bytes());
    assert_eq!(pair.a.read(16, 8), 7u64.to_ne_bytes());
    assert_eq!(pair.b.read(64, 8), 7u64.to_ne_bytes());
    let wcs = pair.a.poll();
    let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status, w.opcode)).collect();
    assert_eq!(
        got,
        [
            (1, WcStatus::Success, WcOpcode::FetchAdd),
            (2, WcStatus::Success, WcOpcode::CompSwap),
            (3, WcStatus::Success, WcOpcode::CompSwap)
        ]
    );
}

#[test]
fn misaligned_atomic_is_an_invalid_request() {
    let mut pair = Pair::rc();
    let op = SendOp::FetchAdd {
        remote_addr: pair.b.mr.addr + 4,
        rkey: pair.b.mr.rkey,
        add: 1,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemInvReqErr);
    assert_eq!(pair.b.engine.counters().naks_sent.invalid_request, 1);
    assert_eq!(pair.b.read(0, 16), [0; 16]);
}

#[test]
fn many_messages_complete_in_order() {
    let mut pair = Pair::rc();
    for i in 0..200u64 {
        pair.b.post_recv(i, i * 64, 64);
    }
    for i in 0..200u64 {
        pair.a.write(i * 64, &[i as u8; 64]);
        let mut wr = send_wr(i, SendOp::Send, vec![pair.a.sge(i * 64, 64)]);
        wr.signaled = i % 10 == 9;
        pair.a.post_send(wr);
    }
    pair.run();
    let recv = pair.b.poll();
    assert_eq!(recv.len(), 200);
    assert!(recv.iter().enumerate().all(|(i, w)| w.wr_id == i as u64));
    for i in 0..200u64 {
        assert_eq!(pair.b.read(i * 64, 64), [i as u8; 64]);
    }
    // Only signaled sends complete (sq_sig_all is off).
    let sent: Vec<u64> = pair.a.poll().iter().map(|w| w.wr_id).collect();
    assert_eq!(sent, (0..20).map(|i| i * 10 + 9).collect::<Vec<_>>());
    // At most 128 PSNs in flight: the window held the rest back.
    assert!(pair.a.engine.counters().retransmits == 0);
}

#[test]
fn ack_request_at_least_every_64_packets() {
    let mut pair = Pair::new(
        common::QP_RC,
        Params {
            mtu: ferroce_transport::engine::PathMtu::Mtu256,
            ..Params::default()
        },
    );
    let len = 256 * 150;
    pair.b.post_recv(1, 0, len);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, len)]));
    pair.run();
    let acks: Vec<u32> = pair
        .log
        .iter()
        .filter(|(d, r, _)| *d == Dir::AtoB && r.bth.ack_req)
        .map(|(_, r, _)| r.bth.psn.value() - 0x100)
        .collect();
    assert_eq!(acks, [63, 127, 149]);
    assert_eq!(pair.b.poll()[0].byte_len, len);
}

#[test]
fn lost_packet_is_resent_after_the_retransmit_timer() {
    let mut pair = Pair::rc();
    // Drop the last packet of the message (the one with AckReq) the first time.
    pair.drop_once(Dir::AtoB, |r| r.bth.opcode == OpCode::RcSendLast);
    let data = pattern(2048, 1);
    pair.a.write(0, &data);
    pair.b.post_recv(1, 0, 4096);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 2048)]));
    pair.run();
    assert_eq!(pair.b.read(0, 2048), data);
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
    let c = pair.a.engine.counters();
    assert_eq!(c.timeouts, 1);
    // Go-back-N from the oldest unacknowledged PSN: the First was never acknowledged.
    assert_eq!(c.retransmits, 2);
    // timeout 14: 4.096 µs × 2^14 = 67.1 ms.
    assert!(pair.now.as_nanos() >= 4096 << 14);
    assert_eq!(pair.b.engine.counters().duplicates, 1);
}

#[test]
fn psn_sequence_nak_once_per_gap_then_go_back_n() {
    let mut pair = Pair::rc();
    pair.drop_once(Dir::AtoB, |r| r.bth.psn == Psn::new(0x101));
    let data = pattern(6000, 9);
    pair.a.write(0, &data);
    pair.b.post_recv(1, 0, 8192);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 6000)]));
    pair.run();
    assert_eq!(pair.b.read(0, 6000), data);
    let naks = pair.count(Dir::BtoA, |r| {
        r.aeth
            .is_some_and(|a| a.syndrome == AckSyndrome::Nak(NakCode::PsnSequenceError))
    });
    assert_eq!(
        naks, 1,
        "one NAK for the gap although 4 packets followed it"
    );
    assert_eq!(pair.b.engine.counters().naks_sent.psn_sequence, 1);
    assert_eq!(pair.a.engine.counters().naks_received.psn_sequence, 1);
    assert_eq!(
        pair.a.engine.counters().timeouts,
        0,
        "recovered by the NAK, not the timer"
    );
    // The NAK names PSN 0x101 and implicitly acknowledges 0x100: resend starts at 0x101.
    assert_eq!(pair.a.engine.counters().retransmits, 5);
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
}

#[test]
fn rnr_nak_backs_off_then_succeeds_once_a_receive_is_posted() {
    let mut pair = Pair::rc();
    pair.a.write(0, b"later");
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 5)]));
    // No receive posted: a few RNR NAKs (timer code 1 = 10 µs) go by.
    pair.run_for(Duration::from_micros(35));
    let rnrs = pair.b.engine.counters().naks_sent.rnr;
    assert!(rnrs >= 3, "{rnrs} RNR NAKs");
    assert!(
        pair.count(Dir::BtoA, |r| r
            .aeth
            .is_some_and(|a| a.syndrome == AckSyndrome::RnrNak { timer: 1 }))
            >= 3
    );
    assert!(pair.a.poll().is_empty());
    pair.b.post_recv(5, 0, 16);
    pair.run();
    assert_eq!(pair.b.read(0, 5), b"later");
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
}

#[test]
fn rnr_retry_exhaustion() {
    let mut pair = Pair::new(
        common::QP_RC,
        Params {
            rnr_retry: 2,
            ..Params::default()
        },
    );
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 5)]));
    pair.a
        .post_send(send_wr(2, SendOp::Send, vec![pair.a.sge(0, 5)]));
    pair.run();
    let wcs = pair.a.poll();
    let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        got,
        [(1, WcStatus::RnrRetryExcErr), (2, WcStatus::WrFlushErr)]
    );
    assert_eq!(pair.b.engine.counters().naks_sent.rnr, 3);
    assert_eq!(pair.a.state(), QpState::Err);
}

#[test]
fn retry_exhaustion_fails_the_first_and_flushes_the_rest_in_order() {
    let mut pair = Pair::new(
        common::QP_RC,
        Params {
            retry_cnt: 2,
            timeout: 10,
            ..Params::default()
        },
    );
    pair.filter = Box::new(|dir, _, _| dir != Dir::AtoB);
    pair.b.post_recv(1, 0, 64);
    for i in 1..=3 {
        pair.a
            .post_send(send_wr(i, SendOp::Send, vec![pair.a.sge(0, 8)]));
    }
    pair.a.post_recv(50, 0, 8);
    pair.run();
    let wcs = pair.a.poll();
    let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        got,
        [
            (1, WcStatus::RetryExcErr),
            (2, WcStatus::WrFlushErr),
            (3, WcStatus::WrFlushErr),
            (50, WcStatus::WrFlushErr)
        ]
    );
    assert_eq!(wcs[3].opcode, WcOpcode::Recv);
    assert_eq!(pair.a.state(), QpState::Err);
    // Initial send plus two retries, each after 4.096 µs × 2^10.
    assert_eq!(pair.a.engine.counters().timeouts, 3);
    assert_eq!(pair.now.as_nanos(), 3 * (4096 << 10));
    // Work posted in ERR completes at once with a flush.
    pair.a.post_send(send_wr(9, SendOp::Send, vec![]));
    assert_eq!(pair.a.poll()[0].status, WcStatus::WrFlushErr);
}

#[test]
fn remote_access_violation_leaves_responder_memory_untouched() {
    let mut pair = Pair::rc();
    pair.a.write(0, &[0xaa; 128]);
    let bad = [
        // Wrong key byte.
        SendOp::RdmaWrite {
            remote_addr: pair.b.mr.addr,
            rkey: Rkey(pair.b.mr.rkey.0 ^ 1),
        },
        // Past the end of the region.
        SendOp::RdmaWrite {
            remote_addr: pair.b.mr.addr + MR_LEN - 64,
            rkey: pair.b.mr.rkey,
        },
    ];
    for op in bad {
        let mut p = Pair::rc();
        p.a.write(0, &[0xaa; 128]);
        let op = match op {
            SendOp::RdmaWrite { remote_addr, rkey } => SendOp::RdmaWrite {
                remote_addr: remote_addr - pair.b.mr.addr + p.b.mr.addr,
                rkey: Rkey(rkey.0 ^ pair.b.mr.rkey.0 ^ p.b.mr.rkey.0),
            },
            other => other,
        };
        p.a.post_send(send_wr(1, op, vec![p.a.sge(0, 128)]));
        p.a.post_send(send_wr(2, SendOp::Send, vec![p.a.sge(0, 8)]));
        p.run();
        let got: Vec<_> = p.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
        assert_eq!(
            got,
            [(1, WcStatus::RemAccessErr), (2, WcStatus::WrFlushErr)]
        );
        assert_eq!(p.b.engine.counters().naks_sent.remote_access, 1);
        assert_eq!(p.a.engine.counters().naks_received.remote_access, 1);
        assert!(p.b.read(0, MR_LEN as usize).iter().all(|&b| b == 0));
        assert_eq!(
            p.b.state(),
            QpState::Err,
            "a class C error moves the responder to ERR"
        );
    }
}

#[test]
fn read_without_remote_read_access_is_an_invalid_request() {
    let params = Params {
        qp_access: ferroce_transport::engine::AccessFlags::REMOTE_WRITE,
        ..Params::default()
    };
    let mut pair = Pair::new(common::QP_RC, params);
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 64)]));
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemInvReqErr);
    assert_eq!(pair.b.engine.counters().naks_sent.invalid_request, 1);
}

#[test]
fn bad_receive_buffer_is_a_remote_operational_error() {
    let mut pair = Pair::rc();
    let mut sge = pair.b.sge(0, 64);
    sge.lkey.0 ^= 0x80;
    pair.b
        .engine
        .post_recv(
            NS,
            pair.b.qpn,
            ferroce_transport::engine::RecvWr {
                wr_id: 3,
                sg_list: vec![sge].into(),
            },
        )
        .unwrap();
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemOpErr);
    assert_eq!(pair.b.poll()[0].status, WcStatus::LocProtErr);
    assert_eq!(pair.b.engine.counters().naks_sent.remote_operational, 1);
}

#[test]
fn message_longer_than_the_receive_buffer() {
    let mut pair = Pair::rc();
    pair.b.post_recv(3, 0, 16);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 17)]));
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemInvReqErr);
    let wc = pair.b.poll().remove(0);
    assert_eq!((wc.wr_id, wc.status), (3, WcStatus::LocLenErr));
}

#[test]
fn local_protection_error_on_a_bad_gather_key() {
    let mut pair = Pair::rc();
    let mut sge = pair.a.sge(0, 8);
    sge.lkey.0 = sge.lkey.0.wrapping_add(1 << 8);
    pair.a.post_send(send_wr(1, SendOp::Send, vec![sge]));
    pair.a
        .post_send(send_wr(2, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(1, WcStatus::LocProtErr), (2, WcStatus::WrFlushErr)]);
    assert_eq!(pair.count(Dir::AtoB, |_| true), 0);
}

#[test]
fn duplicate_read_is_replayed_from_the_resource_ring() {
    let mut pair = Pair::rc();
    let data = pattern(3000, 5);
    pair.b.write(0, &data);
    // Lose the READ response Middle once: the requester re-reads from that PSN.
    pair.drop_once(Dir::BtoA, |r| r.bth.opcode == OpCode::RcReadResponseMiddle);
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 3000)]));
    pair.run();
    assert_eq!(pair.a.read(0, 3000), data);
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
    assert_eq!(pair.b.engine.counters().duplicates, 1);
    // The second request asks for the rest only: from PSN 0x101, 2000 bytes.
    let requests: Vec<_> = pair
        .log
        .iter()
        .filter(|(d, r, _)| *d == Dir::AtoB && r.bth.opcode == OpCode::RcReadRequest)
        .map(|(_, r, _)| (r.bth.psn.value(), r.reth.map(|h| h.dma_length)))
        .collect();
    assert_eq!(requests, [(0x100, Some(3000)), (0x101, Some(1976))]);
}

#[test]
fn duplicate_atomic_resends_the_saved_result_and_never_reexecutes() {
    let mut pair = Pair::rc();
    pair.b.write(8, &10u64.to_ne_bytes());
    pair.drop_once(Dir::BtoA, |r| r.bth.opcode == OpCode::RcAtomicAcknowledge);
    let op = SendOp::FetchAdd {
        remote_addr: pair.b.mr.addr + 8,
        rkey: pair.b.mr.rkey,
        add: 3,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.b.read(8, 8), 13u64.to_ne_bytes(), "added exactly once");
    assert_eq!(pair.a.read(0, 8), 10u64.to_ne_bytes(), "the original value");
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
    assert_eq!(pair.b.engine.counters().duplicates, 1);
    assert_eq!(
        pair.count(Dir::AtoB, |r| r.bth.opcode == OpCode::RcFetchAdd),
        2
    );
}

#[test]
fn max_rd_atomic_limits_outstanding_reads() {
    let mut pair = Pair::new(
        common::QP_RC,
        Params {
            max_rd_atomic: 1,
            ..Params::default()
        },
    );
    pair.b.write(0, &pattern(64, 2));
    // Hold every response back until three requests could have gone out.
    for i in 0..3 {
        let op = SendOp::RdmaRead {
            remote_addr: pair.b.mr.addr,
            rkey: pair.b.mr.rkey,
        };
        pair.a
            .post_send(send_wr(i, op, vec![pair.a.sge(i * 64, 64)]));
    }
    let first = pair.a.engine.poll_transmit(pair.now).unwrap();
    assert!(
        pair.a.engine.poll_transmit(pair.now).is_none(),
        "a second READ waited"
    );
    pair.b
        .engine
        .handle_datagram(pair.now, first.meta, &first.payload);
    pair.run();
    assert_eq!(pair.a.poll().len(), 3);
    assert_eq!(pair.a.read(128, 64), pattern(64, 2));
}

#[test]
fn fence_waits_for_earlier_reads() {
    let mut pair = Pair::rc();
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 64)]));
    let mut fenced = send_wr(
        2,
        SendOp::RdmaWrite {
            remote_addr: pair.b.mr.addr + 64,
            rkey: pair.b.mr.rkey,
        },
        vec![pair.a.sge(0, 8)],
    );
    fenced.fence = true;
    pair.a.post_send(fenced);
    assert!(pair.a.engine.poll_transmit(pair.now).is_some());
    assert!(
        pair.a.engine.poll_transmit(pair.now).is_none(),
        "fenced WRITE waits"
    );
    // Without a fence, a WRITE goes right behind the READ.
    let mut p2 = Pair::rc();
    let op = SendOp::RdmaRead {
        remote_addr: p2.b.mr.addr,
        rkey: p2.b.mr.rkey,
    };
    p2.a.post_send(send_wr(1, op, vec![p2.a.sge(0, 64)]));
    p2.a.post_send(send_wr(
        2,
        SendOp::RdmaWrite {
            remote_addr: p2.b.mr.addr + 64,
            rkey: p2.b.mr.rkey,
        },
        vec![p2.a.sge(0, 8)],
    ));
    assert!(p2.a.engine.poll_transmit(p2.now).is_some());
    assert!(p2.a.engine.poll_transmit(p2.now).is_some());
    pair.run();
    assert_eq!(pair.a.poll().len(), 2);
}

#[test]
fn send_with_invalidate_of_a_user_region_fails_as_in_rxe() {
    // rxe invalidates only fast-registered regions and memory windows; a user region
    // refuses (class J): the receive fails with REM_INV_REQ_ERR and the responder's QP
    // goes to ERR, while the requester gets a plain ACK and sees success.
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 64);
    let target = pair.b.mr.rkey;
    pair.a.write(0, b"payload!");
    pair.a.post_send(send_wr(
        1,
        SendOp::SendWithInv(target),
        vec![pair.a.sge(0, 8)],
    ));
    pair.run();
    let wc = pair.b.poll().remove(0);
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RemInvReqErr));
    assert_eq!(wc.invalidated_rkey, None);
    assert_eq!(pair.b.state(), QpState::Err);
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
    assert_eq!(
        pair.count(Dir::BtoA, |r| r.aeth.is_some_and(|a| !a.syndrome.is_ack())),
        0
    );
    // The region was not touched: a new connection WRITEs with the same rkey.
    reconnect(&mut pair);
    pair.a.post_send(send_wr(
        2,
        SendOp::RdmaWrite {
            remote_addr: pair.b.mr.addr + 100,
            rkey: target,
        },
        vec![pair.a.sge(0, 8)],
    ));
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| w.status).collect();
    assert_eq!(got, [WcStatus::Success]);
    assert_eq!(pair.b.read(100, 8), b"payload!");
}

#[test]
fn a_region_without_remote_access_is_out_of_a_peers_reach() {
    let mut pair = Pair::rc();
    let local = pair
        .b
        .engine
        .reg_mr(NS, pair.b.pd, 4096, AccessFlags::LOCAL_WRITE)
        .unwrap();
    assert_eq!(local.rkey, Rkey(0), "rxe gives a local-only region no rkey");
    // The peer guesses the lkey (the rkey every region had before) and invalidates it.
    pair.b.post_recv(1, 0, 64);
    pair.a.post_send(send_wr(
        1,
        SendOp::SendWithInv(Rkey(local.lkey.0)),
        vec![pair.a.sge(0, 8)],
    ));
    pair.run();
    assert_eq!(pair.b.poll()[0].status, WcStatus::RemInvReqErr);
    // B's own use of the region by lkey still works on a fresh connection.
    reconnect(&mut pair);
    pair.b
        .engine
        .mr_write(NS, local.lkey, local.addr, b"mine")
        .unwrap();
    pair.a.post_recv(7, 0, 64);
    let sge = Sge {
        addr: local.addr,
        length: 4,
        lkey: local.lkey,
    };
    pair.b.post_send(send_wr(2, SendOp::Send, vec![sge]));
    pair.run();
    let sent: Vec<_> = pair.b.poll().iter().map(|w| w.status).collect();
    assert_eq!(sent, [WcStatus::Success]);
    assert_eq!(pair.a.read(0, 4), b"mine");
}

#[test]
fn local_invalidate_of_a_user_region_is_a_local_qp_operation_error() {
    // rxe_do_local_ops: LOC_QP_OP_ERR, the QP goes to ERR, what follows is flushed.
    let mut p = Pair::rc();
    let own = p.a.mr.rkey;
    p.a.post_send(send_wr(1, SendOp::LocalInv(own), vec![]));
    p.a.post_send(send_wr(2, SendOp::Send, vec![p.a.sge(0, 8)]));
    p.b.post_recv(1, 0, 64);
    p.run();
    let got: Vec<_> =
        p.a.poll()
            .iter()
            .map(|w| (w.wr_id, w.status, w.opcode))
            .collect();
    assert_eq!(
        got,
        [
            (1, WcStatus::LocQpOpErr, WcOpcode::LocalInv),
            (2, WcStatus::WrFlushErr, WcOpcode::Send),
        ]
    );
    assert_eq!(p.a.state(), QpState::Err);
    // The region itself is as it was.
    p.a.write(0, b"still");
    assert_eq!(p.a.read(0, 5), b"still");
}

#[test]
fn engine_debug_shows_no_region_or_packet_bytes() {
    let mut pair = Pair::rc();
    let big = pair
        .a
        .engine
        .reg_mr(NS, pair.a.pd, 4 << 20, AccessFlags::LOCAL_WRITE)
        .unwrap();
    pair.a
        .engine
        .mr_write(NS, big.lkey, big.addr, b"secret")
        .unwrap();
    pair.b.post_recv(1, 0, 4096);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 4000)]));
    let d = pair.a.engine.poll_transmit(pair.now).unwrap();
    pair.a.engine.recycle(d.payload);
    let text = format!("{:?}", pair.a.engine);
    // 4 MiB of region and a 4 KiB packet, printed as bytes, would be megabytes.
    assert!(text.len() < 16 * 1024, "{} bytes of Debug", text.len());
}

/// Both QPs back to RESET and connected again (after one went to ERR).
fn reconnect(pair: &mut Pair) {
    for side in [&mut pair.a, &mut pair.b] {
        let reset = QpAttr {
            state: Some(QpState::Reset),
            ..QpAttr::default()
        };
        side.engine.modify_qp(NS, side.qpn, &reset).unwrap();
        side.poll();
    }
    let p = Params::default();
    let (a, b) = (&mut pair.a, &mut pair.b);
    connect(&mut a.engine, NS, a.qpn, b.addr, b.qpn, QP_RC, &p);
    connect(&mut b.engine, NS, b.qpn, a.addr, a.qpn, QP_RC, &p);
}

#[test]
fn packets_from_the_wrong_address_or_with_a_bad_icrc_are_dropped() {
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 64);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    let d = pair.a.engine.poll_transmit(pair.now).unwrap();
    // A third host that knows B's QPN: a well-formed packet from the wrong address.
    let mut c = Side::new("10.0.0.9".parse().unwrap(), 3, QP_RC, all_access());
    connect(
        &mut c.engine,
        NS,
        c.qpn,
        pair.b.addr,
        pair.b.qpn,
        QP_RC,
        &Params::default(),
    );
    c.post_send(send_wr(1, SendOp::Send, vec![c.sge(0, 8)]));
    let forged = c.engine.poll_transmit(pair.now).unwrap();
    pair.b
        .engine
        .handle_datagram(pair.now, forged.meta, &forged.payload);
    assert_eq!(pair.b.engine.counters().drops.address_mismatch, 1);
    // The same bytes claiming another source fail the ICRC, which covers addresses.
    let mut wrong = d.meta;
    wrong.src = "10.0.0.9".parse().unwrap();
    pair.b.engine.handle_datagram(pair.now, wrong, &d.payload);
    assert_eq!(pair.b.engine.counters().icrc_errors, 1);
    let mut corrupt = d.payload.clone();
    corrupt[14] ^= 1;
    pair.b.engine.handle_datagram(pair.now, d.meta, &corrupt);
    assert_eq!(pair.b.engine.counters().icrc_errors, 2);
    pair.b
        .engine
        .handle_datagram(pair.now, d.meta, &d.payload[..10]);
    assert_eq!(pair.b.engine.counters().drops.malformed, 1);
    assert!(pair.b.poll().is_empty());
    pair.b.engine.handle_datagram(pair.now, d.meta, &d.payload);
    assert_eq!(pair.b.poll().len(), 1);
}

#[test]
fn outgoing_datagrams_look_like_rxe() {
    let mut pair = Pair::rc();
    pair.a.post_send(send_wr(1, SendOp::Send, vec![]));
    let d = pair.a.engine.poll_transmit(pair.now).unwrap();
    let port = ferroce_transport::engine::qp::connected_udp_source_port(pair.a.qpn, pair.b.qpn);
    assert_eq!(d.meta.src_port, port);
    assert_eq!(port & 0xc000, 0xc000);
    // As rxe: MigReq clear, default P_Key.
    let parsed = ferroce_transport::wire::packet::parse(&d.payload).unwrap();
    assert!(!parsed.repr.bth.migreq);
    assert_eq!(parsed.repr.bth.pkey, 0xffff);
    assert_eq!(d.meta.src, pair.a.addr);
    assert_eq!(d.meta.dst, pair.b.addr);
    let env = ferroce_transport::wire::icrc::Envelope::ipv4(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        0,
        port,
    );
    assert_eq!(
        ferroce_transport::wire::icrc::verify(&env, &d.payload),
        Ok(true)
    );
}

#[test]
fn fixed_source_port_is_covered_by_the_icrc() {
    use ferroce_transport::engine::{EngineConfig, SourcePortPolicy};
    let config = EngineConfig {
        udp_src_port: SourcePortPolicy::Fixed(4791),
        ..EngineConfig::default()
    };
    let mut a = Side::with_config(config, "10.0.0.1".parse().unwrap(), 1, QP_RC, all_access());
    let mut b = Side::new("10.0.0.2".parse().unwrap(), 2, QP_RC, all_access());
    connect(
        &mut a.engine,
        NS,
        a.qpn,
        b.addr,
        b.qpn,
        QP_RC,
        &Params::default(),
    );
    connect(
        &mut b.engine,
        NS,
        b.qpn,
        a.addr,
        a.qpn,
        QP_RC,
        &Params::default(),
    );
    b.post_recv(1, 0, 64);
    a.post_send(send_wr(1, SendOp::Send, vec![a.sge(0, 8)]));
    let d = a
        .engine
        .poll_transmit(ferroce_transport::engine::Time::ZERO)
        .unwrap();
    assert_eq!(d.meta.src_port, 4791);
    b.engine
        .handle_datagram(ferroce_transport::engine::Time::ZERO, d.meta, &d.payload);
    assert_eq!(b.poll().len(), 1);
}

#[test]
fn same_seed_same_inputs_same_outputs() {
    let run = || {
        let mut pair = Pair::rc();
        let mut n = 0u32;
        pair.filter = Box::new(move |_, _, _| {
            n += 1;
            n % 7 != 0
        });
        pair.b.post_recv(1, 0, 8192);
        pair.a
            .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8000)]));
        let op = SendOp::RdmaRead {
            remote_addr: pair.b.mr.addr,
            rkey: pair.b.mr.rkey,
        };
        pair.a.post_send(send_wr(2, op, vec![pair.a.sge(0, 5000)]));
        pair.run();
        (
            pair.log.clone(),
            pair.now,
            *pair.a.engine.counters(),
            pair.a.mr.rkey,
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn deregistering_a_region_mid_read_fails_cleanly() {
    let mut pair = Pair::rc();
    pair.b.write(0, &pattern(3000, 1));
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 3000)]));
    // The request reaches B and B sends its first response...
    pair.pass(Dir::AtoB);
    pair.pass(Dir::BtoA);
    // ...then the region goes away: the rest cannot be read.
    pair.b.engine.dereg_mr(NS, pair.b.mr.lkey).unwrap();
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemAccessErr);
    assert_eq!(pair.b.engine.counters().naks_sent.remote_access, 1);
}

#[test]
fn a_region_of_another_pd_is_refused() {
    let mut pair = Pair::rc();
    let other_pd = pair.b.engine.alloc_pd(NS).unwrap();
    let other = pair
        .b
        .engine
        .reg_mr(NS, other_pd, 4096, all_access())
        .unwrap();
    let op = SendOp::RdmaWrite {
        remote_addr: other.addr,
        rkey: other.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemAccessErr);
    let mut buf = [1u8; 8];
    pair.b
        .engine
        .mr_read(NS, other.lkey, other.addr, &mut buf)
        .unwrap();
    assert_eq!(buf, [0; 8]);
}

#[test]
fn cnp_is_recognised() {
    use ferroce_transport::wire::{bth, cnp, icrc, packet};
    let mut pair = Pair::rc();
    let mut repr = packet::Repr::new(bth::Repr {
        opcode: OpCode::Cnp,
        solicited: false,
        migreq: false,
        pad_count: 0,
        pkey: 0xffff,
        fecn: false,
        becn: true,
        dest_qp: pair.b.qpn,
        ack_req: false,
        psn: Psn::new(0),
    });
    repr.bth.becn = true;
    let env = icrc::Envelope::ipv4(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        0,
        0xc000,
    );
    let mut buf = vec![0u8; packet::buffer_len(&repr, 0).unwrap()];
    packet::build(&repr, &[], &env, &mut buf).unwrap();
    assert_eq!(buf.len(), 12 + cnp::HEADER_LEN + 4);
    // Any datagram from A to B gives the addresses (the CNP used port 0xc000).
    pair.a.post_send(send_wr(1, SendOp::Send, vec![]));
    let mut meta = pair.a.engine.poll_transmit(pair.now).unwrap().meta;
    meta.src_port = 0xc000;
    pair.b.engine.handle_datagram(pair.now, meta, &buf);
    assert_eq!(pair.b.engine.counters().cnps_received, 1);
    assert_eq!(pair.b.engine.counters().drops, Default::default());
}

#[test]
fn send_queue_drained_state_starts_no_new_work() {
    let mut pair = Pair::rc();
    pair.b.post_recv(1, 0, 64);
    pair.b.post_recv(2, 64, 64);
    let sqd = ferroce_transport::engine::QpAttr {
        state: Some(QpState::Sqd),
        ..Default::default()
    };
    pair.a.engine.modify_qp(NS, pair.a.qpn, &sqd).unwrap();
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.count(Dir::AtoB, |_| true), 0);
    let rts = ferroce_transport::engine::QpAttr {
        state: Some(QpState::Rts),
        ..Default::default()
    };
    pair.a.engine.modify_qp(NS, pair.a.qpn, &rts).unwrap();
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
}

#[test]
fn rnr_storm_every_message_arrives_in_order() {
    let mut pair = Pair::rc();
    for i in 0..50u64 {
        pair.a.write(i * 8, &i.to_ne_bytes());
        pair.a
            .post_send(send_wr(i, SendOp::Send, vec![pair.a.sge(i * 8, 8)]));
    }
    // Receives trickle in one at a time, long after the sends were posted.
    for i in 0..50u64 {
        pair.run_for(Duration::from_micros(25));
        pair.b.post_recv(i, 1024 + i * 8, 8);
    }
    pair.run();
    let recv = pair.b.poll();
    assert_eq!(recv.len(), 50);
    for (i, wc) in recv.iter().enumerate() {
        assert_eq!((wc.wr_id, wc.status), (i as u64, WcStatus::Success));
        assert_eq!(
            pair.b.read(1024 + i as u64 * 8, 8),
            (i as u64).to_ne_bytes()
        );
    }
    assert_eq!(pair.a.poll().len(), 50);
    assert!(
        pair.b.engine.counters().naks_sent.rnr >= 50,
        "{:?}",
        pair.b.engine.counters().naks_sent
    );
}

#[test]
fn a_duplicated_rnr_nak_spends_one_retry() {
    let mut pair = Pair::new(
        QP_RC,
        Params {
            rnr_retry: 1,
            ..Params::default()
        },
    );
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.pass(Dir::AtoB);
    let nak = pair.pass(Dir::BtoA);
    pair.a
        .engine
        .handle_datagram(pair.now, nak.meta, &nak.payload);
    assert_eq!(pair.a.engine.counters().naks_received.rnr, 1);
    assert_eq!(pair.a.engine.counters().drops.duplicate_response, 1);
    pair.b.post_recv(1, 0, 64);
    pair.run();
    assert_eq!(pair.a.poll()[0].status, WcStatus::Success);
}

#[test]
fn rc_over_ipv6() {
    let mut pair = Pair::between(
        "fd00::1".parse().unwrap(),
        "fd00::2".parse().unwrap(),
        QP_RC,
        Params::default(),
    );
    let data = pattern(2500, 6);
    pair.a.write(0, &data);
    pair.b.post_recv(1, 0, 4096);
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 2500)]));
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a
        .post_send(send_wr(2, op, vec![pair.a.sge(4096, 2500)]));
    pair.run();
    assert_eq!(pair.b.read(0, 2500), data);
    assert_eq!(pair.a.read(4096, 2500), data);
    assert_eq!(pair.a.poll().len(), 2);
    assert_eq!(pair.b.engine.counters().icrc_errors, 0);
}

#[test]
fn completion_events_fire_once_when_armed() {
    let mut pair = Pair::rc();
    let cq = pair.b.cq;
    for i in 0..3 {
        pair.b.post_recv(i, i * 64, 64);
    }
    // Armed for solicited only: an unsolicited SEND raises nothing.
    pair.b.engine.req_notify_cq(NS, cq, true).unwrap();
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.b.engine.poll_completion_event(NS), None);
    let mut solicited = send_wr(2, SendOp::Send, vec![pair.a.sge(0, 8)]);
    solicited.solicited = true;
    pair.a.post_send(solicited);
    pair.run();
    assert_eq!(pair.b.engine.poll_completion_event(NS), Some(cq));
    // One event per arming.
    let mut again = send_wr(3, SendOp::Send, vec![pair.a.sge(0, 8)]);
    again.solicited = true;
    pair.a.post_send(again);
    pair.run();
    assert_eq!(pair.b.engine.poll_completion_event(NS), None);
    assert_eq!(pair.b.poll().len(), 3);
    // Armed for any completion: the sender's own CQ gets an event for a send.
    pair.a.engine.req_notify_cq(NS, pair.a.cq, false).unwrap();
    let op = SendOp::RdmaWrite {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a.post_send(send_wr(4, op, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.a.engine.poll_completion_event(NS), Some(pair.a.cq));
}

#[test]
fn caller_backed_memory_sits_behind_the_same_checks() {
    use ferroce_transport::engine::MemoryBacking;
    #[derive(Debug)]
    struct Page(Box<[u8; 256]>);
    impl MemoryBacking for Page {
        fn bytes(&self) -> &[u8] {
            &self.0[..]
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0[..]
        }
    }
    let mut pair = Pair::rc();
    let page = Box::new(Page(Box::new([7u8; 256])));
    let mr = pair
        .b
        .engine
        .reg_mr_backed(NS, pair.b.pd, page, all_access())
        .unwrap();
    assert_eq!(mr.length, 256);
    pair.a.write(0, b"backed");
    let op = SendOp::RdmaWrite {
        remote_addr: mr.addr + 10,
        rkey: mr.rkey,
    };
    pair.a.post_send(send_wr(1, op, vec![pair.a.sge(0, 6)]));
    // One byte past the end is refused.
    let op = SendOp::RdmaWrite {
        remote_addr: mr.addr + 251,
        rkey: mr.rkey,
    };
    pair.a.post_send(send_wr(2, op, vec![pair.a.sge(0, 6)]));
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| w.status).collect();
    assert_eq!(got, [WcStatus::Success, WcStatus::RemAccessErr]);
    let mut buf = [0u8; 8];
    pair.b
        .engine
        .mr_read(NS, mr.lkey, mr.addr + 9, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"\x07backed\x07");
}

#[test]
fn psns_wrap_at_24_bits() {
    let params = Params {
        start_psn: 0xff_fffe,
        mtu: ferroce_transport::engine::PathMtu::Mtu256,
        ..Params::default()
    };
    let mut pair = Pair::new(QP_RC, params);
    let data = pattern(2000, 12);
    pair.a.write(0, &data);
    pair.b.write(8192, &data);
    pair.b.post_recv(1, 0, 4096);
    // Lose one packet past the wrap so go-back-N works across it too.
    pair.drop_once(Dir::AtoB, |r| r.bth.psn == Psn::new(2));
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 2000)]));
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr + 8192,
        rkey: pair.b.mr.rkey,
    };
    pair.a
        .post_send(send_wr(2, op, vec![pair.a.sge(4096, 2000)]));
    pair.run();
    assert_eq!(pair.b.read(0, 2000), data);
    assert_eq!(pair.a.read(4096, 2000), data);
    let got: Vec<_> = pair.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    let psns: Vec<u32> = pair
        .log
        .iter()
        .filter(|(d, _, _)| *d == Dir::AtoB)
        .map(|(_, r, _)| r.bth.psn.value())
        .collect();
    assert_eq!(&psns[..4], &[0xff_fffe, 0xff_ffff, 0, 1]);
    assert_eq!(pair.a.engine.counters().naks_received.psn_sequence, 1);
}

/// Moves every datagram A has to send over to B.
fn a_to_b(pair: &mut Pair) {
    while let Some(d) = pair.a.engine.poll_transmit(pair.now) {
        pair.b.engine.handle_datagram(pair.now, d.meta, &d.payload);
    }
}

/// Takes up to `n` datagrams from B; returns them with their (PSN offset, opcode).
fn take_from_b(
    pair: &mut Pair,
    n: usize,
) -> Vec<(ferroce_transport::engine::Datagram, (u32, OpCode))> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(d) = pair.b.engine.poll_transmit(pair.now) else {
            break;
        };
        let repr = ferroce_transport::wire::packet::parse(&d.payload)
            .unwrap()
            .repr;
        let key = (repr.bth.psn.value() - 0x100, repr.bth.opcode);
        out.push((d, key));
    }
    out
}

fn deliver_to_a(pair: &mut Pair, datagrams: Vec<ferroce_transport::engine::Datagram>) {
    for d in datagrams {
        pair.a.engine.handle_datagram(pair.now, d.meta, &d.payload);
    }
}

#[test]
fn duplicate_read_restarts_the_stream_in_progress() {
    use OpCode::*;
    let mut pair = Pair::rc();
    let data = pattern(8 * 1024, 3);
    pair.b.write(0, &data);
    pair.b.write(16_000, &5u64.to_ne_bytes());
    let op = SendOp::RdmaRead {
        remote_addr: pair.b.mr.addr,
        rkey: pair.b.mr.rkey,
    };
    pair.a
        .post_send(send_wr(1, op, vec![pair.a.sge(0, 8 * 1024)]));
    let add = SendOp::FetchAdd {
        remote_addr: pair.b.mr.addr + 16_000,
        rkey: pair.b.mr.rkey,
        add: 1,
    };
    pair.a
        .post_send(send_wr(2, add, vec![pair.a.sge(16_000, 8)]));
    a_to_b(&mut pair);
    // B has sent PSNs 0..=3 of the READ (8 packets, PSN 0..=7) when PSN 1 is lost.
    let mut sent = take_from_b(&mut pair, 4);
    sent.remove(1);
    deliver_to_a(&mut pair, sent.into_iter().map(|(d, _)| d).collect());
    // A asks again from PSN 1, then the fetch-add again (go-back-N).
    a_to_b(&mut pair);
    let rest: Vec<_> = take_from_b(&mut pair, 100)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    let mut expected = vec![(1, RcReadResponseFirst)];
    expected.extend((2..7).map(|p| (p, RcReadResponseMiddle)));
    expected.extend([(7, RcReadResponseLast), (8, RcAtomicAcknowledge)]);
    // The duplicate fetch-add finds its answer still queued: no second one.
    assert_eq!(
        rest, expected,
        "one stream, restarted at PSN 1, then the atomic"
    );
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    assert_eq!(pair.a.read(0, data.len()), data);
    assert_eq!(pair.b.read(16_000, 8), 6u64.to_ne_bytes(), "added once");
}

#[test]
fn duplicate_of_a_finished_read_keeps_responses_in_order() {
    use OpCode::*;
    let mut pair = Pair::rc();
    let data = pattern(10 * 1024, 9);
    pair.b.write(0, &data);
    // READ 1 is PSN 0..=1, READ 2 is PSN 2..=9.
    for (wr_id, offset, len) in [(1u64, 0u64, 2048u32), (2, 2048, 8 * 1024)] {
        let op = SendOp::RdmaRead {
            remote_addr: pair.b.mr.addr + offset,
            rkey: pair.b.mr.rkey,
        };
        pair.a
            .post_send(send_wr(wr_id, op, vec![pair.a.sge(offset, len)]));
    }
    a_to_b(&mut pair);
    // READ 1's last packet (PSN 1) is lost; READ 2 is under way (PSN 2..=4 sent).
    let mut sent = take_from_b(&mut pair, 5);
    sent.remove(1);
    deliver_to_a(&mut pair, sent.into_iter().map(|(d, _)| d).collect());
    // READ 2's responses cannot complete READ 1, and show its last response lost: A
    // asks for PSN 1 again and READ 2 from its start (go-back-N) without waiting for
    // its retransmit timer, and only once for the three of them.
    a_to_b(&mut pair);
    let rest: Vec<_> = take_from_b(&mut pair, 100)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    // READ 2's old stream is dropped; READ 1's replay comes before READ 2's.
    let mut expected = vec![(1, RcReadResponseOnly), (2, RcReadResponseFirst)];
    expected.extend((3..9).map(|p| (p, RcReadResponseMiddle)));
    expected.push((9, RcReadResponseLast));
    assert_eq!(rest, expected);
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    assert_eq!(pair.a.read(0, data.len()), data);
}

#[test]
fn unacknowledged_psns_are_capped_and_a_loss_halves_the_cap_down_to_rxes() {
    let mut pair = Pair::new(
        QpType::Rc,
        Params {
            mtu: PathMtu::Mtu256,
            ..Params::default()
        },
    );
    // Two WRITEs of 256 and 44 packets: more than the window of 256 PSNs.
    let data = pattern(MR_LEN as usize, 5);
    pair.a.write(0, &data);
    let (remote_addr, rkey) = (pair.b.mr.addr, pair.b.mr.rkey);
    for (wr_id, len) in [(1, 256 * 256), (2, 44 * 256)] {
        pair.a.post_send(send_wr(
            wr_id,
            SendOp::RdmaWrite { remote_addr, rkey },
            vec![pair.a.sge(0, len)],
        ));
    }
    let sent_before_an_ack = |pair: &mut Pair| {
        let mut n = 0;
        while pair.a.engine.poll_transmit(pair.now).is_some() {
            n += 1;
        }
        n
    };
    // Everything sent is lost; the retransmit timer rewinds, and the window is:
    let after_a_loss = |pair: &mut Pair| {
        pair.now = pair.a.engine.poll_timeout().expect("retransmit timer");
        pair.a.engine.handle_timeout(pair.now);
        sent_before_an_ack(pair)
    };
    assert_eq!(sent_before_an_ack(&mut pair), 256, "nothing lost yet");
    assert_eq!(after_a_loss(&mut pair), 128, "halved");
    assert_eq!(after_a_loss(&mut pair), 128, "at its floor, rxe's 128");
    // Then nothing is lost, and both WRITEs land.
    pair.run();
    assert_eq!(pair.b.read(0, MR_LEN as usize), data);
    let statuses: Vec<_> = pair
        .a
        .poll()
        .iter()
        .map(|wc| (wc.wr_id, wc.status))
        .collect();
    assert_eq!(statuses, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    assert_eq!(pair.a.engine.counters().timeouts, 3);
}

#[test]
fn reads_beyond_the_responder_resources_are_an_invalid_request() {
    // A requester allowed 4 outstanding READs against a responder that granted 2 (the
    // application broke the rule max_rd_atomic <= peer's max_dest_rd_atomic).
    let mut pair = Pair::rc();
    let granted = Params {
        max_rd_atomic: 2,
        ..Params::default()
    };
    let b = &mut pair.b;
    let reset = QpAttr {
        state: Some(QpState::Reset),
        ..QpAttr::default()
    };
    b.engine.modify_qp(NS, b.qpn, &reset).unwrap();
    connect(
        &mut b.engine,
        NS,
        b.qpn,
        pair.a.addr,
        pair.a.qpn,
        QP_RC,
        &granted,
    );
    for i in 0..3 {
        let op = SendOp::RdmaRead {
            remote_addr: pair.b.mr.addr,
            rkey: pair.b.mr.rkey,
        };
        pair.a
            .post_send(send_wr(i, op, vec![pair.a.sge(i * 4096, 4096)]));
    }
    // All three arrive before B sends anything: the third is one too many.
    a_to_b(&mut pair);
    assert_eq!(pair.b.engine.counters().naks_sent.invalid_request, 1);
    assert_eq!(pair.b.state(), QpState::Err);
    pair.run();
    let got: Vec<_> = pair.a.poll().iter().map(|w| w.status).collect();
    assert!(got.contains(&WcStatus::RemInvReqErr), "{got:?}");
}

/// Memory whose iova is the top of the address space.
#[derive(Debug)]
struct AtTheTop(Vec<u8>);

impl ferroce_transport::engine::MemoryBacking for AtTheTop {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn address(&self) -> Option<u64> {
        Some(u64::MAX - (self.0.len() as u64 - 1))
    }
}

#[test]
fn an_sge_running_past_the_top_of_the_address_space_fails_cleanly() {
    let mut pair = Pair::rc();
    let b = &mut pair.b;
    let top = b
        .engine
        .reg_mr_backed(
            NS,
            b.pd,
            Box::new(AtTheTop(vec![0; 4096])),
            AccessFlags::LOCAL_WRITE,
        )
        .unwrap();
    // The SGE claims 8 KiB from 4 KiB below 2^64: the fifth 1 KiB packet lands past it.
    let sge = Sge {
        addr: top.addr,
        length: 8192,
        lkey: top.lkey,
    };
    b.engine
        .post_recv(
            NS,
            b.qpn,
            ferroce_transport::engine::RecvWr {
                wr_id: 9,
                sg_list: vec![sge].into(),
            },
        )
        .unwrap();
    pair.a.write(0, &pattern(5000, 4));
    pair.a
        .post_send(send_wr(1, SendOp::Send, vec![pair.a.sge(0, 5000)]));
    pair.run();
    let got: Vec<_> = pair.b.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(9, WcStatus::LocProtErr)]);
    assert_eq!(pair.a.poll()[0].status, WcStatus::RemOpErr);
    let mut first = vec![0; 4096];
    pair.b
        .engine
        .mr_read(NS, top.lkey, top.addr, &mut first)
        .unwrap();
    assert_eq!(first, pattern(5000, 4)[..4096]);
}

#[test]
fn a_receive_lost_to_a_full_cq_moves_the_qp_to_error() {
    // rxe's class G: the CQ does not grow; the responder's QP goes to ERR and leaves the
    // request unacknowledged, so the requester runs out of retries.
    let params = Params {
        retry_cnt: 2,
        ..Params::default()
    };
    let mut pair = Pair::new(QP_RC, params);
    let depth = 256; // `Side`'s CQ
    for i in 0..depth {
        pair.b.post_recv(i, 0, 64);
    }
    for i in 0..depth {
        pair.a
            .post_send(send_wr(i, SendOp::Send, vec![pair.a.sge(0, 8)]));
        if i % 64 == 63 {
            pair.run();
            pair.a.poll();
        }
    }
    assert_eq!(pair.b.state(), QpState::Rts);
    pair.b.post_recv(999, 0, 64);
    pair.a
        .post_send(send_wr(999, SendOp::Send, vec![pair.a.sge(0, 8)]));
    pair.run();
    assert_eq!(pair.b.state(), QpState::Err);
    let counters = pair.b.engine.counters();
    assert!(counters.completion_queue_overflows >= 1, "{counters:?}");
    let got: Vec<_> = pair.a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(got, [(999, WcStatus::RetryExcErr)]);
    assert_eq!(
        pair.b.poll().len(),
        depth as usize,
        "the CQ held its depth, no more"
    );
}

//! Every NAK through the simulator, for any seed: the PSN sequence NAK that recovers from
//! reordering, and each fatal NAK (invalid request, remote access, remote operational)
//! with the completions it must give on both sides, behind earlier successful work and
//! ahead of work that must flush.

mod sim_harness;

use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, RunOutcome};
use ferroce_transport::engine::{QpState, RecvWr, SendOp, SendWr, WcStatus, WorkCompletion};
use proptest::prelude::*;
use sim_harness::{pattern, Params, RcPair, A, B, NS};

fn statuses(wcs: &[WorkCompletion]) -> Vec<(u64, WcStatus)> {
    wcs.iter().map(|wc| (wc.wr_id, wc.status)).collect()
}

fn link(loss: f64, reorder: f64, duplicate: f64) -> LinkConfig {
    LinkConfig {
        loss,
        reorder,
        duplicate,
        jitter: Duration::from_micros(2),
        ..LinkConfig::default()
    }
}

/// The fatal NAKs and how to provoke each.
#[derive(Debug, Clone, Copy)]
enum Fatal {
    /// Fetch-and-add on an address that is not 8-byte aligned.
    MisalignedAtomic,
    /// A SEND longer than the receive buffer.
    TooLong,
    /// A SEND into a receive buffer whose lkey is wrong.
    BadReceiveKey,
    /// A WRITE with a wrong rkey.
    BadRkey,
}

impl Fatal {
    /// (requester status, NAK counter on the responder, responder's receive status)
    fn expected(self) -> (WcStatus, &'static str, Option<WcStatus>) {
        match self {
            Fatal::MisalignedAtomic => (WcStatus::RemInvReqErr, "invalid_request", None),
            Fatal::TooLong => (
                WcStatus::RemInvReqErr,
                "invalid_request",
                Some(WcStatus::LocLenErr),
            ),
            Fatal::BadReceiveKey => (
                WcStatus::RemOpErr,
                "remote_operational",
                Some(WcStatus::LocProtErr),
            ),
            Fatal::BadRkey => (WcStatus::RemAccessErr, "remote_access", None),
        }
    }
}

fn fatal() -> impl Strategy<Value = Fatal> {
    prop_oneof![
        Just(Fatal::MisalignedAtomic),
        Just(Fatal::TooLong),
        Just(Fatal::BadReceiveKey),
        Just(Fatal::BadRkey),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Reordering makes the responder see gaps: it NAKs them (PSN sequence error), the
    /// requester goes back, and every WRITE still lands once with a Success completion.
    #[test]
    fn psn_sequence_naks_recover_from_reordering(
        seed in any::<u64>(),
        reorder in 0.05..=0.3f64,
        writes in 8u64..40,
    ) {
        let mut pair = RcPair::new(seed, link(0.0, reorder, 0.0), Params::default());
        let data = pattern(seed, 64 * 1024);
        pair.write(A, 0, &data);
        let b = pair.side(B);
        for wr_id in 0..writes {
            let offset = wr_id * 1024;
            let wr = SendWr::new(
                wr_id,
                SendOp::RdmaWrite { remote_addr: b.mr.addr + offset, rkey: b.mr.rkey },
                vec![pair.sge(A, offset, 1024)],
            );
            pair.post_send(A, wr);
        }
        let (wcs, _, outcome) = pair.run_for_completions(writes as usize, 0, Duration::from_secs(10));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let want: Vec<_> = (0..writes).map(|id| (id, WcStatus::Success)).collect();
        prop_assert_eq!(statuses(&wcs), want);
        let len = writes as usize * 1024;
        prop_assert_eq!(pair.read(B, 0, len), data[..len].to_vec());
        let naks = pair.net.node(B).counters().naks_sent;
        prop_assert_eq!(pair.net.roce_stats().psn_sequence_naks, naks.psn_sequence);
        prop_assert_eq!(naks.invalid_request + naks.remote_access + naks.remote_operational, 0);
    }

    /// A fatal NAK: the requester completes the offending WR with the matching status,
    /// flushes the rest in order, and both QPs end in the error state.
    #[test]
    fn fatal_nak_fails_the_wr_and_flushes_the_rest(
        seed in any::<u64>(),
        kind in fatal(),
        good_before in 0u64..3,
        after in 0u64..3,
        loss in 0.0..=0.05f64,
    ) {
        let mut pair = RcPair::new(seed, link(loss, 0.05, 0.02), Params::default());
        // The NAK itself must arrive (a responder in error answers nothing more).
        pair.net.set_link(B, A, link(0.0, 0.05, 0.02));
        let b = pair.side(B);
        for wr_id in 0..good_before {
            let wr = SendWr::new(
                wr_id,
                SendOp::RdmaWrite { remote_addr: b.mr.addr + 8192, rkey: b.mr.rkey },
                vec![pair.sge(A, 0, 100)],
            );
            pair.post_send(A, wr);
        }
        let bad = good_before;
        let op = match kind {
            Fatal::MisalignedAtomic => {
                SendOp::FetchAdd { remote_addr: b.mr.addr + 12, rkey: b.mr.rkey, add: 1 }
            }
            Fatal::TooLong => {
                pair.post_recv(B, 50, 4096, 16);
                SendOp::Send
            }
            Fatal::BadReceiveKey => {
                let mut sge = pair.sge(B, 4096, 64);
                sge.lkey.0 ^= 0x80;
                pair.engine(B)
                    .post_recv(NS, b.qpn, RecvWr { wr_id: 50, sg_list: vec![sge].into() })
                    .unwrap();
                SendOp::Send
            }
            Fatal::BadRkey => SendOp::RdmaWrite {
                remote_addr: b.mr.addr,
                rkey: ferroce_transport::wire::Rkey(b.mr.rkey.0 ^ 0x5a),
            },
        };
        let len = match kind {
            Fatal::MisalignedAtomic => 8,
            Fatal::TooLong => 17,
            _ => 16,
        };
        pair.post_send(A, SendWr::new(bad, op, vec![pair.sge(A, 0, len)]));
        for wr_id in bad + 1..=bad + after {
            pair.post_send(A, SendWr::new(wr_id, SendOp::Send, vec![pair.sge(A, 0, 8)]));
        }
        let (status, counter, receive) = kind.expected();
        let total = (good_before + 1 + after) as usize;
        let (wcs_a, wcs_b, outcome) = pair.run_for_completions(
            total,
            usize::from(receive.is_some()),
            Duration::from_secs(10),
        );
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let mut want: Vec<_> = (0..good_before).map(|id| (id, WcStatus::Success)).collect();
        want.push((bad, status));
        want.extend((bad + 1..=bad + after).map(|id| (id, WcStatus::WrFlushErr)));
        prop_assert_eq!(statuses(&wcs_a), want);
        if let Some(receive) = receive {
            prop_assert_eq!(statuses(&wcs_b), vec![(50, receive)]);
        }
        let naks = pair.net.node(B).counters().naks_sent;
        let sent = match counter {
            "invalid_request" => naks.invalid_request,
            "remote_access" => naks.remote_access,
            _ => naks.remote_operational,
        };
        prop_assert_eq!(sent, 1, "{:?}", naks);
        prop_assert_eq!(pair.state(A), QpState::Err);
        prop_assert_eq!(pair.state(B), QpState::Err);
    }
}

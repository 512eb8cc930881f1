//! RC error paths through the simulator, for any seed: retry exhaustion when the peer is
//! gone, RNR retry exhaustion (and recovery), and remote access violations.

mod sim_harness;

use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, RunOutcome};
use ferroce_transport::engine::{
    AccessFlags, QpState, SendOp, SendWr, WcOpcode, WcStatus, WorkCompletion,
};
use ferroce_transport::wire::Rkey;
use proptest::prelude::*;
use sim_harness::{pattern, Params, RcPair, A, B};

fn statuses(wcs: &[WorkCompletion]) -> Vec<(u64, WcStatus)> {
    wcs.iter().map(|wc| (wc.wr_id, wc.status)).collect()
}

fn lossy(loss: f64, reorder: f64, duplicate: f64) -> LinkConfig {
    LinkConfig {
        loss,
        reorder,
        duplicate,
        ..LinkConfig::default()
    }
}

fn write_wr(pair: &RcPair, wr_id: u64, offset: u64, len: u32) -> SendWr {
    let b = pair.side(B);
    SendWr::new(
        wr_id,
        SendOp::RdmaWrite {
            remote_addr: b.mr.addr + offset,
            rkey: b.mr.rkey,
        },
        vec![pair.sge(A, offset, len)],
    )
}

/// 4.096 µs × 2^timeout.
fn ack_timeout(code: u8) -> Duration {
    Duration::from_nanos(4096 << code)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The peer vanishes after `before` WRITEs succeeded: the first WR still
    /// outstanding fails with RETRY_EXC_ERR after retry_cnt retries, every later one
    /// flushes in order, and the QP is in the error state.
    #[test]
    fn retry_exhaustion_then_flush_in_order(
        seed in any::<u64>(),
        retry_cnt in 0u8..=6,
        before in 0usize..4,
        after in 1usize..6,
    ) {
        let params = Params { timeout: 6, retry_cnt, ..Params::default() };
        // A perfect link at first: with retry_cnt 0 a single loss or PSN sequence NAK
        // would already exhaust the retries.
        let mut pair = RcPair::new(seed, LinkConfig::default(), params);
        pair.write(A, 0, &pattern(seed, 64 * 1024));
        for wr_id in 0..before as u64 {
            let wr = write_wr(&pair, wr_id, wr_id * 4096, 3000);
            pair.post_send(A, wr);
        }
        let (done, _, outcome) = pair.run_for_completions(before, 0, Duration::from_secs(10));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        prop_assert!(done.iter().all(|wc| wc.status == WcStatus::Success), "{:?}", done);

        // The peer is gone: nothing gets through in either direction.
        let gone = LinkConfig { loss: 1.0, ..LinkConfig::default() };
        pair.net.set_link_both(A, B, gone);
        let cut = pair.now();
        for wr_id in before as u64..(before + after) as u64 {
            let wr = write_wr(&pair, wr_id, (wr_id % 8) * 4096, 2000);
            pair.post_send(A, wr);
        }
        let (wcs, _, outcome) = pair.run_for_completions(after, 0, Duration::from_secs(10));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let mut want = vec![(before as u64, WcStatus::RetryExcErr)];
        want.extend((before as u64 + 1..(before + after) as u64).map(|id| (id, WcStatus::WrFlushErr)));
        prop_assert_eq!(statuses(&wcs), want);
        prop_assert_eq!(pair.state(A), QpState::Err);
        // The first try plus retry_cnt retries, each after a full timeout.
        let elapsed = pair.now() - cut;
        let at_least = ack_timeout(6) * (u32::from(retry_cnt) + 1);
        prop_assert!(elapsed >= at_least, "failed after {:?}, before {:?}", elapsed, at_least);
        prop_assert!(elapsed <= at_least * 4, "failed only after {:?}", elapsed);
        // Work posted now completes with WR_FLUSH_ERR straight away.
        let wr = write_wr(&pair, 99, 0, 8);
        pair.post_send(A, wr);
        let (late, _) = pair.settle(Duration::from_millis(1));
        prop_assert_eq!(statuses(&late), vec![(99, WcStatus::WrFlushErr)]);
    }

    /// No receive is posted: every SEND attempt is RNR NAK'd, and the requester gives up
    /// with RNR_RETRY_EXC_ERR after exactly rnr_retry retries.
    #[test]
    fn rnr_storm_exhausts_rnr_retry(
        seed in any::<u64>(),
        rnr_retry in 0u8..=6,
        min_rnr_timer in 1u8..=8,
        sends in 1usize..4,
    ) {
        let params = Params { rnr_retry, min_rnr_timer, ..Params::default() };
        let mut pair = RcPair::new(seed, LinkConfig::default(), params);
        for wr_id in 0..sends as u64 {
            let sge = pair.sge(A, wr_id * 1024, 512);
            pair.post_send(A, SendWr::new(wr_id, SendOp::Send, vec![sge]));
        }
        let (wcs, _, outcome) = pair.run_for_completions(sends, 0, Duration::from_secs(30));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let mut want = vec![(0, WcStatus::RnrRetryExcErr)];
        want.extend((1..sends as u64).map(|id| (id, WcStatus::WrFlushErr)));
        prop_assert_eq!(statuses(&wcs), want);
        prop_assert_eq!(pair.net.roce_stats().rnr_naks, u64::from(rnr_retry) + 1);
        prop_assert_eq!(pair.state(A), QpState::Err);
    }

    /// Receives are posted after `naks` RNR NAKs, before rnr_retry (finite, or 7 =
    /// infinite) runs out: every SEND then succeeds.
    #[test]
    fn rnr_recovers_when_receives_arrive_in_time(
        seed in any::<u64>(),
        rnr_retry in prop_oneof![Just(7u8), 3u8..=6],
        naks in 1u64..=3,
        sends in 1u64..4,
        loss in 0.0..=0.05f64,
    ) {
        let params = Params { rnr_retry, min_rnr_timer: 4, ..Params::default() };
        let mut pair = RcPair::new(seed, lossy(loss, 0.05, 0.02), params);
        let data = pattern(seed, 4096);
        pair.write(A, 0, &data);
        for wr_id in 0..sends {
            let sge = pair.sge(A, wr_id * 1024, 1024);
            pair.post_send(A, SendWr::new(wr_id, SendOp::Send, vec![sge]));
        }
        let outcome = pair.net.run_while(
            |net| net.roce_stats().rnr_naks < naks,
            pair.net.now() + Duration::from_secs(10),
        );
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        prop_assert!(pair.poll(A).is_empty());
        for wr_id in 0..sends {
            pair.post_recv(B, 100 + wr_id, 8192 + wr_id * 1024, 1024);
        }
        let (wcs_a, wcs_b, outcome) =
            pair.run_for_completions(sends as usize, sends as usize, Duration::from_secs(10));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let want_a: Vec<_> = (0..sends).map(|id| (id, WcStatus::Success)).collect();
        prop_assert_eq!(statuses(&wcs_a), want_a);
        let want_b: Vec<_> = (0..sends).map(|id| (100 + id, WcStatus::Success)).collect();
        prop_assert_eq!(statuses(&wcs_b), want_b);
        prop_assert!(wcs_b.iter().all(|wc| wc.opcode == WcOpcode::Recv && wc.byte_len == 1024));
        prop_assert_eq!(pair.read(B, 8192, sends as usize * 1024), data[..sends as usize * 1024].to_vec());
    }

    /// A WRITE, READ or atomic the responder must refuse (wrong rkey, out of bounds, or
    /// an MR without the right) completes with REM_ACCESS_ERR on the requester, never
    /// touches the responder's memory nor the requester's destination buffer, and flushes
    /// what follows.
    #[test]
    fn remote_access_violation_is_rem_access_err_and_touches_nothing(
        seed in any::<u64>(),
        operation in 0u8..4,
        violation in 0u8..3,
        good_before in 0u64..3,
        loss in 0.0..=0.05f64,
    ) {
        // Violation 2 is a region registered without the remote right the op needs.
        let responder_mr_access = if violation == 2 {
            AccessFlags::LOCAL_WRITE
        } else {
            sim_harness::all_access()
        };
        let params = Params { responder_mr_access, ..Params::default() };
        let mut pair = RcPair::new(seed, lossy(loss, 0.05, 0.02), params);
        // The NAK must get back: the responder's QP is in the error state after it, so a
        // lost NAK would end in RETRY_EXC_ERR instead (as on rxe).
        pair.net.set_link(B, A, lossy(0.0, 0.05, 0.02));
        let len = params.mr_len as usize;
        pair.write(A, 0, &pattern(seed, len));
        let responder_before = pattern(!seed, len);
        pair.write(B, 0, &responder_before);
        let b = pair.side(B);

        // Some SENDs that succeed first, so the violation is not the QP's first packet.
        for wr_id in 0..good_before {
            pair.post_recv(B, wr_id, 0, 64);
            let sge = pair.sge(A, 0, 16);
            pair.post_send(A, SendWr::new(wr_id, SendOp::Send, vec![sge]));
        }
        let (rkey, remote_addr) = match violation {
            // A key whose 8-bit key part is wrong: guessing fails.
            0 => (Rkey(b.mr.rkey.0 ^ (1 + (seed as u32 % 255))), b.mr.addr),
            // Ends one 8-byte word past the region.
            1 => (b.mr.rkey, b.mr.addr + b.mr.length - 8),
            _ => (b.mr.rkey, b.mr.addr),
        };
        let destination = 32 * 1024;
        let (op, sge_len) = match operation {
            0 => (SendOp::RdmaWrite { remote_addr, rkey }, 16),
            1 => (SendOp::RdmaRead { remote_addr, rkey }, 16),
            2 => (SendOp::FetchAdd { remote_addr: remote_addr + 8, rkey, add: 1 }, 8),
            _ => (SendOp::CompareSwap { remote_addr: remote_addr + 8, rkey, compare: 0, swap: 1 }, 8),
        };
        // Atomics address one word: make the out-of-bounds case start past the end.
        let op = match (violation, op) {
            (1, SendOp::FetchAdd { rkey, add, .. }) => SendOp::FetchAdd { remote_addr: b.mr.addr + b.mr.length, rkey, add },
            (1, SendOp::CompareSwap { rkey, compare, swap, .. }) => SendOp::CompareSwap { remote_addr: b.mr.addr + b.mr.length, rkey, compare, swap },
            (_, op) => op,
        };
        let bad = good_before;
        let sge = pair.sge(A, destination, sge_len);
        pair.post_send(A, SendWr::new(bad, op, vec![sge]));
        let follower = write_wr(&pair, bad + 1, 0, 16);
        pair.post_send(A, follower);

        let total = good_before as usize + 2;
        let (wcs, _, outcome) = pair.run_for_completions(total, good_before as usize, Duration::from_secs(10));
        prop_assert_eq!(outcome, RunOutcome::Stopped);
        let mut want: Vec<_> = (0..good_before).map(|id| (id, WcStatus::Success)).collect();
        want.push((bad, WcStatus::RemAccessErr));
        want.push((bad + 1, WcStatus::WrFlushErr));
        prop_assert_eq!(statuses(&wcs), want);
        prop_assert!(pair.net.roce_stats().remote_access_naks >= 1);
        prop_assert_eq!(pair.state(A), QpState::Err);

        pair.settle(Duration::from_millis(50));
        // The responder's memory holds exactly what it did, plus the SENDs' payloads.
        let mut expected = responder_before;
        if good_before > 0 {
            expected[..16].copy_from_slice(&pattern(seed, 16));
        }
        prop_assert!(pair.read(B, 0, len) == expected, "responder memory changed");
        // The READ/atomic destination on the requester was not written either.
        prop_assert_eq!(
            pair.read(A, destination, 16),
            pattern(seed, len)[destination as usize..destination as usize + 16].to_vec()
        );
    }
}

/// A network-duplicated RNR NAK is one NAK: it must not use up a second RNR retry.
#[test]
fn duplicated_rnr_nak_does_not_consume_a_retry() {
    let params = Params {
        rnr_retry: 1,
        min_rnr_timer: 4,
        ..Params::default()
    };
    let mut pair = RcPair::new(1, LinkConfig::default(), params);
    // Every acknowledge from the responder arrives twice.
    pair.net.set_link(B, A, lossy(0.0, 0.0, 1.0));
    let sge = pair.sge(A, 0, 64);
    pair.post_send(A, SendWr::new(0, SendOp::Send, vec![sge]));
    let deadline = pair.now() + Duration::from_secs(1);
    let outcome = pair
        .net
        .run_while(|net| net.roce_stats().rnr_naks < 1, deadline);
    assert_eq!(outcome, RunOutcome::Stopped);
    // The one retry rnr_retry = 1 allows finds a receive.
    pair.post_recv(B, 7, 0, 64);
    let (wcs_a, wcs_b, _) = pair.run_for_completions(1, 1, Duration::from_secs(1));
    assert_eq!(statuses(&wcs_a), [(0, WcStatus::Success)]);
    assert_eq!(statuses(&wcs_b), [(7, WcStatus::Success)]);
}

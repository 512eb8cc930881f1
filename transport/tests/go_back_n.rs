//! Go-back-N against the rules a native peer (rxe) follows, in the simulator: how soon a
//! loss that draws no NAK is repaired, that retry_cnt still counts negotiated timeouts,
//! and what a lossy link costs in packets.
#![allow(clippy::unwrap_used)]

mod sim_harness;

use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, RunOutcome};
use ferroce_transport::engine::{PathMtu, SendOp, SendWr, WcStatus};
use sim_harness::*;

/// IB timeout code 14, rc_pingpong's and perftest's default: 4.096 µs × 2^14 ≈ 67 ms.
const TIMEOUT_14: Duration = Duration::from_nanos(4096 << 14);

/// A link of `gbit_per_sec` with a one-way delay of `delay_micros` and `loss` each way.
fn link_of(gbit_per_sec: u64, delay_micros: u64, loss: f64) -> LinkConfig {
    LinkConfig {
        loss,
        delay: Duration::from_micros(delay_micros),
        rate_bytes_per_sec: Some(gbit_per_sec * 1_000_000_000 / 8),
        ..LinkConfig::default()
    }
}

fn link(loss: f64) -> LinkConfig {
    link_of(10, 10, loss)
}

fn write(pair: &RcPair, wr_id: u64, offset: u64, len: u32) -> SendWr {
    let op = SendOp::RdmaWrite {
        remote_addr: pair.side(B).mr.addr + offset,
        rkey: pair.side(B).mr.rkey,
    };
    SendWr::new(wr_id, op, vec![pair.sge(A, offset, len)])
}

/// Posts `count` WRITEs of `len` bytes and runs until they complete; returns how long
/// that took.
fn write_all(pair: &mut RcPair, first_id: u64, count: u64, len: u32) -> Duration {
    let start = pair.now();
    for i in 0..count {
        let wr = write(pair, first_id + i, i * u64::from(len), len);
        pair.post_send(A, wr);
    }
    let (wcs, _, outcome) = pair.run_for_completions(count as usize, 0, Duration::from_secs(60));
    assert_eq!(outcome, RunOutcome::Stopped);
    assert!(
        wcs.iter().all(|wc| wc.status == WcStatus::Success),
        "{wcs:?}"
    );
    pair.now() - start
}

/// The last packet of a burst is lost: nothing after it draws the responder's sequence
/// NAK, so only the requester's timer can repair it. Once a round trip has been
/// measured, that takes a few round trips, not the negotiated 67 ms.
#[test]
fn a_lost_last_packet_is_resent_after_the_measured_round_trip() {
    let params = Params {
        timeout: 14,
        mtu: PathMtu::Mtu4096,
        mr_len: 1 << 20,
        ..Params::default()
    };
    let mut pair = RcPair::new(1, link(0.0), params);
    let data = pattern(3, 1 << 20);
    pair.write(A, 0, &data);
    // A few messages to measure the round trip by.
    write_all(&mut pair, 1, 16, 16 << 10);
    let timeouts_before = pair.engine(A).counters().timeouts;

    // A single-packet WRITE whose only packet is lost.
    let wr = write(&pair, 100, 512 << 10, 4096);
    pair.post_send(A, wr);
    pair.net.set_link(A, B, link(1.0));
    pair.net.next_event_time();
    pair.net.clear_link(A, B);
    assert_eq!(pair.net.link_stats(A, B).dropped, 1);
    let start = pair.now();
    let (wcs, _, outcome) = pair.run_for_completions(1, 0, Duration::from_secs(1));
    let took = pair.now() - start;

    assert_eq!(outcome, RunOutcome::Stopped);
    assert_eq!(wcs[0].status, WcStatus::Success);
    assert_eq!(
        pair.read(B, 512 << 10, 4096),
        data[512 << 10..(512 << 10) + 4096]
    );
    assert_eq!(pair.engine(A).counters().timeouts - timeouts_before, 1);
    assert!(
        took < TIMEOUT_14 / 20,
        "the tail loss took {took:?} to repair (negotiated timeout {TIMEOUT_14:?})"
    );
}

/// The adaptive timer resends early but spends no retry: a WR to a peer that went
/// silent fails after (retry_cnt + 1) negotiated timeouts, as with rxe, however short
/// the measured round trip.
#[test]
fn retries_are_spent_per_negotiated_timeout_however_short_the_round_trip() {
    // IB timeout 12: 4.096 µs × 2^12 ≈ 16.8 ms.
    let timeout = Duration::from_nanos(4096 << 12);
    let params = Params {
        timeout: 12,
        retry_cnt: 2,
        mr_len: 1 << 20,
        ..Params::default()
    };
    let mut pair = RcPair::new(2, link(0.0), params);
    write_all(&mut pair, 1, 8, 4096);
    let last_progress = pair.now();
    let timeouts_before = pair.engine(A).counters().timeouts;

    pair.net.set_link(A, B, link(1.0));
    let wr = write(&pair, 100, 0, 4096);
    pair.post_send(A, wr);
    let (wcs, _, outcome) = pair.run_for_completions(1, 0, Duration::from_secs(10));
    let took = pair.now() - last_progress;

    assert_eq!(outcome, RunOutcome::Stopped);
    assert_eq!(wcs[0].status, WcStatus::RetryExcErr);
    // The first try and two retries, each a full negotiated timeout.
    assert!(took >= timeout * 3, "failed after {took:?}");
    assert!(
        took < timeout * 3 + Duration::from_millis(1),
        "failed after {took:?}"
    );
    // In between, the measured round trip resent sooner, for free.
    let timeouts = pair.engine(A).counters().timeouts - timeouts_before;
    assert!(timeouts > 3, "{timeouts} timeouts");
}

fn big_pair(seed: u64, loss: f64, mr_len: u64) -> RcPair {
    let params = Params {
        mtu: PathMtu::Mtu4096,
        timeout: 10,
        max_rd_atomic: 16,
        mr_len,
        ..Params::default()
    };
    RcPair::new(seed, link_of(25, 5, loss), params)
}

/// Posts `count` READs of `len` bytes, back to back, from B's region into A's.
fn post_reads(pair: &mut RcPair, count: u64, len: u32) {
    for i in 0..count {
        let op = SendOp::RdmaRead {
            remote_addr: pair.side(B).mr.addr + i * u64::from(len),
            rkey: pair.side(B).mr.rkey,
        };
        let wr = SendWr::new(i, op, vec![pair.sge(A, i * u64::from(len), len)]);
        pair.post_send(A, wr);
    }
}

fn packets_sent(pair: &mut RcPair) -> u64 {
    pair.engine(A).counters().packets_out + pair.engine(B).counters().packets_out
}

/// A 4 MiB READ at 2% loss each way (1024 response packets at MTU 4096). Each gap in the
/// responses costs a re-request and a replay of the rest; a requester that asks again
/// while the replay is still queued behind the old responses, or a responder that
/// answers both, multiplies that.
#[test]
fn a_read_at_two_percent_loss_is_asked_again_only_after_a_loss() {
    const LEN: u32 = 4 << 20;
    let ideal = u64::from(LEN / 4096) + 1;
    let mut ratios = Vec::new();
    for seed in 1..=5 {
        let mut pair = big_pair(seed, 0.02, u64::from(LEN));
        let data = pattern(seed, LEN as usize);
        pair.write(B, 0, &data);
        let op = SendOp::RdmaRead {
            remote_addr: pair.side(B).mr.addr,
            rkey: pair.side(B).mr.rkey,
        };
        let wr = SendWr::new(1, op, vec![pair.sge(A, 0, LEN)]);
        pair.post_send(A, wr);
        let (wcs, _, outcome) = pair.run_for_completions(1, 0, Duration::from_secs(60));
        assert_eq!(outcome, RunOutcome::Stopped);
        assert_eq!(wcs[0].status, WcStatus::Success);
        assert!(
            pair.read(A, 0, LEN as usize) == data,
            "seed {seed}: data differs"
        );
        // A sends nothing but READ requests. Each needs a loss to answer: a gap in the
        // responses, or a request or the tail of its responses lost (the timer).
        let requests = pair.engine(A).counters().packets_out;
        let losses = pair.net.link_stats(A, B).dropped + pair.net.link_stats(B, A).dropped;
        assert!(
            requests <= 1 + losses,
            "seed {seed}: {requests} READ requests for {losses} losses"
        );
        ratios.push(packets_sent(&mut pair) as f64 / ideal as f64);
    }
    eprintln!("packets sent per packet needed: {ratios:?}");
    assert!(
        ratios.iter().all(|&r| r <= 20.0),
        "packets sent per packet needed: {ratios:?}"
    );
}

/// 1 MiB WRITEs at 25 Gb/s, 5 µs, 1% loss each way: go-back-N with a native peer keeps
/// over 42% of the lossless goodput (virtual time, median of five seeds; 36.5% when a
/// lost NAK, resend or last packet waited out the negotiated timeout). Issue 16 asks for
/// 50%; the 128-PSN window floor after a loss (see `MIN_UNACKED_PSNS`) keeps it below.
#[test]
fn writes_at_one_percent_loss_keep_over_forty_two_percent_of_the_lossless_goodput() {
    const LEN: u32 = 1 << 20;
    const COUNT: u64 = 16;
    let run = |seed: u64, loss: f64| {
        let mut pair = big_pair(seed, loss, u64::from(LEN) * COUNT);
        let start = pair.now();
        for i in 0..COUNT {
            let wr = write(&pair, i, i * u64::from(LEN), LEN);
            pair.post_send(A, wr);
        }
        let (wcs, _, outcome) =
            pair.run_for_completions(COUNT as usize, 0, Duration::from_secs(60));
        assert_eq!(outcome, RunOutcome::Stopped);
        assert!(wcs.iter().all(|wc| wc.status == WcStatus::Success));
        (pair.now() - start).as_secs_f64()
    };
    let lossless = run(1, 0.0);
    let mut fractions: Vec<f64> = (1..=5).map(|seed| lossless / run(seed, 0.01)).collect();
    fractions.sort_by(f64::total_cmp);
    assert!(
        fractions[2] >= 0.42,
        "goodput at 1% loss over lossless, per seed: {fractions:?}"
    );
}

/// 1 MiB READs back to back at 1% loss each way. The responder sends a READ's answer at
/// once, and a gap in one READ's answer makes go-back-N ask for every later READ
/// again; after a loss, a READ starts only when its answer fits in the window, so a gap
/// costs the rest of one READ rather than of several.
#[test]
fn reads_at_one_percent_loss_resend_the_rest_of_one_read_per_gap() {
    const LEN: u32 = 1 << 20;
    const COUNT: u64 = 16;
    let ideal = COUNT * (u64::from(LEN / 4096) + 1);
    let mut ratios: Vec<f64> = (1..=5)
        .map(|seed| {
            let mut pair = big_pair(seed, 0.01, u64::from(LEN) * COUNT);
            post_reads(&mut pair, COUNT, LEN);
            let (wcs, _, outcome) =
                pair.run_for_completions(COUNT as usize, 0, Duration::from_secs(60));
            assert_eq!(outcome, RunOutcome::Stopped);
            assert!(wcs.iter().all(|wc| wc.status == WcStatus::Success));
            packets_sent(&mut pair) as f64 / ideal as f64
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    eprintln!("packets sent per packet needed: {ratios:?}");
    assert!(
        ratios[2] <= 3.0,
        "packets sent per packet needed, per seed: {ratios:?}"
    );
}

/// READs whose answers take longer to arrive than the negotiated timeout (256 KiB at
/// MTU 1024 over 100 Mb/s: 21 ms each, against 4.2 ms), at 1% loss each way, as against
/// rxe in a slow guest. After a gap, the responder keeps sending what it had queued
/// (later READs' answers, replays): a requester that asks again on every negotiated
/// timeout while those still arrive stacks a replay per timeout behind them and never
/// catches up (at 4e6850c: 7 of 8 READs done after 100 s of virtual time, 23 801
/// timeouts).
#[test]
fn reads_slower_than_the_negotiated_timeout_finish_at_one_percent_loss() {
    const LEN: u32 = 256 << 10;
    const COUNT: u64 = 8;
    for seed in 1..=3 {
        let params = Params {
            timeout: 10,
            max_rd_atomic: 16,
            mr_len: u64::from(LEN) * COUNT,
            ..Params::default()
        };
        let link = LinkConfig {
            loss: 0.01,
            delay: Duration::from_micros(50),
            rate_bytes_per_sec: Some(100_000_000 / 8),
            ..LinkConfig::default()
        };
        let mut pair = RcPair::new(seed, link, params);
        let data = pattern(seed, (u64::from(LEN) * COUNT) as usize);
        pair.write(B, 0, &data);
        post_reads(&mut pair, COUNT, LEN);
        let start = pair.now();
        let (wcs, _, outcome) =
            pair.run_for_completions(COUNT as usize, 0, Duration::from_secs(20));
        assert_eq!(
            outcome,
            RunOutcome::Stopped,
            "seed {seed}: {} of {COUNT} READs done after {:?}, {} timeouts",
            wcs.len(),
            pair.now() - start,
            pair.engine(A).counters().timeouts
        );
        assert!(wcs.iter().all(|wc| wc.status == WcStatus::Success));
        assert!(
            pair.read(A, 0, data.len()) == data,
            "seed {seed}: data differs"
        );
        // Lossless, the 2 MiB take 170 ms; go-back-N may cost several times that.
        let took = pair.now() - start;
        eprintln!("seed {seed}: {took:?}");
        assert!(took < Duration::from_secs(2), "seed {seed}: {took:?}");
    }
}

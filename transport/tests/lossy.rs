#![allow(clippy::unwrap_used)]
//! RC over a lossy, reordering, duplicating link (a small in-test loop with a seeded
//! generator, not the simulator): every byte arrives exactly once, in order, with
//! every completion, and atomics execute exactly once.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use ferroce_transport::engine::{Datagram, QpType, SendOp, Time, WcOpcode, WcStatus};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Datagrams in flight: (arrival time, to B?, datagram).
type Wire = VecDeque<(Time, bool, Datagram)>;

fn run_lossy(pair: &mut Pair, rng: &mut Lcg, loss: u64, dup: u64, max_steps: usize) {
    let mut wire: Wire = VecDeque::new();
    let base = Duration::from_micros(5);
    for _ in 0..max_steps {
        for to_b in [true, false] {
            loop {
                let out = if to_b {
                    pair.a.engine.poll_transmit(pair.now)
                } else {
                    pair.b.engine.poll_transmit(pair.now)
                };
                let Some(d) = out else { break };
                if rng.chance(loss) {
                    continue;
                }
                let copies = if rng.chance(dup) { 2 } else { 1 };
                for _ in 0..copies {
                    // Random extra delay reorders packets.
                    let jitter = Duration::from_nanos(rng.next() % 20_000);
                    wire.push_back((pair.now + base + jitter, to_b, d.clone()));
                }
            }
        }
        let next_arrival = wire.iter().map(|(t, _, _)| *t).min();
        let next_timer = [pair.a.engine.poll_timeout(), pair.b.engine.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let next = match (next_arrival, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return,
            },
        };
        pair.now = pair.now.max(next);
        let mut i = 0;
        while i < wire.len() {
            if wire[i].0 <= pair.now {
                let (_, to_b, d) = wire.remove(i).unwrap();
                let engine = if to_b {
                    &mut pair.b.engine
                } else {
                    &mut pair.a.engine
                };
                engine.handle_datagram(pair.now, d.meta, &d.payload);
            } else {
                i += 1;
            }
        }
        pair.a.engine.handle_timeout(pair.now);
        pair.b.engine.handle_timeout(pair.now);
    }
    panic!("did not finish");
}

fn workload(seed: u64, loss: u64, dup: u64) {
    // MTU 256 so messages of up to 1000 bytes take up to four packets.
    let params = Params {
        timeout: 8,
        retry_cnt: 7,
        mtu: ferroce_transport::engine::PathMtu::Mtu256,
        ..Params::default()
    };
    let mut pair = Pair::new(QpType::Rc, params);
    let mut rng = Lcg(seed);
    let n = 40u64;
    let mut expected_sends = Vec::new();
    pair.b.write(60_000, &0u64.to_ne_bytes());
    let mut adds = 0u64;
    let mut reads = Vec::new();
    let source = pattern(1000, 0xab);
    pair.b.write(45_000, &source);
    for i in 0..n {
        pair.b.post_recv(i, i * 1024, 1024);
    }
    for i in 0..n {
        let len = (rng.next() % 1000) as u32 + 1;
        // Each WR owns its source bytes: they are read when sent, not when posted.
        let src = i * 1024;
        let data = pattern(len as usize, i as u8);
        match rng.next() % 4 {
            0 => {
                pair.a.write(src, &data[..len as usize]);
                pair.a
                    .post_send(send_wr(i, SendOp::Send, vec![pair.a.sge(src, len)]));
                expected_sends.push(data[..len as usize].to_vec());
            }
            1 => {
                pair.a.write(src, &data);
                let dst = 41_000 + (i % 4) * 1000;
                let op = SendOp::RdmaWrite {
                    remote_addr: pair.b.mr.addr + dst,
                    rkey: pair.b.mr.rkey,
                };
                pair.a.post_send(send_wr(i, op, vec![pair.a.sge(src, len)]));
            }
            2 => {
                let op = SendOp::RdmaRead {
                    remote_addr: pair.b.mr.addr + 45_000,
                    rkey: pair.b.mr.rkey,
                };
                pair.a.post_send(send_wr(i, op, vec![pair.a.sge(src, len)]));
                reads.push((src, len as usize));
            }
            _ => {
                adds += 1;
                let op = SendOp::FetchAdd {
                    remote_addr: pair.b.mr.addr + 60_000,
                    rkey: pair.b.mr.rkey,
                    add: 1,
                };
                pair.a
                    .post_send(send_wr(i, op, vec![pair.a.sge(50_000 + i * 8, 8)]));
            }
        }
        // Let some traffic flow between posts.
        if i % 10 == 9 {
            run_lossy(&mut pair, &mut rng, loss, dup, 200_000);
        }
    }
    run_lossy(&mut pair, &mut rng, loss, dup, 2_000_000);
    let wcs = pair.a.poll();
    assert_eq!(wcs.len(), n as usize, "seed {seed}: every WR completes");
    for (i, wc) in wcs.iter().enumerate() {
        assert_eq!(
            (wc.wr_id, wc.status),
            (i as u64, WcStatus::Success),
            "seed {seed}"
        );
    }
    let recv: Vec<_> = pair
        .b
        .poll()
        .into_iter()
        .filter(|w| w.opcode == WcOpcode::Recv)
        .collect();
    assert_eq!(
        recv.len(),
        expected_sends.len(),
        "seed {seed}: each SEND received once"
    );
    for (k, (wc, data)) in recv.iter().zip(&expected_sends).enumerate() {
        assert_eq!(wc.wr_id, k as u64, "seed {seed}: in order");
        assert_eq!(wc.byte_len as usize, data.len());
        assert!(
            &pair.b.read(k as u64 * 1024, data.len()) == data,
            "seed {seed}: SEND {k} data"
        );
    }
    for (at, len) in reads {
        assert!(
            pair.a.read(at, len) == source[..len],
            "seed {seed}: READ into {at}"
        );
    }
    let c = *pair.a.engine.counters();
    if loss > 0 {
        assert!(c.retransmits > 0, "seed {seed}: the link lost nothing?");
    }
    if dup > 0 {
        assert!(
            pair.b.engine.counters().duplicates + c.drops.duplicate_response > 0,
            "seed {seed}"
        );
    }
    // Each fetch-add ran exactly once, and each saw a distinct original value.
    assert_eq!(pair.b.read(60_000, 8), adds.to_ne_bytes(), "seed {seed}");
    let mut originals: Vec<u64> = wcs
        .iter()
        .filter(|w| w.opcode == WcOpcode::FetchAdd)
        .map(|w| u64::from_ne_bytes(pair.a.read(50_000 + w.wr_id * 8, 8).try_into().unwrap()))
        .collect();
    originals.sort_unstable();
    assert_eq!(originals, (0..adds).collect::<Vec<_>>(), "seed {seed}");
}

#[test]
fn rc_survives_loss_reordering_and_duplication() {
    for seed in 0..40 {
        workload(seed, 5, 5);
    }
}

#[test]
fn rc_survives_heavy_loss() {
    for seed in 100..110 {
        workload(seed, 25, 0);
    }
}

#[test]
fn rc_reorder_and_duplicates_only() {
    for seed in 200..220 {
        workload(seed, 0, 30);
    }
}

/// A long sweep for rare interleavings: 2000 seeds over loss rates 0-19% and
/// reorder/duplicate rates 0-14%. ~30 s in a debug build (12 s of CPU, measured on a
/// loaded 2-core machine), so a plain `cargo test` leaves it out; the README's test
/// command (`-- --include-ignored`) and CI run it.
#[test]
#[ignore = "long (2000 seeded lossy runs, ~30 s in debug): run with `cargo test --workspace -- --include-ignored`"]
fn rc_long_sweep() {
    for seed in 1000..3000 {
        workload(seed, seed % 20, (seed / 20) % 15);
    }
}

/// Runs a pair whose responder (B) sends at most one datagram per `gap`, as a driver
/// with a bounded send queue does, while A sends freely; `loss` percent of B's
/// datagrams are lost. Returns how many datagrams B sent; stops once A has `wanted`
/// completions or virtual time passes `limit`.
fn run_paced_responder(
    pair: &mut Pair,
    rng: &mut Lcg,
    loss: u64,
    wanted: usize,
    limit: Duration,
) -> (Vec<ferroce_transport::engine::WorkCompletion>, u64) {
    let mut wire: Wire = VecDeque::new();
    let delay = Duration::from_micros(10);
    let gap = Duration::from_micros(1);
    let deadline = pair.now + limit;
    let mut b_free = pair.now;
    let mut b_sent = 0u64;
    let mut wcs = Vec::new();
    while pair.now <= deadline {
        while let Some(d) = pair.a.engine.poll_transmit(pair.now) {
            wire.push_back((pair.now + delay, true, d));
        }
        // B may have more to send unless it was just asked and said no.
        let mut b_busy = true;
        if b_free <= pair.now {
            match pair.b.engine.poll_transmit(pair.now) {
                Some(d) => {
                    b_sent += 1;
                    b_free = pair.now + gap;
                    if !rng.chance(loss) {
                        wire.push_back((pair.now + delay, false, d));
                    }
                }
                None => b_busy = false,
            }
        }
        wcs.extend(pair.a.poll());
        if wcs.len() >= wanted {
            return (wcs, b_sent);
        }
        let next = [
            wire.front().map(|(t, _, _)| *t),
            pair.a.engine.poll_timeout(),
            pair.b.engine.poll_timeout(),
            b_busy.then_some(b_free),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        pair.now = pair.now.max(next);
        // Constant delay: the wire is in arrival order.
        while wire.front().is_some_and(|(t, _, _)| *t <= pair.now) {
            let Some((_, to_b, d)) = wire.pop_front() else {
                break;
            };
            let to = if to_b {
                &mut pair.b.engine
            } else {
                &mut pair.a.engine
            };
            to.handle_datagram(pair.now, d.meta, &d.payload);
        }
        pair.a.engine.handle_timeout(pair.now);
        pair.b.engine.handle_timeout(pair.now);
    }
    (wcs, b_sent)
}

/// A lost READ response makes the requester ask again for the rest; the responder
/// must restart that READ's stream there, not queue a second full stream behind the
/// first (each loss would add a replay of the remainder, and the fetch-add's answer
/// would wait behind them all).
#[test]
fn long_reads_with_lost_responses_are_replayed_not_stacked() {
    const MIB: u64 = 1 << 20;
    for seed in 0..4 {
        let mut pair = Pair::rc();
        for side in [&mut pair.a, &mut pair.b] {
            side.mr = side
                .engine
                .reg_mr(NS, side.pd, 2 * MIB, all_access())
                .unwrap();
        }
        let data: Vec<u8> = (0..MIB + MIB / 4)
            .map(|i| (i as u8) ^ (i >> 10) as u8)
            .collect();
        pair.b.write(0, &data);
        pair.b.write(2 * MIB - 8, &7u64.to_ne_bytes());
        let (rkey, base) = (pair.b.mr.rkey, pair.b.mr.addr);
        let read = |offset: u64| SendOp::RdmaRead {
            remote_addr: base + offset,
            rkey,
        };
        pair.a
            .post_send(send_wr(1, read(0), vec![pair.a.sge(0, MIB as u32)]));
        pair.a.post_send(send_wr(
            2,
            read(MIB),
            vec![pair.a.sge(MIB, (MIB / 4) as u32)],
        ));
        let add = SendOp::FetchAdd {
            remote_addr: base + 2 * MIB - 8,
            rkey,
            add: 1,
        };
        pair.a
            .post_send(send_wr(3, add, vec![pair.a.sge(2 * MIB - 8, 8)]));
        let mut rng = Lcg(seed);
        let (wcs, b_sent) = run_paced_responder(&mut pair, &mut rng, 2, 3, Duration::from_secs(5));
        let got: Vec<_> = wcs.iter().map(|w| (w.wr_id, w.status)).collect();
        assert_eq!(
            got,
            [1, 2, 3].map(|i| (i, WcStatus::Success)),
            "seed {seed}: all complete, in order"
        );
        assert!(pair.a.read(0, data.len()) == data, "seed {seed}: READ data");
        assert_eq!(pair.a.read(2 * MIB - 8, 8), 7u64.to_ne_bytes());
        assert_eq!(pair.b.read(2 * MIB - 8, 8), 8u64.to_ne_bytes());
        // 1024 + 256 READ responses and one atomic ACK are needed.
        let needed = 1024 + 256 + 1;
        let duplicates = pair.b.engine.counters().duplicates;
        eprintln!("seed {seed}: B sent {b_sent} for {needed}, {duplicates} duplicate requests");
        assert!(duplicates > 0, "seed {seed}: nothing was lost?");
        assert!(
            b_sent <= 3 * needed,
            "seed {seed}: B sent {b_sent} datagrams for {needed} needed"
        );
    }
}

//! Property tests of RC through the simulator: for any seed and any mix of loss (up to
//! 10 %), reordering, duplication and corruption, every SEND, WRITE, READ and atomic is
//! executed exactly once, in order, with the right completions.

mod sim_harness;

use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, RunOutcome};
use ferroce_transport::engine::{SendOp, SendWr, WcOpcode, WcStatus, WorkCompletion};
use proptest::prelude::*;
use sim_harness::{pattern, Params, RcPair, A, B};

/// Responder MR layout: atomic slots, then the RDMA target, then receive buffers.
const ATOMIC_SLOTS: u64 = 8;
const TARGET_START: u64 = 64;
const TARGET_END: u64 = 16 * 1024;
const RECV_START: u64 = 16 * 1024;
/// Every message fits one slot, on either side.
const SLOT: u64 = 4096;
const MAX_LEN: u32 = 3000;

#[derive(Debug, Clone)]
enum Op {
    Send { len: u32 },
    Write { len: u32, offset: u64 },
    Read { len: u32, offset: u64 },
    FetchAdd { slot: u64, add: u64 },
    CompareSwap { slot: u64, hit: bool, swap: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let offset = |len: u32| TARGET_START..=(TARGET_END - u64::from(len));
    prop_oneof![
        (0..=MAX_LEN).prop_map(|len| Op::Send { len }),
        (0..=MAX_LEN).prop_flat_map(move |len| offset(len).prop_map(move |offset| Op::Write {
            len,
            offset
        })),
        (1..=MAX_LEN).prop_flat_map(move |len| offset(len).prop_map(move |offset| Op::Read {
            len,
            offset
        })),
        (0..ATOMIC_SLOTS, any::<u64>()).prop_map(|(slot, add)| Op::FetchAdd { slot, add }),
        (0..ATOMIC_SLOTS, any::<bool>(), any::<u64>())
            .prop_map(|(slot, hit, swap)| Op::CompareSwap { slot, hit, swap }),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Impairments {
    loss: f64,
    reorder: f64,
    duplicate: f64,
    corrupt: f64,
    jitter_us: u64,
}

fn impairments() -> impl Strategy<Value = Impairments> {
    (
        0.0..=0.10f64,
        0.0..=0.2f64,
        0.0..=0.1f64,
        0.0..=0.05f64,
        0..=20u64,
    )
        .prop_map(
            |(loss, reorder, duplicate, corrupt, jitter_us)| Impairments {
                loss,
                reorder,
                duplicate,
                corrupt,
                jitter_us,
            },
        )
}

impl Impairments {
    fn link(self) -> LinkConfig {
        LinkConfig {
            loss: self.loss,
            reorder: self.reorder,
            duplicate: self.duplicate,
            corrupt: self.corrupt,
            jitter: Duration::from_micros(self.jitter_us),
            // 10 Gbit/s, so that a burst queues behind itself.
            rate_bytes_per_sec: Some(1_250_000_000),
            ..LinkConfig::default()
        }
    }
}

/// What each op must produce, from running the ops one after another on a model of the
/// responder's memory.
struct Expected {
    responder: Vec<u8>,
    /// Per op: the bytes its local slot on the requester must hold afterwards.
    requester_slots: Vec<Vec<u8>>,
    /// Per SEND, in order: the payload.
    received: Vec<Vec<u8>>,
}

fn u64_at(memory: &[u8], offset: u64) -> u64 {
    let start = offset as usize;
    let mut word = [0u8; 8];
    word.copy_from_slice(&memory[start..start + 8]);
    u64::from_ne_bytes(word)
}

/// Posts `ops` (all signaled) on A, the receives they need on B, and returns what must
/// come out.
fn post(pair: &mut RcPair, ops: &[Op], data_seed: u64) -> Expected {
    let responder_len = pair.params.mr_len as usize;
    let mut responder = pattern(data_seed, responder_len);
    pair.write(B, 0, &responder);
    let side_b = pair.side(B);
    let mut requester_slots = Vec::new();
    let mut received = Vec::new();
    let mut receives = 0u64;
    for (index, op) in ops.iter().enumerate() {
        let wr_id = index as u64;
        let slot = index as u64 * SLOT;
        let source = pattern(data_seed ^ (wr_id + 1) << 32, SLOT as usize);
        pair.write(A, slot, &source);
        let remote = |offset: u64| side_b.mr.addr + offset;
        let (send_op, len, expected_slot) = match *op {
            Op::Send { len } => {
                pair.post_recv(B, receives, RECV_START + receives * SLOT, SLOT as u32);
                receives += 1;
                received.push(source[..len as usize].to_vec());
                (SendOp::Send, len, source.clone())
            }
            Op::Write { len, offset } => {
                let range = offset as usize..(offset + u64::from(len)) as usize;
                responder[range].copy_from_slice(&source[..len as usize]);
                let op = SendOp::RdmaWrite {
                    remote_addr: remote(offset),
                    rkey: side_b.mr.rkey,
                };
                (op, len, source.clone())
            }
            Op::Read { len, offset } => {
                let range = offset as usize..(offset + u64::from(len)) as usize;
                let mut slot_after = source.clone();
                slot_after[..len as usize].copy_from_slice(&responder[range]);
                let op = SendOp::RdmaRead {
                    remote_addr: remote(offset),
                    rkey: side_b.mr.rkey,
                };
                (op, len, slot_after)
            }
            Op::FetchAdd { slot: atomic, add } => {
                let offset = atomic * 8;
                let original = u64_at(&responder, offset);
                let range = offset as usize..offset as usize + 8;
                responder[range].copy_from_slice(&original.wrapping_add(add).to_ne_bytes());
                let mut slot_after = source.clone();
                slot_after[..8].copy_from_slice(&original.to_ne_bytes());
                let op = SendOp::FetchAdd {
                    remote_addr: remote(offset),
                    rkey: side_b.mr.rkey,
                    add,
                };
                (op, 8, slot_after)
            }
            Op::CompareSwap {
                slot: atomic,
                hit,
                swap,
            } => {
                let offset = atomic * 8;
                let original = u64_at(&responder, offset);
                let compare = if hit { original } else { !original };
                if hit {
                    let range = offset as usize..offset as usize + 8;
                    responder[range].copy_from_slice(&swap.to_ne_bytes());
                }
                let mut slot_after = source.clone();
                slot_after[..8].copy_from_slice(&original.to_ne_bytes());
                let op = SendOp::CompareSwap {
                    remote_addr: remote(offset),
                    rkey: side_b.mr.rkey,
                    compare,
                    swap,
                };
                (op, 8, slot_after)
            }
        };
        let sge = pair.sge(A, slot, len);
        let mut wr = SendWr::new(wr_id, send_op, vec![sge]);
        // A retried READ is executed again (IBA 9.4.4): a later WRITE to the same bytes
        // must fence, or the READ may return what the WRITE put there.
        if let Op::Write { len, offset } = *op {
            wr.fence = ops[..index].iter().any(|earlier| match *earlier {
                Op::Read {
                    len: read_len,
                    offset: read_offset,
                } => {
                    offset < read_offset + u64::from(read_len)
                        && read_offset < offset + u64::from(len)
                }
                _ => false,
            });
        }
        pair.post_send(A, wr);
        requester_slots.push(expected_slot);
    }
    // What SENDs put into B's receive buffers.
    for (index, payload) in received.iter().enumerate() {
        let start = (RECV_START + index as u64 * SLOT) as usize;
        responder[start..start + payload.len()].copy_from_slice(payload);
    }
    Expected {
        responder,
        requester_slots,
        received,
    }
}

fn opcode(op: &Op) -> WcOpcode {
    match op {
        Op::Send { .. } => WcOpcode::Send,
        Op::Write { .. } => WcOpcode::RdmaWrite,
        Op::Read { .. } => WcOpcode::RdmaRead,
        Op::FetchAdd { .. } => WcOpcode::FetchAdd,
        Op::CompareSwap { .. } => WcOpcode::CompSwap,
    }
}

fn byte_len(op: &Op) -> u32 {
    match *op {
        Op::Send { len } | Op::Write { len, .. } | Op::Read { len, .. } => len,
        Op::FetchAdd { .. } | Op::CompareSwap { .. } => 8,
    }
}

fn summary(wcs: &[WorkCompletion]) -> Vec<(u64, WcStatus, WcOpcode, u32)> {
    wcs.iter()
        .map(|wc| (wc.wr_id, wc.status, wc.opcode, wc.byte_len))
        .collect()
}

/// Runs `ops` over a link with `impairments` and checks every byte and completion.
fn check_delivery(
    seed: u64,
    impairments: Impairments,
    ops: &[Op],
) -> Result<Observed, TestCaseError> {
    let mut pair = RcPair::new(seed, impairments.link(), Params::default());
    let expected = post(&mut pair, ops, seed);
    let sends = expected.received.len();
    let (wcs_a, wcs_b, outcome) =
        pair.run_for_completions(ops.len(), sends, Duration::from_secs(60));
    prop_assert_eq!(outcome, RunOutcome::Stopped, "not done at {}", pair.now());
    // Anything extra (a duplicate executed twice) would show up now.
    let (late_a, late_b) = pair.settle(Duration::from_millis(200));
    prop_assert!(
        late_a.is_empty(),
        "extra requester completions {:?}",
        late_a
    );
    prop_assert!(
        late_b.is_empty(),
        "extra responder completions {:?}",
        late_b
    );

    let want_a: Vec<_> = ops
        .iter()
        .enumerate()
        .map(|(index, op)| (index as u64, WcStatus::Success, opcode(op), byte_len(op)))
        .collect();
    prop_assert_eq!(summary(&wcs_a), want_a);
    let want_b: Vec<_> = expected
        .received
        .iter()
        .enumerate()
        .map(|(index, payload)| {
            (
                index as u64,
                WcStatus::Success,
                WcOpcode::Recv,
                payload.len() as u32,
            )
        })
        .collect();
    prop_assert_eq!(summary(&wcs_b), want_b);

    let responder = pair.read(B, 0, pair.params.mr_len as usize);
    if responder != expected.responder {
        let first = responder
            .iter()
            .zip(&expected.responder)
            .position(|(got, want)| got != want)
            .unwrap_or(0);
        prop_assert!(false, "responder memory differs first at byte {}", first);
    }
    for (index, want) in expected.requester_slots.iter().enumerate() {
        let got = pair.read(A, index as u64 * SLOT, SLOT as usize);
        prop_assert!(
            &got == want,
            "requester slot of op {} ({:?})",
            index,
            ops[index]
        );
    }
    Ok(Observed {
        corrupted: pair.net.stats().links.corrupted,
        dropped: pair.net.stats().links.dropped,
        retransmissions: pair.net.roce_stats().retransmissions,
        icrc_errors: pair.net.node(A).counters().icrc_errors
            + pair.net.node(B).counters().icrc_errors,
    })
}

/// What a run went through, to prove the impairments were really exercised.
#[derive(Debug, Default)]
struct Observed {
    corrupted: u64,
    dropped: u64,
    retransmissions: u64,
    icrc_errors: u64,
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rc_delivers_exactly_once_in_order(
        seed in any::<u64>(),
        impairments in impairments(),
        ops in prop::collection::vec(op(), 1..16),
    ) {
        check_delivery(seed, impairments, &ops)?;
    }
}

#[test]
fn ten_percent_loss_with_everything_else() {
    let impairments = Impairments {
        loss: 0.10,
        reorder: 0.2,
        duplicate: 0.1,
        corrupt: 0.05,
        jitter_us: 10,
    };
    let ops: Vec<Op> = (0..24)
        .map(|index| match index % 5 {
            0 => Op::Send { len: 2500 },
            1 => Op::Write {
                len: 3000,
                offset: 100 + index * 7,
            },
            2 => Op::Read {
                len: 2049,
                offset: 90 + index * 11,
            },
            3 => Op::FetchAdd { slot: 1, add: 3 },
            _ => Op::CompareSwap {
                slot: 1,
                hit: index % 2 == 0,
                swap: index,
            },
        })
        .collect();
    let mut total = Observed::default();
    for seed in 0..4 {
        let observed = check_delivery(seed, impairments, &ops).unwrap();
        total.corrupted += observed.corrupted;
        total.dropped += observed.dropped;
        total.retransmissions += observed.retransmissions;
        total.icrc_errors += observed.icrc_errors;
    }
    assert!(total.dropped > 20, "{total:?}");
    assert!(total.retransmissions > 20, "{total:?}");
    // Flips in the ICRC-masked BTH bits (FECN, BECN, reserved) pass the check, so the
    // ICRC catches most corruption, not all of it.
    assert!(total.icrc_errors > total.corrupted / 2, "{total:?}");
}

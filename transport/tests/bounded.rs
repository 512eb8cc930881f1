#![allow(clippy::unwrap_used)]
// The counting allocator below forwards to `System`: the only unsafe code here.
#![allow(unsafe_code)]
//! A peer flooding one QP with READ and atomic requests and their duplicates grows
//! nothing: the bytes the process holds after 100 000 requests are those it held after
//! 1 000, and the responder's queue stays within its bound. One test in this binary: the
//! allocator that counts is global.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use common::*;
use ferroce_transport::engine::{DatagramMeta, Ecn, MemoryRegion, QpState};
use ferroce_transport::wire::icrc::Envelope;
use ferroce_transport::wire::{atomic, bth, packet, reth, OpCode, Psn, Qpn};

/// Bytes allocated and not yet freed, by anyone in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call goes to `System` unchanged; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as in `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Builds sealed request packets from `from` to B's QP, as a hostile peer would.
struct Forger {
    meta: DatagramMeta,
    envelope: Envelope,
    dest_qp: Qpn,
    buffer: Vec<u8>,
}

impl Forger {
    fn new(from: IpAddr, to: IpAddr, dest_qp: Qpn) -> Forger {
        let (IpAddr::V4(s), IpAddr::V4(t)) = (from, to) else {
            unreachable!("the pair is IPv4");
        };
        let src_port = 0xc123;
        Forger {
            meta: DatagramMeta {
                src: from,
                dst: to,
                src_port,
                ecn: Ecn::NotEct,
                ipv4_ident: None,
            },
            envelope: Envelope::ipv4(s, t, 0, src_port),
            dest_qp,
            buffer: vec![0; 256],
        }
    }

    fn repr(&self, opcode: OpCode, psn: Psn) -> packet::Repr {
        packet::Repr::new(bth::Repr {
            opcode,
            solicited: false,
            migreq: false,
            pad_count: 0,
            pkey: bth::DEFAULT_PKEY,
            fecn: false,
            becn: false,
            dest_qp: self.dest_qp,
            ack_req: true,
            psn,
        })
    }

    fn read(&mut self, psn: Psn, mr: &MemoryRegion, offset: u64, len: u32) -> &[u8] {
        let mut repr = self.repr(OpCode::RcReadRequest, psn);
        repr.reth = Some(reth::Repr {
            virtual_address: mr.addr + offset,
            rkey: mr.rkey,
            dma_length: len,
        });
        self.seal(&repr, &[])
    }

    fn fetch_add(&mut self, psn: Psn, mr: &MemoryRegion, offset: u64) -> &[u8] {
        let mut repr = self.repr(OpCode::RcFetchAdd, psn);
        repr.atomic_eth = Some(atomic::eth::Repr {
            virtual_address: mr.addr + offset,
            rkey: mr.rkey,
            swap_add: 1,
            compare: 0,
        });
        self.seal(&repr, &[])
    }

    fn write(&mut self, psn: Psn, mr: &MemoryRegion, data: &[u8]) -> &[u8] {
        let mut repr = self.repr(OpCode::RcWriteOnly, psn);
        repr.reth = Some(reth::Repr {
            virtual_address: mr.addr,
            rkey: mr.rkey,
            dma_length: data.len() as u32,
        });
        self.seal(&repr, data)
    }

    fn seal(&mut self, repr: &packet::Repr, payload: &[u8]) -> &[u8] {
        let len = packet::build(repr, payload, &self.envelope, &mut self.buffer).unwrap();
        &self.buffer[..len]
    }
}

/// Responses a queue may hold at most: ACKs folded past 256, plus a READ or atomic
/// answer and an ACK after it per responder resource.
const QUEUE_BOUND: usize = 256 + 2 * RESOURCES as usize + 1;
const RESOURCES: u8 = 4;

#[test]
fn a_flood_of_reads_atomics_and_duplicates_keeps_memory_flat() {
    let params = Params {
        max_rd_atomic: RESOURCES,
        ..Params::default()
    };
    let mut pair = Pair::new(QP_RC, params);
    let b = &mut pair.b;
    // 1 GiB a 40-byte READ request may ask for whole (calloc'd: no page is touched
    // until read).
    let huge = b.engine.reg_mr(NS, b.pd, 1 << 30, all_access()).unwrap();
    let small = b.mr;
    let mut forge = Forger::new(pair.a.addr, b.addr, b.qpn);
    let now = pair.now;
    let start = Psn::new(params.start_psn);

    // In sequence, as many READ/atomics as B granted: two READs of 1 GiB, two atomics.
    let whole = 1u32 << 30;
    let mut psn = start;
    let reads = [psn, psn.add(1 << 20)];
    b.engine
        .handle_datagram(now, forge.meta, forge.read(reads[0], &huge, 0, whole));
    psn = psn.add(1 << 20);
    b.engine
        .handle_datagram(now, forge.meta, forge.read(reads[1], &huge, 0, whole));
    psn = psn.add(1 << 20);
    let atomics = [psn, psn.next()];
    for p in atomics {
        b.engine
            .handle_datagram(now, forge.meta, forge.fetch_add(p, &small, 8));
    }
    psn = psn.add(2);

    // Then 100 000 more: duplicates of those READs (whole or in part) and atomics, old
    // WRITEs (re-ACKed), requests from the future (PSN sequence NAKs), and new WRITEs
    // with AckReq; a few responses leave now and then.
    let mut at_1k = 0;
    let mut most_queued = 0;
    for i in 0..100_000u32 {
        if i == 1_000 {
            at_1k = LIVE.load(Ordering::Relaxed);
        }
        let k = u64::from(i % 997);
        let meta = forge.meta;
        let bytes = match i % 6 {
            0 => forge.read(reads[(i / 6 % 2) as usize], &huge, 0, whole),
            1 => forge.read(
                reads[0].add(k as u32),
                &huge,
                k * 1024,
                whole - k as u32 * 1024,
            ),
            2 | 3 => forge.fetch_add(atomics[(i % 2) as usize], &small, 8),
            4 => forge.write(start.sub(1 + k as u32), &small, b"old"),
            _ if i % 12 == 5 => forge.write(psn.add(10), &small, b"future"),
            _ => {
                let bytes = forge.write(psn, &small, b"new");
                psn = psn.next();
                bytes
            }
        };
        b.engine.handle_datagram(now, meta, bytes);
        if i % 100 == 99 {
            for _ in 0..3 {
                let d = b.engine.poll_transmit(now).unwrap();
                b.engine.recycle(d.payload);
            }
        }
        let info = b.engine.query_qp(NS, b.qpn).unwrap();
        most_queued = most_queued.max(info.responses_queued);
    }
    let at_100k = LIVE.load(Ordering::Relaxed);
    let info = b.engine.query_qp(NS, b.qpn).unwrap();
    assert_eq!(
        info.state,
        QpState::Rts,
        "a compliant flood is not an error"
    );
    assert!(
        most_queued <= QUEUE_BOUND,
        "{most_queued} responses queued, bound {QUEUE_BOUND}"
    );
    let grown = at_100k - at_1k;
    eprintln!("live bytes: {at_1k} after 1k requests, {at_100k} after 100k; most responses queued: {most_queued}");
    assert!(
        grown < 64 * 1024,
        "{grown} bytes more live after 100k requests than after 1k"
    );
    let counters = *b.engine.counters();
    assert!(counters.duplicates > 60_000, "{counters:?}");
    assert_eq!(small_word(b, &small), 2, "each atomic ran once");

    // The two atomics are still unanswered (a READ stream is ahead of them); the two
    // READs are being answered as replays of their duplicates. So two new READs fit in
    // the four resources granted, and a third is one too many: NAK invalid request.
    for _ in 0..2 {
        b.engine
            .handle_datagram(now, forge.meta, forge.read(psn, &huge, 0, whole));
        psn = psn.add(1 << 20);
    }
    assert_eq!(b.state(), QpState::Rts);
    assert_eq!(b.engine.counters().naks_sent.invalid_request, 0);
    b.engine
        .handle_datagram(now, forge.meta, forge.read(psn, &huge, 0, 8));
    assert_eq!(b.engine.counters().naks_sent.invalid_request, 1);
    assert_eq!(b.state(), QpState::Err);
}

fn small_word(side: &mut Side, mr: &MemoryRegion) -> u64 {
    let mut word = [0u8; 8];
    side.engine
        .mr_read(NS, mr.lkey, mr.addr + 8, &mut word)
        .unwrap();
    u64::from_ne_bytes(word)
}

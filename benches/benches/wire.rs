//! ferroce-wire on the hot path: parsing with ICRC check (receive), building with ICRC
//! (send), the ICRC alone, and header-only parsing.
//!
//! Throughput is payload bytes, so figures compare across groups; the packets are RC
//! SEND Only (no extended header) and RDMA WRITE Only (RETH) as rxe sends them.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroce_wire::aeth::{self, AckSyndrome, CREDITS_INVALID};
use ferroce_wire::icrc::{self, Envelope};
use ferroce_wire::packet::{self, Repr};
use ferroce_wire::{bth, reth, OpCode, Psn, Qpn, Rkey};

const PAYLOAD_SIZES: [usize; 4] = [0, 64, 1024, 4096];
const ICRC_SIZES: [usize; 3] = [64, 1024, 4096];

/// Guest 10.77.0.11 to host 10.77.0.1 as in the interop harness (IP ID 0, DF).
const ENVELOPE: Envelope = Envelope::ipv4(
    Ipv4Addr::new(10, 77, 0, 11),
    Ipv4Addr::new(10, 77, 0, 1),
    0,
    49441,
);

fn bth(opcode: OpCode) -> bth::Repr {
    bth::Repr {
        opcode,
        solicited: false,
        migreq: false,
        pad_count: 0,
        pkey: bth::DEFAULT_PKEY,
        fecn: false,
        becn: false,
        dest_qp: Qpn::new(0x11),
        ack_req: true,
        psn: Psn::new(0x92_9d02),
    }
}

fn send_only() -> Repr {
    Repr::new(bth(OpCode::RcSendOnly))
}

fn write(opcode: OpCode, length: usize) -> Repr {
    let mut repr = Repr::new(bth(opcode));
    repr.reth = Some(reth::Repr {
        virtual_address: 0x5557_def3_4000,
        rkey: Rkey(0x24f),
        dma_length: length as u32,
    });
    repr
}

fn ack() -> Repr {
    let mut repr = Repr::new(bth(OpCode::RcAcknowledge));
    repr.aeth = Some(aeth::Repr {
        syndrome: AckSyndrome::Ack {
            credits: CREDITS_INVALID,
        },
        msn: 1,
    });
    repr
}

/// A whole packet (UDP payload) with a payload of `size` bytes and a valid ICRC.
fn built(repr: &Repr, size: usize) -> Vec<u8> {
    let payload = vec![0x7b; size];
    let mut buf = vec![0u8; packet::buffer_len(repr, size).expect("known opcode")];
    let len = packet::build(repr, &payload, &ENVELOPE, &mut buf).expect("buffer fits");
    buf.truncate(len);
    buf
}

/// The configurations the receive and send groups run: name and headers.
fn configurations(size: usize) -> [(&'static str, Repr); 2] {
    [
        ("send_only", send_only()),
        ("write_only", write(OpCode::RcWriteOnly, size)),
    ]
}

fn parse_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_verify");
    for size in PAYLOAD_SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, repr) in configurations(size) {
            let bytes = built(&repr, size);
            group.bench_with_input(BenchmarkId::new(name, size), &bytes[..], |b, bytes| {
                b.iter(|| {
                    let bytes = black_box(bytes);
                    let parsed = packet::parse(bytes).expect("valid packet");
                    assert!(icrc::verify(&ENVELOPE, bytes).expect("long enough"));
                    parsed.payload.len()
                })
            });
        }
    }
    group.finish();
}

/// `size` payload bytes at the same offset within a 4 KiB page as `destination`.
///
/// Where the payload lands decides the copy's speed on this machine: glibc's memcpy
/// (`rep movsb` on AMD Zen) runs ~30x slower when the destination is 1-31 bytes past
/// the source modulo 4096, which is exactly what page-aligned source and packet buffers
/// give with a 12- or 28-byte header in front. The bench pins the placement so its
/// figures measure `build`, not where the allocator put two vectors.
fn payload_like(destination: *const u8, size: usize) -> (Vec<u8>, usize) {
    let storage = vec![0x7b; size + 4096];
    let offset = (destination as usize).wrapping_sub(storage.as_ptr() as usize) % 4096;
    (storage, offset)
}

fn build_icrc(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_icrc");
    for size in PAYLOAD_SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, repr) in configurations(size) {
            let mut buf = vec![0u8; packet::buffer_len(&repr, size).expect("known opcode")];
            let header_len = repr.header_len().expect("known opcode");
            let (storage, offset) = payload_like(buf[header_len..].as_ptr(), size);
            let payload = &storage[offset..offset + size];
            group.bench_with_input(BenchmarkId::new(name, size), &repr, |b, repr| {
                b.iter(|| {
                    packet::build(black_box(repr), black_box(payload), &ENVELOPE, &mut buf)
                        .expect("buffer fits")
                })
            });
        }
    }
    group.finish();
}

fn icrc_alone(c: &mut Criterion) {
    let mut group = c.benchmark_group("icrc");
    for size in ICRC_SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let bytes = built(&send_only(), size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &bytes[..], |b, bytes| {
            b.iter(|| icrc::compute(&ENVELOPE, black_box(bytes)).expect("long enough"))
        });
    }
    group.finish();
}

fn parse_headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_headers");
    let packets = [
        ("ack", built(&ack(), 0)),
        (
            "write_first",
            built(&write(OpCode::RcWriteFirst, 4096), 1024),
        ),
    ];
    for (name, bytes) in &packets {
        group.bench_with_input(*name, &bytes[..], |b, bytes| {
            // `parse` is not inlined across crates, so it writes the whole `Parsed`;
            // returning a field of it spares criterion a copy of all 160 bytes.
            b.iter(|| {
                let parsed = packet::parse(black_box(bytes)).expect("valid packet");
                (parsed.repr.bth.psn, parsed.payload.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse_verify, build_icrc, icrc_alone, parse_headers);
criterion_main!(benches);

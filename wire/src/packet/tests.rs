//! Whole-packet vectors: real rxe captures, and hand-made ones for what the captures
//! lack (IPv6, pad bytes, immediate data, invalidate, CNP) whose ICRCs come from the
//! harness's independent Python checker (`shared/interop/icrc_check.py`).

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use smoltcp::wire::{Ipv4Address, Ipv6Address};

use super::*;
use crate::aeth::{AckSyndrome, CREDITS_INVALID};
use crate::icrc::{IpFields, IPV4_DONT_FRAG};
use crate::OpCode;
use crate::{Psn, Qpn, Rkey};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn v4(src: [u8; 4], dst: [u8; 4], ident: u16, src_port: u16) -> Envelope {
    Envelope {
        ip: IpFields::V4 {
            src: Ipv4Address::from(src),
            dst: Ipv4Address::from(dst),
            ident,
            flags_frag: IPV4_DONT_FRAG,
        },
        src_port,
        dst_port: 4791,
    }
}

/// Parses, checks the ICRC, re-emits headers + payload, and compares every byte.
fn round_trip(envelope: &Envelope, bytes: &[u8]) -> Parsed<'static> {
    let parsed = parse(bytes).unwrap();
    assert_eq!(
        icrc::verify(envelope, bytes),
        Ok(true),
        "ICRC of {}",
        parsed.repr
    );
    let mut out = vec![0u8; bytes.len()];
    let len = build(&parsed.repr, parsed.payload, envelope, &mut out).unwrap();
    assert_eq!(&out[..len], bytes);
    let leaked: &'static [u8] = Vec::leak(bytes.to_vec());
    parse(leaked).unwrap()
}

#[test]
fn rxe_send_only_and_host_ack() {
    // pcaps/host_demo_rc_pingpong.pcap: guest rxe → host, RC Send Only, 64 bytes.
    let send = hex(concat!(
        "0400ffff00000123805405747b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b",
        "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7be495371e"
    ));
    let p = round_trip(&v4([10, 77, 0, 11], [10, 77, 0, 1], 0xcd1e, 54099), &send);
    assert_eq!(p.repr.bth.opcode, OpCode::RcSendOnly);
    assert_eq!(p.repr.bth.dest_qp, Qpn::new(0x123));
    assert_eq!(p.repr.bth.psn, Psn::new(0x540574));
    assert!(p.repr.bth.ack_req);
    assert_eq!(p.payload, &[0x7b; 64][..]);

    // The host's ACK back (IP ID 0, source port 4791).
    let ack = hex("1100ffff00000011005405741f00000185b1e7a3");
    let p = round_trip(&v4([10, 77, 0, 1], [10, 77, 0, 11], 0, 4791), &ack);
    assert_eq!(
        p.repr.aeth,
        Some(aeth::Repr {
            syndrome: AckSyndrome::Ack {
                credits: CREDITS_INVALID
            },
            msn: 1
        })
    );
    assert!(p.payload.is_empty());
}

#[test]
fn rxe_atomics_and_read_request() {
    // pcaps/atomic_bw.pcap: Compare Swap and an Atomic Acknowledge.
    let cas = hex(
        "1300ffff0000001280d8783600005635422620000000034b00000000000000000000000000000000bc1bf11a",
    );
    let p = round_trip(&v4([10, 77, 0, 11], [10, 77, 0, 12], 0x8fe8, 49476), &cas);
    let a = p.repr.atomic_eth.unwrap();
    assert_eq!(a.virtual_address, 0x5635_4226_2000);
    assert_eq!(a.rkey, Rkey(0x34b));
    let ack = hex("1200ffff00000011003669aa1f00000174a7ed0f10255356e18b346b");
    let p = round_trip(&v4([10, 77, 0, 12], [10, 77, 0, 11], 0xfcc6, 49441), &ack);
    assert!(p.repr.atomic_ack_eth.is_some());

    // pcaps/read_bw.pcap: a 2500-byte READ request.
    let read = hex("0c00ffff000000118070f73e000055b74a9940000000025d000009c41f58c2e3");
    let p = round_trip(&v4([10, 77, 0, 11], [10, 77, 0, 12], 0xcfb1, 49441), &read);
    assert_eq!(p.repr.reth.unwrap().dma_length, 2500);
}

#[test]
fn ipv6_uc_send_with_immediate_and_three_pad_bytes() {
    let bytes = hex("25b0ffff00000abc000000010102030468656c6c6f00000083fec9ea");
    let envelope = Envelope::ipv6(
        Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
        0xc123,
    );
    let p = round_trip(&envelope, &bytes);
    assert_eq!(p.repr.bth.opcode, OpCode::UcSendOnlyImm);
    assert!(p.repr.bth.solicited);
    assert_eq!(p.repr.bth.pad_count, 3);
    assert_eq!(p.repr.imm, Some(imm::Repr { imm: 0x0102_0304 }));
    assert_eq!(p.payload, b"hello");
}

#[test]
fn send_with_invalidate_one_pad_byte() {
    let bytes = hex("1710ffff0000001180000010000012076162630034352b53");
    let p = round_trip(&v4([10, 0, 0, 1], [10, 0, 0, 2], 0, 0xc000), &bytes);
    assert_eq!(p.repr.ieth, Some(ieth::Repr { rkey: Rkey(0x1207) }));
    assert_eq!(p.payload, b"abc");
}

#[test]
fn write_with_immediate_two_pad_bytes() {
    let bytes = hex(concat!(
        "0b20ffff000000118000001100000000000010000000005500000002",
        "deadbeef7879000069dd1ea6"
    ));
    let p = round_trip(&v4([10, 0, 0, 1], [10, 0, 0, 2], 0, 0xc000), &bytes);
    assert_eq!(p.repr.reth.unwrap().rkey, Rkey(0x55));
    assert_eq!(p.repr.imm.unwrap().imm, 0xdead_beef);
    assert_eq!(p.payload, b"xy");
}

#[test]
fn cnp() {
    let bytes = hex("8100ffff4000001200000000000000000000000000000000000000007a6fd95d");
    let p = round_trip(&v4([10, 0, 0, 1], [10, 0, 0, 2], 0, 0xc000), &bytes);
    assert_eq!(p.repr.bth.opcode, OpCode::Cnp);
    assert!(p.repr.bth.becn);
}

#[test]
fn malformed_packets_are_refused() {
    let ack = hex("1100ffff00000011005405741f00000185b1e7a3");
    // Payload on an ACK.
    let mut long = ack.clone();
    long.splice(16..16, [0u8; 4]);
    assert_eq!(parse(&long).err(), Some(Error::Malformed));
    // Not a multiple of 4.
    let mut odd = ack.clone();
    odd.push(0);
    assert_eq!(parse(&odd).err(), Some(Error::Malformed));
    // Pad count larger than the body.
    let mut padded = ack.clone();
    padded[1] = 0x30;
    assert_eq!(parse(&padded).err(), Some(Error::Malformed));
    // Missing AETH.
    assert_eq!(parse(&ack[..16]).err(), Some(Error::Truncated));
    // Unknown opcode.
    let mut rd = ack.clone();
    rd[0] = 0x40;
    assert_eq!(parse(&rd).err(), Some(Error::UnknownOpcode));
    // Emitting headers that do not match the opcode.
    let mut repr = parse(&ack).unwrap().repr;
    repr.aeth = None;
    assert_eq!(repr.emit(&mut [0u8; 64]), Err(Error::Malformed));
}

#[test]
fn segmentation_rule() {
    let mut repr = Repr::new(bth::Repr {
        opcode: OpCode::RcSendMiddle,
        solicited: false,
        migreq: false,
        pad_count: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        dest_qp: Qpn::new(1),
        ack_req: false,
        psn: Psn::new(0),
    });
    let env = v4([1, 1, 1, 1], [2, 2, 2, 2], 0, 1);
    let mut buf = [0u8; 1100];
    let n = build(&repr, &[0u8; 1024], &env, &mut buf).unwrap();
    let p = parse(&buf[..n]).unwrap();
    assert_eq!(p.check_segment(1024), Ok(()));
    assert_eq!(p.check_segment(4096), Err(Error::Malformed));
    repr.bth.opcode = OpCode::RcSendLast;
    let n = build(&repr, &[], &env, &mut buf).unwrap();
    assert_eq!(
        parse(&buf[..n]).unwrap().check_segment(1024),
        Err(Error::Malformed)
    );
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = parse(&bytes) {
            // Whatever parses re-emits to the same headers.
            let mut out = vec![0u8; bytes.len() + 8];
            let env = v4([1, 2, 3, 4], [5, 6, 7, 8], 0, 1);
            let n = build(&p.repr, p.payload, &env, &mut out).unwrap();
            prop_assert_eq!(parse(&out[..n]).unwrap().repr.bth.opcode, p.repr.bth.opcode);
            prop_assert_eq!(parse(&out[..n]).unwrap().payload, p.payload);
        }
    }

    #[test]
    fn truncations_and_bit_flips_are_caught(cut in 0usize..28, bit in 0usize..(28 * 8)) {
        let ack = hex("1200ffff00000011003669aa1f00000174a7ed0f10255356e18b346b");
        let env = v4([10, 77, 0, 12], [10, 77, 0, 11], 0xfcc6, 49441);
        prop_assert!(parse(&ack[..cut]).is_err());
        let mut flipped = ack.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        // Byte 4 of the BTH (FECN/BECN/reserved) is the only part the ICRC ignores.
        if bit / 8 != 4 {
            prop_assert_ne!(icrc::verify(&env, &flipped), Ok(true));
        }
    }
}

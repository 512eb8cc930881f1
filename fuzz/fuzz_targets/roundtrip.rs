//! parse → build → parse: a packet ferroce accepts comes back with the same headers and
//! payload, and the rebuilt bytes equal the input except where the sender has no choice
//! the parser keeps (ICRC, reserved bits, pad bytes, the CNP body).
#![no_main]

use std::net::Ipv4Addr;

use ferroce_wire::icrc::{self, Envelope};
use ferroce_wire::packet;
use ferroce_wire::{OpCode, ICRC_LEN};
use libfuzzer_sys::fuzz_target;

const ENVELOPE: Envelope = Envelope::ipv4(
    Ipv4Addr::new(10, 77, 0, 11),
    Ipv4Addr::new(10, 77, 0, 1),
    0,
    49441,
);

/// BTH byte 4: FECN, BECN and six reserved bits.
const BTH_ECN_BYTE: usize = 4;
/// BTH byte 8: AckReq and seven reserved bits.
const BTH_ACK_REQ_BYTE: usize = 8;
/// The DETH, when present, is the first extended header; its byte 4 is reserved.
const DETH_RESERVED_BYTE: usize = 12 + 4;
/// The 16 reserved bytes of a CNP follow the BTH.
const CNP_BODY: std::ops::Range<usize> = 12..28;

/// `bytes` with every bit that a parse → build cycle may change cleared. `wire_pad` is
/// the pad count of the original packet (equal in both, since build derives it from
/// the payload length and the parser only accepts lengths that are multiples of 4).
fn normalized(bytes: &[u8], has_deth: bool, wire_pad: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let end = out.len() - ICRC_LEN;
    out[end..].fill(0);
    out[end - wire_pad..end].fill(0);
    out[BTH_ECN_BYTE] &= 0xc0;
    out[BTH_ACK_REQ_BYTE] &= 0x80;
    if has_deth {
        out[DETH_RESERVED_BYTE] = 0;
    }
    if OpCode::from(out[0]) == OpCode::Cnp {
        out[CNP_BODY].fill(0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = packet::parse(data) else {
        return;
    };
    let wire_pad = usize::from((data[1] >> 4) & 0x3);

    // Room to spare: build must use exactly the input's length.
    let mut out = vec![0u8; data.len() + 8];
    let len = packet::build(&parsed.repr, parsed.payload, &ENVELOPE, &mut out)
        .expect("a parsed packet builds");
    assert_eq!(len, data.len(), "rebuilt length");
    let out = &out[..len];
    assert!(
        packet::build(
            &parsed.repr,
            parsed.payload,
            &ENVELOPE,
            &mut vec![0u8; len - 1]
        )
        .is_err(),
        "build into a short buffer fails"
    );

    let reparsed = packet::parse(out).expect("a built packet parses");
    assert_eq!(reparsed.repr, parsed.repr, "headers");
    assert_eq!(reparsed.payload, parsed.payload, "payload");
    assert_eq!(
        icrc::verify(&ENVELOPE, out),
        Ok(true),
        "build writes a valid ICRC"
    );

    let has_deth = parsed.repr.deth.is_some();
    assert_eq!(
        normalized(out, has_deth, wire_pad),
        normalized(data, has_deth, wire_pad),
        "rebuilt bytes"
    );
    // What build writes where the input may hold anything: zeros.
    let end = len - ICRC_LEN;
    assert!(out[end - wire_pad..end].iter().all(|&b| b == 0), "pad");
    assert_eq!(out[BTH_ECN_BYTE] & 0x3f, 0, "BTH resv6");
    assert_eq!(out[BTH_ACK_REQ_BYTE] & 0x7f, 0, "BTH resv7");
});

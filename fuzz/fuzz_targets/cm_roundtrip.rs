//! CM MADs: parse → emit → parse gives the same `Repr`, and emitting that again gives
//! the same bytes (reserved bits and unused ARI bytes are the only input bytes the
//! first emit may change). The RDMA CM IP header in a REQ's or SIDR_REQ's private
//! data goes round the same way.
//!
//! The input is a MAD, or a whole RoCEv2 UDP payload to QP1 (as the seed corpus from
//! the captures holds) whose payload is then the MAD.
#![no_main]

use ferroce_wire::cm::{self, Message};
use ferroce_wire::{cma, mad, packet, Qpn};
use libfuzzer_sys::fuzz_target;

fn cma_round_trip(private_data: &[u8]) {
    let Ok(view) = cma::Packet::new_checked(private_data) else {
        return;
    };
    let Ok(repr) = cma::Repr::parse(&view) else {
        return;
    };
    let mut out = [0u8; cma::HEADER_LEN];
    repr.emit(&mut cma::Packet::new_unchecked(&mut out[..]));
    let again = cma::Repr::parse(&cma::Packet::new_unchecked(&out[..])).expect("re-parses");
    assert_eq!(again, repr);
}

fuzz_target!(|data: &[u8]| {
    let bytes = match packet::parse(data) {
        Ok(parsed) if parsed.repr.bth.dest_qp == Qpn::GSI => parsed.payload,
        _ => data,
    };
    let Ok(view) = mad::Packet::new_checked(bytes) else {
        return;
    };
    let Ok(repr) = cm::Repr::parse(&view) else {
        return;
    };
    let mut out = [0u8; mad::MAD_LEN];
    repr.emit(&mut mad::Packet::new_unchecked(&mut out[..]))
        .expect("a parsed CM MAD emits");
    // The header comes back as it was but for its reserved word (bytes 18-19).
    assert_eq!(out[..18], bytes[..18], "header bytes");
    assert_eq!(
        out[20..mad::HEADER_LEN],
        bytes[20..mad::HEADER_LEN],
        "header bytes"
    );
    let again = cm::Repr::parse(&mad::Packet::new_checked(&out[..]).expect("long enough"))
        .expect("an emitted CM MAD parses");
    assert_eq!(again, repr);
    let mut twice = [0u8; mad::MAD_LEN];
    again
        .emit(&mut mad::Packet::new_unchecked(&mut twice[..]))
        .expect("emits again");
    assert_eq!(twice, out, "emit is a fixed point");

    match repr.message {
        Message::Req(req) => cma_round_trip(req.private_data),
        Message::SidrReq(req) => cma_round_trip(req.private_data),
        _ => {}
    }
});

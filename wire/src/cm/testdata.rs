//! The CM MADs of `testdata/pcaps/rping_cm.pcap`: rping from 10.77.0.11 to rxe on
//! 10.77.0.12, port 7174, connecting, moving data and disconnecting.

use std::vec::Vec;

use crate::{packet, Qpn};

const RPING_CM: &[u8] = include_bytes!("../../../testdata/pcaps/rping_cm.pcap");

/// Index of the REQ in [`rping_mads`].
pub const REQ: usize = 0;
/// Index of the REP.
pub const REP: usize = 1;
/// Index of the RTU.
pub const RTU: usize = 2;
/// Index of the DREQ.
pub const DREQ: usize = 3;
/// Index of the DREP.
pub const DREP: usize = 4;

/// The MADs sent to QP1 in the capture, in order: REQ, REP, RTU, DREQ, DREP.
pub fn rping_mads() -> Vec<&'static [u8]> {
    const PCAP_HEADER: usize = 24;
    const RECORD_HEADER: usize = 16;
    const ETHERNET: usize = 14;
    const UDP: usize = 8;
    let mut mads = Vec::new();
    let mut at = PCAP_HEADER;
    while at + RECORD_HEADER <= RPING_CM.len() {
        let b = &RPING_CM[at + 8..at + 12];
        let captured = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let frame = &RPING_CM[at + RECORD_HEADER..at + RECORD_HEADER + captured];
        at += RECORD_HEADER + captured;
        let ip = &frame[ETHERNET..];
        let udp = &ip[usize::from(ip[0] & 0xf) * 4..];
        let parsed = packet::parse(&udp[UDP..]).expect("a RoCEv2 packet");
        if parsed.repr.bth.dest_qp == Qpn::GSI {
            mads.push(parsed.payload);
        }
    }
    assert_eq!(mads.len(), 5, "the capture holds five CM MADs");
    mads
}

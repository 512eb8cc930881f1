//! Base Transport Header: the 12 bytes that start every RoCEv2 UDP payload.
//!
//! ```text
//!  0        1                 2                 4
//! | OpCode | SE M Pad TVer   | P_Key           |
//! | F B resv6 | DestQP (24)                    |
//! | A resv7   | PSN (24)                       |
//! ```

use core::fmt;

use crate::field::{self, Field};
use crate::{Error, OpCode, Psn, Qpn, Result};

/// Length of the BTH.
pub const HEADER_LEN: usize = 12;

/// The P_Key every RoCEv2 peer uses by default (full-member default partition).
pub const DEFAULT_PKEY: u16 = 0xffff;

mod fields {
    use super::Field;
    pub const OPCODE: usize = 0;
    /// SE (bit 7), M (bit 6), PadCnt (bits 5-4), TVer (bits 3-0).
    pub const FLAGS: usize = 1;
    pub const PKEY: Field = 2..4;
    /// FECN (bit 7), BECN (bit 6), six reserved bits.
    pub const ECN: usize = 4;
    pub const DEST_QP: Field = 5..8;
    /// AckReq (bit 7), seven reserved bits.
    pub const ACK_REQ: usize = 8;
    pub const PSN: Field = 9..12;
}

header_view!("a BTH", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The opcode.
    pub fn opcode(&self) -> OpCode {
        OpCode::from(self.buffer.as_ref()[fields::OPCODE])
    }

    /// Solicited event.
    pub fn solicited(&self) -> bool {
        self.buffer.as_ref()[fields::FLAGS] & 0x80 != 0
    }

    /// Migration state.
    pub fn migreq(&self) -> bool {
        self.buffer.as_ref()[fields::FLAGS] & 0x40 != 0
    }

    /// Number of pad bytes (0-3) after the payload.
    pub fn pad_count(&self) -> u8 {
        (self.buffer.as_ref()[fields::FLAGS] >> 4) & 0x3
    }

    /// Transport header version (0).
    pub fn tver(&self) -> u8 {
        self.buffer.as_ref()[fields::FLAGS] & 0xf
    }

    /// Partition key.
    pub fn pkey(&self) -> u16 {
        let b = &self.buffer.as_ref()[fields::PKEY];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Forward ECN: congestion seen on the way here.
    pub fn fecn(&self) -> bool {
        self.buffer.as_ref()[fields::ECN] & 0x80 != 0
    }

    /// Backward ECN: the peer saw congestion.
    pub fn becn(&self) -> bool {
        self.buffer.as_ref()[fields::ECN] & 0x40 != 0
    }

    /// The six reserved bits after FECN/BECN (zero on send, ignored on receive).
    pub fn resv6(&self) -> u8 {
        self.buffer.as_ref()[fields::ECN] & 0x3f
    }

    /// Destination queue pair.
    pub fn dest_qp(&self) -> Qpn {
        // One 32-bit load of bytes 4..8; `Qpn::new` keeps the low 24 bits.
        Qpn::new(field::get_u32(
            &self.buffer.as_ref()[fields::ECN..fields::DEST_QP.end],
        ))
    }

    /// Acknowledge request.
    pub fn ack_req(&self) -> bool {
        self.buffer.as_ref()[fields::ACK_REQ] & 0x80 != 0
    }

    /// The seven reserved bits after AckReq (zero on send, ignored on receive).
    pub fn resv7(&self) -> u8 {
        self.buffer.as_ref()[fields::ACK_REQ] & 0x7f
    }

    /// Packet sequence number.
    pub fn psn(&self) -> Psn {
        // One 32-bit load of bytes 8..12; `Psn::new` keeps the low 24 bits.
        Psn::new(field::get_u32(
            &self.buffer.as_ref()[fields::ACK_REQ..fields::PSN.end],
        ))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the opcode.
    pub fn set_opcode(&mut self, op: OpCode) {
        self.buffer.as_mut()[fields::OPCODE] = op.into();
    }

    /// Sets SE, M, PadCnt and TVer.
    pub fn set_flags(&mut self, solicited: bool, migreq: bool, pad_count: u8, tver: u8) {
        self.buffer.as_mut()[fields::FLAGS] = (u8::from(solicited) << 7)
            | (u8::from(migreq) << 6)
            | ((pad_count & 0x3) << 4)
            | (tver & 0xf);
    }

    /// Sets the partition key.
    pub fn set_pkey(&mut self, pkey: u16) {
        self.buffer.as_mut()[fields::PKEY].copy_from_slice(&pkey.to_be_bytes());
    }

    /// Sets FECN and BECN (reserved bits cleared).
    pub fn set_ecn(&mut self, fecn: bool, becn: bool) {
        self.buffer.as_mut()[fields::ECN] = (u8::from(fecn) << 7) | (u8::from(becn) << 6);
    }

    /// Sets the destination queue pair.
    pub fn set_dest_qp(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::DEST_QP], qpn.value());
    }

    /// Sets AckReq (reserved bits cleared).
    pub fn set_ack_req(&mut self, ack_req: bool) {
        self.buffer.as_mut()[fields::ACK_REQ] = u8::from(ack_req) << 7;
    }

    /// Sets the packet sequence number.
    pub fn set_psn(&mut self, psn: Psn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::PSN], psn.value());
    }
}

/// A parsed BTH.
///
/// Reserved bits are not kept: `emit` writes them as zero, as the sender must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Opcode.
    pub opcode: OpCode,
    /// Solicited event.
    pub solicited: bool,
    /// Migration state (MigReq).
    pub migreq: bool,
    /// Pad bytes after the payload (0-3).
    pub pad_count: u8,
    /// Partition key.
    pub pkey: u16,
    /// Forward ECN.
    pub fecn: bool,
    /// Backward ECN.
    pub becn: bool,
    /// Destination QP.
    pub dest_qp: Qpn,
    /// Acknowledge request.
    pub ack_req: bool,
    /// Packet sequence number.
    pub psn: Psn,
}

impl Repr {
    /// Reads a BTH. Fails on a transport header version other than 0 (rxe drops those).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.tver() != 0 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            opcode: packet.opcode(),
            solicited: packet.solicited(),
            migreq: packet.migreq(),
            pad_count: packet.pad_count(),
            pkey: packet.pkey(),
            fecn: packet.fecn(),
            becn: packet.becn(),
            dest_qp: packet.dest_qp(),
            ack_req: packet.ack_req(),
            psn: packet.psn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_opcode(self.opcode);
        packet.set_flags(self.solicited, self.migreq, self.pad_count, 0);
        packet.set_pkey(self.pkey);
        packet.set_ecn(self.fecn, self.becn);
        packet.set_dest_qp(self.dest_qp);
        packet.set_ack_req(self.ack_req);
        packet.set_psn(self.psn);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BTH {} qp={} psn={}",
            self.opcode, self.dest_qp, self.psn
        )?;
        if self.ack_req {
            f.write_str(" A")?;
        }
        if self.solicited {
            f.write_str(" SE")?;
        }
        if self.fecn {
            f.write_str(" FECN")?;
        }
        if self.becn {
            f.write_str(" BECN")?;
        }
        if self.pad_count != 0 {
            write!(f, " pad={}", self.pad_count)?;
        }
        if self.pkey != DEFAULT_PKEY {
            write!(f, " pkey={:#06x}", self.pkey)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTH of an RC Send First from `pcaps/rc_pingpong.pcap` (QP 0x11, AckReq clear).
    const SEND_FIRST: [u8; 12] = [
        0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x11, 0x00, 0x92, 0x9d, 0x02,
    ];

    #[test]
    fn parses_captured_bth() {
        let repr = Repr::parse(&Packet::new_checked(&SEND_FIRST[..]).unwrap()).unwrap();
        assert_eq!(repr.opcode, OpCode::RcSendFirst);
        assert_eq!(repr.pkey, DEFAULT_PKEY);
        assert_eq!(repr.dest_qp, Qpn::new(0x11));
        assert_eq!(repr.psn, Psn::new(0x929d02));
        assert!(!repr.ack_req);
        let mut out = [0u8; 12];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, SEND_FIRST);
    }

    #[test]
    fn every_field_round_trips() {
        let repr = Repr {
            opcode: OpCode::UdSendOnlyImm,
            solicited: true,
            migreq: true,
            pad_count: 3,
            pkey: 0x8001,
            fecn: true,
            becn: true,
            dest_qp: Qpn::new(0xabcdef),
            ack_req: true,
            psn: Psn::new(0x123456),
        };
        let mut out = [0u8; 12];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(
            out,
            [0x65, 0xf0, 0x80, 0x01, 0xc0, 0xab, 0xcd, 0xef, 0x80, 0x12, 0x34, 0x56]
        );
        assert_eq!(Repr::parse(&Packet::new_unchecked(&out[..])), Ok(repr));
    }

    #[test]
    fn rejects_short_and_bad_version() {
        assert_eq!(
            Packet::new_checked(&SEND_FIRST[..11]).err(),
            Some(Error::Truncated)
        );
        let mut bad = SEND_FIRST;
        bad[1] = 0x01;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bad[..])),
            Err(Error::Malformed)
        );
    }
}

//! ACK Extended Transport Header: acknowledges, or refuses, requests on RC.
//!
//! ```text
//! | Syndrome (8) | MSN (24) |
//! ```
//! The syndrome's bits 6-5 say ACK (00), RNR NAK (01) or NAK (11); 10 is reserved.
//! The low five bits are the credit count, the RNR timer code or the NAK code.

use core::fmt;

use crate::field::{self, Field};
use crate::{Error, Result};

/// Length of the AETH.
pub const HEADER_LEN: usize = 4;

/// Credit count that means "no end-to-end flow control" (what rxe sends).
pub const CREDITS_INVALID: u8 = 0x1f;

mod fields {
    use super::Field;
    pub const SYNDROME: usize = 0;
    pub const MSN: Field = 1..4;
}

/// Why a responder refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NakCode {
    /// PSN sequence error: the responder expected an earlier PSN.
    PsnSequenceError,
    /// Invalid request (bad opcode sequence, misaligned atomic, too long…).
    InvalidRequest,
    /// Remote access error (bad key, bounds or permissions).
    RemoteAccessError,
    /// Remote operational error.
    RemoteOperationalError,
    /// Invalid RD request.
    InvalidRdRequest,
    /// A reserved NAK code.
    Reserved(u8),
}

impl From<u8> for NakCode {
    #[inline]
    fn from(value: u8) -> NakCode {
        match value & 0x1f {
            0 => NakCode::PsnSequenceError,
            1 => NakCode::InvalidRequest,
            2 => NakCode::RemoteAccessError,
            3 => NakCode::RemoteOperationalError,
            4 => NakCode::InvalidRdRequest,
            other => NakCode::Reserved(other),
        }
    }
}

impl From<NakCode> for u8 {
    fn from(code: NakCode) -> u8 {
        match code {
            NakCode::PsnSequenceError => 0,
            NakCode::InvalidRequest => 1,
            NakCode::RemoteAccessError => 2,
            NakCode::RemoteOperationalError => 3,
            NakCode::InvalidRdRequest => 4,
            NakCode::Reserved(other) => other & 0x1f,
        }
    }
}

/// The meaning of an AETH syndrome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckSyndrome {
    /// Positive acknowledge with an end-to-end credit count (0x1f: not used).
    Ack {
        /// Credit count.
        credits: u8,
    },
    /// Receiver not ready: retry after the time this IBA timer code names.
    RnrNak {
        /// RNR timer code (0-31).
        timer: u8,
    },
    /// Negative acknowledge.
    Nak(NakCode),
}

impl AckSyndrome {
    /// The syndrome byte.
    pub fn to_byte(self) -> u8 {
        match self {
            AckSyndrome::Ack { credits } => credits & 0x1f,
            AckSyndrome::RnrNak { timer } => 0x20 | (timer & 0x1f),
            AckSyndrome::Nak(code) => 0x60 | u8::from(code),
        }
    }

    /// Reads a syndrome byte; the reserved class (`10`) and bit 7 set are malformed.
    #[inline]
    pub fn from_byte(byte: u8) -> Result<AckSyndrome> {
        let value = byte & 0x1f;
        match byte >> 5 {
            0b000 => Ok(AckSyndrome::Ack { credits: value }),
            0b001 => Ok(AckSyndrome::RnrNak { timer: value }),
            0b011 => Ok(AckSyndrome::Nak(NakCode::from(value))),
            _ => Err(Error::Malformed),
        }
    }

    /// True for a plain ACK.
    pub fn is_ack(self) -> bool {
        matches!(self, AckSyndrome::Ack { .. })
    }
}

header_view!("an AETH", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The raw syndrome byte.
    pub fn syndrome(&self) -> u8 {
        self.buffer.as_ref()[fields::SYNDROME]
    }

    /// Message sequence number: how many messages the responder has completed (mod 2^24).
    pub fn msn(&self) -> u32 {
        field::get_u24(&self.buffer.as_ref()[fields::MSN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the raw syndrome byte.
    pub fn set_syndrome(&mut self, syndrome: u8) {
        self.buffer.as_mut()[fields::SYNDROME] = syndrome;
    }

    /// Sets the MSN (low 24 bits).
    pub fn set_msn(&mut self, msn: u32) {
        field::set_u24(&mut self.buffer.as_mut()[fields::MSN], msn & 0x00ff_ffff);
    }
}

/// A parsed AETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// ACK, RNR NAK or NAK.
    pub syndrome: AckSyndrome,
    /// Message sequence number (24 bits).
    pub msn: u32,
}

impl Repr {
    /// Reads an AETH.
    #[inline(always)]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            syndrome: AckSyndrome::from_byte(packet.syndrome())?,
            msn: packet.msn(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_syndrome(self.syndrome.to_byte());
        packet.set_msn(self.msn);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.syndrome {
            AckSyndrome::Ack { credits } => write!(f, "AETH ACK credits={credits:#04x}")?,
            AckSyndrome::RnrNak { timer } => write!(f, "AETH RNR-NAK timer={timer}")?,
            AckSyndrome::Nak(code) => write!(f, "AETH NAK {code:?}")?,
        }
        write!(f, " msn={}", self.msn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_ack_round_trips() {
        // ACK, credits invalid, MSN 1 (pcaps/host_demo_rc_pingpong.pcap).
        let bytes = [0x1f, 0x00, 0x00, 0x01];
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                syndrome: AckSyndrome::Ack {
                    credits: CREDITS_INVALID
                },
                msn: 1
            }
        );
        let mut out = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn syndromes_as_the_spec_encodes_them() {
        assert_eq!(AckSyndrome::RnrNak { timer: 12 }.to_byte(), 0x2c);
        assert_eq!(AckSyndrome::Nak(NakCode::PsnSequenceError).to_byte(), 0x60);
        assert_eq!(AckSyndrome::Nak(NakCode::InvalidRequest).to_byte(), 0x61);
        assert_eq!(AckSyndrome::Nak(NakCode::RemoteAccessError).to_byte(), 0x62);
        assert_eq!(
            AckSyndrome::Nak(NakCode::RemoteOperationalError).to_byte(),
            0x63
        );
        assert_eq!(AckSyndrome::Nak(NakCode::InvalidRdRequest).to_byte(), 0x64);
        for b in 0..=255u8 {
            match AckSyndrome::from_byte(b) {
                Ok(s) => assert_eq!(s.to_byte(), b),
                Err(e) => assert!(b & 0x80 != 0 || b >> 5 == 0b010, "{b:#x} {e}"),
            }
        }
    }
}

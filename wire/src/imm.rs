//! Immediate Data: 32 bits the requester hands to the responder's completion.

use core::fmt;

use crate::field::{self, Field};
use crate::Result;

/// Length of the ImmDt header.
pub const HEADER_LEN: usize = 4;

const IMM: Field = 0..4;

header_view!("an ImmDt header", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The immediate value, as the big-endian number on the wire.
    pub fn imm(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[IMM])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the immediate value.
    pub fn set_imm(&mut self, imm: u32) {
        self.buffer.as_mut()[IMM].copy_from_slice(&imm.to_be_bytes());
    }
}

/// A parsed ImmDt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The immediate value (ibverbs hands it to users in network order: `imm.to_be()`).
    pub imm: u32,
}

impl Repr {
    /// Reads an ImmDt.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr { imm: packet.imm() })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_imm(self.imm);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImmDt {:#010x}", self.imm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = [0xde, 0xad, 0xbe, 0xef];
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.imm, 0xdead_beef);
        let mut out = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
        assert!(Packet::new_checked(&bytes[..3]).is_err());
    }
}

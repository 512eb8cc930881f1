//! Invalidate Extended Transport Header: the rkey a SEND with Invalidate revokes.

use core::fmt;

use crate::field::{self, Field};
use crate::{Result, Rkey};

/// Length of the IETH.
pub const HEADER_LEN: usize = 4;

const RKEY: Field = 0..4;

header_view!("an IETH", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The rkey to invalidate at the responder.
    pub fn rkey(&self) -> Rkey {
        Rkey(field::get_u32(&self.buffer.as_ref()[RKEY]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the rkey to invalidate.
    pub fn set_rkey(&mut self, rkey: Rkey) {
        self.buffer.as_mut()[RKEY].copy_from_slice(&rkey.0.to_be_bytes());
    }
}

/// A parsed IETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The rkey to invalidate.
    pub rkey: Rkey,
}

impl Repr {
    /// Reads an IETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            rkey: packet.rkey(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_rkey(self.rkey);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IETH rkey={}", self.rkey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = [0x00, 0x00, 0x12, 0x07];
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.rkey, Rkey(0x1207));
        let mut out = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }
}

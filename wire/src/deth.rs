//! Datagram Extended Transport Header (UD): Q_Key and the sender's QP.
//!
//! ```text
//! | Q_Key (32) | Reserved (8) | SrcQP (24) |
//! ```

use core::fmt;

use crate::field::{self, Field};
use crate::{Qpn, Result};

/// Length of the DETH.
pub const HEADER_LEN: usize = 8;

/// Q_Key of the General Services Interface (QP1): RDMA CM MADs use it.
pub const GSI_QKEY: u32 = 0x8001_0000;

mod fields {
    use super::Field;
    pub const QKEY: Field = 0..4;
    pub const RESERVED: usize = 4;
    pub const SRC_QP: Field = 5..8;
}

header_view!("a DETH", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// Queue key the receiving UD QP checks.
    pub fn qkey(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::QKEY])
    }

    /// The reserved byte (zero on send, ignored on receive).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[fields::RESERVED]
    }

    /// The sending QP.
    pub fn src_qp(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::SRC_QP]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the Q_Key.
    pub fn set_qkey(&mut self, qkey: u32) {
        self.buffer.as_mut()[fields::QKEY].copy_from_slice(&qkey.to_be_bytes());
    }

    /// Sets the source QP (and clears the reserved byte).
    pub fn set_src_qp(&mut self, qpn: Qpn) {
        self.buffer.as_mut()[fields::RESERVED] = 0;
        field::set_u24(&mut self.buffer.as_mut()[fields::SRC_QP], qpn.value());
    }
}

/// A parsed DETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Queue key.
    pub qkey: u32,
    /// Source QP.
    pub src_qp: Qpn,
}

impl Repr {
    /// Reads a DETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            qkey: packet.qkey(),
            src_qp: packet.src_qp(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_qkey(self.qkey);
        packet.set_src_qp(self.src_qp);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DETH qkey={:#010x} src_qp={}", self.qkey, self.src_qp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        // ibv_ud_pingpong's Q_Key, source QP 0x11.
        let bytes = [0x11, 0x11, 0x11, 0x11, 0x00, 0x00, 0x00, 0x11];
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                qkey: 0x1111_1111,
                src_qp: Qpn::new(0x11)
            }
        );
        let mut out = [0xffu8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }
}

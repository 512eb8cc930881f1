//! RDMA Extended Transport Header: where an RDMA WRITE or READ goes.
//!
//! ```text
//! | Virtual Address (64) | R_Key (32) | DMA Length (32) |
//! ```

use core::fmt;

use crate::field::{self, Field};
use crate::{Result, Rkey};

/// Length of the RETH.
pub const HEADER_LEN: usize = 16;

mod fields {
    use super::Field;
    pub const VA: Field = 0..8;
    pub const RKEY: Field = 8..12;
    pub const DMA_LEN: Field = 12..16;
}

header_view!("a RETH", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// Remote virtual address.
    pub fn virtual_address(&self) -> u64 {
        field::get_u64(&self.buffer.as_ref()[fields::VA])
    }

    /// Remote key.
    pub fn rkey(&self) -> Rkey {
        Rkey(field::get_u32(&self.buffer.as_ref()[fields::RKEY]))
    }

    /// Length of the whole transfer in bytes.
    pub fn dma_length(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::DMA_LEN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the remote virtual address.
    pub fn set_virtual_address(&mut self, va: u64) {
        self.buffer.as_mut()[fields::VA].copy_from_slice(&va.to_be_bytes());
    }

    /// Sets the remote key.
    pub fn set_rkey(&mut self, rkey: Rkey) {
        self.buffer.as_mut()[fields::RKEY].copy_from_slice(&rkey.0.to_be_bytes());
    }

    /// Sets the DMA length.
    pub fn set_dma_length(&mut self, len: u32) {
        self.buffer.as_mut()[fields::DMA_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

/// A parsed RETH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Remote virtual address.
    pub virtual_address: u64,
    /// Remote key.
    pub rkey: Rkey,
    /// Length of the whole transfer.
    pub dma_length: u32,
}

impl Repr {
    /// Reads a RETH.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            virtual_address: packet.virtual_address(),
            rkey: packet.rkey(),
            dma_length: packet.dma_length(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_virtual_address(self.virtual_address);
        packet.set_rkey(self.rkey);
        packet.set_dma_length(self.dma_length);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RETH va={:#x} rkey={} dma_len={}",
            self.virtual_address, self.rkey, self.dma_length
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// RETH of an RDMA Write First from `pcaps/write_bw.pcap`-style traffic.
    const RETH: [u8; 16] = [
        0x00, 0x00, 0x55, 0x57, 0xde, 0xf3, 0x40, 0x00, 0x00, 0x00, 0x02, 0x4f, 0x00, 0x00, 0x09,
        0xc4,
    ];

    #[test]
    fn round_trip() {
        let repr = Repr::parse(&Packet::new_checked(&RETH[..]).unwrap()).unwrap();
        assert_eq!(repr.virtual_address, 0x5557_def3_4000);
        assert_eq!(repr.rkey, Rkey(0x24f));
        assert_eq!(repr.dma_length, 2500);
        let mut out = [0u8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, RETH);
        assert_eq!(
            Packet::new_checked(&RETH[..15]).err(),
            Some(Error::Truncated)
        );
    }
}

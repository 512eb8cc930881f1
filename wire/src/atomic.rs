//! Atomic Extended Transport Header (request) and Atomic ACK ETH (response).
//!
//! ```text
//! AtomicETH:    | Virtual Address (64) | R_Key (32) | Swap or Add Data (64) | Compare Data (64) |
//! AtomicAckETH: | Original Remote Data (64) |
//! ```

use core::fmt;

use crate::field::{self, Field};
use crate::{Result, Rkey};

/// Length of the AtomicETH.
pub const ATOMIC_ETH_LEN: usize = 28;
/// Length of the AtomicAckETH.
pub const ATOMIC_ACK_ETH_LEN: usize = 8;

mod fields {
    use super::Field;
    pub const VA: Field = 0..8;
    pub const RKEY: Field = 8..12;
    pub const SWAP_ADD: Field = 12..20;
    pub const COMPARE: Field = 20..28;
    pub const ORIG: Field = 0..8;
}

/// The AtomicETH of a compare-and-swap or fetch-and-add request.
pub mod eth {
    use super::*;

    header_view!("an AtomicETH", ATOMIC_ETH_LEN);

    impl<T: AsRef<[u8]>> Packet<T> {
        /// Remote virtual address (must be 8-byte aligned).
        pub fn virtual_address(&self) -> u64 {
            field::get_u64(&self.buffer.as_ref()[fields::VA])
        }

        /// Remote key.
        pub fn rkey(&self) -> Rkey {
            Rkey(field::get_u32(&self.buffer.as_ref()[fields::RKEY]))
        }

        /// Swap value (compare-and-swap) or addend (fetch-and-add).
        pub fn swap_add(&self) -> u64 {
            field::get_u64(&self.buffer.as_ref()[fields::SWAP_ADD])
        }

        /// Compare value (compare-and-swap only).
        pub fn compare(&self) -> u64 {
            field::get_u64(&self.buffer.as_ref()[fields::COMPARE])
        }
    }

    impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
        /// Sets every field.
        pub fn set_fields(&mut self, va: u64, rkey: Rkey, swap_add: u64, compare: u64) {
            let b = self.buffer.as_mut();
            b[fields::VA].copy_from_slice(&va.to_be_bytes());
            b[fields::RKEY].copy_from_slice(&rkey.0.to_be_bytes());
            b[fields::SWAP_ADD].copy_from_slice(&swap_add.to_be_bytes());
            b[fields::COMPARE].copy_from_slice(&compare.to_be_bytes());
        }
    }

    /// A parsed AtomicETH.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Repr {
        /// Remote virtual address.
        pub virtual_address: u64,
        /// Remote key.
        pub rkey: Rkey,
        /// Swap value or addend.
        pub swap_add: u64,
        /// Compare value.
        pub compare: u64,
    }

    impl Repr {
        /// Reads an AtomicETH.
        #[inline]
        pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
            packet.check_len()?;
            Ok(Repr {
                virtual_address: packet.virtual_address(),
                rkey: packet.rkey(),
                swap_add: packet.swap_add(),
                compare: packet.compare(),
            })
        }

        /// Length of the emitted header.
        pub const fn buffer_len(&self) -> usize {
            ATOMIC_ETH_LEN
        }

        /// Writes the header.
        pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
            packet.set_fields(self.virtual_address, self.rkey, self.swap_add, self.compare);
        }
    }

    impl fmt::Display for Repr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "AtomicETH va={:#x} rkey={} swap_add={:#x} compare={:#x}",
                self.virtual_address, self.rkey, self.swap_add, self.compare
            )
        }
    }
}

/// The AtomicAckETH of an atomic acknowledge.
pub mod ack {
    use super::*;

    header_view!("an AtomicAckETH", ATOMIC_ACK_ETH_LEN);

    impl<T: AsRef<[u8]>> Packet<T> {
        /// The remote value before the atomic operation.
        pub fn original(&self) -> u64 {
            field::get_u64(&self.buffer.as_ref()[fields::ORIG])
        }
    }

    impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
        /// Sets the original remote value.
        pub fn set_original(&mut self, value: u64) {
            self.buffer.as_mut()[fields::ORIG].copy_from_slice(&value.to_be_bytes());
        }
    }

    /// A parsed AtomicAckETH.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Repr {
        /// The remote value before the operation.
        pub original: u64,
    }

    impl Repr {
        /// Reads an AtomicAckETH.
        #[inline]
        pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
            packet.check_len()?;
            Ok(Repr {
                original: packet.original(),
            })
        }

        /// Length of the emitted header.
        pub const fn buffer_len(&self) -> usize {
            ATOMIC_ACK_ETH_LEN
        }

        /// Writes the header.
        pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
            packet.set_original(self.original);
        }
    }

    impl fmt::Display for Repr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "AtomicAckETH orig={:#x}", self.original)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn atomic_eth_round_trip() {
        let repr = eth::Repr {
            virtual_address: 0x1000,
            rkey: Rkey(0x1234),
            swap_add: 7,
            compare: 9,
        };
        let mut out = [0u8; ATOMIC_ETH_LEN];
        repr.emit(&mut eth::Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[8..12], &[0, 0, 0x12, 0x34]);
        assert_eq!(out[19], 7);
        assert_eq!(out[27], 9);
        assert_eq!(
            eth::Repr::parse(&eth::Packet::new_checked(&out[..]).unwrap()),
            Ok(repr)
        );
        assert_eq!(
            eth::Packet::new_checked(&out[..27]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn atomic_ack_round_trip() {
        let bytes = [0, 0, 0, 0, 0, 0, 0x01, 0x02];
        let repr = ack::Repr::parse(&ack::Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.original, 0x102);
        let mut out = [0u8; 8];
        repr.emit(&mut ack::Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }
}

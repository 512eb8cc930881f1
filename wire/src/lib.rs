//! RoCEv2 on the wire: the InfiniBand transport headers carried in UDP (port 4791).
//!
//! Every header has a zero-copy view `Packet<T: AsRef<[u8]>>` (call `new_checked` on
//! untrusted bytes; after that no accessor panics) and a `Copy` `Repr` with
//! `parse` / `buffer_len` / `emit`, in the style of `smoltcp::wire`.
//! [`packet`] puts them together into whole RoCEv2 packets and [`icrc`] computes the
//! invariant CRC exactly as Linux `rdma_rxe` does.
//!
//! No I/O, no allocation, no clock.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

/// Defines a header's zero-copy view `Packet<T>` with `new_unchecked`, `new_checked`,
/// `check_len` and `into_inner`, for a header of fixed length `$len`.
macro_rules! header_view {
    ($what:literal, $len:expr) => {
        #[doc = concat!("A zero-copy view of ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Packet<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> Packet<T> {
            /// Wraps a buffer without checking its length.
            pub const fn new_unchecked(buffer: T) -> Packet<T> {
                Packet { buffer }
            }

            /// Wraps a buffer that holds at least the whole header.
            pub fn new_checked(buffer: T) -> $crate::Result<Packet<T>> {
                let packet = Self::new_unchecked(buffer);
                packet.check_len()?;
                Ok(packet)
            }

            /// Checks that the buffer holds the whole header.
            pub fn check_len(&self) -> $crate::Result<()> {
                if self.buffer.as_ref().len() < $len {
                    Err($crate::Error::Truncated)
                } else {
                    Ok(())
                }
            }

            /// Returns the underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

pub mod aeth;
pub mod atomic;
pub mod bth;
pub mod cnp;
pub mod deth;
pub mod icrc;
pub mod ident;
pub mod ieth;
pub mod imm;
pub mod opcode;
pub mod packet;
pub mod psn;
pub mod reth;

pub use aeth::{AckSyndrome, NakCode};
pub use opcode::{HeaderSet, OpCode, Position, Transport};
pub use psn::Psn;

use core::fmt;

/// The UDP destination port of RoCEv2.
pub const ROCEV2_UDP_PORT: u16 = 4791;
/// Length of the invariant CRC that ends every RoCEv2 packet.
pub const ICRC_LEN: usize = 4;

/// Why bytes could not be read as a header or a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the header (or packet) it should hold.
    Truncated,
    /// The bytes are long enough but break a rule of the format.
    Malformed,
    /// The opcode is not one ferroce knows (RD, reserved or vendor opcodes).
    UnknownOpcode,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated",
            Error::Malformed => "malformed",
            Error::UnknownOpcode => "unknown opcode",
        })
    }
}

impl core::error::Error for Error {}

/// Result of parsing wire bytes.
pub type Result<T> = core::result::Result<T, Error>;

/// A 24-bit queue pair number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Qpn(u32);

impl Qpn {
    /// The largest queue pair number (24 bits).
    pub const MAX: u32 = 0x00ff_ffff;
    /// QP1, the General Services Interface (RDMA CM and other MADs).
    pub const GSI: Qpn = Qpn(1);

    /// A QPN from the low 24 bits of `value` (higher bits are dropped, as on the wire).
    pub const fn new(value: u32) -> Qpn {
        Qpn(value & Self::MAX)
    }

    /// The QPN as a number.
    pub const fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Qpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#08x}", self.0)
    }
}

/// A remote key: names a memory region (or memory window) to a remote peer.
///
/// All 32 bits are the key, so the field is public: `Rkey::new(k)` and `Rkey(k)` are the
/// same value, as `rkey.value()` and `rkey.0` are. ([`Psn`] and [`Qpn`] keep 24 bits of
/// what they are given, so theirs is private: build them with `new`.)
///
/// ```
/// use ferroce_wire::{Psn, Qpn, Rkey};
/// assert_eq!(Rkey::new(0xdead), Rkey(0xdead));
/// assert_eq!(Rkey::new(0xdead).value(), 0xdead);
/// assert_eq!(Psn::new(0x0100_0001).value(), 1); // 24 bits
/// assert_eq!(Qpn::new(0x0100_0011).value(), 0x11);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rkey(pub u32);

impl Rkey {
    /// The key `value` (the same as `Rkey(value)`; named like [`Psn::new`] and
    /// [`Qpn::new`]).
    pub const fn new(value: u32) -> Rkey {
        Rkey(value)
    }

    /// The key as a number.
    pub const fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Rkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Big-endian field helpers shared by the header views.
pub(crate) mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;

    pub fn get_u24(b: &[u8]) -> u32 {
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    pub fn set_u24(b: &mut [u8], v: u32) {
        b.copy_from_slice(&v.to_be_bytes()[1..]);
    }

    pub fn get_u32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn get_u64(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_be_bytes(a)
    }
}

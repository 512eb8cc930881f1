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

/// Defines a field enum over `$repr` whose unnamed values parse as `Unknown(_)`, so
/// every value round-trips, with `From` both ways and a `Display` of the given names.
macro_rules! enum_with_unknown {
    (
        $(#[$attr:meta])*
        pub enum $name:ident($repr:ty) {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:expr => $text:literal, )+
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_attr])* $variant, )+
            /// A value without a name here, kept as it is.
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(value: $repr) -> $name {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self {
                    $( $name::$variant => f.write_str($text), )+
                    $name::Unknown(other) => write!(f, "Unknown({other:#x})"),
                }
            }
        }
    };
}

pub mod aeth;
pub mod atomic;
pub mod bth;
pub mod cm;
pub mod cma;
pub mod cnp;
pub mod deth;
pub mod icrc;
pub mod ident;
pub mod ieth;
pub mod imm;
pub mod mad;
pub mod opcode;
pub mod packet;
pub mod psn;
pub mod reth;

pub use aeth::{AckSyndrome, NakCode};
pub use cm::ServiceId;
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

/// A 128-bit global identifier of a port. On RoCEv2 a GID is an IPv6 address, or an
/// IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The GID of an IP address, IPv4 addresses mapped into IPv6 as RoCEv2 does.
    pub fn from_ip(ip: core::net::IpAddr) -> Gid {
        match ip {
            core::net::IpAddr::V4(v4) => Gid(v4.to_ipv6_mapped().octets()),
            core::net::IpAddr::V6(v6) => Gid(v6.octets()),
        }
    }

    /// The IP address: IPv4 for an IPv4-mapped GID, IPv6 otherwise.
    pub fn ip(self) -> core::net::IpAddr {
        let v6 = core::net::Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => core::net::IpAddr::V4(v4),
            None => core::net::IpAddr::V6(v6),
        }
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
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

    pub fn get_u16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn get_u128(b: &[u8]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        a
    }

    /// `width` bits of `byte` that start `shift` bits above its least significant bit.
    pub fn get_bits(byte: u8, shift: u32, width: u32) -> u8 {
        (byte >> shift) & ((1u16 << width) - 1) as u8
    }

    /// Sets `width` bits of `byte` at `shift` (see [`get_bits`]), keeping the others.
    pub fn set_bits(byte: &mut u8, shift: u32, width: u32, value: u8) {
        let mask = (((1u16 << width) - 1) as u8) << shift;
        *byte = (*byte & !mask) | ((value << shift) & mask);
    }
}

//! SIDR_REQ, service ID resolution request (IBA 12.11.1, table 119): asks which UD QP
//! and Q_Key serve a service ID (librdmacm's UD connect, `udaddy`).
//!
//! ```text
//!  0 | Request ID (32)             | 4 | P_Key (16) | reserved (16)
//!  8 | Service ID (64)
//! 16 | private data (216)
//! ```

use core::fmt;

use super::{write_padded, ServiceId, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::Result;

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 216;

mod fields {
    use super::Field;
    pub const REQUEST_ID: Field = 0..4;
    pub const PKEY: Field = 4..6;
    pub const RESERVED: Field = 6..8;
    pub const SERVICE_ID: Field = 8..16;
    pub const PRIVATE_DATA: Field = 16..232;
}

header_view!("a CM SIDR_REQ", MESSAGE_LEN);
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The requester's ID for this resolution (the SIDR_REP echoes it).
    pub fn request_id(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::REQUEST_ID])
    }

    /// Partition key.
    pub fn pkey(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::PKEY])
    }

    /// The service to resolve.
    pub fn service_id(&self) -> ServiceId {
        ServiceId(field::get_u64(&self.buffer.as_ref()[fields::SERVICE_ID]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the request ID.
    pub fn set_request_id(&mut self, id: u32) {
        self.buffer.as_mut()[fields::REQUEST_ID].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the partition key (and clears the reserved word after it).
    pub fn set_pkey(&mut self, pkey: u16) {
        self.buffer.as_mut()[fields::PKEY].copy_from_slice(&pkey.to_be_bytes());
        self.buffer.as_mut()[fields::RESERVED].fill(0);
    }

    /// Sets the service ID.
    pub fn set_service_id(&mut self, id: ServiceId) {
        self.buffer.as_mut()[fields::SERVICE_ID].copy_from_slice(&id.0.to_be_bytes());
    }
}

/// A parsed SIDR_REQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The requester's ID.
    pub request_id: u32,
    /// Partition key.
    pub pkey: u16,
    /// The service to resolve.
    pub service_id: ServiceId,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a SIDR_REQ.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            request_id: packet.request_id(),
            pkey: packet.pkey(),
            service_id: packet.service_id(),
            private_data: packet.private_data(),
        })
    }

    /// Length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        MESSAGE_LEN
    }

    /// Writes the message, zero-filling the private data beyond what `private_data`
    /// holds. Fails with [`crate::Error::Malformed`] when the private data is longer
    /// than [`PRIVATE_DATA_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        packet.check_len()?;
        write_padded(packet.private_data_mut(), self.private_data)?;
        packet.set_request_id(self.request_id);
        packet.set_pkey(self.pkey);
        packet.set_service_id(self.service_id);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIDR_REQ request_id={:#010x} service_id={} pkey={:#06x}",
            self.request_id, self.service_id, self.pkey
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let repr = Repr {
            request_id: 0x1122_3344,
            pkey: 0xffff,
            service_id: ServiceId(0x0000_0000_0111_1c06),
            private_data: &[0, 0x40],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            &out[..18],
            &[
                0x11, 0x22, 0x33, 0x44, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x11, 0x1c, 0x06, 0,
                0x40
            ]
        );
        assert!(out[18..].iter().all(|&b| b == 0));
        let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(&parsed.private_data[..2], repr.private_data);
        assert_eq!(
            Packet::new_checked(&out[..16]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_sidr_req_round_trips(
            id in any::<u32>(),
            pkey in any::<u16>(),
            service in any::<u64>(),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr { request_id: id, pkey, service_id: ServiceId(service), private_data: &private };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

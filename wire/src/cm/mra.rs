//! MRA, message receipt acknowledgement (IBA 12.6.6, table 107): "your REQ, REP or LAP
//! arrived; the answer will take up to the service timeout", which extends the
//! sender's wait.
//!
//! ```text
//!  0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//!  8 | MessageMRAed:2 reserved:6 | ServiceTimeout:5 reserved:3 |
//! 10 | private data (222)
//! ```

use core::fmt;

use super::{write_padded, MessageKind, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::Result;

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 222;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    /// Message MRAed (bits 7-6).
    pub const MESSAGE_MRAED: usize = 8;
    /// Service timeout (bits 7-3).
    pub const SERVICE_TIMEOUT: usize = 9;
    pub const PRIVATE_DATA: Field = 10..232;
}

header_view!("a CM MRA", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// Which message is acknowledged.
    pub fn message_mraed(&self) -> MessageKind {
        MessageKind::from(field::get_bits(
            self.buffer.as_ref()[fields::MESSAGE_MRAED],
            6,
            2,
        ))
    }

    /// How long the answer may take (5 bits: 4.096 µs × 2^n), on top of the
    /// transit time.
    pub fn service_timeout(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::SERVICE_TIMEOUT], 3, 5)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets which message is acknowledged (reserved bits cleared).
    pub fn set_message_mraed(&mut self, kind: MessageKind) {
        self.buffer.as_mut()[fields::MESSAGE_MRAED] = (u8::from(kind) & 0x3) << 6;
    }

    /// Sets the service timeout (reserved bits cleared).
    pub fn set_service_timeout(&mut self, timeout: u8) {
        self.buffer.as_mut()[fields::SERVICE_TIMEOUT] = (timeout & 0x1f) << 3;
    }
}

/// A parsed MRA.
///
/// Reserved bits are not kept: `emit` writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The receiver's communication ID.
    pub remote_comm_id: u32,
    /// Which message is acknowledged (2 bits).
    pub message_mraed: MessageKind,
    /// Service timeout (5 bits).
    pub service_timeout: u8,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads an MRA.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            message_mraed: packet.message_mraed(),
            service_timeout: packet.service_timeout(),
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
        packet.set_local_comm_id(self.local_comm_id);
        packet.set_remote_comm_id(self.remote_comm_id);
        packet.set_message_mraed(self.message_mraed);
        packet.set_service_timeout(self.service_timeout);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MRA comm_id={:#010x} remote_comm_id={:#010x} of={} service_timeout={}",
            self.local_comm_id, self.remote_comm_id, self.message_mraed, self.service_timeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn bit_layout() {
        let repr = Repr {
            local_comm_id: 0x0102_0304,
            remote_comm_id: 0,
            message_mraed: MessageKind::Rep,
            service_timeout: 0x1f,
            private_data: &[0xab],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..11], &[1, 2, 3, 4, 0, 0, 0, 0, 0x40, 0xf8, 0xab]);
        assert!(out[11..].iter().all(|&b| b == 0));
        let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed.message_mraed, MessageKind::Rep);
        assert_eq!(parsed.service_timeout, 0x1f);
        assert_eq!(
            Packet::new_checked(&out[..10]).err(),
            Some(Error::Truncated)
        );
        // The fourth 2-bit value has no name but survives.
        out[8] = 0xc0;
        let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed.message_mraed, MessageKind::Unknown(3));
    }

    proptest! {
        #[test]
        fn any_mra_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            kind in 0..4u8,
            timeout in 0..32u8,
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: local,
                remote_comm_id: remote,
                message_mraed: MessageKind::from(kind),
                service_timeout: timeout,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

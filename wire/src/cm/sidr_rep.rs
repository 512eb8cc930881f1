//! SIDR_REP, service ID resolution reply (IBA 12.11.2, table 120): the UD QP and
//! Q_Key that serve the service ID, or why not.
//!
//! ```text
//!  0 | Request ID (32)             | 4 | Status | AdditionalInfoLength | reserved (16)
//!  8 | QPN (24) | reserved         | 12 | Service ID (64)
//! 20 | Q_Key (32)
//! 24 | additional information (72)
//! 96 | private data (136)
//! ```

use core::fmt;

use super::{read_prefix, write_padded, ServiceId, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::{Qpn, Result};

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 136;
/// Length of the additional information field.
pub const INFO_LEN: usize = 72;

mod fields {
    use super::Field;
    pub const REQUEST_ID: Field = 0..4;
    pub const STATUS: usize = 4;
    pub const INFO_LENGTH: usize = 5;
    pub const QPN: Field = 8..11;
    pub const SERVICE_ID: Field = 12..20;
    pub const QKEY: Field = 20..24;
    pub const INFO: Field = 24..96;
    pub const PRIVATE_DATA: Field = 96..232;
}

enum_with_unknown! {
    /// The outcome of a service ID resolution (Linux `enum ib_cm_sidr_status`).
    pub enum Status(u8) {
        /// Resolved: the QPN and Q_Key are valid.
        Success = 0 => "success",
        /// No one serves the service ID.
        Unsupported = 1 => "unsupported",
        /// The consumer rejected.
        Reject = 2 => "rejected",
        /// No QP available.
        NoQp = 3 => "no QP",
        /// Ask elsewhere (additional information: ClassPortInfo).
        Redirect = 4 => "redirect",
        /// CM class version not supported.
        UnsupportedVersion = 5 => "unsupported version",
    }
}

header_view!("a CM SIDR_REP", MESSAGE_LEN);
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The request ID of the SIDR_REQ answered.
    pub fn request_id(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::REQUEST_ID])
    }

    /// The outcome.
    pub fn status(&self) -> Status {
        Status::from(self.buffer.as_ref()[fields::STATUS])
    }

    /// How many bytes of the additional information field are meaningful.
    pub fn additional_info_length(&self) -> u8 {
        self.buffer.as_ref()[fields::INFO_LENGTH]
    }

    /// The QP serving the service.
    pub fn qpn(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::QPN]))
    }

    /// The service resolved.
    pub fn service_id(&self) -> ServiceId {
        ServiceId(field::get_u64(&self.buffer.as_ref()[fields::SERVICE_ID]))
    }

    /// The Q_Key to send to the QP with.
    pub fn qkey(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::QKEY])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The whole additional information field.
    pub fn additional_info(&self) -> &'a [u8] {
        &self.buffer.as_ref()[fields::INFO]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the request ID.
    pub fn set_request_id(&mut self, id: u32) {
        self.buffer.as_mut()[fields::REQUEST_ID].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the status.
    pub fn set_status(&mut self, status: Status) {
        self.buffer.as_mut()[fields::STATUS] = status.into();
    }

    /// Sets the additional information length.
    pub fn set_additional_info_length(&mut self, len: u8) {
        self.buffer.as_mut()[fields::INFO_LENGTH] = len;
    }

    /// Sets the QP.
    pub fn set_qpn(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::QPN], qpn.value());
    }

    /// Sets the service ID.
    pub fn set_service_id(&mut self, id: ServiceId) {
        self.buffer.as_mut()[fields::SERVICE_ID].copy_from_slice(&id.0.to_be_bytes());
    }

    /// Sets the Q_Key.
    pub fn set_qkey(&mut self, qkey: u32) {
        self.buffer.as_mut()[fields::QKEY].copy_from_slice(&qkey.to_be_bytes());
    }

    /// The additional information field, to write.
    pub fn additional_info_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[fields::INFO]
    }
}

/// A parsed SIDR_REP.
///
/// Reserved bytes, and additional information beyond its length, are not kept:
/// `emit` writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The request ID answered.
    pub request_id: u32,
    /// The outcome.
    pub status: Status,
    /// The QP serving the service.
    pub qpn: Qpn,
    /// The service resolved.
    pub service_id: ServiceId,
    /// The Q_Key to use.
    pub qkey: u32,
    /// Additional information: at most [`INFO_LEN`] bytes.
    pub additional_info: &'a [u8],
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a SIDR_REP. Fails with [`crate::Error::Malformed`] when the additional
    /// information length is longer than its field.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        let additional_info =
            read_prefix(packet.additional_info(), packet.additional_info_length())?;
        Ok(Repr {
            request_id: packet.request_id(),
            status: packet.status(),
            qpn: packet.qpn(),
            service_id: packet.service_id(),
            qkey: packet.qkey(),
            additional_info,
            private_data: packet.private_data(),
        })
    }

    /// Length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        MESSAGE_LEN
    }

    /// Writes the message. Fails with [`crate::Error::Malformed`] when the additional
    /// information or the private data is longer than its field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        packet.check_len()?;
        packet.buffer.as_mut()[..MESSAGE_LEN].fill(0);
        write_padded(packet.additional_info_mut(), self.additional_info)?;
        write_padded(packet.private_data_mut(), self.private_data)?;
        packet.set_request_id(self.request_id);
        packet.set_status(self.status);
        // At most 72: checked by write_padded.
        packet.set_additional_info_length(self.additional_info.len() as u8);
        packet.set_qpn(self.qpn);
        packet.set_service_id(self.service_id);
        packet.set_qkey(self.qkey);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIDR_REP request_id={:#010x} status={} service_id={} qpn={} qkey={:#010x}",
            self.request_id, self.status, self.service_id, self.qpn, self.qkey
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn layout_and_bad_info_length() {
        let repr = Repr {
            request_id: 0x1122_3344,
            status: Status::Success,
            qpn: Qpn::new(0x12),
            service_id: ServiceId(0x0000_0000_0111_1c06),
            qkey: 0x0123_4567,
            additional_info: &[],
            private_data: &[],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            &out[..24],
            &[
                0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 0, 0, 0x12, 0, 0, 0, 0, 0, 0x01, 0x11, 0x1c,
                0x06, 0x01, 0x23, 0x45, 0x67
            ]
        );
        assert!(out[24..].iter().all(|&b| b == 0));
        out[4] = 9;
        out[5] = 73;
        let packet = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(packet.status(), Status::Unknown(9));
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
        assert_eq!(
            Packet::new_checked(&out[..95]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_sidr_rep_round_trips(
            id in any::<u32>(),
            status in any::<u8>(),
            qpn in 0..1u32 << 24,
            service in any::<u64>(),
            qkey in any::<u32>(),
            info in proptest::collection::vec(any::<u8>(), 0..=INFO_LEN),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                request_id: id,
                status: Status::from(status),
                qpn: Qpn::new(qpn),
                service_id: ServiceId(service),
                qkey,
                additional_info: &info,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

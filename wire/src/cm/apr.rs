//! APR, alternate path response (IBA 12.8.2, table 116): the answer to a LAP. ferroce
//! answers every LAP with status [`Status::Unsupported`].
//!
//! ```text
//!  0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//!  8 | AdditionalInfoLength | APStatus | reserved (16)
//! 12 | additional information (72)
//! 84 | private data (148)
//! ```

use core::fmt;

use super::{read_prefix, write_padded, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::Result;

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 148;
/// Length of the additional information field.
pub const INFO_LEN: usize = 72;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    pub const INFO_LENGTH: usize = 8;
    pub const STATUS: usize = 9;
    pub const RESERVED: Field = 10..12;
    pub const INFO: Field = 12..84;
    pub const PRIVATE_DATA: Field = 84..232;
}

enum_with_unknown! {
    /// The answer to a LAP (Linux `enum ib_cm_apr_status`).
    pub enum Status(u8) {
        /// Alternate path loaded.
        Success = 0 => "success",
        /// Invalid communication ID.
        InvalidCommId = 1 => "invalid comm ID",
        /// Path migration not supported.
        Unsupported = 2 => "unsupported",
        /// The consumer rejected.
        Reject = 3 => "rejected",
        /// Redirect (additional information: ClassPortInfo).
        Redirect = 4 => "redirect",
        /// The path is already the current one.
        IsCurrent = 5 => "is current",
        /// Invalid QPN or EECN.
        InvalidQpnEecn = 6 => "invalid QPN/EECN",
        /// Invalid LID.
        InvalidLid = 7 => "invalid LID",
        /// Invalid GID.
        InvalidGid = 8 => "invalid GID",
        /// Invalid flow label.
        InvalidFlowLabel = 9 => "invalid flow label",
        /// Invalid traffic class.
        InvalidTrafficClass = 10 => "invalid traffic class",
        /// Invalid hop limit.
        InvalidHopLimit = 11 => "invalid hop limit",
        /// Invalid packet rate.
        InvalidPacketRate = 12 => "invalid packet rate",
        /// Invalid SL.
        InvalidSl = 13 => "invalid SL",
    }
}

header_view!("a CM APR", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// How many bytes of the additional information field are meaningful.
    pub fn additional_info_length(&self) -> u8 {
        self.buffer.as_ref()[fields::INFO_LENGTH]
    }

    /// The answer.
    pub fn status(&self) -> Status {
        Status::from(self.buffer.as_ref()[fields::STATUS])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The whole additional information field.
    pub fn additional_info(&self) -> &'a [u8] {
        &self.buffer.as_ref()[fields::INFO]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the additional information length.
    pub fn set_additional_info_length(&mut self, len: u8) {
        self.buffer.as_mut()[fields::INFO_LENGTH] = len;
    }

    /// Sets the status (and clears the reserved word after it).
    pub fn set_status(&mut self, status: Status) {
        self.buffer.as_mut()[fields::STATUS] = status.into();
        self.buffer.as_mut()[fields::RESERVED].fill(0);
    }

    /// The additional information field, to write.
    pub fn additional_info_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[fields::INFO]
    }
}

/// A parsed APR.
///
/// Additional information beyond its length is not kept: `emit` writes it as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The receiver's communication ID.
    pub remote_comm_id: u32,
    /// The answer.
    pub status: Status,
    /// Additional information: at most [`INFO_LEN`] bytes.
    pub additional_info: &'a [u8],
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads an APR. Fails with [`crate::Error::Malformed`] when the additional information
    /// length is longer than its field.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        let additional_info =
            read_prefix(packet.additional_info(), packet.additional_info_length())?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            status: packet.status(),
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
        write_padded(packet.additional_info_mut(), self.additional_info)?;
        write_padded(packet.private_data_mut(), self.private_data)?;
        packet.set_local_comm_id(self.local_comm_id);
        packet.set_remote_comm_id(self.remote_comm_id);
        // At most 72: checked by write_padded.
        packet.set_additional_info_length(self.additional_info.len() as u8);
        packet.set_status(self.status);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "APR comm_id={:#010x} remote_comm_id={:#010x} status={}",
            self.local_comm_id, self.remote_comm_id, self.status
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
            local_comm_id: 1,
            remote_comm_id: 2,
            status: Status::Unsupported,
            additional_info: &[7],
            private_data: &[],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..13], &[0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 0, 0, 7]);
        assert!(out[13..].iter().all(|&b| b == 0));
        out[8] = 73;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&out[..]).unwrap()),
            Err(Error::Malformed)
        );
        assert_eq!(
            Packet::new_checked(&out[..83]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_apr_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            status in any::<u8>(),
            info in proptest::collection::vec(any::<u8>(), 0..=INFO_LEN),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: local,
                remote_comm_id: remote,
                status: Status::from(status),
                additional_info: &info,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

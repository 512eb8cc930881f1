//! REJ, reject (IBA 12.6.7, table 108): refuses a REQ or REP (or ends a connection
//! attempt on timeout) with a reason, additional rejection information (ARI) and
//! private data.
//!
//! ```text
//!  0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//!  8 | MessageRejected:2 reserved:6 | RejectedInfoLength:7 reserved:1 | Reason (16)
//! 12 | ARI (72)
//! 84 | private data (148)
//! ```

use core::fmt;

use super::{read_prefix, write_padded, MessageKind, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::Result;

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 148;
/// Length of the additional rejection information field.
pub const ARI_LEN: usize = 72;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    /// Message rejected (bits 7-6).
    pub const MESSAGE_REJECTED: usize = 8;
    /// Rejected info length (bits 7-1).
    pub const INFO_LENGTH: usize = 9;
    pub const REASON: Field = 10..12;
    pub const ARI: Field = 12..84;
    pub const PRIVATE_DATA: Field = 84..232;
}

enum_with_unknown! {
    /// Why a REQ or REP was rejected (IBA table 109; Linux `enum ib_cm_rej_reason`).
    pub enum Reason(u16) {
        /// No QP available.
        NoQp = 1 => "no QP",
        /// No EE context available.
        NoEec = 2 => "no EEC",
        /// No resources.
        NoResources = 3 => "no resources",
        /// The peer did not answer in time.
        Timeout = 4 => "timeout",
        /// Request not supported.
        Unsupported = 5 => "unsupported",
        /// Invalid communication ID.
        InvalidCommId = 6 => "invalid comm ID",
        /// Invalid communication instance.
        InvalidCommInstance = 7 => "invalid comm instance",
        /// No one listens on the service ID.
        InvalidServiceId = 8 => "invalid service ID",
        /// Transport service type not supported.
        InvalidTransportType = 9 => "invalid transport type",
        /// The QP is still in use by an older connection.
        StaleConnection = 10 => "stale connection",
        /// RDC does not exist.
        RdcNotExist = 11 => "RDC does not exist",
        /// Primary remote GID rejected.
        InvalidGid = 12 => "invalid GID",
        /// Primary remote LID rejected.
        InvalidLid = 13 => "invalid LID",
        /// Primary SL rejected.
        InvalidSl = 14 => "invalid SL",
        /// Primary traffic class rejected.
        InvalidTrafficClass = 15 => "invalid traffic class",
        /// Primary hop limit rejected.
        InvalidHopLimit = 16 => "invalid hop limit",
        /// Primary packet rate rejected.
        InvalidPacketRate = 17 => "invalid packet rate",
        /// Alternate remote GID rejected.
        InvalidAltGid = 18 => "invalid alternate GID",
        /// Alternate remote LID rejected.
        InvalidAltLid = 19 => "invalid alternate LID",
        /// Alternate SL rejected.
        InvalidAltSl = 20 => "invalid alternate SL",
        /// Alternate traffic class rejected.
        InvalidAltTrafficClass = 21 => "invalid alternate traffic class",
        /// Alternate hop limit rejected.
        InvalidAltHopLimit = 22 => "invalid alternate hop limit",
        /// Alternate packet rate rejected.
        InvalidAltPacketRate = 23 => "invalid alternate packet rate",
        /// Send to another port's CM (ARI: ClassPortInfo).
        PortCmRedirect = 24 => "port CM redirect",
        /// Connect through another port.
        PortRedirect = 25 => "port redirect",
        /// Path MTU not supported.
        InvalidMtu = 26 => "invalid MTU",
        /// Not enough responder resources.
        InsufficientRespResources = 27 => "insufficient responder resources",
        /// The consumer rejected (reason in the private data).
        ConsumerDefined = 28 => "consumer defined",
        /// RNR retry count rejected.
        InvalidRnrRetry = 29 => "invalid RNR retry",
        /// The local communication ID is already in use.
        DuplicateLocalCommId = 30 => "duplicate local comm ID",
        /// CM class version not supported (ARI: the highest supported).
        InvalidClassVersion = 31 => "invalid class version",
        /// Primary flow label rejected.
        InvalidFlowLabel = 32 => "invalid flow label",
        /// Alternate flow label rejected.
        InvalidAltFlowLabel = 33 => "invalid alternate flow label",
        /// A vendor option is not supported.
        VendorOptionNotSupported = 35 => "vendor option not supported",
    }
}

header_view!("a CM REJ", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// Which message is rejected.
    pub fn message_rejected(&self) -> MessageKind {
        MessageKind::from(field::get_bits(
            self.buffer.as_ref()[fields::MESSAGE_REJECTED],
            6,
            2,
        ))
    }

    /// How many bytes of the ARI field are meaningful (7 bits).
    pub fn rejected_info_length(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::INFO_LENGTH], 1, 7)
    }

    /// The reason.
    pub fn reason(&self) -> Reason {
        Reason::from(field::get_u16(&self.buffer.as_ref()[fields::REASON]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The whole additional rejection information field.
    pub fn ari(&self) -> &'a [u8] {
        &self.buffer.as_ref()[fields::ARI]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets which message is rejected (reserved bits cleared).
    pub fn set_message_rejected(&mut self, kind: MessageKind) {
        self.buffer.as_mut()[fields::MESSAGE_REJECTED] = (u8::from(kind) & 0x3) << 6;
    }

    /// Sets the rejected info length (reserved bit cleared).
    pub fn set_rejected_info_length(&mut self, len: u8) {
        self.buffer.as_mut()[fields::INFO_LENGTH] = (len & 0x7f) << 1;
    }

    /// Sets the reason.
    pub fn set_reason(&mut self, reason: Reason) {
        self.buffer.as_mut()[fields::REASON].copy_from_slice(&u16::from(reason).to_be_bytes());
    }

    /// The ARI field, to write.
    pub fn ari_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[fields::ARI]
    }
}

/// A parsed REJ.
///
/// Reserved bits, and ARI bytes beyond the rejected info length, are not kept: `emit`
/// writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The receiver's communication ID.
    pub remote_comm_id: u32,
    /// Which message is rejected.
    pub message_rejected: MessageKind,
    /// The reason.
    pub reason: Reason,
    /// Additional rejection information: the rejected info length's worth of the ARI
    /// field, at most [`ARI_LEN`] bytes.
    pub ari: &'a [u8],
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a REJ. Fails with [`crate::Error::Malformed`] when the rejected info length is
    /// longer than the ARI field.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        let ari = read_prefix(packet.ari(), packet.rejected_info_length())?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            message_rejected: packet.message_rejected(),
            reason: packet.reason(),
            ari,
            private_data: packet.private_data(),
        })
    }

    /// Length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        MESSAGE_LEN
    }

    /// Writes the message. Fails with [`crate::Error::Malformed`] when the ARI or the private
    /// data is longer than its field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        packet.check_len()?;
        write_padded(packet.ari_mut(), self.ari)?;
        write_padded(packet.private_data_mut(), self.private_data)?;
        packet.set_local_comm_id(self.local_comm_id);
        packet.set_remote_comm_id(self.remote_comm_id);
        packet.set_message_rejected(self.message_rejected);
        // Fits in 7 bits: the ARI field is 72 bytes.
        packet.set_rejected_info_length(self.ari.len() as u8);
        packet.set_reason(self.reason);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "REJ comm_id={:#010x} remote_comm_id={:#010x} of={} reason={} ({})",
            self.local_comm_id,
            self.remote_comm_id,
            self.message_rejected,
            u16::from(self.reason),
            self.reason
        )?;
        if !self.ari.is_empty() {
            write!(f, " ari_len={}", self.ari.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn bit_layout_and_bad_info_length() {
        // What a listener-less kernel answers a REQ: invalid service ID, no ARI.
        let repr = Repr {
            local_comm_id: 0x0a0b_0c0d,
            remote_comm_id: 0x8f4e_3c9d,
            message_rejected: MessageKind::Req,
            reason: Reason::InvalidServiceId,
            ari: &[],
            private_data: &[],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            &out[..12],
            &[0x0a, 0x0b, 0x0c, 0x0d, 0x8f, 0x4e, 0x3c, 0x9d, 0x00, 0x00, 0x00, 0x08]
        );
        assert!(out[12..].iter().all(|&b| b == 0));
        let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(
            Repr {
                private_data: &[],
                ..parsed
            },
            repr
        );

        // A consumer reject with 3 bytes of ARI, of a REP.
        out[8] = 0x40;
        out[9] = 3 << 1;
        out[10..12].copy_from_slice(&28u16.to_be_bytes());
        let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed.message_rejected, MessageKind::Rep);
        assert_eq!(parsed.reason, Reason::ConsumerDefined);
        assert_eq!(parsed.ari.len(), 3);

        out[9] = 73 << 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&out[..]).unwrap()),
            Err(Error::Malformed)
        );
        out[10..12].copy_from_slice(&34u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&out[..]).unwrap().reason(),
            Reason::Unknown(34)
        );
        assert_eq!(
            Packet::new_checked(&out[..100]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_rej_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            kind in 0..4u8,
            reason in any::<u16>(),
            ari in proptest::collection::vec(any::<u8>(), 0..=ARI_LEN),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: local,
                remote_comm_id: remote,
                message_rejected: MessageKind::from(kind),
                reason: Reason::from(reason),
                ari: &ari,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

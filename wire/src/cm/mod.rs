//! The InfiniBand Communication Manager's messages (IBA 12.6), which RDMA CM
//! (librdmacm, the kernel's `ib_cm`) exchanges in MADs of class
//! [`MgmtClass::CommunicationManagement`] on QP1 to connect, disconnect and resolve
//! services.
//!
//! Each message has a module with its zero-copy view and `Repr`: [`req`], [`mra`],
//! [`rej`], [`rep`], [`rtu`], [`dreq`], [`drep`], [`sidr_req`], [`sidr_rep`], [`lap`],
//! [`apr`]. Offsets count from the end of the MAD header; every message occupies the
//! whole [`MESSAGE_LEN`] bytes after it and ends in private data of fixed size, which
//! senders zero-fill beyond what the consumer gave. [`Repr`] reads and writes a whole
//! CM MAD: the header and the message its attribute ID names.
//!
//! Field offsets and bit positions follow Linux `include/rdma/ibta_vol1_c12.h`.

use core::fmt;

use crate::mad::{self, Method, MgmtClass};
use crate::{Error, Result};

/// Defines the accessors of the two communication IDs that start most messages, at
/// `fields::LOCAL_COMM_ID` and `fields::REMOTE_COMM_ID` of the calling module.
macro_rules! comm_id_accessors {
    () => {
        impl<T: AsRef<[u8]>> Packet<T> {
            /// The sender's communication ID.
            pub fn local_comm_id(&self) -> u32 {
                field::get_u32(&self.buffer.as_ref()[fields::LOCAL_COMM_ID])
            }

            /// The receiver's communication ID, as the sender knows it (zero in an
            /// MRA or REJ of a REQ).
            pub fn remote_comm_id(&self) -> u32 {
                field::get_u32(&self.buffer.as_ref()[fields::REMOTE_COMM_ID])
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            /// Sets the sender's communication ID.
            pub fn set_local_comm_id(&mut self, id: u32) {
                self.buffer.as_mut()[fields::LOCAL_COMM_ID].copy_from_slice(&id.to_be_bytes());
            }

            /// Sets the receiver's communication ID.
            pub fn set_remote_comm_id(&mut self, id: u32) {
                self.buffer.as_mut()[fields::REMOTE_COMM_ID].copy_from_slice(&id.to_be_bytes());
            }
        }
    };
}

/// Defines the accessors of the private data field that ends every message, at
/// `fields::PRIVATE_DATA` of the calling module.
macro_rules! private_data_accessors {
    () => {
        impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
            /// The consumer's private data: the whole field.
            pub fn private_data(&self) -> &'a [u8] {
                &self.buffer.as_ref()[fields::PRIVATE_DATA]
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            /// The private data field, to write.
            pub fn private_data_mut(&mut self) -> &mut [u8] {
                &mut self.buffer.as_mut()[fields::PRIVATE_DATA]
            }
        }
    };
}

/// Defines the view and `Repr` of a message that holds only the two communication IDs
/// and private data after them (RTU and DREP), named `$name` in `Display`.
macro_rules! comm_ids_message {
    ($name:literal, $what:literal) => {
        use core::fmt;

        use super::{write_padded, MESSAGE_LEN};
        use crate::field::{self, Field};
        use crate::Result;

        /// Length of the private data field.
        pub const PRIVATE_DATA_LEN: usize = MESSAGE_LEN - 8;

        mod fields {
            use super::Field;
            pub const LOCAL_COMM_ID: Field = 0..4;
            pub const REMOTE_COMM_ID: Field = 4..8;
            pub const PRIVATE_DATA: Field = 8..232;
        }

        header_view!($what, MESSAGE_LEN);
        comm_id_accessors!();
        private_data_accessors!();

        #[doc = concat!("A parsed ", $name, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct Repr<'a> {
            /// The sender's communication ID.
            pub local_comm_id: u32,
            /// The receiver's communication ID.
            pub remote_comm_id: u32,
            /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole
            /// field.
            pub private_data: &'a [u8],
        }

        impl<'a> Repr<'a> {
            #[doc = concat!("Reads a ", $name, ".")]
            pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
                packet.check_len()?;
                Ok(Repr {
                    local_comm_id: packet.local_comm_id(),
                    remote_comm_id: packet.remote_comm_id(),
                    private_data: packet.private_data(),
                })
            }

            /// Length of the emitted message.
            pub const fn buffer_len(&self) -> usize {
                MESSAGE_LEN
            }

            /// Writes the message, zero-filling the private data beyond what
            /// `private_data` holds. Fails with [`crate::Error::Malformed`] when the
            /// private data is longer than [`PRIVATE_DATA_LEN`].
            pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
                packet.check_len()?;
                write_padded(packet.private_data_mut(), self.private_data)?;
                packet.set_local_comm_id(self.local_comm_id);
                packet.set_remote_comm_id(self.remote_comm_id);
                Ok(())
            }
        }

        impl fmt::Display for Repr<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!($name, " comm_id={:#010x} remote_comm_id={:#010x}"),
                    self.local_comm_id, self.remote_comm_id
                )
            }
        }
    };
}

pub mod apr;
pub mod drep;
pub mod dreq;
pub mod lap;
pub mod mra;
pub mod rej;
pub mod rep;
pub mod req;
pub mod rtu;
pub mod sidr_rep;
pub mod sidr_req;
#[cfg(test)]
pub(crate) mod testdata;

/// The CM class version these messages follow (IBA 1.2 and later).
pub const CLASS_VERSION: u8 = 2;
/// Length of every CM message: the MAD after its header.
pub const MESSAGE_LEN: usize = mad::MAD_LEN - mad::HEADER_LEN;

enum_with_unknown! {
    /// The attribute ID of a CM MAD: which message it carries.
    pub enum AttributeId(u16) {
        /// ClassPortInfo (redirection; not a connection message).
        ClassPortInfo = 0x0001 => "ClassPortInfo",
        /// REQ: request for communication.
        ConnectRequest = 0x0010 => "ConnectRequest",
        /// MRA: message receipt acknowledgement (the reply will take longer).
        MessageReceiptAcknowledgement = 0x0011 => "MessageReceiptAcknowledgement",
        /// REJ: reject.
        ConnectReject = 0x0012 => "ConnectReject",
        /// REP: reply to a request for communication.
        ConnectReply = 0x0013 => "ConnectReply",
        /// RTU: ready to use.
        ReadyToUse = 0x0014 => "ReadyToUse",
        /// DREQ: request for communication release.
        DisconnectRequest = 0x0015 => "DisconnectRequest",
        /// DREP: reply to a request for communication release.
        DisconnectReply = 0x0016 => "DisconnectReply",
        /// SIDR_REQ: service ID resolution request (UD).
        ServiceIdResolutionRequest = 0x0017 => "ServiceIdResolutionRequest",
        /// SIDR_REP: service ID resolution reply.
        ServiceIdResolutionReply = 0x0018 => "ServiceIdResolutionReply",
        /// LAP: load alternate path.
        LoadAlternatePath = 0x0019 => "LoadAlternatePath",
        /// APR: alternate path response.
        AlternatePathResponse = 0x001a => "AlternatePathResponse",
    }
}

impl AttributeId {
    /// True for the attributes that carry a connection message ([`Message`]).
    pub fn is_connection_message(self) -> bool {
        !matches!(self, AttributeId::ClassPortInfo | AttributeId::Unknown(_))
    }
}

enum_with_unknown! {
    /// Which message an MRA acknowledges or a REJ rejects (2 bits).
    pub enum MessageKind(u8) {
        /// A REQ.
        Req = 0 => "REQ",
        /// A REP.
        Rep = 1 => "REP",
        /// Another message (a LAP).
        Other = 2 => "other",
    }
}

/// A service ID: what a REQ or SIDR_REQ asks to connect to. RDMA CM maps IP ports
/// into it (see [`crate::cma`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceId(pub u64);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Copies `data` to the start of `field` and zeroes the rest, as senders fill a
/// fixed-size private data (or additional information) field. Fails with
/// [`Error::Malformed`] when `data` does not fit.
pub(crate) fn write_padded(field: &mut [u8], data: &[u8]) -> Result<()> {
    let Some((head, tail)) = field.split_at_mut_checked(data.len()) else {
        return Err(Error::Malformed);
    };
    head.copy_from_slice(data);
    tail.fill(0);
    Ok(())
}

/// The first `len` bytes of a variable-length field (ARI, additional information), or
/// [`Error::Malformed`] when the length a peer sent is longer than the field.
pub(crate) fn read_prefix(field: &[u8], len: u8) -> Result<&[u8]> {
    field.get(..usize::from(len)).ok_or(Error::Malformed)
}

/// The message of a CM MAD, by its attribute ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message<'a> {
    /// REQ.
    Req(req::Repr<'a>),
    /// MRA.
    Mra(mra::Repr<'a>),
    /// REJ.
    Rej(rej::Repr<'a>),
    /// REP.
    Rep(rep::Repr<'a>),
    /// RTU.
    Rtu(rtu::Repr<'a>),
    /// DREQ.
    Dreq(dreq::Repr<'a>),
    /// DREP.
    Drep(drep::Repr<'a>),
    /// SIDR_REQ.
    SidrReq(sidr_req::Repr<'a>),
    /// SIDR_REP.
    SidrRep(sidr_rep::Repr<'a>),
    /// LAP.
    Lap(lap::Repr<'a>),
    /// APR.
    Apr(apr::Repr<'a>),
}

impl<'a> Message<'a> {
    /// Reads the message `attribute` names from the CM data after the MAD header.
    /// Fails with [`Error::Malformed`] for attributes that are not connection messages.
    pub fn parse(attribute: AttributeId, data: &'a [u8]) -> Result<Message<'a>> {
        Ok(match attribute {
            AttributeId::ConnectRequest => {
                Message::Req(req::Repr::parse(&req::Packet::new_checked(data)?)?)
            }
            AttributeId::MessageReceiptAcknowledgement => {
                Message::Mra(mra::Repr::parse(&mra::Packet::new_checked(data)?)?)
            }
            AttributeId::ConnectReject => {
                Message::Rej(rej::Repr::parse(&rej::Packet::new_checked(data)?)?)
            }
            AttributeId::ConnectReply => {
                Message::Rep(rep::Repr::parse(&rep::Packet::new_checked(data)?)?)
            }
            AttributeId::ReadyToUse => {
                Message::Rtu(rtu::Repr::parse(&rtu::Packet::new_checked(data)?)?)
            }
            AttributeId::DisconnectRequest => {
                Message::Dreq(dreq::Repr::parse(&dreq::Packet::new_checked(data)?)?)
            }
            AttributeId::DisconnectReply => {
                Message::Drep(drep::Repr::parse(&drep::Packet::new_checked(data)?)?)
            }
            AttributeId::ServiceIdResolutionRequest => Message::SidrReq(sidr_req::Repr::parse(
                &sidr_req::Packet::new_checked(data)?,
            )?),
            AttributeId::ServiceIdResolutionReply => Message::SidrRep(sidr_rep::Repr::parse(
                &sidr_rep::Packet::new_checked(data)?,
            )?),
            AttributeId::LoadAlternatePath => {
                Message::Lap(lap::Repr::parse(&lap::Packet::new_checked(data)?)?)
            }
            AttributeId::AlternatePathResponse => {
                Message::Apr(apr::Repr::parse(&apr::Packet::new_checked(data)?)?)
            }
            AttributeId::ClassPortInfo | AttributeId::Unknown(_) => return Err(Error::Malformed),
        })
    }

    /// The attribute ID that carries this message.
    pub fn attribute_id(&self) -> AttributeId {
        match self {
            Message::Req(_) => AttributeId::ConnectRequest,
            Message::Mra(_) => AttributeId::MessageReceiptAcknowledgement,
            Message::Rej(_) => AttributeId::ConnectReject,
            Message::Rep(_) => AttributeId::ConnectReply,
            Message::Rtu(_) => AttributeId::ReadyToUse,
            Message::Dreq(_) => AttributeId::DisconnectRequest,
            Message::Drep(_) => AttributeId::DisconnectReply,
            Message::SidrReq(_) => AttributeId::ServiceIdResolutionRequest,
            Message::SidrRep(_) => AttributeId::ServiceIdResolutionReply,
            Message::Lap(_) => AttributeId::LoadAlternatePath,
            Message::Apr(_) => AttributeId::AlternatePathResponse,
        }
    }

    /// The sender's communication ID (the request ID of SIDR messages).
    pub fn local_comm_id(&self) -> u32 {
        match self {
            Message::Req(m) => m.local_comm_id,
            Message::Mra(m) => m.local_comm_id,
            Message::Rej(m) => m.local_comm_id,
            Message::Rep(m) => m.local_comm_id,
            Message::Rtu(m) => m.local_comm_id,
            Message::Dreq(m) => m.local_comm_id,
            Message::Drep(m) => m.local_comm_id,
            Message::SidrReq(m) => m.request_id,
            Message::SidrRep(m) => m.request_id,
            Message::Lap(m) => m.local_comm_id,
            Message::Apr(m) => m.local_comm_id,
        }
    }

    /// The receiver's communication ID as the sender knows it: `None` for a REQ (the
    /// receiver has none yet) and for SIDR messages, zero in a REJ or MRA of a REQ.
    pub fn remote_comm_id(&self) -> Option<u32> {
        match self {
            Message::Req(_) | Message::SidrReq(_) | Message::SidrRep(_) => None,
            Message::Mra(m) => Some(m.remote_comm_id),
            Message::Rej(m) => Some(m.remote_comm_id),
            Message::Rep(m) => Some(m.remote_comm_id),
            Message::Rtu(m) => Some(m.remote_comm_id),
            Message::Dreq(m) => Some(m.remote_comm_id),
            Message::Drep(m) => Some(m.remote_comm_id),
            Message::Lap(m) => Some(m.remote_comm_id),
            Message::Apr(m) => Some(m.remote_comm_id),
        }
    }

    /// The consumer's private data: the whole fixed-size field.
    pub fn private_data(&self) -> &'a [u8] {
        match self {
            Message::Req(m) => m.private_data,
            Message::Mra(m) => m.private_data,
            Message::Rej(m) => m.private_data,
            Message::Rep(m) => m.private_data,
            Message::Rtu(m) => m.private_data,
            Message::Dreq(m) => m.private_data,
            Message::Drep(m) => m.private_data,
            Message::SidrReq(m) => m.private_data,
            Message::SidrRep(m) => m.private_data,
            Message::Lap(m) => m.private_data,
            Message::Apr(m) => m.private_data,
        }
    }

    /// Writes the message into the first [`MESSAGE_LEN`] bytes of `data`. Fails with
    /// [`Error::Truncated`] when `data` is shorter and [`Error::Malformed`] when a
    /// variable-length field is longer than its place.
    pub fn emit(&self, data: &mut [u8]) -> Result<()> {
        if data.len() < MESSAGE_LEN {
            return Err(Error::Truncated);
        }
        match self {
            Message::Req(m) => m.emit(&mut req::Packet::new_unchecked(data)),
            Message::Mra(m) => m.emit(&mut mra::Packet::new_unchecked(data)),
            Message::Rej(m) => m.emit(&mut rej::Packet::new_unchecked(data)),
            Message::Rep(m) => m.emit(&mut rep::Packet::new_unchecked(data)),
            Message::Rtu(m) => m.emit(&mut rtu::Packet::new_unchecked(data)),
            Message::Dreq(m) => m.emit(&mut dreq::Packet::new_unchecked(data)),
            Message::Drep(m) => m.emit(&mut drep::Packet::new_unchecked(data)),
            Message::SidrReq(m) => m.emit(&mut sidr_req::Packet::new_unchecked(data)),
            Message::SidrRep(m) => m.emit(&mut sidr_rep::Packet::new_unchecked(data)),
            Message::Lap(m) => m.emit(&mut lap::Packet::new_unchecked(data)),
            Message::Apr(m) => m.emit(&mut apr::Packet::new_unchecked(data)),
        }
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Req(m) => m.fmt(f),
            Message::Mra(m) => m.fmt(f),
            Message::Rej(m) => m.fmt(f),
            Message::Rep(m) => m.fmt(f),
            Message::Rtu(m) => m.fmt(f),
            Message::Dreq(m) => m.fmt(f),
            Message::Drep(m) => m.fmt(f),
            Message::SidrReq(m) => m.fmt(f),
            Message::SidrRep(m) => m.fmt(f),
            Message::Lap(m) => m.fmt(f),
            Message::Apr(m) => m.fmt(f),
        }
    }
}

/// A whole CM MAD: the common header and the message its attribute ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The MAD header. Its attribute ID is the message's; `emit` writes that one.
    pub header: mad::Repr,
    /// The message.
    pub message: Message<'a>,
}

impl<'a> Repr<'a> {
    /// A CM MAD header for `message` as Linux sends it: base version 1, class version
    /// 2, method Send, status 0.
    pub fn new(transaction_id: u64, message: Message<'a>) -> Repr<'a> {
        Repr {
            header: mad::Repr {
                base_version: mad::BASE_VERSION,
                mgmt_class: MgmtClass::CommunicationManagement,
                class_version: CLASS_VERSION,
                method: Method::Send,
                status: 0,
                class_specific: 0,
                transaction_id,
                attribute_id: message.attribute_id().into(),
                attribute_modifier: 0,
            },
            message,
        }
    }

    /// Reads a CM MAD. Fails with [`Error::Malformed`] when the MAD is not of the CM
    /// class or its attribute is not a connection message, and with
    /// [`Error::Truncated`] when it is shorter than [`mad::MAD_LEN`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &mad::Packet<&'a T>) -> Result<Repr<'a>> {
        let header = mad::Repr::parse(packet)?;
        if header.mgmt_class != MgmtClass::CommunicationManagement {
            return Err(Error::Malformed);
        }
        let message = Message::parse(AttributeId::from(header.attribute_id), packet.data())?;
        Ok(Repr { header, message })
    }

    /// Length of the emitted MAD.
    pub const fn buffer_len(&self) -> usize {
        mad::MAD_LEN
    }

    /// Writes the MAD into the first [`mad::MAD_LEN`] bytes of `packet`, with the
    /// message's attribute ID. Fails as [`Message::emit`] does.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut mad::Packet<T>) -> Result<()> {
        packet.check_len()?;
        if packet.data_mut().len() < MESSAGE_LEN {
            return Err(Error::Truncated);
        }
        let header = mad::Repr {
            attribute_id: self.message.attribute_id().into(),
            ..self.header
        };
        header.emit(packet);
        self.message.emit(packet.data_mut())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CM {} tid={:#x}",
            self.message, self.header.transaction_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{rping_mads, DREP, DREQ, REP, REQ, RTU};
    use super::*;
    use crate::{Psn, Qpn};
    use std::string::ToString;

    #[test]
    fn every_captured_mad_parses_and_re_emits_byte_for_byte() {
        let mads = rping_mads();
        let expected = [
            (REQ, AttributeId::ConnectRequest),
            (REP, AttributeId::ConnectReply),
            (RTU, AttributeId::ReadyToUse),
            (DREQ, AttributeId::DisconnectRequest),
            (DREP, AttributeId::DisconnectReply),
        ];
        for (index, attribute) in expected {
            let bytes = mads[index];
            assert_eq!(bytes.len(), mad::MAD_LEN);
            let repr = Repr::parse(&mad::Packet::new_checked(bytes).unwrap()).unwrap();
            assert_eq!(repr.message.attribute_id(), attribute);
            assert_eq!(AttributeId::from(repr.header.attribute_id), attribute);
            // One transaction for the whole handshake and teardown, as Linux does it.
            assert_eq!(repr.header.transaction_id, 0x2_9d3c_4e8f);
            assert_eq!(repr.header.method, Method::Send);
            assert_eq!(repr.header.class_version, CLASS_VERSION);
            assert_eq!(repr, Repr::new(0x2_9d3c_4e8f, repr.message));
            let mut out = [0x5au8; mad::MAD_LEN];
            repr.emit(&mut mad::Packet::new_unchecked(&mut out[..]))
                .unwrap();
            assert_eq!(&out[..], bytes, "{attribute}");
        }
    }

    #[test]
    fn comm_ids_match_across_the_handshake() {
        let mads = rping_mads();
        let parse = |i: usize| {
            Repr::parse(&mad::Packet::new_checked(mads[i]).unwrap())
                .unwrap()
                .message
        };
        let (req, rep) = (parse(REQ), parse(REP));
        assert_eq!(req.remote_comm_id(), None);
        assert_eq!(rep.remote_comm_id(), Some(req.local_comm_id()));
        for (i, client) in [(RTU, true), (DREQ, true), (DREP, false)] {
            let m = parse(i);
            let (local, remote) = if client { (req, rep) } else { (rep, req) };
            assert_eq!(m.local_comm_id(), local.local_comm_id());
            assert_eq!(m.remote_comm_id(), Some(remote.local_comm_id()));
        }
        let (Message::Req(req), Message::Rep(rep)) = (req, rep) else {
            panic!("REQ and REP");
        };
        assert_eq!(
            (req.local_qpn, rep.local_qpn),
            (Qpn::new(0x11), Qpn::new(0x11))
        );
        assert_eq!(req.starting_psn, Psn::new(0xc17b7c));
        assert_eq!(rep.starting_psn, Psn::new(0xde5aaa));
        assert_eq!(
            Message::Req(req).to_string(),
            "REQ comm_id=0x8f4e3c9d service_id=0x1061c06 RC qpn=0x000011 start_psn=0xc17b7c \
             mtu=3 resp_res=1 init_depth=1 retry=7 rnr_retry=7 gid=10.77.0.11 -> 10.77.0.12"
        );
    }

    #[test]
    fn refuses_what_is_not_a_cm_message() {
        let mads = rping_mads();
        let mut bytes = [0u8; mad::MAD_LEN];
        bytes.copy_from_slice(mads[REQ]);
        assert_eq!(
            Repr::parse(&mad::Packet::new_checked(&bytes[..mad::MAD_LEN - 1]).unwrap()),
            Err(Error::Truncated)
        );
        assert_eq!(
            mad::Packet::new_checked(&bytes[..mad::HEADER_LEN - 1]).err(),
            Some(Error::Truncated)
        );
        bytes[17] = 0x01; // ClassPortInfo
        assert_eq!(
            Repr::parse(&mad::Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Malformed)
        );
        bytes[17] = 0x1b; // past APR
        assert_eq!(
            Repr::parse(&mad::Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Malformed)
        );
        bytes[17] = 0x10;
        bytes[1] = 0x03; // subnet administration
        assert_eq!(
            Repr::parse(&mad::Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Malformed)
        );
        let repr = Repr::new(
            1,
            Message::Rtu(rtu::Repr {
                local_comm_id: 1,
                remote_comm_id: 2,
                private_data: &[],
            }),
        );
        let mut short = [0u8; mad::MAD_LEN - 1];
        assert_eq!(
            repr.emit(&mut mad::Packet::new_unchecked(&mut short[..])),
            Err(Error::Truncated)
        );
        let mut tiny = [0u8; 4];
        assert_eq!(
            repr.emit(&mut mad::Packet::new_unchecked(&mut tiny[..])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn emit_writes_the_messages_attribute_id() {
        let message = Message::Dreq(dreq::Repr {
            local_comm_id: 3,
            remote_comm_id: 4,
            remote_qpn: Qpn::new(5),
            private_data: &[],
        });
        let mut repr = Repr::new(7, message);
        repr.header.attribute_id = 0x10;
        let mut out = [0u8; mad::MAD_LEN];
        repr.emit(&mut mad::Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(&out[16..18], &[0x00, 0x15]);
    }
}

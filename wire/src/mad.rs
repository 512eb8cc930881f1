//! Management Datagram common header (IBA 13.4.3): the first 24 bytes of every MAD,
//! which is what a UD datagram to QP1 (the General Services Interface) carries.
//!
//! ```text
//!  0             1             2               3
//! | BaseVersion | MgmtClass   | ClassVersion  | R Method    |
//! | Status (16)               | ClassSpecific (16)          |
//! | TransactionID (64)                                      |
//! | AttributeID (16)          | Reserved (16)               |
//! | AttributeModifier (32)                                  |
//! ```
//!
//! A GSI MAD is always [`MAD_LEN`] bytes; the class-specific data follows the header.

use core::fmt;

use crate::field::{self, Field};
use crate::Result;

/// Length of the common MAD header.
pub const HEADER_LEN: usize = 24;
/// Length of a whole MAD on the General Services Interface (header and data).
pub const MAD_LEN: usize = 256;
/// The MAD base version of InfiniBand (and RoCE) management.
pub const BASE_VERSION: u8 = 1;
/// Status of a response to a method or attribute the receiver does not support (IBA
/// table 120; Linux `IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB`).
pub const STATUS_UNSUPPORTED_METHOD_ATTRIBUTE: u16 = 0x000c;

mod fields {
    use super::Field;
    pub const BASE_VERSION: usize = 0;
    pub const MGMT_CLASS: usize = 1;
    pub const CLASS_VERSION: usize = 2;
    /// R (bit 7: response) and the method (bits 6-0) read as one byte.
    pub const METHOD: usize = 3;
    pub const STATUS: Field = 4..6;
    pub const CLASS_SPECIFIC: Field = 6..8;
    pub const TRANSACTION_ID: Field = 8..16;
    pub const ATTRIBUTE_ID: Field = 16..18;
    pub const RESERVED: Field = 18..20;
    pub const ATTRIBUTE_MODIFIER: Field = 20..24;
}

enum_with_unknown! {
    /// The management class: which manager a MAD is for.
    pub enum MgmtClass(u8) {
        /// Subnet management, LID routed.
        SubnetLid = 0x01 => "SubnLID",
        /// Subnet administration (the SA).
        SubnetAdministration = 0x03 => "SubnAdm",
        /// Performance management.
        Performance = 0x04 => "Perf",
        /// Baseboard management.
        Baseboard = 0x05 => "BM",
        /// Device management.
        Device = 0x06 => "DevMgt",
        /// Communication management: the CM messages of [`crate::cm`].
        CommunicationManagement = 0x07 => "CM",
        /// SNMP tunnelling.
        Snmp = 0x08 => "SNMP",
        /// Subnet management, directed route.
        SubnetDirectedRoute = 0x81 => "SubnDR",
    }
}

enum_with_unknown! {
    /// The method byte, response bit included (responses are `0x80 |` the request).
    pub enum Method(u8) {
        /// Read an attribute.
        Get = 0x01 => "Get",
        /// Write an attribute.
        Set = 0x02 => "Set",
        /// Send a datagram (every CM message).
        Send = 0x03 => "Send",
        /// Unsolicited notice.
        Trap = 0x05 => "Trap",
        /// Forwarded notice.
        Report = 0x06 => "Report",
        /// Stop sending a trap.
        TrapRepress = 0x07 => "TrapRepress",
        /// Response to Get or Set.
        GetResp = 0x81 => "GetResp",
        /// Response to Report.
        ReportResp = 0x86 => "ReportResp",
    }
}

header_view!("a MAD common header", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// Version of the MAD base format (1).
    pub fn base_version(&self) -> u8 {
        self.buffer.as_ref()[fields::BASE_VERSION]
    }

    /// Management class.
    pub fn mgmt_class(&self) -> MgmtClass {
        MgmtClass::from(self.buffer.as_ref()[fields::MGMT_CLASS])
    }

    /// Version of the class's format (2 for the CM).
    pub fn class_version(&self) -> u8 {
        self.buffer.as_ref()[fields::CLASS_VERSION]
    }

    /// Method, response bit included.
    pub fn method(&self) -> Method {
        Method::from(self.buffer.as_ref()[fields::METHOD])
    }

    /// Status of a response (zero in requests and CM messages).
    pub fn status(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::STATUS])
    }

    /// Class-specific word.
    pub fn class_specific(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::CLASS_SPECIFIC])
    }

    /// Transaction ID: a response carries its request's.
    pub fn transaction_id(&self) -> u64 {
        field::get_u64(&self.buffer.as_ref()[fields::TRANSACTION_ID])
    }

    /// Attribute ID: what the data is, in the class's numbering.
    pub fn attribute_id(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::ATTRIBUTE_ID])
    }

    /// The reserved word after the attribute ID (zero on send, ignored on receive).
    pub fn reserved(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::RESERVED])
    }

    /// Attribute modifier.
    pub fn attribute_modifier(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::ATTRIBUTE_MODIFIER])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The class-specific data after the header.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the base version.
    pub fn set_base_version(&mut self, version: u8) {
        self.buffer.as_mut()[fields::BASE_VERSION] = version;
    }

    /// Sets the management class.
    pub fn set_mgmt_class(&mut self, class: MgmtClass) {
        self.buffer.as_mut()[fields::MGMT_CLASS] = class.into();
    }

    /// Sets the class version.
    pub fn set_class_version(&mut self, version: u8) {
        self.buffer.as_mut()[fields::CLASS_VERSION] = version;
    }

    /// Sets the method.
    pub fn set_method(&mut self, method: Method) {
        self.buffer.as_mut()[fields::METHOD] = method.into();
    }

    /// Sets the status.
    pub fn set_status(&mut self, status: u16) {
        self.buffer.as_mut()[fields::STATUS].copy_from_slice(&status.to_be_bytes());
    }

    /// Sets the class-specific word.
    pub fn set_class_specific(&mut self, value: u16) {
        self.buffer.as_mut()[fields::CLASS_SPECIFIC].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the transaction ID.
    pub fn set_transaction_id(&mut self, tid: u64) {
        self.buffer.as_mut()[fields::TRANSACTION_ID].copy_from_slice(&tid.to_be_bytes());
    }

    /// Sets the attribute ID and clears the reserved word after it.
    pub fn set_attribute_id(&mut self, id: u16) {
        self.buffer.as_mut()[fields::ATTRIBUTE_ID].copy_from_slice(&id.to_be_bytes());
        self.buffer.as_mut()[fields::RESERVED].fill(0);
    }

    /// Sets the attribute modifier.
    pub fn set_attribute_modifier(&mut self, modifier: u32) {
        self.buffer.as_mut()[fields::ATTRIBUTE_MODIFIER].copy_from_slice(&modifier.to_be_bytes());
    }

    /// The class-specific data after the header, to write.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A parsed MAD common header.
///
/// The reserved word is not kept: `emit` writes it as zero, as the sender must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Base version ([`BASE_VERSION`]).
    pub base_version: u8,
    /// Management class.
    pub mgmt_class: MgmtClass,
    /// Class version.
    pub class_version: u8,
    /// Method, response bit included.
    pub method: Method,
    /// Status.
    pub status: u16,
    /// Class-specific word.
    pub class_specific: u16,
    /// Transaction ID.
    pub transaction_id: u64,
    /// Attribute ID (see [`crate::cm::AttributeId`] for the CM's).
    pub attribute_id: u16,
    /// Attribute modifier.
    pub attribute_modifier: u32,
}

impl Repr {
    /// Reads a MAD common header. Any version parses: receivers decide what they serve.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            base_version: packet.base_version(),
            mgmt_class: packet.mgmt_class(),
            class_version: packet.class_version(),
            method: packet.method(),
            status: packet.status(),
            class_specific: packet.class_specific(),
            transaction_id: packet.transaction_id(),
            attribute_id: packet.attribute_id(),
            attribute_modifier: packet.attribute_modifier(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_base_version(self.base_version);
        packet.set_mgmt_class(self.mgmt_class);
        packet.set_class_version(self.class_version);
        packet.set_method(self.method);
        packet.set_status(self.status);
        packet.set_class_specific(self.class_specific);
        packet.set_transaction_id(self.transaction_id);
        packet.set_attribute_id(self.attribute_id);
        packet.set_attribute_modifier(self.attribute_modifier);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MAD class={} v{} method={} attr={:#06x} tid={:#x}",
            self.mgmt_class,
            self.class_version,
            self.method,
            self.attribute_id,
            self.transaction_id
        )?;
        if self.attribute_modifier != 0 {
            write!(f, " attr_mod={:#x}", self.attribute_modifier)?;
        }
        if self.status != 0 {
            write!(f, " status={:#06x}", self.status)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// The MAD header of rping's CM REQ in `testdata/pcaps/rping_cm.pcap` (frame 1).
    const REQ_HEADER: [u8; HEADER_LEN] = [
        0x01, 0x07, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9d, 0x3c, 0x4e,
        0x8f, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn parses_captured_header() {
        let repr = Repr::parse(&Packet::new_checked(&REQ_HEADER[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                base_version: BASE_VERSION,
                mgmt_class: MgmtClass::CommunicationManagement,
                class_version: 2,
                method: Method::Send,
                status: 0,
                class_specific: 0,
                transaction_id: 0x2_9d3c_4e8f,
                attribute_id: 0x0010,
                attribute_modifier: 0,
            }
        );
        let mut out = [0xffu8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, REQ_HEADER);
    }

    #[test]
    fn every_field_round_trips_and_unknown_values_survive() {
        let repr = Repr {
            base_version: 0x80,
            mgmt_class: MgmtClass::Unknown(0x30),
            class_version: 0xfe,
            method: Method::Unknown(0x92),
            status: 0x1234,
            class_specific: 0x5678,
            transaction_id: 0x0102_0304_0506_0708,
            attribute_id: 0xabcd,
            attribute_modifier: 0xdead_beef,
        };
        let mut out = [0u8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(
            out,
            [
                0x80, 0x30, 0xfe, 0x92, 0x12, 0x34, 0x56, 0x78, 1, 2, 3, 4, 5, 6, 7, 8, 0xab, 0xcd,
                0, 0, 0xde, 0xad, 0xbe, 0xef
            ]
        );
        assert_eq!(Repr::parse(&Packet::new_unchecked(&out[..])), Ok(repr));
    }

    #[test]
    fn rejects_short_header() {
        assert_eq!(
            Packet::new_checked(&REQ_HEADER[..HEADER_LEN - 1]).err(),
            Some(Error::Truncated)
        );
    }
}

//! The BTH opcode and what it implies: which extended headers follow the BTH, whether
//! the packet carries payload, and where it stands in a message.
//!
//! The top three bits name the transport (RC 000, UC 001, RD 010, UD 011, CNP 100), the
//! low five the operation. ferroce knows RC, UC, UD and the RoCEv2 CNP; everything else
//! parses as [`OpCode::Unknown`] so every byte round-trips.

use core::fmt;

/// The transport service an opcode belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Reliable Connected.
    Rc,
    /// Unreliable Connected.
    Uc,
    /// Reliable Datagram (not supported by ferroce or Linux rxe).
    Rd,
    /// Unreliable Datagram.
    Ud,
    /// RoCEv2 congestion notification packets (0x80 block).
    Cnp,
    /// Reserved or manufacturer-specific blocks.
    Other,
}

/// What an opcode does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// SEND (also with immediate / with invalidate).
    Send,
    /// RDMA WRITE (also with immediate).
    Write,
    /// RDMA READ request.
    ReadRequest,
    /// RDMA READ response.
    ReadResponse,
    /// ACK or NAK.
    Acknowledge,
    /// Atomic acknowledge carrying the original remote value.
    AtomicAcknowledge,
    /// ATOMIC compare and swap.
    CompareSwap,
    /// ATOMIC fetch and add.
    FetchAdd,
    /// Congestion notification.
    Cnp,
}

/// Where a packet stands in a multi-packet message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// First packet of several.
    First,
    /// A middle packet.
    Middle,
    /// Last packet of several.
    Last,
    /// The whole message in one packet (also requests and acknowledges).
    Only,
}

impl Position {
    /// True for First and Only: the packet starts a message.
    pub const fn starts_message(self) -> bool {
        matches!(self, Position::First | Position::Only)
    }

    /// True for Last and Only: the packet ends a message.
    pub const fn ends_message(self) -> bool {
        matches!(self, Position::Last | Position::Only)
    }
}

/// The extended transport headers that follow the BTH, in wire order:
/// DETH, RETH, AtomicETH, AETH, AtomicAckETH, ImmDt, IETH (then payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HeaderSet {
    /// Datagram ETH (UD): Q_Key and source QP.
    pub deth: bool,
    /// RDMA ETH: virtual address, rkey, DMA length.
    pub reth: bool,
    /// Atomic ETH: virtual address, rkey, swap/add and compare data.
    pub atomic_eth: bool,
    /// ACK ETH: syndrome and MSN.
    pub aeth: bool,
    /// Atomic ACK ETH: the original remote data.
    pub atomic_ack_eth: bool,
    /// Immediate data.
    pub imm: bool,
    /// Invalidate ETH: the rkey to invalidate.
    pub ieth: bool,
    /// The 16 reserved bytes of a CNP.
    pub cnp: bool,
}

impl HeaderSet {
    /// Total length of these headers in bytes.
    pub const fn len(&self) -> usize {
        (self.deth as usize) * crate::deth::HEADER_LEN
            + (self.reth as usize) * crate::reth::HEADER_LEN
            + (self.atomic_eth as usize) * crate::atomic::ATOMIC_ETH_LEN
            + (self.aeth as usize) * crate::aeth::HEADER_LEN
            + (self.atomic_ack_eth as usize) * crate::atomic::ATOMIC_ACK_ETH_LEN
            + (self.imm as usize) * crate::imm::HEADER_LEN
            + (self.ieth as usize) * crate::ieth::HEADER_LEN
            + (self.cnp as usize) * crate::cnp::HEADER_LEN
    }

    /// True when no extended header follows the BTH.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Static facts about one known opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpInfo {
    /// Human-readable name, as Wireshark spells it.
    pub name: &'static str,
    /// Transport service.
    pub transport: Transport,
    /// What the packet does.
    pub operation: Operation,
    /// Position in its message.
    pub position: Position,
    /// Extended headers after the BTH.
    pub headers: HeaderSet,
    /// Whether payload may follow the headers.
    pub payload: bool,
}

const fn hs(
    deth: bool,
    reth: bool,
    atomic_eth: bool,
    aeth: bool,
    imm: bool,
    ieth: bool,
) -> HeaderSet {
    HeaderSet {
        deth,
        reth,
        atomic_eth,
        aeth,
        atomic_ack_eth: false,
        imm,
        ieth,
        cnp: false,
    }
}

const NONE: HeaderSet = hs(false, false, false, false, false, false);
const RETH: HeaderSet = hs(false, true, false, false, false, false);
const RETH_IMM: HeaderSet = hs(false, true, false, false, true, false);
const IMM: HeaderSet = hs(false, false, false, false, true, false);
const IETH: HeaderSet = hs(false, false, false, false, false, true);
const AETH: HeaderSet = hs(false, false, false, true, false, false);
const ATOMIC: HeaderSet = hs(false, false, true, false, false, false);
const ATOMIC_ACK: HeaderSet = HeaderSet {
    aeth: true,
    atomic_ack_eth: true,
    ..NONE
};
const DETH: HeaderSet = hs(true, false, false, false, false, false);
const DETH_IMM: HeaderSet = hs(true, false, false, false, true, false);
const CNP: HeaderSet = HeaderSet { cnp: true, ..NONE };

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal,
        $name:literal, $transport:ident, $op:ident, $pos:ident, $headers:ident, $payload:literal; )*) => {
        /// A BTH opcode. Unknown values round-trip through [`OpCode::Unknown`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OpCode {
            $( $(#[$doc])* $variant, )*
            /// Any opcode ferroce does not implement (RD, reserved, vendor).
            Unknown(u8),
        }

        impl From<u8> for OpCode {
            #[inline]
            fn from(value: u8) -> OpCode {
                layout(value).opcode
            }
        }

        impl From<OpCode> for u8 {
            fn from(op: OpCode) -> u8 {
                match op {
                    $( OpCode::$variant => $value, )*
                    OpCode::Unknown(other) => other,
                }
            }
        }

        impl OpCode {
            /// Every known opcode, in numeric order.
            pub const ALL: &'static [OpCode] = &[$( OpCode::$variant, )*];

            /// `OpCode::from` in a `const` context.
            const fn from_byte(value: u8) -> OpCode {
                match value {
                    $( $value => OpCode::$variant, )*
                    other => OpCode::Unknown(other),
                }
            }

            /// What the opcode implies, or `None` for [`OpCode::Unknown`].
            #[inline]
            pub const fn info(self) -> Option<OpInfo> {
                match self {
                    $( OpCode::$variant => Some(OpInfo {
                        name: $name,
                        transport: Transport::$transport,
                        operation: Operation::$op,
                        position: Position::$pos,
                        headers: $headers,
                        payload: $payload,
                    }), )*
                    OpCode::Unknown(_) => None,
                }
            }
        }
    };
}

opcodes! {
    /// RC SEND First.
    RcSendFirst = 0x00, "RC Send First", Rc, Send, First, NONE, true;
    /// RC SEND Middle.
    RcSendMiddle = 0x01, "RC Send Middle", Rc, Send, Middle, NONE, true;
    /// RC SEND Last.
    RcSendLast = 0x02, "RC Send Last", Rc, Send, Last, NONE, true;
    /// RC SEND Last with Immediate.
    RcSendLastImm = 0x03, "RC Send Last Immediate", Rc, Send, Last, IMM, true;
    /// RC SEND Only.
    RcSendOnly = 0x04, "RC Send Only", Rc, Send, Only, NONE, true;
    /// RC SEND Only with Immediate.
    RcSendOnlyImm = 0x05, "RC Send Only Immediate", Rc, Send, Only, IMM, true;
    /// RC RDMA WRITE First.
    RcWriteFirst = 0x06, "RC RDMA Write First", Rc, Write, First, RETH, true;
    /// RC RDMA WRITE Middle.
    RcWriteMiddle = 0x07, "RC RDMA Write Middle", Rc, Write, Middle, NONE, true;
    /// RC RDMA WRITE Last.
    RcWriteLast = 0x08, "RC RDMA Write Last", Rc, Write, Last, NONE, true;
    /// RC RDMA WRITE Last with Immediate.
    RcWriteLastImm = 0x09, "RC RDMA Write Last Immediate", Rc, Write, Last, IMM, true;
    /// RC RDMA WRITE Only.
    RcWriteOnly = 0x0a, "RC RDMA Write Only", Rc, Write, Only, RETH, true;
    /// RC RDMA WRITE Only with Immediate.
    RcWriteOnlyImm = 0x0b, "RC RDMA Write Only Immediate", Rc, Write, Only, RETH_IMM, true;
    /// RC RDMA READ Request.
    RcReadRequest = 0x0c, "RC RDMA Read Request", Rc, ReadRequest, Only, RETH, false;
    /// RC RDMA READ Response First.
    RcReadResponseFirst = 0x0d, "RC RDMA Read Response First", Rc, ReadResponse, First, AETH, true;
    /// RC RDMA READ Response Middle.
    RcReadResponseMiddle = 0x0e, "RC RDMA Read Response Middle", Rc, ReadResponse, Middle, NONE, true;
    /// RC RDMA READ Response Last.
    RcReadResponseLast = 0x0f, "RC RDMA Read Response Last", Rc, ReadResponse, Last, AETH, true;
    /// RC RDMA READ Response Only.
    RcReadResponseOnly = 0x10, "RC RDMA Read Response Only", Rc, ReadResponse, Only, AETH, true;
    /// RC Acknowledge (ACK or NAK).
    RcAcknowledge = 0x11, "RC Acknowledge", Rc, Acknowledge, Only, AETH, false;
    /// RC ATOMIC Acknowledge.
    RcAtomicAcknowledge = 0x12, "RC Atomic Acknowledge", Rc, AtomicAcknowledge, Only, ATOMIC_ACK, false;
    /// RC ATOMIC Compare and Swap.
    RcCompareSwap = 0x13, "RC Compare Swap", Rc, CompareSwap, Only, ATOMIC, false;
    /// RC ATOMIC Fetch and Add.
    RcFetchAdd = 0x14, "RC Fetch Add", Rc, FetchAdd, Only, ATOMIC, false;
    /// RC SEND Last with Invalidate.
    RcSendLastInv = 0x16, "RC Send Last Invalidate", Rc, Send, Last, IETH, true;
    /// RC SEND Only with Invalidate.
    RcSendOnlyInv = 0x17, "RC Send Only Invalidate", Rc, Send, Only, IETH, true;
    /// UC SEND First.
    UcSendFirst = 0x20, "UC Send First", Uc, Send, First, NONE, true;
    /// UC SEND Middle.
    UcSendMiddle = 0x21, "UC Send Middle", Uc, Send, Middle, NONE, true;
    /// UC SEND Last.
    UcSendLast = 0x22, "UC Send Last", Uc, Send, Last, NONE, true;
    /// UC SEND Last with Immediate.
    UcSendLastImm = 0x23, "UC Send Last Immediate", Uc, Send, Last, IMM, true;
    /// UC SEND Only.
    UcSendOnly = 0x24, "UC Send Only", Uc, Send, Only, NONE, true;
    /// UC SEND Only with Immediate.
    UcSendOnlyImm = 0x25, "UC Send Only Immediate", Uc, Send, Only, IMM, true;
    /// UC RDMA WRITE First.
    UcWriteFirst = 0x26, "UC RDMA Write First", Uc, Write, First, RETH, true;
    /// UC RDMA WRITE Middle.
    UcWriteMiddle = 0x27, "UC RDMA Write Middle", Uc, Write, Middle, NONE, true;
    /// UC RDMA WRITE Last.
    UcWriteLast = 0x28, "UC RDMA Write Last", Uc, Write, Last, NONE, true;
    /// UC RDMA WRITE Last with Immediate.
    UcWriteLastImm = 0x29, "UC RDMA Write Last Immediate", Uc, Write, Last, IMM, true;
    /// UC RDMA WRITE Only.
    UcWriteOnly = 0x2a, "UC RDMA Write Only", Uc, Write, Only, RETH, true;
    /// UC RDMA WRITE Only with Immediate.
    UcWriteOnlyImm = 0x2b, "UC RDMA Write Only Immediate", Uc, Write, Only, RETH_IMM, true;
    /// UD SEND Only.
    UdSendOnly = 0x64, "UD Send Only", Ud, Send, Only, DETH, true;
    /// UD SEND Only with Immediate.
    UdSendOnlyImm = 0x65, "UD Send Only Immediate", Ud, Send, Only, DETH_IMM, true;
    /// RoCEv2 Congestion Notification Packet.
    Cnp = 0x81, "CNP", Cnp, Cnp, Only, CNP, false;
}

/// What the packet parser needs to know about one opcode byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// `OpCode::from(byte)`.
    pub opcode: OpCode,
    /// `opcode.info()`.
    pub info: Option<OpInfo>,
    /// Length of the BTH and the extended headers (0 for unknown opcodes).
    pub header_len: u8,
}

/// [`Layout`] of every opcode byte, computed at compile time from the table above, so
/// the receive path does one load instead of a match to the enum, another to its facts
/// and a sum of header lengths.
static LAYOUTS: [Layout; 256] = {
    let mut table = [Layout {
        opcode: OpCode::Unknown(0),
        info: None,
        header_len: 0,
    }; 256];
    let mut byte = 0;
    while byte < 256 {
        let opcode = OpCode::from_byte(byte as u8);
        let info = opcode.info();
        table[byte] = Layout {
            opcode,
            info,
            header_len: match info {
                Some(info) => (crate::bth::HEADER_LEN + info.headers.len()) as u8,
                None => 0,
            },
        };
        byte += 1;
    }
    table
};

/// The [`Layout`] of an opcode byte.
#[inline]
pub(crate) fn layout(byte: u8) -> Layout {
    LAYOUTS[usize::from(byte)]
}

impl OpCode {
    /// The transport block of the opcode's top three bits (also for unknown opcodes).
    pub const fn transport(self) -> Transport {
        match self.info() {
            Some(info) => info.transport,
            None => {
                let OpCode::Unknown(v) = self else {
                    unreachable!()
                };
                match v >> 5 {
                    0 => Transport::Rc,
                    1 => Transport::Uc,
                    2 => Transport::Rd,
                    3 => Transport::Ud,
                    4 => Transport::Cnp,
                    _ => Transport::Other,
                }
            }
        }
    }

    /// The name, or `"Unknown"`.
    pub const fn name(self) -> &'static str {
        match self.info() {
            Some(info) => info.name,
            None => "Unknown",
        }
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpCode::Unknown(v) => write!(f, "Unknown({v:#04x})"),
            known => f.write_str(known.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(u8::from(OpCode::from(b)), b);
        }
    }

    #[test]
    fn known_opcodes_are_known() {
        for &op in OpCode::ALL {
            assert!(op.info().is_some());
            assert!(!matches!(OpCode::from(u8::from(op)), OpCode::Unknown(_)));
        }
        assert_eq!(OpCode::ALL.len(), 38);
        // RD and reserved RC opcodes stay unknown.
        assert_eq!(OpCode::from(0x15), OpCode::Unknown(0x15));
        assert_eq!(OpCode::from(0x40).transport(), Transport::Rd);
    }

    #[test]
    fn header_layouts_match_the_spec() {
        let info = |op: OpCode| op.info().unwrap_or_else(|| panic!("{op}"));
        assert_eq!(info(OpCode::RcWriteOnlyImm).headers.len(), 16 + 4);
        assert_eq!(info(OpCode::RcAtomicAcknowledge).headers.len(), 4 + 8);
        assert_eq!(info(OpCode::RcCompareSwap).headers.len(), 28);
        assert_eq!(info(OpCode::UdSendOnlyImm).headers.len(), 8 + 4);
        assert_eq!(info(OpCode::Cnp).headers.len(), 16);
        assert!(info(OpCode::RcReadResponseMiddle).headers.is_empty());
        assert!(!info(OpCode::RcReadRequest).payload);
        assert_eq!(info(OpCode::RcSendLastInv).position, Position::Last);
    }
}

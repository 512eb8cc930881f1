//! RoCEv2 datagrams out of pcap and pcapng captures.
//!
//! [`Reader`] walks a capture held in memory and yields one [`Frame`] per packet record.
//! Each frame is taken apart down to UDP: link layer (Ethernet with any number of
//! 802.1Q/802.1ad tags, Linux cooked SLL and SLL2, raw IP, BSD null/loopback), then IPv4
//! (options skipped, no fragments) or IPv6 (UDP as the next header). A UDP datagram to
//! the RoCEv2 port becomes a [`Datagram`]: its ICRC [`Envelope`], ECN bits and UDP
//! payload. The payload's end comes from the IP and UDP length fields, never from the
//! frame length, because Ethernet pads short frames and captures may carry an FCS.
//!
//! Frames that are not RoCEv2 (TCP, ARP, other UDP ports) are [`FrameContent::Other`];
//! frames whose headers are truncated or whose lengths disagree are
//! [`FrameContent::Malformed`], never skipped silently. A capture file that breaks its
//! own format stops the iteration with a [`CaptureError`]. Nothing here panics on any
//! input.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferroce_wire::icrc::{Envelope, IpFields};
use ferroce_wire::ROCEV2_UDP_PORT;
use pcap_file::pcap::{PcapHeader, PcapParser};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, PcapError, TsResolution};
use smoltcp::wire::{EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket};

/// The link types ferroce can take apart (pcap `LINKTYPE_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// BSD loopback (`LINKTYPE_NULL`, 0): a 4-byte address family in the capturing
    /// host's byte order.
    Null,
    /// Ethernet (`LINKTYPE_ETHERNET`, 1), with any number of VLAN tags.
    Ethernet,
    /// Raw IPv4 or IPv6 (`LINKTYPE_RAW`, 101, and the historical DLT values 12 and 14).
    RawIp,
    /// OpenBSD loopback (`LINKTYPE_LOOP`, 108): a big-endian 4-byte address family.
    Loop,
    /// Linux cooked capture v1 (`LINKTYPE_LINUX_SLL`, 113).
    LinuxSll,
    /// Raw IPv4 only (`LINKTYPE_IPV4`, 228).
    Ipv4,
    /// Raw IPv6 only (`LINKTYPE_IPV6`, 229).
    Ipv6,
    /// Linux cooked capture v2 (`LINKTYPE_LINUX_SLL2`, 276).
    LinuxSll2,
}

impl LinkType {
    /// The link type for a pcap/pcapng link type number, if ferroce reads it.
    pub fn from_number(number: u32) -> Option<LinkType> {
        // The upper bits of the pcap header's field carry FCS information, not the type.
        Some(match number & 0xffff {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::RawIp,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            _ => return None,
        })
    }
}

/// Why a capture file could not be read (further).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The file starts with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng capture (file starts with {0})")]
    NotACapture(String),
    /// The file ends inside its own file header.
    #[error("capture file header is truncated ({0} bytes)")]
    TruncatedHeader(usize),
    /// The file ends inside a packet record or block.
    #[error("capture is cut short after frame {after_frame} ({remaining} bytes of an incomplete record)")]
    Truncated {
        /// The last complete frame.
        after_frame: u64,
        /// Bytes left over that do not make a whole record.
        remaining: usize,
    },
    /// A record or block breaks the pcap/pcapng format.
    #[error("bad capture record after frame {after_frame}: {source}")]
    Record {
        /// The last complete frame.
        after_frame: u64,
        /// What the pcap parser found.
        #[source]
        source: PcapError,
    },
    /// The capture's link type is not one ferroce takes apart.
    #[error(
        "unsupported link type {0} (ferroce reads Ethernet, Linux SLL/SLL2, raw IP and loopback)"
    )]
    UnsupportedLinkType(u32),
    /// A pcapng packet names an interface no Interface Description Block declared.
    #[error("frame {frame} refers to interface {interface}, which the capture never describes")]
    UnknownInterface {
        /// The frame.
        frame: u64,
        /// The interface id it names.
        interface: u32,
    },
}

/// Why a frame could not be taken apart down to a RoCEv2 UDP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame ends inside a header.
    Truncated {
        /// Which header.
        header: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The IP version field does not match the link layer's protocol.
    IpVersion(u8),
    /// The IPv4 header length field is below 20 bytes.
    Ipv4HeaderLength(usize),
    /// The IPv4 total length is shorter than its own header.
    Ipv4TotalLength {
        /// The total length field.
        total: usize,
        /// The header length.
        header: usize,
    },
    /// A RoCEv2 datagram sent in IPv4 fragments (RoCEv2 sets DF and never fragments).
    Fragmented,
    /// The UDP length field disagrees with the IP payload length.
    UdpLength {
        /// The UDP length field.
        udp: usize,
        /// The length IP gives the UDP datagram.
        ip: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Truncated {
                header,
                needed,
                available,
            } => write!(
                f,
                "{header} needs {needed} bytes, frame has {available} left"
            ),
            FrameError::IpVersion(v) => {
                write!(f, "unexpected IP version {v}")
            }
            FrameError::Ipv4HeaderLength(len) => write!(f, "IPv4 header length {len} < 20"),
            FrameError::Ipv4TotalLength { total, header } => write!(
                f,
                "IPv4 total length {total} shorter than its {header}-byte header"
            ),
            FrameError::Fragmented => f.write_str("fragmented IPv4 datagram"),
            FrameError::UdpLength { udp, ip } => {
                write!(f, "UDP length {udp} but IP carries {ip} bytes of UDP")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// A UDP datagram to the RoCEv2 port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Addresses, ports and (IPv4) identification and flags, as the ICRC covers them.
    pub envelope: Envelope,
    /// The ECN bits of the IP header (0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE).
    pub ecn: u8,
    /// The UDP payload (BTH to ICRC), bounded by the IP and UDP length fields.
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// The datagrams of a UDP GSO send, when this is one: a capture taken where the
    /// kernel had not segmented it yet (on `lo`, or before a NIC that segments) shows
    /// the whole run as one datagram, which the receiving side splits into equal-sized
    /// datagrams (the last maybe shorter), numbering IPv4 identifications up from the
    /// run's. The segment size is not in the frame, so it is found: the first size (a
    /// multiple of 4, as every RoCEv2 packet is) at which the next BTH names the same
    /// P_Key and destination QP and the first segment has a good ICRC. `None` when the
    /// datagram's own ICRC is good, or no such size exists.
    pub fn gso_segments(&self) -> Option<Vec<Datagram<'a>>> {
        use ferroce_wire::{icrc, ICRC_LEN};
        const BTH: usize = ferroce_wire::bth::HEADER_LEN;
        let payload = self.payload;
        if payload.len() < 2 * (BTH + ICRC_LEN) || icrc::verify(&self.envelope, payload) == Ok(true)
        {
            return None;
        }
        let (pkey, dest_qp) = (&payload[2..4], &payload[5..8]);
        let size = (BTH + ICRC_LEN..=payload.len() - (BTH + ICRC_LEN))
            .step_by(4)
            .filter(|&s| payload[s + 2..s + 4] == *pkey && payload[s + 5..s + 8] == *dest_qp)
            .find(|&s| icrc::verify(&self.envelope, &payload[..s]) == Ok(true))?;
        let segments = payload
            .chunks(size)
            .enumerate()
            .map(|(i, bytes)| {
                let mut envelope = self.envelope;
                if let IpFields::V4 { ident, .. } = &mut envelope.ip {
                    *ident = ident.wrapping_add(i as u16);
                }
                Datagram {
                    envelope,
                    ecn: self.ecn,
                    payload: bytes,
                }
            })
            .collect();
        Some(segments)
    }

    /// Source address and UDP port.
    pub fn source(&self) -> SocketAddr {
        let ip = match self.envelope.ip {
            IpFields::V4 { src, .. } => IpAddr::V4(src),
            IpFields::V6 { src, .. } => IpAddr::V6(src),
        };
        SocketAddr::new(ip, self.envelope.src_port)
    }

    /// Destination address and UDP port.
    pub fn destination(&self) -> SocketAddr {
        let ip = match self.envelope.ip {
            IpFields::V4 { dst, .. } => IpAddr::V4(dst),
            IpFields::V6 { dst, .. } => IpAddr::V6(dst),
        };
        SocketAddr::new(ip, self.envelope.dst_port)
    }
}

/// What a frame turned out to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameContent<'a> {
    /// A UDP datagram to the RoCEv2 port.
    RoceV2(Datagram<'a>),
    /// Headers that are truncated or disagree about lengths.
    Malformed(FrameError),
    /// Anything else (TCP, ARP, other UDP ports, non-IP link protocols).
    Other,
}

/// One packet record of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Position in the capture, from 1 (as Wireshark numbers frames).
    pub number: u64,
    /// Capture time since the Unix epoch.
    pub timestamp: Duration,
    /// The link type the frame was captured with.
    pub link_type: LinkType,
    /// The bytes captured.
    pub data: &'a [u8],
    /// The frame's length on the wire (more than `data.len()` when the snap length cut it).
    pub original_len: u32,
    /// What the frame holds.
    pub content: FrameContent<'a>,
}

/// Reads the frames of a pcap or pcapng capture held in memory.
pub struct Reader<'a> {
    format: Format,
    rest: &'a [u8],
    port: u16,
    frames: u64,
    failed: bool,
}

enum Format {
    Pcap {
        parser: PcapParser,
        link_type: LinkType,
        header: PcapHeader,
    },
    PcapNg {
        parser: Box<PcapNgParser>,
    },
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match &self.format {
            Format::Pcap { .. } => "pcap",
            Format::PcapNg { .. } => "pcapng",
        };
        f.debug_struct("Reader")
            .field("format", &format)
            .field("port", &self.port)
            .field("frames", &self.frames)
            .field("remaining", &self.rest.len())
            .finish()
    }
}

const PCAPNG_SECTION_HEADER: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAP_MAGICS: [u32; 4] = [0xa1b2_c3d4, 0xa1b2_3c4d, 0xd4c3_b2a1, 0x4d3c_b2a1];

const PCAPNG_SIMPLE_PACKET_BLOCK: u32 = 3;
const PCAPNG_OBSOLETE_PACKET_BLOCK: u32 = 2;
const PCAPNG_ENHANCED_PACKET_BLOCK: u32 = 6;

impl<'a> Reader<'a> {
    /// Opens a capture; datagrams to UDP port 4791 are RoCEv2.
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, CaptureError> {
        let magic: [u8; 4] = match bytes.get(..4) {
            Some(m) => [m[0], m[1], m[2], m[3]],
            None => return Err(CaptureError::TruncatedHeader(bytes.len())),
        };
        if magic == PCAPNG_SECTION_HEADER {
            let (rest, parser) = PcapNgParser::new(bytes).map_err(|e| match e {
                PcapError::IncompleteBuffer => CaptureError::TruncatedHeader(bytes.len()),
                source => CaptureError::Record {
                    after_frame: 0,
                    source,
                },
            })?;
            return Ok(Reader {
                format: Format::PcapNg {
                    parser: Box::new(parser),
                },
                rest,
                port: ROCEV2_UDP_PORT,
                frames: 0,
                failed: false,
            });
        }
        if !PCAP_MAGICS.contains(&u32::from_be_bytes(magic)) {
            let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(CaptureError::NotACapture(shown.join(" ")));
        }
        let (rest, parser) = PcapParser::new(bytes).map_err(|e| match e {
            PcapError::IncompleteBuffer => CaptureError::TruncatedHeader(bytes.len()),
            source => CaptureError::Record {
                after_frame: 0,
                source,
            },
        })?;
        let header = parser.header();
        let number = u32::from(header.datalink);
        let link_type =
            LinkType::from_number(number).ok_or(CaptureError::UnsupportedLinkType(number))?;
        Ok(Reader {
            format: Format::Pcap {
                parser,
                link_type,
                header,
            },
            rest,
            port: ROCEV2_UDP_PORT,
            frames: 0,
            failed: false,
        })
    }

    /// Treats UDP datagrams to `port` as RoCEv2 instead of 4791.
    pub fn with_port(mut self, port: u16) -> Reader<'a> {
        self.port = port;
        self
    }

    /// The UDP port taken as RoCEv2.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn record_error(&self, error: PcapError) -> CaptureError {
        match error {
            PcapError::IncompleteBuffer => CaptureError::Truncated {
                after_frame: self.frames,
                remaining: self.rest.len(),
            },
            source => CaptureError::Record {
                after_frame: self.frames,
                source,
            },
        }
    }

    /// The next packet record: (timestamp, link type, captured bytes, original length).
    fn next_record(&mut self) -> Option<Result<Record<'a>, CaptureError>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let rest = self.rest;
            match &mut self.format {
                Format::Pcap {
                    parser,
                    link_type,
                    header,
                } => {
                    let (remaining, raw) = match parser.next_raw_packet(rest) {
                        Ok(ok) => ok,
                        Err(e) => return Some(Err(self.record_error(e))),
                    };
                    let data = match raw.data {
                        Cow::Borrowed(data) => data,
                        Cow::Owned(_) => return Some(Err(self.record_error(owned_data()))),
                    };
                    // Nanoseconds past a second are carried over instead of rejected:
                    // a bad clock field must not hide the packet.
                    let nanos = match header.ts_resolution {
                        TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1000,
                        TsResolution::NanoSecond => u64::from(raw.ts_frac),
                    };
                    let timestamp =
                        Duration::from_secs(u64::from(raw.ts_sec)) + Duration::from_nanos(nanos);
                    self.rest = remaining;
                    return Some(Ok(Record {
                        timestamp,
                        link_type: Ok(*link_type),
                        data,
                        original_len: raw.orig_len,
                    }));
                }
                Format::PcapNg { parser, .. } => {
                    // Only packet blocks are converted: pcap-file's parsers of some
                    // other blocks (name resolution) can panic on corrupt input, and
                    // section/interface blocks are taken in by `next_raw_block`.
                    let block_type = block_type(rest, parser.section().endianness);
                    let is_packet = matches!(
                        block_type,
                        Some(
                            PCAPNG_ENHANCED_PACKET_BLOCK
                                | PCAPNG_SIMPLE_PACKET_BLOCK
                                | PCAPNG_OBSOLETE_PACKET_BLOCK
                        )
                    );
                    if !is_packet {
                        match parser.next_raw_block(rest) {
                            Ok((remaining, _)) => {
                                self.rest = remaining;
                                continue;
                            }
                            Err(e) => return Some(Err(self.record_error(e))),
                        }
                    }
                    let (remaining, block) = match parser.next_block(rest) {
                        Ok(ok) => ok,
                        Err(e) => return Some(Err(self.record_error(e))),
                    };
                    let (interface, ticks, data, original_len) = match block {
                        Block::EnhancedPacket(b) => (
                            b.interface_id,
                            Some(u64::try_from(b.timestamp.as_nanos()).unwrap_or(u64::MAX)),
                            b.data,
                            b.original_len,
                        ),
                        Block::Packet(b) => (
                            u32::from(b.interface_id),
                            Some(b.timestamp),
                            b.data,
                            b.original_len,
                        ),
                        Block::SimplePacket(b) => (0, None, b.data, b.original_len),
                        _ => {
                            self.rest = remaining;
                            continue;
                        }
                    };
                    let data = match data {
                        Cow::Borrowed(data) => data,
                        Cow::Owned(_) => return Some(Err(self.record_error(owned_data()))),
                    };
                    self.rest = remaining;
                    let Some(description) = parser.interfaces().get(interface as usize) else {
                        return Some(Err(CaptureError::UnknownInterface {
                            frame: self.frames + 1,
                            interface,
                        }));
                    };
                    // A simple packet block holds its data padded to 4 bytes; the
                    // original length (up to the snap length) says how much is packet.
                    let data = if ticks.is_none() {
                        let keep = (original_len as usize)
                            .min(snaplen(description))
                            .min(data.len());
                        &data[..keep]
                    } else {
                        data
                    };
                    let link_number = u32::from(description.linktype);
                    return Some(Ok(Record {
                        timestamp: ticks
                            .map(|t| ticks_to_duration(t, resolution(description)))
                            .unwrap_or_default(),
                        link_type: LinkType::from_number(link_number).ok_or(link_number),
                        data,
                        original_len,
                    }));
                }
            }
        }
    }
}

struct Record<'a> {
    timestamp: Duration,
    link_type: Result<LinkType, u32>,
    data: &'a [u8],
    original_len: u32,
}

/// pcap-file hands out borrowed slices when parsing a slice; an owned one would be a
/// change in that crate, reported rather than unwrapped.
fn owned_data() -> PcapError {
    PcapError::InvalidField("packet data not borrowed from the capture")
}

fn block_type(bytes: &[u8], endianness: Endianness) -> Option<u32> {
    let b = bytes.get(..4)?;
    let b = [b[0], b[1], b[2], b[3]];
    Some(match endianness {
        Endianness::Big => u32::from_be_bytes(b),
        Endianness::Little => u32::from_le_bytes(b),
    })
}

fn snaplen(description: &InterfaceDescriptionBlock<'_>) -> usize {
    match description.snaplen {
        0 => usize::MAX,
        n => n as usize,
    }
}

/// Timestamp resolution of an interface: (true = negative power of 2, exponent).
fn resolution(description: &InterfaceDescriptionBlock<'_>) -> (bool, u8) {
    description
        .options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some((r & 0x80 != 0, r & 0x7f)),
            _ => None,
        })
        .unwrap_or((false, 6)) // pcapng default: microseconds
}

/// Converts a pcapng timestamp in units of 10^-exp (or 2^-exp) seconds.
fn ticks_to_duration(ticks: u64, (binary, exponent): (bool, u8)) -> Duration {
    let ticks = u128::from(ticks);
    let (seconds, fraction_nanos) = if binary {
        let exponent = u32::from(exponent);
        let mask = (1u128 << exponent) - 1;
        (
            ticks >> exponent,
            ((ticks & mask) * 1_000_000_000) >> exponent,
        )
    } else {
        match 10u128.checked_pow(u32::from(exponent)) {
            Some(per_second) => (
                ticks / per_second,
                (ticks % per_second) * 1_000_000_000 / per_second,
            ),
            None => (0, 0), // finer than 10^-38 s: any u64 count is below a nanosecond
        }
    };
    Duration::new(
        u64::try_from(seconds).unwrap_or(u64::MAX),
        u32::try_from(fraction_nanos).unwrap_or(0),
    )
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Frame<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let record = match self.next_record()? {
            Ok(record) => record,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let link_type = match record.link_type {
            Ok(link_type) => link_type,
            Err(number) => {
                self.failed = true;
                return Some(Err(CaptureError::UnsupportedLinkType(number)));
            }
        };
        self.frames += 1;
        Some(Ok(Frame {
            number: self.frames,
            timestamp: record.timestamp,
            link_type,
            data: record.data,
            original_len: record.original_len,
            content: classify(link_type, record.data, self.port),
        }))
    }
}

/// Takes a frame apart down to a RoCEv2 datagram.
pub fn classify(link_type: LinkType, frame: &[u8], port: u16) -> FrameContent<'_> {
    let network = match network_layer(link_type, frame) {
        Ok(Some(network)) => network,
        Ok(None) => return FrameContent::Other,
        Err(e) => return FrameContent::Malformed(e),
    };
    let result = match network {
        Network::V4(packet) => ipv4(packet, port),
        Network::V6(packet) => ipv6(packet, port),
    };
    match result {
        Ok(Some(datagram)) => FrameContent::RoceV2(datagram),
        Ok(None) => FrameContent::Other,
        Err(e) => FrameContent::Malformed(e),
    }
}

enum Network<'a> {
    V4(&'a [u8]),
    V6(&'a [u8]),
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad, and the pre-standard QinQ tag.
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];

fn truncated(header: &'static str, needed: usize, available: usize) -> FrameError {
    FrameError::Truncated {
        header,
        needed,
        available,
    }
}

/// Splits off `len` bytes of `header`, or says the frame is too short.
fn split<'a>(
    bytes: &'a [u8],
    len: usize,
    header: &'static str,
) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    if bytes.len() < len {
        Err(truncated(header, len, bytes.len()))
    } else {
        Ok(bytes.split_at(len))
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn network_layer(link_type: LinkType, frame: &[u8]) -> Result<Option<Network<'_>>, FrameError> {
    match link_type {
        LinkType::Ethernet => {
            let ethernet = EthernetFrame::new_checked(frame)
                .map_err(|_| truncated("Ethernet header", 14, frame.len()))?;
            let ethertype = u16::from(ethernet.ethertype());
            by_ethertype(ethertype, ethernet.payload())
        }
        LinkType::LinuxSll => {
            // packet type, ARPHRD type, address length, 8 address bytes, protocol.
            let (header, rest) = split(frame, 16, "Linux SLL header")?;
            by_ethertype(be16(&header[14..16]), rest)
        }
        LinkType::LinuxSll2 => {
            // protocol, reserved, interface index, ARPHRD type, packet type, address
            // length, 8 address bytes.
            let (header, rest) = split(frame, 20, "Linux SLL2 header")?;
            by_ethertype(be16(&header[0..2]), rest)
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => Ok(Some(Network::V4(frame))),
            Some(6) => Ok(Some(Network::V6(frame))),
            Some(v) => Err(FrameError::IpVersion(v)),
            None => Err(truncated("IP header", 20, 0)),
        },
        LinkType::Ipv4 => Ok(Some(Network::V4(frame))),
        LinkType::Ipv6 => Ok(Some(Network::V6(frame))),
        LinkType::Null | LinkType::Loop => {
            let (header, rest) = split(frame, 4, "loopback header")?;
            let header = [header[0], header[1], header[2], header[3]];
            let family = if link_type == LinkType::Loop {
                u32::from_be_bytes(header)
            } else {
                // Host byte order of the capturing machine, which the file does not
                // record: families are small numbers, so the right order gives one.
                let little = u32::from_le_bytes(header);
                if little <= 0xffff {
                    little
                } else {
                    u32::from_be_bytes(header)
                }
            };
            Ok(match family {
                2 => Some(Network::V4(rest)),
                // AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS.
                10 | 24 | 28 | 30 => Some(Network::V6(rest)),
                _ => None,
            })
        }
    }
}

fn by_ethertype(mut ethertype: u16, mut rest: &[u8]) -> Result<Option<Network<'_>>, FrameError> {
    while ETHERTYPE_VLAN.contains(&ethertype) {
        let (tag, after) = split(rest, 4, "VLAN tag")?;
        ethertype = be16(&tag[2..4]);
        rest = after;
    }
    Ok(match ethertype {
        ETHERTYPE_IPV4 => Some(Network::V4(rest)),
        ETHERTYPE_IPV6 => Some(Network::V6(rest)),
        _ => None,
    })
}

fn ipv4(bytes: &[u8], port: u16) -> Result<Option<Datagram<'_>>, FrameError> {
    split(bytes, 20, "IPv4 header")?;
    let packet = Ipv4Packet::new_unchecked(bytes);
    if packet.version() != 4 {
        return Err(FrameError::IpVersion(packet.version()));
    }
    let header_len = usize::from(packet.header_len());
    if header_len < 20 {
        return Err(FrameError::Ipv4HeaderLength(header_len));
    }
    split(bytes, header_len, "IPv4 header with options")?;
    if packet.next_header() != IpProtocol::Udp {
        return Ok(None);
    }
    let total = usize::from(packet.total_len());
    if total < header_len {
        return Err(FrameError::Ipv4TotalLength {
            total,
            header: header_len,
        });
    }
    // The total length, not the frame, ends the datagram (Ethernet pads short frames).
    let (datagram, _padding) = split(bytes, total, "IPv4 total length")?;
    let udp_bytes = &datagram[header_len..];
    if packet.frag_offset() != 0 {
        return Ok(None); // a later fragment: no UDP header to tell its port
    }
    let flags_frag = be16(&bytes[6..8]);
    let envelope_ip = IpFields::V4 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
        ident: packet.ident(),
        flags_frag,
    };
    let datagram = udp(udp_bytes, port, envelope_ip, packet.ecn())?;
    if datagram.is_some() && packet.more_frags() {
        return Err(FrameError::Fragmented);
    }
    Ok(datagram)
}

fn ipv6(bytes: &[u8], port: u16) -> Result<Option<Datagram<'_>>, FrameError> {
    split(bytes, 40, "IPv6 header")?;
    let packet = Ipv6Packet::new_unchecked(bytes);
    if packet.version() != 6 {
        return Err(FrameError::IpVersion(packet.version()));
    }
    if packet.next_header() != IpProtocol::Udp {
        return Ok(None);
    }
    let total = 40 + usize::from(packet.payload_len());
    let (datagram, _padding) = split(bytes, total, "IPv6 payload length")?;
    let envelope_ip = IpFields::V6 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
    };
    udp(
        &datagram[40..],
        port,
        envelope_ip,
        packet.traffic_class() & 0x3,
    )
}

fn udp(bytes: &[u8], port: u16, ip: IpFields, ecn: u8) -> Result<Option<Datagram<'_>>, FrameError> {
    split(bytes, 8, "UDP header")?;
    let packet = UdpPacket::new_unchecked(bytes);
    if packet.dst_port() != port {
        return Ok(None);
    }
    let udp_len = usize::from(packet.len());
    if udp_len != bytes.len() {
        return Err(FrameError::UdpLength {
            udp: udp_len,
            ip: bytes.len(),
        });
    }
    Ok(Some(Datagram {
        envelope: Envelope {
            ip,
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        },
        ecn,
        payload: &bytes[8..],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_timestamp_resolutions() {
        assert_eq!(
            ticks_to_duration(1_500_000, (false, 6)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            ticks_to_duration(1_000_000_123, (false, 9)),
            Duration::new(1, 123)
        );
        assert_eq!(
            ticks_to_duration(3 << 9 | 1 << 8, (true, 10)),
            Duration::from_millis(1750)
        );
        // Absurd resolutions neither panic nor overflow.
        assert_eq!(ticks_to_duration(u64::MAX, (false, 127)), Duration::ZERO);
        assert_eq!(ticks_to_duration(u64::MAX, (true, 127)).as_secs(), 0);
    }

    #[test]
    fn link_type_numbers() {
        assert_eq!(LinkType::from_number(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_number(12), Some(LinkType::RawIp));
        assert_eq!(LinkType::from_number(276), Some(LinkType::LinuxSll2));
        // FCS bits above the type are ignored.
        assert_eq!(LinkType::from_number(0x1400_0001), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_number(147), None);
    }

    fn udp_to_4791(payload_len: usize) -> Vec<u8> {
        let udp_len = 8 + payload_len;
        let total = 20 + udp_len;
        let mut ip = vec![
            0x45, 0x02, 0, 0, 0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&49152u16.to_be_bytes());
        ip.extend_from_slice(&4791u16.to_be_bytes());
        ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend((0..payload_len).map(|i| i as u8));
        ip
    }

    #[test]
    fn raw_ipv4_datagram_and_its_envelope() {
        let packet = udp_to_4791(16);
        let FrameContent::RoceV2(d) = classify(LinkType::RawIp, &packet, 4791) else {
            panic!("not RoCEv2");
        };
        assert_eq!(d.payload.len(), 16);
        assert_eq!(d.ecn, 2);
        assert_eq!(d.source().to_string(), "10.0.0.1:49152");
        assert_eq!(d.destination().to_string(), "10.0.0.2:4791");
        assert_eq!(
            d.envelope.ip,
            IpFields::V4 {
                src: [10, 0, 0, 1].into(),
                dst: [10, 0, 0, 2].into(),
                ident: 0x1234,
                flags_frag: 0x4000,
            }
        );
        // Another port is not RoCEv2.
        assert_eq!(
            classify(LinkType::RawIp, &packet, 4792),
            FrameContent::Other
        );
    }

    #[test]
    fn lengths_that_disagree_are_malformed() {
        let mut packet = udp_to_4791(16);
        packet.truncate(40);
        assert!(matches!(
            classify(LinkType::RawIp, &packet, 4791),
            FrameContent::Malformed(FrameError::Truncated { .. })
        ));
        let mut packet = udp_to_4791(16);
        packet[25] = 20; // UDP length 20 where IP carries 24
        assert_eq!(
            classify(LinkType::RawIp, &packet, 4791),
            FrameContent::Malformed(FrameError::UdpLength { udp: 20, ip: 24 })
        );
        let mut packet = udp_to_4791(16);
        packet[6] = 0x20; // MF
        assert_eq!(
            classify(LinkType::RawIp, &packet, 4791),
            FrameContent::Malformed(FrameError::Fragmented)
        );
        let mut packet = udp_to_4791(16);
        packet[0] = 0x44;
        assert_eq!(
            classify(LinkType::RawIp, &packet, 4791),
            FrameContent::Malformed(FrameError::Ipv4HeaderLength(16))
        );
    }

    #[test]
    fn loopback_families_in_either_byte_order() {
        let packet = udp_to_4791(8);
        for header in [[2, 0, 0, 0], [0, 0, 0, 2]] {
            let frame = [&header[..], &packet].concat();
            assert!(matches!(
                classify(LinkType::Null, &frame, 4791),
                FrameContent::RoceV2(_)
            ));
        }
        let frame = [&[0, 0, 0, 2][..], &packet].concat();
        assert!(matches!(
            classify(LinkType::Loop, &frame, 4791),
            FrameContent::RoceV2(_)
        ));
        let frame = [&[2, 0, 0, 0][..], &packet].concat();
        assert_eq!(classify(LinkType::Loop, &frame, 4791), FrameContent::Other);
    }

    #[test]
    fn stacked_vlan_tags_and_ethernet_padding() {
        let packet = udp_to_4791(4);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14, 0x08, 0x00]);
        frame.extend_from_slice(&packet);
        frame.resize(80, 0xee); // padding after the datagram
        let FrameContent::RoceV2(d) = classify(LinkType::Ethernet, &frame, 4791) else {
            panic!("not RoCEv2");
        };
        assert_eq!(d.payload, &[0, 1, 2, 3]);
        frame.truncate(16);
        assert!(matches!(
            classify(LinkType::Ethernet, &frame, 4791),
            FrameContent::Malformed(FrameError::Truncated {
                header: "VLAN tag",
                ..
            })
        ));
    }

    #[test]
    fn not_a_capture() {
        assert!(matches!(
            Reader::new(b"hello world"),
            Err(CaptureError::NotACapture(_))
        ));
        assert!(matches!(
            Reader::new(b"\xd4\xc3"),
            Err(CaptureError::TruncatedHeader(2))
        ));
        assert!(matches!(
            Reader::new(b"\xd4\xc3\xb2\xa1\x02\x00"),
            Err(CaptureError::TruncatedHeader(6))
        ));
    }
}

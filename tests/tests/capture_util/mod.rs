//! Helpers for the capture tests: the project's rxe captures, and rewriting them into
//! other file formats and link types with pcap-file's writers.
#![allow(dead_code)] // each test file uses its own subset

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::SectionHeaderBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};

/// `testdata/pcaps/` at the workspace root.
pub fn pcaps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/pcaps")
}

/// Every `*.pcap` in `testdata/pcaps/`, by name, sorted.
pub fn shared_captures() -> Vec<(String, Vec<u8>)> {
    let mut captures: Vec<(String, Vec<u8>)> = std::fs::read_dir(pcaps_dir())
        .expect("testdata/pcaps exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "pcap"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("readable capture"))
        })
        .collect();
    captures.sort();
    assert!(captures.len() >= 10, "the rxe captures are missing");
    captures
}

/// One packet record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp: Duration,
    pub data: Vec<u8>,
    pub original_len: u32,
}

/// The link type and records of a pcap file, read with pcap-file's own reader.
pub fn records(pcap: &[u8]) -> (u32, Vec<Record>) {
    let mut reader = PcapReader::new(pcap).expect("a pcap file");
    let link = u32::from(reader.header().datalink);
    let mut records = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("a valid record");
        records.push(Record {
            timestamp: packet.timestamp,
            data: packet.data.into_owned(),
            original_len: packet.orig_len,
        });
    }
    (link, records)
}

/// A pcap file (nanosecond timestamps) of `records` with link type `link`.
pub fn write_pcap(link: u32, records: &[Record], endianness: Endianness) -> Vec<u8> {
    let header = PcapHeader {
        datalink: DataLink::from(link),
        ts_resolution: TsResolution::NanoSecond,
        endianness,
        snaplen: 262_144,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).expect("pcap header");
    for r in records {
        writer
            .write_packet(&PcapPacket::new(r.timestamp, r.original_len, &r.data))
            .expect("pcap record");
    }
    writer.into_writer()
}

/// A pcapng file of `records`: one interface of link type `link` with nanosecond
/// timestamps (pcap-file writes enhanced packet timestamps in nanoseconds).
pub fn write_pcapng(link: u32, records: &[Record], endianness: Endianness) -> Vec<u8> {
    let section = SectionHeaderBlock {
        endianness,
        ..Default::default()
    };
    let mut writer = PcapNgWriter::with_section_header(Vec::new(), section).expect("section");
    let interface = InterfaceDescriptionBlock {
        linktype: DataLink::from(link),
        snaplen: 0,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    writer
        .write_pcapng_block(interface)
        .expect("interface description");
    for r in records {
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: r.timestamp,
                original_len: r.original_len,
                data: Cow::Borrowed(&r.data[..]),
                options: vec![],
            })
            .expect("enhanced packet");
    }
    writer.into_inner()
}

/// `records` with each frame rewritten by `relink` (original lengths follow).
pub fn relink(records: &[Record], relink: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let data = relink(&r.data);
            let cut = r.original_len as usize - r.data.len();
            Record {
                timestamp: r.timestamp,
                original_len: (data.len() + cut) as u32,
                data,
            }
        })
        .collect()
}

fn ethertype(frame: &[u8]) -> [u8; 2] {
    [frame[12], frame[13]]
}

/// Ethernet to Linux cooked v1: packet type 0 (to us), ARPHRD_ETHER, the source MAC.
pub fn ethernet_to_sll(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 1, 0, 6];
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&ethertype(frame));
    out.extend_from_slice(&frame[14..]);
    out
}

/// Ethernet to Linux cooked v2: protocol, reserved, ifindex 2, ARPHRD_ETHER, packet type,
/// address length 6, the source MAC padded to 8.
pub fn ethernet_to_sll2(frame: &[u8]) -> Vec<u8> {
    let mut out = ethertype(frame).to_vec();
    out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6]);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&frame[14..]);
    out
}

/// Ethernet to raw IP (the captures hold only IPv4 frames).
pub fn ethernet_to_raw(frame: &[u8]) -> Vec<u8> {
    assert_eq!(ethertype(frame), [0x08, 0x00], "only IPv4 frames");
    frame[14..].to_vec()
}

/// Ethernet to BSD null/loopback: AF_INET in little-endian host order.
pub fn ethernet_to_null(frame: &[u8]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    out.extend_from_slice(&ethernet_to_raw(frame));
    out
}

/// Ethernet to OpenBSD loop: AF_INET big-endian.
pub fn ethernet_to_loop(frame: &[u8]) -> Vec<u8> {
    let mut out = 2u32.to_be_bytes().to_vec();
    out.extend_from_slice(&ethernet_to_raw(frame));
    out
}

/// Inserts VLAN tags after the MAC addresses, outermost first (TPID, VLAN id).
pub fn add_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for &(tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// An Ethernet frame around an IPv4/UDP datagram (DF set, TTL 64, UDP checksum 0).
pub fn ipv4_frame(envelope: &ferroce_wire::icrc::Envelope, tos: u8, udp_payload: &[u8]) -> Vec<u8> {
    let ferroce_wire::icrc::IpFields::V4 {
        src,
        dst,
        ident,
        flags_frag,
    } = envelope.ip
    else {
        panic!("an IPv4 envelope");
    };
    let udp_len = 8 + udp_payload.len();
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&ident.to_be_bytes());
    ip.extend_from_slice(&flags_frag.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = ethernet_header(0x0800);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp_header(envelope, udp_len));
    frame.extend_from_slice(udp_payload);
    frame
}

/// An Ethernet frame around an IPv6/UDP datagram (hop limit 64, UDP checksum 0).
pub fn ipv6_frame(
    envelope: &ferroce_wire::icrc::Envelope,
    traffic_class: u8,
    udp_payload: &[u8],
) -> Vec<u8> {
    let ferroce_wire::icrc::IpFields::V6 { src, dst } = envelope.ip else {
        panic!("an IPv6 envelope");
    };
    let udp_len = 8 + udp_payload.len();
    let mut frame = ethernet_header(0x86dd);
    let first_word = (6u32 << 28) | (u32::from(traffic_class) << 20) | 0x12345;
    frame.extend_from_slice(&first_word.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[17, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&udp_header(envelope, udp_len));
    frame.extend_from_slice(udp_payload);
    frame
}

fn ethernet_header(ethertype: u16) -> Vec<u8> {
    let mut header = vec![0x52, 0x54, 0, 0x77, 0, 0x0c, 0x52, 0x54, 0, 0x77, 0, 0x0b];
    header.extend_from_slice(&ethertype.to_be_bytes());
    header
}

fn udp_header(envelope: &ferroce_wire::icrc::Envelope, udp_len: usize) -> Vec<u8> {
    let mut udp = envelope.src_port.to_be_bytes().to_vec();
    udp.extend_from_slice(&envelope.dst_port.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp
}

/// A whole RoCEv2 UDP payload (headers, payload, pad, ICRC) for `envelope`.
pub fn roce_packet(
    repr: &ferroce_wire::packet::Repr,
    payload: &[u8],
    envelope: &ferroce_wire::icrc::Envelope,
) -> Vec<u8> {
    let mut buf = vec![0u8; payload.len() + 128];
    let len = ferroce_wire::packet::build(repr, payload, envelope, &mut buf).expect("build");
    buf.truncate(len);
    buf
}

/// Records one microsecond apart.
pub fn records_of(frames: Vec<Vec<u8>>) -> Vec<Record> {
    frames
        .into_iter()
        .enumerate()
        .map(|(i, data)| Record {
            timestamp: Duration::new(1_700_000_000, 1000 * i as u32),
            original_len: data.len() as u32,
            data,
        })
        .collect()
}

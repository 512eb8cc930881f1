//! Every RoCEv2 packet that Linux rxe put in `testdata/pcaps/` parses, its ICRC verifies,
//! and building it again from its parsed headers and payload gives the same bytes.

mod capture_util;

use std::collections::BTreeMap;

use capture_util::{pcaps_dir, shared_captures};
use ferroce_tools::capture::{FrameContent, Reader};
use ferroce_wire::icrc;
use ferroce_wire::packet;

/// What `INDEX.txt` says about one capture.
#[derive(Debug, Default)]
struct IndexEntry {
    frames: u64,
    rocev2: u64,
    tcp: u64,
    /// RoCEv2 packets per BTH opcode (CM lines all count for opcode 0x64).
    opcodes: BTreeMap<u8, u64>,
}

/// Reads lines like `== atomic_bw.pcap: 7702 bytes, 74 frames (32 RoCEv2, 42 TCP)`
/// followed by `     16 x opcode  18 (0x12)   RC Atomic Acknowledge`.
fn read_index() -> BTreeMap<String, IndexEntry> {
    let text = std::fs::read_to_string(pcaps_dir().join("INDEX.txt")).expect("INDEX.txt");
    let mut index = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("== ") {
            let (name, counts) = rest.split_once(':').expect("name: counts");
            let words: Vec<&str> = counts
                .split(|c: char| c.is_whitespace() || c == '(' || c == ',' || c == ')')
                .filter(|w| !w.is_empty())
                .collect();
            let number_before = |label: &str| -> u64 {
                let at = words.iter().position(|w| *w == label).expect(label);
                words[at - 1].parse().expect("a count")
            };
            index.insert(
                name.to_string(),
                IndexEntry {
                    frames: number_before("frames"),
                    rocev2: number_before("RoCEv2"),
                    tcp: number_before("TCP"),
                    opcodes: BTreeMap::new(),
                },
            );
            current = Some(name.to_string());
        } else if let Some(name) = &current {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 4 && words[1] == "x" && words[2] == "opcode" {
                let count: u64 = words[0].parse().expect("count");
                let opcode: u8 = words[3].parse().expect("opcode");
                let entry = index.get_mut(name).expect("current entry");
                *entry.opcodes.entry(opcode).or_default() += count;
            }
        }
    }
    index
}

#[test]
fn index_lists_every_capture() {
    let index = read_index();
    let names: Vec<String> = shared_captures().into_iter().map(|(n, _)| n).collect();
    assert_eq!(index.keys().cloned().collect::<Vec<_>>(), names);
}

#[test]
fn every_rxe_packet_parses_verifies_and_rebuilds_byte_for_byte() {
    let index = read_index();
    let mut total = 0;
    for (name, bytes) in shared_captures() {
        let expected = &index[&name];
        let mut frames = 0;
        let mut other = 0;
        let mut opcodes: BTreeMap<u8, u64> = BTreeMap::new();
        for frame in Reader::new(&bytes).expect("a capture") {
            let frame = frame.unwrap_or_else(|e| panic!("{name}: {e}"));
            frames += 1;
            let datagram = match frame.content {
                FrameContent::RoceV2(d) => d,
                FrameContent::Other => {
                    other += 1;
                    continue;
                }
                FrameContent::Malformed(e) => panic!("{name} #{}: {e}", frame.number),
            };
            let at = format!("{name} #{}", frame.number);
            let bytes = datagram.payload;
            let parsed = packet::parse(bytes).unwrap_or_else(|e| panic!("{at}: {e}"));
            *opcodes.entry(u8::from(parsed.repr.bth.opcode)).or_default() += 1;
            assert_eq!(
                icrc::verify(&datagram.envelope, bytes),
                Ok(true),
                "{at}: ICRC"
            );
            let mut rebuilt = vec![0u8; bytes.len() + 64];
            let len = packet::build(
                &parsed.repr,
                parsed.payload,
                &datagram.envelope,
                &mut rebuilt,
            )
            .unwrap_or_else(|e| panic!("{at}: build: {e}"));
            assert_eq!(&rebuilt[..len], bytes, "{at}: rebuilt bytes differ");
            total += 1;
        }
        assert_eq!(frames, expected.frames, "{name}: frames");
        assert_eq!(
            opcodes.values().sum::<u64>(),
            expected.rocev2,
            "{name}: RoCEv2"
        );
        assert_eq!(other, expected.tcp, "{name}: TCP frames");
        assert_eq!(opcodes, expected.opcodes, "{name}: opcodes");
    }
    // 32+20+40+32+41+32+24+10+8+32 RoCEv2 packets in the ten captures.
    assert_eq!(total, 271);
}

#[test]
fn a_packet_flipped_anywhere_fails_its_icrc() {
    let (_, bytes) = shared_captures()
        .into_iter()
        .find(|(name, _)| name == "rc_pingpong.pcap")
        .expect("rc_pingpong.pcap");
    let datagram = Reader::new(&bytes)
        .expect("a capture")
        .filter_map(|f| match f.expect("frame").content {
            FrameContent::RoceV2(d) => Some(d),
            _ => None,
        })
        .next()
        .expect("a RoCEv2 packet");
    let mut copy = datagram.payload.to_vec();
    for i in 0..copy.len() - 4 {
        // FECN/BECN and the reserved bits of BTH byte 4 are outside the ICRC.
        let masked = if i == 4 { 0 } else { 0xff };
        for bit in 0..8u8 {
            if masked & (1 << bit) == 0 {
                continue;
            }
            copy[i] ^= 1 << bit;
            assert_eq!(
                icrc::verify(&datagram.envelope, &copy),
                Ok(false),
                "byte {i} bit {bit}"
            );
            copy[i] ^= 1 << bit;
        }
    }
    assert_eq!(icrc::verify(&datagram.envelope, &copy), Ok(true));
}

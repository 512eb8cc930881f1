//! `ferroce decode` through the library function the CLI runs: the rxe captures decode
//! clean in every file format and link type, corruption is caught, broken files are
//! errors and nothing panics.

mod capture_util;

use capture_util::*;
use ferroce_tools::capture::{CaptureError, FrameContent, Reader};
use ferroce_tools::decode::{decode, Options, Summary};
use ferroce_wire::icrc::{Envelope, IpFields};
use ferroce_wire::packet::Repr;
use ferroce_wire::{bth, deth, OpCode, Psn, Qpn};
use pcap_file::Endianness;
use proptest::prelude::*;

fn run(capture: &[u8], options: Options) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = decode(capture, options, &mut out).expect("writing to a Vec");
    (summary, String::from_utf8(out).expect("UTF-8 output"))
}

fn text(capture: &[u8]) -> (Summary, String) {
    run(capture, Options::default())
}

fn json(capture: &[u8]) -> (Summary, String) {
    run(
        capture,
        Options {
            json: true,
            ..Options::default()
        },
    )
}

fn capture(name: &str) -> Vec<u8> {
    shared_captures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name}"))
        .1
}

#[test]
fn every_rxe_capture_decodes_clean() {
    for (name, bytes) in shared_captures() {
        let (summary, out) = text(&bytes);
        assert_eq!(summary.exit_status(), 0, "{name}:\n{out}");
        assert!(summary.rocev2 > 0, "{name}");
        assert_eq!(summary.icrc_ok, summary.rocev2, "{name}");
        let lines: Vec<&str> = out.lines().collect();
        let (last, packets) = lines.split_last().expect("output");
        assert_eq!(packets.len() as u64, summary.rocev2, "{name}");
        assert!(
            packets.iter().all(|l| l.ends_with(" icrc=ok")),
            "{name}:\n{out}"
        );
        assert!(!out.contains("MALFORMED"), "{name}");
        assert!(
            last.starts_with(&format!(
                "summary: frames={} rocev2={} icrc_ok={} icrc_bad=0 malformed=0",
                summary.frames, summary.rocev2, summary.rocev2
            )),
            "{name}: {last}"
        );
    }
}

#[test]
fn lines_show_addresses_opcodes_and_extended_headers() {
    let (_, out) = text(&capture("rc_pingpong.pcap"));
    assert!(
        out.contains(
            "10.77.0.11:49441 -> 10.77.0.12:4791 RC Send First qp=0x000011 psn=0x929d02 len=1024 icrc=ok"
        ),
        "{out}"
    );
    let (_, out) = text(&capture("write_bw.pcap"));
    assert!(out.contains("RC RDMA Write First qp=0x000011"), "{out}");
    assert!(out.contains(" RETH va=0x"), "{out}");
    assert!(out.contains("AETH ACK credits=0x1f msn="), "{out}");
    let (_, out) = text(&capture("atomic_bw.pcap"));
    assert!(out.contains("AtomicETH va=0x"), "{out}");
    assert!(out.contains("AtomicAckETH orig=0x"), "{out}");
    let (_, out) = text(&capture("ud_pingpong.pcap"));
    assert!(
        out.contains("DETH qkey=0x11111111 src_qp=0x000011 len=512"),
        "{out}"
    );
}

#[test]
fn cm_handshake_on_qp1_names_its_mads() {
    let (summary, out) = text(&capture("rping_cm.pcap"));
    for attribute in [
        "ConnectRequest",
        "ConnectReply",
        "ReadyToUse",
        "DisconnectRequest",
        "DisconnectReply",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" CM {attribute} tid=")))
            .unwrap_or_else(|| panic!("no {attribute}:\n{out}"));
        assert!(line.contains("UD Send Only qp=0x000001"), "{line}");
        assert!(line.contains("qkey=0x80010000"), "{line}");
    }
    // rping's service (RDMA_PS_TCP | port 7174), QPs and starting PSNs: each side's
    // starting PSN is the first PSN its peer then sends with.
    assert!(
        out.contains("CM ConnectRequest tid=0x29d3c4e8f comm_id=0x8f4e3c9d service_id=0x1061c06 qpn=0x000011 start_psn=0xc17b7c"),
        "{out}"
    );
    assert!(
        out.contains("CM ConnectReply tid=0x29d3c4e8f comm_id=0x166a6efc remote_comm_id=0x8f4e3c9d qpn=0x000011 start_psn=0xde5aaa"),
        "{out}"
    );
    assert!(
        out.contains("10.77.0.11:54015 -> 10.77.0.12:4791 RC Send Only qp=0x000011 psn=0xde5aaa")
    );
    assert!(out.contains(
        "10.77.0.12:54015 -> 10.77.0.11:4791 RC RDMA Read Request qp=0x000011 psn=0xc17b7c"
    ));
    assert_eq!(summary.cm_attributes.values().sum::<u64>(), 5);
    assert_eq!(summary.cm_attributes.get(&0x10), Some(&1));
}

/// Every datagram to QP1 in the captures is a CM MAD whose message parses: named, with
/// its comm IDs, and no malformed flag.
#[test]
fn every_cm_mad_in_the_captures_decodes_without_a_malformed_flag() {
    let mut cm_mads = 0;
    for (name, bytes) in shared_captures() {
        let (_, out) = json(&bytes);
        for line in out.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            if value["bth"]["dest_qp"] != 1 {
                continue;
            }
            cm_mads += 1;
            assert_eq!(value["malformed"], serde_json::json!([]), "{name}: {line}");
            let mad = &value["mad"];
            assert_eq!(mad["class"], 7, "{name}: {line}");
            assert!(mad["cm"].is_string(), "{name}: {line}");
            assert!(mad["cm_fields"]["local_comm_id"].is_u64(), "{name}: {line}");
        }
    }
    assert_eq!(cm_mads, 5, "rping_cm.pcap: REQ, REP, RTU, DREQ, DREP");
}

#[test]
fn cm_lines_show_the_service_port_and_rdma_cm_addresses() {
    let (_, out) = text(&capture("rping_cm.pcap"));
    let line = |attribute: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" CM {attribute} tid=")))
            .unwrap_or_else(|| panic!("no {attribute}:\n{out}"))
            .to_owned()
    };
    assert!(
        line("ConnectRequest").contains(
            "start_psn=0xc17b7c service=TCP:7174 cma=10.77.0.11:49605->10.77.0.12 icrc=ok"
        ),
        "{out}"
    );
    assert!(
        line("DisconnectRequest")
            .contains("comm_id=0x8f4e3c9d remote_comm_id=0x166a6efc remote_qpn=0x000011 icrc=ok"),
        "{out}"
    );
    let (_, out) = json(&capture("rping_cm.pcap"));
    let req: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("JSON");
    let fields = &req["mad"]["cm_fields"];
    assert_eq!(fields["service_id"], 0x0106_1c06);
    assert_eq!(fields["port_space"], "TCP");
    assert_eq!(fields["port"], 7174);
    assert_eq!(fields["qpn"], 0x11);
    assert_eq!(fields["starting_psn"], 0xc17b7c);
    assert_eq!(
        fields["cma"],
        serde_json::json!({"version": 0, "src": "10.77.0.11", "src_port": 49605, "dst": "10.77.0.12"})
    );
}

/// A QP1 datagram carrying `mad`.
fn gsi_frame(mad: &[u8]) -> Vec<u8> {
    let mut ud = Repr::new(bth(OpCode::UdSendOnly, 0));
    ud.bth.dest_qp = Qpn::GSI;
    ud.deth = Some(deth::Repr {
        qkey: deth::GSI_QKEY,
        src_qp: Qpn::GSI,
    });
    ipv4_frame(&envelope(), 0, &roce_packet(&ud, mad, &envelope()))
}

/// CM MADs built with `ferroce_wire::cm` decode with their fields; a CM MAD cut short
/// is malformed, and so is one whose REJ claims more ARI than its field holds.
#[test]
fn cm_mads_built_by_the_wire_crate_decode_and_broken_ones_are_malformed() {
    use ferroce_wire::cm::{self, rej, sidr_req, Message};
    use ferroce_wire::{cma, mad, ServiceId};
    let emit = |message: Message<'_>| {
        let mut bytes = vec![0u8; mad::MAD_LEN];
        cm::Repr::new(0x42, message)
            .emit(&mut mad::Packet::new_unchecked(&mut bytes[..]))
            .expect("emit");
        bytes
    };
    let reject = emit(Message::Rej(rej::Repr {
        local_comm_id: 0x1234_5678,
        remote_comm_id: 0x8f4e_3c9d,
        message_rejected: cm::MessageKind::Req,
        reason: rej::Reason::InvalidServiceId,
        ari: &[],
        private_data: &[],
    }));
    let mut header = [0u8; cma::HEADER_LEN];
    cma::Repr {
        cma_version: cma::CMA_VERSION,
        port: 40000,
        addresses: cma::Addresses::V6 {
            src: "fd00::1".parse().expect("IPv6"),
            dst: "fd00::2".parse().expect("IPv6"),
        },
    }
    .emit(&mut cma::Packet::new_unchecked(&mut header[..]));
    let sidr = emit(Message::SidrReq(sidr_req::Repr {
        request_id: 7,
        pkey: 0xffff,
        service_id: ServiceId::rdma_ip(cma::PortSpace::Udp, 7174),
        private_data: &header,
    }));
    let mut bad_ari = reject.clone();
    bad_ari[mad::HEADER_LEN + 9] = 100 << 1;
    let (summary, out) = decode_frames(vec![
        gsi_frame(&reject),
        gsi_frame(&sidr),
        gsi_frame(&sidr[..100]),
        gsi_frame(&bad_ari),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(
            "CM ConnectReject tid=0x42 comm_id=0x12345678 remote_comm_id=0x8f4e3c9d of=REQ reason=8 (invalid service ID) icrc=ok"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(
            "CM ServiceIdResolutionRequest tid=0x42 request_id=0x00000007 service_id=0x1111c06 service=UDP:7174 cma=[fd00::1]:40000->fd00::2 icrc=ok"
        ),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with(
            "MALFORMED(CM ServiceIdResolutionRequest of 100 bytes is shorter than a CM MAD (256))"
        ),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].ends_with(
            "MALFORMED(CM ConnectReject has an information length longer than its field)"
        ),
        "{}",
        lines[3]
    );
    assert_eq!(summary.malformed, 2);
    assert_eq!(summary.cm_attributes.get(&0x12), Some(&2));
    assert_eq!(summary.cm_attributes.get(&0x17), Some(&2));
}

#[test]
fn json_has_one_object_per_packet_and_a_summary() {
    for (name, bytes) in shared_captures() {
        let (summary, out) = json(&bytes);
        let values: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect();
        let (last, packets) = values.split_last().expect("output");
        assert_eq!(packets.len() as u64, summary.rocev2, "{name}");
        for p in packets {
            assert_eq!(p["type"], "packet");
            assert_eq!(p["icrc"], "ok", "{name}: {p}");
            assert_eq!(p["malformed"], serde_json::json!([]), "{name}: {p}");
            assert_eq!(p["dst_port"], 4791);
            assert!(p["bth"]["psn"].is_u64() && p["opcode_name"].is_string());
        }
        assert_eq!(last["type"], "summary");
        assert_eq!(last["rocev2"], summary.rocev2);
        assert_eq!(last["icrc_bad"], 0);
        assert_eq!(last["error"], serde_json::Value::Null);
    }
    let (_, out) = json(&capture("write_bw.pcap"));
    let first: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["opcode_name"], "RC RDMA Write First");
    assert_eq!(first["reth"]["dma_length"], 2500);
    assert_eq!(first["payload_len"], 1024);
    assert_eq!(first["ip_flags_frag"], 0x4000);
}

/// Every capture rewritten into another file format or link type.
fn variants(link: u32, records: &[Record]) -> Vec<(&'static str, Vec<u8>)> {
    assert_eq!(link, 1, "the rxe captures are Ethernet");
    let vlan = relink(records, |f| add_vlan_tags(f, &[(0x8100, 77)]));
    let qinq = relink(records, |f| add_vlan_tags(f, &[(0x88a8, 5), (0x8100, 77)]));
    let sll2 = relink(records, ethernet_to_sll2);
    let raw = relink(records, ethernet_to_raw);
    vec![
        ("pcapng", write_pcapng(1, records, Endianness::Little)),
        (
            "pcapng big-endian",
            write_pcapng(1, records, Endianness::Big),
        ),
        (
            "pcap big-endian ns",
            write_pcap(1, records, Endianness::Big),
        ),
        ("802.1Q", write_pcap(1, &vlan, Endianness::Little)),
        ("802.1ad+802.1Q", write_pcap(1, &qinq, Endianness::Little)),
        (
            "SLL",
            write_pcap(113, &relink(records, ethernet_to_sll), Endianness::Little),
        ),
        ("SLL2", write_pcap(276, &sll2, Endianness::Little)),
        ("SLL2 pcapng", write_pcapng(276, &sll2, Endianness::Little)),
        ("raw IP", write_pcap(101, &raw, Endianness::Little)),
        ("raw IP (DLT 12)", write_pcap(12, &raw, Endianness::Little)),
        ("IPv4 link type", write_pcap(228, &raw, Endianness::Little)),
        (
            "null",
            write_pcap(0, &relink(records, ethernet_to_null), Endianness::Little),
        ),
        (
            "loop",
            write_pcap(108, &relink(records, ethernet_to_loop), Endianness::Little),
        ),
        ("VLAN pcapng", write_pcapng(1, &vlan, Endianness::Little)),
    ]
}

#[test]
fn rewritten_captures_decode_identically() {
    for (name, bytes) in shared_captures() {
        let (_, expected) = text(&bytes);
        let (link, records) = records(&bytes);
        for (variant, rewritten) in variants(link, &records) {
            let (summary, out) = text(&rewritten);
            assert_eq!(summary.exit_status(), 0, "{name} as {variant}:\n{out}");
            assert_eq!(out, expected, "{name} as {variant}");
        }
    }
}

/// `write_bw.pcap` with one payload byte of its first RDMA Write First flipped.
#[test]
fn a_flipped_payload_byte_shows_icrc_bad_and_fails() {
    let bytes = capture("write_bw.pcap");
    let (_, expected) = text(&bytes);
    let (link, mut records) = records(&bytes);
    let (index, number) = Reader::new(&bytes)
        .expect("capture")
        .map(|f| f.expect("frame"))
        .enumerate()
        .find(|(_, f)| matches!(f.content, FrameContent::RoceV2(d) if d.payload[0] == 0x06))
        .map(|(i, f)| (i, f.number))
        .expect("an RDMA Write First");
    // Ethernet + IPv4 + UDP + BTH + RETH, then 1024 payload bytes.
    let at = 14 + 20 + 8 + 12 + 16 + 100;
    records[index].data[at] ^= 0x20;
    let (summary, out) = text(&write_pcap(link, &records, Endianness::Little));
    assert_eq!(summary.exit_status(), 1);
    assert_eq!((summary.icrc_bad, summary.malformed), (1, 0));
    for (got, want) in out.lines().zip(expected.lines()) {
        if got.starts_with(&format!("#{number} ")) {
            assert!(got.contains(" icrc=BAD(carried 0x"), "{got}");
            assert!(got.contains("RC RDMA Write First"), "{got}");
        } else if !got.starts_with("summary:") {
            assert_eq!(got, want);
        }
    }
}

fn envelope() -> Envelope {
    Envelope::ipv4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 7, 49152)
}

fn bth(opcode: OpCode, psn: u32) -> bth::Repr {
    bth::Repr {
        opcode,
        solicited: false,
        migreq: false,
        pad_count: 0,
        pkey: bth::DEFAULT_PKEY,
        fecn: false,
        becn: false,
        dest_qp: Qpn::new(0x11),
        ack_req: false,
        psn: Psn::new(psn),
    }
}

fn frame_of(repr: Repr, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    ipv4_frame(&envelope(), 0, &roce_packet(&repr, &payload, &envelope()))
}

fn decode_frames(frames: Vec<Vec<u8>>) -> (Summary, String) {
    text(&write_pcap(1, &records_of(frames), Endianness::Little))
}

/// A UDP GSO run as a capture on `lo` shows it: one datagram holding three RoCEv2
/// packets, each with the ICRC for the IPv4 ID the receiving kernel gives it (the run's
/// ID, then +1, +2). Decoded as three packets, all good; one damaged segment is BAD.
#[test]
fn gso_runs_captured_whole_decode_as_their_segments() {
    let mut run = Vec::new();
    for (i, len) in [1024usize, 1024, 100].into_iter().enumerate() {
        let mut env = envelope();
        if let IpFields::V4 { ident, .. } = &mut env.ip {
            *ident += i as u16;
        }
        let opcode = [
            OpCode::RcWriteMiddle,
            OpCode::RcWriteMiddle,
            OpCode::RcWriteLast,
        ][i];
        let payload = vec![i as u8; len];
        run.extend(roce_packet(
            &Repr::new(bth(opcode, 10 + i as u32)),
            &payload,
            &env,
        ));
    }
    let (summary, out) = decode_frames(vec![ipv4_frame(&envelope(), 0, &run)]);
    assert!(summary.is_clean(), "{out}");
    assert_eq!(
        (
            summary.frames,
            summary.gso_runs,
            summary.rocev2,
            summary.icrc_ok
        ),
        (1, 1, 3, 3)
    );
    assert!(
        out.contains(" gso=1/3 ") && out.contains(" gso=3/3 "),
        "{out}"
    );

    let mut damaged = run.clone();
    let last = damaged.len() - 10;
    damaged[last] ^= 1;
    let (summary, out) = decode_frames(vec![ipv4_frame(&envelope(), 0, &damaged)]);
    assert_eq!((summary.icrc_ok, summary.icrc_bad), (2, 1), "{out}");
}

#[test]
fn ethernet_padding_after_a_short_packet_is_not_payload() {
    // A Send Only without payload: 14 + 20 + 8 + 12 + 4 = 58 bytes, padded to the
    // 60-byte minimum (and once more with a 4-byte FCS after it).
    let frame = frame_of(Repr::new(bth(OpCode::RcSendOnly, 1)), 0);
    assert_eq!(frame.len(), 58);
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0xaa, 0xbb]);
    let mut with_fcs = padded.clone();
    with_fcs.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let (summary, out) = decode_frames(vec![padded.clone(), with_fcs]);
    assert_eq!(summary.exit_status(), 0, "{out}");
    assert_eq!(
        out.lines().next(),
        Some("#1 0.000000 10.0.0.1:49152 -> 10.0.0.2:4791 RC Send Only qp=0x000011 psn=0x000001 len=0 icrc=ok")
    );
    let records = records_of(vec![padded]);
    let file = write_pcap(1, &records, Endianness::Little);
    let frame = Reader::new(&file)
        .expect("capture")
        .next()
        .expect("a frame")
        .expect("ok");
    let FrameContent::RoceV2(datagram) = frame.content else {
        panic!("not RoCEv2: {:?}", frame.content);
    };
    assert_eq!(frame.data.len(), 60);
    assert_eq!(datagram.payload.len(), 16);
}

#[test]
fn segmentation_and_cnp_rules_make_packets_malformed() {
    let first = |psn, len| frame_of(Repr::new(bth(OpCode::RcSendFirst, psn)), len);
    let middle = |psn, len| frame_of(Repr::new(bth(OpCode::RcSendMiddle, psn)), len);
    let last = |psn, len| frame_of(Repr::new(bth(OpCode::RcSendLast, psn)), len);
    let mut cnp = Repr::new(bth(OpCode::Cnp, 0));
    cnp.bth.becn = true;
    let good_cnp = frame_of(cnp, 0);
    cnp.bth.becn = false;
    let bad_cnp = frame_of(cnp, 0);
    let mut ud = Repr::new(bth(OpCode::UdSendOnly, 0));
    ud.bth.dest_qp = Qpn::GSI;
    ud.deth = Some(deth::Repr {
        qkey: 0x8001_0000,
        src_qp: Qpn::GSI,
    });
    let short_mad = frame_of(ud, 8);
    let (summary, out) = decode_frames(vec![
        first(1, 1024),
        middle(2, 1024),
        last(3, 100),
        first(4, 1000),
        middle(5, 512),
        last(6, 1025),
        frame_of(Repr::new(bth(OpCode::RcSendOnly, 7)), 4100),
        good_cnp,
        bad_cnp,
        short_mad,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines[0].contains("MALFORMED") && !lines[1].contains("MALFORMED"));
    assert!(!lines[2].contains("MALFORMED"), "{}", lines[2]);
    assert!(
        lines[3].ends_with(
            "MALFORMED(FIRST payload 1000 is not a path MTU (256, 512, 1024, 2048, 4096))"
        ),
        "{}",
        lines[3]
    );
    assert!(
        lines[4]
            .ends_with("MALFORMED(MIDDLE payload 512 differs from the flow's FIRST payload 1024)"),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].ends_with("MALFORMED(LAST payload 1025 exceeds the flow's path MTU 1024)"),
        "{}",
        lines[5]
    );
    assert!(
        lines[6].ends_with("MALFORMED(ONLY payload 4100 exceeds the largest path MTU 4096)"),
        "{}",
        lines[6]
    );
    assert!(
        lines[7].contains("CNP qp=0x000011 psn=0x000000 BECN len=0 icrc=ok"),
        "{}",
        lines[7]
    );
    assert!(!lines[7].contains("MALFORMED"));
    assert!(
        lines[8].ends_with("MALFORMED(CNP without BECN)"),
        "{}",
        lines[8]
    );
    assert!(
        lines[9].ends_with("MALFORMED(QP1 datagram of 8 bytes is shorter than a MAD header (24))"),
        "{}",
        lines[9]
    );
    // Every ICRC is good: only the rules failed.
    assert_eq!(
        (summary.icrc_ok, summary.icrc_bad, summary.malformed),
        (10, 0, 6)
    );
    assert_eq!(summary.exit_status(), 1);
}

#[test]
fn broken_frames_are_reported_not_skipped() {
    let good = frame_of(Repr::new(bth(OpCode::RcSendOnly, 1)), 64);
    // The snap length cut the frame: IP says more than was captured.
    let cut = good[..good.len() - 10].to_vec();
    // UDP length disagrees with IP.
    let mut udp_len = good.clone();
    udp_len[14 + 20 + 5] -= 4;
    // A pad count larger than the payload (ICRC refreshed so only the rule fails).
    let mut packet = roce_packet(&Repr::new(bth(OpCode::RcSendOnly, 2)), &[], &envelope());
    packet[1] |= 0x30;
    ferroce_wire::icrc::fill(&envelope(), &mut packet).expect("fill");
    let bad_pad = ipv4_frame(&envelope(), 0, &packet);
    // A TCP frame is simply not RoCEv2.
    let mut tcp = good.clone();
    tcp[14 + 9] = 6;
    let (summary, out) = decode_frames(vec![cut, udp_len, bad_pad, tcp, good]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "#1 0.000000 MALFORMED(IPv4 total length needs 108 bytes, frame has 98 left)"
    );
    assert_eq!(
        lines[1],
        "#2 0.000001 MALFORMED(UDP length 84 but IP carries 88 bytes of UDP)"
    );
    assert!(
        lines[2].ends_with("icrc=ok MALFORMED(pad count 3 exceeds the 0 bytes after the headers)"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("#5 ") && lines[3].ends_with("len=64 icrc=ok"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("summary: frames=5 rocev2=2 icrc_ok=2 icrc_bad=0 malformed=3 other=1"),
        "{}",
        lines[4]
    );
    assert_eq!(summary.exit_status(), 1);
}

#[test]
fn ipv6_and_ecn() {
    let v6 = Envelope::ipv6(
        "fe80::5054:ff:fe77:b".parse().expect("address"),
        "fe80::5054:ff:fe77:c".parse().expect("address"),
        0xc001,
    );
    let mut repr = Repr::new(bth(OpCode::RcSendOnly, 9));
    repr.bth.ack_req = true;
    let packet = roce_packet(&repr, b"ferroce over IPv6", &v6);
    // Traffic class with ECN CE: outside the ICRC.
    let frame6 = ipv6_frame(&v6, 0x03, &packet);
    let frame4 = ipv4_frame(&envelope(), 0x02, &roce_packet(&repr, b"x", &envelope()));
    let (summary, out) = decode_frames(vec![frame6, frame4]);
    assert_eq!(summary.exit_status(), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "#1 0.000000 [fe80::5054:ff:fe77:b]:49153 -> [fe80::5054:ff:fe77:c]:4791 RC Send Only qp=0x000011 psn=0x000009 A pad=3 len=17 ecn=CE icrc=ok"
    );
    assert!(
        lines[1].ends_with("len=1 ecn=ECT(0) icrc=ok"),
        "{}",
        lines[1]
    );
}

#[test]
fn another_port_is_configurable() {
    let mut other_port = envelope();
    other_port.dst_port = 14791;
    let repr = Repr::new(bth(OpCode::RcSendOnly, 1));
    let frame = ipv4_frame(&other_port, 0, &roce_packet(&repr, b"abcd", &other_port));
    let file = write_pcap(1, &records_of(vec![frame]), Endianness::Little);
    let (summary, _) = text(&file);
    assert_eq!((summary.rocev2, summary.other), (0, 1));
    let (summary, out) = run(
        &file,
        Options {
            json: false,
            port: 14791,
        },
    );
    assert_eq!((summary.rocev2, summary.icrc_ok), (1, 1), "{out}");
    assert!(out.contains("-> 10.0.0.2:14791 RC Send Only"), "{out}");
}

#[test]
fn a_truncated_capture_is_an_error_after_the_frames_it_holds() {
    let bytes = capture("rc_pingpong.pcap");
    let (full, expected) = text(&bytes);
    // Cut inside the last record: every frame before it still decodes.
    let cut = &bytes[..bytes.len() - 7];
    let (summary, out) = text(cut);
    assert!(
        matches!(
            summary.error,
            Some(CaptureError::Truncated { after_frame, .. }) if after_frame == full.frames - 1
        ),
        "{:?}",
        summary.error
    );
    assert_eq!(summary.exit_status(), 2);
    let lines: Vec<&str> = out.lines().collect();
    // The last frame (#52) is an ACK: every other RoCEv2 line and a summary remain.
    let packets = lines.len() - 1;
    assert_eq!(packets as u64, full.rocev2 - 1);
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(&lines[..packets], &expected[..packets]);
    assert!(
        lines[packets].starts_with("summary: frames=51 "),
        "{}",
        lines[packets]
    );
    // Cut inside the file header: no frames, an error.
    let (summary, out) = text(&bytes[..20]);
    assert!(matches!(
        summary.error,
        Some(CaptureError::TruncatedHeader(20))
    ));
    assert_eq!((summary.exit_status(), out.as_str()), (2, ""));
    // The same as pcapng.
    let (link, records) = records(&bytes);
    let ng = write_pcapng(link, &records, Endianness::Little);
    let (summary, _) = text(&ng[..ng.len() - 3]);
    assert!(
        matches!(summary.error, Some(CaptureError::Truncated { .. })),
        "{:?}",
        summary.error
    );
}

#[test]
fn not_a_capture_is_an_error() {
    let (summary, out) = text(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert!(matches!(summary.error, Some(CaptureError::NotACapture(_))));
    assert_eq!(summary.exit_status(), 2);
    assert!(out.is_empty());
    let (summary, _) = text(b"");
    assert_eq!(summary.exit_status(), 2);
    // A link type ferroce does not take apart.
    let (_, records) = records(&capture("ud_pingpong.pcap"));
    let (summary, _) = text(&write_pcap(147, &records, Endianness::Little));
    assert!(matches!(
        summary.error,
        Some(CaptureError::UnsupportedLinkType(147))
    ));
}

fn mutate(bytes: &[u8], flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if !out.is_empty() {
        for &(at, xor) in flips {
            let at = at % out.len();
            out[at] ^= xor;
        }
    }
    if let Some(cut) = cut {
        out.truncate(cut % (bytes.len() + 1));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = text(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_capture_magic_never_panic(
        pcapng in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let head: &[u8] = if pcapng {
            &[0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a]
        } else {
            &[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0]
        };
        let bytes = [head, &tail].concat();
        let _ = text(&bytes);
        for frame in Reader::new(&bytes).into_iter().flatten() {
            let _ = frame;
        }
    }

    #[test]
    fn corrupted_and_truncated_captures_never_panic(
        which in 0usize..10,
        pcapng in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..16),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let captures = shared_captures();
        let (_, bytes) = &captures[which % captures.len()];
        let bytes = if pcapng {
            let (link, records) = records(bytes);
            write_pcapng(link, &records, Endianness::Little)
        } else {
            bytes.clone()
        };
        let broken = mutate(&bytes, &flips, cut);
        let (summary, out) = text(&broken);
        // Whatever happened is in the summary; the summary line is there if the
        // file opened at all.
        prop_assert!(summary.error.is_some() || out.lines().last().is_some_and(|l| l.starts_with("summary:")));
    }
}

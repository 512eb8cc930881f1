#!/usr/bin/env python3
"""Seeds the fuzz corpora from the interop captures.

Usage: python3 fuzz/seed_corpus.py [PCAP_DIR] (default: testdata/pcaps next to fuzz/).
Writes each distinct seed once, named by its SHA-1 as libFuzzer does, into
fuzz/corpus/<target>/. Standard library only.

- packet, roundtrip, cm_roundtrip, engine: every RoCEv2 UDP payload (UDP destination
  port 4791). The engine target reads its input as a sequence of actions, so these
  only give it bytes to start mutating from.
- pcap: every capture file whole.
- exchange: each out-of-band TCP stream (port 18515) of the pingpong and perftest
  captures as the peer's side of a session, behind the target's two header bytes (see
  fuzz_targets/exchange.rs), for both roles.
- control: no capture holds control messages; a few valid ones of the documented
  encoding (transport/src/control/codec.rs) are built here, to mutate from.
"""

import hashlib
import pathlib
import struct
import sys

ROCEV2_PORT = 4791
OOB_PORT = 18515
PAYLOAD_TARGETS = ("packet", "roundtrip", "cm_roundtrip", "engine")
IPPROTO_TCP = 6

# exchange target header, byte 0: bit 0 pingpong, bit 1 client, bits 2-3 verb.
EXCHANGE_PINGPONG = 0x01
EXCHANGE_CLIENT = 0x02
EXCHANGE_VERBS = {"send": 0, "write": 1, "read": 2, "atomic": 3}

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8)
IPPROTO_UDP = 17


def records(path):
    """Yields (linktype, frame bytes) of a classic pcap file (either byte order,
    microsecond or nanosecond timestamps)."""
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path}: too short for a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack(endian + "I", data[offset + 8 : offset + 12])[0]
        offset += 16
        yield linktype, data[offset : offset + incl_len]
        offset += incl_len


def ip_packet(linktype, frame):
    """Returns (ethertype, IP packet) or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        ethertype, rest = struct.unpack("!H", frame[12:14])[0], frame[14:]
        while ethertype in ETHERTYPE_VLAN and len(rest) >= 4:
            ethertype, rest = struct.unpack("!H", rest[2:4])[0], rest[4:]
        return ethertype, rest
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        return struct.unpack("!H", frame[14:16])[0], frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        return struct.unpack("!H", frame[0:2])[0], frame[20:]
    if linktype == LINKTYPE_RAW and frame:
        version = frame[0] >> 4
        return {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(version, 0), frame
    return None


def ipv4_tcp_payload(ethertype, packet):
    """Returns (source port, destination port, sequence number, payload) of an
    unfragmented IPv4 TCP segment, or None."""
    if ethertype != ETHERTYPE_IPV4 or len(packet) < 20 or packet[9] != IPPROTO_TCP:
        return None
    header_len = (packet[0] & 0x0F) * 4
    total_len = struct.unpack("!H", packet[2:4])[0]
    segment = packet[header_len:total_len]
    if len(segment) < 20:
        return None
    src, dst, seq = struct.unpack("!HHI", segment[:8])
    data_offset = (segment[12] >> 4) * 4
    return src, dst, seq, segment[data_offset:]


def oob_streams(path):
    """Returns (bytes the client sent, bytes the server sent) on the out-of-band TCP
    connection of a capture, each in sequence order without retransmissions."""
    streams = {True: {}, False: {}}
    for linktype, frame in records(path):
        found = ip_packet(linktype, frame)
        if found is None:
            continue
        segment = ipv4_tcp_payload(*found)
        if segment is None:
            continue
        src, dst, seq, payload = segment
        if payload and OOB_PORT in (src, dst):
            streams[dst == OOB_PORT].setdefault(seq, payload)
    joined = [b"".join(p for _, p in sorted(streams[side].items())) for side in (True, False)]
    return joined[0], joined[1]


def exchange_mode(name):
    """The exchange header's byte 0 for a capture named `name`, or None."""
    if "pingpong" in name:
        return EXCHANGE_PINGPONG
    for verb, bits in EXCHANGE_VERBS.items():
        if f"{verb}_bw" in name:
            return bits << 2
    return None


def udp_segment(ethertype, packet):
    """Returns the UDP header and payload of an unfragmented IPv4/IPv6 packet, or None."""
    if ethertype == ETHERTYPE_IPV4 and len(packet) >= 20:
        header_len = (packet[0] & 0x0F) * 4
        total_len = struct.unpack("!H", packet[2:4])[0]
        frag = struct.unpack("!H", packet[6:8])[0] & 0x3FFF  # MF flag + offset
        if packet[9] != IPPROTO_UDP or frag or header_len < 20:
            return None
        return packet[header_len:total_len]
    if ethertype == ETHERTYPE_IPV6 and len(packet) >= 40:
        # RoCEv2 carries no extension headers: UDP must be the next header.
        if packet[6] != IPPROTO_UDP:
            return None
        payload_len = struct.unpack("!H", packet[4:6])[0]
        return packet[40 : 40 + payload_len]
    return None


def rocev2_payloads(path):
    for linktype, frame in records(path):
        found = ip_packet(linktype, frame)
        if found is None:
            continue
        segment = udp_segment(*found)
        if segment is None or len(segment) < 8:
            continue
        dst_port, udp_len = struct.unpack("!H", segment[2:4])[0], struct.unpack("!H", segment[4:6])[0]
        if dst_port != ROCEV2_PORT or udp_len < 8:
            continue
        yield segment[8:udp_len]


def write_corpus(fuzz_dir, target, seeds):
    corpus = fuzz_dir / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"seed_corpus: {len(set(seeds))} seeds into fuzz/corpus/{target}/")


def control_message(kind, body, request_id=1):
    """A control-protocol message: length, version 1, kind, request id, body."""
    return struct.pack("<IHHQ", 16 + len(body), 1, kind, request_id) + body


def control_seeds():
    """A command and a reply of each shape (empty, ids, attributes, data, errors)."""
    no_attr = bytes(73)
    return [
        control_message(0x0010, b""),  # AllocPd
        control_message(0x0042, struct.pack("<I", 0x11)),  # QueryQp
        control_message(0x0041, struct.pack("<I", 0x11) + no_attr),  # ModifyQp
        control_message(0x0022, struct.pack("<IQI", 1, 0x1000, 5) + b"hello"),  # MrWrite
        control_message(0x0054, struct.pack("<IQIQII", 1, 7, 1, 0x1000, 64, 2)),  # PostSrqRecv
        control_message(0x8000, b""),  # Done
        control_message(0x8001, bytes([6, 9]) + b"PD in use"),  # Error: Busy
        control_message(0x8004, struct.pack("<IB", 1, 4) + bytes([10, 0, 0, 1]) + bytes(12)),  # Gids
        control_message(0x8005, bytes(432)),  # Counters
    ]


def main():
    fuzz_dir = pathlib.Path(__file__).resolve().parent
    pcap_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else fuzz_dir.parent / "testdata" / "pcaps"
    pcaps = sorted(pcap_dir.glob("*.pcap"))
    if not pcaps:
        sys.exit(f"seed_corpus: no .pcap files in {pcap_dir}")
    payloads = []
    exchanges = []
    for path in pcaps:
        found = list(rocev2_payloads(path))
        payloads.extend(found)
        print(f"seed_corpus: {path.name}: {len(found)} RoCEv2 payloads")
        mode = exchange_mode(path.name)
        client_sent, server_sent = oob_streams(path)
        if mode is not None and client_sent and server_sent:
            # One QP, whole reads; the server hears the client and the client the server.
            exchanges.append(bytes([mode, 0]) + client_sent)
            exchanges.append(bytes([mode | EXCHANGE_CLIENT, 0]) + server_sent)
    for target in PAYLOAD_TARGETS:
        write_corpus(fuzz_dir, target, payloads)
    write_corpus(fuzz_dir, "pcap", [path.read_bytes() for path in pcaps])
    write_corpus(fuzz_dir, "exchange", exchanges)
    write_corpus(fuzz_dir, "control", control_seeds())


if __name__ == "__main__":
    main()

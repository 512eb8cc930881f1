#!/usr/bin/env python3
"""Seeds the fuzz corpora with every RoCEv2 UDP payload (UDP destination port 4791)
found in the interop captures.

Usage: python3 fuzz/seed_corpus.py [PCAP_DIR] (default: testdata/pcaps next to fuzz/).
Writes each distinct payload once, named by its SHA-1 as libFuzzer does, into
fuzz/corpus/<target>/ for every target. Standard library only.
"""

import hashlib
import pathlib
import struct
import sys

ROCEV2_PORT = 4791
TARGETS = ("packet", "roundtrip", "cm_roundtrip")

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


def main():
    fuzz_dir = pathlib.Path(__file__).resolve().parent
    pcap_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else fuzz_dir.parent / "testdata" / "pcaps"
    pcaps = sorted(pcap_dir.glob("*.pcap"))
    if not pcaps:
        sys.exit(f"seed_corpus: no .pcap files in {pcap_dir}")
    seeds = {}
    for path in pcaps:
        count = 0
        for payload in rocev2_payloads(path):
            seeds.setdefault(hashlib.sha1(payload).hexdigest(), payload)
            count += 1
        print(f"seed_corpus: {path.name}: {count} RoCEv2 payloads")
    for target in TARGETS:
        corpus = fuzz_dir / "corpus" / target
        corpus.mkdir(parents=True, exist_ok=True)
        for name, payload in seeds.items():
            (corpus / name).write_bytes(payload)
    print(f"seed_corpus: {len(seeds)} distinct payloads into fuzz/corpus/{{{','.join(TARGETS)}}}/")


if __name__ == "__main__":
    main()

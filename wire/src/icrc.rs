//! The RoCEv2 invariant CRC, exactly as Linux `rdma_rxe` computes it (`rxe_icrc.c`).
//!
//! CRC-32 (the Ethernet/zlib one) over: eight 0xFF bytes standing in for the absent LRH,
//! the IP header with its variant fields set to all ones (IPv4 TOS, TTL and header
//! checksum; IPv6 traffic class, flow label and hop limit), the UDP header with its
//! checksum set to all ones, the BTH with byte 4 (FECN, BECN, reserved) set to all ones,
//! then the rest of the packet up to the ICRC. It goes on the wire little-endian.
//!
//! The IPv4 identification, flags and total length are covered, so the caller names
//! them explicitly in an [`Envelope`]: a sender must know the IP ID its kernel will use.

use smoltcp::wire::{Ipv4Address, Ipv6Address};

use crate::{bth, Error, Result, ICRC_LEN};

/// The IP fields the ICRC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFields {
    /// IPv4 (20-byte header, no options).
    V4 {
        /// Source address.
        src: Ipv4Address,
        /// Destination address.
        dst: Ipv4Address,
        /// Identification.
        ident: u16,
        /// Flags (DF = 0x4000, MF = 0x2000) and fragment offset, as on the wire.
        flags_frag: u16,
    },
    /// IPv6 (40-byte header, UDP as next header).
    V6 {
        /// Source address.
        src: Ipv6Address,
        /// Destination address.
        dst: Ipv6Address,
    },
}

/// The IPv4 "don't fragment" flag in [`IpFields::V4::flags_frag`].
pub const IPV4_DONT_FRAG: u16 = 0x4000;

/// The IP and UDP header fields of a RoCEv2 datagram that the ICRC covers (lengths are
/// derived from the UDP payload length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// IP addresses and, for IPv4, identification and flags.
    pub ip: IpFields,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port (4791).
    pub dst_port: u16,
}

impl Envelope {
    /// An IPv4 envelope with DF set and the given identification, to port 4791.
    pub const fn ipv4(src: Ipv4Address, dst: Ipv4Address, ident: u16, src_port: u16) -> Envelope {
        Envelope {
            ip: IpFields::V4 {
                src,
                dst,
                ident,
                flags_frag: IPV4_DONT_FRAG,
            },
            src_port,
            dst_port: crate::ROCEV2_UDP_PORT,
        }
    }

    /// An IPv6 envelope to port 4791.
    pub const fn ipv6(src: Ipv6Address, dst: Ipv6Address, src_port: u16) -> Envelope {
        Envelope {
            ip: IpFields::V6 { src, dst },
            src_port,
            dst_port: crate::ROCEV2_UDP_PORT,
        }
    }
}

/// Bytes a [`Hasher`] gathers before hashing them in one call: the stand-in LRH, an
/// IPv6 header, UDP, BTH, a RETH and a small payload fit (so a small packet is one
/// CRC call, long enough for carry-less multiplication).
const PENDING: usize = 256;

/// Incremental ICRC over a datagram given in pieces (headers, then a gather list).
///
/// The small header pieces (stand-in LRH, IP, UDP, BTH, extended headers) are gathered
/// and hashed in one call: the CRC uses carry-less multiplication from 16 bytes on, and
/// pieces of 8 or 12 bytes alone would each take the byte-at-a-time path.
#[derive(Debug, Clone)]
pub struct Hasher {
    crc: crc32fast::Hasher,
    pending: [u8; PENDING],
    len: usize,
}

impl Hasher {
    /// Starts the ICRC of a datagram whose UDP payload (BTH to ICRC inclusive) is
    /// `udp_payload_len` bytes long: hashes the LRH stand-in and the masked IP/UDP headers.
    /// Feed the BTH to [`Hasher::update_bth`] next, then everything up to the ICRC.
    #[inline]
    pub fn new(envelope: &Envelope, udp_payload_len: usize) -> Hasher {
        let mut pending = [0u8; PENDING];
        let udp_len = (udp_payload_len + 8) as u16;
        // Fixed-size writes at fixed offsets: these compile to plain stores.
        pending[..8].copy_from_slice(&[0xff; 8]);
        let ip_len = match envelope.ip {
            IpFields::V4 {
                src,
                dst,
                ident,
                flags_frag,
            } => {
                let total = udp_len.wrapping_add(20);
                let ip: &mut [u8; 20] = (&mut pending[8..28]).try_into().expect("20 bytes");
                ip[0] = 0x45;
                ip[1] = 0xff; // TOS
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&ident.to_be_bytes());
                ip[6..8].copy_from_slice(&flags_frag.to_be_bytes());
                ip[8] = 0xff; // TTL
                ip[9] = 17; // UDP
                ip[10..12].copy_from_slice(&[0xff, 0xff]); // header checksum
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                20
            }
            IpFields::V6 { src, dst } => {
                let ip: &mut [u8; 40] = (&mut pending[8..48]).try_into().expect("40 bytes");
                // Version 6; traffic class and flow label all ones.
                ip[0..4].copy_from_slice(&[0x6f, 0xff, 0xff, 0xff]);
                ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
                ip[6] = 17;
                ip[7] = 0xff; // hop limit
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                40
            }
        };
        let at = 8 + ip_len;
        let udp: &mut [u8; 8] = (&mut pending[at..at + 8]).try_into().expect("8 bytes");
        udp[0..2].copy_from_slice(&envelope.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&envelope.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[6..8].copy_from_slice(&[0xff, 0xff]); // checksum
        Hasher {
            crc: crc32fast::Hasher::new(),
            pending,
            len: at + 8,
        }
    }

    /// Hashes the BTH with its variant byte (FECN, BECN, reserved) masked.
    /// `bth` must be at least [`bth::HEADER_LEN`] bytes; only those are hashed.
    #[inline]
    pub fn update_bth(&mut self, bth: &[u8]) -> Result<()> {
        let bth = bth
            .first_chunk::<{ bth::HEADER_LEN }>()
            .ok_or(Error::Truncated)?;
        let mut masked = *bth;
        masked[4] = 0xff;
        self.update(&masked);
        Ok(())
    }

    /// Hashes bytes after the BTH: extended headers, payload, pad.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= PENDING {
            self.pending[self.len..end].copy_from_slice(bytes);
            self.len = end;
            return;
        }
        self.crc.update(&self.pending[..self.len]);
        self.len = 0;
        self.crc.update(bytes);
    }

    /// The ICRC value; put it on the wire with `to_le_bytes`.
    #[inline]
    pub fn finish(mut self) -> u32 {
        self.crc.update(&self.pending[..self.len]);
        self.crc.finalize()
    }
}

/// The ICRC of a whole RoCEv2 UDP payload (`udp_payload` includes the 4 ICRC bytes,
/// whose contents are ignored).
pub fn compute(envelope: &Envelope, udp_payload: &[u8]) -> Result<u32> {
    if udp_payload.len() < bth::HEADER_LEN + ICRC_LEN {
        return Err(Error::Truncated);
    }
    let body_end = udp_payload.len() - ICRC_LEN;
    let mut hasher = Hasher::new(envelope, udp_payload.len());
    hasher.update_bth(udp_payload)?;
    hasher.update(&udp_payload[bth::HEADER_LEN..body_end]);
    Ok(hasher.finish())
}

/// The ICRC carried in the last four bytes of a RoCEv2 UDP payload.
pub fn carried(udp_payload: &[u8]) -> Result<u32> {
    let start = udp_payload
        .len()
        .checked_sub(ICRC_LEN)
        .ok_or(Error::Truncated)?;
    let b = &udp_payload[start..];
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// True when the carried ICRC matches the computed one.
pub fn verify(envelope: &Envelope, udp_payload: &[u8]) -> Result<bool> {
    Ok(compute(envelope, udp_payload)? == carried(udp_payload)?)
}

/// Computes the ICRC and writes it into the last four bytes of `udp_payload`.
pub fn fill(envelope: &Envelope, udp_payload: &mut [u8]) -> Result<()> {
    let icrc = compute(envelope, udp_payload)?;
    let start = udp_payload.len() - ICRC_LEN;
    udp_payload[start..].copy_from_slice(&icrc.to_le_bytes());
    Ok(())
}

/// [`fill`] for a UDP payload whose bytes `body` are kept elsewhere: `udp_payload` holds
/// the rest, with `body` missing at `at` (after the headers, before the pad and ICRC).
pub fn fill_around(
    envelope: &Envelope,
    udp_payload: &mut [u8],
    at: usize,
    body: &[u8],
) -> Result<()> {
    fill_around_with(envelope, udp_payload, at, body.len(), |hasher| {
        hasher.update(body)
    })
}

/// [`fill_around`] for a body of `body_len` bytes that `hash_body` feeds to the hasher
/// (in pieces, say, when it cannot be borrowed as one slice).
pub fn fill_around_with(
    envelope: &Envelope,
    udp_payload: &mut [u8],
    at: usize,
    body_len: usize,
    hash_body: impl FnOnce(&mut Hasher),
) -> Result<()> {
    let len = udp_payload.len();
    if at < bth::HEADER_LEN || at + ICRC_LEN > len {
        return Err(Error::Truncated);
    }
    let mut hasher = Hasher::new(envelope, len + body_len);
    hasher.update_bth(udp_payload)?;
    hasher.update(&udp_payload[bth::HEADER_LEN..at]);
    hash_body(&mut hasher);
    hasher.update(&udp_payload[at..len - ICRC_LEN]);
    let icrc = hasher.finish();
    udp_payload[len - ICRC_LEN..].copy_from_slice(&icrc.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest 10.77.0.11 to host 10.77.0.1 as in the interop harness, IP ID 0, DF.
    const ENVELOPE: Envelope = Envelope {
        ip: IpFields::V4 {
            src: Ipv4Address::new(10, 77, 0, 11),
            dst: Ipv4Address::new(10, 77, 0, 1),
            ident: 0,
            flags_frag: IPV4_DONT_FRAG,
        },
        src_port: 0,
        dst_port: 4791,
    };

    #[test]
    fn matches_a_reference_crc() {
        // Independent check: the same bytes hashed in one go with crc32fast.
        let payload = [
            0x04, 0, 0xff, 0xff, 0xc0, 0, 0, 0x11, 0x80, 0, 0, 1, 1, 2, 3, 4, 0, 0, 0, 0,
        ];
        let mut flat = std::vec::Vec::new();
        flat.extend_from_slice(&[0xff; 8]);
        flat.extend_from_slice(&[
            0x45, 0xff, 0, 48, 0, 0, 0x40, 0, 0xff, 17, 0xff, 0xff, 10, 77, 0, 11, 10, 77, 0, 1,
        ]);
        flat.extend_from_slice(&[0, 0, 0x12, 0xb7, 0, 28, 0xff, 0xff]);
        let mut bth = payload[..12].to_vec();
        bth[4] = 0xff;
        flat.extend_from_slice(&bth);
        flat.extend_from_slice(&payload[12..16]);
        assert_eq!(compute(&ENVELOPE, &payload), Ok(crc32fast::hash(&flat)));
    }

    #[test]
    fn filling_around_a_body_kept_elsewhere_is_filling_the_joined_payload() {
        for (header, body_len) in [(12, 0), (12, 1), (28, 300), (28, 4096), (12, 5000)] {
            let body: std::vec::Vec<u8> = (0..body_len).map(|i| (i * 7 + 3) as u8).collect();
            let mut joined = std::vec![0u8; header + body_len + 3 + ICRC_LEN];
            joined[0] = 0x0a;
            joined[header..header + body_len].copy_from_slice(&body);
            fill(&ENVELOPE, &mut joined).unwrap();
            let mut around = std::vec![0u8; header + 3 + ICRC_LEN];
            around[0] = 0x0a;
            fill_around(&ENVELOPE, &mut around, header, &body).unwrap();
            assert_eq!(around[header + 3..], joined[header + body_len + 3..]);
        }
        let mut short = [0u8; 14];
        assert_eq!(
            fill_around(&ENVELOPE, &mut short, 12, &[1]),
            Err(Error::Truncated)
        );
        assert_eq!(
            fill_around(&ENVELOPE, &mut [0u8; 20], 8, &[1]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn fill_then_verify_and_variant_fields_do_not_matter() {
        let mut payload = [0u8; 24];
        payload[0] = 0x04;
        payload[12..20].copy_from_slice(b"ferroce!");
        fill(&ENVELOPE, &mut payload).unwrap();
        assert_eq!(verify(&ENVELOPE, &payload), Ok(true));
        payload[4] = 0xc0; // FECN/BECN are masked
        assert_eq!(verify(&ENVELOPE, &payload), Ok(true));
        payload[13] ^= 1;
        assert_eq!(verify(&ENVELOPE, &payload), Ok(false));
        let mut other_id = ENVELOPE;
        other_id.ip = IpFields::V4 {
            src: Ipv4Address::new(10, 77, 0, 11),
            dst: Ipv4Address::new(10, 77, 0, 1),
            ident: 1,
            flags_frag: IPV4_DONT_FRAG,
        };
        payload[13] ^= 1;
        assert_eq!(verify(&other_id, &payload), Ok(false));
        assert_eq!(compute(&ENVELOPE, &payload[..15]), Err(Error::Truncated));
    }
}

//! A whole RoCEv2 packet: the UDP payload from the BTH to the ICRC.
//!
//! [`parse`] reads every header the opcode calls for and finds the payload (pad and ICRC
//! removed), enforcing the rules that need no connection state: known opcode, header
//! lengths, pad count, payload only where the opcode allows it, length a multiple of 4.
//! [`Repr::emit`] writes the headers; [`build`] writes a whole packet with pad and ICRC.

use core::fmt;

use crate::icrc::{self, Envelope};
use crate::opcode::{self, OpInfo};
use crate::{aeth, atomic, bth, cnp, deth, ieth, imm, reth, Error, Result, ICRC_LEN};

/// The valid IB path MTUs: a FIRST or MIDDLE packet carries exactly one of these.
pub const PATH_MTUS: [usize; 5] = [256, 512, 1024, 2048, 4096];

/// Every header of a RoCEv2 packet. Extended headers are present exactly when the
/// opcode calls for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Base transport header.
    pub bth: bth::Repr,
    /// Datagram ETH (UD).
    pub deth: Option<deth::Repr>,
    /// RDMA ETH (WRITE First/Only, READ request).
    pub reth: Option<reth::Repr>,
    /// Atomic ETH (compare-swap, fetch-add).
    pub atomic_eth: Option<atomic::eth::Repr>,
    /// ACK ETH (acknowledges, READ responses First/Last/Only).
    pub aeth: Option<aeth::Repr>,
    /// Atomic ACK ETH.
    pub atomic_ack_eth: Option<atomic::ack::Repr>,
    /// Immediate data.
    pub imm: Option<imm::Repr>,
    /// Invalidate ETH.
    pub ieth: Option<ieth::Repr>,
}

/// A parsed packet: its headers and where its payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The headers.
    pub repr: Repr,
    /// The payload, without pad and ICRC.
    pub payload: &'a [u8],
    /// The ICRC carried on the wire.
    pub icrc: u32,
}

impl Repr {
    /// Headers for `bth` with no extended header; set the ones the opcode needs.
    pub const fn new(bth: bth::Repr) -> Repr {
        Repr {
            bth,
            deth: None,
            reth: None,
            atomic_eth: None,
            aeth: None,
            atomic_ack_eth: None,
            imm: None,
            ieth: None,
        }
    }

    /// The opcode's table entry; unknown opcodes cannot be emitted or parsed.
    pub fn info(&self) -> Result<OpInfo> {
        self.bth.opcode.info().ok_or(Error::UnknownOpcode)
    }

    /// Length of the BTH and every extended header.
    pub fn header_len(&self) -> Result<usize> {
        Ok(bth::HEADER_LEN + self.info()?.headers.len())
    }

    /// Checks that exactly the extended headers the opcode calls for are present.
    pub fn check_headers(&self) -> Result<OpInfo> {
        let info = self.info()?;
        let h = info.headers;
        let ok = h.deth == self.deth.is_some()
            && h.reth == self.reth.is_some()
            && h.atomic_eth == self.atomic_eth.is_some()
            && h.aeth == self.aeth.is_some()
            && h.atomic_ack_eth == self.atomic_ack_eth.is_some()
            && h.imm == self.imm.is_some()
            && h.ieth == self.ieth.is_some();
        if ok {
            Ok(info)
        } else {
            Err(Error::Malformed)
        }
    }

    /// Writes the BTH and extended headers into the start of `buf`; returns their length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let info = self.check_headers()?;
        let len = bth::HEADER_LEN + info.headers.len();
        let buf = buf.get_mut(..len).ok_or(Error::Truncated)?;
        let (head, mut rest) = buf.split_at_mut(bth::HEADER_LEN);
        self.bth.emit(&mut bth::Packet::new_unchecked(head));
        // Each header in wire order, each writing into the front of what is left.
        macro_rules! put {
            ($field:expr, $module:path, $len:expr) => {
                if let Some(h) = $field {
                    let (this, next) = rest.split_at_mut($len);
                    {
                        use $module as m;
                        h.emit(&mut m::Packet::new_unchecked(this));
                    }
                    rest = next;
                }
            };
        }
        put!(self.deth, deth, deth::HEADER_LEN);
        put!(self.reth, reth, reth::HEADER_LEN);
        put!(self.atomic_eth, atomic::eth, atomic::ATOMIC_ETH_LEN);
        put!(self.aeth, aeth, aeth::HEADER_LEN);
        put!(self.atomic_ack_eth, atomic::ack, atomic::ATOMIC_ACK_ETH_LEN);
        put!(self.imm, imm, imm::HEADER_LEN);
        put!(self.ieth, ieth, ieth::HEADER_LEN);
        if info.headers.cnp {
            cnp::Repr.emit(&mut cnp::Packet::new_unchecked(rest));
        }
        Ok(len)
    }
}

/// Pad bytes that bring `payload_len` to a multiple of 4.
pub const fn pad_for(payload_len: usize) -> u8 {
    ((4 - (payload_len % 4)) % 4) as u8
}

/// Length of the UDP payload of a packet with these headers and `payload_len` bytes of
/// payload: headers, payload, pad and ICRC.
pub fn buffer_len(repr: &Repr, payload_len: usize) -> Result<usize> {
    Ok(repr.header_len()? + payload_len + pad_for(payload_len) as usize + ICRC_LEN)
}

/// Reads a RoCEv2 UDP payload (BTH to ICRC). Never panics; the ICRC is returned, not
/// checked (see [`icrc::verify`]), because checking it needs the IP envelope.
pub fn parse(udp_payload: &[u8]) -> Result<Parsed<'_>> {
    // Hot path: fixed-size views (`&[u8; N]`) so the field reads need no bounds
    // checks, and one table load for everything the opcode implies.
    let bth_bytes = udp_payload
        .first_chunk::<{ bth::HEADER_LEN }>()
        .ok_or(Error::Truncated)?;
    let bth = bth::Repr::parse(&bth::Packet::new_unchecked(bth_bytes))?;
    let layout = opcode::layout(bth_bytes[0]);
    let info = layout.info.ok_or(Error::UnknownOpcode)?;
    let header_len = usize::from(layout.header_len);
    if udp_payload.len() < header_len + ICRC_LEN {
        return Err(Error::Truncated);
    }
    // The ICRC ends the packet and pad + payload are a multiple of 4, so the whole
    // transport packet is too.
    if udp_payload.len() % 4 != 0 {
        return Err(Error::Malformed);
    }
    let (headers, rest) = udp_payload
        .split_at_checked(header_len)
        .ok_or(Error::Truncated)?;
    let (body, icrc) = rest
        .split_last_chunk::<ICRC_LEN>()
        .ok_or(Error::Truncated)?;
    let mut extended = headers.get(bth::HEADER_LEN..).ok_or(Error::Truncated)?;
    // Only present headers are written: the rest stay `None` from `Repr::new`.
    let mut repr = Repr::new(bth);
    let h = info.headers;
    macro_rules! take {
        ($field:ident, $module:path, $len:expr) => {
            if h.$field {
                let (this, next) = extended
                    .split_first_chunk::<{ $len }>()
                    .ok_or(Error::Truncated)?;
                extended = next;
                use $module as m;
                repr.$field = Some(m::Repr::parse(&m::Packet::new_unchecked(this))?);
            }
        };
    }
    take!(deth, deth, deth::HEADER_LEN);
    take!(reth, reth, reth::HEADER_LEN);
    take!(atomic_eth, atomic::eth, atomic::ATOMIC_ETH_LEN);
    take!(aeth, aeth, aeth::HEADER_LEN);
    take!(atomic_ack_eth, atomic::ack, atomic::ATOMIC_ACK_ETH_LEN);
    take!(imm, imm, imm::HEADER_LEN);
    take!(ieth, ieth, ieth::HEADER_LEN);
    // What is left is the CNP's reserved body, if any: ignored on receive.
    let _ = extended;

    let pad = bth.pad_count as usize;
    if pad > body.len() || (!info.payload && !body.is_empty()) {
        return Err(Error::Malformed);
    }
    let payload = &body[..body.len() - pad];
    Ok(Parsed {
        repr,
        payload,
        icrc: u32::from_le_bytes(*icrc),
    })
}

impl Parsed<'_> {
    /// Checks the segmentation rule for a connection with `path_mtu`: FIRST and MIDDLE
    /// packets carry exactly one path MTU, LAST and ONLY at most one (and LAST at least 1).
    pub fn check_segment(&self, path_mtu: usize) -> Result<()> {
        let info = self.repr.info()?;
        if !info.payload {
            return Ok(());
        }
        let len = self.payload.len();
        let ok = match info.position {
            crate::Position::First | crate::Position::Middle => len == path_mtu,
            crate::Position::Last => (1..=path_mtu).contains(&len),
            crate::Position::Only => len <= path_mtu,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Malformed)
        }
    }
}

/// Writes a whole packet into `buf`: headers, payload, pad (zeros) and the ICRC for
/// `envelope`. The BTH pad count is set from the payload length. Returns the length.
pub fn build(repr: &Repr, payload: &[u8], envelope: &Envelope, buf: &mut [u8]) -> Result<usize> {
    let info = repr.check_headers()?;
    if !info.payload && !payload.is_empty() {
        return Err(Error::Malformed);
    }
    let total = buffer_len(repr, payload.len())?;
    let buf = buf.get_mut(..total).ok_or(Error::Truncated)?;
    let mut repr = *repr;
    repr.bth.pad_count = pad_for(payload.len());
    let header_len = repr.emit(buf)?;
    let body_end = header_len + payload.len();
    buf[header_len..body_end].copy_from_slice(payload);
    buf[body_end..total - ICRC_LEN].fill(0);
    icrc::fill(envelope, buf)?;
    Ok(total)
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bth)?;
        if let Some(h) = self.deth {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.reth {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.atomic_eth {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.aeth {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.atomic_ack_eth {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.imm {
            write!(f, " {h}")?;
        }
        if let Some(h) = self.ieth {
            write!(f, " {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

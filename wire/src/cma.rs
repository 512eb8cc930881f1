//! RDMA CM over IP: the header librdmacm (the kernel's `rdma_cm`) puts at the start of
//! a REQ's or SIDR_REQ's private data, and the service IDs it maps ports into.
//!
//! ```text
//!  0 | CMA version (0) | IPVer:4 reserved:4 | source port (16)
//!  4 | source address (128; IPv4 in the last 4 bytes)
//! 20 | destination address (128; IPv4 in the last 4 bytes)
//! ```
//!
//! The port is the active side's; the passive side's port is in the service ID:
//! `(port space << 16) | port` ([`ServiceId::rdma_ip`]). Facts from Linux
//! `drivers/infiniband/core/cma.c` (`struct cma_hdr`, `cma_get_service_id`) and
//! `include/rdma/rdma_cm.h`.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::field::{self, Field};
use crate::{Error, Result, ServiceId};

/// Length of the header.
pub const HEADER_LEN: usize = 36;
/// The CMA version Linux sends and accepts.
pub const CMA_VERSION: u8 = 0;

mod fields {
    use super::Field;
    pub const CMA_VERSION: usize = 0;
    /// IP version (bits 7-4).
    pub const IP_VERSION: usize = 1;
    pub const PORT: Field = 2..4;
    pub const SRC_ADDR: Field = 4..20;
    pub const DST_ADDR: Field = 20..36;
    /// Where an IPv4 address sits inside a 16-byte address field.
    pub const IPV4_IN_ADDR: Field = 12..16;
}

enum_with_unknown! {
    /// An RDMA CM port space: which service-ID range an IP port maps into.
    pub enum PortSpace(u16) {
        /// IPoIB.
        Ipoib = 0x0002 => "IPOIB",
        /// Reliable connected (`RDMA_PS_TCP`): rping, perftest, NVMe-oF.
        Tcp = 0x0106 => "TCP",
        /// Unreliable datagram (`RDMA_PS_UDP`): udaddy.
        Udp = 0x0111 => "UDP",
        /// Any QP type (`RDMA_PS_IB`).
        Ib = 0x013f => "IB",
    }
}

impl ServiceId {
    /// The service ID librdmacm listens on and connects to for `port` in `space`:
    /// `0x0000_0000_0106_0000 | port` for [`PortSpace::Tcp`].
    pub fn rdma_ip(space: PortSpace, port: u16) -> ServiceId {
        ServiceId((u64::from(u16::from(space)) << 16) | u64::from(port))
    }

    /// The port space and port of an RDMA CM IP service ID, or `None` when the
    /// service ID is not of that form (its top 32 bits are not zero).
    pub fn rdma_ip_parts(self) -> Option<(PortSpace, u16)> {
        if self.0 >> 32 != 0 {
            return None;
        }
        Some((PortSpace::from((self.0 >> 16) as u16), self.0 as u16))
    }
}

/// The two addresses of a [`Repr`], of one IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// IPv4.
    V4 {
        /// The active (connecting) side.
        src: Ipv4Addr,
        /// The passive (listening) side.
        dst: Ipv4Addr,
    },
    /// IPv6.
    V6 {
        /// The active (connecting) side.
        src: Ipv6Addr,
        /// The passive (listening) side.
        dst: Ipv6Addr,
    },
}

header_view!("an RDMA CM IP header", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The CMA version ([`CMA_VERSION`]).
    pub fn cma_version(&self) -> u8 {
        self.buffer.as_ref()[fields::CMA_VERSION]
    }

    /// The IP version (4 or 6).
    pub fn ip_version(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::IP_VERSION], 4, 4)
    }

    /// The active side's port.
    pub fn port(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::PORT])
    }

    /// The source address field, all 16 bytes.
    pub fn src_addr(&self) -> [u8; 16] {
        field::get_u128(&self.buffer.as_ref()[fields::SRC_ADDR])
    }

    /// The destination address field, all 16 bytes.
    pub fn dst_addr(&self) -> [u8; 16] {
        field::get_u128(&self.buffer.as_ref()[fields::DST_ADDR])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the CMA version.
    pub fn set_cma_version(&mut self, version: u8) {
        self.buffer.as_mut()[fields::CMA_VERSION] = version;
    }

    /// Sets the IP version (reserved bits cleared).
    pub fn set_ip_version(&mut self, version: u8) {
        self.buffer.as_mut()[fields::IP_VERSION] = (version & 0xf) << 4;
    }

    /// Sets the active side's port.
    pub fn set_port(&mut self, port: u16) {
        self.buffer.as_mut()[fields::PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the source address field.
    pub fn set_src_addr(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[fields::SRC_ADDR].copy_from_slice(&addr);
    }

    /// Sets the destination address field.
    pub fn set_dst_addr(&mut self, addr: [u8; 16]) {
        self.buffer.as_mut()[fields::DST_ADDR].copy_from_slice(&addr);
    }
}

/// An IPv4 address in a 16-byte address field: zeros, then the address.
fn ipv4_field(addr: Ipv4Addr) -> [u8; 16] {
    let mut field = [0u8; 16];
    field[fields::IPV4_IN_ADDR].copy_from_slice(&addr.octets());
    field
}

fn ipv4_of(field: [u8; 16]) -> Ipv4Addr {
    let b = &field[fields::IPV4_IN_ADDR];
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// A parsed RDMA CM IP header.
///
/// Reserved bits and the 12 bytes before an IPv4 address are not kept: `emit` writes
/// them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The CMA version (Linux rejects a REQ whose version is not [`CMA_VERSION`]).
    pub cma_version: u8,
    /// The active side's port.
    pub port: u16,
    /// Source and destination addresses.
    pub addresses: Addresses,
}

impl Repr {
    /// Reads the header. Fails with [`Error::Malformed`] when the IP version is
    /// neither 4 nor 6.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let addresses = match packet.ip_version() {
            4 => Addresses::V4 {
                src: ipv4_of(packet.src_addr()),
                dst: ipv4_of(packet.dst_addr()),
            },
            6 => Addresses::V6 {
                src: Ipv6Addr::from(packet.src_addr()),
                dst: Ipv6Addr::from(packet.dst_addr()),
            },
            _ => return Err(Error::Malformed),
        };
        Ok(Repr {
            cma_version: packet.cma_version(),
            port: packet.port(),
            addresses,
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_cma_version(self.cma_version);
        packet.set_port(self.port);
        let (version, src, dst) = match self.addresses {
            Addresses::V4 { src, dst } => (4, ipv4_field(src), ipv4_field(dst)),
            Addresses::V6 { src, dst } => (6, src.octets(), dst.octets()),
        };
        packet.set_ip_version(version);
        packet.set_src_addr(src);
        packet.set_dst_addr(dst);
    }

    /// The active side's address and port.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.src(), self.port)
    }

    /// The active side's address.
    pub fn src(&self) -> IpAddr {
        match self.addresses {
            Addresses::V4 { src, .. } => IpAddr::V4(src),
            Addresses::V6 { src, .. } => IpAddr::V6(src),
        }
    }

    /// The passive side's address (its port is in the service ID).
    pub fn dst(&self) -> IpAddr {
        match self.addresses {
            Addresses::V4 { dst, .. } => IpAddr::V4(dst),
            Addresses::V6 { dst, .. } => IpAddr::V6(dst),
        }
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cma {} -> {}", self.source(), self.dst())?;
        if self.cma_version != CMA_VERSION {
            write!(f, " version={}", self.cma_version)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, REQ};
    use crate::cm::{self, Message};
    use crate::mad;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn rpings_req_carries_its_addresses() {
        let mads = rping_mads();
        let mad = mad::Packet::new_checked(mads[REQ]).unwrap();
        let Message::Req(req) = cm::Repr::parse(&mad).unwrap().message else {
            panic!("not a REQ");
        };
        assert_eq!(
            req.service_id.rdma_ip_parts(),
            Some((PortSpace::Tcp, 7174)),
            "rping's default port"
        );
        assert_eq!(ServiceId::rdma_ip(PortSpace::Tcp, 7174), req.service_id);
        let header = &req.private_data[..HEADER_LEN];
        let repr = Repr::parse(&Packet::new_checked(header).unwrap()).unwrap();
        assert_eq!(repr.cma_version, CMA_VERSION);
        assert_eq!(
            repr.addresses,
            Addresses::V4 {
                src: Ipv4Addr::new(10, 77, 0, 11),
                dst: Ipv4Addr::new(10, 77, 0, 12),
            }
        );
        assert_eq!(repr.source(), "10.77.0.11:49605".parse().unwrap());
        // The addresses are the REQ's GIDs.
        assert_eq!(repr.src(), req.primary_path.local_gid.ip());
        assert_eq!(repr.dst(), req.primary_path.remote_gid.ip());
        let mut out = [0xffu8; HEADER_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..], header);
        assert_eq!(repr.to_string(), "cma 10.77.0.11:49605 -> 10.77.0.12");
    }

    #[test]
    fn service_ids_as_librdmacm_builds_them() {
        assert_eq!(
            ServiceId::rdma_ip(PortSpace::Tcp, 7174).0,
            0x0000_0000_0106_1c06
        );
        assert_eq!(
            ServiceId::rdma_ip(PortSpace::Udp, 7174).0,
            0x0000_0000_0111_1c06
        );
        assert_eq!(
            ServiceId::rdma_ip(PortSpace::Ib, 1).0,
            0x0000_0000_013f_0001
        );
        assert_eq!(
            ServiceId::rdma_ip(PortSpace::Ipoib, 2).0,
            0x0000_0000_0002_0002
        );
        assert_eq!(
            ServiceId(0x0000_0000_0123_0004).rdma_ip_parts(),
            Some((PortSpace::Unknown(0x0123), 4))
        );
        assert_eq!(ServiceId(0x0200_0000_0106_1c06).rdma_ip_parts(), None);
    }

    #[test]
    fn rejects_short_and_unknown_ip_version() {
        let mut bytes = [0u8; HEADER_LEN];
        assert_eq!(
            Packet::new_checked(&bytes[..HEADER_LEN - 1]).err(),
            Some(Error::Truncated)
        );
        bytes[1] = 0x50;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..])),
            Err(Error::Malformed)
        );
    }

    proptest! {
        #[test]
        fn any_header_round_trips(
            version in any::<u8>(),
            port in any::<u16>(),
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
        ) {
            let addresses = if v6 {
                Addresses::V6 { src: Ipv6Addr::from(src), dst: Ipv6Addr::from(dst) }
            } else {
                Addresses::V4 {
                    src: Ipv4Addr::new(src[0], src[1], src[2], src[3]),
                    dst: Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]),
                }
            };
            let repr = Repr { cma_version: version, port, addresses };
            let mut out = [0xffu8; HEADER_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

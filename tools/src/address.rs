//! Which local addresses (GIDs) a command-line tool gives its device, chosen the way
//! rdma-core users expect of a RoCE device:
//!
//! - a client uses the source address the kernel picks to reach its peer (the address
//!   of the interface that routes there);
//! - a server uses every non-loopback address of the host (IPv4 first, then global
//!   IPv6), or 127.0.0.1 when there is none;
//! - when the client's address has UDP 4791 taken and the peer is this host — a server
//!   in another terminal holds it — the client takes the first free loopback address
//!   from 127.0.0.2 on, and says so (the kernel delivers between any two local
//!   addresses, so 127.0.0.2 reaches a server on 127.0.0.1 or on the host's own IP);
//! - `--bind` overrides all of these.
//!
//! Addresses come from `/proc/net/fib_trie` (IPv4 local addresses) and
//! `/proc/net/if_inet6`, so no C library call is needed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use ferroce::{Device, DeviceConfig, Error, PathMtu};

/// Why a tool could not open its device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another socket holds UDP 4791 on one of the addresses.
    #[error(
        "UDP port {port} on {address} is in use (kernel rxe or another ferroce?); \
         choose another address with --bind"
    )]
    PortBusy {
        /// The address whose port is taken.
        address: IpAddr,
        /// The UDP port.
        port: u16,
    },
    /// An address that is not one of this host's.
    #[error("{0} is not an address of this host")]
    NotLocal(IpAddr),
    /// Anything else.
    #[error("cannot open the device on {addresses:?}: {source}")]
    Other {
        /// The addresses asked for.
        addresses: Vec<IpAddr>,
        /// What failed.
        source: Error,
    },
}

/// Opens a device on `addresses` (UDP 4791) with the active MTU [`active_mtu`] gives,
/// naming the address when one cannot be bound.
pub fn open_device(addresses: &[IpAddr]) -> Result<Device, OpenError> {
    let mut config = DeviceConfig::with_address(IpAddr::V4(Ipv4Addr::LOCALHOST));
    config.addresses = addresses.to_vec();
    config.active_mtu = active_mtu(addresses);
    open_config(config)
}

/// Opens a device as `config` says, naming the address when one cannot be bound.
pub fn open_config(config: DeviceConfig) -> Result<Device, OpenError> {
    let addresses = &config.addresses.clone();
    let port = config.port;
    let first = addresses
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match Device::open(config) {
        Ok(device) => Ok(device),
        Err(Error::Io(error)) if error.kind() == io::ErrorKind::AddrInUse => {
            // The device let go of what it bound; probing again names the address.
            let address = addresses
                .iter()
                .copied()
                .find(|a| UdpSocket::bind(SocketAddr::new(*a, port)).is_err())
                .unwrap_or(first);
            Err(OpenError::PortBusy { address, port })
        }
        Err(Error::Io(error)) if error.kind() == io::ErrorKind::AddrNotAvailable => {
            let address = addresses
                .iter()
                .copied()
                .find(|a| UdpSocket::bind(SocketAddr::new(*a, 0)).is_err())
                .unwrap_or(first);
            Err(OpenError::NotLocal(address))
        }
        Err(source) => Err(OpenError::Other {
            addresses: addresses.to_vec(),
            source,
        }),
    }
}

/// The source address the kernel uses for datagrams to `peer` (a connected UDP socket's
/// local address; nothing is sent).
pub fn route_source(peer: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = match peer {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    socket.connect(SocketAddr::new(
        peer,
        ferroce_transport::wire::ROCEV2_UDP_PORT,
    ))?;
    Ok(socket.local_addr()?.ip())
}

/// The loopback addresses a client may fall back to, in order.
const FALLBACK_HOSTS: std::ops::RangeInclusive<u8> = 2..=254;

/// The local address a client without `--bind` uses toward `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    /// The address to open the device on.
    pub address: IpAddr,
    /// The address that routes to `peer`, when its UDP 4791 was taken and `address` is
    /// a loopback address chosen instead.
    pub taken: Option<IpAddr>,
}

impl ClientAddress {
    /// What a tool tells its user when it did not use the routed address.
    pub fn note(&self) -> Option<String> {
        self.taken.map(|taken| {
            format!(
                "UDP port {port} on {taken} is taken (a server on this host?); this client \
                 uses {address} instead (--bind chooses the address)",
                port = ferroce_transport::wire::ROCEV2_UDP_PORT,
                address = self.address
            )
        })
    }
}

/// A client's local address toward `peer`: the one that routes there ([`route_source`]),
/// unless its UDP 4791 is taken and `peer` is an IPv4 address of this host — then the
/// first loopback address from 127.0.0.2 whose port is free. When none is free the
/// routed address is kept, and opening the device names it.
pub fn client_address(peer: IpAddr) -> io::Result<ClientAddress> {
    let routed = route_source(peer)?;
    let peer = peer.to_canonical();
    let this_host = peer.is_loopback() || host_addresses().contains(&peer);
    let port = ferroce_transport::wire::ROCEV2_UDP_PORT;
    Ok(step_aside(routed, peer.is_ipv4() && this_host, |address| {
        matches!(
            UdpSocket::bind(SocketAddr::new(address, port)),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse
        )
    }))
}

/// [`client_address`]'s choice, given the routed address, whether the peer is an IPv4
/// address of this host, and which addresses have their port taken.
fn step_aside(routed: IpAddr, local_peer: bool, busy: impl Fn(IpAddr) -> bool) -> ClientAddress {
    let keep = ClientAddress {
        address: routed,
        taken: None,
    };
    if !local_peer || !busy(routed) {
        return keep;
    }
    FALLBACK_HOSTS
        .map(|host| IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
        .find(|&candidate| candidate != routed && !busy(candidate))
        .map_or(keep, |address| ClientAddress {
            address,
            taken: Some(routed),
        })
}

/// The host's non-loopback addresses: IPv4 ones first, then global IPv6 ones (link-local
/// IPv6 addresses need a scope a GID cannot carry, so they are left out).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = std::fs::read_to_string("/proc/net/fib_trie")
        .map(|text| local_ipv4_addresses(&text))
        .unwrap_or_default()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        addresses.extend(global_ipv6_addresses(&text).into_iter().map(IpAddr::V6));
    }
    addresses
}

/// A server's default GIDs: every non-loopback address, or 127.0.0.1 when there is none.
pub fn server_addresses() -> Vec<IpAddr> {
    let addresses = host_addresses();
    if addresses.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        addresses
    }
}

/// The active MTU a device on `addresses` reports, as rxe derives it from the netdev
/// MTU ([`mtu_for_netdev`]): the loopback interface (MTU 65536) gives 4096, standard
/// Ethernet (1500) 1024, jumbo frames (9000) 4096. The netdev of an IPv4 address is the
/// one whose on-link route holds it (`/proc/net/route`); with several addresses the
/// smallest MTU wins, and 1024 (safe on any Ethernet) where no netdev is found (IPv6).
pub fn active_mtu(addresses: &[IpAddr]) -> PathMtu {
    if !addresses.is_empty() && addresses.iter().all(|a| a.to_canonical().is_loopback()) {
        return PathMtu::Mtu4096;
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    addresses
        .iter()
        .map(|address| match address.to_canonical() {
            IpAddr::V4(v4) if v4.is_loopback() => PathMtu::Mtu4096,
            IpAddr::V4(v4) => on_link_interface(&routes, v4)
                .and_then(|name| std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok())
                .and_then(|mtu| mtu.trim().parse().ok())
                .map_or(PathMtu::Mtu1024, mtu_for_netdev),
            IpAddr::V6(_) => PathMtu::Mtu1024,
        })
        .min_by_key(|mtu| mtu.bytes())
        .unwrap_or(PathMtu::Mtu1024)
}

/// rxe's active MTU for a netdev MTU (`iboe_get_mtu`): the MTU less the largest RoCE
/// headers (GRH 40, UDP 8, BTH 12, XRC 4, AtomicETH 28, ICRC 4), rounded down to an IB
/// MTU; 256 at least.
pub fn mtu_for_netdev(netdev_mtu: u32) -> PathMtu {
    const HEADERS: u32 = 40 + 8 + 12 + 4 + 28 + 4;
    let room = netdev_mtu.saturating_sub(HEADERS);
    [4096, 2048, 1024, 512]
        .into_iter()
        .find(|&bytes| room >= bytes)
        .and_then(PathMtu::from_bytes)
        .unwrap_or(PathMtu::Mtu256)
}

/// The interface of the most specific on-link IPv4 route (no gateway) holding
/// `address`, from `/proc/net/route` (columns: Iface Destination Gateway Flags RefCnt
/// Use Metric Mask ..., addresses as host-order hex of the network-order bytes).
fn on_link_interface(routes: &str, address: Ipv4Addr) -> Option<String> {
    let key = u32::from_ne_bytes(address.octets());
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| fields.get(i).and_then(|f| u32::from_str_radix(f, 16).ok());
            let (destination, gateway, mask) = (hex(1)?, hex(2)?, hex(7)?);
            (gateway == 0 && key & mask == destination)
                .then(|| (mask.count_ones(), fields[0].to_string()))
        })
        .max_by_key(|(prefix, _)| *prefix)
        .map(|(_, name)| name)
}

/// The GID of an address: IPv4 addresses are IPv4-mapped (`::ffff:a.b.c.d`).
pub fn gid(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The IPv4 addresses `/proc/net/fib_trie` lists as `/32 host LOCAL`, loopback excluded,
/// in order, without duplicates (the file lists the main and local tables).
fn local_ipv4_addresses(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("|-- ") {
            last = rest.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last.take() {
                if !address.is_loopback() && !found.contains(&address) {
                    found.push(address);
                }
            }
        }
    }
    found
}

/// Global-scope IPv6 addresses from `/proc/net/if_inet6` (columns: address, ifindex,
/// prefix length, scope, flags, name), skipping tentative and DAD-failed ones.
fn global_ipv6_addresses(if_inet6: &str) -> Vec<Ipv6Addr> {
    const SCOPE_GLOBAL: u32 = 0x00;
    const IFA_F_DADFAILED: u32 = 0x08;
    const IFA_F_TENTATIVE: u32 = 0x40;
    let mut found = Vec::new();
    for line in if_inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _, _, scope, flags, ..] = fields.as_slice() else {
            continue;
        };
        let (Ok(bits), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(hex, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let address = Ipv6Addr::from(bits);
        if hex.len() == 32
            && scope == SCOPE_GLOBAL
            && flags & (IFA_F_DADFAILED | IFA_F_TENTATIVE) == 0
            && !address.is_loopback()
            && !found.contains(&address)
        {
            found.push(address);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 10.77.0.11
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 192.0.2.2
              /32 host LOCAL
";

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
fd000000000000000000000000000003 04 40 00 c0     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
";

    #[test]
    fn fib_trie_local_addresses_without_loopback_or_duplicates() {
        assert_eq!(
            local_ipv4_addresses(FIB_TRIE),
            vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(10, 77, 0, 11)]
        );
        assert!(local_ipv4_addresses("").is_empty());
    }

    #[test]
    fn if_inet6_global_addresses_only() {
        assert_eq!(
            global_ipv6_addresses(IF_INET6),
            vec!["fd00::2".parse::<Ipv6Addr>().expect("literal")]
        );
        assert!(global_ipv6_addresses("garbage line\n").is_empty());
    }

    #[test]
    fn route_source_of_loopback_is_loopback() {
        let source = route_source(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("loopback route");
        assert!(source.is_loopback());
    }

    #[test]
    fn a_client_steps_aside_only_from_a_taken_port_toward_this_host() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("literal");
        let taken = [ip("127.0.0.1"), ip("127.0.0.2"), ip("192.0.2.2")];
        let busy = |address: IpAddr| taken.contains(&address);
        let chosen = step_aside(ip("127.0.0.1"), true, busy);
        assert_eq!(
            (chosen.address, chosen.taken),
            (ip("127.0.0.3"), Some(ip("127.0.0.1")))
        );
        let note = chosen.note().expect("a note");
        assert!(
            note.contains("4791 on 127.0.0.1 is taken") && note.contains("uses 127.0.0.3"),
            "{note}"
        );
        // The host's own address, held by a server there.
        let own = step_aside(ip("192.0.2.2"), true, busy);
        assert_eq!(own.address, ip("127.0.0.3"));
        // A remote peer cannot reach a loopback address: keep the routed one.
        let remote = step_aside(ip("192.0.2.2"), false, busy);
        assert_eq!((remote.address, remote.taken), (ip("192.0.2.2"), None));
        assert!(remote.note().is_none());
        // Free: nothing to change. All taken: the routed address, whose open names it.
        assert_eq!(step_aside(ip("10.0.0.1"), true, busy).taken, None);
        assert_eq!(step_aside(ip("127.0.0.1"), true, |_| true).taken, None);
    }

    #[test]
    fn gids_and_mtus() {
        assert_eq!(
            gid("10.77.0.1".parse().expect("literal")).to_string(),
            "::ffff:10.77.0.1"
        );
        assert_eq!(
            active_mtu(&["127.0.0.1".parse().expect("literal")]),
            PathMtu::Mtu4096
        );
        assert_eq!(
            active_mtu(&[
                "127.0.0.1".parse().expect("literal"),
                "10.0.0.1".parse().expect("literal")
            ]),
            PathMtu::Mtu1024
        );
        assert!(!server_addresses().is_empty());
    }

    #[test]
    fn mtu_as_rxe_derives_it() {
        assert_eq!(mtu_for_netdev(1500), PathMtu::Mtu1024);
        assert_eq!(mtu_for_netdev(9000), PathMtu::Mtu4096);
        assert_eq!(mtu_for_netdev(4096), PathMtu::Mtu2048);
        assert_eq!(mtu_for_netdev(65536), PathMtu::Mtu4096);
        assert_eq!(mtu_for_netdev(576), PathMtu::Mtu256);
    }

    #[test]
    fn on_link_route_names_the_interface() {
        let routes =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            rxebr0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let interface = |a: &str| on_link_interface(routes, a.parse().expect("literal"));
        assert_eq!(interface("10.77.0.1").as_deref(), Some("rxebr0"));
        assert_eq!(interface("192.0.2.7").as_deref(), Some("eth0"));
        // Only reachable through the default route's gateway: no on-link interface.
        assert_eq!(interface("10.1.2.3"), None);
    }
}

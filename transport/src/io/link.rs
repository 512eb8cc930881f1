//! Whether a device's address is on a working link: what rxe learns from netdev
//! notifications (`NETDEV_UP`/`DOWN`, carrier changes) and turns into
//! `IB_EVENT_PORT_ACTIVE`/`PORT_ERR`, asked of `getifaddrs` instead.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when some interface that is up and has carrier (`IFF_UP | IFF_RUNNING`) holds
/// `ip`: assigned to it, or, on a loopback interface, inside its subnet (127.0.0.2
/// is on `lo` through 127.0.0.1/8). The unspecified address is always usable.
pub fn address_usable(ip: IpAddr) -> io::Result<bool> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Ok(true);
    }
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; on success it owns a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = false;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not freed until below.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        let up = libc::IFF_UP as u32 | libc::IFF_RUNNING as u32;
        if flags & up != up {
            continue;
        }
        // SAFETY: the address and mask pointers are null or point at sockaddrs of the
        // family they state, owned by the list.
        let (Some(address), mask) = (unsafe { socket_ip(ifa.ifa_addr) }, unsafe {
            socket_ip(ifa.ifa_netmask)
        }) else {
            continue;
        };
        let loopback = flags & libc::IFF_LOOPBACK as u32 != 0;
        if address == ip || (loopback && mask.is_some_and(|m| same_subnet(address, ip, m))) {
            found = true;
            break;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The IP address in a `sockaddr`, if it is IPv4 or IPv6.
///
/// # Safety
///
/// `addr` is null or points at a `sockaddr` whose full size its family implies.
unsafe fn socket_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: non-null and valid by the contract; the family says which struct it is.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let v4 = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

fn same_subnet(a: IpAddr, b: IpAddr, mask: IpAddr) -> bool {
    match (a, b, mask) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(m)) => {
            let m = u32::from(m);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(m)) => {
            let m = u128::from(m);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_usable_and_unassigned_ones_are_not() {
        assert!(address_usable("127.0.0.1".parse().unwrap()).unwrap());
        assert!(address_usable("127.79.3.4".parse().unwrap()).unwrap());
        assert!(address_usable("::ffff:127.0.0.1".parse().unwrap()).unwrap());
        // TEST-NET-1: documentation only, never assigned.
        assert!(!address_usable("192.0.2.77".parse().unwrap()).unwrap());
    }
}

//! The portable packet driver: one unconnected UDP socket bound to the GID's address
//! and the RoCEv2 port, batched with `recvmmsg`/`sendmmsg`.
//!
//! Why unconnected, with `IP_PMTUDISC_DO`: the ICRC covers the IPv4 identification.
//! Linux gives datagrams of an unconnected socket with DF set the identification 0; a
//! connected socket gets a per-socket counter that the sender cannot predict, and rxe
//! silently drops every such packet (see `docs/FINDINGS.md`).
//! `IP_PKTINFO`/`IPV6_RECVPKTINFO` tell the destination address (which selects the
//! namespace); `IP_RECVTOS`/`IPV6_RECVTCLASS` the ECN bits.
#![allow(unsafe_code)]

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::gso::{self, split_gro, IcrcFixer, OutMessage, Spent, UDP_GRO, UDP_SEGMENT};
use crate::engine::{DatagramMeta, Ecn, LentDatagram};

/// Largest UDP payload the driver receives: a 4096-byte MTU packet with every header,
/// rounded up. Anything longer is not a valid RoCEv2 packet and arrives truncated.
pub const MAX_DATAGRAM: usize = 4096 + 256;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 32;

/// Receive buffer size with GRO: the largest coalesced UDP payload.
pub const GRO_BUFFER: usize = 65_536;

/// Control-message space per datagram: packet info and TOS/traffic class.
pub(super) const CMSG_SPACE: usize = 128;

/// A received datagram: where it came from and went to, and its UDP payload.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Addresses, source port, ECN.
    pub meta: DatagramMeta,
    /// The UDP payload (cut at [`MAX_DATAGRAM`]; `truncated` says so).
    pub payload: &'a [u8],
    /// The datagram was longer than the receive buffer.
    pub truncated: bool,
}

/// An unconnected, non-blocking UDP socket for RoCEv2 traffic.
#[derive(Debug)]
pub struct UdpDriver {
    socket: Socket,
    local: SocketAddr,
    offloads: Offloads,
    /// One receive buffer per batch slot: [`MAX_DATAGRAM`], or 64 KiB with GRO.
    buffers: Vec<Vec<u8>>,
    /// Per received message: buffer index, meta, length, GRO size, truncated.
    received: Vec<(usize, DatagramMeta, usize, Option<usize>, bool)>,
    fixer: IcrcFixer,
    /// Payloads of sent datagrams, for [`UdpDriver::reclaim`].
    spent: Spent,
}

fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ecn_from_tos(tos: u8) -> Ecn {
    match tos & 0x3 {
        0 => Ecn::NotEct,
        1 => Ecn::Ect1,
        2 => Ecn::Ect0,
        _ => Ecn::Ce,
    }
}

/// The offloads a socket got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Offloads {
    /// `UDP_SEGMENT` works: send runs of datagrams in one call.
    pub gso: bool,
    /// `UDP_GRO` is on: received buffers may hold many datagrams.
    pub gro: bool,
}

/// Opens the RoCEv2 socket every driver uses: unconnected, DF forced (so IPv4 ident 0),
/// destination address and ECN reported with each datagram, non-blocking, bound to
/// `addr`, with GSO/GRO where the kernel has them.
pub(super) fn bind_socket(addr: SocketAddr) -> io::Result<(Socket, SocketAddr, Offloads)> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let fd = socket.as_raw_fd();
    if addr.is_ipv4() {
        set_int_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
    } else {
        socket.set_only_v6(true)?;
        set_int_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?;
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
    }
    socket.set_nonblocking(true)?;
    // Bursts of MTU-sized packets: give the kernel room to queue them.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    // GSO needs no switch: probing the option tells whether the kernel has it.
    let gso = get_int_option(fd, libc::IPPROTO_UDP, UDP_SEGMENT).is_ok();
    let gro = set_int_option(fd, libc::IPPROTO_UDP, UDP_GRO, 1).is_ok();
    socket.bind(&SockAddr::from(addr))?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    Ok((socket, local, Offloads { gso, gro }))
}

fn get_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized as the kernel expects.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the control messages of a received datagram say.
#[derive(Debug, Clone, Copy)]
pub(super) struct Control {
    /// The destination address (selects the namespace).
    pub dst: IpAddr,
    /// ECN bits.
    pub ecn: Ecn,
    /// With GRO: the size of each datagram coalesced into the buffer.
    pub gro_size: Option<usize>,
}

/// Reads the control messages of a received `msghdr` (`msg_control`/`msg_controllen`
/// describe what the kernel wrote); `default_dst` stands in when no packet-info came.
pub(super) fn parse_control(header: &libc::msghdr, default_dst: IpAddr) -> Control {
    let mut dst = default_dst;
    let mut ecn = Ecn::NotEct;
    let mut gro_size = None;
    // SAFETY: `header` describes a control buffer the kernel filled; the CMSG_* macros
    // walk it within `msg_controllen`, and each payload is read unaligned at the type
    // its (level, type) pair guarantees.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                    dst = IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
                (libc::IPPROTO_IP, libc::IP_TOS) => ecn = ecn_from_tos(*data),
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                    dst = IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    let tclass: libc::c_int = std::ptr::read_unaligned(data.cast());
                    ecn = ecn_from_tos(tclass as u8);
                }
                (libc::IPPROTO_UDP, UDP_GRO) => {
                    let size: libc::c_int = std::ptr::read_unaligned(data.cast());
                    gro_size = usize::try_from(size).ok();
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    Control { dst, ecn, gro_size }
}

impl UdpDriver {
    /// Binds `addr` (the GID's address and, normally, port 4791).
    pub fn bind(addr: SocketAddr) -> io::Result<UdpDriver> {
        let (socket, local, offloads) = bind_socket(addr)?;
        let buffer_len = if offloads.gro {
            GRO_BUFFER
        } else {
            MAX_DATAGRAM
        };
        Ok(UdpDriver {
            socket,
            local,
            offloads,
            buffers: vec![vec![0u8; buffer_len]; BATCH],
            received: Vec::with_capacity(BATCH),
            fixer: IcrcFixer::default(),
            spent: Spent::default(),
        })
    }

    /// The bound address: the source address and port of every datagram sent.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket's descriptor, for polling.
    pub fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Receives up to [`BATCH`] datagrams without blocking and hands each to `each`.
    /// Returns how many arrived (0 when none were waiting).
    pub fn recv_batch(&mut self, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [MaybeUninit::zeroed(); BATCH];
        let mut controls = [[0u8; CMSG_SPACE]; BATCH];
        let mut iovecs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::zeroed(); BATCH];
        // SAFETY: mmsghdr is plain data; all-zeroes is a valid (empty) value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i].write(libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: self.buffers[i].len(),
            });
            let h = &mut headers[i].msg_hdr;
            h.msg_name = names[i].as_mut_ptr().cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iovecs[i].as_mut_ptr();
            h.msg_iovlen = 1;
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
        }
        // SAFETY: every header points at a name, an iovec into `self.buffers[i]` and a
        // control buffer, all alive and exclusively borrowed for the duration of the call,
        // with their true sizes; MSG_DONTWAIT keeps the call from blocking.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(err)
            };
        }
        self.received.clear();
        for (i, header) in headers.iter().enumerate().take(n as usize) {
            // SAFETY: the kernel filled `msg_namelen` bytes of a sockaddr_storage.
            let src = unsafe { SockAddr::new(names[i].assume_init(), header.msg_hdr.msg_namelen) }
                .as_socket();
            let Some(src) = src else { continue };
            let control = parse_control(&header.msg_hdr, self.local.ip());
            let meta = DatagramMeta {
                src: src.ip(),
                dst: control.dst,
                src_port: src.port(),
                ecn: control.ecn,
                ipv4_ident: None,
            };
            let len = (header.msg_len as usize).min(self.buffers[i].len());
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.received
                .push((i, meta, len, control.gro_size, truncated));
        }
        let mut count = 0;
        for &(i, meta, len, gro_size, truncated) in &self.received {
            for payload in split_gro(&self.buffers[i][..len], gro_size) {
                count += 1;
                each(Received {
                    meta,
                    payload,
                    truncated,
                });
            }
        }
        Ok(count)
    }

    /// Blocks until a datagram may be read or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        let mut fds = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.map_or(-1, |t| {
            t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
        });
        // SAFETY: one valid pollfd, alive for the call.
        let rc = unsafe { libc::poll(&mut fds, 1, millis) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Sends datagrams (drained from `datagrams`) to port 4791 of their destinations,
    /// runs of equal-sized ones to the same peer as one GSO send. Returns how many the
    /// kernel took. What it did not take (socket buffer full) is left in `datagrams`,
    /// in order, for the caller to retry or drop — RoCE recovers lost packets, so a
    /// full buffer is never an error.
    pub fn send_batch(&mut self, datagrams: &mut Vec<LentDatagram<'_>>) -> io::Result<usize> {
        let messages = gso::messages(datagrams, self.offloads.gso, &mut self.fixer);
        Ok(send_now(
            self.socket.as_raw_fd(),
            messages,
            &mut self.spent,
            datagrams,
        ))
    }

    /// Hands the payloads of sent datagrams to `each` (the engine reuses them).
    pub fn reclaim(&mut self, each: impl FnMut(Vec<u8>)) {
        self.spent.reclaim(each);
    }
}

/// Sends `messages` with `sendmmsg`, without waiting: the kernel has copied whatever it
/// took when this returns. Keeps the payloads of what went in `spent` and gives back the
/// datagrams of what did not (a full socket buffer) to `unsent`, in order; returns the
/// number of datagrams sent. Boxed messages: each header points into its own message.
#[allow(clippy::vec_box)]
pub(super) fn send_now<'r>(
    socket: RawFd,
    messages: Vec<Box<OutMessage<'r>>>,
    spent: &mut Spent,
    unsent: &mut Vec<LentDatagram<'r>>,
) -> usize {
    let mut sent = 0;
    let mut next = 0;
    while next < messages.len() {
        let chunk = &messages[next..(next + BATCH).min(messages.len())];
        let mut headers: Vec<libc::mmsghdr> = chunk
            .iter()
            .map(|m| libc::mmsghdr {
                msg_hdr: *m.header(),
                msg_len: 0,
            })
            .collect();
        // SAFETY: each header points into its boxed message, alive until after the call;
        // the kernel only reads them (`*mut` is the C signature, nothing is written).
        let n = unsafe {
            libc::sendmmsg(
                socket,
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            // A datagram the kernel refuses (unreachable peer, oversized): drop it,
            // as a lossy network would, and go on with the rest.
            tracing::warn!(error = %err, peer = ?chunk[0].header().msg_name, "send failed; dropping");
            next += 1;
            continue;
        }
        let taken = n as usize;
        sent += chunk[..taken].iter().map(|m| m.len()).sum::<usize>();
        next += taken;
        if taken < chunk.len() {
            break;
        }
    }
    // Keep the payloads of what went (the kernel has copied them); give back what the
    // kernel did not take, in order.
    for (i, message) in messages.into_iter().enumerate() {
        if i < next {
            spent.keep(message.into_payloads());
        } else {
            unsent.extend(message.into_datagrams());
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Datagram;
    use ferroce_wire::icrc::{self, Envelope};
    use ferroce_wire::ident::IdentSolver;
    use std::time::Duration;

    fn wait_recv(driver: &mut UdpDriver) -> Vec<(DatagramMeta, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..200 {
            driver
                .recv_batch(|r| got.push((r.meta, r.payload.to_vec())))
                .unwrap();
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// The premise of the whole IPv4 send path: an unconnected socket with DF forced gets
    /// IP identification 0 from the kernel, so an ICRC computed for ident 0 is right.
    #[test]
    fn loopback_datagram_has_ident_zero_and_keeps_meta() {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:0".parse().unwrap();
        let tx = UdpDriver::bind(a).unwrap();
        let mut rx = UdpDriver::bind(b).unwrap();
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (a.ip(), b.ip()) else {
            unreachable!()
        };
        let mut payload = vec![0u8; 64];
        payload[0] = 0x04; // RC Send Only
        let mut env = Envelope::ipv4(src, dst, 0, tx.local_addr().port());
        env.dst_port = rx.local_addr().port();
        icrc::fill(&env, &mut payload).unwrap();
        // Port 4791 is where send_batch aims; point it at rx's ephemeral port instead by
        // sending through the socket directly.
        tx.socket
            .send_to(&payload, &SockAddr::from(rx.local_addr()))
            .unwrap();
        let got = wait_recv(&mut rx);
        assert_eq!(got.len(), 1);
        let (meta, bytes) = &got[0];
        assert_eq!(meta.src, IpAddr::V4(src));
        assert_eq!(meta.dst, IpAddr::V4(dst));
        assert_eq!(meta.src_port, tx.local_addr().port());
        assert_eq!(
            icrc::verify(&env, bytes),
            Ok(true),
            "kernel did not use IP ID 0"
        );
        let solver = IdentSolver::new(bytes.len()).unwrap();
        let found = solver
            .recover(src, dst, meta.src_port, env.dst_port, bytes)
            .unwrap()
            .unwrap();
        assert_eq!((found.ident, found.dont_frag), (0, true));
    }

    #[test]
    fn batch_send_reaches_port_4791() {
        // Two addresses on loopback, each with its own RoCEv2 port, as two hosts would.
        let Ok(mut rx) = UdpDriver::bind("127.0.0.3:4791".parse().unwrap()) else {
            eprintln!("port 4791 on 127.0.0.3 busy; skipping");
            return;
        };
        let mut tx = UdpDriver::bind("127.0.0.4:0".parse().unwrap()).unwrap();
        let meta = DatagramMeta {
            src: "127.0.0.4".parse().unwrap(),
            dst: "127.0.0.3".parse().unwrap(),
            src_port: tx.local_addr().port(),
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        };
        let mut datagrams: Vec<LentDatagram<'_>> = (0..40u8)
            .map(|i| {
                LentDatagram::from(Datagram {
                    meta,
                    payload: vec![i; 32],
                })
            })
            .collect();
        assert_eq!(tx.send_batch(&mut datagrams).unwrap(), 40);
        let mut got = Vec::new();
        for _ in 0..200 {
            rx.recv_batch(|r| got.push(r.payload[0])).unwrap();
            if got.len() == 40 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, (0..40).collect::<Vec<u8>>());
    }
}

//! The real IPv4 header of received datagrams, for [`super::ReceiveIntegrity::FullIcrc`].
//!
//! A UDP socket hides the IPv4 identification and DF flag that the ICRC covers. A raw
//! socket (`AF_INET`, `SOCK_RAW`, `IPPROTO_UDP`, which needs `CAP_NET_RAW`) gets a copy
//! of every UDP datagram to its bound address, IP header included, after the firewall's
//! input hook and just before the UDP socket gets the same packet. A socket filter keeps
//! only those to the RoCE port. The UDP socket stays the driver's: it holds the port
//! (no ICMP port unreachable), and its GRO tells where the segments of a coalesced run
//! end, which the raw copy does not (on loopback a GSO run arrives as one packet).
//!
//! So each datagram the driver hands over is matched with its raw copy: the raw
//! packets wait in arrival order, and the first from the same source whose bytes at the
//! current segment start with the datagram's is it. Segment `k` of a run carries the
//! run's identification + `k`, as the kernel numbers GSO segments. Raw packets passed
//! over (their UDP copy was dropped) are discarded; a datagram without a raw copy (the
//! raw socket's buffer overflowed) has no header and is dropped.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use ferroce_wire::ident::Recovered;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The largest IPv4 packet: a whole GSO run.
const MAX_PACKET: usize = 65_535;
/// Bytes of raw packets kept waiting for their UDP copy at most; the oldest go first.
const MAX_QUEUED: usize = 8 << 20;
/// Payload buffers kept for reuse at most.
const MAX_SPARE: usize = 64;

/// One raw packet: its header fields and the part of its UDP payload not yet matched.
#[derive(Debug)]
struct RawPacket {
    src: Ipv4Addr,
    src_port: u16,
    ident: u16,
    dont_frag: bool,
    payload: Vec<u8>,
    /// Bytes of `payload` matched so far, and how many segments they were.
    matched: usize,
    segments: u16,
}

/// A raw socket beside a driver's UDP socket: the IPv4 header of each datagram.
#[derive(Debug)]
pub(super) struct IpHeaderTap {
    socket: Socket,
    local: SocketAddrV4,
    packets: VecDeque<RawPacket>,
    queued: usize,
    scratch: Vec<u8>,
    /// Payload buffers of matched packets, reused.
    spare: Vec<Vec<u8>>,
    /// Raw packets discarded without a match (their UDP copy was dropped, or they are
    /// not for the driver: IP options, another address).
    pub unmatched: u64,
}

/// Attaches a classic BPF program that keeps UDP datagrams to `port` (the raw socket
/// sees the packet from its IPv4 header on).
fn attach_port_filter(socket: &Socket, port: u16) -> io::Result<()> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let program = [
        // X = length of the IPv4 header.
        op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0),
        // A = UDP destination port.
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 2),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(port),
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` and the program it points to outlive the call; the kernel copies
    // the program and only reads `fprog`, whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `bytes` as a receive buffer.
fn as_uninit(bytes: &mut [u8]) -> &mut [mem::MaybeUninit<u8>] {
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and the bytes are already
    // initialised, so nothing uninitialised is ever read through the result.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len()) }
}

impl IpHeaderTap {
    /// Opens the raw socket for datagrams to `local` (address and UDP port). Without
    /// `CAP_NET_RAW` this fails with a message that says so.
    pub fn open(local: SocketAddrV4) -> io::Result<IpHeaderTap> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "full-ICRC receive on {local} needs a raw socket, which needs \
                     CAP_NET_RAW: {e}"
                ),
            )
        })?;
        attach_port_filter(&socket, local.port())?;
        socket.bind(&SockAddr::from(SocketAddrV4::new(*local.ip(), 0)))?;
        socket.set_nonblocking(true)?;
        let _ = socket.set_recv_buffer_size(8 << 20);
        let mut tap = IpHeaderTap {
            socket,
            local,
            packets: VecDeque::new(),
            queued: 0,
            scratch: vec![0; MAX_PACKET],
            spare: Vec::new(),
            unmatched: 0,
        };
        // Whatever came before the filter and the bind is not ours.
        while tap.socket.recv(as_uninit(&mut tap.scratch)).is_ok() {}
        Ok(tap)
    }

    /// The IPv4 identification and DF flag with which the datagram `udp_payload` from
    /// `src` came, read from its raw copy; `None` when there is none.
    pub fn header_of(
        &mut self,
        src: Ipv4Addr,
        src_port: u16,
        udp_payload: &[u8],
    ) -> Option<Recovered> {
        loop {
            let found = self.packets.iter().position(|p| {
                p.src == src
                    && p.src_port == src_port
                    && p.payload[p.matched..].starts_with(udp_payload)
            });
            if let Some(index) = found {
                for _ in 0..index {
                    self.unmatched += 1;
                    self.pop_front();
                }
                let packet = self.packets.front_mut()?;
                let header = Recovered {
                    ident: packet.ident.wrapping_add(packet.segments),
                    dont_frag: packet.dont_frag,
                };
                packet.matched += udp_payload.len();
                packet.segments = packet.segments.wrapping_add(1);
                if packet.matched == packet.payload.len() {
                    self.pop_front();
                }
                return Some(header);
            }
            if !self.read_one() {
                return None;
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(packet) = self.packets.pop_front() {
            self.queued -= packet.payload.len();
            if self.spare.len() < MAX_SPARE {
                self.spare.push(packet.payload);
            }
        }
    }

    /// Reads one raw packet into the queue; false when none is waiting.
    fn read_one(&mut self) -> bool {
        loop {
            let len = match self.socket.recv(as_uninit(&mut self.scratch)) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            if let Some(packet) = self.parse(len) {
                while self.queued + packet.payload.len() > MAX_QUEUED && !self.packets.is_empty() {
                    self.unmatched += 1;
                    self.pop_front();
                }
                self.queued += packet.payload.len();
                self.packets.push_back(packet);
                return true;
            }
            // Not a packet a driver will hand over (options, a fragment, another
            // address): read on.
            self.unmatched += 1;
        }
    }

    /// The raw packet of `len` bytes in `scratch`, if it is a whole IPv4/UDP datagram
    /// without options to our address and port.
    fn parse(&mut self, len: usize) -> Option<RawPacket> {
        let bytes = self.scratch.get(..len)?;
        let ip: &[u8; 20] = bytes.first_chunk()?;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(len);
        let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
        let fragment = flags_frag & 0x3fff != 0;
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if ip[0] != 0x45 || ip[9] != 17 || fragment || dst != *self.local.ip() {
            return None;
        }
        let udp: &[u8; 8] = bytes.get(20..)?.first_chunk()?;
        if u16::from_be_bytes([udp[2], udp[3]]) != self.local.port() {
            return None;
        }
        let body = bytes.get(28..total)?;
        let mut payload = self.spare.pop().unwrap_or_default();
        payload.clear();
        payload.extend_from_slice(body);
        Some(RawPacket {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            ident: u16::from_be_bytes([ip[4], ip[5]]),
            dont_frag: flags_frag & ferroce_wire::icrc::IPV4_DONT_FRAG != 0,
            payload,
            matched: 0,
            segments: 0,
        })
    }
}

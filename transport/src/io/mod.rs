//! Packet I/O: the only place in `ferroce-transport` that touches sockets (and so the
//! only place `unsafe` is allowed). Two drivers over the same socket setup:
//! [`UringDriver`] (io_uring, the default) and [`UdpDriver`] (`recvmmsg`/`sendmmsg`, the
//! fallback where io_uring is missing or refused). [`Driver::bind`] picks one at run time.

mod core;
mod gso;
pub mod link;
mod post;
mod raw;
mod rings;
mod round;
pub mod socket;
mod solvers;
pub mod thread;
pub mod uring;
pub mod waker;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use self::core::{Core, LocalCommand, ThreadCounters};
pub use socket::{Received, UdpDriver};
pub use solvers::SolverLimits;
pub use uring::UringDriver;

use crate::engine::LentDatagram;

/// Which driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// io_uring when the kernel allows it, else the socket driver.
    #[default]
    Auto,
    /// io_uring only (fail if unavailable).
    Uring,
    /// `recvmmsg`/`sendmmsg`.
    Socket,
}

/// How the ICRC of a received IPv4 datagram is checked. (IPv6 datagrams are always
/// checked in full: the UDP socket hides no field the ICRC covers there.)
///
/// The ICRC covers the IPv4 identification and DF flag, which a UDP socket does not
/// show. A damaged datagram slips through with probability 2^-32 when the ICRC is
/// checked with the real header, 2^-16 when the identification has to be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveIntegrity {
    /// The UDP socket alone. A datagram whose ICRC matches with identification 0 and DF
    /// (ferroce's, most stacks') is accepted; any other is accepted when some
    /// identification (with DF) makes it match, found by an [`ferroce_wire::ident`]
    /// solver within these limits. A damaged datagram passes with probability 2^-16.
    Recovered(SolverLimits),
    /// A raw socket beside each IPv4 UDP socket shows every datagram's real IP header,
    /// and the full ICRC is checked against it: a damaged datagram passes with
    /// probability 2^-32. Needs `CAP_NET_RAW` (opening a device without it fails), and
    /// costs a second copy of every datagram out of the kernel.
    FullIcrc,
}

impl Default for ReceiveIntegrity {
    fn default() -> ReceiveIntegrity {
        ReceiveIntegrity::Recovered(SolverLimits::default())
    }
}

/// A bound packet driver of either kind. (One per device, so the size difference of
/// the variants does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Driver {
    /// io_uring.
    Uring(UringDriver),
    /// Plain socket calls.
    Socket(UdpDriver),
}

impl Driver {
    /// Binds a driver of `kind` to `addr`. With [`DriverKind::Auto`], an io_uring that
    /// cannot be set up (ENOSYS, EPERM from `io_uring_disabled` or seccomp, too old a
    /// kernel) falls back to the socket driver.
    pub fn bind(addr: SocketAddr, kind: DriverKind) -> io::Result<Driver> {
        match kind {
            DriverKind::Uring => UringDriver::bind(addr).map(Driver::Uring),
            DriverKind::Socket => UdpDriver::bind(addr).map(Driver::Socket),
            DriverKind::Auto => match UringDriver::bind(addr) {
                Ok(d) => Ok(Driver::Uring(d)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring unavailable; using the socket driver");
                    UdpDriver::bind(addr).map(Driver::Socket)
                }
            },
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> DriverKind {
        match self {
            Driver::Uring(_) => DriverKind::Uring,
            Driver::Socket(_) => DriverKind::Socket,
        }
    }

    /// The bound address: source of every datagram sent.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Driver::Uring(d) => d.local_addr(),
            Driver::Socket(d) => d.local_addr(),
        }
    }

    /// The calling thread takes over receiving at once (io_uring: see
    /// [`UringDriver::claim_receive`]; nothing to do for sockets).
    pub fn claim_receive(&mut self) {
        if let Driver::Uring(d) = self {
            d.claim_receive();
        }
    }

    /// Hands every datagram waiting to `each` without blocking; returns how many.
    pub fn recv_batch(&mut self, each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        match self {
            Driver::Uring(d) => d.recv_batch(each),
            Driver::Socket(d) => d.recv_batch(each),
        }
    }

    /// Sends datagrams (drained from `datagrams`) to port 4791 of their destinations;
    /// returns how many went. Those the kernel could not take yet stay in `datagrams`.
    /// Lent bytes are copied by the kernel before this returns.
    pub fn send_batch(&mut self, datagrams: &mut Vec<LentDatagram<'_>>) -> io::Result<usize> {
        match self {
            Driver::Uring(d) => d.send_batch(datagrams),
            Driver::Socket(d) => d.send_batch(datagrams),
        }
    }

    /// Hands the payloads of datagrams the kernel has taken to `each`, so the engine
    /// builds later packets in them ([`crate::engine::Engine::recycle`]).
    pub fn reclaim(&mut self, each: impl FnMut(Vec<u8>)) {
        match self {
            Driver::Uring(d) => d.reclaim(each),
            Driver::Socket(d) => d.reclaim(each),
        }
    }

    /// A descriptor that polls readable when [`Driver::recv_batch`] may have work (the
    /// socket, or the ring whose completion queue the multishot receive fills), so one
    /// thread can wait on several drivers and a doorbell at once.
    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        match self {
            Driver::Uring(d) => d.ring_fd(),
            Driver::Socket(d) => d.as_raw_fd(),
        }
    }

    /// For an io_uring driver, a way to sleep in its ring that also wakes when `watch`
    /// (the engine thread's doorbell) becomes readable; call it from the thread that
    /// will sleep. `None` for the socket driver, or if the watch cannot be armed.
    pub fn ring_sleeper(&mut self, watch: std::os::fd::RawFd) -> Option<uring::RingSleeper> {
        match self {
            Driver::Uring(d) => match d.watch(watch) {
                Ok(()) => Some(d.sleeper()),
                Err(error) => {
                    tracing::debug!(%error, "cannot watch the doorbell in the ring");
                    None
                }
            },
            Driver::Socket(_) => None,
        }
    }

    /// Blocks until something may be received or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.wait(timeout),
            Driver::Socket(d) => d.wait(timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Datagram, DatagramMeta, Ecn};
    use std::net::IpAddr;

    fn send_burst(from: &mut Driver, to: &mut Driver) {
        let (from_addr, to_addr) = (from.local_addr(), to.local_addr());
        let meta = DatagramMeta {
            src: from_addr.ip(),
            dst: to_addr.ip(),
            src_port: 4791,
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        };
        let mut burst: Vec<LentDatagram<'_>> = (0..100u8)
            .map(|i| {
                LentDatagram::from(Datagram {
                    meta,
                    payload: vec![i; 1000],
                })
            })
            .collect();
        assert_eq!(from.send_batch(&mut burst).unwrap(), 100);
        let mut got = Vec::new();
        for _ in 0..100 {
            to.wait(Some(Duration::from_millis(20))).unwrap();
            to.recv_batch(|r| {
                assert_eq!(r.meta.src, from_addr.ip());
                assert_eq!(r.meta.dst, to_addr.ip());
                assert_eq!(r.meta.src_port, 4791);
                assert_eq!(r.payload.len(), 1000);
                got.push(r.payload[0]);
            })
            .unwrap();
            // Retire the sender's send completions too.
            from.recv_batch(|_| {}).unwrap();
            if got.len() == 100 {
                break;
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<u8>>());
    }

    /// Each driver kind sends a burst to the other and receives one back, on loopback
    /// addresses of their own at port 4791, as two hosts would.
    #[test]
    fn both_drivers_exchange_bursts() {
        let (Ok(mut a), Ok(mut b)) = (
            Driver::bind("127.0.0.5:4791".parse().unwrap(), DriverKind::Auto),
            Driver::bind("127.0.0.6:4791".parse().unwrap(), DriverKind::Socket),
        ) else {
            eprintln!("port 4791 on 127.0.0.5/6 busy; skipping");
            return;
        };
        send_burst(&mut a, &mut b);
        send_burst(&mut b, &mut a);
    }

    /// What the engine hands over: RC Send Only datagrams with the ICRC for IP ID 0.
    fn roce_datagrams(
        from: SocketAddr,
        to: SocketAddr,
        sizes: &[usize],
    ) -> Vec<LentDatagram<'static>> {
        use ferroce_wire::icrc::{self, Envelope};
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.ip(), to.ip()) else {
            unreachable!()
        };
        let envelope = Envelope::ipv4(src, dst, 0, from.port());
        let meta = DatagramMeta {
            src: from.ip(),
            dst: to.ip(),
            src_port: from.port(),
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        };
        sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut payload = vec![i as u8; len];
                payload[..12]
                    .copy_from_slice(&[0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, i as u8]);
                icrc::fill(&envelope, &mut payload).unwrap();
                LentDatagram::from(Datagram { meta, payload })
            })
            .collect()
    }

    /// A GSO run of 10 full segments and a short one, through each driver kind: every
    /// segment arrives intact, with the ICRC of the IP ID the kernel numbers it with.
    #[test]
    fn gso_runs_carry_per_segment_icrcs() {
        use ferroce_wire::ident::IdentSolver;
        for (kind, a, b) in [
            (DriverKind::Socket, "127.0.0.10:4791", "127.0.0.11:4791"),
            (DriverKind::Uring, "127.0.0.12:4791", "127.0.0.13:4791"),
        ] {
            let (Ok(mut tx), Ok(mut rx)) = (
                Driver::bind(a.parse().unwrap(), kind),
                Driver::bind(b.parse().unwrap(), kind),
            ) else {
                eprintln!("{a} or {b} busy; skipping");
                continue;
            };
            let (from, to) = (tx.local_addr(), rx.local_addr());
            let mut sizes = vec![1052; 10];
            sizes.push(300);
            let mut batch = roce_datagrams(from, to, &sizes);
            assert_eq!(tx.send_batch(&mut batch).unwrap(), 11);
            let mut got: Vec<Vec<u8>> = Vec::new();
            for _ in 0..100 {
                rx.wait(Some(Duration::from_millis(20))).unwrap();
                rx.recv_batch(|r| got.push(r.payload.to_vec())).unwrap();
                tx.recv_batch(|_| {}).unwrap();
                if got.len() == 11 {
                    break;
                }
            }
            assert_eq!(got.len(), 11, "{kind:?}");
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.ip(), to.ip()) else {
                unreachable!()
            };
            for (i, payload) in got.iter().enumerate() {
                assert_eq!(payload.len(), sizes[i]);
                assert_eq!(payload[11], i as u8, "{kind:?}: in order");
                let solver = IdentSolver::new(payload.len()).unwrap();
                let found = solver
                    .recover(src, dst, from.port(), 4791, payload)
                    .unwrap();
                let found = found.unwrap_or_else(|| panic!("{kind:?}: segment {i} damaged"));
                // The short last segment is segment 10 of the run.
                assert_eq!((found.ident, found.dont_frag), (i as u16, true), "{kind:?}");
            }
        }
    }

    #[test]
    fn auto_picks_uring_here() {
        let d = Driver::bind("127.0.0.7:0".parse().unwrap(), DriverKind::Auto).unwrap();
        // This machine's kernel allows io_uring (kernel.io_uring_disabled = 0).
        let disabled =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
        if disabled.trim() == "0" {
            assert_eq!(d.kind(), DriverKind::Uring);
        }
    }
}

//! Packet I/O: the only place in `ferroce-transport` that touches sockets (and so the
//! only place `unsafe` is allowed). Two drivers over the same socket setup:
//! [`UringDriver`] (io_uring, the default) and [`UdpDriver`] (`recvmmsg`/`sendmmsg`, the
//! fallback where io_uring is missing or refused). [`Driver::bind`] picks one at run time.

pub mod socket;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use socket::{Received, UdpDriver};
pub use uring::UringDriver;

use crate::engine::Datagram;

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

    /// Hands every datagram waiting to `each` without blocking; returns how many.
    pub fn recv_batch(&mut self, each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        match self {
            Driver::Uring(d) => d.recv_batch(each),
            Driver::Socket(d) => d.recv_batch(each),
        }
    }

    /// Sends datagrams to port 4791 of their destinations; returns how many went.
    pub fn send_batch(&mut self, datagrams: &[Datagram]) -> io::Result<usize> {
        match self {
            Driver::Uring(d) => d.send_batch(datagrams),
            Driver::Socket(d) => d.send_batch(datagrams),
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
    use crate::engine::{DatagramMeta, Ecn};

    fn send_burst(from: &mut Driver, to: &mut Driver) {
        let (from_addr, to_addr) = (from.local_addr(), to.local_addr());
        let meta = DatagramMeta {
            src: from_addr.ip(),
            dst: to_addr.ip(),
            src_port: 4791,
            ecn: Ecn::NotEct,
        };
        let burst: Vec<Datagram> = (0..100u8)
            .map(|i| Datagram {
                meta,
                payload: vec![i; 1000],
            })
            .collect();
        assert_eq!(from.send_batch(&burst).unwrap(), 100);
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

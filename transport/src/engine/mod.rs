//! The sans-IO RoCEv2 engine: queue pairs, memory, completions and namespaces as a
//! deterministic state machine. It never reads a clock or a socket: time comes in as a
//! [`Time`] argument, datagrams come in through `handle_datagram` and go out through
//! `poll_transmit`.

pub mod sim;

use std::fmt;
use std::net::IpAddr;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: nanoseconds since an epoch the caller chose (the engine thread's
/// start, or zero on a simulator's virtual clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// A time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

/// The two ECN bits of the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ecn {
    /// Not ECN-capable transport.
    #[default]
    NotEct,
    /// ECT(1).
    Ect1,
    /// ECT(0).
    Ect0,
    /// Congestion experienced.
    Ce,
}

/// Where a datagram came from or goes to, as the IP/UDP layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatagramMeta {
    /// IP source address.
    pub src: IpAddr,
    /// IP destination address (selects the namespace on receive).
    pub dst: IpAddr,
    /// UDP source port (flow entropy; any value is accepted on receive).
    pub src_port: u16,
    /// ECN bits.
    pub ecn: Ecn,
}

/// A UDP payload with where it goes: what the engine hands to I/O (and the simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Addresses, source port and ECN.
    pub meta: DatagramMeta,
    /// The UDP payload: BTH to ICRC.
    pub payload: Vec<u8>,
}

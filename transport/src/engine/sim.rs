//! Deterministic network simulator: N nodes on a virtual clock, joined by links with
//! seeded loss, reordering, duplication, corruption, delay and bandwidth.

use super::{Datagram, DatagramMeta, Time};

/// Anything the simulator can drive: the engine, or a toy node in the simulator's own
/// tests. The same shape as the engine's sans-IO interface.
pub trait Node {
    /// A datagram arrived at `now`.
    fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]);
    /// The next datagram to send, if any.
    fn poll_transmit(&mut self, now: Time) -> Option<Datagram>;
    /// When the node next wants `handle_timeout`, if ever.
    fn poll_timeout(&self) -> Option<Time>;
    /// A timer the node asked for has come due.
    fn handle_timeout(&mut self, now: Time);
}

//! Packet I/O: the only place in `ferroce-transport` that touches sockets (and so the
//! only place `unsafe` is allowed).

pub mod socket;

pub use socket::{Received, UdpDriver};

//! ferroce's RoCEv2 transport: the sans-IO engine and the packet I/O that drives it.
#![warn(missing_docs)]

pub mod control;
pub mod engine;
pub mod io;

pub use ferroce_wire as wire;

//! ferroce's RoCEv2 transport: the sans-IO engine and the packet I/O that drives it.
pub use ferroce_wire as wire;

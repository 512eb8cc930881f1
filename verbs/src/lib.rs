//! ferroce: software RoCEv2 RDMA with an ibverbs-shaped safe API.
pub use ferroce_transport as transport;
pub use ferroce_wire as wire;

pub mod capture;
pub mod cli;
pub mod oob;

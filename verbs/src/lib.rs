//! ferroce: software RoCEv2 RDMA with an ibverbs-shaped safe API.
//!
//! A [`Device`] is an engine thread speaking RoCEv2 over UDP port 4791 on its GID
//! addresses; from it come [`ProtectionDomain`]s, [`MemoryRegion`]s (whose bytes ferroce
//! owns: see [`mr`] for why that is sound), [`CompletionQueue`]s, [`QueuePair`]s (RC, UC,
//! UD) and [`SharedReceiveQueue`]s. Names follow ibverbs. Handles are `Send + Sync`,
//! dropping one releases its resource, and misuse is an [`Error`], never undefined
//! behaviour. Work completions carry a [`WcStatus`]. The one `unsafe` call is
//! [`ProtectionDomain::reg_mr_raw`], which registers the application's own memory as
//! `ibv_reg_mr` does, under a documented contract;
//! [`ProtectionDomain::reg_mr_buffer`] is its safe form for a `Vec` handed over and
//! given back.
//!
//! The numbers the wire carries come from [`wire`] (the `ferroce-wire` crate): a QP's
//! number is a [`wire::Qpn`], a starting PSN a [`wire::Psn`] (both 24 bits), a remote
//! key a [`wire::Rkey`]; each is built with `new` and read with `value`.
//!
//! Two devices on loopback addresses (no root, no configuration), two connected RC QPs,
//! an RDMA WRITE and a SEND:
//!
//! ```
//! use std::time::Duration;
//! use ferroce::{
//!     AccessFlags, Device, DeviceConfig, PathMtu, QpInitAttributes, QpType, RecvRequest,
//!     RemoteEndpoint, SendRequest, WcOpcode, WcStatus,
//! };
//! use ferroce::wire::Psn;
//!
//! # fn main() -> Result<(), ferroce::Error> {
//! let a = Device::open(DeviceConfig::loopback())?; // 127.0.0.1:4791
//! let b = Device::open(DeviceConfig::with_address("127.0.0.2".parse().unwrap()))?;
//!
//! let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
//! let (pd_a, pd_b) = (a.alloc_pd()?, b.alloc_pd()?);
//! let (mr_a, mr_b) = (pd_a.reg_mr(4096, access)?, pd_b.reg_mr(4096, access)?);
//! let (cq_a, cq_b) = (a.create_cq(64, None)?, b.create_cq(64, None)?);
//! let qp_a = pd_a.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_a))?;
//! let qp_b = pd_b.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_b))?;
//!
//! // What an out-of-band exchange would tell each side.
//! let end_a = RemoteEndpoint { address: a.query_gid(0)?, qpn: qp_a.qp_num(), psn: Psn::new(100) };
//! let end_b = RemoteEndpoint { address: b.query_gid(0)?, qpn: qp_b.qp_num(), psn: Psn::new(200) };
//! qp_a.connect(end_b, end_a.psn, PathMtu::Mtu1024, access)?;
//! qp_b.connect(end_a, end_b.psn, PathMtu::Mtu1024, access)?;
//!
//! // RDMA WRITE 3000 bytes from A's region into B's.
//! let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
//! mr_a.write(0, &data)?;
//! qp_a.post_send(SendRequest::write(1, mr_b.addr(), mr_b.rkey()).sge(&mr_a, 0, 3000))?;
//! let wc = cq_a.poll_wait(1, Duration::from_secs(5))?; // Err on a timeout
//! assert_eq!((wc[0].wr_id, wc[0].status, wc[0].opcode), (1, WcStatus::Success, WcOpcode::RdmaWrite));
//! assert_eq!(mr_b.to_vec(0, 3000)?, data);
//!
//! // SEND "hello" into a receive B posted at offset 3000.
//! qp_b.post_recv(RecvRequest::new(7).sge(&mr_b, 3000, 1000))?;
//! qp_a.post_send(SendRequest::send(2).inline(b"hello"))?;
//! let wc = cq_b.poll_wait(1, Duration::from_secs(5))?;
//! assert_eq!((wc[0].wr_id, wc[0].status, wc[0].byte_len), (7, WcStatus::Success, 5));
//! assert_eq!(mr_b.to_vec(3000, 5)?, b"hello");
//! assert_eq!(cq_a.poll_wait(1, Duration::from_secs(5))?[0].wr_id, 2);
//! # Ok(())
//! # }
//! ```
pub use ferroce_transport as transport;
#[doc(inline)]
pub use ferroce_wire as wire;

mod backend;
pub mod cq;
pub mod device;
pub mod error;
pub mod event;
pub mod mr;
pub mod pd;
pub mod qp;
pub mod srq;
pub mod wr;

pub use cq::{CompletionChannel, CompletionQueue, PollTimeout};
pub use device::{Device, DeviceConfig, PortAttributes, PortState};
pub use error::{Error, PostListError, Result, VerbsError};
pub use event::AsyncEvent;
pub use mr::MemoryRegion;
pub use pd::ProtectionDomain;
pub use qp::{QpInitAttributes, QueuePair, RemoteEndpoint};
pub use srq::SharedReceiveQueue;
pub use transport::engine::{
    AccessFlags, AddressVector, Counters, DeviceAttributes, DeviceLimits, PathMtu, QpAttr, QpCap,
    QpInfo, QpState, QpType, Sge, SrqAttr, WcOpcode, WcStatus, WorkCompletion,
};
pub use transport::io::{DriverKind, ReceiveIntegrity, SolverLimits};
pub use wr::{RecvRequest, SendRequest};

//! Protection domains.

use std::sync::Arc;

use ferroce_transport::control::Command;
use ferroce_transport::engine::{self, AccessFlags};

use crate::device::DeviceInner;
use crate::error::Result;
use crate::mr::MemoryRegion;
use crate::qp::{QpInitAttributes, QueuePair};
use crate::srq::SharedReceiveQueue;

pub(crate) struct PdInner {
    pub(crate) device: Arc<DeviceInner>,
    pub(crate) pd: engine::ProtectionDomain,
}

impl std::fmt::Debug for PdInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("pd", &self.pd.0)
            .finish()
    }
}

impl Drop for PdInner {
    fn drop(&mut self) {
        // Every MR, SRQ and QP of the PD holds it, so it is unused by now.
        let _ = self
            .device
            .execute::<()>(Command::DeallocPd { pd: self.pd });
    }
}

/// A protection domain (`ibv_pd`). Memory regions, QPs and SRQs created from it keep it
/// alive; it is freed when the last of them and this handle are dropped.
#[derive(Debug, Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

impl ProtectionDomain {
    pub(crate) fn alloc(device: Arc<DeviceInner>) -> Result<ProtectionDomain> {
        let pd = device.execute(Command::AllocPd)?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner { device, pd }),
        })
    }

    /// Registers a zeroed memory region of `length` bytes, owned by ferroce
    /// (`ibv_reg_mr` on memory the device allocates). Engine-owned regions get synthetic
    /// page-aligned addresses.
    pub fn reg_mr(&self, length: u64, access: AccessFlags) -> Result<MemoryRegion> {
        MemoryRegion::register(self.inner.clone(), length, access)
    }

    /// Registers `buffer` (its whole length), which the device owns until
    /// [`MemoryRegion::deregister`] gives it back with every byte the device wrote; if
    /// the region is just dropped, or registration fails, the buffer is dropped. The
    /// region's address is the buffer's, as for the application's own memory. Meanwhile
    /// [`MemoryRegion::write`] and [`MemoryRegion::read`] reach the bytes. The
    /// application's memory it keeps a pointer to is
    /// [`reg_mr_raw`](ProtectionDomain::reg_mr_raw) (`unsafe`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferroce::{AccessFlags, Device, DeviceConfig, PathMtu, QpInitAttributes, QpType,
    ///     RemoteEndpoint, SendRequest, WcStatus};
    /// use ferroce::wire::Psn;
    ///
    /// # fn main() -> Result<(), ferroce::Error> {
    /// let a = Device::open(DeviceConfig::with_address("127.79.0.3".parse().unwrap()))?;
    /// let b = Device::open(DeviceConfig::with_address("127.79.0.4".parse().unwrap()))?;
    /// let (pd_a, pd_b) = (a.alloc_pd()?, b.alloc_pd()?);
    /// let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    /// # let (cq_a, cq_b) = (a.create_cq(16, None)?, b.create_cq(16, None)?);
    /// # let qp_a = pd_a.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_a))?;
    /// # let qp_b = pd_b.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_b))?;
    /// # let end_a = RemoteEndpoint { address: a.query_gid(0)?, qpn: qp_a.qp_num(), psn: Psn::new(1) };
    /// # let end_b = RemoteEndpoint { address: b.query_gid(0)?, qpn: qp_b.qp_num(), psn: Psn::new(2) };
    /// # qp_a.connect(end_b, end_a.psn, PathMtu::Mtu1024, access)?;
    /// # qp_b.connect(end_a, end_b.psn, PathMtu::Mtu1024, access)?;
    /// // Connected RC QPs `qp_a` and `qp_b`, as in the crate example.
    /// let mut buffer = vec![b'.'; 64];
    /// buffer[..4].copy_from_slice(b"note");
    /// let address = buffer.as_ptr() as u64;
    /// let mr_b = pd_b.reg_mr_buffer(buffer, access)?;
    /// assert_eq!(mr_b.addr(), address);
    ///
    /// // A peer writes into it at the application's own address.
    /// qp_a.post_send(SendRequest::write(1, address + 8, mr_b.rkey()).inline(b"from A"))?;
    /// let wc = cq_a.poll_wait(1, Duration::from_secs(5))?;
    /// assert_eq!((wc[0].wr_id, wc[0].status), (1, WcStatus::Success));
    ///
    /// let buffer = mr_b.deregister()?.expect("a handed-over buffer comes back");
    /// assert_eq!(&buffer[..16], b"note....from A..");
    /// # Ok(())
    /// # }
    /// ```
    pub fn reg_mr_buffer(&self, buffer: Vec<u8>, access: AccessFlags) -> Result<MemoryRegion> {
        MemoryRegion::register_buffer(self.inner.clone(), buffer, access)
    }

    /// Creates a queue pair in RESET (`ibv_create_qp`).
    pub fn create_qp(&self, attr: &QpInitAttributes<'_>) -> Result<QueuePair> {
        QueuePair::create(self.inner.clone(), attr)
    }

    /// Creates a shared receive queue (`ibv_create_srq`).
    pub fn create_srq(&self, max_wr: u32, max_sge: u32) -> Result<SharedReceiveQueue> {
        SharedReceiveQueue::create(self.inner.clone(), max_wr, max_sge)
    }
}

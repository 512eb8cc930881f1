//! Protection domains.

use std::sync::Arc;

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
        let pd = self.pd;
        let _ = self
            .device
            .call(move |core, ns| core.engine.dealloc_pd(ns, pd));
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
        let pd = device.call(|core, ns| core.engine.alloc_pd(ns))??;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner { device, pd }),
        })
    }

    /// Registers a zeroed memory region of `length` bytes, owned by ferroce
    /// (`ibv_reg_mr` on memory the device allocates).
    pub fn reg_mr(&self, length: u64, access: AccessFlags) -> Result<MemoryRegion> {
        MemoryRegion::register(self.inner.clone(), length, access)
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

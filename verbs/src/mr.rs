//! Memory regions owned by ferroce.
//!
//! # Soundness
//!
//! The bytes of a region live inside the engine, on the engine thread; nothing else has
//! a pointer to them. The application reaches them only through [`MemoryRegion::write`]
//! and [`MemoryRegion::read`], which copy through the device's work queue: they run on
//! the engine thread between packets, in order with the work requests posted before and
//! after them. So there is no shared mutable memory and no `unsafe` here — the copy is
//! what a DMA engine would do. A read while a transfer into the region is under way
//! returns the bytes as they are at that moment, as on real hardware; read after the
//! completion to see the whole message.

use std::sync::Arc;

use ferroce_transport::engine::{self, AccessFlags, Lkey, Sge};
use ferroce_transport::wire::Rkey;

use crate::error::{Error, Result};
use crate::pd::PdInner;

/// A registered memory region (`ibv_mr`) whose bytes ferroce owns. Deregistered when
/// dropped: every later access with its keys fails.
#[derive(Debug)]
pub struct MemoryRegion {
    pd: Arc<PdInner>,
    mr: engine::MemoryRegion,
}

impl MemoryRegion {
    pub(crate) fn register(
        pd: Arc<PdInner>,
        length: u64,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        let id = pd.pd;
        let mr = pd
            .device
            .call(move |core, ns| core.engine.reg_mr(ns, id, length, access))??;
        Ok(MemoryRegion { pd, mr })
    }

    /// Local key, for SGEs.
    pub fn lkey(&self) -> Lkey {
        self.mr.lkey
    }

    /// Remote key, for peers' RDMA WRITE, READ and atomics.
    pub fn rkey(&self) -> Rkey {
        self.mr.rkey
    }

    /// The address of byte 0 (what peers put in their RETH / AtomicETH).
    pub fn addr(&self) -> u64 {
        self.mr.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.mr.length
    }

    /// True for a zero-length region.
    pub fn is_empty(&self) -> bool {
        self.mr.length == 0
    }

    /// Access flags.
    pub fn access(&self) -> AccessFlags {
        self.mr.access
    }

    /// An SGE for `length` bytes at `offset` (the engine checks the bounds when it
    /// uses it: an SGE outside the region completes with `LocProtErr`).
    pub fn sge(&self, offset: u64, length: u32) -> Sge {
        Sge {
            addr: self.mr.addr.wrapping_add(offset),
            length,
            lkey: self.mr.lkey,
        }
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.mr.length => Ok(()),
            _ => Err(Error::InvalidArgument("range outside the memory region")),
        }
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        let (lkey, addr, data) = (self.mr.lkey, self.mr.addr + offset, data.to_vec());
        self.pd
            .device
            .call(move |core, ns| core.engine.mr_write(ns, lkey, addr, &data))??;
        Ok(())
    }

    /// Copies bytes at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let bytes = self.to_vec(offset, out.len())?;
        out.copy_from_slice(&bytes);
        Ok(())
    }

    /// The `len` bytes at `offset`.
    pub fn to_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check(offset, len)?;
        let (lkey, addr) = (self.mr.lkey, self.mr.addr + offset);
        let bytes = self.pd.device.call(move |core, ns| {
            let mut bytes = vec![0u8; len];
            core.engine
                .mr_read(ns, lkey, addr, &mut bytes)
                .map(|()| bytes)
        })??;
        Ok(bytes)
    }

    /// A host-order `u64` at `offset` (where atomics put their original value).
    pub fn read_u64(&self, offset: u64) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.read(offset, &mut bytes)?;
        Ok(u64::from_ne_bytes(bytes))
    }

    /// Writes a host-order `u64` at `offset` (the 8 bytes atomics operate on).
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<()> {
        self.write(offset, &value.to_ne_bytes())
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        let lkey = self.mr.lkey;
        let _ = self
            .pd
            .device
            .call(move |core, ns| core.engine.dereg_mr(ns, lkey));
    }
}

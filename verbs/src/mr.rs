//! Memory regions: owned by ferroce, handed over by the application, or the
//! application's own memory.
//!
//! # Soundness
//!
//! [`ProtectionDomain::reg_mr`] and [`ProtectionDomain::reg_mr_buffer`] put the bytes
//! inside the engine, on the engine thread; nothing else has a pointer to them while
//! they are registered. The application reaches them only through
//! [`MemoryRegion::write`] and [`MemoryRegion::read`], which copy through the device's
//! work queue: they run between packets, in order with the work requests posted before
//! and after them. So there is no shared mutable memory and no `unsafe` there — the
//! copy is what a DMA engine would do. A read while a transfer into the region is under
//! way returns the bytes as they are at that moment, as on real hardware; read after
//! the completion to see the whole message. A buffer handed over comes back from
//! [`MemoryRegion::deregister`].
//!
//! [`ProtectionDomain::reg_mr_raw`] registers the application's own memory, as
//! `ibv_reg_mr(pd, addr, length, access)` does: the engine copies into and out of it
//! through raw pointers and `AtomicU64` (it never forms a Rust reference to it), and
//! the application keeps its pointer. That is `unsafe`: the compiler cannot see that
//! the memory outlives the registration or that the application leaves the device's
//! bytes alone while it works on them; its `# Safety` section is the contract.

// `reg_mr_raw` is an `unsafe fn` (the only one in this crate) and hands its pointer on.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex, PoisonError};

use ferroce_transport::control::Command;
use ferroce_transport::engine::{self, AccessFlags, CallerMemory, Lkey, MemoryBacking, Sge};
use ferroce_transport::wire::Rkey;

use crate::error::{Error, Result};
use crate::pd::{PdInner, ProtectionDomain};

/// Where a handed-over buffer goes when the engine drops its region.
type BufferHome = Arc<Mutex<Option<Vec<u8>>>>;

/// A buffer the application handed to [`ProtectionDomain::reg_mr_buffer`]: the engine
/// owns it (and may borrow it) until deregistration drops it, which sends it home.
#[derive(Debug)]
struct HandedOver {
    buffer: Vec<u8>,
    home: BufferHome,
}

impl MemoryBacking for HandedOver {
    fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer
    }

    fn address(&self) -> Option<u64> {
        // The iova is the buffer's address, as for any application memory.
        Some(self.buffer.as_ptr().addr() as u64)
    }
}

impl Drop for HandedOver {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        *self.home.lock().unwrap_or_else(PoisonError::into_inner) = Some(buffer);
    }
}

impl ProtectionDomain {
    /// Registers `length` bytes of the application's own memory at `addr`
    /// (`ibv_reg_mr(pd, addr, length, access)`). The region's [`MemoryRegion::addr`] is
    /// `addr` itself, so peers target the application's addresses, as with perftest.
    /// Refused (`InvalidArgument`) when `addr` is null or the range wraps; limits and
    /// flags are checked as for [`reg_mr`](ProtectionDomain::reg_mr).
    ///
    /// # Safety
    ///
    /// From this call until the returned region has been dropped (or
    /// [`deregister`](MemoryRegion::deregister)ed) and that drop has returned — the
    /// region keeps its device alive, so there is no other end:
    /// - `addr..addr + length` is one live allocation, valid for reads and writes; it is
    ///   not freed, moved (no `Vec` growth), unmapped or made read-only.
    /// - It is DMA memory: the application holds no Rust reference (`&[u8]`,
    ///   `&mut [u8]`) to bytes the device may write — receives and READ or atomic
    ///   results (with `LOCAL_WRITE`), peers' RDMA WRITEs and atomics (with
    ///   `REMOTE_WRITE`/`REMOTE_ATOMIC`) — and reaches them through raw pointers
    ///   (`ptr::copy`, `ptr::read`) instead.
    /// - The device reads and writes the memory from the engine thread, or from any
    ///   application thread that drives the engine (posting work or polling a CQ of
    ///   this device), whenever a request or a peer's packet needs it. The application
    ///   must not write bytes the device may be reading, nor access bytes it may be
    ///   writing: read after the completion that wrote them, and write before posting
    ///   the request that sends them, as with a hardware HCA. Concurrent accesses to
    ///   8-byte-aligned words through `AtomicU64` are the one exception: the device's
    ///   atomics on this memory are `AtomicU64` operations. Peers' writes have no local
    ///   completion; agree with the peer (a SEND, WRITE with immediate) when they are
    ///   done.
    ///
    /// # Example
    ///
    /// A receive into a heap buffer the application keeps its pointer to:
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferroce::{AccessFlags, Device, DeviceConfig, PathMtu, QpInitAttributes, QpType,
    ///     RecvRequest, RemoteEndpoint, SendRequest, WcStatus};
    /// use ferroce::wire::Psn;
    ///
    /// # fn main() -> Result<(), ferroce::Error> {
    /// let a = Device::open(DeviceConfig::with_address("127.79.0.1".parse().unwrap()))?;
    /// let b = Device::open(DeviceConfig::with_address("127.79.0.2".parse().unwrap()))?;
    /// let (pd_a, pd_b) = (a.alloc_pd()?, b.alloc_pd()?);
    /// # let (cq_a, cq_b) = (a.create_cq(16, None)?, b.create_cq(16, None)?);
    /// # let qp_a = pd_a.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_a))?;
    /// # let qp_b = pd_b.create_qp(&QpInitAttributes::new(QpType::Rc, &cq_b))?;
    /// # let end_a = RemoteEndpoint { address: a.query_gid(0)?, qpn: qp_a.qp_num(), psn: Psn::new(1) };
    /// # let end_b = RemoteEndpoint { address: b.query_gid(0)?, qpn: qp_b.qp_num(), psn: Psn::new(2) };
    /// # qp_a.connect(end_b, end_a.psn, PathMtu::Mtu1024, AccessFlags::LOCAL_WRITE)?;
    /// # qp_b.connect(end_a, end_b.psn, PathMtu::Mtu1024, AccessFlags::LOCAL_WRITE)?;
    /// // Connected RC QPs `qp_a` and `qp_b`, as in the crate example.
    /// let buffer: *mut [u8] = Box::into_raw(vec![0u8; 4096].into_boxed_slice());
    /// // SAFETY: `buffer` is freed only after `mr` is dropped, and read only after the
    /// // completion of the one receive that writes it.
    /// let mr = unsafe { pd_a.reg_mr_raw(buffer.cast(), 4096, AccessFlags::LOCAL_WRITE)? };
    /// assert_eq!(mr.addr(), buffer.cast::<u8>() as u64);
    ///
    /// qp_a.post_recv(RecvRequest::new(1).sge(&mr, 100, 1000))?;
    /// qp_b.post_send(SendRequest::send(2).inline(b"hello"))?;
    /// let wc = cq_a.poll_wait(1, Duration::from_secs(5))?;
    /// assert_eq!((wc[0].wr_id, wc[0].status, wc[0].byte_len), (1, WcStatus::Success, 5));
    /// // SAFETY: the receive completed and no other is posted: the device leaves the
    /// // bytes alone now.
    /// let got: [u8; 5] = unsafe { buffer.cast::<u8>().add(100).cast::<[u8; 5]>().read() };
    /// assert_eq!(&got, b"hello");
    ///
    /// drop(mr);
    /// // SAFETY: deregistered; the buffer is the application's alone again.
    /// drop(unsafe { Box::from_raw(buffer) });
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn reg_mr_raw(
        &self,
        addr: *mut u8,
        length: usize,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        // SAFETY: the caller's contract above is `CallerMemory::new`'s, held until the
        // region is deregistered: `MemoryRegion`'s drop deregisters before it returns.
        let memory = unsafe { CallerMemory::new(addr, length) }.ok_or(Error::InvalidArgument(
            "caller memory is null or wraps the address space",
        ))?;
        MemoryRegion::register_memory(self.inner.clone(), memory.into(), access, None)
    }
}

/// A registered memory region (`ibv_mr`). Deregistered when dropped (or by
/// [`deregister`](MemoryRegion::deregister)): every later access with its keys fails,
/// and the device no longer touches its memory once that has returned.
#[derive(Debug)]
pub struct MemoryRegion {
    pd: Arc<PdInner>,
    mr: engine::MemoryRegion,
    /// Where a handed-over buffer comes back (regions from `reg_mr_buffer`).
    home: Option<BufferHome>,
    registered: bool,
}

impl MemoryRegion {
    pub(crate) fn register(
        pd: Arc<PdInner>,
        length: u64,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        let mr = pd.device.execute(Command::RegMr {
            pd: pd.pd,
            length,
            access,
        })?;
        Ok(MemoryRegion {
            pd,
            mr,
            home: None,
            registered: true,
        })
    }

    /// Registers a buffer the engine owns until deregistration gives it back.
    pub(crate) fn register_buffer(
        pd: Arc<PdInner>,
        buffer: Vec<u8>,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        let home = BufferHome::default();
        let backing = Box::new(HandedOver {
            buffer,
            home: home.clone(),
        });
        MemoryRegion::register_memory(pd, backing.into(), access, Some(home))
    }

    fn register_memory(
        pd: Arc<PdInner>,
        memory: engine::RegionMemory,
        access: AccessFlags,
        home: Option<BufferHome>,
    ) -> Result<MemoryRegion> {
        let mr = pd
            .device
            .backend
            .reg_mr_backed(pd.device.ns, pd.pd, memory, access)?;
        Ok(MemoryRegion {
            pd,
            mr,
            home,
            registered: true,
        })
    }

    /// Deregisters the region now (`ibv_dereg_mr`), reporting failure, which dropping
    /// cannot. For a region from [`ProtectionDomain::reg_mr_buffer`] it gives the buffer
    /// back, with every byte the device wrote; otherwise `None`.
    pub fn deregister(mut self) -> Result<Option<Vec<u8>>> {
        self.registered = false;
        self.pd
            .device
            .execute::<()>(Command::DeregMr { lkey: self.mr.lkey })?;
        // The engine dropped the backing inside that call, which sent the buffer home.
        Ok(self
            .home
            .as_ref()
            .and_then(|home| home.lock().unwrap_or_else(PoisonError::into_inner).take()))
    }

    /// Local key, for SGEs.
    pub fn lkey(&self) -> Lkey {
        self.mr.lkey
    }

    /// Remote key, for peers' RDMA WRITE, READ and atomics; 0 (which no region answers
    /// to) when the region was registered without any `REMOTE_*` access, as in rxe.
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
        self.pd.device.execute(Command::MrWrite {
            lkey: self.mr.lkey,
            addr: self.mr.addr + offset,
            data: data.to_vec(),
        })
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
        self.pd.device.execute(Command::MrRead {
            lkey: self.mr.lkey,
            addr: self.mr.addr + offset,
            length: len as u64,
        })
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
        if !self.registered {
            return;
        }
        // An error means the engine thread has stopped: it runs no more rounds, so it
        // reaches no memory either.
        let _ = self
            .pd
            .device
            .execute::<()>(Command::DeregMr { lkey: self.mr.lkey });
    }
}

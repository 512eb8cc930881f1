//! Memory regions and every access to them.
//!
//! The QP code reaches memory only through [`MemoryAccess`]: a key is looked up in the
//! namespace's table, then the PD, the access flags and the bounds are checked. Keys are
//! `index << 8 | key` with a random 8-bit key per registration, so a stale or guessed
//! key fails; deregistration removes the entry, so no later access can reach the bytes.
//! As in rxe, a region registered without any `REMOTE_*` access has rkey 0 and no key
//! a peer presents reaches it; and only fast-registered regions and memory windows can
//! be invalidated, which ferroce does not have, so no invalidation ever succeeds.
//!
//! A region's bytes are a [`RegionMemory`]: either a [`MemoryBacking`] the engine owns
//! and may borrow as slices (`Vec<u8>` for `reg_mr`), or [`CallerMemory`], the
//! application's own memory, which the engine never borrows: it copies through raw
//! pointers, as a DMA engine would, because the application may hold pointers to it too.

// Caller memory is reached through raw pointers; every `unsafe` block says why it holds.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroce_wire::Rkey;

/// A protection domain handle (allocated per namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtectionDomain(pub u32);

/// A local key: names a memory region to the local QPs of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lkey(pub u32);

impl fmt::Display for Lkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Memory region and QP access flags, with the ibverbs bit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccessFlags(u32);

impl AccessFlags {
    /// No access beyond local reads.
    pub const NONE: AccessFlags = AccessFlags(0);
    /// The local HCA may write (receive buffers, READ and atomic results).
    pub const LOCAL_WRITE: AccessFlags = AccessFlags(1);
    /// Remote peers may RDMA WRITE.
    pub const REMOTE_WRITE: AccessFlags = AccessFlags(1 << 1);
    /// Remote peers may RDMA READ.
    pub const REMOTE_READ: AccessFlags = AccessFlags(1 << 2);
    /// Remote peers may run atomics.
    pub const REMOTE_ATOMIC: AccessFlags = AccessFlags(1 << 3);
    /// Every flag above.
    pub const ALL: AccessFlags = AccessFlags(0xf);
    /// Any of the remote flags.
    const ANY_REMOTE: u32 = 0xe;

    /// Flags from ibverbs bits; unknown bits are refused.
    pub const fn from_bits(bits: u32) -> Option<AccessFlags> {
        if bits & !Self::ALL.0 == 0 {
            Some(AccessFlags(bits))
        } else {
            None
        }
    }

    /// The ibverbs bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True when every flag of `other` is set here.
    pub const fn contains(self, other: AccessFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when some `REMOTE_*` flag is set: only then does a region get an rkey.
    pub const fn allows_remote(self) -> bool {
        self.0 & Self::ANY_REMOTE != 0
    }
}

impl std::ops::BitOr for AccessFlags {
    type Output = AccessFlags;
    fn bitor(self, rhs: AccessFlags) -> AccessFlags {
        AccessFlags(self.0 | rhs.0)
    }
}

/// What a registration hands back to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The PD it belongs to.
    pub pd: ProtectionDomain,
    /// Local key (for SGEs).
    pub lkey: Lkey,
    /// Remote key (for peers' RETH and AtomicETH); 0, which no region answers to, when
    /// the region allows no remote access (as rxe).
    pub rkey: Rkey,
    /// First byte's address (the iova peers use).
    pub addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// Access flags.
    pub access: AccessFlags,
}

/// A key as a memory access presents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// From a local SGE.
    Local(Lkey),
    /// From a peer's request.
    Remote(Rkey),
}

/// Why a memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessError {
    /// No region with this key (never registered, deregistered, stale key, or an rkey
    /// of a region without remote access).
    InvalidKey,
    /// The region belongs to another PD.
    PdMismatch,
    /// The region's access flags do not allow it.
    AccessDenied,
    /// The range is outside the region (or overflows).
    OutOfBounds,
    /// An atomic on an address that is not 8-byte aligned.
    Misaligned,
    /// An invalidation of a region that cannot be invalidated: only fast-registered
    /// regions and memory windows can, and every ferroce region is a user region
    /// (rxe's `rxe_invalidate_mr` refuses every type but `IB_MR_TYPE_MEM_REG`).
    NotInvalidatable,
}

/// An atomic operation on 8 bytes of remote memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOp {
    /// Swap in `swap` when the current value equals `compare`.
    CompareSwap {
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// Add `add` (wrapping).
    FetchAdd {
        /// Addend.
        add: u64,
    },
}

impl AtomicOp {
    /// The value the 8 bytes hold after the operation, given what they held.
    fn apply(self, original: u64) -> u64 {
        match self {
            AtomicOp::CompareSwap { compare, swap } if original == compare => swap,
            AtomicOp::CompareSwap { .. } => original,
            AtomicOp::FetchAdd { add } => original.wrapping_add(add),
        }
    }
}

/// Every access the QP code makes to registered memory. `required` names the access
/// flags the operation needs; local reads need none (as in ibverbs).
pub trait MemoryAccess {
    /// Checks an access without touching memory.
    fn check(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: u64,
        required: AccessFlags,
    ) -> Result<(), AccessError>;
    /// Copies `out.len()` bytes at `addr` into `out`.
    fn read(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        out: &mut [u8],
        required: AccessFlags,
    ) -> Result<(), AccessError>;
    /// The `len` bytes at `addr`, for a packet to carry them without a copy (the same
    /// checks as `read`); valid until the region is written or deregistered (see
    /// [`LentBytes`]).
    fn lend(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: usize,
        required: AccessFlags,
    ) -> Result<LentBytes, AccessError>;
    /// Copies `data` to `addr`.
    fn write(
        &mut self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        data: &[u8],
        required: AccessFlags,
    ) -> Result<(), AccessError>;
    /// Runs an atomic on the 8 bytes at `addr` (a host-order `u64`, as ibverbs
    /// applications and rxe see it) and returns the original value. Needs
    /// `REMOTE_ATOMIC` and 8-byte alignment.
    fn atomic(
        &mut self,
        rkey: Rkey,
        pd: ProtectionDomain,
        addr: u64,
        op: AtomicOp,
    ) -> Result<u64, AccessError>;
    /// Invalidates a key (SEND with invalidate, local invalidate): later accesses with it
    /// fail until the region is registered again. Only fast-registered regions and
    /// memory windows can be invalidated; a user region answers
    /// [`AccessError::NotInvalidatable`] and stays as it was.
    fn invalidate(&mut self, key: Key, pd: ProtectionDomain) -> Result<(), AccessError>;
}

/// The bytes behind a memory region that the engine may borrow: a `Vec<u8>` for
/// `reg_mr`, or any buffer nothing else can reach while it is registered (the engine
/// forms `&[u8]`/`&mut [u8]` over it). Memory the application can still reach is
/// [`CallerMemory`] instead. Every key, PD, flag and bounds check stays in
/// [`MemoryTable`].
pub trait MemoryBacking: fmt::Debug + Send {
    /// The region's bytes.
    fn bytes(&self) -> &[u8];
    /// The region's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// The address (iova) of byte 0 that peers and SGEs use; `None` lets the engine pick
    /// one (page-aligned and different per registration).
    fn address(&self) -> Option<u64> {
        None
    }
}

impl MemoryBacking for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// The application's own memory, registered as `ibv_reg_mr(pd, addr, length, access)`
/// does: its address is the region's iova (peers target the application's addresses),
/// and the engine reaches it only through raw-pointer copies and atomics, never through
/// a Rust reference, because the application may hold pointers into it at the same
/// time.
#[derive(Debug)]
pub struct CallerMemory {
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: `CallerMemory` is a pointer and a length; it owns nothing and has no thread
// affinity. The contract of `CallerMemory::new` makes the memory valid for reads and
// writes from any thread (the engine's, or an application thread that drives the
// engine) until the region is deregistered, and every access goes through `&self` or
// `&mut self` of the table that holds it, so the engine never races with itself.
// Races with the application's own accesses are the application's to avoid, as the
// `new` contract says. It is deliberately not `Sync`: nothing needs to share it.
unsafe impl Send for CallerMemory {}

impl CallerMemory {
    /// Caller memory of `len` bytes at `start`; `None` when `start` is null or the range
    /// wraps the address space or exceeds `isize::MAX` bytes.
    ///
    /// # Safety
    ///
    /// From this call until the [`MemoryTable`] entry it is registered in is dropped
    /// (deregistration, or the engine itself dropped) — or until this value is dropped,
    /// if it is never registered:
    /// - `start..start + len` is one allocation, valid for reads and writes, and is
    ///   neither freed nor moved (nor unmapped, nor remapped read-only);
    /// - the application holds no Rust reference (`&`/`&mut`) to any of those bytes
    ///   that the engine may write (receives, RDMA WRITE, READ responses, atomics): it
    ///   is DMA memory, reached through raw pointers only;
    /// - the application does not access bytes while the engine may be reading or
    ///   writing them (from the engine thread, or an application thread running an
    ///   engine round): it reads after the completion that wrote them and writes before
    ///   posting the request that reads them, as with a hardware HCA. Concurrent
    ///   8-byte-aligned `AtomicU64` accesses are the exception: the engine's atomics on
    ///   caller memory are `AtomicU64` operations.
    pub unsafe fn new(start: *mut u8, len: usize) -> Option<CallerMemory> {
        let start = NonNull::new(start)?;
        start.as_ptr().addr().checked_add(len)?;
        if len > isize::MAX as usize {
            return None;
        }
        Some(CallerMemory { start, len })
    }

    /// The address of byte 0 (the region's iova).
    pub fn address(&self) -> u64 {
        self.start.as_ptr().addr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer to `count` bytes at `offset`, or `None` past the end.
    fn at(&self, offset: usize, count: usize) -> Option<*mut u8> {
        let end = offset.checked_add(count)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset <= len`, and `new`'s contract makes `start..start + len` one
        // allocation, so the result stays inside it (or one past its end).
        Some(unsafe { self.start.as_ptr().add(offset) })
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), AccessError> {
        let source = self.at(offset, out.len()).ok_or(AccessError::OutOfBounds)?;
        // SAFETY: `source..source + out.len()` lies inside the caller memory, valid for
        // reads by `new`'s contract; `out` is the engine's own buffer, so `ptr::copy`
        // (which also allows overlap) reads into memory no one else borrows.
        unsafe { std::ptr::copy(source, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        let target = self
            .at(offset, data.len())
            .ok_or(AccessError::OutOfBounds)?;
        // SAFETY: `target..target + data.len()` lies inside the caller memory, valid for
        // writes by `new`'s contract, which also says no Rust reference to it is alive;
        // `ptr::copy` is correct even if `data` came from overlapping memory.
        unsafe { std::ptr::copy(data.as_ptr(), target, data.len()) };
        Ok(())
    }

    fn atomic_at(&mut self, offset: usize, op: AtomicOp) -> Result<u64, AccessError> {
        let cell = self.at(offset, 8).ok_or(AccessError::OutOfBounds)?;
        if cell.addr() % 8 != 0 {
            return Err(AccessError::Misaligned);
        }
        // SAFETY: the 8 bytes at `cell` lie inside the caller memory, valid for reads
        // and writes until deregistration (`new`'s contract), which outlives this call;
        // `cell` is 8-aligned (checked above). Other accesses to these bytes are either
        // absent or `AtomicU64` operations too (`new`'s contract), so this is not a
        // data race.
        let word = unsafe { AtomicU64::from_ptr(cell.cast::<u64>()) };
        Ok(match op {
            AtomicOp::CompareSwap { compare, swap } => {
                match word.compare_exchange(compare, swap, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(original) | Err(original) => original,
                }
            }
            AtomicOp::FetchAdd { add } => word.fetch_add(add, Ordering::SeqCst),
        })
    }
}

/// Bytes of a region a datagram carries from where they are instead of a copy (see
/// `Engine::lending`): a pointer and a length. Caller memory, which the application can
/// reach too, is only ever copied out through raw pointers, as a DMA engine reads it,
/// never seen through a Rust reference; a [`MemoryBacking`], which nothing but the
/// engine reaches, is read in place.
///
/// Made only by [`MemoryAccess::lend`], and valid while the engine neither writes nor
/// deregisters the region. The engine keeps that: it reads one in the step that made it
/// (the ICRC), and past that step holds it only inside a `Lent<'r>` of a lending round,
/// whose lifetime is a borrow of the engine itself. Neither `Clone` nor `Copy`.
#[derive(Debug, PartialEq, Eq)]
pub struct LentBytes {
    start: NonNull<u8>,
    len: usize,
    /// Caller memory: copied out, never borrowed.
    caller: bool,
}

// SAFETY: a pointer and a length into memory that is valid from any thread (a backing is
// `Send`; caller memory by `CallerMemory::new`'s contract), read only while the engine
// that lent it is borrowed by the round that carries it, from whichever thread has it.
unsafe impl Send for LentBytes {}

/// Caller memory is hashed through a stack copy of at most this many bytes at a time:
/// a whole 4 KiB payload in one copy and one CRC call.
const LENT_CHUNK: usize = 4096;

impl LentBytes {
    /// The first byte, for an iovec: the kernel reads there, no Rust reference does.
    pub fn as_ptr(&self) -> *const u8 {
        self.start.as_ptr()
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands the bytes to `each` in order: a backing's in place, caller memory's
    /// through a stack copy of at most [`LENT_CHUNK`] bytes at a time.
    pub(super) fn for_each_chunk(&self, mut each: impl FnMut(&[u8])) {
        if !self.caller {
            // SAFETY: `lend_at` took the range from the backing's `bytes()`, which nothing
            // but the engine reaches (`MemoryBacking`'s contract), and the engine neither
            // writes nor drops it while this exists (the type's invariant above).
            each(unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) });
            return;
        }
        // Not zeroed first: every byte handed on is copied in just before.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); LENT_CHUNK];
        let mut done = 0;
        while done < self.len {
            let n = (self.len - done).min(LENT_CHUNK);
            // SAFETY: `done + n <= len`, inside the caller memory that `lend_at` checked
            // and that stays registered while this exists (the type's invariant);
            // `chunk` is the engine's own, with room for `n`. A raw copy, so no reference
            // to memory the application may reach; the slice below covers exactly the
            // `n` bytes it initialised.
            let copied = unsafe {
                let from = self.start.as_ptr().add(done);
                std::ptr::copy_nonoverlapping(from, chunk.as_mut_ptr().cast::<u8>(), n);
                std::slice::from_raw_parts(chunk.as_ptr().cast::<u8>(), n)
            };
            each(copied);
            done += n;
        }
    }

    /// Appends the bytes to `out` in one raw copy.
    pub(super) fn append_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        let spare = out.spare_capacity_mut();
        // SAFETY: `spare` has room for `len` bytes (reserved above) and is `out`'s own;
        // the source is valid for `len` bytes while this exists (the type's invariant)
        // and is read through a raw pointer only. The copied bytes are initialised, so
        // `set_len` below exposes only initialised bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.start.as_ptr(), spare.as_mut_ptr().cast(), self.len);
            out.set_len(out.len() + self.len);
        }
    }
}

/// The bytes of one memory region: a backing the engine owns, or caller memory.
/// `Debug` shows which and how long, never the bytes (a region may be gigabytes, and
/// its contents are the tenant's).
#[non_exhaustive]
pub enum RegionMemory {
    /// Memory the engine may borrow (`reg_mr`'s `Vec<u8>`, or a buffer handed over).
    Backing(Box<dyn MemoryBacking>),
    /// The application's memory, reached through raw pointers only.
    Caller(CallerMemory),
}

impl<T: MemoryBacking + 'static> From<Box<T>> for RegionMemory {
    fn from(backing: Box<T>) -> RegionMemory {
        RegionMemory::Backing(backing)
    }
}

impl From<Box<dyn MemoryBacking>> for RegionMemory {
    fn from(backing: Box<dyn MemoryBacking>) -> RegionMemory {
        RegionMemory::Backing(backing)
    }
}

impl From<CallerMemory> for RegionMemory {
    fn from(memory: CallerMemory) -> RegionMemory {
        RegionMemory::Caller(memory)
    }
}

impl fmt::Debug for RegionMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            RegionMemory::Backing(_) => "Backing",
            RegionMemory::Caller(_) => "Caller",
        };
        f.debug_struct(kind).field("len", &self.len()).finish()
    }
}

impl RegionMemory {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RegionMemory::Backing(backing) => backing.bytes().len(),
            RegionMemory::Caller(memory) => memory.len(),
        }
    }

    /// True for zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The iova the region must have, if the memory says (caller memory: its address).
    fn address(&self) -> Option<u64> {
        match self {
            RegionMemory::Backing(backing) => backing.address(),
            RegionMemory::Caller(memory) => Some(memory.address()),
        }
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), AccessError> {
        match self {
            RegionMemory::Backing(backing) => {
                let bytes = backing.bytes();
                let range = slice_range(bytes.len(), offset, out.len())?;
                out.copy_from_slice(&bytes[range]);
                Ok(())
            }
            RegionMemory::Caller(memory) => memory.read_at(offset, out),
        }
    }

    fn lend_at(&self, offset: usize, len: usize) -> Result<LentBytes, AccessError> {
        let (start, caller) = match self {
            RegionMemory::Backing(backing) => {
                let bytes = backing.bytes();
                (
                    bytes[slice_range(bytes.len(), offset, len)?].as_ptr(),
                    false,
                )
            }
            RegionMemory::Caller(memory) => {
                let start = memory.at(offset, len).ok_or(AccessError::OutOfBounds)?;
                (start.cast_const(), true)
            }
        };
        let start = NonNull::new(start.cast_mut()).ok_or(AccessError::OutOfBounds)?;
        Ok(LentBytes { start, len, caller })
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        match self {
            RegionMemory::Backing(backing) => {
                let bytes = backing.bytes_mut();
                let range = slice_range(bytes.len(), offset, data.len())?;
                bytes[range].copy_from_slice(data);
                Ok(())
            }
            RegionMemory::Caller(memory) => memory.write_at(offset, data),
        }
    }

    fn atomic_at(&mut self, offset: usize, op: AtomicOp) -> Result<u64, AccessError> {
        match self {
            RegionMemory::Backing(backing) => {
                let bytes = backing.bytes_mut();
                let range = slice_range(bytes.len(), offset, 8)?;
                let cell = &mut bytes[range];
                let mut word = [0u8; 8];
                word.copy_from_slice(cell);
                let original = u64::from_ne_bytes(word);
                cell.copy_from_slice(&op.apply(original).to_ne_bytes());
                Ok(original)
            }
            RegionMemory::Caller(memory) => memory.atomic_at(offset, op),
        }
    }
}

fn slice_range(
    len: usize,
    offset: usize,
    count: usize,
) -> Result<std::ops::Range<usize>, AccessError> {
    match offset.checked_add(count) {
        Some(end) if end <= len => Ok(offset..end),
        _ => Err(AccessError::OutOfBounds),
    }
}

#[derive(Debug)]
struct Entry {
    pd: ProtectionDomain,
    /// The lkey; also the rkey when `access` allows remote access (else there is none).
    key: u32,
    addr: u64,
    access: AccessFlags,
    memory: RegionMemory,
}

impl Entry {
    /// True when `key` names this region: an lkey always, an rkey only when the region
    /// has one.
    fn answers(&self, key: Key) -> bool {
        match key {
            Key::Local(Lkey(k)) => k == self.key,
            Key::Remote(Rkey(k)) => k == self.key && self.access.allows_remote(),
        }
    }
}

/// The memory regions of one namespace, with the bytes the engine owns.
#[derive(Debug, Default)]
pub struct MemoryTable {
    // Slot `i` holds keys `i << 8 | k`; slot 0 is never used so no key is 0..=255.
    slots: Vec<Option<Entry>>,
    count: usize,
}

impl MemoryTable {
    /// Number of registered regions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no region is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of all registered regions together (a namespace's quota counts them).
    pub fn registered_bytes(&self) -> u64 {
        let lengths = self.slots.iter().flatten().map(|e| e.memory.len() as u64);
        lengths.sum()
    }

    /// Registers a zeroed region of `length` bytes; `key_byte` and `addr_bits` come from
    /// the engine's seeded generator.
    #[cfg(test)]
    pub(crate) fn register(
        &mut self,
        pd: ProtectionDomain,
        length: u64,
        access: AccessFlags,
        key_byte: u8,
        addr_bits: u32,
    ) -> Result<MemoryRegion, AccessError> {
        let bytes_len = usize::try_from(length).map_err(|_| AccessError::OutOfBounds)?;
        self.register_backing(
            pd,
            Box::new(vec![0u8; bytes_len]).into(),
            access,
            key_byte,
            addr_bits,
        )
    }

    /// Registers `memory` (its whole length) as a region. Its iova is the memory's own
    /// address when it has one (caller memory), else one picked from `addr_bits`. Keys
    /// alone find entries, so regions that overlap, or sit at any address, stay apart.
    pub(crate) fn register_backing(
        &mut self,
        pd: ProtectionDomain,
        memory: RegionMemory,
        access: AccessFlags,
        key_byte: u8,
        addr_bits: u32,
    ) -> Result<MemoryRegion, AccessError> {
        let length = memory.len() as u64;
        let index = match self.slots.iter().skip(1).position(Option::is_none) {
            Some(free) => free + 1,
            None => {
                if self.slots.is_empty() {
                    self.slots.push(None);
                }
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let index_u32 = u32::try_from(index).map_err(|_| AccessError::OutOfBounds)?;
        if index_u32 > 0x00ff_ffff {
            return Err(AccessError::OutOfBounds);
        }
        let key = index_u32 << 8 | u32::from(key_byte);
        // Page-aligned, different per registration; 4 GiB window per slot.
        let addr = memory
            .address()
            .unwrap_or((u64::from(index_u32) << 32) | u64::from(addr_bits & 0x7fff_f000));
        self.slots[index] = Some(Entry {
            pd,
            key,
            addr,
            access,
            memory,
        });
        self.count += 1;
        Ok(MemoryRegion {
            pd,
            lkey: Lkey(key),
            rkey: Rkey(if access.allows_remote() { key } else { 0 }),
            addr,
            length,
            access,
        })
    }

    /// Removes a region; later accesses with its keys fail.
    pub(crate) fn deregister(&mut self, lkey: Lkey) -> Option<ProtectionDomain> {
        let slot = self.slots.get_mut((lkey.0 >> 8) as usize)?;
        if slot.as_ref().is_some_and(|e| e.key == lkey.0) {
            self.count -= 1;
            return slot.take().map(|e| e.pd);
        }
        None
    }

    /// True when some region belongs to `pd`.
    pub(crate) fn uses_pd(&self, pd: ProtectionDomain) -> bool {
        self.slots.iter().flatten().any(|e| e.pd == pd)
    }

    fn entry(&self, key: Key) -> Option<&Entry> {
        self.slots
            .get((raw_key(key) >> 8) as usize)?
            .as_ref()
            .filter(|e| e.answers(key))
    }

    fn entry_mut(&mut self, key: Key) -> Option<&mut Entry> {
        self.slots
            .get_mut((raw_key(key) >> 8) as usize)?
            .as_mut()
            .filter(|e| e.answers(key))
    }

    /// The owner reads its region: any byte inside it, no access flags needed (like an
    /// application reading its own buffer).
    pub(crate) fn owner_read(
        &self,
        lkey: Lkey,
        addr: u64,
        out: &mut [u8],
    ) -> Result<(), AccessError> {
        let entry = self
            .entry(Key::Local(lkey))
            .ok_or(AccessError::InvalidKey)?;
        let offset = offset_in(entry, addr, out.len() as u64)?;
        entry.memory.read_at(offset, out)
    }

    /// The owner writes its region: any byte inside it, no access flags needed.
    pub(crate) fn owner_write(
        &mut self,
        lkey: Lkey,
        addr: u64,
        data: &[u8],
    ) -> Result<(), AccessError> {
        let entry = self
            .entry_mut(Key::Local(lkey))
            .ok_or(AccessError::InvalidKey)?;
        let offset = offset_in(entry, addr, data.len() as u64)?;
        entry.memory.write_at(offset, data)
    }

    fn checked(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: u64,
        required: AccessFlags,
    ) -> Result<usize, AccessError> {
        let entry = self.entry(key).ok_or(AccessError::InvalidKey)?;
        if entry.pd != pd {
            return Err(AccessError::PdMismatch);
        }
        if !entry.access.contains(required) {
            return Err(AccessError::AccessDenied);
        }
        offset_in(entry, addr, len)
    }
}

fn raw_key(key: Key) -> u32 {
    match key {
        Key::Local(Lkey(k)) | Key::Remote(Rkey(k)) => k,
    }
}

/// The offset of `addr` in the entry's region, when `len` bytes from there fit in it.
fn offset_in(entry: &Entry, addr: u64, len: u64) -> Result<usize, AccessError> {
    let start = addr
        .checked_sub(entry.addr)
        .ok_or(AccessError::OutOfBounds)?;
    let end = start.checked_add(len).ok_or(AccessError::OutOfBounds)?;
    if end > entry.memory.len() as u64 {
        return Err(AccessError::OutOfBounds);
    }
    // Fits in usize: it is at most the region's length.
    Ok(start as usize)
}

impl MemoryAccess for MemoryTable {
    fn check(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: u64,
        required: AccessFlags,
    ) -> Result<(), AccessError> {
        self.checked(key, pd, addr, len, required).map(|_| ())
    }

    fn read(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        out: &mut [u8],
        required: AccessFlags,
    ) -> Result<(), AccessError> {
        let offset = self.checked(key, pd, addr, out.len() as u64, required)?;
        let entry = self.entry(key).ok_or(AccessError::InvalidKey)?;
        entry.memory.read_at(offset, out)
    }

    fn lend(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: usize,
        required: AccessFlags,
    ) -> Result<LentBytes, AccessError> {
        let offset = self.checked(key, pd, addr, len as u64, required)?;
        let entry = self.entry(key).ok_or(AccessError::InvalidKey)?;
        entry.memory.lend_at(offset, len)
    }

    fn write(
        &mut self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        data: &[u8],
        required: AccessFlags,
    ) -> Result<(), AccessError> {
        let offset = self.checked(key, pd, addr, data.len() as u64, required)?;
        let entry = self.entry_mut(key).ok_or(AccessError::InvalidKey)?;
        entry.memory.write_at(offset, data)
    }

    fn atomic(
        &mut self,
        rkey: Rkey,
        pd: ProtectionDomain,
        addr: u64,
        op: AtomicOp,
    ) -> Result<u64, AccessError> {
        if addr % 8 != 0 {
            return Err(AccessError::Misaligned);
        }
        let key = Key::Remote(rkey);
        let offset = self.checked(key, pd, addr, 8, AccessFlags::REMOTE_ATOMIC)?;
        let entry = self.entry_mut(key).ok_or(AccessError::InvalidKey)?;
        entry.memory.atomic_at(offset, op)
    }

    fn invalidate(&mut self, key: Key, pd: ProtectionDomain) -> Result<(), AccessError> {
        let entry = self.entry(key).ok_or(AccessError::InvalidKey)?;
        if entry.pd != pd {
            return Err(AccessError::PdMismatch);
        }
        // Every entry is a user region (`reg_mr`): no fast registration, no windows.
        Err(AccessError::NotInvalidatable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PD: ProtectionDomain = ProtectionDomain(1);

    fn table_with(access: AccessFlags) -> (MemoryTable, MemoryRegion) {
        let mut table = MemoryTable::default();
        let mr = table.register(PD, 64, access, 0x5a, 0x1234_5678).unwrap();
        (table, mr)
    }

    #[test]
    fn keys_are_index_and_random_byte() {
        let (mut table, mr) = table_with(AccessFlags::LOCAL_WRITE);
        assert_eq!(mr.lkey.0, 1 << 8 | 0x5a);
        assert_eq!(mr.addr % 4096, 0);
        let second = table.register(PD, 8, AccessFlags::NONE, 0x01, 0).unwrap();
        assert_eq!(second.lkey.0 >> 8, 2);
        // A guessed key with the right index and the wrong byte fails.
        let guess = Key::Local(Lkey(1 << 8 | 0x5b));
        assert_eq!(
            table.check(guess, PD, mr.addr, 1, AccessFlags::NONE),
            Err(AccessError::InvalidKey)
        );
    }

    #[test]
    fn checks_pd_flags_bounds_and_alignment() {
        let (mut table, mr) = table_with(AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ);
        let key = Key::Remote(mr.rkey);
        let mut buf = [0u8; 8];
        assert_eq!(
            table.read(key, PD, mr.addr + 56, &mut buf, AccessFlags::REMOTE_READ),
            Ok(())
        );
        assert_eq!(
            table.read(key, PD, mr.addr + 57, &mut buf, AccessFlags::REMOTE_READ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            table.read(key, PD, mr.addr - 1, &mut buf, AccessFlags::REMOTE_READ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            table.read(
                key,
                ProtectionDomain(2),
                mr.addr,
                &mut buf,
                AccessFlags::REMOTE_READ
            ),
            Err(AccessError::PdMismatch)
        );
        assert_eq!(
            table.write(key, PD, mr.addr, &buf, AccessFlags::REMOTE_WRITE),
            Err(AccessError::AccessDenied)
        );
        assert_eq!(
            table.atomic(mr.rkey, PD, mr.addr, AtomicOp::FetchAdd { add: 1 }),
            Err(AccessError::AccessDenied)
        );
        assert_eq!(
            table.atomic(mr.rkey, PD, mr.addr + 4, AtomicOp::FetchAdd { add: 1 }),
            Err(AccessError::Misaligned)
        );
        assert_eq!(
            table.check(key, PD, u64::MAX, 2, AccessFlags::NONE),
            Err(AccessError::OutOfBounds)
        );
    }

    #[test]
    fn atomics_return_the_original_and_update() {
        let (mut table, mr) = table_with(AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_ATOMIC);
        let add = AtomicOp::FetchAdd { add: 5 };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, add), Ok(0));
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, add), Ok(5));
        let cas = AtomicOp::CompareSwap {
            compare: 9,
            swap: 1,
        };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, cas), Ok(10));
        let cas = AtomicOp::CompareSwap {
            compare: 10,
            swap: 1,
        };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, cas), Ok(10));
        let mut word = [0u8; 8];
        table.owner_read(mr.lkey, mr.addr + 8, &mut word).unwrap();
        assert_eq!(word, 1u64.to_ne_bytes());
    }

    #[test]
    fn deregistered_keys_fail_and_user_regions_cannot_be_invalidated() {
        let (mut table, mr) = table_with(AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE);
        let key = Key::Remote(mr.rkey);
        // A user region is not invalidated by either key, and stays usable (rxe).
        assert_eq!(
            table.invalidate(key, PD),
            Err(AccessError::NotInvalidatable)
        );
        assert_eq!(
            table.invalidate(Key::Local(mr.lkey), PD),
            Err(AccessError::NotInvalidatable)
        );
        assert_eq!(
            table.invalidate(key, ProtectionDomain(2)),
            Err(AccessError::PdMismatch)
        );
        assert_eq!(
            table.write(key, PD, mr.addr, &[1], AccessFlags::REMOTE_WRITE),
            Ok(())
        );
        assert_eq!(table.deregister(mr.lkey), Some(PD));
        assert_eq!(table.deregister(mr.lkey), None);
        assert!(table.is_empty());
        // The slot is reused with a new key byte; the old key stays dead.
        let again = table
            .register(PD, 64, AccessFlags::LOCAL_WRITE, 0x77, 0)
            .unwrap();
        assert_eq!(again.lkey.0 >> 8, mr.lkey.0 >> 8);
        assert_eq!(
            table.check(key, PD, mr.addr, 1, AccessFlags::NONE),
            Err(AccessError::InvalidKey)
        );
    }

    #[test]
    fn a_region_without_remote_access_has_no_rkey() {
        let (mut table, local) = table_with(AccessFlags::LOCAL_WRITE);
        assert_eq!(local.rkey, Rkey(0));
        // Not by rkey 0, not by the lkey's value presented as an rkey: no peer reaches it.
        for rkey in [local.rkey, Rkey(local.lkey.0)] {
            let key = Key::Remote(rkey);
            assert_eq!(
                table.check(key, PD, local.addr, 1, AccessFlags::NONE),
                Err(AccessError::InvalidKey)
            );
            assert_eq!(table.invalidate(key, PD), Err(AccessError::InvalidKey));
        }
        // Its owner still reaches it by lkey.
        assert_eq!(
            table.check(Key::Local(local.lkey), PD, local.addr, 1, AccessFlags::NONE),
            Ok(())
        );
        let remote = table
            .register(PD, 8, AccessFlags::REMOTE_READ, 0x21, 0)
            .unwrap();
        assert_eq!(
            remote.rkey.0, remote.lkey.0,
            "rxe: rkey == lkey when remote"
        );
    }

    #[test]
    fn debug_shows_lengths_not_bytes() {
        let (table, _) = table_with(AccessFlags::LOCAL_WRITE);
        let mut big = table;
        big.register(PD, 1 << 20, AccessFlags::NONE, 1, 0).unwrap();
        let text = format!("{big:?}");
        assert!(text.contains("len: 1048576"), "{text}");
        assert!(text.len() < 4096, "{} bytes of Debug", text.len());
    }

    /// Registers `buffer` (raw, as the verbs layer does) with every access flag.
    fn caller_region(table: &mut MemoryTable, buffer: *mut [u8], key_byte: u8) -> MemoryRegion {
        // SAFETY: each test frees its buffer only after deregistering every region over
        // it (or dropping the table), and holds no reference into it meanwhile.
        let memory = unsafe { CallerMemory::new(buffer.cast::<u8>(), buffer.len()) }.unwrap();
        table
            .register_backing(PD, memory.into(), AccessFlags::ALL, key_byte, 0)
            .unwrap()
    }

    /// Caller memory is lent as a pointer and read back only through raw copies (the
    /// ICRC's chunks, `own`'s append), never a reference: run under Miri (`.ci/run`).
    #[test]
    fn caller_memory_is_lent_and_read_through_raw_copies() {
        // Longer than a chunk, so the ICRC reads it in several stack copies.
        let region: Vec<u8> = (0..9000).map(|i| (i * 7) as u8).collect();
        let buffer: *mut [u8] = Box::into_raw(region.clone().into_boxed_slice());
        let mut table = MemoryTable::default();
        let mr = caller_region(&mut table, buffer, 0x21);
        let lend = |offset, len| super::super::lent::tests::lend(&table, &mr, offset, len);
        let mut chunks = Vec::new();
        let mut seen = Vec::new();
        lend(0, 9000).for_each_chunk(|c| {
            chunks.push(c.len());
            seen.extend_from_slice(c);
        });
        assert_eq!((chunks, &seen), (vec![4096, 4096, 808], &region));
        assert_eq!(lend(0, 9000).as_ptr(), buffer.cast::<u8>().cast_const());
        super::super::lent::tests::check_owned(lend(100, 600), &region[100..700]);
        // The application writes between lendings (not while one is out): the next one
        // sees its bytes.
        // SAFETY: inside the buffer; no lent bytes are alive and the engine is idle.
        unsafe { buffer.cast::<u8>().add(5).write(0x55) };
        let mut out = Vec::new();
        lend(5, 1).append_to(&mut out);
        assert_eq!(out, [0x55]);
        assert_eq!(
            table.lend(
                Key::Local(mr.lkey),
                PD,
                mr.addr + 8999,
                2,
                AccessFlags::NONE
            ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(table.deregister(mr.lkey), Some(PD));
        // SAFETY: deregistered; the buffer is ours alone again.
        drop(unsafe { Box::from_raw(buffer) });
    }

    #[test]
    fn caller_memory_is_reached_at_its_own_address() {
        let buffer: *mut [u8] = Box::into_raw(vec![0u8; 64].into_boxed_slice());
        let mut table = MemoryTable::default();
        let mr = caller_region(&mut table, buffer, 0x11);
        assert_eq!(mr.addr, buffer.cast::<u8>().addr() as u64);
        assert_eq!(mr.length, 64);
        let key = Key::Remote(mr.rkey);
        table
            .write(key, PD, mr.addr + 3, b"abc", AccessFlags::REMOTE_WRITE)
            .unwrap();
        let mut out = [0u8; 5];
        table
            .read(key, PD, mr.addr + 2, &mut out, AccessFlags::REMOTE_READ)
            .unwrap();
        assert_eq!(&out, b"\0abc\0");
        table.owner_write(mr.lkey, mr.addr + 60, b"wxyz").unwrap();
        assert_eq!(
            table.owner_write(mr.lkey, mr.addr + 61, b"wxyz"),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            table.read(key, PD, mr.addr + 61, &mut out, AccessFlags::REMOTE_READ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            table.read(key, PD, mr.addr - 1, &mut out, AccessFlags::REMOTE_READ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(table.deregister(mr.lkey), Some(PD));
        // The engine let go: the application owns its bytes again.
        // SAFETY: `buffer` came from `Box::into_raw` and nothing else refers to it now.
        let buffer = unsafe { Box::from_raw(buffer) };
        assert_eq!(&buffer[2..7], b"\0abc\0");
        assert_eq!(&buffer[60..], b"wxyz");
    }

    #[test]
    fn atomics_on_caller_memory_are_host_order_words() {
        // u64s, so the buffer (and the region's address) is 8-aligned.
        let words: *mut [u64] = Box::into_raw(vec![0u64; 4].into_boxed_slice());
        let bytes = std::ptr::slice_from_raw_parts_mut(words.cast::<u8>(), 32);
        let mut table = MemoryTable::default();
        let mr = caller_region(&mut table, bytes, 0x22);
        let add = AtomicOp::FetchAdd { add: 7 };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, add), Ok(0));
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, add), Ok(7));
        let miss = AtomicOp::CompareSwap {
            compare: 1,
            swap: 99,
        };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 8, miss), Ok(14));
        let hit = AtomicOp::CompareSwap {
            compare: 14,
            swap: u64::MAX,
        };
        assert_eq!(table.atomic(mr.rkey, PD, mr.addr + 24, hit), Ok(0));
        assert_eq!(
            table.atomic(mr.rkey, PD, mr.addr + 4, add),
            Err(AccessError::Misaligned)
        );
        assert_eq!(
            table.atomic(mr.rkey, PD, mr.addr + 32, add),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(table.deregister(mr.lkey), Some(PD));
        // SAFETY: `words` came from `Box::into_raw`; the region is gone.
        let words = unsafe { Box::from_raw(words) };
        assert_eq!(*words, [0, 14, 0, 0]);
    }

    #[test]
    fn overlapping_caller_regions_are_told_apart_by_key() {
        let buffer: *mut [u8] = Box::into_raw(vec![0u8; 64].into_boxed_slice());
        let tail = std::ptr::slice_from_raw_parts_mut(buffer.cast::<u8>().wrapping_add(32), 32);
        let mut table = MemoryTable::default();
        let whole = caller_region(&mut table, buffer, 0x33);
        let upper = caller_region(&mut table, tail, 0x33);
        assert_eq!(upper.addr, whole.addr + 32);
        let read_only = table
            .register_backing(
                PD,
                // SAFETY: as in `caller_region`.
                unsafe { CallerMemory::new(buffer.cast::<u8>(), 16) }
                    .unwrap()
                    .into(),
                AccessFlags::REMOTE_READ,
                0x44,
                0,
            )
            .unwrap();
        assert_eq!(read_only.addr, whole.addr);
        // Same address, different keys: each key keeps its own bounds and flags.
        assert_eq!(
            table.write(
                Key::Remote(read_only.rkey),
                PD,
                whole.addr,
                b"x",
                AccessFlags::REMOTE_WRITE
            ),
            Err(AccessError::AccessDenied)
        );
        assert_eq!(
            table.check(
                Key::Remote(read_only.rkey),
                PD,
                whole.addr + 16,
                1,
                AccessFlags::NONE
            ),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            table.check(
                Key::Remote(upper.rkey),
                PD,
                whole.addr,
                1,
                AccessFlags::NONE
            ),
            Err(AccessError::OutOfBounds)
        );
        table
            .write(
                Key::Remote(upper.rkey),
                PD,
                whole.addr + 40,
                b"up",
                AccessFlags::REMOTE_WRITE,
            )
            .unwrap();
        let mut out = [0u8; 2];
        table
            .read(
                Key::Remote(whole.rkey),
                PD,
                whole.addr + 40,
                &mut out,
                AccessFlags::REMOTE_READ,
            )
            .unwrap();
        assert_eq!(&out, b"up");
        // A deregistered key fails at once, its overlapping siblings still work.
        assert_eq!(table.deregister(whole.lkey), Some(PD));
        assert_eq!(
            table.read(
                Key::Remote(whole.rkey),
                PD,
                whole.addr + 40,
                &mut out,
                AccessFlags::REMOTE_READ
            ),
            Err(AccessError::InvalidKey)
        );
        assert!(table
            .read(
                Key::Remote(upper.rkey),
                PD,
                whole.addr + 40,
                &mut out,
                AccessFlags::REMOTE_READ
            )
            .is_ok());
        drop(table);
        // SAFETY: from `Box::into_raw`; the table holding the regions is gone.
        drop(unsafe { Box::from_raw(buffer) });
    }

    #[test]
    fn caller_memory_refuses_null_and_wrapping_ranges() {
        // SAFETY: `new` refuses these before anything could be reached.
        unsafe {
            assert!(CallerMemory::new(std::ptr::null_mut(), 8).is_none());
            let near_end = std::ptr::without_provenance_mut::<u8>(usize::MAX - 3);
            assert!(CallerMemory::new(near_end, 8).is_none());
            let low = std::ptr::without_provenance_mut::<u8>(4096);
            assert!(CallerMemory::new(low, isize::MAX as usize + 1).is_none());
        }
    }
}

//! Memory regions and every access to them.
//!
//! The QP code reaches memory only through [`MemoryAccess`]: a key is looked up in the
//! namespace's table, then the PD, the access flags and the bounds are checked. Keys are
//! `index << 8 | key` with a random 8-bit key per registration, so a stale or guessed
//! key fails; deregistration removes the entry, so no later access can reach the bytes.

use std::fmt;

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
    /// Remote key (for peers' RETH and AtomicETH).
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
    /// No region with this key (never registered, deregistered, invalidated, stale key).
    InvalidKey,
    /// The region belongs to another PD.
    PdMismatch,
    /// The region's access flags do not allow it.
    AccessDenied,
    /// The range is outside the region (or overflows).
    OutOfBounds,
    /// An atomic on an address that is not 8-byte aligned.
    Misaligned,
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
    /// fail until the region is deregistered.
    fn invalidate(&mut self, key: Key, pd: ProtectionDomain) -> Result<(), AccessError>;
}

/// The bytes behind a memory region. The engine owns a `Vec<u8>` for `reg_mr`; the verbs
/// layer plugs caller-registered or shared (memfd) memory in through this trait, and
/// every key, PD, flag and bounds check stays in [`MemoryTable`].
pub trait MemoryBacking: fmt::Debug + Send {
    /// The region's bytes.
    fn bytes(&self) -> &[u8];
    /// The region's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl MemoryBacking for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

#[derive(Debug)]
struct Entry {
    pd: ProtectionDomain,
    key: u32,
    addr: u64,
    access: AccessFlags,
    valid: bool,
    bytes: Box<dyn MemoryBacking>,
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
            Box::new(vec![0u8; bytes_len]),
            access,
            key_byte,
            addr_bits,
        )
    }

    /// Registers `backing` (its whole length) as a region.
    pub(crate) fn register_backing(
        &mut self,
        pd: ProtectionDomain,
        backing: Box<dyn MemoryBacking>,
        access: AccessFlags,
        key_byte: u8,
        addr_bits: u32,
    ) -> Result<MemoryRegion, AccessError> {
        let length = backing.bytes().len() as u64;
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
        let addr = (u64::from(index_u32) << 32) | u64::from(addr_bits & 0x7fff_f000);
        self.slots[index] = Some(Entry {
            pd,
            key,
            addr,
            access,
            valid: true,
            bytes: backing,
        });
        self.count += 1;
        Ok(MemoryRegion {
            pd,
            lkey: Lkey(key),
            rkey: Rkey(key),
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

    fn entry(&self, raw: u32) -> Option<&Entry> {
        self.slots
            .get((raw >> 8) as usize)?
            .as_ref()
            .filter(|e| e.key == raw)
    }

    fn entry_mut(&mut self, raw: u32) -> Option<&mut Entry> {
        self.slots
            .get_mut((raw >> 8) as usize)?
            .as_mut()
            .filter(|e| e.key == raw)
    }

    /// The owner's view of its region: any byte inside it, no access flags needed
    /// (like an application touching its own buffer).
    pub(crate) fn owner_range(
        &mut self,
        lkey: Lkey,
        addr: u64,
        len: usize,
    ) -> Result<&mut [u8], AccessError> {
        let entry = self.entry_mut(lkey.0).ok_or(AccessError::InvalidKey)?;
        let range = range_in(entry, addr, len as u64)?;
        Ok(&mut entry.bytes.bytes_mut()[range])
    }

    fn checked(
        &self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        len: u64,
        required: AccessFlags,
    ) -> Result<(u32, std::ops::Range<usize>), AccessError> {
        let raw = raw_key(key);
        let entry = self.entry(raw).ok_or(AccessError::InvalidKey)?;
        if !entry.valid {
            return Err(AccessError::InvalidKey);
        }
        if entry.pd != pd {
            return Err(AccessError::PdMismatch);
        }
        if !entry.access.contains(required) {
            return Err(AccessError::AccessDenied);
        }
        Ok((raw, range_in(entry, addr, len)?))
    }
}

fn raw_key(key: Key) -> u32 {
    match key {
        Key::Local(Lkey(k)) | Key::Remote(Rkey(k)) => k,
    }
}

fn range_in(entry: &Entry, addr: u64, len: u64) -> Result<std::ops::Range<usize>, AccessError> {
    let start = addr
        .checked_sub(entry.addr)
        .ok_or(AccessError::OutOfBounds)?;
    let end = start.checked_add(len).ok_or(AccessError::OutOfBounds)?;
    if end > entry.bytes.bytes().len() as u64 {
        return Err(AccessError::OutOfBounds);
    }
    // Both fit in usize: they are at most the buffer's length.
    Ok(start as usize..end as usize)
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
        let (raw, range) = self.checked(key, pd, addr, out.len() as u64, required)?;
        let entry = self.entry(raw).ok_or(AccessError::InvalidKey)?;
        out.copy_from_slice(&entry.bytes.bytes()[range]);
        Ok(())
    }

    fn write(
        &mut self,
        key: Key,
        pd: ProtectionDomain,
        addr: u64,
        data: &[u8],
        required: AccessFlags,
    ) -> Result<(), AccessError> {
        let (raw, range) = self.checked(key, pd, addr, data.len() as u64, required)?;
        let entry = self.entry_mut(raw).ok_or(AccessError::InvalidKey)?;
        entry.bytes.bytes_mut()[range].copy_from_slice(data);
        Ok(())
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
        let (raw, range) =
            self.checked(Key::Remote(rkey), pd, addr, 8, AccessFlags::REMOTE_ATOMIC)?;
        let entry = self.entry_mut(raw).ok_or(AccessError::InvalidKey)?;
        let cell = &mut entry.bytes.bytes_mut()[range];
        let mut word = [0u8; 8];
        word.copy_from_slice(cell);
        let original = u64::from_ne_bytes(word);
        let new = match op {
            AtomicOp::CompareSwap { compare, swap } => {
                if original == compare {
                    swap
                } else {
                    original
                }
            }
            AtomicOp::FetchAdd { add } => original.wrapping_add(add),
        };
        cell.copy_from_slice(&new.to_ne_bytes());
        Ok(original)
    }

    fn invalidate(&mut self, key: Key, pd: ProtectionDomain) -> Result<(), AccessError> {
        let entry = self
            .entry_mut(raw_key(key))
            .ok_or(AccessError::InvalidKey)?;
        if entry.pd != pd {
            return Err(AccessError::PdMismatch);
        }
        if !entry.valid {
            return Err(AccessError::InvalidKey);
        }
        entry.valid = false;
        Ok(())
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
        assert_eq!(
            table.owner_range(mr.lkey, mr.addr + 8, 8).unwrap(),
            &1u64.to_ne_bytes()
        );
    }

    #[test]
    fn deregistered_and_invalidated_keys_fail() {
        let (mut table, mr) = table_with(AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE);
        let key = Key::Remote(mr.rkey);
        assert_eq!(table.invalidate(key, PD), Ok(()));
        assert_eq!(
            table.write(key, PD, mr.addr, &[1], AccessFlags::REMOTE_WRITE),
            Err(AccessError::InvalidKey)
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
}

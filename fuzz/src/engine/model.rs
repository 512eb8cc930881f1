//! What the `engine` target knows independently of the engine: every region's bytes as
//! last seen, which of them a permitted operation may have changed since, and the byte
//! patterns that tell one namespace's memory from another's on the wire.

use ferroce_transport::engine::{AccessFlags, MemoryRegion, ProtectionDomain};

/// Every 8-byte word of a fresh region is `[TAG_0, TAG_1, namespace tag, region serial,
/// offset high, offset low, 0x3c, 0xc3]`: three bytes name the namespace, so any three
/// consecutive bytes of a foreign region in a packet are recognised.
const TAG_0: u8 = 0xa5;
const TAG_1: u8 = 0x5a;
/// Bytes from the input never carry `TAG_0` (see [`sanitize`]): only memory can.
const TAG_0_STANDIN: u8 = 0xa4;

/// The byte naming namespace `ns` in its regions' pattern.
fn namespace_tag(ns: usize) -> u8 {
    0xe0 | ns as u8
}

/// The namespace a three-byte tag prefix at the start of `bytes` names, if any.
fn tagged_namespace(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [TAG_0, TAG_1, tag, ..] if tag & 0xf0 == 0xe0 => Some(usize::from(tag & 0x0f)),
        _ => None,
    }
}

/// The known bytes of region `serial` of namespace `ns`.
pub fn pattern(ns: usize, serial: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let word = i / 8;
            [
                TAG_0,
                TAG_1,
                namespace_tag(ns),
                serial,
                (word >> 8) as u8,
                word as u8,
                0x3c,
                0xc3,
            ][i % 8]
        })
        .collect()
}

/// Input bytes headed into the engine lose every `TAG_0`, so a namespace's tag in a
/// packet can only have come out of memory.
pub fn sanitize(bytes: &mut [u8]) {
    for byte in bytes {
        if *byte == TAG_0 {
            *byte = TAG_0_STANDIN;
        }
    }
}

/// [`sanitize`] for a 64-bit operand.
pub fn sanitize_u64(value: u64) -> u64 {
    let mut bytes = value.to_be_bytes();
    sanitize(&mut bytes);
    u64::from_be_bytes(bytes)
}

/// One registered region as the model sees it.
#[derive(Debug)]
pub struct Region {
    pub mr: MemoryRegion,
    /// Its bytes at the last check.
    pub seen: Vec<u8>,
    /// Bytes some permitted operation may have written (since registration).
    pub writable: Vec<bool>,
}

impl Region {
    pub fn new(mr: MemoryRegion, bytes: Vec<u8>) -> Region {
        let len = bytes.len();
        Region {
            mr,
            seen: bytes,
            writable: vec![false; len],
        }
    }

    /// The offset of `[addr, addr + len)` in this region, when it lies inside.
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<usize> {
        let start = addr.checked_sub(self.mr.addr)?;
        let end = start.checked_add(len)?;
        (end <= self.mr.length).then_some(start as usize)
    }

    /// Marks `[addr, addr + len)` writable when it lies inside and the region grants
    /// `access` to `pd`; returns whether it did.
    pub fn permit(
        &mut self,
        pd: ProtectionDomain,
        access: AccessFlags,
        addr: u64,
        len: u64,
    ) -> bool {
        if self.mr.pd != pd || !self.mr.access.contains(access) {
            return false;
        }
        match self.offset_of(addr, len) {
            Some(start) => {
                self.writable[start..start + len as usize].fill(true);
                true
            }
            None => false,
        }
    }
}

/// Windows of memory that came to hold another namespace's tag legitimately (a
/// FETCH_ADD can make any 8 bytes); a packet carrying exactly those bytes is no leak.
#[derive(Debug, Default)]
pub struct Forged {
    windows: Vec<Vec<u8>>,
}

/// Windows compared: a whole pattern word.
const WINDOW: usize = 8;
/// Forged windows remembered at most (an input has a bounded number of steps).
const MAX_FORGED: usize = 4096;

impl Forged {
    /// Records the foreign tags of `bytes` (a namespace `ns` region) that start in
    /// `changed`, a range of offsets where bytes just changed, or up to a window before.
    pub fn record(&mut self, ns: usize, bytes: &[u8], changed: std::ops::Range<usize>) {
        let from = changed.start.saturating_sub(WINDOW - 1);
        let to = changed.end.min(bytes.len());
        for at in tag_candidates(&bytes[from..to]).map(|i| from + i) {
            let window = &bytes[at..(at + WINDOW).min(bytes.len())];
            if tagged_namespace(window).is_some_and(|other| other != ns)
                && self.windows.len() < MAX_FORGED
                && !self.windows.iter().any(|w| w == window)
            {
                self.windows.push(window.to_vec());
            }
        }
    }

    fn excuses(&self, window: &[u8]) -> bool {
        self.windows
            .iter()
            .any(|w| w.starts_with(window) || window.starts_with(w))
    }
}

/// Where `TAG_0` may be in `bytes`: each 8-byte block that holds one is searched, the
/// rest skipped with word arithmetic (a byte loop costs a coverage callback per byte,
/// which made the target ten times slower).
fn tag_candidates(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    bytes.chunks(8).enumerate().flat_map(|(block, chunk)| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ (ONES * u64::from(TAG_0));
        // Non-zero exactly when some byte of `v` is zero, i.e. a byte was TAG_0.
        let hit = v.wrapping_sub(ONES) & !v & HIGHS;
        let span = if hit == 0 { 0..0 } else { 0..chunk.len() };
        span.map(move |i| block * 8 + i)
    })
}

/// The first foreign tag in `bytes`, sent by namespace `ns`, that its own memory never
/// held: `(offset, namespace it names)`.
pub fn foreign_tag(ns: usize, bytes: &[u8], forged: &Forged) -> Option<(usize, usize)> {
    tag_candidates(bytes).find_map(|at| {
        let window = &bytes[at..(at + WINDOW).min(bytes.len())];
        let other = tagged_namespace(window).filter(|&other| other != ns)?;
        (!forged.excuses(window)).then_some((at, other))
    })
}

/// Bytes compared at once when looking for changes (equal blocks cost one `memcmp`).
const BLOCK: usize = 64;

/// Compares `now` with what the region held at the last check. Returns the first
/// changed offset no permitted operation could have written, and records the changes.
pub fn check_region(
    ns: usize,
    region: &mut Region,
    now: &[u8],
    forged: &mut Forged,
) -> Option<usize> {
    if region.seen == now {
        return None;
    }
    for block in (0..now.len()).step_by(BLOCK) {
        let end = (block + BLOCK).min(now.len());
        if region.seen[block..end] == now[block..end] {
            continue;
        }
        let changed = (block..end).find(|&at| now[at] != region.seen[at] && !region.writable[at]);
        if changed.is_some() {
            return changed;
        }
        forged.record(ns, now, block..end);
    }
    region.seen.copy_from_slice(now);
    None
}

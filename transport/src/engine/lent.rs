//! Payloads sent straight from registered memory. Copying a 4 KiB payload into the
//! packet buffer costs about as much as the ICRC over it, and the kernel copies it again
//! anyway; a datagram can instead point at the bytes where they are, for the I/O layer
//! to gather.
//!
//! The bytes stay put only while the engine does nothing but transmit: any other call
//! may write the region or deregister it. So lent datagrams come only from a
//! [`Lending`] round, which holds the engine mutably borrowed, and carry that borrow's
//! lifetime: none outlives the round, none can be cloned, and the engine is usable again
//! only once every one has been sent or [owned](LentDatagram::own). No `unsafe` here:
//! the bytes are read by [`LentBytes`], in the memory code.

use std::marker::PhantomData;

use super::memory::LentBytes;
use super::{Datagram, DatagramMeta, Engine, Time};

/// Payload bytes a [`LentDatagram`] carries from registered memory during the round
/// `'r`: they go at `at` in its payload, between the headers and the pad.
#[derive(Debug)]
pub struct Lent<'r> {
    at: usize,
    bytes: LentBytes,
    /// The round's borrow of the engine, which keeps the bytes registered and unwritten.
    round: PhantomData<&'r mut Engine>,
}

impl Lent<'_> {
    /// Where in the datagram's own bytes the lent ones belong.
    pub fn at(&self) -> usize {
        self.at
    }

    /// The first lent byte, for an iovec (the kernel reads there).
    pub fn as_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }

    /// Number of lent bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A datagram of a [`Lending`] round: the bytes it holds itself (the whole UDP payload,
/// or all but the lent bytes) and maybe lent ones, valid for the round `'r`. Neither
/// `Clone` nor `Copy`; [`own`](LentDatagram::own) it to keep it past the round. A
/// `LentDatagram<'static>` lends nothing ([`From<Datagram>`]).
#[derive(Debug)]
pub struct LentDatagram<'r> {
    datagram: Datagram,
    lent: Option<Lent<'r>>,
}

impl<'r> LentDatagram<'r> {
    /// Addresses, source port and ECN.
    pub fn meta(&self) -> &DatagramMeta {
        &self.datagram.meta
    }

    /// Bytes on the wire (the UDP payload), lent ones included.
    pub fn len(&self) -> usize {
        self.datagram.payload.len() + self.lent.as_ref().map_or(0, Lent::len)
    }

    /// True for an empty UDP payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lent bytes, if any.
    pub fn lent(&self) -> Option<&Lent<'r>> {
        self.lent.as_ref()
    }

    /// The bytes the datagram holds itself, in wire order around the lent ones (which
    /// go at [`Lent::at`]); the ICRC is their last four.
    pub fn held(&self) -> &[u8] {
        &self.datagram.payload
    }

    /// [`held`](LentDatagram::held), writable.
    pub fn held_mut(&mut self) -> &mut [u8] {
        &mut self.datagram.payload
    }

    /// The buffer of the bytes it holds, for reuse once the datagram is sent.
    pub fn into_buffer(self) -> Vec<u8> {
        self.datagram.payload
    }

    /// The datagram with its lent bytes copied in, no longer tied to the round.
    pub fn own(self) -> Datagram {
        let LentDatagram { mut datagram, lent } = self;
        if let Some(lent) = lent {
            let payload = &mut datagram.payload;
            let at = lent.at.min(payload.len());
            // Appended, then rotated into place past the few bytes after them (pad and
            // ICRC): two block copies, where inserting through an iterator went byte by
            // byte.
            lent.bytes.append_to(payload);
            payload[at..].rotate_right(lent.len());
        }
        datagram
    }

    /// Owns every datagram of `queue`, keeping its allocation, so it can wait past the
    /// round (for a kernel buffer with room, say).
    pub fn own_all(queue: Vec<LentDatagram<'r>>) -> Vec<LentDatagram<'static>> {
        // Same layout in and out: collected in place.
        queue
            .into_iter()
            .map(|d| LentDatagram::from(d.own()))
            .collect()
    }
}

impl From<Datagram> for LentDatagram<'static> {
    fn from(datagram: Datagram) -> LentDatagram<'static> {
        LentDatagram {
            datagram,
            lent: None,
        }
    }
}

/// `datagram` whole, for a step that does not lend (nothing is lent then; should
/// anything be, it is copied in at once, while it is still valid).
pub(super) fn owned_now(datagram: Datagram, lent: Option<(usize, LentBytes)>) -> Datagram {
    let lent = lent.map(|(at, bytes)| Lent {
        at,
        bytes,
        round: PhantomData,
    });
    LentDatagram { datagram, lent }.own()
}

/// A transmit round whose datagrams may carry payloads from registered memory instead
/// of copies ([`Engine::lending`]). It holds the engine: until every [`LentDatagram`] it
/// gave is sent or owned, the engine can do nothing else, so lent bytes stay registered
/// and unwritten.
///
/// A lent datagram cannot outlive the round:
///
/// ```compile_fail,E0499
/// # use ferroce_transport::engine::{Engine, EngineConfig, Time};
/// let mut engine = Engine::new(EngineConfig::default(), 1);
/// let mut out = Vec::new();
/// engine.lending().poll_transmit_into(Time::ZERO, &mut out, 64);
/// engine.handle_timeout(Time::ZERO); // Any other use: refused while `out` lives.
/// drop(out);
/// ```
///
/// Once every one is sent or owned, the engine is free again:
///
/// ```
/// # use ferroce_transport::engine::{Engine, EngineConfig, LentDatagram, Time};
/// let mut engine = Engine::new(EngineConfig::default(), 1);
/// let mut out = Vec::new();
/// engine.lending().poll_transmit_into(Time::ZERO, &mut out, 64);
/// let kept: Vec<_> = out.into_iter().map(LentDatagram::own).collect();
/// engine.handle_timeout(Time::ZERO);
/// drop(kept);
/// ```
///
/// Nor can one be copied:
///
/// ```compile_fail,E0599
/// # use ferroce_transport::engine::{Engine, EngineConfig, Time};
/// let mut engine = Engine::new(EngineConfig::default(), 1);
/// let mut out = Vec::new();
/// engine.lending().poll_transmit_into(Time::ZERO, &mut out, 64);
/// let copy = out[0].clone();
/// ```
#[derive(Debug)]
pub struct Lending<'e> {
    engine: &'e mut Engine,
}

impl<'e> Lending<'e> {
    pub(super) fn new(engine: &'e mut Engine) -> Lending<'e> {
        Lending { engine }
    }

    /// [`Engine::poll_transmit_into`], with payloads of at least 512 bytes from one SGE
    /// lent rather than copied.
    pub fn poll_transmit_into(
        &mut self,
        now: Time,
        out: &mut Vec<LentDatagram<'e>>,
        max: usize,
    ) -> usize {
        self.engine.transmit(now, max, true, |datagram, lent| {
            let lent = lent.map(|(at, bytes)| Lent {
                at,
                bytes,
                round: PhantomData,
            });
            out.push(LentDatagram { datagram, lent });
        })
    }

    /// [`Engine::recycle`].
    pub fn recycle(&mut self, payload: Vec<u8>) {
        self.engine.recycle(payload);
    }
}

/// Tests outside the engine (the I/O layer's gather) lend from a table of their own:
/// its shared borrow is their round.
#[cfg(test)]
impl<'t> LentDatagram<'t> {
    /// `datagram` with the `len` bytes at `offset` in `mr` (of `table`) lent at `at`.
    pub(crate) fn lent_from(
        datagram: Datagram,
        at: usize,
        table: &'t super::memory::MemoryTable,
        mr: &super::MemoryRegion,
        (offset, len): (u64, usize),
    ) -> LentDatagram<'t> {
        let lent = Lent {
            at,
            bytes: tests::lend(table, mr, offset, len),
            round: PhantomData,
        };
        LentDatagram {
            datagram,
            lent: Some(lent),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::memory::{Key, MemoryAccess, MemoryTable};
    use crate::engine::{AccessFlags, Ecn, MemoryRegion, ProtectionDomain};

    /// 12 header bytes, then pad and ICRC, around `bytes`: owned, they land between.
    pub(crate) fn check_owned(bytes: LentBytes, expect: &[u8]) {
        let datagram = Datagram {
            meta: DatagramMeta {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                src_port: 4791,
                ecn: Ecn::NotEct,
                ipv4_ident: None,
            },
            payload: [[0xaa; 12].as_slice(), &[0xee; 6]].concat(),
        };
        let lent = Lent {
            at: 12,
            bytes,
            round: PhantomData,
        };
        let lent = LentDatagram {
            datagram,
            lent: Some(lent),
        };
        let len = lent.len();
        assert_eq!(len, 18 + expect.len());
        let owned = lent.own();
        assert_eq!(owned.payload.len(), len);
        assert_eq!(owned.payload[..12], [0xaa; 12]);
        assert_eq!(owned.payload[12..len - 6], expect[..]);
        assert_eq!(owned.payload[len - 6..], [0xee; 6]);
    }

    /// The `len` bytes at `offset` in `mr` (registered in `table` with PD 1), lent by
    /// its local key.
    pub(crate) fn lend(
        table: &MemoryTable,
        mr: &MemoryRegion,
        offset: u64,
        len: usize,
    ) -> LentBytes {
        let (key, pd) = (Key::Local(mr.lkey), ProtectionDomain(1));
        table
            .lend(key, pd, mr.addr + offset, len, AccessFlags::NONE)
            .expect("lendable")
    }

    #[test]
    fn owning_puts_the_lent_bytes_between_headers_and_trailer() {
        let mut table = MemoryTable::default();
        let pd = ProtectionDomain(1);
        let mr = table.register(pd, 1000, AccessFlags::NONE, 1, 0).unwrap();
        let region: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        table.owner_write(mr.lkey, mr.addr, &region).unwrap();
        check_owned(lend(&table, &mr, 0, 600), &region[..600]);
        check_owned(lend(&table, &mr, 300, 700), &region[300..]);
    }
}

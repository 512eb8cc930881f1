//! Payloads sent straight from registered memory. Copying a 4 KiB payload into the
//! packet buffer costs about as much as the ICRC over it, and the kernel copies it again
//! anyway; a datagram can instead point at the bytes where they are, for the I/O layer
//! to gather (see [`Engine::lend_payloads`](super::Engine::lend_payloads), whose
//! contract keeps the pointer valid).
#![allow(unsafe_code)]

use std::ptr::NonNull;

use super::Datagram;

/// Payload bytes a [`Datagram`] carries from registered memory: they go at `at` in its
/// `payload`, between the headers and the pad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lent {
    /// Where in the datagram's `payload` the bytes belong.
    pub at: usize,
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: a pointer and a length, read (never written) only while the engine's lending
// contract keeps the memory valid and unwritten, from whichever thread runs the engine.
unsafe impl Send for Lent {}

impl Lent {
    pub(crate) fn new(at: usize, start: NonNull<u8>, len: usize) -> Lent {
        Lent { at, start, len }
    }

    /// The first lent byte, for an iovec.
    pub fn as_ptr(&self) -> *const u8 {
        self.start.as_ptr()
    }

    /// Number of lent bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lent bytes.
    ///
    /// # Safety
    ///
    /// The memory they were lent from is still registered and unwritten: the engine has
    /// run nothing but `poll_transmit` since (the contract of `lend_payloads`).
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: the caller's promise; `MemoryAccess::lend` checked the range.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl Datagram {
    /// Bytes on the wire (the UDP payload), lent ones included.
    pub fn len(&self) -> usize {
        self.payload.len() + self.lent.map_or(0, |lent| lent.len)
    }

    /// True for an empty UDP payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies lent bytes into `payload`, so the datagram no longer needs the memory they
    /// came from (it was not sent in the step that built it).
    pub fn own(&mut self) {
        if let Some(lent) = self.lent.take() {
            // SAFETY: a lent datagram exists only within the step that built it, which
            // calls this before the engine runs anything that could write or free the
            // memory (`Engine::lend_payloads`' contract).
            let bytes = unsafe { lent.bytes() };
            let at = lent.at.min(self.payload.len());
            // Appended, then rotated into place past the few bytes after them (pad and
            // ICRC): two block copies, where inserting through an iterator went byte by
            // byte.
            self.payload.extend_from_slice(bytes);
            self.payload[at..].rotate_right(bytes.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DatagramMeta, Ecn};

    #[test]
    fn owning_puts_the_lent_bytes_between_headers_and_trailer() {
        let region: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let mut datagram = Datagram {
            meta: DatagramMeta {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                src_port: 4791,
                ecn: Ecn::NotEct,
                ipv4_ident: None,
            },
            // 12 header bytes, then pad and ICRC.
            payload: [[0xaa; 12].as_slice(), &[0xee; 6]].concat(),
            lent: Some(Lent::new(12, NonNull::from(&region[0]), region.len())),
        };
        let len = datagram.len();
        datagram.own();
        assert!(datagram.lent.is_none());
        assert_eq!(datagram.payload.len(), len);
        assert_eq!(datagram.payload[..12], [0xaa; 12]);
        assert_eq!(datagram.payload[12..612], region[..]);
        assert_eq!(datagram.payload[612..], [0xee; 6]);
    }
}

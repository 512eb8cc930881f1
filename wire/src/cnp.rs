//! The RoCEv2 Congestion Notification Packet body: 16 reserved bytes after the BTH.
//!
//! A CNP is BTH opcode 0x81 with BECN set, the destination QP of the congested flow,
//! then these 16 bytes (zero on send, ignored on receive) and the ICRC.

use core::fmt;

use crate::Result;

/// Length of the reserved CNP body.
pub const HEADER_LEN: usize = 16;

header_view!("a CNP body", HEADER_LEN);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The reserved bytes.
    pub fn reserved(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Zeroes the reserved bytes.
    pub fn clear(&mut self) {
        self.buffer.as_mut()[..HEADER_LEN].fill(0);
    }
}

/// A parsed CNP body (it carries no information).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Repr;

impl Repr {
    /// Reads a CNP body; only its length matters.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr)
    }

    /// Length of the emitted body.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes 16 zero bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.clear();
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CNP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_zeroes() {
        let mut out = [0xaau8; HEADER_LEN];
        Repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, [0u8; HEADER_LEN]);
        assert!(Packet::new_checked(&out[..15]).is_err());
    }
}

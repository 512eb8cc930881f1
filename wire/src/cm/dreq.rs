//! DREQ, request for communication release (IBA 12.6.10, table 112): either side
//! disconnects; it names the QP the receiver should flush.
//!
//! ```text
//!  0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//!  8 | Remote QPN/EECN (24) | reserved
//! 12 | private data (220)
//! ```

use core::fmt;

use super::{write_padded, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::{Qpn, Result};

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 220;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    pub const REMOTE_QPN: Field = 8..11;
    pub const PRIVATE_DATA: Field = 12..232;
}

header_view!("a CM DREQ", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The receiver's QP (or EE context) being released.
    pub fn remote_qpn(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::REMOTE_QPN]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the receiver's QP.
    pub fn set_remote_qpn(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::REMOTE_QPN], qpn.value());
    }
}

/// A parsed DREQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The receiver's communication ID.
    pub remote_comm_id: u32,
    /// The receiver's QP.
    pub remote_qpn: Qpn,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a DREQ.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            remote_qpn: packet.remote_qpn(),
            private_data: packet.private_data(),
        })
    }

    /// Length of the emitted message.
    pub const fn buffer_len(&self) -> usize {
        MESSAGE_LEN
    }

    /// Writes the message, zero-filling the private data beyond what `private_data`
    /// holds. Fails with [`crate::Error::Malformed`] when the private data is longer
    /// than [`PRIVATE_DATA_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        packet.check_len()?;
        packet.buffer.as_mut()[..MESSAGE_LEN].fill(0);
        write_padded(packet.private_data_mut(), self.private_data)?;
        packet.set_local_comm_id(self.local_comm_id);
        packet.set_remote_comm_id(self.remote_comm_id);
        packet.set_remote_qpn(self.remote_qpn);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DREQ comm_id={:#010x} remote_comm_id={:#010x} remote_qpn={}",
            self.local_comm_id, self.remote_comm_id, self.remote_qpn
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, DREQ, REP};
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn parses_rpings_dreq() {
        let mads = rping_mads();
        let data = &mads[DREQ][crate::mad::HEADER_LEN..];
        let repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        let rep =
            crate::cm::rep::Packet::new_checked(&mads[REP][crate::mad::HEADER_LEN..]).unwrap();
        // The client disconnects: its comm ID first, the server's QP to flush.
        assert_eq!(repr.local_comm_id, 0x8f4e_3c9d);
        assert_eq!(repr.local_comm_id, rep.remote_comm_id());
        assert_eq!(repr.remote_comm_id, rep.local_comm_id());
        assert_eq!(repr.remote_qpn, rep.local_qpn());
        assert_eq!(repr.remote_qpn, Qpn::new(0x11));
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..], data);
        assert_eq!(
            Packet::new_checked(&data[..11]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_dreq_round_trips(
            local in any::<u32>(),
            remote in any::<u32>(),
            qpn in 0..1u32 << 24,
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: local,
                remote_comm_id: remote,
                remote_qpn: Qpn::new(qpn),
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

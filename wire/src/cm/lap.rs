//! LAP, load alternate path (IBA 12.8.1, table 115): asks to change a connection's
//! alternate path. ferroce parses it so that the engine can refuse it (APR
//! "unsupported") as a CM without path migration does.
//!
//! ```text
//!  0 | Local Communication ID (32) | 4 | Remote Communication ID (32)
//!  8 | reserved (32)               | 12 | Remote QPN/EECN (24) | RemoteCMTimeout:5 reserved:3
//! 16 | reserved (32)               | 20 | Alt Local LID (16) | Alt Remote LID (16)
//! 24 | Alt Local GID (128)         | 40 | Alt Remote GID (128)
//! 56 | Alt Flow Label:20 reserved:4 | Traffic Class | Hop Limit | reserved:2 Rate:6 |
//! 62 | SL:4 SubnetLocal:1 reserved:3 | LocalAckTimeout:5 reserved:3
//! 64 | private data (168)
//! ```

use core::fmt;

use super::req::Path;
use super::{write_padded, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::{Gid, Qpn, Result};

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 168;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    pub const REMOTE_QPN: Field = 12..15;
    /// Remote CM response timeout (bits 7-3).
    pub const REMOTE_TIMEOUT: usize = 15;
    pub const ALT_LOCAL_LID: Field = 20..22;
    pub const ALT_REMOTE_LID: Field = 22..24;
    pub const ALT_LOCAL_GID: Field = 24..40;
    pub const ALT_REMOTE_GID: Field = 40..56;
    /// Flow label (bits 31-12 of the word); the word's last byte is the traffic class.
    pub const ALT_FLOW_LABEL: Field = 56..60;
    pub const ALT_TRAFFIC_CLASS: usize = 59;
    pub const ALT_HOP_LIMIT: usize = 60;
    /// Packet rate (bits 5-0).
    pub const ALT_RATE: usize = 61;
    /// SL (bits 7-4), subnet local (3).
    pub const ALT_SL: usize = 62;
    /// Local ACK timeout (bits 7-3).
    pub const ALT_ACK_TIMEOUT: usize = 63;
    pub const PRIVATE_DATA: Field = 64..232;
}

header_view!("a CM LAP", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The receiver's QP (or EE context).
    pub fn remote_qpn(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::REMOTE_QPN]))
    }

    /// How long the receiver may take to answer (5 bits).
    pub fn remote_cm_response_timeout(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::REMOTE_TIMEOUT], 3, 5)
    }

    /// The alternate path asked for.
    pub fn alternate_path(&self) -> Path {
        let b = self.buffer.as_ref();
        Path {
            local_lid: field::get_u16(&b[fields::ALT_LOCAL_LID]),
            remote_lid: field::get_u16(&b[fields::ALT_REMOTE_LID]),
            local_gid: Gid(field::get_u128(&b[fields::ALT_LOCAL_GID])),
            remote_gid: Gid(field::get_u128(&b[fields::ALT_REMOTE_GID])),
            flow_label: field::get_u32(&b[fields::ALT_FLOW_LABEL]) >> 12,
            packet_rate: field::get_bits(b[fields::ALT_RATE], 0, 6),
            traffic_class: b[fields::ALT_TRAFFIC_CLASS],
            hop_limit: b[fields::ALT_HOP_LIMIT],
            sl: field::get_bits(b[fields::ALT_SL], 4, 4),
            subnet_local: field::get_bits(b[fields::ALT_SL], 3, 1) != 0,
            local_ack_timeout: field::get_bits(b[fields::ALT_ACK_TIMEOUT], 3, 5),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the receiver's QP.
    pub fn set_remote_qpn(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::REMOTE_QPN], qpn.value());
    }

    /// Sets the remote CM response timeout (reserved bits cleared).
    pub fn set_remote_cm_response_timeout(&mut self, timeout: u8) {
        self.buffer.as_mut()[fields::REMOTE_TIMEOUT] = (timeout & 0x1f) << 3;
    }

    /// Sets the alternate path (reserved bits cleared).
    pub fn set_alternate_path(&mut self, path: &Path) {
        let b = self.buffer.as_mut();
        b[fields::ALT_LOCAL_LID].copy_from_slice(&path.local_lid.to_be_bytes());
        b[fields::ALT_REMOTE_LID].copy_from_slice(&path.remote_lid.to_be_bytes());
        b[fields::ALT_LOCAL_GID].copy_from_slice(&path.local_gid.0);
        b[fields::ALT_REMOTE_GID].copy_from_slice(&path.remote_gid.0);
        let word = ((path.flow_label & 0xf_ffff) << 12) | u32::from(path.traffic_class);
        b[fields::ALT_FLOW_LABEL].copy_from_slice(&word.to_be_bytes());
        b[fields::ALT_HOP_LIMIT] = path.hop_limit;
        b[fields::ALT_RATE] = path.packet_rate & 0x3f;
        b[fields::ALT_SL] = ((path.sl & 0xf) << 4) | (u8::from(path.subnet_local) << 3);
        b[fields::ALT_ACK_TIMEOUT] = (path.local_ack_timeout & 0x1f) << 3;
    }
}

/// A parsed LAP.
///
/// Reserved bits are not kept: `emit` writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The receiver's communication ID.
    pub remote_comm_id: u32,
    /// The receiver's QP.
    pub remote_qpn: Qpn,
    /// Remote CM response timeout (5 bits).
    pub remote_cm_response_timeout: u8,
    /// The alternate path asked for.
    pub alternate_path: Path,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a LAP.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            remote_qpn: packet.remote_qpn(),
            remote_cm_response_timeout: packet.remote_cm_response_timeout(),
            alternate_path: packet.alternate_path(),
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
        packet.set_remote_cm_response_timeout(self.remote_cm_response_timeout);
        packet.set_alternate_path(&self.alternate_path);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LAP comm_id={:#010x} remote_comm_id={:#010x} remote_qpn={} alt_gid={} -> {}",
            self.local_comm_id,
            self.remote_comm_id,
            self.remote_qpn,
            self.alternate_path.local_gid,
            self.alternate_path.remote_gid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::req::tests::path;
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn path_layout_differs_from_req() {
        let repr = Repr {
            local_comm_id: 1,
            remote_comm_id: 2,
            remote_qpn: Qpn::new(0x11),
            remote_cm_response_timeout: 20,
            alternate_path: Path {
                flow_label: 0xabcde,
                traffic_class: 0x12,
                hop_limit: 64,
                packet_rate: 0x3f,
                sl: 0xf,
                subnet_local: true,
                local_ack_timeout: 19,
                ..Path::default()
            },
            private_data: &[],
        };
        let mut out = [0xffu8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[12..16], &[0, 0, 0x11, 20 << 3]);
        assert_eq!(
            &out[56..64],
            &[0xab, 0xcd, 0xe0, 0x12, 64, 0x3f, 0xf8, 19 << 3]
        );
        assert_eq!(
            Repr::parse(&Packet::new_checked(&out[..]).unwrap()),
            Ok(Repr {
                private_data: &out[64..],
                ..repr
            })
        );
        assert_eq!(
            Packet::new_checked(&out[..64]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_lap_round_trips(
            ids in (any::<u32>(), any::<u32>(), 0..1u32 << 24, 0..32u8),
            alternate in path(),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: ids.0,
                remote_comm_id: ids.1,
                remote_qpn: Qpn::new(ids.2),
                remote_cm_response_timeout: ids.3,
                alternate_path: alternate,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

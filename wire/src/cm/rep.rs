//! REP, reply to a request for communication (IBA 12.6.8, table 110): the passive
//! side's QP and starting PSN.
//!
//! ```text
//!  0 | Local Communication ID (32)  |  4 | Remote Communication ID (32)
//!  8 | Local Q_Key (32)             | 12 | Local QPN (24) | reserved
//! 16 | Local EECN (24) | reserved   | 20 | Starting PSN (24) | reserved
//! 24 | Responder Resources | Initiator Depth | TargetAckDelay:5 Failover:2 E2EFlowCtl:1 | RNRRetry:3 SRQ:1 reserved:4
//! 28 | Local CA GUID (64)
//! 36 | private data (196)
//! ```

use core::fmt;

use super::{write_padded, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::{Psn, Qpn, Result};

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 196;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const REMOTE_COMM_ID: Field = 4..8;
    pub const LOCAL_QKEY: Field = 8..12;
    pub const LOCAL_QPN: Field = 12..15;
    pub const LOCAL_EECN: Field = 16..19;
    pub const STARTING_PSN: Field = 20..23;
    pub const RESPONDER_RESOURCES: usize = 24;
    pub const INITIATOR_DEPTH: usize = 25;
    /// Target ACK delay (bits 7-3), failover accepted (2-1), end-to-end flow control (0).
    pub const ACK_DELAY_FAILOVER: usize = 26;
    /// RNR retry count (bits 7-5), SRQ (4).
    pub const RNR_SRQ: usize = 27;
    pub const LOCAL_CA_GUID: Field = 28..36;
    pub const PRIVATE_DATA: Field = 36..232;
}

header_view!("a CM REP", MESSAGE_LEN);
comm_id_accessors!();
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The sender's Q_Key.
    pub fn local_qkey(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::LOCAL_QKEY])
    }

    /// The sender's QP.
    pub fn local_qpn(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::LOCAL_QPN]))
    }

    /// The sender's EE context (RD only).
    pub fn local_eecn(&self) -> u32 {
        field::get_u24(&self.buffer.as_ref()[fields::LOCAL_EECN])
    }

    /// The first PSN the sender will send with.
    pub fn starting_psn(&self) -> Psn {
        Psn::new(field::get_u24(&self.buffer.as_ref()[fields::STARTING_PSN]))
    }

    /// RDMA READ / atomic requests the sender accepts at once.
    pub fn responder_resources(&self) -> u8 {
        self.buffer.as_ref()[fields::RESPONDER_RESOURCES]
    }

    /// RDMA READ / atomic requests the sender issues at once.
    pub fn initiator_depth(&self) -> u8 {
        self.buffer.as_ref()[fields::INITIATOR_DEPTH]
    }

    /// The sender's ACK delay (5 bits: 4.096 µs × 2^n).
    pub fn target_ack_delay(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::ACK_DELAY_FAILOVER], 3, 5)
    }

    /// Whether the alternate path was accepted (2 bits: 0 accepted, 1 unsupported,
    /// 2 rejected).
    pub fn failover_accepted(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::ACK_DELAY_FAILOVER], 1, 2)
    }

    /// End-to-end flow control.
    pub fn end_to_end_flow_control(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::ACK_DELAY_FAILOVER], 0, 1) != 0
    }

    /// RNR retries before an error (3 bits; 7 is infinite).
    pub fn rnr_retry_count(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::RNR_SRQ], 5, 3)
    }

    /// The sender's QP uses a shared receive queue.
    pub fn srq(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::RNR_SRQ], 4, 1) != 0
    }

    /// The sender's CA GUID.
    pub fn local_ca_guid(&self) -> u64 {
        field::get_u64(&self.buffer.as_ref()[fields::LOCAL_CA_GUID])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sender's Q_Key.
    pub fn set_local_qkey(&mut self, qkey: u32) {
        self.buffer.as_mut()[fields::LOCAL_QKEY].copy_from_slice(&qkey.to_be_bytes());
    }

    /// Sets the sender's QP.
    pub fn set_local_qpn(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::LOCAL_QPN], qpn.value());
    }

    /// Sets the sender's EE context.
    pub fn set_local_eecn(&mut self, eecn: u32) {
        field::set_u24(&mut self.buffer.as_mut()[fields::LOCAL_EECN], eecn);
    }

    /// Sets the starting PSN.
    pub fn set_starting_psn(&mut self, psn: Psn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::STARTING_PSN], psn.value());
    }

    /// Sets the responder resources.
    pub fn set_responder_resources(&mut self, value: u8) {
        self.buffer.as_mut()[fields::RESPONDER_RESOURCES] = value;
    }

    /// Sets the initiator depth.
    pub fn set_initiator_depth(&mut self, value: u8) {
        self.buffer.as_mut()[fields::INITIATOR_DEPTH] = value;
    }

    /// Sets the target ACK delay, failover accepted and end-to-end flow control, which
    /// share a byte.
    pub fn set_ack_delay_failover(&mut self, ack_delay: u8, failover: u8, flow_control: bool) {
        let b = &mut self.buffer.as_mut()[fields::ACK_DELAY_FAILOVER];
        field::set_bits(b, 3, 5, ack_delay);
        field::set_bits(b, 1, 2, failover);
        field::set_bits(b, 0, 1, u8::from(flow_control));
    }

    /// Sets the RNR retry count and SRQ, which share a byte (reserved bits cleared).
    pub fn set_rnr_srq(&mut self, rnr_retry_count: u8, srq: bool) {
        let b = &mut self.buffer.as_mut()[fields::RNR_SRQ];
        *b = 0;
        field::set_bits(b, 5, 3, rnr_retry_count);
        field::set_bits(b, 4, 1, u8::from(srq));
    }

    /// Sets the sender's CA GUID.
    pub fn set_local_ca_guid(&mut self, guid: u64) {
        self.buffer.as_mut()[fields::LOCAL_CA_GUID].copy_from_slice(&guid.to_be_bytes());
    }
}

/// A parsed REP.
///
/// Reserved bits are not kept: `emit` writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The REQ sender's communication ID.
    pub remote_comm_id: u32,
    /// The sender's Q_Key.
    pub local_qkey: u32,
    /// The sender's QP.
    pub local_qpn: Qpn,
    /// The sender's EE context (24 bits).
    pub local_eecn: u32,
    /// Starting PSN.
    pub starting_psn: Psn,
    /// Responder resources.
    pub responder_resources: u8,
    /// Initiator depth.
    pub initiator_depth: u8,
    /// Target ACK delay (5 bits).
    pub target_ack_delay: u8,
    /// Failover accepted (2 bits).
    pub failover_accepted: u8,
    /// End-to-end flow control.
    pub end_to_end_flow_control: bool,
    /// RNR retry count (3 bits).
    pub rnr_retry_count: u8,
    /// Shared receive queue.
    pub srq: bool,
    /// The sender's CA GUID.
    pub local_ca_guid: u64,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a REP.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            remote_comm_id: packet.remote_comm_id(),
            local_qkey: packet.local_qkey(),
            local_qpn: packet.local_qpn(),
            local_eecn: packet.local_eecn(),
            starting_psn: packet.starting_psn(),
            responder_resources: packet.responder_resources(),
            initiator_depth: packet.initiator_depth(),
            target_ack_delay: packet.target_ack_delay(),
            failover_accepted: packet.failover_accepted(),
            end_to_end_flow_control: packet.end_to_end_flow_control(),
            rnr_retry_count: packet.rnr_retry_count(),
            srq: packet.srq(),
            local_ca_guid: packet.local_ca_guid(),
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
        packet.set_local_qkey(self.local_qkey);
        packet.set_local_qpn(self.local_qpn);
        packet.set_local_eecn(self.local_eecn);
        packet.set_starting_psn(self.starting_psn);
        packet.set_responder_resources(self.responder_resources);
        packet.set_initiator_depth(self.initiator_depth);
        packet.set_ack_delay_failover(
            self.target_ack_delay,
            self.failover_accepted,
            self.end_to_end_flow_control,
        );
        packet.set_rnr_srq(self.rnr_retry_count, self.srq);
        packet.set_local_ca_guid(self.local_ca_guid);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "REP comm_id={:#010x} remote_comm_id={:#010x} qpn={} start_psn={} resp_res={} init_depth={} rnr_retry={}",
            self.local_comm_id,
            self.remote_comm_id,
            self.local_qpn,
            self.starting_psn,
            self.responder_resources,
            self.initiator_depth,
            self.rnr_retry_count,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, REP, REQ};
    use crate::Error;
    use proptest::prelude::*;

    #[test]
    fn parses_rpings_rep_field_by_field() {
        let mads = rping_mads();
        let data = &mads[REP][crate::mad::HEADER_LEN..];
        let repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        assert_eq!(repr.local_comm_id, 0x166a_6efc);
        // The REP answers the REQ: its remote comm ID is the REQ's local one.
        let req =
            crate::cm::req::Packet::new_checked(&mads[REQ][crate::mad::HEADER_LEN..]).unwrap();
        assert_eq!(repr.remote_comm_id, req.local_comm_id());
        assert_eq!(repr.local_qkey, 0);
        assert_eq!(repr.local_qpn, Qpn::new(0x11));
        assert_eq!(repr.local_eecn, 0);
        assert_eq!(repr.starting_psn, Psn::new(0xde5aaa));
        assert_eq!((repr.responder_resources, repr.initiator_depth), (1, 1));
        assert_eq!(repr.target_ack_delay, 15);
        assert_eq!(repr.failover_accepted, 0);
        assert!(!repr.end_to_end_flow_control);
        assert_eq!(repr.rnr_retry_count, 7);
        assert!(!repr.srq);
        assert_eq!(repr.local_ca_guid, 0x5054_00ff_fe77_0002);
        assert!(repr.private_data.iter().all(|&b| b == 0));

        let mut out = [0x55u8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..], data);
        assert_eq!(
            Packet::new_checked(&data[..MESSAGE_LEN - 1]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn any_rep_round_trips(
            ids in (any::<u32>(), any::<u32>(), any::<u32>(), 0..1u32 << 24, 0..1u32 << 24, 0..1u32 << 24),
            res in (any::<u8>(), any::<u8>(), 0..32u8, 0..4u8, any::<bool>(), 0..8u8, any::<bool>(), any::<u64>()),
            private in proptest::collection::vec(any::<u8>(), 0..=PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: ids.0,
                remote_comm_id: ids.1,
                local_qkey: ids.2,
                local_qpn: Qpn::new(ids.3),
                local_eecn: ids.4,
                starting_psn: Psn::new(ids.5),
                responder_resources: res.0,
                initiator_depth: res.1,
                target_ack_delay: res.2,
                failover_accepted: res.3,
                end_to_end_flow_control: res.4,
                rnr_retry_count: res.5,
                srq: res.6,
                local_ca_guid: res.7,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            let parsed = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
            // Private data comes back zero-filled to the whole field.
            prop_assert_eq!(&parsed.private_data[..private.len()], &private[..]);
            prop_assert!(parsed.private_data[private.len()..].iter().all(|&b| b == 0));
            prop_assert_eq!(parsed, Repr { private_data: parsed.private_data, ..repr });
        }
    }
}

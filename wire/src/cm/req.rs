//! REQ, request for communication (IBA 12.6.5, table 106): the active side's QP, its
//! starting PSN and the path, sent to a service ID.
//!
//! ```text
//!   0 | Local Communication ID (32)               |   4 | reserved (32)
//!   8 | Service ID (64)                                               |
//!  16 | Local CA GUID (64)                                            |
//!  24 | reserved (32)                              |  28 | Local Q_Key (32)
//!  32 | Local QPN (24)         | Responder Resources |
//!  36 | Local EECN (24)        | Initiator Depth     |
//!  40 | Remote EECN (24)       | RemoteCMTimeout:5 TransportType:2 E2EFlowCtl:1 |
//!  44 | Starting PSN (24)      | LocalCMTimeout:5 RetryCount:3 |
//!  48 | P_Key (16) | MTU:4 RDC:1 RNRRetry:3 | MaxCMRetries:4 SRQ:1 ExtTransport:3 |
//!  52 | primary path (44)     |  96 | alternate path (44; SAP supported in its last byte)
//! 140 | private data (92)
//! ```

use core::fmt;

use super::{write_padded, ServiceId, MESSAGE_LEN};
use crate::field::{self, Field};
use crate::{Gid, Psn, Qpn, Result};

/// Length of the private data field.
pub const PRIVATE_DATA_LEN: usize = 92;
/// Length of a path description inside a REQ.
pub const PATH_LEN: usize = 44;

mod fields {
    use super::Field;
    pub const LOCAL_COMM_ID: Field = 0..4;
    pub const SERVICE_ID: Field = 8..16;
    pub const LOCAL_CA_GUID: Field = 16..24;
    pub const LOCAL_QKEY: Field = 28..32;
    pub const LOCAL_QPN: Field = 32..35;
    pub const RESPONDER_RESOURCES: usize = 35;
    pub const LOCAL_EECN: Field = 36..39;
    pub const INITIATOR_DEPTH: usize = 39;
    pub const REMOTE_EECN: Field = 40..43;
    /// Remote CM response timeout (bits 7-3), transport service type (2-1), end-to-end
    /// flow control (0).
    pub const REMOTE_TIMEOUT_TRANSPORT: usize = 43;
    pub const STARTING_PSN: Field = 44..47;
    /// Local CM response timeout (bits 7-3), retry count (2-0).
    pub const LOCAL_TIMEOUT_RETRY: usize = 47;
    pub const PKEY: Field = 48..50;
    /// Path MTU (bits 7-4), RDC exists (3), RNR retry count (2-0).
    pub const MTU_RNR: usize = 50;
    /// Max CM retries (bits 7-4), SRQ (3), extended transport type (2-0).
    pub const CM_RETRIES_SRQ: usize = 51;
    pub const PRIMARY_PATH: Field = 52..96;
    pub const ALTERNATE_PATH: Field = 96..140;
    /// In the alternate path's last byte: SAP supported (bit 2).
    pub const SAP_SUPPORTED: usize = 139;
    pub const PRIVATE_DATA: Field = 140..232;

    /// Offsets inside a path description.
    pub mod path {
        use super::Field;
        pub const LOCAL_LID: Field = 0..2;
        pub const REMOTE_LID: Field = 2..4;
        pub const LOCAL_GID: Field = 4..20;
        pub const REMOTE_GID: Field = 20..36;
        /// Flow label (bits 31-12 of the word), reserved, packet rate (bits 5-0).
        pub const FLOW_LABEL_RATE: Field = 36..40;
        pub const TRAFFIC_CLASS: usize = 40;
        pub const HOP_LIMIT: usize = 41;
        /// SL (bits 7-4), subnet local (3).
        pub const SL: usize = 42;
        /// Local ACK timeout (bits 7-3).
        pub const ACK_TIMEOUT: usize = 43;
    }
}

enum_with_unknown! {
    /// The transport service a REQ asks for (2 bits).
    pub enum TransportServiceType(u8) {
        /// Reliable Connected.
        Rc = 0 => "RC",
        /// Unreliable Connected.
        Uc = 1 => "UC",
        /// Reliable Datagram.
        Rd = 2 => "RD",
        /// Named by the extended transport type (1: XRC).
        Extended = 3 => "extended",
    }
}

/// One path of a REQ (primary or alternate): addresses and link parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Path {
    /// The sender's port LID (0xffff on RoCE: permissive).
    pub local_lid: u16,
    /// The receiver's port LID.
    pub remote_lid: u16,
    /// The sender's GID.
    pub local_gid: Gid,
    /// The receiver's GID.
    pub remote_gid: Gid,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    /// Static rate (6 bits, IBA encoding).
    pub packet_rate: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Service level (4 bits).
    pub sl: u8,
    /// Both ports are in one subnet.
    pub subnet_local: bool,
    /// Local ACK timeout (5 bits: 4.096 µs × 2^n).
    pub local_ack_timeout: u8,
}

impl Path {
    /// Reads a path from its [`PATH_LEN`] bytes.
    fn read(b: &[u8]) -> Path {
        use fields::path::*;
        let flow = field::get_u32(&b[FLOW_LABEL_RATE]);
        Path {
            local_lid: field::get_u16(&b[LOCAL_LID]),
            remote_lid: field::get_u16(&b[REMOTE_LID]),
            local_gid: Gid(field::get_u128(&b[LOCAL_GID])),
            remote_gid: Gid(field::get_u128(&b[REMOTE_GID])),
            flow_label: flow >> 12,
            packet_rate: (flow & 0x3f) as u8,
            traffic_class: b[TRAFFIC_CLASS],
            hop_limit: b[HOP_LIMIT],
            sl: field::get_bits(b[SL], 4, 4),
            subnet_local: field::get_bits(b[SL], 3, 1) != 0,
            local_ack_timeout: field::get_bits(b[ACK_TIMEOUT], 3, 5),
        }
    }

    /// Writes a path into its [`PATH_LEN`] bytes, keeping the bits of the last byte
    /// that are not the ACK timeout (the SAP flag of the alternate path).
    fn write(&self, b: &mut [u8]) {
        use fields::path::*;
        b[LOCAL_LID].copy_from_slice(&self.local_lid.to_be_bytes());
        b[REMOTE_LID].copy_from_slice(&self.remote_lid.to_be_bytes());
        b[LOCAL_GID].copy_from_slice(&self.local_gid.0);
        b[REMOTE_GID].copy_from_slice(&self.remote_gid.0);
        let flow = ((self.flow_label & 0xf_ffff) << 12) | u32::from(self.packet_rate & 0x3f);
        b[FLOW_LABEL_RATE].copy_from_slice(&flow.to_be_bytes());
        b[TRAFFIC_CLASS] = self.traffic_class;
        b[HOP_LIMIT] = self.hop_limit;
        b[SL] = 0;
        field::set_bits(&mut b[SL], 4, 4, self.sl);
        field::set_bits(&mut b[SL], 3, 1, u8::from(self.subnet_local));
        field::set_bits(&mut b[ACK_TIMEOUT], 3, 5, self.local_ack_timeout);
    }
}

header_view!("a CM REQ", MESSAGE_LEN);
private_data_accessors!();

impl<T: AsRef<[u8]>> Packet<T> {
    /// The sender's communication ID.
    pub fn local_comm_id(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::LOCAL_COMM_ID])
    }

    /// The service asked for.
    pub fn service_id(&self) -> ServiceId {
        ServiceId(field::get_u64(&self.buffer.as_ref()[fields::SERVICE_ID]))
    }

    /// The sender's channel adapter GUID.
    pub fn local_ca_guid(&self) -> u64 {
        field::get_u64(&self.buffer.as_ref()[fields::LOCAL_CA_GUID])
    }

    /// The sender's Q_Key (UD and RD only; zero for RC).
    pub fn local_qkey(&self) -> u32 {
        field::get_u32(&self.buffer.as_ref()[fields::LOCAL_QKEY])
    }

    /// The sender's QP.
    pub fn local_qpn(&self) -> Qpn {
        Qpn::new(field::get_u24(&self.buffer.as_ref()[fields::LOCAL_QPN]))
    }

    /// RDMA READ / atomic requests the sender accepts at once.
    pub fn responder_resources(&self) -> u8 {
        self.buffer.as_ref()[fields::RESPONDER_RESOURCES]
    }

    /// The sender's EE context (RD only).
    pub fn local_eecn(&self) -> u32 {
        field::get_u24(&self.buffer.as_ref()[fields::LOCAL_EECN])
    }

    /// RDMA READ / atomic requests the sender issues at once.
    pub fn initiator_depth(&self) -> u8 {
        self.buffer.as_ref()[fields::INITIATOR_DEPTH]
    }

    /// The receiver's EE context (RD only).
    pub fn remote_eecn(&self) -> u32 {
        field::get_u24(&self.buffer.as_ref()[fields::REMOTE_EECN])
    }

    /// How long the receiver may take to answer (5 bits: 4.096 µs × 2^n).
    pub fn remote_cm_response_timeout(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::REMOTE_TIMEOUT_TRANSPORT], 3, 5)
    }

    /// The transport service.
    pub fn transport_service_type(&self) -> TransportServiceType {
        let b = self.buffer.as_ref()[fields::REMOTE_TIMEOUT_TRANSPORT];
        TransportServiceType::from(field::get_bits(b, 1, 2))
    }

    /// End-to-end flow control.
    pub fn end_to_end_flow_control(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::REMOTE_TIMEOUT_TRANSPORT], 0, 1) != 0
    }

    /// The first PSN the sender will send with.
    pub fn starting_psn(&self) -> Psn {
        Psn::new(field::get_u24(&self.buffer.as_ref()[fields::STARTING_PSN]))
    }

    /// How long the sender may take to answer (5 bits).
    pub fn local_cm_response_timeout(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::LOCAL_TIMEOUT_RETRY], 3, 5)
    }

    /// Transport retries before an error (3 bits).
    pub fn retry_count(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::LOCAL_TIMEOUT_RETRY], 0, 3)
    }

    /// Partition key.
    pub fn pkey(&self) -> u16 {
        field::get_u16(&self.buffer.as_ref()[fields::PKEY])
    }

    /// Path MTU (4 bits, IBA encoding: 1 = 256 … 5 = 4096).
    pub fn path_mtu(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::MTU_RNR], 4, 4)
    }

    /// RDC exists (RD only).
    pub fn rdc_exists(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::MTU_RNR], 3, 1) != 0
    }

    /// RNR retries before an error (3 bits; 7 is infinite).
    pub fn rnr_retry_count(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::MTU_RNR], 0, 3)
    }

    /// CM retries the sender makes (4 bits).
    pub fn max_cm_retries(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::CM_RETRIES_SRQ], 4, 4)
    }

    /// The sender's QP uses a shared receive queue.
    pub fn srq(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::CM_RETRIES_SRQ], 3, 1) != 0
    }

    /// Extended transport type (3 bits; 1 is XRC).
    pub fn extended_transport_type(&self) -> u8 {
        field::get_bits(self.buffer.as_ref()[fields::CM_RETRIES_SRQ], 0, 3)
    }

    /// The primary path.
    pub fn primary_path(&self) -> Path {
        Path::read(&self.buffer.as_ref()[fields::PRIMARY_PATH])
    }

    /// The alternate path (all zero when there is none).
    pub fn alternate_path(&self) -> Path {
        Path::read(&self.buffer.as_ref()[fields::ALTERNATE_PATH])
    }

    /// The sender supports the alternate path's SAP (bit 2 of its last byte).
    pub fn sap_supported(&self) -> bool {
        field::get_bits(self.buffer.as_ref()[fields::SAP_SUPPORTED], 2, 1) != 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sender's communication ID.
    pub fn set_local_comm_id(&mut self, id: u32) {
        self.buffer.as_mut()[fields::LOCAL_COMM_ID].copy_from_slice(&id.to_be_bytes());
    }

    /// Sets the service ID.
    pub fn set_service_id(&mut self, id: ServiceId) {
        self.buffer.as_mut()[fields::SERVICE_ID].copy_from_slice(&id.0.to_be_bytes());
    }

    /// Sets the sender's CA GUID.
    pub fn set_local_ca_guid(&mut self, guid: u64) {
        self.buffer.as_mut()[fields::LOCAL_CA_GUID].copy_from_slice(&guid.to_be_bytes());
    }

    /// Sets the sender's Q_Key.
    pub fn set_local_qkey(&mut self, qkey: u32) {
        self.buffer.as_mut()[fields::LOCAL_QKEY].copy_from_slice(&qkey.to_be_bytes());
    }

    /// Sets the sender's QP.
    pub fn set_local_qpn(&mut self, qpn: Qpn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::LOCAL_QPN], qpn.value());
    }

    /// Sets the responder resources.
    pub fn set_responder_resources(&mut self, value: u8) {
        self.buffer.as_mut()[fields::RESPONDER_RESOURCES] = value;
    }

    /// Sets the sender's EE context.
    pub fn set_local_eecn(&mut self, eecn: u32) {
        field::set_u24(
            &mut self.buffer.as_mut()[fields::LOCAL_EECN],
            eecn & 0xff_ffff,
        );
    }

    /// Sets the initiator depth.
    pub fn set_initiator_depth(&mut self, value: u8) {
        self.buffer.as_mut()[fields::INITIATOR_DEPTH] = value;
    }

    /// Sets the receiver's EE context.
    pub fn set_remote_eecn(&mut self, eecn: u32) {
        field::set_u24(
            &mut self.buffer.as_mut()[fields::REMOTE_EECN],
            eecn & 0xff_ffff,
        );
    }

    /// Sets the remote CM response timeout, transport service type and end-to-end flow
    /// control, which share a byte.
    pub fn set_remote_timeout_transport(
        &mut self,
        timeout: u8,
        transport: TransportServiceType,
        flow_control: bool,
    ) {
        let b = &mut self.buffer.as_mut()[fields::REMOTE_TIMEOUT_TRANSPORT];
        field::set_bits(b, 3, 5, timeout);
        field::set_bits(b, 1, 2, transport.into());
        field::set_bits(b, 0, 1, u8::from(flow_control));
    }

    /// Sets the starting PSN.
    pub fn set_starting_psn(&mut self, psn: Psn) {
        field::set_u24(&mut self.buffer.as_mut()[fields::STARTING_PSN], psn.value());
    }

    /// Sets the local CM response timeout and the retry count, which share a byte.
    pub fn set_local_timeout_retry(&mut self, timeout: u8, retry_count: u8) {
        let b = &mut self.buffer.as_mut()[fields::LOCAL_TIMEOUT_RETRY];
        field::set_bits(b, 3, 5, timeout);
        field::set_bits(b, 0, 3, retry_count);
    }

    /// Sets the partition key.
    pub fn set_pkey(&mut self, pkey: u16) {
        self.buffer.as_mut()[fields::PKEY].copy_from_slice(&pkey.to_be_bytes());
    }

    /// Sets the path MTU, RDC exists and the RNR retry count, which share a byte.
    pub fn set_mtu_rnr(&mut self, path_mtu: u8, rdc_exists: bool, rnr_retry_count: u8) {
        let b = &mut self.buffer.as_mut()[fields::MTU_RNR];
        field::set_bits(b, 4, 4, path_mtu);
        field::set_bits(b, 3, 1, u8::from(rdc_exists));
        field::set_bits(b, 0, 3, rnr_retry_count);
    }

    /// Sets the max CM retries, SRQ and the extended transport type, which share a byte.
    pub fn set_cm_retries_srq(&mut self, max_cm_retries: u8, srq: bool, extended: u8) {
        let b = &mut self.buffer.as_mut()[fields::CM_RETRIES_SRQ];
        field::set_bits(b, 4, 4, max_cm_retries);
        field::set_bits(b, 3, 1, u8::from(srq));
        field::set_bits(b, 0, 3, extended);
    }

    /// Sets the primary path.
    pub fn set_primary_path(&mut self, path: &Path) {
        path.write(&mut self.buffer.as_mut()[fields::PRIMARY_PATH]);
    }

    /// Sets the alternate path (keeps the SAP flag).
    pub fn set_alternate_path(&mut self, path: &Path) {
        path.write(&mut self.buffer.as_mut()[fields::ALTERNATE_PATH]);
    }

    /// Sets the SAP supported flag.
    pub fn set_sap_supported(&mut self, value: bool) {
        field::set_bits(
            &mut self.buffer.as_mut()[fields::SAP_SUPPORTED],
            2,
            1,
            u8::from(value),
        );
    }
}

/// A parsed REQ.
///
/// Reserved bits are not kept: `emit` writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// The sender's communication ID.
    pub local_comm_id: u32,
    /// The service asked for.
    pub service_id: ServiceId,
    /// The sender's CA GUID.
    pub local_ca_guid: u64,
    /// The sender's Q_Key.
    pub local_qkey: u32,
    /// The sender's QP.
    pub local_qpn: Qpn,
    /// RDMA READ / atomic requests the sender accepts at once.
    pub responder_resources: u8,
    /// The sender's EE context (24 bits).
    pub local_eecn: u32,
    /// RDMA READ / atomic requests the sender issues at once.
    pub initiator_depth: u8,
    /// The receiver's EE context (24 bits).
    pub remote_eecn: u32,
    /// Remote CM response timeout (5 bits).
    pub remote_cm_response_timeout: u8,
    /// Transport service.
    pub transport_service_type: TransportServiceType,
    /// End-to-end flow control.
    pub end_to_end_flow_control: bool,
    /// Starting PSN.
    pub starting_psn: Psn,
    /// Local CM response timeout (5 bits).
    pub local_cm_response_timeout: u8,
    /// Retry count (3 bits).
    pub retry_count: u8,
    /// Partition key.
    pub pkey: u16,
    /// Path MTU (4 bits, IBA encoding).
    pub path_mtu: u8,
    /// RDC exists.
    pub rdc_exists: bool,
    /// RNR retry count (3 bits).
    pub rnr_retry_count: u8,
    /// Max CM retries (4 bits).
    pub max_cm_retries: u8,
    /// Shared receive queue.
    pub srq: bool,
    /// Extended transport type (3 bits).
    pub extended_transport_type: u8,
    /// Primary path.
    pub primary_path: Path,
    /// Alternate path.
    pub alternate_path: Path,
    /// SAP supported.
    pub sap_supported: bool,
    /// Private data: up to [`PRIVATE_DATA_LEN`] bytes; parsing gives the whole field.
    pub private_data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a REQ.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            local_comm_id: packet.local_comm_id(),
            service_id: packet.service_id(),
            local_ca_guid: packet.local_ca_guid(),
            local_qkey: packet.local_qkey(),
            local_qpn: packet.local_qpn(),
            responder_resources: packet.responder_resources(),
            local_eecn: packet.local_eecn(),
            initiator_depth: packet.initiator_depth(),
            remote_eecn: packet.remote_eecn(),
            remote_cm_response_timeout: packet.remote_cm_response_timeout(),
            transport_service_type: packet.transport_service_type(),
            end_to_end_flow_control: packet.end_to_end_flow_control(),
            starting_psn: packet.starting_psn(),
            local_cm_response_timeout: packet.local_cm_response_timeout(),
            retry_count: packet.retry_count(),
            pkey: packet.pkey(),
            path_mtu: packet.path_mtu(),
            rdc_exists: packet.rdc_exists(),
            rnr_retry_count: packet.rnr_retry_count(),
            max_cm_retries: packet.max_cm_retries(),
            srq: packet.srq(),
            extended_transport_type: packet.extended_transport_type(),
            primary_path: packet.primary_path(),
            alternate_path: packet.alternate_path(),
            sap_supported: packet.sap_supported(),
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
        packet.set_service_id(self.service_id);
        packet.set_local_ca_guid(self.local_ca_guid);
        packet.set_local_qkey(self.local_qkey);
        packet.set_local_qpn(self.local_qpn);
        packet.set_responder_resources(self.responder_resources);
        packet.set_local_eecn(self.local_eecn);
        packet.set_initiator_depth(self.initiator_depth);
        packet.set_remote_eecn(self.remote_eecn);
        packet.set_remote_timeout_transport(
            self.remote_cm_response_timeout,
            self.transport_service_type,
            self.end_to_end_flow_control,
        );
        packet.set_starting_psn(self.starting_psn);
        packet.set_local_timeout_retry(self.local_cm_response_timeout, self.retry_count);
        packet.set_pkey(self.pkey);
        packet.set_mtu_rnr(self.path_mtu, self.rdc_exists, self.rnr_retry_count);
        packet.set_cm_retries_srq(self.max_cm_retries, self.srq, self.extended_transport_type);
        packet.set_primary_path(&self.primary_path);
        packet.set_alternate_path(&self.alternate_path);
        packet.set_sap_supported(self.sap_supported);
        Ok(())
    }
}

impl fmt::Display for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "REQ comm_id={:#010x} service_id={} {} qpn={} start_psn={} mtu={} resp_res={} init_depth={} retry={} rnr_retry={} gid={} -> {}",
            self.local_comm_id,
            self.service_id,
            self.transport_service_type,
            self.local_qpn,
            self.starting_psn,
            self.path_mtu,
            self.responder_resources,
            self.initiator_depth,
            self.retry_count,
            self.rnr_retry_count,
            self.primary_path.local_gid,
            self.primary_path.remote_gid,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cm::testdata::{rping_mads, REQ};
    use crate::Error;
    use core::net::{IpAddr, Ipv4Addr};
    use proptest::prelude::*;

    #[test]
    fn parses_rpings_req_field_by_field() {
        let data = &rping_mads()[REQ][crate::mad::HEADER_LEN..];
        let repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        assert_eq!(repr.local_comm_id, 0x8f4e_3c9d);
        // RDMA_PS_TCP | 7174, rping's default port.
        assert_eq!(repr.service_id, ServiceId(0x0000_0000_0106_1c06));
        assert_eq!(repr.local_ca_guid, 0x5054_00ff_fe77_0001);
        assert_eq!(repr.local_qkey, 0);
        assert_eq!(repr.local_qpn, Qpn::new(0x11));
        assert_eq!(repr.responder_resources, 1);
        assert_eq!(repr.initiator_depth, 1);
        assert_eq!((repr.local_eecn, repr.remote_eecn), (0, 0));
        assert_eq!(repr.remote_cm_response_timeout, 20);
        assert_eq!(repr.transport_service_type, TransportServiceType::Rc);
        assert!(!repr.end_to_end_flow_control);
        assert_eq!(repr.starting_psn, Psn::new(0xc17b7c));
        assert_eq!(repr.local_cm_response_timeout, 20);
        assert_eq!(repr.retry_count, 7);
        assert_eq!(repr.pkey, 0xffff);
        assert_eq!(repr.path_mtu, 3, "1024");
        assert!(!repr.rdc_exists);
        assert_eq!(repr.rnr_retry_count, 7);
        assert_eq!(repr.max_cm_retries, 15);
        assert!(!repr.srq);
        assert_eq!(repr.extended_transport_type, 0);
        let path = repr.primary_path;
        assert_eq!((path.local_lid, path.remote_lid), (0xffff, 0xffff));
        assert_eq!(
            path.local_gid.ip(),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11))
        );
        assert_eq!(
            path.remote_gid.ip(),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12))
        );
        assert_eq!(path.flow_label, 0x792e1);
        assert_eq!(path.packet_rate, 0);
        assert_eq!(path.traffic_class, 0);
        assert_eq!(path.hop_limit, 64);
        assert_eq!(path.sl, 0);
        assert!(!path.subnet_local);
        assert_eq!(path.local_ack_timeout, 19);
        assert_eq!(repr.alternate_path, Path::default());
        assert!(!repr.sap_supported);
        assert_eq!(repr.private_data.len(), PRIVATE_DATA_LEN);
        assert_eq!(&repr.private_data[..4], &[0x00, 0x40, 0xc1, 0xc5]);

        let mut out = [0xaau8; MESSAGE_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(&out[..], data);
    }

    #[test]
    fn rejects_truncated_and_oversized() {
        let data = &rping_mads()[REQ][crate::mad::HEADER_LEN..];
        assert_eq!(
            Packet::new_checked(&data[..MESSAGE_LEN - 1]).err(),
            Some(Error::Truncated)
        );
        let mut repr = Repr::parse(&Packet::new_checked(data).unwrap()).unwrap();
        let long = [0u8; PRIVATE_DATA_LEN + 1];
        repr.private_data = &long;
        let mut out = [0u8; MESSAGE_LEN];
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut out[..])),
            Err(Error::Malformed)
        );
        let mut short = [0u8; MESSAGE_LEN - 1];
        repr.private_data = &[];
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut short[..])),
            Err(Error::Truncated)
        );
    }

    pub(crate) fn path() -> impl Strategy<Value = Path> {
        (
            (
                any::<u16>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
            ),
            (0..1u32 << 20, 0..64u8, any::<u8>(), any::<u8>()),
            (0..16u8, any::<bool>(), 0..32u8),
        )
            .prop_map(
                |((ll, rl, lg, rg), (flow, rate, tc, hop), (sl, local, ack))| Path {
                    local_lid: ll,
                    remote_lid: rl,
                    local_gid: Gid(lg),
                    remote_gid: Gid(rg),
                    flow_label: flow,
                    packet_rate: rate,
                    traffic_class: tc,
                    hop_limit: hop,
                    sl,
                    subnet_local: local,
                    local_ack_timeout: ack,
                },
            )
    }

    proptest! {
        #[test]
        fn any_req_round_trips(
            ids in (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), 0..1u32 << 24),
            depth in (any::<u8>(), 0..1u32 << 24, any::<u8>(), 0..1u32 << 24),
            timeouts in (0..32u8, 0..4u8, any::<bool>(), 0..1u32 << 24, 0..32u8, 0..8u8),
            link in (any::<u16>(), 0..16u8, any::<bool>(), 0..8u8, 0..16u8, any::<bool>(), 0..8u8),
            primary in path(),
            alternate in path(),
            sap in any::<bool>(),
            private in proptest::collection::vec(any::<u8>(), PRIVATE_DATA_LEN),
        ) {
            let repr = Repr {
                local_comm_id: ids.0,
                service_id: ServiceId(ids.1),
                local_ca_guid: ids.2,
                local_qkey: ids.3,
                local_qpn: Qpn::new(ids.4),
                responder_resources: depth.0,
                local_eecn: depth.1,
                initiator_depth: depth.2,
                remote_eecn: depth.3,
                remote_cm_response_timeout: timeouts.0,
                transport_service_type: TransportServiceType::from(timeouts.1),
                end_to_end_flow_control: timeouts.2,
                starting_psn: Psn::new(timeouts.3),
                local_cm_response_timeout: timeouts.4,
                retry_count: timeouts.5,
                pkey: link.0,
                path_mtu: link.1,
                rdc_exists: link.2,
                rnr_retry_count: link.3,
                max_cm_retries: link.4,
                srq: link.5,
                extended_transport_type: link.6,
                primary_path: primary,
                alternate_path: alternate,
                sap_supported: sap,
                private_data: &private,
            };
            let mut out = [0u8; MESSAGE_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), Ok(repr));
        }
    }
}

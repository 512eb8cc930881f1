//! CM MADs from the peer to a namespace's QP1 (any attribute, comm IDs the agent holds
//! or any, REQs that name the namespace's GID and listener or not, other classes and
//! methods), and the consumer's answers to what the agent reports.

use std::net::IpAddr;

use arbitrary::Arbitrary;
use ferroce_transport::engine::cm::gsi_send_headers;
use ferroce_transport::engine::CommId;
use ferroce_transport::wire::icrc;
use ferroce_transport::wire::{mad, packet, Gid, Psn};

use super::craft::{envelope_of, meta, source, Incoming, Lookup, SourcePick};
use super::model::{sanitize, sanitize_u64};

/// The service every namespace of the world listens on (rping's port over RDMA CM).
pub const SERVICE: u64 = 0x0106_1c06;

/// A comm ID: one the agent gave out, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum CommPick {
    Known(u8),
    Any(u32),
}

impl CommPick {
    fn resolve(self, known: &[CommId]) -> u32 {
        match self {
            CommPick::Known(index) if !known.is_empty() => {
                known[usize::from(index) % known.len()].0
            }
            CommPick::Known(index) => u32::from(index),
            CommPick::Any(id) => id,
        }
    }
}

/// One MAD to QP1.
#[derive(Debug, Clone, Arbitrary)]
pub struct MadPick {
    pub to_ns: u8,
    pub from: SourcePick,
    /// Attribute ID low byte: 0x10 (REQ) to 0x1a (APR) are CM messages.
    pub attribute: u8,
    /// `None`: the CM class, version 2, method Send.
    pub class_method: Option<(u8, u8, u8)>,
    pub tid: u64,
    pub local_comm_id: u32,
    /// The receiver's comm ID as the sender names it.
    pub remote_comm_id: CommPick,
    /// For a REQ: the rping service, the namespace's GID as remote, MTU 1024, RC.
    pub sane_req: bool,
    /// Message bytes from offset 8 on (the rest zero).
    pub body: Vec<u8>,
}

/// REQ offsets (after the MAD header): service ID, primary local and remote GIDs, and
/// the byte of path MTU and RNR retry.
const REQ_SERVICE_ID: usize = 8;
const REQ_LOCAL_GID: usize = 56;
const REQ_REMOTE_GID: usize = 72;
const REQ_MTU_RNR: usize = 50;

impl MadPick {
    pub fn build(&self, world: &impl Lookup, known: &[CommId]) -> Incoming {
        let to_ns = usize::from(self.to_ns % 2);
        let src = source(self.from, to_ns, world);
        let dst = world.gid(to_ns);
        let mut mad_bytes = [0u8; mad::MAD_LEN];
        let (class, version, method) = self.class_method.unwrap_or((0x07, 2, 0x03));
        let header = mad::Repr {
            base_version: mad::BASE_VERSION,
            mgmt_class: mad::MgmtClass::from(class),
            class_version: version,
            method: mad::Method::from(method),
            status: 0,
            class_specific: 0,
            transaction_id: self.tid,
            attribute_id: u16::from(self.attribute),
            attribute_modifier: 0,
        };
        let header = mad::Repr {
            transaction_id: sanitize_u64(header.transaction_id),
            ..header
        };
        header.emit(&mut mad::Packet::new_unchecked(&mut mad_bytes[..]));
        let data = &mut mad_bytes[mad::HEADER_LEN..];
        let body_len = self.body.len().min(data.len() - 8);
        data[8..8 + body_len].copy_from_slice(&self.body[..body_len]);
        sanitize(&mut data[8..]);
        data[..4].copy_from_slice(&self.local_comm_id.to_be_bytes());
        // What a reply may echo must not carry another namespace's memory tags.
        sanitize(&mut data[..4]);
        let remote = self.remote_comm_id.resolve(known);
        data[4..8].copy_from_slice(&remote.to_be_bytes());
        if self.attribute == 0x10 && self.sane_req {
            data[REQ_SERVICE_ID..REQ_SERVICE_ID + 8].copy_from_slice(&SERVICE.to_be_bytes());
            data[REQ_LOCAL_GID..REQ_LOCAL_GID + 16].copy_from_slice(&gid(src).0);
            data[REQ_REMOTE_GID..REQ_REMOTE_GID + 16].copy_from_slice(&gid(dst).0);
            data[REQ_MTU_RNR] = 0x37;
            // Transport RC: the low bits of byte 43 clear.
            data[43] &= 0xf8;
        }
        let repr = gsi_send_headers(Psn::new(0));
        let mut bytes = vec![0u8; packet::buffer_len(&repr, mad::MAD_LEN).unwrap_or(0)];
        if let Ok(at) = repr.emit(&mut bytes) {
            bytes[at..at + mad::MAD_LEN].copy_from_slice(&mad_bytes);
        }
        let meta = meta(src, dst, 0xd872, None);
        if let Some(envelope) = envelope_of(&meta) {
            let _ = icrc::fill(&envelope, &mut bytes);
        }
        Incoming { meta, bytes }
    }
}

fn gid(addr: IpAddr) -> Gid {
    Gid::from_ip(addr)
}

//! Work-request builders (`ibv_send_wr`, `ibv_recv_wr`).

use std::net::IpAddr;

use ferroce_transport::engine::{RecvWr, SendOp, SendWr, SgList, Sge, UdDestination};
use ferroce_transport::wire::{Qpn, Rkey};

use crate::mr::MemoryRegion;

/// A send work request. Start from an operation, add SGEs and flags:
/// `SendRequest::write(1, remote_addr, rkey).sge(&mr, 0, 4096)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest(SendWr);

impl SendRequest {
    fn op(wr_id: u64, op: SendOp) -> SendRequest {
        SendRequest(SendWr::new(wr_id, op, Vec::new()))
    }

    /// SEND.
    pub fn send(wr_id: u64) -> SendRequest {
        Self::op(wr_id, SendOp::Send)
    }

    /// SEND with immediate data.
    pub fn send_with_imm(wr_id: u64, imm: u32) -> SendRequest {
        Self::op(wr_id, SendOp::SendWithImm(imm))
    }

    /// SEND that invalidates the peer's `rkey`.
    pub fn send_with_inv(wr_id: u64, rkey: Rkey) -> SendRequest {
        Self::op(wr_id, SendOp::SendWithInv(rkey))
    }

    /// RDMA WRITE to `remote_addr` of the region `rkey` names.
    pub fn write(wr_id: u64, remote_addr: u64, rkey: Rkey) -> SendRequest {
        Self::op(wr_id, SendOp::RdmaWrite { remote_addr, rkey })
    }

    /// RDMA WRITE with immediate data (consumes a receive at the peer).
    pub fn write_with_imm(wr_id: u64, remote_addr: u64, rkey: Rkey, imm: u32) -> SendRequest {
        Self::op(
            wr_id,
            SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            },
        )
    }

    /// RDMA READ from `remote_addr` into the SGEs.
    pub fn read(wr_id: u64, remote_addr: u64, rkey: Rkey) -> SendRequest {
        Self::op(wr_id, SendOp::RdmaRead { remote_addr, rkey })
    }

    /// Compare and swap on 8 remote bytes; the original value lands in the first SGE.
    pub fn compare_swap(
        wr_id: u64,
        remote_addr: u64,
        rkey: Rkey,
        compare: u64,
        swap: u64,
    ) -> SendRequest {
        Self::op(
            wr_id,
            SendOp::CompareSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            },
        )
    }

    /// Fetch and add on 8 remote bytes; the original value lands in the first SGE.
    pub fn fetch_add(wr_id: u64, remote_addr: u64, rkey: Rkey, add: u64) -> SendRequest {
        Self::op(
            wr_id,
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            },
        )
    }

    /// Invalidates a local key (no packet).
    pub fn local_inv(wr_id: u64, rkey: Rkey) -> SendRequest {
        Self::op(wr_id, SendOp::LocalInv(rkey))
    }

    /// Adds `length` bytes at `offset` of `mr` to the gather (or scatter) list.
    pub fn sge(mut self, mr: &MemoryRegion, offset: u64, length: u32) -> SendRequest {
        self.0.sg_list.push(mr.sge(offset, length));
        self
    }

    /// Adds a raw SGE.
    pub fn raw_sge(mut self, sge: Sge) -> SendRequest {
        self.0.sg_list.push(sge);
        self
    }

    /// Sends `data` inline (copied now) instead of through SGEs.
    pub fn inline(mut self, data: &[u8]) -> SendRequest {
        self.0.inline_data = Some(data.to_vec());
        self
    }

    /// Whether success generates a completion (default: yes).
    pub fn signaled(mut self, signaled: bool) -> SendRequest {
        self.0.signaled = signaled;
        self
    }

    /// Waits for earlier READs and atomics first (`IBV_SEND_FENCE`).
    pub fn fence(mut self) -> SendRequest {
        self.0.fence = true;
        self
    }

    /// Sets the solicited event bit (`IBV_SEND_SOLICITED`).
    pub fn solicited(mut self) -> SendRequest {
        self.0.solicited = true;
        self
    }

    /// UD destination: address, QPN and Q_Key (the address handle of `ibv_send_wr.wr.ud`).
    pub fn ud(mut self, address: IpAddr, qpn: Qpn, qkey: u32) -> SendRequest {
        self.0.ud = Some(UdDestination { address, qpn, qkey });
        self
    }

    /// The work request id.
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    /// SGEs so far.
    pub(crate) fn sge_count(&self) -> usize {
        self.0.sg_list.len()
    }

    pub(crate) fn into_engine(self) -> SendWr {
        self.0
    }
}

/// A receive work request: `RecvRequest::new(7).sge(&mr, 0, 4096)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvRequest(RecvWr);

impl RecvRequest {
    /// A receive with no SGEs yet (zero-length messages only).
    pub fn new(wr_id: u64) -> RecvRequest {
        RecvRequest(RecvWr {
            wr_id,
            sg_list: SgList::new(),
        })
    }

    /// Adds `length` bytes at `offset` of `mr` to the scatter list.
    pub fn sge(mut self, mr: &MemoryRegion, offset: u64, length: u32) -> RecvRequest {
        self.0.sg_list.push(mr.sge(offset, length));
        self
    }

    /// Adds a raw SGE.
    pub fn raw_sge(mut self, sge: Sge) -> RecvRequest {
        self.0.sg_list.push(sge);
        self
    }

    /// The work request id.
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub(crate) fn sge_count(&self) -> usize {
        self.0.sg_list.len()
    }

    pub(crate) fn into_engine(self) -> RecvWr {
        self.0
    }
}

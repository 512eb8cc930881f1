//! Completion queues and work completions, with ibverbs names.

use std::collections::VecDeque;

use ferroce_wire::{Qpn, Rkey};

/// A completion queue handle (allocated per namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompletionQueueId(pub u32);

/// Completion status (`ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcStatus {
    /// The work request completed.
    Success,
    /// Local length error: a message did not fit the receive buffer.
    LocLenErr,
    /// Local QP operation error (malformed work request).
    LocQpOpErr,
    /// Local protection error: an SGE's lkey, PD or bounds check failed.
    LocProtErr,
    /// Flushed because the QP is in the error state.
    WrFlushErr,
    /// The responder's response did not match the request.
    BadRespErr,
    /// Local access error (the local buffer of a READ or atomic could not be written).
    LocAccessErr,
    /// The responder refused the request as invalid (NAK invalid request).
    RemInvReqErr,
    /// The responder refused access (NAK remote access error).
    RemAccessErr,
    /// The responder failed the operation (NAK remote operational error).
    RemOpErr,
    /// Transport retries exhausted.
    RetryExcErr,
    /// RNR retries exhausted.
    RnrRetryExcErr,
    /// A general error (ibverbs `IBV_WC_GENERAL_ERR`).
    GeneralErr,
}

/// Which operation completed (`ibv_wc_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// SEND (also with immediate / with invalidate).
    Send,
    /// RDMA WRITE (also with immediate).
    RdmaWrite,
    /// RDMA READ.
    RdmaRead,
    /// Compare and swap.
    CompSwap,
    /// Fetch and add.
    FetchAdd,
    /// Local invalidate.
    LocalInv,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
}

/// A work completion (`ibv_wc`): every field that applies to ferroce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// Status.
    pub status: WcStatus,
    /// Operation.
    pub opcode: WcOpcode,
    /// Bytes transferred (receives: bytes placed, including 40 GRH bytes on UD).
    pub byte_len: u32,
    /// Immediate data, when the message carried some.
    pub imm_data: Option<u32>,
    /// The rkey a SEND with invalidate invalidated.
    pub invalidated_rkey: Option<Rkey>,
    /// The local QP.
    pub qp_num: Qpn,
    /// The remote QP (receives).
    pub src_qp: Qpn,
    /// True when the first 40 bytes of the receive buffer hold a GRH (UD).
    pub grh: bool,
    /// P_Key index (always 0: ferroce has one partition).
    pub pkey_index: u16,
    /// Vendor error code: the engine's reason for an error status (0 on success).
    pub vendor_err: u32,
}

/// A completion queue.
#[derive(Debug)]
pub struct CompletionQueue {
    capacity: usize,
    entries: VecDeque<WorkCompletion>,
    overflowed: bool,
    /// A lost completion was reported (`CqErr`) and the CQ not polled since: rxe
    /// reports each loss, this at most once per poll, so a full CQ nobody polls cannot
    /// flood the event queue.
    overflow_reported: bool,
    /// `req_notify_cq`: armed for the next completion (`Some(false)`) or the next
    /// solicited or failed one (`Some(true)`); one event, then disarmed.
    armed: Option<bool>,
}

impl CompletionQueue {
    pub(crate) fn new(capacity: usize) -> CompletionQueue {
        CompletionQueue {
            capacity,
            entries: VecDeque::new(),
            overflowed: false,
            overflow_reported: false,
            armed: None,
        }
    }

    /// Adds a completion; `Err` (and the overflow remembered) when full, `Err(true)` the
    /// first time since the CQ was last polled (the caller reports the loss). `Ok(true)`
    /// when the queue was armed for this completion: the caller raises the completion
    /// event.
    pub(crate) fn push(&mut self, wc: WorkCompletion, solicited: bool) -> Result<bool, bool> {
        if self.entries.len() >= self.capacity {
            self.overflowed = true;
            let report = !self.overflow_reported;
            self.overflow_reported = true;
            return Err(report);
        }
        let notify = match self.armed {
            Some(solicited_only) => !solicited_only || solicited || wc.status != WcStatus::Success,
            None => false,
        };
        if notify {
            self.armed = None;
        }
        self.entries.push_back(wc);
        Ok(notify)
    }

    /// Arms the completion event (`ibv_req_notify_cq`).
    pub(crate) fn arm(&mut self, solicited_only: bool) {
        // Arming for any completion wins over solicited-only, as in ibverbs.
        self.armed = Some(solicited_only && self.armed != Some(false));
    }

    /// Takes up to `max` completions, oldest first.
    pub(crate) fn poll(&mut self, max: usize) -> Vec<WorkCompletion> {
        self.overflow_reported = false;
        let n = max.min(self.entries.len());
        self.entries.drain(..n).collect()
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no completion waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True once a completion was lost because the queue was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

//! Shared receive queues with the limit event.

use std::collections::VecDeque;

use super::memory::ProtectionDomain;
use super::qp::RecvWr;

/// A shared receive queue handle (allocated per namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedReceiveQueueId(pub u32);

/// SRQ sizes and limit (`ibv_srq_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrqAttr {
    /// Most receive WRs queued at once.
    pub max_wr: u32,
    /// Most SGEs per receive WR.
    pub max_sge: u32,
    /// Limit: when armed (non-zero) and the queue falls below it, a
    /// `SrqLimitReached` event fires once and the limit disarms.
    pub srq_limit: u32,
}

/// A shared receive queue.
#[derive(Debug)]
pub struct SharedReceiveQueue {
    pub(crate) pd: ProtectionDomain,
    pub(crate) attr: SrqAttr,
    pub(crate) queue: VecDeque<RecvWr>,
}

impl SharedReceiveQueue {
    pub(crate) fn new(pd: ProtectionDomain, attr: SrqAttr) -> SharedReceiveQueue {
        SharedReceiveQueue {
            pd,
            attr,
            queue: VecDeque::new(),
        }
    }

    /// Takes the oldest receive WR; the second value is true when this crossed the armed
    /// limit (the caller raises the event; the limit is now disarmed).
    pub(crate) fn take(&mut self) -> Option<(RecvWr, bool)> {
        let wr = self.queue.pop_front()?;
        let limit = self.attr.srq_limit;
        let fired = limit != 0 && (self.queue.len() as u64) < u64::from(limit);
        if fired {
            self.attr.srq_limit = 0;
        }
        Some((wr, fired))
    }

    /// Receive WRs queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no receive WR is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Current attributes (`srq_limit` is 0 once the event fired).
    pub fn attr(&self) -> SrqAttr {
        self.attr
    }
}

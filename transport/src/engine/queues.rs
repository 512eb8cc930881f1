//! A read-only view of every queue the engine keeps per namespace, with the bound each
//! is held to: what tests and the `engine` fuzz target check after every step, since a
//! queue a peer or a tenant can grow without bound is a denial of service.

use ferroce_wire::Qpn;

use super::cm::{ListenerId, MAX_OUTBOX};
use super::cq::CompletionQueueId;
use super::srq::SharedReceiveQueueId;
use super::{Engine, NamespaceId, Result};

/// Which queue a [`QueueDepth`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// A QP's send queue (bound: `max_send_wr`).
    Send(Qpn),
    /// A QP's own receive queue (bound: `max_recv_wr`).
    Receive(Qpn),
    /// A QP's queued responder answers: ACKs, NAKs, READ responses, atomic ACKs.
    ResponderJobs(Qpn),
    /// A QP's ring of READ/atomic responder resources (bound: `max_dest_rd_atomic`).
    ResponderResources(Qpn),
    /// A completion queue (bound: its `cqe`).
    Completion(CompletionQueueId),
    /// A shared receive queue (bound: its `max_wr`).
    SharedReceive(SharedReceiveQueueId),
    /// The namespace's asynchronous events (bound: `max_async_events`).
    AsyncEvents,
    /// CQs whose armed completion notification fired (same bound).
    CompletionEvents,
    /// The CM's events (same bound).
    CmEvents,
    /// Connection requests of a listener waiting for its consumer (bound: backlog).
    ListenBacklog(ListenerId),
    /// MADs the CM agent has queued for QP1 (bound: [`MAX_OUTBOX`]).
    CmOutbox,
}

/// How full one queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue.
    pub queue: QueueKind,
    /// Entries in it now.
    pub len: usize,
    /// The most it may ever hold; `None` for a queue nothing bounds yet.
    pub bound: Option<usize>,
}

impl Engine {
    /// Every queue of namespace `ns` with its length and bound.
    pub fn queue_depths(&self, ns: NamespaceId) -> Result<Vec<QueueDepth>> {
        let space = self.ns(ns)?;
        let mut depths = Vec::new();
        for (&qpn, qp) in &space.qps {
            let info = qp.info();
            let bounded = |queue, len, bound: u32| QueueDepth {
                queue,
                len,
                bound: Some(bound as usize),
            };
            depths.push(bounded(
                QueueKind::Send(qpn),
                info.send_outstanding,
                info.cap.max_send_wr,
            ));
            depths.push(bounded(
                QueueKind::Receive(qpn),
                info.recv_outstanding,
                info.cap.max_recv_wr,
            ));
            depths.push(QueueDepth {
                queue: QueueKind::ResponderJobs(qpn),
                len: qp.resp.queued(),
                bound: Some(qp.resp.queue_bound()),
            });
            depths.push(bounded(
                QueueKind::ResponderResources(qpn),
                qp.resp.resources_len(),
                u32::from(info.attr.max_dest_rd_atomic.unwrap_or(0)),
            ));
        }
        for (&id, cq) in &space.cqs {
            depths.push(QueueDepth {
                queue: QueueKind::Completion(id),
                len: cq.len(),
                bound: Some(cq.capacity()),
            });
        }
        for (&id, srq) in &space.srqs {
            depths.push(QueueDepth {
                queue: QueueKind::SharedReceive(id),
                len: srq.len(),
                bound: Some(srq.attr.max_wr as usize),
            });
        }
        let events = &space.events;
        depths.push(QueueDepth {
            queue: QueueKind::AsyncEvents,
            len: events.async_events.len(),
            bound: Some(events.async_events.limit()),
        });
        depths.push(QueueDepth {
            queue: QueueKind::CompletionEvents,
            len: events.completion_events.len(),
            bound: Some(events.completion_events.limit()),
        });
        let cm = &space.cm;
        depths.push(QueueDepth {
            queue: QueueKind::CmEvents,
            len: cm.events.len(),
            bound: Some(cm.events.limit()),
        });
        for (&id, listener) in &cm.listeners {
            depths.push(QueueDepth {
                queue: QueueKind::ListenBacklog(id),
                len: listener.pending,
                bound: Some(listener.backlog),
            });
        }
        depths.push(QueueDepth {
            queue: QueueKind::CmOutbox,
            len: cm.outbox.len(),
            bound: Some(MAX_OUTBOX),
        });
        Ok(depths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        AccessFlags, EngineConfig, QpCap, QpInitAttr, QpType, RecvWr, Sge, SrqAttr,
    };

    #[test]
    fn every_queue_reports_its_length_and_bound() {
        let ns = NamespaceId::DEFAULT;
        let mut engine = Engine::new(EngineConfig::default(), 1);
        let pd = engine.alloc_pd(ns).unwrap();
        let cq = engine.create_cq(ns, 5).unwrap();
        let attr = SrqAttr {
            max_wr: 3,
            max_sge: 1,
            srq_limit: 0,
        };
        let srq = engine.create_srq(ns, pd, attr).unwrap();
        let mr = engine.reg_mr(ns, pd, 64, AccessFlags::LOCAL_WRITE).unwrap();
        let cap = QpCap {
            max_send_wr: 2,
            max_recv_wr: 4,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let init = QpInitAttr {
            qp_type: QpType::Rc,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap,
            sq_sig_all: false,
        };
        let qpn = engine.create_qp(ns, init).unwrap();
        let sge = Sge {
            addr: mr.addr,
            length: 8,
            lkey: mr.lkey,
        };
        let wr = RecvWr {
            wr_id: 1,
            sg_list: vec![sge].into(),
        };
        engine.post_srq_recv(ns, srq, wr).unwrap();
        let depths = engine.queue_depths(ns).unwrap();
        let depth = |queue| {
            let found = depths.iter().find(|d| d.queue == queue).unwrap();
            (found.len, found.bound)
        };
        assert_eq!(depth(QueueKind::Send(qpn)), (0, Some(2)));
        assert_eq!(depth(QueueKind::Receive(qpn)), (0, Some(4)));
        assert_eq!(depth(QueueKind::Completion(cq)), (0, Some(5)));
        assert_eq!(depth(QueueKind::SharedReceive(srq)), (1, Some(3)));
        // In RESET the QP has no responder resources yet.
        assert_eq!(depth(QueueKind::ResponderResources(qpn)), (0, Some(0)));
        let (jobs, bound) = depth(QueueKind::ResponderJobs(qpn));
        assert_eq!(jobs, 0);
        assert!(bound.is_some());
        let events = Some(crate::engine::DEFAULT_MAX_ASYNC_EVENTS as usize);
        assert_eq!(depth(QueueKind::AsyncEvents), (0, events));
        assert_eq!(depth(QueueKind::CompletionEvents), (0, events));
    }
}

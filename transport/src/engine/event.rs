//! Asynchronous events (`ibv_async_event`) and the bounded queues a namespace keeps
//! them in, as an HCA keeps them in an event queue.
//!
//! Each namespace has one queue of [`AsyncEvent`]s and one of completion-channel events
//! (CQs armed with `req_notify_cq` that got their completion). Both hold at most
//! [`DeviceLimits::max_async_events`](super::DeviceLimits::max_async_events) entries.
//! When a queue is full the *newest* event is dropped and counted
//! ([`Counters::async_events_dropped`](super::Counters::async_events_dropped)), as a
//! hardware event queue overruns: its producer cannot overwrite entries the consumer
//! has not taken, so what is lost is what came last. Keeping the oldest keeps the first
//! failure — usually the cause of the rest — and every event reports a state the
//! application can still read (`query_qp` shows ERR, `query_srq` a disarmed limit, the
//! CQ its overflow), so a lost one costs a notification, never the state.

use std::collections::VecDeque;
use std::fmt;

use ferroce_wire::Qpn;

use super::cq::CompletionQueueId;
use super::srq::SharedReceiveQueueId;

/// The port number of a ferroce device's one port.
pub const PORT_NUM: u8 = 1;

/// An asynchronous event, one of ibverbs' `enum ibv_event_type`: the ones ferroce
/// produces. [`AsyncEvent::ibv_name`] gives the ibverbs constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// `IBV_EVENT_QP_FATAL`: the QP entered the error state on its own (transport or
    /// RNR retries exhausted, a NAK received, a local protection or length error, a
    /// remote operational error as responder), not by a `modify_qp`. Its outstanding
    /// work completes with errors.
    QpFatal(Qpn),
    /// `IBV_EVENT_QP_REQ_ERR`: the QP, as responder, refused an invalid request (it
    /// sent a NAK invalid request) and entered the error state.
    QpReqErr(Qpn),
    /// `IBV_EVENT_QP_ACCESS_ERR`: the QP, as responder, refused a request for a key,
    /// range or access its memory does not grant (it sent a NAK remote access error)
    /// and entered the error state.
    QpAccessErr(Qpn),
    /// `IBV_EVENT_QP_LAST_WQE_REACHED`: a QP attached to an SRQ entered the error state
    /// (on its own or by `modify_qp`); it will take no more receive WRs from the SRQ.
    QpLastWqeReached(Qpn),
    /// `IBV_EVENT_COMM_EST`: the first packet reached a connected QP while it was in
    /// RTR (the peer is talking before this side moved to RTS).
    CommEst(Qpn),
    /// `IBV_EVENT_SRQ_LIMIT_REACHED`: the SRQ fell below its armed limit (the limit is
    /// now disarmed; re-arm with `modify_srq`).
    SrqLimitReached(SharedReceiveQueueId),
    /// `IBV_EVENT_CQ_ERR`: a completion was lost because the CQ was full. rxe raises it
    /// for each lost completion; ferroce for the first loss after each poll of the CQ,
    /// so a full CQ that nobody polls raises one, not one per completion.
    CqErr(CompletionQueueId),
    /// `IBV_EVENT_PORT_ACTIVE`: the port came up (the device opened its sockets, or a
    /// driver works again after a failure).
    PortActive(u8),
    /// `IBV_EVENT_PORT_ERR`: the port went down (a packet driver failed with a
    /// link-level error).
    PortErr(u8),
    /// `IBV_EVENT_GID_CHANGE`: an address was added to the namespace's GID table.
    GidChange(u8),
    /// `IBV_EVENT_DEVICE_FATAL`: the device stopped (its engine thread ended). The
    /// engine never raises it; the device layer reports it once the engine is gone.
    DeviceFatal,
}

impl AsyncEvent {
    /// The ibverbs name of the event type (`IBV_EVENT_QP_FATAL`, ...).
    pub fn ibv_name(&self) -> &'static str {
        match self {
            AsyncEvent::QpFatal(_) => "IBV_EVENT_QP_FATAL",
            AsyncEvent::QpReqErr(_) => "IBV_EVENT_QP_REQ_ERR",
            AsyncEvent::QpAccessErr(_) => "IBV_EVENT_QP_ACCESS_ERR",
            AsyncEvent::QpLastWqeReached(_) => "IBV_EVENT_QP_LAST_WQE_REACHED",
            AsyncEvent::CommEst(_) => "IBV_EVENT_COMM_EST",
            AsyncEvent::SrqLimitReached(_) => "IBV_EVENT_SRQ_LIMIT_REACHED",
            AsyncEvent::CqErr(_) => "IBV_EVENT_CQ_ERR",
            AsyncEvent::PortActive(_) => "IBV_EVENT_PORT_ACTIVE",
            AsyncEvent::PortErr(_) => "IBV_EVENT_PORT_ERR",
            AsyncEvent::GidChange(_) => "IBV_EVENT_GID_CHANGE",
            AsyncEvent::DeviceFatal => "IBV_EVENT_DEVICE_FATAL",
        }
    }

    /// The QP the event is about (`element.qp`).
    pub fn qp_num(&self) -> Option<Qpn> {
        match *self {
            AsyncEvent::QpFatal(qpn)
            | AsyncEvent::QpReqErr(qpn)
            | AsyncEvent::QpAccessErr(qpn)
            | AsyncEvent::QpLastWqeReached(qpn)
            | AsyncEvent::CommEst(qpn) => Some(qpn),
            _ => None,
        }
    }

    /// The port the event is about (`element.port_num`).
    pub fn port_num(&self) -> Option<u8> {
        match *self {
            AsyncEvent::PortActive(port) | AsyncEvent::PortErr(port) => Some(port),
            AsyncEvent::GidChange(port) => Some(port),
            _ => None,
        }
    }
}

impl fmt::Display for AsyncEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.ibv_name();
        match *self {
            AsyncEvent::QpFatal(qpn)
            | AsyncEvent::QpReqErr(qpn)
            | AsyncEvent::QpAccessErr(qpn)
            | AsyncEvent::QpLastWqeReached(qpn)
            | AsyncEvent::CommEst(qpn) => write!(f, "{name} (QP {qpn})"),
            AsyncEvent::SrqLimitReached(srq) => write!(f, "{name} (SRQ {})", srq.0),
            AsyncEvent::CqErr(cq) => write!(f, "{name} (CQ {})", cq.0),
            AsyncEvent::PortActive(port)
            | AsyncEvent::PortErr(port)
            | AsyncEvent::GidChange(port) => write!(f, "{name} (port {port})"),
            AsyncEvent::DeviceFatal => f.write_str(name),
        }
    }
}

/// mlx5's async event queue depth (`MLX5_NUM_ASYNC_EQE`, 0x1000): the default bound.
pub const DEFAULT_MAX_ASYNC_EVENTS: u32 = 0x1000;

/// A FIFO that holds at most `limit` entries and refuses the newest beyond that.
#[derive(Debug)]
pub(crate) struct BoundedQueue<T> {
    entries: VecDeque<T>,
    limit: usize,
}

impl<T> BoundedQueue<T> {
    pub fn new(limit: usize) -> BoundedQueue<T> {
        BoundedQueue {
            entries: VecDeque::new(),
            limit,
        }
    }

    /// Appends `entry`; false (and `entry` dropped) when the queue is full.
    pub fn push(&mut self, entry: T) -> bool {
        if self.entries.len() >= self.limit {
            return false;
        }
        self.entries.push_back(entry);
        true
    }

    pub fn pop(&mut self) -> Option<T> {
        self.entries.pop_front()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most entries it holds.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// One namespace's event queues.
#[derive(Debug)]
pub(crate) struct Events {
    pub async_events: BoundedQueue<AsyncEvent>,
    /// CQs whose armed notification fired (`ibv_get_cq_event`).
    pub completion_events: BoundedQueue<CompletionQueueId>,
}

impl Events {
    pub fn new(limit: u32) -> Events {
        let limit = limit as usize;
        Events {
            async_events: BoundedQueue::new(limit),
            completion_events: BoundedQueue::new(limit),
        }
    }

    /// Queues an async event; false when the queue was full and it was dropped.
    #[must_use]
    pub fn raise(&mut self, event: AsyncEvent) -> bool {
        self.async_events.push(event)
    }

    /// Queues a CQ's completion-channel event; false when dropped.
    #[must_use]
    pub fn notify_completion(&mut self, cq: CompletionQueueId) -> bool {
        self.completion_events.push(cq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_keeps_the_oldest_and_refuses_the_newest() {
        let mut queue = BoundedQueue::new(3);
        assert!((0..3).all(|i| queue.push(i)));
        assert!(!queue.push(3));
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.pop(), Some(0));
        assert!(queue.push(4));
        let rest: Vec<i32> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest, vec![1, 2, 4]);
    }

    #[test]
    fn events_carry_their_ibverbs_names() {
        let event = AsyncEvent::QpFatal(Qpn::new(0x11));
        assert_eq!(event.ibv_name(), "IBV_EVENT_QP_FATAL");
        assert_eq!(event.qp_num(), Some(Qpn::new(0x11)));
        assert_eq!(AsyncEvent::PortErr(PORT_NUM).port_num(), Some(1));
        assert!(AsyncEvent::CqErr(CompletionQueueId(2))
            .to_string()
            .starts_with("IBV_EVENT_CQ_ERR"));
    }
}

//! Completion queues and completion channels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferroce_transport::control::Command;
use ferroce_transport::engine::{CompletionQueueId, WorkCompletion};
use ferroce_transport::io::thread::{CompletionRing, EventChannel};

use crate::device::DeviceInner;
use crate::error::Result;

/// Handles of CQs, unique in the process (so one channel can serve several devices).
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// A completion channel (`ibv_comp_channel`): armed CQs report their next completion
/// here.
#[derive(Debug, Clone)]
pub struct CompletionChannel {
    pub(crate) inner: Arc<EventChannel>,
}

impl CompletionChannel {
    /// Waits up to `timeout` (`None`: forever) for an armed CQ to get a completion and
    /// returns that CQ's [`CompletionQueue::handle`] (`ibv_get_cq_event`). Re-arm with
    /// [`CompletionQueue::req_notify`] before polling it empty.
    pub fn get_cq_event(&self, timeout: Option<Duration>) -> Option<u64> {
        self.inner.get_event(timeout)
    }
}

pub(crate) struct CqInner {
    pub(crate) device: Arc<DeviceInner>,
    pub(crate) id: CompletionQueueId,
    pub(crate) ring: Arc<CompletionRing>,
    handle: u64,
    cqe: u32,
}

impl std::fmt::Debug for CqInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("id", &self.id.0)
            .field("cqe", &self.cqe)
            .field("waiting", &self.ring.len())
            .finish()
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        // Every QP using this CQ holds it, so no QP uses it by now. Destroying it stops
        // the delivery into its ring.
        let _ = self
            .device
            .execute::<()>(Command::DestroyCq { cq: self.id });
    }
}

/// A completion queue (`ibv_cq`). Completions reach it through a lock-free queue; `poll`
/// never blocks (it runs an engine round only when the engine is free). QPs using it keep
/// it alive.
#[derive(Debug, Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

impl CompletionQueue {
    pub(crate) fn create(
        device: Arc<DeviceInner>,
        cqe: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue> {
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        let ring = Arc::new(CompletionRing::new(
            cqe as usize,
            channel.map(|c| (c.inner.clone(), handle)),
        ));
        // Nothing completes on a CQ before a QP uses it, so nothing is lost before the
        // ring is attached.
        let id = device.execute(Command::CreateCq { cqe })?;
        device.backend.attach_ring(device.ns, id, ring.clone())?;
        Ok(CompletionQueue {
            inner: Arc::new(CqInner {
                device,
                id,
                ring,
                handle,
                cqe,
            }),
        })
    }

    /// This CQ's handle, as [`CompletionChannel::get_cq_event`] reports it.
    pub fn handle(&self) -> u64 {
        self.inner.handle
    }

    /// The engine's identifier of this CQ, as async events (`CqErr`) name it.
    pub fn id(&self) -> CompletionQueueId {
        self.inner.id
    }

    /// Entries (`cqe`).
    pub fn cqe(&self) -> u32 {
        self.inner.cqe
    }

    /// Takes up to `max` completions, oldest first (`ibv_poll_cq`).
    ///
    /// When none waits, the calling thread runs a round of the engine itself (receives,
    /// processes, transmits) if no other thread is running one, then looks again: a
    /// polling application drives its device with no hand-off to another thread.
    pub fn poll(&self, max: usize) -> Vec<WorkCompletion> {
        let mut out = Vec::new();
        self.poll_into(max, &mut out);
        out
    }

    /// Appends up to `max` completions to `out`; returns how many. Drives the engine as
    /// [`CompletionQueue::poll`] does.
    pub fn poll_into(&self, max: usize, out: &mut Vec<WorkCompletion>) -> usize {
        let taken = self.inner.ring.poll(max, out);
        if taken > 0 {
            self.inner.device.backend.note_poll();
            return taken;
        }
        if max == 0 {
            return 0;
        }
        self.inner.device.backend.drive();
        self.inner.ring.poll(max, out)
    }

    /// Arms the notification (`ibv_req_notify_cq`): the next completion added puts an
    /// event on the CQ's channel. ferroce notifies on every completion, solicited or not.
    /// An application arms before it blocks on the channel, so the engine thread takes
    /// over the driving here.
    pub fn req_notify(&self) {
        self.inner.ring.req_notify();
        self.inner.device.backend.hand_off();
    }

    /// Blocks until a completion waits or `timeout` passes (`None`: forever); returns
    /// whether one waits. Needs no channel. The engine thread drives meanwhile.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if !self.inner.ring.is_empty() {
            return true;
        }
        self.inner.device.backend.hand_off();
        self.inner.ring.wait(timeout)
    }

    /// Polls until `count` completions arrived, or `timeout` passed: `Ok` holds exactly
    /// `count` completions, oldest first; [`PollTimeout`] holds the fewer that came in
    /// time (none taken is lost). `?` turns the timeout into
    /// [`Error::Timeout`](crate::Error::Timeout).
    #[allow(clippy::disallowed_methods)] // An application-side deadline, not engine time.
    pub fn poll_wait(
        &self,
        count: usize,
        timeout: Duration,
    ) -> std::result::Result<Vec<WorkCompletion>, PollTimeout> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(PollTimeout {
                    completions: out,
                    wanted: count,
                    timeout,
                });
            }
            if self.inner.ring.poll(count - out.len(), &mut out) == 0 {
                self.wait(Some(left));
            }
        }
        Ok(out)
    }
}

/// [`CompletionQueue::poll_wait`] ran out of time before `wanted` completions arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {timeout:?} with {} of {wanted} completions", completions.len())]
#[non_exhaustive]
pub struct PollTimeout {
    /// The completions that did arrive, oldest first (fewer than `wanted`).
    pub completions: Vec<WorkCompletion>,
    /// How many were asked for.
    pub wanted: usize,
    /// How long `poll_wait` waited.
    pub timeout: Duration,
}

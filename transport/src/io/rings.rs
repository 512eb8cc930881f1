//! Where the engine's results wait for the application: a completion queue's
//! [`CompletionRing`] (lock-free, a mutex/condvar touched only by a thread that blocks)
//! and an [`EventChannel`] (a completion channel's CQ tags, or a namespace's async
//! events). Rounds move completions and events in; applications take them out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use crate::engine::WorkCompletion;

/// Waits on `cond` (with `guard` of its mutex) until `take` yields a value or `timeout`
/// passes (`None`: forever).
#[allow(clippy::disallowed_methods)] // An application's wait: real time, not engine time.
fn wait_for<G, R>(
    cond: &Condvar,
    mut guard: MutexGuard<'_, G>,
    timeout: Option<Duration>,
    mut take: impl FnMut(&mut G) -> Option<R>,
) -> Option<R> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(value) = take(&mut guard) {
            return Some(value);
        }
        guard = match deadline {
            None => cond.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                cond.wait_timeout(guard, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// Async events moved out of the engine into a namespace's [`EventChannel`] at most at
/// once; the rest wait in the engine's bounded queue.
pub const EVENT_CHANNEL_DEPTH: usize = 64;

/// Where events go for an application to wait on: a completion channel's CQ tags
/// (`ibv_comp_channel`), or a namespace's async events (the device's async fd).
#[derive(Debug)]
pub struct EventChannel<T = u64> {
    events: Mutex<VecDeque<T>>,
    cond: Condvar,
}

impl<T> Default for EventChannel<T> {
    fn default() -> EventChannel<T> {
        EventChannel {
            events: Mutex::new(VecDeque::new()),
            cond: Condvar::new(),
        }
    }
}

impl<T> EventChannel<T> {
    /// An empty channel.
    pub fn new() -> EventChannel<T> {
        EventChannel::default()
    }

    pub(crate) fn push(&self, event: T) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push_back(event);
        self.cond.notify_all();
    }

    /// The next event (for a completion channel: the tag of the next CQ that got a
    /// completion while armed), waiting up to `timeout` (`None`: forever).
    pub fn get_event(&self, timeout: Option<Duration>) -> Option<T> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        wait_for(&self.cond, events, timeout, VecDeque::pop_front)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The application side of a completion queue: the engine thread moves completions in
/// (at most `capacity` waiting; the rest stay in the engine's CQ, which overflows as a
/// CQ does), applications take them out. Lock-free except for blocking waits.
#[derive(Debug)]
pub struct CompletionRing {
    entries: SegQueue<WorkCompletion>,
    len: AtomicUsize,
    capacity: usize,
    armed: AtomicBool,
    sleepers: AtomicUsize,
    gate: Mutex<()>,
    cond: Condvar,
    channel: Option<(Arc<EventChannel>, u64)>,
}

impl CompletionRing {
    /// A ring for a CQ of `capacity` entries; `channel` (with the tag its events carry)
    /// gets an event per armed notification.
    pub fn new(capacity: usize, channel: Option<(Arc<EventChannel>, u64)>) -> CompletionRing {
        CompletionRing {
            entries: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity,
            armed: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            gate: Mutex::new(()),
            cond: Condvar::new(),
            channel,
        }
    }

    /// Appends up to `max` completions to `out`, oldest first; returns how many.
    pub fn poll(&self, max: usize, out: &mut Vec<WorkCompletion>) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(wc) = self.entries.pop() else { break };
            self.len.fetch_sub(1, Ordering::SeqCst);
            out.push(wc);
            taken += 1;
        }
        taken
    }

    /// Completions waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// True when no completion waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arms the notification: the next completion added puts an event on the channel.
    pub fn req_notify(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Blocks until a completion waits or `timeout` passes (`None`: forever); returns
    /// whether one waits.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        if !self.is_empty() {
            return true;
        }
        // Announce the sleeper before checking again under the gate: the engine thread
        // adds entries before it looks for sleepers, so one of us sees the other.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let found = wait_for(&self.cond, guard, timeout, |_| {
            (!self.is_empty()).then_some(())
        });
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        found.is_some()
    }

    /// Adds completions and wakes whoever waits for them.
    pub fn deliver(&self, completions: impl IntoIterator<Item = WorkCompletion>) {
        let mut added = 0;
        for wc in completions {
            self.entries.push(wc);
            self.len.fetch_add(1, Ordering::SeqCst);
            added += 1;
        }
        if added == 0 {
            return;
        }
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some((channel, tag)) = &self.channel {
                channel.push(*tag);
            }
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_all();
        }
    }

    /// Completions that fit before the ring holds `capacity`.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{WcOpcode, WcStatus};
    use ferroce_wire::Qpn;

    fn completion(wr_id: u64) -> WorkCompletion {
        WorkCompletion {
            wr_id,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            imm_data: None,
            invalidated_rkey: None,
            qp_num: Qpn::new(0x11),
            src_qp: Qpn::new(0),
            grh: false,
            pkey_index: 0,
            vendor_err: 0,
        }
    }

    #[test]
    fn ring_wakes_waiters_and_notifies_once_per_arming() {
        let channel = Arc::new(EventChannel::new());
        let ring = Arc::new(CompletionRing::new(4, Some((channel.clone(), 9))));
        assert!(!ring.wait(Some(Duration::from_millis(10))));
        ring.req_notify();
        let waiter = {
            let ring = ring.clone();
            std::thread::spawn(move || ring.wait(Some(Duration::from_secs(10))))
        };
        std::thread::sleep(Duration::from_millis(20));
        ring.deliver([completion(1), completion(2)]);
        assert!(waiter.join().unwrap());
        assert_eq!(channel.get_event(Some(Duration::from_secs(1))), Some(9));
        // Not re-armed: no event for the next completion.
        ring.deliver([completion(3)]);
        assert_eq!(channel.get_event(Some(Duration::from_millis(10))), None);
        assert_eq!((ring.len(), ring.room()), (3, 1));
        let mut out = Vec::new();
        assert_eq!(ring.poll(2, &mut out), 2);
        assert_eq!(ring.poll(5, &mut out), 1);
        let ids: Vec<u64> = out.iter().map(|w| w.wr_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(ring.is_empty());
    }
}

//! Asynchronous events (`ibv_get_async_event`): what happens to a device's QPs, CQs,
//! SRQs and port outside any work request.
//!
//! ```
//! use std::time::Duration;
//! use ferroce::{AsyncEvent, Device, DeviceConfig};
//!
//! # fn main() -> Result<(), ferroce::Error> {
//! let device = Device::open(DeviceConfig::with_address("127.81.0.9".parse().unwrap()))?;
//! // The port came up when the device bound its socket.
//! assert_eq!(device.get_async_event()?, AsyncEvent::PortActive(1));
//! // Nothing else happened.
//! assert_eq!(device.try_get_async_event()?, None);
//! assert_eq!(device.wait_async_event(Some(Duration::from_millis(10)))?, None);
//! # Ok(())
//! # }
//! ```
//!
//! The events ([`AsyncEvent`], named after ibverbs' `IBV_EVENT_*`): `QpFatal`,
//! `QpReqErr`, `QpAccessErr`, `QpLastWqeReached`, `CommEst`, `SrqLimitReached`,
//! `CqErr`, `PortActive`, `PortErr`, `GidChange` and `DeviceFatal`. There is no `ibv_ack_async_event`: an event is
//! handed out once and owns nothing.
//!
//! The engine queues at most [`DeviceLimits::max_async_events`] events (4096 unless
//! configured) and [`EVENT_CHANNEL_DEPTH`] more wait here; when the queue is full the
//! newest event is dropped and counted (`Counters::async_events_dropped`), as a
//! hardware event queue overruns (see `ferroce_transport::engine::event`).
//!
//! [`DeviceLimits::max_async_events`]: crate::transport::engine::DeviceLimits::max_async_events

use std::sync::atomic::Ordering;
use std::time::Duration;

pub use ferroce_transport::engine::AsyncEvent;
pub use ferroce_transport::io::thread::EVENT_CHANNEL_DEPTH;

use crate::device::Device;
use crate::error::{Error, Result};

/// How often a blocked wait looks whether the engine thread is still alive.
const ALIVE_CHECK: Duration = Duration::from_millis(100);

impl Device {
    /// The next async event, waiting for one as long as it takes
    /// (`ibv_get_async_event`). Once the device has stopped: `DeviceFatal` once, then
    /// [`Error::DeviceStopped`].
    pub fn get_async_event(&self) -> Result<AsyncEvent> {
        loop {
            if let Some(event) = self.wait_async_event(None)? {
                return Ok(event);
            }
        }
    }

    /// The next async event if one waits, without blocking (`ibv_get_async_event` on a
    /// non-blocking async fd). When none waits, the calling thread runs an engine
    /// round if the engine is free, as [`CompletionQueue::poll`] does, and looks again.
    ///
    /// [`CompletionQueue::poll`]: crate::CompletionQueue::poll
    pub fn try_get_async_event(&self) -> Result<Option<AsyncEvent>> {
        let events = &self.inner.events;
        if let Some(event) = events.get_event(Some(Duration::ZERO)) {
            return Ok(Some(event));
        }
        self.inner.backend.drive();
        match events.get_event(Some(Duration::ZERO)) {
            Some(event) => Ok(Some(event)),
            None => self.end_of_device(),
        }
    }

    /// The next async event, waiting up to `timeout` (`None`: forever) — the form to
    /// use where ibverbs applications `poll` the async fd. `Ok(None)` when the time
    /// passed with no event. The engine thread, or an application driving the device,
    /// delivers events as they happen; this thread only sleeps.
    #[allow(clippy::disallowed_methods)] // An application-side deadline, not engine time.
    pub fn wait_async_event(&self, timeout: Option<Duration>) -> Result<Option<AsyncEvent>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let slice = left.map_or(ALIVE_CHECK, |left| left.min(ALIVE_CHECK));
            if let Some(event) = self.inner.events.get_event(Some(slice)) {
                return Ok(Some(event));
            }
            if let Some(event) = self.end_of_device()? {
                return Ok(Some(event));
            }
            if left.is_some_and(|left| left <= slice) {
                return Ok(None);
            }
        }
    }

    /// Once the engine thread has ended and its last events were taken: `DeviceFatal`
    /// the first time, then `Err(DeviceStopped)`. `Ok(None)` while it runs.
    fn end_of_device(&self) -> Result<Option<AsyncEvent>> {
        if self.inner.backend.is_alive() || !self.inner.events.is_empty() {
            return Ok(None);
        }
        if self.inner.fatal_reported.swap(true, Ordering::SeqCst) {
            return Err(Error::DeviceStopped);
        }
        Ok(Some(AsyncEvent::DeviceFatal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceConfig;

    /// The engine thread ending (here: a command panicking on it, as an engine bug
    /// would) is `DeviceFatal`, once, and a waiter blocked meanwhile wakes for it.
    #[test]
    fn a_stopped_device_reports_device_fatal_once() {
        let config = DeviceConfig::with_address("127.81.0.10".parse().expect("literal"));
        let device = Device::open(config).expect("bind the test address");
        assert_eq!(
            device.get_async_event().ok(),
            Some(AsyncEvent::PortActive(1))
        );
        let waiter = {
            let device = device.clone();
            std::thread::spawn(move || device.get_async_event())
        };
        std::thread::sleep(Duration::from_millis(50));
        device.inner.backend.inject_panic(device.inner.ns);
        let event = waiter.join().expect("the waiter").ok();
        assert_eq!(event, Some(AsyncEvent::DeviceFatal));
        assert!(matches!(
            device.get_async_event(),
            Err(Error::DeviceStopped)
        ));
        assert!(matches!(
            device.try_get_async_event(),
            Err(Error::DeviceStopped)
        ));
    }
}

//! The engine thread: one per device, owning the [`Engine`] and one [`Driver`] per local
//! address, in a run-to-completion loop — and the applications' threads, which run the
//! same loop themselves when they post or poll.
//!
//! Each round: receive a batch from every driver and feed it to the engine (recovering
//! the IPv4 identification the ICRC covers), take the work applications queued (posted
//! WRs and control calls, in the order they were queued), drain `poll_transmit` into
//! `send_batch` (what the kernel did not take waits for the next round), run due timers,
//! and move new completions into the applications' [`CompletionRing`]s and new async
//! events into the [`EventChannel`] of each namespace that has one. About once a second
//! the engine thread asks whether the drivers' addresses are still on a working link
//! ([`link::address_usable`], ~100 µs: never on an application's thread); the next round
//! tells the engine of a change ([`Engine::handle_port_event`]), which raises
//! `PortActive`/`PortErr`.
//!
//! Who runs a round: the engine, its drivers and the rings sit behind one mutex, and
//! whichever thread takes it runs the round. An application that posts work or polls an
//! empty completion queue runs a round right there ([`EngineThread::drive`]), so a work
//! request reaches the wire, and a datagram its completion, on the caller's own thread
//! with no hand-off; on a 2-core machine that is the difference between one busy thread
//! and three. The engine thread is the progress thread for the rest: while applications
//! drive (one did within [`APP_WINDOW`]) it stays out of their way, blocked on its
//! doorbell; otherwise it runs rounds, keeps polling for a short busy-poll window, then
//! blocks in `ppoll` on the drivers and the doorbell until a datagram, a hand-off (an
//! application about to block, [`EngineThread::hand_off`]) or the engine's next timeout.
//! Work is queued before the mutex is tried, and a round's runner looks at the queue
//! again after letting go, so queued work is never stranded.
//!
//! Applications never take a lock per packet they do not process: work goes through a
//! lock-free queue and completions come back through lock-free per-CQ queues; a
//! mutex/condvar pair is touched only by a thread that blocks waiting for a completion.
//!
//! Real time enters the engine here and nowhere else: one `Instant` taken when the
//! thread starts, and `Time::from_nanos(elapsed)` each round.
#![allow(clippy::disallowed_methods)] // The engine thread is the engine's clock (see above).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use ferroce_wire::ident::Recovered;
use ferroce_wire::Qpn;

use super::link;
use super::raw::IpHeaderTap;
use super::solvers::Solvers;
use super::waker::{wait_readable, Doorbell};
use super::{Driver, DriverKind, ReceiveIntegrity};
use crate::engine::{
    AsyncEvent, CompletionQueueId, DatagramMeta, Engine, EngineConfig, LentDatagram, NamespaceId,
    RecvWr, SendOp, SendWr, SharedReceiveQueueId, Time, VerbsError, WcOpcode, WcStatus,
    WorkCompletion,
};

/// Datagrams taken from the engine per driver before they are handed to the kernel.
const TRANSMIT_BATCH: usize = 64;
/// Queued work items taken per round (so receives and transmits are not starved).
const WORK_BATCH: usize = 1024;
/// Posts that may wait for the thread running a round; a poster finding this many waits
/// for that thread (back-pressure) instead of growing the queue.
pub const MAX_QUEUED_WORK: usize = 4 * WORK_BATCH;

/// `vendor_err` of the error completion for a work request the engine refused at post
/// time: the QP state does not accept it.
pub const POST_ERR_STATE: u32 = 0x100;
/// … the work queue is full.
pub const POST_ERR_QUEUE_FULL: u32 = 0x101;
/// … a limit (SGEs, inline bytes) is exceeded.
pub const POST_ERR_LIMIT: u32 = 0x102;
/// … any other refusal (invalid argument, unknown QP).
pub const POST_ERR_OTHER: u32 = 0x103;

/// Waits on `cond` (with `guard` of its mutex) until `take` yields a value or `timeout`
/// passes (`None`: forever).
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

    fn push(&self, event: T) {
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

    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }
}

/// Work an application posts to a QP; a refusal becomes an error completion in `errors`
/// (status `LocQpOpErr`, `vendor_err` one of the `POST_ERR_*` codes).
#[derive(Debug)]
pub enum Post {
    /// `post_send`.
    Send {
        /// Namespace.
        ns: NamespaceId,
        /// QP.
        qpn: Qpn,
        /// The work request.
        wr: SendWr,
        /// The QP's send CQ.
        errors: Arc<CompletionRing>,
    },
    /// `post_recv`.
    Recv {
        /// Namespace.
        ns: NamespaceId,
        /// QP.
        qpn: Qpn,
        /// The work request.
        wr: RecvWr,
        /// The QP's receive CQ.
        errors: Arc<CompletionRing>,
    },
}

/// Counters of the engine thread itself (the engine counts the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThreadCounters {
    /// Rounds of the loop.
    pub rounds: u64,
    /// Times the thread blocked.
    pub sleeps: u64,
    /// IPv4 datagrams whose ICRC matched with identification 0 and DF (no solver
    /// needed).
    pub ident_zero: u64,
    /// IPv4 datagrams for which no identification makes the ICRC valid (the engine then
    /// counts them as ICRC errors).
    pub ident_unrecovered: u64,
    /// IPv4 datagrams whose recovered identification was not 0 (segments of a peer's
    /// GSO run, or a kernel that numbers datagrams, as rxe's): checked to 16 bits.
    pub ident_nonzero: u64,
    /// IPv4 datagrams dropped because their length needed a new identification solver
    /// and the ration of builds was spent ([`super::SolverLimits::builds_per_second`]).
    pub ident_over_budget: u64,
    /// Identification solvers built so far (one per new datagram length, again after
    /// eviction).
    pub ident_solvers_built: u64,
    /// [`ReceiveIntegrity::FullIcrc`]: IPv4 datagrams whose IP header the raw socket
    /// showed (the engine checks their full ICRC).
    pub ip_header_seen: u64,
    /// [`ReceiveIntegrity::FullIcrc`]: IPv4 datagrams without a raw copy (the raw
    /// socket's buffer overflowed), dropped.
    pub ip_header_missing: u64,
    /// [`ReceiveIntegrity::FullIcrc`]: raw copies without a datagram (the UDP socket's
    /// buffer overflowed, or the packet had IP options), discarded.
    pub ip_raw_unmatched: u64,
    /// Datagrams longer than the receive buffer, dropped.
    pub truncated: u64,
    /// Datagrams from a source address no driver is bound to, dropped.
    pub unroutable: u64,
    /// Send or receive calls that failed (the datagrams are dropped; RoCE retransmits).
    pub io_errors: u64,
    /// Posted work requests the engine refused (each got an error completion, unless
    /// its CQ was full: see `lost_post_errors`).
    pub refused_posts: u64,
    /// Error completions of refused posts that found their CQ full, dropped (a CQ
    /// never holds more than its depth).
    pub lost_post_errors: u64,
}

/// What a control call sees on the engine thread: the engine and the completion rings.
#[derive(Debug)]
pub struct Core {
    /// The engine.
    pub engine: Engine,
    rings: BTreeMap<(NamespaceId, CompletionQueueId), Arc<CompletionRing>>,
    event_channels: BTreeMap<NamespaceId, Arc<EventChannel<AsyncEvent>>>,
    counters: ThreadCounters,
}

impl Core {
    /// From now on, completions of the engine's CQ `cq` are moved into `ring`.
    pub fn attach_ring(
        &mut self,
        ns: NamespaceId,
        cq: CompletionQueueId,
        ring: Arc<CompletionRing>,
    ) {
        self.rings.insert((ns, cq), ring);
    }

    /// From now on, async events of namespace `ns` are moved into `channel` (up to
    /// [`EVENT_CHANNEL_DEPTH`] waiting there), each round.
    pub fn attach_events(&mut self, ns: NamespaceId, channel: Arc<EventChannel<AsyncEvent>>) {
        self.event_channels.insert(ns, channel);
        self.deliver_events();
    }

    /// Stops moving async events of `ns`.
    pub fn detach_events(&mut self, ns: NamespaceId) {
        self.event_channels.remove(&ns);
    }

    /// Stops moving completions of `cq` (before destroying it).
    pub fn detach_ring(&mut self, ns: NamespaceId, cq: CompletionQueueId) {
        self.rings.remove(&(ns, cq));
    }

    /// The thread's counters.
    pub fn counters(&self) -> ThreadCounters {
        self.counters
    }

    /// Posts to an SRQ (synchronously, from a control call).
    pub fn post_srq_recv(
        &mut self,
        ns: NamespaceId,
        srq: SharedReceiveQueueId,
        wr: RecvWr,
    ) -> Result<(), VerbsError> {
        self.engine.post_srq_recv(ns, srq, wr)
    }

    fn apply(&mut self, post: Post) {
        let (result, wr_id, opcode, qpn, errors) = match post {
            Post::Send {
                ns,
                qpn,
                wr,
                errors,
            } => {
                let wr_id = wr.wr_id;
                let opcode = send_opcode(wr.op);
                (
                    self.engine.post_send(ns, qpn, wr),
                    wr_id,
                    opcode,
                    qpn,
                    errors,
                )
            }
            Post::Recv {
                ns,
                qpn,
                wr,
                errors,
            } => {
                let wr_id = wr.wr_id;
                (
                    self.engine.post_recv(ns, qpn, wr),
                    wr_id,
                    WcOpcode::Recv,
                    qpn,
                    errors,
                )
            }
        };
        if let Err(error) = result {
            self.counters.refused_posts += 1;
            let vendor_err = match error {
                VerbsError::InvalidState(_) => POST_ERR_STATE,
                VerbsError::QueueFull => POST_ERR_QUEUE_FULL,
                VerbsError::LimitExceeded(_) => POST_ERR_LIMIT,
                _ => POST_ERR_OTHER,
            };
            // An application posting into a full queue without polling must not grow
            // the CQ past its depth.
            if errors.room() == 0 {
                self.counters.lost_post_errors += 1;
                tracing::warn!(qpn = %qpn, wr_id, "a refused post's error completion found its CQ full; dropped");
                return;
            }
            errors.deliver([WorkCompletion {
                wr_id,
                status: WcStatus::LocQpOpErr,
                opcode,
                byte_len: 0,
                imm_data: None,
                invalidated_rkey: None,
                qp_num: qpn,
                src_qp: Qpn::new(0),
                grh: false,
                pkey_index: 0,
                vendor_err,
            }]);
        }
    }

    /// Moves new async events into their channels; returns how many moved.
    fn deliver_events(&mut self) -> usize {
        let mut moved = 0;
        for (&ns, channel) in &self.event_channels {
            if self.engine.pending_events(ns) == 0 {
                continue;
            }
            for _ in channel.len()..EVENT_CHANNEL_DEPTH {
                let Some(event) = self.engine.poll_event(ns) else {
                    break;
                };
                channel.push(event);
                moved += 1;
            }
        }
        moved
    }

    /// Moves new completions into their rings; returns how many moved.
    fn deliver_completions(&mut self) -> usize {
        let mut moved = 0;
        for (&(ns, cq), ring) in &self.rings {
            let room = ring.room();
            if room == 0 {
                continue;
            }
            match self.engine.poll_cq(ns, cq, room) {
                Ok(completions) if !completions.is_empty() => {
                    moved += completions.len();
                    ring.deliver(completions);
                }
                _ => {}
            }
        }
        moved
    }
}

fn send_opcode(op: SendOp) -> WcOpcode {
    match op {
        SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInv(_) => WcOpcode::Send,
        SendOp::RdmaWrite { .. } | SendOp::RdmaWriteWithImm { .. } => WcOpcode::RdmaWrite,
        SendOp::RdmaRead { .. } => WcOpcode::RdmaRead,
        SendOp::CompareSwap { .. } => WcOpcode::CompSwap,
        SendOp::FetchAdd { .. } => WcOpcode::FetchAdd,
        SendOp::LocalInv(_) => WcOpcode::LocalInv,
    }
}

type Call = Box<dyn FnOnce(&mut Core) + Send>;

enum Work {
    Post(Post),
    Call(Call),
}

/// How long after an application last ran a round the engine thread leaves the driving
/// to applications (it blocks on its doorbell meanwhile).
pub const APP_WINDOW: Duration = Duration::from_micros(500);

/// What the engine thread and the applications' threads share.
struct Shared {
    queue: SegQueue<Work>,
    /// The engine, its drivers and the completion rings; whoever holds it runs rounds.
    runner: Mutex<Runner>,
    doorbell: Doorbell,
    /// The doorbell and every driver's descriptor, for the engine thread's `ppoll`.
    wait_fds: Vec<RawFd>,
    /// Engine time (ns, at least 1) of the last round an application ran; 0 after a
    /// hand-off.
    app_round: AtomicU64,
    stop: AtomicBool,
    alive: AtomicBool,
    start: Instant,
    busy_poll: Duration,
    /// The drivers' addresses, and whether all are on a working link: the engine thread
    /// checks, outside the lock, and rounds tell the engine.
    port_ips: Vec<IpAddr>,
    link_up: Arc<AtomicBool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("queued", &self.queue.len())
            .field("alive", &self.alive)
            .finish()
    }
}

impl Shared {
    fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Marks the engine dead and drops queued work, so callers waiting for replies see
    /// the end.
    fn die(&self) {
        self.alive.store(false, Ordering::SeqCst);
        while self.queue.pop().is_some() {}
    }

    /// True while an application ran a round less than [`APP_WINDOW`] ago.
    fn applications_drive(&self, now: Time) -> bool {
        let last = self.app_round.load(Ordering::Relaxed);
        last != 0 && now.as_nanos().saturating_sub(last) < APP_WINDOW.as_nanos() as u64
    }

    /// Runs rounds on the calling application thread while the engine is free and work
    /// waits; returns whether anything happened. A thread that finds the engine taken
    /// leaves: the holder looks at the queue after letting go. A poster's round
    /// (`receive` false) only takes work and transmits: looking for datagrams right after
    /// posting finds none and costs a system call. Only receiving rounds count as the
    /// application driving, so one that posts and never polls leaves the receiving to
    /// the engine thread.
    fn drive(&self, receive: bool) -> bool {
        self.drive_posting(receive, std::iter::empty())
    }

    /// [`Shared::drive`], posting `posts` first. When this thread gets the engine and
    /// nothing older is queued, they go straight to it; otherwise they are queued behind
    /// the older work (and run by whoever holds the engine), so the order of posts holds.
    fn drive_posting(&self, receive: bool, posts: impl Iterator<Item = Post>) -> bool {
        let mut posts = Some(posts);
        let mut progressed = false;
        while self.alive.load(Ordering::Relaxed) {
            let mut runner = match self.runner.try_lock() {
                Ok(runner) => runner,
                Err(TryLockError::WouldBlock) => match posts.take() {
                    // Queued now, so the holder finds them when it looks after letting
                    // go; unless it has let go already, which the next try finds.
                    Some(more) if self.queue.len() < MAX_QUEUED_WORK => {
                        self.queue_posts(more);
                        continue;
                    }
                    // The queue is full: wait for the round in progress and run one,
                    // rather than let a fast poster grow it without bound.
                    Some(more) => {
                        posts = Some(more);
                        match self.runner.lock() {
                            Ok(runner) => runner,
                            Err(_) => {
                                self.die();
                                return progressed;
                            }
                        }
                    }
                    None => return progressed,
                },
                Err(TryLockError::Poisoned(_)) => {
                    self.die();
                    return progressed;
                }
            };
            // Dead since the check above (a round panicked on another thread): touch
            // nothing, memory the application registered may be going away.
            if !self.alive.load(Ordering::SeqCst) {
                break;
            }
            let mut direct = posts.take();
            if !self.queue.is_empty() {
                if let Some(posts) = direct.take() {
                    self.queue_posts(posts);
                }
            }
            let now = self.now();
            // An engine bug must not unwind through the application's post or poll: the
            // engine dies (its calls then fail with `EngineStopped`) and the caller goes on.
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let posted =
                    direct.map_or(0, |posts| posts.map(|post| runner.core.apply(post)).count());
                runner.round(now, &self.queue, receive) || posted > 0
            }));
            let Ok(busy) = round else {
                self.die();
                return progressed;
            };
            progressed |= busy;
            if receive {
                // Stamped at the round's end: a busy round can outlast `APP_WINDOW` (a full
                // window of 4 KiB packets takes ~0.6 ms), and the engine thread must not
                // take the sending over from a thread that is still driving.
                self.note_application(if busy { self.now() } else { now });
            }
            drop(runner);
            if self.queue.is_empty() {
                break;
            }
        }
        progressed
    }

    /// Queues `posts` behind the work queued before them.
    fn queue_posts(&self, posts: impl Iterator<Item = Post>) {
        posts.for_each(|post| self.queue.push(Work::Post(post)));
    }

    /// Records that an application drove (or will) at `now`: the engine thread keeps off
    /// for [`APP_WINDOW`].
    fn note_application(&self, now: Time) {
        self.app_round
            .store(now.as_nanos().max(1), Ordering::Relaxed);
    }

    fn push(&self, work: Work) {
        self.queue.push(work);
        self.drive(false);
    }
}

/// The engine thread's configuration.
#[derive(Debug, Clone)]
pub struct EngineThreadConfig {
    /// The engine's configuration (its default GIDs should be the addresses' IPs, and its
    /// source-port policy `Fixed(port)`: the ICRC covers the port datagrams leave from).
    pub engine: EngineConfig,
    /// Seed of the engine's key generator.
    pub seed: u64,
    /// One driver is bound per address (normally port 4791).
    pub addresses: Vec<SocketAddr>,
    /// Which driver kind.
    pub driver: DriverKind,
    /// How received IPv4 datagrams' ICRCs are checked.
    pub receive_integrity: ReceiveIntegrity,
    /// How long the thread keeps polling with nothing to do before it blocks.
    pub busy_poll: Duration,
    /// Thread name.
    pub name: String,
}

/// The engine thread was stopped (its device is gone, or it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine thread has stopped")]
pub struct EngineStopped;

/// A running engine thread. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct EngineThread {
    shared: Arc<Shared>,
    join: Option<JoinHandle<()>>,
    drivers: Vec<(SocketAddr, DriverKind)>,
}

/// A driver and the datagrams waiting for room in its kernel buffer: owned between
/// rounds (`Port<'static>`), maybe lent from the engine during one (see
/// `Runner::transmit`).
struct Port<'r> {
    driver: Driver,
    ip: IpAddr,
    port: u16,
    /// [`ReceiveIntegrity::FullIcrc`] on IPv4: the raw socket that shows IP headers.
    tap: Option<IpHeaderTap>,
    pending: Vec<LentDatagram<'r>>,
}

impl Port<'_> {
    /// The port with the lent bytes of what waits copied in, to wait past the round.
    fn own_pending(self) -> Port<'static> {
        Port {
            driver: self.driver,
            ip: self.ip,
            port: self.port,
            tap: self.tap,
            pending: LentDatagram::own_all(self.pending),
        }
    }
}

struct Runner {
    core: Core,
    ports: Vec<Port<'static>>,
    solvers: Solvers,
    /// The engine's datagrams on their way to their port's `pending` (empty between
    /// rounds).
    outbox: Vec<LentDatagram<'static>>,
    /// The link's state as the engine thread last found it ([`Shared::link_up`]) ...
    link_up: Arc<AtomicBool>,
    /// ... and as the engine was last told.
    link_told: bool,
}

/// How often the engine thread checks the link; it sleeps at most this long, so an idle
/// device notices too.
pub const LINK_CHECK: Duration = Duration::from_secs(1);

/// True when every address is on a working link (an error asking counts as working:
/// the drivers are the better judges then).
fn addresses_usable(ips: &[IpAddr]) -> bool {
    ips.iter()
        .all(|ip| link::address_usable(*ip).unwrap_or(true))
}

/// Marks the thread dead however it ends (a panic included) and drops queued work, so
/// callers waiting for replies see the end.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.die();
    }
}

impl EngineThread {
    /// Binds one driver per address (errors come back here), then starts the thread.
    pub fn spawn(config: EngineThreadConfig) -> io::Result<EngineThread> {
        let mut ports = Vec::new();
        for addr in &config.addresses {
            let driver = Driver::bind(*addr, config.driver)?;
            let local = driver.local_addr();
            let tap = match (config.receive_integrity, local) {
                (ReceiveIntegrity::FullIcrc, SocketAddr::V4(local)) => {
                    Some(IpHeaderTap::open(local)?)
                }
                _ => None,
            };
            ports.push(Port {
                driver,
                ip: local.ip().to_canonical(),
                port: local.port(),
                tap,
                pending: Vec::new(),
            });
        }
        let drivers = ports
            .iter()
            .map(|p| (p.driver.local_addr(), p.driver.kind()))
            .collect();
        let doorbell = Doorbell::new()?;
        let mut wait_fds = vec![doorbell.as_raw_fd()];
        wait_fds.extend(ports.iter().map(|p| p.driver.poll_fd()));
        let mut engine = Engine::new(config.engine, config.seed);
        let port_ips: Vec<IpAddr> = ports.iter().map(|p| p.ip).collect();
        // The sockets are bound: the port is up if their link is (`PortActive`).
        let link_up = !port_ips.is_empty() && addresses_usable(&port_ips);
        engine.handle_port_event(link_up);
        let link_up = Arc::new(AtomicBool::new(link_up));
        let shared = Arc::new(Shared {
            queue: SegQueue::new(),
            runner: Mutex::new(Runner {
                core: Core {
                    engine,
                    rings: BTreeMap::new(),
                    event_channels: BTreeMap::new(),
                    counters: ThreadCounters::default(),
                },
                link_up: link_up.clone(),
                link_told: link_up.load(Ordering::Relaxed),
                ports,
                solvers: match config.receive_integrity {
                    ReceiveIntegrity::Recovered(limits) => Solvers::new(limits),
                    ReceiveIntegrity::FullIcrc => Solvers::default(),
                },
                outbox: Vec::with_capacity(TRANSMIT_BATCH),
            }),
            doorbell,
            wait_fds,
            app_round: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            start: Instant::now(),
            busy_poll: config.busy_poll,
            port_ips,
            link_up,
        });
        let thread_shared = shared.clone();
        let join = std::thread::Builder::new()
            .name(config.name)
            .spawn(move || {
                let _alive = AliveGuard(thread_shared.clone());
                progress(&thread_shared);
            })?;
        Ok(EngineThread {
            shared,
            join: Some(join),
            drivers,
        })
    }

    /// The bound addresses and the driver kind each got.
    pub fn drivers(&self) -> &[(SocketAddr, DriverKind)] {
        &self.drivers
    }

    /// True while the thread runs.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Queues a posted work request (no reply; refusals become error completions) and
    /// runs it on the calling thread when the engine is free.
    pub fn post(&self, post: Post) {
        self.shared.drive_posting(false, std::iter::once(post));
    }

    /// Queues posted work requests and runs them in one round when the engine is free
    /// (one doorbell for a list of WRs, as `ibv_post_send` with a chain).
    pub fn post_list(&self, posts: impl IntoIterator<Item = Post>) {
        self.shared.drive_posting(false, posts.into_iter());
    }

    /// Queues `f` to run on the engine, after all work queued before it, without
    /// waiting for it (it runs on this thread when the engine is free).
    pub fn submit(&self, f: impl FnOnce(&mut Core) + Send + 'static) {
        self.shared.push(Work::Call(Box::new(f)));
    }

    /// Runs a round on the calling thread when the engine is free (what polling an empty
    /// completion queue does); returns whether anything happened.
    pub fn drive(&self) -> bool {
        self.shared.drive(true)
    }

    /// Notes that an application polled and found completions waiting: it will drive
    /// again once they run out, so the engine thread keeps off (as after its own
    /// receiving round). Without this, a thread that keeps finding completions the
    /// engine thread delivered never drives, and both end up sending.
    pub fn note_poll(&self) {
        self.shared.note_application(self.shared.now());
    }

    /// Tells the engine thread to take over the driving now: the caller is about to
    /// block (waiting for a completion) and will not run rounds meanwhile.
    pub fn hand_off(&self) {
        self.shared.app_round.store(0, Ordering::Relaxed);
        self.shared.doorbell.ring();
    }

    /// Runs `f` on the engine, after all work queued before it, and returns its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Result<R, EngineStopped> {
        if !self.is_alive() {
            return Err(EngineStopped);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(move |core| {
            let _ = reply.send(f(core));
        });
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(value) => return Ok(value),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(EngineStopped),
                // A call queued just as the thread ended is never run: notice the end.
                Err(mpsc::RecvTimeoutError::Timeout) if !self.is_alive() => {
                    return Err(EngineStopped)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.doorbell.ring();
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

/// The engine thread's loop: rounds while nobody else drives, a busy-poll window, then
/// a blocking wait.
fn progress(shared: &Shared) {
    let mut idle_since: Option<Instant> = None;
    let mut link_checked = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) && shared.alive.load(Ordering::SeqCst) {
        if !shared.port_ips.is_empty() && link_checked.elapsed() >= LINK_CHECK {
            link_checked = Instant::now();
            // The next round, this thread's or an application's, tells the engine.
            let up = addresses_usable(&shared.port_ips);
            shared.link_up.store(up, Ordering::Relaxed);
        }
        let now = shared.now();
        if shared.applications_drive(now) {
            // Stay off the engine (and the CPU) until the window passes or a hand-off.
            let since = now
                .as_nanos()
                .saturating_sub(shared.app_round.load(Ordering::Relaxed));
            let left = APP_WINDOW.saturating_sub(Duration::from_nanos(since));
            if let Err(error) = wait_readable(&shared.wait_fds[..1], Some(left)) {
                tracing::warn!(%error, "ppoll failed");
            }
            shared.doorbell.drain();
            idle_since = None;
            continue;
        }
        let busy = {
            let mut runner = match shared.runner.try_lock() {
                Ok(runner) => runner,
                // An application is running a round: look again once it has (and has
                // noted that it drives) rather than queue up to send after it.
                Err(TryLockError::WouldBlock) => {
                    std::thread::yield_now();
                    continue;
                }
                Err(TryLockError::Poisoned(_)) => return,
            };
            if !shared.alive.load(Ordering::SeqCst) {
                return;
            }
            // Applications are not driving: receive completions must reach this thread.
            for port in &mut runner.ports {
                port.driver.claim_receive();
            }
            runner.round(now, &shared.queue, true)
        };
        if busy {
            idle_since = None;
            continue;
        }
        let idle = *idle_since.get_or_insert_with(Instant::now);
        if idle.elapsed() < shared.busy_poll {
            std::thread::yield_now();
            continue;
        }
        sleep(shared);
        idle_since = None;
    }
}

/// Blocks the engine thread until a datagram, the doorbell or the engine's next timeout.
fn sleep(shared: &Shared) {
    let (timeout, sleeper) = {
        let Ok(mut runner) = shared.runner.lock() else {
            return;
        };
        if !shared.queue.is_empty() || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = shared.now();
        let mut timeout = runner
            .core
            .engine
            .poll_timeout()
            .map(|t| t.saturating_since(now));
        if runner.ports.iter().any(|p| !p.pending.is_empty()) {
            // A backlog the kernel refused: try again soon.
            timeout = Some(timeout.map_or(Duration::from_micros(100), |t| {
                t.min(Duration::from_micros(100))
            }));
        }
        if !runner.ports.is_empty() {
            // Wake to check the link, so an idle device reports a lost one too.
            timeout = Some(timeout.map_or(LINK_CHECK, |t| t.min(LINK_CHECK)));
        }
        runner.core.counters.sleeps += 1;
        // With one io_uring driver the thread sleeps in its ring: the engine's next timer
        // is the wait's timeout, and datagrams and the doorbell are completions.
        let sleeper = match runner.ports.as_mut_slice() {
            [port] => port.driver.ring_sleeper(shared.doorbell.as_raw_fd()),
            _ => None,
        };
        (timeout, sleeper)
    };
    // A thread that queued work while we held the engine could not run it, and left it
    // to us: look again now that the engine is free (later ones run it themselves).
    if !shared.queue.is_empty() {
        return;
    }
    // Work queued from here on is run by the thread that queued it (the engine is free),
    // so the doorbell is only for hand-offs and stopping.
    let waited = match sleeper {
        Some(ring) => ring.wait(timeout),
        None => wait_readable(&shared.wait_fds, timeout),
    };
    if let Err(error) = waited {
        if let Ok(mut runner) = shared.runner.lock() {
            runner.core.counters.io_errors += 1;
        }
        tracing::warn!(%error, "ppoll failed");
    }
    shared.doorbell.drain();
}

/// Applies up to [`WORK_BATCH`] queued work items, in order; returns how many.
fn take_work(core: &mut Core, queue: &SegQueue<Work>) -> usize {
    let mut worked = 0;
    while worked < WORK_BATCH {
        let Some(work) = queue.pop() else {
            break;
        };
        worked += 1;
        match work {
            Work::Post(post) => core.apply(post),
            Work::Call(call) => call(core),
        }
    }
    worked
}

/// What the receive path does with a datagram.
enum Admit {
    /// Its ICRC is already checked: the engine takes it as is.
    Verified,
    /// The engine checks its ICRC (with the envelope in its meta) and counts a bad one.
    Check,
    /// Dropped here (counted in [`ThreadCounters`]).
    Drop,
}

/// Checks a received IPv4 datagram as `ReceiveIntegrity` says: with its raw copy's
/// header when `tap` is there, else identification 0 first, then a solver. The first
/// argument is its source, its destination and our port; the header found goes into
/// `meta`.
fn admit_ipv4(
    (src, dst, local_port): (Ipv4Addr, Ipv4Addr, u16),
    meta: &mut DatagramMeta,
    payload: &[u8],
    tap: Option<&mut IpHeaderTap>,
    solvers: &mut Solvers,
    counters: &mut ThreadCounters,
) -> Admit {
    use super::solvers::Ipv4Icrc;
    if let Some(tap) = tap {
        let unmatched = tap.unmatched;
        let header = tap.header_of(src, meta.src_port, payload);
        counters.ip_raw_unmatched += tap.unmatched - unmatched;
        return match header {
            Some(header) => {
                counters.ip_header_seen += 1;
                meta.ipv4_ident = Some(header);
                Admit::Check
            }
            None => {
                counters.ip_header_missing += 1;
                Admit::Drop
            }
        };
    }
    match solvers.check(src, dst, meta.src_port, local_port, payload) {
        Ipv4Icrc::IdentZero => {
            counters.ident_zero += 1;
            Admit::Verified
        }
        Ipv4Icrc::Recovered(ident) => {
            counters.ident_nonzero += 1;
            meta.ipv4_ident = Some(Recovered {
                ident,
                dont_frag: true,
            });
            Admit::Verified
        }
        Ipv4Icrc::OverBudget => {
            counters.ident_over_budget += 1;
            Admit::Drop
        }
        // The engine counts it: an ICRC error.
        Ipv4Icrc::Damaged => {
            counters.ident_unrecovered += 1;
            Admit::Check
        }
        // The engine drops it as malformed.
        Ipv4Icrc::NotRoce => Admit::Check,
    }
}

impl Runner {
    /// One round at `now` (without the receiving step unless `receive`); true when
    /// anything happened.
    fn round(&mut self, now: Time, queue: &SegQueue<Work>, receive: bool) -> bool {
        self.core.counters.rounds += 1;
        let (received, mut worked) = if receive {
            self.receive(now, queue)
        } else {
            (0, 0)
        };
        worked += take_work(&mut self.core, queue);
        let mut timers = false;
        if self.core.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.core.engine.handle_timeout(now);
            timers = true;
        }
        // Payloads the kernel has taken since (sends completed in the receive step, or
        // sent synchronously last round) are built into by this round's transmit.
        for port in &mut self.ports {
            port.driver
                .reclaim(|payload| self.core.engine.recycle(payload));
        }
        let sent = self.transmit(now);
        let completed = self.core.deliver_completions();
        let link_up = self.link_up.load(Ordering::Relaxed);
        if link_up != self.link_told {
            self.link_told = link_up;
            self.core.engine.handle_port_event(link_up);
        }
        let events = self.core.deliver_events();
        received + worked + sent + completed + events > 0 || timers
    }

    /// Receives a batch from every driver; returns datagrams received and work items
    /// taken.
    fn receive(&mut self, now: Time, queue: &SegQueue<Work>) -> (usize, usize) {
        let Runner {
            core,
            ports,
            solvers,
            ..
        } = self;
        let mut total = 0;
        let mut worked = 0;
        solvers.start_round(now);
        for port in ports.iter_mut() {
            let local_port = port.port;
            let mut first = true;
            let tap = &mut port.tap;
            let result = port.driver.recv_batch(|received| {
                // The batch is already out of the socket, so any datagram in it was sent
                // after the work queued so far (a receive posted before the peer was told
                // to send, say): take that work first, as a post returning promises.
                if std::mem::take(&mut first) {
                    worked += take_work(core, queue);
                }
                if received.truncated {
                    core.counters.truncated += 1;
                    return;
                }
                let mut meta = received.meta;
                let admit = match (meta.src.to_canonical(), meta.dst.to_canonical()) {
                    (IpAddr::V4(src), IpAddr::V4(dst)) => admit_ipv4(
                        (src, dst, local_port),
                        &mut meta,
                        received.payload,
                        tap.as_mut(),
                        solvers,
                        &mut core.counters,
                    ),
                    _ => Admit::Check,
                };
                match admit {
                    Admit::Verified => {
                        core.engine
                            .handle_verified_datagram(now, meta, received.payload);
                    }
                    Admit::Check => core.engine.handle_datagram(now, meta, received.payload),
                    Admit::Drop => {}
                }
            });
            match result {
                Ok(n) => total += n,
                Err(error) => {
                    core.counters.io_errors += 1;
                    tracing::debug!(%error, "receive failed");
                }
            }
        }
        core.counters.ident_solvers_built = solvers.built();
        (total, worked)
    }

    fn transmit(&mut self, now: Time) -> usize {
        let Runner {
            core,
            ports: kept,
            outbox: kept_outbox,
            ..
        } = self;
        // Payloads stay in registered memory for the kernel to copy from (a lending
        // round): the datagrams queued meanwhile may carry them, so they cannot outlive
        // the round, and the queues wait for the next one owned (see the end).
        let mut ports: Vec<Port<'_>> = std::mem::take(kept);
        let mut outbox: Vec<LentDatagram<'_>> = std::mem::take(kept_outbox);
        let mut lending = core.engine.lending();
        let mut sent = 0;
        loop {
            // Take datagrams while every driver has room; a driver whose kernel buffer is
            // full keeps its backlog and so holds the engine back (it will retransmit).
            let mut taken = 0;
            loop {
                let room = ports
                    .iter()
                    .map(|p| TRANSMIT_BATCH.saturating_sub(p.pending.len()));
                let room = room.min().unwrap_or(0);
                if room == 0 {
                    break;
                }
                let n = lending.poll_transmit_into(now, &mut outbox, room);
                if n == 0 {
                    break;
                }
                taken += n;
                for datagram in outbox.drain(..) {
                    let src = datagram.meta().src.to_canonical();
                    match ports.iter_mut().find(|p| p.ip == src) {
                        Some(port) => port.pending.push(datagram),
                        None => core.counters.unroutable += 1,
                    }
                }
            }
            let mut progress = false;
            for port in &mut ports {
                if port.pending.is_empty() {
                    continue;
                }
                match port.driver.send_batch(&mut port.pending) {
                    Ok(n) => {
                        sent += n;
                        progress |= n > 0;
                    }
                    Err(error) => {
                        core.counters.io_errors += 1;
                        tracing::debug!(%error, "send failed; RoCE will retransmit");
                        port.pending.clear();
                    }
                }
            }
            if taken == 0 || !progress {
                break;
            }
        }
        // What the kernel did not take waits for the next round, by when lent bytes may
        // be gone: it keeps copies instead (in the same allocations).
        *kept = ports.into_iter().map(Port::own_pending).collect();
        *kept_outbox = LentDatagram::own_all(outbox);
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A thread with no drivers still runs calls in order and stops when dropped; calls
    /// after the end report it.
    #[test]
    fn calls_run_in_order_and_the_thread_stops() {
        let thread = EngineThread::spawn(EngineThreadConfig {
            engine: EngineConfig::default(),
            seed: 1,
            addresses: Vec::new(),
            driver: DriverKind::Socket,
            receive_integrity: ReceiveIntegrity::default(),
            busy_poll: Duration::from_micros(10),
            name: "ferroce-test".into(),
        })
        .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let order = order.clone();
            thread.submit(move |_| order.lock().unwrap().push(i));
        }
        let pd = thread
            .call(|core| core.engine.alloc_pd(NamespaceId::DEFAULT))
            .unwrap();
        assert!(pd.is_ok());
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
        let shared = thread.shared.clone();
        drop(thread);
        assert!(!shared.alive.load(Ordering::SeqCst));
    }

    /// A call that panics ends the thread; later calls fail instead of hanging.
    #[test]
    fn a_dead_thread_answers_calls_with_an_error() {
        let thread = EngineThread::spawn(EngineThreadConfig {
            engine: EngineConfig::default(),
            seed: 1,
            addresses: Vec::new(),
            driver: DriverKind::Socket,
            receive_integrity: ReceiveIntegrity::default(),
            busy_poll: Duration::ZERO,
            name: "ferroce-test".into(),
        })
        .unwrap();
        assert_eq!(
            thread.call(|_| -> u8 { panic!("boom") }),
            Err(EngineStopped)
        );
        assert_eq!(thread.call(|_| 1), Err(EngineStopped));
    }

    fn bare_thread() -> EngineThread {
        EngineThread::spawn(EngineThreadConfig {
            engine: EngineConfig::default(),
            seed: 1,
            addresses: Vec::new(),
            driver: DriverKind::Socket,
            receive_integrity: ReceiveIntegrity::default(),
            busy_poll: Duration::ZERO,
            name: "ferroce-test".into(),
        })
        .unwrap()
    }

    fn refused_send(wr_id: u64, errors: &Arc<CompletionRing>) -> Post {
        // No QP 0x99 exists: the engine refuses the post.
        Post::Send {
            ns: NamespaceId::DEFAULT,
            qpn: Qpn::new(0x99),
            wr: SendWr::new(wr_id, SendOp::Send, Vec::new()),
            errors: errors.clone(),
        }
    }

    /// An application posting without polling cannot grow a CQ past its depth with the
    /// error completions of refused posts: the rest are dropped and counted.
    #[test]
    fn refused_posts_never_overfill_their_cq() {
        let thread = bare_thread();
        let ring = Arc::new(CompletionRing::new(4, None));
        for wr_id in 0..100 {
            thread.post(refused_send(wr_id, &ring));
        }
        let counters = thread.call(|core| core.counters()).unwrap();
        assert_eq!(ring.len(), 4);
        assert_eq!(
            (counters.refused_posts, counters.lost_post_errors),
            (100, 96)
        );
        let mut out = Vec::new();
        ring.poll(10, &mut out);
        let ids: Vec<u64> = out.iter().map(|wc| wc.wr_id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert!(out.iter().all(|wc| wc.status == WcStatus::LocQpOpErr));
    }

    /// While another thread runs a long round, posts queue up to `MAX_QUEUED_WORK`; past
    /// that a poster waits for the round instead of growing the queue.
    #[test]
    fn posts_behind_a_busy_round_queue_at_most_the_bound() {
        let thread = bare_thread();
        let ring = Arc::new(CompletionRing::new(1, None));
        let (started, running) = std::sync::mpsc::channel();
        let longest = std::thread::scope(|scope| {
            // Another thread holds the engine for a long round.
            scope.spawn(|| {
                thread.submit(move |_| {
                    started.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                })
            });
            running.recv().unwrap();
            let mut longest = 0;
            for wr_id in 0..(3 * MAX_QUEUED_WORK as u64) {
                thread.post(refused_send(wr_id, &ring));
                longest = longest.max(thread.shared.queue.len());
            }
            longest
        });
        assert!(longest <= MAX_QUEUED_WORK, "{longest} queued");
        assert!(
            longest >= MAX_QUEUED_WORK / 2,
            "the round was not busy: {longest} queued"
        );
        let counters = thread.call(|core| core.counters()).unwrap();
        assert_eq!(counters.refused_posts, 3 * MAX_QUEUED_WORK as u64);
    }
}

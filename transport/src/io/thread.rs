//! The engine thread: one per device, owning the [`Core`] (the engine and where its
//! results go) and one [`Driver`] per local address, in a run-to-completion loop — and
//! the applications' threads, which run the same rounds (see `round`) themselves when
//! they post or poll. This file is the drive policy: who runs a round, and when the
//! engine thread sleeps.
//!
//! About once a second the engine thread asks whether the drivers' addresses are still
//! on a working link ([`link::address_usable`], ~100 µs: never on an application's
//! thread); the next round tells the engine of a change
//! ([`Engine::handle_port_event`](crate::engine::Engine::handle_port_event)), which
//! raises `PortActive`/`PortErr`.
//!
//! Who runs a round: the core, the drivers and the rings sit behind one mutex, and
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
//! Control operations are queued as work too ([`EngineThread::execute`]): a
//! [`Command`] of the control protocol, or a [`LocalCommand`] only an embedded device
//! gives, executed in order with the posts around it; the caller waits for its
//! [`Reply`].
//!
//! Applications never take a lock per packet they do not process: work goes through a
//! lock-free queue and completions come back through lock-free per-CQ queues; a
//! mutex/condvar pair is touched only by a thread that blocks waiting for a completion.
//!
//! Real time enters the engine here and nowhere else: one `Instant` taken when the
//! thread starts, and `Time::from_nanos(elapsed)` each round.
#![allow(clippy::disallowed_methods)] // The engine thread is the engine's clock (see above).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::link;
use super::raw::IpHeaderTap;
use super::round::{Control, Operation, Port, Runner, Work, TRANSMIT_BATCH, WORK_BATCH};
use super::solvers::Solvers;
use super::waker::{wait_readable, Doorbell};
use super::{Driver, DriverKind, ReceiveIntegrity};
use crate::control::{Command, Reply};
use crate::engine::{Engine, EngineConfig, NamespaceId, Time};

pub use super::core::{Core, LocalCommand, ThreadCounters};
pub use super::post::{Post, POST_ERR_LIMIT, POST_ERR_OTHER, POST_ERR_QUEUE_FULL, POST_ERR_STATE};
pub use super::rings::{CompletionRing, EventChannel, EVENT_CHANNEL_DEPTH};

/// Posts that may wait for the thread running a round; a poster finding this many waits
/// for that thread (back-pressure) instead of growing the queue.
pub const MAX_QUEUED_WORK: usize = 4 * WORK_BATCH;

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
                core: Core::new(engine),
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

    /// Executes `command` on namespace `ns`, after all work queued before it (on this
    /// thread when the engine is free), and returns its reply.
    pub fn execute(&self, ns: NamespaceId, command: Command) -> Result<Reply, EngineStopped> {
        self.control(ns, Operation::Command(command))
    }

    /// Executes the embedded-only `command` on namespace `ns`, as
    /// [`execute`](EngineThread::execute) does.
    pub fn execute_local(
        &self,
        ns: NamespaceId,
        command: LocalCommand,
    ) -> Result<Reply, EngineStopped> {
        self.control(ns, Operation::Local(command))
    }

    fn control(&self, ns: NamespaceId, operation: Operation) -> Result<Reply, EngineStopped> {
        if !self.is_alive() {
            return Err(EngineStopped);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.shared.push(Work::Control(Control {
            ns,
            operation,
            reply,
        }));
        loop {
            match answer.recv_timeout(Duration::from_millis(100)) {
                Ok(reply) => return Ok(reply),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(EngineStopped),
                // Work queued just as the thread ended is never run: notice the end.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{SendOp, SendWr, WcStatus};
    use ferroce_wire::Qpn;

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

    fn counters(thread: &EngineThread) -> ThreadCounters {
        let reply = thread.execute(NamespaceId::DEFAULT, Command::QueryCounters);
        let (_, counters) = <(crate::engine::Counters, ThreadCounters)>::try_from(reply.unwrap())
            .expect("a Counters reply");
        counters
    }

    /// A command queued behind a busy round runs in order with the posts around it (it
    /// sees those queued before it, not those after); a thread with no drivers stops
    /// when dropped.
    #[test]
    fn commands_run_in_order_with_posts_and_the_thread_stops() {
        let thread = bare_thread();
        let ring = Arc::new(CompletionRing::new(16, None));
        let seen = std::thread::scope(|scope| {
            // This thread holds the engine, as a long round would.
            let round = thread.shared.runner.lock().unwrap();
            for wr_id in 0..3 {
                thread.post(refused_send(wr_id, &ring));
            }
            let waiter = scope.spawn(|| counters(&thread));
            while thread.shared.queue.len() < 4 {
                std::thread::yield_now();
            }
            for wr_id in 3..5 {
                thread.post(refused_send(wr_id, &ring));
            }
            drop(round);
            waiter.join().unwrap()
        });
        assert_eq!(seen.refused_posts, 3);
        assert_eq!(counters(&thread).refused_posts, 5);
        let shared = thread.shared.clone();
        drop(thread);
        assert!(!shared.alive.load(Ordering::SeqCst));
    }

    /// A command that panics (an engine bug) ends the thread; later commands fail
    /// instead of hanging.
    #[test]
    fn a_dead_thread_answers_calls_with_an_error() {
        let thread = bare_thread();
        assert_eq!(
            thread.execute_local(NamespaceId::DEFAULT, LocalCommand::InjectPanic),
            Err(EngineStopped)
        );
        assert_eq!(
            thread.execute(NamespaceId::DEFAULT, Command::QueryDevice),
            Err(EngineStopped)
        );
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
        let counters = counters(&thread);
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
                let _round = thread.shared.runner.lock().unwrap();
                started.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
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
        assert_eq!(counters(&thread).refused_posts, 3 * MAX_QUEUED_WORK as u64);
    }
}

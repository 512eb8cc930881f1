//! One round of the engine, whichever thread runs it: receive a batch from every
//! driver and feed it to the engine (recovering the IPv4 identification the ICRC
//! covers), take the work applications queued (posted WRs and control commands, in the
//! order they were queued), run due timers, drain `poll_transmit` into `send_batch`
//! (what the kernel did not take waits for the next round), and move new completions
//! and async events to the applications.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crossbeam_queue::SegQueue;
use ferroce_wire::ident::Recovered;

use super::core::{Core, LocalCommand, ThreadCounters};
use super::post::Post;
use super::raw::IpHeaderTap;
use super::solvers::Solvers;
use super::Driver;
use crate::control::{Command, Reply};
use crate::engine::{DatagramMeta, LentDatagram, NamespaceId, Time};

/// Datagrams taken from the engine per driver before they are handed to the kernel.
pub(super) const TRANSMIT_BATCH: usize = 64;
/// Queued work items taken per round (so receives and transmits are not starved).
pub(super) const WORK_BATCH: usize = 1024;

/// A control operation waiting for a round, and where its reply goes.
#[derive(Debug)]
pub(super) struct Control {
    pub(super) ns: NamespaceId,
    pub(super) operation: Operation,
    pub(super) reply: mpsc::SyncSender<Reply>,
}

/// A control operation of either kind.
#[derive(Debug)]
pub(super) enum Operation {
    Command(Command),
    Local(LocalCommand),
}

/// What applications queue for a round.
#[derive(Debug)]
pub(super) enum Work {
    Post(Post),
    /// Not boxed: no larger than a post (a test checks), so it costs posts nothing.
    Control(Control),
}

/// Applies up to [`WORK_BATCH`] queued work items, in order; returns how many.
pub(super) fn take_work(core: &mut Core, queue: &SegQueue<Work>) -> usize {
    let mut worked = 0;
    while worked < WORK_BATCH {
        let Some(work) = queue.pop() else {
            break;
        };
        worked += 1;
        match work {
            Work::Post(post) => core.apply(post),
            Work::Control(control) => {
                let Control {
                    ns,
                    operation,
                    reply,
                } = control;
                let answer = match operation {
                    Operation::Command(command) => core.execute(ns, command),
                    Operation::Local(command) => core.execute_local(ns, command),
                };
                // The caller may have given up waiting (its engine was declared dead).
                let _ = reply.send(answer);
            }
        }
    }
    worked
}

/// A driver and the datagrams waiting for room in its kernel buffer: owned between
/// rounds (`Port<'static>`), maybe lent from the engine during one (see
/// `Runner::transmit`).
pub(super) struct Port<'r> {
    pub(super) driver: Driver,
    pub(super) ip: IpAddr,
    pub(super) port: u16,
    /// [`ReceiveIntegrity::FullIcrc`](super::ReceiveIntegrity::FullIcrc) on IPv4: the raw socket that shows IP headers.
    pub(super) tap: Option<IpHeaderTap>,
    pub(super) pending: Vec<LentDatagram<'r>>,
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

pub(super) struct Runner {
    pub(super) core: Core,
    pub(super) ports: Vec<Port<'static>>,
    pub(super) solvers: Solvers,
    /// The engine's datagrams on their way to their port's `pending` (empty between
    /// rounds).
    pub(super) outbox: Vec<LentDatagram<'static>>,
    /// The link's state as the engine thread last found it (shared with it) ...
    pub(super) link_up: Arc<AtomicBool>,
    /// ... and as the engine was last told.
    pub(super) link_told: bool,
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
    pub(super) fn round(&mut self, now: Time, queue: &SegQueue<Work>, receive: bool) -> bool {
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

    /// Work items move through the queue by value: control must not make posts bigger.
    #[test]
    fn control_work_is_no_larger_than_a_post() {
        assert!(std::mem::size_of::<Control>() <= std::mem::size_of::<Post>());
        assert_eq!(std::mem::size_of::<Work>(), std::mem::size_of::<Post>());
    }
}

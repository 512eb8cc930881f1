//! What the engine thread owns besides its drivers: the [`Engine`], the completion
//! rings and event channels its results are moved into, and its counters — and the one
//! place control operations reach them: [`Core::execute`] for the [`Command`]s of the
//! control protocol, [`Core::execute_local`] for the [`LocalCommand`]s only an embedded
//! device can give (they hold pointers and `Arc`s no message can carry).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::rings::{CompletionRing, EventChannel, EVENT_CHANNEL_DEPTH};
use crate::control::{Command, PortStatus, Reply};
use crate::engine::{
    AccessFlags, AsyncEvent, CompletionQueueId, Engine, NamespaceId, ProtectionDomain,
    RegionMemory, VerbsError,
};

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
    /// [`ReceiveIntegrity::FullIcrc`](super::ReceiveIntegrity::FullIcrc): IPv4 datagrams whose IP header the raw socket
    /// showed (the engine checks their full ICRC).
    pub ip_header_seen: u64,
    /// [`ReceiveIntegrity::FullIcrc`](super::ReceiveIntegrity::FullIcrc): IPv4 datagrams without a raw copy (the raw
    /// socket's buffer overflowed), dropped.
    pub ip_header_missing: u64,
    /// [`ReceiveIntegrity::FullIcrc`](super::ReceiveIntegrity::FullIcrc): raw copies without a datagram (the UDP socket's
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

/// An operation of the embedded engine thread that is not part of the control protocol:
/// each holds something only this process can hand over (a pointer to its memory, an
/// `Arc` of a ring it polls), so none can be encoded. A daemon does the same by other
/// means (memory and rings shared through memfd).
#[derive(Debug)]
#[non_exhaustive]
pub enum LocalCommand {
    /// Registers memory the caller provides (a buffer handed over, or the application's
    /// own memory) → [`Reply::Mr`].
    RegMrBacked {
        /// Its PD.
        pd: ProtectionDomain,
        /// The memory.
        memory: RegionMemory,
        /// Access flags.
        access: AccessFlags,
    },
    /// From now on, completions of the engine's CQ `cq` are moved into `ring` (until
    /// [`Command::DestroyCq`]) → [`Reply::Done`].
    AttachRing {
        /// The CQ.
        cq: CompletionQueueId,
        /// Where its completions go.
        ring: Arc<CompletionRing>,
    },
    /// From now on, the namespace's async events are moved into `channel` (up to
    /// [`EVENT_CHANNEL_DEPTH`] waiting there), each round → [`Reply::Done`].
    AttachEvents {
        /// Where they go.
        channel: Arc<EventChannel<AsyncEvent>>,
    },
    /// Panics on the thread that executes it, as an engine bug would: for tests of what
    /// the end of an engine thread looks like to its users.
    #[doc(hidden)]
    InjectPanic,
}

/// The engine and what its results are moved into; owned by the engine thread, lent to
/// whichever thread runs a round.
#[derive(Debug)]
pub struct Core {
    pub(super) engine: Engine,
    rings: BTreeMap<(NamespaceId, CompletionQueueId), Arc<CompletionRing>>,
    event_channels: BTreeMap<NamespaceId, Arc<EventChannel<AsyncEvent>>>,
    pub(super) counters: ThreadCounters,
}

impl Core {
    /// A core around `engine`, delivering nowhere yet.
    pub fn new(engine: Engine) -> Core {
        Core {
            engine,
            rings: BTreeMap::new(),
            event_channels: BTreeMap::new(),
            counters: ThreadCounters::default(),
        }
    }

    /// Executes `command` on namespace `ns`.
    pub fn execute(&mut self, ns: NamespaceId, command: Command) -> Reply {
        let engine = &mut self.engine;
        let done = |result: Result<(), VerbsError>| result.map(|()| Reply::Done);
        let reply = match command {
            Command::QueryDevice => Ok(Reply::Device(engine.query_device())),
            Command::QueryPort => engine.gids(ns).map(|gids| {
                Reply::Port(PortStatus {
                    active: engine.port_active(),
                    active_mtu: engine.query_device().active_mtu,
                    gid_tbl_len: gids.len() as u32,
                })
            }),
            Command::QueryGids => engine.gids(ns).map(|gids| Reply::Gids(gids.to_vec())),
            Command::QueryCounters => Ok(Reply::Counters {
                engine: Box::new(*engine.counters()),
                thread: self.counters,
            }),
            Command::AllocPd => engine.alloc_pd(ns).map(Reply::Pd),
            Command::DeallocPd { pd } => done(engine.dealloc_pd(ns, pd)),
            Command::RegMr { pd, length, access } => {
                engine.reg_mr(ns, pd, length, access).map(Reply::Mr)
            }
            Command::DeregMr { lkey } => done(engine.dereg_mr(ns, lkey)),
            Command::MrWrite { lkey, addr, data } => done(engine.mr_write(ns, lkey, addr, &data)),
            Command::MrRead { lkey, addr, length } => {
                // Bounded by the caller: the API checks the range against the region,
                // the decoder caps a message's length.
                let mut bytes = vec![0; length as usize];
                engine
                    .mr_read(ns, lkey, addr, &mut bytes)
                    .map(|()| Reply::Bytes(bytes))
            }
            Command::CreateCq { cqe } => engine.create_cq(ns, cqe).map(Reply::Cq),
            Command::DestroyCq { cq } => {
                let destroyed = engine.destroy_cq(ns, cq);
                if destroyed.is_ok() {
                    self.rings.remove(&(ns, cq));
                }
                done(destroyed)
            }
            Command::CreateQp { init } => engine.create_qp(ns, init).map(Reply::Qp),
            Command::ModifyQp { qpn, attr } => done(engine.modify_qp(ns, qpn, &attr)),
            Command::QueryQp { qpn } => engine.query_qp(ns, qpn).map(Reply::QpInfo),
            Command::DestroyQp { qpn } => done(engine.destroy_qp(ns, qpn)),
            Command::CreateSrq { pd, attr } => engine.create_srq(ns, pd, attr).map(Reply::Srq),
            Command::ModifySrq { srq, srq_limit } => done(engine.modify_srq(ns, srq, srq_limit)),
            Command::QuerySrq { srq } => engine.query_srq(ns, srq).map(Reply::SrqAttr),
            Command::DestroySrq { srq } => done(engine.destroy_srq(ns, srq)),
            Command::PostSrqRecv { srq, wr } => done(engine.post_srq_recv(ns, srq, wr)),
        };
        reply.unwrap_or_else(Reply::Error)
    }

    /// Executes the embedded-only `command` on namespace `ns`.
    pub fn execute_local(&mut self, ns: NamespaceId, command: LocalCommand) -> Reply {
        match command {
            LocalCommand::RegMrBacked { pd, memory, access } => self
                .engine
                .reg_mr_backed(ns, pd, memory, access)
                .map_or_else(Reply::Error, Reply::Mr),
            // Polling nothing: refused unless the CQ exists.
            LocalCommand::AttachRing { cq, ring } => match self.engine.poll_cq(ns, cq, 0) {
                Ok(_) => {
                    self.rings.insert((ns, cq), ring);
                    Reply::Done
                }
                Err(error) => Reply::Error(error),
            },
            LocalCommand::AttachEvents { channel } => match self.engine.gids(ns) {
                Ok(_) => {
                    self.event_channels.insert(ns, channel);
                    self.deliver_events();
                    Reply::Done
                }
                Err(error) => Reply::Error(error),
            },
            LocalCommand::InjectPanic => panic!("an engine bug (injected)"),
        }
    }

    /// Moves new async events into their channels; returns how many moved.
    pub(super) fn deliver_events(&mut self) -> usize {
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
    pub(super) fn deliver_completions(&mut self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        EngineConfig, QpAttr, QpCap, QpInitAttr, QpState, QpType, RecvWr, WcStatus,
    };
    use crate::io::post::Post;

    fn core() -> Core {
        let config = EngineConfig {
            default_gids: vec!["10.0.0.1".parse().expect("literal")],
            ..EngineConfig::default()
        };
        Core::new(Engine::new(config, 1))
    }

    /// A ring attaches only to a CQ that exists, gets that CQ's completions, and is let
    /// go when the CQ is destroyed.
    #[test]
    fn a_ring_gets_its_cqs_completions_until_the_cq_is_destroyed() {
        let ns = NamespaceId::DEFAULT;
        let mut core = core();
        let ring = Arc::new(CompletionRing::new(16, None));
        let attach = |cq| LocalCommand::AttachRing {
            cq,
            ring: ring.clone(),
        };
        assert_eq!(
            core.execute_local(ns, attach(CompletionQueueId(99))),
            Reply::Error(VerbsError::NotFound("CQ"))
        );
        let Reply::Pd(pd) = core.execute(ns, Command::AllocPd) else {
            panic!("a PD");
        };
        let Reply::Cq(cq) = core.execute(ns, Command::CreateCq { cqe: 16 }) else {
            panic!("a CQ");
        };
        assert_eq!(core.execute_local(ns, attach(cq)), Reply::Done);
        let cap = QpCap {
            max_send_wr: 4,
            max_recv_wr: 4,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let init = QpInitAttr {
            qp_type: QpType::Ud,
            pd,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap,
            sq_sig_all: false,
        };
        let Reply::Qp(qpn) = core.execute(ns, Command::CreateQp { init }) else {
            panic!("a QP");
        };
        let to = |state, qkey: Option<u32>| Command::ModifyQp {
            qpn,
            attr: QpAttr {
                state: Some(state),
                pkey_index: qkey.map(|_| 0),
                port_num: qkey.map(|_| 1),
                qkey,
                ..QpAttr::default()
            },
        };
        assert_eq!(core.execute(ns, to(QpState::Init, Some(7))), Reply::Done);
        core.apply(Post::Recv {
            ns,
            qpn,
            wr: RecvWr {
                wr_id: 5,
                sg_list: Default::default(),
            },
            errors: ring.clone(),
        });
        // The error state flushes the receive into the CQ; a round moves it on.
        assert_eq!(core.execute(ns, to(QpState::Err, None)), Reply::Done);
        assert_eq!(core.deliver_completions(), 1);
        let mut out = Vec::new();
        ring.poll(4, &mut out);
        assert_eq!((out[0].wr_id, out[0].status), (5, WcStatus::WrFlushErr));

        assert_eq!(core.execute(ns, Command::DestroyQp { qpn }), Reply::Done);
        assert_eq!(core.execute(ns, Command::DestroyCq { cq }), Reply::Done);
        assert!(core.rings.is_empty(), "the ring is let go with its CQ");
    }

    #[test]
    fn events_attach_only_to_a_namespace_that_exists() {
        let mut core = core();
        let channel = Arc::new(EventChannel::new());
        let attach = |channel: &Arc<EventChannel<AsyncEvent>>| LocalCommand::AttachEvents {
            channel: channel.clone(),
        };
        assert_eq!(
            core.execute_local(NamespaceId(7), attach(&channel)),
            Reply::Error(VerbsError::NotFound("namespace"))
        );
        assert_eq!(
            core.execute_local(NamespaceId::DEFAULT, attach(&channel)),
            Reply::Done
        );
        assert_eq!(core.event_channels.len(), 1);
    }
}

//! Namespaces: isolated identifier spaces. Each owns its GIDs and its own tables of PDs,
//! MRs, CQs, SRQs and QPs, with identifiers allocated inside it, so two namespaces can
//! both hold QPN 0x11 and the same rkey. A namespace may also have [`Quotas`]: a
//! tenant's share of the device, which the daemon sets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ferroce_wire::Qpn;

use super::cm::Agent;
use super::cq::{CompletionQueue, CompletionQueueId};
use super::error::{Result, VerbsError};
use super::event::Events;
use super::memory::{MemoryTable, ProtectionDomain};
use super::qp::QueuePair;
use super::srq::{SharedReceiveQueue, SharedReceiveQueueId};
use super::SplitMix64;

/// Names a namespace inside an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceId(pub u32);

impl NamespaceId {
    /// The namespace every engine starts with, for embedded use.
    pub const DEFAULT: NamespaceId = NamespaceId(0);
}

impl fmt::Display for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns{}", self.0)
    }
}

/// The first QPN handed out (as rxe: QPNs below 0x11 are reserved).
pub const FIRST_QPN: u32 = 0x11;

/// One namespace's resources.
#[derive(Debug)]
pub(crate) struct Namespace {
    /// This namespace's own name (what trace events report).
    pub id: NamespaceId,
    pub gids: Vec<IpAddr>,
    pub pds: BTreeSet<ProtectionDomain>,
    pub memory: MemoryTable,
    pub cqs: BTreeMap<CompletionQueueId, CompletionQueue>,
    pub srqs: BTreeMap<SharedReceiveQueueId, SharedReceiveQueue>,
    pub qps: BTreeMap<Qpn, QueuePair>,
    pub events: Events,
    /// The CM agent that owns QP1's MADs (unless QP1 is a raw GSI QP).
    pub cm: Agent,
    pub quotas: Quotas,
    /// Work-queue entries of its QPs and SRQs (what [`Quotas::work_requests`] bounds).
    pub work_requests: u64,
    /// Key bytes and MR addresses.
    pub rng: SplitMix64,
    next_pd: u32,
    next_cq: u32,
    next_srq: u32,
    next_qpn: u32,
}

impl Namespace {
    pub fn new(
        id: NamespaceId,
        gids: Vec<IpAddr>,
        rng: SplitMix64,
        event_limit: u32,
        cm: Agent,
    ) -> Namespace {
        Namespace {
            id,
            gids,
            rng,
            cm,
            pds: BTreeSet::new(),
            memory: MemoryTable::default(),
            cqs: BTreeMap::new(),
            srqs: BTreeMap::new(),
            qps: BTreeMap::new(),
            events: Events::new(event_limit),
            quotas: Quotas::default(),
            work_requests: 0,
            next_pd: 1,
            next_cq: 1,
            next_srq: 1,
            next_qpn: FIRST_QPN,
        }
    }

    pub fn allocate_pd(&mut self) -> ProtectionDomain {
        let pd = ProtectionDomain(self.next_pd);
        self.next_pd = self.next_pd.wrapping_add(1).max(1);
        pd
    }

    pub fn allocate_cq(&mut self) -> CompletionQueueId {
        let id = CompletionQueueId(self.next_cq);
        self.next_cq = self.next_cq.wrapping_add(1).max(1);
        id
    }

    pub fn allocate_srq(&mut self) -> SharedReceiveQueueId {
        let id = SharedReceiveQueueId(self.next_srq);
        self.next_srq = self.next_srq.wrapping_add(1).max(1);
        id
    }

    /// What the namespace holds now, in the units of its quotas.
    pub fn usage(&self) -> Usage {
        Usage {
            qps: self.qps.len() as u64,
            cqs: self.cqs.len() as u64,
            srqs: self.srqs.len() as u64,
            mrs: self.memory.len() as u64,
            registered_bytes: self.memory.registered_bytes(),
            work_requests: self.work_requests,
        }
    }

    /// Refuses adding `adding` of `resource` when that would pass its quota.
    pub fn check_quota(&self, resource: QuotaResource, adding: u64) -> Result<()> {
        let Some(limit) = self.quotas.limit(resource) else {
            return Ok(());
        };
        let used = match resource {
            QuotaResource::Qps => self.qps.len() as u64,
            QuotaResource::Cqs => self.cqs.len() as u64,
            QuotaResource::Srqs => self.srqs.len() as u64,
            QuotaResource::Mrs => self.memory.len() as u64,
            // A pass over the regions, only when a quota is set: registration is a
            // control-path call.
            QuotaResource::RegisteredBytes => self.memory.registered_bytes(),
            QuotaResource::WorkRequests => self.work_requests,
        };
        if used.saturating_add(adding) > limit {
            return Err(VerbsError::QuotaExceeded { resource, limit });
        }
        Ok(())
    }

    /// The next free QPN, counting up from [`FIRST_QPN`] and wrapping inside 24 bits.
    pub fn allocate_qpn(&mut self) -> Option<Qpn> {
        let span = Qpn::MAX - FIRST_QPN + 1;
        for _ in 0..span {
            let candidate = Qpn::new(self.next_qpn);
            self.next_qpn += 1;
            if self.next_qpn > Qpn::MAX {
                self.next_qpn = FIRST_QPN;
            }
            if !self.qps.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }
}

/// A resource a namespace's [`Quotas`] bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaResource {
    /// Queue pairs.
    Qps,
    /// Completion queues.
    Cqs,
    /// Shared receive queues.
    Srqs,
    /// Memory regions.
    Mrs,
    /// Bytes of all memory regions together.
    RegisteredBytes,
    /// Work-queue entries: `max_send_wr` + `max_recv_wr` of every QP (no receive
    /// queue for a QP on an SRQ) and `max_wr` of every SRQ. Posting beyond a queue's
    /// size is refused, so this bounds the work requests outstanding at once.
    WorkRequests,
}

impl fmt::Display for QuotaResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaResource::Qps => "QPs",
            QuotaResource::Cqs => "CQs",
            QuotaResource::Srqs => "SRQs",
            QuotaResource::Mrs => "MRs",
            QuotaResource::RegisteredBytes => "registered bytes",
            QuotaResource::WorkRequests => "work requests",
        })
    }
}

/// How much of the device a namespace may use (a tenant's share, set by the daemon
/// with [`Engine::set_quotas`](super::Engine::set_quotas)). `None` means no quota: the
/// device limits alone apply, as for the default namespace. A create or register that
/// would pass a quota fails with [`VerbsError::QuotaExceeded`] before anything is
/// allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    /// Queue pairs.
    pub qps: Option<u64>,
    /// Completion queues.
    pub cqs: Option<u64>,
    /// Shared receive queues.
    pub srqs: Option<u64>,
    /// Memory regions.
    pub mrs: Option<u64>,
    /// Bytes of all memory regions together.
    pub registered_bytes: Option<u64>,
    /// Work-queue entries (see [`QuotaResource::WorkRequests`]).
    pub work_requests: Option<u64>,
}

impl Quotas {
    /// No quota at all.
    pub const UNLIMITED: Quotas = Quotas {
        qps: None,
        cqs: None,
        srqs: None,
        mrs: None,
        registered_bytes: None,
        work_requests: None,
    };

    /// The quota of `resource`.
    pub fn limit(&self, resource: QuotaResource) -> Option<u64> {
        match resource {
            QuotaResource::Qps => self.qps,
            QuotaResource::Cqs => self.cqs,
            QuotaResource::Srqs => self.srqs,
            QuotaResource::Mrs => self.mrs,
            QuotaResource::RegisteredBytes => self.registered_bytes,
            QuotaResource::WorkRequests => self.work_requests,
        }
    }
}

/// What a namespace holds, in the units of its [`Quotas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Queue pairs.
    pub qps: u64,
    /// Completion queues.
    pub cqs: u64,
    /// Shared receive queues.
    pub srqs: u64,
    /// Memory regions.
    pub mrs: u64,
    /// Bytes of all memory regions together.
    pub registered_bytes: u64,
    /// Work-queue entries.
    pub work_requests: u64,
}

//! Namespaces: isolated identifier spaces. Each owns its GIDs and its own tables of PDs,
//! MRs, CQs, SRQs and QPs, with identifiers allocated inside it, so two namespaces can
//! both hold QPN 0x11 and the same rkey.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;

use ferroce_wire::Qpn;

use super::cq::{CompletionQueue, CompletionQueueId};
use super::memory::{MemoryTable, ProtectionDomain};
use super::qp::QueuePair;
use super::srq::{SharedReceiveQueue, SharedReceiveQueueId};
use super::{AsyncEvent, SplitMix64};

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
    pub events: VecDeque<AsyncEvent>,
    /// Key bytes and MR addresses.
    pub rng: SplitMix64,
    next_pd: u32,
    next_cq: u32,
    next_srq: u32,
    next_qpn: u32,
}

impl Namespace {
    pub fn new(id: NamespaceId, gids: Vec<IpAddr>, rng: SplitMix64) -> Namespace {
        Namespace {
            id,
            gids,
            rng,
            pds: BTreeSet::new(),
            memory: MemoryTable::default(),
            cqs: BTreeMap::new(),
            srqs: BTreeMap::new(),
            qps: BTreeMap::new(),
            events: VecDeque::new(),
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

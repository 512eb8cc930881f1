//! Deterministic network simulator: N nodes on a virtual clock, joined by links with
//! seeded loss, reordering, duplication, corruption, delay and bandwidth.
//!
//! Everything that happens is a function of the nodes' behaviour and one seed: events
//! are ordered by (virtual time, sequence number), random choices come from a
//! hand-written xoshiro256** generator, and no clock or hash-map iteration order is ever
//! consulted. Any failing run can therefore be replayed exactly from its seed.
//!
//! ```
//! use ferroce_transport::engine::sim::{LinkConfig, Network, Node};
//! use ferroce_transport::engine::{Datagram, DatagramMeta, Time};
//! # struct Quiet;
//! # impl Node for Quiet {
//! #     fn handle_datagram(&mut self, _: Time, _: DatagramMeta, _: &[u8]) {}
//! #     fn poll_transmit(&mut self, _: Time) -> Option<Datagram> { None }
//! #     fn poll_timeout(&self) -> Option<Time> { None }
//! #     fn handle_timeout(&mut self, _: Time) {}
//! # }
//! let mut network = Network::new(7, LinkConfig { loss: 0.01, ..LinkConfig::default() });
//! let a = network.add_node(Quiet, ["10.0.0.1".parse().unwrap()]);
//! let b = network.add_node(Quiet, ["10.0.0.2".parse().unwrap()]);
//! network.run_until(Time::from_nanos(1_000_000));
//! assert_eq!(network.stats().links.sent, 0);
//! # let _ = (a, b);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ferroce_wire::opcode::Operation;
use ferroce_wire::{packet, AckSyndrome, NakCode, Psn, Qpn};

use super::{Datagram, DatagramMeta, Ecn, Time};

/// Anything the simulator can drive: the engine, or a toy node in the simulator's own
/// tests. The same shape as the engine's sans-IO interface.
pub trait Node {
    /// A datagram arrived at `now`.
    fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]);
    /// The next datagram to send, if any.
    fn poll_transmit(&mut self, now: Time) -> Option<Datagram>;
    /// When the node next wants `handle_timeout`, if ever.
    fn poll_timeout(&self) -> Option<Time>;
    /// A timer the node asked for has come due.
    fn handle_timeout(&mut self, now: Time);
}

/// Lets one network hold nodes of different types (`Network<Box<dyn Node>>`).
impl<N: Node + ?Sized> Node for Box<N> {
    fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]) {
        (**self).handle_datagram(now, meta, payload);
    }
    fn poll_transmit(&mut self, now: Time) -> Option<Datagram> {
        (**self).poll_transmit(now)
    }
    fn poll_timeout(&self) -> Option<Time> {
        (**self).poll_timeout()
    }
    fn handle_timeout(&mut self, now: Time) {
        (**self).handle_timeout(now);
    }
}

/// How one direction of a link treats the datagrams it carries. Probabilities are in
/// `0.0..=1.0` and apply independently to each datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is held back by an extra random delay in
    /// `0..=reorder_delay`, so that later datagrams overtake it.
    pub reorder: f64,
    /// The largest extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice (each copy gets its own delay).
    pub duplicate: f64,
    /// Probability that one random bit of a delivered copy is flipped.
    pub corrupt: f64,
    /// Propagation delay.
    pub delay: Duration,
    /// Extra uniform random delay in `0..=jitter` added to each copy.
    pub jitter: Duration,
    /// Serialisation rate; `None` for an infinitely fast link.
    pub rate_bytes_per_sec: Option<u64>,
    /// Tail drop: a datagram that would wait longer than this in the link's queue is
    /// dropped. Only meaningful with a rate. `None` for an unbounded queue.
    pub queue_limit: Option<Duration>,
    /// ECN marking: an ECN-capable datagram that waits longer than this in the link's
    /// queue is marked congestion-experienced. Only meaningful with a rate.
    pub ecn_threshold: Option<Duration>,
}

impl Default for LinkConfig {
    /// A perfect link with 10 µs propagation delay and no bandwidth limit.
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(100),
            duplicate: 0.0,
            corrupt: 0.0,
            delay: Duration::from_micros(10),
            jitter: Duration::ZERO,
            rate_bytes_per_sec: None,
            queue_limit: None,
            ecn_threshold: None,
        }
    }
}

/// Counters for one link direction, or summed over the whole network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams handed to the link by a node.
    pub sent: u64,
    /// Bytes (UDP payload) handed to the link.
    pub bytes_sent: u64,
    /// Datagrams lost at random.
    pub dropped: u64,
    /// Datagrams dropped because the link queue was full.
    pub queue_dropped: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies with a flipped bit.
    pub corrupted: u64,
    /// Copies held back for reordering.
    pub reordered: u64,
    /// Copies marked ECN CE.
    pub ecn_marked: u64,
    /// Copies handed to the destination node.
    pub delivered: u64,
    /// Bytes handed to the destination node.
    pub bytes_delivered: u64,
}

impl LinkStats {
    fn add(&mut self, other: &LinkStats) {
        self.sent += other.sent;
        self.bytes_sent += other.bytes_sent;
        self.dropped += other.dropped;
        self.queue_dropped += other.queue_dropped;
        self.duplicated += other.duplicated;
        self.corrupted += other.corrupted;
        self.reordered += other.reordered;
        self.ecn_marked += other.ecn_marked;
        self.delivered += other.delivered;
        self.bytes_delivered += other.bytes_delivered;
    }
}

/// Network-wide counters: every link's [`LinkStats`] summed, plus what no link took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Every link's counters, summed.
    pub links: LinkStats,
    /// Datagrams whose destination address no node owns.
    pub unroutable: u64,
    /// Timeouts delivered to nodes.
    pub timeouts: u64,
}

/// What the nodes put on the wire, read as RoCEv2: counted on every datagram a node
/// sends (before the link drops, duplicates or corrupts it), so it measures the
/// protocol's behaviour, not the network's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoceStats {
    /// Request packets (SEND, WRITE, READ request, atomics) of any transport.
    pub requests: u64,
    /// Request packets whose PSN is not after the highest PSN already sent on the same
    /// flow (source, destination, destination QP): go-back-N and timeout resends.
    /// A READ request resumed mid-message is counted as new.
    pub retransmissions: u64,
    /// READ response and atomic acknowledge packets.
    pub responses: u64,
    /// Responses whose PSN is not after the highest already sent on the flow:
    /// replays for duplicate READ or atomic requests.
    pub replayed_responses: u64,
    /// Positive ACKs (RC Acknowledge with an ACK syndrome).
    pub acks: u64,
    /// RNR NAKs.
    pub rnr_naks: u64,
    /// PSN sequence error NAKs.
    pub psn_sequence_naks: u64,
    /// Invalid request NAKs.
    pub invalid_request_naks: u64,
    /// Remote access error NAKs.
    pub remote_access_naks: u64,
    /// Remote operational error NAKs.
    pub remote_operational_naks: u64,
    /// NAKs with any other code.
    pub other_naks: u64,
    /// Congestion notification packets.
    pub cnps: u64,
    /// Datagrams that do not parse as RoCEv2.
    pub unparsable: u64,
}

impl RoceStats {
    /// Every NAK, RNR included.
    pub fn naks(&self) -> u64 {
        self.rnr_naks
            + self.psn_sequence_naks
            + self.invalid_request_naks
            + self.remote_access_naks
            + self.remote_operational_naks
            + self.other_naks
    }
}

/// Counts [`RoceStats`], remembering the highest PSN of each flow.
#[derive(Debug, Default)]
struct RoceTap {
    stats: RoceStats,
    /// (source, destination, destination QP, is a response) → highest PSN sent.
    highest: HashMap<(IpAddr, IpAddr, Qpn, bool), Psn>,
}

impl RoceTap {
    fn observe(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let Ok(parsed) = packet::parse(payload) else {
            self.stats.unparsable += 1;
            return;
        };
        let bth = parsed.repr.bth;
        let Some(info) = bth.opcode.info() else {
            self.stats.unparsable += 1;
            return;
        };
        let response = match info.operation {
            Operation::Send
            | Operation::Write
            | Operation::ReadRequest
            | Operation::CompareSwap
            | Operation::FetchAdd => {
                self.stats.requests += 1;
                false
            }
            Operation::ReadResponse | Operation::AtomicAcknowledge => {
                self.stats.responses += 1;
                true
            }
            Operation::Acknowledge => {
                match parsed.repr.aeth.map(|aeth| aeth.syndrome) {
                    Some(AckSyndrome::Ack { .. }) => self.stats.acks += 1,
                    Some(AckSyndrome::RnrNak { .. }) => self.stats.rnr_naks += 1,
                    Some(AckSyndrome::Nak(code)) => match code {
                        NakCode::PsnSequenceError => self.stats.psn_sequence_naks += 1,
                        NakCode::InvalidRequest => self.stats.invalid_request_naks += 1,
                        NakCode::RemoteAccessError => self.stats.remote_access_naks += 1,
                        NakCode::RemoteOperationalError => self.stats.remote_operational_naks += 1,
                        NakCode::InvalidRdRequest | NakCode::Reserved(_) => {
                            self.stats.other_naks += 1
                        }
                    },
                    None => self.stats.unparsable += 1,
                }
                return;
            }
            Operation::Cnp => {
                self.stats.cnps += 1;
                return;
            }
        };
        let key = (meta.src, meta.dst, bth.dest_qp, response);
        match self.highest.get_mut(&key) {
            Some(highest) if !bth.psn.is_after(*highest) => {
                if response {
                    self.stats.replayed_responses += 1;
                } else {
                    self.stats.retransmissions += 1;
                }
            }
            Some(highest) => *highest = bth.psn,
            None => {
                self.highest.insert(key, bth.psn);
            }
        }
    }
}

/// One thing that happened, recorded when tracing is on ([`Network::set_tracing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// When it happened.
    pub time: Time,
    /// What happened.
    pub kind: TraceKind,
}

/// What a [`TraceEvent`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceKind {
    /// Node `from` sent a datagram of `len` bytes towards node `to` (`None`: no node
    /// owns the destination address).
    Send {
        /// Sending node.
        from: usize,
        /// Receiving node, if routable.
        to: Option<usize>,
        /// UDP payload length.
        len: usize,
    },
    /// The link from `from` to `to` lost the datagram.
    Drop {
        /// Sending node.
        from: usize,
        /// Receiving node.
        to: usize,
    },
    /// A copy reached node `to`; `checksum` is an FNV-1a hash of its bytes.
    Deliver {
        /// Sending node.
        from: usize,
        /// Receiving node.
        to: usize,
        /// FNV-1a hash of the delivered payload.
        checksum: u64,
    },
    /// Node `node`'s timer fired.
    Timeout {
        /// The node.
        node: usize,
    },
}

/// Why a `run_*` call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The caller's condition became false.
    Stopped,
    /// No datagram in flight and no timer armed: nothing will ever happen again.
    Idle,
    /// Virtual time reached the deadline.
    Deadline,
    /// More than [`Network::STALL_LIMIT`] events happened without the clock moving,
    /// which means a node keeps asking for a timeout in the past or two nodes bounce
    /// datagrams over a zero-delay link forever.
    Stalled,
}

/// xoshiro256** seeded through splitmix64: small, fast and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            state: [splitmix(), splitmix(), splitmix(), splitmix()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`. Draws nothing when `p <= 0`, so a link without
    /// impairments does not perturb the random stream of the others.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.unit() < p)
    }

    /// Uniform in `0..bound` (`0` when `bound` is 0), by widening multiplication.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `0..=max`.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.below(nanos.saturating_add(1)))
    }
}

/// A datagram on its way to a node.
#[derive(Debug)]
struct InFlight {
    from: usize,
    to: usize,
    meta: DatagramMeta,
    payload: Vec<u8>,
}

/// One direction of a link: its configuration override, the time its transmitter is
/// busy until, and its counters.
#[derive(Debug, Default)]
struct LinkState {
    config: Option<LinkConfig>,
    busy_until: Time,
    stats: LinkStats,
}

#[derive(Debug)]
struct Slot<N> {
    node: N,
    /// Set when the node may have datagrams to send: after an input, or after the
    /// caller had `&mut` access to it.
    dirty: bool,
}

/// N nodes, the links between them and a virtual clock. See the module documentation.
#[derive(Debug)]
pub struct Network<N> {
    slots: Vec<Slot<N>>,
    routes: HashMap<IpAddr, usize>,
    default_link: LinkConfig,
    links: HashMap<(usize, usize), LinkState>,
    /// Min-heap of deliveries keyed by (time, sequence): equal times pop in the order
    /// they were scheduled.
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    in_flight: HashMap<u64, InFlight>,
    sequence: u64,
    now: Time,
    rng: Rng,
    unroutable: u64,
    timeouts: u64,
    trace: Option<Vec<TraceEvent>>,
    roce: RoceTap,
}

impl<N: Node> Network<N> {
    /// How many events may happen at one instant before a run reports
    /// [`RunOutcome::Stalled`].
    pub const STALL_LIMIT: u64 = 1_000_000;

    /// An empty network at time zero whose links all behave as `default_link` until
    /// overridden, with every random choice drawn from `seed`.
    pub fn new(seed: u64, default_link: LinkConfig) -> Self {
        Network {
            slots: Vec::new(),
            routes: HashMap::new(),
            default_link,
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            sequence: 0,
            now: Time::ZERO,
            rng: Rng::new(seed),
            unroutable: 0,
            timeouts: 0,
            trace: None,
            roce: RoceTap::default(),
        }
    }

    /// Adds a node owning `addresses` and returns its index. An address already owned
    /// by another node moves to this one.
    pub fn add_node(&mut self, node: N, addresses: impl IntoIterator<Item = IpAddr>) -> usize {
        let index = self.slots.len();
        self.slots.push(Slot { node, dirty: true });
        for address in addresses {
            self.routes.insert(address, index);
        }
        index
    }

    /// Gives `address` to node `index` (taking it from its previous owner, as when a
    /// namespace migrates). Datagrams already in flight keep their destination node.
    ///
    /// # Panics
    /// If `index` is not a node.
    pub fn add_address(&mut self, index: usize, address: IpAddr) {
        assert!(index < self.slots.len(), "no node {index}");
        self.routes.insert(address, index);
    }

    /// Forgets `address`: datagrams sent to it from now on are unroutable.
    pub fn remove_address(&mut self, address: IpAddr) {
        self.routes.remove(&address);
    }

    /// The node that owns `address`.
    pub fn route(&self, address: IpAddr) -> Option<usize> {
        self.routes.get(&address).copied()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the network has no node.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Node `index`.
    ///
    /// # Panics
    /// If `index` is not a node.
    pub fn node(&self, index: usize) -> &N {
        &self.slots[index].node
    }

    /// Node `index`, to post work to it between steps. Whatever it then wants to send
    /// is collected at the current virtual time by the next step.
    ///
    /// # Panics
    /// If `index` is not a node.
    pub fn node_mut(&mut self, index: usize) -> &mut N {
        let slot = &mut self.slots[index];
        slot.dirty = true;
        &mut slot.node
    }

    /// Every node, in index order.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.slots.iter().map(|slot| &slot.node)
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The configuration links use unless overridden.
    pub fn default_link(&self) -> LinkConfig {
        self.default_link
    }

    /// Changes the configuration of every link without an override. Datagrams already
    /// in flight are not affected.
    pub fn set_default_link(&mut self, config: LinkConfig) {
        self.default_link = config;
    }

    /// Overrides the link from node `from` to node `to` (one direction).
    pub fn set_link(&mut self, from: usize, to: usize, config: LinkConfig) {
        self.links.entry((from, to)).or_default().config = Some(config);
    }

    /// Overrides both directions between nodes `a` and `b`.
    pub fn set_link_both(&mut self, a: usize, b: usize, config: LinkConfig) {
        self.set_link(a, b, config);
        self.set_link(b, a, config);
    }

    /// Drops the override of the link from `from` to `to`; it follows the default again.
    pub fn clear_link(&mut self, from: usize, to: usize) {
        if let Some(link) = self.links.get_mut(&(from, to)) {
            link.config = None;
        }
    }

    /// The configuration in force on the link from `from` to `to`.
    pub fn link(&self, from: usize, to: usize) -> LinkConfig {
        self.links
            .get(&(from, to))
            .and_then(|link| link.config)
            .unwrap_or(self.default_link)
    }

    /// Counters of the link from `from` to `to`.
    pub fn link_stats(&self, from: usize, to: usize) -> LinkStats {
        self.links
            .get(&(from, to))
            .map(|link| link.stats)
            .unwrap_or_default()
    }

    /// Counters summed over every link.
    pub fn stats(&self) -> NetworkStats {
        let mut sum = LinkStats::default();
        for link in self.links.values() {
            sum.add(&link.stats);
        }
        NetworkStats {
            links: sum,
            unroutable: self.unroutable,
            timeouts: self.timeouts,
        }
    }

    /// What the nodes sent, read as RoCEv2 (see [`RoceStats`]).
    pub fn roce_stats(&self) -> RoceStats {
        self.roce.stats
    }

    /// Datagrams scheduled for delivery and not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Starts (clearing any earlier record) or stops recording a [`TraceEvent`] for
    /// everything that happens.
    pub fn set_tracing(&mut self, on: bool) {
        self.trace = on.then(Vec::new);
    }

    /// What was recorded since tracing was turned on (empty if it is off).
    pub fn trace(&self) -> &[TraceEvent] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// The simulator's random generator, for a harness that wants its own choices to
    /// follow the same seed.
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// When the next event (a delivery or a node timeout) is due, after collecting what
    /// the nodes want to send now. `None` when nothing will ever happen again.
    pub fn next_event_time(&mut self) -> Option<Time> {
        self.collect_transmits();
        self.peek_next().map(|(time, _)| time)
    }

    /// Processes the next event and returns its time, or `None` if there is none.
    /// The clock moves to the event's time (never backwards).
    pub fn step(&mut self) -> Option<Time> {
        self.collect_transmits();
        let (time, event) = self.peek_next()?;
        self.now = self.now.max(time);
        match event {
            Next::Delivery => {
                if let Some(Reverse((_, sequence))) = self.queue.pop() {
                    self.deliver(sequence);
                }
            }
            Next::Timeout(index) => {
                self.timeouts += 1;
                let now = self.now;
                self.record(TraceKind::Timeout { node: index });
                let slot = &mut self.slots[index];
                slot.dirty = true;
                slot.node.handle_timeout(now);
            }
        }
        self.collect_transmits();
        Some(self.now)
    }

    /// Processes every event due at or before `deadline`, then sets the clock to
    /// `deadline` (if it is later than now).
    pub fn run_until(&mut self, deadline: Time) -> RunOutcome {
        let outcome = self.run_while(|_| true, deadline);
        self.now = self.now.max(deadline);
        outcome
    }

    /// Processes events while `condition` holds, up to virtual time `deadline`. The
    /// condition is checked before every event, so it may inspect and post work to the
    /// nodes.
    pub fn run_while(
        &mut self,
        mut condition: impl FnMut(&mut Self) -> bool,
        deadline: Time,
    ) -> RunOutcome {
        let mut same_instant = 0u64;
        loop {
            if !condition(self) {
                return RunOutcome::Stopped;
            }
            let Some(time) = self.next_event_time() else {
                return RunOutcome::Idle;
            };
            if time > deadline {
                return RunOutcome::Deadline;
            }
            let before = self.now;
            self.step();
            if self.now == before {
                same_instant += 1;
                if same_instant > Self::STALL_LIMIT {
                    return RunOutcome::Stalled;
                }
            } else {
                same_instant = 0;
            }
        }
    }

    /// Processes events until nothing is left to do or `deadline` is reached.
    pub fn run_until_idle(&mut self, deadline: Time) -> RunOutcome {
        self.run_while(|_| true, deadline)
    }

    fn peek_next(&self) -> Option<(Time, Next)> {
        let delivery = self.queue.peek().map(|Reverse((time, _))| *time);
        // The earliest timer; equal times go to the lowest index.
        let timeout = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.node.poll_timeout().map(|time| (time, index)))
            .min();
        match (delivery, timeout) {
            (None, None) => None,
            (Some(time), None) => Some((time, Next::Delivery)),
            (None, Some((time, index))) => Some((time, Next::Timeout(index))),
            // A datagram due at the same instant as a timer goes first: an ACK arriving
            // just in time should cancel a retransmission.
            (Some(delivery), Some((timeout, index))) => Some(if delivery <= timeout {
                (delivery, Next::Delivery)
            } else {
                (timeout, Next::Timeout(index))
            }),
        }
    }

    fn record(&mut self, kind: TraceKind) {
        if let Some(trace) = &mut self.trace {
            trace.push(TraceEvent {
                time: self.now,
                kind,
            });
        }
    }

    /// Drains every dirty node's transmit queue, lowest index first.
    fn collect_transmits(&mut self) {
        for index in 0..self.slots.len() {
            if !self.slots[index].dirty {
                continue;
            }
            self.slots[index].dirty = false;
            while let Some(datagram) = self.slots[index].node.poll_transmit(self.now) {
                self.send(index, datagram);
            }
        }
    }

    /// Puts a datagram from node `from` on its link: serialisation, queue limit, loss,
    /// duplication, then per copy corruption, delay, jitter and reordering.
    fn send(&mut self, from: usize, datagram: Datagram) {
        let Datagram { mut meta, payload } = datagram;
        let len = payload.len();
        self.roce.observe(&meta, &payload);
        let Some(to) = self.route(meta.dst) else {
            self.unroutable += 1;
            self.record(TraceKind::Send {
                from,
                to: None,
                len,
            });
            return;
        };
        self.record(TraceKind::Send {
            from,
            to: Some(to),
            len,
        });
        let now = self.now;
        let default_link = self.default_link;
        let link = self.links.entry((from, to)).or_default();
        let config = link.config.unwrap_or(default_link);
        link.stats.sent += 1;
        link.stats.bytes_sent += len as u64;

        // Serialisation: the datagram leaves once the transmitter has sent everything
        // queued before it.
        let mut departure = now;
        if let Some(rate) = config.rate_bytes_per_sec.filter(|rate| *rate > 0) {
            let start = link.busy_until.max(now);
            let waiting = start - now;
            if config.queue_limit.is_some_and(|limit| waiting > limit) {
                link.stats.queue_dropped += 1;
                self.record(TraceKind::Drop { from, to });
                return;
            }
            if config.ecn_threshold.is_some_and(|limit| waiting > limit) && meta.ecn != Ecn::NotEct
            {
                if meta.ecn != Ecn::Ce {
                    link.stats.ecn_marked += 1;
                }
                meta.ecn = Ecn::Ce;
            }
            let nanos = (len as u128 * 1_000_000_000).div_ceil(u128::from(rate));
            let serialisation = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            departure = start + serialisation;
            link.busy_until = departure;
        }

        if self.rng.chance(config.loss) {
            if let Some(link) = self.links.get_mut(&(from, to)) {
                link.stats.dropped += 1;
            }
            self.record(TraceKind::Drop { from, to });
            return;
        }
        let copies = if self.rng.chance(config.duplicate) {
            2
        } else {
            1
        };
        let mut payload = Some(payload);
        for copy in 0..copies {
            let mut bytes = if copy + 1 == copies {
                payload.take().unwrap_or_default()
            } else {
                payload.clone().unwrap_or_default()
            };
            let mut stats = LinkStats::default();
            if copy > 0 {
                stats.duplicated += 1;
            }
            if !bytes.is_empty() && self.rng.chance(config.corrupt) {
                let bit = self.rng.below(bytes.len() as u64 * 8);
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                stats.corrupted += 1;
            }
            let mut arrival = departure + config.delay + self.rng.duration_up_to(config.jitter);
            if self.rng.chance(config.reorder) {
                arrival = arrival + self.rng.duration_up_to(config.reorder_delay);
                stats.reordered += 1;
            }
            if let Some(link) = self.links.get_mut(&(from, to)) {
                link.stats.add(&stats);
            }
            let sequence = self.sequence;
            self.sequence += 1;
            self.queue.push(Reverse((arrival, sequence)));
            self.in_flight.insert(
                sequence,
                InFlight {
                    from,
                    to,
                    meta,
                    payload: bytes,
                },
            );
        }
    }

    fn deliver(&mut self, sequence: u64) {
        let Some(InFlight {
            from,
            to,
            meta,
            payload,
        }) = self.in_flight.remove(&sequence)
        else {
            return;
        };
        if let Some(link) = self.links.get_mut(&(from, to)) {
            link.stats.delivered += 1;
            link.stats.bytes_delivered += payload.len() as u64;
        }
        if self.trace.is_some() {
            let checksum = fnv1a(&payload);
            self.record(TraceKind::Deliver { from, to, checksum });
        }
        let now = self.now;
        let slot = &mut self.slots[to];
        slot.dirty = true;
        slot.node.handle_datagram(now, meta, &payload);
    }
}

#[derive(Debug, Clone, Copy)]
enum Next {
    Delivery,
    Timeout(usize),
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn address(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn meta(src: IpAddr, dst: IpAddr) -> DatagramMeta {
        DatagramMeta {
            src,
            dst,
            src_port: 49152,
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        }
    }

    /// Sends `count` numbered datagrams to `peer`, one every `interval`, and records
    /// what comes back.
    #[derive(Debug)]
    struct Sender {
        me: IpAddr,
        peer: IpAddr,
        count: u32,
        next: u32,
        size: usize,
        interval: Duration,
        next_send: Time,
        due: bool,
        received: Vec<(Time, Vec<u8>)>,
    }

    impl Sender {
        fn new(me: IpAddr, peer: IpAddr, count: u32, size: usize, interval: Duration) -> Self {
            Sender {
                me,
                peer,
                count,
                next: 0,
                size: size.max(4),
                interval,
                next_send: Time::ZERO,
                due: true,
                received: Vec::new(),
            }
        }
    }

    impl Node for Sender {
        fn handle_datagram(&mut self, now: Time, _: DatagramMeta, payload: &[u8]) {
            self.received.push((now, payload.to_vec()));
        }
        fn poll_transmit(&mut self, now: Time) -> Option<Datagram> {
            if !self.due || self.next >= self.count {
                return None;
            }
            // With a zero interval everything goes at once.
            if !self.interval.is_zero() {
                self.due = false;
                self.next_send = now + self.interval;
            }
            let mut payload = vec![0u8; self.size];
            payload[..4].copy_from_slice(&self.next.to_be_bytes());
            self.next += 1;
            Some(Datagram {
                meta: meta(self.me, self.peer),
                payload,
            })
        }
        fn poll_timeout(&self) -> Option<Time> {
            (!self.interval.is_zero() && self.next < self.count && !self.due)
                .then_some(self.next_send)
        }
        fn handle_timeout(&mut self, _: Time) {
            self.due = true;
        }
    }

    /// Sends every datagram back to where it came from.
    #[derive(Debug, Default)]
    struct Echo {
        pending: Vec<Datagram>,
        seen: u64,
    }

    impl Node for Echo {
        fn handle_datagram(&mut self, _: Time, meta: DatagramMeta, payload: &[u8]) {
            self.seen += 1;
            self.pending.push(Datagram {
                meta: DatagramMeta {
                    src: meta.dst,
                    dst: meta.src,
                    ..meta
                },
                payload: payload.to_vec(),
            });
        }
        fn poll_transmit(&mut self, _: Time) -> Option<Datagram> {
            if self.pending.is_empty() {
                None
            } else {
                Some(self.pending.remove(0))
            }
        }
        fn poll_timeout(&self) -> Option<Time> {
            None
        }
        fn handle_timeout(&mut self, _: Time) {}
    }

    /// Counts and keeps what it receives; never sends.
    #[derive(Debug, Default)]
    struct Counter {
        received: Vec<(Time, Vec<u8>)>,
    }

    impl Node for Counter {
        fn handle_datagram(&mut self, now: Time, _: DatagramMeta, payload: &[u8]) {
            self.received.push((now, payload.to_vec()));
        }
        fn poll_transmit(&mut self, _: Time) -> Option<Datagram> {
            None
        }
        fn poll_timeout(&self) -> Option<Time> {
            None
        }
        fn handle_timeout(&mut self, _: Time) {}
    }

    fn numbers(received: &[(Time, Vec<u8>)]) -> Vec<u32> {
        received
            .iter()
            .map(|(_, bytes)| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .collect()
    }

    fn echo_run(seed: u64, link: LinkConfig) -> (Vec<TraceEvent>, NetworkStats) {
        let mut network: Network<Box<dyn Node>> = Network::new(seed, link);
        network.add_node(
            Box::new(Sender::new(
                address(1),
                address(2),
                500,
                64,
                Duration::from_micros(1),
            )),
            [address(1)],
        );
        network.add_node(Box::new(Echo::default()), [address(2)]);
        network.set_tracing(true);
        assert_eq!(
            network.run_until_idle(Time::from_nanos(1_000_000_000)),
            RunOutcome::Idle
        );
        (network.trace().to_vec(), network.stats())
    }

    fn lossy() -> LinkConfig {
        LinkConfig {
            loss: 0.1,
            reorder: 0.2,
            duplicate: 0.1,
            corrupt: 0.05,
            jitter: Duration::from_micros(3),
            rate_bytes_per_sec: Some(100_000_000),
            ..LinkConfig::default()
        }
    }

    #[test]
    fn same_seed_same_trace() {
        let (first, first_stats) = echo_run(42, lossy());
        let (second, second_stats) = echo_run(42, lossy());
        assert!(first.len() > 1000, "trace too short: {}", first.len());
        assert_eq!(first, second);
        assert_eq!(first_stats, second_stats);
        let (other, _) = echo_run(43, lossy());
        assert_ne!(first, other, "a different seed should give a different run");
    }

    #[test]
    fn perfect_link_delivers_everything_in_order_after_the_delay() {
        let mut network = Network::new(1, LinkConfig::default());
        let sender = Sender::new(address(1), address(2), 100, 100, Duration::ZERO);
        network.add_node(Box::new(sender) as Box<dyn Node>, [address(1)]);
        network.add_node(Box::new(Counter::default()), [address(2)]);
        assert_eq!(
            network.run_until_idle(Time::from_nanos(u64::MAX)),
            RunOutcome::Idle
        );
        let stats = network.stats().links;
        assert_eq!(stats.sent, 100);
        assert_eq!(stats.delivered, 100);
        assert_eq!(stats.bytes_delivered, 100 * 100);
        assert_eq!(network.now(), Time::from_nanos(10_000));
    }

    /// Node 1 sends `count` datagrams of `len` bytes, `gap` apart, to node 2, which
    /// sends nothing: the network most of these tests run.
    fn two_senders(
        seed: u64,
        link: LinkConfig,
        count: u32,
        len: usize,
        gap: Duration,
    ) -> Network<Sender> {
        let mut network = Network::new(seed, link);
        network.add_node(
            Sender::new(address(1), address(2), count, len, gap),
            [address(1)],
        );
        network.add_node(
            Sender::new(address(2), address(1), 0, 8, Duration::ZERO),
            [address(2)],
        );
        network
    }

    #[test]
    fn loss_rate_is_statistically_right() {
        let mut network = two_senders(
            9,
            LinkConfig {
                loss: 0.05,
                ..LinkConfig::default()
            },
            20_000,
            8,
            Duration::ZERO,
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        let stats = network.stats().links;
        assert_eq!(stats.sent, 20_000);
        assert_eq!(stats.dropped + stats.delivered, 20_000);
        assert_eq!(network.node(1).received.len() as u64, stats.delivered);
        // Binomial(20000, 0.05): mean 1000, sigma ~31; allow 5 sigma.
        assert!(
            (845..=1155).contains(&stats.dropped),
            "dropped {} of 20000 at 5% loss",
            stats.dropped
        );
    }

    #[test]
    fn duplication_rate_is_statistically_right() {
        let mut network = two_senders(
            10,
            LinkConfig {
                duplicate: 0.1,
                ..LinkConfig::default()
            },
            10_000,
            8,
            Duration::ZERO,
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        let stats = network.stats().links;
        assert_eq!(stats.delivered, 10_000 + stats.duplicated);
        // Binomial(10000, 0.1): mean 1000, sigma 30.
        assert!((850..=1150).contains(&stats.duplicated), "{stats:?}");
        let mut seen = numbers(&network.node(1).received);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000, "every datagram arrives at least once");
    }

    #[test]
    fn reorder_really_reorders() {
        let run = |reorder: f64| {
            let mut network = two_senders(
                3,
                LinkConfig {
                    reorder,
                    ..LinkConfig::default()
                },
                1000,
                8,
                Duration::from_micros(1),
            );
            network.run_until_idle(Time::from_nanos(u64::MAX));
            (numbers(&network.node(1).received), network.stats().links)
        };
        let (in_order, _) = run(0.0);
        assert_eq!(in_order, (0..1000).collect::<Vec<_>>());
        let (shuffled, stats) = run(0.1);
        assert_eq!(shuffled.len(), 1000, "reordering loses nothing");
        let inversions = shuffled.windows(2).filter(|pair| pair[0] > pair[1]).count();
        assert!(inversions > 20, "only {inversions} inversions");
        assert!((50..=150).contains(&stats.reordered), "{stats:?}");
        let mut sorted = shuffled.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn bandwidth_limits_throughput() {
        // 1000 datagrams of 1000 bytes sent at once over 10 MB/s take 100 ms to drain.
        let mut network = two_senders(
            4,
            LinkConfig {
                rate_bytes_per_sec: Some(10_000_000),
                delay: Duration::from_micros(5),
                ..LinkConfig::default()
            },
            1000,
            1000,
            Duration::ZERO,
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        let received = &network.node(1).received;
        assert_eq!(received.len(), 1000);
        let last = received.last().map(|(time, _)| *time).unwrap_or_default();
        assert_eq!(last, Time::from_nanos(100_000_000 + 5_000));
        // Evenly spaced by the serialisation time of 1000 bytes: 100 µs.
        assert_eq!(received[1].0 - received[0].0, Duration::from_micros(100));
        assert_eq!(numbers(received), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn queue_limit_drops_the_tail() {
        let mut network = two_senders(
            4,
            LinkConfig {
                rate_bytes_per_sec: Some(10_000_000),
                queue_limit: Some(Duration::from_micros(1000)),
                ..LinkConfig::default()
            },
            100,
            1000,
            Duration::ZERO,
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        // Each datagram takes 100 µs; the 12th would wait 1.1 ms.
        assert_eq!(network.node(1).received.len(), 11);
        assert_eq!(network.stats().links.queue_dropped, 89);
    }

    #[test]
    fn ecn_marks_only_capable_datagrams_behind_a_queue() {
        #[derive(Debug)]
        struct EctSender(Sender);
        impl Node for EctSender {
            fn handle_datagram(&mut self, now: Time, meta: DatagramMeta, payload: &[u8]) {
                self.0.handle_datagram(now, meta, payload);
            }
            fn poll_transmit(&mut self, now: Time) -> Option<Datagram> {
                let mut datagram = self.0.poll_transmit(now)?;
                datagram.meta.ecn = Ecn::Ect0;
                Some(datagram)
            }
            fn poll_timeout(&self) -> Option<Time> {
                None
            }
            fn handle_timeout(&mut self, _: Time) {}
        }
        #[derive(Debug, Default)]
        struct EcnCounter(Vec<Ecn>);
        impl Node for EcnCounter {
            fn handle_datagram(&mut self, _: Time, meta: DatagramMeta, _: &[u8]) {
                self.0.push(meta.ecn);
            }
            fn poll_transmit(&mut self, _: Time) -> Option<Datagram> {
                None
            }
            fn poll_timeout(&self) -> Option<Time> {
                None
            }
            fn handle_timeout(&mut self, _: Time) {}
        }
        let mut network: Network<Box<dyn Node>> = Network::new(
            5,
            LinkConfig {
                rate_bytes_per_sec: Some(10_000_000),
                ecn_threshold: Some(Duration::from_micros(250)),
                ..LinkConfig::default()
            },
        );
        network.add_node(
            Box::new(EctSender(Sender::new(
                address(1),
                address(2),
                10,
                1000,
                Duration::ZERO,
            ))),
            [address(1)],
        );
        network.add_node(Box::new(EcnCounter::default()), [address(2)]);
        network.run_until_idle(Time::from_nanos(u64::MAX));
        // Waits: 0, 100, 200, 300 µs …: the first three pass unmarked.
        assert_eq!(network.stats().links.ecn_marked, 7);
        assert_eq!(network.stats().links.delivered, 10);
    }

    #[test]
    fn corruption_flips_exactly_one_bit() {
        let mut network = two_senders(
            5,
            LinkConfig {
                corrupt: 1.0,
                ..LinkConfig::default()
            },
            200,
            64,
            Duration::ZERO,
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        let received = &network.node(1).received;
        assert_eq!(received.len(), 200);
        assert_eq!(network.stats().links.corrupted, 200);
        let mut flipped_positions = std::collections::BTreeSet::new();
        for (index, (_, bytes)) in received.iter().enumerate() {
            // The original: the index in the first four bytes, zeros after.
            let mut original = [0u8; 64];
            original[..4].copy_from_slice(&(index as u32).to_be_bytes());
            let differing: u32 = original
                .iter()
                .zip(bytes)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert_eq!(differing, 1, "datagram {index}");
            let position = original
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(usize::MAX);
            flipped_positions.insert(position);
        }
        assert!(
            flipped_positions.len() > 40,
            "flips spread over the payload"
        );
    }

    #[test]
    fn echo_round_trip_and_timeouts_advance_the_clock() {
        let mut network: Network<Box<dyn Node>> = Network::new(6, LinkConfig::default());
        network.add_node(
            Box::new(Sender::new(
                address(1),
                address(2),
                5,
                16,
                Duration::from_micros(100),
            )),
            [address(1)],
        );
        network.add_node(Box::new(Echo::default()), [address(2)]);
        network.set_tracing(true);
        assert_eq!(
            network.run_until(Time::from_nanos(1_000_000)),
            RunOutcome::Idle
        );
        assert_eq!(network.now(), Time::from_nanos(1_000_000));
        let stats = network.stats();
        assert_eq!(stats.links.sent, 10);
        assert_eq!(stats.links.delivered, 10);
        assert_eq!(stats.timeouts, 4);
        let echoes: Vec<Time> = network
            .trace()
            .iter()
            .filter(|event| matches!(event.kind, TraceKind::Deliver { to: 0, .. }))
            .map(|event| event.time)
            .collect();
        // Sent at 0, 100, 200 … µs; back 20 µs later.
        let expected: Vec<Time> = (0..5)
            .map(|i| Time::from_nanos(i * 100_000 + 20_000))
            .collect();
        assert_eq!(echoes, expected);
    }

    #[test]
    fn per_pair_override_and_unroutable() {
        let mut network = Network::new(7, LinkConfig::default());
        network.add_node(
            Sender::new(address(1), address(2), 10, 8, Duration::ZERO),
            [address(1)],
        );
        network.add_node(
            Sender::new(address(2), address(9), 10, 8, Duration::ZERO),
            [address(2)],
        );
        network.set_link(
            0,
            1,
            LinkConfig {
                loss: 1.0,
                ..LinkConfig::default()
            },
        );
        network.run_until_idle(Time::from_nanos(u64::MAX));
        assert_eq!(network.link_stats(0, 1).dropped, 10);
        assert_eq!(network.stats().unroutable, 10);
        assert!(network.node(1).received.is_empty());
        // The address moves: now node 1's datagrams reach node 0, and the override on
        // 0 → 1 does not apply to 1 → 0.
        network.add_address(0, address(9));
        network.node_mut(1).next = 0;
        network.run_until_idle(Time::from_nanos(u64::MAX));
        assert_eq!(network.node(0).received.len(), 10);
        assert_eq!(network.link_stats(1, 0).delivered, 10);
    }

    #[test]
    fn stalled_node_is_reported() {
        #[derive(Debug)]
        struct Stuck;
        impl Node for Stuck {
            fn handle_datagram(&mut self, _: Time, _: DatagramMeta, _: &[u8]) {}
            fn poll_transmit(&mut self, _: Time) -> Option<Datagram> {
                None
            }
            fn poll_timeout(&self) -> Option<Time> {
                Some(Time::ZERO)
            }
            fn handle_timeout(&mut self, _: Time) {}
        }
        let mut network = Network::new(8, LinkConfig::default());
        network.add_node(Stuck, [address(1)]);
        assert_eq!(
            network.run_until_idle(Time::from_nanos(1)),
            RunOutcome::Stalled
        );
    }

    #[test]
    fn rng_is_the_reference_xoshiro256starstar() {
        // splitmix64(0) seeds, then xoshiro256**: the first outputs are fixed forever
        // so that seeds printed by failing tests replay on any platform.
        let mut rng = Rng::new(0);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        let mut again = Rng::new(0);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_eq!(first, FIRST_OUTPUTS_OF_SEED_ZERO);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
            let unit = rng.unit();
            assert!((0.0..1.0).contains(&unit));
        }
        assert_eq!(rng.below(0), 0);
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }

    #[test]
    fn roce_tap_counts_retransmissions_and_naks() {
        use ferroce_wire::{aeth, bth, reth, OpCode};
        fn roce(opcode: OpCode, psn: u32, syndrome: Option<AckSyndrome>) -> Vec<u8> {
            let mut repr = packet::Repr::new(bth::Repr {
                opcode,
                solicited: false,
                migreq: false,
                pad_count: 0,
                pkey: 0xffff,
                fecn: false,
                becn: false,
                dest_qp: Qpn::new(0x11),
                ack_req: true,
                psn: Psn::new(psn),
            });
            if opcode == OpCode::RcWriteOnly {
                repr.reth = Some(reth::Repr {
                    virtual_address: 0,
                    rkey: ferroce_wire::Rkey(1),
                    dma_length: 4,
                });
            }
            repr.aeth = syndrome.map(|syndrome| aeth::Repr { syndrome, msn: 1 });
            let payload = if opcode == OpCode::RcWriteOnly { 4 } else { 0 };
            let mut bytes = vec![0u8; packet::buffer_len(&repr, payload).unwrap()];
            repr.emit(&mut bytes).unwrap();
            bytes
        }
        #[derive(Debug)]
        struct Script(Vec<Vec<u8>>);
        impl Node for Script {
            fn handle_datagram(&mut self, _: Time, _: DatagramMeta, _: &[u8]) {}
            fn poll_transmit(&mut self, _: Time) -> Option<Datagram> {
                (!self.0.is_empty()).then(|| Datagram {
                    meta: meta(address(1), address(2)),
                    payload: self.0.remove(0),
                })
            }
            fn poll_timeout(&self) -> Option<Time> {
                None
            }
            fn handle_timeout(&mut self, _: Time) {}
        }
        let write = |psn| roce(OpCode::RcWriteOnly, psn, None);
        let ack = |syndrome| roce(OpCode::RcAcknowledge, 3, Some(syndrome));
        let script = vec![
            write(0xff_fffe),
            write(0xff_ffff),
            write(0),
            write(0xff_ffff),
            write(0),
            write(1),
            ack(AckSyndrome::Ack { credits: 0x1f }),
            ack(AckSyndrome::RnrNak { timer: 12 }),
            ack(AckSyndrome::Nak(NakCode::PsnSequenceError)),
            ack(AckSyndrome::Nak(NakCode::RemoteAccessError)),
            vec![1, 2, 3],
        ];
        let mut network: Network<Box<dyn Node>> = Network::new(1, LinkConfig::default());
        network.add_node(Box::new(Script(script)), [address(1)]);
        network.add_node(Box::new(Counter::default()), [address(2)]);
        network.run_until_idle(Time::from_nanos(1_000_000));
        let stats = network.roce_stats();
        assert_eq!(stats.requests, 6);
        assert_eq!(stats.retransmissions, 2, "PSNs wrap at 2^24");
        assert_eq!(stats.acks, 1);
        assert_eq!(stats.rnr_naks, 1);
        assert_eq!(stats.psn_sequence_naks, 1);
        assert_eq!(stats.remote_access_naks, 1);
        assert_eq!(stats.naks(), 3);
        assert_eq!(stats.unparsable, 1);
    }

    const FIRST_OUTPUTS_OF_SEED_ZERO: [u64; 3] = [
        0x99ec_5f36_cb75_f2b4,
        0xbf6e_1f78_4956_452a,
        0x1a5f_849d_4933_e6e0,
    ];
}

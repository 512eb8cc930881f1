//! The CM agent on the simulated network and hand-carried datagrams: connect, accept,
//! reject, lost and repeated messages, MRA, timeouts, disconnect from either side,
//! stale connections, SIDR, and what QP1 does with MADs that are not CM's.
// A failed setup step is a failed test: unwrap is the clearest way to say so here.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferroce_transport::engine::cm::rdma_ip_private_data;
use ferroce_transport::engine::sim::{LinkConfig, Network};
use ferroce_transport::engine::{
    AcceptParams, AccessFlags, CmEvent, CmState, CommId, CompletionQueueId, ConnectParams,
    Datagram, Engine, EngineConfig, MemoryRegion, NamespaceId, QpAttr, QpCap, QpInitAttr, QpState,
    QpType, RecvWr, SendOp, SendWr, ServiceAddress, Sge, Time, WcOpcode, WcStatus,
};
use ferroce_transport::wire::cm::{self as wire_cm, rej, sidr_rep, Message};
use ferroce_transport::wire::cma::PortSpace;
use ferroce_transport::wire::{mad, packet, Qpn, ServiceId};

const NS: NamespaceId = NamespaceId::DEFAULT;
const A: usize = 0;
const B: usize = 1;

fn service() -> ServiceId {
    ServiceId::rdma_ip(PortSpace::Tcp, 7174)
}

/// Service `service_id` at B.
fn to(service_id: ServiceId) -> ServiceAddress {
    ServiceAddress {
        address: addr(B),
        service_id,
    }
}

fn addr(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index as u8))
}

fn all_access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

/// One host's resources: a PD's CQ and MR, QPs made on demand.
#[derive(Debug, Clone, Copy)]
struct Host {
    pd: ferroce_transport::engine::ProtectionDomain,
    cq: CompletionQueueId,
    mr: MemoryRegion,
}

fn engine(index: usize) -> (Engine, Host) {
    let config = EngineConfig {
        default_gids: vec![addr(index)],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, 0x5eed + index as u64);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 4096).unwrap();
    let mr = engine.reg_mr(NS, pd, 64 * 1024, all_access()).unwrap();
    (engine, Host { pd, cq, mr })
}

fn new_qp(engine: &mut Engine, host: &Host, qp_type: QpType) -> Qpn {
    let init = QpInitAttr {
        qp_type,
        pd: host.pd,
        send_cq: host.cq,
        recv_cq: host.cq,
        srq: None,
        cap: QpCap {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
        sq_sig_all: true,
    };
    engine.create_qp(NS, init).unwrap()
}

/// Two hosts on the simulator; B listens on [`service`] and, when `accept` is set,
/// accepts every request on a fresh QP as soon as it sees it.
struct CmPair {
    net: Network<Engine>,
    hosts: [Host; 2],
    /// Every CM event each side produced, in order.
    events: [Vec<CmEvent>; 2],
    accept: bool,
    /// B's accepted connections: its ID, its QP and the requesting QP.
    accepted: Vec<(CommId, Qpn, Qpn)>,
}

impl CmPair {
    fn new(seed: u64, link: LinkConfig) -> CmPair {
        let mut net = Network::new(seed, link);
        let mut hosts = Vec::new();
        for index in [A, B] {
            let (engine, host) = engine(index);
            net.add_node(engine, [addr(index)]);
            hosts.push(host);
        }
        net.node_mut(B).cm_listen(NS, service(), 16).unwrap();
        CmPair {
            net,
            hosts: [hosts[0], hosts[1]],
            events: [Vec::new(), Vec::new()],
            accept: true,
            accepted: Vec::new(),
        }
    }

    fn engine(&mut self, index: usize) -> &mut Engine {
        self.net.node_mut(index)
    }

    fn now(&self) -> Time {
        self.net.now()
    }

    fn qp(&mut self, index: usize) -> Qpn {
        let host = self.hosts[index];
        new_qp(self.net.node_mut(index), &host, QpType::Rc)
    }

    /// A's new QP connects to B's service.
    fn connect(&mut self) -> (CommId, Qpn) {
        let qpn = self.qp(A);
        let now = self.now();
        // As librdmacm sends it from port 49605.
        let source = std::net::SocketAddr::new(addr(A), 49605);
        let data = rdma_ip_private_data(source, addr(B), b"hi").unwrap();
        let params = ConnectParams::default();
        let id = self
            .engine(A)
            .cm_connect(now, NS, qpn, to(service()), &params, &data)
            .unwrap();
        (id, qpn)
    }

    /// Takes both sides' events, accepting requests at B when asked to.
    fn collect(&mut self) {
        for index in [A, B] {
            while let Some(event) = self.net.node_mut(index).poll_cm_event(NS) {
                if let (B, CmEvent::ConnectRequest(request), true) = (index, &event, self.accept) {
                    let qpn = self.qp(B);
                    let now = self.now();
                    self.engine(B)
                        .cm_accept(now, NS, request.id, qpn, &AcceptParams::default(), b"ok")
                        .unwrap();
                    self.accepted.push((request.id, qpn, request.remote_qpn));
                }
                self.events[index].push(event);
            }
        }
    }

    /// Runs the network until `done` holds (true) or `limit` of virtual time passes
    /// or nothing is left to happen (false).
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&CmPair) -> bool) -> bool {
        let deadline = self.now() + limit;
        loop {
            self.collect();
            if done(self) {
                return true;
            }
            // Collecting what the nodes send may be all that was waiting.
            let next = self.net.next_event_time();
            if done(self) {
                return true;
            }
            match next {
                Some(t) if t <= deadline => {
                    self.net.step();
                }
                _ => return false,
            }
        }
    }

    fn saw(&self, index: usize, want: &CmEvent) -> bool {
        self.events[index].contains(want)
    }

    /// Connects A to B and runs until both report the connection up.
    fn establish(&mut self) -> (CommId, Qpn, CommId, Qpn) {
        let (a_id, a_qpn) = self.connect();
        // B's side of it (a late copy of an older REQ may have made another).
        let ours = |p: &CmPair| {
            p.accepted
                .iter()
                .find(|&&(_, _, remote)| remote == a_qpn)
                .map(|&(id, qpn, _)| (id, qpn))
        };
        let up = self.run_until(Duration::from_secs(600), |p| {
            p.saw(A, &CmEvent::Established(a_id))
                && ours(p).is_some_and(|(id, _)| p.saw(B, &CmEvent::Established(id)))
        });
        assert!(up, "connection established: {:?}", self.events);
        let (b_id, b_qpn) = ours(self).unwrap();
        (a_id, a_qpn, b_id, b_qpn)
    }

    fn post_recv(&mut self, index: usize, qpn: Qpn, wr_id: u64, offset: u64) {
        let mr = self.hosts[index].mr;
        let sge = Sge {
            addr: mr.addr + offset,
            length: 1024,
            lkey: mr.lkey,
        };
        let wr = RecvWr {
            wr_id,
            sg_list: vec![sge].into(),
        };
        self.engine(index).post_recv(NS, qpn, wr).unwrap();
    }

    fn completions(&mut self, index: usize) -> Vec<ferroce_transport::engine::WorkCompletion> {
        let cq = self.hosts[index].cq;
        self.engine(index).poll_cq(NS, cq, 4096).unwrap()
    }
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 1.0,
        ..LinkConfig::default()
    }
}

#[test]
fn connect_accept_establish_then_send_and_write() {
    let mut pair = CmPair::new(1, LinkConfig::default());
    let (a_id, a_qpn, b_id, b_qpn) = pair.establish();
    // The request carried librdmacm's header and the consumer's bytes after it.
    let request = pair.events[B]
        .iter()
        .find_map(|e| match e {
            CmEvent::ConnectRequest(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (request.id, request.remote, request.remote_qpn),
        (b_id, addr(A), a_qpn)
    );
    let header = request.cma.unwrap();
    assert_eq!(header.source(), std::net::SocketAddr::new(addr(A), 49605));
    assert_eq!(header.dst(), addr(B));
    assert_eq!(&request.user_data()[..2], b"hi");
    assert_eq!(request.private_data.len(), wire_cm::req::PRIVATE_DATA_LEN);
    // The QPs point at each other with crossed PSNs, as cm.c sets them.
    let a = pair.engine(A).query_qp(NS, a_qpn).unwrap();
    let b = pair.engine(B).query_qp(NS, b_qpn).unwrap();
    assert_eq!((a.state, b.state), (QpState::Rts, QpState::Rts));
    assert_eq!(a.attr.dest_qpn, Some(b_qpn));
    assert_eq!(b.attr.dest_qpn, Some(a_qpn));
    assert_eq!(a.attr.sq_psn, b.attr.rq_psn);
    assert_eq!(b.attr.sq_psn, a.attr.rq_psn);
    assert_eq!(a.attr.max_rd_atomic, Some(1));
    assert_eq!(b.attr.max_dest_rd_atomic, Some(1));
    // rdma_cm's ACK timeout on RoCE: packet life time 18 and ack delay 15 give 19.
    assert_eq!((a.attr.timeout, b.attr.timeout), (Some(19), Some(19)));
    assert_eq!(
        pair.engine(A).cm_state(NS, a_id),
        Some(CmState::Established)
    );

    // An RC SEND and a WRITE over the connection the CM made.
    pair.post_recv(B, b_qpn, 7, 0);
    let a_mr = pair.hosts[A].mr;
    let b_mr = pair.hosts[B].mr;
    pair.engine(A)
        .mr_write(NS, a_mr.lkey, a_mr.addr, b"over the CM")
        .unwrap();
    let sge = Sge {
        addr: a_mr.addr,
        length: 11,
        lkey: a_mr.lkey,
    };
    pair.engine(A)
        .post_send(NS, a_qpn, SendWr::new(1, SendOp::Send, vec![sge]))
        .unwrap();
    let write = SendOp::RdmaWrite {
        remote_addr: b_mr.addr + 4096,
        rkey: b_mr.rkey,
    };
    pair.engine(A)
        .post_send(NS, a_qpn, SendWr::new(2, write, vec![sge]))
        .unwrap();
    let mut a_done = Vec::new();
    let mut b_done = Vec::new();
    pair.run_until(Duration::from_secs(1), |_| false);
    a_done.extend(pair.completions(A));
    b_done.extend(pair.completions(B));
    let statuses: Vec<_> = a_done.iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(statuses, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    assert_eq!(
        b_done
            .iter()
            .map(|w| (w.wr_id, w.opcode, w.byte_len))
            .collect::<Vec<_>>(),
        [(7, WcOpcode::Recv, 11)]
    );
    let mut out = [0u8; 11];
    pair.engine(B)
        .mr_read(NS, b_mr.lkey, b_mr.addr, &mut out)
        .unwrap();
    assert_eq!(&out, b"over the CM");
    pair.engine(B)
        .mr_read(NS, b_mr.lkey, b_mr.addr + 4096, &mut out)
        .unwrap();
    assert_eq!(&out, b"over the CM");
}

#[test]
fn reject_carries_the_consumers_private_data() {
    let mut pair = CmPair::new(2, LinkConfig::default());
    pair.accept = false;
    let (a_id, a_qpn) = pair.connect();
    assert!(pair.run_until(Duration::from_secs(1), |p| !p.events[B].is_empty()));
    let CmEvent::ConnectRequest(request) = pair.events[B][0].clone() else {
        panic!("a request: {:?}", pair.events[B]);
    };
    pair.engine(B)
        .cm_reject(NS, request.id, b"not today")
        .unwrap();
    assert_eq!(pair.engine(B).cm_state(NS, request.id), None);
    assert!(pair.run_until(Duration::from_secs(1), |p| !p.events[A].is_empty()));
    let CmEvent::Rejected {
        id,
        reason,
        private_data,
    } = pair.events[A][0].clone()
    else {
        panic!("rejected: {:?}", pair.events[A]);
    };
    assert_eq!((id, reason), (a_id, rej::Reason::ConsumerDefined));
    assert_eq!(&private_data[..9], b"not today");
    assert_eq!(pair.engine(A).cm_state(NS, a_id), None);
    assert_eq!(
        pair.engine(A).query_qp(NS, a_qpn).unwrap().state,
        QpState::Err
    );
}

#[test]
fn no_listener_is_rejected_at_once_with_invalid_service_id() {
    let mut pair = CmPair::new(3, LinkConfig::default());
    let qpn = pair.qp(A);
    let other = ServiceId::rdma_ip(PortSpace::Tcp, 9999);
    let start = pair.now();
    let id = pair
        .engine(A)
        .cm_connect(start, NS, qpn, to(other), &ConnectParams::default(), &[])
        .unwrap();
    assert!(pair.run_until(Duration::from_secs(1), |p| !p.events[A].is_empty()));
    let elapsed = pair.now() - start;
    assert!(elapsed < Duration::from_millis(1), "{elapsed:?}");
    assert!(matches!(
        pair.events[A][0],
        CmEvent::Rejected { id: got, reason: rej::Reason::InvalidServiceId, .. } if got == id
    ));
    assert_eq!(pair.engine(B).cm_counters(NS).unwrap().sent, 1);
}

/// A connects while the first MAD `from` sends is lost; runs until A is connected.
fn first_mad_lost(seed: u64, from: usize) -> (CmPair, CommId) {
    let mut pair = CmPair::new(seed, LinkConfig::default());
    pair.net.set_link(from, 1 - from, lossy());
    let (a_id, _) = pair.connect();
    let sent = |p: &CmPair| p.net.node(from).cm_counters(NS).unwrap().sent;
    assert!(pair.run_until(Duration::from_secs(1), |p| sent(p) == 1));
    pair.net.clear_link(from, 1 - from);
    assert!(pair.run_until(Duration::from_secs(60), |p| p
        .saw(A, &CmEvent::Established(a_id))));
    (pair, a_id)
}

#[test]
fn a_lost_req_rep_rtu_or_dreq_is_resent() {
    // REQ: A's first MAD never arrives; A's timer sends it again.
    let (mut pair, _) = first_mad_lost(4, A);
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().retransmits, 1);
    assert!(pair.run_until(Duration::from_secs(60), |p| p.events[B]
        .iter()
        .any(|e| matches!(e, CmEvent::Established(_)))));

    // REP: B's first answer is lost; its timer (or A's repeated REQ) brings another.
    let (mut pair, _) = first_mad_lost(5, B);
    assert!(pair.run_until(Duration::from_secs(60), |p| p.events[B]
        .iter()
        .any(|e| matches!(e, CmEvent::Established(_)))));
    assert!(pair.engine(B).cm_counters(NS).unwrap().sent >= 2);

    // RTU: B repeats its REP, A answers it with the RTU again.
    let mut pair = CmPair::new(6, LinkConfig::default());
    let (a_id, _) = pair.connect();
    assert!(pair.run_until(Duration::from_secs(1), |p| !p.accepted.is_empty()));
    // The REP is on its way to A; what A sends next (the RTU) is lost.
    pair.net.set_link(A, B, lossy());
    assert!(pair.run_until(Duration::from_secs(1), |p| p
        .saw(A, &CmEvent::Established(a_id))));
    pair.run_until(Duration::from_millis(100), |_| false);
    let b_id = pair.accepted[0].0;
    assert_eq!(pair.engine(B).cm_state(NS, b_id), Some(CmState::RepSent));
    pair.net.clear_link(A, B);
    assert!(pair.run_until(Duration::from_secs(60), |p| p
        .saw(B, &CmEvent::Established(b_id))));
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().duplicates, 1);
    assert_eq!(pair.engine(B).cm_counters(NS).unwrap().retransmits, 1);

    // DREQ: resent on its timer, then answered.
    let mut pair = CmPair::new(7, LinkConfig::default());
    let (a_id, _, b_id, _) = pair.establish();
    pair.net.set_link(A, B, lossy());
    let now = pair.now();
    pair.engine(A).cm_disconnect(now, NS, a_id, &[]).unwrap();
    let sent = pair.engine(A).cm_counters(NS).unwrap().sent;
    assert!(pair.run_until(Duration::from_secs(1), |p| p
        .net
        .node(A)
        .cm_counters(NS)
        .unwrap()
        .sent
        > sent));
    pair.net.clear_link(A, B);
    assert!(pair.run_until(Duration::from_secs(60), |p| p
        .saw(A, &CmEvent::Disconnected(a_id))
        && p.saw(B, &CmEvent::Disconnected(b_id))));
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().retransmits, 1);
}

/// Hand-carried datagrams: what one engine sent, given to the other.
fn take(engine: &mut Engine, now: Time) -> Vec<Datagram> {
    std::iter::from_fn(|| engine.poll_transmit(now)).collect()
}

fn give(engine: &mut Engine, now: Time, datagrams: &[Datagram]) {
    for d in datagrams {
        engine.handle_datagram(now, d.meta, &d.payload);
    }
}

/// The CM message of a datagram to QP1.
fn cm_message(d: &Datagram) -> (u64, Vec<u8>) {
    let parsed = packet::parse(&d.payload).unwrap();
    assert_eq!(parsed.repr.bth.dest_qp, Qpn::GSI);
    let header = mad::Repr::parse(&mad::Packet::new_checked(parsed.payload).unwrap()).unwrap();
    (header.transaction_id, parsed.payload.to_vec())
}

fn parse_cm(bytes: &[u8]) -> Message<'_> {
    wire_cm::Repr::parse(&mad::Packet::new_checked(bytes).unwrap())
        .unwrap()
        .message
}

/// Two engines carried by hand: B listens, a new QP of A connects at time zero.
struct ByHand {
    a: Engine,
    b: Engine,
    b_host: Host,
    /// A's connection.
    id: CommId,
    /// The one REQ A sent.
    req: Vec<Datagram>,
}

impl ByHand {
    /// B takes A's REQ and reports the request.
    fn request(&mut self) -> ferroce_transport::engine::ConnectRequest {
        give(&mut self.b, Time::ZERO, &self.req);
        let Some(CmEvent::ConnectRequest(request)) = self.b.poll_cm_event(NS) else {
            panic!("a connection request");
        };
        request
    }
}

fn by_hand() -> ByHand {
    by_hand_of(QpType::Rc)
}

fn by_hand_of(qp_type: QpType) -> ByHand {
    let (mut a, a_host) = engine(A);
    let (mut b, b_host) = engine(B);
    b.cm_listen(NS, service(), 4).unwrap();
    let a_qpn = new_qp(&mut a, &a_host, qp_type);
    let id = a
        .cm_connect(
            Time::ZERO,
            NS,
            a_qpn,
            to(service()),
            &ConnectParams::default(),
            &[],
        )
        .unwrap();
    let req = take(&mut a, Time::ZERO);
    assert_eq!(req.len(), 1);
    ByHand {
        a,
        b,
        b_host,
        id,
        req,
    }
}

#[test]
fn a_repeated_req_gets_an_mra_then_the_rep_and_never_a_second_connection() {
    let mut hand = by_hand();
    let request = hand.request();
    let ByHand {
        mut b, b_host, req, ..
    } = hand;
    let t0 = Time::ZERO;
    assert_eq!(b.cm_state(NS, request.id), Some(CmState::MraReqSent));
    // Before the consumer decides, the same REQ gets an MRA.
    give(&mut b, t0, &req);
    let mra = take(&mut b, t0);
    let (_, bytes) = cm_message(&mra[0]);
    let Message::Mra(m) = parse_cm(&bytes) else {
        panic!("an MRA");
    };
    assert_eq!((m.service_timeout, m.local_comm_id), (24, request.id.0));
    // After the accept, the same REQ gets the REP again.
    let b_qpn = new_qp(&mut b, &b_host, QpType::Rc);
    b.cm_accept(t0, NS, request.id, b_qpn, &AcceptParams::default(), &[])
        .unwrap();
    let rep = take(&mut b, t0);
    give(&mut b, t0, &req);
    let again = take(&mut b, t0);
    assert_eq!(cm_message(&again[0]).1, cm_message(&rep[0]).1);
    assert_eq!(b.poll_cm_event(NS), None, "no second connection");
    assert_eq!(b.cm_counters(NS).unwrap().duplicates, 2);
}

#[test]
fn an_mra_extends_the_reqs_timeout_by_its_service_timeout() {
    let ByHand {
        mut a,
        mut b,
        id,
        req,
        ..
    } = by_hand();
    let t0 = Time::ZERO;
    // rdma_cm's REQ wait: 2 × 1024 ms (packet life time 18) + 4096 ms (timeout 20).
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_millis(6144)));
    give(&mut b, t0, &req);
    give(&mut b, t0, &req);
    let mra = take(&mut b, t0);
    let t1 = t0 + Duration::from_millis(10);
    give(&mut a, t1, &mra);
    assert_eq!(a.cm_state(NS, id), Some(CmState::MraReqRcvd));
    // 2^(24-8) ms for the service plus 2^(19-8) ms for the path's ACK timeout.
    assert_eq!(
        a.poll_timeout(),
        Some(t1 + Duration::from_millis(65536 + 2048))
    );
    a.handle_timeout(t1 + Duration::from_millis(6144));
    assert!(
        take(&mut a, t1).is_empty(),
        "no resend before the new deadline"
    );
    let due = a.poll_timeout().unwrap();
    a.handle_timeout(due);
    assert_eq!(take(&mut a, due).len(), 1, "the REQ again");
    assert_eq!(a.cm_counters(NS).unwrap().retransmits, 1);
}

#[test]
fn a_vanished_peer_times_out_after_every_retry() {
    let mut pair = CmPair::new(8, LinkConfig::default());
    pair.net.set_link(A, B, lossy());
    let start = pair.now();
    let (a_id, a_qpn) = pair.connect();
    assert!(pair.run_until(Duration::from_secs(600), |p| p
        .saw(A, &CmEvent::Unreachable(a_id))));
    // 1 + 15 tries, 6144 ms apart.
    let elapsed = pair.now() - start;
    assert_eq!(elapsed, Duration::from_millis(6144 * 16));
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().retransmits, 15);
    assert_eq!(pair.engine(A).cm_state(NS, a_id), None);
    assert_eq!(
        pair.engine(A).query_qp(NS, a_qpn).unwrap().state,
        QpState::Err
    );

    // The passive side gives up on its REP the same way.
    let mut pair = CmPair::new(9, LinkConfig::default());
    pair.net.set_link(B, A, lossy());
    pair.connect();
    assert!(pair.run_until(Duration::from_secs(600), |p| p.events[B]
        .iter()
        .any(|e| matches!(e, CmEvent::Unreachable(_)))));
}

#[test]
fn disconnect_from_either_side_completes_on_both_and_flushes() {
    for (seed, from) in [(10, A), (11, B)] {
        let mut pair = CmPair::new(seed, LinkConfig::default());
        let (a_id, a_qpn, b_id, b_qpn) = pair.establish();
        pair.post_recv(A, a_qpn, 100, 0);
        pair.post_recv(B, b_qpn, 200, 0);
        let (id, other) = if from == A {
            (a_id, b_id)
        } else {
            (b_id, a_id)
        };
        let now = pair.now();
        pair.engine(from).cm_disconnect(now, NS, id, &[]).unwrap();
        let to = 1 - from;
        assert!(pair.run_until(Duration::from_secs(10), |p| p
            .saw(from, &CmEvent::Disconnected(id))
            && p.saw(to, &CmEvent::Disconnected(other))));
        for (index, qpn, wr_id) in [(A, a_qpn, 100), (B, b_qpn, 200)] {
            assert_eq!(
                pair.engine(index).query_qp(NS, qpn).unwrap().state,
                QpState::Err
            );
            let flushed: Vec<_> = pair
                .completions(index)
                .iter()
                .map(|w| (w.wr_id, w.status))
                .collect();
            assert_eq!(flushed, [(wr_id, WcStatus::WrFlushErr)], "side {index}");
        }
        assert!(pair.run_until(Duration::from_secs(10), |p| p
            .saw(A, &CmEvent::TimewaitExit(a_id))
            && p.saw(B, &CmEvent::TimewaitExit(b_id))));
        assert_eq!(pair.engine(A).cm_state(NS, a_id), None);
        assert_eq!(pair.engine(B).cm_state(NS, b_id), None);
    }
}

/// `cycles` connections set up and torn down (alternately from A and B) over a link
/// that loses, duplicates and reorders `rate` of its datagrams; every one completes on
/// both sides and leaves timewait, and no timer is left.
fn connect_disconnect_cycles(seed: u64, rate: f64, cycles: usize) {
    let link = LinkConfig {
        loss: rate,
        duplicate: rate,
        reorder: rate,
        ..LinkConfig::default()
    };
    let mut pair = CmPair::new(seed, link);
    let mut ids = Vec::new();
    for cycle in 0..cycles {
        let (a_id, _, b_id, _) = pair.establish();
        let (from, id, other) = if cycle % 2 == 0 {
            (A, a_id, b_id)
        } else {
            (B, b_id, a_id)
        };
        let now = pair.now();
        pair.engine(from).cm_disconnect(now, NS, id, &[]).unwrap();
        let done = pair.run_until(Duration::from_secs(600), |p| {
            p.saw(from, &CmEvent::Disconnected(id))
                && p.saw(1 - from, &CmEvent::Disconnected(other))
        });
        assert!(done, "seed {seed} cycle {cycle}: {:?}", pair.events);
        ids.push((a_id, b_id));
    }
    let stats = pair.net.stats().links;
    assert!(stats.dropped > 0 && stats.duplicated > 0, "{stats:?}");
    pair.run_until(Duration::from_secs(600), |_| false);
    for (a_id, b_id) in ids {
        assert!(pair.saw(A, &CmEvent::TimewaitExit(a_id)));
        assert!(pair.saw(B, &CmEvent::TimewaitExit(b_id)));
        assert_eq!(pair.engine(A).cm_state(NS, a_id), None);
        assert_eq!(pair.engine(B).cm_state(NS, b_id), None);
    }
    assert_eq!(pair.engine(A).poll_timeout(), None);
    assert_eq!(pair.engine(B).poll_timeout(), None);
}

#[test]
fn fifty_connect_disconnect_cycles_at_one_percent_loss_leave_nothing_stuck() {
    connect_disconnect_cycles(12, 0.01, 50);
}

#[test]
fn connect_disconnect_cycles_at_ten_and_thirty_percent_loss_leave_nothing_stuck() {
    for seed in 20..24 {
        connect_disconnect_cycles(seed, 0.10, 20);
    }
    // Past what the issue asks: at 30% a late copy of an old REQ arrives after its
    // connection entered timewait and makes a new one (as in cm.c), which times out.
    for seed in 100..116 {
        connect_disconnect_cycles(seed, 0.30, 20);
    }
}

#[test]
fn a_req_from_a_still_connected_qp_is_stale() {
    let mut hand = by_hand();
    let request = hand.request();
    let ByHand {
        mut a,
        mut b,
        b_host,
        req,
        ..
    } = hand;
    let t0 = Time::ZERO;
    let b_qpn = new_qp(&mut b, &b_host, QpType::Rc);
    b.cm_accept(t0, NS, request.id, b_qpn, &AcceptParams::default(), &[])
        .unwrap();
    give(&mut a, t0, &take(&mut b, t0));
    give(&mut b, t0, &take(&mut a, t0));
    assert_eq!(b.cm_state(NS, request.id), Some(CmState::Established));
    while b.poll_cm_event(NS).is_some() {}
    // The same CA and QP asks again under a new comm ID: its old connection is stale.
    let mut again = req[0].clone();
    let parsed = packet::parse(&again.payload).unwrap();
    let at = again.payload.len() - parsed.payload.len() - 4 + mad::HEADER_LEN;
    again.payload[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    fix_icrc(&mut again);
    give(&mut b, t0, &[again]);
    let out = take(&mut b, t0);
    let messages: Vec<_> = out.iter().map(|d| cm_message(d).1).collect();
    let Message::Rej(rej) = parse_cm(&messages[0]) else {
        panic!("a REJ first");
    };
    assert_eq!(
        (rej.reason, rej.remote_comm_id, rej.local_comm_id),
        (rej::Reason::StaleConnection, 0x1234_5678, 0)
    );
    assert!(
        matches!(parse_cm(&messages[1]), Message::Dreq(_)),
        "the old one torn down"
    );
    assert_eq!(b.cm_state(NS, request.id), Some(CmState::DreqSent));
    assert_eq!(b.query_qp(NS, b_qpn).unwrap().state, QpState::Err);
}

/// Recomputes a hand-edited datagram's ICRC.
fn fix_icrc(d: &mut Datagram) {
    use ferroce_transport::wire::icrc;
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (d.meta.src, d.meta.dst) else {
        panic!("IPv4");
    };
    let env = icrc::Envelope::ipv4(src, dst, 0, d.meta.src_port);
    icrc::fill(&env, &mut d.payload).unwrap();
}

#[test]
fn a_dreq_for_no_connection_gets_a_drep() {
    let mut pair = CmPair::new(13, LinkConfig::default());
    let (a_id, _, b_id, _) = pair.establish();
    // B's DREQ reaches A, A's DREP is lost.
    pair.net.set_link(A, B, lossy());
    let now = pair.now();
    pair.engine(B).cm_disconnect(now, NS, b_id, &[]).unwrap();
    assert!(pair.run_until(Duration::from_secs(10), |p| p
        .saw(A, &CmEvent::Disconnected(a_id))));
    pair.net.clear_link(A, B);
    // A's timewait (2 s) ends before B's DREQ comes again (6 s): A knows nothing of
    // it and still answers, so B completes.
    assert!(pair.run_until(Duration::from_secs(60), |p| p
        .saw(B, &CmEvent::Disconnected(b_id))));
    assert!(pair.saw(A, &CmEvent::TimewaitExit(a_id)));
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().unmatched, 1);
    // Now A knows nothing of it: a DREQ still gets its DREP (cm.c's cm_issue_drep).
    let (mut lone, _) = engine(A);
    let dreq = wire_cm::Repr::new(
        9,
        Message::Dreq(wire_cm::dreq::Repr {
            local_comm_id: 5,
            remote_comm_id: 6,
            remote_qpn: Qpn::new(0x11),
            private_data: &[],
        }),
    );
    let d = mad_datagram(addr(B), addr(A), &dreq);
    lone.handle_datagram(Time::ZERO, d.meta, &d.payload);
    let out = take(&mut lone, Time::ZERO);
    let (tid, bytes) = cm_message(&out[0]);
    let Message::Drep(drep) = parse_cm(&bytes) else {
        panic!("a DREP");
    };
    assert_eq!((tid, drep.local_comm_id, drep.remote_comm_id), (9, 6, 5));
}

/// A MAD as QP1 of `src` sends it to `dst`.
fn mad_datagram(src: IpAddr, dst: IpAddr, repr: &wire_cm::Repr<'_>) -> Datagram {
    let mut bytes = [0u8; mad::MAD_LEN];
    repr.emit(&mut mad::Packet::new_unchecked(&mut bytes[..]))
        .unwrap();
    raw_mad_datagram(src, dst, &bytes)
}

fn raw_mad_datagram(src: IpAddr, dst: IpAddr, mad_bytes: &[u8; mad::MAD_LEN]) -> Datagram {
    let repr =
        ferroce_transport::engine::cm::gsi_send_headers(ferroce_transport::wire::Psn::new(0));
    let mut payload = vec![0u8; packet::buffer_len(&repr, mad::MAD_LEN).unwrap()];
    let header = repr.emit(&mut payload).unwrap();
    payload[header..header + mad::MAD_LEN].copy_from_slice(mad_bytes);
    let mut d = Datagram {
        meta: ferroce_transport::engine::DatagramMeta {
            src,
            dst,
            src_port: 0xd872,
            ecn: ferroce_transport::engine::Ecn::NotEct,
            ipv4_ident: None,
        },
        payload,
    };
    fix_icrc(&mut d);
    d
}

#[test]
fn other_mads_get_unsupported_or_nothing_and_lap_is_ignored() {
    let (mut b, _) = engine(B);
    // A Get of the performance class: GetResp, status "unsupported method/attribute".
    let mut get = [0u8; mad::MAD_LEN];
    let header = mad::Repr {
        base_version: 1,
        mgmt_class: mad::MgmtClass::Performance,
        class_version: 1,
        method: mad::Method::Get,
        status: 0,
        class_specific: 0,
        transaction_id: 0xabc,
        attribute_id: 0x12,
        attribute_modifier: 0,
    };
    header.emit(&mut mad::Packet::new_unchecked(&mut get[..]));
    let d = raw_mad_datagram(addr(A), addr(B), &get);
    b.handle_datagram(Time::ZERO, d.meta, &d.payload);
    let out = take(&mut b, Time::ZERO);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].meta.dst, addr(A));
    let parsed = packet::parse(&out[0].payload).unwrap();
    let reply = mad::Repr::parse(&mad::Packet::new_checked(parsed.payload).unwrap()).unwrap();
    assert_eq!(
        (reply.method, reply.status, reply.transaction_id),
        (
            mad::Method::GetResp,
            mad::STATUS_UNSUPPORTED_METHOD_ATTRIBUTE,
            0xabc
        )
    );
    // A Send of another class, and a LAP: nothing answers.
    let mut send = get;
    mad::Packet::new_unchecked(&mut send[..]).set_method(mad::Method::Send);
    let d = raw_mad_datagram(addr(A), addr(B), &send);
    b.handle_datagram(Time::ZERO, d.meta, &d.payload);
    let lap = wire_cm::Repr::new(
        1,
        Message::Lap(wire_cm::lap::Repr {
            local_comm_id: 1,
            remote_comm_id: 2,
            remote_qpn: Qpn::new(0x11),
            remote_cm_response_timeout: 20,
            alternate_path: Default::default(),
            private_data: &[],
        }),
    );
    let d = mad_datagram(addr(A), addr(B), &lap);
    b.handle_datagram(Time::ZERO, d.meta, &d.payload);
    assert!(take(&mut b, Time::ZERO).is_empty());
    assert_eq!(b.cm_counters(NS).unwrap().unsupported, 3);
}

#[test]
fn sidr_resolves_a_ud_service_to_its_qp_and_qkey() {
    let mut pair = CmPair::new(14, LinkConfig::default());
    let host = pair.hosts[B];
    let ud = new_qp(pair.engine(B), &host, QpType::Ud);
    let to_init = QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port_num: Some(1),
        qkey: Some(0x0123_4567),
        ..QpAttr::default()
    };
    pair.engine(B).modify_qp(NS, ud, &to_init).unwrap();
    let udp = ServiceId::rdma_ip(PortSpace::Udp, 7174);
    pair.engine(B).cm_listen_ud(NS, udp, ud).unwrap();
    let now = pair.now();
    let params = ConnectParams::default();
    let id = pair
        .engine(A)
        .cm_resolve_service(now, NS, to(udp), &params, &[])
        .unwrap();
    let unknown = pair
        .engine(A)
        .cm_resolve_service(
            now,
            NS,
            to(ServiceId::rdma_ip(PortSpace::Udp, 1)),
            &params,
            &[],
        )
        .unwrap();
    let rc = pair
        .engine(A)
        .cm_resolve_service(now, NS, to(service()), &params, &[])
        .unwrap();
    assert!(pair.run_until(Duration::from_secs(1), |p| p.events[A].len() == 3));
    let status_of = |want: CommId| {
        pair.events[A]
            .iter()
            .find_map(|e| match e {
                CmEvent::ServiceResolved {
                    id,
                    status,
                    qpn,
                    qkey,
                    ..
                } if *id == want => Some((*status, *qpn, *qkey)),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(status_of(id), (sidr_rep::Status::Success, ud, 0x0123_4567));
    assert_eq!(status_of(unknown).0, sidr_rep::Status::Unsupported);
    assert_eq!(status_of(rc).0, sidr_rep::Status::Reject);

    // Nobody answering: every retry, then Unreachable.
    pair.net.set_link(A, B, lossy());
    let now = pair.now();
    let id = pair
        .engine(A)
        .cm_resolve_service(now, NS, to(udp), &params, &[])
        .unwrap();
    assert!(pair.run_until(Duration::from_secs(600), |p| p
        .saw(A, &CmEvent::Unreachable(id))));
    assert_eq!(pair.now() - now, Duration::from_millis(4096 * 16));
}

#[test]
fn a_raw_gsi_qp_and_the_cm_exclude_each_other() {
    let (mut b, host) = engine(B);
    b.cm_listen(NS, service(), 1).unwrap();
    let init = QpInitAttr {
        qp_type: QpType::Ud,
        pd: host.pd,
        send_cq: host.cq,
        recv_cq: host.cq,
        srq: None,
        cap: QpCap {
            max_send_wr: 4,
            max_recv_wr: 4,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
        sq_sig_all: true,
    };
    assert!(b.create_gsi_qp(NS, init).is_err());
    let (mut c, host) = engine(A);
    let init = QpInitAttr {
        pd: host.pd,
        send_cq: host.cq,
        recv_cq: host.cq,
        ..init
    };
    c.create_gsi_qp(NS, init).unwrap();
    assert!(c.cm_listen(NS, service(), 1).is_err());
}

#[test]
fn cm_queues_are_bounded_and_reported() {
    use ferroce_transport::engine::QueueKind;
    let (mut b, _) = engine(B);
    let listener = b.cm_listen(NS, service(), 2).unwrap();
    let (mut a, host) = engine(A);
    for _ in 0..3 {
        let qpn = new_qp(&mut a, &host, QpType::Rc);
        a.cm_connect(
            Time::ZERO,
            NS,
            qpn,
            to(service()),
            &ConnectParams::default(),
            &[],
        )
        .unwrap();
    }
    give(&mut b, Time::ZERO, &take(&mut a, Time::ZERO));
    // Two wait for the consumer; the third REQ is dropped unanswered.
    assert_eq!(b.cm_counters(NS).unwrap().backlog_full, 1);
    let depths = b.queue_depths(NS).unwrap();
    let depth = |queue| {
        depths
            .iter()
            .find(|d| d.queue == queue)
            .map(|d| (d.len, d.bound))
    };
    assert_eq!(
        depth(QueueKind::ListenBacklog(listener)),
        Some((2, Some(2)))
    );
    let events = depth(QueueKind::CmEvents).unwrap();
    assert_eq!(events.0, 2);
    assert!(events.1.is_some());
    assert_eq!(depth(QueueKind::CmOutbox), Some((0, Some(1024))));
}

#[test]
fn an_abandoned_connect_rejects_with_timeout_and_the_ca_guid() {
    let mut hand = by_hand();
    let request = hand.request();
    let ByHand {
        mut a, mut b, id, ..
    } = hand;
    let t0 = Time::ZERO;
    // A gives up before any answer: a REJ "timeout" with its CA GUID as ARI, which
    // B matches by that GUID and A's comm ID (cm.c's cm_acquire_rejected_id).
    a.cm_disconnect(t0, NS, id, &[]).unwrap();
    assert_eq!(a.cm_state(NS, id), None);
    let rej = take(&mut a, t0);
    let (_, bytes) = cm_message(&rej[0]);
    let Message::Rej(m) = parse_cm(&bytes) else {
        panic!("a REJ");
    };
    let guid = a.cm_ca_guid(NS).unwrap().to_be_bytes();
    assert_eq!((m.reason, m.ari), (rej::Reason::Timeout, &guid[..]));
    give(&mut b, t0, &rej);
    assert_eq!(b.cm_state(NS, request.id), None);
    assert!(matches!(
        b.poll_cm_event(NS),
        Some(CmEvent::Rejected { id, reason: rej::Reason::Timeout, .. }) if id == request.id
    ));
}

#[test]
fn a_uc_qp_connects_through_the_cm_too() {
    let mut hand = by_hand_of(QpType::Uc);
    let request = hand.request();
    assert_eq!(request.qp_type, QpType::Uc);
    let ByHand {
        mut a,
        mut b,
        b_host,
        id,
        ..
    } = hand;
    let t0 = Time::ZERO;
    // An RC QP does not take a UC request.
    let rc = new_qp(&mut b, &b_host, QpType::Rc);
    assert!(b
        .cm_accept(t0, NS, request.id, rc, &AcceptParams::default(), &[])
        .is_err());
    let uc = new_qp(&mut b, &b_host, QpType::Uc);
    b.cm_accept(t0, NS, request.id, uc, &AcceptParams::default(), &[])
        .unwrap();
    give(&mut a, t0, &take(&mut b, t0));
    give(&mut b, t0, &take(&mut a, t0));
    assert_eq!(a.cm_state(NS, id), Some(CmState::Established));
    assert_eq!(b.cm_state(NS, request.id), Some(CmState::Established));
    assert_eq!(b.query_qp(NS, uc).unwrap().state, QpState::Rts);
}

#[test]
fn disconnects_that_cross_complete_once_on_each_side() {
    let mut pair = CmPair::new(15, LinkConfig::default());
    let (a_id, _, b_id, _) = pair.establish();
    let now = pair.now();
    pair.engine(A).cm_disconnect(now, NS, a_id, &[]).unwrap();
    pair.engine(B).cm_disconnect(now, NS, b_id, &[]).unwrap();
    // A second call while disconnecting changes nothing.
    pair.engine(A).cm_disconnect(now, NS, a_id, &[]).unwrap();
    assert!(pair.run_until(Duration::from_secs(10), |p| p
        .saw(A, &CmEvent::TimewaitExit(a_id))
        && p.saw(B, &CmEvent::TimewaitExit(b_id))));
    for (index, id) in [(A, a_id), (B, b_id)] {
        let disconnected = pair.events[index]
            .iter()
            .filter(|e| **e == CmEvent::Disconnected(id))
            .count();
        assert_eq!(disconnected, 1, "side {index}: {:?}", pair.events[index]);
    }
    // Neither waited for a DREQ timeout: each answered the other's DREQ.
    assert_eq!(pair.engine(A).cm_counters(NS).unwrap().retransmits, 0);
    assert_eq!(pair.engine(B).cm_counters(NS).unwrap().retransmits, 0);
    assert!(pair.now() - now < Duration::from_secs(3));
}

#[test]
fn read_depths_cross_over_as_cm_c_sets_them() {
    let (mut a, a_host) = engine(A);
    let (mut b, b_host) = engine(B);
    b.cm_listen(NS, service(), 4).unwrap();
    let a_qpn = new_qp(&mut a, &a_host, QpType::Rc);
    let t0 = Time::ZERO;
    let asks = ConnectParams {
        responder_resources: 4,
        initiator_depth: 2,
        rnr_retry_count: 3,
        retry_count: 5,
        min_rnr_timer: 12,
        ..ConnectParams::default()
    };
    a.cm_connect(t0, NS, a_qpn, to(service()), &asks, &[])
        .unwrap();
    give(&mut b, t0, &take(&mut a, t0));
    let Some(CmEvent::ConnectRequest(request)) = b.poll_cm_event(NS) else {
        panic!("a request");
    };
    // B's view: A will issue 2 READs at once and keeps 4 resources.
    assert_eq!(
        (request.responder_resources, request.initiator_depth),
        (2, 4)
    );
    let b_qpn = new_qp(&mut b, &b_host, QpType::Rc);
    let answers = AcceptParams {
        responder_resources: Some(8),
        // More than A keeps resources for: held to A's 4.
        initiator_depth: Some(16),
        rnr_retry_count: 6,
        ..AcceptParams::default()
    };
    b.cm_accept(t0, NS, request.id, b_qpn, &answers, &[])
        .unwrap();
    give(&mut a, t0, &take(&mut b, t0));
    let a_attr = a.query_qp(NS, a_qpn).unwrap().attr;
    let b_attr = b.query_qp(NS, b_qpn).unwrap().attr;
    assert_eq!(
        (b_attr.max_dest_rd_atomic, b_attr.max_rd_atomic),
        (Some(8), Some(4))
    );
    // The active side takes the REP's numbers, crossed: it may issue as many as B
    // keeps, and keeps as many as B issues.
    assert_eq!(
        (a_attr.max_rd_atomic, a_attr.max_dest_rd_atomic),
        (Some(8), Some(4))
    );
    // Retries: the REQ's for both; RNR retries: each side uses what the other asked.
    assert_eq!((a_attr.retry_cnt, b_attr.retry_cnt), (Some(5), Some(5)));
    assert_eq!((a_attr.rnr_retry, b_attr.rnr_retry), (Some(6), Some(3)));
    assert_eq!(a_attr.min_rnr_timer, Some(12));
}

#[test]
fn bad_connect_arguments_are_refused_before_the_qp_moves() {
    let (mut a, host) = engine(A);
    let qpn = new_qp(&mut a, &host, QpType::Rc);
    let t0 = Time::ZERO;
    let bad = ConnectParams {
        retry_count: 8,
        ..ConnectParams::default()
    };
    assert!(a.cm_connect(t0, NS, qpn, to(service()), &bad, &[]).is_err());
    let long = [0u8; wire_cm::req::PRIVATE_DATA_LEN + 1];
    let params = ConnectParams::default();
    assert!(a
        .cm_connect(t0, NS, qpn, to(service()), &params, &long)
        .is_err());
    let v6 = ServiceAddress {
        address: "fe80::1".parse().unwrap(),
        service_id: service(),
    };
    assert!(
        a.cm_connect(t0, NS, qpn, v6, &params, &[]).is_err(),
        "no IPv6 GID"
    );
    assert_eq!(a.query_qp(NS, qpn).unwrap().state, QpState::Reset);
    let ud = new_qp(&mut a, &host, QpType::Ud);
    assert!(a
        .cm_connect(t0, NS, ud, to(service()), &params, &[])
        .is_err());
    assert_eq!(a.query_qp(NS, ud).unwrap().state, QpState::Reset);
    assert!(take(&mut a, t0).is_empty());
}

#[test]
fn an_ipv6_pair_connects_with_its_own_gids_in_the_req() {
    let v6 =
        |n: u16| -> IpAddr { IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)) };
    let make = |index: usize| {
        let config = EngineConfig {
            default_gids: vec![v6(1 + index as u16)],
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(config, 0x66 + index as u64);
        let pd = engine.alloc_pd(NS).unwrap();
        let cq = engine.create_cq(NS, 64).unwrap();
        let mr = engine.reg_mr(NS, pd, 4096, all_access()).unwrap();
        let host = Host { pd, cq, mr };
        let qpn = new_qp(&mut engine, &host, QpType::Rc);
        (engine, qpn)
    };
    let (mut a, a_qpn) = make(A);
    let (mut b, b_qpn) = make(B);
    b.cm_listen(NS, service(), 1).unwrap();
    let t0 = Time::ZERO;
    let to_b = ServiceAddress {
        address: v6(2),
        service_id: service(),
    };
    let source = std::net::SocketAddr::new(v6(1), 40000);
    let data = rdma_ip_private_data(source, v6(2), &[]).unwrap();
    let id = a
        .cm_connect(t0, NS, a_qpn, to_b, &ConnectParams::default(), &data)
        .unwrap();
    let req = take(&mut a, t0);
    let (_, bytes) = cm_message(&req[0]);
    let Message::Req(m) = parse_cm(&bytes) else {
        panic!("a REQ");
    };
    assert_eq!(
        (
            m.primary_path.local_gid.ip(),
            m.primary_path.remote_gid.ip()
        ),
        (v6(1), v6(2))
    );
    give(&mut b, t0, &req);
    let Some(CmEvent::ConnectRequest(request)) = b.poll_cm_event(NS) else {
        panic!("a request");
    };
    assert_eq!(request.cma.unwrap().source(), source);
    b.cm_accept(t0, NS, request.id, b_qpn, &AcceptParams::default(), &[])
        .unwrap();
    give(&mut a, t0, &take(&mut b, t0));
    give(&mut b, t0, &take(&mut a, t0));
    assert_eq!(a.cm_state(NS, id), Some(CmState::Established));
    assert_eq!(b.cm_state(NS, request.id), Some(CmState::Established));
}

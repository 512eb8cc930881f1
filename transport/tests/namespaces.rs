#![allow(clippy::unwrap_used)]
//! Namespaces: identifiers allocated per namespace, routing by destination address, and
//! nothing reachable across namespaces.

mod common;

use std::net::IpAddr;

use common::*;
use ferroce_transport::engine::{
    AccessFlags, Engine, EngineConfig, NamespaceId, QpType, SendOp, VerbsError, WcStatus,
};
use ferroce_transport::wire::Rkey;

const TENANT_A: NamespaceId = NamespaceId(1);
const TENANT_B: NamespaceId = NamespaceId(2);

struct Tenant {
    ns: NamespaceId,
    addr: IpAddr,
    mr: ferroce_transport::engine::MemoryRegion,
    qpn: ferroce_transport::wire::Qpn,
    cq: ferroce_transport::engine::CompletionQueueId,
    pd: ferroce_transport::engine::ProtectionDomain,
}

fn tenant(engine: &mut Engine, ns: NamespaceId, addr: &str) -> Tenant {
    let addr: IpAddr = addr.parse().unwrap();
    engine.create_namespace(ns, &[addr]).unwrap();
    let pd = engine.alloc_pd(ns).unwrap();
    let cq = engine.create_cq(ns, 64).unwrap();
    let mr = engine.reg_mr(ns, pd, 4096, all_access()).unwrap();
    let qpn = engine.create_qp(ns, init_attr(QpType::Rc, pd, cq)).unwrap();
    Tenant {
        ns,
        addr,
        mr,
        qpn,
        cq,
        pd,
    }
}

#[test]
fn same_identifiers_in_two_namespaces_stay_apart() {
    let mut host = Engine::new(EngineConfig::default(), 99);
    let a = tenant(&mut host, TENANT_A, "10.1.0.1");
    let mut b = tenant(&mut host, TENANT_B, "10.2.0.1");
    // Identifiers are per namespace: both got the first QPN.
    assert_eq!(a.qpn, b.qpn);
    assert_eq!(a.qpn.value(), 0x11);
    // Keys come from a per-namespace generator; re-register in B until it holds the
    // very rkey A holds (index and key byte), which a shared key space would forbid.
    let pd_b = b.pd;
    let mut tries = 0;
    while b.mr.rkey != a.mr.rkey {
        host.dereg_mr(TENANT_B, b.mr.lkey).unwrap();
        b.mr = host.reg_mr(TENANT_B, pd_b, 4096, all_access()).unwrap();
        tries += 1;
        assert!(tries < 10_000, "the key byte never repeated");
    }
    assert_ne!(a.mr.addr, b.mr.addr, "MR addresses differ per registration");

    // A remote peer with one QP towards each tenant.
    let mut peer = Side::new("10.9.0.1".parse().unwrap(), 5, QpType::Rc, all_access());
    let second = peer
        .engine
        .create_qp(NS, init_attr(QpType::Rc, peer.pd, peer.cq))
        .unwrap();
    let p = Params::default();
    connect(
        &mut peer.engine,
        NS,
        peer.qpn,
        a.addr,
        a.qpn,
        QpType::Rc,
        &p,
    );
    connect(&mut peer.engine, NS, second, b.addr, b.qpn, QpType::Rc, &p);
    connect(&mut host, a.ns, a.qpn, peer.addr, peer.qpn, QpType::Rc, &p);
    connect(&mut host, b.ns, b.qpn, peer.addr, second, QpType::Rc, &p);

    peer.write(0, b"for tenant A");
    peer.write(100, b"for tenant B");
    let write = |addr: u64, rkey: Rkey| SendOp::RdmaWrite {
        remote_addr: addr,
        rkey,
    };
    peer.post_send(send_wr(
        1,
        write(a.mr.addr, a.mr.rkey),
        vec![peer.sge(0, 12)],
    ));
    peer.engine
        .post_send(
            NS,
            second,
            send_wr(2, write(b.mr.addr, b.mr.rkey), vec![peer.sge(100, 12)]),
        )
        .unwrap();
    let peer_addr = peer.addr;
    pump(&mut [
        (&mut peer.engine, vec![peer_addr]),
        (&mut host, vec![a.addr, b.addr]),
    ]);
    let statuses: Vec<_> = peer.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(statuses, [(1, WcStatus::Success), (2, WcStatus::Success)]);
    let mut buf = [0u8; 12];
    host.mr_read(TENANT_A, a.mr.lkey, a.mr.addr, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"for tenant A");
    host.mr_read(TENANT_B, b.mr.lkey, b.mr.addr, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"for tenant B");

    // B's address with A's address for the QP's peer: tenant B's QP is connected to the
    // peer's second QP, so a WRITE from the first QP sent to B's address is dropped even
    // though QPN and rkey match: the connected QP only hears its own peer QP's address,
    // and the packet names B's QPN only inside B's namespace.
    let before = *host.counters();
    let mut stray = Side::new("10.9.0.2".parse().unwrap(), 6, QpType::Rc, all_access());
    connect(
        &mut stray.engine,
        NS,
        stray.qpn,
        b.addr,
        b.qpn,
        QpType::Rc,
        &p,
    );
    stray.write(0, b"intruder");
    stray.post_send(send_wr(
        3,
        write(b.mr.addr, b.mr.rkey),
        vec![stray.sge(0, 8)],
    ));
    let stray_addr = stray.addr;
    pump(&mut [
        (&mut stray.engine, vec![stray_addr]),
        (&mut host, vec![a.addr, b.addr]),
    ]);
    assert_eq!(
        host.counters().drops.address_mismatch,
        before.drops.address_mismatch + 1
    );
    host.mr_read(TENANT_B, b.mr.lkey, b.mr.addr, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"for tenant B");
}

#[test]
fn verbs_handles_do_not_cross_namespaces() {
    let mut host = Engine::new(EngineConfig::default(), 1);
    let a = tenant(&mut host, TENANT_A, "10.1.0.1");
    host.create_namespace(TENANT_B, &["10.2.0.1".parse().unwrap()])
        .unwrap();
    // B has no QP, CQ or MR yet: A's identifiers mean nothing there.
    assert_eq!(
        host.query_qp(TENANT_B, a.qpn).err(),
        Some(VerbsError::NotFound("QP"))
    );
    assert_eq!(
        host.poll_cq(TENANT_B, a.cq, 1).err(),
        Some(VerbsError::NotFound("CQ"))
    );
    let mut buf = [0u8; 4];
    assert!(host
        .mr_read(TENANT_B, a.mr.lkey, a.mr.addr, &mut buf)
        .is_err());
    assert_eq!(
        host.dereg_mr(TENANT_B, a.mr.lkey),
        Err(VerbsError::NotFound("MR"))
    );
    // A GID belongs to one namespace; a namespace id is used once.
    assert_eq!(
        host.create_namespace(NamespaceId(3), &["10.1.0.1".parse().unwrap()]),
        Err(VerbsError::AlreadyExists("GID owned by another namespace"))
    );
    assert!(host.create_namespace(TENANT_A, &[]).is_err());
    // IPv4-mapped IPv6 GIDs are the IPv4 address.
    assert!(host
        .create_namespace(NamespaceId(4), &["::ffff:10.1.0.1".parse().unwrap()])
        .is_err());
    // A namespace's PD guards its MRs even inside it.
    let other_pd = host.alloc_pd(TENANT_A).unwrap();
    let mr2 = host
        .reg_mr(TENANT_A, other_pd, 64, AccessFlags::LOCAL_WRITE)
        .unwrap();
    assert_ne!(mr2.lkey, a.mr.lkey);
    assert_eq!(
        host.dealloc_pd(TENANT_A, other_pd),
        Err(VerbsError::Busy("PD in use"))
    );
    host.dereg_mr(TENANT_A, mr2.lkey).unwrap();
    assert_eq!(host.dealloc_pd(TENANT_A, other_pd), Ok(()));
    // Destroying a namespace frees its GIDs.
    host.destroy_namespace(TENANT_A).unwrap();
    host.create_namespace(NamespaceId(5), &["10.1.0.1".parse().unwrap()])
        .unwrap();
}

#[test]
fn packets_for_unknown_addresses_or_qps_are_dropped() {
    let mut host = Engine::new(EngineConfig::default(), 1);
    let a = tenant(&mut host, TENANT_A, "10.1.0.1");
    let mut peer = Side::new("10.9.0.1".parse().unwrap(), 5, QpType::Rc, all_access());
    let p = Params::default();
    // Towards a QPN A does not have.
    connect(
        &mut peer.engine,
        NS,
        peer.qpn,
        a.addr,
        ferroce_transport::wire::Qpn::new(0x99),
        QpType::Rc,
        &p,
    );
    peer.post_send(send_wr(1, SendOp::Send, vec![]));
    let d = peer
        .engine
        .poll_transmit(ferroce_transport::engine::Time::ZERO)
        .unwrap();
    host.handle_datagram(ferroce_transport::engine::Time::ZERO, d.meta, &d.payload);
    assert_eq!(host.counters().drops.unknown_qp, 1);
    // To an address no namespace owns (a correct ICRC for that address).
    let mut other = Side::new("10.9.0.3".parse().unwrap(), 5, QpType::Rc, all_access());
    connect(
        &mut other.engine,
        NS,
        other.qpn,
        "10.3.0.1".parse().unwrap(),
        a.qpn,
        QpType::Rc,
        &p,
    );
    other.post_send(send_wr(1, SendOp::Send, vec![]));
    let d = other
        .engine
        .poll_transmit(ferroce_transport::engine::Time::ZERO)
        .unwrap();
    host.handle_datagram(ferroce_transport::engine::Time::ZERO, d.meta, &d.payload);
    assert_eq!(host.counters().drops.unknown_address, 1);
}

#[test]
fn limits_are_reported_and_enforced() {
    let mut config = EngineConfig::default();
    config.limits.max_qp = 2;
    config.limits.max_mr = 1;
    config.limits.max_mr_size = 4096;
    config.limits.max_cqe = 8;
    config.limits.max_qp_wr = 4;
    config.limits.max_sge = 2;
    config.limits.max_inline_data = 16;
    let mut host = Engine::new(config.clone(), 1);
    assert_eq!(host.query_device().limits, config.limits);
    host.create_namespace(TENANT_A, &["10.1.0.1".parse().unwrap()])
        .unwrap();
    let pd = host.alloc_pd(TENANT_A).unwrap();
    assert_eq!(
        host.reg_mr(TENANT_A, pd, 4097, AccessFlags::LOCAL_WRITE)
            .err(),
        Some(VerbsError::LimitExceeded("max_mr_size"))
    );
    host.reg_mr(TENANT_A, pd, 4096, AccessFlags::LOCAL_WRITE)
        .unwrap();
    assert_eq!(
        host.reg_mr(TENANT_A, pd, 1, AccessFlags::NONE).err(),
        Some(VerbsError::LimitExceeded("max_mr"))
    );
    assert!(
        host.reg_mr(TENANT_A, pd, 1, AccessFlags::REMOTE_WRITE)
            .is_err(),
        "needs LOCAL_WRITE"
    );
    assert_eq!(
        host.create_cq(TENANT_A, 9).err(),
        Some(VerbsError::LimitExceeded("max_cqe"))
    );
    let cq = host.create_cq(TENANT_A, 8).unwrap();
    let mut init = init_attr(QpType::Rc, pd, cq);
    init.cap.max_send_wr = 5;
    assert_eq!(
        host.create_qp(TENANT_A, init).err(),
        Some(VerbsError::LimitExceeded("max_qp_wr"))
    );
    init.cap.max_send_wr = 4;
    init.cap.max_recv_wr = 4;
    init.cap.max_send_sge = 3;
    assert_eq!(
        host.create_qp(TENANT_A, init).err(),
        Some(VerbsError::LimitExceeded("max_sge"))
    );
    init.cap.max_send_sge = 2;
    init.cap.max_recv_sge = 2;
    init.cap.max_inline_data = 17;
    assert_eq!(
        host.create_qp(TENANT_A, init).err(),
        Some(VerbsError::LimitExceeded("max_inline_data"))
    );
    init.cap.max_inline_data = 16;
    host.create_qp(TENANT_A, init).unwrap();
    host.create_qp(TENANT_A, init).unwrap();
    assert_eq!(
        host.create_qp(TENANT_A, init).err(),
        Some(VerbsError::LimitExceeded("max_qp"))
    );
    // Limits are per namespace: another tenant has its own two QPs.
    host.create_namespace(TENANT_B, &["10.2.0.1".parse().unwrap()])
        .unwrap();
    let pd_b = host.alloc_pd(TENANT_B).unwrap();
    let cq_b = host.create_cq(TENANT_B, 8).unwrap();
    let mut init_b = init;
    init_b.pd = pd_b;
    init_b.send_cq = cq_b;
    init_b.recv_cq = cq_b;
    host.create_qp(TENANT_B, init_b).unwrap();
    // In use: the CQ cannot go.
    assert_eq!(
        host.destroy_cq(TENANT_A, cq),
        Err(VerbsError::Busy("CQ in use"))
    );
}

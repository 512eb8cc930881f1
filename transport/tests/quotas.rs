#![allow(clippy::unwrap_used)]
//! Per-namespace quotas: each resource stops at its quota with a typed error before
//! anything is allocated, frees its share when destroyed, and binds only its own
//! namespace; the default namespace has none.

use ferroce_transport::engine::{
    AccessFlags, Engine, EngineConfig, NamespaceId, QpCap, QpInitAttr, QpType, QuotaResource,
    Quotas, SrqAttr, Usage, VerbsError,
};

const TENANT: NamespaceId = NamespaceId(3);
const OTHER: NamespaceId = NamespaceId(4);

fn engine_with(quotas: Quotas) -> Engine {
    let mut engine = Engine::new(EngineConfig::default(), 1);
    for (ns, gid) in [(TENANT, "10.0.3.1"), (OTHER, "10.0.4.1")] {
        engine
            .create_namespace(ns, &[gid.parse().unwrap()])
            .unwrap();
    }
    engine.set_quotas(TENANT, quotas).unwrap();
    engine
}

fn exceeded(resource: QuotaResource, limit: u64) -> VerbsError {
    VerbsError::QuotaExceeded { resource, limit }
}

fn qp_init(
    engine: &mut Engine,
    ns: NamespaceId,
    send: u32,
    recv: u32,
) -> (QpInitAttr, ferroce_transport::engine::ProtectionDomain) {
    let pd = engine.alloc_pd(ns).unwrap();
    let cq = engine.create_cq(ns, 16).unwrap();
    let init = QpInitAttr {
        qp_type: QpType::Rc,
        pd,
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        cap: QpCap {
            max_send_wr: send,
            max_recv_wr: recv,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
        sq_sig_all: false,
    };
    (init, pd)
}

#[test]
fn the_default_namespace_has_no_quota() {
    let engine = Engine::new(EngineConfig::default(), 1);
    assert_eq!(engine.quotas(NamespaceId::DEFAULT), Ok(Quotas::UNLIMITED));
    assert_eq!(engine.usage(NamespaceId::DEFAULT), Ok(Usage::default()));
}

#[test]
fn qps() {
    let mut engine = engine_with(Quotas {
        qps: Some(2),
        ..Quotas::UNLIMITED
    });
    let (init, _) = qp_init(&mut engine, TENANT, 4, 4);
    let first = engine.create_qp(TENANT, init).unwrap();
    engine.create_qp(TENANT, init).unwrap();
    assert_eq!(
        engine.create_qp(TENANT, init),
        Err(exceeded(QuotaResource::Qps, 2))
    );
    engine.destroy_qp(TENANT, first).unwrap();
    engine.create_qp(TENANT, init).unwrap();
    // Another namespace is not bound by it.
    let (other, _) = qp_init(&mut engine, OTHER, 4, 4);
    for _ in 0..5 {
        engine.create_qp(OTHER, other).unwrap();
    }
    assert_eq!(engine.usage(TENANT).unwrap().qps, 2);
}

#[test]
fn cqs() {
    let mut engine = engine_with(Quotas {
        cqs: Some(3),
        ..Quotas::UNLIMITED
    });
    let cqs: Vec<_> = (0..3)
        .map(|_| engine.create_cq(TENANT, 8).unwrap())
        .collect();
    assert_eq!(
        engine.create_cq(TENANT, 8),
        Err(exceeded(QuotaResource::Cqs, 3))
    );
    engine.destroy_cq(TENANT, cqs[0]).unwrap();
    engine.create_cq(TENANT, 8).unwrap();
}

#[test]
fn srqs() {
    let mut engine = engine_with(Quotas {
        srqs: Some(1),
        ..Quotas::UNLIMITED
    });
    let pd = engine.alloc_pd(TENANT).unwrap();
    let attr = SrqAttr {
        max_wr: 16,
        max_sge: 1,
        srq_limit: 0,
    };
    let srq = engine.create_srq(TENANT, pd, attr).unwrap();
    assert_eq!(
        engine.create_srq(TENANT, pd, attr),
        Err(exceeded(QuotaResource::Srqs, 1))
    );
    engine.destroy_srq(TENANT, srq).unwrap();
    engine.create_srq(TENANT, pd, attr).unwrap();
}

#[test]
fn mrs() {
    let mut engine = engine_with(Quotas {
        mrs: Some(2),
        ..Quotas::UNLIMITED
    });
    let pd = engine.alloc_pd(TENANT).unwrap();
    let first = engine.reg_mr(TENANT, pd, 64, AccessFlags::NONE).unwrap();
    engine
        .reg_mr_backed(TENANT, pd, Box::new(vec![0u8; 64]), AccessFlags::NONE)
        .unwrap();
    assert_eq!(
        engine.reg_mr(TENANT, pd, 64, AccessFlags::NONE),
        Err(exceeded(QuotaResource::Mrs, 2))
    );
    assert_eq!(
        engine.reg_mr_backed(TENANT, pd, Box::new(vec![0u8; 64]), AccessFlags::NONE),
        Err(exceeded(QuotaResource::Mrs, 2))
    );
    engine.dereg_mr(TENANT, first.lkey).unwrap();
    engine.reg_mr(TENANT, pd, 64, AccessFlags::NONE).unwrap();
}

/// Refused before the bytes are allocated: asking for 1 GiB (the device's largest
/// region) over a 1 MiB quota costs nothing, however often it is asked.
#[test]
fn registered_bytes() {
    const MIB: u64 = 1 << 20;
    let mut engine = engine_with(Quotas {
        registered_bytes: Some(MIB),
        ..Quotas::UNLIMITED
    });
    let pd = engine.alloc_pd(TENANT).unwrap();
    let big = engine
        .reg_mr(TENANT, pd, MIB - 4096, AccessFlags::NONE)
        .unwrap();
    engine.reg_mr(TENANT, pd, 4096, AccessFlags::NONE).unwrap();
    assert_eq!(engine.usage(TENANT).unwrap().registered_bytes, MIB);
    assert_eq!(
        engine.reg_mr(TENANT, pd, 1, AccessFlags::NONE),
        Err(exceeded(QuotaResource::RegisteredBytes, MIB))
    );
    for _ in 0..1000 {
        assert_eq!(
            engine.reg_mr(TENANT, pd, 1 << 30, AccessFlags::NONE),
            Err(exceeded(QuotaResource::RegisteredBytes, MIB))
        );
    }
    engine.dereg_mr(TENANT, big.lkey).unwrap();
    assert_eq!(engine.usage(TENANT).unwrap().registered_bytes, 4096);
    engine
        .reg_mr_backed(TENANT, pd, Box::new(vec![0u8; 8192]), AccessFlags::NONE)
        .unwrap();
}

/// Work-queue entries of QPs and SRQs together; a QP on an SRQ has no receive queue.
#[test]
fn work_requests() {
    let mut engine = engine_with(Quotas {
        work_requests: Some(600),
        ..Quotas::UNLIMITED
    });
    let (init, pd) = qp_init(&mut engine, TENANT, 256, 256);
    let qp = engine.create_qp(TENANT, init).unwrap();
    let srq_attr = |max_wr| SrqAttr {
        max_wr,
        max_sge: 1,
        srq_limit: 0,
    };
    assert_eq!(
        engine.create_srq(TENANT, pd, srq_attr(100)),
        Err(exceeded(QuotaResource::WorkRequests, 600))
    );
    let srq = engine.create_srq(TENANT, pd, srq_attr(80)).unwrap();
    assert_eq!(engine.usage(TENANT).unwrap().work_requests, 592);
    let mut on_srq = init;
    on_srq.srq = Some(srq);
    on_srq.cap.max_send_wr = 8;
    on_srq.cap.max_recv_wr = 1000; // Not counted: it receives from the SRQ.
    let small = engine.create_qp(TENANT, on_srq).unwrap();
    assert_eq!(engine.usage(TENANT).unwrap().work_requests, 600);
    assert_eq!(
        engine.create_qp(TENANT, on_srq),
        Err(exceeded(QuotaResource::WorkRequests, 600))
    );
    engine.destroy_qp(TENANT, qp).unwrap();
    engine.destroy_qp(TENANT, small).unwrap();
    engine.destroy_srq(TENANT, srq).unwrap();
    assert_eq!(engine.usage(TENANT).unwrap().work_requests, 0);
    engine.create_qp(TENANT, init).unwrap();
}

#[test]
fn the_error_says_what_and_how_much() {
    let error = exceeded(QuotaResource::RegisteredBytes, 4096);
    assert_eq!(
        error.to_string(),
        "quota exceeded: at most 4096 registered bytes in this namespace"
    );
}

//! The control path: one command through a `Device` and back, the cost a verbs control
//! call has on top of the engine's own work. Embedded, a command is queued as work and
//! run on the caller's thread when the engine is free, and its reply comes back through
//! a one-slot channel; the daemon backend (issue 13) will add a socket round trip here.
//!
//! - `control/embedded/query_qp`: `QueuePair::query` (a `QueryQp` command with the
//!   largest common reply, `QpInfo`).
//! - `control/embedded/reg_dereg_mr_4k`: `reg_mr` of 4 KiB and its drop (`RegMr`, then
//!   `DeregMr`).
//! - `control/codec/modify_qp`: encoding and decoding an RTR `ModifyQp` message and its
//!   `Done` reply, what each command will cost the daemon path in CPU.

use criterion::{criterion_group, criterion_main, Criterion};
use ferroce::{AccessFlags, Device, DeviceConfig, PathMtu, QpInitAttributes, QpType};
use ferroce_transport::control::{Command, Reply};
use ferroce_transport::engine::{AddressVector, QpAttr, QpState};
use ferroce_transport::wire::{Psn, Qpn};

fn embedded(c: &mut Criterion) {
    let address = "127.0.0.44".parse().expect("literal");
    let device = Device::open(DeviceConfig::with_address(address)).expect("bind 127.0.0.44");
    let pd = device.alloc_pd().expect("a PD");
    let cq = device.create_cq(16, None).expect("a CQ");
    let qp = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .expect("a QP");
    let mut group = c.benchmark_group("control/embedded");
    group.bench_function("query_qp", |b| b.iter(|| qp.query().expect("query")));
    group.bench_function("reg_dereg_mr_4k", |b| {
        b.iter(|| pd.reg_mr(4096, AccessFlags::LOCAL_WRITE).expect("reg_mr"))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let command = Command::ModifyQp {
        qpn: Qpn::new(0x11),
        attr: QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(PathMtu::Mtu4096),
            dest_qpn: Some(Qpn::new(0x22)),
            rq_psn: Some(Psn::new(1)),
            max_dest_rd_atomic: Some(16),
            min_rnr_timer: Some(12),
            av: Some(AddressVector {
                remote: "10.0.0.2".parse().expect("literal"),
                local: None,
            }),
            ..QpAttr::default()
        },
    };
    let mut message = Vec::with_capacity(256);
    c.bench_function("control/codec/modify_qp", |b| {
        b.iter(|| {
            message.clear();
            command.emit(1, &mut message).expect("encodes");
            let (id, decoded) = Command::parse(&message).expect("decodes");
            assert_eq!(decoded, command);
            message.clear();
            Reply::Done.emit(id, &mut message).expect("encodes");
            Reply::parse(&message).expect("decodes")
        })
    });
}

criterion_group!(benches, embedded, codec);
criterion_main!(benches);

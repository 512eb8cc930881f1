//! The control plane end to end on one core: a life of resources as a sequence of
//! commands through `Core::execute`, each reply checked, and each crossing the codec as
//! a daemon's would.

use std::net::IpAddr;

use ferroce_transport::control::{Command, Reply};
use ferroce_transport::engine::{
    AccessFlags, AddressVector, Engine, EngineConfig, Lkey, NamespaceId, PathMtu, QpAttr, QpCap,
    QpInitAttr, QpState, QpType, RecvWr, Sge, SrqAttr, VerbsError,
};
use ferroce_transport::io::Core;
use ferroce_transport::wire::{Psn, Qpn};

const NS: NamespaceId = NamespaceId::DEFAULT;

/// Executes `command`, checking that it and its reply come through the codec intact.
fn execute(core: &mut Core, command: Command) -> Reply {
    let mut message = Vec::new();
    command.emit(9, &mut message).expect("the command encodes");
    let (_, decoded) = Command::parse(&message).expect("and decodes");
    assert_eq!(decoded, command);
    let reply = core.execute(NS, decoded);
    message.clear();
    reply.emit(9, &mut message).expect("the reply encodes");
    assert_eq!(Reply::parse(&message), Ok((9, reply.clone())));
    reply
}

/// `execute`, for the payload of the reply `T` the command gets.
fn expect<T>(core: &mut Core, command: Command) -> T
where
    T: TryFrom<Reply>,
    T::Error: std::fmt::Debug,
{
    T::try_from(execute(core, command)).expect("the command's reply")
}

#[test]
fn a_qp_lives_and_dies_by_commands() {
    let gid: IpAddr = "10.0.0.1".parse().unwrap();
    let mut core = Core::new(Engine::new(
        EngineConfig {
            default_gids: vec![gid],
            ..EngineConfig::default()
        },
        1,
    ));
    let core = &mut core;

    let Reply::Device(device) = execute(core, Command::QueryDevice) else {
        panic!("a Device reply");
    };
    assert_eq!(device.active_mtu, PathMtu::Mtu1024);
    assert_eq!(execute(core, Command::QueryGids), Reply::Gids(vec![gid]));
    let Reply::Port(port) = execute(core, Command::QueryPort) else {
        panic!("a Port reply");
    };
    assert_eq!((port.gid_tbl_len, port.active_mtu), (1, PathMtu::Mtu1024));

    // A PD, an MR whose bytes go in and come out, a CQ, an RC QP.
    let pd = expect(core, Command::AllocPd);
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    let mr: ferroce_transport::engine::MemoryRegion = expect(
        core,
        Command::RegMr {
            pd,
            length: 4096,
            access,
        },
    );
    assert_eq!((mr.pd, mr.length, mr.access), (pd, 4096, access));
    assert_ne!(mr.rkey.value(), 0, "remote access gives an rkey");
    let done = execute(
        core,
        Command::MrWrite {
            lkey: mr.lkey,
            addr: mr.addr + 100,
            data: b"hello".to_vec(),
        },
    );
    assert_eq!(done, Reply::Done);
    let read = Command::MrRead {
        lkey: mr.lkey,
        addr: mr.addr + 98,
        length: 8,
    };
    assert_eq!(execute(core, read), Reply::Bytes(b"\0\0hello\0".to_vec()));
    let outside = Command::MrRead {
        lkey: mr.lkey,
        addr: mr.addr + 4090,
        length: 8,
    };
    assert!(matches!(execute(core, outside), Reply::Error(_)));

    let cq = expect(core, Command::CreateCq { cqe: 16 });
    let cap = QpCap {
        max_send_wr: 8,
        max_recv_wr: 8,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let init = QpInitAttr {
        qp_type: QpType::Rc,
        pd,
        send_cq: cq,
        recv_cq: cq,
        srq: None,
        cap,
        sq_sig_all: false,
    };
    let qpn: Qpn = expect(core, Command::CreateQp { init });

    // RESET → INIT → RTR → RTS, and a transition the state machine refuses.
    let modify = |attr| Command::ModifyQp { qpn, attr };
    let rts = QpAttr {
        state: Some(QpState::Rts),
        sq_psn: Some(Psn::new(100)),
        timeout: Some(14),
        retry_cnt: Some(7),
        rnr_retry: Some(7),
        max_rd_atomic: Some(1),
        ..QpAttr::default()
    };
    assert_eq!(
        execute(core, modify(rts)),
        Reply::Error(VerbsError::InvalidStateTransition {
            qp_type: QpType::Rc,
            from: QpState::Reset,
            to: QpState::Rts,
        })
    );
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: Some(access),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(PathMtu::Mtu1024),
            dest_qpn: Some(Qpn::new(0x22)),
            rq_psn: Some(Psn::new(200)),
            max_dest_rd_atomic: Some(1),
            min_rnr_timer: Some(12),
            av: Some(AddressVector {
                remote: "10.0.0.2".parse().unwrap(),
                local: None,
            }),
            ..QpAttr::default()
        },
        rts,
    ];
    for attr in steps {
        assert_eq!(execute(core, modify(attr)), Reply::Done);
    }
    let info: ferroce_transport::engine::QpInfo = expect(core, Command::QueryQp { qpn });
    assert_eq!(
        (info.qpn, info.qp_type, info.state),
        (qpn, QpType::Rc, QpState::Rts)
    );
    assert_eq!(info.attr.dest_qpn, Some(Qpn::new(0x22)));
    assert_eq!(info.attr.sq_psn, Some(Psn::new(100)));
    assert_eq!(info.cap, cap);

    // An SRQ: created, armed, posted to, queried, destroyed.
    let srq_attr = SrqAttr {
        max_wr: 4,
        max_sge: 1,
        srq_limit: 0,
    };
    let srq = expect(core, Command::CreateSrq { pd, attr: srq_attr });
    let armed = Command::ModifySrq { srq, srq_limit: 2 };
    assert_eq!(execute(core, armed), Reply::Done);
    let recv = RecvWr {
        wr_id: 1,
        sg_list: vec![Sge {
            addr: mr.addr,
            length: 64,
            lkey: mr.lkey,
        }]
        .into(),
    };
    for _ in 0..4 {
        let post = Command::PostSrqRecv {
            srq,
            wr: recv.clone(),
        };
        assert_eq!(execute(core, post), Reply::Done);
    }
    let full = Command::PostSrqRecv { srq, wr: recv };
    assert_eq!(execute(core, full), Reply::Error(VerbsError::QueueFull));
    let queried: SrqAttr = expect(core, Command::QuerySrq { srq });
    assert_eq!(queried.srq_limit, 2);
    assert_eq!(execute(core, Command::DestroySrq { srq }), Reply::Done);

    // What is in use cannot go; in order, everything does.
    assert_eq!(
        execute(core, Command::DeallocPd { pd }),
        Reply::Error(VerbsError::Busy("PD in use"))
    );
    assert_eq!(
        execute(core, Command::DestroyCq { cq }),
        Reply::Error(VerbsError::Busy("CQ in use"))
    );
    assert_eq!(execute(core, Command::DestroyQp { qpn }), Reply::Done);
    assert_eq!(
        execute(core, Command::QueryQp { qpn }),
        Reply::Error(VerbsError::NotFound("QP"))
    );
    assert_eq!(execute(core, Command::DestroyCq { cq }), Reply::Done);
    assert_eq!(
        execute(core, Command::DeregMr { lkey: mr.lkey }),
        Reply::Done
    );
    assert_eq!(
        execute(
            core,
            Command::DeregMr {
                lkey: Lkey(mr.lkey.0)
            }
        ),
        Reply::Error(VerbsError::NotFound("MR"))
    );
    assert_eq!(execute(core, Command::DeallocPd { pd }), Reply::Done);

    let Reply::Counters { engine, thread } = execute(core, Command::QueryCounters) else {
        panic!("a Counters reply");
    };
    assert_eq!((engine.packets_out, thread.rounds), (0, 0));
}

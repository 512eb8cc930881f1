#![allow(clippy::unwrap_used)]
//! Wire compatibility with Linux rxe: the engine takes one side of a captured rxe
//! session (`testdata/pcaps/`), is fed the other side's packets as captured, and must
//! emit the same packets rxe did, byte for byte (the ICRC aside: rxe's covers its IPv4
//! ident, ours ident 0), and complete the work with the captured data.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::init_attr;
use ferroce_transport::engine::{
    AccessFlags, AddressVector, DatagramMeta, Ecn, Engine, EngineConfig, NamespaceId, PathMtu,
    QpAttr, QpState, QpType, RecvWr, SendOp, SendWr, Sge, Time, WcStatus,
};
use ferroce_transport::wire::ident::Recovered;
use ferroce_transport::wire::{icrc, packet, OpCode, Psn, Qpn, Rkey};

const NS: NamespaceId = NamespaceId::DEFAULT;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// The Q_Key ud_pingpong and perftest's UD tests use.
const UD_QKEY: u32 = 0x1111_1111;

/// One RoCEv2 datagram of a capture.
#[derive(Debug, Clone)]
struct Captured {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    dont_frag: bool,
    src_port: u16,
    payload: Vec<u8>,
}

impl Captured {
    fn meta(&self) -> DatagramMeta {
        DatagramMeta {
            src: self.src.into(),
            dst: self.dst.into(),
            src_port: self.src_port,
            ecn: Ecn::NotEct,
            ipv4_ident: Some(Recovered {
                ident: self.ident,
                dont_frag: self.dont_frag,
            }),
        }
    }

    fn repr(&self) -> packet::Repr {
        packet::parse(&self.payload).unwrap().repr
    }
}

/// The RoCEv2 datagrams of a classic little-endian Ethernet pcap.
fn capture(name: &str) -> Vec<Captured> {
    let path = format!("{}/../testdata/pcaps/{name}", env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read(path).unwrap();
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(&file, 0), 0xa1b2_c3d4, "classic microsecond pcap");
    assert_eq!(u32_at(&file, 20), 1, "Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32_at(&file, at + 8) as usize;
        let frame = &file[at + 16..at + 16 + len];
        at += 16 + len;
        let ip = &frame[14..];
        if u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let udp = &ip[ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) != 4791 {
            continue;
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        out.push(Captured {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            ident: u16::from_be_bytes([ip[4], ip[5]]),
            dont_frag: ip[6] & 0x40 != 0,
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            payload: udp[8..udp_len].to_vec(),
        });
    }
    out
}

/// Our datagram must be rxe's: same source port, same bytes up to the ICRC, and an
/// ICRC that verifies for ident 0 with DF.
fn assert_same(ours: &ferroce_transport::engine::Datagram, theirs: &Captured, what: &str) {
    assert_eq!(
        ours.meta.src_port, theirs.src_port,
        "{what}: UDP source port"
    );
    assert_eq!(
        ours.meta.dst,
        IpAddr::from(theirs.dst),
        "{what}: destination"
    );
    let n = theirs.payload.len();
    assert_eq!(ours.payload.len(), n, "{what}: length");
    assert_eq!(
        ours.payload[..n - 4],
        theirs.payload[..n - 4],
        "{what}: {} vs {}",
        packet::parse(&ours.payload).unwrap().repr,
        theirs.repr()
    );
    let env = icrc::Envelope::ipv4(
        match ours.meta.src {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!(),
        },
        theirs.dst,
        0,
        ours.meta.src_port,
    );
    assert_eq!(icrc::verify(&env, &ours.payload), Ok(true), "{what}: ICRC");
}

struct Host {
    engine: Engine,
    qpn: Qpn,
    mr: ferroce_transport::engine::MemoryRegion,
    cq: ferroce_transport::engine::CompletionQueueId,
}

/// A host at `me` with one RC QP (QPN 0x11, as in the captures) connected to QPN 0x11 at
/// `peer`, with rc_pingpong/perftest's attributes.
fn host(me: Ipv4Addr, peer: Ipv4Addr, rq_psn: u32, sq_psn: u32, rd_atomic: u8) -> Host {
    host_of(QpType::Rc, me, peer, rq_psn, sq_psn, rd_atomic)
}

/// A host with one QP of `qp_type` (QPN 0x11) set up as rc_pingpong, perftest and
/// ud_pingpong do.
fn host_of(
    qp_type: QpType,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    rq_psn: u32,
    sq_psn: u32,
    rd_atomic: u8,
) -> Host {
    host_labelled(qp_type, me, peer, rq_psn, sq_psn, rd_atomic, None)
}

/// As `host_of`, with an address-vector flow label (rdma_cm sets one).
fn host_labelled(
    qp_type: QpType,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    rq_psn: u32,
    sq_psn: u32,
    rd_atomic: u8,
    flow_label: Option<u32>,
) -> Host {
    let config = EngineConfig {
        default_gids: vec![me.into()],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, 1);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 1024).unwrap();
    let access = AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC;
    let mr = engine.reg_mr(NS, pd, 1 << 20, access).unwrap();
    let qpn = engine.create_qp(NS, init_attr(qp_type, pd, cq)).unwrap();
    assert_eq!(qpn, Qpn::new(0x11));
    if qp_type == QpType::Ud {
        let steps = [
            QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                qkey: Some(UD_QKEY),
                ..QpAttr::default()
            },
            QpAttr {
                state: Some(QpState::Rtr),
                ..QpAttr::default()
            },
            QpAttr {
                state: Some(QpState::Rts),
                sq_psn: Some(Psn::new(sq_psn)),
                ..QpAttr::default()
            },
        ];
        for attr in steps {
            engine.modify_qp(NS, qpn, &attr).unwrap();
        }
        return Host {
            engine,
            qpn,
            mr,
            cq,
        };
    }
    let rc = qp_type == QpType::Rc;
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
            av: Some(AddressVector {
                remote: peer.into(),
                local: None,
            }),
            path_mtu: Some(PathMtu::Mtu1024),
            dest_qpn: Some(Qpn::new(0x11)),
            rq_psn: Some(Psn::new(rq_psn)),
            flow_label,
            max_dest_rd_atomic: rc.then_some(rd_atomic),
            min_rnr_timer: rc.then_some(12),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(Psn::new(sq_psn)),
            timeout: rc.then_some(14),
            retry_cnt: rc.then_some(7),
            rnr_retry: rc.then_some(7),
            max_rd_atomic: rc.then_some(rd_atomic),
            ..QpAttr::default()
        },
    ];
    for attr in steps {
        engine.modify_qp(NS, qpn, &attr).unwrap();
    }
    Host {
        engine,
        qpn,
        mr,
        cq,
    }
}

#[test]
fn rc_pingpong_server_side_matches_rxe() {
    let packets = capture("rc_pingpong.pcap");
    let first_client = packets.iter().find(|p| p.src == CLIENT).unwrap();
    let first_server = packets
        .iter()
        .find(|p| p.src == SERVER && p.repr().bth.opcode != OpCode::RcAcknowledge)
        .unwrap();
    let mut server = host(
        SERVER,
        CLIENT,
        first_client.repr().bth.psn.value(),
        first_server.repr().bth.psn.value(),
        1,
    );
    let mut recvs = 0u64;
    let mut sends = 0u64;
    let mut compared = 0;
    let mut i = 0;
    while i < packets.len() {
        let p = &packets[i];
        let op = p.repr().bth.opcode;
        if p.src == CLIENT {
            if matches!(op, OpCode::RcSendFirst | OpCode::RcSendOnly) {
                let sge = Sge {
                    addr: server.mr.addr + 4096 * (recvs % 8),
                    length: 4096,
                    lkey: server.mr.lkey,
                };
                server
                    .engine
                    .post_recv(
                        NS,
                        server.qpn,
                        RecvWr {
                            wr_id: recvs,
                            sg_list: vec![sge].into(),
                        },
                    )
                    .unwrap();
                recvs += 1;
            }
            server
                .engine
                .handle_datagram(Time::ZERO, p.meta(), &p.payload);
            assert_eq!(
                server.engine.counters().icrc_errors,
                0,
                "rxe's ICRC with its ident"
            );
            i += 1;
            continue;
        }
        if matches!(op, OpCode::RcSendFirst | OpCode::RcSendOnly) {
            // rxe's server sent a message: post the same bytes.
            let mut data = Vec::new();
            for q in packets[i..].iter().filter(|q| q.src == SERVER) {
                let parsed = packet::parse(&q.payload).unwrap();
                data.extend_from_slice(parsed.payload);
                if parsed.repr.info().unwrap().position.ends_message() {
                    break;
                }
            }
            let at = 0x8_0000;
            server
                .engine
                .mr_write(NS, server.mr.lkey, server.mr.addr + at, &data)
                .unwrap();
            let sge = Sge {
                addr: server.mr.addr + at,
                length: data.len() as u32,
                lkey: server.mr.lkey,
            };
            server
                .engine
                .post_send(
                    NS,
                    server.qpn,
                    SendWr::new(100 + sends, SendOp::Send, vec![sge]),
                )
                .unwrap();
            sends += 1;
        }
        let ours = server
            .engine
            .poll_transmit(Time::ZERO)
            .expect("the engine answers as rxe did");
        assert_same(&ours, p, &format!("packet {i} ({op})"));
        compared += 1;
        i += 1;
    }
    assert!(server.engine.poll_transmit(Time::ZERO).is_none());
    assert_eq!(compared, 20, "5 ACKs and 5 three-packet SENDs");
    let wcs = server.engine.poll_cq(NS, server.cq, 100).unwrap();
    assert_eq!(wcs.len(), 10, "5 receives and 5 sends: {wcs:?}");
    assert!(wcs
        .iter()
        .all(|w| w.status == WcStatus::Success && w.byte_len == 2500));
}

/// The client side of a perftest run that only issues requests: our requests must be
/// rxe's, and rxe's responses must complete them with the captured data.
fn client_side(
    name: &str,
    rd_atomic: u8,
    wr_for: impl Fn(&packet::Repr, u64, &Host) -> SendWr,
) -> Host {
    // Only the session of QPN 0x11 (atomic_bw also has one on QPN 0x12).
    let packets: Vec<Captured> = capture(name)
        .into_iter()
        .filter(|p| p.repr().bth.dest_qp == Qpn::new(0x11))
        .collect();
    let first_request = packets.iter().find(|p| p.src == CLIENT).unwrap();
    let mut client = host(
        CLIENT,
        SERVER,
        0,
        first_request.repr().bth.psn.value(),
        rd_atomic,
    );
    let requests: Vec<&Captured> = packets.iter().filter(|p| p.src == CLIENT).collect();
    for (k, p) in requests.iter().enumerate() {
        let wr = wr_for(&p.repr(), k as u64, &client);
        client.engine.post_send(NS, client.qpn, wr).unwrap();
    }
    for (k, p) in requests.iter().enumerate() {
        let ours = client.engine.poll_transmit(Time::ZERO).expect("a request");
        assert_same(&ours, p, &format!("request {k}"));
    }
    for p in packets.iter().filter(|p| p.src == SERVER) {
        client
            .engine
            .handle_datagram(Time::ZERO, p.meta(), &p.payload);
    }
    assert_eq!(client.engine.counters().icrc_errors, 0);
    let wcs = client.engine.poll_cq(NS, client.cq, 100).unwrap();
    assert_eq!(wcs.len(), requests.len());
    assert!(wcs.iter().all(|w| w.status == WcStatus::Success), "{wcs:?}");
    client
}

#[test]
fn read_bw_client_side_matches_rxe() {
    let packets = capture("read_bw.pcap");
    let client = client_side("read_bw.pcap", 16, |repr, k, host| {
        let reth = repr.reth.unwrap();
        let sge = Sge {
            addr: host.mr.addr + 4096 * k,
            length: reth.dma_length,
            lkey: host.mr.lkey,
        };
        let op = SendOp::RdmaRead {
            remote_addr: reth.virtual_address,
            rkey: reth.rkey,
        };
        SendWr::new(k, op, vec![sge])
    });
    // The first READ's data is what the first three responses carried.
    let mut data = Vec::new();
    for p in packets.iter().filter(|p| p.src == SERVER).take(3) {
        data.extend_from_slice(packet::parse(&p.payload).unwrap().payload);
    }
    let mut got = vec![0u8; data.len()];
    let mut engine = client.engine;
    engine
        .mr_read(NS, client.mr.lkey, client.mr.addr, &mut got)
        .unwrap();
    assert_eq!(got, data);
}

#[test]
fn atomic_bw_client_side_matches_rxe() {
    let packets = capture("atomic_bw.pcap");
    let client = client_side("atomic_bw.pcap", 16, |repr, k, host| {
        let eth = repr.atomic_eth.unwrap();
        let sge = Sge {
            addr: host.mr.addr + 8 * k,
            length: 8,
            lkey: host.mr.lkey,
        };
        let op = match repr.bth.opcode {
            OpCode::RcFetchAdd => SendOp::FetchAdd {
                remote_addr: eth.virtual_address,
                rkey: Rkey(eth.rkey.0),
                add: eth.swap_add,
            },
            _ => SendOp::CompareSwap {
                remote_addr: eth.virtual_address,
                rkey: eth.rkey,
                compare: eth.compare,
                swap: eth.swap_add,
            },
        };
        SendWr::new(k, op, vec![sge])
    });
    // Each result is the original value rxe's atomic ACK carried.
    let mut engine = client.engine;
    let responses = packets
        .iter()
        .filter(|p| p.src == SERVER && p.repr().bth.dest_qp == Qpn::new(0x11));
    for (k, p) in responses.enumerate() {
        let original = p.repr().atomic_ack_eth.unwrap().original;
        let mut got = [0u8; 8];
        engine
            .mr_read(NS, client.mr.lkey, client.mr.addr + 8 * k as u64, &mut got)
            .unwrap();
        assert_eq!(u64::from_ne_bytes(got), original, "result {k}");
    }
}

/// The engine plays `me` in a capture: every message `me` started is posted as a work
/// request built from the captured headers and bytes, the peer's packets are fed as
/// captured (with their IPv4 idents), and every packet `me` sent must come out of the
/// engine, in order, byte for byte. Returns the completions.
fn replay(
    name: &str,
    qp_type: QpType,
    me: Ipv4Addr,
) -> Vec<ferroce_transport::engine::WorkCompletion> {
    replay_labelled(name, qp_type, me, None)
}

fn replay_labelled(
    name: &str,
    qp_type: QpType,
    me: Ipv4Addr,
    flow_label: Option<u32>,
) -> Vec<ferroce_transport::engine::WorkCompletion> {
    let packets: Vec<Captured> = capture(name)
        .into_iter()
        .filter(|p| p.repr().bth.dest_qp == Qpn::new(0x11))
        .collect();
    let peer = if me == CLIENT { SERVER } else { CLIENT };
    let requester = |p: &Captured| {
        use ferroce_transport::wire::opcode::Operation::*;
        let op = p.repr().info().unwrap().operation;
        !matches!(op, ReadResponse | Acknowledge | AtomicAcknowledge)
    };
    let first_psn = |who: Ipv4Addr| {
        packets
            .iter()
            .find(|p| p.src == who && requester(p))
            .map_or(0, |p| p.repr().bth.psn.value())
    };
    let mut host = host_labelled(
        qp_type,
        me,
        peer,
        first_psn(peer),
        first_psn(me),
        16,
        flow_label,
    );
    for k in 0..64u64 {
        let sge = Sge {
            addr: host.mr.addr + 0x8_0000 + 8192 * k,
            length: 8192,
            lkey: host.mr.lkey,
        };
        host.engine
            .post_recv(
                NS,
                host.qpn,
                RecvWr {
                    wr_id: 1000 + k,
                    sg_list: vec![sge].into(),
                },
            )
            .unwrap();
    }
    let mut messages = 0u64;
    let mut compared = 0;
    for (i, p) in packets.iter().enumerate() {
        if p.src == peer {
            host.engine
                .handle_datagram(Time::ZERO, p.meta(), &p.payload);
            assert_eq!(
                host.engine.counters().icrc_errors,
                0,
                "{name}: rxe's ICRC with its ident"
            );
            continue;
        }
        let repr = p.repr();
        let info = repr.info().unwrap();
        if requester(p) && info.position.starts_message() {
            // The message's bytes, from this packet to the end of the message.
            let mut data = Vec::new();
            for q in packets[i..].iter().filter(|q| q.src == me) {
                let parsed = packet::parse(&q.payload).unwrap();
                data.extend_from_slice(parsed.payload);
                if parsed.repr.info().unwrap().position.ends_message() {
                    break;
                }
            }
            let at = host.mr.addr + 8192 * (messages % 32);
            host.engine.mr_write(NS, host.mr.lkey, at, &data).unwrap();
            let sge = |len: u32| {
                vec![Sge {
                    addr: at,
                    length: len,
                    lkey: host.mr.lkey,
                }]
            };
            let len = data.len() as u32;
            let imm = repr.imm.map(|i| i.imm);
            let mut wr = match (info.operation, repr.reth, imm) {
                (ferroce_transport::wire::opcode::Operation::Write, Some(reth), None) => {
                    SendWr::new(
                        messages,
                        SendOp::RdmaWrite {
                            remote_addr: reth.virtual_address,
                            rkey: reth.rkey,
                        },
                        sge(len),
                    )
                }
                (ferroce_transport::wire::opcode::Operation::ReadRequest, Some(reth), None) => {
                    SendWr::new(
                        messages,
                        SendOp::RdmaRead {
                            remote_addr: reth.virtual_address,
                            rkey: reth.rkey,
                        },
                        sge(reth.dma_length),
                    )
                }
                (ferroce_transport::wire::opcode::Operation::Send, _, None) => {
                    SendWr::new(messages, SendOp::Send, sge(len))
                }
                (ferroce_transport::wire::opcode::Operation::Send, _, Some(imm)) => {
                    SendWr::new(messages, SendOp::SendWithImm(imm), sge(len))
                }
                other => panic!("{name}: no replay for {other:?}"),
            };
            if let Some(deth) = repr.deth {
                wr.ud = Some(ferroce_transport::engine::UdDestination {
                    address: peer.into(),
                    qpn: repr.bth.dest_qp,
                    qkey: deth.qkey,
                });
            }
            host.engine.post_send(NS, host.qpn, wr).unwrap();
            messages += 1;
        }
        let ours = host
            .engine
            .poll_transmit(Time::ZERO)
            .unwrap_or_else(|| panic!("{name}: packet {i} not sent"));
        assert_same(
            &ours,
            p,
            &format!("{name} packet {i} ({})", repr.bth.opcode),
        );
        compared += 1;
    }
    assert!(
        host.engine.poll_transmit(Time::ZERO).is_none(),
        "{name}: nothing more than rxe sent"
    );
    assert_eq!(compared, packets.iter().filter(|p| p.src == me).count());
    let wcs = host.engine.poll_cq(NS, host.cq, 1000).unwrap();
    assert!(
        wcs.iter().all(|w| w.status == WcStatus::Success),
        "{name}: {wcs:?}"
    );
    wcs
}

#[test]
fn rc_pingpong_client_side_matches_rxe() {
    let wcs = replay("rc_pingpong.pcap", QpType::Rc, CLIENT);
    assert_eq!(wcs.len(), 10);
}

#[test]
fn send_bw_both_sides_match_rxe() {
    let client = replay("send_bw.pcap", QpType::Rc, CLIENT);
    let server = replay("send_bw.pcap", QpType::Rc, SERVER);
    assert_eq!(client.len(), server.len());
    assert!(server.iter().all(|w| w.byte_len == 2500));
}

#[test]
fn write_bw_client_side_matches_rxe() {
    let wcs = replay("write_bw.pcap", QpType::Rc, CLIENT);
    assert!(!wcs.is_empty());
}

#[test]
fn uc_write_bw_client_side_matches_rxe() {
    let wcs = replay("uc_write_bw.pcap", QpType::Uc, CLIENT);
    assert!(!wcs.is_empty());
}

#[test]
fn ud_pingpong_both_sides_match_rxe() {
    for me in [CLIENT, SERVER] {
        let wcs = replay("ud_pingpong.pcap", QpType::Ud, me);
        // Receives hold 40 bytes of GRH space and the 512-byte message.
        let recvs: Vec<_> = wcs.iter().filter(|w| w.wr_id >= 1000).collect();
        assert_eq!(recvs.len(), 5);
        assert!(recvs
            .iter()
            .all(|w| w.byte_len == 40 + 512 && w.src_qp == Qpn::new(0x11)));
    }
    replay("ud_send_bw.pcap", QpType::Ud, CLIENT);
}

/// rxe puts the received IPv4 header in bytes 20..40 of a UD receive buffer. Ours has
/// the captured addresses, length, ident and DF (TTL, TOS and checksum are rebuilt: a
/// UDP socket does not show them).
#[test]
fn ud_grh_holds_the_senders_ipv4_header() {
    let packets = capture("ud_pingpong.pcap");
    let p = packets.iter().find(|p| p.src == CLIENT).unwrap();
    let mut server = host_of(QpType::Ud, SERVER, CLIENT, 0, 0, 1);
    let sge = Sge {
        addr: server.mr.addr,
        length: 1024,
        lkey: server.mr.lkey,
    };
    server
        .engine
        .post_recv(
            NS,
            server.qpn,
            RecvWr {
                wr_id: 1,
                sg_list: vec![sge].into(),
            },
        )
        .unwrap();
    server
        .engine
        .handle_datagram(Time::ZERO, p.meta(), &p.payload);
    let mut grh = [0u8; 40];
    server
        .engine
        .mr_read(NS, server.mr.lkey, server.mr.addr, &mut grh)
        .unwrap();
    assert_eq!(grh[..20], [0; 20]);
    let ip = &grh[20..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        20 + 8 + p.payload.len(),
        "total length"
    );
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), p.ident);
    assert_eq!(ip[6] & 0x40 != 0, p.dont_frag);
    assert_eq!(ip[9], 17);
    assert_eq!(ip[12..16], CLIENT.octets());
    assert_eq!(ip[16..20], SERVER.octets());
}

/// The engine plays rxe's server for requests that name rxe's memory (WRITE, READ,
/// atomics): each captured request is rewritten to name the same offset in our region
/// (rkey and address; the ICRC re-sealed for ident 0), our region holds what rxe's held
/// (READ data and atomic values taken from rxe's responses), and every response must
/// equal rxe's byte for byte.
fn replay_server_with_our_keys(name: &str) -> Host {
    use ferroce_transport::wire::{atomic, reth};
    let packets: Vec<Captured> = capture(name)
        .into_iter()
        .filter(|p| p.repr().bth.dest_qp == Qpn::new(0x11))
        .collect();
    let requests: Vec<&Captured> = packets.iter().filter(|p| p.src == CLIENT).collect();
    let responses: Vec<&Captured> = packets.iter().filter(|p| p.src == SERVER).collect();
    let first = requests[0].repr();
    let mut server = host(SERVER, CLIENT, first.bth.psn.value(), 0, 16);
    // rxe's addresses map to the same offsets from the lowest one in our region.
    let base = requests
        .iter()
        .filter_map(|p| {
            let r = p.repr();
            r.reth
                .map(|h| h.virtual_address)
                .or(r.atomic_eth.map(|h| h.virtual_address))
        })
        .min()
        .unwrap();
    let ours = |va: u64| server.mr.addr + 0x1000 + (va - base);
    // What rxe's memory held: READ data from its responses, atomics' first originals.
    let mut responses_iter = responses.iter();
    let mut fills: Vec<(u64, Vec<u8>)> = Vec::new();
    for req in &requests {
        let r = req.repr();
        if let (OpCode::RcReadRequest, Some(h)) = (r.bth.opcode, r.reth) {
            let mut data = Vec::new();
            for resp in responses_iter.by_ref() {
                let parsed = packet::parse(&resp.payload).unwrap();
                data.extend_from_slice(parsed.payload);
                if parsed.repr.info().unwrap().position.ends_message() {
                    break;
                }
            }
            fills.push((ours(h.virtual_address), data));
        }
        if let Some(h) = r.atomic_eth {
            if !fills.iter().any(|(at, _)| *at == ours(h.virtual_address)) {
                let original = responses
                    .iter()
                    .find(|p| p.repr().bth.psn == r.bth.psn)
                    .and_then(|p| p.repr().atomic_ack_eth)
                    .unwrap()
                    .original;
                fills.push((ours(h.virtual_address), original.to_ne_bytes().to_vec()));
            }
        }
    }
    for (at, data) in fills {
        server
            .engine
            .mr_write(NS, server.mr.lkey, at, &data)
            .unwrap();
    }
    let mut compared = 0;
    for p in &packets {
        if p.src == CLIENT {
            let parsed = packet::parse(&p.payload).unwrap();
            let mut repr = parsed.repr;
            if let Some(h) = &mut repr.reth {
                *h = reth::Repr {
                    virtual_address: ours(h.virtual_address),
                    rkey: server.mr.rkey,
                    dma_length: h.dma_length,
                };
            }
            if let Some(h) = &mut repr.atomic_eth {
                *h = atomic::eth::Repr {
                    virtual_address: ours(h.virtual_address),
                    rkey: server.mr.rkey,
                    ..*h
                };
            }
            let env = icrc::Envelope::ipv4(p.src, p.dst, 0, p.src_port);
            let mut bytes = vec![0u8; p.payload.len()];
            packet::build(&repr, parsed.payload, &env, &mut bytes).unwrap();
            let mut meta = p.meta();
            meta.ipv4_ident = None;
            server.engine.handle_datagram(Time::ZERO, meta, &bytes);
            continue;
        }
        let ours = server
            .engine
            .poll_transmit(Time::ZERO)
            .unwrap_or_else(|| panic!("{name}: no response"));
        assert_same(
            &ours,
            p,
            &format!("{name} response {compared} ({})", p.repr().bth.opcode),
        );
        compared += 1;
    }
    assert_eq!(compared, responses.len());
    assert!(server.engine.poll_transmit(Time::ZERO).is_none());
    assert_eq!(server.engine.counters().icrc_errors, 0);
    server
}

#[test]
fn read_bw_server_side_matches_rxe() {
    replay_server_with_our_keys("read_bw.pcap");
}

#[test]
fn atomic_bw_server_side_matches_rxe() {
    replay_server_with_our_keys("atomic_bw.pcap");
}

#[test]
fn write_bw_server_side_matches_rxe() {
    let packets = capture("write_bw.pcap");
    let mut server = replay_server_with_our_keys("write_bw.pcap");
    // The last WRITE's bytes are in our region where rxe had them.
    let last: Vec<u8> = packets
        .iter()
        .filter(|p| p.src == CLIENT)
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .flat_map(|p| packet::parse(&p.payload).unwrap().payload.to_vec())
        .collect();
    let mut got = vec![0u8; last.len()];
    server
        .engine
        .mr_read(NS, server.mr.lkey, server.mr.addr + 0x1000, &mut got)
        .unwrap();
    assert_eq!(got, last);
}

/// rping over rdma_cm: the CM MADs go UD to QP1 with the GSI Q_Key and AckReq set, from
/// source port `hash_32(1)`; the RC connection uses the flow label rdma_cm put in the
/// address vector (0x12ff gives rxe's source port 0xd2ff).
#[test]
fn rping_cm_gsi_mads_and_labelled_rc_match_rxe() {
    use ferroce_transport::wire::deth::GSI_QKEY;
    let packets = capture("rping_cm.pcap");
    let mads: Vec<&Captured> = packets
        .iter()
        .filter(|p| p.repr().bth.dest_qp == Qpn::GSI)
        .collect();
    // The server's QP1 takes the client's first MAD and sends its own, as rxe did.
    let config = EngineConfig {
        default_gids: vec![SERVER.into()],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, 3);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 16).unwrap();
    let mr = engine
        .reg_mr(NS, pd, 8192, AccessFlags::LOCAL_WRITE)
        .unwrap();
    let gsi = engine
        .create_gsi_qp(NS, init_attr(QpType::Ud, pd, cq))
        .unwrap();
    assert_eq!(gsi, Qpn::GSI);
    assert!(
        engine
            .create_gsi_qp(NS, init_attr(QpType::Ud, pd, cq))
            .is_err(),
        "one QP1"
    );
    let server_mad = mads.iter().find(|p| p.src == SERVER).unwrap();
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            qkey: Some(GSI_QKEY),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(server_mad.repr().bth.psn),
            ..QpAttr::default()
        },
    ];
    for attr in steps {
        engine.modify_qp(NS, gsi, &attr).unwrap();
    }
    let sge = Sge {
        addr: mr.addr,
        length: 4096,
        lkey: mr.lkey,
    };
    engine
        .post_recv(
            NS,
            gsi,
            RecvWr {
                wr_id: 1,
                sg_list: vec![sge].into(),
            },
        )
        .unwrap();
    let client_mad = mads.iter().find(|p| p.src == CLIENT).unwrap();
    engine.handle_datagram(Time::ZERO, client_mad.meta(), &client_mad.payload);
    let wc = engine.poll_cq(NS, cq, 1).unwrap().remove(0);
    assert_eq!(
        (wc.status, wc.byte_len, wc.src_qp),
        (WcStatus::Success, 40 + 256, Qpn::GSI)
    );
    let mad = packet::parse(&server_mad.payload).unwrap().payload.to_vec();
    engine.mr_write(NS, mr.lkey, mr.addr + 4096, &mad).unwrap();
    let sge = Sge {
        addr: mr.addr + 4096,
        length: mad.len() as u32,
        lkey: mr.lkey,
    };
    let mut wr = SendWr::new(2, SendOp::Send, vec![sge]);
    wr.ud = Some(ferroce_transport::engine::UdDestination {
        address: CLIENT.into(),
        qpn: Qpn::GSI,
        qkey: GSI_QKEY,
    });
    engine.post_send(NS, gsi, wr).unwrap();
    let ours = engine.poll_transmit(Time::ZERO).unwrap();
    assert_same(&ours, server_mad, "server MAD");

    // The RC connection rdma_cm set up, server side (the client side answers READs and
    // WRITEs that name rxe's memory, which ours is not).
    let wcs = replay_labelled("rping_cm.pcap", QpType::Rc, SERVER, Some(0x12ff));
    assert!(wcs
        .iter()
        .any(|w| w.opcode == ferroce_transport::engine::WcOpcode::RdmaRead));
}

/// The CM agent as rping's server: the client's captured REQ reaches a listener on
/// port 7174, the request is accepted, and the REP it sends carries what rxe's did
/// wherever the two must agree. Comm IDs, QPNs, PSNs and the CA GUID are each side's
/// own; the REP must answer the REQ's comm ID and transaction, and the QP must take
/// the REQ's PSN, QPN, MTU and retries as cm.c gives them.
#[test]
fn rping_req_gets_a_rep_a_kernel_accepts() {
    use ferroce_transport::engine::{AcceptParams, CmEvent};
    use ferroce_transport::wire::cm::{self as wire_cm, Message};
    use ferroce_transport::wire::cma::PortSpace;
    use ferroce_transport::wire::{mad, ServiceId};
    let packets = capture("rping_cm.pcap");
    let mads: Vec<&Captured> = packets
        .iter()
        .filter(|p| p.repr().bth.dest_qp == Qpn::GSI)
        .collect();
    let parse = |payload: &[u8]| {
        let parsed = packet::parse(payload).unwrap();
        let bytes = parsed.payload.to_vec();
        (parsed.repr, bytes)
    };
    let cm = |bytes: &[u8]| {
        let repr = wire_cm::Repr::parse(&mad::Packet::new_checked(bytes).unwrap()).unwrap();
        (repr.header, repr.message.to_string(), bytes.to_vec())
    };
    let (_, req_bytes) = parse(&mads[0].payload);
    let (_, rxe_rep_bytes) = parse(&mads[1].payload);
    let req = wire_cm::Repr::parse(&mad::Packet::new_checked(&req_bytes[..]).unwrap()).unwrap();
    let rxe_rep =
        wire_cm::Repr::parse(&mad::Packet::new_checked(&rxe_rep_bytes[..]).unwrap()).unwrap();
    let (Message::Req(req_msg), Message::Rep(rxe)) = (req.message, rxe_rep.message) else {
        panic!("REQ and REP");
    };

    let config = EngineConfig {
        default_gids: vec![SERVER.into()],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, 3);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 16).unwrap();
    let qpn = engine.create_qp(NS, init_attr(QpType::Rc, pd, cq)).unwrap();
    engine
        .cm_listen(NS, ServiceId::rdma_ip(PortSpace::Tcp, 7174), 1)
        .unwrap();
    engine.handle_datagram(Time::ZERO, mads[0].meta(), &mads[0].payload);
    let Some(CmEvent::ConnectRequest(request)) = engine.poll_cm_event(NS) else {
        panic!("a connection request");
    };
    let header = request.cma.unwrap();
    assert_eq!(header.source(), "10.77.0.11:49605".parse().unwrap());
    assert_eq!(header.dst(), IpAddr::from(SERVER));
    assert_eq!(
        (request.remote, request.remote_qpn),
        (CLIENT.into(), Qpn::new(0x11))
    );
    engine
        .cm_accept(
            Time::ZERO,
            NS,
            request.id,
            qpn,
            &AcceptParams::default(),
            &[],
        )
        .unwrap();
    let ours = engine.poll_transmit(Time::ZERO).unwrap();

    // The datagram: QP1 to QP1 as rxe sends it, from rxe's QP1 source port.
    assert_eq!(ours.meta.src_port, mads[1].src_port);
    assert_eq!(ours.meta.dst, IpAddr::from(CLIENT));
    let (bth_deth, rep_bytes) = parse(&ours.payload);
    let (theirs, _) = parse(&mads[1].payload);
    assert_eq!(bth_deth.bth.opcode, theirs.bth.opcode);
    assert_eq!(
        (
            bth_deth.bth.pkey,
            bth_deth.bth.dest_qp,
            bth_deth.bth.ack_req
        ),
        (theirs.bth.pkey, theirs.bth.dest_qp, theirs.bth.ack_req)
    );
    assert_eq!(bth_deth.deth, theirs.deth);
    assert_eq!(rep_bytes.len(), mad::MAD_LEN);
    let (our_header, text, _) = cm(&rep_bytes);
    assert_eq!(
        our_header, rxe_rep.header,
        "MAD header: the REQ's transaction, {text}"
    );
    let rep = wire_cm::Repr::parse(&mad::Packet::new_checked(&rep_bytes[..]).unwrap()).unwrap();
    let Message::Rep(ours) = rep.message else {
        panic!("a REP");
    };
    // Fields a kernel reads and that must agree with rxe's answer to the same REQ.
    assert_eq!(ours.remote_comm_id, req_msg.local_comm_id);
    assert_eq!(
        (
            ours.local_qkey,
            ours.local_eecn,
            ours.responder_resources,
            ours.initiator_depth
        ),
        (
            rxe.local_qkey,
            rxe.local_eecn,
            rxe.responder_resources,
            rxe.initiator_depth
        )
    );
    assert_eq!(
        (
            ours.target_ack_delay,
            ours.failover_accepted,
            ours.end_to_end_flow_control
        ),
        (
            rxe.target_ack_delay,
            rxe.failover_accepted,
            rxe.end_to_end_flow_control
        )
    );
    assert_eq!(
        (ours.rnr_retry_count, ours.srq),
        (rxe.rnr_retry_count, rxe.srq)
    );
    assert_eq!(ours.private_data, rxe.private_data, "zero-filled");
    // Each side's own: a 24-bit PSN, its QP, its GUID.
    assert_eq!(ours.local_qpn, qpn);
    assert!(ours.starting_psn.value() <= 0xff_ffff);
    assert_ne!(ours.local_comm_id, 0);
    assert_ne!(ours.local_ca_guid, 0);

    // The QP as cm.c sets it from the REQ: it sends from the REQ's PSN, expects the
    // REP's, talks to the client's QP 0x11 at 1024 bytes, retries as asked.
    let info = engine.query_qp(NS, qpn).unwrap();
    assert_eq!(info.state, QpState::Rts);
    assert_eq!(info.attr.sq_psn, Some(req_msg.starting_psn));
    assert_eq!(info.attr.rq_psn, Some(ours.starting_psn));
    assert_eq!(info.attr.dest_qpn, Some(req_msg.local_qpn));
    assert_eq!(info.attr.path_mtu, Some(PathMtu::Mtu1024));
    assert_eq!(
        (info.attr.retry_cnt, info.attr.rnr_retry, info.attr.timeout),
        (Some(7), Some(7), Some(19))
    );
    assert_eq!(
        (info.attr.max_rd_atomic, info.attr.max_dest_rd_atomic),
        (Some(1), Some(1))
    );
    // rxe's own QP took the same PSNs the other way round: the client sent its first
    // SEND with the REP's PSN and the server its first READ with the REQ's.
    let first_send = packets
        .iter()
        .find(|p| p.src == CLIENT && p.repr().bth.opcode == OpCode::RcSendOnly)
        .unwrap();
    assert_eq!(first_send.repr().bth.psn, rxe.starting_psn);
    let first_read = packets
        .iter()
        .find(|p| p.src == SERVER && p.repr().bth.opcode == OpCode::RcReadRequest)
        .unwrap();
    assert_eq!(first_read.repr().bth.psn, req_msg.starting_psn);
}

/// The CM agent as rping's client: its REQ for port 7174 agrees with the kernel's
/// (rping's captured one) in every field but those each side picks for itself — comm
/// ID, CA GUID, QPN, starting PSN — and the path's flow label and rate, which rdma_cm
/// takes from the route and a passive rxe does not depend on.
#[test]
fn our_req_is_rpings_but_for_what_each_side_picks() {
    use ferroce_transport::engine::cm::rdma_ip_private_data;
    use ferroce_transport::engine::{ConnectParams, ServiceAddress};
    use ferroce_transport::wire::cm::{self as wire_cm, req, Message};
    use ferroce_transport::wire::cma::PortSpace;
    use ferroce_transport::wire::{mad, ServiceId};
    let packets = capture("rping_cm.pcap");
    let theirs = packets
        .iter()
        .find(|p| p.repr().bth.dest_qp == Qpn::GSI)
        .unwrap();
    let config = EngineConfig {
        default_gids: vec![CLIENT.into()],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, 4);
    let pd = engine.alloc_pd(NS).unwrap();
    let cq = engine.create_cq(NS, 16).unwrap();
    let qpn = engine.create_qp(NS, init_attr(QpType::Rc, pd, cq)).unwrap();
    let source = std::net::SocketAddr::new(CLIENT.into(), 49605);
    let private_data = rdma_ip_private_data(source, SERVER.into(), &[]).unwrap();
    let to = ServiceAddress {
        address: SERVER.into(),
        service_id: ServiceId::rdma_ip(PortSpace::Tcp, 7174),
    };
    engine
        .cm_connect(
            Time::ZERO,
            NS,
            qpn,
            to,
            &ConnectParams::default(),
            &private_data,
        )
        .unwrap();
    let ours = engine.poll_transmit(Time::ZERO).unwrap();
    assert_eq!(ours.meta.src_port, theirs.src_port, "QP1's source port");
    let mad_of = |payload: &[u8]| packet::parse(payload).unwrap().payload.to_vec();
    let (ours, theirs) = (mad_of(&ours.payload), mad_of(&theirs.payload));
    fn parse(bytes: &[u8]) -> (mad::Repr, req::Repr<'_>) {
        let repr = wire_cm::Repr::parse(&mad::Packet::new_checked(bytes).unwrap()).unwrap();
        let Message::Req(m) = repr.message else {
            panic!("a REQ");
        };
        (repr.header, m)
    }
    let ((our_header, ours), (their_header, theirs)) = (parse(&ours), parse(&theirs));
    assert_eq!(
        our_header,
        mad::Repr {
            transaction_id: our_header.transaction_id,
            ..their_header
        }
    );
    let expected = req::Repr {
        local_comm_id: ours.local_comm_id,
        local_ca_guid: ours.local_ca_guid,
        local_qpn: ours.local_qpn,
        starting_psn: ours.starting_psn,
        primary_path: req::Path {
            flow_label: ours.primary_path.flow_label,
            packet_rate: ours.primary_path.packet_rate,
            ..theirs.primary_path
        },
        ..theirs
    };
    assert_eq!(ours, expected);
    assert_eq!(ours.local_qpn, qpn);
    // The transaction ID is the comm ID under the agent's high half, as cm.c forms it.
    assert_eq!(our_header.transaction_id as u32, ours.local_comm_id);
}

//! The codec: every message round-trips, the documented layout is the one written, and
//! bad input is refused with the error that says why.

use std::net::IpAddr;

use ferroce_wire::{Psn, Qpn, Rkey};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;

use super::codec::{kind, HEADER_LEN, MAX_DATA_LEN, MAX_MESSAGE_LEN, VERSION};
use super::reasons::REASONS;
use super::*;
use crate::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Counters, DeviceAttributes, DeviceLimits, Lkey,
    MemoryRegion, PathMtu, ProtectionDomain, QpAttr, QpCap, QpInfo, QpInitAttr, QpState, QpType,
    QuotaResource, RecvWr, Sge, SharedReceiveQueueId, SrqAttr, VerbsError,
};
use crate::io::ThreadCounters;

fn encode_command(id: u64, command: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    command.emit(id, &mut out).expect("encodes");
    out
}

fn encode_reply(id: u64, reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    reply.emit(id, &mut out).expect("encodes");
    out
}

/// `bytes` with the header's `length` set to their length.
fn with_length(mut bytes: Vec<u8>) -> Vec<u8> {
    let length = bytes.len() as u32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    bytes
}

// --- Strategies ---------------------------------------------------------------------

fn qpn() -> impl Strategy<Value = Qpn> {
    (0..=Qpn::MAX).prop_map(Qpn::new)
}

fn psn() -> impl Strategy<Value = Psn> {
    (0..=Psn::MASK).prop_map(Psn::new)
}

fn access() -> impl Strategy<Value = AccessFlags> {
    (0u32..16).prop_map(|bits| AccessFlags::from_bits(bits).expect("known bits"))
}

fn qp_type() -> impl Strategy<Value = QpType> {
    select(vec![QpType::Rc, QpType::Uc, QpType::Ud])
}

fn qp_state() -> impl Strategy<Value = QpState> {
    select(QpState::ALL.to_vec())
}

fn path_mtu() -> impl Strategy<Value = PathMtu> {
    (1u8..=5).prop_map(|code| PathMtu::from_ibv_code(code).expect("an MTU"))
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn qp_cap() -> impl Strategy<Value = QpCap> {
    any::<[u32; 5]>().prop_map(|[a, b, c, d, e]| QpCap {
        max_send_wr: a,
        max_recv_wr: b,
        max_send_sge: c,
        max_recv_sge: d,
        max_inline_data: e,
    })
}

fn qp_init_attr() -> impl Strategy<Value = QpInitAttr> {
    (
        qp_type(),
        any::<[u32; 3]>(),
        option::of(any::<u32>()),
        qp_cap(),
        any::<bool>(),
    )
        .prop_map(
            |(qp_type, [pd, send, recv], srq, cap, sq_sig_all)| QpInitAttr {
                qp_type,
                pd: ProtectionDomain(pd),
                send_cq: CompletionQueueId(send),
                recv_cq: CompletionQueueId(recv),
                srq: srq.map(SharedReceiveQueueId),
                cap,
                sq_sig_all,
            },
        )
}

fn qp_attr() -> impl Strategy<Value = QpAttr> {
    let small = || option::of(any::<u8>());
    (
        (
            option::of(qp_state()),
            option::of(any::<u16>()),
            small(),
            option::of(any::<u32>()),
            option::of(access()),
            option::of(path_mtu()),
        ),
        (option::of(qpn()), option::of(psn()), option::of(psn())),
        (small(), small(), small(), small(), small(), small()),
        (
            option::of((ip(), option::of(ip()))),
            option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (state, pkey_index, port_num, qkey, access, path_mtu),
                (dest_qpn, rq_psn, sq_psn),
                (max_rd_atomic, max_dest_rd_atomic, min_rnr_timer, timeout, retry_cnt, rnr_retry),
                (av, flow_label),
            )| QpAttr {
                state,
                pkey_index,
                port_num,
                qkey,
                access,
                path_mtu,
                dest_qpn,
                rq_psn,
                sq_psn,
                max_rd_atomic,
                max_dest_rd_atomic,
                min_rnr_timer,
                timeout,
                retry_cnt,
                rnr_retry,
                av: av.map(|(remote, local)| AddressVector { remote, local }),
                flow_label,
            },
        )
}

fn srq_attr() -> impl Strategy<Value = SrqAttr> {
    any::<[u32; 3]>().prop_map(|[max_wr, max_sge, srq_limit]| SrqAttr {
        max_wr,
        max_sge,
        srq_limit,
    })
}

fn recv_wr() -> impl Strategy<Value = RecvWr> {
    let sge = (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(addr, length, lkey)| Sge {
        addr,
        length,
        lkey: Lkey(lkey),
    });
    (any::<u64>(), vec(sge, 0..6)).prop_map(|(wr_id, sges)| RecvWr {
        wr_id,
        sg_list: sges.into(),
    })
}

fn verbs_error() -> impl Strategy<Value = VerbsError> {
    let reason = || select(REASONS.to_vec());
    prop_oneof![
        reason().prop_map(VerbsError::InvalidArgument),
        reason().prop_map(VerbsError::LimitExceeded),
        (
            select(vec![
                QuotaResource::Qps,
                QuotaResource::Cqs,
                QuotaResource::Srqs,
                QuotaResource::Mrs,
                QuotaResource::RegisteredBytes,
                QuotaResource::WorkRequests,
            ]),
            any::<u64>()
        )
            .prop_map(|(resource, limit)| VerbsError::QuotaExceeded { resource, limit }),
        reason().prop_map(VerbsError::NotFound),
        reason().prop_map(VerbsError::AlreadyExists),
        reason().prop_map(VerbsError::Busy),
        (qp_type(), qp_state(), qp_state()).prop_map(|(qp_type, from, to)| {
            VerbsError::InvalidStateTransition { qp_type, from, to }
        }),
        reason().prop_map(VerbsError::MissingAttribute),
        reason().prop_map(VerbsError::AttributeNotAllowed),
        qp_state().prop_map(VerbsError::InvalidState),
        reason().prop_map(VerbsError::AccessDenied),
        Just(VerbsError::QueueFull),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::QueryDevice),
        Just(Command::QueryPort),
        Just(Command::QueryGids),
        Just(Command::QueryCounters),
        Just(Command::AllocPd),
        any::<u32>().prop_map(|pd| Command::DeallocPd {
            pd: ProtectionDomain(pd)
        }),
        (any::<u32>(), any::<u64>(), access()).prop_map(|(pd, length, access)| Command::RegMr {
            pd: ProtectionDomain(pd),
            length,
            access
        }),
        any::<u32>().prop_map(|lkey| Command::DeregMr { lkey: Lkey(lkey) }),
        (any::<u32>(), any::<u64>(), vec(any::<u8>(), 0..300)).prop_map(|(lkey, addr, data)| {
            Command::MrWrite {
                lkey: Lkey(lkey),
                addr,
                data,
            }
        }),
        (any::<u32>(), any::<u64>(), 0..=MAX_DATA_LEN as u64).prop_map(|(lkey, addr, length)| {
            Command::MrRead {
                lkey: Lkey(lkey),
                addr,
                length,
            }
        }),
        any::<u32>().prop_map(|cqe| Command::CreateCq { cqe }),
        any::<u32>().prop_map(|cq| Command::DestroyCq {
            cq: CompletionQueueId(cq)
        }),
        qp_init_attr().prop_map(|init| Command::CreateQp { init }),
        (qpn(), qp_attr()).prop_map(|(qpn, attr)| Command::ModifyQp { qpn, attr }),
        qpn().prop_map(|qpn| Command::QueryQp { qpn }),
        qpn().prop_map(|qpn| Command::DestroyQp { qpn }),
        (any::<u32>(), srq_attr()).prop_map(|(pd, attr)| Command::CreateSrq {
            pd: ProtectionDomain(pd),
            attr
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(srq, srq_limit)| Command::ModifySrq {
            srq: SharedReceiveQueueId(srq),
            srq_limit
        }),
        any::<u32>().prop_map(|srq| Command::QuerySrq {
            srq: SharedReceiveQueueId(srq)
        }),
        any::<u32>().prop_map(|srq| Command::DestroySrq {
            srq: SharedReceiveQueueId(srq)
        }),
        (any::<u32>(), recv_wr()).prop_map(|(srq, wr)| Command::PostSrqRecv {
            srq: SharedReceiveQueueId(srq),
            wr
        }),
    ]
}

/// Counters of any values: every 432-byte body is one.
fn counters() -> impl Strategy<Value = (Counters, ThreadCounters)> {
    vec(any::<u8>(), 432).prop_map(|body| {
        let mut message = vec![0u8; HEADER_LEN];
        message[4..6].copy_from_slice(&VERSION.to_le_bytes());
        message[6..8].copy_from_slice(&kind::COUNTERS.to_le_bytes());
        message.extend_from_slice(&body);
        match Reply::parse(&with_length(message)) {
            Ok((_, Reply::Counters { engine, thread })) => (*engine, thread),
            other => panic!("432 bytes are counters: {other:?}"),
        }
    })
}

fn device_attributes() -> impl Strategy<Value = DeviceAttributes> {
    (
        any::<[u32; 11]>(),
        any::<u64>(),
        any::<[u8; 2]>(),
        any::<u32>(),
        path_mtu(),
    )
        .prop_map(
            |(u, max_mr_size, [rd, init_rd], events, active_mtu)| DeviceAttributes {
                limits: DeviceLimits {
                    max_qp: u[0],
                    max_qp_wr: u[1],
                    max_sge: u[2],
                    max_cq: u[3],
                    max_cqe: u[4],
                    max_mr: u[5],
                    max_mr_size,
                    max_pd: u[6],
                    max_srq: u[7],
                    max_srq_wr: u[8],
                    max_srq_sge: u[9],
                    max_inline_data: u[10],
                    max_qp_rd_atom: rd,
                    max_qp_init_rd_atom: init_rd,
                    max_async_events: events,
                },
                active_mtu,
            },
        )
}

fn qp_info() -> impl Strategy<Value = QpInfo> {
    (
        qpn(),
        qp_type(),
        qp_state(),
        qp_attr(),
        qp_cap(),
        any::<[u32; 3]>(),
    )
        .prop_map(|(qpn, qp_type, state, attr, cap, [s, r, q])| QpInfo {
            qpn,
            qp_type,
            state,
            attr,
            cap,
            send_outstanding: s as usize,
            recv_outstanding: r as usize,
            responses_queued: q as usize,
        })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Done),
        verbs_error().prop_map(Reply::Error),
        device_attributes().prop_map(Reply::Device),
        (any::<bool>(), path_mtu(), any::<u32>()).prop_map(|(active, active_mtu, gid_tbl_len)| {
            Reply::Port(PortStatus {
                active,
                active_mtu,
                gid_tbl_len,
            })
        }),
        vec(ip(), 0..5).prop_map(Reply::Gids),
        counters().prop_map(|(engine, thread)| Reply::Counters {
            engine: Box::new(engine),
            thread
        }),
        any::<u32>().prop_map(|pd| Reply::Pd(ProtectionDomain(pd))),
        (any::<[u32; 3]>(), any::<[u64; 2]>(), access()).prop_map(
            |([pd, lkey, rkey], [addr, length], access)| Reply::Mr(MemoryRegion {
                pd: ProtectionDomain(pd),
                lkey: Lkey(lkey),
                rkey: Rkey(rkey),
                addr,
                length,
                access,
            })
        ),
        vec(any::<u8>(), 0..300).prop_map(Reply::Bytes),
        any::<u32>().prop_map(|cq| Reply::Cq(CompletionQueueId(cq))),
        qpn().prop_map(Reply::Qp),
        qp_info().prop_map(Reply::QpInfo),
        any::<u32>().prop_map(|srq| Reply::Srq(SharedReceiveQueueId(srq))),
        srq_attr().prop_map(Reply::SrqAttr),
    ]
}

/// Changes a message: a byte flipped, cut short, or grown by a byte.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate(usize),
    Append(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=u8::MAX).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<u8>().prop_map(Mutation::Append),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match *mutation {
            Mutation::Flip { at, bits } if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            Mutation::Flip { .. } => {}
            Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Append(byte) => bytes.push(byte),
        }
    }
    bytes
}

proptest! {
    #[test]
    fn every_command_round_trips(id in any::<u64>(), command in command()) {
        let bytes = encode_command(id, &command);
        let header = Header::parse(&bytes).expect("a header");
        prop_assert_eq!(header.length as usize, bytes.len());
        prop_assert_eq!(header.kind, command.kind());
        prop_assert_eq!(Command::parse(&bytes), Ok((id, command)));
    }

    #[test]
    fn every_reply_round_trips(id in any::<u64>(), reply in reply()) {
        let bytes = encode_reply(id, &reply);
        let header = Header::parse(&bytes).expect("a header");
        prop_assert_eq!(header.length as usize, bytes.len());
        prop_assert_eq!(header.kind, reply.kind());
        prop_assert_eq!(Reply::parse(&bytes), Ok((id, reply)));
    }

    /// Damaged messages never panic the decoder, and what it accepts is canonical: it
    /// encodes back to exactly the bytes it came from.
    #[test]
    fn damaged_messages_decode_to_an_error_or_to_what_encodes_back(
        command in command(),
        reply in reply(),
        mutations in vec(mutation(), 1..4),
    ) {
        let bytes = mutate(encode_command(7, &command), &mutations);
        if let Ok((id, decoded)) = Command::parse(&bytes) {
            prop_assert_eq!(encode_command(id, &decoded), bytes);
        }
        let bytes = mutate(encode_reply(7, &reply), &mutations);
        if let Ok((id, decoded)) = Reply::parse(&bytes) {
            prop_assert_eq!(encode_reply(id, &decoded), bytes);
        }
    }
}

// --- Every variant ------------------------------------------------------------------

/// One value of each of `count` variants from `strategy`, in the order `variant`
/// numbers them (its match has no wildcard: a new variant fails to compile there until
/// it is numbered, and then here until the strategy makes it).
fn one_of_each<T: Clone + std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    count: usize,
    variant: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut found: Vec<Option<T>> = vec![None; count];
    for _ in 0..10_000 {
        let value = strategy.new_tree(&mut runner).expect("a value").current();
        let slot = &mut found[variant(&value)];
        slot.get_or_insert(value);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.unwrap_or_else(|| panic!("the strategy never made variant {i}")))
        .collect()
}

fn one_of_each_command() -> Vec<Command> {
    one_of_each(command(), 21, |command| match command {
        Command::QueryDevice => 0,
        Command::QueryPort => 1,
        Command::QueryGids => 2,
        Command::QueryCounters => 3,
        Command::AllocPd => 4,
        Command::DeallocPd { .. } => 5,
        Command::RegMr { .. } => 6,
        Command::DeregMr { .. } => 7,
        Command::MrWrite { .. } => 8,
        Command::MrRead { .. } => 9,
        Command::CreateCq { .. } => 10,
        Command::DestroyCq { .. } => 11,
        Command::CreateQp { .. } => 12,
        Command::ModifyQp { .. } => 13,
        Command::QueryQp { .. } => 14,
        Command::DestroyQp { .. } => 15,
        Command::CreateSrq { .. } => 16,
        Command::ModifySrq { .. } => 17,
        Command::QuerySrq { .. } => 18,
        Command::DestroySrq { .. } => 19,
        Command::PostSrqRecv { .. } => 20,
    })
}

fn one_of_each_reply() -> Vec<Reply> {
    one_of_each(reply(), 14, |reply| match reply {
        Reply::Done => 0,
        Reply::Error(_) => 1,
        Reply::Device(_) => 2,
        Reply::Port(_) => 3,
        Reply::Gids(_) => 4,
        Reply::Counters { .. } => 5,
        Reply::Pd(_) => 6,
        Reply::Mr(_) => 7,
        Reply::Bytes(_) => 8,
        Reply::Cq(_) => 9,
        Reply::Qp(_) => 10,
        Reply::QpInfo(_) => 11,
        Reply::Srq(_) => 12,
        Reply::SrqAttr(_) => 13,
    })
}

/// The strategies make every variant, and the kinds are distinct: commands below
/// 0x8000, replies from it.
#[test]
fn every_variant_has_its_own_kind_and_round_trips() {
    let commands = one_of_each_command();
    let replies = one_of_each_reply();
    let mut kinds: Vec<u16> = commands.iter().map(Command::kind).collect();
    assert!(kinds.iter().all(|&k| k < 0x8000));
    let reply_kinds: Vec<u16> = replies.iter().map(Reply::kind).collect();
    assert!(reply_kinds.iter().all(|&k| k >= 0x8000));
    kinds.extend(reply_kinds);
    let count = kinds.len();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), count, "a kind used twice");
    for command in commands {
        let bytes = encode_command(1, &command);
        assert_eq!(Command::parse(&bytes), Ok((1, command)));
        // A command is no reply.
        assert!(matches!(
            Reply::parse(&bytes),
            Err(DecodeError::UnknownKind(_))
        ));
    }
    for reply in replies {
        let bytes = encode_reply(2, &reply);
        assert_eq!(Reply::parse(&bytes), Ok((2, reply)));
        assert!(matches!(
            Command::parse(&bytes),
            Err(DecodeError::UnknownKind(_))
        ));
    }
}

// --- The documented layout -------------------------------------------------------------

#[test]
fn a_modify_qp_is_laid_out_as_documented() {
    let attr = QpAttr {
        state: Some(QpState::Rtr),
        path_mtu: Some(PathMtu::Mtu4096),
        dest_qpn: Some(Qpn::new(0x12_3456)),
        rq_psn: Some(Psn::new(0xab_cdef)),
        av: Some(AddressVector {
            remote: "10.0.0.2".parse().expect("literal"),
            local: None,
        }),
        ..QpAttr::default()
    };
    let bytes = encode_command(
        0x0102_0304_0506_0708,
        &Command::ModifyQp {
            qpn: Qpn::new(0x11),
            attr,
        },
    );
    let mut expected = vec![
        93, 0, 0, 0, // length: 16 + 4 + 73
        1, 0, // version
        0x41, 0x00, // kind: ModifyQp
        8, 7, 6, 5, 4, 3, 2, 1, // request id
        0x11, 0, 0, 0, // qpn
        0xe1, 0x80, 0, 0, // mask: state, path_mtu, dest_qpn, rq_psn, av
        0, 0, 0, 0, // qkey
        0, 0, 0, 0, // access
        0x56, 0x34, 0x12, 0, // dest_qpn
        0xef, 0xcd, 0xab, 0, // rq_psn
        0, 0, 0, 0, // sq_psn
        0, 0, 0, 0, // flow_label
        0, 0, // pkey_index
        2, // state: RTR
        0, // port_num
        5, // path_mtu: 4096
        0, 0, 0, 0, 0, 0, // max_rd_atomic … rnr_retry
        4, 10, 0, 0, 2, // av.remote: IPv4 10.0.0.2
    ];
    expected.extend([0; 12]);
    expected.extend([0; 17]); // av.local: none
    assert_eq!(bytes, expected);
}

#[test]
fn counters_are_in_declaration_order() {
    let mut engine = Counters {
        packets_in: 1,
        ..Counters::default()
    };
    engine.naks_received.other = 2;
    engine.drops.too_long = 3;
    let thread = ThreadCounters {
        lost_post_errors: 4,
        ..ThreadCounters::default()
    };
    let engine = Box::new(engine);
    let bytes = encode_reply(0, &Reply::Counters { engine, thread });
    assert_eq!(bytes.len(), HEADER_LEN + 54 * 8);
    let word = |i: usize| {
        let at = HEADER_LEN + 8 * i;
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    };
    let nonzero: Vec<(usize, u64)> = (0..54).map(|i| (i, word(i))).filter(|w| w.1 != 0).collect();
    // packets_in first; naks_received.other last of the 12 + 6 + 6; drops.too_long
    // last of the engine's 39; the thread's last counter last of all.
    assert_eq!(nonzero, vec![(0, 1), (23, 2), (38, 3), (53, 4)]);
}

#[test]
fn an_error_carries_its_code_and_reason() {
    let bytes = encode_reply(5, &Reply::Error(VerbsError::Busy("PD in use")));
    let mut expected = vec![
        16 + 1 + 1 + 9,
        0,
        0,
        0,
        1,
        0,
        0x01,
        0x80,
        5,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    expected.extend([6, 9]);
    expected.extend(b"PD in use");
    assert_eq!(bytes, expected);
}

// --- Bad input ------------------------------------------------------------------------

#[test]
fn a_short_message_is_truncated() {
    let bytes = encode_command(
        1,
        &Command::QueryQp {
            qpn: Qpn::new(0x11),
        },
    );
    for n in 0..HEADER_LEN {
        assert!(
            matches!(
                Command::parse(&bytes[..n]),
                Err(DecodeError::Truncated { .. })
            ),
            "{n} bytes"
        );
    }
    assert_eq!(
        Command::parse(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated {
            needed: bytes.len(),
            available: bytes.len() - 1
        })
    );
    // The header agrees with the bytes, but the body is short of its fields.
    let short = with_length(bytes[..bytes.len() - 1].to_vec());
    assert!(matches!(
        Command::parse(&short),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_command(1, &Command::AllocPd);
    bytes.push(0);
    assert_eq!(Command::parse(&bytes), Err(DecodeError::TrailingBytes(1)));
    // The header counts the extra byte: the body has one too many.
    assert_eq!(
        Command::parse(&with_length(bytes)),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn another_version_is_refused() {
    let mut bytes = encode_command(1, &Command::AllocPd);
    bytes[4] = 2;
    assert_eq!(
        Command::parse(&bytes),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        Header::parse(&bytes),
        Err(DecodeError::UnsupportedVersion(2))
    );
}

#[test]
fn unknown_kinds_are_refused() {
    let mut bytes = encode_command(1, &Command::AllocPd);
    bytes[6..8].copy_from_slice(&0x7fffu16.to_le_bytes());
    assert_eq!(
        Command::parse(&bytes),
        Err(DecodeError::UnknownKind(0x7fff))
    );
    bytes[6..8].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(Reply::parse(&bytes), Err(DecodeError::UnknownKind(0xffff)));
}

#[test]
fn bad_field_values_are_refused() {
    fn bad<T>(field: &'static str, value: u64) -> Result<T, DecodeError> {
        Err(DecodeError::BadValue { field, value })
    }
    let init = QpInitAttr {
        qp_type: QpType::Rc,
        pd: ProtectionDomain(1),
        send_cq: CompletionQueueId(1),
        recv_cq: CompletionQueueId(1),
        srq: None,
        cap: QpCap {
            max_send_wr: 1,
            max_recv_wr: 1,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
        sq_sig_all: false,
    };
    let create = encode_command(1, &Command::CreateQp { init });
    let body = HEADER_LEN;
    let changed = |at: usize, value: u8| {
        let mut bytes = create.clone();
        bytes[body + at] = value;
        Command::parse(&bytes)
    };
    assert_eq!(changed(0, 9), bad("qp_type", 9));
    assert_eq!(changed(13, 2), bad("bool", 2));
    assert_eq!(changed(14, 1), bad("absent srq", 1));
    assert_eq!(changed(38, 7), bad("bool", 7));

    let query = encode_command(1, &Command::QueryQp { qpn: Qpn::new(1) });
    let mut bytes = query.clone();
    bytes[body + 3] = 1;
    assert_eq!(Command::parse(&bytes), bad("qpn", 0x0100_0001));

    let reg = encode_command(
        1,
        &Command::RegMr {
            pd: ProtectionDomain(1),
            length: 4096,
            access: AccessFlags::LOCAL_WRITE,
        },
    );
    let mut bytes = reg.clone();
    bytes[body + 4] = 0x11;
    assert_eq!(Command::parse(&bytes), bad("access", 0x11));

    let modify = encode_command(
        1,
        &Command::ModifyQp {
            qpn: Qpn::new(1),
            attr: QpAttr {
                state: Some(QpState::Init),
                ..QpAttr::default()
            },
        },
    );
    let attr = body + 4;
    let changed = |at: usize, value: u8| {
        let mut bytes = modify.clone();
        bytes[attr + at] = value;
        Command::parse(&bytes)
    };
    // A mask bit no attribute has.
    assert_eq!(changed(2, 0x02), bad("attribute mask", 0x2_0001));
    // A state code no state has.
    assert_eq!(changed(30, 7), bad("qp_state", 7));
    // Bytes of an unset attribute: qkey, and an MTU code that is no MTU.
    assert_eq!(changed(4, 1), bad("unset attribute", 1 << 3));
    assert_eq!(changed(32, 9), bad("unset attribute", 1 << 5));
    // An address family; a local address without the address vector.
    assert_eq!(changed(56, 5), bad("address family", 5));
    assert_eq!(changed(56, 4), bad("unset attribute", 1 << 15));
    // An IPv4 address's padding.
    let mut bytes = encode_reply(1, &Reply::Gids(vec!["10.0.0.1".parse().expect("literal")]));
    bytes[body + 4 + 1 + 4] = 1;
    assert_eq!(Reply::parse(&bytes), bad("address padding", 0));

    let error = encode_reply(
        1,
        &Reply::Error(VerbsError::QuotaExceeded {
            resource: QuotaResource::Mrs,
            limit: 8,
        }),
    );
    let mut bytes = error.clone();
    bytes[body] = 99;
    assert_eq!(Reply::parse(&bytes), bad("error code", 99));
    let mut bytes = error;
    bytes[body + 1] = 6;
    assert_eq!(Reply::parse(&bytes), bad("quota resource", 6));
}

#[test]
fn lengths_over_the_limits_are_refused() {
    // The header's length.
    let mut bytes = encode_command(1, &Command::AllocPd);
    bytes[..4].copy_from_slice(&(MAX_MESSAGE_LEN as u32 + 1).to_le_bytes());
    assert_eq!(
        Command::parse(&bytes),
        Err(DecodeError::BadLength(MAX_MESSAGE_LEN as u32 + 1))
    );
    bytes[..4].copy_from_slice(&15u32.to_le_bytes());
    assert_eq!(Command::parse(&bytes), Err(DecodeError::BadLength(15)));

    // Data: the encoder refuses, leaving its buffer as it was; the decoder too.
    let write = Command::MrWrite {
        lkey: Lkey(1),
        addr: 0,
        data: vec![0; MAX_DATA_LEN + 1],
    };
    let mut out = vec![0xaa];
    assert!(matches!(
        write.emit(1, &mut out),
        Err(EncodeError::TooLong { .. })
    ));
    assert_eq!(out, vec![0xaa]);
    let mut bytes = encode_command(
        1,
        &Command::MrWrite {
            lkey: Lkey(1),
            addr: 0,
            data: vec![7; 4],
        },
    );
    bytes[HEADER_LEN + 12..HEADER_LEN + 16]
        .copy_from_slice(&(MAX_DATA_LEN as u32 + 1).to_le_bytes());
    assert!(matches!(
        Command::parse(&bytes),
        Err(DecodeError::OverLimit { .. })
    ));
    let read = Command::MrRead {
        lkey: Lkey(1),
        addr: 0,
        length: MAX_DATA_LEN as u64 + 1,
    };
    assert!(matches!(
        read.emit(1, &mut out),
        Err(EncodeError::TooLong { .. })
    ));
    let mut bytes = encode_command(
        1,
        &Command::MrRead {
            lkey: Lkey(1),
            addr: 0,
            length: 8,
        },
    );
    bytes[HEADER_LEN + 12..].copy_from_slice(&(u64::MAX).to_le_bytes());
    assert_eq!(
        Command::parse(&bytes),
        Err(DecodeError::OverLimit {
            field: "MrRead length",
            value: u64::MAX,
            limit: MAX_DATA_LEN as u64
        })
    );

    // A count of more elements than the message holds: refused before allocating.
    let mut bytes = encode_reply(1, &Reply::Gids(vec!["10.0.0.1".parse().expect("literal")]));
    bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Reply::parse(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn reasons_must_be_known_both_ways() {
    let mut out = Vec::new();
    // Not written as a literal in the constructor: the scan of the sources for the
    // engine's reasons would rightly call it unknown.
    let made_up = "made up here";
    assert_eq!(
        Reply::Error(VerbsError::InvalidArgument(made_up)).emit(1, &mut out),
        Err(EncodeError::UnknownReason(made_up))
    );
    assert!(out.is_empty());
    let mut bytes = encode_reply(1, &Reply::Error(VerbsError::NotFound("QP")));
    let at = bytes.len() - 1;
    bytes[at] = b'X';
    assert_eq!(Reply::parse(&bytes), Err(DecodeError::UnknownReason));
    // Not UTF-8.
    bytes[at] = 0xff;
    assert_eq!(Reply::parse(&bytes), Err(DecodeError::UnknownReason));
}

//! perftest exchange: every TCP payload of the six perftest captures parses to the
//! values in it and re-encodes to the same bytes; ferroce replays each capture's client
//! and server byte for byte (all messages, in order); real loopback TCP sessions for
//! every tool; bad versions, truncated and corrupted input.

mod exchange_common;

use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::thread;

use exchange_common::{tcp_messages, FixedInput, Message, ScriptedPeer};
use ferroce::transport::engine::PathMtu;
use ferroce::wire::psn::Psn;
use ferroce::wire::{Qpn, Rkey};
use ferroce_tools::exchange::perftest::{
    client_handshake, decode_mtu, decode_system_value, server_handshake, BwReport, KeyFormat,
    PerPortReport, PerftestConfig, PerftestKeys, PerftestSession, PerftestVersion, PostRunStep,
    Role, TestKind, TestSpec, Verb, DONE_MESSAGE, KEYS_WITH_GID_LEN, VERSION_LEN,
};
use ferroce_tools::exchange::{MessageError, OobError};
use proptest::prelude::*;

/// The perftest captures and the tool each ran (`INDEX.txt`, interop README).
const CAPTURES: [(&str, Verb); 6] = [
    ("write_bw.pcap", Verb::Write),
    ("uc_write_bw.pcap", Verb::Write),
    ("read_bw.pcap", Verb::Read),
    ("atomic_bw.pcap", Verb::Atomic),
    ("send_bw.pcap", Verb::Send),
    ("ud_send_bw.pcap", Verb::Send),
];

fn spec(verb: Verb, kind: TestKind, duplex: bool) -> TestSpec {
    TestSpec { verb, kind, duplex }
}

/// The (sender is client, size) sequence the plan predicts, both `done`s client first.
fn predicted_shape(test: TestSpec, queue_pairs: usize, per_port: bool) -> Vec<(bool, usize)> {
    let mut shape = Vec::new();
    let both = |size: usize, shape: &mut Vec<(bool, usize)>| {
        shape.push((true, size));
        shape.push((false, size));
    };
    both(VERSION_LEN, &mut shape);
    both(4, &mut shape);
    both(4, &mut shape);
    both(2, &mut shape);
    let plan = test.plan(queue_pairs);
    for _ in plan.key_rounds.iter().chain(&plan.barriers) {
        both(KEYS_WITH_GID_LEN, &mut shape);
    }
    for step in plan.post_run {
        match step {
            PostRunStep::Barrier => both(KEYS_WITH_GID_LEN, &mut shape),
            PostRunStep::BwReport => {
                for _ in 0..if per_port { 9 } else { 5 } {
                    both(8, &mut shape);
                }
            }
            PostRunStep::Close => {
                both(KEYS_WITH_GID_LEN, &mut shape);
                both(DONE_MESSAGE.len(), &mut shape);
            }
        }
    }
    shape
}

/// The capture's messages with the two crossing `done`s put in the order `first_client`.
fn messages_with_dones(file: &str, client_done_first: bool) -> Vec<Message> {
    let mut messages = tcp_messages(file);
    let count = messages.len();
    assert!(count >= 2);
    let tail = &mut messages[count - 2..];
    assert!(
        tail.iter().all(|m| m.payload == DONE_MESSAGE),
        "{file} ends with two dones"
    );
    assert_ne!(
        tail[0].from_client, tail[1].from_client,
        "{file}: one done each way"
    );
    if tail[0].from_client != client_done_first {
        tail.swap(0, 1);
    }
    messages
}

/// A captured session taken apart: per side, keys and report.
struct Captured {
    messages: Vec<Message>,
    client_keys: PerftestKeys,
    server_keys: PerftestKeys,
    client_report: BwReport,
    server_report: Option<BwReport>,
}

fn take_apart(file: &str, verb: Verb) -> Captured {
    let messages = messages_with_dones(file, true);
    let test = spec(verb, TestKind::Bandwidth, false);
    let shape: Vec<(bool, usize)> = messages
        .iter()
        .map(|m| (m.from_client, m.payload.len()))
        .collect();
    assert_eq!(
        shape,
        predicted_shape(test, 1, false),
        "{file}: message sequence"
    );

    for message in &messages[..2] {
        let version = PerftestVersion::decode(&message.payload).expect("version");
        assert_eq!(version.as_str(), "6.06");
        assert_eq!(version.encode()[..], message.payload[..]);
    }
    for (index, expected) in [(2, 4096), (4, 64)] {
        for message in &messages[index..index + 2] {
            let bytes: [u8; 4] = message.payload[..].try_into().expect("4 bytes");
            assert_eq!(decode_system_value(bytes, "test"), Ok(expected), "{file}");
        }
    }
    for message in &messages[6..8] {
        assert_eq!(decode_mtu(&message.payload), Ok(PathMtu::Mtu1024), "{file}");
    }
    // Every key message re-encodes byte for byte; each side repeats the same keys.
    let mut client_keys = None;
    let mut server_keys = None;
    for message in messages
        .iter()
        .filter(|m| m.payload.len() == KEYS_WITH_GID_LEN)
    {
        let keys = PerftestKeys::decode(&message.payload).expect("keys");
        assert_eq!(keys.encode(KeyFormat::WithGid), message.payload, "{file}");
        let slot = if message.from_client {
            &mut client_keys
        } else {
            &mut server_keys
        };
        assert_eq!(
            *slot.get_or_insert(keys),
            keys,
            "{file}: keys change between exchanges"
        );
    }
    let reports: Vec<&Message> = messages.iter().filter(|m| m.payload.len() == 8).collect();
    let fields = |from_client: bool| -> Vec<[u8; 8]> {
        reports
            .iter()
            .filter(|m| m.from_client == from_client)
            .map(|m| m.payload[..].try_into().expect("8 bytes"))
            .collect()
    };
    let client_fields = fields(true);
    let server_fields = fields(false);
    let (client_report, server_report) = if client_fields.is_empty() {
        (BwReport::default(), None)
    } else {
        let client = BwReport::decode_fields(&client_fields).expect("client report");
        let server = BwReport::decode_fields(&server_fields).expect("server report");
        assert_eq!(client.encode_fields(false), client_fields);
        assert_eq!(
            server.encode_fields(false),
            server_fields,
            "garbage round-trips bit for bit"
        );
        (client, Some(server))
    };
    Captured {
        messages,
        client_keys: client_keys.expect("client keys"),
        server_keys: server_keys.expect("server keys"),
        client_report,
        server_report,
    }
}

#[test]
fn every_captured_message_parses_and_reencodes() {
    for (file, verb) in CAPTURES {
        let captured = take_apart(file, verb);
        let (client, server) = (captured.client_keys, captured.server_keys);
        // Both guests: LID 0, QPN 0x11, GIDs ::ffff:10.77.0.11/.12, no XRC SRQ.
        assert_eq!((client.lid, server.lid), (0, 0), "{file}");
        assert_eq!(
            (client.qpn, server.qpn),
            (Qpn::new(0x11), Qpn::new(0x11)),
            "{file}"
        );
        assert_eq!(
            client.gid,
            "::ffff:10.77.0.11".parse::<Ipv6Addr>().expect("gid"),
            "{file}"
        );
        assert_eq!(
            server.gid,
            "::ffff:10.77.0.12".parse::<Ipv6Addr>().expect("gid"),
            "{file}"
        );
        assert_eq!((client.srqn, server.srqn), (0, 0), "{file}");
        // rxe's max_qp_rd_atom (128) for READ/atomic tests, else 1.
        let out_reads = if matches!(verb, Verb::Read | Verb::Atomic) {
            0x80
        } else {
            1
        };
        assert_eq!(
            (client.out_reads, server.out_reads),
            (out_reads, out_reads),
            "{file}"
        );
        // SEND tests register no remote access: rkey 0.
        if verb == Verb::Send {
            assert_eq!((client.rkey, server.rkey), (Rkey(0), Rkey(0)), "{file}");
        } else {
            assert_ne!(client.rkey, Rkey(0), "{file}");
        }
        if let Some(report) = captured.server_report.map(|_| captured.client_report) {
            // -s 2500 -n 8 (atomics: 8 bytes); the average bandwidth in MiB/s is the
            // message rate in Mpps times the size: checks the field order.
            let size = if verb == Verb::Atomic { 8 } else { 2500 };
            assert_eq!((report.size, report.iterations), (size, 8), "{file}");
            let implied = report.message_rate_average * 1e6 * size as f64 / f64::from(1 << 20);
            assert!(
                (implied - report.bw_average).abs() < 1e-9 * report.bw_average.max(1.0),
                "{file}: {report:?}"
            );
            // The peak comes from the fastest interval: never below the average beyond
            // rounding (atomic_bw.pcap has them equal to 9 digits).
            assert!(
                report.bw_peak >= report.bw_average * (1.0 - 1e-6),
                "{file}: {report:?}"
            );
        }
    }
    // Spot values read off write_bw.pcap frames 15 and 16.
    let write = take_apart("write_bw.pcap", Verb::Write);
    assert_eq!(write.client_keys.psn, Psn::new(0x00da5e));
    assert_eq!(write.client_keys.rkey, Rkey(0x24f));
    assert_eq!(write.client_keys.vaddr, 0x0000_5557_def3_4000);
    assert_eq!(write.server_keys.psn, Psn::new(0xf60acc));
    assert_eq!(write.server_keys.rkey, Rkey(0x2f1));
    assert_eq!(write.server_keys.vaddr, 0x0000_5610_7535_6000);
}

#[test]
fn client_reproduces_every_captured_client() {
    for (file, verb) in CAPTURES {
        let captured = take_apart(file, verb);
        let peer = ScriptedPeer::new(&captured.messages, true);
        let mut seen_remote = None;
        let mut session = client_handshake(
            peer,
            spec(verb, TestKind::Bandwidth, false),
            PerftestConfig::default(),
            |negotiated| {
                assert_eq!(negotiated.remote_version.as_str(), "6.06");
                assert_eq!(
                    (negotiated.cycle_buffer, negotiated.cache_line_size),
                    (4096, 64)
                );
                assert_eq!(negotiated.mtu, PathMtu::Mtu1024);
                Ok(vec![captured.client_keys])
            },
            |remote| {
                seen_remote = Some(remote.to_vec());
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(seen_remote, Some(vec![captured.server_keys]), "{file}");
        assert_eq!(session.remote_keys(), [captured.server_keys]);
        let remote_report = session
            .finish(&captured.client_report)
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(
            remote_report.map(|r| r.encode_fields(false)),
            captured.server_report.map(|r| r.encode_fields(false)),
            "{file}"
        );
        let peer = session.into_inner();
        assert!(
            peer.is_finished(),
            "{file}: {} messages left",
            peer.remaining()
        );
    }
}

#[test]
fn server_reproduces_every_captured_server() {
    for (file, verb) in CAPTURES {
        let captured = take_apart(file, verb);
        // The server writes its done first here, to cover the other order too.
        let messages = messages_with_dones(file, false);
        let peer = ScriptedPeer::new(&messages, false);
        let mut session = server_handshake(
            peer,
            spec(verb, TestKind::Bandwidth, false),
            PerftestConfig::default(),
            |_| Ok(vec![captured.server_keys]),
            |remote| {
                assert_eq!(remote, [captured.client_keys]);
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{file}: {error}"));
        let ours = captured.server_report.unwrap_or_default();
        let remote_report = session
            .finish(&ours)
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(
            remote_report.is_some(),
            captured.server_report.is_some(),
            "{file}"
        );
        if let Some(report) = remote_report {
            assert_eq!(report, captured.client_report, "{file}");
        }
        let peer = session.into_inner();
        assert!(
            peer.is_finished(),
            "{file}: {} messages left",
            peer.remaining()
        );
    }
}

/// A distinct key set per side and QP.
fn keys_for(side: u32, queue_pair: u32) -> PerftestKeys {
    PerftestKeys {
        lid: 0,
        out_reads: 0x80,
        qpn: Qpn::new(0x100 * side + queue_pair),
        psn: Psn::new(0x12_3456 + side * 0x1000 + queue_pair),
        rkey: Rkey(0xabc0_0000 | side << 8 | queue_pair),
        vaddr: 0x7f00_0000_0000 + u64::from(side) * 0x1_0000_0000 + u64::from(queue_pair) * 4096,
        gid: Ipv6Addr::from(0xffff_7f00_0000u128 | u128::from(side)),
        srqn: queue_pair,
    }
}

fn run_loopback(test: TestSpec, queue_pairs: u32, key_format: KeyFormat, per_port: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let client_report = BwReport {
        size: 65536,
        iterations: 5000,
        bw_peak: 12.5,
        bw_average: 11.25,
        message_rate_average: 0.00018,
        per_port: per_port.then_some(PerPortReport {
            bw_average_port1: 1.0,
            message_rate_port1: 2.0,
            bw_average_port2: 3.0,
            message_rate_port2: 4.0,
        }),
    };
    let server_report = BwReport {
        size: 65536,
        iterations: 4999,
        per_port: per_port.then_some(PerPortReport::default()),
        ..BwReport::default()
    };
    let server_config = PerftestConfig {
        cycle_buffer: 8192,
        mtu: PathMtu::Mtu1024,
        key_format,
        report_per_port: per_port,
        ..PerftestConfig::default()
    };
    let client_config = PerftestConfig {
        cache_line_size: 128,
        mtu: PathMtu::Mtu4096,
        version: PerftestVersion::new("6.20").expect("version"),
        key_format,
        report_per_port: per_port,
        ..PerftestConfig::default()
    };
    let local_keys = |side| -> Vec<PerftestKeys> {
        let mut keys: Vec<PerftestKeys> = (0..queue_pairs).map(|qp| keys_for(side, qp)).collect();
        if key_format == KeyFormat::WithoutGid {
            keys.iter_mut().for_each(|k| k.gid = Ipv6Addr::UNSPECIFIED);
        }
        keys
    };
    let server_keys = local_keys(2);
    let client_keys = local_keys(1);
    let expected_server_keys = server_keys.clone();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut session = server_handshake(
            stream,
            test,
            server_config,
            |negotiated| {
                assert_eq!(negotiated.remote_version.as_str(), "6.20");
                assert_eq!(negotiated.remote_mtu, PathMtu::Mtu4096);
                assert_eq!(negotiated.mtu, PathMtu::Mtu1024);
                assert_eq!(
                    (negotiated.cycle_buffer, negotiated.cache_line_size),
                    (8192, 128)
                );
                Ok(server_keys)
            },
            |_| Ok(()),
        )
        .expect("server handshake");
        let remote_keys = session.remote_keys().to_vec();
        let report = session.finish(&server_report).expect("server finish");
        (remote_keys, report)
    });
    let stream = TcpStream::connect(address).expect("connect");
    let mut session = client_handshake(
        stream,
        test,
        client_config,
        |negotiated| {
            assert_eq!(negotiated.remote_version.as_str(), "6.06");
            assert_eq!(negotiated.mtu, PathMtu::Mtu1024);
            assert_eq!(
                (negotiated.cycle_buffer, negotiated.cache_line_size),
                (8192, 128)
            );
            Ok(client_keys.clone())
        },
        |remote| {
            assert_eq!(remote, expected_server_keys);
            Ok(())
        },
    )
    .expect("client handshake");
    let client_got = session.finish(&client_report).expect("client finish");
    let (server_saw_keys, server_got) = server.join().expect("server thread");
    assert_eq!(server_saw_keys, client_keys, "{test:?}");
    let reports = test
        .plan(queue_pairs as usize)
        .post_run
        .contains(&PostRunStep::BwReport);
    assert_eq!(client_got, reports.then_some(server_report), "{test:?}");
    assert_eq!(server_got, reports.then_some(client_report), "{test:?}");
}

#[test]
fn loopback_tcp_sessions_for_every_tool() {
    for verb in [Verb::Send, Verb::Write, Verb::Read, Verb::Atomic] {
        for (kind, duplex) in [
            (TestKind::Bandwidth, false),
            (TestKind::Bandwidth, true),
            (TestKind::Latency, false),
        ] {
            for queue_pairs in [1, 3] {
                run_loopback(
                    spec(verb, kind, duplex),
                    queue_pairs,
                    KeyFormat::WithGid,
                    false,
                );
            }
        }
    }
    run_loopback(
        spec(Verb::Write, TestKind::Bandwidth, false),
        2,
        KeyFormat::WithoutGid,
        false,
    );
    run_loopback(
        spec(Verb::Read, TestKind::Bandwidth, true),
        1,
        KeyFormat::WithGid,
        true,
    );
}

#[test]
fn old_peer_version_is_refused_after_the_exchange() {
    let mut input = b"5.60".to_vec();
    input.resize(VERSION_LEN, 0);
    let mut session = PerftestSession::new(
        FixedInput::new(input),
        Role::Server,
        spec(Verb::Write, TestKind::Bandwidth, false),
        PerftestConfig::default(),
    );
    match session.negotiate() {
        Err(OobError::IncompatibleVersion { remote, minimum }) => {
            assert_eq!((remote.as_str(), minimum), ("5.60", "5.70"));
        }
        other => panic!("expected IncompatibleVersion, got {other:?}"),
    }
    // As perftest does, our version went out before the check.
    assert_eq!(
        session.into_inner().written,
        PerftestVersion::ferroce().encode()
    );
}

#[test]
fn malformed_negotiation_messages_are_refused() {
    let version = PerftestVersion::ferroce().encode().to_vec();
    let cases: [(Vec<u8>, &str); 4] = [
        (b"6.06xxxxxxxxxxxx".to_vec(), "no NUL"),
        ([&b"6.0\x016"[..], &[0u8; 11][..]].concat(), "control byte"),
        (
            [version.clone(), vec![0x80, 0, 0, 0]].concat(),
            "negative page size",
        ),
        (
            [version, vec![0, 0, 16, 0, 0, 0, 0, 64], b"7\0".to_vec()].concat(),
            "MTU 7",
        ),
    ];
    for (input, what) in cases {
        let mut session = PerftestSession::new(
            FixedInput::new(input),
            Role::Server,
            spec(Verb::Send, TestKind::Latency, false),
            PerftestConfig::default(),
        );
        assert!(
            matches!(session.negotiate(), Err(OobError::Message(_))),
            "{what} must be refused"
        );
    }
}

#[test]
fn gid_family_mismatch_is_refused() {
    let captured = take_apart("write_bw.pcap", Verb::Write);
    let mut local = captured.server_keys;
    local.gid = "fe80::1".parse().expect("gid");
    let client_stream: Vec<u8> = captured
        .messages
        .iter()
        .filter(|m| m.from_client)
        .flat_map(|m| m.payload.clone())
        .collect();
    let result = server_handshake(
        FixedInput::new(client_stream),
        spec(Verb::Write, TestKind::Bandwidth, false),
        PerftestConfig::default(),
        |_| Ok(vec![local]),
        |_| panic!("the QP must not be connected to a peer of the other IP version"),
    );
    assert!(matches!(
        result,
        Err(OobError::Message(MessageError::Value { field: "GID", .. }))
    ));
}

#[test]
fn finish_before_connect_is_a_usage_error() {
    let mut session = PerftestSession::new(
        FixedInput::new(Vec::new()),
        Role::Client,
        spec(Verb::Send, TestKind::Latency, false),
        PerftestConfig::default(),
    );
    assert!(matches!(
        session.finish(&BwReport::default()),
        Err(OobError::Usage(_))
    ));
}

/// The server side of `file` fed the client's bytes with `edit` applied.
fn server_on(file: &str, verb: Verb, edit: impl FnOnce(&mut Vec<u8>)) -> Result<(), OobError> {
    let captured = take_apart(file, verb);
    let mut input: Vec<u8> = captured
        .messages
        .iter()
        .filter(|m| m.from_client)
        .flat_map(|m| m.payload.clone())
        .collect();
    edit(&mut input);
    let mut session = server_handshake(
        FixedInput::new(input),
        spec(verb, TestKind::Bandwidth, false),
        PerftestConfig::default(),
        |_| Ok(vec![captured.server_keys]),
        |_| Ok(()),
    )?;
    session.finish(&BwReport::default()).map(|_| ())
}

fn any_keys() -> impl Strategy<Value = PerftestKeys> {
    (
        (
            any::<u16>(),
            any::<u16>(),
            0u32..=0xff_ffff,
            0u32..=0xff_ffff,
        ),
        (any::<u32>(), any::<u64>(), any::<u128>(), any::<u32>()),
    )
        .prop_map(
            |((lid, out_reads, qpn, psn), (rkey, vaddr, gid, srqn))| PerftestKeys {
                lid,
                out_reads,
                qpn: Qpn::new(qpn),
                psn: Psn::new(psn),
                rkey: Rkey(rkey),
                vaddr,
                gid: Ipv6Addr::from(gid),
                srqn,
            },
        )
}

proptest! {
    #[test]
    fn any_keys_round_trip(keys in any_keys()) {
        prop_assert_eq!(PerftestKeys::decode(&keys.encode(KeyFormat::WithGid)), Ok(keys));
        let short = PerftestKeys { gid: Ipv6Addr::UNSPECIFIED, ..keys };
        prop_assert_eq!(PerftestKeys::decode(&keys.encode(KeyFormat::WithoutGid)), Ok(short));
    }

    #[test]
    fn arbitrary_key_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(keys) = PerftestKeys::decode(&bytes) {
            let format = if bytes.len() == KEYS_WITH_GID_LEN { KeyFormat::WithGid } else { KeyFormat::WithoutGid };
            prop_assert_eq!(keys.encode(format), bytes.to_ascii_lowercase());
        }
        let _ = PerftestVersion::decode(&bytes);
        let _ = decode_mtu(&bytes);
    }

    #[test]
    fn arbitrary_report_fields_round_trip(fields in proptest::collection::vec(any::<[u8; 8]>(), 5..=5)) {
        let report = BwReport::decode_fields(&fields).expect("5 fields");
        prop_assert_eq!(report.encode_fields(false), fields);
    }

    #[test]
    fn truncated_client_stream_gives_an_error(cut in 0usize..1000) {
        let result = server_on("write_bw.pcap", Verb::Write, |input| {
            // The last 5 bytes are the client's done, which perftest may not wait for.
            let keep = cut % (input.len() - DONE_MESSAGE.len());
            input.truncate(keep);
        });
        let is_closed = matches!(result, Err(OobError::Closed { .. }));
        prop_assert!(is_closed);
    }

    #[test]
    fn corrupted_client_stream_never_panics(index in 0usize..1000, byte in any::<u8>()) {
        let result = server_on("write_bw.pcap", Verb::Write, |input| {
            let at = index % input.len();
            input[at] = byte;
        });
        if let Err(error) = result {
            prop_assert!(matches!(error, OobError::Message(_) | OobError::IncompatibleVersion { .. }), "{}", error);
        }
    }
}

/// Serves `input`, then fails reads with `end` instead of returning end of stream.
struct EndsWith {
    input: FixedInput,
    end: Option<std::io::ErrorKind>,
}

impl std::io::Read for EndsWith {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self.input.read(buffer)? {
            0 => match self.end {
                Some(kind) => Err(kind.into()),
                None => Ok(0),
            },
            count => Ok(count),
        }
    }
}

impl std::io::Write for EndsWith {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.input.write(buffer)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client side of write_bw.pcap fed the server's bytes with the last `done`
/// replaced by `last`, the stream then ending with `end`.
fn client_with_last(last: &[u8], end: Option<std::io::ErrorKind>) -> Result<(), OobError> {
    let captured = take_apart("write_bw.pcap", Verb::Write);
    let mut input: Vec<u8> = captured
        .messages
        .iter()
        .filter(|m| !m.from_client)
        .flat_map(|m| m.payload.clone())
        .collect();
    input.truncate(input.len() - DONE_MESSAGE.len());
    input.extend_from_slice(last);
    let stream = EndsWith {
        input: FixedInput::new(input),
        end,
    };
    let mut session = client_handshake(
        stream,
        spec(Verb::Write, TestKind::Bandwidth, false),
        PerftestConfig::default(),
        |_| Ok(vec![captured.client_keys]),
        |_| Ok(()),
    )?;
    session.finish(&captured.client_report).map(|_| ())
}

#[test]
fn close_accepts_done_or_a_closed_or_reset_peer_and_nothing_else() {
    use std::io::ErrorKind;
    assert!(client_with_last(&DONE_MESSAGE, None).is_ok());
    // perftest closes right after its done; ours may meet a closed or reset socket.
    assert!(client_with_last(b"", None).is_ok());
    assert!(client_with_last(b"", Some(ErrorKind::ConnectionReset)).is_ok());
    assert!(matches!(
        client_with_last(b"dXne\0", None),
        Err(OobError::Message(MessageError::Layout { offset: 1, .. }))
    ));
    assert!(matches!(
        client_with_last(b"do", None),
        Err(OobError::Message(_))
    ));
    assert!(matches!(
        client_with_last(b"do", Some(ErrorKind::ConnectionReset)),
        Err(OobError::Io(_))
    ));
    // A read timeout before the peer's done names what was waited for.
    assert!(matches!(
        client_with_last(b"", Some(ErrorKind::TimedOut)),
        Err(OobError::TimedOut { message }) if message.contains("\"done\"")
    ));
}

//! rdma-core pingpong exchange: every captured message, byte-exact replays of both
//! sides of `rc_pingpong.pcap` and `ud_pingpong.pcap`, real loopback TCP, and bad input.

mod exchange_common;

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::rc::Rc;
use std::thread;

use exchange_common::{tcp_messages, FixedInput, Message, ScriptedPeer};
use ferroce::wire::psn::Psn;
use ferroce::wire::Qpn;
use ferroce_tools::exchange::pingpong::{
    client_exchange, server_exchange, PingpongDest, DONE_MESSAGE, MESSAGE_LEN,
};
use ferroce_tools::exchange::{MessageError, OobError};
use proptest::prelude::*;

const CAPTURES: [&str; 2] = ["rc_pingpong.pcap", "ud_pingpong.pcap"];

fn gid(text: &str) -> Ipv6Addr {
    text.parse().expect("GID literal")
}

/// The captured exchange, checked for shape: client address, server address, "done".
fn captured(file: &str) -> (Vec<Message>, PingpongDest, PingpongDest) {
    let messages = tcp_messages(file);
    let shape: Vec<(bool, usize)> = messages
        .iter()
        .map(|m| (m.from_client, m.payload.len()))
        .collect();
    assert_eq!(
        shape,
        [(true, MESSAGE_LEN), (false, MESSAGE_LEN), (true, 5)],
        "{file}"
    );
    assert_eq!(messages[2].payload, DONE_MESSAGE);
    let client = PingpongDest::decode(&messages[0].payload).expect("client message");
    let server = PingpongDest::decode(&messages[1].payload).expect("server message");
    (messages, client, server)
}

#[test]
fn captured_messages_parse_to_their_values_and_reencode() {
    // Values read off the captures by eye (tshark follow,tcp): LID 0, QPN 0x11 on both
    // guests, random PSNs, IPv4-mapped GIDs of 10.77.0.11 (client) and .12 (server).
    let expected = [
        ("rc_pingpong.pcap", 0x929d02, 0x8ebca8),
        ("ud_pingpong.pcap", 0x02b9e2, 0xc93f50),
    ];
    for (file, client_psn, server_psn) in expected {
        let (messages, client, server) = captured(file);
        assert_eq!(
            client,
            PingpongDest {
                lid: 0,
                qpn: Qpn::new(0x11),
                psn: Psn::new(client_psn),
                gid: gid("::ffff:10.77.0.11"),
            },
            "{file}"
        );
        assert_eq!(
            server,
            PingpongDest {
                lid: 0,
                qpn: Qpn::new(0x11),
                psn: Psn::new(server_psn),
                gid: gid("::ffff:10.77.0.12"),
            },
            "{file}"
        );
        assert_eq!(client.encode()[..], messages[0].payload[..], "{file}");
        assert_eq!(server.encode()[..], messages[1].payload[..], "{file}");
    }
}

#[test]
fn client_reproduces_the_captured_client() {
    for file in CAPTURES {
        let (messages, client, server) = captured(file);
        let mut peer = ScriptedPeer::new(&messages, true);
        let remote = client_exchange(&mut peer, &client).expect(file);
        assert_eq!(remote, server, "{file}");
        assert!(
            peer.is_finished(),
            "{file}: {} messages left",
            peer.remaining()
        );
    }
}

/// Counts bytes written, so a callback can check it ran before the reply.
struct Counting<S> {
    inner: S,
    written: Rc<Cell<usize>>,
}

impl<S: Read> Read for Counting<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buffer)
    }
}

impl<S: Write> Write for Counting<S> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buffer)?;
        self.written.set(self.written.get() + count);
        Ok(count)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn server_reproduces_the_captured_server_and_calls_back_before_replying() {
    for file in CAPTURES {
        let (messages, client, server) = captured(file);
        let written = Rc::new(Cell::new(0));
        let mut stream = Counting {
            inner: ScriptedPeer::new(&messages, false),
            written: Rc::clone(&written),
        };
        let mut seen = None;
        let remote = server_exchange(&mut stream, &server, |remote| {
            assert_eq!(written.get(), 0, "the callback runs before the reply");
            seen = Some(*remote);
            Ok(())
        })
        .expect(file);
        assert_eq!(remote, client, "{file}");
        assert_eq!(seen, Some(client), "{file}");
        assert_eq!(written.get(), MESSAGE_LEN);
        assert!(stream.inner.is_finished(), "{file}");
    }
}

#[test]
fn failing_callback_sends_nothing() {
    let (messages, _, server) = captured("rc_pingpong.pcap");
    let mut stream = FixedInput::new(messages[0].payload.clone());
    let result = server_exchange(&mut stream, &server, |_| Err("cannot reach RTR".into()));
    match result {
        Err(OobError::Callback(error)) => assert_eq!(error.to_string(), "cannot reach RTR"),
        other => panic!("expected a callback error, got {other:?}"),
    }
    assert!(stream.written.is_empty());
}

#[test]
fn server_refuses_a_wrong_done() {
    let (messages, client, server) = captured("rc_pingpong.pcap");
    let mut input = messages[0].payload.clone();
    input.extend_from_slice(b"dene\0");
    let mut stream = FixedInput::new(input);
    match server_exchange(&mut stream, &server, |_| Ok(())) {
        Err(OobError::Message(MessageError::Layout {
            offset: 1,
            found: b'e',
            ..
        })) => {}
        other => panic!("expected a layout error, got {other:?}"),
    }
    // The reply went out before the bad "done" was read.
    assert_eq!(stream.written, server.encode());
    let _ = client;
}

#[test]
fn early_close_is_reported_with_byte_counts() {
    let (messages, client, _) = captured("rc_pingpong.pcap");
    let mut stream = FixedInput::new(messages[1].payload[..20].to_vec());
    match client_exchange(&mut stream, &client) {
        Err(OobError::Closed {
            expected: 52,
            received: 20,
            ..
        }) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn loopback_tcp_exchange_in_two_threads() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let server_dest = PingpongDest {
        lid: 0,
        qpn: Qpn::new(0x00_1234),
        psn: Psn::new(0xabcdef),
        gid: gid("::ffff:127.0.0.1"),
    };
    let client_dest = PingpongDest {
        lid: 0xffff,
        qpn: Qpn::new(0xff_fffe),
        psn: Psn::new(0x000001),
        gid: gid("fe80::1:2:3:4"),
    };
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut connected_to = None;
        let remote = server_exchange(&mut stream, &server_dest, |remote| {
            connected_to = Some(remote.qpn);
            Ok(())
        })
        .expect("server exchange");
        (remote, connected_to)
    });
    let mut stream = TcpStream::connect(address).expect("connect");
    let remote = client_exchange(&mut stream, &client_dest).expect("client exchange");
    assert_eq!(remote, server_dest);
    let (server_saw, connected_to) = server.join().expect("server thread");
    assert_eq!(server_saw, client_dest);
    assert_eq!(connected_to, Some(client_dest.qpn));
}

fn any_dest() -> impl Strategy<Value = PingpongDest> {
    (
        any::<u16>(),
        0u32..=0xff_ffff,
        0u32..=0xff_ffff,
        any::<u128>(),
    )
        .prop_map(|(lid, qpn, psn, gid)| PingpongDest {
            lid,
            qpn: Qpn::new(qpn),
            psn: Psn::new(psn),
            gid: Ipv6Addr::from(gid),
        })
}

proptest! {
    #[test]
    fn any_dest_round_trips(dest in any_dest()) {
        let bytes = dest.encode();
        prop_assert_eq!(bytes[MESSAGE_LEN - 1], 0);
        prop_assert_eq!(PingpongDest::decode(&bytes), Ok(dest));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(dest) = PingpongDest::decode(&bytes) {
            // Only the fixed layout is accepted; re-encoding gives it back up to hex case.
            prop_assert_eq!(dest.encode().to_vec(), bytes.to_ascii_lowercase());
        }
    }

    #[test]
    fn corrupted_message_is_rejected_or_reads_a_hex_digit(index in 0..MESSAGE_LEN, byte in any::<u8>()) {
        let (messages, client, _) = captured("rc_pingpong.pcap");
        let mut bytes = messages[0].payload.clone();
        bytes[index] = byte;
        match PingpongDest::decode(&bytes) {
            Ok(dest) => prop_assert!(byte.is_ascii_hexdigit() || dest == client),
            Err(MessageError::Layout { offset, .. }) => prop_assert_eq!(offset, index),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn truncated_streams_give_errors(cut in 0usize..57) {
        let (messages, client, server) = captured("rc_pingpong.pcap");
        // The server side fed a truncated client stream (address then "done").
        let mut input = messages[0].payload.clone();
        input.extend_from_slice(&messages[2].payload);
        let mut stream = FixedInput::new(input[..cut].to_vec());
        let is_closed = matches!(server_exchange(&mut stream, &server, |_| Ok(())), Err(OobError::Closed { .. }));
        prop_assert!(is_closed);
        // The client side fed a truncated server address.
        let mut stream = FixedInput::new(messages[1].payload[..cut.min(MESSAGE_LEN - 1)].to_vec());
        let is_closed = matches!(client_exchange(&mut stream, &client), Err(OobError::Closed { .. }));
        prop_assert!(is_closed);
    }
}

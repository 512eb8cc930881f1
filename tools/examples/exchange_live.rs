//! Live check of the out-of-band exchanges alone (no RDMA traffic) against the real
//! rdma-core and perftest tools in the Linux rxe guest of the interop harness
//! (`interop/`), run by hand: it needs a guest running the matching tool commands.
//! `tests/tests/interop_rxe.rs` (the README's test command, as root) runs every tool
//! whole against the guest, traffic included, so this example is for debugging an
//! exchange on its own. Run from `interop/` as root, guest 3 = 10.77.0.13, after
//! `cargo build -p ferroce-tools --example exchange_live`:
//!
//! ```text
//! ./peer.sh -n 3 -t 600 -H 'FERROCE_EXCHANGE_GUEST=10.77.0.13 <repo>/target/debug/examples/exchange_live guest-servers-first' \
//!   'for t in ib_write_bw ib_read_bw ib_atomic_bw ib_read_lat ib_atomic_lat; do
//!      timeout 60 $t -d rxe0 -x 1 || echo "GUEST FAIL $t"; done; sleep 3;
//!    for t in ibv_rc_pingpong ibv_ud_pingpong; do timeout 15 $t -d rxe0 -g 1 -n 1 $RXE_HOST_IP; done;
//!    for t in ib_write_bw ib_send_bw ib_write_lat ib_send_lat; do sleep 2; timeout 15 $t -d rxe0 -x 1 $RXE_HOST_IP; done'
//! ```
//!
//! Phase 1: ferroce is the perftest client of five real perftest servers (the servers
//! need no traffic in these tools: they go straight to the report and close), so the
//! whole exchange runs, and each guest server prints ferroce's report and exits 0.
//! Phase 2: ferroce is the pingpong server of `ibv_rc_pingpong`/`ibv_ud_pingpong`.
//! Phase 3: ferroce is the perftest server of four real perftest clients, up to the
//! traffic (ferroce has no QP behind the keys, so the clients then time out).
//!
//! Last run 2026-11-26, as an ignored test then (guest: Debian 12, rdma-core 44,
//! perftest 4.5-0.17 "6.06"): ok in 124 s; the three guest BW servers printed ferroce's report
//! (`65536 1234 111.11 99.99 0.001599`) and all five servers exited 0; both pingpong
//! clients and all four perftest clients printed ferroce's remote address (QPN 0x0123,
//! PSN 0xabcd, GID ::ffff:10.77.0.1), the perftest clients also their results header
//! (printed after the last pre-traffic barrier), then timed out in the traffic as
//! expected. `guest-servers` passed the same day (124 s): both
//! pingpong servers printed ferroce's address; `ib_send_bw`, `ib_write_lat`,
//! `ib_send_lat` and `ib_write_bw -b` servers reached their results header and no
//! server reported a failed exchange (each was then killed in the traffic).

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ferroce::wire::psn::Psn;
use ferroce::wire::{Qpn, Rkey};
use ferroce_tools::exchange::perftest::{
    client_handshake, server_handshake, BwReport, PerftestConfig, PerftestKeys, TestKind, TestSpec,
    Verb,
};
use ferroce_tools::exchange::pingpong::{client_exchange, server_exchange, PingpongDest};
use ferroce_tools::exchange::DEFAULT_PORT;

fn host_gid() -> Ipv6Addr {
    std::env::var("FERROCE_OOB_HOST_GID")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a4d, 0x0001]))
}

fn keys(verb: Verb) -> PerftestKeys {
    PerftestKeys {
        lid: 0,
        out_reads: if matches!(verb, Verb::Read | Verb::Atomic) {
            0x80
        } else {
            1
        },
        qpn: Qpn::new(0x000123),
        psn: Psn::new(0x00abcd),
        rkey: Rkey(0x0000_1234),
        vaddr: 0x0000_7f00_0000_0000,
        gid: host_gid(),
        srqn: 0,
    }
}

fn connect_with_retry(address: SocketAddr, patience: Duration) -> TcpStream {
    // Counted attempts rather than a clock: the workspace bans Instant::now.
    let pause = Duration::from_millis(200);
    let attempts = patience.as_millis() / pause.as_millis();
    for _ in 0..attempts {
        if let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            return stream;
        }
        std::thread::sleep(pause);
    }
    match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(error) => panic!("nothing listens at {address}: {error}"),
    }
}

/// `guest-servers-first`: the three phases below against the guest command of the
/// file's documentation.
fn live_interop_with_guest_tools() {
    let guest: std::net::Ipv4Addr = std::env::var("FERROCE_EXCHANGE_GUEST")
        .expect("set FERROCE_EXCHANGE_GUEST to the guest's IPv4 address")
        .parse()
        .expect("FERROCE_EXCHANGE_GUEST is an IPv4 address");
    let guest_port = SocketAddr::from((guest, DEFAULT_PORT));

    // Phase 1: ferroce client, guest perftest servers.
    let report = BwReport {
        size: 65536,
        iterations: 1234,
        bw_peak: 111.11,
        bw_average: 99.99,
        message_rate_average: 0.001599,
        per_port: None,
    };
    let tools = [
        (Verb::Write, TestKind::Bandwidth),
        (Verb::Read, TestKind::Bandwidth),
        (Verb::Atomic, TestKind::Bandwidth),
        (Verb::Read, TestKind::Latency),
        (Verb::Atomic, TestKind::Latency),
    ];
    for (verb, kind) in tools {
        let test = TestSpec {
            verb,
            kind,
            duplex: false,
        };
        let stream = connect_with_retry(guest_port, Duration::from_secs(180));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut session = client_handshake(
            stream,
            test,
            PerftestConfig::default(),
            |negotiated| {
                println!("{verb:?} {kind:?}: negotiated {negotiated:?}");
                Ok(vec![keys(verb)])
            },
            |remote| {
                println!("{verb:?} {kind:?}: guest keys {remote:?}");
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{verb:?} {kind:?} handshake: {error}"));
        let remote_report = session
            .finish(&report)
            .unwrap_or_else(|error| panic!("{verb:?} {kind:?} finish: {error}"));
        println!("{verb:?} {kind:?}: finished, guest report {remote_report:?}");
    }

    // Phase 2: ferroce pingpong server, guest pingpong clients.
    let listener = TcpListener::bind(("0.0.0.0", DEFAULT_PORT)).expect("bind 18515");
    for tool in ["ibv_rc_pingpong", "ibv_ud_pingpong"] {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let local = PingpongDest {
            lid: 0,
            qpn: Qpn::new(0x000123),
            psn: Psn::new(0x00abcd),
            gid: host_gid(),
        };
        let remote = server_exchange(&mut stream, &local, |remote| {
            println!("{tool} from {peer}: client says {remote:?}");
            Ok(())
        })
        .unwrap_or_else(|error| panic!("{tool}: {error}"));
        assert_eq!(remote.gid, guest.to_ipv6_mapped(), "{tool}");
        println!("{tool}: exchange done");
    }

    // Phase 3: ferroce perftest server, guest perftest clients, up to the traffic.
    let tools = [
        (Verb::Write, TestKind::Bandwidth),
        (Verb::Send, TestKind::Bandwidth),
        (Verb::Write, TestKind::Latency),
        (Verb::Send, TestKind::Latency),
    ];
    for (verb, kind) in tools {
        let test = TestSpec {
            verb,
            kind,
            duplex: false,
        };
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let session = server_handshake(
            stream,
            test,
            PerftestConfig::default(),
            |_| Ok(vec![keys(verb)]),
            |remote| {
                println!("{verb:?} {kind:?} server: guest keys {remote:?}");
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{verb:?} {kind:?} server handshake: {error}"));
        assert_eq!(session.remote_keys()[0].gid, guest.to_ipv6_mapped());
        println!("{verb:?} {kind:?} server: ready for traffic");
    }
}

/// The roles the first test leaves out: ferroce as pingpong client of the guest's
/// `ibv_rc_pingpong`/`ibv_ud_pingpong` servers, and as perftest client up to the
/// traffic of servers that need traffic (`ib_send_bw`, `ib_write_lat`, `ib_send_lat`,
/// `ib_write_bw -b`): `guest-servers`, with the guest command
/// `for t in ibv_rc_pingpong ibv_ud_pingpong; do timeout 20 $t -d rxe0 -g 1 -n 1; done;
///  for t in ib_send_bw ib_write_lat ib_send_lat "ib_write_bw -b"; do timeout 20 $t -d rxe0 -x 1; done`.
fn live_guest_servers_up_to_traffic() {
    let guest: std::net::Ipv4Addr = std::env::var("FERROCE_EXCHANGE_GUEST")
        .expect("set FERROCE_EXCHANGE_GUEST to the guest's IPv4 address")
        .parse()
        .expect("FERROCE_EXCHANGE_GUEST is an IPv4 address");
    let guest_port = SocketAddr::from((guest, DEFAULT_PORT));
    for tool in ["ibv_rc_pingpong", "ibv_ud_pingpong"] {
        let mut stream = connect_with_retry(guest_port, Duration::from_secs(180));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let local = PingpongDest {
            lid: 0,
            qpn: Qpn::new(0x000123),
            psn: Psn::new(0x00abcd),
            gid: host_gid(),
        };
        let remote =
            client_exchange(&mut stream, &local).unwrap_or_else(|error| panic!("{tool}: {error}"));
        println!("{tool}: server says {remote:?}");
        assert_eq!(remote.gid, guest.to_ipv6_mapped(), "{tool}");
    }
    let tools = [
        (Verb::Send, TestKind::Bandwidth, false),
        (Verb::Write, TestKind::Latency, false),
        (Verb::Send, TestKind::Latency, false),
        (Verb::Write, TestKind::Bandwidth, true),
    ];
    for (verb, kind, duplex) in tools {
        let test = TestSpec { verb, kind, duplex };
        let stream = connect_with_retry(guest_port, Duration::from_secs(60));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let session = client_handshake(
            stream,
            test,
            PerftestConfig::default(),
            |_| Ok(vec![keys(verb)]),
            |remote| {
                println!("{test:?}: guest keys {remote:?}");
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{test:?} handshake: {error}"));
        assert_eq!(session.remote_keys()[0].gid, guest.to_ipv6_mapped());
        println!("{test:?}: all pre-traffic exchanges done");
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("guest-servers-first") => live_interop_with_guest_tools(),
        Some("guest-servers") => live_guest_servers_up_to_traffic(),
        _ => {
            eprintln!(
                "usage: FERROCE_EXCHANGE_GUEST=<guest IPv4> exchange_live guest-servers-first|guest-servers \
                 (see the source's documentation for the guest commands)"
            );
            std::process::exit(2);
        }
    }
    println!("ok");
}

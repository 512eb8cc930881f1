//! How received IPv4 datagrams' ICRCs are checked (`ReceiveIntegrity`), with datagrams
//! whose IP header the test writes itself through a raw socket: identification, DF and
//! an ICRC that is right, or right only for another identification. Raw sockets need
//! `CAP_NET_RAW`: those tests are ignored by a plain `cargo test` and run, as root, by the
//! README's test command (`--include-ignored`); run without the capability, they fail
//! saying so.

#![allow(clippy::disallowed_methods)] // Deadlines of real waits.
#![allow(clippy::unwrap_used)] // Helpers shared by the tests unwrap like the tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod two_devices;

use ferroce::transport::io::thread::ThreadCounters;
use ferroce::wire::icrc::{self, Envelope, IpFields, IPV4_DONT_FRAG};
use ferroce::{
    Counters, Device, DeviceConfig, DriverKind, QpInitAttributes, QpType, ReceiveIntegrity,
    RecvRequest, SendRequest, SolverLimits, WcStatus,
};
use two_devices::{all_access, connect, one, pattern, WAIT};

fn address(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 81, a, b)
}

fn open(ip: Ipv4Addr, integrity: ReceiveIntegrity) -> Device {
    open_with(ip, integrity, DriverKind::Auto)
}

fn open_with(ip: Ipv4Addr, integrity: ReceiveIntegrity, driver: DriverKind) -> Device {
    let mut config = DeviceConfig::with_address(IpAddr::V4(ip));
    config.receive_integrity = integrity;
    config.driver = driver;
    Device::open(config).expect("bind the test address")
}

/// Why the tests that send raw packets are ignored by a plain `cargo test`.
const NEEDS_NET_RAW: &str =
    "needs CAP_NET_RAW (root): run as root with `cargo test --workspace -- --include-ignored`";

/// A raw socket that sends IPv4 packets whose header the caller writes; `None` without
/// `CAP_NET_RAW`.
fn try_raw_sender() -> Option<Socket> {
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW))).ok()
}

/// The raw sender of a test that cannot run without one: fails loudly when missing.
fn raw_sender() -> Socket {
    try_raw_sender().unwrap_or_else(|| panic!("no raw socket: this test {NEEDS_NET_RAW}"))
}

/// `IPPROTO_RAW`: the caller writes the IP header.
const IPPROTO_RAW: i32 = 255;

/// Where a crafted datagram comes from and what its IP header says.
#[derive(Clone, Copy)]
struct Header {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    ident: u16,
    dont_frag: bool,
}

impl Header {
    fn envelope(self, ident: u16) -> Envelope {
        Envelope {
            ip: IpFields::V4 {
                src: self.src,
                dst: self.dst,
                ident,
                flags_frag: if self.dont_frag { IPV4_DONT_FRAG } else { 0 },
            },
            src_port: self.src_port,
            dst_port: 4791,
        }
    }
}

/// Sends `udp_payload` to port 4791 with exactly `header`'s IP header fields.
fn send_raw(socket: &Socket, header: Header, udp_payload: &[u8]) {
    let total = 28 + udp_payload.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&header.ident.to_be_bytes());
    let flags: u16 = if header.dont_frag { IPV4_DONT_FRAG } else { 0 };
    packet.extend_from_slice(&flags.to_be_bytes());
    packet.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum (the kernel's)
    packet.extend_from_slice(&header.src.octets());
    packet.extend_from_slice(&header.dst.octets());
    packet.extend_from_slice(&header.src_port.to_be_bytes());
    packet.extend_from_slice(&4791u16.to_be_bytes());
    packet.extend_from_slice(&((8 + udp_payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no UDP checksum
    packet.extend_from_slice(udp_payload);
    let to = SockAddr::from(std::net::SocketAddrV4::new(header.dst, 0));
    assert_eq!(socket.send_to(&packet, &to).unwrap(), total);
}

/// An RC SEND Only to QP 0x11 with 16 payload bytes, its ICRC right for the header
/// with identification `icrc_ident`.
fn send_only(header: Header, icrc_ident: u16) -> Vec<u8> {
    let mut packet = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
    packet.extend_from_slice(&[0xab; 16]);
    packet.extend_from_slice(&[0; 4]);
    icrc::fill(&header.envelope(icrc_ident), &mut packet).unwrap();
    packet
}

/// The device's counters once it has taken `packets` datagrams in.
fn counters_after(device: &Device, packets: u64) -> (Counters, ThreadCounters) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (counters, thread) = device.counters().unwrap();
        if counters.packets_in >= packets {
            return (counters, thread);
        }
        assert!(Instant::now() < deadline, "{counters:?} {thread:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// rxe always sets DF, so recovery requires it: a datagram sent without DF, its ICRC
/// right for its real header, is an ICRC error when the header is unseen.
#[test]
#[ignore = "needs CAP_NET_RAW (root): run as root with `cargo test --workspace -- --include-ignored`"]
fn a_datagram_without_df_is_refused_when_recovered() {
    let raw = raw_sender();
    let device = open(address(1, 1), ReceiveIntegrity::default());
    let header = Header {
        src: address(1, 2),
        dst: address(1, 1),
        src_port: 0xc123,
        ident: 0x1234,
        dont_frag: false,
    };
    send_raw(&raw, header, &send_only(header, 0x1234));
    let (counters, thread) = counters_after(&device, 1);
    assert_eq!(
        (counters.icrc_errors, thread.ident_unrecovered),
        (1, 1),
        "{counters:?} {thread:?}"
    );
}

/// A datagram sent with identification 0x1234 whose ICRC is right for 0x4321: damage
/// that recovery cannot see (it takes 0x4321), and the full ICRC does.
#[test]
#[ignore = "needs CAP_NET_RAW (root): run as root with `cargo test --workspace -- --include-ignored`"]
fn full_icrc_drops_what_recovery_accepts() {
    let raw = raw_sender();
    let recovered = open(address(2, 1), ReceiveIntegrity::default());
    let full = open(address(2, 2), ReceiveIntegrity::FullIcrc);
    for (device, dst) in [(&recovered, address(2, 1)), (&full, address(2, 2))] {
        let header = Header {
            src: address(2, 3),
            dst,
            src_port: 0xc123,
            ident: 0x1234,
            dont_frag: true,
        };
        send_raw(&raw, header, &send_only(header, 0x4321));
        let (counters, _) = counters_after(device, 1);
        // Then an intact one: both accept it.
        send_raw(&raw, header, &send_only(header, 0x1234));
        let (after, thread) = counters_after(device, 2);
        let accepted_damaged = counters.icrc_errors == 0;
        if dst == address(2, 1) {
            assert!(accepted_damaged, "recovered: {counters:?}");
            assert_eq!(thread.ident_nonzero, 2, "{thread:?}");
        } else {
            assert!(!accepted_damaged, "full ICRC: {counters:?}");
            assert_eq!(thread.ip_header_seen, 2, "{thread:?}");
        }
        assert_eq!(after.icrc_errors, counters.icrc_errors, "{after:?}");
    }
}

/// Two full-ICRC devices run RC traffic over loopback, GSO runs included (their raw
/// copies arrive whole and are split by the UDP socket's segments): every datagram
/// finds its header and passes the full ICRC.
#[test]
#[ignore = "needs CAP_NET_RAW (root): run as root with `cargo test --workspace -- --include-ignored`"]
fn full_icrc_devices_exchange_rc_traffic() {
    raw_sender(); // the devices open raw sockets: fail here, saying why, without one
    full_icrc_exchange(3, DriverKind::Auto);
    full_icrc_exchange(5, DriverKind::Socket);
}

fn full_icrc_exchange(net: u8, driver: DriverKind) {
    let sides: Vec<_> = [address(net, 1), address(net, 2)]
        .into_iter()
        .map(|ip| {
            let device = open_with(ip, ReceiveIntegrity::FullIcrc, driver);
            let pd = device.alloc_pd().unwrap();
            let cq = device.create_cq(64, None).unwrap();
            let mr = pd.reg_mr(1 << 20, all_access()).unwrap();
            let qp = pd
                .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
                .unwrap();
            (device, cq, mr, qp)
        })
        .collect();
    let [(a, a_cq, a_mr, a_qp), (b, b_cq, b_mr, b_qp)] = &sides[..] else {
        unreachable!()
    };
    connect((a, a_qp), (b, b_qp), (100, 200));
    let data = pattern(1 << 19, 3);
    a_mr.write(0, &data).unwrap();
    a_qp.post_send(SendRequest::write(1, b_mr.addr(), b_mr.rkey()).sge(a_mr, 0, 1 << 19))
        .unwrap();
    assert_eq!(one(a_cq).status, WcStatus::Success);
    assert_eq!(b_mr.to_vec(0, 1 << 19).unwrap(), data);
    b_qp.post_recv(RecvRequest::new(2).sge(b_mr, 0, 4096))
        .unwrap();
    a_qp.post_send(SendRequest::send(3).sge(a_mr, 0, 3000))
        .unwrap();
    assert_eq!(one(a_cq).status, WcStatus::Success);
    assert_eq!(one(b_cq).status, WcStatus::Success);
    for device in [a, b] {
        let (counters, thread) = device.counters().unwrap();
        assert_eq!(
            (counters.icrc_errors, thread.ip_header_missing),
            (0, 0),
            "{counters:?} {thread:?}"
        );
        assert_eq!(thread.ip_header_seen, counters.packets_in, "{thread:?}");
        assert_eq!(thread.ident_solvers_built, 0, "{driver:?}");
    }
}

/// Asking for the full ICRC without `CAP_NET_RAW` fails to open the device, and the
/// error says what is missing. As root, the test runs itself again under `setpriv`
/// with `CAP_NET_RAW` out of the bounding set.
#[test]
fn full_icrc_without_cap_net_raw_is_a_clear_error() {
    const CHILD: &str = "FERROCE_TEST_WITHOUT_NET_RAW";
    if std::env::var_os(CHILD).is_some() || try_raw_sender().is_none() {
        let mut config = DeviceConfig::with_address(IpAddr::V4(address(4, 1)));
        config.receive_integrity = ReceiveIntegrity::FullIcrc;
        let error = Device::open(config).expect_err("opened without CAP_NET_RAW");
        assert!(error.to_string().contains("CAP_NET_RAW"), "{error}");
        return;
    }
    let run = std::process::Command::new("setpriv")
        .args(["--bounding-set", "-net_raw", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "full_icrc_without_cap_net_raw_is_a_clear_error"])
        .env(CHILD, "1")
        .output();
    match run {
        Ok(out) => assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(error) => panic!("setpriv (util-linux) could not run: {error}"),
    }
}

/// A peer sending a new length in every datagram (each with a valid ICRC for a
/// non-zero identification) gets the configured burst of solvers and the rate after
/// it; the rest of its datagrams are dropped and counted, and the cache stays bounded.
#[test]
#[ignore = "needs CAP_NET_RAW (root): run as root with `cargo test --workspace -- --include-ignored`"]
fn a_stream_of_new_lengths_is_rationed() {
    let raw = raw_sender();
    let limits = SolverLimits {
        cached: 16,
        builds_per_second: 10,
        build_burst: 8,
    };
    let device = open(address(6, 1), ReceiveIntegrity::Recovered(limits));
    let header = Header {
        src: address(6, 2),
        dst: address(6, 1),
        src_port: 0xc123,
        ident: 0x1234,
        dont_frag: true,
    };
    let start = Instant::now();
    for i in 0..200 {
        let mut packet = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
        packet.resize(16 + 4 * i, 0xab);
        icrc::fill(&header.envelope(0x1234), &mut packet).unwrap();
        send_raw(&raw, header, &packet);
    }
    let deadline = Instant::now() + WAIT;
    let thread = loop {
        let (_, thread) = device.counters().unwrap();
        if thread.ident_nonzero + thread.ident_over_budget == 200 {
            break thread;
        }
        assert!(Instant::now() < deadline, "{thread:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let earned = (start.elapsed().as_secs_f64() * 10.0).ceil() as u64;
    assert!(
        (8..=8 + earned).contains(&thread.ident_solvers_built),
        "{thread:?} after {:?}",
        start.elapsed()
    );
    assert_eq!(
        thread.ident_nonzero, thread.ident_solvers_built,
        "{thread:?}"
    );
}

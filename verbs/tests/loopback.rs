//! Two devices over real loopback UDP (each on its own 127.x address, port 4791), for
//! both driver kinds: every RC operation with data checks, UD, and resource cleanup.

#![allow(clippy::disallowed_methods)] // Deadlines of real waits.
#![allow(clippy::unwrap_used)] // Helpers shared by the tests unwrap like the tests.

use std::net::IpAddr;
use std::time::Duration;

mod two_devices;

use ferroce::wire::Psn;
use ferroce::{
    CompletionQueue, Device, DeviceConfig, DeviceLimits, DriverKind, Error, MemoryRegion, PathMtu,
    QpInitAttributes, QpState, QpType, QueuePair, RecvRequest, RemoteEndpoint, SendRequest,
    VerbsError, WcOpcode, WcStatus,
};
use two_devices::{all_access, connect, one, pattern, WAIT};

const MR_LEN: u64 = 1 << 16;

fn address(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(127, 77, a, b))
}

/// Whether the io_uring driver's tests run: they fail when this kernel refuses an
/// io_uring (a container's seccomp profile, say), unless `FERROCE_TESTS_WITHOUT_URING=1`
/// says the host cannot have one (README, "Tests"); then they skip, saying so.
fn uring_available() -> bool {
    let probe = ferroce::transport::io::UringDriver::bind("127.77.250.1:0".parse().unwrap());
    match probe {
        Ok(_) => true,
        Err(error) if std::env::var_os("FERROCE_TESTS_WITHOUT_URING").is_some() => {
            eprintln!("io_uring unavailable here ({error}); skipped (FERROCE_TESTS_WITHOUT_URING)");
            false
        }
        Err(error) => panic!(
            "io_uring unavailable here ({error}): the io_uring driver is untested; \
             set FERROCE_TESTS_WITHOUT_URING=1 to skip its tests on a host that cannot have one"
        ),
    }
}

fn open(ip: IpAddr, driver: DriverKind) -> Device {
    let mut config = DeviceConfig::with_address(ip);
    config.driver = driver;
    Device::open(config).expect("bind the test address")
}

struct Side {
    device: Device,
    cq: CompletionQueue,
    mr: MemoryRegion,
    qp: QueuePair,
}

fn side(ip: IpAddr, driver: DriverKind, qp_type: QpType) -> Side {
    let device = open(ip, driver);
    let pd = device.alloc_pd().unwrap();
    let cq = device.create_cq(256, None).unwrap();
    let mr = pd.reg_mr(MR_LEN, all_access()).unwrap();
    let qp = pd.create_qp(&QpInitAttributes::new(qp_type, &cq)).unwrap();
    Side { device, cq, mr, qp }
}

/// Two connected QPs of `qp_type` on devices at 127.77.`net`.1 and .2.
fn pair(net: u8, driver: DriverKind, qp_type: QpType) -> (Side, Side) {
    let a = side(address(net, 1), driver, qp_type);
    let b = side(address(net, 2), driver, qp_type);
    for s in [&a, &b] {
        let kinds: Vec<DriverKind> = s.device.drivers().iter().map(|d| d.1).collect();
        if driver != DriverKind::Auto {
            assert_eq!(kinds, vec![driver]);
        }
    }
    connect((&a.device, &a.qp), (&b.device, &b.qp), (0x1000, 0xff_fff0));
    (a, b)
}

fn rc_operations(net: u8, driver: DriverKind) {
    let (a, b) = pair(net, driver, QpType::Rc);

    // SEND of 5000 bytes (five packets at MTU 1024) into a posted receive.
    let data = pattern(5000, 1);
    a.mr.write(0, &data).unwrap();
    b.qp.post_recv(RecvRequest::new(10).sge(&b.mr, 0, 8192))
        .unwrap();
    a.qp.post_send(SendRequest::send(1).sge(&a.mr, 0, 5000))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1, WcStatus::Success, WcOpcode::Send)
    );
    let wc = one(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len, wc.imm_data),
        (10, WcStatus::Success, WcOpcode::Recv, 5000, None)
    );
    assert_eq!(wc.src_qp, a.qp.qp_num());
    assert_eq!(b.mr.to_vec(0, 5000).unwrap(), data);

    // SEND with immediate.
    b.qp.post_recv(RecvRequest::new(11).sge(&b.mr, 8192, 100))
        .unwrap();
    a.qp.post_send(SendRequest::send_with_imm(2, 0xdead_beef).inline(b"imm!"))
        .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    let wc = one(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.byte_len, wc.imm_data),
        (11, WcStatus::Success, 4, Some(0xdead_beef))
    );
    assert_eq!(b.mr.to_vec(8192, 4).unwrap(), b"imm!");

    // RDMA WRITE of 20000 bytes at an offset.
    let data = pattern(20_000, 7);
    a.mr.write(100, &data).unwrap();
    a.qp.post_send(
        SendRequest::write(3, b.mr.addr() + 30_000, b.mr.rkey()).sge(&a.mr, 100, 20_000),
    )
    .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (3, WcStatus::Success, WcOpcode::RdmaWrite)
    );
    assert_eq!(b.mr.to_vec(30_000, 20_000).unwrap(), data);

    // RDMA WRITE with immediate: data lands, a receive completes with the immediate.
    let data = pattern(1500, 9);
    a.mr.write(0, &data).unwrap();
    b.qp.post_recv(RecvRequest::new(12)).unwrap();
    a.qp.post_send(
        SendRequest::write_with_imm(4, b.mr.addr() + 60_000, b.mr.rkey(), 77).sge(&a.mr, 0, 1500),
    )
    .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    let wc = one(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.imm_data, wc.byte_len),
        (
            12,
            WcStatus::Success,
            WcOpcode::RecvRdmaWithImm,
            Some(77),
            1500
        )
    );
    assert_eq!(b.mr.to_vec(60_000, 1500).unwrap(), data);

    // RDMA READ of 9000 bytes from B into A.
    let data = pattern(9000, 3);
    b.mr.write(1000, &data).unwrap();
    a.qp.post_send(SendRequest::read(5, b.mr.addr() + 1000, b.mr.rkey()).sge(&a.mr, 40_000, 9000))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (5, WcStatus::Success, WcOpcode::RdmaRead, 9000)
    );
    assert_eq!(a.mr.to_vec(40_000, 9000).unwrap(), data);

    // Compare-and-swap (hit, then miss) and fetch-and-add on B's 8 bytes at 50_000.
    b.mr.write_u64(50_000, 41).unwrap();
    let remote = b.mr.addr() + 50_000;
    a.qp.post_send(SendRequest::compare_swap(6, remote, b.mr.rkey(), 41, 1000).sge(&a.mr, 0, 8))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::CompSwap)
    );
    assert_eq!(a.mr.read_u64(0).unwrap(), 41);
    assert_eq!(b.mr.read_u64(50_000).unwrap(), 1000);
    a.qp.post_send(SendRequest::compare_swap(7, remote, b.mr.rkey(), 41, 5).sge(&a.mr, 8, 8))
        .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    assert_eq!(a.mr.read_u64(8).unwrap(), 1000);
    assert_eq!(
        b.mr.read_u64(50_000).unwrap(),
        1000,
        "a missed compare swaps nothing"
    );
    a.qp.post_send(SendRequest::fetch_add(8, remote, b.mr.rkey(), 23).sge(&a.mr, 16, 8))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_eq!(a.mr.read_u64(16).unwrap(), 1000);
    assert_eq!(b.mr.read_u64(50_000).unwrap(), 1023);

    // A bad rkey is a remote access error, and the QP goes to the error state.
    a.qp.post_send(
        SendRequest::write(9, b.mr.addr(), ferroce::wire::Rkey(b.mr.rkey().0 ^ 0x55))
            .sge(&a.mr, 0, 8),
    )
    .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::RemAccessErr);
    assert_eq!(a.qp.query().unwrap().state, QpState::Err);

    let (counters, thread) = b.device.counters().unwrap();
    assert_eq!(counters.icrc_errors, 0);
    assert_eq!(thread.ident_unrecovered, 0);
    assert!(counters.packets_in > 20);
}

#[test]
fn rc_operations_socket_driver() {
    rc_operations(1, DriverKind::Socket);
}

#[test]
fn rc_operations_uring_driver() {
    if !uring_available() {
        return;
    }
    rc_operations(2, DriverKind::Uring);
}

/// Many messages in flight at once: every byte arrives, completions in order.
fn rc_pipeline(net: u8, driver: DriverKind) {
    let (a, b) = pair(net, driver, QpType::Rc);
    let data = pattern(MR_LEN as usize, 5);
    a.mr.write(0, &data).unwrap();
    // 64 WRITEs of 1 KiB (one packet each), then 16 WRITEs of 4 KiB, all at once.
    for i in 0..64u64 {
        a.qp.post_send(
            SendRequest::write(i, b.mr.addr() + i * 1024, b.mr.rkey()).sge(&a.mr, i * 1024, 1024),
        )
        .unwrap();
    }
    for i in 0..4u64 {
        let offset = 0x1_0000 - 0x4000 + i * 4096;
        a.qp.post_send(
            SendRequest::write(100 + i, b.mr.addr() + offset, b.mr.rkey()).sge(&a.mr, offset, 4096),
        )
        .unwrap();
    }
    let wcs = a.cq.poll_wait(68, WAIT).unwrap();
    let ids: Vec<u64> = wcs.iter().map(|w| w.wr_id).collect();
    let mut expected: Vec<u64> = (0..64).collect();
    expected.extend(100..104);
    assert_eq!(ids, expected);
    assert!(wcs.iter().all(|w| w.status == WcStatus::Success));
    assert_eq!(b.mr.to_vec(0, MR_LEN as usize).unwrap(), data);
    // Runs of equal-sized datagrams went out as GSO sends, whose segments carry IP
    // idents 1, 2, …: the receiver recovered them and every ICRC checked.
    let (counters, thread) = b.device.counters().unwrap();
    assert_eq!((counters.icrc_errors, thread.ident_unrecovered), (0, 0));
    assert!(thread.ident_nonzero > 0, "{thread:?}");
}

#[test]
fn rc_pipeline_socket_driver() {
    rc_pipeline(3, DriverKind::Socket);
}

#[test]
fn rc_pipeline_uring_driver() {
    if !uring_available() {
        return;
    }
    rc_pipeline(4, DriverKind::Uring);
}

fn ud_send(net: u8, driver: DriverKind) {
    const QKEY: u32 = 0x1111_2222;
    let a = side(address(net, 1), driver, QpType::Ud);
    let b = side(address(net, 2), driver, QpType::Ud);
    a.qp.activate_ud(QKEY, Psn::new(1)).unwrap();
    b.qp.activate_ud(QKEY, Psn::new(2)).unwrap();
    // UD receives start with 40 bytes of GRH space.
    b.qp.post_recv(RecvRequest::new(20).sge(&b.mr, 0, 40 + 1024))
        .unwrap();
    let data = pattern(1000, 11);
    a.mr.write(0, &data).unwrap();
    let to = b.device.query_gid(0).unwrap();
    a.qp.post_send(SendRequest::send_with_imm(21, 5).sge(&a.mr, 0, 1000).ud(
        to,
        b.qp.qp_num(),
        QKEY,
    ))
    .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    let wc = one(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.byte_len, wc.imm_data, wc.grh),
        (20, WcStatus::Success, 1040, Some(5), true)
    );
    assert_eq!(wc.src_qp, a.qp.qp_num());
    assert_eq!(b.mr.to_vec(40, 1000).unwrap(), data);

    // A wrong Q_Key is dropped by the receiver: no completion there.
    b.qp.post_recv(RecvRequest::new(22).sge(&b.mr, 0, 1064))
        .unwrap();
    a.qp.post_send(
        SendRequest::send(23)
            .sge(&a.mr, 0, 10)
            .ud(to, b.qp.qp_num(), 0x0bad),
    )
    .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    assert!(!b.cq.wait(Some(Duration::from_millis(200))));
    assert_eq!(b.device.counters().unwrap().0.drops.qkey_mismatch, 1);
}

#[test]
fn ud_send_socket_driver() {
    ud_send(5, DriverKind::Socket);
}

#[test]
fn ud_send_uring_driver() {
    if !uring_available() {
        return;
    }
    ud_send(6, DriverKind::Uring);
}

/// Errors the API reports itself, and errors the engine reports as completions.
#[test]
fn misuse_is_an_error() {
    let a = side(address(7, 1), DriverKind::Auto, QpType::Rc);
    // Posting before the QP is ready.
    assert!(matches!(
        a.qp.post_send(SendRequest::send(1).sge(&a.mr, 0, 8)),
        Err(Error::Verbs(VerbsError::InvalidState(QpState::Reset)))
    ));
    assert!(a.qp.post_recv(RecvRequest::new(1)).is_err());
    // Ranges outside the region.
    assert!(a.mr.write(MR_LEN - 4, &[0; 8]).is_err());
    assert!(a.mr.to_vec(u64::MAX, 2).is_err());
    // RTR without its attributes.
    a.qp.modify(&ferroce::QpAttr {
        state: Some(QpState::Init),
        pkey_index: Some(0),
        port_num: Some(1),
        access: Some(all_access()),
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        a.qp.modify(&ferroce::QpAttr {
            state: Some(QpState::Rtr),
            ..Default::default()
        }),
        Err(Error::Verbs(VerbsError::MissingAttribute(_)))
    ));
    // Too many SGEs.
    let mut wr = RecvRequest::new(2);
    for _ in 0..5 {
        wr = wr.sge(&a.mr, 0, 1);
    }
    assert!(a.qp.post_recv(wr).is_err());
    // A CQ of another device.
    let other = open(address(7, 2), DriverKind::Auto);
    let foreign = other.create_cq(4, None).unwrap();
    let pd = a.device.alloc_pd().unwrap();
    assert!(pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &foreign))
        .is_err());
    // A CQ of 0 entries.
    assert!(a.device.create_cq(0, None).is_err());
}

/// The completion channel reports armed CQs; `wait` blocks until a completion.
#[test]
fn completion_channel_and_wait() {
    let net = 8;
    let a = side(address(net, 1), DriverKind::Auto, QpType::Rc);
    let channel = a.device.create_comp_channel();
    let b_device = open(address(net, 2), DriverKind::Auto);
    let b_cq = b_device.create_cq(16, Some(&channel)).unwrap_err_or_cq();
    let b_pd = b_device.alloc_pd().unwrap();
    let b_mr = b_pd.reg_mr(4096, all_access()).unwrap();
    let b_qp = b_pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &b_cq))
        .unwrap();
    let end_a = RemoteEndpoint {
        address: address(net, 1),
        qpn: a.qp.qp_num(),
        psn: Psn::new(0),
    };
    let end_b = RemoteEndpoint {
        address: address(net, 2),
        qpn: b_qp.qp_num(),
        psn: Psn::new(0),
    };
    a.qp.connect(end_b, Psn::new(0), PathMtu::Mtu1024, all_access())
        .unwrap();
    b_qp.connect(end_a, Psn::new(0), PathMtu::Mtu1024, all_access())
        .unwrap();
    b_cq.req_notify();
    assert_eq!(channel.get_cq_event(Some(Duration::from_millis(50))), None);
    b_qp.post_recv(RecvRequest::new(1).sge(&b_mr, 0, 64))
        .unwrap();
    let waiter = {
        let cq = b_cq.clone();
        std::thread::spawn(move || cq.wait(Some(WAIT)))
    };
    std::thread::sleep(Duration::from_millis(50));
    a.qp.post_send(SendRequest::send(2).inline(b"wake"))
        .unwrap();
    assert!(waiter.join().unwrap());
    assert_eq!(channel.get_cq_event(Some(WAIT)), Some(b_cq.handle()));
    // Not re-armed: no second event.
    b_qp.post_recv(RecvRequest::new(3).sge(&b_mr, 0, 64))
        .unwrap();
    a.qp.post_send(SendRequest::send(4).inline(b"again"))
        .unwrap();
    assert_eq!(b_cq.poll_wait(2, WAIT).unwrap().len(), 2);
    assert_eq!(channel.get_cq_event(Some(Duration::from_millis(50))), None);
}

trait CqOrPanic {
    fn unwrap_err_or_cq(self) -> CompletionQueue;
}

impl CqOrPanic for Result<CompletionQueue, Error> {
    fn unwrap_err_or_cq(self) -> CompletionQueue {
        self.expect("create a CQ")
    }
}

/// Dropping handles releases their resources; dropping a device and its handles stops
/// the engine thread and frees its socket.
#[test]
fn drop_releases_resources() {
    let ip = address(9, 1);
    let mut config = DeviceConfig::with_address(ip);
    config.limits = DeviceLimits {
        max_mr: 2,
        max_qp: 1,
        max_cq: 1,
        max_pd: 1,
        ..DeviceLimits::default()
    };
    let device = Device::open(config.clone()).unwrap();
    let pd = device.alloc_pd().unwrap();
    assert!(device.alloc_pd().is_err(), "max_pd is 1");
    let first = pd.reg_mr(64, all_access()).unwrap();
    let second = pd.reg_mr(64, all_access()).unwrap();
    assert!(pd.reg_mr(64, all_access()).is_err(), "max_mr is 2");
    drop(first);
    let third = pd.reg_mr(64, all_access()).unwrap();
    let cq = device.create_cq(8, None).unwrap();
    assert!(device.create_cq(8, None).is_err(), "max_cq is 1");
    let qp = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    assert!(pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .is_err());
    drop(qp);
    let qp = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    // The PD and CQ outlive their handles while the QP and MRs use them.
    drop(pd);
    drop(cq);
    assert!(device.alloc_pd().is_err(), "the PD is still held by the QP");
    drop((qp, second, third));
    let pd = device.alloc_pd().unwrap();
    assert!(device.create_cq(8, None).is_ok());
    // While a handle lives, the device (and its socket) does.
    drop(device);
    assert!(
        Device::open(config.clone()).is_err(),
        "the address is still bound"
    );
    drop(pd);
    let again = Device::open(config).expect("the thread stopped and freed the socket");
    assert!(again.query_device().is_ok());
}

/// A region's keys die with it: a peer's WRITE with the old rkey fails.
#[test]
fn dropped_region_refuses_remote_all_access() {
    let (a, b) = pair(10, DriverKind::Auto, QpType::Rc);
    let pd = b.device.alloc_pd().unwrap();
    let doomed = pd.reg_mr(4096, all_access()).unwrap();
    let (addr, rkey) = (doomed.addr(), doomed.rkey());
    drop(doomed);
    a.qp.post_send(SendRequest::write(1, addr, rkey).sge(&a.mr, 0, 16))
        .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::RemAccessErr);
}

/// A datagram whose ICRC no IPv4 identification can fix is counted and dropped.
#[test]
fn corrupt_datagram_is_counted() {
    let ip = address(11, 1);
    let device = open(ip, DriverKind::Auto);
    let socket = std::net::UdpSocket::bind((address(11, 2), 0)).unwrap();
    // RC SEND Only to QP 0x11, PSN 5, 16 payload bytes, and an ICRC of zeroes.
    let mut packet = vec![0x04, 0, 0xff, 0xff, 0, 0, 0, 0x11, 0, 0, 0, 5];
    packet.extend_from_slice(&[0xab; 16]);
    packet.extend_from_slice(&[0; 4]);
    socket.send_to(&packet, (ip, 4791)).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (counters, thread) = device.counters().unwrap();
        if counters.packets_in == 1 {
            assert_eq!((counters.icrc_errors, thread.ident_unrecovered), (1, 1));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the datagram never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every handle can be shared across threads.
#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Device>();
    send_sync::<ferroce::ProtectionDomain>();
    send_sync::<MemoryRegion>();
    send_sync::<CompletionQueue>();
    send_sync::<ferroce::CompletionChannel>();
    send_sync::<QueuePair>();
    send_sync::<ferroce::SharedReceiveQueue>();
}

/// IPv6: two QPs of one device on ::1 talk through the kernel's loopback (the ICRC is
/// verified in full, with no identification to recover).
#[test]
fn ipv6_rc_write_and_send() {
    let ip: IpAddr = "::1".parse().unwrap();
    let device = open(ip, DriverKind::Auto);
    let pd = device.alloc_pd().unwrap();
    let cq = device.create_cq(64, None).unwrap();
    let mr = pd.reg_mr(MR_LEN, all_access()).unwrap();
    let a = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    let b = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    let end = |qp: &QueuePair| RemoteEndpoint {
        address: ip,
        qpn: qp.qp_num(),
        psn: Psn::new(9),
    };
    a.connect(end(&b), Psn::new(9), PathMtu::Mtu1024, all_access())
        .unwrap();
    b.connect(end(&a), Psn::new(9), PathMtu::Mtu1024, all_access())
        .unwrap();
    let data = pattern(3000, 4);
    mr.write(0, &data).unwrap();
    a.post_send(SendRequest::write(1, mr.addr() + 10_000, mr.rkey()).sge(&mr, 0, 3000))
        .unwrap();
    assert_eq!(one(&cq).status, WcStatus::Success);
    assert_eq!(mr.to_vec(10_000, 3000).unwrap(), data);
    b.post_recv(RecvRequest::new(5).sge(&mr, 20_000, 100))
        .unwrap();
    a.post_send(SendRequest::send(2).inline(b"six")).unwrap();
    let mut wcs = cq.poll_wait(2, WAIT).unwrap();
    wcs.sort_by_key(|w| w.wr_id);
    assert_eq!((wcs[1].wr_id, wcs[1].byte_len), (5, 3));
    assert_eq!(mr.to_vec(20_000, 3).unwrap(), b"six");
    let (counters, _) = device.counters().unwrap();
    assert_eq!(counters.icrc_errors, 0);
}

/// Receives from a shared receive queue, and the device queries.
#[test]
fn shared_receive_queue_and_queries() {
    let net = 13;
    let a = side(address(net, 1), DriverKind::Auto, QpType::Rc);
    let b_device = open(address(net, 2), DriverKind::Auto);
    let port = b_device.query_port().unwrap();
    assert_eq!(port.state, ferroce::PortState::Active);
    assert_eq!(port.active_mtu, PathMtu::Mtu1024);
    assert_eq!(port.gid_tbl_len, 1);
    assert_eq!(b_device.query_gid(0).unwrap(), address(net, 2));
    assert!(b_device.query_gid(1).is_err());
    assert_eq!(
        b_device.query_device().unwrap().limits,
        DeviceLimits::default()
    );

    let pd = b_device.alloc_pd().unwrap();
    let cq = b_device.create_cq(16, None).unwrap();
    let mr = pd.reg_mr(4096, all_access()).unwrap();
    let srq = pd.create_srq(8, 1).unwrap();
    let mut init = QpInitAttributes::new(QpType::Rc, &cq);
    init.srq = Some(&srq);
    let b_qp = pd.create_qp(&init).unwrap();
    let end_a = RemoteEndpoint {
        address: address(net, 1),
        qpn: a.qp.qp_num(),
        psn: Psn::new(1),
    };
    let end_b = RemoteEndpoint {
        address: address(net, 2),
        qpn: b_qp.qp_num(),
        psn: Psn::new(2),
    };
    a.qp.connect(end_b, end_a.psn, PathMtu::Mtu1024, all_access())
        .unwrap();
    b_qp.connect(end_a, end_b.psn, PathMtu::Mtu1024, all_access())
        .unwrap();
    assert!(
        b_qp.post_recv(RecvRequest::new(0).sge(&mr, 0, 8)).is_err(),
        "the QP takes receives from its SRQ"
    );
    for i in 0..2u64 {
        srq.post_recv(RecvRequest::new(40 + i).sge(&mr, i * 1024, 1024))
            .unwrap();
    }
    assert!(srq
        .post_recv(RecvRequest::new(0).sge(&mr, 0, 8).sge(&mr, 8, 8))
        .is_err());
    srq.modify(1).unwrap();
    assert_eq!(srq.query().unwrap().srq_limit, 1);
    a.qp.post_send(SendRequest::send(1).inline(b"first"))
        .unwrap();
    a.qp.post_send(SendRequest::send(2).inline(b"second"))
        .unwrap();
    let wcs = cq.poll_wait(2, WAIT).unwrap();
    let got: Vec<(u64, u32)> = wcs.iter().map(|w| (w.wr_id, w.byte_len)).collect();
    assert_eq!(got, vec![(40, 5), (41, 6)]);
    assert_eq!(mr.to_vec(0, 5).unwrap(), b"first");
    assert_eq!(mr.to_vec(1024, 6).unwrap(), b"second");
    assert_eq!(a.cq.poll_wait(2, WAIT).unwrap().len(), 2);
}

/// Whoever drives a device receives for it. With io_uring the multishot receive moves to
/// the thread that keeps polling (its completions are posted by the thread that armed
/// it), so: a polling thread that then ends must not leave the device deaf, and the
/// hand-back to the engine thread (blocking waits) and on to another polling thread must
/// lose nothing.
fn receive_follows_the_driving_thread(net: u8, driver: DriverKind) {
    let (a, b) = pair(net, driver, QpType::Rc);
    let data = pattern(MR_LEN as usize, 9);
    a.mr.write(0, &data).unwrap();
    let write = |i: u64| {
        let offset = i % 64 * 1024;
        a.qp.post_send(
            SendRequest::write(i, b.mr.addr() + offset, b.mr.rkey()).sge(&a.mr, offset, 1024),
        )
        .unwrap();
    };
    // Spins on poll, as a latency-minded application does: this thread drives `a`.
    let spin_phase = |from: u64| {
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut wcs = Vec::new();
                for i in from..from + 200 {
                    write(i);
                    let deadline = std::time::Instant::now() + WAIT;
                    wcs.clear();
                    while a.cq.poll_into(1, &mut wcs) == 0 {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "WRITE {i} never completed"
                        );
                    }
                    assert_eq!((wcs[0].wr_id, wcs[0].status), (i, WcStatus::Success));
                }
            });
        });
    };
    spin_phase(0);
    // That thread is gone; blocking waits leave the driving to the engine thread.
    for i in 200..300 {
        write(i);
        let wc = one(&a.cq);
        assert_eq!((wc.wr_id, wc.status), (i, WcStatus::Success));
    }
    spin_phase(300);
    assert_eq!(b.mr.to_vec(0, MR_LEN as usize).unwrap(), data);
}

#[test]
fn receive_follows_the_driving_thread_socket_driver() {
    receive_follows_the_driving_thread(40, DriverKind::Socket);
}

#[test]
fn receive_follows_the_driving_thread_uring_driver() {
    if !uring_available() {
        return;
    }
    receive_follows_the_driving_thread(41, DriverKind::Uring);
}

/// `poll_wait` says when it ran out of time, and hands over what did arrive.
#[test]
fn poll_wait_timeout_is_an_error_holding_what_arrived() {
    let (a, b) = pair(20, DriverKind::Auto, QpType::Rc);
    b.qp.post_recv(RecvRequest::new(1).sge(&b.mr, 0, 64))
        .unwrap();
    a.qp.post_send(SendRequest::send(2).inline(b"one")).unwrap();
    // The SEND's completion waits in the CQ before poll_wait starts, whatever the load.
    assert!(a.cq.wait(Some(WAIT)), "no completion within {WAIT:?}");
    let timeout =
        a.cq.poll_wait(2, Duration::from_millis(300))
            .expect_err("only one completion can come");
    assert_eq!((timeout.wanted, timeout.completions.len()), (2, 1));
    assert_eq!(timeout.completions[0].wr_id, 2);
    assert_eq!(
        timeout.to_string(),
        "timed out after 300ms with 1 of 2 completions"
    );
    // `?` in a function returning ferroce's Result keeps it.
    let error = Error::from(timeout);
    assert!(
        matches!(&error, Error::Timeout(t) if t.completions.len() == 1),
        "{error:?}"
    );
    assert_eq!(b.cq.poll_wait(1, WAIT).unwrap()[0].wr_id, 1);
    assert_eq!(b.cq.poll_wait(0, Duration::ZERO).unwrap(), vec![]);
}

/// `post_send_list` names the request it refuses (ibverbs' `bad_wr`) and posts none of
/// the list.
#[test]
fn post_send_list_names_the_refused_request() {
    let (a, b) = pair(21, DriverKind::Auto, QpType::Rc);
    let too_many_sges = (0..5).fold(SendRequest::send(11), |wr, i| wr.sge(&a.mr, i * 8, 8));
    let refused =
        a.qp.post_send_list([
            SendRequest::send(10).inline(b"a"),
            too_many_sges,
            SendRequest::send(12).inline(b"c"),
        ])
        .expect_err("request 1 has 5 SGEs, the QP takes 4");
    assert_eq!(refused.bad_wr, 1);
    assert!(
        matches!(
            refused.error,
            Error::Verbs(VerbsError::LimitExceeded("max_send_sge"))
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "work request 1 of the list: limit exceeded: max_send_sge"
    );
    // Nothing of the list went out: B's one receive is still there for the next SEND.
    b.qp.post_recv(RecvRequest::new(1).sge(&b.mr, 0, 64))
        .unwrap();
    a.qp.post_send_list([SendRequest::send(13).inline(b"only")])
        .unwrap();
    let wc = one(&b.cq);
    assert_eq!((wc.wr_id, wc.byte_len), (1, 4));
    assert_eq!(b.mr.to_vec(0, 4).unwrap(), b"only");
    assert_eq!(one(&a.cq).wr_id, 13);
    // A QP that cannot send refuses the list at its first request; post_send gives the
    // bare error.
    let idle = side(address(21, 3), DriverKind::Auto, QpType::Rc);
    let refused = idle
        .qp
        .post_send_list([SendRequest::send(1).inline(b"x")])
        .unwrap_err();
    assert_eq!(refused.bad_wr, 0);
    assert!(matches!(
        Error::from(refused),
        Error::PostList(refused) if matches!(
            refused.error,
            Error::Verbs(VerbsError::InvalidState(QpState::Reset))
        )
    ));
    assert!(matches!(
        idle.qp.post_send(SendRequest::send(2).inline(b"y")),
        Err(Error::Verbs(VerbsError::InvalidState(QpState::Reset)))
    ));
}

/// `DeviceConfig::default()` is the loopback device's configuration.
#[test]
fn device_config_default_is_loopback() {
    let config = DeviceConfig::default();
    assert_eq!(config, DeviceConfig::loopback());
    assert_eq!(config.addresses, vec![IpAddr::from([127, 0, 0, 1])]);
    assert_eq!(config.port, 4791);
}

//! The application's own memory as memory regions (`reg_mr_raw`, `reg_mr_buffer`), over
//! real loopback UDP between two devices (127.79.x.1 and .2): every RC operation lands
//! in the caller's heap buffers, refusals leave them alone, and deregistration while a
//! peer streams at a region stops every access before `drop` returns.

// Registering caller memory is `unsafe`; each block says which part of the contract
// holds. The buffers are reached through raw pointers only while registered.
#![allow(unsafe_code)]
#![allow(clippy::disallowed_methods)] // Deadlines of real waits.
#![allow(clippy::unwrap_used)] // Helpers shared by the tests unwrap like the tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod two_devices;

use ferroce::{
    AccessFlags, CompletionQueue, Device, DeviceConfig, DeviceLimits, Error, MemoryRegion,
    ProtectionDomain, QpInitAttributes, QpState, QpType, QueuePair, RecvRequest, SendRequest,
    VerbsError, WcOpcode, WcStatus,
};
use two_devices::{all_access, connect, one, pattern, WAIT};

/// A heap buffer of 8-aligned words (so atomics can target it) that the tests reach only
/// through raw pointers, and free only after every region over it is gone.
struct CallerBuffer {
    words: *mut [u64],
}

impl CallerBuffer {
    fn new(len: usize, fill: u8) -> CallerBuffer {
        assert_eq!(len % 8, 0);
        let words = vec![u64::from_ne_bytes([fill; 8]); len / 8].into_boxed_slice();
        CallerBuffer {
            words: Box::into_raw(words),
        }
    }

    fn ptr(&self) -> *mut u8 {
        self.words.cast::<u8>()
    }

    fn len(&self) -> usize {
        self.words.len() * 8
    }

    fn address(&self) -> u64 {
        self.ptr() as u64
    }

    /// Copies bytes out (the tests call it once the completions that wrote them are in,
    /// or when no request is posted).
    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len());
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (asserted); no one holds a reference into the buffer, and the
        // device is not writing these bytes now (see the callers).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(offset), out.as_mut_ptr(), len) };
        out
    }

    /// Copies bytes in, before posting the request that sends them.
    fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len());
        // SAFETY: in bounds; the device reads these bytes only for requests posted after
        // this returns.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr().add(offset), data.len()) };
    }

    fn word(&self, offset: usize) -> u64 {
        u64::from_ne_bytes(self.read(offset, 8).try_into().unwrap())
    }

    fn set_word(&self, offset: usize, value: u64) {
        self.write(offset, &value.to_ne_bytes());
    }
}

impl Drop for CallerBuffer {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw`; whoever owns this buffer drops its regions first
        // (`Side` declares `mr` before `buffer`).
        drop(unsafe { Box::from_raw(self.words) });
    }
}

/// Registers `buffer[offset..offset + len]` as the application's own memory.
fn register(
    pd: &ProtectionDomain,
    buffer: &CallerBuffer,
    offset: usize,
    len: usize,
    access: AccessFlags,
) -> MemoryRegion {
    assert!(offset + len <= buffer.len());
    // SAFETY: every test drops the region before the buffer, touches the buffer only
    // through `CallerBuffer`'s raw copies at the times it documents, and the range is
    // inside the allocation (asserted).
    unsafe { pd.reg_mr_raw(buffer.ptr().add(offset), len, access) }.unwrap()
}

fn address(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 79, net, host))
}

// Field order is drop order: regions before the buffers they cover.
struct Side {
    qp: QueuePair,
    cq: CompletionQueue,
    mr: MemoryRegion,
    buffer: CallerBuffer,
    device: Device,
}

fn side(ip: IpAddr, len: usize, access: AccessFlags) -> Side {
    let device = Device::open(DeviceConfig::with_address(ip)).expect("bind the test address");
    let pd = device.alloc_pd().unwrap();
    let cq = device.create_cq(512, None).unwrap();
    let buffer = CallerBuffer::new(len, 0);
    let mr = register(&pd, &buffer, 0, len, access);
    let qp = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    Side {
        qp,
        cq,
        mr,
        buffer,
        device,
    }
}

/// Two connected RC QPs at 127.79.`net`.1 and .2, each side's region the whole of a
/// caller buffer of `len` bytes with `access_a` / `access_b`.
fn pair(net: u8, len: usize, access_a: AccessFlags, access_b: AccessFlags) -> (Side, Side) {
    let a = side(address(net, 1), len, access_a);
    let b = side(address(net, 2), len, access_b);
    connect((&a.device, &a.qp), (&b.device, &b.qp), (0x10, 0xff_fff8));
    (a, b)
}

#[test]
fn every_rc_operation_lands_in_caller_memory() {
    let (a, b) = pair(1, 1 << 16, all_access(), all_access());
    // ibverbs: the iova is the virtual address.
    assert_eq!(a.mr.addr(), a.buffer.address());
    assert_eq!(b.mr.addr(), b.buffer.address());
    assert_eq!(b.mr.len(), 1 << 16);

    // SEND of 5000 bytes (five packets) from A's buffer into a receive on B's.
    let data = pattern(5000, 1);
    a.buffer.write(0, &data);
    b.qp.post_recv(RecvRequest::new(10).sge(&b.mr, 100, 8000))
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
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (10, WcStatus::Success, WcOpcode::Recv, 5000)
    );
    assert_eq!(b.buffer.read(100, 5000), data);
    assert_eq!(
        b.buffer.read(0, 100),
        vec![0; 100],
        "nothing before the SGE"
    );
    assert_eq!(
        b.buffer.read(5100, 100),
        vec![0; 100],
        "nothing past the message"
    );

    // RDMA WRITE of 3000 bytes to B's own address, then WRITE with immediate to mark
    // the end for B (a WRITE has no completion at its target).
    let data = pattern(3000, 2);
    a.buffer.write(8192, &data);
    let remote = b.buffer.address() + 10_000;
    a.qp.post_send(SendRequest::write(2, remote, b.mr.rkey()).sge(&a.mr, 8192, 3000))
        .unwrap();
    b.qp.post_recv(RecvRequest::new(11)).unwrap();
    a.qp.post_send(
        SendRequest::write_with_imm(3, remote + 3000, b.mr.rkey(), 0xfeed).sge(&a.mr, 8192, 16),
    )
    .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    let wc = one(&b.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.imm_data),
        (11, WcStatus::Success, Some(0xfeed))
    );
    assert_eq!(b.buffer.read(10_000, 3000), data);
    assert_eq!(b.buffer.read(13_000, 16), data[..16]);
    // The verbs copies reach the same bytes.
    assert_eq!(b.mr.to_vec(10_000, 3000).unwrap(), data);

    // RDMA READ of 9000 bytes from B's buffer into A's.
    let data = pattern(9000, 3);
    b.buffer.write(20_000, &data);
    a.qp.post_send(
        SendRequest::read(4, b.buffer.address() + 20_000, b.mr.rkey()).sge(&a.mr, 30_000, 9000),
    )
    .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (4, WcStatus::Success, WcOpcode::RdmaRead, 9000)
    );
    assert_eq!(a.buffer.read(30_000, 9000), data);

    // Atomics on B's host-order word at 48_000; originals land in A's buffer.
    b.buffer.set_word(48_000, 41);
    let word = b.buffer.address() + 48_000;
    a.qp.post_send(SendRequest::fetch_add(5, word, b.mr.rkey(), 1).sge(&a.mr, 50_000, 8))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_eq!(a.buffer.word(50_000), 41);
    assert_eq!(b.buffer.word(48_000), 42);
    a.qp.post_send(SendRequest::compare_swap(6, word, b.mr.rkey(), 42, 7).sge(&a.mr, 50_008, 8))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::CompSwap)
    );
    assert_eq!(a.buffer.word(50_008), 42);
    assert_eq!(b.buffer.word(48_000), 7);
    a.qp.post_send(SendRequest::compare_swap(7, word, b.mr.rkey(), 42, 9).sge(&a.mr, 50_016, 8))
        .unwrap();
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    assert_eq!(a.buffer.word(50_016), 7);
    assert_eq!(b.buffer.word(48_000), 7, "a missed compare swaps nothing");
    assert_eq!(b.buffer.read(48_008, 8), vec![0; 8]);
}

/// A peer's request B's region refuses: `RemAccessErr` at A, B's buffer untouched (the
/// bytes past the region's end included: the region is the first half of the buffer).
fn refused_remotely(
    net: u8,
    access_b: AccessFlags,
    request: impl Fn(&MemoryRegion, &MemoryRegion) -> SendRequest,
) {
    let a = side(address(net, 1), 4096, all_access());
    let device = Device::open(DeviceConfig::with_address(address(net, 2))).unwrap();
    let pd = device.alloc_pd().unwrap();
    let cq = device.create_cq(16, None).unwrap();
    let buffer = CallerBuffer::new(2048, 0xee);
    let mr = register(&pd, &buffer, 0, 1024, access_b);
    let qp = pd
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq))
        .unwrap();
    let b = Side {
        qp,
        cq,
        mr,
        buffer,
        device,
    };
    connect((&a.device, &a.qp), (&b.device, &b.qp), (0x10, 0xff_fff8));
    a.buffer.write(0, &pattern(64, 9));
    a.qp.post_send(request(&a.mr, &b.mr)).unwrap();
    let wc = one(&a.cq);
    assert_eq!(wc.status, WcStatus::RemAccessErr);
    assert_eq!(a.qp.query().unwrap().state, QpState::Err);
    assert_eq!(b.buffer.read(0, 2048), vec![0xee; 2048]);
    assert_eq!(
        a.buffer.read(64, 64),
        vec![0; 64],
        "no READ or atomic result"
    );
}

#[test]
fn a_write_past_the_end_is_a_remote_access_error() {
    refused_remotely(2, all_access(), |a, b| {
        SendRequest::write(1, b.addr() + 1020, b.rkey()).sge(a, 0, 8)
    });
}

#[test]
fn a_write_below_the_start_is_a_remote_access_error() {
    refused_remotely(3, all_access(), |a, b| {
        SendRequest::write(1, b.addr() - 4, b.rkey()).sge(a, 0, 8)
    });
}

#[test]
fn a_read_past_the_end_is_a_remote_access_error() {
    refused_remotely(4, all_access(), |a, b| {
        SendRequest::read(1, b.addr() + 1000, b.rkey()).sge(a, 64, 64)
    });
}

#[test]
fn a_write_without_remote_write_is_a_remote_access_error() {
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_ATOMIC;
    refused_remotely(5, access, |a, b| {
        SendRequest::write(1, b.addr(), b.rkey()).sge(a, 0, 8)
    });
}

#[test]
fn a_read_without_remote_read_is_a_remote_access_error() {
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    refused_remotely(6, access, |a, b| {
        SendRequest::read(1, b.addr(), b.rkey()).sge(a, 64, 64)
    });
}

#[test]
fn an_atomic_without_remote_atomic_is_a_remote_access_error() {
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    refused_remotely(7, access, |a, b| {
        SendRequest::fetch_add(1, b.addr() + 8, b.rkey(), 1).sge(a, 64, 8)
    });
}

#[test]
fn an_atomic_past_the_end_is_a_remote_access_error() {
    refused_remotely(8, all_access(), |a, b| {
        SendRequest::compare_swap(1, b.addr() + 1024, b.rkey(), 0xeeee_eeee_eeee_eeee, 1)
            .sge(a, 64, 8)
    });
}

/// The requester's own caller memory: a READ result into a region without
/// `LOCAL_WRITE`, and a gather past its end, are local protection errors that leave the
/// buffer alone.
#[test]
fn local_refusals_are_local_protection_errors() {
    let read_only = AccessFlags::REMOTE_READ;
    let (a, b) = pair(9, 4096, read_only, all_access());
    b.buffer.write(0, &pattern(256, 4));
    a.qp.post_send(SendRequest::read(1, b.mr.addr(), b.mr.rkey()).sge(&a.mr, 0, 256))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::LocProtErr));
    assert_eq!(a.buffer.read(0, 4096), vec![0; 4096]);

    let (a, b) = pair(10, 4096, all_access(), all_access());
    b.qp.post_recv(RecvRequest::new(5).sge(&b.mr, 0, 4096))
        .unwrap();
    a.qp.post_send(SendRequest::send(2).sge(&a.mr, 4000, 200))
        .unwrap();
    let wc = one(&a.cq);
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::LocProtErr));
    let timeout = b.cq.poll_wait(1, Duration::from_millis(200)).unwrap_err();
    assert_eq!(timeout.completions, vec![]);
    assert_eq!(b.buffer.read(0, 4096), vec![0; 4096]);
}

/// B deregisters its region while A streams WRITEs at it: A's requests fail from some
/// point on with `RemAccessErr` (then flush), and once B's `drop` has returned no byte
/// of B's buffer changes. With `free_at_once`, B frees the buffer right after the drop,
/// as an application may: any later access would be a use after free (run the test
/// under valgrind to see none).
fn deregistration_under_a_stream(net: u8, free_at_once: bool) {
    const CHUNK: usize = 32 << 10;
    const WRITES: u64 = 256;
    let (a, b) = pair(net, CHUNK, all_access(), all_access());
    let Side {
        mr: b_mr,
        buffer: b_buffer,
        ..
    } = b;
    let (remote, rkey) = (b_mr.addr(), b_mr.rkey());
    for wr_id in 0..WRITES {
        a.buffer.write(0, &[wr_id as u8; 8]);
        a.qp.post_send(SendRequest::write(wr_id, remote, rkey).sge(&a.mr, 0, CHUNK as u32))
            .unwrap();
    }
    // The first WRITE is in B's buffer; the rest are on their way.
    assert_eq!(one(&a.cq).status, WcStatus::Success);
    drop(b_mr);
    let snapshot = (!free_at_once).then(|| b_buffer.read(0, CHUNK));
    let b_buffer = if free_at_once {
        drop(b_buffer);
        None
    } else {
        Some(b_buffer)
    };

    let mut statuses = vec![WcStatus::Success];
    while (statuses.len() as u64) < WRITES {
        let got =
            a.cq.poll_wait(1, WAIT)
                .unwrap_or_else(|_| panic!("completion {} missing", statuses.len()));
        statuses.push(got[0].status);
    }
    let successes = statuses
        .iter()
        .take_while(|s| **s == WcStatus::Success)
        .count();
    assert!(
        successes < statuses.len(),
        "all {WRITES} WRITEs landed: the deregistration did not stop the stream"
    );
    assert_eq!(statuses[successes], WcStatus::RemAccessErr);
    assert!(
        statuses[successes + 1..]
            .iter()
            .all(|s| *s == WcStatus::WrFlushErr),
        "{statuses:?}"
    );
    if let (Some(buffer), Some(snapshot)) = (b_buffer, snapshot) {
        // B is not polled, and the device let go of the buffer when the drop returned.
        assert_eq!(buffer.read(0, CHUNK), snapshot);
    }
}

#[test]
fn deregistration_stops_a_peer_stream_before_drop_returns() {
    deregistration_under_a_stream(11, false);
}

#[test]
fn a_buffer_freed_after_deregistration_is_never_reached() {
    deregistration_under_a_stream(12, true);
}

/// `reg_mr_buffer`: the device owns the buffer while registered and hands it back,
/// with what the peer wrote, on `deregister`.
#[test]
fn handed_over_buffers_come_back_with_the_device_writes() {
    let a_device = Device::open(DeviceConfig::with_address(address(13, 1))).unwrap();
    let b_device = Device::open(DeviceConfig::with_address(address(13, 2))).unwrap();
    let (pd_a, pd_b) = (a_device.alloc_pd().unwrap(), b_device.alloc_pd().unwrap());
    let mut source = vec![0u8; 4096];
    source[..8].copy_from_slice(&100u64.to_ne_bytes());
    source[8..3008].copy_from_slice(&pattern(3000, 5));
    let source_address = source.as_ptr() as u64;
    let mr_b = pd_b.reg_mr_buffer(source, all_access()).unwrap();
    assert_eq!(mr_b.addr(), source_address);
    let mr_a = pd_a.reg_mr_buffer(vec![0xaa; 8192], all_access()).unwrap();
    let (cq_a, cq_b) = (
        a_device.create_cq(16, None).unwrap(),
        b_device.create_cq(16, None).unwrap(),
    );
    let qp_a = pd_a
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq_a))
        .unwrap();
    let qp_b = pd_b
        .create_qp(&QpInitAttributes::new(QpType::Rc, &cq_b))
        .unwrap();
    connect((&a_device, &qp_a), (&b_device, &qp_b), (3, 4));

    qp_a.post_send(SendRequest::read(1, mr_b.addr() + 8, mr_b.rkey()).sge(&mr_a, 100, 3000))
        .unwrap();
    qp_a.post_send(SendRequest::fetch_add(2, mr_b.addr(), mr_b.rkey(), 5).sge(&mr_a, 0, 8))
        .unwrap();
    qp_a.post_send(SendRequest::write(3, mr_b.addr() + 4000, mr_b.rkey()).inline(b"end"))
        .unwrap();
    for wr_id in 1..=3 {
        let wc = one(&cq_a);
        assert_eq!((wc.wr_id, wc.status), (wr_id, WcStatus::Success));
    }
    // Between, the verbs copies reach the bytes.
    assert_eq!(mr_b.read_u64(0).unwrap(), 105);

    let a_bytes = mr_a.deregister().unwrap().expect("A's buffer back");
    assert_eq!(a_bytes.len(), 8192);
    assert_eq!(u64::from_ne_bytes(a_bytes[..8].try_into().unwrap()), 100);
    assert_eq!(a_bytes[100..3100], pattern(3000, 5));
    assert!(a_bytes[3100..].iter().all(|&x| x == 0xaa));
    let b_bytes = mr_b.deregister().unwrap().expect("B's buffer back");
    assert_eq!(
        b_bytes.as_ptr() as u64,
        source_address,
        "the same allocation"
    );
    assert_eq!(u64::from_ne_bytes(b_bytes[..8].try_into().unwrap()), 105);
    assert_eq!(&b_bytes[4000..4003], b"end");

    // Engine-owned regions have nothing to give back.
    let owned = pd_a.reg_mr(64, all_access()).unwrap();
    assert_eq!(owned.deregister().unwrap(), None);
}

#[test]
fn bad_caller_memory_is_refused() {
    let mut config = DeviceConfig::with_address(address(14, 1));
    config.limits = DeviceLimits {
        max_mr_size: 4096,
        ..DeviceLimits::default()
    };
    let device = Device::open(config).unwrap();
    let pd = device.alloc_pd().unwrap();
    // SAFETY: refused before anything is registered.
    let null = unsafe { pd.reg_mr_raw(std::ptr::null_mut(), 8, all_access()) };
    assert!(matches!(null, Err(Error::InvalidArgument(_))), "{null:?}");
    let buffer = CallerBuffer::new(8192, 0);
    // SAFETY: in bounds of `buffer`, which outlives the attempts (they all fail).
    let too_long = unsafe { pd.reg_mr_raw(buffer.ptr(), 8192, all_access()) };
    assert!(
        matches!(
            too_long,
            Err(Error::Verbs(VerbsError::LimitExceeded("max_mr_size")))
        ),
        "{too_long:?}"
    );
    // SAFETY: as above.
    let remote_write_alone = unsafe { pd.reg_mr_raw(buffer.ptr(), 64, AccessFlags::REMOTE_WRITE) };
    assert!(
        matches!(
            remote_write_alone,
            Err(Error::Verbs(VerbsError::InvalidArgument(_)))
        ),
        "{remote_write_alone:?}"
    );
    let too_big = pd.reg_mr_buffer(vec![0; 8192], all_access());
    assert!(too_big.is_err());
    // Two regions over the same bytes (with different rights) are fine, as in ibverbs.
    let first = register(&pd, &buffer, 0, 64, AccessFlags::REMOTE_READ);
    let second = register(&pd, &buffer, 0, 64, all_access());
    assert_eq!(first.addr(), second.addr());
    assert_ne!(first.rkey(), second.rkey());
    // Zero bytes register too (an empty receive target).
    let empty = register(&pd, &buffer, 64, 0, all_access());
    assert!(empty.is_empty());
}

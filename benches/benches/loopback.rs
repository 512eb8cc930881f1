//! Loopback baselines for ferroce's I/O: what the kernel's UDP path itself gives on this
//! machine, measured in the same run as ferroce so the ratios mean something.
//!
//! - `udp_bw/plain_4k`: one 4 KiB datagram per `send_to`/`recv_from` (no batching).
//! - `udp_bw/gso_gro_4k`: ferroce's socket driver: `sendmmsg` with UDP GSO runs of
//!   4 KiB segments, `recvmmsg` with GRO — the ceiling RDMA WRITE bandwidth aims at.
//! - `udp_lat/pingpong_64`: a 64-byte UDP ping-pong on connected, busy-polled sockets;
//!   the time per iteration is a full round trip (half of it is the "half round trip" RDMA latency compares to).
//!
//! And ferroce over the same loopback, two devices (127.0.0.40 and .41, MTU 4096 as rxe
//! picks for `lo`) with one RC QP each, so one run gives the ratios the targets are
//! stated in:
//! - `rdma_bw/write_64k`: 16 MiB of 64 KiB RDMA WRITEs per iteration, 128 deep, posted
//!   in lists of 16 with the last one signaled — compare with `udp_bw/gso_gro_4k`
//!   (target ≥ 60%).
//! - `bw_ratio/write_64k_vs_gso_gro_4k`: the two above alternating burst by burst, which
//!   prints the median ratio of the pairs: the figure to quote on this noisy host.
//! - `rdma_lat/write_64`: a 64-byte RDMA WRITE with immediate each way (inline), the
//!   peer replying on its receive completion — a full round trip, like
//!   `udp_lat/pingpong_64` (target ≤ 1.5×).
//! - `rdma_rate/write_64`: 64-byte RDMA WRITEs posted in lists of 64 with the last one
//!   signaled (perftest's CQ moderation, `-Q 64`), 256 deep (target ≥ 1 M/s).
//!
//! The devices use the default driver (io_uring); `FERROCE_BENCH_DRIVER=socket` measures
//! the `recvmmsg`/`sendmmsg` fallback instead.
#![allow(clippy::disallowed_methods)] // benchmarks read the clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroce::{
    AccessFlags, CompletionQueue, Device, DeviceConfig, MemoryRegion, PathMtu, QpInitAttributes,
    QpType, QueuePair, RecvRequest, RemoteEndpoint, SendRequest, WcStatus, WorkCompletion,
};
use ferroce_transport::engine::{Datagram, DatagramMeta, Ecn, LentDatagram};
use ferroce_transport::io::UdpDriver;
use ferroce_transport::wire::Psn;

/// Bytes sent per measured iteration of a bandwidth benchmark: enough that filling and
/// draining the pipeline at either end of an iteration costs little of it.
const BURST_BYTES: usize = 16 << 20;
/// Most bytes in flight before the sender waits for the receiver (no drops, no pile-up).
const WINDOW_BYTES: u64 = 2 << 20;
const SEGMENT: usize = 4096;

/// A receiver thread counting bytes until told to stop.
struct Sink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sink {
    fn spawn(mut recv: impl FnMut(&AtomicU64) + Send + 'static) -> Sink {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                recv(&r);
            }
        });
        Sink {
            received,
            stop,
            handle: Some(handle),
        }
    }

    fn wait_until(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.received.load(Ordering::Acquire) < bytes {
            assert!(
                Instant::now() < deadline,
                "receiver stalled: datagrams were lost"
            );
            std::hint::spin_loop();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn plain_4k(c: &mut Criterion) {
    let rx = UdpSocket::bind("127.0.0.30:0").expect("bind");
    // Room for the whole window, as the drivers ask for too.
    socket2::SockRef::from(&rx)
        .set_recv_buffer_size(8 << 20)
        .expect("rcvbuf");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let to = rx.local_addr().expect("addr");
    let tx = UdpSocket::bind("127.0.0.31:0").expect("bind");
    let sink = Sink::spawn(move |count| {
        let mut buf = [0u8; SEGMENT];
        if let Ok(n) = rx.recv(&mut buf) {
            count.fetch_add(n as u64, Ordering::Release);
        }
    });
    let payload = vec![0x5au8; SEGMENT];
    let mut sent = 0u64;
    let mut group = c.benchmark_group("udp_bw");
    group.throughput(Throughput::Bytes(BURST_BYTES as u64));
    group.bench_function("plain_4k", |b| {
        b.iter(|| {
            for _ in 0..BURST_BYTES / SEGMENT {
                while sent - sink.received.load(Ordering::Acquire) > WINDOW_BYTES {
                    std::hint::spin_loop();
                }
                tx.send_to(&payload, to).expect("send");
                sent += SEGMENT as u64;
            }
            sink.wait_until(sent);
        })
    });
    group.finish();
}

/// ferroce's socket driver as a plain UDP blaster: `sendmmsg` with GSO runs of 4 KiB
/// segments to a `recvmmsg`/GRO sink, at most [`WINDOW_BYTES`] ahead of it.
struct GsoBlaster {
    tx: UdpDriver,
    sink: Sink,
    meta: DatagramMeta,
    sent: u64,
    /// Sent buffers, reused as ferroce's engine reuses its own.
    spare: Vec<Vec<u8>>,
    batch: Vec<LentDatagram<'static>>,
}

impl GsoBlaster {
    fn bind() -> Option<GsoBlaster> {
        let to: SocketAddr = "127.0.0.32:4791".parse().expect("addr");
        let Ok(mut rx) = UdpDriver::bind(to) else {
            eprintln!("{to} busy; skipping the GSO/GRO baseline");
            return None;
        };
        let tx = UdpDriver::bind("127.0.0.33:0".parse().expect("addr")).expect("bind");
        let sink = Sink::spawn(move |count| {
            let _ = rx.wait(Some(Duration::from_millis(50)));
            let mut bytes = 0;
            let _ = rx.recv_batch(|r| bytes += r.payload.len() as u64);
            count.fetch_add(bytes, Ordering::Release);
        });
        let meta = DatagramMeta {
            src: tx.local_addr().ip(),
            dst: to.ip(),
            src_port: tx.local_addr().port(),
            ecn: Ecn::NotEct,
            ipv4_ident: None,
        };
        Some(GsoBlaster {
            tx,
            sink,
            meta,
            sent: 0,
            spare: Vec::new(),
            batch: Vec::with_capacity(256),
        })
    }

    /// Sends [`BURST_BYTES`] and waits until the sink has them all.
    fn burst(&mut self) {
        let mut left = BURST_BYTES / SEGMENT;
        while left > 0 {
            while self.sent - self.sink.received.load(Ordering::Acquire) > WINDOW_BYTES {
                std::hint::spin_loop();
            }
            let n = left.min(128);
            let (meta, spare) = (self.meta, &mut self.spare);
            self.batch.extend((0..n).map(|_| {
                LentDatagram::from(Datagram {
                    meta,
                    payload: spare.pop().unwrap_or_else(|| vec![0x5a; SEGMENT]),
                })
            }));
            while !self.batch.is_empty() {
                let went = self.tx.send_batch(&mut self.batch).expect("send");
                self.tx.reclaim(|payload| spare.push(payload));
                self.sent += (went * SEGMENT) as u64;
                left -= went;
            }
        }
        self.sink.wait_until(self.sent);
    }
}

fn gso_gro_4k(c: &mut Criterion) {
    let Some(mut blaster) = GsoBlaster::bind() else {
        return;
    };
    let mut group = c.benchmark_group("udp_bw");
    group.throughput(Throughput::Bytes(BURST_BYTES as u64));
    group.bench_function("gso_gro_4k", |b| b.iter(|| blaster.burst()));
    group.finish();
}

fn pingpong_64(c: &mut Criterion) {
    // The strongest plain-UDP round trip: connected, non-blocking sockets whose threads
    // spin on `recv` as ferroce's engine and pollers spin (no sleep, no wakeup in the
    // path), so the figure is the kernel's loopback path and nothing else.
    let a = UdpSocket::bind("127.0.0.34:0").expect("bind");
    let b_sock = UdpSocket::bind("127.0.0.35:0").expect("bind");
    a.connect(b_sock.local_addr().expect("addr")).expect("connect");
    b_sock.connect(a.local_addr().expect("addr")).expect("connect");
    a.set_nonblocking(true).expect("nonblocking");
    b_sock.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok(n) = b_sock.recv(&mut buf) {
                b_sock.send(&buf[..n]).expect("echo");
            }
        }
    });
    let mut group = c.benchmark_group("udp_lat");
    group.bench_function("pingpong_64", |bench| {
        let mut buf = [0u8; 64];
        bench.iter(|| {
            a.send(&buf).expect("send");
            while a.recv(&mut buf).is_err() {
                std::hint::spin_loop();
            }
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
}

/// One end of the RDMA benches: a device, its CQ, a 1 MiB MR and an RC QP.
struct End {
    _device: Device,
    cq: CompletionQueue,
    mr: MemoryRegion,
    qp: QueuePair,
}

const RDMA_MR: u64 = 1 << 20;
/// Send queue depth (perftest's `-t`): 128 for bandwidth, as perftest; the message-rate
/// case keeps 256 small WRITEs in flight (`-t 256`), which 64 B messages need to cover
/// the time an ACK takes to come back.
const RDMA_DEPTH: u64 = 256;
const BW_DEPTH: u64 = 128;

fn rdma_pair() -> Option<(End, End)> {
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let open = |ip: &str| -> ferroce::Result<End> {
        let mut config = DeviceConfig::with_address(ip.parse().expect("address"));
        config.active_mtu = PathMtu::Mtu4096;
        if std::env::var("FERROCE_BENCH_DRIVER").as_deref() == Ok("socket") {
            config.driver = ferroce::DriverKind::Socket;
        }
        let device = Device::open(config)?;
        let pd = device.alloc_pd()?;
        let cq = device.create_cq(1024, None)?;
        let mr = pd.reg_mr(RDMA_MR, access)?;
        let mut attributes = QpInitAttributes::new(QpType::Rc, &cq);
        attributes.cap.max_send_wr = RDMA_DEPTH as u32 + 1;
        attributes.cap.max_recv_wr = 256;
        attributes.cap.max_inline_data = 64;
        let qp = pd.create_qp(&attributes)?;
        Ok(End {
            _device: device,
            cq,
            mr,
            qp,
        })
    };
    let (a, b) = match (open("127.0.0.40"), open("127.0.0.41")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot open the loopback devices ({e}); skipping the rdma benches");
            return None;
        }
    };
    let endpoint = |end: &End, ip: &str, psn: u32| RemoteEndpoint {
        address: ip.parse().expect("address"),
        qpn: end.qp.qp_num(),
        psn: Psn::new(psn),
    };
    let (a_end, b_end) = (
        endpoint(&a, "127.0.0.40", 0x100),
        endpoint(&b, "127.0.0.41", 0x200),
    );
    a.qp.connect(b_end, a_end.psn, PathMtu::Mtu4096, access)
        .expect("connect");
    b.qp.connect(a_end, b_end.psn, PathMtu::Mtu4096, access)
        .expect("connect");
    Some((a, b))
}

/// Polls `cq` until `want` completions (each `check`ed) arrived; returns the wr_ids'
/// sum of the "covered" counts they carry.
fn reap(cq: &CompletionQueue, wcs: &mut Vec<WorkCompletion>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        wcs.clear();
        if cq.poll_into(64, wcs) > 0 {
            let mut covered = 0;
            for wc in wcs.iter() {
                assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
                covered += wc.wr_id;
            }
            return covered;
        }
        assert!(Instant::now() < deadline, "no completion for 10 s");
    }
}

/// Posts `count` WRITEs of `size` bytes from `a` to `b` in lists of `list`, at most
/// `depth` outstanding, one signaled per list; waits for all of them.
fn rdma_writes(
    (a, b): (&End, &End),
    size: u32,
    count: u64,
    (list, depth): (u64, u64),
    wcs: &mut Vec<WorkCompletion>,
) {
    let (mut posted, mut done) = (0u64, 0u64);
    while done < count {
        while posted < count && posted - done + list <= depth {
            let n = list.min(count - posted);
            let wrs = (0..n).map(|i| {
                let offset = (posted + i) * u64::from(size) % (RDMA_MR - u64::from(size));
                // The signaled (last) WR of the list carries how many WRs it retires.
                SendRequest::write(n, b.mr.addr() + offset, b.mr.rkey())
                    .sge(&a.mr, offset, size)
                    .signaled(i + 1 == n)
            });
            a.qp.post_send_list(wrs).expect("post");
            posted += n;
        }
        done += reap(&a.cq, wcs);
    }
}

/// One bandwidth iteration: [`BURST_BYTES`] as 64 KiB WRITEs, 128 deep, in lists of 16.
fn write_64k_burst(ends: (&End, &End), wcs: &mut Vec<WorkCompletion>) {
    const SIZE: usize = 64 * 1024;
    let count = (BURST_BYTES / SIZE) as u64;
    rdma_writes(ends, SIZE as u32, count, (16, BW_DEPTH), wcs);
}

fn rdma_write_64k(c: &mut Criterion) {
    let Some((a, b)) = rdma_pair() else { return };
    let mut wcs = Vec::with_capacity(64);
    let mut group = c.benchmark_group("rdma_bw");
    group.throughput(Throughput::Bytes(BURST_BYTES as u64));
    group.bench_function("write_64k", |bench| {
        bench.iter(|| write_64k_burst((&a, &b), &mut wcs))
    });
    group.finish();
}

/// The bandwidth target as one figure: each iteration sends a GSO/GRO UDP burst and then
/// the same bytes as RDMA WRITEs, so the drift of this shared host (2× between runs
/// minutes apart) falls on both alike. Criterion times the WRITEs; each pair's ratio is
/// kept and their median and quartiles printed.
fn write_64k_over_gso(c: &mut Criterion) {
    let Some(mut blaster) = GsoBlaster::bind() else {
        return;
    };
    let Some((a, b)) = rdma_pair() else { return };
    let mut wcs = Vec::with_capacity(64);
    let mut ratios = Vec::new();
    let mut group = c.benchmark_group("bw_ratio");
    group.throughput(Throughput::Bytes(BURST_BYTES as u64));
    group.bench_function("write_64k_vs_gso_gro_4k", |bench| {
        bench.iter_custom(|iterations| {
            let mut rdma = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                blaster.burst();
                let udp = start.elapsed();
                let start = Instant::now();
                write_64k_burst((&a, &b), &mut wcs);
                let took = start.elapsed();
                ratios.push(udp.as_secs_f64() / took.as_secs_f64());
                rdma += took;
            }
            rdma
        })
    });
    group.finish();
    if ratios.is_empty() {
        return;
    }
    ratios.sort_by(f64::total_cmp);
    let quantile = |q: f64| 100.0 * ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!(
        "bw_ratio: RDMA WRITE 64 KiB over UDP GSO/GRO 4 KiB bandwidth, {} paired bursts: \
         median {:.0}%, quartiles {:.0}%–{:.0}% (target ≥ 60%)",
        ratios.len(),
        quantile(0.5),
        quantile(0.25),
        quantile(0.75),
    );
}

fn rdma_rate_64(c: &mut Criterion) {
    let Some((a, b)) = rdma_pair() else { return };
    const COUNT: u64 = 4096;
    let mut wcs = Vec::with_capacity(64);
    let mut group = c.benchmark_group("rdma_rate");
    group.throughput(Throughput::Elements(COUNT));
    group.bench_function("write_64", |bench| {
        bench.iter(|| rdma_writes((&a, &b), 64, COUNT, (64, RDMA_DEPTH), &mut wcs))
    });
    group.finish();
}

fn rdma_lat_64(c: &mut Criterion) {
    let Some((a, b)) = rdma_pair() else { return };
    let payload = [0x5au8; 64];
    for end in [&a, &b] {
        for _ in 0..128 {
            end.qp.post_recv(RecvRequest::new(0)).expect("post_recv");
        }
    }
    let mut wcs = Vec::with_capacity(4);
    // Each side's WRITEs are unsignaled; a signaled one every 64 round trips retires them.
    let mut round = 0u64;
    let ping = |from: &End, to: &End, signaled: bool| {
        let wr = SendRequest::write_with_imm(1, to.mr.addr(), to.mr.rkey(), 7)
            .inline(&payload)
            .signaled(signaled);
        from.qp.post_send(wr).expect("post");
    };
    let wait_receive = |end: &End, wcs: &mut Vec<WorkCompletion>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            wcs.clear();
            if end.cq.poll_into(4, wcs) > 0 {
                let mut received = false;
                for wc in wcs.iter() {
                    assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
                    received |= wc.opcode == ferroce::WcOpcode::RecvRdmaWithImm;
                }
                if received {
                    end.qp.post_recv(RecvRequest::new(0)).expect("post_recv");
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no completion for 10 s");
        }
    };
    let mut group = c.benchmark_group("rdma_lat");
    group.bench_function("write_64", |bench| {
        bench.iter(|| {
            round += 1;
            let signaled = round.is_multiple_of(64);
            ping(&a, &b, signaled);
            wait_receive(&b, &mut wcs);
            ping(&b, &a, signaled);
            wait_receive(&a, &mut wcs);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    plain_4k,
    gso_gro_4k,
    pingpong_64,
    rdma_write_64k,
    write_64k_over_gso,
    rdma_lat_64,
    rdma_rate_64
);
criterion_main!(benches);

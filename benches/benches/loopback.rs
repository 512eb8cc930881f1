//! Loopback baselines for ferroce's I/O: what the kernel's UDP path itself gives on this
//! machine, measured in the same run as ferroce so the ratios mean something.
//!
//! - `udp_bw/plain_4k`: one 4 KiB datagram per `send_to`/`recv_from` (no batching).
//! - `udp_bw/gso_gro_4k`: ferroce's socket driver: `sendmmsg` with UDP GSO runs of
//!   4 KiB segments, `recvmmsg` with GRO — the ceiling RDMA WRITE bandwidth aims at.
//! - `udp_lat/pingpong_64`: a 64-byte blocking UDP ping-pong; the time per iteration is
//!   a full round trip (half of it is the "half round trip" RDMA latency compares to).
#![allow(clippy::disallowed_methods)] // benchmarks read the clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroce_transport::engine::{Datagram, DatagramMeta, Ecn};
use ferroce_transport::io::UdpDriver;

/// Bytes sent per measured iteration of a bandwidth benchmark.
const BURST_BYTES: usize = 4 << 20;
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

fn gso_gro_4k(c: &mut Criterion) {
    let to: SocketAddr = "127.0.0.32:4791".parse().expect("addr");
    let Ok(mut rx) = UdpDriver::bind(to) else {
        eprintln!("{to} busy; skipping udp_bw/gso_gro_4k");
        return;
    };
    let mut tx = UdpDriver::bind("127.0.0.33:0".parse().expect("addr")).expect("bind");
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
    let mut sent = 0u64;
    let mut group = c.benchmark_group("udp_bw");
    group.throughput(Throughput::Bytes(BURST_BYTES as u64));
    group.bench_function("gso_gro_4k", |b| {
        b.iter(|| {
            let mut left = BURST_BYTES / SEGMENT;
            let mut batch = Vec::with_capacity(256);
            while left > 0 {
                while sent - sink.received.load(Ordering::Acquire) > WINDOW_BYTES {
                    std::hint::spin_loop();
                }
                let n = left.min(128);
                batch.extend((0..n).map(|_| Datagram {
                    meta,
                    payload: vec![0x5a; SEGMENT],
                }));
                while !batch.is_empty() {
                    let went = tx.send_batch(&mut batch).expect("send");
                    sent += (went * SEGMENT) as u64;
                    left -= went;
                }
            }
            sink.wait_until(sent);
        })
    });
    group.finish();
}

fn pingpong_64(c: &mut Criterion) {
    let a = UdpSocket::bind("127.0.0.34:0").expect("bind");
    let b_sock = UdpSocket::bind("127.0.0.35:0").expect("bind");
    let (a_addr, b_addr) = (
        a.local_addr().expect("addr"),
        b_sock.local_addr().expect("addr"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    b_sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok(n) = b_sock.recv(&mut buf) {
                let _ = b_sock.send_to(&buf[..n], a_addr);
            }
        }
    });
    let mut group = c.benchmark_group("udp_lat");
    group.bench_function("pingpong_64", |bench| {
        let mut buf = [0u8; 64];
        bench.iter(|| {
            a.send_to(&buf, b_addr).expect("send");
            a.recv(&mut buf).expect("recv");
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
}

criterion_group!(benches, plain_4k, gso_gro_4k, pingpong_64);
criterion_main!(benches);

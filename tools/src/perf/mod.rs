//! `ferroce perf {write,read,send,atomic} {bw,lat} [SERVER]`: perftest's bandwidth and
//! latency tests.
//!
//! - Without `SERVER`: listen on TCP `-p` (18515), serve one test to a ferroce or perftest
//!   client, exit. With `SERVER`: connect to a ferroce or perftest server and run the
//!   test. Both speak perftest's out-of-band exchange ([`crate::exchange::perftest`]) and
//!   run perftest's traffic pattern (`perf/net.rs`). The local RoCE address is
//!   `--bind`, else the one routing to the server (client; a free 127.0.0.x when a
//!   server on this host holds that one) or every non-loopback address (server; see
//!   [`crate::address`]). `--timeout` (10 s; 0: for ever) bounds every wait for the
//!   peer — each message of the exchange, each completion, the passive server's wait
//!   for the client's packets — and a timeout names what was waited for.
//! - `--loopback`: both ends in this process on two loopback devices (127.0.0.1 and
//!   127.0.0.2 by default), no setup needed.
//!
//! Flags are spelled as perftest spells them (`-s` size, `-n` iterations, `-q` QPs,
//! `-m` MTU, `-D` seconds, `-a` all sizes, `-t` TX depth, `-I` inline, `-A` atomic kind,
//! `-p` port, `-d`/`-x` device and GID index, `-F`) and so are the columns.
//! Loopback bandwidth runs end by checking that the bytes that arrived are the bytes
//! sent. Loopback latency: SEND, READ and atomics as perftest measures them (send: half
//! the round trip of a ping-pong; read/atomic: the whole request); WRITE is a ping-pong
//! of RDMA WRITEs with immediate, half the round trip (the networked mode polls the
//! last byte as perftest does).
//!
//! Exit status: 0 on success, 1 when a completion failed, the data did not check out or
//! the exchange broke, 2 on bad flags, unusable addresses or ports, or an unreachable
//! server.
#![allow(clippy::disallowed_methods)] // A benchmark measures real time.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferroce::wire::Psn;
use ferroce::{
    AccessFlags, CompletionQueue, Device, DeviceConfig, DeviceLimits, DriverKind, Error,
    MemoryRegion, PathMtu, QpCap, QpInitAttributes, QpType, QueuePair, RecvRequest, RemoteEndpoint,
    SendRequest, WcStatus, WorkCompletion,
};
use serde_json::json;

use crate::address::OpenError;
use crate::exchange::DEFAULT_PORT;

/// The operation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    /// RDMA WRITE (ib_write_bw / ib_write_lat).
    Write,
    /// RDMA READ (ib_read_bw / ib_read_lat).
    Read,
    /// SEND (ib_send_bw / ib_send_lat).
    Send,
    /// Atomic fetch-and-add or compare-and-swap on 8 bytes (ib_atomic_bw / ib_atomic_lat).
    Atomic,
}

/// Which atomic operation `atomic` tests (perftest's `-A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AtomicKind {
    /// Compare and swap.
    #[value(name = "CMP_AND_SWAP")]
    CompareAndSwap,
    /// Fetch and add (perftest's default).
    #[value(name = "FETCH_AND_ADD")]
    FetchAndAdd,
}

/// The connection type (perftest's `-c`; UC only for WRITE and SEND, as perftest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connection {
    /// Reliable connected.
    #[value(name = "RC")]
    Rc,
    /// Unreliable connected.
    #[value(name = "UC")]
    Uc,
}

impl Connection {
    /// The QP type of this connection type.
    pub fn qp_type(self) -> QpType {
        match self {
            Connection::Rc => QpType::Rc,
            Connection::Uc => QpType::Uc,
        }
    }
}

/// Bandwidth or latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Test {
    /// Bandwidth and message rate.
    Bw,
    /// Latency.
    Lat,
}

/// Packet driver choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// io_uring, else sockets.
    Auto,
    /// io_uring only.
    Uring,
    /// recvmmsg/sendmmsg.
    Socket,
}

/// Arguments of `ferroce perf`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Operation: write, read, send or atomic.
    #[arg(value_enum)]
    pub operation: Operation,
    /// Test: bw or lat.
    #[arg(value_enum)]
    pub test: Test,
    /// The server to connect to (name or address); without it, wait for a client.
    #[arg(conflicts_with = "loopback")]
    pub server: Option<String>,
    /// Run both ends in this process on two loopback devices (no server, no client).
    #[arg(long)]
    pub loopback: bool,
    /// TCP port of the out-of-band exchange (perftest's).
    #[arg(short = 'p', long = "port", default_value_t = DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Local RoCE address (the GID): by default a client uses the address that routes to
    /// the server, a server every non-loopback address (127.0.0.1 when there is none).
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// Device name (accepted for perftest compatibility; ferroce has one device).
    #[arg(short = 'd', long = "ib-dev")]
    pub device: Option<String>,
    /// Which of the device's addresses is the GID (default: the one the peer talks to,
    /// else the first).
    #[arg(short = 'x', long = "gid-index", short_alias = 'g')]
    pub gid_index: Option<u32>,
    /// Atomic operation of `atomic`.
    #[arg(
        short = 'A',
        long = "atomic_type",
        value_enum,
        default_value = "FETCH_AND_ADD"
    )]
    pub atomic_type: AtomicKind,
    /// Connection type: RC or UC (UC: write and send only).
    #[arg(short = 'c', long = "connection", value_enum, default_value = "RC")]
    pub connection: Connection,
    /// Messages up to this size are sent inline (default 220 for lat, 0 for bw; at most
    /// the device's max_inline_data, 400).
    #[arg(short = 'I', long = "inline_size", value_parser = clap::value_parser!(u32).range(0..=MAX_INLINE))]
    pub inline_size: Option<u32>,
    /// Do not fail on CPU frequency warnings (perftest's `-F`; ferroce measures with the
    /// monotonic clock, so there is nothing to check).
    #[arg(short = 'F', long = "CPU-freq")]
    pub cpu_freq: bool,
    /// Message size in bytes (default 65536 for bw, 2 for lat, 8 for atomic).
    #[arg(short = 's', long = "size", value_parser = at_least_one::<u32>)]
    pub size: Option<u32>,
    /// Iterations per QP (perftest's default: 5000 for bw, 1000 for lat).
    #[arg(short = 'n', long = "iters", value_parser = at_least_one::<u64>)]
    pub iterations: Option<u64>,
    /// Number of QPs (bw).
    #[arg(short = 'q', long = "qp", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_QPS))]
    pub qps: u32,
    /// Path MTU: 256, 512, 1024, 2048 or 4096 (default: the port's active MTU, which rxe
    /// derives from the interface's: 4096 on `lo`, so with --loopback; 1024 on a
    /// 1500-byte Ethernet).
    #[arg(short = 'm', long = "mtu", value_parser = parse_mtu)]
    pub mtu: Option<u32>,
    /// Run for this many seconds instead of a number of iterations.
    #[arg(short = 'D', long = "duration", value_parser = at_least_one::<u64>)]
    pub duration: Option<u64>,
    /// Every size from 2 bytes to 8 MiB (powers of two).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Work requests in flight per QP (bw).
    #[arg(short = 't', long = "tx-depth", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=MAX_DEPTH))]
    pub tx_depth: u32,
    /// Receives posted ahead per QP (send).
    #[arg(short = 'r', long = "rx-depth", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=MAX_DEPTH))]
    pub rx_depth: u32,
    /// A completion is requested every this many work requests (bw).
    #[arg(short = 'Q', long = "cq-mod", default_value_t = 100, value_parser = at_least_one::<u32>)]
    pub cq_mod: u32,
    /// Packet driver.
    #[arg(long, value_enum, default_value = "auto")]
    pub driver: Driver,
    /// The two loopback addresses (client, server).
    #[arg(long, num_args = 2, default_values = ["127.0.0.1", "127.0.0.2"])]
    pub addresses: Vec<IpAddr>,
    /// One JSON object per result line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print both devices' engine and engine-thread counters to stderr at the end.
    #[arg(long)]
    pub counters: bool,
    /// Give up after this many seconds in which the peer sent nothing the run waits for:
    /// a message of the TCP exchange, a completion, a packet (0: wait forever).
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

/// The largest `-q`: the device's `max_qp`.
const MAX_QPS: i64 = 0x1_0000;
/// The largest `-t` and `-r`: one less than the device's `max_qp_wr` (a QP gets one
/// work request more than the depth).
const MAX_DEPTH: i64 = 0x4000 - 1;
/// The largest `-I`: the device's `max_inline_data`.
const MAX_INLINE: i64 = 400;

/// A count or size that must be positive (`-n 0` would run nothing and report it).
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(value) if value >= T::from(1) => Ok(value),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `-m`: one of the five IB path MTUs.
fn parse_mtu(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|&mtu| PathMtu::from_bytes(mtu).is_some())
        .ok_or_else(|| format!("`{text}` is not a path MTU: 256, 512, 1024, 2048 or 4096"))
}

/// `-a` runs every power of two from 2 bytes up to this.
const MAX_ALL_SIZE: u32 = 1 << 23;
/// Inline bytes for latency tests, as perftest's default.
const LAT_INLINE: u32 = 220;
/// perftest's atomic message size.
const ATOMIC_SIZE: u32 = 8;

mod net;

/// `-s`, or perftest's default for the test: 8 for atomics, 2 for latency, 65536 for
/// bandwidth.
fn default_size(args: &Args) -> u32 {
    args.size.unwrap_or(match (args.operation, args.test) {
        (Operation::Atomic, _) => ATOMIC_SIZE,
        (_, Test::Lat) => 2,
        (_, Test::Bw) => 65536,
    })
}

/// The MTU of a loopback run: `-m`, else the port's active MTU as rxe derives it from
/// the interface (4096 on `lo`, whose MTU is 65536).
fn loopback_mtu(args: &Args) -> u32 {
    args.mtu
        .unwrap_or_else(|| crate::address::active_mtu(&args.addresses).bytes())
}

/// perftest's column titles.
fn print_columns(test: Test) {
    match test {
        Test::Bw => println!(
            " #bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]"
        ),
        Test::Lat => println!(
            " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]"
        ),
    }
}

/// perftest's name of the operation in its banner.
fn operation_title(operation: Operation) -> &'static str {
    match operation {
        Operation::Write => "RDMA_Write",
        Operation::Read => "RDMA_Read",
        Operation::Send => "Send",
        Operation::Atomic => "Atomic",
    }
}

/// Runs `ferroce perf`.
pub fn run(args: &Args) -> ExitCode {
    let size = default_size(args);
    if args.operation == Operation::Atomic && (size != ATOMIC_SIZE || args.all) {
        eprintln!("ferroce perf: atomic tests use 8-byte messages (no -s other than 8, no -a)");
        return ExitCode::from(2);
    }
    if args.connection == Connection::Uc
        && matches!(args.operation, Operation::Read | Operation::Atomic)
    {
        eprintln!("ferroce perf: UC has no READ or atomics (-c UC is for write and send)");
        return ExitCode::from(2);
    }
    let sizes: Vec<u32> = if args.all {
        (1..=MAX_ALL_SIZE.trailing_zeros())
            .map(|shift| 1u32 << shift)
            .collect()
    } else {
        vec![size]
    };
    let largest = sizes.iter().copied().max().unwrap_or(size).max(8);
    if let Err(message) = check_region(args, largest) {
        eprintln!("ferroce perf: {message}");
        return ExitCode::from(2);
    }
    if !args.loopback {
        return net::run(args, &sizes);
    }
    if args.addresses.len() != 2 || args.addresses[0] == args.addresses[1] {
        eprintln!("ferroce perf: --addresses needs two different addresses");
        return ExitCode::from(2);
    }
    let bench = match Bench::open(args, largest) {
        Ok(bench) => bench,
        Err(OpenFailure::Device(OpenError::PortBusy { address, port })) => {
            eprintln!(
                "ferroce perf: cannot open the loopback devices: UDP port {port} on {address} \
                 is in use (kernel rxe or another ferroce?); choose two free loopback \
                 addresses with --addresses, e.g. --addresses 127.0.0.3 127.0.0.4"
            );
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("ferroce perf: cannot open the loopback devices: {error}");
            return ExitCode::from(2);
        }
    };
    if !args.json {
        bench.print_header(args);
    }
    let mut failed = false;
    for size in sizes {
        let result = match args.test {
            Test::Bw => bench.bandwidth(args, size).map(Report::Bandwidth),
            Test::Lat => bench.latency(args, size).map(Report::Latency),
        };
        match result {
            Ok(report) => report.print(args, loopback_mtu(args), size),
            Err(error) => {
                eprintln!("ferroce perf: {size} bytes: {error}");
                failed = true;
                break;
            }
        }
    }
    if !args.json {
        println!("{}", "-".repeat(RULE));
    }
    if args.counters {
        for (name, end) in [("client", &bench.client), ("server", &bench.server)] {
            match end.device.counters() {
                Ok((engine, thread)) => eprintln!("{name}: {engine:?}\n{name}: {thread:?}"),
                Err(error) => eprintln!("{name}: counters unavailable: {error}"),
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

const RULE: usize = 87;

/// Refuses a run whose memory region would exceed the device's `max_mr_size`, naming
/// the size and the limit (rather than failing inside the device).
fn check_region(args: &Args, largest: u32) -> Result<(), String> {
    let limit = DeviceLimits::default().max_mr_size;
    let qps = u64::from(args.qps);
    let (bytes, layout) = if args.loopback {
        (u64::from(largest) * qps, "the size × -q")
    } else {
        // Per QP a slot to send from and one the peer targets, in whole pages (net.rs).
        let page = u64::from(crate::exchange::perftest::PerftestConfig::default().cycle_buffer);
        let slot = u64::from(largest).div_ceil(page) * page;
        (2 * slot * qps, "two page-rounded slots of the size per QP")
    };
    if bytes <= limit {
        return Ok(());
    }
    let size = if args.all {
        format!("-a (largest size {largest})")
    } else {
        format!("-s {largest}")
    };
    Err(format!(
        "{size} with -q {qps} needs a memory region of {bytes} bytes ({layout}), more than \
         the device's max_mr_size of {limit} bytes; choose a smaller -s or -q"
    ))
}

/// Why the loopback devices could not be set up.
#[derive(Debug, thiserror::Error)]
enum OpenFailure {
    #[error(transparent)]
    Device(#[from] OpenError),
    #[error(transparent)]
    Verbs(#[from] Error),
}

/// How long a run waits for something only the peer can bring about (`--timeout`).
#[derive(Debug, Clone, Copy)]
struct Patience(Option<Duration>);

impl Patience {
    fn of(args: &Args) -> Patience {
        Patience((args.timeout > 0).then(|| Duration::from_secs(args.timeout)))
    }

    /// Whether a wait that last saw progress at `since` has lasted too long.
    fn exhausted(self, since: Instant) -> bool {
        self.0.is_some_and(|limit| since.elapsed() > limit)
    }

    /// The error of a wait for `what` that lasted too long.
    fn stalled(self, what: &'static str) -> RunError {
        RunError::Stalled {
            seconds: self.0.map_or(0, |limit| limit.as_secs()),
            what,
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Verbs(#[from] Error),
    #[error("work request {wr_id:#x} completed with {status:?} (vendor error {vendor_err:#x})")]
    Completion {
        wr_id: u64,
        status: WcStatus,
        vendor_err: u32,
    },
    #[error(
        "timed out after {seconds} s waiting for {what}: the peer stopped or is unreachable \
         (--timeout changes the wait, 0 waits forever)"
    )]
    Stalled { seconds: u64, what: &'static str },
    #[error("data check failed on QP {0}: the bytes that arrived are not the bytes sent")]
    DataMismatch(usize),
}

struct End {
    device: Device,
    cq: CompletionQueue,
    mr: MemoryRegion,
    qps: Vec<QueuePair>,
}

struct Bench {
    client: End,
    server: End,
    /// Bytes of each QP's slice of the regions.
    slice: u64,
    /// Latency runs have posted their receives ahead.
    receives_posted: std::cell::Cell<bool>,
}

fn access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

impl Bench {
    fn open(args: &Args, largest: u32) -> Result<Bench, OpenFailure> {
        let mtu = PathMtu::from_bytes(loopback_mtu(args)).unwrap_or(PathMtu::Mtu1024);
        let slice = u64::from(largest);
        let end = |address: IpAddr| -> Result<End, OpenFailure> {
            let mut config = DeviceConfig::with_address(address);
            config.active_mtu = mtu;
            config.driver = match args.driver {
                Driver::Auto => DriverKind::Auto,
                Driver::Uring => DriverKind::Uring,
                Driver::Socket => DriverKind::Socket,
            };
            let device = crate::address::open_config(config)?;
            let pd = device.alloc_pd()?;
            let cqe = (args.tx_depth + args.rx_depth) * args.qps + 16;
            let cq = device.create_cq(cqe.min(0x7fff), None)?;
            let mr = pd.reg_mr(slice * u64::from(args.qps), access())?;
            let mut attributes = QpInitAttributes::new(args.connection.qp_type(), &cq);
            attributes.cap = QpCap {
                max_send_wr: args.tx_depth + 1,
                max_recv_wr: args.rx_depth + 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: LAT_INLINE,
            };
            let qps = (0..args.qps)
                .map(|_| pd.create_qp(&attributes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(End {
                device,
                cq,
                mr,
                qps,
            })
        };
        let client = end(args.addresses[0])?;
        let server = end(args.addresses[1])?;
        for (i, (c, s)) in client.qps.iter().zip(&server.qps).enumerate() {
            let c_end = RemoteEndpoint {
                address: args.addresses[0],
                qpn: c.qp_num(),
                psn: Psn::new(0x10_0000 + i as u32),
            };
            let s_end = RemoteEndpoint {
                address: args.addresses[1],
                qpn: s.qp_num(),
                psn: Psn::new(0x20_0000 + i as u32),
            };
            c.connect(s_end, c_end.psn, mtu, access())?;
            s.connect(c_end, s_end.psn, mtu, access())?;
        }
        Ok(Bench {
            client,
            server,
            slice,
            receives_posted: std::cell::Cell::new(false),
        })
    }

    fn print_header(&self, args: &Args) {
        let name = operation_title(args.operation);
        let test = match args.test {
            Test::Bw => "BW",
            Test::Lat => "Latency",
        };
        let driver = self
            .client
            .device
            .drivers()
            .first()
            .map_or("?", |d| match d.1 {
                DriverKind::Uring => "io_uring",
                DriverKind::Socket => "socket",
                DriverKind::Auto => "auto",
            });
        println!("{}", "-".repeat(RULE));
        println!("                    {name} {test} Test (ferroce loopback)");
        println!(
            " Client/server     : {} <-> {} (UDP 4791, {driver} driver)",
            args.addresses[0], args.addresses[1]
        );
        println!(
            " Connection type   : RC     Number of qps : {}     MTU : {}",
            args.qps,
            loopback_mtu(args)
        );
        if args.test == Test::Bw {
            println!(
                " TX depth          : {}     CQ moderation : {}",
                args.tx_depth, args.cq_mod
            );
        }
        println!("{}", "-".repeat(RULE));
        print_columns(args.test);
    }

    fn iterations(args: &Args) -> u64 {
        args.iterations.unwrap_or(match args.test {
            Test::Bw => 5000,
            Test::Lat => 1000,
        })
    }

    /// Fills each QP's source slice with its own pattern and clears the destination.
    fn prepare(&self, args: &Args, size: u32) -> Result<Vec<Vec<u8>>, Error> {
        let (source, destination) = match args.operation {
            Operation::Read => (&self.server.mr, &self.client.mr),
            Operation::Write | Operation::Send | Operation::Atomic => {
                (&self.client.mr, &self.server.mr)
            }
        };
        let mut patterns = Vec::new();
        for q in 0..args.qps as usize {
            let offset = q as u64 * self.slice;
            let pattern: Vec<u8> = (0..size as usize)
                .map(|i| {
                    (i as u8)
                        .wrapping_mul(13)
                        .wrapping_add(size as u8 ^ q as u8 ^ 0x5a)
                })
                .collect();
            source.write(offset, &pattern)?;
            destination.write(offset, &vec![0; size as usize])?;
            patterns.push(pattern);
        }
        Ok(patterns)
    }

    fn request(&self, args: &Args, q: usize, size: u32, wr_id: u64, signaled: bool) -> SendRequest {
        let offset = q as u64 * self.slice;
        let (client, server) = (&self.client.mr, &self.server.mr);
        let wr = match args.operation {
            Operation::Write => SendRequest::write(wr_id, server.addr() + offset, server.rkey()),
            Operation::Read => SendRequest::read(wr_id, server.addr() + offset, server.rkey()),
            Operation::Send => SendRequest::send(wr_id),
            Operation::Atomic => atomic_request(
                args.atomic_type,
                wr_id,
                server.addr() + offset,
                server.rkey(),
            ),
        };
        wr.sge(client, offset, size).signaled(signaled)
    }

    fn bandwidth(&self, args: &Args, size: u32) -> Result<Bandwidth, RunError> {
        let patterns = self.prepare(args, size)?;
        let qps = args.qps as usize;
        let per_qp = match args.duration {
            Some(_) => u64::MAX,
            None => Self::iterations(args),
        };
        // With a duration every WR is signaled, so stopping at any point drains cleanly.
        let cq_mod = if args.duration.is_some() {
            1
        } else {
            u64::from(args.cq_mod.min(args.tx_depth))
        };
        let deadline = args.duration.map(Duration::from_secs);
        let tx_depth = u64::from(args.tx_depth);
        let mut posted = vec![0u64; qps];
        let mut done = vec![0u64; qps];
        let mut since_signal = vec![0u64; qps];
        // SEND: receives the server has posted and the sends they cover.
        let mut credits = vec![0u64; qps];
        if args.operation == Operation::Send {
            for (q, qp) in self.server.qps.iter().enumerate() {
                let ahead = u64::from(args.rx_depth).min(per_qp);
                for _ in 0..ahead {
                    qp.post_recv(self.receive(q))?;
                }
                credits[q] = ahead;
            }
        }
        let mut recv_posted: Vec<u64> = credits.clone();
        let mut wcs: Vec<WorkCompletion> = Vec::with_capacity(256);
        let mut batch: Vec<SendRequest> = Vec::with_capacity(args.tx_depth as usize);
        let mut marks: Vec<(Instant, u64)> = Vec::new();
        let start = Instant::now();
        marks.push((start, 0));
        let mut total_done = 0u64;
        let mut stopping = false;
        let mut last_progress = Instant::now();
        let patience = Patience::of(args);
        loop {
            if let Some(limit) = deadline {
                stopping |= start.elapsed() >= limit;
            }
            let mut all_done = true;
            for q in 0..qps {
                // Every request the window allows goes in one list: one round of the
                // engine, one batch of datagrams to the kernel.
                batch.clear();
                while !stopping
                    && posted[q] < per_qp
                    && posted[q] - done[q] < tx_depth
                    && (args.operation != Operation::Send || credits[q] > 0)
                {
                    let last = posted[q] + 1 == per_qp;
                    let signaled = since_signal[q] + 1 >= cq_mod || last;
                    let covered = since_signal[q] + 1;
                    let wr_id = (q as u64) << 32 | covered;
                    batch.push(self.request(args, q, size, wr_id, signaled));
                    posted[q] += 1;
                    if args.operation == Operation::Send {
                        credits[q] -= 1;
                    }
                    since_signal[q] = if signaled { 0 } else { covered };
                }
                if !batch.is_empty() {
                    self.client.qps[q]
                        .post_send_list(batch.drain(..))
                        .map_err(Error::from)?;
                }
                let finished = if stopping {
                    done[q] == posted[q]
                } else {
                    done[q] >= per_qp
                };
                all_done &= finished;
            }
            if all_done {
                break;
            }
            wcs.clear();
            let mut progress = false;
            if self.client.cq.poll_into(256, &mut wcs) > 0 {
                progress = true;
                for wc in &wcs {
                    check(wc)?;
                    let q = (wc.wr_id >> 32) as usize;
                    let covered = wc.wr_id & 0xffff_ffff;
                    if let Some(count) = done.get_mut(q) {
                        *count += covered;
                        total_done += covered;
                    }
                }
                marks.push((Instant::now(), total_done));
            }
            if args.operation == Operation::Send {
                wcs.clear();
                if self.server.cq.poll_into(256, &mut wcs) > 0 {
                    progress = true;
                    for wc in &wcs {
                        check(wc)?;
                        let q = wc.wr_id as usize;
                        if q < qps && recv_posted[q] < per_qp && !stopping {
                            self.server.qps[q].post_recv(self.receive(q))?;
                            recv_posted[q] += 1;
                            credits[q] += 1;
                        }
                    }
                }
            }
            if progress {
                last_progress = Instant::now();
            } else if patience.exhausted(last_progress) {
                return Err(patience.stalled("a completion"));
            } else {
                std::thread::yield_now();
            }
        }
        let elapsed = start.elapsed();
        // Receives still posted when a timed SEND run stops stay for the next size; they
        // span the whole slice, so they fit it.
        self.verify(args, size, &patterns)?;
        let iterations = done.iter().copied().min().unwrap_or(0);
        let bytes = total_done as f64 * f64::from(size);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let average = bytes / seconds / MIB;
        Ok(Bandwidth {
            iterations,
            // The whole run is one of the stretches the peak is the best of.
            peak: (peak_rate(&marks, tx_depth * qps as u64) * f64::from(size) / MIB).max(average),
            average,
            msg_rate: total_done as f64 / seconds / 1e6,
        })
    }

    /// A receive spanning QP `q`'s whole slice, so receives left over from a timed run
    /// fit any later size.
    fn receive(&self, q: usize) -> RecvRequest {
        RecvRequest::new(q as u64).sge(&self.server.mr, q as u64 * self.slice, self.slice as u32)
    }

    fn verify(&self, args: &Args, size: u32, patterns: &[Vec<u8>]) -> Result<(), RunError> {
        let destination = match args.operation {
            Operation::Read => &self.client.mr,
            Operation::Write | Operation::Send => &self.server.mr,
            // Atomics change the target by their own rule; their completions are checked.
            Operation::Atomic => return Ok(()),
        };
        for (q, pattern) in patterns.iter().enumerate() {
            let got = destination.to_vec(q as u64 * self.slice, size as usize)?;
            if &got != pattern {
                return Err(RunError::DataMismatch(q));
            }
        }
        Ok(())
    }

    fn latency(&self, args: &Args, size: u32) -> Result<Latency, RunError> {
        let iterations = Self::iterations(args);
        let deadline = args.duration.map(Duration::from_secs);
        let (c, s) = (&self.client, &self.server);
        let (cq_c, cq_s) = (&c.cq, &s.cq);
        let one_sided = matches!(args.operation, Operation::Read | Operation::Atomic);
        let inline = size <= args.inline_size.unwrap_or(LAT_INLINE) && !one_sided;
        let payload_c = c.mr.to_vec(0, size as usize)?;
        let payload_s = s.mr.to_vec(0, size as usize)?;
        let ping = |end: &End, peer: &End, payload: &[u8], wr_id: u64| -> Result<(), Error> {
            let wr = match args.operation {
                Operation::Send => SendRequest::send(wr_id),
                _ => SendRequest::write_with_imm(wr_id, peer.mr.addr(), peer.mr.rkey(), 1),
            };
            let wr = if inline {
                wr.inline(payload)
            } else {
                wr.sge(&end.mr, 0, size)
            };
            end.qps[0].post_send(wr.signaled(false))
        };
        let recv = |end: &End| -> Result<(), Error> {
            let wr = match args.operation {
                // The whole slice, so receives left over fit the next size of `-a`.
                Operation::Send => RecvRequest::new(0).sge(&end.mr, 0, self.slice as u32),
                _ => RecvRequest::new(0),
            };
            end.qps[0].post_recv(wr)
        };
        // Receives are posted ahead once; each round trip consumes and reposts one, so
        // later sizes of `-a` find them in place.
        if !one_sided && !self.receives_posted.replace(true) {
            for _ in 0..args.rx_depth.min(64) {
                recv(c)?;
                recv(s)?;
            }
        }
        let mut samples: Vec<f64> = Vec::with_capacity(iterations.min(1 << 24) as usize);
        let start = Instant::now();
        let mut wcs = Vec::with_capacity(4);
        let wait = Waiter {
            patience: Patience::of(args),
            what: "a completion",
        };
        let mut unsignaled = 0u32;
        let mut n = 0u64;
        loop {
            let more = match deadline {
                Some(limit) => start.elapsed() < limit,
                None => n < iterations,
            };
            if !more {
                break;
            }
            n += 1;
            let t0 = Instant::now();
            match args.operation {
                Operation::Read | Operation::Atomic => {
                    let wr = if args.operation == Operation::Read {
                        SendRequest::read(n, s.mr.addr(), s.mr.rkey())
                    } else {
                        atomic_request(args.atomic_type, n, s.mr.addr(), s.mr.rkey())
                    };
                    c.qps[0].post_send(wr.sge(&c.mr, 0, size))?;
                    wait.one(cq_c, &mut wcs)?;
                    samples.push(t0.elapsed().as_secs_f64() * 1e6);
                }
                Operation::Write | Operation::Send => {
                    // Unsignaled sends need a signaled one now and then to retire them.
                    unsignaled += 1;
                    let signal = unsignaled >= args.tx_depth.min(64);
                    if signal {
                        unsignaled = 0;
                    }
                    ping(c, s, &payload_c, n)?;
                    wait.receive(cq_s, &mut wcs)?;
                    recv(s)?;
                    ping(s, c, &payload_s, n)?;
                    wait.receive(cq_c, &mut wcs)?;
                    recv(c)?;
                    samples.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
                    if signal {
                        // A signaled zero-byte WRITE from each side retires its sends.
                        for (end, peer) in [(c, s), (s, c)] {
                            end.qps[0].post_send(SendRequest::write(
                                0,
                                peer.mr.addr(),
                                peer.mr.rkey(),
                            ))?;
                        }
                        wait.one(cq_c, &mut wcs)?;
                        wait.one(cq_s, &mut wcs)?;
                    }
                }
            }
        }
        Ok(Latency::from_samples(samples))
    }
}

/// perftest's atomic work request: add 1, or swap in the counter when it still holds 0
/// (perftest compares against 0 and swaps in a fixed value; either way one 8-byte
/// request and response).
fn atomic_request(
    kind: AtomicKind,
    wr_id: u64,
    remote_addr: u64,
    rkey: ferroce::wire::Rkey,
) -> SendRequest {
    match kind {
        AtomicKind::FetchAndAdd => SendRequest::fetch_add(wr_id, remote_addr, rkey, 1),
        AtomicKind::CompareAndSwap => SendRequest::compare_swap(wr_id, remote_addr, rkey, 0, 1),
    }
}

fn check(wc: &WorkCompletion) -> Result<(), RunError> {
    if wc.status == WcStatus::Success {
        Ok(())
    } else {
        Err(RunError::Completion {
            wr_id: wc.wr_id,
            status: wc.status,
            vendor_err: wc.vendor_err,
        })
    }
}

/// Waits for completions, for as long as its patience lasts; a timeout names `what`.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    patience: Patience,
    what: &'static str,
}

impl Waiter {
    /// Spins (yielding) for one completion.
    fn one(
        self,
        cq: &CompletionQueue,
        wcs: &mut Vec<WorkCompletion>,
    ) -> Result<WorkCompletion, RunError> {
        let start = Instant::now();
        loop {
            wcs.clear();
            if cq.poll_into(1, wcs) == 1 {
                let wc = wcs.remove(0);
                check(&wc)?;
                return Ok(wc);
            }
            if self.patience.exhausted(start) {
                return Err(self.patience.stalled(self.what));
            }
            std::thread::yield_now();
        }
    }

    /// Waits for a receive completion, skipping send completions.
    fn receive(self, cq: &CompletionQueue, wcs: &mut Vec<WorkCompletion>) -> Result<(), RunError> {
        loop {
            let wc = self.one(cq, wcs)?;
            if matches!(
                wc.opcode,
                ferroce::WcOpcode::Recv | ferroce::WcOpcode::RecvRdmaWithImm
            ) {
                return Ok(());
            }
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The best rate (messages per second) over any stretch of at least `window` messages.
fn peak_rate(marks: &[(Instant, u64)], window: u64) -> f64 {
    let mut best = 0.0f64;
    let mut first = 0;
    for last in 1..marks.len() {
        while first + 1 < last && marks[last].1 - marks[first + 1].1 >= window {
            first += 1;
        }
        let messages = marks[last].1 - marks[first].1;
        let seconds = (marks[last].0 - marks[first].0).as_secs_f64();
        if messages >= window.min(marks[marks.len() - 1].1) && seconds > 0.0 {
            best = best.max(messages as f64 / seconds);
        }
    }
    best
}

struct Bandwidth {
    iterations: u64,
    /// MiB/s.
    peak: f64,
    /// MiB/s.
    average: f64,
    /// Millions of messages per second.
    msg_rate: f64,
}

struct Latency {
    iterations: usize,
    min: f64,
    max: f64,
    typical: f64,
    average: f64,
    stdev: f64,
    p99: f64,
    p999: f64,
}

impl Latency {
    fn from_samples(mut samples: Vec<f64>) -> Latency {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let at = |fraction: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let index = ((n as f64 * fraction).ceil() as usize).clamp(1, n) - 1;
            samples[index]
        };
        let average = if n == 0 {
            0.0
        } else {
            samples.iter().sum::<f64>() / n as f64
        };
        let variance = if n < 2 {
            0.0
        } else {
            samples.iter().map(|s| (s - average).powi(2)).sum::<f64>() / (n - 1) as f64
        };
        Latency {
            iterations: n,
            min: samples.first().copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
            typical: at(0.5),
            average,
            stdev: variance.sqrt(),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

enum Report {
    Bandwidth(Bandwidth),
    Latency(Latency),
}

impl Report {
    fn print(&self, args: &Args, mtu: u32, size: u32) {
        let operation = format!("{:?}", args.operation).to_lowercase();
        match (self, args.json) {
            (Report::Bandwidth(b), false) => println!(
                " {:<10} {:<10}       {:<10.2}          {:<10.2}            {:.6}",
                size, b.iterations, b.peak, b.average, b.msg_rate
            ),
            (Report::Bandwidth(b), true) => println!(
                "{}",
                json!({
                    "operation": operation, "test": "bw", "qps": args.qps, "mtu": mtu,
                    "bytes": size, "iterations": b.iterations,
                    "bw_peak_mib_per_sec": b.peak, "bw_average_mib_per_sec": b.average,
                    "msg_rate_mpps": b.msg_rate,
                })
            ),
            (Report::Latency(l), false) => println!(
                " {:<6} {:<10}     {:<10.2}     {:<10.2}   {:<10.2}       {:<10.2}     {:<10.2}      {:<10.2}             {:<10.2}",
                size, l.iterations, l.min, l.max, l.typical, l.average, l.stdev, l.p99, l.p999
            ),
            (Report::Latency(l), true) => println!(
                "{}",
                json!({
                    "operation": operation, "test": "lat", "mtu": mtu,
                    "bytes": size, "iterations": l.iterations,
                    "t_min_usec": l.min, "t_max_usec": l.max, "t_typical_usec": l.typical,
                    "t_avg_usec": l.average, "t_stdev_usec": l.stdev,
                    "p99_usec": l.p99, "p99_9_usec": l.p999,
                })
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_statistics() {
        let l = Latency::from_samples((1..=1000).rev().map(f64::from).collect());
        assert_eq!((l.min, l.max, l.typical), (1.0, 1000.0, 500.0));
        assert_eq!((l.p99, l.p999), (990.0, 999.0));
        assert!((l.average - 500.5).abs() < 1e-9);
        assert!((l.stdev - 288.8194).abs() < 1e-3);
    }

    #[test]
    fn peak_covers_a_window() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // 100 messages in the first 10 ms, then 100 in the next 100 ms.
        let marks = [(ms(0), 0), (ms(10), 100), (ms(110), 200)];
        let peak = peak_rate(&marks, 100);
        assert!((peak - 10_000.0).abs() < 1.0, "{peak}");
    }
}

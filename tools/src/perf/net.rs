//! `ferroce perf` between two processes or hosts: a server (no address given) listens on
//! TCP `-p` (18515) and serves one test; a client connects to it. Both speak perftest's
//! out-of-band exchange ([`crate::exchange::perftest`]) and run the RDMA traffic as perftest
//! 4.5 does (`perftest_resources.c`), so either end can be a perftest tool:
//!
//! - `write`/`read`/`atomic` bw: the client posts `-t` requests deep per QP against the
//!   server's buffer, one completion every `-Q`; the server is passive and waits for the
//!   final barrier, then prints the report the client sends it.
//! - `send` bw: the server posts `-r` receives per QP before the last barrier and reposts
//!   one per completion; both sides print their own result.
//! - `write` lat (`run_iter_lat_write`): each side writes `-s` bytes whose last byte is
//!   its send count into the peer's buffer, and polls the last byte of its own buffer for
//!   the peer's count; the server sends first. Latency is half the time between posts.
//! - `send` lat (`run_iter_lat_send`): ping-pong of SENDs, the client first.
//! - `read`/`atomic` lat: the client times each request to its completion; the server
//!   only waits for the close.
//!
//! Buffers are laid out as perftest's: per QP a slot of `max(size, page size)` bytes to
//! send from and, after all of those, one slot per QP that the peer targets (the `vaddr`
//! announced in the keys).
//!
//! Checked live against perftest 4.5-0.17 on kernel rxe (the interop guest, 2026-11-26,
//! `-x 1 -F -n 100`, default sizes): `ib_{write,read,send,atomic}_bw` (atomic both
//! `-A` kinds) and `ib_{write,read,send}_lat` as clients of ferroce servers, and ferroce
//! clients of the same eight perftest servers: all sixteen runs exited 0 on both sides
//! with results (the perftest BW servers printed ferroce's report).
//!
//! With `-a` both sides run every size, separated by one key exchange (a barrier); that
//! matches ferroce peers, not perftest's own `-a` sequence.
#![allow(clippy::disallowed_methods)] // A benchmark measures real time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferroce::wire::Psn;
use ferroce::{
    CompletionQueue, Device, Error, MemoryRegion, PathMtu, QpCap, QpInitAttributes, QueuePair,
    RecvRequest, RemoteEndpoint, SendRequest, WorkCompletion,
};

use super::{
    access, atomic_request, check, operation_title, peak_rate, Args, Bandwidth, Latency, Operation,
    Patience, Report, RunError, Test, Waiter, LAT_INLINE, MIB, RULE,
};
use crate::address;
use crate::exchange::perftest::{
    BwReport, PerftestConfig, PerftestKeys, PerftestSession, Role, TestKind, TestSpec, Verb,
};
use crate::exchange::OobError;

/// How long a client tries to reach the server's TCP port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a long run prints a progress line (stderr).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why a networked run failed.
#[derive(Debug, thiserror::Error)]
enum NetError {
    /// Before any exchange: bad flags, addresses, ports, an unreachable server (exit 2).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Exchange(#[from] OobError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<Error> for NetError {
    fn from(error: Error) -> NetError {
        NetError::Run(RunError::Verbs(error))
    }
}

/// Runs a server (no `SERVER` argument) or a client.
pub(super) fn run(args: &Args, sizes: &[u32]) -> ExitCode {
    if args.duration.is_some() && (args.test == Test::Lat || args.all) {
        eprintln!("ferroce perf: -D over the network is for bw tests without -a");
        return ExitCode::from(2);
    }
    let result = match &args.server {
        Some(server) => client(args, server, sizes),
        None => server(args, sizes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(NetError::Setup(message)) => {
            eprintln!("ferroce perf: {message}");
            ExitCode::from(2)
        }
        Err(NetError::Exchange(error @ OobError::TimedOut { .. })) => {
            eprintln!(
                "ferroce perf: {error}: nothing came for {} s, the peer is connected but \
                 silent (--timeout changes the wait, 0 waits forever)",
                args.timeout
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("ferroce perf: {error}");
            ExitCode::from(1)
        }
    }
}

fn client(args: &Args, server: &str, sizes: &[u32]) -> Result<(), NetError> {
    // IPv4 first, as pingpong: `localhost` may resolve to ::1 first, and a server
    // listens on IPv4.
    let target = (server, args.port)
        .to_socket_addrs()
        .map_err(|error| NetError::Setup(format!("cannot resolve {server}: {error}")))?
        .min_by_key(|target| target.is_ipv6())
        .ok_or_else(|| NetError::Setup(format!("{server} has no address")))?;
    let local = match args.bind {
        Some(address) => address,
        None => {
            let chosen = address::client_address(target.ip()).map_err(|error| {
                NetError::Setup(format!("no route to {}: {error}", target.ip()))
            })?;
            if let Some(note) = chosen.note() {
                eprintln!("ferroce perf: {note}");
            }
            chosen.address
        }
    };
    let device =
        address::open_device(&[local]).map_err(|error| NetError::Setup(error.to_string()))?;
    let connect_timeout = Patience::of(args).0.unwrap_or(CONNECT_TIMEOUT);
    let stream = TcpStream::connect_timeout(&target, connect_timeout).map_err(|error| {
        NetError::Setup(format!(
            "cannot connect to {target}: {error} (is a ferroce perf or perftest server \
             listening there? -p sets the port)"
        ))
    })?;
    exchange_timeouts(args, &stream);
    let gid = choose_gid(args, &device, None)?;
    serve_or_run(args, Role::Client, &stream, device, gid, sizes)
}

fn server(args: &Args, sizes: &[u32]) -> Result<(), NetError> {
    let addresses = args
        .bind
        .map_or_else(address::server_addresses, |a| vec![a]);
    let device =
        address::open_device(&addresses).map_err(|error| NetError::Setup(error.to_string()))?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port)).map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            NetError::Setup(format!(
                "TCP port {} is in use (another server?); choose another with -p",
                args.port
            ))
        } else {
            NetError::Setup(format!("cannot listen on TCP port {}: {error}", args.port))
        }
    })?;
    eprintln!(
        " Waiting for client to connect... (TCP port {}, RoCE on {:?})",
        args.port, addresses
    );
    let (stream, _) = listener
        .accept()
        .map_err(|error| NetError::Setup(format!("accepting a client failed: {error}")))?;
    drop(listener);
    exchange_timeouts(args, &stream);
    let toward = stream.local_addr().ok().map(|a| a.ip().to_canonical());
    let gid = choose_gid(args, &device, toward)?;
    serve_or_run(args, Role::Server, &stream, device, gid, sizes)
}

/// No delay on the exchange's messages, and `--timeout` on every read and write of it:
/// a silent peer ends the run with the message it was waiting for.
fn exchange_timeouts(args: &Args, stream: &TcpStream) {
    let timeout = Patience::of(args).0;
    // Best effort: without them the exchange waits as perftest's does.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
}

/// The local GID: `-x` picks one of the device's addresses; else the one the TCP peer
/// reached (a server with several), else the first.
fn choose_gid(args: &Args, device: &Device, toward: Option<IpAddr>) -> Result<IpAddr, NetError> {
    let addresses = &device.config().addresses;
    if let Some(index) = args.gid_index {
        return addresses.get(index as usize).copied().ok_or_else(|| {
            NetError::Setup(format!(
                "no GID index {index}: the device has {} ({addresses:?}); use --bind to \
                 choose the address",
                addresses.len()
            ))
        });
    }
    let first = addresses
        .first()
        .copied()
        .ok_or_else(|| NetError::Setup("the device has no address".into()))?;
    Ok(toward
        .filter(|address| addresses.contains(address))
        .unwrap_or(first))
}

fn spec(args: &Args) -> TestSpec {
    TestSpec {
        verb: match args.operation {
            Operation::Write => Verb::Write,
            Operation::Read => Verb::Read,
            Operation::Send => Verb::Send,
            Operation::Atomic => Verb::Atomic,
        },
        kind: match args.test {
            Test::Bw => TestKind::Bandwidth,
            Test::Lat => TestKind::Latency,
        },
        duplex: false,
    }
}

fn random_psn() -> Psn {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    Psn::new((hasher.finish() & u64::from(Psn::MASK)) as u32)
}

/// The whole session of one end: exchange, traffic, results, end of test.
fn serve_or_run(
    args: &Args,
    role: Role,
    stream: &TcpStream,
    device: Device,
    gid: IpAddr,
    sizes: &[u32],
) -> Result<(), NetError> {
    let mtu = args
        .mtu
        .and_then(PathMtu::from_bytes)
        .unwrap_or(device.config().active_mtu);
    let config = PerftestConfig {
        mtu,
        ..PerftestConfig::default()
    };
    let mut session = PerftestSession::new(stream, role, spec(args), config);
    let negotiated = session.negotiate()?;
    let mut end = End::create(args, role, device, gid, sizes, negotiated.cycle_buffer)?;
    let local = end.local.clone();
    let remote = session.connect(&local, |remote| {
        end.connect(remote, negotiated.mtu)?;
        Ok(())
    })?;
    end.remote = remote;
    let mtu_bytes = negotiated.mtu.bytes();
    if !args.json {
        end.print_header(role, mtu_bytes);
    }
    let print = |report: Report, size: u32| report.print(args, mtu_bytes, size);
    let mut client_report = BwReport::default();
    for (index, &size) in sizes.iter().enumerate() {
        if index > 0 {
            // Receives for the next size are in place before the peer may send.
            end.post_receives()?;
            end.await_peer(stream)?;
            session.exchange_keys(&local[0])?;
        }
        match (role, args.test, args.operation) {
            (Role::Client, Test::Bw, _) => {
                let result = end.client_bandwidth(size)?;
                client_report = BwReport {
                    size: u64::from(size),
                    iterations: result.iterations,
                    bw_peak: result.peak,
                    bw_average: result.average,
                    message_rate_average: result.msg_rate,
                    per_port: None,
                };
                print(Report::Bandwidth(result), size);
            }
            (Role::Server, Test::Bw, Operation::Send) => {
                let result = end.server_receive_bandwidth(stream, size)?;
                print(Report::Bandwidth(result), size);
            }
            // The passive side of a one-sided test: nothing to do until the barrier.
            (Role::Server, Test::Bw, _) => {}
            (_, Test::Lat, Operation::Write) => {
                print(Report::Latency(end.write_latency(role, size)?), size);
            }
            (_, Test::Lat, Operation::Send) => {
                print(Report::Latency(end.send_latency(role, size)?), size);
            }
            (Role::Client, Test::Lat, _) => {
                print(Report::Latency(end.one_sided_latency(size)?), size);
            }
            (Role::Server, Test::Lat, _) => {}
        }
    }
    end.await_peer(stream)?;
    let remote_report = session.finish(&client_report)?;
    // A one-sided bandwidth server prints the client's result, as perftest does.
    let passive_server =
        role == Role::Server && args.test == Test::Bw && args.operation != Operation::Send;
    if let (true, Some(report)) = (passive_server, remote_report) {
        let size = u32::try_from(report.size).unwrap_or(u32::MAX);
        print(
            Report::Bandwidth(Bandwidth {
                iterations: report.iterations,
                peak: report.bw_peak,
                average: report.bw_average,
                msg_rate: report.message_rate_average,
            }),
            size,
        );
    }
    if !args.json {
        println!("{}", "-".repeat(RULE));
    }
    Ok(())
}

/// One end's resources.
struct End<'a> {
    args: &'a Args,
    device: Device,
    gid: IpAddr,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    mr: MemoryRegion,
    qps: Vec<QueuePair>,
    /// Bytes per QP slot (one to send from, one the peer targets).
    slot: u64,
    /// Receives posted and not yet completed, per QP.
    outstanding: Vec<u64>,
    local: Vec<PerftestKeys>,
    remote: Vec<PerftestKeys>,
    role: Role,
}

impl<'a> End<'a> {
    fn create(
        args: &'a Args,
        role: Role,
        device: Device,
        gid: IpAddr,
        sizes: &[u32],
        cycle_buffer: u32,
    ) -> Result<End<'a>, Error> {
        let largest = u64::from(sizes.iter().copied().max().unwrap_or(8).max(8));
        let page = u64::from(cycle_buffer.clamp(64, 1 << 20));
        let slot = largest.max(page).div_ceil(page) * page;
        let qps_count = u64::from(args.qps);
        let pd = device.alloc_pd()?;
        let cqe = ((args.tx_depth + args.rx_depth) * args.qps + 16).min(0x7fff);
        let send_cq = device.create_cq(cqe, None)?;
        let recv_cq = device.create_cq(cqe, None)?;
        let mr = pd.reg_mr(2 * slot * qps_count, access())?;
        let mut attributes = QpInitAttributes::new(args.connection.qp_type(), &send_cq);
        attributes.recv_cq = &recv_cq;
        attributes.cap = QpCap {
            max_send_wr: args.tx_depth + 1,
            max_recv_wr: args.rx_depth + 1,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: inline_size(args).max(LAT_INLINE),
        };
        let qps = (0..args.qps)
            .map(|_| pd.create_qp(&attributes))
            .collect::<Result<Vec<_>, _>>()?;
        // perftest announces its READ/atomic depth in READ and atomic tests, 1 otherwise.
        let out_reads = match args.operation {
            Operation::Read | Operation::Atomic => 16,
            Operation::Write | Operation::Send => 1,
        };
        let local = qps
            .iter()
            .enumerate()
            .map(|(q, qp)| PerftestKeys {
                lid: 0,
                out_reads,
                qpn: qp.qp_num(),
                psn: random_psn(),
                rkey: mr.rkey(),
                vaddr: mr.addr() + (qps_count + q as u64) * slot,
                gid: address::gid(gid),
                srqn: 0,
            })
            .collect();
        Ok(End {
            args,
            device,
            gid,
            send_cq,
            recv_cq,
            mr,
            outstanding: vec![0; qps.len()],
            qps,
            slot,
            local,
            remote: Vec::new(),
            role,
        })
    }

    /// RTR and RTS toward the peer's keys, then (SEND tests) the first receives.
    fn connect(&mut self, remote: &[PerftestKeys], mtu: PathMtu) -> Result<(), NetError> {
        if remote.len() != self.qps.len() {
            return Err(NetError::Setup(format!(
                "the peer sent keys for {} QPs, this end has {} (-q must match)",
                remote.len(),
                self.qps.len()
            )));
        }
        for ((qp, ours), theirs) in self.qps.iter().zip(&self.local).zip(remote) {
            if theirs.gid == Ipv6Addr::UNSPECIFIED {
                return Err(NetError::Setup(
                    "the peer sent no GID (RoCE needs one; run perftest with -x)".into(),
                ));
            }
            let endpoint = RemoteEndpoint {
                address: IpAddr::V6(theirs.gid).to_canonical(),
                qpn: theirs.qpn,
                psn: theirs.psn,
            };
            qp.connect(endpoint, ours.psn, mtu, access())?;
        }
        self.post_receives()
    }

    /// Tops up each QP's receives where this end receives SENDs: the send bw server and
    /// both send lat ends.
    fn post_receives(&mut self) -> Result<(), NetError> {
        let receives = self.args.operation == Operation::Send
            && (self.args.test == Test::Lat || self.role == Role::Server);
        if !receives {
            return Ok(());
        }
        let wanted = match (self.args.test, self.args.duration) {
            (Test::Bw, None) => u64::from(self.args.rx_depth).min(iterations(self.args)),
            _ => u64::from(self.args.rx_depth),
        };
        for q in 0..self.qps.len() {
            while self.outstanding[q] < wanted {
                self.post_receive(q)?;
            }
        }
        Ok(())
    }

    /// A server reads first in each exchange after traffic, and a passive one (the
    /// target of WRITEs, READs, atomics) has no completion to wait for while the client
    /// runs: it waits here for the client's next message, counting the client's packets
    /// as progress, so a long run never meets the socket's timeout and a vanished
    /// client does. A client writes first: nothing to wait for.
    fn await_peer(&self, stream: &TcpStream) -> Result<(), NetError> {
        if self.role != Role::Server {
            return Ok(());
        }
        let patience = Patience::of(self.args);
        let packets_in = || {
            self.device
                .counters()
                .map_or(0, |(engine, _)| engine.packets_in)
        };
        let mut packets = packets_in();
        let mut last_progress = Instant::now();
        while !peer_has_spoken(stream).map_err(|error| NetError::Exchange(OobError::Io(error)))? {
            let now = packets_in();
            if now != packets {
                packets = now;
                last_progress = Instant::now();
            } else if patience.exhausted(last_progress) {
                return Err(patience
                    .stalled("the peer's packets or its next message of the exchange")
                    .into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// A receive spanning QP `q`'s send slot, which fits every size of the run.
    fn post_receive(&mut self, q: usize) -> Result<(), Error> {
        let slot_len = u32::try_from(self.slot).unwrap_or(u32::MAX);
        self.qps[q].post_recv(RecvRequest::new(q as u64).sge(
            &self.mr,
            q as u64 * self.slot,
            slot_len,
        ))?;
        self.outstanding[q] += 1;
        Ok(())
    }

    fn print_header(&self, role: Role, mtu: u32) {
        let args = self.args;
        let test = match args.test {
            Test::Bw => "BW",
            Test::Lat => "Latency",
        };
        println!("{}", "-".repeat(RULE));
        println!(
            "                    {} {test} Test",
            operation_title(args.operation)
        );
        let role = match role {
            Role::Client => "client",
            Role::Server => "server",
        };
        println!(
            " ferroce {role}      : RoCE on {} (UDP 4791), {} device address(es)",
            self.gid,
            self.device.config().addresses.len()
        );
        println!(
            " Connection type   : RC     Number of qps : {}     MTU : {mtu}",
            args.qps
        );
        if args.test == Test::Bw {
            println!(
                " TX depth          : {}     CQ moderation : {}",
                args.tx_depth, args.cq_mod
            );
        }
        println!("{}", "-".repeat(RULE));
        for (keys, side) in [(&self.local, "local"), (&self.remote, "remote")] {
            for key in keys.iter() {
                println!(
                    " {side} address: LID {:04x} QPN {:#08x} PSN {:#08x} RKey {:#010x} VAddr {:#016x}",
                    key.lid,
                    key.qpn.value(),
                    key.psn.value(),
                    key.rkey.0,
                    key.vaddr
                );
                println!(" GID: {}", key.gid);
            }
        }
        println!("{}", "-".repeat(RULE));
        // The passive end of a READ or atomic latency test has nothing to report.
        let passive = role == "server"
            && args.test == Test::Lat
            && matches!(args.operation, Operation::Read | Operation::Atomic);
        if !passive {
            super::print_columns(args.test);
        }
    }

    /// The request a bandwidth client (or a read/atomic latency client) posts on QP `q`.
    fn request(&self, q: usize, size: u32, wr_id: u64, payload: Option<&[u8]>) -> SendRequest {
        let remote = &self.remote[q];
        let wr = match self.args.operation {
            Operation::Write => SendRequest::write(wr_id, remote.vaddr, remote.rkey),
            Operation::Read => SendRequest::read(wr_id, remote.vaddr, remote.rkey),
            Operation::Send => SendRequest::send(wr_id),
            Operation::Atomic => {
                atomic_request(self.args.atomic_type, wr_id, remote.vaddr, remote.rkey)
            }
        };
        match payload {
            Some(bytes) => wr.inline(bytes),
            None => wr.sge(&self.mr, q as u64 * self.slot, size),
        }
    }

    /// Waits for completions within `--timeout`, naming `what` when it expires.
    fn waiter(&self, what: &'static str) -> Waiter {
        Waiter {
            patience: Patience::of(self.args),
            what,
        }
    }

    /// Inline bytes for a `size`-byte WRITE or SEND, when `-I` allows it.
    fn inline_payload(&self, size: u32) -> Option<Vec<u8>> {
        let inlined = size <= inline_size(self.args)
            && matches!(self.args.operation, Operation::Write | Operation::Send);
        inlined.then(|| vec![0u8; size as usize])
    }

    /// perftest's `run_iter_bw` on the client.
    fn client_bandwidth(&mut self, size: u32) -> Result<Bandwidth, RunError> {
        let args = self.args;
        let qps = self.qps.len();
        let per_qp = match args.duration {
            Some(_) => u64::MAX,
            None => iterations(args),
        };
        // With a duration every WR is signaled, so stopping at any point drains cleanly.
        let cq_mod = if args.duration.is_some() {
            1
        } else {
            u64::from(args.cq_mod.min(args.tx_depth))
        };
        let deadline = args.duration.map(Duration::from_secs);
        let tx_depth = u64::from(args.tx_depth);
        let payload = self.inline_payload(size);
        let mut posted = vec![0u64; qps];
        let mut done = vec![0u64; qps];
        let mut since_signal = vec![0u64; qps];
        let mut wcs: Vec<WorkCompletion> = Vec::with_capacity(256);
        let mut marks: Vec<(Instant, u64)> = Vec::new();
        let start = Instant::now();
        marks.push((start, 0));
        let mut total_done = 0u64;
        let mut stopping = false;
        let mut last_progress = start;
        let patience = Patience::of(args);
        let mut progress = Progress::new(args.json);
        loop {
            if let Some(limit) = deadline {
                stopping |= start.elapsed() >= limit;
            }
            let mut all_done = true;
            for q in 0..qps {
                while !stopping && posted[q] < per_qp && posted[q] - done[q] < tx_depth {
                    let last = posted[q] + 1 == per_qp;
                    let signaled = since_signal[q] + 1 >= cq_mod || last;
                    let covered = since_signal[q] + 1;
                    let wr_id = (q as u64) << 32 | covered;
                    let wr = self.request(q, size, wr_id, payload.as_deref());
                    self.qps[q].post_send(wr.signaled(signaled))?;
                    posted[q] += 1;
                    since_signal[q] = if signaled { 0 } else { covered };
                }
                all_done &= if stopping {
                    done[q] == posted[q]
                } else {
                    done[q] >= per_qp
                };
            }
            if all_done {
                break;
            }
            wcs.clear();
            if self.send_cq.poll_into(256, &mut wcs) > 0 {
                for wc in &wcs {
                    check(wc)?;
                    let q = (wc.wr_id >> 32) as usize;
                    let covered = wc.wr_id & 0xffff_ffff;
                    if let Some(count) = done.get_mut(q) {
                        *count += covered;
                        total_done += covered;
                    }
                }
                let now = Instant::now();
                marks.push((now, total_done));
                last_progress = now;
                progress.tick(size, total_done, start);
            } else if patience.exhausted(last_progress) {
                return Err(patience.stalled("the peer's responses (a completion)"));
            } else {
                std::thread::yield_now();
            }
        }
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        let bytes = total_done as f64 * f64::from(size);
        let average = bytes / seconds / MIB;
        Ok(Bandwidth {
            iterations: done.iter().copied().min().unwrap_or(0),
            // The whole run is one of the stretches the peak is the best of.
            peak: (peak_rate(&marks, tx_depth * qps as u64) * f64::from(size) / MIB).max(average),
            average,
            msg_rate: total_done as f64 / seconds / 1e6,
        })
    }

    /// perftest's `run_iter_bw_server` for SEND: count receives (reposting while more are
    /// due) until every expected message arrived, or the client moved on to the next
    /// exchange (a timed run, or a client given fewer iterations).
    fn server_receive_bandwidth(
        &mut self,
        stream: &TcpStream,
        size: u32,
    ) -> Result<Bandwidth, NetError> {
        let args = self.args;
        let qps = self.qps.len();
        let per_qp = args.duration.is_none().then(|| iterations(args));
        let mut received = vec![0u64; qps];
        let mut reposted = self.outstanding.clone();
        let mut total = 0u64;
        let mut wcs: Vec<WorkCompletion> = Vec::with_capacity(256);
        let mut marks: Vec<(Instant, u64)> = Vec::new();
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_look = Instant::now();
        let patience = Patience::of(args);
        let mut progress = Progress::new(args.json);
        loop {
            if per_qp.is_some_and(|n| received.iter().all(|&r| r >= n)) {
                break;
            }
            wcs.clear();
            if self.recv_cq.poll_into(256, &mut wcs) > 0 {
                let now = Instant::now();
                for wc in &wcs {
                    check(wc)?;
                    let q = wc.wr_id as usize;
                    if q >= qps {
                        continue;
                    }
                    received[q] += 1;
                    total += 1;
                    self.outstanding[q] = self.outstanding[q].saturating_sub(1);
                    if per_qp.is_none_or(|n| reposted[q] < n) {
                        self.post_receive(q)?;
                        reposted[q] += 1;
                    }
                }
                if first.is_none() {
                    // The first batch counts toward the peak, from its arrival.
                    marks.push((now, 0));
                }
                let start = *first.get_or_insert(now);
                marks.push((now, total));
                last = now;
                last_progress = now;
                progress.tick(size, total, start);
                continue;
            }
            if last_look.elapsed() > Duration::from_millis(1) {
                last_look = Instant::now();
                if peer_has_spoken(stream)
                    .map_err(|error| NetError::Exchange(OobError::Io(error)))?
                {
                    break;
                }
            }
            if patience.exhausted(last_progress) {
                return Err(patience
                    .stalled("the peer's SENDs (a receive completion)")
                    .into());
            }
            std::thread::yield_now();
        }
        let start = first.unwrap_or(last);
        let seconds = (last - start).as_secs_f64().max(1e-9);
        let bytes = total as f64 * f64::from(size);
        let window = u64::from(args.rx_depth) * qps as u64;
        let average = bytes / seconds / MIB;
        Ok(Bandwidth {
            iterations: received.iter().copied().min().unwrap_or(0),
            peak: (peak_rate(&marks, window) * f64::from(size) / MIB).max(average),
            average,
            msg_rate: total as f64 / seconds / 1e6,
        })
    }

    /// perftest's `run_iter_lat_write`: the server writes first; each side waits for the
    /// peer's count in the last byte of its target slot, then writes its own.
    fn write_latency(&mut self, role: Role, size: u32) -> Result<Latency, RunError> {
        let n = iterations(self.args);
        let remote = self.remote[0];
        let last_byte = u64::from(size) - 1;
        let poll_offset = self.qps.len() as u64 * self.slot + last_byte;
        let mut payload = self.inline_payload(size);
        let mut posted_at: Vec<Instant> = Vec::with_capacity(n.min(1 << 24) as usize);
        let mut wcs = Vec::with_capacity(1);
        let acknowledged = self.waiter("the peer's acknowledgement (a send completion)");
        let (mut sent, mut received, mut completed) = (0u64, 0u64, 0u64);
        while sent < n || received < n || completed < n {
            if received < n && !(sent < 1 && role == Role::Server) {
                received += 1;
                self.wait_for_byte(poll_offset, received as u8)?;
            }
            if sent < n {
                posted_at.push(Instant::now());
                sent += 1;
                // perftest's `(char)++scnt` in the last byte.
                let mark = sent as u8;
                let wr = SendRequest::write(sent, remote.vaddr, remote.rkey);
                let wr = match payload.as_mut() {
                    Some(bytes) => {
                        if let Some(byte) = bytes.last_mut() {
                            *byte = mark;
                        }
                        wr.inline(bytes)
                    }
                    None => {
                        self.mr.write(last_byte, &[mark])?;
                        wr.sge(&self.mr, 0, size)
                    }
                };
                self.qps[0].post_send(wr.signaled(true))?;
            }
            if completed < n {
                acknowledged.one(&self.send_cq, &mut wcs)?;
                completed += 1;
            }
        }
        Ok(ping_pong_latency(&posted_at, n))
    }

    /// Waits until the byte at `offset` of the region is `value` (the peer's WRITE).
    fn wait_for_byte(&self, offset: u64, value: u8) -> Result<(), RunError> {
        let start = Instant::now();
        let patience = Patience::of(self.args);
        let mut byte = [0u8; 1];
        loop {
            self.mr.read(offset, &mut byte)?;
            if byte[0] == value {
                return Ok(());
            }
            if patience.exhausted(start) {
                return Err(patience.stalled("the peer's RDMA WRITE"));
            }
            std::thread::yield_now();
        }
    }

    /// perftest's `run_iter_lat_send`: the client sends first; each side waits for a
    /// receive, reposts it, and sends; a send is signaled every `-Q`.
    fn send_latency(&mut self, role: Role, size: u32) -> Result<Latency, RunError> {
        let n = iterations(self.args);
        let cq_mod = u64::from(self.args.cq_mod.min(self.args.tx_depth));
        let payload = self.inline_payload(size);
        let mut posted_at: Vec<Instant> = Vec::with_capacity(n.min(1 << 24) as usize);
        let mut wcs = Vec::with_capacity(1);
        let sends = self.waiter("the peer's SEND (a receive completion)");
        let acknowledged = self.waiter("the peer's acknowledgement (a send completion)");
        let (mut sent, mut received) = (0u64, 0u64);
        while sent < n || received < n {
            if received < n && !(sent < 1 && role == Role::Client) {
                sends.one(&self.recv_cq, &mut wcs)?;
                received += 1;
                self.outstanding[0] = self.outstanding[0].saturating_sub(1);
                self.post_receive(0)?;
            }
            if sent < n {
                posted_at.push(Instant::now());
                sent += 1;
                let signaled = sent % cq_mod == 0 || sent == n;
                let wr = self.request(0, size, sent, payload.as_deref());
                self.qps[0].post_send(wr.signaled(signaled))?;
                if signaled {
                    acknowledged.one(&self.send_cq, &mut wcs)?;
                }
            }
        }
        Ok(ping_pong_latency(&posted_at, n))
    }

    /// perftest's `run_iter_lat` (READ, atomics): each request timed to its completion.
    fn one_sided_latency(&mut self, size: u32) -> Result<Latency, RunError> {
        let n = iterations(self.args);
        let mut samples = Vec::with_capacity(n.min(1 << 24) as usize);
        let mut wcs = Vec::with_capacity(1);
        let responses = self.waiter("the peer's response (a completion)");
        for i in 0..n {
            let start = Instant::now();
            let wr = self.request(0, size, i, None);
            self.qps[0].post_send(wr.signaled(true))?;
            responses.one(&self.send_cq, &mut wcs)?;
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(Latency::from_samples(samples))
    }
}

fn iterations(args: &Args) -> u64 {
    super::Bench::iterations(args)
}

/// `-I`, or perftest's default: 220 bytes for latency, none for bandwidth.
fn inline_size(args: &Args) -> u32 {
    args.inline_size.unwrap_or(match args.test {
        Test::Lat => LAT_INLINE,
        Test::Bw => 0,
    })
}

/// The statistics of a ping-pong's `n` posts; like perftest, the row counts the
/// iterations, though `n` posts give `n - 1` gaps.
fn ping_pong_latency(posted_at: &[Instant], n: u64) -> Latency {
    let mut latency = Latency::from_samples(half_gaps(posted_at));
    latency.iterations = usize::try_from(n).unwrap_or(usize::MAX);
    latency
}

/// Half of each gap between consecutive posts, in microseconds: a ping-pong's one-way
/// latency as perftest reports it.
fn half_gaps(posted_at: &[Instant]) -> Vec<f64> {
    posted_at
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_secs_f64() * 1e6 / 2.0)
        .collect()
}

/// Whether the peer sent something (or closed) on the exchange socket, without reading.
fn peer_has_spoken(stream: &TcpStream) -> io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let result = stream.peek(&mut byte);
    stream.set_nonblocking(false)?;
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(error) => Err(error),
    }
}

/// A progress line on stderr every [`PROGRESS_EVERY`] of a long run.
struct Progress {
    quiet: bool,
    next: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            next: Instant::now() + PROGRESS_EVERY,
        }
    }

    fn tick(&mut self, size: u32, messages: u64, start: Instant) {
        if self.quiet || Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + PROGRESS_EVERY;
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            " ... {size} bytes: {messages} messages in {seconds:.1} s, {:.2} MiB/sec so far",
            messages as f64 * f64::from(size) / seconds / MIB
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_gaps_are_one_way_latencies() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let gaps = half_gaps(&[at(0), at(10), at(30)]);
        assert_eq!(gaps.len(), 2);
        assert!((gaps[0] - 5.0).abs() < 1e-6 && (gaps[1] - 10.0).abs() < 1e-6);
        assert!(half_gaps(&[t0]).is_empty());
    }

    #[test]
    fn psns_are_24_bits_and_vary() {
        let psns: Vec<u32> = (0..8).map(|_| random_psn().value()).collect();
        assert!(psns.iter().all(|&psn| psn <= Psn::MASK));
        assert!(psns.windows(2).any(|pair| pair[0] != pair[1]));
    }

    #[test]
    fn peer_has_spoken_sees_data_and_close() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert!(!peer_has_spoken(&server).expect("peek"));
        io::Write::write_all(&mut client, b"x").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !peer_has_spoken(&server).expect("peek") {
            assert!(Instant::now() < deadline, "data never seen");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Peeking leaves the byte for the exchange to read.
        let mut byte = [0u8; 1];
        io::Read::read_exact(&mut &server, &mut byte).expect("read");
        assert_eq!(&byte, b"x");
        drop(client);
        while !peer_has_spoken(&server).expect("peek") {
            assert!(Instant::now() < deadline, "close never seen");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

//! `ferroce pingpong {rc,ud} [SERVER]`: rdma-core's `ibv_rc_pingpong` and
//! `ibv_ud_pingpong` on a ferroce device, with their flags, defaults, output and TCP
//! exchange ([`crate::exchange::pingpong`]), so either end can be the rdma-core tool.
//!
//! Without `SERVER` it is the server: it listens on TCP `-p` (18515), reads the
//! client's LID:QPN:PSN:GID, moves its QP to RTR (and RTS) and answers with its own.
//! The client then sends `-n` SENDs of `-s` bytes, each answered by one from the server
//! (a ping-pong: every message waits for the previous answer), and both print
//! rdma-core's two result lines. Both ends send and receive from one buffer, as rdma-core
//! does, so the server echoes what it received.
//!
//! With `-c` every received message is checked: the client fills each message with a
//! pattern that changes from one iteration to the next and checks that the echo is
//! that pattern; the server checks each message against the same pattern, or — from a
//! peer that does not use it (rdma-core's client) — against the first message. The
//! pattern keeps the first byte of each 4 KiB page 0, which is what rdma-core's `-c`
//! server checks. Checked live against rdma-core 44 on kernel rxe (both tools, both
//! roles, `-c` on both ends).
//!
//! Local address: see [`crate::address`]; `--bind` overrides it, `-g` picks a GID of
//! the device (default 0, the chosen address). The advertised GID is always the real
//! one (rdma-core sends zeros without `-g`; a zero GID from the peer means "use the
//! address the TCP connection came from").
//!
//! Differences from rdma-core: sends never use inline data (the buffer lives in the
//! engine; an SGE send is one copy already); `-l` is accepted but RoCEv2 packets carry no
//! service level; `-N` (the `ibv_wr_*` API) sends the same packets; `-o`, `-O`, `-P`,
//! `-t`, `-j`, `-U` are refused. `--timeout` (ferroce's) ends a run whose peer went
//! silent instead of waiting forever. The server listens before printing its address,
//! so a script may start the client once the first line appears.
//!
//! Exit status: 0 on success, 1 when the run fails, 2 on bad flags.
#![allow(clippy::disallowed_methods)] // A benchmark tool measures real time.

use std::hash::{BuildHasher, Hasher};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferroce::wire::{Psn, Qpn};
use ferroce::{
    AccessFlags, AddressVector, CompletionChannel, CompletionQueue, Device, Error, MemoryRegion,
    PathMtu, QpAttr, QpCap, QpInitAttributes, QpState, QpType, QueuePair, RecvRequest, SendRequest,
    WcStatus, WorkCompletion,
};
use tracing::{debug, info};

use crate::address::{self, OpenError};
use crate::devinfo::DEVICE_NAME;
use crate::exchange::pingpong::{client_exchange, server_exchange, PingpongDest};
use crate::exchange::{OobError, DEFAULT_PORT};

/// The transport service, as the two rdma-core tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Reliable connected (`ibv_rc_pingpong`).
    Rc,
    /// Unreliable datagram (`ibv_ud_pingpong`).
    Ud,
}

/// Arguments of `ferroce pingpong`, spelled as rdma-core spells them.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// rc or ud.
    #[arg(value_enum)]
    pub transport: Transport,
    /// The server to connect to; without it, start a server and wait for a connection.
    pub server: Option<String>,
    /// Listen on / connect to this TCP port.
    #[arg(short = 'p', long = "port", default_value_t = DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Use this device (ferroce has one: ferroce0).
    #[arg(short = 'd', long = "ib-dev")]
    pub ib_dev: Option<String>,
    /// Use this port of the device (ferroce devices have one port: 1).
    #[arg(short = 'i', long = "ib-port", default_value_t = 1)]
    pub ib_port: u32,
    /// Size of the message to exchange (default 4096; ud: 1024).
    #[arg(short = 's', long = "size", value_parser = clap::value_parser!(u32).range(1..=MAX_SIZE))]
    pub size: Option<u32>,
    /// Path MTU: 256, 512, 1024, 2048 or 4096 (rc only).
    #[arg(short = 'm', long = "mtu")]
    pub mtu: Option<u32>,
    /// Number of receives to post at a time.
    #[arg(short = 'r', long = "rx-depth", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub rx_depth: u32,
    /// Number of exchanges.
    #[arg(short = 'n', long = "iters", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Service level (accepted; RoCEv2 packets carry none).
    #[arg(short = 'l', long = "sl", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=15))]
    pub sl: u8,
    /// Sleep on CQ events (default: poll).
    #[arg(short = 'e', long = "events")]
    pub events: bool,
    /// Local port GID index (default 0: the chosen local address).
    #[arg(short = 'g', long = "gid-idx")]
    pub gid_idx: Option<u32>,
    /// Validate every received buffer.
    #[arg(short = 'c', long = "chk")]
    pub chk: bool,
    /// Use on-demand paging (not supported).
    #[arg(short = 'o', long = "odp")]
    pub odp: bool,
    /// Use implicit on-demand paging (not supported).
    #[arg(short = 'O', long = "iodp")]
    pub iodp: bool,
    /// Prefetch an ODP MR (not supported).
    #[arg(short = 'P', long = "prefetch")]
    pub prefetch: bool,
    /// Get CQEs with timestamps (not supported).
    #[arg(short = 't', long = "ts")]
    pub ts: bool,
    /// Use device memory (not supported).
    #[arg(short = 'j', long = "dm")]
    pub dm: bool,
    /// Use the new post-send API (rc; the same packets).
    #[arg(short = 'N', long = "new_send")]
    pub new_send: bool,
    /// Allow unprotected memory on CoCo guests (not supported).
    #[arg(short = 'U', long = "allow-cc-unprotected")]
    pub allow_cc_unprotected: bool,
    /// Local address(es), the device's GIDs (default: client, the address that routes to
    /// the server; server, every non-loopback address or 127.0.0.1). Repeatable.
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Vec<IpAddr>,
    /// Give up after this many seconds without progress (0: wait forever).
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

/// The largest `-s` (the engine's regions are at most 1 GiB, with room for the GRH).
const MAX_SIZE: i64 = (1 << 30) - 64;
const RECV_WRID: u64 = 1;
const SEND_WRID: u64 = 2;
/// ud_pingpong's Q_Key.
const UD_QKEY: u32 = 0x1111_1111;
/// Bytes of GRH at the start of every UD receive buffer.
const GRH_LEN: u64 = 40;
/// rdma-core's buffer fill.
const FILL: u8 = 0x7b;
/// The page size rdma-core's `-c` marks and checks (`sysconf(_SC_PAGESIZE)` on x86-64).
const RDMA_CORE_PAGE: usize = 4096;

/// How long the poll loop spins before it sleeps on the CQ. rdma-core spins forever,
/// but here each end has an engine thread too: with fewer than four cores for two ends
/// and two engine threads, spinning takes the core the answer must come from (measured
/// on 2 cores: 5 µs of spinning beat 100 µs by 3-4×).
fn spin_time() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Duration::from_micros(if cores >= 4 { 50 } else { 5 })
    })
}

/// Runs `ferroce pingpong`.
pub fn run(args: &Args) -> ExitCode {
    let options = match Options::from_args(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("ferroce pingpong: {message}");
            return ExitCode::from(2);
        }
    };
    match pingpong(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferroce pingpong: {error}");
            ExitCode::from(1)
        }
    }
}

/// The checked flags.
#[derive(Debug, Clone)]
struct Options {
    transport: Transport,
    server: Option<String>,
    port: u16,
    size: u32,
    mtu: PathMtu,
    rx_depth: u32,
    iters: u32,
    events: bool,
    gid_index: u32,
    validate: bool,
    bind: Vec<IpAddr>,
    timeout: Option<Duration>,
}

impl Options {
    fn from_args(args: &Args) -> Result<Options, String> {
        let refused = [
            (args.odp, "-o/--odp: on-demand paging"),
            (args.iodp, "-O/--iodp: implicit on-demand paging"),
            (args.prefetch, "-P/--prefetch: ODP prefetch"),
            (args.ts, "-t/--ts: completion timestamps"),
            (args.dm, "-j/--dm: device memory"),
            (
                args.allow_cc_unprotected,
                "-U/--allow-cc-unprotected: CoCo unprotected memory",
            ),
        ];
        if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
            return Err(format!("{what} is not supported by ferroce"));
        }
        if args.transport == Transport::Ud {
            if args.mtu.is_some() {
                return Err(
                    "-m is an rc option (ibv_ud_pingpong has none: UD messages are \
                            limited by the port's active MTU)"
                        .into(),
                );
            }
            if args.new_send {
                return Err("-N is an rc option (ibv_ud_pingpong has none)".into());
            }
        }
        let mtu = match args.mtu {
            None => PathMtu::Mtu1024,
            Some(bytes) => PathMtu::from_bytes(bytes).ok_or_else(|| {
                format!("-m {bytes}: the MTU must be 256, 512, 1024, 2048 or 4096")
            })?,
        };
        if args.server.as_deref() == Some("") {
            return Err("the server address is empty".into());
        }
        let size = args.size.unwrap_or(match args.transport {
            Transport::Rc => 4096,
            Transport::Ud => 1024,
        });
        if args.sl != 0 {
            debug!(
                sl = args.sl,
                "service level accepted; RoCEv2 packets carry none"
            );
        }
        Ok(Options {
            transport: args.transport,
            server: args.server.clone(),
            port: args.port,
            size,
            mtu,
            rx_depth: args.rx_depth,
            iters: args.iters,
            events: args.events,
            gid_index: args.gid_idx.unwrap_or(0),
            validate: args.chk,
            bind: args.bind.clone(),
            timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        })
        .and_then(|options| {
            if let Some(name) = &args.ib_dev {
                if name != DEVICE_NAME {
                    return Err(format!(
                        "IB device {name} not found (ferroce has {DEVICE_NAME})"
                    ));
                }
            }
            if args.ib_port != 1 {
                return Err(format!(
                    "-i {}: {DEVICE_NAME} has one port, port 1",
                    args.ib_port
                ));
            }
            Ok(options)
        })
    }

    fn tool(&self) -> &'static str {
        match self.transport {
            Transport::Rc => "rc",
            Transport::Ud => "ud",
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
enum PingpongError {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error(transparent)]
    Verbs(#[from] Error),
    #[error("{what}: {source}")]
    Step { what: String, source: Error },
    #[error(
        "can't read sgid of index {0}: the device has {1} GID(s), its addresses, index 0 \
         first (rxe's -g 1 is ferroce's -g 0; --bind adds addresses)"
    )]
    GidIndex(u32, usize),
    #[error("Requested size larger than port MTU ({0})")]
    SizeAboveMtu(u32),
    #[error("{server}:{port}: {source}")]
    Resolve {
        server: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("no route to {peer}: {source}")]
    Route {
        peer: IpAddr,
        source: std::io::Error,
    },
    #[error("Couldn't listen to port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("accept() failed: {0}")]
    Accept(std::io::Error),
    #[error("Couldn't connect to {server}:{port}: {source}")]
    Connect {
        server: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("address exchange with {peer} failed: {source}")]
    Exchange { peer: SocketAddr, source: OobError },
    #[error("Failed status {name} ({code}) for wr_id {wr_id} (vendor error {vendor_err:#x})")]
    Completion {
        name: &'static str,
        code: u32,
        wr_id: u64,
        vendor_err: u32,
    },
    #[error("Completion for unknown wr_id {0}")]
    UnknownWrId(u64),
    #[error("CQ event for unknown CQ {0}")]
    UnknownCq(u64),
    #[error(
        "no completion for {seconds} s after {sent} sends and {received} receives of {iters}: \
         the peer stopped or is unreachable{lossy} (--timeout changes the wait)"
    )]
    Stalled {
        seconds: u64,
        sent: u32,
        received: u32,
        iters: u32,
        lossy: &'static str,
    },
    #[error("message {iteration}: {length} bytes received, expected {expected}")]
    Length {
        iteration: u32,
        length: u32,
        expected: u64,
    },
    #[error(
        "invalid data in message {iteration}: byte {offset} is {found:#04x}, expected \
         {expected:#04x}"
    )]
    Data {
        iteration: u32,
        offset: usize,
        found: u8,
        expected: u8,
    },
}

/// `ibv_wc_status_str` and the `ibv_wc_status` value.
fn wc_status(status: WcStatus) -> (&'static str, u32) {
    match status {
        WcStatus::Success => ("success", 0),
        WcStatus::LocLenErr => ("local length error", 1),
        WcStatus::LocQpOpErr => ("local QP operation error", 2),
        WcStatus::LocProtErr => ("local protection error", 4),
        WcStatus::WrFlushErr => ("Work Request Flushed Error", 5),
        WcStatus::BadRespErr => ("bad response error", 7),
        WcStatus::LocAccessErr => ("local access error", 8),
        WcStatus::RemInvReqErr => ("remote invalid request error", 9),
        WcStatus::RemAccessErr => ("remote access error", 10),
        WcStatus::RemOpErr => ("remote operation error", 11),
        WcStatus::RetryExcErr => ("transport retry counter exceeded", 12),
        WcStatus::RnrRetryExcErr => ("RNR retry counter exceeded", 13),
        WcStatus::GeneralErr => ("general error", 21),
        _ => ("unknown", 21),
    }
}

/// A random PSN, `lrand48() & 0xffffff` as rdma-core draws it.
fn random_psn() -> Psn {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    Psn::new((hasher.finish() & u64::from(Psn::MASK)) as u32)
}

/// Message `iteration` under `-c`: a keyed stream, so consecutive messages differ
/// almost everywhere and a stale or shifted buffer is caught — except the first byte of
/// every 4 KiB page, which is 0: rdma-core's client writes `i / page_size % sizeof(char)`
/// (always 0) there and its `-c` server checks exactly those bytes of the last message.
fn pattern(iteration: u32, length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(length + 8);
    let mut state = u64::from(iteration).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    while out.len() < length {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(length);
    for byte in out.iter_mut().step_by(RDMA_CORE_PAGE) {
        *byte = 0;
    }
    out
}

/// The device, its resources and this end's address.
struct Context {
    options: Options,
    device: Device,
    channel: Option<CompletionChannel>,
    cq: CompletionQueue,
    mr: MemoryRegion,
    qp: QueuePair,
    /// Where messages start in the buffer (UD: after the GRH).
    offset: u64,
    local: PingpongDest,
    local_address: IpAddr,
}

impl Context {
    /// Opens the device and creates PD, MR, CQ and QP (INIT), as `pp_init_ctx` does.
    fn open(options: &Options, addresses: &[IpAddr]) -> Result<Context, PingpongError> {
        debug!(?addresses, "opening the device");
        let device = address::open_device(addresses)?;
        let gids = device.config().addresses.clone();
        let local_address = *gids
            .get(options.gid_index as usize)
            .ok_or(PingpongError::GidIndex(options.gid_index, gids.len()))?;
        let port = device.query_port()?;
        let offset = match options.transport {
            Transport::Rc => 0,
            Transport::Ud => {
                if options.size > port.active_mtu.bytes() {
                    return Err(PingpongError::SizeAboveMtu(port.active_mtu.bytes()));
                }
                GRH_LEN
            }
        };
        let step = |what: &str| {
            let what = what.to_string();
            move |source| PingpongError::Step { what, source }
        };
        let channel = options.events.then(|| device.create_comp_channel());
        let pd = device.alloc_pd().map_err(step("Couldn't allocate PD"))?;
        let length = u64::from(options.size) + offset;
        let mr = pd
            .reg_mr(length, AccessFlags::LOCAL_WRITE)
            .map_err(step("Couldn't register MR"))?;
        mr.write(0, &vec![FILL; length as usize])
            .map_err(step("Couldn't fill the buffer"))?;
        let cq = device
            .create_cq(options.rx_depth + 1, channel.as_ref())
            .map_err(step("Couldn't create CQ"))?;
        let qp_type = match options.transport {
            Transport::Rc => QpType::Rc,
            Transport::Ud => QpType::Ud,
        };
        let mut init = QpInitAttributes::new(qp_type, &cq);
        init.cap = QpCap {
            max_send_wr: 1,
            max_recv_wr: options.rx_depth,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp = pd.create_qp(&init).map_err(step("Couldn't create QP"))?;
        let init = match options.transport {
            Transport::Rc => QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                access: Some(AccessFlags::NONE),
                ..QpAttr::default()
            },
            Transport::Ud => QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                qkey: Some(UD_QKEY),
                ..QpAttr::default()
            },
        };
        qp.modify(&init)
            .map_err(step("Failed to modify QP to INIT"))?;
        let local = PingpongDest {
            lid: 0,
            qpn: qp.qp_num(),
            psn: random_psn(),
            gid: address::gid(local_address),
        };
        Ok(Context {
            options: options.clone(),
            device,
            channel,
            cq,
            mr,
            qp,
            offset,
            local,
            local_address,
        })
    }

    /// Posts `count` receives of the whole buffer (`pp_post_recv`).
    fn post_recv(&self, count: u32) -> Result<(), PingpongError> {
        let length = self.options.size + self.offset as u32;
        for _ in 0..count {
            self.qp
                .post_recv(RecvRequest::new(RECV_WRID).sge(&self.mr, 0, length))?;
        }
        Ok(())
    }

    /// RTR and RTS with rdma-core's attributes (`pp_connect_ctx`).
    fn connect(&self, remote: &PingpongDest, peer: IpAddr) -> Result<RemoteQp, Error> {
        let address = remote_address(remote, peer);
        match self.options.transport {
            Transport::Rc => {
                self.qp.modify(&QpAttr {
                    state: Some(QpState::Rtr),
                    path_mtu: Some(self.options.mtu),
                    dest_qpn: Some(remote.qpn),
                    rq_psn: Some(remote.psn),
                    max_dest_rd_atomic: Some(1),
                    min_rnr_timer: Some(12),
                    av: Some(AddressVector {
                        remote: address,
                        local: Some(self.local_address),
                    }),
                    ..QpAttr::default()
                })?;
                self.qp.modify(&QpAttr {
                    state: Some(QpState::Rts),
                    timeout: Some(14),
                    retry_cnt: Some(7),
                    rnr_retry: Some(7),
                    sq_psn: Some(self.local.psn),
                    max_rd_atomic: Some(1),
                    ..QpAttr::default()
                })?;
            }
            Transport::Ud => {
                self.qp.modify(&QpAttr {
                    state: Some(QpState::Rtr),
                    ..QpAttr::default()
                })?;
                self.qp.modify(&QpAttr {
                    state: Some(QpState::Rts),
                    sq_psn: Some(self.local.psn),
                    ..QpAttr::default()
                })?;
            }
        }
        info!(%address, qpn = remote.qpn.value(), "QP ready to send");
        Ok(RemoteQp {
            address,
            qpn: remote.qpn,
        })
    }

    fn post_send(&self, remote: &RemoteQp) -> Result<(), PingpongError> {
        let request = SendRequest::send(SEND_WRID).sge(&self.mr, self.offset, self.options.size);
        let request = match self.options.transport {
            Transport::Rc => request,
            Transport::Ud => request.ud(remote.address, remote.qpn, UD_QKEY),
        };
        self.qp.post_send(request)?;
        Ok(())
    }

    fn print_local(&self) {
        // ud_pingpong prints a colon before the GID of its own address.
        let separator = match self.options.transport {
            Transport::Rc => ',',
            Transport::Ud => ':',
        };
        println!(
            "  local address:  LID 0x{:04x}, QPN 0x{:06x}, PSN 0x{:06x}{separator} GID {}",
            self.local.lid,
            self.local.qpn.value(),
            self.local.psn.value(),
            self.local.gid
        );
    }
}

fn print_remote(remote: &PingpongDest) {
    println!(
        "  remote address: LID 0x{:04x}, QPN 0x{:06x}, PSN 0x{:06x}, GID {}",
        remote.lid,
        remote.qpn.value(),
        remote.psn.value(),
        remote.gid
    );
}

/// Where the peer's QP is.
#[derive(Debug, Clone, Copy)]
struct RemoteQp {
    address: IpAddr,
    qpn: Qpn,
}

/// The peer's RoCE address: its GID, or — when it sent none (rdma-core without `-g`) —
/// the address its TCP connection came from.
fn remote_address(remote: &PingpongDest, peer: IpAddr) -> IpAddr {
    if remote.gid == Ipv6Addr::UNSPECIFIED {
        peer.to_canonical()
    } else {
        IpAddr::V6(remote.gid).to_canonical()
    }
}

fn pingpong(options: &Options) -> Result<(), PingpongError> {
    let (context, remote, remote_qp) = match &options.server {
        Some(server) => client_setup(options, server)?,
        None => server_setup(options)?,
    };
    let mut run = Run::new(&context, remote_qp, options.server.is_some());
    let elapsed = run.run()?;
    let usec = elapsed.as_secs_f64() * 1e6;
    let bytes = u64::from(options.size) * u64::from(options.iters) * 2;
    println!(
        "{bytes} bytes in {:.2} seconds = {:.2} Mbit/sec",
        usec / 1e6,
        bytes as f64 * 8.0 / usec
    );
    println!(
        "{} iters in {:.2} seconds = {:.2} usec/iter",
        options.iters,
        usec / 1e6,
        usec / f64::from(options.iters)
    );
    if let Ok((counters, _)) = context.device.counters() {
        debug!(?counters, remote = %remote.gid, "engine counters at the end");
    }
    Ok(())
}

fn tcp_timeouts(stream: &TcpStream, timeout: Option<Duration>) {
    // Best effort: without timeouts the exchange waits as rdma-core's does.
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let _ = stream.set_nodelay(true);
}

fn server_setup(options: &Options) -> Result<(Context, PingpongDest, RemoteQp), PingpongError> {
    let addresses = if options.bind.is_empty() {
        address::server_addresses()
    } else {
        options.bind.clone()
    };
    let context = Context::open(options, &addresses)?;
    context.post_recv(options.rx_depth)?;
    if options.events {
        context.cq.req_notify();
    }
    let listener = listen(options.port)?;
    context.print_local();
    info!(
        port = options.port,
        tool = options.tool(),
        "waiting for a client"
    );
    let (mut stream, peer) = listener.accept().map_err(PingpongError::Accept)?;
    drop(listener);
    tcp_timeouts(&stream, options.timeout);
    debug!(%peer, "client connected");
    let mut remote_qp = None;
    let remote = server_exchange(&mut stream, &context.local, |remote| {
        remote_qp = Some(context.connect(remote, peer.ip())?);
        Ok(())
    })
    .map_err(|source| PingpongError::Exchange { peer, source })?;
    print_remote(&remote);
    // The callback ran before the reply was sent; without it there is no reply.
    let remote_qp = remote_qp.unwrap_or(RemoteQp {
        address: remote_address(&remote, peer.ip()),
        qpn: remote.qpn,
    });
    Ok((context, remote, remote_qp))
}

/// Listens on every address, IPv6 and IPv4 (as rdma-core's `AI_PASSIVE` lookup does).
fn listen(port: u16) -> Result<TcpListener, PingpongError> {
    let any_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let any_v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
    match TcpListener::bind(any_v6) {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(PingpongError::Listen {
            port,
            source: error,
        }),
        Err(_) => {
            TcpListener::bind(any_v4).map_err(|source| PingpongError::Listen { port, source })
        }
    }
}

fn client_setup(
    options: &Options,
    server: &str,
) -> Result<(Context, PingpongDest, RemoteQp), PingpongError> {
    let resolve = |source| PingpongError::Resolve {
        server: server.to_string(),
        port: options.port,
        source,
    };
    let mut targets: Vec<SocketAddr> = (server, options.port)
        .to_socket_addrs()
        .map_err(resolve)?
        .collect();
    // IPv4 first: it is what RoCE peers use most, and what the route lookup then picks.
    targets.sort_by_key(|t| t.is_ipv6());
    let first = *targets.first().ok_or_else(|| {
        resolve(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address found",
        ))
    })?;
    let addresses = if options.bind.is_empty() {
        let chosen =
            address::client_address(first.ip()).map_err(|source| PingpongError::Route {
                peer: first.ip(),
                source,
            })?;
        if let Some(note) = chosen.note() {
            eprintln!("ferroce pingpong: {note}");
        }
        vec![chosen.address]
    } else {
        options.bind.clone()
    };
    let context = Context::open(options, &addresses)?;
    context.post_recv(options.rx_depth)?;
    if options.events {
        context.cq.req_notify();
    }
    context.print_local();
    let mut last_error = None;
    let mut stream = None;
    for target in &targets {
        let attempt = match options.timeout {
            Some(timeout) => TcpStream::connect_timeout(target, timeout),
            None => TcpStream::connect(target),
        };
        match attempt {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => {
                debug!(%target, %error, "TCP connect failed");
                last_error = Some(error);
            }
        }
    }
    let Some(mut stream) = stream else {
        return Err(PingpongError::Connect {
            server: server.to_string(),
            port: options.port,
            source: last_error.unwrap_or_else(|| std::io::Error::other("no address to try")),
        });
    };
    tcp_timeouts(&stream, options.timeout);
    let peer = stream.peer_addr().unwrap_or(first);
    let remote = client_exchange(&mut stream, &context.local)
        .map_err(|source| PingpongError::Exchange { peer, source })?;
    drop(stream);
    print_remote(&remote);
    let remote_qp = context
        .connect(&remote, peer.ip())
        .map_err(|source| PingpongError::Step {
            what: "Couldn't connect to remote QP".into(),
            source,
        })?;
    Ok((context, remote, remote_qp))
}

/// What `-c` compares a received message with.
#[derive(Debug)]
enum Expected {
    /// ferroce's per-iteration pattern.
    Pattern,
    /// The first message, from a peer that does not use the pattern (the server of an
    /// rdma-core client, whose buffer never changes).
    SameAsFirst(Vec<u8>),
}

/// The ping-pong loop's state (`parse_single_wc` of rdma-core).
struct Run<'a> {
    context: &'a Context,
    remote: RemoteQp,
    client: bool,
    sent: u32,
    received: u32,
    /// Receives posted and not yet completed.
    outstanding: u32,
    /// Which of RECV_WRID and SEND_WRID the next send waits for.
    pending: u64,
    expected: Option<Expected>,
    completions: Vec<WorkCompletion>,
}

impl<'a> Run<'a> {
    fn new(context: &'a Context, remote: RemoteQp, client: bool) -> Run<'a> {
        Run {
            context,
            remote,
            client,
            sent: 0,
            received: 0,
            outstanding: context.options.rx_depth,
            pending: RECV_WRID,
            expected: context.options.validate.then_some(Expected::Pattern),
            completions: Vec::with_capacity(64),
        }
    }

    fn options(&self) -> &Options {
        &self.context.options
    }

    /// Posts the next send; under `-c` the client first writes its pattern.
    fn send(&mut self) -> Result<(), PingpongError> {
        if self.client && self.options().validate {
            let bytes = pattern(self.sent, self.options().size as usize);
            self.context.mr.write(self.context.offset, &bytes)?;
        }
        self.context.post_send(&self.remote)?;
        self.pending |= SEND_WRID;
        Ok(())
    }

    /// Runs `-n` iterations and returns the time they took.
    fn run(&mut self) -> Result<Duration, PingpongError> {
        if self.client {
            self.send()?;
        }
        let start = Instant::now();
        let mut progress = Progress::new(start, self.options().iters);
        let iters = self.options().iters;
        while self.received < iters || self.sent < iters {
            self.wait()?;
            let mut completions = std::mem::take(&mut self.completions);
            for wc in completions.drain(..) {
                self.complete(&wc)?;
            }
            self.completions = completions;
            progress.tick(self.sent.min(self.received));
        }
        let elapsed = start.elapsed();
        progress.finish();
        Ok(elapsed)
    }

    /// Waits until at least one completion is in `self.completions`.
    fn wait(&mut self) -> Result<(), PingpongError> {
        let context = self.context;
        if let Some(channel) = &context.channel {
            loop {
                let handle = channel
                    .get_cq_event(context.options.timeout)
                    .ok_or_else(|| self.stalled())?;
                if handle != context.cq.handle() {
                    return Err(PingpongError::UnknownCq(handle));
                }
                context.cq.req_notify();
                if context.cq.poll_into(64, &mut self.completions) > 0 {
                    return Ok(());
                }
            }
        }
        if context.cq.poll_into(64, &mut self.completions) > 0 {
            return Ok(());
        }
        // Spin briefly (the answer is usually microseconds away), then sleep on the CQ:
        // on a small machine the engine threads need the cores more than this loop does.
        let since = Instant::now();
        let spin = spin_time();
        loop {
            if context.cq.poll_into(64, &mut self.completions) > 0 {
                return Ok(());
            }
            let waited = since.elapsed();
            if waited < spin {
                std::hint::spin_loop();
                continue;
            }
            let slice = match context.options.timeout {
                Some(timeout) if waited >= timeout => return Err(self.stalled()),
                Some(timeout) => (timeout - waited).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            context.cq.wait(Some(slice));
        }
    }

    fn stalled(&self) -> PingpongError {
        PingpongError::Stalled {
            seconds: self.options().timeout.map_or(0, |t| t.as_secs()),
            sent: self.sent,
            received: self.received,
            iters: self.options().iters,
            lossy: match self.options().transport {
                Transport::Rc => " (RC retransmits forever with retry_cnt 7, as rdma-core sets it)",
                Transport::Ud => ", or a datagram was lost (UD does not retransmit)",
            },
        }
    }

    fn complete(&mut self, wc: &WorkCompletion) -> Result<(), PingpongError> {
        if wc.status != WcStatus::Success {
            let (name, code) = wc_status(wc.status);
            return Err(PingpongError::Completion {
                name,
                code,
                wr_id: wc.wr_id,
                vendor_err: wc.vendor_err,
            });
        }
        match wc.wr_id {
            SEND_WRID => self.sent += 1,
            RECV_WRID => {
                self.outstanding -= 1;
                if self.outstanding <= 1 {
                    let rx_depth = self.options().rx_depth;
                    self.context.post_recv(rx_depth - self.outstanding)?;
                    self.outstanding = rx_depth;
                }
                self.check(wc)?;
                self.received += 1;
            }
            other => return Err(PingpongError::UnknownWrId(other)),
        }
        self.pending &= !wc.wr_id;
        if self.sent < self.options().iters && self.pending == 0 {
            self.send()?;
            self.pending = RECV_WRID | SEND_WRID;
        }
        Ok(())
    }

    /// Length always; contents under `-c`.
    fn check(&mut self, wc: &WorkCompletion) -> Result<(), PingpongError> {
        let size = u64::from(self.options().size);
        let expected_length = size + self.context.offset;
        if u64::from(wc.byte_len) != expected_length {
            return Err(PingpongError::Length {
                iteration: self.received,
                length: wc.byte_len,
                expected: expected_length,
            });
        }
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let found = self.context.mr.to_vec(self.context.offset, size as usize)?;
        let wanted = match expected {
            Expected::Pattern => pattern(self.received, size as usize),
            Expected::SameAsFirst(first) => first.clone(),
        };
        if found == wanted {
            return Ok(());
        }
        if !self.client && self.received == 0 {
            debug!("the client does not send ferroce's pattern: checking that every message equals the first");
            self.expected = Some(Expected::SameAsFirst(found));
            return Ok(());
        }
        let offset = found
            .iter()
            .zip(&wanted)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Err(PingpongError::Data {
            iteration: self.received,
            offset,
            found: found.get(offset).copied().unwrap_or(0),
            expected: wanted.get(offset).copied().unwrap_or(0),
        })
    }
}

/// A progress line on stderr every second of a long run.
struct Progress {
    start: Instant,
    next: Instant,
    iters: u32,
    terminal: bool,
    shown: bool,
    calls: u32,
}

impl Progress {
    fn new(start: Instant, iters: u32) -> Progress {
        Progress {
            start,
            next: start + Duration::from_secs(1),
            iters,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
            calls: 0,
        }
    }

    fn tick(&mut self, done: u32) {
        // Reading the clock every few completions is enough for a once-a-second line.
        self.calls = self.calls.wrapping_add(1);
        if self.calls % 64 != 0 {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let elapsed = now - self.start;
        let per_iter = elapsed.as_secs_f64() * 1e6 / f64::from(done.max(1));
        let line = format!(
            "{done}/{} iters, {:.1} s, {per_iter:.2} usec/iter",
            self.iters,
            elapsed.as_secs_f64()
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(stderr, "\r{line}\x1b[K")
        } else {
            writeln!(stderr, "{line}")
        };
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_between_iterations_and_repeat_within_one() {
        let first = pattern(0, 4099);
        assert_eq!(first.len(), 4099);
        assert_eq!(first, pattern(0, 4099));
        let second = pattern(1, 4099);
        let same = first.iter().zip(&second).filter(|(a, b)| a == b).count();
        assert!(same < 64 + 2, "{same} equal bytes");
        assert!(first.iter().any(|b| *b != FILL));
        // What rdma-core's -c server checks.
        assert_eq!((first[0], first[4096]), (0, 0));
    }

    #[test]
    fn zero_gid_means_the_tcp_peer() {
        let mut dest = PingpongDest {
            lid: 0,
            qpn: Qpn::new(0x11),
            psn: Psn::new(1),
            gid: Ipv6Addr::UNSPECIFIED,
        };
        let peer: IpAddr = "10.0.0.9".parse().expect("literal");
        assert_eq!(remote_address(&dest, peer), peer);
        dest.gid = "::ffff:10.77.0.11".parse().expect("literal");
        assert_eq!(
            remote_address(&dest, peer),
            "10.77.0.11".parse::<IpAddr>().expect("literal")
        );
    }

    #[test]
    fn psns_are_24_bits() {
        for _ in 0..100 {
            assert!(random_psn().value() <= Psn::MASK);
        }
    }

    #[test]
    fn status_strings_match_libibverbs() {
        assert_eq!(
            wc_status(WcStatus::RetryExcErr),
            ("transport retry counter exceeded", 12)
        );
        assert_eq!(
            wc_status(WcStatus::WrFlushErr),
            ("Work Request Flushed Error", 5)
        );
    }
}

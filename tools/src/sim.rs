//! `ferroce sim`: two engines in the deterministic network simulator, for studying loss
//! recovery. A requester runs `--count` operations of `--size` bytes on each of `--qps`
//! RC queue pairs over a link with the given loss, reordering, duplication, corruption,
//! delay and rate; every byte is checked where it lands.
//!
//! Everything is a function of the flags: the same seed prints the same output (on
//! stdout; a run that meets its time limit also says on stderr how long that took in
//! wall time). A run that does not complete says why — the time limit, nothing left
//! to happen — and how many operations completed, were posted and waiting, or were
//! never posted.
//!
//! `--retry-cnt` is the requester's transport retry count; 7, the default, retries for
//! ever, as rxe does, so a link that loses everything runs into the time limit; 0-6
//! end such a run with a retry-exceeded completion and flushed ones.
//!
//! Exit status: 0 when every operation completed and every byte checked out, 1 when
//! not, 2 on bad flags.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::Duration;

use ferroce_transport::engine::sim::{LinkConfig, Network, NetworkStats, RunOutcome};
use ferroce_transport::engine::{
    AccessFlags, AddressVector, CompletionQueueId, Counters, Engine, EngineConfig, MemoryRegion,
    NamespaceId, PathMtu, QpAttr, QpCap, QpInitAttr, QpState, QpType, RecvWr, SendOp, SendWr, Sge,
    Time, WcStatus, WorkCompletion,
};
use ferroce_wire::{Psn, Qpn};
use serde_json::json;

const NS: NamespaceId = NamespaceId::DEFAULT;
const REQUESTER: usize = 0;
const RESPONDER: usize = 1;
/// Work requests in flight per QP (and receive buffers posted ahead for SEND).
const WINDOW: u64 = 16;
/// IB timeout code: 4.096 µs × 2^10 ≈ 4.2 ms, well above a window's queueing delay.
const ACK_TIMEOUT: u8 = 10;
/// Memory both sides may register in total.
const MEMORY_LIMIT: u64 = 1 << 30;

/// The operation each work request performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    /// RDMA WRITE of `--size` bytes.
    Write,
    /// RDMA READ of `--size` bytes.
    Read,
    /// SEND of `--size` bytes into a posted receive.
    Send,
    /// 8-byte fetch-and-add (`--size` is ignored).
    Atomic,
}

/// A link rate in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

/// Arguments of `ferroce sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Probability that a packet is lost (0.05 or 5%), each direction.
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub loss: f64,
    /// Probability that a packet is held back up to 100 µs so later ones overtake it.
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub reorder: f64,
    /// Probability that a packet is delivered twice.
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub dup: f64,
    /// Probability that one bit of a packet is flipped (the ICRC must catch it).
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    pub corrupt: f64,
    /// One-way propagation delay (500ns, 10us, 1ms; a bare number is µs).
    #[arg(long, default_value = "10us", value_parser = parse_duration)]
    pub delay: Duration,
    /// Link rate in bit/s (10G, 100M, unlimited).
    #[arg(long, default_value = "10G", value_parser = parse_rate)]
    pub rate: Rate,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The operation.
    #[arg(long, value_enum, default_value_t = Operation::Write)]
    pub op: Operation,
    /// Bytes per operation (64, 4K, 1M).
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    pub size: u64,
    /// Operations per QP.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub count: u64,
    /// RC queue pairs, each running `--count` operations.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub qps: u64,
    /// Path MTU (256, 512, 1024, 2048, 4096).
    #[arg(long, default_value_t = 1024, value_parser = parse_mtu)]
    pub mtu: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Virtual time after which the run is abandoned (and integrity fails).
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Transport retries of an unanswered request before it fails with RetryExcErr
    /// (0-7; 7 retries for ever, as rxe).
    #[arg(long, default_value_t = RETRY_FOREVER, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub retry_cnt: u8,
}

/// The `retry_cnt` that never gives up (rxe's reading of 7).
const RETRY_FOREVER: u8 = 7;

/// Runs `ferroce sim` and prints its report to stdout.
pub fn run(args: &Args) -> ExitCode {
    // The wall time of a run is no function of the flags: it goes to stderr only.
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let report = match simulate(args) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("ferroce sim: {message}");
            return ExitCode::from(2);
        }
    };
    if report.outcome == RunOutcome::Deadline {
        eprintln!(
            "ferroce sim: the time limit, {:?} of virtual time, took {:.1} s of wall time",
            args.time_limit,
            started.elapsed().as_secs_f64()
        );
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.integrity_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One QP's resources on both sides and its progress.
#[derive(Debug)]
struct Flow {
    requester_qpn: Qpn,
    responder_qpn: Qpn,
    /// Start of this QP's slots in each side's MR (relative to the MR's address).
    base: u64,
    posted: u64,
    completed: u64,
    /// SEND only: receives posted and completed on the responder.
    receives_posted: u64,
    receives_completed: u64,
    /// A requester completion failed: the QP is in the error state, and the receives it
    /// would have consumed never complete.
    failed: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Report {
    args: Args,
    size: u64,
    /// Virtual time when the run ended (its last completion, or where it stopped).
    elapsed: Time,
    outcome: RunOutcome,
    /// Operations posted and not completed when the run ended.
    waiting: u64,
    network: NetworkStats,
    requester: Counters,
    responder: Counters,
    completions: BTreeMap<String, u64>,
    bytes_done: u64,
    verified: u64,
    mismatches: u64,
    expected: u64,
}

impl Report {
    /// True when every operation completed successfully and every byte was right.
    pub fn integrity_ok(&self) -> bool {
        self.mismatches == 0 && self.verified == self.expected
    }

    fn goodput_bits_per_sec(&self) -> f64 {
        let nanos = self.elapsed.as_nanos();
        if nanos == 0 {
            return 0.0;
        }
        self.bytes_done as f64 * 8.0 * 1e9 / nanos as f64
    }

    fn retransmissions(&self) -> u64 {
        self.requester.retransmits + self.responder.retransmits
    }

    fn text(&self) -> String {
        let a = &self.args;
        let naks = &self.responder.naks_sent;
        let rate = match a.rate.0 {
            Some(bytes) => format_bits(bytes as f64 * 8.0),
            None => "unlimited".to_string(),
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ferroce sim: {} x {} of {} B on {} QP(s), window {WINDOW}, MTU {}, seed {}",
            format!("{:?}", a.op).to_lowercase(),
            a.count,
            self.size,
            a.qps,
            a.mtu,
            a.seed
        );
        let _ = writeln!(
            out,
            "link (each way): loss {:.2}%, reorder {:.2}%, dup {:.2}%, corrupt {:.2}%, delay {:?}, rate {rate}",
            a.loss * 100.0,
            a.reorder * 100.0,
            a.dup * 100.0,
            a.corrupt * 100.0,
            a.delay
        );
        let _ = writeln!(
            out,
            "virtual time:     {:.6} ms",
            self.elapsed.as_nanos() as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "goodput:          {} ({} bytes)",
            format_bits(self.goodput_bits_per_sec()),
            self.bytes_done
        );
        let _ = writeln!(
            out,
            "packets sent:     {} (requester {}, responder {})",
            self.requester.packets_out + self.responder.packets_out,
            self.requester.packets_out,
            self.responder.packets_out
        );
        let n = &self.network.links;
        let _ = writeln!(
            out,
            "network:          delivered {}, lost {}, duplicated {}, corrupted {}, reordered {}",
            n.delivered, n.dropped, n.duplicated, n.corrupted, n.reordered
        );
        let _ = writeln!(
            out,
            "retransmissions:  {} (retransmit timeouts {}, ICRC errors {})",
            self.retransmissions(),
            self.requester.timeouts + self.responder.timeouts,
            self.requester.icrc_errors + self.responder.icrc_errors
        );
        let _ = writeln!(
            out,
            "NAKs sent:        psn-sequence {}, rnr {}, invalid-request {}, remote-access {}, remote-operational {}",
            naks.psn_sequence, naks.rnr, naks.invalid_request, naks.remote_access, naks.remote_operational
        );
        let completions: Vec<String> = self
            .completions
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        let completions = if completions.is_empty() {
            "none".to_string()
        } else {
            completions.join(", ")
        };
        let _ = writeln!(out, "completions:      {completions}");
        if let Some(why) = self.why_early() {
            let completed: u64 = self.completions.values().sum();
            let total = a.count * a.qps;
            let _ = writeln!(
                out,
                "run ended early:  {why}: {completed} of {total} operations completed, {} \
                 posted and waiting, {} never posted",
                self.waiting,
                total.saturating_sub(completed + self.waiting)
            );
            if a.retry_cnt == RETRY_FOREVER && self.outcome == RunOutcome::Deadline {
                let _ = writeln!(
                    out,
                    "note:             --retry-cnt 7 (the default) retries for ever, as rxe: \
                     a request that is never answered never fails; --retry-cnt 0-6 ends it \
                     with RetryExcErr"
                );
            }
        }
        if self.integrity_ok() {
            let _ = writeln!(
                out,
                "data integrity: OK ({} operations verified)",
                self.verified
            );
        } else {
            let _ = writeln!(
                out,
                "data integrity: FAILED ({} of {} operations verified, {} mismatched)",
                self.verified, self.expected, self.mismatches
            );
        }
        out
    }

    /// Why the run stopped before every operation completed, if it did.
    fn why_early(&self) -> Option<String> {
        match self.outcome {
            RunOutcome::Stopped => None,
            RunOutcome::Deadline => Some(format!(
                "time limit reached ({:?} of virtual time, --time-limit)",
                self.args.time_limit
            )),
            RunOutcome::Idle => Some("nothing left to happen (no packet or timer pending)".into()),
            RunOutcome::Stalled => Some("stalled (events without the clock moving)".into()),
        }
    }

    fn json(&self) -> serde_json::Value {
        let a = &self.args;
        let naks = &self.responder.naks_sent;
        let n = &self.network.links;
        json!({
            "op": format!("{:?}", a.op).to_lowercase(),
            "size": self.size,
            "count": a.count,
            "qps": a.qps,
            "mtu": a.mtu,
            "seed": a.seed,
            "loss": a.loss,
            "reorder": a.reorder,
            "dup": a.dup,
            "corrupt": a.corrupt,
            "delay_ns": u64::try_from(a.delay.as_nanos()).unwrap_or(u64::MAX),
            "rate_bytes_per_sec": a.rate.0,
            "retry_cnt": a.retry_cnt,
            "virtual_time_ns": self.elapsed.as_nanos(),
            "ended_early": self.why_early(),
            "waiting": self.waiting,
            "goodput_bits_per_sec": self.goodput_bits_per_sec(),
            "bytes": self.bytes_done,
            "packets_sent": {
                "requester": self.requester.packets_out,
                "responder": self.responder.packets_out,
            },
            "network": {
                "delivered": n.delivered,
                "lost": n.dropped,
                "duplicated": n.duplicated,
                "corrupted": n.corrupted,
                "reordered": n.reordered,
            },
            "retransmissions": self.retransmissions(),
            "timeouts": self.requester.timeouts + self.responder.timeouts,
            "icrc_errors": self.requester.icrc_errors + self.responder.icrc_errors,
            "naks_sent": {
                "psn_sequence": naks.psn_sequence,
                "rnr": naks.rnr,
                "invalid_request": naks.invalid_request,
                "remote_access": naks.remote_access,
                "remote_operational": naks.remote_operational,
            },
            "completions": self.completions,
            "verified": self.verified,
            "expected": self.expected,
            "mismatches": self.mismatches,
            "integrity": if self.integrity_ok() { "OK" } else { "FAILED" },
        })
    }
}

fn format_bits(bits_per_sec: f64) -> String {
    if bits_per_sec >= 1e9 {
        format!("{:.3} Gbit/s", bits_per_sec / 1e9)
    } else if bits_per_sec >= 1e6 {
        format!("{:.3} Mbit/s", bits_per_sec / 1e6)
    } else {
        format!("{:.3} kbit/s", bits_per_sec / 1e3)
    }
}

/// The bytes operation `index` of QP `qp` carries: distinct for every op, so a byte
/// delivered to the wrong place or twice shows.
fn pattern(seed: u64, qp: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ (qp << 48) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555;
    (0..len)
        .map(|_| {
            // splitmix64 steps: cheap and well mixed.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

struct Side {
    addr: IpAddr,
    cq: CompletionQueueId,
    mr: MemoryRegion,
}

struct Simulation {
    net: Network<Engine>,
    sides: [Side; 2],
    flows: Vec<Flow>,
    op: Operation,
    size: u64,
    count: u64,
    seed: u64,
    completions: BTreeMap<String, u64>,
    bytes_done: u64,
    verified: u64,
    mismatches: u64,
    last_completion: Time,
}

fn engine_error(what: &str) -> impl Fn(ferroce_transport::engine::VerbsError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Simulation {
    fn new(args: &Args, size: u64) -> Result<Simulation, String> {
        let slot_bytes = size.max(8);
        let region = slot_bytes
            .checked_mul(WINDOW)
            .and_then(|bytes| bytes.checked_mul(args.qps))
            .filter(|bytes| bytes.saturating_mul(2) <= MEMORY_LIMIT)
            .ok_or_else(|| {
                format!(
                    "--size × {WINDOW} (window) × --qps must fit in {} MiB per side",
                    MEMORY_LIMIT / 2 / (1 << 20)
                )
            })?;
        let link = LinkConfig {
            loss: args.loss,
            reorder: args.reorder,
            duplicate: args.dup,
            corrupt: args.corrupt,
            delay: args.delay,
            rate_bytes_per_sec: args.rate.0,
            ..LinkConfig::default()
        };
        let mut net = Network::new(args.seed, link);
        let mut sides = Vec::new();
        for index in 0..2u8 {
            let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index));
            let config = EngineConfig {
                default_gids: vec![addr],
                ..EngineConfig::default()
            };
            let mut engine = Engine::new(config, args.seed.wrapping_add(u64::from(index)));
            let pd = engine.alloc_pd(NS).map_err(engine_error("alloc_pd"))?;
            let cqe = u32::try_from(args.qps * WINDOW * 2 + 16).unwrap_or(u32::MAX);
            let cq = engine
                .create_cq(NS, cqe)
                .map_err(engine_error("create_cq"))?;
            let access = AccessFlags::LOCAL_WRITE
                | AccessFlags::REMOTE_WRITE
                | AccessFlags::REMOTE_READ
                | AccessFlags::REMOTE_ATOMIC;
            let mr = engine
                .reg_mr(NS, pd, region, access)
                .map_err(engine_error("reg_mr"))?;
            sides.push((engine, pd, Side { addr, cq, mr }));
        }
        let mtu = PathMtu::from_bytes(args.mtu).ok_or("bad --mtu")?;
        let mut flows = Vec::new();
        for qp in 0..args.qps {
            let mut qpns = [Qpn::new(0); 2];
            for (index, (engine, pd, side)) in sides.iter_mut().enumerate() {
                qpns[index] = engine
                    .create_qp(
                        NS,
                        QpInitAttr {
                            qp_type: QpType::Rc,
                            pd: *pd,
                            send_cq: side.cq,
                            recv_cq: side.cq,
                            srq: None,
                            cap: QpCap {
                                max_send_wr: WINDOW as u32,
                                max_recv_wr: WINDOW as u32,
                                max_send_sge: 1,
                                max_recv_sge: 1,
                                max_inline_data: 0,
                            },
                            sq_sig_all: true,
                        },
                    )
                    .map_err(engine_error("create_qp"))?;
            }
            for index in 0..2 {
                let peer = 1 - index;
                let peer_addr = sides[peer].2.addr;
                let link = Link {
                    peer: peer_addr,
                    peer_qpn: qpns[peer],
                    mtu,
                    retry_cnt: args.retry_cnt,
                };
                connect(&mut sides[index].0, qpns[index], &link)?;
            }
            flows.push(Flow {
                requester_qpn: qpns[REQUESTER],
                responder_qpn: qpns[RESPONDER],
                base: qp * slot_bytes * WINDOW,
                posted: 0,
                completed: 0,
                receives_posted: 0,
                receives_completed: 0,
                failed: false,
            });
        }
        let mut side_list = Vec::new();
        for (engine, _, side) in sides {
            net.add_node(engine, [side.addr]);
            side_list.push(side);
        }
        let sides: [Side; 2] = match side_list.try_into() {
            Ok(sides) => sides,
            Err(_) => return Err("two sides".to_string()),
        };
        Ok(Simulation {
            net,
            sides,
            flows,
            op: args.op,
            size,
            count: args.count,
            seed: args.seed,
            completions: BTreeMap::new(),
            bytes_done: 0,
            verified: 0,
            mismatches: 0,
            last_completion: Time::ZERO,
        })
    }

    fn slot_bytes(&self) -> u64 {
        self.size.max(8)
    }

    /// Address of slot `index` of flow `qp` on `side`.
    fn slot(&self, side: usize, qp: usize, index: u64) -> u64 {
        self.sides[side].mr.addr + self.flows[qp].base + (index % WINDOW) * self.slot_bytes()
    }

    fn sge(&self, side: usize, qp: usize, index: u64, length: u64) -> Sge {
        Sge {
            addr: self.slot(side, qp, index),
            length: length as u32,
            lkey: self.sides[side].mr.lkey,
        }
    }

    fn write_memory(&mut self, side: usize, addr: u64, data: &[u8]) -> Result<(), String> {
        let lkey = self.sides[side].mr.lkey;
        self.net
            .node_mut(side)
            .mr_write(NS, lkey, addr, data)
            .map_err(engine_error("mr_write"))
    }

    fn read_memory(&mut self, side: usize, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let lkey = self.sides[side].mr.lkey;
        let mut out = vec![0; len];
        self.net
            .node_mut(side)
            .mr_read(NS, lkey, addr, &mut out)
            .map_err(engine_error("mr_read"))?;
        Ok(out)
    }

    /// Posts work on every QP until its window is full or its count is reached.
    fn refill(&mut self) -> Result<(), String> {
        for qp in 0..self.flows.len() {
            if self.op == Operation::Send {
                while self.flows[qp].receives_posted < self.count
                    && self.flows[qp].receives_posted - self.flows[qp].receives_completed < WINDOW
                {
                    let index = self.flows[qp].receives_posted;
                    let sge = self.sge(RESPONDER, qp, index, self.size);
                    let qpn = self.flows[qp].responder_qpn;
                    self.net
                        .node_mut(RESPONDER)
                        .post_recv(
                            NS,
                            qpn,
                            RecvWr {
                                wr_id: index,
                                sg_list: vec![sge].into(),
                            },
                        )
                        .map_err(engine_error("post_recv"))?;
                    self.flows[qp].receives_posted += 1;
                }
            }
            while self.flows[qp].posted < self.count
                && self.flows[qp].posted - self.flows[qp].completed < WINDOW
            {
                let index = self.flows[qp].posted;
                self.post(qp, index)?;
                self.flows[qp].posted += 1;
            }
        }
        Ok(())
    }

    fn post(&mut self, qp: usize, index: u64) -> Result<(), String> {
        let data = pattern(self.seed, qp as u64, index, self.size as usize);
        let remote = self.slot(RESPONDER, qp, index);
        let rkey = self.sides[RESPONDER].mr.rkey;
        let (op, length) = match self.op {
            Operation::Write => {
                self.write_memory(REQUESTER, self.slot(REQUESTER, qp, index), &data)?;
                (
                    SendOp::RdmaWrite {
                        remote_addr: remote,
                        rkey,
                    },
                    self.size,
                )
            }
            Operation::Send => {
                self.write_memory(REQUESTER, self.slot(REQUESTER, qp, index), &data)?;
                (SendOp::Send, self.size)
            }
            Operation::Read => {
                // The responder's application puts the bytes there; the slot's previous
                // user has completed, so nothing else touches it.
                self.write_memory(RESPONDER, remote, &data)?;
                (
                    SendOp::RdmaRead {
                        remote_addr: remote,
                        rkey,
                    },
                    self.size,
                )
            }
            Operation::Atomic => {
                // Every QP adds 1 to its own counter in slot 0 of the responder.
                let counter = self.slot(RESPONDER, qp, 0);
                (
                    SendOp::FetchAdd {
                        remote_addr: counter,
                        rkey,
                        add: 1,
                    },
                    8,
                )
            }
        };
        let sge = self.sge(REQUESTER, qp, index, length);
        let qpn = self.flows[qp].requester_qpn;
        self.net
            .node_mut(REQUESTER)
            .post_send(NS, qpn, SendWr::new(index, op, vec![sge]))
            .map_err(engine_error("post_send"))
    }

    fn flow_of(&self, side: usize, qpn: Qpn) -> Option<usize> {
        self.flows.iter().position(|flow| {
            if side == REQUESTER {
                flow.requester_qpn == qpn
            } else {
                flow.responder_qpn == qpn
            }
        })
    }

    fn count_status(&mut self, wc: &WorkCompletion) {
        *self
            .completions
            .entry(format!("{:?}", wc.status))
            .or_default() += 1;
    }

    /// Takes every completion, checks what it says and the bytes it covers.
    fn reap(&mut self) -> Result<(), String> {
        let now = self.net.now();
        let cq = self.sides[REQUESTER].cq;
        let wcs = self
            .net
            .node_mut(REQUESTER)
            .poll_cq(NS, cq, 4096)
            .map_err(engine_error("poll_cq"))?;
        for wc in wcs {
            self.last_completion = now;
            self.count_status(&wc);
            let Some(qp) = self.flow_of(REQUESTER, wc.qp_num) else {
                self.mismatches += 1;
                continue;
            };
            let index = wc.wr_id;
            self.flows[qp].completed += 1;
            // Completions come in order: wr_id is the op's index.
            let in_order = index == self.flows[qp].completed - 1;
            if wc.status != WcStatus::Success {
                self.flows[qp].failed = true;
                if !in_order {
                    self.mismatches += 1;
                }
                continue;
            }
            let right = in_order && self.check_requester(qp, index)?;
            if right {
                self.bytes_done += if self.op == Operation::Atomic {
                    8
                } else {
                    self.size
                };
                // SENDs are verified when the receive completes.
                if self.op != Operation::Send {
                    self.verified += 1;
                }
            } else {
                self.mismatches += 1;
            }
        }
        let cq = self.sides[RESPONDER].cq;
        let wcs = self
            .net
            .node_mut(RESPONDER)
            .poll_cq(NS, cq, 4096)
            .map_err(engine_error("poll_cq"))?;
        for wc in wcs {
            let Some(qp) = self.flow_of(RESPONDER, wc.qp_num) else {
                self.mismatches += 1;
                continue;
            };
            let index = wc.wr_id;
            self.flows[qp].receives_completed += 1;
            let in_order = index == self.flows[qp].receives_completed - 1;
            if wc.status != WcStatus::Success {
                self.count_status(&wc);
                self.mismatches += 1;
                continue;
            }
            let expected = pattern(self.seed, qp as u64, index, self.size as usize);
            let got =
                self.read_memory(RESPONDER, self.slot(RESPONDER, qp, index), expected.len())?;
            if in_order && u64::from(wc.byte_len) == self.size && got == expected {
                self.verified += 1;
            } else {
                self.mismatches += 1;
            }
        }
        Ok(())
    }

    /// Checks the bytes of a successful requester completion.
    fn check_requester(&mut self, qp: usize, index: u64) -> Result<bool, String> {
        let expected = pattern(self.seed, qp as u64, index, self.size as usize);
        Ok(match self.op {
            // An ACK means the responder executed it: its memory must hold the bytes
            // (nothing else writes this slot until it is reused after this completion).
            Operation::Write => {
                self.read_memory(RESPONDER, self.slot(RESPONDER, qp, index), expected.len())?
                    == expected
            }
            Operation::Read => {
                self.read_memory(REQUESTER, self.slot(REQUESTER, qp, index), expected.len())?
                    == expected
            }
            Operation::Send => true,
            // Executed once each, in order: op n saw the counter at n.
            Operation::Atomic => {
                let original = self.read_memory(REQUESTER, self.slot(REQUESTER, qp, index), 8)?;
                original == index.to_ne_bytes()
            }
        })
    }

    fn done(&self) -> bool {
        self.flows.iter().all(|flow| {
            flow.completed == self.count
                && (self.op != Operation::Send
                    || flow.receives_completed == self.count
                    || flow.failed)
        })
    }

    /// Atomic: each counter must end at `count` (every add executed exactly once).
    fn check_final(&mut self) -> Result<(), String> {
        if self.op != Operation::Atomic {
            return Ok(());
        }
        for qp in 0..self.flows.len() {
            let value = self.read_memory(RESPONDER, self.slot(RESPONDER, qp, 0), 8)?;
            if value != self.count.to_ne_bytes() {
                self.mismatches += 1;
            }
        }
        Ok(())
    }
}

/// Where a QP connects to and how.
struct Link {
    peer: IpAddr,
    peer_qpn: Qpn,
    mtu: PathMtu,
    retry_cnt: u8,
}

fn connect(engine: &mut Engine, qpn: Qpn, link: &Link) -> Result<(), String> {
    let steps = [
        QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: Some(
                AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_ATOMIC,
            ),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rtr),
            av: Some(AddressVector {
                remote: link.peer,
                local: None,
            }),
            path_mtu: Some(link.mtu),
            dest_qpn: Some(link.peer_qpn),
            rq_psn: Some(Psn::new(0)),
            max_dest_rd_atomic: Some(16),
            min_rnr_timer: Some(1),
            ..QpAttr::default()
        },
        QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(Psn::new(0)),
            timeout: Some(ACK_TIMEOUT),
            // 7 (the default): retry for ever, so a lossy link slows the run down but
            // never fails it.
            retry_cnt: Some(link.retry_cnt),
            rnr_retry: Some(7),
            max_rd_atomic: Some(16),
            ..QpAttr::default()
        },
    ];
    for attr in &steps {
        engine
            .modify_qp(NS, qpn, attr)
            .map_err(engine_error("modify_qp"))?;
    }
    Ok(())
}

/// Runs the simulation `args` describe. `Err` is a usage problem (exit status 2).
pub fn simulate(args: &Args) -> Result<Report, String> {
    let size = if args.op == Operation::Atomic {
        8
    } else {
        args.size
    };
    if size == 0 || size > u64::from(u32::MAX) {
        return Err("--size must be between 1 and 4 GiB".to_string());
    }
    let mut sim = Simulation::new(args, size)?;
    sim.refill()?;
    let mut failure = None;
    let deadline = Time::ZERO + args.time_limit;
    let mut same_instant = 0u64;
    let outcome = loop {
        if let Err(e) = sim.reap().and_then(|()| sim.refill()) {
            failure = Some(e);
            break RunOutcome::Stopped;
        }
        if sim.done() {
            break RunOutcome::Stopped;
        }
        match sim.net.next_event_time() {
            None => break RunOutcome::Idle,
            Some(time) if time > deadline => break RunOutcome::Deadline,
            Some(time) => {
                same_instant = if time == sim.net.now() {
                    same_instant + 1
                } else {
                    0
                };
                if same_instant > Network::<Engine>::STALL_LIMIT {
                    break RunOutcome::Stalled;
                }
                sim.net.step();
            }
        }
    };
    if let Some(e) = failure {
        return Err(e);
    }
    sim.check_final()?;
    let expected = args.count * args.qps;
    let waiting = sim.flows.iter().map(|f| f.posted - f.completed).sum();
    // A run that completes lasted until its last completion; one that meets the time
    // limit, until the limit; one left with nothing to do, until its last event.
    let elapsed = match outcome {
        RunOutcome::Stopped => sim.last_completion,
        RunOutcome::Deadline => deadline,
        RunOutcome::Idle | RunOutcome::Stalled => sim.net.now().max(sim.last_completion),
    };
    Ok(Report {
        args: args.clone(),
        size,
        elapsed,
        outcome,
        waiting,
        network: sim.net.stats(),
        requester: *sim.net.node(REQUESTER).counters(),
        responder: *sim.net.node(RESPONDER).counters(),
        completions: sim.completions,
        bytes_done: sim.bytes_done,
        verified: sim.verified,
        mismatches: sim.mismatches,
        expected,
    })
}

/// A probability: `0.05`, or a percentage `5%`.
fn parse_probability(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number, 100.0),
        None => (text, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a probability (e.g. 0.05 or 5%)"))?;
    let value = value / scale;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{text}` is outside 0..=1 (0%..=100%)"))
    }
}

/// A duration with a unit (`500ns`, `10us`, `1.5ms`, `2s`); a bare number is µs.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 10us, 1ms)"))?;
    let nanos_per_unit = match unit.trim() {
        "ns" => 1.0,
        "" | "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        other => return Err(format!("unknown time unit `{other}` (ns, us, ms, s)")),
    };
    let nanos = value * nanos_per_unit;
    if !nanos.is_finite() || nanos > 1e13 {
        return Err(format!("`{text}` is longer than 10000 s"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A link rate in bits per second (`10G`, `25Gbps`, `100M`, `1e9`), or `0` /
/// `unlimited` for an infinitely fast link. Returns bytes per second.
fn parse_rate(text: &str) -> Result<Rate, String> {
    let lower = text.trim().to_ascii_lowercase();
    if lower == "unlimited" || lower == "inf" || lower == "0" {
        return Ok(Rate(None));
    }
    let number_part = lower
        .trim_end_matches("bit/s")
        .trim_end_matches("bps")
        .trim_end_matches("b/s");
    let (number, scale) = match number_part.chars().last() {
        Some('k') => (&number_part[..number_part.len() - 1], 1e3),
        Some('m') => (&number_part[..number_part.len() - 1], 1e6),
        Some('g') => (&number_part[..number_part.len() - 1], 1e9),
        Some('t') => (&number_part[..number_part.len() - 1], 1e12),
        _ => (number_part, 1.0),
    };
    let bits: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (e.g. 10G, 100M, unlimited)"))?;
    let bytes = bits * scale / 8.0;
    if !(1.0..1e15).contains(&bytes) {
        return Err(format!("`{text}` is not a usable rate"));
    }
    Ok(Rate(Some(bytes.round() as u64)))
}

/// A byte count with an optional binary suffix (`64`, `4K`, `1M`).
fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b').trim_end_matches('i');
    let (number, scale) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 64, 4K, 1M)"))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// One of the five IB path MTUs.
fn parse_mtu(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .ok()
        .filter(|mtu| PathMtu::from_bytes(*mtu).is_some())
        .ok_or_else(|| format!("`{text}` is not a path MTU (256, 512, 1024, 2048, 4096)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_units() {
        assert_eq!(parse_probability("5%"), Ok(0.05));
        assert_eq!(parse_probability("0.1"), Ok(0.1));
        assert!(parse_probability("101%").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("x").is_err());
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("500ns"), Ok(Duration::from_nanos(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_micros(7)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("20000s").is_err());
        assert_eq!(parse_rate("10G"), Ok(Rate(Some(1_250_000_000))));
        assert_eq!(parse_rate("100Mbps"), Ok(Rate(Some(12_500_000))));
        assert_eq!(parse_rate("unlimited"), Ok(Rate(None)));
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_mtu("4096"), Ok(4096));
        assert!(parse_mtu("1500").is_err());
    }
}

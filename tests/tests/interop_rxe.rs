//! ferroce against the Linux kernel's Soft-RoCE (`rdma_rxe`, kernel 6.1, rdma-core 44,
//! perftest 4.5) in a QEMU guest of the vendored harness (`interop/`), both directions:
//! rdma-core's and perftest's own tools in the guest, `ferroce pingpong` / `ferroce
//! perf` on the host side of the bridge (10.77.0.1).
//!
//! One guest per MTU runs every case in turn (see `rxe_util`): netdev MTU 1500 (RoCE
//! MTU 1024) and 9000 (4096). Each case is one tool run on each side, and passes when
//! both sides exit 0, each printed its results, `-c` (pingpong) found every message
//! intact on both ends, and `ferroce decode` finds every RoCEv2 packet of the case's
//! capture well formed with a good ICRC. A failing case keeps its capture, ferroce's
//! `RUST_LOG=debug` log and stdout, and the guest's output under
//! `target/tmp/interop/cases/` (the paths are printed); a passing case deletes them.
//! Every case's row (result and the figures perftest reported; TCG guest: its numbers
//! are those of an emulated CPU, not of rxe or ferroce on hardware) goes to
//! `target/tmp/interop/cases.md` as soon as the case ends; a failure names that file.
//! `FERROCE_INTEROP_CASES=text` runs only the cases whose name contains `text` (by
//! hand, while debugging one case; the table says so).
//!
//! Both tests need root and the harness (Debian), so they are `#[ignore]`d with that
//! reason: the README's test command (`cargo test --workspace -- --include-ignored`, as
//! root) runs them, and then a missing prerequisite fails them (`interop/setup.sh`
//! installs what the host lacks first).
#![allow(clippy::unwrap_used)] // a test fails loudly
#![allow(clippy::disallowed_methods)] // deadlines and rates of real runs

mod netns_util;
mod rxe_util;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ferroce::wire::{Psn, Rkey};
use ferroce::{
    AccessFlags, AddressVector, CompletionQueue, Device, DeviceConfig, MemoryRegion, PathMtu,
    QpAttr, QpInitAttributes, QpState, QpType, QueuePair, RecvRequest, SendRequest, WcStatus,
    WorkCompletion,
};
use ferroce_tools::decode::{decode, Options};
use ferroce_tools::exchange::perftest::{
    client_handshake, server_handshake, BwReport, PerftestConfig, PerftestKeys, PerftestSession,
    TestKind, TestSpec, Verb,
};
use netns_util::{Capture, KeepOnFailure};
use rxe_util::{tail, work_dir, Guest, Harness, HOST_IP};

/// How long a guest tool may run (its `timeout`), and a host tool after the guest's ended.
const TOOL_LIMIT: u64 = 90;
const HOST_GRACE: Duration = Duration::from_secs(30);
/// Waiting for a guest server to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(30);

/// Who plays which role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The rxe tool is the client, ferroce the server.
    RxeToFerroce,
    /// ferroce is the client, the rxe tool the server.
    FerroceToRxe,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::RxeToFerroce => "rxe client -> ferroce server",
            Direction::FerroceToRxe => "ferroce client -> rxe server",
        }
    }
}

/// One tool run on both sides.
#[derive(Debug, Clone)]
struct Case {
    /// Unique, names the kept files.
    name: String,
    /// The guest tool and its arguments without the server address (`ibv_rc_pingpong -s 64`).
    guest: String,
    /// ferroce's arguments without the server address.
    host: Vec<String>,
    direction: Direction,
    size: u32,
    /// Path MTU.
    mtu: u32,
    /// What the client's output must contain (its results).
    expect: &'static str,
    /// Whether the server prints the results too (all but perftest's READ latency).
    server_prints: bool,
}

/// A finished case, for the table.
#[derive(Debug)]
struct Outcome {
    tool: String,
    direction: Direction,
    size: u32,
    mtu: u32,
    passed: bool,
    figures: String,
    why: String,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// The pingpong cases at path MTU `mtu` (the guest's RoCE MTU): rc at every size of the
/// issue (odd sizes have pad bytes; 4095/4096/65536 span packets), ud up to the MTU; `-c`
/// on both ends checks every message.
fn pingpong_cases(mtu: u32, port: &mut u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for direction in [Direction::RxeToFerroce, Direction::FerroceToRxe] {
        for size in [1u32, 64, 4095, 4096, 65536] {
            *port += 1;
            let iterations = if size > 4096 { 20 } else { 50 };
            let flags = format!("-s {size} -m {mtu} -n {iterations} -c -p {port}");
            cases.push(Case {
                name: format!("rc_pingpong-{}-s{size}-m{mtu}", short(direction)),
                guest: format!("ibv_rc_pingpong -d rxe0 -g 1 {flags}"),
                host: words(&format!(
                    "pingpong rc --bind {HOST_IP} --timeout 30 {flags}"
                )),
                direction,
                size,
                mtu,
                expect: "iters in",
                server_prints: true,
            });
        }
        for size in [1u32, 64, mtu] {
            *port += 1;
            let flags = format!("-s {size} -n 50 -c -p {port}");
            cases.push(Case {
                name: format!("ud_pingpong-{}-s{size}-m{mtu}", short(direction)),
                guest: format!("ibv_ud_pingpong -d rxe0 -g 1 {flags}"),
                host: words(&format!(
                    "pingpong ud --bind {HOST_IP} --timeout 30 {flags}"
                )),
                direction,
                size,
                mtu,
                expect: "iters in",
                server_prints: true,
            });
        }
    }
    cases
}

/// The perftest cases: every bandwidth and latency tool, RC, and UC where perftest has it
/// (write and send), both atomic kinds; small iteration counts for TCG.
fn perftest_cases(mtu: u32, port: &mut u16) -> Vec<Case> {
    let tools: [(&str, &str, &str); 12] = [
        ("ib_write_bw", "write bw", "-s 65536 -n 200"),
        ("ib_write_bw", "write bw", "-s 65536 -n 200 -c UC"),
        ("ib_read_bw", "read bw", "-s 65536 -n 200"),
        ("ib_send_bw", "send bw", "-s 65536 -n 200"),
        // UC has no flow control: a sender faster than the TCG guest overruns its
        // receive path and perftest's server then waits for lost messages forever, so
        // the burst stays small.
        ("ib_send_bw", "send bw", "-s 1024 -n 50 -c UC"),
        ("ib_atomic_bw", "atomic bw", "-n 200 -A CMP_AND_SWAP"),
        ("ib_atomic_bw", "atomic bw", "-n 200 -A FETCH_AND_ADD"),
        ("ib_write_lat", "write lat", "-s 64 -n 200"),
        ("ib_write_lat", "write lat", "-s 64 -n 200 -c UC"),
        ("ib_read_lat", "read lat", "-s 64 -n 200"),
        ("ib_send_lat", "send lat", "-s 64 -n 200"),
        ("ib_send_lat", "send lat", "-s 64 -n 200 -c UC"),
    ];
    let mut cases = Vec::new();
    for direction in [Direction::RxeToFerroce, Direction::FerroceToRxe] {
        for (tool, ours, flags) in tools {
            *port += 1;
            let size = flags
                .split_whitespace()
                .skip_while(|word| *word != "-s")
                .nth(1)
                .and_then(|size| size.parse().ok())
                .unwrap_or(8);
            let variant: String = flags
                .split_whitespace()
                .skip_while(|word| !["-c", "-A"].contains(word))
                .nth(1)
                .map(|v| format!("-{v}"))
                .unwrap_or_default();
            cases.push(Case {
                name: format!("{tool}{variant}-{}-m{mtu}", short(direction)),
                guest: format!("{tool} -d rxe0 -x 1 -F {flags} -p {port}"),
                host: words(&format!("perf {ours} --bind {HOST_IP} {flags} -p {port}")),
                direction,
                size,
                mtu,
                expect: "#bytes",
                server_prints: tool != "ib_read_lat",
            });
        }
    }
    cases
}

fn short(direction: Direction) -> &'static str {
    match direction {
        Direction::RxeToFerroce => "r2f",
        Direction::FerroceToRxe => "f2r",
    }
}

/// Runs one case against `guest`.
fn run_case(harness: &Harness, guest: &mut Guest, case: &Case) -> Outcome {
    let dir = work_dir().join("cases");
    fs::create_dir_all(&dir).unwrap();
    let base = dir.join(&case.name);
    let pcap = base.with_extension("pcap");
    let guest_out = base.with_extension("guest.out");
    let capture = Capture::start(&harness.namespace, &guest.tap, &pcap);
    let port = case
        .guest
        .split_whitespace()
        .skip_while(|word| *word != "-p")
        .nth(1)
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap();
    let mut why = String::new();
    let (guest_result, mut host) = match case.direction {
        Direction::RxeToFerroce => {
            let host = harness.ferroce(&base, &case.host);
            let mut listening = false;
            for _ in 0..200 {
                if harness.listening(port) {
                    listening = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !listening {
                why.push_str("ferroce never listened; ");
            }
            let step = guest.submit(&format!("timeout {TOOL_LIMIT} {} {HOST_IP}\n", case.guest));
            let result = step.wait(Duration::from_secs(TOOL_LIMIT + 30));
            (result, host)
        }
        Direction::FerroceToRxe => {
            let step = guest.submit(&format!(
                "timeout {TOOL_LIMIT} {} &\npid=$!\ni=0\n\
                 while [ $i -lt 300 ] && ! ss -ltn | grep -q ':{port} '; do sleep 0.1; i=$((i + 1)); done\n\
                 touch ready.{n}\nwait $pid\n",
                case.guest,
                n = guest.next_step(),
            ));
            if !step.wait_ready(LISTEN_LIMIT) {
                why.push_str("the guest server never listened; ");
            }
            let mut args = case.host.clone();
            args.push(guest.address.to_string());
            let host = harness.ferroce(&base, &args);
            let result = step.wait(Duration::from_secs(TOOL_LIMIT + 30));
            (result, host)
        }
    };
    let host_status = host.wait(HOST_GRACE);
    let (pcap_bytes, tcpdump_said) = capture.stop();
    let guest_text = match &guest_result {
        Some((_, output)) => output.clone(),
        None => "(the guest step did not finish)".to_string(),
    };
    let host_text = host.stdout();
    let host_log = host.stderr();
    match &guest_result {
        Some((0, _)) => {}
        Some((rc, _)) => {
            let _ = write!(why, "guest exit {rc}; ");
        }
        None => why.push_str("guest step hung; "),
    }
    match host_status {
        Some(status) if status.success() => {}
        Some(status) => {
            let _ = write!(why, "ferroce {status}; ");
        }
        None => why.push_str("ferroce hung (killed); "),
    }
    let (client_text, server_text) = match case.direction {
        Direction::RxeToFerroce => (&guest_text, &host_text),
        Direction::FerroceToRxe => (&host_text, &guest_text),
    };
    if !client_text.contains(case.expect) {
        let _ = write!(why, "the client printed no {:?}; ", case.expect);
    }
    if case.server_prints && !server_text.contains(case.expect) {
        let _ = write!(why, "the server printed no {:?}; ", case.expect);
    }
    // rdma-core's -c reports each bad message; ferroce's fails the run.
    if guest_text.contains("invalid data") {
        why.push_str("rdma-core saw invalid data; ");
    }
    let mut decoded = Vec::new();
    match decode(&pcap_bytes, Options::default(), &mut decoded) {
        Ok(summary) if summary.is_clean() && summary.rocev2 > 0 => {}
        Ok(summary) => {
            let _ = write!(
                why,
                "decode: {} RoCEv2, {} bad ICRC, {} malformed, error {:?} (tcpdump: {}); ",
                summary.rocev2,
                summary.icrc_bad,
                summary.malformed,
                summary.error,
                tcpdump_said.trim()
            );
        }
        Err(error) => {
            let _ = write!(why, "decode failed: {error}; ");
        }
    }
    let passed = why.is_empty();
    let figures = figures(client_text);
    if passed {
        for path in [&pcap, &host.out, &host.log] {
            let _ = fs::remove_file(path);
        }
    } else {
        fs::write(&guest_out, &guest_text).unwrap();
        eprintln!(
            "FAILED {}: {why}\n  kept: {} {} {} {}\n  guest: {}\n  ferroce: {}\n  ferroce log: {}",
            case.name,
            pcap.display(),
            host.out.display(),
            host.log.display(),
            guest_out.display(),
            tail(&guest_text, 6),
            tail(&host_text, 6),
            tail(&host_log, 6),
        );
    }
    let tool = case
        .guest
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
        + &variant_suffix(&case.guest);
    Outcome {
        tool,
        direction: case.direction,
        size: case.size,
        mtu: case.mtu,
        passed,
        figures,
        why,
    }
}

/// " -c UC" / " -A CMP_AND_SWAP" when the guest command has them.
fn variant_suffix(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut suffix = String::new();
    for pair in words.windows(2) {
        if pair[0] == "-c" && pair[1] == "UC" || pair[0] == "-A" {
            let _ = write!(suffix, " {} {}", pair[0], pair[1]);
        }
    }
    suffix
}

/// perftest's result row under its `#bytes` header, as "peak/avg MiB/s, Mpps" or
/// "t_min/t_typical/t_avg/p99 usec"; pingpong's "usec/iter".
fn figures(output: &str) -> String {
    let mut lines = output.lines();
    if let Some(header) = lines.by_ref().find(|line| line.contains("#bytes")) {
        let row: Vec<&str> = lines
            .find(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|word| word.parse::<u64>().is_ok())
            })
            .map(|line| line.split_whitespace().collect())
            .unwrap_or_default();
        if header.contains("BW peak") && row.len() >= 5 {
            // perftest says MB/sec, ferroce MiB/sec (both mean 2^20 bytes).
            let unit = if header.contains("MiB") {
                "MiB/s"
            } else {
                "MB/s"
            };
            return format!("BW {} / {} {unit}, {} Mpps", row[2], row[3], row[4]);
        }
        if header.contains("t_min") && row.len() >= 8 {
            return format!(
                "t_min {} typ {} avg {} p99 {} us",
                row[2], row[4], row[5], row[7]
            );
        }
        return String::new();
    }
    output
        .lines()
        .find(|line| line.contains("usec/iter"))
        .map(|line| {
            line.split_whitespace()
                .rev()
                .nth(1)
                .map(|usec| format!("{usec} usec/iter"))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Boots a guest at netdev MTU `netdev_mtu` and runs `cases` in it, each row into `table`.
fn run_in_guest(
    harness: &Harness,
    index: u8,
    netdev_mtu: u32,
    cases: &[Case],
    table: &mut CaseTable,
) {
    if cases.is_empty() {
        return;
    }
    let mut guest = match Guest::boot(harness, index, netdev_mtu) {
        Ok(guest) => guest,
        Err(why) => panic!("guest at MTU {netdev_mtu}: {why}"),
    };
    for case in cases {
        let outcome = run_case(harness, &mut guest, case);
        println!(
            "{:<4} {} ({})",
            if outcome.passed { "ok" } else { "FAIL" },
            case.name,
            outcome.figures
        );
        table.add(outcome);
        assert!(guest.alive(), "the guest died during {}", case.name);
    }
    guest.shut_down();
}

/// The table of every case run, written row by row to `target/tmp/interop/cases.md`, so
/// a run that stops midway still shows what ran; a failing test names the file.
struct CaseTable {
    path: PathBuf,
    file: File,
    outcomes: Vec<Outcome>,
}

impl CaseTable {
    fn create(note: &str) -> CaseTable {
        let path = work_dir().join("cases.md");
        fs::create_dir_all(work_dir()).unwrap();
        let mut file = File::create(&path).unwrap();
        writeln!(
            file,
            "{note}| tool | direction | size | MTU | result | reported (TCG guest) |\n\
             |---|---|---:|---:|---|---|"
        )
        .unwrap();
        println!("table of the cases: {}", path.display());
        CaseTable {
            path,
            file,
            outcomes: Vec::new(),
        }
    }

    fn add(&mut self, outcome: Outcome) {
        writeln!(
            self.file,
            "| {} | {} | {} | {} | {} | {} |",
            outcome.tool,
            outcome.direction.label(),
            outcome.size,
            outcome.mtu,
            if outcome.passed { "pass" } else { "FAIL" },
            outcome.figures
        )
        .unwrap();
        self.outcomes.push(outcome);
    }
}

impl Drop for CaseTable {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("table of the cases run: {}", self.path.display());
        }
    }
}

/// The cases whose name contains `FERROCE_INTEROP_CASES` (all when unset); counts every
/// case offered in `all`.
fn selected(cases: Vec<Case>, all: &mut usize) -> Vec<Case> {
    *all += cases.len();
    match std::env::var("FERROCE_INTEROP_CASES") {
        Ok(filter) => cases
            .into_iter()
            .filter(|case| case.name.contains(&filter))
            .collect(),
        Err(_) => cases,
    }
}

#[test]
#[ignore = "needs root and the rxe harness (two QEMU guests in turn, minutes under TCG): run as root with `cargo test --workspace -- --include-ignored`"]
fn rxe_interop_tools_both_directions() {
    let test = "rxe_interop_tools_both_directions";
    let _one = ONE_GUEST
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut port = 18514;
    let mut all = 0;
    let mut mtu1024 = pingpong_cases(1024, &mut port);
    mtu1024.extend(perftest_cases(1024, &mut port));
    let mtu1024 = selected(mtu1024, &mut all);
    // At MTU 4096 the pingpongs and the bandwidth tools but atomics (the MTU comes from
    // each port: 4096 both ends); latency and atomics move one packet per message at
    // either MTU.
    let mut mtu4096 = pingpong_cases(4096, &mut port);
    mtu4096.extend(
        perftest_cases(4096, &mut port)
            .into_iter()
            .filter(|case| case.guest.contains("_bw") && !case.guest.contains("atomic")),
    );
    let mtu4096 = selected(mtu4096, &mut all);
    let chosen = mtu1024.len() + mtu4096.len();
    assert!(
        chosen > 0,
        "FERROCE_INTEROP_CASES selects none of the {all} cases"
    );
    let note = if chosen < all {
        format!("Only {chosen} of {all} cases: FERROCE_INTEROP_CASES selected them.\n\n")
    } else {
        String::new()
    };
    let harness = Harness::prepare(test);
    let mut table = CaseTable::create(&note);
    run_in_guest(&harness, 1, 1500, &mtu1024, &mut table);
    run_in_guest(&harness, 1, 9000, &mtu4096, &mut table);
    println!("\n{}", fs::read_to_string(&table.path).unwrap_or_default());
    let failed: Vec<String> = table
        .outcomes
        .iter()
        .filter(|outcome| !outcome.passed)
        .map(|o| format!("{} {} s{}: {}", o.tool, o.direction.label(), o.size, o.why))
        .collect();
    assert!(
        failed.is_empty(),
        "failed cases (table of all: {}):\n{}",
        table.path.display(),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Failures and loss, driven through the verbs API from this process (inside the
// namespace), with keys swapped with the guest's perftest by perftest's own exchange.

/// The two tests share the machine's two cores: one guest at a time.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// How long a verbs operation against the TCG guest may take.
const OPERATION_LIMIT: Duration = Duration::from_secs(60);

fn all_access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
}

/// ferroce's end of a perftest exchange: one device on 10.77.0.1, one MR, `qps` RC QPs.
struct Rig {
    device: Device,
    cq: CompletionQueue,
    mr: MemoryRegion,
    qps: Vec<QueuePair>,
    psns: Vec<Psn>,
}

impl Rig {
    fn open(harness: &Harness, qps: usize, mr_len: u64) -> Rig {
        let device = harness
            .in_namespace(|| Device::open(DeviceConfig::with_address(IpAddr::V4(HOST_IP))))
            .unwrap();
        let pd = device.alloc_pd().unwrap();
        let cq = device.create_cq(1024, None).unwrap();
        let mr = pd.reg_mr(mr_len, all_access()).unwrap();
        let qps: Vec<QueuePair> = (0..qps)
            .map(|_| {
                let mut attributes = QpInitAttributes::new(QpType::Rc, &cq);
                attributes.sq_sig_all = true;
                pd.create_qp(&attributes).unwrap()
            })
            .collect();
        let psns = (0..qps.len())
            .map(|q| Psn::new(0x1000 * (q as u32 + 1)))
            .collect();
        Rig {
            device,
            cq,
            mr,
            qps,
            psns,
        }
    }

    /// The keys perftest gets: each QP's slot of the MR is 64 KiB apart.
    fn keys(&self, out_reads: u16, rkey: Rkey, vaddr: impl Fn(usize) -> u64) -> Vec<PerftestKeys> {
        self.qps
            .iter()
            .enumerate()
            .map(|(q, qp)| PerftestKeys {
                lid: 0,
                out_reads,
                qpn: qp.qp_num(),
                psn: self.psns[q],
                rkey,
                vaddr: vaddr(q),
                gid: HOST_IP.to_ipv6_mapped(),
                srqn: 0,
            })
            .collect()
    }

    /// RESET → RTS toward `remote` with a finite `retry_cnt` (rxe's 7 means forever).
    fn connect(&self, remote: &[PerftestKeys], retry_cnt: u8) -> Result<(), ferroce::Error> {
        for ((qp, theirs), psn) in self.qps.iter().zip(remote).zip(&self.psns) {
            qp.modify(&QpAttr {
                state: Some(QpState::Init),
                pkey_index: Some(0),
                port_num: Some(1),
                access: Some(all_access()),
                ..QpAttr::default()
            })?;
            qp.modify(&QpAttr {
                state: Some(QpState::Rtr),
                path_mtu: Some(PathMtu::Mtu1024),
                dest_qpn: Some(theirs.qpn),
                rq_psn: Some(theirs.psn),
                max_dest_rd_atomic: Some(16),
                min_rnr_timer: Some(12),
                av: Some(AddressVector {
                    remote: IpAddr::V6(theirs.gid).to_canonical(),
                    local: None,
                }),
                ..QpAttr::default()
            })?;
            qp.modify(&QpAttr {
                state: Some(QpState::Rts),
                sq_psn: Some(*psn),
                timeout: Some(14),
                retry_cnt: Some(retry_cnt),
                rnr_retry: Some(7),
                max_rd_atomic: Some(16),
                ..QpAttr::default()
            })?;
        }
        Ok(())
    }

    /// Posts `wr` on QP `q` and waits for its completion.
    fn run(&self, q: usize, wr: SendRequest, limit: Duration) -> WorkCompletion {
        self.qps[q].post_send(wr).unwrap();
        let completions = self
            .cq
            .poll_wait(1, limit)
            .unwrap_or_else(|timeout| panic!("QP {q}: {timeout}"));
        completions.into_iter().next().unwrap()
    }

    fn counters(&self) -> ferroce::Counters {
        self.device.counters().unwrap().0
    }
}

/// Sends this process's ferroce debug events to `path` (the engine runs in the test).
fn log_to(path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "ferroce=debug,ferroce_transport=debug",
        ))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
}

/// A pattern no perftest buffer holds by chance.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A perftest run of the guest: its command line (without `-p` and a server address),
/// the TCP port, the test (both sides must agree), and how long it may take.
#[derive(Debug, Clone)]
struct Tool {
    command: String,
    port: u16,
    test: TestSpec,
    /// Seconds, for the guest's `timeout` and every wait on the TCP exchange.
    limit: u64,
}

impl Tool {
    fn new(port: u16, command: &str, test: TestSpec) -> Tool {
        Tool {
            command: command.to_string(),
            port,
            test,
            limit: TOOL_LIMIT,
        }
    }

    fn limit(mut self, seconds: u64) -> Tool {
        self.limit = seconds;
        self
    }
}

/// ferroce is the perftest client of the guest's perftest server `tool`, with `rig`'s
/// QPs connected by `retry_cnt`; runs `body` between the handshake and perftest's
/// closing exchange; returns the guest's result.
fn against_guest_server(
    harness: &Harness,
    guest: &mut Guest,
    tool: &Tool,
    rig: &Rig,
    retry_cnt: u8,
    body: impl FnOnce(&[PerftestKeys]) + Send,
) -> (i32, String) {
    let (command, port) = (&tool.command, tool.port);
    let step = guest.submit(&format!(
        "timeout {limit} {command} -p {port} &\npid=$!\ni=0\n\
         while [ $i -lt 300 ] && ! ss -ltn | grep -q ':{port} '; do sleep 0.1; i=$((i + 1)); done\n\
         touch ready.{n}\nwait $pid\n",
        limit = tool.limit,
        n = guest.next_step(),
    ));
    assert!(
        step.wait_ready(LISTEN_LIMIT),
        "{command}: never listened: {}",
        step.output()
    );
    let address = SocketAddr::from((guest.address, port));
    harness.in_namespace(|| {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(tool.limit)))
            .unwrap();
        let out_reads = if matches!(tool.test.verb, Verb::Read | Verb::Atomic) {
            16
        } else {
            1
        };
        let local = rig.keys(out_reads, rig.mr.rkey(), |q| {
            rig.mr.addr() + q as u64 * 65536
        });
        let mut session = client_handshake(
            stream,
            tool.test,
            PerftestConfig::default(),
            |_| Ok(local),
            |remote| rig.connect(remote, retry_cnt).map_err(Into::into),
        )
        .unwrap_or_else(|error| panic!("{command}: handshake: {error}"));
        body(session.remote_keys());
        session
            .finish(&BwReport::default())
            .unwrap_or_else(|error| panic!("{command}: closing exchange: {error}"));
    });
    step.wait(Duration::from_secs(tool.limit + 30))
        .unwrap_or_else(|| panic!("{command}: the guest server did not exit"))
}

/// ferroce is the perftest server of the guest's perftest client `tool`; `keys` are the
/// keys handed to it from `rig`; `connected` runs once the QP is connected, before
/// perftest's start barriers, `body` after them (the traffic). Returns the guest's
/// result.
fn against_guest_client(
    harness: &Harness,
    guest: &mut Guest,
    tool: &Tool,
    rig: &Rig,
    keys: Vec<PerftestKeys>,
    connected: impl FnOnce(&[PerftestKeys]) + Send,
    body: impl FnOnce(Option<&mut PerftestSession<TcpStream>>) + Send,
) -> (i32, String) {
    let (command, port) = (&tool.command, tool.port);
    let listener = harness.in_namespace(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    let step = guest.submit(&format!(
        "timeout {} {command} -p {port} {HOST_IP}\n",
        tool.limit
    ));
    harness.in_namespace(|| {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(tool.limit)))
            .unwrap();
        let session = server_handshake(
            stream,
            tool.test,
            PerftestConfig::default(),
            |_| Ok(keys),
            |remote| {
                rig.connect(remote, 7)?;
                connected(remote);
                Ok(())
            },
        );
        match session {
            Ok(mut session) => body(Some(&mut session)),
            Err(error) => {
                eprintln!("{command}: handshake ended: {error}");
                body(None);
            }
        }
    });
    step.wait(Duration::from_secs(tool.limit + 30))
        .unwrap_or_else(|| panic!("{command}: the guest client did not exit"))
}

fn read_bw() -> TestSpec {
    TestSpec {
        verb: Verb::Read,
        kind: TestKind::Bandwidth,
        duplex: false,
    }
}

#[test]
#[ignore = "needs root and the rxe harness (a QEMU guest, minutes under TCG): run as root with `cargo test --workspace -- --include-ignored`"]
fn rxe_interop_failures_and_loss() {
    let test = "rxe_interop_failures_and_loss";
    let _one = ONE_GUEST
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let harness = Harness::prepare(test);
    let mut guest = Guest::boot(&harness, 1, 1500).unwrap_or_else(|why| panic!("{why}"));
    let mut port = 18700;
    let mut proven = Vec::new();
    // Everything but the 64 MiB transfers is captured (kept if the test fails) and must
    // decode clean.
    let pcap = work_dir().join("failures.pcap");
    // ferroce's debug events (NAKs, go-back-N, timeouts by QP), kept with the capture.
    let log = work_dir().join("failures-ferroce.log");
    let _keep = KeepOnFailure(vec![pcap.clone(), log.clone()]);
    log_to(&log);
    let capture = Capture::start(&harness.namespace, &guest.tap, &pcap);

    // 1. ferroce requests bad accesses of rxe. perftest gives each QP only its verb's
    //    remote access (an ib_read_bw QP: REMOTE_READ), so the READs go to an ib_read_bw
    //    server and the WRITEs to an ib_write_bw server.
    //    a) ib_read_bw, 4 QPs: a READ with a wrong rkey (the right MR index, another
    //       key) and one 1 GiB past the MR complete with REM_ACCESS_ERR; a WRITE (which
    //       that QP does not allow) with REM_INV_REQ_ERR; a READ through a fourth QP
    //       before and after shows the bytes the refused WRITE aimed at unchanged.
    port += 1;
    let rig = Rig::open(&harness, 4, 4 * 65536);
    let (rc, output) = against_guest_server(
        &harness,
        &mut guest,
        &Tool::new(
            port,
            "ib_read_bw -d rxe0 -x 1 -F -q 4 -s 4096 -n 5",
            read_bw(),
        ),
        &rig,
        7,
        |remote| {
            let (rkey, vaddr) = (remote[0].rkey, remote[0].vaddr);
            let read = |into: u64| {
                let wr = SendRequest::read(1, vaddr, rkey).sge(&rig.mr, into, 4096);
                let wc = rig.run(0, wr, OPERATION_LIMIT);
                assert_eq!(wc.status, WcStatus::Success, "READ of rxe's buffer: {wc:?}");
                rig.mr.to_vec(into, 4096).unwrap()
            };
            let before = read(0);
            let bad = pattern(4096, 7);
            assert_ne!(before, bad, "rxe's buffer already holds the pattern");
            rig.mr.write(3 * 65536, &bad).unwrap();
            let wrong_key = Rkey(rkey.0 ^ 0x5a);
            let far = vaddr + (1 << 30);
            let attempts = [
                (
                    1,
                    SendRequest::read(2, vaddr, wrong_key),
                    WcStatus::RemAccessErr,
                    "READ, wrong rkey",
                ),
                (
                    2,
                    SendRequest::read(3, far, rkey),
                    WcStatus::RemAccessErr,
                    "READ 1 GiB out of bounds",
                ),
                (
                    3,
                    SendRequest::write(4, vaddr, rkey),
                    WcStatus::RemInvReqErr,
                    "WRITE to a READ-only QP",
                ),
            ];
            for (q, wr, status, what) in attempts {
                let wc = rig.run(q, wr.sge(&rig.mr, 65536 * q as u64, 4096), OPERATION_LIMIT);
                assert_eq!(wc.status, status, "{what}: {wc:?}");
            }
            assert_eq!(
                read(0),
                before,
                "rxe's memory changed under the refused WRITE"
            );
            let naks = rig.counters().naks_received;
            assert_eq!(
                (naks.remote_access, naks.invalid_request),
                (2, 1),
                "{naks:?}"
            );
        },
    );
    assert_eq!(rc, 0, "ib_read_bw server: {output}");
    drop(rig);
    //    b) ib_write_bw, 2 QPs: a WRITE with a wrong rkey and one 1 GiB past the MR
    //       complete with REM_ACCESS_ERR.
    port += 1;
    let rig = Rig::open(&harness, 2, 2 * 65536);
    let write_bw = TestSpec {
        verb: Verb::Write,
        kind: TestKind::Bandwidth,
        duplex: false,
    };
    let (rc, output) = against_guest_server(
        &harness,
        &mut guest,
        &Tool::new(
            port,
            "ib_write_bw -d rxe0 -x 1 -F -q 2 -s 4096 -n 5",
            write_bw,
        ),
        &rig,
        7,
        |remote| {
            let (rkey, vaddr) = (remote[0].rkey, remote[0].vaddr);
            let attempts = [
                (
                    0,
                    SendRequest::write(1, vaddr, Rkey(rkey.0 ^ 0x5a)),
                    "WRITE, wrong rkey",
                ),
                (
                    1,
                    SendRequest::write(2, vaddr + (1 << 30), rkey),
                    "WRITE 1 GiB out of bounds",
                ),
            ];
            for (q, wr, what) in attempts {
                let wc = rig.run(q, wr.sge(&rig.mr, 0, 4096), OPERATION_LIMIT);
                assert_eq!(wc.status, WcStatus::RemAccessErr, "{what}: {wc:?}");
            }
            assert_eq!(rig.counters().naks_received.remote_access, 2);
        },
    );
    assert_eq!(rc, 0, "ib_write_bw server: {output}");
    proven.push(
        "ferroce -> rxe: wrong-rkey and OOB READ and WRITE: REM_ACCESS_ERR; WRITE to a \
         READ-only QP: REM_INV_REQ_ERR, rxe's bytes unchanged",
    );
    drop(rig);

    // 2. rxe requests bad accesses of ferroce: perftest's ib_write_bw client gets a wrong
    //    rkey, then (a second run) the right rkey with an address 1 KiB before the MR's
    //    end for 4 KiB WRITEs. rxe's WRITEs fail with REM_ACCESS_ERR (perftest reports
    //    the completion error and exits non-zero); ferroce NAKs them and its MR keeps
    //    its pattern.
    for (what, wrong_rkey, offset) in [
        ("wrong rkey", true, 0u64),
        ("out of bounds", false, 2 * 65536 - 1024),
    ] {
        port += 1;
        let rig = Rig::open(&harness, 1, 2 * 65536);
        let fill = pattern(2 * 65536, 3);
        rig.mr.write(0, &fill).unwrap();
        let rkey = if wrong_rkey {
            Rkey(rig.mr.rkey().0 ^ 0x5a)
        } else {
            rig.mr.rkey()
        };
        let keys = rig.keys(1, rkey, |_| rig.mr.addr() + offset);
        let test = TestSpec {
            verb: Verb::Write,
            kind: TestKind::Bandwidth,
            duplex: false,
        };
        let (rc, output) = against_guest_client(
            &harness,
            &mut guest,
            &Tool::new(port, "ib_write_bw -d rxe0 -x 1 -F -s 4096 -n 5", test),
            &rig,
            keys,
            |_| {},
            |_| {
                // The traffic is rxe's; wait for its NAK'd WRITE.
                for _ in 0..600 {
                    if rig.counters().naks_sent.remote_access > 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            },
        );
        assert_ne!(
            rc, 0,
            "ib_write_bw with a bad target ({what}) succeeded: {output}"
        );
        assert!(
            output.contains("status"),
            "ib_write_bw ({what}) printed no failed status: {output}"
        );
        assert!(
            rig.counters().naks_sent.remote_access >= 1,
            "{what}: ferroce sent no NAK"
        );
        assert_eq!(
            rig.mr.to_vec(0, fill.len()).unwrap(),
            fill,
            "{what}: ferroce's memory changed"
        );
        let failed: Vec<&str> = output
            .lines()
            .filter(|line| line.contains("status"))
            .collect();
        println!(
            "rxe requester, {what}: perftest said: {}",
            failed.join(" | ")
        );
    }
    proven.push(
        "rxe -> ferroce: wrong rkey WRITE, OOB WRITE: rxe REM_ACCESS_ERR; ferroce memory unchanged",
    );

    // 3. A peer that disappears: after a WRITE that completes, the guest's server exits
    //    (its QP is gone, rxe drops what arrives for it); ferroce's next WRITE, with
    //    retry_cnt 3 and timeout 14 (67 ms), completes with RETRY_EXC_ERR, not a hang.
    port += 1;
    let rig = Rig::open(&harness, 1, 2 * 65536);
    let mut remote_keys = Vec::new();
    let write_bw = TestSpec {
        verb: Verb::Write,
        kind: TestKind::Bandwidth,
        duplex: false,
    };
    let (rc, output) = against_guest_server(
        &harness,
        &mut guest,
        &Tool::new(port, "ib_write_bw -d rxe0 -x 1 -F -s 4096 -n 5", write_bw),
        &rig,
        3,
        |remote| {
            let wc = rig.run(
                0,
                SendRequest::write(1, remote[0].vaddr, remote[0].rkey).sge(&rig.mr, 0, 4096),
                OPERATION_LIMIT,
            );
            assert_eq!(wc.status, WcStatus::Success, "first WRITE: {wc:?}");
            remote_keys = remote.to_vec();
        },
    );
    assert_eq!(rc, 0, "ib_write_bw server: {output}");
    let remote = remote_keys[0];
    let started = std::time::Instant::now();
    let wc = rig.run(
        0,
        SendRequest::write(2, remote.vaddr, remote.rkey).sge(&rig.mr, 0, 4096),
        OPERATION_LIMIT,
    );
    assert_eq!(
        wc.status,
        WcStatus::RetryExcErr,
        "WRITE to the vanished peer: {wc:?}"
    );
    let counters = rig.counters();
    assert!(counters.timeouts >= 3, "{counters:?}");
    println!(
        "vanished peer: RETRY_EXC_ERR after {:?}, {} timeouts",
        started.elapsed(),
        counters.timeouts
    );
    proven.push("rxe peer gone: RETRY_EXC_ERR after retry_cnt 3");
    drop(rig);

    // 4. RNR: ferroce serves ib_send_bw without receives posted; rxe's SENDs get RNR
    //    NAKs until ferroce posts 20 receives a second later, then every SEND lands and
    //    perftest finishes.
    port += 1;
    let rig = Rig::open(&harness, 1, 65536);
    let keys = rig.keys(1, rig.mr.rkey(), |_| rig.mr.addr());
    let send_bw = TestSpec {
        verb: Verb::Send,
        kind: TestKind::Bandwidth,
        duplex: false,
    };
    let (rc, output) = against_guest_client(
        &harness,
        &mut guest,
        &Tool::new(port, "ib_send_bw -d rxe0 -x 1 -F -s 1024 -n 20", send_bw),
        &rig,
        keys,
        |_| {},
        |session| {
            let session = session.expect("ib_send_bw handshake");
            for _ in 0..300 {
                if rig.counters().naks_sent.rnr > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for i in 0..20u64 {
                rig.qps[0]
                    .post_recv(RecvRequest::new(100 + i).sge(&rig.mr, 0, 1024))
                    .unwrap();
            }
            let received = rig
                .cq
                .poll_wait(20, OPERATION_LIMIT)
                .unwrap_or_else(|timeout| panic!("receives: {timeout}: {timeout:?}"));
            assert!(
                received
                    .iter()
                    .all(|wc| wc.status == WcStatus::Success && wc.byte_len == 1024),
                "{received:?}"
            );
            session.finish(&BwReport::default()).unwrap();
        },
    );
    let rnr = rig.counters().naks_sent.rnr;
    assert_eq!(rc, 0, "ib_send_bw client: {output}");
    assert!(rnr >= 1, "no RNR NAK sent");
    println!("RNR: {rnr} RNR NAKs sent, then 20 SENDs received");
    proven.push("RNR: rxe sender NAK'd until receives are posted, then completes");
    drop(rig);

    let (bytes, said) = capture.stop();
    let mut decoded = Vec::new();
    let summary = decode(&bytes, Options::default(), &mut decoded).unwrap();
    assert!(
        summary.is_clean() && summary.rocev2 > 0,
        "ferroce decode of {}: {summary:?} (tcpdump: {said})",
        pcap.display()
    );
    println!(
        "failure cases: {} RoCEv2 packets captured, all well formed with good ICRCs",
        summary.rocev2
    );

    // 5. 1% random loss on both directions of the bridge (nftables), 64 MiB each way with
    //    rxe as the requester and with ferroce as the requester, checked against a
    //    pattern on ferroce's side. perftest's buffer is one MR whose first half is the
    //    local side of its transfers, BIG below the address it advertises.
    //    a) WRITE: ferroce serves the guest's ib_write_bw client. Before the start
    //       barrier ferroce WRITEs the pattern into the client's local half; rxe then
    //       WRITEs that half into ferroce's MR (5 times), which must hold the pattern.
    //    b) READ: the guest's ib_read_bw client READs ferroce's pattern (5 times) into
    //       its local half; after the closing barrier ferroce READs that half back.
    harness.add_loss(1);
    const BIG: u64 = 64 << 20;
    let data = pattern(BIG as usize, 11);
    for verb in [Verb::Write, Verb::Read] {
        port += 1;
        let started = std::time::Instant::now();
        let rig = Rig::open(&harness, 1, 2 * BIG);
        let (tool, out_reads) = match verb {
            Verb::Write => ("ib_write_bw", 1),
            _ => ("ib_read_bw", 16),
        };
        // WRITE: [BIG, 2 BIG) is the source of ferroce's WRITE, [0, BIG) rxe's target.
        // READ: [0, BIG) is what rxe READs, [BIG, 2 BIG) where ferroce reads it back.
        rig.mr
            .write(if verb == Verb::Write { BIG } else { 0 }, &data)
            .unwrap();
        let keys = rig.keys(out_reads, rig.mr.rkey(), |_| rig.mr.addr());
        let test = TestSpec {
            verb,
            kind: TestKind::Bandwidth,
            duplex: false,
        };
        // ferroce's 64 MiB in 256 KiB requests, at most 4 in flight, as an application
        // would post them: go-back-N then resends at most 1 MiB per loss (one 64 MiB
        // READ restarted its whole remainder at each of ~650 losses: ~26x the bytes).
        let transfer = |read: bool, remote: &PerftestKeys| {
            const CHUNK: u64 = 256 << 10;
            const WINDOW: u64 = 4;
            let local_half = remote.vaddr - BIG;
            let chunks = BIG / CHUNK;
            let (mut posted, mut done) = (0u64, 0u64);
            while done < chunks {
                while posted < chunks && posted - done < WINDOW {
                    let offset = posted * CHUNK;
                    let wr = if read {
                        SendRequest::read(posted, local_half + offset, remote.rkey)
                    } else {
                        SendRequest::write(posted, local_half + offset, remote.rkey)
                    };
                    rig.qps[0]
                        .post_send(wr.sge(&rig.mr, BIG + offset, CHUNK as u32))
                        .unwrap();
                    posted += 1;
                }
                let completions = rig
                    .cq
                    .poll_wait(1, Duration::from_secs(120))
                    .unwrap_or_else(|timeout| {
                        // What the requester was doing, twice 5 s apart: moving or stuck.
                        let before = (rig.counters(), rig.qps[0].query());
                        std::thread::sleep(Duration::from_secs(5));
                        let after = (rig.counters(), rig.qps[0].query());
                        panic!(
                            "64 MiB {verb:?} by ferroce stalled at {done}: {timeout}\n\
                             then: {before:#?}\n5 s later: {after:#?}"
                        )
                    });
                for wc in completions {
                    assert_eq!(
                        wc.status,
                        WcStatus::Success,
                        "64 MiB {verb:?} by ferroce: {wc:?}"
                    );
                    done += 1;
                }
            }
        };
        let (rc, output) = against_guest_client(
            &harness,
            &mut guest,
            &Tool::new(port, &format!("{tool} -d rxe0 -x 1 -F -s {BIG} -n 5"), test).limit(900),
            &rig,
            keys.clone(),
            |remote| {
                if verb == Verb::Write {
                    transfer(false, &remote[0]);
                }
            },
            |session| {
                let session = session.expect("handshake");
                // perftest's "wait for the client to finish" barrier.
                session.exchange_keys(&keys[0]).unwrap();
                if verb == Verb::Read {
                    let remote = session.remote_keys()[0];
                    transfer(true, &remote);
                }
                session.exchange_bw_report(&BwReport::default()).unwrap();
                session.close().unwrap();
            },
        );
        assert_eq!(rc, 0, "{tool} client under loss: {output}");
        let landed = if verb == Verb::Write { 0 } else { BIG };
        assert!(
            rig.mr.to_vec(landed, BIG as usize).unwrap() == data,
            "64 MiB {verb:?} under 1% loss: the bytes differ"
        );
        let counters = rig.counters();
        println!(
            "1% loss, {tool} (rxe: 5 x 64 MiB) + ferroce 64 MiB {verb:?}: intact in {:.1} s; \
             {} datagrams dropped so far; ferroce: {} retransmits, NAKs sent {}, received {}; \
             rxe reported: {}",
            started.elapsed().as_secs_f64(),
            harness.dropped(),
            counters.retransmits,
            counters.naks_sent.psn_sequence,
            counters.naks_received.psn_sequence,
            figures(&output),
        );
    }
    assert!(harness.dropped() > 0, "the loss rules dropped nothing");
    proven.push("1% loss: 64 MiB WRITE and READ each way between ferroce and rxe intact");
    harness.remove_loss();

    guest.shut_down();
    for line in proven {
        println!("proven: {line}");
    }
}

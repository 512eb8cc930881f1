//! `ferroce pingpong` and `ferroce devinfo` as processes: a server and a client, each
//! binding UDP 4791 on its own loopback address (127.78.<test>.1 and .2), talking over
//! TCP on a free port, as two hosts would run rdma-core's tools.
//!
//! Live check against rdma-core 44 on kernel rxe (run by hand, 2026-11-26; needs the
//! interop guest): from `interop/`, with `B` the release `ferroce`,
//!
//! ```text
//! ./peer.sh -n 5 -H "$B pingpong rc --bind 10.77.0.1 -n 200 -c; \
//!                    $B pingpong ud --bind 10.77.0.1 -n 200 -c -p 18516" \
//!   'sleep 1; ibv_rc_pingpong -d rxe0 -g 1 -n 200 -c $RXE_HOST_IP; sleep 1; \
//!    ibv_ud_pingpong -d rxe0 -g 1 -n 200 -c -p 18516 $RXE_HOST_IP'
//! ```
//!
//! and the reverse (guest servers, ferroce clients `pingpong rc 10.77.0.15 -s 10000 -c`
//! and `pingpong ud 10.77.0.15 -p 18516 -c`, address chosen by route): all four runs
//! exited 0 on both ends, each printed the other's QPN/PSN/GID, and rdma-core's `-c`
//! reported no invalid data.

#![allow(clippy::disallowed_methods)] // Deadlines of real waits.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferroce");
const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a finished process left.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for `child` (killing it after the deadline) and collects its output; `first`
/// is stdout already read.
fn finish(mut child: Child, first: String, stdout: Option<BufReader<ChildStdout>>) -> Outcome {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not finish in {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    match stdout {
        Some(mut reader) => reader.read_to_string(&mut rest).unwrap(),
        None => child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap(),
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Outcome {
        status,
        stdout: first + &rest,
        stderr,
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Runs a server on 127.78.`net`.1 and a client on .2 with the same extra flags for
/// both; returns (server, client).
fn pair(
    net: u8,
    transport: &str,
    server_flags: &[&str],
    client_flags: &[&str],
) -> (Outcome, Outcome) {
    let port = free_port().to_string();
    let server_address = format!("127.78.{net}.1");
    let client_address = format!("127.78.{net}.2");
    let mut server_args = strings(&[
        "pingpong",
        transport,
        "--bind",
        &server_address,
        "-p",
        &port,
    ]);
    server_args.extend(strings(server_flags));
    let mut server = spawn(&server_args);
    // The server listens before it prints its address.
    let mut reader = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    if !first.contains("local address:") {
        let outcome = finish(server, first, Some(reader));
        panic!("server did not start: {outcome:?}");
    }
    let mut client_args = strings(&[
        "pingpong",
        transport,
        &server_address,
        "--bind",
        &client_address,
        "-p",
        &port,
    ]);
    client_args.extend(strings(client_flags));
    let client = finish(spawn(&client_args), String::new(), None);
    let server = finish(server, first, Some(reader));
    (server, client)
}

/// The value after `key` in an address line (`QPN 0x000011,` gives `0x000011`).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap() + key.len();
    line[start..]
        .split([',', ':', ' '])
        .find(|s| !s.is_empty())
        .unwrap()
}

fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{output}"))
}

/// Both ends exited 0, printed rdma-core's lines, and each saw the other's address.
fn check_success(net: u8, server: &Outcome, client: &Outcome, size: u64, iters: u64) {
    for (name, outcome) in [("server", server), ("client", client)] {
        assert!(outcome.status.success(), "{name} failed: {outcome:?}");
        let bytes = line(&outcome.stdout, &format!("{} bytes in ", size * iters * 2));
        assert!(bytes.ends_with(" Mbit/sec"), "{bytes}");
        let iters_line = line(&outcome.stdout, &format!("{iters} iters in "));
        assert!(iters_line.ends_with(" usec/iter"), "{iters_line}");
        let usec: f64 = iters_line
            .split(" = ")
            .nth(1)
            .unwrap()
            .trim_end_matches(" usec/iter")
            .parse()
            .unwrap();
        assert!(usec > 0.0, "{iters_line}");
    }
    let pairs = [(server, client, 1, 2), (client, server, 2, 1)];
    for (this, other, mine, theirs) in pairs {
        let local = line(&this.stdout, "  local address:  LID 0x0000, QPN 0x");
        let remote = line(&other.stdout, "  remote address: LID 0x0000, QPN 0x");
        assert!(
            local.ends_with(&format!(" GID ::ffff:127.78.{net}.{mine}")),
            "{local}"
        );
        assert!(
            remote.ends_with(&format!(", GID ::ffff:127.78.{net}.{mine}")),
            "{remote}"
        );
        assert_eq!(field(local, "QPN "), field(remote, "QPN "));
        assert_eq!(field(local, "PSN "), field(remote, "PSN "));
        let psn = u32::from_str_radix(field(local, "PSN 0x"), 16).unwrap();
        assert!(psn <= 0xff_ffff);
        assert_ne!(mine, theirs);
    }
}

#[test]
fn rc_sizes_and_mtus_with_every_message_checked() {
    let iters = 20;
    for (index, (size, mtu)) in [1u64, 64, 4095, 4096, 65536]
        .into_iter()
        .flat_map(|size| [(size, 1024), (size, 4096)])
        .enumerate()
    {
        let net = 10 + index as u8;
        let flags = [
            "-s".to_string(),
            size.to_string(),
            "-m".to_string(),
            mtu.to_string(),
            "-n".to_string(),
            iters.to_string(),
            "-c".to_string(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (server, client) = pair(net, "rc", &flags, &flags);
        check_success(net, &server, &client, size, iters);
    }
}

#[test]
fn rc_with_completion_events() {
    let flags = ["-s", "1000", "-n", "50", "-e", "-c"];
    let (server, client) = pair(30, "rc", &flags, &flags);
    check_success(30, &server, &client, 1000, 50);
}

#[test]
fn rc_checking_server_accepts_a_client_that_sends_a_fixed_buffer() {
    // rdma-core's client never changes its buffer; the checking server then holds every
    // message to the first.
    let (server, client) = pair(31, "rc", &["-n", "10", "-c"], &["-n", "10"]);
    check_success(31, &server, &client, 4096, 10);
}

#[test]
fn ud_sizes_with_every_message_checked() {
    for (index, size) in [64u64, 1024].into_iter().enumerate() {
        let net = 40 + index as u8;
        let flags = [
            "-s".to_string(),
            size.to_string(),
            "-n".into(),
            "20".into(),
            "-c".into(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (server, client) = pair(net, "ud", &flags, &flags);
        check_success(net, &server, &client, size, 20);
        // ud_pingpong's own-address line has a colon before the GID.
        assert!(line(&client.stdout, "  local address:").contains(", PSN 0x"));
        assert!(line(&client.stdout, "  local address:").contains(": GID ::ffff:"));
    }
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let cases: [(&[&str], &str); 7] = [
        (&["pingpong", "rc", "--bogus"], "--bogus"),
        (&["pingpong", "rc", "-p", "0"], "'0' for '--port"),
        (&["pingpong", "rc", "-n", "0"], "'0' for '--iters"),
        (
            &["pingpong", "rc", "-m", "1000"],
            "256, 512, 1024, 2048 or 4096",
        ),
        (&["pingpong", "rc", "-o"], "not supported"),
        (&["pingpong", "ud", "-m", "1024"], "rc option"),
        (&["pingpong", "tcp"], "invalid value"),
    ];
    for (args, message) in cases {
        let outcome = finish(spawn(&strings(args)), String::new(), None);
        assert_eq!(outcome.status.code(), Some(2), "{args:?}: {outcome:?}");
        assert!(
            outcome.stderr.contains(message),
            "{args:?}: {}",
            outcome.stderr
        );
    }
}

#[test]
fn client_to_a_port_nobody_listens_on_fails_clearly() {
    let port = free_port().to_string();
    let args = strings(&[
        "pingpong",
        "rc",
        "127.0.0.1",
        "--bind",
        "127.78.50.2",
        "-p",
        &port,
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains(&format!("Couldn't connect to 127.0.0.1:{port}")),
        "{}",
        outcome.stderr
    );
}

#[test]
fn busy_udp_port_is_named() {
    let _holder = UdpSocket::bind("127.78.51.1:4791").unwrap();
    let args = strings(&[
        "pingpong",
        "rc",
        "--bind",
        "127.78.51.1",
        "-p",
        &free_port().to_string(),
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("UDP port 4791 on 127.78.51.1 is in use"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn ud_size_above_the_port_mtu_is_refused() {
    let args = strings(&[
        "pingpong",
        "ud",
        "--bind",
        "127.78.52.1",
        "-s",
        "5000",
        "-p",
        &free_port().to_string(),
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("Requested size larger than port MTU (4096)"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn devinfo_prints_the_device_like_ibv_devinfo() {
    let outcome = finish(
        spawn(&strings(&["devinfo", "--bind", "127.78.53.1"])),
        String::new(),
        None,
    );
    assert!(outcome.status.success(), "{outcome:?}");
    let text = &outcome.stdout;
    for expected in [
        "hca_id:\tferroce0\n",
        "\ttransport:\t\t\tInfiniBand (0)\n",
        "\tphys_port_cnt:\t\t\t1\n",
        "\t\t\tstate:\t\t\tPORT_ACTIVE (4)\n",
        "\t\t\tactive_mtu:\t\t4096 (5)\n",
        "\t\t\tlink_layer:\t\tEthernet\n",
        "\t\t\tGID[  0]:\t\t::ffff:127.78.53.1, RoCE v2\n",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in\n{text}");
    }
    assert!(!text.contains("max_qp:"));

    let verbose = finish(
        spawn(&strings(&["devinfo", "-v", "--bind", "127.78.53.1"])),
        String::new(),
        None,
    );
    assert!(verbose.status.success(), "{verbose:?}");
    for expected in [
        "\tmax_qp:\t\t\t\t65536\n",
        "\tcounters:\n",
        "packets_in",
        "\t\t\tgid_tbl_len:\t\t1\n",
        "\t\t\tbad_pkey_cntr:\t\t0x0\n",
        "\t\t\tphys_state:\t\tLINK_UP (5)\n",
        "drops.pkey_mismatch",
        "async_events_dropped",
    ] {
        assert!(
            verbose.stdout.contains(expected),
            "{expected:?} missing in\n{}",
            verbose.stdout
        );
    }

    // Every counter's value starts in one column, apart from its name.
    let counters: Vec<&str> = verbose
        .stdout
        .lines()
        .skip_while(|l| *l != "\tcounters:")
        .skip(1)
        .take_while(|l| l.starts_with("\t\t\t"))
        .collect();
    assert!(counters.len() > 30, "{}", verbose.stdout);
    let column = |line: &str| line.rfind(' ').map(|space| space + 1);
    let first = column(counters[0]);
    for line in &counters {
        let name = line.trim_start().split(' ').next().unwrap_or_default();
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<u64>().is_ok() && !name.is_empty() && name != value,
            "{line:?}"
        );
        assert_eq!(
            column(line),
            first,
            "{line:?} out of column in\n{counters:#?}"
        );
        assert!(line.contains("  "), "{line:?}: name and value run together");
    }

    let missing = finish(
        spawn(&strings(&["devinfo", "-d", "mlx5_0"])),
        String::new(),
        None,
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stderr.contains("IB device 'mlx5_0' wasn't found"));
}

/// A TCP peer that answers the exchange with a QP at an address where nothing listens
/// on UDP 4791, then keeps the connection until the client is done.
fn fake_server(dead_gid: &str) -> (u16, std::thread::JoinHandle<()>) {
    use ferroce::wire::{Psn, Qpn};
    use ferroce_tools::exchange::pingpong::{server_exchange, PingpongDest};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let gid = format!("::ffff:{dead_gid}").parse().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let local = PingpongDest {
            lid: 0,
            qpn: Qpn::new(0x11),
            psn: Psn::new(0x123456),
            gid,
        };
        server_exchange(&mut stream, &local, |_| Ok(())).unwrap();
    });
    (port, thread)
}

#[test]
fn rc_peer_that_never_answers_times_out() {
    let (port, server) = fake_server("127.78.55.9");
    let args = strings(&[
        "pingpong",
        "rc",
        "127.0.0.1",
        "--bind",
        "127.78.55.2",
        "-p",
        &port.to_string(),
        "-n",
        "5",
        "--timeout",
        "2",
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    server.join().unwrap();
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome.stdout.contains(
            "  remote address: LID 0x0000, QPN 0x000011, PSN 0x123456, GID ::ffff:127.78.55.9"
        ),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stderr.contains(
            "no completion for 2 s after 0 sends and 0 receives of 5: the peer stopped or is \
             unreachable (RC retransmits forever"
        ),
        "{}",
        outcome.stderr
    );
}

#[test]
fn ud_peer_that_never_answers_times_out() {
    let (port, server) = fake_server("127.78.56.9");
    let args = strings(&[
        "pingpong",
        "ud",
        "127.0.0.1",
        "--bind",
        "127.78.56.2",
        "-p",
        &port.to_string(),
        "-n",
        "5",
        "--timeout",
        "1",
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    server.join().unwrap();
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("no completion for 1 s after 1 sends and 0 receives of 5"),
        "{}",
        outcome.stderr
    );
}

/// A server that accepts the TCP connection and never answers: the client gives up
/// after `--timeout`, naming the message it waited for (not "Resource temporarily
/// unavailable", the read timeout's errno).
#[test]
fn silent_server_times_out_naming_the_message() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        drop(stream);
    });
    let args = strings(&[
        "pingpong",
        "rc",
        "127.0.0.1",
        "--bind",
        "127.78.57.2",
        "-p",
        &port.to_string(),
        "--timeout",
        "1",
    ]);
    let outcome = finish(spawn(&args), String::new(), None);
    holder.join().unwrap();
    assert_eq!(outcome.status.code(), Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("timed out waiting for the peer's pingpong address message"),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("os error"), "{}", outcome.stderr);
}

/// Two terminals on one host, no `--bind`: the server takes UDP 4791 on the host's
/// addresses (127.0.0.1 when it has no other), and a client toward the server's address
/// — which would be its own default — steps aside to a free loopback address, says so,
/// and the ping-pong runs. Only the TCP port is chosen, so tests running at once do not
/// meet.
#[test]
fn rc_server_and_client_on_one_host_with_default_addresses() {
    let port = free_port().to_string();
    let mut server = spawn(&strings(&["pingpong", "rc", "-p", &port, "-n", "20"]));
    let mut reader = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let Some(gid) = first
        .trim_end()
        .rsplit("GID ")
        .next()
        .filter(|_| first.contains("local address:"))
    else {
        let outcome = finish(server, first, Some(reader));
        panic!("server did not start: {outcome:?}");
    };
    let target = gid.trim_start_matches("::ffff:").to_string();
    let client = finish(
        spawn(&strings(&[
            "pingpong", "rc", &target, "-p", &port, "-n", "20",
        ])),
        String::new(),
        None,
    );
    let server = finish(server, first, Some(reader));
    for (name, outcome) in [("server", &server), ("client", &client)] {
        assert!(outcome.status.success(), "{name} failed: {outcome:?}");
        line(&outcome.stdout, "20 iters in ");
    }
    assert!(
        client
            .stderr
            .contains(&format!("UDP port 4791 on {target} is taken"))
            && client.stderr.contains("this client uses 127.0.0.")
            && client.stderr.contains("--bind"),
        "{}",
        client.stderr
    );
    assert!(
        line(&client.stdout, "  local address:").contains("GID ::ffff:127.0.0."),
        "{}",
        client.stdout
    );
}

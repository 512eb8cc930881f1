//! `ferroce perf` as two processes: a server (`--bind 127.0.0.41`-style loopback
//! addresses, its own per test) and a client on another loopback address, talking
//! perftest's TCP exchange on a free port and RoCEv2 between their UDP 4791 sockets.
//! Every operation and test must finish on both sides with exit 0 and the client must
//! print perftest's columns; a client to a closed port and a server on a busy port fail
//! clearly; a silent peer (in the exchange or in the traffic) ends the run within
//! `--timeout`; a server and a client with default addresses on one host both work.

#![allow(clippy::disallowed_methods)] // Timeouts on child processes.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ferroce() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroce"))
}

/// A TCP port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Waits for `child` to exit within [`TIMEOUT`], killing it otherwise.
fn finish(mut child: Child, who: &str) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{who} did not finish in {TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A server process that has said it listens.
struct Server {
    child: Child,
    /// Its stderr, read to the end by a thread.
    stderr: JoinHandle<String>,
    /// The line saying it listens (with the RoCE addresses).
    listening: String,
}

impl Server {
    /// Starts `ferroce perf ARGS` and waits until it listens.
    fn start(args: &[&str]) -> Server {
        let mut child = ferroce()
            .arg("perf")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        // The server says on stderr when it listens; the rest is kept for failures.
        let stderr = child.stderr.take().expect("stderr");
        let (ready, listening) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Waiting for client") {
                    let _ = ready.send(line.clone());
                }
                lines.push(line);
            }
            lines.join("\n")
        });
        match listening.recv_timeout(TIMEOUT) {
            Ok(line) => Server {
                child,
                stderr: reader,
                listening: line,
            },
            Err(_) => {
                let output = finish(child, "server");
                panic!(
                    "server never listened: {:?}\n{}",
                    output.status,
                    reader.join().unwrap_or_default()
                );
            }
        }
    }

    /// Waits for the server to exit (within [`TIMEOUT`]).
    fn finish(self) -> Output {
        let mut output = finish(self.child, "server");
        output.stderr = self.stderr.join().unwrap_or_default().into_bytes();
        output
    }
}

/// Runs a server on 127.0.0.`server_host` and a client on 127.0.0.`server_host + 1`,
/// both with `args`; returns (server, client) outputs.
fn pair(server_host: u8, args: &[&str]) -> (Output, Output) {
    let port = free_port().to_string();
    let server_address = format!("127.0.0.{server_host}");
    let client_address = format!("127.0.0.{}", server_host + 1);
    let mut server_args = args.to_vec();
    server_args.extend(["--bind", &server_address, "-p", &port]);
    let server = Server::start(&server_args);
    let mut client_args = args.to_vec();
    client_args.extend(["--bind", &client_address, "-p", &port, &server_address]);
    let client = client(&client_args);
    let server = server.finish();
    both_succeeded(&server, &client, &format!("{args:?}"));
    (server, client)
}

/// Runs a client `ferroce perf ARGS` to its end (within [`TIMEOUT`]).
fn client(args: &[&str]) -> Output {
    let child = ferroce()
        .arg("perf")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    finish(child, "client")
}

fn both_succeeded(server: &Output, client: &Output, context: &str) {
    for (who, output) in [("server", server), ("client", client)] {
        assert!(
            output.status.success(),
            "{context}: {who} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The result rows (lines after the column titles that start with the size).
fn rows(output: &Output, size: u32) -> Vec<Vec<f64>> {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .skip_while(|line| !line.trim_start().starts_with("#bytes"))
        .skip(1)
        .filter(|line| line.split_whitespace().next() == Some(&size.to_string()))
        .map(|line| {
            line.split_whitespace()
                .map(|field| field.parse::<f64>().expect("a number"))
                .collect()
        })
        .collect()
}

fn columns(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.trim_start().starts_with("#bytes"))
        .unwrap_or_default()
        .to_owned()
}

/// A bandwidth pair: the client's row has the size, every iteration and a rate; the
/// server prints a row too (the client's report, or for SEND what it received).
fn bandwidth(server_host: u8, operation: &str, extra: &[&str], size: u32) {
    let mut args = vec![operation, "bw", "-n", "300"];
    args.extend_from_slice(extra);
    let (server, client) = pair(server_host, &args);
    assert!(
        columns(&client).contains("BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]"),
        "{}",
        String::from_utf8_lossy(&client.stdout)
    );
    for (who, output) in [("client", &client), ("server", &server)] {
        let rows = rows(output, size);
        assert_eq!(rows.len(), 1, "{operation} {who}: {rows:?}");
        let row = &rows[0];
        assert_eq!(row[1], 300.0, "{operation} {who}: iterations");
        assert!(row[3] > 0.0 && row[4] > 0.0, "{operation} {who}: {row:?}");
        assert!(
            row[2] >= row[3] * 0.99,
            "{operation} {who}: peak below average"
        );
    }
}

/// A latency pair: the client's row has every iteration and ordered statistics; the
/// server prints one too in the ping-pong tests.
fn latency(server_host: u8, operation: &str, server_prints: bool) {
    let (server, client) = pair(server_host, &[operation, "lat", "-n", "100", "-s", "64"]);
    assert!(columns(&client).contains("t_min[usec]    t_max[usec]  t_typical[usec]"));
    let mut outputs = vec![("client", &client)];
    if server_prints {
        outputs.push(("server", &server));
    } else {
        assert!(
            rows(&server, 64).is_empty(),
            "a passive server has no result"
        );
    }
    for (who, output) in outputs {
        let rows = rows(output, 64);
        assert_eq!(rows.len(), 1, "{operation} {who}: {rows:?}");
        let row = &rows[0];
        assert_eq!(row[1], 100.0, "{operation} {who}: iterations");
        let (min, max, typical, average) = (row[2], row[3], row[4], row[5]);
        assert!(0.0 < min && min <= typical && typical <= max, "{row:?}");
        assert!(min <= average && average <= max, "{row:?}");
    }
}

#[test]
fn write_bandwidth() {
    bandwidth(41, "write", &["-s", "5000", "-q", "2"], 5000);
}

#[test]
fn read_bandwidth() {
    bandwidth(43, "read", &["-s", "5000"], 5000);
}

#[test]
fn send_bandwidth() {
    bandwidth(45, "send", &["-s", "3000", "-q", "2"], 3000);
}

#[test]
fn atomic_bandwidth_both_kinds() {
    bandwidth(47, "atomic", &[], 8);
    bandwidth(47, "atomic", &["-A", "CMP_AND_SWAP"], 8);
}

#[test]
fn write_latency_polls_the_last_byte() {
    // Non-inline (-I 0) and inline writes: the peer's count arrives either way.
    latency(49, "write", true);
    let (_, client) = pair(49, &["write", "lat", "-n", "50", "-s", "300", "-I", "0"]);
    assert_eq!(rows(&client, 300).len(), 1);
}

#[test]
fn read_latency() {
    latency(51, "read", false);
}

#[test]
fn send_latency() {
    latency(53, "send", true);
}

#[test]
fn all_sizes_and_json() {
    let (_, client) = pair(55, &["write", "bw", "-a", "-n", "20", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&client.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let sizes: Vec<u64> = lines.iter().filter_map(|l| l["bytes"].as_u64()).collect();
    let expected: Vec<u64> = (1..=23).map(|shift| 1u64 << shift).collect();
    assert_eq!(sizes, expected);
    assert!(lines.iter().all(|l| l["iterations"].as_u64() == Some(20)));
}

#[test]
fn client_to_a_closed_port_fails_clearly() {
    let port = free_port().to_string();
    let output = ferroce()
        .args(["perf", "write", "bw", "--bind", "127.0.0.57", "-p", &port])
        .arg("127.0.0.58")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to 127.0.0.58:"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
}

#[test]
fn server_on_a_busy_port_fails_clearly() {
    let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = busy.local_addr().expect("address").port().to_string();
    let output = ferroce()
        .args(["perf", "write", "bw", "--bind", "127.0.0.59", "-p", &port])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("TCP port {port} is in use")),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["atomic", "bw", "-s", "16"][..],
        &["write", "lat", "-D", "1", "127.0.0.1"],
        &["write", "bw", "-A", "SWAP"],
        &["write", "bw", "-m", "1000"],
    ] {
        let output = ferroce().arg("perf").args(args).output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A TCP peer that accepts one connection and never says a word (until dropped).
fn silent_server() -> (u16, mpsc::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let (_stream, _) = listener.accept().expect("accept");
        // Hold the connection open until the test is done with it.
        let _ = stopped.recv_timeout(TIMEOUT);
    });
    (port, stop, thread)
}

/// Default arguments: perftest's exchange starts with the client's version message, the
/// silent server never answers, and the client says what it waited for (it used to wait
/// forever, and a read timeout read "Resource temporarily unavailable").
#[test]
fn a_silent_server_ends_the_client_with_what_it_waited_for() {
    let (port, stop, server) = silent_server();
    let start = Instant::now();
    let port = port.to_string();
    let output = client(&[
        "write",
        "bw",
        "--bind",
        "127.0.0.61",
        "-p",
        &port,
        "127.0.0.1",
    ]);
    let _ = stop.send(());
    server.join().expect("silent server");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("timed out waiting for the peer's perftest version message"),
        "{text}"
    );
    assert!(text.contains("nothing came for 10 s"), "{text}");
    assert!(!text.contains("os error"), "{text}");
    // The default --timeout is 10 s, as pingpong's.
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(9), "{waited:?}");
}

/// A client that connects and says nothing: the server gives up after `--timeout`.
#[test]
fn a_silent_client_ends_the_server_with_what_it_waited_for() {
    let port = free_port().to_string();
    let server = Server::start(&[
        "write",
        "bw",
        "--bind",
        "127.0.0.62",
        "-p",
        &port,
        "--timeout",
        "1",
    ]);
    let silent =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port.parse().expect("port"))).expect("connect");
    let output = server.finish();
    drop(silent);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "timed out waiting for the peer's perftest version message: nothing came for 1 s"
        ),
        "{text}"
    );
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name}");
}

/// A pair in the middle of a 30-second run whose server (or client) is frozen with
/// SIGSTOP: the other end must give up after `--timeout` 2 s; returns its output.
fn freeze_mid_run(server_host: u8, freeze_server: bool) -> Output {
    let port = free_port().to_string();
    let server_address = format!("127.0.0.{server_host}");
    let client_address = format!("127.0.0.{}", server_host + 1);
    let common = ["write", "bw", "-D", "30", "--timeout", "2", "-p", &port];
    let mut server_args = common.to_vec();
    server_args.extend(["--bind", &server_address]);
    let server = Server::start(&server_args);
    let mut client = ferroce()
        .arg("perf")
        .args(common)
        .args(["--bind", &client_address, &server_address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    // The column titles come right before the traffic.
    let mut stdout = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("#bytes") {
        line.clear();
        let read = stdout.read_line(&mut line).expect("client stdout");
        assert!(read > 0, "the client ended before its traffic");
    }
    std::thread::sleep(Duration::from_millis(500));
    let frozen = Instant::now();
    let output = if freeze_server {
        signal(&server.child, "-STOP");
        let output = finish(client, "client");
        signal(&server.child, "-CONT");
        let mut server = server;
        let _ = server.child.kill();
        let _ = server.finish();
        output
    } else {
        signal(&client, "-STOP");
        let output = server.finish();
        signal(&client, "-CONT");
        let _ = client.kill();
        let _ = client.wait();
        output
    };
    let waited = frozen.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        waited < Duration::from_secs(20),
        "gave up {waited:?} after the peer froze"
    );
    output
}

#[test]
fn a_peer_frozen_mid_run_ends_the_other_end() {
    let client = freeze_mid_run(63, true);
    let text = stderr(&client);
    assert!(
        text.contains("timed out after 2 s waiting for the peer's responses (a completion)"),
        "{text}"
    );
    // The passive server of a WRITE test sees only packets: their absence ends it.
    let server = freeze_mid_run(65, false);
    let text = stderr(&server);
    assert!(
        text.contains(
            "timed out after 2 s waiting for the peer's packets or its next message of the \
             exchange"
        ),
        "{text}"
    );
}

/// Two terminals on one host, no `--bind`: the server takes UDP 4791 on the host's
/// addresses, and a client toward the first of them (the address it routes from, so its
/// own default) steps aside to a free loopback address and says so. Only the TCP port
/// is chosen, so that tests running at once do not meet.
#[test]
fn server_and_client_on_one_host_with_default_addresses() {
    let port = free_port().to_string();
    let server = Server::start(&["write", "bw", "-n", "50", "-p", &port]);
    // " Waiting for client to connect... (TCP port P, RoCE on [A, ...])"
    let target = server
        .listening
        .split("RoCE on [")
        .nth(1)
        .and_then(|rest| rest.split([',', ']']).next())
        .expect("the server names its addresses")
        .to_owned();
    let client = client(&["write", "bw", "-n", "50", "-p", &port, &target]);
    let server = server.finish();
    both_succeeded(&server, &client, "default addresses");
    for (who, output) in [("server", &server), ("client", &client)] {
        assert_eq!(rows(output, 65536).len(), 1, "{who}");
    }
    let note = stderr(&client);
    assert!(
        note.contains(&format!("UDP port 4791 on {target} is taken"))
            && note.contains("this client uses 127.0.0.")
            && note.contains("--bind"),
        "{note}"
    );
}

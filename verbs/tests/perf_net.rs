//! `ferroce perf` as two processes: a server (`--bind 127.0.0.41`-style loopback
//! addresses, its own per test) and a client on another loopback address, talking
//! perftest's TCP exchange on a free port and RoCEv2 between their UDP 4791 sockets.
//! Every operation and test must finish on both sides with exit 0 and the client must
//! print perftest's columns; a client to a closed port and a server on a busy port fail
//! clearly.

#![allow(clippy::disallowed_methods)] // Timeouts on child processes.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
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

/// Runs a server on 127.0.0.`server_host` and a client on 127.0.0.`server_host + 1`,
/// both with `args`; returns (server, client) outputs.
fn pair(server_host: u8, args: &[&str]) -> (Output, Output) {
    let port = free_port().to_string();
    let server_address = format!("127.0.0.{server_host}");
    let client_address = format!("127.0.0.{}", server_host + 1);
    let mut server = ferroce()
        .arg("perf")
        .args(args)
        .args(["--bind", &server_address, "-p", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    // The server says on stderr when it listens; the rest of stderr is kept for failures.
    let stderr = server.stderr.take().expect("stderr");
    let (ready, listening) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Waiting for client") {
                let _ = ready.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    if listening.recv_timeout(TIMEOUT).is_err() {
        let output = finish(server, "server");
        panic!(
            "server never listened: {:?}\n{}",
            output.status,
            reader.join().unwrap_or_default()
        );
    }
    let client = ferroce()
        .arg("perf")
        .args(args)
        .args(["--bind", &client_address, "-p", &port, &server_address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    let client = finish(client, "client");
    let mut server = finish(server, "server");
    server.stderr = reader.join().unwrap_or_default().into_bytes();
    for (who, output) in [("server", &server), ("client", &client)] {
        assert!(
            output.status.success(),
            "{args:?}: {who} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (server, client)
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

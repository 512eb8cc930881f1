//! The `ferroce perf --loopback` binary: every operation and test runs, reports
//! perftest's columns (or JSON) and exits 0; bad flags exit 2.

#![allow(clippy::disallowed_methods)] // Measures a timed run from outside.

use std::process::{Command, Output};

fn ferroce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroce"))
        .args(args)
        .output()
        .expect("ferroce runs")
}

/// Runs `perf` on loopback addresses of this test's own (127.78.`net`.1 and .2).
fn perf(net: u8, args: &[&str]) -> Output {
    let (a, b) = (format!("127.78.{net}.1"), format!("127.78.{net}.2"));
    let mut all = vec!["perf"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--loopback", "--addresses", &a, &b]);
    ferroce(&all)
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn bandwidth_runs_and_verifies_every_operation() {
    for (net, operation) in [(1, "write"), (2, "read"), (3, "send")] {
        let out = perf(
            net,
            &[
                operation, "bw", "-s", "5000", "-n", "300", "-q", "2", "--json",
            ],
        );
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{operation}");
        let line = &lines[0];
        assert_eq!(line["operation"], operation);
        assert_eq!(
            (line["bytes"].as_u64(), line["iterations"].as_u64()),
            (Some(5000), Some(300))
        );
        let average = line["bw_average_mib_per_sec"].as_f64().unwrap_or(0.0);
        let peak = line["bw_peak_mib_per_sec"].as_f64().unwrap_or(0.0);
        assert!(average > 0.0 && peak >= average * 0.99, "{line}");
        assert!(line["msg_rate_mpps"].as_f64().unwrap_or(0.0) > 0.0);
    }
}

#[test]
fn latency_runs_every_operation() {
    for (net, operation) in [(4, "write"), (5, "read"), (6, "send")] {
        let out = perf(net, &[operation, "lat", "-s", "300", "-n", "50", "--json"]);
        let lines = json_lines(&out);
        let line = &lines[0];
        assert_eq!(line["iterations"].as_u64(), Some(50), "{operation}");
        let min = line["t_min_usec"].as_f64().unwrap_or(0.0);
        let typical = line["t_typical_usec"].as_f64().unwrap_or(0.0);
        let max = line["t_max_usec"].as_f64().unwrap_or(0.0);
        assert!(min > 0.0 && min <= typical && typical <= max, "{line}");
    }
}

#[test]
fn table_has_perftest_columns() {
    let out = perf(7, &["write", "bw", "-s", "64", "-n", "100", "-m", "4096"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "#bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]"
        ),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("64 "))
        .unwrap_or_else(|| panic!("no result row in {text}"));
    assert_eq!(row.split_whitespace().nth(1), Some("100"));
    let out = perf(8, &["send", "lat", "-s", "8", "-n", "20"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("t_min[usec]") && text.contains("99.9% percentile[usec]"),
        "{text}"
    );
}

/// `-D`: a timed run reports how many iterations fit.
#[test]
fn duration_bounds_the_run() {
    let start = std::time::Instant::now();
    let out = perf(9, &["write", "bw", "-s", "4096", "-D", "1", "--json"]);
    let lines = json_lines(&out);
    assert!(lines[0]["iterations"].as_u64().unwrap_or(0) > 0);
    assert!(start.elapsed() >= std::time::Duration::from_secs(1));
}

#[test]
fn bad_flags_exit_2() {
    assert_eq!(
        ferroce(&["perf", "write", "bw", "--loopback", "127.0.0.1"])
            .status
            .code(),
        Some(2),
        "--loopback with a server"
    );
    assert_eq!(
        perf(10, &["write", "bw", "-m", "1000"]).status.code(),
        Some(2)
    );
    assert_eq!(perf(10, &["write", "bw", "-q", "0"]).status.code(), Some(2));
    assert_eq!(
        ferroce(&["perf", "fly", "bw", "--loopback"]).status.code(),
        Some(2)
    );
}

#[test]
fn atomics_run_in_loopback() {
    for (net, test, kind) in [
        (11, "bw", "FETCH_AND_ADD"),
        (12, "bw", "CMP_AND_SWAP"),
        (13, "lat", "FETCH_AND_ADD"),
    ] {
        let out = perf(net, &["atomic", test, "-n", "50", "-A", kind, "--json"]);
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{test} {kind}");
        assert_eq!(lines[0]["bytes"].as_u64(), Some(8));
        assert_eq!(lines[0]["iterations"].as_u64(), Some(50));
    }
}

/// Counts, sizes and depths that make no run are refused when the flags are parsed,
/// naming the flag: `-n 0` used to end in "data check failed", `lat -n 0` printed a
/// row of zeros and exited 0.
#[test]
fn nonsense_counts_are_refused_at_parsing() {
    for (args, flag) in [
        (&["write", "bw", "-n", "0"][..], "--iters"),
        (&["write", "bw", "-D", "0"], "--duration"),
        (&["write", "lat", "-n", "0"], "--iters"),
        (&["send", "bw", "-s", "0"], "--size"),
        (&["write", "bw", "-q", "0"], "--qp"),
        (&["write", "bw", "-t", "0"], "--tx-depth"),
        (&["send", "bw", "-r", "0"], "--rx-depth"),
        (&["write", "bw", "-Q", "0"], "--cq-mod"),
        (&["write", "bw", "-n", "many"], "--iters"),
        (&["write", "bw", "-I", "100000"], "--inline_size"),
        (&["write", "bw", "-m", "1500"], "--mtu"),
        (&["write", "bw", "-p", "0"], "--port"),
    ] {
        let output = perf(15, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.contains(&format!("invalid value '{}' for '{flag}", args[3])),
            "{args:?}: {stderr}"
        );
    }
    let stderr =
        String::from_utf8_lossy(&perf(15, &["write", "lat", "-n", "0"]).stderr).into_owned();
    assert!(stderr.contains("must be at least 1"), "{stderr}");
}

/// A message too big for one memory region names the size and the device's limit.
#[test]
fn oversize_messages_name_the_size_and_the_limit() {
    let output = perf(16, &["write", "bw", "-s", "1073741825"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("-s 1073741825 with -q 1 needs a memory region of 1073741825 bytes")
            && stderr.contains("max_mr_size of 1073741824 bytes"),
        "{stderr}"
    );
    // Two QPs of 512 MiB do not fit either; over the network each QP has two slots.
    let output = ferroce(&[
        "perf",
        "write",
        "bw",
        "-s",
        "536870912",
        "-q",
        "2",
        "127.0.0.1",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs a memory region of 2147483648 bytes"),
        "{stderr}"
    );
}

/// A loopback address whose UDP 4791 is taken is named, with the flag that avoids it.
#[test]
fn a_busy_loopback_address_is_named_with_the_way_out() {
    let _holder = std::net::UdpSocket::bind("127.78.17.1:4791").expect("bind");
    let output = perf(17, &["write", "bw", "-n", "10"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("UDP port 4791 on 127.78.17.1 is in use") && stderr.contains("--addresses"),
        "{stderr}"
    );
}

/// `-m`'s help names the default a loopback run uses: the active MTU of `lo`, 4096.
#[test]
fn mtu_help_matches_the_loopback_default() {
    let help = ferroce(&["perf", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    let mtu_help: String = text
        .split("--mtu <MTU>")
        .nth(1)
        .and_then(|rest| rest.split("\n  -").next())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        mtu_help.contains("4096 on `lo`, so with --loopback"),
        "{mtu_help}"
    );
    let run = perf(18, &["write", "bw", "-n", "10", "-s", "64"]);
    let header = String::from_utf8_lossy(&run.stdout);
    assert!(header.contains("MTU : 4096"), "{header}");
}

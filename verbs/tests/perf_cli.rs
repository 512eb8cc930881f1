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
